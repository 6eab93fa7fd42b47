//! Schedule impact: when each open work order will be done at the rate the line runs now, and
//! what a stop, a slowdown or a defect excursion did to each order's lateness.
//!
//! Terms (mes-anchors §5, ISO 22400 names):
//! - *remaining good quantity* R = quantity − good parts made so far for the order;
//! - *line rate*: the recent effectiveness E (parts made per running minute against the ideal
//!   rate of the orders that made them) and yield Y (good / made), each an EWMA over the last
//!   running minutes ([`measure_line`]); with no recent production, the plan (E = 1, Y = the
//!   plan's yield), and [`LineRate::source`] says so;
//! - an order's *good rate* r = E × Y / its ideal cycle time, so an order of another product is
//!   projected at its own ideal rate, scaled by how the line runs now;
//! - the *queue*: the running order first, then the open orders in release order (the
//!   work-order API has no priority). List scheduling: each order starts when the one before
//!   it ends; ETA = its start + R / r of *planned* time: the station's shift calendar
//!   ([`ShiftCalendar`]) says when the line is planned to run, and work waits through breaks,
//!   the hours between shifts and the days off (an order with three hours left at 21:00, when
//!   the shift ends at 22:00, is done at the next shift's second hour, not at midnight);
//! - *slack* = due − ETA (wall-clock time: what a planner reads as late); *critical ratio*
//!   CR = (planned time from now to due) / (R / r); *lateness* = ETA − due; status late when
//!   slack < 0, late risk when slack is under the margin, else on time.
//!
//! A stop needs no rule of its own: while the line stands in planned time, time passes and
//! nothing is made, so every ETA moves by the stop's length. Time off shift moves no ETA: the
//! projection never counted it. The rate is measured over running minutes only, so a stop
//! does not also read as a slowdown.
//!
//! [`impacts`] compares two schedules and explains each order whose lateness moved by more than
//! a threshold in one sentence ("WO-1234 now 35 min late (was 10 min early) because the reject
//! rate rose to 9 %"). The cause is found by recomputing the later schedule with the earlier
//! effectiveness, then also the earlier yield: the difference each makes is its share of the
//! change; what is left is time lost (a stop), a changed queue ahead, or progress off the
//! projection. The largest share in the direction of the change names the cause.
//!
//! [`run_schedule`] recomputes the schedule while the station runs and stores an
//! [`ImpactEvent`] in the analysis database (tree `schedule_impacts`) whenever an order's
//! lateness moved past the threshold since its last event, so events survive a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::production::MinuteBucket;
use super::{AnalyseError, Production, ShiftCalendar};
use crate::record::{Store, WorkOrder, WorkOrderState};

/// The sled tree of the stored impact events, in the analysis database.
pub const IMPACT_TREE: &str = "schedule_impacts";

/// How the schedule is measured and when a change is worth an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Running minutes the rate and yield EWMAs cover (their span N: α = 2 / (N + 1)).
    pub window_running_minutes: usize,
    /// How far back running minutes are looked for; with none in it, the plan is used.
    pub lookback: TimeDelta,
    /// Yield assumed with no recent production (the station config has no planned yield).
    pub plan_yield: f64,
    /// Slack under this is a late risk, seconds.
    pub late_risk_margin_s: f64,
    /// A lateness change of at least this is an impact event, seconds.
    pub impact_threshold_s: f64,
}

impl Default for Settings {
    /// 15 running minutes within 8 h; plan yield 100 %; late risk under 15 min of slack; an
    /// event per 5 min of lateness change.
    fn default() -> Settings {
        Settings {
            window_running_minutes: 15,
            lookback: TimeDelta::hours(8),
            plan_yield: 1.0,
            late_risk_margin_s: 900.0,
            impact_threshold_s: 300.0,
        }
    }
}

/// Where the rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    /// Measured over recent running minutes.
    Recent,
    /// No recent production: ideal cycle times and the plan's yield.
    Plan,
}

/// How the line runs: what every order's projection is scaled by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineRate {
    pub source: RateSource,
    /// Parts made per running minute against the ideal rate (ISO 22400 effectiveness).
    pub effectiveness: f64,
    /// Good parts per part made (ISO 22400 quality ratio).
    pub yield_ratio: f64,
    /// Running minutes the EWMAs cover (0 for the plan).
    pub running_minutes: u32,
    /// Parts arrived within the stop time (or the line-running tag says so).
    pub running: bool,
    /// When the current stop began (the last part's capture); `None` while running or unknown.
    pub stopped_since: Option<DateTime<Utc>>,
    /// How the rate was found, in words.
    pub note: String,
}

impl LineRate {
    /// The plan: ideal rate, the plan's yield.
    pub fn plan(settings: &Settings, running: bool, why: &str) -> LineRate {
        LineRate {
            source: RateSource::Plan,
            effectiveness: 1.0,
            yield_ratio: settings.plan_yield,
            running_minutes: 0,
            running,
            stopped_since: None,
            note: format!(
                "{why}: planned rate (ideal cycle times, yield {})",
                percent(settings.plan_yield)
            ),
        }
    }
}

/// An open work order as the schedule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderInput {
    pub order: WorkOrder,
    /// Good parts made for it so far (ISO 22400 GQ).
    pub good_so_far: u64,
    /// It is the order the station attributes parts to now.
    pub running: bool,
}

/// Whether an order will make its due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    OnTime,
    /// On time, but with less slack than the margin.
    LateRisk,
    /// Projected past its due time, or unable to finish at the current rate.
    Late,
}

/// One order's projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSchedule {
    pub id: String,
    pub product: String,
    pub quantity: u64,
    pub due: DateTime<Utc>,
    pub ideal_cycle_time_s: f64,
    pub running: bool,
    pub good_so_far: u64,
    /// R, good parts still to make.
    pub remaining_good: u64,
    /// Parts to start to get R good ones at the current yield (`None` when the yield is 0).
    pub starts_needed: Option<u64>,
    /// r, good parts per minute this order is projected at.
    pub good_per_min: f64,
    /// When it starts (now for the running order); `None` when an order ahead cannot finish.
    pub start: Option<DateTime<Utc>>,
    /// Projected completion; `None` when it cannot finish at the current rate.
    pub eta: Option<DateTime<Utc>>,
    /// due − ETA, seconds.
    pub slack_s: Option<f64>,
    /// (due − now) / (R / r); `None` when nothing is left to make or nothing can be made.
    pub critical_ratio: Option<f64>,
    /// ETA − due, seconds: positive late, negative early.
    pub lateness_s: Option<f64>,
    pub status: OrderStatus,
}

impl OrderSchedule {
    fn input(&self) -> OrderInput {
        OrderInput {
            order: WorkOrder {
                id: self.id.clone(),
                product: self.product.clone(),
                quantity: self.quantity,
                due: self.due,
                ideal_cycle_time_s: self.ideal_cycle_time_s,
            },
            good_so_far: self.good_so_far,
            running: self.running,
        }
    }
}

/// The queue's projection at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub computed_at: DateTime<Utc>,
    /// The rate and yield every projection used.
    pub line: LineRate,
    /// In queue order: the running order first.
    pub orders: Vec<OrderSchedule>,
}

/// What a lateness change is put down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Time passed and nothing was made.
    Downtime,
    Slowdown,
    Speedup,
    RejectRateRose,
    RejectRateFell,
    /// Orders ahead of it were added, removed or changed.
    QueueChanged,
    /// The line ran, but made fewer (or more) good parts than projected.
    Progress,
}

/// An order whose lateness moved by more than the threshold, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImpactEvent {
    /// When the change was seen.
    pub at: DateTime<Utc>,
    /// The schedule it is measured against.
    pub since: DateTime<Utc>,
    pub work_order: String,
    /// `None`: it could not finish at that rate.
    pub lateness_before_s: Option<f64>,
    pub lateness_after_s: Option<f64>,
    pub status_before: OrderStatus,
    pub status_after: OrderStatus,
    pub cause: Cause,
    /// For a downtime: the lateness it added, minutes.
    pub downtime_min: Option<f64>,
    pub effectiveness_before: f64,
    pub effectiveness_after: f64,
    pub reject_rate_before: f64,
    pub reject_rate_after: f64,
    /// The sentence an operator reads.
    pub message: String,
}

/// Projects the queue (in the order given: the running order first) at the line's rate, in
/// the planned time of `calendar`.
pub fn schedule(
    orders: &[OrderInput],
    line: &LineRate,
    now: DateTime<Utc>,
    calendar: &ShiftCalendar,
    settings: &Settings,
) -> Schedule {
    let mut projected = Vec::with_capacity(orders.len());
    let mut next_start = Some(now);
    for input in orders {
        let order = &input.order;
        let remaining_good = order.quantity.saturating_sub(input.good_so_far);
        let good_per_s = if order.ideal_cycle_time_s > 0.0 {
            line.effectiveness * line.yield_ratio / order.ideal_cycle_time_s
        } else {
            0.0
        };
        // Finite per minute too: a cycle time of 1e-307 s is valid input, and its rate must
        // not serialise as null where a number is promised.
        let good_per_s = if (good_per_s * 60.0).is_finite() {
            good_per_s.max(0.0)
        } else {
            0.0
        };
        // Seconds of work left: none when nothing is left, unbounded when nothing can be made.
        let work_s = if remaining_good == 0 {
            Some(0.0)
        } else if good_per_s > 0.0 {
            Some(remaining_good as f64 / good_per_s)
        } else {
            None
        };
        let start = next_start;
        let eta = match (start, work_s) {
            (Some(start), Some(work_s)) => add_planned_seconds(calendar, start, work_s),
            _ => None,
        };
        next_start = eta;
        let until_due_s = planned_seconds_between(calendar, now, order.due);
        let slack_s = eta.map(|eta| seconds_between(eta, order.due));
        let critical_ratio = match work_s {
            Some(work_s) if work_s > 0.0 => Some(until_due_s / work_s).filter(|r| r.is_finite()),
            _ => None,
        };
        let status = match slack_s {
            None => OrderStatus::Late,
            Some(slack) if slack < 0.0 => OrderStatus::Late,
            Some(slack) if slack < settings.late_risk_margin_s => OrderStatus::LateRisk,
            Some(_) => OrderStatus::OnTime,
        };
        let starts_needed = (line.yield_ratio > 0.0)
            .then(|| (remaining_good as f64 / line.yield_ratio).ceil())
            .filter(|n| n.is_finite() && *n < u64::MAX as f64)
            .map(|n| n as u64);
        projected.push(OrderSchedule {
            id: order.id.clone(),
            product: order.product.clone(),
            quantity: order.quantity,
            due: order.due,
            ideal_cycle_time_s: order.ideal_cycle_time_s,
            running: input.running,
            good_so_far: input.good_so_far,
            remaining_good,
            starts_needed,
            good_per_min: good_per_s * 60.0,
            start,
            eta,
            slack_s,
            critical_ratio,
            lateness_s: slack_s.map(|s| -s),
            status,
        });
    }
    Schedule {
        computed_at: now,
        line: line.clone(),
        orders: projected,
    }
}

/// Every order of `after` whose lateness moved by at least `threshold_s` since `before` (or
/// that became, or stopped being, unable to finish), with its cause and sentence. Orders only
/// in one of the two (released or completed in between) have no impact.
pub fn impacts(
    before: &Schedule,
    after: &Schedule,
    calendar: &ShiftCalendar,
    threshold_s: f64,
) -> Vec<ImpactEvent> {
    let before_by_id: HashMap<&str, (usize, &OrderSchedule)> = before
        .orders
        .iter()
        .enumerate()
        .map(|(i, o)| (o.id.as_str(), (i, o)))
        .collect();
    let changed: Vec<usize> = after
        .orders
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            before_by_id
                .get(o.id.as_str())
                .is_some_and(|(_, b)| moved(b.lateness_s, o.lateness_s, threshold_s))
        })
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    // The later schedule again, with the earlier effectiveness, then also the earlier yield.
    let inputs: Vec<OrderInput> = after.orders.iter().map(OrderSchedule::input).collect();
    let unchanged = Settings::default();
    let mut line = after.line.clone();
    line.effectiveness = before.line.effectiveness;
    let old_rate = schedule(&inputs, &line, after.computed_at, calendar, &unchanged);
    line.yield_ratio = before.line.yield_ratio;
    let old_rate_and_yield = schedule(&inputs, &line, after.computed_at, calendar, &unchanged);
    let stopped = !before.line.running || !after.line.running;
    changed
        .into_iter()
        .filter_map(|i| {
            let now = &after.orders[i];
            let (before_index, was) = before_by_id.get(now.id.as_str())?;
            let ahead_now: Vec<&str> = after.orders[..i].iter().map(|o| o.id.as_str()).collect();
            let ahead_then: Vec<&str> = before.orders[..*before_index]
                .iter()
                .map(|o| o.id.as_str())
                .collect();
            let shares = Shares {
                rate: difference(now.lateness_s, old_rate.orders[i].lateness_s),
                yield_ratio: difference(
                    old_rate.orders[i].lateness_s,
                    old_rate_and_yield.orders[i].lateness_s,
                ),
                rest: difference(old_rate_and_yield.orders[i].lateness_s, was.lateness_s),
            };
            let change = difference(now.lateness_s, was.lateness_s);
            let cause = shares.cause(change, before, after, stopped, ahead_now != ahead_then);
            let downtime_min =
                (cause == Cause::Downtime).then(|| shares.rest.unwrap_or(0.0) / 60.0);
            let mut event = ImpactEvent {
                at: after.computed_at,
                since: before.computed_at,
                work_order: now.id.clone(),
                lateness_before_s: was.lateness_s,
                lateness_after_s: now.lateness_s,
                status_before: was.status,
                status_after: now.status,
                cause,
                downtime_min,
                effectiveness_before: before.line.effectiveness,
                effectiveness_after: after.line.effectiveness,
                reject_rate_before: 1.0 - before.line.yield_ratio,
                reject_rate_after: 1.0 - after.line.yield_ratio,
                message: String::new(),
            };
            event.message = sentence(&event);
            Some(event)
        })
        .collect()
}

/// The sentence of an event: "WO-1234 now 35 min late (was 10 min early) because the reject
/// rate rose to 9 %".
pub fn sentence(event: &ImpactEvent) -> String {
    let now = match event.lateness_after_s {
        Some(s) => format!("now {}", lateness_words(s)),
        None => "can no longer finish at the current rate".to_owned(),
    };
    let was = match event.lateness_before_s {
        Some(s) => lateness_words(s),
        None => "unable to finish".to_owned(),
    };
    let because = match event.cause {
        Cause::Downtime => format!(
            "the line was down ({} lost)",
            duration_words(event.downtime_min.unwrap_or(0.0).abs() * 60.0)
        ),
        Cause::Slowdown => format!(
            "the line slowed to {} of its ideal rate (was {})",
            percent(event.effectiveness_after),
            percent(event.effectiveness_before)
        ),
        Cause::Speedup => format!(
            "the line sped up to {} of its ideal rate (was {})",
            percent(event.effectiveness_after),
            percent(event.effectiveness_before)
        ),
        Cause::RejectRateRose => format!(
            "the reject rate rose to {}",
            percent(event.reject_rate_after)
        ),
        Cause::RejectRateFell => format!(
            "the reject rate fell to {}",
            percent(event.reject_rate_after)
        ),
        Cause::QueueChanged => "the orders ahead of it changed".to_owned(),
        Cause::Progress => {
            let later = match (event.lateness_before_s, event.lateness_after_s) {
                (Some(b), Some(a)) => a > b,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            if later {
                "fewer good parts were made than projected".to_owned()
            } else {
                "more good parts were made than projected".to_owned()
            }
        }
    };
    format!("{} {now} (was {was}) because {because}", event.work_order)
}

/// What each input's change did to one order's lateness, seconds (`None`: one side could not
/// finish).
struct Shares {
    rate: Option<f64>,
    yield_ratio: Option<f64>,
    rest: Option<f64>,
}

impl Shares {
    fn cause(
        &self,
        change: Option<f64>,
        before: &Schedule,
        after: &Schedule,
        stopped: bool,
        queue_changed: bool,
    ) -> Cause {
        let rate_cause = if after.line.effectiveness < before.line.effectiveness {
            Cause::Slowdown
        } else {
            Cause::Speedup
        };
        let yield_cause = if after.line.yield_ratio < before.line.yield_ratio {
            Cause::RejectRateRose
        } else {
            Cause::RejectRateFell
        };
        let rest_cause = if queue_changed {
            Cause::QueueChanged
        } else if stopped {
            Cause::Downtime
        } else {
            Cause::Progress
        };
        // An order that can no longer finish (or now can): the input that went to or from zero.
        let Some(change) = change else {
            return if after.line.yield_ratio <= 0.0 || before.line.yield_ratio <= 0.0 {
                yield_cause
            } else if after.line.effectiveness <= 0.0 || before.line.effectiveness <= 0.0 {
                rate_cause
            } else {
                rest_cause
            };
        };
        // The largest share pushing the same way as the change.
        [
            (self.rate, rate_cause),
            (self.yield_ratio, yield_cause),
            (self.rest, rest_cause),
        ]
        .into_iter()
        .filter_map(|(share, cause)| Some((share?, cause)))
        .filter(|(share, _)| share.signum() == change.signum())
        .max_by(|a, b| a.0.abs().total_cmp(&b.0.abs()))
        .map_or(rest_cause, |(_, cause)| cause)
    }
}

fn moved(before: Option<f64>, after: Option<f64>, threshold_s: f64) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => (a - b).abs() >= threshold_s,
        (None, None) => false,
        _ => true,
    }
}

fn difference(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// When `seconds` of planned time after `at` are over; `None` past the year 9999 (an order
/// that would take millennia) or when the calendar plans nothing: no answer carries a time a
/// client cannot parse.
fn add_planned_seconds(
    calendar: &ShiftCalendar,
    at: DateTime<Utc>,
    seconds: f64,
) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    let ms = (seconds * 1000.0).round();
    if !(ms.is_finite() && (0.0..1e17).contains(&ms)) {
        return None;
    }
    let end = calendar.after_planned_ms(at.timestamp_millis(), ms as i64)?;
    DateTime::from_timestamp_millis(end).filter(|eta| eta.year() <= 9999)
}

/// Planned seconds from `from` to `to`; negative when `to` is before `from`.
fn planned_seconds_between(
    calendar: &ShiftCalendar,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> f64 {
    let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
    let ms = if to >= from {
        calendar.planned_ms(from, to)
    } else {
        -calendar.planned_ms(to, from)
    };
    ms as f64 / 1000.0
}

/// "35 min late", "10 min early", "on time" (within half a minute).
fn lateness_words(lateness_s: f64) -> String {
    if lateness_s.abs() < 30.0 {
        "on time".to_owned()
    } else if lateness_s > 0.0 {
        format!("{} late", duration_words(lateness_s))
    } else {
        format!("{} early", duration_words(-lateness_s))
    }
}

/// "35 min", "2 h 5 min", "3 d 4 h".
fn duration_words(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as i64;
    if minutes < 90 {
        format!("{minutes} min")
    } else if minutes < 48 * 60 {
        format!("{} h {} min", minutes / 60, minutes % 60)
    } else {
        format!("{} d {} h", minutes / 1440, (minutes % 1440) / 60)
    }
}

/// "9 %", "0.5 %", "100 %".
fn percent(ratio: f64) -> String {
    let value = ratio * 100.0;
    if value.abs() < 10.0 && (value - value.round()).abs() >= 0.05 {
        format!("{value:.1} %")
    } else {
        format!("{value:.0} %")
    }
}

/// The line's rate from the minute buckets: EWMAs of effectiveness and yield over the last
/// `window_running_minutes` minutes that made parts (oldest first) within `lookback` of
/// `as_of`.
///
/// - A minute next to one without parts (a stop began or ended in it) counts for the yield but
///   not the rate: it ran only part of the minute.
/// - A minute's effectiveness is Σ parts × the ideal cycle time of their order / 60 s; parts
///   of an order without one, or of no order, use the plan's `ideal_cycle_s`; without either,
///   the minute counts for the yield only.
/// - Running: a part captured within `stop_after_s` of `as_of`, unless `tag_running` (the
///   line-running tag's newest good sample) says otherwise.
pub fn measure_line(
    buckets: &[MinuteBucket],
    ideal_cycle_s: &HashMap<String, f64>,
    plan_ideal_cycle_s: Option<f64>,
    stop_after_s: f64,
    tag_running: Option<bool>,
    as_of: DateTime<Utc>,
    settings: &Settings,
) -> LineRate {
    let as_of_ms = as_of.timestamp_millis();
    let as_of_minute = as_of_ms.div_euclid(60_000);
    let first_minute = (as_of - settings.lookback)
        .timestamp_millis()
        .div_euclid(60_000);
    // Per minute: parts, good, ideal seconds (when every part's cycle is known).
    let mut minutes: BTreeMap<i64, MinuteMade> = BTreeMap::new();
    let mut last_part_ms: Option<i64> = None;
    for bucket in buckets {
        let counts = &bucket.counts;
        if counts.inspected == 0 || bucket.minute > as_of_minute || bucket.minute < first_minute {
            continue;
        }
        let last = bucket.minute * 60_000 + i64::from(counts.last_ms);
        if last <= as_of_ms {
            last_part_ms = Some(last_part_ms.map_or(last, |l: i64| l.max(last)));
        }
        let cycle = bucket
            .work_order
            .as_ref()
            .and_then(|id| ideal_cycle_s.get(id).copied())
            .or(plan_ideal_cycle_s)
            .filter(|c| c.is_finite() && *c > 0.0);
        let entry = minutes.entry(bucket.minute).or_insert((0, 0, Some(0.0)));
        entry.0 += counts.inspected;
        entry.1 += counts.passed;
        entry.2 = match (entry.2, cycle) {
            (Some(ideal), Some(cycle)) => Some(ideal + counts.inspected as f64 * cycle),
            _ => None,
        };
    }
    let by_parts = last_part_ms.is_some_and(|l| (as_of_ms - l) as f64 <= stop_after_s * 1000.0);
    let running = tag_running.map_or(by_parts, |tag| tag && by_parts);
    let stopped_since = if running {
        None
    } else {
        last_part_ms.and_then(DateTime::from_timestamp_millis)
    };
    // The current minute is not whole yet.
    let whole: Vec<(i64, MinuteMade)> = minutes
        .range(..as_of_minute)
        .map(|(m, v)| (*m, *v))
        .collect();
    let span = settings.window_running_minutes.max(1);
    let recent = &whole[whole.len().saturating_sub(span)..];
    let alpha = 2.0 / (span as f64 + 1.0);
    let (mut parts, mut good, mut effectiveness) = (None::<f64>, None::<f64>, None::<f64>);
    let ewma = |state: &mut Option<f64>, value: f64| {
        *state = Some(state.map_or(value, |s| s + alpha * (value - s)));
    };
    for (minute, (made, made_good, ideal)) in recent {
        ewma(&mut parts, *made as f64);
        ewma(&mut good, *made_good as f64);
        let whole_minute =
            minutes.contains_key(&(minute - 1)) && minutes.contains_key(&(minute + 1));
        if let (true, Some(ideal)) = (whole_minute, ideal) {
            ewma(&mut effectiveness, ideal / 60.0);
        }
    }
    let (Some(parts), Some(good)) = (parts, good) else {
        return LineRate::plan(settings, running, "no parts in the lookback");
    };
    let (effectiveness, note) = match effectiveness {
        Some(effectiveness) => (
            effectiveness,
            format!("EWMA over the last {} running minutes", recent.len()),
        ),
        None => (
            1.0,
            format!(
                "yield: EWMA over the last {} running minutes; rate: ideal (no whole running minute with a known ideal cycle time)",
                recent.len()
            ),
        ),
    };
    LineRate {
        source: RateSource::Recent,
        effectiveness,
        yield_ratio: if parts > 0.0 {
            good / parts
        } else {
            settings.plan_yield
        },
        running_minutes: recent.len() as u32,
        running,
        stopped_since,
        note,
    }
}

/// One minute's parts, good parts, and ideal seconds (`None` when a part's cycle is unknown).
type MinuteMade = (u64, u64, Option<f64>);

/// The open orders in queue order (the running one first, then by release) with their good
/// parts so far, from the work-order book and the minute buckets.
pub fn queue(states: &[WorkOrderState], buckets: &[MinuteBucket]) -> Vec<OrderInput> {
    let mut good: HashMap<&str, u64> = HashMap::new();
    for bucket in buckets {
        if let Some(id) = &bucket.work_order {
            *good.entry(id.as_str()).or_default() += bucket.counts.passed;
        }
    }
    let open: Vec<&WorkOrderState> = states.iter().filter(|s| s.completed_at.is_none()).collect();
    let running_id = open
        .iter()
        .filter(|s| s.started_at.is_some())
        .max_by_key(|s| s.started_at)
        .map(|s| s.order.id.clone());
    let mut queue: Vec<OrderInput> = open
        .into_iter()
        .map(|state| OrderInput {
            order: state.order.clone(),
            good_so_far: good.get(state.order.id.as_str()).copied().unwrap_or(0),
            running: Some(&state.order.id) == running_id.as_ref(),
        })
        .collect();
    // Stable: the rest keep their release order.
    queue.sort_by_key(|o| !o.running);
    queue
}

/// The schedule now, from the stores. Blocking (reads the analysis database).
pub fn current(
    store: &Store,
    production: &Production,
    sensors: Option<&crate::sense::Sensors>,
    now: DateTime<Utc>,
    as_of: DateTime<Utc>,
    settings: &Settings,
) -> Result<Schedule, AnalyseError> {
    let states = store.work_orders();
    let rate_from = as_of - settings.lookback;
    // Good parts so far: from the oldest open order's release (its parts come after it).
    let orders_from = states
        .iter()
        .filter(|s| s.completed_at.is_none() && s.started_at.is_some())
        .map(|s| s.released_at)
        .min()
        .map_or(rate_from, |r| r.min(rate_from));
    let to_minute = now.timestamp_millis().div_euclid(60_000) + 1;
    let buckets = production
        .counts
        .buckets(orders_from.timestamp_millis().div_euclid(60_000), to_minute)?;
    let from_minute = rate_from.timestamp_millis().div_euclid(60_000);
    let recent: Vec<MinuteBucket> = buckets
        .iter()
        .filter(|b| b.minute >= from_minute)
        .cloned()
        .collect();
    let cycles: HashMap<String, f64> = states
        .iter()
        .map(|s| (s.order.id.clone(), s.order.ideal_cycle_time_s))
        .collect();
    let plan = &production.plan;
    let line = measure_line(
        &recent,
        &cycles,
        plan.ideal_cycle_s,
        plan.stop_after_s,
        tag_running(plan.running_tag.as_deref(), sensors),
        as_of,
        settings,
    );
    Ok(schedule(
        &queue(&states, &buckets),
        &line,
        now,
        &plan.calendar,
        settings,
    ))
}

/// What the line-running tag's newest good sample says (`None`: no such tag or sample).
fn tag_running(tag: Option<&str>, sensors: Option<&crate::sense::Sensors>) -> Option<bool> {
    let (t, value, flag) = sensors?.store.latest(tag?)?;
    let _ = t;
    flag.is_good().then_some(value >= 0.5)
}

/// The stored impact events, in the analysis database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImpactLog {
    tree: sled::Tree,
}

impl ImpactLog {
    /// The events beside the production counts.
    pub fn open(production: &Production) -> Result<ImpactLog, AnalyseError> {
        Ok(ImpactLog {
            tree: production.counts.tree(IMPACT_TREE)?,
        })
    }

    /// Stores events durably (one flush).
    pub fn append(&self, events: &[ImpactEvent]) -> Result<(), AnalyseError> {
        let mut batch = sled::Batch::default();
        for event in events {
            // Serialising our own type into a Vec cannot fail.
            let value = serde_json::to_vec(event).unwrap_or_default();
            batch.insert(event_key(event.at, &event.work_order), value);
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Events of `[from, to)`, oldest first, at most `limit`.
    pub fn range(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ImpactEvent>, AnalyseError> {
        let mut events = Vec::new();
        for entry in self
            .tree
            .range(time_key(from).to_vec()..time_key(to).to_vec())
        {
            if events.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            match serde_json::from_slice(&value) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::warn!(key = ?key, %error, "unreadable schedule impact event skipped")
                }
            }
        }
        Ok(events)
    }
}

fn time_key(at: DateTime<Utc>) -> [u8; 8] {
    ((at.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

fn event_key(at: DateTime<Utc>, work_order: &str) -> Vec<u8> {
    let mut key = time_key(at).to_vec();
    key.extend_from_slice(work_order.as_bytes());
    key
}

/// Everything the schedule runner reads.
pub struct ScheduleRunner {
    pub store: Store,
    pub production: Production,
    pub sensors: Option<crate::sense::Sensors>,
    pub settings: Settings,
    /// The recording delay: parts captured after `now − this` are not recorded yet.
    pub as_of_delay: Duration,
}

/// How often the runner looks whether the line stopped or started.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How often the schedule is compared with each order's last event in any case.
const RECOMPUTE_EVERY: Duration = Duration::from_secs(30);

/// Starts the schedule runner as a task that stops with `cancel`.
pub fn start_schedule_runner(
    runner: ScheduleRunner,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_schedule(runner, cancel))
}

/// Recomputes the schedule every 30 s and as soon as the line stops or starts again (looked at
/// every 5 s), and stores an [`ImpactEvent`] for each order whose lateness moved by the
/// threshold since its own last event (or since the runner started). Failures are logged and
/// tried again at the next round.
pub async fn run_schedule(runner: ScheduleRunner, cancel: CancellationToken) {
    let log = match ImpactLog::open(&runner.production) {
        Ok(log) => log,
        Err(error) => {
            tracing::error!(%error, "schedule impacts cannot be stored; the schedule runner stops");
            return;
        }
    };
    let runner = Arc::new(runner);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut baselines: HashMap<String, Arc<Schedule>> = HashMap::new();
    let mut last_compared: Option<tokio::time::Instant> = None;
    let mut running: Option<bool> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = poll.tick() => {}
        }
        let now = Utc::now();
        let as_of = now - TimeDelta::from_std(runner.as_of_delay).unwrap_or(TimeDelta::zero());
        let computing = runner.clone();
        let computed = tokio::task::spawn_blocking(move || {
            current(
                &computing.store,
                &computing.production,
                computing.sensors.as_ref(),
                now,
                as_of,
                &computing.settings,
            )
        })
        .await;
        let schedule = match computed {
            Ok(Ok(schedule)) => Arc::new(schedule),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot compute the schedule");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "schedule task failed");
                continue;
            }
        };
        let flipped = running.is_some_and(|r| r != schedule.line.running);
        running = Some(schedule.line.running);
        let due = last_compared.is_none_or(|at| at.elapsed() >= RECOMPUTE_EVERY);
        if !(flipped || due) {
            continue;
        }
        last_compared = Some(tokio::time::Instant::now());
        let events = compare_with_baselines(
            &mut baselines,
            &schedule,
            &runner.production.plan.calendar,
            runner.settings.impact_threshold_s,
        );
        if events.is_empty() {
            continue;
        }
        for event in &events {
            tracing::info!(work_order = %event.work_order, cause = ?event.cause, "{}", event.message);
        }
        let log = log.clone();
        match tokio::task::spawn_blocking(move || log.append(&events)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot store schedule impact events"),
            Err(error) => tracing::warn!(%error, "schedule impact task failed"),
        }
    }
}

/// Compares `schedule` with each order's baseline (the schedule of its last event, or of when
/// it was first seen), moves the baseline of each order with an event, and forgets orders no
/// longer open.
pub fn compare_with_baselines(
    baselines: &mut HashMap<String, Arc<Schedule>>,
    schedule: &Arc<Schedule>,
    calendar: &ShiftCalendar,
    threshold_s: f64,
) -> Vec<ImpactEvent> {
    baselines.retain(|id, _| schedule.orders.iter().any(|o| &o.id == id));
    // Orders sharing a baseline are compared in one go.
    let mut groups: Vec<(Arc<Schedule>, Vec<String>)> = Vec::new();
    for order in &schedule.orders {
        let Some(baseline) = baselines.get(&order.id) else {
            baselines.insert(order.id.clone(), schedule.clone());
            continue;
        };
        match groups.iter_mut().find(|(b, _)| Arc::ptr_eq(b, baseline)) {
            Some((_, ids)) => ids.push(order.id.clone()),
            None => groups.push((baseline.clone(), vec![order.id.clone()])),
        }
    }
    let mut events = Vec::new();
    for (baseline, ids) in groups {
        for event in impacts(&baseline, schedule, calendar, threshold_s) {
            if ids.contains(&event.work_order) {
                baselines.insert(event.work_order.clone(), schedule.clone());
                events.push(event);
            }
        }
    }
    events
}

#[cfg(test)]
mod tests;
