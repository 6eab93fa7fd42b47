//! Training a template model: its classifier and box margin learnt from parts labelled with
//! boxes, each compared with its reference, and its threshold chosen on parts held back.
//!
//! The protocol, fixed here so that no run is tuned by hand:
//! 1. the dataset's held-out quarter is set aside ([`held_out_part`], the supervised family's
//!    split, so the two families are scored on the same parts);
//! 2. unless told to keep the settings given, the run measures how far the rest, its training
//!    parts, sit off their references (an evenly spread sample of up to [`OFFSET_SAMPLE`],
//!    with the widest search) and searches that far and a little more ([`reach_for`]): one
//!    product's parts are registered to the pixel, another's fixture lets them wander by
//!    several;
//! 3. a fifth of the training parts is held back as validation; the classifier and margin
//!    are fitted on the other four fifths. Unless told to keep the settings given, the run
//!    chooses how deep a difference must reach and how near differences join
//!    ([`DEPTH_CHOICES_PX`] × [`JOIN_CHOICES_PX`]) by the validation parts' box mAP@0.5 of a
//!    first fit at each: the given settings stand unless another pair beats them by more
//!    than [`CHOICE_MARGIN`] (a product's scale, its pixels a millimetre and its scan's
//!    noise, is its own, and a default worked out on one product's boards must not decide
//!    another's); then, at the pair chosen, the size below which islands of pattern are
//!    crumbs ([`island_choices`]), the same way, in a second pass. The threshold is then the
//!    defect probability whose boxes reach the best F1 (IoU > 0.5, whatever their type) on
//!    the validation parts, at the settings chosen;
//! 4. the classifier and margin are fitted again on the whole training part, and the model is
//!    scored once on the held-out quarter.
//!
//! A part is compared with its own reference where the dataset pairs them (DeepPCB's tested
//! board and its template), else with the product's golden image (`--reference`). Parts with
//! neither are left out, and so are the references themselves: a template compared with
//! itself differs nowhere and teaches nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::learn::dataset::{self, DatasetError, Layout, Sample};
use crate::learn::drift::{DriftReference, InputStats, ProfileImages};
use crate::learn::eval::{BoxTruth, box_iou};
use crate::learn::hash::ContentHash;
use crate::learn::progress::{Cancelled, Progress};
use crate::models::card::{CardError, ModelCard};

use super::classifier::{Classifier, ClassifierError, NO_DEFECT};
use super::compare::{
    Candidate, CompareError, CompareSettings, Difference, MAX_ALIGN_PX, N_FEATURES, PatternSide,
    PreparedReference,
};
use super::{
    AlignmentChoice, CompareChoice, CompareTrial, IslandTrial, REFERENCE_FILE, TemplateCard,
    TemplateMetrics, TemplateModel, grown,
};

/// Every `HOLDOUT_EVERY`-th part of each class is held out (the supervised family's split).
pub const HOLDOUT_EVERY: usize = 4;
/// Every `VALIDATION_EVERY`-th training part is held back to choose the threshold.
pub const VALIDATION_EVERY: usize = 5;

/// The depths (pixels past the reference's edges) a run tries for a difference's core.
pub const DEPTH_CHOICES_PX: [f32; 4] = [2.0, 3.0, 4.0, 6.0];
/// The distances (pixels) within which a run tries joining cores into one candidate.
pub const JOIN_CHOICES_PX: [u32; 3] = [3, 7, 11];
/// Training parts a run measures how far parts sit off their references on, spread evenly
/// over its training part: enough to see a fixture's spread, at a fraction of a second each
/// on a 640-pixel board.
pub const OFFSET_SAMPLE: usize = 32;

/// How far (pixels, each way) the comparison searches to align the parts of a product whose
/// measured parts sat up to `largest` pixels off their references: that far, a quarter
/// again and a pixel more for parts the sample missed; never less than `given` (a narrower
/// search saves little time, and a part past the search is compared misaligned, its every
/// edge a difference), and at most [`MAX_ALIGN_PX`].
pub fn reach_for(largest: u32, given: u32) -> u32 {
    (largest + 1 + largest / 4).max(given).min(MAX_ALIGN_PX)
}

/// How much more validation box mAP@0.5 another pair of settings must reach to replace the
/// given ones: less is within what 30 validation parts measure by chance.
pub const CHOICE_MARGIN: f64 = 0.01;

/// What a training run needs.
#[derive(Debug, Clone)]
pub struct TemplateSettings {
    pub name: String,
    pub layout: Layout,
    pub data: PathBuf,
    /// The product's golden image: every part without a reference of its own is compared with
    /// it, and it is copied into the model so that a station can run it.
    pub reference: Option<PathBuf>,
    pub compare: CompareSettings,
    /// Whether the run chooses `compare`'s reach from how far its parts sit off their
    /// references (the reach given its least) and its depth and join on its validation parts
    /// (the settings given are its first candidate), or keeps them as given.
    pub choose_compare: bool,
    pub out_dir: PathBuf,
    pub progress: Progress,
}

/// Why a template model could not be trained or scored.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: {source}")]
    Compare { path: PathBuf, source: CompareError },
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error(
        "no part of {data} has a reference to compare it with: the layout pairs none, and no \
         --reference was given"
    )]
    NoPairs { data: PathBuf },
    #[error(
        "no part of {data} with a reference is labelled with boxes: the template family learns \
         what a defect is, and its type, from labelled boxes"
    )]
    NoBoxes { data: PathBuf },
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// The held-out part of a dataset, and what it is in words.
pub fn held_out_part(samples: &[Sample]) -> (Vec<Sample>, String) {
    let (_, held_out) = dataset::split_every(samples, HOLDOUT_EVERY);
    (
        held_out,
        format!("the held-out part (every {HOLDOUT_EVERY}th image of each class)"),
    )
}

/// A part, the reference it is compared with, and its labelled boxes (maxima exclusive).
struct Pair {
    part: PathBuf,
    reference: PathBuf,
    defective: bool,
    boxes: Vec<([u32; 4], String)>,
}

/// The parts of `samples` that have a reference: their own where `layout` pairs them, else
/// `golden`.
fn pairs(samples: &[Sample], layout: Layout, golden: Option<&Path>) -> Vec<Pair> {
    let is_golden = |s: &Sample| {
        golden.is_some_and(|g| {
            s.image == g
                || (s.image.canonicalize().ok())
                    .zip(g.canonicalize().ok())
                    .is_some_and(|(a, b)| a == b)
        })
    };
    samples
        .iter()
        .filter(|s| !is_golden(s))
        .filter_map(|s| {
            let reference = layout
                .reference_of(s)
                .or_else(|| (!layout.pairs_parts()).then(|| golden.map(Path::to_owned))?)?;
            Some(Pair {
                part: s.image.clone(),
                reference,
                defective: s.defective(),
                boxes: (s.boxes.iter())
                    .map(|b| {
                        let [x0, y0, x1, y1] = b.bbox;
                        ([x0, y0, x1 + 1, y1 + 1], b.class.clone())
                    })
                    .collect(),
            })
        })
        .collect()
}

/// A compared part: its candidates, and what it is labelled.
struct Compared {
    candidates: Vec<Candidate>,
    defective: bool,
    boxes: Vec<([u32; 4], String)>,
    size: (u32, u32),
}

/// The reference at `path` prepared on `side`, read and prepared again only when the path
/// changes: the golden image, shared by every part, once.
fn prepared<'a>(
    path: &Path,
    side: PatternSide,
    cache: &'a mut Option<(PathBuf, PreparedReference)>,
) -> Result<&'a PreparedReference, TemplateError> {
    if cache.as_ref().is_none_or(|(cached, _)| cached != path) {
        let image = dataset::load_gray(path)?;
        let reference =
            PreparedReference::new(&image, side).map_err(|source| TemplateError::Compare {
                path: path.to_owned(),
                source,
            })?;
        *cache = Some((path.to_owned(), reference));
    }
    let (_, reference) = cache.as_ref().expect("filled above");
    Ok(reference)
}

/// Each pair compared at each of `settings` (all with one alignment), `[setting][pair]`, and
/// each part's input statistics (for the drift reference). Each part is read, aligned and
/// measured once, then asked for its candidates at every setting: the settings' choice
/// compares a part at twelve, and reading and aligning it twelve times was most of a template
/// training run (DeepPCB: 34 s, now 15 s; 4 s with the settings fixed).
fn compared_all(
    pairs: &[Pair],
    settings: &[CompareSettings],
    progress: &Progress,
    what: &str,
) -> Result<(Vec<Vec<Compared>>, Vec<InputStats>), TemplateError> {
    let Some(first) = settings.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    // One alignment and one cut per part: the settings' choice varies depth, join and crumb
    // size only.
    assert!(
        (settings.iter()).all(|s| (s.align_px, s.pattern) == (first.align_px, first.pattern)),
        "settings differ in alignment or cut"
    );
    let mut inputs = Vec::with_capacity(pairs.len());
    let phase = progress.phase(pairs.len(), what);
    let mut reference_cache = None;
    let mut out: Vec<Vec<Compared>> = settings
        .iter()
        .map(|_| Vec::with_capacity(pairs.len()))
        .collect();
    for pair in pairs {
        phase.check()?;
        let part = dataset::load_gray(&pair.part)?;
        let reference = prepared(&pair.reference, first.pattern, &mut reference_cache)?;
        let failed = |source| TemplateError::Compare {
            path: pair.part.clone(),
            source,
        };
        let difference = Difference::of(&part, reference, first.align_px).map_err(failed)?;
        // Labelled boxes end on the image: one drawn past its edge would widen the margin.
        let boxes: Vec<_> = (pair.boxes.iter())
            .map(|([x0, y0, x1, y1], class)| {
                let (w, h) = (part.width, part.height);
                (
                    [(*x0).min(w), (*y0).min(h), (*x1).min(w), (*y1).min(h)],
                    class.clone(),
                )
            })
            .collect();
        for (setting, out) in settings.iter().zip(&mut out) {
            out.push(Compared {
                candidates: difference.candidates(setting).map_err(failed)?,
                boxes: boxes.clone(),
                size: (part.width, part.height),
                defective: pair.defective,
            });
        }
        inputs.push(InputStats::of(&part));
        phase.inc(1);
    }
    phase.finish_and_clear();
    Ok((out, inputs))
}

/// The median margin the labelled boxes leave round the largest core whose centre each
/// contains: how far past a defect's difference its labellers draw.
fn box_margin(parts: &[Compared]) -> u32 {
    let mut margins: Vec<i64> = Vec::new();
    for part in parts {
        for (truth, _) in &part.boxes {
            let [tx0, ty0, tx1, ty1] = truth.map(i64::from);
            let inside = part.candidates.iter().filter(|c| {
                let (cx, cy) = (
                    i64::from(c.core[0] + c.core[2]) / 2,
                    i64::from(c.core[1] + c.core[3]) / 2,
                );
                cx >= tx0 && cx < tx1 && cy >= ty0 && cy < ty1
            });
            let largest = inside.max_by_key(|c| (c.core[2] - c.core[0]) * (c.core[3] - c.core[1]));
            if let Some(c) = largest {
                let [cx0, cy0, cx1, cy1] = c.core.map(i64::from);
                margins.extend([cx0 - tx0, cy0 - ty0, tx1 - cx1, ty1 - cy1]);
            }
        }
    }
    if margins.is_empty() {
        return 0;
    }
    margins.sort_unstable();
    margins[margins.len() / 2].max(0) as u32
}

/// Each candidate's class index into `classes`: the type of the labelled box its grown box
/// overlaps best, when more than [`crate::learn::eval::BOX_IOU`]; else 0 (no defect).
fn labelled(
    parts: &[Compared],
    margin: u32,
    classes: &[String],
) -> (Vec<[f32; N_FEATURES]>, Vec<usize>) {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for part in parts {
        for c in &part.candidates {
            let bbox = grown(c.core, margin, part.size.0, part.size.1);
            let best = (part.boxes.iter())
                .map(|(truth, class)| (box_iou(&bbox, truth), class))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let label = match best {
                Some((iou, class)) if iou > crate::learn::eval::BOX_IOU => {
                    classes.iter().position(|c| c == class).unwrap_or(0)
                }
                _ => 0,
            };
            features.push(c.features);
            labels.push(label);
        }
    }
    (features, labels)
}

/// [`NO_DEFECT`], then the labelled boxes' types, sorted.
fn classes_of(parts: &[Compared]) -> Vec<String> {
    let mut types: Vec<String> = (parts.iter())
        .flat_map(|p| p.boxes.iter().map(|(_, class)| class.clone()))
        .collect();
    types.sort();
    types.dedup();
    std::iter::once(NO_DEFECT.to_owned()).chain(types).collect()
}

/// The pattern side of the references of `pairs`, each read once, one at a time.
fn pattern_side(pairs: &[Pair]) -> Result<PatternSide, TemplateError> {
    let mut paths: Vec<&PathBuf> = pairs.iter().map(|p| &p.reference).collect();
    paths.sort();
    paths.dedup();
    let (mut bright, mut all) = (0usize, 0usize);
    for path in paths {
        let reference = dataset::load_gray(path)?;
        let (b, a) =
            PatternSide::bright_pixels(&reference).map_err(|source| TemplateError::Compare {
                path: path.clone(),
                source,
            })?;
        bright += b;
        all += a;
    }
    Ok(PatternSide::of_counts(bright, all))
}

/// A classifier and margin fitted on `parts`.
fn fitted(parts: &[Compared]) -> Result<(Classifier, u32), ClassifierError> {
    let margin = box_margin(parts);
    let classes = classes_of(parts);
    let (features, labels) = labelled(parts, margin, &classes);
    Ok((Classifier::fit(&features, &labels, classes)?, margin))
}

/// The boxes of every candidate of `parts` against their labelled ones.
fn box_truth(parts: &[Compared], classifier: &Classifier, margin: u32) -> BoxTruth {
    let mut truth = BoxTruth::default();
    let judged = judged(parts, classifier, margin);
    for (i, part) in parts.iter().enumerate() {
        let mine = (judged.iter())
            .filter(|d| d.0 == i)
            .map(|d| ((d.1, d.2), Some(d.3.clone())))
            .collect();
        truth.add_classed(mine, part.boxes.clone());
    }
    truth
}

/// Every candidate of `parts` judged: (part index, box, probability, type).
fn judged(
    parts: &[Compared],
    classifier: &Classifier,
    margin: u32,
) -> Vec<(usize, [u32; 4], f32, String)> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        for c in &part.candidates {
            let (p, kind) = classifier.judge(&c.features);
            let bbox = grown(c.core, margin, part.size.0, part.size.1);
            out.push((i, bbox, p, classifier.classes[kind].clone()));
        }
    }
    out
}

/// The training parts compared with their references at one setting, and the first fit on
/// the fit parts (the threshold's and the settings' choice both score it).
struct Comparison {
    settings: CompareSettings,
    fit: (Vec<Compared>, Vec<InputStats>),
    validation: (Vec<Compared>, Vec<InputStats>),
    first: Result<(Classifier, u32), ClassifierError>,
}

impl Comparison {
    /// The parts compared at each of `settings` (one alignment), one comparison per setting,
    /// in order.
    fn all(
        fit: &[Pair],
        validation: &[Pair],
        settings: &[CompareSettings],
        progress: &Progress,
    ) -> Result<Vec<Comparison>, TemplateError> {
        let what = |parts: &str| match settings {
            [one] => format!(
                "comparing {parts} parts with their references (depth {} px, join {} px)",
                one.min_depth_px, one.join_px
            ),
            _ => format!(
                "comparing {parts} parts with their references at {} settings",
                settings.len()
            ),
        };
        let (fit, fit_inputs) = compared_all(fit, settings, progress, &what("training"))?;
        let (validation, validation_inputs) =
            compared_all(validation, settings, progress, &what("validation"))?;
        Ok((settings.iter().zip(fit).zip(validation))
            .map(|((&settings, fit), validation)| Comparison {
                settings,
                first: fitted(&fit),
                fit: (fit, fit_inputs.clone()),
                validation: (validation, validation_inputs.clone()),
            })
            .collect())
    }

    /// The parts compared at `settings` alone.
    fn of(
        fit: &[Pair],
        validation: &[Pair],
        settings: CompareSettings,
        progress: &Progress,
    ) -> Result<Comparison, TemplateError> {
        let mut all = Comparison::all(fit, validation, &[settings], progress)?;
        Ok(all.remove(0))
    }

    /// The validation parts' box mAP@0.5 (the class-agnostic AP where the boxes name no
    /// type) of a first fit on the fit parts; `None` where the validation parts have no
    /// labelled box, or the fit parts nothing to learn at this setting.
    fn validation_figure(&self) -> Option<f64> {
        let (classifier, margin) = self.first.as_ref().ok()?;
        let metrics = box_truth(&self.validation.0, classifier, *margin).metrics()?;
        (metrics.mean_average_precision.first().map(|m| m.value))
            .or_else(|| metrics.at_iou.first().map(|a| a.average_precision))
    }
}

/// How far the comparison of `pairs`' product searches to align a part (see the module's
/// protocol): an evenly spread sample of them measured with the widest search
/// ([`PreparedReference::offset_of`]), the reach chosen by [`reach_for`] from the farthest.
fn chosen_alignment(
    pairs: &[Pair],
    given: CompareSettings,
    progress: &Progress,
) -> Result<AlignmentChoice, TemplateError> {
    let n = pairs.len().min(OFFSET_SAMPLE);
    let sample: Vec<&Pair> = (0..n).map(|i| &pairs[i * pairs.len() / n]).collect();
    let phase = progress.phase(
        sample.len(),
        "measuring how far parts sit off their references",
    );
    let mut reference_cache = None;
    let mut parts_by_offset_px = Vec::new();
    // Parts found as far off as their search could look: they may sit further.
    let mut at_the_limit = 0;
    // The widest search the parts' size allows (the comparison searches no further).
    let mut limit_px = MAX_ALIGN_PX;
    for pair in &sample {
        phase.check()?;
        let part = dataset::load_gray(&pair.part)?;
        let reference = prepared(&pair.reference, given.pattern, &mut reference_cache)?;
        let (dx, dy) =
            reference
                .offset_of(&part, MAX_ALIGN_PX)
                .map_err(|source| TemplateError::Compare {
                    path: pair.part.clone(),
                    source,
                })?;
        // Within the search's reach, so small.
        let offset = dx.unsigned_abs().max(dy.unsigned_abs()) as usize;
        let limit = reference.reach_limit(MAX_ALIGN_PX);
        limit_px = limit_px.min(limit);
        at_the_limit += usize::from(limit > 0 && offset >= limit as usize);
        if parts_by_offset_px.len() <= offset {
            parts_by_offset_px.resize(offset + 1, 0);
        }
        parts_by_offset_px[offset] += 1;
        phase.inc(1);
    }
    phase.finish_and_clear();
    let largest_offset_px = parts_by_offset_px.len().saturating_sub(1) as u32;
    let align_px = reach_for(largest_offset_px, given.align_px).min(limit_px);
    let mut rule = format!(
        "the farthest of {} training parts sat {largest_offset_px} px off its reference; the \
         comparison searches that far, a quarter again and 1 px more, never less than the {} px \
         given, at most {limit_px} px",
        sample.len(),
        given.align_px
    );
    if limit_px < MAX_ALIGN_PX {
        rule.push_str(&format!(
            " (the parts' size allows no wider search than {limit_px} px; {MAX_ALIGN_PX} px on \
             larger parts)"
        ));
    }
    if at_the_limit > 0 {
        rule.push_str(&format!(
            "; {at_the_limit} sat at the widest search's edge and may sit further, where the \
             comparison cannot align them: register the parts closer (the fixture, the \
             camera's crop)"
        ));
        tracing::warn!(%rule, "parts sit as far off their references as the comparison reaches");
    }
    Ok(AlignmentChoice {
        parts_by_offset_px,
        largest_offset_px,
        rule,
        align_px,
    })
}

/// The comparison at the settings the validation parts choose (see the module's protocol),
/// and the card's record of the choice; the given settings, and no record, where the
/// validation parts have no labelled box to choose by.
fn chosen_comparison(
    fit: &[Pair],
    validation: &[Pair],
    given: CompareSettings,
    progress: &Progress,
) -> Result<(Comparison, Option<CompareChoice>), TemplateError> {
    if validation.iter().all(|p| p.boxes.is_empty()) {
        return Ok((Comparison::of(fit, validation, given, progress)?, None));
    }
    // The given settings first, then every other pair of the grid.
    let mut candidates = vec![given];
    for depth in DEPTH_CHOICES_PX {
        for join in JOIN_CHOICES_PX {
            if (depth, join) != (given.min_depth_px, given.join_px) {
                candidates.push(CompareSettings {
                    min_depth_px: depth,
                    join_px: join,
                    ..given
                });
            }
        }
    }
    let mut comparisons = Comparison::all(fit, validation, &candidates, progress)?.into_iter();
    let given_comparison = comparisons.next().expect("the given settings come first");
    let given_figure = given_comparison.validation_figure();
    let trial = |settings: &CompareSettings, figure| CompareTrial {
        min_depth_px: settings.min_depth_px,
        join_px: settings.join_px,
        validation_map: figure,
    };
    let mut trials = vec![trial(&given, given_figure)];
    let mut best: Option<(Comparison, f64)> = None;
    for comparison in comparisons {
        let figure = comparison.validation_figure();
        trials.push(trial(&comparison.settings, figure));
        if let Some(figure) = figure
            && best.as_ref().is_none_or(|(_, b)| figure > *b)
        {
            best = Some((comparison, figure));
        }
    }
    let given_said = given_figure.map_or("nothing learnt".into(), |g| format!("{g:.4}"));
    let rule = format!(
        "the given depth {} px and join {} px (validation box mAP@0.5 {given_said}) unless \
         another of depths {DEPTH_CHOICES_PX:?} px × joins {JOIN_CHOICES_PX:?} px beats it by \
         more than {CHOICE_MARGIN}, each scored by a first fit without the validation parts",
        given.min_depth_px, given.join_px
    );
    let chosen = better_than_chance(given_comparison, given_figure, best);

    // Then the crumb size, at the depth and join chosen: islands of pattern the binarisation
    // leaves are a product's scale and scan, as its depths are. Its own pass, since islands
    // change the measurements and so every candidate's score.
    let given_islands = chosen.settings.min_island_px;
    let chosen_figure = chosen.validation_figure();
    let mut island_trials = vec![IslandTrial {
        min_island_px: given_islands,
        validation_map: chosen_figure,
    }];
    let island_settings: Vec<CompareSettings> = island_choices(given_islands)
        .into_iter()
        .map(|min_island_px| CompareSettings {
            min_island_px,
            ..chosen.settings
        })
        .collect();
    let mut best_islands: Option<(Comparison, f64)> = None;
    for comparison in Comparison::all(fit, validation, &island_settings, progress)? {
        let figure = comparison.validation_figure();
        island_trials.push(IslandTrial {
            min_island_px: comparison.settings.min_island_px,
            validation_map: figure,
        });
        if let Some(figure) = figure
            && best_islands.as_ref().is_none_or(|(_, b)| figure > *b)
        {
            best_islands = Some((comparison, figure));
        }
    }
    let chosen = better_than_chance(chosen, chosen_figure, best_islands);
    let rule = format!(
        "{rule}; then, at the depth and join chosen, crumbs of {:?} px against the given \
         {given_islands} px, the same way",
        island_choices(given_islands)
    );
    let choice = CompareChoice {
        trials,
        rule,
        min_depth_px: chosen.settings.min_depth_px,
        join_px: chosen.settings.join_px,
        island_trials,
        min_island_px: Some(chosen.settings.min_island_px),
    };
    Ok((chosen, Some(choice)))
}

/// The crumb sizes ([`CompareSettings::min_island_px`]) a run tries beside `given`: half
/// and twice it.
pub fn island_choices(given: usize) -> Vec<usize> {
    let mut choices = vec![(given / 2).max(1), given.saturating_mul(2).max(1)];
    choices.retain(|&c| c != given);
    choices.dedup();
    choices
}

/// `given` unless `best` beats its figure by more than [`CHOICE_MARGIN`]; settings at which
/// nothing could be learnt stand against none.
fn better_than_chance(
    given: Comparison,
    given_figure: Option<f64>,
    best: Option<(Comparison, f64)>,
) -> Comparison {
    match (best, given_figure) {
        (Some((comparison, figure)), Some(given)) if figure > given + CHOICE_MARGIN => comparison,
        (Some((comparison, _)), None) => comparison,
        _ => given,
    }
}

/// The defect probability whose boxes find the labelled boxes of `parts` with the best F1
/// (IoU > 0.5, whatever the type), and that F1. Ties keep the higher cut.
fn best_box_cut(parts: &[Compared], classifier: &Classifier, margin: u32) -> (f32, f64) {
    let judged = judged(parts, classifier, margin);
    let n_true: usize = parts.iter().map(|p| p.boxes.len()).sum();
    let mut best = (0.5, 0.0);
    for step in (5..=95).rev() {
        let cut = step as f32 / 100.0;
        let (mut found, mut predicted) = (0usize, 0usize);
        for (i, part) in parts.iter().enumerate() {
            let mut used = vec![false; part.boxes.len()];
            let mut mine: Vec<&(usize, [u32; 4], f32, String)> =
                (judged.iter()).filter(|d| d.0 == i && d.2 >= cut).collect();
            mine.sort_by(|a, b| b.2.total_cmp(&a.2));
            for d in mine {
                predicted += 1;
                let hit = (part.boxes.iter().enumerate())
                    .filter(|(k, _)| !used[*k])
                    .map(|(k, (truth, _))| (k, box_iou(&d.1, truth)))
                    .filter(|(_, iou)| *iou > crate::learn::eval::BOX_IOU)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((k, _)) = hit {
                    used[k] = true;
                    found += 1;
                }
            }
        }
        let f1 = if predicted + n_true == 0 {
            0.0
        } else {
            2.0 * found as f64 / (predicted + n_true) as f64
        };
        if f1 > best.1 {
            best = (cut, f1);
        }
    }
    best
}

/// The card's drift reference: the inputs of the parts the first fit saw against those of the
/// validation parts, the validation good parts' scores (where there are any) and how many
/// validation parts the first fit judged wrongly at the threshold. The parts' inputs count
/// whatever their labels: a defect changes a few pixels of a part, not its light. `None`
/// (with a warning) where there are too few parts.
fn drift_reference(
    fit: &[InputStats],
    calibration: &[InputStats],
    validation: &[Compared],
    classifier: &Classifier,
    threshold: f32,
) -> Option<DriftReference> {
    let scored: Vec<(f32, bool)> = (validation.iter())
        .map(|part| {
            let score = (part.candidates.iter())
                .map(|c| classifier.judge(&c.features).0)
                .fold(0.0f32, f32::max);
            (score, part.defective)
        })
        .collect();
    let good_scores: Vec<f32> = (scored.iter())
        .filter(|(_, defective)| !defective)
        .map(|(s, _)| *s)
        .collect();
    let errors = (scored.iter())
        .filter(|(score, defective)| (*score >= threshold) != *defective)
        .count();
    DriftReference::learn(
        fit,
        calibration,
        ProfileImages::AnyLabel,
        &good_scores,
        (errors, scored.len()),
        false,
    )
    .map_err(|why| tracing::warn!(%why, "no drift reference on the card"))
    .ok()
}

/// Trains a template model on `settings.data` and writes it to `settings.out_dir`.
pub fn train(settings: &TemplateSettings) -> Result<ModelCard<TemplateCard>, TemplateError> {
    let started = Instant::now();
    let samples = dataset::read(settings.layout, &settings.data)?;
    let (train_part, held_out) = dataset::split_every(&samples, HOLDOUT_EVERY);
    let (fit_part, validation) = dataset::split_every_ignoring_own(&train_part, VALIDATION_EVERY);
    let golden = settings.reference.as_deref();
    let train_pairs = pairs(&train_part, settings.layout, golden);
    if train_pairs.is_empty() {
        return Err(TemplateError::NoPairs {
            data: settings.data.clone(),
        });
    }
    if train_pairs.iter().all(|p| p.boxes.is_empty()) {
        return Err(TemplateError::NoBoxes {
            data: settings.data.clone(),
        });
    }
    let progress = &settings.progress;
    // The product's pattern is the side that covers less of its references.
    let mut compare_settings = settings.compare;
    compare_settings.pattern = pattern_side(&train_pairs)?;
    let alignment_choice = if settings.choose_compare {
        let choice = chosen_alignment(&train_pairs, compare_settings, progress)?;
        compare_settings.align_px = choice.align_px;
        Some(choice)
    } else {
        None
    };
    let settings = &TemplateSettings {
        compare: compare_settings,
        ..settings.clone()
    };
    let fit_pairs = pairs(&fit_part, settings.layout, golden);
    let validation_pairs = pairs(&validation, settings.layout, golden);
    let (comparison, compare_choice) = if settings.choose_compare {
        chosen_comparison(&fit_pairs, &validation_pairs, settings.compare, progress)?
    } else {
        let given = Comparison::of(&fit_pairs, &validation_pairs, settings.compare, progress)?;
        (given, None)
    };
    let settings = &TemplateSettings {
        compare: comparison.settings,
        ..settings.clone()
    };
    let Comparison {
        fit: (fit_parts, fit_inputs),
        validation: (validation_parts, validation_inputs),
        first,
        ..
    } = comparison;
    let (first, first_margin) = first?;
    let validation_boxes = box_truth(&validation_parts, &first, first_margin).metrics();
    let (threshold, threshold_rule) = if validation_boxes.is_some() {
        let (threshold, f1) = best_box_cut(&validation_parts, &first, first_margin);
        let rule = format!(
            "defect probability {threshold:.2}: the best box F1 (IoU > 0.5, any type), {f1:.3}, \
             on {} validation parts, scored by a classifier fitted without them",
            validation_parts.len()
        );
        (threshold, rule)
    } else {
        let rule = format!(
            "defect probability 0.50: no labelled box among the {} validation parts to choose \
             a cut by",
            validation_parts.len()
        );
        (0.5, rule)
    };
    let drift = drift_reference(
        &fit_inputs,
        &validation_inputs,
        &validation_parts,
        &first,
        threshold,
    );

    // The final fit, on every training part.
    let n_validation = validation_parts.len();
    let mut all_parts = fit_parts;
    all_parts.extend(validation_parts);
    let (classifier, box_margin_px) = fitted(&all_parts)?;
    let n_train_candidates = all_parts.iter().map(|p| p.candidates.len()).sum();
    let n_train_boxes = all_parts.iter().map(|p| p.boxes.len()).sum();

    let mut digest = ContentHash::new();
    for pair in &train_pairs {
        for path in [&pair.part, &pair.reference] {
            digest.file(path).map_err(|source| DatasetError::Io {
                path: path.clone(),
                source,
            })?;
        }
    }
    let mut version = ContentHash::new();
    version.floats(&classifier.floats()).floats(&[
        threshold,
        f32::from(u8::from(settings.compare.pattern == PatternSide::Dark)),
        box_margin_px as f32,
        settings.compare.min_depth_px,
        settings.compare.join_px as f32,
        settings.compare.align_px as f32,
        settings.compare.min_island_px as f32,
    ]);
    let family = TemplateCard {
        compare: settings.compare,
        classifier,
        box_margin_px,
        dataset: settings.data.display().to_string(),
        training_data_sha256: digest.hex(),
        layout: settings.layout,
        split: format!(
            "every {HOLDOUT_EVERY}th image of each class held out; of the rest, every \
             {VALIDATION_EVERY}th held back to choose the threshold; parts compared with their \
             own reference where the dataset pairs them, else with the golden image"
        ),
        n_train: all_parts.len(),
        n_train_boxes,
        n_train_candidates,
        n_validation,
        validation_boxes,
        compare_choice,
        alignment_choice,
        training_duration_s: 0.0,
        metrics: TemplateMetrics {
            n_test: 0,
            n_flagged: 0,
            defective_recall: None,
            boxes: None,
        },
    };
    let mut card = ModelCard::new(
        &settings.name,
        format!("{}@{}", settings.name, version.version_suffix()),
        format!(
            "golden-template comparison (Otsu cut, alignment within {} px, differences {} px \
             deep) + multinomial logistic regression over {N_FEATURES} measurements",
            settings.compare.align_px, settings.compare.min_depth_px
        ),
        (threshold, threshold_rule),
        family,
    )
    .with_drift(drift);
    std::fs::create_dir_all(&settings.out_dir).map_err(|e| TemplateError::Write {
        path: settings.out_dir.clone(),
        message: e.to_string(),
    })?;
    if let Some(golden) = golden {
        let image = dataset::load_gray(golden)?;
        let path = settings.out_dir.join(REFERENCE_FILE);
        image::GrayImage::from_raw(image.width, image.height, image.pixels)
            .ok_or_else(|| TemplateError::Write {
                path: path.clone(),
                message: "the golden image's pixels do not fill it".into(),
            })?
            .save(&path)
            .map_err(|e| TemplateError::Write {
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    card.write(&settings.out_dir)?;
    let model = TemplateModel::load(&settings.out_dir).map_err(|e| TemplateError::Write {
        path: settings.out_dir.clone(),
        message: e.to_string(),
    })?;
    card.family.metrics = evaluate(&model, &held_out, settings.layout, golden, progress)?;
    card.family.training_duration_s = started.elapsed().as_secs_f64();
    card.write(&settings.out_dir)?;
    Ok(card)
}

/// Scores `model` on `samples`: each part with a reference compared with it, its boxes against
/// the labelled ones (each type's AP and their mean where every box names its type).
pub fn evaluate(
    model: &TemplateModel,
    samples: &[Sample],
    layout: Layout,
    golden: Option<&Path>,
    progress: &Progress,
) -> Result<TemplateMetrics, TemplateError> {
    // A model run on a folder without pairs compares with the product's golden image: the
    // one given, else the model's own.
    let own = model
        .reference
        .is_some()
        .then(|| model.dir.join(REFERENCE_FILE));
    let golden = golden.map(Path::to_owned).or(own);
    let pairs = pairs(samples, layout, golden.as_deref());
    let phase = progress.phase(pairs.len(), "scoring held-out parts");
    let threshold = model.card.head.threshold;
    let mut truth = BoxTruth::default();
    let (mut n_flagged, mut n_defective, mut n_defective_flagged) = (0, 0, 0);
    let mut reference_cache = None;
    for pair in &pairs {
        phase.check()?;
        let part = dataset::load_gray(&pair.part)?;
        let side = model.card.family.compare.pattern;
        let reference = prepared(&pair.reference, side, &mut reference_cache)?;
        let found = model
            .defects(&part, reference)
            .map_err(|source| TemplateError::Compare {
                path: pair.part.clone(),
                source,
            })?;
        let flagged = found.first().is_some_and(|d| d.probability >= threshold);
        n_flagged += usize::from(flagged);
        if pair.defective {
            n_defective += 1;
            n_defective_flagged += usize::from(flagged);
        }
        truth.add_classed(
            found
                .into_iter()
                .map(|d| ((d.bbox, d.probability), Some(d.class)))
                .collect(),
            pair.boxes.clone(),
        );
        phase.inc(1);
    }
    phase.finish_and_clear();
    Ok(TemplateMetrics {
        n_test: pairs.len(),
        n_flagged,
        defective_recall: (n_defective > 0)
            .then(|| n_defective_flagged as f64 / n_defective as f64),
        boxes: truth.metrics(),
    })
}
