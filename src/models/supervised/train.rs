//! Training and evaluating the supervised model on a labelled dataset, read in place.

use super::input_size::{self, SizeChoice};
use super::*;
use crate::learn::drift::{DriftReference, InputStats, ProfileImages};
pub use crate::models::anomaly::train::InputSize;
use crate::models::anomaly::{nearest_distances, sample_rows, search_layout};

/// What to train.
#[derive(Debug, Clone)]
pub struct SupervisedSettings {
    pub name: String,
    pub layout: Layout,
    pub data: PathBuf,
    pub backbone_weights: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Side of the square the backbone sees (a multiple of 16; smaller is faster), or
    /// chosen by the run on its validation images ([`input_size`]).
    pub input_size: InputSize,
    /// Randomly augmented copies of each training image, besides the image itself.
    pub augmented_copies: usize,
    /// Share of feature channels dropped per image and step while training (0 = none).
    pub feature_dropout: f64,
    /// Share of defective validation images the threshold may let through; `None` chooses
    /// the threshold nearest 0.5 within one image of the best validation accuracy. Both need
    /// good validation images; without them, in a layout of thin defects, the cut that
    /// outlines them best is the threshold (`outline_cut`), else 0.5.
    pub target_escape_rate: Option<f64>,
    /// Hold out this fold of a cross-validation instead of the dataset's own held-out part
    /// (see [`dataset::hold_out_fold`]); [`cross_validate`] sets it.
    pub fold: Option<Fold>,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Where each phase's progress goes.
    pub progress: Progress,
}

/// Training passes over the images, unless asked otherwise.
pub const DEFAULT_EPOCHS: usize = 12;
pub const DEFAULT_BATCH_SIZE: usize = 16;
pub const DEFAULT_LEARNING_RATE: f64 = 2e-3;
/// The side of the square images are resized to, unless asked otherwise.
pub const DEFAULT_INPUT_SIZE: usize = 256;
/// Augmented copies of each training image, unless asked otherwise.
pub const DEFAULT_AUGMENTED_COPIES: usize = 2;
/// Share of feature channels dropped per image while training, unless asked otherwise.
pub const DEFAULT_FEATURE_DROPOUT: f64 = 0.1;

impl SupervisedSettings {
    /// The defaults `linesight train supervised` uses, for `data` in `layout`, written to
    /// `out_dir`; no progress shown.
    pub fn defaults(
        name: &str,
        layout: Layout,
        data: PathBuf,
        backbone_weights: PathBuf,
        out_dir: PathBuf,
    ) -> SupervisedSettings {
        SupervisedSettings {
            name: name.to_owned(),
            layout,
            data,
            backbone_weights,
            epochs: DEFAULT_EPOCHS,
            batch_size: DEFAULT_BATCH_SIZE,
            learning_rate: DEFAULT_LEARNING_RATE,
            input_size: InputSize::Fixed(DEFAULT_INPUT_SIZE),
            augmented_copies: DEFAULT_AUGMENTED_COPIES,
            feature_dropout: DEFAULT_FEATURE_DROPOUT,
            target_escape_rate: None,
            fold: None,
            seed: 0,
            out_dir,
            progress: Progress::hidden(),
        }
    }
}

/// One (possibly augmented) training image: its features and targets.
struct Example {
    /// Patch-major `[grid, grid, FEATURE_DIM]`, as the training head reads them; f16 halves
    /// the memory of a large training set.
    features: Tensor,
    patch_labels: PatchLabels,
    class: u32,
    /// Whether the image's boxes name more than one defect type (a DeepPCB board): its
    /// patches teach each type, and the image-level class loss, which would pull every defect
    /// patch towards one of them, is left out.
    mixed: bool,
    /// Which training image this is a copy of (copies of one image share it).
    source: usize,
}

/// What an example teaches its patches (row-major classes).
#[derive(Debug, Clone)]
enum PatchLabels {
    /// A good image, or a defective one with a mask or boxes: every patch's class.
    Every(Vec<u32>),
    /// A defective image tagged without saying where: the patches found far from every good
    /// patch (see [`locate_tagged_defects`]) have the image's class; the others, 0 here, are
    /// unknown and teach nothing.
    Found(Vec<u32>),
    /// A tagged image not located (too few good images to compare with).
    Unknown,
}

/// Trains the head on the dataset's training part less its validation part and chooses the
/// threshold on the validation part; then trains the head again, with the same settings, on
/// the whole training part (a fifth more labelled images: on magnetic-tile that was worth
/// about two points of defect-vs-good accuracy) and keeps that threshold. Evaluates on the
/// held-out part, writes head and card. With [`InputSize::Auto`] the first fit runs at each
/// candidate size and the run goes on from the chosen size's ([`input_size`]); in a
/// cross-validation each fold chooses for itself.
pub fn train(settings: &SupervisedSettings) -> Result<ModelCard<SupervisedCard>, SupervisedError> {
    let started = Instant::now();
    let device = Device::Cpu;
    if let InputSize::Fixed(size) = settings.input_size {
        check_input_size(size).map_err(|m| file_error(&settings.data, &m))?;
    }
    if !(0.0..1.0).contains(&settings.feature_dropout) {
        return Err(file_error(
            &settings.data,
            &format!(
                "feature dropout must be at least 0 and below 1, not {}",
                settings.feature_dropout
            ),
        ));
    }
    let backbone = PatchFeatures::load(&settings.backbone_weights, &device)?;
    let mut samples = dataset::read(settings.layout, &settings.data)?;
    if let Some(fold) = settings.fold {
        dataset::hold_out_fold(&mut samples, settings.layout, fold);
    }
    let ((train_part, held_out), _) = held_out_split(&samples);
    // The training part less every `VALIDATION_EVERY`th image of each class (item, where the
    // dataset has items).
    let (fit_part, validation) =
        dataset::split_validation(&train_part, settings.layout, VALIDATION_EVERY);
    let mut classes: Vec<String> = vec!["good".into()];
    // Each defective image's class, and the type of each of its boxes (a DeepPCB board shows
    // several).
    let defects: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.defective())
        .flat_map(|s| {
            std::iter::once(s.taught_class()).chain(s.boxes.iter().map(|b| b.class.as_str()))
        })
        .collect();
    if defects.is_empty() {
        return Err(file_error(
            &settings.data,
            &"no defective images to learn from",
        ));
    }
    classes.extend(defects.into_iter().map(str::to_owned));
    // Class maps hold a class index a pixel (see `class_map`).
    if classes.len() > usize::from(u8::MAX) + 1 {
        return Err(file_error(
            &settings.data,
            &format!(
                "{} defect classes: a model tells at most {} apart",
                classes.len() - 1,
                u8::MAX
            ),
        ));
    }

    // The first fit at each candidate size (one, unless asked to choose; see `input_size`).
    let parts = Parts {
        fit: &fit_part,
        validation: &validation,
        classes: &classes,
    };
    let (first, size_choice) = match settings.input_size {
        InputSize::Fixed(size) => (
            first_fit(settings, backbone.with_input_size(size), &parts)?,
            None,
        ),
        InputSize::Auto { largest } => {
            let median = input_size::median_longer_side(fit_part.iter().map(|s| s.image.as_path()));
            let sizes = input_size::candidates(median, largest, settings.layout.thin_defects());
            let (best, trials, figure) = input_size::choose(&sizes, |size| {
                let fit = first_fit(settings, backbone.clone().with_input_size(size), &parts)?;
                let judged = fit.size_figure();
                tracing::info!(size, figure = ?judged, "input size tried on the validation images");
                Ok::<_, SupervisedError>((fit, judged))
            })?;
            let Some(best) = best else {
                return Err(file_error(&settings.data, &"no input size to try"));
            };
            let chosen = best.model.features.input_size();
            let choice = SizeChoice::new(chosen, trials, figure, median);
            (best, Some(choice))
        }
    };
    let FirstFit {
        mut model,
        mut varmap,
        mut train_set,
        mut validation_set,
        mut used,
        used_validation,
        n_skipped_train,
        fit_good_inputs,
        validation_good_inputs,
        scored,
        box_shape,
    } = first;
    let n_validation = used_validation.len();
    let mut guarantee = None;
    let has_good = scored.labels.iter().any(|l| !l);
    let chosen = match settings.target_escape_rate {
        // With enough defective validation images the threshold comes with a finite-sample
        // promise (split conformal); with fewer, the plain quantile, and the card says why.
        Some(rate) if has_good => {
            match eval::conformal_escape_threshold(&scored.scores, &scored.labels, rate) {
                Ok((t, promise)) => {
                    guarantee = Some(promise);
                    Some((
                        t,
                        format!(
                            "escape rate ≤ {rate} on {n_validation} validation images, {}",
                            promise.describe()
                        ),
                    ))
                }
                Err(few) => eval::threshold_for_escape_rate(&scored.scores, &scored.labels, rate)
                    .map(|t| {
                        (
                            t,
                            format!(
                                "escape rate ≤ {rate} on {n_validation} validation images, \
                                 without a guarantee: {few}"
                            ),
                        )
                    }),
            }
        }
        Some(_) => None,
        None => {
            eval::threshold_for_accuracy_near(&scored.scores, &scored.labels, 0.5, ACCURACY_SLACK)
                .map(|t| {
                    (
                        t,
                        format!(
                            "nearest 0.5 within {ACCURACY_SLACK} image of the best accuracy on \
                     {n_validation} validation images"
                        ),
                    )
                })
        }
    };
    // Without both kinds of validation image there is no verdict to choose a threshold by;
    // where every one shows a thin defect (every CrackForest photo shows a crack), the
    // threshold is the cut the heat-map overlay and a defect's region are marked at and its
    // outline is measured at, so the outlines choose it.
    let outline = || {
        let thin = scored.thin.as_ref().and_then(ThinDefectTruth::metrics)?;
        Some(outline_cut(thin, n_validation, settings.target_escape_rate))
    };
    let (threshold, mut rule) = chosen
        .or_else(outline)
        .unwrap_or((0.5, "0.5: no good or no defective validation images".into()));
    let box_shape = box_shape.map_or_else(BoxShape::default, |(shape, _)| shape);
    let drift = drift_reference(
        &fit_good_inputs,
        &validation_good_inputs,
        &scored,
        threshold,
    );

    // Final fit: the whole training part, validation images included.
    if !validation_set.is_empty() {
        train_set.append(&mut validation_set);
        used.extend(used_validation);
        locate_tagged_defects(&mut train_set, settings.seed, &settings.progress)?;
        let (head, normaliser, refitted) =
            fit_head(&train_set, classes.len(), settings, "whole training part")?;
        model.inference = InferenceHead::new(&head, &normaliser)?;
        model.normaliser = normaliser;
        varmap = refitted;
        rule.push_str(" (by the model fitted without them; the final model adds them)");
    }
    let training_duration_s = started.elapsed().as_secs_f64();
    let n_tagged_train = train_set
        .iter()
        .filter(|e| !matches!(e.patch_labels, PatchLabels::Every(_)))
        .map(|e| e.source)
        .collect::<BTreeSet<_>>()
        .len();

    let architecture = format!(
        "patch segmentation head (1x1 {FEATURE_DIM}->{HIDDEN}, 3x3 {HIDDEN}->{HIDDEN}, 1x1 {HIDDEN}->{}) on frozen features",
        classes.len()
    );
    let family = SupervisedCard {
        input: BackboneInput::of(&model.features),
        classes,
        feature_mean: model.normaliser.mean.flatten_all()?.to_vec1()?,
        feature_std: model.normaliser.std.flatten_all()?.to_vec1()?,
        dataset: settings.data.display().to_string(),
        training_data_sha256: dataset::content_digest(used.iter().map(|s| &s.image))?,
        layout: settings.layout,
        split: match settings.fold {
            Some(fold) => format!(
                "held out: {fold} of a cross-validation (whole items where the dataset has \
                 them, else every {}th image of each class); validation: every \
                 {VALIDATION_EVERY}th image (item) of the rest",
                fold.of
            ),
            None => format!(
                "held out: every {HOLDOUT_EVERY}th image of each class (sorted by path) or the \
                 dataset's own split; validation: every {VALIDATION_EVERY}th image (item, where \
                 the dataset has items) of the rest"
            ),
        },
        n_train: used.len(),
        n_tagged_train,
        n_skipped_train,
        n_validation,
        augmented_copies: settings.augmented_copies,
        feature_dropout: settings.feature_dropout,
        epochs: settings.epochs,
        seed: settings.seed,
        training_duration_s,
        box_shape,
        input_size_choice: size_choice,
        metrics: empty_metrics(0),
    };
    // Versioned once the threshold is in the card; measured with the final card in place.
    model.card = ModelCard::new(
        &settings.name,
        String::new(),
        architecture,
        (threshold, rule),
        family,
    )
    .with_guarantee(guarantee)
    .with_drift(drift);
    model.card.family.metrics = evaluate(&model, &held_out, &settings.progress)?;
    model.card.head.version = format!("{}@{}", settings.name, version_suffix(&model, &varmap)?);
    save(&model, &varmap, &settings.out_dir)?;
    Ok(model.card)
}

/// What a first fit learns from: the training part less its validation part, the validation
/// part, and the classes.
#[derive(Clone, Copy)]
struct Parts<'a> {
    fit: &'a [Sample],
    validation: &'a [Sample],
    classes: &'a [String],
}

/// A head fitted on the fit part at one input size and scored on the validation images, with
/// what the final fit and the card go on from.
struct FirstFit {
    model: SupervisedModel,
    varmap: VarMap,
    train_set: Vec<Example>,
    validation_set: Vec<Example>,
    used: Vec<Sample>,
    used_validation: Vec<Sample>,
    n_skipped_train: usize,
    fit_good_inputs: Vec<InputStats>,
    validation_good_inputs: Vec<InputStats>,
    scored: Scored,
    /// How boxes are drawn, chosen on the validation images where they have boxes, with the
    /// mean AP it reached there.
    box_shape: Option<(BoxShape, f64)>,
}

impl FirstFit {
    /// The validation figure input sizes are compared by (see [`input_size`]), and what it is.
    fn size_figure(&self) -> Option<(f64, &'static str)> {
        if let Some(thin) = self.scored.thin.as_ref().and_then(ThinDefectTruth::metrics) {
            return Some((
                thin.best_over_images.f1,
                "thin-defect F1 of the validation images at the best heat-map cut",
            ));
        }
        if let Some((_, mean_ap)) = self.box_shape {
            return Some((
                mean_ap,
                "box mean AP of the validation images (IoU 0.5-0.75)",
            ));
        }
        eval::auroc(&self.scored.scores, &self.scored.labels)
            .map(|auroc| (auroc, "image AUROC of the validation images"))
    }
}

/// The threshold of a model whose `n_validation` validation images all show thin defects (no
/// good one to choose a verdict by), and its rule: the heat-map cut that outlined their
/// defects best, since the threshold is also the cut a station marks a defect's region at
/// (boxes keep their own cut, [`BoxShape`]). A `target_escape_rate` asked for is named as not
/// applied: it needs good validation images too.
fn outline_cut(
    thin: ThinDefectMetrics,
    n_validation: usize,
    target_escape_rate: Option<f64>,
) -> (f32, String) {
    let best = thin.best_over_images;
    let mut rule = format!(
        "cut {:.2}: the best thin-defect outline F1 ({:.3}) of {n_validation} validation \
         images, none of them good",
        best.threshold, best.f1
    );
    if let Some(rate) = target_escape_rate {
        rule.push_str(&format!(
            " (the target escape rate {rate} needs good validation images too)"
        ));
    }
    (best.threshold, rule)
}

/// Extracts the features of the fit and validation images at `features`' input size (the
/// same augmentations at every size: the rng starts from the seed), fits a head on the fit
/// part and scores the validation images with it.
fn first_fit(
    settings: &SupervisedSettings,
    features: PatchFeatures,
    parts: &Parts,
) -> Result<FirstFit, SupervisedError> {
    let Parts {
        fit: fit_part,
        validation,
        classes,
    } = *parts;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let copies = 1 + settings.augmented_copies;
    let bar = settings.progress.phase(
        (fit_part.len() + validation.len()) * copies,
        &format!("features of training images at {}", features.input_size()),
    );
    // Each image is decoded once: its examples, and for a good one the input statistics the
    // card's drift reference learns from.
    let mut next_source = 0;
    let mut extract = |part: &[Sample]| {
        let mut examples = Vec::new();
        let mut used = Vec::new();
        let mut good_inputs = Vec::new();
        for sample in part {
            if bar.check().is_err() {
                // The caller sees the cancel at its next check, below.
                break;
            }
            next_source += 1;
            match training_examples(&features, sample, next_source, classes, copies, &mut rng) {
                Ok((mut more, inputs)) => {
                    examples.append(&mut more);
                    used.push(sample.clone());
                    if !sample.defective() {
                        good_inputs.push(inputs);
                    }
                }
                Err(error) => {
                    tracing::warn!(image = %sample.image.display(), %error, "skipping training image")
                }
            }
            bar.inc(copies as u64);
        }
        (examples, used, good_inputs)
    };
    let (mut train_set, used, fit_good_inputs) = extract(fit_part);
    let (validation_set, used_validation, validation_good_inputs) = extract(validation);
    bar.check()?;
    bar.finish_and_clear();
    let n_skipped_train = fit_part.len() + validation.len() - used.len() - used_validation.len();
    if train_set.is_empty() {
        return Err(file_error(&settings.data, &"no usable training image"));
    }

    // On the fit part only, to choose the threshold on validation images it never saw.
    locate_tagged_defects(&mut train_set, settings.seed, &settings.progress)?;
    let (head, normaliser, varmap) = fit_head(&train_set, classes.len(), settings, "fit part")?;
    // The first fit's card names the real classes: scoring the validation part finds each
    // image's class by name (placeholder names skipped every defective image, and the threshold
    // fell back to 0.5 whatever the target).
    let mut model = SupervisedModel {
        card: untrained_card(classes.to_vec(), &features),
        features,
        inference: InferenceHead::new(&head, &normaliser)?,
        normaliser,
    };
    // And its layout, which tells scoring whether the images have thin defects.
    model.card.family.layout = settings.layout;
    let scored = score_all(
        &model,
        validation,
        &settings.progress,
        "validation images",
        Pass::Validation,
    )?;
    // How boxes are drawn: chosen on the same validation images as the threshold.
    let box_shape = (scored.boxed.as_deref())
        .and_then(|images| choose_box_shape(images, &model.card.family.classes));
    if let Some((shape, fit)) = box_shape {
        tracing::info!(
            cut = shape.cut,
            scale = shape.scale,
            mean_ap = fit,
            "box shape chosen on the validation images"
        );
    }
    Ok(FirstFit {
        model,
        varmap,
        train_set,
        validation_set,
        used,
        used_validation,
        n_skipped_train,
        fit_good_inputs,
        validation_good_inputs,
        scored,
        box_shape,
    })
}

/// Fits a fresh head (seeded from `settings.seed`) and the feature standardisation to
/// `examples`; `what` names the examples in the log.
fn fit_head(
    examples: &[Example],
    classes: usize,
    settings: &SupervisedSettings,
    what: &str,
) -> Result<(SegmentationHead, Normaliser, VarMap), SupervisedError> {
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let normaliser = Normaliser::fit(examples.iter().map(|e| &e.features))?;
    let varmap = VarMap::new();
    let head = SegmentationHead::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        classes,
    )?;
    seeded_init(&varmap, settings.seed)?;
    let mut optimizer = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let has_good = examples.iter().any(|e| e.class == 0);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let steps_per_epoch = examples.len().div_ceil(settings.batch_size.max(1));
    let total_steps = settings.epochs * steps_per_epoch;
    let bar = settings.progress.phase(total_steps, "training steps");
    let mut step = 0;
    for epoch in 0..settings.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for batch in order.chunks(settings.batch_size.max(1)) {
            bar.check()?;
            // Linear decay to a tenth: big steps first, fine ones at the end.
            let progress = step as f64 / total_steps.max(1) as f64;
            optimizer.set_learning_rate(settings.learning_rate * (1.0 - 0.9 * progress));
            let inputs = BatchInputs {
                head: &head,
                normaliser: &normaliser,
                examples,
                batch,
                has_good,
                feature_dropout: settings.feature_dropout,
            };
            let loss = inputs.loss(&mut rng)?;
            optimizer.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            epoch_loss += loss * batch.len() as f32;
            bar.set_message(format!(
                "{what}: epoch {}/{} loss {loss:.4}",
                epoch + 1,
                settings.epochs
            ));
            bar.inc(1);
            step += 1;
        }
        tracing::info!(
            what,
            epoch = epoch + 1,
            mean_loss = epoch_loss / examples.len() as f32,
            "epoch done"
        );
    }
    bar.finish_and_clear();
    Ok((head, normaliser, varmap))
}

/// The card's drift reference: the inputs of the good fit images against those of the good
/// validation images, and the validation scores of the model fitted without them; `None` (and a
/// warning) with too few good images.
fn drift_reference(
    fit_good: &[InputStats],
    validation_good: &[InputStats],
    scored: &Scored,
    threshold: f32,
) -> Option<DriftReference> {
    let good_scores: Vec<f32> = (scored.scores.iter().zip(&scored.labels))
        .filter(|(_, defective)| !**defective)
        .map(|(&s, _)| s)
        .collect();
    let errors = (scored.scores.iter().zip(&scored.labels))
        .filter(|&(&s, &defective)| (s >= threshold) != defective)
        .count();
    DriftReference::learn(
        fit_good,
        validation_good,
        ProfileImages::Good,
        &good_scores,
        (errors, scored.scores.len()),
        // Scored by the first fit; the final model refits on these images.
        false,
    )
    .map_err(|why| tracing::warn!(%why, "no drift reference on the card"))
    .ok()
}

/// The part of a dataset training held out, and what it is in words.
pub fn held_out_part(samples: &[Sample]) -> (Vec<Sample>, String) {
    let ((_, held_out), said) = held_out_split(samples);
    (held_out, said)
}

/// What a k-fold cross-validation measured: each fold's model scored on the images it never
/// saw, and all of them pooled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossValidation {
    pub folds: Vec<FoldResult>,
    /// Every image's score by the model that did not train on it: image AUROC and average
    /// precision over the whole dataset.
    pub pooled: DetectionMetrics,
    /// Share of images called right, each at its own fold model's threshold.
    pub pooled_accuracy: f64,
    /// Mean of the folds' average precision (the pooled figure mixes models' score scales).
    pub mean_fold_average_precision: Option<f64>,
}

/// One fold of a [`CrossValidation`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldResult {
    /// From 1.
    pub fold: usize,
    pub version: String,
    pub threshold: f32,
    pub held_out: DetectionMetrics,
    pub accuracy: f64,
}

/// Trains `folds` models, each holding out one fold of the dataset (whole items where the
/// layout has them: KolektorSDD's authors validate this way, by item, because 12 held-out
/// images judge nothing), into `settings.out_dir/fold-N`, scores each on its held-out fold and
/// pools the scores. Every other setting is the caller's.
pub fn cross_validate(
    settings: &SupervisedSettings,
    folds: usize,
) -> Result<CrossValidation, SupervisedError> {
    if folds < 2 {
        return Err(file_error(
            &settings.data,
            &format!("a cross-validation needs at least 2 folds, not {folds}"),
        ));
    }
    // Read once: each fold only reassigns which samples it holds out (KolektorSDD's reader
    // decodes every label image to know whether its part is defective).
    let samples = dataset::read(settings.layout, &settings.data)?;
    let mut results = Vec::with_capacity(folds);
    let (mut scores, mut labels, mut right) = (Vec::new(), Vec::new(), 0usize);
    for index in 0..folds {
        let fold = Fold { index, of: folds };
        let out_dir = settings.out_dir.join(format!("fold-{}", index + 1));
        let card = train(&SupervisedSettings {
            fold: Some(fold),
            out_dir: out_dir.clone(),
            name: format!("{}-fold{}", settings.name, index + 1),
            ..settings.clone()
        })?;
        let model = SupervisedModel::load(
            &out_dir,
            &WeightsSearch::file(&settings.backbone_weights),
            &Device::Cpu,
        )?;
        let mut assigned = samples.clone();
        dataset::hold_out_fold(&mut assigned, settings.layout, fold);
        let held_out: Vec<Sample> = assigned
            .into_iter()
            .filter(|s| s.held_out == Some(true))
            .collect();
        let what = format!("held-out images of {fold}");
        let scored = score_all(&model, &held_out, &settings.progress, &what, Pass::Fold)?;
        let threshold = card.head.threshold;
        let called_right = scored
            .scores
            .iter()
            .zip(&scored.labels)
            .filter(|(score, defective)| (**score >= threshold) == **defective)
            .count();
        results.push(FoldResult {
            fold: index + 1,
            version: card.head.version.clone(),
            threshold,
            held_out: DetectionMetrics::from_scores(
                &scored.scores,
                &scored.labels,
                scored.n_skipped,
                scored.pixels.auroc(),
                scored.pixels.pro(),
            ),
            accuracy: called_right as f64 / scored.scores.len().max(1) as f64,
        });
        right += called_right;
        scores.extend(scored.scores);
        labels.extend(scored.labels);
    }
    let fold_aps: Vec<f64> = results
        .iter()
        .filter_map(|r| r.held_out.average_precision)
        .collect();
    let skipped = results.iter().map(|r| r.held_out.n_skipped).sum();
    Ok(CrossValidation {
        pooled: DetectionMetrics::from_scores(&scores, &labels, skipped, None, None),
        pooled_accuracy: right as f64 / scores.len().max(1) as f64,
        mean_fold_average_precision: (!fold_aps.is_empty())
            .then(|| fold_aps.iter().sum::<f64>() / fold_aps.len() as f64),
        folds: results,
    })
}

/// (training part, held-out part), and which rule split them, in words: the dataset's own
/// split, unless its training part has no defect to learn from (MVTec AD's `train/` is good
/// parts only); then every `HOLDOUT_EVERY`th image of each class, ignoring it.
fn held_out_split(samples: &[Sample]) -> ((Vec<Sample>, Vec<Sample>), String) {
    let (train_part, held_out) = dataset::split_every(samples, HOLDOUT_EVERY);
    if train_part.iter().any(Sample::defective) {
        let rule = if samples.iter().any(|s| s.held_out.is_some()) {
            "the held-out part (the dataset's own test split)".to_owned()
        } else {
            format!("the held-out part (every {HOLDOUT_EVERY}th image of each class)")
        };
        return ((train_part, held_out), rule);
    }
    (
        dataset::split_every_ignoring_own(samples, HOLDOUT_EVERY),
        format!(
            "the held-out part (every {HOLDOUT_EVERY}th image of each class: the dataset's own \
             training part has no defect)"
        ),
    )
}

/// A version suffix from the weights and the threshold: two trainings that differ in anything
/// the station uses get different versions.
fn version_suffix(model: &SupervisedModel, varmap: &VarMap) -> candle_core::Result<String> {
    let mut hash = ContentHash::new();
    for_each_var_sorted(varmap, |name, var| {
        hash.bytes(name.as_bytes())
            .floats(&var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })?;
    hash.floats(&[model.card.head.threshold]);
    // Only where chosen, so that versions of models without boxes read as before.
    let shape = model.card.family.box_shape;
    if !shape.is_default() {
        hash.floats(&[shape.cut, shape.scale]);
    }
    Ok(hash.version_suffix())
}

fn save(model: &SupervisedModel, varmap: &VarMap, dir: &Path) -> Result<(), SupervisedError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, &e))?;
    let head_path = dir.join(HEAD_FILE);
    varmap
        .save(&head_path)
        .map_err(|e| file_error(&head_path, &e))?;
    Ok(model.card.write(dir)?)
}

/// Weighted patch cross-entropy, plus the image-level losses of the derived verdict (when the
/// set has good images) and class (for defective images).
/// One training batch, for its loss.
struct BatchInputs<'a> {
    head: &'a SegmentationHead,
    normaliser: &'a Normaliser,
    examples: &'a [Example],
    batch: &'a [usize],
    /// Whether the training set has good images (else the image verdict is not learnt).
    has_good: bool,
    /// Share of feature channels zeroed per image (the rest scaled up to keep the mean).
    feature_dropout: f64,
}

impl BatchInputs<'_> {
    /// The patch cross-entropy plus the losses of the image verdict and the defect class.
    fn loss(&self, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        let BatchInputs {
            head,
            examples,
            batch,
            ..
        } = *self;
        let device = &Device::Cpu;
        let inputs: Vec<&Tensor> = batch.iter().map(|&i| &examples[i].features).collect();
        let mut xs = self
            .normaliser
            .apply_patch_major(&Tensor::stack(&inputs, 0)?)?;
        let (b, h, w, c) = xs.dims4()?;
        if self.feature_dropout > 0.0 {
            // Whole channels of an image at a time: the head cannot lean on a few channels
            // that happen to separate the training images (magnetic-tile, p = 0.1:
            // defect-vs-good accuracy +0.8 and defect-class accuracy +2.3 points, mean of
            // three seeds).
            let keep = 1.0 - self.feature_dropout;
            let scale = (1.0 / keep) as f32;
            let mask: Vec<f32> = (0..b * c)
                .map(|_| if rng.gen_bool(keep) { scale } else { 0.0 })
                .collect();
            xs = xs.broadcast_mul(&Tensor::from_vec(mask, (b, 1, 1, c), device)?)?;
        }
        let per_patch = head.forward_patches(&xs)?;
        let k = per_patch.dim(1)?;
        let logits = per_patch.reshape((b, h, w, k))?.permute((0, 3, 1, 2))?;
        // An image tagged defective without saying where has a defect somewhere among its
        // patches, and most of them look like good ones. Teaching every one of them "defect"
        // made the model call the background of such images defective (98 % of it, in the
        // test). Multiple-instance learning instead: only the patches found far from the good
        // ones are taught the image's class (`Found`), or, with no good image to compare
        // with, the one patch the model itself finds most defective (`Unknown`); the
        // image-level losses below do the rest. A good image teaches all of its patches.
        let n = h * w;
        let tagged: Vec<usize> = (0..b)
            .filter(|&j| matches!(examples[batch[j]].patch_labels, PatchLabels::Unknown))
            .collect();
        let mut most_defective = vec![0usize; b];
        if !tagged.is_empty() {
            let scores = patch_log_odds(&per_patch)?.to_vec1::<f32>()?;
            for &j in &tagged {
                most_defective[j] = (0..n)
                    .max_by(|&p, &q| scores[j * n + p].total_cmp(&scores[j * n + q]))
                    .unwrap_or(0);
            }
        }
        let mut targets = Vec::with_capacity(b * n);
        let mut weights = Vec::with_capacity(b * n);
        for (j, &i) in batch.iter().enumerate() {
            // A good patch teaches where every patch is labelled; a found defect's other
            // patches are unknown.
            let (patches, good_weight) = match &examples[i].patch_labels {
                PatchLabels::Every(patches) => (patches, 1.0),
                PatchLabels::Found(patches) => (patches, 0.0),
                PatchLabels::Unknown => {
                    let at = targets.len() + most_defective[j];
                    targets.extend(std::iter::repeat_n(0, n));
                    weights.extend(std::iter::repeat_n(0f32, n));
                    targets[at] = examples[i].class;
                    weights[at] = DEFECT_WEIGHT as f32;
                    continue;
                }
            };
            targets.extend_from_slice(patches);
            weights.extend(patches.iter().map(|&t| {
                if t == 0 {
                    good_weight
                } else {
                    DEFECT_WEIGHT as f32
                }
            }));
        }
        let weight_sum: f32 = weights.iter().sum();
        let targets = Tensor::from_vec(targets, b * n, device)?;
        let weights = Tensor::from_vec(weights, b * n, device)?;
        let log_p = candle_nn::ops::log_softmax(&per_patch, D::Minus1)?;
        let picked = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        let mut loss = if weight_sum > 0.0 {
            ((picked * &weights)?.sum_all()? / f64::from(weight_sum))?.neg()?
        } else {
            Tensor::zeros((), DType::F32, device)?
        };

        let (defect_logit, class_log_mass) = image_outputs(&logits)?;
        if self.has_good {
            let labels: Vec<f32> = batch
                .iter()
                .map(|&i| if examples[i].class == 0 { 0.0 } else { 1.0 })
                .collect();
            let labels = Tensor::from_vec(labels, b, device)?;
            loss = (loss + binary_cross_entropy_with_logits(&defect_logit, &labels)?)?;
        }
        let defective: Vec<u32> = (0..b as u32)
            .filter(|&j| {
                let example = &examples[batch[j as usize]];
                example.class != 0 && !example.mixed
            })
            .collect();
        if !defective.is_empty() {
            let class_targets: Vec<u32> = defective
                .iter()
                .map(|&j| examples[batch[j as usize]].class - 1)
                .collect();
            let rows = Tensor::from_vec(defective.clone(), defective.len(), device)?;
            let class_logits = class_log_mass.index_select(&rows, 0)?;
            let class_targets = Tensor::from_vec(class_targets, defective.len(), device)?;
            loss = (loss + candle_nn::loss::cross_entropy(&class_logits, &class_targets)?)?;
        }
        Ok(loss)
    }
}

/// Most good patches [`locate_tagged_defects`] compares tagged images with: a random sample
/// of this many keeps the search to seconds per thousand images.
const LOCATE_BANK_PATCHES: usize = 16_384;

/// Share of the good calibration patches [`locate_tagged_defects`] keeps below its limit: the
/// farthest good patch of hundreds of images is an outlier (a tile at the edge of the lighting
/// range), which left most of a tagged image's defect below the limit.
const LOCATE_LIMIT_QUANTILE: f64 = 0.999;

/// Finds where the defect of each image tagged defective without a mask lies, the way the
/// good-only anomaly model does: the patches whose nearest good patch is farther than it is for
/// 99.9 % of good patches ([`LOCATE_LIMIT_QUANTILE`]). The good images are split in two by
/// image: one half's patches (a random sample of at most [`LOCATE_BANK_PATCHES`]) are the bank;
/// the other half's distances to it set the limit, so the limit is what good images the bank
/// never saw reach. A tagged image with no patch past the limit still has a defect: its
/// farthest patch is taken. The other patches of a tagged image stay unknown
/// ([`PatchLabels::Found`]).
///
/// With one good image (one source: an image and its augmented copies) its patches are the
/// bank and nothing is left to learn a limit on: each tagged image teaches its farthest patch
/// only. With none, nothing is compared: tagged images stay [`PatchLabels::Unknown`], and the
/// training loop picks their most defective patch itself. (That loop alone, tried with one
/// good image, taught background patches and never the defects: pixel AUROC 0.03.)
fn locate_tagged_defects(
    examples: &mut [Example],
    seed: u64,
    progress: &Progress,
) -> Result<(), SupervisedError> {
    let tagged: Vec<usize> = (0..examples.len())
        .filter(|&i| !matches!(examples[i].patch_labels, PatchLabels::Every(_)))
        .collect();
    let good_sources: BTreeSet<usize> = examples
        .iter()
        .filter(|e| e.class == 0)
        .map(|e| e.source)
        .collect();
    if tagged.is_empty() || good_sources.is_empty() {
        return Ok(());
    }
    let in_bank: BTreeSet<usize> = good_sources.iter().copied().step_by(2).collect();
    let patches = |e: &Example| -> candle_core::Result<Tensor> {
        let (gh, gw, c) = e.features.dims3()?;
        e.features.reshape((gh * gw, c))?.to_dtype(DType::F32)
    };
    let (bank_examples, calibration): (Vec<&Example>, Vec<&Example>) = examples
        .iter()
        .filter(|e| e.class == 0)
        .partition(|e| in_bank.contains(&e.source));
    // The bank's rows are drawn before they are gathered: every good patch in f32 would be
    // hundreds of MB on a training set of a few hundred images.
    let Some(first) = bank_examples.first() else {
        return Ok(());
    };
    let per_example = {
        let (gh, gw, _) = first.features.dims3()?;
        gh * gw
    };
    let bank = sample_rows(
        bank_examples.len(),
        per_example,
        LOCATE_BANK_PATCHES,
        seed,
        |i| patches(bank_examples[i]),
    )?;
    let (bank_t, bank_sq) = search_layout(&bank)?;
    let bar = progress.phase(calibration.len() + tagged.len(), "locating tagged defects");
    let mut good_distances = Vec::new();
    for example in calibration {
        bar.check()?;
        bar.inc(1);
        good_distances.extend(nearest_distances(&patches(example)?, &bank_t, &bank_sq)?);
    }
    good_distances.sort_by(f32::total_cmp);
    let at = ((good_distances.len() as f64 * LOCATE_LIMIT_QUANTILE) as usize)
        .min(good_distances.len().saturating_sub(1));
    // No calibration half (one good image): no patch is past the limit, the farthest is taken.
    let limit = good_distances.get(at).copied().unwrap_or(f32::INFINITY);
    for i in tagged {
        bar.check()?;
        bar.inc(1);
        let example = &mut examples[i];
        let distances = nearest_distances(&patches(example)?, &bank_t, &bank_sq)?;
        let mut targets: Vec<u32> = distances
            .iter()
            .map(|&d| if d > limit { example.class } else { 0 })
            .collect();
        if targets.iter().all(|&t| t == 0)
            && let Some(farthest) =
                (0..distances.len()).max_by(|&a, &b| distances[a].total_cmp(&distances[b]))
        {
            targets[farthest] = example.class;
        }
        example.patch_labels = PatchLabels::Found(targets);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Each patch's defect log-odds `logsumexp(defect logits) − good logit`, from patch logits
/// `[patches, K]`.
fn patch_log_odds(per_patch: &Tensor) -> candle_core::Result<Tensor> {
    let defect = per_patch.narrow(1, 1, per_patch.dim(1)? - 1)?;
    defect.log_sum_exp(1)? - per_patch.narrow(1, 0, 1)?.squeeze(1)?
}

/// Mean binary cross-entropy of logits `x` against targets `t` in `[0, 1]`.
fn binary_cross_entropy_with_logits(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    binary_cross_entropy_each(x, t)?.mean_all()
}

/// The image itself and `copies − 1` augmented versions of it, as training examples.
fn training_examples(
    features: &PatchFeatures,
    sample: &Sample,
    source: usize,
    classes: &[String],
    copies: usize,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<Example>, InputStats), String> {
    let image = dataset::load_gray(&sample.image).map_err(|e| e.to_string())?;
    let inputs = InputStats::of(&image);
    let class = classes
        .iter()
        .position(|c| c == sample.taught_class())
        .and_then(|i| u8::try_from(i).ok())
        .ok_or("class not among the model's")?;
    // A tagged image's patches get no targets; its blank stand-in only keeps the augmentation
    // call the same.
    let located = class_map(sample, &image, classes, class)?;
    let mixed = (sample.boxes.iter()).any(|b| b.class != sample.taught_class());
    let has_mask = located.is_some();
    let mask = located.unwrap_or_else(|| GrayImage {
        width: image.width,
        height: image.height,
        pixels: vec![0; image.pixels.len()],
    });
    let mut out = Vec::with_capacity(copies);
    for copy in 0..copies {
        let augmentation = if copy == 0 {
            Augmentation::IDENTITY
        } else {
            Augmentation::random(rng)
        };
        let (image, mask) = augmentation
            .apply(&image, &mask, rng)
            .map_err(|e| e.to_string())?;
        let maps = features
            .maps(&image)
            .and_then(|m| {
                m.squeeze(0)?
                    .permute((1, 2, 0))?
                    .contiguous()?
                    .to_dtype(DType::F16)
            })
            .map_err(|e| e.to_string())?;
        out.push(Example {
            features: maps,
            patch_labels: if has_mask {
                PatchLabels::Every(patch_targets(&mask, features.input_size() / 8))
            } else {
                PatchLabels::Unknown
            },
            class: u32::from(class),
            mixed,
            source,
        });
    }
    Ok((out, inputs))
}

/// Where the sample's defects are and of which class, as a class map the size of its image:
/// each pixel the index of its class among `classes` (0: good). From its mask file, every
/// marked pixel of class `image_class`, or of the type of the box over it where it has
/// typed boxes too (a station's label: regions of several types, each also a box); from
/// boxes alone, each box's pixels of its own type. A type the model does not know counts as
/// `image_class`; where boxes overlap, the later one's. Good images map to 0 everywhere; a
/// defective image with neither (or an empty mask file) has `None`: it is labelled defective
/// somewhere, not everywhere.
fn class_map(
    sample: &Sample,
    image: &GrayImage,
    classes: &[String],
    image_class: u8,
) -> Result<Option<GrayImage>, String> {
    let size = (image.width, image.height);
    let blank = || GrayImage {
        width: image.width,
        height: image.height,
        pixels: vec![0; image.pixels.len()],
    };
    if !sample.defective() {
        return Ok(Some(blank()));
    }
    // Each box's pixels of its type (0 where no box is; a type the model does not know, or
    // `good`, counts as the image's class).
    let boxes = (!sample.boxes.is_empty()).then(|| {
        let mut map = blank();
        let width = image.width as usize;
        for labelled in &sample.boxes {
            let class = (classes.iter().position(|c| *c == labelled.class))
                .and_then(|i| u8::try_from(i).ok())
                .filter(|&i| i > 0)
                .unwrap_or(image_class);
            let [x0, y0, x1, y1] = labelled.bbox;
            for y in y0..end_on_image(y1, image.height) {
                for x in x0..end_on_image(x1, image.width) {
                    map.pixels[y as usize * width + x as usize] = class;
                }
            }
        }
        map
    });
    if let Some(path) = &sample.mask {
        let mut mask = dataset::load_mask(path).map_err(|e| e.to_string())?;
        if (mask.width, mask.height) != size {
            return Err(format!(
                "mask {} is {}×{}, its image {}×{}",
                path.display(),
                mask.width,
                mask.height,
                size.0,
                size.1
            ));
        }
        if mask.pixels.iter().any(|&p| p > 0) {
            for (i, p) in mask.pixels.iter_mut().enumerate() {
                *p = match (*p, &boxes) {
                    (0, _) => 0,
                    (_, Some(boxes)) if boxes.pixels[i] > 0 => boxes.pixels[i],
                    _ => image_class,
                };
            }
            return Ok(Some(mask));
        }
    }
    Ok(boxes)
}

/// Where the sample's defects are, whatever their class, as a mask the pixel metrics read
/// (255 a defect, 0 good): [`class_map`] with every defect of one class, 255.
fn defect_mask(sample: &Sample, image: &GrayImage) -> Result<Option<GrayImage>, String> {
    class_map(sample, image, &[], u8::MAX)
}

/// One past a box's last pixel `last` (inclusive), on an image `side` pixels long: a label past
/// the edge is cut to it.
fn end_on_image(last: u32, side: u32) -> u32 {
    last.min(side.saturating_sub(1)) + 1
}

/// The class of each patch of a `grid`×`grid` split of a class map: the defect class that
/// covers most of the patch, where it covers enough of it. A defect smaller than that still
/// marks the patch it covers most (with the class covering most of that patch), so no
/// defective image teaches "all good".
fn patch_targets(map: &GrayImage, grid: usize) -> Vec<u32> {
    let (w, h) = (map.width as usize, map.height as usize);
    let k = map.pixels.iter().copied().max().unwrap_or(0) as usize + 1;
    // Per patch: its pixels, and how many of them each class covers.
    let mut total = vec![0u32; grid * grid];
    let mut covered = vec![0u32; grid * grid * k];
    for y in 0..h {
        let py = y * grid / h.max(1);
        for x in 0..w {
            let patch = py * grid + x * grid / w.max(1);
            total[patch] += 1;
            covered[patch * k + map.pixels[y * w + x] as usize] += 1;
        }
    }
    // Per patch: its most covering defect class, and the share of the patch it covers.
    let main: Vec<(u32, f32)> = (0..grid * grid)
        .map(|patch| {
            let counts = &covered[patch * k..(patch + 1) * k];
            let (class, count) = (1..k)
                .map(|c| (c, counts[c]))
                .fold((0, 0), |best, c| if c.1 > best.1 { c } else { best });
            let share = if total[patch] > 0 {
                count as f32 / total[patch] as f32
            } else {
                0.0
            };
            (class as u32, share)
        })
        .collect();
    let mut targets: Vec<u32> = (main.iter())
        .map(|&(class, share)| if share >= MASK_COVERAGE { class } else { 0 })
        .collect();
    if targets.iter().all(|&t| t == 0) {
        let defect_share = |patch: usize| {
            let defect: u32 = covered[patch * k + 1..(patch + 1) * k].iter().sum();
            defect as f32 / total[patch].max(1) as f32
        };
        if let Some(best) =
            (0..grid * grid).max_by(|a, b| defect_share(*a).total_cmp(&defect_share(*b)))
            && defect_share(best) > 0.0
        {
            targets[best] = main[best].0;
        }
    }
    targets
}

/// Scores, labels and predictions over readable samples.
struct Scored {
    scores: Vec<f32>,
    labels: Vec<bool>,
    truths: Vec<usize>,
    defect_classes: Vec<usize>,
    pixels: PixelTruth,
    /// Kept for layouts of thin defects only: counting at the images' resolution costs.
    thin: Option<ThinDefectTruth>,
    /// For images labelled with boxes only: what each image's boxes are drawn from, so that
    /// they can be drawn in any shape.
    boxed: Option<Vec<BoxedImage>>,
    n_skipped: usize,
}

/// One scored image of a layout labelled with boxes: what its boxes are drawn from.
struct BoxedImage {
    heat_map: HeatMap,
    /// Each cell's likeliest defect class, which names the boxes.
    patch_class: Vec<u8>,
    width: u32,
    height: u32,
    /// Its true boxes, maxima exclusive, with their defect types.
    truth: Vec<([u32; 4], String)>,
}

/// The boxes of `images` drawn as `shape` says, each naming its class among `classes` (none
/// where `classes` is empty), against their true boxes.
fn box_truth(images: &[BoxedImage], shape: BoxShape, classes: &[String]) -> BoxTruth {
    let mut truth = BoxTruth::default();
    for image in images {
        let predicted = classed_boxes(
            &image.heat_map,
            &image.patch_class,
            classes,
            image.width,
            image.height,
            shape,
        );
        truth.add_classed(
            (predicted.into_iter())
                .map(|b| ((b.bbox, b.score), b.class))
                .collect(),
            image.truth.clone(),
        );
    }
    truth
}

/// The blob cuts [`choose_box_shape`] tries: 0.3, 0.4, …, 0.9.
const BOX_CUTS: [f32; 7] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The overlap rules whose mean average precision [`choose_box_shape`] maximises: from VOC's
/// 0.5 to 0.75, as COCO's mean does up to 0.95 (a patch grid does not draw that tight).
const SHAPE_IOUS: [f64; 6] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75];

/// A predicted box overlapping a true one at least this much is taken to be its drawing, when
/// the scale that makes blobs' boxes the labellers' size is measured.
const SAME_DEFECT_IOU: f64 = 0.1;

/// How to draw boxes so that they fit the validation images' true boxes best, with how well
/// (the mean over [`SHAPE_IOUS`] of the average precision; where the model tells several
/// defect types apart and every true box names its type, of the types' mean average
/// precision, boxes named by `classes`); `None` without a true box. Each cut of [`BOX_CUTS`]
/// is tried with its boxes as drawn and scaled by the median size ratio of the true boxes to
/// the boxes that overlap them: a lower cut finds fainter defects, a higher one draws tighter
/// blobs, and labellers draw boxes tight or loose. Which pays depends on the product's defects
/// against the patch grid, so the training run measures it. The mean over stricter overlaps,
/// not VOC's 0.5 alone, tells apart shapes that all pass 0.5 on a few validation images; on a
/// tie the shape nearer the default wins.
fn choose_box_shape(images: &[BoxedImage], classes: &[String]) -> Option<(BoxShape, f64)> {
    let mut best: Option<(BoxShape, f64)> = None;
    let distance = |s: BoxShape| (s.cut - BOX_CUT).abs() + (s.scale - 1.0).abs();
    // Good and one defect type: nothing to tell apart.
    let typed = classes.len() > 2;
    for cut in BOX_CUTS {
        let drawn = BoxShape { cut, scale: 1.0 };
        let mut shapes = vec![drawn];
        if let Some(scale) = labelled_size_ratio(images, drawn) {
            shapes.push(BoxShape { cut, scale });
        }
        for shape in shapes {
            let truth = box_truth(images, shape, classes);
            let mut fit = 0.0;
            for iou in SHAPE_IOUS {
                let ap = if typed {
                    truth.mean_average_precision_at(iou)
                } else {
                    None
                };
                fit += ap.or_else(|| truth.average_precision_at(iou))? / SHAPE_IOUS.len() as f64;
            }
            let better = match best {
                None => true,
                Some((held, held_fit)) => {
                    fit > held_fit || (fit == held_fit && distance(shape) < distance(held))
                }
            };
            if better {
                best = Some((shape, fit));
            }
        }
    }
    best
}

/// The median over boxes drawn as `shape` says of the size ratio (square root of the areas'
/// ratio) of the true box each overlaps most to the box, rounded to 0.05; `None` when no box
/// overlaps a true one by [`SAME_DEFECT_IOU`].
fn labelled_size_ratio(images: &[BoxedImage], shape: BoxShape) -> Option<f32> {
    let area = eval::box_area;
    let mut ratios: Vec<f64> = Vec::new();
    for image in images {
        for drawn in boxes_from_heat_map(&image.heat_map, image.width, image.height, shape) {
            let nearest = (image.truth.iter())
                .map(|(t, _)| (t, eval::box_iou(&drawn.bbox, t)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((truth, overlap)) = nearest
                && overlap >= SAME_DEFECT_IOU
                && area(&drawn.bbox) > 0.0
            {
                ratios.push((area(truth) / area(&drawn.bbox)).sqrt());
            }
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    Some(((median * 20.0).round() / 20.0).max(0.05) as f32)
}

/// Which pass scores the images, for what it keeps beside the scores: held-out and validation
/// images keep what boxes and, in layouts of thin defects, their outlines (counted pixel by
/// pixel at the images' resolution, which costs) are measured from: on validation images they
/// choose how boxes are drawn, the input size and, without good images, the threshold; a
/// cross-validation fold, pooled by its image scores, keeps neither.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    HeldOut,
    Validation,
    Fold,
}

/// Scores `samples` with their truths, reporting a phase labelled `what`.
fn score_all(
    model: &SupervisedModel,
    samples: &[Sample],
    progress: &Progress,
    what: &str,
    pass: Pass,
) -> Result<Scored, SupervisedError> {
    // Boxes where the images have them, whatever layout the card names.
    let boxed = pass != Pass::Fold && samples.iter().any(|s| !s.boxes.is_empty());
    let mut scored = Scored {
        scores: Vec::new(),
        labels: Vec::new(),
        truths: Vec::new(),
        defect_classes: Vec::new(),
        pixels: PixelTruth::default(),
        thin: (matches!(pass, Pass::HeldOut | Pass::Validation)
            && model.card.family.layout.thin_defects())
        .then(|| ThinDefectTruth::new(model.card.head.threshold)),
        boxed: boxed.then(Vec::new),
        n_skipped: 0,
    };
    let bar = progress.phase(samples.len(), what);
    for sample in samples {
        bar.check()?;
        bar.inc(1);
        let Some(truth) = truth_class(&model.card.family.classes, sample) else {
            tracing::warn!(
                class = %sample.taught_class(),
                "skipping an image of a class the model does not know"
            );
            scored.n_skipped += 1;
            continue;
        };
        let image = match dataset::load_gray(&sample.image) {
            Ok(image) => image,
            Err(error) => {
                tracing::warn!(%error, "skipping unreadable test image");
                scored.n_skipped += 1;
                continue;
            }
        };
        let prediction = model.predict(&image)?;
        scored.scores.push(prediction.defect_score);
        scored.labels.push(truth != 0);
        scored.truths.push(truth);
        scored.defect_classes.push(prediction.defect_class);
        if let Ok(Some(mask)) = defect_mask(sample, &image) {
            scored.pixels.add(&prediction.heat_map, &mask);
            if let Some(thin) = &mut scored.thin {
                thin.add(&prediction.heat_map, &mask);
            }
        }
        // A defective image without boxes (a station's part whose regions are all of its
        // class, or labelled without regions) says nothing of where its boxes should be: left
        // out of the boxes' figures, where its every box would count as a false one.
        let boxes_known = !sample.defective() || !sample.boxes.is_empty();
        if let Some(boxed) = (scored.boxed.as_mut()).filter(|_| boxes_known) {
            boxed.push(BoxedImage {
                heat_map: prediction.heat_map,
                patch_class: prediction.patch_class,
                width: image.width,
                height: image.height,
                // The dataset's box maxima are the last pixel in; the model's are one past it.
                // Both on the image: a label past its edge is cut to it.
                truth: (sample.boxes.iter())
                    .map(|labelled| {
                        let [x0, y0, x1, y1] = labelled.bbox;
                        let (w, h) = (image.width, image.height);
                        let bbox = [
                            x0.min(w),
                            y0.min(h),
                            x1.saturating_add(1).min(w),
                            y1.saturating_add(1).min(h),
                        ];
                        (bbox, labelled.class.clone())
                    })
                    .collect(),
            });
        }
    }
    bar.finish_and_clear();
    Ok(scored)
}

/// The index among a model's `classes` of the class `sample` is scored as: the one it is
/// taught as ([`Sample::taught_class`]), or else its image class, which a model that does not
/// tell its boxes' types apart (trained before they were read, or on the image labels) knows.
/// `None` where the model knows neither.
fn truth_class(classes: &[String], sample: &Sample) -> Option<usize> {
    (classes.iter())
        .position(|c| c == sample.taught_class())
        .or_else(|| classes.iter().position(|c| *c == sample.class))
}

/// Evaluates `model` on `samples` at the card's threshold.
pub fn evaluate(
    model: &SupervisedModel,
    samples: &[Sample],
    progress: &Progress,
) -> Result<SupervisedMetrics, SupervisedError> {
    let scored = score_all(model, samples, progress, "held-out images", Pass::HeldOut)?;
    Ok(summarise(
        &scored,
        model.card.head.threshold,
        model.card.family.box_shape,
        &model.card.family.classes,
    ))
}

/// The metrics of `scored` images at `threshold`, for a model of `classes` (good included).
fn summarise(
    scored: &Scored,
    threshold: f32,
    box_shape: BoxShape,
    classes: &[String],
) -> SupervisedMetrics {
    let k = classes.len();
    let has_good = scored.labels.iter().any(|l| !l);
    let mut metrics = empty_metrics(k);
    for i in 0..scored.scores.len() {
        let called_defective = !has_good || scored.scores[i] >= threshold;
        let predicted = if called_defective {
            scored.defect_classes[i]
        } else {
            0
        };
        metrics.confusion[scored.truths[i]][predicted] += 1;
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let n = scored.scores.len();
    let n_defective = scored.labels.iter().filter(|l| **l).count();
    let correct: usize = (0..k).map(|i| metrics.confusion[i][i]).sum();
    // Rejected and given their own class: a defect the threshold lets through is not rightly
    // classed, whatever class the model would have named (issue 21: a two-class model said
    // 1.0 while defects passed).
    let right_defect_class: usize = (1..k).map(|i| metrics.confusion[i][i]).sum();
    metrics.detection = DetectionMetrics::from_scores(
        &scored.scores,
        &scored.labels,
        scored.n_skipped,
        scored.pixels.auroc(),
        scored.pixels.pro(),
    );
    metrics.thin_defect = scored.thin.as_ref().and_then(ThinDefectTruth::metrics);
    metrics.boxes =
        (scored.boxed.as_ref()).and_then(|images| box_truth(images, box_shape, classes).metrics());
    metrics.class_accuracy = ratio(correct, n).unwrap_or(0.0);
    metrics.defect_class_accuracy = ratio(right_defect_class, n_defective);
    if has_good {
        let at = eval::at_threshold(&scored.scores, &scored.labels, threshold);
        metrics.defect_vs_good_accuracy = Some(at.accuracy);
        metrics.at_threshold = Some(at);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_good_images_the_threshold_is_the_cut_that_outlines_thin_defects_best() {
        // A crack along row 8 of a 16×16 image; the heat map is 0.92 on it, 0.6 on a band
        // five rows either side of it and 0.1 elsewhere: cuts of 0.15 to 0.6 draw the band
        // (precision 5/11 within 2 px), cuts from 0.65 to 0.9 the crack alone, 0.95 nothing.
        let mut pixels = vec![0u8; 16 * 16];
        pixels[8 * 16..9 * 16].fill(255);
        let mask = GrayImage::new(16, 16, pixels).expect("size");
        let values = (0..16 * 16)
            .map(|i| match i / 16 {
                8 => 0.92,
                3..=13 => 0.6,
                _ => 0.1,
            })
            .collect();
        let heat_map = HeatMap {
            width: 16,
            height: 16,
            values,
        };
        let mut truth = ThinDefectTruth::new(0.5);
        truth.add(&heat_map, &mask);
        let (cut, rule) = outline_cut(truth.metrics().expect("a crack"), 1, None);
        assert!((0.65..=0.9).contains(&cut), "{cut}");
        assert!(rule.starts_with(&format!("cut {cut:.2}: ")), "{rule}");
        assert!(rule.contains("F1 (1.000)"), "{rule}");
    }

    /// A 256-pixel class map with a `side`-pixel block of `class` at (`x0`, `y0`).
    fn map_with_block(x0: usize, y0: usize, side: usize, class: u8) -> GrayImage {
        let mut map = GrayImage::new(256, 256, vec![0; 256 * 256]).expect("size");
        paint(&mut map, x0, y0, side, class);
        map
    }

    fn paint(map: &mut GrayImage, x0: usize, y0: usize, side: usize, class: u8) {
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                map.pixels[y * 256 + x] = class;
            }
        }
    }

    /// A 5×5-cell blob centred on cell (`cx`, `cy`) of a 32×32 map over a 256-pixel image (8
    /// pixels a cell), 0.95 inside and 0.6 on its rim, labelled with the box `truth`.
    fn boxed_image(cx: usize, cy: usize, truth: [u32; 4]) -> BoxedImage {
        let mut values = vec![0.01f32; 32 * 32];
        for y in cy - 2..=cy + 2 {
            for x in cx - 2..=cx + 2 {
                let edge = y.abs_diff(cy) == 2 || x.abs_diff(cx) == 2;
                values[y * 32 + x] = if edge { 0.6 } else { 0.95 };
            }
        }
        BoxedImage {
            heat_map: HeatMap {
                width: 32,
                height: 32,
                values,
            },
            patch_class: Vec::new(),
            width: 256,
            height: 256,
            truth: vec![(truth, "defect".into())],
        }
    }

    #[test]
    fn the_box_shape_is_chosen_to_fit_the_labelled_boxes() {
        // Blobs of 5×5 cells (40 pixels) around defects labelled with 22-pixel boxes: drawn at
        // the default cut their boxes (about 35 pixels) overlap the true ones by less than half.
        let images: Vec<BoxedImage> = [(8, 8), (20, 12), (12, 24)]
            .into_iter()
            .map(|(cx, cy)| {
                let (px, py) = (cx as u32 * 8 + 4, cy as u32 * 8 + 4);
                boxed_image(cx, cy, [px - 11, py - 11, px + 11, py + 11])
            })
            .collect();
        let default = box_truth(&images, BoxShape::default(), &[])
            .metrics()
            .expect("boxes");
        assert_eq!(default.at_iou[0].average_precision, 0.0, "{default:?}");
        let (shape, fit) = choose_box_shape(&images, &[]).expect("true boxes");
        assert!(fit > 0.99, "{shape:?}: {fit}");
        assert!(shape.cut > BOX_CUT || shape.scale < 1.0, "{shape:?}");
        // Without a true box there is nothing to choose by.
        let good: Vec<BoxedImage> = (images.into_iter())
            .map(|image| BoxedImage {
                truth: Vec::new(),
                ..image
            })
            .collect();
        assert!(choose_box_shape(&good, &[]).is_none());
    }

    #[test]
    fn patches_take_the_class_where_the_mask_covers_them() {
        // 16×16 block at (8, 8): patches (1,1), (2,1), (1,2), (2,2) fully covered.
        let targets = patch_targets(&map_with_block(8, 8, 16, 3), GRID);
        let marked: Vec<usize> = (0..targets.len()).filter(|&i| targets[i] == 3).collect();
        assert_eq!(marked, [GRID + 1, GRID + 2, 2 * GRID + 1, 2 * GRID + 2]);
        assert!(
            patch_targets(&map_with_block(8, 8, 16, 0), GRID)
                .iter()
                .all(|&t| t == 0)
        );
        // Two types in one patch: the one covering more of it names it.
        let mut map = map_with_block(0, 0, 8, 2);
        paint(&mut map, 0, 0, 3, 5);
        let targets = patch_targets(&map, GRID);
        assert_eq!((targets[0], targets[1]), (2, 0));
    }

    #[test]
    fn a_tiny_defect_still_marks_one_patch() {
        // 2×2 pixels: 1/16 of a patch, under the coverage rule.
        let targets = patch_targets(&map_with_block(100, 50, 2, 1), GRID);
        assert_eq!(targets.iter().filter(|&&t| t == 1).count(), 1);
        assert_eq!(targets[(50 / 8) * GRID + 100 / 8], 1);
        // It keeps its own type.
        let targets = patch_targets(&map_with_block(100, 50, 2, 4), GRID);
        assert_eq!(targets[(50 / 8) * GRID + 100 / 8], 4);
    }

    #[test]
    fn each_box_teaches_its_own_type() {
        use crate::learn::dataset::LabelledBox;
        let image = GrayImage::new(64, 32, vec![0; 64 * 32]).expect("size");
        let classes = names(1)
            .into_iter()
            .chain(["open", "short"].map(String::from))
            .collect::<Vec<_>>();
        let sample = Sample {
            image: "board.jpg".into(),
            class: "defect".into(),
            mask: None,
            held_out: None,
            boxes: vec![
                LabelledBox::new([0, 0, 1, 1], "short"),
                // Past the image's edge: cut to it. A type the model does not know counts as
                // the image's class.
                LabelledBox::new([62, 30, 70, 40], "spur"),
                LabelledBox::new([10, 10, 10, 10], "open"),
            ],
        };
        let map = class_map(&sample, &image, &classes, 2)
            .expect("boxes")
            .expect("located");
        let at = |x: usize, y: usize| map.pixels[y * 64 + x];
        assert_eq!((at(0, 0), at(1, 1), at(2, 2)), (2, 2, 0));
        assert_eq!((at(63, 31), at(61, 31)), (2, 0));
        assert_eq!((at(10, 10), at(11, 10)), (1, 0));
        assert_eq!(map.pixels.iter().filter(|&&p| p > 0).count(), 4 + 4 + 1);
        // The pixel metrics read every defect as 255, whatever its type.
        let mask = defect_mask(&sample, &image)
            .expect("boxes")
            .expect("located");
        assert_eq!(
            (
                mask.pixels[0],
                mask.pixels[10 * 64 + 10],
                mask.pixels[2 * 64 + 2]
            ),
            (255, 255, 0)
        );
        // A good image maps to good everywhere, whatever it says.
        let good = Sample {
            class: "good".into(),
            ..sample
        };
        let map = class_map(&good, &image, &classes, 0)
            .expect("good")
            .expect("good");
        assert!(map.pixels.iter().all(|&p| p == 0));
    }

    #[test]
    fn a_mask_takes_the_types_of_the_boxes_over_it() {
        use crate::learn::dataset::LabelledBox;
        let dir = tempfile::tempdir().expect("tempdir");
        let image = GrayImage::new(16, 8, vec![0; 16 * 8]).expect("size");
        // Marked: a 2×2 block at (1, 1) and another at (10, 4).
        let mut marked = vec![0u8; 16 * 8];
        for (x, y) in [
            (1, 1),
            (2, 1),
            (1, 2),
            (2, 2),
            (10, 4),
            (11, 4),
            (10, 5),
            (11, 5),
        ] {
            marked[y * 16 + x] = 255;
        }
        let mask = dir.path().join("000_mask.png");
        let png = crate::record::gray_png(&GrayImage::new(16, 8, marked).expect("size"));
        std::fs::write(&mask, png.expect("png")).expect("write");
        let classes = ["good", "scratch", "dent"].map(String::from);
        let sample = Sample {
            image: "part.png".into(),
            class: "scratch".into(),
            mask: Some(mask),
            held_out: None,
            boxes: vec![
                // The first block's box names a dent; the second's is of the part's class.
                LabelledBox::new([0, 0, 3, 3], "dent"),
                LabelledBox::new([10, 4, 11, 4], "scratch"),
            ],
        };
        let map = class_map(&sample, &image, &classes, 1)
            .expect("mask")
            .expect("located");
        let at = |x: usize, y: usize| map.pixels[y * 16 + x];
        // The mask's pixels, of the box over each; marked pixels outside every box, and the
        // box's unmarked pixels, as before: the part's class, and good.
        assert_eq!((at(1, 1), at(2, 2), at(0, 0), at(3, 3)), (2, 2, 0, 0));
        assert_eq!((at(10, 4), at(11, 4), at(10, 5), at(11, 5)), (1, 1, 1, 1));
        assert_eq!(map.pixels.iter().filter(|&&p| p > 0).count(), 8);
        // Every marked pixel is a defect to the pixel metrics, whatever its type.
        let mask = defect_mask(&sample, &image)
            .expect("mask")
            .expect("located");
        assert_eq!(mask.pixels.iter().filter(|&&p| p == 255).count(), 8);
        // Without boxes, all of the image's class.
        let untyped = Sample {
            boxes: Vec::new(),
            ..sample
        };
        let map = class_map(&untyped, &image, &classes, 1)
            .expect("mask")
            .expect("located");
        assert_eq!(map.pixels.iter().filter(|&&p| p == 1).count(), 8);
    }

    #[test]
    fn a_typed_dataset_is_scored_by_the_image_class_where_types_are_unknown() {
        use crate::learn::dataset::LabelledBox;
        let board = Sample {
            image: "board.jpg".into(),
            class: "defect".into(),
            mask: None,
            held_out: None,
            boxes: vec![LabelledBox::new([0, 0, 1, 1], "short")],
        };
        let typed = ["good", "open", "short"].map(String::from);
        let untyped = ["good", "defect"].map(String::from);
        let neither = ["good", "scratch"].map(String::from);
        assert_eq!(truth_class(&typed, &board), Some(2), "by its boxes' type");
        assert_eq!(truth_class(&untyped, &board), Some(1), "by its image class");
        assert_eq!(truth_class(&neither, &board), None);
    }

    #[test]
    fn binary_cross_entropy_stays_finite_when_confident() {
        let device = Device::Cpu;
        let x = Tensor::new(&[200f32, -200.0, 0.0], &device).expect("tensor");
        let t = Tensor::new(&[0f32, 1.0, 1.0], &device).expect("tensor");
        let loss: f32 = binary_cross_entropy_with_logits(&x, &t)
            .expect("loss")
            .to_scalar()
            .expect("f32");
        // (200 + 200 + ln 2) / 3
        assert!((loss - (400.0 + 2f32.ln()) / 3.0).abs() < 1e-3, "{loss}");
    }

    /// `k` class names, good first.
    fn names(k: usize) -> Vec<String> {
        std::iter::once("good".to_owned())
            .chain((1..k).map(|i| format!("defect-{i}")))
            .collect()
    }

    fn scored(rows: &[(f32, usize, usize)]) -> Scored {
        Scored {
            scores: rows.iter().map(|r| r.0).collect(),
            labels: rows.iter().map(|r| r.1 != 0).collect(),
            truths: rows.iter().map(|r| r.1).collect(),
            defect_classes: rows.iter().map(|r| r.2).collect(),
            pixels: PixelTruth::default(),
            thin: None,
            boxed: None,
            n_skipped: 0,
        }
    }

    #[test]
    fn a_passed_defect_is_never_rightly_classed() {
        // Two classes: two good parts, four defects of which the threshold lets two through.
        // The model names class 1 for every defect, as a two-class model must.
        let two = scored(&[
            (0.1, 0, 1),
            (0.2, 0, 1),
            (0.9, 1, 1),
            (0.8, 1, 1),
            (0.3, 1, 1),
            (0.4, 1, 1),
        ]);
        let m = summarise(&two, 0.5, BoxShape::default(), &names(2));
        assert_eq!(m.defect_class_accuracy, Some(0.5));
        assert_eq!(m.confusion, [[2, 0], [2, 2]]);
        assert_eq!(m.defect_vs_good_accuracy, Some(4.0 / 6.0));
        // Three classes: of three rejected defects, one named wrongly; one defect passes.
        let three = scored(&[
            (0.1, 0, 2),
            (0.9, 1, 1),
            (0.9, 1, 2),
            (0.7, 2, 2),
            (0.2, 2, 2),
        ]);
        let m = summarise(&three, 0.5, BoxShape::default(), &names(3));
        assert_eq!(m.defect_class_accuracy, Some(0.5));
        assert_eq!(m.confusion, [[1, 0, 0], [0, 1, 1], [1, 0, 1]]);
        assert_eq!(m.class_accuracy, 3.0 / 5.0);
    }
}
