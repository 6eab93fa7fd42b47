//! Every camera pipeline in `pipelines/` (issue 18), filled as a station config fills it and
//! run through the station's capture against a real source:
//!
//! - `rtsp.gst`: an H.264 stream from gst-rtsp-server (x264 on a test source), pulled by
//!   rtspsrc and decoded by libav;
//! - `gige-aravis.gst`: aravis's own fake GigE Vision camera (`arv-fake-gv-camera-0.8`) on
//!   loopback;
//! - `gige-aravis-bayer.gst`: the same camera asked for Bayer frames (it switches its
//!   PixelFormat to BayerRG8), demosaiced by bayer2rgb;
//! - `file-replay.gst`: an H.264 Matroska file recorded by GStreamer for the test;
//! - `image-folder.gst`: PNG images written by the test;
//! - `simulated.gst`: fed by a frame feeder, as the built-in simulated line feeds it;
//! - `test-pattern.gst`: GStreamer's test source;
//! - `usb-v4l2.gst`: this machine has no USB camera, so it runs against a device node that is
//!   not there and must fail with an error that names it.
//!
//! A file in `pipelines/` this test does not know fails it, so a new template comes with its
//! run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use linesight::capture::{
    CameraPipeline, CaptureContext, CaptureError, FrameFeeder, ParamValue, run_capture,
};
use linesight::metrics::Metrics;
use linesight::part::Frame;
use tokio_util::sync::CancellationToken;

use crate::camera::RtspCamera;
use crate::{CPU_HEAVY, fake_gige_camera, free_port, repo};

fn pipelines() -> PathBuf {
    repo().join("pipelines")
}

/// A template's description, filled as `[camera.params]` would fill it.
fn fill(file: &str, params: &[(&str, ParamValue)]) -> String {
    CameraPipeline::Template {
        path: pipelines().join(file),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
    .description()
    .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A plain pipeline file's description, as `pipeline = ` reads it.
fn plain(file: &str) -> String {
    CameraPipeline::File(pipelines().join(file))
        .description()
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn text(value: impl Into<String>) -> ParamValue {
    ParamValue::Text(value.into())
}

/// Runs capture on `description` until `max_parts` frames, its end of stream, an error, or
/// `limit`; returns how it ended and the frames it handed to inspection.
async fn capture(
    description: String,
    feeder: Option<Box<dyn FrameFeeder>>,
    max_parts: Option<u64>,
    limit: Duration,
) -> (Result<u64, CaptureError>, Vec<Frame>) {
    tokio::task::spawn_blocking(move || {
        let (trigger_tx, mut trigger_rx) = tokio::sync::mpsc::channel(4096);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(4096);
        let stop = CancellationToken::new();
        let _stop_later = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(limit);
                stop.cancel();
            })
        };
        let result = run_capture(&mut CaptureContext {
            feeder,
            max_parts,
            ..CaptureContext::new(description, trigger_tx, frame_tx, Metrics::new(), stop)
        });
        while trigger_rx.try_recv().is_ok() {}
        (result.map(|s| s.frames), frame_rx.try_iter().collect())
    })
    .await
    .expect("capture thread")
}

/// The frames are `count` images of `width`×`height`, with something in them.
fn assert_frames(file: &str, frames: &[Frame], count: usize, (width, height): (u32, u32)) {
    assert_eq!(frames.len(), count, "{file}: frames");
    for frame in frames {
        assert_eq!(
            (frame.image.width, frame.image.height),
            (width, height),
            "{file}: size"
        );
        assert_eq!(frame.image.pixels.len(), (width * height) as usize);
    }
    let distinct: std::collections::HashSet<u8> = frames
        .iter()
        .flat_map(|f| f.image.pixels.iter().copied())
        .collect();
    assert!(distinct.len() > 8, "{file}: the frames are not blank");
}

/// Pushes `count` 256×256 grey ramps into the pipeline's `appsrc name=source`.
struct RampFeeder {
    count: u64,
}

impl FrameFeeder for RampFeeder {
    fn feed(
        self: Box<Self>,
        appsrc: gst_app::AppSrc,
        _max_parts: Option<u64>,
        _software_trigger: Option<std::sync::mpsc::Receiver<()>>,
        stop: CancellationToken,
    ) {
        for n in 0..self.count {
            if stop.is_cancelled() {
                break;
            }
            let pixels: Vec<u8> = (0..256 * 256)
                .map(|i| ((i + n as usize) % 251) as u8)
                .collect();
            if appsrc
                .push_buffer(gst::Buffer::from_mut_slice(pixels))
                .is_err()
            {
                break;
            }
        }
        let _ = appsrc.end_of_stream();
    }
}

/// Runs a gst-launch description to its end of stream (to record a test file).
fn run_to_end(description: &str) {
    gst::init().expect("GStreamer");
    let pipeline = gst::parse::launch(description).expect("recording pipeline");
    pipeline.set_state(gst::State::Playing).expect("record");
    let bus = pipeline.bus().expect("bus");
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the recording ends");
    let _ = pipeline.set_state(gst::State::Null);
    assert!(
        matches!(message.view(), gst::MessageView::Eos(_)),
        "recording failed: {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pipeline_template_is_filled_and_runs_against_a_real_source() {
    let _cpu = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Duration::from_secs(60);
    let mut ran = Vec::new();
    let mut since = std::time::Instant::now();
    let mut done = |file: &'static str, ran: &mut Vec<&'static str>| {
        println!("{file}: ran in {:.1?}", since.elapsed());
        since = std::time::Instant::now();
        ran.push(file);
    };

    // RTSP: H.264 from gst-rtsp-server.
    let port = free_port();
    let camera = RtspCamera::start_launch(
        port,
        "( videotestsrc is-live=true pattern=ball \
         ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 \
         ! rtph264pay name=pay0 pt=96 config-interval=1 )",
    );
    let description = fill(
        "rtsp.gst",
        &[
            ("location", text(format!("rtsp://127.0.0.1:{port}/line"))),
            ("latency_ms", ParamValue::Integer(0)),
        ],
    );
    let (result, frames) = capture(description, None, Some(10), minute).await;
    drop(camera);
    assert_eq!(result.expect("rtsp.gst runs"), 10, "rtsp.gst");
    assert_frames("rtsp.gst", &frames, 10, (256, 256));
    done("rtsp.gst", &mut ran);

    // GigE Vision: aravis's fake camera on loopback, opened by its address.
    let (_camera_lock, _fake_camera) = fake_gige_camera().await;
    let description = fill(
        "gige-aravis.gst",
        &[
            ("camera", text("127.0.0.1")),
            ("exposure_us", ParamValue::Integer(10_000)),
        ],
    );
    // The fake camera answers once it has bound its port: try until it does.
    let deadline = tokio::time::Instant::now() + minute;
    let (result, frames) = loop {
        let (result, frames) = capture(description.clone(), None, Some(5), minute).await;
        if result.is_ok() || tokio::time::Instant::now() >= deadline {
            break (result, frames);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(result.expect("gige-aravis.gst runs"), 5, "gige-aravis.gst");
    assert_frames("gige-aravis.gst", &frames, 5, (256, 256));
    done("gige-aravis.gst", &mut ran);

    // The same camera sending Bayer frames: the caps set its PixelFormat.
    let description = fill(
        "gige-aravis-bayer.gst",
        &[
            ("camera", text("127.0.0.1")),
            ("bayer", text("rggb")),
            ("exposure_us", ParamValue::Integer(10_000)),
        ],
    );
    let (result, frames) = capture(description, None, Some(5), minute).await;
    assert_eq!(
        result.expect("gige-aravis-bayer.gst runs"),
        5,
        "gige-aravis-bayer.gst"
    );
    assert_frames("gige-aravis-bayer.gst", &frames, 5, (256, 256));
    let format = std::process::Command::new("arv-tool-0.8")
        .args(["-a", "127.0.0.1", "control", "PixelFormat"])
        .output()
        .expect("arv-tool-0.8 (aravis-tools-cli) runs");
    let format = String::from_utf8_lossy(&format.stdout);
    assert!(
        format.contains("BayerRG8"),
        "the camera was asked for Bayer frames: {format}"
    );
    done("gige-aravis-bayer.gst", &mut ran);

    // A video file: 12 frames of H.264 in Matroska, recorded here.
    let video = dir.path().join("line.mkv");
    run_to_end(&format!(
        "videotestsrc num-buffers=12 pattern=ball \
         ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast ! h264parse ! matroskamux \
         ! filesink location={}",
        video.display()
    ));
    let description = fill(
        "file-replay.gst",
        &[("location", text(video.display().to_string()))],
    );
    let (result, frames) = capture(description, None, None, minute).await;
    assert_eq!(result.expect("file-replay.gst runs"), 12);
    assert_frames("file-replay.gst", &frames, 12, (256, 256));
    done("file-replay.gst", &mut ran);

    // A folder of PNG images.
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("images folder");
    for n in 0..5u32 {
        image::GrayImage::from_fn(320, 240, |x, y| {
            image::Luma([((x + y + n * 20) % 256) as u8])
        })
        .save(images.join(format!("part-{n:04}.png")))
        .expect("write a PNG");
    }
    let description = fill(
        "image-folder.gst",
        &[
            (
                "location",
                text(images.join("part-%04d.png").display().to_string()),
            ),
            ("frames_per_s", ParamValue::Integer(50)),
        ],
    );
    let (result, frames) = capture(description, None, None, minute).await;
    assert_eq!(result.expect("image-folder.gst runs"), 5);
    assert_frames("image-folder.gst", &frames, 5, (256, 256));
    done("image-folder.gst", &mut ran);

    // The simulated line's pipeline, fed as the simulator feeds it.
    let (result, frames) = capture(
        plain("simulated.gst"),
        Some(Box::new(RampFeeder { count: 7 })),
        None,
        minute,
    )
    .await;
    assert_eq!(result.expect("simulated.gst runs"), 7);
    assert_frames("simulated.gst", &frames, 7, (256, 256));
    done("simulated.gst", &mut ran);

    // GStreamer's test source.
    let (result, frames) = capture(plain("test-pattern.gst"), None, None, minute).await;
    assert_eq!(result.expect("test-pattern.gst runs"), 30);
    assert_frames("test-pattern.gst", &frames, 30, (320, 240));
    done("test-pattern.gst", &mut ran);

    // USB: no camera here; a device node that is not there is an error that names it.
    let missing = dir.path().join("video-missing");
    let description = fill(
        "usb-v4l2.gst",
        &[("device", text(missing.display().to_string()))],
    );
    let (result, frames) = capture(description, None, Some(1), minute).await;
    let error = result.expect_err("no such device").to_string();
    assert!(
        error.contains("video-missing") || error.contains("v4l2src"),
        "usb-v4l2.gst: the error names the device or its element: {error}"
    );
    assert!(frames.is_empty());
    println!("usb-v4l2.gst with no device: {error}");
    done("usb-v4l2.gst", &mut ran);

    let mut shipped: Vec<String> = std::fs::read_dir(pipelines())
        .expect("pipelines/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".gst"))
        .collect();
    shipped.sort();
    let mut ran: Vec<String> = ran.into_iter().map(str::to_owned).collect();
    ran.sort();
    assert_eq!(shipped, ran, "every file in pipelines/ runs in this test");
}
