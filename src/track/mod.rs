//! Part tracking from camera to reject gate: a plain state machine, no I/O, no clock.
//!
//! The caller feeds it [`PartTracker::trigger`] when a part is captured and
//! [`PartTracker::inspected`] when its verdict arrives, each with the current [`StationTime`];
//! [`PartTracker::due`] hands back every part whose gate command is due, with its final
//! [`Disposition`]. [`PartTracker::next_due_at`] says when to call again, so the async loop
//! in `station` sleeps exactly until the next thing happens.
//!
//! Timing of one part, from its trigger `t`:
//!
//! ```text
//! t ─────────── deadline = t + travel − verdict_margin ──── fire = t + travel − lead ── gate = t + travel
//!   verdict in time           │ later verdicts are late:            │ command leaves       part arrives
//!                             │ the part is rejected by policy
//! ```
//!
//! Invariant: every triggered part comes out of `due` exactly once, and a part without an
//! in-time passing verdict never comes out as [`Disposition::Pass`].

use std::collections::BTreeMap;

use crate::config::LineTiming;
use crate::part::{Disposition, Inspection, PartId, StationTime, Verdict};

/// A part whose gate command is due now.
#[derive(Debug, Clone)]
pub struct DuePart {
    pub part_id: PartId,
    pub captured_at: StationTime,
    pub gate_at: StationTime,
    pub disposition: Disposition,
    pub inspection: Option<Inspection>,
    /// The inspection arrived after the verdict deadline and was not used.
    pub inspection_late: bool,
}

/// What the tracker made of an inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectionFate {
    /// In time: it decides the part's disposition.
    Accepted,
    /// After the verdict deadline: kept for the record, the part is rejected by policy.
    Late,
    /// For a part the tracker does not know (never triggered, or already past the gate).
    UnknownPart,
}

#[derive(Debug)]
struct TrackedPart {
    captured_at: StationTime,
    inspection: Option<Inspection>,
    inspection_late: bool,
}

/// Tracks every part between its trigger and the gate.
#[derive(Debug)]
pub struct PartTracker {
    timing: LineTiming,
    /// Ordered by id; ids grow with capture time, so the first entry is due first.
    parts: BTreeMap<PartId, TrackedPart>,
}

impl PartTracker {
    /// A tracker for a line with this timing.
    pub fn new(timing: LineTiming) -> PartTracker {
        PartTracker {
            timing,
            parts: BTreeMap::new(),
        }
    }

    /// Parts between trigger and gate.
    pub fn in_flight(&self) -> usize {
        self.parts.len()
    }

    /// A part was captured at `captured_at`.
    pub fn trigger(&mut self, part_id: PartId, captured_at: StationTime) {
        self.parts.insert(
            part_id,
            TrackedPart {
                captured_at,
                inspection: None,
                inspection_late: false,
            },
        );
    }

    /// The inspect stage finished a part at `now`.
    pub fn inspected(&mut self, inspection: Inspection, now: StationTime) -> InspectionFate {
        let Some(part) = self.parts.get_mut(&inspection.part_id) else {
            return InspectionFate::UnknownPart;
        };
        let deadline = part
            .captured_at
            .after(self.timing.travel)
            .before(self.timing.verdict_margin);
        let late = now > deadline;
        part.inspection = Some(inspection);
        part.inspection_late = late;
        if late {
            InspectionFate::Late
        } else {
            InspectionFate::Accepted
        }
    }

    /// When the next part's gate command falls due, if any part is in flight.
    pub fn next_due_at(&self) -> Option<StationTime> {
        self.parts
            .values()
            .map(|part| self.fire_at(part.captured_at))
            .min()
    }

    /// Removes and returns every part whose gate command is due at `now`, oldest first.
    pub fn due(&mut self, now: StationTime) -> Vec<DuePart> {
        let due_ids: Vec<PartId> = self
            .parts
            .iter()
            .filter(|(_, part)| self.fire_at(part.captured_at) <= now)
            .map(|(id, _)| *id)
            .collect();
        due_ids
            .into_iter()
            .filter_map(|part_id| {
                let part = self.parts.remove(&part_id)?;
                Some(self.settle(part_id, part))
            })
            .collect()
    }

    /// Removes and returns one part now, settled with what is known of it: server mode
    /// settles each part as soon as its verdict is in, since the PLC times the gate.
    pub fn take(&mut self, part_id: PartId) -> Option<DuePart> {
        let part = self.parts.remove(&part_id)?;
        Some(self.settle(part_id, part))
    }

    fn fire_at(&self, captured_at: StationTime) -> StationTime {
        captured_at
            .after(self.timing.travel)
            .before(self.timing.actuation_lead)
    }

    fn settle(&self, part_id: PartId, part: TrackedPart) -> DuePart {
        let disposition = match (&part.inspection, part.inspection_late) {
            (Some(inspection), false) => match inspection.verdict {
                Verdict::Pass => Disposition::Pass,
                Verdict::Fail => Disposition::RejectFailed,
                Verdict::Error => Disposition::RejectError,
            },
            // No verdict, or one too late to act on: fail safe.
            _ => Disposition::RejectNoVerdict,
        };
        DuePart {
            part_id,
            captured_at: part.captured_at,
            gate_at: part.captured_at.after(self.timing.travel),
            disposition,
            inspection: part.inspection,
            inspection_late: part.inspection_late,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> StationTime {
        StationTime(Duration::from_millis(n))
    }

    /// travel 1000 ms, verdicts due by 700 ms, command leaves at 990 ms.
    fn tracker() -> PartTracker {
        PartTracker::new(LineTiming {
            travel: Duration::from_millis(1000),
            gate_window: Duration::from_millis(50),
            verdict_margin: Duration::from_millis(300),
            actuation_lead: Duration::from_millis(10),
        })
    }

    fn inspection(part: u64, verdict: Verdict) -> Inspection {
        Inspection {
            defect_class: None,
            part_id: PartId(part),
            inspected_at: ms(0),
            verdict,
            score: Some(0.5),
            threshold: 0.5,
            model_version: Arc::from("test"),
            image: None,
            heat_map: None,
            error: None,
        }
    }

    /// Triggers part 1 at 0 ms, delivers `verdict` at `verdict_at`, returns what is due at 990 ms.
    fn check(verdict: Option<(Verdict, u64)>, expected: Disposition) {
        let mut tracker = tracker();
        tracker.trigger(PartId(1), ms(0));
        if let Some((verdict, at)) = verdict {
            tracker.inspected(inspection(1, verdict), ms(at));
        }
        assert!(
            tracker.due(ms(989)).is_empty(),
            "nothing is due before the fire time"
        );
        let due = tracker.due(ms(990));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].disposition, expected, "verdict {verdict:?}");
        assert_eq!(due[0].gate_at, ms(1000));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn disposition_follows_in_time_verdict() {
        check(Some((Verdict::Pass, 100)), Disposition::Pass);
        check(Some((Verdict::Fail, 100)), Disposition::RejectFailed);
        check(Some((Verdict::Error, 100)), Disposition::RejectError);
        check(Some((Verdict::Pass, 700)), Disposition::Pass);
    }

    #[test]
    fn missing_or_late_verdict_is_rejected_by_policy() {
        check(None, Disposition::RejectNoVerdict);
        check(Some((Verdict::Pass, 701)), Disposition::RejectNoVerdict);
    }

    #[test]
    fn late_verdict_is_reported_late_and_kept() {
        let mut tracker = tracker();
        tracker.trigger(PartId(1), ms(0));
        let fate = tracker.inspected(inspection(1, Verdict::Pass), ms(800));
        assert_eq!(fate, InspectionFate::Late);
        let due = tracker.due(ms(990));
        assert!(due[0].inspection_late);
        assert!(due[0].inspection.is_some());
    }

    #[test]
    fn verdict_for_unknown_part_is_refused() {
        let mut tracker = tracker();
        assert_eq!(
            tracker.inspected(inspection(9, Verdict::Fail), ms(0)),
            InspectionFate::UnknownPart
        );
    }

    #[test]
    fn each_part_comes_out_once_in_order() {
        let mut tracker = tracker();
        for i in 0..5 {
            tracker.trigger(PartId(i), ms(i * 100));
        }
        assert_eq!(tracker.next_due_at(), Some(ms(990)));
        let first: Vec<_> = tracker.due(ms(1200)).iter().map(|p| p.part_id.0).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(tracker.next_due_at(), Some(ms(1290)));
        let rest: Vec<_> = tracker.due(ms(5000)).iter().map(|p| p.part_id.0).collect();
        assert_eq!(rest, [3, 4]);
        assert!(tracker.due(ms(9000)).is_empty());
        assert_eq!(tracker.next_due_at(), None);
    }
}
