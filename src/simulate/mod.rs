//! The built-in simulated line: a camera that shows synthetic parts and a PLC that drives a
//! simulated reject gate. Both sit behind the same real interfaces as the real line (a GStreamer
//! appsrc, a Modbus TCP server), so the station cannot tell them apart.

mod camera;
mod parts;
mod plc;

pub use self::camera::SimulatedCamera;
pub use self::parts::{DefectKind, PartGenerator, SyntheticPart};
pub use self::plc::{PlcSimulator, PlcWrite, RejectPulse};
