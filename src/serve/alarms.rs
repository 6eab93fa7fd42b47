//! Alarms over HTTP: current states, one alarm's transitions, the operator's actions
//! (acknowledge, shelve, unshelve; an engineer's suppress and out of service), the ISA-18.2
//! performance figures, and a Server-Sent Events stream of transitions.
//!
//! Every action goes through [`AlarmManager`], which records the transition and its audit
//! entry in one write before the state changes; the stream follows the journal, so it shows
//! only what is durable and resumes by `Last-Event-ID`.

use std::convert::Infallible;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use chrono::{DateTime, Duration, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::{ApiError, ApiState, optional_body};
use crate::analyse::alarms::state::TransitionError;
use crate::analyse::alarms::{
    Action, Actor, AlarmError, AlarmPerformance, AlarmView, MAX_SHELVE_LIMIT_S, ShelveRequest,
    valid_name,
};
use crate::record::{AlarmState, Filter, RawRecord, Record, RecordBody, RecordKind};

impl From<AlarmError> for ApiError {
    fn from(error: AlarmError) -> ApiError {
        match error {
            AlarmError::UnknownAlarm(_) | AlarmError::UnknownSource(_) => {
                ApiError::NotFound(error.to_string())
            }
            AlarmError::Transition {
                source: TransitionError::ShelveTooLong { .. } | TransitionError::ShelveTooShort,
                ..
            }
            | AlarmError::NotFinite { .. }
            | AlarmError::BadComment => ApiError::BadRequest(error.to_string()),
            AlarmError::Transition { .. } => ApiError::Conflict(error.to_string()),
            AlarmError::Record(error) => error.into(),
        }
    }
}

/// The name in the path, checked before it is looked up.
fn alarm_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !valid_name(&name) {
        return Err(ApiError::NotFound(format!("no alarm named {name:?}")));
    }
    Ok(name)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only alarms in this ISA-18.2 state.
    state: Option<AlarmState>,
}

pub(super) async fn list(
    State(api): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<AlarmView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(state) = query.state
        && !AlarmState::ISA.contains(&state)
    {
        return Err(ApiError::BadRequest(format!(
            "state must be an ISA-18.2 state ({}), not {}",
            AlarmState::ISA.map(AlarmState::as_str).join(", "),
            state.as_str()
        )));
    }
    let mut alarms = api.alarms.alarms().await;
    alarms.retain(|a| query.state.is_none_or(|s| a.state == s));
    Ok(Json(alarms))
}

pub(super) async fn get(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<AlarmView>, ApiError> {
    let name = alarm_name(name)?;
    api.alarms
        .alarm(&name)
        .await
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no alarm named {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

/// One page of an alarm's transitions, newest first.
#[derive(Debug, Serialize)]
pub(super) struct HistoryPage {
    alarm: String,
    transitions: Vec<Record>,
    /// Pass as `before` for the next page; absent on the last.
    next_before: Option<u64>,
}

pub(super) async fn history(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let name = alarm_name(name)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 1000".into()));
    }
    if api.alarms.alarm(&name).await.is_none() {
        return Err(ApiError::NotFound(format!("no alarm named {name:?}")));
    }
    let alarms = api.alarms.clone();
    let wanted = name.clone();
    let transitions =
        tokio::task::spawn_blocking(move || alarms.history(&wanted, query.before, limit))
            .await
            .map_err(|e| ApiError::InternalMessage(e.to_string()))??;
    let next_before = (transitions.len() == limit)
        .then(|| transitions.last().map(|r| r.seq))
        .flatten();
    Ok(Json(HistoryPage {
        alarm: name,
        transitions,
        next_before,
    }))
}

/// The body of every action: an optional comment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionBody {
    comment: Option<String>,
}

/// The body of a shelve: `duration_s` or `one_shot: true`, and an optional comment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShelveBody {
    duration_s: Option<u64>,
    one_shot: Option<bool>,
    comment: Option<String>,
}

async fn act(
    api: &ApiState,
    who: &Principal,
    name: Result<Path<String>, PathRejection>,
    action: Action,
    comment: Option<String>,
) -> Result<Json<AlarmView>, ApiError> {
    let name = alarm_name(name)?;
    let actor = Actor {
        name: who.name.clone(),
        role: who.role.as_str().into(),
    };
    Ok(Json(
        api.alarms
            .act(&name, action, &actor, comment, Utc::now())
            .await?,
    ))
}

macro_rules! simple_action {
    ($(#[$doc:meta])* $handler:ident, $action:expr) => {
        $(#[$doc])*
        pub(super) async fn $handler(
            State(api): State<ApiState>,
            Extension(who): Extension<Principal>,
            name: Result<Path<String>, PathRejection>,
            body: Bytes,
        ) -> Result<Json<AlarmView>, ApiError> {
            let body: ActionBody = optional_body(&body)?;
            act(&api, &who, name, $action, body.comment).await
        }
    };
}

simple_action!(
    /// Acknowledges an alarm (operator and above).
    acknowledge,
    Action::Acknowledge
);
simple_action!(
    /// Ends a shelve (operator and above).
    unshelve,
    Action::Unshelve
);
simple_action!(
    /// Suppresses an alarm by design (engineer and above).
    suppress,
    Action::Suppress
);
simple_action!(
    /// Ends a suppression (engineer and above).
    unsuppress,
    Action::Unsuppress
);
simple_action!(
    /// Takes an alarm out of service (engineer and above).
    out_of_service,
    Action::RemoveFromService
);
simple_action!(
    /// Returns an alarm to service (engineer and above).
    in_service,
    Action::ReturnToService
);

/// Shelves an alarm once (until it returns) or for `duration_s` (operator and above).
pub(super) async fn shelve(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<AlarmView>, ApiError> {
    let body: ShelveBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))?;
    let request = match (body.duration_s, body.one_shot) {
        (Some(seconds), None) if (1..=MAX_SHELVE_LIMIT_S).contains(&seconds) => {
            ShelveRequest::For(std::time::Duration::from_secs(seconds))
        }
        (Some(_), None) => {
            return Err(ApiError::BadRequest(format!(
                "duration_s must be 1 to {MAX_SHELVE_LIMIT_S}"
            )));
        }
        (None, Some(true)) => ShelveRequest::OneShot,
        _ => {
            return Err(ApiError::BadRequest(
                "give either `duration_s` (seconds) or `\"one_shot\": true`".into(),
            ));
        }
    };
    act(&api, &who, name, Action::Shelve(request), body.comment).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PerformanceQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// Longest range the performance figures cover at once.
const MAX_RANGE_DAYS: i64 = 366;

/// The ISA-18.2 performance figures of `[from, to)`; by default the last 24 hours.
pub(super) async fn performance(
    State(api): State<ApiState>,
    query: Result<Query<PerformanceQuery>, QueryRejection>,
) -> Result<Json<AlarmPerformance>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (from, to) = super::time_range(
        query.from,
        query.to,
        Utc::now(),
        Duration::hours(24),
        Duration::days(MAX_RANGE_DAYS),
    )?;
    let alarms = api.alarms.clone();
    let figures = tokio::task::spawn_blocking(move || alarms.performance(from, to))
        .await
        .map_err(|e| ApiError::InternalMessage(e.to_string()))??;
    Ok(Json(figures))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    from: Option<u64>,
}

/// Whether a stored alarm record is a life-cycle transition (not a condition report).
fn is_transition(raw: &RawRecord) -> bool {
    matches!(raw.decode(), Ok(Record { body: RecordBody::Alarm(a), .. }) if a.is_transition())
}

/// Alarm transitions as Server-Sent Events, as they become durable.
pub(super) async fn events(
    State(api): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = Filter {
        kinds: vec![RecordKind::Alarm],
        ..Filter::default()
    };
    super::live::follow(&api, &headers, query.from, filter, is_transition)
}

#[cfg(test)]
mod tests;
