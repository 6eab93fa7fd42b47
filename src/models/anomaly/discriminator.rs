//! A learnt adaptation of the patch features, judged by a discriminator (SimpleNet-style).
//!
//! The bank's distance measures how far a patch lies from the nearest good one in the
//! backbone's own feature space, which was learnt on ImageNet, not on this product: every
//! channel counts as much as any other, whether the product's good surface varies along it or
//! not. SimpleNet (Liu et al., CVPR 2023) learns the space from the good parts themselves: a
//! linear *adaptor* maps each patch feature into a space of the same width, and a small MLP
//! *discriminator* learns to tell adapted good patches from the same patches with Gaussian
//! noise added there. The noise stands for every direction a defect could move a patch in;
//! what the discriminator learns is the thin shell around the good patches, tighter along the
//! directions the good surface never moves in.
//!
//! Here the features are first standardised per channel on the good patches (they run to
//! ±30, and the noise is then one scale for every channel), the adaptor starts as the
//! identity, and the loss is SimpleNet's truncated L1: a good patch's logit should reach
//! [`MARGIN`], a noisy one's fall below −[`MARGIN`]. Unlike the [`super::PatchHead`], it learns
//! nothing from the painted defects, so the score choice's painted trial judges it fairly
//! ([`super::score_choice`]). A patch's score is the negated logit; the image's the mean of its
//! highest few, as for the other patch scores. Only the channels the model's extractor keeps
//! are read: noise on a channel every good patch has at zero would be told apart by that
//! channel alone.
//!
//! Training is [`DiscriminatorSettings::steps`] steps of [`BATCH`] good patches and as many
//! noisy copies, drawn from at most [`MAX_PATCHES`] good patches, every draw from the run's
//! seed: the same patches and seed give the same weights.
//!
//! Off by default ([`DEFAULT_STEPS`]): on magnetic-tile's development part it lowered the
//! image AUROC at every setting tried (README.md has the table and its cost).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::{TOP_PATCHES, cut_to_channels, top_mean};
use crate::learn::progress::Phase;
use crate::models::backbone::PatchStages;

/// Width of the discriminator's hidden layer (SimpleNet's is 1024 over 1536 channels; the
/// search costs the most, so this one stays small: over 152 channels a patch costs 23 k
/// multiply-adds in the adaptor and 39 k in the hidden layer).
pub const HIDDEN: usize = 256;

/// Good patches a step (and as many noisy copies).
pub const BATCH: usize = 1024;

/// The most good patches the steps draw their batches from: a random sample of them all.
pub const MAX_PATCHES: usize = 1 << 16;

/// Logit a good patch should reach, and a noisy one fall below the negation of.
pub const MARGIN: f32 = 0.5;

/// Slope of the hidden layer's leaky ReLU below zero (SimpleNet's).
const LEAK: f64 = 0.2;

/// Learning rate of the discriminator; the adaptor learns at a tenth of it, as in SimpleNet,
/// so that it adapts the space rather than shrinking it until any noise stands out.
const LEARNING_RATE: f64 = 2e-3;

/// Steps of training unless asked otherwise: none, the discriminator is an option. On
/// magnetic-tile's development part (`scripts/magnetic-tile-dev.py`), where the defaults are
/// chosen, it lowered the image AUROC at every setting tried: 0.9470 without it; with 300
/// steps and noise 0.1, 0.25 and 1.0: 0.9339, 0.9276, 0.9310 (the discriminator alone 0.769,
/// 0.802, 0.829, where the patch distances alone reach 0.918); 1000 steps at 1.0: 0.9369
/// (alone 0.838). The score choice counts it there (painted-defect AUROC 0.79–0.80, as the
/// patch score's), and a fifth score that ranks real defects worse than the others dilutes
/// their sum. README.md has the table, with its cost.
pub const DEFAULT_STEPS: usize = 0;

/// The Gaussian noise's standard deviation in standardised channel units, unless asked
/// otherwise: the best of those tried alone on magnetic-tile's development part (above).
pub const DEFAULT_NOISE_STD: f32 = 1.0;

/// How the discriminator is trained; recorded in the card.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscriminatorSettings {
    /// Optimiser steps (0: no discriminator).
    pub steps: usize,
    /// The noise's standard deviation, in standardised channel units.
    pub noise_std: f32,
    pub seed: u64,
}

/// The adaptor and discriminator, trained: the patch standardisation folded into the adaptor.
#[derive(Debug, Clone)]
pub struct NoiseDiscriminator {
    /// The channels read ([`cut_to_channels`]).
    stages: PatchStages,
    /// `[c, c]` and `[1, c]`: raw (cut) patch to adapted feature.
    adaptor_weight: Tensor,
    adaptor_bias: Tensor,
    /// `[c, HIDDEN]` and `[1, HIDDEN]`.
    hidden_weight: Tensor,
    hidden_bias: Tensor,
    /// `[HIDDEN, 1]`: the logit, high for good.
    out_weight: Tensor,
}

/// The names the tensors are saved under, beside the bank.
pub const TENSOR_NAMES: [&str; 5] = [
    "discriminator.adaptor_weight",
    "discriminator.adaptor_bias",
    "discriminator.hidden_weight",
    "discriminator.hidden_bias",
    "discriminator.out_weight",
];

fn leaky_relu(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.relu()? - (xs.neg()?.relu()? * LEAK)?
}

/// Each channel's spread, floored at a thousandth of the median spread (1 where every channel
/// is constant).
fn floored_spreads(spreads: Vec<f32>) -> Vec<f32> {
    let mut sorted = spreads.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let floor = if median > 0.0 { 1e-3 * median } else { 1.0 };
    spreads.into_iter().map(|s| s.max(floor)).collect()
}

/// The per-channel standardisation (`mean`, `std`: `[1, c]`) folded into the adaptor
/// (`weight` `[c, c]`, `bias` `[1, c]`), so that the raw patch goes in:
/// ((x − μ) / σ)·A + a = x·(A / σᵀ) + (a − (μ / σ)·A), row i of A divided by σᵢ.
fn fold_standardisation(
    mean: &Tensor,
    std: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let folded_weight = weight.broadcast_div(&std.t()?)?;
    let folded_bias = (bias - mean.broadcast_div(std)?.matmul(weight)?)?;
    Ok((folded_weight.contiguous()?, folded_bias.contiguous()?))
}

/// `n` values drawn uniformly from `(-bound, bound)`.
fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}

impl NoiseDiscriminator {
    /// Trains on good patches (`[n, FEATURE_DIM]`, n ≥ 2, from an extractor keeping `stages`).
    /// `progress` counts the steps.
    pub fn fit(
        good_patches: &Tensor,
        stages: PatchStages,
        settings: DiscriminatorSettings,
        progress: &Phase,
    ) -> candle_core::Result<NoiseDiscriminator> {
        let device = good_patches.device().clone();
        let n = good_patches.dim(0)?;
        if n < 2 {
            candle_core::bail!("the discriminator needs at least 2 good patches, not {n}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        // Sampled before the cut: a training set's patches run to hundreds of MB.
        let sampled = if n > MAX_PATCHES {
            let keep: Vec<u32> = rand::seq::index::sample(&mut rng, n, MAX_PATCHES)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            good_patches.index_select(&Tensor::new(keep.as_slice(), &device)?, 0)?
        } else {
            good_patches.clone()
        };
        let cut = cut_to_channels(&sampled.to_dtype(DType::F32)?, stages)?;
        let (n, c) = cut.dims2()?;
        // Standardised per channel. A channel (nearly) constant on every good patch is divided
        // by no less than a thousandth of the typical channel's spread: divided by its own, a
        // patch that barely stirs it would stand out by orders of magnitude.
        let mean = cut.mean_keepdim(0)?;
        let centred = cut.broadcast_sub(&mean)?;
        let std = centred.sqr()?.mean_keepdim(0)?.sqrt()?;
        let std = Tensor::from_vec(
            floored_spreads(std.flatten_all()?.to_vec1()?),
            (1, c),
            &device,
        )?;
        let standardised = centred.broadcast_div(&std)?;

        let identity = Tensor::eye(c, DType::F32, &device)?;
        let adaptor_weight = Var::from_tensor(&identity)?;
        let adaptor_bias = Var::zeros((1, c), DType::F32, &device)?;
        let hidden_bound = (1.0 / c as f32).sqrt();
        let hidden_weight = Var::from_tensor(&Tensor::from_vec(
            uniform(&mut rng, c * HIDDEN, hidden_bound),
            (c, HIDDEN),
            &device,
        )?)?;
        let hidden_bias = Var::zeros((1, HIDDEN), DType::F32, &device)?;
        let out_bound = (1.0 / HIDDEN as f32).sqrt();
        let out_weight = Var::from_tensor(&Tensor::from_vec(
            uniform(&mut rng, HIDDEN, out_bound),
            (HIDDEN, 1),
            &device,
        )?)?;
        let params = candle_nn::ParamsAdamW {
            lr: LEARNING_RATE,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut adaptor_optimiser = candle_nn::AdamW::new(
            vec![adaptor_weight.clone(), adaptor_bias.clone()],
            candle_nn::ParamsAdamW {
                lr: LEARNING_RATE / 10.0,
                ..params.clone()
            },
        )?;
        let mut optimiser = candle_nn::AdamW::new(
            vec![
                hidden_weight.clone(),
                hidden_bias.clone(),
                out_weight.clone(),
            ],
            params,
        )?;
        let batch = BATCH.min(n);
        progress.set_length(settings.steps as u64);
        progress.set_position(0);
        for _ in 0..settings.steps {
            progress.check_candle()?;
            progress.inc(1);
            let drawn: Vec<u32> = (0..batch).map(|_| rng.gen_range(0..n as u32)).collect();
            let good = standardised.index_select(&Tensor::new(drawn.as_slice(), &device)?, 0)?;
            let adapted = good
                .matmul(adaptor_weight.as_tensor())?
                .broadcast_add(adaptor_bias.as_tensor())?;
            let noise: Vec<f32> = (0..batch * c)
                .map(|_| rng.sample::<f32, _>(StandardNormal) * settings.noise_std)
                .collect();
            let noisy = (&adapted + Tensor::from_vec(noise, (batch, c), &device)?)?;
            let logits = |xs: &Tensor| -> candle_core::Result<Tensor> {
                let hidden = leaky_relu(
                    &xs.matmul(hidden_weight.as_tensor())?
                        .broadcast_add(hidden_bias.as_tensor())?,
                )?;
                hidden.matmul(out_weight.as_tensor())
            };
            let good_loss = (logits(&adapted)?.neg()? + f64::from(MARGIN))?
                .relu()?
                .mean_all()?;
            let noisy_loss = (logits(&noisy)? + f64::from(MARGIN))?.relu()?.mean_all()?;
            let loss = (good_loss + noisy_loss)?;
            let grads = loss.backward()?;
            adaptor_optimiser.step(&grads)?;
            optimiser.step(&grads)?;
        }
        let (folded_weight, folded_bias) = fold_standardisation(
            &mean,
            &std,
            adaptor_weight.as_tensor(),
            adaptor_bias.as_tensor(),
        )?;
        Ok(NoiseDiscriminator {
            stages,
            adaptor_weight: folded_weight,
            adaptor_bias: folded_bias,
            hidden_weight: hidden_weight.as_tensor().contiguous()?,
            hidden_bias: hidden_bias.as_tensor().contiguous()?,
            out_weight: out_weight.as_tensor().contiguous()?,
        })
    }

    /// Each patch's score (`patches`: `[n, FEATURE_DIM]` from the model's extractor): the
    /// negated logit, higher for patches less like the good ones.
    pub fn patch_scores(&self, patches: &Tensor) -> candle_core::Result<Vec<f32>> {
        let cut = cut_to_channels(patches, self.stages)?;
        let adapted = cut
            .matmul(&self.adaptor_weight)?
            .broadcast_add(&self.adaptor_bias)?;
        let hidden = leaky_relu(
            &adapted
                .matmul(&self.hidden_weight)?
                .broadcast_add(&self.hidden_bias)?,
        )?;
        let logits: Vec<f32> = hidden.matmul(&self.out_weight)?.flatten_all()?.to_vec1()?;
        Ok(logits.into_iter().map(|z| -z).collect())
    }

    /// The image's score: the mean of its highest patch scores.
    pub fn score(&self, patches: &Tensor) -> candle_core::Result<f32> {
        Ok(top_mean(&self.patch_scores(patches)?, TOP_PATCHES))
    }

    /// The channels it reads: 152 for both maps, 40 for stride 8 alone, 112 for stride 16.
    pub fn channels(&self) -> usize {
        self.stages.channels().len()
    }

    /// The width of its hidden layer.
    pub fn hidden(&self) -> usize {
        self.hidden_bias.dims().last().copied().unwrap_or(0)
    }

    /// As tensors, for saving beside the bank, in [`TENSOR_NAMES`]' order: `[c, c]`, `[c]`,
    /// `[c, HIDDEN]`, `[HIDDEN]`, `[HIDDEN]`.
    pub fn to_tensors(&self) -> candle_core::Result<[Tensor; 5]> {
        Ok([
            self.adaptor_weight.clone(),
            self.adaptor_bias.flatten_all()?,
            self.hidden_weight.clone(),
            self.hidden_bias.flatten_all()?,
            self.out_weight.flatten_all()?,
        ])
    }

    /// From [`NoiseDiscriminator::to_tensors`]' output, for a model whose extractor keeps
    /// `stages`; refuses tensors of other shapes.
    pub fn from_tensors(
        tensors: [&Tensor; 5],
        stages: PatchStages,
        device: &Device,
    ) -> candle_core::Result<NoiseDiscriminator> {
        let c = stages.channels().len();
        let [
            adaptor_weight,
            adaptor_bias,
            hidden_weight,
            hidden_bias,
            out_weight,
        ] = tensors;
        let hidden = hidden_bias.dims().first().copied().unwrap_or(0);
        let want: [&[usize]; 5] = [&[c, c], &[c], &[c, hidden], &[hidden], &[hidden]];
        for ((name, tensor), want) in TENSOR_NAMES.iter().zip(tensors).zip(want) {
            if tensor.dims() != want || hidden == 0 {
                candle_core::bail!(
                    "`{name}` is {:?}, want {want:?} for a model reading {c} channels",
                    tensor.dims()
                );
            }
        }
        let load = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(device)?.contiguous();
        Ok(NoiseDiscriminator {
            stages,
            adaptor_weight: load(adaptor_weight)?,
            adaptor_bias: load(adaptor_bias)?.unsqueeze(0)?,
            hidden_weight: load(hidden_weight)?,
            hidden_bias: load(hidden_bias)?.unsqueeze(0)?,
            out_weight: load(out_weight)?.unsqueeze(1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::eval::auroc;
    use crate::models::backbone::FEATURE_DIM;

    /// `n` patches whose kept channels are drawn around a good surface: most channels vary
    /// little, a few a lot (as a product's good surface moves along few directions).
    fn good_patches(n: usize, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..n * FEATURE_DIM)
            .map(|i| {
                let spread = if i % FEATURE_DIM < 8 { 3.0 } else { 0.3 };
                5.0 + spread * rng.sample::<f32, _>(StandardNormal)
            })
            .collect();
        Tensor::from_vec(values, (n, FEATURE_DIM), &Device::Cpu).unwrap()
    }

    fn settings(seed: u64) -> DiscriminatorSettings {
        DiscriminatorSettings {
            steps: 150,
            noise_std: DEFAULT_NOISE_STD,
            seed,
        }
    }

    #[test]
    fn it_scores_patches_moved_off_the_good_surface_above_good_ones() {
        let good = good_patches(2048, 1);
        let model =
            NoiseDiscriminator::fit(&good, PatchStages::Both, settings(0), &Phase::hidden())
                .unwrap();
        let fresh = good_patches(200, 2);
        // Moved by 1.2 in every channel: four spreads in the quiet ones.
        let moved = (good_patches(200, 3) + 1.2).unwrap();
        let mut scores = model.patch_scores(&fresh).unwrap();
        scores.extend(model.patch_scores(&moved).unwrap());
        let labels: Vec<bool> = (0..400).map(|i| i >= 200).collect();
        let separation = auroc(&scores, &labels).unwrap();
        assert!(separation > 0.95, "AUROC {separation}");
    }

    #[test]
    fn the_folded_adaptor_reads_raw_patches_as_the_trained_one_reads_standardised_ones() {
        let (c, n) = (6, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let tensor = |rows: usize, cols: usize, rng: &mut ChaCha8Rng, spread: f32| {
            let values = (0..rows * cols)
                .map(|_| spread * rng.sample::<f32, _>(StandardNormal))
                .collect();
            Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
        };
        // An adaptor far from the identity and spreads far from one another: a transposed
        // fold, or a bias folded the wrong way, gives other values.
        let weight = tensor(c, c, &mut rng, 1.0);
        let bias = tensor(1, c, &mut rng, 1.0);
        let mean = tensor(1, c, &mut rng, 5.0);
        let std = Tensor::new(&[[0.5f32, 2.0, 7.0, 0.1, 1.0, 3.0]], &Device::Cpu).unwrap();
        let raw = tensor(n, c, &mut rng, 4.0);
        let by_hand: Vec<Vec<f32>> = ((raw.broadcast_sub(&mean).unwrap())
            .broadcast_div(&std)
            .unwrap()
            .matmul(&weight)
            .unwrap()
            .broadcast_add(&bias))
        .unwrap()
        .to_vec2()
        .unwrap();
        let (folded_weight, folded_bias) =
            fold_standardisation(&mean, &std, &weight, &bias).unwrap();
        let folded: Vec<Vec<f32>> = (raw.matmul(&folded_weight).unwrap())
            .broadcast_add(&folded_bias)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (a, b) in by_hand.iter().flatten().zip(folded.iter().flatten()) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{by_hand:?} against {folded:?}"
            );
        }
    }

    #[test]
    fn a_nearly_constant_channel_is_not_divided_by_its_own_spread() {
        let spreads = floored_spreads(vec![1.0, 2.0, 1e-7, 0.0, 3.0]);
        assert_eq!(spreads, vec![1.0, 2.0, 1e-3, 1e-3, 3.0]);
        assert_eq!(floored_spreads(vec![0.0, 0.0]), vec![1.0, 1.0]);
    }

    #[test]
    fn the_same_patches_and_seed_give_the_same_weights() {
        let good = good_patches(600, 4);
        let fit = |seed| {
            NoiseDiscriminator::fit(&good, PatchStages::Both, settings(seed), &Phase::hidden())
                .unwrap()
                .patch_scores(&good_patches(20, 5))
                .unwrap()
        };
        assert_eq!(fit(7), fit(7));
        assert_ne!(fit(7), fit(8));
    }

    #[test]
    fn a_one_map_discriminator_reads_only_that_maps_channels() {
        let good = good_patches(600, 6);
        let model =
            NoiseDiscriminator::fit(&good, PatchStages::Stride8, settings(0), &Phase::hidden())
                .unwrap();
        assert_eq!(model.channels(), 40);
        let probe = good_patches(10, 7);
        // The stride-16 channels changed wholesale: the scores must not move.
        let kept = probe.narrow(1, 0, 40).unwrap();
        let other = Tensor::zeros((10, FEATURE_DIM - 40), DType::F32, &Device::Cpu).unwrap();
        let changed = Tensor::cat(&[&kept, &other], 1).unwrap();
        assert_eq!(
            model.patch_scores(&probe).unwrap(),
            model.patch_scores(&changed).unwrap()
        );
    }

    #[test]
    fn saved_tensors_load_to_the_same_scores_and_other_shapes_are_refused() {
        let good = good_patches(600, 8);
        let model =
            NoiseDiscriminator::fit(&good, PatchStages::Both, settings(0), &Phase::hidden())
                .unwrap();
        let saved = model.to_tensors().unwrap();
        let [a, b, c, d, e] = &saved;
        let loaded =
            NoiseDiscriminator::from_tensors([a, b, c, d, e], PatchStages::Both, &Device::Cpu)
                .unwrap();
        let probe = good_patches(30, 9);
        assert_eq!(
            model.patch_scores(&probe).unwrap(),
            loaded.patch_scores(&probe).unwrap()
        );
        // Saved for both maps, loaded for a stride-8 extractor: refused, naming the tensor.
        let refused =
            NoiseDiscriminator::from_tensors([a, b, c, d, e], PatchStages::Stride8, &Device::Cpu)
                .unwrap_err()
                .to_string();
        assert!(
            refused.contains("discriminator.adaptor_weight"),
            "{refused}"
        );
    }
}
