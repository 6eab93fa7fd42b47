// The label page's script (served as /assets/label.js, bundled by build.rs).
import { byId, errorMessage } from './page';
import { type DefectClass, type DefectClasses } from './api';

/* ---------- types: the station's answers, the label, the editor ---------- */

/** The model's verdict on a part (`error`: it could not judge). */
type Verdict = 'pass' | 'fail' | 'error';
/** A person's verdict in a label: good or defective. */
type LabelVerdict = 'pass' | 'fail';
type Tool = 'select' | 'box' | 'polygon' | 'brush' | 'eraser';
type SaveState = 'idle' | 'unsaved' | 'saving' | 'saved' | 'error';

/** A point in image pixels. */
type Point = [number, number];
/** An axis-aligned rectangle from its top-left corner, in image pixels. */
interface BoxShape { kind: 'box'; x: number; y: number; width: number; height: number }
/** A closed polygon; the last point joins the first. */
interface PolygonShape { kind: 'polygon'; points: Point[] }
/** A pixel mask of the whole image: COCO uncompressed RLE, `size` [height, width]. */
interface MaskShape { kind: 'mask'; size: [number, number]; counts: number[] }
type Shape = BoxShape | PolygonShape | MaskShape;
/** Where a defect of `class` is, as the station keeps it in a label's `regions`. */
interface Region<S extends Shape = Shape> { class: string; shape: S }
/** A region the editor holds as a shape (masks it holds as pixels, in `masks`). */
type DrawnRegion = Region<BoxShape | PolygonShape>;

/** A defect the model outlined (`DefectBox`): `[x_min, y_min, x_max, y_max]` in the image's pixels, maxima exclusive. */
interface DefectBox { bbox: [number, number, number, number]; score: number; class?: string }

/** One part of `GET /api/v1/labelling/queue`, or one made from an inspection record. */
interface QueueItem {
  part_id: number;
  captured_at: string;
  work_order: string | null;
  product: string | null;
  verdict: Verdict | null;
  score: number | null;
  threshold: number | null;
  defect_class: string | null;
  image: string | null;
  heat_map: string | null;
  /** The defects the model outlined in `image`. */
  defect_boxes: DefectBox[];
  /** Why it is queued, strongest first: `flagged`, `shadow_disagrees`, ... */
  reasons: string[];
  flag_note: string | null;
  labelled: boolean;
}

/** `GET /api/v1/labelling/queue`. */
interface QueueAnswer {
  items: QueueItem[];
  /** How many recorded parts were read to build it. */
  scanned: number;
  /** The defect classes the parts read were given. */
  classes: string[];
}

/** The fields of an inspection record this page reads. */
interface InspectionFields {
  part_id: number;
  captured_at: string;
  work_order?: string | null;
  product?: string | null;
  verdict?: Verdict | null;
  score?: number | null;
  threshold?: number | null;
  defect_class?: string | null;
  image?: string | null;
  heat_map?: string | null;
  /** Absent when the model outlined nothing. */
  defect_boxes?: DefectBox[];
}
/** `GET /api/v1/inspections/{part_id}`: flat, or with the inspection under `body`. */
type InspectionAnswer = InspectionFields & { body?: InspectionFields };

/** A saved label's fields. */
interface SavedLabel {
  verdict: Verdict;
  defect_class?: string | null;
  note?: string | null;
  /** Who labelled it. */
  by?: string;
  /** The image the regions are drawn on; absent from a label without regions. */
  image?: string | null;
  regions?: Region[];
}
/** A label record: flat (`seq`, `recorded_at`, `kind`, then the label's fields), or with them under `body`. */
type LabelRecord = SavedLabel & { recorded_at: string; body?: SavedLabel };
/** `GET /api/v1/inspections/{part_id}/labels`: its label records, oldest first (or under `items`). */
type LabelsAnswer = LabelRecord[] | { items?: LabelRecord[] } | null;

/** `POST /api/v1/labels/coco`. */
interface ImportReport { written: number; unchanged: number }

/** The label as posted to `POST /api/v1/inspections/{part_id}/labels`. */
interface LabelBody {
  verdict: LabelVerdict;
  defect_class: string | null;
  note: string | null;
  image?: string | null;
  regions?: Region[];
}

/** The label being edited. */
interface LabelState {
  verdict: LabelVerdict | null;
  defectClass: string | null;
  note: string | null;
  shapes: DrawnRegion[];
}

/** A rectangle of whole pixels. */
interface Rect { x: number; y: number; w: number; h: number }
/** Bounds in image coordinates, not yet whole pixels. */
interface Bounds { x0: number; y0: number; x1: number; y1: number }
/** One class's painted mask at image resolution; `bbox` covers every pixel ever set. */
interface Mask { canvas: HTMLCanvasElement; ctx: CanvasRenderingContext2D; colour: string; bbox: Rect | null }
/** The pixels an edit changed in one class's mask: a byte a pixel of `rect`, 1 where set. */
interface Patch { cls: string; rect: Rect; before: Uint8Array; after: Uint8Array }
/** One undoable step. */
interface Step { before: LabelState; after: LabelState; patches: Patch[] }

/** The heat map as drawn (red over the threshold), with its grey levels. */
interface HeatMap { canvas: HTMLCanvasElement; grey: Uint8Array; width: number; height: number }

/** The part open. */
interface OpenPart {
  item: QueueItem;
  /** The image the regions are drawn on; null when it could not be had. */
  digest: string | null;
  image: ImageBitmap | null;
  heat: HeatMap | null;
  width: number;
  height: number;
  labelled: boolean;
  /** The body last saved (or loaded), as sent. */
  savedText: string;
  /** Edits since it opened. */
  version: number;
}

/** A pointer's place: `sx`, `sy` in CSS px from the canvas's corner, `x`, `y` in image pixels. */
interface Pointer { sx: number; sy: number; x: number; y: number }

/** A polygon being drawn, point by point. */
interface PolygonDraft { cls: string; points: Point[] }
/** A brush or eraser stroke under way; `bounds` covers what it has painted. */
interface PaintDrag { kind: 'paint'; cls: string; m: Mask; erase: boolean; last: Point; bounds: Bounds | null }
/** What a drag on the canvas does. */
type Drag =
  | { kind: 'pan'; from: Pointer }
  | { kind: 'move'; from: Pointer; before: LabelState; original: DrawnRegion }
  | { kind: 'box'; cls: string; from: Point; to: Point }
  | PaintDrag;

/** The browser test's hooks (tests/ui/label.mjs). */
interface LabelPage {
  ready: Promise<void>;
  readonly partId: number | null;
  readonly saveState: SaveState;
  readonly saveCount: number;
  readonly queueUrl: string;
  frameTimes: number[];
  imageSize(): [number, number] | null;
  regions(): Region[];
  body(): LabelBody | null;
  maskPixels(cls: string): number;
  toScreen(x: number, y: number): { x: number; y: number };
  zoomAt(sx: number, sy: number, factor: number): void;
  panBy(dx: number, dy: number): void;
  fit(): void;
  refreshQueue(): Promise<void>;
}

declare global {
  interface Window { labelPage: LabelPage }
}

/* ---------- constants and helpers ---------- */

const FETCH_TIMEOUT_MS = 20_000;
// Each save is a new label record (labels supersede, never edit): a pause, not every stroke.
const AUTOSAVE_MS = 4_000;
const QUEUE_LIMIT = 50;
const HISTORY_LIMIT = 200;
// Undo keeps mask patches (a byte a pixel, before and after): on a 5-megapixel image a stroke
// across it is 10 MB, so the oldest steps go once the history holds this much.
const HISTORY_BYTES = 256 * 1024 * 1024;
const MASK_ALPHA = 0.45;
const MAX_SCALE = 40;
// How near (screen px) a click must come to the polygon's first point to close it, or to a
// shape's outline to select it.
const NEAR_PX = 8;
// Distinct on the dark canvas and on grey images; red stays the heat map's.
const PALETTE = ['#60a5fa', '#fbbf24', '#34d399', '#c084fc', '#f472b6', '#22d3ee', '#a3e635', '#fb923c', '#e5e7eb'];
const REASONS: Partial<Record<string, string>> = { flagged: 'Flagged', shadow_disagrees: 'Shadow disagrees', unlike_training: 'Unlike training images', near_threshold: 'Near threshold' };
const TOOL_KEYS: Record<'v' | 'b' | 'p' | 'r' | 'e', Tool> = { v: 'select', b: 'box', p: 'polygon', r: 'brush', e: 'eraser' };
const SAVE_TEXT: Record<SaveState, string> = { idle: 'Not labelled yet', unsaved: 'Unsaved', saving: 'Saving…', saved: 'Saved', error: 'Not saved' };
const CURSORS: Record<Tool, string> = { select: 'default', box: 'crosshair', polygon: 'crosshair', brush: 'none', eraser: 'none' };
const TEXT_INPUTS = new Set(['text', 'search', 'number', 'datetime-local', 'date', 'time', 'email', 'url', 'password']);

// The station's answer as JSON (null for an empty or plain-text one). Callers read it as the
// type the station answers that path with (the interfaces above): it is not checked field by field.
async function api(path: string, options: RequestInit = {}): Promise<unknown> {
  const response = await fetch(path, { cache: 'no-store', credentials: 'same-origin', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), ...options });
  if (response.status === 401) {
    window.location.assign('/login');
    throw new Error('signed out');
  }
  const text = await response.text();
  let body: unknown = null;
  try { body = JSON.parse(text); } catch { /* a plain-text reason, or no body */ }
  const reason = typeof body === 'object' && body !== null && 'error' in body ? body.error : undefined;
  if (!response.ok) throw new Error(String(reason ?? (text.trim() || `${path}: HTTP ${response.status}`)));
  return body;
}

// Decoded once, off the main thread: every frame then draws the bitmap as it is.
async function fetchBitmap(digest: string): Promise<ImageBitmap> {
  const path = `/api/v1/images/${encodeURIComponent(digest)}`;
  const response = await fetch(path, { credentials: 'same-origin', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  // The heat map's grey levels are its numbers: no colour management may shift them.
  return createImageBitmap(await response.blob(), { colorSpaceConversion: 'none' });
}

/** What `el` sets: the element's properties, `dataset` entries and `attrs` attributes. */
type ElementOptions<K extends keyof HTMLElementTagNameMap> = Partial<Omit<HTMLElementTagNameMap[K], 'dataset'>> & {
  dataset?: Record<string, string>;
  attrs?: Record<string, string>;
};

/** An element with properties, `dataset` entries, `attrs` attributes and children. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K, { dataset = {}, attrs = {}, ...props }: ElementOptions<K> = {}, ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function showError(message: string) {
  byId('error').textContent = message;
  byId('error').hidden = !message;
}
const hint = (text: string) => { byId('hint').textContent = text; };
const seconds = (iso: string) => Date.parse(String(iso).replace(/(\.\d{3})\d+/, '$1')) / 1000;
const local = (iso: string | null | undefined) => (iso ? new Date(seconds(iso) * 1000).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'medium' }) : '—');
const fixed = (v: number | null | undefined) => (v === null || v === undefined ? '—' : Number(v).toFixed(2));
// Two decimals: the station keeps coordinates as f32, which gives these back as they were sent.
const round2 = (v: number) => Math.round(v * 100) / 100;
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
// The station's rule for typed text: 1 to `max` characters, no control character (C0, C1).
const validText = (text: string, max: number) => [...text].length >= 1 && [...text].length <= max && !/[\u0000-\u001f\u007f-\u009f]/.test(text);

/* ---------- classes, the queue ---------- */

const classList: string[] = [];
const colours = new Map<string, string>();
// The station's defect classes (name → colour, severity, rejects, description), in its order.
const taxonomy = new Map<string, DefectClass>();
function colourFor(cls: string): string {
  const known = colours.get(cls);
  if (known !== undefined) return known;
  const colour = PALETTE[colours.size % PALETTE.length];
  colours.set(cls, colour);
  return colour;
}
const rgbOf = (hex: string) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));

function addClass(cls: string | null | undefined) {
  if (!cls || classList.includes(cls)) return;
  classList.push(cls);
  byId('class-options').append(el('option', { value: cls }));
  byId('class-keys').replaceChildren(...classList.slice(0, 9).map((name, i) => {
    const info = taxonomy.get(name);
    const title = info
      ? `${info.severity}${info.rejects ? '' : ', passed at the gate'}${info.description ? `: ${info.description}` : ''}`
      : 'not in the defect classes: rejects';
    const button = el('button', { type: 'button', title, dataset: { class: name }, attrs: { 'aria-pressed': String(name === state.defectClass) } },
      el('span', { className: 'swatch', attrs: { 'aria-hidden': 'true', style: `background:${colourFor(name)}` } }), `${name} `, el('kbd', { textContent: String(i + 1) }));
    button.addEventListener('click', () => setClass(name));
    return button;
  }));
}

let queue: QueueItem[] = [];
let queueUrl = '';

function queuePath() {
  const query = new URLSearchParams({ limit: String(QUEUE_LIMIT) });
  const add = (name: string, value: string) => { if (value) query.set(name, value); };
  add('verdict', byId('f-verdict', HTMLSelectElement).value);
  add('class', byId('f-class', HTMLInputElement).value.trim());
  add('work_order', byId('f-work-order', HTMLInputElement).value.trim());
  // datetime-local is the browser's local time; the API takes RFC 3339, sent in UTC.
  for (const [id, name] of [['f-from', 'from'], ['f-to', 'to']]) {
    const when = new Date(byId(id, HTMLInputElement).value);
    if (byId(id, HTMLInputElement).value && !Number.isNaN(when.getTime())) query.set(name, when.toISOString());
  }
  if (byId('f-labelled', HTMLInputElement).checked) query.set('labelled', 'true');
  return `/api/v1/labelling/queue?${query}`;
}

async function loadQueue() {
  const path = queuePath();
  byId('queue-summary').textContent = 'Loading…';
  try {
    const body = (await api(path)) as QueueAnswer;
    [queueUrl, queue] = [path, body.items ?? []];
    for (const cls of body.classes ?? []) addClass(cls);
    byId('queue').replaceChildren(...(queue.length ? queue.map(queueEntry) : [el('li', { className: 'muted', textContent: 'No part matches.' })]));
    byId('queue-summary').textContent = `${queue.length} parts, most useful first (${body.scanned ?? '—'} records read)`;
    byId('queue').dataset.loadedAt = String(Date.now());
    markSelected();
  } catch (error) {
    byId('queue-summary').textContent = '';
    showError(`Could not load the queue: ${errorMessage(error)}`);
  }
}

const labelledBadge = () => el('span', { className: 'badge done', textContent: 'Labelled' });

function queueEntry(item: QueueItem) {
  const score = item.score === null || item.score === undefined ? '' : ` ${fixed(item.score)} / ${fixed(item.threshold)}`;
  const when = [local(item.captured_at), item.work_order, item.image ? null : 'no image'].filter(Boolean).join(' · ');
  const button = el('button', { type: 'button', dataset: { partId: String(item.part_id), ...(item.image ? { hasImage: 'true' } : {}) } },
    el('strong', { textContent: `Part ${item.part_id} ` }),
    el('span', { className: `v-${item.verdict ?? 'none'}`, textContent: item.verdict ? item.verdict.toUpperCase() : 'NO VERDICT' }),
    score, el('span', { className: 'q-time', textContent: when }));
  for (const reason of item.reasons ?? []) {
    const name = REASONS[reason] ?? reason.replaceAll('_', ' ');
    button.append(el('span', { className: 'badge', dataset: { reason }, textContent: reason === 'flagged' && item.flag_note ? `${name}: ${item.flag_note}` : name }));
  }
  if (item.labelled) button.append(labelledBadge());
  button.addEventListener('click', () => openItem(item));
  return el('li', {}, button);
}

function queueButton(partId: number): HTMLButtonElement | null {
  const button = byId('queue').querySelector(`button[data-part-id="${partId}"]`);
  return button instanceof HTMLButtonElement ? button : null;
}

function markSelected() {
  for (const button of byId('queue').querySelectorAll('button[aria-current]')) button.removeAttribute('aria-current');
  const button = part && queueButton(part.item.part_id);
  button?.setAttribute('aria-current', 'true');
  button?.scrollIntoView({ block: 'nearest' });
}

function step(delta: number) {
  if (!queue.length) return;
  const open = part;
  const at = open ? queue.findIndex((i) => i.part_id === open.item.part_id) : -1;
  const next = queue[at === -1 ? (delta > 0 ? 0 : queue.length - 1) : clamp(at + delta, 0, queue.length - 1)];
  const focusInQueue = byId('queue').contains(document.activeElement);
  openItem(next).then(() => { if (focusInQueue) queueButton(next.part_id)?.focus(); });
}

/* ---------- the open part and its label ---------- */

// A region of a saved label, by its shape's kind (a record may hold one this page cannot read).
const isDrawn = (region: Region): region is DrawnRegion => region.shape?.kind === 'box' || region.shape?.kind === 'polygon';
const isMask = (region: Region): region is Region<MaskShape> => region.shape?.kind === 'mask';

// The part open: its queue item, image, heat map, the body last saved (or loaded) and a count
// of edits since it opened.
let part: OpenPart | null = null;

/** The part open, for code that runs only while one is. */
function currentPart(): OpenPart {
  if (!part) throw new Error('no part is open');
  return part;
}

// The label being edited. `shapes` is replaced on each edit, never changed in place, so a
// snapshot for undo is a shallow copy; the masks are undone by pixel patches instead.
const emptyState = (): LabelState => ({ verdict: null, defectClass: null, note: null, shapes: [] });
let state = emptyState();
// Class → { canvas, ctx, colour, bbox }: one mask per class at image resolution, opaque colour
// where set; `bbox` covers every pixel ever set, so the encoder reads only inside it.
let masks = new Map<string, Mask>();
let [undoStack, redoStack, selected, loadToken]: [Step[], Step[], DrawnRegion | null, number] = [[], [], null, 0];

function itemFromRecord(record: InspectionAnswer): QueueItem {
  const r = record.body ?? record;
  return { part_id: r.part_id, captured_at: r.captured_at, work_order: r.work_order ?? null, product: r.product ?? null,
    verdict: r.verdict ?? null, score: r.score ?? null, threshold: r.threshold ?? null, defect_class: r.defect_class ?? null,
    image: r.image ?? null, heat_map: r.heat_map ?? null, defect_boxes: r.defect_boxes ?? [], reasons: [], flag_note: null,
    labelled: false };
}

async function openPartById(partId: number) {
  try {
    await openItem(queue.find((i) => i.part_id === partId) ?? itemFromRecord((await api(`/api/v1/inspections/${partId}`)) as InspectionAnswer));
  } catch (error) {
    showError(`Could not open part ${partId}: ${errorMessage(error)}`);
  }
}

async function openItem(item: QueueItem) {
  if (part?.item.part_id === item.part_id) return;
  // Leaving a part saves it; if that fails the part stays open, with its edits.
  if (part && !(await save())) return;
  const token = ++loadToken;
  // The saved part closes now: an edit made while the next one loads would be lost with it.
  part?.image?.close();
  part = null;
  // A drag begun on the closed part (J pressed mid-stroke) ends with it, never on the next.
  drag = null;
  requestDraw();
  hint(`Opening part ${item.part_id}…`);
  try {
    // Records are flat (`seq`, `recorded_at`, `kind`, then the label's fields), oldest first;
    // a `body` field or an `items` wrapper is read too.
    const labels = (await api(`/api/v1/inspections/${item.part_id}/labels`)) as LabelsAnswer;
    const latest = (Array.isArray(labels) ? labels : labels?.items ?? []).at(-1);
    // Regions stay on the image they were drawn on (a view's, on a station with several).
    const digest = (latest?.body ?? latest)?.image ?? item.image;
    const [image, heat] = await Promise.all([
      // An image evicted for disk space leaves a part to label as a whole.
      digest ? fetchBitmap(digest).catch(() => null) : null,
      item.heat_map && digest === item.image ? fetchBitmap(item.heat_map).then(heatOverlay).catch(() => null) : null,
    ]);
    if (token !== loadToken) { image?.close(); return; }
    part = { item, digest: image ? digest : null, image, heat, width: image?.width ?? 0, height: image?.height ?? 0, labelled: false, savedText: 'null', version: 0 };
    [state, masks, undoStack, redoStack, selected, polygon, drag] = [emptyState(), new Map<string, Mask>(), [], [], null, null, null];
    byId('coords').textContent = '';
    let note = '';
    if (latest) note = loadLabel(latest.body ?? latest);
    else {
      // Not labelled yet: the model's verdict is a starting point, saved once a person confirms it.
      state.verdict = item.verdict === 'pass' || item.verdict === 'fail' ? item.verdict : null;
      state.defectClass = item.verdict === 'fail' ? item.defect_class ?? null : null;
    }
    addClass(state.defectClass);
    part.labelled = Boolean(latest);
    part.savedText = JSON.stringify(requestBody());
    describePart(latest);
    setSaveState(latest ? 'saved' : 'idle');
    syncControls();
    renderRegions();
    fit();
    markSelected();
    history.replaceState(null, '', `?part=${item.part_id}`);
    document.body.dataset.part = String(item.part_id);
    hint(image ? note : 'This part has no saved image: label it as a whole.');
  } catch (error) {
    if (token !== loadToken) return;
    hint('');
    showError(`Could not open part ${item.part_id}: ${errorMessage(error)}`);
  }
}

// Loads a saved label into the editor; returns what the labeller should know about it.
function loadLabel(label: SavedLabel): string {
  state.verdict = label.verdict === 'pass' || label.verdict === 'fail' ? label.verdict : null;
  state.defectClass = label.defect_class ?? null;
  state.note = label.note ?? null;
  let skipped = 0;
  for (const region of label.regions ?? []) {
    addClass(region.class);
    if (isDrawn(region)) state.shapes.push(region);
    else if (!isMask(region) || !decodeMask(region)) skipped += 1;
  }
  if (skipped) return `${skipped} saved regions do not fit this image and are left out.`;
  return label.image && label.image !== currentPart().item.image ? "The saved regions are on another camera's image of this part, shown here." : '';
}

function describePart(latest: LabelRecord | undefined) {
  const item = currentPart().item;
  const by = latest?.by ?? latest?.body?.by;
  const score = item.score === null || item.score === undefined ? '' : `, score ${fixed(item.score)} against ${fixed(item.threshold)}`;
  byId('part-title').textContent = `Part ${item.part_id}`;
  byId('part-info').textContent = [
    `Model: ${item.verdict ? item.verdict.toUpperCase() : 'no verdict'}${score}${item.defect_class ? `, ${item.defect_class}` : ''}`,
    [local(item.captured_at), item.work_order, item.product].filter(Boolean).join(' · '),
    item.flag_note ? `Flagged: ${item.flag_note}` : '',
    latest ? `Labelled ${local(latest.recorded_at)}${by ? ` by ${by}` : ''}.` : "Not labelled yet: the model's verdict is pre-selected.",
  ].filter(Boolean).join('\n');
}

/* ---------- edits and undo ---------- */

const snapshot = (): LabelState => ({ ...state });

// One undoable step; `patches` are the mask pixels the edit changed (already on the masks).
function edit(change: () => void, patches: Patch[] = []) {
  if (!part) return;
  const before = snapshot();
  change();
  record(before, patches);
}

const patchBytes = (step: Step) => step.patches.reduce((n, p) => n + p.before.length + p.after.length, 0);

function record(before: LabelState, patches: Patch[] = []) {
  undoStack.push({ before, after: snapshot(), patches });
  let bytes = undoStack.reduce((n, step) => n + patchBytes(step), 0);
  while (undoStack.length > HISTORY_LIMIT || (bytes > HISTORY_BYTES && undoStack.length > 1)) {
    const oldest = undoStack.shift();
    if (oldest) bytes -= patchBytes(oldest);
  }
  redoStack = [];
  changed();
}

// Undo (back) or redo one step: its label fields, and its mask pixels.
function travel(back: boolean) {
  const step = (back ? undoStack : redoStack).pop();
  if (!step) return hint(back ? 'Nothing to undo.' : 'Nothing to redo.');
  // While the next part loads, the closed part's steps are left over: none applies.
  if (!part) return;
  for (const p of back ? [...step.patches].reverse() : step.patches) putAlpha(p.cls, p.rect, back ? p.before : p.after);
  Object.assign(state, back ? step.before : step.after);
  (back ? redoStack : undoStack).push(step);
  changed();
}

function changed() {
  currentPart().version += 1;
  if (selected && !state.shapes.includes(selected)) selected = null;
  syncControls();
  renderRegions();
  requestDraw();
  setSaveState('unsaved');
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => save(), AUTOSAVE_MS);
}

function requireClass() {
  if (!state.defectClass) hint('Pick a defect class (1–9) or type one first.');
  return state.defectClass;
}

function setVerdict(verdict: LabelVerdict) {
  if (!part || (state.verdict === verdict && part.labelled)) return syncControls();
  // A good part has no regions: what is drawn goes (undo brings it back).
  const patches = verdict === 'pass' ? [...masks.keys()].map(clearMaskPixels).filter((p) => p !== null) : [];
  edit(() => Object.assign(state, { verdict }, verdict === 'pass' ? { shapes: [] } : {}), patches);
}

function setClass(cls: string) {
  if (!part) return;
  if (!validText(cls, 64)) hint('A class name has 1 to 64 characters and no control character.');
  else addClass(cls);
  if (!validText(cls, 64) || (state.defectClass === cls && state.verdict === 'fail')) return syncControls();
  edit(() => Object.assign(state, { defectClass: cls, verdict: 'fail' }));
}

function addRegion(region: DrawnRegion) {
  addClass(region.class);
  edit(() => Object.assign(state, { shapes: [...state.shapes, region], verdict: 'fail' }));
}

function deleteSelected() {
  if (!selected) return hint('Select a shape first: V and click it, or pick it under Regions.');
  const gone = selected;
  edit(() => { state.shapes = state.shapes.filter((r) => r !== gone); });
}

function select(region: DrawnRegion | null) {
  selected = region;
  syncControls();
  renderRegions();
  requestDraw();
}

function syncControls() {
  byId('verdict-pass', HTMLInputElement).checked = state.verdict === 'pass';
  byId('verdict-fail', HTMLInputElement).checked = state.verdict === 'fail';
  // A field being typed in keeps what is typed.
  if (document.activeElement !== byId('class', HTMLInputElement)) byId('class', HTMLInputElement).value = state.defectClass ?? '';
  if (document.activeElement !== byId('note', HTMLInputElement)) byId('note', HTMLInputElement).value = state.note ?? '';
  for (const b of byId('class-keys').children) b.setAttribute('aria-pressed', String(b instanceof HTMLElement && b.dataset.class === state.defectClass));
  for (const b of toolButtons()) {
    b.setAttribute('aria-pressed', String(b.dataset.tool === tool));
    b.disabled = !part?.image;
  }
  byId('undo', HTMLButtonElement).disabled = !undoStack.length;
  byId('redo', HTMLButtonElement).disabled = !redoStack.length;
  byId('delete', HTMLButtonElement).disabled = !selected;
  byId('heat', HTMLInputElement).disabled = byId('from-heat', HTMLButtonElement).disabled = !part?.heat;
  byId('from-boxes', HTMLButtonElement).disabled = modelBoxes().length === 0;
  byId('brush-size', HTMLInputElement).value = byId('brush-size-value').textContent = String(brushSize);
}

function renderRegions() {
  const items = state.shapes.map((region, i) => el('li', {}, el('button', {
    type: 'button', textContent: `${region.shape.kind === 'box' ? 'Rectangle' : 'Polygon'} · ${region.class}`,
    dataset: { index: String(i) }, attrs: { 'aria-pressed': String(region === selected) },
  })));
  const painted = [...masks].filter(([, m]) => m.bbox).map(([cls]) => cls);
  items.push(...painted.map((cls) => el('li', { textContent: `Painted mask · ${cls}` })));
  if (!items.length) items.push(el('li', { className: 'muted', textContent: 'None: the label is for the whole image.' }));
  byId('regions').replaceChildren(...items);
  byId('stage').setAttribute('aria-label', part
    ? `Part ${part.item.part_id}${part.image ? '' : ', no image'}: ${state.shapes.length} shapes, ${painted.length} painted masks` : 'No part open');
}

/* ---------- masks: pixels, patches, RLE ---------- */

function maskFor(cls: string): Mask {
  const known = masks.get(cls);
  if (known) return known;
  const open = currentPart();
  const canvas = el('canvas', { width: open.width, height: open.height });
  const m: Mask = { canvas, ctx: context2d(canvas), colour: colourFor(cls), bbox: null };
  masks.set(cls, m);
  return m;
}

// The whole pixels under bounds `b` (image coordinates) and one around, within the image.
function pixelRect(b: Bounds): Rect | null {
  const open = currentPart();
  const x = clamp(Math.floor(b.x0) - 1, 0, open.width), y = clamp(Math.floor(b.y0) - 1, 0, open.height);
  const w = clamp(Math.ceil(b.x1) + 1, 0, open.width) - x, h = clamp(Math.ceil(b.y1) + 1, 0, open.height) - y;
  return w > 0 && h > 0 ? { x, y, w, h } : null;
}

function unionRect(a: Rect | null, b: Rect): Rect {
  if (!a) return b;
  const x = Math.min(a.x, b.x), y = Math.min(a.y, b.y);
  return { x, y, w: Math.max(a.x + a.w, b.x + b.w) - x, h: Math.max(a.y + a.h, b.y + b.h) - y };
}

function alphaOf(c: CanvasRenderingContext2D, r: Rect): Uint8Array {
  const { data } = c.getImageData(r.x, r.y, r.w, r.h);
  const alpha = new Uint8Array(r.w * r.h);
  for (let i = 0; i < alpha.length; i++) alpha[i] = data[i * 4 + 3] >= 128 ? 1 : 0;
  return alpha;
}

function putAlpha(cls: string, r: Rect, alpha: Uint8Array) {
  const m = maskFor(cls);
  const img = m.ctx.createImageData(r.w, r.h);
  const rgba = [...rgbOf(m.colour), 255];
  for (let i = 0; i < alpha.length; i++) if (alpha[i]) img.data.set(rgba, i * 4);
  m.ctx.putImageData(img, r.x, r.y);
  m.bbox = unionRect(m.bbox, r);
}

// Anti-aliased stroke edges become set or clear, so the canvas shows exactly what is saved.
function settle(cls: string, r: Rect): Uint8Array {
  const alpha = alphaOf(maskFor(cls).ctx, r);
  putAlpha(cls, r, alpha);
  return alpha;
}

const sameAlpha = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);

function clearMaskPixels(cls: string): Patch | null {
  const m = masks.get(cls);
  if (!m?.bbox) return null;
  const before = alphaOf(m.ctx, m.bbox);
  if (!before.some((v) => v)) return null;
  m.ctx.clearRect(m.bbox.x, m.bbox.y, m.bbox.w, m.bbox.h);
  return { cls, rect: m.bbox, before, after: new Uint8Array(before.length) };
}

// COCO uncompressed RLE: column-major (index = x * height + y), runs alternating from a run of 0s.
function encodeMask(cls: string, m: Mask): Region<MaskShape> | null {
  if (!m.bbox) return null;
  const { width: W, height: H } = currentPart();
  const b = m.bbox;
  const { data } = m.ctx.getImageData(b.x, b.y, b.w, b.h);
  const counts: number[] = [];
  let value = 0, run = 0, any = false;
  const add = (on: number, n: number) => {
    if (on !== value) { counts.push(run); run = 0; value = on; }
    run += n;
  };
  for (let x = 0; x < W; x++) {
    if (x < b.x || x >= b.x + b.w) { add(0, H); continue; }
    add(0, b.y);
    for (let y = 0; y < b.h; y++) {
      const on = data[(y * b.w + x - b.x) * 4 + 3] >= 128 ? 1 : 0;
      any ||= on === 1;
      add(on, 1);
    }
    add(0, H - b.y - b.h);
  }
  counts.push(run);
  return any ? { class: cls, shape: { kind: 'mask', size: [H, W], counts } } : null;
}

function decodeMask(region: Region<MaskShape>): boolean {
  const { size, counts } = region.shape;
  const { width: W, height: H } = currentPart();
  if (!W || size?.[0] !== H || size?.[1] !== W || counts.reduce((a, c) => a + c, 0) !== W * H) return false;
  const m = maskFor(region.class);
  const img = m.ctx.getImageData(0, 0, W, H); // several masks of one class add up
  const rgba = [...rgbOf(m.colour), 255];
  let i = 0, on = false, x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (const count of counts) {
    if (on && count > 0) {
      for (let k = i; k < i + count; k++) img.data.set(rgba, ((k % H) * W + Math.floor(k / H)) * 4);
      const first = Math.floor(i / H), last = Math.floor((i + count - 1) / H);
      [x0, x1] = [Math.min(x0, first), Math.max(x1, last)];
      y0 = Math.min(y0, first === last ? i % H : 0);
      y1 = Math.max(y1, first === last ? (i + count - 1) % H : H - 1);
    }
    [i, on] = [i + count, !on];
  }
  m.ctx.putImageData(img, 0, 0);
  if (x1 >= 0) m.bbox = unionRect(m.bbox, { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 });
  return true;
}

const regions = (): Region[] => [...state.shapes.map((r) => ({ class: r.class, shape: r.shape })), ...[...masks].map(([cls, m]) => encodeMask(cls, m)).filter((r) => r !== null)];

// The POST body for the label as it stands; null while it has no verdict. A label without
// regions names no image, as the station keeps it (so an evicted image cannot refuse it).
function requestBody(): LabelBody | null {
  if (!part || !state.verdict) return null;
  const fail = state.verdict === 'fail';
  const body: LabelBody = { verdict: state.verdict, defect_class: fail ? state.defectClass : null, note: state.note };
  const drawn = fail && part.digest ? regions() : [];
  return drawn.length ? { ...body, image: part.digest, regions: drawn } : body;
}

/* ---------- saving ---------- */

let [saveState, saveTimer, inFlight, saveCount]: [SaveState, number, Promise<boolean> | null, number] = ['idle', 0, null, 0];

function setSaveState(next: SaveState, message = '') {
  saveState = next;
  byId('save-state').dataset.state = next;
  byId('save-state').textContent = message ? `${SAVE_TEXT[next]}: ${message}` : SAVE_TEXT[next];
}

// One save at a time; one asked for during another runs after it, with the label as it is then.
async function save({ explicit = false }: { explicit?: boolean } = {}): Promise<boolean> {
  clearTimeout(saveTimer);
  while (inFlight) await inFlight;
  inFlight = post(explicit);
  try { return await inFlight; } finally { inFlight = null; }
}

async function post(explicit: boolean): Promise<boolean> {
  const [open, body] = [part, requestBody()];
  // A body means a part is open.
  if (!body || !open) {
    if (open && (explicit || open.version > 0)) setSaveState('unsaved', 'pick Good (G) or Defect (D) to save');
    return true;
  }
  const text = JSON.stringify(body);
  // Nothing changed: no post. But an unlabelled part's pre-selected verdict is the model's,
  // and a person touching it (or saving) confirms it.
  if (text === open.savedText && (open.labelled || (!explicit && open.version === 0))) {
    setSaveState(open.labelled ? 'saved' : 'idle');
    return true;
  }
  const version = open.version;
  setSaveState('saving');
  try {
    await api(`/api/v1/inspections/${open.item.part_id}/labels`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: text });
    Object.assign(open, { savedText: text, labelled: true });
    open.item.labelled = true;
    saveCount += 1;
    const button = queueButton(open.item.part_id);
    if (button && !button.querySelector('.done')) button.append(labelledBadge());
    if (part === open && open.version === version) setSaveState('saved');
    else if (part === open) {
      setSaveState('unsaved');
      saveTimer = setTimeout(() => save(), AUTOSAVE_MS);
    }
    return true;
  } catch (error) {
    if (part === open) setSaveState('error', errorMessage(error));
    return false;
  }
}

/* ---------- view and drawing ---------- */

// A canvas's 2D context: a browser without one cannot show this page.
function context2d(c: HTMLCanvasElement, settings?: CanvasRenderingContext2DSettings): CanvasRenderingContext2D {
  const context = c.getContext('2d', settings);
  if (!context) throw new Error('the browser gives no 2D canvas context');
  return context;
}

const canvas = byId('canvas', HTMLCanvasElement);
const ctx = context2d(canvas);
const hitCtx = context2d(el('canvas'));
const scratch = el('canvas');
const scratchCtx = context2d(scratch, { willReadFrequently: true });
// Screen (CSS px from the canvas's corner) = image * scale + (x, y).
const view = { scale: 1, x: 0, y: 0 };
let viewport = { w: 1, h: 1 };
let [tool, brushSize, showHeat, polygon, drag, cursor, spaceHeld, drawPending]:
  [Tool, number, boolean, PolygonDraft | null, Drag | null, Pointer | null, boolean, boolean] = ['polygon', 12, false, null, null, null, false, false];
const frameTimes: number[] = [];
const paths = new WeakMap<DrawnRegion, Path2D>();
let layers: { shapes: DrawnRegion[] | null; byClass: Map<string, Path2D> } = { shapes: null, byClass: new Map() };

function resize() {
  const r = byId('stage').getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  viewport = { w: Math.max(1, r.width), h: Math.max(1, r.height) };
  [canvas.width, canvas.height] = [Math.round(viewport.w * dpr), Math.round(viewport.h * dpr)];
  requestDraw();
}

const fitScale = () => (part?.image ? Math.min(viewport.w / part.width, viewport.h / part.height) * 0.96 : 1);

function fit() {
  if (part?.image) {
    view.scale = fitScale();
    [view.x, view.y] = [(viewport.w - part.width * view.scale) / 2, (viewport.h - part.height * view.scale) / 2];
  }
  zoomChanged();
}

function zoomAt(sx: number, sy: number, factor: number) {
  const scale = clamp(view.scale * factor, fitScale() / 8, MAX_SCALE);
  [view.x, view.y] = [sx - ((sx - view.x) / view.scale) * scale, sy - ((sy - view.y) / view.scale) * scale];
  view.scale = scale;
  zoomChanged();
}

function panBy(dx: number, dy: number) {
  [view.x, view.y] = [view.x + dx, view.y + dy];
  requestDraw();
}

function zoomChanged() {
  byId('zoom').textContent = part?.image ? `${Math.round(view.scale * 100)} %` : '—';
  requestDraw();
}

// At most one draw a frame, and only after something changed.
function requestDraw() {
  if (!drawPending) requestAnimationFrame(draw);
  drawPending = true;
}

function polyline(points: Point[], close: boolean): Path2D {
  const path = new Path2D();
  points.forEach(([x, y], i) => (i ? path.lineTo(x, y) : path.moveTo(x, y)));
  if (close) path.closePath();
  return path;
}

function pathOf(region: DrawnRegion): Path2D {
  const known = paths.get(region);
  if (known) return known;
  const s = region.shape;
  const path = s.kind === 'box' ? polyline([[s.x, s.y], [s.x + s.width, s.y], [s.x + s.width, s.y + s.height], [s.x, s.y + s.height]], true) : polyline(s.points, true);
  paths.set(region, path);
  return path;
}

// One path per class, rebuilt only when the shapes change: 500 shapes stroke in a few calls.
function shapeLayers(): Map<string, Path2D> {
  if (layers.shapes !== state.shapes) {
    const byClass = new Map<string, Path2D>();
    for (const region of state.shapes) {
      let path = byClass.get(region.class);
      if (!path) {
        path = new Path2D();
        byClass.set(region.class, path);
      }
      path.addPath(pathOf(region));
    }
    layers = { shapes: state.shapes, byClass };
  }
  return layers.byClass;
}

function stroke(path: Path2D, colour: string, width: number) {
  [ctx.lineWidth, ctx.strokeStyle] = [width / view.scale, colour];
  ctx.stroke(path);
}

// One transform for everything: image, heat map and masks as bitmaps, shapes as paths.
function draw() {
  drawPending = false;
  const started = performance.now();
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (part?.image) {
    const { width: W, height: H } = part;
    const px = 1 / view.scale;
    ctx.setTransform(view.scale * dpr, 0, 0, view.scale * dpr, view.x * dpr, view.y * dpr);
    // Zoomed in, each image pixel is a sharp square: the labeller sees what is painted.
    ctx.imageSmoothingEnabled = view.scale < 1;
    ctx.drawImage(part.image, 0, 0);
    if (showHeat && part.heat) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(part.heat.canvas, 0, 0, W, H);
      ctx.imageSmoothingEnabled = view.scale < 1;
    }
    ctx.globalAlpha = MASK_ALPHA;
    for (const m of masks.values()) if (m.bbox) ctx.drawImage(m.canvas, 0, 0);
    ctx.globalAlpha = 1;
    stroke(polyline([[0, 0], [W, 0], [W, H], [0, H]], true), '#2a313b', 1);
    for (const [cls, path] of shapeLayers()) stroke(path, colourFor(cls), 2);
    if (selected) {
      ctx.fillStyle = 'rgba(255,255,255,.18)';
      ctx.fill(pathOf(selected));
      ctx.setLineDash([6 * px, 4 * px]);
      stroke(pathOf(selected), '#fff', 3);
      ctx.setLineDash([]);
    }
    if (drag?.kind === 'box') {
      const [[ax, ay], [bx, by]] = [drag.from, drag.to];
      stroke(polyline([[ax, ay], [bx, ay], [bx, by], [ax, by]], true), colourFor(drag.cls), 2);
    }
    if (polygon) {
      stroke(polyline([...polygon.points, ...(cursor ? [[cursor.x, cursor.y] satisfies Point] : [])], false), colourFor(polygon.cls), 2);
      const [fx, fy] = polygon.points[0];
      ctx.fillStyle = '#fff';
      ctx.fillRect(fx - 4 * px, fy - 4 * px, 8 * px, 8 * px);
    }
    if ((tool === 'brush' || tool === 'eraser') && cursor && !spaceHeld) {
      const ring = new Path2D();
      ring.arc(cursor.x, cursor.y, brushSize / 2, 0, 2 * Math.PI);
      stroke(ring, tool === 'eraser' ? '#f87171' : '#fff', 1.5);
    }
  }
  frameTimes.push(performance.now() - started);
  if (frameTimes.length > 1000) frameTimes.splice(0, 500);
}

// The heat map, red where it passes the threshold (mid-grey), stronger up to twice it (white).
function heatOverlay(bitmap: ImageBitmap): HeatMap {
  const c = el('canvas', { width: bitmap.width, height: bitmap.height });
  const hctx = context2d(c, { willReadFrequently: true });
  hctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const img = hctx.getImageData(0, 0, c.width, c.height);
  const grey = new Uint8Array(c.width * c.height);
  for (let i = 0; i < grey.length; i++) {
    grey[i] = img.data[i * 4];
    img.data.set([248, 40, 40, grey[i] < 128 ? 0 : 70 + ((grey[i] - 128) / 127) * 150], i * 4);
  }
  hctx.putImageData(img, 0, 0);
  return { canvas: c, grey, width: c.width, height: c.height };
}

function toggleHeat(on: boolean = !showHeat) {
  showHeat = on && Boolean(part?.heat);
  byId('heat', HTMLInputElement).checked = showHeat;
  requestDraw();
}

// A mask of the current class where the heat map reaches the threshold: a start to correct.
function startFromHeat() {
  if (!part?.heat || !part.image) return;
  const cls = requireClass();
  if (!cls) return;
  const { grey, width: hw, height: hh } = part.heat;
  const cells = new ImageData(hw, hh);
  const rgba = [...rgbOf(colourFor(cls)), 255];
  let x0 = hw, y0 = hh, x1 = -1, y1 = -1;
  for (let i = 0; i < grey.length; i++) {
    if (grey[i] < 128) continue;
    const [x, y] = [i % hw, Math.floor(i / hw)];
    cells.data.set(rgba, i * 4);
    [x0, x1, y0, y1] = [Math.min(x0, x), Math.max(x1, x), Math.min(y0, y), Math.max(y1, y)];
  }
  if (x1 < 0) return hint('No cell of the heat map reaches the threshold.');
  const small = el('canvas', { width: hw, height: hh });
  context2d(small).putImageData(cells, 0, 0);
  const [m, sx, sy] = [maskFor(cls), part.width / hw, part.height / hh];
  const rect = pixelRect({ x0: x0 * sx, y0: y0 * sy, x1: (x1 + 1) * sx, y1: (y1 + 1) * sy });
  if (!rect) return; // the cells set lie in the image: never empty
  const before = alphaOf(m.ctx, rect);
  // Nearest-neighbour: each heat-map cell becomes a block of image pixels.
  m.ctx.imageSmoothingEnabled = false;
  m.ctx.drawImage(small, 0, 0, part.width, part.height);
  const after = settle(cls, rect);
  if (sameAlpha(before, after)) return hint('The mask already covers the heat map.');
  edit(() => { state.verdict = 'fail'; }, [{ cls, rect, before, after }]);
  hint(`The ${cls} mask starts from the heat map: brush (R) and erase (E) to correct it.`);
}

// The boxes the model outlined, where they belong to the open image (the record's own, not a
// view's a saved label was drawn on), kept on it.
function modelBoxes(): { shape: BoxShape; cls: string | null }[] {
  if (!part?.image || part.digest !== part.item.image) return [];
  const [width, height] = [part.width, part.height];
  return (part.item.defect_boxes ?? []).flatMap(({ bbox: [x0, y0, x1, y1], class: cls }) => {
    const [x, y] = [Math.max(0, x0), Math.max(0, y0)];
    const [w, h] = [Math.min(width, x1) - x, Math.min(height, y1) - y];
    return w > 0 && h > 0 ? [{ shape: fitBox(x, y, w, h), cls: cls ?? null }] : [];
  });
}

// One rectangle per box the model outlined, of the class the model named for it (a model that
// learns classes) or else the current class: a start to correct (move, delete, or draw what
// it missed).
function startFromBoxes() {
  const boxes = modelBoxes();
  if (!boxes.length) return hint('The model outlined no defect on this image.');
  const unnamed = boxes.some((b) => !b.cls);
  const current = unnamed ? requireClass() : state.defectClass;
  if (unnamed && !current) return;
  const drawn = new Set(state.shapes.map((r) => JSON.stringify([r.class, r.shape])));
  const added: DrawnRegion[] = boxes.map(({ shape, cls }) => ({ class: cls ?? current ?? '', shape }))
    .filter((r) => !drawn.has(JSON.stringify([r.class, r.shape])));
  if (!added.length) return hint("The model's boxes are already drawn.");
  for (const r of added) addClass(r.class);
  // A part labelled without a class takes the class of the model's hottest box.
  const defectClass = state.defectClass ?? added[0].class;
  edit(() => Object.assign(state, { shapes: [...state.shapes, ...added], verdict: 'fail', defectClass }));
  const classes = [...new Set(added.map((r) => r.class))].join(', ');
  hint(`${added.length} rectangle${added.length === 1 ? '' : 's'} (${classes}) from the model's boxes: move (V) or delete what is wrong, draw (B) what it missed.`);
}

/* ---------- pointer tools ---------- */

function pointer(event: MouseEvent): Pointer {
  const r = canvas.getBoundingClientRect();
  const [sx, sy] = [event.clientX - r.left, event.clientY - r.top];
  return { sx, sy, x: (sx - view.x) / view.scale, y: (sy - view.y) / view.scale };
}

const clampPoint = (at: { x: number; y: number }): Point => {
  const open = currentPart();
  return [round2(clamp(at.x, 0, open.width)), round2(clamp(at.y, 0, open.height))];
};

// The station checks in f32 that x + width stays in the image: trim what f32 rounding pushes over.
function fitBox(x: number, y: number, width: number, height: number): BoxShape {
  const open = currentPart();
  const over = (a: number, b: number, limit: number) => Math.fround(Math.fround(a) + Math.fround(b)) > limit;
  while (width > 0.01 && over(x, width, open.width)) width = round2(width - 0.01);
  while (height > 0.01 && over(y, height, open.height)) height = round2(height - 0.01);
  return { kind: 'box', x, y, width, height };
}

// A shape moved by (dx, dy), kept inside the image (the station refuses one that leaves it).
function moved(region: DrawnRegion, dx: number, dy: number): DrawnRegion {
  const open = currentPart();
  const s = region.shape;
  const [xs, ys] = s.kind === 'box' ? [[s.x, s.x + s.width], [s.y, s.y + s.height]] : [s.points.map((p) => p[0]), s.points.map((p) => p[1])];
  dx = round2(clamp(dx, -Math.min(...xs), open.width - Math.max(...xs)));
  dy = round2(clamp(dy, -Math.min(...ys), open.height - Math.max(...ys)));
  const shape = s.kind === 'box' ? fitBox(...clampPoint({ x: s.x + dx, y: s.y + dy }), s.width, s.height)
    : { ...s, points: s.points.map(([x, y]) => clampPoint({ x: x + dx, y: y + dy })) };
  return { ...region, shape };
}

// The tool buttons; each one's `data-tool` names its tool.
function toolButtons(): HTMLButtonElement[] {
  return [...document.querySelectorAll('[data-tool]')].map((b) => {
    if (!(b instanceof HTMLButtonElement)) throw new Error(`a ${b.tagName.toLowerCase()} has data-tool: only buttons may`);
    return b;
  });
}

function isTool(name: string | undefined): name is Tool {
  return name !== undefined && Object.hasOwn(CURSORS, name);
}

function toolOf(button: HTMLElement): Tool {
  const name = button.dataset.tool;
  if (!isTool(name)) throw new Error(`data-tool="${name}" names no tool`);
  return name;
}

function setTool(next: Tool) {
  if (next !== 'polygon') polygon = null;
  tool = next;
  updateCursor();
  syncControls();
  requestDraw();
}

const updateCursor = () => { canvas.style.cursor = drag?.kind === 'pan' ? 'grabbing' : spaceHeld ? 'grab' : CURSORS[tool]; };

function setBrush(size: number) {
  brushSize = clamp(Math.round(size), 1, 200);
  syncControls();
  requestDraw();
}

function hitTest(at: Pointer): DrawnRegion | null {
  hitCtx.lineWidth = NEAR_PX / view.scale;
  // The topmost (last drawn) first.
  return [...state.shapes].reverse().find((r) => hitCtx.isPointInPath(pathOf(r), at.x, at.y) || hitCtx.isPointInStroke(pathOf(r), at.x, at.y)) ?? null;
}

function startDrag(event: PointerEvent, d: Drag) {
  drag = d;
  canvas.setPointerCapture(event.pointerId);
  updateCursor();
}

function addPolygonPoint(at: Pointer) {
  const p = clampPoint(at);
  if (!polygon) {
    const cls = requireClass();
    polygon = cls ? { cls, points: [p] } : null;
  } else {
    const [fx, fy] = polygon.points[0];
    if (polygon.points.length >= 3 && Math.hypot(p[0] - fx, p[1] - fy) * view.scale <= NEAR_PX) return closePolygon();
    polygon.points.push(p);
  }
  requestDraw();
}

function closePolygon() {
  const drawn = polygon;
  if (!drawn) throw new Error('no polygon is being drawn');
  polygon = null;
  requestDraw();
  if (drawn.points.length < 3) return hint('A polygon needs at least 3 points.');
  addRegion({ class: drawn.cls, shape: { kind: 'polygon', points: drawn.points } });
}

function paintTo(at: Pointer) {
  const d = drag;
  if (d?.kind !== 'paint') throw new Error('no brush stroke is under way');
  const c = d.m.ctx;
  c.save();
  c.globalCompositeOperation = d.erase ? 'destination-out' : 'source-over';
  [c.strokeStyle, c.fillStyle, c.lineWidth, c.lineCap, c.lineJoin] = [d.m.colour, d.m.colour, brushSize, 'round', 'round'];
  c.beginPath();
  if (d.last[0] === at.x && d.last[1] === at.y) {
    c.arc(at.x, at.y, brushSize / 2, 0, 2 * Math.PI);
    c.fill();
  } else {
    c.moveTo(...d.last);
    c.lineTo(at.x, at.y);
    c.stroke();
  }
  c.restore();
  const [r, b] = [brushSize / 2 + 1, d.bounds];
  d.bounds = {
    x0: Math.min(b?.x0 ?? Infinity, d.last[0] - r, at.x - r), y0: Math.min(b?.y0 ?? Infinity, d.last[1] - r, at.y - r),
    x1: Math.max(b?.x1 ?? -Infinity, d.last[0] + r, at.x + r), y1: Math.max(b?.y1 ?? -Infinity, d.last[1] + r, at.y + r),
  };
  d.last = [at.x, at.y];
}

function startStroke(event: PointerEvent, cls: string, at: Pointer) {
  const m = maskFor(cls);
  const open = currentPart();
  // The mask as it was, for this stroke's undo patch: one reused canvas, not a copy per step.
  if (scratch.width !== open.width || scratch.height !== open.height) Object.assign(scratch, { width: open.width, height: open.height });
  scratchCtx.clearRect(0, 0, scratch.width, scratch.height);
  scratchCtx.drawImage(m.canvas, 0, 0);
  startDrag(event, { kind: 'paint', cls, m, erase: tool === 'eraser', last: [at.x, at.y], bounds: null });
  paintTo(at);
}

function finishStroke(d: PaintDrag) {
  // The stroke's first step painted: it has bounds.
  const rect = d.bounds && pixelRect(d.bounds);
  if (!rect) return;
  const [before, after] = [alphaOf(scratchCtx, rect), settle(d.cls, rect)];
  if (!sameAlpha(before, after)) edit(() => { if (!d.erase) state.verdict = 'fail'; }, [{ cls: d.cls, rect, before, after }]);
}

canvas.addEventListener('pointerdown', (event) => {
  byId('stage').focus({ preventScroll: true });
  if (!part?.image) return;
  const at = pointer(event);
  if (event.button === 1 || (event.button === 0 && spaceHeld)) {
    event.preventDefault();
    return startDrag(event, { kind: 'pan', from: at });
  }
  if (event.button !== 0) return;
  if (tool === 'select') {
    select(hitTest(at));
    return startDrag(event, selected ? { kind: 'move', from: at, before: snapshot(), original: selected } : { kind: 'pan', from: at });
  }
  if (tool === 'polygon') return addPolygonPoint(at);
  const cls = requireClass();
  if (cls && tool === 'box') startDrag(event, { kind: 'box', cls, from: clampPoint(at), to: clampPoint(at) });
  else if (cls) startStroke(event, cls, at);
});

canvas.addEventListener('pointermove', (event) => {
  const at = cursor = pointer(event);
  if (part?.image) byId('coords').textContent = `x ${Math.floor(at.x)}, y ${Math.floor(at.y)}`;
  if (drag?.kind === 'pan') {
    panBy(at.sx - drag.from.sx, at.sy - drag.from.sy);
    drag.from = at;
  } else if (drag?.kind === 'box') drag.to = clampPoint(at);
  else if (drag?.kind === 'move') {
    const next = moved(drag.original, at.x - drag.from.x, at.y - drag.from.y);
    state.shapes = state.shapes.map((r) => (r === selected ? next : r));
    selected = next;
  } else if (drag?.kind === 'paint') paintTo(at);
  requestDraw();
});

function endDrag() {
  const d = drag;
  drag = null;
  if (d?.kind === 'box') {
    const [x, y, width, height] = [Math.min(d.from[0], d.to[0]), Math.min(d.from[1], d.to[1]), Math.abs(d.to[0] - d.from[0]), Math.abs(d.to[1] - d.from[1])];
    if (width >= 1 && height >= 1) addRegion({ class: d.cls, shape: fitBox(x, y, round2(width), round2(height)) });
  } else if (d?.kind === 'move' && selected !== d.original) record(d.before);
  else if (d?.kind === 'paint') finishStroke(d);
  updateCursor();
  requestDraw();
}
canvas.addEventListener('pointerup', endDrag);
canvas.addEventListener('pointercancel', endDrag);
canvas.addEventListener('pointerleave', () => { cursor = null; requestDraw(); });
canvas.addEventListener('auxclick', (event) => event.preventDefault());
canvas.addEventListener('wheel', (event) => {
  if (!part?.image) return;
  event.preventDefault();
  const at = pointer(event);
  zoomAt(at.sx, at.sy, Math.exp(-event.deltaY * (event.deltaMode === 1 ? 16 : 1) * 0.0015));
}, { passive: false });

/* ---------- keyboard and controls ---------- */

const isTyping = (node: EventTarget | null): node is HTMLElement => node instanceof HTMLTextAreaElement || node instanceof HTMLSelectElement
  || (node instanceof HTMLElement && node.isContentEditable) || (node instanceof HTMLInputElement && TEXT_INPUTS.has(node.type));

function toggleHelp(open = byId('help').hidden) {
  byId('help').hidden = !open;
  byId('help-toggle', HTMLButtonElement).setAttribute('aria-expanded', String(open));
  if (open) byId('help').scrollIntoView({ block: 'nearest' });
}

function zoomKey(factor: number) {
  const at = cursor ?? { sx: viewport.w / 2, sy: viewport.h / 2 };
  zoomAt(at.sx, at.sy, factor);
}

// Shortcuts act on the page, never while typing in a field (Escape leaves one, Enter applies a class).
document.addEventListener('keydown', (event) => {
  const target = event.target;
  if (isTyping(target)) {
    if (event.key === 'Escape' || (event.key === 'Enter' && target.id === 'class')) {
      event.preventDefault();
      target.blur();
      byId('stage').focus({ preventScroll: true });
    }
    return;
  }
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if ((event.ctrlKey || event.metaKey) && !event.altKey && ['z', 'y', 's'].includes(key)) {
    event.preventDefault();
    return key === 's' ? save({ explicit: true }) : travel(key === 'z' && !event.shiftKey);
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const onControl = target instanceof HTMLButtonElement || target instanceof HTMLInputElement || target instanceof HTMLAnchorElement || (target instanceof Element && target.tagName === 'SUMMARY');
  // Radios and the brush slider move with the arrows themselves.
  if (key.startsWith('Arrow') && target instanceof HTMLInputElement) return;
  let handled = true;
  switch (key) {
    case 'j': case 'ArrowDown': step(1); break;
    case 'k': case 'ArrowUp': step(-1); break;
    case 'g': setVerdict('pass'); break;
    case 'd': setVerdict('fail'); break;
    case 'v': case 'b': case 'p': case 'r': case 'e': setTool(TOOL_KEYS[key]); break;
    case 'h': toggleHeat(); break;
    case 's': save({ explicit: true }); break;
    case '[': setBrush(Math.min(brushSize - 1, brushSize / 1.25)); break;
    case ']': setBrush(Math.max(brushSize + 1, brushSize * 1.25)); break;
    case '+': case '=': zoomKey(1.25); break;
    case '-': zoomKey(0.8); break;
    case '0': fit(); break;
    case '?': toggleHelp(); break;
    case 'Delete': case 'Backspace': deleteSelected(); break;
    case 'Enter': if (polygon && !onControl) closePolygon(); else handled = false; break;
    case 'Escape':
      if (polygon) { polygon = null; requestDraw(); }
      else if (!byId('help').hidden) toggleHelp(false);
      else if (selected) select(null); else handled = false;
      break;
    case ' ': if (onControl) handled = false; else { spaceHeld = true; updateCursor(); } break;
    default:
      if (!/^[1-9]$/.test(key)) handled = false;
      else if (classList[Number(key) - 1]) setClass(classList[Number(key) - 1]);
      else hint(`No class number ${key} yet.`);
  }
  if (handled) event.preventDefault();
});
document.addEventListener('keyup', (event) => {
  if (event.key !== ' ') return;
  spaceHeld = false;
  updateCursor();
});

byId('filters', HTMLFormElement).addEventListener('submit', (event) => {
  event.preventDefault();
  showError('');
  loadQueue();
});
byId('goto', HTMLFormElement).addEventListener('submit', (event) => {
  event.preventDefault();
  if (byId('goto-part', HTMLInputElement).value !== '') openPartById(Number(byId('goto-part', HTMLInputElement).value));
});
byId('verdict-pass', HTMLInputElement).addEventListener('change', () => setVerdict('pass'));
byId('verdict-fail', HTMLInputElement).addEventListener('change', () => setVerdict('fail'));
byId('class', HTMLInputElement).addEventListener('change', () => {
  const cls = byId('class', HTMLInputElement).value.trim();
  if (cls) setClass(cls);
  else if (state.defectClass !== null) edit(() => { state.defectClass = null; });
});
byId('note', HTMLInputElement).addEventListener('change', () => {
  const note = byId('note', HTMLInputElement).value.trim() || null;
  if (note !== null && !validText(note, 1000)) return hint('A note has at most 1000 characters.');
  if (note !== state.note) edit(() => { state.note = note; });
});
for (const button of toolButtons()) button.addEventListener('click', () => setTool(toolOf(button)));
byId('fit', HTMLButtonElement).addEventListener('click', fit);
byId('brush-size', HTMLInputElement).addEventListener('input', () => setBrush(Number(byId('brush-size', HTMLInputElement).value)));
byId('heat', HTMLInputElement).addEventListener('change', () => toggleHeat(byId('heat', HTMLInputElement).checked));
byId('from-heat', HTMLButtonElement).addEventListener('click', startFromHeat);
byId('from-boxes', HTMLButtonElement).addEventListener('click', startFromBoxes);
byId('undo', HTMLButtonElement).addEventListener('click', () => travel(true));
byId('redo', HTMLButtonElement).addEventListener('click', () => travel(false));
byId('delete', HTMLButtonElement).addEventListener('click', deleteSelected);
byId('save', HTMLButtonElement).addEventListener('click', () => save({ explicit: true }));
byId('help-toggle', HTMLButtonElement).addEventListener('click', () => toggleHelp());
byId('regions').addEventListener('click', (event) => {
  const index = event.target instanceof Element ? event.target.closest('button')?.dataset.index : undefined;
  if (index === undefined) return;
  setTool('select');
  select(state.shapes[Number(index)] ?? null);
});

// Leaving: unsaved edits go out with the page (keepalive), and the browser asks first.
window.addEventListener('beforeunload', (event) => {
  if (['unsaved', 'saving', 'error'].includes(saveState)) event.preventDefault();
});
window.addEventListener('pagehide', () => {
  const body = requestBody();
  // A body means a part is open.
  if (!body || !part || !['unsaved', 'error'].includes(saveState)) return;
  fetch(`/api/v1/inspections/${part.item.part_id}/labels`, {
    method: 'POST', keepalive: true, credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  }).catch(() => { /* over the keepalive size limit, or the station gone: nothing left to do */ });
});

new ResizeObserver(() => {
  const wasFit = !part?.image || Math.abs(view.scale - fitScale()) < 1e-9;
  resize();
  if (wasFit) fit();
}).observe(byId('stage'));
resize();
syncControls();
renderRegions();

const opening = new URLSearchParams(window.location.search).get('part');
// The defect classes first, so their order gives the number keys and their colours the shapes;
// a station without them (or an old one) falls back to the classes the queue names.
async function loadTaxonomy() {
  try {
    const body = (await api('/api/v1/defect-classes')) as DefectClasses;
    for (const c of body.classes ?? []) {
      taxonomy.set(c.name, c);
      colours.set(c.name, c.colour);
    }
    for (const c of body.classes ?? []) addClass(c.name);
  } catch (error) {
    console.warn('no defect classes', error);
  }
}
const ready = loadTaxonomy().then(loadQueue).then(() => (/^\d+$/.test(opening ?? '') ? openPartById(Number(opening)) : undefined));

// Labels to and from Label Studio, CVAT and training tools. An import is all or nothing: the
// station names every image that does not fit, and records nothing then.
byId('coco-file', HTMLInputElement).addEventListener('change', async () => {
  const file = byId('coco-file', HTMLInputElement).files?.[0];
  if (!file) return;
  byId('coco-status').textContent = `Importing ${file.name}…`;
  try {
    const report = (await api('/api/v1/labels/coco', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: await file.text(),
    })) as ImportReport;
    byId('coco-status').textContent = `Imported ${file.name}: ${report.written} labels written, ${report.unchanged} unchanged.`;
    byId('coco-status').dataset.written = String(report.written);
    byId('coco-status').dataset.unchanged = String(report.unchanged);
    await loadQueue();
  } catch (error) {
    byId('coco-status').textContent = `Not imported: ${errorMessage(error)}`;
    delete byId('coco-status').dataset.written;
  } finally {
    byId('coco-file', HTMLInputElement).value = '';
  }
});

// Hooks for the browser test: the label as the page holds it, not as its text reads.
window.labelPage = {
  ready,
  get partId() { return part?.item.part_id ?? null; },
  get saveState() { return saveState; },
  get saveCount() { return saveCount; },
  get queueUrl() { return queueUrl; },
  frameTimes,
  imageSize: () => (part?.image ? [part.width, part.height] : null),
  regions: () => (state.verdict === 'pass' ? [] : regions()),
  body: requestBody,
  maskPixels: (cls) => {
    const m = masks.get(cls);
    return m?.bbox ? alphaOf(m.ctx, m.bbox).reduce((a, v) => a + v, 0) : 0;
  },
  toScreen: (x, y) => {
    const r = canvas.getBoundingClientRect();
    return { x: r.left + view.x + x * view.scale, y: r.top + view.y + y * view.scale };
  },
  zoomAt, panBy, fit,
  refreshQueue: loadQueue,
};
