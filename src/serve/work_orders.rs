//! Work orders from the MES or ERP: released (pushed), started (new parts are attributed to
//! it), completed. Each change is a journal record with its audit entry, in one write.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;

use super::auth::Principal;
use super::records::valid_text;
use super::{ApiError, ApiState};
use crate::record::{
    Record, RecordBody, WorkOrder, WorkOrderAction, WorkOrderRecord, WorkOrderState,
};

/// A work order as pushed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkOrderRequest {
    id: String,
    product: String,
    quantity: u64,
    due: chrono::DateTime<Utc>,
    ideal_cycle_time_s: f64,
}

impl WorkOrderRequest {
    fn check(self) -> Result<WorkOrder, ApiError> {
        // An id is a path segment of /work-orders/{id}/start: no '/', and not "." or "..".
        let id_ok = (1..=64).contains(&self.id.len())
            && !self.id.starts_with('.')
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            return Err(ApiError::BadRequest(
                "id must be 1 to 64 characters of letters, digits, '-', '_', '.', not starting with '.'"
                    .into(),
            ));
        }
        if !valid_text(&self.product, 128) {
            return Err(ApiError::BadRequest(
                "product must be 1 to 128 characters, no control characters".into(),
            ));
        }
        if !(1..=1_000_000_000).contains(&self.quantity) {
            return Err(ApiError::BadRequest(
                "quantity must be between 1 and 1000000000".into(),
            ));
        }
        if !(self.ideal_cycle_time_s.is_finite()
            && self.ideal_cycle_time_s > 0.0
            && self.ideal_cycle_time_s <= 86_400.0)
        {
            return Err(ApiError::BadRequest(
                "ideal_cycle_time_s must be more than 0 and at most 86400".into(),
            ));
        }
        Ok(WorkOrder {
            id: self.id,
            product: self.product,
            quantity: self.quantity,
            due: super::checked_instant("due", self.due)?,
            ideal_cycle_time_s: self.ideal_cycle_time_s,
        })
    }
}

pub(super) async fn list(State(api): State<ApiState>) -> Json<Vec<WorkOrderState>> {
    Json(api.store.work_orders())
}

/// Releases a work order, or updates one not started yet.
pub(super) async fn release(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<WorkOrderRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Record>), ApiError> {
    let Json(request) = body?;
    let order = request.check()?;
    let _one = CHANGING.lock().await;
    if let Some(existing) = find(&api, &order.id)
        && existing.started_at.is_some()
    {
        return Err(ApiError::Conflict(format!(
            "work order {} has started; it can no longer be changed",
            order.id
        )));
    }
    let record = change(&api, &who, WorkOrderAction::Released, order).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

pub(super) async fn start(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    transition(&api, &who, id, WorkOrderAction::Started).await
}

pub(super) async fn complete(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    transition(&api, &who, id, WorkOrderAction::Completed).await
}

/// Starts or completes a released order: a completed order does neither, a running one does
/// not start again.
async fn transition(
    api: &ApiState,
    who: &Principal,
    id: Result<Path<String>, PathRejection>,
    action: WorkOrderAction,
) -> Result<Json<Record>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let _one = CHANGING.lock().await;
    let order = find(api, &id).ok_or_else(|| unknown(&id))?;
    if order.completed_at.is_some() {
        return Err(ApiError::Conflict(format!("work order {id} is completed")));
    }
    if action == WorkOrderAction::Started && order.started_at.is_some() {
        return Err(ApiError::Conflict(format!("work order {id} is running")));
    }
    Ok(Json(change(api, who, action, order.order).await?))
}

/// Work-order changes one at a time: each checks the state, then writes.
static CHANGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn find(api: &ApiState, id: &str) -> Option<WorkOrderState> {
    api.store
        .work_orders()
        .into_iter()
        .find(|o| o.order.id == id)
}

fn unknown(id: &str) -> ApiError {
    ApiError::NotFound(format!("no work order {id:?}"))
}

async fn change(
    api: &ApiState,
    who: &Principal,
    action: WorkOrderAction,
    order: WorkOrder,
) -> Result<Record, ApiError> {
    let verb = match action {
        WorkOrderAction::Released => "work_order.release",
        WorkOrderAction::Started => "work_order.start",
        WorkOrderAction::Completed => "work_order.complete",
    };
    let audit = RecordBody::Audit(who.audit(verb, &order.id));
    let body = RecordBody::WorkOrder(WorkOrderRecord {
        action,
        order,
        by: who.name.clone(),
    });
    let mut written = api.store.append_all(vec![body, audit]).await?;
    Ok(written.remove(0))
}
