//! Real cameras (issue 18): a network camera served by gst-rtsp-server (Debian's library,
//! through the gstreamer-rtsp-server crate) and pulled by the station through rtspsrc. The
//! camera goes away mid-run and comes back: the station shows FAULT with the reason, keeps
//! running, and resumes capture by itself.

use std::sync::mpsc;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use linesight::station::RunOptions;
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, free_port, poll_within, simulated_station, station_config};

/// An RTSP camera on 127.0.0.1 at `/line`, on a main loop of its own. Dropping it stops the
/// server and closes every client's connection, as a camera that loses power would.
pub struct RtspCamera {
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspCamera {
    /// 256×256 Motion-JPEG at 5 frames/s from a test source.
    fn start(port: u16) -> RtspCamera {
        RtspCamera::start_launch(
            port,
            "( videotestsrc is-live=true pattern=ball \
             ! video/x-raw,format=I420,width=256,height=256,framerate=5/1 \
             ! jpegenc ! rtpjpegpay name=pay0 pt=26 )",
        )
    }

    /// The media `launch` describes (gst-rtsp-server's launch syntax, payloader `pay0`).
    pub fn start_launch(port: u16, launch: &str) -> RtspCamera {
        gst::init().expect("GStreamer");
        let (ready_tx, ready_rx) = mpsc::channel();
        let launch = launch.to_owned();
        let thread = std::thread::spawn(move || {
            let context = glib::MainContext::new();
            let main_loop = glib::MainLoop::new(Some(&context), false);
            context
                .with_thread_default(|| {
                    let server = rtsp::RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = rtsp::RTSPMediaFactory::new();
                    factory.set_launch(&launch);
                    factory.set_shared(true);
                    server
                        .mount_points()
                        .expect("mount points")
                        .add_factory("/line", factory);
                    let source = server.attach(Some(&context)).expect("RTSP server listens");
                    ready_tx.send(main_loop.clone()).expect("test waits");
                    main_loop.run();
                    // The camera goes dark: every client's connection is closed, then the
                    // listening socket.
                    server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                    // The source lives in this thread's context, not the default one.
                    if let Some(source) = context.find_source_by_id(&source) {
                        source.destroy();
                    }
                })
                .expect("own main context");
        });
        let main_loop = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the RTSP server starts");
        RtspCamera {
            main_loop,
            thread: Some(thread),
        }
    }
}

impl Drop for RtspCamera {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The camera vanishes mid-run and returns: FAULT with the reason while it is away, the
/// station never stops, capture resumes by itself and the FAULT clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_camera_that_vanishes_faults_the_station_and_capture_resumes_when_it_returns() {
    let _cpu = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut camera = Some(RtspCamera::start(port));

    let pipeline = dir.path().join("rtsp.gst");
    std::fs::write(
        &pipeline,
        format!(
            "rtspsrc location=rtsp://127.0.0.1:{port}/line latency=0 protocols=tcp \
             ! rtpjpegdepay ! jpegdec ! videoconvert ! appsink name=frames sync=false"
        ),
    )
    .expect("pipeline file");
    let mut config = station_config(&dir.path().join("data"), &[]);
    // A real camera: no simulated parts, the pipeline above, a watchdog on silence.
    config.simulator = None;
    config.views.clear();
    config.camera_pipeline = linesight::capture::CameraPipeline::File(pipeline);
    config.camera_stall_timeout = Some(Duration::from_secs(3));
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let (api, metrics) = (station.api(), station.metrics());
    let shutdown = CancellationToken::new();
    // A failing assertion stops the station too, so the test ends rather than waiting on a
    // capture that retries forever.
    let _stop_on_exit = shutdown.clone().drop_guard();
    let run = tokio::spawn(station.run(RunOptions::default(), shutdown.clone()));
    let fault_active = || async {
        api.alarms
            .alarm("station_fault")
            .await
            .expect("the station_fault alarm is defined")
            .active
    };

    let streaming = poll_within(Duration::from_secs(60), || async {
        metrics.frames_captured.get() >= 5
    })
    .await;
    assert!(streaming, "frames arrive from the RTSP camera");
    assert!(!fault_active().await, "no fault while the camera streams");

    // The camera goes away.
    drop(camera.take());
    let faulted = poll_within(Duration::from_secs(60), || async {
        metrics.camera_restarts.get() >= 1 && fault_active().await
    })
    .await;
    assert!(
        faulted,
        "a vanished camera puts the station in FAULT (restarts {}, alarm {:?})",
        metrics.camera_restarts.get(),
        api.alarms
            .alarm("station_fault")
            .await
            .map(|v| (v.active, v.condition))
    );
    let message = api
        .alarms
        .alarm("station_fault")
        .await
        .and_then(|view| view.condition)
        .unwrap_or_default();
    assert!(
        message.contains("camera lost"),
        "the reason is given: {message}"
    );
    // The station view (`/api/v1/station`'s `health`) says the same.
    let health = api.health.read().expect("health").clone();
    assert!(
        health.fault && health.message.contains("camera lost"),
        "the API's health: {health:?}"
    );
    assert!(
        !run.is_finished(),
        "the station keeps running without its camera"
    );

    // It comes back on the same address: capture resumes by itself and the FAULT clears.
    let frames_at_return = metrics.frames_captured.get();
    camera = Some(RtspCamera::start(port));
    let resumed = poll_within(Duration::from_secs(90), || async {
        metrics.frames_captured.get() >= frames_at_return + 5 && !fault_active().await
    })
    .await;
    assert!(
        resumed,
        "capture resumes and the FAULT clears (frames {} → {}, restarts {})",
        frames_at_return,
        metrics.frames_captured.get(),
        metrics.camera_restarts.get()
    );

    shutdown.cancel();
    let report = run
        .await
        .expect("joins")
        .expect("a clean stop after the camera came back");
    assert!(report.parts >= frames_at_return + 5);
    drop(camera);
}
