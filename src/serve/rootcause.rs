//! Root cause over HTTP: which line conditions move with each defect class.
//!
//! `GET /api/v1/rootcause` without a range answers the station's continuous analysis of its
//! sliding window (`[root_cause]`); with `from`/`to` or `work_order` it analyses that scope on
//! demand. An on-demand analysis reads every part and sample of its scope, so one runs at a
//! time: a second request meanwhile is answered 503 rather than queued behind it.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::{ApiError, ApiState, time_range};
use crate::analyse::rootcause::Settings;
use crate::analyse::rootcause::station::{Scope, analyse_scope};

/// Longest scope of an on-demand analysis.
pub const MAX_RANGE_DAYS: i64 = 31;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RootCauseQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    work_order: Option<String>,
}

/// `GET /api/v1/rootcause`.
pub(super) async fn get(
    State(api): State<ApiState>,
    query: Result<Query<RootCauseQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(work_order) = &query.work_order
        && !(1..=64).contains(&work_order.chars().count())
    {
        return Err(ApiError::BadRequest(
            "work_order must be 1 to 64 characters".into(),
        ));
    }
    let on_demand = query.from.is_some() || query.to.is_some() || query.work_order.is_some();
    if !on_demand && let Some(latest) = api.root_cause.latest.get() {
        return Ok(Json(&*latest).into_response());
    }
    let now = Utc::now();
    let (from, to) = match (&query.work_order, query.from, query.to) {
        // A work order's parts, wherever they lie in the last `MAX_RANGE_DAYS`.
        (Some(_), None, None) => (now - TimeDelta::days(MAX_RANGE_DAYS), now),
        _ => time_range(
            query.from,
            query.to,
            now,
            api.root_cause.section.window(),
            TimeDelta::days(MAX_RANGE_DAYS),
        )?,
    };
    let Some(sensors) = api.sensors.clone() else {
        return Err(ApiError::Unprocessable(
            "this station keeps no sensor data to correlate with".into(),
        ));
    };
    let Ok(permit) = api.root_cause.one_at_a_time.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(
            "another root-cause analysis is running; try again shortly".into(),
        ));
    };
    let store = api.store.clone();
    let running_tag = api.production.plan.running_tag.clone();
    let max_parts = api.root_cause.section.max_parts;
    let scope = Scope {
        from,
        to,
        work_order: query.work_order,
    };
    let analysis = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        analyse_scope(
            &store,
            &sensors,
            running_tag.as_deref(),
            scope,
            max_parts,
            &Settings::default(),
            now,
        )
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("root-cause task failed: {e}")))??;
    Ok(Json(analysis).into_response())
}
