//! Linesight's integration tests: one binary, one module per area.
//!
//! They run real components end to end: GStreamer, OpenCV, candle, Modbus over loopback TCP,
//! sled on disk, and axum on a real port. Data comes from the project's own simulator.

mod anomaly;
mod backbone;
mod cli;
mod gate;
mod interop;
mod line;
mod models;
mod supervised;

use std::path::{Path, PathBuf};

use linesight::config::StationConfig;

/// Tests that load the CPU (a running station, model training) take this one at a time: the
/// station tests hold real deadlines, and on a 2-core machine a training run beside them would
/// measure the machine, not the station.
pub static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes `image` as a PNG at `path`, creating its folder.
pub fn write_png(path: &Path, image: &linesight::part::GrayImage) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, linesight::record::gray_png(image).expect("png")).expect("write");
}

/// The converted pretrained backbone, which `make test` provides (`make weights`).
pub fn backbone_weights() -> PathBuf {
    let weights = repo().join("models/efficientnet-lite0/efficientnet-lite0.safetensors");
    assert!(
        weights.exists(),
        "{} is missing: run `make weights` (make test does)",
        weights.display()
    );
    weights
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
