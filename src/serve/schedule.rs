//! The schedule over HTTP: the open work orders' projections at the line's recent rate and
//! yield ([`crate::analyse::schedule`]), and the stored impact events (what a stop, a slowdown
//! or a defect excursion did to an order's lateness).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::analyse::schedule::{self, ImpactEvent, ImpactLog, Schedule, Settings};

/// Longest range of impact events asked at once.
pub const MAX_IMPACT_RANGE_DAYS: i64 = 400;
/// Most events in one answer, and the default.
pub const MAX_IMPACTS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImpactQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Default and most: [`MAX_IMPACTS`].
    limit: Option<usize>,
}

/// The impact events of a range, oldest first.
#[derive(Debug, Serialize)]
pub(super) struct ImpactList {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    events: Vec<ImpactEvent>,
}

/// `GET /api/v1/schedule`.
pub(super) async fn get(State(api): State<ApiState>) -> Result<Json<Schedule>, ApiError> {
    let now = Utc::now();
    let delay = TimeDelta::milliseconds(i64::try_from(api.info.travel_ms).unwrap_or(0) + 2_000);
    let as_of = now.checked_sub_signed(delay).unwrap_or(now);
    tokio::task::spawn_blocking(move || {
        schedule::current(
            &api.store,
            &api.production,
            api.sensors.as_ref(),
            now,
            as_of,
            &Settings::default(),
        )
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("schedule task failed: {e}")))?
    .map(Json)
    .map_err(ApiError::from)
}

/// `GET /api/v1/schedule/impacts`.
pub(super) async fn impacts(
    State(api): State<ApiState>,
    query: Result<Query<ImpactQuery>, QueryRejection>,
) -> Result<Json<ImpactList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (from, to) = super::time_range(
        query.from,
        query.to,
        Utc::now(),
        TimeDelta::days(1),
        TimeDelta::days(MAX_IMPACT_RANGE_DAYS),
    )?;
    let limit = query.limit.unwrap_or(MAX_IMPACTS);
    if !(1..=MAX_IMPACTS).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_IMPACTS}"
        )));
    }
    let production = api.production.clone();
    let events =
        tokio::task::spawn_blocking(move || ImpactLog::open(&production)?.range(from, to, limit))
            .await
            .map_err(|e| {
                ApiError::InternalMessage(format!("schedule impact task failed: {e}"))
            })??;
    Ok(Json(ImpactList { from, to, events }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyse::ShiftCalendar;
    use crate::analyse::schedule::{LineRate, OrderInput, impacts, schedule};
    use crate::record::WorkOrder;

    /// The OpenAPI description names exactly the fields served (schemathesis checks the values
    /// against a running station; this catches a renamed field here).
    #[test]
    fn the_openapi_schemas_match_what_is_served() {
        use crate::serve::openapi_check::{schema_fields, served_fields};
        let now: DateTime<Utc> = "2024-05-06T08:00:00Z".parse().expect("time");
        let settings = Settings::default();
        let orders = [OrderInput {
            order: WorkOrder {
                id: "WO-1".into(),
                product: "disc".into(),
                quantity: 100,
                due: now + TimeDelta::hours(1),
                ideal_cycle_time_s: 6.0,
            },
            good_so_far: 10,
            running: true,
        }];
        let line = LineRate::plan(&settings, true, "test");
        let always = ShiftCalendar::always();
        let before = schedule(&orders, &line, now, &always, &settings);
        let after = schedule(
            &orders,
            &line,
            now + TimeDelta::hours(1),
            &always,
            &settings,
        );
        let json = serde_json::to_value(&after).expect("json");
        assert_eq!(served_fields(&json), schema_fields("Schedule"));
        assert_eq!(served_fields(&json["line"]), schema_fields("LineRate"));
        assert_eq!(
            served_fields(&json["orders"][0]),
            schema_fields("OrderSchedule")
        );
        let list = ImpactList {
            from: now,
            to: now + TimeDelta::hours(2),
            events: impacts(&before, &after, &always, 60.0),
        };
        let json = serde_json::to_value(&list).expect("json");
        assert_eq!(served_fields(&json), schema_fields("ImpactList"));
        assert_eq!(
            served_fields(&json["events"][0]),
            schema_fields("ImpactEvent")
        );
    }
}
