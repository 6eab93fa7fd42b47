//! What the station's own analyses make of a twin run: its sensor samples go into a real sensor
//! store and its parts through the station's root-cause code, and its maintenance watches are
//! evaluated as the running station evaluates them, every few minutes of simulated time. The
//! scenario's effects and wear are the ground truth these must find.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde::Serialize;

use super::TwinError;
use super::engine::TwinOutcome;
use super::scenario::Scenario;
use crate::analyse::maintenance::monitor::evaluate;
use crate::analyse::maintenance::watch::Watched;
use crate::analyse::rootcause::Settings;
use crate::analyse::rootcause::station::{InspectedPart, Scope, analyse_parts, tag_traces};
use crate::record::Store;
use crate::sense::{Incoming, Sensors, SensorsSection, TagConfig};
use crate::simulate::history::RUNNING_TAG;

/// How often the maintenance watches are evaluated, in simulated time (the station: every
/// minute; coarser here, as a watch's horizon is hours).
pub const WATCH_EVERY: Duration = Duration::from_secs(300);

/// One root-cause finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CauseFinding {
    /// A defect class, or `rejects`.
    pub target: String,
    pub features: Vec<String>,
    pub sentence: String,
}

/// One failure of watched equipment and the alert before it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureWarning {
    /// When the tag's true value crossed the watch's limit, hours after the start.
    pub failure_h: f64,
    /// The first evaluation at which the watch was active since the equipment was back within
    /// its limit after the previous failure (its repair).
    pub alert_h: Option<f64>,
    /// Failure − alert, minutes (positive: warned before).
    pub warning_min: Option<f64>,
}

/// One maintenance watch over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchOutcome {
    pub name: String,
    pub equipment: String,
    pub failures: Vec<FailureWarning>,
    /// Evaluations at which it was active.
    pub active_evaluations: usize,
    pub evaluations: usize,
    /// What it said when it was first active (or last, if never).
    pub message: String,
}

/// The analyses of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TwinAnalysis {
    /// Parts the root cause judged.
    pub parts: usize,
    pub causes: Vec<CauseFinding>,
    pub maintenance: Vec<WatchOutcome>,
}

/// Runs the station's root cause and maintenance watches on `outcome`, with a sensor and a
/// record store in `scratch` (a fresh, empty folder). Blocking.
pub fn analyse(
    scenario: &Scenario,
    outcome: &TwinOutcome,
    scratch: &Path,
) -> Result<TwinAnalysis, TwinError> {
    let length = Duration::from_secs_f64(scenario.hours * 3600.0);
    // Stamped in the recent past, where no retention rule touches them.
    let start =
        (Utc::now() - TimeDelta::from_std(length).unwrap_or(TimeDelta::MAX) - TimeDelta::hours(1))
            .trunc_subsecs(0);
    let at = |t: Duration| start + TimeDelta::from_std(t).unwrap_or(TimeDelta::MAX);
    let end = at(length);
    let process = &outcome.process;
    let period = Duration::from_secs_f64(scenario.process.sample_period_s);

    let mut tags = Vec::new();
    for sensor in &scenario.process.sensors {
        tags.push(tag(serde_json::json!({
            "name": sensor.name,
            "unit": sensor.unit,
            "period_ms": period.as_millis() as u64,
            "transport_delay_ms": sensor.transport_delay_ms,
        }))?);
    }
    tags.push(tag(serde_json::json!({
        "name": RUNNING_TAG,
        "period_ms": period.as_millis() as u64,
        "valid_range": [0.0, 1.0],
        "stuck_after": 0,
        "spike_sigma": 0,
    }))?);
    let sensors = Sensors::open(scratch, SensorsSection::default(), tags)?;
    let mut batch = Vec::with_capacity(20_000);
    let mut tick = 0u64;
    loop {
        let t = period.mul_f64(tick as f64);
        if t >= length {
            break;
        }
        tick += 1;
        for (i, sensor) in process.sensors().iter().enumerate() {
            batch.push(Incoming {
                tag: sensor.name.clone(),
                at: at(t),
                value: Some(process.reported_value(i, t)),
            });
        }
        batch.push(Incoming {
            tag: RUNNING_TAG.into(),
            at: at(t),
            value: Some(f64::from(u8::from(process.is_running(t)))),
        });
        if batch.len() >= 20_000 {
            sensors.store.ingest(&batch)?;
            batch.clear();
        }
    }
    sensors.store.ingest(&batch)?;

    // The station records a class for the parts its model fails; a good part failed is one
    // it cannot name. A dropped part was never inspected: it has no record to analyse.
    let parts: Vec<InspectedPart> = outcome
        .parts
        .iter()
        .enumerate()
        .filter(|(_, part)| !part.dropped)
        .map(|(i, part)| InspectedPart {
            part_id: i as u64,
            captured_ms: at(part.captured).timestamp_millis(),
            work_order: None,
            product: None,
            defect: part.failed_by_model.then(|| {
                part.defect
                    .map_or("unclassified", |kind| kind.as_str())
                    .into()
            }),
        })
        .collect();
    let traces = tag_traces(&sensors, &parts, Some(RUNNING_TAG))?;
    let rootcause = analyse_parts(
        &parts,
        &traces,
        Scope {
            from: start,
            to: end,
            work_order: None,
        },
        &Settings::default(),
        end,
    );
    let causes = rootcause
        .targets
        .iter()
        .filter_map(|t| t.analysis.as_ref())
        .flat_map(|a| {
            a.findings.iter().map(|f| CauseFinding {
                target: f.target.clone(),
                features: f.features.clone(),
                sentence: f.sentence.clone(),
            })
        })
        .collect();

    let store = Store::open(&scratch.join("records"), "twin")?;
    let maintenance = watch_outcomes(scenario, outcome, &sensors, &store, start, length);
    Ok(TwinAnalysis {
        parts: rootcause.parts,
        causes,
        maintenance,
    })
}

fn tag(value: serde_json::Value) -> Result<TagConfig, TwinError> {
    serde_json::from_value(value).map_err(|e| TwinError::Tag(e.to_string()))
}

/// Every watch evaluated every [`WATCH_EVERY`], and each failure of its equipment with the
/// first alert before it.
fn watch_outcomes(
    scenario: &Scenario,
    outcome: &TwinOutcome,
    sensors: &Sensors,
    store: &Store,
    start: DateTime<Utc>,
    length: Duration,
) -> Vec<WatchOutcome> {
    let hours = |t: Duration| t.as_secs_f64() / 3600.0;
    let mut active: Vec<Vec<Duration>> = vec![Vec::new(); scenario.maintenance.len()];
    let mut messages: Vec<Option<String>> = vec![None; scenario.maintenance.len()];
    let mut last: Vec<String> = vec![String::new(); scenario.maintenance.len()];
    let mut evaluations = 0usize;
    let mut t = WATCH_EVERY;
    while t <= length {
        let now = start + TimeDelta::from_std(t).unwrap_or(TimeDelta::MAX);
        let view = evaluate(
            sensors,
            store,
            &scenario.maintenance,
            Some(RUNNING_TAG),
            now,
        );
        evaluations += 1;
        for (i, status) in view.watches.iter().enumerate() {
            if status.active {
                active[i].push(t);
                messages[i].get_or_insert_with(|| status.message.clone());
            }
            last[i] = status.message.clone();
        }
        t += WATCH_EVERY;
    }
    let process = &outcome.process;
    let tick = Duration::from_secs(1);
    scenario
        .maintenance
        .iter()
        .enumerate()
        .map(|(i, watch)| {
            // Failures: the true value crossing the limit, on the failing side, while the line
            // runs (a stopped machine's reading says nothing of its wear).
            let mut failures = Vec::new();
            // When the equipment was back within its limit (repaired) after each failure.
            let mut repairs = Vec::new();
            if let Some(Watched::Trend { tag, limit, above }) = watch.watched()
                && let Some(sensor) = process.sensor_index(tag)
            {
                let beyond = |t: Duration| {
                    let v = process.true_value(sensor, t);
                    if above { v > limit } else { v < limit }
                };
                let mut was = beyond(Duration::ZERO);
                let mut t = tick;
                while t < length {
                    if process.is_running(t) {
                        let is = beyond(t);
                        if is && !was {
                            failures.push(t);
                        } else if was && !is {
                            repairs.push(t);
                        }
                        was = is;
                    }
                    t += tick;
                }
            }
            // An alert counts for a failure when it came after the repair of the one before (an
            // alarm still on while the equipment stands failed warns of nothing new).
            let warnings = failures
                .iter()
                .map(|&failure| {
                    let since = repairs
                        .iter()
                        .copied()
                        .rfind(|r| *r < failure)
                        .unwrap_or(Duration::ZERO);
                    let alert = active[i]
                        .iter()
                        .copied()
                        .find(|a| *a > since && *a <= failure);
                    FailureWarning {
                        failure_h: hours(failure),
                        alert_h: alert.map(hours),
                        warning_min: alert.map(|a| (failure - a).as_secs_f64() / 60.0),
                    }
                })
                .collect();
            WatchOutcome {
                name: watch.name.clone(),
                equipment: watch.equipment.clone(),
                failures: warnings,
                active_evaluations: active[i].len(),
                evaluations,
                message: messages[i].clone().unwrap_or_else(|| last[i].clone()),
            }
        })
        .collect()
}
