//! The PLC program of `firmware-io/plc/linesight_gate.st`, ported rule by rule (R1–R11 of
//! `firmware-io/plc-program.md`, whose table maps each rule to the code here).
//!
//! Like the ST program it is a scan: [`PlcProgram::scan`] reads an image of its inputs (the
//! registers and coil the station writes, the gate photo-eye, the operator's reset button),
//! updates its state and returns what the outputs did. It does no I/O and reads no clock, so
//! its tests drive it scan by scan; the simulated PLC ([`super::PlcSimulator`]) runs it every
//! millisecond on the real Modbus registers.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::actuate::{
    GATE_COMMAND_LEN, GateCommandWords, GateVerdict, PLC_STATUS_LEN, PlcProgramSettings,
    PlcTracking, RegisterMap,
};

/// What the program reads at the start of a scan.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputImage {
    /// `HR[heartbeat]`.
    pub heartbeat: u16,
    /// `HR[station_state]`.
    pub station_state: u16,
    /// `HR[gate_command] .. +4`.
    pub gate_command: [u16; GATE_COMMAND_LEN as usize],
    /// `coil[halt_line]`.
    pub halt_coil: bool,
    /// The gate photo-eye: TRUE while a part is in front of it.
    pub gate_eye: bool,
    /// The operator's reset push-button.
    pub operator_reset: bool,
    /// The belt encoder's counter (free running, wraps).
    pub encoder: u32,
}

/// Why a part went the way it did at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionReason {
    /// Its command said PASS.
    Pass,
    /// Its command carried a verdict other than PASS.
    Verdict,
    /// No command arrived in its window.
    NoCommand,
    /// The station's heartbeat stopped (R1).
    WatchdogExpired,
    /// The station said it stopped, or never said it runs (R2).
    StationStopped,
}

/// One part decided at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GateDecision {
    /// When the gate eye saw the part.
    pub eye_at: Duration,
    /// When it was decided (at the diverter).
    pub decided_at: Duration,
    /// Its command's part id and verdict, when one matched.
    pub part_id: Option<u32>,
    pub verdict: Option<u16>,
    /// Whether the diverter pushed it to the reject lane.
    pub diverted: bool,
    pub reason: DecisionReason,
}

/// A gate command taken into the tracking FIFO (R4).
#[derive(Debug, Clone, Copy)]
struct TakenCommand {
    command: GateCommandWords,
    arrived_at: Duration,
    /// The encoder's count when it arrived.
    arrived_count: u32,
}

/// A part between the gate eye and the diverter (R5): when and at which count the eye saw it.
#[derive(Debug, Clone, Copy)]
struct PendingPart {
    eye_at: Duration,
    eye_count: u32,
}

/// Counts from `from` to `to` on a wrapping counter (`UDINT_TO_DINT(to - from)` in the ST).
fn counts_since(from: u32, to: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

/// How far `part_id` is ahead of `expected` on the wrapping u32 id (`F_PartIdsAhead` in the
/// ST): negative for a part before the expected one.
fn part_ids_ahead(expected: u32, part_id: u32) -> i64 {
    counts_since(expected, part_id)
}

/// What changed in one scan, for the simulator's logs.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// New commands this scan (R4), with whether they were queued (not while faulted).
    pub taken: Vec<(GateCommandWords, Duration, bool)>,
    /// Parts decided this scan (R6).
    pub decided: Vec<GateDecision>,
    /// The watchdog expired this scan (R1).
    pub watchdog_tripped: bool,
    /// The halt latch was set this scan (R8).
    pub halt_latched: bool,
}

/// The program's state between scans.
#[derive(Debug)]
pub struct PlcProgram {
    settings: PlcProgramSettings,
    map: RegisterMap,
    // R1
    last_heartbeat: Option<u16>,
    // The TON's start: the first scan in which the heartbeat had not changed.
    unchanged_since: Option<Duration>,
    watchdog_expired: bool,
    // R2, R3
    station_stopped: bool,
    fault: bool,
    // R4
    last_sequence: Option<u16>,
    fifo: VecDeque<TakenCommand>,
    overrun_seen: bool,
    // R5: the parts between the eye and the diverter.
    pending: VecDeque<PendingPart>,
    eye_before: bool,
    encoder: u32,
    // R10: where the program started, and whether it still holds the gate.
    started: Option<(Duration, u32)>,
    start_hold: bool,
    // R11: the id the next part decided must carry, once a command has set it; whether a
    // command for a part already decided was dropped (status b6).
    expected_part_id: Option<u32>,
    id_behind_seen: bool,
    // R7
    gate_until: Option<Duration>,
    passed: u32,
    diverted: u32,
    unmatched: u32,
    // R8
    halt_latched: bool,
    halt_coil_before: bool,
    reset_before: bool,
    // R9
    plc_heartbeat: u16,
    next_beat_at: Duration,
}

impl PlcProgram {
    /// The program as it starts: the station is not yet seen running, so it diverts.
    pub fn new(map: RegisterMap) -> PlcProgram {
        PlcProgram {
            settings: map.plc_program,
            map,
            last_heartbeat: None,
            unchanged_since: None,
            watchdog_expired: false,
            station_stopped: true,
            fault: true,
            last_sequence: None,
            fifo: VecDeque::new(),
            overrun_seen: false,
            pending: VecDeque::new(),
            eye_before: false,
            encoder: 0,
            started: None,
            start_hold: true,
            expected_part_id: None,
            id_behind_seen: false,
            gate_until: None,
            passed: 0,
            diverted: 0,
            unmatched: 0,
            halt_latched: false,
            halt_coil_before: false,
            reset_before: false,
            plc_heartbeat: 0,
            next_beat_at: Duration::ZERO,
        }
    }

    /// One scan at time `now` (monotonic, since the PLC started).
    pub fn scan(&mut self, now: Duration, image: &InputImage) -> ScanOutcome {
        self.encoder = image.encoder;
        self.start_hold(now);
        let mut outcome = ScanOutcome {
            watchdog_tripped: self.watchdog(now, image.heartbeat),
            ..ScanOutcome::default()
        };
        // R2: anything but 1 is stopped, so a register nobody wrote (0) is safe.
        self.station_stopped = image.station_state != 1;
        // R3
        self.fault = self.watchdog_expired || self.station_stopped;
        // R11: a station that was lost or stopped may come back with other part ids.
        if self.fault {
            self.expected_part_id = None;
        }
        if let Some(taken) = self.take_command(now, &image.gate_command) {
            outcome.taken.push(taken);
        }
        // R5: a rising edge of the eye is a part.
        if image.gate_eye && !self.eye_before {
            // A full pending queue (more parts between eye and diverter than a real line can
            // hold) decides its oldest part now, without a command: divert.
            if self.pending.len() >= self.settings.fifo_depth
                && let Some(oldest) = self.pending.pop_front()
            {
                outcome.decided.push(self.decide(now, oldest.eye_at, None));
            }
            self.pending.push_back(PendingPart {
                eye_at: now,
                eye_count: image.encoder,
            });
        }
        self.eye_before = image.gate_eye;
        self.match_pending(now, &mut outcome.decided);
        outcome.halt_latched = self.halt_line(image.halt_coil, image.operator_reset);
        // R11 (the reset's rising edge, read before halt_line stores it) is in halt_line.
        if now >= self.next_beat_at {
            self.plc_heartbeat = self.plc_heartbeat.wrapping_add(1);
            self.next_beat_at = now + Duration::from_millis(self.settings.plc_heartbeat_ms);
        }
        outcome
    }

    /// R10: after a start the program cannot know what lies between the eye and the
    /// diverter, so the gate diverts until the belt has carried a part that far.
    fn start_hold(&mut self, now: Duration) {
        let (started_at, started_count) = *self.started.get_or_insert((now, self.encoder));
        if self.start_hold {
            self.start_hold = match self.settings.tracking {
                PlcTracking::Time => {
                    now.saturating_sub(started_at)
                        < Duration::from_millis(self.settings.eye_to_gate_ms)
                }
                PlcTracking::Encoder => {
                    counts_since(started_count, self.encoder)
                        < self.settings.eye_to_gate_counts as i64
                }
            };
        }
    }

    /// R1: the station is lost when its heartbeat has not changed for the watchdog time, and
    /// found again when it changes. Whether the watchdog expired in this scan.
    ///
    /// As the ST's TON: a scan with a change resets it, and its time runs from the first scan
    /// without one.
    fn watchdog(&mut self, now: Duration, heartbeat: u16) -> bool {
        if self.last_heartbeat != Some(heartbeat) {
            // The first value seen counts as no change: a station must beat to be trusted.
            self.watchdog_expired = self.last_heartbeat.is_none();
            self.unchanged_since = None;
            self.last_heartbeat = Some(heartbeat);
            return false;
        }
        let since = *self.unchanged_since.get_or_insert(now);
        let expired = now.saturating_sub(since) >= Duration::from_millis(self.settings.watchdog_ms);
        let tripped = expired && !self.watchdog_expired;
        self.watchdog_expired |= expired;
        tripped
    }

    /// R4: a new sequence number is a new command, pushed into the tracking FIFO; while
    /// faulted commands are not trusted and are dropped.
    fn take_command(
        &mut self,
        now: Duration,
        words: &[u16; GATE_COMMAND_LEN as usize],
    ) -> Option<(GateCommandWords, Duration, bool)> {
        let command = self.map.decode_gate_command(words)?;
        if self.last_sequence == Some(command.sequence) {
            return None;
        }
        let first = self.last_sequence.is_none();
        self.last_sequence = Some(command.sequence);
        // The value found at start-up is an old command, not a new one.
        if first {
            return None;
        }
        if self.fault {
            self.unmatched = self.unmatched.wrapping_add(1);
            return Some((command, now, false));
        }
        if self.fifo.len() >= self.settings.fifo_depth {
            self.fifo.pop_front();
            self.unmatched = self.unmatched.wrapping_add(1);
            self.overrun_seen = true;
        }
        self.fifo.push_back(TakenCommand {
            command,
            arrived_at: now,
            arrived_count: self.encoder,
        });
        Some((command, now, true))
    }

    /// R5 and R6: the oldest pending part takes the oldest command that arrived in its window
    /// and is decided at the diverter, `eye_to_gate` after the eye (in time, or in encoder
    /// counts with encoder tracking).
    fn match_pending(&mut self, now: Duration, decided: &mut Vec<GateDecision>) {
        let settings = self.settings;
        let before = Duration::from_millis(settings.match_before_ms);
        let to_gate = Duration::from_millis(settings.eye_to_gate_ms);
        let (before_counts, to_gate_counts) = (
            settings.match_before_counts as i64,
            settings.eye_to_gate_counts as i64,
        );
        let encoder = self.encoder;
        let by_encoder = settings.tracking == PlcTracking::Encoder;
        while let Some(&part) = self.pending.front() {
            let at_diverter = if by_encoder {
                counts_since(part.eye_count, encoder) >= to_gate_counts
            } else {
                now >= part.eye_at + to_gate
            };
            if !at_diverter {
                break;
            }
            self.pending.pop_front();
            // Stale: arrived before this part's window opened; its own part is long gone.
            let stale = |c: &TakenCommand| {
                if by_encoder {
                    counts_since(c.arrived_count, part.eye_count) > before_counts
                } else {
                    c.arrived_at + before < part.eye_at
                }
            };
            // R11: a command for an id before the expected one came too late for its part,
            // which was decided already; whenever it arrived, it is not this part's.
            let expected = self.expected_part_id;
            let behind = |c: &TakenCommand| {
                expected.is_some_and(|id| part_ids_ahead(id, c.command.part_id) < 0)
            };
            while let Some(head) = self.fifo.front() {
                let id_behind = behind(head);
                if !stale(head) && !id_behind {
                    break;
                }
                self.id_behind_seen |= id_behind;
                self.fifo.pop_front();
                self.unmatched = self.unmatched.wrapping_add(1);
            }
            let in_window = |c: &TakenCommand| {
                if by_encoder {
                    counts_since(part.eye_count, c.arrived_count) <= to_gate_counts
                } else {
                    c.arrived_at <= part.eye_at + to_gate
                }
            };
            let command = match self.fifo.front() {
                Some(c) if in_window(c) => self.fifo.pop_front(),
                _ => None,
            };
            decided.push(self.decide(now, part.eye_at, command));
        }
    }

    /// R6 and R7: only an unfaulted PLC with a PASS lets a part by; a divert pulses the gate.
    fn decide(
        &mut self,
        now: Duration,
        eye_at: Duration,
        command: Option<TakenCommand>,
    ) -> GateDecision {
        // R11: the next part carries the id after this one's: a matched command's (also when
        // it is ahead of the expected one: the station numbered parts this program never
        // saw), or one more than expected for a part without a command.
        match command {
            Some(c) if !self.fault => {
                self.expected_part_id = Some(c.command.part_id.wrapping_add(1));
            }
            Some(_) => self.expected_part_id = None,
            None => {
                self.expected_part_id = self.expected_part_id.map(|id| id.wrapping_add(1));
            }
        }
        let reason = if self.watchdog_expired {
            DecisionReason::WatchdogExpired
        } else if self.station_stopped {
            DecisionReason::StationStopped
        } else {
            match command.map(|c| c.command.verdict) {
                Some(GateVerdict::Pass) => DecisionReason::Pass,
                Some(_) => DecisionReason::Verdict,
                None => DecisionReason::NoCommand,
            }
        };
        let diverted = reason != DecisionReason::Pass;
        if diverted {
            self.gate_until = Some(now + Duration::from_millis(self.settings.pulse_ms));
            self.diverted = self.diverted.wrapping_add(1);
        } else {
            self.passed = self.passed.wrapping_add(1);
        }
        GateDecision {
            eye_at,
            decided_at: now,
            part_id: command.map(|c| c.command.part_id),
            verdict: command.map(|c| c.command.verdict as u16),
            diverted,
            reason,
        }
    }

    /// R8: the halt coil going ON latches a halt; only the operator's reset, while the coil
    /// is OFF, releases it. Whether the latch was set in this scan.
    fn halt_line(&mut self, coil: bool, reset: bool) -> bool {
        let set = coil && !self.halt_coil_before && !self.halt_latched;
        if coil && !self.halt_coil_before {
            self.halt_latched = true;
        }
        if reset && !self.reset_before && !coil {
            self.halt_latched = false;
        }
        // R11: the reset also forgets the expected id and clears b6, so a PLC whose eye and
        // the station's camera counted parts differently takes the sequence up again.
        if reset && !self.reset_before {
            self.expected_part_id = None;
            self.id_behind_seen = false;
        }
        self.halt_coil_before = coil;
        self.reset_before = reset;
        set
    }

    /// Whether the gate output is on at `now` (R7, and R10's hold).
    pub fn gate_output(&self, now: Duration) -> bool {
        self.start_hold || self.gate_until.is_some_and(|until| now < until)
    }

    /// Whether the gate is held after a start (R10).
    pub fn holding_at_start(&self) -> bool {
        self.start_hold
    }

    /// R9: the encoder's count as the two words of `HR[encoder]`.
    pub fn encoder_words(&self) -> [u16; 2] {
        self.map.words.order.split(self.encoder)
    }

    /// Whether the conveyor may run (R8).
    pub fn conveyor_run(&self) -> bool {
        !self.halt_latched
    }

    /// Whether the program diverts everything now (R3).
    pub fn faulted(&self) -> bool {
        self.fault
    }

    /// R9: the status block's words.
    pub fn status_words(&self) -> [u16; PLC_STATUS_LEN as usize] {
        let bits = u16::from(!self.fault)
            | u16::from(self.watchdog_expired) << 1
            | u16::from(self.station_stopped) << 2
            | u16::from(self.halt_latched) << 3
            | u16::from(self.overrun_seen) << 4
            | u16::from(self.start_hold) << 5
            | u16::from(self.id_behind_seen) << 6;
        let order = self.map.words.order;
        let [p0, p1] = order.split(self.passed);
        let [d0, d1] = order.split(self.diverted);
        let [u0, u1] = order.split(self.unmatched);
        [self.plc_heartbeat, bits, p0, p1, d0, d1, u0, u1]
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn map() -> RegisterMap {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-io/register-map.toml");
        RegisterMap::load(&path).expect("shipped map")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A program and the image the station keeps writing, scanned every millisecond.
    struct Bench {
        program: PlcProgram,
        image: InputImage,
        now: Duration,
        sequence: u16,
        decided: Vec<GateDecision>,
        beating: bool,
        last_beat: Duration,
        /// Encoder counts per scan (the belt's speed).
        counts_per_scan: u32,
    }

    impl Bench {
        fn new() -> Bench {
            Bench::with_map(map())
        }

        /// A bench whose program tracks by encoder counts, on a belt at 10 counts per ms.
        fn by_encoder() -> Bench {
            let mut map = map();
            map.plc_program.tracking = PlcTracking::Encoder;
            Bench::with_map(map)
        }

        fn with_map(map: RegisterMap) -> Bench {
            let mut bench = Bench {
                program: PlcProgram::new(map),
                image: InputImage::default(),
                now: Duration::ZERO,
                sequence: 0,
                decided: Vec::new(),
                beating: true,
                last_beat: Duration::ZERO,
                counts_per_scan: 10,
            };
            bench.scan_for(ms(5));
            bench.image.station_state = 1;
            // Two beats: the first value seen is not yet trusted.
            bench.scan_for(ms(205));
            bench
        }

        /// Scans every millisecond for `span`, beating every 100 ms while `beating`.
        fn scan_for(&mut self, span: Duration) {
            let end = self.now + span;
            while self.now < end {
                if self.beating && self.now.as_millis().is_multiple_of(100) {
                    self.image.heartbeat = self.image.heartbeat.wrapping_add(1);
                    self.last_beat = self.now;
                }
                let outcome = self.program.scan(self.now, &self.image);
                self.decided.extend(outcome.decided);
                self.image.gate_eye = false;
                self.image.operator_reset = false;
                self.image.encoder = self.image.encoder.wrapping_add(self.counts_per_scan);
                self.now += ms(1);
            }
        }

        fn command(&mut self, part_id: u32, verdict: GateVerdict) {
            self.sequence = self.sequence.wrapping_add(1);
            self.image.gate_command = self.program.map.encode_gate_command(GateCommandWords {
                part_id,
                verdict,
                class: 0,
                sequence: self.sequence,
            });
        }

        fn eye(&mut self) {
            self.image.gate_eye = true;
        }

        /// A part at the eye whose command arrives `offset_ms` after it (negative: before).
        fn part(&mut self, part_id: u32, verdict: Option<GateVerdict>, offset_ms: i64) {
            if offset_ms < 0 {
                if let Some(verdict) = verdict {
                    self.command(part_id, verdict);
                }
                self.scan_for(ms(offset_ms.unsigned_abs()));
                self.eye();
                self.scan_for(ms(100));
            } else {
                self.eye();
                self.scan_for(ms(offset_ms as u64));
                if let Some(verdict) = verdict {
                    self.command(part_id, verdict);
                }
                self.scan_for(ms(100));
            }
        }

        fn last(&self) -> GateDecision {
            *self.decided.last().expect("a decision")
        }
    }

    #[test]
    fn a_pass_in_time_lets_the_part_by_and_anything_else_diverts() {
        let mut bench = Bench::new();
        bench.part(1, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        assert!(!bench.last().diverted);
        assert_eq!(bench.last().part_id, Some(1));
        bench.part(2, Some(GateVerdict::Pass), -10);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        for (id, verdict) in [
            (3, GateVerdict::NoDecision),
            (4, GateVerdict::RejectDefect),
            (5, GateVerdict::RejectError),
            (6, GateVerdict::RejectByPolicy),
        ] {
            bench.part(id, Some(verdict), 5);
            assert_eq!(bench.last().reason, DecisionReason::Verdict, "{verdict:?}");
            assert!(bench.last().diverted);
            assert_eq!(bench.last().part_id, Some(id));
        }
        bench.part(7, None, 0);
        assert_eq!(bench.last().reason, DecisionReason::NoCommand);
        assert!(bench.last().diverted && bench.last().part_id.is_none());
        let status = bench.program.status_words();
        assert_eq!(status[1] & 1, 1, "healthy");
        assert_eq!((status[3], status[5]), (2, 5), "passed and diverted counts");
    }

    #[test]
    fn a_late_or_early_command_is_no_command_and_never_moves_to_the_next_part() {
        let mut bench = Bench::new();
        // After the diverter: the part is decided without it ...
        bench.eye();
        bench.scan_for(ms(map().plc_program.eye_to_gate_ms + 5));
        assert_eq!(bench.last().reason, DecisionReason::NoCommand);
        bench.command(1, GateVerdict::Pass);
        bench.scan_for(ms(300));
        // ... and the next part, 300 ms later, does not take it.
        bench.part(2, None, 0);
        assert_eq!(bench.last().reason, DecisionReason::NoCommand);
        // Long before the eye: stale.
        bench.part(
            3,
            Some(GateVerdict::Pass),
            -(map().plc_program.match_before_ms as i64) - 20,
        );
        assert_eq!(bench.last().reason, DecisionReason::NoCommand);
        let status = bench.program.status_words();
        assert_eq!(status[7], 2, "two unmatched commands");
    }

    #[test]
    fn a_resent_command_is_taken_once() {
        let mut bench = Bench::new();
        bench.command(1, GateVerdict::Pass);
        bench.eye();
        bench.scan_for(ms(2));
        // The same words stay in the image, as after a resend of a command whose reply was
        // lost: scan after scan, they are not a new command.
        bench.scan_for(ms(100));
        bench.part(2, None, 0);
        assert_eq!(
            bench.decided.iter().map(|d| d.reason).collect::<Vec<_>>(),
            [DecisionReason::Pass, DecisionReason::NoCommand]
        );
    }

    #[test]
    fn a_silent_station_trips_the_watchdog_and_everything_diverts_until_it_beats_again() {
        let mut bench = Bench::new();
        let watchdog = map().plc_program.watchdog_ms;
        bench.beating = false;
        bench.scan_for(ms(watchdog - 150));
        assert!(!bench.program.faulted(), "not yet");
        let mut tripped_at = None;
        for _ in 0..200 {
            let outcome = bench.program.scan(bench.now, &bench.image);
            if outcome.watchdog_tripped {
                tripped_at = Some(bench.now);
                break;
            }
            bench.now += ms(1);
        }
        let silent_for = tripped_at.expect("the watchdog trips") - bench.last_beat;
        // The ST's TON runs from the first scan without a change, a scan (1 ms) after the beat.
        assert_eq!(
            silent_for,
            ms(watchdog + 1),
            "trips once the heartbeat stood still for the watchdog time"
        );
        // A PASS from a lost station is not trusted.
        bench.part(1, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::WatchdogExpired);
        assert!(bench.last().diverted);
        assert_eq!(bench.program.status_words()[1] & 0b11, 0b10);
        bench.beating = true;
        bench.scan_for(ms(200));
        bench.part(2, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
    }

    #[test]
    fn a_stopped_station_diverts_everything() {
        let mut bench = Bench::new();
        bench.image.station_state = 0;
        bench.part(1, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::StationStopped);
        bench.image.station_state = 7;
        bench.part(2, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::StationStopped);
        // A station never seen running diverts too.
        let mut program = PlcProgram::new(map());
        assert!(
            program
                .scan(Duration::ZERO, &InputImage::default())
                .decided
                .is_empty()
        );
        assert!(program.faulted());
    }

    #[test]
    fn a_full_fifo_drops_its_oldest_command_and_says_so() {
        let mut bench = Bench::new();
        let depth = map().plc_program.fifo_depth;
        // Commands with no parts: each stays in the FIFO (no eye to go stale against).
        for id in 0..=depth as u32 {
            bench.command(id, GateVerdict::Pass);
            bench.scan_for(ms(1));
        }
        let status = bench.program.status_words();
        assert_eq!(status[1] & 0b1_0000, 0b1_0000, "overrun bit");
        assert_eq!(status[7], 1);
    }

    /// The hazard R11 closes: a command that reaches the PLC after its part was decided, but
    /// inside the next part's window, by time or by counts.
    #[test]
    fn a_command_too_late_for_its_part_is_never_given_to_the_next_one() {
        for mut bench in [Bench::new(), Bench::by_encoder()] {
            let tracking = bench.program.settings.tracking;
            let to_gate = ms(bench.program.settings.eye_to_gate_ms);
            // Part 1 with its own command: the sequence is known.
            bench.part(1, Some(GateVerdict::Pass), 5);
            assert_eq!(bench.last().part_id, Some(1), "{tracking:?}");
            // Part 2 is decided without its command, which arrives 30 ms later, 10 ms
            // before part 3 reaches the eye: inside part 3's window.
            bench.eye();
            bench.scan_for(to_gate + ms(30));
            assert_eq!(bench.last().reason, DecisionReason::NoCommand);
            bench.command(2, GateVerdict::Pass);
            bench.scan_for(ms(10));
            bench.eye();
            bench.scan_for(ms(100));
            let part_3 = bench.last();
            assert_eq!(
                (part_3.reason, part_3.part_id, part_3.diverted),
                (DecisionReason::NoCommand, None, true),
                "{tracking:?}: part 3 took part 2's PASS"
            );
            let status = bench.program.status_words();
            assert_eq!(status[1] & 0x40, 0x40, "b6: a command for a decided part");
            assert_eq!(status[7], 1, "counted unmatched");
            // The sequence goes on: part 4 passes with its own command.
            bench.part(4, Some(GateVerdict::Pass), 5);
            assert_eq!(bench.last().reason, DecisionReason::Pass);
            assert_eq!(bench.last().part_id, Some(4));
            // b6 stays until the operator's reset.
            assert_eq!(bench.program.status_words()[1] & 0x40, 0x40);
            bench.image.operator_reset = true;
            bench.scan_for(ms(1));
            assert_eq!(bench.program.status_words()[1] & 0x40, 0);
        }
    }

    #[test]
    fn the_sequence_follows_the_station_after_a_fault_and_over_ids_it_skipped() {
        let mut bench = Bench::new();
        bench.part(100, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().part_id, Some(100));
        // Ids ahead of the expected one: parts the station numbered that never reached the
        // eye. The sequence follows the station.
        bench.part(105, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        bench.part(106, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().part_id, Some(106));
        // The station stops and comes back numbering from 1 (a fresh data folder): the fault
        // forgot the expected id, so its commands are matched by their window again.
        bench.image.station_state = 0;
        bench.scan_for(ms(50));
        bench.image.station_state = 1;
        bench.scan_for(ms(50));
        bench.part(1, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        assert_eq!(bench.last().part_id, Some(1));
        assert_eq!(bench.program.status_words()[1] & 0x40, 0, "nothing dropped");
    }

    #[test]
    fn after_the_eye_counts_a_part_the_station_did_not_every_part_diverts_until_the_reset() {
        let mut bench = Bench::new();
        bench.part(1, Some(GateVerdict::Pass), 5);
        // A part the station never numbered (the eye saw one part twice): it takes id 2.
        bench.part(0, None, 0);
        // From now on each command is one behind: never given to a part, all divert.
        for id in 2..5 {
            bench.part(id, Some(GateVerdict::Pass), 5);
            assert_eq!(bench.last().reason, DecisionReason::NoCommand, "part {id}");
        }
        assert_eq!(bench.program.status_words()[1] & 0x40, 0x40);
        // The operator's reset takes the sequence up from the next command.
        bench.image.operator_reset = true;
        bench.scan_for(ms(1));
        bench.part(5, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        bench.part(6, Some(GateVerdict::Pass), 5);
        assert_eq!(bench.last().part_id, Some(6));
    }

    #[test]
    fn the_halt_latch_holds_until_the_operator_resets_with_the_coil_off() {
        let mut bench = Bench::new();
        bench.image.halt_coil = true;
        bench.scan_for(ms(2));
        assert!(!bench.program.conveyor_run());
        bench.image.operator_reset = true;
        bench.scan_for(ms(2));
        assert!(
            !bench.program.conveyor_run(),
            "reset refused while the coil is ON"
        );
        bench.image.halt_coil = false;
        bench.scan_for(ms(2));
        assert!(!bench.program.conveyor_run(), "the latch outlives the coil");
        bench.image.operator_reset = true;
        bench.scan_for(ms(2));
        assert!(bench.program.conveyor_run());
    }

    #[test]
    fn a_divert_holds_the_gate_for_the_pulse_length() {
        let mut bench = Bench::new();
        bench.part(1, Some(GateVerdict::RejectDefect), 5);
        let decided = bench.last().decided_at;
        let pulse = ms(map().plc_program.pulse_ms);
        assert!(bench.program.gate_output(decided));
        assert!(bench.program.gate_output(decided + pulse - ms(1)));
        assert!(!bench.program.gate_output(decided + pulse));
    }

    #[test]
    fn the_gate_diverts_until_the_belt_has_carried_a_part_from_eye_to_diverter_after_a_start() {
        // Time tracking: for eye_to_gate_ms after the first scan.
        let mut program = PlcProgram::new(map());
        let to_gate = map().plc_program.eye_to_gate_ms;
        program.scan(ms(1000), &InputImage::default());
        assert!(program.gate_output(ms(1000)) && program.holding_at_start());
        assert_eq!(program.status_words()[1] & 0b10_0000, 0b10_0000, "b5");
        program.scan(ms(1000 + to_gate - 1), &InputImage::default());
        assert!(program.holding_at_start());
        program.scan(ms(1000 + to_gate), &InputImage::default());
        assert!(!program.gate_output(ms(1000 + to_gate)));
        // Encoder tracking: a stopped belt holds the gate however long it stands.
        let mut bench = Bench::by_encoder();
        let mut program = PlcProgram::new(bench.program.map);
        let to_gate = bench.program.settings.eye_to_gate_counts as u32;
        bench.image.encoder = u32::MAX - 5;
        program.scan(ms(0), &bench.image);
        program.scan(ms(60_000), &bench.image);
        assert!(program.holding_at_start(), "the belt has not moved");
        bench.image.encoder = bench.image.encoder.wrapping_add(to_gate - 1);
        program.scan(ms(60_001), &bench.image);
        assert!(program.holding_at_start());
        bench.image.encoder = bench.image.encoder.wrapping_add(1);
        program.scan(ms(60_002), &bench.image);
        assert!(!program.holding_at_start(), "across the counter's wrap");
    }

    #[test]
    fn with_encoder_tracking_a_belt_stop_moves_the_window_with_the_part() {
        let mut bench = Bench::by_encoder();
        let settings = bench.program.settings;
        // The command arrives, then the belt stops for longer than the time window, with the
        // part short of the eye: it is still its part's command.
        bench.command(1, GateVerdict::Pass);
        bench.scan_for(ms(2));
        bench.counts_per_scan = 0;
        bench.scan_for(ms(settings.match_before_ms * 20));
        bench.counts_per_scan = 10;
        bench.eye();
        bench.scan_for(ms(5));
        // Stopped again between the eye and the diverter: not decided while it stands.
        bench.counts_per_scan = 0;
        bench.scan_for(ms(500));
        assert!(
            bench.decided.is_empty(),
            "decided before reaching the diverter"
        );
        bench.counts_per_scan = 10;
        bench.scan_for(ms(100));
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        assert_eq!(bench.last().part_id, Some(1));
        // Decided at the count, not the time: the part took 505 ms from eye to diverter.
        assert!(bench.last().decided_at - bench.last().eye_at >= ms(500));
    }

    #[test]
    fn with_encoder_tracking_the_window_is_counted_not_timed() {
        let mut bench = Bench::by_encoder();
        let settings = bench.program.settings;
        // Fast belt: a command that arrived only 10 ms before the eye, but more than
        // match_before_counts, is stale.
        bench.counts_per_scan = 100;
        bench.command(1, GateVerdict::Pass);
        bench.scan_for(ms(10));
        assert!(10 * 100 > settings.match_before_counts);
        bench.eye();
        bench.scan_for(ms(20));
        assert_eq!(bench.last().reason, DecisionReason::NoCommand);
        assert_eq!(bench.program.status_words()[7], 1, "counted unmatched");
        // Slow belt: one that arrived 200 ms before the eye, but within the counts, matches.
        bench.counts_per_scan = 1;
        bench.command(2, GateVerdict::Pass);
        bench.scan_for(ms(200));
        bench.eye();
        bench.scan_for(ms(settings.eye_to_gate_counts + 5));
        assert_eq!(bench.last().reason, DecisionReason::Pass);
        assert_eq!(bench.last().part_id, Some(2));
        assert_eq!(
            bench.program.encoder_words(),
            bench
                .program
                .map
                .words
                .order
                .split(bench.image.encoder.wrapping_sub(1)),
            "R9 shows the encoder's count of the last scan"
        );
    }
}
