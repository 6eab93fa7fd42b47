//! The cold-start anomaly model, learnt from good parts only (PatchCore).
//!
//! Each image is resized to 256×256 and passed through the pretrained EfficientNet-Lite0; the
//! stride-8 (40 ch) and upsampled stride-16 (112 ch) maps are concatenated, giving one
//! 152-dimensional feature per 8×8 patch (32×32 patches), centred on the image's mean patch. Training
//! keeps a *coreset* of the good patches: greedy farthest-point selection (on a seeded random
//! projection, for speed), so the memory bank covers every kind of normal surface with few
//! entries. A patch's anomaly score is its distance to the nearest bank entry; the image score is
//! the mean of the highest few patch scores, and the patch scores form the heat map.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::inspect::backbone::{EfficientNetLite0, FEATURE_CHANNELS, Features};
use crate::part::{GrayImage, HeatMap};

/// Side of the square the backbone sees (unless a model chooses another, a multiple of 16).
pub const INPUT_SIZE: usize = 256;

/// Feature dimension per patch.
pub const FEATURE_DIM: usize = FEATURE_CHANNELS.0 + FEATURE_CHANNELS.1;

/// The image score is the mean of this many highest patch scores: steadier than the single
/// highest (magnetic-tile image AUROC 0.86 against 0.85).
const TOP_PATCHES: usize = 5;

/// Dimension of the random projection used only to pick the coreset.
const PROJECTION_DIM: usize = 64;

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

    /// `[patches, FEATURE_DIM]` features of one image, patches row-major over a
    /// `(INPUT_SIZE/8)²` grid.
    pub fn extract(&self, image: &GrayImage) -> candle_core::Result<Tensor> {
        // PatchCore's 3×3 local average is left out: it blurs away the small blowholes and
        // cracks (magnetic-tile image AUROC 0.81 with it, 0.86 without).
        // Each patch is taken relative to its own image's mean: lighting differs from part to
        // part, and a defect is a patch unlike the rest of its own surface (magnetic-tile image
        // AUROC 0.876 centred, 0.861 not).
        if !self.device.is_cpu() {
            let maps = self.maps(image)?;
            let (_, _, h, w) = maps.dims4()?;
            let patches = maps.reshape((FEATURE_DIM, h * w))?.t()?.contiguous()?;
            return patches.broadcast_sub(&patches.mean_keepdim(0)?);
        }
        let (maps, h, w) = self.stacked_maps(image)?;
        let n = h * w;
        let means: Vec<f32> = maps
            .chunks_exact(n)
            .map(|plane| plane.iter().sum::<f32>() / n as f32)
            .collect();
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
        Tensor::from_vec(patches, (n, FEATURE_DIM), &self.device)
    }

    /// The raw feature maps `[1, FEATURE_DIM, size/8, size/8]`: stride-8 features and the
    /// upsampled stride-16 ones.
    pub fn maps(&self, image: &GrayImage) -> candle_core::Result<Tensor> {
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

/// A trained PatchCore model.
#[derive(Debug, Clone)]
pub struct PatchCore {
    features: PatchFeatures,
    /// `[m, FEATURE_DIM]`
    bank: Tensor,
    /// `[1, m]`
    bank_sq: Tensor,
}

impl PatchCore {
    /// Builds the memory bank from good images' patch features (`[n, FEATURE_DIM]`).
    pub fn fit(
        features: PatchFeatures,
        good_patches: &Tensor,
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
        PatchCore::from_bank(features, bank)
    }

    /// A model from a stored memory bank.
    pub fn from_bank(features: PatchFeatures, bank: Tensor) -> candle_core::Result<PatchCore> {
        let bank = bank.to_dtype(DType::F32)?;
        let bank_sq = bank.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(PatchCore {
            features,
            bank,
            bank_sq,
        })
    }

    /// The memory bank, for saving.
    pub fn bank(&self) -> &Tensor {
        &self.bank
    }

    /// Image score (highest patch distance) and the patch-distance heat map.
    pub fn score(&self, image: &GrayImage) -> candle_core::Result<(f32, HeatMap)> {
        let patches = self.features.extract(image)?;
        let values = nearest_distances(&patches, &self.bank, &self.bank_sq)?;
        let side = (values.len() as f64).sqrt() as u32;
        let score = top_mean(&values, TOP_PATCHES);
        Ok((
            score,
            HeatMap {
                width: side,
                height: side,
                values,
            },
        ))
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
