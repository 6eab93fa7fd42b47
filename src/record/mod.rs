//! Records: everything the station must not forget, durable before anyone sees it.
//!
//! The heart is one journal ([`journal`]): inspections, model changes, labels, alarms, work
//! orders and audit entries, each with a strictly increasing sequence number, in a sled
//! database ([`Store`], `store.rs`) whose schema is versioned and migrated on start
//! (`schema.rs`). The MES pulls the journal by sequence number; the live stream and the MQTT
//! publisher follow it the same way. Images live beside it on disk ([`ImageStore`]) and yield
//! to the records when the disk runs short.
//!
//! [`run_recorder`] is the stage task: it turns each [`PartOutcome`](crate::part::PartOutcome)
//! into an inspection record, writing whatever has queued up in one group commit, and retries a
//! failed write until it succeeds, counting every failure.

pub mod coco;
pub mod explain;
pub mod images;
mod inspection;
pub mod journal;
pub mod regions;
mod retention;
mod schema;
mod store;
#[cfg(test)]
pub mod testing;

use std::path::PathBuf;

pub use images::ImageStore;
pub use inspection::{
    ActuationStatus, DISK_LOW_ALARM, DefectPlace, DefectSize, InspectionRecord,
    RECORDS_FAILING_ALARM, RecordContext, SavedImages, ShadowSummary, ShadowVerdict, ViewRecord,
    build_record, gray_png, heat_map_png, run_recorder,
};
pub use journal::{
    AlarmEvent, AlarmRecord, AlarmSeverity, AlarmState, AuditRecord, Filter, FlagRecord,
    LabelRecord, ModelAction, ModelEvent, RawRecord, Record, RecordBody, RecordKind, ShelvingKind,
    WorkOrder, WorkOrderAction, WorkOrderRecord,
};
pub use regions::{Region, RegionError, Shape, regions_mask};
pub use retention::run_archiver;
pub use schema::SCHEMA_VERSION;
pub use store::{ArchiveReport, Page, Store, VerifyReport, WorkOrderState, open_sled};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("record store {path}: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("record store: {0}")]
    Sled(#[from] sled::Error),
    #[error("image store {path}: {source}")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PNG encoding: {0}")]
    Png(#[from] image::ImageError),
    #[error("record {seq} is corrupt: {why}")]
    Corrupt { seq: u64, why: String },
    #[error("shadow verdict of part {part_id} is corrupt: {why}")]
    CorruptShadow { part_id: u64, why: String },
    #[error("no record before sequence number {first_seq} is kept (asked from {from})")]
    Pruned { from: u64, first_seq: u64 },
    #[error("the record store is being reopened after a failed write; try again")]
    Reopening,
    /// Records are held back (they wait in memory) while the data disk is this short of
    /// space: sled must never run out of it mid-write or mid-open.
    #[error("the data disk has {free} bytes free; records wait until {need} are")]
    DiskFull { free: u64, need: u64 },
    #[error("cannot acknowledge {seq}: the newest record is {last}")]
    AckBeyondEnd { seq: u64, last: u64 },
}
