//! The station's MES view: what the quality records and the sensor data say together.
//!
//! Sits between [`crate::record`] (and [`crate::sense`]) and [`crate::serve`]: it reads records
//! and samples, never the live path, so nothing here can delay a verdict or a reject.
//!
//! - [`actions`]: what alarms set off: webhooks (alerts to a CMMS) and the latched
//!   halt-line coil;
//! - [`alarms`]: the ISA-18.2 alarm life cycle over tags, KPIs, chart rules and the station;
//! - [`drift`]: whether the live model still fits the parts (inputs, scores, operator flags
//!   and shadow disagreements against its training), the `model_drift` alarm;
//! - [`charts`]: the named control charts of the station TOML (`[[charts]]`) and how a chart
//!   is computed from the production counts or a tag's good samples;
//! - [`maintenance`]: maintenance alerts (remaining useful life, degradation trends);
//! - [`production`]: per-minute production counts, folded from the journal by
//!   [`run_production_counter`] into `<data_dir>/analysis`, exactly once;
//! - [`shifts`]: the shift calendar of the station TOML (planned busy time);
//! - [`kpi`]: ISO 22400-2 KPIs, the defect Pareto and the production series over those counts
//!   (pure functions);
//! - [`spc`]: control charts (p, Laney p′, u, I-MR, X̄-R/S, EWMA, CUSUM), Western Electric and
//!   Nelson rules, Cp/Cpk (pure functions);
//! - [`rootcause`]: which tags and settings move with a defect class (binned lift with
//!   Benjamini–Hochberg, derived quantities, a random forest's importance and interactions).
//! - [`schedule`]: each open work order's ETA, slack and critical ratio at the line's recent
//!   rate and yield, and what a stop, a slowdown or a defect excursion did to its lateness;
//! - [`maintenance`]: defect and sensor patterns that point at equipment.

pub mod actions;
pub mod alarms;
pub mod charts;
pub mod drift;
pub mod kpi;
pub mod maintenance;
pub mod monitor;
pub mod production;
pub mod rootcause;
pub mod schedule;
pub mod shifts;
pub mod spc;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use charts::{ChartDefinition, ChartError, ChartSources, evaluate, latest_violation};
pub use kpi::{
    KpiInput, KpiReport, Pareto, Period, ProductionPlan, Range, Resolution, WorkOrderSpan,
};
pub use production::{Counts, MinuteBucket, ProductionCounts, run_production_counter};
pub use shifts::ShiftCalendar;

/// Why analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyseError {
    #[error("analysis database {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("analysis database: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Sensors(#[from] crate::sense::SenseError),
    #[error("production counts of minute {minute} are corrupt: {why}")]
    Corrupt { minute: i64, why: String },
}

/// What the KPI routes read: the counts and the plan they are measured against.
#[derive(Debug, Clone)]
pub struct Production {
    pub counts: ProductionCounts,
    pub plan: Arc<ProductionPlan>,
}

/// The range `[from, to)` as KPIs measure it: nothing before the oldest record (a new station
/// has no past to judge), nothing after `as_of` (parts still on their way to the record).
pub fn measured_range(
    store: &crate::record::Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    as_of: DateTime<Utc>,
) -> Range {
    let measured = measured_since(store).unwrap_or(to);
    Range::new(from.max(measured).min(to), to, as_of)
}

/// Every work order the store knows, with when it ran.
pub fn work_order_spans(store: &crate::record::Store) -> Vec<WorkOrderSpan> {
    store
        .work_orders()
        .iter()
        .map(WorkOrderSpan::from_state)
        .collect()
}

/// When the station's measured time begins: the oldest record it keeps. Time before it is
/// neither planned nor down (the station was not there to see it), so a new station does not
/// report the day before it started as a stop.
pub fn measured_since(store: &crate::record::Store) -> Option<DateTime<Utc>> {
    store
        .record(store.first_seq())
        .ok()
        .flatten()
        .map(|r| r.recorded_at)
}

/// A stretch of time, `[from, to)`.
pub type Interval = (DateTime<Utc>, DateTime<Utc>);

/// How far before a range the running tag is read, to know whether the range starts stopped.
const RUNNING_LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl Production {
    /// Reads what the KPIs of `range` need (the minute buckets and the running tag's stops,
    /// beside the stops seen as minutes without parts) and answers from it. Blocking.
    pub fn with_input<T>(
        &self,
        sensors: Option<&crate::sense::Sensors>,
        work_orders: &[WorkOrderSpan],
        range: Range,
        answer: impl FnOnce(KpiInput) -> T,
    ) -> Result<T, AnalyseError> {
        let buckets = self.counts.buckets(range.from_minute, range.to_minute)?;
        let stops = self.sensor_stops(sensors, range.from(), range.to())?;
        Ok(answer(KpiInput {
            plan: &self.plan,
            buckets: &buckets,
            work_orders,
            external_stops: &stops,
        }))
    }

    /// The stretches of `[from, to)` in which the plan's running tag said the line was stopped
    /// (good samples below 0.5). A stop runs from its first stopped sample to the first running
    /// one; one still open ends at the newest sample (nothing is assumed past the data). No
    /// running tag, or no sensor data: none.
    pub fn sensor_stops(
        &self,
        sensors: Option<&crate::sense::Sensors>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Interval>, crate::sense::SenseError> {
        let (Some(tag), Some(sensors)) = (&self.plan.running_tag, sensors) else {
            return Ok(Vec::new());
        };
        let series = sensors.store.read(tag, from - RUNNING_LOOKBACK, to)?;
        let mut stops = Vec::new();
        let mut stopped_since: Option<i64> = None;
        let mut last = None;
        for ((&t, &v), flag) in series.t.iter().zip(&series.v).zip(&series.flag) {
            if !flag.is_good() {
                continue;
            }
            last = Some(t);
            match (stopped_since, v < 0.5) {
                (None, true) => stopped_since = Some(t),
                (Some(start), false) => {
                    stops.push((start, t));
                    stopped_since = None;
                }
                _ => {}
            }
        }
        if let (Some(start), Some(end)) = (stopped_since, last) {
            stops.push((start, end));
        }
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        Ok(stops
            .into_iter()
            .filter_map(|(a, b)| {
                let (a, b) = (a.max(from_ms), b.min(to_ms));
                (a < b).then(|| {
                    Some((
                        DateTime::from_timestamp_millis(a)?,
                        DateTime::from_timestamp_millis(b)?,
                    ))
                })?
            })
            .collect())
    }
}
