//! A GigE Vision camera triggered per part by GenICam software trigger (issue 18): aravis's own
//! fake camera (`arv-fake-gv-camera-0.8`) on loopback, read through
//! `pipelines/gige-aravis.gst`, armed by the station (`genicam_trigger = "Software"`) and
//! fired once for each trigger the PLC sends, as in server mode.
//!
//! The same camera left free-running answers the same triggers too, but streams frames
//! nobody asked for between them; armed, it sends none, so after 2 s without a trigger
//! aravissrc gives up waiting and capture starts it again, armed, without a fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linesight::capture::{
    CameraPipeline, CameraStatus, CaptureContext, ExternalTriggers, ParamValue, TriggerSource,
    capture_until_done,
};
use linesight::metrics::Metrics;
use linesight::part::{ExternalTrigger, PartId, TriggerSink};
use tokio_util::sync::CancellationToken;

use crate::{fake_gige_camera, repo};

/// Which part each PLC trigger became.
#[derive(Default)]
struct Answers {
    captured: Mutex<Vec<(u32, PartId)>>,
    missed: Mutex<Vec<u32>>,
}

impl TriggerSink for Answers {
    fn captured(&self, trigger: ExternalTrigger, part_id: PartId) {
        self.captured
            .lock()
            .unwrap()
            .push((trigger.tracking_id, part_id));
    }
    fn missed(&self, trigger: ExternalTrigger) {
        self.missed.lock().unwrap().push(trigger.tracking_id);
    }
}

/// What one run showed.
struct Run {
    answers: Vec<(u32, PartId)>,
    missed: Vec<u32>,
    /// Free-running: frames nobody asked for after the parts (at least 5 before it ends).
    unasked_after_the_parts: u64,
}

const TRIGGERS: u32 = 6;
/// Armed: triggers sent after the camera's source restarted from an idle pause.
const TRIGGERS_AFTER_PAUSE: u32 = 3;

/// Waits for `done`, failing after 30 s or when capture has ended.
fn wait_for(
    what: &str,
    capture: &std::thread::JoinHandle<impl Sized>,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        assert!(
            !capture.is_finished(),
            "capture ended while waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Captures from the fake camera as the station does (`capture_until_done`), sending a PLC
/// trigger every 150 ms until `count` more parts are in.
fn trigger_parts(
    plc: &std::sync::mpsc::Sender<ExternalTrigger>,
    metrics: &Metrics,
    capture: &std::thread::JoinHandle<impl Sized>,
    first_id: u32,
    count: u32,
) {
    let target = metrics.frames_captured.get() + u64::from(count);
    let mut sent = 0;
    wait_for("the parts", capture, || {
        if metrics.frames_captured.get() >= target {
            return true;
        }
        if sent < count {
            plc.send(ExternalTrigger {
                tracking_id: first_id + sent,
                at: Instant::now(),
            })
            .expect("capture takes triggers");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(130));
        false
    });
}

async fn run(description: String, trigger: Option<TriggerSource>) -> Run {
    tokio::task::spawn_blocking(move || {
        let (trigger_tx, _trigger_rx) = tokio::sync::mpsc::channel(4096);
        let (frame_tx, _frame_rx) = std::sync::mpsc::sync_channel(4096);
        let (plc_tx, plc_rx) = std::sync::mpsc::channel();
        let answers = Arc::new(Answers::default());
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let armed_run = trigger.is_some();
        let capture = {
            let (metrics, stop, answers) = (metrics.clone(), stop.clone(), answers.clone());
            std::thread::spawn(move || {
                capture_until_done(
                    CaptureContext {
                        external_triggers: Some(ExternalTriggers {
                            triggers: plc_rx,
                            sink: answers,
                            stale_after: Duration::from_secs(2),
                        }),
                        genicam_trigger: trigger,
                        ..CaptureContext::new(description, trigger_tx, frame_tx, metrics, stop)
                    },
                    &CameraStatus::default(),
                )
            })
        };
        let mut unasked_after_the_parts = 0;
        if armed_run {
            wait_for("the camera to be armed", &capture, || {
                metrics.camera_armed.get() == 1
            });
            let unasked = metrics.frames_untriggered.get();
            trigger_parts(&plc_tx, &metrics, &capture, 100, TRIGGERS);
            // Armed, every frame answered a trigger: a frame taken before its trigger (one
            // left over from running free) would have answered it and left its own unasked.
            assert_eq!(
                metrics.frames_untriggered.get(),
                unasked,
                "frames nobody asked for came while armed"
            );
            // No trigger: the armed camera sends nothing, so aravissrc gives up after its 2 s
            // and capture starts it again, armed anew, without a fault.
            wait_for("the source to restart after the pause", &capture, || {
                metrics.camera_idle_restarts.get() >= 1 && metrics.camera_armed.get() == 1
            });
            assert_eq!(
                metrics.camera_restarts.get(),
                0,
                "a pause is not a lost camera"
            );
            trigger_parts(
                &plc_tx,
                &metrics,
                &capture,
                100 + TRIGGERS,
                TRIGGERS_AFTER_PAUSE,
            );
        } else {
            wait_for("a first frame", &capture, || {
                metrics.frames_untriggered.get() > 0
            });
            trigger_parts(&plc_tx, &metrics, &capture, 100, TRIGGERS);
            // The free-running camera goes on streaming with no trigger waiting.
            let unasked = metrics.frames_untriggered.get();
            wait_for("frames nobody asked for", &capture, || {
                metrics.frames_untriggered.get() >= unasked + 5
            });
            unasked_after_the_parts = metrics.frames_untriggered.get() - unasked;
        }
        stop.cancel();
        capture
            .join()
            .expect("capture thread")
            .expect("capture ends cleanly");
        let missed = answers.missed.lock().unwrap().clone();
        let answers = answers.captured.lock().unwrap().clone();
        Run {
            answers,
            missed,
            unasked_after_the_parts,
        }
    })
    .await
    .expect("capture runner")
}

#[tokio::test]
async fn a_gige_camera_armed_for_software_trigger_takes_one_frame_per_plc_trigger() {
    let (_camera_lock, _fake_camera) = fake_gige_camera().await;
    let description = CameraPipeline::Template {
        path: repo().join("pipelines/gige-aravis.gst"),
        params: BTreeMap::from([
            ("camera".to_owned(), ParamValue::Text("127.0.0.1".into())),
            ("exposure_us".to_owned(), ParamValue::Integer(10_000)),
        ]),
    }
    .description()
    .expect("gige-aravis.gst fills");

    let free = run(description.clone(), None).await;
    let armed = run(description, Some(TriggerSource("Software".into()))).await;
    for (name, run, count) in [
        ("free-running", &free, TRIGGERS),
        ("armed", &armed, TRIGGERS + TRIGGERS_AFTER_PAUSE),
    ] {
        let ids: Vec<u32> = run.answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            (100..100 + count).collect::<Vec<_>>(),
            "{name}: every trigger answered, in order"
        );
        let parts: Vec<u64> = run.answers.iter().map(|(_, p)| p.0).collect();
        assert_eq!(parts, (0..u64::from(count)).collect::<Vec<_>>(), "{name}");
        assert!(run.missed.is_empty(), "{name}: missed {:?}", run.missed);
    }
    // Free-running, the camera streams between triggers; armed, it sent nothing for 2 s (the
    // source's idle restart above says so).
    assert!(
        free.unasked_after_the_parts >= 5,
        "the free-running camera streamed only {} frames after the parts",
        free.unasked_after_the_parts
    );
}
