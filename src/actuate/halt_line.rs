//! The halt-line coil: a latched output the station sets on the PLC when a burst of critical
//! defects says the line should stop, and clears only when an operator resets it.
//!
//! Two parts live here, both without knowledge of alarms or storage:
//! - [`BurstRule`] and [`BurstDetector`]: the pure rule "N defects of these classes within the
//!   last M parts" (the `[halt_line]` table of the station TOML). No clock, no I/O.
//! - [`GateLink::write_coil`] / [`GateLink::read_coil`]: the coil writes over the same Modbus
//!   TCP link type as the reject gate (a sibling connection, with every request under the
//!   link's deadline). The coil's address is in `firmware-io/register-map.toml` (`[halt_line]`).
//!
//! The latch itself (persisted, re-asserted, reset by an operator with an audit entry) is
//! `analyse::actions::halt_line`, which raises the alarm.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tokio_modbus::{Request, Response};

use super::{GateError, GateLink};

/// Most parts a burst window may span: the window is kept in memory and persisted.
pub const MAX_WINDOW_PARTS: u32 = 100_000;

/// Shortest re-assert period: the coil is rewritten this often at most while latched.
pub const MIN_REASSERT_MS: u64 = 100;

/// The `[halt_line]` table of the station TOML: when the line must halt.
///
/// ```toml
/// [halt_line]
/// classes = ["crack"]      # empty or absent: every part the model fails
/// burst_defects = 3        # this many counted defects ...
/// within_parts = 10        # ... among the last this many inspected parts
/// reassert_ms = 1000       # while latched, the coil is rewritten this often
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltLineSection {
    /// Defect classes that count (the model's `defect_class`); empty: every failed part.
    /// Parts rejected by policy (no verdict in time) never count: they are not defects, and
    /// the station's own alarms report them.
    #[serde(default)]
    pub classes: Vec<String>,
    /// How many counted defects trip the halt.
    pub burst_defects: u32,
    /// Among how many of the latest inspected parts.
    pub within_parts: u32,
    /// How often the latched coil is rewritten, so a PLC that restarted or lost the link
    /// gets it back.
    #[serde(default = "default_reassert_ms")]
    pub reassert_ms: u64,
}

fn default_reassert_ms() -> u64 {
    1000
}

impl HaltLineSection {
    /// Every problem of the table, as `(field, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(1..=MAX_WINDOW_PARTS).contains(&self.within_parts) {
            problems.push((
                "halt_line.within_parts".into(),
                format!(
                    "expected 1 to {MAX_WINDOW_PARTS} parts, got {}",
                    self.within_parts
                ),
            ));
        }
        if self.burst_defects == 0 || self.burst_defects > self.within_parts {
            problems.push((
                "halt_line.burst_defects".into(),
                format!(
                    "expected 1 to within_parts ({}) defects, got {}",
                    self.within_parts, self.burst_defects
                ),
            ));
        }
        for (i, class) in self.classes.iter().enumerate() {
            if class.trim().is_empty() || class.len() > 64 {
                problems.push((
                    format!("halt_line.classes[{i}]"),
                    "expected a class name of 1 to 64 characters".into(),
                ));
            }
        }
        if self.reassert_ms < MIN_REASSERT_MS {
            problems.push((
                "halt_line.reassert_ms".into(),
                format!(
                    "expected at least {MIN_REASSERT_MS} ms, got {}",
                    self.reassert_ms
                ),
            ));
        }
        problems
    }

    /// The detection rule of this table.
    pub fn rule(&self) -> BurstRule {
        BurstRule {
            classes: self.classes.clone(),
            burst_defects: self.burst_defects,
            within_parts: self.within_parts,
        }
    }
}

/// "`burst_defects` counted defects among the last `within_parts` parts".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstRule {
    /// Classes that count; empty: every failed part.
    pub classes: Vec<String>,
    pub burst_defects: u32,
    pub within_parts: u32,
}

impl BurstRule {
    /// Whether a failed part of `defect_class` counts towards a burst.
    pub fn counts(&self, failed: bool, defect_class: Option<&str>) -> bool {
        failed
            && (self.classes.is_empty()
                || defect_class.is_some_and(|class| self.classes.iter().any(|c| c == class)))
    }
}

/// One inspected part as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPart {
    pub part_id: u64,
    /// Whether the part counts towards a burst.
    pub counted: bool,
}

/// What tripped: the window's counted defects at the moment of the trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    /// Counted defects in the window.
    pub defects: u32,
    /// Parts in the window.
    pub parts: u32,
    /// The first and last part of the window.
    pub first_part_id: u64,
    pub last_part_id: u64,
    /// The counted parts, oldest first.
    pub defect_part_ids: Vec<u64>,
}

/// The sliding window over the latest inspected parts. Pure: fed one part at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstDetector {
    rule: BurstRule,
    window: VecDeque<WindowPart>,
    counted: u32,
}

impl BurstDetector {
    /// An empty window.
    pub fn new(rule: BurstRule) -> BurstDetector {
        BurstDetector {
            rule,
            window: VecDeque::new(),
            counted: 0,
        }
    }

    /// The rule this detector applies.
    pub fn rule(&self) -> &BurstRule {
        &self.rule
    }

    /// Adds one inspected part; returns the burst when the window now holds at least
    /// `burst_defects` counted defects and this part is one of them (so a burst trips once,
    /// on the defect that completes it, not again on every good part after it).
    pub fn push(
        &mut self,
        part_id: u64,
        failed: bool,
        defect_class: Option<&str>,
    ) -> Option<Burst> {
        let counted = self.rule.counts(failed, defect_class);
        self.window.push_back(WindowPart { part_id, counted });
        if counted {
            self.counted += 1;
        }
        while self.window.len() > self.rule.within_parts as usize {
            if let Some(oldest) = self.window.pop_front()
                && oldest.counted
            {
                self.counted -= 1;
            }
        }
        (counted && self.counted >= self.rule.burst_defects).then(|| self.burst())
    }

    /// Forgets the window (after an operator's reset: the burst that tripped is dealt with).
    pub fn clear(&mut self) {
        self.window.clear();
        self.counted = 0;
    }

    /// Counted defects in the window now.
    pub fn defects(&self) -> u32 {
        self.counted
    }

    /// Takes over `rule` keeping the window, when it was saved under the same rule; else
    /// starts empty (a changed rule must not judge parts it did not count).
    pub fn restored(saved: Option<BurstDetector>, rule: BurstRule) -> BurstDetector {
        match saved {
            Some(detector) if detector.rule == rule => detector,
            _ => BurstDetector::new(rule),
        }
    }

    fn burst(&self) -> Burst {
        Burst {
            defects: self.counted,
            parts: self.window.len() as u32,
            first_part_id: self.window.front().map_or(0, |p| p.part_id),
            last_part_id: self.window.back().map_or(0, |p| p.part_id),
            defect_part_ids: self
                .window
                .iter()
                .filter(|p| p.counted)
                .map(|p| p.part_id)
                .collect(),
        }
    }
}

impl GateLink {
    /// Writes one coil (FC5) and checks the PLC's echo.
    pub async fn write_coil(&mut self, address: u16, on: bool) -> Result<(), GateError> {
        let what = "write halt-line coil";
        match self
            .call(
                what,
                address,
                Request::WriteSingleCoil(address, on),
                self.request_timeout,
            )
            .await?
        {
            Response::WriteSingleCoil(a, value) if a == address && value == on => Ok(()),
            reply => Err(self.unexpected(what, address, reply)),
        }
    }

    /// Reads one coil (FC1).
    pub async fn read_coil(&mut self, address: u16) -> Result<bool, GateError> {
        let what = "read halt-line coil";
        match self
            .call(
                what,
                address,
                Request::ReadCoils(address, 1),
                self.request_timeout,
            )
            .await?
        {
            // The reply carries whole bytes of coils; the first is ours.
            Response::ReadCoils(coils) if !coils.is_empty() => Ok(coils[0]),
            reply => Err(self.unexpected(what, address, reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(classes: &[&str], burst_defects: u32, within_parts: u32) -> BurstRule {
        BurstRule {
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            burst_defects,
            within_parts,
        }
    }

    /// Feeds `parts` (`.` good, `c` crack, `s` scratch) and gives the part ids that tripped.
    fn check(rule: BurstRule, parts: &str, expected_trips: &[u64]) {
        let mut detector = BurstDetector::new(rule);
        let mut trips = Vec::new();
        for (i, symbol) in parts.chars().enumerate() {
            let (failed, class) = match symbol {
                '.' => (false, None),
                'c' => (true, Some("crack")),
                's' => (true, Some("scratch")),
                other => panic!("unknown part symbol {other:?}"),
            };
            if detector.push(i as u64, failed, class).is_some() {
                trips.push(i as u64);
            }
        }
        assert_eq!(trips, expected_trips, "parts {parts:?}");
    }

    #[test]
    fn trips_on_the_defect_that_completes_a_burst() {
        check(rule(&[], 3, 5), "c.c.c", &[4]);
        // Spread over more than five parts: never three in any window of five.
        check(rule(&[], 3, 5), "c...c...c", &[]);
        // A fourth defect inside the window trips again (still a burst).
        check(rule(&[], 3, 5), "ccc.c", &[2, 4]);
    }

    #[test]
    fn only_the_named_classes_count() {
        check(rule(&["crack"], 2, 4), "sscs", &[]);
        check(rule(&["crack"], 2, 4), "scsc", &[3]);
        check(rule(&[], 2, 4), "ss..", &[1]);
    }

    #[test]
    fn old_defects_leave_the_window() {
        let mut detector = BurstDetector::new(rule(&[], 2, 3));
        assert!(detector.push(1, true, None).is_none());
        assert_eq!(detector.defects(), 1);
        detector.push(2, false, None);
        detector.push(3, false, None);
        detector.push(4, false, None);
        assert_eq!(detector.defects(), 0);
        assert!(detector.push(5, true, None).is_none());
        let burst = detector
            .push(6, true, None)
            .expect("two defects in three parts");
        assert_eq!(
            burst,
            Burst {
                defects: 2,
                parts: 3,
                first_part_id: 4,
                last_part_id: 6,
                defect_part_ids: vec![5, 6],
            }
        );
    }

    #[test]
    fn a_cleared_window_starts_over() {
        let mut detector = BurstDetector::new(rule(&[], 2, 10));
        detector.push(1, true, None);
        detector.clear();
        assert!(detector.push(2, true, None).is_none());
        assert!(detector.push(3, true, None).is_some());
    }

    #[test]
    fn a_saved_window_is_kept_only_under_the_same_rule() {
        let mut detector = BurstDetector::new(rule(&[], 2, 10));
        detector.push(1, true, None);
        let same = BurstDetector::restored(Some(detector.clone()), rule(&[], 2, 10));
        assert_eq!(same.defects(), 1);
        let changed = BurstDetector::restored(Some(detector), rule(&["crack"], 2, 10));
        assert_eq!(changed.defects(), 0);
    }

    #[test]
    fn bad_tables_are_named_field_by_field() {
        let section = HaltLineSection {
            classes: vec![String::new()],
            burst_defects: 5,
            within_parts: 3,
            reassert_ms: 10,
        };
        let fields: Vec<String> = section.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "halt_line.burst_defects",
                "halt_line.classes[0]",
                "halt_line.reassert_ms"
            ]
        );
        let zero = HaltLineSection {
            classes: vec![],
            burst_defects: 0,
            within_parts: 0,
            reassert_ms: 1000,
        };
        assert_eq!(zero.check().len(), 2);
    }

    #[test]
    fn the_table_parses_with_defaults() {
        let section: HaltLineSection =
            toml::from_str("classes = [\"crack\"]\nburst_defects = 3\nwithin_parts = 10\n")
                .expect("parses");
        assert_eq!(section.reassert_ms, 1000);
        assert!(section.check().is_empty());
        assert!(
            toml::from_str::<HaltLineSection>("burst_defects = 3\nwithin_part = 10\n").is_err()
        );
    }
}
