//! Backtest: a recorded period re-judged by another model, before anyone promotes it.
//!
//! Every inspection record names the calibrated images its verdict was made on (one per
//! camera), stored losslessly as PNG, with the model version, score and threshold. A backtest
//! reads the records decided in a period, gives each stored image to the candidate model as the
//! inspect stage would have (a part is the worst of its cameras' verdicts), and reports every
//! part whose verdict would change, with its image and the candidate's heat map. Replaying a
//! period through the model that decided it gives the recorded scores back: that is what makes
//! the comparison fair, and the integration tests hold it.
//!
//! Nothing is actuated and no record is written; the candidate's heat maps of changed parts
//! are saved to the image store (content-addressed, so a rerun adds nothing) so that the
//! report can show them, but only while they fit the image budget without evicting anything:
//! a backtest never costs the station its evidence. A part that cannot be replayed (never inspected, or its image was
//! not saved or has since been evicted by retention) is counted with the reason, never guessed.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::registry::RunningModel;
use super::taxonomy::Taxonomy;
use crate::part::{GrayImage, Verdict};
use crate::record::{InspectionRecord, RecordError, Store, heat_map_png};

/// At most this many parts in one backtest unless asked otherwise: about an hour of a fast
/// line, a few minutes of CPU.
pub const DEFAULT_MAX_PARTS: usize = 20_000;

/// Why a backtest could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("the period is empty: `from` ({from}) must be before `to` ({to})")]
    EmptyPeriod {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("max_parts must be at least 1")]
    NoParts,
    #[error("the backtest stopped on a bug: {0}")]
    Panicked(String),
    #[error("the backtest was cancelled")]
    Cancelled,
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Which records to replay.
#[derive(Debug, Clone)]
pub struct Period {
    /// Parts decided at or after this time…
    pub from: DateTime<Utc>,
    /// …and before this one.
    pub to: DateTime<Utc>,
    /// Replay at most this many (the oldest first); the report says when there were more.
    pub max_parts: usize,
}

impl Period {
    /// Why it cannot be replayed, if it cannot.
    pub fn check(&self) -> Result<(), BacktestError> {
        if self.from >= self.to {
            return Err(BacktestError::EmptyPeriod {
                from: self.from,
                to: self.to,
            });
        }
        if self.max_parts == 0 {
            return Err(BacktestError::NoParts);
        }
        Ok(())
    }
}

/// What a recorded verdict was, or what the candidate's would be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub verdict: Verdict,
    pub score: Option<f32>,
    /// `None` for a recorded verdict whose record kept no threshold.
    pub threshold: Option<f32>,
    pub model_version: String,
    pub defect_class: Option<String>,
}

/// One part whose verdict the candidate would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictChange {
    pub part_id: u64,
    pub decided_at: DateTime<Utc>,
    pub work_order: Option<String>,
    pub recorded: Judged,
    pub candidate: Judged,
    /// The camera whose image decided the candidate's verdict (with several cameras).
    pub camera: Option<String>,
    /// Digest of that calibrated image (`/api/v1/images/{digest}`).
    pub image: Option<String>,
    /// Digest of the candidate's heat map of it, on its threshold's scale; `None` when the
    /// candidate gave an error, or the map did not fit the image budget without evicting a
    /// recorded image.
    pub candidate_heat_map: Option<String>,
    /// Why the candidate could not judge it, for an `error` verdict.
    pub candidate_error: Option<String>,
}

/// Counts of verdicts, recorded → candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transitions {
    pub pass_to_fail: u64,
    pub fail_to_pass: u64,
    /// To or from `error` (the candidate failed where the recorded model did not, or the
    /// reverse).
    pub involving_error: u64,
}

/// The outcome of a backtest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The candidate, with the threshold it was run at and its kind.
    pub model_version: String,
    pub model_kind: String,
    pub threshold: f32,
    /// Inspection records decided in the period (before `max_parts`).
    pub parts_in_period: u64,
    /// Whether more parts than `max_parts` were decided in the period: then only the oldest
    /// `max_parts` were replayed, up to `replayed_until`.
    pub truncated: bool,
    pub replayed_until: Option<DateTime<Utc>>,
    /// Parts the candidate judged.
    pub replayed: u64,
    /// Parts that could not be replayed, by reason.
    pub not_replayable: BTreeMap<String, u64>,
    /// Replayed parts whose verdict would stay the same.
    pub agreed: u64,
    pub changed: Transitions,
    /// Which versions decided the replayed parts, and how many each.
    pub recorded_models: BTreeMap<String, u64>,
    /// Every changed part, oldest first.
    pub changes: Vec<VerdictChange>,
    /// Time from the first to the last replayed part's decision, and the backtest's own run
    /// time: the ratio is how much faster than real time it ran.
    pub recorded_span_s: f64,
    pub took_s: f64,
    pub faster_than_real_time: Option<f64>,
}

/// Replays `period`'s records from `store` through `candidate`, its defects rejecting or not
/// as `taxonomy` says. `progress(done, total)` is called after each part; a `Break` from it
/// stops the run with [`BacktestError::Cancelled`].
pub fn backtest(
    store: &Store,
    candidate: &RunningModel,
    taxonomy: &Taxonomy,
    period: &Period,
    progress: &dyn Fn(u64, u64) -> ControlFlow<()>,
) -> Result<BacktestReport, BacktestError> {
    period.check()?;
    let started = Instant::now();
    let (records, parts_in_period) = records_in(store, period)?;
    let truncated = parts_in_period > records.len() as u64;

    let mut report = BacktestReport {
        from: period.from,
        to: period.to,
        model_version: candidate.version.to_string(),
        model_kind: candidate.detector.head().kind.clone(),
        threshold: candidate.threshold,
        parts_in_period,
        truncated,
        replayed_until: truncated
            .then(|| records.last().map(|r| r.decided_at))
            .flatten(),
        replayed: 0,
        not_replayable: BTreeMap::new(),
        agreed: 0,
        changed: Transitions::default(),
        recorded_models: BTreeMap::new(),
        changes: Vec::new(),
        recorded_span_s: 0.0,
        took_s: 0.0,
        faster_than_real_time: None,
    };
    let (mut first, mut last) = (None, None);
    let total = records.len() as u64;
    if progress(0, total).is_break() {
        return Err(BacktestError::Cancelled);
    }
    for (done, record) in records.iter().enumerate() {
        match replay(store, candidate, taxonomy, record) {
            Err(reason) => *report.not_replayable.entry(reason).or_default() += 1,
            Ok((recorded, replayed)) => {
                report.replayed += 1;
                first.get_or_insert(record.decided_at);
                last = Some(record.decided_at);
                *report
                    .recorded_models
                    .entry(recorded.model_version.clone())
                    .or_default() += 1;
                if recorded.verdict == replayed.judged.verdict {
                    report.agreed += 1;
                } else {
                    match (recorded.verdict, replayed.judged.verdict) {
                        (Verdict::Pass, Verdict::Fail) => report.changed.pass_to_fail += 1,
                        (Verdict::Fail, Verdict::Pass) => report.changed.fail_to_pass += 1,
                        _ => report.changed.involving_error += 1,
                    }
                    let candidate_heat_map = replayed
                        .heat_map
                        .as_ref()
                        .and_then(|png| store.save_image_within_budget(png).ok().flatten());
                    report.changes.push(VerdictChange {
                        part_id: record.part_id,
                        decided_at: record.decided_at,
                        work_order: record.work_order.clone(),
                        recorded,
                        candidate: replayed.judged,
                        camera: replayed.camera,
                        image: replayed.image,
                        candidate_heat_map,
                        candidate_error: replayed.error,
                    });
                }
            }
        }
        if progress(done as u64 + 1, total).is_break() {
            return Err(BacktestError::Cancelled);
        }
    }
    if let (Some(first), Some(last)) = (first, last) {
        report.recorded_span_s = (last - first).as_seconds_f64().max(0.0);
    }
    report.took_s = started.elapsed().as_secs_f64();
    report.faster_than_real_time = (report.took_s > 0.0 && report.recorded_span_s > 0.0)
        .then(|| report.recorded_span_s / report.took_s);
    Ok(report)
}

/// The oldest `max_parts` inspection records decided in the period, oldest part first, and
/// how many the period holds in all. Records are read newest first, only the oldest
/// `max_parts` kept (a long period costs time, not memory), and the walk stops at the first
/// page wholly before `from` (part ids follow time).
fn records_in(store: &Store, period: &Period) -> Result<(Vec<InspectionRecord>, u64), RecordError> {
    let mut kept = std::collections::VecDeque::new();
    let mut in_period = 0;
    store.for_each_inspection_decided((period.from, period.to), |record| {
        in_period += 1;
        kept.push_back(record);
        if kept.len() > period.max_parts {
            kept.pop_front();
        }
        Ok::<_, RecordError>(())
    })?;
    let mut oldest_first: Vec<_> = kept.into();
    oldest_first.reverse();
    Ok((oldest_first, in_period))
}

/// What the candidate made of one part.
struct Replayed {
    judged: Judged,
    camera: Option<String>,
    image: Option<String>,
    heat_map: Option<Vec<u8>>,
    error: Option<String>,
}

/// One image of a part: its camera (with several) and its digest.
struct Look<'a> {
    camera: Option<&'a str>,
    image: Option<&'a str>,
}

/// Re-judges one record's images; `Err` says why it cannot be replayed.
fn replay(
    store: &Store,
    candidate: &RunningModel,
    taxonomy: &Taxonomy,
    record: &InspectionRecord,
) -> Result<(Judged, Replayed), String> {
    let verdict = record
        .verdict
        .ok_or_else(|| "not inspected (no verdict recorded)".to_owned())?;
    let recorded = Judged {
        verdict,
        score: record.score,
        threshold: record.threshold,
        model_version: record
            .model_version
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        defect_class: record.defect_class.clone(),
    };
    let looks: Vec<Look> = if record.views.is_empty() {
        vec![Look {
            camera: None,
            image: record.image.as_deref(),
        }]
    } else {
        record
            .views
            .iter()
            .map(|v| Look {
                camera: Some(v.camera.as_str()),
                image: v.image.as_deref(),
            })
            .collect()
    };
    // Every image is read before any is judged: a part missing one is not replayable, rather
    // than judged on the cameras it has left.
    let mut images = Vec::with_capacity(looks.len());
    for look in &looks {
        let camera = look
            .camera
            .map(|c| format!(" of camera `{c}`"))
            .unwrap_or_default();
        let digest = look
            .image
            .ok_or_else(|| format!("no image{camera} was stored"))?;
        images.push(load_image(store, digest).map_err(|why| format!("the image{camera} {why}"))?);
    }
    let mut deciding: Option<Replayed> = None;
    for (look, image) in looks.iter().zip(&images) {
        let judged = judge(candidate, taxonomy, image);
        let better = deciding
            .as_ref()
            .is_none_or(|d| judged.judged.verdict.severity() > d.judged.verdict.severity());
        if better {
            deciding = Some(Replayed {
                camera: look.camera.map(str::to_owned),
                image: look.image.map(str::to_owned),
                ..judged
            });
        }
    }
    deciding
        .map(|replayed| (recorded, replayed))
        .ok_or_else(|| "no image to replay".to_owned())
}

/// Reads a stored calibrated image; the error completes "the image …".
fn load_image(store: &Store, digest: &str) -> Result<GrayImage, String> {
    let path = store
        .images()
        .path(digest)
        .ok_or_else(|| "is no longer stored (evicted by retention or removed)".to_owned())?;
    let decoded = image::open(&path)
        .map_err(|e| format!("cannot be read: {e}"))?
        .into_luma8();
    let (width, height) = decoded.dimensions();
    GrayImage::new(width, height, decoded.into_raw())
        .ok_or_else(|| "has a size that does not match its pixels".to_owned())
}

/// The candidate's verdict on one image, as the inspect stage gives it.
fn judge(candidate: &RunningModel, taxonomy: &Taxonomy, image: &GrayImage) -> Replayed {
    let base = |verdict, score, defect_class, error| Replayed {
        judged: Judged {
            verdict,
            score,
            threshold: Some(candidate.threshold),
            model_version: candidate.version.to_string(),
            defect_class,
        },
        camera: None,
        image: None,
        heat_map: None,
        error,
    };
    if let Some(size) = candidate.detector.input_size()
        && size != (image.width, image.height)
    {
        let why = format!(
            "the model takes {size:?} images, the recorded image is {:?}",
            (image.width, image.height)
        );
        return base(Verdict::Error, None, None, Some(why));
    }
    match candidate
        .detector
        .judge_tolerating(image, &taxonomy.tolerated())
    {
        Ok(judgement) => {
            let (verdict, defect_class) = taxonomy.verdict(candidate.threshold, &judgement);
            let heat_map =
                heat_map_png(&judgement.heat_map.on_threshold_scale(candidate.threshold)).ok();
            Replayed {
                heat_map,
                ..base(verdict, Some(judgement.score), defect_class, None)
            }
        }
        Err(error) => base(Verdict::Error, None, None, Some(error.to_string())),
    }
}

/// A backtest running or run in the station, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestJob {
    pub id: u64,
    pub model_version: String,
    pub threshold: f32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub state: JobState,
    /// Parts replayed so far, of `total` (both 0 until the period's records are read).
    pub done: u64,
    pub total: u64,
    /// With `state` `done`.
    pub report: Option<BacktestReport>,
    /// With `state` `failed`: why.
    pub error: Option<String>,
    /// Whether it has been asked to stop (it does after the part it is replaying).
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Failed,
    /// Stopped by whoever asked for it.
    Cancelled,
}

/// How many finished backtests the station keeps to show (the newest).
pub const KEEP_JOBS: usize = 16;

/// The station's backtests: one runs at a time, on a thread of its own at low priority with a
/// one-thread compute pool, so it can take at most one core from the live model (as the
/// shadow). Reports live in memory: a backtest changes nothing, and is rerun after a restart.
#[derive(Debug, Default)]
pub struct BacktestJobs {
    jobs: std::sync::Mutex<std::collections::VecDeque<BacktestJob>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Why a backtest could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no backtest {0} (the newest {KEEP_JOBS} are kept until a restart)")]
    Unknown(u64),
    #[error("backtest {id} is not running: it is {state:?}")]
    NotRunning { id: u64, state: JobState },
}

/// Why a backtest was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("backtest {0} is still running; one runs at a time")]
    Busy(u64),
    #[error(transparent)]
    Backtest(#[from] BacktestError),
    #[error("cannot start the backtest thread: {0}")]
    Thread(std::io::Error),
}

impl BacktestJobs {
    /// The backtests kept, newest first.
    pub fn list(&self) -> Vec<BacktestJob> {
        self.lock().iter().rev().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<BacktestJob> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }

    /// Why a backtest of `period` would be refused now (one is running, or the period is
    /// empty): checked before the candidate is loaded, which costs far more.
    pub fn refusal(&self, period: &Period) -> Result<(), StartError> {
        period.check()?;
        match self.lock().iter().find(|j| j.state == JobState::Running) {
            Some(running) => Err(StartError::Busy(running.id)),
            None => Ok(()),
        }
    }

    /// Starts replaying `period` through `candidate`; returns the job as it starts.
    pub fn start(
        self: &std::sync::Arc<Self>,
        store: Store,
        candidate: RunningModel,
        taxonomy: Arc<Taxonomy>,
        period: Period,
        requested_by: String,
    ) -> Result<BacktestJob, StartError> {
        period.check()?;
        let job = {
            let mut jobs = self.lock();
            if let Some(running) = jobs.iter().find(|j| j.state == JobState::Running) {
                return Err(StartError::Busy(running.id));
            }
            let job = BacktestJob {
                id: self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1,
                model_version: candidate.version.to_string(),
                threshold: candidate.threshold,
                from: period.from,
                to: period.to,
                requested_by,
                started_at: Utc::now(),
                finished_at: None,
                state: JobState::Running,
                done: 0,
                total: 0,
                report: None,
                error: None,
                cancel_requested: false,
            };
            jobs.push_back(job.clone());
            while jobs.len() > KEEP_JOBS {
                jobs.pop_front();
            }
            job
        };
        let jobs = self.clone();
        let id = job.id;
        let spawned = std::thread::Builder::new()
            .name("backtest".into())
            .spawn(move || {
                lower_priority();
                // Progress goes out and a cancel comes back through the job's own entry.
                let progress = |done, total| {
                    let mut cancelled = false;
                    jobs.update(id, |job| {
                        job.done = done;
                        job.total = total;
                        cancelled = job.cancel_requested;
                    });
                    if cancelled {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                let run = || backtest(&store, &candidate, &taxonomy, &period, &progress);
                // A panic (a model bug, a corrupt image) fails this backtest, not the next:
                // a job left `running` would refuse every later one.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    match rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(|_| "backtest-worker".into())
                        .build()
                    {
                        Ok(pool) => pool.install(run),
                        Err(_) => run(),
                    }
                }))
                .unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(BacktestError::Panicked(why))
                });
                jobs.update(id, |job| {
                    job.finished_at = Some(Utc::now());
                    match outcome {
                        Ok(report) => {
                            tracing::info!(
                                id, version = %report.model_version, replayed = report.replayed,
                                changed = report.changes.len(), "backtest done"
                            );
                            job.state = JobState::Done;
                            job.report = Some(report);
                        }
                        Err(BacktestError::Cancelled) => {
                            tracing::info!(id, "backtest cancelled");
                            job.state = JobState::Cancelled;
                        }
                        Err(error) => {
                            tracing::warn!(id, %error, "backtest failed");
                            job.state = JobState::Failed;
                            job.error = Some(error.to_string());
                        }
                    }
                });
            });
        if let Err(error) = spawned {
            self.update(id, |job| {
                job.state = JobState::Failed;
                job.error = Some(format!("cannot start: {error}"));
            });
            return Err(StartError::Thread(error));
        }
        Ok(job)
    }

    /// Asks running backtest `id` to stop after the part it is replaying; it ends
    /// [`JobState::Cancelled`], with no report. The job as it is now.
    pub fn cancel(&self, id: u64) -> Result<BacktestJob, CancelError> {
        let mut jobs = self.lock();
        let job = running(&mut jobs, id)?;
        job.cancel_requested = true;
        Ok(job.clone())
    }

    /// Why backtest `id` cannot be cancelled now (unknown, or no longer running), if it
    /// cannot: asked before a cancel is recorded.
    pub fn cancel_refusal(&self, id: u64) -> Result<(), CancelError> {
        running(&mut self.lock(), id).map(|_| ())
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut BacktestJob)) {
        if let Some(job) = self.lock().iter_mut().find(|j| j.id == id) {
            change(job);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<BacktestJob>> {
        match self.jobs.lock() {
            Ok(jobs) => jobs,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Backtest `id` of `jobs`, if it is running.
fn running(
    jobs: &mut std::collections::VecDeque<BacktestJob>,
    id: u64,
) -> Result<&mut BacktestJob, CancelError> {
    let job = (jobs.iter_mut())
        .find(|j| j.id == id)
        .ok_or(CancelError::Unknown(id))?;
    if job.state != JobState::Running {
        return Err(CancelError::NotRunning {
            id,
            state: job.state,
        });
    }
    Ok(job)
}

/// Asks the scheduler to run this thread after the live work (nice 10); harmless if refused.
pub(super) fn lower_priority() {
    // SAFETY: setpriority with `who` 0 changes only the calling thread on Linux; no memory
    // is passed.
    let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0;
    if refused {
        tracing::debug!("a background thread keeps its priority");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::models::card::CardHead;
    use crate::models::{Detector, ModelError};
    use crate::part::{Disposition, HeatMap};
    use crate::record::{ActuationStatus, RecordBody, ViewRecord, gray_png};

    /// Scores an image by its mean brightness (0..1); judging waits while `hold` is locked.
    #[derive(Debug)]
    struct Brightness {
        head: CardHead,
        hold: Arc<Mutex<()>>,
    }

    impl Detector for Brightness {
        fn head(&self) -> &CardHead {
            &self.head
        }
        fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
            let _wait = self.hold.lock();
            let mean = image.pixels.iter().map(|&p| f32::from(p)).sum::<f32>()
                / image.pixels.len() as f32
                / 255.0;
            Ok((
                mean,
                HeatMap {
                    width: 2,
                    height: 2,
                    values: vec![mean; 4],
                },
            ))
        }
    }

    fn candidate(threshold: f32, hold: Arc<Mutex<()>>) -> RunningModel {
        let head = CardHead {
            name: "bright".into(),
            version: "bright@1".into(),
            kind: "defect-net".into(),
            architecture: "mean brightness".into(),
            threshold,
            threshold_rule: "test".into(),
            threshold_guarantee: None,
            drift: None,
        };
        RunningModel::new(Box::new(Brightness { head, hold }), threshold)
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + seconds, 0).expect("time")
    }

    /// An image of one grey level, stored; its digest.
    fn stored_image(store: &Store, level: u8) -> String {
        let image = GrayImage::new(4, 4, vec![level; 16]).expect("image");
        store
            .save_image(&gray_png(&image).expect("png"))
            .expect("saved")
    }

    fn record(part_id: u64, decided: i64, verdict: Option<Verdict>) -> InspectionRecord {
        InspectionRecord {
            part_id,
            work_order: Some("WO-7".into()),
            product: None,
            captured_at: at(decided),
            inspected_at: Some(at(decided)),
            decided_at: at(decided),
            gate_at: at(decided),
            actuated_at: None,
            verdict,
            score: Some(0.1),
            threshold: Some(0.6),
            disposition: Disposition::Pass,
            rejected_by_policy: false,
            inspection_late: false,
            actuation: ActuationStatus::NotRequired,
            actuation_error: None,
            model_version: Some("live@1".into()),
            defect_class: None,
            image: None,
            heat_map: None,
            error: None,
            defect_at: None,
            defect_size: None,
            defect_boxes: Vec::new(),
            views: Vec::new(),
            calibration: None,
            novelty: None,
        }
    }

    /// Parts 1–6 decided a second apart: bright (0.78) and dark (0.2) images, one part seen by
    /// two cameras whose side image is bright, one without an image, one never inspected; and
    /// part 6 outside the period.
    async fn line(store: &Store) {
        let bright = stored_image(store, 200);
        let dark = stored_image(store, 51);
        let mut records = vec![
            InspectionRecord {
                image: Some(bright.clone()),
                ..record(1, 0, Some(Verdict::Pass))
            },
            InspectionRecord {
                image: Some(dark.clone()),
                ..record(2, 1, Some(Verdict::Pass))
            },
            InspectionRecord {
                image: Some(dark.clone()),
                ..record(3, 2, Some(Verdict::Pass))
            },
            record(4, 3, Some(Verdict::Pass)),
            record(5, 4, None),
            InspectionRecord {
                image: Some(bright.clone()),
                ..record(6, 60, Some(Verdict::Pass))
            },
        ];
        let view = |camera: &str, image: &str| ViewRecord {
            camera: camera.into(),
            verdict: Verdict::Pass,
            score: Some(0.1),
            defect_class: None,
            image: Some(image.into()),
            heat_map: None,
            error: None,
            defect_at: None,
            defect_size: None,
            defect_boxes: Vec::new(),
            calibration: None,
        };
        records[2].views = vec![view("top", &dark), view("side", &bright)];
        for record in records {
            store
                .append(RecordBody::Inspection(record))
                .await
                .expect("append");
        }
    }

    fn period() -> Period {
        Period {
            from: at(0),
            to: at(30),
            max_parts: 100,
        }
    }

    #[tokio::test]
    async fn replays_the_period_and_names_what_changes_and_what_could_not_be_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        line(&store).await;
        let model = candidate(0.5, Arc::default());
        let seen = Mutex::new(Vec::new());
        let report = backtest(
            &store,
            &model,
            &Taxonomy::default(),
            &period(),
            &|done, total| {
                seen.lock().expect("lock").push((done, total));
                ControlFlow::Continue(())
            },
        )
        .expect("runs");

        assert_eq!(report.parts_in_period, 5);
        assert!(!report.truncated);
        assert_eq!(report.replayed, 3);
        assert_eq!(report.agreed, 1);
        assert_eq!(report.changed.pass_to_fail, 2);
        assert_eq!(report.recorded_models.get("live@1"), Some(&3));
        let changed: Vec<u64> = report.changes.iter().map(|c| c.part_id).collect();
        assert_eq!(changed, [1, 3]);
        // Part 3 fails on its side camera, which the change names.
        let side = &report.changes[1];
        assert_eq!(side.camera.as_deref(), Some("side"));
        assert_eq!(side.candidate.verdict, Verdict::Fail);
        assert!((side.candidate.score.expect("score") - 200.0 / 255.0).abs() < 1e-6);
        assert_eq!(side.recorded.threshold, Some(0.6));
        assert_eq!(side.work_order.as_deref(), Some("WO-7"));
        let heat_map = side.candidate_heat_map.as_deref().expect("heat map saved");
        assert!(store.images().path(heat_map).is_some());
        assert_eq!(
            report.not_replayable,
            BTreeMap::from([
                ("no image was stored".to_owned(), 1),
                ("not inspected (no verdict recorded)".to_owned(), 1),
            ])
        );
        assert_eq!(report.recorded_span_s, 2.0);
        assert_eq!(
            *seen.lock().expect("lock"),
            [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
        );

        // With the image budget full, the candidate's heat maps are not saved rather than
        // evict a recorded image.
        let full = store.image_bytes().expect("bytes");
        store.set_image_budget(Some(full));
        let stricter = candidate(0.4, Arc::default());
        let report = backtest(
            &store,
            &stricter,
            &Taxonomy::default(),
            &period(),
            &|_, _| ControlFlow::Continue(()),
        )
        .expect("runs");
        assert_eq!(report.changes.len(), 2);
        assert!(
            report
                .changes
                .iter()
                .all(|c| c.candidate_heat_map.is_none())
        );
        assert_eq!(store.images_evicted(), 0);
        assert_eq!(store.image_bytes().expect("bytes"), full);
        store.set_image_budget(None);

        // At most two parts: the oldest two, and the report says so.
        let two = backtest(
            &store,
            &model,
            &Taxonomy::default(),
            &Period {
                max_parts: 2,
                ..period()
            },
            &|_, _| ControlFlow::Continue(()),
        )
        .expect("runs");
        assert!(two.truncated);
        assert_eq!(two.replayed_until, Some(at(1)));
        assert_eq!(two.replayed, 2);

        // An empty period is refused.
        let empty = Period {
            from: at(5),
            to: at(5),
            max_parts: 1,
        };
        assert!(matches!(
            backtest(&store, &model, &Taxonomy::default(), &empty, &|_, _| {
                ControlFlow::Continue(())
            }),
            Err(BacktestError::EmptyPeriod { .. })
        ));
    }

    /// Backtest `id` once it is no longer running (within 30 s).
    async fn finished(jobs: &BacktestJobs, id: u64) -> BacktestJob {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let job = jobs.get(id).expect("kept");
            if job.state != JobState::Running {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "still running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_backtest_runs_at_a_time_and_its_report_follows_the_api_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        line(&store).await;
        let jobs = Arc::new(BacktestJobs::default());
        let hold = Arc::new(Mutex::new(()));
        // A backtest of the line's period by a candidate that waits on `hold` for each part.
        let start = || {
            jobs.start(
                store.clone(),
                candidate(0.5, hold.clone()),
                Arc::default(),
                period(),
                "eng".into(),
            )
        };
        let held = hold.lock().expect("lock");
        let first = start().expect("starts");
        assert_eq!(first.state, JobState::Running);
        let refused = start();
        assert!(matches!(refused, Err(StartError::Busy(id)) if id == first.id));
        drop(held);
        let done = finished(&jobs, first.id).await;
        assert_eq!(done.state, JobState::Done);
        assert_eq!((done.done, done.total), (5, 5));
        let report = done.report.as_ref().expect("report");
        assert_eq!(report.changes.len(), 2);

        use crate::serve::openapi_check::{schema_fields, served_fields};
        let served = serde_json::to_value(&done).expect("json");
        assert_eq!(served_fields(&served), schema_fields("BacktestJob"));
        assert_eq!(
            served_fields(&served["report"]),
            schema_fields("BacktestReport")
        );
        let change = &served["report"]["changes"][0];
        assert_eq!(served_fields(change), schema_fields("VerdictChange"));
        assert_eq!(
            served_fields(&change["recorded"]),
            schema_fields("BacktestJudged")
        );
        // The report reads back as the command line reads it from a station.
        let back: BacktestReport =
            serde_json::from_value(served["report"].clone()).expect("reads back");
        assert_eq!(back.changes, report.changes);

        // A backtest cancelled while it replays its first part stops after it, with no
        // report; a finished or unknown one cannot be cancelled.
        let held = hold.lock().expect("lock");
        let second = start().expect("starts");
        let asked = jobs.cancel(second.id).expect("running");
        assert!(asked.cancel_requested);
        drop(held);
        let stopped = finished(&jobs, second.id).await;
        assert_eq!(stopped.state, JobState::Cancelled);
        assert!(stopped.report.is_none() && stopped.error.is_none());
        assert!(stopped.done < 5, "stopped before the end: {stopped:?}");
        assert!(matches!(
            jobs.cancel(second.id),
            Err(CancelError::NotRunning {
                state: JobState::Cancelled,
                ..
            })
        ));
        assert!(matches!(jobs.cancel(999), Err(CancelError::Unknown(999))));
    }
}
