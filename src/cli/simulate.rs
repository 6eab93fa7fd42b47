//! `linesight simulate`: the simulated line's parts as a dataset, to onboard a model of them
//! (`linesight train anomaly --layout mvtec`) or to benchmark one.

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
        }
    }
}
