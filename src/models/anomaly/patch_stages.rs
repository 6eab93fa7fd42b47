//! Choosing which of the backbone's feature maps a product's patch features keep, from its
//! good images alone ([`PatchStages`]).
//!
//! A defect that spans a patch or two (a short between two tracks, a pinhole) shows in the
//! stride-8 map; the stride-16 map sees it blurred with twice as much of its surroundings,
//! and where every image shows a different layout those surroundings vary more than the
//! defect does. A defect that changes a surface's make-up over a wider area shows in both.
//! Which maps a product's patch distances should read is its defects' size against its
//! input, which a new product does not tell; the training run asks its good images.
//!
//! The protocol ([`choose`]), at the input size already chosen:
//! 1. **Trial per candidate** ([`PatchStages::ALL`]), as the input-size trial's
//!    ([`super::input_size`]): a plain memory bank of the good fit images' patches, and the
//!    good validation images scored (their farthest patch's distance) as they are and with a
//!    defect painted on each, [`PAINTED_COPIES`] times, the same painted images for every
//!    candidate.
//! 2. **Choice**: both maps, unless one map alone scores more than [`MIN_AUROC_GAIN`]
//!    higher; if both do, the higher. Leaving a map out saves no backbone time (it runs to
//!    stride 16 for the image descriptor either way); the search is cut to the map's channels
//!    (stride 8: 40 of 152), which the bank's size spends ([`super::bank_size`]), so the margin
//!    only keeps the choice from following the painted draw: both maps are what every model
//!    kept before.
//!
//! The three are tried in one pass ([`super::input_size::painted_trials`]): about 1.2 s on
//! magnetic-tile at 128 and 18 s on DeepPCB at 256 here (1.9–2.6 s and 24–29 s as three
//! separate trials; `scripts/time-map-trial.sh`). The card keeps every trial
//! ([`PatchStagesChoice`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::input_size::{painted_trials, readable};
use super::train::AnomalyError;
use crate::learn::progress::Progress;
use crate::models::backbone::{PatchFeatures, PatchStages};

/// How much higher one map alone must score than both to replace them.
pub const MIN_AUROC_GAIN: f64 = 0.01;

/// Painted copies of each validation image a trial scores. The differences between the maps
/// are a few hundredths of AUROC, within what one painted defect per image draws: with one
/// copy DeepPCB's trial put both maps and stride 8 alone level (0.599 and 0.606), with four
/// stride 8 ahead by 0.011–0.031 over three seeds, as the score choice's trial (four copies
/// too) and the held-out part found. Four copies make a trial about two and a half times as
/// long as one.
pub const PAINTED_COPIES: usize = 4;

/// Which maps a training run's patch features keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StagesSetting {
    /// Chosen by the run ([`choose`]): the default.
    #[default]
    Auto,
    /// These, with no trial.
    Given(PatchStages),
}

impl std::fmt::Display for StagesSetting {
    /// As [`str::parse`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StagesSetting::Auto => "auto",
            StagesSetting::Given(PatchStages::Both) => "both",
            StagesSetting::Given(PatchStages::Stride8) => "stride8",
            StagesSetting::Given(PatchStages::Stride16) => "stride16",
        })
    }
}

impl std::str::FromStr for StagesSetting {
    type Err = String;

    /// `auto`, `both`, `stride8` or `stride16`.
    fn from_str(text: &str) -> Result<StagesSetting, String> {
        Ok(match text {
            "auto" => StagesSetting::Auto,
            "both" => StagesSetting::Given(PatchStages::Both),
            "stride8" => StagesSetting::Given(PatchStages::Stride8),
            "stride16" => StagesSetting::Given(PatchStages::Stride16),
            _ => {
                return Err(format!(
                    "{text:?}: the feature maps are `auto`, `both`, `stride8` or `stride16`"
                ));
            }
        })
    }
}

/// What the trials measured, and the maps chosen: kept on the model's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchStagesChoice {
    pub chosen: PatchStages,
    /// How it was chosen, in words.
    pub rule: String,
    /// Each candidate's trial (none when there was nothing to compare).
    pub trials: Vec<PatchStagesTrial>,
    /// Readable good images each trial's bank came from, and good images it scored (each
    /// unpainted and [`PAINTED_COPIES`] times painted).
    pub n_fit: usize,
    pub n_validation: usize,
}

/// One candidate's trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchStagesTrial {
    pub stages: PatchStages,
    /// Image AUROC of the painted validation images against the same images unpainted.
    pub painted_auroc: f64,
    /// Its own nearest-neighbour searches and an equal share of the reading, painting and
    /// backbone runs the candidates share (one pass serves all three).
    pub seconds: f64,
}

/// Runs the protocol of this module on the good images at `fit` and `validation` (thinned by
/// the caller) with `features` at the model's input size; `seed` draws the banks and paints
/// the defects. With fewer than two images on either side nothing is compared and both maps
/// are kept.
pub fn choose(
    features: &PatchFeatures,
    fit: &[PathBuf],
    validation: &[PathBuf],
    seed: u64,
    progress: &Progress,
) -> Result<PatchStagesChoice, AnomalyError> {
    let (fit, _) = readable(fit, WHY);
    let (validation, _) = readable(validation, WHY);
    let (fit, validation) = (&fit[..], &validation[..]);
    if fit.len() < 2 || validation.len() < 2 {
        return Ok(PatchStagesChoice {
            chosen: PatchStages::Both,
            rule: "both maps: too few good images to compare the candidates".to_owned(),
            trials: Vec::new(),
            n_fit: fit.len(),
            n_validation: validation.len(),
        });
    }
    let bar = progress.phase(fit.len() + validation.len(), "choosing the feature maps");
    // One pass for the three: every image goes through the backbone once, and each
    // candidate's bank and queries are both maps' features cut to its own channels.
    let both = features.clone().with_patch_stages(PatchStages::Both);
    let maps = PatchStages::ALL;
    let trials = painted_trials(
        &both,
        fit,
        validation,
        PAINTED_COPIES,
        seed,
        &bar,
        WHY,
        &maps,
    )?
    .unwrap_or_default() // no fit image readable: no trial
    .into_iter()
    .zip(maps)
    .map(|(trial, stages)| PatchStagesTrial {
        stages,
        painted_auroc: trial.painted_auroc,
        seconds: trial.seconds,
    })
    .collect::<Vec<_>>();
    bar.finish_and_clear();
    Ok(PatchStagesChoice {
        chosen: chosen_stages(&trials),
        rule: format!(
            "image AUROC of {n} good validation images, each with a defect painted on it \
             {PAINTED_COPIES} times, against the same images unpainted, on a bank of {n_fit} \
             good images' patches; one map alone only when more than {MIN_AUROC_GAIN} higher \
             than both",
            n = validation.len(),
            n_fit = fit.len(),
        ),
        trials,
        n_fit: fit.len(),
        n_validation: validation.len(),
    })
}

/// What a warning about an image this trial cannot read says it goes on doing.
const WHY: &str = "choosing the feature maps";

/// The rule of step 2: both maps unless one alone is more than [`MIN_AUROC_GAIN`] higher
/// (the higher of the two where both are; the stride-8 map on a tie).
pub fn chosen_stages(trials: &[PatchStagesTrial]) -> PatchStages {
    let Some(both) = trials.iter().find(|t| t.stages == PatchStages::Both) else {
        return PatchStages::Both;
    };
    let mut chosen = both;
    for trial in trials.iter().filter(|t| t.stages != PatchStages::Both) {
        if trial.painted_auroc > both.painted_auroc + MIN_AUROC_GAIN
            && trial.painted_auroc > chosen.painted_auroc
        {
            chosen = trial;
        }
    }
    chosen.stages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(stages: PatchStages, painted_auroc: f64) -> PatchStagesTrial {
        PatchStagesTrial {
            stages,
            painted_auroc,
            seconds: 0.0,
        }
    }

    #[test]
    fn the_setting_reads_back_what_it_writes_and_names_the_choices_when_wrong() {
        for setting in [
            StagesSetting::Auto,
            StagesSetting::Given(PatchStages::Both),
            StagesSetting::Given(PatchStages::Stride8),
            StagesSetting::Given(PatchStages::Stride16),
        ] {
            assert_eq!(setting.to_string().parse(), Ok(setting));
        }
        let error = "stride4"
            .parse::<StagesSetting>()
            .expect_err("not a choice");
        assert!(error.contains("`stride8`"), "{error}");
    }

    #[test]
    fn one_map_alone_must_clear_both_by_the_margin() {
        use PatchStages::*;
        // Magnetic-tile's development part at 128, seed 0: both kept.
        let tile = [
            trial(Both, 0.741),
            trial(Stride8, 0.693),
            trial(Stride16, 0.726),
        ];
        assert_eq!(chosen_stages(&tile), Both);
        assert_eq!(
            chosen_stages(&[
                trial(Both, 0.60),
                trial(Stride8, 0.605),
                trial(Stride16, 0.5)
            ]),
            Both,
            "within the margin"
        );
        assert_eq!(
            chosen_stages(&[
                trial(Both, 0.56),
                trial(Stride8, 0.61),
                trial(Stride16, 0.55)
            ]),
            Stride8
        );
        assert_eq!(
            chosen_stages(&[
                trial(Both, 0.56),
                trial(Stride8, 0.61),
                trial(Stride16, 0.63)
            ]),
            Stride16,
            "the higher of two that clear it"
        );
        assert_eq!(
            chosen_stages(&[trial(Stride8, 0.9)]),
            Both,
            "nothing to compare with"
        );
    }
}
