//! Labelling over HTTP on a running station: an operator flags a verdict, the flagged part
//! leads the engineer's queue, a label carries boxes, polygons and a pixel mask on the part's
//! own image and is refused with a reason when a region does not fit, and the labelled part
//! leaves the queue. Roles: operators flag but neither label nor see the queue or its page.

use linesight::serve::{Role, Tokens};
use linesight::station::RunOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, Client, eventually, serve_api, simulated_station, station_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_part_leads_the_queue_and_its_label_keeps_its_regions() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = station_config(dir.path(), &[]);
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (operator_token, engineer_token, mes_token) = (
        token("op-1", Role::Operator),
        token("eng-1", Role::Engineer),
        token("mes-1", Role::MesClient),
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
    let (operator, engineer, mes) = (
        client(&operator_token),
        client(&engineer_token),
        client(&mes_token),
    );

    eventually("10 inspected parts with images", || async {
        store
            .inspection_records(None, 50)
            .expect("read")
            .iter()
            .filter(|p| p.image.is_some())
            .count()
            >= 10
    })
    .await;
    let parts = store.inspection_records(None, 50).expect("read");
    let part = parts
        .iter()
        .rev()
        .find(|p| p.image.is_some())
        .expect("a part with an image");
    let (part_id, digest) = (part.part_id, part.image.clone().expect("image"));
    let other_image = parts
        .iter()
        .find(|p| p.part_id != part_id && p.image.is_some() && p.image != part.image)
        .and_then(|p| p.image.clone())
        .expect("another part's image");

    // The operator flags the (oldest) part; systems may not, and unknown parts are 404.
    let flag_path = format!("/api/v1/inspections/{part_id}/flag");
    let (status, flag) = operator
        .post(&flag_path, json!({"note": "looks clean to me"}))
        .await;
    assert_eq!(status, 201, "{flag}");
    assert_eq!(
        (flag["kind"].as_str(), flag["by"].as_str()),
        (Some("flag"), Some("op-1"))
    );
    let (status, _) = mes.post(&flag_path, json!({})).await;
    assert_eq!(status, 403, "the MES does not flag");
    let (status, body) = operator
        .post("/api/v1/inspections/999999999/flag", json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = operator.post(&flag_path, json!({"note": ""})).await;
    assert_eq!(status, 400, "{body}");

    // The queue: engineers only, the flagged part first with its note.
    let (status, _) = operator.get("/api/v1/labelling/queue").await;
    assert_eq!(status, 403, "operators do not label");
    let (status, queue) = engineer.get("/api/v1/labelling/queue?limit=20").await;
    assert_eq!(status, 200, "{queue}");
    let first = &queue["items"][0];
    assert_eq!(first["part_id"], part_id, "{queue}");
    assert_eq!(first["reasons"][0], "flagged");
    assert_eq!(first["flag_note"], "looks clean to me");
    assert_eq!(first["image"], digest.as_str());
    let (status, body) = engineer.get("/api/v1/labelling/queue?limit=0").await;
    assert_eq!(status, 400, "{body}");
    // A flag's note is kept whatever Content-Type came with it (`curl -d` sends a form's), a
    // flag without a body is one tap, and a body that is not the flag's JSON is refused.
    let flag_raw = |content_type: Option<&'static str>, body: &'static str| {
        let mut request = http.post(format!("{base}{flag_path}")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let operator = &operator;
        async move {
            let (status, _, text) = operator.send(request).await;
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
    };
    let (status, flag) = flag_raw(
        Some("application/x-www-form-urlencoded"),
        r#"{"note": "seen from the line"}"#,
    )
    .await;
    assert_eq!(
        (status, flag["note"].as_str()),
        (201, Some("seen from the line")),
        "{flag}"
    );
    for content_type in [None, Some("application/json")] {
        let (status, flag) = flag_raw(content_type, "").await;
        assert_eq!(
            (status, &flag["note"]),
            (201, &Value::Null),
            "{content_type:?}: {flag}"
        );
    }
    let (status, body) = flag_raw(Some("application/json"), "note=hi").await;
    assert_eq!(status, 400, "{body}");

    // The image's size bounds the regions.
    let png = http
        .get(format!("{base}/api/v1/images/{digest}"))
        .bearer_auth(&engineer_token)
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    let image = image::load_from_memory(&png).expect("a PNG");
    let (w, h) = (image.width(), image.height());
    let pixels = w * h;
    // Coordinates are floats (sub-pixel outlines), so they come back as sent.
    // A mask of a 3-pixel run in column 2: column-major, so it starts at 2*h + 1.
    let counts = json!([2 * h + 1, 3, pixels - 2 * h - 4]);
    let label = json!({
        "verdict": "fail", "defect_class": "scratch", "image": digest,
        "regions": [
            {"class": "scratch", "shape": {"kind": "polygon", "points": [[1.0, 1.0], [10.5, 1.0], [10.0, 8.0], [1.0, 8.0]]}},
            {"class": "scratch", "shape": {"kind": "box", "x": 2.0, "y": 3.0, "width": 4.0, "height": 5.5}},
            {"class": "dent", "shape": {"kind": "mask", "size": [h, w], "counts": counts}},
        ],
    });
    let labels_path = format!("/api/v1/inspections/{part_id}/labels");
    let (status, _) = operator.post(&labels_path, label.clone()).await;
    assert_eq!(status, 403, "operators do not label");
    let refusals: [(Value, &str); 5] = [
        (
            json!({"verdict": "fail", "image": digest, "regions": [{"class": "scratch",
                "shape": {"kind": "polygon", "points": [[1, 1], [f64::from(w) + 5.0, 1], [2, 2]]}}]}),
            "region 0:",
        ),
        (
            json!({"verdict": "fail", "image": digest, "regions": [{"class": "dent",
                "shape": {"kind": "mask", "size": [h, w], "counts": [pixels - 1]}}]}),
            "counts add up",
        ),
        (
            json!({"verdict": "fail", "regions": label["regions"]}),
            "name it in `image`",
        ),
        (
            json!({"verdict": "fail", "image": other_image, "regions": label["regions"]}),
            "is not an image of part",
        ),
        (
            json!({"verdict": "pass", "image": digest, "regions": label["regions"]}),
            "no defect regions",
        ),
    ];
    for (body, why) in refusals {
        let (status, _, text) = engineer
            .send(http.post(format!("{base}{labels_path}")).json(&body))
            .await;
        assert_eq!(status, 400, "{body} was accepted: {text}");
        assert!(text.contains(why), "{text} does not say {why}");
    }
    let (status, written) = engineer.post(&labels_path, label.clone()).await;
    assert_eq!(status, 201, "{written}");
    let (status, labels) = engineer.get(&labels_path).await;
    assert_eq!(status, 200);
    let latest = labels
        .as_array()
        .and_then(|items| items.last())
        .expect("a label");
    assert_eq!(latest["regions"], label["regions"], "regions kept as sent");
    assert_eq!(latest["image"], digest.as_str());

    // COCO: the export holds the label; importing it back changes nothing; a changed file
    // writes a new label; a file that does not fit refuses everything and says why.
    let (status, dataset) = engineer.get("/api/v1/labels/coco").await;
    assert_eq!(status, 200, "{dataset}");
    let image = dataset["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["id"] == part_id)
        .expect("the labelled part is exported");
    assert_eq!(image["file_name"], format!("{digest}.png"));
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(w.into()), Some(h.into()))
    );
    let annotations: Vec<&Value> = dataset["annotations"]
        .as_array()
        .expect("annotations")
        .iter()
        .filter(|a| a["image_id"] == part_id)
        .collect();
    assert_eq!(annotations.len(), 3, "polygon, box and mask");
    assert_eq!(
        annotations[2]["segmentation"]["size"],
        json!([h, w]),
        "the mask is RLE"
    );
    let (status, report) = engineer.post("/api/v1/labels/coco", dataset.clone()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report, json!({"written": 0, "unchanged": 1}));
    let (status, _) = operator.post("/api/v1/labels/coco", dataset.clone()).await;
    assert_eq!(status, 403, "operators do not import labels");
    let mut changed = dataset.clone();
    changed["annotations"]
        .as_array_mut()
        .expect("annotations")
        .retain(|a| !(a["image_id"] == part_id && a["segmentation"].is_object()));
    let mut broken = changed.clone();
    broken["images"].as_array_mut().expect("images").push(json!({
        "id": 999_999_999u64, "file_name": format!("{}.png", "0".repeat(64)), "width": 1, "height": 1
    }));
    let labels_before = store.labels(part_id).expect("labels").len();
    let (status, _, text) = engineer
        .send(
            http.post(format!("{base}/api/v1/labels/coco"))
                .json(&broken),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no record of part 999999999"), "{text}");
    assert_eq!(
        store.labels(part_id).expect("labels").len(),
        labels_before,
        "nothing written"
    );
    let (status, report) = engineer.post("/api/v1/labels/coco", changed).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report, json!({"written": 1, "unchanged": 0}));
    let (_, labels) = engineer.get(&labels_path).await;
    let latest = labels.as_array().and_then(|l| l.last()).expect("label");
    assert_eq!(
        latest["regions"].as_array().map(Vec::len),
        Some(2),
        "the mask is gone"
    );
    assert_eq!(latest["note"], "imported from COCO");

    // The same labels as training sets: MVTec (which `linesight train` reads) and YOLO.
    let export = |format: &'static str| {
        let request = http
            .get(format!("{base}/api/v1/labels/export?format={format}"))
            .bearer_auth(&engineer_token);
        async move {
            let response = request.send().await.expect("export");
            assert_eq!(response.status(), 200, "{format}");
            let bytes = response.bytes().await.expect("zip");
            zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).expect("a whole zip")
        }
    };
    let mut mvtec = export("mvtec").await;
    let unpacked = tempfile::tempdir().expect("tempdir");
    mvtec.extract(unpacked.path()).expect("unzips");
    let samples =
        linesight::learn::dataset::read(linesight::learn::dataset::Layout::Mvtec, unpacked.path())
            .expect("the export reads as an MVTec dataset");
    let sample = samples
        .iter()
        .find(|s| s.image.ends_with(format!("{digest}.png")))
        .expect("the labelled part is in the export");
    assert_eq!(sample.class, "scratch");
    let mask = image::open(sample.mask.as_ref().expect("a ground-truth mask"))
        .expect("mask PNG")
        .to_luma8();
    assert_eq!(mask.dimensions(), (w, h));
    // Pixels count when their centre is inside: the polygon (x 1..~10.5, y 1..8) covers
    // columns 1..=9 of rows 1..=7, and the box (x 2..6, y 3..8.5) lies within it.
    let painted = mask.pixels().filter(|p| p.0[0] == 255).count();
    assert_eq!(painted, 9 * 7, "the polygon and the box, painted");
    assert!(
        sample.boxes.is_empty(),
        "both regions are of the part's class, which the mask says: no typed boxes"
    );
    let mut yolo = export("yolo").await;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut yolo
            .by_name(&format!("labels/{digest}.txt"))
            .expect("label file"),
        &mut text,
    )
    .expect("text");
    assert_eq!(text.lines().count(), 2, "one box per region: {text}");
    let mut yaml = String::new();
    std::io::Read::read_to_string(
        &mut yolo.by_name("data.yaml").expect("data.yaml"),
        &mut yaml,
    )
    .expect("text");
    assert!(yaml.contains("\"scratch\""), "{yaml}");
    let (status, _) = engineer.get("/api/v1/labels/export?format=voc").await;
    assert_eq!(status, 400, "an unknown format is refused");
    let (status, _) = operator.get("/api/v1/labels/export?format=yolo").await;
    assert_eq!(status, 403);

    // Labelled and no longer flagged: the part leaves the queue; a new flag brings it back.
    let (_, queue) = engineer.get("/api/v1/labelling/queue?limit=200").await;
    let listed = |queue: &Value| {
        queue["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["part_id"] == part_id)
    };
    assert!(!listed(&queue), "a labelled part left the queue");
    assert!(
        queue["classes"]
            .as_array()
            .expect("classes")
            .iter()
            .all(|c| c.is_string())
    );
    let (_, with_labelled) = engineer
        .get("/api/v1/labelling/queue?limit=200&labelled=true")
        .await;
    assert!(listed(&with_labelled), "labelled parts on request");
    // A flag without a body at all (one tap on the line).
    let (status, _, text) = operator.send(http.post(format!("{base}{flag_path}"))).await;
    assert_eq!(status, 201, "{text}");
    let (_, queue) = engineer.get("/api/v1/labelling/queue?limit=5").await;
    assert_eq!(queue["items"][0]["part_id"], part_id, "flagged again");

    // Engineers labelling one part at once: each label supersedes the one before it, one
    // chain, never two labels superseding the same result.
    let busy = parts
        .iter()
        .find(|p| p.part_id != part_id)
        .expect("another part")
        .part_id;
    let busy_path = format!("/api/v1/inspections/{busy}/labels");
    let at_once = (0..8).map(|i| {
        let body = if i % 2 == 0 {
            json!({"verdict": "pass", "note": format!("label {i}")})
        } else {
            json!({"verdict": "fail", "defect_class": "scratch", "note": format!("label {i}")})
        };
        engineer.post(&busy_path, body)
    });
    for (status, written) in futures::future::join_all(at_once).await {
        assert_eq!(status, 201, "{written}");
    }
    let chain = store.labels(busy).expect("labels");
    assert_eq!(chain.len(), 8);
    let mut before = store
        .inspection(busy)
        .expect("read")
        .expect("inspected")
        .seq;
    for record in &chain {
        let linesight::record::RecordBody::Label(label) = &record.body else {
            panic!("not a label: {record:?}");
        };
        assert_eq!(
            label.supersedes, before,
            "label {} supersedes {}, not the result before it ({before}): the chain forked",
            record.seq, label.supersedes
        );
        before = record.seq;
    }

    // The labelling page: engineers see it, operators are told why not, strangers sign in.
    let page = |token: Option<&str>| {
        let mut request = http.get(format!("{base}/label"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("page") }
    };
    let response = page(Some(&engineer_token)).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("html").contains("<canvas"));
    let response = page(Some(&operator_token)).await;
    assert_eq!(response.status(), 403);
    assert!(
        response
            .text()
            .await
            .expect("html")
            .contains("operator role may not label")
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = no_redirects
        .get(format!("{base}/label"))
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 303);

    stop.cancel();
    line.await.expect("joins").expect("station ran");
}
