//! The journal: every record the station keeps, one after another, each with its sequence number.
//!
//! A record is a [`RecordBody`] (an inspection, a model change, a label, an alarm, a work-order
//! change, an audit entry, an operator's flag) in an envelope that says when it was recorded, by which station, and
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
use super::regions::Region;
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
// Nearly every record is an inspection: boxing the largest variant would add an allocation to
// each of them to save memory on the few others.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    Inspection(InspectionRecord),
    ModelChange(ModelEvent),
    Label(LabelRecord),
    Alarm(AlarmRecord),
    WorkOrder(WorkOrderRecord),
    Audit(AuditRecord),
    Flag(FlagRecord),
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
    Flag = 7,
}

impl RecordKind {
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Inspection,
        RecordKind::ModelChange,
        RecordKind::Label,
        RecordKind::Alarm,
        RecordKind::WorkOrder,
        RecordKind::Audit,
        RecordKind::Flag,
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
            RecordKind::Flag => "flag",
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
            RecordBody::Flag(_) => RecordKind::Flag,
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
    /// The image (SHA-256 of its PNG) the regions are drawn on: the part's recorded image, or
    /// one of its views'. Absent from labels without regions and from older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where the defects are, on `image`; empty for a whole-image label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<Region>,
}

/// Someone on the line says a verdict looks wrong: the part goes to the front of the
/// labelling queue. A flag asks for a judgement; it changes no result (a label does that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagRecord {
    pub part_id: u64,
    /// What looked wrong, in the flagger's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who flagged it (the name of their credential).
    pub by: String,
}

/// An alarm record: either a condition report (`raised`/`cleared`, what the recorder writes
/// about `disk_low` and `records_failing`) or one ISA-18.2 life-cycle transition written by the
/// alarm manager (`event` set, `state` one of the ISA-18.2 states).
///
/// Every field after `message` is optional so records written before the life cycle existed
/// (`{"alarm","state","severity","message"}`) still decode, and a condition report's JSON keeps
/// exactly that shape (absent fields are not written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRecord {
    /// Stable code, e.g. `disk_low`.
    pub alarm: String,
    pub state: AlarmState,
    /// The alarm's ISA-18.2 priority (named `severity` since the first records).
    pub severity: AlarmSeverity,
    pub message: String,
    /// The life-cycle event; absent on a condition report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AlarmEvent>,
    /// When the transition took effect (a sample's time, an operator's request); the
    /// envelope's `recorded_at` is when it became durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// What the alarm watches: `tag:<name>`, `kpi:<name>`, `chart:<name>` or `station`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the condition is active after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Whether the alarm is acknowledged after the transition (nothing left to acknowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<bool>,
    /// How the alarm is shelved after the transition; absent when not shelved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelving: Option<ShelvingKind>,
    /// When a timed shelve ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_until: Option<DateTime<Utc>>,
    /// The value that caused the transition (limit alarms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Who made it: a credential's name, or `station` for automatic transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The operator's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl AlarmRecord {
    /// A condition report as the recorder writes it: the condition came (`Raised`) or went
    /// (`Cleared`); the alarm manager turns it into life-cycle transitions.
    pub fn condition(
        alarm: &str,
        state: AlarmState,
        severity: AlarmSeverity,
        message: String,
    ) -> AlarmRecord {
        AlarmRecord {
            alarm: alarm.to_owned(),
            state,
            severity,
            message,
            event: None,
            at: None,
            source: None,
            active: None,
            acknowledged: None,
            shelving: None,
            shelved_until: None,
            value: None,
            by: None,
            comment: None,
        }
    }

    /// Whether this is a life-cycle transition (not a condition report).
    pub fn is_transition(&self) -> bool {
        self.event.is_some()
    }
}

/// An alarm's state in a record: `raised`/`cleared` on condition reports; one of the
/// ISA-18.2 states (A normal, B active unacknowledged, C active acknowledged, D returned
/// unacknowledged, F shelved, G suppressed by design, H out of service) on transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Raised,
    Cleared,
    Normal,
    ActiveUnacknowledged,
    ActiveAcknowledged,
    ReturnedUnacknowledged,
    Shelved,
    Suppressed,
    OutOfService,
}

impl AlarmState {
    /// The ISA-18.2 states, as the API filters by them.
    pub const ISA: [AlarmState; 7] = [
        AlarmState::Normal,
        AlarmState::ActiveUnacknowledged,
        AlarmState::ActiveAcknowledged,
        AlarmState::ReturnedUnacknowledged,
        AlarmState::Shelved,
        AlarmState::Suppressed,
        AlarmState::OutOfService,
    ];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Raised => "raised",
            AlarmState::Cleared => "cleared",
            AlarmState::Normal => "normal",
            AlarmState::ActiveUnacknowledged => "active_unacknowledged",
            AlarmState::ActiveAcknowledged => "active_acknowledged",
            AlarmState::ReturnedUnacknowledged => "returned_unacknowledged",
            AlarmState::Shelved => "shelved",
            AlarmState::Suppressed => "suppressed",
            AlarmState::OutOfService => "out_of_service",
        }
    }
}

/// What happened to an alarm in one life-cycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmEvent {
    /// The condition became active.
    Activated,
    /// The condition returned to normal.
    Returned,
    Acknowledged,
    Shelved,
    Unshelved,
    /// A timed shelve ran out.
    ShelveExpired,
    Suppressed,
    Unsuppressed,
    OutOfService,
    InService,
}

/// How an alarm is shelved (OPC UA Part 9 `ShelvedStateMachineType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShelvingKind {
    /// Until the alarm returns to normal.
    OneShot,
    /// Until `shelved_until`.
    Timed,
}

/// How urgent an alarm is (ISA-18.2 priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    Low,
    Medium,
    High,
    Critical,
}

impl AlarmSeverity {
    pub const ALL: [AlarmSeverity; 4] = [
        AlarmSeverity::Low,
        AlarmSeverity::Medium,
        AlarmSeverity::High,
        AlarmSeverity::Critical,
    ];
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
    /// What was done, e.g. `model.promote`, `label.create`, `work_order.release`, `token.create`.
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
            body: RecordBody::Alarm(AlarmRecord::condition(
                "disk_low",
                AlarmState::Raised,
                AlarmSeverity::High,
                "ünïcode <&>".into(),
            )),
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

    #[test]
    fn alarm_records_of_the_first_shape_still_decode_and_keep_their_shape() {
        let stored = r#"{"seq":3,"recorded_at":"2025-01-02T03:04:05Z","station":"s","kind":"alarm","alarm":"disk_low","state":"raised","severity":"high","message":"m"}"#;
        let record: Record = serde_json::from_str(stored).expect("decodes");
        let RecordBody::Alarm(alarm) = &record.body else {
            panic!("not an alarm")
        };
        assert_eq!(alarm.state, AlarmState::Raised);
        assert!(!alarm.is_transition());
        // Written again, a condition report has exactly the old fields.
        let json: serde_json::Value = serde_json::to_value(&record).expect("json");
        let fields: Vec<_> = json.as_object().expect("object").keys().cloned().collect();
        assert_eq!(
            fields.len(),
            8,
            "seq, recorded_at, station, kind, alarm, state, severity, message: {fields:?}"
        );
        let transition = r#"{"seq":4,"recorded_at":"2025-01-02T03:04:05Z","station":"s","kind":"alarm","alarm":"oven_hot","state":"shelved","severity":"low","message":"m","event":"shelved","source":"tag:oven","active":true,"acknowledged":false,"shelving":"timed","shelved_until":"2025-01-02T04:04:05Z","by":"op-1","comment":"maintenance"}"#;
        let record: Record = serde_json::from_str(transition).expect("decodes");
        let RecordBody::Alarm(alarm) = &record.body else {
            panic!("not an alarm")
        };
        assert_eq!(alarm.event, Some(AlarmEvent::Shelved));
        assert_eq!(alarm.shelving, Some(ShelvingKind::Timed));
    }
}
