//! ISO 22400-2 KPIs over the minute buckets: pure functions, no I/O, no clock.
//!
//! Time elements, for a period (an hour, a shift run, a day, a work order, the whole range):
//! - PBT, planned busy time: the shift calendar's planned minutes (breaks excluded), and the
//!   time outside them in which the line produced (unplanned production, below);
//! - ADOT, actual unit down time: planned time with no part for at least `stop_after_s`
//!   (measured between the last part of one minute and the first of the next: a stop that
//!   starts and ends inside one calendar minute is not seen), together with the stops known
//!   from outside (a line-running sensor), only where planned;
//! - APT, actual production time = PBT − ADOT.
//!
//! Quantities: PQ, produced = every part recorded; SQ, scrap = parts rejected at the gate
//! (failed, error, no verdict); GQ, good = PQ − SQ; GP, good first time (see
//! [`super::production`]); IP, inspected = PQ.
//!
//! Unplanned production. Parts made outside the calendar's planned time (after a shift's end,
//! in a break, on a day with no shift) are parts like any other: they count in PQ, GQ, SQ and
//! GP, so the quantities agree with the production counts and the quality ratio covers every
//! part that left the station. The time they were made in counts as planned busy time and as
//! production time both: the line was in fact run then, as if it had been planned (overtime).
//! Effectiveness compares PRU × PQ with the time the parts took; counting the parts without
//! their time would put it above 1 with a correct ideal cycle time, and the warning would then
//! blame the master data wrongly. Leaving the parts out instead would hide real output and
//! real scrap. The added time is all production and no down time, so availability rises
//! toward 1 with overtime (an 8-hour shift at 50 % and 4 hours of overtime read 67 %), and a
//! stop inside overtime is not down time: it splits the run, and time outside the plan with no
//! parts is neither planned nor down. OEE stays PRU × GQ / PBT. Unplanned production time is
//! measured as planned time's stops are: runs of parts less than `stop_after_s` apart, each
//! from its first part to its last and one cycle more (the run's mean spacing: n parts take n
//! cycles), less the stretches the running sensor says the line stood. A lone part outside the
//! plan has no time of its own (as a part between two stops in planned time has none), so a
//! period of lone parts outside the plan can still read effectiveness above 1.
//!
//! Work orders: at any moment the time belongs to the running order that started last, the
//! rule the record store uses to give each part its order, so orders' times never overlap; an
//! order interrupted by another has several stretches of time. The row of no work order has
//! the time no order ran.
//!
//! KPIs: availability = APT / PBT; effectiveness ("performance") = PRU × PQ / APT; quality
//! ratio = GQ / PQ; OEE = availability × effectiveness × quality ratio; first-pass yield =
//! GP / IP; scrap ratio = SQ / PQ. PRU, the ideal cycle time, is the work order's
//! `ideal_cycle_time_s` for its parts (the MES's master data, per product), else the station's
//! `production.ideal_cycle_ms`; with neither, effectiveness and OEE are null with a warning.
//! Effectiveness above 1 is not clamped: it says the ideal cycle time is too long, and is
//! flagged as a master-data warning.
//!
//! Every figure is computed from raw milliseconds and counts; the totals are not sums of
//! rounded periods. Only serialisation rounds (ratios to 4 decimals, seconds to 3), so the API
//! and a report computed from the same data agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::production::{Counts, MinuteBucket};
use super::shifts::ShiftCalendar;
use crate::record::WorkOrderState;

const MINUTE_MS: i64 = 60_000;

/// The master data the KPIs need besides the counts.
#[derive(Debug, Clone)]
pub struct ProductionPlan {
    pub calendar: Arc<ShiftCalendar>,
    /// The station's ideal cycle time (PRU), seconds per part.
    pub ideal_cycle_s: Option<f64>,
    /// No part for this long in planned time is a stop (down time).
    pub stop_after_s: f64,
    /// The sensor tag that says whether the line runs: its stopped stretches are down time.
    pub running_tag: Option<String>,
}

impl Default for ProductionPlan {
    /// 24/7, no ideal cycle time, stops after 60 s.
    fn default() -> ProductionPlan {
        ProductionPlan {
            calendar: Arc::new(ShiftCalendar::always()),
            ideal_cycle_s: None,
            stop_after_s: 60.0,
            running_tag: None,
        }
    }
}

/// When a work order ran and its ideal cycle time.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkOrderSpan {
    pub id: String,
    pub started_at: Option<DateTime<Utc>>,
    /// `None`: still running.
    pub completed_at: Option<DateTime<Utc>>,
    /// PRU of its parts, seconds.
    pub ideal_cycle_s: Option<f64>,
}

impl WorkOrderSpan {
    /// From the record store's work-order book (its latest start and completion).
    pub fn from_state(state: &WorkOrderState) -> WorkOrderSpan {
        let cycle = state.order.ideal_cycle_time_s;
        WorkOrderSpan {
            id: state.order.id.clone(),
            started_at: state.started_at,
            completed_at: state.completed_at,
            ideal_cycle_s: (cycle.is_finite() && cycle > 0.0).then_some(cycle),
        }
    }
}

/// The periods KPIs are given for, besides the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Local hours.
    Hour,
    /// Runs of the shifts in the calendar.
    Shift,
    /// Local days.
    Day,
    /// Work orders, by when they ran (at any moment the order started last, as parts are
    /// attributed); parts of no work order in a row of their own.
    WorkOrder,
}

/// The range asked for, in whole minutes, and how far the data is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// UTC minutes since the epoch, `[from, to)`.
    pub from_minute: i64,
    pub to_minute: i64,
    /// Time past this (now, less the recording delay) is neither planned nor down yet.
    pub as_of_ms: i64,
}

impl Range {
    /// `[from, to)` widened to whole minutes (the buckets' grain).
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>, as_of: DateTime<Utc>) -> Range {
        let ceil =
            |at: DateTime<Utc>| (at.timestamp_millis() + MINUTE_MS - 1).div_euclid(MINUTE_MS);
        Range {
            from_minute: from.timestamp_millis().div_euclid(MINUTE_MS),
            to_minute: ceil(to),
            as_of_ms: as_of.timestamp_millis(),
        }
    }

    pub fn from(&self) -> DateTime<Utc> {
        at(self.from_minute * MINUTE_MS)
    }

    pub fn to(&self) -> DateTime<Utc> {
        at(self.to_minute * MINUTE_MS)
    }

    /// Where measured time ends: the range's end, or `as_of` if earlier.
    fn end_ms(&self) -> i64 {
        (self.to_minute * MINUTE_MS)
            .min(self.as_of_ms)
            .max(self.from_minute * MINUTE_MS)
    }
}

/// Why a KPI is null, or what is odd about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// No planned busy time: availability is null.
    NoPlannedTime,
    /// No production time (all planned time down): effectiveness is null.
    NoProductionTime,
    /// No ideal cycle time for some parts: effectiveness and OEE are null.
    NoIdealCycleTime,
    /// No parts: quality ratio, first-pass yield and scrap ratio are null.
    NoParts,
    /// Effectiveness above 1: the ideal cycle time (master data) is too long.
    EffectivenessAboveOne,
}

/// A [`WarningCode`] and what it means here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiWarning {
    pub code: WarningCode,
    pub message: String,
}

/// The ISO 22400-2 figures of one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kpis {
    /// PBT, seconds.
    #[serde(serialize_with = "seconds")]
    pub planned_busy_time_s: f64,
    /// ADOT, seconds.
    #[serde(serialize_with = "seconds")]
    pub down_time_s: f64,
    /// APT = PBT − ADOT, seconds.
    #[serde(serialize_with = "seconds")]
    pub actual_production_time_s: f64,
    /// PRU × PQ, seconds; null without an ideal cycle time for every part.
    #[serde(serialize_with = "optional_seconds")]
    pub ideal_production_time_s: Option<f64>,
    /// PQ (= IP: every part is inspected).
    pub produced_quantity: u64,
    /// GQ: passed at the gate.
    pub good_quantity: u64,
    /// SQ: rejected at the gate (the three reasons below).
    pub scrap_quantity: u64,
    pub rejected_failed: u64,
    pub rejected_error: u64,
    pub rejected_no_verdict: u64,
    /// GP: good the first time through.
    pub first_pass_good: u64,
    #[serde(serialize_with = "ratio")]
    pub availability: Option<f64>,
    /// ISO 22400 effectiveness (often called performance).
    #[serde(serialize_with = "ratio")]
    pub effectiveness: Option<f64>,
    #[serde(serialize_with = "ratio")]
    pub quality_ratio: Option<f64>,
    #[serde(serialize_with = "ratio")]
    pub oee: Option<f64>,
    #[serde(serialize_with = "ratio")]
    pub first_pass_yield: Option<f64>,
    #[serde(serialize_with = "ratio")]
    pub scrap_ratio: Option<f64>,
    pub warnings: Vec<KpiWarning>,
}

/// One period's KPIs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodKpis {
    /// For a work order, the start of its first stretch of time and the end of its last:
    /// another order may have run in between (its time is not this order's).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The shift, for `period = shift`.
    pub shift: Option<String>,
    /// The work order, for `period = work_order` (null: parts made while none ran).
    pub work_order: Option<String>,
    pub kpis: Kpis,
}

/// The answer of `GET /api/v1/kpis`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiReport {
    /// The range, widened to whole minutes.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Time after this is not counted yet (planned or down): records are still on their way.
    pub as_of: DateTime<Utc>,
    pub period: Period,
    /// Local time of hours, days and shifts = UTC + this.
    pub utc_offset_minutes: i64,
    /// The station's PRU (work orders may give their own).
    pub ideal_cycle_ms: Option<f64>,
    pub stop_after_s: f64,
    pub total: Kpis,
    pub periods: Vec<PeriodKpis>,
}

/// One class of the defect Pareto.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParetoClass {
    pub class: String,
    pub count: u64,
    /// Of all defective parts.
    #[serde(serialize_with = "plain_ratio")]
    pub share: f64,
    /// This class and every larger one.
    #[serde(serialize_with = "plain_ratio")]
    pub cumulative_share: f64,
}

/// The answer of `GET /api/v1/pareto`: defective parts by class, most frequent first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pareto {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub work_order: Option<String>,
    /// Defective parts in all.
    pub defects: u64,
    pub classes: Vec<ParetoClass>,
}

/// The grain of `GET /api/v1/production`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    /// Local hours.
    Hour,
}

/// The counts of one minute or hour and work order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductionRow {
    pub start: DateTime<Utc>,
    pub work_order: Option<String>,
    pub inspected: u64,
    pub passed: u64,
    pub rejected_failed: u64,
    pub rejected_error: u64,
    pub rejected_no_verdict: u64,
    pub first_pass_good: u64,
    /// Defective parts by class.
    pub defects: BTreeMap<String, u64>,
}

/// The answer of `GET /api/v1/production`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductionSeries {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub resolution: Resolution,
    /// By start, then work order (none first); empty minutes and hours are left out.
    pub rows: Vec<ProductionRow>,
}

/// Everything the KPIs of a range are computed from.
#[derive(Debug, Clone, Copy)]
pub struct KpiInput<'a> {
    pub plan: &'a ProductionPlan,
    /// Sorted by minute (as [`super::ProductionCounts::buckets`] gives them).
    pub buckets: &'a [MinuteBucket],
    pub work_orders: &'a [WorkOrderSpan],
    /// Stops known from outside (a line-running sensor), UTC.
    pub external_stops: &'a [(DateTime<Utc>, DateTime<Utc>)],
}

/// A half-open interval of UTC milliseconds.
type Span = (i64, i64);

/// Counts and ideal time summed over buckets.
#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    ideal_s: f64,
    parts_without_pru: u64,
}

impl<'a> KpiInput<'a> {
    /// KPIs of the whole range and of each period in it.
    pub fn report(&self, range: Range, period: Period) -> KpiReport {
        let timeline = Timeline::new(self, range);
        let buckets = self.in_range(range);
        let total = timeline.kpis(&[(timeline.lo, timeline.hi)], self.tally(buckets.iter()));
        let calendar = &self.plan.calendar;
        let periods = match period {
            Period::Hour | Period::Day => {
                let (start, step) = match period {
                    Period::Hour => (calendar.hour_start(range.from_minute), 60),
                    _ => (calendar.day_start(range.from_minute), 1440),
                };
                (0..)
                    .map(|i| start + i * step)
                    .take_while(|m| *m < range.to_minute)
                    .map(|m| {
                        let (a, z) = (m.max(range.from_minute), (m + step).min(range.to_minute));
                        self.period_kpis(&timeline, buckets, (a, z), None, None)
                    })
                    .collect()
            }
            Period::Shift => calendar
                .instances(range.from_minute, range.to_minute)
                .into_iter()
                .map(|run| {
                    let a = run.start_minute.max(range.from_minute);
                    let z = run.end_minute.min(range.to_minute);
                    let name = calendar.names().get(usize::from(run.shift)).cloned();
                    self.period_kpis(&timeline, buckets, (a, z), name, None)
                })
                .collect(),
            Period::WorkOrder => self.work_order_periods(&timeline, buckets),
        };
        KpiReport {
            from: range.from(),
            to: range.to(),
            as_of: at(range.as_of_ms),
            period,
            utc_offset_minutes: calendar.offset_minutes(),
            ideal_cycle_ms: self.plan.ideal_cycle_s.map(|s| s * 1000.0),
            stop_after_s: self.plan.stop_after_s,
            total,
            periods,
        }
    }

    /// Defective parts by class in the range (of one work order if given).
    pub fn pareto(&self, range: Range, work_order: Option<&str>) -> Pareto {
        let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
        for bucket in self.in_range(range) {
            if work_order.is_some_and(|w| bucket.work_order.as_deref() != Some(w)) {
                continue;
            }
            for (class, count) in &bucket.counts.defects {
                *by_class.entry(class).or_default() += count;
            }
        }
        let defects: u64 = by_class.values().sum();
        let mut classes: Vec<(&str, u64)> = by_class.into_iter().collect();
        // Most frequent first; ties by name, so the order is stable.
        classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut cumulative = 0;
        let classes = classes
            .into_iter()
            .map(|(class, count)| {
                cumulative += count;
                ParetoClass {
                    class: class.to_owned(),
                    count,
                    share: count as f64 / defects as f64,
                    cumulative_share: cumulative as f64 / defects as f64,
                }
            })
            .collect();
        Pareto {
            from: range.from(),
            to: range.to(),
            work_order: work_order.map(str::to_owned),
            defects,
            classes,
        }
    }

    /// The counts by minute or local hour and work order.
    pub fn production(&self, range: Range, resolution: Resolution) -> ProductionSeries {
        let mut rows: BTreeMap<(i64, Option<&str>), Counts> = BTreeMap::new();
        for bucket in self.in_range(range) {
            let start = match resolution {
                Resolution::Minute => bucket.minute,
                Resolution::Hour => self.plan.calendar.hour_start(bucket.minute),
            };
            rows.entry((start, bucket.work_order.as_deref()))
                .or_default()
                .add(&bucket.counts);
        }
        ProductionSeries {
            from: range.from(),
            to: range.to(),
            resolution,
            rows: rows
                .into_iter()
                .map(|((start, work_order), c)| ProductionRow {
                    start: at(start * MINUTE_MS),
                    work_order: work_order.map(str::to_owned),
                    inspected: c.inspected,
                    passed: c.passed,
                    rejected_failed: c.rejected_failed,
                    rejected_error: c.rejected_error,
                    rejected_no_verdict: c.rejected_no_verdict,
                    first_pass_good: c.first_pass_good,
                    defects: c.defects.into_iter().collect(),
                })
                .collect(),
        }
    }

    /// The buckets of the range's minutes.
    fn in_range(&self, range: Range) -> &'a [MinuteBucket] {
        minutes(self.buckets, range.from_minute, range.to_minute)
    }

    /// The KPIs of minutes `[a, z)`.
    fn period_kpis(
        &self,
        timeline: &Timeline,
        buckets: &[MinuteBucket],
        (a, z): (i64, i64),
        shift: Option<String>,
        work_order: Option<String>,
    ) -> PeriodKpis {
        let span = (
            (a * MINUTE_MS).clamp(timeline.lo, timeline.hi),
            (z * MINUTE_MS).clamp(timeline.lo, timeline.hi),
        );
        PeriodKpis {
            from: at(a * MINUTE_MS),
            to: at(z * MINUTE_MS),
            shift,
            work_order,
            kpis: timeline.kpis(&[span], self.tally(minutes(buckets, a, z).iter())),
        }
    }

    /// One row per work order that ran in the range or made parts in it, in the order they
    /// started; then the parts of no work order, over the time no work order ran.
    ///
    /// An order's time is the time it was the running order as the store attributes parts
    /// (`WorkOrderBook::running_at`): at any moment, of the orders started and not yet
    /// completed, the one started last. Orders' times never overlap, so an order started while
    /// another still ran does not charge that other with its time, and an order interrupted by
    /// one started and completed while it ran has two stretches, before and after.
    fn work_order_periods(&self, timeline: &Timeline, buckets: &[MinuteBucket]) -> Vec<PeriodKpis> {
        let mut tallies: BTreeMap<Option<&str>, Vec<&MinuteBucket>> = BTreeMap::new();
        for bucket in buckets {
            tallies
                .entry(bucket.work_order.as_deref())
                .or_default()
                .push(bucket);
        }
        let (lo, hi) = (timeline.lo, timeline.hi);
        // When each order ran, within the range.
        let mut rows: Vec<(String, Vec<Span>)> = Vec::new();
        let running = running_spans(self.work_orders, (lo, hi));
        for (order, spans) in self.work_orders.iter().zip(running) {
            let Some(started) = order.started_at else {
                continue;
            };
            if !spans.is_empty() {
                rows.push((order.id.clone(), spans));
            } else if tallies.contains_key(&Some(order.id.as_str())) {
                // Parts, but none of the range's time was this order's (records from before
                // a restart, or another order's start hid it): its parts, with no time, at
                // its start.
                let start = started.timestamp_millis().max(lo).min(hi);
                rows.push((order.id.clone(), vec![(start, start)]));
            }
        }
        // Orders with parts here but no known start: the minutes of their parts.
        for (work_order, parts) in &tallies {
            if let Some(id) = work_order
                && !rows.iter().any(|(known, _)| known == id)
            {
                let first = parts.first().map_or(lo, |b| b.minute * MINUTE_MS);
                let last = parts.last().map_or(lo, |b| (b.minute + 1) * MINUTE_MS);
                rows.push((
                    (*id).to_owned(),
                    vec![(first.max(lo), last.min(hi).max(lo))],
                ));
            }
        }
        rows.sort_by_key(|(id, spans)| (spans.first().map_or(lo, |s| s.0), id.clone()));
        let ran = normalise(rows.iter().flat_map(|(_, s)| s.iter().copied()).collect());
        let mut periods: Vec<PeriodKpis> = rows
            .into_iter()
            .map(|(id, spans)| {
                let parts = tallies.get(&Some(id.as_str()));
                let tally = self.tally(parts.into_iter().flatten().copied());
                PeriodKpis {
                    from: at(spans.first().map_or(lo, |s| s.0)),
                    to: at(spans.last().map_or(lo, |s| s.1)),
                    shift: None,
                    work_order: Some(id),
                    kpis: timeline.kpis(&spans, tally),
                }
            })
            .collect();
        let idle = complement((lo, hi), &ran);
        let unattributed = tallies.get(&None);
        let kpis = timeline.kpis(
            &idle,
            self.tally(unattributed.into_iter().flatten().copied()),
        );
        if kpis.produced_quantity > 0 || kpis.planned_busy_time_s > 0.0 {
            periods.push(PeriodKpis {
                from: at(lo),
                to: at(hi),
                shift: None,
                work_order: None,
                kpis,
            });
        }
        periods
    }

    /// Sums buckets, with their ideal production time.
    fn tally<'b>(&self, buckets: impl Iterator<Item = &'b MinuteBucket>) -> Tally {
        let mut tally = Tally::default();
        // Few work orders, many buckets: look each order's PRU up once.
        let mut last: Option<(Option<&str>, Option<f64>)> = None;
        for bucket in buckets {
            let work_order = bucket.work_order.as_deref();
            let pru = match last {
                Some((w, pru)) if w == work_order => pru,
                _ => {
                    let pru = work_order
                        .and_then(|id| self.work_orders.iter().find(|o| o.id == id))
                        .and_then(|o| o.ideal_cycle_s)
                        .or(self.plan.ideal_cycle_s);
                    last = Some((work_order, pru));
                    pru
                }
            };
            match pru {
                Some(pru) => tally.ideal_s += pru * bucket.counts.inspected as f64,
                None => tally.parts_without_pru += bucket.counts.inspected,
            }
            tally.counts.add(&bucket.counts);
        }
        tally
    }
}

/// When each of `orders` was the running one within `[lo, hi)`, by index: sorted, disjoint
/// stretches, disjoint from every other order's. As `WorkOrderBook::running_at` in the record
/// store decides which order a part belongs to: at any moment the order running is the one that
/// had started by then and not completed by then, the latest start winning (of two started at
/// the same moment, the later in the list, as the store's `max_by_key` picks). An order never
/// started has no time here.
fn running_spans(orders: &[WorkOrderSpan], (lo, hi): Span) -> Vec<Vec<Span>> {
    // Each started order's whole run `[start, completion)`, not cut to the range: which order
    // wins is decided by the true start, also for orders started before the range.
    let runs: Vec<(usize, i64, i64)> = orders
        .iter()
        .enumerate()
        .filter_map(|(i, order)| {
            let start = order.started_at?.timestamp_millis();
            let end = order
                .completed_at
                .map_or(i64::MAX, |c| c.timestamp_millis());
            Some((i, start, end))
        })
        // Only orders that ran at some moment of the range can own any of it.
        .filter(|(_, start, end)| start < end && *start < hi && *end > lo)
        .collect();
    // Between two consecutive starts or completions, the running order does not change.
    let mut cuts: Vec<i64> = vec![lo, hi];
    for (_, start, end) in &runs {
        cuts.extend([*start, *end].into_iter().filter(|t| lo < *t && *t < hi));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut spans: Vec<Vec<Span>> = vec![Vec::new(); orders.len()];
    for piece in cuts.windows(2) {
        let (a, z) = (piece[0], piece[1]);
        let owner = runs
            .iter()
            .filter(|(_, start, end)| *start <= a && a < *end)
            .max_by_key(|(i, start, _)| (*start, *i))
            .map(|(i, _, _)| *i);
        let Some(owner) = owner.and_then(|i| spans.get_mut(i)) else {
            continue;
        };
        match owner.last_mut() {
            // The same order on both sides of a cut (another order's start or completion
            // that did not change the running one): one stretch.
            Some((_, end)) if *end == a => *end = z,
            _ => owner.push((a, z)),
        }
    }
    spans
}

/// The range's planned time, down time and production outside planned time, computed once
/// for every period.
struct Timeline {
    lo: i64,
    hi: i64,
    /// Planned busy time of the shift calendar, sorted and disjoint.
    planned: Vec<Span>,
    /// Down time inside planned time, sorted and disjoint.
    down: Vec<Span>,
    /// Time outside planned time in which the line produced, sorted and disjoint. It counts in
    /// PBT and APT as if it had been planned (see the module's doc).
    unplanned: Vec<Span>,
}

impl Timeline {
    fn new(input: &KpiInput, range: Range) -> Timeline {
        let (lo, hi) = (range.from_minute * MINUTE_MS, range.end_ms());
        let planned: Vec<Span> = input
            .plan
            .calendar
            .planned(range.from_minute, range.to_minute)
            .into_iter()
            .map(|(a, z)| ((a * MINUTE_MS).max(lo), (z * MINUTE_MS).min(hi)))
            .filter(|(a, z)| a < z)
            .collect();
        let minute_parts =
            parts_by_minute(minutes(input.buckets, range.from_minute, range.to_minute));
        // Gaps between parts, the station's parts of all work orders together. The range
        // starts and ends as if a part had just passed: a stop running across its start
        // counts from the start.
        let stop_after_ms = (input.plan.stop_after_s * 1000.0).round() as i64;
        let mut stops = Vec::new();
        let gap = |a: i64, b: i64, stops: &mut Vec<Span>| {
            let (a, b) = (a.max(lo), b.min(hi));
            if b - a >= stop_after_ms && measure_within(&planned, a, b) >= stop_after_ms {
                stops.push((a, b));
            }
        };
        let mut previous = lo;
        for minute in &minute_parts {
            gap(previous, minute.first, &mut stops);
            previous = previous.max(minute.last);
        }
        gap(previous, hi, &mut stops);
        let external = normalise(
            input
                .external_stops
                .iter()
                .map(|(a, z)| (a.timestamp_millis().max(lo), z.timestamp_millis().min(hi)))
                .collect(),
        );
        stops.extend(external.iter().copied());
        let down = intersect(&normalise(stops), &planned);
        // Production outside planned time: the line's runs of parts, less the planned time
        // (measured above) and the time the running sensor says the line stood.
        let planned_or_stopped = normalise(planned.iter().chain(&external).copied().collect());
        let unplanned = intersect(
            &production_runs(&minute_parts, stop_after_ms, (lo, hi)),
            &complement((lo, hi), &planned_or_stopped),
        );
        Timeline {
            lo,
            hi,
            planned,
            down,
            unplanned,
        }
    }

    /// The KPIs of the time `spans` (sorted, disjoint) and the parts in `tally`.
    fn kpis(&self, spans: &[Span], tally: Tally) -> Kpis {
        let within = |list: &[Span]| -> i64 {
            spans
                .iter()
                .map(|(a, z)| measure_within(list, *a, *z))
                .sum()
        };
        // Production outside planned time is busy time, as if it had been planned: PBT and
        // APT both hold it (see the module's doc).
        let pbt_ms = within(&self.planned) + within(&self.unplanned);
        compute(pbt_ms, within(&self.down), &tally)
    }
}

/// The parts of one minute, of all work orders together.
#[derive(Debug, Clone, Copy)]
struct MinuteParts {
    /// The minute, since the epoch.
    minute: i64,
    /// Capture time of the first and the last part, UTC milliseconds.
    first: i64,
    last: i64,
    count: u64,
}

/// The minutes with parts of a minute-sorted slice, in order.
fn parts_by_minute(buckets: &[MinuteBucket]) -> Vec<MinuteParts> {
    let mut out: Vec<MinuteParts> = Vec::new();
    for bucket in buckets.iter().filter(|b| b.counts.inspected > 0) {
        let base = bucket.minute * MINUTE_MS;
        let (first, last) = (
            base + i64::from(bucket.counts.first_ms),
            base + i64::from(bucket.counts.last_ms),
        );
        match out.last_mut() {
            // Another work order's parts of the same minute.
            Some(parts) if parts.minute == bucket.minute => {
                parts.first = parts.first.min(first);
                parts.last = parts.last.max(last);
                parts.count += bucket.counts.inspected;
            }
            _ => {
                out.push(MinuteParts {
                    minute: bucket.minute,
                    first,
                    last,
                    count: bucket.counts.inspected,
                });
            }
        }
    }
    out
}

/// When the line produced, within `[lo, hi)`: runs of parts less than `stop_after_ms` apart
/// (as the stops are measured, a minute's parts are one run), each from its first part to its
/// last and one cycle more. The cycle is the run's mean spacing, at most `stop_after_ms`: n
/// parts take n cycles, and the time from the first to the last holds n − 1 of them, so
/// without it a run at exactly the ideal rate would measure effectiveness above 1. A lone part
/// has no spacing and so no time, as a part between two stops in planned time has none.
fn production_runs(minute_parts: &[MinuteParts], stop_after_ms: i64, (lo, hi): Span) -> Vec<Span> {
    let busy = |run: MinuteParts| -> Span {
        let spacings = i64::try_from(run.count.saturating_sub(1)).unwrap_or(i64::MAX);
        let cycle = if spacings > 0 {
            ((run.last - run.first) / spacings).clamp(0, stop_after_ms.max(0))
        } else {
            0
        };
        (run.first, run.last + cycle)
    };
    let mut runs: Vec<Span> = Vec::new();
    let mut run: Option<MinuteParts> = None;
    for minute in minute_parts {
        match &mut run {
            Some(current) if minute.first - current.last < stop_after_ms => {
                current.last = current.last.max(minute.last);
                current.count += minute.count;
            }
            _ => {
                if let Some(done) = run.replace(*minute) {
                    runs.push(busy(done));
                }
            }
        }
    }
    runs.extend(run.map(busy));
    normalise(
        runs.into_iter()
            .map(|(a, z)| (a.max(lo), z.min(hi)))
            .collect(),
    )
}

/// The ISO 22400-2 formulas, from raw milliseconds and counts.
fn compute(pbt_ms: i64, down_ms: i64, tally: &Tally) -> Kpis {
    let c = &tally.counts;
    let pbt = pbt_ms as f64 / 1000.0;
    let adot = down_ms as f64 / 1000.0;
    let apt = (pbt_ms - down_ms) as f64 / 1000.0;
    let pq = c.inspected;
    let sq = c.rejected();
    let gq = pq.saturating_sub(sq);
    let mut warnings = Vec::new();
    let mut warn = |code, message: String| warnings.push(KpiWarning { code, message });
    let availability = if pbt_ms > 0 {
        Some(apt / pbt)
    } else {
        warn(
            WarningCode::NoPlannedTime,
            "no planned busy time in this period (shift calendar)".into(),
        );
        None
    };
    let ideal = if tally.parts_without_pru == 0 {
        Some(tally.ideal_s)
    } else {
        warn(
            WarningCode::NoIdealCycleTime,
            format!(
                "{} parts have no ideal cycle time: set production.ideal_cycle_ms, or ideal_cycle_time_s on their work order",
                tally.parts_without_pru
            ),
        );
        None
    };
    let effectiveness = match ideal {
        Some(_) if pbt_ms > 0 && apt <= 0.0 => {
            warn(
                WarningCode::NoProductionTime,
                "all planned time was down: no production time to measure effectiveness in".into(),
            );
            None
        }
        Some(ideal) if apt > 0.0 => Some(ideal / apt),
        _ => None,
    };
    if let Some(e) = effectiveness
        && e > 1.0
    {
        warn(
            WarningCode::EffectivenessAboveOne,
            format!(
                "effectiveness {e:.4} is above 1: the ideal cycle time is longer than the line's real one (master data)"
            ),
        );
    }
    let per_part = |n: u64| (pq > 0).then(|| n as f64 / pq as f64);
    if pq == 0 {
        warn(
            WarningCode::NoParts,
            "no parts in this period: quality ratio, first-pass yield and scrap ratio are undefined"
                .into(),
        );
    }
    let quality_ratio = per_part(gq);
    let oee = match (availability, effectiveness, quality_ratio) {
        (Some(a), Some(e), Some(q)) => Some(a * e * q),
        _ => None,
    };
    Kpis {
        planned_busy_time_s: pbt,
        down_time_s: adot,
        actual_production_time_s: apt,
        ideal_production_time_s: ideal,
        produced_quantity: pq,
        good_quantity: gq,
        scrap_quantity: sq,
        rejected_failed: c.rejected_failed,
        rejected_error: c.rejected_error,
        rejected_no_verdict: c.rejected_no_verdict,
        first_pass_good: c.first_pass_good,
        availability,
        effectiveness,
        quality_ratio,
        oee,
        first_pass_yield: per_part(c.first_pass_good),
        scrap_ratio: per_part(sq),
        warnings,
    }
}

/// The buckets of minutes `[from, to)` of a minute-sorted slice.
fn minutes(buckets: &[MinuteBucket], from: i64, to: i64) -> &[MinuteBucket] {
    let a = buckets.partition_point(|b| b.minute < from);
    let z = buckets.partition_point(|b| b.minute < to).max(a);
    &buckets[a..z]
}

/// Sorted, merged, without empty spans.
fn normalise(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|(a, z)| a < z);
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for (a, z) in spans {
        match merged.last_mut() {
            Some((_, end)) if a <= *end => *end = (*end).max(z),
            _ => merged.push((a, z)),
        }
    }
    merged
}

/// The intersection of two sorted, disjoint span lists.
fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let (start, end) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `within` less a sorted, disjoint span list.
fn complement((lo, hi): Span, spans: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut at = lo;
    for (a, z) in spans {
        if *a > at {
            out.push((at, (*a).min(hi)));
        }
        at = at.max(*z);
    }
    if at < hi {
        out.push((at, hi));
    }
    out.retain(|(a, z)| a < z);
    out
}

/// The length of a sorted, disjoint span list inside `[lo, hi)`.
fn measure_within(spans: &[Span], lo: i64, hi: i64) -> i64 {
    let first = spans.partition_point(|(_, z)| *z <= lo);
    spans[first..]
        .iter()
        .take_while(|(a, _)| *a < hi)
        .map(|(a, z)| (*z).min(hi) - (*a).max(lo))
        .filter(|n| *n > 0)
        .sum()
}

/// A UTC time from epoch milliseconds (clamped into chrono's range).
fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn seconds<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(rounded(*value, 3))
}

fn optional_seconds<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_f64(rounded(*v, 3)),
        None => s.serialize_none(),
    }
}

fn ratio<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_f64(rounded(*v, 4)),
        None => s.serialize_none(),
    }
}

fn plain_ratio<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(rounded(*value, 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyse::shifts::{ShiftSection, Weekday, test_early_shift};

    fn time(text: &str) -> DateTime<Utc> {
        text.parse().expect("time")
    }

    fn minute(text: &str) -> i64 {
        time(text).timestamp().div_euclid(60)
    }

    /// `n` parts spread evenly over the minute (the first at :00, the last at 60 − 60/n s).
    fn bucket(minute: i64, work_order: Option<&str>, n: u64, rejected: u64) -> MinuteBucket {
        MinuteBucket {
            minute,
            work_order: work_order.map(str::to_owned),
            counts: Counts {
                inspected: n,
                passed: n - rejected,
                rejected_failed: rejected,
                first_pass_good: n - rejected,
                first_ms: 0,
                last_ms: (60_000 - 60_000 / n) as u16,
                defects: if rejected > 0 {
                    vec![("scratch".into(), rejected)]
                } else {
                    Vec::new()
                },
                ..Counts::default()
            },
        }
    }

    /// Buckets of every minute of `[from, to)`.
    fn run(
        from: &str,
        to: &str,
        work_order: Option<&str>,
        n: u64,
        rejected: u64,
    ) -> Vec<MinuteBucket> {
        (minute(from)..minute(to))
            .map(|m| bucket(m, work_order, n, rejected))
            .collect()
    }

    fn plan(shifts: &[ShiftSection], offset: i32, ideal_cycle_s: Option<f64>) -> ProductionPlan {
        ProductionPlan {
            calendar: Arc::new(ShiftCalendar::build(shifts, offset).expect("calendar")),
            ideal_cycle_s,
            stop_after_s: 5.0,
            running_tag: None,
        }
    }

    fn input<'a>(plan: &'a ProductionPlan, buckets: &'a [MinuteBucket]) -> KpiInput<'a> {
        KpiInput {
            plan,
            buckets,
            work_orders: &[],
            external_stops: &[],
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    fn codes(kpis: &Kpis) -> Vec<WarningCode> {
        kpis.warnings.iter().map(|w| w.code).collect()
    }

    /// The hand-worked example. Monday 2024-05-06, UTC, one shift:
    ///
    /// - shift "early" 06:00–14:00 (8 h = 28 800 s) with a planned break 10:00–10:30 (1 800 s):
    ///   PBT = 28 800 − 1 800 = **27 000 s**.
    /// - The line makes 100 parts a minute (one every 0.6 s, the first at :00.0, the last at
    ///   :59.4) in every minute of the shift except two stops, 07:00–07:30 and 12:00–12:15, and
    ///   the break. Production minutes: 60 + 150 + 90 + 105 = 405, so PQ = **40 500**.
    /// - A stop lasts from the last part before it to the first part after: 06:59:59.4 to
    ///   07:30:00.0 = 1 800.6 s, and 11:59:59.4 to 12:15:00.0 = 900.6 s; stop_after_s = 5.
    ///   (The 0.6 s before the break and before the shift's end are shorter than 5 s: no stop.)
    ///   ADOT = **2 701.2 s**, APT = 27 000 − 2 701.2 = **24 298.8 s**.
    /// - One part a minute is rejected (failed): SQ = **405**, GQ = 40 500 − 405 = **40 095**.
    ///   In 45 minutes one passed part was later labelled defective: GP = 40 095 − 45 =
    ///   **40 050**.
    /// - Ideal cycle time PRU = 0.5 s.
    ///
    /// - Availability = APT / PBT = 24 298.8 / 27 000 = 0.899 956 → **0.9000**
    /// - Effectiveness = PRU × PQ / APT = 0.5 × 40 500 / 24 298.8 = 20 250 / 24 298.8
    ///   = 0.833 374 → **0.8334**
    /// - Quality ratio = GQ / PQ = 40 095 / 40 500 = **0.9900**
    /// - OEE = A × E × QR = 0.899 956 × 0.833 374 × 0.99 = 0.742 500 → **0.7425**
    ///   (check: the product cancels to PRU × GQ / PBT = 0.5 × 40 095 / 27 000 = 0.7425)
    /// - FPY = GP / IP = 40 050 / 40 500 = 0.988 889 → **0.9889**
    /// - Scrap ratio = SQ / PQ = 405 / 40 500 = **0.0100**
    #[test]
    fn the_hand_worked_oee_example() {
        let plan = plan(&[test_early_shift()], 0, Some(0.5));
        let mut buckets: Vec<MinuteBucket> = [
            ("06:00", "07:00"),
            ("07:30", "10:00"),
            ("10:30", "12:00"),
            ("12:15", "14:00"),
        ]
        .iter()
        .flat_map(|(a, z)| {
            run(
                &format!("2024-05-06T{a}:00Z"),
                &format!("2024-05-06T{z}:00Z"),
                None,
                100,
                1,
            )
        })
        .collect();
        assert_eq!(buckets.len(), 405);
        for b in buckets.iter_mut().take(45) {
            b.counts.first_pass_good -= 1;
            b.counts.defects.insert(0, ("crack".into(), 1));
        }
        let range = Range::new(
            time("2024-05-06T00:00:00Z"),
            time("2024-05-07T00:00:00Z"),
            time("2024-05-07T00:00:00Z"),
        );
        let report = input(&plan, &buckets).report(range, Period::Shift);
        assert_eq!(report.periods.len(), 1);
        let shift = &report.periods[0];
        assert_eq!(shift.shift.as_deref(), Some("early"));
        assert_eq!(
            (shift.from, shift.to),
            (time("2024-05-06T06:00:00Z"), time("2024-05-06T14:00:00Z"))
        );
        for k in [&shift.kpis, &report.total] {
            assert_eq!(k.planned_busy_time_s, 27_000.0);
            assert!((k.down_time_s - 2_701.2).abs() < 1e-9, "{}", k.down_time_s);
            assert!((k.actual_production_time_s - 24_298.8).abs() < 1e-9);
            assert_eq!(
                (
                    k.produced_quantity,
                    k.good_quantity,
                    k.scrap_quantity,
                    k.first_pass_good
                ),
                (40_500, 40_095, 405, 40_050)
            );
            assert!(close(k.availability, 24_298.8 / 27_000.0));
            assert!(close(k.effectiveness, 20_250.0 / 24_298.8));
            assert!(close(k.quality_ratio, 0.99));
            assert!(close(k.oee, 0.7425));
            assert!(close(k.first_pass_yield, 40_050.0 / 40_500.0));
            assert!(close(k.scrap_ratio, 0.01));
            assert!(k.warnings.is_empty(), "{:?}", k.warnings);
        }
        // Presented to the 4th decimal.
        let json = serde_json::to_value(&report.total).expect("json");
        for (field, value) in [
            ("availability", 0.9),
            ("effectiveness", 0.8334),
            ("quality_ratio", 0.99),
            ("oee", 0.7425),
            ("first_pass_yield", 0.9889),
            ("scrap_ratio", 0.01),
            ("down_time_s", 2701.2),
        ] {
            assert_eq!(json[field], value, "{field}");
        }
        // By the hour, the 07:00 stop is split at the hour: 0.6 s in 06:00–07:00, 1 800 s after.
        let hours = input(&plan, &buckets).report(range, Period::Hour);
        assert_eq!(hours.periods.len(), 24);
        assert!((hours.periods[6].kpis.down_time_s - 0.6).abs() < 1e-9);
        assert_eq!(hours.periods[7].kpis.down_time_s, 1_800.0);
        assert_eq!(hours.periods[10].kpis.planned_busy_time_s, 1_800.0);
        assert_eq!(
            codes(&hours.periods[3].kpis),
            [WarningCode::NoPlannedTime, WarningCode::NoParts]
        );
        // The Pareto of the same data.
        let pareto = input(&plan, &buckets).pareto(range, None);
        assert_eq!(pareto.defects, 450);
        let classes: Vec<_> = pareto
            .classes
            .iter()
            .map(|c| (c.class.as_str(), c.count, c.share, c.cumulative_share))
            .collect();
        assert_eq!(
            classes,
            [("scratch", 405, 0.9, 0.9), ("crack", 45, 0.1, 1.0)]
        );
    }

    #[test]
    fn a_night_shift_across_midnight_is_one_run_and_splits_between_local_days() {
        let night = ShiftSection {
            name: "night".into(),
            start: "22:00".into(),
            end: "06:00".into(),
            days: vec![Weekday::Mon],
            breaks: Vec::new(),
        };
        // Local time is UTC+1: the shift runs Monday 21:00 to Tuesday 05:00 UTC.
        let plan = plan(&[night], 60, Some(1.0));
        let buckets = run("2024-05-06T21:00:00Z", "2024-05-07T05:00:00Z", None, 60, 0);
        // Monday 00:00 local to Wednesday 00:00 local.
        let range = Range::new(
            time("2024-05-05T23:00:00Z"),
            time("2024-05-07T23:00:00Z"),
            time("2024-05-08T00:00:00Z"),
        );
        let shifts = input(&plan, &buckets).report(range, Period::Shift);
        assert_eq!(shifts.periods.len(), 1);
        let run = &shifts.periods[0];
        assert_eq!(
            (run.from, run.to),
            (time("2024-05-06T21:00:00Z"), time("2024-05-07T05:00:00Z"))
        );
        assert_eq!(run.kpis.planned_busy_time_s, 8.0 * 3600.0);
        // One part a second: 1 s between minutes, never a stop.
        assert_eq!(run.kpis.down_time_s, 0.0);
        assert!(close(run.kpis.availability, 1.0));
        assert!(close(run.kpis.effectiveness, 1.0));
        assert_eq!(run.kpis.produced_quantity, 8 * 3600);
        let days = input(&plan, &buckets).report(range, Period::Day);
        let by_day: Vec<_> = days
            .periods
            .iter()
            .map(|p| (p.from, p.kpis.planned_busy_time_s, p.kpis.produced_quantity))
            .collect();
        assert_eq!(
            by_day,
            [
                (time("2024-05-05T23:00:00Z"), 2.0 * 3600.0, 2 * 3600),
                (time("2024-05-06T23:00:00Z"), 6.0 * 3600.0, 6 * 3600),
            ]
        );
        // Asked from 02:00 local, the run is cut at the range: its first half is not counted.
        let late = Range::new(
            time("2024-05-07T01:00:00Z"),
            time("2024-05-07T23:00:00Z"),
            time("2024-05-08T00:00:00Z"),
        );
        let cut = input(&plan, &buckets).report(late, Period::Shift);
        assert_eq!(cut.periods[0].from, time("2024-05-07T01:00:00Z"));
        assert_eq!(cut.periods[0].kpis.planned_busy_time_s, 4.0 * 3600.0);
    }

    #[test]
    fn ranges_widen_to_minutes_and_time_after_as_of_is_not_counted() {
        let plan = plan(&[], 0, Some(1.0));
        // Parts 06:00–07:00 only; asked at 08:00 for 06:00:30–14:00.
        let buckets = run("2024-05-06T06:00:00Z", "2024-05-06T07:00:00Z", None, 60, 0);
        let range = Range::new(
            time("2024-05-06T06:00:30Z"),
            time("2024-05-06T13:59:01Z"),
            time("2024-05-06T08:00:00Z"),
        );
        let report = input(&plan, &buckets).report(range, Period::Hour);
        assert_eq!(
            (report.from, report.to),
            (time("2024-05-06T06:00:00Z"), time("2024-05-06T14:00:00Z"))
        );
        let total = &report.total;
        assert_eq!(total.planned_busy_time_s, 7_200.0);
        // From the last part, 06:59:59, until as_of.
        assert_eq!(total.down_time_s, 3_601.0);
        assert!(close(total.availability, 3_599.0 / 7_200.0));
        assert_eq!(report.periods.len(), 8);
        assert_eq!(report.periods[1].kpis.down_time_s, 3_600.0);
        assert_eq!(
            codes(&report.periods[1].kpis),
            [WarningCode::NoProductionTime, WarningCode::NoParts]
        );
        assert_eq!(report.periods[1].kpis.availability, Some(0.0));
        assert_eq!(report.periods[1].kpis.oee, None);
        assert_eq!(
            codes(&report.periods[2].kpis),
            [WarningCode::NoPlannedTime, WarningCode::NoParts]
        );
        // A range with no parts at all: all planned time down.
        let empty = input(&plan, &[]).report(range, Period::Hour);
        assert_eq!(empty.total.down_time_s, empty.total.planned_busy_time_s);
    }

    #[test]
    fn effectiveness_above_one_is_flagged_not_clamped_and_missing_pru_is_said() {
        let buckets = run("2024-05-06T06:00:00Z", "2024-05-06T07:00:00Z", None, 60, 6);
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T07:00:00Z"),
            time("2024-05-06T09:00:00Z"),
        );
        // An ideal cycle of 1.5 s, where the line makes a part a second.
        let slow = plan(&[], 0, Some(1.5));
        let k = input(&slow, &buckets).report(range, Period::Hour).total;
        assert!(close(k.effectiveness, 1.5));
        assert_eq!(codes(&k), [WarningCode::EffectivenessAboveOne]);
        assert!(k.oee.is_some_and(|oee| oee > 1.0));
        // No ideal cycle time: effectiveness and OEE null, the rest computed.
        let unknown = plan(&[], 0, None);
        let k = input(&unknown, &buckets).report(range, Period::Hour).total;
        assert_eq!(
            (k.effectiveness, k.oee, k.ideal_production_time_s),
            (None, None, None)
        );
        assert_eq!(codes(&k), [WarningCode::NoIdealCycleTime]);
        assert!(close(k.quality_ratio, 0.9));
        // A work order's ideal cycle time counts for its parts.
        let of_order: Vec<_> = buckets
            .iter()
            .cloned()
            .map(|b| MinuteBucket {
                work_order: Some("WO-1".into()),
                ..b
            })
            .collect();
        let orders = [WorkOrderSpan {
            id: "WO-1".into(),
            started_at: None,
            completed_at: None,
            ideal_cycle_s: Some(0.5),
        }];
        let k = KpiInput {
            work_orders: &orders,
            ..input(&unknown, &of_order)
        }
        .report(range, Period::Hour)
        .total;
        assert!(close(k.effectiveness, 0.5));
    }

    /// A work order as the KPIs see it, started and completed at the times given.
    fn order(id: &str, started: Option<&str>, completed: Option<&str>) -> WorkOrderSpan {
        WorkOrderSpan {
            id: id.into(),
            started_at: started.map(time),
            completed_at: completed.map(time),
            ideal_cycle_s: None,
        }
    }

    /// The report by work order of `orders` over `range`, the other inputs from `input`.
    fn by_work_order(input: KpiInput<'_>, orders: &[WorkOrderSpan], range: Range) -> KpiReport {
        KpiInput {
            work_orders: orders,
            ..input
        }
        .report(range, Period::WorkOrder)
    }

    #[test]
    fn work_orders_get_their_own_time_and_parts_and_unattributed_parts_the_rest() {
        let plan = plan(&[], 0, Some(1.0));
        let mut buckets = run(
            "2024-05-06T06:00:00Z",
            "2024-05-06T07:00:00Z",
            Some("WO-1"),
            60,
            0,
        );
        buckets.extend(run(
            "2024-05-06T07:00:00Z",
            "2024-05-06T07:30:00Z",
            None,
            60,
            6,
        ));
        buckets.extend(run(
            "2024-05-06T07:30:00Z",
            "2024-05-06T08:00:00Z",
            Some("WO-2"),
            30,
            3,
        ));
        let orders = [
            WorkOrderSpan {
                id: "WO-1".into(),
                started_at: Some(time("2024-05-06T05:00:00Z")),
                completed_at: Some(time("2024-05-06T07:00:00Z")),
                ideal_cycle_s: None,
            },
            WorkOrderSpan {
                id: "WO-2".into(),
                started_at: Some(time("2024-05-06T07:30:00Z")),
                completed_at: None,
                ideal_cycle_s: Some(2.0),
            },
            WorkOrderSpan {
                id: "WO-never-started".into(),
                started_at: None,
                completed_at: None,
                ideal_cycle_s: None,
            },
        ];
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T08:00:00Z"),
            time("2024-05-06T09:00:00Z"),
        );
        let report = KpiInput {
            work_orders: &orders,
            ..input(&plan, &buckets)
        }
        .report(range, Period::WorkOrder);
        let rows: Vec<_> = report
            .periods
            .iter()
            .map(|p| {
                (
                    p.work_order.as_deref(),
                    p.from,
                    p.kpis.planned_busy_time_s,
                    p.kpis.produced_quantity,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (Some("WO-1"), time("2024-05-06T06:00:00Z"), 3_600.0, 3_600),
                (Some("WO-2"), time("2024-05-06T07:30:00Z"), 1_800.0, 900),
                (None, time("2024-05-06T06:00:00Z"), 1_800.0, 1_800),
            ]
        );
        // WO-2 at half the ideal rate: effectiveness 2 s × 900 / 1 800 s (less the 2 s gaps
        // between its minutes, which are under stop_after_s).
        assert!(close(report.periods[1].kpis.effectiveness, 1.0));
        let pareto = KpiInput {
            work_orders: &orders,
            ..input(&plan, &buckets)
        }
        .pareto(range, Some("WO-2"));
        assert_eq!((pareto.defects, pareto.classes.len()), (90, 1));
        assert_eq!(pareto.work_order.as_deref(), Some("WO-2"));
        let none = input(&plan, &buckets).pareto(range, Some("WO-1"));
        assert_eq!((none.defects, none.classes.len()), (0, 0));
    }

    /// The MES started WO-B while WO-A still ran, completed WO-B, and WO-A went on: the store
    /// gave each part to the order started last, and the KPIs give each order the same time.
    #[test]
    fn an_order_started_over_another_takes_the_time_it_ran_and_the_other_keeps_the_rest() {
        let plan = plan(&[], 0, Some(1.0));
        let mut buckets = run(
            "2024-05-06T06:00:00Z",
            "2024-05-06T07:00:00Z",
            Some("WO-A"),
            60,
            0,
        );
        buckets.extend(run(
            "2024-05-06T07:00:00Z",
            "2024-05-06T07:30:00Z",
            Some("WO-B"),
            60,
            0,
        ));
        buckets.extend(run(
            "2024-05-06T07:30:00Z",
            "2024-05-06T08:00:00Z",
            Some("WO-A"),
            60,
            0,
        ));
        let orders = [
            // Started before the range: it still loses to WO-B, started later.
            order(
                "WO-A",
                Some("2024-05-06T05:30:00Z"),
                Some("2024-05-06T08:00:00Z"),
            ),
            order(
                "WO-B",
                Some("2024-05-06T07:00:00Z"),
                Some("2024-05-06T07:30:00Z"),
            ),
        ];
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T08:00:00Z"),
            time("2024-05-06T09:00:00Z"),
        );
        let report = by_work_order(input(&plan, &buckets), &orders, range);
        let rows: Vec<_> = report
            .periods
            .iter()
            .map(|p| {
                (
                    p.work_order.as_deref(),
                    p.from,
                    p.to,
                    p.kpis.planned_busy_time_s,
                    p.kpis.produced_quantity,
                )
            })
            .collect();
        // WO-A: 06:00–07:00 and 07:30–08:00, not the half hour WO-B ran; no idle row (every
        // minute was some order's, and every part too).
        assert_eq!(
            rows,
            [
                (
                    Some("WO-A"),
                    time("2024-05-06T06:00:00Z"),
                    time("2024-05-06T08:00:00Z"),
                    5_400.0,
                    5_400
                ),
                (
                    Some("WO-B"),
                    time("2024-05-06T07:00:00Z"),
                    time("2024-05-06T07:30:00Z"),
                    1_800.0,
                    1_800
                ),
            ]
        );
        // A part a second at an ideal second a part: both orders ran at the ideal rate.
        for row in &report.periods {
            assert!(close(row.kpis.availability, 1.0), "{:?}", row.work_order);
            assert!(close(row.kpis.effectiveness, 1.0), "{:?}", row.work_order);
        }
        // The orders' times add up to the range's, counted once.
        let by_orders: f64 = report
            .periods
            .iter()
            .map(|p| p.kpis.planned_busy_time_s)
            .sum();
        assert_eq!(by_orders, report.total.planned_busy_time_s);
        assert_eq!(report.total.planned_busy_time_s, 7_200.0);
    }

    #[test]
    fn two_orders_started_at_once_give_the_time_to_the_later_in_the_list() {
        let plan = plan(&[], 0, Some(1.0));
        let buckets = run(
            "2024-05-06T06:00:00Z",
            "2024-05-06T07:00:00Z",
            Some("WO-2"),
            60,
            0,
        );
        let started = Some("2024-05-06T06:00:00Z");
        let orders = [order("WO-1", started, None), order("WO-2", started, None)];
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T07:00:00Z"),
            time("2024-05-06T07:00:00Z"),
        );
        let report = by_work_order(input(&plan, &buckets), &orders, range);
        let rows: Vec<_> = report
            .periods
            .iter()
            .map(|p| {
                (
                    p.work_order.as_deref(),
                    p.kpis.planned_busy_time_s,
                    p.kpis.produced_quantity,
                )
            })
            .collect();
        // As the store's `running_at` (`max_by_key` keeps the last of equal starts): WO-1 never
        // ran, has no parts, and so no row.
        assert_eq!(rows, [(Some("WO-2"), 3_600.0, 3_600)]);
    }

    /// A shift plan that ends at 16:00; the line also runs 17:00–18:00 at its ideal rate. The
    /// hour after the shift is unplanned production: its parts count (with their scrap), and
    /// so does its time, in PBT and APT alike.
    #[test]
    fn parts_made_after_the_shift_bring_their_time_and_effectiveness_stays_within_one() {
        let day = ShiftSection {
            name: "day".into(),
            start: "06:00".into(),
            end: "16:00".into(),
            days: vec![Weekday::Mon],
            breaks: Vec::new(),
        };
        let plan = plan(&[day], 0, Some(1.0));
        let mut buckets = run("2024-05-06T06:00:00Z", "2024-05-06T16:00:00Z", None, 60, 0);
        // One part a minute rejected in the hour after the shift.
        buckets.extend(run(
            "2024-05-06T17:00:00Z",
            "2024-05-06T18:00:00Z",
            None,
            60,
            1,
        ));
        let range = Range::new(
            time("2024-05-06T00:00:00Z"),
            time("2024-05-07T00:00:00Z"),
            time("2024-05-07T00:00:00Z"),
        );
        let report = input(&plan, &buckets).report(range, Period::Hour);
        let total = &report.total;
        // 10 planned hours and the hour after; no stop in planned time.
        assert_eq!(total.planned_busy_time_s, 11.0 * 3_600.0);
        assert_eq!(total.down_time_s, 0.0);
        assert_eq!(total.actual_production_time_s, 11.0 * 3_600.0);
        // Every part counts, the hour after the shift's too.
        assert_eq!(
            (
                total.produced_quantity,
                total.good_quantity,
                total.scrap_quantity
            ),
            (39_600, 39_540, 60)
        );
        assert!(close(total.quality_ratio, 39_540.0 / 39_600.0));
        // A part a second at an ideal second a part: exactly 1, not 39 600 / 36 000 = 1.1.
        assert!(total.effectiveness.is_some_and(|e| e <= 1.0), "{total:?}");
        assert!(close(total.effectiveness, 1.0));
        assert!(close(total.availability, 1.0));
        assert!(codes(total).is_empty(), "{:?}", total.warnings);
        // By the hour: 16:00–17:00 is neither planned nor produced in; 17:00–18:00 is an hour
        // of production.
        let (idle, overtime) = (&report.periods[16].kpis, &report.periods[17].kpis);
        assert_eq!(
            codes(idle),
            [WarningCode::NoPlannedTime, WarningCode::NoParts]
        );
        assert_eq!(overtime.planned_busy_time_s, 3_600.0);
        assert_eq!(overtime.produced_quantity, 3_600);
        assert!(close(overtime.effectiveness, 1.0));
        assert!(codes(overtime).is_empty(), "{:?}", overtime.warnings);
        // The shift's own row is the plan's: nothing after 16:00 in it.
        let shifts = input(&plan, &buckets).report(range, Period::Shift);
        assert_eq!(shifts.periods.len(), 1);
        let shift = &shifts.periods[0].kpis;
        assert_eq!(shift.planned_busy_time_s, 36_000.0);
        assert_eq!(shift.produced_quantity, 36_000);
        assert!(close(shift.effectiveness, 1.0));
    }

    /// Parts made in a planned break: the break's time they were made in counts, as overtime.
    #[test]
    fn parts_made_in_a_break_bring_their_time() {
        let plan = plan(&[test_early_shift()], 0, Some(1.0));
        // One part a second through the whole shift, the break 10:00–10:30 included.
        let buckets = run("2024-05-06T06:00:00Z", "2024-05-06T14:00:00Z", None, 60, 0);
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T14:00:00Z"),
            time("2024-05-06T14:00:00Z"),
        );
        let k = input(&plan, &buckets).report(range, Period::Shift).total;
        assert_eq!(k.planned_busy_time_s, 28_800.0);
        assert_eq!(k.produced_quantity, 28_800);
        assert!(close(k.effectiveness, 1.0));
        assert!(close(k.availability, 1.0));
    }

    #[test]
    fn external_stops_count_only_in_planned_time_and_only_once() {
        let early = ShiftSection {
            name: "early".into(),
            start: "06:00".into(),
            end: "07:00".into(),
            days: vec![Weekday::Mon],
            breaks: Vec::new(),
        };
        let plan = plan(&[early], 0, Some(1.0));
        // Parts until 06:40; a sensor says the line stood 06:30–06:45 and 06:50–08:00.
        let buckets = run("2024-05-06T06:00:00Z", "2024-05-06T06:40:00Z", None, 60, 0);
        let stops = [
            (time("2024-05-06T06:30:00Z"), time("2024-05-06T06:45:00Z")),
            (time("2024-05-06T06:50:00Z"), time("2024-05-06T08:00:00Z")),
        ];
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T09:00:00Z"),
            time("2024-05-06T09:00:00Z"),
        );
        let k = KpiInput {
            external_stops: &stops,
            ..input(&plan, &buckets)
        }
        .report(range, Period::Shift)
        .total;
        // 06:30–06:45 from the sensor and 06:39:59–07:00 from the counts overlap: together
        // 06:30–07:00, counted once; nothing after the shift's end.
        assert_eq!(k.down_time_s, 30.0 * 60.0);
        assert_eq!(k.planned_busy_time_s, 3_600.0);
    }

    #[test]
    fn the_production_series_sums_minutes_into_local_hours() {
        let plan = plan(&[], 30, None);
        let mut buckets = run("2024-05-06T06:00:00Z", "2024-05-06T07:00:00Z", None, 10, 1);
        buckets.push(bucket(minute("2024-05-06T06:45:00Z"), Some("WO-1"), 5, 0));
        buckets.sort_by(|a, b| (a.minute, &a.work_order).cmp(&(b.minute, &b.work_order)));
        let range = Range::new(
            time("2024-05-06T06:00:00Z"),
            time("2024-05-06T07:00:00Z"),
            time("2024-05-06T07:00:00Z"),
        );
        let minutes = input(&plan, &buckets).production(range, Resolution::Minute);
        assert_eq!(minutes.rows.len(), 61);
        let hours = input(&plan, &buckets).production(range, Resolution::Hour);
        let rows: Vec<_> = hours
            .rows
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.work_order.as_deref(),
                    r.inspected,
                    r.rejected_failed,
                )
            })
            .collect();
        // Local hours start at :30 UTC.
        assert_eq!(
            rows,
            [
                (time("2024-05-06T05:30:00Z"), None, 300, 30),
                (time("2024-05-06T06:30:00Z"), None, 300, 30),
                (time("2024-05-06T06:30:00Z"), Some("WO-1"), 5, 0),
            ]
        );
        assert_eq!(hours.rows[0].defects.get("scratch"), Some(&30));
    }
}
