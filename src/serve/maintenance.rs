//! Maintenance over HTTP: what each `[[maintenance]]` watch last saw (forecasts with their
//! intervals, repeating defects) and the tags' recent change points. The alarms the watches
//! raise are under `/api/v1/alarms` like any other.

use axum::Json;
use axum::extract::State;

use super::ApiState;
use crate::analyse::maintenance::monitor::MaintenanceView;

/// `GET /api/v1/maintenance`.
pub(super) async fn get(State(api): State<ApiState>) -> Json<MaintenanceView> {
    Json(api.maintenance.get())
}
