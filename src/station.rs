//! The station: wires capture → calibrate/inspect → track → actuate → record, and serves it.
//!
//! ```text
//!  GStreamer appsink ──Trigger (waits)──────────────────────┐
//!        │                                                   ▼
//!        └──Frame (bounded, drop+count)──▶ inspect thread ──Inspection (waits)──▶ tracker loop
//!                                                                                   │
//!                       recorder ◀──PartOutcome (waits)── gate task ◀──GateCommand──┤ (every part)
//!                           ▲                                                       │
//!                           └──────────────────PartOutcome (waits)──────────────────┘ (gate queue full)
//! ```
//!
//! [`Station::prepare`] loads and checks everything that can fail before the line starts (model,
//! calibration, register map, record store, the PLC link). The model in use can change while the
//! line runs (see [`crate::model_control`]); a shadow model, when set, scores the same frames on
//! its own thread beside the inspect thread. [`Station::run`] runs until the camera
//! ends or `shutdown` fires, then lets every part in flight reach the gate, records it, and stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::actuate::server::{PlcServer, ResultsContext, ServerEnds, ServerRun};
use crate::actuate::{
    DISPATCH_AHEAD, EncoderGate, GateCommand, GateContext, GateError, GateLink, PLC_LOST_ALARM,
    PlcWatch, RegisterMap, RegisterMapError, run_encoder, run_gate, run_heartbeat, server,
};
use crate::analyse::actions::webhook::Outbox;
use crate::analyse::actions::{
    ActionsDb, ActionsError, HaltLine, HaltLineContext, HaltLineError, Webhook, WebhookContext,
    WebhookError, halt_line, run_halt_line, run_webhooks,
};
use crate::analyse::alarms::{AlarmError, AlarmManager};
use crate::analyse::maintenance::monitor::MaintenanceMonitor;
use crate::analyse::maintenance::watch::MaintenanceWatch;
use crate::analyse::monitor::{Monitor, StationHealth};
use crate::analyse::rootcause::station::run_root_cause;
use crate::analyse::{AnalyseError, Production, ProductionCounts, run_production_counter};
use crate::calibrate::{CalibrateError, Calibration, Undistorter};
use crate::capture::{
    CameraStatus, CaptureContext, CaptureError, ExternalTriggers, FrameFeeder, FrameRing,
    capture_until_done,
};
use crate::config::{LineTiming, PlcKind, StationConfig, Tracking, ViewConfig};
use crate::inspect::registry::{self, ActiveModels, Registry, RegistryError, RunningModel};
use crate::inspect::{InspectContext, Inspector, ModelError, ViewFrames, ViewJoin, run_inspector};
use crate::metrics::{CameraLabel, Metrics};
use crate::model_control::{ControlError, ModelControl, ShadowContext, run_shadow};
use crate::part::{Actuation, Inspection, PartOutcome, StationClock, Trigger};
use crate::publish::mqtt::{MqttSettings, cursor_client, run_mqtt};
use crate::record::{
    AlarmRecord, AlarmSeverity, AlarmState, RecordBody, RecordContext, RecordError, Store,
    run_archiver, run_recorder,
};
use crate::sense::modbus::PollTarget;
use crate::sense::mqtt::SubscribeSettings;
use crate::sense::{Sensors, Sources, run_sensors};
use crate::serve::auth::{AuthError, run_token_auditor};
use crate::serve::{ApiState, RootCauseApi, StationInfo, StationState, Tokens};
use crate::track::{Belt, EncoderTrack, InspectionFate, PartTracker};

/// Why the station could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    ModelControl(#[from] ControlError),
    #[error(transparent)]
    Taxonomy(#[from] crate::inspect::taxonomy::TaxonomyError),
    #[error(transparent)]
    Calibrate(#[from] CalibrateError),
    #[error(transparent)]
    RegisterMap(#[from] RegisterMapError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Alarms(#[from] AlarmError),
    #[error(transparent)]
    Analyse(#[from] AnalyseError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Sense(#[from] crate::sense::SenseError),
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    HaltLine(#[from] HaltLineError),
    #[error("PLC link check failed: {0}")]
    Gate(#[from] GateError),
    #[error("{0}")]
    Threshold(String),
    #[error(
        "line.actuation_lead_ms ({lead_ms}) must be below the PLC program's command window \
         (match_before_ms + eye_to_gate_ms = {window_ms} ms in the register map): gate commands \
         sent that early are stale at the PLC and every part would be diverted"
    )]
    LeadOutsideCommandWindow { lead_ms: u128, window_ms: u128 },
    #[error(
        "plc.on_plc_lost = \"stop_line\" halts the line through the register map's [halt_line] \
         coil, which {0} does not have: add the coil, or divert every part instead \
         (\"divert_all\")"
    )]
    StopLineWithoutCoil(PathBuf),
    #[error(
        "line.actuation_lead_ms ({lead_ms}) is {lead_counts} encoder counts at the belt's nominal \
         speed (travel_counts / travel_ms), not below the PLC program's command window \
         (match_before_counts + eye_to_gate_counts = {window_counts}): gate commands would leave \
         before their window opens"
    )]
    LeadOutsideCountWindow {
        lead_ms: u128,
        lead_counts: u64,
        window_counts: u64,
    },
    #[error(
        "line.tracking is {station:?} but the PLC program tracks by {plc:?} (the register map's \
         [plc_program] tracking): the station would send gate commands the PLC matches to the \
         wrong parts"
    )]
    TrackingMismatch {
        station: crate::actuate::PlcTracking,
        plc: crate::actuate::PlcTracking,
    },
    #[error(
        "the config's {0} is simulated, but nothing simulates it: start the station on a \
         simulate::SimulatedLine (as `linesight run` does)"
    )]
    NotAttached(&'static str),
    #[error(
        "model takes {model_width}x{model_height} images but the calibration gives {roi_width}x{roi_height} (its output size, else its ROI's)"
    )]
    ModelInput {
        model_width: u32,
        model_height: u32,
        roi_width: u32,
        roi_height: u32,
    },
    #[error(
        "camera view `{view}`'s calibration gives {width}x{height} images, the station camera's \
         {station_width}x{station_height}: every camera must give the model images of one size"
    )]
    ViewSize {
        view: String,
        width: u32,
        height: u32,
        station_width: u32,
        station_height: u32,
    },
    #[error("a stage stopped unexpectedly: {0}")]
    Stage(String),
    #[error("server mode ([plc] type = \"server\"): {0}")]
    ServerMode(String),
}

/// How one run of the line ended.
#[derive(Debug, Clone, Copy)]
pub struct RunReport {
    pub parts: u64,
}

/// Options of this process, not of the line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many parts (the simulated line runs forever otherwise).
    pub max_parts: Option<u64>,
}

/// What a station is wired to that its config cannot open by itself. A real line needs
/// none of it; the simulated line (`simulate::SimulatedLine`) provides both.
#[derive(Default)]
pub struct Attachments {
    /// Feeds the camera pipeline's `appsrc name=source`.
    pub camera: Option<Box<dyn FrameFeeder>>,
    /// Feed the `[[views]]` pipelines that the simulated line shows, by view name.
    pub views: Vec<(Arc<str>, Box<dyn FrameFeeder>)>,
    /// The PLC, when the config's is not a TCP address of its own (`kind = "simulated"`).
    pub plc_address: Option<SocketAddr>,
}

/// How the station and its PLC talk.
// One per station, moved once: the variants' sizes cost nothing.
#[allow(clippy::large_enum_variant)]
enum PlcSide {
    /// Client mode: the station writes each verdict into the PLC's registers, timed to the
    /// part's gate window.
    Client(GateLink),
    /// Server mode: the PLC triggers captures and reads results from the station's registers.
    Server {
        server: PlcServer,
        ends: Box<ServerEnds>,
    },
}

/// A station ready to run.
pub struct Station {
    config: StationConfig,
    clock: Arc<StationClock>,
    metrics: Metrics,
    store: Store,
    models: Arc<ActiveModels>,
    calibration: Calibration,
    plc: PlcSide,
    api: ApiState,
    camera_feeder: Option<Box<dyn FrameFeeder>>,
    /// The further cameras (`[[views]]`), in the config's order.
    views: Vec<ViewCamera>,
    sensors: Sensors,
    /// Where the sensor tags are polled and subscribed from.
    sources: Sources,
    /// The webhooks' outbox and what they send, when any are configured.
    webhooks: Option<WebhookContext>,
}

impl Station {
    /// Loads everything and checks the PLC link; nothing moves yet.
    pub async fn prepare(
        config: StationConfig,
        attachments: Attachments,
    ) -> Result<Station, StationError> {
        // What the station is wired to is checked first: a missing attachment is refused
        // before any model, store or PLC link is opened.
        if config.simulator.is_some() && attachments.camera.is_none() {
            return Err(StationError::NotAttached("camera"));
        }
        let mut attachments = attachments;
        let mut view_feeders = std::mem::take(&mut attachments.views);
        let mut views = Vec::with_capacity(config.views.len());
        for view in &config.views {
            let at = view_feeders.iter().position(|(name, _)| *name == view.name);
            let feeder = at.map(|at| view_feeders.swap_remove(at).1);
            if view.simulator.is_some() && feeder.is_none() {
                return Err(StationError::NotAttached("simulated camera view"));
            }
            views.push(ViewCamera {
                config: view.clone(),
                calibration: Calibration::load(&view.calibration_file)?,
                feeder,
            });
        }
        // The PLC's own address in client mode; none in server mode (the PLC connects).
        let plc_address: Option<SocketAddr> =
            match (config.plc.kind, attachments.plc_address) {
                (PlcKind::Simulated, Some(address)) => Some(address),
                (PlcKind::Simulated, None) => return Err(StationError::NotAttached("PLC")),
                (PlcKind::Tcp, _) => {
                    // Checked by config: a tcp PLC has a valid socket address.
                    let address = config.plc.address.as_deref().unwrap_or_default();
                    Some(address.parse().map_err(|_| {
                        StationError::Stage(format!("invalid PLC address {address:?}"))
                    })?)
                }
                (PlcKind::Server, _) => None,
            };
        if plc_address.is_none() && config.halt_line.is_some() {
            return Err(StationError::ServerMode(
                "[halt_line] writes a coil in the PLC, which only client mode reaches".into(),
            ));
        }
        let clock = StationClock::start();
        let metrics = Metrics::new();
        tracing::info!(
            configured = %config.model_precision,
            precision = %crate::models::backbone::bf16::resolve(config.model_precision),
            "the backbone's 1x1 convolutions on the CPU"
        );
        let registry = Registry::new(
            config.model_registry.clone(),
            config.backbone_weights.clone(),
            registry::open_device(config.model_device)?,
        )
        .with_configured(config.model_dir.clone())
        .with_precision(config.model_precision);
        let detector = registry.load_dir(&config.model_dir)?;
        let calibration = Calibration::load(&config.calibration_file)?;
        // The size of the images the model is given: the calibration's output size when it
        // resamples its ROI (a 1280x1024 camera's ROI to a 224x224 model), else the ROI's.
        let image_size = |calibration: &Calibration| {
            calibration
                .output
                .unwrap_or((calibration.roi.width, calibration.roi.height))
        };
        let (roi_width, roi_height) = image_size(&calibration);
        if let Some((model_width, model_height)) = detector.input_size()
            && (model_width, model_height) != (roi_width, roi_height)
        {
            return Err(StationError::ModelInput {
                model_width,
                model_height,
                roi_width,
                roi_height,
            });
        }
        // Every camera gives the model images of one size, so that a model promoted later
        // fits all of them as it fits the station's camera.
        for view in &views {
            let (width, height) = image_size(&view.calibration);
            if (width, height) != (roi_width, roi_height) {
                return Err(StationError::ViewSize {
                    view: view.config.name.to_string(),
                    width,
                    height,
                    station_width: roi_width,
                    station_height: roi_height,
                });
            }
        }
        if let Some(threshold) = config.threshold_override
            && let Some(why) = detector.threshold_problem(threshold)
        {
            return Err(StationError::Threshold(format!(
                "model.threshold in {}: {why}",
                config.source_path.display()
            )));
        }
        let threshold = config
            .threshold_override
            .unwrap_or(detector.head().threshold);
        let threshold_override = config
            .threshold_override
            .map(|t| (detector.head().version.clone(), t));
        // The defect classes: an engineer's saved edit, else the TOML's. A saved edit that
        // differs from the TOML is said once, so an edit of the TOML that does nothing is seen.
        let taxonomy = match crate::inspect::taxonomy::Taxonomy::load_saved(&config.data_dir)? {
            Some(saved) => {
                if saved != config.defect_classes {
                    tracing::warn!(
                        file = %config.data_dir.join(crate::inspect::taxonomy::FILE_NAME).display(),
                        "the defect classes saved from the models page differ from the \
                         station TOML's [[defect_classes]]; the saved ones apply"
                    );
                }
                saved
            }
            None => config.defect_classes.clone(),
        };
        let models = Arc::new(
            ActiveModels::new(RunningModel::new(detector, threshold)).with_taxonomy(taxonomy),
        );
        let map = RegisterMap::load(&config.plc.register_map_file)?;
        // In client mode the station halts the line itself, by the coil; in server mode the
        // PLC reads the request from the station's status block.
        if plc_address.is_some()
            && config.plc.on_plc_lost == crate::config::PlcLostPolicy::StopLine
            && map.halt_line.is_none()
        {
            return Err(StationError::StopLineWithoutCoil(
                config.plc.register_map_file.clone(),
            ));
        }
        let command_window = std::time::Duration::from_millis(
            map.plc_program.match_before_ms + map.plc_program.eye_to_gate_ms,
        );
        let station_tracking = match config.tracking {
            crate::config::Tracking::Time => crate::actuate::PlcTracking::Time,
            crate::config::Tracking::Encoder(_) => crate::actuate::PlcTracking::Encoder,
        };
        if config.plc.kind != PlcKind::Server && station_tracking != map.plc_program.tracking {
            return Err(StationError::TrackingMismatch {
                station: station_tracking,
                plc: map.plc_program.tracking,
            });
        }
        if plc_address.is_some()
            && station_tracking == crate::actuate::PlcTracking::Time
            && config.line.actuation_lead >= command_window
        {
            return Err(StationError::LeadOutsideCommandWindow {
                lead_ms: config.line.actuation_lead.as_millis(),
                window_ms: command_window.as_millis(),
            });
        }
        if let crate::config::Tracking::Encoder(encoder) = config.tracking {
            let program = &map.plc_program;
            let window_counts = program
                .match_before_counts
                .saturating_add(program.eye_to_gate_counts);
            let lead_counts = (config.line.actuation_lead.as_secs_f64()
                / config.line.travel.as_secs_f64().max(f64::EPSILON)
                * encoder.travel_counts as f64)
                .ceil() as u64;
            if lead_counts >= window_counts {
                return Err(StationError::LeadOutsideCountWindow {
                    lead_ms: config.line.actuation_lead.as_millis(),
                    lead_counts,
                    window_counts,
                });
            }
        }
        // A latch stored while `[halt_line]` was configured is refused, not dropped, before the
        // records or anything else in the data folder is opened.
        let actions = ActionsDb::open(&config.data_dir)?;
        if config.halt_line.is_none()
            && let Some(reason) = halt_line::latched_in(&actions)?
        {
            return Err(HaltLineError::LatchedWithoutSection(reason).into());
        }
        let store = Store::open(&config.data_dir, &config.name)?;
        store
            .images()
            .set_min_free_bytes(config.records.min_free_mb * 1024 * 1024);
        store.set_image_budget(
            config
                .records
                .image_budget_mb
                .map(|mb| mb.saturating_mul(1024 * 1024)),
        );
        let production = Production {
            counts: ProductionCounts::open(&config.data_dir)?,
            plan: Arc::new(config.production.clone()),
        };
        let tokens = Tokens::open(&config.data_dir, config.admin_token.clone())?;
        let sensors = Sensors::open(
            &config.data_dir,
            config.sensors.clone(),
            config.tags.clone(),
        )?;
        let sources = Sources {
            modbus: match sensors.tags.iter().any(|t| t.modbus.is_some()) {
                false => None,
                true => Some(PollTarget {
                    address: config
                        .sensors
                        .modbus_address
                        .as_deref()
                        .and_then(|a| a.parse().ok())
                        .or(plc_address)
                        // Server mode on the simulated line: its PLC serves the sensors.
                        .or(attachments.plc_address)
                        .ok_or_else(|| {
                            StationError::ServerMode(
                                "the PLC has no address of its own to poll sensor tags from: \
                                 set [sensors] modbus_address"
                                    .into(),
                            )
                        })?,
                    unit: config.sensors.modbus_unit_id.unwrap_or(config.plc.unit_id),
                    request_timeout: config.plc.request_timeout,
                }),
            },
            mqtt: config
                .sensors
                .mqtt_broker
                .clone()
                .or_else(|| config.mqtt.as_ref().map(|m| m.broker.clone()))
                .filter(|_| sensors.tags.iter().any(|t| t.mqtt.is_some()))
                .map(|broker| SubscribeSettings {
                    broker,
                    client_id: format!("linesight-{}-sensors", config.name),
                }),
        };
        // Actions on alarms: the webhooks' cursor is set before the alarm manager opens, so
        // transitions it makes while opening are sent too.
        let outbox = Outbox::open(&actions)?;
        if config.webhooks.is_empty() {
            outbox.forget_cursor()?;
        } else {
            outbox.start_at(store.last_seq() + 1)?;
        }
        let webhooks = config
            .webhooks
            .iter()
            .map(|section| Webhook::build(section, |name| std::env::var(name).ok()))
            .collect::<Result<Vec<_>, _>>()?;
        // The declared alarms, one per maintenance watch, and the halt line's.
        let mut definitions = config.alarms.clone();
        definitions.extend(config.maintenance.iter().map(MaintenanceWatch::alarm));
        if config.halt_line.is_some() {
            definitions.push(halt_line::alarm_definition());
        }
        let alarms = AlarmManager::open(store.clone(), &definitions).await?;
        let halt_line = match &config.halt_line {
            None => None,
            Some(section) => {
                let coil = map
                    .halt_line
                    .ok_or_else(|| HaltLineError::NoCoil(config.plc.register_map_file.clone()))?;
                Some(HaltLine::open(HaltLineContext {
                    db: actions.clone(),
                    store: store.clone(),
                    alarms: alarms.clone(),
                    section: section.clone(),
                    coil: coil.coil,
                    metrics: metrics.clone(),
                })?)
            }
        };
        let webhooks = (!webhooks.is_empty()).then(|| WebhookContext {
            db: actions.clone(),
            store: store.clone(),
            webhooks,
            definitions: crate::analyse::alarms::builtin_definitions()
                .into_iter()
                .chain(definitions.iter().cloned())
                .collect(),
            equipment_id: config.hierarchy().join("/"),
            metrics: metrics.clone(),
        });
        let control = ModelControl::new(
            registry,
            models.clone(),
            store.clone(),
            (roi_width, roi_height),
            threshold_override,
        )
        .with_training_uploads(config.data_dir.join("training-uploads"))
        .with_taxonomy_dir(config.data_dir.clone());
        control.restore().await?;

        let (plc, plc_description) = match plc_address {
            Some(address) => {
                let mut link =
                    GateLink::new(address, config.plc.unit_id, config.plc.request_timeout, map);
                link.start().await?;
                tracing::info!(plc = %address, "PLC link checked; station marked running");
                (PlcSide::Client(link), address.to_string())
            }
            None => {
                let blocks = map.server.ok_or_else(|| {
                    StationError::ServerMode(format!(
                        "the register map {} has no [server] section",
                        config.plc.register_map_file.display()
                    ))
                })?;
                let listen = config
                    .plc
                    .listen
                    .ok_or_else(|| StationError::ServerMode("[plc] listen is missing".into()))?;
                let (server, ends) =
                    PlcServer::bind(listen, blocks, map.words.order, metrics.clone())
                        .await
                        .map_err(|error| {
                            StationError::ServerMode(format!("cannot listen on {listen}: {error}"))
                        })?;
                let bound = ends.listener.local_addr().map_err(|error| {
                    StationError::ServerMode(format!("cannot listen on {listen}: {error}"))
                })?;
                tracing::info!(%bound, "serving the PLC (server mode)");
                (
                    PlcSide::Server {
                        server,
                        ends: Box::new(ends),
                    },
                    format!("server mode, listening on {bound}"),
                )
            }
        };

        let api = ApiState {
            info: Arc::new(StationInfo {
                name: config.name.clone(),
                started_at: clock.utc(clock.now()).to_rfc3339(),
                model_version: models.live().version.to_string(),
                threshold: models.live().threshold,
                travel_ms: config.line.travel.as_millis() as u64,
                gate_window_ms: config.line.gate_window.as_millis() as u64,
                verdict_margin_ms: config.line.verdict_margin.as_millis() as u64,
                plc: plc_description,
                camera_pipeline: config.camera_pipeline.to_string(),
                simulated: config.simulator.is_some(),
                hierarchy: config.hierarchy().join("/"),
            }),
            state: Arc::new(std::sync::RwLock::new(StationState::Running)),
            store: store.clone(),
            metrics: metrics.clone(),
            models: Arc::new(control),
            tokens,
            hierarchy: Arc::new(config.hierarchy().map(str::to_owned)),
            sensors: Some(sensors.clone()),
            alarms,
            health: Default::default(),
            production,
            charts: Arc::new(config.charts.clone()),
            root_cause: RootCauseApi::new(config.root_cause.clone()),
            maintenance: Default::default(),
            drift: Default::default(),
            twin: crate::serve::twin::TwinApi::new(config.scenarios_dir.clone()),
            halt_line,
        };
        Ok(Station {
            webhooks,
            sensors,
            sources,
            config,
            clock,
            metrics,
            store,
            models,
            calibration,
            plc,
            api,
            camera_feeder: attachments.camera,
            views,
        })
    }

    /// The state the HTTP API serves.
    pub fn api(&self) -> ApiState {
        self.api.clone()
    }

    /// The record store.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The station's metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs the line until the camera ends, `max_parts`, or `shutdown`; then drains and stops.
    pub async fn run(
        self,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> Result<RunReport, StationError> {
        let Station {
            config,
            clock,
            metrics,
            store,
            models,
            calibration,
            plc,
            api,
            camera_feeder,
            views,
            sensors,
            sources,
            webhooks,
        } = self;
        let pipeline_description = config
            .camera_pipeline
            .description()
            .map_err(CaptureError::from)?;
        let first_part_id = store.start_run()?;

        let (trigger_tx, trigger_rx) = mpsc::channel::<Trigger>(256);
        let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel(config.frame_queue.get());
        let (inspection_tx, inspection_rx) = mpsc::channel::<Inspection>(64);
        let (gate_tx, gate_rx) = mpsc::channel::<GateCommand>(64);
        // Deep enough to ride out a slow disk for minutes without holding up the gate.
        let (outcome_tx, outcome_rx) = mpsc::channel::<PartOutcome>(8192);

        let recorder = tokio::spawn(run_recorder(RecordContext {
            store: store.clone(),
            outcomes: outcome_rx,
            clock: clock.clone(),
            metrics: metrics.clone(),
        }));
        // Follows the journal into the production counts the KPIs read.
        let counter_stop = CancellationToken::new();
        let counter = tokio::spawn(run_production_counter(
            store.clone(),
            api.production.counts.clone(),
            counter_stop.clone(),
        ));
        let publisher_stop = CancellationToken::new();
        let archiver_stop = CancellationToken::new();
        let token_auditor = tokio::spawn(run_token_auditor(
            api.tokens.clone(),
            store.clone(),
            archiver_stop.clone(),
        ));
        let archiver = config.records.archive_after_days.map(|days| {
            let dir = config
                .records
                .archive_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("archive"));
            tokio::spawn(run_archiver(
                store.clone(),
                std::time::Duration::from_secs_f64(days * 86_400.0),
                dir,
                archiver_stop.clone(),
            ))
        });
        let publisher = config.mqtt.as_ref().map(|mqtt| {
            let settings = MqttSettings {
                broker: mqtt.broker.clone(),
                client_id: mqtt
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("linesight-{}", config.name)),
                topic_root: config.hierarchy().join("/"),
            };
            let cursor = cursor_client(&settings);
            let task = tokio::spawn(run_mqtt(
                settings,
                store.clone(),
                metrics.clone(),
                publisher_stop.clone(),
            ));
            (task, cursor)
        });
        let sensors_stop = CancellationToken::new();
        let sensor_sources = tokio::spawn(run_sensors(
            sensors.clone(),
            sources,
            metrics.clone(),
            sensors_stop.clone(),
        ));
        // Alarms: shelve expiry and delays, and the monitor that feeds them tags, KPIs and
        // the station's health.
        let alarm_ticker = tokio::spawn(api.alarms.clone().run_ticker(sensors_stop.clone()));
        // Root cause of the sliding window, for the API's default answer.
        let root_cause = tokio::spawn(run_root_cause(
            store.clone(),
            sensors.clone(),
            config.production.running_tag.clone(),
            config.root_cause.clone(),
            api.root_cause.latest.clone(),
            {
                let clock = clock.clone();
                move || clock.utc(clock.now())
            },
            sensors_stop.clone(),
        ));
        // Resident memory follows the live heap back down after each transient peak.
        let heap_trim = tokio::spawn(crate::heap::run_heap_trim(sensors_stop.clone()));
        let maintenance = tokio::spawn(
            MaintenanceMonitor {
                alarms: api.alarms.clone(),
                sensors: sensors.clone(),
                store: store.clone(),
                watches: Arc::new(config.maintenance.clone()),
                running_tag: config.production.running_tag.clone(),
                latest: api.maintenance.clone(),
                now: {
                    let clock = clock.clone();
                    Arc::new(move || clock.utc(clock.now()))
                },
            }
            .run(sensors_stop.clone()),
        );
        // Schedule impact: the open work orders' ETAs, and an event whenever a stop, a
        // slowdown or a defect excursion moves an order's lateness.
        let schedule_runner = crate::analyse::schedule::start_schedule_runner(
            crate::analyse::schedule::ScheduleRunner {
                store: store.clone(),
                production: api.production.clone(),
                sensors: Some(sensors.clone()),
                settings: crate::analyse::schedule::Settings::default(),
                as_of_delay: config.line.travel + std::time::Duration::from_secs(2),
            },
            sensors_stop.clone(),
        );
        // Whether the camera is there: capture sets it, the monitor's health reads it.
        let camera = Arc::new(CameraStatus::default());
        // The further cameras stop once the inspect thread needs no more of their frames (it
        // stops them when it ends; so does the end of the run, whatever ended it).
        // Not the shutdown's child: on a shutdown the inspect thread still needs their frames
        // for the parts already captured.
        let views_stop = CancellationToken::new();
        let _stop_views_on_exit = views_stop.clone().drop_guard();
        let mut view_captures = views
            .into_iter()
            .map(|view| ViewCapture::prepare(view, &clock, &metrics, &views_stop))
            .collect::<Result<Vec<_>, StationError>>()?;
        let view_health: Vec<ViewHealth> = view_captures.iter().map(ViewCapture::health).collect();
        // Whether the live model still fits the parts: the model_drift alarm.
        let drift_watch = tokio::spawn(
            crate::analyse::drift::DriftWatch {
                store: store.clone(),
                models: api.models.active().clone(),
                latest: api.drift.clone(),
                metrics: metrics.clone(),
            }
            .run(sensors_stop.clone()),
        );
        let monitor = tokio::spawn(
            Monitor {
                alarms: api.alarms.clone(),
                sensors,
                production: api.production.clone(),
                store: store.clone(),
                health: {
                    // Judged once a second for the alarms; kept for /api/v1/station too.
                    let judge = station_health(&api, &metrics, camera.clone(), view_health);
                    let shown = api.health.clone();
                    Arc::new(move || {
                        let now = judge();
                        if let Ok(mut slot) = shown.write() {
                            slot.clone_from(&now);
                        }
                        now
                    })
                },
                as_of_delay: config.line.travel + std::time::Duration::from_secs(2),
                charts: api.charts.clone(),
            }
            .run(sensors_stop.clone()),
        );
        // Actions on alarms: webhooks and the halt-line coil (its own PLC connection).
        let webhook_task =
            webhooks.map(|ctx| tokio::spawn(run_webhooks(ctx, sensors_stop.clone())));
        // Only client mode has a halt line (prepare refuses one in server mode).
        let halt_line_task = match (&plc, api.halt_line.clone()) {
            (PlcSide::Client(link), Some(halt_line)) => Some(tokio::spawn(run_halt_line(
                halt_line,
                link.sibling(),
                sensors_stop.clone(),
            ))),
            _ => None,
        };
        let heartbeat_stop = CancellationToken::new();
        let plc_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt_held_elsewhere: crate::actuate::HaltHeldProbe = match api.halt_line.clone() {
            Some(halt_line) => Arc::new(move || halt_line.latched()),
            None => Arc::new(|| false),
        };
        let plc_watch = PlcWatch {
            timeout: config.plc.plc_heartbeat_timeout,
            policy: config.plc.on_plc_lost,
            lost: plc_lost.clone(),
            halt_held_elsewhere,
            report: {
                let store = store.clone();
                Box::new(move |lost, why| {
                    let store = store.clone();
                    let state = if lost {
                        AlarmState::Raised
                    } else {
                        AlarmState::Cleared
                    };
                    let note = RecordBody::Alarm(AlarmRecord::condition(
                        PLC_LOST_ALARM,
                        state,
                        AlarmSeverity::High,
                        why,
                    ));
                    tokio::spawn(async move {
                        if let Err(error) = store.append_all(vec![note]).await {
                            tracing::warn!(%error, "cannot record the PLC heartbeat alarm");
                        }
                    });
                })
            },
        };
        // Client mode: a heartbeat task on its own connection, and the gate task sending each
        // verdict at its fire time. Server mode: the Modbus server (its heartbeat included),
        // the results task publishing each verdict when it is settled, and capture waiting
        // for the PLC's triggers.
        let mut encoder_task = None;
        let (heartbeat, gate, external_triggers, tracker_timing, publish_on_verdict, belt) =
            match plc {
                PlcSide::Client(link) => {
                    // Encoder tracking: the encoder is read on a connection of its own, from now
                    // until the heartbeat stops (after the last part has reached the diverter).
                    let belt = match config.tracking {
                        Tracking::Time => Belt::Clock,
                        Tracking::Encoder(encoder) => {
                            let track = EncoderTrack::shared(encoder.stale_after);
                            let mut encoder_link = link.sibling();
                            encoder_link.cap_reconnect_wait(PART_LINK_RECONNECT_MAX);
                            encoder_task = Some(tokio::spawn(run_encoder(
                                encoder_link,
                                encoder.poll,
                                track.clone(),
                                clock.clone(),
                                metrics.clone(),
                                heartbeat_stop.clone(),
                            )));
                            Belt::Encoder {
                                track,
                                travel_counts: i64::try_from(encoder.travel_counts)
                                    .unwrap_or(i64::MAX),
                                poll: encoder.poll,
                            }
                        }
                    };
                    // The PLC trusts no command before the station's next beat: that link waits
                    // on parts too.
                    let mut heartbeat_link = link.sibling();
                    heartbeat_link.cap_reconnect_wait(PART_LINK_RECONNECT_MAX);
                    let camera_lost: crate::actuate::CameraLostProbe = {
                        let (camera, metrics) = (camera.clone(), metrics.clone());
                        Arc::new(move || camera.lost(metrics.frames_captured.get()).is_some())
                    };
                    let heartbeat = tokio::spawn(run_heartbeat(
                        heartbeat_link,
                        config.plc.heartbeat,
                        metrics.clone(),
                        plc_watch,
                        camera_lost,
                        heartbeat_stop.clone(),
                    ));
                    // Under encoder tracking the PLC's window is in counts, which the tracker's fire
                    // point already respects: only the late edge (the predicted arrival) binds.
                    let (command_window, encoder_gate) = match &belt {
                        Belt::Clock => (link.command_window(), None),
                        Belt::Encoder { track, .. } => (
                            config.line.travel,
                            Some(EncoderGate {
                                track: track.clone(),
                                window_counts: link.command_window_counts(),
                                wait_at_most: config.line.travel,
                            }),
                        ),
                    };
                    let mut link = link;
                    link.cap_reconnect_wait(PART_LINK_RECONNECT_MAX);
                    let gate = tokio::spawn(run_gate(GateContext {
                        link,
                        commands: gate_rx,
                        outcomes: outcome_tx.clone(),
                        clock: clock.clone(),
                        metrics: metrics.clone(),
                        plc_lost,
                        command_window,
                        lead: config.line.actuation_lead,
                        encoder: encoder_gate,
                    }));
                    // Parts go to the gate task a little before their fire time; it sends each
                    // at the exact time.
                    let timing = LineTiming {
                        actuation_lead: config.line.actuation_lead + DISPATCH_AHEAD,
                        ..config.line
                    };
                    (heartbeat, gate, None, timing, false, belt)
                }
                PlcSide::Server { server, ends } => {
                    let heartbeat = tokio::spawn(server::run_server(ServerRun {
                        server: server.clone(),
                        listener: ends.listener,
                        heartbeat: config.plc.heartbeat,
                        watch: plc_watch,
                        metrics: metrics.clone(),
                        stop: heartbeat_stop.clone(),
                    }));
                    let gate = tokio::spawn(server::run_results(ResultsContext {
                        server: server.clone(),
                        commands: gate_rx,
                        outcomes: outcome_tx.clone(),
                        clock: clock.clone(),
                        metrics: metrics.clone(),
                        plc_lost,
                    }));
                    let external = ExternalTriggers {
                        triggers: ends.triggers,
                        sink: Arc::new(server),
                        // A frame later than the verdict deadline could not make the gate.
                        stale_after: config
                            .line
                            .travel
                            .saturating_sub(config.line.verdict_margin),
                    };
                    // A part without a verdict by its deadline is published as rejected then.
                    let timing = LineTiming {
                        actuation_lead: config.line.verdict_margin,
                        ..config.line
                    };
                    (heartbeat, gate, Some(external), timing, true, Belt::Clock)
                }
            };
        let inspector = Inspector {
            undistorter: Undistorter::new(&calibration)?,
            models: models.clone(),
        };
        // Short: a shadow model that cannot keep up skips frames rather than lag behind.
        let (shadow_tx, shadow_rx) = std::sync::mpsc::sync_channel(2);
        let shadow_ctx = ShadowContext {
            active: models,
            jobs: shadow_rx,
            store: store.clone(),
            metrics: metrics.clone(),
        };
        let shadow_thread = std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || run_shadow(shadow_ctx))
            .map_err(|e| StationError::Stage(format!("cannot start the shadow thread: {e}")))?;
        // Server mode: the simulated line's further views are fired with the station's camera,
        // so that every camera shows the part the PLC's trigger is for.
        let mut fire_also = Vec::new();
        if external_triggers.is_some() {
            for capture in view_captures.iter_mut().filter(|c| c.ctx.feeder.is_some()) {
                let (fire, fired) = std::sync::mpsc::channel();
                capture.ctx.fed_trigger = Some(fired);
                fire_also.push(fire);
            }
        }
        let mut view_joins = Vec::with_capacity(view_captures.len());
        let mut view_tasks = Vec::with_capacity(view_captures.len());
        for capture in view_captures.drain(..) {
            let (join, task) = capture.start(&metrics);
            view_joins.push(join);
            view_tasks.push(task);
        }
        let inspect_ctx = InspectContext {
            inspector,
            camera: config.camera_name.clone(),
            views: view_joins,
            stop_views: views_stop.clone(),
            frames: frame_rx,
            inspections: inspection_tx,
            clock: clock.clone(),
            metrics: metrics.clone(),
            shadow_jobs: shadow_tx,
            workers: config.inspect_workers,
            batch: config.inspect_batch,
        };
        let inspect_thread = std::thread::Builder::new()
            .name("inspect".into())
            .spawn(move || run_inspector(inspect_ctx))
            .map_err(|e| StationError::Stage(format!("cannot start the inspect thread: {e}")))?;
        let capture_ctx = CaptureContext {
            pipeline_description,
            feeder: camera_feeder,
            first_part_id,
            max_parts: options.max_parts,
            triggers: trigger_tx,
            frames: frame_tx.into(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            stop: shutdown.clone(),
            external_triggers,
            stall_timeout: config.camera_stall_timeout,
            end_of_stream: config.camera_end_of_stream,
            presence: config.camera_presence.clone(),
            genicam_trigger: config.camera_trigger.clone(),
            fire_also,
            fed_trigger: None,
        };
        let capture_status = camera.clone();
        let capture =
            tokio::task::spawn_blocking(move || capture_until_done(capture_ctx, &capture_status));
        tracing::info!(first_part_id, "line running");

        let tracked = run_tracker(TrackContext {
            tracker: PartTracker::on_belt(tracker_timing, belt),
            travel: config.line.travel,
            publish_on_verdict,
            triggers: trigger_rx,
            inspections: inspection_rx,
            gate: gate_tx,
            outcomes: outcome_tx,
            clock: clock.clone(),
            metrics: metrics.clone(),
        })
        .await;
        api.set_state(StationState::Stopping);

        // The tracker returns once capture and inspection have closed their channels and every
        // part has been dispatched; the rest drain in order. Every stage is awaited before any
        // error is returned, so queued outcomes are recorded and the stopped state is written.
        let capture_result = capture.await;
        views_stop.cancel();
        for (name, task) in view_tasks {
            match task.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(camera = %name, %error, "camera view stopped"),
                Err(error) => {
                    tracing::error!(camera = %name, %error, "camera view's capture failed")
                }
            }
        }
        let inspect_result = tokio::task::spawn_blocking(move || inspect_thread.join()).await;
        // The inspect thread dropped the shadow queue; the shadow thread ends after its last job.
        let shadow_result = tokio::task::spawn_blocking(move || shadow_thread.join()).await;
        let gate_result = gate.await;
        heartbeat_stop.cancel();
        let heartbeat_result = heartbeat.await;
        if let Some(task) = encoder_task {
            let _ = task.await;
        }
        let recorder_result = recorder.await;
        // Both stop between steps, never half-way through one.
        archiver_stop.cancel();
        if let Some(archiver) = archiver {
            let _ = archiver.await;
        }
        let _ = token_auditor.await;
        sensors_stop.cancel();
        let _ = sensor_sources.await;
        let _ = alarm_ticker.await;
        let _ = monitor.await;
        let _ = drift_watch.await;
        let _ = root_cause.await;
        let _ = heap_trim.await;
        let _ = maintenance.await;
        let _ = schedule_runner.await;
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        if let Some(task) = halt_line_task {
            let _ = task.await;
        }
        // A short grace to count the last records; the rest is counted at the next start (the
        // counter's cursor is durable).
        let last = store.last_seq();
        let mut counted = api.production.counts.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            counted.wait_for(|cursor| *cursor >= last),
        )
        .await;
        counter_stop.cancel();
        let _ = counter.await;
        if let Some((publisher, cursor)) = publisher {
            // A short grace to send the last records; whatever is left goes out at the next
            // start (the publisher's cursor is durable).
            let last = store.last_seq();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                while store.acknowledged(&cursor).unwrap_or(last) < last {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await;
            publisher_stop.cancel();
            let _ = publisher.await;
        }
        let mut stage_failures = Vec::new();
        if inspect_result.map(|joined| joined.is_err()).unwrap_or(true) {
            stage_failures.push("inspect thread panicked");
        }
        if shadow_result.map(|joined| joined.is_err()).unwrap_or(true) {
            stage_failures.push("shadow thread panicked");
        }
        for (stage, failed) in [
            ("gate", gate_result.is_err()),
            ("heartbeat", heartbeat_result.is_err()),
            ("recorder", recorder_result.is_err()),
        ] {
            if failed {
                stage_failures.push(stage);
            }
        }
        let outcome = match capture_result {
            Err(join) => Err(StationError::Stage(format!("capture: {join}"))),
            Ok(Err(error)) => Err(error.into()),
            Ok(Ok(_)) if !stage_failures.is_empty() => {
                Err(StationError::Stage(stage_failures.join(", ")))
            }
            Ok(Ok(summary)) => Ok(summary),
        };
        match outcome {
            Ok(summary) => {
                api.set_state(StationState::Stopped);
                tracing::info!(parts = summary.frames, tracked, "line stopped");
                Ok(RunReport {
                    parts: summary.frames,
                })
            }
            Err(error) => {
                api.set_state(StationState::Faulted);
                // The monitor has stopped with the line: the FAULT alarm is raised here, so
                // the journal says why every part went to reject.
                if let Err(alarm_error) = api
                    .alarms
                    .set_station(true, false, chrono::Utc::now(), &error.to_string())
                    .await
                {
                    tracing::warn!(error = %alarm_error, "cannot record the station fault alarm");
                }
                Err(error)
            }
        }
    }
}

/// The longest wait between connection attempts on the links parts wait on (gate commands,
/// the heartbeat the PLC must see before it trusts them, the encoder): a PLC that comes back
/// is found within this.
const PART_LINK_RECONNECT_MAX: std::time::Duration = std::time::Duration::from_millis(250);

struct TrackContext {
    tracker: PartTracker,
    /// The nominal travel: once capture and inspection have closed, parts still in flight
    /// after twice this (a belt that stands, an encoder that cannot be read) are given up.
    travel: std::time::Duration,
    /// Server mode: a part is settled as soon as its verdict is in (the PLC times the gate),
    /// not at its fire time.
    publish_on_verdict: bool,
    triggers: mpsc::Receiver<Trigger>,
    inspections: mpsc::Receiver<Inspection>,
    gate: mpsc::Sender<GateCommand>,
    outcomes: mpsc::Sender<PartOutcome>,
    clock: Arc<StationClock>,
    metrics: Metrics,
}

/// Feeds the tracker with triggers, inspections and the passing of time, and dispatches every
/// part that falls due: rejects to the gate, passes straight to the recorder. Returns the number
/// of parts dispatched once both inputs are closed and no part is left in flight.
async fn run_tracker(mut ctx: TrackContext) -> u64 {
    let (mut triggers_open, mut inspections_open) = (true, true);
    let mut dispatched = 0;
    let mut closed_at = None;
    loop {
        let now = ctx.clock.now();
        let mut next_due = ctx.tracker.next_due_at(now);
        if !triggers_open && !inspections_open {
            if next_due.is_none() {
                return dispatched;
            }
            let give_up_at = *closed_at.get_or_insert(now.after(2 * ctx.travel));
            if now >= give_up_at {
                let why = "the line stopped before the part reached the diverter";
                for due in ctx.tracker.give_up(now, why) {
                    dispatched += 1;
                    dispatch(&mut ctx, due).await;
                }
                continue;
            }
            next_due = next_due.map(|at| at.min(give_up_at));
        }
        let wake_at = next_due.map(|at| ctx.clock.instant(at));
        let wake = async move {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A part's trigger is always sent before its frame reaches inspection, so taking
            // triggers first means an inspection never arrives for a part not yet tracked.
            biased;
            trigger = ctx.triggers.recv(), if triggers_open => match trigger {
                Some(trigger) => ctx.tracker.trigger(trigger.part_id, trigger.captured_at),
                None => triggers_open = false,
            },
            inspection = ctx.inspections.recv(), if inspections_open => match inspection {
                Some(inspection) => {
                    let part_id = inspection.part_id;
                    let fate = ctx.tracker.inspected(inspection, ctx.clock.now());
                    match fate {
                        InspectionFate::Accepted => {}
                        InspectionFate::Late => {
                            ctx.metrics.inspections_late.inc();
                            tracing::warn!(%part_id, "verdict missed its deadline; part rejected by policy");
                        }
                        // Counted, so a model or machine too slow for the line shows on /metrics
                        // and not only in the log. The part went to the gate without it (with
                        // the fail-safe reject), and that stays its record.
                        InspectionFate::AfterDispatch => {
                            ctx.metrics.inspections_after_dispatch.inc();
                            tracing::warn!(%part_id, "verdict came after its part was dispatched; not used, the part's record keeps the disposition it went with");
                        }
                        InspectionFate::UnknownPart => tracing::error!(%part_id, "inspection for an untracked part"),
                    }
                    if ctx.publish_on_verdict
                        && matches!(fate, InspectionFate::Accepted | InspectionFate::Late)
                        && let Some(due) = ctx.tracker.take(part_id)
                    {
                        dispatched += 1;
                        dispatch(&mut ctx, due).await;
                    }
                }
                None => inspections_open = false,
            },
            () = wake => {}
        }
        let now = ctx.clock.now();
        for due in ctx.tracker.due(now) {
            dispatched += 1;
            dispatch(&mut ctx, due).await;
        }
        ctx.metrics
            .parts_in_flight
            .set(ctx.tracker.in_flight() as i64);
    }
}

/// Hands a settled part to the gate task (client mode) or the results task (server mode).
async fn dispatch(ctx: &mut TrackContext, due: crate::track::DuePart) {
    let now = ctx.clock.now();
    let missed = due.missed.clone();
    let mut outcome = PartOutcome {
        part_id: due.part_id,
        captured_at: due.captured_at,
        gate_at: due.gate_at,
        decided_at: now,
        disposition: due.disposition,
        inspection: due.inspection,
        inspection_late: due.inspection_late,
        actuation: Actuation::NotRequired,
    };
    // Encoder tracking lost the part's place: no command can be timed for it, and the PLC
    // diverts a part without one.
    if let Some(why) = missed {
        ctx.metrics.parts_missed.inc();
        ctx.metrics.gate_commands_failed.inc();
        tracing::warn!(part_id = %outcome.part_id, why, "no gate command for the part; the PLC diverts it");
        outcome.actuation = Actuation::Failed {
            at: now,
            error: why,
        };
        outcome.settle_undelivered_pass();
        if ctx.outcomes.send(outcome).await.is_err() {
            tracing::error!("recorder stopped; part not recorded");
        }
        return;
    }
    // Every part gets a command, a PASS too: the PLC diverts a part without one.
    // The tracker never waits on the PLC: when the gate is this far behind, the
    // command could not make its window anyway, so it is recorded as failed.
    let sent = match ctx.gate.try_send(GateCommand {
        outcome,
        place: due.place,
    }) {
        Ok(()) => true,
        Err(TrySendError::Full(GateCommand { mut outcome, .. })) => {
            ctx.metrics.gate_commands_failed.inc();
            tracing::error!(part_id = %outcome.part_id, "gate queue full; command dropped, the PLC diverts the part");
            outcome.actuation = Actuation::Failed {
                at: now,
                error: "gate queue full: the PLC link is too slow".into(),
            };
            outcome.settle_undelivered_pass();
            ctx.outcomes.send(outcome).await.is_ok()
        }
        Err(TrySendError::Closed(_)) => false,
    };
    if !sent {
        tracing::error!(part_id = %due.part_id, "downstream stage stopped; part not dispatched");
    }
}

/// Reads one counter of the station's metrics.
type CounterOf = fn(&Metrics) -> u64;

/// The failure counters the station's health watches, each with what it says when it moved.
/// Gate commands and encoder misses are among them: a PLC that answers every gate write with
/// an exception, or a lead the link cannot make, rejects every part while the link itself
/// looks healthy.
const WATCHED_FAILURES: [(&str, CounterOf); 6] = [
    ("frames dropped", |m| m.frames_dropped.get()),
    ("PLC link errors", |m| m.plc_link_errors.get()),
    ("gate commands not delivered", |m| {
        m.gate_commands_failed.get()
    }),
    ("parts missed by encoder tracking", |m| m.parts_missed.get()),
    ("sensor sources failing", |m| m.sensor_source_errors.get()),
    ("records failing", |m| m.record_errors.get()),
];

/// The watched failures that moved since `last` (the counters at the last look), which it
/// then takes the counters' values.
fn failures_since(
    metrics: &Metrics,
    last: &mut [u64; WATCHED_FAILURES.len()],
) -> Vec<&'static str> {
    let mut moved = Vec::new();
    for ((name, read), before) in WATCHED_FAILURES.iter().zip(last.iter_mut()) {
        let now = read(metrics);
        if now > *before {
            moved.push(*name);
        }
        *before = now;
    }
    moved
}

/// The station's health as the alarms see it: FAULT when it stopped on an error; DEGRADED
/// while a failure counter moved since the last look ([`WATCHED_FAILURES`]) or the PLC's
/// heartbeat is lost.
fn station_health(
    api: &ApiState,
    metrics: &Metrics,
    camera: Arc<CameraStatus>,
    views: Vec<ViewHealth>,
) -> Arc<dyn Fn() -> StationHealth + Send + Sync> {
    let state = api.state.clone();
    let metrics = metrics.clone();
    let last = std::sync::Mutex::new([0u64; WATCHED_FAILURES.len()]);
    Arc::new(move || {
        let mut failing = failures_since(
            &metrics,
            &mut last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if metrics.plc_heartbeat_lost.get() != 0 {
            failing.push("PLC heartbeat lost");
        }
        let stopped_on_error = state
            .read()
            .map(|s| matches!(*s, StationState::Faulted))
            .unwrap_or(false);
        let camera_lost = camera.lost(metrics.frames_captured.get());
        let views_lost: Vec<String> = views
            .iter()
            .filter_map(|view| {
                let reason = view.status.lost(view.metrics.frames_captured.get())?;
                Some(format!("camera `{}` lost ({reason})", view.name))
            })
            .collect();
        let fault = stopped_on_error || camera_lost.is_some() || !views_lost.is_empty();
        StationHealth {
            fault,
            degraded: !failing.is_empty(),
            // A capture stopped for good reads as lost too (no part is seen), but is not
            // retried: say so, and why.
            message: if let Some(reason) = camera.stopped() {
                format!(
                    "capture stopped ({reason}): the parts going by are not inspected and the \
                     PLC diverts them"
                )
            } else if let Some(reason) = camera_lost {
                format!(
                    "camera lost ({reason}); retrying: the parts going by meanwhile are not \
                     inspected and the PLC diverts them"
                )
            } else if !views_lost.is_empty() {
                format!(
                    "{}; retrying: meanwhile every part is rejected, its view missing",
                    views_lost.join("; ")
                )
            } else if fault {
                "the station stopped on an error: every part goes to reject".into()
            } else if failing.is_empty() {
                "running normally".into()
            } else {
                format!("degraded: {}", failing.join(", "))
            },
        }
    })
}

/// A further camera (`[[views]]`) as the station was prepared with it.
struct ViewCamera {
    config: ViewConfig,
    calibration: Calibration,
    /// Feeds its `appsrc name=source` (a view of the simulated line).
    feeder: Option<Box<dyn FrameFeeder>>,
}

/// What the station's health reads of a further camera.
struct ViewHealth {
    name: Arc<str>,
    status: Arc<CameraStatus>,
    /// The view's own capture counters.
    metrics: Metrics,
}

/// A further camera's capture, ready to start: its frames go to the inspect thread's
/// [`ViewJoin`], never to the tracker (parts are the station's camera's).
struct ViewCapture {
    name: Arc<str>,
    ctx: CaptureContext,
    frames: Arc<FrameRing>,
    undistorter: Undistorter,
    /// `match_ms` and `latency_ms`.
    timing: (std::time::Duration, std::time::Duration),
    status: Arc<CameraStatus>,
}

impl ViewCapture {
    fn prepare(
        view: ViewCamera,
        clock: &Arc<StationClock>,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Result<ViewCapture, StationError> {
        let description = view
            .config
            .pipeline
            .description()
            .map_err(CaptureError::from)?;
        // The view's own triggers make no parts: they are read and let go.
        let (triggers, mut ignored) = mpsc::channel::<Trigger>(16);
        std::thread::Builder::new()
            .name("view-triggers".into())
            .spawn(move || while ignored.blocking_recv().is_some() {})
            .map_err(|e| StationError::Stage(format!("cannot start a view's thread: {e}")))?;
        let label = CameraLabel {
            camera: view.config.name.to_string(),
        };
        let frames = FrameRing::new(
            view.config.frame_queue.get(),
            metrics.view_frames_dropped.get_or_create(&label).clone(),
        );
        // Counters of its own (the station's count the station camera's parts), but its
        // restarts are on the station's /metrics by camera.
        let own = Metrics {
            camera_restarts: metrics.view_camera_restarts.get_or_create(&label).clone(),
            ..Metrics::new()
        };
        let mut ctx = CaptureContext::new(description, triggers, frames.clone(), own, stop.clone());
        ctx.feeder = view.feeder;
        ctx.clock = clock.clone();
        ctx.stall_timeout = view.config.stall_timeout;
        Ok(ViewCapture {
            name: view.config.name.clone(),
            ctx,
            frames,
            undistorter: Undistorter::new(&view.calibration)?,
            timing: (view.config.match_window, view.config.latency),
            status: Arc::new(CameraStatus::default()),
        })
    }

    fn health(&self) -> ViewHealth {
        ViewHealth {
            name: self.name.clone(),
            status: self.status.clone(),
            metrics: self.ctx.metrics.clone(),
        }
    }

    /// Starts the capture; the inspect thread joins its frames through the [`ViewJoin`]. A
    /// capture that ends before the station stops it (a pipeline that is wrong, a fed or file
    /// source at its end) leaves the camera lost, with the reason, for good: the station shows
    /// FAULT and every part after is rejected, its view missing.
    fn start(self, metrics: &Metrics) -> (ViewJoin, ViewTask) {
        let join = ViewJoin {
            name: self.name.clone(),
            undistorter: self.undistorter,
            frames: ViewFrames::new(
                self.name.clone(),
                self.frames.clone(),
                self.timing,
                self.status.clone(),
                self.ctx.metrics.clone(),
                metrics.clone(),
            ),
        };
        let (status, ctx, frames, name) = (self.status, self.ctx, self.frames, self.name.clone());
        let (stop, captured) = (ctx.stop.clone(), ctx.metrics.frames_captured.clone());
        let task = tokio::task::spawn_blocking(move || {
            let result = capture_until_done(ctx, &status);
            if !stop.is_cancelled() {
                let reason = match &result {
                    Ok(_) => "its stream ended".to_owned(),
                    Err(error) => error.to_string(),
                };
                tracing::error!(camera = %name, %reason, "a camera view stopped for good; every part is rejected, its view missing");
                status.mark_lost(format!("stopped: {reason}"), captured.get());
            }
            frames.close();
            result
        });
        (join, (self.name, task))
    }
}

/// A further camera's running capture, by name.
type ViewTask = (
    Arc<str>,
    tokio::task::JoinHandle<Result<crate::capture::CaptureSummary, CaptureError>>,
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed gate command or an encoder miss degrades the station for the look that sees
    /// it, as a dropped frame does; a look with nothing new is healthy again.
    #[test]
    fn gate_failures_and_encoder_misses_degrade_the_health() {
        let metrics = Metrics::new();
        let mut last = [0; WATCHED_FAILURES.len()];
        assert!(failures_since(&metrics, &mut last).is_empty());
        metrics.gate_commands_failed.inc();
        assert_eq!(
            failures_since(&metrics, &mut last),
            ["gate commands not delivered"]
        );
        assert!(failures_since(&metrics, &mut last).is_empty());
        metrics.parts_missed.inc();
        metrics.frames_dropped.inc();
        assert_eq!(
            failures_since(&metrics, &mut last),
            ["frames dropped", "parts missed by encoder tracking"]
        );
    }

    /// A verdict that comes after its part was dispatched (its fail-safe reject already gone
    /// to the gate) is counted on /metrics, and changes nothing: no second command, no second
    /// outcome, so the part's record stays the reject it went as.
    #[tokio::test]
    async fn a_verdict_after_its_part_was_dispatched_is_counted_and_changes_nothing() {
        use crate::part::{Disposition, PartId, Verdict};
        use std::time::Duration;

        let clock = StationClock::start();
        let metrics = Metrics::new();
        let (triggers_tx, triggers) = mpsc::channel(4);
        let (inspections_tx, inspections) = mpsc::channel(4);
        let (gate, mut gate_rx) = mpsc::channel(4);
        let (outcomes, mut outcomes_rx) = mpsc::channel(4);
        let travel = Duration::from_millis(100);
        let tracker = tokio::spawn(run_tracker(TrackContext {
            tracker: PartTracker::new(LineTiming {
                travel,
                gate_window: Duration::from_millis(20),
                verdict_margin: Duration::from_millis(50),
                actuation_lead: Duration::from_millis(10),
            }),
            travel,
            publish_on_verdict: false,
            triggers,
            inspections,
            gate,
            outcomes,
            clock: clock.clone(),
            metrics: metrics.clone(),
        }));
        let captured_at = clock.now();
        triggers_tx
            .send(Trigger {
                part_id: PartId(1),
                captured_at,
            })
            .await
            .expect("the tracker runs");
        // No verdict by its fire time: the part goes to the gate as a reject by policy.
        let command = tokio::time::timeout(Duration::from_secs(10), gate_rx.recv())
            .await
            .expect("dispatched within 10 s")
            .expect("a gate command");
        assert_eq!(command.outcome.disposition, Disposition::RejectNoVerdict);
        // Its PASS comes only now.
        inspections_tx
            .send(Inspection::judged(1, clock.now(), Verdict::Pass, 0.1))
            .await
            .expect("the tracker runs");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.inspections_after_dispatch.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the verdict after dispatch was not counted within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.inspections_late.get(), 0, "counted once, apart");
        // Closing its inputs ends the tracker: nothing more went out for the part.
        drop((triggers_tx, inspections_tx));
        let dispatched = tokio::time::timeout(Duration::from_secs(10), tracker)
            .await
            .expect("the tracker ends within 10 s")
            .expect("tracker task");
        assert_eq!(dispatched, 1);
        assert!(gate_rx.try_recv().is_err(), "no second gate command");
        assert!(
            outcomes_rx.try_recv().is_err(),
            "no outcome from the verdict"
        );
    }
}
