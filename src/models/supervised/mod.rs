//! The supervised model, for once defects are labelled: per-patch defect segmentation with one
//! class per defect type, on the frozen pretrained backbone.
//!
//! Each image's patch features (EfficientNet-Lite0 or Lite1 stride 8 + upsampled stride 16, see
//! [`PatchFeatures::maps`]) are standardised and go through a small head (1×1 → 3×3 → 1×1
//! convolutions) that gives every 8×8 patch of the 256×256 input a class: `good` (index 0) or
//! one of the defect types. The heat map is each patch's defect probability.
//!
//! The image verdict and class are derived from the patch logits, the same way in training and
//! at inference:
//! - **defect score**: each patch's defect log-odds `d = logsumexp(defect logits) − good logit`,
//!   pooled over the image with a smooth maximum (`(1/r)·log mean exp(r·d)`, `r` =
//!   [`POOL_SHARPNESS`]) and squashed to a probability. A single clearly defective patch
//!   dominates; a scatter of doubtful ones does not add up to a reject, which a plain maximum
//!   over 1,024 patches would do.
//! - **defect class**: the defect type with the most probability mass over the patches.
//!
//! Training minimises the patch cross-entropy (defect patches weighted up: they are rare) plus
//! the image-level loss of both derived outputs, so the verdict the station acts on is what is
//! optimised. An image tagged defective without a mask or boxes does not label every patch a
//! defect (most of them look like good ones): its defect is located first, as the patches
//! farther from every good training patch than good patches almost ever are (the anomaly
//! model's rule), and only those are taught its class; its other patches teach nothing, and the
//! image-level losses, a smooth maximum over patches, do the rest (multiple-instance
//! learning). So tags alone suffice.
//!
//! Only the head learns; each training image's features are computed once per augmented copy
//! (see [`augment`](crate::learn::augment)), which keeps training to minutes on a CPU. Whole
//! feature channels are dropped at random while training (a regulariser for datasets of a few
//! hundred images). The threshold is chosen on a validation part that the
//! first fit never sees (by the verdicts of its good and defective images; where every one
//! of them shows a thin defect, as in CrackForest, by the heat-map cut that outlines those
//! best); the head is then fitted again with the validation images added, and that final
//! head, with the threshold, is what the held-out part measures.

pub mod input_size;
mod train;

pub use self::input_size::{SizeChoice, SizeTrial};
pub use self::train::{
    CrossValidation, DEFAULT_AUGMENTED_COPIES, DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS,
    DEFAULT_FEATURE_DROPOUT, DEFAULT_INPUT_SIZE, DEFAULT_LEARNING_RATE, FoldResult, InputSize,
    SupervisedSettings, cross_validate, evaluate, held_out_part, train,
};
pub use crate::models::boxes::{BOX_CUT, BoxShape, DefectBox, boxes_from_heat_map, classed_boxes};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, IndexOp, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::learn::augment::Augmentation;
use crate::learn::dataset::{self, Fold, Layout, Sample};
use crate::learn::eval::{
    self, BoxMetrics, BoxTruth, DetectionMetrics, PixelTruth, ThinDefectMetrics, ThinDefectTruth,
    ThresholdMetrics,
};
use crate::learn::fit::{binary_cross_entropy_each, for_each_var_sorted, seeded_init};
use crate::learn::hash::ContentHash;
use crate::learn::normaliser::Normaliser;
use crate::learn::progress::Progress;
use crate::models::anomaly::train::{AnomalyError, HOLDOUT_EVERY};
use crate::models::backbone::{
    BackboneInput, FEATURE_DIM, PatchFeatures, WeightsSearch, check_input_size,
};
use crate::models::card::{CARD_FILE, CardHead, Family, ModelCard};
use crate::models::on_worker_thread;
use crate::models::{Detector, ModelError};
use crate::part::{GrayImage, HeatMap};

/// Head weights inside a supervised model folder.
pub const HEAD_FILE: &str = "head.safetensors";

/// The card's `kind` of this family.
pub const KIND: &str = "supervised";

/// Side of the patch grid at the default input size (unit tests).
#[cfg(test)]
const GRID: usize = crate::models::backbone::features::INPUT_SIZE / 8;

/// Hidden channels of the head.
const HIDDEN: usize = 48;

/// A patch is labelled with its image's defect when at least this share of it is masked.
const MASK_COVERAGE: f32 = 0.25;

/// Defect patches weigh this much more than good ones in the patch loss.
const DEFECT_WEIGHT: f64 = 3.0;

/// Sharpness `r` of the smooth maximum that pools patch log-odds into the image's.
pub const POOL_SHARPNESS: f64 = 4.0;

/// The threshold may give up this many validation images against the best cut, to stay near
/// the model's natural cut of 0.5 (see [`eval::threshold_for_accuracy_near`]).
const ACCURACY_SLACK: usize = 1;

/// Every this-many-th image of each class of the training part is kept for validation.
const VALIDATION_EVERY: usize = 5;

/// Why supervised training, loading or evaluation failed.
pub type SupervisedError = AnomalyError;

/// The segmentation head.
#[derive(Debug, Clone)]
pub struct SegmentationHead {
    reduce: Conv2d,
    context: Conv2d,
    classify: Conv2d,
}

impl SegmentationHead {
    /// A head for `classes` classes (good included).
    pub fn new(vb: VarBuilder, classes: usize) -> candle_core::Result<SegmentationHead> {
        let one = Conv2dConfig::default();
        let three = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(SegmentationHead {
            reduce: candle_nn::conv2d(FEATURE_DIM, HIDDEN, 1, one, vb.pp("reduce"))?,
            context: candle_nn::conv2d(HIDDEN, HIDDEN, 3, three, vb.pp("context"))?,
            classify: candle_nn::conv2d(HIDDEN, classes, 1, one, vb.pp("classify"))?,
        })
    }
}

impl Module for SegmentationHead {
    /// Standardised `[b, FEATURE_DIM, h, w]` features → `[b, classes, h, w]` logits.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let logits = self.forward_patches(&xs.permute((0, 2, 3, 1))?.contiguous()?)?;
        logits.reshape((b, h, w, ()))?.permute((0, 3, 1, 2))
    }
}

impl SegmentationHead {
    /// Standardised patch-major features `[b, h, w, FEATURE_DIM]` → logits `[b·h·w, classes]`.
    ///
    /// Each layer is one matrix product over all patches of the batch (the 3×3 layer on the
    /// nine shifted copies of its input side by side): candle's `conv2d` and its gradients
    /// run an order of magnitude slower on a CPU than the same products through `matmul`.
    fn forward_patches(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = xs.dims4()?;
        let ys = pointwise(&self.reduce, &xs.reshape((b * h * w, c))?)?.relu()?;
        let neighbourhoods = ys
            .reshape((b, h, w, HIDDEN))?
            .apply_op1(Neighbourhoods3x3)?;
        let ys = pointwise(&self.context, &neighbourhoods)?.relu()?;
        pointwise(&self.classify, &ys)
    }
}

/// The 3×3 neighbourhood of every position of patch-major planes `[b, h, w, c]`, side by side:
/// `[b·h·w, 9·c]`, tap `(ky, kx)` row-major, then channel; zero outside the plane. A 3×3
/// convolution with padding 1 is then one matrix product. The gradient sums each tap back
/// onto the position it was copied from ([`NeighbourhoodSum`]); built from candle's pad,
/// narrow and cat instead, a training step took three times as long.
struct Neighbourhoods3x3;

impl CustomOp1 for Neighbourhoods3x3 {
    fn name(&self) -> &'static str {
        "neighbourhoods-3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let src = crate::models::contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; b * h * w * 9 * c];
        for_each_tap(b, h, w, |position, tap, source| {
            out[(position * 9 + tap) * c..][..c].copy_from_slice(&src[source * c..][..c]);
        });
        Ok((CpuStorage::F32(out), Shape::from((b * h * w, 9 * c))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let sum = NeighbourhoodSum { b, h, w, c };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&sum)?))
    }
}

/// The adjoint of [`Neighbourhoods3x3`]: `[b·h·w, 9·c]` → `[b, h, w, c]`, every tap's values
/// added onto the position they were read from.
struct NeighbourhoodSum {
    b: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl CustomOp1 for NeighbourhoodSum {
    fn name(&self) -> &'static str {
        "neighbourhood-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let NeighbourhoodSum { b, h, w, c } = *self;
        if layout.shape().dims() != [b * h * w, 9 * c] {
            candle_core::bail!("neighbourhood sum of a {:?} tensor", layout.shape());
        }
        let src = crate::models::contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; b * h * w * c];
        for_each_tap(b, h, w, |position, tap, source| {
            let from = &src[(position * 9 + tap) * c..][..c];
            for (o, v) in out[source * c..][..c].iter_mut().zip(from) {
                *o += v;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// Calls `f(position, tap, source)` for every position of `b` planes of `h`×`w` and every
/// 3×3 tap (row-major) whose source position lies inside the plane.
fn for_each_tap(b: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize)) {
    for plane in 0..b {
        for y in 0..h {
            for x in 0..w {
                let position = (plane * h + y) * w + x;
                for ky in 0..3 {
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                        continue;
                    };
                    for kx in 0..3 {
                        let Some(sx) = (x + kx).checked_sub(1).filter(|&sx| sx < w) else {
                            continue;
                        };
                        f(position, ky * 3 + kx, (plane * h + sy) * w + sx);
                    }
                }
            }
        }
    }
}

/// A convolution applied as a matrix product to rows of (patch-major) inputs: `[n, c·k·k]`
/// with the row holding the k×k taps in order, each with all `c` channels → `[n, out]`.
fn pointwise(conv: &Conv2d, rows: &Tensor) -> candle_core::Result<Tensor> {
    // `[out, c, ky, kx]` → `[ky, kx, c, out]`, matching the row layout.
    let weight = conv.weight();
    let out = weight.dim(0)?;
    let weight = weight.permute((2, 3, 1, 0))?.reshape(((), out))?;
    let ys = rows.matmul(&weight)?;
    match conv.bias() {
        Some(bias) => ys.broadcast_add(bias),
        None => Ok(ys),
    }
}

/// The head and the standardisation as three plain matrix products, for inference: candle's
/// `conv2d` took about 2 ms for the head's 36 million multiply-adds at 32×32 patches, the
/// products take a fraction of that. The standardisation is folded into the first layer
/// (`W·(x − m)/s + b = (W/s)·x + (b − (W/s)·m)`) and the 3×3 layer reads an explicit
/// neighbourhood matrix. Training keeps [`SegmentationHead`]; a test holds the two equal.
#[derive(Debug, Clone)]
struct InferenceHead {
    /// `[HIDDEN, FEATURE_DIM]` and `[HIDDEN, 1]`
    reduce: (Tensor, Tensor),
    /// `[HIDDEN, HIDDEN·9]` (input channel, then 3×3 tap, row-major) and `[HIDDEN, 1]`
    context: (Tensor, Tensor),
    /// `[classes, HIDDEN]` and `[classes, 1]`
    classify: (Tensor, Tensor),
}

impl InferenceHead {
    fn new(head: &SegmentationHead, normaliser: &Normaliser) -> candle_core::Result<InferenceHead> {
        let as_matrix = |conv: &Conv2d| -> candle_core::Result<(Tensor, Tensor)> {
            let weight = conv.weight().to_dtype(DType::F32)?;
            let out = weight.dim(0)?;
            let bias = match conv.bias() {
                Some(bias) => bias.to_dtype(DType::F32)?.reshape((out, 1))?,
                None => Tensor::zeros((out, 1), DType::F32, weight.device())?,
            };
            Ok((weight.flatten_from(1)?.contiguous()?, bias))
        };
        let (reduce_weight, reduce_bias) = as_matrix(&head.reduce)?;
        Ok(InferenceHead {
            reduce: normaliser.fold_into(&reduce_weight, &reduce_bias)?,
            context: as_matrix(&head.context)?,
            classify: as_matrix(&head.classify)?,
        })
    }

    /// Raw `[1, FEATURE_DIM, h, w]` maps → `[1, classes, h, w]` logits.
    fn forward(&self, maps: &Tensor) -> candle_core::Result<Tensor> {
        let (_, c, h, w) = maps.dims4()?;
        let layer =
            |(weight, bias): &(Tensor, Tensor), xs: &Tensor| weight.matmul(xs)?.broadcast_add(bias);
        let xs = maps.to_dtype(DType::F32)?.reshape((c, h * w))?;
        let hidden = layer(&self.reduce, &xs)?.relu()?;
        let hidden = layer(&self.context, &neighbourhoods_3x3(&hidden, h, w)?)?.relu()?;
        layer(&self.classify, &hidden)?.reshape((1, (), h, w))
    }
}

/// `[c, h·w]` planes → `[c·9, h·w]`: row `c·9 + ky·3 + kx` holds each position's neighbour at
/// `(y + ky − 1, x + kx − 1)`, zero outside the plane (a 3×3 convolution with padding 1 is then
/// one matrix product). Training uses the patch-major [`Neighbourhoods3x3`], which has a
/// backward pass; inference keeps this channel-major form, which takes the backbone's maps as
/// they come: running the training head on them instead (a transpose in, one out) measured
/// 13.5 against 12.0 ms per 256×256 prediction (one criterion run each).
fn neighbourhoods_3x3(planes: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (c, n) = planes.dims2()?;
    let values: Vec<f32> = planes.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; c * 9 * n];
    for (channel, plane) in values.chunks_exact(n).enumerate() {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut out[((channel * 9) + ky * 3 + kx) * n..][..n];
                for y in 0..h {
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                        continue;
                    };
                    // Output columns whose source column x + kx − 1 lies in the plane.
                    let x_start = 1usize.saturating_sub(kx);
                    let x_end = (w + 1 - kx).min(w);
                    let src = &plane[sy * w + x_start + kx - 1..sy * w + x_end + kx - 1];
                    row[y * w + x_start..y * w + x_end].copy_from_slice(src);
                }
            }
        }
    }
    Tensor::from_vec(out, (c * 9, n), planes.device())
}

/// The image-level outputs derived from patch logits `[b, K, h, w]`: the pooled defect
/// log-odds `[b]` and the log probability mass of each defect class `[b, K−1]`.
fn image_outputs(logits: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, k, h, w) = logits.dims4()?;
    let n = h * w;
    let logits = logits.reshape((b, k, n))?;
    let good = logits.i((.., 0, ..))?;
    let defect = logits.i((.., 1.., ..))?;
    let log_odds = (defect.log_sum_exp(1)? - good)?;
    let pooled = ((log_odds * POOL_SHARPNESS)?.log_sum_exp(1)? - (n as f64).ln())?;
    let defect_logit = (pooled / POOL_SHARPNESS)?;
    let log_p = candle_nn::ops::log_softmax(&logits, 1)?;
    let class_log_mass = log_p.i((.., 1.., ..))?.log_sum_exp(2)?;
    Ok((defect_logit, class_log_mass))
}

/// What the model says about one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Probability that the image shows a defect.
    pub defect_score: f32,
    /// The most likely defect class (an index ≥ 1 into the card's `classes`), whatever the
    /// score.
    pub defect_class: usize,
    /// With classes tolerated: the defect probability of the other classes alone, and the
    /// likeliest of them (`None` when every class is tolerated).
    pub rejecting: Option<(f32, Option<usize>)>,
    /// Each patch's defect probability, one per 8×8 pixels of the model's input.
    pub heat_map: HeatMap,
    /// Each patch's likeliest defect class (an index ≥ 1 into the card's `classes`, 0 for one
    /// past 255), whatever its defect probability: what names each of the boxes drawn from
    /// `heat_map`.
    pub patch_class: Vec<u8>,
}

/// The supervised model's section of its card: settings it was trained with and what it
/// measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisedCard {
    #[serde(flatten)]
    pub input: BackboneInput,
    /// Index 0 is `good`.
    pub classes: Vec<String>,
    /// Per-channel standardisation of the backbone features, fitted on the training images.
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    pub dataset: String,
    /// SHA-256 over the training images' paths and bytes.
    pub training_data_sha256: String,
    pub layout: Layout,
    pub split: String,
    pub n_train: usize,
    /// Defective training images tagged without a mask or boxes, whose defects training
    /// located from the good images (see the module doc).
    #[serde(default)]
    pub n_tagged_train: usize,
    /// Training images that could not be used (unreadable, or a mask that does not fit).
    pub n_skipped_train: usize,
    pub n_validation: usize,
    pub augmented_copies: usize,
    /// Share of feature channels dropped per image and step while training.
    #[serde(default)]
    pub feature_dropout: f64,
    pub epochs: usize,
    pub seed: u64,
    pub training_duration_s: f64,
    /// How defect boxes are drawn from the heat map ([`boxes_from_heat_map`]): chosen on the
    /// validation images where they are labelled with boxes, else the default (not written, so
    /// cards of models without boxes read as before).
    #[serde(default, skip_serializing_if = "BoxShape::is_default")]
    pub box_shape: BoxShape,
    /// How the input size was chosen, where the run chose it (`--input-size auto`): each
    /// candidate's validation figure (see [`input_size`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size_choice: Option<SizeChoice>,
    pub metrics: SupervisedMetrics,
}

impl Family for SupervisedCard {
    const KIND: &'static str = KIND;
}

/// Held-out metrics of a supervised model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisedMetrics {
    #[serde(flatten)]
    pub detection: DetectionMetrics,
    /// Share of held-out images given their true class, good included (the verdict decides
    /// good; the class rule decides which defect).
    pub class_accuracy: f64,
    /// Share rightly called defective or good at the threshold; `None` without good images.
    pub defect_vs_good_accuracy: Option<f64>,
    /// Among defective images, the share rejected at the threshold with their true class
    /// (cards before issue 21 counted the class whatever the threshold said).
    pub defect_class_accuracy: Option<f64>,
    /// At the card's threshold; `None` without good images.
    pub at_threshold: Option<ThresholdMetrics>,
    /// `confusion[true][predicted]`, indices into the card's `classes`.
    pub confusion: Vec<Vec<usize>>,
    /// How well the heat maps outline thin defects (cracks) pixel by pixel, at the images'
    /// own resolution: for layouts of thin defects ([`Layout::thin_defects`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_defect: Option<ThinDefectMetrics>,
    /// How well the model's boxes find the labelled ones: for images labelled with boxes
    /// (NEU-DET, DeepPCB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<BoxMetrics>,
}

/// A loaded supervised model: backbone, standardisation, head and card.
#[derive(Debug, Clone)]
pub struct SupervisedModel {
    features: PatchFeatures,
    normaliser: Normaliser,
    /// The trained head with `normaliser` folded in, for [`SupervisedModel::predict`].
    inference: InferenceHead,
    pub card: ModelCard<SupervisedCard>,
}

impl SupervisedModel {
    /// Loads `dir`'s card and head, on the backbone weights its card names, found by
    /// `weights`.
    pub fn load(
        dir: &Path,
        weights: &WeightsSearch,
        device: &Device,
    ) -> Result<SupervisedModel, SupervisedError> {
        let full_card = ModelCard::<SupervisedCard>::read(dir)?;
        let card = &full_card.family;
        let card_path = dir.join(CARD_FILE);
        if card.feature_mean.len() != FEATURE_DIM || card.feature_std.len() != FEATURE_DIM {
            return Err(file_error(
                &card_path,
                &format!("feature standardisation must have {FEATURE_DIM} values"),
            ));
        }
        if card.classes.len() < 2 || card.classes[0] != "good" {
            return Err(file_error(
                &card_path,
                &"classes must start with `good` and name at least one defect",
            ));
        }
        check_input_size(card.input.input_size).map_err(|m| file_error(&card_path, &m))?;
        let head_path = dir.join(HEAD_FILE);
        let tensors = candle_core::safetensors::load(&head_path, device)
            .map_err(|e| file_error(&head_path, &e))?;
        let head = SegmentationHead::new(
            VarBuilder::from_tensors(tensors, DType::F32, device),
            card.classes.len(),
        )
        .map_err(|e| file_error(&head_path, &e))?;
        let normaliser =
            Normaliser::new(card.feature_mean.clone(), card.feature_std.clone(), device)?;
        Ok(SupervisedModel {
            features: card.input.extractor(weights, dir, device)?,
            inference: InferenceHead::new(&head, &normaliser)?,
            normaliser,
            card: full_card,
        })
    }

    /// An untrained model with `classes` classes (good included): the same computation as a
    /// trained one, for benchmarks.
    pub fn untrained(
        features: PatchFeatures,
        classes: usize,
        seed: u64,
    ) -> candle_core::Result<SupervisedModel> {
        // The head lives where the features do: on the GPU in a `cuda` build that runs there.
        let device = features.device().clone();
        let varmap = VarMap::new();
        let head = SegmentationHead::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
            classes,
        )?;
        seeded_init(&varmap, seed)?;
        let normaliser = Normaliser::new(vec![0.0; FEATURE_DIM], vec![1.0; FEATURE_DIM], &device)?;
        let names: Vec<String> = std::iter::once("good".to_owned())
            .chain((1..classes).map(|i| format!("defect-{i}")))
            .collect();
        let mut card = untrained_card(names, &features);
        card.family.feature_mean = vec![0.0; FEATURE_DIM];
        card.family.feature_std = vec![1.0; FEATURE_DIM];
        Ok(SupervisedModel {
            features,
            inference: InferenceHead::new(&head, &normaliser)?,
            normaliser,
            card,
        })
    }

    /// Scores one image.
    pub fn predict(&self, image: &GrayImage) -> candle_core::Result<Prediction> {
        self.predict_tolerating(image, &[])
    }

    /// [`SupervisedModel::predict`], with the score of the classes not in `tolerated` (indices
    /// ≥ 1 into the card's `classes`) alone when `tolerated` is not empty.
    pub fn predict_tolerating(
        &self,
        image: &GrayImage,
        tolerated: &[usize],
    ) -> candle_core::Result<Prediction> {
        on_worker_thread(|| {
            predict_from_maps(&self.inference, &self.features.maps(image)?, tolerated)
        })
    }
}

/// The prediction from raw backbone maps `[1, FEATURE_DIM, grid, grid]`.
fn predict_from_maps(
    head: &InferenceHead,
    maps: &Tensor,
    tolerated: &[usize],
) -> candle_core::Result<Prediction> {
    let logits = head.forward(maps)?;
    let (_, k, h, w) = logits.dims4()?;
    // The same pooling over good and the rejecting classes only: a tolerated class's patches
    // no longer count as defect, everything else does as before.
    let rejecting = if tolerated.is_empty() {
        None
    } else {
        let kept: Vec<u32> = (0..k as u32)
            .filter(|c| !tolerated.contains(&(*c as usize)))
            .collect();
        if kept.len() == 1 {
            Some((0.0, None))
        } else {
            let index = Tensor::new(kept.as_slice(), logits.device())?;
            let (logit, mass) = image_outputs(&logits.index_select(&index, 1)?)?;
            let logit: f32 = logit.squeeze(0)?.to_scalar()?;
            let mass: Vec<f32> = mass.squeeze(0)?.to_vec1()?;
            let best = (0..mass.len())
                .max_by(|&a, &b| mass[a].total_cmp(&mass[b]))
                .unwrap_or(0);
            if !logit.is_finite() {
                candle_core::bail!("the defect score is not a number");
            }
            Some((1.0 / (1.0 + (-logit).exp()), Some(kept[best + 1] as usize)))
        }
    };
    let (defect_logit, class_log_mass) = image_outputs(&logits)?;
    let defect_logit: f32 = defect_logit.squeeze(0)?.to_scalar()?;
    let mass: Vec<f32> = class_log_mass.squeeze(0)?.to_vec1()?;
    let best = (0..mass.len())
        .max_by(|&a, &b| mass[a].total_cmp(&mass[b]))
        .unwrap_or(0);
    let p: Vec<Vec<f32>> = candle_nn::ops::softmax(&logits.reshape((k, h * w))?, 0)?.to_vec2()?;
    let values: Vec<f32> = p[0].iter().map(|good| 1.0 - good).collect();
    // Class 0 is good; a card holds a few dozen classes at most. A class past 255 would be
    // left unnamed (0), never mistaken for another.
    let patch_class: Vec<u8> = (0..h * w)
        .map(|i| {
            (1..k)
                .max_by(|&a, &b| p[a][i].total_cmp(&p[b][i]))
                .map_or(0, |c| u8::try_from(c).unwrap_or(0))
        })
        .collect();
    if !defect_logit.is_finite() {
        candle_core::bail!("the defect score is not a number");
    }
    Ok(Prediction {
        defect_score: 1.0 / (1.0 + (-defect_logit).exp()),
        defect_class: best + 1,
        rejecting,
        heat_map: HeatMap {
            width: w as u32,
            height: h as u32,
            values,
        },
        patch_class,
    })
}

/// The card of a model not yet trained on `classes` (`good` first), its input as `features`
/// prepares it.
fn untrained_card(classes: Vec<String>, features: &PatchFeatures) -> ModelCard<SupervisedCard> {
    let n_classes = classes.len();
    let family = SupervisedCard {
        input: BackboneInput::of(features),
        classes,
        feature_mean: Vec::new(),
        feature_std: Vec::new(),
        dataset: String::new(),
        training_data_sha256: String::new(),
        layout: Layout::Mvtec,
        split: String::new(),
        n_train: 0,
        n_tagged_train: 0,
        n_skipped_train: 0,
        n_validation: 0,
        augmented_copies: 0,
        feature_dropout: 0.0,
        epochs: 0,
        seed: 0,
        training_duration_s: 0.0,
        box_shape: BoxShape::default(),
        input_size_choice: None,
        metrics: empty_metrics(n_classes),
    };
    ModelCard::new(
        "untrained",
        "untrained".into(),
        String::new(),
        (0.5, String::new()),
        family,
    )
}

impl Detector for SupervisedModel {
    fn head(&self) -> &CardHead {
        &self.card.head
    }

    /// The defect probability and each patch's.
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
        let judgement = self.judge(image)?;
        Ok((judgement.score, judgement.heat_map))
    }

    fn judge(&self, image: &GrayImage) -> Result<crate::models::Judgement, ModelError> {
        self.judge_tolerating(image, &[])
    }

    /// Drawn as the card's `box_shape` says (chosen in training where images had boxes), at
    /// whatever threshold the station judges by: the cut is about where a defect's edge lies,
    /// not about whether the part passes. Each box is named by the class its patches like best.
    fn defect_boxes(
        &self,
        judgement: &crate::models::Judgement,
        width: u32,
        height: u32,
        _threshold: f32,
    ) -> Vec<DefectBox> {
        classed_boxes(
            &judgement.heat_map,
            &judgement.patch_class,
            &self.card.family.classes,
            width,
            height,
            self.card.family.box_shape,
        )
    }

    fn judge_tolerating(
        &self,
        image: &GrayImage,
        tolerated: &[&str],
    ) -> Result<crate::models::Judgement, ModelError> {
        let classes = &self.card.family.classes;
        // Class 0 is `good`: never a defect class to tolerate.
        let tolerated: Vec<usize> = (1..classes.len())
            .filter(|&i| tolerated.contains(&classes[i].as_str()))
            .collect();
        let prediction = self.predict_tolerating(image, &tolerated)?;
        if !prediction.defect_score.is_finite() {
            return Err(ModelError::NonFinite);
        }
        Ok(crate::models::Judgement {
            score: prediction.defect_score,
            heat_map: prediction.heat_map,
            defect_class: classes.get(prediction.defect_class).cloned(),
            patch_class: prediction.patch_class,
            rejecting: prediction
                .rejecting
                .map(|(score, class)| crate::models::RejectingScore {
                    score,
                    class: class.and_then(|c| classes.get(c).cloned()),
                }),
            boxes: None,
        })
    }
}

fn empty_metrics(classes: usize) -> SupervisedMetrics {
    SupervisedMetrics {
        detection: DetectionMetrics::default(),
        class_accuracy: 0.0,
        defect_vs_good_accuracy: None,
        defect_class_accuracy: None,
        at_threshold: None,
        confusion: vec![vec![0; classes]; classes],
        thin_defect: None,
        boxes: None,
    }
}

fn file_error(path: &Path, error: &dyn std::fmt::Display) -> SupervisedError {
    AnomalyError::File {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        let scale = b
            .abs()
            .and_then(|r| r.max_all()?.to_scalar::<f32>())
            .expect("scale");
        diff / scale.max(1.0)
    }

    /// The head through candle's own convolutions, the reference for the matrix-product form.
    fn convolution_reference(head: &SegmentationHead, xs: &Tensor) -> Tensor {
        head.reduce
            .forward(xs)
            .and_then(|ys| head.context.forward(&ys.relu()?))
            .and_then(|ys| head.classify.forward(&ys.relu()?))
            .expect("reference")
    }

    #[test]
    fn training_head_and_its_gradients_match_candle_convolutions() {
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let head = SegmentationHead::new(VarBuilder::from_varmap(&varmap, DType::F32, &device), 5)
            .expect("head");
        seeded_init(&varmap, 3).expect("init");
        let xs =
            candle_core::Var::randn(0f32, 1f32, (2, FEATURE_DIM, 5, 7), &device).expect("features");
        let fast = head.forward(&xs).expect("fast");
        let reference = convolution_reference(&head, &xs);
        let difference = relative_difference(&fast, &reference);
        assert!(difference <= 1e-5, "relative difference {difference}");

        // The same weighted sum of both outputs must have the same gradients, with respect to
        // the weights and to the input (the neighbourhood op's backward pass included).
        let weights = Tensor::randn(0f32, 1f32, fast.dims(), &device).expect("weights");
        let gradients = |out: &Tensor| {
            (out * &weights)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        };
        let (fast, reference) = (gradients(&fast), gradients(&reference));
        for (name, var) in [
            ("input", xs.as_tensor()),
            ("reduce", head.reduce.weight()),
            ("context", head.context.weight()),
            ("classify", head.classify.weight()),
        ] {
            let (a, b) = (
                fast.get(var).expect("fast gradient"),
                reference.get(var).expect("reference gradient"),
            );
            let difference = relative_difference(a, b);
            assert!(
                difference <= 1e-4,
                "{name}: relative difference {difference}"
            );
        }
    }

    #[test]
    fn inference_head_matches_the_training_head() {
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let head = SegmentationHead::new(VarBuilder::from_varmap(&varmap, DType::F32, &device), 4)
            .expect("head");
        seeded_init(&varmap, 5).expect("init");
        let mean: Vec<f32> = (0..FEATURE_DIM).map(|c| c as f32 * 0.1 - 3.0).collect();
        let std: Vec<f32> = (0..FEATURE_DIM).map(|c| 0.5 + (c % 7) as f32).collect();
        let normaliser = Normaliser::new(mean, std, &device).expect("normaliser");
        let maps = Tensor::randn(0f32, 5f32, (1, FEATURE_DIM, 6, 9), &device).expect("maps");
        let reference = head
            .forward(&normaliser.apply(&maps).expect("standardised"))
            .expect("reference");
        let fast = InferenceHead::new(&head, &normaliser)
            .and_then(|h| h.forward(&maps))
            .expect("fast");
        let difference = relative_difference(&fast, &reference);
        assert!(difference <= 1e-4, "relative difference {difference}");
    }

    #[test]
    fn one_clear_patch_outweighs_many_doubtful_ones() {
        let device = Device::Cpu;
        let n = GRID * GRID;
        // Two classes; patch log-odds = defect logit − good logit.
        let logits = |odds: &dyn Fn(usize) -> f32| {
            let mut values = vec![0f32; n];
            values.extend((0..n).map(odds));
            Tensor::from_vec(values, (1, 2, GRID, GRID), &device).expect("tensor")
        };
        let pooled = |t: &Tensor| -> f32 {
            image_outputs(t)
                .expect("pools")
                .0
                .squeeze(0)
                .expect("scalar")
                .to_scalar()
                .expect("f32")
        };
        let one_clear = pooled(&logits(&|i| if i == 7 { 12.0 } else { -6.0 }));
        let all_doubtful = pooled(&logits(&|_| -1.0));
        let all_good = pooled(&logits(&|_| -6.0));
        assert!(one_clear > 0.0, "{one_clear}");
        assert!(all_doubtful < 0.0, "{all_doubtful}");
        assert!((all_good + 6.0).abs() < 1e-4, "{all_good}");
    }

    #[test]
    fn class_mass_follows_the_patches() {
        let device = Device::Cpu;
        let n = GRID * GRID;
        // Three classes: good everywhere but 10 patches of class 2 and 3 of class 1.
        let mut values = vec![5f32; n];
        values.extend((0..n).map(|i| if i < 3 { 10.0 } else { 0.0 }));
        values.extend((0..n).map(|i| if (3..13).contains(&i) { 10.0 } else { 0.0 }));
        let logits = Tensor::from_vec(values, (1, 3, GRID, GRID), &device).expect("tensor");
        let mass: Vec<f32> = image_outputs(&logits)
            .expect("pools")
            .1
            .squeeze(0)
            .expect("row")
            .to_vec1()
            .expect("vec");
        assert!(mass[1] > mass[0], "{mass:?}");
    }
}
