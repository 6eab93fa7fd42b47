//! `linesight rul`: remaining useful life from NASA C-MAPSS run-to-failure files: hold engines
//! out as an official-format test set, train, evaluate.

use std::path::{Path, PathBuf};

use anyhow::Context;

use linesight::analyse::maintenance::rul::{
    self, HoldoutSettings, RulModel, RulSettings, format_cmapss, format_rul, read_cmapss, read_rul,
    split_holdout,
};

#[derive(clap::Subcommand)]
pub enum Rul {
    /// Hold engines out of a training file and cut each at random cycles, as the official test
    /// set is; writes train_FD001.txt, test_FD001.txt and RUL_FD001.txt into `--out`.
    Split {
        /// The run-to-failure file (C-MAPSS train layout).
        #[arg(long)]
        cmapss: PathBuf,
        /// Engines held out.
        #[arg(long, default_value_t = 20)]
        holdout: usize,
        /// Test units cut from each held-out engine, each at its own random cycle.
        #[arg(long, default_value_t = 1)]
        cuts_per_engine: usize,
        /// Fewest cycles a test unit keeps (31 in the official FD001 test set).
        #[arg(long, default_value_t = 31)]
        min_history: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Folder for the three files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train a model on a run-to-failure file (a fifth of its engines kept for validation and
    /// the interval).
    Train {
        /// The run-to-failure file (C-MAPSS train layout).
        #[arg(long)]
        cmapss: PathBuf,
        /// Folder for the weights and card.json.
        #[arg(long)]
        out: PathBuf,
        /// The piecewise-linear target's ceiling, in cycles.
        #[arg(long, default_value_t = RulSettings::default().cap)]
        cap: f32,
        /// Cycles the model sees at once.
        #[arg(long, default_value_t = RulSettings::default().window)]
        window: usize,
        #[arg(long, default_value_t = RulSettings::default().epochs)]
        epochs: usize,
        /// Windows per optimiser step.
        #[arg(long, default_value_t = RulSettings::default().batch_size)]
        batch_size: usize,
        #[arg(long, default_value_t = RulSettings::default().learning_rate)]
        learning_rate: f64,
        /// Filters of each convolution.
        #[arg(long, default_value_t = RulSettings::default().filters)]
        filters: usize,
        /// The interval's intended coverage.
        #[arg(long, default_value_t = RulSettings::default().coverage)]
        coverage: f64,
        #[arg(long, default_value_t = RulSettings::default().seed)]
        seed: u64,
    },
    /// Evaluate a model on a test file and its RUL file: RMSE (RUL capped at the model's cap),
    /// MAE, the PHM08 score and the interval's coverage.
    Eval {
        /// The model folder written by `rul train`.
        #[arg(long)]
        model: PathBuf,
        /// The test file (C-MAPSS test layout: engines cut before failure).
        #[arg(long)]
        cmapss: PathBuf,
        /// The true RUL of each test unit, one a line.
        #[arg(long)]
        rul: PathBuf,
        /// Also write the figures and every estimate as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

impl Rul {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Rul::Split {
                cmapss,
                holdout,
                cuts_per_engine,
                min_history,
                seed,
                out,
            } => {
                let engines = read(&cmapss)?;
                let split = split_holdout(
                    &engines,
                    &HoldoutSettings {
                        n_holdout: holdout,
                        cuts_per_engine,
                        min_history,
                        seed,
                    },
                )?;
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                write(&out.join("train_FD001.txt"), &format_cmapss(&split.train))?;
                write(&out.join("test_FD001.txt"), &format_cmapss(&split.test))?;
                write(&out.join("RUL_FD001.txt"), &format_rul(&split.rul))?;
                let held: std::collections::BTreeSet<u32> =
                    split.source_units.iter().copied().collect();
                println!(
                    "{} engines to train on, {} test units from held-out engines {:?}, into {}",
                    split.train.len(),
                    split.test.len(),
                    held,
                    out.display()
                );
                Ok(())
            }
            Rul::Train {
                cmapss,
                out,
                cap,
                window,
                epochs,
                batch_size,
                learning_rate,
                filters,
                coverage,
                seed,
            } => {
                let engines = read(&cmapss)?;
                let settings = RulSettings {
                    cap,
                    window,
                    epochs,
                    batch_size,
                    learning_rate,
                    filters,
                    coverage,
                    seed,
                    ..RulSettings::default()
                };
                let model = rul::train(&engines, &settings, true)
                    .with_context(|| format!("training on {}", cmapss.display()))?;
                model.save(&out)?;
                let card = model.card();
                println!("model {} in {}", card.version, out.display());
                println!("features: {}", card.features.join(", "));
                println!(
                    "fitted on {} engines: RMSE {:.2}; validation on {} engines (every cycle): \
                     RMSE {:.2}, MAE {:.2}, PHM08 {:.0}",
                    card.fit_units.len(),
                    card.training.rmse,
                    card.validation_units.len(),
                    card.validation.rmse,
                    card.validation.mae,
                    card.validation.phm08_score
                );
                Ok(())
            }
            Rul::Eval {
                model,
                cmapss,
                rul,
                json,
            } => {
                let model = RulModel::load(&model)
                    .with_context(|| format!("loading the model in {}", model.display()))?;
                let engines = read(&cmapss)?;
                let truth = read_rul(&rul).with_context(|| format!("reading {}", rul.display()))?;
                let figures = model
                    .evaluate(&engines, &truth)
                    .with_context(|| format!("{} against {}", cmapss.display(), rul.display()))?;
                let card = model.card();
                println!(
                    "{} test units, RUL capped at {}: RMSE {:.2}, MAE {:.2}, PHM08 score {:.1}, \
                     {:.0} % interval coverage {:.3}",
                    figures.n,
                    card.settings.cap,
                    figures.rmse,
                    figures.mae,
                    figures.phm08_score,
                    card.settings.coverage * 100.0,
                    figures.coverage
                );
                if let Some(path) = json {
                    let histories: Vec<&[rul::Cycle]> =
                        engines.iter().map(|e| e.cycles.as_slice()).collect();
                    let estimates = model.predict_many(&histories)?;
                    let units: Vec<serde_json::Value> = engines
                        .iter()
                        .zip(&estimates)
                        .zip(&truth)
                        .map(|((engine, estimate), true_rul)| {
                            serde_json::json!({
                                "unit": engine.unit,
                                "cycles_seen": engine.cycles.len(),
                                "true_rul": true_rul,
                                "estimate": estimate,
                            })
                        })
                        .collect();
                    let report = serde_json::json!({
                        "model": card.version,
                        "cap": card.settings.cap,
                        "figures": figures,
                        "units": units,
                    });
                    super::write_json(Some(&path), &report)?;
                }
                Ok(())
            }
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<rul::Engine>> {
    read_cmapss(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
