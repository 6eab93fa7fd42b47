//! Changing the model a running station uses: promote a version, roll back, run a candidate in
//! shadow. One change at a time, each recorded durably before it is acknowledged.
//!
//! The new model is loaded on a blocking thread while the old one keeps inspecting; only then
//! is it swapped into [`ActiveModels`], so no frame waits for a load and none is dropped for
//! one. A version that cannot run at this station (unknown, broken weights, wrong input size)
//! is refused and the live model stays. Promotions and rollbacks form a stack: a rollback
//! returns to the version live before the last promotion still in effect. After a restart the
//! station runs the version its events say was live last, with the shadow it had.
//!
//! The shadow model sees the same calibrated frames on its own thread ([`run_shadow`]), fed by
//! a short queue the inspect thread never waits on: a busy shadow skips frames (counted). It
//! computes on a one-thread pool of its own, so it can take at most one core from the live
//! model. Its verdicts are kept beside the records, never actuated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use chrono::Utc;
use serde::Serialize;

use crate::inspect::backtest::{BacktestJob, BacktestJobs, CancelError, Period, StartError};
use crate::inspect::registry::{ActiveModels, Registry, RegistryError, RunningModel, ShadowJob};
use crate::inspect::taxonomy::{Taxonomy, TaxonomyError};
use crate::inspect::training::uploads::Uploads;
use crate::inspect::training::{TrainingError, TrainingJob, TrainingJobs, TrainingRequest};
use crate::metrics::Metrics;
use crate::part::{GrayImage, Verdict};
use crate::record::{
    AuditRecord, LabelRecord, ModelAction, ModelEvent, Record, RecordBody, RecordError,
    ShadowSummary, ShadowVerdict, Store,
};

/// Why a model change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("model {version} takes {model:?} images but this station's frames are {station:?}")]
    InputSize {
        version: String,
        model: (u32, u32),
        station: (u32, u32),
    },
    #[error("no earlier version to roll back to")]
    NothingToRollBack,
    #[error("{0} is already live")]
    AlreadyLive(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("threshold: {0}")]
    Threshold(String),
    #[error(transparent)]
    Backtest(#[from] StartError),
    #[error(transparent)]
    BacktestCancel(#[from] CancelError),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error("loading the model was interrupted: {0}")]
    Join(String),
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
}

/// What runs now.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub live: RunningView,
    pub shadow: Option<RunningView>,
}

/// One running model, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunningView {
    pub version: String,
    pub kind: String,
    pub threshold: f32,
}

impl RunningView {
    fn of(model: &RunningModel) -> RunningView {
        RunningView {
            version: model.version.to_string(),
            kind: model.detector.head().kind.clone(),
            threshold: model.threshold,
        }
    }
}

/// The station's model control plane.
pub struct ModelControl {
    registry: Registry,
    active: Arc<ActiveModels>,
    store: Store,
    /// Frame size after calibration: models with a fixed input must match it.
    frame_size: (u32, u32),
    /// The station config's threshold override and the version it belongs to: it applies
    /// whenever that version is live, not only at start.
    threshold_override: Option<(String, f32)>,
    /// One change at a time, so the recorded order is the order they took effect.
    changing: tokio::sync::Mutex<()>,
    /// Candidates replayed over recorded periods.
    backtests: Arc<BacktestJobs>,
    /// Models trained from the station's records.
    training: Arc<TrainingJobs>,
    /// Where an engineer's defect classes are kept; `None`: changes last until the restart.
    taxonomy_dir: Option<std::path::PathBuf>,
}

impl ModelControl {
    pub fn new(
        registry: Registry,
        active: Arc<ActiveModels>,
        store: Store,
        frame_size: (u32, u32),
        threshold_override: Option<(String, f32)>,
    ) -> ModelControl {
        ModelControl {
            registry,
            active,
            store,
            frame_size,
            threshold_override,
            changing: tokio::sync::Mutex::new(()),
            backtests: Arc::default(),
            training: Arc::default(),
            taxonomy_dir: None,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn active(&self) -> &Arc<ActiveModels> {
        &self.active
    }

    pub fn status(&self) -> ModelStatus {
        ModelStatus {
            live: RunningView::of(&self.active.live()),
            shadow: self.active.shadow().map(|m| RunningView::of(&m)),
        }
    }

    /// Every recorded change, oldest first.
    pub fn events(&self) -> Result<Vec<ModelEvent>, RecordError> {
        self.store.model_events()
    }

    /// How the shadow model compares with the live one so far; `None` without a shadow.
    pub fn shadow_summary(&self) -> Result<Option<ShadowSummary>, RecordError> {
        self.active
            .shadow()
            .map(|shadow| self.store.shadow_summary(&shadow.version))
            .transpose()
    }

    /// Makes `version` live.
    pub async fn promote(
        &self,
        version: &str,
        audit: Option<AuditRecord>,
    ) -> Result<ModelEvent, ControlError> {
        let _one = self.changing.lock().await;
        if &*self.active.live().version == version {
            return Err(ControlError::AlreadyLive(version.into()));
        }
        self.make_live(version, ModelAction::Promote, audit).await
    }

    /// Returns to the version that was live before the last promotion still in effect.
    pub async fn rollback(&self, audit: Option<AuditRecord>) -> Result<ModelEvent, ControlError> {
        let _one = self.changing.lock().await;
        let target = rollback_stack(&self.store.model_events()?)
            .pop()
            .ok_or(ControlError::NothingToRollBack)?;
        if *self.active.live().version == target {
            return Err(ControlError::AlreadyLive(target));
        }
        self.make_live(&target, ModelAction::Rollback, audit).await
    }

    /// Runs `version` in shadow, or stops the shadow with `None`.
    pub async fn set_shadow(
        &self,
        version: Option<&str>,
        audit: Option<AuditRecord>,
    ) -> Result<ModelEvent, ControlError> {
        let _one = self.changing.lock().await;
        let previous = self.active.shadow().map(|m| m.version.to_string());
        let model = match version {
            Some(version) => Some(self.load(version).await?),
            None => None,
        };
        let event = ModelEvent {
            at: Utc::now(),
            action: if model.is_some() {
                ModelAction::ShadowStart
            } else {
                ModelAction::ShadowStop
            },
            version: version.map(str::to_owned),
            previous,
        };
        self.record(&event, audit).await?;
        self.active.set_shadow(model);
        tracing::info!(?event, "shadow model changed");
        Ok(event)
    }

    /// At start: runs what the recorded events say ran last, when it still loads, and clears
    /// the scratch folders of training jobs a crash interrupted.
    pub async fn restore(&self) -> Result<(), ControlError> {
        crate::inspect::training::remove_scratch(self.registry.root());
        let events = self.store.model_events()?;
        let live = events
            .iter()
            .rev()
            .find(|e| matches!(e.action, ModelAction::Promote | ModelAction::Rollback))
            .and_then(|e| e.version.clone());
        if let Some(version) = live
            && version != *self.active.live().version
        {
            match self.load(&version).await {
                Ok(model) => {
                    self.active.set_live(model);
                    tracing::info!(%version, "running the last promoted model");
                }
                Err(error) => tracing::error!(
                    %version, %error,
                    "the last promoted model does not load; running the configured one"
                ),
            }
        }
        let shadow = events
            .iter()
            .rev()
            .find(|e| matches!(e.action, ModelAction::ShadowStart | ModelAction::ShadowStop))
            .and_then(|e| e.version.clone());
        if let Some(version) = shadow {
            match self.load(&version).await {
                Ok(model) => self.active.set_shadow(Some(model)),
                Err(error) => tracing::error!(%version, %error, "the shadow model does not load"),
            }
        }
        Ok(())
    }

    async fn make_live(
        &self,
        version: &str,
        action: ModelAction,
        audit: Option<AuditRecord>,
    ) -> Result<ModelEvent, ControlError> {
        let model = self.load(version).await?;
        let event = ModelEvent {
            at: Utc::now(),
            action,
            version: Some(version.to_owned()),
            previous: Some(self.active.live().version.to_string()),
        };
        // Recorded first: a change that is not on disk has not happened.
        self.record(&event, audit).await?;
        self.active.set_live(model);
        tracing::info!(?event, "live model changed");
        Ok(event)
    }

    /// Records a change, with who made it when known, in one durable write.
    async fn record(
        &self,
        event: &ModelEvent,
        audit: Option<AuditRecord>,
    ) -> Result<(), RecordError> {
        let mut bodies = vec![RecordBody::ModelChange(event.clone())];
        bodies.extend(audit.map(RecordBody::Audit));
        self.store.append_all(bodies).await?;
        Ok(())
    }

    /// Starts replaying `period`'s records through `version` (at `threshold`, else the
    /// threshold it would go live with); see [`crate::inspect::backtest`]. A backtest that can
    /// start is recorded in the audit log (`audit`, who asked) before it starts.
    pub async fn start_backtest(
        &self,
        version: &str,
        threshold: Option<f32>,
        period: Period,
        audit: AuditRecord,
    ) -> Result<BacktestJob, ControlError> {
        self.backtests.refusal(&period)?;
        let candidate = self.candidate(version, threshold).await?;
        let requested_by = audit.actor.clone();
        self.store.append(RecordBody::Audit(audit)).await?;
        Ok(self.backtests.start(
            self.store.clone(),
            candidate,
            self.active.taxonomy(),
            period,
            requested_by,
        )?)
    }

    /// Asks backtest `id` to stop, recorded with who asked (the audit entry first).
    pub async fn cancel_backtest(
        &self,
        id: u64,
        audit: AuditRecord,
    ) -> Result<BacktestJob, ControlError> {
        // Refused before it is recorded: an unknown or finished backtest changes nothing.
        self.backtests.cancel_refusal(id)?;
        self.store.append(RecordBody::Audit(audit)).await?;
        Ok(self.backtests.cancel(id)?)
    }

    /// The station's backtests, running and finished.
    pub fn backtests(&self) -> &BacktestJobs {
        &self.backtests
    }

    /// Starts training a model from the station's records; see [`crate::inspect::training`].
    /// A request that can start is recorded in the audit log (when `audit` names who asked)
    /// before the job starts.
    pub async fn start_training(
        &self,
        request: TrainingRequest,
        audit: Option<AuditRecord>,
    ) -> Result<TrainingJob, ControlError> {
        // Both read the records (a template model's golden part, its image's header): off the
        // async workers.
        let (training, store, asked) = (self.training.clone(), self.store.clone(), request.clone());
        tokio::task::spawn_blocking(move || training.refusal(&store, &asked))
            .await
            .map_err(|e| ControlError::Join(e.to_string()))??;
        if let Some(audit) = audit {
            self.store
                .append_all(vec![RecordBody::Audit(audit)])
                .await?;
        }
        let (training, store, registry) = (
            self.training.clone(),
            self.store.clone(),
            self.registry.clone(),
        );
        Ok(
            tokio::task::spawn_blocking(move || training.start(store, registry, request))
                .await
                .map_err(|e| ControlError::Join(e.to_string()))??,
        )
    }

    /// Asks training job `id` to stop, recorded with who asked (the audit entry first).
    pub async fn cancel_training(
        &self,
        id: u64,
        audit: Option<AuditRecord>,
    ) -> Result<TrainingJob, ControlError> {
        // Refused before it is recorded: an unknown or finished job changes nothing.
        self.training.cancel_refusal(id)?;
        if let Some(audit) = audit {
            self.store
                .append_all(vec![RecordBody::Audit(audit)])
                .await?;
        }
        Ok(self.training.cancel(id)?)
    }

    /// The station's training jobs, running and finished.
    pub fn training(&self) -> &TrainingJobs {
        &self.training
    }

    /// Keeps upload sets for training in `dir`.
    pub fn with_training_uploads(mut self, dir: std::path::PathBuf) -> ModelControl {
        self.training = Arc::new(TrainingJobs::with_uploads(Uploads::new(dir)));
        self
    }

    /// Keeps the defect classes engineers save in `dir` (the station's data folder).
    pub fn with_taxonomy_dir(mut self, dir: std::path::PathBuf) -> ModelControl {
        self.taxonomy_dir = Some(dir);
        self
    }

    /// The defect classes the gate judges by now.
    pub fn taxonomy(&self) -> Arc<Taxonomy> {
        self.active.taxonomy()
    }

    /// Replaces the defect classes, recorded with who asked: the audit entry first (a change
    /// that is not recorded has not happened), then the file, so that what the gate does from
    /// the next part on is also what it does after a restart, then the gate.
    ///
    /// With `expected` (an entity tag from [`Taxonomy::etag`]), the change is made only if
    /// the classes are still that version: two engineers editing at once cannot undo each
    /// other's change unseen.
    ///
    /// `renames` (old name → new name, [`Taxonomy::check_renames`]) rewrites the labels of the
    /// old classes; the number of parts relabelled comes back.
    pub async fn set_taxonomy(
        &self,
        taxonomy: Taxonomy,
        renames: BTreeMap<String, String>,
        expected: Option<&str>,
        audit: AuditRecord,
    ) -> Result<usize, ControlError> {
        let _one_change = self.changing.lock().await;
        let current = self.active.taxonomy();
        let current_tag = current.etag();
        if let Some(expected) = expected
            && expected != "*"
            && expected != current_tag
        {
            return Err(TaxonomyError::Changed {
                expected: expected.to_owned(),
                current: current_tag,
            }
            .into());
        }
        current.check_renames(&taxonomy, &renames)?;
        // A renamed class keeps what was taught: every part whose latest label names it gets
        // a new label with the new name, superseding that label, written with the audit entry
        // in one commit (`Store::append_labels`: no label written meanwhile is passed over).
        let by = audit.actor.clone();
        let written = self
            .store
            .append_labels(move |store| {
                let relabels = if renames.is_empty() {
                    Vec::new()
                } else {
                    relabels_for(store, &renames, &by)?
                };
                Ok::<_, RecordError>(
                    std::iter::once(RecordBody::Audit(audit))
                        .chain(relabels.into_iter().map(RecordBody::Label))
                        .collect(),
                )
            })
            .await?;
        // The audit entry, then the relabels.
        let relabelled = written.len() - 1;
        if let Some(dir) = self.taxonomy_dir.clone() {
            let saved = taxonomy.clone();
            tokio::task::spawn_blocking(move || saved.save(&dir))
                .await
                .map_err(|e| ControlError::Join(e.to_string()))??;
        }
        self.active.set_taxonomy(taxonomy);
        Ok(relabelled)
    }

    /// Deletes an upload set, recorded with who asked.
    pub async fn delete_upload(&self, set: String, audit: AuditRecord) -> Result<(), ControlError> {
        self.training
            .uploads()?
            .images(&set)
            .map_err(TrainingError::from)?;
        self.store
            .append_all(vec![RecordBody::Audit(audit)])
            .await?;
        let training = self.training.clone();
        tokio::task::spawn_blocking(move || {
            training
                .uploads()?
                .remove(&set)
                .map_err(TrainingError::from)
        })
        .await
        .map_err(|e| ControlError::Join(e.to_string()))??;
        Ok(())
    }

    /// `version` as it would run here, at `threshold` or the threshold it would go live with,
    /// for a backtest: loaded, checked, and not made live or shadow.
    pub async fn candidate(
        &self,
        version: &str,
        threshold: Option<f32>,
    ) -> Result<RunningModel, ControlError> {
        let mut model = self.load(version).await?;
        if let Some(threshold) = threshold {
            if let Some(problem) = model.detector.threshold_problem(threshold) {
                return Err(ControlError::Threshold(problem));
            }
            model.threshold = threshold;
        }
        Ok(model)
    }

    /// Loads a version off the async threads and checks it fits this station.
    async fn load(&self, version: &str) -> Result<RunningModel, ControlError> {
        let registry = self.registry.clone();
        let owned = version.to_owned();
        let detector = tokio::task::spawn_blocking(move || registry.load(&owned))
            .await
            .map_err(|e| ControlError::Join(e.to_string()))??;
        if let Some(size) = detector.input_size()
            && size != self.frame_size
        {
            return Err(ControlError::InputSize {
                version: version.into(),
                model: size,
                station: self.frame_size,
            });
        }
        let threshold = match &self.threshold_override {
            Some((configured, threshold)) if *configured == detector.head().version => *threshold,
            _ => detector.head().threshold,
        };
        Ok(RunningModel::new(detector, threshold))
    }
}

/// The versions a rollback would return to, most recent last.
fn rollback_stack(events: &[ModelEvent]) -> Vec<String> {
    let mut stack = Vec::new();
    for event in events {
        match event.action {
            ModelAction::Promote => stack.extend(event.previous.clone()),
            ModelAction::Rollback => {
                stack.pop();
            }
            ModelAction::ShadowStart | ModelAction::ShadowStop => {}
        }
    }
    stack
}

/// Everything the shadow thread needs.
pub struct ShadowContext {
    pub active: Arc<ActiveModels>,
    pub jobs: Receiver<ShadowJob>,
    pub store: Store,
    pub metrics: Metrics,
}

/// Scores every queued frame with the shadow model of the moment and keeps its verdict. Runs
/// until the inspect thread drops the queue.
pub fn run_shadow(ctx: ShadowContext) {
    // One worker thread of its own: the backbone's kernels run on rayon, and in the global
    // pool the shadow would take every core from the live model.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "shadow-worker".into())
        .build();
    if let Err(error) = &pool {
        tracing::warn!(%error, "no separate pool for the shadow model; it shares the cores");
    }
    // Whether the last verdict failed to be kept: a store refusing them (the disk below its
    // floor) refuses every part's, so only the first failure and the recovery are logged.
    let mut failing = false;
    while let Ok(job) = ctx.jobs.recv() {
        let Some(shadow) = ctx.active.shadow() else {
            continue;
        };
        // Each camera's image; the part's verdict is the worst (fail, then error, then pass),
        // its score the first worst image's, as the live model's.
        // The live taxonomy judges the shadow's classes too: a comparison under other rules
        // would count as disagreements what is only a tolerated class.
        let taxonomy = ctx.active.taxonomy();
        let judge = |image: &GrayImage| {
            let judge = || {
                shadow
                    .detector
                    .judge_tolerating(image, &taxonomy.tolerated())
            };
            let judged = match &pool {
                Ok(pool) => pool.install(judge),
                Err(_) => judge(),
            };
            match judged {
                Ok(judgement) => {
                    let (verdict, _) = taxonomy.verdict(shadow.threshold, &judgement);
                    (verdict, Some(judgement.score))
                }
                Err(error) => {
                    tracing::warn!(part_id = %job.part_id, %error, "shadow model failed");
                    (Verdict::Error, None)
                }
            }
        };
        let rank = |verdict: Verdict| match verdict {
            Verdict::Pass => 0,
            Verdict::Error => 1,
            Verdict::Fail => 2,
        };
        let Some((verdict, score)) = job.images.iter().map(judge).reduce(|worst, next| {
            if rank(next.0) > rank(worst.0) {
                next
            } else {
                worst
            }
        }) else {
            continue;
        };
        let record = ShadowVerdict {
            part_id: job.part_id.0,
            version: shadow.version.to_string(),
            verdict,
            score,
            live_version: job.live_version.to_string(),
            live_verdict: job.live_verdict,
            live_score: job.live_score,
        };
        match ctx.store.put_shadow(&record) {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("shadow verdicts are kept again");
                }
                ctx.metrics.shadow_verdicts.inc();
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "could not keep a shadow verdict; the next failures are not logged until one is kept");
                }
            }
        }
    }
}

/// New labels, by `by`, for every part whose latest label names a class `renames` renames.
fn relabels_for(
    store: &Store,
    renames: &BTreeMap<String, String>,
    by: &str,
) -> Result<Vec<LabelRecord>, RecordError> {
    let mut latest: Vec<u64> = store.latest_labels()?.into_values().collect();
    latest.sort_unstable();
    let mut relabels = Vec::new();
    for seq in latest {
        if let Some(Record {
            body: RecordBody::Label(label),
            ..
        }) = store.record(seq)?
            && let Some(renamed) = crate::inspect::taxonomy::relabelled(&label, renames, by)
        {
            // The new label supersedes the one it renames, not what that one superseded.
            relabels.push(LabelRecord {
                supersedes: seq,
                ..renamed
            });
        }
    }
    Ok(relabels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: ModelAction, version: &str, previous: &str) -> ModelEvent {
        ModelEvent {
            at: Utc::now(),
            action,
            version: Some(version.into()),
            previous: Some(previous.into()),
        }
    }

    #[test]
    fn rollbacks_unwind_promotions_in_order() {
        let mut events = vec![
            event(ModelAction::Promote, "b", "a"),
            event(ModelAction::ShadowStart, "x", "-"),
            event(ModelAction::Promote, "c", "b"),
        ];
        assert_eq!(rollback_stack(&events), ["a", "b"]);
        events.push(event(ModelAction::Rollback, "b", "c"));
        assert_eq!(rollback_stack(&events), ["a"]);
        events.push(event(ModelAction::Rollback, "a", "b"));
        assert!(rollback_stack(&events).is_empty());
    }
}
