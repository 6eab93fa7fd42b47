//! The presence detector on a free-running camera (issue 18): a recorded belt with parts
//! passing, replayed through `pipelines/image-folder.gst` in real time, must give one part per
//! passage, at a frame where the part lies wholly inside the detector's region, and nothing
//! for a camera flash or the empty belt between parts.
//!
//! The scene: a 320×240 grey belt (level 60, ±4 noise) moving right, at 12 px a frame and then
//! 7, carrying 60×80 parts 300 px apart; the region is the middle 120×120 of the view. The
//! parts are either bright (level 200: the intensity measure sees them) or a fine checkerboard
//! of 20 and 100, as bright as the belt on average (only the edge measure sees them).

use std::collections::BTreeMap;
use std::time::Duration;

use linesight::capture::{
    CameraPipeline, CaptureContext, ParamValue, PresenceMeasure, PresenceRoi, PresenceSettings,
    run_capture,
};
use linesight::metrics::Metrics;
use linesight::part::Frame;
use tokio_util::sync::CancellationToken;

use crate::repo;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const PARTS: usize = 6;
const PART_PITCH: f32 = 300.0;
const PART_SIZE: (u32, u32) = (60, 80);
const PART_TOP: u32 = 80;
const ROI: PresenceRoi = PresenceRoi {
    x: 100,
    y: 60,
    width: 120,
    height: 120,
};

#[derive(Clone, Copy)]
enum Look {
    /// Level 200 on the belt's 60.
    Bright,
    /// 2-pixel squares of 20 and 100: the belt's mean, but all edges.
    Checkered,
}

/// Where the belt is at each frame (how far it has moved), and the frame the flash lights.
struct Scene {
    offsets: Vec<f32>,
    flash: usize,
}

impl Scene {
    fn new() -> Scene {
        // Part k's left edge is at offset − k·pitch − part width; the last must leave the view.
        let end = (PARTS - 1) as f32 * PART_PITCH + PART_SIZE.0 as f32 + WIDTH as f32;
        let mut offsets = vec![0.0];
        while *offsets.last().unwrap() < end {
            let speed = if offsets.len() < 90 { 12.0 } else { 7.0 };
            offsets.push(offsets.last().unwrap() + speed);
        }
        let mut scene = Scene { offsets, flash: 0 };
        // The flash lights one frame between two parts, with the region empty around it.
        scene.flash = (30..scene.offsets.len() - 1)
            .find(|&f| (f - 2..=f + 2).all(|g| scene.parts_in_region(g).is_empty()))
            .expect("a gap between parts");
        scene
    }

    /// The left edge of part `k` in frame `f`.
    fn part_left(&self, k: usize, f: usize) -> f32 {
        self.offsets[f] - k as f32 * PART_PITCH - PART_SIZE.0 as f32
    }

    /// Parts that overlap the region in frame `f`.
    fn parts_in_region(&self, f: usize) -> Vec<usize> {
        (0..PARTS)
            .filter(|&k| {
                let left = self.part_left(k, f);
                left < (ROI.x + ROI.width) as f32 && left + PART_SIZE.0 as f32 > ROI.x as f32
            })
            .collect()
    }

    fn frame(&self, f: usize, look: Look) -> image::GrayImage {
        let flash = if f == self.flash { 80 } else { 0 };
        let lefts: Vec<f32> = (0..PARTS).map(|k| self.part_left(k, f)).collect();
        image::GrayImage::from_fn(WIDTH, HEIGHT, |x, y| {
            // Deterministic noise of ±4 grey levels.
            let noise = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ (f as u32 * 31))
                .wrapping_mul(2_654_435_761)
                >> 29) as i32
                - 4;
            let on_part = (PART_TOP..PART_TOP + PART_SIZE.1).contains(&y)
                && lefts
                    .iter()
                    .any(|&left| (x as f32) >= left && (x as f32) < left + PART_SIZE.0 as f32);
            let level = match (on_part, look) {
                (false, _) => 60,
                (true, Look::Bright) => 200,
                (true, Look::Checkered) => {
                    if (x / 2 + y / 2) % 2 == 0 {
                        20
                    } else {
                        100
                    }
                }
            };
            image::Luma([(level + noise + flash).clamp(0, 255) as u8])
        })
    }
}

/// Replays the scene through `image-folder.gst` with `settings`; returns the parts' frames and
/// the metrics.
async fn replay(look: Look, settings: PresenceSettings) -> (Vec<Frame>, Metrics, usize) {
    let scene = Scene::new();
    let dir = tempfile::tempdir().expect("temp dir");
    for f in 0..scene.offsets.len() {
        scene
            .frame(f, look)
            .save(dir.path().join(format!("frame-{f:04}.png")))
            .expect("write a PNG");
    }
    let description = CameraPipeline::Template {
        path: repo().join("pipelines/image-folder.gst"),
        params: BTreeMap::from([
            (
                "location".to_owned(),
                ParamValue::Text(dir.path().join("frame-%04d.png").display().to_string()),
            ),
            ("frames_per_s".to_owned(), ParamValue::Integer(200)),
            ("width".to_owned(), ParamValue::Integer(WIDTH.into())),
            ("height".to_owned(), ParamValue::Integer(HEIGHT.into())),
        ]),
    }
    .description()
    .expect("image-folder.gst fills");
    let frames_total = scene.offsets.len();
    tokio::task::spawn_blocking(move || {
        let (trigger_tx, mut trigger_rx) = tokio::sync::mpsc::channel(4096);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(4096);
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let watchdog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.is_cancelled() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                stop.cancel();
            })
        };
        let result = run_capture(&mut CaptureContext {
            presence: Some(settings),
            ..CaptureContext::new(
                description,
                trigger_tx,
                frame_tx,
                metrics.clone(),
                stop.clone(),
            )
        });
        stop.cancel();
        watchdog.join().expect("watchdog");
        result.expect("the replay runs to its end");
        let mut triggers = 0;
        while trigger_rx.try_recv().is_ok() {
            triggers += 1;
        }
        let frames: Vec<Frame> = frame_rx.try_iter().collect();
        assert_eq!(triggers, frames.len(), "a trigger for every part's frame");
        (frames, metrics, frames_total)
    })
    .await
    .expect("capture thread")
}

fn settings(measure: PresenceMeasure, threshold: f32) -> PresenceSettings {
    PresenceSettings {
        roi: Some(ROI),
        measure,
        threshold,
        enter_frames: 2,
        leave_frames: 3,
        max_passage_frames: 300,
        empty_level: None,
    }
}

/// The columns of `frame` whose part rows differ from the belt: where the part lies.
fn part_columns(frame: &Frame, look: Look) -> (u32, u32) {
    let image = &frame.image;
    let row = |y: u32| &image.pixels[(y * image.width) as usize..((y + 1) * image.width) as usize];
    let middle = PART_TOP + PART_SIZE.1 / 2;
    let columns: Vec<u32> = (0..image.width)
        .filter(|&x| match look {
            Look::Bright => row(middle)[x as usize] > 130,
            // A checkerboard column has a dark and a bright pixel in any 4 rows.
            Look::Checkered => (middle..middle + 4).any(|y| row(y)[x as usize] < 40),
        })
        .collect();
    (
        *columns.first().expect("a part in the frame"),
        *columns.last().unwrap(),
    )
}

fn assert_one_whole_part_per_passage(
    frames: &[Frame],
    metrics: &Metrics,
    total: usize,
    look: Look,
) {
    assert_eq!(frames.len(), PARTS, "one part per passage");
    assert_eq!(metrics.frames_captured.get(), PARTS as u64);
    assert_eq!(
        metrics.frames_watched.get(),
        total as u64,
        "the detector saw every frame"
    );
    for (k, frame) in frames.iter().enumerate() {
        assert_eq!(frame.part_id.0, k as u64);
        let (first, last) = part_columns(frame, look);
        assert!(
            first >= ROI.x && last < ROI.x + ROI.width,
            "part {k}: columns {first}..={last} are not all inside the region {ROI:?}"
        );
        assert!(
            last - first + 1 >= PART_SIZE.0 - 2,
            "part {k}: only columns {first}..={last} of the part are in the frame"
        );
    }
}

#[tokio::test]
async fn a_free_running_camera_gives_one_part_per_passage_at_a_frame_where_it_is_whole() {
    let (frames, metrics, total) =
        replay(Look::Bright, settings(PresenceMeasure::Intensity, 30.0)).await;
    assert_one_whole_part_per_passage(&frames, &metrics, total, Look::Bright);
    let empty = metrics.presence_empty_level.get();
    assert!(
        (empty - 60.0).abs() < 2.0,
        "the empty belt learnt as {empty}"
    );
}

#[tokio::test]
async fn parts_as_bright_as_the_belt_are_found_by_their_edges() {
    // The mean grey level does not move: the intensity measure finds nothing at all.
    let (frames, metrics, _) =
        replay(Look::Checkered, settings(PresenceMeasure::Intensity, 10.0)).await;
    assert!(frames.is_empty(), "{} parts by intensity", frames.len());
    assert_eq!(metrics.frames_captured.get(), 0);
    let (frames, metrics, total) =
        replay(Look::Checkered, settings(PresenceMeasure::Edges, 10.0)).await;
    assert_one_whole_part_per_passage(&frames, &metrics, total, Look::Checkered);
}
