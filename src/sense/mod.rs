//! Line sensor data in: the tags the station watches beside its camera (temperatures,
//! vibrations, speeds), where their samples come from, how each sample's quality is judged, and
//! where they are kept.
//!
//! A stage beside [`crate::capture`]: it never touches a part's path to the gate. Sources
//! (Modbus polling, HTTP push, CSV import, MQTT) hand raw samples to one ingest point, which
//! flags their quality and stores them; [`crate::analyse`] reads them back.

pub mod csv;
pub mod modbus;
pub mod mqtt;
pub mod quality;
pub mod store;
pub mod tags;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::quality::{Flag, Level};
pub use self::store::{Incoming, IngestReport, MinuteAggregate, Refusal, SensorStore, Series};
pub use self::tags::{SensorsSection, TagConfig};

/// Why sensor data could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum SenseError {
    #[error("sensor store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("sensor store: {0}")]
    Sled(#[from] sled::Error),
    #[error("sensor store is corrupt: {0}")]
    Corrupt(String),
    #[error("unknown tag {0:?}")]
    UnknownTag(String),
    /// The batch is in the store but its flush to disk failed (a full disk): it counts as
    /// stored, a resend is refused as out of time order, and a crash before a later flush
    /// may lose it.
    #[error("the batch was stored but not flushed to disk: {0}")]
    NotFlushed(sled::Error),
}

/// For each of `times` (ascending), whether the line ran then: the latest of `readings`
/// (time, running; ascending) at or before it says; a time before the first reading counts as
/// running, as nothing says the line stood. Analyses use it to leave out what a stopped line's
/// sensors read (a roller's vibration at rest describes no process state).
pub fn running_at<T: PartialOrd + Copy>(
    times: impl IntoIterator<Item = T>,
    readings: &[(T, bool)],
) -> Vec<bool> {
    let mut next = 0;
    let mut running = true;
    times
        .into_iter()
        .map(|t| {
            while next < readings.len() && readings[next].0 <= t {
                running = readings[next].1;
                next += 1;
            }
            running
        })
        .collect()
}

/// The station's sensor data: the store and what the config says about each tag. Cheap to
/// clone; every source and reader shares one.
#[derive(Debug, Clone)]
pub struct Sensors {
    pub store: SensorStore,
    pub tags: Arc<Vec<TagConfig>>,
    pub settings: Arc<SensorsSection>,
}

impl Sensors {
    /// Opens the sensor store in `data_dir` for these tags.
    pub fn open(
        data_dir: &Path,
        settings: SensorsSection,
        tags: Vec<TagConfig>,
    ) -> Result<Sensors, SenseError> {
        let store = SensorStore::open(data_dir, &tags, settings.max_future_s)?;
        Ok(Sensors {
            store,
            tags: Arc::new(tags),
            settings: Arc::new(settings),
        })
    }

    /// A configured tag.
    pub fn tag(&self, name: &str) -> Option<&TagConfig> {
        self.tags.iter().find(|t| t.name == name)
    }

    /// Stores a batch off the async threads (the write ends with a disk flush).
    pub async fn ingest(&self, batch: Vec<Incoming>) -> Result<IngestReport, SenseError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.ingest(&batch))
            .await
            .map_err(|e| SenseError::Corrupt(format!("ingest task failed: {e}")))?
    }
}

/// One sample of a pushed or imported batch that was not stored: where it was, which field,
/// and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleProblem {
    /// `line 14` (CSV) or `samples[3]` (JSON).
    pub at: String,
    pub field: String,
    pub message: String,
}

/// What became of a pushed or imported batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Samples stored, whatever their flag.
    pub accepted: usize,
    /// Stored samples by flag other than good.
    pub flagged: BTreeMap<Flag, usize>,
    /// Samples not stored.
    pub refused: Vec<SampleProblem>,
}

impl BatchOutcome {
    /// The store's report, its refusals placed by `locate(index in the batch)`, after the
    /// problems found while parsing.
    pub fn new(
        report: IngestReport,
        parse_problems: Vec<SampleProblem>,
        locate: impl Fn(usize) -> String,
    ) -> BatchOutcome {
        let mut refused = parse_problems;
        refused.extend(report.refused.into_iter().map(|r| SampleProblem {
            at: locate(r.index),
            field: r.field,
            message: r.message,
        }));
        BatchOutcome {
            accepted: report.accepted,
            flagged: report.flagged,
            refused,
        }
    }
}

/// Where the station's sources are: the Modbus server its `modbus` tags are polled from, the
/// broker its `mqtt` tags come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub modbus: Option<modbus::PollTarget>,
    pub mqtt: Option<mqtt::SubscribeSettings>,
}

/// How often old samples are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Runs every source and the pruning of old samples until `cancel`.
pub async fn run_sensors(
    sensors: Sensors,
    sources: Sources,
    metrics: crate::metrics::Metrics,
    cancel: tokio_util::sync::CancellationToken,
) {
    let poller = sources.modbus.map(|target| {
        tokio::spawn(modbus::run_poller(
            sensors.clone(),
            target,
            metrics.clone(),
            cancel.clone(),
        ))
    });
    let subscriber = sources.mqtt.map(|settings| {
        tokio::spawn(mqtt::run_subscriber(
            sensors.clone(),
            settings,
            metrics.clone(),
            cancel.clone(),
        ))
    });
    let days = |d: f64| chrono::Duration::milliseconds((d * 86_400_000.0) as i64);
    loop {
        let now = chrono::Utc::now();
        let store = sensors.store.clone();
        let (raw_before, minutes_before) = (
            now - days(sensors.settings.raw_retention_days),
            now - days(sensors.settings.aggregate_retention_days),
        );
        match tokio::task::spawn_blocking(move || store.prune(raw_before, minutes_before)).await {
            Ok(Ok((segments, minutes))) if segments + minutes > 0 => {
                tracing::info!(segments, minutes, "old sensor samples pruned")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot prune old sensor samples"),
            Err(error) => tracing::error!(%error, "sensor pruning task failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
    for task in [poller, subscriber].into_iter().flatten() {
        let _ = task.await;
    }
}
