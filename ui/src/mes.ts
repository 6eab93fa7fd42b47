// The mes page's script (served as /assets/mes.js, bundled by build.rs).
/*!
 * This script bundles uPlot (https://github.com/leeoniya/uPlot), under its licence:
 *
 * The MIT License (MIT)
 *
 * Copyright (c) 2022 Leon Sorokin
 *
 * Permission is hereby granted, free of charge, to any person obtaining a copy
 * of this software and associated documentation files (the "Software"), to deal
 * in the Software without restriction, including without limitation the rights
 * to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 * copies of the Software, and to permit persons to whom the Software is
 * furnished to do so, subject to the following conditions:
 *
 * The above copyright notice and this permission notice shall be included in
 * all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 * IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 * FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 * AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 * LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 * OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 * THE SOFTWARE.
 */
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { byId, query, errorMessage } from './page';
import { errorOf, showLinksForRole, type DefectClass, type DefectClasses } from './api';

// The API's answers as this page reads them (src/serve/openapi.json has the whole schemas).

/** ISO 22400-2 figures of one period (Kpis): a null ratio could not be computed. */
interface Kpis {
  planned_busy_time_s: number;
  good_quantity: number;
  scrap_quantity: number;
  availability: number | null;
  effectiveness: number | null;
  quality_ratio: number | null;
  oee: number | null;
  first_pass_yield: number | null;
}

/** One hour's KPIs (PeriodKpis). */
interface PeriodKpis {
  from: string;
  to: string;
  kpis: Kpis;
}

/** GET /api/v1/kpis (KpiReport). */
interface KpiReport {
  from: string;
  to: string;
  as_of: string;
  total: Kpis;
  periods: PeriodKpis[];
}

/** The KPIs the OEE chart draws. */
type Factor = 'oee' | 'availability' | 'effectiveness' | 'quality_ratio';

/** One class of the Pareto (ParetoClass). */
interface ParetoClass {
  class: string;
  count: number;
  share: number;
  cumulative_share: number;
}

/** GET /api/v1/pareto (Pareto). */
interface Pareto {
  classes: ParetoClass[];
}

/** One configured control chart, as GET /api/v1/charts lists them (ChartView). */
interface ChartView {
  name: string;
  of: string;
  kind: string;
}

/** One plotted point of a control chart (ChartPoint). */
interface ChartPoint {
  at: string | null;
  value: number;
  center: number;
  lcl: number;
  ucl: number;
  excluded: boolean;
  rules: string[];
}

/** One broken rule (Violation). */
interface Violation {
  message: string;
}

/** GET /api/v1/charts/{name} (Chart). */
interface Chart {
  points: ChartPoint[];
  violations: Violation[];
  capability: { cpk: number } | null;
}

/** How the line runs (LineRate). */
interface LineRate {
  source: 'recent' | 'plan';
  effectiveness: number;
  yield_ratio: number;
  running: boolean;
  note: string;
}

/** One open work order's projection (OrderSchedule). */
interface OrderSchedule {
  id: string;
  product: string;
  quantity: number;
  due: string;
  good_so_far: number;
  eta: string | null;
  slack_s: number | null;
  critical_ratio: number | null;
  status: 'on_time' | 'late_risk' | 'late';
}

/** GET /api/v1/schedule (Schedule). */
interface Schedule {
  line: LineRate;
  orders: OrderSchedule[];
}

/** GET /api/v1/rootcause (StationRootCause). */
interface StationRootCause {
  scope: { from: string; to: string };
  computed_at: string;
  parts: number;
  sampled_one_in: number;
  targets: {
    target: string;
    analysis: { findings: { sentence: string }[] } | null;
    note: string | null;
  }[];
}

/** One maintenance watch (MaintenanceWatchStatus). */
interface MaintenanceWatch {
  name: string;
  equipment: string;
  active: boolean;
  message: string;
}

/** GET /api/v1/maintenance (MaintenanceView). */
interface MaintenanceView {
  watches: MaintenanceWatch[];
}

// The labelling and models links show only to roles that may use them.
showLinksForRole();
const REFRESH_MS = 60_000;
const FETCH_TIMEOUT_MS = 20_000;
const COLOURS = { oee: '#93c5fd', availability: '#22c55e', effectiveness: '#f59e0b', quality_ratio: '#c084fc', value: '#93c5fd', limit: '#f87171', center: '#9aa5b4' };
const AXIS: uPlot.Axis = { stroke: '#9aa5b4', grid: { stroke: '#2a313b', width: 1 }, ticks: { stroke: '#2a313b', width: 1 } };
const charts = new Map<string, uPlot>();

/** The API's answer at `path`, of the schema the caller names. */
async function api<T>(path: string): Promise<T> {
  const response = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (response.status === 401) {
    window.location.assign('/login');
    throw new Error('signed out');
  }
  let body: unknown = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw Object.assign(new Error(errorOf(body) ?? `${path}: HTTP ${response.status}`), { status: response.status });
  // The API answers with the schema its OpenAPI document gives for `path`.
  return body as T;
}

const percent = (ratio: number | null | undefined) => (ratio === null || ratio === undefined ? '—' : `${(ratio * 100).toFixed(1)} %`);
const integer = (n: number | null | undefined) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-GB'));
const seconds = (iso: string | null) => Date.parse(String(iso).replace(/(\.\d{3})\d+/, '$1')) / 1000;
const local = (iso: string | null) => (iso ? new Date(seconds(iso) * 1000).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'short' }) : '—');

function cell(row: HTMLTableRowElement, text: string, className?: string) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

/** Draws (or redraws) a uPlot chart in `el`, as wide as its panel. */
function plot(key: string, el: HTMLElement, options: Omit<uPlot.Options, 'width' | 'height'>, data: uPlot.AlignedData, summary: string) {
  charts.get(key)?.destroy();
  // The canvas says nothing to a screen reader: the container carries what it shows.
  el.setAttribute('role', 'img');
  el.setAttribute('aria-label', summary);
  el.replaceChildren();
  const chart = new uPlot({ width: Math.max(300, el.clientWidth), height: 240, ...options }, data, el);
  charts.set(key, chart);
  el.dataset.points = String(data[0].length);
  return chart;
}

function renderKpis(report: KpiReport) {
  byId('range').textContent = `${local(report.from)} to ${local(report.as_of)}`;
  for (const key of ['oee', 'availability', 'effectiveness', 'quality_ratio', 'first_pass_yield'] as const) {
    byId(`kpi-${key}`).textContent = percent(report.total[key]);
  }
  byId('kpi-good_quantity').textContent = integer(report.total.good_quantity);
  byId('kpi-scrap_quantity').textContent = integer(report.total.scrap_quantity);
  const periods = report.periods.filter((p) => p.kpis.planned_busy_time_s > 0);
  const factors: Factor[] = ['oee', 'availability', 'effectiveness', 'quality_ratio'];
  const names: Record<Factor, string> = { oee: 'OEE', availability: 'Availability', effectiveness: 'Performance', quality_ratio: 'Quality' };
  // The report's whole range on the x axis: a day with one hour of data still reads as a day.
  const range: uPlot.Range.MinMax = [seconds(report.from), seconds(report.to)];
  const last = periods.at(-1);
  plot('oee', byId('oee-chart', HTMLDivElement), {
    scales: { x: { time: true, range: () => range }, y: { range: [0, 1] } },
    axes: [{ ...AXIS }, { ...AXIS, values: (u, ticks) => ticks.map((t) => `${Math.round(t * 100)} %`) }],
    series: [{}, ...factors.map((f): uPlot.Series => ({ label: names[f], stroke: COLOURS[f], width: 2, points: { show: true }, value: (u, v) => percent(v) }))],
  }, [periods.map((p) => seconds(p.from)), ...factors.map((f) => periods.map((p) => p.kpis[f]))],
  `OEE by hour over ${periods.length} hours` + (last ? `; the last hour: ${factors.map((f) => `${names[f]} ${percent(last.kpis[f])}`).join(', ')}` : ''));
}

// The station's defect classes by name: their colour and severity beside the Pareto's counts
// (a class the taxonomy does not list, or `unclassified`, shows a dash).
let defectClasses = new Map<string, DefectClass>();

/** uPlot's bar paths: its full build, bundled here, has them; its types say they may not be there. */
function bars(options: uPlot.Series.BarsPathBuilderOpts): uPlot.Series.PathBuilder {
  if (!uPlot.paths.bars) throw new Error('this uPlot build draws no bars');
  return uPlot.paths.bars(options);
}

function renderPareto(pareto: Pareto) {
  const classes = pareto.classes;
  const body = byId('pareto', HTMLTableElement).tBodies[0];
  body.replaceChildren();
  for (const c of classes) {
    const row = body.insertRow();
    const info = defectClasses.get(c.class);
    const name = cell(row, c.class);
    if (info) {
      const swatch = document.createElement('span');
      swatch.setAttribute('aria-hidden', 'true');
      swatch.style.cssText = `display:inline-block;width:.8em;height:.8em;margin-left:.4em;border-radius:2px;background:${info.colour}`;
      name.append(swatch);
    }
    cell(row, info ? `${info.severity}${info.rejects ? '' : ' (passed at the gate)'}` : '—');
    cell(row, integer(c.count), 'num');
    cell(row, percent(c.share), 'num');
    cell(row, percent(c.cumulative_share), 'num');
  }
  plot('pareto', byId('pareto-chart', HTMLDivElement), {
    scales: {
      x: { time: false, range: () => [-0.5, Math.max(1, classes.length) - 0.5] },
      y: { range: (u, min, max) => [0, Math.max(1, max) * 1.1] },
      share: { range: [0, 1] },
    },
    axes: [
      { ...AXIS, values: (u, ticks) => ticks.map((t) => classes[t]?.class ?? ''), incrs: [1] },
      { ...AXIS, label: 'parts' },
      { ...AXIS, scale: 'share', side: 1, grid: { show: false }, values: (u, ticks) => ticks.map((t) => `${Math.round(t * 100)} %`) },
    ],
    series: [
      { value: (u, i) => classes[i]?.class ?? '' },
      { label: 'parts', fill: 'rgba(248,113,113,.55)', stroke: '#f87171', paths: bars({ size: [0.6, 80] }), points: { show: false } },
      { label: 'cumulative', scale: 'share', stroke: '#f3f5f8', width: 2, points: { show: true }, value: (u, v) => percent(v) },
    ],
  }, [classes.map((_, i) => i), classes.map((c) => c.count), classes.map((c) => c.cumulative_share)],
  `Defect Pareto: ${classes.map((c) => `${c.class} ${c.count}`).join(', ') || 'no defect'}; the numbers are in the table below`);
}

async function renderControlCharts() {
  const list = await api<ChartView[]>('/api/v1/charts');
  const holder = byId('control-charts', HTMLDivElement);
  for (const view of list) {
    let box = holder.querySelector(`[data-chart="${CSS.escape(view.name)}"]`);
    if (!box) {
      const created = document.createElement('div');
      created.dataset.chart = view.name;
      created.innerHTML = '<h3></h3><div class="chart"></div><p class="chart-note"></p><ul class="violations"></ul>';
      query(created, 'h3', HTMLHeadingElement).textContent = `${view.name} · ${view.of} · ${view.kind.replaceAll('_', ' ')}`;
      holder.append(created);
      box = created;
    }
    const note = query(box, '.chart-note', HTMLParagraphElement);
    const plotEl = query(box, '.chart', HTMLDivElement);
    try {
      const chart = await api<Chart>(`/api/v1/charts/${encodeURIComponent(view.name)}`);
      const points = chart.points;
      const last = points.at(-1);
      plot(`chart:${view.name}`, plotEl, {
        scales: { x: { time: true } },
        axes: [{ ...AXIS }, { ...AXIS }],
        series: [
          {},
          { label: 'value', stroke: COLOURS.value, width: 2,
            points: { show: true, size: 6, fill: (u, s) => COLOURS.value } },
          { label: 'center', stroke: COLOURS.center, dash: [6, 4], points: { show: false } },
          { label: 'UCL', stroke: COLOURS.limit, dash: [3, 3], points: { show: false } },
          { label: 'LCL', stroke: COLOURS.limit, dash: [3, 3], points: { show: false } },
          { label: 'rule broken', stroke: 'transparent', points: { show: true, size: 11, stroke: '#f87171', fill: '#f87171' } },
        ],
      }, [
        points.map((p) => seconds(p.at)),
        points.map((p) => (p.excluded ? null : p.value)),
        points.map((p) => p.center),
        points.map((p) => p.ucl),
        points.map((p) => p.lcl),
        points.map((p) => (p.rules.length ? p.value : null)),
      ], `${view.name}: ${points.length} points` + (last ? `, the last ${last.value.toPrecision(4)} against limits ${last.lcl?.toPrecision(4) ?? '—'} to ${last.ucl?.toPrecision(4) ?? '—'}` : '') +
        `; ${chart.violations.length} rule violations`);
      const cpk = chart.capability?.cpk;
      note.textContent = `${points.length} points` + (cpk !== undefined && cpk !== null ? ` · Cpk ${cpk.toFixed(2)}` : '');
      query(box, '.violations', HTMLUListElement).replaceChildren(...chart.violations.map((v) =>
        Object.assign(document.createElement('li'), { textContent: v.message })));
    } catch (error) {
      // A chart whose data cannot give limits yet says why, in the API's words.
      charts.get(`chart:${view.name}`)?.destroy();
      charts.delete(`chart:${view.name}`);
      plotEl.replaceChildren();
      delete plotEl.dataset.points;
      note.textContent = errorMessage(error);
      query(box, '.violations', HTMLUListElement).replaceChildren();
    }
  }
}

function renderSchedule(schedule: Schedule) {
  const line = schedule.line;
  byId('line-rate').textContent = `Line: ${line.running ? 'running' : 'stopped'}, performance ${percent(line.effectiveness)}, yield ${percent(line.yield_ratio)} (${line.source.replaceAll('_', ' ')})${line.note ? ` — ${line.note}` : ''}`;
  const body = byId('orders', HTMLTableElement).tBodies[0];
  body.replaceChildren();
  for (const order of schedule.orders) {
    const row = body.insertRow();
    row.dataset.order = order.id;
    cell(row, order.id);
    cell(row, order.product ?? '—');
    cell(row, `${integer(order.good_so_far)} / ${integer(order.quantity)}`, 'num');
    cell(row, local(order.due));
    cell(row, local(order.eta));
    cell(row, order.slack_s === null || order.slack_s === undefined ? '—' : (order.slack_s / 60).toFixed(0), 'num');
    cell(row, order.critical_ratio === null || order.critical_ratio === undefined ? '—' : order.critical_ratio.toFixed(2), 'num');
    cell(row, order.status.replaceAll('_', ' ')).dataset.status = order.status;
  }
  if (!schedule.orders.length) {
    const row = body.insertRow();
    const td = cell(row, 'No open work order.');
    td.colSpan = 8;
  }
}

function renderRootCause(rootcause: StationRootCause) {
  byId('rootcause-scope').dataset.computedAt = rootcause.computed_at;
  byId('rootcause-scope').textContent = `${integer(rootcause.parts)} judged parts from ${local(rootcause.scope.from)} to ${local(rootcause.scope.to)}` +
    (rootcause.sampled_one_in > 1 ? `, one in ${rootcause.sampled_one_in} read` : '');
  const items = rootcause.targets.flatMap((t) => (t.analysis?.findings ?? []).map((f) => f.sentence));
  const notes = rootcause.targets.filter((t) => !t.analysis && t.note).map((t) => `${t.target}: ${t.note}`);
  const list = [...items, ...notes].map((text) => Object.assign(document.createElement('li'), { textContent: text }));
  if (!list.length) list.push(Object.assign(document.createElement('li'), { textContent: 'No finding in the window.' }));
  byId('findings', HTMLUListElement).replaceChildren(...list);
}

function renderMaintenance(view: MaintenanceView) {
  const list = view.watches.map((w) => {
    const li = document.createElement('li');
    // The watch's message names its equipment already, most of the time.
    li.textContent = w.message.startsWith(w.equipment) ? w.message : `${w.equipment}: ${w.message}`;
    li.classList.toggle('active', w.active);
    li.dataset.watch = w.name;
    return li;
  });
  if (!list.length) list.push(Object.assign(document.createElement('li'), { textContent: 'No maintenance watch configured.' }));
  byId('watches', HTMLUListElement).replaceChildren(...list);
}

async function refresh() {
  const failures: string[] = [];
  const part = <T>(name: string, promise: Promise<T>, render: (value: T) => void) =>
    promise.then(render).catch((error: unknown) => failures.push(`${name}: ${errorMessage(error)}`));
  await Promise.all([
    part('KPIs', api<KpiReport>('/api/v1/kpis'), renderKpis),
    part('Pareto', api<DefectClasses>('/api/v1/defect-classes').then((body) => {
      defectClasses = new Map(body.classes.map((c) => [c.name, c]));
      return api<Pareto>('/api/v1/pareto');
    }), renderPareto),
    part('control charts', renderControlCharts(), () => {}),
    part('schedule', api<Schedule>('/api/v1/schedule'), renderSchedule),
    part('root cause', api<StationRootCause>('/api/v1/rootcause'), renderRootCause),
    part('maintenance', api<MaintenanceView>('/api/v1/maintenance'), renderMaintenance),
  ]);
  byId('error').textContent = failures.join(' · ');
  byId('error').hidden = failures.length === 0;
  document.body.dataset.refreshed = new Date().toISOString();
}

refresh();
setInterval(refresh, REFRESH_MS);
