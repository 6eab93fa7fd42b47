//! What a model's inputs and scores looked like when it was trained: the reference the station
//! compares its live parts with, to notice when a model no longer fits the line.
//!
//! Production changes under a model without telling it: a new material lot, a lamp that ages, a
//! retooled press. Its verdicts then degrade silently. Three things move first, and a training
//! run records each of them on the card ([`DriftReference`]):
//!
//! * **the inputs** ([`InputProfile`]): six statistics of each image ([`InputStats`]: its
//!   brightness, contrast, shadows, highlights, edges and fine texture), their means, spreads and
//!   correlations over good training images, and the limit of their Mahalanobis distance
//!   ([`InputProfile::novelty`]) that only about 1 % of good parts pass, chosen by split
//!   conformal prediction on good images the fit never saw (on images whatever their labels,
//!   [`ProfileImages::AnyLabel`], for a product whose parts nearly all carry a defect). The
//!   statistics do not depend on the model family, cost well under a millisecond at 256², and
//!   say in words what changed ("brightness 92 against 128 ± 6").
//! * **the scores** of good validation images (sorted, at most [`MAX_REFERENCE_SCORES`]), the
//!   distribution live scores of passed parts are compared with;
//! * **the error rate** on validation images, which bounds how often an operator should find a
//!   verdict wrong (and, with a shadow's, how often two models may disagree).
//!
//! All pure: `analyse::drift` runs the comparisons on the station.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::part::GrayImage;

/// How many statistics [`InputStats`] has.
pub const N_INPUT_STATS: usize = 6;

/// Their names, in [`InputStats::to_array`]'s order, as messages and the API name them.
pub const INPUT_STAT_NAMES: [&str; N_INPUT_STATS] = [
    "brightness",
    "contrast",
    "shadows",
    "highlights",
    "edges",
    "fine_texture",
];

/// The share of good parts whose novelty may pass the limit.
pub const NOVEL_SHARE: f64 = 0.01;

/// At most this many good validation scores are kept on the card.
pub const MAX_REFERENCE_SCORES: usize = 256;

/// Fewer good training images than this learn no reference: their correlations mean nothing.
pub const MIN_FIT_IMAGES: usize = 8;

/// A spread below half a grey level is taken as half a grey level: a difference that small is
/// under any camera's noise, and a feature that never varied in training must not make every
/// live part novel.
const MIN_SPREAD: f64 = 0.5;

/// How far the correlations are pulled towards none (shrinkage), so that a few hundred images
/// give a well-conditioned inverse and a pair of features that moved together in training can
/// still be told apart live.
const SHRINKAGE: f64 = 0.1;

/// At most this many pixels are read per image: whole rows, evenly spaced.
const MAX_PIXELS: usize = 1 << 16;

/// Six statistics of one image, in grey levels (0–255).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputStats {
    /// The mean grey level.
    pub brightness: f32,
    /// The standard deviation of grey levels.
    pub contrast: f32,
    /// The 5th percentile of grey levels.
    pub shadows: f32,
    /// The 95th percentile of grey levels.
    pub highlights: f32,
    /// The mean absolute difference between neighbouring pixels, across and down: edges and
    /// coarse texture (a change of material or of focus moves it).
    pub edges: f32,
    /// The mean absolute second difference across: fine texture and noise (gain, blur).
    pub fine_texture: f32,
}

impl InputStats {
    /// The statistics of `image`, read on whole rows evenly spaced so that at most 65,536
    /// pixels are read. An image with no pixels gives zeros.
    pub fn of(image: &GrayImage) -> InputStats {
        let (width, height) = (image.width as usize, image.height as usize);
        if width == 0 || height == 0 || image.pixels.len() < width * height {
            return InputStats::from_array([0.0; N_INPUT_STATS]);
        }
        let row_step = (width * height).div_ceil(MAX_PIXELS).max(1);
        let mut histogram = [0u64; 256];
        let (mut sum, mut sum_sq) = (0f64, 0f64);
        let (mut edge_sum, mut edge_n) = (0f64, 0u64);
        let (mut fine_sum, mut fine_n) = (0f64, 0u64);
        for y in (0..height).step_by(row_step) {
            let row = &image.pixels[y * width..(y + 1) * width];
            let below = (y + 1 < height).then(|| &image.pixels[(y + 1) * width..(y + 2) * width]);
            for (x, &p) in row.iter().enumerate() {
                histogram[p as usize] += 1;
                let v = f64::from(p);
                sum += v;
                sum_sq += v * v;
                if x + 1 < width {
                    edge_sum += (v - f64::from(row[x + 1])).abs();
                    edge_n += 1;
                }
                if let Some(below) = below {
                    edge_sum += (v - f64::from(below[x])).abs();
                    edge_n += 1;
                }
                if x >= 1 && x + 1 < width {
                    let second = f64::from(row[x - 1]) - 2.0 * v + f64::from(row[x + 1]);
                    fine_sum += second.abs();
                    fine_n += 1;
                }
            }
        }
        let n: u64 = histogram.iter().sum();
        let mean = sum / n as f64;
        let variance = (sum_sq / n as f64 - mean * mean).max(0.0);
        let percentile = |q: f64| {
            let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
            let mut seen = 0;
            for (level, &count) in histogram.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return level as f64;
                }
            }
            255.0
        };
        let ratio = |s: f64, n: u64| if n == 0 { 0.0 } else { s / n as f64 };
        InputStats::from_array(
            [
                mean,
                variance.sqrt(),
                percentile(0.05),
                percentile(0.95),
                ratio(edge_sum, edge_n),
                ratio(fine_sum, fine_n),
            ]
            .map(|v| v as f32),
        )
    }

    /// In [`INPUT_STAT_NAMES`]' order.
    pub fn to_array(self) -> [f32; N_INPUT_STATS] {
        [
            self.brightness,
            self.contrast,
            self.shadows,
            self.highlights,
            self.edges,
            self.fine_texture,
        ]
    }

    pub fn from_array(v: [f32; N_INPUT_STATS]) -> InputStats {
        InputStats {
            brightness: v[0],
            contrast: v[1],
            shadows: v[2],
            highlights: v[3],
            edges: v[4],
            fine_texture: v[5],
        }
    }
}

/// Why no reference could be learnt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0} good training images; a reference needs at least {MIN_FIT_IMAGES}")]
    TooFewImages(usize),
    #[error("a statistic of the good training images is not a number")]
    NotFinite,
}

/// The inputs' statistics over good training images (or images whatever their labels, as the
/// rule says: [`ProfileImages`]), and how far from them a good part goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputProfile {
    /// Each statistic's mean over the fit images, in [`INPUT_STAT_NAMES`]' order.
    pub mean: [f32; N_INPUT_STATS],
    /// Each statistic's standard deviation (at least half a grey level).
    pub spread: [f32; N_INPUT_STATS],
    /// The inverse of the statistics' (shrunk) correlation matrix, row by row.
    pub precision: Vec<f32>,
    /// A good part's novelty passes this about [`InputProfile::expected_share`] of the time.
    pub limit: f32,
    /// How the limit was chosen, and on which images.
    pub limit_rule: String,
    /// The share of good parts expected past the limit.
    pub expected_share: f64,
    /// Images the mean, spreads and correlations come from.
    pub n_fit: usize,
    /// Images, none of them in the fit, the limit was chosen on.
    pub n_calibration: usize,
}

/// Which images an input profile is learnt from, as its rule says in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileImages {
    /// Good images only: the usual case.
    Good,
    /// Images whatever their labels, for a product whose parts nearly all carry a defect
    /// (DeepPCB's boards): a defect changes a few pixels of a part, not its light.
    AnyLabel,
}

impl ProfileImages {
    /// The validation images, as the rule names them.
    fn validation_images(self) -> &'static str {
        match self {
            ProfileImages::Good => "good validation images",
            ProfileImages::AnyLabel => "validation images (defective or not)",
        }
    }

    /// One new part, as the rule names it.
    fn a_part(self) -> &'static str {
        match self {
            ProfileImages::Good => "a good part",
            ProfileImages::AnyLabel => "a part (defective or not)",
        }
    }
}

impl InputProfile {
    /// Fitted on `fit` (training images, of the kind `images` says) with the limit chosen on
    /// `calibration` (validation images of that kind the fit did not see) by split conformal
    /// prediction: the k-th smallest novelty, k = ⌈(n + 1)(1 − 1 %)⌉, which a new part of that
    /// kind passes with probability at most (n + 1 − k)/(n + 1). With fewer than 99
    /// calibration images that is their largest (a share of 1/(n + 1)); with none, the fit
    /// images' own quantile, which is optimistic, and the rule says so.
    pub fn fit(
        fit: &[InputStats],
        calibration: &[InputStats],
        images: ProfileImages,
    ) -> Result<InputProfile, ReferenceError> {
        if fit.len() < MIN_FIT_IMAGES {
            return Err(ReferenceError::TooFewImages(fit.len()));
        }
        let rows: Vec<[f64; N_INPUT_STATS]> =
            fit.iter().map(|s| s.to_array().map(f64::from)).collect();
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ReferenceError::NotFinite);
        }
        let n = rows.len() as f64;
        let mut mean = [0f64; N_INPUT_STATS];
        for row in &rows {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / n;
            }
        }
        let mut spread = [0f64; N_INPUT_STATS];
        for row in &rows {
            for j in 0..N_INPUT_STATS {
                spread[j] += (row[j] - mean[j]).powi(2) / (n - 1.0);
            }
        }
        let spread = spread.map(|v| v.sqrt().max(MIN_SPREAD));
        let mut correlation = DMatrix::<f64>::zeros(N_INPUT_STATS, N_INPUT_STATS);
        for row in &rows {
            let z = DVector::from_iterator(
                N_INPUT_STATS,
                (0..N_INPUT_STATS).map(|j| (row[j] - mean[j]) / spread[j]),
            );
            correlation += &z * z.transpose() / (n - 1.0);
        }
        // A statistic whose spread was floored has a diagonal below 1 here; set to 1 it keeps
        // the floor's promise (a change under half a grey level stays small) instead of making
        // the near-constant statistic the most sensitive. Adding to the diagonal keeps the
        // matrix positive semi-definite.
        for j in 0..N_INPUT_STATS {
            correlation[(j, j)] = 1.0;
        }
        let shrunk = correlation * (1.0 - SHRINKAGE)
            + DMatrix::<f64>::identity(N_INPUT_STATS, N_INPUT_STATS) * SHRINKAGE;
        // Shrinkage towards the identity keeps the matrix positive definite; should rounding
        // ever break that, the identity (no correlations) is the safe fallback.
        let precision = shrunk
            .cholesky()
            .map(|c| c.inverse())
            .unwrap_or_else(|| DMatrix::identity(N_INPUT_STATS, N_INPUT_STATS));
        let mut profile = InputProfile {
            mean: mean.map(|v| v as f32),
            spread: spread.map(|v| v as f32),
            precision: precision.transpose().iter().map(|&v| v as f32).collect(),
            limit: f32::INFINITY,
            limit_rule: String::new(),
            expected_share: 0.0,
            n_fit: fit.len(),
            n_calibration: calibration.len(),
        };
        let validation = images.validation_images();
        let (scored, on) = if calibration.is_empty() {
            (
                fit,
                format!("the fit images themselves (no {validation}), so optimistic"),
            )
        } else {
            (calibration, format!("{validation} the fit never saw"))
        };
        let mut novelties: Vec<f32> = scored.iter().map(|s| profile.novelty(s)).collect();
        novelties.sort_by(f32::total_cmp);
        let n = novelties.len();
        let k = (((n + 1) as f64) * (1.0 - NOVEL_SHARE)).ceil() as usize;
        let k = k.clamp(1, n);
        profile.limit = novelties[k - 1];
        profile.expected_share = (n + 1 - k) as f64 / (n + 1) as f64;
        profile.limit_rule = format!(
            "the {k}-th smallest of {n} novelties on {on}: {} passes it with probability \
             at most {:.3} (split conformal, target {NOVEL_SHARE})",
            images.a_part(),
            profile.expected_share
        );
        Ok(profile)
    }

    /// How unlike the good training images `stats` are: the Mahalanobis distance of the
    /// standardised statistics under the shrunk correlations (about √6 ≈ 2.4 for a typical
    /// good part).
    pub fn novelty(&self, stats: &InputStats) -> f32 {
        let z = self.standardised(stats);
        let mut sum = 0f64;
        for i in 0..N_INPUT_STATS {
            for j in 0..N_INPUT_STATS {
                let p = self
                    .precision
                    .get(i * N_INPUT_STATS + j)
                    .copied()
                    .unwrap_or(if i == j { 1.0 } else { 0.0 });
                sum += z[i] * f64::from(p) * z[j];
            }
        }
        sum.max(0.0).sqrt() as f32
    }

    /// Each statistic in spreads from its training mean.
    pub fn standardised(&self, stats: &InputStats) -> [f64; N_INPUT_STATS] {
        let v = stats.to_array();
        std::array::from_fn(|j| {
            (f64::from(v[j]) - f64::from(self.mean[j])) / f64::from(self.spread[j]).max(MIN_SPREAD)
        })
    }

    /// The statistic furthest from training in `mean_stats` (say the mean of a window's), in
    /// words: "brightness 92.1 against 128.0 ± 6.2 in training".
    pub fn describe_shift(&self, mean_stats: &InputStats) -> String {
        let z = self.standardised(mean_stats);
        let (j, _) = z
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap_or((0, &0.0));
        format!(
            "{} {:.1} against {:.1} ± {:.1} in training",
            INPUT_STAT_NAMES[j],
            mean_stats.to_array()[j],
            self.mean[j],
            self.spread[j]
        )
    }
}

/// One part's inputs against its model's training: what each inspection record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputNovelty {
    /// [`InputProfile::novelty`] of the image.
    pub score: f32,
    /// The model's [`InputProfile::limit`]: past it, the image is unlike its good training
    /// images.
    pub limit: f32,
    pub stats: InputStats,
}

impl InputNovelty {
    /// Whether the image is unlike the model's good training images.
    pub fn is_novel(&self) -> bool {
        self.score > self.limit
    }
}

/// What the card keeps about the model's training data for drift watching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    pub input: InputProfile,
    /// Scores of good validation images (on the model's own scale; the anomaly model's are
    /// every good training image's, each from its fold's model), ascending; at most
    /// [`MAX_REFERENCE_SCORES`], evenly spaced order statistics of them when there were more.
    pub good_scores: Vec<f32>,
    /// Wrong verdicts on validation images at the card's threshold, as a rate with one error
    /// added to each side ((errors + 1)/(n + 2)), so a flawless validation still expects some:
    /// how often an operator may rightly flag a verdict.
    pub error_rate: f64,
    /// Validation images behind `error_rate`.
    pub n_validation: usize,
    /// Whether `good_scores` are the scores of the model as shipped. A family whose final
    /// model is refitted on its validation images (the anomaly model's bank, the supervised
    /// model's head) records the scores of the fit without them, whose scale may differ: the
    /// drift watch does not compare live scores with those.
    #[serde(default)]
    pub scores_of_shipped_model: bool,
}

impl DriftReference {
    /// The reference of a training run: `fit` and `calibration` are the inputs of training
    /// and validation images (good ones, unless `images` says otherwise); `good_scores` the
    /// validation good images' scores; `errors` of `n_validation` validation images were
    /// judged wrongly at the threshold.
    pub fn learn(
        fit: &[InputStats],
        calibration: &[InputStats],
        images: ProfileImages,
        good_scores: &[f32],
        (errors, n_validation): (usize, usize),
        scores_of_shipped_model: bool,
    ) -> Result<DriftReference, ReferenceError> {
        let input = InputProfile::fit(fit, calibration, images)?;
        let mut sorted: Vec<f32> = good_scores
            .iter()
            .copied()
            .filter(|s| s.is_finite())
            .collect();
        sorted.sort_by(f32::total_cmp);
        let good_scores = if sorted.len() <= MAX_REFERENCE_SCORES {
            sorted
        } else {
            let last = (sorted.len() - 1) as f64;
            (0..MAX_REFERENCE_SCORES)
                .map(|i| {
                    sorted[(i as f64 * last / (MAX_REFERENCE_SCORES - 1) as f64).round() as usize]
                })
                .collect()
        };
        Ok(DriftReference {
            input,
            good_scores,
            error_rate: (errors as f64 + 1.0) / (n_validation as f64 + 2.0),
            n_validation,
            scores_of_shipped_model,
        })
    }

    /// The novelty of one image against this reference.
    pub fn novelty_of(&self, image: &GrayImage) -> InputNovelty {
        let stats = InputStats::of(image);
        InputNovelty {
            score: self.input.novelty(&stats),
            limit: self.input.limit,
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A textured part: a gradient, a few dark spots and noise, lit by `gain`.
    fn part(rng: &mut ChaCha8Rng, gain: f32, noise: f32) -> GrayImage {
        let (w, h) = (128u32, 96u32);
        let spots: Vec<(f32, f32)> = (0..4)
            .map(|_| (rng.gen_range(0.0..w as f32), rng.gen_range(0.0..h as f32)))
            .collect();
        let pixels = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                let mut v = 110.0 + 40.0 * x / w as f32;
                if spots
                    .iter()
                    .any(|(sx, sy)| (x - sx).powi(2) + (y - sy).powi(2) < 25.0)
                {
                    v -= 50.0;
                }
                v += rng.gen_range(-noise..=noise);
                (v * gain).clamp(0.0, 255.0) as u8
            })
            .collect();
        GrayImage {
            width: w,
            height: h,
            pixels,
        }
    }

    fn stats_of(seed: u64, n: usize, gain: f32, noise: f32) -> Vec<InputStats> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| InputStats::of(&part(&mut rng, gain, noise)))
            .collect()
    }

    #[test]
    fn the_statistics_read_what_they_name() {
        let flat = GrayImage {
            width: 10,
            height: 10,
            pixels: vec![100; 100],
        };
        let s = InputStats::of(&flat);
        assert_eq!(
            (s.brightness, s.contrast, s.edges, s.fine_texture),
            (100.0, 0.0, 0.0, 0.0)
        );
        assert_eq!((s.shadows, s.highlights), (100.0, 100.0));
        // Stripes: half the pixels 0, half 200, alternating across.
        let stripes = GrayImage {
            width: 10,
            height: 10,
            pixels: (0..100).map(|i| if i % 2 == 0 { 0 } else { 200 }).collect(),
        };
        let s = InputStats::of(&stripes);
        assert_eq!((s.brightness, s.contrast), (100.0, 100.0));
        assert_eq!((s.shadows, s.highlights), (0.0, 200.0));
        // 90 differences of 200 across, 90 of 0 down.
        assert!((s.edges - 100.0).abs() < 1e-4, "{}", s.edges);
        assert!((s.fine_texture - 400.0).abs() < 1e-4, "{}", s.fine_texture);
        // An empty or short image is not a panic.
        let empty = GrayImage {
            width: 4,
            height: 4,
            pixels: vec![],
        };
        assert_eq!(InputStats::of(&empty).brightness, 0.0);
    }

    #[test]
    fn good_parts_pass_the_limit_about_as_often_as_promised_and_relit_ones_do_not() {
        let fit = stats_of(1, 300, 1.0, 8.0);
        let calibration = stats_of(2, 300, 1.0, 8.0);
        let profile = InputProfile::fit(&fit, &calibration, ProfileImages::Good).expect("fits");
        assert!(profile.limit.is_finite() && profile.limit > 0.0);
        assert!(
            (profile.expected_share - 0.01).abs() < 0.005,
            "{}",
            profile.expected_share
        );
        // New good parts: about 1 % past the limit (10 of 1000 expected; the limit itself
        // varies with its 300 calibration images, so 25 is the bound).
        let new = stats_of(3, 1000, 1.0, 8.0);
        let past = new
            .iter()
            .filter(|s| profile.novelty(s) > profile.limit)
            .count();
        assert!(past <= 25, "{past} of 1000 good parts past the limit");
        // A dimmer lamp (85 %) or a noisier sensor makes most parts novel.
        for (what, stats) in [
            ("dimmer", stats_of(4, 200, 0.85, 8.0)),
            ("noisier", stats_of(5, 200, 1.0, 20.0)),
        ] {
            let past = stats
                .iter()
                .filter(|s| profile.novelty(s) > profile.limit)
                .count();
            assert!(past > 180, "{what}: only {past} of 200 past the limit");
        }
        let dim = stats_of(6, 50, 0.85, 8.0);
        let mean = InputStats::from_array(std::array::from_fn(|j| {
            dim.iter().map(|s| s.to_array()[j]).sum::<f32>() / dim.len() as f32
        }));
        let said = profile.describe_shift(&mean);
        assert!(said.contains("in training"), "{said}");
        assert!(
            ["brightness", "shadows", "highlights"]
                .iter()
                .any(|w| said.starts_with(w)),
            "{said}"
        );
    }

    #[test]
    fn a_reference_needs_enough_images_and_keeps_a_bounded_score_sample() {
        let few = stats_of(7, 5, 1.0, 8.0);
        assert_eq!(
            InputProfile::fit(&few, &[], ProfileImages::Good),
            Err(ReferenceError::TooFewImages(5))
        );
        let fit = stats_of(8, 40, 1.0, 8.0);
        // Without calibration images the fit's own quantile, and the rule says so.
        let own = InputProfile::fit(&fit, &[], ProfileImages::Good).expect("fits");
        assert!(own.limit_rule.contains("optimistic"), "{}", own.limit_rule);
        // A profile of parts whatever their labels says so, not that its parts were good.
        let any = InputProfile::fit(&fit, &fit[..20], ProfileImages::AnyLabel).expect("fits");
        assert!(
            any.limit_rule
                .contains("validation images (defective or not)")
                && !any.limit_rule.contains("good"),
            "{}",
            any.limit_rule
        );
        let scores: Vec<f32> = (0..1000).rev().map(|i| i as f32 / 1000.0).collect();
        let reference =
            DriftReference::learn(&fit, &[], ProfileImages::Good, &scores, (3, 98), true)
                .expect("learns");
        assert_eq!(reference.good_scores.len(), MAX_REFERENCE_SCORES);
        assert!(reference.good_scores.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(reference.good_scores[0], 0.0);
        assert_eq!(*reference.good_scores.last().expect("some"), 0.999);
        assert!((reference.error_rate - 0.04).abs() < 1e-12);
        // A constant statistic (a synthetic background) does not make every part novel.
        let constant: Vec<InputStats> = fit
            .iter()
            .map(|s| InputStats {
                shadows: 60.0,
                ..*s
            })
            .collect();
        let profile =
            InputProfile::fit(&constant, &constant[..20], ProfileImages::Good).expect("fits");
        // A grey level's move of the constant statistic is two floored spreads: no more than
        // that in the novelty, not the dominant term.
        let base = profile.novelty(&constant[0]);
        let moved = profile.novelty(&InputStats {
            shadows: 61.0,
            ..constant[0]
        });
        assert!(moved - base <= 2.5, "{base} → {moved}");
    }
}
