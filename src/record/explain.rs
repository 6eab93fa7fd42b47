//! One part's decision explained: which model judged which image, its score against which
//! threshold and by how much, where the defect lies and how large, which calibration shaped
//! the image, how long each step took, and what people and the shadow model said since.
//!
//! Everything comes from the record and what sits beside it (labels, the shadow verdict, the
//! model's card while the registry still holds it); nothing is recomputed, so the explanation
//! of a record is the same next year. To see what another model would have decided, run a
//! backtest ([`crate::inspect::backtest`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{DefectPlace, DefectSize, InspectionRecord, LabelRecord, ShadowVerdict};
use crate::models::boxes::DefectBox;
use crate::models::card::CardHead;
use crate::part::{Disposition, MAX_DEFECT_BOXES, Verdict};

/// What the station knew of a part's decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub part_id: u64,
    /// The inspection record's sequence number in the journal.
    pub seq: u64,
    /// The decision in one sentence.
    pub summary: String,
    pub verdict: Option<Verdict>,
    pub disposition: Disposition,
    pub rejected_by_policy: bool,
    /// The model as its card describes it; `None` when its version is no longer in the
    /// registry (its version string still names it exactly).
    pub model: Option<ModelSummary>,
    pub model_version: Option<String>,
    /// The camera whose look decided (with several cameras).
    pub deciding_camera: Option<String>,
    /// Every camera's look, the deciding one's fields first when there is one camera.
    pub looks: Vec<Look>,
    pub timings_ms: Timings,
    /// Engineers' labels of the part since, oldest first.
    pub labels: Vec<LabelRecord>,
    /// What the shadow model said, when one ran.
    pub shadow: Option<ShadowVerdict>,
}

/// The parts of a model card that explain a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub kind: String,
    pub architecture: String,
    /// The card's threshold (the station may run another: the look's `threshold` is the one
    /// applied) and how it was chosen.
    pub card_threshold: f32,
    pub threshold_rule: String,
}

/// One camera's look at the part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Look {
    pub camera: Option<String>,
    pub verdict: Verdict,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    /// `score - threshold`: how far past (positive) or short of (negative) the threshold.
    pub margin: Option<f32>,
    pub defect_class: Option<String>,
    pub defect_at: Option<DefectPlace>,
    pub defect_size: Option<DefectSize>,
    /// The defects the model outlined, hottest first ([`InspectionRecord::defect_boxes`]).
    pub defect_boxes: Vec<DefectBox>,
    /// Digests of the calibrated image and heat map (`/api/v1/images/{digest}`).
    pub image: Option<String>,
    pub heat_map: Option<String>,
    pub calibration: Option<String>,
    pub error: Option<String>,
}

/// How long each step took, from the camera's trigger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    pub capture_to_inspected: Option<f64>,
    pub capture_to_decided: f64,
    /// How long before the part reached the gate its disposition was settled.
    pub decided_before_gate: f64,
    /// To the PLC's acknowledgement of the reject command.
    pub capture_to_actuated: Option<f64>,
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

impl Explanation {
    /// Explains `record` (journal number `seq`) with what sits beside it.
    pub fn of(
        record: &InspectionRecord,
        seq: u64,
        card: Option<&CardHead>,
        labels: Vec<LabelRecord>,
        shadow: Option<ShadowVerdict>,
    ) -> Explanation {
        let threshold = record.threshold;
        let margin = |score: Option<f32>| Some(score? - threshold?);
        let looks: Vec<Look> = if record.views.is_empty() {
            record
                .verdict
                .map(|verdict| Look {
                    camera: None,
                    verdict,
                    score: record.score,
                    threshold,
                    margin: margin(record.score),
                    defect_class: record.defect_class.clone(),
                    defect_at: record.defect_at,
                    defect_size: record.defect_size,
                    defect_boxes: record.defect_boxes.clone(),
                    image: record.image.clone(),
                    heat_map: record.heat_map.clone(),
                    calibration: record.calibration.clone(),
                    error: record.error.clone(),
                })
                .into_iter()
                .collect()
        } else {
            record
                .views
                .iter()
                .map(|view| Look {
                    camera: Some(view.camera.clone()),
                    verdict: view.verdict,
                    score: view.score,
                    threshold,
                    margin: margin(view.score),
                    defect_class: view.defect_class.clone(),
                    defect_at: view.defect_at,
                    defect_size: view.defect_size,
                    defect_boxes: view.defect_boxes.clone(),
                    image: view.image.clone(),
                    heat_map: view.heat_map.clone(),
                    calibration: view.calibration.clone(),
                    error: view.error.clone(),
                })
                .collect()
        };
        // The deciding look: the first whose verdict is the part's (as the station chose it).
        let deciding = looks.iter().position(|l| Some(l.verdict) == record.verdict);
        let deciding_camera = deciding.and_then(|i| looks[i].camera.clone());
        let summary = summary(record, deciding.map(|i| &looks[i]), &labels);
        Explanation {
            part_id: record.part_id,
            seq,
            summary,
            verdict: record.verdict,
            disposition: record.disposition,
            rejected_by_policy: record.rejected_by_policy,
            model: card.map(|card| ModelSummary {
                kind: card.kind.clone(),
                architecture: card.architecture.clone(),
                card_threshold: card.threshold,
                threshold_rule: card.threshold_rule.clone(),
            }),
            model_version: record.model_version.clone(),
            deciding_camera,
            looks,
            timings_ms: Timings {
                capture_to_inspected: record.inspected_at.map(|t| ms(record.captured_at, t)),
                capture_to_decided: ms(record.captured_at, record.decided_at),
                decided_before_gate: ms(record.decided_at, record.gate_at),
                capture_to_actuated: record.actuated_at.map(|t| ms(record.captured_at, t)),
            },
            labels,
            shadow,
        }
    }
}

/// The decision in one sentence, then what was said of it since.
fn summary(record: &InspectionRecord, deciding: Option<&Look>, labels: &[LabelRecord]) -> String {
    let model = record
        .model_version
        .as_deref()
        .unwrap_or("an unrecorded model");
    let camera = deciding
        .and_then(|l| l.camera.as_deref())
        .map(|c| format!("camera `{c}` "))
        .unwrap_or_default();
    let against = |look: &Look| match (look.score, look.threshold) {
        (Some(score), Some(threshold)) => format!(
            "{camera}scored {score:.4} {} the threshold {threshold:.4} of {model} (margin {:+.4})",
            if score >= threshold {
                "at or above"
            } else {
                "below"
            },
            score - threshold
        ),
        _ => format!("{camera}was judged by {model}"),
    };
    let mut text = match (record.verdict, deciding) {
        // A verdict after the deadline was kept for the record but not used.
        (Some(_), Some(look)) if record.inspection_late => format!(
            "Rejected by policy: the verdict came too late to use (it {})",
            against(look)
        ),
        (None, _) | (Some(_), None) => format!(
            "Rejected by policy: no verdict by the gate deadline{}",
            record
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
        (Some(Verdict::Pass), Some(look)) => match &look.defect_class {
            // At or above the threshold, passed by the defect-class taxonomy.
            Some(class) => format!(
                "Passed: {}; defect class {class}, which the station's defect classes tolerate",
                against(look)
            ),
            None => format!("Passed: {}", against(look)),
        },
        (Some(Verdict::Fail), Some(look)) => {
            let mut text = format!("Rejected: {}", against(look));
            if let Some(class) = &look.defect_class {
                text += &format!("; defect class {class}");
            }
            if let Some(at) = look.defect_at {
                text += &format!("; defect at ({:.2}, {:.2}) of the image", at.x, at.y);
            }
            if let Some(size) = look.defect_size {
                text += &format!(", {:.0}×{:.0} px", size.width_px, size.height_px);
                if let (Some(w), Some(h)) = (size.width_mm, size.height_mm) {
                    text += &format!(" ({w:.1}×{h:.1} mm)");
                }
            }
            // A record keeps the hottest boxes only: a full list may have been cut short.
            match look.defect_boxes.len() {
                0 | 1 => {}
                MAX_DEFECT_BOXES => {
                    text += &format!("; {MAX_DEFECT_BOXES} or more defects outlined")
                }
                n => text += &format!("; {n} defects outlined"),
            }
            text
        }
        (Some(Verdict::Error), Some(look)) => format!(
            "Rejected: {camera}could not be judged: {}",
            look.error.as_deref().unwrap_or("no reason recorded")
        ),
    };
    if record.verdict == Some(Verdict::Pass) && record.rejected_by_policy && !record.inspection_late
    {
        text += &format!(
            "; rejected by policy all the same: the pass could not reach the PLC ({})",
            record
                .actuation_error
                .as_deref()
                .unwrap_or("no reason recorded")
        );
    }
    if let Some(calibration) = deciding.and_then(|l| l.calibration.as_deref()) {
        text += &format!("; image calibrated by {calibration}");
    }
    text.push('.');
    if let Some(label) = labels.last() {
        text += &format!(
            " Labelled {}{} by {} since.",
            label.verdict.as_str(),
            label
                .defect_class
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            label.by
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ActuationStatus, ViewRecord};

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_780_000_000_000 + ms).expect("time")
    }

    fn record() -> InspectionRecord {
        InspectionRecord {
            part_id: 9,
            work_order: None,
            product: None,
            captured_at: at(0),
            inspected_at: Some(at(12)),
            decided_at: at(15),
            gate_at: at(500),
            actuated_at: Some(at(480)),
            verdict: Some(Verdict::Fail),
            score: Some(0.9),
            threshold: Some(0.64),
            disposition: Disposition::RejectFailed,
            rejected_by_policy: false,
            inspection_late: false,
            actuation: ActuationStatus::Done,
            actuation_error: None,
            model_version: Some("net@abc".into()),
            defect_class: Some("scratch".into()),
            image: Some("img".into()),
            heat_map: Some("map".into()),
            error: None,
            defect_at: Some(DefectPlace { x: 0.25, y: 0.5 }),
            defect_size: Some(DefectSize {
                width_px: 16.0,
                height_px: 8.0,
                area_px: 128.0,
                width_mm: Some(4.0),
                height_mm: Some(2.0),
                area_mm2: Some(8.0),
            }),
            defect_boxes: vec![
                DefectBox {
                    bbox: [8, 12, 24, 20],
                    score: 0.9,
                    class: Some("scratch".into()),
                },
                DefectBox {
                    bbox: [40, 2, 48, 10],
                    score: 0.7,
                    class: None,
                },
            ],
            views: Vec::new(),
            calibration: Some("cam.yaml@0123456789ab".into()),
            novelty: None,
        }
    }

    #[test]
    fn a_rejected_part_names_its_score_threshold_margin_region_and_calibration() {
        let label = LabelRecord {
            part_id: 9,
            supersedes: 4,
            verdict: Verdict::Pass,
            defect_class: None,
            note: Some("dust".into()),
            by: "eng".into(),
            image: None,
            regions: Vec::new(),
        };
        let card = CardHead {
            name: "net".into(),
            version: "net@abc".into(),
            kind: "defect-net".into(),
            architecture: "cnn".into(),
            threshold: 0.5,
            threshold_rule: "youden".into(),
            threshold_guarantee: None,
            drift: None,
        };
        let explained = Explanation::of(&record(), 4, Some(&card), vec![label], None);
        assert_eq!(
            explained.summary,
            "Rejected: scored 0.9000 at or above the threshold 0.6400 of net@abc (margin \
             +0.2600); defect class scratch; defect at (0.25, 0.50) of the image, 16×8 px \
             (4.0×2.0 mm); 2 defects outlined; image calibrated by cam.yaml@0123456789ab. \
             Labelled pass by eng since."
        );
        assert_eq!(explained.looks[0].defect_boxes[0].bbox, [8, 12, 24, 20]);
        let look = &explained.looks[0];
        assert!((look.margin.expect("margin") - 0.26).abs() < 1e-6);

        // Above the threshold but of a class the taxonomy tolerates: passed, and says why.
        let mut tolerated = record();
        tolerated.verdict = Some(Verdict::Pass);
        tolerated.disposition = Disposition::Pass;
        tolerated.calibration = None;
        let passed = Explanation::of(&tolerated, 4, None, Vec::new(), None);
        assert_eq!(
            passed.summary,
            "Passed: scored 0.9000 at or above the threshold 0.6400 of net@abc (margin +0.2600); \
             defect class scratch, which the station's defect classes tolerate."
        );
        assert_eq!(
            explained.model.as_ref().map(|m| m.card_threshold),
            Some(0.5)
        );
        assert_eq!(explained.timings_ms.capture_to_inspected, Some(12.0));
        assert_eq!(explained.timings_ms.capture_to_decided, 15.0);
        assert_eq!(explained.timings_ms.decided_before_gate, 485.0);
        assert_eq!(explained.timings_ms.capture_to_actuated, Some(480.0));

        use crate::serve::openapi_check::{schema_fields, served_fields};
        let served = serde_json::to_value(&explained).expect("json");
        assert_eq!(served_fields(&served), schema_fields("Explanation"));
        assert_eq!(
            served_fields(&served["looks"][0]),
            schema_fields("ExplanationLook")
        );
    }

    #[test]
    fn several_cameras_name_the_deciding_one_and_a_missing_verdict_is_policy() {
        let view = |camera: &str, verdict, score| ViewRecord {
            camera: camera.into(),
            verdict,
            score,
            defect_class: None,
            image: None,
            heat_map: None,
            error: (verdict == Verdict::Error).then(|| "no frame".into()),
            defect_at: None,
            defect_size: None,
            defect_boxes: Vec::new(),
            calibration: None,
        };
        let mut seen_twice = record();
        seen_twice.verdict = Some(Verdict::Error);
        seen_twice.views = vec![
            view("top", Verdict::Pass, Some(0.1)),
            view("side", Verdict::Error, None),
        ];
        let explained = Explanation::of(&seen_twice, 1, None, Vec::new(), None);
        assert_eq!(explained.deciding_camera.as_deref(), Some("side"));
        assert_eq!(
            explained.summary,
            "Rejected: camera `side` could not be judged: no frame."
        );
        assert_eq!(explained.looks.len(), 2);
        assert!(explained.model.is_none());

        let mut late = record();
        late.verdict = None;
        late.disposition = Disposition::RejectNoVerdict;
        late.rejected_by_policy = true;
        let explained = Explanation::of(&late, 1, None, Vec::new(), None);
        assert!(explained.looks.is_empty());
        assert_eq!(
            explained.summary,
            "Rejected by policy: no verdict by the gate deadline."
        );

        // A passing verdict that came after the deadline: not "could not reach the PLC".
        let mut too_late = record();
        too_late.verdict = Some(Verdict::Pass);
        too_late.score = Some(0.1);
        too_late.calibration = None;
        too_late.disposition = Disposition::RejectNoVerdict;
        too_late.rejected_by_policy = true;
        too_late.inspection_late = true;
        let explained = Explanation::of(&too_late, 1, None, Vec::new(), None);
        assert_eq!(
            explained.summary,
            "Rejected by policy: the verdict came too late to use (it scored 0.1000 below the \
             threshold 0.6400 of net@abc (margin -0.5400))."
        );
    }
}
