//! The drift watch: does the live model still fit the parts the line makes?
//!
//! A model's accuracy degrades silently when production changes under it (a new material lot,
//! an ageing lamp, a retooled press). Every few seconds [`DriftWatch`] reads the newest parts
//! the live model judged and compares them with what its card recorded in training
//! ([`DriftReference`]), four ways:
//!
//! | check | live | against | test |
//! |---|---|---|---|
//! | `inputs` | parts whose image statistics are past the training limit | the share of good parts the limit lets past (≈ 1 %) | binomial upper tail |
//! | `scores` | the scores of the parts the model passed | the good validation images' scores below the threshold | two-sample Kolmogorov–Smirnov |
//! | `flags` | verdicts operators flagged as wrong | the validation error rate | binomial upper tail |
//! | `shadow` | parts the shadow judged otherwise | the two models' validation error rates summed | binomial upper tail |
//!
//! A check drifts when its p-value falls below [`RAISE_P`] on at least [`MIN_PARTS`] parts, and
//! stays drifting until it climbs back above [`CLEAR_P`] (hysteresis, so a window hovering at
//! the limit does not make the alarm chatter). While any check drifts the built-in alarm
//! [`MODEL_DRIFT_ALARM`] is raised through the alarm life cycle, naming the checks and the parts
//! that drove them; parts unlike the training set also enter the labelling queue (reason
//! `unlike_training`), so an engineer can label them and retrain.
//!
//! [`evaluate`] is pure; [`DriftWatch`] reads the store and writes the alarm's condition reports.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};
use tokio_util::sync::CancellationToken;

use crate::inspect::registry::ActiveModels;
use crate::learn::drift::{DriftReference, INPUT_STAT_NAMES, InputNovelty, InputStats};
use crate::part::Verdict;
use crate::record::{AlarmRecord, AlarmSeverity, AlarmState, RecordBody, RecordKind, Store};

/// The built-in alarm raised while the live model drifts.
pub const MODEL_DRIFT_ALARM: &str = "model_drift";

/// The newest parts judged by the live model that each evaluation reads.
pub const WINDOW: usize = 200;

/// A check says nothing on fewer parts than this.
pub const MIN_PARTS: usize = 50;

/// The scores check needs at least this many good validation scores below the threshold.
pub const MIN_REFERENCE_SCORES: usize = 20;

/// A check starts drifting below this p-value. Evaluations every few seconds over overlapping
/// windows test the same parts many times; a small level keeps a line that has not changed
/// from raising the alarm.
pub const RAISE_P: f64 = 1e-4;

/// A drifting check clears above this p-value.
pub const CLEAR_P: f64 = 1e-2;

/// How often the watch evaluates.
pub const EVERY: Duration = Duration::from_secs(5);

/// At most this many parts are named in a report.
const MAX_PARTS_NAMED: usize = 20;

/// One part as the drift watch sees it.
#[derive(Debug, Clone)]
pub struct PartSeen {
    pub part_id: u64,
    pub verdict: Verdict,
    pub score: Option<f32>,
    pub novelty: Option<InputNovelty>,
    /// How many cameras' images its novelty is the most novel of (1 with one camera).
    pub views: usize,
    /// An operator flagged its verdict as wrong.
    pub flagged: bool,
    /// The shadow model's verdict differed (`Some(true)`), agreed (`Some(false)`), or the
    /// shadow did not judge it.
    pub shadow_disagrees: Option<bool>,
    /// Its stored image (SHA-256), for the page to show.
    pub image: Option<String>,
}

/// A check's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Nothing to say against the training reference.
    Fine,
    /// Beyond the clearing level but not the raising one, and not drifting before.
    Watch,
    Drifting,
    /// Not enough parts, or no reference to compare with; `detail` says which.
    NotWatched,
}

/// One of the four comparisons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftCheck {
    /// `inputs`, `scores`, `flags` or `shadow`.
    pub check: &'static str,
    pub state: CheckState,
    /// The parts it compared.
    pub parts: usize,
    /// What it saw: a count of parts (inputs, flags, shadow) or the KS distance (scores).
    pub observed: f64,
    /// What training leads one to expect: a count, or the KS distance's critical value at
    /// [`RAISE_P`].
    pub expected: f64,
    /// How likely a result this far out is if nothing changed; absent when not watched.
    pub p_value: Option<f64>,
    /// In words.
    pub detail: String,
}

/// A part that drove a drifting or watched check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftPart {
    pub part_id: u64,
    /// The check it speaks for.
    pub check: &'static str,
    pub score: Option<f32>,
    /// Its input novelty and the limit, when the model measures one.
    pub novelty: Option<f32>,
    pub image: Option<String>,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    pub evaluated_at: DateTime<Utc>,
    pub model_version: String,
    /// Whether the card of the live model has a drift reference.
    pub has_reference: bool,
    /// The parts read (the newest judged by the live model, at most [`WINDOW`]).
    pub window: usize,
    /// The newest of them; `None` when there were none.
    pub newest_part_id: Option<u64>,
    /// Any check drifting: the alarm's condition.
    pub drifting: bool,
    pub checks: Vec<DriftCheck>,
    /// The parts that drove the checks that are drifting or watched, strongest first.
    pub parts: Vec<DriftPart>,
    /// One sentence for the alarm and the page.
    pub message: String,
}

impl DriftReport {
    fn check(&self, name: &str) -> Option<&DriftCheck> {
        self.checks.iter().find(|c| c.check == name)
    }

    /// What a restart knows when the journal says the alarm was raised: every check of
    /// `model_version` drifting, so each clears only above the clearing level.
    fn raised_before(model_version: &str) -> DriftReport {
        let check = |check| DriftCheck {
            check,
            state: CheckState::Drifting,
            parts: 0,
            observed: 0.0,
            expected: 0.0,
            p_value: None,
            detail: "raised before the station restarted".into(),
        };
        DriftReport {
            evaluated_at: Utc::now(),
            model_version: model_version.to_owned(),
            has_reference: true,
            window: 0,
            newest_part_id: None,
            drifting: true,
            checks: ["inputs", "scores", "flags", "shadow"].map(check).into(),
            parts: Vec::new(),
            message: "raised before the station restarted; not evaluated since".into(),
        }
    }
}

/// What a shadow model brings to the comparison.
#[derive(Debug, Clone, Copy)]
pub struct ShadowReference {
    /// Its validation error rate ([`DriftReference::error_rate`]).
    pub error_rate: f64,
}

/// Compares `parts` (newest first, all judged by the live model) with the live model's
/// `reference`. `previous` is the last report of the same model, whose drifting checks clear
/// only above [`CLEAR_P`].
pub fn evaluate(
    model_version: &str,
    reference: Option<&DriftReference>,
    threshold: f32,
    shadow: Option<ShadowReference>,
    parts: &[PartSeen],
    previous: Option<&DriftReport>,
    now: DateTime<Utc>,
) -> DriftReport {
    let was_drifting = |name: &str| {
        previous
            .filter(|p| p.model_version == model_version)
            .and_then(|p| p.check(name))
            .is_some_and(|c| c.state == CheckState::Drifting)
    };
    let state_of = |name: &str, p: f64| {
        if p < RAISE_P || (was_drifting(name) && p < CLEAR_P) {
            CheckState::Drifting
        } else if p < CLEAR_P {
            CheckState::Watch
        } else {
            CheckState::Fine
        }
    };
    let not_watched = |check: &'static str, parts: usize, detail: String| DriftCheck {
        check,
        state: CheckState::NotWatched,
        parts,
        observed: 0.0,
        expected: 0.0,
        p_value: None,
        detail,
    };
    let too_few = |n: usize, what: &str| format!("{n} {what}; the check needs {MIN_PARTS}");
    // A counting check: `hits` of `n` parts where training expects a share `rate`, judged by
    // the binomial upper tail; `detail` is told the expected count.
    let counted =
        |check: &'static str, hits: usize, n: usize, rate: f64, detail: &dyn Fn(f64) -> String| {
            let p = binomial_upper_tail(hits, n, rate);
            let expected = rate * n as f64;
            DriftCheck {
                check,
                state: state_of(check, p),
                parts: n,
                observed: hits as f64,
                expected,
                p_value: Some(p),
                detail: detail(expected),
            }
        };
    let mut checks = Vec::new();
    let mut named: Vec<DriftPart> = Vec::new();
    let name_part = |part: &PartSeen, check: &'static str| DriftPart {
        part_id: part.part_id,
        check,
        score: part.score,
        novelty: part.novelty.map(|n| n.score),
        image: part.image.clone(),
    };

    // Inputs: how many images are past the training limit, against the share promised.
    let measured: Vec<&PartSeen> = parts.iter().filter(|p| p.novelty.is_some()).collect();
    let inputs = match reference {
        None => not_watched(
            "inputs",
            0,
            "the live model's card has no drift reference".into(),
        ),
        Some(reference) if reference.input.n_calibration == 0 => not_watched(
            "inputs",
            measured.len(),
            "the card's limit comes from its fit images alone, so its rate is not known".into(),
        ),
        Some(_) if measured.len() < MIN_PARTS => not_watched(
            "inputs",
            measured.len(),
            too_few(measured.len(), "parts measured"),
        ),
        Some(reference) => {
            let novel: Vec<&&PartSeen> = measured
                .iter()
                .filter(|p| p.novelty.is_some_and(|n| n.is_novel()))
                .collect();
            // What moved, said of the parts past the limit (the window's mean would dilute it
            // with the parts before a change).
            let moved = mean_stats(novel.iter().filter_map(|p| p.novelty.map(|n| n.stats)))
                .map_or_else(
                    || "none past the limit".to_owned(),
                    |m| format!("those past it: {}", reference.input.describe_shift(&m)),
                );
            // A part seen by several cameras keeps its most novel view's novelty, which passes
            // the limit with probability 1 − (1 − q)^views; the window's mean rate is the
            // binomial's (the binomial with the mean rate is the more spread, so the test stays
            // conservative when the number of views varies).
            let share = reference.input.expected_share;
            let rate = measured
                .iter()
                .map(|p| 1.0 - (1.0 - share).powi(p.views.max(1) as i32))
                .sum::<f64>()
                / measured.len() as f64;
            let check = counted("inputs", novel.len(), measured.len(), rate, &|expected| {
                format!(
                    "{} of {} parts unlike the training images ({expected:.1} expected); {moved}",
                    novel.len(),
                    measured.len(),
                )
            });
            if check.state != CheckState::Fine {
                let mut by_novelty = novel.clone();
                by_novelty.sort_by(|a, b| {
                    let n = |p: &PartSeen| p.novelty.map_or(0.0, |n| n.score);
                    n(b).total_cmp(&n(a))
                });
                named.extend(by_novelty.iter().map(|p| name_part(p, "inputs")));
            }
            check
        }
    };
    checks.push(inputs);

    // Scores: the passed parts' scores against the good validation scores below the threshold.
    // Passed below the threshold, like the reference (a part passed on a tolerated class scores
    // above it).
    let passed: Vec<&PartSeen> = parts
        .iter()
        .filter(|p| p.verdict == Verdict::Pass && p.score.is_some_and(|s| s < threshold))
        .collect();
    let scores = match reference {
        None => not_watched(
            "scores",
            0,
            "the live model's card has no drift reference".into(),
        ),
        Some(reference) if !reference.scores_of_shipped_model => not_watched(
            "scores",
            passed.len(),
            "the card's good scores are those of a first fit, which the model as shipped \
             refitted: not comparable at this precision"
                .into(),
        ),
        Some(reference) => {
            let good: Vec<f32> = (reference.good_scores.iter())
                .copied()
                .filter(|&s| s < threshold)
                .collect();
            if good.len() < MIN_REFERENCE_SCORES {
                not_watched(
                    "scores",
                    passed.len(),
                    format!(
                        "{} good validation scores below the threshold; the check needs \
                         {MIN_REFERENCE_SCORES}",
                        good.len()
                    ),
                )
            } else if passed.len() < MIN_PARTS {
                not_watched(
                    "scores",
                    passed.len(),
                    too_few(passed.len(), "passed parts"),
                )
            } else {
                let mut live: Vec<f32> = passed.iter().filter_map(|p| p.score).collect();
                live.sort_by(f32::total_cmp);
                let distance = ks_distance(&live, &good);
                let p = ks_p_value(distance, live.len(), good.len());
                let state = state_of("scores", p);
                if state != CheckState::Fine {
                    let mut by_score = passed.clone();
                    by_score
                        .sort_by(|a, b| b.score.unwrap_or(0.0).total_cmp(&a.score.unwrap_or(0.0)));
                    named.extend(
                        by_score
                            .iter()
                            .take(MAX_PARTS_NAMED)
                            .map(|p| name_part(p, "scores")),
                    );
                }
                DriftCheck {
                    check: "scores",
                    state,
                    parts: live.len(),
                    observed: distance,
                    expected: ks_critical(RAISE_P, live.len(), good.len()),
                    p_value: Some(p),
                    detail: format!(
                        "median score of {} passed parts {:.3} against {:.3} for good validation \
                         images (KS distance {distance:.3})",
                        live.len(),
                        median(&live),
                        median(&good)
                    ),
                }
            }
        }
    };
    checks.push(scores);

    // Flags: verdicts operators found wrong, against the validation error rate.
    let flags = match reference {
        None => not_watched(
            "flags",
            parts.len(),
            "the live model's card has no drift reference".into(),
        ),
        Some(_) if parts.len() < MIN_PARTS => {
            not_watched("flags", parts.len(), too_few(parts.len(), "parts"))
        }
        Some(reference) => {
            let flagged: Vec<&PartSeen> = parts.iter().filter(|p| p.flagged).collect();
            let check = counted(
                "flags",
                flagged.len(),
                parts.len(),
                reference.error_rate,
                &|expected| {
                    format!(
                        "{} of {} verdicts flagged wrong ({expected:.1} expected from validation)",
                        flagged.len(),
                        parts.len(),
                    )
                },
            );
            if check.state != CheckState::Fine {
                named.extend(flagged.iter().map(|p| name_part(p, "flags")));
            }
            check
        }
    };
    checks.push(flags);

    // Shadow: disagreements, against what the two validation error rates allow.
    let compared: Vec<&PartSeen> = parts
        .iter()
        .filter(|p| p.shadow_disagrees.is_some())
        .collect();
    let shadow_check = match (reference, shadow) {
        _ if compared.is_empty() => {
            not_watched("shadow", 0, "no shadow model judged these parts".into())
        }
        (None, _) | (_, None) => not_watched(
            "shadow",
            compared.len(),
            "the live or the shadow model's card has no drift reference".into(),
        ),
        _ if compared.len() < MIN_PARTS => not_watched(
            "shadow",
            compared.len(),
            too_few(compared.len(), "parts compared"),
        ),
        (Some(reference), Some(shadow)) => {
            let allowed = (reference.error_rate + shadow.error_rate).min(1.0);
            let disagreeing: Vec<&&PartSeen> = compared
                .iter()
                .filter(|p| p.shadow_disagrees == Some(true))
                .collect();
            let check = counted(
                "shadow",
                disagreeing.len(),
                compared.len(),
                allowed,
                &|expected| {
                    format!(
                        "the shadow judged {} of {} parts otherwise ({expected:.1} expected from \
                         the two models' validation errors)",
                        disagreeing.len(),
                        compared.len(),
                    )
                },
            );
            if check.state != CheckState::Fine {
                named.extend(disagreeing.iter().map(|p| name_part(p, "shadow")));
            }
            check
        }
    };
    checks.push(shadow_check);

    let drifting = checks.iter().any(|c| c.state == CheckState::Drifting);
    // Drifting checks' parts first, each part once.
    let drifting_checks: HashSet<&str> = checks
        .iter()
        .filter(|c| c.state == CheckState::Drifting)
        .map(|c| c.check)
        .collect();
    named.sort_by_key(|p| !drifting_checks.contains(p.check));
    let mut seen = HashSet::new();
    named.retain(|p| seen.insert(p.part_id));
    named.truncate(MAX_PARTS_NAMED);
    let message = if drifting {
        let what: Vec<String> = checks
            .iter()
            .filter(|c| c.state == CheckState::Drifting)
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect();
        let ids: Vec<String> = named
            .iter()
            .take(5)
            .map(|p| p.part_id.to_string())
            .collect();
        format!(
            "model {model_version} no longer fits the parts: {}; it shows in parts {}; parts \
             unlike the training images wait in the labelling queue",
            what.join("; "),
            ids.join(", ")
        )
    } else if reference.is_none() {
        format!("model {model_version} has no drift reference on its card: drift is not watched")
    } else if checks.iter().all(|c| c.state == CheckState::NotWatched) {
        format!(
            "model {model_version}: {} parts so far, too few to judge (a check needs {MIN_PARTS})",
            parts.len()
        )
    } else {
        format!("model {model_version} fits the last {} parts", parts.len())
    };
    DriftReport {
        evaluated_at: now,
        model_version: model_version.to_owned(),
        has_reference: reference.is_some(),
        window: parts.len(),
        newest_part_id: parts.iter().map(|p| p.part_id).max(),
        drifting,
        checks,
        parts: named,
        message,
    }
}

/// P(X ≥ k) for X ~ Binomial(n, q).
pub fn binomial_upper_tail(k: usize, n: usize, q: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let q = q.clamp(0.0, 1.0);
    match Binomial::new(q, n as u64) {
        Ok(binomial) => binomial.sf(k as u64 - 1),
        Err(_) => 1.0,
    }
}

/// The two-sample Kolmogorov–Smirnov distance between two ascending samples.
pub fn ks_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut i, mut j, mut distance) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let gap = (i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs();
        distance = distance.max(gap);
    }
    distance
}

/// The asymptotic p-value of a two-sample KS distance (Kolmogorov's distribution with
/// Stephens' small-sample correction).
pub fn ks_p_value(distance: f64, n: usize, m: usize) -> f64 {
    let effective = (n * m) as f64 / (n + m) as f64;
    let root = effective.sqrt();
    let lambda = (root + 0.12 + 0.11 / root) * distance;
    if lambda < 0.3 {
        return 1.0;
    }
    let mut sum = 0f64;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The KS distance whose asymptotic p-value is about `p` (the series' first term, which is all
/// of it at small `p`), for samples of `n` and `m`.
pub fn ks_critical(p: f64, n: usize, m: usize) -> f64 {
    let root = ((n * m) as f64 / (n + m) as f64).sqrt();
    (-(p / 2.0).ln() / 2.0).sqrt() / (root + 0.12 + 0.11 / root)
}

fn median(sorted: &[f32]) -> f32 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(f32::NAN)
}

fn mean_stats(stats: impl Iterator<Item = InputStats>) -> Option<InputStats> {
    let mut sum = [0f64; INPUT_STAT_NAMES.len()];
    let mut n = 0usize;
    for s in stats {
        for (total, v) in sum.iter_mut().zip(s.to_array()) {
            *total += f64::from(v);
        }
        n += 1;
    }
    (n > 0).then(|| InputStats::from_array(sum.map(|t| (t / n as f64) as f32)))
}

/// The latest report, for `GET /api/v1/drift`. Cheap to clone.
#[derive(Clone, Default)]
pub struct LatestDrift(Arc<RwLock<Option<DriftReport>>>);

impl LatestDrift {
    pub fn get(&self) -> Option<DriftReport> {
        self.0.read().map(|r| r.clone()).unwrap_or_default()
    }

    fn set(&self, report: DriftReport) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(report);
        }
    }
}

/// The station's drift watch: evaluates every [`EVERY`], raises and clears
/// [`MODEL_DRIFT_ALARM`] by condition reports in the journal.
pub struct DriftWatch {
    pub store: Store,
    pub models: Arc<ActiveModels>,
    pub latest: LatestDrift,
    pub metrics: crate::metrics::Metrics,
}

impl DriftWatch {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the alarm's last condition report was `raised`, from the journal: a restart
        // neither clears an active alarm nor writes a report that changes nothing.
        let mut raised = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || last_condition(&store))
                .await
                .ok()
                .flatten()
        };
        // Raised before a restart: its checks clear only above the clearing level, as if the
        // station had not stopped.
        if raised == Some(true) {
            self.latest
                .set(DriftReport::raised_before(&self.models.live().version));
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let live = self.models.live();
            let shadow = self.models.shadow();
            let store = self.store.clone();
            let previous = self.latest.get();
            let evaluated = tokio::task::spawn_blocking(move || {
                let reference = live.detector.head().drift.clone();
                let shadow_reference = shadow
                    .as_ref()
                    .and_then(|s| s.detector.head().drift.as_ref())
                    .map(|r| ShadowReference {
                        error_rate: r.error_rate,
                    });
                let shadow_version = shadow.as_ref().map(|s| s.version.clone());
                let parts = read_window(&store, &live.version, shadow_version.as_deref())?;
                Ok::<_, crate::record::RecordError>(evaluate(
                    &live.version,
                    reference.as_ref(),
                    live.threshold,
                    shadow_reference,
                    &parts,
                    previous.as_ref(),
                    Utc::now(),
                ))
            })
            .await;
            let report = match evaluated {
                Ok(Ok(report)) => report,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "drift watch: cannot read the newest parts");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "drift watch: evaluation failed");
                    continue;
                }
            };
            self.metrics.model_drift.set(i64::from(report.drifting));
            // A report with nothing watched (too few parts yet) says nothing either way, unless
            // the model has no reference at all.
            let decided = report.drifting
                || !report.has_reference
                || report
                    .checks
                    .iter()
                    .any(|c| c.state != CheckState::NotWatched);
            if decided && raised.unwrap_or(false) != report.drifting {
                let state = if report.drifting {
                    tracing::warn!(message = %report.message, "model drift");
                    AlarmState::Raised
                } else {
                    AlarmState::Cleared
                };
                let note = RecordBody::Alarm(AlarmRecord::condition(
                    MODEL_DRIFT_ALARM,
                    state,
                    AlarmSeverity::Medium,
                    report.message.clone(),
                ));
                match self.store.append_all(vec![note]).await {
                    Ok(_) => raised = Some(report.drifting),
                    Err(error) => tracing::warn!(%error, "cannot record the model drift alarm"),
                }
            }
            self.latest.set(report);
        }
    }
}

/// Whether the latest condition report of [`MODEL_DRIFT_ALARM`] in the journal raised it;
/// `None` when there is none (or it cannot be read: the first decided report then says).
fn last_condition(store: &Store) -> Option<bool> {
    let mut before = None;
    loop {
        let page = store.latest_of_kind(RecordKind::Alarm, before, 1024).ok()?;
        for record in &page {
            if let RecordBody::Alarm(alarm) = &record.body
                && alarm.alarm == MODEL_DRIFT_ALARM
                && alarm.event.is_none()
            {
                return Some(alarm.state == AlarmState::Raised);
            }
        }
        before = Some(page.last()?.seq);
    }
}

/// The newest parts judged by the model `version` (at most [`WINDOW`], newest first), with
/// their flags and the verdicts of the shadow `shadow_version` (another shadow's, from before it
/// was swapped, are not its disagreements).
pub fn read_window(
    store: &Store,
    version: &str,
    shadow_version: Option<&str>,
) -> Result<Vec<PartSeen>, crate::record::RecordError> {
    let records = store.inspection_records(None, WINDOW)?;
    let flagged: HashSet<u64> = store
        .latest_of_kind(RecordKind::Flag, None, 4 * WINDOW)?
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::Flag(flag) => Some(flag.part_id),
            _ => None,
        })
        .collect();
    let mut parts = Vec::with_capacity(records.len());
    for record in records {
        let Some(verdict) = record.verdict else {
            continue;
        };
        if record.model_version.as_deref() != Some(version) {
            continue;
        }
        let shadow_disagrees = match shadow_version {
            Some(shadow) => store
                .shadow_verdict(record.part_id)?
                .filter(|s| s.version == shadow)
                .map(|s| s.verdict != s.live_verdict),
            None => None,
        };
        parts.push(PartSeen {
            part_id: record.part_id,
            verdict,
            score: record.score,
            novelty: record.novelty,
            views: record.views.len().max(1),
            flagged: flagged.contains(&record.part_id),
            shadow_disagrees,
            image: record.image,
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
