//! A twin scenario: one TOML file in `scenarios/` describing a line well enough to run the
//! station's decisions against it, and the changes a what-if applies to it.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analyse::maintenance::watch::{self, MaintenanceWatch};
use crate::analyse::shifts::{ShiftCalendar, ShiftSection};
use crate::config::{Problem, SimulatorSection};
use crate::simulate::process::{
    CycleShape, DowntimeSpec, EffectSpec, Encoding, RegisterKind, SensorSpec, WordOrder,
};

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid TOML for a scenario: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("scenario {name}: {}", join(.problems))]
    Invalid {
        name: String,
        problems: Vec<Problem>,
    },
    #[error("no scenario {name:?} in {dir} (there are: {known})")]
    NotFound {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error("change {text:?}: {message}")]
    Change { text: String, message: String },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One line as the twin models it (a file of `scenarios/`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file's stem; set by [`Scenario::load`].
    #[serde(skip)]
    pub name: String,
    /// What the scenario is for, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// Simulated length of the run.
    pub hours: f64,
    /// Names the parts, their defects, the model's misses and the inspection times: the same
    /// seed gives the same run, and a what-if's two runs share their draws part by part.
    #[serde(default)]
    pub seed: u64,
    /// When the run starts, RFC 3339 in quotes (`"2026-01-05T06:00:00Z"`): where the run
    /// falls in the shift calendar. Default [`DEFAULT_START`], a Monday's midnight.
    pub start: Option<String>,
    /// Local time of the shift calendar is UTC + this, as a station's `[production]`
    /// `utc_offset_minutes`.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// When the line is planned to run, exactly as a station's `[[shifts]]` (breaks
    /// included). Outside planned time the belt stands: no parts, and it is no downtime (OEE
    /// availability is over planned time); work orders wait for the next shift. None: 24/7.
    #[serde(default)]
    pub shifts: Vec<ShiftSection>,
    pub belt: BeltSpec,
    pub station: StationSpec,
    pub process: ProcessSpec,
    /// Equipment watched for failure, exactly as a station's `[[maintenance]]`.
    #[serde(default)]
    pub maintenance: Vec<MaintenanceWatch>,
    /// The order queue, in the order it runs.
    #[serde(default)]
    pub work_orders: Vec<OrderSpec>,
}

/// The conveyor between the camera and the reject gate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeltSpec {
    pub speed_m_per_min: f64,
    /// The fastest the line is rated for: its ideal cycle time (ISO 22400 PRU) is the pitch at
    /// this speed. Default: the speed.
    pub rated_speed_m_per_min: Option<f64>,
    /// Distance from one part to the next.
    pub pitch_mm: f64,
    /// Distance from the camera's trigger to the diverter.
    pub camera_to_gate_mm: f64,
    /// A process sensor that reads the belt's speed: its base moves by the same factor as a
    /// change of the speed (so an effect on it sees the change).
    pub speed_sensor: Option<String>,
}

/// The station's side: how long it takes to decide and how well.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSpec {
    /// Verdicts later than travel − margin are not acted on (`[line] verdict_margin_ms`).
    pub verdict_margin_ms: f64,
    /// The gate command leaves this long before the part reaches the diverter.
    #[serde(default = "default_lead_ms")]
    pub actuation_lead_ms: f64,
    /// Frames waiting for inspection; a part captured while it is full is dropped (`[camera]
    /// frame_queue`).
    #[serde(default = "default_frame_queue")]
    pub frame_queue: usize,
    /// One inspection's time, log-normal with this median and 99th percentile (read them off
    /// `make bench-line` or the station's /metrics).
    pub inspect_ms_p50: f64,
    pub inspect_ms_p99: f64,
    /// Share of defective parts the model fails (its recall, from `linesight eval`).
    pub detection_rate: f64,
    /// Share of good parts the model fails.
    pub false_reject_rate: f64,
}

fn default_lead_ms() -> f64 {
    20.0
}

fn default_frame_queue() -> usize {
    4
}

/// The line's physics: what the simulated line's `[camera.simulator]` says, without the
/// registers (the twin reads its sensors directly).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The base share of defective parts, split evenly among the kinds.
    #[serde(default)]
    pub defect_rate: f64,
    #[serde(default)]
    pub sensors: Vec<TwinSensor>,
    #[serde(default)]
    pub effects: Vec<EffectSpec>,
    pub downtime: Option<DowntimeSpec>,
    /// How often the sensors are sampled for the analyses.
    #[serde(default = "default_sample_period_s")]
    pub sample_period_s: f64,
}

fn default_sample_period_s() -> f64 {
    1.0
}

/// A process sensor, as [`SensorSpec`] without its register.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinSensor {
    pub name: String,
    #[serde(default)]
    pub unit: String,
    pub base: f64,
    #[serde(default)]
    pub noise: f64,
    #[serde(default)]
    pub drift_per_hour: f64,
    pub cycle: Option<CycleShape>,
    pub cycle_period_s: Option<f64>,
    #[serde(default)]
    pub cycle_amplitude: f64,
    #[serde(default)]
    pub cycle_phase_s: f64,
    #[serde(default)]
    pub transport_delay_ms: u64,
    pub stuck_from_s: Option<f64>,
    pub stuck_for_s: Option<f64>,
    pub stopped_value: Option<f64>,
}

/// A work order of the queue.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSpec {
    pub id: String,
    #[serde(default)]
    pub product: String,
    /// Good parts to make.
    pub quantity: u64,
    /// Due this many hours after the run starts.
    pub due_h: f64,
}

impl Scenario {
    /// Reads and checks one scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut scenario: Scenario =
            toml::from_str(&text).map_err(|error| ScenarioError::Parse {
                path: path.to_owned(),
                message: error.to_string(),
            })?;
        scenario.name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenario.check()?;
        Ok(scenario)
    }

    /// The scenario `name` of `dir`, and only one listed there: a name is never read as a
    /// path (what the API takes).
    pub fn named(dir: &Path, name: &str) -> Result<Scenario, ScenarioError> {
        let known = list(dir);
        if !known.iter().any(|k| k == name) {
            return Err(ScenarioError::NotFound {
                name: name.to_owned(),
                dir: dir.to_owned(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        Scenario::load(&dir.join(format!("{name}.toml")))
    }

    /// Finds `name` in `dir` (`dir/name.toml`), or reads `name` as a path when it is one.
    pub fn find(dir: &Path, name: &str) -> Result<Scenario, ScenarioError> {
        let as_path = Path::new(name);
        if as_path.extension().is_some() && as_path.is_file() {
            return Scenario::load(as_path);
        }
        Scenario::named(dir, name)
    }

    /// Every problem of the scenario as a whole, as one error.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: field.to_owned(),
                message,
            })
        };
        let positive = [
            ("hours", self.hours),
            ("belt.speed_m_per_min", self.belt.speed_m_per_min),
            ("belt.pitch_mm", self.belt.pitch_mm),
            ("belt.camera_to_gate_mm", self.belt.camera_to_gate_mm),
            ("station.inspect_ms_p50", self.station.inspect_ms_p50),
            ("process.sample_period_s", self.process.sample_period_s),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                problem(field, format!("expected a positive number, got {value}"));
            }
        }
        if self.hours > MAX_HOURS {
            problem(
                "hours",
                format!("at most {MAX_HOURS} h are simulated, got {}", self.hours),
            );
        }
        // Bounds that keep every time a Duration and every run in memory.
        let parts = self.hours * 60.0 * self.parts_per_min();
        if self.parts_per_min() < 0.001 {
            problem(
                "belt.pitch_mm",
                format!(
                    "the belt brings {} parts/min, fewer than one in 1000 min",
                    self.parts_per_min()
                ),
            );
        }
        // An infinite or NaN figure is refused too.
        if (parts.is_nan() || parts > MAX_PARTS) && self.hours > 0.0 {
            problem(
                "belt.pitch_mm",
                format!(
                    "the run would make {parts:.0} parts, at most {MAX_PARTS:.0} are simulated: \
                     a wider pitch, a slower belt or fewer hours"
                ),
            );
        }
        let speed_mm_s = self.belt.speed_m_per_min * 1000.0 / 60.0;
        let travel_s = self.belt.camera_to_gate_mm / speed_mm_s;
        if travel_s.is_nan() || travel_s > MAX_TIME_S {
            problem(
                "belt.camera_to_gate_mm",
                format!("camera to gate takes {travel_s:.0} s, more than {MAX_TIME_S} s"),
            );
        }
        if self.process.sample_period_s.is_finite() && self.process.sample_period_s < 0.01 {
            problem(
                "process.sample_period_s",
                format!(
                    "expected at least 0.01 s, got {}",
                    self.process.sample_period_s
                ),
            );
        }
        for (field, value) in [
            ("station.verdict_margin_ms", self.station.verdict_margin_ms),
            ("station.actuation_lead_ms", self.station.actuation_lead_ms),
            ("station.inspect_ms_p99", self.station.inspect_ms_p99),
        ] {
            if value.is_finite() && value > MAX_TIME_S * 1000.0 {
                problem(
                    field,
                    format!("expected at most {} ms, got {value}", MAX_TIME_S * 1000.0),
                );
            }
        }
        if let Some(rated) = self.belt.rated_speed_m_per_min
            && self.belt.speed_m_per_min > rated
        {
            problem(
                "belt.speed_m_per_min",
                format!(
                    "{} m/min is faster than the line is rated for ({rated} m/min, \
                     belt.rated_speed_m_per_min): raise the rating to try it",
                    self.belt.speed_m_per_min
                ),
            );
        }
        if let Some(rated) = self.belt.rated_speed_m_per_min
            && !(rated.is_finite() && rated > 0.0)
        {
            problem(
                "belt.rated_speed_m_per_min",
                format!("expected a positive number, got {rated}"),
            );
        }
        if !(self.station.inspect_ms_p99.is_finite()
            && self.station.inspect_ms_p99 >= self.station.inspect_ms_p50)
        {
            problem(
                "station.inspect_ms_p99",
                format!(
                    "expected a time at least the median ({} ms), got {}",
                    self.station.inspect_ms_p50, self.station.inspect_ms_p99
                ),
            );
        }
        for (field, value) in [
            ("station.verdict_margin_ms", self.station.verdict_margin_ms),
            ("station.actuation_lead_ms", self.station.actuation_lead_ms),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problem(field, format!("expected a time of 0 or more, got {value}"));
            }
        }
        for (field, value) in [
            ("station.detection_rate", self.station.detection_rate),
            ("station.false_reject_rate", self.station.false_reject_rate),
            ("process.defect_rate", self.process.defect_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problem(field, format!("expected a share in [0, 1], got {value}"));
            }
        }
        if self.station.frame_queue == 0 {
            problem("station.frame_queue", "expected at least 1 frame".into());
        }
        if let Some(sensor) = &self.belt.speed_sensor
            && !self.process.sensors.iter().any(|s| &s.name == sensor)
        {
            problem(
                "belt.speed_sensor",
                format!("{sensor:?} is not one of the process sensors"),
            );
        }
        for (i, order) in self.work_orders.iter().enumerate() {
            if order.id.trim().is_empty() {
                problem(&format!("work_orders[{i}].id"), "expected an id".into());
            }
            if order.quantity == 0 {
                problem(
                    &format!("work_orders[{i}].quantity"),
                    "expected at least 1 part".into(),
                );
            }
            if !(order.due_h.is_finite() && (0.0..=MAX_DUE_H).contains(&order.due_h)) {
                problem(
                    &format!("work_orders[{i}].due_h"),
                    format!("expected 0 to {MAX_DUE_H} hours, got {}", order.due_h),
                );
            }
        }
        let tags: Vec<&str> = self
            .process
            .sensors
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        for (field, message) in watch::check(&self.maintenance, &tags) {
            problem(&field, message);
        }
        if let Err(bad) = self.start_time() {
            problems.push(bad);
        }
        match self.calendar() {
            Err(bad) => problems.extend(bad),
            Ok(calendar) => {
                if let Ok(start) = self.start_time() {
                    let from = start.timestamp_millis();
                    let to = from + (self.hours.clamp(0.0, MAX_HOURS) * 3.6e6) as i64;
                    if self.hours > 0.0 && calendar.planned_ms(from, to) == 0 {
                        problems.push(Problem {
                            field: "shifts".into(),
                            message: format!(
                                "no shift is planned in the run's {} h from {}: it would make nothing",
                                self.hours,
                                start.to_rfc3339()
                            ),
                        });
                    }
                }
            }
        }
        // The physics is checked by the simulated line's own rules.
        for mut line_problem in crate::simulate::process::check(&self.simulator_section()) {
            line_problem.field = line_problem
                .field
                .replacen("camera.simulator", "process", 1);
            problems.push(line_problem);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ScenarioError::Invalid {
                name: self.name.clone(),
                problems,
            })
        }
    }

    /// When the run starts.
    pub fn start_time(&self) -> Result<DateTime<Utc>, Problem> {
        let text = self.start.as_deref().unwrap_or(DEFAULT_START);
        DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|error| Problem {
                field: "start".into(),
                message: format!(
                    "expected an RFC 3339 time in quotes, as \"2026-01-05T06:00:00Z\", got {text:?}: {error}"
                ),
            })
    }

    /// The shift calendar, or every problem with `[[shifts]]` (fields named as in the file).
    pub fn calendar(&self) -> Result<ShiftCalendar, Vec<Problem>> {
        ShiftCalendar::build(&self.shifts, self.utc_offset_minutes).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| Problem {
                    // The station keeps the offset in [production]; a scenario at its top.
                    field: p.field.replace("production.", ""),
                    message: p.message,
                })
                .collect()
        })
    }

    /// Parts per minute: the belt's speed over the pitch.
    pub fn parts_per_min(&self) -> f64 {
        self.belt.speed_m_per_min * 1000.0 / self.belt.pitch_mm
    }

    /// The physics as the simulated line's section, each sensor in a register of its own.
    pub fn simulator_section(&self) -> SimulatorSection {
        let sensors = self
            .process
            .sensors
            .iter()
            .enumerate()
            .map(|(i, sensor)| SensorSpec {
                name: sensor.name.clone(),
                unit: sensor.unit.clone(),
                register: RegisterKind::Holding,
                address: u16::try_from(2 * i).unwrap_or(u16::MAX - 1),
                encoding: Encoding::F32,
                word_order: WordOrder::HighFirst,
                scale: 1.0,
                offset: 0.0,
                base: sensor.base,
                noise: sensor.noise,
                drift_per_hour: sensor.drift_per_hour,
                cycle: sensor.cycle,
                cycle_period_s: sensor.cycle_period_s,
                cycle_amplitude: sensor.cycle_amplitude,
                cycle_phase_s: sensor.cycle_phase_s,
                transport_delay_ms: sensor.transport_delay_ms,
                stuck_from_s: sensor.stuck_from_s,
                stuck_for_s: sensor.stuck_for_s,
                stopped_value: sensor.stopped_value,
            })
            .collect();
        SimulatorSection {
            parts_per_min: self.parts_per_min(),
            defect_rate: self.process.defect_rate,
            seed: self.seed,
            sensors,
            effects: self.process.effects.clone(),
            downtime: self.process.downtime.clone(),
            running_flag: None,
            roller: None,
            lighting: None,
        }
    }

    /// The scenario with `changes` applied in order, checked again.
    pub fn changed(&self, changes: &[Change]) -> Result<Scenario, ScenarioError> {
        let mut scenario = self.clone();
        for change in changes {
            change.apply(&mut scenario)?;
        }
        scenario.check()?;
        Ok(scenario)
    }
}

/// The longest run a scenario may ask for: a week, so a shift calendar's week-end fits.
pub const MAX_HOURS: f64 = 168.0;
/// When a scenario without `start` starts: Monday 2024-01-01, 00:00 UTC.
pub const DEFAULT_START: &str = "2024-01-01T00:00:00Z";
/// The most parts one run may make.
pub const MAX_PARTS: f64 = 5_000_000.0;
/// The longest travel, margin or inspection time, seconds.
pub const MAX_TIME_S: f64 = 3600.0;
/// The latest a work order may be due, hours after the start (a year).
pub const MAX_DUE_H: f64 = 8760.0;

/// The scenario names in `dir` (its `*.toml` files), sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .filter_map(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// How a change moves a setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum Amount {
    /// `=+20%`, `=-5%`: by a share of its value.
    Percent(f64),
    /// `=+2`, `=-0.5`: by this much.
    By(f64),
    /// `=14`: to this value.
    To(f64),
}

impl Amount {
    fn applied(self, value: f64) -> f64 {
        match self {
            Amount::Percent(p) => value * (1.0 + p / 100.0),
            Amount::By(d) => value + d,
            Amount::To(v) => v,
        }
    }
}

/// One change of a what-if: `setting=amount`, as `belt_speed=+20%`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// As written.
    pub text: String,
    pub setting: String,
    pub amount: Amount,
}

/// The settings a change may name, with what each moves.
pub const SETTINGS: [(&str, &str); 12] = [
    (
        "belt_speed",
        "belt speed, m/min (parts per minute follow at the same pitch)",
    ),
    ("pitch", "distance between parts, mm"),
    ("camera_to_gate", "camera trigger to diverter, mm"),
    ("verdict_margin", "station.verdict_margin_ms"),
    (
        "inspect_time",
        "inspection time, ms (its median and 99th percentile together)",
    ),
    ("frame_queue", "frames waiting for inspection"),
    ("detection_rate", "share of defective parts the model fails"),
    ("false_reject_rate", "share of good parts the model fails"),
    ("defect_rate", "the process's base defect share"),
    ("downtime_every", "seconds between stops"),
    ("downtime_for", "seconds each stop lasts"),
    (
        "SENSOR.base",
        "a process sensor's base (also .noise, .drift_per_hour, .cycle_amplitude)",
    ),
];

impl FromStr for Change {
    type Err = ScenarioError;

    fn from_str(text: &str) -> Result<Change, ScenarioError> {
        let error = |message: &str| ScenarioError::Change {
            text: text.to_owned(),
            message: message.to_owned(),
        };
        let (setting, amount) = text
            .split_once('=')
            .ok_or_else(|| error("expected SETTING=AMOUNT, as belt_speed=+20%"))?;
        let setting = setting.trim();
        let amount = amount.trim();
        let (number, percent) = match amount.strip_suffix('%') {
            Some(number) => (number.trim(), true),
            None => (amount, false),
        };
        let signed = number.starts_with('+') || number.starts_with('-');
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                error("expected a number, a signed number (+2) or a percentage (+20%)")
            })?;
        let amount = match (percent, signed) {
            (true, _) => Amount::Percent(value),
            (false, true) => Amount::By(value),
            (false, false) => Amount::To(value),
        };
        Ok(Change {
            text: text.to_owned(),
            setting: setting.to_owned(),
            amount,
        })
    }
}

impl Change {
    /// Moves the setting this change names in `scenario`.
    pub fn apply(&self, scenario: &mut Scenario) -> Result<(), ScenarioError> {
        let amount = self.amount;
        let error = |message: String| ScenarioError::Change {
            text: self.text.clone(),
            message,
        };
        match self.setting.as_str() {
            "belt_speed" => {
                let before = scenario.belt.speed_m_per_min;
                let speed = amount.applied(before);
                scenario.belt.speed_m_per_min = speed;
                // In whatever unit the sensor reads: it moves by the same factor.
                if let Some(name) = scenario.belt.speed_sensor.clone()
                    && let Some(sensor) =
                        scenario.process.sensors.iter_mut().find(|s| s.name == name)
                    && before > 0.0
                {
                    sensor.base *= speed / before;
                }
            }
            "pitch" => scenario.belt.pitch_mm = amount.applied(scenario.belt.pitch_mm),
            "camera_to_gate" => {
                scenario.belt.camera_to_gate_mm = amount.applied(scenario.belt.camera_to_gate_mm)
            }
            "verdict_margin" => {
                scenario.station.verdict_margin_ms =
                    amount.applied(scenario.station.verdict_margin_ms)
            }
            "inspect_time" => {
                let station = &mut scenario.station;
                let median = amount.applied(station.inspect_ms_p50);
                let ratio = station.inspect_ms_p99 / station.inspect_ms_p50;
                station.inspect_ms_p50 = median;
                station.inspect_ms_p99 = median * ratio;
            }
            "frame_queue" => {
                let frames = amount.applied(scenario.station.frame_queue as f64).round();
                if !(1.0..=1e6).contains(&frames) {
                    return Err(error(format!("expected 1 frame or more, got {frames}")));
                }
                scenario.station.frame_queue = frames as usize;
            }
            "detection_rate" => {
                scenario.station.detection_rate = amount.applied(scenario.station.detection_rate)
            }
            "false_reject_rate" => {
                scenario.station.false_reject_rate =
                    amount.applied(scenario.station.false_reject_rate)
            }
            "defect_rate" => {
                scenario.process.defect_rate = amount.applied(scenario.process.defect_rate)
            }
            "downtime_every" | "downtime_for" => {
                let downtime = scenario.process.downtime.get_or_insert(DowntimeSpec {
                    every_s: 0.0,
                    for_s: 0.0,
                    first_at_s: None,
                });
                let field = if self.setting == "downtime_every" {
                    &mut downtime.every_s
                } else {
                    &mut downtime.for_s
                };
                *field = amount.applied(*field);
            }
            other => {
                let sensor_field = other.split_once('.').and_then(|(name, field)| {
                    let sensor = scenario
                        .process
                        .sensors
                        .iter_mut()
                        .find(|s| s.name == name)?;
                    match field {
                        "base" => Some(&mut sensor.base),
                        "noise" => Some(&mut sensor.noise),
                        "drift_per_hour" => Some(&mut sensor.drift_per_hour),
                        "cycle_amplitude" => Some(&mut sensor.cycle_amplitude),
                        _ => None,
                    }
                });
                match sensor_field {
                    Some(field) => *field = amount.applied(*field),
                    None => {
                        let known: Vec<&str> = SETTINGS.iter().map(|(name, _)| *name).collect();
                        let sensors: Vec<&str> = scenario
                            .process
                            .sensors
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect();
                        return Err(error(format!(
                            "no setting {other:?}; settings: {}; sensors: {}",
                            known.join(", "),
                            if sensors.is_empty() {
                                "none".into()
                            } else {
                                sensors.join(", ")
                            }
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_percent_step_or_value() {
        let change = |text: &str| text.parse::<Change>().expect(text).amount;
        assert_eq!(change("belt_speed=+20%"), Amount::Percent(20.0));
        assert_eq!(change("belt_speed = -5 %"), Amount::Percent(-5.0));
        assert_eq!(change("verdict_margin=-50"), Amount::By(-50.0));
        assert_eq!(change("press_temp.base=175"), Amount::To(175.0));
        assert_eq!(Amount::Percent(20.0).applied(10.0), 12.0);
        assert_eq!(Amount::By(-50.0).applied(300.0), 250.0);
        assert_eq!(Amount::To(175.0).applied(178.0), 175.0);
        for bad in [
            "belt_speed",
            "belt_speed=",
            "belt_speed=+inf",
            "belt_speed=NaN%",
        ] {
            assert!(bad.parse::<Change>().is_err(), "{bad}");
        }
    }
}
