//! The line's digital twin, for what-if: a scenario (a TOML file of `scenarios/`) describes a
//! line — belt speed, pitch, camera-to-gate distance, the station's inspection time and
//! accuracy, the process sensors whose values drive the defects, stops, equipment wear, the
//! work-order queue — and [`engine::run`] runs the station's own tracking and gate decisions
//! against it faster than real time. [`whatif`] runs a scenario as it is and with changes
//! (`belt_speed=+20%`) and reports what moves: verdicts that cannot make the gate, throughput,
//! good parts per hour, OEE, each work order's ETA and lateness; [`analysis::analyse`] runs the
//! station's root cause and maintenance watches on the run, which must find the causes and the
//! wear the scenario put in.
//!
//! The twin shares the simulated line's physics ([`crate::simulate::LineProcess`]), so a
//! scenario's `[process]` reads like a station's `[camera.simulator]`; what it does not share is
//! wall-clock time: parts, inspections and gate commands are events in station time, and a
//! shift takes seconds.

pub mod analysis;
pub mod engine;
pub mod scenario;

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

pub use self::analysis::{TwinAnalysis, analyse};
pub use self::engine::{TwinOutcome, TwinRun, run};
pub use self::scenario::{Change, Scenario, ScenarioError};
use crate::simulate::LineError;

/// Why a twin run or its analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("twin sensor store: {0}")]
    Sense(#[from] crate::sense::SenseError),
    #[error("twin record store: {0}")]
    Record(#[from] crate::record::RecordError),
    #[error("twin analysis: {0}")]
    Analyse(#[from] crate::analyse::AnalyseError),
    #[error("twin tag: {0}")]
    Tag(String),
    #[error("twin scratch folder: {0}")]
    Scratch(std::io::Error),
}

/// One figure before and after the change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    pub figure: String,
    pub unit: String,
    /// `None`: a work order that cannot finish at that rate.
    pub before: Option<f64>,
    pub after: Option<f64>,
}

/// A what-if: the scenario as it is, with the changes, and what moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIf {
    pub scenario: String,
    pub description: String,
    pub changes: Vec<Change>,
    pub baseline: TwinRun,
    pub changed: TwinRun,
    /// The headline figures, before and after.
    pub deltas: Vec<Delta>,
    /// The station's analyses of the changed run, when asked for.
    pub analysis: Option<TwinAnalysis>,
    /// Simulated hours per wall-clock second (both runs, analysis left out).
    pub speedup: f64,
}

/// The longest run the station's analyses are run on (`--analyse`).
pub const MAX_ANALYSED_HOURS: f64 = 24.0;

/// Runs `scenario` as it is and with `changes`, and, with `analyse_in` (an empty folder),
/// the station's analyses of the changed run. Blocking.
pub fn whatif(
    scenario: &Scenario,
    changes: &[Change],
    analyse_in: Option<&Path>,
) -> Result<WhatIf, TwinError> {
    let changed_scenario = scenario.changed(changes)?;
    if analyse_in.is_some() && scenario.hours > MAX_ANALYSED_HOURS {
        // A week of samples and parts through the analyses is minutes of work and gigabytes of
        // store; a day shows every cause and wear the scenarios model.
        return Err(ScenarioError::Invalid {
            name: scenario.name.clone(),
            problems: vec![crate::config::Problem {
                field: "hours".into(),
                message: format!(
                    "the analyses run on at most {MAX_ANALYSED_HOURS} h, the run is {} h",
                    scenario.hours
                ),
            }],
        }
        .into());
    }
    let started = Instant::now();
    let baseline = engine::run(scenario)?;
    let changed = engine::run(&changed_scenario)?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    let speedup = (scenario.hours + changed_scenario.hours) * 3600.0 / elapsed;
    let analysis = match analyse_in {
        Some(dir) => Some(analysis::analyse(&changed_scenario, &changed, dir)?),
        None => None,
    };
    Ok(WhatIf {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        changes: changes.to_vec(),
        deltas: deltas(&baseline.run, &changed.run),
        baseline: baseline.run,
        changed: changed.run,
        analysis,
        speedup,
    })
}

fn deltas(before: &TwinRun, after: &TwinRun) -> Vec<Delta> {
    let figure = |name: &str, unit: &str, f: &dyn Fn(&TwinRun) -> f64| Delta {
        figure: name.to_owned(),
        unit: unit.to_owned(),
        before: Some(f(before)),
        after: Some(f(after)),
    };
    let mut deltas = vec![
        figure("parts per minute", "/min", &|r| r.parts_per_min),
        figure("verdict deadline after trigger", "ms", &|r| {
            r.verdict_deadline_ms
        }),
        figure("decision time p99", "ms", &|r| r.decision_ms_p99),
        figure("verdicts that cannot make the gate", "parts", &|r| {
            (r.parts.late + r.parts.dropped) as f64
        }),
        figure("good parts lost to late verdicts", "parts", &|r| {
            r.parts.good_rejected_by_policy as f64
        }),
        figure("throughput", "parts/planned h", &|r| r.throughput_per_h),
        figure("good parts per hour", "parts/planned h", &|r| r.good_per_h),
        figure("defective parts passed", "parts", &|r| {
            r.parts.escaped as f64
        }),
        figure("availability", "%", &|r| 100.0 * r.oee.availability),
        figure("performance", "%", &|r| 100.0 * r.oee.performance),
        figure("quality", "%", &|r| 100.0 * r.oee.quality),
        figure("OEE", "%", &|r| 100.0 * r.oee.oee),
    ];
    for order in &after.work_orders {
        let earlier = before.work_orders.iter().find(|o| o.id == order.id);
        deltas.push(Delta {
            figure: format!("{} lateness", order.id),
            unit: "min".into(),
            before: earlier.and_then(|o| o.lateness_min),
            after: order.lateness_min,
        });
    }
    deltas
}

/// The report as a person reads it in a terminal.
pub fn render(report: &WhatIf) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let changes: Vec<&str> = report.changes.iter().map(|c| c.text.as_str()).collect();
    let _ = writeln!(
        out,
        "scenario {} ({} h simulated, {:.1} h of it planned, {:.0}× real time){}",
        report.scenario,
        report.baseline.hours,
        report.baseline.planned_hours,
        report.speedup,
        if changes.is_empty() {
            String::new()
        } else {
            format!(": {}", changes.join(", "))
        }
    );
    if !report.description.is_empty() {
        let _ = writeln!(out, "  {}", report.description.trim());
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<46} {:>13} {:>13} {:>10}",
        "figure", "before", "after", "change"
    );
    for delta in &report.deltas {
        let shown = |v: Option<f64>| match v {
            None => "cannot finish".to_owned(),
            Some(v) if delta.unit == "%" || v.abs() < 100.0 && v.fract() != 0.0 => {
                format!("{v:.1}")
            }
            Some(v) => format!("{v:.0}"),
        };
        let change = if let (Some(before), Some(after)) = (delta.before, delta.after) {
            let d = after - before;
            if d.abs() < 0.05 {
                "=".to_owned()
            } else if delta.unit == "%" || d.abs() < 100.0 && d.fract() != 0.0 {
                format!("{d:+.1}")
            } else {
                format!("{d:+.0}")
            }
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<46} {:>13} {:>13} {:>10}",
            format!("{} ({})", delta.figure, delta.unit),
            shown(delta.before),
            shown(delta.after),
            change
        );
    }
    if !report.changed.work_orders.is_empty() {
        let _ = writeln!(
            out,
            "\nwork orders{}:",
            if changes.is_empty() {
                ""
            } else {
                " after the change"
            }
        );
        for order in &report.changed.work_orders {
            let eta = order.eta_h.map_or("cannot finish".to_owned(), |h| {
                format!(
                    "{}{}",
                    clock(h),
                    if order.projected { " (projected)" } else { "" }
                )
            });
            let _ = writeln!(
                out,
                "  {:<10} {:>7} of {:>7} good  due {}  ETA {}  {:?}",
                order.id,
                order.good_made,
                order.quantity,
                clock(order.due_h),
                eta,
                order.status
            );
        }
    }
    if let Some(analysis) = &report.analysis {
        let _ = writeln!(out, "\nroot cause ({} parts):", analysis.parts);
        if analysis.causes.is_empty() {
            let _ = writeln!(out, "  no finding");
        }
        for cause in &analysis.causes {
            let _ = writeln!(out, "  {}", cause.sentence);
        }
        for watch in &analysis.maintenance {
            let _ = writeln!(
                out,
                "\nmaintenance watch {} ({}):",
                watch.name, watch.equipment
            );
            if watch.failures.is_empty() {
                let _ = writeln!(out, "  no failure in the run");
            }
            for failure in &watch.failures {
                let _ = match (failure.alert_h, failure.warning_min) {
                    (Some(alert), Some(lead)) => writeln!(
                        out,
                        "  failure at {}: alert at {}, {lead:.0} min before",
                        clock(failure.failure_h),
                        clock(alert)
                    ),
                    _ => writeln!(
                        out,
                        "  failure at {}: no alert before it",
                        clock(failure.failure_h)
                    ),
                };
            }
            let _ = writeln!(out, "  {}", watch.message);
        }
    }
    out
}

/// Hours after the start as `+h:mm`.
fn clock(hours: f64) -> String {
    let minutes = (hours * 60.0).round() as i64;
    format!("+{}:{:02}", minutes / 60, minutes % 60)
}
