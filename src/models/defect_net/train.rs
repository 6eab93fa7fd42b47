//! Training the default model on synthetic parts, reproducibly from a seed.
//!
//! Train, validation and test parts come from three seeds derived from one, rendered by the
//! simulator and passed through the station's own calibration, so the model learns exactly what
//! the station will show it. The loss is per-cell binary cross-entropy against the true defect
//! masks (a cell is defective when any of its pixels is), weighted towards the rare defect cells.
//! The threshold is chosen on validation parts; the card's metrics come from test parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::calibrate::{CalibrateError, Calibration, Undistorter};
use crate::learn::augment::flip;
use crate::learn::drift::{DriftReference, InputStats, ProfileImages};
use crate::learn::fit::{binary_cross_entropy_each, seeded_init};
use crate::learn::hash::{self, ContentHash};
use crate::learn::{eval, progress};
use crate::models::card::{CardError, ModelCard};
use crate::models::defect_net::{
    ARCHITECTURE, ClassMetrics, DefectModel, DefectNet, DefectNetCard, EvalMetrics,
    HEAT_MAP_STRIDE, InputSpec, TrainingInfo, WEIGHTS_FILE, image_score, to_input,
};
use crate::models::{Detector, ModelError};
use crate::part::GrayImage;
use crate::simulate::{DefectKind, FRAME_SIZE, PartGenerator};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Calibrate(#[from] CalibrateError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("training data has no defective part: raise the defect rate or the part count")]
    NoDefects,
    #[error(
        "the synthetic parts of seed {seed} at defect rate {defect_rate} are not those the model \
         was trained on (their hash differs from its card's): give the defect rate it was trained with"
    )]
    OtherData { seed: u64, defect_rate: f64 },
    #[error("no drift reference: {0}")]
    NoReference(#[from] crate::learn::drift::ReferenceError),
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    pub name: String,
    pub seed: u64,
    pub n_train: usize,
    pub n_val: usize,
    pub n_test: usize,
    pub defect_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Share of defective parts the threshold may miss on validation data.
    pub target_escape_rate: f64,
    pub calibration_file: PathBuf,
    pub out_dir: PathBuf,
    /// Show progress bars (off in tests).
    pub progress: bool,
}

/// One training example after calibration.
struct Example {
    image: GrayImage,
    /// Per-cell target, `(h/4) × (w/4)`, 1.0 where the cell holds defect pixels.
    target: Vec<f32>,
    defect: Option<DefectKind>,
}

/// Trains a model, writes `model.safetensors` and `card.json` to `out_dir`, returns the card.
pub fn train(settings: &TrainSettings) -> Result<ModelCard<DefectNetCard>, TrainError> {
    let started = Instant::now();
    let device = Device::Cpu;
    let undistorter = Undistorter::new(&Calibration::load(&settings.calibration_file)?)?;
    let train_set = render(
        settings.seed,
        settings.n_train,
        settings.defect_rate,
        &undistorter,
    )?;
    let val_set = render(
        settings.seed + 1,
        settings.n_val,
        settings.defect_rate,
        &undistorter,
    )?;
    let test_set = render(
        settings.seed + 2,
        settings.n_test,
        settings.defect_rate,
        &undistorter,
    )?;
    let n_train_defective = train_set.iter().filter(|e| e.defect.is_some()).count();
    if n_train_defective == 0 {
        return Err(TrainError::NoDefects);
    }

    let varmap = VarMap::new();
    let net = DefectNet::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    seeded_init(&varmap, settings.seed)?;
    let mut optimizer = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;

    let steps_per_epoch = settings.n_train.div_ceil(settings.batch_size);
    let bar = progress::bar(
        settings.progress,
        (steps_per_epoch * settings.epochs) as u64,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    for epoch in 0..settings.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for batch in order.chunks(settings.batch_size) {
            let (input, target) = augmented_batch(&train_set, batch, &mut rng, &device)?;
            let loss = weighted_bce(&net.forward(&input)?, &target)?;
            optimizer.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            epoch_loss += loss;
            bar.set_message(format!(
                "epoch {}/{} loss {loss:.4}",
                epoch + 1,
                settings.epochs
            ));
            bar.inc(1);
        }
        tracing::info!(
            epoch = epoch + 1,
            mean_loss = epoch_loss / steps_per_epoch as f32,
            "epoch done"
        );
    }
    bar.finish_and_clear();

    std::fs::create_dir_all(&settings.out_dir).map_err(|source| TrainError::Write {
        path: settings.out_dir.clone(),
        source,
    })?;
    let weights_path = settings.out_dir.join(WEIGHTS_FILE);
    varmap.save(&weights_path)?;
    let weights = std::fs::read(&weights_path).map_err(|source| TrainError::Write {
        path: weights_path.clone(),
        source,
    })?;
    let version = hash::version(&settings.name, ContentHash::new().bytes(&weights));

    let (val_scores, val_labels) = scores(&net, &val_set, &device)?;
    let target = settings.target_escape_rate;
    // With enough defective validation parts the threshold comes with a finite-sample promise
    // (split conformal); with fewer, the plain quantile, and the card says why.
    let (threshold, guarantee, how) =
        match eval::conformal_escape_threshold(&val_scores, &val_labels, target) {
            Ok((threshold, promise)) => (threshold, Some(promise), promise.describe()),
            Err(few) => (
                eval::threshold_for_escape_rate(&val_scores, &val_labels, target)
                    .ok_or(TrainError::NoDefects)?,
                None,
                format!("without a guarantee: {few}"),
            ),
        };
    let drift = drift_reference(&train_set, &val_set, (&val_scores, &val_labels), threshold);
    let metrics = evaluate(&net, &test_set, threshold, &device)?;
    let (w, h) = undistorter.output_size();
    let threshold_rule = format!(
        "escape rate <= {target} on {} validation parts, halfway to the nearest good score, {how}",
        settings.n_val
    );
    let family = DefectNetCard {
        input: InputSpec {
            width: w,
            height: h,
            channels: 1,
        },
        normalisation: "(x - 127) / 128 on 8-bit grey".into(),
        heat_map_stride: HEAT_MAP_STRIDE,
        training: TrainingInfo {
            data: format!(
                "synthetic parts (simulator seed {}, defect rate {})",
                settings.seed, settings.defect_rate
            ),
            data_hash: data_hash(&train_set),
            seed: settings.seed,
            n_train: settings.n_train,
            n_train_defective,
            n_val: settings.n_val,
            epochs: settings.epochs,
            batch_size: settings.batch_size,
            learning_rate: settings.learning_rate,
            duration_s: started.elapsed().as_secs_f64(),
        },
        metrics,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let card = ModelCard::new(
        &settings.name,
        version,
        ARCHITECTURE.into(),
        (threshold, threshold_rule),
        family,
    )
    .with_guarantee(guarantee)
    .with_drift(drift);
    card.write(&settings.out_dir)?;
    Ok(card)
}

/// The card's drift reference (`None`, and a warning, when it cannot be learnt).
fn drift_reference(
    train_set: &[Example],
    val_set: &[Example],
    scored: (&[f32], &[bool]),
    threshold: f32,
) -> Option<DriftReference> {
    reference_of(train_set, val_set, scored, threshold)
        .map_err(|why| tracing::warn!(%why, "no drift reference on the card"))
        .ok()
}

/// The inputs of the good training parts against those of the good validation parts (another
/// seed), and the validation parts' scores.
fn reference_of(
    train_set: &[Example],
    val_set: &[Example],
    (scores, defective): (&[f32], &[bool]),
    threshold: f32,
) -> Result<DriftReference, crate::learn::drift::ReferenceError> {
    let good = |set: &[Example]| -> Vec<InputStats> {
        (set.iter())
            .filter(|e| e.defect.is_none())
            .map(|e| InputStats::of(&e.image))
            .collect()
    };
    let good_scores: Vec<f32> = (scores.iter().zip(defective))
        .filter(|(_, d)| !**d)
        .map(|(&s, _)| s)
        .collect();
    let errors = (scores.iter().zip(defective))
        .filter(|&(&s, &d)| (s >= threshold) != d)
        .count();
    DriftReference::learn(
        &good(train_set),
        &good(val_set),
        ProfileImages::Good,
        &good_scores,
        (errors, scores.len()),
        // Scored by the model as shipped: it never trained on the validation parts.
        true,
    )
}

/// The drift reference of a model trained on synthetic parts before cards had one, learnt as its
/// training would have: from the same parts (re-rendered from the card's seed and counts, and
/// checked against its training-data hash), the validation parts scored by the model itself.
pub fn learn_drift_reference(
    model: &DefectModel,
    calibration_file: &Path,
    defect_rate: f64,
) -> Result<DriftReference, TrainError> {
    let training = &model.card.family.training;
    let undistorter = Undistorter::new(&Calibration::load(calibration_file)?)?;
    let train_set = render(training.seed, training.n_train, defect_rate, &undistorter)?;
    if data_hash(&train_set) != training.data_hash {
        return Err(TrainError::OtherData {
            seed: training.seed,
            defect_rate,
        });
    }
    let val_set = render(training.seed + 1, training.n_val, defect_rate, &undistorter)?;
    let (scores, defective) = scores(&model.net, &val_set, &model.device)?;
    let threshold = model.card.head.threshold;
    Ok(reference_of(
        &train_set,
        &val_set,
        (&scores, &defective),
        threshold,
    )?)
}

/// Evaluates a saved model on fresh synthetic test parts (seed + 2, as in training).
pub fn evaluate_saved(
    model: &DefectModel,
    calibration_file: &Path,
    seed: u64,
    n_test: usize,
    defect_rate: f64,
) -> Result<EvalMetrics, TrainError> {
    let undistorter = Undistorter::new(&Calibration::load(calibration_file)?)?;
    let test_set = render(seed + 2, n_test, defect_rate, &undistorter)?;
    let mut scores = Vec::with_capacity(test_set.len());
    for example in &test_set {
        scores.push(model.score(&example.image)?.0);
    }
    Ok(summarise(&test_set, &scores, model.card.head.threshold))
}

fn render(
    seed: u64,
    n: usize,
    defect_rate: f64,
    undistorter: &Undistorter,
) -> Result<Vec<Example>, TrainError> {
    let mut generator = PartGenerator::new(seed, FRAME_SIZE, FRAME_SIZE, defect_rate);
    (0..n)
        .map(|_| {
            let part = generator.next_part();
            let image = undistorter.apply(&part.image)?;
            // The mask goes through the same undistortion so it stays on the defect.
            let mask_image = GrayImage {
                width: part.image.width,
                height: part.image.height,
                pixels: part.mask.iter().map(|&m| m * 255).collect(),
            };
            let mask = undistorter.apply(&mask_image)?;
            Ok(Example {
                target: cell_targets(&mask),
                image,
                defect: part.defect,
            })
        })
        .collect()
}

/// 1.0 for each stride×stride cell with any mask pixel above half.
fn cell_targets(mask: &GrayImage) -> Vec<f32> {
    let s = HEAT_MAP_STRIDE as usize;
    let (w, h) = (mask.width as usize, mask.height as usize);
    let (cw, ch) = (w / s, h / s);
    let mut cells = vec![0f32; cw * ch];
    for y in 0..ch * s {
        for x in 0..cw * s {
            if mask.pixels[y * w + x] > 127 {
                cells[(y / s) * cw + x / s] = 1.0;
            }
        }
    }
    cells
}

/// Side of the square crops training runs on: the network is fully convolutional, so crops
/// teach it the same thing as whole images at a fifth of the cost.
const TRAIN_CROP: usize = 96;

/// A batch of random crops (centred on a defect cell most of the time when the part has one)
/// with random flips, applied to image and target alike.
fn augmented_batch(
    set: &[Example],
    batch: &[usize],
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let s = HEAT_MAP_STRIDE as usize;
    let crop_cells = TRAIN_CROP / s;
    let mut images = Vec::with_capacity(batch.len());
    let mut targets = Vec::with_capacity(batch.len() * crop_cells * crop_cells);
    for &i in batch {
        let example = &set[i];
        let (w, h) = (example.image.width as usize, example.image.height as usize);
        let (cells_w, cells_h) = (w / s, h / s);
        let max_x = cells_w.saturating_sub(crop_cells);
        let max_y = cells_h.saturating_sub(crop_cells);
        let defect_cells: Vec<usize> = (0..example.target.len())
            .filter(|&c| example.target[c] > 0.5)
            .collect();
        let (cell_x, cell_y) = if !defect_cells.is_empty() && rng.gen_bool(0.8) {
            let c = defect_cells[rng.gen_range(0..defect_cells.len())];
            let jitter = rng.gen_range(0..crop_cells);
            (
                (c % cells_w).saturating_sub(jitter).min(max_x),
                (c / cells_w)
                    .saturating_sub(rng.gen_range(0..crop_cells))
                    .min(max_y),
            )
        } else {
            (rng.gen_range(0..=max_x), rng.gen_range(0..=max_y))
        };
        let pixels = crop(&example.image.pixels, w, cell_x * s, cell_y * s, TRAIN_CROP);
        let target = crop(&example.target, cells_w, cell_x, cell_y, crop_cells);
        let (flip_x, flip_y) = (rng.gen_bool(0.5), rng.gen_bool(0.5));
        images.push(GrayImage {
            width: TRAIN_CROP as u32,
            height: TRAIN_CROP as u32,
            pixels: flip(&pixels, TRAIN_CROP, TRAIN_CROP, flip_x, flip_y),
        });
        targets.extend(flip(&target, crop_cells, crop_cells, flip_x, flip_y));
    }
    let refs: Vec<&GrayImage> = images.iter().collect();
    let input = to_input(&refs, device)?;
    let target = Tensor::from_vec(targets, (batch.len(), 1, crop_cells, crop_cells), device)?;
    Ok((input, target))
}

/// The `side`×`side` square at (x, y) of a row-major buffer `w` wide.
fn crop<T: Copy>(data: &[T], w: usize, x: usize, y: usize, side: usize) -> Vec<T> {
    (y..y + side)
        .flat_map(|row| data[row * w + x..row * w + x + side].iter().copied())
        .collect()
}

/// Binary cross-entropy with logits, defect cells weighted 8×: `mean(w · (softplus(x) − y·x))`.
fn weighted_bce(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let weight = ((target * 7.0)? + 1.0)?;
    (binary_cross_entropy_each(logits, target)? * weight)?.mean_all()
}

fn scores(
    net: &DefectNet,
    set: &[Example],
    device: &Device,
) -> candle_core::Result<(Vec<f32>, Vec<bool>)> {
    let mut scores = Vec::with_capacity(set.len());
    for chunk in set.chunks(16) {
        let refs: Vec<&GrayImage> = chunk.iter().map(|e| &e.image).collect();
        let probabilities = candle_nn::ops::sigmoid(&net.forward(&to_input(&refs, device)?)?)?;
        for cells in probabilities.flatten_from(1)?.to_vec2::<f32>()? {
            // The station's own rule; a non-finite score counts as the worst possible.
            scores.push(image_score(&cells).unwrap_or(f32::INFINITY));
        }
    }
    Ok((scores, set.iter().map(|e| e.defect.is_some()).collect()))
}

fn evaluate(
    net: &DefectNet,
    set: &[Example],
    threshold: f32,
    device: &Device,
) -> candle_core::Result<EvalMetrics> {
    let (scores, _) = scores(net, set, device)?;
    Ok(summarise(set, &scores, threshold))
}

fn summarise(set: &[Example], scores: &[f32], threshold: f32) -> EvalMetrics {
    let labels: Vec<bool> = set.iter().map(|e| e.defect.is_some()).collect();
    let mut per_class: BTreeMap<String, ClassMetrics> = BTreeMap::new();
    for (example, &score) in set.iter().zip(scores) {
        let name = match example.defect {
            Some(kind) => kind.as_str().to_owned(),
            None => "good".into(),
        };
        let entry = per_class
            .entry(name)
            .or_insert(ClassMetrics { n: 0, detected: 0 });
        entry.n += 1;
        entry.detected += usize::from(score >= threshold);
    }
    EvalMetrics {
        data: "synthetic parts, held-out test seed".into(),
        n_test: set.len(),
        n_test_defective: labels.iter().filter(|l| **l).count(),
        image_auroc: eval::auroc(scores, &labels),
        average_precision: eval::average_precision(scores, &labels),
        at_threshold: eval::at_threshold(scores, &labels, threshold),
        per_class,
    }
}

/// SHA-256 over the training images' pixels and cell targets, in order.
fn data_hash(set: &[Example]) -> String {
    let mut hash = ContentHash::new();
    for example in set {
        hash.bytes(&example.image.pixels).floats(&example.target);
    }
    hash.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_targets_mark_cells_with_defect_pixels() {
        let mut pixels = vec![0u8; 8 * 8];
        pixels[5 * 8 + 6] = 255; // cell (1, 1)
        let cells = cell_targets(&GrayImage::new(8, 8, pixels).expect("size"));
        assert_eq!(cells, [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn crop_takes_the_square() {
        let data: Vec<u32> = (0..16).collect();
        assert_eq!(crop(&data, 4, 1, 2, 2), [9, 10, 13, 14]);
    }

    #[test]
    fn weighted_bce_by_hand() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[0.0f32, 0.0], &device).expect("tensor");
        let target = Tensor::new(&[1.0f32, 0.0], &device).expect("tensor");
        // Both cells lose ln 2; the defect cell counts 8×: (8 ln2 + ln2) / 2.
        let loss = weighted_bce(&logits, &target)
            .expect("loss")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!((loss - 4.5 * std::f32::consts::LN_2).abs() < 1e-5, "{loss}");
    }
}
