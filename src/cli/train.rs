//! `linesight train synthetic|anomaly|supervised|template`: train a model and write it to a folder
//! (weights and card), printing its held-out metrics.

use std::path::{Path, PathBuf};

use anyhow::Context;

use linesight::learn::dataset::Layout;
use linesight::learn::progress::Progress;
use linesight::models::anomaly::bank_size::BankSize;
use linesight::models::anomaly::discriminator;
use linesight::models::anomaly::orientation::Orientations;
use linesight::models::anomaly::patch_stages::StagesSetting;
use linesight::models::anomaly::train::{
    self as anomaly_train, AnomalySettings, COARSE_INPUT_SIZE, InputSize,
};
use linesight::models::anomaly::{SYNTHETIC_DEFECTS_PER_GOOD, ScoreKind};
use linesight::models::backbone::WeightsSearch;
use linesight::models::defect_net::DefectModel;
use linesight::models::defect_net::train::{self as defect_net_train, TrainSettings};
use linesight::models::supervised::{self, SupervisedSettings};
use linesight::models::template::{self, CompareSettings, TemplateSettings};

use super::report;

#[derive(clap::Subcommand)]
pub enum Train {
    /// The default defect model, on synthetic parts.
    Synthetic(Synthetic),
    /// An anomaly model (PatchCore) from a dataset's good images only.
    Anomaly(Anomaly),
    /// A supervised segmentation model from a dataset's labelled images.
    Supervised(Supervised),
    /// A golden-template model: parts compared with a defect-free image of their product,
    /// which differences are defects (and of which type) learnt from labelled boxes.
    Template(Template),
}

impl Train {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Train::Synthetic(args) => args.run(),
            Train::Anomaly(args) => args.run(),
            Train::Supervised(args) => args.run(),
            Train::Template(args) => args.run(),
        }
    }
}

#[derive(clap::Args)]
pub struct Synthetic {
    /// Output folder for model.safetensors and card.json.
    #[arg(long, default_value = "models/defect-net-sim")]
    out: PathBuf,
    #[arg(long, default_value = "defect-net-sim")]
    name: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 480)]
    n_train: usize,
    #[arg(long, default_value_t = 160)]
    n_val: usize,
    #[arg(long, default_value_t = 400)]
    n_test: usize,
    #[arg(long, default_value_t = 0.5)]
    defect_rate: f64,
    #[arg(long, default_value_t = 14)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f64,
    /// Share of defective validation parts the threshold may let through.
    #[arg(long, default_value_t = 0.0)]
    target_escape_rate: f64,
    #[arg(long, default_value = "calibration/simulated.yaml")]
    calibration: PathBuf,
    /// Do not train: add the drift reference to the card of the model already in `--out`,
    /// learnt from the very parts it was trained on (for a model trained before cards had one).
    #[arg(long)]
    drift_reference_only: bool,
}

impl Synthetic {
    fn run(self) -> anyhow::Result<()> {
        if self.drift_reference_only {
            let model = DefectModel::load(&self.out, &candle_core::Device::Cpu)
                .context("loading the model")?;
            let reference = defect_net_train::learn_drift_reference(
                &model,
                &self.calibration,
                self.defect_rate,
            )
            .context("learning the drift reference")?;
            println!(
                "drift reference of {}: novelty limit {:.2} ({}), {} good validation scores, \
                 validation error rate {:.4}",
                model.card.head.version,
                reference.input.limit,
                reference.input.limit_rule,
                reference.good_scores.len(),
                reference.error_rate
            );
            model.card.with_drift(Some(reference)).write(&self.out)?;
            return Ok(());
        }
        let card = defect_net_train::train(&TrainSettings {
            name: self.name,
            seed: self.seed,
            n_train: self.n_train,
            n_val: self.n_val,
            n_test: self.n_test,
            defect_rate: self.defect_rate,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            target_escape_rate: self.target_escape_rate,
            calibration_file: self.calibration,
            out_dir: self.out.clone(),
            progress: true,
        })
        .context("training")?;
        println!(
            "trained {} in {:.0} s → {}",
            card.head.version,
            card.family.training.duration_s,
            self.out.display()
        );
        report::defect_net_metrics(&card.family.metrics);
        Ok(())
    }
}

/// Where the data is, how it is laid out, and where the model goes: what every model trained
/// on a dataset is told.
#[derive(clap::Args)]
struct Folders {
    /// The dataset's folder layout.
    #[arg(long, value_enum)]
    layout: Layout,
    /// The dataset's root folder, read in place.
    #[arg(long)]
    data: PathBuf,
    /// The model's folder: its card and the files loaded with it (weights, a golden image).
    #[arg(long)]
    out: PathBuf,
}

/// What a model learnt on a pretrained backbone is told besides its [`Folders`]: the seed and
/// the backbone.
#[derive(clap::Args)]
struct OnDataset {
    #[command(flatten)]
    folders: Folders,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The pretrained backbone's weights (safetensors): EfficientNet-Lite0 or the deeper Lite1
    /// (`models/efficientnet-lite1/efficientnet-lite1.safetensors` after `make weights`); the
    /// card records their SHA-256. Default: the Lite0 weights found first in the usual places
    /// (`make weights` installs them in models/).
    #[arg(long)]
    backbone: Option<PathBuf>,
}

impl OnDataset {
    /// The backbone weights to train on: the file given, or the first one found.
    fn backbone(&self) -> anyhow::Result<PathBuf> {
        if let Some(file) = &self.backbone {
            return Ok(file.clone());
        }
        let out = &self.folders.out;
        let beside = out.parent().unwrap_or(Path::new("."));
        Ok(WeightsSearch::station(None, beside).find(None, out)?)
    }
}

#[derive(clap::Args)]
pub struct Anomaly {
    #[command(flatten)]
    dataset: OnDataset,
    #[arg(long, default_value = "anomaly")]
    name: String,
    /// Memory-bank entries kept from the good patches: a number, or `auto` to let the run
    /// choose the smallest of 1024, 2048, 4096, … that covers good validation images nearly
    /// as well as every good patch, within the search time of a 256-pixel input's 4096
    /// entries of both feature maps (a model keeping one map searches its channels alone, so
    /// the same time allows it more); `auto:N` lets it choose up to N. The card keeps each
    /// one's figure.
    #[arg(long, default_value = "auto")]
    bank_size: BankSize,
    /// Side of the square the backbone sees: a multiple of 16, or `auto` to let the run
    /// choose between 128 and 256 (no larger than the images) by how well each finds
    /// defects painted on good validation images; the card keeps each one's figure.
    /// `auto:512` lets it choose 512 too, at about four times 256's cost per part.
    #[arg(long, default_value = "auto")]
    input_size: InputSize,
    /// Which of the backbone's feature maps the patch features keep: `both` (stride 8 and
    /// upsampled stride 16), `stride8`, `stride16`, or `auto` to let the run choose by how
    /// well each finds defects painted on good validation images (one map alone only when
    /// clearly better than both); the card keeps each one's figure.
    #[arg(long, default_value = "auto")]
    patch_stages: StagesSetting,
    /// Share of good validation images the threshold may reject.
    #[arg(long, default_value_t = anomaly_train::DEFAULT_TARGET_FALSE_REJECT_RATE)]
    target_false_reject_rate: f64,
    /// Defects painted on each good training image to train the patch head, a classifier
    /// of defect-like patches beside the memory bank; 0 trains none.
    #[arg(long, default_value_t = SYNTHETIC_DEFECTS_PER_GOOD)]
    synthetic_defects: usize,
    /// Input size of a second, whole-image score at a coarser scale (a multiple of 16);
    /// 0 for none.
    #[arg(long, default_value_t = COARSE_INPUT_SIZE)]
    coarse_input_size: usize,
    /// Optimiser steps of the discriminator, a small network that learns to tell the good
    /// patches from the same patches with noise added, in a feature space it adapts to the
    /// product (SimpleNet-style); its score joins the others where the run finds it sees
    /// painted defects (always, below 20 good validation images). 0 (the default) trains
    /// none: on magnetic-tile it lowered the AUROC (README.md); 300 is what was measured.
    #[arg(long, default_value_t = discriminator::DEFAULT_STEPS)]
    discriminator_steps: usize,
    /// The discriminator's noise: its standard deviation in units of the good patches' own
    /// spread, channel by channel.
    #[arg(long, default_value_t = discriminator::DEFAULT_NOISE_STD)]
    discriminator_noise: f32,
    /// Turned copies of the good images the memory bank learns from: `none`; `auto`, the
    /// turns (flips, half and quarter turns) after which the product's good images still
    /// look like its good images; `all`; or turns by name, comma-separated, for parts that
    /// arrive so turned (flip-horizontal, flip-vertical, rotate180, rotate90, rotate270,
    /// transpose, anti-transpose). The card keeps the turns and, for `auto`, each trial.
    #[arg(long, default_value = "none")]
    orientations: Orientations,
}

impl Anomaly {
    fn run(self) -> anyhow::Result<()> {
        let backbone_weights = self.dataset.backbone()?;
        let card = anomaly_train::train(&AnomalySettings {
            name: self.name,
            layout: self.dataset.folders.layout,
            data: self.dataset.folders.data,
            backbone_weights,
            bank_size: self.bank_size,
            input_size: self.input_size,
            patch_stages: self.patch_stages,
            target_false_reject_rate: self.target_false_reject_rate,
            synthetic_defects_per_good: self.synthetic_defects,
            coarse_input_size: (self.coarse_input_size > 0).then_some(self.coarse_input_size),
            discriminator_steps: self.discriminator_steps,
            discriminator_noise_std: self.discriminator_noise,
            orientations: self.orientations,
            seed: self.dataset.seed,
            out_dir: self.dataset.folders.out.clone(),
            progress: Progress::terminal(),
        })
        .context("training the anomaly model")?;
        println!(
            "trained {} ({} good images, bank {}) in {:.0} s → {}",
            card.head.version,
            card.family.n_train_good,
            card.family.bank_size,
            card.family.training_duration_s,
            self.dataset.folders.out.display()
        );
        if let Some(choice) = &card.family.bank_size_choice {
            let trials: Vec<String> = (choice.trials.iter())
                .map(|t| format!("{}: {:+.1} %", t.bank_size, t.score_rise * 100.0))
                .collect();
            if trials.is_empty() {
                println!("bank size {}: {}", choice.chosen, choice.rule);
            } else {
                println!(
                    "bank size {} chosen (good validation scores' rise over every patch: {})",
                    choice.chosen,
                    trials.join(", ")
                );
            }
        }
        if let Some(choice) = &card.family.patch_stages_choice {
            let trials: Vec<String> = (choice.trials.iter())
                .map(|t| format!("{}: {:.3}", t.stages.name(), t.painted_auroc))
                .collect();
            if trials.is_empty() {
                println!("feature maps {}: {}", choice.chosen.name(), choice.rule);
            } else {
                println!(
                    "feature maps {} chosen (painted-defect AUROC {})",
                    choice.chosen.name(),
                    trials.join(", ")
                );
            }
        }
        if let Some(choice) = &card.family.orientation_choice {
            let turns: Vec<&str> = choice.chosen.iter().map(|t| t.name()).collect();
            let trials: Vec<String> = (choice.trials.iter())
                .map(|t| format!("{}: {:.3}", t.orientation.name(), t.turned_auroc))
                .collect();
            println!(
                "turned copies learnt: {} ({} images; {}{})",
                if turns.is_empty() {
                    "none".to_owned()
                } else {
                    turns.join(", ")
                },
                choice.n_turned_images,
                choice.rule,
                if trials.is_empty() {
                    String::new()
                } else {
                    format!("; {}", trials.join(", "))
                }
            );
        }
        if let Some(choice) = &card.family.score_choice {
            let trials: Vec<String> = (ScoreKind::ALL.iter())
                .filter_map(|&kind| {
                    let auroc = choice.painted_auroc.of_kind(kind)?;
                    Some(format!("{}: {auroc:.3}", kind.name()))
                })
                .collect();
            let counted: Vec<&str> = choice.counted.iter().map(|k| k.name()).collect();
            println!(
                "scores summed: {} (painted-defect AUROC {}; {})",
                counted.join(" + "),
                trials.join(", "),
                choice.rule
            );
        }
        report::anomaly_metrics(&card.family.metrics);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Supervised {
    #[command(flatten)]
    dataset: OnDataset,
    #[arg(long, default_value = "supervised")]
    name: String,
    #[arg(long, default_value_t = supervised::DEFAULT_EPOCHS)]
    epochs: usize,
    #[arg(long, default_value_t = supervised::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    #[arg(long, default_value_t = supervised::DEFAULT_LEARNING_RATE)]
    learning_rate: f64,
    /// Side of the square images are resized to (a multiple of 16): smaller is faster,
    /// larger keeps finer defects. `auto` lets the run choose between 128 and 256 by a first
    /// fit at each, judged on the validation images (thin defects' outline F1, boxes' mean
    /// AP, else image AUROC); `auto:512` lets it choose 512 too, at about four times 256's
    /// cost per part, `auto:1024` 1024 as well (about 26 times). No candidate is above the
    /// images' longer side (+10 %), or twice it (+10 %) for thin defects, whose outlines a
    /// finer grid draws better. The card keeps each one's figure.
    #[arg(long, default_value_t = InputSize::Fixed(supervised::DEFAULT_INPUT_SIZE))]
    input_size: InputSize,
    /// Randomly augmented copies of each training image (flips, small rotations,
    /// brightness/contrast, noise), besides the image itself.
    #[arg(long, default_value_t = supervised::DEFAULT_AUGMENTED_COPIES)]
    augmented_copies: usize,
    /// Share of feature channels dropped per image while training (regularises the
    /// head on small datasets; 0 turns it off).
    #[arg(long, default_value_t = supervised::DEFAULT_FEATURE_DROPOUT)]
    feature_dropout: f64,
    /// Choose the threshold for this share of defective validation images let through,
    /// instead of near 0.5 within one image of the best validation accuracy. Either needs
    /// good and defective validation images; without good ones the threshold is the heat-map
    /// cut that outlines thin defects best where the images have them, else 0.5.
    #[arg(long)]
    target_escape_rate: Option<f64>,
    /// Cross-validate instead: train this many models, each holding out one fold (whole items
    /// where the dataset has them, as KolektorSDD's `kosNN`), into `OUT/fold-N`, and report
    /// each fold and all of them pooled (also written to `OUT/cross-validation.json`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=20))]
    folds: Option<u16>,
}

impl Supervised {
    fn run(self) -> anyhow::Result<()> {
        let backbone_weights = self.dataset.backbone()?;
        let settings = SupervisedSettings {
            name: self.name,
            layout: self.dataset.folders.layout,
            data: self.dataset.folders.data,
            backbone_weights,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            input_size: self.input_size,
            augmented_copies: self.augmented_copies,
            feature_dropout: self.feature_dropout,
            target_escape_rate: self.target_escape_rate,
            fold: None,
            seed: self.dataset.seed,
            out_dir: self.dataset.folders.out.clone(),
            progress: Progress::terminal(),
        };
        if let Some(folds) = self.folds {
            let validation = supervised::cross_validate(&settings, usize::from(folds))
                .context("cross-validating the supervised model")?;
            report::cross_validation(&validation);
            let path = self.dataset.folders.out.join("cross-validation.json");
            return super::write_json(Some(&path), &validation);
        }
        let card = supervised::train(&settings).context("training the supervised model")?;
        let family = &card.family;
        println!(
            "trained {} ({} images × {} copies; threshold chosen on {} of them, held back from a first fit) in {:.0} s → {}",
            card.head.version,
            family.n_train,
            1 + family.augmented_copies,
            family.n_validation,
            family.training_duration_s,
            self.dataset.folders.out.display()
        );
        if let Some(choice) = &family.input_size_choice {
            let trials: Vec<String> = (choice.trials.iter())
                .map(|t| match t.value {
                    Some(value) => format!("{}: {value:.3}", t.input_size),
                    None => format!("{}: n/a", t.input_size),
                })
                .collect();
            println!(
                "input size {} chosen by the {} ({})",
                choice.chosen,
                choice.figure,
                trials.join(", ")
            );
        }
        report::supervised_metrics(&family.classes, card.head.threshold, &family.metrics);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Template {
    #[command(flatten)]
    folders: Folders,
    #[arg(long, default_value = "template")]
    name: String,
    /// The product's golden image: a defect-free part, compared with every part the layout
    /// does not pair with a reference of its own, and copied into the model for the station.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// How deep (pixels from the reference's edges) a difference must reach to be judged:
    /// the run's first candidate, or with --fixed-compare the setting.
    #[arg(long, default_value_t = CompareSettings::default().min_depth_px)]
    min_depth_px: f32,
    /// Differences closer than this (pixels) are one candidate: the run's first candidate, or
    /// with --fixed-compare the setting.
    #[arg(long, default_value_t = CompareSettings::default().join_px)]
    join_px: u32,
    /// Keep --min-depth-px, --join-px and --align-px as given, and the crumb size at its
    /// default (10 px), instead of letting the run choose them.
    #[arg(long)]
    fixed_compare: bool,
    /// The largest shift (pixels, each way) tried to align a part with its reference: the
    /// least the run chooses from how far its parts sit off their references, or with
    /// --fixed-compare the setting.
    #[arg(long, default_value_t = CompareSettings::default().align_px)]
    align_px: u32,
}

impl Template {
    fn run(self) -> anyhow::Result<()> {
        let settings = TemplateSettings {
            name: self.name,
            layout: self.folders.layout,
            data: self.folders.data,
            reference: self.reference,
            compare: CompareSettings {
                min_depth_px: self.min_depth_px,
                join_px: self.join_px,
                align_px: self.align_px,
                ..CompareSettings::default()
            },
            choose_compare: !self.fixed_compare,
            out_dir: self.folders.out.clone(),
            progress: Progress::terminal(),
        };
        let card = template::train(&settings).context("training the template model")?;
        let family = &card.family;
        println!(
            "trained {} ({} parts, {} labelled boxes, {} candidates; threshold chosen on {} of them, held back from a first fit; box margin {} px) in {:.0} s → {}",
            card.head.version,
            family.n_train,
            family.n_train_boxes,
            family.n_train_candidates,
            family.n_validation,
            family.box_margin_px,
            family.training_duration_s,
            self.folders.out.display()
        );
        if let Some(choice) = &family.alignment_choice {
            let seen: Vec<String> = (choice.parts_by_offset_px.iter().enumerate())
                .filter(|(_, parts)| **parts > 0)
                .map(|(offset, parts)| format!("{offset} px: {parts}"))
                .collect();
            println!(
                "alignment within {} px, chosen: {} (parts by offset: {})",
                choice.align_px,
                choice.rule,
                seen.join(", ")
            );
        }
        if let Some(choice) = &family.compare_choice {
            let trials: Vec<String> = (choice.trials.iter())
                .map(|t| {
                    let figure = t.validation_map.map_or("-".into(), |m| format!("{m:.4}"));
                    format!("{}/{} {figure}", t.min_depth_px, t.join_px)
                })
                .collect();
            println!(
                "depth {} px, join {} px, chosen: {} (validation box mAP@0.5 by depth/join: {})",
                choice.min_depth_px,
                choice.join_px,
                choice.rule,
                trials.join(", ")
            );
            if let Some(min_island_px) = choice.min_island_px {
                let trials: Vec<String> = (choice.island_trials.iter())
                    .map(|t| {
                        let figure = t.validation_map.map_or("-".into(), |m| format!("{m:.4}"));
                        format!("{} {figure}", t.min_island_px)
                    })
                    .collect();
                println!(
                    "crumbs below {min_island_px} px, chosen the same way (validation box mAP@0.5 by crumb size: {})",
                    trials.join(", ")
                );
            }
        }
        println!("threshold: {}", card.head.threshold_rule);
        if let Some(boxes) = &family.validation_boxes {
            println!("on the validation parts (the first fit):");
            report::box_metrics(boxes);
            println!("on the held-out parts:");
        }
        report::template_metrics(card.head.threshold, &family.metrics);
        Ok(())
    }
}
