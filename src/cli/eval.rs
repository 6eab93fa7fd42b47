//! `linesight eval synthetic|anomaly|supervised|template`: measure a saved model on data it never saw,
//! print the table and, with `--json`, write the metrics (and, for an anomaly model with
//! `--scores`, each image's scores).

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;

use linesight::learn::dataset::{self, EvalPart, Layout};
use linesight::learn::progress::Progress;
use linesight::models::anomaly::AnomalyModel;
use linesight::models::anomaly::train as anomaly_train;
use linesight::models::backbone::WeightsSearch;
use linesight::models::defect_net::DefectModel;
use linesight::models::defect_net::train::evaluate_saved;
use linesight::models::supervised::{self, SupervisedModel};
use linesight::models::template::{self, TemplateModel};

use super::{report, write_json};

#[derive(clap::Subcommand)]
pub enum Eval {
    /// The default defect model, on held-out synthetic parts.
    Synthetic(Synthetic),
    /// An anomaly model, on the held-out part of a dataset.
    Anomaly(AnomalyEval),
    /// A supervised model, on the held-out part of a dataset.
    Supervised(HeldOut),
    /// A golden-template model, on the held-out part of a dataset: each part compared with
    /// its own reference where the layout pairs them, else with the model's golden image.
    Template(HeldOut),
}

impl Eval {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Eval::Synthetic(args) => args.run(),
            Eval::Anomaly(args) => args.held_out.anomaly(args.scores.as_deref()),
            Eval::Supervised(args) => args.supervised(),
            Eval::Template(args) => args.template(),
        }
    }
}

#[derive(clap::Args)]
pub struct Synthetic {
    #[arg(long, default_value = "models/defect-net-sim")]
    model: PathBuf,
    /// The training seed: test parts come from seed + 2, which training never saw.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 400)]
    n_test: usize,
    #[arg(long, default_value_t = 0.5)]
    defect_rate: f64,
    #[arg(long, default_value = "calibration/simulated.yaml")]
    calibration: PathBuf,
    /// Where to write the metrics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Synthetic {
    fn run(self) -> anyhow::Result<()> {
        let loaded = DefectModel::load(&self.model, &Device::Cpu).context("loading the model")?;
        let metrics = evaluate_saved(
            &loaded,
            &self.calibration,
            self.seed,
            self.n_test,
            self.defect_rate,
        )
        .context("evaluating")?;
        println!("model {}", loaded.card.head.version);
        report::defect_net_metrics(&metrics);
        write_json(self.json.as_deref(), &metrics)
    }
}

/// An anomaly model's evaluation, which can also list each image's scores.
#[derive(clap::Args)]
pub struct AnomalyEval {
    #[command(flatten)]
    held_out: HeldOut,
    /// Where to write each scored image's scores as CSV: its path, class, the model's score,
    /// whether the threshold rejects it, and the scores the model sums (patch distance, image
    /// Gaussian, patch head, coarse image Gaussian, discriminator; empty where the model has
    /// none).
    #[arg(long)]
    scores: Option<PathBuf>,
}

/// A saved model and the dataset whose held-out part it is measured on.
#[derive(clap::Args)]
pub struct HeldOut {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum)]
    layout: Layout,
    #[arg(long)]
    data: PathBuf,
    /// Which images to score: the part training held out, or every image of the folder (a
    /// test set of its own).
    #[arg(long, value_enum, default_value = "held-out")]
    split: EvalPart,
    /// A file of backbone weights to look at first; the model's card names the weights it
    /// needs, which are otherwise looked for beside the model and in the usual places.
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Where to write the metrics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl HeldOut {
    fn anomaly(self, scores: Option<&Path>) -> anyhow::Result<()> {
        let loaded = AnomalyModel::load(&self.model, &self.weights(), &Device::Cpu)
            .context("loading the anomaly model")?;
        let samples = dataset::read(self.layout, &self.data)?;
        let (scored, said) = self.split.pick(samples, anomaly_train::held_out_part);
        let threshold = loaded.card.head.threshold;
        // Opened first: a path it cannot write fails before a long evaluation, not after.
        let listing = scores
            .map(|path| {
                csv::Writer::from_path(path)
                    .with_context(|| format!("writing the scores to {}", path.display()))
                    .map(|csv| (path, csv))
            })
            .transpose()?;
        let (metrics, each) =
            anomaly_train::evaluate_each(&loaded.model, &scored, threshold, &Progress::terminal())
                .context("evaluating")?;
        self.check_scored(metrics.detection.n_test, &said)?;
        if let Some((path, csv)) = listing {
            write_scores(csv, &each, threshold)
                .with_context(|| format!("writing the scores to {}", path.display()))?;
        }
        println!("model {} on {}", loaded.card.head.name, self.data.display());
        println!("scored: {said}");
        report::anomaly_metrics(&metrics);
        write_json(self.json.as_deref(), &metrics)
    }

    fn supervised(self) -> anyhow::Result<()> {
        let loaded = SupervisedModel::load(&self.model, &self.weights(), &Device::Cpu)
            .context("loading the supervised model")?;
        let samples = dataset::read(self.layout, &self.data)?;
        let (scored, said) = self.split.pick(samples, supervised::held_out_part);
        let metrics =
            supervised::evaluate(&loaded, &scored, &Progress::terminal()).context("evaluating")?;
        self.check_scored(metrics.detection.n_test, &said)?;
        println!(
            "model {} on {}",
            loaded.card.head.version,
            self.data.display()
        );
        println!("scored: {said}");
        let card = &loaded.card;
        report::supervised_metrics(&card.family.classes, card.head.threshold, &metrics);
        write_json(self.json.as_deref(), &metrics)
    }

    fn template(self) -> anyhow::Result<()> {
        let loaded = TemplateModel::load(&self.model).context("loading the template model")?;
        let samples = dataset::read(self.layout, &self.data)?;
        let (scored, said) = self.split.pick(samples, template::held_out_part);
        let n_images = scored.len();
        let metrics =
            template::evaluate(&loaded, &scored, self.layout, None, &Progress::terminal())
                .context("evaluating")?;
        if n_images > 0 && metrics.n_test == 0 {
            anyhow::bail!(
                "none of the {n_images} images of {} ({said}) has a reference to compare it \
                 with: the {:?} layout pairs none, and the model has no golden image ({})",
                self.data.display(),
                self.layout,
                template::REFERENCE_FILE
            );
        }
        self.check_scored(metrics.n_test, &said)?;
        println!(
            "model {} on {}",
            loaded.card.head.version,
            self.data.display()
        );
        println!("scored: {said} (the parts with a reference to compare with)");
        report::template_metrics(loaded.card.head.threshold, &metrics);
        write_json(self.json.as_deref(), &metrics)
    }

    /// Where the model's backbone weights are looked for.
    fn weights(&self) -> WeightsSearch {
        let beside = self.model.parent().unwrap_or(Path::new("."));
        WeightsSearch::station(self.backbone.clone(), beside)
    }

    /// No image scored is an error, never a table of zeros with exit code 0.
    fn check_scored(&self, n_scored: usize, said: &str) -> anyhow::Result<()> {
        if n_scored == 0 {
            anyhow::bail!(
                "no image of {} was scored ({said}){}",
                self.data.display(),
                match self.split {
                    EvalPart::HeldOut => "; --split all scores every image of the folder",
                    EvalPart::All => "",
                }
            );
        }
        Ok(())
    }
}

/// Each image's scores as CSV, one row per image ([`AnomalyEval::scores`]).
fn write_scores(
    mut csv: csv::Writer<std::fs::File>,
    each: &[anomaly_train::ImageScore],
    threshold: f32,
) -> anyhow::Result<()> {
    csv.write_record([
        "image",
        "class",
        "score",
        "rejected",
        "patch",
        "image_gaussian",
        "head",
        "coarse_image",
        "discriminator",
    ])?;
    let optional = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
    for scored in each {
        csv.write_record([
            scored.image.display().to_string(),
            scored.class.clone(),
            scored.score.to_string(),
            (scored.score >= threshold).to_string(),
            scored.raw.patch.to_string(),
            optional(scored.raw.image),
            optional(scored.raw.head),
            optional(scored.raw.coarse_image),
            optional(scored.raw.discriminator),
        ])?;
    }
    csv.flush()?;
    Ok(())
}
