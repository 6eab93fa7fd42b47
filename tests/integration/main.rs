//! Linesight's integration tests: one binary, one module per area.
//!
//! They run real components end to end: GStreamer, OpenCV, candle, Modbus over loopback TCP,
//! sled on disk, and axum on a real port. Data comes from the project's own simulator.

#[path = "../common/mod.rs"]
mod common;

mod anomaly;
mod b2mml;
mod backbone;
mod cli;
mod crash;
mod gate;
mod interop;
mod line;
mod mes;
mod models;
mod mqtt;
mod supervised;

use std::path::Path;

pub use common::{backbone_weights, repo, write_mvtec_parts, write_png, write_tile_dataset};
use linesight::config::StationConfig;
use linesight::simulate::SimulatedLine;
use linesight::station::{Station, StationError};

/// Tests that load the CPU (a running station, model training) take this one at a time: the
/// station tests hold real deadlines, and on a 2-core machine a training run beside them would
/// measure the machine, not the station.
pub static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A station on the simulated line `config` describes, and that line (its PLC stops when the
/// line is dropped).
pub async fn simulated_station(
    config: StationConfig,
) -> Result<(SimulatedLine, Station), StationError> {
    let line = SimulatedLine::start(&config)
        .await
        .expect("the simulated line starts");
    let station = Station::prepare(config, line.attachments()).await?;
    Ok((line, station))
}

/// The shipped simulated-line config with `edits` applied (`(old, new)` text replacements) and
/// its data in `data_dir`. Each `old` must occur, so a renamed key breaks the test loudly.
pub fn station_config(data_dir: &Path, edits: &[(&str, &str)]) -> StationConfig {
    let path = repo().join("config/simulated-line.toml");
    let mut text = std::fs::read_to_string(&path).expect("shipped config");
    let data_line = format!("data_dir = {:?}", data_dir.display().to_string());
    for (old, new) in [("data_dir = \"../var/sim-1\"", data_line.as_str())]
        .iter()
        .chain(edits)
    {
        assert!(text.contains(old), "config has no {old:?}");
        text = text.replace(old, new);
    }
    StationConfig::parse(&text, &path).expect("test config is valid")
}
