//! The station's MES view: what the quality records and the sensor data say together.
//!
//! Sits between [`crate::record`] (and [`crate::sense`]) and [`crate::serve`]: it reads records
//! and samples, never the live path, so nothing here can delay a verdict or a reject.
//!
//! - [`alarms`]: the ISA-18.2 alarm life cycle over tags, KPIs, chart rules and the station;
//! - [`charts`]: the named control charts of the station TOML (`[[charts]]`) and how a chart
//!   is computed from the production counts or a tag's good samples;
//! - [`production`]: per-minute production counts, folded from the journal by
//!   [`run_production_counter`] into `<data_dir>/analysis`, exactly once;
//! - [`shifts`]: the shift calendar of the station TOML (planned busy time);
//! - [`kpi`]: ISO 22400-2 KPIs, the defect Pareto and the production series over those counts
//!   (pure functions);
//! - [`spc`]: control charts (p, Laney p′, u, I-MR, X̄-R/S, EWMA, CUSUM), Western Electric and
//!   Nelson rules, Cp/Cpk (pure functions).

pub mod alarms;
pub mod charts;
pub mod kpi;
pub mod production;
pub mod shifts;
pub mod spc;

use std::path::PathBuf;
use std::sync::Arc;

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
    #[error("production counts of minute {minute} are corrupt: {why}")]
    Corrupt { minute: i64, why: String },
}

/// What the KPI routes read: the counts and the plan they are measured against.
#[derive(Debug, Clone)]
pub struct Production {
    pub counts: ProductionCounts,
    pub plan: Arc<ProductionPlan>,
}
