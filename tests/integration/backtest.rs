//! Replay and provenance (issue 20): a recorded period replayed through a candidate model, on
//! the running station over HTTP and from the command line on the stopped one, and one record
//! explained. Replaying through the model that decided the period gives its verdicts back; any
//! other threshold changes exactly the parts whose recorded scores lie between the two.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use linesight::record::{InspectionRecord, Store};
use linesight::station::RunOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::models::{registry, send};
use crate::{CPU_HEAVY, repo, simulated_station, station_config};

const TOKEN: &str = "test-admin-token";

/// Each camera's recorded score of a part (the part fails at a threshold when any reaches it).
fn view_scores(record: &InspectionRecord) -> Vec<f32> {
    if record.views.is_empty() {
        record.score.into_iter().collect()
    } else {
        record.views.iter().filter_map(|v| v.score).collect()
    }
}

/// The parts whose verdict at `threshold` differs from their recorded one, by their scores.
fn parts_changed_at(records: &[InspectionRecord], threshold: f32) -> BTreeSet<u64> {
    records
        .iter()
        .filter(|r| {
            let fails_now = view_scores(r).iter().any(|&s| s >= threshold);
            let failed = r.verdict == Some(linesight::part::Verdict::Fail);
            fails_now != failed
        })
        .map(|r| r.part_id)
        .collect()
}

/// A threshold halfway between two neighbouring recorded scores near the middle, so that a
/// replay must reproduce scores, not merely come close, to change exactly the parts expected.
fn threshold_between_scores(records: &[InspectionRecord], below: f32) -> f32 {
    let mut scores: Vec<f32> = records.iter().flat_map(view_scores).collect();
    scores.sort_by(f32::total_cmp);
    scores.dedup();
    let under: Vec<f32> = scores.iter().copied().filter(|&s| s < below).collect();
    assert!(under.len() >= 4, "too few scores under {below}: {scores:?}");
    let i = under.len() / 2;
    (under[i] + under[i + 1]) / 2.0
}

/// Starts a backtest on the station and waits for its report.
async fn backtest_on(
    http: &reqwest::Client,
    base: &str,
    request: Value,
) -> Result<Value, (u16, Value)> {
    let (status, job) = send(
        http.post(format!("{base}/api/v1/backtests"))
            .bearer_auth(TOKEN)
            .json(&request),
    )
    .await;
    if status != 202 {
        return Err((status, job));
    }
    assert_eq!(job["state"], "running", "{job}");
    let id = job["id"].as_u64().expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let last = loop {
        let (_, job) = send(
            http.get(format!("{base}/api/v1/backtests/{id}"))
                .bearer_auth(TOKEN),
        )
        .await;
        if job["state"] != "running" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backtest {id} still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last["state"], "done", "{last}");
    Ok(last["report"].clone())
}

fn changed_parts(report: &Value) -> BTreeSet<u64> {
    report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["part_id"].as_u64().expect("part id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_replayed_over_recorded_parts_changes_exactly_the_verdicts_its_scores_say() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    let [live, _, strict] = registry(&models);
    let model_dir = format!("dir = {:?}", models.join("a").display().to_string());
    let data = dir.path().join("data");
    let mut config = station_config(
        &data,
        &[
            ("parts_per_min = 120", "parts_per_min = 300"),
            // Defects common enough that the period has failed parts on both cameras.
            ("defect_rate = 0.05", "defect_rate = 0.3"),
            ("dir = \"../models/defect-net-sim\"", &model_dir),
            // The registry is the model's folder, as by default.
            ("registry = \"../var/sim-1/models\"\n", ""),
        ],
    );
    config.admin_token = Some(TOKEN.into());
    let (_sim, station) = simulated_station(config).await.expect("station starts");
    let store: Store = station.store();
    let (base, server) = crate::serve_api_task(&station).await;
    let parts = 40;
    let report = station
        .run(
            RunOptions {
                max_parts: Some(parts),
            },
            CancellationToken::new(),
        )
        .await
        .expect("line runs");
    assert_eq!(report.parts, parts);
    let mut records = store.inspection_records(None, 1000).expect("records");
    records.reverse();
    assert_eq!(records.len() as u64, parts);
    assert!(
        records.iter().all(|r| r.views.len() == 2),
        "the shipped line has two cameras"
    );
    let recorded_threshold = records[0].threshold.expect("threshold");
    let from = records[0].decided_at - chrono::Duration::seconds(1);
    let to = records[records.len() - 1].decided_at + chrono::Duration::seconds(1);
    let http = reqwest::Client::new();

    // The model that decided the period, at its threshold: every verdict comes back.
    let same = backtest_on(&http, &base, json!({"model": live, "from": from, "to": to}))
        .await
        .expect("backtest starts");
    assert_eq!(same["parts_in_period"], parts, "{same}");
    assert_eq!(same["replayed"], parts, "{same}");
    assert_eq!(same["agreed"], parts, "{same}");
    assert_eq!(same["changes"], json!([]), "{same}");
    assert_eq!(same["recorded_models"][&live], parts, "{same}");
    assert_eq!(
        same["threshold"].as_f64().map(|t| t as f32),
        Some(recorded_threshold)
    );

    // Any record explains itself: the model and its card, each camera's score against the
    // threshold and the margin, the calibration file that shaped each image.
    let failed = records
        .iter()
        .find(|r| r.verdict == Some(linesight::part::Verdict::Fail))
        .expect("a failed part");
    let (status, explained) = send(
        http.get(format!(
            "{base}/api/v1/inspections/{}/explanation",
            failed.part_id
        ))
        .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{explained}");
    let summary = explained["summary"].as_str().expect("summary");
    assert!(summary.starts_with("Rejected: camera `"), "{summary}");
    assert!(
        summary.contains(&live) && summary.contains("simulated"),
        "{summary}"
    );
    assert_eq!(explained["model"]["kind"], "defect-net", "{explained}");
    assert_eq!(explained["model_version"], json!(live));
    let looks = explained["looks"].as_array().expect("looks");
    assert_eq!(looks.len(), 2);
    for (look, view) in looks.iter().zip(&failed.views) {
        assert_eq!(look["camera"], json!(view.camera));
        let calibration = look["calibration"].as_str().expect("calibration named");
        assert_eq!(Some(calibration), view.calibration.as_deref());
        assert!(calibration.starts_with("simulated"), "{calibration}");
        let margin = look["margin"].as_f64().expect("margin") as f32;
        let expected_margin = view.score.expect("score") - recorded_threshold;
        assert!((margin - expected_margin).abs() < 1e-5, "{look}");
    }
    let (status, _) = send(
        http.get(format!("{base}/api/v1/inspections/999999/explanation"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 404);

    // The same weights at a threshold between two recorded scores: exactly the parts whose
    // scores lie between the two thresholds change, each with its image and heat map.
    let lower = threshold_between_scores(&records, recorded_threshold);
    let expected = parts_changed_at(&records, lower);
    assert!(!expected.is_empty(), "a lower threshold rejects more parts");
    let lowered = backtest_on(
        &http,
        &base,
        json!({"model": live, "from": from, "to": to, "threshold": lower}),
    )
    .await
    .expect("backtest starts");
    assert_eq!(changed_parts(&lowered), expected, "{lowered}");
    assert_eq!(
        lowered["changed"]["pass_to_fail"],
        expected.len(),
        "{lowered}"
    );
    assert_eq!(lowered["changed"]["fail_to_pass"], 0, "{lowered}");
    for change in lowered["changes"].as_array().expect("changes") {
        assert_eq!(change["recorded"]["verdict"], "pass", "{change}");
        assert_eq!(change["candidate"]["verdict"], "fail", "{change}");
        let score = change["candidate"]["score"].as_f64().expect("score") as f32;
        assert!(score >= lower && score < recorded_threshold, "{change}");
        for picture in ["image", "candidate_heat_map"] {
            let digest = change[picture].as_str().expect("a picture");
            let (status, _) = send(
                http.get(format!("{base}/api/v1/images/{digest}"))
                    .bearer_auth(TOKEN),
            )
            .await;
            // 200 with a PNG body that is not JSON.
            assert_eq!(status, 200, "{picture} of {change}");
        }
    }

    // Another version at its own card's threshold (0.01): the report says which it ran.
    let strict_report = backtest_on(
        &http,
        &base,
        json!({"model": strict, "from": from, "to": to}),
    )
    .await
    .expect("backtest starts");
    assert_eq!(strict_report["model_version"], json!(strict));
    assert_eq!(
        strict_report["threshold"].as_f64().map(|t| t as f32),
        Some(0.01)
    );
    assert_eq!(
        changed_parts(&strict_report),
        parts_changed_at(&records, 0.01),
        "{strict_report}"
    );

    // A part whose image retention has evicted is counted as not replayable, never guessed.
    let evicted = &records[3];
    let digest = evicted.views[1].image.as_deref().expect("side image");
    std::fs::remove_file(store.images().path(digest).expect("stored")).expect("evict");
    let partial = backtest_on(
        &http,
        &base,
        json!({"model": live, "from": from, "to": to, "max_parts": 10}),
    )
    .await
    .expect("backtest starts");
    assert_eq!(partial["truncated"], true, "{partial}");
    assert_eq!(partial["replayed"], 9, "{partial}");
    let reasons = partial["not_replayable"].as_object().expect("reasons");
    assert_eq!(reasons.len(), 1, "{partial}");
    let (reason, count) = reasons.iter().next().expect("one reason");
    assert!(
        reason.contains("camera `side`") && reason.contains("no longer stored"),
        "{reason}"
    );
    assert_eq!(count, 1);

    // Refused with the reason: an unknown version, an empty period, a threshold the model's
    // scale cannot take, an unknown field, no token.
    for (request, status) in [
        (json!({"model": "nope", "from": from, "to": to}), 404),
        (json!({"model": live, "from": to, "to": from}), 400),
        (
            json!({"model": live, "from": from, "to": "+10000-01-01T00:00:00Z"}),
            400,
        ),
        (
            json!({"model": live, "from": from, "to": to, "threshold": 7.0}),
            400,
        ),
        (
            json!({"model": live, "from": from, "to": to, "speed": 2}),
            400,
        ),
        (
            json!({"model": live, "from": from, "to": to, "max_parts": 0}),
            400,
        ),
    ] {
        let (got, body) = backtest_on(&http, &base, request.clone())
            .await
            .expect_err("refused");
        assert_eq!(got, status, "{request}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, _) = send(
        http.post(format!("{base}/api/v1/backtests"))
            .json(&json!({"model": live, "from": from, "to": to})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, list) = send(
        http.get(format!("{base}/api/v1/backtests"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        list["backtests"].as_array().map(Vec::len),
        Some(4),
        "{list}"
    );
    // Each backtest that started is on the record with who asked; the refused ones are not.
    let (status, audit) = send(
        http.get(format!(
            "{base}/api/v1/records?from=1&limit=5000&kind=audit"
        ))
        .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let started = (audit["items"].as_array().expect("items").iter())
        .filter(|e| e["action"] == "backtest.start")
        .count();
    assert_eq!(started, 4, "{audit}");
    // A finished backtest cannot be cancelled, an unknown one is not found, and nobody
    // without a token cancels anything (the cancel itself: `inspect::backtest`'s tests).
    let finished = list["backtests"][0]["id"].as_u64().expect("id");
    for (id, token, status) in [
        (finished, Some(TOKEN), 409),
        (999_999, Some(TOKEN), 404),
        (finished, None, 401),
    ] {
        let request = http.post(format!("{base}/api/v1/backtests/{id}/cancel"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let (got, body) = send(request).await;
        assert_eq!(got, status, "cancel {id}: {body}");
    }

    // The command line on the running station: the same report.
    let (http_base, models_dir) = (base.clone(), models.clone());
    let lower_text = lower.to_string();
    let (from_text, to_text) = (from.to_rfc3339(), to.to_rfc3339());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_linesight"))
            .args(["backtest", "--model", &live, "--threshold", &lower_text])
            .args(["--from", &from_text, "--to", &to_text, "--json"])
            .args(["--station", &http_base, "--token", TOKEN])
            .output()
            .expect("runs")
    })
    .await
    .expect("joins");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(changed_parts(&cli), expected);

    // And on the stopped station, reading its store itself.
    server.abort();
    let _ = server.await;
    drop(store);
    let live = records[0].model_version.clone().expect("version");
    let stopped = repo().join("config/simulated-line.toml");
    let mut args: Vec<String> = vec!["backtest".into(), "--model".into(), live];
    for (flag, value) in [
        ("--threshold", lower.to_string()),
        ("--from", from.to_rfc3339()),
        ("--to", to.to_rfc3339()),
        ("--config", stopped.display().to_string()),
        ("--data-dir", data.display().to_string()),
        ("--registry", models_dir.display().to_string()),
    ] {
        args.extend([flag.to_owned(), value]);
    }
    args.push("--json".into());
    // The store is released once the station's last handle is dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let report: Value = loop {
        let args = args.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_linesight"))
                .args(&args)
                .output()
                .expect("runs")
        })
        .await
        .expect("joins");
        if output.status.success() {
            break serde_json::from_slice(&output.stdout).expect("JSON report");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stopped station's backtest failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["replayed"], parts - 1, "{report}");
    let mut without_evicted = expected.clone();
    without_evicted.remove(&evicted.part_id);
    assert_eq!(changed_parts(&report), without_evicted);
}
