// The whatif page's script (served as /assets/whatif.js, bundled by build.rs).
import { byId, errorMessage } from './page';
import { errorOf, showLinksForRole } from './api';

// The API's answers as this page reads them, and what it posts (src/serve/openapi.json has
// the whole schemas; the twin's `analysis`, untyped there, is src/twin/analysis.rs's TwinAnalysis).

/** One scenario the twin can run (ScenarioList's scenarios). */
interface Scenario {
  name: string;
  description: string;
  hours: number;
  parts_per_min: number;
  work_orders: number;
  /** Its process sensors, whose settings a change may name (`press_temp.base`). */
  sensors: string[];
}

/** GET /api/v1/scenarios (ScenarioList). */
interface ScenarioList {
  scenarios: Scenario[];
  /** The scenario files that do not load, with why. */
  invalid: string[];
  settings: { name: string; what: string }[];
}

/** POST /api/v1/whatif's body (WhatIfRequest). */
interface WhatIfRequest {
  scenario: string;
  changes: string[];
  analyse: boolean;
  hours?: number;
}

/** What became of one work order in a run (TwinRun's work_orders). */
interface TwinOrder {
  id: string;
  product?: string;
  quantity: number;
  good_made: number;
  due_h: number;
  /** Null: it cannot finish. */
  eta_h: number | null;
  projected: boolean;
  lateness_min: number | null;
  status: 'on_time' | 'late_risk' | 'late';
}

/** The figures of one run (TwinRun). */
interface TwinRun {
  hours: number;
  planned_hours: number;
  /** Parts by what became of them: made, passed, late… */
  parts: Record<string, number>;
  work_orders: TwinOrder[];
}

/** One figure before and after the changes: null where a work order cannot finish. */
interface Delta {
  figure: string;
  unit: string;
  before: number | null;
  after: number | null;
}

/** One failure of watched equipment, and the alert before it (FailureWarning). */
interface FailureWarning {
  failure_h: number;
  alert_h: number | null;
  /** Failure − alert, minutes. */
  warning_min: number | null;
}

/** The station's root cause and maintenance watches on the changed run (TwinAnalysis). */
interface TwinAnalysis {
  parts: number;
  causes: { target: string; features: string[]; sentence: string }[];
  maintenance: { name: string; equipment: string; failures: FailureWarning[]; message: string }[];
}

/** POST /api/v1/whatif's answer (WhatIfReport). */
interface WhatIfReport {
  scenario: string;
  description: string;
  changes: { text: string; setting: string }[];
  baseline: TwinRun;
  changed: TwinRun;
  deltas: Delta[];
  analysis?: TwinAnalysis | null;
  speedup: number;
}

// The labelling and models links show only to roles that may use them.
showLinksForRole();
// A what-if of a shift takes well under a second; with the analysis, a few seconds.
const RUN_TIMEOUT_MS = 60_000;

// Figures where less is better; the rest are better higher. The deadline and the line's rate
// are what a change sets, not outcomes: they are shown without a colour.
const LOWER_IS_BETTER = [/cannot make the gate/, /lost to late verdicts/, /defective parts passed/, /lateness$/, /^decision time/];
const NEUTRAL = [/^parts per minute$/, /^verdict deadline/];

const PART_COUNTS: Partial<Record<string, string>> = {
  made: 'made', settled: 'through the gate', passed: 'passed', rejected_by_verdict: 'rejected by verdict',
  rejected_by_policy: 'rejected by policy (no verdict in time)', late: 'verdict too late for the gate',
  dropped: 'frames dropped', defective: 'defective', escaped: 'defective passed',
  false_rejects: 'good rejected', good_rejected_by_policy: 'good rejected by policy',
};

/** The API's answer at `path`, of the schema the caller names. */
async function api<T>(path: string, options: RequestInit = {}): Promise<T> {
  const response = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(RUN_TIMEOUT_MS), ...options });
  if (response.status === 401) {
    window.location.assign('/login');
    throw new Error('signed out');
  }
  let body: unknown = null;
  try { body = await response.json(); } catch { /* an empty or non-JSON answer */ }
  if (!response.ok) throw new Error(errorOf(body) ?? `${path}: HTTP ${response.status}`);
  // The API answers with the schema its OpenAPI document gives for `path`.
  return body as T;
}

function showError(message: string) {
  byId('error').textContent = message;
  byId('error').hidden = !message;
}

function cell(row: HTMLTableRowElement, text: string, className?: string) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fixed(value: number | null | undefined, digits: number) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  return Number(value).toLocaleString('en-GB', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function digitsFor(unit: string, value: number | null) {
  if (unit === 'parts') return 0;
  return Math.abs(value ?? 0) >= 1000 ? 0 : 1;
}

function judge(figure: string, before: number | null, after: number | null) {
  if (before === null || after === null || before === after) return '';
  if (NEUTRAL.some((re) => re.test(figure))) return '';
  const lower = LOWER_IS_BETTER.some((re) => re.test(figure));
  return (after < before) === lower ? 'better' : 'worse';
}

function changeRow(text = '') {
  const row = document.createElement('div');
  row.className = 'change-row';
  const input = document.createElement('input');
  input.className = 'change';
  input.setAttribute('list', 'settings');
  input.setAttribute('aria-label', 'Change');
  input.placeholder = 'belt_speed=+20%';
  input.value = text;
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.textContent = 'Remove';
  remove.setAttribute('aria-label', 'Remove this change');
  remove.addEventListener('click', () => row.remove());
  row.append(input, remove);
  byId('changes', HTMLDivElement).append(row);
  return input;
}

let scenarios: Scenario[] = [];
// The settings every scenario has; a scenario's sensors come on top.
let settingNames: string[] = [];

function describeScenario() {
  const chosen = scenarios.find((s) => s.name === byId('scenario', HTMLSelectElement).value);
  byId('scenario-description').textContent = chosen
    ? `${chosen.description}\n${fixed(chosen.hours, 1)} h at ${fixed(chosen.parts_per_min, 0)} parts/min, ${chosen.work_orders} work orders`
    : '';
  const settings = [...new Set([...settingNames, ...(chosen?.sensors ?? []).map((s) => `${s}.base`)])];
  byId('settings', HTMLDataListElement).replaceChildren(...settings.map((name) => Object.assign(document.createElement('option'), { value: `${name}=` })));
}

async function loadScenarios() {
  const list = await api<ScenarioList>('/api/v1/scenarios');
  scenarios = list.scenarios;
  byId('scenario', HTMLSelectElement).replaceChildren(...scenarios.map((s) => Object.assign(document.createElement('option'), { value: s.name, textContent: s.name })));
  settingNames = list.settings.map((s) => s.name).filter((name) => !name.includes('SENSOR'));
  byId('settings-help', HTMLDListElement).replaceChildren(...list.settings.flatMap((s) => [
    Object.assign(document.createElement('dt'), { textContent: s.name }),
    Object.assign(document.createElement('dd'), { textContent: s.what }),
  ]));
  if (list.invalid.length) showError(`Scenario files that do not load:\n${list.invalid.join('\n')}`);
  if (!scenarios.length) {
    showError('This station has no valid scenario.');
    byId('run', HTMLButtonElement).disabled = true;
  }
  describeScenario();
}

function renderReport(report: WhatIfReport) {
  byId('report-title').textContent = `${report.scenario}: ${report.changes.length ? report.changes.map((c) => c.text).join(', ') : 'as it is'}`;
  byId('report-summary').textContent =
    `${fixed(report.changed.hours, 1)} simulated hours (${fixed(report.changed.planned_hours, 1)} planned), ` +
    `${fixed(report.speedup, 0)}× faster than real time.`;

  const deltas = byId('deltas', HTMLTableElement).tBodies[0];
  deltas.replaceChildren();
  for (const d of report.deltas) {
    const row = deltas.insertRow();
    row.dataset.figure = d.figure;
    const digits = digitsFor(d.unit, d.before);
    cell(row, d.figure);
    cell(row, fixed(d.before, digits), 'num');
    cell(row, fixed(d.after, digits), 'num');
    const change = d.before === null || d.after === null ? null : d.after - d.before;
    cell(row, change === null ? '—' : `${change > 0 ? '+' : ''}${fixed(change, digits)}`, `num ${judge(d.figure, d.before, d.after)}`.trim());
    cell(row, d.unit);
  }

  const orders = byId('orders', HTMLTableElement).tBodies[0];
  orders.replaceChildren();
  const before = new Map(report.baseline.work_orders.map((o) => [o.id, o]));
  for (const after of report.changed.work_orders) {
    const was: Partial<TwinOrder> = before.get(after.id) ?? {};
    const row = orders.insertRow();
    row.dataset.order = after.id;
    cell(row, after.id);
    cell(row, after.product ?? '—');
    cell(row, fixed(after.quantity, 0), 'num');
    cell(row, fixed(after.due_h, 2), 'num');
    cell(row, fixed(was.eta_h, 2), 'num');
    cell(row, fixed(after.eta_h, 2), 'num');
    cell(row, fixed(was.lateness_min, 1), 'num');
    cell(row, fixed(after.lateness_min, 1), `num ${judge('lateness', was.lateness_min ?? null, after.lateness_min ?? null)}`.trim());
    const status = cell(row, `${after.status.replace('_', ' ')}${after.projected ? ' (projected)' : ''}`);
    status.dataset.status = after.status;
  }

  const parts = byId('parts', HTMLTableElement).tBodies[0];
  parts.replaceChildren();
  for (const [key, value] of Object.entries(report.changed.parts)) {
    const row = parts.insertRow();
    cell(row, PART_COUNTS[key] ?? key.replaceAll('_', ' '));
    cell(row, fixed(report.baseline.parts[key], 0), 'num');
    cell(row, fixed(value, 0), 'num');
  }

  const analysis = report.analysis;
  byId('analysis', HTMLDivElement).hidden = !analysis;
  if (analysis) {
    const causes = analysis.causes.map((c) => Object.assign(document.createElement('li'), { textContent: c.sentence }));
    if (!causes.length) causes.push(Object.assign(document.createElement('li'), { textContent: 'no finding' }));
    byId('causes', HTMLUListElement).replaceChildren(...causes);
    const watches = analysis.maintenance.map((m) => {
      const warned = m.failures.filter((f) => f.alert_h !== null && f.alert_h !== undefined);
      const text = `${m.equipment}: ${m.failures.length} simulated failures, ${warned.length} warned before they came` +
        (warned.length ? ` (${warned.map((f) => `${fixed(f.warning_min, 0)} min`).join(', ')} ahead)` : '') +
        (m.message ? ` — ${m.message}` : '');
      return Object.assign(document.createElement('li'), { textContent: text });
    });
    if (!watches.length) watches.push(Object.assign(document.createElement('li'), { textContent: 'no watch' }));
    byId('maintenance', HTMLUListElement).replaceChildren(...watches);
  }
  byId('report').hidden = false;
}

byId('add-change', HTMLButtonElement).addEventListener('click', () => changeRow().focus());
byId('scenario', HTMLSelectElement).addEventListener('change', describeScenario);
byId('analyse', HTMLInputElement).addEventListener('change', () => { byId('hours', HTMLInputElement).max = byId('analyse', HTMLInputElement).checked ? '24' : '168'; });

byId('whatif-form', HTMLFormElement).addEventListener('submit', async (event) => {
  event.preventDefault();
  showError('');
  const request: WhatIfRequest = {
    scenario: byId('scenario', HTMLSelectElement).value,
    // The selector finds only inputs: the instanceof filter tells the type checker so.
    changes: [...document.querySelectorAll('#changes input.change')]
      .filter((i) => i instanceof HTMLInputElement)
      .map((i) => i.value.trim())
      .filter(Boolean),
    analyse: byId('analyse', HTMLInputElement).checked,
  };
  if (byId('hours', HTMLInputElement).value !== '') request.hours = Number(byId('hours', HTMLInputElement).value);
  byId('run', HTMLButtonElement).disabled = true;
  byId('status').textContent = request.analyse ? 'running, with the analysis (a few seconds)…' : 'running…';
  const started = performance.now();
  try {
    const report = await api<WhatIfReport>('/api/v1/whatif', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(request),
    });
    renderReport(report);
    byId('status').textContent = `done in ${fixed((performance.now() - started) / 1000, 1)} s`;
  } catch (error) {
    byId('status').textContent = '';
    showError(errorMessage(error));
  } finally {
    byId('run', HTMLButtonElement).disabled = false;
  }
});

changeRow('belt_speed=+20%');
loadScenarios().catch((error: unknown) => showError(`Could not list the scenarios: ${errorMessage(error)}`));
