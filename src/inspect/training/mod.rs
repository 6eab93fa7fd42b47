//! Training a model from the station's own records, started from the browser: the cold start
//! of a new product (an anomaly model from good parts), the supervised model once defects
//! are labelled, and the template model of a product inspected against its golden part (a
//! printed board, a stamped blank), which learns from the boxes drawn round defects.
//!
//! A job learns from one of two sources. The station's records: the parts decided in a
//! period, newest first up to [`MAX_TRAINING_PARTS`], where a part's latest label says what it
//! is and an unlabelled part the live model passed counts as good when the request says so (on
//! the first day of a product nothing is labelled). Or an upload set ([`uploads`]): images an
//! engineer uploaded from a computer, by class. It lays the images out in the MVTec AD folder
//! layout in a scratch folder (every [`HELD_OUT_EVERY`]th image of each class held out in
//! `test/<class>`, the rest in `train/<class>`, except that an anomaly model sees no defect in
//! training: all its defects are in `test/`; masks painted from the labels' regions, and
//! where a part's regions name other types than its class, each region's box and type beside
//! the mask, so that a supervised model learns every type the engineers drew), trains there
//! with the same code and defaults as `linesight train`, and moves the finished model folder
//! into the registry under its version. A template model's golden image is a recorded part
//! the engineer names, labelled good or passed without a defect; it is copied beside the
//! layout (`--reference` to `linesight train template`) and left out of the parts compared
//! with it. The model
//! learns its defects only from defective parts whose regions say where they are (each
//! region's box and type beside the image), and what is no defect from the good parts too;
//! parts it cannot compare with the golden image are left out ([`for_template`]).
//! A half-written model is never in the registry: training writes to a hidden folder that
//! the registry does not list, and the move is one rename in the same folder.
//!
//! One job runs at a time, on a one-thread pool of its own at nice 10, so the live model
//! keeps the other core and comes first on its own. Its progress is each training phase with
//! its time left ([`ProgressWatch`]).
//! When it is done, the job shows the card's validation figures and a few held-out parts with
//! the new model's heat maps, saved to the image store only where they fit its budget
//! without evicting anything (as a backtest's). The model is then a registry version like any
//! other: run it in shadow, backtest it, promote it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub mod uploads;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use self::uploads::{UploadError, Uploads};
use super::backtest::JobState;
use super::registry::Registry;
use crate::learn::dataset::{self, Layout, class_folder, load_gray};
use crate::learn::progress::{PhaseProgress, Progress, ProgressWatch};
use crate::models::anomaly::SYNTHETIC_DEFECTS_PER_GOOD;
use crate::models::anomaly::bank_size::BankSize;
use crate::models::anomaly::discriminator;
use crate::models::anomaly::orientation::Orientations;
use crate::models::anomaly::patch_stages::StagesSetting;
use crate::models::anomaly::train::{
    self as anomaly_train, AnomalySettings, COARSE_INPUT_SIZE, InputSize,
};
use crate::models::card::CARD_FILE;
use crate::models::supervised::{self, SupervisedSettings};
use crate::models::template::compare::CompareSettings;
use crate::models::template::train::{self as template_train, TemplateSettings};
use crate::part::Verdict;
use crate::record::{
    InspectionRecord, RecordBody, RecordError, Region, Store, gray_png, heat_map_png, regions_mask,
};

/// The most parts one training job reads (the newest of its period).
pub const MAX_TRAINING_PARTS: usize = 5_000;

/// Every this-many-th image of each class is held out of training, to measure the model on.
pub const HELD_OUT_EVERY: usize = 4;

/// Good parts a model needs at least: a quarter is held out to measure it, and the rest, each
/// scored by a model fitted without its fold, choose its threshold (19 or more give the
/// threshold a finite-sample promise; the card says which it got).
pub const MIN_GOOD_PARTS: usize = 20;

/// Labelled defective parts a supervised model needs at least, and defective parts labelled
/// with regions a template model needs.
pub const MIN_DEFECTIVE_PARTS: usize = 8;

/// Held-out parts of each kind (good, labelled defective, unlabelled parts the live model
/// rejected) shown with the new model's heat map.
const PREVIEWS_PER_KIND: usize = 3;

/// How many finished jobs are kept to show (until a restart).
pub const KEEP_TRAINING_JOBS: usize = 8;

/// The model families a station can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// From good parts only: the cold start of a new product.
    Anomaly,
    /// From labelled good and defective parts.
    Supervised,
    /// From parts compared with a golden part's image, defects labelled with regions (their
    /// boxes teach what a difference is, and its type).
    Template,
}

/// Where a model's images come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The station's records of a period.
    Records {
        /// Parts decided at or after `from` and before `to`.
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        /// Whether unlabelled parts the live model passed count as good.
        passed_as_good: bool,
    },
    /// An upload set.
    Upload { set: String },
}

/// What to train, from which images.
#[derive(Debug, Clone)]
pub struct TrainingRequest {
    pub family: Family,
    /// The model's name; its version is the name and a hash of what it learnt.
    pub name: String,
    pub source: Source,
    /// The side of the square the model sees, or `auto`; `None` takes the family's default
    /// (the anomaly family chooses between 128 and 256, the supervised family takes 256; a
    /// template model takes none: it compares parts at their own size).
    pub input_size: Option<InputSize>,
    /// Which turned copies of the good images an anomaly model's bank learns from (the CLI's
    /// `--orientations`; [`Orientations::None`], the default, for a supervised model).
    pub orientations: Orientations,
    /// For a template model: the recorded part whose image is the product's golden image
    /// (labelled good, or passed without a defect and unlabelled). Only a template model takes
    /// one.
    pub golden_part: Option<u64>,
    pub requested_by: String,
}

/// Why a training job could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("training job {0} is still running; one runs at a time")]
    Busy(u64),
    #[error("a model name is 1 to 40 letters, digits, `-` or `_` (it names a folder), not {0:?}")]
    Name(String),
    #[error("the period is empty: `from` ({from}) must be before `to` ({to})")]
    EmptyPeriod {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("this station keeps no uploads")]
    NoUploads,
    #[error("cannot start the training thread: {0}")]
    Thread(std::io::Error),
    #[error("no training job {0} (the newest {KEEP_TRAINING_JOBS} are kept until a restart)")]
    UnknownJob(u64),
    #[error("training job {id} is not running: it is {state:?}")]
    NotRunning { id: u64, state: JobState },
    /// A template model asked for without its golden part, with an unusable one or from an
    /// upload set; or a golden part named for another family.
    #[error("{0}")]
    Template(String),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What went into a training set, as the job shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrainingSet {
    /// Parts decided in the period (before [`MAX_TRAINING_PARTS`]), or images in the upload
    /// set.
    pub parts_in_period: u64,
    /// Good parts: labelled good, or passed and unlabelled when those count.
    pub good: u64,
    /// Of them, held out of training to measure the model on.
    pub good_held_out: u64,
    /// Defective parts by class (labelled only).
    pub defective: BTreeMap<String, u64>,
    /// Parts left out, by reason.
    pub left_out: BTreeMap<String, u64>,
}

/// One held-out part, judged by the new model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// The recorded part; `None` for an uploaded image.
    pub part_id: Option<u64>,
    /// `good`, or the labelled defect class.
    pub class: String,
    pub score: f32,
    pub verdict: Verdict,
    /// The part's image (`/api/v1/images/{digest}`); an uploaded image is copied to the
    /// image store for it.
    pub image: String,
    /// The new model's heat map on its threshold's scale; `None` when it did not fit the
    /// image budget.
    pub heat_map: Option<String>,
}

/// A trained model, as the job shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrainedModel {
    pub version: String,
    pub kind: String,
    pub threshold: f32,
    /// The model's whole card: its threshold rule and guarantee, and its validation and
    /// held-out figures.
    pub card: serde_json::Value,
    /// Whether an identical model (the same version) was in the registry already.
    pub already_registered: bool,
    pub previews: Vec<Preview>,
}

/// A training job and how far it is.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingJob {
    pub id: u64,
    pub family: Family,
    pub name: String,
    pub source: Source,
    /// A template model's golden part.
    pub golden_part: Option<u64>,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub state: JobState,
    /// The phase it is in, while it runs.
    pub progress: Option<PhaseProgress>,
    /// Every phase it has been in, oldest first, the last as it stands now; once the job has
    /// ended, as they stood when it ended (where a training's time went).
    pub phases: Vec<PhaseProgress>,
    /// Whether it has been asked to stop (it still runs until its current step ends).
    pub cancel_requested: bool,
    /// Once the records are read.
    pub training_set: Option<TrainingSet>,
    pub model: Option<TrainedModel>,
    pub error: Option<String>,
}

/// A job as it is kept: its view, and the watch its training thread reports to.
#[derive(Debug)]
struct Slot {
    job: TrainingJob,
    watch: ProgressWatch,
}

/// The station's training jobs, newest last.
#[derive(Debug, Default)]
pub struct TrainingJobs {
    jobs: Mutex<VecDeque<Slot>>,
    next_id: AtomicU64,
    /// Where upload sets are kept; `None` where the station keeps none.
    uploads: Option<Uploads>,
}

impl TrainingJobs {
    /// Jobs that can also learn from upload sets kept in `uploads`.
    pub fn with_uploads(uploads: Uploads) -> TrainingJobs {
        TrainingJobs {
            uploads: Some(uploads),
            ..TrainingJobs::default()
        }
    }

    /// The upload sets, where the station keeps them.
    pub fn uploads(&self) -> Result<&Uploads, TrainingError> {
        self.uploads.as_ref().ok_or(TrainingError::NoUploads)
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<TrainingJob> {
        self.lock().iter().rev().map(Slot::view).collect()
    }

    pub fn get(&self, id: u64) -> Option<TrainingJob> {
        self.lock().iter().find(|s| s.job.id == id).map(Slot::view)
    }

    /// Why `request` cannot start now on `store`'s records, if it cannot.
    pub fn refusal(&self, store: &Store, request: &TrainingRequest) -> Result<(), TrainingError> {
        self.checked(store, request).map(|_| ())
    }

    /// [`Self::refusal`], with a template model's golden part as it was found: the job runs
    /// against the part it was checked with, read once.
    fn checked(
        &self,
        store: &Store,
        request: &TrainingRequest,
    ) -> Result<Option<GoldenPart>, TrainingError> {
        check_name(&request.name)?;
        let golden = match (request.family, request.golden_part, &request.source) {
            (Family::Template, _, Source::Upload { .. }) => {
                return Err(TrainingError::Template(
                    "a template model learns from the regions drawn round defects in the \
                     labelling page, which uploaded images have none of: train it from this \
                     station's parts"
                        .into(),
                ));
            }
            (Family::Template, None, _) => {
                return Err(TrainingError::Template(
                    "a template model compares each part with the product's golden part: name \
                     it (`golden_part`, a part labelled good, or passed without a defect)"
                        .into(),
                ));
            }
            (Family::Template, Some(part), Source::Records { .. }) => {
                Some(GoldenPart::find(store, part)?)
            }
            (_, Some(_), _) => {
                return Err(TrainingError::Template(
                    "`golden_part` is for template models: the other families learn what good \
                     parts look like from many of them"
                        .into(),
                ));
            }
            (_, None, _) => None,
        };
        match &request.source {
            Source::Records { from, to, .. } if from >= to => {
                return Err(TrainingError::EmptyPeriod {
                    from: *from,
                    to: *to,
                });
            }
            Source::Records { .. } => {}
            Source::Upload { set } => {
                self.uploads()?.images(set)?;
            }
        }
        match self
            .lock()
            .iter()
            .find(|s| s.job.state == JobState::Running)
        {
            Some(running) => Err(TrainingError::Busy(running.job.id)),
            None => Ok(golden),
        }
    }

    /// Checks `request` and starts it on a thread of its own.
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        registry: Registry,
        request: TrainingRequest,
    ) -> Result<TrainingJob, TrainingError> {
        let golden = self.checked(&store, &request)?;
        let watch = ProgressWatch::default();
        let job = {
            let mut jobs = self.lock();
            if let Some(running) = jobs.iter().find(|s| s.job.state == JobState::Running) {
                return Err(TrainingError::Busy(running.job.id));
            }
            let job = TrainingJob {
                id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                family: request.family,
                name: request.name.clone(),
                source: request.source.clone(),
                golden_part: request.golden_part,
                requested_by: request.requested_by.clone(),
                started_at: Utc::now(),
                finished_at: None,
                state: JobState::Running,
                progress: None,
                phases: Vec::new(),
                cancel_requested: false,
                training_set: None,
                model: None,
                error: None,
            };
            jobs.push_back(Slot {
                job: job.clone(),
                watch: watch.clone(),
            });
            while jobs.len() > KEEP_TRAINING_JOBS {
                // Never drop the running job: it is the newest.
                jobs.pop_front();
            }
            job
        };
        let jobs = self.clone();
        let id = job.id;
        let uploads = self.uploads.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("training-{id}"))
            .spawn(move || {
                let read = |set: &TrainingSet| {
                    jobs.update(id, &|job| job.training_set = Some(set.clone()));
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(
                        &store,
                        uploads.as_ref(),
                        &registry,
                        &request,
                        golden,
                        id,
                        &watch,
                        &read,
                    )
                }))
                .unwrap_or_else(|panic| Err(format!("training stopped on a bug: {panic:?}")));
                // A run that failed after a cancel stopped because of it; one that finished
                // first is done (its model is in the registry).
                let cancelled = outcome.is_err() && watch.is_cancelled();
                // The record as the run left it: a bar's elapsed time goes on counting after
                // its run has ended.
                let phases = watch.phases();
                jobs.update(id, &|job| {
                    job.finished_at = Some(Utc::now());
                    job.phases = phases.clone();
                    match &outcome {
                        Ok(model) => {
                            job.state = JobState::Done;
                            job.model = Some(model.clone());
                        }
                        Err(_) if cancelled => job.state = JobState::Cancelled,
                        Err(error) => {
                            job.state = JobState::Failed;
                            job.error = Some(error.clone());
                        }
                    }
                });
                match &outcome {
                    Ok(model) => tracing::info!(id, version = %model.version, "model trained"),
                    Err(_) if cancelled => tracing::info!(id, "training cancelled"),
                    Err(error) => tracing::warn!(id, %error, "training failed"),
                }
            });
        if let Err(error) = spawned {
            self.update(id, &|job| {
                job.state = JobState::Failed;
                job.finished_at = Some(Utc::now());
                job.error = Some(format!("cannot start the training thread: {error}"));
            });
            return Err(TrainingError::Thread(error));
        }
        Ok(job)
    }

    /// Asks running job `id` to stop. It does within one step of its current phase (an image,
    /// an optimiser step, a coreset entry), removes its scratch folder and ends
    /// [`JobState::Cancelled`], with nothing added to the registry; the job as it is now.
    pub fn cancel(&self, id: u64) -> Result<TrainingJob, TrainingError> {
        let jobs = self.lock();
        let slot = running(&jobs, id)?;
        slot.watch.cancel();
        Ok(slot.view())
    }

    /// Why job `id` cannot be cancelled now (unknown, or no longer running), if it cannot:
    /// asked before a cancel is recorded.
    pub fn cancel_refusal(&self, id: u64) -> Result<(), TrainingError> {
        running(&self.lock(), id).map(|_| ())
    }

    fn update(&self, id: u64, change: &dyn Fn(&mut TrainingJob)) {
        if let Some(slot) = self.lock().iter_mut().find(|s| s.job.id == id) {
            change(&mut slot.job);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Job `id` of `jobs`, if it is running.
fn running(jobs: &VecDeque<Slot>, id: u64) -> Result<&Slot, TrainingError> {
    let slot = (jobs.iter())
        .find(|s| s.job.id == id)
        .ok_or(TrainingError::UnknownJob(id))?;
    if slot.job.state != JobState::Running {
        return Err(TrainingError::NotRunning {
            id,
            state: slot.job.state,
        });
    }
    Ok(slot)
}

impl Slot {
    fn view(&self) -> TrainingJob {
        let mut job = self.job.clone();
        if job.state == JobState::Running {
            job.progress = self.watch.now();
            job.phases = self.watch.phases();
        }
        job.cancel_requested = self.watch.is_cancelled();
        job
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), TrainingError> {
    let fits = (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fits {
        Ok(())
    } else {
        Err(TrainingError::Name(name.to_owned()))
    }
}

/// Where a training image is.
#[derive(Debug, Clone, PartialEq)]
enum ImageFile {
    /// In the station's image store, by digest.
    Stored(String),
    /// In an upload set.
    Uploaded(PathBuf),
}

impl ImageFile {
    fn path(&self, store: &Store) -> Option<PathBuf> {
        match self {
            ImageFile::Stored(digest) => store.images().path(digest),
            ImageFile::Uploaded(path) => path.is_file().then(|| path.clone()),
        }
    }
}

/// One part of a training set.
#[derive(Debug, Clone, PartialEq)]
struct TrainingPart {
    /// The recorded part; `None` for an uploaded image.
    part_id: Option<u64>,
    image: ImageFile,
    /// `good`, or the defect class.
    class: String,
    /// Where the defects are, for defective parts labelled with regions.
    regions: Vec<Region>,
    held_out: bool,
    /// The product its record names; `None` for an uploaded image or a record without one.
    product: Option<String>,
    /// Whether it counts as good only because the live model passed it, with a defect of a
    /// tolerated class.
    tolerated_defect: bool,
}

/// What a job reads from the records: the parts that teach, and a few unlabelled parts the
/// live model rejected (they teach nothing, but show the new model on what the old one failed).
#[derive(Debug, Default)]
struct TrainingParts {
    parts: Vec<TrainingPart>,
    live_rejected: Vec<TrainingPart>,
}

/// Which images of each class are held out: every [`HELD_OUT_EVERY`]th, in the order given.
#[derive(Debug, Default)]
struct HoldOut(HashMap<String, usize>);

impl HoldOut {
    fn next(&mut self, class: &str) -> bool {
        let n = self.0.entry(class.to_owned()).or_default();
        *n += 1;
        n.is_multiple_of(HELD_OUT_EVERY)
    }
}

/// The label a part the live model rejected gets in a preview.
const LIVE_REJECTED: &str = "rejected by the live model, unlabelled";

/// The whole job on its thread: the records read, the folder laid out, the model trained and
/// moved into the registry, the previews scored. Errors come back as the words the job shows.
#[allow(clippy::too_many_arguments)]
fn run(
    store: &Store,
    uploads: Option<&Uploads>,
    registry: &Registry,
    request: &TrainingRequest,
    golden: Option<GoldenPart>,
    id: u64,
    watch: &ProgressWatch,
    read: &dyn Fn(&TrainingSet),
) -> Result<TrainedModel, String> {
    let (
        TrainingParts {
            parts,
            live_rejected,
        },
        set,
    ) = match &request.source {
        Source::Records {
            from,
            to,
            passed_as_good,
        } => training_parts(store, (*from, *to), *passed_as_good).map_err(|e| e.to_string())?,
        Source::Upload { set } => {
            let uploads = uploads.ok_or("this station keeps no uploads")?;
            uploaded_parts(uploads, set).map_err(|e| e.to_string())?
        }
    };
    // A template model's golden image, and only the parts it can learn from compared with it.
    let (parts, live_rejected, set) = match &golden {
        Some(golden) => {
            let size_of = |part: &TrainingPart| {
                let path = part.image.path(store)?;
                image::image_dimensions(path).ok()
            };
            let (parts, set) = for_template(parts, set, golden, &size_of);
            // Previews only of parts the golden image can be compared with.
            let live_rejected = (live_rejected.into_iter())
                .filter(|p| golden.why_not_compared(p, &size_of).is_none())
                .collect();
            (parts, live_rejected, set)
        }
        None => (parts, live_rejected, set),
    };
    read(&set);
    enough(request.family, &set, &request.source)?;
    let root = registry.root();
    let scratch = root.join(format!("{SCRATCH_PREFIX}{id}-{}", std::process::id()));
    let data = scratch.join("data");
    let out = scratch.join("model");
    let outcome = (|| {
        lay_out(store, request.family, &parts, &data)
            .map_err(|e| format!("laying out the training images in {}: {e}", data.display()))?;
        let golden_png = match &golden {
            Some(golden) => {
                let path = scratch.join(GOLDEN_FILE);
                let kept = (store.images().path(&golden.digest))
                    .ok_or_else(|| "the golden part's image is no longer kept".to_owned())?;
                std::fs::copy(&kept, &path)
                    .map_err(|e| format!("copying the golden image to {}: {e}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        // The backbone's weights, for the families that have one.
        let backbone_weights = || {
            registry
                .weights()
                .find(None, root)
                .map_err(|e| e.to_string())
        };
        // One worker thread of its own, after the live work (nice 10): the backbone's kernels
        // run on rayon, and in the global pool training would take every core from the live
        // model.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("training-{id}-worker"))
            .start_handler(|_| super::backtest::lower_priority())
            .build()
            .map_err(|e| format!("cannot start the training thread pool: {e}"))?;
        let progress = Progress::watched(watch.clone());
        let (version, kind, threshold) = pool.install(|| match request.family {
            Family::Anomaly => anomaly_train::train(&AnomalySettings {
                name: request.name.clone(),
                layout: Layout::Mvtec,
                data: data.clone(),
                backbone_weights: backbone_weights()?,
                // The CLI's default: the run chooses within the search budget.
                bank_size: BankSize::AUTO,
                // The CLI's default: the run chooses up to 256.
                input_size: request.input_size.unwrap_or(InputSize::AUTO),
                // The CLI's default: the run chooses the feature maps.
                patch_stages: StagesSetting::Auto,
                target_false_reject_rate: anomaly_train::DEFAULT_TARGET_FALSE_REJECT_RATE,
                synthetic_defects_per_good: SYNTHETIC_DEFECTS_PER_GOOD,
                coarse_input_size: Some(COARSE_INPUT_SIZE),
                discriminator_steps: discriminator::DEFAULT_STEPS,
                discriminator_noise_std: discriminator::DEFAULT_NOISE_STD,
                orientations: request.orientations.clone(),
                seed: 0,
                out_dir: out.clone(),
                progress,
            })
            .map(|card| (card.head.version, card.head.kind, card.head.threshold))
            .map_err(|e| e.to_string()),
            Family::Supervised => {
                let defaults = SupervisedSettings::defaults(
                    &request.name,
                    Layout::Mvtec,
                    data.clone(),
                    backbone_weights()?,
                    out.clone(),
                );
                supervised::train(&SupervisedSettings {
                    progress,
                    input_size: request.input_size.unwrap_or(defaults.input_size),
                    ..defaults
                })
                .map(|card| (card.head.version, card.head.kind, card.head.threshold))
                .map_err(|e| e.to_string())
            }
            // The CLI's defaults: the run measures how far parts sit off the golden image and
            // chooses its depth, join and crumb size on its validation parts.
            Family::Template => template_train::train(&TemplateSettings {
                name: request.name.clone(),
                layout: Layout::Mvtec,
                data: data.clone(),
                reference: golden_png.clone(),
                compare: CompareSettings::default(),
                choose_compare: true,
                out_dir: out.clone(),
                progress,
            })
            .map(|card| (card.head.version, card.head.kind, card.head.threshold))
            .map_err(|e| e.to_string()),
        })?;
        // The card names the images it learnt from, not the scratch folder (gone by now).
        let images = match &request.source {
            Source::Records { from, to, .. } => format!(
                "station {} records: parts decided from {} to {}",
                store.station(),
                from.to_rfc3339(),
                to.to_rfc3339()
            ),
            Source::Upload { set } => format!("station {} upload set {set}", store.station()),
        };
        let source = format!(
            "{images} (training job {id}, asked by {})",
            request.requested_by
        );
        let card = describe_source(&out.join(CARD_FILE), &source)
            .map_err(|e| format!("the new model's card: {e}"))?;
        let home = root.join(&version);
        let already_registered = home.join(CARD_FILE).is_file();
        if !already_registered {
            std::fs::rename(&out, &home).map_err(|e| {
                format!(
                    "moving the model into the registry ({}): {e}",
                    home.display()
                )
            })?;
        }
        watch_phase(watch, "heat maps of held-out parts");
        // An anomaly model never trains on a defect: every one is held out for it.
        let unseen: Vec<TrainingPart> = (parts.iter())
            .filter(|p| p.held_out || (p.class != "good" && request.family == Family::Anomaly))
            .cloned()
            .collect();
        let previews = previews(store, registry, &home, &unseen, &live_rejected, threshold)?;
        Ok(TrainedModel {
            version,
            kind,
            threshold,
            card,
            already_registered,
            previews,
        })
    })();
    if let Err(error) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), %error, "could not remove the training folder");
    }
    outcome
}

/// The prefix of a training job's scratch folder in the registry (hidden: not a model).
const SCRATCH_PREFIX: &str = ".training-";

/// Removes the scratch folders a killed station left in the registry at `root`. Run at
/// start, before any job: none of them belongs to a running job.
pub fn remove_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
        {
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "removed an interrupted training job's folder")
                }
                Err(error) => {
                    tracing::warn!(dir = %path.display(), %error, "could not remove an interrupted training job's folder")
                }
            }
        }
    }
}

/// Sets the card's `dataset` to `source`; returns the card.
fn describe_source(card_file: &Path, source: &str) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(card_file).map_err(|e| e.to_string())?;
    let mut card: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    card["dataset"] = source.into();
    let text = serde_json::to_vec_pretty(&card).map_err(|e| e.to_string())?;
    std::fs::write(card_file, text).map_err(|e| e.to_string())?;
    Ok(card)
}

/// Marks a phase with no count of its own.
fn watch_phase(watch: &ProgressWatch, what: &str) {
    drop(Progress::watched(watch.clone()).phase(0, what));
}

/// Refuses a set too small to train `family` on, saying what the source lacks.
fn enough(family: Family, set: &TrainingSet, source: &Source) -> Result<(), String> {
    let training_good = set.good - set.good_held_out;
    let defective: u64 = set.defective.values().sum();
    let (has, hint, defects_hint) = match source {
        Source::Records {
            passed_as_good: true,
            ..
        } => (
            "the period has",
            "choose a longer period",
            "label more defects",
        ),
        Source::Records { .. } => (
            "the period has",
            "label more parts good, count passed parts as good, or choose a longer period",
            "label more defects",
        ),
        Source::Upload { .. } => (
            "the upload set has",
            "upload more images of good parts",
            "upload more images of defects",
        ),
    };
    // A template model's good part is its golden one; good parts compared with it teach what
    // a difference that is no defect looks like, as the defective parts' other differences do.
    if family != Family::Template && (set.good as usize) < MIN_GOOD_PARTS {
        return Err(format!(
            "{has} {} good parts with a kept image ({training_good} to train on); a model \
             needs at least {MIN_GOOD_PARTS}: {hint}",
            set.good
        ));
    }
    if family == Family::Supervised && (defective as usize) < MIN_DEFECTIVE_PARTS {
        return Err(format!(
            "{has} {defective} defective parts with a kept image; a supervised model needs at \
             least {MIN_DEFECTIVE_PARTS}: {defects_hint}, or train an anomaly model from the \
             good parts"
        ));
    }
    // A template set holds only defective parts labelled with regions, of the golden part's
    // product and size ([`for_template`]).
    if family == Family::Template && (defective as usize) < MIN_DEFECTIVE_PARTS {
        return Err(format!(
            "{has} {defective} defective parts labelled with regions of the golden part's \
             product and size; a template model needs at least {MIN_DEFECTIVE_PARTS}: draw \
             regions round the defects of more parts in the labelling page (the parts left out \
             say why)"
        ));
    }
    Ok(())
}

/// Where a job keeps a template model's golden image beside its layout.
const GOLDEN_FILE: &str = "golden.png";

/// A template model's golden part, as a job compares parts with it.
#[derive(Debug, Clone, PartialEq)]
struct GoldenPart {
    part_id: u64,
    /// Its kept image.
    digest: String,
    /// The image's width and height.
    size: (u32, u32),
    /// The product its record names.
    product: Option<String>,
}

impl GoldenPart {
    /// Why `part` cannot be compared with this golden part, if it cannot: another product's
    /// (or none, where the golden part names one), or an image of another size or no longer
    /// kept (`size_of` reads its size).
    fn why_not_compared(
        &self,
        part: &TrainingPart,
        size_of: &dyn Fn(&TrainingPart) -> Option<(u32, u32)>,
    ) -> Option<&'static str> {
        if self.product.is_some() && part.product != self.product {
            return Some("of another product than the golden part");
        }
        match size_of(part) {
            None => Some("its image no longer kept"),
            Some(size) if size != self.size => Some("of another size than the golden part's image"),
            Some(_) => None,
        }
    }

    /// Recorded part `part_id` as a template model's golden part, where it can be one: labelled
    /// good (its latest label), or passed without a defect and unlabelled, its image still kept.
    fn find(store: &Store, part_id: u64) -> Result<GoldenPart, TrainingError> {
        let refuse = |why: &str| {
            Err(TrainingError::Template(format!(
                "golden part {part_id}: {why}"
            )))
        };
        let Some(RecordBody::Inspection(part)) = store.inspection(part_id)?.map(|r| r.body) else {
            return refuse("no such part in this station's records");
        };
        // Labels come oldest first: the last is what the part is now.
        let label = match store.labels(part_id)?.pop().map(|r| r.body) {
            Some(RecordBody::Label(label)) => Some(label),
            _ => None,
        };
        let image = match label {
            Some(label) => match label.verdict {
                Verdict::Pass => label.image.or(part.image),
                Verdict::Fail => {
                    return refuse("it is labelled defective; a golden part is a good one");
                }
                Verdict::Error => {
                    return refuse("it is labelled as an error; a golden part is a good one");
                }
            },
            // A tolerated defect passes too, with its class kept.
            None if part.verdict == Some(Verdict::Pass) && part.defect_class.is_none() => {
                part.image
            }
            None if part.verdict == Some(Verdict::Pass) => {
                return refuse(
                    "the live model passed it with a tolerated defect and it is not labelled \
                     good; a golden part is a good one",
                );
            }
            None => {
                return refuse(
                    "the live model did not pass it and it is not labelled good; a golden part \
                     is a good one",
                );
            }
        };
        let Some((digest, path)) = image.and_then(|d| store.images().path(&d).map(|p| (d, p)))
        else {
            return refuse("its image is no longer kept; choose a newer good part");
        };
        let size = image::image_dimensions(&path).map_err(|e| {
            TrainingError::Template(format!("golden part {part_id}: its image: {e}"))
        })?;
        Ok(GoldenPart {
            part_id,
            digest,
            size,
            product: part.product,
        })
    }
}

/// The parts a template model learns from, each left out part counted in the set's reasons:
/// the golden part (compared with itself it differs nowhere); defective parts without
/// regions (where their defects are is what the model learns; without it, every difference
/// on them would teach "no defect"); parts of another product than the golden part's, and
/// parts whose image (`size_of`) is not the golden image's size (another product or camera:
/// one such part in a period must not fail the job); unlabelled parts passed with a tolerated
/// defect (their defect would teach "no defect"). The parts kept are then held out anew,
/// every [`HELD_OUT_EVERY`]th of each class, so that a quarter of the parts kept is held out
/// to measure the model on.
fn for_template(
    parts: Vec<TrainingPart>,
    mut set: TrainingSet,
    golden: &GoldenPart,
    size_of: &dyn Fn(&TrainingPart) -> Option<(u32, u32)>,
) -> (Vec<TrainingPart>, TrainingSet) {
    let mut kept = Vec::with_capacity(parts.len());
    for part in parts {
        let reason = if part.part_id == Some(golden.part_id) {
            "the golden part"
        } else if part.class != "good" && part.regions.is_empty() {
            "labelled defective without regions (a template model learns from boxes)"
        } else if part.tolerated_defect {
            "passed with a tolerated defect and not labelled good"
        } else if let Some(why) = golden.why_not_compared(&part, size_of) {
            why
        } else {
            kept.push(part);
            continue;
        };
        *set.left_out.entry(reason.to_owned()).or_default() += 1;
    }
    // The set's counts are the kept parts', counted anew as they are held out anew.
    let mut hold_out = HoldOut::default();
    (set.good, set.good_held_out) = (0, 0);
    set.defective.clear();
    for part in &mut kept {
        part.held_out = hold_out.next(&part.class);
        if part.class == "good" {
            set.good += 1;
            set.good_held_out += u64::from(part.held_out);
        } else {
            *set.defective.entry(part.class.clone()).or_default() += 1;
        }
    }
    (kept, set)
}

/// An upload set's images with their classes, and the set's summary.
fn uploaded_parts(
    uploads: &Uploads,
    name: &str,
) -> Result<(TrainingParts, TrainingSet), UploadError> {
    let mut set = TrainingSet::default();
    let mut parts = Vec::new();
    let mut hold_out = HoldOut::default();
    for (folder, images) in uploads.images(name)? {
        for path in images {
            set.parts_in_period += 1;
            let good = folder == "good";
            let held_out = hold_out.next(&folder);
            if good {
                set.good += 1;
                set.good_held_out += u64::from(held_out);
            } else {
                *set.defective.entry(folder.clone()).or_default() += 1;
            }
            parts.push(TrainingPart {
                part_id: None,
                image: ImageFile::Uploaded(path),
                class: folder.clone(),
                regions: Vec::new(),
                held_out,
                product: None,
                tolerated_defect: false,
            });
        }
    }
    let parts = TrainingParts {
        parts,
        live_rejected: Vec::new(),
    };
    Ok((parts, set))
}

/// The period's parts with what they are, newest first, and the set's summary.
fn training_parts(
    store: &Store,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    passed_as_good: bool,
) -> Result<(TrainingParts, TrainingSet), RecordError> {
    let latest = store.latest_labels()?;
    let mut set = TrainingSet::default();
    let mut parts = Vec::new();
    let mut live_rejected = Vec::new();
    let mut hold_out = HoldOut::default();
    store.for_each_inspection_decided((from, to), |record| {
        set.parts_in_period += 1;
        if parts.len() + left_out_count(&set) >= MAX_TRAINING_PARTS {
            *set.left_out
                .entry(format!("past the newest {MAX_TRAINING_PARTS} parts"))
                .or_default() += 1;
            return Ok(());
        }
        match classify(store, &latest, &record, passed_as_good)? {
            Ok((class, image, regions)) => {
                let held_out = hold_out.next(&class);
                if class == "good" {
                    set.good += 1;
                    set.good_held_out += u64::from(held_out);
                } else {
                    *set.defective.entry(class.clone()).or_default() += 1;
                }
                parts.push(TrainingPart {
                    part_id: Some(record.part_id),
                    image: ImageFile::Stored(image),
                    class,
                    regions,
                    held_out,
                    product: record.product.clone(),
                    tolerated_defect: passed_with_tolerated_defect(&latest, &record),
                });
            }
            Err(reason) => {
                *set.left_out.entry(reason.to_owned()).or_default() += 1;
                if let (Some(Verdict::Fail), Some(image), true) = (
                    record.verdict,
                    &record.image,
                    live_rejected.len() < PREVIEWS_PER_KIND,
                ) && !latest.contains_key(&record.part_id)
                {
                    live_rejected.push(TrainingPart {
                        part_id: Some(record.part_id),
                        image: ImageFile::Stored(image.clone()),
                        class: LIVE_REJECTED.into(),
                        regions: Vec::new(),
                        held_out: true,
                        product: record.product.clone(),
                        tolerated_defect: false,
                    });
                }
            }
        }
        Ok::<_, RecordError>(())
    })?;
    let parts = TrainingParts {
        parts,
        live_rejected,
    };
    Ok((parts, set))
}

/// Whether `record`'s part is unlabelled and passed with a tolerated defect (what it teaches
/// as good, where passed parts count, holds a defect).
fn passed_with_tolerated_defect(latest: &HashMap<u64, u64>, record: &InspectionRecord) -> bool {
    !latest.contains_key(&record.part_id)
        && record.verdict == Some(Verdict::Pass)
        && record.defect_class.is_some()
}

fn left_out_count(set: &TrainingSet) -> usize {
    set.left_out.values().sum::<u64>() as usize
}

type Classified = Result<(String, String, Vec<Region>), &'static str>;

/// What a part teaches: its class, image and regions; or why it is left out.
fn classify(
    store: &Store,
    latest: &HashMap<u64, u64>,
    record: &InspectionRecord,
    passed_as_good: bool,
) -> Result<Classified, RecordError> {
    let label = match latest.get(&record.part_id) {
        Some(&seq) => match store.record(seq)?.map(|r| r.body) {
            Some(RecordBody::Label(label)) => Some(label),
            _ => None,
        },
        None => None,
    };
    let (class, image, regions) = match label {
        Some(label) => {
            let class = match label.verdict {
                Verdict::Pass => "good".to_owned(),
                Verdict::Fail => label.defect_class.unwrap_or_else(|| "defect".into()),
                Verdict::Error => return Ok(Err("labelled as an error")),
            };
            (
                class,
                label.image.or_else(|| record.image.clone()),
                label.regions,
            )
        }
        None if passed_as_good && record.verdict == Some(Verdict::Pass) => {
            ("good".to_owned(), record.image.clone(), Vec::new())
        }
        None if passed_as_good => return Ok(Err("unlabelled and not passed")),
        None => return Ok(Err("unlabelled")),
    };
    let Some(image) = image else {
        return Ok(Err("no image kept"));
    };
    if store.images().path(&image).is_none() {
        return Ok(Err("no image kept"));
    }
    Ok(Ok((class, image, regions)))
}

/// Writes the parts' images in the MVTec AD layout under `data`, held-out ones in `test/`;
/// `family`'s training part has no defect when it is an anomaly model.
fn lay_out(
    store: &Store,
    family: Family,
    parts: &[TrainingPart],
    data: &Path,
) -> std::io::Result<()> {
    for part in parts {
        let source = part
            .image
            .path(store)
            .ok_or_else(|| std::io::Error::other(format!("{:?} is gone", part.image)))?;
        let trains = !part.held_out && (part.class == "good" || family != Family::Anomaly);
        let split = if trains { "train" } else { "test" };
        let folder = data.join(split).join(uploads::folder_of(&part.class));
        std::fs::create_dir_all(&folder)?;
        // Named by the part, so two parts with the same image are two images; an upload by
        // its digest.
        let stem = match (part.part_id, &part.image) {
            (Some(id), _) => format!("part-{id:010}"),
            (None, _) => source
                .file_stem()
                .map(|s| format!("upload-{}", s.to_string_lossy()))
                .unwrap_or_default(),
        };
        std::fs::copy(&source, folder.join(format!("{stem}.png")))?;
        if part.class != "good" && !part.regions.is_empty() {
            let (width, height) =
                image::image_dimensions(&source).map_err(std::io::Error::other)?;
            let mask = gray_png(&regions_mask(&part.regions, width, height))
                .map_err(std::io::Error::other)?;
            let truth = data.join("ground_truth").join(class_folder(&part.class));
            std::fs::create_dir_all(&truth)?;
            std::fs::write(truth.join(format!("{stem}_mask.png")), mask)?;
            // Regions of another type than the part's: each teaches its own type, through its
            // box over the mask (a part labelled scratch may show a dent too). A template model
            // learns from boxes alone: every region's.
            let boxes = match family {
                Family::Template => Some(dataset::every_region_box(&part.regions, width, height)),
                _ => dataset::region_boxes(&part.regions, &part.class, width, height),
            };
            if let Some(boxes) = boxes {
                std::fs::write(truth.join(format!("{stem}_boxes.txt")), boxes)?;
            }
        }
    }
    Ok(())
}

/// A few of the `unseen` (held-out) good and defective parts, and parts the live model
/// rejected, judged by the model in `dir`.
fn previews(
    store: &Store,
    registry: &Registry,
    dir: &Path,
    unseen: &[TrainingPart],
    live_rejected: &[TrainingPart],
    threshold: f32,
) -> Result<Vec<Preview>, String> {
    let detector = registry
        .load_dir(dir)
        .map_err(|e| format!("the new model does not load: {e}"))?;
    let good = unseen
        .iter()
        .filter(|p| p.class == "good")
        .take(PREVIEWS_PER_KIND);
    let defective = unseen
        .iter()
        .filter(|p| p.class != "good")
        .take(PREVIEWS_PER_KIND);
    let mut previews = Vec::new();
    for part in good.chain(defective).chain(live_rejected) {
        let Some(path) = part.image.path(store) else {
            continue; // evicted since
        };
        let Ok(image) = load_gray(&path) else {
            continue;
        };
        // The page shows images from the image store: an upload is copied there, when it fits.
        let digest = match &part.image {
            ImageFile::Stored(digest) => digest.clone(),
            ImageFile::Uploaded(path) => match std::fs::read(path)
                .ok()
                .and_then(|png| store.save_image_within_budget(&png).ok().flatten())
            {
                Some(digest) => digest,
                None => continue,
            },
        };
        let judgement = match detector.judge(&image) {
            Ok(judgement) => judgement,
            Err(error) => {
                tracing::warn!(image = ?part.image, %error, "no preview");
                continue;
            }
        };
        let heat_map = heat_map_png(&judgement.heat_map.on_threshold_scale(threshold))
            .ok()
            .and_then(|png| store.save_image_within_budget(&png).ok().flatten());
        previews.push(Preview {
            part_id: part.part_id,
            class: part.class.clone(),
            score: judgement.score,
            verdict: if judgement.score >= threshold {
                Verdict::Fail
            } else {
                Verdict::Pass
            },
            image: digest,
            heat_map,
        });
    }
    Ok(previews)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supervised_job_trains_at_256_unless_asked() {
        let defaults = SupervisedSettings::defaults(
            "m",
            Layout::Mvtec,
            "data".into(),
            "weights".into(),
            "out".into(),
        );
        assert_eq!(defaults.input_size, InputSize::Fixed(256));
    }

    #[test]
    fn a_template_set_keeps_the_parts_it_can_compare_with_its_golden_part_and_holds_out_anew() {
        let region = || Region {
            class: "short".into(),
            shape: crate::record::Shape::Box {
                x: 4.0,
                y: 4.0,
                width: 8.0,
                height: 6.0,
            },
        };
        // Part 9 was recorded as another product, part 10's image is another size, part 12's
        // image is gone, part 13 passed with a tolerated defect.
        let part = |id: u64, class: &str, regions: usize| TrainingPart {
            part_id: Some(id),
            image: ImageFile::Stored(format!("digest-{id}")),
            class: class.into(),
            regions: (0..regions).map(|_| region()).collect(),
            held_out: false,
            product: Some(if id == 9 { "lid" } else { "board" }.into()),
            tolerated_defect: id == 13,
        };
        let size_of = |p: &TrainingPart| match p.part_id {
            Some(10) => Some((80, 60)),
            Some(12) => None,
            _ => Some((160, 160)),
        };
        let mut parts = vec![
            part(1, "good", 0),
            part(2, "good", 0),
            part(3, "short", 1),
            part(4, "short", 0),
            part(5, "open", 0),
            part(6, "open", 2),
            part(7, "short", 1),
            part(8, "short", 1),
            part(9, "good", 0),
            part(10, "short", 1),
            part(11, "short", 1),
            part(12, "good", 0),
            part(13, "good", 0),
        ];
        // As the records held them out: every fourth of each class.
        let mut hold_out = HoldOut::default();
        for p in &mut parts {
            p.held_out = hold_out.next(&p.class);
        }
        let set = TrainingSet {
            parts_in_period: 13,
            good: 5,
            good_held_out: 0,
            defective: BTreeMap::from([("short".into(), 6), ("open".into(), 2)]),
            left_out: BTreeMap::from([("unlabelled".into(), 3)]),
        };
        let golden = GoldenPart {
            part_id: 2,
            digest: "digest-2".into(),
            size: (160, 160),
            product: Some("board".into()),
        };
        let (kept, set) = for_template(parts, set, &golden, &size_of);
        let ids: Vec<Option<u64>> = kept.iter().map(|p| p.part_id).collect();
        assert_eq!(ids, [Some(1), Some(3), Some(6), Some(7), Some(8), Some(11)]);
        assert_eq!((set.good, set.good_held_out), (1, 0));
        assert_eq!(
            set.defective,
            BTreeMap::from([("short".into(), 4), ("open".into(), 1)])
        );
        let reasons: Vec<(&str, u64)> = (set.left_out.iter())
            .map(|(why, n)| (why.as_str(), *n))
            .collect();
        assert_eq!(
            reasons,
            [
                ("its image no longer kept", 1),
                (
                    "labelled defective without regions (a template model learns from boxes)",
                    2
                ),
                ("of another product than the golden part", 1),
                ("of another size than the golden part's image", 1),
                ("passed with a tolerated defect and not labelled good", 1),
                ("the golden part", 1),
                ("unlabelled", 3),
            ]
        );
        // Held out anew among the parts kept: the fourth short part kept (11), not the fourth
        // short part of the records (8, which trains now).
        let held: Vec<Option<u64>> = (kept.iter())
            .filter(|p| p.held_out)
            .map(|p| p.part_id)
            .collect();
        assert_eq!(held, [Some(11)]);
    }

    #[test]
    fn a_template_set_needs_boxed_defects_but_no_count_of_good_parts() {
        let records = Source::Records {
            from: Utc::now(),
            to: Utc::now(),
            passed_as_good: false,
        };
        let mut set = TrainingSet {
            defective: BTreeMap::from([("short".into(), 7)]),
            ..TrainingSet::default()
        };
        let refusal = enough(Family::Template, &set, &records).expect_err("7 boxed defects");
        assert!(
            refusal.contains("7 defective parts labelled with regions")
                && refusal.contains("labelling page"),
            "{refusal}"
        );
        set.defective.insert("open".into(), 1);
        assert!(enough(Family::Template, &set, &records).is_ok());
        let refusal = enough(Family::Supervised, &set, &records).expect_err("no good parts");
        assert!(refusal.contains("0 good parts"), "{refusal}");
    }

    #[test]
    fn scratch_folders_of_killed_jobs_are_removed_and_models_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        for folder in [".training-3-999/model", "product@abc"] {
            std::fs::create_dir_all(dir.path().join(folder)).expect("mkdir");
        }
        remove_scratch(dir.path());
        assert!(!dir.path().join(".training-3-999").exists());
        assert!(dir.path().join("product@abc").is_dir());
    }

    #[test]
    fn every_fourth_image_of_each_class_is_held_out() {
        let mut hold_out = HoldOut::default();
        let classes = ["good", "scratch", "good", "good", "scratch", "good", "good"];
        let held: Vec<bool> = classes.iter().map(|c| hold_out.next(c)).collect();
        assert_eq!(held, [false, false, false, false, false, true, false]);
        let more: Vec<bool> = (0..3).map(|_| hold_out.next("scratch")).collect();
        assert_eq!(more, [false, true, false]);
    }

    #[test]
    fn names_must_make_folder_names() {
        assert!(check_name("product-b_2").is_ok());
        for bad in ["", "../models", "a b", "ü", &"x".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn too_small_sets_are_refused_with_what_they_lack() {
        let mut set = TrainingSet {
            good: 19,
            good_held_out: 4,
            ..TrainingSet::default()
        };
        let records = |passed_as_good| Source::Records {
            from: Utc::now(),
            to: Utc::now(),
            passed_as_good,
        };
        let refusal = enough(Family::Anomaly, &set, &records(false)).expect_err("19 good parts");
        assert!(refusal.contains("19 good parts"), "{refusal}");
        assert!(refusal.contains("count passed parts as good"), "{refusal}");
        let upload = Source::Upload { set: "lab".into() };
        let refusal = enough(Family::Anomaly, &set, &upload).expect_err("19 good parts");
        assert!(
            refusal.contains("upload more images of good parts"),
            "{refusal}"
        );
        set.good = 20;
        assert!(enough(Family::Anomaly, &set, &records(true)).is_ok());
        set.defective.insert("scratch".into(), 7);
        let refusal = enough(Family::Supervised, &set, &records(true)).expect_err("7 defects");
        assert!(refusal.contains("7 defective parts"), "{refusal}");
        set.defective.insert("dent".into(), 1);
        assert!(enough(Family::Supervised, &set, &records(true)).is_ok());
    }
}
