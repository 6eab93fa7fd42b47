//! Root cause on the station's own data: a whole simulated shift of parts and sensor samples,
//! stored in a real sensor store and lined up by the station's code. The simulator's effects are
//! the ground truth: every one must be found with its threshold, and no finding may name a tag
//! the simulator left independent of the defects (the belt speed, the drive power creeping up
//! with the hours, the running flag).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use linesight::analyse::rootcause::station::{
    InspectedPart, REJECTS, Scope, StationRootCause, analyse_parts, tag_traces,
};
use linesight::analyse::rootcause::{Condition, Region, Settings};
use linesight::sense::Sensors;
use linesight::simulate::LineProcess;
use linesight::simulate::history::history;

use crate::station_config;

/// One shift.
const SHIFT: Duration = Duration::from_secs(8 * 3600);

/// Tags the simulator's defects do not depend on.
const INDEPENDENT: [&str; 3] = ["belt_speed", "drive_power", "line_running"];

/// A shift of the shipped simulated line, analysed as the station analyses its window.
fn analysed_shift(dir: &std::path::Path) -> StationRootCause {
    let config = station_config(dir, &[]);
    let simulator = config
        .simulator
        .clone()
        .expect("the shipped line is simulated");
    let process = LineProcess::new(&simulator).expect("valid line");
    // Recent enough that no retention rule touches it.
    let start = (Utc::now() - TimeDelta::hours(9)).trunc_subsecs(0);
    let (parts, samples) = history(
        &process,
        simulator.seed,
        simulator.parts_per_min,
        start,
        SHIFT,
        Duration::from_secs(1),
    );
    let sensors = Sensors::open(dir, config.sensors.clone(), config.tags.clone()).expect("store");
    for batch in samples.chunks(20_000) {
        let report = sensors.store.ingest(batch).expect("ingest");
        assert!(
            report.refused.is_empty(),
            "refused: {:?}",
            &report.refused[..1]
        );
    }
    let parts: Vec<InspectedPart> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| InspectedPart {
            part_id: i as u64,
            captured_ms: part.captured_at.timestamp_millis(),
            work_order: None,
            product: None,
            defect: part.defect.map(|kind| kind.as_str().into()),
        })
        .collect();
    let traces =
        tag_traces(&sensors, &parts, config.production.running_tag.as_deref()).expect("traces");
    let end: DateTime<Utc> = start + TimeDelta::from_std(SHIFT).expect("shift");
    analyse_parts(
        &parts,
        &traces,
        Scope {
            from: start,
            to: end,
            work_order: None,
        },
        &Settings::default(),
        end,
    )
}

/// The threshold a finding on `tag` puts defects above, if it has one.
fn threshold_above(analysis: &StationRootCause, target: &str, tag: &str) -> Option<f64> {
    let outcome = analysis.targets.iter().find(|t| t.target == target)?;
    outcome.analysis.as_ref()?.findings.iter().find_map(|f| {
        let terms = match &f.condition {
            Condition::Region(term) => vec![term],
            Condition::Conjunction { terms } => terms.iter().collect(),
            _ => Vec::new(),
        };
        terms.into_iter().find_map(|term| match term.region {
            Region::Above { threshold } if term.feature == tag => Some(threshold),
            _ => None,
        })
    })
}

#[test]
fn a_simulated_shift_names_every_true_cause_and_no_independent_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analysis = analysed_shift(dir.path());
    assert!(
        analysis.parts > 50_000,
        "a shift at 120 parts/min: {}",
        analysis.parts
    );
    let sentences: Vec<&str> = analysis
        .targets
        .iter()
        .filter_map(|t| t.analysis.as_ref())
        .flat_map(|a| a.findings.iter().map(|f| f.sentence.as_str()))
        .collect();
    eprintln!("findings:\n  {}", sentences.join("\n  "));

    // The shipped effects: cracks above 185 °C at the press (20 s upstream), spots rising per
    // %RH above 55, scratches per mm/s of roller vibration above 4.
    let crack = threshold_above(&analysis, "crack", "press_temp")
        .unwrap_or_else(|| panic!("cracks not tied to the press temperature: {sentences:#?}"));
    assert!(
        (crack - 185.0).abs() <= 185.0 * 0.01,
        "crack threshold {crack}"
    );
    let spot = threshold_above(&analysis, "spot", "humidity")
        .unwrap_or_else(|| panic!("spots not tied to humidity: {sentences:#?}"));
    assert!((54.0..=60.0).contains(&spot), "spot threshold {spot}");
    let scratch = threshold_above(&analysis, "scratch", "roller_vibration")
        .unwrap_or_else(|| panic!("scratches not tied to roller vibration: {sentences:#?}"));
    assert!(
        (3.5..=7.0).contains(&scratch),
        "scratch threshold {scratch}"
    );

    // The press acts 20 s before the camera, and the sentence says so.
    let press = analysis
        .targets
        .iter()
        .find(|t| t.target == "crack")
        .and_then(|t| t.analysis.as_ref())
        .and_then(|a| {
            a.findings
                .iter()
                .find(|f| f.features.iter().any(|n| n == "press_temp"))
        })
        .expect("press finding");
    assert_eq!(press.lag_s, Some(20.0));
    assert!(
        press.sentence.contains("20 s before inspection"),
        "{}",
        press.sentence
    );
    let chart = press.chart.as_deref().expect("a chart link");
    assert!(
        chart.starts_with("/api/v1/tags/press_temp/chart?from="),
        "{chart}"
    );

    // Nothing names a tag the defects do not depend on, and dents depend on nothing.
    for outcome in &analysis.targets {
        let Some(a) = &outcome.analysis else { continue };
        for finding in &a.findings {
            for tag in INDEPENDENT {
                assert!(
                    !finding.features.iter().any(|f| f == tag),
                    "{} names independent tag {tag}: {}",
                    outcome.target,
                    finding.sentence
                );
            }
        }
        if outcome.target == "dent" {
            assert!(
                a.findings.is_empty(),
                "dents have no cause: {:?}",
                a.findings
            );
        }
    }
    assert!(analysis.targets.iter().any(|t| t.target == REJECTS));
}
