//! The golden-template family: each part compared with a defect-free image of the same product,
//! as printed-circuit inspection compares a board with its golden board.
//!
//! Where every part of a product should look the same to the pixel (a board, a printed label,
//! a stamped sheet, registered by the fixture or the camera's crop), the difference from a good
//! part's image is the defect, and finds defects a few pixels wide that a patch grid of 8 input
//! pixels draws coarsely. Three steps ([`compare`], [`classifier`]):
//! 1. both images cut at Otsu's threshold, the part aligned on its reference within the reach
//!    its training measured its parts to need, and the places where it differs deeply enough
//!    from the reference's edges found as candidates, each with measurements (depth,
//!    thickness, size, whether it adds or takes pattern, whether it joins or splits the
//!    pattern, whether it reaches the reference's edge);
//! 2. a classifier learnt from labelled boxes says which candidates are defects and of which
//!    type: a scan's noise and a wandering edge are its "no defect";
//! 3. each defect's box is its core grown by the margin the labellers draw around defects
//!    (learnt from the same boxes), scored by the defect's probability.
//!
//! The part's score is its likeliest defect's probability (0 without a candidate). A model
//! runs in a station with its product's golden image beside its card ([`REFERENCE_FILE`]);
//! training on pairs (DeepPCB's tested boards and their templates) needs none, each part
//! bringing its own.

pub mod classifier;
pub mod compare;
pub mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::learn::dataset::{self, Layout};
use crate::learn::eval::BoxMetrics;
use crate::models::boxes::DefectBox;
use crate::models::card::{CardHead, Family, ModelCard};
use crate::models::{Detector, Judgement, ModelError, RejectingScore};
use crate::part::{GrayImage, HeatMap};

pub use self::classifier::{Classifier, ClassifierError, NO_DEFECT};
pub use self::compare::{
    Candidate, CompareError, CompareSettings, PatternSide, PreparedReference, compare,
    compare_prepared,
};
pub use self::train::{TemplateError, TemplateSettings, evaluate, held_out_part, train};

/// The card's `kind`.
pub const KIND: &str = "template";

/// The product's golden image in a model's folder, which a station compares each part with.
pub const REFERENCE_FILE: &str = "reference.png";

/// The side of a heat-map cell, in image pixels: the map the station shows over the part.
pub const HEAT_MAP_CELL: u32 = 8;

/// The largest box margin a card may give (a hand-edited card could give any).
pub const MAX_BOX_MARGIN_PX: u32 = 256;

/// The family's section of the card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateCard {
    /// How parts are compared with their reference.
    pub compare: CompareSettings,
    /// Which candidates are defects, and of which type.
    pub classifier: Classifier,
    /// Pixels added on each side of a defect's core for its box: the median margin the
    /// training's labelled boxes leave around the cores they contain.
    pub box_margin_px: u32,
    pub dataset: String,
    pub training_data_sha256: String,
    pub layout: Layout,
    pub split: String,
    /// Parts (with their references) the classifier was fitted on, their labelled boxes and
    /// the candidates found on them.
    pub n_train: usize,
    pub n_train_boxes: usize,
    pub n_train_candidates: usize,
    /// Parts held back from a first fit to choose the threshold.
    pub n_validation: usize,
    /// The first fit's boxes on them: what the threshold was chosen by, and a figure of the
    /// training part that never touches the held-out one.
    pub validation_boxes: Option<BoxMetrics>,
    /// How the run chose `compare`'s depth, join and crumb size; `None` where it kept them as
    /// given.
    #[serde(default)]
    pub compare_choice: Option<CompareChoice>,
    /// How the run chose how far `compare` searches to align a part; `None` where it kept
    /// the reach given.
    #[serde(default)]
    pub alignment_choice: Option<AlignmentChoice>,
    pub training_duration_s: f64,
    /// On the held-out parts.
    pub metrics: TemplateMetrics,
}

impl Family for TemplateCard {
    const KIND: &'static str = KIND;
}

/// How a training run chose its comparison settings on its validation parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareChoice {
    /// The settings given first, then every other pair tried.
    pub trials: Vec<CompareTrial>,
    /// How the choice is made, in words.
    pub rule: String,
    /// The settings chosen.
    pub min_depth_px: f32,
    pub join_px: u32,
    /// Then, at the depth and join chosen, the crumb sizes tried beside the given one
    /// ([`CompareSettings::min_island_px`]); empty on a card from before this choice.
    #[serde(default)]
    pub island_trials: Vec<IslandTrial>,
    /// The crumb size chosen; `None` on a card from before this choice.
    #[serde(default)]
    pub min_island_px: Option<usize>,
}

/// One crumb size tried, and what the validation parts measured at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IslandTrial {
    pub min_island_px: usize,
    /// As [`CompareTrial::validation_map`].
    pub validation_map: Option<f64>,
}

/// How a training run chose how far its comparison searches to align a part with its
/// reference: how far its parts sit off their references, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentChoice {
    /// How many of the training parts measured sat each distance off their references: the
    /// count at index `i` sat `i` pixels off (the larger axis), measured by
    /// [`PreparedReference::offset_of`] with the widest search the comparison has
    /// ([`compare::MAX_ALIGN_PX`], or less on parts too small for it).
    pub parts_by_offset_px: Vec<usize>,
    /// The farthest any of them sat.
    pub largest_offset_px: u32,
    /// How the choice is made, in words.
    pub rule: String,
    /// The reach chosen ([`CompareSettings::align_px`]).
    pub align_px: u32,
}

/// One pair of settings tried, and what the validation parts measured at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareTrial {
    pub min_depth_px: f32,
    pub join_px: u32,
    /// The validation parts' box mAP@0.5 of a first fit at these settings; `None` where the
    /// fit parts gave nothing to learn at them.
    pub validation_map: Option<f64>,
}

/// What a template model measured on parts it never saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMetrics {
    pub n_test: usize,
    /// Parts with a defect past the threshold.
    pub n_flagged: usize,
    /// Of the parts labelled defective, the share flagged.
    pub defective_recall: Option<f64>,
    /// The boxes against the labelled ones; `None` without labelled boxes.
    pub boxes: Option<BoxMetrics>,
}

/// A saved template model: its card and, where the station runs it, its product's reference.
#[derive(Debug)]
pub struct TemplateModel {
    pub card: ModelCard<TemplateCard>,
    pub reference: Option<GrayImage>,
    /// `reference` prepared once for the parts a station compares with it.
    prepared: Option<PreparedReference>,
    dir: PathBuf,
}

/// One defect the model found.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundDefect {
    /// Maxima exclusive, within the image.
    pub bbox: [u32; 4],
    pub probability: f32,
    /// Its type, by the card's class names.
    pub class: String,
}

impl TemplateModel {
    /// Loads the model in `dir`, with its reference if the folder has one.
    pub fn load(dir: &Path) -> Result<TemplateModel, ModelError> {
        let card: ModelCard<TemplateCard> = ModelCard::read(dir)?;
        let family = &card.family;
        family
            .classifier
            .check()
            .map_err(|e| ModelError::Card(invalid(dir, e.to_string())))?;
        let threshold = card.head.threshold;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ModelError::Threshold {
                dir: dir.to_owned(),
                threshold,
            });
        }
        if let Some(problem) = family.compare.problem() {
            return Err(ModelError::Card(invalid(dir, problem)));
        }
        if family.box_margin_px > MAX_BOX_MARGIN_PX {
            return Err(ModelError::Card(invalid(
                dir,
                format!(
                    "box_margin_px {} is past {MAX_BOX_MARGIN_PX}",
                    family.box_margin_px
                ),
            )));
        }
        let path = dir.join(REFERENCE_FILE);
        let reference = if path.exists() {
            Some(
                dataset::load_gray(&path)
                    .map_err(|e| ModelError::Card(invalid(dir, e.to_string())))?,
            )
        } else {
            None
        };
        let prepared = (reference.as_ref())
            .map(|r| PreparedReference::new(r, family.compare.pattern))
            .transpose()
            .map_err(|e| ModelError::Card(invalid(dir, format!("{REFERENCE_FILE}: {e}"))))?;
        Ok(TemplateModel {
            card,
            reference,
            prepared,
            dir: dir.to_owned(),
        })
    }

    /// The model ready for a station: it must have its product's reference.
    pub fn load_for_station(dir: &Path) -> Result<TemplateModel, ModelError> {
        let model = TemplateModel::load(dir)?;
        if model.reference.is_none() {
            return Err(ModelError::Card(invalid(
                dir,
                format!(
                    "a template model compares each part with its product's golden image, and \
                     {} is missing: train with --reference GOLDEN_IMAGE, or copy a good part's \
                     image there",
                    dir.join(REFERENCE_FILE).display()
                ),
            )));
        }
        Ok(model)
    }

    /// The defects of `part` against `reference`, likeliest first, every candidate included
    /// (a box metric ranks them all; the station keeps those past its threshold).
    pub fn defects(
        &self,
        part: &GrayImage,
        reference: &PreparedReference,
    ) -> Result<Vec<FoundDefect>, CompareError> {
        let family = &self.card.family;
        let candidates = compare_prepared(part, reference, &family.compare)?;
        let mut found: Vec<FoundDefect> = candidates
            .iter()
            .map(|c| {
                let (probability, kind) = family.classifier.judge(&c.features);
                FoundDefect {
                    bbox: grown(c.core, family.box_margin_px, part.width, part.height),
                    probability,
                    class: (family.classifier.classes.get(kind))
                        .map_or_else(|| "defect".to_owned(), String::clone),
                }
            })
            .collect();
        found.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Ok(found)
    }

    /// The judgement of `part` against `reference`: the likeliest defect's probability and
    /// type, a heat map of [`HEAT_MAP_CELL`]-pixel cells (each its likeliest defect box's
    /// probability), and every candidate's box, likeliest first ([`Detector::defect_boxes`]
    /// keeps those past the station's threshold).
    pub fn judge_against(
        &self,
        part: &GrayImage,
        reference: &PreparedReference,
    ) -> Result<Judgement, ModelError> {
        self.judge_against_tolerating(part, reference, &[])
    }

    /// [`Self::judge_against`], and, when `tolerated` names types this model knows, the
    /// likeliest defect of the other types alone ([`Judgement::rejecting`]).
    pub fn judge_against_tolerating(
        &self,
        part: &GrayImage,
        reference: &PreparedReference,
        tolerated: &[&str],
    ) -> Result<Judgement, ModelError> {
        let found = self
            .defects(part, reference)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let score = found.first().map_or(0.0, |d| d.probability);
        if !score.is_finite() {
            return Err(ModelError::NonFinite);
        }
        let (w, h) = (
            part.width.div_ceil(HEAT_MAP_CELL),
            part.height.div_ceil(HEAT_MAP_CELL),
        );
        let mut values = vec![0.0f32; (w * h) as usize];
        for defect in &found {
            let [x0, y0, x1, y1] = defect.bbox;
            for cy in y0 / HEAT_MAP_CELL..y1.div_ceil(HEAT_MAP_CELL).min(h) {
                for cx in x0 / HEAT_MAP_CELL..x1.div_ceil(HEAT_MAP_CELL).min(w) {
                    let v = &mut values[(cy * w + cx) as usize];
                    *v = v.max(defect.probability);
                }
            }
        }
        let boxes = found
            .iter()
            .map(|d| DefectBox {
                bbox: d.bbox,
                score: d.probability,
                class: Some(d.class.clone()),
            })
            .collect();
        let knows = |class: &&str| {
            self.card.family.classifier.classes[1..]
                .iter()
                .any(|c| c == class)
        };
        let rejecting = tolerated.iter().any(knows).then(|| {
            let other = found
                .iter()
                .find(|d| !tolerated.contains(&d.class.as_str()));
            RejectingScore {
                score: other.map_or(0.0, |d| d.probability),
                class: other.map(|d| d.class.clone()),
            }
        });
        Ok(Judgement {
            score,
            heat_map: HeatMap {
                width: w,
                height: h,
                values,
            },
            defect_class: found.first().map(|d| d.class.clone()),
            patch_class: Vec::new(),
            rejecting,
            boxes: Some(boxes),
        })
    }

    fn reference(&self) -> Result<&PreparedReference, ModelError> {
        self.prepared.as_ref().ok_or_else(|| {
            ModelError::Template(format!(
                "no reference image: {} is missing",
                self.dir.join(REFERENCE_FILE).display()
            ))
        })
    }
}

fn invalid(dir: &Path, message: String) -> crate::models::card::CardError {
    crate::models::card::CardError::Invalid {
        dir: dir.to_owned(),
        message,
    }
}

/// `core` grown by `margin` on each side, within a `width`×`height` image.
fn grown(core: [u32; 4], margin: u32, width: u32, height: u32) -> [u32; 4] {
    [
        core[0].saturating_sub(margin),
        core[1].saturating_sub(margin),
        core[2].saturating_add(margin).min(width),
        core[3].saturating_add(margin).min(height),
    ]
}

impl Detector for TemplateModel {
    fn head(&self) -> &CardHead {
        &self.card.head
    }

    /// Parts must be the reference's size: the comparison is pixel by pixel.
    fn input_size(&self) -> Option<(u32, u32)> {
        self.reference.as_ref().map(|r| (r.width, r.height))
    }

    /// The likeliest defect's probability, and the heat map of its boxes.
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
        let judgement = self.judge(image)?;
        Ok((judgement.score, judgement.heat_map))
    }

    fn judge(&self, image: &GrayImage) -> Result<Judgement, ModelError> {
        self.judge_against(image, self.reference()?)
    }

    /// The likeliest defect of a type not tolerated is what the part is rejected on.
    fn judge_tolerating(
        &self,
        image: &GrayImage,
        tolerated: &[&str],
    ) -> Result<Judgement, ModelError> {
        self.judge_against_tolerating(image, self.reference()?, tolerated)
    }

    /// The defects' own boxes, at the station's threshold, each named by its type.
    fn defect_boxes(
        &self,
        judgement: &Judgement,
        _width: u32,
        _height: u32,
        threshold: f32,
    ) -> Vec<DefectBox> {
        (judgement.boxes.iter().flatten())
            .filter(|b| b.score >= threshold)
            .cloned()
            .collect()
    }
}
