//! The station's own root cause: every inspected part lined up with the sensor values that
//! acted on it, then handed to the engine ([`super::analyse`]) once per defect class and once
//! for rejects overall.
//!
//! A part the camera saw at `t` passed a tag's sensor at `t − transport delay` (the tag's
//! `transport_delay_ms`, or its `distance_mm` over the belt speed), so the value that acted on
//! it is the newest good sample at or before that moment. Samples older than a few periods say
//! nothing about the part (the source was lost, the line stood): the part then has no value for
//! that tag (missing, not zero). Only parts the model judged count; parts rejected by policy
//! without a verdict carry no evidence about defects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Analysis, Column, ColumnValues, Settings, Table, Target};
use crate::analyse::AnalyseError;
use crate::record::Store;
use crate::sense::{Sensors, Series};

pub use super::window::{DEFAULT_MAX_PARTS, Window, inspected_parts};

/// The name of the target that is any defect at all.
pub const REJECTS: &str = "rejects";

/// One judged part, as root cause sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedPart {
    pub part_id: u64,
    /// When the camera saw it, ms since the epoch.
    pub captured_ms: i64,
    pub work_order: Option<Arc<str>>,
    pub product: Option<Arc<str>>,
    /// Its defect class when defective (a label overrides the model), else `None`.
    pub defect: Option<Arc<str>>,
}

/// One tag's good samples and where its sensor sits.
#[derive(Debug, Clone)]
pub struct TagTrace {
    pub name: String,
    pub unit: Option<String>,
    /// How long before the camera a part passed the sensor.
    pub delay_ms: i64,
    /// A sample older than this at the moment a part passed says nothing about the part.
    pub max_age_ms: i64,
    /// Good samples only, oldest first.
    pub t: Vec<i64>,
    pub v: Vec<f64>,
}

impl TagTrace {
    /// The good samples of `series`.
    pub fn from_series(
        name: &str,
        unit: Option<String>,
        delay: Duration,
        period: Duration,
        series: &Series,
    ) -> TagTrace {
        let mut trace = TagTrace {
            name: name.to_owned(),
            unit,
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            max_age_ms: max_age(period),
            t: Vec::with_capacity(series.len()),
            v: Vec::with_capacity(series.len()),
        };
        for ((&t, &v), flag) in series.t.iter().zip(&series.v).zip(&series.flag) {
            if flag.is_good() && v.is_finite() {
                trace.t.push(t);
                trace.v.push(v);
            }
        }
        trace
    }
}

/// Three sampling periods, and never under five seconds: a poll that came a little late still
/// describes the part; one that stopped coming does not.
fn max_age(period: Duration) -> i64 {
    let three = i64::try_from(period.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
    three.max(5_000)
}

/// Each part's value of each tag, as a table the engine reads, plus the product (a setting an
/// engineer checks first) when parts of more than one product are in it. `parts` must be
/// oldest first.
pub fn line_up(parts: &[InspectedPart], tags: &[TagTrace]) -> Table {
    let mut columns: Vec<Column> = tags
        .iter()
        .map(|tag| Column {
            name: tag.name.clone(),
            unit: tag.unit.clone(),
            values: ColumnValues::Numeric(values_at(parts, tag)),
        })
        .collect();
    let mut levels: BTreeMap<&str, u32> = BTreeMap::new();
    for part in parts {
        let next = levels.len() as u32;
        levels
            .entry(part.product.as_deref().unwrap_or("none"))
            .or_insert(next);
    }
    if levels.len() > 1 {
        let codes = parts
            .iter()
            .map(|p| Some(levels[p.product.as_deref().unwrap_or("none")]))
            .collect();
        let mut named: Vec<(&str, u32)> = levels.into_iter().collect();
        named.sort_by_key(|&(_, code)| code);
        columns.push(Column {
            name: "product".into(),
            unit: None,
            values: ColumnValues::Categorical {
                levels: named.into_iter().map(|(l, _)| l.to_owned()).collect(),
                codes,
            },
        });
    }
    Table {
        rows: parts.len(),
        columns,
    }
}

/// The value of `tag` that acted on each part (NaN: none known). One pass over both, as both
/// are in time order.
fn values_at(parts: &[InspectedPart], tag: &TagTrace) -> Vec<f64> {
    let mut values = Vec::with_capacity(parts.len());
    let mut next = 0; // the first sample after the moment looked at
    for part in parts {
        let passed = part.captured_ms.saturating_sub(tag.delay_ms);
        while next < tag.t.len() && tag.t[next] <= passed {
            next += 1;
        }
        let value = match next.checked_sub(1) {
            Some(i) if passed - tag.t[i] <= tag.max_age_ms => tag.v[i],
            _ => f64::NAN,
        };
        values.push(value);
    }
    values
}

/// What one analysis covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scope {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this work order's parts.
    pub work_order: Option<String>,
}

/// The good samples of every configured tag that could have acted on a part of `parts`,
/// without those taken while `running_tag` read 0: a stopped line's readings (a roller's
/// vibration at rest) describe no process state a part went through. Blocking.
pub fn tag_traces(
    sensors: &Sensors,
    parts: &[InspectedPart],
    running_tag: Option<&str>,
) -> Result<Vec<TagTrace>, AnalyseError> {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return Ok(Vec::new());
    };
    let belt = sensors.settings.belt_speed_mm_s;
    let mut traces = Vec::new();
    for tag in sensors.tags.iter() {
        // A tag with no place on the line (no delay, no distance) acts at the camera.
        let delay = tag.transport_delay(belt).unwrap_or(Duration::ZERO);
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let lookback = delay_ms.saturating_add(max_age(tag.period()));
        let (Some(from), Some(to)) = (
            DateTime::from_timestamp_millis(first.captured_ms.saturating_sub(lookback)),
            DateTime::from_timestamp_millis(last.captured_ms.saturating_add(1)),
        ) else {
            continue;
        };
        let series = sensors.store.read(&tag.name, from, to)?;
        let unit = (!tag.unit.is_empty()).then(|| tag.unit.clone());
        let mut trace = TagTrace::from_series(&tag.name, unit, delay, tag.period(), &series);
        if let Some(running) = running_tag.filter(|running| *running != tag.name)
            && sensors.tag(running).is_some()
        {
            let flags = sensors.store.read(running, from, to)?;
            keep_while_running(&mut trace, &flags);
        }
        traces.push(trace);
    }
    Ok(traces)
}

/// Drops the samples of `trace` taken while the running flag's latest good reading before
/// them was 0 (a time before its first reading is kept: nothing says the line stood).
fn keep_while_running(trace: &mut TagTrace, flags: &crate::sense::Series) {
    let readings: Vec<(i64, bool)> = flags
        .t
        .iter()
        .zip(&flags.v)
        .zip(&flags.flag)
        .filter(|(_, flag)| flag.is_good())
        .map(|((&t, &v), _)| (t, v >= 0.5))
        .collect();
    if readings.is_empty() {
        return;
    }
    let keep = crate::sense::running_at(trace.t.iter().copied(), &readings);
    let mut kept = keep.iter();
    trace.v.retain(|_| *kept.next().unwrap_or(&true));
    let mut kept = keep.iter();
    trace.t.retain(|_| *kept.next().unwrap_or(&true));
}

/// How a tag took part in an analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagUse {
    pub name: String,
    /// Camera time minus this is when a part passed the sensor.
    pub delay_ms: i64,
    /// Good samples read.
    pub samples: usize,
    /// Parts with a known value of it.
    pub parts_with_value: usize,
}

/// The root cause of one target (a defect class, or rejects overall) over a scope.
#[derive(Debug, Clone, Serialize)]
pub struct TargetOutcome {
    /// A defect class, or [`REJECTS`].
    pub target: String,
    /// Parts with it.
    pub positives: usize,
    pub analysis: Option<Analysis>,
    /// Why there is no analysis (too few parts with it, nothing to analyse).
    pub note: Option<String>,
}

/// The station's root cause over a scope: every target's findings and what went in.
#[derive(Debug, Clone, Serialize)]
pub struct StationRootCause {
    pub scope: Scope,
    pub computed_at: DateTime<Utc>,
    /// Judged parts analysed.
    pub parts: usize,
    /// The parts analysed are one in this many of the scope's (1: all of them): a scope with
    /// more than `root_cause.max_parts` parts is read as a uniform sample.
    pub sampled_one_in: u64,
    pub tags: Vec<TagUse>,
    pub targets: Vec<TargetOutcome>,
}

/// Fewest parts with a defect class for it to be analysed on its own: with fewer, no lift
/// could be told from chance.
pub const MIN_POSITIVES: usize = 10;

/// Lines `parts` (oldest first) up with `traces` and runs the engine on rejects overall and on
/// every defect class with at least [`MIN_POSITIVES`] parts. CPU-bound; call it off the async
/// threads.
pub fn analyse_parts(
    parts: &[InspectedPart],
    traces: &[TagTrace],
    scope: Scope,
    settings: &Settings,
    computed_at: DateTime<Utc>,
) -> StationRootCause {
    analyse_sample(parts, 1, traces, scope, settings, computed_at)
}

/// [`analyse_parts`] of a sample that holds one in `sampled_one_in` of the scope's parts.
pub fn analyse_sample(
    parts: &[InspectedPart],
    sampled_one_in: u64,
    traces: &[TagTrace],
    scope: Scope,
    settings: &Settings,
    computed_at: DateTime<Utc>,
) -> StationRootCause {
    let table = line_up(parts, traces);
    let tags = traces
        .iter()
        .zip(&table.columns)
        .map(|(trace, column)| TagUse {
            name: trace.name.clone(),
            delay_ms: trace.delay_ms,
            samples: trace.t.len(),
            parts_with_value: match &column.values {
                ColumnValues::Numeric(values) => values.iter().filter(|v| v.is_finite()).count(),
                ColumnValues::Categorical { codes, .. } => codes.iter().flatten().count(),
            },
        })
        .collect();
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for defect in parts.iter().filter_map(|p| p.defect.as_deref()) {
        *classes.entry(defect).or_default() += 1;
    }
    let mut wanted: Vec<(String, Vec<bool>)> = vec![(
        REJECTS.to_owned(),
        parts.iter().map(|p| p.defect.is_some()).collect(),
    )];
    // With one class, it is the rejects: analysed once.
    if classes.len() > 1 {
        for &class in classes.keys() {
            wanted.push((
                class.to_owned(),
                parts
                    .iter()
                    .map(|p| p.defect.as_deref() == Some(class))
                    .collect(),
            ));
        }
    }
    let targets = wanted
        .into_iter()
        .map(|(name, positive)| {
            let positives = positive.iter().filter(|&&p| p).count();
            if positives < MIN_POSITIVES {
                return TargetOutcome {
                    target: name,
                    positives,
                    analysis: None,
                    note: Some(format!(
                        "{positives} parts with it; at least {MIN_POSITIVES} are needed"
                    )),
                };
            }
            let target = Target {
                name: name.clone(),
                positive,
            };
            match super::analyse(&table, &target, settings) {
                Ok(mut analysis) => {
                    decorate(&mut analysis, traces, &scope);
                    TargetOutcome {
                        target: name,
                        positives,
                        analysis: Some(analysis),
                        note: None,
                    }
                }
                Err(error) => TargetOutcome {
                    target: name,
                    positives,
                    analysis: None,
                    note: Some(error.to_string()),
                },
            }
        })
        .collect();
    StationRootCause {
        scope,
        computed_at,
        parts: parts.len(),
        sampled_one_in,
        tags,
        targets,
    }
}

/// Reads the scope's parts (at most `max_parts`, a uniform sample beyond) and samples and
/// analyses them; `running_tag` reads 1 while the line runs. Blocking.
pub fn analyse_scope(
    store: &Store,
    sensors: &Sensors,
    running_tag: Option<&str>,
    scope: Scope,
    max_parts: usize,
    settings: &Settings,
    computed_at: DateTime<Utc>,
) -> Result<StationRootCause, AnalyseError> {
    let (parts, one_in) = inspected_parts(store, &scope, max_parts)?;
    let traces = tag_traces(sensors, &parts, running_tag)?;
    Ok(analyse_sample(
        &parts,
        one_in,
        &traces,
        scope,
        settings,
        computed_at,
    ))
}

/// Fills what only the station knows into each finding: how long before inspection the named
/// tags acted on the parts, and the chart of the first tag over the scope.
fn decorate(analysis: &mut Analysis, traces: &[TagTrace], scope: &Scope) {
    for finding in &mut analysis.findings {
        let named: Vec<&TagTrace> = finding
            .features
            .iter()
            .filter_map(|f| traces.iter().find(|t| &t.name == f))
            .collect();
        let Some(first) = named.first() else {
            continue;
        };
        // One lag per finding: the tags of an interaction usually sit at one place; if not,
        // the sentence names the longest.
        let lag_ms = named.iter().map(|t| t.delay_ms).max().unwrap_or(0);
        finding.lag_s = (lag_ms > 0).then_some(lag_ms as f64 / 1000.0);
        finding.chart = Some(format!(
            "/api/v1/tags/{}/chart?from={}&to={}",
            first.name,
            scope
                .from
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            scope.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
        finding.sentence = finding.describe();
    }
}

/// How the station runs root cause (`[root_cause]` in the station TOML).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootCauseSection {
    /// The sliding window analysed continuously, in hours.
    #[serde(default = "default_window_hours")]
    pub window_hours: f64,
    /// How often the window is analysed again, in seconds.
    #[serde(default = "default_every_s")]
    pub every_s: u64,
    /// Most parts one analysis reads; a window or scope with more is read as a uniform sample
    /// (one part in 2, 4, 8 …), which bounds a round's memory and time at any line rate.
    #[serde(default = "default_max_parts")]
    pub max_parts: usize,
}

fn default_max_parts() -> usize {
    DEFAULT_MAX_PARTS
}

fn default_window_hours() -> f64 {
    8.0
}

fn default_every_s() -> u64 {
    300
}

impl Default for RootCauseSection {
    fn default() -> RootCauseSection {
        RootCauseSection {
            window_hours: default_window_hours(),
            every_s: default_every_s(),
            max_parts: default_max_parts(),
        }
    }
}

impl RootCauseSection {
    /// Every problem, as `(field, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.window_hours.is_finite() && (0.1..=24.0 * 31.0).contains(&self.window_hours)) {
            problems.push((
                "root_cause.window_hours".into(),
                format!("expected 0.1 to 744 hours, got {}", self.window_hours),
            ));
        }
        if !(10..=86_400).contains(&self.every_s) {
            problems.push((
                "root_cause.every_s".into(),
                format!("expected 10 to 86400 seconds, got {}", self.every_s),
            ));
        }
        if !(1_000..=5_000_000).contains(&self.max_parts) {
            problems.push((
                "root_cause.max_parts".into(),
                format!("expected 1000 to 5000000 parts, got {}", self.max_parts),
            ));
        }
        problems
    }

    /// The sliding window as a span.
    pub fn window(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::milliseconds((self.window_hours * 3_600_000.0) as i64)
    }
}

/// The newest analysis of the sliding window, shared between the runner and the API.
#[derive(Debug, Clone, Default)]
pub struct LatestRootCause(
    std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<StationRootCause>>>>,
);

impl LatestRootCause {
    /// The newest analysis, if one has finished.
    pub fn get(&self) -> Option<std::sync::Arc<StationRootCause>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, analysis: StationRootCause) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::sync::Arc::new(analysis));
    }
}

/// Analyses the last `window_hours` every `every_s` until `cancel`, publishing each result in
/// `latest`. A failed round is logged and tried again at the next.
pub async fn run_root_cause(
    store: Store,
    sensors: Sensors,
    running_tag: Option<String>,
    section: RootCauseSection,
    latest: LatestRootCause,
    now: impl Fn() -> DateTime<Utc> + Send + 'static,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(section.every_s));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Kept between rounds, so each reads only what was recorded since the one before.
    let mut window = Some(Window::new(section.max_parts));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let to = now();
        let scope = Scope {
            from: to - section.window(),
            to,
            work_order: None,
        };
        let (store, sensors, running_tag) = (store.clone(), sensors.clone(), running_tag.clone());
        let mut kept = window
            .take()
            .unwrap_or_else(|| Window::new(section.max_parts));
        let round = tokio::task::spawn_blocking(move || {
            let (parts, one_in) = match kept.advance(&store, scope.from, scope.to) {
                Ok(read) => read,
                // A failed read may have left the window half-way: the next round refills it.
                Err(error) => return (None, Err(error)),
            };
            let analysis = tag_traces(&sensors, parts, running_tag.as_deref()).map(|traces| {
                let computed_at = scope.to;
                analyse_sample(
                    parts,
                    one_in,
                    &traces,
                    scope,
                    &Settings::default(),
                    computed_at,
                )
            });
            // The window itself is sound even when the sensors failed: keep it.
            (Some(kept), analysis)
        })
        .await;
        let round = match round {
            Ok((kept, analysis)) => {
                window = kept;
                Ok(analysis)
            }
            Err(error) => Err(error),
        };
        // The analysis's working set is freed: hand its pages back at once.
        let _ = tokio::task::spawn_blocking(crate::heap::release_free_pages).await;
        match round {
            Ok(Ok(analysis)) => {
                let findings: usize = analysis
                    .targets
                    .iter()
                    .filter_map(|t| t.analysis.as_ref())
                    .map(|a| a.findings.len())
                    .sum();
                tracing::debug!(parts = analysis.parts, findings, "root cause of the window");
                latest.set(analysis);
            }
            Ok(Err(error)) => tracing::warn!(%error, "root cause of the window failed"),
            Err(error) => tracing::warn!(%error, "root cause task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::{Flag, Series};

    #[test]
    fn a_root_cause_section_out_of_range_names_each_field() {
        let section: RootCauseSection =
            toml::from_str("window_hours = 0.01\nevery_s = 5\nmax_parts = 10").expect("toml");
        let fields: Vec<String> = section.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "root_cause.window_hours",
                "root_cause.every_s",
                "root_cause.max_parts"
            ]
        );
        assert!(RootCauseSection::default().check().is_empty());
        assert_eq!(RootCauseSection::default().max_parts, DEFAULT_MAX_PARTS);
    }

    #[test]
    fn samples_taken_while_the_line_stood_are_left_out() {
        let mut trace = TagTrace {
            name: "roller".into(),
            unit: None,
            delay_ms: 0,
            max_age_ms: 5000,
            t: (0..10).map(|i| i * 1000).collect(),
            v: vec![2.0, 2.1, 0.0, 0.1, 0.0, 2.2, 2.3, 2.2, 0.0, 2.1],
        };
        // Running, stopped at 2 s, running again at 5 s, stopped at 8 s, again at 9 s; one
        // reading flagged bad is not believed.
        let flags = Series {
            t: vec![0, 2000, 5000, 6500, 8000, 9000],
            v: vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0],
            flag: vec![
                Flag::Good,
                Flag::Good,
                Flag::Good,
                Flag::OutOfRange,
                Flag::Good,
                Flag::Good,
            ],
        };
        keep_while_running(&mut trace, &flags);
        assert_eq!(trace.t, vec![0, 1000, 5000, 6000, 7000, 9000]);
        assert_eq!(trace.v, vec![2.0, 2.1, 2.2, 2.3, 2.2, 2.1]);
    }
}
