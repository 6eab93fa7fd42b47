//! Records for tests elsewhere in the crate.

use chrono::{DateTime, Utc};

use super::{ActuationStatus, InspectionRecord, RecordBody, ShadowVerdict};
use crate::part::{Disposition, Verdict};

/// The inspection record of a part the model judged at `at`: failed with `class` when one is
/// given, else passed.
pub fn judged_inspection(part_id: u64, at: DateTime<Utc>, class: Option<&str>) -> RecordBody {
    let failed = class.is_some();
    RecordBody::Inspection(InspectionRecord {
        part_id,
        work_order: None,
        product: None,
        captured_at: at,
        inspected_at: Some(at),
        decided_at: at,
        gate_at: at,
        actuated_at: None,
        verdict: Some(if failed { Verdict::Fail } else { Verdict::Pass }),
        score: None,
        threshold: None,
        disposition: if failed {
            Disposition::RejectFailed
        } else {
            Disposition::Pass
        },
        rejected_by_policy: false,
        inspection_late: false,
        actuation: ActuationStatus::NotRequired,
        actuation_error: None,
        model_version: None,
        defect_class: class.map(str::to_owned),
        image: None,
        heat_map: None,
        defect_at: None,
        defect_size: None,
        defect_boxes: Vec::new(),
        views: Vec::new(),
        calibration: None,
        error: None,
        novelty: None,
    })
}

/// Shadow model `b`'s PASS on `part_id`, where live model `a` passed it too.
pub fn shadow_pass(part_id: u64) -> ShadowVerdict {
    ShadowVerdict {
        part_id,
        version: "b".into(),
        verdict: Verdict::Pass,
        score: Some(0.1),
        live_version: "a".into(),
        live_verdict: Verdict::Pass,
        live_score: Some(0.2),
    }
}
