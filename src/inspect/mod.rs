//! Inspection: calibrate each frame, score it with the defect model, give a verdict.
//!
//! [`run_inspector`] is a plain thread (inference is CPU-bound): frames come in over a bounded
//! queue that the capture stage fills without waiting (a full queue drops the frame, counted),
//! verdicts go out over a channel that waits. A frame that cannot be inspected gets
//! [`Verdict::Error`], which the tracker treats as a reject; nothing here stops the line.
//! This stage never talks to the PLC and never writes records.

pub mod backtest;
pub mod registry;
pub mod taxonomy;
pub mod training;
pub mod views;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tokio::sync::mpsc;

use self::registry::{ActiveModels, ShadowJob};
use crate::calibrate::Undistorter;
use crate::metrics::Metrics;
pub use crate::models::ModelError;
use crate::part::{Frame, GrayImage, Inspection, PartId, StationClock, Verdict, ViewInspection};

pub use self::views::{ViewFrames, ViewJoin};

/// Calibration plus the station's models (live, and shadow if any).
pub struct Inspector {
    pub undistorter: Undistorter,
    pub models: Arc<ActiveModels>,
}

impl Inspector {
    /// Inspects one frame with the live model of the moment; failures become
    /// [`Verdict::Error`].
    pub fn inspect(&self, frame: Frame, clock: &StationClock) -> Inspection {
        self.inspect_image(&self.undistorter, frame.part_id, Ok(&frame.image), clock)
    }

    /// Inspects a part's raw image from a camera calibrated by `undistorter`, or gives
    /// [`Verdict::Error`] with the reason there is none.
    fn inspect_image(
        &self,
        undistorter: &Undistorter,
        part_id: PartId,
        raw: Result<&GrayImage, String>,
        clock: &StationClock,
    ) -> Inspection {
        let live = self.models.live();
        let base = |verdict, error: Option<String>| Inspection {
            part_id,
            inspected_at: clock.now(),
            verdict,
            score: None,
            threshold: live.threshold,
            model_version: live.version.clone(),
            image: None,
            heat_map: None,
            mm_per_pixel: undistorter.mm_per_output_pixel(),
            calibration: undistorter.id().cloned(),
            defect_class: None,
            error,
            novelty: None,
            views: None,
        };
        let image = match raw.and_then(|raw| undistorter.apply(raw).map_err(|e| e.to_string())) {
            Ok(image) => image,
            Err(error) => return base(Verdict::Error, Some(error)),
        };
        // The image's inputs against the live model's training: what the drift watch and the
        // labelling queue read (well under a millisecond).
        let novelty = live
            .detector
            .head()
            .drift
            .as_ref()
            .map(|reference| reference.novelty_of(&image));
        let taxonomy = self.models.taxonomy();
        match live
            .detector
            .judge_tolerating(&image, &taxonomy.tolerated())
        {
            Ok(judgement) => {
                let (verdict, defect_class) = taxonomy.verdict(live.threshold, &judgement);
                Inspection {
                    score: Some(judgement.score),
                    image: Some(image),
                    heat_map: Some(judgement.heat_map.on_threshold_scale(live.threshold)),
                    defect_class,
                    novelty,
                    ..base(verdict, None)
                }
            }
            Err(error) => Inspection {
                image: Some(image),
                novelty,
                ..base(Verdict::Error, Some(error.to_string()))
            },
        }
    }

    /// Inspects a part seen by several cameras: the station's camera's `frame` and, from each
    /// of `views`, the frame captured nearest its trigger. A view with no frame for it is
    /// [`Verdict::Error`] for that view, naming the camera (so the part is rejected).
    pub fn inspect_views(
        &self,
        camera: &Arc<str>,
        frame: Frame,
        views: &mut [ViewJoin],
        clock: &StationClock,
    ) -> Inspection {
        let (part_id, captured_at) = (frame.part_id, frame.captured_at);
        let mut looks = Vec::with_capacity(views.len() + 1);
        looks.push(ViewInspection {
            camera: camera.clone(),
            inspection: self.inspect(frame, clock),
        });
        for view in views.iter_mut() {
            let raw = view.frames.frame_for(captured_at, clock);
            looks.push(ViewInspection {
                camera: view.name.clone(),
                inspection: self.inspect_image(
                    &view.undistorter,
                    part_id,
                    raw.as_ref().map_err(Clone::clone),
                    clock,
                ),
            });
        }
        match Inspection::of_views(looks) {
            Some(inspection) => inspection,
            // Never: the station's own camera is always one of them.
            None => self.inspect_image(
                &self.undistorter,
                part_id,
                Err("no view of the part".into()),
                clock,
            ),
        }
    }
}

/// Everything the inspect thread needs.
pub struct InspectContext {
    pub inspector: Inspector,
    /// The station's own camera's name, when `views` has further cameras.
    pub camera: Arc<str>,
    /// Further cameras on the same parts, each joined to the parts by capture time.
    pub views: Vec<ViewJoin>,
    /// Stops the further cameras' captures once no part needs their frames any more (before
    /// their queues close, which they would take for a failure).
    pub stop_views: tokio_util::sync::CancellationToken,
    pub frames: Receiver<Frame>,
    pub inspections: mpsc::Sender<Inspection>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
    /// Calibrated frames for the shadow model; never waited on.
    pub shadow_jobs: SyncSender<ShadowJob>,
}

/// Runs until the frame queue closes (capture stopped) or the tracker goes away.
pub fn run_inspector(mut ctx: InspectContext) {
    while let Ok(frame) = ctx.frames.recv() {
        let captured_at = frame.captured_at;
        let inspection = if ctx.views.is_empty() {
            ctx.inspector.inspect(frame, &ctx.clock)
        } else {
            ctx.inspector
                .inspect_views(&ctx.camera, frame, &mut ctx.views, &ctx.clock)
        };
        if ctx.inspector.models.shadow().is_some() {
            // Every camera's image: the shadow judges the whole part, as the live model did.
            let images: Vec<GrayImage> = match &inspection.views {
                Some(views) => views
                    .views
                    .iter()
                    .filter_map(|v| v.inspection.image.clone())
                    .collect(),
                None => inspection.image.iter().cloned().collect(),
            };
            if !images.is_empty() {
                let job = ShadowJob {
                    part_id: inspection.part_id,
                    images,
                    live_version: inspection.model_version.clone(),
                    live_verdict: inspection.verdict,
                    live_score: inspection.score,
                };
                if let Err(TrySendError::Full(_)) = ctx.shadow_jobs.try_send(job) {
                    ctx.metrics.shadow_frames_skipped.inc();
                }
            }
        }
        ctx.metrics.count_inspection(inspection.verdict);
        ctx.metrics.inspection_latency_seconds.observe(
            inspection
                .inspected_at
                .0
                .saturating_sub(captured_at.0)
                .as_secs_f64(),
        );
        if let Some(error) = &inspection.error {
            tracing::warn!(part_id = %inspection.part_id, %error, "inspection failed; part will be rejected");
        }
        if ctx.inspections.blocking_send(inspection).is_err() {
            break;
        }
    }
    ctx.stop_views.cancel();
}
