//! Choosing the memory bank's size, per product, from its good images alone.
//!
//! The bank is a coreset of the good patches: the fewer entries, the faster each part is
//! searched, but a good patch the coreset does not cover scores as if it were a defect, and
//! the good images' scores rise towards the threshold. How many entries cover a product
//! depends on how varied its good surfaces are: a uniform tile's patches repeat, a board with
//! a new layout on every image hardly does. So the training run measures it, on good images
//! the bank never saw.
//!
//! The protocol ([`choose`]):
//! 1. **Reference**: up to [`TRIAL_VALIDATION_IMAGES`] good validation images (kept out of the
//!    first fit) are scored against *every* good patch of the first fit: the image score a
//!    bank with no coreset would give them (the mean of their highest patch distances, as the
//!    model scores).
//! 2. **Candidates**: [`CANDIDATES`], smallest first, none above the run's largest: by
//!    default the largest bank whose search costs no more per part than the 256-pixel input's
//!    at 4,096 entries of both maps' 152 channels ([`SEARCH_BUDGET`], within the 20 ms a part
//!    the model is held to; a model keeping one map searches its channels alone, so stride 8's
//!    40 buy up to 3.8 times the entries: 8,192 at 256, the candidates being powers of two),
//!    and never below 4,096, the size every model had before the choice; `--bank-size auto:N`
//!    raises it. The coreset grows from one candidate to the next (a greedy coreset's first
//!    `k` entries are its coreset of size `k`), so trying them costs no more than choosing
//!    the largest tried.
//! 3. **Choice**: the smallest candidate whose bank raises the validation images' scores by no
//!    more than [`MAX_SCORE_RISE`] on average over the reference; else the largest candidate.
//!
//! No defect is needed: the choice is about covering good surfaces. The card keeps each
//! candidate's rise and time ([`BankSizeChoice`]).

use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::input_size::evenly;
use super::train::{AnomalyError, SizeSetting, parse_size_setting};
use super::{GreedyCoreset, TOP_PATCHES, nearest_distances, rows, search_layout, top_mean};
use crate::learn::progress::Phase;
use crate::models::backbone::FEATURE_DIM;

/// The bank sizes a training run may choose from, smallest first.
pub const CANDIDATES: [usize; 7] = [1024, 2048, 4096, 8192, 16_384, 32_768, 65_536];

/// The most multiply-adds a part's search may cost at the defaults: a 256-pixel input's 1,024
/// patches against 4,096 entries in both maps' [`FEATURE_DIM`] channels, the anomaly model's
/// 13 ms per 256×256 part on the 2-core development machine (`cargo bench --bench inspect --
/// anomaly/`). At 128 pixels (256 patches) a bank of 16,384 entries costs the same, and at 256
/// a bank of 15,564 searched in the stride-8 map's 40 channels alone.
pub const SEARCH_BUDGET: usize = 1024 * 4096 * FEATURE_DIM;

/// The size every model had before the run chose it: the default largest never goes below it.
pub const FORMER_BANK_SIZE: usize = 4096;

/// How much a candidate's bank may raise the validation images' scores, on average, over a
/// bank of every good patch (0.10: by 10 %). On magnetic-tile's development part
/// (`make eval-bank-size`) no size from 1,024 entries (a rise of 18 %) to 16,384 found its
/// defects better than another (AUROC 0.936–0.938, three seeds each): a rise of 18 % cost
/// nothing there. 10 % keeps a margin for products whose defects stand out less from their
/// uncovered good patches, and takes 4,096 there (+7 %), as every model had before.
pub const MAX_SCORE_RISE: f64 = 0.10;

/// Good validation images the choice scores, at most.
pub const TRIAL_VALIDATION_IMAGES: usize = 16;

/// How big the memory bank is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BankSize {
    /// Chosen by the training run ([`choose`]), none above `largest`, or, when `None`, above
    /// [`default_largest`] for the model's patches per image.
    Auto { largest: Option<usize> },
    /// This many entries (every good patch, when there are fewer).
    Fixed(usize),
}

impl BankSize {
    /// Chosen by the run within the search budget: the default.
    pub const AUTO: BankSize = BankSize::Auto { largest: None };
}

impl std::fmt::Display for BankSize {
    /// As [`str::parse`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BankSize::Auto { largest: None } => f.write_str("auto"),
            BankSize::Auto {
                largest: Some(largest),
            } => write!(f, "auto:{largest}"),
            BankSize::Fixed(size) => write!(f, "{size}"),
        }
    }
}

impl std::str::FromStr for BankSize {
    type Err = String;

    /// `auto`, `auto:LARGEST` (e.g. `auto:65536`) or a number of entries (at least 1).
    fn from_str(text: &str) -> Result<BankSize, String> {
        match parse_size_setting(text, CANDIDATES[0], "largest bank", "a number of entries")? {
            SizeSetting::Auto(largest) => Ok(BankSize::Auto { largest }),
            SizeSetting::Fixed(0) => Err("a bank of 0 entries would find nothing".to_owned()),
            SizeSetting::Fixed(size) => Ok(BankSize::Fixed(size)),
        }
    }
}

/// The largest bank `auto` may choose for a model of `patches_per_image` patches an image,
/// searched in `channels` channels (those its extractor keeps): the most entries within
/// [`SEARCH_BUDGET`], and never fewer than [`FORMER_BANK_SIZE`].
pub fn default_largest(patches_per_image: usize, channels: usize) -> usize {
    (SEARCH_BUDGET / (patches_per_image.max(1) * channels.max(1))).max(FORMER_BANK_SIZE)
}

/// The candidates up to `largest`; the smallest at least.
pub fn candidates(largest: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = CANDIDATES.into_iter().filter(|&s| s <= largest).collect();
    if sizes.is_empty() {
        sizes.push(CANDIDATES[0]);
    }
    sizes
}

/// What the choice measured, and the size chosen: kept on the model's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankSizeChoice {
    /// The entries chosen (the bank holds every good patch where there are fewer).
    pub chosen: usize,
    /// How it was chosen, in words.
    pub rule: String,
    /// Each candidate tried, smallest first (none when there was nothing to compare).
    pub trials: Vec<BankSizeTrial>,
    /// The first fit's good patches, which the coreset is chosen from.
    pub n_patches: usize,
    /// Good validation images scored.
    pub n_validation: usize,
    /// Seconds scoring them against every good patch took.
    pub reference_seconds: f64,
}

/// One candidate's trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankSizeTrial {
    pub bank_size: usize,
    /// How much higher the validation images' mean score is with this bank than with every
    /// good patch (0.05: 5 % higher).
    pub score_rise: f64,
    /// Seconds growing the coreset to this size and scoring took.
    pub seconds: f64,
}

/// Runs the protocol of this module: `patches` are the first fit's good patches (`[n, d]`),
/// `validation` each good validation image's patches (`[p, d]`, by the same extractor), none
/// of them in `patches`. Returns the choice and the coreset grown to it (its
/// [`GreedyCoreset::chosen`] is the first fit's bank), drawn from `seed`. `progress` counts
/// the coreset's entries. With fewer than two validation images nothing is compared and the
/// largest candidate up to [`FORMER_BANK_SIZE`] is taken.
pub fn choose(
    patches: &Tensor,
    validation: &[&Tensor],
    largest: usize,
    seed: u64,
    progress: &Phase,
) -> Result<(BankSizeChoice, GreedyCoreset), AnomalyError> {
    let n = patches.dim(0)?;
    let candidates = candidates(largest);
    let mut coreset = GreedyCoreset::new(patches, seed)?;
    let validation = evenly(validation, TRIAL_VALIDATION_IMAGES);
    let mut choice = BankSizeChoice {
        chosen: 0,
        rule: String::new(),
        trials: Vec::new(),
        n_patches: n,
        n_validation: validation.len(),
        reference_seconds: 0.0,
    };
    if validation.len() < 2 {
        let chosen = (candidates.iter().copied())
            .filter(|&s| s <= FORMER_BANK_SIZE)
            .max()
            .unwrap_or(candidates[0]);
        coreset.grow_to(chosen, progress)?;
        choice.chosen = chosen;
        choice.rule = format!(
            "{chosen} entries, as before the run chose: fewer than 2 good validation images to \
             measure a bank on"
        );
        return Ok((choice, coreset));
    }
    let queries = Tensor::cat(&validation, 0)?;
    let per_image = validation[0].dim(0)?;
    if per_image == 0 || validation.iter().any(|v| v.dim(0).ok() != Some(per_image)) {
        return Err(candle_core::Error::Msg(
            "validation images with different patch counts".to_owned(),
        )
        .into());
    }
    let image_scores = |bank: &Tensor| -> Result<Vec<f32>, AnomalyError> {
        let (bank_t, bank_sq) = search_layout(bank)?;
        let distances = nearest_distances(&queries, &bank_t, &bank_sq)?;
        Ok((distances.chunks_exact(per_image))
            .map(|image| top_mean(image, TOP_PATCHES))
            .collect())
    };
    // The reference search is one long step (every validation patch against every good
    // patch): a cancelled run stops before it.
    progress.check_candle()?;
    let started = Instant::now();
    let reference = image_scores(patches)?;
    choice.reference_seconds = started.elapsed().as_secs_f64();
    let reference_mean = mean(&reference);
    for &size in &candidates {
        let started = Instant::now();
        coreset.grow_to(size, progress)?;
        let scores = image_scores(&rows(patches, coreset.chosen())?)?;
        // A bank of every patch raises nothing; a reference of all zeros (identical images)
        // is covered by any bank.
        let score_rise = if reference_mean > 0.0 {
            (mean(&scores) - reference_mean) / reference_mean
        } else {
            0.0
        };
        choice.trials.push(BankSizeTrial {
            bank_size: size,
            score_rise,
            seconds: started.elapsed().as_secs_f64(),
        });
        choice.chosen = size;
        if score_rise <= MAX_SCORE_RISE || size >= n {
            choice.rule = format!(
                "the smallest of {candidates:?} entries raising {} good validation images' \
                 mean score by at most {:.0} % over every good patch's ({:+.1} %)",
                validation.len(),
                MAX_SCORE_RISE * 100.0,
                score_rise * 100.0
            );
            return Ok((choice, coreset));
        }
    }
    choice.rule = format!(
        "the largest of {candidates:?} entries: none raised {} good validation images' mean \
         score by at most {:.0} % over every good patch's",
        validation.len(),
        MAX_SCORE_RISE * 100.0
    );
    Ok((choice, coreset))
}

fn mean(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `images` images of `per_image` patches, each patch one of `kinds` kinds of surface
    /// (points spread at random over 16 dimensions, far apart against the rest), give or take 0.01 in each
    /// dimension, drawn from `seed`. Each image's first `odd` patches lie 1 away from their
    /// kind: the image's most unusual spots, which its score is made of.
    fn surfaces(kinds: usize, images: usize, odd: usize, seed: u64) -> Vec<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let centres: Vec<Vec<f32>> = (0..kinds)
            .map(|_| (0..16).map(|_| rng.gen_range(-10.0..10.0)).collect())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..images)
            .map(|_| {
                let values: Vec<f32> = (0..256)
                    .flat_map(|p| {
                        let centre = &centres[rng.gen_range(0..kinds)];
                        let away = if p < odd { 1.0 } else { 0.0 };
                        (centre.iter().enumerate())
                            .map(|(i, c)| {
                                c + rng.gen_range(-0.01..0.01) + if i == 0 { away } else { 0.0 }
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                Tensor::from_vec(values, (256, 16), &Device::Cpu).unwrap()
            })
            .collect()
    }

    fn choice_for(kinds: usize, largest: usize) -> BankSizeChoice {
        let fit = Tensor::cat(&surfaces(kinds, 40, 0, 1), 0).unwrap();
        let validation = surfaces(kinds, 8, 5, 2);
        let validation: Vec<&Tensor> = validation.iter().collect();
        let (choice, coreset) = choose(&fit, &validation, largest, 0, &Phase::hidden()).unwrap();
        assert_eq!(
            coreset.chosen().len(),
            choice.chosen.min(fit.dim(0).unwrap())
        );
        choice
    }

    #[test]
    fn a_uniform_surface_takes_the_smallest_bank() {
        let choice = choice_for(50, 16_384);
        assert_eq!(choice.chosen, 1024, "{choice:?}");
        assert_eq!(choice.trials.len(), 1);
        assert!(choice.trials[0].score_rise <= MAX_SCORE_RISE);
    }

    #[test]
    fn a_varied_surface_grows_the_bank_until_it_is_covered() {
        // 2,000 kinds of surface: a bank of 1,024 leaves half of them uncovered, and their
        // patches score as far as another kind; 2,048 entries take one of each kind first.
        let choice = choice_for(2000, 16_384);
        let sizes: Vec<usize> = choice.trials.iter().map(|t| t.bank_size).collect();
        assert_eq!(sizes, [1024, 2048], "{choice:?}");
        assert_eq!(choice.chosen, 2048);
        assert!(choice.trials[0].score_rise > 1.0, "{choice:?}");
        assert!(choice.trials[1].score_rise <= MAX_SCORE_RISE, "{choice:?}");
    }

    #[test]
    fn the_largest_allowed_is_taken_when_none_covers() {
        let choice = choice_for(2000, 1024);
        assert_eq!(choice.chosen, 1024, "{choice:?}");
        assert!(choice.rule.starts_with("the largest"), "{}", choice.rule);
    }

    #[test]
    fn the_default_largest_keeps_the_search_within_its_budget() {
        // 128 pixels: 256 patches; 256 pixels: 1,024; 512: 4,096 (never below 4,096 entries).
        assert_eq!(default_largest(256, FEATURE_DIM), 16_384);
        assert_eq!(default_largest(1024, FEATURE_DIM), 4096);
        assert_eq!(default_largest(4096, FEATURE_DIM), 4096);
        // One map alone: its search is as many times cheaper per entry as it has fewer
        // channels (stride 8's 40, stride 16's 112).
        assert_eq!(default_largest(1024, 40), 15_564);
        assert_eq!(candidates(default_largest(1024, 40)).last(), Some(&8192));
        assert_eq!(default_largest(1024, 112), 5_558);
        assert_eq!(default_largest(256, 40), 62_259);
        assert_eq!(candidates(16_384), [1024, 2048, 4096, 8192, 16_384]);
        assert_eq!(candidates(100), [1024]);
    }

    #[test]
    fn a_bank_size_is_auto_or_entries() {
        for text in ["auto", "auto:65536", "4096"] {
            assert_eq!(text.parse::<BankSize>().unwrap().to_string(), text);
        }
        for bad in ["auto:12", "0", "many", ""] {
            assert!(bad.parse::<BankSize>().is_err(), "{bad:?}");
        }
    }
}
