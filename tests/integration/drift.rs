//! Issue 21, drift: the simulated line's lamp loses a quarter of its light mid-run. The drift
//! watch says nothing while the parts look as they did in training, raises `model_drift`
//! through the alarm life cycle once they no longer do, names the relit parts, and the
//! labelling queue offers them for a retrain.

use std::time::Duration;

use linesight::serve::{Role, Tokens};
use linesight::station::RunOptions;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, Client, serve_api, simulated_station, station_config};

/// The first part the camera sees under the dimmer lamp.
const RELIT_FROM: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimmer_lamp_raises_model_drift_and_queues_the_parts_it_changed() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let lighting = format!(
        "[camera.simulator.lighting]\nfrom_part = {RELIT_FROM}\ngain = 0.75\n\n[camera.simulator.downtime]"
    );
    let config = station_config(
        dir.path(),
        &[
            ("parts_per_min = 120", "parts_per_min = 360"),
            ("[camera.simulator.downtime]", lighting.as_str()),
            // No stop of the belt while the test runs.
            ("first_at_s = 150", "first_at_s = 3000"),
        ],
    );
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (operator_token, engineer_token) = (
        token("op-1", Role::Operator),
        token("eng-1", Role::Engineer),
    );
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let store = station.store();
    let base = serve_api(&station).await;
    let stop = CancellationToken::new();
    let line = tokio::spawn(station.run(RunOptions { max_parts: None }, stop.clone()));
    let http = reqwest::Client::new();
    let client = |token: &str| Client {
        http: http.clone(),
        base: base.clone(),
        token: token.to_owned(),
    };
    let (operator, engineer) = (client(&operator_token), client(&engineer_token));

    // Every report the watch gives, until it finds the drift (or two minutes pass).
    let mut reports: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut drifted = false;
    while !drifted && tokio::time::Instant::now() < deadline {
        let (status, body) = operator.get("/api/v1/drift").await;
        assert_eq!(status, 200, "{body}");
        let report = body["report"].clone();
        if !report.is_null() {
            drifted = report["drifting"] == true;
            if reports.last() != Some(&report) {
                reports.push(report);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names = |report: &Value| {
        report["checks"]
            .as_array()
            .map(|checks| {
                checks
                    .iter()
                    .map(|c| format!("{}={}", c["check"], c["state"]))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert!(
        drifted,
        "no drift found; the watch said: {:?}",
        reports
            .iter()
            .map(|r| (r["newest_part_id"].clone(), names(r)))
            .collect::<Vec<_>>()
    );

    // Before the lamp changed, the watch compared enough parts and found nothing.
    let before: Vec<&Value> = reports
        .iter()
        .filter(|r| {
            r["newest_part_id"]
                .as_u64()
                .is_some_and(|id| id < RELIT_FROM)
        })
        .filter(|r| r["checks"][0]["parts"].as_u64().unwrap_or(0) >= 50)
        .collect();
    assert!(
        !before.is_empty(),
        "no evaluation on 50 or more parts before the change"
    );
    for report in &before {
        assert_eq!(report["drifting"], false, "{report}");
        assert_eq!(report["has_reference"], true);
    }

    // After: the inputs drift, in the words of the statistic that moved, and the parts named
    // are the relit ones.
    let report = reports.last().expect("the drifting report").clone();
    println!(
        "{} evaluations on 50+ parts before the change; then: {}",
        before.len(),
        report["message"]
    );
    let inputs = &report["checks"][0];
    assert_eq!(inputs["check"], "inputs");
    assert_eq!(inputs["state"], "drifting", "{report}");
    let detail = inputs["detail"].as_str().unwrap_or_default();
    assert!(
        ["brightness", "shadows", "highlights", "contrast"]
            .iter()
            .any(|w| detail.contains(w)),
        "{detail}"
    );
    let named: Vec<u64> = report["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["check"] == "inputs")
        .filter_map(|p| p["part_id"].as_u64())
        .collect();
    assert!(!named.is_empty(), "{report}");
    assert!(named.iter().all(|&id| id >= RELIT_FROM), "{named:?}");

    // The alarm goes through the life cycle: active, unacknowledged, with the message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut alarm = Value::Null;
    let mut raised = false;
    while !raised && tokio::time::Instant::now() < deadline {
        alarm = operator.get("/api/v1/alarms/model_drift").await.1;
        raised = alarm["active"] == true;
        if !raised {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(raised, "model_drift not active: {alarm}");
    let message = alarm["condition"]
        .as_str()
        .or_else(|| alarm["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("no longer fits"), "{alarm}");
    let (_, metrics_text) = {
        let (status, _, text) = operator.send(http.get(format!("{base}/metrics"))).await;
        (status, text)
    };
    assert!(metrics_text.contains("model_drift 1"), "{metrics_text}");

    // The labelling queue offers the relit parts, because they are unlike the training images.
    let (status, queue) = engineer.get("/api/v1/labelling/queue?limit=200").await;
    assert_eq!(status, 200, "{queue}");
    let unlike: Vec<u64> = queue["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| {
            item["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "unlike_training"))
        })
        .filter_map(|item| item["part_id"].as_u64())
        .collect();
    assert!(
        named.iter().any(|id| unlike.contains(id)),
        "named {named:?}, queued as unlike the training images {unlike:?}"
    );
    stop.cancel();
    line.await.expect("join").expect("line runs");

    // What the records keep: nearly every relit part past the limit, nearly no earlier one.
    let records = store.inspection_records(None, 5000).expect("read");
    let share = |relit: bool| {
        let measured: Vec<_> = records
            .iter()
            .filter(|r| (r.part_id >= RELIT_FROM) == relit)
            .filter_map(|r| r.novelty)
            .collect();
        let novel = measured.iter().filter(|n| n.is_novel()).count();
        (novel, measured.len())
    };
    let (novel_before, measured_before) = share(false);
    let (novel_after, measured_after) = share(true);
    assert!(
        measured_before >= 100,
        "{measured_before} parts measured before the change"
    );
    assert!(
        novel_before * 20 <= measured_before,
        "{novel_before} of {measured_before} unchanged parts unlike the training images"
    );
    assert!(
        novel_after * 10 >= measured_after * 9 && measured_after > 0,
        "only {novel_after} of {measured_after} relit parts unlike the training images"
    );
}
