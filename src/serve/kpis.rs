//! KPIs over HTTP: ISO 22400-2 figures per period, the defect Pareto, and the production
//! counts behind them (also the input of the reject-rate control chart).
//!
//! Every route takes a range `from`/`to` (RFC 3339; default the last 24 hours up to now),
//! widened to whole minutes. Time after `as_of` (now less the belt's travel and two seconds:
//! the parts captured since are not recorded yet) is neither planned nor down, so a range that
//! ends now does not show the line as stopped for the last second.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::analyse::{
    KpiInput, KpiReport, Pareto, Period, Range, Resolution, kpi::ProductionSeries, measured_range,
    work_order_spans,
};

/// Longest range of the KPIs, the Pareto and hourly production.
pub const MAX_RANGE_DAYS: i64 = 400;
/// Longest range of production by the minute (10,080 rows per work order).
pub const MAX_MINUTE_RANGE_DAYS: i64 = 7;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KpiQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Default `hour`.
    period: Option<Period>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParetoQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    work_order: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProductionQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Default `minute`.
    resolution: Option<Resolution>,
}

/// `GET /api/v1/kpis`.
pub(super) async fn kpis(
    State(api): State<ApiState>,
    query: Result<Query<KpiQuery>, QueryRejection>,
) -> Result<Json<KpiReport>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let range = range(&api, query.from, query.to, MAX_RANGE_DAYS)?;
    let period = query.period.unwrap_or(Period::Hour);
    with_buckets(&api, range, move |input| input.report(range, period))
        .await
        .map(Json)
}

/// `GET /api/v1/pareto`.
pub(super) async fn pareto(
    State(api): State<ApiState>,
    query: Result<Query<ParetoQuery>, QueryRejection>,
) -> Result<Json<Pareto>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let range = range(&api, query.from, query.to, MAX_RANGE_DAYS)?;
    if let Some(work_order) = &query.work_order
        && !(1..=64).contains(&work_order.len())
    {
        return Err(ApiError::BadRequest(
            "work_order must be 1 to 64 characters".into(),
        ));
    }
    with_buckets(&api, range, move |input| {
        input.pareto(range, query.work_order.as_deref())
    })
    .await
    .map(Json)
}

/// `GET /api/v1/production`.
pub(super) async fn production(
    State(api): State<ApiState>,
    query: Result<Query<ProductionQuery>, QueryRejection>,
) -> Result<Json<ProductionSeries>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let resolution = query.resolution.unwrap_or(Resolution::Minute);
    let max_days = match resolution {
        Resolution::Minute => MAX_MINUTE_RANGE_DAYS,
        Resolution::Hour => MAX_RANGE_DAYS,
    };
    let range = range(&api, query.from, query.to, max_days)?;
    with_buckets(&api, range, move |input| {
        input.production(range, resolution)
    })
    .await
    .map(Json)
}

/// Reads the range's KPI input off the async threads and answers from it.
async fn with_buckets<T: Send + 'static>(
    api: &ApiState,
    range: Range,
    answer: impl FnOnce(KpiInput) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let production = api.production.clone();
    let sensors = api.sensors.clone();
    let work_orders = work_order_spans(&api.store);
    tokio::task::spawn_blocking(move || {
        production.with_input(sensors.as_ref(), &work_orders, range, answer)
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("KPI task failed: {e}")))?
    .map_err(ApiError::from)
}

/// The checked range of a request, measured up to now less the recording delay.
fn range(
    api: &ApiState,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    max_days: i64,
) -> Result<Range, ApiError> {
    let now = Utc::now();
    let (from, to) = time_range(from, to, now, max_days)?;
    let delay = TimeDelta::milliseconds(i64::try_from(api.info.travel_ms).unwrap_or(0) + 2_000);
    let as_of = now.checked_sub_signed(delay).unwrap_or(now);
    Ok(measured_range(&api.store, from, to, as_of))
}

/// `from` and `to` with their defaults (`to` now, `from` a day before `to`), refused when
/// empty, reversed or longer than `max_days`.
pub fn time_range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    max_days: i64,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    super::time_range(from, to, now, TimeDelta::days(1), TimeDelta::days(max_days))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("time")
    }

    #[test]
    fn ranges_default_to_the_last_day_and_refuse_empty_reversed_and_long_ones() {
        let now = at("2024-05-06T12:00:00Z");
        assert_eq!(
            time_range(None, None, now, 400).expect("default"),
            (at("2024-05-05T12:00:00Z"), now)
        );
        let from = at("2024-05-06T11:00:00Z");
        assert_eq!(
            time_range(Some(from), None, now, 400).expect("to now"),
            (from, now)
        );
        assert!(matches!(
            time_range(Some(now), Some(now), now, 400),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            time_range(Some(now), Some(from), now, 400),
            Err(ApiError::BadRequest(_))
        ));
        // Exactly 400 days is allowed; a second more is not.
        let start = at("2023-01-01T00:00:00Z");
        let end = start + TimeDelta::days(400);
        assert!(time_range(Some(start), Some(end), now, 400).is_ok());
        let message = match time_range(Some(start), Some(end + TimeDelta::seconds(1)), now, 400) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("expected 400, got {other:?}"),
        };
        assert!(message.contains("400 days"), "{message}");
        // The earliest time chrono knows has no day before it.
        assert!(time_range(None, Some(DateTime::<Utc>::MIN_UTC), now, 400).is_err());
    }

    /// The OpenAPI description names exactly the fields the handlers serialise (schemathesis
    /// checks the values against a running station; this catches a renamed field here).
    #[test]
    fn the_openapi_schemas_match_what_is_served() {
        use crate::analyse::{Counts, MinuteBucket, ProductionPlan};
        let spec: serde_json::Value = serde_json::from_str(super::super::OPENAPI).expect("json");
        let keys = crate::serve::openapi_check::schema_fields;
        let fields = crate::serve::openapi_check::served_fields;
        let plan = ProductionPlan::default();
        let bucket = MinuteBucket {
            minute: at("2024-05-06T06:00:00Z").timestamp() / 60,
            work_order: Some("WO-1".into()),
            counts: Counts {
                inspected: 10,
                passed: 9,
                rejected_failed: 1,
                first_pass_good: 9,
                defects: vec![("dent".into(), 1)],
                ..Counts::default()
            },
        };
        let input = KpiInput {
            plan: &plan,
            buckets: std::slice::from_ref(&bucket),
            work_orders: &[],
            external_stops: &[],
        };
        let range = Range::new(
            at("2024-05-06T06:00:00Z"),
            at("2024-05-06T08:00:00Z"),
            at("2024-05-06T09:00:00Z"),
        );
        let report = serde_json::to_value(input.report(range, Period::WorkOrder)).expect("json");
        assert_eq!(fields(&report), keys("KpiReport"));
        assert_eq!(fields(&report["total"]), keys("Kpis"));
        assert_eq!(fields(&report["periods"][0]), keys("PeriodKpis"));
        assert_eq!(fields(&report["total"]["warnings"][0]), keys("KpiWarning"));
        let pareto = serde_json::to_value(input.pareto(range, None)).expect("json");
        assert_eq!(fields(&pareto), keys("Pareto"));
        assert_eq!(fields(&pareto["classes"][0]), keys("ParetoClass"));
        let series = serde_json::to_value(input.production(range, Resolution::Hour)).expect("json");
        assert_eq!(fields(&series), keys("ProductionSeries"));
        assert_eq!(fields(&series["rows"][0]), keys("ProductionRow"));
        for path in ["/api/v1/kpis", "/api/v1/pareto", "/api/v1/production"] {
            assert!(
                spec["paths"][path]["get"].is_object(),
                "{path} is documented"
            );
        }
    }
}
