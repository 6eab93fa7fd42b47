//! Inspection: calibrate each frame, score it with the defect model, give a verdict.
//!
//! [`run_inspector`] is a plain thread (inference is CPU-bound), or several side by side on a
//! fast line: frames come in over a bounded queue that the capture stage fills without waiting
//! (a full queue drops the frame, counted), verdicts go out over a channel that waits. A frame
//! that cannot be inspected gets [`Verdict::Error`], which the tracker treats as a reject;
//! nothing here stops the line.
//! This stage never talks to the PLC and never writes records.

pub mod backtest;
pub mod registry;
pub mod taxonomy;
pub mod training;
pub mod views;

use std::num::NonZeroUsize;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

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

    /// Inspects a part seen by several cameras: the station's camera's `frame` and, for each
    /// of `views`, the frame its camera captured nearest the part's trigger (`view_images`, in
    /// the same order). A view with no frame for it is [`Verdict::Error`] for that view, naming
    /// the camera (so the part is rejected).
    pub fn inspect_views(
        &self,
        camera: &Arc<str>,
        frame: Frame,
        views: &[ViewCamera],
        view_images: Vec<Result<GrayImage, String>>,
        clock: &StationClock,
    ) -> Inspection {
        let part_id = frame.part_id;
        let mut looks = Vec::with_capacity(views.len() + 1);
        looks.push(ViewInspection {
            camera: camera.clone(),
            inspection: self.inspect(frame, clock),
        });
        for (view, raw) in views.iter().zip(view_images) {
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
    /// Parts scored side by side ([`crate::config::ModelSection::workers`]).
    pub workers: NonZeroUsize,
}

/// Runs until the frame queue closes (capture stopped) or the tracker goes away.
///
/// With more than one worker, each takes the next frame (and its views' frames, in order,
/// under one lock) and scores it; all of them run their kernels on rayon's global pool. One
/// part alone still gets every core; parts that queue up are scored side by side, so that one
/// worker's serial stretches (calibration, the heat map, a kernel's ragged end) leave the
/// cores to the other's kernels instead of idle. Giving each worker a pool of its own, one
/// core each, was measured slower (`anomaly/two_parts_at_once_*` in `make bench`). Verdicts
/// may then reach the tracker out of order; it keys them by part id.
pub fn run_inspector(ctx: InspectContext) {
    let InspectContext {
        inspector,
        camera,
        views,
        stop_views,
        frames,
        inspections,
        clock,
        metrics,
        shadow_jobs,
        workers,
    } = ctx;
    let (cameras, view_frames): (Vec<ViewCamera>, Vec<ViewFrames>) = views
        .into_iter()
        .map(|view| {
            (
                ViewCamera {
                    name: view.name,
                    undistorter: view.undistorter,
                },
                view.frames,
            )
        })
        .unzip();
    let intake = Mutex::new(Intake {
        frames,
        views: view_frames,
    });
    let worker = Worker {
        inspector: &inspector,
        camera: &camera,
        cameras: &cameras,
        intake: &intake,
        inspections,
        clock,
        metrics,
        shadow_jobs,
    };
    if workers.get() == 1 {
        worker.run();
    } else {
        std::thread::scope(|scope| {
            for index in 0..workers.get() {
                let worker = worker.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("inspect-{index}"))
                    .spawn_scoped(scope, move || worker.run());
                if let Err(error) = spawned {
                    // The workers already running go on; with none, the frames queue up and
                    // are dropped, and their parts rejected, as for a stalled model.
                    tracing::error!(%error, "cannot start inspect worker {index}");
                }
            }
        });
    }
    stop_views.cancel();
}

/// A further camera's name and calibration, shared by the inspect workers.
pub struct ViewCamera {
    pub name: Arc<str>,
    pub undistorter: Undistorter,
}

/// Where the inspect workers take their parts: the station camera's frames and the further
/// cameras' frames, taken together so that each part gets its own views' frames in order.
struct Intake {
    frames: Receiver<Frame>,
    views: Vec<ViewFrames>,
}

impl Intake {
    /// The next part's frame and, from each further camera, the frame nearest it (waiting for
    /// it up to the view's window); `None` once capture has stopped.
    fn next(&mut self, clock: &StationClock) -> Option<(Frame, Vec<Result<GrayImage, String>>)> {
        let frame = self.frames.recv().ok()?;
        let view_images = self
            .views
            .iter_mut()
            .map(|view| view.frame_for(frame.captured_at, clock))
            .collect();
        Some((frame, view_images))
    }
}

/// One inspect worker: takes a part, scores it, hands the verdict to the tracker.
#[derive(Clone)]
struct Worker<'a> {
    inspector: &'a Inspector,
    camera: &'a Arc<str>,
    cameras: &'a [ViewCamera],
    intake: &'a Mutex<Intake>,
    inspections: mpsc::Sender<Inspection>,
    clock: Arc<StationClock>,
    metrics: Metrics,
    shadow_jobs: SyncSender<ShadowJob>,
}

impl Worker<'_> {
    fn run(&self) {
        loop {
            // A worker that panicked holding the lock left the intake whole (a frame is taken
            // or not): the others go on with it.
            let next = self
                .intake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next(&self.clock);
            let Some((frame, view_images)) = next else {
                return;
            };
            let captured_at = frame.captured_at;
            let inspection = if self.cameras.is_empty() {
                self.inspector.inspect(frame, &self.clock)
            } else {
                self.inspector.inspect_views(
                    self.camera,
                    frame,
                    self.cameras,
                    view_images,
                    &self.clock,
                )
            };
            self.offer_to_shadow(&inspection);
            self.metrics.count_inspection(inspection.verdict);
            self.metrics.inspection_latency_seconds.observe(
                inspection
                    .inspected_at
                    .0
                    .saturating_sub(captured_at.0)
                    .as_secs_f64(),
            );
            if let Some(error) = &inspection.error {
                tracing::warn!(part_id = %inspection.part_id, %error, "inspection failed; part will be rejected");
            }
            if self.inspections.blocking_send(inspection).is_err() {
                return;
            }
        }
    }

    /// Queues the part's calibrated images for the shadow model, if one runs; never waits.
    fn offer_to_shadow(&self, inspection: &Inspection) {
        if self.inspector.models.shadow().is_none() {
            return;
        }
        // Every camera's image: the shadow judges the whole part, as the live model did.
        let images: Vec<GrayImage> = match &inspection.views {
            Some(views) => views
                .views
                .iter()
                .filter_map(|v| v.inspection.image.clone())
                .collect(),
            None => inspection.image.iter().cloned().collect(),
        };
        if images.is_empty() {
            return;
        }
        let job = ShadowJob {
            part_id: inspection.part_id,
            images,
            live_version: inspection.model_version.clone(),
            live_verdict: inspection.verdict,
            live_score: inspection.score,
        };
        if let Err(TrySendError::Full(_)) = self.shadow_jobs.try_send(job) {
            self.metrics.shadow_frames_skipped.inc();
        }
    }
}
