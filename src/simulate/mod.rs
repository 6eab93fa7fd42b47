//! The built-in simulated line: a camera that shows synthetic parts, a PLC that drives a
//! simulated reject gate and serves the line's sensors, and the line's physics
//! ([`LineProcess`]: sensors whose values drive the defects, downtimes). Both sit behind the same real interfaces as the real line (a GStreamer
//! appsrc, a Modbus TCP server), so the station cannot tell them apart.
//!
//! The station never builds them itself: whoever starts a station on the simulated line (the
//! `linesight run` command, the tests) starts a [`SimulatedLine`] from the same config and
//! attaches the station to it, as it would be wired to a real camera and PLC.

mod camera;
pub mod history;
mod parts;
mod plc;
pub mod plc_program;
pub mod process;

pub use self::camera::{SimulatedCamera, part_at, part_on_line};
pub use self::parts::{
    DefectKind, DefectProbabilities, PartGenerator, SyntheticPart, write_mvtec_layout,
};
pub use self::plc::{GateEvent, PlcSimulator, PlcWrite, RejectPulse, TakenCommand};
pub use self::plc_program::DecisionReason;
pub use self::process::{LineError, LineProcess};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actuate::{RegisterMap, RegisterMapError};
use crate::config::{PlcKind, StationConfig, Tracking};
use crate::simulate::process::{RegisterKind, SENSOR_TICK};
use crate::station::Attachments;

/// Side of the simulated camera's square frames.
pub const FRAME_SIZE: u32 = 256;

/// Why the simulated line could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    RegisterMap(#[from] RegisterMapError),
    #[error("cannot start the PLC simulator on {address}: {source}")]
    Plc {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Line(#[from] LineError),
    #[error(
        "simulated sensor register {name} (holding {address}) overlaps the station's register \
         {station_register} in the register map"
    )]
    SensorOverlap {
        name: String,
        address: u16,
        station_register: u16,
    },
}

/// The simulated parts of one station's line, as its config asks for them: the PLC
/// (`[plc] kind = "simulated"`) and the camera's parts (`[camera.simulator]`).
pub struct SimulatedLine {
    plc: Option<(PlcSimulator, tokio::task::JoinHandle<()>)>,
    /// Keeps the PLC's sensor registers up to date.
    sensors: Option<tokio::task::JoinHandle<()>>,
    camera: Option<(crate::config::SimulatorSection, Arc<LineProcess>)>,
    /// The `[[views]]` the simulated camera shows too, each with its face's seed and rate.
    views: Vec<(Arc<str>, crate::config::ViewSimulator)>,
    /// The slot of the line's first part, set by the camera that starts first: every camera
    /// starts on it, so the n-th part of each is the same part.
    first_slot: Arc<std::sync::OnceLock<u64>>,
    /// Time zero of the line: sensors and parts follow one clock.
    started: Instant,
    /// From the camera to the PLC's gate eye.
    camera_to_eye: Duration,
    /// `[plc] type = "server"`: the simulated PLC serves sensors only.
    server_mode: bool,
}

impl SimulatedLine {
    /// Starts the PLC simulator (listening at the config's PLC address, or any free loopback
    /// port) when the config asks for one, serving the line's sensors from now on.
    pub async fn start(config: &StationConfig) -> Result<SimulatedLine, SimulateError> {
        let started = Instant::now();
        let process = match &config.simulator {
            Some(section) => Some(Arc::new(LineProcess::new(section)?)),
            None => None,
        };
        let plc = match config.plc.kind {
            // In server mode the PLC that triggers and reads results is a client from outside
            // the simulated line; the simulated PLC still serves the line's sensors.
            PlcKind::Simulated | PlcKind::Server => {
                let address = config.plc.address.as_deref().unwrap_or("127.0.0.1:0");
                let plc_error = |source| SimulateError::Plc {
                    address: address.to_owned(),
                    source,
                };
                let map = RegisterMap::load(&config.plc.register_map_file)?;
                if let Some(process) = &process {
                    check_sensor_registers(&map, process)?;
                }
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(plc_error)?;
                let travel = config.line.travel;
                let (eye_to_gate, encoder_rate) = match config.tracking {
                    Tracking::Time => (Duration::from_millis(map.plc_program.eye_to_gate_ms), 0),
                    // The belt runs `travel_counts` in `travel`; the gate eye sits
                    // eye_to_gate_counts before the diverter.
                    Tracking::Encoder(encoder) => {
                        let rate = encoder.travel_counts as f64 / travel.as_secs_f64();
                        (
                            Duration::from_secs_f64(
                                map.plc_program.eye_to_gate_counts as f64 / rate,
                            ),
                            rate.round() as u64,
                        )
                    }
                };
                let camera_to_eye = travel.saturating_sub(eye_to_gate);
                let plc = PlcSimulator::serve(listener, map).map_err(plc_error)?;
                plc.0.set_encoder_rate(encoder_rate);
                Some((plc, camera_to_eye))
            }
            PlcKind::Tcp => None,
        };
        let camera_to_eye = plc.as_ref().map_or(Duration::ZERO, |(_, d)| *d);
        let plc = plc.map(|(plc, _)| plc);
        let sensors = match (&plc, &process) {
            (Some((plc, _)), Some(process)) if process.has_registers() => {
                // Served before anyone can connect, then every tick.
                plc.publish(&process.registers(started.elapsed()));
                Some(tokio::spawn(serve_sensors(
                    plc.clone(),
                    process.clone(),
                    started,
                )))
            }
            _ => None,
        };
        Ok(SimulatedLine {
            plc,
            sensors,
            camera: config.simulator.clone().zip(process),
            views: config
                .views
                .iter()
                .filter_map(|view| Some((view.name.clone(), view.simulator?)))
                .collect(),
            first_slot: Arc::default(),
            started,
            camera_to_eye,
            server_mode: config.plc.kind == PlcKind::Server,
        })
    }

    /// The line's physics, when the config has a simulated camera.
    pub fn process(&self) -> Option<Arc<LineProcess>> {
        self.camera.as_ref().map(|(_, process)| process.clone())
    }

    /// When the line started: the time zero of [`LineProcess`]'s functions.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The simulated PLC, when there is one.
    pub fn plc(&self) -> Option<PlcSimulator> {
        self.plc.as_ref().map(|(plc, _)| plc.clone())
    }

    /// What a station on this line is attached to: the simulated camera and PLC.
    pub fn attachments(&self) -> Attachments {
        Attachments {
            camera: self.camera.clone().map(|(settings, process)| {
                // Client mode: the parts the camera shows go on to the PLC's gate eye. In
                // server mode the PLC's own belt brings them and its trigger fires the camera.
                let conveyor = self
                    .plc
                    .as_ref()
                    .filter(|_| !self.server_mode)
                    .map(|(plc, _)| (plc.clone(), self.camera_to_eye));
                Box::new(SimulatedCamera::new(
                    settings,
                    process,
                    (self.started, self.first_slot.clone()),
                    conveyor,
                )) as _
            }),
            // The same parts on the same schedule, another face of each: the part reaches the
            // gate eye once, with the station's camera.
            views: match &self.camera {
                Some((settings, process)) => self
                    .views
                    .iter()
                    .map(|(name, face)| {
                        let face = crate::config::SimulatorSection {
                            seed: face.seed,
                            defect_rate: face.defect_rate.unwrap_or(settings.defect_rate),
                            ..settings.clone()
                        };
                        let camera = SimulatedCamera::new(
                            face,
                            process.clone(),
                            (self.started, self.first_slot.clone()),
                            None,
                        );
                        (
                            name.clone(),
                            Box::new(camera) as Box<dyn crate::capture::FrameFeeder>,
                        )
                    })
                    .collect(),
                None => Vec::new(),
            },
            plc_address: self.plc.as_ref().map(|(plc, _)| plc.address()),
        }
    }
}

impl Drop for SimulatedLine {
    /// The PLC stops with the line.
    fn drop(&mut self) {
        if let Some(task) = &self.sensors {
            task.abort();
        }
        if let Some((_, task)) = &self.plc {
            task.abort();
        }
    }
}

/// Sensor values go in holding registers the station itself writes only if the two maps clash:
/// refuse that rather than serve values the station overwrites.
fn check_sensor_registers(map: &RegisterMap, process: &LineProcess) -> Result<(), SimulateError> {
    let station: Vec<(u16, u16)> = map
        .station_registers()
        .into_iter()
        .map(|(_, address, len)| (address, len))
        .collect();
    for write in process.registers(std::time::Duration::ZERO) {
        if write.kind != RegisterKind::Holding {
            continue;
        }
        let (start, end) = (
            u32::from(write.address),
            u32::from(write.address) + write.words.len() as u32,
        );
        if let Some((station_register, _)) = station.iter().find(|(address, len)| {
            u32::from(*address) < end && start < u32::from(*address) + u32::from(*len)
        }) {
            let name = process
                .sensors()
                .iter()
                .find(|s| s.register == RegisterKind::Holding && s.address == write.address)
                .map_or_else(|| "running_flag".to_owned(), |s| s.name.clone());
            return Err(SimulateError::SensorOverlap {
                name,
                address: write.address,
                station_register: *station_register,
            });
        }
    }
    Ok(())
}

/// Keeps the PLC's sensor registers at the line's reported values, once per sensor tick.
async fn serve_sensors(plc: PlcSimulator, process: Arc<LineProcess>, started: Instant) {
    let mut ticks = tokio::time::interval(SENSOR_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        plc.publish(&process.registers(started.elapsed()));
    }
}
