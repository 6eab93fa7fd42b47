//! Station configuration: one TOML file describing the line this station sits on.
//!
//! Loading is two steps, as in ripgrep's low/high args: [`StationFile`] mirrors the TOML
//! exactly (unknown fields are refused), then [`StationConfig::load`] checks it once, collecting
//! every problem, and resolves relative paths against the file's folder. Nothing downstream
//! validates again. Durations carry their unit in the field name (`travel_ms`).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::analyse::ProductionPlan;
use crate::analyse::alarms::{AlarmDefinition, AlarmSource, check_definitions};
use crate::analyse::charts::ChartDefinition;
use crate::analyse::maintenance::watch::MaintenanceWatch;
use crate::analyse::rootcause::station::RootCauseSection;
use crate::analyse::shifts::{ProductionSection, ShiftCalendar, ShiftSection};
use crate::capture::{CameraPipeline, EndOfStream, ParamValue, PresenceSettings, TriggerSource};
use crate::inspect::taxonomy::{DefectClass, Taxonomy};
use crate::models::backbone::bf16::Precision;
pub use crate::sense::tags::{SensorsSection, TagConfig};
// The simulator's own sections live with the simulator, which checks them; only their shape is
// named here, so the file is refused in one place.
use crate::simulate::process::{DowntimeSpec, EffectSpec, RunningFlagSpec, SensorSpec};

/// Why a station configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read station config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("station config {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("station config {path} is invalid:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One semantic problem in an otherwise well-formed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `line.travel_ms`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// The TOML file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationFile {
    pub station: StationSection,
    pub camera: CameraSection,
    /// Further cameras looking at the same parts (`[[views]]`: a side view beside the top
    /// one); each part's verdict is the worst of its views'.
    #[serde(default)]
    pub views: Vec<ViewSection>,
    pub calibration: CalibrationSection,
    pub model: ModelSection,
    pub line: LineSection,
    pub plc: PlcSection,
    /// Where the station sits in the plant (ISA-95 hierarchy): names MQTT topics and B2MML scopes.
    #[serde(default)]
    pub plant: PlantSection,
    #[serde(default)]
    pub records: RecordsSection,
    /// Publish every record to an MQTT broker; absent: no publishing.
    pub mqtt: Option<MqttSection>,
    /// How sensor data is kept and where it comes from.
    #[serde(default)]
    pub sensors: SensorsSection,
    /// The line signals this station watches.
    #[serde(default)]
    pub tags: Vec<TagConfig>,
    /// Alarm conditions on tags, KPIs, chart rules and the station (`[[alarms]]`).
    #[serde(default)]
    pub alarms: Vec<AlarmDefinition>,
    /// Named control charts (`[[charts]]`): alarms watch them as `chart:<name>`.
    #[serde(default)]
    pub charts: Vec<ChartDefinition>,
    /// The defect classes (`[[defect_classes]]`): colour, severity, whether each rejects.
    /// Seeds the taxonomy until an engineer saves one (see [`crate::inspect::taxonomy`]).
    #[serde(default)]
    pub defect_classes: Vec<DefectClass>,
    /// Master data of the KPIs: ideal cycle time, stop threshold, local time.
    #[serde(default)]
    pub production: ProductionSection,
    /// The shift calendar; none: every minute is planned (24/7).
    #[serde(default)]
    pub shifts: Vec<ShiftSection>,
    /// How root cause runs on the sliding window.
    #[serde(default)]
    pub root_cause: RootCauseSection,
    /// Equipment watched for failure (`[[maintenance]]`); each watch is an alarm.
    #[serde(default)]
    pub maintenance: Vec<MaintenanceWatch>,
    /// Receivers of alarm alerts (`[[webhooks]]`), e.g. a CMMS opening work orders.
    #[serde(default)]
    pub webhooks: Vec<crate::analyse::actions::WebhookSection>,
    /// The latched halt-line coil for a burst of critical defects; absent: none.
    #[serde(default)]
    pub halt_line: Option<crate::actuate::HaltLineSection>,
}

/// The ISA-95 equipment hierarchy above this station.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantSection {
    #[serde(default = "default_enterprise")]
    pub enterprise: String,
    #[serde(default = "default_site")]
    pub site: String,
    #[serde(default = "default_area")]
    pub area: String,
    #[serde(default = "default_line")]
    pub line: String,
}

impl Default for PlantSection {
    fn default() -> PlantSection {
        PlantSection {
            enterprise: default_enterprise(),
            site: default_site(),
            area: default_area(),
            line: default_line(),
        }
    }
}

fn default_enterprise() -> String {
    "enterprise".into()
}
fn default_site() -> String {
    "site".into()
}
fn default_area() -> String {
    "area".into()
}
fn default_line() -> String {
    "line".into()
}

/// The longest `[records] archive_after_days` may be: a century, as for the sensor store's
/// retention (`sense::tags::MAX_RETENTION_DAYS`). Longer is "never archive": leave it out.
pub const MAX_ARCHIVE_AFTER_DAYS: f64 = crate::sense::tags::MAX_RETENTION_DAYS;

/// How records and images use the data disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSection {
    /// Images stop being saved while less than this is free on the data disk (records go on).
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Images are kept under this many MiB in all, the oldest deleted first (their records
    /// stay). Absent: no budget.
    pub image_budget_mb: Option<u64>,
    /// Records older than this many days (at most [`MAX_ARCHIVE_AFTER_DAYS`]) are archived to
    /// files and pruned. Absent: kept.
    pub archive_after_days: Option<f64>,
    /// Where archive files go; relative to the config file. Default: `<data_dir>/archive`.
    pub archive_dir: Option<PathBuf>,
}

impl Default for RecordsSection {
    fn default() -> RecordsSection {
        RecordsSection {
            min_free_mb: default_min_free_mb(),
            image_budget_mb: None,
            archive_after_days: None,
            archive_dir: None,
        }
    }
}

fn default_min_free_mb() -> u64 {
    64
}

/// The plant's MQTT broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// `host:port` of the broker.
    pub broker: String,
    /// MQTT client id; default `linesight-<station>`.
    pub client_id: Option<String>,
}

/// Who this station is and where it keeps its data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Shown in the UI and the MES records.
    pub name: String,
    /// Folder for the record database and images; relative to the config file.
    pub data_dir: PathBuf,
    /// The digital twin's scenarios the API runs what-ifs on (`GET /api/v1/scenarios`);
    /// relative to the config file. Absent: none.
    pub scenarios: Option<PathBuf>,
}

/// Where frames come from: exactly one of `pipeline`, `launch` and `template`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// The camera's name in records and the UI, beside the `[[views]]`' names.
    #[serde(default = "default_camera_name")]
    pub name: String,
    /// A file with a gst-launch description ending in `appsink name=frames`; relative to the
    /// config file.
    pub pipeline: Option<PathBuf>,
    /// The gst-launch description itself.
    pub launch: Option<String>,
    /// A template from `pipelines/` (relative to the config file), filled from `params`.
    pub template: Option<PathBuf>,
    /// The template's parameters (`# @param` lines in the template say which).
    pub params: Option<BTreeMap<String, ParamValue>>,
    /// Frames waiting for inspection. When full, new frames are dropped and counted; their parts
    /// are still tracked and rejected by policy at the gate.
    #[serde(default = "default_frame_queue")]
    pub frame_queue: usize,
    /// Feeds the pipeline's `appsrc name=source` with synthetic parts. Absent for a real camera.
    pub simulator: Option<SimulatorSection>,
    /// A live camera that delivers no frame for this long is treated as lost (FAULT, then
    /// tried again): for sources that go quiet without an error. Absent: only errors count.
    pub stall_timeout_ms: Option<u64>,
    /// What the end of the camera's stream means: `"auto"` (default: a live source that ends
    /// is lost, a file is done), `"stop"` (the run ends) or `"reconnect"` (the camera is lost
    /// and tried again: a `tcpserversrc` whose sender closed the connection).
    #[serde(default)]
    pub end_of_stream: EndOfStream,
    /// A free-running camera: one part per passage through the view instead of one per frame.
    pub presence: Option<PresenceSettings>,
    /// A GigE Vision or USB3 Vision camera (aravissrc) put in GenICam trigger mode on this
    /// source: `"Software"` (server mode: the station fires it for each PLC trigger) or an
    /// input line (`"Line0"`, `"Line1"`, …) wired to the photo-eye.
    pub genicam_trigger: Option<String>,
}

fn default_frame_queue() -> usize {
    4
}

fn default_camera_name() -> String {
    "main".into()
}

/// Another camera looking at the station's parts (`[[views]]`): its frames are joined to the
/// parts `[camera]` makes by capture time, and inspected with the same model, through a
/// calibration of its own. The camera is triggered with the station's (wired to the same
/// photo-eye, or free-running: the part takes its nearest frame).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSection {
    /// Names the view in records, the UI and /metrics.
    pub name: String,
    /// Exactly one of `pipeline`, `launch` and `template`, as in `[camera]`.
    pub pipeline: Option<PathBuf>,
    pub launch: Option<String>,
    pub template: Option<PathBuf>,
    pub params: Option<BTreeMap<String, ParamValue>>,
    /// This camera's calibration: an OpenCV FileStorage YAML as `[calibration] file`, whose
    /// output size must be the model's input.
    pub calibration: PathBuf,
    /// A frame captured within this many milliseconds of a part's trigger shows that part; a
    /// part with none gets [`crate::part::Verdict::Error`] for this view and is rejected.
    #[serde(default = "default_match_ms")]
    pub match_ms: u64,
    /// As `[camera] stall_timeout_ms`.
    pub stall_timeout_ms: Option<u64>,
    /// How much later than the station camera's this camera's frames reach the station (a
    /// network camera's pipeline buffers 100 ms and more): the inspect stage waits that much
    /// longer for a part's frame.
    #[serde(default)]
    pub latency_ms: u64,
    /// Frames kept for joining to their parts, the newest; when full, the oldest goes. Make it
    /// hold a free-running camera's frames between two parts.
    #[serde(default = "default_view_frames")]
    pub frame_queue: usize,
    /// The built-in simulated line's camera shows this view: the same parts, on the same
    /// schedule, their face towards this camera drawn with its own seed.
    pub simulator: Option<ViewSimulator>,
}

fn default_match_ms() -> u64 {
    40
}

fn default_view_frames() -> usize {
    64
}

/// `[views.simulator]`: which face of the simulated parts this camera sees.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSimulator {
    /// Draws this face's defects (the part's other faces have seeds of their own).
    pub seed: u64,
    /// This face's base defect rate; default: `[camera.simulator] defect_rate`.
    pub defect_rate: Option<f64>,
}

/// A checked `[[views]]` entry, paths resolved.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    pub name: Arc<str>,
    pub pipeline: CameraPipeline,
    pub calibration_file: PathBuf,
    /// See [`ViewSection::match_ms`].
    pub match_window: Duration,
    /// See [`ViewSection::latency_ms`].
    pub latency: Duration,
    pub stall_timeout: Option<Duration>,
    pub frame_queue: NonZeroUsize,
    /// See [`ViewSection::simulator`].
    pub simulator: Option<ViewSimulator>,
}

/// Where a camera's pipeline comes from, as `[camera]` and `[[views]]` both give it.
struct PipelineFields<'a> {
    pipeline: Option<&'a PathBuf>,
    launch: Option<&'a String>,
    template: Option<&'a PathBuf>,
    params: Option<&'a BTreeMap<String, ParamValue>>,
}

impl CameraSection {
    fn pipeline_fields(&self) -> PipelineFields<'_> {
        PipelineFields {
            pipeline: self.pipeline.as_ref(),
            launch: self.launch.as_ref(),
            template: self.template.as_ref(),
            params: self.params.as_ref(),
        }
    }
}

impl ViewSection {
    fn pipeline_fields(&self) -> PipelineFields<'_> {
        PipelineFields {
            pipeline: self.pipeline.as_ref(),
            launch: self.launch.as_ref(),
            template: self.template.as_ref(),
            params: self.params.as_ref(),
        }
    }
}

/// The `[[views]]` entries: named apart from each other and `[camera]`, one pipeline each
/// (filled as `[camera]`'s), existing files, a window that joins frames to parts.
fn check_views(file: &StationFile, base: &Path, problem: &mut dyn FnMut(&str, String)) {
    let mut names = vec![file.camera.name.as_str()];
    if file.camera.name.trim().is_empty() {
        problem("camera.name", "expected a name".into());
    }
    for (i, view) in file.views.iter().enumerate() {
        let field = |name: &str| format!("views[{i}].{name}");
        if view.name.trim().is_empty() {
            problem(&field("name"), "expected a name".into());
        } else if names.contains(&view.name.as_str()) {
            problem(
                &field("name"),
                format!(
                    "{:?} names another camera already: each view needs a name of its own",
                    view.name
                ),
            );
        }
        names.push(&view.name);
        let sources = [
            view.pipeline.is_some(),
            view.launch.is_some(),
            view.template.is_some(),
        ];
        if sources.iter().filter(|given| **given).count() != 1 {
            problem(
                &format!("views[{i}]"),
                "expected exactly one of `pipeline`, `launch` and `template`, as in [camera]"
                    .into(),
            );
        }
        if view.params.is_some() && view.template.is_none() {
            problem(
                &field("params"),
                "parameters fill a template: give `template = ` too".into(),
            );
        }
        let mut missing = false;
        for (name, path) in [
            ("pipeline", view.pipeline.as_ref()),
            ("template", view.template.as_ref()),
            ("calibration", Some(&view.calibration)),
        ] {
            if let Some(path) = path.map(|p| base.join(p))
                && !path.exists()
            {
                missing = true;
                problem(
                    &field(name),
                    format!(
                        "expected an existing path, {} does not exist",
                        path.display()
                    ),
                );
            }
        }
        if !missing
            && (view.template.is_some() || view.pipeline.is_some())
            && let Err(error) =
                camera_pipeline(view.pipeline_fields(), &|p: &Path| base.join(p)).description()
        {
            let name = if view.template.is_some() {
                "template"
            } else {
                "pipeline"
            };
            problem(&field(name), error.to_string());
        }
        if !(1..=1000).contains(&view.match_ms) {
            problem(
                &field("match_ms"),
                format!("expected milliseconds in [1, 1000], got {}", view.match_ms),
            );
        }
        if view.stall_timeout_ms == Some(0) {
            problem(
                &field("stall_timeout_ms"),
                "expected a positive time; leave it out to count errors only".into(),
            );
        }
        if view.frame_queue == 0 {
            problem(&field("frame_queue"), "expected at least 1".into());
        }
        match (&view.simulator, &file.camera.simulator) {
            (Some(_), None) => problem(
                &field("simulator"),
                "a simulated view shows the simulated line's parts: [camera.simulator] is \
                 missing"
                    .into(),
            ),
            (Some(face), Some(line)) => {
                if let Some(rate) = face.defect_rate
                    && !(0.0..=1.0).contains(&rate)
                {
                    problem(
                        &field("simulator.defect_rate"),
                        format!("expected a share in [0, 1], got {rate}"),
                    );
                }
                // A window as wide as half the time between parts could take a neighbour's frame.
                let half_pitch_ms = 30_000.0 / line.parts_per_min;
                if line.parts_per_min > 0.0 && view.match_ms as f64 >= half_pitch_ms {
                    problem(
                        &field("match_ms"),
                        format!(
                            "{} ms is not under half the time between the simulated line's parts \
                             ({half_pitch_ms:.0} ms at {} parts/min)",
                            view.match_ms, line.parts_per_min
                        ),
                    );
                }
            }
            (None, _) => {}
        }
    }
}

/// `[camera.presence]`'s values: `capture::presence` reads the table itself.
fn check_presence(
    presence: &PresenceSettings,
    plc: PlcKind,
    problem: &mut dyn FnMut(&str, String),
) {
    if !(presence.threshold > 0.0 && presence.threshold < 255.0) {
        problem(
            "camera.presence.threshold",
            format!(
                "expected a change in grey levels in (0, 255), got {}",
                presence.threshold
            ),
        );
    }
    if let Some(roi) = presence.roi
        && (roi.width == 0 || roi.height == 0)
    {
        problem(
            "camera.presence.roi",
            "expected [x, y, width, height] with a positive width and height".into(),
        );
    }
    for (field, frames) in [
        ("camera.presence.enter_frames", presence.enter_frames),
        ("camera.presence.leave_frames", presence.leave_frames),
        (
            "camera.presence.max_passage_frames",
            presence.max_passage_frames,
        ),
    ] {
        if frames == 0 {
            problem(field, "expected at least 1 frame".into());
        }
    }
    if plc == PlcKind::Server {
        problem(
            "camera.presence",
            "in server mode the PLC triggers each capture at its photo-eye; leave out the \
                 presence detector"
                .into(),
        );
    }
}

/// The camera pipeline `[camera]` or a `[[views]]` entry names, paths resolved by `resolve`.
/// `check` has made sure exactly one source is given; were none, the empty description fails
/// at start.
fn camera_pipeline(
    camera: PipelineFields<'_>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> CameraPipeline {
    match (camera.template, camera.launch, camera.pipeline) {
        (Some(template), ..) => CameraPipeline::Template {
            path: resolve(template),
            params: camera.params.cloned().unwrap_or_default(),
        },
        (None, Some(launch), _) => CameraPipeline::Launch(launch.clone()),
        (None, None, Some(file)) => CameraPipeline::File(resolve(file)),
        (None, None, None) => CameraPipeline::Launch(String::new()),
    }
}

/// The built-in simulated line: its part generator and, optionally, its line sensors, the true
/// effects of their values on the defects, and its downtimes (`crate::simulate::LineProcess`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSection {
    /// Belt rate.
    pub parts_per_min: f64,
    /// Share of parts that carry a defect, in `[0, 1]`, shared evenly among the kinds: the base
    /// the sensors' effects add to.
    #[serde(default = "default_defect_rate")]
    pub defect_rate: f64,
    /// Makes the sequence of parts (and the sensors' noise) reproducible.
    #[serde(default)]
    pub seed: u64,
    /// Line sensors the simulated PLC serves in registers.
    #[serde(default)]
    pub sensors: Vec<SensorSpec>,
    /// What the sensors' true values do to the defect probabilities: the ground truth.
    #[serde(default)]
    pub effects: Vec<EffectSpec>,
    /// Short stops of the belt; absent: it never stops.
    pub downtime: Option<DowntimeSpec>,
    /// A register the PLC sets to 1 while the line runs, 0 while it is down.
    pub running_flag: Option<RunningFlagSpec>,
    /// A damaged roller marking every N-th part at one place; absent: none.
    pub roller: Option<crate::simulate::process::RollerSpec>,
    /// A change of lighting from some part on; absent: the lighting stays.
    pub lighting: Option<crate::simulate::process::LightingSpec>,
}

fn default_defect_rate() -> f64 {
    0.3
}

/// The camera's calibration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    /// An OpenCV FileStorage YAML with camera_matrix, distortion_coefficients and the ROI.
    pub file: PathBuf,
}

/// The defect model this station runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Folder holding `model.safetensors` and `card.json`; relative to the config file.
    pub dir: PathBuf,
    /// Overrides the threshold stored in the model card (of this model only, not of versions
    /// promoted later), on the model's own scale: a probability in (0, 1] for the trained
    /// families, standard deviations above good parts for an anomaly model.
    pub threshold: Option<f32>,
    /// The folder of model versions that can be promoted; default: the folder holding `dir`.
    pub registry: Option<PathBuf>,
    /// A file of pretrained backbone weights, for models built on them, looked at first. A
    /// model runs only on the weights its card names (by SHA-256); without this, or when this
    /// file holds other weights, they are looked for beside the model, in the registry, in
    /// `$LINESIGHT_WEIGHTS`, in the user's cache and in the build's `models/`
    /// ([`crate::models::backbone::WeightsSearch`]).
    pub backbone: Option<PathBuf>,
    /// Where the models run: `cpu` (the default) or `cuda`.
    #[serde(default)]
    pub device: ModelDevice,
    /// Inspect workers: parts scored side by side when they queue up (1 to 16, default 2),
    /// all on the same cores. A part alone gets every core either way, so a slow line sees no
    /// difference; when parts queue up, two workers keep the cores busy through a forward
    /// pass's serial stretches and a fast line sustains more parts a second (`make bench`:
    /// `anomaly/two_parts_at_once_input128_shared_pool` against twice
    /// `anomaly/score_256_input128_bank4096`; `BENCH_WORKERS=1|2 make bench-line`).
    #[serde(default = "default_inspect_workers")]
    pub workers: usize,
    /// The most parts a worker scores in one pass when they queue up (1 to 64; default 1 on
    /// the CPU, 32 on a GPU): only parts already waiting are taken, never one waited for, so
    /// a slow line sees no difference. On the CPU the cores are busy either way (`make
    /// bench`: a batch of 2 took 9.90 ms against 5.01 for one part, two workers 9.02). On a
    /// GPU a pass at batch 1 is bound by its kernel launches, so a batch should cost little
    /// more than one part: the default of 32 there is provisional until `make bench-cuda`
    /// (`cuda/anomaly/batch_*`) has run on one.
    pub batch: Option<usize>,
    /// The arithmetic of the backbone's 1×1 convolutions on the CPU: `auto` (the default:
    /// bfloat16 products where the CPU has AVX-512 BF16 and they are faster there, timed once
    /// when the station starts; else f32), `f32` or `bf16`
    /// ([`crate::models::backbone::bf16`]), for every model the station loads. About a fifth
    /// faster on AMD Zen 4, no faster (its 1×1 layers slower) on the Intel Xeon the project
    /// measures on now (`make bench`: `bf16/*` beside the f32 benches); held-out figures
    /// within 0.004 of f32 (`make eval-precision`), and a test holds scores within half the
    /// good parts' spread.
    #[serde(default)]
    pub precision: Precision,
}

fn default_inspect_workers() -> usize {
    2
}

/// The most parts scored in one pass ([`ModelSection::batch`]).
pub const MAX_INSPECT_BATCH: usize = 64;

impl ModelSection {
    /// [`ModelSection::batch`], or its default on the section's device.
    pub fn batch_or_default(&self) -> usize {
        self.batch.unwrap_or(match self.device {
            ModelDevice::Cpu => 1,
            ModelDevice::Cuda => 32,
        })
    }
}

/// The most inspect workers a station may run: beyond the cores, they only take turns.
pub const MAX_INSPECT_WORKERS: usize = 16;

/// Where a station's models run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDevice {
    /// Every box has one.
    #[default]
    Cpu,
    /// The first CUDA GPU: needs a build with the `cuda` cargo feature.
    Cuda,
}

/// Geometry and timing of the belt between camera and gate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSection {
    /// Time a part takes from the camera trigger to the reject gate.
    pub travel_ms: u64,
    /// A reject pulse is on time when it lands within ± this of the part's arrival (what the
    /// line's tests and the station's info report hold the PLC to).
    pub gate_window_ms: u64,
    /// A verdict must be in this long before the part reaches the gate, or it is rejected by policy.
    pub verdict_margin_ms: u64,
    /// Each part's gate command is sent this long before arrival, to cover the PLC link's
    /// latency; below the PLC program's command window (the register map's
    /// `match_before_ms + eye_to_gate_ms`), which the station checks at start.
    #[serde(default)]
    pub actuation_lead_ms: u64,
    /// How the station follows a part from the camera to the gate: `"time"` (at the belt's
    /// nominal speed, `travel_ms`) or `"encoder"` (by the PLC's belt encoder, the register
    /// map's `[encoder]`: `travel_counts` from camera to diverter; the PLC program must track
    /// by encoder too, its map's `[plc_program] tracking`). Client mode only.
    #[serde(default)]
    pub tracking: crate::actuate::PlcTracking,
    /// Encoder counts from the camera's trigger to the diverter (encoder tracking).
    pub travel_counts: Option<u64>,
    /// How often the station reads the encoder (encoder tracking).
    #[serde(default = "default_encoder_poll_ms")]
    pub encoder_poll_ms: u64,
    /// An encoder reading older than this is not trusted: no gate command leaves on it, and a
    /// part the belt carried past the diverter meanwhile is reported as rejected by policy.
    #[serde(default = "default_encoder_stale_ms")]
    pub encoder_stale_ms: u64,
}

fn default_encoder_poll_ms() -> u64 {
    2
}

fn default_encoder_stale_ms() -> u64 {
    20
}

/// How parts are followed from the camera to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// By time: a part reaches the gate `travel` after its trigger.
    Time,
    /// By the PLC's encoder count.
    Encoder(EncoderTracking),
}

/// Encoder tracking's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderTracking {
    /// Counts from the camera's trigger to the diverter.
    pub travel_counts: u64,
    /// How often the encoder is read.
    pub poll: Duration,
    /// A reading older than this is not trusted.
    pub stale_after: Duration,
}

/// The line PLC that drives the reject gate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlcSection {
    /// `simulated` starts the built-in PLC simulator on loopback; `tcp` talks to `address`
    /// (client mode: the station writes each verdict into the PLC's registers and times the
    /// gate); `server` serves the PLC at `listen` (server mode: the PLC triggers, reads
    /// results and times the gate; the register map's `[server]`).
    #[serde(rename = "type")]
    pub kind: PlcKind,
    /// `host:port` of the PLC's Modbus TCP server (type `tcp`).
    pub address: Option<String>,
    /// `host:port` the station's Modbus TCP server listens on (type `server`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Modbus unit id of the PLC.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// The register map shared with the PLC program; relative to the config file.
    pub register_map: PathBuf,
    /// Every Modbus request is abandoned after this long and the link rebuilt.
    pub request_timeout_ms: u64,
    /// How often the station writes its heartbeat register (and reads the PLC's).
    pub heartbeat_ms: u64,
    /// The PLC is lost when its own heartbeat (the register map's `plc_status`) has not
    /// moved for this long: the station goes DEGRADED, raises `plc_heartbeat_lost` and
    /// applies `on_plc_lost`.
    #[serde(default = "default_plc_heartbeat_timeout_ms")]
    pub plc_heartbeat_timeout_ms: u64,
    /// What the station does while the PLC is lost.
    #[serde(default)]
    pub on_plc_lost: PlcLostPolicy,
}

fn default_unit_id() -> u8 {
    1
}

fn default_plc_heartbeat_timeout_ms() -> u64 {
    2000
}

/// What the station does while the PLC's heartbeat is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlcLostPolicy {
    /// Send no PASS: every part's command says reject by policy, so a PLC program that
    /// comes back without noticing it stopped diverts what went by meanwhile.
    #[default]
    DivertAll,
    /// Also write the halt-line coil ON: the PLC program latches the halt (rule R8), and
    /// only an operator's reset at the line releases it, once the station has written the
    /// coil OFF again (when the PLC beats again, unless the halt-line action holds it). Needs
    /// the register map's `[halt_line]` coil.
    StopLine,
}

/// How the station reaches its PLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlcKind {
    Simulated,
    Tcp,
    Server,
}

/// A checked configuration, with paths resolved.
#[derive(Debug, Clone)]
pub struct StationConfig {
    pub source_path: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    /// See [`StationSection::scenarios`].
    pub scenarios_dir: Option<PathBuf>,
    /// Where the camera pipeline comes from.
    pub camera_pipeline: CameraPipeline,
    /// See [`CameraSection::name`].
    pub camera_name: Arc<str>,
    /// Further cameras on the same parts (`[[views]]`).
    pub views: Vec<ViewConfig>,
    pub frame_queue: NonZeroUsize,
    pub simulator: Option<SimulatorSection>,
    /// See [`CameraSection::stall_timeout_ms`].
    pub camera_stall_timeout: Option<Duration>,
    /// See [`CameraSection::end_of_stream`].
    pub camera_end_of_stream: EndOfStream,
    /// See [`CameraSection::presence`].
    pub camera_presence: Option<PresenceSettings>,
    /// See [`CameraSection::genicam_trigger`].
    pub camera_trigger: Option<TriggerSource>,
    pub calibration_file: PathBuf,
    pub model_dir: PathBuf,
    pub threshold_override: Option<f32>,
    pub model_registry: PathBuf,
    /// See [`ModelSection::backbone`].
    pub backbone_weights: Option<PathBuf>,
    pub model_device: ModelDevice,
    /// See [`ModelSection::workers`].
    pub inspect_workers: NonZeroUsize,
    /// See [`ModelSection::batch`].
    pub inspect_batch: NonZeroUsize,
    /// See [`ModelSection::precision`].
    pub model_precision: Precision,
    /// Bearer token the API asks for before changing the model; not in the file (the CLI takes
    /// it from `LINESIGHT_ADMIN_TOKEN`). Without one, model changes over HTTP are refused.
    pub admin_token: Option<String>,
    pub line: LineTiming,
    /// How parts are followed along the belt; `line.travel` stays the nominal travel time.
    pub tracking: Tracking,
    pub plc: PlcSettings,
    pub plant: PlantSection,
    pub records: RecordsSection,
    pub mqtt: Option<MqttSection>,
    pub sensors: SensorsSection,
    pub tags: Vec<TagConfig>,
    /// The alarms the file declares (the built-in ones come on top, see
    /// [`crate::analyse::alarms::builtin_definitions`]).
    pub alarms: Vec<AlarmDefinition>,
    /// The named control charts.
    pub charts: Vec<ChartDefinition>,
    /// The TOML's defect classes, checked.
    pub defect_classes: Taxonomy,
    /// The shift calendar, ideal cycle time and stop threshold the KPIs are measured against.
    pub production: ProductionPlan,
    pub root_cause: RootCauseSection,
    pub maintenance: Vec<MaintenanceWatch>,
    /// Receivers of alarm alerts.
    pub webhooks: Vec<crate::analyse::actions::WebhookSection>,
    /// The halt-line rule; absent: no halt line.
    pub halt_line: Option<crate::actuate::HaltLineSection>,
}

impl StationConfig {
    /// The station's place in the plant, as a topic path and B2MML scope:
    /// `enterprise/site/area/line/station`.
    pub fn hierarchy(&self) -> [&str; 5] {
        [
            &self.plant.enterprise,
            &self.plant.site,
            &self.plant.area,
            &self.plant.line,
            &self.name,
        ]
    }
}

/// Belt timing as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    pub travel: Duration,
    pub gate_window: Duration,
    pub verdict_margin: Duration,
    pub actuation_lead: Duration,
}

/// PLC link settings as typed values.
#[derive(Debug, Clone)]
pub struct PlcSettings {
    pub kind: PlcKind,
    pub address: Option<String>,
    /// Where the station serves the PLC (type `server`; checked to parse).
    pub listen: Option<std::net::SocketAddr>,
    pub unit_id: u8,
    pub register_map_file: PathBuf,
    pub request_timeout: Duration,
    pub heartbeat: Duration,
    pub plc_heartbeat_timeout: Duration,
    pub on_plc_lost: PlcLostPolicy,
}

impl StationConfig {
    /// Reads, parses and checks a station config file.
    pub fn load(path: &Path) -> Result<StationConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        StationConfig::parse(&text, path)
    }

    /// Parses and checks config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<StationConfig, ConfigError> {
        let file = parse_file(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let problems = check(&file, base);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        let resolve = |p: &Path| base.join(p);
        let calendar = ShiftCalendar::build(&file.shifts, file.production.utc_offset_minutes)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems: problems
                    .into_iter()
                    .map(|p| Problem {
                        field: p.field,
                        message: p.message,
                    })
                    .collect(),
            })?;
        let ideal_cycle_s = ideal_cycle_s(&file);
        let production = ProductionPlan {
            calendar: std::sync::Arc::new(calendar),
            ideal_cycle_s,
            // Ten ideal cycles without a part: more than a gap between parts, less than a stop.
            stop_after_s: file
                .production
                .stop_after_s
                .unwrap_or_else(|| ideal_cycle_s.map_or(60.0, |cycle| 10.0 * cycle)),
            running_tag: file.production.running_tag.clone(),
        };
        let model_dir = resolve(&file.model.dir);
        let model_registry = match &file.model.registry {
            Some(registry) => resolve(registry),
            None => model_dir.parent().unwrap_or(base).to_owned(),
        };
        let backbone_weights = file.model.backbone.as_deref().map(&resolve);
        Ok(StationConfig {
            source_path: path.to_owned(),
            name: file.station.name,
            data_dir: resolve(&file.station.data_dir),
            scenarios_dir: file.station.scenarios.as_deref().map(&resolve),
            camera_pipeline: camera_pipeline(file.camera.pipeline_fields(), &resolve),
            camera_name: Arc::from(file.camera.name.as_str()),
            views: file
                .views
                .iter()
                .map(|view| ViewConfig {
                    name: Arc::from(view.name.as_str()),
                    pipeline: camera_pipeline(view.pipeline_fields(), &resolve),
                    calibration_file: resolve(&view.calibration),
                    match_window: Duration::from_millis(view.match_ms),
                    latency: Duration::from_millis(view.latency_ms),
                    stall_timeout: view.stall_timeout_ms.map(Duration::from_millis),
                    // Checked non-zero.
                    frame_queue: NonZeroUsize::new(view.frame_queue).unwrap_or(NonZeroUsize::MIN),
                    simulator: view.simulator,
                })
                .collect(),
            // Checked non-zero above.
            frame_queue: NonZeroUsize::new(file.camera.frame_queue).unwrap_or(NonZeroUsize::MIN),
            simulator: file.camera.simulator,
            camera_stall_timeout: file.camera.stall_timeout_ms.map(Duration::from_millis),
            camera_end_of_stream: file.camera.end_of_stream,
            camera_presence: file.camera.presence.clone(),
            camera_trigger: file.camera.genicam_trigger.clone().map(TriggerSource),
            calibration_file: resolve(&file.calibration.file),
            model_dir,
            threshold_override: file.model.threshold,
            model_registry,
            backbone_weights,
            model_device: file.model.device,
            // Checked in range.
            inspect_workers: NonZeroUsize::new(file.model.workers).unwrap_or(NonZeroUsize::MIN),
            inspect_batch: NonZeroUsize::new(file.model.batch_or_default())
                .unwrap_or(NonZeroUsize::MIN),
            model_precision: file.model.precision,
            admin_token: None,
            line: LineTiming {
                travel: Duration::from_millis(file.line.travel_ms),
                gate_window: Duration::from_millis(file.line.gate_window_ms),
                verdict_margin: Duration::from_millis(file.line.verdict_margin_ms),
                actuation_lead: Duration::from_millis(file.line.actuation_lead_ms),
            },
            tracking: match file.line.tracking {
                crate::actuate::PlcTracking::Time => Tracking::Time,
                // Checked present above.
                crate::actuate::PlcTracking::Encoder => Tracking::Encoder(EncoderTracking {
                    travel_counts: file.line.travel_counts.unwrap_or(1),
                    poll: Duration::from_millis(file.line.encoder_poll_ms),
                    stale_after: Duration::from_millis(file.line.encoder_stale_ms),
                }),
            },
            plc: PlcSettings {
                kind: file.plc.kind,
                address: file.plc.address,
                listen: file.plc.listen.as_deref().and_then(|a| a.parse().ok()),
                unit_id: file.plc.unit_id,
                register_map_file: resolve(&file.plc.register_map),
                request_timeout: Duration::from_millis(file.plc.request_timeout_ms),
                heartbeat: Duration::from_millis(file.plc.heartbeat_ms),
                plc_heartbeat_timeout: Duration::from_millis(file.plc.plc_heartbeat_timeout_ms),
                on_plc_lost: file.plc.on_plc_lost,
            },
            plant: file.plant,
            records: RecordsSection {
                archive_dir: file.records.archive_dir.as_deref().map(resolve),
                ..file.records
            },
            mqtt: file.mqtt,
            sensors: file.sensors,
            tags: file.tags,
            alarms: file.alarms,
            charts: file.charts,
            // Checked with the other problems above.
            defect_classes: Taxonomy::new(file.defect_classes).unwrap_or_default(),
            production,
            root_cause: file.root_cause,
            maintenance: file.maintenance,
            webhooks: file.webhooks,
            halt_line: file.halt_line,
        })
    }
}

/// The station's ideal cycle time (PRU) in seconds: as configured, else the simulated belt's.
fn ideal_cycle_s(file: &StationFile) -> Option<f64> {
    file.production
        .ideal_cycle_ms
        .map(|ms| ms / 1000.0)
        .or_else(|| {
            file.camera
                .simulator
                .as_ref()
                .filter(|sim| sim.parts_per_min > 0.0)
                .map(|sim| 60.0 / sim.parts_per_min)
        })
}

fn parse_file(text: &str, path: &Path) -> Result<StationFile, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        // toml's message carries the line, the column and the offending text.
        ConfigError::Field {
            path: path.to_owned(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: inner.to_string().trim_end().to_owned(),
        }
    })
}

/// Every semantic problem at once, so a user fixes the file in one pass.
fn check(file: &StationFile, base: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(Problem {
            field: field.to_owned(),
            message,
        })
    };
    if file.station.name.trim().is_empty() {
        problem("station.name", "expected a non-empty name".into());
    }
    // These name MQTT topic levels: no wildcards, separators or control characters.
    let plant = &file.plant;
    for (field, value) in [
        ("station.name", &file.station.name),
        ("plant.enterprise", &plant.enterprise),
        ("plant.site", &plant.site),
        ("plant.area", &plant.area),
        ("plant.line", &plant.line),
    ] {
        if value
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
        {
            problem(
                field,
                format!(
                    "{value:?} cannot name a topic level: no '/', '+', '#' or control characters"
                ),
            );
        }
    }
    // Bounded above too: the archiver's cutoff, now minus this, must stay a time chrono can
    // write, and start-up turns it into a `Duration` that panics past about 2e14 days. A
    // century is "keep for ever" for any station.
    if let Some(days) = file.records.archive_after_days
        && !(days.is_finite() && days > 0.0 && days <= MAX_ARCHIVE_AFTER_DAYS)
    {
        problem(
            "records.archive_after_days",
            format!(
                "expected a positive number of days up to {MAX_ARCHIVE_AFTER_DAYS} (a century), got {days}"
            ),
        );
    }
    if file.records.image_budget_mb == Some(0) {
        problem("records.image_budget_mb", "expected at least 1".into());
    }
    if let Some(mqtt) = &file.mqtt
        && !mqtt.broker.contains(':')
    {
        problem(
            "mqtt.broker",
            format!("expected host:port, got {:?}", mqtt.broker),
        );
    }
    if let Some(ms) = file.production.ideal_cycle_ms
        && !(ms.is_finite() && ms > 0.0 && ms <= 86_400_000.0)
    {
        problem(
            "production.ideal_cycle_ms",
            format!("expected milliseconds per part in (0, 86400000], got {ms}"),
        );
    }
    if let Some(s) = file.production.stop_after_s
        && !(s.is_finite() && s > 0.0 && s <= 86_400.0)
    {
        problem(
            "production.stop_after_s",
            format!("expected seconds in (0, 86400], got {s}"),
        );
    }
    if let Some(tag) = &file.production.running_tag
        && !file.tags.iter().any(|t| &t.name == tag)
    {
        problem(
            "production.running_tag",
            format!("no [[tags]] entry is named {tag:?}"),
        );
    }
    if let Err(calendar) = ShiftCalendar::build(&file.shifts, file.production.utc_offset_minutes) {
        for p in calendar {
            problem(&p.field, p.message);
        }
    }
    if file.camera.frame_queue == 0 {
        problem("camera.frame_queue", "expected at least 1".into());
    }
    if !(1..=MAX_INSPECT_BATCH).contains(&file.model.batch_or_default()) {
        problem(
            "model.batch",
            format!(
                "expected 1 to {MAX_INSPECT_BATCH}, got {}",
                file.model.batch_or_default()
            ),
        );
    }
    if !(1..=MAX_INSPECT_WORKERS).contains(&file.model.workers) {
        problem(
            "model.workers",
            format!(
                "expected 1 to {MAX_INSPECT_WORKERS}, got {}",
                file.model.workers
            ),
        );
    }
    if file.camera.stall_timeout_ms == Some(0) {
        problem(
            "camera.stall_timeout_ms",
            "expected a positive time (leave it out to count errors only)".into(),
        );
    }
    let camera = &file.camera;
    if let Some(presence) = &camera.presence {
        check_presence(presence, file.plc.kind, &mut problem);
    }
    if let Some(trigger) = &camera.genicam_trigger {
        if trigger.is_empty() || !trigger.chars().all(|c| c.is_ascii_alphanumeric()) {
            problem(
                "camera.genicam_trigger",
                format!(
                    "expected a GenICam TriggerSource name (Software, Line0, …), got {trigger:?}"
                ),
            );
        } else if trigger == "Software" && file.plc.kind != PlcKind::Server {
            problem(
                "camera.genicam_trigger",
                "the station fires a software trigger for each PLC trigger, which needs server \
                 mode ([plc] type = \"server\"); wire the photo-eye to a camera input line \
                 for a hardware trigger instead"
                    .into(),
            );
        }
        if camera.presence.is_some() {
            problem(
                "camera.genicam_trigger",
                "a triggered camera takes one frame per part: leave out [camera.presence]".into(),
            );
        }
        if camera.stall_timeout_ms.is_some() {
            problem(
                "camera.stall_timeout_ms",
                "a triggered camera is silent whenever no part comes: leave stall_timeout_ms \
                 out (a camera that goes away still fails its restart)"
                    .into(),
            );
        }
    }
    match (&camera.pipeline, &camera.launch, &camera.template) {
        (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => {}
        _ => problem(
            "camera",
            "expected exactly one of `pipeline` (a gst-launch file), `launch` (a gst-launch \
             string) and `template` (a template from pipelines/ with [camera.params])"
                .into(),
        ),
    }
    if camera.params.is_some() && camera.template.is_none() {
        problem(
            "camera.params",
            "parameters fill a template: give `template = ` too".into(),
        );
    }
    let mut missing = Vec::new();
    for (field, path) in [
        ("camera.pipeline", camera.pipeline.as_ref()),
        ("camera.template", camera.template.as_ref()),
        ("calibration.file", Some(&file.calibration.file)),
        ("plc.register_map", Some(&file.plc.register_map)),
        ("model.dir", Some(&file.model.dir)),
    ] {
        let Some(resolved) = path.map(|p| base.join(p)) else {
            continue;
        };
        if !resolved.exists() {
            missing.push(field);
            problem(
                field,
                format!(
                    "expected an existing path, {} does not exist",
                    resolved.display()
                ),
            );
        }
    }
    // A template that cannot be filled, or a file that is one, is a config error now, not a
    // camera that fails at start.
    if let Some(field) = [
        ("camera.template", camera.template.is_some()),
        ("camera.pipeline", camera.pipeline.is_some()),
    ]
    .into_iter()
    .find_map(|(field, given)| given.then_some(field))
        && !missing.contains(&field)
        && let Err(error) =
            camera_pipeline(camera.pipeline_fields(), &|p: &Path| base.join(p)).description()
    {
        problem(field, error.to_string());
    }
    check_views(file, base, &mut problem);
    if let Some(sim) = &file.camera.simulator {
        if !(sim.parts_per_min > 0.0 && sim.parts_per_min <= 6000.0) {
            problem(
                "camera.simulator.parts_per_min",
                format!("expected a rate in (0, 6000], got {}", sim.parts_per_min),
            );
        }
        if !(0.0..=1.0).contains(&sim.defect_rate) {
            problem(
                "camera.simulator.defect_rate",
                format!("expected a share in [0, 1], got {}", sim.defect_rate),
            );
        }
    }
    let line_problems = file
        .camera
        .simulator
        .as_ref()
        .map(crate::simulate::process::check)
        .unwrap_or_default();
    // Its scale is the model's (a probability, or deviations above good parts for an anomaly
    // model): the station checks it against the model it loads.
    if let Some(t) = file.model.threshold
        && !t.is_finite()
    {
        problem("model.threshold", format!("expected a number, got {t}"));
    }
    let line = &file.line;
    if line.travel_ms == 0 {
        problem("line.travel_ms", "expected a positive travel time".into());
    }
    if line.verdict_margin_ms >= line.travel_ms {
        problem(
            "line.verdict_margin_ms",
            format!(
                "expected less than line.travel_ms ({}), got {}",
                line.travel_ms, line.verdict_margin_ms
            ),
        );
    }
    // The tracker hands each part to the gate task this much before its fire time.
    let ahead = crate::actuate::DISPATCH_AHEAD.as_millis() as u64;
    if line.actuation_lead_ms + ahead > line.verdict_margin_ms {
        problem(
            "line.actuation_lead_ms",
            format!(
                "expected at most line.verdict_margin_ms − {ahead} ({}), got {}: the gate command cannot leave before the verdict deadline",
                line.verdict_margin_ms.saturating_sub(ahead),
                line.actuation_lead_ms
            ),
        );
    }
    // Under time tracking a part's command window closes at its arrival: a command due then
    // is never sent, and every part would go to reject as "gate window closed".
    if file.plc.kind != PlcKind::Server
        && line.tracking == crate::actuate::PlcTracking::Time
        && line.actuation_lead_ms == 0
    {
        problem(
            "line.actuation_lead_ms",
            "expected at least 1 ms under tracking = \"time\": each gate command must leave \
             before its part reaches the gate, by the PLC link's round trip and a margin \
             (the simulated line takes 20)"
                .into(),
        );
    }
    if line.gate_window_ms == 0 {
        problem("line.gate_window_ms", "expected a positive window".into());
    }
    if line.tracking == crate::actuate::PlcTracking::Encoder {
        if line
            .travel_counts
            .is_none_or(|c| c == 0 || c > i32::MAX as u64)
        {
            problem(
                "line.travel_counts",
                format!(
                    "expected the encoder counts from camera to diverter for tracking = \
                     \"encoder\", 1 to {} (half the counter's range)",
                    i32::MAX
                ),
            );
        }
        if file.plc.kind == PlcKind::Server {
            problem(
                "line.tracking",
                "expected \"time\" in server mode: there the PLC tracks its parts itself".into(),
            );
        }
        if line.encoder_poll_ms == 0 {
            problem("line.encoder_poll_ms", "expected a positive period".into());
        }
        if line.encoder_stale_ms < line.encoder_poll_ms.saturating_mul(2) {
            problem(
                "line.encoder_stale_ms",
                format!(
                    "expected at least two polls (2 × line.encoder_poll_ms = {}), got {}",
                    line.encoder_poll_ms.saturating_mul(2),
                    line.encoder_stale_ms
                ),
            );
        }
    }
    let plc = &file.plc;
    match (plc.kind, &plc.address) {
        (PlcKind::Tcp, None) => {
            problem("plc.address", "expected host:port for type \"tcp\"".into())
        }
        (PlcKind::Tcp, Some(a)) if a.parse::<std::net::SocketAddr>().is_err() => problem(
            "plc.address",
            format!("expected host:port such as 192.0.2.10:502, got {a:?}"),
        ),
        _ => {}
    }
    match (plc.kind, &plc.listen) {
        (PlcKind::Server, None) => problem(
            "plc.listen",
            "expected host:port to serve the PLC on for type \"server\"".into(),
        ),
        (PlcKind::Server, Some(a)) if a.parse::<std::net::SocketAddr>().is_err() => problem(
            "plc.listen",
            format!("expected host:port such as 0.0.0.0:502, got {a:?}"),
        ),
        (PlcKind::Simulated | PlcKind::Tcp, Some(_)) => problem(
            "plc.listen",
            "only type \"server\" listens; type \"tcp\" and \"simulated\" connect to `address`"
                .into(),
        ),
        _ => {}
    }
    if plc.request_timeout_ms == 0 {
        problem(
            "plc.request_timeout_ms",
            "expected a positive timeout".into(),
        );
    }
    if plc.plc_heartbeat_timeout_ms <= plc.heartbeat_ms {
        problem(
            "plc.plc_heartbeat_timeout_ms",
            format!(
                "expected more than plc.heartbeat_ms ({}): the PLC's heartbeat is read once per \
                 station heartbeat",
                plc.heartbeat_ms
            ),
        );
    }
    if plc.heartbeat_ms == 0 {
        problem("plc.heartbeat_ms", "expected a positive period".into());
    }
    // A watch's alarm is checked with the declared ones: one name space.
    let mut alarms = file.alarms.clone();
    alarms.extend(file.maintenance.iter().map(MaintenanceWatch::alarm));
    for (field, message) in check_definitions(&alarms) {
        let field = match field
            .strip_prefix("alarms[")
            .and_then(|f| f.split_once(']'))
        {
            Some((i, rest)) => match i.parse::<usize>() {
                Ok(i) if i >= file.alarms.len() => {
                    format!("maintenance[{}]{rest}", i - file.alarms.len())
                }
                _ => field,
            },
            None => field,
        };
        problem(&field, message);
    }
    let tag_names: Vec<&str> = file.tags.iter().map(|t| t.name.as_str()).collect();
    for (field, message) in crate::analyse::maintenance::watch::check(&file.maintenance, &tag_names)
    {
        problem(&field, message);
    }
    for (field, message) in file.root_cause.check() {
        problem(&field, message);
    }
    for (field, message) in crate::analyse::charts::check_definitions(&file.charts, &file.tags) {
        problem(&field, message);
    }
    for (field, message) in
        crate::inspect::taxonomy::problems(&file.defect_classes, "defect_classes")
    {
        problem(&field, message);
    }
    // A chart alarm watches a chart this file defines.
    for (i, alarm) in file.alarms.iter().enumerate() {
        if let Ok(AlarmSource::Chart(name)) = alarm.source.parse::<AlarmSource>()
            && !file.charts.iter().any(|c| c.name == name)
        {
            problem(
                &format!("alarms[{i}].source"),
                format!("no chart named {name:?} is defined in [[charts]]"),
            );
        }
    }
    check_actions(file, &mut problems);
    crate::sense::tags::check(&file.sensors, &file.tags, &mut problems);
    problems.extend(line_problems);
    problems
}

/// The `[[webhooks]]` and `[halt_line]` tables.
fn check_actions(file: &StationFile, problems: &mut Vec<Problem>) {
    use crate::analyse::actions::{HALT_LINE_ALARM, check_webhooks};
    let builtins = crate::analyse::alarms::builtin_definitions();
    let mut alarm_names: Vec<&str> = file
        .alarms
        .iter()
        .chain(&builtins)
        .map(|a| a.name.as_str())
        .collect();
    if let Some(halt_line) = &file.halt_line {
        alarm_names.push(HALT_LINE_ALARM);
        for (field, message) in halt_line.check() {
            problems.push(Problem { field, message });
        }
        if let Some(i) = file.alarms.iter().position(|a| a.name == HALT_LINE_ALARM) {
            problems.push(Problem {
                field: format!("alarms[{i}].name"),
                message: format!("{HALT_LINE_ALARM:?} is the halt line's alarm ([halt_line])"),
            });
        }
    }
    for (field, message) in check_webhooks(&file.webhooks, &alarm_names) {
        problems.push(Problem { field, message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{PresenceMeasure, PresenceRoi};

    fn example() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/simulated-line.toml");
        std::fs::read_to_string(path).expect("the shipped example config exists")
    }

    fn parse(text: &str) -> Result<StationConfig, ConfigError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/test.toml");
        StationConfig::parse(text, &path)
    }

    /// The example's commented `[[webhooks]]` and `[halt_line]` tables, uncommented.
    fn example_with_actions() -> String {
        let example = example();
        let (head, actions) = example
            .split_once("# [[webhooks]]")
            .expect("the example shows [[webhooks]]");
        let uncommented: Vec<&str> = std::iter::once("[[webhooks]]")
            .chain(actions.lines().skip(1).filter_map(|l| l.strip_prefix("# ")))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .collect();
        format!("{head}\n{}\n", uncommented.join("\n"))
    }

    #[test]
    fn camera_views_are_checked_and_each_problem_named() {
        let config = parse(&example()).expect("the shipped config is valid");
        assert_eq!(&*config.camera_name, "top");
        let side = &config.views[0];
        assert_eq!(&*side.name, "side");
        assert_eq!(side.match_window, Duration::from_millis(40));
        assert_eq!(side.frame_queue.get(), 64);
        assert_eq!(side.simulator.and_then(|s| s.defect_rate), Some(0.05));

        let bad = example()
            .replacen("name = \"side\"", "name = \"top\"", 1)
            .replacen("match_ms = 40", "match_ms = 300", 1)
            .replacen(
                "calibration = \"../calibration/simulated.yaml\"\nmatch_ms",
                "calibration = \"../calibration/nowhere.yaml\"\nlaunch = \"x\"\nmatch_ms",
                1,
            )
            .replacen("defect_rate = 0.05", "defect_rate = 1.5", 1);
        let Err(ConfigError::Invalid { problems, .. }) = parse(&bad) else {
            panic!("expected problems");
        };
        let said = |field: &str, words: &str| {
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == field && p.message.contains(words)),
                "{field}: {words:?} in {problems:?}"
            );
        };
        said("views[0].name", "names another camera");
        said("views[0]", "exactly one of");
        said("views[0].calibration", "does not exist");
        said("views[0].simulator.defect_rate", "[0, 1]");
        // 120 parts/min: 500 ms apart, so a 300 ms window could take a neighbour's frame.
        said("views[0].match_ms", "half the time between");
    }

    #[test]
    fn the_camera_is_a_pipeline_file_a_launch_string_or_a_filled_template() {
        let shipped = "pipeline = \"../pipelines/simulated.gst\"";
        assert!(example().contains(shipped));
        let config = parse(&example()).expect("example");
        assert!(
            matches!(&config.camera_pipeline, CameraPipeline::File(p) if p.ends_with("simulated.gst"))
        );
        let launch = example().replace(
            shipped,
            "launch = \"videotestsrc ! videoconvert ! appsink name=frames\"",
        );
        let config = parse(&launch).expect("a launch string");
        assert_eq!(
            config.camera_pipeline,
            CameraPipeline::Launch("videotestsrc ! videoconvert ! appsink name=frames".into())
        );
        let rtsp = example().replace(
            shipped,
            "template = \"../pipelines/rtsp.gst\"\n\
             params = { location = \"rtsp://10.0.0.5/main\", latency_ms = 50 }",
        );
        let config = parse(&rtsp).expect("a filled template");
        let description = config.camera_pipeline.description().expect("filled");
        assert!(description.contains("location=\"rtsp://10.0.0.5/main\" latency=50"));

        let problems = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        };
        let both = example().replace(shipped, &format!("{shipped}\nlaunch = \"x\""));
        assert_eq!(problems(&both)[0].field, "camera");
        let typo = rtsp.replace("latency_ms", "latncy_ms");
        let found = problems(&typo);
        assert_eq!(found[0].field, "camera.template");
        assert!(
            found[0].message.contains("unknown parameter `latncy_ms`"),
            "{found:?}"
        );
        let missing = rtsp.replace("location = \"rtsp://10.0.0.5/main\", ", "");
        assert!(
            problems(&missing)[0]
                .message
                .contains("`location` is required")
        );
        let stray = example().replace(shipped, &format!("{shipped}\nparams = {{ a = 1 }}"));
        assert_eq!(problems(&stray)[0].field, "camera.params");
    }

    /// The example's commented `[camera.presence]` table, uncommented.
    fn example_with_presence() -> String {
        let example = example();
        let start = example
            .find("# [camera.presence]")
            .expect("the example shows [camera.presence]");
        let end = start
            + example[start..]
                .find("\n\n")
                .expect("a blank line after it");
        let table: Vec<&str> = example[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .collect();
        // Placed as the last table, where it cannot take another table's keys.
        format!("{}\n{}\n", example, table.join("\n"))
    }

    #[test]
    fn the_presence_detector_is_read_and_checked() {
        let config = parse(&example()).expect("example");
        assert_eq!(config.camera_presence, None);
        let config = parse(&example_with_presence()).expect("the example's presence table");
        assert_eq!(
            config.camera_presence,
            Some(PresenceSettings {
                roi: Some(PresenceRoi {
                    x: 0,
                    y: 64,
                    width: 256,
                    height: 128
                }),
                measure: PresenceMeasure::Intensity,
                threshold: 25.0,
                enter_frames: 2,
                leave_frames: 3,
                max_passage_frames: 300,
                empty_level: None,
            })
        );
        let bad = example_with_presence()
            .replace("threshold = 25.0", "threshold = 0.0")
            .replace("[0, 64, 256, 128]", "[0, 64, 0, 128]")
            .replace("leave_frames = 3", "leave_frames = 0")
            .replace(
                "type = \"simulated\"",
                "type = \"server\"\nlisten = \"127.0.0.1:1502\"",
            );
        let Err(ConfigError::Invalid { problems, .. }) = parse(&bad) else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "camera.presence.threshold",
            "camera.presence.roi",
            "camera.presence.leave_frames",
            "camera.presence",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
        let typo = example_with_presence().replace("measure = \"intensity\"", "measure = \"edge\"");
        let message = parse(&typo).unwrap_err().to_string();
        assert!(message.contains("edges"), "{message}");
    }

    #[test]
    fn a_genicam_trigger_is_a_trigger_source_and_software_needs_server_mode() {
        let commented = "# genicam_trigger = \"Software\"";
        assert!(example().contains(commented));
        let problems = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        };
        // Software trigger on the example's simulated PLC: nobody would fire it.
        let software = example().replace(commented, "genicam_trigger = \"Software\"");
        let found = problems(&software);
        assert_eq!(found[0].field, "camera.genicam_trigger");
        assert!(found[0].message.contains("server mode"), "{found:?}");
        let line = example().replace(commented, "genicam_trigger = \"Line1\"");
        let config = parse(&line).expect("a hardware trigger line");
        assert_eq!(config.camera_trigger, Some(TriggerSource("Line1".into())));
        let spaced = example().replace(commented, "genicam_trigger = \"Line 1\"");
        assert!(problems(&spaced)[0].message.contains("TriggerSource name"));
        let both = example_with_presence().replace(commented, "genicam_trigger = \"Line1\"");
        assert!(
            problems(&both)
                .iter()
                .any(|p| p.message.contains("leave out [camera.presence]"))
        );
    }

    #[test]
    fn the_example_actions_parse_and_problems_are_named() {
        let config = parse(&example_with_actions()).expect("example actions are valid");
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.webhooks[0].max_retry_ms, 300_000);
        let halt_line = config.halt_line.expect("halt line");
        assert_eq!((halt_line.burst_defects, halt_line.within_parts), (3, 10));

        let bad = example_with_actions()
            .replace("within_parts = 10", "within_parts = 2")
            .replace("alarms = []", "alarms = [\"no_such_alarm\"]")
            + "\n[[alarms]]\nname = \"halt_line\"\nmessage = \"m\"\npriority = \"low\"\nsource = \"station\"\non = \"fault\"\n";
        let Err(ConfigError::Invalid { problems, .. }) = parse(&bad) else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in ["halt_line.burst_defects", "webhooks[0].alarms[0]"] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert!(fields.iter().any(|f| f.ends_with(".name")), "{fields:?}");
    }

    #[test]
    fn server_mode_needs_a_listen_address_that_only_it_uses() {
        let simulated = "type = \"simulated\"\n";
        let server = example().replacen(
            simulated,
            "type = \"server\"\nlisten = \"127.0.0.1:1502\"\n",
            1,
        );
        let config = parse(&server).expect("a server-mode config is valid");
        assert_eq!(config.plc.kind, PlcKind::Server);
        assert_eq!(config.plc.listen, "127.0.0.1:1502".parse().ok());
        let cases = [
            example().replacen(simulated, "type = \"server\"\n", 1),
            example().replacen(simulated, "type = \"server\"\nlisten = \"port 502\"\n", 1),
            example().replacen(
                simulated,
                "type = \"simulated\"\nlisten = \"127.0.0.1:1502\"\n",
                1,
            ),
        ];
        for text in cases {
            let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else {
                panic!("expected a problem");
            };
            let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, ["plc.listen"]);
        }
    }

    #[test]
    fn shipped_example_parses() {
        let config = parse(&example()).expect("example config is valid");
        assert_eq!(config.line.travel, Duration::from_millis(1200));
        assert!(config.simulator.is_some());
    }

    /// The shipped `[camera.simulator]` block, to swap for another.
    fn shipped_simulator_block(text: &str) -> &str {
        let start = text
            .find("[camera.simulator]")
            .expect("a simulator section");
        let end = text.find("[calibration]").expect("a calibration section");
        &text[start..end]
    }

    #[test]
    fn shipped_line_has_sensors_effects_and_downtime() {
        let simulator = parse(&example())
            .expect("valid")
            .simulator
            .expect("simulated");
        let names: Vec<_> = simulator.sensors.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "press_temp",
                "belt_speed",
                "drive_power",
                "roller_vibration",
                "humidity"
            ]
        );
        assert_eq!(simulator.effects.len(), 3);
        assert!(simulator.downtime.is_some() && simulator.running_flag.is_some());
    }

    #[test]
    fn a_simulator_without_sensors_still_loads() {
        let text = example();
        let old = text.replace(
            shipped_simulator_block(&text),
            "[camera.simulator]\nparts_per_min = 120\ndefect_rate = 0.3\nseed = 1\n\n",
        );
        let simulator = parse(&old).expect("valid").simulator.expect("simulated");
        assert!(simulator.sensors.is_empty() && simulator.effects.is_empty());
        assert!(simulator.downtime.is_none() && simulator.running_flag.is_none());
        assert_eq!(simulator.defect_rate, 0.3);
    }

    #[test]
    fn an_unknown_defect_kind_is_named() {
        let text = example().replace("defect = \"crack\"", "defect = \"crak\"");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("camera.simulator.effects"), "{message}");
        assert!(
            message.contains("crak") && message.contains("scratch"),
            "{message}"
        );
    }

    #[test]
    fn simulated_line_problems_join_the_others() {
        let text = example()
            .replace("sensor = \"humidity\"", "sensor = \"humidty\"")
            .replace("address = 1002", "address = 1001")
            .replace("add = 0.4", "add = 1.4")
            .replace("request_timeout_ms = 250", "request_timeout_ms = 0");
        match parse(&text).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "plc.request_timeout_ms",
                        "camera.simulator.sensors[1].address",
                        "camera.simulator.effects[0].add",
                        "camera.simulator.effects[1].sensor",
                    ]
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn inspect_workers_default_to_two_and_are_bounded() {
        assert_eq!(parse(&example()).expect("valid").inspect_workers.get(), 2);
        let one = example().replace("[model]\n", "[model]\nworkers = 1\n");
        assert_eq!(parse(&one).expect("valid").inspect_workers.get(), 1);
        for bad in ["0", "17"] {
            let message =
                parse(&example().replace("[model]\n", &format!("[model]\nworkers = {bad}\n")))
                    .unwrap_err()
                    .to_string();
            assert!(
                message.contains("model.workers") && message.contains("expected 1 to 16"),
                "{message}"
            );
        }
    }

    #[test]
    fn archive_after_days_is_positive_and_at_most_a_century() {
        let with = |days: &str| format!("{}\n[records]\narchive_after_days = {days}\n", example());
        for good in ["0.5", "365", "36500"] {
            let config = parse(&with(good)).expect("valid");
            assert_eq!(
                config.records.archive_after_days,
                Some(good.parse::<f64>().expect("a number"))
            );
        }
        // 1e8 days ("keep for ever") once panicked the archiver; 1e15 panicked start-up.
        for bad in ["1e8", "1e15", "36500.5", "0", "-1", "nan", "inf"] {
            let message = parse(&with(bad)).unwrap_err().to_string();
            assert!(
                message.contains("records.archive_after_days") && message.contains("up to 36500"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn inspect_batch_defaults_by_device_and_is_bounded() {
        assert_eq!(parse(&example()).expect("valid").inspect_batch.get(), 1);
        let cuda = example().replace("[model]\n", "[model]\ndevice = \"cuda\"\n");
        assert_eq!(parse(&cuda).expect("valid").inspect_batch.get(), 32);
        let eight = example().replace("[model]\n", "[model]\nbatch = 8\n");
        assert_eq!(parse(&eight).expect("valid").inspect_batch.get(), 8);
        for bad in ["0", "65"] {
            let message =
                parse(&example().replace("[model]\n", &format!("[model]\nbatch = {bad}\n")))
                    .unwrap_err()
                    .to_string();
            assert!(
                message.contains("model.batch") && message.contains("expected 1 to 64"),
                "{message}"
            );
        }
    }

    #[test]
    fn model_precision_is_auto_unless_set() {
        assert_eq!(
            parse(&example()).expect("valid").model_precision,
            Precision::Auto
        );
        for (text, precision) in [("f32", Precision::F32), ("bf16", Precision::Bf16)] {
            let set = example().replace("[model]\n", &format!("[model]\nprecision = \"{text}\"\n"));
            assert_eq!(parse(&set).expect("valid").model_precision, precision);
        }
        let message = parse(&example().replace("[model]\n", "[model]\nprecision = \"f16\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("f16") && message.contains("bf16"),
            "{message}"
        );
    }

    #[test]
    fn model_device_is_cpu_unless_set() {
        assert_eq!(
            parse(&example()).expect("valid").model_device,
            ModelDevice::Cpu
        );
        let cuda = example().replace("[model]\n", "[model]\ndevice = \"cuda\"\n");
        assert_eq!(parse(&cuda).expect("valid").model_device, ModelDevice::Cuda);
        let message = parse(&example().replace("[model]\n", "[model]\ndevice = \"gpu\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("gpu") && message.contains("cuda"),
            "{message}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = example().replace("travel_ms", "travle_ms");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("travle_ms"), "{message}");
        assert!(message.contains("expected one of"), "{message}");
    }

    #[test]
    fn wrong_type_names_field_and_expectation() {
        let text = example().replace("gate_window_ms = 60", "gate_window_ms = \"sixty\"");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("line.gate_window_ms"), "{message}");
        assert!(message.contains("expected u64"), "{message}");
    }

    /// A lead left out (0) would have every command wait for a window that closes at its
    /// fire time, and every part go to reject: refused at load, naming the field.
    #[test]
    fn a_gate_command_without_a_lead_is_refused_under_time_tracking() {
        let text = example().replace("actuation_lead_ms = 20\n", "");
        match parse(&text).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(fields, ["line.actuation_lead_ms"]);
                assert!(
                    problems[0].message.contains("at least 1 ms"),
                    "{}",
                    problems[0].message
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
        let one = example().replace("actuation_lead_ms = 20", "actuation_lead_ms = 1");
        parse(&one).expect("a 1 ms lead is the PLC link's to judge");
    }

    #[test]
    fn all_semantic_problems_are_reported_together() {
        let text = example()
            .replace("verdict_margin_ms = 300", "verdict_margin_ms = 5000")
            .replace("request_timeout_ms = 250", "request_timeout_ms = 0");
        match parse(&text).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(fields, ["line.verdict_margin_ms", "plc.request_timeout_ms"]);
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn alarms_are_read_and_checked_with_the_rest() {
        let text = format!(
            "{}\n[[alarms]]\nname = \"oven_hot\"\nmessage = \"Oven hot\"\npriority = \"high\"\nsource = \"tag:oven\"\nhigh = 230.0\ndeadband = 2.0\n",
            example()
        );
        let shipped = parse(&example()).expect("valid").alarms.len();
        let config = parse(&text).expect("valid");
        assert_eq!(config.alarms.len(), shipped + 1);
        assert_eq!(config.alarms[shipped].high, Some(230.0));
        let bad = text.replace("deadband = 2.0", "deadband = -2.0");
        match parse(&bad).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                assert_eq!(problems.len(), 1);
                assert_eq!(problems[0].field, format!("alarms[{shipped}].deadband"));
            }
            other => panic!("expected Invalid, got {other}"),
        }
        let unknown = text.replace("deadband = 2.0", "deadbnad = 2.0");
        let message = parse(&unknown).unwrap_err().to_string();
        assert!(message.contains("deadbnad"), "{message}");
    }

    #[test]
    fn charts_are_read_and_checked_with_the_alarms_that_watch_them() {
        let text = format!(
            "{}\n[[charts]]\nname = \"rejects\"\nof = \"reject_rate\"\nrules = [\"nelson_1\", \"we_2\"]\n\
             [[alarms]]\nname = \"rejects_out\"\nmessage = \"Reject rate out of control\"\npriority = \"medium\"\nsource = \"chart:rejects\"\non = \"violation\"\n",
            example()
        );
        let shipped = parse(&example()).expect("valid");
        let (charts, alarms) = (shipped.charts.len(), shipped.alarms.len());
        let config = parse(&text).expect("valid");
        assert_eq!(config.charts.len(), charts + 1);
        assert_eq!(config.charts[charts].name, "rejects");
        let bad = text
            .replace(
                "of = \"reject_rate\"\nrules = [\"nelson_1\", \"we_2\"]",
                "of = \"tag:oven\"\nrules = [\"nelson_1\", \"we_2\"]",
            )
            .replace("source = \"chart:rejects\"", "source = \"chart:reject\"");
        match parse(&bad).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.clone()).collect();
                assert_eq!(
                    fields,
                    [
                        format!("charts[{charts}].of"),
                        format!("alarms[{alarms}].source")
                    ],
                    "{problems:?}"
                );
                assert!(problems[0].message.contains("oven"), "{problems:?}");
                assert!(problems[1].message.contains("\"reject\""), "{problems:?}");
            }
            other => panic!("expected Invalid, got {other}"),
        }
        let unknown = text.replace("rules = ", "rulez = ");
        let message = parse(&unknown).unwrap_err().to_string();
        assert!(message.contains("rulez"), "{message}");
    }

    #[test]
    fn production_defaults_come_from_the_simulated_belt_and_plan_every_minute() {
        let config = parse(&example()).expect("valid");
        let plan = &config.production;
        // 120 parts/min: 0.5 s per part; stops after ten cycles.
        assert_eq!(plan.ideal_cycle_s, Some(0.5));
        assert_eq!(plan.stop_after_s, 5.0);
        assert_eq!(plan.calendar.names(), [crate::analyse::shifts::ALL_DAY]);
        assert!(plan.calendar.slot(0).planned());
    }

    #[test]
    fn shifts_and_production_master_data_are_read() {
        // The shipped file has a [production] table: its keys go in there.
        let text = example().replace(
            "[production]\n",
            "[production]\nideal_cycle_ms = 400\nstop_after_s = 30\nutc_offset_minutes = 60\n",
        ) + r#"

[[shifts]]
name = "early"
start = "06:00"
end = "14:00"
days = ["mon", "tue", "wed", "thu", "fri"]
[[shifts.breaks]]
start = "10:00"
end = "10:30"

[[shifts]]
name = "night"
start = "22:00"
end = "06:00"
"#;
        let config = parse(&text).expect("valid");
        let plan = &config.production;
        assert_eq!(plan.ideal_cycle_s, Some(0.4));
        assert_eq!(plan.stop_after_s, 30.0);
        assert_eq!(plan.calendar.names(), ["early", "night"]);
        assert_eq!(plan.calendar.offset_minutes(), 60);
    }

    #[test]
    fn bad_production_master_data_and_shifts_are_reported_together() {
        let text = example().replace(
            "[production]\n",
            "[production]\nideal_cycle_ms = 0\nstop_after_s = -1\n",
        ) + r#"

[[shifts]]
name = "early"
start = "06:00"
end = "14:00"

[[shifts]]
name = "late"
start = "13:30"
end = "25:00"
"#;
        match parse(&text).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "production.ideal_cycle_ms",
                        "production.stop_after_s",
                        "shifts[1].end"
                    ],
                    "{problems:?}"
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
        let overlapping = example()
            + "[[shifts]]\nname = \"a\"\nstart = \"06:00\"\nend = \"14:00\"\n\
               [[shifts]]\nname = \"b\"\nstart = \"13:00\"\nend = \"15:00\"\n";
        let message = parse(&overlapping).unwrap_err().to_string();
        assert!(message.contains("shifts[1].start"), "{message}");
        assert!(message.contains("overlaps shift \"a\""), "{message}");
        let unknown = example()
            + "[[shifts]]\nname = \"a\"\nstart = \"06:00\"\nend = \"14:00\"\nbreak = []\n";
        let message = parse(&unknown).unwrap_err().to_string();
        assert!(message.contains("break"), "{message}");
    }

    #[test]
    fn tags_are_read_and_checked_with_the_rest() {
        let config = parse(&example()).expect("valid");
        assert!(
            config
                .tags
                .iter()
                .any(|t| t.name == "press_temp" && t.modbus.is_some())
        );
        let text = example()
            .replace(
                "running_tag = \"line_running\"",
                "running_tag = \"belt_running\"",
            )
            .replace(
                "name = \"belt_speed\"\nunit = \"m/min\"\nperiod_ms",
                "name = \"press_temp\"\nunit = \"m/min\"\nperiod_ms",
            )
            .replace("valid_range = [0.0, 400.0]", "valid_range = [400.0, 0.0]")
            + "\n[[tags]]\nname = \"pushed\"\nperiod_ms = 0\nmqtt = { topic = \"plant/#\" }\n";
        match parse(&text).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "production.running_tag",
                        "tags[0].valid_range",
                        "tags[1].name",
                        "tags[6].period_ms",
                        "tags[6].mqtt.topic"
                    ],
                    "{problems:?}"
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
        let typo = example().replace(
            "period_ms = 1000\nvalid_range = [0.0, 400.0]",
            "period_ms = 1000\nvalid_rnage = [0.0, 400.0]",
        );
        let message = parse(&typo).unwrap_err().to_string();
        assert!(message.contains("valid_rnage"), "{message}");
    }
}
