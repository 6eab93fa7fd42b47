//! Training from the browser's API on a running station: a new product onboards from the
//! parts the live model passed (an anomaly model, trained while the line runs, with progress,
//! validation figures and heat maps), lands in the registry and runs in shadow; a supervised
//! model learns from labelled parts; a product the station has not seen onboards from images
//! uploaded from a computer; a running job is cancelled. Refused with a reason: other roles,
//! bad names, empty periods, a second job while one runs, and a period without enough
//! labelled defects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use linesight::part::GrayImage;
use linesight::record::{RecordBody, RecordKind, Store, gray_png};
use linesight::serve::{Role, Tokens};
use linesight::station::RunOptions;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    CPU_HEAVY, Client, actions, backbone_weights, eventually, golden, repo, serve_api,
    simulated_station, station_config,
};

/// Waits (up to 5 minutes) until training job `id` has finished, collecting the phases seen
/// while it ran.
async fn finished(client: &Client, id: u64, phases: &mut Vec<String>) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (status, job) = client.get(&format!("/api/v1/training/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        if let Some(phase) = job["progress"]["phase"].as_str() {
            phases.push(phase.to_owned());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "training job {id} still running after 5 minutes: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A registry of its own under `dir`, with the shipped live model in it: trained models are
/// written into it. The registry's folder, and the station config's lines naming the live
/// model's folder and the registry.
fn own_registry(dir: &Path) -> (PathBuf, String, String) {
    let models = dir.join("models");
    let live_dir = models.join("defect-net-sim");
    std::fs::create_dir_all(&live_dir).expect("mkdir");
    for file in ["model.safetensors", "card.json"] {
        std::fs::copy(
            repo().join("models/defect-net-sim").join(file),
            live_dir.join(file),
        )
        .expect("copy the shipped model");
    }
    let model_dir = format!("dir = {:?}", live_dir.display().to_string());
    let registry = format!("registry = {:?}", models.display().to_string());
    (models, model_dir, registry)
}

/// Waits until the job `started` has finished, as [`finished`], and checks it is done.
async fn trained(client: &Client, started: &Value) -> Value {
    let id = started["id"].as_u64().expect("a job's id");
    let job = finished(client, id, &mut Vec::new()).await;
    assert_eq!(job["state"], "done", "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_product_onboards_from_its_passed_parts_and_a_supervised_model_from_labels() {
    let _one = CPU_HEAVY.lock().await;
    backbone_weights(); // the station finds them where `make weights` put them
    let dir = tempfile::tempdir().expect("tempdir");
    let (models, model_dir, registry) = own_registry(dir.path());
    let config = station_config(
        &dir.path().join("data"),
        &[
            ("parts_per_min = 120", "parts_per_min = 300"),
            ("dir = \"../models/defect-net-sim\"", &model_dir),
            ("registry = \"../var/sim-1/models\"", &registry),
        ],
    );
    let tokens = Tokens::open(&dir.path().join("data"), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (engineer_token, operator_token) = (
        token("eng-1", Role::Engineer),
        token("op-1", Role::Operator),
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
    let (engineer, operator) = (client(&engineer_token), client(&operator_token));

    eventually(
        "24 passed parts and 12 rejected ones with images",
        || async {
            let parts = store.inspection_records(None, 500).expect("read");
            let count = |verdict: &str| {
                parts
                    .iter()
                    .filter(|p| p.image.is_some())
                    .filter(|p| p.verdict.map(|v| v.as_str()) == Some(verdict))
                    .count()
            };
            count("pass") >= 24 && count("fail") >= 12
        },
    )
    .await;
    let from = "2000-01-01T00:00:00Z";
    let to = "2100-01-01T00:00:00Z";
    let anomaly = json!({"family": "anomaly", "name": "onboarded", "from": from, "to": to});

    // Refused with a reason.
    let (status, _) = operator.post("/api/v1/training", anomaly.clone()).await;
    assert_eq!(status, 403, "operators do not train models");
    for (body, says) in [
        (
            json!({"family": "anomaly", "name": "../escape", "from": from, "to": to}),
            "model name",
        ),
        (
            json!({"family": "anomaly", "name": "p", "from": to, "to": from}),
            "must be before",
        ),
        (
            json!({"family": "anomaly", "name": "p", "from": from, "to": to, "epochs": 3}),
            "unknown field",
        ),
        (
            json!({"family": "forest", "name": "p", "from": from, "to": to}),
            "unknown variant",
        ),
        // No square the station has not been measured at.
        (
            json!({"family": "anomaly", "name": "p", "from": from, "to": to,
                "input_size": "4096"}),
            "`input_size` is one of auto, auto:512, 128, 256, 512",
        ),
        (
            json!({"family": "anomaly", "name": "p", "from": from, "to": to,
                "input_size": 256}),
            "invalid type",
        ),
        // Turns by their names only, and only for the family that takes them.
        (
            json!({"family": "anomaly", "name": "p", "from": from, "to": to,
                "orientations": "upside-down"}),
            "\"upside-down\" is not a turn: `none`, `auto`, `all` or some of flip-horizontal",
        ),
        (
            json!({"family": "anomaly", "name": "p", "from": from, "to": to,
                "orientations": "rotate90, rotate180"}),
            "names comma-separated, without spaces",
        ),
        (
            json!({"family": "supervised", "name": "p", "from": from, "to": to,
                "orientations": "auto"}),
            "`orientations` is for anomaly models",
        ),
    ] {
        let (status, error) = engineer.post("/api/v1/training", body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        let error = error["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{body}: {error}");
    }

    // A supervised model with nothing labelled: the job says what the period lacks.
    let (status, job) = engineer
        .post(
            "/api/v1/training",
            json!({"family": "supervised", "name": "sup", "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job = finished(&engineer, job["id"].as_u64().expect("id"), &mut Vec::new()).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().expect("error");
    assert!(
        error.contains("good parts") && error.contains("label more parts good"),
        "{error}"
    );

    // A job cancelled as soon as it starts stops within a step, adds no model, leaves no
    // scratch folder, and frees the station for the next job. Refused with a reason: other
    // roles, unknown jobs, a job that is no longer running.
    let (status, started) = engineer
        .post(
            "/api/v1/training",
            json!({"family": "anomaly", "name": "cancelled", "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().expect("id");
    let (status, _) = operator
        .post(&format!("/api/v1/training/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 403, "operators do not cancel training");
    let (status, asked) = engineer
        .post(&format!("/api/v1/training/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["cancel_requested"], true, "{asked}");
    let job = finished(&engineer, id, &mut Vec::new()).await;
    assert_eq!(
        (job["state"].as_str(), job["model"].is_null()),
        (Some("cancelled"), true),
        "{job}"
    );
    let (status, again) = engineer
        .post(&format!("/api/v1/training/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not running"),
        "{again}"
    );
    let (status, _) = engineer
        .post("/api/v1/training/999999/cancel", json!({}))
        .await;
    assert_eq!(status, 404);
    let registry_entries = || -> Vec<String> {
        std::fs::read_dir(&models)
            .expect("registry")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        !registry_entries()
            .iter()
            .any(|name| name.starts_with("cancelled") || name.starts_with(".training")),
        "{:?}",
        registry_entries()
    );
    let cancelled_by: Vec<(String, String)> = store
        .records_of_kind(RecordKind::Audit)
        .expect("audit")
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::Audit(a) if a.action == "model.train.cancel" => Some((a.actor, a.target)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cancelled_by,
        [("eng-1".to_owned(), format!("training job {id}"))],
        "the cancel is audited once, the refusals not at all"
    );

    // The cold start: an anomaly model from the parts the live model passed.
    let (status, started) = engineer.post("/api/v1/training", anomaly.clone()).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        (
            started["state"].as_str(),
            started["source"]["passed_as_good"].as_bool()
        ),
        (Some("running"), Some(true))
    );
    let id = started["id"].as_u64().expect("id");
    let (status, busy) = engineer.post("/api/v1/training", anomaly.clone()).await;
    assert_eq!(status, 409, "one job at a time: {busy}");
    assert!(
        busy["error"]
            .as_str()
            .unwrap_or_default()
            .contains("one runs at a time")
    );
    let mut phases = Vec::new();
    let job = finished(&engineer, id, &mut phases).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(
        phases
            .iter()
            .any(|p| p.contains("good images") || p.contains("coreset")),
        "the phases were shown while it ran: {phases:?}"
    );
    let set = &job["training_set"];
    let good = set["good"].as_u64().expect("good");
    assert!(good >= 24, "{set}");
    assert_eq!(set["good_held_out"].as_u64(), Some(good / 4), "{set}");
    assert!(
        set["left_out"]["unlabelled and not passed"].as_u64() >= Some(12),
        "rejected parts teach an anomaly model nothing: {set}"
    );
    let model = &job["model"];
    let version = model["version"].as_str().expect("version").to_owned();
    assert!(version.starts_with("onboarded@"), "{version}");
    assert_eq!(model["kind"], "anomaly");
    let card = &model["card"];
    assert!(
        card["dataset"]
            .as_str()
            .expect("dataset")
            .contains(&format!("training job {id}")),
        "the card names the records, not a scratch folder: {}",
        card["dataset"]
    );
    // Trained on the good parts not held out (less a validation fifth when they are too few
    // to hand it back).
    let trained_on = card["n_train_good"].as_u64().expect("n_train_good");
    let not_held_out = good - good / 4;
    assert!(
        (not_held_out * 3 / 4..=not_held_out).contains(&trained_on),
        "{trained_on} of {not_held_out}"
    );
    assert!(
        card["threshold_rule"]
            .as_str()
            .expect("rule")
            .contains("false-reject rate")
    );
    // Held-out good parts and parts the live model rejected, each with the new heat map.
    let previews = model["previews"].as_array().expect("previews");
    assert!(
        previews.iter().any(|p| p["class"] == "good"),
        "{previews:?}"
    );
    assert!(
        previews
            .iter()
            .any(|p| p["class"].as_str().unwrap_or_default().contains("rejected")),
        "{previews:?}"
    );
    for preview in previews {
        let heat_map = preview["heat_map"].as_str().expect("a heat map");
        let (status, _, _) = engineer
            .send(http.get(format!("{base}/api/v1/images/{heat_map}")))
            .await;
        assert_eq!(status, 200);
    }
    // In the registry, with no scratch folder left beside it; recorded in the audit log.
    let (_, listed) = engineer.get("/api/v1/models").await;
    assert!(
        listed["available"]
            .as_array()
            .expect("available")
            .iter()
            .any(|m| m["version"] == version.as_str()),
        "{listed}"
    );
    assert!(models.join(&version).join("card.json").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&models)
        .expect("registry")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".training"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let trained_by: Vec<String> = store
        .records_of_kind(RecordKind::Audit)
        .expect("audit")
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::Audit(a) if a.action == "model.train" => Some(a.actor),
            _ => None,
        })
        .collect();
    assert_eq!(
        trained_by, ["eng-1"; 3],
        "every job started is audited, no refusal"
    );

    // It runs in shadow on the live line.
    let (status, _, body) = engineer
        .send(
            http.put(format!("{base}/api/v1/models/shadow"))
                .json(&json!({"version": version})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the shadow model judges 5 parts", || async {
        let (_, summary) = engineer.get("/api/v1/models/shadow").await;
        summary["compared"].as_u64() >= Some(5)
    })
    .await;

    // Supervised, once defects are labelled: 12 rejected parts labelled scratches, 20 passed
    // parts labelled good; unlabelled parts do not count. Each scratched part has a dent
    // drawn beside its scratch: the model learns both types from the regions.
    let parts = store.inspection_records(None, 500).expect("read");
    for (verdict, n, label) in [
        (
            "fail",
            12,
            json!({"verdict": "fail", "defect_class": "scratch"}),
        ),
        ("pass", 20, json!({"verdict": "pass"})),
    ] {
        for part in parts
            .iter()
            .filter(|p| p.image.is_some() && p.verdict.map(|v| v.as_str()) == Some(verdict))
            .take(n)
        {
            let mut label = label.clone();
            if verdict == "fail" {
                // The scratch where the live model outlined it (the image's corner if not).
                let [x0, y0, x1, y1] = part.defect_boxes.first().map_or([2, 2, 18, 18], |b| b.bbox);
                label["image"] = json!(part.image);
                label["regions"] = json!([
                    {"class": "scratch", "shape": {"kind": "box", "x": x0, "y": y0,
                        "width": x1 - x0, "height": y1 - y0}},
                    {"class": "dent", "shape": {"kind": "box", "x": 40.0, "y": 40.0,
                        "width": 12.0, "height": 12.0}},
                ]);
            }
            let path = format!("/api/v1/inspections/{}/labels", part.part_id);
            let (status, body) = engineer.post(&path, label).await;
            assert_eq!(status, 201, "{body}");
        }
    }
    let (status, started) = engineer
        .post(
            "/api/v1/training",
            // The input size chosen on the product's own validation parts.
            json!({"family": "supervised", "name": "sup", "from": from, "to": to,
                "input_size": "auto"}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        started["source"]["passed_as_good"], false,
        "supervised models learn labels"
    );
    let job = trained(&engineer, &started).await;
    let set = &job["training_set"];
    assert_eq!(set["good"].as_u64(), Some(20), "{set}");
    assert_eq!(set["defective"], json!({"scratch": 12}), "{set}");
    assert_eq!(job["model"]["kind"], "supervised");
    // Measured on the quarter of each class it never trained on.
    let metrics = &job["model"]["card"]["metrics"];
    assert_eq!(
        (
            metrics["n_test"].as_u64(),
            metrics["n_test_defective"].as_u64()
        ),
        (Some(5 + 3), Some(3)),
        "{metrics}"
    );
    // Each size up to the images' own tried, the one chosen the model's.
    let card = &job["model"]["card"];
    let choice = &card["input_size_choice"];
    let tried: Vec<u64> = (choice["trials"].as_array().expect("trials").iter())
        .filter_map(|t| t["input_size"].as_u64())
        .collect();
    assert_eq!(tried.first(), Some(&128), "{choice}");
    assert!(
        tried.windows(2).all(|w| w[0] < w[1] && w[1] <= 256),
        "{choice}"
    );
    assert_eq!(choice["chosen"], card["input_size"], "{choice}");
    // Judged: the validation parts' boxes (their typed regions) or their image AUROC.
    assert!(
        choice["figure"].as_str().is_some_and(|f| f != "none"),
        "{choice}"
    );
    assert!(
        (choice["trials"].as_array().expect("trials").iter()).any(|t| t["value"].is_f64()),
        "{choice}"
    );
    // The classes the parts name, and the type only regions name: each region taught its own.
    let classes = &job["model"]["card"]["classes"];
    assert_eq!(classes, &json!(["good", "dent", "scratch"]), "{classes}");
    // The 3 held-out scratched parts' regions judge its boxes, type by type.
    let boxes = &metrics["boxes"];
    assert_eq!(boxes["n_true_boxes"].as_u64(), Some(3 * 2), "{boxes}");
    let judged: Vec<&str> = (boxes["per_class"].as_array().expect("per type").iter())
        .filter_map(|c| c["class"].as_str())
        .collect();
    assert_eq!(judged, ["dent", "scratch"], "{boxes}");

    // A product the station has not seen yet: good images uploaded from a lab camera.
    let mut generator = linesight::simulate::PartGenerator::new(5, 256, 256, 0.0);
    let upload = |class: &str, png: Vec<u8>| {
        let request = http
            .post(format!(
                "{base}/api/v1/training/uploads/lab-1?class={class}"
            ))
            .header("content-type", "image/png")
            .body(png);
        engineer.send(request)
    };
    for _ in 0..12 {
        let png = linesight::record::gray_png(&generator.render(None).image).expect("png");
        let (status, _, body) = upload("good", png).await;
        assert_eq!(status, 201, "{body}");
    }
    // The other 12 as a zipped folder, deflated, with a file that is not an image in it.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default();
    for i in 0..12 {
        let png = linesight::record::gray_png(&generator.render(None).image).expect("png");
        zip.start_file(format!("lab-camera/good/{i}.png"), deflated)
            .expect("entry");
        std::io::Write::write_all(&mut zip, &png).expect("write");
    }
    zip.start_file("lab-camera/good/readme.txt", deflated)
        .expect("entry");
    std::io::Write::write_all(&mut zip, b"line 2, shift B").expect("write");
    let zip = zip.finish().expect("zip").into_inner();
    let (status, _, body) = engineer
        .send(
            http.post(format!("{base}/api/v1/training/uploads/lab-1/zip"))
                .header("content-type", "application/zip")
                .body(zip),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let report: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["added"], json!({"good": 12}), "{report}");
    assert_eq!(
        report["refused"][0]["name"],
        json!("lab-camera/good/readme.txt"),
        "{report}"
    );
    let (status, _, body) = engineer
        .send(
            http.post(format!("{base}/api/v1/training/uploads/lab-1/zip"))
                .body(b"PK not a zip".to_vec()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a zip"), "{body}");
    let (status, _, body) = upload("good", b"GIF89a not really".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an image"), "{body}");
    let (status, _, _) = operator
        .send(
            http.post(format!("{base}/api/v1/training/uploads/lab-1?class=good"))
                .body(vec![0u8; 8]),
        )
        .await;
    assert_eq!(status, 403, "operators do not upload");
    let (status, sets) = engineer.get("/api/v1/training/uploads").await;
    assert_eq!(status, 200);
    assert_eq!(sets["sets"][0]["classes"], json!({"good": 24}), "{sets}");
    for (body, refused, why) in [
        (
            json!({"family": "anomaly", "name": "lab", "upload": "lab-1", "from": from, "to": to}),
            400,
            "records or an upload, not both",
        ),
        (
            json!({"family": "anomaly", "name": "lab", "upload": "no-such-set"}),
            404,
            "no such upload set",
        ),
    ] {
        let (status, answer) = engineer.post("/api/v1/training", body).await;
        assert_eq!(status, refused, "{why}: {answer}");
    }
    let (status, started) = engineer
        .post(
            "/api/v1/training",
            json!({"family": "anomaly", "name": "lab", "upload": "lab-1"}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let job = trained(&engineer, &started).await;
    assert_eq!(job["training_set"]["good"].as_u64(), Some(24), "{job}");
    let card = &job["model"]["card"];
    assert!(
        card["dataset"]
            .as_str()
            .expect("dataset")
            .contains("upload set lab-1"),
        "{}",
        card["dataset"]
    );
    let previews = job["model"]["previews"].as_array().expect("previews");
    assert!(
        !previews.is_empty() && previews.iter().all(|p| p["part_id"].is_null()),
        "{previews:?}"
    );
    let (status, _, _) = engineer
        .send(http.delete(format!("{base}/api/v1/training/uploads/lab-1")))
        .await;
    assert_eq!(status, 204);
    let (_, sets) = engineer.get("/api/v1/training/uploads").await;
    assert_eq!(sets["sets"], json!([]));
    // Training data comes and goes on the record: who uploaded each image, the zip, the delete.
    let (status, audit) = engineer
        .get("/api/v1/records?from=1&limit=5000&kind=audit")
        .await;
    assert_eq!(status, 200, "{audit}");
    let targets = |action: &str| -> Vec<String> {
        (audit["items"].as_array().expect("items").iter())
            .filter(|e| e["action"] == action && e["actor"] == "eng-1")
            .filter_map(|e| e["target"].as_str().map(str::to_owned))
            .collect()
    };
    let uploads = targets("training.upload");
    let singles = uploads
        .iter()
        .filter(|t| t.starts_with("lab-1/good/"))
        .count();
    assert_eq!(singles, 12, "one entry an image: {uploads:?}");
    assert!(
        uploads.contains(&"lab-1: 12 good".to_owned()),
        "{uploads:?}"
    );
    assert_eq!(targets("training.upload.delete"), ["lab-1"]);

    stop.cancel();
    line.await.expect("join").expect("the line stops cleanly");
}

/// One inspected part in `store`: `pixels` (a board of [`golden`]'s) kept as its image,
/// decided now, failed or passed. Its part id and image digest.
async fn recorded_board(store: &Store, pixels: Vec<u8>, failed: bool) -> (u64, String) {
    recorded_part(store, &golden::image(pixels), failed, None).await
}

/// One inspected part in `store`, `image` kept as its image, decided now, failed or passed
/// (with a tolerated defect of `tolerated`, where it names one). Its part id and image digest.
async fn recorded_part(
    store: &Store,
    image: &GrayImage,
    failed: bool,
    tolerated: Option<&str>,
) -> (u64, String) {
    let png = gray_png(image).expect("png");
    let digest = store.save_image(&png).expect("image kept");
    let part_id = store.next_part_id().expect("part id");
    let mut part = actions::inspection(part_id, failed);
    if let RecordBody::Inspection(record) = &mut part {
        record.image = Some(digest.clone());
        if let Some(class) = tolerated {
            record.defect_class = Some(class.to_owned());
        }
    }
    store.append(part).await.expect("recorded");
    (part_id, digest)
}

/// A product inspected against its golden part (boards of `golden`'s generator, each defect
/// boxed as DeepPCB's labellers box them): the engineer boxes the defects of the rejected
/// parts in the labelling API, names a good part as golden, and a template model trains from
/// the station's records through the training API, choosing its own alignment and
/// comparison, finds the held-out parts' defects where they are, and runs in the station
/// (its previews are the station's own judgement). Refused with a reason: no golden part, a
/// golden part that is not good or not there, uploads, and settings of other families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_model_learns_the_boxes_drawn_round_defects_against_a_golden_part() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (models, model_dir, registry) = own_registry(dir.path());
    let config = station_config(
        &dir.path().join("data"),
        &[
            ("dir = \"../models/defect-net-sim\"", &model_dir),
            ("registry = \"../var/sim-1/models\"", &registry),
        ],
    );
    let tokens = Tokens::open(&dir.path().join("data"), None).expect("tokens");
    let engineer_token = tokens
        .create("eng-1", Role::Engineer, "test")
        .expect("token")
        .token;
    // The line does not run: the records are the boards below and nothing else.
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let store = station.store();
    let base = serve_api(&station).await;
    let engineer = Client {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: engineer_token,
    };

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (golden_part, _) = recorded_board(&store, golden::template(), false).await;
    for _ in 0..8 {
        recorded_board(&store, golden::tested(&mut rng, &[]).0, false).await;
    }
    // DeepPCB's type numbers, named as an engineer would name them.
    let types = [
        (1u8, "open"),
        (2, "short"),
        (5, "spurious-copper"),
        (6, "pin-hole"),
    ];
    let name = |kind: u8| types.iter().find(|(k, _)| *k == kind).expect("a type").1;
    let mut rejected = Vec::new();
    let mut drawn = 0;
    for i in 0..34 {
        // Most boards show two types; every eighth one only its class's, which a mask alone
        // would say for a supervised model but a template model learns from boxes alone.
        let kinds = if i % 8 == 0 {
            vec![types[i % 4].0]
        } else {
            vec![types[i % 4].0, types[(i + 1) % 4].0]
        };
        let (pixels, boxes) = golden::tested(&mut rng, &kinds);
        let (part_id, digest) = recorded_board(&store, pixels, true).await;
        // Two rejected parts are labelled defective without saying where: nothing to learn.
        if i < 32 {
            drawn += boxes.len();
        }
        let regions: Vec<Value> = if i >= 32 {
            Vec::new()
        } else {
            (boxes.iter())
                .map(|([x0, y0, x1, y1], kind)| {
                    json!({"class": name(*kind), "shape": {"kind": "box", "x": x0, "y": y0,
                        "width": x1 - x0 + 1, "height": y1 - y0 + 1}})
                })
                .collect()
        };
        let label = json!({"verdict": "fail", "defect_class": name(kinds[0]),
            "image": digest, "regions": regions});
        let (status, written) = engineer
            .post(&format!("/api/v1/inspections/{part_id}/labels"), label)
            .await;
        assert_eq!(status, 201, "{written}");
        rejected.push(part_id);
    }
    // A part of another size than the golden one (another camera's, a changeover's) cannot
    // be compared with it: it is left out, and the job goes on without it.
    let small = GrayImage::new(100, 100, vec![200; 100 * 100]).expect("image");
    recorded_part(&store, &small, false, None).await;
    // A part the live model passed with a tolerated defect is no good part to compare with,
    // nor to learn from.
    let (tolerated, _) = recorded_part(
        &store,
        &golden::image(golden::template()),
        false,
        Some("spur"),
    )
    .await;
    // The golden part was first labelled defective by mistake, then good: its latest label
    // stands.
    let golden_labels = format!("/api/v1/inspections/{golden_part}/labels");
    let (status, _) = engineer
        .post(
            &golden_labels,
            json!({"verdict": "fail", "defect_class": "short"}),
        )
        .await;
    assert_eq!(status, 201);
    let (from, to) = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z");
    let template = |golden: Value| {
        json!({"family": "template", "name": "board", "from": from, "to": to,
            "golden_part": golden})
    };

    // Refused with a reason.
    let labelled_defective = format!("golden part {golden_part}: it is labelled defective");
    let mut no_golden = template(Value::Null);
    no_golden
        .as_object_mut()
        .expect("object")
        .remove("golden_part");
    for (body, says) in [
        (no_golden, "name it (`golden_part`"),
        (template(json!(rejected[0])), "is labelled defective"),
        (
            template(json!(tolerated)),
            "passed it with a tolerated defect",
        ),
        (template(json!(999_999)), "no such part"),
        (
            json!({"family": "template", "name": "board", "upload": "lab",
                "golden_part": golden_part}),
            "train it from this station's parts",
        ),
        (
            json!({"family": "anomaly", "name": "board", "from": from, "to": to,
                "golden_part": golden_part}),
            "`golden_part` is for template models",
        ),
        (
            json!({"family": "template", "name": "board", "from": from, "to": to,
                "golden_part": golden_part, "input_size": "256"}),
            "`input_size` is not for template models",
        ),
        (
            json!({"family": "template", "name": "board", "from": from, "to": to,
                "golden_part": golden_part, "orientations": "auto"}),
            "`orientations` is for anomaly models",
        ),
        (template(json!(golden_part)), labelled_defective.as_str()),
    ] {
        let (status, error) = engineer.post("/api/v1/training", body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        let error = error["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{body}: {error}");
    }
    let (status, _) = engineer
        .post(&golden_labels, json!({"verdict": "pass"}))
        .await;
    assert_eq!(status, 201);

    // By default the passed boards count as good: they teach what a difference that is no
    // defect looks like.
    let (status, started) = engineer
        .post("/api/v1/training", template(json!(golden_part)))
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["golden_part"], golden_part, "{started}");
    let job = trained(&engineer, &started).await;
    let set = &job["training_set"];
    assert_eq!(set["left_out"]["the golden part"], 1, "{set}");
    assert_eq!(
        set["left_out"]["passed with a tolerated defect and not labelled good"], 1,
        "{set}"
    );
    assert_eq!(
        set["left_out"]["of another size than the golden part's image"], 1,
        "{set}"
    );
    assert_eq!(
        set["left_out"]["labelled defective without regions (a template model learns from boxes)"],
        2,
        "{set}"
    );
    let defective: u64 = (set["defective"].as_object().expect("defective"))
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!((set["good"].as_u64(), defective), (Some(8), 32), "{set}");

    let model = &job["model"];
    assert_eq!(model["kind"], "template", "{model}");
    let version = model["version"].as_str().expect("version");
    assert!(version.starts_with("board@"), "{version}");
    let card = &model["card"];
    assert!(
        card["alignment_choice"]["align_px"].as_u64() >= Some(2)
            && card["compare_choice"]["rule"].is_string(),
        "the run chose its own comparison: {card}"
    );
    assert!(
        card["dataset"]
            .as_str()
            .unwrap_or_default()
            .contains("training job"),
        "{}",
        card["dataset"]
    );
    // Every box drawn is learnt from or scored: every fourth part of each class is held out.
    let boxes = &card["metrics"]["boxes"];
    assert_eq!(
        (card["n_train_boxes"]
            .as_u64()
            .zip(boxes["n_true_boxes"].as_u64()))
        .map(|(learnt, scored)| learnt + scored),
        Some(drawn as u64),
        "{card}"
    );
    let map = boxes["mean_average_precision"][0]["value"]
        .as_f64()
        .expect("mAP");
    assert!(map >= 0.8, "held-out box mAP@0.5 {map}: {boxes}");
    // The golden image travels with the model, and the station's registry loads it: the
    // previews are the loaded model judging held-out parts.
    let home = models.join(version);
    assert!(
        home.join(linesight::models::template::REFERENCE_FILE)
            .is_file(),
        "{}",
        home.display()
    );
    let previews = model["previews"].as_array().expect("previews");
    assert!(
        previews
            .iter()
            .any(|p| p["class"] != "good" && p["verdict"] == "fail"),
        "a held-out defective part is rejected: {previews:?}"
    );
    assert!(
        previews
            .iter()
            .any(|p| p["class"] == "good" && p["verdict"] == "pass"),
        "a held-out good part passes: {previews:?}"
    );
    let (status, listed) = engineer.get("/api/v1/models").await;
    assert_eq!(status, 200);
    assert!(
        listed.to_string().contains(version),
        "in the registry: {listed}"
    );

    let registry_entries: Vec<String> = std::fs::read_dir(&models)
        .expect("registry")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !registry_entries
            .iter()
            .any(|name| name.starts_with(".training")),
        "the job's scratch folder is gone: {registry_entries:?}"
    );
}
