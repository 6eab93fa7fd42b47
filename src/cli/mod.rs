//! The `linesight` command line, one file per command (in the manner of mini-redis's `cmd/`):
//! each defines its arguments with clap and runs them. anyhow lives here, at the binary's edge.

mod anomalies;
mod backtest;
mod calibrate;
mod convert_weights;
mod eval;
mod model;
mod records;
mod report;
mod rootcause;
mod rul;
mod run;
mod sensors;
mod simulate;
mod token;
mod train;
mod whatif;

use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};
use linesight::models::backbone::bf16::{self, Precision};

#[derive(Parser)]
#[command(
    name = "linesight",
    version,
    about = "Vision quality-inspection station"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The arithmetic of the backbone's 1×1 convolutions on the CPU: auto (bfloat16 where the
    /// CPU has AVX-512 BF16, else f32), f32 or bf16. A station (and a backtest) loads its
    /// models under `[model] precision` from its config; this sets the rest (training, eval).
    #[arg(
        long,
        global = true,
        default_value = "auto",
        env = "LINESIGHT_PRECISION"
    )]
    precision: Precision,
}

#[derive(Subcommand)]
enum Command {
    /// Run a station: capture, inspect, actuate the reject gate, record, serve.
    Run(run::Run),
    /// Train a model.
    Train {
        #[command(subcommand)]
        kind: train::Train,
    },
    /// Evaluate a model on held-out data; prints a table and writes JSON.
    Eval {
        #[command(subcommand)]
        kind: eval::Eval,
    },
    /// The model registry and the model a running station uses.
    Model {
        #[command(subcommand)]
        action: model::Model,
    },
    /// Replay a recorded period through a candidate model: which verdicts would change.
    Backtest(backtest::Backtest),
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        action: token::Token,
    },
    /// The record store of a stopped station.
    Records {
        #[command(subcommand)]
        action: records::Records,
    },
    /// Line sensor data: import history from CSV.
    Sensors {
        #[command(subcommand)]
        action: sensors::SensorsCommand,
    },
    /// Root cause on a labelled CSV table: which columns move with a defect class.
    Rootcause(rootcause::RootCause),
    /// Remaining useful life from NASA C-MAPSS run-to-failure files: split, train, eval.
    Rul {
        #[command(subcommand)]
        action: rul::Rul,
    },
    /// Multivariate anomaly detection on line sensor data: evaluate on SKAB.
    Anomalies {
        #[command(subcommand)]
        action: anomalies::Anomalies,
    },
    /// Camera intrinsics and lens distortion from checkerboard photographs: writes the
    /// calibration file a station loads.
    Calibrate(calibrate::Calibrate),
    /// Convert pretrained EfficientNet-Lite0 or Lite1 weights (legacy PyTorch .pth) to
    /// safetensors.
    ConvertWeights(convert_weights::ConvertWeights),
    /// The simulated line's parts as a dataset (MVTec AD layout).
    Simulate {
        #[command(subcommand)]
        action: simulate::Simulate,
    },
    /// Run a line scenario of the digital twin as it is and with changes
    /// (`--change belt_speed=+20%`): what moves in throughput, OEE, late verdicts, orders.
    Whatif(whatif::WhatIf),
    /// Print the version.
    Version,
}

impl Cli {
    /// Runs the command the arguments name.
    pub fn run(self) -> anyhow::Result<()> {
        // Resolved (`auto` timed) only when a command builds a model.
        bf16::set_precision(self.precision);
        match self.command {
            Command::Run(run) => run.run(),
            Command::Train { kind } => {
                keep_freed_memory_for_reuse();
                kind.run()
            }
            Command::Eval { kind } => kind.run(),
            Command::Model { action } => action.run(),
            Command::Backtest(backtest) => backtest.run(),
            Command::Token { action } => action.run(),
            Command::Records { action } => action.run(),
            Command::Sensors { action } => action.run(),
            Command::Rootcause(rootcause) => rootcause.run(),
            Command::Rul { action } => action.run(),
            Command::Anomalies { action } => action.run(),
            Command::Calibrate(calibrate) => calibrate.run(),
            Command::ConvertWeights(convert) => convert.run(),
            Command::Simulate { action } => action.run(),
            Command::Whatif(whatif) => whatif.run(),
            Command::Version => {
                println!("linesight {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    }
}

/// Training allocates and frees tensors of tens of megabytes at every step. glibc serves
/// blocks that large with fresh `mmap`s and unmaps them when freed, so each step faults its
/// memory in again: training KolektorSDD spent 35 of its 74 s in the kernel, 2 of 44 s with
/// this. Keeping freed memory for reuse suits a training run that ends; the station, which
/// runs for months, keeps glibc's defaults.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any training thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Writes `value` as pretty JSON to `path`, when one is given.
fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
