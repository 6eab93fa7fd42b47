//! The journal: every record the station keeps, one after another, each with its sequence number.
//!
//! A record is a [`RecordBody`] (an inspection, a model change, a label, an alarm, a work-order
//! change, an audit entry) in an envelope that says when it was recorded, by which station, and
//! at which place in the journal (`seq`). Sequence numbers are strictly increasing and have no
//! gaps: a client that has seen `seq = n` has seen everything before it.
//!
//! On disk a record is `[crc32 (4 bytes, big-endian)] [kind (1 byte)] [JSON of the Record]`.
//! The checksum covers the kind byte and the JSON; every read checks it, so a damaged record is
//! an error, never a silently wrong answer. The kind byte lets a pull filter by kind without
//! parsing JSON, and the JSON is served as stored, so a page of records costs a copy, not a
//! re-encoding.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RecordError;
use super::inspection::InspectionRecord;
use crate::part::Verdict;

/// One record of the journal, as stored and as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Place in the journal: strictly increasing, no gaps, starts at 1.
    pub seq: u64,
    /// When the record became durable.
    pub recorded_at: DateTime<Utc>,
    /// The station that made it.
    pub station: String,
    #[serde(flatten)]
    pub body: RecordBody,
}

/// What a record says. The `kind` field of the JSON names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    Inspection(InspectionRecord),
    ModelChange(ModelEvent),
    Label(LabelRecord),
    Alarm(AlarmRecord),
    WorkOrder(WorkOrderRecord),
    Audit(AuditRecord),
}

/// The kinds of record, for filters and the per-kind index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Inspection = 1,
    ModelChange = 2,
    Label = 3,
    Alarm = 4,
    WorkOrder = 5,
    Audit = 6,
}

impl RecordKind {
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Inspection,
        RecordKind::ModelChange,
        RecordKind::Label,
        RecordKind::Alarm,
        RecordKind::WorkOrder,
        RecordKind::Audit,
    ];

    /// The name used in JSON, filters and topics.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Inspection => "inspection",
            RecordKind::ModelChange => "model_change",
            RecordKind::Label => "label",
            RecordKind::Alarm => "alarm",
            RecordKind::WorkOrder => "work_order",
            RecordKind::Audit => "audit",
        }
    }

    fn from_byte(byte: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == byte)
    }
}

impl std::str::FromStr for RecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<RecordKind, String> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = RecordKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown record kind `{s}`; one of {}", names.join(", "))
            })
    }
}

impl RecordBody {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Inspection(_) => RecordKind::Inspection,
            RecordBody::ModelChange(_) => RecordKind::ModelChange,
            RecordBody::Label(_) => RecordKind::Label,
            RecordBody::Alarm(_) => RecordKind::Alarm,
            RecordBody::WorkOrder(_) => RecordKind::WorkOrder,
            RecordBody::Audit(_) => RecordKind::Audit,
        }
    }
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

/// An engineer's judgement of a part: a new result that supersedes the inspection's, never an
/// edit of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    pub part_id: u64,
    /// The sequence number of the inspection record this label corrects.
    pub supersedes: u64,
    pub verdict: Verdict,
    pub defect_class: Option<String>,
    pub note: Option<String>,
    /// Who labelled it (the name of their credential).
    pub by: String,
}

/// An alarm raised or cleared by the station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRecord {
    /// Stable code, e.g. `disk_low`.
    pub alarm: String,
    pub state: AlarmState,
    pub severity: AlarmSeverity,
    pub message: String,
}

/// Whether an alarm came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Raised,
    Cleared,
}

/// How urgent an alarm is (ISA-18.2 priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    Low,
    Medium,
    High,
    Critical,
}

/// A work order as the MES or ERP sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    pub id: String,
    pub product: String,
    /// Parts to make.
    pub quantity: u64,
    pub due: DateTime<Utc>,
    /// Seconds per part at the ideal rate (ISO 22400 PRU basis).
    pub ideal_cycle_time_s: f64,
}

/// A change of a work order's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrderRecord {
    pub action: WorkOrderAction,
    pub order: WorkOrder,
    /// Who made the change.
    pub by: String,
}

/// What happened to a work order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderAction {
    /// Received from the MES; waiting.
    Released,
    /// The station attributes new parts to it.
    Started,
    /// No more parts are attributed to it.
    Completed,
}

/// Who changed what, and when (the envelope's `recorded_at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The name of the credential used.
    pub actor: String,
    /// Its role.
    pub role: String,
    /// What was done, e.g. `model.promote`, `label.create`, `records.ack`, `token.create`.
    pub action: String,
    /// What it was done to.
    pub target: String,
}

/// Encodes a record for the journal.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let mut bytes = vec![0u8; 5];
    bytes[4] = record.body.kind() as u8;
    // Serialising our own types into a Vec cannot fail.
    serde_json::to_writer(&mut bytes, record).unwrap_or_default();
    let crc = crc32fast::hash(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A stored record, checked but not parsed.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub seq: u64,
    pub kind: RecordKind,
    bytes: sled::IVec,
}

impl RawRecord {
    /// Checks a stored value's checksum and kind.
    pub(crate) fn check(seq: u64, bytes: sled::IVec) -> Result<RawRecord, RecordError> {
        let corrupt = |why: &str| RecordError::Corrupt {
            seq,
            why: why.to_owned(),
        };
        if bytes.len() < 6 {
            return Err(corrupt("shorter than its header"));
        }
        let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if crc32fast::hash(&bytes[4..]) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        let kind = RecordKind::from_byte(bytes[4]).ok_or_else(|| corrupt("unknown kind"))?;
        Ok(RawRecord { seq, kind, bytes })
    }

    /// The record's JSON, exactly as stored.
    pub fn json(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The stored checksum (CRC-32 of the kind byte and the JSON).
    pub fn checksum(&self) -> u32 {
        u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    pub fn decode(&self) -> Result<Record, RecordError> {
        serde_json::from_slice(self.json()).map_err(|e| RecordError::Corrupt {
            seq: self.seq,
            why: e.to_string(),
        })
    }
}

/// Which records a pull wants. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kinds: Vec<RecordKind>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub station: Option<String>,
    pub work_order: Option<String>,
    pub verdict: Option<Verdict>,
    pub defect_class: Option<String>,
}

impl Filter {
    /// Whether the filter needs the record parsed (the kind alone is in the header).
    fn needs_body(&self) -> bool {
        self.since.is_some()
            || self.until.is_some()
            || self.station.is_some()
            || self.work_order.is_some()
            || self.verdict.is_some()
            || self.defect_class.is_some()
    }

    /// Whether a stored record passes the filter.
    pub(crate) fn matches(&self, raw: &RawRecord) -> Result<bool, RecordError> {
        if !self.kinds.is_empty() && !self.kinds.contains(&raw.kind) {
            return Ok(false);
        }
        if !self.needs_body() {
            return Ok(true);
        }
        let record = raw.decode()?;
        let in_time = self.since.is_none_or(|t| record.recorded_at >= t)
            && self.until.is_none_or(|t| record.recorded_at < t);
        let station = self.station.as_ref().is_none_or(|s| *s == record.station);
        let (work_order, verdict, defect_class) = match &record.body {
            RecordBody::Inspection(r) => (
                r.work_order.as_deref(),
                r.verdict,
                r.defect_class.as_deref(),
            ),
            RecordBody::Label(l) => (None, Some(l.verdict), l.defect_class.as_deref()),
            RecordBody::WorkOrder(w) => (Some(w.order.id.as_str()), None, None),
            _ => (None, None, None),
        };
        Ok(in_time
            && station
            && self
                .work_order
                .as_ref()
                .is_none_or(|w| Some(w.as_str()) == work_order)
            && self.verdict.is_none_or(|v| Some(v) == verdict)
            && self
                .defect_class
                .as_ref()
                .is_none_or(|c| Some(c.as_str()) == defect_class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(seq: u64) -> Record {
        Record {
            seq,
            recorded_at: Utc::now(),
            station: "s".into(),
            body: RecordBody::Alarm(AlarmRecord {
                alarm: "disk_low".into(),
                state: AlarmState::Raised,
                severity: AlarmSeverity::High,
                message: "ünïcode <&>".into(),
            }),
        }
    }

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let record = alarm(7);
        let bytes = encode(&record);
        let raw = RawRecord::check(7, bytes.clone().into()).expect("intact");
        assert_eq!(raw.kind, RecordKind::Alarm);
        assert_eq!(raw.decode().expect("decodes"), record);
        let json: serde_json::Value = serde_json::from_slice(raw.json()).expect("json");
        assert_eq!(json["kind"], "alarm");
        assert_eq!(json["seq"], 7);
        for at in [0, 4, 5, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                matches!(
                    RawRecord::check(7, damaged.into()),
                    Err(RecordError::Corrupt { seq: 7, .. })
                ),
                "a flipped bit at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn filters_by_kind_without_parsing_and_by_fields_with() {
        let raw = RawRecord::check(1, encode(&alarm(1)).into()).expect("intact");
        let alarms = Filter {
            kinds: vec![RecordKind::Alarm],
            ..Filter::default()
        };
        assert!(alarms.matches(&raw).expect("ok"));
        let labels = Filter {
            kinds: vec![RecordKind::Label],
            ..Filter::default()
        };
        assert!(!labels.matches(&raw).expect("ok"));
        let failed = Filter {
            verdict: Some(Verdict::Fail),
            ..Filter::default()
        };
        assert!(!failed.matches(&raw).expect("ok"));
        let other_station = Filter {
            station: Some("t".into()),
            ..Filter::default()
        };
        assert!(!other_station.matches(&raw).expect("ok"));
        assert_eq!(
            "work_order".parse::<RecordKind>(),
            Ok(RecordKind::WorkOrder)
        );
        assert!("nope".parse::<RecordKind>().is_err());
    }
}
