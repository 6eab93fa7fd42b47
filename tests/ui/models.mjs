// Drives the models page in headless Chromium against a running station on the simulated line:
// an engineer onboards a new product from the parts the live model passed (an anomaly model
// trained in the station, its phases and time left shown while it runs), sees its validation
// figures and heat maps, runs it in shadow against the live model, promotes it behind a
// confirmation and rolls back, backtests it over the last minutes; cancels a training job from
// its card; renames a defect class (its labels follow); onboards another product from
// images uploaded through the page (a file that is no image is refused by name) and again as a
// zip, at the input size asked for; asks for a template model with its golden part (refusals
// shown with their reasons); edits the defect classes; an operator is kept out.
// Usage: LINESIGHT_TOKEN=<engineer> LINESIGHT_OPERATOR_TOKEN=<operator> node tests/ui/models.mjs http://127.0.0.1:PORT OUTDIR
import path from 'node:path';
import zlib from 'node:zlib';
import { accessible, expect, refused, signIn, start, until } from './harness.mjs';

const ui = await start('models', { giveUpAfterMs: 300_000 });
const { page, baseUrl, outDir, check, finish, api, json } = ui;
const operatorToken = process.env.LINESIGHT_OPERATOR_TOKEN;

// A zip of `files` ({ name, buffer }), deflated, as a computer's "compress folder" makes one.
function zipOf(files) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const { name, buffer } of files) {
    const data = zlib.deflateRawSync(buffer);
    const fileName = Buffer.from(name);
    const fields = (signature, extra) => {
      const head = Buffer.alloc(extra);
      head.writeUInt32LE(signature, 0);
      return head;
    };
    const local = fields(0x04034b50, 30);
    local.writeUInt16LE(20, 4); // version needed
    local.writeUInt16LE(8, 8); // deflate
    local.writeUInt32LE(zlib.crc32(buffer), 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(buffer.length, 22);
    local.writeUInt16LE(fileName.length, 26);
    const central = fields(0x02014b50, 46);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(8, 10);
    central.writeUInt32LE(zlib.crc32(buffer), 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(buffer.length, 24);
    central.writeUInt16LE(fileName.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, fileName, data);
    centrals.push(central, fileName);
    offset += local.length + fileName.length + data.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, directory, end]);
}

let liveBefore;
let version;

await finish(async () => {
  await check("an engineer's models page shows what runs, and has no serious accessibility violation (axe-core)", async () => {
    // Enough good parts for a model: 20 at least, of the last hour.
    await until('30 passed parts with images', async () => {
      const { items } = await json('/api/v1/inspections?limit=500');
      return items.filter((p) => p.verdict === 'pass' && p.image).length >= 30;
    }, 120_000);
    liveBefore = (await json('/api/v1/models')).live.version;
    await signIn(ui);
    const response = await page.goto(baseUrl + '/models');
    expect(response.status() === 200, `GET /models answered ${response.status()}`);
    await page.waitForSelector('#live dd');
    const shown = await page.textContent('#live');
    expect(shown.includes(liveBefore), `the page shows ${JSON.stringify(shown)} as live, the API ${liveBefore}`);
    await accessible(page);
  });

  await check('the drift panel shows the watch on the live model, each check as the API gives it', async () => {
    // 50 parts at least before a check compares anything; the watch evaluates every 5 s.
    let report;
    await until('a drift report on 50 parts', async () => {
      ({ report } = await json('/api/v1/drift'));
      return report && report.checks[0].parts >= 50;
    }, 120_000);
    await page.evaluate(() => window.modelsPage.refreshDrift());
    const rows = await page.$$eval('#drift-checks tbody tr', (trs) => trs.map((tr) => tr.dataset.check));
    expect(JSON.stringify(rows) === JSON.stringify(['inputs', 'scores', 'flags', 'shadow']), `rows ${rows}`);
    expect(report.has_reference, 'the shipped model has a drift reference');
    const inputs = await page.textContent('#drift-checks tr[data-check="inputs"]');
    expect(/unlike the training images/.test(inputs), `inputs row: ${inputs}`);
    expect(!report.drifting, `the simulated line has not changed, yet: ${report.message}`);
    const summary = await page.textContent('#drift-summary');
    expect(summary.includes('fits the last'), `summary: ${summary}`);
  });

  await check('onboarding a product from the last hour of passed parts shows each phase, then the model with its figures and heat maps (axe-core again)', async () => {
    await page.selectOption('#family', 'anomaly');
    await page.fill('#name', 'ui-product');
    expect(await page.isChecked('#passed-as-good'), 'an anomaly model counts passed parts as good by default');
    await page.click('#start-training');
    const article = await page.waitForSelector('article.job', { timeout: 10_000 });
    const id = await article.getAttribute('data-job');
    const seen = new Set();
    const state = await until('finished training job', async () => {
      const phase = await page.$(`article[data-job="${id}"] .phase`);
      if (phase) seen.add(await phase.textContent());
      const s = await page.getAttribute(`article[data-job="${id}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 240_000);
    const job = await json(`/api/v1/training/${id}`);
    expect(state === 'done', `the job ${state}: ${job.error}`);
    // While it ran the page said what it was doing; once done it lists every phase, with the
    // counts of those that count (a page polling once a second misses the short ones live).
    expect(seen.size > 0, 'no phase was shown while it ran');
    expect(job.phases.some((p) => p.total > 0 && p.done === p.total), `the job's phases: ${JSON.stringify(job.phases)}`);
    version = job.model.version;
    const took = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
    console.log(`models: onboarded from ${job.training_set.good} good parts of ${job.training_set.parts_in_period}: trained in ${job.model.card.training_duration_s.toFixed(1)} s, the job took ${took.toFixed(1)} s (report only)`);
    const figures = await page.textContent(`article[data-job="${id}"] dl.figures`);
    for (const term of [version, 'How it was chosen', 'False rejects at the threshold', 'Training took', 'Phases']) {
      expect(figures.includes(term), `the figures lack ${JSON.stringify(term)}: ${figures}`);
    }
    expect(/Phases.*\(\d+ of \d+\)/.test(figures), `the figures show no phase with a count: ${figures}`);
    // The onboarding chose its input size on the product's own images: the card's choice shows.
    const choice = job.model.card.input_size_choice;
    expect(choice && choice.chosen === job.model.card.input_size, `the card's choice: ${JSON.stringify(choice)}`);
    expect(figures.includes(`Input size${choice.chosen} px`), `the figures do not show the input size ${choice.chosen}: ${figures}`);
    // And the feature maps its patches keep, each tried on the same painted defects.
    const maps = job.model.card.patch_stages_choice;
    expect(maps && maps.chosen === (job.model.card.patch_stages ?? 'both') && maps.trials.length === 3, `the card's feature maps: ${JSON.stringify(maps)}`);
    const tried = maps.trials.map((t) => t.painted_auroc.toFixed(3));
    expect(figures.includes('Feature maps') && tried.every((a) => figures.includes(a)), `the figures do not show each feature map tried (${tried.join(', ')}): ${figures}`);
    // And its memory bank's size, with how the run chose it.
    const bank = job.model.card.bank_size_choice;
    expect(bank && typeof bank.rule === 'string' && bank.rule.length > 0, `the card's bank choice: ${JSON.stringify(bank)}`);
    expect(figures.includes(`Memory bank${job.model.card.bank_size} entries`), `the figures do not show the bank of ${job.model.card.bank_size}: ${figures}`);
    const rises = bank.trials.map((t) => `${t.bank_size} ${t.score_rise >= 0 ? '+' : ''}${(t.score_rise * 100).toFixed(1)} %`);
    expect(rises.every((r) => figures.includes(r)), `the figures do not show each bank tried (${rises.join(', ')}): ${figures}`);
    // And which of its scores it sums, chosen on defects painted on its good validation parts.
    const scores = job.model.card.score_choice;
    expect(scores && scores.counted.length > 0, `the card's score choice: ${JSON.stringify(scores)}`);
    const summed = scores.counted.map((s) => s.replaceAll('_', ' ')).join(' + ');
    expect(figures.includes(`Scores summed${summed}: ${scores.rule}`), `the figures do not show the scores summed (${summed}) and their rule: ${figures}`);
    // Every preview's image and heat map loaded.
    const images = await page.$$eval(`article[data-job="${id}"] .previews img`, (list) => list.map((i) => ({ src: i.src, width: i.naturalWidth })));
    expect(images.length >= 4, `${images.length} preview images`);
    const broken = images.filter((i) => i.width === 0);
    expect(broken.length === 0, `not loaded: ${broken.map((i) => i.src).join(', ')}`);
    await accessible(page); // the finished job, its figures and previews too
    await page.screenshot({ path: path.join(outDir, 'models.png'), fullPage: true });
  });

  await check('a running training job is cancelled from its card behind a confirmation: it ends cancelled and adds no model', async () => {
    await page.fill('#name', 'ui-cancelled');
    await page.click('#start-training');
    const article = await page.waitForSelector('article.job[data-state="running"] >> text=ui-cancelled', { timeout: 10_000 });
    const id = await (await article.evaluateHandle((e) => e.closest('article'))).getAttribute('data-job');
    await page.click(`article[data-job="${id}"] button.cancel-training`);
    await page.waitForSelector('dialog#confirm[open]');
    expect((await page.textContent('#confirm-text')).includes(`#${id}`), 'the dialog names the job');
    await page.click('dialog#confirm button[value="ok"]');
    const state = await until('the job stopped', async () => {
      const s = await page.getAttribute(`article[data-job="${id}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 60_000);
    const job = await json(`/api/v1/training/${id}`);
    expect(state === 'cancelled' && job.state === 'cancelled' && job.cancel_requested && !job.model,
      `the job ended ${state}: ${JSON.stringify({ state: job.state, error: job.error })}`);
    const { available } = await json('/api/v1/models');
    expect(!available.some((m) => m.version.startsWith('ui-cancelled')), `a cancelled job added a model: ${available.map((m) => m.version)}`);
    expect((await page.textContent(`article[data-job="${id}"]`)).includes('nothing was added'), 'the card says it was cancelled');
  });

  await check('run in shadow: the page compares its verdicts with the live model', async () => {
    await page.click(`article.job[data-state="done"] button:has-text("Run in shadow")`);
    await until('shadow on the page', async () => (await page.textContent('#shadow')).includes(version), 20_000);
    await until('parts compared', async () => {
      await page.evaluate(() => window.modelsPage.refreshModels());
      const text = await page.textContent('#shadow-summary');
      const compared = Number(/Partscompared(\d+)/.exec(text.replace(/\s+/g, ''))?.[1] ?? 0);
      return compared >= 3;
    }, 60_000);
  });

  await check('promote asks first and makes the model live; roll back asks first and returns', async () => {
    await page.click(`article.job[data-state="done"] button:has-text("Promote")`);
    await page.waitForSelector('dialog#confirm[open]');
    expect((await page.textContent('#confirm-text')).includes(version), 'the dialog names the version');
    await page.click('dialog#confirm button[value="ok"]');
    await until('the new model live', async () => (await json('/api/v1/models')).live.version === version, 30_000);
    await until('the page showing it live', async () => (await page.textContent('#live')).includes(version), 10_000);
    // Cancel changes nothing.
    await page.click('#rollback');
    await page.waitForSelector('dialog#confirm[open]');
    await page.click('dialog#confirm button[value="cancel"]');
    expect((await json('/api/v1/models')).live.version === version, 'cancel rolled back');
    await page.click('#rollback');
    await page.waitForSelector('dialog#confirm[open]');
    await page.click('dialog#confirm button[value="ok"]');
    await until('the earlier model live again', async () => (await json('/api/v1/models')).live.version === liveBefore, 30_000);
    const events = (await json('/api/v1/models')).events.slice(-2).map((e) => e.action);
    expect(JSON.stringify(events) === '["promote","rollback"]', `the last changes are ${events}`);
  });

  await check('a backtest replays the last 15 minutes through the new model and reports what would change; another is cancelled from its card', async () => {
    await page.selectOption('#backtest-model', version);
    await page.selectOption('#backtest-period', '15');
    await page.click('#start-backtest');
    const article = await page.waitForSelector('article[data-backtest]', { timeout: 10_000 });
    const id = await article.getAttribute('data-backtest');
    const state = await until('finished backtest', async () => {
      const s = await page.getAttribute(`article[data-backtest="${id}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 180_000);
    const job = await json(`/api/v1/backtests/${id}`);
    expect(state === 'done', `the backtest ${state}: ${job.error}`);
    const figures = (await page.textContent(`article[data-backtest="${id}"] dl.figures`)).replace(/\s+/g, ' ');
    const replayed = `${job.report.replayed} of ${job.report.parts_in_period}`;
    console.log(`models: backtest of ${job.report.replayed} parts in ${job.report.took_s.toFixed(1)} s (report only)`);
    expect(job.report.replayed > 0 && figures.includes(replayed), `the page reads ${figures}; the API says ${replayed}`);
    // The same backtest again, cancelled from its card as soon as it shows: it stops with no
    // report (it took seconds above; the card shows within one poll).
    await page.click('#start-backtest');
    const again = await page.waitForSelector(`article[data-backtest]:not([data-backtest="${id}"]) button.cancel-backtest`, { timeout: 10_000 });
    const againId = await (await again.evaluateHandle((e) => e.closest('article'))).getAttribute('data-backtest');
    await again.click();
    const stopped = await until('cancelled backtest', async () => {
      const s = await page.getAttribute(`article[data-backtest="${againId}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 60_000);
    const cancelled = await json(`/api/v1/backtests/${againId}`);
    expect(stopped === 'cancelled' && cancelled.state === 'cancelled' && !cancelled.report,
      `the second backtest ended ${stopped} after ${cancelled.done} of ${cancelled.total} parts`);
  });

  await check('a product the station has not recorded onboards from images uploaded from a computer', async () => {
    // Images as a lab camera would give them: the station's own passed parts, fetched as files.
    const { items } = await json('/api/v1/inspections?limit=500');
    const passed = items.filter((p) => p.verdict === 'pass' && p.image).slice(0, 24);
    const files = [];
    for (const part of passed) {
      const response = await api(`/api/v1/images/${part.image}`);
      expect(response.ok, `GET image ${part.image} answered ${response.status}`);
      files.push({ name: `lab-${part.part_id}.png`, mimeType: 'image/png', buffer: Buffer.from(await response.arrayBuffer()) });
    }
    files.push({ name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not an image') });
    await page.check('input[name=source][value=upload]');
    await page.fill('#upload-set', 'lab-photos');
    await page.fill('#upload-class', 'good');
    await page.setInputFiles('#upload-files', files);
    await page.click('#upload');
    const status = await until('upload finished', async () => {
      const text = await page.textContent('#upload-status');
      return /^\d+ of \d+ uploaded(;|$)/.test(text) ? text : null;
    }, 60_000);
    expect(status.startsWith(`${passed.length} of ${passed.length + 1} uploaded; refused: notes.png`), `the page says ${status}`);
    await until('the set summary', async () => (await page.textContent('#upload-summary')).includes(`${passed.length} good`), 10_000);
    // The same images again, zipped in a folder named for their class, with a file that is no image:
    // the station stores none twice and names the file it refused.
    const zipped = zipOf([
      ...files.slice(0, 6).map((f) => ({ name: `lab-camera/good/${f.name}`, buffer: f.buffer })),
      { name: 'lab-camera/good/readme.txt', buffer: Buffer.from('line 2') },
    ]);
    await page.setInputFiles('#upload-files', []);
    await page.setInputFiles('#upload-zip', { name: 'lab-camera.zip', mimeType: 'application/zip', buffer: zipped });
    await page.click('#upload');
    const zipStatus = await until('zip uploaded', async () => {
      const text = await page.textContent('#upload-status');
      return text.startsWith('lab-camera.zip:') ? text : null;
    }, 60_000);
    expect(zipStatus.startsWith('lab-camera.zip: no new image added, 6 already in the set; refused: lab-camera/good/readme.txt: not an image'),
      `the page says ${zipStatus}`);
    await page.setInputFiles('#upload-zip', []);
    await page.fill('#name', 'lab-product');
    // A size asked for is the size the model sees (the anomaly family would choose otherwise),
    // and turns asked to be chosen are tried one by one, each trial on the card. The turns are
    // the anomaly family's only: the form stops offering them for a supervised model.
    await page.selectOption('#family', 'supervised');
    expect(await page.isDisabled('#orientations'), 'turns offered for a supervised model');
    await page.selectOption('#family', 'anomaly');
    expect(!(await page.isDisabled('#orientations')), 'turns not offered for an anomaly model');
    await page.selectOption('#input-size', '256');
    await page.selectOption('#orientations', 'auto');
    await page.click('#start-training');
    const article = await page.waitForSelector('article.job[data-state] >> text=lab-product', { timeout: 10_000 });
    const id = await (await article.evaluateHandle((e) => e.closest('article'))).getAttribute('data-job');
    const state = await until('finished training job', async () => {
      const s = await page.getAttribute(`article[data-job="${id}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 240_000);
    const job = await json(`/api/v1/training/${id}`);
    expect(state === 'done', `the job ${state}: ${job.error}`);
    expect(job.source.kind === 'upload' && job.training_set.good === passed.length, `trained on ${JSON.stringify(job.training_set)}`);
    console.log(`models: onboarded from ${passed.length} uploaded images: trained in ${job.model.card.training_duration_s.toFixed(1)} s (report only)`);
    const meta = await page.textContent(`article[data-job="${id}"] p.muted`);
    expect(meta.includes('Upload set lab-photos'), `the job reads ${meta}`);
    const card = job.model.card;
    expect(card.input_size === 256 && card.input_size_choice === undefined, `asked 256, the card says ${card.input_size} (${JSON.stringify(card.input_size_choice)})`);
    const figures = await page.textContent(`article[data-job="${id}"] dl.figures`);
    expect(figures.includes('Input size256 px') && !figures.includes('px, chosen'), `the figures read ${figures}`);
    const turns = card.orientation_choice;
    expect(turns && turns.trials.length === 7 && turns.trials.every((t) => t.turned_auroc >= 0 && t.turned_auroc <= 1),
      `asked for turns to be chosen, the card says ${JSON.stringify(turns)}`);
    expect(figures.includes('Turns learnt') && figures.includes('chosen by how well turned good parts stand out (AUROC flip-horizontal'),
      `the figures read ${figures}`);
    await page.selectOption('#input-size', '');
    await page.selectOption('#orientations', '');
  });

  await check('a template model is asked for with its golden part: the form offers it no size, turns or uploads, and says why the station refuses a part or a set', async () => {
    // A template model takes the station's parts only: choosing it switches back to them.
    await page.selectOption('#family', 'anomaly');
    await page.check('input[name=source][value=upload]');
    await page.selectOption('#family', 'template');
    expect(await page.isVisible('#golden-part'), 'no golden part asked for');
    expect(await page.isChecked('input[name=source][value=records]') && await page.isDisabled('input[name=source][value=upload]'),
      'uploads still offered for a template model');
    expect(await page.isDisabled('#input-size') && await page.isDisabled('#orientations'), 'a size or turns offered for a template model');
    expect(await page.isChecked('#passed-as-good'), 'passed parts not counted as good for a template model');
    await page.fill('#name', 'board');
    await page.fill('#golden-part', '999999999');
    await page.click('#start-training');
    await until('the refusal shown', async () => /golden part 999999999: no such part/.test(await page.textContent('#error')), 10_000);
    // A part the live model passed without a defect, and nobody labelled, is a golden part;
    // the period's parts have too few regions drawn round their defects, so the job says what
    // to label.
    const { items } = await json('/api/v1/inspections?limit=500');
    let golden;
    for (const p of items.filter((p) => p.verdict === 'pass' && p.image && !p.defect_class).slice(0, 20)) {
      if ((await json(`/api/v1/inspections/${p.part_id}/labels`)).length === 0) { golden = p; break; }
    }
    const passed = items.filter((p) => p.verdict === 'pass');
    expect(golden, `no unlabelled part passed without a defect, with an image, of ${items.length} parts: ${passed.length} passed, ${passed.filter((p) => p.image).length} with an image, ${passed.filter((p) => p.defect_class).length} with a defect class`);
    await page.fill('#golden-part', String(golden.part_id));
    await page.click('#start-training');
    const article = await page.waitForSelector('article.job[data-state] >> text=board (template)', { timeout: 10_000 });
    const id = await (await article.evaluateHandle((e) => e.closest('article'))).getAttribute('data-job');
    const state = await until('finished template job', async () => {
      const s = await page.getAttribute(`article[data-job="${id}"]`, 'data-state');
      return s !== 'running' ? s : null;
    }, 60_000);
    const job = await json(`/api/v1/training/${id}`);
    expect(state === 'failed' && job.golden_part === golden.part_id && job.family === 'template', `the job ${state}: ${JSON.stringify(job)}`);
    const meta = await page.textContent(`article[data-job="${id}"] p.muted`);
    expect(meta.includes(`golden part ${golden.part_id}`), `the job reads ${meta}`);
    const error = await page.textContent(`article[data-job="${id}"] p.fail`);
    expect(/defective parts labelled with regions of the golden part's product and size; a template model needs at least 8: draw regions/.test(error), `the job says ${error}`);
    await page.selectOption('#family', 'anomaly');
    expect(await page.isHidden('#golden-part') && !(await page.isDisabled('#input-size')), 'the template fields stay after going back');
  });

  await check('the defect classes: tolerating one asks first, a new class is saved, a class named twice is refused with the reason, a renamed class keeps its labels (axe-core again)', async () => {
    await page.waitForSelector('#classes tr');
    const names = await page.$$eval('#classes .class-name', (list) => list.map((i) => i.value));
    expect(JSON.stringify(names) === '["crack","dent","scratch","spot"]', `the table lists ${names}`);
    await page.locator('#classes tr').nth(names.indexOf('spot')).locator('.class-rejects').uncheck();
    await page.click('#add-class');
    await page.fill('#classes tr:last-child .class-name', 'burr');
    await page.selectOption('#classes tr:last-child .class-severity', 'minor');
    // Cancel saves nothing.
    await page.click('#save-classes');
    await page.waitForSelector('dialog#confirm[open]');
    expect((await page.textContent('#confirm-text')).includes('spot'), 'the dialog names the class the gate will pass');
    await page.click('dialog#confirm button[value="cancel"]');
    expect((await json('/api/v1/defect-classes')).classes.length === 4, 'cancel saved the classes');
    await page.click('#save-classes');
    await page.waitForSelector('dialog#confirm[open]');
    await page.click('dialog#confirm button[value="ok"]');
    await until('the classes saved', async () => (await page.textContent('#classes-status')).includes('Saved: 5 classes'), 10_000);
    const saved = (await json('/api/v1/defect-classes')).classes;
    const spot = saved.find((c) => c.name === 'spot');
    const burr = saved.find((c) => c.name === 'burr');
    expect(spot && !spot.rejects, `spot is saved as ${JSON.stringify(spot)}`);
    expect(burr && burr.rejects && burr.severity === 'minor' && /^#[0-9a-f]{6}$/.test(burr.colour), `burr is saved as ${JSON.stringify(burr)}`);
    // A second class named crack: refused, the station says why, nothing changes.
    await page.click('#add-class');
    await page.fill('#classes tr:last-child .class-name', 'crack');
    await page.click('#save-classes');
    await until('the refusal shown', async () => /named twice/.test(await page.textContent('#error')), 10_000);
    expect((await json('/api/v1/defect-classes')).classes.length === 5, 'a refused change changed the classes');
    await accessible(page);
    await page.evaluate(() => window.modelsPage.refreshClasses());
    // A class renamed in its row: the parts labelled with it follow the new name.
    const { items: recorded } = await json('/api/v1/inspections?limit=50');
    const part = recorded.find((p) => p.image);
    const labelled = await api(`/api/v1/inspections/${part.part_id}/labels`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ verdict: 'fail', defect_class: 'dent' }),
    });
    expect(labelled.ok, `labelling part ${part.part_id} answered ${labelled.status}`);
    await page.locator('#classes tr').nth(names.indexOf('dent')).locator('.class-name').fill('dent-deep');
    await page.click('#save-classes');
    const renamed = await until('the rename saved', async () => {
      const text = await page.textContent('#classes-status');
      return /^Saved: 5 classes; \d+ labelled parts? follows? the new name\.$/.test(text) ? text : null;
    }, 10_000);
    const labels = await json(`/api/v1/inspections/${part.part_id}/labels`);
    const latest = labels[labels.length - 1];
    expect(latest.defect_class === 'dent-deep' && (latest.note ?? '').includes('dent → dent-deep'),
      `part ${part.part_id}'s latest label after "${renamed}": ${JSON.stringify(latest)}`);
    const afterRename = (await json('/api/v1/defect-classes')).classes.map((c) => c.name);
    expect(afterRename.includes('dent-deep') && !afterRename.includes('dent'), `the classes are ${afterRename}`);
    // Someone else changes the classes after the page read them: the page's save is refused
    // and says why, and their change stands.
    const theirs = (await json('/api/v1/defect-classes')).classes.slice(0, 4);
    const put = await api('/api/v1/defect-classes', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ classes: theirs }) });
    expect(put.ok, `their PUT answered ${put.status}`);
    await page.click('#save-classes');
    await until('the stale save refused', async () => /changed since/.test(await page.textContent('#error')), 10_000);
    expect((await json('/api/v1/defect-classes')).classes.length === 4, 'the stale page undid their change');
  });

  await check('an operator is refused the models page (403) and told the role may not change models', async () => {
    await refused(ui, operatorToken, '/models', /may not train or change models/i);
  });
}, 'models-final.png');
