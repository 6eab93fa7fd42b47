//! The defect model: a small fully convolutional network that turns a grey image into a defect
//! heat map, and its model card.
//!
//! `DefectNet` maps `[batch, 1, H, W]` pixels scaled as `(x − 127) / 128` to `[batch, 1, H/4, W/4]`
//! logits, one per 4×4 cell: the probability that the cell shows a defect. The part's score is
//! the highest cell probability. Two dilated layers give each cell about 60 px of context, enough
//! to see a dent's light-and-shadow pair. The model does no I/O except loading its weights.

pub mod train;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::learn::eval::ThresholdMetrics;
use crate::models::card::{CardHead, Family, ModelCard};
use crate::models::{Detector, ModelError, on_worker_thread};
use crate::part::{GrayImage, HeatMap};

/// Architecture name stored in model cards.
pub const ARCHITECTURE: &str = "defect-net-v1";

/// Heat-map cells are this many pixels wide and high.
pub const HEAT_MAP_STRIDE: u32 = 4;

/// Weights file inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The card's `kind` of this family.
pub const KIND: &str = "defect-net";

/// `(in_channels, out_channels, stride, dilation)` of each 3×3 convolution.
const LAYERS: [(usize, usize, usize, usize); 5] = [
    (1, 8, 1, 1),
    (8, 16, 2, 1),
    (16, 32, 2, 1),
    (32, 32, 1, 2),
    (32, 32, 1, 4),
];

/// The network.
#[derive(Debug, Clone)]
pub struct DefectNet {
    convs: Vec<Conv2d>,
    head: Conv2d,
}

impl DefectNet {
    /// Builds the network with weights named `conv{i}.weight`, `conv{i}.bias`, `head.*`.
    pub fn new(vb: VarBuilder) -> candle_core::Result<DefectNet> {
        let convs = LAYERS
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, stride, dilation))| {
                let config = Conv2dConfig {
                    padding: dilation,
                    stride,
                    dilation,
                    groups: 1,
                    ..Default::default()
                };
                candle_nn::conv2d(c_in, c_out, 3, config, vb.pp(format!("conv{i}")))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let head = candle_nn::conv2d(
            LAYERS[LAYERS.len() - 1].1,
            1,
            1,
            Conv2dConfig::default(),
            vb.pp("head"),
        )?;
        Ok(DefectNet { convs, head })
    }
}

impl Module for DefectNet {
    /// `[b, 1, h, w]` normalised pixels → `[b, 1, h/4, w/4]` logits.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, c, h, w) = xs.dims4()?;
        if c != 1 || h % HEAT_MAP_STRIDE as usize != 0 || w % HEAT_MAP_STRIDE as usize != 0 {
            candle_core::bail!(
                "DefectNet takes [b, 1, h, w] with h, w multiples of 4, got {:?}",
                xs.dims()
            );
        }
        let mut x = xs.clone();
        for conv in &self.convs {
            x = conv.forward(&x)?.relu()?;
        }
        self.head.forward(&x)
    }
}

/// The image score from its cells' probabilities: the highest one. `None` when any value is
/// not finite, so a broken model can never pass a part.
pub fn image_score(cell_probabilities: &[f32]) -> Option<f32> {
    if cell_probabilities.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(cell_probabilities.iter().copied().fold(0.0, f32::max))
}

/// Turns 8-bit grey images into the network's input tensor `[b, 1, h, w]`.
pub fn to_input(images: &[&GrayImage], device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (images[0].width as usize, images[0].height as usize);
    let mut data = Vec::with_capacity(images.len() * w * h);
    for image in images {
        data.extend(image.pixels.iter().map(|&p| (f32::from(p) - 127.0) / 128.0));
    }
    Tensor::from_vec(data, (images.len(), 1, h, w), device)
}

/// What the input must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
}

/// How the model was trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Where the training images came from.
    pub data: String,
    /// SHA-256 over the training images and masks, in order.
    pub data_hash: String,
    pub seed: u64,
    pub n_train: usize,
    pub n_train_defective: usize,
    pub n_val: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub duration_s: f64,
}

/// Detection rate of one defect class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub n: usize,
    pub detected: usize,
}

/// Metrics on held-out test data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub data: String,
    pub n_test: usize,
    pub n_test_defective: usize,
    /// `None` when the test set lacks one of the classes.
    pub image_auroc: Option<f64>,
    pub average_precision: Option<f64>,
    pub at_threshold: ThresholdMetrics,
    pub per_class: BTreeMap<String, ClassMetrics>,
}

/// The defect network's section of its card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefectNetCard {
    pub input: InputSpec,
    /// Pixel scaling the weights expect.
    pub normalisation: String,
    pub heat_map_stride: u32,
    pub training: TrainingInfo,
    pub metrics: EvalMetrics,
    pub created_at: String,
}

impl Family for DefectNetCard {
    const KIND: &'static str = KIND;
}

/// A loaded model ready to score images.
#[derive(Debug, Clone)]
pub struct DefectModel {
    net: DefectNet,
    pub card: ModelCard<DefectNetCard>,
    device: Device,
}

impl DefectModel {
    /// Loads `card.json` and `model.safetensors` from a model folder.
    pub fn load(dir: &Path, device: &Device) -> Result<DefectModel, ModelError> {
        let read = |file: &'static str| {
            std::fs::read(dir.join(file)).map_err(|source| ModelError::Read {
                dir: dir.to_owned(),
                file,
                source,
            })
        };
        let card = ModelCard::<DefectNetCard>::read(dir)?;
        let head = &card.head;
        if !(head.threshold > 0.0 && head.threshold <= 1.0) {
            return Err(ModelError::Threshold {
                dir: dir.to_owned(),
                threshold: head.threshold,
            });
        }
        if head.architecture != ARCHITECTURE {
            return Err(ModelError::Architecture {
                dir: dir.to_owned(),
                got: head.architecture.clone(),
                want: ARCHITECTURE,
            });
        }
        let weights_err = |source| ModelError::Weights {
            dir: dir.to_owned(),
            source,
        };
        let tensors = candle_core::safetensors::load_buffer(&read(WEIGHTS_FILE)?, device)
            .map_err(weights_err)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let net = DefectNet::new(vb).map_err(weights_err)?;
        Ok(DefectModel {
            net,
            card,
            device: device.clone(),
        })
    }
}

impl Detector for DefectModel {
    fn head(&self) -> &CardHead {
        &self.card.head
    }

    /// Fully convolutional, but trained and thresholded at one frame size.
    fn input_size(&self) -> Option<(u32, u32)> {
        Some((self.card.family.input.width, self.card.family.input.height))
    }

    /// The defect score in `[0, 1]` and the heat map.
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
        let want = self.card.family.input;
        if (image.width, image.height) != (want.width, want.height)
            || image.pixels.len() != (want.width * want.height) as usize
        {
            return Err(ModelError::InputSize {
                got_width: image.width,
                got_height: image.height,
                want_width: want.width,
                want_height: want.height,
            });
        }
        let input = to_input(&[image], &self.device)?;
        let probabilities =
            on_worker_thread(|| candle_nn::ops::sigmoid(&self.net.forward(&input)?))?;
        let (_, _, h, w) = probabilities.dims4()?;
        let values = probabilities.flatten_all()?.to_vec1::<f32>()?;
        let score = image_score(&values).ok_or(ModelError::NonFinite)?;
        Ok((
            score,
            HeatMap {
                width: w as u32,
                height: h as u32,
                values,
            },
        ))
    }
}
