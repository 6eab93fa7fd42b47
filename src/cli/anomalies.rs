//! `linesight anomalies eval --skab DIR`: the multivariate anomaly detector on the Skoltech
//! Anomaly Benchmark, by SKAB's protocol and scores (see `linesight::analyse::maintenance::skab`);
//! prints a table per folder and, with `--json`, writes every file's counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use linesight::analyse::maintenance::anomaly::Settings;
use linesight::analyse::maintenance::skab::{self, ChangepointCounts, Confusion, ExperimentScore};

use super::write_json;

#[derive(clap::Subcommand)]
pub enum Anomalies {
    /// Score the detector on SKAB: fitted on the first 400 rows of each experiment, scored on
    /// the rest; F1, FAR and MAR of the anomaly labels summed over files, and the change
    /// points detected within 60 s.
    Eval(EvalArgs),
}

impl Anomalies {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Anomalies::Eval(args) => args.run(),
        }
    }
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The SKAB data folder (valve1/, valve2/, other/, anomaly-free/) or a folder of CSVs.
    #[arg(long)]
    skab: PathBuf,
    /// Score only the files of these folders (comma-separated, e.g. `valve1` to tune).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also report these folders together (comma-separated, e.g. the ones not tuned on).
    #[arg(long, value_delimiter = ',')]
    combine: Vec<String>,
    /// Share of the normal variance the principal components keep.
    #[arg(long)]
    explained_variance: Option<f64>,
    /// Quantile of the fitted rows' T² and Q used as their limits.
    #[arg(long)]
    limit_quantile: Option<f64>,
    /// Samples in the trailing median of the severity.
    #[arg(long)]
    smoothing_window: Option<usize>,
    /// Smoothed severity above which a sample is abnormal.
    #[arg(long)]
    alarm_level: Option<f64>,
    /// Abnormal samples in a row before an anomaly is reported.
    #[arg(long)]
    persistence: Option<usize>,
    /// Where to write the figures and every file's counts as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One line of the table.
#[derive(Debug, Clone, Default, Serialize)]
struct GroupFigures {
    files: usize,
    scored_rows: usize,
    anomaly: Confusion,
    all_anomalous: Confusion,
    changepoints: ChangepointCounts,
}

impl GroupFigures {
    fn add(&mut self, score: &ExperimentScore) {
        self.files += 1;
        self.scored_rows += score.scored_rows;
        self.anomaly = self.anomaly + score.anomaly;
        self.all_anomalous = self.all_anomalous + score.all_anomalous;
        self.changepoints = self.changepoints + score.changepoints;
    }
}

#[derive(Serialize)]
struct Report<'a> {
    settings: Settings,
    train_rows: usize,
    groups: BTreeMap<String, Summary>,
    files: &'a [ExperimentScore],
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    figures: GroupFigures,
    f1: f64,
    far_pct: f64,
    mar_pct: f64,
    all_anomalous_f1: f64,
    changepoint_mean_delay_s: Option<f64>,
}

impl EvalArgs {
    fn settings(&self) -> Settings {
        let defaults = Settings::default();
        Settings {
            explained_variance: self
                .explained_variance
                .unwrap_or(defaults.explained_variance),
            limit_quantile: self.limit_quantile.unwrap_or(defaults.limit_quantile),
            smoothing_window: self.smoothing_window.unwrap_or(defaults.smoothing_window),
            alarm_level: self.alarm_level.unwrap_or(defaults.alarm_level),
            persistence: self.persistence.unwrap_or(defaults.persistence),
        }
    }

    fn run(self) -> anyhow::Result<()> {
        let settings = self.settings();
        let files = skab::find_files(&self.skab)?;
        let mut scores = Vec::new();
        for path in &files {
            let experiment = skab::read_experiment(path)?;
            if !self.only.is_empty() && !self.only.contains(&experiment.group) {
                continue;
            }
            if let Some(score) = skab::score_experiment(&experiment, &settings)? {
                scores.push(score);
            }
        }
        if scores.is_empty() {
            anyhow::bail!(
                "no labelled SKAB file in {}{}",
                self.skab.display(),
                if self.only.is_empty() {
                    String::new()
                } else {
                    format!(" in folders {}", self.only.join(","))
                }
            );
        }

        let mut groups: BTreeMap<String, GroupFigures> = BTreeMap::new();
        let combined_name = self.combine.join("+");
        for score in &scores {
            groups.entry(score.group.clone()).or_default().add(score);
            if self.combine.contains(&score.group) {
                groups.entry(combined_name.clone()).or_default().add(score);
            }
            groups.entry("all".to_string()).or_default().add(score);
        }

        println!(
            "settings: explained variance {}, limit quantile {}, median of {} samples, alarm \
             level {}, persistence {}; fitted on the first {} rows of each file",
            settings.explained_variance,
            settings.limit_quantile,
            settings.smoothing_window,
            settings.alarm_level,
            settings.persistence,
            skab::TRAIN_ROWS
        );
        println!(
            "{:<14} {:>5} {:>6} {:>6} {:>7} {:>7} {:>13} {:>12} {:>7} {:>9}",
            "folder",
            "files",
            "rows",
            "F1",
            "FAR %",
            "MAR %",
            "F1 all-anom.",
            "CPs found",
            "CP FPs",
            "delay s"
        );
        let mut summaries = BTreeMap::new();
        let order = groups
            .keys()
            .filter(|name| *name != "all" && *name != &combined_name)
            .cloned()
            .chain((!self.combine.is_empty()).then(|| combined_name.clone()))
            .chain(std::iter::once("all".to_string()))
            .collect::<Vec<_>>();
        for name in order {
            let Some(figures) = groups.get(&name) else {
                continue;
            };
            let summary = Summary {
                figures: figures.clone(),
                f1: figures.anomaly.f1(),
                far_pct: figures.anomaly.false_alarm_rate_pct(),
                mar_pct: figures.anomaly.missed_alarm_rate_pct(),
                all_anomalous_f1: figures.all_anomalous.f1(),
                changepoint_mean_delay_s: figures.changepoints.mean_delay_s(),
            };
            println!(
                "{:<14} {:>5} {:>6} {:>6.3} {:>7.2} {:>7.2} {:>13.3} {:>12} {:>7} {:>9}",
                name,
                figures.files,
                figures.scored_rows,
                summary.f1,
                summary.far_pct,
                summary.mar_pct,
                summary.all_anomalous_f1,
                format!(
                    "{}/{}",
                    figures.changepoints.detected, figures.changepoints.labelled
                ),
                figures.changepoints.false_positives,
                summary
                    .changepoint_mean_delay_s
                    .map(|d| format!("{d:.1}"))
                    .unwrap_or_else(|| "-".to_string()),
            );
            summaries.insert(name, summary);
        }
        write_json(
            self.json.as_deref(),
            &Report {
                settings,
                train_rows: skab::TRAIN_ROWS,
                groups: summaries,
                files: &scores,
            },
        )
        .context("writing the JSON report")
    }
}
