// The models page's script (served as /assets/models.js, bundled by build.rs).
import { byId, query, errorMessage } from './page';
import { errorOf, type DefectClass, type DefectClasses, type WhoAmI } from './api';

// Train, compare and change the station's models. Every change goes through the same API an
// engineer's script would use, and each is recorded with who made it in the audit log.
const FETCH_TIMEOUT_MS = 10000;
// The station gives a training upload two minutes (a zip is unpacked and decoded before it answers).
const UPLOAD_TIMEOUT_MS = 120000;
const POLL_MS = 1000;

// --- What the API answers (the schemas of the same names in src/serve/openapi.json) ----------

type ModelKind = 'defect-net' | 'supervised' | 'anomaly' | 'template';
type Verdict = 'pass' | 'fail' | 'error';
type JobState = 'running' | 'done' | 'failed' | 'cancelled';

interface RunningModel {
  version: string;
  kind: ModelKind;
  threshold: number;
}

interface ModelEvent {
  at: string;
  action: 'promote' | 'rollback' | 'shadow_start' | 'shadow_stop';
  /** Null when the shadow is stopped. */
  version: string | null;
  previous: string | null;
}

interface ModelsView {
  live: RunningModel;
  shadow: RunningModel | null;
  available: RunningModel[];
  /** Oldest first. */
  events: ModelEvent[];
}

interface ShadowSummary {
  version: string;
  compared: number;
  agreed: number;
  live_fail_shadow_pass: number;
  live_pass_shadow_fail: number;
  shadow_errors: number;
  other_disagreements: number;
}

type DriftCheckName = 'inputs' | 'scores' | 'flags' | 'shadow';
type DriftState = 'fine' | 'watch' | 'drifting' | 'not_watched';

interface DriftCheck {
  check: DriftCheckName;
  state: DriftState;
  parts: number;
  /** A count of parts, or the Kolmogorov-Smirnov distance (scores). */
  observed: number;
  expected: number;
  p_value: number | null;
  detail: string;
}

interface DriftPart {
  part_id: number;
  check: DriftCheckName;
  score: number | null;
  novelty: number | null;
  image: string | null;
}

interface DriftReport {
  evaluated_at: string;
  model_version: string;
  has_reference: boolean;
  window: number;
  newest_part_id: number | null;
  drifting: boolean;
  checks: DriftCheck[];
  parts: DriftPart[];
  message: string;
}

interface DriftView {
  /** Null until the first evaluation. */
  report: DriftReport | null;
}

interface TrainingPhase {
  phase: string;
  done: number;
  total: number | null;
  elapsed_s: number;
  remaining_s: number | null;
}

interface TrainingSet {
  parts_in_period: number;
  good: number;
  good_held_out: number;
  /** Labelled defective parts by class. */
  defective: Record<string, number>;
  /** Parts left out, by reason. */
  left_out: Record<string, number>;
}

interface TrainingPreview {
  /** Null for an uploaded image. */
  part_id: number | null;
  class: string;
  score: number;
  verdict: Verdict;
  image: string;
  heat_map: string | null;
}

// The model card's figures the page shows (card.json; the API gives it as a plain object).
interface ThresholdMetrics {
  threshold: number;
  accuracy: number;
  f1: number;
  escape_rate: number;
  false_reject_rate: number;
}

interface ThresholdGuarantee {
  rate: 'false_reject' | 'escape';
  target: number;
  n: number;
  expected_rate: number;
  interval_90: [number, number];
}

// A template model's boxes on its held-out parts (learn/eval.rs, `BoxMetrics`).
interface BoxMetrics {
  n_true_boxes: number;
  // Absent where no labelled box names a type.
  mean_average_precision?: { iou: number; value: number }[];
}

interface ModelMetrics {
  n_test?: number;
  n_test_defective?: number;
  // A template model's (models/template/mod.rs, `TemplateMetrics`).
  defective_recall?: number | null;
  boxes?: BoxMetrics | null;
  image_auroc?: number | null;
  average_precision?: number | null;
  at_threshold?: ThresholdMetrics | null;
  defect_vs_good_accuracy?: number | null;
}

// How a training run chose its input size: an anomaly model's on defects painted on good
// images (models/anomaly/input_size.rs, `painted_auroc`), a supervised model's on its labelled
// validation images (models/supervised/input_size.rs, `value` of the `figure` it names).
interface InputSizeChoice {
  chosen: number;
  rule: string;
  figure?: string;
  trials: { input_size: number; painted_auroc?: number; value?: number | null; seconds: number }[];
}

// How an anomaly model's training chose its memory bank's size (models/anomaly/bank_size.rs):
// each candidate's rise of good validation parts' scores over a bank of every good patch.
interface BankSizeChoice {
  chosen: number;
  rule: string;
  trials: { bank_size: number; score_rise: number; seconds: number }[];
}

// Which turned copies of the good images an anomaly model's bank learnt from
// (models/anomaly/orientation.rs): given, or chosen by the trial of each turn.
interface OrientationChoice {
  chosen: string[];
  rule: string;
  trials: { orientation: string; turned_auroc: number }[];
}

// Which of the backbone's feature maps an anomaly model's patches keep
// (models/anomaly/patch_stages.rs): each candidate's AUROC on defects painted on good parts.
interface PatchStagesChoice {
  chosen: string;
  rule: string;
  trials: { stages: string; painted_auroc: number; seconds: number }[];
}

// Which of an anomaly model's scores its training chose to sum (models/anomaly/score_choice.rs):
// each score's AUROC on defects painted on good validation parts, and the bar it had to reach.
interface ScoreChoice {
  counted: string[];
  rule: string;
  painted_auroc: Record<string, number | null>;
  bar: number;
}

// How far a template model's comparison searches to align a part with its golden image.
interface AlignmentChoice {
  align_px: number;
  largest_offset_px: number;
  rule: string;
}

interface ModelCard {
  input_size?: number;
  alignment_choice?: AlignmentChoice | null;
  input_size_choice?: InputSizeChoice;
  patch_stages?: string;
  patch_stages_choice?: PatchStagesChoice;
  orientation_choice?: OrientationChoice;
  bank_size?: number;
  bank_size_choice?: BankSizeChoice;
  score_choice?: ScoreChoice;
  threshold_rule: string;
  threshold_guarantee?: ThresholdGuarantee;
  training_duration_s?: number;
  metrics?: ModelMetrics;
}

interface TrainedModel {
  version: string;
  kind: string;
  threshold: number;
  card: ModelCard;
  already_registered: boolean;
  previews: TrainingPreview[];
}

type TrainingSource =
  | { kind: 'records'; from: string; to: string; passed_as_good: boolean }
  | { kind: 'upload'; set: string };

interface TrainingJob {
  id: number;
  family: 'anomaly' | 'supervised' | 'template';
  name: string;
  source: TrainingSource;
  golden_part: number | null;
  requested_by: string;
  started_at: string;
  finished_at: string | null;
  state: JobState;
  progress: TrainingPhase | null;
  phases: TrainingPhase[];
  cancel_requested: boolean;
  training_set: TrainingSet | null;
  model: TrainedModel | null;
  error: string | null;
}

interface TrainingList {
  jobs: TrainingJob[];
}

interface BacktestJudged {
  verdict: Verdict;
  score: number | null;
  threshold: number | null;
  model_version: string;
  defect_class: string | null;
}

interface VerdictChange {
  part_id: number;
  decided_at: string;
  work_order: string | null;
  recorded: BacktestJudged;
  candidate: BacktestJudged;
  camera: string | null;
  image: string | null;
  candidate_heat_map: string | null;
  candidate_error: string | null;
}

interface BacktestReport {
  from: string;
  to: string;
  model_version: string;
  model_kind: string;
  threshold: number;
  parts_in_period: number;
  truncated: boolean;
  replayed_until: string | null;
  replayed: number;
  /** Parts not replayed, by reason. */
  not_replayable: Record<string, number>;
  agreed: number;
  changed: { pass_to_fail: number; fail_to_pass: number; involving_error: number };
  recorded_models: Record<string, number>;
  changes: VerdictChange[];
  recorded_span_s: number;
  took_s: number;
  faster_than_real_time: number | null;
}

interface BacktestJob {
  id: number;
  model_version: string;
  threshold: number;
  from: string;
  to: string;
  requested_by: string;
  started_at: string;
  finished_at: string | null;
  state: JobState;
  done: number;
  total: number;
  report: BacktestReport | null;
  error: string | null;
  cancel_requested: boolean;
}

interface BacktestList {
  /** Newest first. */
  backtests: BacktestJob[];
}

interface UploadSet {
  name: string;
  /** Images by class. */
  classes: Record<string, number>;
  bytes: number;
}

interface UploadList {
  sets: UploadSet[];
}

interface ZipUpload {
  set: string;
  /** New images by class. */
  added: Record<string, number>;
  duplicates: number;
  refused: { name: string; reason: string }[];
}

// A defect class as the page sends it (and shows a new one): `rejects` defaults to true,
// `description` to empty.
interface DefectClassInput {
  name: string;
  colour: string;
  severity: Severity;
  rejects?: boolean;
  description?: string;
}

interface DefectClassesSaved {
  classes: DefectClass[];
  /** The parts whose labels were rewritten for the request's renames. */
  relabelled: number;
}

// What the tests (tests/ui/models.mjs) call to refresh the page without waiting for its polls.
interface ModelsPage {
  refreshModels: () => Promise<void>;
  refreshJobs: () => Promise<JobsSeen>;
  refreshBacktests: () => Promise<boolean>;
  refreshClasses: () => Promise<void>;
  refreshDrift: () => Promise<void>;
}

declare global {
  interface Window {
    modelsPage: ModelsPage;
  }
}

// A term and its value in a <dl>; a value that is null, undefined or empty is left out.
type Definition = [term: string, value: string | null | undefined];

// ---------------------------------------------------------------------------------------------

function showError(message: string) {
  byId('error').textContent = message;
  byId('error').hidden = !message;
}

interface ApiOptions extends RequestInit {
  timeoutMs?: number;
}

// The answer's JSON as a `T` (the schema the OpenAPI document gives the path), null when empty.
async function api<T = unknown>(path: string, options: ApiOptions = {}): Promise<T> {
  const response = await fetch(path, {
    cache: 'no-store',
    credentials: 'same-origin',
    signal: AbortSignal.timeout(options.timeoutMs ?? FETCH_TIMEOUT_MS),
    ...options,
    headers: options.headers ?? (options.body ? { 'content-type': 'application/json' } : undefined),
  });
  const text = await response.text();
  let body: unknown = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    throw new Error(errorOf(body) || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

function cell(row: HTMLTableRowElement, text: string | null, className?: string) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function definitions(dl: HTMLDListElement, pairs: Definition[]) {
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === '') continue;
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.textContent = value;
    dl.append(dt, dd);
  }
}

const percent = (x: number | null | undefined) => (x === null || x === undefined ? null : `${(100 * x).toFixed(1)} %`);
const number = (x: number | null | undefined, digits = 3) => (x === null || x === undefined ? null : Number(x).toFixed(digits));
// A null time reads as the epoch, as `new Date(null)` would.
const when = (at: string | null) => new Date(at ?? 0).toLocaleString();

function duration(seconds: number | null | undefined) {
  if (seconds === null || seconds === undefined) return null;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// A confirmation dialog for changes that touch the line; resolves true on Confirm.
function confirmChange(title: string, text: string, okLabel: string) {
  const dialog = byId('confirm', HTMLDialogElement);
  byId('confirm-title').textContent = title;
  byId('confirm-text').textContent = text;
  byId('confirm-ok').textContent = okLabel;
  return new Promise<boolean>((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
  });
}

async function change(action: () => Promise<void>) {
  showError('');
  try {
    await action();
    await refreshModels();
  } catch (error) {
    showError(errorMessage(error));
  }
}

async function promote(version: string) {
  const ok = await confirmChange(
    'Promote to live?',
    `${version} will judge every part from the next frame, and its verdicts will reach the reject gate. ` +
      'The change is recorded with your name; Roll back returns to the model live now.',
    'Promote');
  if (ok) await change(async () => {
    await api<ModelEvent>('/api/v1/models/promote', { method: 'POST', body: JSON.stringify({ version }) });
    byId('notice').textContent = `${version} is live.`;
  });
}

async function cancelTraining(job: TrainingJob) {
  const ok = await confirmChange(
    'Cancel training?',
    `Training job #${job.id} (${job.name}) stops at its next step; the work done so far is lost and no model is added. ` +
      'The cancel is recorded with your name.',
    'Cancel training');
  if (ok) await change(async () => {
    await api<TrainingJob>(`/api/v1/training/${job.id}/cancel`, { method: 'POST' });
    byId('notice').textContent = `Training job #${job.id} is stopping.`;
    await refreshJobs();
  });
}

async function shadow(version: string | null) {
  await change(async () => {
    await api<ModelEvent>('/api/v1/models/shadow', { method: 'PUT', body: JSON.stringify({ version }) });
    byId('notice').textContent = version ? `${version} runs in shadow: it judges every part, nothing is actuated.` : 'The shadow is stopped.';
  });
}

byId('rollback', HTMLButtonElement).addEventListener('click', async () => {
  const ok = await confirmChange(
    'Roll back?',
    'The model live before the last promotion will judge every part from the next frame. The change is recorded with your name.',
    'Roll back');
  if (ok) await change(async () => {
    const event = await api<ModelEvent>('/api/v1/models/rollback', { method: 'POST' });
    byId('notice').textContent = `Rolled back to ${event.version}.`;
  });
});
byId('stop-shadow', HTMLButtonElement).addEventListener('click', () => shadow(null));

let status: ModelsView | null = null;

// How the shadow compares with the live model so far.
async function refreshShadowSummary() {
  try {
    const s = await api<ShadowSummary>('/api/v1/models/shadow');
    definitions(byId('shadow-summary', HTMLDListElement), [
      ['Parts compared', String(s.compared)],
      ['Agreed', s.compared ? `${s.agreed} (${percent(s.agreed / s.compared)})` : '0'],
      ['Shadow would reject, live passed', String(s.live_pass_shadow_fail)],
      ['Shadow would pass, live rejected', String(s.live_fail_shadow_pass)],
      ['Shadow errors', String(s.shadow_errors)],
    ]);
  } catch (error) {
    definitions(byId('shadow-summary', HTMLDListElement), [['Comparison', errorMessage(error)]]);
  }
}

// --- Drift --------------------------------------------------------------------------------

const DRIFT_STATES: Record<DriftState, string> = { fine: 'fine', watch: 'watch', drifting: 'DRIFTING', not_watched: 'not watched' };

async function refreshDrift() {
  const { report } = await api<DriftView>('/api/v1/drift');
  if (!report) return;
  const summary = byId('drift-summary');
  summary.textContent = report.message;
  summary.classList.toggle('bad', report.drifting);
  const table = byId('drift-checks', HTMLTableElement);
  table.hidden = false;
  const body = query(table, 'tbody', HTMLTableSectionElement);
  body.replaceChildren();
  for (const check of report.checks) {
    const row = body.insertRow();
    row.dataset.check = check.check;
    cell(row, check.check);
    cell(row, DRIFT_STATES[check.state] ?? check.state, check.state === 'drifting' ? 'bad' : '');
    cell(row, String(check.parts));
    const counted = check.check === 'scores' ? number(check.observed) : String(check.observed);
    cell(row, check.state === 'not_watched' ? '' : counted);
    cell(row, check.state === 'not_watched' ? '' : number(check.expected, check.check === 'scores' ? 3 : 1));
    cell(row, check.p_value == null ? '' : check.p_value.toExponential(1));
    cell(row, check.detail);
  }
  const parts = byId('drift-parts');
  parts.hidden = report.parts.length === 0;
  parts.replaceChildren();
  if (report.parts.length) {
    parts.append('Parts that drove it (open one to label it): ');
    report.parts.forEach((p, i) => {
      if (i) parts.append(', ');
      const link = document.createElement('a');
      link.href = `/label?part=${p.part_id}`;
      link.textContent = String(p.part_id);
      link.title = `${p.check}${p.novelty == null ? '' : `, novelty ${number(p.novelty)}`}`;
      parts.append(link);
    });
  }
}

async function pollDrift() {
  try {
    await refreshDrift();
  } catch (error) {
    byId('drift-summary').textContent = `Drift not read: ${errorMessage(error)}`;
  }
  setTimeout(pollDrift, 5000);
}

async function refreshModels() {
  const models = await api<ModelsView>('/api/v1/models');
  status = models;
  definitions(byId('live', HTMLDListElement), [
    ['Version', models.live.version],
    ['Kind', models.live.kind],
    ['Threshold', number(models.live.threshold)],
  ]);
  byId('no-shadow').hidden = !!models.shadow;
  byId('shadow').hidden = !models.shadow;
  byId('stop-shadow').hidden = !models.shadow;
  byId('shadow-summary').hidden = !models.shadow;
  if (models.shadow) {
    definitions(byId('shadow', HTMLDListElement), [
      ['Version', models.shadow.version],
      ['Kind', models.shadow.kind],
      ['Threshold', number(models.shadow.threshold)],
    ]);
    await refreshShadowSummary();
  }
  const rows = models.available.map((m) => {
    const row = document.createElement('tr');
    cell(row, m.version);
    cell(row, m.kind);
    cell(row, number(m.threshold), 'num');
    const now = m.version === models.live.version ? 'live'
      : m.version === models.shadow?.version ? 'shadow' : '';
    cell(row, now);
    const actions = cell(row, '');
    if (!now) {
      const s = document.createElement('button');
      s.type = 'button';
      s.textContent = 'Run in shadow';
      s.addEventListener('click', () => shadow(m.version));
      actions.append(s, ' ');
    }
    if (now !== 'live') {
      const p = document.createElement('button');
      p.type = 'button';
      p.textContent = 'Promote…';
      p.addEventListener('click', () => promote(m.version));
      actions.append(p);
    }
    return row;
  });
  byId('registry', HTMLTableSectionElement).replaceChildren(...rows);
  const chosen = byId('backtest-model', HTMLSelectElement).value;
  byId('backtest-model', HTMLSelectElement).replaceChildren(...models.available.map((m) => {
    const option = document.createElement('option');
    option.value = m.version;
    option.textContent = `${m.version} (${m.kind})`;
    option.selected = m.version === chosen || (!chosen && m.version !== models.live.version);
    return option;
  }));
  byId('events', HTMLTableSectionElement).replaceChildren(...models.events.slice().reverse().map((e) => {
    const row = document.createElement('tr');
    cell(row, when(e.at));
    cell(row, e.action.replace('_', ' '));
    cell(row, e.version ?? '—');
    cell(row, e.previous ?? '—');
    return row;
  }));
}

// --- Training ----------------------------------------------------------------------------

function setSummary(set: TrainingSet | null, source: TrainingSource): Definition[] | null {
  if (!set) return null;
  const defects = Object.entries(set.defective).map(([c, n]) => `${n} ${c}`).join(', ');
  const left = Object.entries(set.left_out).map(([why, n]) => `${n} ${why}`).join(', ');
  return [
    [source.kind === 'upload' ? 'Images in the set' : 'Parts in the period', String(set.parts_in_period)],
    ['Good parts', `${set.good} (${set.good_held_out} held out to measure the model)`],
    ['Defective parts', defects || 'none'],
    ['Left out', left || 'none'],
  ];
}

function modelFigures(model: TrainedModel): Definition[] {
  const card = model.card;
  const metrics: ModelMetrics = card.metrics ?? {};
  const at = metrics.at_threshold;
  const guarantee = card.threshold_guarantee;
  return [
    ['Version', model.version + (model.already_registered ? ' (already in the registry)' : '')],
    ['Threshold', number(model.threshold)],
    ['How it was chosen', card.threshold_rule],
    ['Promise', guarantee ? `${guarantee.rate.replaceAll('_', ' ')} ≤ ${guarantee.target}; 90 % interval ${percent(guarantee.interval_90[0])}–${percent(guarantee.interval_90[1])}` : null],
    ['Held-out parts', heldOut(metrics)],
    ['Image AUROC', number(metrics.image_auroc)],
    ['Average precision', number(metrics.average_precision)],
    ['False rejects at the threshold', percent(at?.false_reject_rate)],
    ['Escapes at the threshold', metrics.n_test_defective ? percent(at?.escape_rate) : null],
    ['Defect-vs-good accuracy', number(metrics.defect_vs_good_accuracy)],
    ['Defective parts found', percent(metrics.defective_recall)],
    ['Box mAP at IoU 0.5', boxMap(metrics.boxes)],
    ['Alignment searched', card.alignment_choice ? `±${card.alignment_choice.align_px} px (${card.alignment_choice.rule})` : null],
    ['Input size', inputSize(card)],
    ['Feature maps', featureMaps(card)],
    ['Turns learnt', turnsLearnt(card.orientation_choice)],
    ['Memory bank', bankSize(card)],
    ['Scores summed', scoresSummed(card.score_choice)],
    ['Training took', duration(card.training_duration_s)],
  ];
}

/** How many parts the model was measured on, and how many of them defective where it says. */
function heldOut(metrics: ModelMetrics): string | null {
  if (metrics.n_test === undefined) return null;
  if (metrics.n_test_defective === undefined) return String(metrics.n_test);
  return `${metrics.n_test} (${metrics.n_test_defective} defective)`;
}

/** A template model's boxes against the held-out parts' labelled ones. */
function boxMap(boxes: BoxMetrics | null | undefined): string | null {
  const at = boxes?.mean_average_precision?.find((m) => Math.abs(m.iou - 0.5) < 1e-6);
  if (!boxes || !at) return null;
  return `${number(at.value)} (${boxes.n_true_boxes} labelled boxes)`;
}

/** The input size the model sees and, where the run chose it, how each candidate fared. */
function inputSize(card: ModelCard): string | null {
  if (card.input_size === undefined) return null;
  const choice = card.input_size_choice;
  if (!choice) return `${card.input_size} px`;
  if (choice.trials.length === 0) return `${card.input_size} px (${choice.rule})`;
  if (choice.figure === 'none') return `${card.input_size} px (${choice.rule})`;
  if (choice.figure !== undefined) {
    const judged = choice.trials.map((t) => `${t.input_size} px ${t.value == null ? 'n/a' : number(t.value)}`).join(', ');
    return `${card.input_size} px, chosen by the ${choice.figure} (${judged})`;
  }
  const trials = choice.trials.map((t) => `${t.input_size} px ${number(t.painted_auroc)}`).join(', ');
  return `${card.input_size} px, chosen on defects painted on good parts (AUROC ${trials})`;
}

// The card's names of the feature maps (`PatchStages`), as the CLI prints them.
const FEATURE_MAPS: Record<string, string> = {
  both: 'stride 8 + upsampled stride 16',
  stride8: 'stride 8',
  stride16: 'upsampled stride 16',
};

/** The backbone feature maps an anomaly model's patches keep and, where the run chose them,
 * how each candidate told painted defects from good parts. */
function featureMaps(card: ModelCard): string | null {
  // An anomaly card (the family with a memory bank) names its maps only when one alone.
  if (card.bank_size === undefined) return null;
  const name = (stages: string) => FEATURE_MAPS[stages] ?? stages;
  const kept = name(card.patch_stages ?? 'both');
  const choice = card.patch_stages_choice;
  if (!choice) return kept;
  if (!choice.trials.length) return `${kept} (${choice.rule})`;
  const trials = choice.trials.map((t) => `${name(t.stages)} ${number(t.painted_auroc)}`).join(', ');
  return `${kept}, chosen on defects painted on good parts (AUROC ${trials})`;
}

/** An anomaly model's memory bank and, where the run chose its size, how each candidate
 * covered good parts. */
function bankSize(card: ModelCard): string | null {
  if (card.bank_size === undefined) return null;
  const choice = card.bank_size_choice;
  if (!choice || !choice.trials.length) return `${card.bank_size} entries${choice ? ` (${choice.rule})` : ''}`;
  const trials = choice.trials.map((t) => `${t.bank_size} ${t.score_rise >= 0 ? '+' : ''}${(t.score_rise * 100).toFixed(1)} %`).join(', ');
  return `${card.bank_size} entries, chosen by how much a smaller bank raises good parts' scores (${trials})`;
}

/** The scores an anomaly model sums, the rule that chose them and, for each score it computes, how
 * well it told defects painted on good parts from the parts as they were. */
function scoresSummed(choice: ScoreChoice | undefined): string | null {
  if (!choice) return null;
  const tried = Object.entries(choice.painted_auroc)
    .filter((entry): entry is [string, number] => typeof entry[1] === 'number')
    .map(([score, auroc]) => `${score.replaceAll('_', ' ')} ${number(auroc)}`)
    .join(', ');
  const counted = choice.counted.map((s) => s.replaceAll('_', ' ')).join(' + ');
  return `${counted}: ${choice.rule} (AUROC on painted defects ${tried}; bar ${number(choice.bar)})`;
}

/** Where a finished training's time went, phase by phase. */
function phasesTaken(phases: TrainingPhase[]): string | null {
  if (!phases.length) return null;
  return phases.map((p) => `${p.phase}${p.total ? ` (${p.done} of ${p.total})` : ''} ${duration(p.elapsed_s)}`).join('; ');
}

/** The turned copies an anomaly model learnt from and, where the run chose them, each trial. */
function turnsLearnt(choice: OrientationChoice | undefined): string | null {
  if (!choice) return null;
  const turns = choice.chosen.length ? choice.chosen.join(', ') : 'none';
  if (!choice.trials.length) return `${turns} (${choice.rule})`;
  const trials = choice.trials.map((t) => `${t.orientation} ${number(t.turned_auroc)}`).join(', ');
  return `${turns}, chosen by how well turned good parts stand out (AUROC ${trials})`;
}

/** The input size (and, for an anomaly model, the turns) the form asks for: absent for the
 * model's defaults. */
function askedInputSize(): { input_size?: string; orientations?: string } {
  const sizes = byId('input-size', HTMLSelectElement);
  const size = sizes.value;
  const turns = byId('orientations', HTMLSelectElement);
  return {
    ...(sizes.disabled || size === '' ? {} : { input_size: size }),
    ...(turns.disabled || turns.value === '' ? {} : { orientations: turns.value }),
  };
}

function preview(p: TrainingPreview) {
  const figure = document.createElement('figure');
  const frame = document.createElement('div');
  frame.className = 'frame';
  const image = document.createElement('img');
  image.src = `/api/v1/images/${p.image}`;
  image.alt = p.part_id != null ? `Part ${p.part_id}` : 'An uploaded image';
  frame.append(image);
  if (p.heat_map) {
    const heat = document.createElement('img');
    heat.className = 'heat';
    heat.src = `/api/v1/images/${p.heat_map}`;
    heat.alt = 'The heat map of the image beside';
    frame.append(heat);
  }
  const caption = document.createElement('figcaption');
  const verdict = document.createElement('strong');
  verdict.className = p.verdict === 'fail' ? 'fail' : 'pass';
  verdict.textContent = p.verdict === 'fail' ? 'REJECT' : 'PASS';
  caption.append(verdict, ` ${p.part_id != null ? `part ${p.part_id}` : 'uploaded'}, ${p.class}${Number.isFinite(p.score) ? `, score ${number(p.score, 2)}` : ''}`);
  figure.append(frame, caption);
  return figure;
}

// A job's article: its title with its state, and a line of what it works on. `key` names the
// data attribute that holds its id (tests and the page find jobs by it).
function jobArticle(key: 'job' | 'backtest', job: TrainingJob | BacktestJob, title: string, about: string) {
  const div = document.createElement('article');
  div.className = 'job';
  div.dataset[key] = String(job.id);
  div.dataset.state = job.state;
  const heading = document.createElement('h3');
  const state = document.createElement('span');
  state.className = `state-${job.state}`;
  state.textContent = job.state;
  heading.append(`#${job.id} ${title} — `, state);
  div.append(heading, paragraph('muted', about));
  return div;
}

// A paragraph of `text` in the class `className` (`muted` notes, `fail` errors).
function paragraph(className: string, text: string): HTMLParagraphElement {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  return p;
}

// A running job's "Cancel <what>" button (class `cancel-<what>`), "Stopping…" once asked.
function cancelActions(what: 'training' | 'backtest', job: TrainingJob | BacktestJob, onCancel: () => void) {
  const actions = document.createElement('div');
  actions.className = 'actions';
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.className = `cancel-${what}`;
  cancel.textContent = job.cancel_requested ? 'Stopping…' : `Cancel ${what}`;
  cancel.disabled = job.cancel_requested;
  cancel.addEventListener('click', onCancel);
  actions.append(cancel);
  return actions;
}

function jobView(job: TrainingJob) {
  const from = job.source.kind === 'records'
    ? `Parts decided ${when(job.source.from)} – ${when(job.source.to)}`
    : `Upload set ${job.source.set}`;
  const golden = job.golden_part != null ? `; golden part ${job.golden_part}` : '';
  const div = jobArticle('job', job, `${job.name} (${job.family})`,
    `${from}${golden}; asked by ${job.requested_by} at ${when(job.started_at)}`);
  if (job.state === 'running') {
    const p = job.progress;
    const line = document.createElement('p');
    const bar = document.createElement('progress');
    bar.setAttribute('aria-label', `Training job ${job.id}: ${p?.phase ?? 'reading the records'}`);
    if (p?.total) { bar.max = p.total; bar.value = p.done; }
    const left = p?.remaining_s != null ? `, about ${duration(p.remaining_s)} left` : '';
    line.textContent = p ? `${p.phase}: ${p.done}${p.total ? ` of ${p.total}` : ''}${left}` : 'Reading the records…';
    line.className = 'phase';
    div.append(line, bar, cancelActions('training', job, () => cancelTraining(job)));
  }
  if (job.state === 'cancelled') {
    div.append(paragraph('muted', `Cancelled at ${when(job.finished_at)}; nothing was added to the models.`));
  }
  const set = setSummary(job.training_set, job.source);
  if (set) {
    const dl = document.createElement('dl');
    definitions(dl, set);
    div.append(dl);
  }
  if (job.error) div.append(paragraph('fail', job.error));
  if (job.model) {
    const dl = document.createElement('dl');
    dl.className = 'figures';
    definitions(dl, [...modelFigures(job.model), ['Phases', phasesTaken(job.phases)]]);
    div.append(dl);
    if (job.model.previews.length) {
      const h = document.createElement('h3');
      h.textContent = 'Held-out parts, with its heat map';
      const previews = document.createElement('div');
      previews.className = 'previews';
      previews.append(...job.model.previews.map(preview));
      div.append(h, previews);
    }
    const actions = document.createElement('div');
    actions.className = 'actions';
    const version = job.model.version;
    if (status && status.live.version !== version && status.shadow?.version !== version) {
      const s = document.createElement('button');
      s.type = 'button';
      s.className = 'primary';
      s.textContent = 'Run in shadow';
      s.addEventListener('click', () => shadow(version));
      actions.append(s);
    }
    if (status && status.live.version !== version) {
      const p = document.createElement('button');
      p.type = 'button';
      p.textContent = 'Promote…';
      p.addEventListener('click', () => promote(version));
      actions.append(p);
    }
    div.append(actions);
  }
  return div;
}

let shownJobs = '';

// What a look at the training jobs found: whether one runs, whether one finished since the
// page last took note, and the jobs.
interface JobsSeen {
  running: boolean;
  finishedNow: boolean;
  jobs: TrainingJob[];
}

async function refreshJobs(): Promise<JobsSeen> {
  const { jobs } = await api<TrainingList>('/api/v1/training');
  // Redrawn only when something changed, so a button is not replaced under the pointer.
  const key = JSON.stringify([jobs, status?.live.version, status?.shadow?.version]);
  if (key !== shownJobs) {
    shownJobs = key;
    byId('jobs').replaceChildren(...jobs.map(jobView));
    byId('no-jobs').hidden = jobs.length > 0;
  }
  const running = jobs.some((j) => j.state === 'running');
  byId('start-training', HTMLButtonElement).disabled = running;
  return { running, finishedNow: jobs.some((j) => j.state !== 'running' && !seenFinished.has(j.id)), jobs };
}

const seenFinished = new Set<number>();

async function poll() {
  try {
    const { running: training, finishedNow, jobs } = await refreshJobs();
    const running = (await refreshBacktests()) || training;
    if (finishedNow) {
      jobs.filter((j) => j.state !== 'running').forEach((j) => seenFinished.add(j.id));
      await refreshModels(); // a finished job adds a registry version
      await refreshJobs();
    }
    if (status?.shadow) await refreshShadowSummary();
    setTimeout(poll, running ? POLL_MS : 5 * POLL_MS);
  } catch (error) {
    showError(errorMessage(error));
    setTimeout(poll, 5 * POLL_MS);
  }
}

// --- Backtests ---------------------------------------------------------------------------

function backtestView(job: BacktestJob) {
  const div = jobArticle('backtest', job, `${job.model_version} at ${number(job.threshold)}`,
    `Parts decided ${when(job.from)} – ${when(job.to)}; asked by ${job.requested_by}`);
  if (job.state === 'running') {
    const bar = document.createElement('progress');
    bar.setAttribute('aria-label', `Backtest ${job.id}`);
    if (job.total) { bar.max = job.total; bar.value = job.done; }
    const line = document.createElement('p');
    line.textContent = `${job.done} of ${job.total} parts replayed`;
    div.append(line, bar, cancelActions('backtest', job, () => change(async () => {
      await api<BacktestJob>(`/api/v1/backtests/${job.id}/cancel`, { method: 'POST' });
      byId('notice').textContent = `Backtest #${job.id} is stopping.`;
      await refreshBacktests();
    })));
  }
  if (job.state === 'cancelled') {
    div.append(paragraph('muted', `Cancelled after ${job.done} of ${job.total} parts; no report.`));
  }
  if (job.error) div.append(paragraph('fail', job.error));
  const r = job.report;
  if (r) {
    const dl = document.createElement('dl');
    dl.className = 'figures';
    const notReplayable = Object.entries(r.not_replayable).map(([why, n]) => `${n} ${why}`).join(', ');
    definitions(dl, [
      ['Parts replayed', `${r.replayed} of ${r.parts_in_period}${r.truncated ? ' (the oldest, up to the limit)' : ''}`],
      ['Same verdict', r.replayed ? `${r.agreed} (${percent(r.agreed / r.replayed)})` : '0'],
      ['Would reject parts that passed', String(r.changed.pass_to_fail)],
      ['Would pass parts that were rejected', String(r.changed.fail_to_pass)],
      ['Errors either way', String(r.changed.involving_error)],
      ['Not replayable', notReplayable || 'none'],
      ['Took', `${duration(r.took_s)}${r.faster_than_real_time ? `, ${r.faster_than_real_time.toFixed(0)}× real time` : ''}`],
    ]);
    div.append(dl);
    const changes = r.changes.filter((c): c is VerdictChange & { image: string } => Boolean(c.image)).slice(-6);
    if (changes.length) {
      const h = document.createElement('h3');
      h.textContent = 'Parts whose verdict would change (newest), with its heat map';
      const previews = document.createElement('div');
      previews.className = 'previews';
      previews.append(...changes.map((c) => preview({
        part_id: c.part_id,
        image: c.image,
        heat_map: c.candidate_heat_map,
        verdict: c.candidate.verdict,
        score: c.candidate.score ?? NaN,
        class: `was ${c.recorded.verdict === 'fail' ? 'rejected' : 'passed'}`,
      })));
      div.append(h, previews);
    }
  }
  return div;
}

let shownBacktests = '';

async function refreshBacktests() {
  const { backtests } = await api<BacktestList>('/api/v1/backtests');
  const key = JSON.stringify(backtests);
  if (key !== shownBacktests) {
    shownBacktests = key;
    byId('backtests').replaceChildren(...backtests.map(backtestView));
  }
  const running = backtests.some((b) => b.state === 'running');
  byId('start-backtest', HTMLButtonElement).disabled = running;
  return running;
}

byId('backtest-form', HTMLFormElement).addEventListener('submit', async (event) => {
  event.preventDefault();
  showError('');
  const to = new Date(Date.now() + 1000);
  const from = new Date(to.getTime() - Number(byId('backtest-period', HTMLSelectElement).value) * 60000);
  try {
    const job = await api<BacktestJob>('/api/v1/backtests', {
      method: 'POST',
      body: JSON.stringify({ model: byId('backtest-model', HTMLSelectElement).value, from: from.toISOString(), to: to.toISOString() }),
    });
    byId('notice').textContent = `Backtest ${job.id} started.`;
    await refreshBacktests();
  } catch (error) {
    showError(errorMessage(error));
  }
});

byId('period', HTMLSelectElement).addEventListener('change', () => {
  const custom = byId('period', HTMLSelectElement).value === 'custom';
  document.querySelectorAll<HTMLElement>('.custom').forEach((e) => { e.hidden = !custom || source() !== 'records'; });
  if (custom && !byId('from', HTMLInputElement).value) {
    const now = new Date();
    const local = (d: Date) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
    byId('to', HTMLInputElement).value = local(now);
    byId('from', HTMLInputElement).value = local(new Date(now.getTime() - 3600000));
  }
});
const source = () => query(document, 'input[name=source]:checked', HTMLInputElement).value;
document.querySelectorAll('input[name=source]').forEach((radio) => radio.addEventListener('change', () => {
  document.querySelectorAll<HTMLElement>('.records').forEach((e) => { e.hidden = source() !== 'records'; });
  document.querySelectorAll<HTMLElement>('.upload').forEach((e) => { e.hidden = source() !== 'upload'; });
  document.querySelectorAll<HTMLElement>('.custom').forEach((e) => { e.hidden = source() !== 'records' || byId('period', HTMLSelectElement).value !== 'custom'; });
  if (source() === 'upload') refreshUploads().catch((error: unknown) => showError(errorMessage(error)));
}));

async function refreshUploads() {
  const { sets } = await api<UploadList>('/api/v1/training/uploads');
  byId('upload-sets', HTMLDataListElement).replaceChildren(...sets.map((set) => {
    const option = document.createElement('option');
    option.value = set.name;
    return option;
  }));
  const set = sets.find((s) => s.name === byId('upload-set', HTMLInputElement).value);
  byId('upload-summary').textContent = set
    ? `${set.name}: ${Object.entries(set.classes).map(([c, n]) => `${n} ${c}`).join(', ')} (${(set.bytes / 1e6).toFixed(1)} MB)`
    : 'A new set.';
  return sets;
}
byId('upload-set', HTMLInputElement).addEventListener('change', () => refreshUploads().catch((error: unknown) => showError(errorMessage(error))));

// The files chosen in the file input `id`.
function chosenFiles(id: string): FileList {
  const files = byId(id, HTMLInputElement).files;
  if (files === null) throw new Error(`#${id} is not a file input`);
  return files;
}

// Uploads one image at a time: each is checked as it arrives, and a refused file is named.
async function uploadImages(files: File[]) {
  const set = byId('upload-set', HTMLInputElement).value;
  const klass = byId('upload-class', HTMLInputElement).value.trim();
  const images = [...files].filter((f) => /\.(png|jpe?g|bmp)$/i.test(f.name));
  const refused: string[] = [];
  for (const [i, file] of images.entries()) {
    byId('upload-status').textContent = `${i} of ${images.length} uploaded…`;
    const response = await fetch(`/api/v1/training/uploads/${encodeURIComponent(set)}?class=${encodeURIComponent(klass)}`, {
      method: 'POST',
      credentials: 'same-origin',
      body: file,
      headers: { 'content-type': file.type || 'application/octet-stream' },
    });
    if (!response.ok) {
      const body: unknown = await response.json().catch(() => ({}));
      refused.push(`${file.name}: ${errorOf(body) ?? response.status}`);
      if (response.status === 401 || response.status === 403) break;
    }
  }
  byId('upload-status').textContent = `${images.length - refused.length} of ${images.length} uploaded` +
    (refused.length ? `; refused: ${refused.slice(0, 3).join('; ')}${refused.length > 3 ? ' …' : ''}` : '');
  await refreshUploads();
}
// A zip goes whole: the station unpacks it, stores each image and names every file it refused.
async function uploadZip(file: File) {
  const set = byId('upload-set', HTMLInputElement).value;
  const query = byId('zip-folders', HTMLInputElement).checked ? '' : `?class=${encodeURIComponent(byId('upload-class', HTMLInputElement).value.trim())}`;
  byId('upload-status').textContent = `Sending ${file.name}…`;
  const report = await api<ZipUpload>(`/api/v1/training/uploads/${encodeURIComponent(set)}/zip${query}`, {
    method: 'POST', body: file, headers: { 'content-type': 'application/zip' }, timeoutMs: UPLOAD_TIMEOUT_MS,
  });
  const added = Object.entries(report.added).map(([cls, n]) => `${n} ${cls}`).join(', ') || 'no new image';
  const refused = report.refused.map((r) => `${r.name}: ${r.reason}`);
  byId('upload-status').textContent = `${file.name}: ${added} added, ${report.duplicates} already in the set` +
    (refused.length ? `; refused: ${refused.slice(0, 3).join('; ')}${refused.length > 3 ? ` … (${refused.length})` : ''}` : '');
  await refreshUploads();
}

byId('upload', HTMLButtonElement).addEventListener('click', async () => {
  showError('');
  const files = [...chosenFiles('upload-folder'), ...chosenFiles('upload-files')];
  const zip: File | undefined = chosenFiles('upload-zip')[0];
  if (!files.length && !zip) { showError('Choose a folder, images or a zip to upload.'); return; }
  byId('upload', HTMLButtonElement).disabled = true;
  try {
    if (files.length) await uploadImages(files);
    if (zip) await uploadZip(zip);
  } catch (error) { showError(errorMessage(error)); } finally { byId('upload', HTMLButtonElement).disabled = false; }
});

/** The form's choices that depend on the family: an anomaly model starts a new product from
 * what passed, a supervised one learns labels (and learns turned parts from its own
 * augmentation: the turns are the anomaly family's); a template model compares parts with a
 * golden part at their own size, learns defects from the regions drawn in the labelling page
 * (which uploads have none of) and what is no defect from what passed as well. */
function followFamily() {
  const family = byId('family', HTMLSelectElement).value;
  const template = family === 'template';
  byId('passed-as-good', HTMLInputElement).checked = family !== 'supervised';
  byId('orientations', HTMLSelectElement).disabled = family !== 'anomaly';
  byId('input-size', HTMLSelectElement).disabled = template;
  byId('golden-part', HTMLInputElement).required = template;
  for (const el of document.querySelectorAll<HTMLElement>('#train-form .template')) el.hidden = !template;
  const upload = query(document, 'input[name=source][value=upload]', HTMLInputElement);
  upload.disabled = template;
  if (template && upload.checked) {
    const records = query(document, 'input[name=source][value=records]', HTMLInputElement);
    records.checked = true;
    records.dispatchEvent(new Event('change'));
  }
}
byId('family', HTMLSelectElement).addEventListener('change', followFamily);
// A browser may restore the family chosen before a reload without a change event.
followFamily();

/** The golden part a template model is asked for: absent for the other families. */
function goldenPart(): { golden_part?: number } {
  const golden = byId('golden-part', HTMLInputElement).value;
  if (byId('family', HTMLSelectElement).value !== 'template' || golden === '') return {};
  return { golden_part: Number(golden) };
}

byId('train-form', HTMLFormElement).addEventListener('submit', async (event) => {
  event.preventDefault();
  showError('');
  let from: Date;
  let to: Date;
  if (source() === 'upload') {
    try {
      const job = await api<TrainingJob>('/api/v1/training', {
        method: 'POST',
        body: JSON.stringify({ family: byId('family', HTMLSelectElement).value, name: byId('name', HTMLInputElement).value, upload: byId('upload-set', HTMLInputElement).value, ...askedInputSize() }),
      });
      byId('notice').textContent = `Training job ${job.id} started.`;
      await refreshJobs();
    } catch (error) {
      showError(errorMessage(error));
    }
    return;
  }
  if (byId('period', HTMLSelectElement).value === 'custom') {
    from = new Date(byId('from', HTMLInputElement).value);
    to = new Date(byId('to', HTMLInputElement).value);
    if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) {
      showError('Choose both ends of the period.');
      return;
    }
  } else {
    to = new Date(Date.now() + 1000);
    from = new Date(to.getTime() - Number(byId('period', HTMLSelectElement).value) * 60000);
  }
  try {
    const job = await api<TrainingJob>('/api/v1/training', {
      method: 'POST',
      body: JSON.stringify({
        family: byId('family', HTMLSelectElement).value,
        name: byId('name', HTMLInputElement).value,
        from: from.toISOString(),
        to: to.toISOString(),
        passed_as_good: byId('passed-as-good', HTMLInputElement).checked,
        ...askedInputSize(),
        ...goldenPart(),
      }),
    });
    byId('notice').textContent = `Training job ${job.id} started.`;
    await refreshJobs();
  } catch (error) {
    showError(errorMessage(error));
  }
});

/* ---------- defect classes ---------- */

const SEVERITIES = ['critical', 'major', 'minor'] as const;
type Severity = (typeof SEVERITIES)[number];
// Colours offered to a new class, in turn (the classes' own are kept as saved).
const NEW_CLASS_COLOURS = ['#d62728', '#ff7f0e', '#1f77b4', '#9467bd', '#2ca02c', '#8c564b', '#e377c2', '#17becf'];
let savedClasses: DefectClass[] = [];
// The version of the classes this page shows (their ETag): a save made from an older version
// than the station's is refused, not applied over someone else's change.
let classesVersion: string | null = null;

function classRow(c: DefectClassInput) {
  const row = document.createElement('tr');
  // A saved class's name as the station knows it: a row whose name is edited is a rename, and
  // the station rewrites the class's labels to the new name.
  if (c.name) row.dataset.saved = c.name;
  const field = <E extends HTMLElement>(element: E, label: string) => {
    element.setAttribute('aria-label', label);
    const td = document.createElement('td');
    td.append(element);
    row.append(td);
    return element;
  };
  const input = (type: string, value: string) => Object.assign(document.createElement('input'), { type, value });
  const name = field(input('text', c.name), 'Class name');
  name.className = 'class-name';
  name.maxLength = 40;
  name.pattern = '[A-Za-z0-9_\\-]{1,40}';
  name.title = 'Letters, digits, - and _: the name models learn the class by';
  field(input('color', c.colour), `Colour of ${c.name || 'the new class'}`).className = 'class-colour';
  const severity = document.createElement('select');
  severity.className = 'class-severity';
  for (const s of SEVERITIES) severity.append(new Option(s, s, false, s === c.severity));
  field(severity, `Severity of ${c.name || 'the new class'}`);
  const rejects = input('checkbox', '');
  rejects.checked = c.rejects !== false;
  rejects.className = 'class-rejects';
  field(rejects, `${c.name || 'The new class'} rejects the part`);
  const description = field(input('text', c.description ?? ''), `What ${c.name || 'the new class'} looks like`);
  description.className = 'class-description';
  description.maxLength = 500;
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.textContent = 'Remove';
  field(remove, `Remove ${c.name || 'the new class'}`).addEventListener('click', () => row.remove());
  return row;
}

// The severity a row's select shows: always one of SEVERITIES, its only options.
function severityOf(select: HTMLSelectElement): Severity {
  const severity = SEVERITIES.find((s) => s === select.value);
  if (severity === undefined) throw new Error(`a class's severity reads ${JSON.stringify(select.value)}`);
  return severity;
}

function editedClasses() {
  return [...byId('classes', HTMLTableSectionElement).rows].map((row) => {
    const value = <T extends Element>(cls: string, kind: { new (): T; prototype: T }) => query(row, `.${cls}`, kind);
    const c: DefectClassInput = {
      name: value('class-name', HTMLInputElement).value.trim(),
      colour: value('class-colour', HTMLInputElement).value,
      severity: severityOf(value('class-severity', HTMLSelectElement)),
      rejects: value('class-rejects', HTMLInputElement).checked,
    };
    const description = value('class-description', HTMLInputElement).value.trim();
    if (description) c.description = description;
    return c;
  });
}

// The saved classes whose rows now carry another name that is no class yet: old → new.
function editedRenames(classes: DefectClassInput[]) {
  const names = new Set(classes.map((c) => c.name));
  const saved = new Set(savedClasses.map((c) => c.name));
  const renames: Record<string, string> = {};
  for (const row of byId('classes', HTMLTableSectionElement).rows) {
    const old = row.dataset.saved;
    const name = query(row, '.class-name', HTMLInputElement).value.trim();
    if (old && name && old !== name && !names.has(old) && !saved.has(name)) renames[old] = name;
  }
  return renames;
}

async function refreshClasses() {
  const response = await fetch('/api/v1/defect-classes', { cache: 'no-store', credentials: 'same-origin', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!response.ok) throw new Error(`defect classes: ${response.status} ${response.statusText}`);
  classesVersion = response.headers.get('etag');
  const body: unknown = await response.json();
  savedClasses = (body as DefectClasses).classes;
  byId('classes', HTMLTableSectionElement).replaceChildren(...savedClasses.map(classRow));
}

byId('add-class', HTMLButtonElement).addEventListener('click', () => {
  const colour = NEW_CLASS_COLOURS[byId('classes', HTMLTableSectionElement).rows.length % NEW_CLASS_COLOURS.length];
  const row = classRow({ name: '', colour, severity: 'major', rejects: true });
  byId('classes', HTMLTableSectionElement).append(row);
  query(row, '.class-name', HTMLInputElement).focus();
});

byId('save-classes', HTMLButtonElement).addEventListener('click', async () => {
  showError('');
  const classes = editedClasses();
  // What the gate will pass that it rejects now: ask before a defect reaches the customer.
  // Every class tolerated now that was not before: a new class, a renamed one, or one that rejected.
  const toleratedNow = new Set(savedClasses.filter((c) => !c.rejects).map((c) => c.name));
  const passing = classes.filter((c) => !c.rejects && !toleratedNow.has(c.name)).map((c) => c.name);
  if (passing.length) {
    const ok = await confirmChange(
      'Pass these defects?',
      `From the next part on, the gate will pass parts the model gives ${passing.join(', ')}. ` +
        'Their records keep the class. The change is recorded with your name.',
      'Pass them');
    if (!ok) return;
  }
  try {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (classesVersion) headers['if-match'] = classesVersion;
    const renames = editedRenames(classes);
    const body = Object.keys(renames).length ? { classes, renames } : { classes };
    const saved = await api<DefectClassesSaved | null>('/api/v1/defect-classes', { method: 'PUT', body: JSON.stringify(body), headers });
    await refreshClasses();
    const relabelled = saved?.relabelled ? `; ${saved.relabelled} labelled part${saved.relabelled === 1 ? '' : 's'} follow${saved.relabelled === 1 ? 's' : ''} the new name` : '';
    byId('classes-status').textContent = `Saved: ${savedClasses.length} classes${relabelled}.`;
  } catch (error) {
    byId('classes-status').textContent = '';
    showError(`Defect classes not saved: ${errorMessage(error)}`);
  }
});

refreshClasses().catch((error: unknown) => showError(errorMessage(error)));

api<WhoAmI>('/api/v1/whoami').then((who) => {
  byId('who').textContent = `${who.name} (${who.role})`;
  byId('nav-label').hidden = !who.may.includes('label');
}).catch(() => {});

refreshModels().catch((error: unknown) => showError(errorMessage(error))).finally(poll);
pollDrift();
window.modelsPage = { refreshModels, refreshJobs, refreshBacktests, refreshClasses, refreshDrift };
