//! Control charts over HTTP: the charts the station TOML names (`[[charts]]`, the ones alarms
//! watch), and charts asked for ad hoc of the reject rate, the defects per part, or a tag.
//!
//! Every chart answers the [`Chart`] body of [`crate::analyse::spc`]: its points with their
//! limits, the rules each broke, the violations grouped, and Cp/Cpk where a tag has
//! specification limits. A range without enough data to estimate limits is 422 with the reason
//! (too few points, no variation, a baseline longer than the chart); a malformed request 400.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::analyse::charts::{
    self, ChartDefinition, ChartError, ChartOf, ChartPeriod, ChartRequest, ChartSources,
    MAX_WINDOW_HOURS,
};
use crate::analyse::spc::{Chart, ChartKind, RuleId, SpcError};

impl From<ChartError> for ApiError {
    fn from(error: ChartError) -> ApiError {
        match error {
            // What the data cannot give: a chart needs more of it, or some variation.
            ChartError::Spc(
                SpcError::TooFewPoints { .. }
                | SpcError::NoVariation { .. }
                | SpcError::InvalidBaseline { .. }
                | SpcError::NonFinite { .. }
                | SpcError::ZeroSampleSize { .. }
                | SpcError::CountExceedsSample { .. }
                | SpcError::SubgroupSizeMismatch { .. }
                | SpcError::InvalidSpec(_)
                | SpcError::SpecNotApplicable { .. },
            )
            | ChartError::NoData(_) => ApiError::Unprocessable(error.to_string()),
            ChartError::Spc(_) | ChartError::Invalid(_) | ChartError::TooManyPoints { .. } => {
                ApiError::BadRequest(error.to_string())
            }
            ChartError::UnknownTag(_) => ApiError::NotFound(error.to_string()),
            ChartError::NoSensors => ApiError::Unavailable(error.to_string()),
            ChartError::Sense(error) => error.into(),
            ChartError::Analyse(error) => error.into(),
        }
    }
}

/// A configured chart as `GET /api/v1/charts` lists it, defaults filled in.
#[derive(Debug, Serialize)]
pub(super) struct ChartView {
    name: String,
    /// `reject_rate`, `defects_per_part` or `tag:<name>`.
    of: String,
    kind: ChartKind,
    /// Count charts only.
    period: Option<ChartPeriod>,
    rules: Vec<RuleId>,
    window_hours: f64,
    /// Limits from the first this many points (Phase I); `null`: from the whole window, or
    /// fixed.
    baseline: Option<usize>,
    /// Fixed limits (Phase II).
    center: Option<f64>,
    sigma: Option<f64>,
    /// X̄ charts only.
    subgroup_size: Option<usize>,
}

fn chart_view(definition: &ChartDefinition) -> Option<ChartView> {
    let request = definition.request().ok()?;
    let window = definition.window().ok()?;
    let (baseline, center, sigma) = match request.limits {
        crate::analyse::spc::Limits::Estimated { baseline } => (baseline, None, None),
        crate::analyse::spc::Limits::Fixed { center, sigma } => (None, Some(center), Some(sigma)),
    };
    let attribute = matches!(request.of, ChartOf::RejectRate | ChartOf::DefectsPerPart);
    let subgroups = matches!(request.kind, ChartKind::XbarR | ChartKind::XbarS);
    Some(ChartView {
        name: definition.name.clone(),
        of: request.of.to_string(),
        kind: request.kind,
        period: attribute.then_some(request.period),
        rules: request.rules.iter().collect(),
        window_hours: window.num_milliseconds() as f64 / 3_600_000.0,
        baseline,
        center,
        sigma,
        subgroup_size: subgroups.then_some(request.subgroup_size),
    })
}

/// `GET /api/v1/charts`: the charts the station TOML names.
pub(super) async fn list(State(api): State<ApiState>) -> Json<Vec<ChartView>> {
    Json(api.charts.iter().filter_map(chart_view).collect())
}

/// A range: RFC 3339 `from` and `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RangeQuery {
    /// Default: `to` less the chart's window.
    from: Option<DateTime<Utc>>,
    /// Default: now.
    to: Option<DateTime<Utc>>,
}

/// `from` and `to` with their defaults (`to` now, `from` the window before it), refused when
/// empty, reversed or longer than [`MAX_WINDOW_HOURS`].
fn chart_range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    window: TimeDelta,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let max = TimeDelta::milliseconds((MAX_WINDOW_HOURS * 3_600_000.0) as i64);
    super::time_range(from, to, Utc::now(), window, max)
}

fn sources(api: &ApiState) -> ChartSources {
    ChartSources {
        production: api.production.clone(),
        sensors: api.sensors.clone(),
    }
}

/// Computes off the async threads: the counts and samples are read from disk.
async fn chart_of(
    api: &ApiState,
    request: ChartRequest,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Json<Chart>, ApiError> {
    let sources = sources(api);
    tokio::task::spawn_blocking(move || charts::compute(&request, &sources, from, to))
        .await
        .map_err(|e| ApiError::InternalMessage(format!("chart task failed: {e}")))?
        .map(Json)
        .map_err(ApiError::from)
}

/// `GET /api/v1/charts/{name}`: a configured chart over `from`/`to`, by default its window
/// ending now.
pub(super) async fn get(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let definition = api
        .charts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no chart named {name:?} is configured")))?;
    let (from, to) = chart_range(query.from, query.to, definition.window()?)?;
    let request = definition
        .request()
        .map_err(|problems| ApiError::InternalMessage(format!("chart {name:?}: {problems:?}")))?;
    chart_of(&api, request, from, to).await
}

/// The query of the ad-hoc count charts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CountChartQuery {
    kind: Option<ChartKind>,
    period: Option<ChartPeriod>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Comma-separated rule names; default `nelson_1`, empty for none.
    rules: Option<String>,
    baseline: Option<usize>,
}

/// The query of an ad-hoc tag chart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TagChartQuery {
    kind: Option<ChartKind>,
    subgroup_size: Option<usize>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    rules: Option<String>,
    baseline: Option<usize>,
    lambda: Option<f64>,
    l: Option<f64>,
    k: Option<f64>,
    h: Option<f64>,
}

/// `"nelson_1, we_2"` as rule names; absent: the default.
fn rule_names(rules: Option<&str>) -> Vec<String> {
    match rules {
        None => vec!["nelson_1".into()],
        Some(text) => text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// An ad-hoc chart is checked as a configured one would be: the same messages, by field.
fn resolve(definition: &ChartDefinition) -> Result<ChartRequest, ApiError> {
    definition.request().map_err(|problems| {
        ApiError::BadRequest(
            problems
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn ad_hoc(of: String) -> ChartDefinition {
    ChartDefinition {
        name: "ad-hoc".into(),
        of,
        kind: None,
        period: None,
        window_hours: None,
        rules: Vec::new(),
        baseline: None,
        center: None,
        sigma: None,
        subgroup_size: None,
        lambda: None,
        l: None,
        k: None,
        h: None,
    }
}

async fn count_chart(
    api: ApiState,
    of: ChartOf,
    query: Result<Query<CountChartQuery>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let definition = ChartDefinition {
        kind: query.kind,
        period: query.period,
        rules: rule_names(query.rules.as_deref()),
        baseline: query.baseline,
        ..ad_hoc(of.to_string())
    };
    let request = resolve(&definition)?;
    let window = TimeDelta::hours(of.default_window_hours() as i64);
    let (from, to) = chart_range(query.from, query.to, window)?;
    chart_of(&api, request, from, to).await
}

/// `GET /api/v1/charts/reject-rate`: the share of parts rejected per period.
pub(super) async fn reject_rate(
    State(api): State<ApiState>,
    query: Result<Query<CountChartQuery>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    count_chart(api, ChartOf::RejectRate, query).await
}

/// `GET /api/v1/charts/defects-per-part`: defects per part inspected per period.
pub(super) async fn defects_per_part(
    State(api): State<ApiState>,
    query: Result<Query<CountChartQuery>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    count_chart(api, ChartOf::DefectsPerPart, query).await
}

/// `GET /api/v1/tags/{name}/chart`: a chart of a tag's good samples.
pub(super) async fn tag(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<TagChartQuery>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let sensors = api
        .sensors
        .as_ref()
        .ok_or_else(|| ApiError::from(ChartError::NoSensors))?;
    if sensors.tag(&name).is_none() {
        return Err(ChartError::UnknownTag(name).into());
    }
    let of = ChartOf::Tag(name);
    let definition = ChartDefinition {
        kind: query.kind,
        rules: rule_names(query.rules.as_deref()),
        baseline: query.baseline,
        subgroup_size: query.subgroup_size,
        lambda: query.lambda,
        l: query.l,
        k: query.k,
        h: query.h,
        ..ad_hoc(of.to_string())
    };
    let request = resolve(&definition)?;
    let window = TimeDelta::hours(of.default_window_hours() as i64);
    let (from, to) = chart_range(query.from, query.to, window)?;
    chart_of(&api, request, from, to).await
}

#[cfg(test)]
mod tests;
