//! The halt line: a burst of critical defects latches a coil on the PLC that stops the line,
//! raises the `halt_line` alarm, and stays latched until an operator resets it.
//!
//! [`run_halt_line`] follows the journal's inspection records from a durable cursor through
//! the [`BurstDetector`] of the `[halt_line]` table. When it trips, [`HaltLine`] persists the
//! latch (reason, time, the burst) with the cursor in one write, attaches the alert details,
//! raises the alarm through the alarm manager, and writes the coil ON. While latched the coil
//! is rewritten every `reassert_ms`, so a PLC that restarted or a link that was rebuilt gets it
//! back; a station that restarts latched re-asserts it at once. Only
//! [`HaltLine::reset`] (the API's `POST /api/v1/halt-line/reset`, operators and above) unlatches:
//! its audit entry is written first, then the latch, then the alarm returns and the coil goes
//! OFF.
//!
//! The coil is beside the reject path, never on it: the gate keeps rejecting every part
//! whatever the halt does.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{ActionsDb, ActionsError, AlertDetails, Evidence};
use crate::actuate::{Burst, BurstDetector, GateLink, HaltLineSection};
use crate::analyse::alarms::{Actor, AlarmDefinition, AlarmError, AlarmManager, DiscreteOn};
use crate::metrics::Metrics;
use crate::part::Verdict;
use crate::record::{
    AlarmSeverity, AuditRecord, Filter, RecordBody, RecordError, RecordKind, Store,
};

/// The alarm a halt raises.
pub const HALT_LINE_ALARM: &str = "halt_line";

/// The audit log's name of a reset.
pub const RESET_ACTION: &str = "halt_line.reset";

/// Longest reset comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1000;

const TREE: &str = "halt_line";
const LATCH_KEY: &[u8] = b"latch";
const FOLLOW_KEY: &[u8] = b"follow";

/// Inspection records read per step.
const PAGE: usize = 1024;

/// The `halt_line` alarm's definition: critical, raised and returned by this module only.
pub fn alarm_definition() -> AlarmDefinition {
    AlarmDefinition::discrete(
        HALT_LINE_ALARM,
        "Line halted by a burst of critical defects: find the cause, then reset the halt",
        AlarmSeverity::Critical,
        "station",
        DiscreteOn::Report,
    )
}

/// Why a halt-line operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HaltLineError {
    #[error("the halt line is not latched: nothing to reset")]
    NotLatched,
    #[error("a comment must be 1 to {MAX_COMMENT_CHARS} characters, no control characters")]
    BadComment,
    #[error(
        "[halt_line] is configured, but the register map {0} has no [halt_line] coil: add it (see firmware-io/register-map.toml)"
    )]
    NoCoil(std::path::PathBuf),
    #[error(
        "the halt line is latched ({0}) but [halt_line] is no longer configured: nothing would \
         hold the halt, release it through an audited reset or show why the line stopped. Put \
         the [halt_line] section back (a station in client mode), reset the halt (POST \
         /api/v1/halt-line/reset), then remove it"
    )]
    LatchedWithoutSection(String),
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Alarm(#[from] AlarmError),
}

impl From<sled::Error> for HaltLineError {
    fn from(error: sled::Error) -> HaltLineError {
        HaltLineError::Actions(ActionsError::Sled(error))
    }
}

/// The latch as persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Latch {
    latched: bool,
    /// Why it latched (while latched).
    reason: Option<String>,
    /// When the current state began: the trip, or the reset.
    since: Option<DateTime<Utc>>,
    /// The burst that tripped it (while latched).
    burst: Option<Burst>,
    /// Who reset it last.
    reset_by: Option<String>,
    /// Trips since the database was made.
    trips: u64,
}

/// Why the halt line stored in `db` is latched, if it is. A station started without
/// `[halt_line]` checks it: a latch left from when the section was configured keeps the PLC's
/// halt ON (the coil is left ON at a stop, on purpose), and without the section no task would
/// hold it (a stop-line policy would write it OFF unaudited), no alarm would show it and the
/// reset would not exist.
pub fn latched_in(db: &ActionsDb) -> Result<Option<String>, HaltLineError> {
    let tree = db.tree(TREE)?;
    let latch: Latch = read(&tree, LATCH_KEY)?.unwrap_or_default();
    Ok(latch.latched.then(|| {
        latch
            .reason
            .unwrap_or_else(|| "no reason recorded".to_owned())
    }))
}

/// Where the follower is and the detector's window, persisted together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FollowState {
    cursor: u64,
    detector: BurstDetector,
}

/// The halt line as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaltLineView {
    /// Whether the halt is latched (the coil should be ON).
    pub latched: bool,
    /// Why it latched; absent when not latched.
    pub reason: Option<String>,
    /// When the current state began (the trip, or the last reset); absent before either.
    pub since: Option<DateTime<Utc>>,
    /// The burst that tripped it; absent when not latched.
    pub burst: Option<Burst>,
    /// Who made the last reset.
    pub reset_by: Option<String>,
    /// Trips so far.
    pub trips: u64,
    /// The coil's address (register map `[halt_line]`).
    pub coil: u16,
    /// The coil's value as the PLC last acknowledged this action's write; absent when unknown
    /// (not written since start, or the last write failed). The heartbeat writes the same coil
    /// under the stop-line policy (ON while the PLC is lost, OFF once it is back, and ON again
    /// should this action latch while that OFF was on its way), which this does not show.
    pub coil_on: Option<bool>,
    /// Counted defects among the latest parts now.
    pub defects_in_window: u32,
    /// The rule: classes that count (empty: every failed part), how many within how many.
    pub classes: Vec<String>,
    pub burst_defects: u32,
    pub within_parts: u32,
}

/// Everything [`HaltLine::open`] needs.
pub struct HaltLineContext {
    pub db: ActionsDb,
    pub store: Store,
    /// The alarm manager, opened with [`alarm_definition`] among its definitions.
    pub alarms: AlarmManager,
    pub section: HaltLineSection,
    /// The coil's address from the register map.
    pub coil: u16,
    pub metrics: Metrics,
}

struct Live {
    latch: Latch,
    follow: FollowState,
    coil_on: Option<bool>,
    /// The alarm could not be raised or returned yet: the loop tries again.
    alarm_behind: bool,
}

struct Inner {
    tree: sled::Tree,
    db: ActionsDb,
    store: Store,
    alarms: AlarmManager,
    section: HaltLineSection,
    coil: u16,
    metrics: Metrics,
    live: Mutex<Live>,
    /// Wakes the loop after a trip or reset, so the coil follows at once.
    changed: tokio::sync::Notify,
    /// Orders trips, resets and the follower's steps: each reads and writes the latch and
    /// the window as a whole.
    order: tokio::sync::Mutex<()>,
}

/// The halt line's latch: state, trip, operator reset. Cheap to clone.
#[derive(Clone)]
pub struct HaltLine {
    inner: Arc<Inner>,
}

impl HaltLine {
    /// Opens the latch as it was left. A station that has never run a halt line starts
    /// following the journal from its end (its history does not trip it).
    pub fn open(ctx: HaltLineContext) -> Result<HaltLine, HaltLineError> {
        let tree = ctx.db.tree(TREE)?;
        let latch: Latch = read(&tree, LATCH_KEY)?.unwrap_or_default();
        let saved: Option<FollowState> = read(&tree, FOLLOW_KEY)?;
        let rule = ctx.section.rule();
        let follow = match saved {
            Some(saved) => FollowState {
                cursor: saved.cursor,
                detector: BurstDetector::restored(Some(saved.detector), rule),
            },
            None => FollowState {
                cursor: ctx.store.last_seq() + 1,
                detector: BurstDetector::new(rule),
            },
        };
        ctx.metrics.halt_line_latched.set(i64::from(latch.latched));
        Ok(HaltLine {
            inner: Arc::new(Inner {
                tree,
                db: ctx.db,
                store: ctx.store,
                alarms: ctx.alarms,
                section: ctx.section,
                coil: ctx.coil,
                metrics: ctx.metrics,
                live: Mutex::new(Live {
                    alarm_behind: latch.latched,
                    latch,
                    follow,
                    coil_on: None,
                }),
                changed: tokio::sync::Notify::new(),
                order: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Whether the halt is latched (the coil held ON).
    pub fn latched(&self) -> bool {
        self.live().latch.latched
    }

    /// The state now.
    pub fn view(&self) -> HaltLineView {
        let live = self.live();
        let rule = live.follow.detector.rule();
        HaltLineView {
            latched: live.latch.latched,
            reason: live.latch.reason.clone(),
            since: live.latch.since,
            burst: live.latch.burst.clone(),
            reset_by: live.latch.reset_by.clone(),
            trips: live.latch.trips,
            coil: self.inner.coil,
            coil_on: live.coil_on,
            defects_in_window: live.follow.detector.defects(),
            classes: rule.classes.clone(),
            burst_defects: rule.burst_defects,
            within_parts: rule.within_parts,
        }
    }

    /// Latches the halt for `burst` at `at` (nothing when already latched): persists it,
    /// attaches the alert details, raises the alarm, and wakes the coil writer.
    pub async fn trip(&self, burst: Burst, at: DateTime<Utc>) -> Result<(), HaltLineError> {
        let _order = self.inner.order.lock().await;
        let follow = self.live().follow.clone();
        self.latch(burst, at, follow).await
    }

    /// An operator's reset at `at`: refused unless latched. The audit entry is written first;
    /// then the latch is cleared (and the burst window with it), the alarm returns and the
    /// coil goes OFF.
    pub async fn reset(
        &self,
        by: &Actor,
        comment: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<HaltLineView, HaltLineError> {
        if let Some(comment) = &comment {
            let n = comment.chars().count();
            if !(1..=MAX_COMMENT_CHARS).contains(&n) || comment.chars().any(char::is_control) {
                return Err(HaltLineError::BadComment);
            }
        }
        let _order = self.inner.order.lock().await;
        let (mut latch, mut follow) = {
            let live = self.live();
            (live.latch.clone(), live.follow.clone())
        };
        if !latch.latched {
            return Err(HaltLineError::NotLatched);
        }
        let target = match &comment {
            Some(comment) => format!("{HALT_LINE_ALARM}: {comment}"),
            None => HALT_LINE_ALARM.to_owned(),
        };
        self.inner
            .store
            .append(RecordBody::Audit(AuditRecord {
                actor: by.name.clone(),
                role: by.role.clone(),
                action: RESET_ACTION.into(),
                target,
            }))
            .await?;
        latch.latched = false;
        latch.reason = None;
        latch.burst = None;
        latch.since = Some(at);
        latch.reset_by = Some(by.name.clone());
        follow.detector.clear();
        self.persist(&latch, &follow)?;
        {
            let mut live = self.live();
            live.latch = latch;
            live.follow = follow;
            live.alarm_behind = true;
        }
        self.inner.metrics.halt_line_latched.set(0);
        tracing::warn!(by = %by.name, "halt line reset by an operator");
        self.sync_alarm(at).await;
        self.inner.changed.notify_one();
        Ok(self.view())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // Plain stores under the lock: a panic elsewhere cannot leave it half-changed.
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the latch and the follower's state in one atomic batch, flushed.
    fn persist(&self, latch: &Latch, follow: &FollowState) -> Result<(), HaltLineError> {
        let mut batch = sled::Batch::default();
        batch.insert(LATCH_KEY, serde_json::to_vec(latch).unwrap_or_default());
        batch.insert(FOLLOW_KEY, serde_json::to_vec(follow).unwrap_or_default());
        self.inner.tree.apply_batch(batch)?;
        self.inner.tree.flush()?;
        Ok(())
    }

    /// Latches with `follow` as the follower's state (the caller holds `order`).
    async fn latch(
        &self,
        burst: Burst,
        at: DateTime<Utc>,
        follow: FollowState,
    ) -> Result<(), HaltLineError> {
        let mut latch = self.live().latch.clone();
        if latch.latched {
            self.persist(&latch, &follow)?;
            self.live().follow = follow;
            return Ok(());
        }
        let rule = follow.detector.rule();
        let what = if rule.classes.is_empty() {
            "defects".to_owned()
        } else {
            format!("{} defects", rule.classes.join("/"))
        };
        let reason = format!(
            "{} {what} in the last {} parts (parts {}–{})",
            burst.defects, burst.parts, burst.first_part_id, burst.last_part_id
        );
        let details = AlertDetails {
            category: Some("quality_excursion".into()),
            evidence: vec![Evidence {
                feature: "defects".into(),
                value: Some(f64::from(burst.defects)),
                detail: Some(format!(
                    "{reason}; the rule: {} within {} parts",
                    rule.burst_defects, rule.within_parts
                )),
                ..Evidence::default()
            }],
            ..AlertDetails::default()
        };
        self.inner.db.put_alert_details(HALT_LINE_ALARM, &details)?;
        latch.latched = true;
        latch.reason = Some(reason.clone());
        latch.since = Some(at);
        latch.burst = Some(burst);
        latch.trips += 1;
        self.persist(&latch, &follow)?;
        {
            let mut live = self.live();
            live.latch = latch;
            live.follow = follow;
            live.alarm_behind = true;
        }
        self.inner.metrics.halt_line_trips.inc();
        self.inner.metrics.halt_line_latched.set(1);
        tracing::error!(%reason, "halt line latched");
        self.sync_alarm(at).await;
        self.inner.changed.notify_one();
        Ok(())
    }

    /// Brings the alarm to the latch's state when it is behind; a failure is logged and
    /// tried again by the loop.
    async fn sync_alarm(&self, at: DateTime<Utc>) {
        let (behind, latched, message) = {
            let live = self.live();
            let message = match (&live.latch.reason, &live.latch.reset_by) {
                (Some(reason), _) if live.latch.latched => reason.clone(),
                (_, Some(by)) => format!("reset by {by}"),
                _ => "reset".to_owned(),
            };
            (live.alarm_behind, live.latch.latched, message)
        };
        if !behind {
            return;
        }
        match self
            .inner
            .alarms
            .set_condition(HALT_LINE_ALARM, latched, at, &message)
            .await
        {
            Ok(_) => self.live().alarm_behind = false,
            Err(error) => tracing::warn!(%error, "cannot record the halt-line alarm; trying again"),
        }
    }

    /// Feeds the inspections recorded since the cursor to the detector, latching on a burst
    /// when not latched, until the journal's end.
    async fn step(&self) -> Result<(), HaltLineError> {
        let _order = self.inner.order.lock().await;
        loop {
            let follow = self.live().follow.clone();
            let before = follow.cursor;
            let store = self.inner.store.clone();
            let (follow, burst) = tokio::task::spawn_blocking(move || advance(&store, follow))
                .await
                .map_err(|e| RecordError::Sled(sled::Error::ReportableBug(e.to_string())))??;
            match burst {
                Some((burst, at)) => self.latch(burst, at, follow).await?,
                None if follow.cursor == before => return Ok(()),
                None => {
                    let latch = self.live().latch.clone();
                    self.persist(&latch, &follow)?;
                    self.live().follow = follow;
                    return Ok(());
                }
            }
        }
    }

    /// Writes the coil to the latch's state: ON when latched (every call when `reassert`),
    /// OFF once after a reset or at start.
    async fn drive_coil(&self, link: &mut GateLink, reassert: bool, failing: &mut bool) {
        let (latched, coil_on) = {
            let live = self.live();
            (live.latch.latched, live.coil_on)
        };
        let needed = if latched {
            reassert || coil_on != Some(true)
        } else {
            coil_on != Some(false)
        };
        if !needed {
            return;
        }
        match link.write_coil(self.inner.coil, latched).await {
            Ok(()) => {
                if *failing || coil_on != Some(latched) {
                    tracing::info!(
                        coil = self.inner.coil,
                        on = latched,
                        "halt-line coil written"
                    );
                }
                *failing = false;
                self.live().coil_on = Some(latched);
            }
            Err(error) => {
                if error.is_link_error() {
                    self.inner.metrics.plc_link_errors.inc();
                }
                if !*failing {
                    tracing::error!(%error, on = latched, "cannot write the halt-line coil; retrying");
                }
                *failing = true;
                self.live().coil_on = None;
            }
        }
    }
}

/// A burst and when the part that completed it was recorded.
type Tripped = (Burst, DateTime<Utc>);

/// Reads the inspections after `follow.cursor` into the detector (no lock held: the caller
/// orders steps). Stops after the first burst, so the latch is persisted with the cursor
/// just past the part that tripped it.
fn advance(
    store: &Store,
    mut follow: FollowState,
) -> Result<(FollowState, Option<Tripped>), HaltLineError> {
    let filter = Filter {
        kinds: vec![RecordKind::Inspection],
        ..Filter::default()
    };
    loop {
        let page = match store.pull(follow.cursor, PAGE, &filter) {
            Ok(page) => page,
            Err(RecordError::Pruned { first_seq, .. }) => {
                follow.cursor = first_seq;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        for raw in &page.records {
            let record = raw.decode()?;
            follow.cursor = record.seq + 1;
            let RecordBody::Inspection(inspection) = record.body else {
                continue;
            };
            let failed = inspection.verdict == Some(Verdict::Fail);
            if let Some(burst) = follow.detector.push(
                inspection.part_id,
                failed,
                inspection.defect_class.as_deref(),
            ) {
                return Ok((follow, Some((burst, record.recorded_at))));
            }
        }
        // Records the filter passed over are behind us too.
        follow.cursor = follow.cursor.max(page.next_seq);
        if !page.more {
            return Ok((follow, None));
        }
    }
}

fn read<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, ActionsError> {
    tree.get(key)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| ActionsError::Corrupt {
                key: format!("{TREE}/{}", String::from_utf8_lossy(key)),
                why: e.to_string(),
            })
        })
        .transpose()
}

/// Follows the journal into the burst detector and keeps the coil at the latch's state, until
/// `cancel`. `link` is a connection of its own to the PLC (a [`GateLink::sibling`]), so coil
/// writes never queue behind reject commands. On stop the coil is left as it is: a latched
/// halt outlives the station.
pub async fn run_halt_line(halt_line: HaltLine, mut link: GateLink, cancel: CancellationToken) {
    let reassert_every = Duration::from_millis(halt_line.inner.section.reassert_ms);
    let mut ticks = tokio::time::interval(reassert_every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut durable = halt_line.inner.store.subscribe();
    let mut failing = false;
    let mut reassert = true;
    loop {
        durable.borrow_and_update();
        if let Err(error) = halt_line.step().await {
            tracing::warn!(%error, "halt line could not read inspections; trying again");
        }
        halt_line.sync_alarm(Utc::now()).await;
        halt_line
            .drive_coil(&mut link, reassert, &mut failing)
            .await;
        reassert = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = halt_line.inner.changed.notified() => {}
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticks.tick() => reassert = true,
        }
    }
}

#[cfg(test)]
mod tests;
