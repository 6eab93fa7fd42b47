//! The model families, one folder each: the model, its training, and its part of the card.
//!
//! * [`backbone`]: EfficientNet-Lite0 or Lite1 (ImageNet) in candle, and [`backbone::PatchFeatures`],
//!   the frozen feature extractor the anomaly and supervised models share.
//! * [`defect_net`]: the small network the simulated line ships with, trained on synthetic parts.
//! * [`anomaly`]: the cold-start model, learnt from good parts only (PatchCore and friends).
//! * [`supervised`]: per-patch defect segmentation, once defects are labelled.
//!
//! Every model has a [`card::ModelCard`] (the fields every model has, and its family's
//! section) and runs behind one trait, [`Detector`]; [`load`] opens any saved model by the kind
//! its card names. That is all the station ([`crate::inspect`]) knows of the families. What
//! they learn with (datasets, augmentation, metrics, threshold rules) is in [`crate::learn`].

pub mod anomaly;
pub mod backbone;
pub mod boxes;
pub mod card;
pub mod defect_net;
pub mod lanes;
pub mod supervised;
pub mod template;

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::models::anomaly::AnomalyModel;
use crate::models::anomaly::train::AnomalyError;
use crate::models::backbone::WeightsSearch;
use crate::models::boxes::{DefectBox, cell_boxes};
use crate::models::card::{CardError, CardHead};
use crate::models::defect_net::DefectModel;
use crate::models::supervised::SupervisedModel;
use crate::models::template::TemplateModel;
use crate::part::{GrayImage, HeatMap};

/// The kinds [`load`] opens, as cards name them.
pub const KINDS: [&str; 4] = [
    defect_net::KIND,
    anomaly::KIND,
    supervised::KIND,
    template::KIND,
];

/// What the station needs of a model, whatever its family.
pub trait Detector: Send + Sync + std::fmt::Debug {
    /// The card's head: name, version, kind, threshold.
    fn head(&self) -> &CardHead;

    /// The image size it needs, when it needs one (the others resample any image).
    fn input_size(&self) -> Option<(u32, u32)> {
        None
    }

    /// Why `threshold` cannot be used with this model's scores, if it cannot. The trained
    /// families score a probability: a threshold outside (0, 1] would pass or reject
    /// everything.
    fn threshold_problem(&self, threshold: f32) -> Option<String> {
        (!(threshold > 0.0 && threshold <= 1.0)).then(|| {
            format!(
                "{threshold} is not a probability in (0, 1], the scale of a {} model's score",
                self.head().kind
            )
        })
    }

    /// The score (a probability for the trained families, standard deviations above good
    /// parts for the anomaly model) and the heat map on the same scale ([`HeatMap`]). A score
    /// that is not a number is an error, never a pass.
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError>;

    /// [`Detector::score`], with the most likely defect class for families that know classes
    /// (the supervised family). The station asks this once per frame.
    fn judge(&self, image: &GrayImage) -> Result<Judgement, ModelError> {
        let (score, heat_map) = self.score(image)?;
        Ok(Judgement {
            score,
            heat_map,
            defect_class: None,
            patch_class: Vec::new(),
            rejecting: None,
            boxes: None,
        })
    }

    /// [`Detector::judge`], and, when `tolerated` names classes this model knows, the score
    /// of its other classes alone ([`Judgement::rejecting`]): what a part with a tolerated
    /// stain and a small crack must still be rejected on. Families that know no classes
    /// ignore `tolerated`.
    fn judge_tolerating(
        &self,
        image: &GrayImage,
        tolerated: &[&str],
    ) -> Result<Judgement, ModelError> {
        let _ = tolerated;
        self.judge(image)
    }

    /// The defects in its `judgement`'s heat map (on the model's score scale) outlined as boxes on
    /// the `width`×`height` image it was judged from, hottest first: what the station records
    /// for a failed part (and a passed one whose defect class is tolerated), and shows over its
    /// image. By default one box per blob of whole cells
    /// at or past `threshold` ([`cell_boxes`]), each a cell that would, as the image's score,
    /// reject the part.
    fn defect_boxes(
        &self,
        judgement: &Judgement,
        width: u32,
        height: u32,
        threshold: f32,
    ) -> Vec<DefectBox> {
        cell_boxes(&judgement.heat_map, width, height, threshold)
    }

    /// [`Detector::judge_tolerating`] of several images at once, each with its own result in
    /// order: parts that queued up, or one part's views from several cameras. A family that
    /// can score a batch in one pass (the anomaly model) does, and falls back to one image at
    /// a time when the batch fails, so that one bad image never fails its neighbours.
    fn judge_many(
        &self,
        images: &[&GrayImage],
        tolerated: &[&str],
    ) -> Vec<Result<Judgement, ModelError>> {
        images
            .iter()
            .map(|image| self.judge_tolerating(image, tolerated))
            .collect()
    }
}

/// What a model says about one image.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub score: f32,
    pub heat_map: HeatMap,
    /// The most likely defect class by the model's own names, whatever the score; `None` for
    /// families that learn no classes.
    pub defect_class: Option<String>,
    /// Each heat-map cell's likeliest defect class, an index into the family's own classes
    /// (the supervised family's card); empty for families that learn no classes.
    pub patch_class: Vec<u8>,
    /// From [`Detector::judge_tolerating`]: the score of the classes not tolerated alone (on
    /// the scale of `score`) and the likeliest of them; `None` when nothing it knows was
    /// tolerated, or the family cannot tell its classes apart.
    pub rejecting: Option<RejectingScore>,
    /// Boxes the family drew itself, every defect it found with its own score (the template
    /// family); `None` for families whose boxes are drawn from the heat map.
    pub boxes: Option<Vec<DefectBox>>,
}

/// A score with the tolerated classes left out.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectingScore {
    pub score: f32,
    /// `None` when every class the model knows is tolerated.
    pub class: Option<String>,
}

/// Loads the model saved in `dir`, of whichever family its card names. `weights` finds the
/// pretrained backbone's weights, for the families built on it.
pub fn load(
    dir: &Path,
    weights: &WeightsSearch,
    device: &Device,
) -> Result<Box<dyn Detector>, ModelError> {
    let head = CardHead::read(dir)?;
    Ok(match head.kind.as_str() {
        defect_net::KIND => Box::new(DefectModel::load(dir, device)?),
        anomaly::KIND => Box::new(AnomalyModel::load(dir, weights, device)?),
        supervised::KIND => Box::new(SupervisedModel::load(dir, weights, device)?),
        template::KIND => Box::new(TemplateModel::load_for_station(dir)?),
        _ => {
            return Err(ModelError::UnknownKind {
                dir: dir.to_owned(),
                kind: head.kind,
            });
        }
    })
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("model {dir}: the station runs {KINDS:?} models, not {kind:?}")]
    UnknownKind { dir: PathBuf, kind: String },
    #[error("model {dir}: cannot read {file}: {source}")]
    Read {
        dir: PathBuf,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("model {dir}: architecture {got:?} is not supported (expected {want:?})")]
    Architecture {
        dir: PathBuf,
        got: String,
        want: &'static str,
    },
    #[error("model {dir}: weights: {source}")]
    Weights {
        dir: PathBuf,
        source: candle_core::Error,
    },
    /// A template model could not compare a part with its reference.
    #[error("template comparison: {0}")]
    Template(String),
    #[error("model {dir}: threshold {threshold} is outside (0, 1]")]
    Threshold { dir: PathBuf, threshold: f32 },
    /// A model on the pretrained backbone: its backbone, bank or head could not be loaded.
    #[error(transparent)]
    Backbone(#[from] AnomalyError),
    #[error("image is {got_width}x{got_height}, the model takes {want_width}x{want_height}")]
    InputSize {
        got_width: u32,
        got_height: u32,
        want_width: u32,
        want_height: u32,
    },
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("the model produced a non-finite score")]
    NonFinite,
}

/// The f32 values of a contiguous CPU tensor's storage, for the CPU kernels.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(values) = storage else {
        candle_core::bail!("expected f32 values");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// Runs `work` on one of rayon's worker threads, or right here when already on one.
///
/// A model's forward pass is a chain of a few dozen short parallel kernels (each 0.1–1 ms).
/// Started from a thread outside the pool, such as the inspector's, every kernel is a cold
/// start: its job is queued for the pool, the caller sleeps on a latch, and the workers wake
/// for it and doze off after. Started on a worker, the kernels fork and join on a pool that
/// stays warm. The backbone at 256×256 took 6.95 ms this way against 8.1 ms from outside.
pub fn on_worker_thread<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}
