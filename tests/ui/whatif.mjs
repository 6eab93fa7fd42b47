// Drives the what-if page in headless Chromium against a running station whose config names
// the twin's scenarios (config/simulated-line.toml: ../scenarios, with press-line).
// Usage: LINESIGHT_TOKEN=… node tests/ui/whatif.mjs http://127.0.0.1:PORT OUTDIR
import { accessible, expect, signIn, start } from './harness.mjs';

const ui = await start('whatif');
const { page, baseUrl, check, finish, api } = ui;

// What the API answers for the same request: the page must show these figures.
async function whatif(request) {
  const response = await api('/api/v1/whatif', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(request),
  });
  expect(response.ok, `POST /api/v1/whatif answered ${response.status}`);
  return response.json();
}

const cellsOf = (selector) => page.$$eval(selector, (cells) => cells.map((c) => c.textContent.trim()));
const asNumber = (text) => Number(text.replaceAll(',', ''));

await finish(async () => {
  await check('the live page links to the what-if page, which lists the scenarios', async () => {
    await signIn(ui);
    await Promise.all([page.waitForURL(baseUrl + '/whatif'), page.click('nav a[href="/whatif"]')]);
    await page.waitForSelector('#scenario option[value="press-line"]', { state: 'attached', timeout: 10_000 });
    const description = await page.textContent('#scenario-description');
    expect(/parts\/min/.test(description), `the description reads ${JSON.stringify(description)}`);
    const settings = await page.$$eval('#settings option', (options) => options.map((o) => o.value));
    expect(settings.includes('belt_speed=') && settings.includes('press_temp.base='),
      `the change suggestions are ${JSON.stringify(settings)}`);
  });

  await check('a faster belt: every figure and each order as the API reports it, better and worse marked', async () => {
    await page.selectOption('#scenario', 'press-line');
    await page.fill('#changes input.change', 'belt_speed=+20%');
    await page.click('#run');
    await page.waitForSelector('#report:not([hidden])', { timeout: 30_000 });
    const expected = await whatif({ scenario: 'press-line', changes: ['belt_speed=+20%'], analyse: false });
    const title = await page.textContent('#report-title');
    expect(title === 'press-line: belt_speed=+20%', `the report is titled ${JSON.stringify(title)}`);

    const figures = await cellsOf('#deltas tbody tr td:first-child');
    expect(JSON.stringify(figures) === JSON.stringify(expected.deltas.map((d) => d.figure)),
      `figures ${JSON.stringify(figures)}`);
    const oee = expected.deltas.find((d) => d.figure === 'OEE');
    const [before, after] = (await cellsOf('#deltas tr[data-figure="OEE"] td.num')).map(asNumber);
    expect(Math.abs(before - oee.before) < 0.06 && Math.abs(after - oee.after) < 0.06,
      `OEE reads ${before} → ${after}, the API says ${oee.before} → ${oee.after}`);
    const oeeChange = await page.getAttribute('#deltas tr[data-figure="OEE"] td:nth-child(4)', 'class');
    expect(oeeChange.includes(oee.after > oee.before ? 'better' : 'worse'), `the OEE change is marked "${oeeChange}"`);
    const late = await page.getAttribute('#deltas tr[data-figure="verdicts that cannot make the gate"] td:nth-child(4)', 'class');
    expect(late.includes('worse'), `more late verdicts are marked "${late}"`);

    const orders = await cellsOf('#orders tbody tr td:first-child');
    expect(JSON.stringify(orders) === JSON.stringify(expected.changed.work_orders.map((o) => o.id)),
      `orders ${JSON.stringify(orders)}`);
    const lastOrder = expected.changed.work_orders.at(-1);
    const wasLate = expected.baseline.work_orders.at(-1).lateness_min;
    const row = await cellsOf(`#orders tr[data-order="${lastOrder.id}"] td`);
    expect(Math.abs(asNumber(row[6]) - wasLate) < 0.06 && Math.abs(asNumber(row[7]) - lastOrder.lateness_min) < 0.06,
      `${lastOrder.id} reads lateness ${row[6]} → ${row[7]}, the API says ${wasLate} → ${lastOrder.lateness_min}`);
    const status = await page.getAttribute(`#orders tr[data-order="${lastOrder.id}"] td:last-child`, 'data-status');
    expect(status === lastOrder.status, `${lastOrder.id}'s status is ${status}, the API says ${lastOrder.status}`);
  });

  await check('the what-if page with its report has no serious accessibility violation (axe-core)', async () => {
    await accessible(page);
  });

  await check('a setting the twin does not have is refused with the reason, and the last report stays', async () => {
    await page.fill('#changes input.change', 'belt_sped=+20%');
    await page.click('#run');
    await page.waitForSelector('#error:not([hidden])', { timeout: 10_000 });
    const error = await page.textContent('#error');
    expect(/no setting "belt_sped"/.test(error) && /belt_speed/.test(error), `the error reads ${JSON.stringify(error)}`);
    expect(!(await page.isHidden('#report')), 'the earlier report is gone');
  });

  await check("with the analysis, the changed run's root cause finds the press temperature", async () => {
    await page.fill('#changes input.change', 'belt_speed=+20%');
    await page.click('#add-change');
    await page.fill('#changes .change-row:nth-child(2) input.change', 'press_temp.base=+5');
    await page.fill('#hours', '4');
    await page.check('#analyse');
    await page.click('#run');
    await page.waitForFunction(() => !document.getElementById('analysis').hidden
      && /press-line: belt_speed=\+20%, press_temp\.base=\+5/.test(document.getElementById('report-title').textContent),
    null, { timeout: 90_000 });
    expect(await page.isHidden('#error'), 'an error is shown');
    const causes = await cellsOf('#causes li');
    expect(causes.some((c) => /press_temp/.test(c)), `causes ${JSON.stringify(causes)}`);
    const watches = await cellsOf('#maintenance li');
    expect(watches.some((w) => /bearing/i.test(w)), `watches ${JSON.stringify(watches)}`);
  });
}, 'whatif.png');
