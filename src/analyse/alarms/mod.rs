//! Alarms: the ISA-18.2 life cycle of conditions on tags, KPIs, chart rules and the station
//! itself, with every transition durable in the journal before anyone sees it.
//!
//! Four parts, each with one job:
//! - here: what an alarm is ([`AlarmDefinition`], the `[[alarms]]` tables of the station TOML)
//!   and how a definition is checked;
//! - [`state`]: the pure life cycle ([`AlarmStatus`]: active/acknowledged × shelved,
//!   suppressed, out of service) and condition evaluation (limits with deadband, on/off
//!   delays). No clock, no I/O: time is passed in;
//! - [`manager`]: [`AlarmManager`], the live states, rebuilt from the journal at start; it
//!   writes each transition (and an operator's audit entry) before changing any state;
//! - [`performance`]: the ISA-18.2 / EEMUA 191 figures over a stretch of the journal.
//!
//! The recorder (in `record/`, which must not know this module) keeps writing its
//! `disk_low` and `records_failing` alarms as condition reports (`raised`/`cleared`); the
//! manager reads them back from the journal and turns them into life-cycle transitions, so
//! they are acknowledged like any other alarm.

pub mod manager;
pub mod performance;
pub mod state;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use manager::{Action, Actor, AlarmError, AlarmManager, AlarmView, ShelveRequest};
pub use performance::{AlarmPerformance, TransitionEntry, performance};
pub use state::{AlarmStatus, Overlay, Shelve, TransitionError};

use crate::record::{AlarmSeverity, DISK_LOW_ALARM, RECORDS_FAILING_ALARM};

/// OPC UA `MaxTimeShelved` when a definition does not say: one shift of 8 h.
pub const DEFAULT_MAX_SHELVE_S: u64 = 8 * 3600;

/// Longest shelve a definition may allow: 30 days. A longer "shelve" is out of service.
pub const MAX_SHELVE_LIMIT_S: u64 = 30 * 86_400;

/// Longest on/off delay: one hour. Longer delays hide the condition they delay.
pub const MAX_DELAY_S: f64 = 3600.0;

/// Names that would collide with the API's fixed paths under `/api/v1/alarms/`.
const RESERVED_NAMES: [&str; 2] = ["performance", "events"];

/// One alarm as the station TOML declares it (`[[alarms]]`).
///
/// A limit alarm names `high` and/or `low` (with `deadband`); a discrete alarm names `on`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmDefinition {
    /// Stable code: 1 to 64 of `a-z 0-9 _ - .`; names the alarm in records and URLs.
    pub name: String,
    /// What the operator reads, e.g. "Oven temperature high: check the heater".
    pub message: String,
    pub priority: AlarmSeverity,
    /// `tag:<name>`, `kpi:<name>`, `chart:<name>` or `station`.
    pub source: String,
    /// Active above this value.
    #[serde(default)]
    pub high: Option<f64>,
    /// Active below this value.
    #[serde(default)]
    pub low: Option<f64>,
    /// How far back inside a limit the value must come before the alarm returns (≥ 0).
    #[serde(default)]
    pub deadband: f64,
    /// How long the condition must hold before the alarm activates.
    #[serde(default)]
    pub on_delay_s: f64,
    /// How long the condition must stay gone before the alarm returns.
    #[serde(default)]
    pub off_delay_s: f64,
    /// What activates a discrete alarm.
    #[serde(default)]
    pub on: Option<DiscreteOn>,
    /// Longest timed shelve allowed (OPC UA `MaxTimeShelved`).
    #[serde(default = "default_max_shelve_s")]
    pub max_shelve_s: u64,
}

fn default_max_shelve_s() -> u64 {
    DEFAULT_MAX_SHELVE_S
}

impl AlarmDefinition {
    /// A discrete alarm (no limits, delays or deadband) the station defines itself: the
    /// built-in ones, the halt line's, one per maintenance watch.
    pub fn discrete(
        name: &str,
        message: &str,
        priority: AlarmSeverity,
        source: &str,
        on: DiscreteOn,
    ) -> AlarmDefinition {
        AlarmDefinition {
            name: name.into(),
            message: message.into(),
            priority,
            source: source.into(),
            high: None,
            low: None,
            deadband: 0.0,
            on_delay_s: 0.0,
            off_delay_s: 0.0,
            on: Some(on),
            max_shelve_s: DEFAULT_MAX_SHELVE_S,
        }
    }
}

/// What a discrete alarm goes active on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscreteOn {
    /// A chart rule (or a boolean tag or KPI) is violated.
    Violation,
    /// The station is faulted (source `station`).
    Fault,
    /// The station runs degraded (source `station`).
    Degraded,
    /// A condition report of the same name in the journal (`raised`/`cleared`), as the
    /// recorder writes for `disk_low` and `records_failing`.
    Report,
    /// A maintenance forecast (source `maintenance:<name>`): failure expected within the
    /// watch's horizon, or a repeating defect pattern.
    Forecast,
}

/// What an alarm watches, parsed from [`AlarmDefinition::source`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AlarmSource {
    Tag(String),
    Kpi(String),
    Chart(String),
    Station,
    /// A `[[maintenance]]` watch of the station TOML.
    Maintenance(String),
}

impl std::str::FromStr for AlarmSource {
    type Err = String;
    fn from_str(s: &str) -> Result<AlarmSource, String> {
        if s == "station" {
            return Ok(AlarmSource::Station);
        }
        let expected = || {
            format!(
                "expected `tag:<name>`, `kpi:<name>`, `chart:<name>`, `maintenance:<name>` or `station`, got {s:?}"
            )
        };
        let (kind, name) = s.split_once(':').ok_or_else(expected)?;
        let name_ok = (1..=128).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
        if !name_ok {
            return Err(format!(
                "source name {name:?} must be 1 to 128 of letters, digits, '_', '-', '.', '/'"
            ));
        }
        match kind {
            "tag" => Ok(AlarmSource::Tag(name.into())),
            "kpi" => Ok(AlarmSource::Kpi(name.into())),
            "chart" => Ok(AlarmSource::Chart(name.into())),
            "maintenance" => Ok(AlarmSource::Maintenance(name.into())),
            _ => Err(expected()),
        }
    }
}

impl fmt::Display for AlarmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmSource::Tag(n) => write!(f, "tag:{n}"),
            AlarmSource::Kpi(n) => write!(f, "kpi:{n}"),
            AlarmSource::Chart(n) => write!(f, "chart:{n}"),
            AlarmSource::Station => f.write_str("station"),
            AlarmSource::Maintenance(n) => write!(f, "maintenance:{n}"),
        }
    }
}

/// Whether `name` can name an alarm (it is a URL path segment and a record code).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

/// The alarms every station has: the recorder's conditions, raised by condition reports.
pub fn builtin_definitions() -> Vec<AlarmDefinition> {
    let report = |name: &str, message: &str, priority| {
        AlarmDefinition::discrete(name, message, priority, "station", DiscreteOn::Report)
    };
    vec![
        report(
            DISK_LOW_ALARM,
            "Data disk short of space: images are not saved",
            AlarmSeverity::High,
        ),
        report(
            RECORDS_FAILING_ALARM,
            "Records could not be written; they waited in memory",
            AlarmSeverity::Critical,
        ),
        report(
            crate::analyse::drift::MODEL_DRIFT_ALARM,
            "The live model no longer fits the parts: label the parts it names and retrain",
            AlarmSeverity::Medium,
        ),
        report(
            crate::actuate::PLC_LOST_ALARM,
            "The PLC's heartbeat stopped: no part passes until it is back",
            AlarmSeverity::High,
        ),
    ]
}

/// Every problem of the `[[alarms]]` tables at once, as `(field, message)` with fields
/// such as `alarms[2].high`.
pub fn check_definitions(definitions: &[AlarmDefinition]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let builtins = builtin_definitions();
    for (i, d) in definitions.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push((format!("alarms[{i}].{field}"), message));
        };
        if !valid_name(&d.name) {
            problem(
                "name",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '_', '-', '.', not starting with '.'",
                    d.name
                ),
            );
        }
        if RESERVED_NAMES.contains(&d.name.as_str()) {
            problem("name", format!("{:?} is reserved by the API", d.name));
        }
        if builtins.iter().any(|b| b.name == d.name) {
            problem(
                "name",
                format!("{:?} is a built-in alarm of the station", d.name),
            );
        }
        if definitions[..i].iter().any(|e| e.name == d.name) {
            problem("name", format!("{:?} is defined twice", d.name));
        }
        if d.message.trim().is_empty() || d.message.len() > 500 {
            problem("message", "expected 1 to 500 characters".into());
        }
        let source = match d.source.parse::<AlarmSource>() {
            Ok(source) => Some(source),
            Err(message) => {
                problem("source", message);
                None
            }
        };
        let limits = d.high.is_some() || d.low.is_some();
        for (field, limit) in [("high", d.high), ("low", d.low)] {
            if limit.is_some_and(|v| !v.is_finite()) {
                problem(field, "expected a finite number".into());
            }
        }
        if let (Some(high), Some(low)) = (d.high, d.low)
            && low >= high
        {
            problem("low", format!("expected below high ({high}), got {low}"));
        }
        if !(d.deadband.is_finite() && d.deadband >= 0.0) {
            problem(
                "deadband",
                format!("expected a number ≥ 0, got {}", d.deadband),
            );
        } else if d.deadband > 0.0 && !limits {
            problem("deadband", "only limit alarms (high/low) have one".into());
        } else if let (Some(high), Some(low)) = (d.high, d.low)
            && d.deadband * 2.0 >= high - low
        {
            // Wider, a value could sit within both limits' deadbands: which side an active
            // alarm holds would then depend on history a restart does not keep.
            problem(
                "deadband",
                format!(
                    "expected less than half the gap between low and high ({}), got {}",
                    (high - low) / 2.0,
                    d.deadband
                ),
            );
        }
        for (field, delay) in [("on_delay_s", d.on_delay_s), ("off_delay_s", d.off_delay_s)] {
            if !(delay.is_finite() && (0.0..=MAX_DELAY_S).contains(&delay)) {
                problem(
                    field,
                    format!("expected seconds in [0, {MAX_DELAY_S}], got {delay}"),
                );
            }
        }
        if !(1..=MAX_SHELVE_LIMIT_S).contains(&d.max_shelve_s) {
            problem(
                "max_shelve_s",
                format!(
                    "expected 1 to {MAX_SHELVE_LIMIT_S} seconds, got {}",
                    d.max_shelve_s
                ),
            );
        }
        match (limits, d.on, &source) {
            (true, Some(_), _) => problem(
                "on",
                "an alarm has limits (high/low) or `on`, not both".into(),
            ),
            (false, None, _) => problem(
                "on",
                "expected limits (high and/or low) or `on` (\"violation\", \"fault\", \"degraded\", \"report\")"
                    .into(),
            ),
            (false, Some(DiscreteOn::Forecast), Some(s))
                if !matches!(s, AlarmSource::Maintenance(_)) =>
            {
                problem(
                    "on",
                    "\"forecast\" is the state of a `maintenance:` source".into(),
                )
            }
            (_, on, Some(AlarmSource::Maintenance(_))) if on != Some(DiscreteOn::Forecast) => {
                problem(
                    "on",
                    "a `maintenance:` source goes active on \"forecast\"".into(),
                )
            }
            (true, None, Some(AlarmSource::Station | AlarmSource::Chart(_))) => problem(
                "source",
                "limits apply to `tag:` and `kpi:` sources; a chart or the station takes `on`"
                    .into(),
            ),
            (false, Some(DiscreteOn::Fault | DiscreteOn::Degraded), Some(s))
                if *s != AlarmSource::Station =>
            {
                problem(
                    "on",
                    "\"fault\" and \"degraded\" are states of source `station`".into(),
                )
            }
            (false, Some(DiscreteOn::Violation), Some(AlarmSource::Station)) => problem(
                "on",
                "source `station` goes active on \"fault\", \"degraded\" or \"report\"".into(),
            ),
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Vec<AlarmDefinition> {
        #[derive(Deserialize)]
        struct File {
            alarms: Vec<AlarmDefinition>,
        }
        toml::from_str::<File>(toml_text).expect("parses").alarms
    }

    #[test]
    fn a_limit_alarm_and_a_discrete_alarm_parse_and_pass() {
        let alarms = parse(
            r#"
            [[alarms]]
            name = "oven_hot"
            message = "Oven temperature high"
            priority = "high"
            source = "tag:oven_temp"
            high = 230.0
            low = 150.0
            deadband = 2.0
            on_delay_s = 5
            off_delay_s = 10
            max_shelve_s = 3600

            [[alarms]]
            name = "scratch_rule_1"
            message = "Scratch rate out of control"
            priority = "medium"
            source = "chart:scratch_rate"
            on = "violation"

            [[alarms]]
            name = "station_fault"
            message = "Station faulted: parts are rejected"
            priority = "critical"
            source = "station"
            on = "fault"
            "#,
        );
        assert_eq!(alarms.len(), 3);
        assert_eq!(alarms[1].max_shelve_s, DEFAULT_MAX_SHELVE_S);
        assert_eq!(check_definitions(&alarms), vec![]);
        // The built-in alarms are sound but for their reserved names.
        for (_, message) in check_definitions(&builtin_definitions()) {
            assert!(message.contains("built-in alarm"), "{message}");
        }
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let alarms = parse(
            r#"
            [[alarms]]
            name = "Bad Name"
            message = ""
            priority = "low"
            source = "sensor:x"
            high = 1.0
            low = 2.0
            deadband = -1.0
            on_delay_s = -3
            max_shelve_s = 0

            [[alarms]]
            name = "a"
            message = "m"
            priority = "low"
            source = "station"
            on = "violation"

            [[alarms]]
            name = "a"
            message = "m"
            priority = "low"
            source = "chart:c"
            high = 3.0
            on = "violation"

            [[alarms]]
            name = "disk_low"
            message = "m"
            priority = "low"
            source = "tag:t"
            on = "fault"

            [[alarms]]
            name = "events"
            message = "m"
            priority = "low"
            source = "tag:t"
            high = 10.0
            low = 0.0
            deadband = 5.0
            "#,
        );
        let fields: Vec<String> = check_definitions(&alarms)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "alarms[0].name",
                "alarms[0].message",
                "alarms[0].source",
                "alarms[0].low",
                "alarms[0].deadband",
                "alarms[0].on_delay_s",
                "alarms[0].max_shelve_s",
                "alarms[1].on",
                "alarms[2].name",
                "alarms[2].on",
                "alarms[3].name",
                "alarms[3].on",
                "alarms[4].name",
                "alarms[4].deadband",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result = toml::from_str::<AlarmDefinition>(
            "name = \"a\"\nmessage = \"m\"\npriority = \"low\"\nsource = \"station\"\non = \"fault\"\nhihg = 3.0\n",
        );
        assert!(result.is_err());
    }

    #[test]
    fn sources_parse_and_print_alike() {
        for text in ["tag:oven_temp", "kpi:oee", "chart:scratch/p", "station"] {
            let source: AlarmSource = text.parse().expect("valid");
            assert_eq!(source.to_string(), text);
        }
        assert!("tag:".parse::<AlarmSource>().is_err());
        assert!("tag:a b".parse::<AlarmSource>().is_err());
        assert!("plc:x".parse::<AlarmSource>().is_err());
    }
}
