//! The halt line over HTTP: its state (`GET /api/v1/halt-line`) and the operator's reset
//! (`POST /api/v1/halt-line/reset`, operators and above: the only way to clear the latch).
//!
//! A station without `[halt_line]` answers 404 on both.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;

use super::auth::Principal;
use super::{ApiError, ApiState};
use crate::analyse::actions::{HaltLine, HaltLineError, HaltLineView};
use crate::analyse::alarms::Actor;

impl From<HaltLineError> for ApiError {
    fn from(error: HaltLineError) -> ApiError {
        match error {
            HaltLineError::NotLatched => ApiError::Conflict(error.to_string()),
            HaltLineError::BadComment => ApiError::BadRequest(error.to_string()),
            HaltLineError::Record(error) => error.into(),
            HaltLineError::NoCoil(_)
            | HaltLineError::LatchedWithoutSection(_)
            | HaltLineError::Actions(_)
            | HaltLineError::Alarm(_) => ApiError::InternalMessage(error.to_string()),
        }
    }
}

fn configured(api: &ApiState) -> Result<&HaltLine, ApiError> {
    api.halt_line
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this station has no halt line ([halt_line])".into()))
}

/// The halt line's state.
pub(super) async fn get(State(api): State<ApiState>) -> Result<Json<HaltLineView>, ApiError> {
    Ok(Json(configured(&api)?.view()))
}

/// The body of a reset: an optional comment (kept in the audit entry).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    comment: Option<String>,
}

/// Resets the latched halt: audit entry, alarm returned, coil OFF. 409 when not latched.
pub(super) async fn reset(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Json<HaltLineView>, ApiError> {
    let halt_line = configured(&api)?;
    let body: ResetBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResetBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))?
    };
    let actor = Actor {
        name: who.name.clone(),
        role: who.role.as_str().into(),
    };
    Ok(Json(
        halt_line.reset(&actor, body.comment, Utc::now()).await?,
    ))
}

#[cfg(test)]
mod tests {
    use crate::actuate::Burst;
    use crate::analyse::actions::HaltLineView;
    use crate::serve::openapi_check::{schema_fields, served_fields};

    #[test]
    fn the_view_serves_what_the_openapi_document_says() {
        let view = HaltLineView {
            latched: true,
            reason: Some("3 defects in the last 5 parts (parts 1–5)".into()),
            since: Some(chrono::Utc::now()),
            burst: Some(Burst {
                defects: 3,
                parts: 5,
                first_part_id: 1,
                last_part_id: 5,
                defect_part_ids: vec![1, 3, 5],
            }),
            reset_by: None,
            trips: 1,
            coil: 0,
            coil_on: Some(true),
            defects_in_window: 3,
            classes: vec![],
            burst_defects: 3,
            within_parts: 5,
        };
        let served = serde_json::to_value(&view).expect("json");
        assert_eq!(served_fields(&served), schema_fields("HaltLineView"));
        assert_eq!(
            served_fields(&served["burst"]),
            schema_fields("HaltLineBurst")
        );
    }
}
