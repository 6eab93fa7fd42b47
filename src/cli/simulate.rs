//! `linesight simulate`: the simulated line's parts as a dataset, to onboard a model of them
//! (`linesight train anomaly --layout mvtec`) or to benchmark one, or as raw frames for a line
//! simulator outside the station to show its camera (`tests/interop/client_mode_plc.py`).

use std::path::PathBuf;

use anyhow::Context;

use linesight::simulate::{FRAME_SIZE, PartGenerator, write_mvtec_layout};

#[derive(clap::Subcommand)]
pub enum Simulate {
    /// Write simulated parts in the MVTec AD layout: good parts to train on, good and
    /// defective ones (with masks) to test on.
    Parts {
        /// The dataset's folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Good parts in `train/good`.
        #[arg(long, default_value_t = 64)]
        train: usize,
        /// Good parts in `test/good`, and as many defective ones in `test/defect`.
        #[arg(long, default_value_t = 16)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write simulated parts as raw 8-bit grey frames (`part-0000.raw`, `part-0001.raw`, …,
    /// each 256×256 bytes, no header): what a camera on the simulated line
    /// sends, for a line simulator to stream to a `tcpserversrc` camera.
    Frames {
        /// The frames' folder (created).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// The share of parts drawn with a defect.
        #[arg(long, default_value_t = 0.3)]
        defect_rate: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

impl Simulate {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Simulate::Parts {
                out,
                train,
                test,
                seed,
            } => {
                let mut generator = PartGenerator::new(seed, FRAME_SIZE, FRAME_SIZE, 0.0);
                write_mvtec_layout(&out, &mut generator, train, test)
                    .with_context(|| format!("writing the parts to {}", out.display()))?;
                eprintln!(
                    "{train} good parts to train on, {test} good and {test} defective to test on, in {}",
                    out.display()
                );
                Ok(())
            }
            Simulate::Frames {
                out,
                count,
                defect_rate,
                seed,
            } => {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&defect_rate),
                    "--defect-rate must be between 0 and 1, not {defect_rate}"
                );
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                let mut generator = PartGenerator::new(seed, FRAME_SIZE, FRAME_SIZE, defect_rate);
                for index in 0..count {
                    let path = out.join(format!("part-{index:04}.raw"));
                    std::fs::write(&path, &generator.next_part().image.pixels)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                eprintln!(
                    "{count} frames of {FRAME_SIZE}x{FRAME_SIZE} GRAY8 in {}",
                    out.display()
                );
                Ok(())
            }
        }
    }
}
