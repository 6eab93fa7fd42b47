//! One run of a scenario: parts made by the line's physics, inspected by a station of the
//! scenario's speed and accuracy, settled at the gate by the station's own [`PartTracker`], and
//! counted into the figures a plant judges a line by.
//!
//! The run is a discrete-event simulation in station time, so hours of line take seconds:
//! - parts arrive every pitch while the belt runs ([`LineProcess::is_running`]: in the
//!   scenario's planned shift time and not in a stop), each with the defect the process gives
//!   it then;
//! - one inspection thread takes them in order (the station's single inspect stage), each taking
//!   a log-normal time; a part captured while `frame_queue` frames already wait is dropped, as
//!   the station drops a frame its queue has no room for;
//! - the tracker is fed the trigger at capture and the verdict when the inspection ends, and
//!   hands each part back at its gate time with its disposition: a verdict after the deadline
//!   rejects the part by policy, exactly as on the line.
//!
//! Every part draws its randomness from its own stream (seed, index), so two runs of a what-if
//! see the same luck part by part, and a difference between them is the change's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

use super::scenario::Scenario;
use crate::analyse::ShiftCalendar;
use crate::analyse::schedule::{self, LineRate, OrderInput, OrderStatus, RateSource};
use crate::config::LineTiming;
use crate::part::{Disposition, Inspection, PartId, StationTime, Verdict};
use crate::record::WorkOrder;
use crate::simulate::process::LineProcess;
use crate::simulate::{DefectKind, LineError, PartGenerator};
use crate::track::{DuePart, PartTracker};

/// One part of a run, for the analyses after it.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinPart {
    /// Since the run started.
    pub captured: Duration,
    /// Its true defect.
    pub defect: Option<DefectKind>,
    /// The model failed it (its inspection ended, in time or not).
    pub failed_by_model: bool,
    /// Dropped for a full frame queue: never inspected.
    pub dropped: bool,
    pub disposition: Disposition,
}

/// How many parts went which way.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartCounts {
    /// Parts the camera saw.
    pub made: u64,
    /// Parts the tracker handed back at the gate (each exactly once: equal to `made`).
    pub settled: u64,
    /// Of them, carrying a defect.
    pub defective: u64,
    /// Dropped for a full frame queue: never inspected, rejected by policy.
    pub dropped: u64,
    /// No verdict by the deadline (inspected too late, or still being inspected when the
    /// part's gate command was due): rejected by policy.
    pub late: u64,
    pub passed: u64,
    /// Failed by the model in time.
    pub rejected_by_verdict: u64,
    /// Dropped or late.
    pub rejected_by_policy: u64,
    /// Defective parts passed.
    pub escaped: u64,
    /// Good parts the model failed.
    pub false_rejects: u64,
    /// Good parts rejected only because their verdict could not make the gate.
    pub good_rejected_by_policy: u64,
}

/// ISO 22400-2's overall equipment effectiveness and its factors, over the run's planned busy
/// time (the scenario's shifts less their breaks; all of the run without shifts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Oee {
    /// Running time over planned busy time.
    pub availability: f64,
    /// Ideal cycle time × parts made over running time.
    pub performance: f64,
    /// Good (passed) parts over parts made.
    pub quality: f64,
    pub oee: f64,
}

/// What became of one work order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderOutcome {
    pub id: String,
    pub product: String,
    pub quantity: u64,
    pub good_made: u64,
    /// Hours after the start it is due.
    pub due_h: f64,
    /// Hours after the start its last good part passed the gate, or, unfinished in the run,
    /// the station's schedule projection at the run's rate in the shifts after it; `None`: it
    /// cannot finish.
    pub eta_h: Option<f64>,
    /// The ETA comes from the projection, not the run.
    pub projected: bool,
    /// ETA − due, minutes: positive late.
    pub lateness_min: Option<f64>,
    pub status: OrderStatus,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TwinRun {
    pub hours: f64,
    pub parts_per_min: f64,
    /// Camera trigger to diverter at the belt's speed.
    pub travel_ms: f64,
    /// How long after its trigger a part's verdict may come: travel − margin.
    pub verdict_deadline_ms: f64,
    pub parts: PartCounts,
    /// Trigger to verdict (queueing included), over inspected parts.
    pub decision_ms_p50: f64,
    pub decision_ms_p99: f64,
    /// Planned busy time in the run (ISO 22400 PBT): shift time less breaks.
    pub planned_hours: f64,
    /// Hours the belt ran (all in planned time).
    pub running_hours: f64,
    /// Parts made per planned hour.
    pub throughput_per_h: f64,
    /// Passed parts per planned hour.
    pub good_per_h: f64,
    pub oee: Oee,
    pub work_orders: Vec<OrderOutcome>,
}

/// A run's figures and its parts.
#[derive(Debug, Clone)]
pub struct TwinOutcome {
    pub run: TwinRun,
    pub parts: Vec<TwinPart>,
    pub process: LineProcess,
}

/// The station's gate window does not change a disposition; the twin leaves it at the
/// shipped line's.
const GATE_WINDOW: Duration = Duration::from_millis(60);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds as a duration, held within a day (the scenario's check bounds every time it
/// gives; a log-normal draw can still land far out in its tail).
fn from_ms(value: f64) -> Duration {
    let seconds = value / 1000.0;
    if seconds.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0))
}

/// SplitMix64: independent streams from (seed, part index, purpose).
fn part_seed(seed: u64, index: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A part waiting for its inspection to end.
struct Pending {
    finish: Duration,
    inspection: Inspection,
}

/// The run's state between events.
struct Run {
    tracker: PartTracker,
    now: Duration,
    pending: VecDeque<Pending>,
    /// Index = part id.
    parts: Vec<TwinPart>,
    settled: Vec<DuePart>,
}

impl Run {
    /// Handles every inspection end and gate command up to `until`, in time order.
    fn advance(&mut self, until: Duration) {
        loop {
            let next_finish = self.pending.front().map(|p| p.finish);
            let next_due = self
                .tracker
                .next_due_at(StationTime(self.now))
                .map(|at| at.0.max(self.now));
            let next = match (next_finish, next_due) {
                (Some(f), Some(d)) => f.min(d),
                (Some(f), None) => f,
                (None, Some(d)) => d,
                (None, None) => return,
            };
            if next > until {
                return;
            }
            self.now = next;
            if next_finish == Some(next) {
                if let Some(done) = self.pending.pop_front() {
                    // Late or settled already: the tracker decides, as on the line.
                    self.tracker.inspected(done.inspection, StationTime(next));
                }
            } else {
                self.settled.extend(self.tracker.due(StationTime(self.now)));
            }
        }
    }
}

/// Runs `scenario` once.
pub fn run(scenario: &Scenario) -> Result<TwinOutcome, LineError> {
    let calendar = Arc::new(scenario.calendar().map_err(LineError)?);
    let start = scenario
        .start_time()
        .map_err(|problem| LineError(vec![problem]))?;
    let start_ms = start.timestamp_millis();
    let process =
        LineProcess::new(&scenario.simulator_section())?.planned_by(calendar.clone(), start_ms);
    let length = Duration::from_secs_f64(scenario.hours * 3600.0);
    let speed_mm_s = scenario.belt.speed_m_per_min * 1000.0 / 60.0;
    let travel = Duration::from_secs_f64(scenario.belt.camera_to_gate_mm / speed_mm_s);
    let station = &scenario.station;
    let timing = LineTiming {
        travel,
        gate_window: GATE_WINDOW,
        verdict_margin: from_ms(station.verdict_margin_ms),
        actuation_lead: from_ms(station.actuation_lead_ms),
    };
    let sigma = (station.inspect_ms_p99 / station.inspect_ms_p50).ln() / 2.326_347_874;
    // Checked: p50 > 0 and p99 ≥ p50, so sigma ≥ 0 and finite.
    let inspect_time = LogNormal::new(station.inspect_ms_p50.ln(), sigma.max(0.0))
        .unwrap_or_else(|_| LogNormal::new(0.0, 0.0).expect("a point distribution"));
    let model: Arc<str> = Arc::from("twin");
    let period = Duration::from_secs_f64(60.0 / scenario.parts_per_min());

    let mut run = Run {
        tracker: PartTracker::new(timing),
        now: Duration::ZERO,
        pending: VecDeque::new(),
        parts: Vec::new(),
        settled: Vec::new(),
    };
    // Service start times of frames accepted and not yet started: the frame queue.
    let mut waiting: VecDeque<Duration> = VecDeque::new();
    let mut inspector_free = Duration::ZERO;
    let mut dropped = 0u64;
    let mut decision_ms: Vec<f64> = Vec::new();
    let mut slot = 0u64;
    loop {
        let t = period.mul_f64(slot as f64);
        if t >= length {
            break;
        }
        slot += 1;
        if !process.is_running(t) {
            continue;
        }
        run.advance(t);
        let index = run.parts.len() as u64;
        let mut generator = PartGenerator::new(part_seed(scenario.seed, index, 0), 1, 1, 0.0);
        let defect = generator.draw_defect(&process.defect_probabilities(t));
        let mut luck = ChaCha8Rng::seed_from_u64(part_seed(scenario.seed, index, 1));
        let catch: f64 = luck.r#gen();
        let failed_by_model = match defect {
            Some(_) => catch < station.detection_rate,
            None => catch < station.false_reject_rate,
        };
        let service = from_ms(inspect_time.sample(&mut luck));
        let part_id = PartId(index);
        run.now = t;
        run.tracker.trigger(part_id, StationTime(t));
        run.parts.push(TwinPart {
            captured: t,
            defect,
            failed_by_model: false,
            dropped: false,
            disposition: Disposition::RejectNoVerdict,
        });
        while waiting.front().is_some_and(|start| *start <= t) {
            waiting.pop_front();
        }
        if waiting.len() >= station.frame_queue {
            dropped += 1;
            if let Some(part) = run.parts.last_mut() {
                part.dropped = true;
            }
            continue;
        }
        let start = inspector_free.max(t);
        let finish = start + service;
        inspector_free = finish;
        if start > t {
            waiting.push_back(start);
        }
        decision_ms.push(ms(finish - t));
        if let Some(part) = run.parts.last_mut() {
            part.failed_by_model = failed_by_model;
        }
        run.pending.push_back(Pending {
            finish,
            inspection: Inspection {
                part_id,
                inspected_at: StationTime(finish),
                verdict: if failed_by_model {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                },
                score: Some(if failed_by_model { 1.0 } else { 0.0 }),
                threshold: 0.5,
                model_version: model.clone(),
                image: None,
                heat_map: None,
                mm_per_pixel: None,
                calibration: None,
                defect_class: None,
                defect_boxes: Vec::new(),
                error: None,
                views: None,
                novelty: None,
            },
        });
    }
    run.advance(Duration::MAX);

    let mut counts = PartCounts {
        made: run.parts.len() as u64,
        settled: run.settled.len() as u64,
        dropped,
        ..PartCounts::default()
    };
    // Gate order: the order parts reach the diverter, which is the order work orders fill.
    let mut gate_order: Vec<(Duration, usize)> = Vec::with_capacity(run.settled.len());
    for due in &run.settled {
        let id = due.part_id.0 as usize;
        let Some(part) = run.parts.get_mut(id) else {
            continue;
        };
        part.disposition = due.disposition;
        gate_order.push((due.gate_at.0, id));
    }
    for part in &run.parts {
        counts.defective += u64::from(part.defect.is_some());
        match part.disposition {
            Disposition::Pass => {
                counts.passed += 1;
                counts.escaped += u64::from(part.defect.is_some());
            }
            Disposition::RejectFailed | Disposition::RejectError => {
                counts.rejected_by_verdict += 1;
                counts.false_rejects += u64::from(part.defect.is_none());
            }
            Disposition::RejectNoVerdict => {
                counts.rejected_by_policy += 1;
                counts.late += u64::from(!part.dropped);
                counts.good_rejected_by_policy +=
                    u64::from(part.defect.is_none() && !part.failed_by_model);
            }
        }
    }
    gate_order.sort();

    let hours = scenario.hours;
    let running = running_time(&process, length);
    let rated = scenario
        .belt
        .rated_speed_m_per_min
        .unwrap_or(scenario.belt.speed_m_per_min);
    let ideal_cycle_s = scenario.belt.pitch_mm / 1000.0 / (rated / 60.0);
    let length_ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX);
    let planned_s = calendar.planned_ms(start_ms, start_ms.saturating_add(length_ms)) as f64 / 1e3;
    let running_s = running.as_secs_f64();
    let availability = ratio(running_s, planned_s);
    let performance = ratio(ideal_cycle_s * counts.made as f64, running_s);
    let quality = ratio(counts.passed as f64, counts.made as f64);
    let oee = Oee {
        availability,
        performance,
        quality,
        oee: availability * performance * quality,
    };
    let work_orders = orders(
        scenario,
        Plan {
            start,
            calendar: &calendar,
            oee,
            ideal_cycle_s,
        },
        &run.parts,
        &gate_order,
    );

    decision_ms.sort_by(f64::total_cmp);
    let run_figures = TwinRun {
        hours,
        parts_per_min: scenario.parts_per_min(),
        travel_ms: ms(travel),
        verdict_deadline_ms: ms(travel) - station.verdict_margin_ms,
        decision_ms_p50: quantile(&decision_ms, 0.5),
        decision_ms_p99: quantile(&decision_ms, 0.99),
        planned_hours: planned_s / 3600.0,
        running_hours: running_s / 3600.0,
        throughput_per_h: ratio(counts.made as f64, planned_s / 3600.0),
        good_per_h: ratio(counts.passed as f64, planned_s / 3600.0),
        parts: counts,
        oee,
        work_orders,
    };
    Ok(TwinOutcome {
        run: run_figures,
        parts: run.parts,
        process,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// How long the belt ran in `length`, to the sensors' tick.
fn running_time(process: &LineProcess, length: Duration) -> Duration {
    let tick = crate::simulate::process::SENSOR_TICK;
    let ticks = (length.as_secs_f64() / tick.as_secs_f64()).ceil() as u64;
    let running = (0..ticks)
        .filter(|i| process.is_running(tick.mul_f64(*i as f64)))
        .count() as f64;
    tick.mul_f64(running).min(length)
}

/// What the projection of the orders left at the end needs of the run.
struct Plan<'a> {
    start: chrono::DateTime<chrono::Utc>,
    calendar: &'a ShiftCalendar,
    oee: Oee,
    ideal_cycle_s: f64,
}

/// Fills the orders in queue order with the passed parts as they reach the gate; an order
/// unfinished at the end is projected by the station's schedule at the run's rate, in the
/// planned time after the run.
fn orders(
    scenario: &Scenario,
    plan: Plan<'_>,
    parts: &[TwinPart],
    gate_order: &[(Duration, usize)],
) -> Vec<OrderOutcome> {
    let Plan {
        start,
        calendar,
        oee,
        ideal_cycle_s,
    } = plan;
    let mut good = vec![0u64; scenario.work_orders.len()];
    let mut finished: Vec<Option<Duration>> = vec![None; scenario.work_orders.len()];
    let mut running = 0usize;
    for (gate_at, id) in gate_order {
        if running >= scenario.work_orders.len() {
            break;
        }
        if parts[*id].disposition != Disposition::Pass {
            continue;
        }
        good[running] += 1;
        if good[running] >= scenario.work_orders[running].quantity {
            finished[running] = Some(*gate_at);
            running += 1;
        }
    }
    let at = |hours: f64| start + chrono::TimeDelta::milliseconds((hours * 3_600_000.0) as i64);
    let open: Vec<OrderInput> = scenario
        .work_orders
        .iter()
        .enumerate()
        .skip(running)
        .map(|(i, spec)| OrderInput {
            order: WorkOrder {
                id: spec.id.clone(),
                product: spec.product.clone(),
                quantity: spec.quantity,
                due: at(spec.due_h),
                ideal_cycle_time_s: ideal_cycle_s,
            },
            good_so_far: good[i],
            running: i == running,
        })
        .collect();
    // Effectiveness with the stops in it: the projection carries on as the run went.
    let line = LineRate {
        source: RateSource::Recent,
        effectiveness: oee.availability * oee.performance,
        yield_ratio: oee.quality,
        running_minutes: 0,
        running: true,
        stopped_since: None,
        note: "the twin's run: availability × performance, and its quality".into(),
    };
    let settings = schedule::Settings::default();
    let projection = schedule::schedule(&open, &line, at(scenario.hours), calendar, &settings);
    let hours_of = |t: chrono::DateTime<chrono::Utc>| (t - start).num_milliseconds() as f64 / 3.6e6;
    scenario
        .work_orders
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (eta_h, projected) = match finished[i] {
                Some(done) => (Some(done.as_secs_f64() / 3600.0), false),
                None => (
                    projection
                        .orders
                        .iter()
                        .find(|o| o.id == spec.id)
                        .and_then(|o| o.eta)
                        .map(hours_of),
                    true,
                ),
            };
            let lateness_min = eta_h.map(|eta| (eta - spec.due_h) * 60.0);
            let status = match lateness_min {
                None => OrderStatus::Late,
                Some(late) if late > 0.0 => OrderStatus::Late,
                Some(late) if -late * 60.0 < settings.late_risk_margin_s => OrderStatus::LateRisk,
                Some(_) => OrderStatus::OnTime,
            };
            OrderOutcome {
                id: spec.id.clone(),
                product: spec.product.clone(),
                quantity: spec.quantity,
                good_made: good[i],
                due_h: spec.due_h,
                eta_h,
                projected,
                lateness_min,
                status,
            }
        })
        .collect()
}
