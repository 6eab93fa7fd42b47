//! The ISA-18.2 alarm life cycle and condition evaluation, as pure values: no clock, no I/O.
//!
//! An alarm's status is its condition (active or not) × whether it is acknowledged, under at
//! most one overlay that hides it from the operator: shelved (by an operator, timed or one
//! shot), suppressed by design, or out of service. The ISA-18.2 state shown is the overlay if
//! any, else A–D:
//!
//! | active | acknowledged | state |
//! |---|---|---|
//! | no | yes | `normal` (A) |
//! | yes | no | `active_unacknowledged` (B) |
//! | yes | yes | `active_acknowledged` (C) |
//! | no | no | `returned_unacknowledged` (D) |
//!
//! While hidden an alarm goes on following its condition (OPC UA Part 9: shelved, suppressed
//! and out-of-service alarms remain functional): an activation while hidden still needs an
//! acknowledgement once shown, a return while hidden needs none (nothing was annunciated).
//! When the overlay ends, the alarm shows as its condition says.

use chrono::{DateTime, Duration, Utc};

use crate::record::{AlarmEvent, AlarmState, ShelvingKind};

/// How an alarm is shelved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelve {
    /// Until the alarm returns to normal (OPC UA `OneShotShelved`).
    OneShot,
    /// Until a time (OPC UA `TimedShelved`).
    Timed { until: DateTime<Utc> },
}

/// What hides an alarm from the operator; at most one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    None,
    Shelved(Shelve),
    /// Suppressed by design (an engineer's decision, e.g. the equipment is not running).
    Suppressed,
    OutOfService,
}

/// One alarm's life-cycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmStatus {
    /// The condition, after on/off delays.
    pub active: bool,
    /// Nothing is left to acknowledge.
    pub acknowledged: bool,
    pub overlay: Overlay,
}

/// What can happen to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The condition became active.
    Activate,
    /// The condition returned to normal.
    Return,
    Acknowledge,
    /// Shelve once (until return) or until a time; `max` is the alarm's `MaxTimeShelved`.
    Shelve {
        one_shot: bool,
        duration: Duration,
        max: Duration,
    },
    Unshelve,
    /// A timed shelve that ended by `at`.
    ExpireShelve,
    Suppress,
    Unsuppress,
    RemoveFromService,
    ReturnToService,
}

impl Operation {
    /// Every operation, for the exhaustive tests.
    #[cfg(test)]
    pub(crate) fn all(max: Duration) -> Vec<Operation> {
        vec![
            Operation::Activate,
            Operation::Return,
            Operation::Acknowledge,
            Operation::Shelve {
                one_shot: false,
                duration: Duration::minutes(10),
                max,
            },
            Operation::Shelve {
                one_shot: true,
                duration: Duration::zero(),
                max,
            },
            Operation::Unshelve,
            Operation::ExpireShelve,
            Operation::Suppress,
            Operation::Unsuppress,
            Operation::RemoveFromService,
            Operation::ReturnToService,
        ]
    }
}

/// Why an operation does not apply to an alarm in its current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("nothing to acknowledge: the alarm is {0}")]
    NothingToAcknowledge(&'static str),
    #[error("the alarm is {0}; {1}")]
    Hidden(&'static str, &'static str),
    #[error("the condition is already {0}")]
    ConditionUnchanged(&'static str),
    #[error("a shelve of {requested_s} s is longer than this alarm's maximum of {max_s} s")]
    ShelveTooLong { requested_s: i64, max_s: i64 },
    #[error("a timed shelve needs a duration of at least 1 s")]
    ShelveTooShort,
    #[error("a one-shot shelve lasts until the alarm returns to normal; this alarm is not active")]
    OneShotNotActive,
    #[error("the alarm is already shelved; unshelve it first")]
    AlreadyShelved,
    #[error("the alarm is not shelved")]
    NotShelved,
    #[error("the shelve has not run out yet")]
    ShelveNotExpired,
    #[error("a one-shot shelve does not run out; it ends when the alarm returns to normal")]
    OneShotDoesNotExpire,
    #[error("the alarm is already suppressed")]
    AlreadySuppressed,
    #[error("the alarm is not suppressed")]
    NotSuppressed,
    #[error("the alarm is already out of service")]
    AlreadyOutOfService,
    #[error("the alarm is not out of service")]
    NotOutOfService,
}

/// A change of status, with the event that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub event: AlarmEvent,
    pub status: AlarmStatus,
}

impl AlarmStatus {
    pub const NORMAL: AlarmStatus = AlarmStatus {
        active: false,
        acknowledged: true,
        overlay: Overlay::None,
    };

    /// The ISA-18.2 state shown.
    pub fn state(&self) -> AlarmState {
        match (self.overlay, self.active, self.acknowledged) {
            (Overlay::OutOfService, ..) => AlarmState::OutOfService,
            (Overlay::Suppressed, ..) => AlarmState::Suppressed,
            (Overlay::Shelved(_), ..) => AlarmState::Shelved,
            (Overlay::None, false, true) => AlarmState::Normal,
            (Overlay::None, true, false) => AlarmState::ActiveUnacknowledged,
            (Overlay::None, true, true) => AlarmState::ActiveAcknowledged,
            (Overlay::None, false, false) => AlarmState::ReturnedUnacknowledged,
        }
    }

    /// How it is shelved, as records carry it.
    pub fn shelving(&self) -> (Option<ShelvingKind>, Option<DateTime<Utc>>) {
        match self.overlay {
            Overlay::Shelved(Shelve::OneShot) => (Some(ShelvingKind::OneShot), None),
            Overlay::Shelved(Shelve::Timed { until }) => (Some(ShelvingKind::Timed), Some(until)),
            _ => (None, None),
        }
    }

    /// The status a transition record describes (for the rebuild after a restart). A record
    /// that says `shelved` without how is read as unshelved, as OPC UA Part 9 asks of an
    /// alarm manager that restarts without its shelving state.
    pub fn from_record(
        state: AlarmState,
        active: bool,
        acknowledged: bool,
        shelving: Option<ShelvingKind>,
        shelved_until: Option<DateTime<Utc>>,
    ) -> AlarmStatus {
        let overlay = match (state, shelving, shelved_until) {
            (AlarmState::OutOfService, ..) => Overlay::OutOfService,
            (AlarmState::Suppressed, ..) => Overlay::Suppressed,
            (AlarmState::Shelved, Some(ShelvingKind::OneShot), _) => {
                Overlay::Shelved(Shelve::OneShot)
            }
            (AlarmState::Shelved, Some(ShelvingKind::Timed), Some(until)) => {
                Overlay::Shelved(Shelve::Timed { until })
            }
            _ => Overlay::None,
        };
        let mut status = AlarmStatus {
            active,
            acknowledged,
            overlay,
        };
        if state == AlarmState::Shelved && overlay == Overlay::None {
            // Unshelved for want of how it was shelved: shown as its condition says.
            status.show();
        }
        status
    }

    fn overlay_name(&self) -> &'static str {
        self.state().as_str()
    }

    /// What `operation` at `at` makes of this status, or why it does not apply.
    pub fn apply(
        &self,
        operation: Operation,
        at: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        use TransitionError as E;
        let hidden = self.overlay != Overlay::None;
        let mut next = *self;
        let event = match operation {
            Operation::Activate => {
                if self.active {
                    return Err(E::ConditionUnchanged("active"));
                }
                next.active = true;
                next.acknowledged = false;
                AlarmEvent::Activated
            }
            Operation::Return => {
                if !self.active {
                    return Err(E::ConditionUnchanged("inactive"));
                }
                next.active = false;
                match self.overlay {
                    // A one-shot shelve ends when the alarm returns; nothing was annunciated.
                    Overlay::Shelved(Shelve::OneShot) => {
                        next.overlay = Overlay::None;
                        next.acknowledged = true;
                    }
                    _ if hidden => next.acknowledged = true,
                    _ => {}
                }
                AlarmEvent::Returned
            }
            Operation::Acknowledge => {
                if hidden {
                    return Err(E::Hidden(
                        self.overlay_name(),
                        "it cannot be acknowledged until it is shown again",
                    ));
                }
                if self.acknowledged {
                    return Err(E::NothingToAcknowledge(self.overlay_name()));
                }
                next.acknowledged = true;
                AlarmEvent::Acknowledged
            }
            Operation::Shelve {
                one_shot,
                duration,
                max,
            } => {
                match self.overlay {
                    Overlay::None => {}
                    Overlay::Shelved(_) => return Err(E::AlreadyShelved),
                    _ => {
                        return Err(E::Hidden(
                            self.overlay_name(),
                            "only a shown alarm can be shelved",
                        ));
                    }
                }
                next.overlay = if one_shot {
                    if !self.active {
                        return Err(E::OneShotNotActive);
                    }
                    Overlay::Shelved(Shelve::OneShot)
                } else {
                    if duration > max {
                        return Err(E::ShelveTooLong {
                            requested_s: duration.num_seconds(),
                            max_s: max.num_seconds(),
                        });
                    }
                    if duration < Duration::seconds(1) {
                        return Err(E::ShelveTooShort);
                    }
                    Overlay::Shelved(Shelve::Timed {
                        until: at + duration,
                    })
                };
                AlarmEvent::Shelved
            }
            Operation::Unshelve => {
                if !matches!(self.overlay, Overlay::Shelved(_)) {
                    return Err(E::NotShelved);
                }
                next.show();
                AlarmEvent::Unshelved
            }
            Operation::ExpireShelve => match self.overlay {
                Overlay::Shelved(Shelve::Timed { until }) if at >= until => {
                    next.show();
                    AlarmEvent::ShelveExpired
                }
                Overlay::Shelved(Shelve::Timed { .. }) => return Err(E::ShelveNotExpired),
                Overlay::Shelved(Shelve::OneShot) => return Err(E::OneShotDoesNotExpire),
                _ => return Err(E::NotShelved),
            },
            Operation::Suppress => {
                match self.overlay {
                    Overlay::Suppressed => return Err(E::AlreadySuppressed),
                    Overlay::OutOfService => {
                        return Err(E::Hidden(self.overlay_name(), "return it to service first"));
                    }
                    // Suppression by design supersedes an operator's shelve.
                    Overlay::None | Overlay::Shelved(_) => {}
                }
                next.overlay = Overlay::Suppressed;
                AlarmEvent::Suppressed
            }
            Operation::Unsuppress => {
                if self.overlay != Overlay::Suppressed {
                    return Err(E::NotSuppressed);
                }
                next.show();
                AlarmEvent::Unsuppressed
            }
            Operation::RemoveFromService => {
                if self.overlay == Overlay::OutOfService {
                    return Err(E::AlreadyOutOfService);
                }
                next.overlay = Overlay::OutOfService;
                AlarmEvent::OutOfService
            }
            Operation::ReturnToService => {
                if self.overlay != Overlay::OutOfService {
                    return Err(E::NotOutOfService);
                }
                next.show();
                AlarmEvent::InService
            }
        };
        Ok(Transition {
            event,
            status: next,
        })
    }

    /// Ends the overlay: the alarm shows as its condition says.
    fn show(&mut self) {
        self.overlay = Overlay::None;
        self.acknowledged |= !self.active;
    }
}

/// Which limit a value is beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    High,
    Low,
}

/// High and/or low limits with a deadband: active beyond a limit, back only once the value is
/// `deadband` inside it, so a value wandering around the limit does not chatter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub high: Option<f64>,
    pub low: Option<f64>,
    pub deadband: f64,
}

impl Limits {
    /// The limit `value` is beyond, given the side the alarm is active on (`held`), if any:
    /// above `high` (or, held high, not yet below `high − deadband`); likewise below `low`.
    pub fn beyond(&self, value: f64, held: Option<Side>) -> Option<Side> {
        let high = self.high.is_some_and(|h| {
            if held == Some(Side::High) {
                value >= h - self.deadband
            } else {
                value > h
            }
        });
        let low = self.low.is_some_and(|l| {
            if held == Some(Side::Low) {
                value <= l + self.deadband
            } else {
                value < l
            }
        });
        match (high, low) {
            (true, _) => Some(Side::High),
            (_, true) => Some(Side::Low),
            _ => None,
        }
    }

    /// The side an active alarm is held on after a restart, when only its value is known.
    pub fn side_of(&self, value: f64) -> Option<Side> {
        if self.high.is_some_and(|h| value >= h - self.deadband) {
            Some(Side::High)
        } else if self.low.is_some_and(|l| value <= l + self.deadband) {
            Some(Side::Low)
        } else {
            None
        }
    }

    /// Why `value` activates or returns, for the record.
    pub fn describe(&self, value: f64, side: Option<Side>) -> String {
        match (side, self.high, self.low) {
            (Some(Side::High), Some(h), _) => format!("value {value} above high limit {h}"),
            (Some(Side::Low), _, Some(l)) => format!("value {value} below low limit {l}"),
            _ => format!("value {value} back within limits"),
        }
    }
}

/// On/off delays: a wanted change of the condition takes effect only once it has held for
/// the delay, so a short spike neither activates nor returns the alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delays {
    pub on: Duration,
    pub off: Duration,
    /// The change waiting for its delay: the wanted condition and since when.
    pending: Option<(bool, DateTime<Utc>)>,
}

impl Delays {
    pub fn new(on: Duration, off: Duration) -> Delays {
        Delays {
            on,
            off,
            pending: None,
        }
    }

    /// Given the condition now (`active`) and the one the input wants at `at`, whether the
    /// condition changes now.
    pub fn update(&mut self, active: bool, wanted: bool, at: DateTime<Utc>) -> bool {
        if wanted == active {
            self.pending = None;
            return false;
        }
        let since = match self.pending {
            Some((w, since)) if w == wanted && since <= at => since,
            _ => at,
        };
        self.pending = Some((wanted, since));
        self.poll(active, at)
    }

    /// Whether a waiting change is due at `now` (the input has not changed since).
    pub fn poll(&mut self, active: bool, now: DateTime<Utc>) -> bool {
        match self.pending {
            Some((wanted, since)) if wanted != active => {
                let delay = if wanted { self.on } else { self.off };
                if now - since >= delay {
                    self.pending = None;
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Whether a change waits for its delay.
    pub fn pending(&self) -> Option<(bool, DateTime<Utc>)> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlarmState as S;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    fn status(active: bool, acknowledged: bool, overlay: Overlay) -> AlarmStatus {
        AlarmStatus {
            active,
            acknowledged,
            overlay,
        }
    }

    /// One status of each shown state and of each overlay, active and not.
    fn every_status() -> Vec<AlarmStatus> {
        let mut all = Vec::new();
        for overlay in [
            Overlay::None,
            Overlay::Shelved(Shelve::OneShot),
            Overlay::Shelved(Shelve::Timed { until: t(600) }),
            Overlay::Suppressed,
            Overlay::OutOfService,
        ] {
            for (active, acknowledged) in
                [(false, true), (true, false), (true, true), (false, false)]
            {
                all.push(status(active, acknowledged, overlay));
            }
        }
        all
    }

    const MAX: i64 = 3600;

    fn op_name(op: Operation) -> &'static str {
        match op {
            Operation::Activate => "activate",
            Operation::Return => "return",
            Operation::Acknowledge => "acknowledge",
            Operation::Shelve { one_shot: true, .. } => "shelve_one_shot",
            Operation::Shelve { .. } => "shelve_10_min",
            Operation::Unshelve => "unshelve",
            Operation::ExpireShelve => "expire_shelve",
            Operation::Suppress => "suppress",
            Operation::Unsuppress => "unsuppress",
            Operation::RemoveFromService => "remove_from_service",
            Operation::ReturnToService => "return_to_service",
        }
    }

    fn overlay_name(o: Overlay) -> &'static str {
        match o {
            Overlay::None => "-",
            Overlay::Shelved(Shelve::OneShot) => "one_shot",
            Overlay::Shelved(Shelve::Timed { .. }) => "timed",
            Overlay::Suppressed => "suppressed",
            Overlay::OutOfService => "oos",
        }
    }

    /// The whole table, every status × every operation, written out: `state → result` where
    /// the result is the new state (and overlay) or the error. Read it as the specification.
    #[test]
    fn every_state_and_every_operation() {
        // Operations happen at t(700): after the timed shelve's end (t(600)).
        let mut table = String::new();
        for s in every_status() {
            for op in Operation::all(Duration::seconds(MAX)) {
                let result = match s.apply(op, t(700)) {
                    Ok(tr) => format!(
                        "{:?} -> {} [{}{}]",
                        tr.event,
                        tr.status.state().as_str(),
                        if tr.status.active {
                            "active"
                        } else {
                            "inactive"
                        },
                        if tr.status.acknowledged { ",acked" } else { "" }
                    ),
                    Err(e) => format!("error: {e}"),
                };
                table.push_str(&format!(
                    "{} {}{} | {} | {result}\n",
                    overlay_name(s.overlay),
                    if s.active { "active" } else { "inactive" },
                    if s.acknowledged { ",acked" } else { "" },
                    op_name(op),
                ));
            }
        }
        let expected = include_str!("state_table.txt");
        if table != expected {
            // Print the table as it is, to compare line by line.
            println!("{table}");
        }
        assert_eq!(table, expected);
    }

    #[test]
    fn the_isa_cycle_a_b_c_a_and_a_b_d_a() {
        let at = t(0);
        let apply = |s: AlarmStatus, op| s.apply(op, at).expect("legal").status;
        let b = apply(AlarmStatus::NORMAL, Operation::Activate);
        assert_eq!(b.state(), S::ActiveUnacknowledged);
        let c = apply(b, Operation::Acknowledge);
        assert_eq!(c.state(), S::ActiveAcknowledged);
        assert_eq!(apply(c, Operation::Return).state(), S::Normal);
        let d = apply(b, Operation::Return);
        assert_eq!(d.state(), S::ReturnedUnacknowledged);
        assert_eq!(apply(d, Operation::Acknowledge).state(), S::Normal);
        assert_eq!(
            apply(d, Operation::Activate).state(),
            S::ActiveUnacknowledged
        );
    }

    #[test]
    fn acknowledging_a_normal_alarm_says_there_is_nothing_to_acknowledge() {
        let error = AlarmStatus::NORMAL
            .apply(Operation::Acknowledge, t(0))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "nothing to acknowledge: the alarm is normal"
        );
    }

    #[test]
    fn a_shelve_longer_than_the_maximum_names_the_maximum() {
        let active = status(true, false, Overlay::None);
        let error = active
            .apply(
                Operation::Shelve {
                    one_shot: false,
                    duration: Duration::seconds(7200),
                    max: Duration::seconds(3600),
                },
                t(0),
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "a shelve of 7200 s is longer than this alarm's maximum of 3600 s"
        );
        let exactly = active.apply(
            Operation::Shelve {
                one_shot: false,
                duration: Duration::seconds(3600),
                max: Duration::seconds(3600),
            },
            t(0),
        );
        assert_eq!(
            exactly
                .expect("the maximum itself is allowed")
                .status
                .overlay,
            Overlay::Shelved(Shelve::Timed { until: t(3600) })
        );
    }

    #[test]
    fn a_timed_shelve_expires_at_its_end_and_not_before() {
        let shelved = status(
            true,
            false,
            Overlay::Shelved(Shelve::Timed { until: t(60) }),
        );
        assert_eq!(
            shelved.apply(Operation::ExpireShelve, t(59)),
            Err(TransitionError::ShelveNotExpired)
        );
        let shown = shelved.apply(Operation::ExpireShelve, t(60)).expect("due");
        assert_eq!(shown.event, AlarmEvent::ShelveExpired);
        assert_eq!(shown.status.state(), S::ActiveUnacknowledged);
    }

    #[test]
    fn a_one_shot_shelve_ends_when_the_alarm_returns() {
        let shelved = status(true, false, Overlay::Shelved(Shelve::OneShot));
        let returned = shelved.apply(Operation::Return, t(0)).expect("legal");
        assert_eq!(returned.status, AlarmStatus::NORMAL);
        // A timed shelve stays through a return.
        let timed = status(
            true,
            false,
            Overlay::Shelved(Shelve::Timed { until: t(60) }),
        );
        let returned = timed.apply(Operation::Return, t(0)).expect("legal").status;
        assert_eq!(returned.state(), S::Shelved);
        assert_eq!(
            returned
                .apply(Operation::Unshelve, t(1))
                .expect("legal")
                .status,
            AlarmStatus::NORMAL,
            "a return while hidden leaves nothing to acknowledge"
        );
    }

    #[test]
    fn records_rebuild_the_status_they_describe() {
        for s in every_status() {
            let (shelving, until) = s.shelving();
            let rebuilt =
                AlarmStatus::from_record(s.state(), s.active, s.acknowledged, shelving, until);
            assert_eq!(rebuilt, s);
        }
        // `shelved` without how: unshelved, shown as the condition says.
        let rebuilt = AlarmStatus::from_record(S::Shelved, true, false, None, None);
        assert_eq!(rebuilt.state(), S::ActiveUnacknowledged);
        let rebuilt = AlarmStatus::from_record(S::Shelved, false, false, None, None);
        assert_eq!(rebuilt.state(), S::Normal);
    }

    #[test]
    fn limits_activate_beyond_and_return_inside_the_deadband() {
        let limits = Limits {
            high: Some(100.0),
            low: Some(10.0),
            deadband: 2.0,
        };
        assert_eq!(
            limits.beyond(100.0, None),
            None,
            "at the limit is not beyond"
        );
        assert_eq!(limits.beyond(100.1, None), Some(Side::High));
        assert_eq!(limits.beyond(99.0, Some(Side::High)), Some(Side::High));
        assert_eq!(limits.beyond(98.0, Some(Side::High)), Some(Side::High));
        assert_eq!(limits.beyond(97.9, Some(Side::High)), None);
        assert_eq!(limits.beyond(9.9, None), Some(Side::Low));
        assert_eq!(limits.beyond(11.5, Some(Side::Low)), Some(Side::Low));
        assert_eq!(limits.beyond(12.1, Some(Side::Low)), None);
        // Held high, a value below low is beyond low.
        assert_eq!(limits.beyond(5.0, Some(Side::High)), Some(Side::Low));
        assert_eq!(limits.side_of(99.0), Some(Side::High));
        assert_eq!(limits.side_of(50.0), None);
        assert_eq!(
            limits.describe(101.0, Some(Side::High)),
            "value 101 above high limit 100"
        );
    }

    #[test]
    fn on_delay_needs_the_condition_to_hold_and_off_delay_likewise() {
        let mut delays = Delays::new(Duration::seconds(5), Duration::seconds(10));
        // Wanted from t=0; a gap at t=3 restarts the wait.
        assert!(!delays.update(false, true, t(0)));
        assert!(!delays.update(false, true, t(2)));
        assert!(!delays.update(false, false, t(3)));
        assert_eq!(delays.pending(), None);
        assert!(!delays.update(false, true, t(4)));
        assert!(!delays.poll(false, t(8)));
        assert!(delays.poll(false, t(9)), "held 5 s since t=4");
        // Return after 10 s of normal; a relapse within them keeps it active.
        assert!(!delays.update(true, false, t(20)));
        assert!(!delays.update(true, true, t(25)));
        assert!(!delays.update(true, false, t(26)));
        assert!(!delays.update(true, false, t(35)));
        assert!(delays.update(true, false, t(36)));
        assert_eq!(delays.pending(), None);
        // No delays: at once.
        let mut none = Delays::new(Duration::zero(), Duration::zero());
        assert!(none.update(false, true, t(0)));
        assert!(none.update(true, false, t(0)));
    }
}
