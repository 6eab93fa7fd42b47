//! [`AlarmManager`]: the live alarm states of the station, and the only writer of alarm
//! transitions.
//!
//! Every transition is appended to the journal (with the operator's audit entry, in the same
//! transaction) before the in-memory state changes; if the write fails nothing changes and
//! the caller gets the error. At start the states are rebuilt from each alarm's latest
//! transition record; condition reports written by others (the recorder's `disk_low` and
//! `records_failing`) are read back from the journal and folded in as condition changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use super::performance::{AlarmPerformance, TransitionEntry, performance};
use super::state::{AlarmStatus, Delays, Limits, Operation, Overlay, Side, TransitionError};
use super::{AlarmDefinition, AlarmSource, DiscreteOn, builtin_definitions};
use crate::record::{
    AlarmEvent, AlarmRecord, AlarmSeverity, AlarmState, AuditRecord, Filter, Record, RecordBody,
    RecordError, RecordKind, ShelvingKind, Store,
};

/// Who made automatic transitions, in records.
pub const STATION_ACTOR: &str = "station";

/// How often [`AlarmManager::run_ticker`] ticks.
pub const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest operator comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1000;

/// Who asks for an operator action: a credential's name and role (the audit entry's actor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: String,
}

/// How long to shelve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShelveRequest {
    /// Until the alarm returns to normal.
    OneShot,
    /// For a while, at most the alarm's `max_shelve_s`.
    For(std::time::Duration),
}

/// An operator's action on an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Shelve(ShelveRequest),
    Unshelve,
    Suppress,
    Unsuppress,
    RemoveFromService,
    ReturnToService,
}

impl Action {
    /// The audit log's name of the action.
    pub fn audit_name(self) -> &'static str {
        match self {
            Action::Acknowledge => "alarm.acknowledge",
            Action::Shelve(_) => "alarm.shelve",
            Action::Unshelve => "alarm.unshelve",
            Action::Suppress => "alarm.suppress",
            Action::Unsuppress => "alarm.unsuppress",
            Action::RemoveFromService => "alarm.out_of_service",
            Action::ReturnToService => "alarm.in_service",
        }
    }

    fn operation(self, max_shelve: Duration) -> Operation {
        match self {
            Action::Acknowledge => Operation::Acknowledge,
            Action::Shelve(ShelveRequest::OneShot) => Operation::Shelve {
                one_shot: true,
                duration: Duration::zero(),
                max: max_shelve,
            },
            Action::Shelve(ShelveRequest::For(d)) => Operation::Shelve {
                one_shot: false,
                duration: Duration::from_std(d).unwrap_or(Duration::MAX),
                max: max_shelve,
            },
            Action::Unshelve => Operation::Unshelve,
            Action::Suppress => Operation::Suppress,
            Action::Unsuppress => Operation::Unsuppress,
            Action::RemoveFromService => Operation::RemoveFromService,
            Action::ReturnToService => Operation::ReturnToService,
        }
    }
}

/// Why an alarm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    #[error("no alarm named {0:?}")]
    UnknownAlarm(String),
    #[error("no discrete alarm is named or watches {0:?}")]
    UnknownSource(String),
    #[error("alarm {name}: {source}")]
    Transition {
        name: String,
        #[source]
        source: TransitionError,
    },
    #[error("{watched}: value {value} is not a finite number")]
    NotFinite { watched: String, value: f64 },
    #[error("a comment must be 1 to {MAX_COMMENT_CHARS} characters, no control characters")]
    BadComment,
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// One alarm as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmView {
    pub name: String,
    /// The definition's message.
    pub message: String,
    pub source: String,
    pub priority: AlarmSeverity,
    /// The ISA-18.2 state shown.
    pub state: AlarmState,
    pub active: bool,
    pub acknowledged: bool,
    pub shelving: Option<ShelvingKind>,
    pub shelved_until: Option<DateTime<Utc>>,
    pub max_shelve_s: u64,
    /// The last value observed (limit alarms).
    pub value: Option<f64>,
    /// Why the condition last changed, e.g. "value 231 above high limit 230".
    pub condition: Option<String>,
    /// When the last transition took effect.
    pub since: Option<DateTime<Utc>>,
    /// The journal sequence number of the last transition.
    pub last_seq: Option<u64>,
}

/// One alarm's live state.
#[derive(Debug, Clone)]
struct Slot {
    definition: AlarmDefinition,
    source: AlarmSource,
    limits: Option<Limits>,
    status: AlarmStatus,
    delays: Delays,
    /// The limit the value is beyond (active, or waiting for the on-delay).
    side: Option<Side>,
    value: Option<f64>,
    condition: Option<String>,
    /// The message of the latest discrete condition change asked for (used when its delay
    /// runs out on a tick).
    wanted_message: Option<String>,
    since: Option<DateTime<Utc>>,
    last_seq: Option<u64>,
}

impl Slot {
    fn new(definition: AlarmDefinition) -> Slot {
        // Definitions were checked when the config loaded; a bad source here is a caller's
        // definition that skipped the check, watched as a tag of that name.
        let source = definition
            .source
            .parse()
            .unwrap_or_else(|_| AlarmSource::Tag(definition.source.clone()));
        let limits = (definition.high.is_some() || definition.low.is_some()).then_some(Limits {
            high: definition.high,
            low: definition.low,
            deadband: definition.deadband,
        });
        let seconds = |s: f64| Duration::milliseconds((s.clamp(0.0, 86_400.0) * 1000.0) as i64);
        Slot {
            delays: Delays::new(
                seconds(definition.on_delay_s),
                seconds(definition.off_delay_s),
            ),
            definition,
            source,
            limits,
            status: AlarmStatus::NORMAL,
            side: None,
            value: None,
            condition: None,
            wanted_message: None,
            since: None,
            last_seq: None,
        }
    }

    fn max_shelve(&self) -> Duration {
        Duration::seconds(i64::try_from(self.definition.max_shelve_s).unwrap_or(i64::MAX))
    }

    fn view(&self) -> AlarmView {
        let (shelving, shelved_until) = self.status.shelving();
        AlarmView {
            name: self.definition.name.clone(),
            message: self.definition.message.clone(),
            source: self.definition.source.clone(),
            priority: self.definition.priority,
            state: self.status.state(),
            active: self.status.active,
            acknowledged: self.status.acknowledged,
            shelving,
            shelved_until,
            max_shelve_s: self.definition.max_shelve_s,
            value: self.value,
            condition: self.condition.clone(),
            since: self.since,
            last_seq: self.last_seq,
        }
    }

    /// The record of a transition to `self.status`.
    fn record(
        &self,
        event: AlarmEvent,
        at: DateTime<Utc>,
        message: String,
        by: &str,
        comment: Option<String>,
    ) -> AlarmRecord {
        let (shelving, shelved_until) = self.status.shelving();
        AlarmRecord {
            alarm: self.definition.name.clone(),
            state: self.status.state(),
            severity: self.definition.priority,
            message,
            event: Some(event),
            at: Some(at),
            source: Some(self.definition.source.clone()),
            active: Some(self.status.active),
            acknowledged: Some(self.status.acknowledged),
            shelving,
            shelved_until,
            value: self.value,
            by: Some(by.to_owned()),
            comment,
        }
    }

    fn is_discrete(&self) -> bool {
        self.definition.on.is_some()
    }
}

/// The slots and where the journal was last read for condition reports.
struct Alarms {
    slots: BTreeMap<String, Slot>,
    /// The next journal sequence number to read condition reports from.
    cursor: u64,
}

/// Changes worked out under the lock, applied only once their records are durable.
#[derive(Default)]
struct Plan {
    /// The new slots, in order; the latest per alarm wins.
    slots: Vec<Slot>,
    /// For each record to write, the index of its slot in `slots`.
    records: Vec<(usize, AlarmRecord)>,
}

impl Plan {
    /// The state of `name` as planned so far.
    fn current(&self, alarms: &Alarms, name: &str) -> Option<Slot> {
        self.slots
            .iter()
            .rev()
            .find(|s| s.definition.name == name)
            .or_else(|| alarms.slots.get(name))
            .cloned()
    }

    fn push(&mut self, slot: Slot, record: Option<AlarmRecord>) {
        self.slots.push(slot);
        if let Some(record) = record {
            self.records.push((self.slots.len() - 1, record));
        }
    }
}

struct Shared {
    store: Store,
    alarms: Mutex<Alarms>,
    transitions: broadcast::Sender<Record>,
}

/// The station's alarms: live states, condition evaluation, operator actions. Cheap to clone.
#[derive(Clone)]
pub struct AlarmManager {
    shared: Arc<Shared>,
}

impl AlarmManager {
    /// Opens the alarms `definitions` declares (and the built-in ones), each in the state its
    /// latest transition in the journal left it; condition reports written after that
    /// transition (while the manager was not running) are folded in now.
    ///
    /// An alarm whose transitions were all archived starts normal (OPC UA Part 9: an alarm
    /// manager restarting without its state starts unshelved).
    pub async fn open(
        store: Store,
        definitions: &[AlarmDefinition],
    ) -> Result<AlarmManager, AlarmError> {
        let mut slots = BTreeMap::new();
        for definition in builtin_definitions()
            .into_iter()
            .chain(definitions.iter().cloned())
        {
            slots.insert(definition.name.clone(), Slot::new(definition));
        }
        // Everything before `cursor` is read here; later reports are the ticker's.
        let cursor = store.last_seq() + 1;
        let history = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.records_of_kind(RecordKind::Alarm))
                .await
                .map_err(|e| RecordError::Sled(sled::Error::ReportableBug(e.to_string())))??
        };
        // Condition reports after each alarm's latest transition, oldest first.
        let mut unfolded: BTreeMap<String, Vec<(bool, String, DateTime<Utc>)>> = BTreeMap::new();
        for record in history.into_iter().filter(|r| r.seq < cursor) {
            let RecordBody::Alarm(alarm) = record.body else {
                continue;
            };
            let Some(slot) = slots.get_mut(&alarm.alarm) else {
                tracing::debug!(alarm = %alarm.alarm, seq = record.seq, "alarm record of no defined alarm");
                continue;
            };
            if alarm.event.is_some() {
                unfolded.remove(&alarm.alarm);
                slot.status = AlarmStatus::from_record(
                    alarm.state,
                    alarm.active.unwrap_or(false),
                    alarm.acknowledged.unwrap_or(true),
                    alarm.shelving,
                    alarm.shelved_until,
                );
                slot.value = alarm.value;
                if matches!(
                    alarm.event,
                    Some(AlarmEvent::Activated | AlarmEvent::Returned)
                ) {
                    slot.condition = Some(alarm.message);
                }
                slot.side = match (slot.status.active, slot.limits, slot.value) {
                    (true, Some(limits), Some(value)) => limits.side_of(value),
                    _ => None,
                };
                slot.since = Some(alarm.at.unwrap_or(record.recorded_at));
                slot.last_seq = Some(record.seq);
            } else if slot.definition.on == Some(DiscreteOn::Report) {
                let raised = matches!(alarm.state, AlarmState::Raised);
                unfolded.entry(alarm.alarm).or_default().push((
                    raised,
                    alarm.message,
                    record.recorded_at,
                ));
            }
        }
        let manager = AlarmManager {
            shared: Arc::new(Shared {
                store,
                alarms: Mutex::new(Alarms { slots, cursor }),
                transitions: broadcast::channel(256).0,
            }),
        };
        {
            let mut alarms = manager.shared.alarms.lock().await;
            let mut plan = Plan::default();
            for (name, reports) in unfolded {
                for (raised, message, at) in reports {
                    plan_condition(&alarms, &mut plan, &name, raised, at, message);
                }
            }
            manager.commit(&mut alarms, plan, None).await?;
        }
        Ok(manager)
    }

    /// Every alarm, by name.
    pub async fn alarms(&self) -> Vec<AlarmView> {
        let alarms = self.shared.alarms.lock().await;
        alarms.slots.values().map(Slot::view).collect()
    }

    /// One alarm.
    pub async fn alarm(&self, name: &str) -> Option<AlarmView> {
        let alarms = self.shared.alarms.lock().await;
        alarms.slots.get(name).map(Slot::view)
    }

    /// Transitions as they become durable (for in-process followers; the HTTP stream follows
    /// the journal instead, so it can resume).
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.shared.transitions.subscribe()
    }

    /// A new value of `source` (`tag:<name>` or `kpi:<name>`) at `at`: every limit alarm on it
    /// is evaluated (deadband, on/off delays). Returns the transitions recorded.
    pub async fn observe(
        &self,
        source: &str,
        value: f64,
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, AlarmError> {
        if !value.is_finite() {
            return Err(AlarmError::NotFinite {
                watched: source.to_owned(),
                value,
            });
        }
        let mut alarms = self.shared.alarms.lock().await;
        let mut plan = Plan::default();
        let names: Vec<String> = alarms
            .slots
            .values()
            .filter(|s| s.limits.is_some() && s.definition.source == source)
            .map(|s| s.definition.name.clone())
            .collect();
        for name in names {
            let Some(mut slot) = plan.current(&alarms, &name) else {
                continue;
            };
            let Some(limits) = slot.limits else {
                continue;
            };
            slot.value = Some(value);
            let held = if slot.status.active { slot.side } else { None };
            let beyond = limits.beyond(value, held);
            if beyond.is_some() {
                slot.side = beyond;
            }
            let record = if slot.delays.update(slot.status.active, beyond.is_some(), at) {
                let message = limits.describe(value, beyond);
                condition_transition(&mut slot, beyond.is_some(), at, message)
            } else {
                None
            };
            plan.push(slot, record);
        }
        self.commit(&mut alarms, plan, None).await
    }

    /// Sets the condition of discrete alarms: the one named `target`, or every one whose
    /// source is `target` (`chart:<name>`, `station`, …). Delays apply.
    pub async fn set_condition(
        &self,
        target: &str,
        active: bool,
        at: DateTime<Utc>,
        message: &str,
    ) -> Result<Vec<Record>, AlarmError> {
        let mut alarms = self.shared.alarms.lock().await;
        let names: Vec<String> = alarms
            .slots
            .values()
            .filter(|s| {
                s.is_discrete() && (s.definition.name == target || s.definition.source == target)
            })
            .map(|s| s.definition.name.clone())
            .collect();
        if names.is_empty() {
            return Err(AlarmError::UnknownSource(target.to_owned()));
        }
        let mut plan = Plan::default();
        for name in names {
            plan_condition(&alarms, &mut plan, &name, active, at, message.to_owned());
        }
        self.commit(&mut alarms, plan, None).await
    }

    /// The station's FAULT and DEGRADED states: alarms of source `station` with
    /// `on = "fault"` follow `fault`, those with `on = "degraded"` follow `degraded`.
    pub async fn set_station(
        &self,
        fault: bool,
        degraded: bool,
        at: DateTime<Utc>,
        message: &str,
    ) -> Result<Vec<Record>, AlarmError> {
        let mut alarms = self.shared.alarms.lock().await;
        let mut plan = Plan::default();
        let targets: Vec<(String, bool)> = alarms
            .slots
            .values()
            .filter(|s| s.source == AlarmSource::Station)
            .filter_map(|s| match s.definition.on {
                Some(DiscreteOn::Fault) => Some((s.definition.name.clone(), fault)),
                Some(DiscreteOn::Degraded) => Some((s.definition.name.clone(), degraded)),
                _ => None,
            })
            .collect();
        for (name, active) in targets {
            plan_condition(&alarms, &mut plan, &name, active, at, message.to_owned());
        }
        self.commit(&mut alarms, plan, None).await
    }

    /// An operator's action on alarm `name` at `at`, recorded with its audit entry in one
    /// write. Returns the alarm as it is afterwards.
    pub async fn act(
        &self,
        name: &str,
        action: Action,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        if let Some(comment) = &comment {
            let n = comment.chars().count();
            if !(1..=MAX_COMMENT_CHARS).contains(&n) || comment.chars().any(char::is_control) {
                return Err(AlarmError::BadComment);
            }
        }
        let mut alarms = self.shared.alarms.lock().await;
        let Some(mut slot) = alarms.slots.get(name).cloned() else {
            return Err(AlarmError::UnknownAlarm(name.to_owned()));
        };
        let transition = slot
            .status
            .apply(action.operation(slot.max_shelve()), at)
            .map_err(|source| AlarmError::Transition {
                name: name.to_owned(),
                source,
            })?;
        slot.status = transition.status;
        let message = match transition.status.shelving() {
            (_, Some(until)) => format!("{} until {until}", action.audit_name()),
            _ => action.audit_name().to_owned(),
        };
        let record = slot.record(transition.event, at, message, &by.name, comment);
        let mut plan = Plan::default();
        plan.push(slot, Some(record));
        let audit = AuditRecord {
            actor: by.name.clone(),
            role: by.role.clone(),
            action: action.audit_name().into(),
            target: name.to_owned(),
        };
        self.commit(&mut alarms, plan, Some(audit)).await?;
        alarms
            .slots
            .get(name)
            .map(Slot::view)
            .ok_or_else(|| AlarmError::UnknownAlarm(name.to_owned()))
    }

    /// Acknowledges alarm `name`.
    pub async fn acknowledge(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::Acknowledge, by, comment, at).await
    }

    /// Shelves alarm `name` once or for a while.
    pub async fn shelve(
        &self,
        name: &str,
        request: ShelveRequest,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::Shelve(request), by, comment, at)
            .await
    }

    /// Unshelves alarm `name`.
    pub async fn unshelve(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::Unshelve, by, comment, at).await
    }

    /// Suppresses alarm `name` by design.
    pub async fn suppress(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::Suppress, by, comment, at).await
    }

    /// Ends the suppression of alarm `name`.
    pub async fn unsuppress(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::Unsuppress, by, comment, at).await
    }

    /// Takes alarm `name` out of service.
    pub async fn remove_from_service(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::RemoveFromService, by, comment, at)
            .await
    }

    /// Returns alarm `name` to service.
    pub async fn return_to_service(
        &self,
        name: &str,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<AlarmView, AlarmError> {
        self.act(name, Action::ReturnToService, by, comment, at)
            .await
    }

    /// What time alone changes at `now`: timed shelves that ran out, on/off delays that
    /// elapsed; and condition reports written to the journal since the last tick.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<Record>, AlarmError> {
        let mut alarms = self.shared.alarms.lock().await;
        let mut plan = Plan::default();
        let names: Vec<String> = alarms.slots.keys().cloned().collect();
        for name in &names {
            let Some(mut slot) = plan.current(&alarms, name) else {
                continue;
            };
            if let Overlay::Shelved(super::state::Shelve::Timed { until }) = slot.status.overlay
                && now >= until
                && let Ok(transition) = slot.status.apply(Operation::ExpireShelve, now)
            {
                slot.status = transition.status;
                let record = slot.record(
                    transition.event,
                    now,
                    format!("shelve ran out at {until}"),
                    STATION_ACTOR,
                    None,
                );
                plan.push(slot.clone(), Some(record));
            }
            if slot.delays.poll(slot.status.active, now) {
                let active = !slot.status.active;
                let message = match (slot.limits, slot.value) {
                    (Some(limits), Some(value)) => {
                        limits.describe(value, if active { slot.side } else { None })
                    }
                    _ => slot.wanted_message.clone().unwrap_or_default(),
                };
                let record = condition_transition(&mut slot, active, now, message);
                plan.push(slot, record);
            }
        }
        // Condition reports since the last tick, in journal order.
        let mut cursor = alarms.cursor;
        let store = &self.shared.store;
        let filter = Filter {
            kinds: vec![RecordKind::Alarm],
            ..Filter::default()
        };
        while cursor <= store.last_seq() {
            let page = match store.pull(cursor, 256, &filter) {
                Ok(page) => page,
                Err(RecordError::Pruned { first_seq, .. }) => {
                    cursor = first_seq;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            for raw in &page.records {
                let record = raw.decode()?;
                if let RecordBody::Alarm(alarm) = record.body
                    && !alarm.is_transition()
                    && alarms
                        .slots
                        .get(&alarm.alarm)
                        .is_some_and(|s| s.definition.on == Some(DiscreteOn::Report))
                {
                    let raised = alarm.state == AlarmState::Raised;
                    plan_condition(
                        &alarms,
                        &mut plan,
                        &alarm.alarm,
                        raised,
                        record.recorded_at,
                        alarm.message,
                    );
                }
            }
            cursor = page.next_seq;
            if !page.more {
                break;
            }
        }
        let records = self.commit(&mut alarms, plan, None).await?;
        alarms.cursor = cursor;
        Ok(records)
    }

    /// Ticks every second until `cancel`: shelve expiry, delays, and the recorder's condition
    /// reports. Errors are logged and the next tick tries again.
    pub async fn run_ticker(self, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(error) = self.tick(Utc::now()).await {
                tracing::warn!(%error, "alarm tick failed; trying again in a second");
            }
        }
    }

    /// The transitions of alarm `name`, newest first, with sequence numbers below `before`.
    pub fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, AlarmError> {
        let mut records: Vec<Record> = self
            .shared
            .store
            .records_of_kind(RecordKind::Alarm)?
            .into_iter()
            .filter(|r| before.is_none_or(|b| r.seq < b))
            .filter(
                |r| matches!(&r.body, RecordBody::Alarm(a) if a.alarm == name && a.is_transition()),
            )
            .collect();
        records.reverse();
        records.truncate(limit);
        Ok(records)
    }

    /// Every transition that took effect before `to`, oldest first.
    pub fn transitions(&self, to: DateTime<Utc>) -> Result<Vec<TransitionEntry>, AlarmError> {
        let mut entries: Vec<TransitionEntry> = self
            .shared
            .store
            .records_of_kind(RecordKind::Alarm)?
            .iter()
            .filter_map(TransitionEntry::from_record)
            .filter(|e| e.at < to)
            .collect();
        // Sample times of different sources need not follow the journal's order.
        entries.sort_by_key(|e| (e.at, e.seq));
        Ok(entries)
    }

    /// The ISA-18.2 performance figures of `[from, to)`.
    pub fn performance(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<AlarmPerformance, AlarmError> {
        Ok(performance(&self.transitions(to)?, from, to))
    }

    /// Writes the plan's records (and `audit`) in one transaction, then, once durable,
    /// applies its slots and tells subscribers. Nothing changes if the write fails.
    async fn commit(
        &self,
        alarms: &mut Alarms,
        plan: Plan,
        audit: Option<AuditRecord>,
    ) -> Result<Vec<Record>, AlarmError> {
        let mut written = Vec::new();
        if !plan.records.is_empty() {
            let mut bodies: Vec<RecordBody> = plan
                .records
                .iter()
                .map(|(_, r)| RecordBody::Alarm(r.clone()))
                .collect();
            bodies.extend(audit.map(RecordBody::Audit));
            written = self.shared.store.append_all(bodies).await?;
        }
        let mut slots = plan.slots;
        for ((index, alarm), record) in plan.records.iter().zip(&written) {
            if let Some(slot) = slots.get_mut(*index) {
                slot.last_seq = Some(record.seq);
                slot.since = Some(alarm.at.unwrap_or(record.recorded_at));
            }
        }
        // Later slots of the same alarm carry on from the earlier: give them the last
        // transition's place too.
        let mut last: BTreeMap<String, (Option<u64>, Option<DateTime<Utc>>)> = BTreeMap::new();
        for slot in &mut slots {
            let name = slot.definition.name.clone();
            if let Some(&(seq, since)) = last.get(&name)
                && seq > slot.last_seq
            {
                slot.last_seq = seq;
                slot.since = since;
            }
            last.insert(name, (slot.last_seq, slot.since));
        }
        for slot in slots {
            alarms.slots.insert(slot.definition.name.clone(), slot);
        }
        let transitions: Vec<Record> = written
            .into_iter()
            .filter(|r| matches!(r.body, RecordBody::Alarm(_)))
            .collect();
        for record in &transitions {
            tracing::info!(seq = record.seq, record = ?record.body, "alarm transition");
            // Nobody listening is fine.
            let _ = self.shared.transitions.send(record.clone());
        }
        Ok(transitions)
    }
}

/// Plans a discrete condition change of alarm `name` (delays apply).
fn plan_condition(
    alarms: &Alarms,
    plan: &mut Plan,
    name: &str,
    active: bool,
    at: DateTime<Utc>,
    message: String,
) {
    let Some(mut slot) = plan.current(alarms, name) else {
        return;
    };
    slot.wanted_message = Some(message.clone());
    let record = if slot.delays.update(slot.status.active, active, at) {
        condition_transition(&mut slot, active, at, message)
    } else {
        None
    };
    plan.push(slot, record);
}

/// Activates or returns `slot`, giving the record to write.
fn condition_transition(
    slot: &mut Slot,
    active: bool,
    at: DateTime<Utc>,
    message: String,
) -> Option<AlarmRecord> {
    let operation = if active {
        Operation::Activate
    } else {
        Operation::Return
    };
    let transition = slot.status.apply(operation, at).ok()?;
    slot.status = transition.status;
    if !active {
        slot.side = None;
    }
    slot.condition = Some(message.clone());
    Some(slot.record(transition.event, at, message, STATION_ACTOR, None))
}

#[cfg(test)]
pub(crate) mod tests;
