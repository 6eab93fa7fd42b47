//! Choosing the side of the square the backbone sees, per product, from its good images alone.
//!
//! A defect a few pixels wide on a 640-pixel board vanishes when the board is resampled to a
//! 128-pixel square; on a 250-pixel tile the same square keeps it, at a quarter of the cost
//! of 256 (magnetic-tile measured best at 128). No one size suits every product, and a new
//! product brings good images only, so the training run asks those images.
//!
//! The protocol ([`choose`]):
//! 1. **Candidates**: [`CANDIDATES`] up to the images' median shorter side (5 % of
//!    upsampling allowed): a larger square would only interpolate pixels the camera never
//!    took. The smallest candidate always runs. None above the run's largest size either:
//!    [`DEFAULT_LARGEST`] (256) unless asked (`--input-size auto:512`), so a model onboarded
//!    at the defaults stays within the inspection time a line plans for.
//! 2. **Trial per candidate**: a memory bank of every patch of up to [`TRIAL_FIT_IMAGES`] good
//!    fit images (a random [`TRIAL_BANK_PATCHES`] of them past that, which 32 images reach
//!    only at 512); up to
//!    [`TRIAL_VALIDATION_IMAGES`] good validation images are scored (their farthest patch's
//!    distance to the bank) as they are and with one defect painted on each
//!    ([`crate::learn::synthetic_defect`]: moved patches, and scars 1–3 pixels wide at the
//!    image's own resolution). The same painted images serve every candidate.
//! 3. **Choice**: the image AUROC of painted against unpainted images. A larger candidate
//!    replaces the one chosen so far only when it scores more than [`MIN_AUROC_GAIN`] higher:
//!    each step up costs about four times as much per part (512 about sixteen times 128).
//!
//! The trial is a plain nearest-neighbour score with no coreset, image score or head, so it
//! takes seconds at 128 and 256 (43 s at 512 on DeepPCB here); the card keeps every
//! candidate's AUROC and time ([`InputSizeChoice`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::train::AnomalyError;
use super::{ChannelSearch, sample_rows};
use crate::learn::dataset;
use crate::learn::eval;
use crate::learn::progress::{Phase, Progress};
use crate::learn::synthetic_defect;
use crate::models::backbone::{PatchFeatures, PatchStages};
use crate::part::GrayImage;
use candle_core::Tensor;

/// The sizes a training run may choose from, smallest first. The smallest is taken when
/// nothing can be compared: 128 measured best on magnetic-tile (image AUROC 0.91; 0.90 at 192,
/// about 0.88 at 256) and is the cheapest.
pub const CANDIDATES: [usize; 3] = [128, 256, 512];

/// Good fit images whose patches make a trial's bank, at most.
pub const TRIAL_FIT_IMAGES: usize = 32;

/// Good validation images a trial scores, each unpainted and painted, at most.
pub const TRIAL_VALIDATION_IMAGES: usize = 32;

/// Patches in a trial's bank, at most (a random sample of the fit images' patches past it):
/// every patch of [`TRIAL_FIT_IMAGES`] images at 512, 80 MB of features. Each candidate must be
/// judged on all its own patches: a bank thinned to a fixed count holds a smaller share of a
/// larger candidate's patches, so more of its good patches lack a near neighbour and it looks
/// worse than it is (with 16,384, a 512 trial saw an eighth of its fit patches where 128's saw
/// all: DeepPCB's trial put 512 level with 256, 0.584 against 0.586, where held out 512 found
/// its defects far better, image AUROC 0.92 against 0.85). Scoring 64 validation images
/// against a full bank at 512 is about 10 TFLOP, about a minute here.
pub const TRIAL_BANK_PATCHES: usize = 131_072;

/// The largest size `auto` may choose unless asked for more. At 256 the anomaly model takes
/// about 13 ms per 256×256 part on the 2-core development machine (`cargo bench --bench inspect
/// -- anomaly/score_256_input256_bank4096`), inside the 20 ms a part it is held to; 512 costs
/// about four times as much (four times the pixels through the backbone, four times the
/// patches searched), which a product may choose knowingly but no default should.
pub const DEFAULT_LARGEST: usize = 256;

/// How much higher a larger candidate's AUROC must be to replace a smaller one.
pub const MIN_AUROC_GAIN: f64 = 0.01;

/// How far above the images' median shorter side a candidate may go.
const MAX_UPSAMPLING: f64 = 1.05;

/// What the trials measured, and the size chosen: kept on the model's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSizeChoice {
    pub chosen: usize,
    /// How it was chosen, in words.
    pub rule: String,
    /// Each candidate's trial (none when there was nothing to compare).
    pub trials: Vec<InputSizeTrial>,
    /// The images' median shorter side, which bounds the candidates.
    pub median_shorter_side: usize,
    /// Good images each trial's bank came from, and good images it scored (each twice).
    pub n_fit: usize,
    pub n_validation: usize,
}

/// One candidate's trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSizeTrial {
    pub input_size: usize,
    /// Image AUROC of the painted validation images against the same images unpainted.
    pub painted_auroc: f64,
    pub seconds: f64,
}

/// The candidates for images whose median shorter side is `median_side`, none above `largest`.
pub fn candidates(median_side: usize, largest: usize) -> Vec<usize> {
    candidates_within(&CANDIDATES, median_side as f64 * MAX_UPSAMPLING, largest)
}

/// The sizes of `list` (smallest first) up to `limit` pixels and `largest`; the smallest at
/// least.
pub fn candidates_within(list: &[usize], limit: f64, largest: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (list.iter().copied())
        .filter(|&size| size as f64 <= limit && size <= largest)
        .collect();
    if sizes.is_empty() {
        sizes.extend(list.first());
    }
    sizes
}

/// Runs the protocol of this module on the good images at `fit` and `validation` (thinned by
/// the caller with [`evenly`] to [`TRIAL_FIT_IMAGES`] and [`TRIAL_VALIDATION_IMAGES`]) with
/// `features` (its input size is replaced by each candidate's). Each image is read when its
/// turn comes and let go after, so a run on 5-megapixel images holds one at a time; one that
/// cannot be read is left out, with a warning. No candidate is above `largest`. `seed` draws
/// the banks and paints the defects.
/// With fewer than two readable images on either side, or one candidate, nothing is compared
/// and the smallest candidate is taken.
pub fn choose(
    features: &PatchFeatures,
    fit: &[PathBuf],
    validation: &[PathBuf],
    largest: usize,
    seed: u64,
    progress: &Progress,
) -> Result<InputSizeChoice, AnomalyError> {
    let (fit, fit_sides) = readable(fit, WHY);
    let (validation, validation_sides) = readable(validation, WHY);
    let mut sides: Vec<usize> = fit_sides.into_iter().chain(validation_sides).collect();
    sides.sort_unstable();
    let median_shorter_side = sides.get(sides.len() / 2).copied().unwrap_or(0);
    let sizes = candidates(median_shorter_side, largest);
    let unchosen = |rule: &str| InputSizeChoice {
        chosen: sizes[0],
        rule: rule.to_owned(),
        trials: Vec::new(),
        median_shorter_side,
        n_fit: fit.len(),
        n_validation: validation.len(),
    };
    if fit.len() < 2 || validation.len() < 2 {
        return Ok(unchosen(
            "the smallest candidate: too few good images to compare the candidates",
        ));
    }
    if sizes.len() == 1 {
        return Ok(unchosen(if largest < CANDIDATES[1] {
            "the only candidate: no larger size was allowed"
        } else {
            "the only candidate: the images are too small for a larger one"
        }));
    }

    let bar = progress.phase(
        sizes.len() * (fit.len() + validation.len()),
        "choosing the input size",
    );
    let mut trials = Vec::with_capacity(sizes.len());
    for &size in &sizes {
        let started = Instant::now();
        let extractor = features.clone().with_input_size(size);
        let Some(trial) = painted_trial(&extractor, &fit, &validation, 1, seed, &bar, WHY)? else {
            continue; // no fit image readable at this size: no trial
        };
        trials.push(InputSizeTrial {
            input_size: size,
            painted_auroc: trial.painted_auroc,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    bar.finish_and_clear();
    Ok(InputSizeChoice {
        chosen: chosen_size(&trials),
        rule: format!(
            "image AUROC of {n} good validation images with a painted defect against the same \
             images unpainted, on a bank of {n_fit} good images; a larger size only when more \
             than {MIN_AUROC_GAIN} higher; none above {largest}",
            n = validation.len(),
            n_fit = fit.len(),
        ),
        trials,
        median_shorter_side,
        n_fit: fit.len(),
        n_validation: validation.len(),
    })
}

/// One candidate's trial (step 2): a plain bank of the images at `fit` through `extractor` (as
/// the orientation trial's), and the image AUROC of the images at `validation`, each with a
/// defect painted on it `copies` times, against the same images unpainted. The painter
/// restarts from `seed` at every call, so every candidate sees the same painted defects.
/// `None` where no fit image could be read; 0.5 where no validation image could (nothing to
/// tell apart). `bar` counts the images; `why` is what a warning about an unreadable one says
/// goes on without it.
pub(super) fn painted_trial(
    extractor: &PatchFeatures,
    fit: &[PathBuf],
    validation: &[PathBuf],
    copies: usize,
    seed: u64,
    bar: &Phase,
    why: &str,
) -> Result<Option<PaintedTrial>, AnomalyError> {
    let maps = [extractor.patch_stages()];
    let trials = painted_trials(extractor, fit, validation, copies, seed, bar, why, &maps)?;
    Ok(trials.and_then(|trials| trials.into_iter().next()))
}

/// One set of feature maps' trial, in [`painted_trials`] (and the input size's, which tries
/// one set).
#[derive(Debug, Clone, PartialEq)]
pub struct PaintedTrial {
    pub painted_auroc: f64,
    /// Each readable validation image's score (its farthest patch's distance to the bank),
    /// then its painted copies', image by image.
    pub scores: Vec<f32>,
    /// Its own searches, and an equal share of the rest (reading, painting, backbone runs and
    /// the banks' layouts).
    pub seconds: f64,
}

/// [`painted_trial`] for several sets of feature maps at once, for the choice of maps
/// ([`super::patch_stages`]): every image is read, painted and run through the backbone once,
/// and each set's bank and queries are those features cut to the channels of the maps it
/// keeps. An extractor keeping that set gives the same features with the other channels
/// zeroed, and a zero channel adds nothing to a distance, so the distances are the same (to
/// the rounding of a shorter sum), and each set's search is as wide as its maps: stride 8 alone
/// is 40 channels of 152, stride 16 alone 112. The nearest-neighbour search is most of a
/// trial's time (DeepPCB at 256: a bank of 32,768 patches, searched for 160 images' 1,024
/// each), so three sets cost about two searches of both maps, where three trials cost three
/// searches and three backbone runs. `extractor` keeps every set of `maps` (a set it zeroes
/// would score every image 0); one result per set, in their order.
#[allow(clippy::too_many_arguments)]
pub fn painted_trials(
    extractor: &PatchFeatures,
    fit: &[PathBuf],
    validation: &[PathBuf],
    copies: usize,
    seed: u64,
    bar: &Phase,
    why: &str,
    maps: &[PatchStages],
) -> Result<Option<Vec<PaintedTrial>>, AnomalyError> {
    let extracted = extractor.patch_stages().channels();
    assert!(
        (maps.iter())
            .all(|m| extracted.start <= m.channels().start && m.channels().end <= extracted.end),
        "an extractor keeping {extracted:?} cannot try {maps:?}"
    );
    let started = Instant::now();
    let Some(bank) = sampled_bank(extractor, fit, seed, bar, why)? else {
        return Ok(None);
    };
    let banks = (maps.iter())
        .map(|&stages| ChannelSearch::of(&bank, stages))
        .collect::<candle_core::Result<Vec<_>>>()?;
    // The layouts hold their own copies (152 + 40 + 112 channels: 160 MB at 512).
    drop(bank);
    let mut searching = vec![0.0f64; maps.len()];
    let mut scores = vec![Vec::new(); maps.len()];
    let mut labels = Vec::new();
    let mut painter = ChaCha8Rng::seed_from_u64(seed);
    for path in validation {
        bar.check()?;
        bar.inc(1);
        let Some(image) = load(path, why) else {
            continue;
        };
        for copy in 0..=copies {
            let patches = if copy == 0 {
                extractor.extract(&image)?.patches
            } else {
                let painted = synthetic_defect::paint(&image, &mut painter).image;
                extractor.extract(&painted)?.patches
            };
            labels.push(copy > 0);
            for (k, bank) in banks.iter().enumerate() {
                let search = Instant::now();
                scores[k].push(bank.farthest(&patches)?);
                searching[k] += search.elapsed().as_secs_f64();
            }
        }
    }
    let shared = (started.elapsed().as_secs_f64() - searching.iter().sum::<f64>()).max(0.0);
    Ok(Some(
        (scores.into_iter().zip(&searching))
            .map(|(scores, searching)| PaintedTrial {
                painted_auroc: eval::auroc(&scores, &labels).unwrap_or(0.5),
                scores,
                seconds: searching + shared / maps.len().max(1) as f64,
            })
            .collect(),
    ))
}

/// The images at `paths` whose size can be read, and each one's shorter side; a warning for
/// each that cannot, saying that `why` goes on without it. Shared by the trials of this module,
/// of the turns and of the feature maps.
pub(super) fn readable(paths: &[PathBuf], why: &str) -> (Vec<PathBuf>, Vec<usize>) {
    let mut kept = (Vec::new(), Vec::new());
    for path in paths {
        match dataset::image_dimensions(path) {
            Ok((width, height)) => {
                kept.0.push(path.clone());
                kept.1.push(width.min(height) as usize);
            }
            Err(error) => tracing::warn!(
                image = %path.display(), %error,
                "{why} without an unreadable image"
            ),
        }
    }
    kept
}

/// What a warning about an image this trial cannot read says it goes on doing.
const WHY: &str = "choosing the input size";

/// The image at `path`, or `None` with a warning that `why` goes on without it.
pub(super) fn load(path: &Path, why: &str) -> Option<GrayImage> {
    dataset::load_gray(path)
        .map_err(|error| tracing::warn!(%error, "{why} without an unreadable image"))
        .ok()
}

/// A trial's plain memory bank, the orientation trial's (the input-size and feature-map trials
/// build the same bank, [`painted_trials`]): every patch of the good fit images, up to
/// [`TRIAL_BANK_PATCHES`] drawn at random, with no coreset, image score or head, so that a
/// trial takes seconds (about a minute at 512).
pub(super) struct TrialBank<'a> {
    extractor: &'a PatchFeatures,
    bank: ChannelSearch,
}

impl<'a> TrialBank<'a> {
    /// The bank of the images at `fit` through `extractor`, each read when its turn comes
    /// and let go after (one that cannot be read is left out, with a warning that `why` goes
    /// on without it); `None` where none could be read. `seed` draws the patches; `bar`
    /// counts the images.
    pub(super) fn of(
        extractor: &'a PatchFeatures,
        fit: &[PathBuf],
        seed: u64,
        bar: &Phase,
        why: &str,
    ) -> Result<Option<TrialBank<'a>>, AnomalyError> {
        let Some(bank) = sampled_bank(extractor, fit, seed, bar, why)? else {
            return Ok(None);
        };
        Ok(Some(TrialBank {
            extractor,
            // The extractor's own maps: a map it zeroes is not searched.
            bank: ChannelSearch::of(&bank, extractor.patch_stages())?,
        }))
    }

    /// The distance of `image`'s farthest patch to the bank: the trial's image score.
    pub(super) fn farthest(&self, image: &GrayImage) -> candle_core::Result<f32> {
        self.bank.farthest(&self.extractor.extract(image)?.patches)
    }
}

/// A trial bank's patches before the search layout: every patch of the images at `fit`
/// through `extractor`, up to [`TRIAL_BANK_PATCHES`] drawn with `seed`; `None` where no image
/// could be read. Each image is read when its turn comes and let go after.
fn sampled_bank(
    extractor: &PatchFeatures,
    fit: &[PathBuf],
    seed: u64,
    bar: &Phase,
    why: &str,
) -> Result<Option<Tensor>, AnomalyError> {
    let mut patches = Vec::with_capacity(fit.len());
    for path in fit {
        bar.check()?;
        bar.inc(1);
        if let Some(image) = load(path, why) {
            patches.push(extractor.extract(&image)?.patches);
        }
    }
    let Some(first) = patches.first() else {
        return Ok(None);
    };
    Ok(Some(sample_rows(
        patches.len(),
        first.dim(0)?,
        TRIAL_BANK_PATCHES,
        seed,
        |i| Ok(patches[i].clone()),
    )?))
}

/// The rule of step 3: from the smallest up, a larger size replaces the chosen one only when
/// its AUROC is more than [`MIN_AUROC_GAIN`] higher.
pub fn chosen_size(trials: &[InputSizeTrial]) -> usize {
    let mut best: Option<&InputSizeTrial> = None;
    for trial in trials {
        match best {
            Some(chosen) if trial.painted_auroc <= chosen.painted_auroc + MIN_AUROC_GAIN => {}
            _ => best = Some(trial),
        }
    }
    best.map_or(CANDIDATES[0], |t| t.input_size)
}

/// At most `n` of `items`, spread evenly over the list (every one when there are fewer).
pub fn evenly<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(input_size: usize, painted_auroc: f64) -> InputSizeTrial {
        InputSizeTrial {
            input_size,
            painted_auroc,
            seconds: 0.0,
        }
    }

    #[test]
    fn candidates_stop_at_the_images_own_resolution() {
        assert_eq!(candidates(100, 512), vec![128], "the smallest always runs");
        assert_eq!(
            candidates(250, 512),
            vec![128, 256],
            "magnetic-tile's tiles: 5 % up"
        );
        assert_eq!(
            candidates(500, 512),
            vec![128, 256, 512],
            "KolektorSDD's strips"
        );
        assert_eq!(candidates(640, 512), vec![128, 256, 512]);
        assert_eq!(candidates(200, 512), vec![128]);
    }

    #[test]
    fn candidates_stop_at_the_largest_size_allowed() {
        assert_eq!(
            candidates(640, DEFAULT_LARGEST),
            vec![128, 256],
            "512 only when asked"
        );
        assert_eq!(candidates(640, 128), vec![128]);
        assert_eq!(candidates(640, 100), vec![128], "the smallest always runs");
    }

    #[test]
    fn a_larger_size_must_earn_its_cost() {
        assert_eq!(chosen_size(&[trial(128, 0.90), trial(256, 0.905)]), 128);
        assert_eq!(chosen_size(&[trial(128, 0.90), trial(256, 0.95)]), 256);
        // 512 is compared with the size chosen so far, not with its neighbour.
        assert_eq!(
            chosen_size(&[trial(128, 0.80), trial(256, 0.95), trial(512, 0.955)]),
            256
        );
        assert_eq!(
            chosen_size(&[trial(128, 0.80), trial(256, 0.805), trial(512, 0.9)]),
            512
        );
        assert_eq!(chosen_size(&[trial(128, 0.7)]), 128);
    }
}
