//! Schema versions of the record store, and the migrations between them.
//!
//! The version lives in the `meta` tree. A store without one is either new (stamped with the
//! current version) or of version 1, the layout before the journal: `inspections` held each
//! part's record as JSON keyed by part id, `model_events` the model changes. A store of a newer
//! version than this build knows is refused: writing to it could lose what the newer version
//! keeps.
//!
//! A migration writes the new trees beside the old ones and stamps the version last, in one
//! flush; a crash half-way leaves the old trees intact and the migration runs again.

use std::path::Path;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Deserialize;

use super::RecordError;
use super::inspection::{ActuationStatus, InspectionRecord};
use super::journal::{ModelEvent, Record, RecordBody, encode};
use super::store::Trees;
use crate::part::{Disposition, Verdict};

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 2;

const VERSION_KEY: &[u8] = b"schema_version";
const INSTANCE_KEY: &[u8] = b"instance_id";

/// An opened store's trees and identity.
pub(crate) struct Opened {
    pub trees: Trees,
    pub instance_id: String,
}

/// Opens the trees of the current schema, migrating or stamping as needed.
pub(crate) fn open(db: &sled::Db, path: &Path) -> Result<Opened, RecordError> {
    let meta = db.open_tree("meta")?;
    let version = match meta.get(VERSION_KEY)? {
        Some(bytes) if bytes.len() == 4 => {
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        }
        Some(_) => {
            return Err(RecordError::Schema {
                path: path.to_owned(),
                message: "the schema version is unreadable".into(),
            });
        }
        None if db.tree_names().iter().any(|n| &**n == b"inspections") => 1,
        None => SCHEMA_VERSION,
    };
    if version > SCHEMA_VERSION {
        return Err(RecordError::Schema {
            path: path.to_owned(),
            message: format!(
                "written by a newer Linesight (schema {version}; this build knows up to \
                 {SCHEMA_VERSION}); run that version, or restore a backup made for this one"
            ),
        });
    }
    let trees = Trees::open(db)?;
    if version == 1 {
        migrate_1_to_2(db, &trees)?;
        tracing::info!(path = %path.display(), "record store migrated from schema 1 to 2");
    }
    let instance_id = match meta.get(INSTANCE_KEY)? {
        Some(id) => String::from_utf8_lossy(&id).into_owned(),
        None => {
            let id = new_instance_id();
            meta.insert(INSTANCE_KEY, id.as_bytes())?;
            id
        }
    };
    if version != SCHEMA_VERSION || meta.get(VERSION_KEY)?.is_none() {
        meta.insert(VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?;
    }
    db.flush()?;
    Ok(Opened { trees, instance_id })
}

/// 16 random hex digits, never all zero.
fn new_instance_id() -> String {
    let mut rng = rand::thread_rng();
    loop {
        let id = rng.next_u64();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

/// A version 1 inspection record: the station name was a field of the record.
#[derive(Deserialize)]
struct InspectionV1 {
    station: String,
    #[serde(flatten)]
    record: InspectionRecordV1,
}

#[derive(Deserialize)]
struct InspectionRecordV1 {
    part_id: u64,
    captured_at: DateTime<Utc>,
    inspected_at: Option<DateTime<Utc>>,
    decided_at: DateTime<Utc>,
    gate_at: DateTime<Utc>,
    actuated_at: Option<DateTime<Utc>>,
    verdict: Option<Verdict>,
    score: Option<f32>,
    threshold: Option<f32>,
    disposition: Disposition,
    rejected_by_policy: bool,
    inspection_late: bool,
    actuation: ActuationStatus,
    actuation_error: Option<String>,
    model_version: Option<String>,
    image: Option<String>,
    heat_map: Option<String>,
    error: Option<String>,
}

/// Version 1 → 2: inspections and model changes become one journal, in the order they
/// happened (inspections by the time they were decided, model changes by their time).
fn migrate_1_to_2(db: &sled::Db, trees: &Trees) -> Result<(), RecordError> {
    let old_inspections = db.open_tree("inspections")?;
    let old_events = db.open_tree("model_events")?;
    // A crash during an earlier attempt may have left part of the new trees.
    trees.journal.clear()?;
    trees.inspection_seq.clear()?;
    trees.kind_seq.clear()?;
    let corrupt = |what: String, e: serde_json::Error| RecordError::Schema {
        path: Path::new("records").to_owned(),
        message: format!("cannot migrate {what}: {e}"),
    };
    let mut entries: Vec<(DateTime<Utc>, String, RecordBody)> = Vec::new();
    for entry in old_inspections.iter() {
        let (key, value) = entry?;
        let old: InspectionV1 = serde_json::from_slice(&value)
            .map_err(|e| corrupt(format!("part {}", super::store::be_u64(&key)), e))?;
        let r = old.record;
        let record = InspectionRecord {
            part_id: r.part_id,
            work_order: None,
            product: None,
            captured_at: r.captured_at,
            inspected_at: r.inspected_at,
            decided_at: r.decided_at,
            gate_at: r.gate_at,
            actuated_at: r.actuated_at,
            verdict: r.verdict,
            score: r.score,
            threshold: r.threshold,
            disposition: r.disposition,
            rejected_by_policy: r.rejected_by_policy,
            inspection_late: r.inspection_late,
            actuation: r.actuation,
            actuation_error: r.actuation_error,
            model_version: r.model_version,
            defect_class: None,
            image: r.image,
            heat_map: r.heat_map,
            error: r.error,
            defect_at: None,
            defect_size: None,
            defect_boxes: Vec::new(),
            views: Vec::new(),
            calibration: None,
            novelty: None,
        };
        entries.push((r.decided_at, old.station, RecordBody::Inspection(record)));
    }
    let station = entries
        .first()
        .map(|(_, s, _)| s.clone())
        .unwrap_or_default();
    for entry in old_events.iter() {
        let (key, value) = entry?;
        let event: ModelEvent = serde_json::from_slice(&value)
            .map_err(|e| corrupt(format!("model event {}", super::store::be_u64(&key)), e))?;
        entries.push((event.at, station.clone(), RecordBody::ModelChange(event)));
    }
    // Stable: records of the same instant keep their old order.
    entries.sort_by_key(|(at, _, _)| *at);
    for (i, (at, station, body)) in entries.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let key = seq.to_be_bytes();
        match &body {
            RecordBody::Inspection(r) => {
                trees.inspection_seq.insert(r.part_id.to_be_bytes(), &key)?;
            }
            other => {
                let mut index = vec![other.kind() as u8];
                index.extend_from_slice(&key);
                trees.kind_seq.insert(index, &[])?;
            }
        }
        let record = Record {
            seq,
            recorded_at: at,
            station,
            body,
        };
        trees.journal.insert(key, encode(&record))?;
    }
    trees
        .meta
        .insert(VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?;
    db.flush()?;
    db.drop_tree("inspections")?;
    db.drop_tree("model_events")?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::journal::ModelAction;
    use crate::record::{RecordKind, Store};

    /// A version 1 store as the station wrote it before the journal.
    fn write_v1(dir: &Path) {
        let db = sled::open(dir.join("records")).expect("sled");
        let inspections = db.open_tree("inspections").expect("tree");
        for (part, at) in [(0u64, "2026-11-01T10:00:02Z"), (1, "2026-11-01T10:00:04Z")] {
            let json = format!(
                r#"{{"part_id":{part},"station":"sim-1","captured_at":"2026-11-01T10:00:00Z",
                "inspected_at":null,"decided_at":"{at}","gate_at":"{at}","actuated_at":null,
                "verdict":"pass","score":0.1,"threshold":0.5,"disposition":"pass",
                "rejected_by_policy":false,"inspection_late":false,"actuation":"not_required",
                "actuation_error":null,"model_version":"m@1","image":null,"heat_map":null,
                "error":null}}"#
            );
            inspections
                .insert(part.to_be_bytes(), json.as_bytes())
                .expect("insert");
        }
        let events = db.open_tree("model_events").expect("tree");
        let event = ModelEvent {
            at: "2026-11-01T10:00:03Z".parse().expect("time"),
            action: ModelAction::Promote,
            version: Some("m@2".into()),
            previous: Some("m@1".into()),
        };
        events
            .insert(
                7u64.to_be_bytes(),
                serde_json::to_vec(&event).expect("json"),
            )
            .expect("insert");
        let meta = db.open_tree("meta").expect("tree");
        meta.insert(b"part_ids_reserved_until", &100_002u64.to_be_bytes())
            .expect("insert");
        db.flush().expect("flush");
    }

    #[tokio::test]
    async fn a_version_1_store_is_migrated_in_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v1(dir.path());
        let store = Store::open(dir.path(), "sim-1").expect("migrates");
        assert_eq!((store.first_seq(), store.last_seq()), (1, 3));
        let kinds: Vec<RecordKind> = (1..=3)
            .map(|seq| store.record(seq).expect("read").expect("kept").body.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                RecordKind::Inspection,
                RecordKind::ModelChange,
                RecordKind::Inspection
            ]
        );
        let part_1 = store.inspection(1).expect("read").expect("kept");
        assert_eq!(part_1.seq, 3);
        assert_eq!(part_1.station, "sim-1");
        assert_eq!(store.model_events().expect("events").len(), 1);
        assert!(store.verify().expect("verify").problems.is_empty());
        // Part ids go on past the old reservation.
        assert_eq!(store.start_run().expect("run"), 100_002);
        let instance = store.instance_id().to_owned();
        drop(store);
        let store = Store::open(dir.path(), "sim-1").expect("reopens");
        assert_eq!(store.instance_id(), instance, "the history was not reset");
        assert_eq!(store.last_seq(), 3);
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path().join("records")).expect("sled");
            db.open_tree("meta")
                .expect("tree")
                .insert(VERSION_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        let error = Store::open(dir.path(), "s").expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("newer Linesight"), "{message}");
        assert!(
            message.contains(&format!("schema {}", SCHEMA_VERSION + 1)),
            "{message}"
        );
    }
}
