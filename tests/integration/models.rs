//! The model registry on a running line: promote, shadow and roll back over the HTTP API while
//! parts flow, and find every change in the records, durable across a restart.

use std::path::Path;
use std::time::Duration;

use linesight::record::{ModelAction, Store};
use linesight::station::RunOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, repo, simulated_station, station_config};

const TOKEN: &str = "test-admin-token";

/// A registry with the shipped model as `a`, and re-versioned copies with other thresholds:
/// `b` (0.5) and `c` (0.01, which fails nearly everything: a shadow that disagrees).
pub(crate) fn registry(root: &Path) -> [String; 3] {
    let shipped = repo().join("models/defect-net-sim");
    let card: Value = serde_json::from_str(
        &std::fs::read_to_string(shipped.join("card.json")).expect("shipped card"),
    )
    .expect("card JSON");
    let a = card["version"].as_str().expect("version").to_owned();
    for (name, version, threshold) in [
        (
            "a",
            a.as_str(),
            card["threshold"].as_f64().expect("threshold"),
        ),
        ("b", "defect-net-sim@test-b", 0.5),
        ("c", "defect-net-sim@test-c", 0.01),
    ] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(
            shipped.join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .expect("weights");
        let mut card = card.clone();
        card["version"] = json!(version);
        card["threshold"] = json!(threshold);
        std::fs::write(dir.join("card.json"), card.to_string()).expect("card");
    }
    [
        a,
        "defect-net-sim@test-b".into(),
        "defect-net-sim@test-c".into(),
    ]
}

/// Waits until the store holds `n` records; a line that stalls fails the test.
async fn records_reach(store: &Store, n: usize) {
    let waiting = async {
        while store.inspection_count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap_or_else(|_| panic!("the line stalled before {n} records"));
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("HTTP");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Issue 3: promotion and rollback are one API call each, recorded, and drop no frame; a
/// shadow model's verdicts are kept, never actuated; a restart runs what was live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_shadow_rollback_while_the_line_runs() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    let [a, b, c] = registry(&models);
    let model_dir = format!("dir = {:?}", models.join("a").display().to_string());
    let make_config = || {
        let mut config = station_config(
            &dir.path().join("data"),
            &[
                ("parts_per_min = 120", "parts_per_min = 300"),
                ("dir = \"../models/defect-net-sim\"", &model_dir),
                ("registry = \"../var/sim-1/models\"\n", ""),
            ],
        );
        config.admin_token = Some(TOKEN.into());
        config
    };
    let config = make_config();
    assert_eq!(
        config.model_registry, models,
        "registry defaults to the model's folder"
    );

    let (_sim, station) = simulated_station(config).await.expect("station starts");
    let (store, metrics) = (station.store(), station.metrics());
    let (base, server) = crate::serve_api_task(&station).await;
    let line = tokio::spawn(station.run(
        RunOptions {
            max_parts: Some(100),
        },
        CancellationToken::new(),
    ));

    let http = reqwest::Client::new();
    let url = |path: &str| format!("{base}/api/v1/models{path}");
    let authed = |request: reqwest::RequestBuilder| request.bearer_auth(TOKEN);

    records_reach(&store, 15).await;
    // Refused: no token, a wrong token, an unknown version, a malformed body.
    let (status, _) = send(http.post(url("/promote")).json(&json!({"version": b}))).await;
    assert_eq!(status, 401);
    let (status, _) = send(
        http.post(url("/promote"))
            .bearer_auth("nope")
            .json(&json!({"version": b})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) =
        send(authed(http.post(url("/promote"))).json(&json!({"version": "x"}))).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().expect("error").contains("\"x\""));
    let (status, _) = send(authed(http.post(url("/promote"))).body("{")).await;
    assert_eq!(status, 400);
    let (status, _) = send(authed(http.post(url("/rollback")))).await;
    assert_eq!(status, 409, "nothing to roll back to yet");

    let (status, body) =
        send(authed(http.post(url("/promote"))).json(&json!({"version": b}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous"], json!(a));
    let (status, _) = send(authed(http.post(url("/promote"))).json(&json!({"version": b}))).await;
    assert_eq!(status, 409, "promoting the live version again is refused");
    records_reach(&store, 35).await;
    let (status, body) = send(authed(http.put(url("/shadow"))).json(&json!({"version": c}))).await;
    assert_eq!(status, 200, "{body}");
    records_reach(&store, 55).await;
    let (status, body) = send(authed(http.post(url("/rollback")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!(a));
    records_reach(&store, 75).await;
    let (status, _) = send(authed(http.post(url("/promote"))).json(&json!({"version": b}))).await;
    assert_eq!(status, 200);
    let (status, view) = send(authed(http.get(url("")))).await;
    assert_eq!(status, 200);
    assert_eq!(view["live"]["version"], json!(b));
    assert_eq!(view["shadow"]["version"], json!(c));
    assert_eq!(view["available"].as_array().expect("list").len(), 3);
    let (status, summary) = send(authed(http.get(url("/shadow")))).await;
    assert_eq!(status, 200);
    assert!(
        summary["compared"].as_u64().expect("compared") > 0,
        "{summary}"
    );

    let report = line.await.expect("joins").expect("line runs");
    assert_eq!(report.parts, 100);
    assert_eq!(
        metrics.frames_dropped.get(),
        0,
        "a model change dropped frames"
    );
    assert_eq!(
        metrics.inspections_late.get(),
        0,
        "a model change delayed verdicts"
    );

    // The records show the changes in order: a… b… a… b…, each with its own threshold.
    let mut records = store.inspection_records(None, 1000).expect("records");
    records.sort_by_key(|r| r.part_id);
    assert_eq!(records.len(), 100);
    let mut runs: Vec<String> = Vec::new();
    for record in &records {
        let version = record.model_version.clone().expect("inspected");
        let expected_threshold = if version == b {
            0.5
        } else {
            records[0].threshold.expect("t")
        };
        assert_eq!(
            record.threshold,
            Some(expected_threshold),
            "part {}",
            record.part_id
        );
        if runs.last() != Some(&version) {
            runs.push(version);
        }
    }
    assert_eq!(runs, [a.clone(), b.clone(), a.clone(), b.clone()]);

    // The shadow saw parts from its start on, and disagreed where its threshold says so; the
    // gate only ever acted on the live verdicts (checked by the dispositions above and below).
    let first_shadowed = records
        .iter()
        .find(|r| store.shadow_verdict(r.part_id).expect("sled").is_some())
        .expect("the shadow saw parts")
        .part_id;
    let mut disagreements = 0;
    for record in records.iter().filter(|r| r.part_id >= first_shadowed) {
        if let Some(shadow) = store.shadow_verdict(record.part_id).expect("sled") {
            assert_eq!(shadow.version, c);
            assert_eq!(Some(shadow.live_verdict), record.verdict);
            disagreements += usize::from(Some(shadow.verdict) != record.verdict);
        }
    }
    assert!(
        disagreements > 0,
        "a 0.01 threshold must fail parts the live model passes"
    );
    for record in &records {
        let failed = record.verdict == Some(linesight::part::Verdict::Fail);
        assert_eq!(
            record.disposition == linesight::part::Disposition::RejectFailed,
            failed,
            "part {}: the gate follows the live verdict",
            record.part_id
        );
    }

    let actions: Vec<ModelAction> = store
        .model_events()
        .expect("events")
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            ModelAction::Promote,
            ModelAction::ShadowStart,
            ModelAction::Rollback,
            ModelAction::Promote
        ]
    );
    // Close everything holding the store, as a process exit would.
    drop((store, http));
    server.abort();
    let _ = server.await;

    // A restart runs the last promoted version and the shadow, not the config's model.
    let mut attempts = 0;
    let station = loop {
        match simulated_station(make_config()).await {
            Ok((_sim, station)) => break station,
            // Connection tasks of the old server may hold the database for a moment.
            Err(error) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(%error, "store still held");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("station restarts: {error}"),
        }
    };
    let status = station.api().models.status();
    assert_eq!(status.live.version, b);
    assert_eq!(status.shadow.map(|s| s.version), Some(c));
}

/// Issue 19: the defect-class taxonomy. The TOML seeds it; an engineer replaces it over the
/// API (operators may read it, not change it), bad classes are refused with the field that is
/// wrong, each change is audited, and the saved taxonomy wins over the TOML after a restart.
/// A saved file that was damaged stops the station with its path, never silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_classes_are_edited_audited_and_kept_across_a_restart() {
    use linesight::serve::{Role, Tokens};

    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (operator_token, engineer_token) = (
        token("op-1", Role::Operator),
        token("eng-1", Role::Engineer),
    );
    drop(tokens);

    let (_line, station) = simulated_station(station_config(dir.path(), &[]))
        .await
        .expect("station starts");
    let store = station.store();
    let (base, server) = crate::serve_api_task(&station).await;
    let http = reqwest::Client::new();
    let client = |token: &str| crate::Client {
        http: http.clone(),
        base: base.clone(),
        token: token.to_owned(),
    };
    let (operator, engineer) = (client(&operator_token), client(&engineer_token));
    const PATH: &str = "/api/v1/defect-classes";

    // The TOML's classes, in its order, each rejecting.
    let (status, seeded) = operator.get(PATH).await;
    assert_eq!(status, 200, "{seeded}");
    let names: Vec<&str> = seeded["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["crack", "dent", "scratch", "spot"]);
    assert_eq!(seeded["classes"][0]["severity"], json!("critical"));
    assert!(
        seeded["classes"]
            .as_array()
            .expect("classes")
            .iter()
            .all(|c| c["rejects"] == json!(true))
    );

    // Spots tolerated, a new class added.
    let mut edited = seeded.clone();
    edited["classes"][3]["rejects"] = json!(false);
    edited["classes"]
        .as_array_mut()
        .expect("classes")
        .push(json!({"name": "burr", "colour": "#2ca02c", "severity": "minor"}));
    let (status, _) = operator.put(PATH, edited.clone()).await;
    assert_eq!(status, 403, "operators do not change what the gate rejects");

    // Refused with the reason: a class named twice, a colour that is not one, an unknown field.
    let mut twice = edited.clone();
    twice["classes"][4]["name"] = json!("crack");
    let mut bad_colour = edited.clone();
    bad_colour["classes"][1]["colour"] = json!("orange");
    let mut unknown = edited.clone();
    unknown["classes"][0]["blocks_line"] = json!(true);
    for (body, reason) in [
        (twice, "classes[4].name: \"crack\" is named twice"),
        (bad_colour, "classes[1].colour"),
        (unknown, "blocks_line"),
        (json!({"classes": [{"name": "x"}]}), "colour"),
    ] {
        let (status, answer) = engineer.put(PATH, body).await;
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().expect("error");
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
    }
    let (_, unchanged) = operator.get(PATH).await;
    assert_eq!(unchanged, seeded, "a refused change changes nothing");

    // A change made from an older version is refused (412); from the current one it is made.
    let version = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .expect("an ETag")
            .to_owned()
    };
    let (_, headers, _) = engineer.send(http.get(format!("{base}{PATH}"))).await;
    let seeded_version = version(&headers);
    let (status, _, body) = engineer
        .send(
            http.put(format!("{base}{PATH}"))
                .header("if-match", "\"0123456789abcdef\"")
                .json(&edited),
        )
        .await;
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("changed since"), "{body}");
    let (status, headers, body) = engineer
        .send(
            http.put(format!("{base}{PATH}"))
                .header("if-match", &seeded_version)
                .json(&edited),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let saved: Value = serde_json::from_str(&body).expect("json");
    assert_ne!(
        version(&headers),
        seeded_version,
        "a change has a new version"
    );
    let (status, _, _) = engineer
        .send(
            http.put(format!("{base}{PATH}"))
                .header("if-match", &seeded_version)
                .json(&edited),
        )
        .await;
    assert_eq!(status, 412, "the old version no longer matches");
    assert_eq!(
        saved["classes"][4]["rejects"],
        json!(true),
        "rejects by default"
    );
    let (_, now) = operator.get(PATH).await;
    assert_eq!(now["classes"], saved["classes"]);
    assert_eq!(
        saved["relabelled"],
        json!(0),
        "no rename, no label rewritten"
    );
    assert_eq!(now["classes"][3]["rejects"], json!(false));

    // Audited once, with who and what rejects now.
    let audits: Vec<_> = store
        .records_of_kind(linesight::record::RecordKind::Audit)
        .expect("audit")
        .into_iter()
        .filter_map(|r| match r.body {
            linesight::record::RecordBody::Audit(a) if a.action == "defect_classes.set" => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0].actor, "eng-1");
    assert_eq!(
        audits[0].target,
        "5 classes; rejected: crack, dent, scratch, burr; passed: spot"
    );

    // A renamed class keeps its labels: every part whose latest label names it is relabelled
    // (its class and its regions'), the rest untouched. A merge is no rename.
    use linesight::record::{LabelRecord, RecordBody, Region, Shape};
    let label = |part_id: u64, class: &str, region: &str| {
        RecordBody::Label(LabelRecord {
            part_id,
            supersedes: 0,
            verdict: linesight::part::Verdict::Fail,
            defect_class: Some(class.into()),
            note: None,
            by: "eng-2".into(),
            image: Some("ab".repeat(32)),
            regions: vec![Region {
                class: region.into(),
                shape: Shape::Box {
                    x: 1.0,
                    y: 1.0,
                    width: 2.0,
                    height: 2.0,
                },
            }],
        })
    };
    store
        .append_all(vec![
            label(1, "crack", "crack"),
            label(2, "dent", "dent"),
            label(3, "dent", "crack"),
            label(4, "crack", "crack"),
            label(4, "dent", "dent"),
        ])
        .await
        .expect("labels");
    let mut renamed = now.clone();
    renamed["classes"][0]["name"] = json!("hairline");
    for (renames, reason) in [
        (json!({"crack": "dent"}), "merging classes is not a rename"),
        (
            json!({"chip": "hairline"}),
            "\"chip\" is not a defect class now",
        ),
        (
            json!({"crack": "hairline", "dent": "hairline"}),
            "is renamed \"hairline\" too",
        ),
    ] {
        let mut body = renamed.clone();
        body["renames"] = renames;
        let (status, answer) = engineer.put(PATH, body).await;
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().expect("error");
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
    }
    let mut kept = now.clone();
    kept["renames"] = json!({"crack": "hairline"});
    let (status, answer) = engineer.put(PATH, kept).await;
    assert_eq!(status, 400, "crack is still listed: {answer}");
    renamed["renames"] = json!({"crack": "hairline"});
    let (status, answer) = engineer.put(PATH, renamed).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["relabelled"], json!(2), "parts 1 and 3: {answer}");
    assert_eq!(answer["classes"][0]["name"], json!("hairline"));
    let latest = |part_id: u64| match store.labels(part_id).expect("labels").pop() {
        Some(linesight::record::Record {
            body: RecordBody::Label(label),
            ..
        }) => label,
        other => panic!("part {part_id}: {other:?}"),
    };
    let one = latest(1);
    assert_eq!(
        (one.defect_class.as_deref(), one.regions[0].class.as_str()),
        (Some("hairline"), "hairline")
    );
    assert_eq!(one.by, "eng-1", "relabelled by who renamed the class");
    assert_eq!(one.note.as_deref(), Some("class renamed: crack → hairline"));
    assert_eq!(one.image, Some("ab".repeat(32)), "the rest as it was");
    let renamed = &store.labels(1).expect("labels")[..];
    assert_eq!(
        one.supersedes,
        renamed[renamed.len() - 2].seq,
        "the new label supersedes the one it renames"
    );
    let three = latest(3);
    assert_eq!(
        (
            three.defect_class.as_deref(),
            three.regions[0].class.as_str()
        ),
        (Some("dent"), "hairline")
    );
    for (part_id, labels) in [(2, 1), (4, 2)] {
        assert_eq!(
            store.labels(part_id).expect("labels").len(),
            labels,
            "part {part_id}'s latest label names no crack"
        );
    }
    let renamed_audit = store
        .records_of_kind(linesight::record::RecordKind::Audit)
        .expect("audit")
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::Audit(a) if a.action == "defect_classes.set" => Some(a.target),
            _ => None,
        })
        .next_back();
    assert_eq!(
        renamed_audit.as_deref(),
        Some(
            "5 classes; rejected: hairline, dent, scratch, burr; passed: spot; renamed crack → hairline"
        )
    );

    // A restart with the same TOML keeps the engineer's taxonomy.
    drop((store, station, http));
    server.abort();
    let _ = server.await;
    let restarted = restart(|| station_config(dir.path(), &[])).await;
    assert_eq!(
        restarted.api().models.taxonomy().classes().len(),
        5,
        "the saved taxonomy, not the TOML's four"
    );
    assert!(!restarted.api().models.taxonomy().rejects(Some("spot")));
    drop(restarted);

    // A damaged file stops the station and names it.
    let file = dir.path().join(linesight::inspect::taxonomy::FILE_NAME);
    std::fs::write(&file, b"{\"classes\": [").expect("damage");
    let error = match simulated_station(station_config(dir.path(), &[])).await {
        Ok(_) => panic!("a damaged taxonomy must stop the station"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&file.display().to_string()), "{error}");
}

/// Starts the station again on the same data folder, waiting while the old one's tasks still
/// hold the record store.
async fn restart(
    config: impl Fn() -> linesight::config::StationConfig,
) -> linesight::station::Station {
    for _ in 0..50 {
        match simulated_station(config()).await {
            Ok((_line, station)) => return station,
            Err(error) => {
                tracing::debug!(%error, "store still held");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("the station did not restart within 5 s");
}
