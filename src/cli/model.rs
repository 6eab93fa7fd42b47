//! `linesight model`: the versions in a registry folder, and a running station's models
//! (status, promote, roll back, shadow) through its HTTP API.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;

use linesight::inspect::registry::Registry;

#[derive(clap::Subcommand)]
pub enum Model {
    /// List the versions in a registry folder.
    List {
        #[arg(long, default_value = "models")]
        registry: PathBuf,
    },
    /// Show what a running station uses, and every recorded change.
    Status {
        #[command(flatten)]
        station: StationArgs,
    },
    /// Make a version live on a running station.
    Promote {
        version: String,
        #[command(flatten)]
        station: StationArgs,
    },
    /// Return a running station to the version live before the last promotion.
    Rollback {
        #[command(flatten)]
        station: StationArgs,
    },
    /// Run a version in shadow on a running station (verdicts recorded, never actuated), or
    /// stop the shadow when no version is given.
    Shadow {
        version: Option<String>,
        #[command(flatten)]
        station: StationArgs,
    },
}

/// How to reach a running station's API.
#[derive(clap::Args)]
pub struct StationArgs {
    /// The station's web address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "LINESIGHT_STATION"
    )]
    pub station: String,
    /// An engineer's or admin's token (`linesight token create`); without it,
    /// `LINESIGHT_ADMIN_TOKEN` is used if set.
    #[arg(long, env = "LINESIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Model {
    /// Lists a registry here, or asks a running station over its API.
    pub fn run(self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let (request, station) = match &self {
            Model::List { registry } => return list(registry),
            Model::Status { station } => (
                client.get(format!("{}/api/v1/models", station.station)),
                station,
            ),
            Model::Promote { version, station } => (
                client
                    .post(format!("{}/api/v1/models/promote", station.station))
                    .json(&serde_json::json!({ "version": version })),
                station,
            ),
            Model::Rollback { station } => (
                client.post(format!("{}/api/v1/models/rollback", station.station)),
                station,
            ),
            Model::Shadow { version, station } => (
                client
                    .put(format!("{}/api/v1/models/shadow", station.station))
                    .json(&serde_json::json!({ "version": version })),
                station,
            ),
        };
        let token = station.token.clone().or_else(|| {
            std::env::var("LINESIGHT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        let request = match &token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let (status, body) = runtime.block_on(async {
            let response = request
                .send()
                .await
                .with_context(|| format!("reaching the station at {}", station.station))?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::Ok((status, body))
        })?;
        if !status.is_success() {
            anyhow::bail!(
                "the station refused ({status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        println!("{}", serde_json::to_string_pretty(&body)?);
        Ok(())
    }
}

/// Prints the versions in the registry folder `root`.
fn list(root: &Path) -> anyhow::Result<()> {
    let registry = Registry::new(root.to_owned(), None, Device::Cpu);
    println!("{:<40} {:<12} {:>9}", "version", "kind", "threshold");
    for entry in registry.list()? {
        println!(
            "{:<40} {:<12} {:>9.4}",
            entry.version, entry.kind, entry.threshold
        );
    }
    Ok(())
}
