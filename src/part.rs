//! The words every stage shares: parts, frames, verdicts, outcomes, and the station clock.
//!
//! A *part* is one physical item on the belt. It gets a [`PartId`] at its *trigger*, the moment
//! the camera captures it; from then on the id follows it through inspection, the reject gate and
//! the quality record. Stages depend on this module, never on each other.
//!
//! Time inside the station is [`StationTime`]: a monotonic offset from station start, so timing
//! decisions never jump with the wall clock. [`StationClock`] turns it into UTC for records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::models::boxes::DefectBox;

/// The identity of one part, unique for the life of a station's data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartId(pub u64);

impl std::fmt::Display for PartId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Monotonic time since the station started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StationTime(pub Duration);

impl StationTime {
    /// `self + d`.
    pub fn after(self, d: Duration) -> StationTime {
        StationTime(self.0 + d)
    }
    /// `self - d`, saturating at station start.
    pub fn before(self, d: Duration) -> StationTime {
        StationTime(self.0.saturating_sub(d))
    }
}

/// The station's one clock: monotonic for decisions, anchored to UTC for records.
#[derive(Debug, Clone)]
pub struct StationClock {
    started: Instant,
    started_utc: DateTime<Utc>,
}

impl StationClock {
    /// Starts the clock now.
    pub fn start() -> Arc<StationClock> {
        Arc::new(StationClock {
            started: Instant::now(),
            started_utc: Utc::now(),
        })
    }

    /// The current station time.
    pub fn now(&self) -> StationTime {
        StationTime(self.started.elapsed())
    }

    /// The [`Instant`] of a station time, for timers.
    pub fn instant(&self, t: StationTime) -> Instant {
        self.started + t.0
    }

    /// The UTC time of a station time.
    pub fn utc(&self, t: StationTime) -> DateTime<Utc> {
        // A Duration of the station's lifetime always fits chrono's range.
        self.started_utc + chrono::Duration::from_std(t.0).unwrap_or(chrono::Duration::MAX)
    }
}

/// An 8-bit grey image, row-major with no padding between rows.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// Wraps pixels, checking that their count matches the size.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Option<GrayImage> {
        (pixels.len() == width as usize * height as usize).then_some(GrayImage {
            width,
            height,
            pixels,
        })
    }
}

/// The moment a part is captured: the tracker starts its clock for the gate here.
#[derive(Debug, Clone, Copy)]
pub struct Trigger {
    pub part_id: PartId,
    pub captured_at: StationTime,
}

/// A capture asked for from outside the camera: in server mode, the PLC's trigger with the
/// tracking id it latched at its photo-eye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalTrigger {
    pub tracking_id: u32,
    /// When the station took it.
    pub at: Instant,
}

/// Told what became of each [`ExternalTrigger`]: the part its frame became, or that no frame
/// answered it in time (the PLC rejects that part).
pub trait TriggerSink: Send + Sync {
    fn captured(&self, trigger: ExternalTrigger, part_id: PartId);
    fn missed(&self, trigger: ExternalTrigger);
}

/// One captured camera frame showing one part.
#[derive(Debug, Clone)]
pub struct Frame {
    pub part_id: PartId,
    pub captured_at: StationTime,
    pub image: GrayImage,
}

/// What the model says about one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The score is below the threshold.
    Pass,
    /// The score reached the threshold.
    Fail,
    /// The frame could not be inspected (bad image, model failure). Treated as a reject.
    Error,
}

impl Verdict {
    /// The lowercase name used in records, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }

    /// How bad it is for a part: a defect seen outranks an image that could not be judged,
    /// and either outranks a pass. A part seen by several cameras takes its worst view's.
    pub fn severity(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Error => 1,
            Verdict::Fail => 2,
        }
    }
}

/// A defect heat map: one value per cell over the inspected image, coarser than it.
///
/// A model gives it on its score's scale (a probability, or standard deviations above good
/// parts): a cell at the threshold would, as the image's score, reject the part. The station
/// stores and shows it on the threshold's scale ([`HeatMap::on_threshold_scale`]), the same for
/// every model: 0.5 is the threshold, so a defect stands out and a good part stays calm.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    pub width: u32,
    pub height: u32,
    /// Row-major, on the scale the map is on (see above).
    pub values: Vec<f32>,
}

impl HeatMap {
    /// The map on the threshold's scale: a score of 0 (a probability of nothing, or a cell no
    /// further from good parts than they are themselves) is 0, the threshold is 0.5, twice the
    /// threshold is 1. Values are not clipped, so the hottest cell stays the hottest; a picture
    /// of the map clips to `[0, 1]`. A threshold at or below 0 (an anomaly model whose good
    /// parts spread widely) keeps 0.5 there and spans one score unit each side of it. A value
    /// that is not a number becomes 1, never calm.
    pub fn on_threshold_scale(mut self, threshold: f32) -> HeatMap {
        let shown = |value: f32| {
            if value.is_nan() {
                1.0
            } else if threshold > 0.0 {
                0.5 * value / threshold
            } else {
                0.5 + 0.5 * (value - threshold)
            }
        };
        for value in &mut self.values {
            *value = shown(*value);
        }
        self
    }
}

/// The most defect boxes an inspection keeps, the hottest: a part covered in blobs is one
/// reject whatever their number, and a record stays small.
pub const MAX_DEFECT_BOXES: usize = 16;

/// The inspect stage's result for one part.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub part_id: PartId,
    pub inspected_at: StationTime,
    pub verdict: Verdict,
    /// The model's defect score on its own scale (see [`crate::models::Detector::score`]);
    /// `None` when the verdict is [`Verdict::Error`].
    pub score: Option<f32>,
    pub threshold: f32,
    pub model_version: Arc<str>,
    /// The calibrated image the model saw.
    pub image: Option<GrayImage>,
    /// On the threshold's scale ([`HeatMap::on_threshold_scale`]).
    pub heat_map: Option<HeatMap>,
    /// Millimetres per pixel of `image` on the part's plane, across and down, when the
    /// calibration measured the scale.
    pub mm_per_pixel: Option<(f64, f64)>,
    /// The calibration that shaped `image` ([`crate::calibrate::Calibration::id`]).
    pub calibration: Option<Arc<str>>,
    /// The defect class the model names for a failed part (models that learn classes only).
    pub defect_class: Option<String>,
    /// The defects the model outlined in `image` ([`crate::models::Detector::defect_boxes`]),
    /// hottest first, at most [`MAX_DEFECT_BOXES`]: for a failed part, and for a passed one
    /// whose defect class is tolerated; empty otherwise.
    pub defect_boxes: Vec<DefectBox>,
    /// Why the verdict is [`Verdict::Error`].
    pub error: Option<String>,
    /// How unlike the live model's good training images the calibrated image is, when the
    /// model's card has a drift reference; with several views, the most novel view's.
    pub novelty: Option<crate::learn::drift::InputNovelty>,
    /// A station with several cameras: what each camera's view of the part showed. The fields
    /// above are then those of the view that decided ([`Inspection::of_views`]). `None` with
    /// one camera.
    pub views: Option<PartViews>,
}

/// Every camera's look at one part, the station's own camera (`[camera]`) first.
#[derive(Debug, Clone)]
pub struct PartViews {
    pub views: Vec<ViewInspection>,
    /// Which of them decided the part's verdict.
    pub deciding: usize,
}

impl PartViews {
    /// The view that decided.
    pub fn deciding(&self) -> &ViewInspection {
        &self.views[self.deciding]
    }
}

/// One camera's look at a part, on a station with several views of each part.
#[derive(Debug, Clone)]
pub struct ViewInspection {
    /// The camera's name (`[camera] name`, `[[views]] name`).
    pub camera: Arc<str>,
    /// What the model made of this camera's frame (its own `views` `None`).
    pub inspection: Inspection,
}

impl Inspection {
    /// A one-camera inspection of `part_id` with `verdict` and `score` against a threshold of
    /// 0.5, by model `test@1`, nothing else seen: for tests of what follows inspection.
    #[cfg(test)]
    pub(crate) fn judged(
        part_id: u64,
        inspected_at: StationTime,
        verdict: Verdict,
        score: f32,
    ) -> Inspection {
        Inspection {
            part_id: PartId(part_id),
            inspected_at,
            verdict,
            score: Some(score),
            threshold: 0.5,
            model_version: Arc::from("test@1"),
            image: None,
            heat_map: None,
            mm_per_pixel: None,
            calibration: None,
            defect_class: None,
            defect_boxes: Vec::new(),
            error: None,
            novelty: None,
            views: None,
        }
    }

    /// A part seen by several cameras: its verdict is the worst of its views' (a defect seen
    /// outranks a view that could not be judged, and either rejects), and the other fields
    /// come from the view that decided, the first of the worst (among equals, one that names
    /// a defect class: a pass with a tolerated defect keeps its class). Every view is kept in
    /// `views`. `None` when `views` is empty.
    pub fn of_views(views: Vec<ViewInspection>) -> Option<Inspection> {
        let deciding = views.iter().enumerate().fold(None, |best, (i, view)| {
            let rank = (
                view.inspection.verdict.severity(),
                view.inspection.defect_class.is_some(),
            );
            match best {
                Some((_, best_rank)) if best_rank >= rank => best,
                _ => Some((i, rank)),
            }
        })?;
        let mut inspection = views[deciding.0].inspection.clone();
        // Inspected once every view was.
        inspection.inspected_at = views
            .iter()
            .map(|view| view.inspection.inspected_at)
            .max()
            .unwrap_or(inspection.inspected_at);
        // Novelty is not about the verdict: a camera whose lighting changed drifts whichever
        // view decided, so the part keeps the most novel view's (relative to its limit).
        inspection.novelty = views
            .iter()
            .filter_map(|view| view.inspection.novelty)
            .max_by(|a, b| (a.score / a.limit).total_cmp(&(b.score / b.limit)));
        inspection.views = Some(PartViews {
            views,
            deciding: deciding.0,
        });
        Some(inspection)
    }
}

/// What happens to a part at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The part goes on down the line.
    Pass,
    /// The model failed the part.
    RejectFailed,
    /// The model could not inspect the part.
    RejectError,
    /// Rejected by policy: no verdict by the gate deadline, or a PASS that never reached the
    /// PLC ([`PartOutcome::settle_undelivered_pass`]; the model's PASS stays in the record's
    /// verdict).
    RejectNoVerdict,
}

impl Disposition {
    /// Whether the gate must fire for this part.
    pub fn is_reject(self) -> bool {
        !matches!(self, Disposition::Pass)
    }

    /// The lowercase name used in records, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Pass => "pass",
            Disposition::RejectFailed => "reject_failed",
            Disposition::RejectError => "reject_error",
            Disposition::RejectNoVerdict => "reject_no_verdict",
        }
    }
}

/// The result of trying to fire the reject gate for one part.
#[derive(Debug, Clone)]
pub enum Actuation {
    /// The part passed: the gate was not fired.
    NotRequired,
    /// The reject command was acknowledged by the PLC at this time.
    Done { at: StationTime },
    /// The reject command could not be delivered; the PLC's watchdog is the last line of defence.
    Failed { at: StationTime, error: String },
}

/// Everything known about a part once it has passed the gate: what the recorder stores.
#[derive(Debug, Clone)]
pub struct PartOutcome {
    pub part_id: PartId,
    pub captured_at: StationTime,
    /// When the part reaches the gate.
    pub gate_at: StationTime,
    /// When the disposition was decided.
    pub decided_at: StationTime,
    pub disposition: Disposition,
    /// The inspection, if it arrived (even late).
    pub inspection: Option<Inspection>,
    /// Whether the inspection arrived after the verdict deadline.
    pub inspection_late: bool,
    pub actuation: Actuation,
}

impl PartOutcome {
    /// Records a PASS that never reached the PLC as one it acted on (held back while the PLC
    /// was lost, unsent in its window, acknowledged too late, dropped by a full gate queue, no
    /// result slot) as what became of the part: the PLC diverts a part without a PASS, so it
    /// is a reject by policy, the model's PASS kept as its verdict. The record, the `parts`
    /// metric and the production counts read the disposition, so none of them may count such
    /// a part good. (A PASS whose resend the lost heartbeat cut may have landed the first time;
    /// it is counted diverted too, the side that never counts a part good that may not be.)
    pub fn settle_undelivered_pass(&mut self) {
        if self.disposition == Disposition::Pass
            && matches!(self.actuation, Actuation::Failed { .. })
        {
            self.disposition = Disposition::RejectNoVerdict;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a PASS whose actuation failed becomes a reject by policy; a delivered PASS and a
    /// reject (delivered or not: the PLC diverts it either way) keep their disposition.
    #[test]
    fn an_undelivered_pass_is_settled_as_a_reject_by_policy() {
        let at = StationTime(Duration::from_millis(5));
        let outcome = |disposition, actuation| PartOutcome {
            part_id: PartId(1),
            captured_at: at,
            gate_at: at,
            decided_at: at,
            disposition,
            inspection: None,
            inspection_late: false,
            actuation,
        };
        let failed = || Actuation::Failed {
            at,
            error: "unsent".into(),
        };
        for (disposition, actuation, settled) in [
            (Disposition::Pass, failed(), Disposition::RejectNoVerdict),
            (Disposition::Pass, Actuation::NotRequired, Disposition::Pass),
            (
                Disposition::RejectFailed,
                failed(),
                Disposition::RejectFailed,
            ),
            (
                Disposition::RejectFailed,
                Actuation::Done { at },
                Disposition::RejectFailed,
            ),
        ] {
            let mut part = outcome(disposition, actuation);
            part.settle_undelivered_pass();
            assert_eq!(part.disposition, settled, "{part:?}");
        }
    }

    #[test]
    fn several_views_keep_the_worst_verdict_and_a_tolerated_class() {
        let look = |camera: &str, verdict, class: Option<&str>| ViewInspection {
            camera: Arc::from(camera),
            inspection: Inspection {
                part_id: PartId(1),
                inspected_at: StationTime(Duration::from_millis(5)),
                verdict,
                score: Some(0.9),
                threshold: 0.5,
                model_version: Arc::from("m@1"),
                image: None,
                heat_map: None,
                mm_per_pixel: None,
                calibration: None,
                defect_class: class.map(str::to_owned),
                defect_boxes: Vec::new(),
                error: None,
                views: None,
                novelty: None,
            },
        };
        // Every camera passed, the side one with a tolerated spot: the part keeps the spot.
        let passed = Inspection::of_views(vec![
            look("top", Verdict::Pass, None),
            look("side", Verdict::Pass, Some("spot")),
        ])
        .expect("views");
        assert_eq!(passed.verdict, Verdict::Pass);
        assert_eq!(passed.defect_class.as_deref(), Some("spot"));
        assert_eq!(
            passed.views.expect("views").deciding().camera.as_ref(),
            "side"
        );
        // A fail outranks a pass with a class, and the first of equals decides.
        let failed = Inspection::of_views(vec![
            look("top", Verdict::Pass, Some("spot")),
            look("side", Verdict::Fail, Some("crack")),
            look("end", Verdict::Fail, Some("dent")),
        ])
        .expect("views");
        assert_eq!(
            (failed.verdict, failed.defect_class.as_deref()),
            (Verdict::Fail, Some("crack"))
        );
        assert!(Inspection::of_views(Vec::new()).is_none());
    }

    fn shown(values: &[f32], threshold: f32) -> Vec<f32> {
        HeatMap {
            width: values.len() as u32,
            height: 1,
            values: values.to_vec(),
        }
        .on_threshold_scale(threshold)
        .values
    }

    #[test]
    fn the_threshold_is_half_way_on_every_models_scale() {
        // A probability judged at 0.6: nothing is 0, the threshold 0.5, certainty below 1.
        assert_eq!(
            shown(&[0.0, 0.3, 0.6, 1.0], 0.6),
            [0.0, 0.25, 0.5, 1.0 / 1.2]
        );
        // Deviations above good parts judged at 4: a good patch is calm, a defect bright, and
        // the hottest cell stays the hottest (a picture of the map clips).
        assert_eq!(
            shown(&[-4.0, 0.0, 2.0, 4.0, 8.0, 40.0], 4.0),
            [-0.5, 0.0, 0.25, 0.5, 1.0, 5.0]
        );
        // A threshold at or below 0 keeps it half way, one unit each side.
        assert_eq!(shown(&[-2.0, -1.0, -0.5, 0.0], -1.0), [0.0, 0.5, 0.75, 1.0]);
        // A value that is not a number never looks calm.
        assert_eq!(shown(&[f32::NAN], 0.5), [1.0]);
    }
}
