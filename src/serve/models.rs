//! Model changes over HTTP: list, promote, roll back, shadow. Engineers and admins only; each
//! change is recorded with its audit entry in one durable write.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::{ApiError, ApiState};
use crate::model_control::{ControlError, ModelStatus};
use crate::record::{ModelEvent, ShadowSummary};

/// A registry entry as the API shows it.
#[derive(Serialize)]
struct AvailableModel {
    version: String,
    kind: String,
    threshold: f32,
}

#[derive(Serialize)]
pub(super) struct ModelsView {
    #[serde(flatten)]
    status: ModelStatus,
    available: Vec<AvailableModel>,
    /// Every promotion, rollback and shadow change, oldest first.
    events: Vec<ModelEvent>,
}

pub(super) async fn list_models(State(api): State<ApiState>) -> Result<Json<ModelsView>, ApiError> {
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
pub(super) struct PromoteRequest {
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShadowRequest {
    /// The version to run in shadow; `null` stops the shadow.
    version: Option<String>,
}

pub(super) async fn promote_model(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<Json<ModelEvent>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let models = api.models.clone();
    let entry = who.audit("model.promote", &request.version);
    to_completion(async move { models.promote(&request.version, Some(entry)).await }).await
}

pub(super) async fn rollback_model(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<ModelEvent>, ApiError> {
    let models = api.models.clone();
    let entry = who.audit("model.rollback", "live");
    to_completion(async move { models.rollback(Some(entry)).await }).await
}

pub(super) async fn set_shadow(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<ShadowRequest>, JsonRejection>,
) -> Result<Json<ModelEvent>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let models = api.models.clone();
    let entry = who.audit("model.shadow", request.version.as_deref().unwrap_or("none"));
    to_completion(async move {
        models
            .set_shadow(request.version.as_deref(), Some(entry))
            .await
    })
    .await
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

pub(super) async fn shadow_summary(
    State(api): State<ApiState>,
) -> Result<Json<ShadowSummary>, ApiError> {
    api.models
        .shadow_summary()?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no model is running in shadow".into()))
}
