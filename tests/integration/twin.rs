//! The line's digital twin: what-if on the shipped scenario runs the station's tracking against
//! the twin, and the station's own analyses find what the scenario put in (a temperature-driven
//! defect, a bearing wearing towards failure).

use std::path::PathBuf;
use std::process::Command;

use linesight::twin::{self, Change, Scenario, ScenarioError};
use serde_json::json;

use crate::models::send;
use crate::{repo, simulated_station, station_config};

fn scenarios() -> PathBuf {
    repo().join("scenarios")
}

fn press_line() -> Scenario {
    Scenario::find(&scenarios(), "press-line").expect("the shipped scenario loads")
}

fn changes(texts: &[&str]) -> Vec<Change> {
    texts
        .iter()
        .map(|t| t.parse().expect("a valid change"))
        .collect()
}

#[test]
fn a_faster_belt_makes_more_parts_and_more_verdicts_miss_the_gate() {
    let report = twin::whatif(&press_line(), &changes(&["belt_speed=+20%"]), None).expect("runs");
    let (before, after) = (&report.baseline, &report.changed);
    assert!((after.parts_per_min / before.parts_per_min - 1.2).abs() < 1e-9);
    // Same distance, faster belt: the verdict must come 1/1.2 as late after the trigger.
    assert!(after.travel_ms < before.travel_ms);
    assert!(after.verdict_deadline_ms < before.verdict_deadline_ms);
    assert!(
        after.parts.late + after.parts.dropped > 3 * (before.parts.late + before.parts.dropped),
        "late or dropped: {:?} → {:?}",
        before.parts,
        after.parts
    );
    assert!(after.throughput_per_h > before.throughput_per_h);
    // Every part is accounted for, in both runs.
    for run in [before, after] {
        let p = &run.parts;
        assert_eq!(
            p.settled, p.made,
            "every part settled at the gate exactly once"
        );
        assert_eq!(
            p.made,
            p.passed + p.rejected_by_verdict + p.rejected_by_policy
        );
        assert_eq!(p.rejected_by_policy, p.late + p.dropped);
        assert!(p.made > 40_000, "{p:?}");
        assert!((0.0..=1.0).contains(&run.oee.oee));
        assert_eq!(run.work_orders.len(), 3);
    }
    // The run is much faster than the line.
    assert!(report.speedup > 100.0, "{} × real time", report.speedup);
    let deltas: Vec<&str> = report.deltas.iter().map(|d| d.figure.as_str()).collect();
    for figure in [
        "throughput",
        "good parts per hour",
        "OEE",
        "WO-1002 lateness",
    ] {
        assert!(deltas.contains(&figure), "{deltas:?}");
    }
    let text = twin::render(&report);
    assert!(
        text.contains("belt_speed=+20%") && text.contains("WO-1003"),
        "{text}"
    );
}

#[test]
fn no_verdict_in_time_never_passes_a_part() {
    // Inspections slower than the whole travel: nothing can make the gate.
    let scenario = press_line();
    let report = twin::whatif(&scenario, &changes(&["inspect_time=900", "hours=0"]), None);
    assert!(
        matches!(
            report,
            Err(twin::TwinError::Scenario(ScenarioError::Change { .. }))
        ),
        "hours is not a setting: {report:?}"
    );
    let mut short = scenario.clone();
    short.hours = 0.5;
    let report = twin::whatif(&short, &changes(&["inspect_time=900"]), None).expect("runs");
    let parts = &report.changed.parts;
    assert!(parts.made > 1000);
    assert_eq!(parts.passed, 0, "{parts:?}");
    assert_eq!(parts.rejected_by_policy, parts.made, "{parts:?}");
    assert_eq!(report.changed.oee.quality, 0.0);
    // Every order is late or cannot finish.
    assert!(
        report
            .changed
            .work_orders
            .iter()
            .all(|o| o.lateness_min.is_none_or(|l| l > 0.0)),
        "{:?}",
        report.changed.work_orders
    );
}

#[test]
fn the_line_runs_in_its_shifts_only_and_orders_wait_for_the_next_one() {
    let shift = press_line();
    assert_eq!(
        shift.shifts.len(),
        1,
        "the shipped scenario is one early shift"
    );
    let monday = twin::run(&shift).expect("runs");
    // 06:00–14:00 less the break at 10:00: 7.5 planned hours, the belt in none of the break.
    assert!(
        (monday.run.planned_hours - 7.5).abs() < 1e-9,
        "{}",
        monday.run.planned_hours
    );
    assert!(monday.run.running_hours <= monday.run.planned_hours);
    let hours = |p: &twin::engine::TwinPart| p.captured.as_secs_f64() / 3600.0;
    assert!(monday.parts.iter().all(|p| !(4.0..4.5).contains(&hours(p))));
    assert!(monday.parts.iter().any(|p| hours(p) > 7.9));
    // Availability is over planned time: the break is no downtime, the stops are.
    let stops = 20.0 / 300.0;
    assert!(
        (monday.run.oee.availability - (1.0 - stops)).abs() < 0.005,
        "{:?}",
        monday.run.oee
    );

    // A whole day from the same start makes the same parts: nothing runs after 14:00.
    let mut day = shift.clone();
    day.hours = 24.0;
    let whole_day = twin::run(&day).expect("runs");
    assert_eq!(whole_day.run.parts, monday.run.parts);
    assert_eq!(whole_day.run.oee, monday.run.oee);
    assert_eq!(whole_day.run.planned_hours, monday.run.planned_hours);
    assert_eq!(whole_day.run.throughput_per_h, monday.run.throughput_per_h);
    // WO-1003 cannot finish on Monday: it is projected into Tuesday's shift, not the night.
    let last = |run: &twin::TwinRun| {
        run.work_orders
            .iter()
            .find(|o| o.id == "WO-1003")
            .cloned()
            .expect("WO-1003")
    };
    let waits = last(&whole_day.run);
    assert!(waits.projected, "{waits:?}");
    let eta = waits.eta_h.expect("finishes");
    assert!((24.0..32.0).contains(&eta), "{waits:?}");

    // The same line round the clock makes three times the parts and finishes WO-1003 that night.
    let mut nonstop = day.clone();
    nonstop.shifts.clear();
    let nonstop = twin::run(&nonstop).expect("runs");
    assert_eq!(nonstop.run.planned_hours, 24.0);
    assert!(
        nonstop.run.parts.made > 3 * monday.run.parts.made,
        "{} against {}",
        nonstop.run.parts.made,
        monday.run.parts.made
    );
    let done = last(&nonstop.run);
    assert!(
        !done.projected && done.eta_h.is_some_and(|h| h < 10.0),
        "{done:?}"
    );
}

#[test]
fn the_stations_analyses_find_the_injected_cause_and_warn_before_the_bearing_fails() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let report = twin::whatif(&press_line(), &[], Some(scratch.path())).expect("runs");
    let analysis = report.analysis.expect("analysed");
    let sentences: Vec<&str> = analysis
        .causes
        .iter()
        .map(|c| c.sentence.as_str())
        .collect();
    // The scenario's cracks come from the press above 185 °C, 20 s upstream.
    let crack = analysis
        .causes
        .iter()
        .find(|c| c.target == "crack" && c.features.iter().any(|f| f == "press_temp"))
        .unwrap_or_else(|| panic!("cracks not tied to the press: {sentences:#?}"));
    assert!(
        crack.sentence.contains("> 18") && crack.sentence.contains("20 s before inspection"),
        "{}",
        crack.sentence
    );
    // Nothing ties a defect to the belt speed, which never passes its threshold here.
    assert!(
        !analysis
            .causes
            .iter()
            .any(|c| c.features.iter().any(|f| f == "belt_speed")),
        "{sentences:#?}"
    );
    // The bearing wears out every 2 h: four failures in 8 h, each warned of ahead of time
    // (the watch alarms when failure may come within 30 min; it is evaluated every 5 min).
    let bearing = &analysis.maintenance[0];
    assert_eq!(bearing.failures.len(), 4, "{bearing:#?}");
    for failure in &bearing.failures {
        let warning = failure
            .warning_min
            .unwrap_or_else(|| panic!("no alert before the failure: {bearing:#?}"));
        assert!(
            (10.0..=60.0).contains(&warning),
            "warned {warning} min ahead: {bearing:#?}"
        );
    }
}

#[test]
fn bad_scenarios_and_changes_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(scenarios().join("press-line.toml")).expect("read");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        path
    };
    let path = write("typo", &text.replace("pitch_mm", "pitch_mmm"));
    let error = Scenario::load(&path)
        .expect_err("unknown field")
        .to_string();
    assert!(
        error.contains("typo.toml") && error.contains("pitch_mmm"),
        "{error}"
    );
    let path = write(
        "bad",
        &text
            .replace("detection_rate = 0.97", "detection_rate = 1.5")
            .replace("sensor = \"humidity\"", "sensor = \"humidty\""),
    );
    let error = Scenario::load(&path).expect_err("invalid").to_string();
    assert!(error.contains("station.detection_rate"), "{error}");
    assert!(error.contains("process.effects[1]"), "{error}");
    // The shift calendar's problems name their fields, as in a station config.
    let path = write(
        "calendar",
        &text
            .replace("start = \"2026-01-05T05:00:00Z\"", "start = \"monday\"")
            .replace("end = \"14:00\"", "end = \"25:00\"")
            .replace("utc_offset_minutes = 60", "utc_offset_minutes = 6000"),
    );
    let error = Scenario::load(&path).expect_err("invalid").to_string();
    for field in ["`start`", "`shifts[0].end`", "`utc_offset_minutes`"] {
        assert!(error.contains(field), "{field}: {error}");
    }
    let path = write(
        "weekend",
        &text.replace("2026-01-05T05:00:00Z", "2026-01-10T05:00:00Z"),
    );
    let error = Scenario::load(&path).expect_err("a Saturday").to_string();
    assert!(error.contains("no shift is planned"), "{error}");
    let error = Scenario::find(dir.path(), "nope")
        .expect_err("absent")
        .to_string();
    assert!(
        error.contains("no scenario \"nope\"") && error.contains("bad"),
        "{error}"
    );

    let scenario = press_line();
    for (change, wanted) in [
        ("belt_speed", "SETTING=AMOUNT"),
        ("belt_speed=fast", "expected a number"),
        ("warp_speed=+1", "no setting \"warp_speed\""),
        ("press_temp.colour=1", "sensors: press_temp"),
    ] {
        let error = change
            .parse::<Change>()
            .and_then(|c| scenario.changed(&[c]))
            .expect_err(change)
            .to_string();
        assert!(error.contains(wanted), "{change}: {error}");
    }
    // A change that leaves an impossible line is refused with the field, never a panic.
    for (change, field) in [
        ("belt_speed=-100%", "belt.speed_m_per_min"),
        ("belt_speed=+40%", "rated for"),
        ("pitch=1e-9", "belt.pitch_mm"),
        ("pitch=1e300", "fewer than one in 1000 min"),
        ("belt_speed=1e-300", "belt.camera_to_gate_mm"),
        ("camera_to_gate=1e300", "belt.camera_to_gate_mm"),
        ("verdict_margin=1e300", "station.verdict_margin_ms"),
        ("inspect_time=1e20", "station.inspect_ms_p99"),
    ] {
        let error = scenario
            .changed(&changes(&[change]))
            .expect_err(change)
            .to_string();
        assert!(error.contains(field), "{change}: {error}");
    }
    // A week runs; the analyses take a day at most.
    let mut week = scenario.clone();
    week.hours = 168.0;
    week.check().expect("a week is a valid run");
    let error = twin::whatif(&week, &[], Some(dir.path()))
        .expect_err("too long to analyse")
        .to_string();
    assert!(error.contains("at most 24 h"), "{error}");
    week.hours = 168.5;
    let error = week.check().expect_err("longer than a week").to_string();
    assert!(error.contains("at most 168 h"), "{error}");
    let mut huge = scenario.clone();
    huge.work_orders[0].due_h = 1e12;
    huge.work_orders[1].quantity = 0;
    let error = huge.check().expect_err("bad orders").to_string();
    assert!(
        error.contains("work_orders[0].due_h") && error.contains("work_orders[1].quantity"),
        "{error}"
    );
}

#[test]
fn the_cli_prints_the_table_and_json() {
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args([
            "whatif",
            "press-line",
            "--change",
            "belt_speed=+20%",
            "--hours",
            "1",
            "--json",
        ])
        .current_dir(repo())
        .output()
        .expect("run linesight");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["scenario"], "press-line");
    assert_eq!(json["changes"][0]["setting"], "belt_speed");
    assert!(json["changed"]["parts"]["made"].as_u64() > json["baseline"]["parts"]["made"].as_u64());

    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(["whatif", "press-line", "--change", "belt_speed=+x"])
        .current_dir(repo())
        .output()
        .expect("run linesight");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belt_speed=+x"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_station_runs_what_ifs_over_http_on_its_own_scenarios_only() {
    const TOKEN: &str = "twin-admin-token";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = station_config(dir.path(), &[]);
    config.admin_token = Some(TOKEN.into());
    let (_line, station) = simulated_station(config).await.expect("station prepares");
    let (base, server) = crate::serve_api_task(&station).await;
    let http = reqwest::Client::new();

    let (status, list) = send(
        http.get(format!("{base}/api/v1/scenarios"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"press-line"), "{list}");
    // What a change may name: every setting, and each scenario's own sensors.
    let settings: Vec<&str> = list["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(settings.contains(&"belt_speed"), "{list}");
    let press = list["scenarios"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "press-line"))
        .expect("press-line");
    assert!(
        press["sensors"]
            .as_array()
            .is_some_and(|s| s.iter().any(|t| t == "press_temp")),
        "{press}"
    );

    let whatif = |body: serde_json::Value| {
        send(
            http.post(format!("{base}/api/v1/whatif"))
                .bearer_auth(TOKEN)
                .json(&body),
        )
    };
    let (status, report) = whatif(json!({
        "scenario": "press-line",
        "changes": ["belt_speed=+20%"],
        "hours": 1.0,
    }))
    .await;
    assert_eq!(status, 200, "{report}");
    let per_min = |run: &str| report[run]["parts_per_min"].as_f64().expect("a number");
    assert!((per_min("changed") - 144.0).abs() < 1e-9, "{report}");
    assert!((per_min("baseline") - 120.0).abs() < 1e-9, "{report}");
    assert!(report["analysis"].is_null());
    // The same figures as the library gives.
    let mut scenario = press_line();
    scenario.hours = 1.0;
    let direct = twin::whatif(&scenario, &changes(&["belt_speed=+20%"]), None).expect("runs");
    assert_eq!(
        report["changed"]["parts"]["late"].as_u64(),
        Some(direct.changed.parts.late)
    );

    // Only the station's own scenarios by name: never a path.
    for name in [
        "../config/simulated-line",
        "/etc/passwd",
        "press-line.toml",
        "nope",
    ] {
        let (status, body) = whatif(json!({ "scenario": name })).await;
        assert_eq!(status, 404, "{name}: {body}");
    }
    let (status, body) = whatif(json!({ "scenario": "press-line", "changes": ["warp=+1"] })).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        whatif(json!({ "scenario": "press-line", "changes": ["belt_speed"] })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = whatif(json!({ "scenario": "press-line", "hours": 1e9 })).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = whatif(json!({ "scenario": "press-line", "speed": 1 })).await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
    let (status, _) = send(
        http.post(format!("{base}/api/v1/whatif"))
            .json(&json!({ "scenario": "press-line" })),
    )
    .await;
    assert_eq!(status, 401);
    server.abort();
}
