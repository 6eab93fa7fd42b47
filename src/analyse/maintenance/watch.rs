//! The equipment a station watches for failure (`[[maintenance]]` in the station TOML), and the
//! alarm each watch raises.
//!
//! A watch looks at one of two things:
//! - a tag's degradation trend towards a failure limit (`tag` with `fails_above` or
//!   `fails_below`): active while the forecast's early end falls within `warn_within_h`;
//! - defects repeating at the same place every N parts (`repeating_defects = true`), the mark
//!   of a damaged roller or die: active while the pattern holds in the last parts.
//!
//! Each watch is an ISA-18.2 alarm of source `maintenance:<name>` (`on = "forecast"`), so
//! operators acknowledge, shelve and see it like any other, and webhooks carry it to a CMMS.

use serde::{Deserialize, Serialize};

use crate::analyse::alarms::{AlarmDefinition, DiscreteOn, valid_name};
use crate::record::AlarmSeverity;

/// One watch (`[[maintenance]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWatch {
    /// Names the watch's alarm: 1 to 64 of `a-z 0-9 _ - .`.
    pub name: String,
    /// What is watched, as maintenance knows it: "Guide roller 2 bearing".
    pub equipment: String,
    #[serde(default = "default_priority")]
    pub priority: AlarmSeverity,
    /// The tag whose trend is watched.
    pub tag: Option<String>,
    /// The equipment fails when the tag rises above this.
    pub fails_above: Option<f64>,
    /// The equipment fails when the tag falls below this.
    pub fails_below: Option<f64>,
    /// Alarm when failure may come sooner than this, in hours.
    #[serde(default = "default_warn_within_h")]
    pub warn_within_h: f64,
    /// How much of the tag's history the trend is fitted on, in hours.
    #[serde(default = "default_history_h")]
    pub history_h: f64,
    /// Watch for defects repeating at the same place every N parts.
    #[serde(default)]
    pub repeating_defects: bool,
}

fn default_priority() -> AlarmSeverity {
    AlarmSeverity::High
}

fn default_warn_within_h() -> f64 {
    72.0
}

fn default_history_h() -> f64 {
    24.0
}

/// What a watch looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watched<'a> {
    Trend {
        tag: &'a str,
        limit: f64,
        /// The equipment fails above the limit (else below).
        above: bool,
    },
    RepeatingDefects,
}

impl MaintenanceWatch {
    /// What the watch looks at; `None` for a watch [`check`] refuses.
    pub fn watched(&self) -> Option<Watched<'_>> {
        match (
            self.tag.as_deref(),
            self.fails_above,
            self.fails_below,
            self.repeating_defects,
        ) {
            (Some(tag), Some(limit), None, false) => Some(Watched::Trend {
                tag,
                limit,
                above: true,
            }),
            (Some(tag), None, Some(limit), false) => Some(Watched::Trend {
                tag,
                limit,
                above: false,
            }),
            (None, None, None, true) => Some(Watched::RepeatingDefects),
            _ => None,
        }
    }

    /// The alarm the watch raises.
    pub fn alarm(&self) -> AlarmDefinition {
        let message = match self.watched() {
            Some(Watched::RepeatingDefects) => {
                format!(
                    "{}: defects repeat at one place every N parts",
                    self.equipment
                )
            }
            _ => format!("{}: failure forecast", self.equipment),
        };
        AlarmDefinition::discrete(
            &self.name,
            &message,
            self.priority,
            &format!("maintenance:{}", self.name),
            DiscreteOn::Forecast,
        )
    }
}

/// Every problem of the `[[maintenance]]` tables, as `(field, message)`; `tags` are the
/// configured tag names.
pub fn check(watches: &[MaintenanceWatch], tags: &[&str]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, w) in watches.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push((format!("maintenance[{i}].{field}"), message));
        };
        if !valid_name(&w.name) {
            problem(
                "name",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '_', '-', '.', not starting with '.'",
                    w.name
                ),
            );
        }
        if watches[..i].iter().any(|o| o.name == w.name) {
            problem("name", format!("{:?} is defined twice", w.name));
        }
        if w.equipment.trim().is_empty() || w.equipment.len() > 200 {
            problem("equipment", "expected 1 to 200 characters".into());
        }
        match w.watched() {
            None => problem(
                "tag",
                "expected either `tag` with one of `fails_above`/`fails_below`, or \
                 `repeating_defects = true`"
                    .into(),
            ),
            Some(Watched::Trend { tag, limit, .. }) => {
                if !tags.contains(&tag) {
                    problem(
                        "tag",
                        format!("no tag named {tag:?} is defined in [[tags]]"),
                    );
                }
                if !limit.is_finite() {
                    problem("fails_above", "expected a finite number".into());
                }
            }
            Some(Watched::RepeatingDefects) => {}
        }
        if !(w.warn_within_h.is_finite()
            && w.warn_within_h > 0.0
            && w.warn_within_h <= 24.0 * 365.0)
        {
            problem(
                "warn_within_h",
                format!("expected hours in (0, 8760], got {}", w.warn_within_h),
            );
        }
        if !(w.history_h.is_finite() && (0.05..=24.0 * 31.0).contains(&w.history_h)) {
            problem(
                "history_h",
                format!("expected 0.05 to 744 hours, got {}", w.history_h),
            );
        }
    }
    problems
}
