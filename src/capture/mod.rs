//! Capture: run the camera's GStreamer pipeline and hand each frame on as a part.
//!
//! The pipeline is a gst-launch description ending in `appsink name=frames`: a file, an inline
//! string, or a template from `pipelines/` filled from the config ([`CameraPipeline`],
//! [`template`]); the station asks that appsink for 8-bit grey. Each frame that reaches
//! the appsink is one part — or, for a free-running camera with a [`presence`] detector, the
//! best frame of each part's passage through the view is. A part gets the next [`PartId`] and
//! its frame's capture time, and then
//!
//! 1. a [`Trigger`] goes to the tracker over a channel that *waits*, so no part is ever lost
//!    to tracking, and
//! 2. the [`Frame`] goes to inspection over a bounded queue that *never waits*: when inspection
//!    is behind, the frame is dropped and counted, and the tracker rejects the part by policy.
//!
//! Errors on GStreamer's streaming threads arrive on the bus; [`run_capture`] turns the first
//! into a [`CaptureError`] naming the element, and always leaves the pipeline in `Null`.
//!
//! A pipeline that starts with `appsrc name=source` is fed from outside GStreamer by a
//! [`FrameFeeder`] handed in with the [`CaptureContext`] (the simulated line's camera is one);
//! capture runs it on a thread of its own and joins it when the stream ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod genicam;
pub mod outlet;
pub mod presence;
pub mod template;

pub use self::genicam::{GenicamTrigger, TriggerError, TriggerSource};
pub use self::outlet::{Delivered, FrameOutlet, FrameRing, Popped};
pub use self::presence::{PresenceMeasure, PresenceRoi, PresenceSettings, RoiOutsideFrame};
pub use self::template::{CameraPipeline, ParamValue, PipelineTemplate, TemplateError};

use self::presence::{GrayView, PresenceDetector};

use crate::metrics::Metrics;
use crate::part::{
    ExternalTrigger, Frame, GrayImage, PartId, StationClock, StationTime, Trigger, TriggerSink,
};

/// Name of the appsink every pipeline ends in.
pub const APPSINK_NAME: &str = "frames";

/// How long a stopping pipeline may take to drain before it is stopped hard.
const EOS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Name of the appsrc a [`FrameFeeder`] feeds.
pub const APPSRC_NAME: &str = "source";

/// Feeds a pipeline's `appsrc name=source` with frames made outside GStreamer.
pub trait FrameFeeder: Send {
    /// Pushes frames into `appsrc` until `max_parts` frames or `stop`, then ends the stream.
    /// With `software_trigger`, one frame per message received (a triggered camera);
    /// without, on the feeder's own clock (a free-running one). Runs on a thread of its own,
    /// which capture starts and joins.
    fn feed(
        self: Box<Self>,
        appsrc: gst_app::AppSrc,
        max_parts: Option<u64>,
        software_trigger: Option<Receiver<()>>,
        stop: CancellationToken,
    );
}

/// Captures asked for from outside the camera (server mode's PLC trigger): each frame that
/// reaches the appsink belongs to the oldest trigger waiting, if it was captured at or after
/// that trigger; a frame with none waiting, or captured before the oldest (a free-running
/// camera's frame of the belt, still on its way when the trigger came), is discarded (counted
/// in `frames_untriggered`). A fed pipeline's feeder gets a software trigger per trigger; a
/// free-running camera's next frame captured after it answers it.
pub struct ExternalTriggers {
    pub triggers: Receiver<ExternalTrigger>,
    /// Told which part each trigger became, or that none answered it.
    pub sink: Arc<dyn TriggerSink>,
    /// A trigger whose frame has not come after this long is missed: its part could not make
    /// the gate anyway.
    pub stale_after: Duration,
}

/// Why capture stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pipeline(#[from] TemplateError),
    #[error(transparent)]
    Presence(#[from] RoiOutsideFrame),
    #[error("camera trigger: {0}")]
    Trigger(#[from] TriggerError),
    /// An armed GenICam camera's source gave up waiting for a trigger (aravissrc's buffer
    /// timeout, at least 2 s): no part came, nothing is wrong. Capture starts it again.
    #[error("the triggered camera's source timed out waiting for a trigger")]
    TriggerIdle,
    #[error("GStreamer init: {0}")]
    Init(#[from] gst::glib::Error),
    #[error("pipeline description is invalid: {0}")]
    Parse(String),
    #[error("pipeline has no {kind} named `{name}`")]
    MissingElement {
        kind: &'static str,
        name: &'static str,
    },
    #[error("cannot start the frame feeder's thread: {0}")]
    Feeder(std::io::Error),
    #[error("pipeline will not start: {0}")]
    StateChange(#[from] gst::StateChangeError),
    #[error("camera pipeline error from {element}: {message}{}", .debug.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Stream {
        element: String,
        message: String,
        debug: Option<String>,
    },
    #[error("the camera delivered no frame for {after:?}")]
    Stalled { after: Duration },
    #[error("the camera ended its stream by itself")]
    Ended,
    #[error(
        "the pipeline starts with `appsrc name=source`, which only the simulated line feeds, \
         and nothing feeds it here"
    )]
    Unfed,
    /// A stage capture hands its parts to (inspection, tracking) closed its end: the station
    /// is stopping, or that stage ended. The camera is fine, and starting it again would only
    /// fail the same way, so capture stops; it is no lost camera.
    #[error("the {stage} stage stopped taking parts, so capture stopped (the camera is fine)")]
    StageStopped { stage: &'static str },
}

impl CaptureError {
    /// Whether the camera itself went away (unreachable, an error while streaming, silent)
    /// rather than the pipeline being wrong: worth trying again.
    pub fn is_camera_lost(&self) -> bool {
        matches!(
            self,
            CaptureError::Stream { .. }
                | CaptureError::StateChange(_)
                | CaptureError::Stalled { .. }
                | CaptureError::Ended
                // Arming talks to the camera over the network: it fails as the camera does.
                | CaptureError::Trigger(TriggerError::Refused { .. } | TriggerError::NoCamera)
        )
    }
}

/// What the end of the camera's stream means (`[camera] end_of_stream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndOfStream {
    /// A live source (a camera) that ends has gone away; any other (a file, a replay) is
    /// done, and capture ends with it.
    #[default]
    Auto,
    /// Capture ends with the stream, live or not.
    Stop,
    /// The camera went away: FAULT, then tried again. For sources GStreamer does not call
    /// live whose end is a lost connection: a `tcpserversrc` whose sender closed it.
    Reconnect,
}

impl EndOfStream {
    /// Whether an end of stream nobody asked for is a lost camera; `live` is the source's
    /// answer to the latency query, when frames have flowed.
    fn means_lost(self, live: Option<bool>) -> bool {
        match self {
            EndOfStream::Auto => live == Some(true),
            EndOfStream::Stop => false,
            EndOfStream::Reconnect => true,
        }
    }
}

/// What a finished capture run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSummary {
    pub frames: u64,
    pub next_part_id: u64,
}

/// Everything the capture stage needs.
pub struct CaptureContext {
    pub pipeline_description: String,
    /// Feeds the pipeline's `appsrc name=source`, when it has one.
    pub feeder: Option<Box<dyn FrameFeeder>>,
    /// Id of the first part of this run.
    pub first_part_id: u64,
    /// Stop after this many frames.
    pub max_parts: Option<u64>,
    pub triggers: mpsc::Sender<Trigger>,
    pub frames: FrameOutlet,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
    pub stop: CancellationToken,
    /// Set in server mode: frames are taken only when the PLC triggers.
    pub external_triggers: Option<ExternalTriggers>,
    /// A live camera that delivers no frame for this long is lost ([`CaptureError::Stalled`]):
    /// some sources (a network camera whose sender went quiet) never post an error.
    pub stall_timeout: Option<Duration>,
    /// Whether an end of stream is the end of the run or a lost camera.
    pub end_of_stream: EndOfStream,
    /// A free-running camera: one part per passage through its view, found by the presence
    /// detector ([`presence`]) instead of one per frame.
    pub presence: Option<PresenceSettings>,
    /// A GenICam camera (aravissrc) put in trigger mode on this source once it streams
    /// ([`genicam`]); with `Software`, each external trigger fires it.
    pub genicam_trigger: Option<TriggerSource>,
    /// With external triggers: further fed cameras fired with each one (the simulated line's
    /// other views of the part).
    pub fire_also: Vec<Sender<()>>,
    /// A fed camera fired from outside capture, one frame a message (a simulated view fired
    /// with the station's camera in server mode).
    pub fed_trigger: Option<Receiver<()>>,
}

impl CaptureContext {
    /// A context for `pipeline_description` with everything optional left out: part ids from
    /// 0, no frame limit, a clock started now, no feeder, no external or GenICam triggers, no
    /// presence detector, no stall watchdog.
    pub fn new(
        pipeline_description: String,
        triggers: mpsc::Sender<Trigger>,
        frames: impl Into<FrameOutlet>,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> CaptureContext {
        CaptureContext {
            pipeline_description,
            feeder: None,
            first_part_id: 0,
            max_parts: None,
            triggers,
            frames: frames.into(),
            clock: StationClock::start(),
            metrics,
            stop,
            external_triggers: None,
            stall_timeout: None,
            end_of_stream: EndOfStream::Auto,
            presence: None,
            genicam_trigger: None,
            fire_also: Vec::new(),
            fed_trigger: None,
        }
    }
}

/// Whether the camera is there, shared with the station's health: set lost by
/// [`capture_until_done`] when the camera goes away, back once a frame arrives again; set
/// stopped, for good, when capture ended because nothing takes its parts any more.
#[derive(Debug, Default)]
pub struct CameraStatus {
    /// Why the camera was lost, while it is.
    lost: Mutex<Option<String>>,
    /// Frames captured when it was lost: a frame past this means it is back.
    frames_at_loss: AtomicU64,
    /// Why capture stopped for good with the camera still there (a stage downstream stopped
    /// taking parts, [`CaptureError::StageStopped`]). No frame comes after it, so unlike a
    /// loss it never clears.
    stopped: Mutex<Option<String>>,
}

impl CameraStatus {
    /// Marks the camera lost for `reason`, with `frames` captured so far (a later frame means
    /// it is back).
    pub fn mark_lost(&self, reason: String, frames: u64) {
        self.frames_at_loss.store(frames, Ordering::Relaxed);
        *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// Marks capture stopped for good for `reason`: the camera is fine, but no frame of it
    /// will be seen again in this run.
    pub fn mark_stopped(&self, reason: String) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// Why capture stopped for good while the camera was fine, if it did; the health reads
    /// this to say so rather than "camera lost, retrying".
    pub fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the camera is lost, or `None` when it is there; `frames` is the frames captured
    /// so far (a new one clears the loss). A capture stopped for good ([`Self::stopped`])
    /// counts as lost, with that reason: the parts going by are not seen either way, and the
    /// readers of this (the PLC's heartbeat word, a view's wait for frames) must act as for a
    /// lost camera.
    pub fn lost(&self, frames: u64) -> Option<String> {
        if let Some(stopped) = self.stopped() {
            return Some(stopped);
        }
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if lost.is_some() && frames > self.frames_at_loss.load(Ordering::Relaxed) {
            tracing::info!("the camera is back; capture resumed");
            *lost = None;
        }
        lost.clone()
    }
}

/// After a GenICam camera is put in trigger mode, frames it took running free may still be on
/// their way (in aravis's buffers, in the pipeline): for this long every frame is discarded
/// and no trigger is fired, so no part is judged on an image taken before its trigger.
const ARM_SETTLE: Duration = Duration::from_millis(250);

/// Where arming a GenICam camera stands in one capture run.
enum Arming {
    /// Waiting for the source to negotiate (aravissrc configures the camera then).
    Waiting(TriggerSource),
    /// In trigger mode since then; free-running frames still draining.
    Settling(GenicamTrigger, Instant),
}

/// How long capture waits before the first try to get a lost camera back; it doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Runs [`run_capture`] until the stream ends or `stop`, bringing a lost camera back: a camera
/// that goes away (unreachable, an error while streaming, silent past `stall_timeout`) is
/// marked lost in `status` (the station shows FAULT with the reason; the parts that go by
/// meanwhile are never seen, so the PLC diverts them) and tried again with back-off, forever.
/// A wrong pipeline, or a fed one (its feeder runs once), ends capture with the error; so does
/// a stage downstream that stopped taking parts ([`CaptureError::StageStopped`], marked
/// stopped in `status`), unless `stop` was asked for. Blocking.
pub fn capture_until_done(
    mut ctx: CaptureContext,
    status: &CameraStatus,
) -> Result<CaptureSummary, CaptureError> {
    let first_part_id = ctx.first_part_id;
    let mut wait = RECONNECT_FIRST;
    loop {
        let fed = ctx.feeder.is_some();
        let run_from = ctx.first_part_id;
        let outcome = run_capture(&mut ctx);
        // A camera that streamed before it went away again is a new loss, not the same one
        // still failing: the back-off starts over.
        if ctx.first_part_id != run_from {
            wait = RECONNECT_FIRST;
        }
        match outcome {
            Ok(_) => break,
            Err(CaptureError::TriggerIdle) => {
                if ctx.stop.is_cancelled() {
                    break;
                }
                tracing::debug!(
                    "no trigger for a while: the triggered camera's source starts again"
                );
                ctx.metrics.camera_idle_restarts.inc();
            }
            // Nothing takes the parts any more: the camera is fine, and a new pipeline would
            // fail on its first frame the same way, so capture ends instead of restarting it.
            // While the station stops, that stage may simply have finished first.
            Err(CaptureError::StageStopped { stage }) if ctx.stop.is_cancelled() => {
                tracing::debug!(stage, "a stage after capture stopped first while stopping");
                break;
            }
            Err(error @ CaptureError::StageStopped { .. }) => {
                tracing::error!(%error, "capture stopped; every part is rejected by policy");
                status.mark_stopped(error.to_string());
                return Err(error);
            }
            Err(error) if error.is_camera_lost() && !fed && !ctx.stop.is_cancelled() => {
                tracing::error!(%error, retry_in = ?wait, "camera lost; every part is rejected by policy until it is back");
                ctx.metrics.camera_restarts.inc();
                status.mark_lost(error.to_string(), ctx.metrics.frames_captured.get());
                let retry_at = Instant::now() + wait;
                while Instant::now() < retry_at && !ctx.stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if ctx.stop.is_cancelled() {
                    break;
                }
                wait = (wait * 2).min(RECONNECT_MAX);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(CaptureSummary {
        frames: ctx.first_part_id - first_part_id,
        next_part_id: ctx.first_part_id,
    })
}

/// Runs the pipeline until end of stream, `max_parts`, `stop`, or an error. Blocking.
///
/// `ctx` is left ready for another run after an error (a camera that comes back): its
/// `first_part_id` moves past the parts this run made, `max_parts` down by them, and the
/// external triggers are handed back. A fed pipeline's feeder runs once.
pub fn run_capture(ctx: &mut CaptureContext) -> Result<CaptureSummary, CaptureError> {
    gst::init()?;
    let pipeline = gst::parse::launch(&ctx.pipeline_description)
        .map_err(|e| CaptureError::Parse(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| {
            CaptureError::Parse("the description is a single element, not a pipeline".into())
        })?;
    let result = run_pipeline(&pipeline, ctx);
    // Every exit leaves the pipeline stopped, so devices and threads are released.
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn run_pipeline(
    pipeline: &gst::Pipeline,
    ctx: &mut CaptureContext,
) -> Result<CaptureSummary, CaptureError> {
    let appsink = pipeline
        .by_name(APPSINK_NAME)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or(CaptureError::MissingElement {
            kind: "appsink",
            name: APPSINK_NAME,
        })?;
    appsink.set_caps(Some(
        &gst_video::VideoCapsBuilder::new()
            .format(gst_video::VideoFormat::Gray8)
            .build(),
    ));

    let next_part_id = Arc::new(AtomicU64::new(ctx.first_part_id));
    // Parts made so far, and frames that arrived (parts or not: the stall watchdog's).
    let frames_seen = Arc::new(AtomicU64::new(0));
    let frames_arrived = Arc::new(AtomicU64::new(0));
    // A GenICam camera to arm once its source has negotiated, and the armed camera the
    // trigger relay fires.
    let aravis_source = match &ctx.genicam_trigger {
        Some(_) => Some(genicam::aravis_source(pipeline).ok_or(TriggerError::NoAravisSource)?),
        None => None,
    };
    let mut arming = ctx.genicam_trigger.clone().map(Arming::Waiting);
    let armed: Arc<OnceLock<GenicamTrigger>> = Arc::new(OnceLock::new());
    let fires_genicam = ctx
        .genicam_trigger
        .as_ref()
        .is_some_and(TriggerSource::is_software)
        .then(|| armed.clone());
    let (relay, software_trigger) = match ctx.external_triggers.take() {
        Some(external) => {
            // Only a camera running free on the pipeline's clock is held to its triggers' times
            // (see `WaitingTriggers::free_running`).
            let free_running = ctx.feeder.is_none()
                && ctx.genicam_trigger.is_none()
                && genicam::aravis_source(pipeline).is_none();
            let (relay, software_trigger) = TriggerRelay::start(
                external,
                ctx.feeder.is_some(),
                free_running,
                fires_genicam,
                std::mem::take(&mut ctx.fire_also),
                &ctx.stop,
            )?;
            (Some(relay), software_trigger)
        }
        None => (None, ctx.fed_trigger.take()),
    };
    // From here on every way out of this function, an early `?` included, stops the relay
    // and hands the PLC's triggers back to `ctx` for the next run: a relay left running would
    // keep taking (and firing) triggers for a capture that is not there until the station
    // stops, one more for each failed start.
    let relay = RelayGuard {
        relay,
        hand_back: &mut ctx.external_triggers,
    };
    let handoff = Arc::new(FrameHandoff {
        waiting: relay.get().map(TriggerRelay::waiting),
        armed: ctx.genicam_trigger.is_some().then(|| armed.clone()),
        presence: ctx.presence.clone().map(|settings| Presence {
            detector: Mutex::new(PresenceDetector::new(settings)),
            misfit: Mutex::new(None),
        }),
        next_part_id: next_part_id.clone(),
        frames_seen: frames_seen.clone(),
        frames_arrived: frames_arrived.clone(),
        max_parts: ctx.max_parts,
        triggers: ctx.triggers.clone(),
        frames: ctx.frames.clone(),
        clock: ctx.clock.clone(),
        metrics: ctx.metrics.clone(),
        stopped_stage: OnceLock::new(),
    });
    let at_eos = handoff.clone();
    let on_sample = handoff.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| on_sample.on_sample(sink))
            .eos(move |sink| at_eos.on_eos(sink))
            .build(),
    );

    // An appsrc nobody feeds would wait for frames for ever, without an error.
    if ctx.feeder.is_none() && pipeline.by_name(APPSRC_NAME).is_some() {
        return Err(CaptureError::Unfed);
    }
    let camera = match ctx.feeder.take() {
        Some(feeder) => {
            let appsrc = pipeline
                .by_name(APPSRC_NAME)
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
                .ok_or(CaptureError::MissingElement {
                    kind: "appsrc",
                    name: APPSRC_NAME,
                })?;
            Some(FeederThread::start(
                feeder,
                appsrc,
                ctx.max_parts,
                software_trigger,
                &ctx.stop,
            )?)
        }
        None => None,
    };

    let bus = pipeline
        .bus()
        .ok_or(CaptureError::Parse("pipeline has no bus".into()))?;
    if let Err(state_error) = pipeline.set_state(gst::State::Playing) {
        // The element that refused says why on the bus (posted from its own thread, hence the
        // short wait); that beats "failed to change state".
        let reason = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(200),
            &[gst::MessageType::Error],
        );
        if let Some(camera) = camera {
            camera.stop();
        }
        // The relay stops as this returns (its guard), after the feeder as always.
        return Err(match reason.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(err)) => stream_error(err),
            _ => state_error.into(),
        });
    }
    let mut eos_sent_at: Option<std::time::Instant> = None;
    // The stall watchdog: when frames were last seen coming (a fed pipeline has none).
    let (mut frames_before, mut frame_seen_at) = (0, Instant::now());
    let stall_timeout = ctx.stall_timeout.filter(|_| camera.is_none());
    // Whether the source is live (a camera, not a file): asked once frames flow. A live
    // source that ends by itself has gone away (unless `end_of_stream` says otherwise).
    let mut live = None;
    // Enough frames: the appsink refuses more, which a live source may answer with an end of
    // stream of its own. That end is capture's, not a camera that went away; it is asked for
    // as soon as the loop sees it, and an end that comes first is read against it too.
    let enough = || handoff.enough();
    let outcome = loop {
        if let (Some(step), Some(source)) = (arming.take(), &aravis_source) {
            arming = match step {
                Arming::Waiting(trigger) if genicam::negotiated(source) => {
                    match GenicamTrigger::arm(source, &trigger) {
                        Ok(camera) => Some(Arming::Settling(camera, Instant::now())),
                        Err(error) => break Err(error.into()),
                    }
                }
                Arming::Settling(camera, since) if since.elapsed() >= ARM_SETTLE => {
                    // The camera's free-running frames have all come by now; from here on
                    // every frame answers a trigger. Triggers that came before have no frame
                    // of their own: missed, so the PLC diverts their parts, rather than fired
                    // late at a part that has moved on. Under the queue's lock, so that the
                    // relay fires every later one.
                    match relay.get() {
                        Some(relay) => relay.waiting.miss_all_while(|| {
                            let _ = armed.set(camera);
                        }),
                        None => {
                            let _ = armed.set(camera);
                        }
                    }
                    ctx.metrics.camera_armed.set(1);
                    None
                }
                step => Some(step),
            };
        }
        let frames_now = frames_arrived.load(Ordering::Relaxed);
        if frames_now != frames_before {
            (frames_before, frame_seen_at) = (frames_now, Instant::now());
            if live.is_none() {
                // Asked upstream of the appsink: it does not sync, so it would answer "not
                // live" for any source.
                let mut query = gst::query::Latency::new();
                if appsink
                    .static_pad("sink")
                    .is_some_and(|pad| pad.peer_query(&mut query))
                {
                    live = Some(query.result().0);
                }
            }
        } else if let Some(after) = stall_timeout
            && eos_sent_at.is_none()
            && frame_seen_at.elapsed() > after
        {
            break Err(CaptureError::Stalled { after });
        }
        if (ctx.stop.is_cancelled() || enough()) && eos_sent_at.is_none() && camera.is_none() {
            // A live camera never ends by itself: ask for a clean end of stream.
            pipeline.send_event(gst::event::Eos::new());
            eos_sent_at = Some(std::time::Instant::now());
        }
        if eos_sent_at.is_some_and(|at| at.elapsed() > EOS_TIMEOUT) {
            tracing::warn!("camera pipeline ignored end of stream; stopping it");
            break Ok(());
        }
        let Some(message) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Eos(_)
                if eos_sent_at.is_none()
                    && camera.is_none()
                    && ctx.end_of_stream.means_lost(live)
                    && !enough() =>
            {
                break Err(CaptureError::Ended);
            }
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(err) => {
                // The error is the appsink's refusal because a stage after capture stopped
                // (or the source's echo of it): no fault of the camera's, and no reason to
                // start it again.
                if let Some(&stage) = handoff.stopped_stage.get() {
                    break Err(CaptureError::StageStopped { stage });
                }
                if let Some(misfit) = handoff.presence.as_ref().and_then(Presence::misfit) {
                    break Err(misfit.into());
                }
                // aravissrc gives up after 2 s without a frame (3 frame periods when that is
                // longer), which for an armed camera with no trigger waiting means only that
                // no part came: while stopping, that is the stop; otherwise
                // capture starts again at once (see `CaptureError::TriggerIdle`).
                let from_camera = aravis_source
                    .as_ref()
                    .zip(err.src())
                    .is_some_and(|(source, from)| from == source.upcast_ref::<gst::Object>());
                let idle = from_camera
                    && armed.get().is_some()
                    && relay
                        .get()
                        .is_none_or(|relay| relay.waiting.queue().is_empty());
                break match (idle, eos_sent_at) {
                    (true, Some(_)) => Ok(()),
                    (true, None) => Err(CaptureError::TriggerIdle),
                    (false, _) => Err(stream_error(err)),
                };
            }
            _ => {}
        }
    };
    if let Some(camera) = camera {
        camera.stop();
    }
    // Stopped now, after the feeder, so that triggers still waiting are reported missed
    // before this run's summary.
    drop(relay);
    ctx.metrics.camera_armed.set(0);
    // The belt's level as learnt, for the next run after a reconnection.
    if let (Some(presence), Some(settings)) = (&handoff.presence, ctx.presence.as_mut()) {
        settings.empty_level = presence.detector().empty_level();
    }
    let frames = frames_seen.load(Ordering::Relaxed);
    ctx.first_part_id = next_part_id.load(Ordering::Relaxed);
    ctx.max_parts = ctx.max_parts.map(|max| max.saturating_sub(frames));
    outcome.map(|()| CaptureSummary {
        frames,
        next_part_id: ctx.first_part_id,
    })
}

/// A [`FrameFeeder`] running on its thread.
struct FeederThread {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl FeederThread {
    fn start(
        feeder: Box<dyn FrameFeeder>,
        appsrc: gst_app::AppSrc,
        max_parts: Option<u64>,
        software_trigger: Option<Receiver<()>>,
        stop: &CancellationToken,
    ) -> Result<FeederThread, CaptureError> {
        // Its own token, so that capture can stop it on an error without stopping the station.
        let stop = stop.child_token();
        let feeder_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("frame-feeder".into())
            .spawn(move || feeder.feed(appsrc, max_parts, software_trigger, feeder_stop))
            .map_err(CaptureError::Feeder)?;
        Ok(FeederThread { stop, thread })
    }

    /// Stops feeding and waits for the thread.
    fn stop(self) {
        self.stop.cancel();
        if self.thread.join().is_err() {
            tracing::error!("the frame feeder panicked");
        }
    }
}

/// Triggers waiting for their frames, oldest first, and the sink told what became of them.
struct WaitingTriggers {
    queue: Mutex<VecDeque<ExternalTrigger>>,
    sink: Arc<dyn TriggerSink>,
    stale_after: Duration,
    /// The camera runs free and stamps its frames on the pipeline's clock (no feeder, no
    /// GenICam trigger, no aravis source): its frames are exposed whenever, so one exposed
    /// before a trigger is not that trigger's. A fed or GenICam-triggered camera's frame is
    /// made for the trigger that fired it (or, on a trigger line, exposed at the photo-eye,
    /// before the PLC's write reaches the station), whatever its stamp says; and aravissrc
    /// stamps frames on the camera's own clock from its first frame, which would put a
    /// frame's capture before its trigger by however long that first frame took.
    free_running: bool,
}

impl WaitingTriggers {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<ExternalTrigger>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `trigger` out of the queue, if it is still there, and reports it missed.
    fn miss(&self, trigger: &ExternalTrigger) {
        let removed = {
            let mut queue = self.queue();
            let at = queue.iter().position(|t| t == trigger);
            at.and_then(|at| queue.remove(at))
        };
        if let Some(trigger) = removed {
            self.sink.missed(trigger);
        }
    }

    /// Empties the queue, reporting every trigger in it missed.
    fn miss_all(&self) {
        self.miss_all_while(|| {});
    }

    /// Empties the queue and runs `also` under its lock (so no trigger comes in between),
    /// then reports every trigger it held missed.
    fn miss_all_while(&self, also: impl FnOnce()) {
        let left: Vec<_> = {
            let mut queue = self.queue();
            also();
            queue.drain(..).collect()
        };
        for trigger in left {
            self.sink.missed(trigger);
        }
    }

    /// The trigger a frame arriving now, exposed at `captured`, answers; stale ones on the way
    /// are missed. `None` when no trigger waits, or when the oldest came after the frame was
    /// exposed: a free-running camera's frames reach the appsink late, and one exposed before
    /// the PLC's trigger shows the belt or the part before, not the part that tripped the
    /// eye. Such a frame is no part's; the trigger waits for a frame exposed after it.
    fn take(&self, captured: Instant) -> Option<ExternalTrigger> {
        let now = Instant::now();
        loop {
            let stale = {
                let mut queue = self.queue();
                let oldest = *queue.front()?;
                if now.saturating_duration_since(oldest.at) <= self.stale_after {
                    // Later triggers came later still: none of them is this frame's either.
                    if self.free_running && oldest.at > captured {
                        return None;
                    }
                    return queue.pop_front();
                }
                queue.pop_front()
            };
            // Reported outside the queue's lock, as everywhere else.
            if let Some(trigger) = stale {
                self.sink.missed(trigger);
            }
        }
    }
}

/// A running [`TriggerRelay`] (or none) that is stopped when dropped, handing the triggers
/// back to the capture context: however a capture run ends, its relay ends with it.
struct RelayGuard<'a> {
    relay: Option<TriggerRelay>,
    /// Where the triggers go back to (the context's `external_triggers`).
    hand_back: &'a mut Option<ExternalTriggers>,
}

impl RelayGuard<'_> {
    fn get(&self) -> Option<&TriggerRelay> {
        self.relay.as_ref()
    }
}

impl Drop for RelayGuard<'_> {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            *self.hand_back = Some(relay.stop());
        }
    }
}

/// Moves external triggers into the waiting queue and fires the feeder's software trigger,
/// on a thread of its own.
struct TriggerRelay {
    waiting: Arc<WaitingTriggers>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<Receiver<ExternalTrigger>>,
}

impl TriggerRelay {
    /// `fed`: the feeder gets a software trigger per trigger (returned); `genicam`: the
    /// GenICam camera, once armed, is fired per trigger; `fire_also` each get one too;
    /// `free_running`: see [`WaitingTriggers::free_running`].
    fn start(
        external: ExternalTriggers,
        fed: bool,
        free_running: bool,
        genicam: Option<Arc<OnceLock<GenicamTrigger>>>,
        fire_also: Vec<Sender<()>>,
        stop: &CancellationToken,
    ) -> Result<(TriggerRelay, Option<Receiver<()>>), CaptureError> {
        let waiting = Arc::new(WaitingTriggers {
            queue: Mutex::new(VecDeque::new()),
            sink: external.sink,
            stale_after: external.stale_after,
            free_running,
        });
        let (software_trigger, fired) = if fed {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let stop = stop.child_token();
        let relay_stop = stop.clone();
        let relay_waiting = waiting.clone();
        let triggers = external.triggers;
        let thread = std::thread::Builder::new()
            .name("trigger-relay".into())
            .spawn(move || {
                relay(
                    triggers,
                    &relay_waiting,
                    software_trigger,
                    genicam,
                    &fire_also,
                    &relay_stop,
                )
            })
            .map_err(CaptureError::Feeder)?;
        Ok((
            TriggerRelay {
                waiting,
                stop,
                thread,
            },
            fired,
        ))
    }

    fn waiting(&self) -> Arc<WaitingTriggers> {
        self.waiting.clone()
    }

    /// Stops relaying; triggers still waiting will have no frame and are missed. Hands the
    /// triggers back for the next run.
    fn stop(self) -> ExternalTriggers {
        self.stop.cancel();
        let triggers = self.thread.join().unwrap_or_else(|_| {
            tracing::error!("the trigger relay panicked; PLC triggers are no longer taken");
            std::sync::mpsc::channel().1
        });
        self.waiting.miss_all();
        ExternalTriggers {
            triggers,
            sink: self.waiting.sink.clone(),
            stale_after: self.waiting.stale_after,
        }
    }
}

fn relay(
    triggers: Receiver<ExternalTrigger>,
    waiting: &WaitingTriggers,
    software_trigger: Option<Sender<()>>,
    genicam: Option<Arc<OnceLock<GenicamTrigger>>>,
    fire_also: &[Sender<()>],
    stop: &CancellationToken,
) -> Receiver<ExternalTrigger> {
    while !stop.is_cancelled() {
        match triggers.recv_timeout(Duration::from_millis(50)) {
            Ok(trigger) => {
                // Queued before the camera fires, so the frame finds its trigger waiting; the
                // armed camera is read under the same lock as arming sets it (see there).
                let camera = {
                    let mut queue = waiting.queue();
                    queue.push_back(trigger);
                    genicam.as_deref().and_then(OnceLock::get).cloned()
                };
                if let Some(fire) = &software_trigger
                    && fire.send(()).is_err()
                {
                    tracing::debug!("the camera stopped taking software triggers");
                }
                for fire in fire_also {
                    // A further view that stopped: its parts miss that view, and say so.
                    let _ = fire.send(());
                }
                // Until the camera is armed (and settled) it is not fired: the trigger waits,
                // and is missed when arming completes.
                if let Some(camera) = camera
                    && let Err(error) = camera.fire()
                {
                    // No frame will come for it: left waiting, it would take the next part's
                    // frame, and every part after would take its predecessor's.
                    tracing::warn!(%error, "the camera refused a software trigger; its part is missed");
                    waiting.miss(&trigger);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    triggers
}

fn stream_error(err: &gst::message::Error) -> CaptureError {
    CaptureError::Stream {
        element: err
            .src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_else(|| "pipeline".into()),
        message: err.error().to_string(),
        debug: err.debug().map(|d| d.to_string()),
    }
}

/// The presence detector of a free-running camera, as the appsink callbacks share it.
struct Presence {
    /// What each frame carries through a passage: its image and capture time.
    detector: Mutex<PresenceDetector<(GrayImage, StationTime)>>,
    /// Set when the region does not fit the frames: a wrong config, not a lost camera.
    misfit: Mutex<Option<RoiOutsideFrame>>,
}

impl Presence {
    fn detector(&self) -> std::sync::MutexGuard<'_, PresenceDetector<(GrayImage, StationTime)>> {
        self.detector.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn misfit(&self) -> Option<RoiOutsideFrame> {
        self.misfit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The appsink callback's state: turns samples into triggers and frames.
struct FrameHandoff {
    /// Server mode: the triggers frames answer.
    waiting: Option<Arc<WaitingTriggers>>,
    /// A GenICam camera to be triggered: until it is armed its frames are no part's.
    armed: Option<Arc<OnceLock<GenicamTrigger>>>,
    /// A free-running camera whose parts are passages, not frames.
    presence: Option<Presence>,
    next_part_id: Arc<AtomicU64>,
    /// Parts made.
    frames_seen: Arc<AtomicU64>,
    /// Frames that reached the appsink, parts or not.
    frames_arrived: Arc<AtomicU64>,
    max_parts: Option<u64>,
    triggers: mpsc::Sender<Trigger>,
    frames: FrameOutlet,
    clock: Arc<StationClock>,
    metrics: Metrics,
    /// The stage that stopped taking parts, once one has: the error the appsink posts for it
    /// must read as that on the bus, not as a camera that failed.
    stopped_stage: OnceLock<&'static str>,
}

impl FrameHandoff {
    fn enough(&self) -> bool {
        self.max_parts
            .is_some_and(|max| self.frames_seen.load(Ordering::Relaxed) >= max)
    }

    fn on_sample(&self, sink: &gst_app::AppSink) -> Result<gst::FlowSuccess, gst::FlowError> {
        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
        self.frames_arrived.fetch_add(1, Ordering::Relaxed);
        let captured_at = self.clock.now().before(frame_age(sink, &sample));
        if self.enough() {
            return Err(gst::FlowError::Eos);
        }
        if self
            .armed
            .as_ref()
            .is_some_and(|armed| armed.get().is_none())
        {
            self.metrics.frames_untriggered.inc();
            return Ok(gst::FlowSuccess::Ok);
        }
        let bad_frame = |message: String| {
            gst::element_error!(sink, gst::StreamError::Format, ("{}", message));
            gst::FlowError::Error
        };
        let (image, captured_at) = match &self.presence {
            // Measured where GStreamer mapped it; copied only when the detector keeps it.
            Some(presence) => {
                let frame = mapped_gray(&sample).map_err(bad_frame)?;
                let view = gray_view(&frame).map_err(bad_frame)?;
                match self.watch(sink, presence, view, captured_at)? {
                    Some(part) => part,
                    None => return Ok(gst::FlowSuccess::Ok),
                }
            }
            None => (gray_image(&sample).map_err(bad_frame)?, captured_at),
        };
        self.hand_over(sink, image, captured_at)
    }

    /// A free-running camera's frame through the presence detector.
    fn watch(
        &self,
        sink: &gst_app::AppSink,
        presence: &Presence,
        view: GrayView<'_>,
        captured_at: StationTime,
    ) -> Result<Option<(GrayImage, StationTime)>, gst::FlowError> {
        let mut detector = presence.detector();
        let settings = detector.settings();
        let level = presence::measure(view, settings.roi, settings.measure).map_err(|misfit| {
            // Stored before the error is posted, so the bus loop reads it as the cause.
            let message = misfit.to_string();
            *presence
                .misfit
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(misfit);
            gst::element_error!(sink, gst::StreamError::Format, ("{}", message));
            gst::FlowError::Error
        })?;
        self.metrics.frames_watched.inc();
        self.metrics.presence_level.set(f64::from(level));
        let observed = detector.observe(level, || (copy_gray(view), captured_at));
        if let Some(empty) = detector.empty_level() {
            self.metrics.presence_empty_level.set(f64::from(empty));
        }
        Ok(observed)
    }

    /// The end of the stream: a part still in a free-running camera's view is handed over.
    fn on_eos(&self, sink: &gst_app::AppSink) {
        let Some(presence) = &self.presence else {
            return;
        };
        let last = presence.detector().finish();
        if let Some((image, captured_at)) = last
            && !self.enough()
        {
            let _ = self.hand_over(sink, image, captured_at);
        }
    }

    /// Makes `image` a part: its trigger to the tracker, its frame to inspection.
    fn hand_over(
        &self,
        sink: &gst_app::AppSink,
        image: GrayImage,
        captured_at: StationTime,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let external = match &self.waiting {
            // The frame's exposure on the triggers' clock (both are the monotonic clock).
            Some(waiting) => match waiting.take(self.clock.instant(captured_at)) {
                Some(trigger) => Some((waiting, trigger)),
                None => {
                    // No trigger waiting, or only ones after this frame's exposure.
                    self.metrics.frames_untriggered.inc();
                    return Ok(gst::FlowSuccess::Ok);
                }
            },
            None => None,
        };
        let part_id = PartId(self.next_part_id.fetch_add(1, Ordering::Relaxed));
        self.frames_seen.fetch_add(1, Ordering::Relaxed);
        if let Some((waiting, trigger)) = external {
            // Before the tracker hears of the part, so its result finds the tracking id.
            waiting.sink.captured(trigger, part_id);
        }
        self.metrics.frames_captured.inc();
        // The trigger waits: tracking must know every part. The tracker loop does no I/O, so
        // this wait is short. A closed channel means the station is stopping.
        if self
            .triggers
            .blocking_send(Trigger {
                part_id,
                captured_at,
            })
            .is_err()
        {
            return Err(self.stage_gone(sink, "tracker"));
        }
        match self.frames.deliver(Frame {
            part_id,
            captured_at,
            image,
        }) {
            Delivered::Taken => {}
            Delivered::Refused => {
                self.metrics.frames_dropped.inc();
                tracing::debug!(%part_id, "inspection queue full: frame dropped, part will be rejected");
            }
            Delivered::Closed => return Err(self.stage_gone(sink, "inspection")),
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// A stage the frames go to has stopped: the pipeline must stop with an error on the bus
    /// rather than pause silently. The stage is recorded before the error is posted, so the
    /// bus loop reads it as [`CaptureError::StageStopped`] whichever element's error it
    /// pops first (the source posts one of its own when the appsink refuses its frame).
    fn stage_gone(&self, sink: &gst_app::AppSink, stage: &'static str) -> gst::FlowError {
        // Posted once: any frame still on its way finds the stage gone too.
        if self.stopped_stage.set(stage).is_ok() {
            gst::element_error!(
                sink,
                gst::CoreError::Failed,
                ("the {} stage stopped", stage)
            );
        }
        gst::FlowError::Error
    }
}

/// How long ago the frame was captured, from its timestamp on the pipeline clock: the
/// difference matters with network cameras, whose pipelines buffer for 100 ms and more.
/// Zero when the frame carries no timestamp.
fn frame_age(sink: &gst_app::AppSink, sample: &gst::Sample) -> std::time::Duration {
    let (Some(clock), Some(base), Some(pts)) = (
        sink.clock(),
        sink.base_time(),
        sample.buffer().and_then(|b| b.pts()),
    ) else {
        return std::time::Duration::ZERO;
    };
    let now = clock.time();
    let captured = base + pts;
    std::time::Duration::from_nanos(now.saturating_sub(captured).nseconds())
}

/// A GRAY8 sample's frame, mapped for reading.
fn mapped_gray(sample: &gst::Sample) -> Result<gst_video::VideoFrameRef<&gst::BufferRef>, String> {
    let buffer = sample.buffer().ok_or("sample without buffer")?;
    let caps = sample.caps().ok_or("sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps)
        .map_err(|e| format!("caps are not raw video: {e}"))?;
    if info.format() != gst_video::VideoFormat::Gray8 {
        return Err(format!("expected GRAY8 frames, got {:?}", info.format()));
    }
    gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| "cannot map frame".into())
}

/// A mapped GRAY8 frame's pixels, with the buffer's real row stride.
fn gray_view<'a>(
    frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
) -> Result<GrayView<'a>, String> {
    let pixels = frame
        .plane_data(0)
        .map_err(|e| format!("cannot read plane: {e}"))?;
    let (width, height) = (frame.width(), frame.height());
    let stride = frame.plane_stride()[0] as usize;
    if height > 0 && pixels.len() < (height as usize - 1) * stride + width as usize {
        return Err("frame size mismatch".into());
    }
    Ok(GrayView {
        width,
        height,
        stride,
        pixels,
    })
}

/// A frame copied into a tight image (rows `width` apart).
fn copy_gray(view: GrayView<'_>) -> GrayImage {
    let (width, stride) = (view.width as usize, view.stride);
    let mut pixels = Vec::with_capacity(width * view.height as usize);
    for row in 0..view.height as usize {
        pixels.extend_from_slice(&view.pixels[row * stride..row * stride + width]);
    }
    GrayImage {
        width: view.width,
        height: view.height,
        pixels,
    }
}

/// Copies a GRAY8 sample into a tight image, honouring the buffer's real row stride.
pub fn gray_image(sample: &gst::Sample) -> Result<GrayImage, String> {
    let frame = mapped_gray(sample)?;
    Ok(copy_gray(gray_view(&frame)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        description: &str,
        frame_queue: usize,
        max_parts: Option<u64>,
    ) -> (
        Result<CaptureSummary, CaptureError>,
        Vec<Trigger>,
        usize,
        Metrics,
    ) {
        let (trigger_tx, mut trigger_rx) = mpsc::channel(1024);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(frame_queue);
        let metrics = Metrics::new();
        let result = run_capture(&mut CaptureContext {
            first_part_id: 100,
            max_parts,
            ..CaptureContext::new(
                description.into(),
                trigger_tx,
                frame_tx,
                metrics.clone(),
                CancellationToken::new(),
            )
        });
        let mut triggers = Vec::new();
        while let Ok(t) = trigger_rx.try_recv() {
            triggers.push(t);
        }
        (result, triggers, frame_rx.try_iter().count(), metrics)
    }

    /// A triggered camera: one 8×8 frame per software trigger.
    struct TriggeredFeeder;

    impl FrameFeeder for TriggeredFeeder {
        fn feed(
            self: Box<Self>,
            appsrc: gst_app::AppSrc,
            max_parts: Option<u64>,
            software_trigger: Option<Receiver<()>>,
            stop: CancellationToken,
        ) {
            let trigger = software_trigger.expect("a triggered feeder gets a software trigger");
            let mut sent = 0;
            while !stop.is_cancelled() && max_parts.is_none_or(|max| sent < max) {
                if trigger.recv_timeout(Duration::from_millis(20)).is_ok() {
                    let _ = appsrc.push_buffer(gst::Buffer::from_mut_slice(vec![sent as u8; 64]));
                    sent += 1;
                }
            }
            let _ = appsrc.end_of_stream();
        }
    }

    #[derive(Default)]
    struct Recorded {
        captured: Mutex<Vec<(u32, PartId)>>,
        missed: Mutex<Vec<u32>>,
    }

    impl TriggerSink for Recorded {
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

    #[test]
    fn each_external_trigger_becomes_the_part_its_frame_makes_and_stale_ones_are_missed() {
        let description = "appsrc name=source is-live=true format=time do-timestamp=true \
            caps=video/x-raw,format=GRAY8,width=8,height=8,framerate=0/1 \
            ! appsink name=frames sync=false";
        let (trigger_tx, mut trigger_rx) = mpsc::channel(1024);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(16);
        let (plc_tx, plc_rx) = std::sync::mpsc::channel();
        let sink = Arc::new(Recorded::default());
        // One trigger already too old for its frame, then three the camera answers.
        plc_tx
            .send(ExternalTrigger {
                tracking_id: 9,
                at: Instant::now() - Duration::from_secs(60),
            })
            .unwrap();
        for tracking_id in [10, 11, 12] {
            plc_tx
                .send(ExternalTrigger {
                    tracking_id,
                    at: Instant::now(),
                })
                .unwrap();
        }
        let result = run_capture(&mut CaptureContext {
            feeder: Some(Box::new(TriggeredFeeder)),
            first_part_id: 100,
            // The stale trigger fired the camera too: four frames, three parts.
            max_parts: Some(4),
            external_triggers: Some(ExternalTriggers {
                triggers: plc_rx,
                sink: sink.clone(),
                stale_after: Duration::from_secs(5),
            }),
            ..CaptureContext::new(
                description.into(),
                trigger_tx,
                frame_tx,
                Metrics::new(),
                CancellationToken::new(),
            )
        });
        let summary = result.expect("capture runs to end of stream");
        assert_eq!(summary.frames, 3);
        let captured = sink.captured.lock().unwrap().clone();
        assert_eq!(
            captured,
            [(10, PartId(100)), (11, PartId(101)), (12, PartId(102))]
        );
        assert_eq!(*sink.missed.lock().unwrap(), [9]);
        let mut tracked = Vec::new();
        while let Ok(t) = trigger_rx.try_recv() {
            tracked.push(t.part_id.0);
        }
        assert_eq!(tracked, [100, 101, 102]);
        assert_eq!(frame_rx.try_iter().count(), 3);
    }

    /// A free-running camera's frame reaches the appsink late: one exposed before the PLC's
    /// trigger shows the belt or the part before, and must not be judged as the triggered part.
    /// A fed pipeline's frame was made for the trigger that fired it, whatever its capture time.
    #[test]
    fn a_frame_exposed_before_the_oldest_trigger_is_not_its_part() {
        for free_running in [true, false] {
            let sink = Arc::new(Recorded::default());
            let waiting = WaitingTriggers {
                queue: Mutex::new(VecDeque::new()),
                sink: sink.clone(),
                stale_after: Duration::from_secs(5),
                free_running,
            };
            let tripped = Instant::now();
            let trigger = ExternalTrigger {
                tracking_id: 7,
                at: tripped,
            };
            {
                let mut queue = waiting.queue();
                // Too old for any frame: missed on the way, as before.
                queue.push_back(ExternalTrigger {
                    tracking_id: 6,
                    at: tripped - Duration::from_secs(60),
                });
                queue.push_back(trigger);
            }
            let early = waiting.take(tripped - Duration::from_millis(20));
            assert_eq!(*sink.missed.lock().unwrap(), [6]);
            if free_running {
                // Exposed 20 ms before the eye tripped: no part's, and the trigger waits on.
                assert_eq!(early, None);
                assert_eq!(waiting.queue().len(), 1);
                // The next frame, exposed after the trigger, is its part.
                assert_eq!(
                    waiting.take(tripped + Duration::from_millis(5)),
                    Some(trigger)
                );
            } else {
                assert_eq!(early, Some(trigger));
            }
            assert!(waiting.queue().is_empty());
            assert_eq!(*sink.missed.lock().unwrap(), [6]);
        }
    }

    #[test]
    fn every_frame_is_a_part_and_drops_are_counted() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/test-pattern.gst");
        let description = CameraPipeline::File(path)
            .description()
            .expect("pipeline file");
        // Nobody drains the 5-frame queue: 5 frames are queued, 25 dropped, all 30 triggered.
        let (result, triggers, queued, metrics) = run(&description, 5, None);
        let summary = result.expect("capture runs to end of stream");
        assert_eq!(summary.frames, 30);
        assert_eq!(summary.next_part_id, 130);
        let ids: Vec<u64> = triggers.iter().map(|t| t.part_id.0).collect();
        assert_eq!(ids, (100..130).collect::<Vec<_>>());
        assert_eq!(queued, 5);
        assert_eq!(metrics.frames_dropped.get(), 25);
        assert_eq!(metrics.frames_captured.get(), 30);
    }

    #[test]
    fn max_parts_ends_capture() {
        let description = "videotestsrc ! video/x-raw,width=64,height=48 ! videoconvert ! appsink name=frames sync=false";
        let (result, triggers, _, _) = run(description, 64, Some(12));
        assert_eq!(result.expect("ends cleanly").frames, 12);
        assert_eq!(triggers.len(), 12);
    }

    /// A camera that sends its frames over TCP (to a `tcpserversrc`): `rounds` connections,
    /// each sending that many 8×8 frames and closing. After a round it waits for the station
    /// to stop listening (its capture run ended) before it connects again, so no frame goes
    /// to a listener that is about to close.
    fn tcp_camera(port: u16, rounds: Vec<usize>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            use std::io::Write;
            for (round, frames) in rounds.into_iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(30);
                while round > 0 && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    assert!(Instant::now() < deadline, "the station kept listening");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut stream = loop {
                    match std::net::TcpStream::connect(("127.0.0.1", port)) {
                        Ok(stream) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(error) => panic!("the station never listened: {error}"),
                    }
                };
                for frame in 0..frames {
                    stream
                        .write_all(&[frame as u8 * 10; 64])
                        .expect("send a frame");
                }
            }
        })
    }

    fn tcp_pipeline() -> (u16, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let description = format!(
            "tcpserversrc host=127.0.0.1 port={port} ! rawvideoparse format=gray8 width=8 \
             height=8 framerate=0/1 ! appsink name=frames sync=false"
        );
        (port, description)
    }

    #[test]
    fn a_tcp_camera_that_closes_ends_the_run_unless_told_to_reconnect() {
        // tcpserversrc is not live: by default its end is the end of the run.
        let (port, description) = tcp_pipeline();
        let camera = tcp_camera(port, vec![3]);
        let (result, triggers, ..) = run(&description, 16, None);
        camera.join().expect("camera");
        assert_eq!(result.expect("ends at its end of stream").frames, 3);
        assert_eq!(triggers.len(), 3);

        // With `end_of_stream = "reconnect"` the closed connection is a lost camera: FAULT,
        // listen again, and the parts go on from where they were.
        let (port, description) = tcp_pipeline();
        let camera = tcp_camera(port, vec![3, 2, 4]);
        let (trigger_tx, mut trigger_rx) = mpsc::channel(1024);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(16);
        let metrics = Metrics::new();
        let status = CameraStatus::default();
        let summary = capture_until_done(
            CaptureContext {
                first_part_id: 100,
                max_parts: Some(9),
                end_of_stream: EndOfStream::Reconnect,
                ..CaptureContext::new(
                    description,
                    trigger_tx,
                    frame_tx,
                    metrics.clone(),
                    CancellationToken::new(),
                )
            },
            &status,
        )
        .expect("capture ends at max_parts");
        camera.join().expect("camera");
        assert_eq!(summary.frames, 9);
        assert_eq!(summary.next_part_id, 109);
        let mut ids = Vec::new();
        while let Ok(trigger) = trigger_rx.try_recv() {
            ids.push(trigger.part_id.0);
        }
        assert_eq!(ids, (100..109).collect::<Vec<_>>());
        assert_eq!(frame_rx.try_iter().count(), 9);
        assert_eq!(metrics.camera_restarts.get(), 2, "two losses");
        assert!(
            status.lost(metrics.frames_captured.get()).is_none(),
            "the camera is back once it sent again"
        );
    }

    /// Runs a live test camera under [`capture_until_done`] with the inspect stage (the frame
    /// queue's receiver) or the tracker (the trigger channel's receiver) already gone; the
    /// result, or `None` when capture was still running after the deadline (then stopped).
    fn capture_with_a_stage_gone(
        inspection_gone: bool,
    ) -> (
        Option<Result<CaptureSummary, CaptureError>>,
        Metrics,
        Arc<CameraStatus>,
    ) {
        let description = "videotestsrc is-live=true ! video/x-raw,width=64,height=48 \
            ! videoconvert ! appsink name=frames sync=false";
        let (trigger_tx, trigger_rx) = mpsc::channel(1024);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel::<Frame>(16);
        // The stage that ended drops its receiver; the other is held for the whole run.
        let (_trigger_rx, _frame_rx) = if inspection_gone {
            drop(frame_rx);
            (Some(trigger_rx), None)
        } else {
            drop(trigger_rx);
            (None, Some(frame_rx))
        };
        let metrics = Metrics::new();
        let status = Arc::new(CameraStatus::default());
        let stop = CancellationToken::new();
        let ctx = CaptureContext::new(
            description.into(),
            trigger_tx,
            frame_tx,
            metrics.clone(),
            stop.clone(),
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let capture = {
            let status = status.clone();
            std::thread::spawn(move || {
                let _ = done_tx.send(capture_until_done(ctx, &status));
            })
        };
        // Capture should end by itself at the first frame nobody takes; a capture that
        // restarts the camera instead runs until stopped.
        let ended = done_rx.recv_timeout(Duration::from_secs(10)).ok();
        stop.cancel();
        capture.join().expect("the capture thread");
        (ended, metrics, status)
    }

    /// A stage after capture that stopped (the station stopping, the inspect task ended) is no
    /// lost camera: capture ends once, says why, and does not start the camera again and again.
    #[test]
    fn a_stopped_consumer_stops_capture_instead_of_restarting_the_camera() {
        for (inspection_gone, stage) in [(true, "inspection"), (false, "tracker")] {
            let (ended, metrics, status) = capture_with_a_stage_gone(inspection_gone);
            let result = ended.unwrap_or_else(|| {
                panic!(
                    "{stage} gone: capture still ran after 10 s, the camera restarted {} times",
                    metrics.camera_restarts.get()
                )
            });
            assert!(
                matches!(&result, Err(CaptureError::StageStopped { stage: s }) if *s == stage),
                "{stage} gone: {result:?}"
            );
            assert_eq!(metrics.camera_restarts.get(), 0, "{stage} gone: no restart");
            let stopped = status
                .stopped()
                .unwrap_or_else(|| panic!("{stage} gone: the status says capture stopped"));
            assert!(
                stopped.contains(&format!("the {stage} stage stopped")),
                "{stopped}"
            );
            // No part is seen any more: whoever asks whether the camera is there (the PLC's
            // heartbeat word, a view's wait) hears that it is not, and why.
            assert_eq!(
                status.lost(metrics.frames_captured.get() + 1),
                Some(stopped)
            );
        }
    }

    /// A start that fails after the trigger relay has started (a feeder, but no `appsrc
    /// name=source` for it to feed) stops the relay before it returns, and hands the PLC's
    /// triggers back for the next run.
    #[test]
    fn a_start_that_fails_after_the_relay_started_leaves_no_relay_running() {
        let (trigger_tx, _trigger_rx) = mpsc::channel(16);
        let (frame_tx, _frame_rx) = std::sync::mpsc::sync_channel::<Frame>(16);
        // Held to the end: a relay whose PLC channel closed would end by itself.
        let (_plc_tx, plc_rx) = std::sync::mpsc::channel();
        // The relay owns the sender that fires a further view: it is dropped when the relay's
        // thread ends, and not before.
        let (fire_tx, fire_rx) = std::sync::mpsc::channel::<()>();
        let stop = CancellationToken::new();
        // A relay left running ends with the station's stop: here, at the end of the test.
        let _stop_on_exit = stop.clone().drop_guard();
        let mut ctx = CaptureContext {
            feeder: Some(Box::new(TriggeredFeeder)),
            external_triggers: Some(ExternalTriggers {
                triggers: plc_rx,
                sink: Arc::new(Recorded::default()),
                stale_after: Duration::from_secs(5),
            }),
            fire_also: vec![fire_tx],
            ..CaptureContext::new(
                "videotestsrc ! appsink name=frames".into(),
                trigger_tx,
                frame_tx,
                Metrics::new(),
                stop.clone(),
            )
        };
        let result = run_capture(&mut ctx);
        assert!(
            matches!(
                result,
                Err(CaptureError::MissingElement { kind: "appsrc", .. })
            ),
            "{result:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fire_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Disconnected) => break,
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the trigger relay still runs after its capture failed to start")
                }
            }
        }
        assert!(
            ctx.external_triggers.is_some(),
            "the PLC's triggers are handed back for the next run"
        );
    }

    #[test]
    fn pipeline_errors_name_the_problem() {
        let (result, ..) = run("videotestsrc ! fakesink", 1, None);
        assert!(matches!(
            result,
            Err(CaptureError::MissingElement { name: "frames", .. })
        ));
        let (result, ..) = run("nosuchelement ! appsink name=frames", 1, None);
        assert!(result.unwrap_err().to_string().contains("nosuchelement"));
        let (result, ..) = run(
            "filesrc location=/nonexistent/video.mkv ! decodebin ! videoconvert ! appsink name=frames",
            1,
            None,
        );
        let message = result.unwrap_err().to_string();
        assert!(message.contains("filesrc"), "{message}");
    }
}
