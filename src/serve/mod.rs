//! Serve: the station's HTTP face. JSON for the MES and the UI, the live page for operators,
//! `/metrics` for Prometheus.
//!
//! [`router`] builds the whole app from an [`ApiState`] of cheap handles; tests drive it with
//! `oneshot` or over a real port. Bad input gets a 4xx with a JSON `{"error": …}` saying why;
//! internal failures are logged once here and the client sees a generic message. Timeouts,
//! body size and concurrency are layers. Nothing below this module knows HTTP.

pub mod b2mml;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::inspect::registry::RegistryError;
use crate::metrics::Metrics;
use crate::model_control::{ControlError, ModelControl, ModelStatus};
use crate::part::Disposition;
use crate::record::{ModelEvent, Record, ShadowSummary, Store};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

const LIVE_PAGE: &str = include_str!("live.html");

/// Largest page of records one request may ask for.
pub const MAX_PAGE: usize = 500;

/// What the station tells about itself: fixed at start except `state`.
#[derive(Debug, Clone, Serialize)]
pub struct StationInfo {
    pub name: String,
    pub started_at: String,
    pub model_version: String,
    pub threshold: f32,
    pub travel_ms: u64,
    pub gate_window_ms: u64,
    pub verdict_margin_ms: u64,
    pub plc: String,
    pub camera_pipeline: String,
    pub simulated: bool,
}

/// The station's life cycle as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StationState {
    Running,
    Stopping,
    Stopped,
    Faulted,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    pub info: Arc<StationInfo>,
    pub state: Arc<std::sync::RwLock<StationState>>,
    pub store: Store,
    pub metrics: Metrics,
    /// Promote, roll back, shadow.
    pub models: Arc<ModelControl>,
    /// Model changes need `Authorization: Bearer <token>`; with no token they are refused.
    pub admin_token: Option<Arc<str>>,
}

impl ApiState {
    /// Sets the state the API reports.
    pub fn set_state(&self, state: StationState) {
        if let Ok(mut current) = self.state.write() {
            *current = state;
        }
    }
}

/// The HTTP app.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(live_page))
        .route("/api/v1/station", get(station))
        .route("/api/v1/inspections", get(list_inspections))
        .route("/api/v1/inspections/{part_id}", get(get_inspection))
        .route("/api/v1/images/{digest}", get(get_image))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/models/promote", post(promote_model))
        .route("/api/v1/models/rollback", post(rollback_model))
        .route("/api/v1/models/shadow", get(shadow_summary).put(set_shadow))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // A bug in a handler answers 500 instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(RequestBodyLimitLayer::new(16 * 1024))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(10),
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .with_state(state)
}

/// Errors a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] crate::record::RecordError),
    #[error("{0}")]
    InternalMessage(String),
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> ApiError {
        match error {
            ControlError::Registry(RegistryError::UnknownVersion { .. }) => {
                ApiError::NotFound(error.to_string())
            }
            ControlError::Record(error) => ApiError::Internal(error),
            ControlError::Registry(RegistryError::Read { .. }) => {
                ApiError::InternalMessage(error.to_string())
            }
            ControlError::Join(_) => ApiError::InternalMessage(error.to_string()),
            // The version exists but cannot run here, or the request does not fit the state.
            _ => ApiError::Conflict(error.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            ApiError::InternalMessage(m) => {
                tracing::error!(error = %m, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the station log".into(),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(%error, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the station log".into(),
                )
            }
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}

async fn live_page() -> Html<&'static str> {
    Html(LIVE_PAGE)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// Counters of parts past the gate.
#[derive(Debug, Serialize)]
struct PartCounts {
    captured: u64,
    frames_dropped: u64,
    recorded: u64,
    passed: u64,
    rejected_failed: u64,
    rejected_error: u64,
    rejected_no_verdict: u64,
    gate_commands_failed: u64,
    in_flight: i64,
}

#[derive(Serialize)]
struct StationView {
    #[serde(flatten)]
    info: StationInfo,
    /// The candidate running in shadow, if any.
    shadow_model_version: Option<String>,
    state: StationState,
    parts: PartCounts,
}

async fn station(State(api): State<ApiState>) -> Json<StationView> {
    let m = &api.metrics;
    let state = api
        .state
        .read()
        .map(|s| *s)
        .unwrap_or(StationState::Faulted);
    let live = api.models.active().live();
    Json(StationView {
        info: StationInfo {
            model_version: live.version.to_string(),
            threshold: live.threshold,
            ..(*api.info).clone()
        },
        shadow_model_version: api.models.active().shadow().map(|m| m.version.to_string()),
        state,
        parts: PartCounts {
            captured: m.frames_captured.get(),
            frames_dropped: m.frames_dropped.get(),
            recorded: m.records_written.get(),
            passed: m.disposition_count(Disposition::Pass),
            rejected_failed: m.disposition_count(Disposition::RejectFailed),
            rejected_error: m.disposition_count(Disposition::RejectError),
            rejected_no_verdict: m.disposition_count(Disposition::RejectNoVerdict),
            gate_commands_failed: m.gate_commands_failed.get(),
            in_flight: m.parts_in_flight.get(),
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// Only parts with a smaller id: pass the previous page's `next_before`.
    before: Option<u64>,
}

#[derive(Serialize)]
struct InspectionPage {
    items: Vec<Record>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next_before: Option<u64>,
}

async fn list_inspections(
    State(api): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<InspectionPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let items = api.store.inspections(query.before, limit)?;
    let next_before = (items.len() == limit)
        .then(|| items.last().and_then(part_id_of))
        .flatten()
        .filter(|id| *id > 0);
    Ok(Json(InspectionPage { items, next_before }))
}

fn part_id_of(record: &Record) -> Option<u64> {
    match &record.body {
        crate::record::RecordBody::Inspection(i) => Some(i.part_id),
        _ => None,
    }
}

async fn get_inspection(
    State(api): State<ApiState>,
    part_id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    api.store
        .inspection(part_id)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no record of part {part_id}")))
}

async fn get_image(
    State(api): State<ApiState>,
    digest: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(digest) = digest.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let digest = digest.strip_suffix(".png").unwrap_or(&digest).to_owned();
    let Some(path) = api.store.images().path(&digest) else {
        return Err(ApiError::NotFound(format!("no image {digest}")));
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|source| ApiError::Internal(crate::record::RecordError::Image { path, source }))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            // Content-addressed: an image never changes.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

async fn metrics(State(api): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.encode(&api.info.name),
    )
        .into_response()
}

/// A registry entry as the API shows it.
#[derive(Serialize)]
struct AvailableModel {
    version: String,
    kind: String,
    threshold: f32,
}

#[derive(Serialize)]
struct ModelsView {
    #[serde(flatten)]
    status: ModelStatus,
    available: Vec<AvailableModel>,
    /// Every promotion, rollback and shadow change, oldest first.
    events: Vec<ModelEvent>,
}

async fn list_models(State(api): State<ApiState>) -> Result<Json<ModelsView>, ApiError> {
    let available = api
        .models
        .registry()
        .list()
        .map_err(|e| ApiError::InternalMessage(e.to_string()))?
        .into_iter()
        .map(|e| AvailableModel {
            version: e.version,
            kind: e.kind,
            threshold: e.threshold,
        })
        .collect();
    Ok(Json(ModelsView {
        status: api.models.status(),
        available,
        events: api.models.events()?,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowRequest {
    /// The version to run in shadow; `null` stops the shadow.
    version: Option<String>,
}

/// Model changes are for whoever holds the station's admin token.
fn authorise(api: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &api.admin_token else {
        return Err(ApiError::Forbidden(
            "model changes are disabled on this station: start it with LINESIGHT_ADMIN_TOKEN set"
                .into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in constant time: the answer must not leak how much of a guess was right.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "model changes need `Authorization: Bearer <admin token>`".into(),
        ))
    }
}

async fn promote_model(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<Json<ModelEvent>, ApiError> {
    authorise(&api, &headers)?;
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let models = api.models.clone();
    to_completion(async move { models.promote(&request.version).await }).await
}

/// Runs a model change in its own task: a request dropped half-way (client gone, timeout)
/// must not leave a change recorded but not made, or made but not recorded.
async fn to_completion(
    change: impl std::future::Future<Output = Result<ModelEvent, ControlError>> + Send + 'static,
) -> Result<Json<ModelEvent>, ApiError> {
    match tokio::spawn(change).await {
        Ok(result) => Ok(Json(result?)),
        Err(error) => Err(ApiError::InternalMessage(format!(
            "model change task failed: {error}"
        ))),
    }
}

async fn rollback_model(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<ModelEvent>, ApiError> {
    authorise(&api, &headers)?;
    let models = api.models.clone();
    to_completion(async move { models.rollback().await }).await
}

async fn set_shadow(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ShadowRequest>, JsonRejection>,
) -> Result<Json<ModelEvent>, ApiError> {
    authorise(&api, &headers)?;
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let models = api.models.clone();
    to_completion(async move { models.set_shadow(request.version.as_deref()).await }).await
}

async fn shadow_summary(State(api): State<ApiState>) -> Result<Json<ShadowSummary>, ApiError> {
    api.models
        .shadow_summary()?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no model is running in shadow".into()))
}
