//! Records: every inspected part's quality record, durable in sled before anyone sees it.
//!
//! [`Store`] keeps one JSON [`InspectionRecord`] per part in the `inspections` tree, keyed by
//! the big-endian part id so iteration runs in part order. Images (the calibrated frame and the
//! heat map, as PNG) live on disk content-addressed by SHA-256: `images/ab/abcd….png`, written
//! to a temporary file, synced and renamed, so a reference in a record always points at a whole
//! file. A record is inserted and flushed under the store's write lock; readers take the read
//! lock, so the API never shows a record that a crash could still take back.
//!
//! [`run_recorder`] is the stage task: it turns each [`PartOutcome`] into a record and retries a
//! failed write (full disk, I/O error) until it succeeds, counting every failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{RwLock, mpsc};

use crate::metrics::Metrics;
use crate::part::{Actuation, Disposition, GrayImage, HeatMap, PartOutcome, StationClock, Verdict};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("record store: {0}")]
    Sled(#[from] sled::Error),
    #[error("image store {path}: {source}")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PNG encoding: {0}")]
    Png(#[from] image::ImageError),
    #[error("record {part_id} is corrupt: {source}")]
    Corrupt {
        part_id: u64,
        source: serde_json::Error,
    },
}

/// Whether the gate fired for a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActuationStatus {
    NotRequired,
    Done,
    Failed,
}

/// One part's quality record, as stored and as served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionRecord {
    pub part_id: u64,
    pub station: String,
    pub captured_at: DateTime<Utc>,
    pub inspected_at: Option<DateTime<Utc>>,
    /// When the part's disposition was settled (its gate fire time).
    pub decided_at: DateTime<Utc>,
    /// When the part reached the gate.
    pub gate_at: DateTime<Utc>,
    /// When the PLC acknowledged the reject command.
    pub actuated_at: Option<DateTime<Utc>>,
    /// The model's verdict; absent when the frame was dropped or never inspected.
    pub verdict: Option<Verdict>,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    pub disposition: Disposition,
    /// Rejected because no verdict arrived by the deadline.
    pub rejected_by_policy: bool,
    pub inspection_late: bool,
    pub actuation: ActuationStatus,
    pub actuation_error: Option<String>,
    pub model_version: Option<String>,
    /// SHA-256 of the calibrated image's PNG.
    pub image: Option<String>,
    /// SHA-256 of the heat map's PNG.
    pub heat_map: Option<String>,
    pub error: Option<String>,
}

/// A change of the model the station runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEvent {
    pub at: DateTime<Utc>,
    pub action: ModelAction,
    /// The version made live or put in shadow; `None` when the shadow is stopped.
    pub version: Option<String>,
    /// The version it replaced, if any.
    pub previous: Option<String>,
}

/// What a [`ModelEvent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAction {
    Promote,
    Rollback,
    ShadowStart,
    ShadowStop,
}

/// A shadow model's verdict on one part, beside the live verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowVerdict {
    pub part_id: u64,
    pub version: String,
    pub verdict: Verdict,
    pub score: Option<f32>,
    pub live_version: String,
    pub live_verdict: Verdict,
    pub live_score: Option<f32>,
}

/// Agreement of a shadow model with the live model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowSummary {
    pub version: String,
    pub compared: u64,
    pub agreed: u64,
    /// The live model failed the part, the shadow would have passed it (a would-be escape).
    pub live_fail_shadow_pass: u64,
    /// The shadow would have rejected a part the live model passed.
    pub live_pass_shadow_fail: u64,
    pub shadow_errors: u64,
    pub other_disagreements: u64,
}

/// The station's durable record store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    inspections: sled::Tree,
    /// Station bookkeeping: the part-id reservation.
    meta: sled::Tree,
    /// Every change of the live or shadow model, in order.
    model_events: sled::Tree,
    /// The shadow model's verdicts, keyed by part id.
    shadow: sled::Tree,
    images_dir: PathBuf,
    /// Part ids below this are reserved (durably) for parts already given an id.
    reserved_until: Arc<AtomicU64>,
    /// Held for writing while a record is inserted and flushed; readers hold it for reading.
    visibility: Arc<RwLock<()>>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, RecordError> {
        let db_path = data_dir.join("records");
        let db = sled::open(&db_path).map_err(|source| RecordError::Open {
            path: db_path.clone(),
            source,
        })?;
        let inspections = db.open_tree("inspections")?;
        let meta = db.open_tree("meta")?;
        let model_events = db.open_tree("model_events")?;
        let shadow = db.open_tree("shadow")?;
        let images_dir = data_dir.join("images");
        std::fs::create_dir_all(&images_dir).map_err(|source| RecordError::Image {
            path: images_dir.clone(),
            source,
        })?;
        let reserved_until = match meta.get(RESERVED_KEY)? {
            Some(bytes) => be_u64(&bytes),
            None => 0,
        };
        Ok(Store {
            db,
            inspections,
            meta,
            model_events,
            shadow,
            images_dir,
            reserved_until: Arc::new(AtomicU64::new(reserved_until)),
            visibility: Arc::new(RwLock::new(())),
        })
    }

    /// The first part id of a new run, past every id an earlier run could have handed out,
    /// recorded or not (after a kill -9, parts in flight had ids the PLC already saw). Reserves
    /// a block of ids durably before returning.
    pub fn start_run(&self) -> Result<u64, RecordError> {
        let reserved = self.reserved_until.load(Ordering::SeqCst);
        let first = self.next_part_id()?.max(reserved);
        self.reserve_until(first + RESERVE_BLOCK)?;
        Ok(first)
    }

    fn reserve_until(&self, until: u64) -> Result<(), RecordError> {
        self.meta.insert(RESERVED_KEY, &until.to_be_bytes())?;
        self.db.flush()?;
        self.reserved_until.store(until, Ordering::SeqCst);
        Ok(())
    }

    /// The id to give the next part: one past the highest recorded.
    pub fn next_part_id(&self) -> Result<u64, RecordError> {
        Ok(match self.inspections.last()? {
            Some((key, _)) => be_u64(&key) + 1,
            None => 0,
        })
    }

    /// Stores a record and makes it durable before it becomes visible.
    pub async fn append(&self, record: &InspectionRecord) -> Result<(), RecordError> {
        // Serialising our own struct cannot fail.
        let value = serde_json::to_vec(record).unwrap_or_default();
        let visible = self.visibility.write().await;
        let key = record.part_id.to_be_bytes();
        self.inspections.insert(key, value)?;
        // When recorded ids come near the end of the reservation, extend it in the same flush.
        let extended = (record.part_id + RESERVE_BLOCK / 2
            >= self.reserved_until.load(Ordering::SeqCst))
        .then_some(record.part_id + RESERVE_BLOCK);
        if let Some(until) = extended {
            self.meta.insert(RESERVED_KEY, &until.to_be_bytes())?;
        }
        if let Err(error) = self.db.flush_async().await {
            // Not durable, so not acknowledged: take it back before readers can see it.
            let _ = self.inspections.remove(key);
            return Err(error.into());
        }
        drop(visible);
        if let Some(until) = extended {
            self.reserved_until.store(until, Ordering::SeqCst);
        }
        Ok(())
    }

    /// One part's record.
    pub async fn get(&self, part_id: u64) -> Result<Option<InspectionRecord>, RecordError> {
        let _visible = self.visibility.read().await;
        self.inspections
            .get(part_id.to_be_bytes())?
            .map(|value| decode(part_id, &value))
            .transpose()
    }

    /// Up to `limit` records, newest first, with part ids below `before` when given.
    pub async fn list(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InspectionRecord>, RecordError> {
        let _visible = self.visibility.read().await;
        let range = match before {
            Some(before) => self.inspections.range(..before.to_be_bytes()),
            None => self.inspections.iter(),
        };
        range
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode(be_u64(&key), &value)
            })
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.inspections.len()
    }

    /// Whether there is no record yet.
    pub fn is_empty(&self) -> bool {
        self.inspections.is_empty()
    }

    /// Appends a model change and makes it durable before returning: a promotion is
    /// acknowledged only once it is on disk.
    pub async fn record_model_event(&self, event: &ModelEvent) -> Result<(), RecordError> {
        let value = serde_json::to_vec(event).unwrap_or_default();
        let key = self.db.generate_id()?.to_be_bytes();
        self.model_events.insert(key, value)?;
        if let Err(error) = self.db.flush_async().await {
            let _ = self.model_events.remove(key);
            return Err(error.into());
        }
        Ok(())
    }

    /// Every model change, oldest first.
    pub fn model_events(&self) -> Result<Vec<ModelEvent>, RecordError> {
        self.model_events
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                serde_json::from_slice(&value).map_err(|source| RecordError::Corrupt {
                    part_id: be_u64(&key),
                    source,
                })
            })
            .collect()
    }

    /// Keeps a shadow verdict. Not flushed here: shadow verdicts are acknowledged to no one,
    /// and sled's own periodic flush keeps them.
    pub fn put_shadow(&self, verdict: &ShadowVerdict) -> Result<(), RecordError> {
        let value = serde_json::to_vec(verdict).unwrap_or_default();
        self.shadow.insert(verdict.part_id.to_be_bytes(), value)?;
        Ok(())
    }

    /// The shadow verdict of a part, if the shadow model saw it.
    pub fn shadow_verdict(&self, part_id: u64) -> Result<Option<ShadowVerdict>, RecordError> {
        self.shadow
            .get(part_id.to_be_bytes())?
            .map(|value| {
                serde_json::from_slice(&value)
                    .map_err(|source| RecordError::Corrupt { part_id, source })
            })
            .transpose()
    }

    /// How the shadow model `version` compared with the live model, over every part it saw.
    pub fn shadow_summary(&self, version: &str) -> Result<ShadowSummary, RecordError> {
        let mut summary = ShadowSummary {
            version: version.to_owned(),
            ..ShadowSummary::default()
        };
        for entry in self.shadow.iter() {
            let (key, value) = entry?;
            let verdict: ShadowVerdict =
                serde_json::from_slice(&value).map_err(|source| RecordError::Corrupt {
                    part_id: be_u64(&key),
                    source,
                })?;
            if verdict.version != version {
                continue;
            }
            summary.compared += 1;
            match (verdict.live_verdict, verdict.verdict) {
                (live, shadow) if live == shadow => summary.agreed += 1,
                (_, Verdict::Error) => summary.shadow_errors += 1,
                (Verdict::Fail, Verdict::Pass) => summary.live_fail_shadow_pass += 1,
                (Verdict::Pass, Verdict::Fail) => summary.live_pass_shadow_fail += 1,
                _ => summary.other_disagreements += 1,
            }
        }
        Ok(summary)
    }

    /// Stores PNG bytes under their SHA-256 and returns the hex digest. Idempotent.
    pub fn put_image(&self, png: &[u8]) -> Result<String, RecordError> {
        let digest = hex::encode(Sha256::digest(png));
        let path = self.image_path_unchecked(&digest);
        if path.exists() {
            return Ok(digest);
        }
        let io = |source| RecordError::Image {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.images_dir);
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(png).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The rename is durable only once the folder is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(digest)
    }

    /// The file of an image digest, if the digest is well-formed and the file exists.
    pub fn image_path(&self, digest: &str) -> Option<PathBuf> {
        let well_formed = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return None;
        }
        let path = self.image_path_unchecked(digest);
        path.is_file().then_some(path)
    }

    /// Only for digests we computed or checked: 64 lowercase hex digits.
    fn image_path_unchecked(&self, digest: &str) -> PathBuf {
        self.images_dir
            .join(&digest[..2])
            .join(format!("{digest}.png"))
    }
}

/// Meta key of the part-id reservation.
const RESERVED_KEY: &[u8] = b"part_ids_reserved_until";

/// Ids reserved at a time: far more than can be in flight between two records.
const RESERVE_BLOCK: u64 = 100_000;

/// A big-endian u64 (part ids are stored big-endian so keys sort in part order).
fn be_u64(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(bytes)
}

fn decode(part_id: u64, value: &[u8]) -> Result<InspectionRecord, RecordError> {
    serde_json::from_slice(value).map_err(|source| RecordError::Corrupt { part_id, source })
}

/// Encodes a grey image as PNG.
pub fn gray_png(image: &GrayImage) -> Result<Vec<u8>, RecordError> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(
        &image.pixels,
        image.width,
        image.height,
        image::ExtendedColorType::L8,
    )?;
    Ok(png)
}

/// Encodes a heat map as a grey PNG, probability 1 as white.
pub fn heat_map_png(heat_map: &HeatMap) -> Result<Vec<u8>, RecordError> {
    let pixels = heat_map
        .values
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    gray_png(&GrayImage {
        width: heat_map.width,
        height: heat_map.height,
        pixels,
    })
}

/// Everything the recorder needs.
pub struct RecordContext {
    pub store: Store,
    pub station: String,
    pub outcomes: mpsc::Receiver<PartOutcome>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
}

/// Records every outcome until the channel closes.
pub async fn run_recorder(mut ctx: RecordContext) {
    while let Some(outcome) = ctx.outcomes.recv().await {
        let mut backoff = Duration::from_millis(50);
        loop {
            match record_outcome(&ctx, &outcome).await {
                Ok(()) => {
                    ctx.metrics.records_written.inc();
                    ctx.metrics.count_disposition(outcome.disposition);
                    break;
                }
                Err(error) => {
                    ctx.metrics.record_errors.inc();
                    tracing::error!(part_id = %outcome.part_id, %error, retry_in = ?backoff, "cannot record part; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

async fn record_outcome(ctx: &RecordContext, outcome: &PartOutcome) -> Result<(), RecordError> {
    let (image, heat_map) = {
        let store = ctx.store.clone();
        let inspection = outcome.inspection.clone();
        // PNG encoding and file syncs are blocking work.
        tokio::task::spawn_blocking(move || -> Result<_, RecordError> {
            let image = inspection
                .as_ref()
                .and_then(|i| i.image.as_ref())
                .map(|image| store.put_image(&gray_png(image)?))
                .transpose()?;
            let heat_map = inspection
                .as_ref()
                .and_then(|i| i.heat_map.as_ref())
                .map(|map| store.put_image(&heat_map_png(map)?))
                .transpose()?;
            Ok((image, heat_map))
        })
        .await
        .map_err(|join| RecordError::Image {
            path: PathBuf::from("images"),
            source: std::io::Error::other(join.to_string()),
        })??
    };
    let record = build_record(&ctx.station, &ctx.clock, outcome, image, heat_map);
    ctx.store.append(&record).await
}

/// The record of an outcome, given the digests of its stored images.
pub fn build_record(
    station: &str,
    clock: &StationClock,
    outcome: &PartOutcome,
    image: Option<String>,
    heat_map: Option<String>,
) -> InspectionRecord {
    let inspection = outcome.inspection.as_ref();
    let (actuation, actuated_at, actuation_error) = match &outcome.actuation {
        Actuation::NotRequired => (ActuationStatus::NotRequired, None, None),
        Actuation::Done { at } => (ActuationStatus::Done, Some(clock.utc(*at)), None),
        Actuation::Failed { error, .. } => (ActuationStatus::Failed, None, Some(error.clone())),
    };
    InspectionRecord {
        part_id: outcome.part_id.0,
        station: station.to_owned(),
        captured_at: clock.utc(outcome.captured_at),
        inspected_at: inspection.map(|i| clock.utc(i.inspected_at)),
        decided_at: clock.utc(outcome.decided_at),
        gate_at: clock.utc(outcome.gate_at),
        actuated_at,
        verdict: inspection.map(|i| i.verdict),
        score: inspection.and_then(|i| i.score),
        threshold: inspection.map(|i| i.threshold),
        disposition: outcome.disposition,
        rejected_by_policy: outcome.disposition == Disposition::RejectNoVerdict,
        inspection_late: outcome.inspection_late,
        actuation,
        actuation_error,
        model_version: inspection.map(|i| i.model_version.to_string()),
        image,
        heat_map,
        error: inspection.and_then(|i| i.error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::{PartId, StationTime};

    fn record(part_id: u64) -> InspectionRecord {
        let clock = StationClock::start();
        let outcome = PartOutcome {
            part_id: PartId(part_id),
            captured_at: StationTime::default(),
            gate_at: StationTime(Duration::from_millis(1000)),
            decided_at: StationTime(Duration::from_millis(990)),
            disposition: Disposition::RejectNoVerdict,
            inspection: None,
            inspection_late: false,
            actuation: Actuation::Done {
                at: StationTime(Duration::from_millis(991)),
            },
        };
        build_record("test", &clock, &outcome, None, None)
    }

    #[tokio::test]
    async fn records_survive_reopen_and_list_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            assert_eq!(store.next_part_id().expect("id"), 0);
            for id in [3, 1, 2, 300] {
                store.append(&record(id)).await.expect("append");
            }
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.next_part_id().expect("id"), 301);
        // Runs start past every reserved id, recorded or not: recording part 3 reserved ids up
        // to 3 + RESERVE_BLOCK (300 was not yet near the end), and each run reserves a block.
        assert_eq!(store.start_run().expect("run"), 3 + RESERVE_BLOCK);
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.start_run().expect("run"), 3 + 2 * RESERVE_BLOCK);
        let ids: Vec<u64> = store
            .list(None, 10)
            .await
            .expect("list")
            .iter()
            .map(|r| r.part_id)
            .collect();
        assert_eq!(ids, [300, 3, 2, 1]);
        let ids: Vec<u64> = store
            .list(Some(3), 1)
            .await
            .expect("list")
            .iter()
            .map(|r| r.part_id)
            .collect();
        assert_eq!(ids, [2]);
        let got = store.get(1).await.expect("get").expect("present");
        assert!(got.rejected_by_policy);
        assert_eq!(got.actuation, ActuationStatus::Done);
    }

    #[test]
    fn images_are_content_addressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let png =
            gray_png(&GrayImage::new(2, 2, vec![0, 64, 128, 255]).expect("size")).expect("png");
        let digest = store.put_image(&png).expect("put");
        assert_eq!(store.put_image(&png).expect("again"), digest);
        let path = store.image_path(&digest).expect("exists");
        assert_eq!(std::fs::read(path).expect("read"), png);
        assert_eq!(store.image_path("../../etc/passwd"), None);
        assert_eq!(store.image_path(&"0".repeat(64)), None);
        // Found by schemathesis: a multi-byte first character must not panic.
        assert_eq!(store.image_path("é"), None);
    }
}
