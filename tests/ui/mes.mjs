// Drives the MES page in headless Chromium against a running station on the simulated line:
// every figure as the API reports it, the charts drawn by uPlot, bundled into the page's
// script, and nothing loaded from beyond the station.
// Usage: LINESIGHT_TOKEN=… node tests/ui/mes.mjs http://127.0.0.1:PORT OUTDIR
import { accessible, expect, signIn, start } from './harness.mjs';

const ui = await start('mes', { giveUpAfterMs: 240_000 });
const { page, baseUrl, check, finish, api } = ui;
const json = async (path) => {
  const response = await api(path);
  return { status: response.status, body: await response.json() };
};
const percent = (ratio) => `${(ratio * 100).toFixed(1)} %`;
// A plant network has no internet: every request the page makes must reach the station.
const beyondStation = [];
page.on('request', (request) => {
  const url = request.url();
  if (!url.startsWith(`${baseUrl}/`) && !url.startsWith('data:') && !url.startsWith('blob:')) beyondStation.push(url);
});

await finish(async () => {
  // The press temperature's individuals chart has limits once two minutes of means are in.
  await check('the line has run long enough to chart its press temperature', async () => {
    const deadline = Date.now() + 150_000;
    for (;;) {
      const { status, body } = await json('/api/v1/charts/press_temp');
      if (status === 200) return;
      expect(status === 422, `GET /api/v1/charts/press_temp answered ${status}: ${JSON.stringify(body)}`);
      expect(Date.now() < deadline, `still no limits after 150 s: ${body.error}`);
      await new Promise((resolve) => setTimeout(resolve, 2_000));
    }
  });

  await check('the live page links to the MES page, which fills every panel', async () => {
    await signIn(ui);
    await Promise.all([page.waitForURL(baseUrl + '/mes'), page.click('nav a[href="/mes"]')]);
    await page.waitForFunction(() => document.body.dataset.refreshed, null, { timeout: 30_000 });
    const error = await page.isHidden('#error') ? '' : await page.textContent('#error');
    expect(!error, `the page reports: ${error}`);
  });

  await check("the tiles are the API's KPIs of the same day", async () => {
    // The station goes on making parts: freeze the page's figures and read the API right after.
    const shown = await page.$$eval('.tile .value', (values) => Object.fromEntries(values.map((v) => [v.id, v.textContent])));
    const { body: kpis } = await json('/api/v1/kpis');
    const good = Number(shown['kpi-good_quantity'].replaceAll(',', ''));
    expect(good > 0 && good <= kpis.total.good_quantity, `good parts read ${good}, the API now says ${kpis.total.good_quantity}`);
    for (const key of ['oee', 'availability', 'effectiveness', 'quality_ratio']) {
      const value = Number.parseFloat(shown[`kpi-${key}`]);
      expect(Math.abs(value - kpis.total[key] * 100) < 5, `${key} reads ${shown[`kpi-${key}`]}, the API now says ${percent(kpis.total[key])}`);
    }
  });

  await check('the page, its script with uPlot bundled in and their stylesheets come from the station alone', async () => {
    expect(beyondStation.length === 0, `requests beyond the station: ${beyondStation.join(', ')}`);
    const script = await (await fetch(`${baseUrl}/assets/mes.js`)).text();
    expect(script.includes('class uPlot') || script.includes('function uPlot'), 'the MES script does not carry uPlot');
    const css = await (await fetch(`${baseUrl}/assets/mes.css`)).text();
    expect(css.includes('.uplot'), "uPlot's stylesheet is not served");
  });

  await check('the OEE chart and the Pareto are drawn by uPlot, the Pareto table as the API has it', async () => {
    for (const id of ['oee-chart', 'pareto-chart']) {
      const drawn = await page.$eval(`#${id}`, (el) => {
        const canvas = el.querySelector('canvas');
        return canvas ? canvas.width * canvas.height : 0;
      });
      expect(drawn > 0, `#${id} has no canvas`);
    }
    const classes = await page.$$eval('#pareto tbody tr td:first-child', (cells) => cells.map((c) => c.textContent));
    const points = Number(await page.getAttribute('#pareto-chart', 'data-points'));
    expect(points === classes.length && classes.length > 0, `${points} bars for ${classes.length} classes`);
    const { body: pareto } = await json('/api/v1/pareto');
    const now = pareto.classes.map((c) => c.class);
    expect(classes.every((c) => now.includes(c)), `the page lists ${JSON.stringify(classes)}, the API ${JSON.stringify(now)}`);
    // Each class's severity as the station's defect classes give it, a dash for one they do not list.
    const { body: taxonomy } = await json('/api/v1/defect-classes');
    const severities = await page.$$eval('#pareto tbody tr td:nth-child(2)', (cells) => cells.map((c) => c.textContent));
    classes.forEach((name, i) => {
      const info = taxonomy.classes.find((c) => c.name === name);
      const want = info ? `${info.severity}${info.rejects ? '' : ' (passed at the gate)'}` : '—';
      expect(severities[i] === want, `${name}'s severity reads ${JSON.stringify(severities[i])}, expected ${JSON.stringify(want)}`);
    });
  });

  // A chart may gain a point (or its limits) between the page's read and this one: a mismatch
  // is read again after a reload, and only one that persists fails. The API's reason names
  // counts that grow, so reasons compare with their numbers masked.
  const masked = (text) => String(text).replace(/\d+/g, '#');
  async function compareCharts() {
    const { body: views } = await json('/api/v1/charts');
    expect(views.length > 0, 'the simulated line configures charts');
    let drawn = 0;
    for (const view of views) {
      const { status, body } = await json(`/api/v1/charts/${encodeURIComponent(view.name)}`);
      const box = `#control-charts [data-chart="${view.name}"]`;
      if (status === 200) {
        const points = Number(await page.getAttribute(`${box} .chart`, 'data-points'));
        // A point may have closed between the page's read and this one.
        expect(points > 0 && Math.abs(points - body.points.length) <= 1, `${view.name}: ${points} points drawn, the API has ${body.points.length}`);
        expect(await page.$(`${box} canvas`), `${view.name} has no canvas`);
        drawn += 1;
      } else {
        const note = await page.textContent(`${box} .chart-note`);
        expect(masked(note) === masked(body.error), `${view.name}: the page says ${JSON.stringify(note)}, the API (${status}) ${JSON.stringify(body.error)}`);
      }
    }
    expect(drawn > 0, 'no control chart drawn');
  }

  async function reload() {
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.refreshed, null, { timeout: 30_000 });
  }

  await check('each configured control chart is drawn with its points, or says why the API cannot chart it', async () => {
    try {
      await compareCharts();
    } catch {
      await reload();
      await compareCharts();
    }
  });

  await check("work orders, root cause and maintenance are the API's", async () => {
    const { body: schedule } = await json('/api/v1/schedule');
    const orders = await page.$$eval('#orders tbody tr[data-order]', (rows) => rows.map((r) => r.dataset.order));
    expect(JSON.stringify(orders) === JSON.stringify(schedule.orders.map((o) => o.id)), `orders ${JSON.stringify(orders)}`);
    const { body: maintenance } = await json('/api/v1/maintenance');
    const watches = await page.$$eval('#watches li[data-watch]', (items) => items.map((i) => i.dataset.watch));
    expect(JSON.stringify(watches) === JSON.stringify(maintenance.watches.map((w) => w.name)), `watches ${JSON.stringify(watches)}`);
    // The station analyses its window every two minutes: compare the page with the same round.
    for (let attempt = 0; ; attempt += 1) {
      const { body: rootcause } = await json('/api/v1/rootcause');
      const shownAt = await page.getAttribute('#rootcause-scope', 'data-computed-at');
      if (shownAt !== rootcause.computed_at) {
        expect(attempt < 2, `the page shows the round of ${shownAt}, the API ${rootcause.computed_at}`);
        await reload();
        continue;
      }
      const expected = [
        ...rootcause.targets.flatMap((t) => (t.analysis?.findings ?? []).map((f) => f.sentence)),
        ...rootcause.targets.filter((t) => !t.analysis && t.note).map((t) => `${t.target}: ${t.note}`),
      ];
      const findings = await page.$$eval('#findings li', (items) => items.map((i) => i.textContent));
      expect(JSON.stringify(findings) === JSON.stringify(expected.length ? expected : ['No finding in the window.']),
        `the page lists ${JSON.stringify(findings)}, the API ${JSON.stringify(expected)}`);
      break;
    }
  });

  await check('the MES page has no serious accessibility violation (axe-core)', async () => {
    await accessible(page);
  });
}, 'mes.png');
