//! The built-in simulated line: a camera that shows synthetic parts and a PLC that drives a
//! simulated reject gate. Both sit behind the same real interfaces as the real line (a GStreamer
//! appsrc, a Modbus TCP server), so the station cannot tell them apart.
//!
//! The station never builds them itself: whoever starts a station on the simulated line (the
//! `linesight run` command, the tests) starts a [`SimulatedLine`] from the same config and
//! attaches the station to it, as it would be wired to a real camera and PLC.

mod camera;
mod parts;
mod plc;

pub use self::camera::SimulatedCamera;
pub use self::parts::{DefectKind, PartGenerator, SyntheticPart};
pub use self::plc::{PlcSimulator, PlcWrite, RejectPulse};

use crate::actuate::{RegisterMap, RegisterMapError};
use crate::config::{PlcKind, StationConfig};
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
}

/// The simulated parts of one station's line, as its config asks for them: the PLC
/// (`[plc] kind = "simulated"`) and the camera's parts (`[camera.simulator]`).
pub struct SimulatedLine {
    plc: Option<(PlcSimulator, tokio::task::JoinHandle<()>)>,
    camera: Option<crate::config::SimulatorSection>,
}

impl SimulatedLine {
    /// Starts the PLC simulator (listening at the config's PLC address, or any free loopback
    /// port) when the config asks for one.
    pub async fn start(config: &StationConfig) -> Result<SimulatedLine, SimulateError> {
        let plc = match config.plc.kind {
            PlcKind::Simulated => {
                let address = config.plc.address.as_deref().unwrap_or("127.0.0.1:0");
                let plc_error = |source| SimulateError::Plc {
                    address: address.to_owned(),
                    source,
                };
                let map = RegisterMap::load(&config.plc.register_map_file)?;
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(plc_error)?;
                Some(PlcSimulator::serve(listener, map).map_err(plc_error)?)
            }
            PlcKind::Tcp => None,
        };
        Ok(SimulatedLine {
            plc,
            camera: config.simulator.clone(),
        })
    }

    /// The simulated PLC, when there is one.
    pub fn plc(&self) -> Option<PlcSimulator> {
        self.plc.as_ref().map(|(plc, _)| plc.clone())
    }

    /// What a station on this line is attached to: the simulated camera and PLC.
    pub fn attachments(&self) -> Attachments {
        Attachments {
            camera: self
                .camera
                .clone()
                .map(|settings| Box::new(SimulatedCamera { settings }) as _),
            plc_address: self.plc.as_ref().map(|(plc, _)| plc.address()),
        }
    }
}

impl Drop for SimulatedLine {
    /// The PLC stops with the line.
    fn drop(&mut self) {
        if let Some((_, task)) = &self.plc {
            task.abort();
        }
    }
}
