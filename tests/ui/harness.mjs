// What every browser check of the station shares: a real headless Chromium (Debian's), named
// checks that stop the run at the first failure, and a run that cannot hang CI.
import { mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

// axe-core, the accessibility engine, injected into the page under test.
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

/**
 * Reads `BASE_URL OUTDIR` from the command line and the token from `LINESIGHT_TOKEN`, opens a
 * 1080p page, and returns what a check script needs. `name` prefixes every line it prints.
 */
export async function start(name, { giveUpAfterMs = 120_000 } = {}) {
  const [base, outDir] = process.argv.slice(2);
  if (!base || !outDir) {
    console.error(`usage: node tests/ui/${name}.mjs BASE_URL OUTDIR`);
    process.exit(2);
  }
  const token = process.env.LINESIGHT_TOKEN;
  if (!token) {
    console.error(`${name}: FAIL set LINESIGHT_TOKEN to a token the station accepts`);
    process.exit(2);
  }
  // A wedged browser must fail the run, not hang CI.
  setTimeout(() => {
    console.error(`${name}: FAIL gave up after ${giveUpAfterMs / 1000} s`);
    process.exit(1);
  }, giveUpAfterMs).unref();

  await mkdir(outDir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }).catch((error) => {
    console.error(`${name}: FAIL could not launch Chromium: ${error.message.split('\n')[0]}`);
    process.exit(1);
  });
  const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));

  const baseUrl = base.replace(/\/+$/, '');
  const run = { passed: 0, failed: 0 };

  // Later checks read what earlier ones waited for, so a failure stops the run.
  async function check(title, body) {
    try {
      await body();
      run.passed += 1;
      console.log(`${name}: ok   ${title}`);
    } catch (error) {
      run.failed += 1;
      console.error(`${name}: FAIL ${title}: ${String(error?.message ?? error).split('\n')[0]}`);
      throw Object.assign(new Error(title), { reported: true });
    }
  }

  /** Runs `checks`, then the page-error check, a full-page screenshot and the summary; exits. */
  async function finish(checks, screenshot) {
    try {
      await checks();
      await check('no uncaught page errors', async () => {
        expect(pageErrors.length === 0, pageErrors.join('; '));
      });
    } catch (error) {
      // check() has reported its own failure; anything else (navigation) is reported here.
      if (!error.reported) {
        run.failed += 1;
        console.error(`${name}: FAIL ${error.message.split('\n')[0]}`);
      }
    } finally {
      await page.screenshot({ path: path.join(outDir, screenshot), fullPage: true })
        .catch((error) => console.error(`${name}: could not take screenshot: ${error.message}`));
      await browser.close();
    }
    console.log(`${name}: ${run.passed} passed, ${run.failed} failed`);
    process.exit(run.failed === 0 ? 0 : 1);
  }

  const api = (apiPath, options = {}) => fetch(baseUrl + apiPath, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, ...(options.headers ?? {}) },
  });

  return {
    page,
    baseUrl,
    token,
    outDir,
    check,
    finish,
    api,
    /** `GET apiPath` with the run's token, as JSON; a failure status fails the check. */
    json: async (apiPath) => {
      const response = await api(apiPath);
      expect(response.ok, `GET ${apiPath} answered ${response.status}`);
      return response.json();
    },
  };
}

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

/** Polls `probe` every `everyMs` until it gives something truthy (returned), or fails naming `what`. */
export async function until(what, probe, timeoutMs, everyMs = 500) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    expect(Date.now() < deadline, `no ${what} within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Signs in through the sign-in page with the run's token; lands on `/`. */
export async function signIn({ page, baseUrl, token }) {
  await page.goto(baseUrl + '/', { waitUntil: 'domcontentloaded' });
  expect(new URL(page.url()).pathname === '/login', `landed on ${page.url()}`);
  await page.waitForSelector('input#token', { timeout: 5_000 });
  await page.fill('input#token', token);
  await Promise.all([page.waitForURL(baseUrl + '/'), page.click('button[type=submit]')]);
}

/**
 * Signs `token` in, in a browser context of its own, and checks that `pagePath` answers 403 with
 * a page whose text matches `says` (the role and what it may not do).
 */
export async function refused({ page, baseUrl }, token, pagePath, says) {
  expect(token, 'set LINESIGHT_OPERATOR_TOKEN to an operator token');
  const context = await page.context().browser().newContext();
  try {
    const other = await context.newPage();
    await other.goto(`${baseUrl}/login?token=${encodeURIComponent(token)}`);
    expect(new URL(other.url()).pathname === '/', `signing in landed on ${other.url()}`);
    const response = await other.goto(baseUrl + pagePath);
    expect(response.status() === 403, `GET ${pagePath} answered ${response.status()}`);
    const text = (await other.textContent('body')) ?? '';
    expect(says.test(text), `the page reads ${JSON.stringify(text.trim().slice(0, 200))}`);
  } finally {
    await context.close();
  }
}

/**
 * Runs axe-core on the page as it stands (WCAG 2.x A and AA rules) and fails on any serious or
 * critical violation, naming each with an element it was found on.
 */
export async function accessible(page) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
      resultTypes: ['violations'],
    });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  expect(serious.length === 0, serious.map((v) => `${v.id} (${v.impact}) on ${v.nodes.length}, e.g. ${v.nodes[0]}`).join('; '));
  return violations;
}
