//! `linesight run`: one station, until its camera ends, `--max-parts`, or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use linesight::config::StationConfig;
use linesight::simulate::SimulatedLine;
use linesight::station::{RunOptions, Station};

/// Prints a line to stdout, ignoring a closed stdout: a station must never stop because
/// whoever started it stopped reading (`println!` panics on a broken pipe).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(clap::Args)]
pub struct Run {
    /// The station's config file.
    #[arg(long, default_value = "config/simulated-line.toml")]
    config: PathBuf,
    /// Address of the web page and API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "LINESIGHT_BIND")]
    bind: SocketAddr,
    /// Stop after this many parts.
    #[arg(long)]
    max_parts: Option<u64>,
    /// Keep records and images here instead of the config's `station.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Look for model versions here instead of the config's `[model] registry`; models
    /// trained from the browser are written here too.
    #[arg(long)]
    model_registry: Option<PathBuf>,
}

impl Run {
    pub fn run(self) -> anyhow::Result<()> {
        let mut config = StationConfig::load(&self.config)?;
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(registry) = self.model_registry {
            config.model_registry = registry;
        }
        config.admin_token = std::env::var("LINESIGHT_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        runtime.block_on(run(config, self.bind, self.max_parts))
    }
}

async fn run(
    config: StationConfig,
    bind: SocketAddr,
    max_parts: Option<u64>,
) -> anyhow::Result<()> {
    // The simulated camera and PLC, when the config asks for them, are started beside the
    // station and wired to it like real ones.
    let simulated = config.simulator.is_some();
    let data_dir = config.data_dir.clone();
    let line = SimulatedLine::start(&config)
        .await
        .context("starting the simulated line")?;
    let station = Station::prepare(config, line.attachments())
        .await
        .context("starting the station")?;
    // The demo line on a new data folder makes its first admin itself, the way Jupyter prints
    // its token: a random secret, shown once in the sign-in link. A real station's first admin
    // is made by `linesight token create --role admin`.
    let demo_admin = if simulated {
        first_demo_admin(&data_dir)?
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the web server to {bind}"))?;
    let address = listener.local_addr()?;
    if let Some(plc) = line.plc() {
        say!("simulated PLC (Modbus TCP) on {}", plc.address());
    }
    match demo_admin {
        Some(token) => say!(
            "Linesight station running: sign in at http://{address}/login?token={token}  (Ctrl-C stops)"
        ),
        None => say!(
            "Linesight station running: open http://{address}/ and sign in with a token \
             (`linesight token create`)  (Ctrl-C stops)"
        ),
    }
    say!(
        "MES view (signed in, or with the token as `Authorization: Bearer`): \
         http://{address}/api/v1/tags, /api/v1/kpis, /api/v1/charts, /api/v1/alarms"
    );

    let shutdown = CancellationToken::new();
    let server_shutdown = CancellationToken::new();
    let server = {
        let router = linesight::serve::router(station.api());
        let stop = server_shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!(
                    "stopping: parts in flight will reach the gate first (Ctrl-C again to abort)"
                );
                shutdown.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::warn!("aborted; the PLC watchdog takes over the gate");
                    std::process::exit(130);
                }
            }
        });
    }
    let report = station.run(RunOptions { max_parts }, shutdown).await;
    server_shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    let report = report.context("station stopped with an error")?;
    say!("station stopped after {} parts", report.parts);
    Ok(())
}

/// An admin token for the demo line when its data folder has none yet.
fn first_demo_admin(data_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let tokens = linesight::serve::Tokens::open(data_dir, None)?;
    if tokens.has_admin()? {
        return Ok(None);
    }
    let made = tokens.create("demo-admin", linesight::serve::Role::Admin, "make run")?;
    Ok(Some(made.token))
}
