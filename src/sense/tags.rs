//! Tags: the line signals a station watches, as the station TOML declares them.
//!
//! ```toml
//! [sensors]
//! raw_retention_days = 7            # raw samples; per-minute aggregates stay a year
//!
//! [[tags]]
//! name = "press_temp"
//! unit = "degC"
//! period_ms = 1000                  # how often a sample is expected
//! valid_range = [0.0, 400.0]        # outside: flagged bad (out_of_range)
//! spec_limits = [150.0, 200.0]      # optional: Cp/Cpk on its control chart
//! transport_delay_ms = 4000         # a part the camera sees at t passed this sensor at t - 4 s
//! modbus = { register = 1000, kind = "holding", encoding = "f32", word_order = "high_first" }
//! ```
//!
//! A tag with a `modbus` table is polled from the PLC, one with an `mqtt` table is subscribed
//! from the broker; any tag can also be pushed over HTTP or imported from CSV.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Problem;

/// `[sensors]`: how sensor data is kept and where it comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorsSection {
    /// Raw samples older than this are pruned (their per-minute aggregates stay).
    #[serde(default = "default_raw_retention_days")]
    pub raw_retention_days: f64,
    /// Per-minute aggregates older than this are pruned.
    #[serde(default = "default_aggregate_retention_days")]
    pub aggregate_retention_days: f64,
    /// `host:port` of the Modbus TCP server the `modbus` tags are polled from; default: the PLC.
    pub modbus_address: Option<String>,
    /// Modbus unit id for polling; default: the PLC's.
    pub modbus_unit_id: Option<u8>,
    /// `host:port` of the MQTT broker the `mqtt` tags come from; default: `[mqtt] broker`.
    pub mqtt_broker: Option<String>,
    /// Belt speed, to turn a tag's `distance_mm` into a transport delay.
    pub belt_speed_mm_s: Option<f64>,
    /// Samples stamped later than this past the station's clock are refused.
    #[serde(default = "default_max_future_s")]
    pub max_future_s: f64,
}

impl Default for SensorsSection {
    fn default() -> SensorsSection {
        SensorsSection {
            raw_retention_days: default_raw_retention_days(),
            aggregate_retention_days: default_aggregate_retention_days(),
            modbus_address: None,
            modbus_unit_id: None,
            mqtt_broker: None,
            belt_speed_mm_s: None,
            max_future_s: default_max_future_s(),
        }
    }
}

fn default_raw_retention_days() -> f64 {
    7.0
}
fn default_aggregate_retention_days() -> f64 {
    366.0
}
fn default_max_future_s() -> f64 {
    60.0
}

/// One `[[tags]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Unique within the station: letters, digits, `_`, `-`, `.`.
    pub name: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub description: String,
    /// The expected time between samples; a longer silence is reported as a gap.
    pub period_ms: u64,
    /// Values outside `[low, high]` are physically impossible for this sensor: flagged bad.
    pub valid_range: Option<[f64; 2]>,
    /// Lower and upper specification limits (either may be absent).
    pub spec_limits: Option<[Option<f64>; 2]>,
    /// How long a part takes from this sensor to the camera.
    pub transport_delay_ms: Option<u64>,
    /// Or how far the sensor sits before the camera, with `[sensors] belt_speed_mm_s`.
    pub distance_mm: Option<f64>,
    /// This many identical values in a row flag the sensor as stuck; 0 turns the check off
    /// (for discrete signals such as a running flag).
    #[serde(default = "default_stuck_after")]
    pub stuck_after: u32,
    /// A value further than this many robust standard deviations (scaled median absolute
    /// deviation) from the median of the last samples is flagged as a spike; 0 turns it off.
    #[serde(default = "default_spike_sigma")]
    pub spike_sigma: f64,
    /// Polled from the PLC.
    pub modbus: Option<ModbusSource>,
    /// Subscribed from the broker.
    pub mqtt: Option<MqttSource>,
}

fn default_stuck_after() -> u32 {
    30
}
fn default_spike_sigma() -> f64 {
    8.0
}

impl TagConfig {
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The time a part takes from this sensor to the camera, if the tag says where it sits.
    pub fn transport_delay(&self, belt_speed_mm_s: Option<f64>) -> Option<Duration> {
        if let Some(ms) = self.transport_delay_ms {
            return Some(Duration::from_millis(ms));
        }
        let (distance, speed) = (self.distance_mm?, belt_speed_mm_s?);
        Some(Duration::from_secs_f64(distance / speed))
    }

    /// Lower and upper specification limits.
    pub fn spec(&self) -> (Option<f64>, Option<f64>) {
        self.spec_limits.map_or((None, None), |[l, u]| (l, u))
    }
}

/// Where a polled tag sits in the PLC.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    /// 0-based register address.
    pub register: u16,
    #[serde(default)]
    pub kind: RegisterKind,
    pub encoding: Encoding,
    /// For 32-bit values: which register holds the high word.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

/// Holding registers (FC3) or input registers (FC4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    #[default]
    Holding,
    Input,
}

/// How a value is laid out in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl Encoding {
    /// Registers one value takes.
    pub fn registers(self) -> u16 {
        match self {
            Encoding::U16 | Encoding::I16 => 1,
            Encoding::U32 | Encoding::I32 | Encoding::F32 => 2,
        }
    }
}

/// Modbus does not say which word of a 32-bit value comes first; PLC makers differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// The first register holds the high word (Modicon convention).
    #[default]
    HighFirst,
    /// The first register holds the low word ("word swapped").
    LowFirst,
}

impl ModbusSource {
    /// The engineering value of this tag's registers (as many as [`Encoding::registers`]).
    pub fn decode(&self, words: &[u16]) -> Option<f64> {
        let pair = || -> Option<u32> {
            let (&a, &b) = (words.first()?, words.get(1)?);
            let (high, low) = match self.word_order {
                WordOrder::HighFirst => (a, b),
                WordOrder::LowFirst => (b, a),
            };
            Some((u32::from(high) << 16) | u32::from(low))
        };
        let raw = match self.encoding {
            Encoding::U16 => f64::from(*words.first()?),
            Encoding::I16 => f64::from(*words.first()? as i16),
            Encoding::U32 => f64::from(pair()?),
            Encoding::I32 => f64::from(pair()? as i32),
            Encoding::F32 => f64::from(f32::from_bits(pair()?)),
        };
        Some(raw * self.scale + self.offset)
    }
}

/// Where a subscribed tag's samples are published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// The topic; payload: a number, or `{"value": …, "timestamp": RFC 3339 or epoch ms}`.
    pub topic: String,
}

/// The longest retention a `[sensors]` section may ask for: a century.
pub const MAX_RETENTION_DAYS: f64 = 36_500.0;

/// The furthest ahead of the station's clock `max_future_s` may let a sample be: a day. A
/// source further ahead has a clock to set, not samples to keep.
pub const MAX_FUTURE_S_LIMIT: f64 = 86_400.0;

/// Every problem with the `[sensors]` section and the tags.
pub fn check(sensors: &SensorsSection, tags: &[TagConfig], problems: &mut Vec<Problem>) {
    let mut problem = |field: String, message: String| problems.push(Problem { field, message });
    for (field, days) in [
        ("sensors.raw_retention_days", sensors.raw_retention_days),
        (
            "sensors.aggregate_retention_days",
            sensors.aggregate_retention_days,
        ),
    ] {
        // Bounded above too: "now minus the retention" must stay a time chrono can write.
        if !(days.is_finite() && days > 0.0 && days <= MAX_RETENTION_DAYS) {
            problem(
                field.into(),
                format!(
                    "expected a positive number of days up to {MAX_RETENTION_DAYS}, got {days}"
                ),
            );
        }
    }
    if !(sensors.max_future_s.is_finite()
        && (0.0..=MAX_FUTURE_S_LIMIT).contains(&sensors.max_future_s))
    {
        problem(
            "sensors.max_future_s".into(),
            format!(
                "expected seconds from 0 to {MAX_FUTURE_S_LIMIT}, got {}",
                sensors.max_future_s
            ),
        );
    }
    if let Some(address) = &sensors.modbus_address
        && address.parse::<std::net::SocketAddr>().is_err()
    {
        problem(
            "sensors.modbus_address".into(),
            format!("expected host:port such as 192.0.2.10:502, got {address:?}"),
        );
    }
    if let Some(broker) = &sensors.mqtt_broker
        && !broker.contains(':')
    {
        problem(
            "sensors.mqtt_broker".into(),
            format!("expected host:port, got {broker:?}"),
        );
    }
    if let Some(speed) = sensors.belt_speed_mm_s
        && !(speed.is_finite() && speed > 0.0)
    {
        problem(
            "sensors.belt_speed_mm_s".into(),
            format!("expected a positive speed, got {speed}"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, tag) in tags.iter().enumerate() {
        let at = |field: &str| format!("tags[{i}].{field}");
        if tag.name.is_empty()
            || !tag
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            problem(
                at("name"),
                format!(
                    "expected letters, digits, '_', '-' or '.', got {:?}",
                    tag.name
                ),
            );
        }
        if !seen.insert(tag.name.as_str()) {
            problem(at("name"), format!("tag {:?} is declared twice", tag.name));
        }
        if tag.period_ms == 0 {
            problem(at("period_ms"), "expected a positive period".into());
        }
        if let Some([low, high]) = tag.valid_range
            && !(low.is_finite() && high.is_finite() && low < high)
        {
            problem(
                at("valid_range"),
                format!("expected [low, high] with low < high, got [{low}, {high}]"),
            );
        }
        if let Some([low, high]) = tag.spec_limits {
            match (low, high) {
                (None, None) => problem(
                    at("spec_limits"),
                    "expected at least one limit; leave the field out for none".into(),
                ),
                (Some(l), Some(u)) if l >= u || l.is_nan() || u.is_nan() => problem(
                    at("spec_limits"),
                    format!("expected lower < upper, got [{l}, {u}]"),
                ),
                _ => {}
            }
        }
        if tag.transport_delay_ms.is_some() && tag.distance_mm.is_some() {
            problem(
                at("distance_mm"),
                "give transport_delay_ms or distance_mm, not both".into(),
            );
        }
        if let Some(distance) = tag.distance_mm {
            if !(distance.is_finite() && distance >= 0.0) {
                problem(
                    at("distance_mm"),
                    format!("expected a distance ≥ 0, got {distance}"),
                );
            }
            if sensors.belt_speed_mm_s.is_none() {
                problem(
                    at("distance_mm"),
                    "needs [sensors] belt_speed_mm_s to become a transport delay".into(),
                );
            }
        }
        if !(tag.spike_sigma.is_finite() && tag.spike_sigma >= 0.0) {
            problem(
                at("spike_sigma"),
                format!("expected ≥ 0 (0: off), got {}", tag.spike_sigma),
            );
        }
        if tag.modbus.is_some() && tag.mqtt.is_some() {
            problem(
                at("mqtt"),
                "a tag has one source: modbus or mqtt, not both".into(),
            );
        }
        if let Some(modbus) = &tag.modbus {
            if !(modbus.scale.is_finite() && modbus.scale != 0.0 && modbus.offset.is_finite()) {
                problem(
                    at("modbus.scale"),
                    "expected a finite, non-zero scale and a finite offset".into(),
                );
            }
            if u32::from(modbus.register) + u32::from(modbus.encoding.registers()) > 0x1_0000 {
                problem(
                    at("modbus.register"),
                    format!("{} runs past the last register", modbus.register),
                );
            }
        }
        if let Some(mqtt) = &tag.mqtt
            && (mqtt.topic.is_empty() || mqtt.topic.contains(['+', '#']))
        {
            problem(
                at("mqtt.topic"),
                format!("expected a topic without wildcards, got {:?}", mqtt.topic),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(encoding: Encoding, word_order: WordOrder) -> ModbusSource {
        ModbusSource {
            register: 0,
            kind: RegisterKind::Holding,
            encoding,
            word_order,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// Retention and the future allowance are bounded on both sides: a century of days or a
    /// day of seconds past them would overflow the time arithmetic of the prune and the check.
    #[test]
    fn retention_and_future_allowance_are_bounded() {
        let problems_of = |sensors: SensorsSection| {
            let mut problems = Vec::new();
            check(&sensors, &[], &mut problems);
            problems.into_iter().map(|p| p.field).collect::<Vec<_>>()
        };
        assert_eq!(problems_of(SensorsSection::default()), Vec::<String>::new());
        for days in [0.0, -1.0, f64::NAN, 1e8] {
            let sensors = SensorsSection {
                raw_retention_days: days,
                aggregate_retention_days: days,
                ..SensorsSection::default()
            };
            assert_eq!(
                problems_of(sensors),
                [
                    "sensors.raw_retention_days",
                    "sensors.aggregate_retention_days"
                ],
                "{days}"
            );
        }
        for seconds in [-1.0, f64::INFINITY, 1e18] {
            let sensors = SensorsSection {
                max_future_s: seconds,
                ..SensorsSection::default()
            };
            assert_eq!(problems_of(sensors), ["sensors.max_future_s"], "{seconds}");
        }
    }

    #[test]
    fn decodes_every_encoding_and_word_order() {
        let bits = 181.25f32.to_bits();
        let (high, low) = ((bits >> 16) as u16, bits as u16);
        assert_eq!(
            source(Encoding::F32, WordOrder::HighFirst).decode(&[high, low]),
            Some(181.25)
        );
        assert_eq!(
            source(Encoding::F32, WordOrder::LowFirst).decode(&[low, high]),
            Some(181.25)
        );
        assert_eq!(
            source(Encoding::I16, WordOrder::HighFirst).decode(&[(-125i16) as u16]),
            Some(-125.0)
        );
        assert_eq!(
            source(Encoding::U32, WordOrder::HighFirst).decode(&[1, 2]),
            Some(65538.0)
        );
        assert_eq!(
            source(Encoding::I32, WordOrder::LowFirst).decode(&[0xFFFE, 0xFFFF]),
            Some(-2.0)
        );
        let scaled = ModbusSource {
            scale: 0.1,
            offset: -5.0,
            ..source(Encoding::U16, WordOrder::HighFirst)
        };
        let value = scaled.decode(&[655]).expect("one register");
        assert!((value - 60.5).abs() < 1e-9, "{value}");
        assert_eq!(
            source(Encoding::F32, WordOrder::HighFirst).decode(&[1]),
            None
        );
    }
}
