//! Several cameras per part (issue 18): the simulated line's top and side cameras, each part's
//! verdict the worst of its views; and a view camera that fails, which rejects its parts and
//! faults the station without stopping it.

use std::time::Duration;

use linesight::part::Verdict;
use linesight::record::InspectionRecord;
use linesight::station::RunOptions;
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, poll_within, simulated_station, station_config};

/// Fail outranks error outranks pass; the first view with the worst verdict decides.
fn deciding_view(record: &InspectionRecord) -> usize {
    let rank = |v: Verdict| match v {
        Verdict::Pass => 0,
        Verdict::Error => 1,
        Verdict::Fail => 2,
    };
    let worst = record.views.iter().map(|v| rank(v.verdict)).max();
    record
        .views
        .iter()
        .position(|v| Some(rank(v.verdict)) == worst)
        .expect("a view")
}

/// Runs `parts` parts at 300 a minute through the shipped two-camera line with `edits`.
async fn run_parts(
    dir: &std::path::Path,
    edits: &[(&str, &str)],
    parts: u64,
) -> (linesight::record::Store, linesight::metrics::Metrics) {
    let edits: Vec<(&str, &str)> = std::iter::once(("parts_per_min = 120", "parts_per_min = 300"))
        .chain(edits.iter().copied())
        .collect();
    let config = station_config(dir, &edits);
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let (store, metrics) = (station.store(), station.metrics());
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
    (store, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cameras_see_every_part_and_its_verdict_is_the_worst_of_its_views() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = 60;
    // Defects as common on the side as on the top, so that some parts fail on the side alone.
    let (store, metrics) = run_parts(
        dir.path(),
        &[("defect_rate = 0.05", "defect_rate = 0.3")],
        parts,
    )
    .await;
    let records = store.inspection_records(None, 1000).expect("records");
    assert_eq!(records.len() as u64, parts);
    let mut side_only_rejects = 0;
    let mut both_seen = 0;
    for record in &records {
        let cameras: Vec<&str> = record.views.iter().map(|v| v.camera.as_str()).collect();
        assert_eq!(cameras, ["top", "side"], "part {}", record.part_id);
        let deciding = &record.views[deciding_view(record)];
        assert_eq!(
            record.verdict,
            Some(deciding.verdict),
            "part {}: the part's verdict is the worst of its views' {:?}",
            record.part_id,
            record.views
        );
        assert_eq!(record.score, deciding.score, "part {}", record.part_id);
        assert_eq!(record.image, deciding.image, "part {}", record.part_id);
        assert_eq!(
            record.disposition.is_reject(),
            record.views.iter().any(|v| v.verdict != Verdict::Pass),
            "part {}: rejected when any view is not a pass",
            record.part_id
        );
        let [top, side] = &record.views[..] else {
            unreachable!()
        };
        if top.verdict != Verdict::Error && side.verdict != Verdict::Error {
            both_seen += 1;
            let (top_image, side_image) = (
                top.image.as_deref().expect("top image saved"),
                side.image.as_deref().expect("side image saved"),
            );
            for digest in [top_image, side_image] {
                assert!(
                    store.images().path(digest).is_some_and(|p| p.exists()),
                    "image {digest} of part {} is on disk",
                    record.part_id
                );
            }
            assert_ne!(
                top_image, side_image,
                "part {}: two cameras, two pictures",
                record.part_id
            );
        }
        if top.verdict == Verdict::Pass && side.verdict == Verdict::Fail {
            side_only_rejects += 1;
            assert_eq!(record.verdict, Some(Verdict::Fail));
            assert!(
                record.defect_size.is_some(),
                "the side view's defect is sized"
            );
        }
    }
    // A busy machine may leave the first part without its side frame (the cameras start one
    // after the other); every other part is seen by both.
    assert!(
        both_seen >= parts - 1,
        "{both_seen} of {parts} parts seen by both cameras; missing side frames: {:?}",
        records
            .iter()
            .filter_map(|r| r.views.get(1).and_then(|v| v.error.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        side_only_rejects > 0,
        "some parts are rejected for what only the side camera saw"
    );
    let side = linesight::metrics::CameraLabel {
        camera: "side".into(),
    };
    let missing = metrics.view_frames_missing.get_or_create(&side).get();
    assert_eq!(
        missing,
        parts - both_seen,
        "every part without its side frame is counted"
    );
    assert!(
        metrics
            .encode("test")
            .contains("view_frames_missing_total{"),
        "the views' counters are on /metrics"
    );
}

/// The side camera shows the same face as the top one (the same seed and rate): each part's two
/// pictures must be the same picture, which they are only when every frame joined its own part.
/// The station's two inspect workers (the default) take parts side by side: the views' frames
/// are taken in order with each part, under one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_views_frame_joins_its_own_part() {
    let _one = CPU_HEAVY.lock().await;
    each_views_frame_joins_its_own_part_with(&[]).await;
}

/// The same with one inspect worker, the thread that takes every part in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_inspect_worker_each_views_frame_joins_its_own_part() {
    let _one = CPU_HEAVY.lock().await;
    each_views_frame_joins_its_own_part_with(&[("[model]\n", "[model]\nworkers = 1\n")]).await;
}

/// The same with each worker taking the parts queued up together (`[model] batch`), all
/// their views' images judged in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_batches_each_views_frame_joins_its_own_part() {
    let _one = CPU_HEAVY.lock().await;
    each_views_frame_joins_its_own_part_with(&[("[model]\n", "[model]\nbatch = 8\n")]).await;
}

async fn each_views_frame_joins_its_own_part_with(edits: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = 40;
    let edits: Vec<(&str, &str)> =
        std::iter::once(("seed = 2\ndefect_rate = 0.05\n", "seed = 1\n"))
            .chain(edits.iter().copied())
            .collect();
    let (store, _) = run_parts(dir.path(), &edits, parts).await;
    let records = store.inspection_records(None, 1000).expect("records");
    let mut same = 0;
    let mut images = std::collections::HashSet::new();
    for record in &records {
        let [top, side] = &record.views[..] else {
            panic!("part {}: {:?}", record.part_id, record.views)
        };
        let (Some(top_image), Some(side_image)) = (&top.image, &side.image) else {
            continue;
        };
        assert_eq!(
            top_image, side_image,
            "part {}: the side camera's frame is another part's",
            record.part_id
        );
        assert_eq!(top.verdict, side.verdict, "part {}", record.part_id);
        images.insert(top_image.clone());
        same += 1;
    }
    assert!(
        same >= parts - 1,
        "{same} of {parts} parts seen by both cameras"
    );
    assert!(
        images.len() as u64 >= parts - 1,
        "the parts are all different pictures ({} distinct)",
        images.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_camera_that_fails_rejects_its_parts_and_faults_the_station_which_runs_on() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("video-missing");
    let side = format!(
        "launch = \"v4l2src device={} ! videoconvert ! appsink name=frames\"\n",
        missing.display()
    );
    let config = station_config(
        dir.path(),
        &[
            ("parts_per_min = 120", "parts_per_min = 300"),
            (
                "pipeline = \"../pipelines/simulated.gst\"\ncalibration",
                &format!("{side}calibration"),
            ),
            ("[views.simulator]\nseed = 2\ndefect_rate = 0.05\n", ""),
        ],
    );
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let (api, store, metrics) = (station.api(), station.store(), station.metrics());
    let shutdown = CancellationToken::new();
    let _stop_on_exit = shutdown.clone().drop_guard();
    let run = tokio::spawn(station.run(RunOptions::default(), shutdown.clone()));

    let fault = || async {
        api.alarms
            .alarm("station_fault")
            .await
            .filter(|view| view.active)
            .and_then(|view| view.condition)
    };
    let faulted = poll_within(Duration::from_secs(60), || async {
        metrics.frames_captured.get() >= 10 && fault().await.is_some()
    })
    .await;
    let message = fault().await.unwrap_or_default();
    assert!(
        faulted && message.contains("camera `side` lost") && message.contains("video-missing"),
        "a failing view camera faults the station, naming it and why: {message:?}"
    );
    assert!(
        !run.is_finished(),
        "the station runs on without its side camera"
    );
    let recorded = poll_within(Duration::from_secs(60), || async {
        store
            .inspection_records(None, 1000)
            .is_ok_and(|records| records.len() >= 10)
    })
    .await;
    assert!(recorded, "parts keep being recorded");
    shutdown.cancel();
    let report = run.await.expect("joins").expect("a clean stop");
    assert!(report.parts >= 10);

    let records = store.inspection_records(None, 1000).expect("records");
    for record in &records {
        let side = record.views.get(1).expect("a side view in every record");
        assert_eq!(side.verdict, Verdict::Error, "part {}", record.part_id);
        let why = side.error.as_deref().unwrap_or_default();
        assert!(
            why.contains("camera `side`"),
            "part {}: {why}",
            record.part_id
        );
        assert!(
            record.disposition.is_reject(),
            "part {} without its side view is rejected",
            record.part_id
        );
        assert_ne!(
            record.verdict,
            Some(Verdict::Pass),
            "part {}",
            record.part_id
        );
    }
    let missing_counted = metrics
        .view_frames_missing
        .get_or_create(&linesight::metrics::CameraLabel {
            camera: "side".into(),
        })
        .get();
    assert_eq!(
        missing_counted,
        records.len() as u64,
        "every missing view counted"
    );
}
