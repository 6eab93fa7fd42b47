//! Training and evaluating the anomaly model on a real dataset, read in place.
//!
//! The dataset is split deterministically: every 4th image of each class (by sorted path) is
//! held out. The model learns from the *good* images of the training part only and is measured
//! on the held-out part, which it never saw.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::learn::dataset::{self, DatasetError, Layout, Sample};
use crate::learn::drift::{DriftReference, InputStats, ProfileImages};
use crate::learn::eval::{self, DetectionMetrics, PixelTruth, ThresholdGuarantee};
use crate::learn::hash::{self, ContentHash};
use crate::learn::progress::{Cancelled, Progress};
use crate::learn::synthetic_defect;
use crate::models::anomaly::bank_size::{self, BankSize, BankSizeChoice};
use crate::models::anomaly::input_size;
use crate::models::anomaly::orientation::{self, OrientationChoice, Orientations};
use crate::models::anomaly::patch_stages::{self, StagesSetting};
use crate::models::anomaly::score_choice;
use crate::models::anomaly::{
    AnomalyCard, AnomalyMetrics, AnomalyModel, ClassAnomalyMetrics, CoarseImage, DiscriminatorCard,
    DiscriminatorSettings, ImageGaussian, NoiseDiscriminator, PatchCore, PatchHead, RawScores,
    SYNTHETIC_MIN_SHARE, ScoreAuroc, ScoreScale, cut_to_channels, discriminator, greedy_coreset,
};
use crate::models::backbone::{
    BackboneError, BackboneInput, ImageFeatures, PatchFeatures, PatchStages, check_input_size,
};
use crate::models::card::{CardError, ModelCard};
use crate::part::GrayImage;

/// The input size of the coarse image score new models get (see [`CoarseImage`]).
pub const COARSE_INPUT_SIZE: usize = 96;

/// The side of the square the backbone sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSize {
    /// Chosen by the training run, none above `largest`: the anomaly family's from the
    /// product's good images ([`input_size::choose`]), the supervised family's from its
    /// labelled validation images ([`crate::models::supervised::input_size`]).
    Auto { largest: usize },
    /// This size (a multiple of 16).
    Fixed(usize),
}

impl InputSize {
    /// Chosen by the run, up to [`input_size::DEFAULT_LARGEST`]: the default.
    pub const AUTO: InputSize = InputSize::Auto {
        largest: input_size::DEFAULT_LARGEST,
    };
}

impl std::fmt::Display for InputSize {
    /// As [`str::parse`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            InputSize::AUTO => f.write_str("auto"),
            InputSize::Auto { largest } => write!(f, "auto:{largest}"),
            InputSize::Fixed(size) => write!(f, "{size}"),
        }
    }
}

impl std::str::FromStr for InputSize {
    type Err = String;

    /// `auto`, `auto:LARGEST` (e.g. `auto:512`) or a size in pixels.
    fn from_str(text: &str) -> Result<InputSize, String> {
        let smallest = input_size::CANDIDATES[0];
        Ok(
            match parse_size_setting(text, smallest, "largest size", "a size in pixels")? {
                SizeSetting::Auto(None) => InputSize::AUTO,
                SizeSetting::Auto(Some(largest)) => InputSize::Auto { largest },
                SizeSetting::Fixed(size) => InputSize::Fixed(size),
            },
        )
    }
}

/// A size setting as written: chosen by the training run (`auto`, or `auto:LARGEST` with the
/// largest it may choose) or given.
pub(crate) enum SizeSetting {
    Auto(Option<usize>),
    Fixed(usize),
}

/// Reads `auto`, `auto:LARGEST` (at least `smallest`) or a number, the way the input size and
/// the bank size are set; `largest` and `fixed` name the numbers in the errors ("largest
/// size", "a size in pixels").
pub(crate) fn parse_size_setting(
    text: &str,
    smallest: usize,
    largest: &str,
    fixed: &str,
) -> Result<SizeSetting, String> {
    if text == "auto" {
        return Ok(SizeSetting::Auto(None));
    }
    if let Some(most) = text.strip_prefix("auto:") {
        return match most.parse() {
            Ok(most) if most >= smallest => Ok(SizeSetting::Auto(Some(most))),
            _ => Err(format!(
                "{text:?}: `auto:` takes the {largest} to choose, at least {smallest}"
            )),
        };
    }
    text.parse()
        .map(SizeSetting::Fixed)
        .map_err(|_| format!("{text:?} is neither `auto`, `auto:LARGEST` nor {fixed}"))
}

/// The share of good parts the threshold may reject, unless asked otherwise.
pub const DEFAULT_TARGET_FALSE_REJECT_RATE: f64 = 0.05;

/// Every `HOLDOUT_EVERY`-th image of each class is held out for evaluation.
pub const HOLDOUT_EVERY: usize = 4;

/// Every this-many-th good training image is kept for validation.
const VALIDATION_EVERY: usize = 5;

/// The most patches turned copies of the good images ([`orientation`]) add to the bank's
/// candidates: 2^19 patches of 152 values, 320 MB. Magnetic-tile's 179 good training images
/// at its 128-pixel input, turned three ways, take a quarter of it; at a 256-pixel input
/// (1,024 patches an image) seven turns reach it at 73 images.
const TURNED_PATCH_BUDGET: usize = 1 << 19;

/// Why anomaly training or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error("anomaly model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("no usable good image to learn from in {0}")]
    NoGoodImages(PathBuf),
    /// Whoever watched the run cancelled it.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// What to train.
#[derive(Debug, Clone)]
pub struct AnomalySettings {
    pub name: String,
    pub layout: Layout,
    pub data: PathBuf,
    pub backbone_weights: PathBuf,
    /// The memory bank's size: given, or chosen by the run ([`bank_size`]).
    pub bank_size: BankSize,
    /// Side of the square the backbone sees.
    pub input_size: InputSize,
    /// Which feature maps the patch features keep ([`patch_stages`]).
    pub patch_stages: StagesSetting,
    /// Share of good validation images the threshold may reject.
    pub target_false_reject_rate: f64,
    /// Defects painted on each good training image to train the patch head; 0 trains no head.
    pub synthetic_defects_per_good: usize,
    /// Input size of the second, coarser image score ([`CoarseImage`]); `None` for none.
    pub coarse_input_size: Option<usize>,
    /// Optimiser steps of the discriminator ([`NoiseDiscriminator`]); 0 trains none.
    pub discriminator_steps: usize,
    /// The discriminator's noise, in standardised channel units.
    pub discriminator_noise_std: f32,
    /// Turned copies of the good images the bank learns from ([`orientation`]).
    pub orientations: Orientations,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Where each phase's progress goes.
    pub progress: Progress,
}

/// Trains on the dataset's good training images, evaluates on the held-out part, writes the
/// bank and the card.
pub fn train(settings: &AnomalySettings) -> Result<ModelCard<AnomalyCard>, AnomalyError> {
    let started = Instant::now();
    let device = Device::Cpu;
    let invalid = |message: String| AnomalyError::File {
        path: settings.data.clone(),
        message,
    };
    // The settings are checked before anything is read: a wrong one fails at once. Without
    // noise the discriminator would learn nothing (its loss has no slope until a good and a
    // noisy patch differ) and ship a random network.
    let noise = settings.discriminator_noise_std;
    if settings.discriminator_steps > 0 && !(noise.is_finite() && noise > 0.0) {
        return Err(invalid(format!(
            "discriminator noise {noise}: a standard deviation above 0"
        )));
    }
    let smallest = match settings.input_size {
        InputSize::Fixed(size) => {
            check_input_size(size).map_err(invalid)?;
            size
        }
        InputSize::Auto { .. } => input_size::CANDIDATES[0],
    };
    if let Some(size) = settings.coarse_input_size {
        check_input_size(size)
            .and_then(|()| {
                // At the same size it would count the image score twice.
                if size < smallest {
                    Ok(())
                } else if matches!(settings.input_size, InputSize::Auto { .. }) {
                    Err(format!(
                        "input size {size} is not below {smallest}, the smallest input size \
                         `auto` may choose"
                    ))
                } else {
                    Err(format!(
                        "input size {size} is not below the model's {smallest}"
                    ))
                }
            })
            .map_err(|message| invalid(format!("coarse image score: {message}")))?;
    }
    let backbone = PatchFeatures::load(&settings.backbone_weights, &device)?;
    let samples = dataset::read(settings.layout, &settings.data)?;
    let (train_part, held_out) = dataset::split_every(&samples, HOLDOUT_EVERY);
    let good_part: Vec<Sample> = train_part
        .iter()
        .filter(|s| !s.defective())
        .cloned()
        .collect();
    // Every 5th good training image (item, where the dataset has items) is the validation
    // part: the input size, the turns and the bank's size are chosen on it against a fit on
    // the others, and it is the last of the five folds the threshold is calibrated on (below).
    let (good, validation) =
        dataset::split_validation(&good_part, settings.layout, VALIDATION_EVERY);

    // The input size's and the feature maps' trials run on the same images.
    let size_trial_fit = trial_paths(&good, input_size::TRIAL_FIT_IMAGES);
    let size_trial_validation = trial_paths(&validation, input_size::TRIAL_VALIDATION_IMAGES);
    let (input_size, input_size_choice) = match settings.input_size {
        InputSize::Fixed(size) => (size, None),
        InputSize::Auto { largest } => {
            let choice = input_size::choose(
                &backbone,
                &size_trial_fit,
                &size_trial_validation,
                largest,
                settings.seed,
                &settings.progress,
            )?;
            tracing::info!(
                chosen = choice.chosen,
                trials = ?choice.trials,
                "input size chosen"
            );
            (choice.chosen, Some(choice))
        }
    };
    let features = backbone.with_input_size(input_size);
    let patch_stages_choice = match settings.patch_stages {
        StagesSetting::Given(_) => None,
        StagesSetting::Auto => {
            let choice = patch_stages::choose(
                &features,
                &size_trial_fit,
                &size_trial_validation,
                settings.seed,
                &settings.progress,
            )?;
            tracing::info!(
                chosen = choice.chosen.name(),
                trials = ?choice.trials,
                "feature maps chosen"
            );
            Some(choice)
        }
    };
    let features = features.with_patch_stages(match settings.patch_stages {
        StagesSetting::Given(stages) => stages,
        StagesSetting::Auto => patch_stages_choice
            .as_ref()
            .map_or(PatchStages::Both, |choice| choice.chosen),
    });
    // The same backbone (its weights shared, not copied) at the coarse input size.
    let coarse_features =
        (settings.coarse_input_size).map(|size| features.clone().with_input_size(size));
    let mut orientation_choice = match &settings.orientations {
        Orientations::None => None,
        Orientations::Given(turns) => Some(OrientationChoice {
            chosen: turns.clone(),
            rule: "given by the person training (--orientations, or `orientations` in a \
                   station's training request)"
                .to_owned(),
            trials: Vec::new(),
            n_fit: 0,
            n_validation: 0,
            n_turned_images: 0,
        }),
        Orientations::Auto => {
            let choice = orientation::choose(
                &features,
                &trial_paths(&good, orientation::TRIAL_FIT_IMAGES),
                &trial_paths(&validation, orientation::TRIAL_VALIDATION_IMAGES),
                settings.seed,
                &settings.progress,
            )?;
            tracing::info!(
                chosen = ?choice.chosen,
                trials = ?choice.trials,
                "orientations chosen"
            );
            Some(choice)
        }
    };
    // Turned copies of every `turn_every`-th image only, so that the bank's candidates stay
    // within TURNED_PATCH_BUDGET patches more than the images' own; the card says so.
    let grid = input_size / 8;
    let turn_every = match &mut orientation_choice {
        Some(choice) => {
            let every = orientation::turned_one_in(
                good.len() + validation.len(),
                choice.chosen.len(),
                grid * grid,
                TURNED_PATCH_BUDGET,
            );
            if every > 1 {
                choice.rule.push_str(&format!(
                    "; turned copies of one image in {every} only (at most about \
                     {TURNED_PATCH_BUDGET} turned patches)"
                ));
            }
            every
        }
        None => 1,
    };
    let turns = orientation_choice
        .as_ref()
        .map_or(&[][..], |c| &c.chosen[..]);

    let bar = settings
        .progress
        .phase(good.len() + validation.len(), "features of good images");
    // The patch head's defects are painted from the run's seed: a seed reproduces the model.
    let mut painter = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut read = 0usize;
    // `scored_painted`: the painted images are scored (the score choice's), not learnt from,
    // and need their coarse descriptors too.
    let mut extract_all = |samples: &[Sample],
                           defects_per_image: usize,
                           scored_painted: bool|
     -> Result<GoodFeatures, AnomalyError> {
        let mut out = GoodFeatures::default();
        for sample in samples {
            bar.check()?;
            bar.inc(1);
            match dataset::load_gray(&sample.image) {
                Ok(image) => {
                    out.inputs.push(InputStats::of(&image));
                    out.images.push(features.extract(&image)?);
                    if let Some(coarse) = &coarse_features {
                        out.coarse_descriptors.push(coarse.descriptor(&image)?);
                    }
                    out.used.push(sample.image.clone());
                    if read.is_multiple_of(turn_every) {
                        for &turn in turns {
                            let turned = turn.apply(&image);
                            out.turned.push(features.extract(&turned)?);
                            if let Some(coarse) = &coarse_features {
                                out.turned_coarse_descriptors
                                    .push(coarse.descriptor(&turned)?);
                            }
                        }
                    }
                    read += 1;
                    for _ in 0..defects_per_image {
                        let defect = synthetic_defect::paint(&image, &mut painter);
                        out.synthetic.push((
                            features.extract(&defect.image)?,
                            defect.cell_labels(grid, SYNTHETIC_MIN_SHARE),
                        ));
                        if let Some(coarse) = coarse_features.as_ref().filter(|_| scored_painted) {
                            out.synthetic_coarse_descriptors
                                .push(coarse.descriptor(&defect.image)?);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "skipping unreadable training image"),
            }
        }
        Ok(out)
    };
    // The good training images in folds, the last being the validation part above: every
    // fold is scored by a model fitted without it (cross-conformal, below). Every fold gets
    // painted defects: the head learns from those of the folds before the validation part
    // (it is fitted once, see below), the score choice is tried on the validation part's.
    // The validation part is painted last, so its defects leave the head's as they were.
    let folds = dataset::split_folds(&good_part, settings.layout, VALIDATION_EVERY);
    let last = folds.len() - 1;
    let mut parts = Vec::with_capacity(folds.len());
    for (i, fold) in folds.iter().enumerate() {
        parts.push(extract_all(
            fold,
            settings.synthetic_defects_per_good,
            i == last,
        )?);
    }
    bar.finish_and_clear();
    let images_in = |parts: &[GoodFeatures]| parts.iter().map(|p| p.images.len()).sum::<usize>();
    if images_in(&parts[..last]) < 2 {
        return Err(AnomalyError::NoGoodImages(settings.data.clone()));
    }
    // The fit chooses the bank's size (when asked to) on the validation images; every later
    // fit keeps it.
    let fit = |learnt: &[&GoodFeatures],
               which: &str,
               bank: BankSize,
               validation: &[&Tensor]|
     -> Result<(PatchCore, Option<BankSizeChoice>), AnomalyError> {
        let patches: Vec<&Tensor> = (learnt.iter())
            .flat_map(|p| p.images.iter().chain(&p.turned))
            .map(|f| &f.patches)
            .collect();
        let descriptors: Vec<Vec<f32>> = (learnt.iter())
            .flat_map(|p| p.images.iter().chain(&p.turned))
            .map(|f| f.descriptor.clone())
            .collect();
        let all = Tensor::cat(&patches, 0)?;
        tracing::info!(
            patches = all.dim(0)?,
            bank = %bank,
            which,
            "selecting the coreset"
        );
        let coarse = match &coarse_features {
            Some(extractor) => {
                let descriptors: Vec<Vec<f32>> = (learnt.iter())
                    .flat_map(|p| {
                        p.coarse_descriptors
                            .iter()
                            .chain(&p.turned_coarse_descriptors)
                    })
                    .cloned()
                    .collect();
                Some(CoarseImage::new(
                    extractor.clone(),
                    ImageGaussian::fit(&descriptors)?,
                ))
            }
            None => None,
        };
        let bar = settings.progress.phase(0, which);
        // The coreset is chosen, and the bank's size measured, in the channels the model's
        // search reads: a map left out is zero in every patch and moves no distance. Both
        // sizes' paths draw from the same cut patches, so a size given draws the coreset the
        // run would have drawn choosing it. Its rows index `all` as they index the cut.
        let stages = features.patch_stages();
        let searched = cut_to_channels(&all, stages)?;
        let (chosen, choice) = match bank {
            BankSize::Fixed(size) => (greedy_coreset(&searched, size, settings.seed, &bar)?, None),
            BankSize::Auto { largest } => {
                let largest = largest.unwrap_or(bank_size::default_largest(
                    grid * grid,
                    stages.channels().len(),
                ));
                let validation = (validation.iter())
                    .map(|patches| cut_to_channels(patches, stages))
                    .collect::<candle_core::Result<Vec<Tensor>>>()?;
                let (choice, coreset) = bank_size::choose(
                    &searched,
                    &validation.iter().collect::<Vec<_>>(),
                    largest,
                    settings.seed,
                    &bar,
                )?;
                tracing::info!(
                    chosen = choice.chosen,
                    trials = ?choice.trials,
                    "bank size chosen"
                );
                (coreset.chosen().to_vec(), Some(choice))
            }
        };
        bar.finish_and_clear();
        // Each fit trains its own discriminator on the patches its bank learnt from, so that
        // a fold's scores come from a discriminator that never saw the fold.
        let judge = if settings.discriminator_steps > 0 {
            let bar = settings.progress.phase(0, "discriminator steps");
            let fitted = NoiseDiscriminator::fit(
                &all,
                stages,
                DiscriminatorSettings {
                    steps: settings.discriminator_steps,
                    noise_std: settings.discriminator_noise_std,
                    seed: settings.seed,
                },
                &bar,
            )?;
            bar.finish_and_clear();
            Some(fitted)
        } else {
            None
        };
        let model = PatchCore::fit(features.clone(), &all, &chosen, &descriptors)?;
        Ok((
            model.with_coarse_image(coarse).with_discriminator(judge),
            choice,
        ))
    };
    // The head learns good patches (every patch of a good image) against the painted ones.
    // It is fitted once, on the folds before the validation part; the painted images'
    // features (tens of megabytes) go with this block. The other folds' models keep it (a
    // head per fold would paint and learn five times over): a linear model over every patch of
    // many images favours the images it saw far less than a bank holding their own patches,
    // which scores them near zero.
    let head = {
        let painted: Vec<(ImageFeatures, Vec<bool>)> = parts[..last]
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.synthetic))
            .collect();
        if painted.is_empty() {
            None
        } else {
            let unpainted = vec![false; grid * grid];
            let examples: Vec<(&Tensor, &[bool])> = (parts[..last].iter())
                .flat_map(|p| p.images.iter().chain(&p.turned))
                .map(|f| (&f.patches, &unpainted[..]))
                .chain(painted.iter().map(|(f, labels)| (&f.patches, &labels[..])))
                .collect();
            tracing::info!(images = examples.len(), "training the patch head");
            let bar = settings.progress.phase(0, "patch head steps");
            let head = PatchHead::fit(&examples, &bar)?;
            bar.finish_and_clear();
            Some(head)
        }
    };
    // The validation part's painted images, for the score choice below.
    let painted_validation = std::mem::take(&mut parts[last].synthetic);
    let painted_validation_coarse = std::mem::take(&mut parts[last].synthetic_coarse_descriptors);
    let fit_parts: Vec<&GoodFeatures> = parts[..last].iter().collect();
    let validation_patches: Vec<&Tensor> = parts[last].images.iter().map(|f| &f.patches).collect();
    let (first, bank_size_choice) = fit(
        &fit_parts,
        "coreset",
        settings.bank_size,
        &validation_patches,
    )?;
    let first = first.with_head(head.clone());
    // Every later fit's bank: the size given, or the one the first fit chose.
    let bank = match &bank_size_choice {
        Some(choice) => BankSize::Fixed(choice.chosen),
        None => settings.bank_size,
    };
    // Scored from the features extracted above: each image is read and seen once.
    let raw_scores = |model: &PatchCore, part: &GoodFeatures| {
        scores_of_features(model, &part.images, &part.coarse_descriptors)
    };
    let validation_scores = raw_scores(&first, &parts[last])?;
    // Which scores count: each alone, on the validation images painted against unpainted, by
    // the first fit, which saw neither ([`score_choice`]).
    let score_choice = {
        let painted_scores = scores_of_features(
            &first,
            painted_validation.iter().map(|(f, _)| f),
            &painted_validation_coarse,
        )?;
        drop(painted_validation);
        (validation_scores.len() >= 2 && !painted_scores.is_empty()).then(|| {
            let choice = score_choice::choose(&validation_scores, &painted_scores);
            tracing::info!(
                counted = ?choice.counted,
                painted_auroc = ?choice.painted_auroc,
                "scores chosen"
            );
            choice
        })
    };
    // The drift reference's inputs: fitted on the first fit's images, its limit chosen on the
    // validation images, which that fit never saw.
    let fit_inputs: Vec<InputStats> = (fit_parts.iter())
        .flat_map(|p| p.inputs.iter().cloned())
        .collect();
    let validation_inputs = parts[last].inputs.clone();
    let mut guarantee = None;
    // With validation images the model shipped learns from every fold, else from the first
    // fit's. One validation image is enough: every fold is then scored by a model that never
    // saw it. The alternative, scoring the training images with the first fit, which holds
    // their own patches, puts the threshold below any new good part's score: KolektorSDD's 7
    // good images (6 fitted, 1 validation) gave a threshold that rejected all 6 held-out good
    // parts.
    let cross_conformal = !validation_scores.is_empty();
    let (model, threshold, threshold_rule, calibration_scores) = if cross_conformal {
        // Cross-conformal: every other fold scored by a bank and image Gaussians fitted without
        // it, so that every good training image calibrates the threshold (magnetic-tile: 179
        // rather than the validation fifth's 35, whose highest score a 5 % target must take),
        // and the model shipped still learns from them all. The promise is split conformal's
        // on these scores, which holds for the model shipped only approximately: it learns
        // from a quarter more images than each fold's model, so a new good part scores lower
        // than they did (on magnetic-tile, by enough to err on the safe side), and the head,
        // shared, saw four of the five folds (which lowers their head scores). Cross-conformal
        // bounds the rate by twice the target at worst (Barber et al., 2021).
        let mut out_of_fold = Vec::new();
        for i in 0..last {
            let learnt: Vec<&GoodFeatures> = (parts.iter().enumerate())
                .filter(|&(j, _)| j != i)
                .map(|(_, p)| p)
                .collect();
            // Never fewer than 2 images learnt: where unreadable images leave fewer outside a
            // fold (a single validation image no longer guarantees 2), it is not scored.
            let learnt_images = images_in(&parts) - parts[i].images.len();
            if parts[i].images.is_empty() || learnt_images < 2 {
                continue;
            }
            let which = format!("coreset without fold {} of {}", i + 1, parts.len());
            let model = fit(&learnt, &which, bank, &[])?.0.with_head(head.clone());
            out_of_fold.extend(raw_scores(&model, &parts[i])?);
        }
        out_of_fold.extend(validation_scores.iter().copied());
        let scale = ScoreScale::from_good_scores(&out_of_fold).map(|scale| match &score_choice {
            Some(choice) => scale.counting_only(&choice.counted),
            None => scale,
        });
        let all_parts: Vec<&GoodFeatures> = parts.iter().collect();
        let model = fit(&all_parts, "coreset of the model", bank, &[])?
            .0
            .with_head(head)
            .with_scale(scale);
        let combined: Vec<f32> = out_of_fold.iter().map(|&s| model.combined(s)).collect();
        let alpha = settings.target_false_reject_rate;
        let (threshold, promise, how) = threshold_for_goods(&combined, alpha);
        guarantee = promise;
        let rule = format!(
            "false-reject rate ≤ {alpha} on {} good training images, each scored by a bank and \
             image Gaussians fitted without its fold ({}-fold cross-conformal; the patch head is \
             shared, and the model shipped learns from all of them, so the promise is \
             approximate): {how}",
            combined.len(),
            parts.len()
        );
        (model, threshold, rule, combined)
    } else {
        // No validation image (fewer good images than folds): scale on the training images
        // themselves (their patch scores are optimistic, the bank holds their patches) and
        // fail above the highest.
        let mut training_scores = Vec::new();
        for part in &fit_parts {
            training_scores.extend(raw_scores(&first, part)?);
        }
        let model = first.with_scale(ScoreScale::from_good_scores(&training_scores));
        let combined: Vec<f32> = training_scores.iter().map(|&s| model.combined(s)).collect();
        let highest = combined.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let threshold = highest + 0.05 * highest.abs().max(1.0);
        let rule = "5 % above the highest training score (no validation image)".to_owned();
        (model, threshold, rule, combined)
    };
    let learnt = if cross_conformal { parts.len() } else { last };
    let n_train_good = images_in(&parts[..learnt]);
    if let Some(choice) = &mut orientation_choice {
        choice.n_turned_images = parts[..learnt].iter().map(|p| p.turned.len()).sum();
    }
    let false_rejects = calibration_scores
        .iter()
        .filter(|&&s| s >= threshold)
        .count();
    let drift = DriftReference::learn(
        &fit_inputs,
        &validation_inputs,
        ProfileImages::Good,
        &calibration_scores,
        (false_rejects, calibration_scores.len()),
        // Scored by each fold's model, or optimistic training scores: the model shipped learnt
        // from all of these images.
        false,
    )
    .map_err(|why| tracing::warn!(%why, "no drift reference on the card"))
    .ok();
    // The images the model shipped learnt from, in fold order.
    let used: Vec<PathBuf> = parts[..learnt]
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.used))
        .collect();
    let training_duration_s = started.elapsed().as_secs_f64();

    let metrics = evaluate(&model, &held_out, threshold, &settings.progress)?;
    // The version names what the station runs: the bank and the threshold.
    let version = hash::version(
        &settings.name,
        ContentHash::new()
            .floats(&model.bank().flatten_all()?.to_vec1::<f32>()?)
            .floats(&[threshold]),
    );
    let architecture = [
        Some("patchcore + image gaussian"),
        model.head().map(|_| "patch head (synthetic defects)"),
        model.coarse_image().map(|_| "coarse image gaussian"),
        model
            .discriminator()
            .map(|_| "noise discriminator (adapted features)"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" + ");
    let family = AnomalyCard {
        input: BackboneInput::of(model.extractor()),
        dataset: settings.data.display().to_string(),
        layout: settings.layout,
        split: format!(
            "every {HOLDOUT_EVERY}th image of each class (sorted by path) held out; trained on good images only"
        ),
        n_train_good,
        n_validation_good: if cross_conformal {
            calibration_scores.len()
        } else {
            validation_scores.len()
        },
        training_data_sha256: dataset::content_digest(used.iter())?,
        bank_size: model.bank().dim(0)?,
        bank_size_choice,
        synthetic_defects_per_good: settings.synthetic_defects_per_good,
        coarse_input_size: model.coarse_image().map(|c| c.extractor().input_size()),
        discriminator: model.discriminator().map(|_| DiscriminatorCard {
            steps: settings.discriminator_steps,
            noise_std: settings.discriminator_noise_std,
            hidden: discriminator::HIDDEN,
        }),
        input_size_choice,
        patch_stages_choice,
        orientation_choice,
        score_scale: model.scale(),
        // The choice is the scale's: without one (too few images to scale on) the model scores
        // the patch distances alone, whatever the trial found.
        score_choice: score_choice.filter(|_| model.scale().is_some()),
        seed: settings.seed,
        training_duration_s,
        metrics,
    };
    let model = AnomalyModel {
        card: ModelCard::new(
            &settings.name,
            version,
            architecture,
            (threshold, threshold_rule),
            family,
        )
        .with_guarantee(guarantee)
        .with_drift(drift),
        model,
    };
    model.save(&settings.out_dir)?;
    Ok(model.card)
}

/// The threshold for a false-reject rate `alpha` on good images' scores, its promise and the
/// promise in words: split conformal where the images are enough, else the plain quantile,
/// which promises nothing.
fn threshold_for_goods(scores: &[f32], alpha: f64) -> (f32, Option<ThresholdGuarantee>, String) {
    match eval::conformal_false_reject_threshold(scores, alpha) {
        Ok((threshold, promise)) => (threshold, Some(promise), promise.describe()),
        Err(few) => (
            eval::threshold_for_false_reject_rate(scores, &vec![false; scores.len()], alpha),
            None,
            format!("the quantile, without a guarantee: {few}"),
        ),
    }
}

/// `model`'s raw scores of images whose features are already extracted, each with its coarse
/// descriptor at the same index in `coarse` (empty for a model without a coarse score).
fn scores_of_features<'a>(
    model: &PatchCore,
    images: impl IntoIterator<Item = &'a ImageFeatures>,
    coarse: &[Vec<f32>],
) -> Result<Vec<RawScores>, AnomalyError> {
    (images.into_iter().enumerate())
        .map(|(i, f)| Ok(model.raw_scores_of(f, coarse.get(i).map(Vec::as_slice))?.0))
        .collect()
}

/// The paths of up to `n` of `samples`, spread evenly over them: the images a trial of the
/// input size or of the orientations reads.
fn trial_paths(samples: &[Sample], n: usize) -> Vec<PathBuf> {
    (input_size::evenly(samples, n).into_iter())
        .map(|s| s.image)
        .collect()
}

/// Features of a set of good images, for the memory bank, the image Gaussians and the head.
#[derive(Default)]
struct GoodFeatures {
    /// Each readable image's patch features and descriptor.
    images: Vec<ImageFeatures>,
    /// Each one's descriptor at the coarse input size, in the same order (empty without a
    /// coarse score).
    coarse_descriptors: Vec<Vec<f32>>,
    /// The images the features came from.
    used: Vec<PathBuf>,
    /// Their input statistics, for the drift reference.
    inputs: Vec<InputStats>,
    /// Features of turned copies of the images ([`orientation`]; of one image in k past the
    /// turned patches' budget): the bank, the image Gaussians and the head learn from them
    /// too; nothing is scored on them.
    turned: Vec<ImageFeatures>,
    /// Their descriptors at the coarse input size (empty without a coarse score).
    turned_coarse_descriptors: Vec<Vec<f32>>,
    /// Defects painted on those images: their features and which patches are painted (the
    /// head learns from those on the first fit's folds, the score choice is tried on the
    /// validation part's).
    synthetic: Vec<(ImageFeatures, Vec<bool>)>,
    /// The validation part's painted images' descriptors at the coarse input size, in the
    /// same order (empty elsewhere, and without a coarse score).
    synthetic_coarse_descriptors: Vec<Vec<f32>>,
}

/// The part of a dataset training held out, and what it is in words.
pub fn held_out_part(samples: &[Sample]) -> (Vec<Sample>, String) {
    (
        dataset::split_every(samples, HOLDOUT_EVERY).1,
        format!(
            "the held-out part (the dataset's own test split, else every {HOLDOUT_EVERY}th \
             image of each class)"
        ),
    )
}

/// Scores every held-out sample; unreadable images are skipped and counted.
pub fn evaluate(
    model: &PatchCore,
    samples: &[Sample],
    threshold: f32,
    progress: &Progress,
) -> Result<AnomalyMetrics, AnomalyError> {
    evaluate_each(model, samples, threshold, progress).map(|(metrics, _)| metrics)
}

/// One image's scores in an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScore {
    pub image: std::path::PathBuf,
    /// `good`, or the defect class.
    pub class: String,
    /// The model's score (what the threshold is held against).
    pub score: f32,
    /// The scores it sums, before they are combined.
    pub raw: RawScores,
}

/// [`evaluate`], with every scored image's scores (in the samples' order, unreadable ones
/// left out): which parts a model misjudges, and by which of its scores.
pub fn evaluate_each(
    model: &PatchCore,
    samples: &[Sample],
    threshold: f32,
    progress: &Progress,
) -> Result<(AnomalyMetrics, Vec<ImageScore>), AnomalyError> {
    let (mut each, mut labels) = (Vec::new(), Vec::new());
    let mut pixels = PixelTruth::default();
    let mut n_skipped = 0;
    let bar = progress.phase(samples.len(), "held-out images");
    for sample in samples {
        bar.check()?;
        bar.inc(1);
        let image = match dataset::load_gray(&sample.image) {
            Ok(image) => image,
            Err(error) => {
                tracing::warn!(%error, "skipping unreadable test image");
                n_skipped += 1;
                continue;
            }
        };
        let (raw, heat_map) = model.raw_scores(&image)?;
        each.push(ImageScore {
            image: sample.image.clone(),
            class: sample.class.clone(),
            score: model.combined(raw),
            raw,
        });
        labels.push(sample.defective());
        let mask = match &sample.mask {
            Some(path) => match dataset::load_mask(path) {
                Ok(mask) if (mask.width, mask.height) == (image.width, image.height) => Some(mask),
                Ok(_) | Err(_) => {
                    tracing::warn!(mask = %path.display(), "mask missing or not the image's size; pixel metrics skip it");
                    None
                }
            },
            None if !sample.defective() => Some(GrayImage {
                width: image.width,
                height: image.height,
                pixels: vec![0; image.pixels.len()],
            }),
            None => None,
        };
        if let Some(mask) = mask {
            pixels.add(&heat_map, &mask);
        }
    }
    bar.finish_and_clear();
    let scores: Vec<f32> = each.iter().map(|s| s.score).collect();
    let good_scores: Vec<f32> = scores
        .iter()
        .zip(&labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    let mut per_class: BTreeMap<String, ClassAnomalyMetrics> = BTreeMap::new();
    for class in (each.iter().map(|s| &s.class)).collect::<std::collections::BTreeSet<_>>() {
        let class_scores: Vec<f32> = (each.iter())
            .filter(|s| &s.class == class)
            .map(|s| s.score)
            .collect();
        let auroc_vs_good = (class != "good")
            .then(|| {
                let both: Vec<f32> = class_scores.iter().chain(&good_scores).copied().collect();
                let both_labels: Vec<bool> = class_scores
                    .iter()
                    .map(|_| true)
                    .chain(good_scores.iter().map(|_| false))
                    .collect();
                eval::auroc(&both, &both_labels)
            })
            .flatten();
        per_class.insert(
            class.clone(),
            ClassAnomalyMetrics {
                n: class_scores.len(),
                flagged: class_scores.iter().filter(|s| **s >= threshold).count(),
                auroc_vs_good,
            },
        );
    }
    let metrics = AnomalyMetrics {
        detection: DetectionMetrics::from_scores(
            &scores,
            &labels,
            n_skipped,
            pixels.auroc(),
            pixels.pro(),
        ),
        at_threshold: eval::at_threshold(&scores, &labels, threshold),
        per_class,
        score_auroc: ScoreAuroc::of(&each.iter().map(|s| s.raw).collect::<Vec<_>>(), &labels),
    };
    Ok((metrics, each))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_score_is_judged_alone_where_every_image_has_it() {
        let raw = |patch: f32, image: f32, head: Option<f32>| RawScores {
            patch,
            image: Some(image),
            head,
            coarse_image: None,
            discriminator: None,
        };
        // The patch score ranks every defect above every good part; the image score the
        // other way round; one image has no head score.
        let scores = [
            raw(1.0, 4.0, Some(0.5)),
            raw(2.0, 3.0, Some(0.1)),
            raw(3.0, 2.0, None),
            raw(4.0, 1.0, Some(0.2)),
        ];
        let labels = [false, false, true, true];
        let alone = ScoreAuroc::of(&scores, &labels);
        assert_eq!(alone.patch, Some(1.0));
        assert_eq!(alone.image, Some(0.0));
        assert_eq!((alone.head, alone.coarse_image), (None, None));
        assert!(!alone.is_empty());
        // Images of one kind rank nothing.
        assert!(ScoreAuroc::of(&scores, &[true; 4]).is_empty());
    }

    #[test]
    fn an_input_size_is_auto_or_pixels() {
        assert_eq!("auto".parse(), Ok(InputSize::Auto { largest: 256 }));
        assert_eq!("auto:512".parse(), Ok(InputSize::Auto { largest: 512 }));
        assert!("auto:64".parse::<InputSize>().is_err());
        assert!("auto:big".parse::<InputSize>().is_err());
        assert_eq!("256".parse(), Ok(InputSize::Fixed(256)));
        let refused = "big".parse::<InputSize>().expect_err("not a size");
        assert!(refused.contains("nor a size in pixels"), "{refused}");
        // Written as it is read (the CLI shows its defaults so).
        for text in ["auto", "auto:512", "256"] {
            let size: InputSize = text.parse().expect("a size");
            assert_eq!(size.to_string(), text);
        }
    }
}
