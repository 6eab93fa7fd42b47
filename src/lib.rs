//! Linesight: a vision quality-inspection station.
//!
//! One station sits at one inspection point of a production line. It captures each part with a
//! camera, decides pass or fail with a CNN, fires a reject gate over Modbus when the part gets
//! there, and keeps a durable quality record of every part. Read `ARCHITECTURE.md` first.
//!
//! # Layout
//! The modules follow a part's way through the station:
//!
//! * [`capture`]: GStreamer pipeline → one trigger and one frame per part.
//! * [`calibrate`]: OpenCV undistortion and region-of-interest crop.
//! * [`inspect`]: the per-frame runtime: calibrated frame → the live model → a verdict.
//! * [`track`]: the part-tracking state machine (no I/O) → what to do at the gate, and when.
//! * [`actuate`]: the Modbus TCP link to the PLC → reject pulses and a heartbeat.
//! * [`record`]: the journal of every record (sled) and content-addressed images.
//! * [`sense`]: line sensor data in (tags, sources, quality flags, storage).
//! * [`analyse`]: the MES view: KPIs, control charts, alarms.
//! * [`serve`]: the HTTP API (the MES pull, roles), the live page and `/metrics`.
//! * [`publish`]: every record to the plant's MQTT broker.
//!
//! The models themselves, one folder per family, are in [`models`]; what they learn with
//! (datasets, augmentation, metrics, threshold rules) is in [`learn`].
//!
//! Beside them: [`part`] (the types every stage shares), [`config`] (the station file),
//! [`model_control`] (promote, roll back, shadow the model while the line runs),
//! [`metrics`], [`simulate`] (the built-in simulated line), [`twin`] (the line's digital twin,
//! for what-if) and [`station`] (the wiring).

pub mod actuate;
pub mod analyse;
pub mod calibrate;
pub mod capture;
pub mod config;
pub mod heap;
pub mod inspect;
pub mod learn;
pub mod metrics;
pub mod model_control;
pub mod models;
pub mod part;
pub mod publish;
pub mod record;
pub mod sense;
pub mod serve;
pub mod simulate;
pub mod station;
pub mod track;
pub mod twin;
