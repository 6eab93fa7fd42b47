// Drives the labelling page in headless Chromium against a running station on the simulated
// line: the queue as the API orders it, a polygon and a brush stroke saved as a part's label,
// undo and redo, the label back after a reload, COCO out and back in unchanged, a label started
// from the model's boxes, an operator kept out, and the canvas's frame time.
// Usage: LINESIGHT_TOKEN=<engineer> LINESIGHT_OPERATOR_TOKEN=<operator> node tests/ui/label.mjs http://127.0.0.1:PORT OUTDIR
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { accessible, expect, refused, signIn, start, until } from './harness.mjs';

const ui = await start('label', { giveUpAfterMs: 240_000 });
const { page, baseUrl, outDir, check, finish, api, json } = ui;
const operatorToken = process.env.LINESIGHT_OPERATOR_TOKEN;

// The label records of a part are flat (`seq`, `recorded_at`, `kind`, the label's fields).
async function latestLabel(partId) {
  const body = await json(`/api/v1/inspections/${partId}/labels`);
  const last = (Array.isArray(body) ? body : body.items).at(-1);
  return last ? last.body ?? last : null;
}

// Regions compare as a set, numbers to a thousandth (the station keeps coordinates as f32).
function sameRegions(a, b) {
  const key = (r) => `${r.class}\u0000${r.shape.kind}`;
  const sorted = (list) => [...list].sort((x, y) => key(x).localeCompare(key(y)));
  const same = (x, y) => {
    if (typeof x === 'number' && typeof y === 'number') return Math.abs(x - y) <= 1e-3 * Math.max(1, Math.abs(x));
    if (Array.isArray(x)) return Array.isArray(y) && x.length === y.length && x.every((v, i) => same(v, y[i]));
    if (x && typeof x === 'object') {
      return Boolean(y) && typeof y === 'object' && Object.keys(x).length === Object.keys(y).length && Object.keys(x).every((k) => same(x[k], y[k]));
    }
    return x === y;
  };
  return same(sorted(a), sorted(b));
}

const sum = (list) => list.reduce((a, b) => a + b, 0);
const regionsOnPage = () => page.evaluate(() => window.labelPage.regions());
const describe = (regions) => JSON.stringify(regions.map((r) => ({ class: r.class, kind: r.shape.kind })));

/** Pans and zooms the open part's canvas for a second; frame intervals and draw times. */
async function measureFrames() {
  const frames = await page.evaluate(async () => {
    const lp = window.labelPage;
    const box = document.getElementById('canvas').getBoundingClientRect();
    lp.frameTimes.length = 0;
    const intervals = [];
    const started = performance.now();
    let last = started;
    for (let i = 0; performance.now() - started < 1_000; i += 1) {
      lp.panBy(i % 20 < 10 ? 6 : -6, i % 10 < 5 ? 3 : -3);
      lp.zoomAt(box.width / 2, box.height / 2, i % 40 < 20 ? 1.04 : 1 / 1.04);
      await new Promise(requestAnimationFrame);
      const now = performance.now();
      intervals.push(now - last);
      last = now;
    }
    lp.fit();
    return { draws: [...lp.frameTimes], intervals };
  });
  expect(frames.draws.length > 0, 'the page drew nothing while panned and zoomed');
  const mean = (list) => sum(list) / Math.max(1, list.length);
  return {
    frames: frames.intervals.length,
    mean_frame_ms: mean(frames.intervals),
    mean_draw_ms: mean(frames.draws),
    max_draw_ms: Math.max(0, ...frames.draws),
  };
}

let partId;
let imageSize;
let saved;

await finish(async () => {
  await check("an engineer's labelling page lists the API's queue and has no serious accessibility violation (axe-core)", async () => {
    // The simulated line records parts from its start: wait for one with an image to queue.
    await until('queued part with an image', async () => (await json('/api/v1/labelling/queue?limit=50')).items.some((i) => i.image), 90_000);
    await signIn(ui);
    const response = await page.goto(baseUrl + '/label');
    expect(response.status() === 200, `GET /label answered ${response.status()}`);
    await page.evaluate(() => window.labelPage.ready);
    const queueUrl = await page.evaluate(() => window.labelPage.queueUrl);
    expect(queueUrl === '/api/v1/labelling/queue?limit=50', `the page asked for ${queueUrl}`);
    // New parts keep coming and may take the lead between two reads: a mismatch is read again.
    for (let attempt = 0; ; attempt += 1) {
      const shown = await page.getAttribute('#queue button[data-part-id]', 'data-part-id');
      const first = await page.evaluate(async (url) => (await (await fetch(url, { credentials: 'same-origin' })).json()).items[0]?.part_id, queueUrl);
      if (shown === String(first)) break;
      expect(attempt < 3, `the page lists part ${shown} first, the API part ${first}`);
      await page.evaluate(() => window.labelPage.refreshQueue());
    }
    // The number keys follow the station's defect classes, in their colours and with their severity.
    const keys = await page.$$eval('#class-keys button', (list) => list.map((b) => ({
      name: b.dataset.class, title: b.title, colour: getComputedStyle(b.querySelector('.swatch')).backgroundColor,
    })));
    const classes = (await json('/api/v1/defect-classes')).classes;
    expect(classes.length > 0 && keys.length >= classes.length, `keys ${JSON.stringify(keys)} for classes ${JSON.stringify(classes)}`);
    classes.forEach((c, i) => {
      const rgb = `rgb(${[1, 3, 5].map((j) => parseInt(c.colour.slice(j, j + 2), 16)).join(', ')})`;
      expect(keys[i].name === c.name && keys[i].colour === rgb && keys[i].title.startsWith(c.severity),
        `key ${i + 1} is ${JSON.stringify(keys[i])}, the class ${JSON.stringify(c)}`);
    });
    await accessible(page);
    await page.screenshot({ path: path.join(outDir, 'label.png') });
  });

  await check('on the first part with an image: Defect, a new class "scratch", a polygon and a brush stroke, autosaved', async () => {
    const item = page.locator('#queue button[data-has-image]').first();
    partId = Number(await item.getAttribute('data-part-id'));
    await item.click();
    await page.waitForFunction((id) => window.labelPage.partId === id, partId, { timeout: 15_000 });
    imageSize = await page.evaluate(() => window.labelPage.imageSize());
    expect(imageSize?.[0] > 0 && imageSize[1] > 0, `part ${partId}'s image is ${JSON.stringify(imageSize)}`);
    const savesBefore = await page.evaluate(() => window.labelPage.saveCount);

    await page.check('#verdict-fail');
    await page.fill('#class', 'scratch');
    await page.press('#class', 'Enter'); // applies the class and goes back to the image
    await page.keyboard.press('p');
    const at = (fx, fy) => page.evaluate(([x, y]) => window.labelPage.toScreen(x, y), [fx * imageSize[0], fy * imageSize[1]]);
    for (const [fx, fy] of [[0.15, 0.2], [0.45, 0.15], [0.5, 0.5], [0.2, 0.45]]) {
      const point = await at(fx, fy);
      await page.mouse.click(point.x, point.y);
    }
    await page.keyboard.press('Enter');
    await page.keyboard.press('r');
    const [from, to] = [await at(0.6, 0.6), await at(0.85, 0.75)];
    await page.mouse.move(from.x, from.y);
    await page.mouse.down();
    await page.mouse.move(to.x, to.y, { steps: 12 });
    await page.mouse.up();

    await page.waitForFunction((before) => {
      const lp = window.labelPage;
      const kinds = lp.regions().map((r) => r.shape.kind);
      return lp.saveState === 'saved' && lp.saveCount > before && kinds.includes('polygon') && kinds.includes('mask');
    }, savesBefore, { timeout: 15_000, polling: 200 }).catch(async () => {
      throw new Error(`the page says "${await page.textContent('#save-state')}" with regions ${describe(await regionsOnPage())}`);
    });
    const status = await page.textContent('#save-state');
    expect(status === 'Saved', `the status reads ${JSON.stringify(status)}`);
  });

  await check("the API's latest label of the part: fail, scratch, the polygon inside the image and a painted mask, on its image", async () => {
    const label = await latestLabel(partId);
    expect(label?.verdict === 'fail' && label.defect_class === 'scratch', `the latest label is ${JSON.stringify(label)?.slice(0, 300)}`);
    const record = await json(`/api/v1/inspections/${partId}`);
    expect(label.image && label.image === (record.image ?? record.body?.image), `the label names image ${label.image}, the part has ${record.image}`);
    const [width, height] = imageSize;
    const polygon = label.regions.find((r) => r.shape.kind === 'polygon');
    expect(polygon?.class === 'scratch' && polygon.shape.points.length === 4, `regions ${describe(label.regions)}`);
    const outside = polygon.shape.points.filter(([x, y]) => !(x >= 0 && y >= 0 && x <= width && y <= height));
    expect(outside.length === 0, `points ${JSON.stringify(outside)} lie outside the ${width}×${height} image`);
    const mask = label.regions.find((r) => r.shape.kind === 'mask');
    expect(mask?.class === 'scratch', `regions ${describe(label.regions)}`);
    expect(mask.shape.size[0] === height && mask.shape.size[1] === width, `the mask's size is ${JSON.stringify(mask.shape.size)}`);
    const { counts } = mask.shape;
    const set = sum(counts.filter((_, i) => i % 2 === 1));
    expect(sum(counts) === width * height && set > 0, `the mask's counts add up to ${sum(counts)} with ${set} pixels set`);
    saved = label.regions;
    expect(sameRegions(await regionsOnPage(), saved), 'the page holds other regions than it saved');
  });

  await check('undo takes the brush stroke off the canvas, redo brings it back', async () => {
    await page.keyboard.press('Control+z');
    await page.waitForFunction(() => window.labelPage.maskPixels('scratch') === 0, null, { timeout: 5_000, polling: 100 });
    const undone = await regionsOnPage();
    expect(!undone.some((r) => r.shape.kind === 'mask') && undone.some((r) => r.shape.kind === 'polygon'), `after undo: ${describe(undone)}`);
    await page.keyboard.press('Control+Shift+Z');
    await page.waitForFunction(() => window.labelPage.maskPixels('scratch') > 0, null, { timeout: 5_000, polling: 100 });
    expect(sameRegions(await regionsOnPage(), saved), `after redo: ${describe(await regionsOnPage())}`);
    // Back where it was saved: the page settles on Saved (with or without posting again).
    await page.waitForFunction(() => window.labelPage.saveState === 'saved', null, { timeout: 10_000, polling: 200 });
  });

  await check('after a reload, the part opened by its number shows the saved label, with no serious accessibility violation', async () => {
    await page.goto(baseUrl + '/label');
    await page.evaluate(() => window.labelPage.ready);
    await page.fill('#goto-part', String(partId));
    await page.press('#goto-part', 'Enter');
    await page.waitForFunction((id) => window.labelPage.partId === id, partId, { timeout: 15_000 });
    const label = await latestLabel(partId);
    const shown = await regionsOnPage();
    expect(sameRegions(shown, label.regions), `the page shows ${describe(shown)}, the API has ${describe(label.regions)}`);
    expect(await page.isChecked('#verdict-fail') && (await page.inputValue('#class')) === 'scratch', 'the label shows other than Defect, scratch');
    const state = await page.getAttribute('#save-state', 'data-state');
    expect(state === 'saved', `the status is ${state}`);
    await accessible(page); // with a part, its classes and its regions listed
  });

  await check('labels exported as COCO from the page and imported back change nothing', async () => {
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 10_000 }), page.click('#coco-export')]);
    const file = path.join(outDir, 'labels-coco.json');
    await download.saveAs(file);
    const dataset = JSON.parse(await readFile(file, 'utf8'));
    const image = dataset.images.find((i) => i.id === partId);
    expect(image, `part ${partId} is not in the export`);
    const annotations = dataset.annotations.filter((a) => a.image_id === partId);
    const kinds = annotations.map((a) => (Array.isArray(a.segmentation) ? 'polygon' : 'mask')).sort().join(',');
    expect(kinds === 'mask,polygon', `part ${partId} exports as ${kinds}`);
    const before = (await (await api(`/api/v1/inspections/${partId}/labels`)).json()).length;
    await page.setInputFiles('#coco-file', file);
    await page.waitForFunction(() => document.getElementById('coco-status').dataset.written !== undefined
      || /^Not imported/.test(document.getElementById('coco-status').textContent), null, { timeout: 15_000 });
    const status = await page.textContent('#coco-status');
    const written = await page.getAttribute('#coco-status', 'data-written');
    const unchanged = Number(await page.getAttribute('#coco-status', 'data-unchanged'));
    expect(written === '0' && unchanged === dataset.images.length, `the import says ${JSON.stringify(status)}`);
    const after = (await (await api(`/api/v1/inspections/${partId}/labels`)).json()).length;
    expect(after === before, `the part had ${before} labels and has ${after} after the import`);
  });

  await check("a rejected part's label starts from the model's boxes: one rectangle of the class each, saved", async () => {
    // A rejected part the model outlined defects on, with its image and no label yet.
    const record = await until('a recorded part with defect boxes', async () => {
      const { items } = await json('/api/v1/inspections?limit=200');
      for (const r of items.filter((i) => i.image && (i.defect_boxes ?? []).length > 0 && i.part_id !== partId)) {
        if (!(await latestLabel(r.part_id))) return r;
      }
      return null;
    }, 90_000);
    await page.goto(`${baseUrl}/label?part=${record.part_id}`);
    await page.waitForFunction((id) => window.labelPage.partId === id, record.part_id, { timeout: 15_000 });
    expect(!(await page.isDisabled('#from-boxes')), "the model's boxes cannot be started from");
    await page.fill('#class', 'dent');
    await page.press('#class', 'Enter');
    const savesBefore = await page.evaluate(() => window.labelPage.saveCount);
    await page.click('#from-boxes');
    const want = record.defect_boxes.map(({ bbox: [x0, y0, x1, y1] }) => ({ class: 'dent', shape: { kind: 'box', x: x0, y: y0, width: x1 - x0, height: y1 - y0 } }));
    await page.waitForFunction((before) => window.labelPage.saveState === 'saved' && window.labelPage.saveCount > before,
      savesBefore, { timeout: 15_000, polling: 200 });
    const label = await latestLabel(record.part_id);
    expect(label?.verdict === 'fail' && label.defect_class === 'dent' && sameRegions(label.regions, want),
      `part ${record.part_id}'s label is ${JSON.stringify(label)?.slice(0, 400)}, its boxes ${JSON.stringify(record.defect_boxes)}`);
    // Once drawn, the boxes are not added twice.
    await page.click('#from-boxes');
    const hint = await page.textContent('#hint');
    expect(/already drawn/.test(hint ?? '') && sameRegions(await regionsOnPage(), want), `a second click: ${JSON.stringify(hint)}, ${describe(await regionsOnPage())}`);
  });

  await check('an operator is refused the labelling page (403) and told the role may not label', async () => {
    await refused(ui, operatorToken, '/label', /may not label/i);
  });

  await check('panning and zooming the canvas for a second: the frame time goes to label-frames.json', async () => {
    const report = { ...(await measureFrames()), image: imageSize, regions: saved.length };
    await writeFile(path.join(outDir, 'label-frames.json'), `${JSON.stringify(report, null, 2)}\n`);
    console.log(`label: ${report.frames} frames, ${report.mean_frame_ms.toFixed(1)} ms a frame, ${report.mean_draw_ms.toFixed(2)} ms drawing (report only)`);
  });

  await check('the same on a 5-megapixel image with 500 shapes: the frame time goes to label-frames-5mpx.json', async () => {
    // The simulated camera's images are 224 × 224: a 2592 × 1944 image (5.0 Mpx, drawn in the
    // browser) and a label of 250 boxes and 250 polygons on it stand in for another part's own,
    // served to the page in place of the station's answers. Nothing is edited, so nothing is saved.
    const { items } = await json('/api/v1/inspections?limit=100');
    const other = items.find((p) => p.image && p.part_id !== partId);
    expect(other, 'no other part with an image');
    const [width, height] = [2592, 1944];
    const png = Buffer.from(await page.evaluate(async ([w, h]) => {
      const canvas = new OffscreenCanvas(w, h);
      const g = canvas.getContext('2d');
      const gradient = g.createLinearGradient(0, 0, w, h);
      gradient.addColorStop(0, '#303030');
      gradient.addColorStop(1, '#b0b0b0');
      g.fillStyle = gradient;
      g.fillRect(0, 0, w, h);
      for (let i = 0; i < 4000; i += 1) {
        g.fillStyle = `rgb(${(i * 37) % 256},${(i * 37) % 256},${(i * 37) % 256})`;
        g.fillRect((i * 7919) % w, (i * 104729) % h, 3 + (i % 40), 3 + (i % 17));
      }
      const bytes = new Uint8Array(await (await canvas.convertToBlob({ type: 'image/png' })).arrayBuffer());
      let text = '';
      for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return btoa(text);
    }, [width, height]), 'base64');
    const regions = [];
    for (let i = 0; i < 500; i += 1) {
      const [x, y] = [(i * 7919) % (width - 120), (i * 104729) % (height - 120)];
      regions.push(i % 2 === 0
        ? { class: 'scratch', shape: { kind: 'box', x, y, width: 20 + (i % 90), height: 15 + (i % 60) } }
        : { class: 'dent', shape: { kind: 'polygon', points: Array.from({ length: 8 }, (_, k) => [x + 50 + 40 * Math.cos(k * Math.PI / 4), y + 50 + 40 * Math.sin(k * Math.PI / 4)]) } });
    }
    const label = { seq: 1, recorded_at: new Date().toISOString(), kind: 'label', part_id: other.part_id, supersedes: 0,
      verdict: 'fail', defect_class: 'scratch', note: null, by: 'frame-test', image: other.image, regions };
    const imageRoute = `**/api/v1/images/${other.image}`;
    const labelsRoute = `**/api/v1/inspections/${other.part_id}/labels`;
    await page.route(imageRoute, (route) => route.fulfill({ status: 200, contentType: 'image/png', body: png }));
    await page.route(labelsRoute, (route) => (route.request().method() === 'GET'
      ? route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify([label]) })
      : route.abort()));
    try {
      await page.goto(`${baseUrl}/label?part=${other.part_id}`);
      await until('the 5-megapixel part open', async () => {
        const size = await page.evaluate(() => window.labelPage.imageSize());
        return size && size[0] === width && size[1] === height;
      }, 30_000, 200);
      const shown = await page.evaluate(() => window.labelPage.regions().length);
      expect(shown === 500, `the page holds ${shown} regions`);
      const report = { ...(await measureFrames()), image: [width, height], regions: shown };
      await writeFile(path.join(outDir, 'label-frames-5mpx.json'), `${JSON.stringify(report, null, 2)}\n`);
      console.log(`label: 5 Mpx, 500 shapes: ${report.frames} frames, ${report.mean_frame_ms.toFixed(1)} ms a frame (${(1000 / report.mean_frame_ms).toFixed(0)} fps), ${report.mean_draw_ms.toFixed(2)} ms drawing (report only)`);
    } finally {
      await page.unroute(imageRoute);
      await page.unroute(labelsRoute);
      await page.goto(`${baseUrl}/label?part=${partId}`);
    }
  });
}, 'label-final.png');
