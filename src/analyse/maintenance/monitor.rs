//! The maintenance monitor: turns the `[[maintenance]]` watches into alarm conditions while the
//! station runs, and keeps what it last saw for the API.
//!
//! Every round it fits each trend watch's tag (since the last point in the watch's history
//! where the tag read about as healthy as it ever did: a repair resets the wear; samples taken while the line stood still are left out,
//! as a stopped machine's vibration or power reads like a new one) and forecasts when it reaches the failure limit; the
//! watch's alarm is active while the forecast's early end is within `warn_within_h`. A
//! repeating-defect watch searches the last parts for a defect recurring at one place every N
//! parts. It also finds the change points of every tag's recent per-minute means, the "what
//! changed" an engineer reads beside root cause. It reads the stores, never the live path; a
//! round that fails is logged and tried again.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::repeat::{self, PartDefect, RepeatPattern};
use super::trend::{self, Direction, Forecast};
use super::watch::{MaintenanceWatch, Watched};
use crate::analyse::alarms::AlarmManager;
use crate::record::Store;
use crate::sense::Sensors;

/// How often the watches are evaluated.
pub const EVERY: Duration = Duration::from_secs(15);
/// Histories up to this long are fitted on raw samples; longer ones on per-minute means.
const RAW_UP_TO: TimeDelta = TimeDelta::hours(2);
/// Parts searched for repeating defects.
const REPEAT_PARTS: usize = 2000;
/// Change points are looked for in this much of every tag's per-minute means.
const CHANGE_WINDOW: TimeDelta = TimeDelta::hours(8);
/// Change points kept per tag, newest first.
const CHANGES_PER_TAG: usize = 3;

/// What one watch last saw.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub name: String,
    pub equipment: String,
    /// The tag of a trend watch.
    pub tag: Option<String>,
    /// Whether the watch's condition holds (its alarm follows, with ISA-18.2's delays).
    pub active: bool,
    /// What the alarm says, or why the watch is quiet.
    pub message: String,
    pub forecast: Option<Forecast>,
    pub pattern: Option<RepeatPattern>,
    pub evaluated_at: DateTime<Utc>,
}

/// A shift in one tag's level.
#[derive(Debug, Clone, Serialize)]
pub struct TagChange {
    pub tag: String,
    pub at: DateTime<Utc>,
    pub before: f64,
    pub after: f64,
    pub sentence: String,
}

/// What the monitor last saw; the API reads it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceView {
    pub watches: Vec<WatchStatus>,
    pub changes: Vec<TagChange>,
    pub evaluated_at: Option<DateTime<Utc>>,
}

/// The monitor's latest view, shared with the API. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LatestMaintenance(Arc<RwLock<MaintenanceView>>);

impl LatestMaintenance {
    pub fn get(&self) -> MaintenanceView {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, view: MaintenanceView) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = view;
    }
}

/// Everything the maintenance monitor reads and whom it tells.
pub struct MaintenanceMonitor {
    pub alarms: AlarmManager,
    pub sensors: Sensors,
    pub store: Store,
    pub watches: Arc<Vec<MaintenanceWatch>>,
    /// The tag that reads 1 while the line runs (`[production] running_tag`), if any.
    pub running_tag: Option<String>,
    pub latest: LatestMaintenance,
    pub now: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl MaintenanceMonitor {
    /// Evaluates the watches every [`EVERY`] until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = (self.now)();
            let (sensors, store, watches, running_tag) = (
                self.sensors.clone(),
                self.store.clone(),
                self.watches.clone(),
                self.running_tag.clone(),
            );
            let round = tokio::task::spawn_blocking(move || {
                evaluate(&sensors, &store, &watches, running_tag.as_deref(), now)
            })
            .await;
            let view = match round {
                Ok(view) => view,
                Err(error) => {
                    tracing::warn!(%error, "maintenance round failed");
                    continue;
                }
            };
            for status in &view.watches {
                if let Err(error) = self
                    .alarms
                    .set_condition(&status.name, status.active, now, &status.message)
                    .await
                {
                    tracing::warn!(watch = %status.name, %error, "maintenance alarm not set");
                }
            }
            self.latest.set(view);
        }
    }
}

/// Every watch's status and every tag's recent change points at `now`; `running_tag` reads 1
/// while the line runs. Blocking.
pub fn evaluate(
    sensors: &Sensors,
    store: &Store,
    watches: &[MaintenanceWatch],
    running_tag: Option<&str>,
    now: DateTime<Utc>,
) -> MaintenanceView {
    let watches = watches
        .iter()
        .map(|watch| {
            let mut status = WatchStatus {
                name: watch.name.clone(),
                equipment: watch.equipment.clone(),
                tag: watch.tag.clone(),
                active: false,
                message: String::new(),
                forecast: None,
                pattern: None,
                evaluated_at: now,
            };
            match watch.watched() {
                Some(Watched::Trend { tag, limit, above }) => {
                    let trend = TrendWatch {
                        tag,
                        limit,
                        above,
                        running_tag,
                    };
                    trend_status(sensors, watch, trend, now, &mut status)
                }
                Some(Watched::RepeatingDefects) => repeat_status(store, watch, &mut status),
                None => status.message = "not a valid watch".into(),
            }
            status
        })
        .collect();
    MaintenanceView {
        watches,
        changes: tag_changes(sensors, now),
        evaluated_at: Some(now),
    }
}

/// What a trend watch fits.
#[derive(Clone, Copy)]
struct TrendWatch<'a> {
    tag: &'a str,
    limit: f64,
    above: bool,
    running_tag: Option<&'a str>,
}

fn trend_status(
    sensors: &Sensors,
    watch: &MaintenanceWatch,
    trend_watch: TrendWatch<'_>,
    now: DateTime<Utc>,
    status: &mut WatchStatus,
) {
    let TrendWatch {
        tag,
        limit,
        above,
        running_tag,
    } = trend_watch;
    let history = TimeDelta::milliseconds((watch.history_h * 3_600_000.0) as i64);
    let raw = history <= RAW_UP_TO;
    let samples = match history_of(sensors, tag, now - history, now, raw) {
        Ok(samples) => samples,
        Err(error) => {
            status.message = format!("{tag} could not be read: {error}");
            return;
        }
    };
    let samples = match running_tag.filter(|running| *running != tag) {
        Some(running) => match history_of(sensors, running, now - history, now, raw) {
            Ok(flags) => while_running(samples, &flags, raw),
            Err(error) => {
                status.message = format!("{running} could not be read: {error}");
                return;
            }
        },
        None => samples,
    };
    let direction = if above {
        Direction::Rising
    } else {
        Direction::Falling
    };
    let since_repair = since_healthiest(&samples, above);
    let unit = sensors
        .tag(tag)
        .map(|t| t.unit.clone())
        .filter(|u| !u.is_empty())
        .map(|u| format!(" {u}"))
        .unwrap_or_default();
    let side = if above { "above" } else { "below" };
    let Some(forecast) = trend::forecast(since_repair, limit, direction) else {
        status.message = format!(
            "{}: no {tag} trend towards failure ({side} {limit}{unit}) in the last {} h",
            watch.equipment, watch.history_h
        );
        return;
    };
    status.active = forecast.low <= watch.warn_within_h;
    let when = match forecast.high {
        Some(high) => format!("{}–{}", duration_text(forecast.low), duration_text(high)),
        None => format!("{} or later", duration_text(forecast.low)),
    };
    status.message = format!(
        "{}: {tag} trend consistent with failure ({side} {limit}{unit}) in {when}; {}",
        watch.equipment,
        forecast.describe(duration_text)
    );
    status.forecast = Some(forecast);
}

/// `(hours since from, value)` of the tag's good samples (or per-minute means).
fn history_of(
    sensors: &Sensors,
    tag: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    raw: bool,
) -> Result<Vec<(f64, f64)>, crate::sense::SenseError> {
    let origin = from.timestamp_millis();
    let hours = |ms: i64| (ms - origin) as f64 / 3_600_000.0;
    if raw {
        let series = sensors.store.read(tag, from, to)?;
        Ok(series
            .t
            .iter()
            .zip(&series.v)
            .zip(&series.flag)
            .filter(|(_, flag)| flag.is_good())
            .map(|((&t, &v), _)| (hours(t), v))
            .collect())
    } else {
        Ok(sensors
            .store
            .read_minutes(tag, from, to)?
            .iter()
            .filter_map(|m| Some((hours(m.start_ms + 30_000), m.mean?)))
            .collect())
    }
}

/// The samples taken while the line ran: at a raw sample, the running flag's latest reading
/// before it is 1; a minute mean, one whose minute ran throughout. A time before the flag's
/// first reading is kept (nothing says the line stood).
fn while_running(samples: Vec<(f64, f64)>, flags: &[(f64, f64)], raw: bool) -> Vec<(f64, f64)> {
    if flags.is_empty() {
        return samples;
    }
    let running = |flag: f64| if raw { flag >= 0.5 } else { flag >= 0.999 };
    let readings: Vec<(f64, bool)> = flags.iter().map(|&(t, v)| (t, running(v))).collect();
    let keep = crate::sense::running_at(samples.iter().map(|s| s.0), &readings);
    samples
        .into_iter()
        .zip(keep)
        .filter_map(|(sample, keep)| keep.then_some(sample))
        .collect()
}

/// The samples since the equipment was last at its healthiest: the last point whose running
/// median of five (so one low reading does not cut the history) is within a twentieth of the
/// history's span of its healthiest median (the lowest for a failure above, the highest for one
/// below). The last, not the healthiest: right after a repair the new start and the old one
/// read alike, and a fit reaching back across the repair to the old start would see the
/// whole worn-out ramp as the trend.
fn since_healthiest(samples: &[(f64, f64)], above: bool) -> &[(f64, f64)] {
    if samples.len() < 5 {
        return samples;
    }
    let medians: Vec<f64> = samples
        .windows(5)
        .map(|window| {
            let mut values: Vec<f64> = window.iter().map(|s| s.1).collect();
            values.sort_by(f64::total_cmp);
            values[2]
        })
        .collect();
    let (low, high) = medians
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
            (lo.min(*m), hi.max(*m))
        });
    let tolerance = (high - low) / 20.0;
    let healthy = |m: f64| {
        if above {
            m <= low + tolerance
        } else {
            m >= high - tolerance
        }
    };
    let last = medians.iter().rposition(|m| healthy(*m)).unwrap_or(0);
    &samples[last + 2..]
}

/// Hours as a person says them: "40 min", "3.5 h", "2.1 days".
fn duration_text(hours: f64) -> String {
    if hours < 1.0 {
        format!("{:.0} min", (hours * 60.0).max(0.0))
    } else if hours < 48.0 {
        format!("{hours:.1} h")
    } else {
        format!("{:.1} days", hours / 24.0)
    }
}

fn repeat_status(store: &Store, watch: &MaintenanceWatch, status: &mut WatchStatus) {
    let inspections = match store.inspection_records(None, REPEAT_PARTS) {
        Ok(inspections) => inspections,
        Err(error) => {
            status.message = format!("inspections could not be read: {error}");
            return;
        }
    };
    let parts: Vec<PartDefect> = inspections
        .iter()
        .rev()
        .map(|inspection| PartDefect {
            part_index: inspection.part_id,
            defective: inspection.verdict == Some(crate::part::Verdict::Fail),
            at: inspection
                .defect_at
                .map(|p| (f64::from(p.x), f64::from(p.y))),
        })
        .collect();
    match repeat::find(&parts, &repeat::Settings::default()) {
        Ok(Some(pattern)) => {
            status.active = true;
            status.message = format!("{}: {}", watch.equipment, pattern.message);
            status.pattern = Some(pattern);
        }
        Ok(None) => {
            status.message = format!(
                "{}: no defect repeats at one place in the last {} parts",
                watch.equipment,
                parts.len()
            );
        }
        Err(error) => status.message = error.to_string(),
    }
}

/// The change points of every tag's per-minute means over the last [`CHANGE_WINDOW`].
fn tag_changes(sensors: &Sensors, now: DateTime<Utc>) -> Vec<TagChange> {
    let mut changes = Vec::new();
    for tag in sensors.tags.iter() {
        let Ok(minutes) = sensors
            .store
            .read_minutes(&tag.name, now - CHANGE_WINDOW, now)
        else {
            continue;
        };
        let (times, means): (Vec<i64>, Vec<f64>) = minutes
            .iter()
            .filter_map(|m| Some((m.start_ms, m.mean?)))
            .unzip();
        let Ok(found) =
            super::changepoint::detect(&means, &super::changepoint::Settings::default())
        else {
            continue;
        };
        // The newest few: what changed lately is what an engineer asks about.
        for change in found.iter().rev().take(CHANGES_PER_TAG) {
            let Some(at) = times
                .get(change.index)
                .and_then(|&ms| DateTime::from_timestamp_millis(ms))
            else {
                continue;
            };
            let unit = if tag.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", tag.unit)
            };
            changes.push(TagChange {
                tag: tag.name.clone(),
                at,
                before: change.before.mean,
                after: change.after.mean,
                sentence: format!(
                    "{} shifted from {:.3}{unit} to {:.3}{unit} at {}",
                    tag.name,
                    change.before.mean,
                    change.after.mean,
                    at.format("%H:%M UTC")
                ),
            });
        }
    }
    changes
}
