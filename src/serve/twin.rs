//! The line's digital twin over HTTP: the scenarios the station ships (`[station] scenarios`)
//! and what-if runs on them, the same report `linesight whatif --json` prints. A run is
//! CPU-bound (a fraction of a second for a shift; a few seconds with `analyse`), so it runs off
//! the async threads and one at a time: a second caller is told to come back.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::twin::scenario::{SETTINGS, list};
use crate::twin::{self, Change, Scenario, ScenarioError, TwinError, WhatIf};

/// The scenarios folder and the gate of what-if runs.
#[derive(Clone)]
pub struct TwinApi {
    pub scenarios: Option<PathBuf>,
    pub one_at_a_time: Arc<tokio::sync::Semaphore>,
}

impl TwinApi {
    pub fn new(scenarios: Option<PathBuf>) -> TwinApi {
        TwinApi {
            scenarios,
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    fn folder(&self) -> Result<PathBuf, ApiError> {
        self.scenarios.clone().ok_or_else(|| {
            ApiError::NotFound(
                "this station has no twin scenarios ([station] scenarios in its config)".into(),
            )
        })
    }
}

#[derive(Serialize)]
pub(super) struct ScenarioSummary {
    name: String,
    description: String,
    hours: f64,
    parts_per_min: f64,
    work_orders: usize,
    /// Its process sensors, whose settings a change may name (`press_temp.base`).
    sensors: Vec<String>,
}

/// A setting a what-if change may name.
#[derive(Serialize)]
pub(super) struct SettingHelp {
    name: &'static str,
    what: &'static str,
}

#[derive(Serialize)]
pub(super) struct ScenarioList {
    scenarios: Vec<ScenarioSummary>,
    /// Files of the folder that are not valid scenarios, with why.
    invalid: Vec<String>,
    /// The settings a change may name, with what each moves.
    settings: Vec<SettingHelp>,
}

pub(super) async fn list_scenarios(
    State(api): State<ApiState>,
) -> Result<Json<ScenarioList>, ApiError> {
    let dir = api.twin.folder()?;
    let listed = tokio::task::spawn_blocking(move || {
        let mut scenarios = Vec::new();
        let mut invalid = Vec::new();
        for name in list(&dir) {
            match Scenario::named(&dir, &name) {
                Ok(s) => scenarios.push(ScenarioSummary {
                    parts_per_min: s.parts_per_min(),
                    work_orders: s.work_orders.len(),
                    sensors: s.process.sensors.iter().map(|t| t.name.clone()).collect(),
                    name: s.name,
                    description: s.description.trim().to_owned(),
                    hours: s.hours,
                }),
                Err(error) => invalid.push(error.to_string()),
            }
        }
        let settings = SETTINGS
            .iter()
            .map(|&(name, what)| SettingHelp { name, what })
            .collect();
        ScenarioList {
            scenarios,
            invalid,
            settings,
        }
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("scenario listing failed: {e}")))?;
    Ok(Json(listed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhatIfRequest {
    /// A scenario's name, as `GET /api/v1/scenarios` lists it.
    scenario: String,
    /// `SETTING=AMOUNT`, as `belt_speed=+20%`.
    #[serde(default)]
    changes: Vec<String>,
    /// Simulated hours instead of the scenario's.
    hours: Option<f64>,
    /// Also run the station's root cause and maintenance watches on the changed run.
    #[serde(default)]
    analyse: bool,
}

/// The most changes one request may carry.
const MAX_CHANGES: usize = 32;

pub(super) async fn run_whatif(
    State(api): State<ApiState>,
    body: Result<Json<WhatIfRequest>, JsonRejection>,
) -> Result<Json<WhatIf>, ApiError> {
    let Json(request) = body?;
    let dir = api.twin.folder()?;
    if request.changes.len() > MAX_CHANGES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_CHANGES} changes, got {}",
            request.changes.len()
        )));
    }
    let changes = request
        .changes
        .iter()
        .map(|text| text.parse::<Change>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Ok(permit) = api.twin.one_at_a_time.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(
            "another what-if is running; try again shortly".into(),
        ));
    };
    let report = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut scenario = Scenario::named(&dir, &request.scenario)?;
        if let Some(hours) = request.hours {
            scenario.hours = hours;
            scenario.check()?;
        }
        let scratch = if request.analyse {
            Some(tempfile::tempdir().map_err(TwinError::Scratch)?)
        } else {
            None
        };
        twin::whatif(&scenario, &changes, scratch.as_ref().map(|d| d.path()))
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("what-if task failed: {e}")))?;
    match report {
        Ok(report) => Ok(Json(report)),
        Err(TwinError::Scenario(ScenarioError::NotFound { name, known, .. })) => Err(
            ApiError::NotFound(format!("no scenario {name:?} (there are: {known})")),
        ),
        Err(TwinError::Scenario(
            error @ (ScenarioError::Invalid { .. } | ScenarioError::Change { .. }),
        )) => Err(ApiError::Unprocessable(error.to_string())),
        Err(error) => Err(ApiError::InternalMessage(error.to_string())),
    }
}
