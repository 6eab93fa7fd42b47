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

use self::registry::{ActiveModels, RunningModel, ShadowJob};
use self::taxonomy::Taxonomy;
use crate::calibrate::Undistorter;
use crate::learn::drift::InputNovelty;
use crate::metrics::Metrics;
use crate::models::Judgement;
pub use crate::models::ModelError;
use crate::part::{
    Frame, GrayImage, Inspection, MAX_DEFECT_BOXES, PartId, StationClock, Verdict, ViewInspection,
};

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
        let part_id = frame.part_id;
        self.inspect_parts(&Arc::from(""), &[], vec![(frame, Vec::new())], clock)
            .pop()
            .unwrap_or_else(|| self.unseen(part_id, clock))
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
        self.inspect_parts(camera, views, vec![(frame, view_images)], clock)
            .pop()
            .unwrap_or_else(|| self.unseen(part_id, clock))
    }

    /// Inspects parts that queued up, each with its further cameras' images (empty without
    /// `views`), in one call of the live model for every image of every part
    /// ([`crate::models::Detector::judge_many`]; the anomaly family makes it one pass through
    /// the backbone). Every image is judged by the same live model, each on its own; the
    /// inspections come back in the parts' order. A part with no image for one of `views`
    /// gets [`Verdict::Error`] for that view, naming the camera.
    pub fn inspect_parts(
        &self,
        camera: &Arc<str>,
        views: &[ViewCamera],
        parts: Vec<(Frame, Vec<Result<GrayImage, String>>)>,
        clock: &StationClock,
    ) -> Vec<Inspection> {
        let live = self.models.live();
        // Every look at every part, calibrated: the station camera's first, then each view's.
        let mut looks = Vec::with_capacity(parts.len() * (views.len() + 1));
        for (frame, view_images) in &parts {
            looks.push(Look::prepare(
                &self.undistorter,
                camera,
                frame.part_id,
                Ok(&frame.image),
                &live,
            ));
            // Exactly one look per view, so that the looks split back into parts below.
            for (i, view) in views.iter().enumerate() {
                let raw = match view_images.get(i) {
                    Some(raw) => raw.as_ref().map_err(Clone::clone),
                    None => Err(format!("no frame from camera {}", view.name)),
                };
                looks.push(Look::prepare(
                    &view.undistorter,
                    &view.name,
                    frame.part_id,
                    raw,
                    &live,
                ));
            }
        }
        let taxonomy = self.models.taxonomy();
        let images: Vec<&GrayImage> = looks.iter().filter_map(|l| l.image.as_ref().ok()).collect();
        let mut judgements = live
            .detector
            .judge_many(&images, &taxonomy.tolerated())
            .into_iter();
        let mut inspections = looks.into_iter().map(|look| {
            let judgement = look.image.is_ok().then(|| judgements.next());
            look.conclude(judgement.flatten(), &live, &taxonomy, clock)
        });
        let mut inspected = Vec::with_capacity(parts.len());
        for (frame, _) in &parts {
            let own = inspections.next();
            if views.is_empty() {
                inspected.extend(own.map(|(_, inspection)| inspection));
                continue;
            }
            let part_looks: Vec<ViewInspection> = own
                .into_iter()
                .chain(inspections.by_ref().take(views.len()))
                .map(|(camera, inspection)| ViewInspection { camera, inspection })
                .collect();
            // Never `None`: the station's own camera is always one of them.
            inspected.push(
                Inspection::of_views(part_looks)
                    .unwrap_or_else(|| self.unseen(frame.part_id, clock)),
            );
        }
        inspected
    }

    /// The inspection of a part no camera's image reached the model for.
    fn unseen(&self, part_id: PartId, clock: &StationClock) -> Inspection {
        let live = self.models.live();
        Look {
            undistorter: &self.undistorter,
            camera: Arc::from(""),
            part_id,
            image: Err("no view of the part".into()),
            novelty: None,
        }
        .conclude(None, &live, &self.models.taxonomy(), clock)
        .1
    }
}

/// One camera's image of a part, calibrated for the model (or why it could not be).
struct Look<'a> {
    undistorter: &'a Undistorter,
    camera: Arc<str>,
    part_id: PartId,
    image: Result<GrayImage, String>,
    novelty: Option<InputNovelty>,
}

impl<'a> Look<'a> {
    /// Calibrates a part's raw image from a camera calibrated by `undistorter`.
    fn prepare(
        undistorter: &'a Undistorter,
        camera: &Arc<str>,
        part_id: PartId,
        raw: Result<&GrayImage, String>,
        live: &RunningModel,
    ) -> Look<'a> {
        let image = raw.and_then(|raw| undistorter.apply(raw).map_err(|e| e.to_string()));
        // The image's inputs against the live model's training: what the drift watch and the
        // labelling queue read (well under a millisecond).
        let novelty = image.as_ref().ok().and_then(|image| {
            (live.detector.head().drift.as_ref()).map(|reference| reference.novelty_of(image))
        });
        Look {
            undistorter,
            camera: camera.clone(),
            part_id,
            image,
            novelty,
        }
    }

    /// The look's inspection from the model's judgement of its image (`None` where it had
    /// none to judge); failures become [`Verdict::Error`]. Returns the camera beside it.
    fn conclude(
        self,
        judgement: Option<Result<Judgement, ModelError>>,
        live: &RunningModel,
        taxonomy: &Taxonomy,
        clock: &StationClock,
    ) -> (Arc<str>, Inspection) {
        let base = |verdict, error: Option<String>| Inspection {
            part_id: self.part_id,
            inspected_at: clock.now(),
            verdict,
            score: None,
            threshold: live.threshold,
            model_version: live.version.clone(),
            image: None,
            heat_map: None,
            mm_per_pixel: self.undistorter.mm_per_output_pixel(),
            calibration: self.undistorter.id().cloned(),
            defect_class: None,
            defect_boxes: Vec::new(),
            error,
            novelty: None,
            views: None,
        };
        let inspection = match (self.image, judgement) {
            (Err(error), _) => base(Verdict::Error, Some(error)),
            // Never: the model answers for every image it is given.
            (Ok(image), None) => Inspection {
                image: Some(image),
                novelty: self.novelty,
                ..base(Verdict::Error, Some("the model gave no judgement".into()))
            },
            (Ok(image), Some(Ok(judgement))) => {
                let (verdict, defect_class) = taxonomy.verdict(live.threshold, &judgement);
                // Outlined only where there is a defect to show (a reject, or a defect let
                // through on purpose): most parts pass and skip it.
                let defect_boxes = if verdict == Verdict::Fail || defect_class.is_some() {
                    let mut boxes = live.detector.defect_boxes(
                        &judgement,
                        image.width,
                        image.height,
                        live.threshold,
                    );
                    boxes.truncate(MAX_DEFECT_BOXES);
                    boxes
                } else {
                    Vec::new()
                };
                Inspection {
                    score: Some(judgement.score),
                    image: Some(image),
                    heat_map: Some(judgement.heat_map.on_threshold_scale(live.threshold)),
                    defect_class,
                    defect_boxes,
                    novelty: self.novelty,
                    ..base(verdict, None)
                }
            }
            (Ok(image), Some(Err(error))) => Inspection {
                image: Some(image),
                novelty: self.novelty,
                ..base(Verdict::Error, Some(error.to_string()))
            },
        };
        (self.camera, inspection)
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
    /// The most queued parts a worker takes at once ([`crate::config::ModelSection::batch`]).
    pub batch: NonZeroUsize,
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
        batch,
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
        batch,
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
    /// it up to the view's window), then those of the parts queued behind it, up to `batch`
    /// in all: parts that are already waiting, never one waited for. Empty once capture has
    /// stopped.
    fn next_parts(&mut self, clock: &StationClock, batch: usize) -> Vec<Part> {
        let Ok(first) = self.frames.recv() else {
            return Vec::new();
        };
        let mut parts = vec![self.with_views(first, clock)];
        while parts.len() < batch {
            match self.frames.try_recv() {
                Ok(frame) => parts.push(self.with_views(frame, clock)),
                Err(_) => break,
            }
        }
        parts
    }

    fn with_views(&mut self, frame: Frame, clock: &StationClock) -> Part {
        let view_images = self
            .views
            .iter_mut()
            .map(|view| view.frame_for(frame.captured_at, clock))
            .collect();
        (frame, view_images)
    }
}

/// A part's frame from the station's camera and, in order, its further cameras' images.
type Part = (Frame, Vec<Result<GrayImage, String>>);

/// One inspect worker: takes the parts waiting, scores them, hands the verdicts to the
/// tracker.
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
    batch: NonZeroUsize,
}

impl Worker<'_> {
    fn run(&self) {
        loop {
            // A worker that panicked holding the lock left the intake whole (a frame is taken
            // or not): the others go on with it.
            let parts = self
                .intake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_parts(&self.clock, self.batch.get());
            if parts.is_empty() {
                return;
            }
            let captured: Vec<_> = parts.iter().map(|(frame, _)| frame.captured_at).collect();
            let inspections =
                self.inspector
                    .inspect_parts(self.camera, self.cameras, parts, &self.clock);
            for (inspection, captured_at) in inspections.into_iter().zip(captured) {
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
