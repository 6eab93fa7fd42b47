//! The cold-start anomaly model, learnt from good parts only (PatchCore).
//!
//! Each image is resized to the model's input square (128×128 unless trained otherwise) and
//! passed through the pretrained EfficientNet-Lite0; the stride-8 (40 ch) and upsampled
//! stride-16 (112 ch) maps are concatenated, giving one 152-dimensional feature per 8×8 patch,
//! centred on the image's mean patch. Training
//! keeps a *coreset* of the good patches: greedy farthest-point selection (on a seeded random
//! projection, for speed), so the memory bank covers every kind of normal surface with few
//! entries. A patch's anomaly score is its distance to the nearest bank entry; the image score is
//! the mean of the highest few patch scores, and the patch scores form the heat map. Beside it,
//! an [`ImageGaussian`] scores the image as a whole; [`ScoreScale`] sums the two.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::inspect::backbone::{EfficientNetLite0, FEATURE_CHANNELS, Features};
use crate::inspect::on_worker_thread;
use crate::part::{GrayImage, HeatMap};

/// Side of the square the backbone sees (unless a model chooses another, a multiple of 16).
pub const INPUT_SIZE: usize = 256;

/// Checks a model's input size: the backbone halves it four times, so it must be a positive
/// multiple of 16.
pub fn check_input_size(size: usize) -> Result<(), String> {
    if size == 0 || !size.is_multiple_of(16) {
        return Err(format!("input size {size} is not a multiple of 16"));
    }
    Ok(())
}

/// Feature dimension per patch.
pub const FEATURE_DIM: usize = FEATURE_CHANNELS.0 + FEATURE_CHANNELS.1;

/// The image score is the mean of this many highest patch scores: steadier than the single
/// highest (magnetic-tile image AUROC 0.86 against 0.85).
const TOP_PATCHES: usize = 5;

/// Dimension of the random projection used only to pick the coreset.
const PROJECTION_DIM: usize = 64;

/// What the anomaly model sees of one image.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// `[patches, FEATURE_DIM]`, patches row-major over a `(input_size/8)²` grid, each relative
    /// to the image's mean patch.
    pub patches: Tensor,
    /// The image as a whole: per channel, the mean and the standard deviation of its raw
    /// (uncentred) patch features (`2 × FEATURE_DIM`).
    pub descriptor: Vec<f32>,
}

/// Turns images into patch features.
#[derive(Debug, Clone)]
pub struct PatchFeatures {
    backbone: EfficientNetLite0,
    device: Device,
    input_size: usize,
}

impl PatchFeatures {
    /// Wraps a loaded backbone.
    pub fn new(backbone: EfficientNetLite0, device: Device) -> PatchFeatures {
        PatchFeatures {
            backbone,
            device,
            input_size: INPUT_SIZE,
        }
    }

    /// The same extractor on `size`×`size` inputs (a multiple of 16): the backbone's cost
    /// grows with the square of it.
    pub fn with_input_size(self, size: usize) -> PatchFeatures {
        PatchFeatures {
            input_size: size,
            ..self
        }
    }

    /// Side of the square images are resized to.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The patch features of one image and its image descriptor.
    pub fn extract(&self, image: &GrayImage) -> candle_core::Result<ImageFeatures> {
        on_worker_thread(|| self.extract_here(image))
    }

    /// [`PatchFeatures::extract`] on the calling thread.
    fn extract_here(&self, image: &GrayImage) -> candle_core::Result<ImageFeatures> {
        // PatchCore's 3×3 local average is left out: it blurs away the small blowholes and
        // cracks (magnetic-tile image AUROC 0.81 with it, 0.86 without).
        // Each patch is taken relative to its own image's mean: lighting differs from part to
        // part, and a defect is a patch unlike the rest of its own surface (magnetic-tile image
        // AUROC 0.876 centred, 0.861 not).
        if !self.device.is_cpu() {
            let maps = self.maps(image)?;
            let (_, _, h, w) = maps.dims4()?;
            let patches = maps.reshape((FEATURE_DIM, h * w))?.t()?.contiguous()?;
            let mean = patches.mean_keepdim(0)?;
            let centred = patches.broadcast_sub(&mean)?;
            let std = centred.sqr()?.mean_keepdim(0)?.sqrt()?;
            let descriptor = Tensor::cat(&[&mean, &std], 1)?.flatten_all()?.to_vec1()?;
            return Ok(ImageFeatures {
                patches: centred,
                descriptor,
            });
        }
        let (maps, h, w) = self.stacked_maps(image)?;
        let n = h * w;
        let means: Vec<f32> = maps
            .chunks_exact(n)
            .map(|plane| plane.iter().sum::<f32>() / n as f32)
            .collect();
        let stds = maps.chunks_exact(n).zip(&means).map(|(plane, mean)| {
            (plane.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32).sqrt()
        });
        let descriptor: Vec<f32> = means.iter().copied().chain(stds).collect();
        // Patch-major writes, channel-strided reads: the 152 source lines a patch reads stay
        // in L1 for the next fifteen patches.
        let mut patches = Vec::with_capacity(n * FEATURE_DIM);
        for patch in 0..n {
            patches.extend(
                means
                    .iter()
                    .enumerate()
                    .map(|(channel, mean)| maps[channel * n + patch] - mean),
            );
        }
        Ok(ImageFeatures {
            patches: Tensor::from_vec(patches, (n, FEATURE_DIM), &self.device)?,
            descriptor,
        })
    }

    /// The raw feature maps `[1, FEATURE_DIM, size/8, size/8]`: stride-8 features and the
    /// upsampled stride-16 ones.
    pub fn maps(&self, image: &GrayImage) -> candle_core::Result<Tensor> {
        on_worker_thread(|| self.maps_here(image))
    }

    /// [`PatchFeatures::maps`] on the calling thread.
    fn maps_here(&self, image: &GrayImage) -> candle_core::Result<Tensor> {
        if !self.device.is_cpu() {
            let features = self.backbone_features(image)?;
            let (_, _, h, w) = features.stride8.dims4()?;
            let upsampled = features.stride16.upsample_nearest2d(h, w)?;
            return Tensor::cat(&[&features.stride8, &upsampled], 1);
        }
        let (maps, h, w) = self.stacked_maps(image)?;
        Tensor::from_vec(maps, (1, FEATURE_DIM, h, w), &self.device)
    }

    fn backbone_features(&self, image: &GrayImage) -> candle_core::Result<Features> {
        let input = backbone_input(image, self.input_size, &self.device)?;
        self.backbone.features(&input)
    }

    /// [`PatchFeatures::maps`] as a plain channel-major vector and its `(h, w)`, built in one
    /// pass (candle's upsample and concatenation take three, and a millisecond).
    fn stacked_maps(&self, image: &GrayImage) -> candle_core::Result<(Vec<f32>, usize, usize)> {
        let features = self.backbone_features(image)?;
        stack_upsampled(&features.stride8, &features.stride16)
    }
}

/// `fine` (`[1, c, h, w]`) followed by `coarse` (`[1, c', h', w']`) upsampled to `h × w`
/// (nearest neighbour, as candle's `upsample_nearest2d`), as one channel-major vector.
fn stack_upsampled(
    fine: &Tensor,
    coarse: &Tensor,
) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    let (_, _, h, w) = fine.dims4()?;
    let (_, c_coarse, hc, wc) = coarse.dims4()?;
    let mut maps = fine.flatten_all()?.to_vec1::<f32>()?;
    let coarse = coarse.flatten_all()?.to_vec1::<f32>()?;
    maps.reserve(c_coarse * h * w);
    for plane in coarse.chunks_exact(hc * wc) {
        for y in 0..h {
            let row = &plane[(y * hc / h) * wc..][..wc];
            maps.extend((0..w).map(|x| row[x * wc / w]));
        }
    }
    Ok((maps, h, w))
}

/// A grey image resized to a `size` square as one plane (the backbone treats it as three
/// equal channels), scaled `(x−127)/128`. (Keeping the aspect ratio measured worse on magnetic-tile: image
/// AUROC 0.76 against 0.81 squared.)
pub fn backbone_input(
    image: &GrayImage,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let resized = resize_bilinear(image, size, size);
    let plane: Vec<f32> = resized.iter().map(|&p| (p - 127.0) / 128.0).collect();
    Tensor::from_vec(plane, (1, 1, size, size), device)
}

/// Bilinear resize to `w`×`h` (pixel centres aligned), as f32.
pub fn resize_bilinear(image: &GrayImage, w: usize, h: usize) -> Vec<f32> {
    let width = image.width as usize;
    bilinear(
        |x, y| f32::from(image.pixels[y * width + x]),
        width,
        image.height as usize,
        w,
        h,
    )
}

/// Bilinear resampling of a `sw`×`sh` grid, given by `sample(x, y)`, to `w`×`h` (pixel
/// centres aligned).
pub fn bilinear(
    sample: impl Fn(usize, usize) -> f32,
    sw: usize,
    sh: usize,
    w: usize,
    h: usize,
) -> Vec<f32> {
    // Source index pairs and weights along one axis, computed once per column and per row.
    let taps = |src: usize, dst: usize| -> Vec<(usize, usize, f32)> {
        (0..dst)
            .map(|i| {
                let f =
                    ((i as f32 + 0.5) * src as f32 / dst as f32 - 0.5).clamp(0.0, (src - 1) as f32);
                let i0 = f.floor() as usize;
                (i0, (i0 + 1).min(src - 1), f - f.floor())
            })
            .collect()
    };
    let (columns, rows) = (taps(sw, w), taps(sh, h));
    let mut out = Vec::with_capacity(w * h);
    for &(y0, y1, ty) in &rows {
        for &(x0, x1, tx) in &columns {
            let top = sample(x0, y0) * (1.0 - tx) + sample(x1, y0) * tx;
            let bottom = sample(x0, y1) * (1.0 - tx) + sample(x1, y1) * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

/// Mean of the `k` highest values (all of them when there are fewer).
fn top_mean(values: &[f32], k: usize) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top = &sorted[..k.min(sorted.len())];
    top.iter().sum::<f32>() / top.len().max(1) as f32
}

/// Indices of a greedy farthest-point coreset of `features` (`[n, d]`), `size` entries,
/// started from a seeded random point and measured on a seeded random projection.
pub fn greedy_coreset(
    features: &Tensor,
    size: usize,
    seed: u64,
) -> candle_core::Result<Vec<usize>> {
    let (n, d) = features.dims2()?;
    if size >= n {
        return Ok((0..n).collect());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let projection: Vec<f32> = (0..d * PROJECTION_DIM)
        .map(|_| if rng.gen_bool(0.5) { 1.0 } else { -1.0 } / (PROJECTION_DIM as f32).sqrt())
        .collect();
    let projection = Tensor::from_vec(projection, (d, PROJECTION_DIM), features.device())?;
    let projected: Vec<f32> = features.matmul(&projection)?.flatten_all()?.to_vec1()?;
    let point = |i: usize| &projected[i * PROJECTION_DIM..(i + 1) * PROJECTION_DIM];
    let mut min_distance = vec![f32::INFINITY; n];
    let mut chosen = Vec::with_capacity(size);
    let mut next = rng.gen_range(0..n);
    for _ in 0..size {
        chosen.push(next);
        let centre = point(next).to_vec();
        let mut farthest = (0, f32::NEG_INFINITY);
        for (i, best) in min_distance.iter_mut().enumerate() {
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
        next = farthest.0;
    }
    Ok(chosen)
}

/// Nearest-neighbour distances of each row of `queries` (`[q, d]`) to `bank` (`[m, d]`), given
/// the bank's squared norms `[1, m]`. The cross products are one matrix product; the rest is
/// one pass per row (`|q|² + min_j(|b_j|² − 2 q·b_j)`), since candle's broadcast ops would
/// make several passes over the `q × m` matrix.
pub fn nearest_distances(
    queries: &Tensor,
    bank: &Tensor,
    bank_sq: &Tensor,
) -> candle_core::Result<Vec<f32>> {
    let (_, m) = bank_sq.dims2()?;
    let query_sq: Vec<f32> = queries.sqr()?.sum(1)?.to_vec1()?;
    let cross: Vec<f32> = queries.matmul(&bank.t()?)?.flatten_all()?.to_vec1()?;
    let bank_sq: Vec<f32> = bank_sq.flatten_all()?.to_vec1()?;
    Ok(cross
        .par_chunks(m)
        .zip(query_sq.par_iter())
        .map(|(row, q_sq)| {
            let nearest = row
                .iter()
                .zip(&bank_sq)
                .map(|(c, b_sq)| b_sq - 2.0 * c)
                .fold(f32::INFINITY, f32::min);
            (q_sq + nearest).max(0.0).sqrt()
        })
        .collect())
}

/// Shrinkage of the image covariance toward a scaled identity, as a share of its mean
/// variance: a line has fewer good images (often about a hundred) than the descriptor has
/// dimensions (304), so the sample covariance alone is singular. Magnetic-tile image AUROC of
/// the image score alone: 0.901 at 0.003, 0.896 at 0.03, 0.890 at 0.1.
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

    /// Mahalanobis distance of one descriptor.
    pub fn distance(&self, descriptor: &[f32]) -> f32 {
        let delta: Vec<f32> = descriptor
            .iter()
            .zip(&self.mean)
            .map(|(x, m)| x - m)
            .collect();
        let squared: f32 = self
            .precision
            .chunks_exact(delta.len().max(1))
            .zip(&delta)
            .map(|(row, di)| di * row.iter().zip(&delta).map(|(p, dj)| p * dj).sum::<f32>())
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

/// Puts the patch score and the image score on one scale, each as standard deviations above
/// its mean on good validation images; the model's score is their sum (magnetic-tile image
/// AUROC 0.913 at input 128, against 0.891 and 0.896 for either alone).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreScale {
    pub patch_mean: f32,
    pub patch_std: f32,
    pub image_mean: f32,
    pub image_std: f32,
}

impl ScoreScale {
    /// From good images' raw `(patch, image)` scores; `None` with fewer than two.
    pub fn from_good_scores(scores: &[RawScores]) -> Option<ScoreScale> {
        let images: Vec<f32> = scores.iter().filter_map(|s| s.image).collect();
        if scores.len() < 2 || images.len() != scores.len() {
            return None;
        }
        let patches: Vec<f32> = scores.iter().map(|s| s.patch).collect();
        let (patch_mean, patch_std) = mean_std(&patches);
        let (image_mean, image_std) = mean_std(&images);
        Some(ScoreScale {
            patch_mean,
            patch_std,
            image_mean,
            image_std,
        })
    }

    /// The combined score.
    pub fn combine(&self, patch: f32, image: f32) -> f32 {
        (patch - self.patch_mean) / self.patch_std + (image - self.image_mean) / self.image_std
    }
}

/// Mean and standard deviation (floored, so that a constant score still divides).
fn mean_std(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f32;
    let mean = values.iter().sum::<f32>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, var.sqrt().max(1e-6 * mean.abs().max(1.0)))
}

/// One image's scores before they are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawScores {
    /// Mean of the highest patch distances to the bank.
    pub patch: f32,
    /// Mahalanobis distance of the image descriptor; `None` for a model without an
    /// [`ImageGaussian`] (trained before it existed).
    pub image: Option<f32>,
}

/// A trained PatchCore model, with an image-level Gaussian beside the patch memory bank.
#[derive(Debug, Clone)]
pub struct PatchCore {
    features: PatchFeatures,
    /// `[m, FEATURE_DIM]`
    bank: Tensor,
    /// `[1, m]`
    bank_sq: Tensor,
    image_gaussian: Option<ImageGaussian>,
    scale: Option<ScoreScale>,
}

impl PatchCore {
    /// Builds the memory bank from good images' patch features (`[n, FEATURE_DIM]`) and the
    /// image Gaussian from their descriptors.
    pub fn fit(
        features: PatchFeatures,
        good_patches: &Tensor,
        good_descriptors: &[Vec<f32>],
        bank_size: usize,
        seed: u64,
    ) -> candle_core::Result<PatchCore> {
        let chosen = greedy_coreset(good_patches, bank_size, seed)?;
        let index = Tensor::from_vec(
            chosen.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            chosen.len(),
            good_patches.device(),
        )?;
        let bank = good_patches.index_select(&index, 0)?.contiguous()?;
        Ok(PatchCore {
            image_gaussian: Some(ImageGaussian::fit(good_descriptors)?),
            ..PatchCore::from_bank(features, bank)?
        })
    }

    /// A model from a stored memory bank (patch scores only until
    /// [`PatchCore::with_image_gaussian`] and [`PatchCore::with_scale`]).
    pub fn from_bank(features: PatchFeatures, bank: Tensor) -> candle_core::Result<PatchCore> {
        let bank = bank.to_dtype(DType::F32)?;
        let bank_sq = bank.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(PatchCore {
            features,
            bank,
            bank_sq,
            image_gaussian: None,
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

    /// Sets how the two scores combine; without it (or without an image Gaussian) the score is
    /// the patch score alone.
    pub fn with_scale(self, scale: Option<ScoreScale>) -> PatchCore {
        PatchCore { scale, ..self }
    }

    /// The memory bank, for saving.
    pub fn bank(&self) -> &Tensor {
        &self.bank
    }

    /// How the two scores combine, for saving.
    pub fn scale(&self) -> Option<ScoreScale> {
        self.scale
    }

    /// The image Gaussian, for saving.
    pub fn image_gaussian(&self) -> Option<&ImageGaussian> {
        self.image_gaussian.as_ref()
    }

    /// Both scores of an image, and the patch-distance heat map.
    pub fn raw_scores(&self, image: &GrayImage) -> candle_core::Result<(RawScores, HeatMap)> {
        on_worker_thread(|| self.raw_scores_of(&self.features.extract(image)?))
    }

    /// [`PatchCore::raw_scores`] of features already extracted (by this model's extractor).
    pub fn raw_scores_of(
        &self,
        features: &ImageFeatures,
    ) -> candle_core::Result<(RawScores, HeatMap)> {
        let values = nearest_distances(&features.patches, &self.bank, &self.bank_sq)?;
        let side = (values.len() as f64).sqrt() as u32;
        let scores = RawScores {
            patch: top_mean(&values, TOP_PATCHES),
            image: self
                .image_gaussian
                .as_ref()
                .map(|g| g.distance(&features.descriptor)),
        };
        Ok((
            scores,
            HeatMap {
                width: side,
                height: side,
                values,
            },
        ))
    }

    /// Image score (higher is more anomalous: the combined score, or the patch score for a
    /// model without an image Gaussian) and the patch-distance heat map.
    pub fn score(&self, image: &GrayImage) -> candle_core::Result<(f32, HeatMap)> {
        let (raw, heat_map) = self.raw_scores(image)?;
        Ok((self.combined(raw), heat_map))
    }

    /// The score of already computed raw scores.
    pub fn combined(&self, raw: RawScores) -> f32 {
        match (self.scale, raw.image) {
            (Some(scale), Some(image)) => scale.combine(raw.patch, image),
            _ => raw.patch,
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
    fn nearest_distances_by_hand() {
        let device = Device::Cpu;
        let bank = Tensor::new(&[[0f32, 0.0], [3.0, 4.0]], &device).expect("bank");
        let bank_sq = bank
            .sqr()
            .and_then(|b| b.sum_keepdim(1))
            .and_then(|b| b.t())
            .expect("sq");
        let queries = Tensor::new(&[[0f32, 1.0], [3.0, 5.0], [6.0, 8.0]], &device).expect("q");
        let d = nearest_distances(&queries, &bank, &bank_sq).expect("distances");
        for (got, want) in d.iter().zip([1.0, 1.0, 5.0]) {
            assert!((got - want).abs() < 1e-4, "{d:?}");
        }
    }

    #[test]
    fn stacking_matches_candle_upsample_and_cat() {
        let device = Device::Cpu;
        let fine = Tensor::randn(0f32, 1f32, (1, 3, 6, 8), &device).expect("fine");
        let coarse = Tensor::randn(0f32, 1f32, (1, 2, 3, 4), &device).expect("coarse");
        let (stacked, h, w) = stack_upsampled(&fine, &coarse).expect("stacked");
        assert_eq!((h, w), (6, 8));
        let upsampled = coarse.upsample_nearest2d(6, 8).expect("upsampled");
        let reference: Vec<f32> = Tensor::cat(&[&fine, &upsampled], 1)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("reference");
        assert_eq!(stacked, reference);
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
    fn score_scale_puts_both_scores_in_good_standard_deviations() {
        let good = [
            RawScores {
                patch: 1.0,
                image: Some(10.0),
            },
            RawScores {
                patch: 3.0,
                image: Some(30.0),
            },
        ];
        let scale = ScoreScale::from_good_scores(&good).expect("scale");
        assert_eq!(scale.combine(2.0, 20.0), 0.0);
        assert_eq!(scale.combine(4.0, 20.0), 2.0);
        assert_eq!(scale.combine(2.0, 40.0), 2.0);
        assert!(ScoreScale::from_good_scores(&good[..1]).is_none());
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
        let mut clusters: Vec<usize> = greedy_coreset(&features, 3, 1)
            .expect("coreset")
            .iter()
            .map(|i| i / 5)
            .collect();
        clusters.sort();
        assert_eq!(clusters, [0, 1, 2]);
    }

    #[test]
    fn resize_keeps_constant_images_constant() {
        let image = GrayImage::new(7, 5, vec![80; 35]).expect("size");
        assert!(
            resize_bilinear(&image, 16, 16)
                .iter()
                .all(|&v| (v - 80.0).abs() < 1e-4)
        );
    }
}
