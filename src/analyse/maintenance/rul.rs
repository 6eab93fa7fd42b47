//! Remaining useful life (RUL) from run-to-failure history, in the NASA C-MAPSS text formats.
//!
//! A C-MAPSS file is one line per engine cycle, space-separated: unit, cycle, three operational
//! settings and 21 sensors (26 numbers; NASA's lines end in spaces). A training file runs every
//! engine to failure; a test file stops each engine at some cycle before failure, and a RUL file
//! gives, one per line in unit order, how many cycles each test engine had left.
//!
//! The model is a small 1D CNN over the last [`RulSettings::window`] cycles (after Li, Ding and
//! Sun 2018, "Remaining useful life estimation in prognostics using deep convolution neural
//! networks"): the channels are the settings and sensors that the training engines' statistics
//! say carry information (constant channels and those barely correlated with the remaining life
//! are dropped), plus the cycle count; each is standardised with the fitting engines' mean and
//! standard deviation. The target is piecewise linear: the remaining cycles, capped at
//! [`RulSettings::cap`] (early in life an engine shows no wear, so nothing tells 200 cycles left
//! from 300). A share of the training file's engines is kept out of fitting: their residuals
//! calibrate the interval (split-conformal, per band of predicted life, since the error grows
//! with the distance to failure) and give the validation figures of the card.
//!
//! Training is deterministic for a seed: weights start from a seeded generator
//! ([`crate::learn::fit::seeded_init`]) and batches are drawn in a seeded order.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Linear, Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::learn::fit::seeded_init;
use crate::learn::progress;

/// Numbers on a C-MAPSS line: unit, cycle, 3 settings, 21 sensors.
pub const CMAPSS_COLUMNS: usize = 26;
/// Measured channels of a cycle: the 3 operational settings and the 21 sensors.
pub const N_CHANNELS: usize = 24;
/// The model's weights in its folder.
pub const WEIGHTS_FILE: &str = "rul.safetensors";
/// The model's card in its folder.
pub const CARD_FILE: &str = "card.json";
/// The card layout this code writes; older or newer cards are refused by [`RulModel::load`].
pub const CARD_FORMAT: u32 = 1;

/// Why reading, training or running a RUL model failed.
#[derive(Debug, thiserror::Error)]
pub enum RulError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("the RUL file has {n_values} values but the test file has {n_units} units")]
    RulCount { n_values: usize, n_units: usize },
    #[error("{0}")]
    Data(String),
    #[error("model card {path}: {why}")]
    Card { path: PathBuf, why: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One line of a C-MAPSS file: an engine's state at one cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cycle {
    /// The cycle number, counted from 1 at the engine's first recorded cycle.
    pub cycle: u32,
    /// The 3 operational settings, then sensors 1–21, in file order.
    pub channels: [f32; N_CHANNELS],
}

/// One engine's cycles, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    /// The unit number of the file.
    pub unit: u32,
    /// Its cycles, strictly increasing.
    pub cycles: Vec<Cycle>,
}

/// The name of measured channel `index` (0-based): `setting1`–`setting3`, `s1`–`s21`.
pub fn channel_name(index: usize) -> String {
    if index < 3 {
        format!("setting{}", index + 1)
    } else {
        format!("s{}", index - 2)
    }
}

/// Reads a C-MAPSS train or test file.
pub fn read_cmapss(path: &Path) -> Result<Vec<Engine>, RulError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_cmapss(&text)
}

/// Parses the text of a C-MAPSS train or test file. Blank lines are skipped; every other line
/// must hold 26 finite numbers, each unit's lines must be together with increasing cycles.
pub fn parse_cmapss(text: &str) -> Result<Vec<Engine>, RulError> {
    let mut engines: Vec<Engine> = Vec::new();
    let mut seen_units: HashSet<u32> = HashSet::new();
    for (line_idx, line) in text.lines().enumerate() {
        let line_no = line_idx + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = |why: String| RulError::Line { line: line_no, why };
        if fields.len() != CMAPSS_COLUMNS {
            return Err(bad(format!(
                "{} numbers, a C-MAPSS line has {CMAPSS_COLUMNS} (unit, cycle, 3 settings, 21 sensors)",
                fields.len()
            )));
        }
        let whole = |idx: usize, what: &str| -> Result<u32, RulError> {
            let text = fields[idx];
            // Some copies write integers as `1.0`; accept those, nothing fractional.
            let value: f64 = text
                .parse()
                .map_err(|_| bad(format!("{what} {text:?} is not a number")))?;
            if value.fract() != 0.0 || !(1.0..=u32::MAX as f64).contains(&value) {
                return Err(bad(format!(
                    "{what} {text:?} is not a positive whole number"
                )));
            }
            Ok(value as u32)
        };
        let unit = whole(0, "unit")?;
        let cycle = whole(1, "cycle")?;
        let mut channels = [0.0f32; N_CHANNELS];
        for (channel_idx, value) in channels.iter_mut().enumerate() {
            let text = fields[channel_idx + 2];
            let parsed: f32 = text.parse().map_err(|_| {
                bad(format!(
                    "{} {text:?} is not a number",
                    channel_name(channel_idx)
                ))
            })?;
            if !parsed.is_finite() {
                return Err(bad(format!(
                    "{} is {text}, not a finite number",
                    channel_name(channel_idx)
                )));
            }
            *value = parsed;
        }
        let row = Cycle { cycle, channels };
        match engines.last_mut() {
            Some(engine) if engine.unit == unit => {
                let previous = engine.cycles.last().map_or(0, |c| c.cycle);
                if cycle <= previous {
                    return Err(bad(format!(
                        "unit {unit}: cycle {cycle} after cycle {previous} (cycles must increase)"
                    )));
                }
                engine.cycles.push(row);
            }
            _ => {
                if !seen_units.insert(unit) {
                    return Err(bad(format!(
                        "unit {unit} starts again after other units (a unit's lines must be together)"
                    )));
                }
                engines.push(Engine {
                    unit,
                    cycles: vec![row],
                });
            }
        }
    }
    if engines.is_empty() {
        return Err(RulError::Data(
            "no C-MAPSS lines (the file is empty)".into(),
        ));
    }
    Ok(engines)
}

/// Reads a C-MAPSS RUL file (one whole number a line, in test-unit order).
pub fn read_rul(path: &Path) -> Result<Vec<u32>, RulError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_rul(&text)
}

/// Parses the text of a RUL file: one non-negative whole number on each non-blank line.
pub fn parse_rul(text: &str) -> Result<Vec<u32>, RulError> {
    let mut values = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: String| RulError::Line {
            line: line_idx + 1,
            why,
        };
        match fields.as_slice() {
            [] => continue,
            [field] => {
                let value: f64 = field
                    .parse()
                    .map_err(|_| bad(format!("RUL {field:?} is not a number")))?;
                if value.fract() != 0.0 || !(0.0..=u32::MAX as f64).contains(&value) {
                    return Err(bad(format!(
                        "RUL {field:?} is not a whole number of cycles"
                    )));
                }
                values.push(value as u32);
            }
            _ => {
                return Err(bad(format!("{} numbers, a RUL line has one", fields.len())));
            }
        }
    }
    if values.is_empty() {
        return Err(RulError::Data("no RUL values (the file is empty)".into()));
    }
    Ok(values)
}

/// Checks that a RUL file gives one value per test unit.
pub fn check_rul_count(engines: &[Engine], rul: &[u32]) -> Result<(), RulError> {
    if engines.len() != rul.len() {
        return Err(RulError::RulCount {
            n_values: rul.len(),
            n_units: engines.len(),
        });
    }
    Ok(())
}

/// Writes engines in the C-MAPSS layout (two trailing spaces a line, as NASA's files have).
pub fn format_cmapss(engines: &[Engine]) -> String {
    let mut text = String::new();
    for engine in engines {
        for cycle in &engine.cycles {
            let _ = write!(text, "{} {}", engine.unit, cycle.cycle);
            for value in cycle.channels {
                let _ = write!(text, " {value}");
            }
            text.push_str("  \n");
        }
    }
    text
}

/// Writes RUL values in the C-MAPSS layout, one a line.
pub fn format_rul(rul: &[u32]) -> String {
    rul.iter().map(|r| format!("{r}\n")).collect()
}

/// A training file split into engines to train on and an official-format test set.
#[derive(Debug, Clone)]
pub struct HoldoutSplit {
    /// The engines left for training, whole and with their unit numbers.
    pub train: Vec<Engine>,
    /// The held-out engines cut before failure, numbered 1, 2, … in order.
    pub test: Vec<Engine>,
    /// Each test unit's remaining cycles after its last line.
    pub rul: Vec<u32>,
    /// The training file's unit number of each test unit.
    pub source_units: Vec<u32>,
}

/// How [`split_holdout`] makes a test set.
#[derive(Debug, Clone)]
pub struct HoldoutSettings {
    /// Engines held out of training.
    pub n_holdout: usize,
    /// Test units cut from each held-out engine (each at its own random cycle); more cuts give a
    /// steadier figure from the same engines.
    pub cuts_per_engine: usize,
    /// Fewest cycles a test unit keeps (the official FD001 test set's shortest unit has 31).
    pub min_history: usize,
    /// Seed of the engine choice and the cuts.
    pub seed: u64,
}

/// Holds `n_holdout` engines out of a run-to-failure set and cuts each at random cycles the way
/// the official test set is: a unit keeps its first `n` cycles, `n` uniform between
/// `min_history` (or fewer for a short engine) and one before failure, and its RUL is the
/// cycles left, `len − n`.
pub fn split_holdout(
    engines: &[Engine],
    settings: &HoldoutSettings,
) -> Result<HoldoutSplit, RulError> {
    if settings.n_holdout == 0 || settings.n_holdout >= engines.len() {
        return Err(RulError::Data(format!(
            "cannot hold out {} of {} engines: at least one must be held out and one left to train",
            settings.n_holdout,
            engines.len()
        )));
    }
    if settings.cuts_per_engine == 0 {
        return Err(RulError::Data("cuts per engine must be at least 1".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..engines.len()).collect();
    order.shuffle(&mut rng);
    let mut held: Vec<usize> = order[..settings.n_holdout].to_vec();
    held.sort_unstable();
    let held_set: HashSet<usize> = held.iter().copied().collect();
    let train = engines
        .iter()
        .enumerate()
        .filter(|(idx, _)| !held_set.contains(idx))
        .map(|(_, e)| e.clone())
        .collect();
    let mut test = Vec::new();
    let mut rul = Vec::new();
    let mut source_units = Vec::new();
    for &engine_idx in &held {
        let engine = &engines[engine_idx];
        let len = engine.cycles.len();
        if len < 2 {
            return Err(RulError::Data(format!(
                "unit {} has {len} cycle, too few to cut before failure",
                engine.unit
            )));
        }
        let shortest = settings.min_history.clamp(1, len - 1);
        for _ in 0..settings.cuts_per_engine {
            let n_kept = rng.gen_range(shortest..=len - 1);
            test.push(Engine {
                unit: test.len() as u32 + 1,
                cycles: engine.cycles[..n_kept].to_vec(),
            });
            rul.push((len - n_kept) as u32);
            source_units.push(engine.unit);
        }
    }
    Ok(HoldoutSplit {
        train,
        test,
        rul,
        source_units,
    })
}

/// Training settings; [`Default`] gives the ones chosen on validation engines of FD001.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RulSettings {
    /// Cycles the model sees at once (shorter histories are padded with their first cycle).
    pub window: usize,
    /// The piecewise-linear target's ceiling, in cycles.
    pub cap: f32,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per optimiser step.
    pub batch_size: usize,
    /// AdamW's learning rate at the start (it decays to zero along a cosine).
    pub learning_rate: f64,
    /// Share of the engines kept out of fitting, for the interval and the validation figures.
    pub validation_fraction: f64,
    /// A channel whose absolute correlation with the capped RUL is below this is dropped.
    pub min_abs_correlation: f64,
    /// The interval's intended coverage (e.g. 0.9: nine true RULs in ten inside).
    pub coverage: f64,
    /// Filters of each convolution.
    pub filters: usize,
    /// Seed of the engine split, the weights and the batch order.
    pub seed: u64,
}

impl Default for RulSettings {
    fn default() -> Self {
        Self {
            window: 30,
            cap: 125.0,
            epochs: 30,
            batch_size: 64,
            learning_rate: 2e-3,
            validation_fraction: 0.2,
            min_abs_correlation: 0.2,
            coverage: 0.9,
            filters: 24,
            seed: 1,
        }
    }
}

/// A RUL estimate with its interval, in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RulEstimate {
    /// The estimate of the cycles left (at most the model's cap).
    pub cycles: f32,
    /// The interval's lower end (never below 0).
    pub low: f32,
    /// The interval's upper end.
    pub high: f32,
    /// The coverage the interval was calibrated for.
    pub coverage: f64,
}

/// Why a channel was left out of the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DroppedChannel {
    pub name: String,
    pub why: String,
}

/// One band of predicted RUL with the residuals (true − predicted) that bound its interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntervalBand {
    /// Predictions from this value (inclusive) …
    pub predicted_from: f32,
    /// … to this one (exclusive; the last band has no end).
    pub predicted_to: Option<f32>,
    /// Added to the prediction for the interval's lower end.
    pub residual_low: f32,
    /// Added to the prediction for the interval's upper end.
    pub residual_high: f32,
    /// Validation windows the band was calibrated on.
    pub n_residuals: usize,
}

/// The figures of one evaluation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RulFigures {
    /// Estimates compared.
    pub n: usize,
    /// Root mean squared error against the true RUL capped at the model's cap, in cycles.
    pub rmse: f64,
    /// Mean absolute error against the capped RUL, in cycles.
    pub mae: f64,
    /// The PHM08 score (sum of `e^(−d/13) − 1` for early and `e^(d/10) − 1` for late estimates,
    /// `d` = estimate − truth; lower is better).
    pub phm08_score: f64,
    /// Share of capped true RULs inside their interval.
    pub coverage: f64,
}

/// The model's card: what it reads, how it was trained, and how well it did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RulCard {
    /// The card layout ([`CARD_FORMAT`]).
    pub format: u32,
    /// `rul-` and the start of the weights' SHA-256.
    pub version: String,
    /// The linesight version that trained it.
    pub trained_by: String,
    /// The architecture, in words.
    pub architecture: String,
    /// The settings it was trained with.
    pub settings: RulSettings,
    /// The input channels in order: the kept measured channels, then `cycle`.
    pub features: Vec<String>,
    /// Index of each kept measured channel in a [`Cycle`]'s `channels`.
    pub channel_indices: Vec<usize>,
    /// The channels the training statistics dropped, and why.
    pub dropped: Vec<DroppedChannel>,
    /// Mean of each feature over the fitting engines' cycles.
    pub feature_means: Vec<f32>,
    /// Standard deviation of each feature over the fitting engines' cycles.
    pub feature_stds: Vec<f32>,
    /// The split-conformal interval, per band of predicted RUL.
    pub interval: Vec<IntervalBand>,
    /// Unit numbers of the engines the weights were fitted on.
    pub fit_units: Vec<u32>,
    /// Unit numbers of the validation engines (interval calibration and figures).
    pub validation_units: Vec<u32>,
    /// Figures on the fitting engines' windows (every cycle).
    pub training: RulFigures,
    /// Figures on the validation engines' windows (every cycle). The interval was calibrated on
    /// these residuals, so their coverage is the calibrated one by construction.
    pub validation: RulFigures,
    /// Validation RMSE after each epoch (how training went; the last epoch's weights are kept).
    pub validation_rmse_by_epoch: Vec<f64>,
}

/// The network: three same-length convolutions, a narrowing one, a dense layer and the output.
///
/// Input `[batch, features, window]`, output `[batch]` (the RUL over the cap).
struct RulNet {
    convs: Vec<Conv1d>,
    narrow: Conv1d,
    dense: Linear,
    out: Linear,
}

/// Filters of the narrowing convolution before the dense layer.
const NARROW_FILTERS: usize = 4;
/// Width of the dense layer.
const DENSE_WIDTH: usize = 64;
/// Kernel width of the main convolutions.
const KERNEL: usize = 5;

impl RulNet {
    fn new(
        n_features: usize,
        window: usize,
        filters: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let same = |kernel: usize| Conv1dConfig {
            padding: kernel / 2,
            ..Default::default()
        };
        let mut convs = Vec::new();
        let mut channels_in = n_features;
        for conv_idx in 0..3 {
            convs.push(candle_nn::conv1d(
                channels_in,
                filters,
                KERNEL,
                same(KERNEL),
                vb.pp(format!("conv{conv_idx}")),
            )?);
            channels_in = filters;
        }
        let narrow = candle_nn::conv1d(filters, NARROW_FILTERS, 3, same(3), vb.pp("narrow"))?;
        let dense = candle_nn::linear(NARROW_FILTERS * window, DENSE_WIDTH, vb.pp("dense"))?;
        let out = candle_nn::linear(DENSE_WIDTH, 1, vb.pp("out"))?;
        Ok(Self {
            convs,
            narrow,
            dense,
            out,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, _features, _window) = xs.dims3()?;
        let mut hidden = xs.clone();
        for conv in &self.convs {
            hidden = conv.forward(&hidden)?.relu()?;
        }
        let hidden = self.narrow.forward(&hidden)?.relu()?.reshape((batch, ()))?;
        let hidden = self.dense.forward(&hidden)?.relu()?;
        self.out.forward(&hidden)?.reshape(batch)
    }
}

/// A trained RUL model: the network and its card.
pub struct RulModel {
    net: RulNet,
    /// The network's variables, kept for [`RulModel::save`].
    varmap: VarMap,
    card: RulCard,
    device: Device,
}

impl std::fmt::Debug for RulModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulModel")
            .field("version", &self.card.version)
            .finish_non_exhaustive()
    }
}

/// Windows per forward pass when predicting many.
const PREDICT_BATCH: usize = 1024;

impl RulModel {
    /// Loads a model folder written by [`RulModel::save`].
    pub fn load(dir: &Path) -> Result<Self, RulError> {
        let card_path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&card_path).map_err(|source| RulError::Read {
            path: card_path.clone(),
            source,
        })?;
        let card: RulCard = serde_json::from_str(&text).map_err(|e| RulError::Card {
            path: card_path.clone(),
            why: e.to_string(),
        })?;
        let card_error = |why: String| RulError::Card {
            path: card_path.clone(),
            why,
        };
        if card.format != CARD_FORMAT {
            return Err(card_error(format!(
                "card format {} (this build reads {CARD_FORMAT})",
                card.format
            )));
        }
        let n_features = card.channel_indices.len() + 1;
        if card.features.len() != n_features
            || card.feature_means.len() != n_features
            || card.feature_stds.len() != n_features
            || card.channel_indices.iter().any(|&i| i >= N_CHANNELS)
            || card.interval.is_empty()
            || card.settings.window == 0
        {
            return Err(card_error(
                "features, normalisation and interval do not agree".into(),
            ));
        }
        let device = Device::Cpu;
        let mut varmap = VarMap::new();
        let net = RulNet::new(
            n_features,
            card.settings.window,
            card.settings.filters,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        varmap.load(dir.join(WEIGHTS_FILE))?;
        Ok(Self {
            net,
            varmap,
            card,
            device,
        })
    }

    /// Writes the weights and the card into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), RulError> {
        std::fs::create_dir_all(dir).map_err(|source| RulError::Write {
            path: dir.to_owned(),
            source,
        })?;
        self.varmap.save(dir.join(WEIGHTS_FILE))?;
        let card_path = dir.join(CARD_FILE);
        let text = serde_json::to_string_pretty(&self.card).map_err(|e| RulError::Card {
            path: card_path.clone(),
            why: e.to_string(),
        })?;
        std::fs::write(&card_path, text + "\n").map_err(|source| RulError::Write {
            path: card_path,
            source,
        })
    }

    /// The model's card.
    pub fn card(&self) -> &RulCard {
        &self.card
    }

    /// The RUL after the last of `history` (an engine's cycles so far, oldest first), with its
    /// interval.
    pub fn predict(&self, history: &[Cycle]) -> Result<RulEstimate, RulError> {
        let estimates = self.predict_many(&[history])?;
        estimates
            .into_iter()
            .next()
            .ok_or_else(|| RulError::Data("no estimate".into()))
    }

    /// [`RulModel::predict`] for many histories at once.
    pub fn predict_many(&self, histories: &[&[Cycle]]) -> Result<Vec<RulEstimate>, RulError> {
        if let Some(idx) = histories.iter().position(|h| h.is_empty()) {
            return Err(RulError::Data(format!("history {idx} has no cycles")));
        }
        let features = Features::from_card(&self.card);
        let normalised: Vec<Vec<f32>> = histories
            .iter()
            .map(|history| features.normalise(history))
            .collect();
        let windows: Vec<(usize, usize)> = histories
            .iter()
            .enumerate()
            .map(|(idx, history)| (idx, history.len() - 1))
            .collect();
        let predicted = predict_windows(
            &self.net,
            &normalised,
            &windows,
            features.n_features(),
            self.card.settings.window,
            self.card.settings.cap,
            &self.device,
        )?;
        Ok(predicted
            .into_iter()
            .map(|cycles| self.with_interval(cycles))
            .collect())
    }

    fn with_interval(&self, cycles: f32) -> RulEstimate {
        let band = band_of(&self.card.interval, cycles);
        RulEstimate {
            cycles,
            low: (cycles + band.residual_low).max(0.0),
            high: (cycles + band.residual_high).max(cycles),
            coverage: self.card.settings.coverage,
        }
    }

    /// Scores the model on test engines against their true RULs (one per engine, in order).
    pub fn evaluate(&self, engines: &[Engine], rul: &[u32]) -> Result<RulFigures, RulError> {
        check_rul_count(engines, rul)?;
        let histories: Vec<&[Cycle]> = engines.iter().map(|e| e.cycles.as_slice()).collect();
        let estimates = self.predict_many(&histories)?;
        let truth: Vec<f32> = rul
            .iter()
            .map(|&r| (r as f32).min(self.card.settings.cap))
            .collect();
        Ok(figures(&estimates, &truth))
    }
}

/// The band a prediction falls in (the last band whose start it reaches).
fn band_of(bands: &[IntervalBand], predicted: f32) -> &IntervalBand {
    bands
        .iter()
        .rev()
        .find(|band| predicted >= band.predicted_from)
        .unwrap_or(&bands[0])
}

/// RMSE, MAE, PHM08 score and coverage of estimates against (capped) truths.
pub fn figures(estimates: &[RulEstimate], truth: &[f32]) -> RulFigures {
    let n = estimates.len().min(truth.len());
    if n == 0 {
        return RulFigures {
            n: 0,
            rmse: f64::NAN,
            mae: f64::NAN,
            phm08_score: f64::NAN,
            coverage: f64::NAN,
        };
    }
    let (mut squared, mut absolute, mut score, mut inside) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (estimate, &true_rul) in estimates.iter().zip(truth) {
        let error = (estimate.cycles - true_rul) as f64;
        squared += error * error;
        absolute += error.abs();
        score += phm08(error);
        if estimate.low <= true_rul && true_rul <= estimate.high {
            inside += 1;
        }
    }
    RulFigures {
        n,
        rmse: (squared / n as f64).sqrt(),
        mae: absolute / n as f64,
        phm08_score: score,
        coverage: inside as f64 / n as f64,
    }
}

/// The PHM08 challenge's penalty for one estimate `error` = estimate − truth cycles: late
/// estimates (positive) cost more than early ones.
pub fn phm08(error: f64) -> f64 {
    if error < 0.0 {
        (-error / 13.0).exp() - 1.0
    } else {
        (error / 10.0).exp() - 1.0
    }
}

/// Which channels feed the model and how they are standardised.
struct Features {
    channel_indices: Vec<usize>,
    means: Vec<f32>,
    stds: Vec<f32>,
}

impl Features {
    fn from_card(card: &RulCard) -> Self {
        Self {
            channel_indices: card.channel_indices.clone(),
            means: card.feature_means.clone(),
            stds: card.feature_stds.clone(),
        }
    }

    /// Kept channels plus the cycle count.
    fn n_features(&self) -> usize {
        self.channel_indices.len() + 1
    }

    fn raw<'a>(&'a self, cycle: &'a Cycle) -> impl Iterator<Item = f32> + 'a {
        self.channel_indices
            .iter()
            .map(|&idx| cycle.channels[idx])
            .chain(std::iter::once(cycle.cycle as f32))
    }

    /// The history's features, standardised, row-major `[cycle][feature]`.
    fn normalise(&self, history: &[Cycle]) -> Vec<f32> {
        let mut values = Vec::with_capacity(history.len() * self.n_features());
        for cycle in history {
            for (feature_idx, value) in self.raw(cycle).enumerate() {
                values.push((value - self.means[feature_idx]) / self.stds[feature_idx]);
            }
        }
        values
    }
}

/// The window of `window` cycles ending at `end` of one normalised history, as `[feature][time]`
/// appended to `out`; cycles before the first are the first repeated.
fn push_window(
    out: &mut Vec<f32>,
    normalised: &[f32],
    n_features: usize,
    end: usize,
    window: usize,
) {
    for feature_idx in 0..n_features {
        for step in 0..window {
            let row = (end + step + 1).saturating_sub(window);
            out.push(normalised[row * n_features + feature_idx]);
        }
    }
}

fn window_batch(
    normalised: &[Vec<f32>],
    windows: &[(usize, usize)],
    n_features: usize,
    window: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut values = Vec::with_capacity(windows.len() * n_features * window);
    for &(history_idx, end) in windows {
        push_window(
            &mut values,
            &normalised[history_idx],
            n_features,
            end,
            window,
        );
    }
    Tensor::from_vec(values, (windows.len(), n_features, window), device)
}

fn predict_windows(
    net: &RulNet,
    normalised: &[Vec<f32>],
    windows: &[(usize, usize)],
    n_features: usize,
    window: usize,
    cap: f32,
    device: &Device,
) -> candle_core::Result<Vec<f32>> {
    let mut predicted = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(PREDICT_BATCH) {
        let input = window_batch(normalised, chunk, n_features, window, device)?;
        let output: Vec<f32> = net.forward(&input)?.to_vec1()?;
        predicted.extend(output.into_iter().map(|v| (v * cap).clamp(0.0, cap)));
    }
    Ok(predicted)
}

/// Every window of a set of run-to-failure engines, with its capped RUL target.
fn all_windows(engines: &[Engine], cap: f32) -> (Vec<(usize, usize)>, Vec<f32>) {
    let mut windows = Vec::new();
    let mut targets = Vec::new();
    for (engine_idx, engine) in engines.iter().enumerate() {
        let len = engine.cycles.len();
        for end in 0..len {
            windows.push((engine_idx, end));
            targets.push(((len - 1 - end) as f32).min(cap));
        }
    }
    (windows, targets)
}

/// Pearson correlation; `None` when either side is constant.
fn correlation(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        sxy += (a - mean_x) * (b - mean_y);
        sxx += (a - mean_x) * (a - mean_x);
        syy += (b - mean_y) * (b - mean_y);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Chooses the channels from the fitting engines' statistics and fits their standardisation.
fn choose_features(
    engines: &[Engine],
    cap: f32,
    min_abs_correlation: f64,
) -> Result<(Features, Vec<String>, Vec<DroppedChannel>), RulError> {
    let (_, targets) = all_windows(engines, cap);
    let targets: Vec<f64> = targets.into_iter().map(f64::from).collect();
    let column = |idx: usize| -> Vec<f64> {
        engines
            .iter()
            .flat_map(|e| e.cycles.iter().map(move |c| c.channels[idx] as f64))
            .collect()
    };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for channel_idx in 0..N_CHANNELS {
        let values = column(channel_idx);
        let (mean, std) = mean_std(&values);
        let name = channel_name(channel_idx);
        // Relative to the level: a sensor reading 2388 ± 1e-9 is constant in all but rounding.
        if std <= 1e-6 * mean.abs().max(1.0) {
            dropped.push(DroppedChannel {
                name,
                why: format!("constant ({mean}) on the training engines"),
            });
            continue;
        }
        match correlation(&values, &targets) {
            Some(r) if r.abs() >= min_abs_correlation => kept.push(channel_idx),
            r => dropped.push(DroppedChannel {
                name,
                why: format!(
                    "|correlation with capped RUL| {:.3} < {min_abs_correlation}",
                    r.unwrap_or(0.0).abs()
                ),
            }),
        }
    }
    if kept.is_empty() {
        return Err(RulError::Data(format!(
            "no channel of the training engines moves with the remaining life (all {N_CHANNELS} \
             constant or with |correlation| below {min_abs_correlation})"
        )));
    }
    let mut means = Vec::new();
    let mut stds = Vec::new();
    for &channel_idx in &kept {
        let (mean, std) = mean_std(&column(channel_idx));
        means.push(mean as f32);
        stds.push(std as f32);
    }
    let cycles: Vec<f64> = engines
        .iter()
        .flat_map(|e| e.cycles.iter().map(|c| c.cycle as f64))
        .collect();
    let (mean, std) = mean_std(&cycles);
    means.push(mean as f32);
    stds.push(std.max(1.0) as f32);
    let mut names: Vec<String> = kept.iter().map(|&i| channel_name(i)).collect();
    names.push("cycle".into());
    Ok((
        Features {
            channel_indices: kept,
            means,
            stds,
        },
        names,
        dropped,
    ))
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

/// Split-conformal bands: predictions cut into terciles, and in each the residual quantiles
/// that leave `(1 − coverage) / 2` outside on either side (with the finite-sample correction).
fn calibrate_interval(predicted: &[f32], truth: &[f32], coverage: f64) -> Vec<IntervalBand> {
    let mut by_prediction: Vec<(f32, f32)> = predicted
        .iter()
        .zip(truth)
        .map(|(&p, &t)| (p, t - p))
        .collect();
    by_prediction.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_bands = if by_prediction.len() >= 300 { 3 } else { 1 };
    let mut bands = Vec::new();
    for band_idx in 0..n_bands {
        let start = band_idx * by_prediction.len() / n_bands;
        let end = (band_idx + 1) * by_prediction.len() / n_bands;
        let members = &by_prediction[start..end];
        let mut residuals: Vec<f32> = members.iter().map(|m| m.1).collect();
        residuals.sort_by(f32::total_cmp);
        let n = residuals.len();
        let tail = (1.0 - coverage) / 2.0;
        let low_rank = (((n + 1) as f64 * tail).floor() as usize).clamp(1, n) - 1;
        let high_rank = (((n + 1) as f64 * (1.0 - tail)).ceil() as usize).clamp(1, n) - 1;
        bands.push(IntervalBand {
            predicted_from: if band_idx == 0 { 0.0 } else { members[0].0 },
            predicted_to: (band_idx + 1 < n_bands).then(|| by_prediction[end].0),
            residual_low: residuals[low_rank],
            residual_high: residuals[high_rank],
            n_residuals: n,
        });
    }
    bands
}

/// Trains a model on run-to-failure engines: a seeded share is kept for validation, the rest
/// fitted.
pub fn train(
    engines: &[Engine],
    settings: &RulSettings,
    show_progress: bool,
) -> Result<RulModel, RulError> {
    check_settings(settings)?;
    if engines.len() < 2 {
        return Err(RulError::Data(format!(
            "{} engine: training needs at least 2 (some are kept for validation)",
            engines.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..engines.len()).collect();
    order.shuffle(&mut rng);
    let n_validation = ((engines.len() as f64 * settings.validation_fraction).round() as usize)
        .clamp(1, engines.len() - 1);
    let mut validation_idx = order[..n_validation].to_vec();
    let mut fit_idx = order[n_validation..].to_vec();
    validation_idx.sort_unstable();
    fit_idx.sort_unstable();
    let fit_engines: Vec<Engine> = fit_idx.iter().map(|&i| engines[i].clone()).collect();
    let validation_engines: Vec<Engine> =
        validation_idx.iter().map(|&i| engines[i].clone()).collect();

    let (features, names, dropped) =
        choose_features(&fit_engines, settings.cap, settings.min_abs_correlation)?;
    tracing::info!(features = ?names, "channels chosen");
    let n_features = features.n_features();
    let fit_normalised: Vec<Vec<f32>> = fit_engines
        .iter()
        .map(|e| features.normalise(&e.cycles))
        .collect();
    let validation_normalised: Vec<Vec<f32>> = validation_engines
        .iter()
        .map(|e| features.normalise(&e.cycles))
        .collect();
    let (fit_windows, fit_targets) = all_windows(&fit_engines, settings.cap);
    let (validation_windows, validation_targets) = all_windows(&validation_engines, settings.cap);

    let device = Device::Cpu;
    let varmap = VarMap::new();
    let net = RulNet::new(
        n_features,
        settings.window,
        settings.filters,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
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

    let steps_per_epoch = fit_windows.len().div_ceil(settings.batch_size);
    let bar = progress::bar(show_progress, (steps_per_epoch * settings.epochs) as u64);
    let mut order: Vec<usize> = (0..fit_windows.len()).collect();
    let mut validation_rmse_by_epoch = Vec::new();
    // The last epoch's validation predictions are those of the final network.
    let mut validation_predicted = None;
    let n_steps = (steps_per_epoch * settings.epochs) as f64;
    let mut step = 0usize;
    for epoch in 0..settings.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(settings.batch_size) {
            // Cosine decay to zero: the last epochs settle instead of jumping between minima.
            let progress = step as f64 / n_steps;
            optimizer.set_learning_rate(
                settings.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            );
            step += 1;
            let windows: Vec<(usize, usize)> = batch.iter().map(|&i| fit_windows[i]).collect();
            let targets: Vec<f32> = batch
                .iter()
                .map(|&i| fit_targets[i] / settings.cap)
                .collect();
            let input = window_batch(
                &fit_normalised,
                &windows,
                n_features,
                settings.window,
                &device,
            )?;
            let target = Tensor::from_vec(targets, batch.len(), &device)?;
            let loss = (net.forward(&input)? - target)?.sqr()?.mean_all()?;
            optimizer.backward_step(&loss)?;
            bar.inc(1);
        }
        let predicted = predict_windows(
            &net,
            &validation_normalised,
            &validation_windows,
            n_features,
            settings.window,
            settings.cap,
            &device,
        )?;
        let rmse = rmse(&predicted, &validation_targets);
        bar.set_message(format!("epoch {} validation RMSE {rmse:.2}", epoch + 1));
        tracing::info!(epoch = epoch + 1, validation_rmse = rmse, "epoch done");
        validation_rmse_by_epoch.push(rmse);
        validation_predicted = Some(predicted);
    }
    bar.finish_and_clear();

    let validation_predicted = match validation_predicted {
        Some(predicted) => predicted,
        None => predict_windows(
            &net,
            &validation_normalised,
            &validation_windows,
            n_features,
            settings.window,
            settings.cap,
            &device,
        )?,
    };
    let interval = calibrate_interval(
        &validation_predicted,
        &validation_targets,
        settings.coverage,
    );
    let fit_predicted = predict_windows(
        &net,
        &fit_normalised,
        &fit_windows,
        n_features,
        settings.window,
        settings.cap,
        &device,
    )?;
    let with_interval = |predicted: &[f32]| -> Vec<RulEstimate> {
        predicted
            .iter()
            .map(|&cycles| {
                let band = band_of(&interval, cycles);
                RulEstimate {
                    cycles,
                    low: (cycles + band.residual_low).max(0.0),
                    high: (cycles + band.residual_high).max(cycles),
                    coverage: settings.coverage,
                }
            })
            .collect()
    };
    let training = figures(&with_interval(&fit_predicted), &fit_targets);
    let validation = figures(&with_interval(&validation_predicted), &validation_targets);

    let weights = varmap_bytes(&varmap)?;
    let digest = Sha256::digest(&weights);
    let card = RulCard {
        format: CARD_FORMAT,
        version: format!("rul-{}", hex::encode(&digest[..6])),
        trained_by: format!("linesight {}", env!("CARGO_PKG_VERSION")),
        architecture: format!(
            "1D CNN: 3 × conv1d({}, kernel {KERNEL}, same) + ReLU, conv1d({NARROW_FILTERS}, kernel 3) \
             + ReLU, dense {DENSE_WIDTH} + ReLU, linear output × cap; input [features, {} cycles]",
            settings.filters, settings.window
        ),
        settings: settings.clone(),
        features: names,
        channel_indices: features.channel_indices.clone(),
        dropped,
        feature_means: features.means.clone(),
        feature_stds: features.stds.clone(),
        interval,
        fit_units: fit_engines.iter().map(|e| e.unit).collect(),
        validation_units: validation_engines.iter().map(|e| e.unit).collect(),
        training,
        validation,
        validation_rmse_by_epoch,
    };
    Ok(RulModel {
        net,
        varmap,
        card,
        device,
    })
}

fn check_settings(settings: &RulSettings) -> Result<(), RulError> {
    let mut problems = Vec::new();
    if settings.window == 0 {
        problems.push("window must be at least 1 cycle");
    }
    if !(settings.cap.is_finite() && settings.cap > 0.0) {
        problems.push("cap must be a positive number of cycles");
    }
    if settings.epochs == 0 {
        problems.push("epochs must be at least 1");
    }
    if settings.batch_size == 0 {
        problems.push("batch size must be at least 1");
    }
    if settings.filters == 0 {
        problems.push("filters must be at least 1");
    }
    if !(settings.validation_fraction > 0.0 && settings.validation_fraction < 1.0) {
        problems.push("validation fraction must be between 0 and 1");
    }
    if !(settings.coverage > 0.0 && settings.coverage < 1.0) {
        problems.push("coverage must be between 0 and 1");
    }
    if !(settings.learning_rate.is_finite() && settings.learning_rate > 0.0) {
        problems.push("learning rate must be positive");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RulError::Data(problems.join("; ")))
    }
}

/// The variables in safetensors form, in name order, for the version hash.
fn varmap_bytes(varmap: &VarMap) -> Result<Vec<u8>, RulError> {
    let mut bytes = Vec::new();
    crate::learn::fit::for_each_var_sorted(varmap, |name, var| {
        bytes.extend_from_slice(name.as_bytes());
        for value in var.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        Ok(())
    })?;
    Ok(bytes)
}

fn rmse(predicted: &[f32], truth: &[f32]) -> f64 {
    let n = predicted.len().max(1) as f64;
    (predicted
        .iter()
        .zip(truth)
        .map(|(&p, &t)| ((p - t) as f64).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

#[cfg(test)]
mod tests;
