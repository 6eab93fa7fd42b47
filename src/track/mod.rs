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
//! Under encoder tracking ([`Belt::Encoder`]) the same marks are encoder counts: the gate is
//! `travel_counts` past the count at the trigger, and the fire and deadline times are predicted
//! from the belt's speed now, so a belt that stops holds its parts' commands back and one that
//! speeds up brings them forward. A part the belt carried to the diverter while the encoder
//! could not be read, or whose place was lost with a counter that started again, comes out
//! *missed*: no command is sent, and the PLC diverts it (no command is no PASS).
//!
//! Invariant: every triggered part comes out of `due` exactly once, and a part without an
//! in-time passing verdict never comes out as [`Disposition::Pass`]. A verdict that comes
//! after its part came out ([`InspectionFate::AfterDispatch`]) changes nothing: the part has
//! gone to the gate with the disposition it had then (without a verdict, the fail-safe
//! reject), and that is what is recorded.

pub mod belt;

use std::collections::{BTreeMap, VecDeque};

pub use self::belt::{Belt, BeltView, EncoderTrack, SharedEncoder};
use crate::config::LineTiming;
use crate::part::{Disposition, Inspection, PartId, StationTime, Verdict};

/// A part whose gate command is due now.
#[derive(Debug, Clone)]
pub struct DuePart {
    pub part_id: PartId,
    pub captured_at: StationTime,
    /// When it reaches the diverter (predicted, under encoder tracking).
    pub gate_at: StationTime,
    pub disposition: Disposition,
    pub inspection: Option<Inspection>,
    /// The inspection arrived after the verdict deadline and was not used.
    pub inspection_late: bool,
    /// Why no command can be sent for it any more (encoder tracking lost its place): the PLC
    /// diverts it, and it is reported as rejected by policy.
    pub missed: Option<String>,
    /// Encoder tracking: where it reaches the diverter, for the gate task's last check that
    /// its command lands inside the PLC's window in counts.
    pub place: Option<GatePlace>,
}

/// What the tracker made of an inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectionFate {
    /// In time: it decides the part's disposition.
    Accepted,
    /// After the verdict deadline: kept for the record, the part is rejected by policy.
    Late,
    /// For a part already dispatched: its gate command (the fail-safe reject, if no verdict
    /// was in time) has gone out and its outcome is settled. Not used: the part's record keeps
    /// the disposition it went with, and a PASS this late must not make it a pass.
    AfterDispatch,
    /// For a part the tracker does not know: never triggered, or dispatched longer ago than
    /// the last [`REMEMBER_DISPATCHED`] parts.
    UnknownPart,
}

/// How many of the latest dispatched parts the tracker remembers, to tell a verdict that
/// comes after its part was dispatched from one for a part it never knew. A verdict that late
/// is normally a few parts behind; the bound keeps the memory fixed however long the line runs.
pub const REMEMBER_DISPATCHED: usize = 1024;

/// Where a part reaches the diverter, on the belt's axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatePlace {
    /// The unwrapped encoder count (under time tracking, microseconds of station time).
    pub position: i64,
    /// The encoder's epoch the position belongs to.
    pub epoch: u64,
}

#[derive(Debug)]
struct TrackedPart {
    captured_at: StationTime,
    /// `None`: the encoder could not be read at its capture.
    gate: Option<GatePlace>,
    inspection: Option<Inspection>,
    inspection_late: bool,
}

/// Where one part stands at a given time.
enum PartState {
    /// Not due; look again at this time (`None`: when the belt moves).
    Waiting(Option<StationTime>),
    /// Its command is due; it reaches the diverter at this time.
    Fire(StationTime),
    /// No command can make its window any more.
    Missed(&'static str),
}

/// Tracks every part between its trigger and the gate.
#[derive(Debug)]
pub struct PartTracker {
    timing: LineTiming,
    belt: Belt,
    /// Ordered by id; ids grow with capture time, so the first entry is due first.
    parts: BTreeMap<PartId, TrackedPart>,
    /// The latest parts dispatched, oldest first, at most [`REMEMBER_DISPATCHED`].
    dispatched: VecDeque<PartId>,
}

fn micros(t: StationTime) -> i64 {
    t.0.as_micros() as i64
}

impl PartTracker {
    /// A tracker for a line with this timing, tracking by time.
    pub fn new(timing: LineTiming) -> PartTracker {
        PartTracker::on_belt(timing, Belt::Clock)
    }

    /// A tracker that knows where the belt is from `belt`.
    pub fn on_belt(timing: LineTiming, belt: Belt) -> PartTracker {
        PartTracker {
            timing,
            belt,
            parts: BTreeMap::new(),
            dispatched: VecDeque::new(),
        }
    }

    /// Parts between trigger and gate.
    pub fn in_flight(&self) -> usize {
        self.parts.len()
    }

    /// A part was captured at `captured_at`. Under encoder tracking it is placed by the count
    /// then; when no reading covers that time yet (the reading after it has not come in), it
    /// is placed at a later look, once one does.
    pub fn trigger(&mut self, part_id: PartId, captured_at: StationTime) {
        let gate = self.place(captured_at);
        self.parts.insert(
            part_id,
            TrackedPart {
                captured_at,
                gate,
                inspection: None,
                inspection_late: false,
            },
        );
    }

    /// Places the parts not yet placed, where the readings now allow.
    fn place_waiting(&mut self) {
        if matches!(self.belt, Belt::Clock) || self.parts.values().all(|p| p.gate.is_some()) {
            return;
        }
        let waiting: Vec<(PartId, StationTime)> = self
            .parts
            .iter()
            .filter(|(_, part)| part.gate.is_none())
            .map(|(id, part)| (*id, part.captured_at))
            .collect();
        for (id, captured_at) in waiting {
            let gate = self.place(captured_at);
            if let Some(part) = self.parts.get_mut(&id) {
                part.gate = gate;
            }
        }
    }

    /// Where a part captured at `captured_at` reaches the diverter, if the belt says.
    fn place(&self, captured_at: StationTime) -> Option<GatePlace> {
        match &self.belt {
            Belt::Clock => Some(GatePlace {
                position: micros(captured_at.after(self.timing.travel)),
                epoch: 0,
            }),
            Belt::Encoder {
                track,
                travel_counts,
                ..
            } => {
                let track = belt::lock(track);
                track.position_at(captured_at).map(|position| GatePlace {
                    position: position.saturating_add(*travel_counts),
                    epoch: track.epoch(),
                })
            }
        }
    }

    /// The inspect stage finished a part at `now`.
    pub fn inspected(&mut self, inspection: Inspection, now: StationTime) -> InspectionFate {
        self.place_waiting();
        let view = self.view(now);
        let timing = self.timing;
        let Some(part) = self.parts.get_mut(&inspection.part_id) else {
            // Only on this path, and at most REMEMBER_DISPATCHED ids: a linear look is cheap.
            return if self.dispatched.contains(&inspection.part_id) {
                InspectionFate::AfterDispatch
            } else {
                InspectionFate::UnknownPart
            };
        };
        let nominal_deadline = part
            .captured_at
            .after(timing.travel)
            .before(timing.verdict_margin);
        let late = match (&self.belt, part.gate, view) {
            (Belt::Clock, _, _) | (_, None, _) => now > nominal_deadline,
            // The verdict must be in `verdict_margin` before the part reaches the diverter at
            // the belt's speed now; unknown while the encoder cannot be read.
            (Belt::Encoder { .. }, Some(gate), Some((view, epoch))) => {
                gate.epoch == epoch
                    && view.position_at(now.after(timing.verdict_margin)) >= gate.position
            }
            (Belt::Encoder { .. }, Some(_), None) => false,
        };
        part.inspection = Some(inspection);
        part.inspection_late = late;
        if late {
            InspectionFate::Late
        } else {
            InspectionFate::Accepted
        }
    }

    /// When to look at the parts again, if any part is in flight: the next fire time under
    /// time tracking; under encoder tracking the predicted one, but at least every poll.
    pub fn next_due_at(&self, now: StationTime) -> Option<StationTime> {
        let view = self.view(now);
        let mut next: Option<StationTime> = None;
        for part in self.parts.values() {
            let at = match self.state(part, now, view) {
                PartState::Fire(_) | PartState::Missed(_) => now,
                PartState::Waiting(Some(at)) => at,
                PartState::Waiting(None) => continue,
            };
            next = Some(next.map_or(at, |next| next.min(at)));
        }
        if let Belt::Encoder { poll, .. } = &self.belt
            && !self.parts.is_empty()
        {
            let poll_again = now.after(*poll);
            next = Some(next.map_or(poll_again, |next| next.min(poll_again)));
        }
        next
    }

    /// Removes and returns every part whose gate command is due at `now`, oldest first, and
    /// every part missed.
    pub fn due(&mut self, now: StationTime) -> Vec<DuePart> {
        self.place_waiting();
        let view = self.view(now);
        let settled: Vec<(PartId, StationTime, Option<String>)> = self
            .parts
            .iter()
            .filter_map(|(id, part)| match self.state(part, now, view) {
                PartState::Waiting(_) => None,
                PartState::Fire(gate_at) => Some((*id, gate_at, None)),
                PartState::Missed(why) => Some((*id, now, Some(why.to_owned()))),
            })
            .collect();
        settled
            .into_iter()
            .filter_map(|(part_id, gate_at, missed)| {
                let part = self.dispatch(part_id)?;
                let mut due = self.settle(part_id, part, gate_at);
                due.missed = missed;
                Some(due)
            })
            .collect()
    }

    /// Removes and returns one part now, settled with what is known of it: server mode
    /// settles each part as soon as its verdict is in, since the PLC times the gate.
    pub fn take(&mut self, part_id: PartId) -> Option<DuePart> {
        let part = self.dispatch(part_id)?;
        let gate_at = part.captured_at.after(self.timing.travel);
        Some(self.settle(part_id, part, gate_at))
    }

    /// Removes and returns every part still in flight as missed for `why`: the line stops
    /// while the encoder cannot be read, so no command can be timed for them.
    pub fn give_up(&mut self, now: StationTime, why: &str) -> Vec<DuePart> {
        let parts = std::mem::take(&mut self.parts);
        for part_id in parts.keys() {
            self.remember_dispatched(*part_id);
        }
        parts
            .into_iter()
            .map(|(part_id, part)| {
                let mut due = self.settle(part_id, part, now);
                due.missed = Some(why.to_owned());
                due
            })
            .collect()
    }

    /// Takes a part out to dispatch it, remembering that it went.
    fn dispatch(&mut self, part_id: PartId) -> Option<TrackedPart> {
        let part = self.parts.remove(&part_id)?;
        self.remember_dispatched(part_id);
        Some(part)
    }

    fn remember_dispatched(&mut self, part_id: PartId) {
        if self.dispatched.len() >= REMEMBER_DISPATCHED {
            self.dispatched.pop_front();
        }
        self.dispatched.push_back(part_id);
    }

    /// Whether the belt's position is known now (always, under time tracking).
    pub fn belt_known(&self, now: StationTime) -> bool {
        match &self.belt {
            Belt::Clock => true,
            Belt::Encoder { .. } => self.view(now).is_some(),
        }
    }

    /// The encoder's view now and its epoch; `None` under time tracking or while stale.
    fn view(&self, now: StationTime) -> Option<(BeltView, u64)> {
        match &self.belt {
            Belt::Clock => None,
            Belt::Encoder { track, .. } => {
                let track = belt::lock(track);
                track.view(now).map(|view| (view, track.epoch()))
            }
        }
    }

    fn state(
        &self,
        part: &TrackedPart,
        now: StationTime,
        view: Option<(BeltView, u64)>,
    ) -> PartState {
        let lead = self.timing.actuation_lead;
        let nominal_gate = part.captured_at.after(self.timing.travel);
        match (&self.belt, part.gate) {
            (Belt::Clock, _) => {
                let fire_at = nominal_gate.before(lead);
                if now >= fire_at {
                    PartState::Fire(nominal_gate)
                } else {
                    PartState::Waiting(Some(fire_at))
                }
            }
            (Belt::Encoder { .. }, None) => {
                // Never placed: reported when it would have reached the gate at nominal speed.
                let fire_at = nominal_gate.before(lead);
                if now >= fire_at {
                    PartState::Missed("the encoder could not be read when the part was captured")
                } else {
                    PartState::Waiting(Some(fire_at))
                }
            }
            (Belt::Encoder { .. }, Some(gate)) => {
                let Some((view, epoch)) = view else {
                    return PartState::Waiting(None);
                };
                if gate.epoch != epoch {
                    return PartState::Missed(
                        "the PLC's encoder count started again (a PLC restart): the part's \
                         place on the belt is lost",
                    );
                }
                if view.position_at(now) >= gate.position {
                    return PartState::Missed(
                        "the belt carried the part to the diverter while the encoder could \
                         not be read",
                    );
                }
                if view.position_at(now.after(lead)) >= gate.position {
                    PartState::Fire(view.time_at(gate.position).unwrap_or(now.after(lead)))
                } else {
                    PartState::Waiting(view.time_at(gate.position).map(|at| at.before(lead)))
                }
            }
        }
    }

    fn settle(&self, part_id: PartId, part: TrackedPart, gate_at: StationTime) -> DuePart {
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
            gate_at,
            disposition,
            inspection: part.inspection,
            inspection_late: part.inspection_late,
            missed: None,
            place: match self.belt {
                Belt::Clock => None,
                Belt::Encoder { .. } => part.gate,
            },
        }
    }
}

#[cfg(test)]
mod tests {
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
        Inspection::judged(part, ms(0), verdict, 0.5)
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

    /// A verdict that comes after its part was dispatched (the fail-safe reject went out) is
    /// told apart from one for a part never seen, so that the station can count it, and it
    /// changes nothing: the part does not come out again, so a late PASS cannot make it a pass.
    #[test]
    fn a_verdict_after_its_part_was_dispatched_is_told_apart_and_changes_nothing() {
        let mut tracker = tracker();
        tracker.trigger(PartId(1), ms(0));
        let due = tracker.due(ms(990));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].disposition, Disposition::RejectNoVerdict);
        assert_eq!(
            tracker.inspected(inspection(1, Verdict::Pass), ms(995)),
            InspectionFate::AfterDispatch
        );
        assert!(
            tracker.due(ms(5000)).is_empty(),
            "dispatched once, with its fail-safe disposition"
        );
        assert_eq!(tracker.next_due_at(ms(5000)), None);
        assert_eq!(tracker.in_flight(), 0);
        // A part never triggered is another matter.
        assert_eq!(
            tracker.inspected(inspection(9, Verdict::Pass), ms(995)),
            InspectionFate::UnknownPart
        );
        // Settled on its verdict (server mode) or given up at a stop: dispatched too.
        tracker.trigger(PartId(2), ms(1000));
        tracker.trigger(PartId(3), ms(1000));
        assert!(tracker.take(PartId(2)).is_some());
        assert_eq!(tracker.give_up(ms(1001), "stopping").len(), 1);
        for id in [2, 3] {
            assert_eq!(
                tracker.inspected(inspection(id, Verdict::Pass), ms(1002)),
                InspectionFate::AfterDispatch,
                "part {id}"
            );
        }
        assert_eq!(tracker.in_flight(), 0);
        // Only the latest are remembered: the memory stays bounded on a line that runs for
        // years, and a verdict that late for part 1 reads as for a part not known.
        let more = REMEMBER_DISPATCHED as u64;
        for id in 10..10 + more {
            tracker.trigger(PartId(id), ms(2000));
        }
        assert_eq!(tracker.due(ms(3000)).len(), REMEMBER_DISPATCHED);
        assert_eq!(
            tracker.inspected(inspection(1, Verdict::Pass), ms(3000)),
            InspectionFate::UnknownPart
        );
        assert_eq!(
            tracker.inspected(inspection(9 + more, Verdict::Pass), ms(3000)),
            InspectionFate::AfterDispatch
        );
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
        assert_eq!(tracker.next_due_at(ms(0)), Some(ms(990)));
        let first: Vec<_> = tracker.due(ms(1200)).iter().map(|p| p.part_id.0).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(tracker.next_due_at(ms(1200)), Some(ms(1290)));
        let rest: Vec<_> = tracker.due(ms(5000)).iter().map(|p| p.part_id.0).collect();
        assert_eq!(rest, [3, 4]);
        assert!(tracker.due(ms(9000)).is_empty());
        assert_eq!(tracker.next_due_at(ms(9000)), None);
    }

    /// Encoder tracking: 2000 counts from camera to diverter, verdicts due 300 ms before the
    /// diverter, commands leaving 10 ms before; readings go stale after 50 ms.
    fn encoder_tracker() -> (PartTracker, SharedEncoder) {
        let track = EncoderTrack::shared(Duration::from_millis(50));
        let belt = Belt::Encoder {
            track: track.clone(),
            travel_counts: 2000,
            poll: Duration::from_millis(2),
        };
        (PartTracker::on_belt(tracker().timing, belt), track)
    }

    /// Moves the belt from `from` ms to `to` ms at `counts_per_ms`, a reading every 2 ms,
    /// starting at `count`; returns the count at `to`.
    fn run_belt(track: &SharedEncoder, from: u64, to: u64, count: u32, counts_per_ms: u32) -> u32 {
        let mut count = count;
        for t in (from..=to).step_by(2) {
            belt::lock(track).record(ms(t), count);
            if t < to {
                count = count.wrapping_add(2 * counts_per_ms);
            }
        }
        count
    }

    #[test]
    fn with_an_encoder_a_stopped_belt_holds_the_command_and_a_faster_one_brings_it_forward() {
        let (mut tracker, track) = encoder_tracker();
        // 2 counts per ms: the part is captured at count 1000 (t = 100 ms) and reaches the
        // diverter at count 3000.
        let count = run_belt(&track, 0, 100, 800, 2);
        assert_eq!(count, 1000);
        tracker.trigger(PartId(1), ms(100));
        tracker.inspected(inspection(1, Verdict::Pass), ms(150));
        // The belt stops at t = 400 (count 1600) for two seconds: nothing falls due.
        let count = run_belt(&track, 100, 400, count, 2);
        let count = run_belt(&track, 400, 2400, count, 0);
        assert!(tracker.due(ms(2400)).is_empty());
        assert_eq!(
            tracker.next_due_at(ms(2400)),
            Some(ms(2402)),
            "looks again each poll"
        );
        // It restarts at 10 counts per ms: 1400 counts to go, 140 ms at the new speed.
        let count = run_belt(&track, 2400, 2520, count, 10);
        assert!(tracker.due(ms(2520)).is_empty());
        assert_eq!(
            tracker.next_due_at(ms(2520)),
            Some(ms(2522)),
            "still each poll"
        );
        let count = run_belt(&track, 2520, 2528, count, 10);
        assert!(
            tracker.due(ms(2528)).is_empty(),
            "the diverter is 12 ms away"
        );
        run_belt(&track, 2528, 2530, count, 10);
        let due = tracker.due(ms(2530));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].disposition,
            Disposition::Pass,
            "the stop made no verdict late"
        );
        assert_eq!(due[0].gate_at, ms(2540));
        assert_eq!(due[0].missed, None);
    }

    #[test]
    fn with_an_encoder_a_verdict_is_late_by_the_belt_not_the_clock() {
        let (mut tracker, track) = encoder_tracker();
        let count = run_belt(&track, 0, 10, 0, 10);
        tracker.trigger(PartId(1), ms(10));
        // At 10 counts per ms the diverter is 200 ms away: the deadline is already past.
        assert_eq!(
            tracker.inspected(inspection(1, Verdict::Pass), ms(10)),
            InspectionFate::Late
        );
        tracker.trigger(PartId(2), ms(10));
        run_belt(&track, 10, 5000, count, 0);
        assert_eq!(
            tracker.inspected(inspection(2, Verdict::Pass), ms(5000)),
            InspectionFate::Accepted,
            "5 s later, but the belt stood still"
        );
    }

    #[test]
    fn with_an_encoder_a_part_whose_place_is_lost_is_missed_and_never_fired() {
        let (mut tracker, track) = encoder_tracker();
        let count = run_belt(&track, 0, 10, 0, 10);
        tracker.trigger(PartId(1), ms(10));
        tracker.trigger(PartId(2), ms(10));
        // No reading for 300 ms: stale, nothing fires, though the belt may be moving.
        assert!(tracker.due(ms(100)).is_empty());
        assert!(!tracker.belt_known(ms(100)));
        // The next reading shows the belt went 3000 counts on: part 1 is past the diverter.
        belt::lock(&track).record(ms(310), count.wrapping_add(3000));
        let due = tracker.due(ms(310));
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.missed.is_some()));
        // A counter that starts again loses the place of every part in flight.
        run_belt(&track, 312, 400, count.wrapping_add(3002), 1);
        tracker.trigger(PartId(3), ms(400));
        assert!(tracker.due(ms(400)).is_empty());
        belt::lock(&track).record(ms(402), 5);
        let due = tracker.due(ms(402));
        assert_eq!(due.len(), 1);
        assert!(
            due[0]
                .missed
                .as_deref()
                .is_some_and(|m| m.contains("started again"))
        );
        // Captured while the encoder was stale: reported missed at its nominal fire time.
        tracker.trigger(PartId(4), ms(1000));
        assert!(tracker.due(ms(1989)).is_empty());
        let due = tracker.due(ms(1990));
        assert_eq!(due.len(), 1);
        assert!(due[0].missed.is_some());
        // And the line stopping with the encoder unknown gives up the rest.
        tracker.trigger(PartId(5), ms(2000));
        let given_up = tracker.give_up(ms(2001), "stopping");
        assert_eq!(given_up.len(), 1);
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn with_an_encoder_a_capture_is_placed_once_the_reading_after_it_comes_in() {
        let (mut tracker, track) = encoder_tracker();
        run_belt(&track, 0, 10, 0, 10);
        // The poller lags: 60 ms without a reading when the part is captured.
        tracker.trigger(PartId(1), ms(70));
        belt::lock(&track).record(ms(80), 800);
        // Placed between the readings at 10 ms (100) and 80 ms (800): 700, the gate 2700.
        assert!(tracker.due(ms(80)).is_empty());
        let count = run_belt(&track, 80, 258, 800, 10);
        assert!(tracker.due(ms(258)).is_empty());
        run_belt(&track, 258, 260, count, 10);
        let due = tracker.due(ms(260));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].missed, None);
        assert_eq!(due[0].gate_at, ms(270));
    }
}
