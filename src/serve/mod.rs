//! Serve: the station's HTTP face. JSON for the MES and the UI, the live page for operators,
//! `/metrics` for Prometheus.
//!
//! [`router`] builds the whole app from an [`ApiState`] of cheap handles; tests drive it with
//! `oneshot` or over a real port. Every route but `/health` and the sign-in page needs a
//! credential ([`auth`]): a bearer token, or the cookie the sign-in page sets; each route group
//! names the [`Permission`] it needs and the roles grant them. Bad input gets a 4xx with a JSON
//! `{"error": …}` saying why; internal failures are logged once here and the client sees a
//! generic message. Timeouts, body size and concurrency are layers. Nothing below this module
//! knows HTTP.
//!
//! One file per area: [`records`] (the MES pull, inspections, labels, images, audit),
//! [`work_orders`], [`live`] (the Server-Sent Events stream), `models` (model changes),
//! [`alarms`] (ISA-18.2 alarms: states, actions, performance, their event stream),
//! [`kpis`] (ISO 22400-2 KPIs, the defect Pareto, production counts), `charts` (control
//! charts: the configured ones, and ad hoc of the reject rate, defects per part or a tag),
//! `schedule` (the work orders' ETAs and the impact events of stops and excursions),
//! [`auth`] (tokens, roles, sign-in), [`b2mml`] (the ISA-95 export).

pub mod alarms;
pub mod auth;
pub mod b2mml;
mod charts;
mod drift;
mod halt_line;
pub mod kpis;
mod label_export;
pub mod labelling;
pub mod live;
mod maintenance;
mod models;
pub mod records;
mod rootcause;
mod schedule;
mod sensors;
pub mod twin;
pub mod work_orders;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use auth::{Permission, Principal, Role, Tokens};

use crate::analyse::alarms::AlarmManager;
use crate::analyse::{AnalyseError, Production};
use crate::inspect::backtest::{CancelError, StartError};
use crate::inspect::registry::RegistryError;
use crate::inspect::taxonomy::TaxonomyError;
use crate::inspect::training::TrainingError;
use crate::inspect::training::uploads::UploadError;
use crate::metrics::Metrics;
use crate::model_control::{ControlError, ModelControl};
use crate::part::Disposition;
use crate::record::{RecordError, Store};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

const LIVE_PAGE: &str = include_str!("live.html");
const LOGIN_PAGE: &str = include_str!("login.html");
const WHATIF_PAGE: &str = include_str!("whatif.html");
const MES_PAGE: &str = include_str!("mes.html");
const LABEL_PAGE: &str = include_str!("label.html");
const MODELS_PAGE: &str = include_str!("models.html");
/// The stylesheet the desk pages (MES, what-if) share.
const PAGES_CSS: &str = include_str!("pages.css");

/// The pages' scripts: TypeScript in `ui/src`, bundled by `build.rs` with the npm libraries
/// they import (uPlot, MIT, for the MES page's charts) at the versions `ui/package-lock.json`
/// pins.
const PAGE_SCRIPTS: [(&str, &str); 5] = [
    (
        "live",
        include_str!(concat!(env!("OUT_DIR"), "/ui/live.js")),
    ),
    (
        "label",
        include_str!(concat!(env!("OUT_DIR"), "/ui/label.js")),
    ),
    (
        "models",
        include_str!(concat!(env!("OUT_DIR"), "/ui/models.js")),
    ),
    ("mes", include_str!(concat!(env!("OUT_DIR"), "/ui/mes.js"))),
    (
        "whatif",
        include_str!(concat!(env!("OUT_DIR"), "/ui/whatif.js")),
    ),
];
/// uPlot's stylesheet, which the MES page's script imports.
const MES_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/ui/mes.css"));

/// The cookie the sign-in page sets: the token itself, HttpOnly and SameSite=Strict.
pub const TOKEN_COOKIE: &str = "linesight_token";

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Largest label, or labels import, accepted: a brush mask of a 5-megapixel image in
/// run-length encoding, or a COCO file of many, outgrows the general limit.
pub const MAX_LABEL_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The largest image upload for training: a 50-megapixel frame as PNG.
pub const MAX_UPLOAD_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long a request may take before it is answered 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a training upload may take: 64 MiB at 10 Mbit/s is about a minute, and a zip's
/// images are decoded one by one before the answer.
pub(super) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest sensor batch accepted (`POST /api/v1/samples`).
pub const MAX_PUSH_BODY_BYTES: usize = 8 * 1024 * 1024;

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
    /// `enterprise/site/area/line/station`: the ISA-95 place of the station.
    pub hierarchy: String,
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
    /// Who may call.
    pub tokens: Tokens,
    /// `[enterprise, site, area, line, station]`.
    pub hierarchy: Arc<[String; 5]>,
    /// Line sensor data; `None` for a station that keeps none.
    pub sensors: Option<crate::sense::Sensors>,
    /// The station's alarms (ISA-18.2 life cycle).
    pub alarms: AlarmManager,
    /// The station's health as its monitor last judged it.
    pub health: Arc<std::sync::RwLock<crate::analyse::monitor::StationHealth>>,
    /// The production counts and the plan the KPIs are measured against.
    pub production: Production,
    /// The control charts the station TOML names (`[[charts]]`).
    pub charts: Arc<Vec<crate::analyse::ChartDefinition>>,
    /// The latched halt-line coil; `None` without `[halt_line]`.
    pub halt_line: Option<crate::analyse::actions::HaltLine>,
    /// The root cause of the sliding window, and the gate of on-demand analyses.
    pub root_cause: RootCauseApi,
    /// What the maintenance watches last saw.
    pub maintenance: crate::analyse::maintenance::monitor::LatestMaintenance,
    /// What the drift watch last found about the live model.
    pub drift: crate::analyse::drift::LatestDrift,
    /// The line twin's scenarios and the gate of what-if runs.
    pub twin: twin::TwinApi,
}

/// What the root-cause route reads.
#[derive(Clone)]
pub struct RootCauseApi {
    pub section: crate::analyse::rootcause::station::RootCauseSection,
    pub latest: crate::analyse::rootcause::station::LatestRootCause,
    /// One on-demand analysis at a time.
    pub one_at_a_time: Arc<tokio::sync::Semaphore>,
}

impl RootCauseApi {
    pub fn new(section: crate::analyse::rootcause::station::RootCauseSection) -> RootCauseApi {
        RootCauseApi {
            section,
            latest: Default::default(),
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

impl ApiState {
    /// Sets the state the API reports.
    pub fn set_state(&self, state: StationState) {
        if let Ok(mut current) = self.state.write() {
            *current = state;
        }
    }
}

/// A journal cursor a client gives (`from`), refused (409) past the next record: no page of
/// this history pointed there, so it belongs to another one (a store started anew, another
/// station), and an empty page or a silent stream would have its client wait for sequence
/// numbers this store hands to other records.
pub(crate) fn cursor_in_history(store: &crate::record::Store, from: u64) -> Result<u64, ApiError> {
    let next = store.last_seq().saturating_add(1);
    if from > next {
        return Err(ApiError::Conflict(format!(
            "from = {from} is past the next record ({next}): this store is instance {}; a cursor \
             of another history starts again from {}",
            store.instance_id(),
            store.first_seq()
        )));
    }
    Ok(from)
}

/// A JSON body that may be left out: an empty (or blank) body is `T::default()`, anything else
/// must be valid JSON of `T`, whatever the Content-Type says (a `curl -d` sends a form's type,
/// and a note silently dropped for it would be lost).
pub(crate) fn optional_body<T: for<'de> serde::Deserialize<'de> + Default>(
    body: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))
}

/// A time a request gives, refused (400) outside the years 1970–9999: chrono reads signed
/// years (`+10000-01-01T00:00:00Z`), which RFC 3339 cannot write, and a record or answer that
/// carried one would break every client's parse of it.
pub(crate) fn checked_instant(
    name: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    use chrono::Datelike;
    if (1970..=9999).contains(&at.year()) {
        Ok(at)
    } else {
        Err(ApiError::BadRequest(format!(
            "{name} ({}) must lie between 1970 and 9999",
            at.to_rfc3339()
        )))
    }
}

/// A query's time range: `to` defaults to `now`, `from` to `default_span` before `to`.
/// Refused (400) when empty, reversed, longer than `max_span`, or outside 1970–9999, so no
/// answer ever carries a time a client cannot parse. Every ranged route goes through here.
pub(crate) fn time_range(
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    default_span: chrono::TimeDelta,
    max_span: chrono::TimeDelta,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), ApiError> {
    let to = to.unwrap_or(now);
    let from = match from {
        Some(from) => from,
        None => to.checked_sub_signed(default_span).ok_or_else(|| {
            ApiError::BadRequest(format!("to = {to} leaves no {default_span} before it"))
        })?,
    };
    for (name, at) in [("from", from), ("to", to)] {
        checked_instant(name, at)?;
    }
    // Ranges widen to whole minutes (the buckets' grain): the last minute of 9999 would
    // widen into the year 10000.
    let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|day| day.and_hms_opt(23, 59, 0))
        .map(|at| at.and_utc());
    if last.is_some_and(|last| to > last) {
        return Err(ApiError::BadRequest(format!(
            "to ({}) must be at most 9999-12-31T23:59:00Z",
            to.to_rfc3339()
        )));
    }
    if from >= to {
        return Err(ApiError::BadRequest(format!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    if to - from > max_span {
        return Err(ApiError::BadRequest(format!(
            "the range from {} to {} is longer than {} days",
            from.to_rfc3339(),
            to.to_rfc3339(),
            max_span.num_days()
        )));
    }
    Ok((from, to))
}

/// The HTTP app.
pub fn router(state: ApiState) -> Router {
    use Permission::*;
    let api = &state;
    let need = |permission: Permission, route: MethodRouter<ApiState>| {
        route.route_layer(axum::middleware::from_fn_with_state(
            (api.clone(), permission),
            require,
        ))
    };
    Router::new()
        .route("/health", get(health))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/", get(live_page))
        .route("/whatif", get(whatif_page))
        .route("/mes", get(mes_page))
        .route("/label", get(label_page))
        .route("/models", get(models_page))
        .route("/assets/{script}", get(page_script))
        .route(
            "/assets/pages.css",
            get(|| async { asset("text/css; charset=utf-8", PAGES_CSS) }),
        )
        .route(
            "/assets/mes.css",
            get(|| async { asset("text/css; charset=utf-8", MES_CSS) }),
        )
        .route("/api/v1/station", need(Read, get(station)))
        .route("/api/v1/whoami", need(Read, get(auth::whoami)))
        .route("/api/v1/records", need(Pull, get(records::pull)))
        .route(
            "/api/v1/records/ack",
            need(Pull, get(records::acknowledged).post(records::acknowledge)),
        )
        .route(
            "/api/v1/inspections",
            need(Read, get(records::list_inspections)),
        )
        .route(
            "/api/v1/inspections/{part_id}",
            need(Read, get(records::get_inspection)),
        )
        .route(
            "/api/v1/inspections/{part_id}/explanation",
            need(Read, get(records::explain_inspection)),
        )
        .route(
            "/api/v1/images/{digest}",
            need(Read, get(records::get_image)),
        )
        .route(
            "/api/v1/inspections/{part_id}/flag",
            need(Flag, post(labelling::flag)),
        )
        .route(
            "/api/v1/labelling/queue",
            need(Label, get(labelling::queue)),
        )
        .route(
            "/api/v1/labels/export",
            need(Label, get(label_export::export)),
        )
        .route("/api/v1/events", need(Read, get(live::events)))
        .route("/api/v1/kpis", need(Read, get(kpis::kpis)))
        .route("/api/v1/pareto", need(Read, get(kpis::pareto)))
        .route("/api/v1/production", need(Read, get(kpis::production)))
        .route("/api/v1/schedule", need(Read, get(schedule::get)))
        .route(
            "/api/v1/schedule/impacts",
            need(Read, get(schedule::impacts)),
        )
        .route("/api/v1/charts", need(Read, get(charts::list)))
        // The fixed paths of the ad-hoc charts win over `{name}` (no chart may take their names).
        .route(
            "/api/v1/charts/reject-rate",
            need(Read, get(charts::reject_rate)),
        )
        .route(
            "/api/v1/charts/defects-per-part",
            need(Read, get(charts::defects_per_part)),
        )
        .route("/api/v1/charts/{name}", need(Read, get(charts::get)))
        .route(
            "/api/v1/work-orders",
            need(Read, get(work_orders::list)).merge(need(WorkOrders, post(work_orders::release))),
        )
        .route(
            "/api/v1/work-orders/{id}/start",
            need(WorkOrders, post(work_orders::start)),
        )
        .route(
            "/api/v1/work-orders/{id}/complete",
            need(WorkOrders, post(work_orders::complete)),
        )
        .route("/api/v1/models", need(Read, get(models::list_models)))
        .route(
            "/api/v1/models/promote",
            need(ChangeModels, post(models::promote_model)),
        )
        .route(
            "/api/v1/models/rollback",
            need(ChangeModels, post(models::rollback_model)),
        )
        .route(
            "/api/v1/models/shadow",
            need(Read, get(models::shadow_summary))
                .merge(need(ChangeModels, put(models::set_shadow))),
        )
        .route(
            "/api/v1/backtests",
            need(Read, get(models::list_backtests))
                .merge(need(ChangeModels, post(models::start_backtest))),
        )
        .route(
            "/api/v1/backtests/{id}",
            need(Read, get(models::get_backtest)),
        )
        .route(
            "/api/v1/backtests/{id}/cancel",
            need(ChangeModels, post(models::cancel_backtest)),
        )
        .route(
            "/api/v1/training",
            need(Read, get(models::list_training))
                .merge(need(ChangeModels, post(models::start_training))),
        )
        .route(
            "/api/v1/training/{id}",
            need(Read, get(models::get_training)),
        )
        .route(
            "/api/v1/training/{id}/cancel",
            need(ChangeModels, post(models::cancel_training)),
        )
        .route("/api/v1/scenarios", need(Read, get(twin::list_scenarios)))
        .route("/api/v1/whatif", need(Read, post(twin::run_whatif)))
        .route(
            "/api/v1/tokens",
            need(Admin, get(auth::list_tokens).post(auth::create_token)),
        )
        .route(
            "/api/v1/tokens/{id}",
            need(Admin, delete(auth::revoke_token)),
        )
        .route("/api/v1/audit", need(Admin, get(records::audit_log)))
        .route("/api/v1/alarms", need(Read, get(alarms::list)))
        .route(
            "/api/v1/alarms/performance",
            need(Read, get(alarms::performance)),
        )
        .route("/api/v1/alarms/events", need(Read, get(alarms::events)))
        .route("/api/v1/alarms/{name}", need(Read, get(alarms::get)))
        .route(
            "/api/v1/alarms/{name}/history",
            need(Read, get(alarms::history)),
        )
        .route(
            "/api/v1/alarms/{name}/acknowledge",
            need(RespondToAlarms, post(alarms::acknowledge)),
        )
        .route(
            "/api/v1/alarms/{name}/shelve",
            need(RespondToAlarms, post(alarms::shelve)),
        )
        .route(
            "/api/v1/alarms/{name}/unshelve",
            need(RespondToAlarms, post(alarms::unshelve)),
        )
        .route(
            "/api/v1/alarms/{name}/suppress",
            need(AlarmService, post(alarms::suppress)),
        )
        .route(
            "/api/v1/alarms/{name}/unsuppress",
            need(AlarmService, post(alarms::unsuppress)),
        )
        .route(
            "/api/v1/alarms/{name}/out-of-service",
            need(AlarmService, post(alarms::out_of_service)),
        )
        .route(
            "/api/v1/alarms/{name}/in-service",
            need(AlarmService, post(alarms::in_service)),
        )
        .route("/api/v1/halt-line", need(Read, get(halt_line::get)))
        .route(
            "/api/v1/halt-line/reset",
            need(RespondToAlarms, post(halt_line::reset)),
        )
        .route("/api/v1/openapi.json", need(Read, get(openapi)))
        .route("/api/v1/tags", need(Read, get(sensors::list_tags)))
        .route("/api/v1/tags/{name}", need(Read, get(sensors::get_tag)))
        .route(
            "/api/v1/tags/{name}/samples",
            need(Read, get(sensors::samples)),
        )
        .route("/api/v1/tags/{name}/chart", need(Read, get(charts::tag)))
        .route("/api/v1/rootcause", need(Read, get(rootcause::get)))
        .route("/api/v1/maintenance", need(Read, get(maintenance::get)))
        .route("/api/v1/drift", need(Read, get(drift::get)))
        .route("/metrics", need(Read, get(metrics)))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // Sensor batches are larger than any other request: their own limit, added after
        // the general one so it is the only one they meet.
        .merge(
            Router::new()
                .route(
                    "/api/v1/inspections/{part_id}/labels",
                    need(Read, get(records::list_labels))
                        .merge(need(Label, post(records::add_label))),
                )
                // 64 classes with their descriptions outgrow the general limit.
                .route(
                    "/api/v1/defect-classes",
                    need(Read, get(models::defect_classes))
                        .merge(need(ChangeModels, put(models::set_defect_classes))),
                )
                .route(
                    "/api/v1/labels/coco",
                    need(
                        Label,
                        get(labelling::export_coco).post(labelling::import_coco),
                    ),
                )
                .layer(RequestBodyLimitLayer::new(MAX_LABEL_BODY_BYTES))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_LABEL_BODY_BYTES)),
        )
        .merge(
            Router::new()
                .route("/api/v1/samples", need(PushSensors, post(sensors::push)))
                .layer(RequestBodyLimitLayer::new(MAX_PUSH_BODY_BYTES))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES)),
        )
        .fallback(not_found)
        // A bug in a handler answers 500 instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        // Training uploads: an image may be a high-resolution camera's frame and a zip a whole
        // folder of them, sent over a plant network and decoded one by one. Their own body
        // limit and timeout, merged after the general ones so they are the only ones they meet.
        .merge(
            Router::new()
                .route(
                    "/api/v1/training/uploads",
                    need(Read, get(models::list_uploads)),
                )
                .route(
                    "/api/v1/training/uploads/{set}",
                    need(
                        ChangeModels,
                        post(models::upload_image).delete(models::delete_upload),
                    ),
                )
                .route(
                    "/api/v1/training/uploads/{set}/zip",
                    need(ChangeModels, post(models::upload_zip)),
                )
                .layer(RequestBodyLimitLayer::new(MAX_UPLOAD_BODY_BYTES))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BODY_BYTES))
                .layer(tower_http::catch_panic::CatchPanicLayer::new())
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    UPLOAD_TIMEOUT,
                )),
        )
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .with_state(state)
}

/// The credential of a request: `Authorization: Bearer …`, else the sign-in cookie.
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Who holds `token`; argon2 runs off the async threads the first time a token is seen.
async fn identify(tokens: &Tokens, token: String) -> Option<Principal> {
    if token.is_empty() || token.len() > 256 {
        return None;
    }
    if let Some(principal) = tokens.cached(&token) {
        return Some(principal);
    }
    let tokens = tokens.clone();
    tokio::task::spawn_blocking(move || tokens.verify(&token))
        .await
        .ok()
        .flatten()
}

/// The guard of a route group: 401 without a valid credential, 403 when the role lacks the
/// permission; otherwise the handler runs with the [`Principal`] in the request's extensions.
async fn require(
    State((api, permission)): State<(ApiState, Permission)>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = credential(request.headers()) else {
        return ApiError::Unauthorized(
            "this needs a credential: `Authorization: Bearer <token>` (see `linesight token create`)"
                .into(),
        )
        .into_response();
    };
    match identify(&api.tokens, token).await {
        None => ApiError::Unauthorized("the credential is not valid, or was revoked".into())
            .into_response(),
        Some(who) if !who.role.may(permission) => ApiError::Forbidden(format!(
            "the {} role may not do this ({permission:?})",
            who.role
        ))
        .into_response(),
        Some(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
    }
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
    /// `If-Match` named a version that is no longer the current one.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Well-formed, but the data cannot answer it (a chart with too few points to estimate
    /// its limits).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over the route's limit (found while reading it: a chunked body has no
    /// length to refuse it by up front).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The cursor points before the oldest record kept.
    #[error("no record before sequence number {first_seq} is kept (asked from {from})")]
    Gone { from: u64, first_seq: u64 },
    #[error(transparent)]
    Internal(RecordError),
    #[error("{0}")]
    InternalMessage(String),
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> ApiError {
        match error {
            RecordError::Pruned { from, first_seq } => ApiError::Gone { from, first_seq },
            RecordError::AckBeyondEnd { .. } => ApiError::Conflict(error.to_string()),
            // The store waits for disk space or reopens itself: a moment's wait, not a fault.
            RecordError::Reopening | RecordError::DiskFull { .. } => {
                ApiError::Unavailable(error.to_string())
            }
            error => ApiError::Internal(error),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    /// A body over the route's limit is 413, as the limit layer answers one whose length says
    /// so; any other unreadable body is 400.
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(rejection.body_text())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<AnalyseError> for ApiError {
    fn from(error: AnalyseError) -> ApiError {
        match error {
            AnalyseError::Record(error) => error.into(),
            error => ApiError::InternalMessage(error.to_string()),
        }
    }
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
            ControlError::Taxonomy(TaxonomyError::Invalid(_)) => {
                ApiError::BadRequest(error.to_string())
            }
            ControlError::Taxonomy(TaxonomyError::Changed { .. }) => {
                ApiError::PreconditionFailed(error.to_string())
            }
            ControlError::Taxonomy(TaxonomyError::Io { .. } | TaxonomyError::Parse { .. }) => {
                ApiError::InternalMessage(error.to_string())
            }
            ControlError::Threshold(_) | ControlError::Backtest(StartError::Backtest(_)) => {
                ApiError::BadRequest(error.to_string())
            }
            ControlError::Backtest(StartError::Thread(_))
            | ControlError::Training(TrainingError::Thread(_)) => {
                ApiError::InternalMessage(error.to_string())
            }
            ControlError::Training(TrainingError::Record(error)) => ApiError::Internal(error),
            ControlError::Training(
                TrainingError::Name(_)
                | TrainingError::Template(_)
                | TrainingError::EmptyPeriod { .. }
                | TrainingError::Upload(
                    UploadError::SetName(_)
                    | UploadError::Class(_)
                    | UploadError::NotAnImage(_)
                    | UploadError::TooLarge { .. }
                    | UploadError::NotAZip(_)
                    | UploadError::TooManyEntries
                    | UploadError::ZipTooLarge,
                ),
            ) => ApiError::BadRequest(error.to_string()),
            ControlError::Training(
                TrainingError::Upload(UploadError::UnknownSet(_)) | TrainingError::UnknownJob(_),
            )
            | ControlError::BacktestCancel(CancelError::Unknown(_)) => {
                ApiError::NotFound(error.to_string())
            }
            ControlError::Training(TrainingError::Upload(UploadError::Io { .. })) => {
                ApiError::InternalMessage(error.to_string())
            }
            // The version exists but cannot run here, or the request does not fit the state.
            _ => ApiError::Conflict(error.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    /// With 410: the oldest sequence number still kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seq: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut first_seq = None;
        let (status, message) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            ApiError::PreconditionFailed(m) => (StatusCode::PRECONDITION_FAILED, m.clone()),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
            ApiError::NotAcceptable(m) => (StatusCode::NOT_ACCEPTABLE, m.clone()),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.clone()),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m.clone()),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m.clone()),
            ApiError::Gone {
                first_seq: first, ..
            } => {
                first_seq = Some(*first);
                (StatusCode::GONE, self.to_string())
            }
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
        let mut response = (
            status,
            Json(ErrorBody {
                error: message,
                first_seq,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"linesight\""),
            );
        }
        response
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The live page; without a credential, the sign-in page instead.
async fn live_page(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    signed_in_page(
        &api,
        &headers,
        LIVE_PAGE,
        Permission::Read,
        "read the station",
    )
    .await
}

/// The what-if page (any role: it reads, and runs the twin, never the line).
async fn whatif_page(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    signed_in_page(
        &api,
        &headers,
        WHATIF_PAGE,
        Permission::Read,
        "read the station",
    )
    .await
}

/// The MES view: KPIs, Pareto, control charts, work orders, root cause, maintenance (any role).
async fn mes_page(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    signed_in_page(
        &api,
        &headers,
        MES_PAGE,
        Permission::Read,
        "read the station",
    )
    .await
}

/// The labelling page: engineers and admins (the roles that may label).
async fn label_page(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    signed_in_page(&api, &headers, LABEL_PAGE, Permission::Label, "label parts").await
}

async fn models_page(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    signed_in_page(
        &api,
        &headers,
        MODELS_PAGE,
        Permission::ChangeModels,
        "train or change models",
    )
    .await
}

/// `/assets/<page>.js`: a page's script.
async fn page_script(axum::extract::Path(script): axum::extract::Path<String>) -> Response {
    let page = script.strip_suffix(".js");
    match PAGE_SCRIPTS.iter().find(|(name, _)| Some(*name) == page) {
        Some((_, body)) => asset("text/javascript; charset=utf-8", body),
        None => not_found().await.into_response(),
    }
}

/// A script or stylesheet the pages load, compiled in: a plant network has no CDN.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on every load: an upgraded station must not pair new pages with
            // an old cached library or stylesheet (the URLs carry no version).
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `page` to a signed-in browser whose role may `need`; the sign-in page to any other, and a
/// 403 page naming the role to one that may not (`what`: what the page is for).
async fn signed_in_page(
    api: &ApiState,
    headers: &HeaderMap,
    page: &'static str,
    need: Permission,
    what: &str,
) -> Response {
    let who = match credential(headers) {
        Some(token) => identify(&api.tokens, token).await,
        None => None,
    };
    match who {
        None => Redirect::to("/login").into_response(),
        Some(who) if !who.role.may(need) => (
            StatusCode::FORBIDDEN,
            Html(format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Linesight</title>\
                 <link rel=\"stylesheet\" href=\"/assets/pages.css\"></head><body><main>\
                 <h1>Not for this role</h1><p role=\"alert\">The {} role may not {what}. \
                 <a href=\"/\">Back to the live page</a></p></main></body></html>",
                who.role
            )),
        )
            .into_response(),
        Some(_) => Html(page).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// The sign-in page. With `?token=…` (the link `make run` prints), a valid token becomes an
/// HttpOnly cookie and the browser goes to the live page.
async fn login(
    State(api): State<ApiState>,
    query: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = query.ok().and_then(|q| q.0.token).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Html(LOGIN_PAGE).into_response();
    };
    if identify(&api.tokens, token.clone()).await.is_none() {
        let page = LOGIN_PAGE.replace(
            "<!--message-->",
            "<p class=\"error\" role=\"alert\">That token is not valid, or was revoked.</p>",
        );
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("linesight_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
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
    /// The record journal: its identity and extent.
    records: RecordsView,
    /// The work order new parts are attributed to.
    work_order: Option<String>,
    /// Alarms raised and not cleared, by code.
    active_alarms: Vec<String>,
    /// Whether the running station works as it should, and if not, why.
    health: HealthView,
}

/// The station's health as its monitor last judged it (once a second).
#[derive(Serialize)]
struct HealthView {
    /// `ok`, `degraded` (running, but something is failing) or `fault` (parts go to reject).
    condition: &'static str,
    /// In words an operator acts on; absent when all is well.
    reason: Option<String>,
}

#[derive(Serialize)]
struct RecordsView {
    instance_id: String,
    first_seq: u64,
    last_seq: u64,
}

async fn station(State(api): State<ApiState>) -> Json<StationView> {
    let m = &api.metrics;
    let state = api
        .state
        .read()
        .map(|s| *s)
        .unwrap_or(StationState::Faulted);
    let live = api.models.active().live();
    let mut active_alarms = Vec::new();
    if m.disk_low.get() != 0 {
        active_alarms.push(crate::record::DISK_LOW_ALARM.to_owned());
    }
    if m.records_waiting.get() != 0 {
        active_alarms.push(crate::record::RECORDS_FAILING_ALARM.to_owned());
    }
    if m.plc_heartbeat_lost.get() != 0 {
        active_alarms.push(crate::actuate::PLC_LOST_ALARM.to_owned());
    }
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
        records: RecordsView {
            instance_id: api.store.instance_id().to_owned(),
            first_seq: api.store.first_seq(),
            last_seq: api.store.last_seq(),
        },
        work_order: api.store.work_order_at(chrono::Utc::now()).map(|w| w.id),
        active_alarms,
        health: {
            let health = api.health.read().map(|h| h.clone()).unwrap_or_default();
            let condition = match (health.fault, health.degraded) {
                (true, _) => "fault",
                (false, true) => "degraded",
                (false, false) => "ok",
            };
            HealthView {
                condition,
                reason: (condition != "ok").then_some(health.message),
            }
        },
    })
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

/// Test helpers that hold the OpenAPI document to what the handlers serialise.
#[cfg(test)]
pub(crate) mod openapi_check {
    /// The properties of component schema `schema`, sorted; every one must be required.
    pub fn schema_fields(schema: &str) -> Vec<String> {
        let spec: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("json");
        let schema_value = &spec["components"]["schemas"][schema];
        let mut required: Vec<String> = schema_value["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} has required fields"))
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        let mut properties: Vec<String> = schema_value["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        required.sort();
        properties.sort();
        assert_eq!(required, properties, "{schema}: every property is required");
        required
    }

    /// The keys of a serialised JSON object, sorted.
    pub fn served_fields(value: &serde_json::Value) -> Vec<String> {
        let mut names: Vec<String> = value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}
