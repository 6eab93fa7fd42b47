//! The cold-start anomaly model, learnt from good parts only (PatchCore).
//!
//! Each image is resampled, anti-aliased, to the model's input square (128×128 unless trained
//! otherwise) and passed through the pretrained EfficientNet-Lite (Lite0 by default); the stride-8 (40 ch) and upsampled
//! stride-16 (112 ch) maps are concatenated, giving one 152-dimensional feature per 8×8 patch,
//! centred on the image's mean patch. Training
//! keeps a *coreset* of the good patches: greedy farthest-point selection (on a seeded random
//! projection, for speed), so the memory bank covers every kind of normal surface with few
//! entries. A patch's anomaly score is its distance to the nearest bank entry; the image score is
//! the mean of the highest few patch scores, and the patch scores form the heat map. Beside it,
//! an [`ImageGaussian`] scores the image as a whole, and a [`PatchHead`], trained to tell good
//! patches from defects painted on the good images ([`crate::learn::synthetic_defect`]),
//! scores what a plain distance misses, and a [`CoarseImage`] scores the whole image again
//! through the backbone at a smaller input, and a [`NoiseDiscriminator`] scores each patch in
//! a space adapted to the product's good patches (SimpleNet-style); [`ScoreScale`] sums the
//! five, or those the training run chose for the product ([`score_choice`]).

pub mod bank_size;
pub mod discriminator;
pub mod input_size;
pub mod orientation;
pub mod patch_stages;
mod saved;
pub mod score_choice;
pub mod train;

pub use self::discriminator::{DiscriminatorSettings, NoiseDiscriminator};
pub use self::saved::{
    AnomalyCard, AnomalyMetrics, AnomalyModel, BANK_FILE, ClassAnomalyMetrics, DiscriminatorCard,
    ScoreAuroc,
};

/// The card's `kind` of this family.
pub const KIND: &str = "anomaly";

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::learn::fit::binary_cross_entropy_each;
use crate::learn::normaliser::Normaliser;
use crate::learn::progress::Phase;
use crate::models::backbone::{FEATURE_DIM, ImageFeatures, PatchFeatures, PatchStages};
use crate::models::lanes::{dot, sum_of};
use crate::models::on_worker_thread;
use crate::part::{GrayImage, HeatMap};

/// The image score is the mean of this many highest patch scores: steadier than the single
/// highest (magnetic-tile image AUROC 0.86 against 0.85).
const TOP_PATCHES: usize = 5;

/// Dimension of the random projection used only to pick the coreset.
const PROJECTION_DIM: usize = 64;

/// Mean of the `k` highest values (all of them when there are fewer).
fn top_mean(values: &[f32], k: usize) -> f32 {
    let k = k.min(values.len());
    if k == 0 {
        return 0.0;
    }
    // The top k picked out, then summed highest first (a whole sort of every patch was a
    // few per cent of a frame).
    let mut top = values.to_vec();
    top.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let top = &mut top[..k];
    top.sort_by(|a, b| b.total_cmp(a));
    top.iter().sum::<f32>() / k as f32
}

/// Indices of a greedy farthest-point coreset of `features` (`[n, d]`), `size` entries,
/// started from a seeded random point and measured on a seeded random projection. `progress`
/// counts the entries chosen (each is a pass over every patch: minutes on a large dataset).
pub fn greedy_coreset(
    features: &Tensor,
    size: usize,
    seed: u64,
    progress: &Phase,
) -> candle_core::Result<Vec<usize>> {
    let mut coreset = GreedyCoreset::new(features, seed)?;
    coreset.grow_to(size, progress)?;
    Ok(coreset.chosen().to_vec())
}

/// A greedy farthest-point coreset that grows on demand: the first `k` entries of a coreset
/// grown to any size are the coreset of size `k`, so a run can try a larger bank by going on
/// from a smaller one ([`bank_size::choose`]).
pub struct GreedyCoreset {
    /// The features on the random projection, `[n, PROJECTION_DIM]` row-major.
    projected: Vec<f32>,
    /// Each feature's distance to the nearest entry chosen so far.
    min_distance: Vec<f32>,
    chosen: Vec<usize>,
    /// The entry the next step takes: the farthest from those chosen.
    next: usize,
}

impl GreedyCoreset {
    /// Starts a coreset of `features` (`[n, d]`, n ≥ 1) at a random point drawn from `seed`;
    /// the projection is drawn from the same seed.
    pub fn new(features: &Tensor, seed: u64) -> candle_core::Result<GreedyCoreset> {
        let (n, d) = features.dims2()?;
        if n == 0 {
            candle_core::bail!("a coreset of no features");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let projection: Vec<f32> = (0..d * PROJECTION_DIM)
            .map(|_| if rng.gen_bool(0.5) { 1.0 } else { -1.0 } / (PROJECTION_DIM as f32).sqrt())
            .collect();
        let projection = Tensor::from_vec(projection, (d, PROJECTION_DIM), features.device())?;
        let projected: Vec<f32> = features.matmul(&projection)?.flatten_all()?.to_vec1()?;
        Ok(GreedyCoreset {
            projected,
            min_distance: vec![f32::INFINITY; n],
            chosen: Vec::new(),
            next: rng.gen_range(0..n),
        })
    }

    /// The features' count: no coreset grows past it.
    pub fn len_of_features(&self) -> usize {
        self.min_distance.len()
    }

    /// The entries chosen so far, in the order chosen.
    pub fn chosen(&self) -> &[usize] {
        &self.chosen
    }

    /// Chooses entries until there are `size` (every feature at most). `progress` counts them.
    pub fn grow_to(&mut self, size: usize, progress: &Phase) -> candle_core::Result<()> {
        let n = self.len_of_features();
        let size = size.min(n);
        if self.chosen.len() >= size {
            return Ok(());
        }
        if size == n {
            // Every feature is kept: no distance needs computing.
            let taken: std::collections::HashSet<usize> = self.chosen.iter().copied().collect();
            self.chosen.extend((0..n).filter(|i| !taken.contains(i)));
            return Ok(());
        }
        progress.set_length(size as u64);
        progress.set_position(self.chosen.len() as u64);
        let projected = &self.projected;
        let point = |i: usize| &projected[i * PROJECTION_DIM..(i + 1) * PROJECTION_DIM];
        while self.chosen.len() < size {
            progress.check_candle()?;
            progress.inc(1);
            self.chosen.push(self.next);
            let centre = point(self.next).to_vec();
            let mut farthest = (0, f32::NEG_INFINITY);
            for (i, best) in self.min_distance.iter_mut().enumerate() {
                let distance: f32 = point(i)
                    .iter()
                    .zip(&centre)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                if distance < *best {
                    *best = distance;
                }
                if *best > farthest.1 {
                    farthest = (i, *best);
                }
            }
            self.next = farthest.0;
        }
        Ok(())
    }
}

/// The rows `chosen` of `features` (`[n, d]`), in that order, contiguous: a coreset's bank.
fn rows(features: &Tensor, chosen: &[usize]) -> candle_core::Result<Tensor> {
    let index = Tensor::from_vec(
        chosen.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        chosen.len(),
        features.device(),
    )?;
    features.index_select(&index, 0)?.contiguous()
}

/// Queries per block of the CPU search: a block's `QUERY_BLOCK × m` cross products (512 KiB
/// against a 4,096-entry bank) stay in the core's L2 cache while their minimum is taken, where
/// the whole `q × m` matrix (4 MiB at input 128) went out to memory and was read back.
const QUERY_BLOCK: usize = 32;

/// At most `n` rows drawn at random (from `seed`) out of `parts` tensors of `rows_per_part`
/// rows each (`part(i)`, `[rows_per_part, d]`), as one `[≤ n, d]` tensor in their order. The
/// rows are drawn before anything is gathered, so the parts are never stacked whole: every
/// good patch of a training set in f32 runs to hundreds of MB. All rows when there are no
/// more than `n`.
pub fn sample_rows(
    parts: usize,
    rows_per_part: usize,
    n: usize,
    seed: u64,
    part: impl Fn(usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let rows = parts * rows_per_part;
    let mut keep: Vec<usize> = if rows > n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rand::seq::index::sample(&mut rng, rows, n).into_vec()
    } else {
        (0..rows).collect()
    };
    keep.sort_unstable();
    let mut gathered = Vec::new();
    for rows in keep.chunk_by(|a, b| a / rows_per_part == b / rows_per_part) {
        let chosen: Vec<u32> = rows.iter().map(|&r| (r % rows_per_part) as u32).collect();
        let from = part(rows[0] / rows_per_part)?;
        gathered.push(from.index_select(&Tensor::new(chosen.as_slice(), from.device())?, 0)?);
    }
    Tensor::cat(&gathered, 0)
}

/// A bank (`[m, d]`) laid out for [`nearest_distances`]: transposed (`[d, m]`, contiguous)
/// and its squared norms (`[1, m]`).
pub fn search_layout(bank: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    Ok((
        bank.t()?.contiguous()?,
        bank.sqr()?.sum_keepdim(1)?.t()?.contiguous()?,
    ))
}

/// The channels of `patches` (`[n, FEATURE_DIM]`) that `stages` keeps, contiguous (the patches
/// themselves for both maps). A channel the extractor zeroes adds nothing to a distance between
/// two of its patches, so a search over the rest gives the same distances at a fraction of the
/// cost: stride 8 alone is 40 of the 152 channels.
pub(crate) fn cut_to_channels(
    patches: &Tensor,
    stages: PatchStages,
) -> candle_core::Result<Tensor> {
    let channels = stages.channels();
    if channels.len() == patches.dim(1)? {
        return Ok(patches.clone());
    }
    patches
        .narrow(1, channels.start, channels.len())?
        .contiguous()
}

/// A bank laid out for [`nearest_distances`] in the channels one set of feature maps keeps
/// ([`cut_to_channels`]): what [`PatchCore`] searches, and each trial's bank
/// ([`input_size::painted_trials`], the orientation trial).
#[derive(Debug, Clone)]
pub(crate) struct ChannelSearch {
    stages: PatchStages,
    /// The bank cut and transposed, `[kept, m]`, contiguous.
    bank_t: Tensor,
    /// Its squared norms, `[1, m]`.
    bank_sq: Tensor,
}

impl ChannelSearch {
    /// `bank` (`[m, FEATURE_DIM]`) cut to the channels `stages` keeps.
    pub(crate) fn of(bank: &Tensor, stages: PatchStages) -> candle_core::Result<ChannelSearch> {
        let (bank_t, bank_sq) = search_layout(&cut_to_channels(bank, stages)?)?;
        Ok(ChannelSearch {
            stages,
            bank_t,
            bank_sq,
        })
    }

    /// The distance of each of `patches` (`[n, FEATURE_DIM]`) to its nearest bank entry.
    pub(crate) fn nearest(&self, patches: &Tensor) -> candle_core::Result<Vec<f32>> {
        let patches = cut_to_channels(patches, self.stages)?;
        nearest_distances(&patches, &self.bank_t, &self.bank_sq)
    }

    /// The distance of the farthest of `patches` to the bank: a trial's image score.
    pub(crate) fn farthest(&self, patches: &Tensor) -> candle_core::Result<f32> {
        Ok(self.nearest(patches)?.into_iter().fold(0.0, f32::max))
    }

    /// The channels searched.
    pub(crate) fn channels(&self) -> usize {
        self.bank_t.dims()[0]
    }
}

/// Nearest-neighbour distances of each row of `queries` (`[q, d]`) to a bank given transposed,
/// `bank_t` (`[d, m]`, contiguous: gemm then reads it as it lies, where the `[m, d]` bank was
/// repacked on every call), and the bank's squared norms `[1, m]`:
/// `|q|² + min_j(|b_j|² − 2 q·b_j)`. On the CPU the queries
/// are cut into blocks of [`QUERY_BLOCK`], one per task: each block's cross products are one
/// gemm call into the task's own buffer, whose row minima are taken while it is still in cache.
pub fn nearest_distances(
    queries: &Tensor,
    bank_t: &Tensor,
    bank_sq: &Tensor,
) -> candle_core::Result<Vec<f32>> {
    if !queries.device().is_cpu() {
        // On a GPU the q × m matrix stays there (4 MiB at input 128 against a 4096-entry
        // bank): only the q distances cross to the host.
        let nearest = bank_sq
            .broadcast_sub(&(queries.matmul(bank_t)? * 2.0)?)?
            .min(1)?;
        return (nearest + queries.sqr()?.sum(1)?)?
            .relu()?
            .sqrt()?
            .to_vec1();
    }
    let (_, d) = queries.dims2()?;
    let (bank_d, m) = bank_t.dims2()?;
    // An empty bank or empty features have no nearest neighbour (and would cut no blocks).
    if d == 0 || m == 0 || bank_d != d || bank_sq.elem_count() != m {
        candle_core::bail!(
            "nearest neighbours: queries of {d} values against a transposed bank of {:?} with \
             {} norms",
            bank_t.dims(),
            bank_sq.elem_count()
        );
    }
    with_cpu_values(queries, |queries| {
        with_cpu_values(bank_t, |bank_t| {
            with_cpu_values(bank_sq, |bank_sq| {
                Ok(queries
                    .par_chunks(QUERY_BLOCK * d)
                    .flat_map_iter(|block| nearest_of_block(block, d, bank_t, bank_sq))
                    .collect())
            })
        })
    })
}

/// The distances of one block of queries (`[rows, d]`, row-major) to the bank, transposed
/// (`[d, m]`, row-major).
fn nearest_of_block(block: &[f32], d: usize, bank_t: &[f32], bank_sq: &[f32]) -> Vec<f32> {
    let rows = block.len() / d;
    let m = bank_sq.len();
    CROSS_PRODUCTS.with_borrow_mut(|cross| {
        // Grown once, never cleared: gemm overwrites what it uses (zeroing 512 KiB per block
        // per frame was a pass over memory for nothing).
        if cross.len() < rows * m {
            cross.resize(rows * m, 0.0);
        }
        let cross = &mut cross[..rows * m];
        // SAFETY: `cross` holds `rows × m` values, row-major (row stride m); `block` holds
        // `rows × d` (row stride d); `bank_t` holds `d × m` (row stride m). gemm overwrites
        // `cross` with −2·block·bankᵀ without reading it.
        unsafe {
            gemm::gemm(
                rows,
                m,
                d,
                cross.as_mut_ptr(),
                1,
                m as isize,
                false,
                block.as_ptr(),
                1,
                d as isize,
                bank_t.as_ptr(),
                1,
                m as isize,
                0.0,
                -2.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        (cross.chunks_exact(m).zip(block.chunks_exact(d)))
            .map(|(row, query)| {
                let query_sq = sum_of(query, |v| v * v);
                (query_sq + row_minimum(row, bank_sq)).max(0.0).sqrt()
            })
            .collect()
    })
}

/// `min_j(row_j + bank_sq_j)`, in sixteen lanes so that it compiles to vector minima (a fold
/// with `f32::min` stays scalar: its NaN rules fix the order).
fn row_minimum(row: &[f32], bank_sq: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::INFINITY; LANES];
    let mut rows = row.chunks_exact(LANES);
    let mut norms = bank_sq.chunks_exact(LANES);
    for (r, n) in (&mut rows).zip(&mut norms) {
        for ((lane, &c), &b) in lanes.iter_mut().zip(r).zip(n) {
            let v = c + b;
            *lane = if v < *lane { v } else { *lane };
        }
    }
    let tail = (rows.remainder().iter().zip(norms.remainder())).map(|(c, b)| c + b);
    lanes.into_iter().chain(tail).fold(f32::INFINITY, f32::min)
}

thread_local! {
    /// Each thread's buffer of a query block's cross products, kept between frames.
    static CROSS_PRODUCTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a CPU tensor's f32 values: its own storage when it is contiguous f32 (no copy:
/// the bank is megabytes), else a contiguous f32 copy.
fn with_cpu_values<R>(
    tensor: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    {
        let (storage, layout) = tensor.storage_and_layout();
        if let candle_core::Storage::Cpu(storage) = &*storage
            && let Ok(values) = crate::models::contiguous_f32(storage, layout)
        {
            return f(values);
        }
    }
    let copy: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    f(&copy)
}

/// Shrinkage of the image covariance toward a scaled identity, as a share of its mean
/// variance: a line has fewer good images (often about a hundred) than the descriptor has
/// dimensions ([`DESCRIPTOR_DIM`], 608), so the sample covariance alone is singular.
/// Magnetic-tile image AUROC of the image score alone, with the 304-value descriptor of the
/// time: 0.901 at 0.003, 0.896 at 0.03, 0.890 at 0.1 (held-out). With today's descriptor the
/// combined score moves by 0.0012 or less between 0.01 and 0.3 (development protocol).
const COVARIANCE_SHRINKAGE: f64 = 0.03;

/// How unlike the good images a whole image is: the Mahalanobis distance of its descriptor
/// ([`ImageFeatures::descriptor`]) under one Gaussian fitted to the good training images.
///
/// It sees what the patch search cannot: a surface that is off as a whole (uneven grinding, a
/// texture change across the tile) while each of its patches still has a near neighbour in the
/// bank.
#[derive(Debug, Clone)]
pub struct ImageGaussian {
    mean: Vec<f32>,
    /// Inverse of the shrunk covariance, row-major `d × d`.
    precision: Vec<f32>,
}

impl ImageGaussian {
    /// Fits the Gaussian to good images' descriptors (at least two, all of one length).
    pub fn fit(descriptors: &[Vec<f32>]) -> candle_core::Result<ImageGaussian> {
        let n = descriptors.len();
        let d = descriptors.first().map_or(0, Vec::len);
        if n < 2 || d == 0 || descriptors.iter().any(|x| x.len() != d) {
            candle_core::bail!("an image Gaussian needs two or more descriptors of one length");
        }
        let mean: Vec<f64> = (0..d)
            .map(|j| descriptors.iter().map(|x| f64::from(x[j])).sum::<f64>() / n as f64)
            .collect();
        let centred =
            nalgebra::DMatrix::from_fn(n, d, |i, j| f64::from(descriptors[i][j]) - mean[j]);
        let mut covariance = centred.transpose() * &centred / (n - 1) as f64;
        let ridge = COVARIANCE_SHRINKAGE * covariance.trace() / d as f64;
        for j in 0..d {
            covariance[(j, j)] += ridge.max(f64::EPSILON);
        }
        let precision = nalgebra::Cholesky::new(covariance)
            .ok_or_else(|| {
                candle_core::Error::Msg("the image covariance is not positive definite".into())
            })?
            .inverse();
        Ok(ImageGaussian {
            mean: mean.iter().map(|&m| m as f32).collect(),
            // nalgebra is column-major; the matrix is symmetric, so the order is the same.
            precision: precision.iter().map(|&p| p as f32).collect(),
        })
    }

    /// Mahalanobis distance of one descriptor. A Gaussian fitted to shorter descriptors (a
    /// model trained before the descriptor grew) reads their length from the front.
    pub fn distance(&self, descriptor: &[f32]) -> f32 {
        let delta: Vec<f32> = descriptor
            .iter()
            .zip(&self.mean)
            .map(|(x, m)| x - m)
            .collect();
        let squared: f32 = self
            .precision
            .chunks_exact(self.mean.len().max(1))
            .zip(&delta)
            .map(|(row, di)| di * dot(row, &delta))
            .sum();
        squared.max(0.0).sqrt()
    }

    /// As tensors, for saving beside the bank: `[d]` and `[d, d]`.
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let d = self.mean.len();
        Ok((
            Tensor::from_slice(&self.mean, d, device)?,
            Tensor::from_slice(&self.precision, (d, d), device)?,
        ))
    }

    /// From [`ImageGaussian::to_tensors`]' output.
    pub fn from_tensors(mean: &Tensor, precision: &Tensor) -> candle_core::Result<ImageGaussian> {
        let d = mean.dim(0)?;
        if precision.dims() != [d, d] {
            candle_core::bail!("image precision is {:?}, want [{d}, {d}]", precision.dims());
        }
        Ok(ImageGaussian {
            mean: mean.to_dtype(DType::F32)?.to_vec1()?,
            precision: precision.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        })
    }
}

/// Synthetic defects painted on each good training image for the [`PatchHead`]
/// (magnetic-tile development AUROC, mean of three seeds: 0.891 with 2, 0.893 with 4).
pub const SYNTHETIC_DEFECTS_PER_GOOD: usize = 4;

/// A patch counts as defective for the head when the painted mask covers this share of its
/// cell: a thin scar crosses little of any cell.
pub const SYNTHETIC_MIN_SHARE: f64 = 0.03;

/// Optimisation steps of the head's logistic regression (full batch, Adam).
const HEAD_STEPS: usize = 300;
const HEAD_LEARNING_RATE: f64 = 0.05;
/// L2 penalty on the head's weights (on standardised features).
const HEAD_L2: f64 = 1e-3;

/// A linear classifier of patch features, trained to tell the good images' patches from
/// patches of defects painted on them ([`crate::learn::synthetic_defect`]).
///
/// The memory bank knows only what good looks like, so it scores every novelty alike, a
/// harmless texture variant as much as a blowhole. The head learns which directions of the
/// feature space a *defect* moves a patch along. The image's head score is the mean of its
/// highest few patch logits, as for the patch distances.
///
/// Measured on magnetic-tile when it was added (good-only training, input 128, bilinear
/// resampling, four seeds): on the training part's cross-validation, image AUROC 0.878 →
/// 0.893; on the held-out part, at the threshold chosen for a 5 % false-reject rate, the
/// escape rate falls from 0.44 to 0.33 (false rejects 0.072 → 0.085) and F1 rises from 0.69
/// to 0.77. It trades cracks for blowholes: held-out blowhole AUROC 0.91 → 0.94, crack 0.85 →
/// 0.76, so the held-out image AUROC falls from 0.919 to 0.910. With anti-aliased resampling
/// and the descriptor's extremes the trade is the same (escape rate 0.45 without the head,
/// 0.27 with it; AUROC 0.917 against 0.913): datasets/README.md has today's figures.
/// `linesight train anomaly --synthetic-defects 0` trains without it.
#[derive(Debug, Clone)]
pub struct PatchHead {
    /// `[FEATURE_DIM, 1]`, the training features' standardisation folded in.
    weight: Tensor,
    bias: f32,
}

impl PatchHead {
    /// Fits the head by class-balanced logistic regression on standardised features.
    /// `examples` pairs each image's patch features (`[patches, FEATURE_DIM]`) with one label
    /// per patch (`true`: painted). Needs patches of both kinds. `progress` counts the
    /// optimiser's steps.
    pub fn fit(
        examples: &[(&Tensor, &[bool])],
        progress: &Phase,
    ) -> candle_core::Result<PatchHead> {
        for (patches, labels) in examples {
            if patches.dim(0)? != labels.len() {
                candle_core::bail!(
                    "{} patch labels for {} patches",
                    labels.len(),
                    patches.dim(0)?
                );
            }
        }
        let normaliser = Normaliser::fit(examples.iter().map(|e| e.0))?;
        let standardised = normaliser.apply_patch_major(&Tensor::cat(
            &examples.iter().map(|e| e.0).collect::<Vec<_>>(),
            0,
        )?)?;
        let labels: Vec<bool> = examples.iter().flat_map(|e| e.1.iter().copied()).collect();
        let device = standardised.device();
        let positives = labels.iter().filter(|&&l| l).count();
        let negatives = labels.len() - positives;
        if positives == 0 || negatives == 0 {
            candle_core::bail!(
                "the patch head needs good and defective patches ({negatives} good, {positives} defective)"
            );
        }
        let target = Tensor::from_iter(labels.iter().map(|&l| f32::from(u8::from(l))), device)?
            .unsqueeze(1)?;
        // Each class weighs half the loss, however few painted patches there are.
        let (weight_pos, weight_neg) = (0.5 / positives as f32, 0.5 / negatives as f32);
        let sample_weight = Tensor::from_iter(
            labels
                .iter()
                .map(|&l| if l { weight_pos } else { weight_neg }),
            device,
        )?
        .unsqueeze(1)?;

        let weight = candle_core::Var::zeros((FEATURE_DIM, 1), DType::F32, device)?;
        let bias = candle_core::Var::zeros(1, DType::F32, device)?;
        let mut optimiser = candle_nn::AdamW::new(
            vec![weight.clone(), bias.clone()],
            candle_nn::ParamsAdamW {
                lr: HEAD_LEARNING_RATE,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        progress.set_length(HEAD_STEPS as u64);
        progress.set_position(0);
        for _ in 0..HEAD_STEPS {
            progress.check_candle()?;
            progress.inc(1);
            let logits = standardised
                .matmul(weight.as_tensor())?
                .broadcast_add(&bias)?;
            let cross_entropy = binary_cross_entropy_each(&logits, &target)?;
            let loss = ((cross_entropy * &sample_weight)?.sum_all()?
                + (weight.as_tensor().sqr()?.sum_all()? * (0.5 * HEAD_L2))?)?;
            optimiser.backward_step(&loss)?;
        }
        let (weight, bias) =
            normaliser.fold_into(&weight.as_tensor().t()?, &bias.as_tensor().unsqueeze(1)?)?;
        Ok(PatchHead {
            weight: weight.t()?.contiguous()?,
            bias: bias.flatten_all()?.to_vec1::<f32>()?[0],
        })
    }

    /// One logit per patch of `patches` (`[patches, FEATURE_DIM]`); above 0 leans defective.
    pub fn logits(&self, patches: &Tensor) -> candle_core::Result<Vec<f32>> {
        let logits: Vec<f32> = patches.matmul(&self.weight)?.flatten_all()?.to_vec1()?;
        Ok(logits.into_iter().map(|z| z + self.bias).collect())
    }

    /// The image's head score: the mean of its highest patch logits.
    pub fn score(&self, patches: &Tensor) -> candle_core::Result<f32> {
        Ok(top_mean(&self.logits(patches)?, TOP_PATCHES))
    }

    /// As tensors, for saving beside the bank: `[FEATURE_DIM]` and `[1]`.
    pub fn to_tensors(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.weight.flatten_all()?,
            Tensor::new(&[self.bias], self.weight.device())?,
        ))
    }

    /// From [`PatchHead::to_tensors`]' output.
    pub fn from_tensors(weight: &Tensor, bias: &Tensor) -> candle_core::Result<PatchHead> {
        if weight.dims() != [FEATURE_DIM] || bias.dims() != [1] {
            candle_core::bail!(
                "patch head is {:?} + {:?}, want [{FEATURE_DIM}] + [1]",
                weight.dims(),
                bias.dims()
            );
        }
        Ok(PatchHead {
            weight: weight.to_dtype(DType::F32)?.unsqueeze(1)?,
            bias: bias.to_dtype(DType::F32)?.to_vec1::<f32>()?[0],
        })
    }
}

/// Puts the patch score, the image score, the head score, the coarse image score and the
/// discriminator's on one scale, each as standard deviations above its mean on good images the
/// model did not learn from (the training run's out-of-fold scores, [`train`]); the
/// model's score is their sum (magnetic-tile image AUROC 0.913 at input 128 for patch +
/// image, against 0.891 and 0.896 for either alone; see [`PatchHead`] and [`CoarseImage`] for
/// what adding theirs does, and [`discriminator`] for the discriminator's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreScale {
    pub patch_mean: f32,
    pub patch_std: f32,
    pub image_mean: f32,
    pub image_std: f32,
    /// The [`PatchHead`]'s score on good images; absent in models trained before the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<GoodSpread>,
    /// The [`CoarseImage`] score on good images; absent in models without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coarse_image: Option<GoodSpread>,
    /// The [`NoiseDiscriminator`]'s score on good images; absent in models without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discriminator: Option<GoodSpread>,
    /// Scores the model computes but does not sum: those the training run found blind to
    /// this product's painted defects ([`score_choice`]); empty in models trained before the
    /// choice, which sum every score.
    #[serde(default, skip_serializing_if = "ScoreSet::is_empty")]
    pub left_out: ScoreSet,
}

/// Mean and standard deviation of a score on good images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoodSpread {
    pub mean: f32,
    pub std: f32,
}

impl GoodSpread {
    /// Of `values` (the standard deviation floored, so that a constant score still divides).
    fn of(values: &[f32]) -> GoodSpread {
        let (mean, std) = mean_std(values);
        GoodSpread { mean, std }
    }

    /// Standard deviations above the good mean.
    fn standardise(&self, value: f32) -> f32 {
        (value - self.mean) / self.std
    }
}

impl ScoreScale {
    /// From good images' raw scores; `None` with fewer than two or without image scores. The
    /// head's, the coarse image score's and the discriminator's spreads are kept when every
    /// image has that score.
    pub fn from_good_scores(scores: &[RawScores]) -> Option<ScoreScale> {
        let images: Vec<f32> = scores.iter().filter_map(|s| s.image).collect();
        if scores.len() < 2 || images.len() != scores.len() {
            return None;
        }
        let patches: Vec<f32> = scores.iter().map(|s| s.patch).collect();
        let heads: Vec<f32> = scores.iter().filter_map(|s| s.head).collect();
        let coarse: Vec<f32> = scores.iter().filter_map(|s| s.coarse_image).collect();
        let discriminator: Vec<f32> = scores.iter().filter_map(|s| s.discriminator).collect();
        let (patch, image) = (GoodSpread::of(&patches), GoodSpread::of(&images));
        Some(ScoreScale {
            patch_mean: patch.mean,
            patch_std: patch.std,
            image_mean: image.mean,
            image_std: image.std,
            head: (heads.len() == scores.len()).then(|| GoodSpread::of(&heads)),
            coarse_image: (coarse.len() == scores.len()).then(|| GoodSpread::of(&coarse)),
            discriminator: (discriminator.len() == scores.len())
                .then(|| GoodSpread::of(&discriminator)),
            left_out: ScoreSet::default(),
        })
    }

    /// Whether this scale knows `kind`'s spread (the patch and image scores' always).
    pub fn knows(&self, kind: ScoreKind) -> bool {
        match kind {
            ScoreKind::Patch | ScoreKind::Image => true,
            ScoreKind::Head => self.head.is_some(),
            ScoreKind::CoarseImage => self.coarse_image.is_some(),
            ScoreKind::Discriminator => self.discriminator.is_some(),
        }
    }

    /// The same scale summing only the scores in `counted` (of those it knows).
    pub fn counting_only(self, counted: &[ScoreKind]) -> ScoreScale {
        let left_out = (ScoreKind::ALL.into_iter())
            .filter(|&kind| self.knows(kind) && !counted.contains(&kind))
            .collect::<Vec<_>>();
        ScoreScale {
            left_out: ScoreSet::from(left_out),
            ..self
        }
    }

    /// The combined score: the sum of each score present and not left out, standardised. A
    /// head, coarse image or discriminator score counts only when this scale knows its spread.
    pub fn combine(&self, raw: RawScores) -> f32 {
        let patch = GoodSpread {
            mean: self.patch_mean,
            std: self.patch_std,
        };
        let image = GoodSpread {
            mean: self.image_mean,
            std: self.image_std,
        };
        let standardised = |kind: ScoreKind| -> Option<f32> {
            if self.left_out.contains(kind) {
                return None;
            }
            match kind {
                ScoreKind::Patch => Some(patch.standardise(raw.patch)),
                ScoreKind::Image => raw.image.map(|v| image.standardise(v)),
                ScoreKind::Head => self.head.zip(raw.head).map(|(s, v)| s.standardise(v)),
                ScoreKind::CoarseImage => {
                    (self.coarse_image.zip(raw.coarse_image)).map(|(s, v)| s.standardise(v))
                }
                ScoreKind::Discriminator => {
                    (self.discriminator.zip(raw.discriminator)).map(|(s, v)| s.standardise(v))
                }
            }
        };
        ScoreKind::ALL.iter().filter_map(|&k| standardised(k)).sum()
    }
}

/// Mean and standard deviation (floored, so that a constant score still divides).
fn mean_std(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f32;
    let mean = values.iter().sum::<f32>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, var.sqrt().max(1e-6 * mean.abs().max(1.0)))
}

/// One of the scores a model sums ([`RawScores`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ScoreKind {
    Patch,
    Image,
    Head,
    CoarseImage,
    Discriminator,
}

impl ScoreKind {
    /// Every score, in the order the card lists them.
    pub const ALL: [ScoreKind; 5] = [
        ScoreKind::Patch,
        ScoreKind::Image,
        ScoreKind::Head,
        ScoreKind::CoarseImage,
        ScoreKind::Discriminator,
    ];

    /// As the card writes it.
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Patch => "patch",
            ScoreKind::Image => "image",
            ScoreKind::Head => "head",
            ScoreKind::CoarseImage => "coarse_image",
            ScoreKind::Discriminator => "discriminator",
        }
    }

    /// This score of `raw`, where the image has it.
    pub fn of(self, raw: &RawScores) -> Option<f32> {
        match self {
            ScoreKind::Patch => Some(raw.patch),
            ScoreKind::Image => raw.image,
            ScoreKind::Head => raw.head,
            ScoreKind::CoarseImage => raw.coarse_image,
            ScoreKind::Discriminator => raw.discriminator,
        }
    }
}

/// A set of [`ScoreKind`]s, written as the list of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<ScoreKind>", into = "Vec<ScoreKind>")]
pub struct ScoreSet(u8);

impl ScoreSet {
    /// Whether `kind` is in the set.
    pub fn contains(self, kind: ScoreKind) -> bool {
        self.0 & ScoreSet::bit(kind) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    fn bit(kind: ScoreKind) -> u8 {
        1 << kind as u8
    }
}

impl From<Vec<ScoreKind>> for ScoreSet {
    fn from(kinds: Vec<ScoreKind>) -> ScoreSet {
        ScoreSet(kinds.into_iter().fold(0, |set, k| set | ScoreSet::bit(k)))
    }
}

impl From<ScoreSet> for Vec<ScoreKind> {
    fn from(set: ScoreSet) -> Vec<ScoreKind> {
        (ScoreKind::ALL.into_iter())
            .filter(|&k| set.contains(k))
            .collect()
    }
}

/// One image's scores before they are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawScores {
    /// Mean of the highest patch distances to the bank.
    pub patch: f32,
    /// Mahalanobis distance of the image descriptor; `None` for a model without an
    /// [`ImageGaussian`] (trained before it existed).
    pub image: Option<f32>,
    /// Mean of the highest [`PatchHead`] logits; `None` for a model without a head.
    pub head: Option<f32>,
    /// Mahalanobis distance of the image descriptor at the [`CoarseImage`] input size; `None`
    /// for a model without one.
    pub coarse_image: Option<f32>,
    /// Mean of the highest [`NoiseDiscriminator`] patch scores; `None` for a model without one.
    pub discriminator: Option<f32>,
}

/// A second look at the whole image, through the backbone at a smaller input: an
/// [`ImageGaussian`] of the image descriptor there.
///
/// At a coarser input every patch spans more of the surface, so the descriptor weighs an
/// image's large-scale make-up (uneven grinding, a crack's long course) rather than its fine
/// grain. Its distance adds to the main image score, not replaces it: magnetic-tile development
/// AUROC 0.915 → 0.922 with a 96 input beside the 128 one, better on all five folds, cracks
/// 0.762 → 0.787 and uneven 0.924 → 0.942 (the whole pipeline at 96 alone: 0.915; adding its
/// patch score or head too: 0.916 / 0.922, for twice the search). Held out, four seeds: AUROC
/// mean 0.913 → 0.926, escape rate at the threshold 0.27 → 0.24. It costs a second backbone
/// pass: the model's bench went from 5.7 to 8.5 ms on the 2-core development VM the speed
/// targets are set for. Flipped copies of the good images, in the bank or averaged at test
/// time, measured no gain (≤ 0.001).
#[derive(Debug, Clone)]
pub struct CoarseImage {
    features: PatchFeatures,
    gaussian: ImageGaussian,
}

impl CoarseImage {
    /// `gaussian` fitted to good images' descriptors from `features`.
    pub fn new(features: PatchFeatures, gaussian: ImageGaussian) -> CoarseImage {
        CoarseImage { features, gaussian }
    }

    /// The extractor at the coarse input size.
    pub fn extractor(&self) -> &PatchFeatures {
        &self.features
    }

    /// The Gaussian of good images' coarse descriptors.
    pub fn gaussian(&self) -> &ImageGaussian {
        &self.gaussian
    }

    /// The image's descriptor at the coarse input size.
    pub fn descriptor(&self, image: &GrayImage) -> candle_core::Result<Vec<f32>> {
        self.features.descriptor(image)
    }
}

/// A trained PatchCore model, with an image-level Gaussian beside the patch memory bank.
#[derive(Debug, Clone)]
pub struct PatchCore {
    features: PatchFeatures,
    /// `[m, FEATURE_DIM]`, as saved: the extractor's patches, zero in the channels of a map
    /// it leaves out.
    bank: Tensor,
    /// The same cut to the channels the extractor keeps: what the search reads. A stride-8
    /// model's search reads 40 channels where the saved bank has 152.
    search: ChannelSearch,
    image_gaussian: Option<ImageGaussian>,
    head: Option<PatchHead>,
    coarse_image: Option<CoarseImage>,
    discriminator: Option<NoiseDiscriminator>,
    scale: Option<ScoreScale>,
}

impl PatchCore {
    /// Builds the memory bank from the rows `chosen` of good images' patch features
    /// (`[n, FEATURE_DIM]`; a coreset chosen by [`greedy_coreset`] or [`bank_size::choose`])
    /// and the image Gaussian from their descriptors.
    pub fn fit(
        features: PatchFeatures,
        good_patches: &Tensor,
        chosen: &[usize],
        good_descriptors: &[Vec<f32>],
    ) -> candle_core::Result<PatchCore> {
        Ok(PatchCore {
            image_gaussian: Some(ImageGaussian::fit(good_descriptors)?),
            ..PatchCore::from_bank(features, rows(good_patches, chosen)?)?
        })
    }

    /// A model from a stored memory bank (patch scores only until
    /// [`PatchCore::with_image_gaussian`] and [`PatchCore::with_scale`]).
    pub fn from_bank(features: PatchFeatures, bank: Tensor) -> candle_core::Result<PatchCore> {
        // Cut to a map's channels, a bank of another width would be searched without a word.
        if bank.rank() != 2 || bank.dim(1)? != FEATURE_DIM {
            candle_core::bail!(
                "a memory bank of {:?}: the model's patches have {FEATURE_DIM} values",
                bank.dims()
            );
        }
        let bank = bank.to_dtype(DType::F32)?;
        let search = ChannelSearch::of(&bank, features.patch_stages())?;
        Ok(PatchCore {
            features,
            search,
            bank,
            image_gaussian: None,
            head: None,
            coarse_image: None,
            discriminator: None,
            scale: None,
        })
    }

    /// Adds the image-level Gaussian.
    pub fn with_image_gaussian(self, gaussian: ImageGaussian) -> PatchCore {
        PatchCore {
            image_gaussian: Some(gaussian),
            ..self
        }
    }

    /// Sets the patch head (`None`: no head score).
    pub fn with_head(self, head: Option<PatchHead>) -> PatchCore {
        PatchCore { head, ..self }
    }

    /// Sets the coarse image score (`None`: none).
    pub fn with_coarse_image(self, coarse_image: Option<CoarseImage>) -> PatchCore {
        PatchCore {
            coarse_image,
            ..self
        }
    }

    /// Sets the discriminator score (`None`: none).
    pub fn with_discriminator(self, discriminator: Option<NoiseDiscriminator>) -> PatchCore {
        PatchCore {
            discriminator,
            ..self
        }
    }

    /// Sets how the scores combine; without it the score is the raw patch score alone.
    pub fn with_scale(self, scale: Option<ScoreScale>) -> PatchCore {
        PatchCore { scale, ..self }
    }

    /// The same model with its backbones' 1×1 convolutions computing in `precision` on the
    /// CPU ([`crate::models::backbone::bf16::Precision`]).
    pub fn with_precision(self, precision: crate::models::backbone::bf16::Precision) -> PatchCore {
        PatchCore {
            features: self.features.with_precision(precision),
            coarse_image: (self.coarse_image).map(|coarse| CoarseImage {
                features: coarse.features.with_precision(precision),
                gaussian: coarse.gaussian,
            }),
            ..self
        }
    }

    /// The memory bank, for saving.
    pub fn bank(&self) -> &Tensor {
        &self.bank
    }

    /// The distance of each of `patches` (`[n, FEATURE_DIM]`, from this model's extractor) to
    /// its nearest bank entry, searched in the channels the extractor keeps.
    pub fn nearest(&self, patches: &Tensor) -> candle_core::Result<Vec<f32>> {
        self.search.nearest(patches)
    }

    /// The channels [`PatchCore::nearest`] searches: 152 for both maps, 40 for stride 8 alone,
    /// 112 for stride 16 alone.
    pub fn searched_channels(&self) -> usize {
        self.search.channels()
    }

    /// How the scores combine, for saving.
    pub fn scale(&self) -> Option<ScoreScale> {
        self.scale
    }

    /// The image Gaussian, for saving.
    pub fn image_gaussian(&self) -> Option<&ImageGaussian> {
        self.image_gaussian.as_ref()
    }

    /// The patch head, for saving.
    pub fn head(&self) -> Option<&PatchHead> {
        self.head.as_ref()
    }

    /// The coarse image score, for saving.
    pub fn coarse_image(&self) -> Option<&CoarseImage> {
        self.coarse_image.as_ref()
    }

    /// The discriminator, for saving.
    pub fn discriminator(&self) -> Option<&NoiseDiscriminator> {
        self.discriminator.as_ref()
    }

    /// Every score of an image, and the patch-distance heat map.
    pub fn raw_scores(&self, image: &GrayImage) -> candle_core::Result<(RawScores, HeatMap)> {
        let mut scored = self.raw_scores_many(&[image])?;
        scored
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no scores for the image".into()))
    }

    /// [`PatchCore::raw_scores`] of several images side by side: one pass through the
    /// backbone for them all (and one through the coarse one), one nearest-neighbour search
    /// over all their patches. On a GPU a pass is bound by its kernel launches, so a batch
    /// costs little more than one image; the scores are each image's own, whatever shares its
    /// batch.
    pub fn raw_scores_many(
        &self,
        images: &[&GrayImage],
    ) -> candle_core::Result<Vec<(RawScores, HeatMap)>> {
        on_worker_thread(|| {
            let coarse = (self.coarse_image.as_ref())
                .map(|coarse| coarse.features.descriptors(images))
                .transpose()?;
            let batch = self.features.extract_many(images)?;
            let descriptors: Vec<&[f32]> = batch.descriptors.iter().map(Vec::as_slice).collect();
            let coarse: Option<Vec<&[f32]>> =
                (coarse.as_ref()).map(|all| all.iter().map(Vec::as_slice).collect());
            self.scores_of_patches(&batch.patches, &descriptors, coarse.as_deref())
        })
    }

    /// [`PatchCore::raw_scores`] of features already extracted (by this model's extractor,
    /// and the coarse descriptor by its [`CoarseImage`]'s, if it has one).
    pub fn raw_scores_of(
        &self,
        features: &ImageFeatures,
        coarse_descriptor: Option<&[f32]>,
    ) -> candle_core::Result<(RawScores, HeatMap)> {
        let coarse = coarse_descriptor.map(|descriptor| [descriptor]);
        let mut scored = self.scores_of_patches(
            &features.patches,
            &[features.descriptor.as_slice()],
            coarse.as_ref().map(|c| c.as_slice()),
        )?;
        scored
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no scores for the image".into()))
    }

    /// The scores of images whose patches (`[images × patches, FEATURE_DIM]`, image after
    /// image) and descriptors are given, one image per descriptor.
    fn scores_of_patches(
        &self,
        patches: &Tensor,
        descriptors: &[&[f32]],
        coarse_descriptors: Option<&[&[f32]]>,
    ) -> candle_core::Result<Vec<(RawScores, HeatMap)>> {
        let images = descriptors.len();
        let values = self.nearest(patches)?;
        if images == 0 || !values.len().is_multiple_of(images) {
            candle_core::bail!("{} patch distances for {images} images", values.len());
        }
        let coarse_descriptors = match (&self.coarse_image, coarse_descriptors) {
            (Some(_), Some(all)) if all.len() == images => Some(all),
            (Some(_), Some(all)) => {
                candle_core::bail!("{} coarse image descriptors for {images} images", all.len())
            }
            // Leaving the score out would sum fewer terms than the threshold was set on.
            (Some(_), None) => candle_core::bail!("coarse image descriptor missing"),
            (None, _) => None,
        };
        let per_image = values.len() / images;
        let logits = (self.head.as_ref())
            .map(|head| head.logits(patches))
            .transpose()?;
        let judged = (self.discriminator.as_ref())
            .map(|discriminator| discriminator.patch_scores(patches))
            .transpose()?;
        let side = (per_image as f64).sqrt() as u32;
        // Each image's Gaussian distances are two 608 × 608 products: side by side for a batch.
        Ok((values.par_chunks_exact(per_image).enumerate())
            .map(|(i, values)| {
                let scores = RawScores {
                    patch: top_mean(values, TOP_PATCHES),
                    image: (self.image_gaussian.as_ref()).map(|g| g.distance(descriptors[i])),
                    head: (logits.as_ref())
                        .map(|all| top_mean(&all[i * per_image..][..per_image], TOP_PATCHES)),
                    coarse_image: (self.coarse_image.as_ref())
                        .zip(coarse_descriptors)
                        .map(|(coarse, all)| coarse.gaussian.distance(all[i])),
                    discriminator: (judged.as_ref())
                        .map(|all| top_mean(&all[i * per_image..][..per_image], TOP_PATCHES)),
                };
                let heat_map = HeatMap {
                    width: side,
                    height: side,
                    values: values.to_vec(),
                };
                (scores, heat_map)
            })
            .collect())
    }

    /// Image score (higher is more anomalous: the combined score, or the patch score for a
    /// model without a scale) and the patch-distance heat map.
    pub fn score(&self, image: &GrayImage) -> candle_core::Result<(f32, HeatMap)> {
        let (raw, heat_map) = self.raw_scores(image)?;
        Ok((self.combined(raw), heat_map))
    }

    /// The score of already computed raw scores.
    pub fn combined(&self, raw: RawScores) -> f32 {
        match self.scale {
            Some(scale) => scale.combine(raw),
            None => raw.patch,
        }
    }

    /// Patch features of an image (for training).
    pub fn extractor(&self) -> &PatchFeatures {
        &self.features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_mean_by_hand() {
        assert_eq!(top_mean(&[1.0, 5.0, 3.0, 9.0, 2.0], 2), 7.0);
        assert_eq!(top_mean(&[1.0, 5.0, 3.0, 9.0, 2.0], 10), 4.0);
        assert_eq!(top_mean(&[], 3), 0.0);
    }

    #[test]
    fn nearest_distances_by_hand() {
        let device = Device::Cpu;
        let bank = Tensor::new(&[[0f32, 0.0], [3.0, 4.0]], &device).expect("bank");
        let bank_sq = bank
            .sqr()
            .and_then(|b| b.sum_keepdim(1))
            .and_then(|b| b.t())
            .expect("sq");
        let queries = Tensor::new(&[[0f32, 1.0], [3.0, 5.0], [6.0, 8.0]], &device).expect("q");
        let bank_t = bank.t().and_then(|b| b.contiguous()).expect("bank_t");
        let d = nearest_distances(&queries, &bank_t, &bank_sq).expect("distances");
        for (got, want) in d.iter().zip([1.0, 1.0, 5.0]) {
            assert!((got - want).abs() < 1e-4, "{d:?}");
        }
    }

    /// The blocked search against brute force, with sizes that fill no block or lane evenly
    /// and a non-contiguous query tensor.
    #[test]
    fn nearest_distances_match_brute_force() {
        let device = Device::Cpu;
        let (q, m, d) = (QUERY_BLOCK * 2 + 7, 37, 19);
        let queries = Tensor::randn(0f32, 1f32, (d, q), &device)
            .and_then(|t| t.t())
            .expect("queries");
        let bank = Tensor::randn(0f32, 1f32, (m, d), &device).expect("bank");
        let bank_sq = bank
            .sqr()
            .and_then(|b| b.sum_keepdim(1))
            .and_then(|b| b.t())
            .expect("sq");
        let bank_t = bank.t().and_then(|b| b.contiguous()).expect("bank_t");
        let got = nearest_distances(&queries, &bank_t, &bank_sq).expect("distances");
        let queries: Vec<Vec<f32>> = queries.to_vec2().expect("q");
        let bank: Vec<Vec<f32>> = bank.to_vec2().expect("b");
        assert_eq!(got.len(), q);
        for (query, got) in queries.iter().zip(&got) {
            let want = bank
                .iter()
                .map(|b| {
                    b.iter()
                        .zip(query)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min)
                .sqrt();
            assert!((got - want).abs() < 1e-3 * want.max(1.0), "{got} vs {want}");
        }
        let wrong = Tensor::zeros((3, d + 1), DType::F32, &device).expect("wrong");
        assert!(
            nearest_distances(
                &wrong,
                &Tensor::zeros((m, d), DType::F32, &device).expect("b"),
                &bank_sq
            )
            .is_err()
        );
    }

    #[test]
    fn image_gaussian_measures_mahalanobis_distance() {
        // Two independent dimensions, variance 4 and 1/4 (ddof 1): shrinkage 3 % of the
        // mean variance (2.125) is added to each.
        let descriptors: Vec<Vec<f32>> = [[-2.0, 0.5], [2.0, -0.5], [-2.0, -0.5], [2.0, 0.5]]
            .iter()
            .map(|r| r.to_vec())
            .collect();
        let gaussian = ImageGaussian::fit(&descriptors).expect("fit");
        let ridge = 0.03 * (16.0 / 3.0 + 1.0 / 3.0) / 2.0;
        let want = (1.0f32 / (16.0 / 3.0 + ridge)).sqrt();
        let got = gaussian.distance(&[1.0, 0.0]);
        assert!((got - want).abs() < 1e-4, "{got} != {want}");
        // A step along the narrow dimension counts for more than the same step along the wide one.
        assert!(gaussian.distance(&[0.0, 1.0]) > 3.0 * gaussian.distance(&[1.0, 0.0]));
        let (mean, precision) = gaussian.to_tensors(&Device::Cpu).expect("tensors");
        let again = ImageGaussian::from_tensors(&mean, &precision).expect("from tensors");
        assert_eq!(again.distance(&[1.0, 0.0]), got);
        assert!(ImageGaussian::fit(&descriptors[..1]).is_err());
    }

    #[test]
    fn score_scale_puts_every_score_in_good_standard_deviations() {
        let raw = |patch, image, head| RawScores {
            patch,
            image: Some(image),
            head,
            coarse_image: None,
            discriminator: None,
        };
        let good = [raw(1.0, 10.0, Some(-3.0)), raw(3.0, 30.0, Some(-1.0))];
        let scale = ScoreScale::from_good_scores(&good).expect("scale");
        assert_eq!(scale.combine(raw(2.0, 20.0, Some(-2.0))), 0.0);
        assert_eq!(scale.combine(raw(4.0, 20.0, Some(-2.0))), 2.0);
        assert_eq!(scale.combine(raw(2.0, 40.0, Some(-2.0))), 2.0);
        assert_eq!(scale.combine(raw(2.0, 20.0, Some(0.0))), 2.0);
        assert!(ScoreScale::from_good_scores(&good[..1]).is_none());
        // Without head scores (a model without a head) the scale has no head spread, and a
        // head score it is given anyway does not count.
        let headless = [raw(1.0, 10.0, None), raw(3.0, 30.0, None)];
        let headless_scale = ScoreScale::from_good_scores(&headless).expect("scale");
        assert_eq!(headless_scale.head, None);
        assert_eq!(headless_scale.coarse_image, None);
        assert_eq!(headless_scale.combine(raw(4.0, 20.0, Some(100.0))), 2.0);
        // A card written before the head reads back without it.
        let json = r#"{"patch_mean":1.0,"patch_std":2.0,"image_mean":3.0,"image_std":4.0}"#;
        let old: ScoreScale = serde_json::from_str(json).expect("old scale");
        assert_eq!(old.head, None);
        assert_eq!(serde_json::to_string(&old).expect("json"), json);
        // The coarse image score counts in good standard deviations too, once its spread is
        // known.
        let coarse = |patch, coarse| RawScores {
            coarse_image: Some(coarse),
            ..raw(patch, 20.0, None)
        };
        let scale =
            ScoreScale::from_good_scores(&[coarse(1.0, 5.0), coarse(3.0, 7.0)]).expect("scale");
        assert_eq!(
            scale.coarse_image,
            Some(GoodSpread {
                mean: 6.0,
                std: 1.0
            })
        );
        assert_eq!(scale.combine(coarse(2.0, 9.0)), 3.0);
        // Without it (an older model) a coarse score does not count.
        assert_eq!(headless_scale.combine(coarse(2.0, 9.0)), 0.0);
        // It is saved in the card and read back.
        let json = serde_json::to_string(&scale).expect("json");
        assert!(json.contains("coarse_image"), "{json}");
        assert_eq!(
            serde_json::from_str::<ScoreScale>(&json).expect("scale"),
            scale
        );
        assert!(
            !json.contains("left_out"),
            "nothing left out, nothing written: {json}"
        );
    }

    #[test]
    fn a_score_left_out_is_computed_but_not_summed() {
        let raw = |patch, image, coarse| RawScores {
            patch,
            image: Some(image),
            head: None,
            coarse_image: Some(coarse),
            discriminator: None,
        };
        let good = [raw(1.0, 10.0, 5.0), raw(3.0, 30.0, 7.0)];
        let scale = ScoreScale::from_good_scores(&good).expect("scale");
        assert_eq!(scale.combine(raw(4.0, 40.0, 9.0)), 2.0 + 2.0 + 3.0);
        let patch_only = scale.counting_only(&[ScoreKind::Patch]);
        assert_eq!(patch_only.combine(raw(4.0, 40.0, 9.0)), 2.0);
        assert!(patch_only.left_out.contains(ScoreKind::Image));
        assert!(patch_only.left_out.contains(ScoreKind::CoarseImage));
        assert!(!patch_only.left_out.contains(ScoreKind::Patch));
        // A score the scale has no spread for (no head here) is not listed as left out.
        assert!(!patch_only.left_out.contains(ScoreKind::Head));
        // The card lists what is left out, and reads it back.
        let json = serde_json::to_string(&patch_only).expect("json");
        assert!(
            json.contains(r#""left_out":["image","coarse_image"]"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<ScoreScale>(&json).expect("scale"),
            patch_only
        );
        // A score the card names that this build does not know is an error, not ignored.
        let unknown = json.replace("coarse_image\"]", "texture\"]");
        assert!(serde_json::from_str::<ScoreScale>(&unknown).is_err());
    }

    #[test]
    fn the_discriminator_score_counts_in_good_standard_deviations_unless_left_out() {
        let raw = |patch, judged| RawScores {
            patch,
            image: Some(20.0),
            head: None,
            coarse_image: None,
            discriminator: Some(judged),
        };
        let scale = ScoreScale::from_good_scores(&[raw(1.0, -2.0), raw(3.0, 0.0)]).expect("scale");
        assert_eq!(
            scale.discriminator,
            Some(GoodSpread {
                mean: -1.0,
                std: 1.0
            })
        );
        assert!(scale.knows(ScoreKind::Discriminator));
        assert_eq!(scale.combine(raw(2.0, 2.0)), 3.0);
        let without = scale.counting_only(&[ScoreKind::Patch, ScoreKind::Image]);
        assert_eq!(without.combine(raw(2.0, 2.0)), 0.0);
        let json = serde_json::to_string(&without).expect("json");
        assert!(json.contains(r#""left_out":["discriminator"]"#), "{json}");
        assert_eq!(
            serde_json::from_str::<ScoreScale>(&json).expect("scale"),
            without
        );
        // A model without one: its scale has no spread, and a score given anyway is not summed.
        let mut plain = raw(1.0, 0.0);
        plain.discriminator = None;
        let older = ScoreScale::from_good_scores(&[
            plain,
            RawScores {
                patch: 3.0,
                ..plain
            },
        ])
        .expect("scale");
        assert!(!older.knows(ScoreKind::Discriminator));
        assert_eq!(older.combine(raw(2.0, 100.0)), 0.0);
    }

    /// Patch features where "defective" patches are pushed along one direction, on top of a
    /// large offset and uneven scales the head's standardisation must undo.
    fn head_examples(device: &Device) -> (Tensor, Vec<bool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let labels: Vec<bool> = (0..400).map(|i| i % 8 == 0).collect();
        let rows: Vec<f32> = labels
            .iter()
            .flat_map(|&defective| {
                let noise: Vec<f32> = (0..FEATURE_DIM)
                    .map(|j| 10.0 + (j % 7) as f32 * rng.gen_range(-1.0f32..1.0))
                    .collect();
                noise.into_iter().enumerate().map(
                    move |(j, v)| {
                        if defective && j == 3 { v + 8.0 } else { v }
                    },
                )
            })
            .collect();
        (
            Tensor::from_vec(rows, (labels.len(), FEATURE_DIM), device).expect("features"),
            labels,
        )
    }

    #[test]
    fn patch_head_separates_painted_patches_and_survives_saving() {
        let device = Device::Cpu;
        let (features, labels) = head_examples(&device);
        let steps = Phase::hidden();
        let head = PatchHead::fit(&[(&features, &labels[..])], &steps).expect("fit");
        // The bar counts every optimiser step.
        assert_eq!(
            (steps.position(), steps.length()),
            (HEAD_STEPS as u64, Some(HEAD_STEPS as u64))
        );
        let logits = head.logits(&features).expect("logits");
        let auroc = crate::learn::eval::auroc(&logits, &labels).expect("both classes");
        assert!(auroc > 0.99, "head AUROC {auroc}");
        // The folded standardisation puts the decision boundary between the classes.
        let mean_of = |want: bool| {
            let v: Vec<f32> = (logits.iter().zip(&labels))
                .filter(|(_, l)| **l == want)
                .map(|(z, _)| *z)
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean_of(true) > 0.0 && mean_of(false) < 0.0);
        let (weight, bias) = head.to_tensors().expect("tensors");
        let again = PatchHead::from_tensors(&weight, &bias).expect("from tensors");
        assert_eq!(again.logits(&features).expect("logits"), logits);
        assert!(PatchHead::from_tensors(&bias, &weight).is_err());
        // One class alone, or labels that do not match the patches, are refused.
        let hidden = Phase::hidden();
        assert!(PatchHead::fit(&[(&features, &vec![false; 400][..])], &hidden).is_err());
        assert!(PatchHead::fit(&[(&features, &labels[..10])], &hidden).is_err());
    }

    #[test]
    fn coreset_picks_spread_out_points() {
        let device = Device::Cpu;
        // Three tight clusters: a 3-point coreset takes one point from each.
        let mut rows = Vec::new();
        for centre in [0f32, 100.0, 200.0] {
            for k in 0..5 {
                rows.extend([centre + k as f32 * 0.01, centre]);
            }
        }
        let features = Tensor::from_vec(rows, (15, 2), &device).expect("features");
        let picks = Phase::hidden();
        let mut clusters: Vec<usize> = greedy_coreset(&features, 3, 1, &picks)
            .expect("coreset")
            .iter()
            .map(|i| i / 5)
            .collect();
        clusters.sort();
        assert_eq!(clusters, [0, 1, 2]);
        // The bar counts the entries chosen.
        assert_eq!((picks.position(), picks.length()), (3, Some(3)));
    }

    #[test]
    fn image_gaussian_reads_a_shorter_descriptor_from_the_front() {
        // A model trained on the first two values of each descriptor scores a longer one by
        // those two alone.
        let old =
            ImageGaussian::fit(&[vec![0.0, 1.0], vec![2.0, 1.5], vec![1.0, 0.0]]).expect("fits");
        let long = [1.5, 2.0, 100.0, -100.0];
        assert_eq!(old.distance(&long), old.distance(&long[..2]));
        assert!(old.distance(&long) > 0.0);
    }
}
