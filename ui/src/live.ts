// The live page's script (served as /assets/live.js, bundled by build.rs).
import { byId, errorMessage } from './page';
import { errorOf, type DefectClass, type DefectClasses, type WhoAmI } from './api';

// What the station's API and event stream send, as far as this page reads it (the shapes are
// the OpenAPI document's, src/serve/openapi.json; page and API ship in one binary).

type Verdict = 'pass' | 'fail' | 'error';
type Disposition = 'pass' | 'reject_failed' | 'reject_error' | 'reject_no_verdict';
type Actuation = 'not_required' | 'done' | 'failed';

/** A defect region (`defect_size`): pixels always, millimetres where the calibration has a scale. */
interface DefectSize {
  width_px: number;
  height_px: number;
  area_px: number;
  width_mm: number | null;
  height_mm: number | null;
  area_mm2: number | null;
}

/** A defect the model outlined (`DefectBox`): `[x_min, y_min, x_max, y_max]` in the calibrated image's pixels. */
interface DefectBox {
  bbox: [number, number, number, number];
  score: number;
  /** The box's own defect class, from models that learn classes. */
  class?: string;
}

/** One camera's look at a part (an `InspectionRecord`'s `views`). */
interface InspectionView {
  camera: string;
  verdict: Verdict;
  score: number | null;
  defect_class: string | null;
  image: string | null;
  heat_map: string | null;
  error: string | null;
  defect_size: DefectSize | null;
  /** Absent when the model outlined nothing. */
  defect_boxes?: DefectBox[];
}

/** One part's quality record (`InspectionRecord`): the list's items and the stream's `inspection` events. */
interface InspectionRecord {
  seq: number;
  recorded_at: string;
  kind: 'inspection';
  part_id: number;
  captured_at: string;
  decided_at: string;
  verdict: Verdict | null;
  score: number | null;
  threshold: number | null;
  disposition: Disposition;
  inspection_late: boolean;
  actuation: Actuation;
  actuation_error: string | null;
  model_version: string | null;
  defect_class: string | null;
  image: string | null;
  heat_map: string | null;
  error: string | null;
  /** Absent from records older than the field. */
  defect_size?: DefectSize | null;
  /** Absent when the model outlined nothing. */
  defect_boxes?: DefectBox[];
  /** Absent with one camera. */
  views?: InspectionView[];
}

/** `GET /api/v1/inspections` (`InspectionPage`). */
interface InspectionPage {
  items: InspectionRecord[];
  next_before: number | null;
}

/** The station's part counters (`PartCounts`). */
interface PartCounts {
  captured: number;
  frames_dropped: number;
  recorded: number;
  passed: number;
  rejected_failed: number;
  rejected_error: number;
  rejected_no_verdict: number;
  gate_commands_failed: number;
  in_flight: number;
}

/** Whether the running station works as it should, as its monitor judged it. */
interface StationHealth {
  condition: 'ok' | 'degraded' | 'fault';
  reason: string | null;
}

/** `GET /api/v1/station` (`StationView`). */
interface StationView {
  name: string;
  state: 'running' | 'stopping' | 'stopped' | 'faulted';
  simulated: boolean;
  health: StationHealth;
  model_version: string;
  threshold: number;
  shadow_model_version: string | null;
  /** Alarms raised and not cleared, by code (e.g. `disk_low`). */
  active_alarms: string[];
  parts: PartCounts;
}

/** One camera's score against the threshold (`ExplanationLook`). */
interface ExplanationLook {
  camera: string | null;
  verdict: Verdict;
  score: number | null;
  threshold: number | null;
  margin: number | null;
  calibration: string | null;
}

/** `GET /api/v1/inspections/{part_id}/explanation` (`Explanation`). */
interface Explanation {
  part_id: number;
  summary: string;
  verdict: Verdict | null;
  model: { kind: string; architecture: string } | null;
  model_version: string | null;
  looks: ExplanationLook[];
  timings_ms: {
    capture_to_inspected: number | null;
    capture_to_decided: number;
    decided_before_gate: number;
    capture_to_actuated: number | null;
  };
}

type AlarmPriority = 'low' | 'medium' | 'high' | 'critical';
/** ISA-18.2 alarm state (`AlarmStateIsa`). */
type AlarmState =
  | 'normal' | 'active_unacknowledged' | 'active_acknowledged' | 'returned_unacknowledged'
  | 'shelved' | 'suppressed' | 'out_of_service';

/** One alarm's current state (`AlarmView`; `GET /api/v1/alarms` answers a list of them). */
interface AlarmView {
  name: string;
  message: string;
  priority: AlarmPriority;
  state: AlarmState;
  since: string | null;
}

/** How long after its disposition was decided, and after its record became durable, a part was shown. */
interface LiveLatency {
  durable: number;
  decided: number;
}

declare global {
  interface Window {
    /** Read by the UI test (tests/ui/live.mjs) for its latency report. */
    liveLatencyMs: LiveLatency[];
  }
}

const POLL_MS = 700;
// A request the station has not answered by now counts as lost, so the banner shows during a hang too.
const FETCH_TIMEOUT_MS = 3000;
// Image, heat map and verdict change together so a heat map never sits on the wrong part,
// but a slow image must not hold back a verdict for longer than this.
const IMAGE_WAIT_MS = 1500;

const DISPOSITIONS: Readonly<Record<Disposition, string>> = {
  pass: 'pass', reject_failed: 'reject · fail', reject_error: 'reject · error', reject_no_verdict: 'reject · no verdict',
};
const ACTUATIONS: Readonly<Record<Actuation, string>> = { not_required: '—', done: 'fired', failed: 'FAILED' };

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const imageUrl = (digest: string) => `/api/v1/images/${encodeURIComponent(digest)}`;

const ALARM_TEXT: Readonly<Partial<Record<string, string>>> = {
  disk_low: 'DISK LOW: part images are not being saved (records are)',
  records_failing: 'RECORDS NOT SAVED: the disk is full; records wait in memory',
};

function setText(id: string, value: string) {
  const el = byId(id);
  if (el.textContent !== value) el.textContent = value;
}

function verdictLabel(verdict: Verdict | null) { return verdict ? String(verdict).toUpperCase() : 'NO VERDICT'; }
function verdictKey(verdict: Verdict | null) { return verdict !== null && ['pass', 'fail', 'error'].includes(verdict) ? verdict : 'none'; }
function score(value: number | null) { return typeof value === 'number' ? value.toFixed(3) : '—'; }

// The defect region's size: millimetres on the part where the calibration has a scale,
// calibrated-image pixels otherwise; a dash when no part of the heat map reached the threshold.
function defectSize(size: DefectSize | null | undefined) {
  if (!size) return '—';
  const { width_mm: widthMm, height_mm: heightMm } = size;
  const mm = typeof widthMm === 'number' && typeof heightMm === 'number';
  const [w, h, unit]: [number, number, string] = mm ? [widthMm, heightMm, 'mm'] : [size.width_px, size.height_px, 'px'];
  return `${w.toFixed(1)} × ${h.toFixed(1)} ${unit}`;
}

// The station's defect classes by name (colour, severity, whether they reject), read with the
// list now and then: an engineer may change them while the page is open.
let defectClasses = new Map<string, DefectClass>();
async function loadDefectClasses() {
  const body = await getJson<DefectClasses>('/api/v1/defect-classes');
  defectClasses = new Map((body.classes ?? []).map((c) => [c.name, c]));
}

// "defect crack (critical) 3.0 × 1.5 mm"; a class the station tolerates says so, since its part
// passed with a defect.
function defectText(record: InspectionRecord | null) {
  const said: string[] = [];
  const info = record?.defect_class ? defectClasses.get(record.defect_class) : null;
  if (record?.defect_class) {
    const tolerated = info && !info.rejects ? ', tolerated' : '';
    said.push(info ? `${info.name} (${info.severity}${tolerated})` : record.defect_class);
  }
  if (record?.defect_size) said.push(defectSize(record.defect_size));
  return said.length ? `defect ${said.join(' ')}` : '';
}

function disposition(record: InspectionRecord) {
  const label = DISPOSITIONS[record.disposition] ?? String(record.disposition);
  return record.inspection_late ? `${label} · late` : label;
}

// Local HH:MM:SS.mmm; the station sends nanoseconds, which Date does not promise to parse.
function clock(timestamp: string) {
  const date = new Date(String(timestamp).replace(/(\.\d{3})\d+/, '$1'));
  if (Number.isNaN(date.getTime())) return String(timestamp);
  const pad = (n: number, width = 2) => String(n).padStart(width, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

// `T` is what the API documents `path` to answer (the types above); the page trusts it.
async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const body: unknown = await response.json();
  return body as T;
}

function setCount(id: string, value: number) {
  const el = byId(id);
  setText(id, String(value));
  el.toggleAttribute('data-nonzero', value !== 0);
}

function renderStation(station: StationView) {
  setText('station-name', station.name);
  document.title = `${station.name} — Linesight`;
  setText('station-state', station.state);
  byId('station-state').dataset.state = station.state;
  byId('simulated').hidden = !station.simulated;
  // Running is not the same as well: say what is failing, in the monitor's words.
  const health: StationHealth = station.health ?? { condition: 'ok', reason: null };
  byId('station-health').dataset.condition = health.condition;
  byId('station-health').hidden = health.condition === 'ok';
  setText('station-health', health.condition === 'ok' ? '' : `${health.condition.toUpperCase()}: ${health.reason ?? ''}`);
  setText('model-version', station.model_version);
  setText('threshold', score(station.threshold));
  setText('shadow-version', station.shadow_model_version ?? 'none');
  // Alarms the station holds now, in words an operator acts on.
  const alarms = station.active_alarms ?? [];
  const said = alarms.map((code) => ALARM_TEXT[code] ?? code);
  byId('alarms').hidden = said.length === 0;
  setText('alarms', said.join(' · '));
  const parts = station.parts;
  setCount('count-captured', parts.captured);
  setCount('count-passed', parts.passed);
  const rejected = parts.rejected_failed + parts.rejected_error + parts.rejected_no_verdict;
  setCount('count-rejected', rejected);
  stationCounts = { passed: parts.passed, rejected };
  setCount('count-policy', parts.rejected_no_verdict);
  setCount('count-dropped', parts.frames_dropped);
  setCount('count-gate-failed', parts.gate_commands_failed);
  setCount('count-in-flight', parts.in_flight);
}

function addCell(tr: HTMLTableRowElement, value: string, className?: string) {
  const td = tr.insertCell();
  td.textContent = value;
  if (className) td.className = className;
  return td;
}

function partRow(record: InspectionRecord) {
  const tr = document.createElement('tr');
  tr.dataset.partId = String(record.part_id);
  tr.dataset.disposition = String(record.disposition);
  if (record.error) tr.title = record.error;
  const why = document.createElement('button');
  why.type = 'button';
  why.className = 'why';
  why.textContent = String(record.part_id);
  why.setAttribute('aria-label', `Why part ${record.part_id} got its verdict`);
  why.dataset.partId = String(record.part_id);
  addCell(tr, '', 'num').append(why);
  addCell(tr, clock(record.captured_at), 'num');
  addCell(tr, verdictLabel(record.verdict), 'verdict').dataset.verdict = verdictKey(record.verdict);
  addCell(tr, score(record.score), 'num');
  addCell(tr, defectSize(record.defect_size), 'num defect');
  viewsCell(tr.insertCell(), record.views ?? []);
  addCell(tr, disposition(record));
  const gate = addCell(tr, ACTUATIONS[record.actuation] ?? String(record.actuation));
  gate.dataset.actuation = String(record.actuation);
  if (record.actuation_error) gate.title = record.actuation_error;
  return tr;
}

// Each camera's verdict, named: "top PASS · side FAIL" (empty with one camera).
function viewsCell(td: HTMLTableCellElement, views: InspectionView[]) {
  td.className = 'views';
  for (const view of views) {
    const span = document.createElement('span');
    span.className = 'view-verdict';
    span.dataset.verdict = verdictKey(view.verdict);
    span.textContent = `${view.camera} ${verdictLabel(view.verdict)}`;
    if (view.error) span.title = view.error;
    td.append(span);
  }
}

// The latest part as each camera saw it: image, heat map over it, verdict.
function showViews(views: InspectionView[]) {
  const strip = byId('latest-views');
  strip.hidden = views.length === 0;
  strip.replaceChildren(...views.map((view) => {
    const figure = document.createElement('figure');
    figure.className = 'view';
    figure.dataset.camera = view.camera;
    const frame = document.createElement('div');
    frame.className = 'frame';
    const layers: [string | null, string][] = [[view.image, 'image'], [view.image && view.heat_map, 'heat']];
    for (const [digest, className] of layers) {
      const img = document.createElement('img');
      img.className = className;
      img.alt = className === 'image' ? `${view.camera} view` : '';
      setImage(img, digest);
      img.addEventListener('error', () => { img.hidden = true; });
      frame.append(img);
    }
    const boxes = boxLayer();
    frame.append(boxes);
    const image = frame.querySelector<HTMLImageElement>('img.image');
    if (image) showBoxes(boxes, image, null, view.defect_boxes ?? [], classColour(view.defect_class));
    const caption = document.createElement('figcaption');
    caption.dataset.verdict = verdictKey(view.verdict);
    caption.textContent = `${view.camera} ${verdictLabel(view.verdict)}`;
    if (view.error) caption.title = view.error;
    figure.append(frame, caption);
    return figure;
  }));
}

const SVG = 'http://www.w3.org/2000/svg';
// Outlines where the class has no colour of its own: amber reads over the red heat map.
const BOX_COLOUR = '#facc15';

// The defects the model outlined, drawn over its image: an SVG in the image's own pixels
// (the image's natural size, known once it has loaded), stretched over the frame with it.
// `part` marks which part's boxes are up, since an image may load after a newer part came.
const boxWaits = new WeakMap<SVGSVGElement, AbortController>();
function showBoxes(svg: SVGSVGElement, img: HTMLImageElement, part: number | null, boxes: DefectBox[], colour: string) {
  const digest = img.dataset.digest ?? '';
  // The boxes up are another part's: off until this part's image is in (a newer call also
  // drops the listeners an older one left waiting).
  boxWaits.get(svg)?.abort();
  svg.replaceChildren();
  svg.toggleAttribute('hidden', true);
  svg.dataset.part = '';
  const draw = () => {
    boxWaits.delete(svg);
    if ((img.dataset.digest ?? '') !== digest) return; // the image moved on to another part
    const [width, height] = [img.naturalWidth, img.naturalHeight];
    const shown = !img.hidden && width > 0 && height > 0 ? boxes : [];
    svg.setAttribute('viewBox', `0 0 ${Math.max(width, 1)} ${Math.max(height, 1)}`);
    svg.replaceChildren(...shown.map((box, i) => {
      const [x0, y0, x1, y1] = box.bbox;
      const rect = document.createElementNS(SVG, 'rect');
      rect.setAttribute('x', String(x0));
      rect.setAttribute('y', String(y0));
      rect.setAttribute('width', String(x1 - x0));
      rect.setAttribute('height', String(y1 - y0));
      rect.setAttribute('stroke', box.class ? classColour(box.class) : colour);
      const title = document.createElementNS(SVG, 'title');
      const named = box.class ? ` ${box.class}` : '';
      title.textContent = `defect ${i + 1}${named}: ${x1 - x0} × ${y1 - y0} px, score ${score(box.score)}`;
      rect.append(title);
      return rect;
    }));
    svg.dataset.part = part === null ? '' : String(part);
    svg.toggleAttribute('hidden', shown.length === 0);
  };
  if (!digest || img.complete) draw();
  else {
    const wait = new AbortController();
    boxWaits.set(svg, wait);
    img.addEventListener('load', () => { wait.abort(); draw(); }, { signal: wait.signal });
    img.addEventListener('error', () => { wait.abort(); draw(); }, { signal: wait.signal });
  }
}

function boxLayer(): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.classList.add('boxes');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('aria-hidden', 'true');
  svg.toggleAttribute('hidden', true);
  return svg;
}

function classColour(cls: string | null | undefined) {
  return (cls ? defectClasses.get(cls)?.colour : null) ?? BOX_COLOUR;
}

function preload(digest: string | null) {
  if (!digest) return null;
  const img = new Image();
  img.src = imageUrl(digest);
  return img.decode().catch(() => {});
}

// Images are content-addressed and immutable: only touch src when the digest changes.
function setImage(img: HTMLImageElement, digest: string | null | undefined) {
  const wanted = digest || '';
  if (img.dataset.digest === wanted) return;
  img.dataset.digest = wanted;
  if (wanted) {
    img.src = imageUrl(wanted);
    img.hidden = false;
  } else {
    img.removeAttribute('src');
    img.hidden = true;
  }
}

const latestBoxes = boxLayer();
latestBoxes.id = 'latest-boxes';
byId('latest-heatmap').after(latestBoxes);

let latestWanted: InspectionRecord | null | undefined;
async function showLatest(record: InspectionRecord | null) {
  latestWanted = record;
  if (record) await Promise.race([Promise.all([preload(record.image), preload(record.heat_map)]), sleep(IMAGE_WAIT_MS)]);
  if (latestWanted !== record) return; // a newer part overtook this one while its images loaded
  setImage(byId('latest-image', HTMLImageElement), record?.image);
  setImage(byId('latest-heatmap', HTMLImageElement), record?.image && record.heat_map);
  showBoxes(latestBoxes, byId('latest-image', HTMLImageElement), record?.part_id ?? null,
    record?.defect_boxes ?? [], classColour(record?.defect_class));
  byId('no-image').hidden = Boolean(record?.image);
  setText('latest-part', record ? `Part ${record.part_id} · ${clock(record.captured_at)}` : 'waiting for parts');
  setText('latest-verdict', record ? verdictLabel(record.verdict) : '—');
  byId('latest-verdict').dataset.verdict = record ? verdictKey(record.verdict) : '';
  setText('latest-score', record ? `score ${score(record.score)}` : '');
  setText('latest-defect', defectText(record));
  const info = record?.defect_class ? defectClasses.get(record.defect_class) : null;
  byId('latest-defect').style.borderLeft = info ? `0.6em solid ${info.colour}` : '';
  byId('latest-defect').style.paddingLeft = info ? '0.3em' : '';
  setText('latest-disposition', record ? disposition(record) : '');
  showViews(record?.views ?? []);
}

let shownItems = '';
function renderParts(items: InspectionRecord[]) {
  const signature = JSON.stringify(items);
  if (signature === shownItems) return;
  shownItems = signature;
  byId('parts').replaceChildren(...items.map(partRow));
  showLatest(items[0] ?? null);
}

for (const img of [byId('latest-image', HTMLImageElement), byId('latest-heatmap', HTMLImageElement)]) img.addEventListener('error', () => { img.hidden = true; });

// Why a part got its verdict, as the station explains it from the record: the model, each
// camera's score against the threshold, the calibration, the timings.
async function explain(partId: string) {
  const panel = byId('explanation');
  setText('explain-part', partId);
  panel.hidden = false;
  panel.dataset.partId = partId;
  byId('flag-form').hidden = !mayFlag;
  byId('flag-note', HTMLInputElement).value = '';
  byId('flag-button', HTMLButtonElement).disabled = false;
  setText('flag-status', '');
  let explained: Explanation;
  try {
    explained = await getJson<Explanation>(`/api/v1/inspections/${encodeURIComponent(partId)}/explanation`);
  } catch (error) {
    setText('explain-summary', `No explanation: ${errorMessage(error)}`);
    return;
  }
  if (panel.dataset.partId !== partId) return; // another part was asked for meanwhile
  setText('explain-summary', explained.summary);
  const rows = explained.looks.map((look) => {
    const tr = document.createElement('tr');
    addCell(tr, look.camera ?? '—');
    addCell(tr, verdictLabel(look.verdict), 'verdict').dataset.verdict = verdictKey(look.verdict);
    addCell(tr, score(look.score), 'num');
    addCell(tr, score(look.threshold), 'num');
    addCell(tr, typeof look.margin === 'number' ? (look.margin >= 0 ? '+' : '') + look.margin.toFixed(3) : '—', 'num');
    addCell(tr, look.calibration ?? '—');
    return tr;
  });
  byId('explain-looks', HTMLTableElement).tBodies[0].replaceChildren(...rows);
  const t = explained.timings_ms;
  const ms = (value: number | null) => (typeof value === 'number' ? `${value.toFixed(1)} ms` : '—');
  const model = explained.model ? `${explained.model_version} (${explained.model.kind}, ${explained.model.architecture})` : (explained.model_version ?? 'no model');
  setText('explain-facts', `Model ${model}. Verdict ${ms(t.capture_to_inspected)} after capture; decided ${ms(t.decided_before_gate)} before the gate.`);
}

byId('parts').addEventListener('click', (event) => {
  const button = event.target instanceof Element ? event.target.closest('button.why') : null;
  if (button instanceof HTMLButtonElement) {
    const partId = button.dataset.partId;
    if (partId === undefined) throw new Error('a "why" button has no data-part-id');
    explain(partId);
  }
});
// A verdict that looks wrong goes to the engineers' labelling queue, first in line.
byId('flag-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const partId = byId('explanation').dataset.partId;
  if (!partId) return;
  const note = byId('flag-note', HTMLInputElement).value.trim();
  byId('flag-button', HTMLButtonElement).disabled = true;
  setText('flag-status', 'Flagging…');
  try {
    const response = await fetch(`/api/v1/inspections/${encodeURIComponent(partId)}/flag`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(note ? { note } : {}),
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    if (!response.ok) {
      const body: unknown = await response.json().catch(() => null);
      throw new Error(errorOf(body) ?? `HTTP ${response.status}`);
    }
    if (byId('explanation').dataset.partId === partId) setText('flag-status', `Part ${partId} flagged for review.`);
  } catch (error) {
    setText('flag-status', `Not flagged: ${errorMessage(error)}`);
  } finally {
    byId('flag-button', HTMLButtonElement).disabled = false;
  }
});

// What this sign-in may do decides which controls show (the API checks again).
let mayFlag = false;
getJson<WhoAmI>('/api/v1/whoami').then((who) => {
  mayFlag = who.may.includes('flag');
  byId('nav-label').hidden = !who.may.includes('label');
  byId('nav-models').hidden = !who.may.includes('change_models');
  if (byId('explanation').dataset.partId) byId('flag-form').hidden = !mayFlag;
}).catch(() => {});

byId('explain-close').addEventListener('click', () => {
  byId('explanation').hidden = true;
  delete byId('explanation').dataset.partId;
});

// ISA-18.2 alarms that need an operator: active, or returned but not yet acknowledged.
const ALARM_POLL_MS = 2000;
const NEEDS_ATTENTION = new Set<AlarmState>(['active_unacknowledged', 'active_acknowledged', 'returned_unacknowledged']);
const PRIORITY_RANK: Readonly<Record<AlarmPriority, number>> = { critical: 0, high: 1, medium: 2, low: 3 };
const STATE_TEXT: Readonly<Partial<Record<AlarmState, string>>> = {
  active_unacknowledged: 'active, not acknowledged',
  active_acknowledged: 'active, acknowledged',
  returned_unacknowledged: 'cleared, not acknowledged',
};

// Acknowledgements on their way: their buttons stay disabled through a re-render.
const acknowledging = new Set<string>();
let shownAlarms = '';

function renderAlarms(alarms: AlarmView[]) {
  // Unchanged alarms leave the rows (and a focused button) alone.
  const key = JSON.stringify([alarms, [...acknowledging]]);
  if (key === shownAlarms) return;
  shownAlarms = key;
  const shown = alarms
    .filter((alarm) => NEEDS_ATTENTION.has(alarm.state))
    .sort((a, b) => (PRIORITY_RANK[a.priority] - PRIORITY_RANK[b.priority]) || String(a.since).localeCompare(String(b.since)));
  const rows = shown.map((alarm) => {
    const row = document.createElement('tr');
    row.dataset.alarm = alarm.name;
    row.dataset.state = alarm.state;
    const priority = row.insertCell();
    priority.className = 'priority';
    priority.dataset.priority = alarm.priority;
    priority.textContent = alarm.priority;
    row.insertCell().textContent = alarm.message;
    row.insertCell().textContent = alarm.since ? clock(alarm.since) : '—';
    const state = row.insertCell();
    state.className = 'state';
    state.textContent = STATE_TEXT[alarm.state] ?? alarm.state;
    const action = row.insertCell();
    if (alarm.state.endsWith('unacknowledged')) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'ack';
      button.dataset.alarm = alarm.name;
      button.textContent = 'Acknowledge';
      button.disabled = acknowledging.has(alarm.name);
      button.setAttribute('aria-label', `Acknowledge: ${alarm.message}`);
      action.append(button);
    }
    return row;
  });
  byId('alarm-rows').replaceChildren(...rows);
  byId('alarm-table').hidden = rows.length === 0;
  byId('no-alarms').hidden = rows.length !== 0;
}

function alarmError(message: string) {
  byId('alarm-error').textContent = message;
  byId('alarm-error').hidden = !message;
}

async function acknowledge(button: HTMLButtonElement) {
  const name = button.dataset.alarm;
  if (name === undefined) throw new Error('an acknowledge button has no data-alarm');
  button.disabled = true;
  acknowledging.add(name);
  alarmError('');
  try {
    const response = await fetch(`/api/v1/alarms/${encodeURIComponent(name)}/acknowledge`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ comment: 'acknowledged on the live page' }),
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    if (!response.ok) {
      const body: unknown = await response.json().catch(() => null);
      alarmError(`Not acknowledged: ${errorOf(body) ?? `HTTP ${response.status}`}`);
      // The alarm list has not changed, so no redraw brings the button back: free it here.
      button.disabled = false;
      return;
    }
  } catch (error) {
    alarmError(`Not acknowledged: ${errorMessage(error)}`);
    button.disabled = false;
  } finally {
    acknowledging.delete(name);
  }
  renderAlarms(await getJson<AlarmView[]>('/api/v1/alarms').catch(() => []));
}

byId('alarm-rows').addEventListener('click', (event) => {
  const button = event.target instanceof Element ? event.target.closest('button.ack') : null;
  if (button instanceof HTMLButtonElement && !button.disabled) acknowledge(button);
});

let alarmsUnread = false;
function alarmLoop() {
  getJson<AlarmView[]>('/api/v1/alarms')
    .then((alarms) => {
      if (alarmsUnread) alarmError('');
      alarmsUnread = false;
      renderAlarms(alarms);
    })
    .catch((error: unknown) => {
      // Never a quiet "no alarm" while the alarms cannot be read.
      alarmsUnread = true;
      alarmError(`Alarms could not be read: ${errorMessage(error)}`);
    })
    .finally(() => setTimeout(alarmLoop, ALARM_POLL_MS));
}
alarmLoop();

// The newest parts, newest first: the table shows the first SHOWN, the reject rate "now" is
// taken over all of them.
const RECENT = 200;
const SHOWN = 20;
let recent: InspectionRecord[] = [];
let stationCounts: { passed: number; rejected: number } | null = null;

function addParts(records: InspectionRecord[]) {
  const byPartId = new Map(recent.map((r) => [r.part_id, r]));
  for (const record of records) byPartId.set(record.part_id, record);
  recent = [...byPartId.values()].sort((a, b) => b.part_id - a.part_id).slice(0, RECENT);
  renderParts(recent.slice(0, SHOWN));
  renderRejectRate();
}

// The reject rate of the newest parts against the rate since the station started: a line
// going wrong shows as "now" well above "normal".
function renderRejectRate() {
  const rejected = recent.filter((r) => r.disposition !== 'pass').length;
  const now = recent.length ? rejected / recent.length : null;
  const settled = stationCounts ? stationCounts.passed + stationCounts.rejected : 0;
  const normal = stationCounts && settled ? stationCounts.rejected / settled : null;
  const percent = (value: number | null) => (value === null ? '—' : `${(100 * value).toFixed(1)} %`);
  setText('reject-rate-now', percent(now));
  setText('reject-rate-normal', `last ${recent.length} parts · ${percent(normal)} since start`);
  // Well above normal, on enough parts to mean it.
  byId('reject-rate-tile').toggleAttribute('data-high', now !== null && normal !== null && recent.length >= 50 && now > 1.5 * normal + 0.02);
}

// Verdicts arrive over Server-Sent Events as they become durable; polling covers the time
// the stream is down (EventSource reconnects by itself, resuming after the last event).
let streamOpen = false;
// How long after its disposition was decided, and after its record became durable, each part
// was shown (for the UI test's report).
window.liveLatencyMs = [];
function openStream() {
  // Labels stay off this stream: a label can carry a large mask, and this page shows verdicts.
  const events = new EventSource('/api/v1/events?kinds=inspection,alarm');
  events.addEventListener('open', () => { streamOpen = true; });
  events.addEventListener('error', () => { streamOpen = false; });
  events.addEventListener('inspection', (event: MessageEvent<string>) => {
    // The stream's `inspection` events carry inspection records.
    let record: InspectionRecord;
    try { record = JSON.parse(event.data) as InspectionRecord; } catch { return; }
    addParts([record]);
    const shownAt = Date.now();
    if (window.liveLatencyMs.length < 1000) {
      window.liveLatencyMs.push({ durable: shownAt - Date.parse(record.recorded_at), decided: shownAt - Date.parse(record.decided_at) });
    }
  });
}

// While the stream runs the list is read again only now and then, in case an event was
// missed as the stream (re)opened.
const LIST_EVERY = 15;
let polls = 0;
async function poll() {
  const listNow = !streamOpen || polls % LIST_EVERY === 0;
  polls += 1;
  const [station, page] = await Promise.allSettled([
    getJson<StationView>('/api/v1/station'),
    listNow ? getJson<InspectionPage>(`/api/v1/inspections?limit=${RECENT}`) : Promise.resolve(null),
  ]);
  if (listNow) loadDefectClasses().catch((error: unknown) => console.warn('defect classes:', error));
  const connected = station.status === 'fulfilled' && page.status === 'fulfilled';
  byId('connection').hidden = connected;
  document.body.classList.toggle('stale', !connected);
  if (station.status === 'fulfilled') renderStation(station.value);
  if (page.status === 'fulfilled' && page.value) addParts(page.value.items);
}
openStream();

// Chained rather than setInterval so a slow station never has requests piling up.
function loop() {
  poll().catch((error: unknown) => console.error('live page:', error)).finally(() => setTimeout(loop, POLL_MS));
}
loop();
