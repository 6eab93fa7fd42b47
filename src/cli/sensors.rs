//! `linesight sensors import`: sensor history from a CSV file, into a stopped station's store
//! or, with `--station`, pushed to a running one over its API.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use linesight::config::StationConfig;
use linesight::sense::{BatchOutcome, Sensors};

use super::model::StationArgs;

/// Lines sent in one request to a running station (well under its 8 MiB body limit).
const LINES_PER_REQUEST: usize = 20_000;
/// Samples written in one batch to a stopped station's store.
const SAMPLES_PER_BATCH: usize = 50_000;
/// Refusals printed; the rest are counted.
const SHOWN_PROBLEMS: usize = 20;

#[derive(clap::Subcommand)]
pub enum SensorsCommand {
    /// Import samples from CSV (`timestamp,tag,value` or `timestamp,<tag>,<tag>,…`). Lines
    /// that cannot be stored are named and skipped; the rest are kept. Exits 1 when any line
    /// was refused.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The station's config (its tags and data folder); used when the station is stopped.
        #[arg(long, default_value = "config/simulated-line.toml")]
        config: PathBuf,
        /// Push to the running station at `--station` instead, with `--token` /
        /// `LINESIGHT_TOKEN` (engineer, mes-client or admin).
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        station: StationArgs,
    },
}

impl SensorsCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            SensorsCommand::Import {
                file,
                config,
                push,
                station,
            } => {
                let text =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let outcome = if push {
                    push_to_station(&text, &station)?
                } else {
                    import_into_store(&text, &config)?
                };
                report(&outcome);
                if !outcome.refused.is_empty() {
                    anyhow::bail!("{} samples refused", outcome.refused.len());
                }
                Ok(())
            }
        }
    }
}

fn bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})") {
        bar.set_style(style);
    }
    bar
}

fn import_into_store(text: &[u8], config: &std::path::Path) -> anyhow::Result<BatchOutcome> {
    let config = StationConfig::load(config)?;
    let sensors = Sensors::open(
        &config.data_dir,
        config.sensors.clone(),
        config.tags.clone(),
    )
    .with_context(|| {
        format!(
            "opening the sensor store in {} (is the station running? then add --push)",
            config.data_dir.display()
        )
    })?;
    let parsed = linesight::sense::csv::parse(text).map_err(anyhow::Error::msg)?;
    let mut total = BatchOutcome {
        refused: parsed.problems,
        ..BatchOutcome::default()
    };
    let progress = bar(parsed.samples.len());
    progress.set_message("samples");
    for (samples, lines) in parsed
        .samples
        .chunks(SAMPLES_PER_BATCH)
        .zip(parsed.lines.chunks(SAMPLES_PER_BATCH))
    {
        let report = sensors.store.ingest(samples)?;
        let outcome = BatchOutcome::new(report, Vec::new(), |i| format!("line {}", lines[i]));
        merge(&mut total, outcome);
        progress.inc(samples.len() as u64);
    }
    progress.finish_and_clear();
    total.refused.sort_by_key(|p| line_number(&p.at));
    Ok(total)
}

fn push_to_station(text: &[u8], station: &StationArgs) -> anyhow::Result<BatchOutcome> {
    let text = std::str::from_utf8(text).context("the CSV file is not UTF-8")?;
    let mut lines = text.lines();
    let header = lines.next().context("the CSV file is empty")?;
    let body_lines: Vec<&str> = lines.collect();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut total = BatchOutcome::default();
    let progress = bar(body_lines.len());
    progress.set_message("lines");
    for (chunk_index, chunk) in body_lines.chunks(LINES_PER_REQUEST).enumerate() {
        let offset = chunk_index * LINES_PER_REQUEST;
        let mut body =
            String::with_capacity(header.len() + chunk.iter().map(|l| l.len() + 1).sum::<usize>());
        body.push_str(header);
        body.push('\n');
        for line in chunk {
            body.push_str(line);
            body.push('\n');
        }
        let mut request = client
            .post(format!("{}/api/v1/samples", station.station))
            .header("content-type", "text/csv")
            .body(body);
        if let Some(token) = &station.token {
            request = request.bearer_auth(token);
        }
        let (status, json) = runtime.block_on(async {
            let response = request
                .send()
                .await
                .with_context(|| format!("reaching the station at {}", station.station))?;
            let status = response.status();
            let json: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::Ok((status, json))
        })?;
        if !status.is_success() {
            anyhow::bail!(
                "the station refused lines {}..{} ({status}): {}",
                offset + 2,
                offset + chunk.len() + 1,
                json["error"].as_str().unwrap_or("no reason given")
            );
        }
        let mut outcome: BatchOutcome =
            serde_json::from_value(json).context("the station's answer is not a batch outcome")?;
        // The station numbered lines within this request; number them in the file.
        for problem in &mut outcome.refused {
            if let Some(n) = line_number(&problem.at) {
                problem.at = format!("line {}", n + offset);
            }
        }
        merge(&mut total, outcome);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(total)
}

fn line_number(at: &str) -> Option<usize> {
    at.strip_prefix("line ")?.parse().ok()
}

fn merge(total: &mut BatchOutcome, outcome: BatchOutcome) {
    total.accepted += outcome.accepted;
    for (flag, n) in outcome.flagged {
        *total.flagged.entry(flag).or_default() += n;
    }
    total.refused.extend(outcome.refused);
}

fn report(outcome: &BatchOutcome) {
    println!("{} samples stored", outcome.accepted);
    for (flag, n) in &outcome.flagged {
        println!("  {n} flagged {}", flag.as_str());
    }
    for problem in outcome.refused.iter().take(SHOWN_PROBLEMS) {
        println!(
            "refused {} ({}): {}",
            problem.at, problem.field, problem.message
        );
    }
    if outcome.refused.len() > SHOWN_PROBLEMS {
        println!(
            "… and {} more refused",
            outcome.refused.len() - SHOWN_PROBLEMS
        );
    }
}
