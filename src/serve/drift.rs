//! The drift watch over HTTP: whether the live model still fits the parts, each comparison with
//! its figures, and the parts that drove it. The alarm it raises (`model_drift`) is under
//! `/api/v1/alarms` like any other; the parts unlike the training set are in the labelling
//! queue.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use crate::analyse::drift::DriftReport;

/// What `GET /api/v1/drift` answers.
#[derive(Debug, Serialize)]
pub struct DriftView {
    /// The latest evaluation; `null` until the first (a few seconds after the start).
    pub report: Option<DriftReport>,
}

/// `GET /api/v1/drift`.
pub(super) async fn get(State(api): State<ApiState>) -> Json<DriftView> {
    Json(DriftView {
        report: api.drift.get(),
    })
}
