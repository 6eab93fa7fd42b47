//! `linesight backtest`: replay a recorded period through a candidate model and list the
//! verdicts that would change, before anyone promotes it.
//!
//! On a stopped station it reads the record store itself; a running station holds its store
//! exclusively, so with `--station` the station runs the backtest (at low priority, on at
//! most one core) and this command shows its progress and report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use linesight::config::StationConfig;
use linesight::inspect::backtest::{BacktestReport, DEFAULT_MAX_PARTS, Period, backtest};
use linesight::inspect::registry::{self, Registry, RunningModel};
use linesight::inspect::taxonomy::Taxonomy;
use linesight::learn::progress;
use linesight::models::card::CardHead;
use linesight::record::Store;

use super::write_json;

#[derive(clap::Args)]
pub struct Backtest {
    /// The candidate's version in the model registry.
    #[arg(long)]
    model: String,
    /// Parts decided at or after this time (RFC 3339, e.g. 2026-12-03T06:00:00Z).
    #[arg(long)]
    from: DateTime<Utc>,
    /// …and before this one.
    #[arg(long)]
    to: DateTime<Utc>,
    /// The candidate's threshold; by default the one it would go live with.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// At most this many parts, the oldest of the period.
    #[arg(long, default_value_t = DEFAULT_MAX_PARTS)]
    max_parts: usize,
    /// A stopped station's config: its data folder, model registry and backbone weights.
    #[arg(long, default_value = "config/simulated-line.toml")]
    config: PathBuf,
    /// The data folder itself, instead of the config's.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The model registry folder, instead of the config's.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Ask the running station at this address instead (its store is not open to others);
    /// with `LINESIGHT_STATION` set, unset it to read a stopped station's store here.
    #[arg(long, env = "LINESIGHT_STATION")]
    station: Option<String>,
    /// An engineer's or admin's token, with `--station`; else `LINESIGHT_ADMIN_TOKEN`.
    #[arg(long, env = "LINESIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Backtest {
    pub fn run(self) -> anyhow::Result<()> {
        let report = match &self.station {
            Some(station) => self.on_station(station)?,
            None => self.here()?,
        };
        write_json(self.out.as_deref(), &report)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        Ok(())
    }

    /// Reads a stopped station's store and registry.
    fn here(&self) -> anyhow::Result<BacktestReport> {
        let config = StationConfig::load(&self.config)?;
        let data_dir = self.data_dir.clone().unwrap_or(config.data_dir);
        // The classes the station would judge with: an engineer's saved edit, else the TOML's.
        let taxonomy = Taxonomy::load_saved(&data_dir)?.unwrap_or(config.defect_classes);
        let registry = Registry::new(
            self.registry.clone().unwrap_or(config.model_registry),
            config.backbone_weights.clone(),
            registry::open_device(config.model_device)?,
        )
        .with_precision(config.model_precision);
        let detector = registry
            .load(&self.model)
            .with_context(|| format!("loading candidate {}", self.model))?;
        // The threshold it would go live with: the config's override belongs to the
        // configured model only.
        let threshold = match (self.threshold, config.threshold_override) {
            (Some(threshold), _) => threshold,
            (None, Some(threshold))
                if CardHead::read(&config.model_dir)
                    .is_ok_and(|configured| configured.version == self.model) =>
            {
                threshold
            }
            _ => detector.head().threshold,
        };
        if let Some(problem) = detector.threshold_problem(threshold) {
            anyhow::bail!("threshold: {problem}");
        }
        let candidate = RunningModel::new(detector, threshold);
        let store = Store::open(&data_dir, "").with_context(|| {
            format!(
                "opening the record store in {} (a running station keeps it to itself: \
                 give --station to run the backtest there)",
                data_dir.display()
            )
        })?;
        let period = Period {
            from: self.from,
            to: self.to,
            max_parts: self.max_parts,
        };
        let bar = progress::labelled(!self.json, 0, "parts replayed");
        let report = backtest(&store, &candidate, &taxonomy, &period, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
            std::ops::ControlFlow::Continue(())
        })?;
        bar.finish_and_clear();
        Ok(report)
    }

    /// Starts the backtest on a running station and follows it to its report.
    fn on_station(&self, station: &str) -> anyhow::Result<BacktestReport> {
        let token = self.token.clone().or_else(|| {
            std::env::var("LINESIGHT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let authorised = |request: reqwest::RequestBuilder| match &token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let call = |request: reqwest::RequestBuilder| async {
            let response = authorised(request)
                .send()
                .await
                .with_context(|| format!("reaching the station at {station}"))?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                anyhow::bail!(
                    "the station refused ({status}): {}",
                    body["error"].as_str().unwrap_or("no reason given")
                );
            }
            anyhow::Ok(body)
        };
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        runtime.block_on(async {
            let mut request = serde_json::json!({
                "model": self.model,
                "from": self.from,
                "to": self.to,
                "max_parts": self.max_parts,
            });
            if let Some(threshold) = self.threshold {
                request["threshold"] = threshold.into();
            }
            let job = call(
                client
                    .post(format!("{station}/api/v1/backtests"))
                    .json(&request),
            )
            .await?;
            let id = job["id"]
                .as_u64()
                .context("the station's answer has no backtest id")?;
            let bar = progress::labelled(!self.json, 0, "parts replayed");
            loop {
                let job = call(client.get(format!("{station}/api/v1/backtests/{id}"))).await?;
                bar.set_length(job["total"].as_u64().unwrap_or(0));
                bar.set_position(job["done"].as_u64().unwrap_or(0));
                match job["state"].as_str() {
                    Some("running") => tokio::time::sleep(Duration::from_millis(250)).await,
                    Some("done") => {
                        bar.finish_and_clear();
                        return serde_json::from_value(job["report"].clone())
                            .context("reading the station's backtest report");
                    }
                    Some("cancelled") => {
                        anyhow::bail!("backtest {id} was cancelled on the station")
                    }
                    _ => anyhow::bail!(
                        "backtest {id} failed on the station: {}",
                        job["error"].as_str().unwrap_or("no reason given")
                    ),
                }
            }
        })
    }
}

fn print_report(report: &BacktestReport) {
    println!(
        "candidate {} ({}) at threshold {} over {} .. {}",
        report.model_version, report.model_kind, report.threshold, report.from, report.to
    );
    println!(
        "{} parts decided in the period{}; {} replayed, {} agree, {} would change \
         ({} pass -> fail, {} fail -> pass, {} to or from error)",
        report.parts_in_period,
        match report.replayed_until {
            Some(until) if report.truncated => format!(" (only those up to {until} replayed)"),
            _ => String::new(),
        },
        report.replayed,
        report.agreed,
        report.changes.len(),
        report.changed.pass_to_fail,
        report.changed.fail_to_pass,
        report.changed.involving_error,
    );
    for (reason, count) in &report.not_replayable {
        println!("not replayed: {count} parts: {reason}");
    }
    for (version, count) in &report.recorded_models {
        println!("recorded verdicts by {version}: {count} parts");
    }
    if let Some(speed) = report.faster_than_real_time {
        println!(
            "{:.1} s of production replayed in {:.2} s ({speed:.0}x real time)",
            report.recorded_span_s, report.took_s
        );
    }
    if report.changes.is_empty() {
        return;
    }
    println!(
        "\n{:>8}  {:<24} {:<22} {:<22} {:<8} image",
        "part", "decided", "recorded", "candidate", "camera"
    );
    let judged = |verdict: &str, score: Option<f32>| match score {
        Some(score) => format!("{verdict} {score:.4}"),
        None => verdict.to_owned(),
    };
    for change in &report.changes {
        println!(
            "{:>8}  {:<24} {:<22} {:<22} {:<8} {}",
            change.part_id,
            change.decided_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            judged(change.recorded.verdict.as_str(), change.recorded.score),
            judged(change.candidate.verdict.as_str(), change.candidate.score),
            change.camera.as_deref().unwrap_or("-"),
            change.image.as_deref().unwrap_or("-"),
        );
    }
}
