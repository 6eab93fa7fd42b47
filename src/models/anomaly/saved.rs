//! The anomaly model as saved: its section of the card, the bank file beside it (memory bank,
//! image Gaussians, patch head, discriminator), loading and saving, and how the station runs it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::learn::dataset::Layout;
use crate::learn::eval::{self, DetectionMetrics, ThresholdMetrics};
use crate::models::anomaly::bank_size::BankSizeChoice;
use crate::models::anomaly::discriminator::TENSOR_NAMES as DISCRIMINATOR_TENSORS;
use crate::models::anomaly::input_size::InputSizeChoice;
use crate::models::anomaly::orientation::OrientationChoice;
use crate::models::anomaly::patch_stages::PatchStagesChoice;
use crate::models::anomaly::score_choice::ScoreChoice;
use crate::models::anomaly::train::AnomalyError;
use crate::models::anomaly::{
    CoarseImage, ImageGaussian, KIND, NoiseDiscriminator, PatchCore, PatchHead, RawScores,
    ScoreKind, ScoreScale,
};
use crate::models::backbone::{BackboneInput, WeightsSearch, check_input_size};
use crate::models::card::{CARD_FILE, CardHead, Family, ModelCard};
use crate::models::{Detector, Judgement, ModelError};
use crate::part::{GrayImage, HeatMap};

/// Bank file inside an anomaly model folder.
pub const BANK_FILE: &str = "memory-bank.safetensors";

/// The image Gaussian's tensors in the bank file.
const IMAGE_MEAN_TENSOR: &str = "image_mean";
const IMAGE_PRECISION_TENSOR: &str = "image_precision";

/// The patch head's tensors in the bank file.
const HEAD_WEIGHT_TENSOR: &str = "head_weight";
const HEAD_BIAS_TENSOR: &str = "head_bias";

/// The coarse image Gaussian's tensors in the bank file.
const COARSE_MEAN_TENSOR: &str = "coarse_image_mean";
const COARSE_PRECISION_TENSOR: &str = "coarse_image_precision";

/// Held-out metrics of an anomaly model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnomalyMetrics {
    #[serde(flatten)]
    pub detection: DetectionMetrics,
    /// At the card's threshold (chosen on validation images, not these).
    pub at_threshold: ThresholdMetrics,
    /// Per class: how many, how many flagged at that threshold, and AUROC against the good images.
    pub per_class: BTreeMap<String, ClassAnomalyMetrics>,
    /// The image AUROC of each of the model's scores alone: which of them finds this
    /// product's defects (absent in cards written before it, and then not written).
    #[serde(default, skip_serializing_if = "ScoreAuroc::is_empty")]
    pub score_auroc: ScoreAuroc,
}

/// The image AUROC of each score the model sums ([`super::RawScores`]), each on its own;
/// `None` for a score the model has not, or where the images are of one kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreAuroc {
    /// The patch distances to the memory bank.
    pub patch: Option<f64>,
    /// The image descriptor's Gaussian.
    pub image: Option<f64>,
    /// The patch head, taught by painted defects.
    pub head: Option<f64>,
    /// The image descriptor's Gaussian at the coarse input.
    pub coarse_image: Option<f64>,
    /// The discriminator in the adapted feature space (absent in cards written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discriminator: Option<f64>,
}

impl ScoreAuroc {
    /// The image AUROC of each of `raw_scores` alone against `labels` (true: defective),
    /// where every image has that score.
    pub fn of(raw_scores: &[RawScores], labels: &[bool]) -> ScoreAuroc {
        let alone = |kind: ScoreKind| {
            let values: Option<Vec<f32>> = raw_scores.iter().map(|r| kind.of(r)).collect();
            values.and_then(|values| eval::auroc(&values, labels))
        };
        ScoreAuroc {
            patch: alone(ScoreKind::Patch),
            image: alone(ScoreKind::Image),
            head: alone(ScoreKind::Head),
            coarse_image: alone(ScoreKind::CoarseImage),
            discriminator: alone(ScoreKind::Discriminator),
        }
    }

    /// `kind`'s AUROC.
    pub fn of_kind(&self, kind: ScoreKind) -> Option<f64> {
        match kind {
            ScoreKind::Patch => self.patch,
            ScoreKind::Image => self.image,
            ScoreKind::Head => self.head,
            ScoreKind::CoarseImage => self.coarse_image,
            ScoreKind::Discriminator => self.discriminator,
        }
    }

    /// No score's AUROC (a card written before them).
    pub fn is_empty(&self) -> bool {
        *self == ScoreAuroc::default()
    }
}

/// The discriminator's training, as the card records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiscriminatorCard {
    pub steps: usize,
    /// The noise's standard deviation, in standardised channel units.
    pub noise_std: f32,
    /// Width of the hidden layer.
    pub hidden: usize,
}

/// One class's share of the evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassAnomalyMetrics {
    pub n: usize,
    pub flagged: usize,
    /// This class against the good images; `None` for the good class itself.
    pub auroc_vs_good: Option<f64>,
}

/// The anomaly model's section of its card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnomalyCard {
    #[serde(flatten)]
    pub input: BackboneInput,
    pub dataset: String,
    pub layout: Layout,
    pub split: String,
    /// Good images the bank and image Gaussians were fitted on (validation included).
    pub n_train_good: usize,
    /// Good training images the scores are scaled and the threshold chosen on, each scored
    /// by a bank and image Gaussians fitted without it: every one of them, each by its fold's
    /// model, since 2026-12-07 (cross-conformal); before, the validation fifth alone, by a
    /// first fit.
    pub n_validation_good: usize,
    /// SHA-256 over the bank's training images' names and bytes.
    pub training_data_sha256: String,
    pub bank_size: usize,
    /// How the training run chose the bank's size ([`super::bank_size`]); absent where it was
    /// given, and in models trained before the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_size_choice: Option<BankSizeChoice>,
    /// Defects painted on each good training image to train the patch head (0 in models
    /// trained before the head).
    #[serde(default)]
    pub synthetic_defects_per_good: usize,
    /// Input size of the coarse image score (absent in models without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coarse_input_size: Option<usize>,
    /// How the discriminator was trained ([`super::discriminator`]); absent in models without
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discriminator: Option<DiscriminatorCard>,
    /// How the training run chose the input size (absent where it was given, and in models
    /// trained before the choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size_choice: Option<InputSizeChoice>,
    /// How the training run chose the feature maps the patch features keep (absent where
    /// they were given, and in models trained before the choice); the maps themselves are the
    /// backbone input's `patch_stages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_stages_choice: Option<PatchStagesChoice>,
    /// The turned copies of the good images the bank learnt from, how they were chosen and
    /// every candidate's trial ([`super::orientation`]); absent in models trained before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation_choice: Option<OrientationChoice>,
    /// How the patch, image, head, coarse image and discriminator scores combine (absent in
    /// models trained before the image score: their score is the patch score).
    #[serde(default)]
    pub score_scale: Option<ScoreScale>,
    /// Which scores the training run chose to sum, and each one's trial
    /// ([`super::score_choice`]); absent where there was nothing to choose on (no painted
    /// defects, too few validation images) and in models trained before the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_choice: Option<ScoreChoice>,
    pub seed: u64,
    pub training_duration_s: f64,
    pub metrics: AnomalyMetrics,
}

impl Family for AnomalyCard {
    const KIND: &'static str = KIND;
}

/// A saved anomaly model, loaded: the scorer and its card. The card's threshold is in
/// standard deviations above good images the model did not learn from, not a probability.
#[derive(Debug, Clone)]
pub struct AnomalyModel {
    pub model: PatchCore,
    pub card: ModelCard<AnomalyCard>,
}

impl AnomalyModel {
    /// Loads the model saved in `dir`, on the backbone weights its card names, found by
    /// `weights`.
    pub fn load(
        dir: &Path,
        weights: &WeightsSearch,
        device: &Device,
    ) -> Result<AnomalyModel, AnomalyError> {
        let full_card = ModelCard::<AnomalyCard>::read(dir)?;
        let card = &full_card.family;
        let card_path = dir.join(CARD_FILE);
        let card_error = |message: String| AnomalyError::File {
            path: card_path.clone(),
            message,
        };
        check_input_size(card.input.input_size).map_err(card_error)?;
        if let Some(size) = card.coarse_input_size {
            check_input_size(size).map_err(|m| card_error(format!("coarse image score: {m}")))?;
        }
        // What the scale leaves out is what the choice did not count, and never the patch
        // score: the heat map a rejected part's regions come from is its.
        if let Some(scale) = card.score_scale {
            if scale.left_out.contains(ScoreKind::Patch) {
                return Err(card_error(
                    "`score_scale.left_out` names the patch score, which every model sums".into(),
                ));
            }
            if let Some(choice) = &card.score_choice
                && scale.counting_only(&choice.counted).left_out != scale.left_out
            {
                return Err(card_error(
                    "`score_scale.left_out` is not what `score_choice.counted` leaves out".into(),
                ));
            }
        } else if card.score_choice.is_some() {
            return Err(card_error(
                "a `score_choice` without the `score_scale` it chose for".into(),
            ));
        }
        // The threshold was set on the sum of the scores the scale names: a coarse score with
        // no spread to scale it, or a spread with no coarse score, would sum other terms.
        let scaled = card.score_scale.is_some_and(|s| s.coarse_image.is_some());
        if card.coarse_input_size.is_some() != scaled && card.score_scale.is_some() {
            return Err(card_error(
                "the coarse image score's input size and its spread in `score_scale` must come \
             together"
                    .into(),
            ));
        }
        // Likewise the discriminator's score and its spread.
        let judged = card.score_scale.is_some_and(|s| s.discriminator.is_some());
        if card.discriminator.is_some() != judged && card.score_scale.is_some() {
            return Err(card_error(
                "the discriminator's settings and its spread in `score_scale` must come together"
                    .into(),
            ));
        }
        let bank_path = dir.join(BANK_FILE);
        let tensors = candle_core::safetensors::load(&bank_path, device)?;
        let bank = tensors
            .get("bank")
            .cloned()
            .ok_or_else(|| AnomalyError::File {
                path: bank_path.clone(),
                message: "no `bank` tensor".into(),
            })?;
        let features = card.input.extractor(weights, dir, device)?;
        let mut model = PatchCore::from_bank(features, bank)?.with_scale(card.score_scale);
        if let (Some(mean), Some(precision)) = (
            tensors.get(IMAGE_MEAN_TENSOR),
            tensors.get(IMAGE_PRECISION_TENSOR),
        ) {
            model = model.with_image_gaussian(ImageGaussian::from_tensors(mean, precision)?);
        }
        if let (Some(weight), Some(bias)) = (
            tensors.get(HEAD_WEIGHT_TENSOR),
            tensors.get(HEAD_BIAS_TENSOR),
        ) {
            model = model.with_head(Some(PatchHead::from_tensors(weight, bias)?));
        }
        if let Some(size) = card.coarse_input_size {
            let (Some(mean), Some(precision)) = (
                tensors.get(COARSE_MEAN_TENSOR),
                tensors.get(COARSE_PRECISION_TENSOR),
            ) else {
                return Err(AnomalyError::File {
                    path: bank_path,
                    message: format!(
                        "the card names a coarse image score, but `{COARSE_MEAN_TENSOR}` or \
                     `{COARSE_PRECISION_TENSOR}` is missing"
                    ),
                });
            };
            let coarse = CoarseImage::new(
                model.extractor().clone().with_input_size(size),
                ImageGaussian::from_tensors(mean, precision)?,
            );
            model = model.with_coarse_image(Some(coarse));
        }
        if let Some(settings) = card.discriminator {
            let found: Option<Vec<&candle_core::Tensor>> = DISCRIMINATOR_TENSORS
                .iter()
                .map(|&name| tensors.get(name))
                .collect();
            let Some([a, b, c, d, e]) = found.as_deref() else {
                return Err(AnomalyError::File {
                    path: bank_path,
                    message: format!(
                        "the card names a discriminator, but one of {} is missing",
                        DISCRIMINATOR_TENSORS.join(", ")
                    ),
                });
            };
            let discriminator = NoiseDiscriminator::from_tensors(
                [*a, *b, *c, *d, *e],
                model.extractor().patch_stages(),
                device,
            )
            .map_err(|e| AnomalyError::File {
                path: bank_path.clone(),
                message: e.to_string(),
            })?;
            if discriminator.hidden() != settings.hidden {
                return Err(card_error(format!(
                    "the card's discriminator has {} hidden units, its tensors {}",
                    settings.hidden,
                    discriminator.hidden()
                )));
            }
            model = model.with_discriminator(Some(discriminator));
        }
        Ok(AnomalyModel {
            model,
            card: full_card,
        })
    }

    /// Writes the bank file (bank, image Gaussians, head, discriminator) and the card to `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), AnomalyError> {
        let model = &self.model;
        let file_error = |path: &Path, e: &dyn std::fmt::Display| AnomalyError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, &e))?;
        let bank_path = dir.join(BANK_FILE);
        let mut tensors = HashMap::from([("bank".to_owned(), model.bank().clone())]);
        if let Some(gaussian) = model.image_gaussian() {
            let (mean, precision) = gaussian.to_tensors(model.bank().device())?;
            tensors.insert(IMAGE_MEAN_TENSOR.to_owned(), mean);
            tensors.insert(IMAGE_PRECISION_TENSOR.to_owned(), precision);
        }
        if let Some(head) = model.head() {
            let (weight, bias) = head.to_tensors()?;
            tensors.insert(HEAD_WEIGHT_TENSOR.to_owned(), weight);
            tensors.insert(HEAD_BIAS_TENSOR.to_owned(), bias);
        }
        if let Some(coarse) = model.coarse_image() {
            let (mean, precision) = coarse.gaussian().to_tensors(model.bank().device())?;
            tensors.insert(COARSE_MEAN_TENSOR.to_owned(), mean);
            tensors.insert(COARSE_PRECISION_TENSOR.to_owned(), precision);
        }
        if let Some(discriminator) = model.discriminator() {
            for (name, tensor) in DISCRIMINATOR_TENSORS
                .iter()
                .zip(discriminator.to_tensors()?)
            {
                tensors.insert((*name).to_owned(), tensor);
            }
        }
        candle_core::safetensors::save(&tensors, &bank_path)?;
        Ok(self.card.write(dir)?)
    }
}

impl Detector for AnomalyModel {
    fn head(&self) -> &CardHead {
        &self.card.head
    }

    /// The score is a sum of standard deviations above good parts: any finite threshold means
    /// something (the trained card's is usually a few deviations).
    fn threshold_problem(&self, threshold: f32) -> Option<String> {
        (!threshold.is_finite())
            .then(|| format!("{threshold} is not a number of standard deviations above good parts"))
    }

    /// The combined score, and each patch's distance on the patch score's scale (standard
    /// deviations above good images' patch scores, where the card has a scale). The patch
    /// score is the mean of an image's few highest patches, so a patch at the threshold's
    /// number of deviations marks a region that, as large as those few patches and with the
    /// image's other scores typical of good parts, would reject the part: the scale shows where
    /// the threshold lies, not a promise for each patch. A raw distance against a threshold in
    /// deviations saturated every heat map the station stored.
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
        let (score, heat_map) = self.model.score(image)?;
        self.scored(score, heat_map)
    }

    /// One pass through the backbone for all the images ([`PatchCore::raw_scores_many`]).
    fn judge_many(
        &self,
        images: &[&GrayImage],
        _tolerated: &[&str],
    ) -> Vec<Result<Judgement, ModelError>> {
        let batch = match images {
            [_, _, ..] => self.model.raw_scores_many(images),
            _ => return images.iter().map(|image| self.judge(image)).collect(),
        };
        match batch {
            Ok(scored) => scored
                .into_iter()
                .map(|(raw, heat_map)| {
                    let (score, heat_map) = self.scored(self.model.combined(raw), heat_map)?;
                    Ok(Judgement {
                        score,
                        heat_map,
                        defect_class: None,
                        patch_class: Vec::new(),
                        rejecting: None,
                        boxes: None,
                    })
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, images = images.len(), "batch failed; scoring one by one");
                images.iter().map(|image| self.judge(image)).collect()
            }
        }
    }
}

impl AnomalyModel {
    /// A combined score and raw heat map as the station sees them: a score that is not a
    /// number is an error, and the heat map is put on the patch score's scale.
    fn scored(&self, score: f32, mut heat_map: HeatMap) -> Result<(f32, HeatMap), ModelError> {
        if !score.is_finite() {
            return Err(ModelError::NonFinite);
        }
        if let Some(scale) = self.card.family.score_scale {
            for value in &mut heat_map.values {
                *value = (*value - scale.patch_mean) / scale.patch_std;
            }
        }
        Ok((score, heat_map))
    }
}
