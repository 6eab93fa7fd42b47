//! Model changes over HTTP: list, promote, roll back, shadow. Engineers and admins only; each
//! change is recorded with its audit entry in one durable write. And backtests: a candidate
//! replayed over a recorded period, started here and watched until its report is ready. And
//! training: a model learnt from the station's own records, watched phase by phase.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::{ApiError, ApiState};
use crate::inspect::backtest::{BacktestJob, DEFAULT_MAX_PARTS, KEEP_JOBS, Period};
use crate::inspect::taxonomy::{DefectClass, Taxonomy};
use crate::inspect::training::uploads::{
    UploadError, UploadSet, UploadedImage, Uploads, ZipUpload,
};
use crate::inspect::training::{
    Family, KEEP_TRAINING_JOBS, Source, TrainingError, TrainingJob, TrainingRequest,
};
use crate::model_control::{ControlError, ModelStatus};
use crate::models::anomaly::orientation::Orientations;
use crate::record::{ModelEvent, RecordBody, ShadowSummary};

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
    let Json(request) = body?;
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
    let Json(request) = body?;
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
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, ControlError>> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    match tokio::spawn(change).await {
        Ok(result) => Ok(Json(result?)),
        Err(error) => Err(ApiError::InternalMessage(format!(
            "model change task failed: {error}"
        ))),
    }
}

/// The defect classes, as `GET` shows them.
#[derive(Debug, Serialize)]
pub(super) struct DefectClassesBody {
    classes: Vec<DefectClass>,
}

/// What a `PUT` takes: the classes, and which of them are renamed ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DefectClassesInput {
    classes: Vec<DefectClass>,
    /// Classes renamed, old name → new name; their labels follow.
    #[serde(default)]
    renames: BTreeMap<String, String>,
}

/// What a `PUT` answers: the classes saved, and the parts relabelled for its renames.
#[derive(Debug, Serialize)]
pub(super) struct SavedDefectClasses {
    classes: Vec<DefectClass>,
    relabelled: usize,
}

/// The classes with their version in `ETag`, for a `PUT` to send back as `If-Match`.
fn with_etag(taxonomy: &Taxonomy) -> (axum::http::HeaderMap, Json<DefectClassesBody>) {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(tag) = axum::http::HeaderValue::from_str(&taxonomy.etag()) {
        headers.insert(axum::http::header::ETAG, tag);
    }
    let body = DefectClassesBody {
        classes: taxonomy.classes().to_vec(),
    };
    (headers, Json(body))
}

pub(super) async fn defect_classes(
    State(api): State<ApiState>,
) -> (axum::http::HeaderMap, Json<DefectClassesBody>) {
    with_etag(&api.models.taxonomy())
}

/// Replaces the taxonomy as a whole (the page edits a copy and saves it): a class left out is
/// no longer listed, so a defect of it rejects again.
/// With `If-Match`, only if the classes are still the version it names (412 otherwise).
pub(super) async fn set_defect_classes(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: Result<Json<DefectClassesInput>, JsonRejection>,
) -> Result<(axum::http::HeaderMap, Json<SavedDefectClasses>), ApiError> {
    let Json(request) = body?;
    let expected = match headers.get(axum::http::header::IF_MATCH) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("If-Match is not text".into()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let taxonomy = Taxonomy::new(request.classes).map_err(ControlError::from)?;
    let mut summary = taxonomy_summary(&taxonomy);
    if !request.renames.is_empty() {
        let renames: Vec<String> = (request.renames.iter())
            .map(|(old, new)| format!("{old} → {new}"))
            .collect();
        summary.push_str(&format!("; renamed {}", renames.join(", ")));
    }
    let entry = who.audit("defect_classes.set", &summary);
    let models = api.models.clone();
    let Json((saved, relabelled)) = to_completion(async move {
        let relabelled = models
            .set_taxonomy(
                taxonomy.clone(),
                request.renames,
                expected.as_deref(),
                entry,
            )
            .await?;
        Ok((taxonomy, relabelled))
    })
    .await?;
    let (headers, Json(DefectClassesBody { classes })) = with_etag(&saved);
    Ok((
        headers,
        Json(SavedDefectClasses {
            classes,
            relabelled,
        }),
    ))
}

/// The audit log's one line for a taxonomy: what rejects and what passes.
fn taxonomy_summary(taxonomy: &Taxonomy) -> String {
    let names = |rejects: bool| {
        let names: Vec<&str> = taxonomy
            .classes()
            .iter()
            .filter(|c| c.rejects == rejects)
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    format!(
        "{} classes; rejected: {}; passed: {}",
        taxonomy.classes().len(),
        names(true),
        names(false)
    )
}

pub(super) async fn shadow_summary(
    State(api): State<ApiState>,
) -> Result<Json<ShadowSummary>, ApiError> {
    let models = api.models.clone();
    // A scan of every shadow verdict kept: blocking work, off the async workers.
    tokio::task::spawn_blocking(move || models.shadow_summary())
        .await
        .map_err(|e| ApiError::InternalMessage(format!("shadow summary task failed: {e}")))??
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no model is running in shadow".into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BacktestRequest {
    /// The candidate's registry version.
    model: String,
    /// Parts decided at or after `from` and before `to` (RFC 3339).
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The candidate's threshold; by default the one it would go live with.
    threshold: Option<f32>,
    /// At most this many parts (the oldest of the period).
    max_parts: Option<usize>,
}

/// The most parts one backtest may ask for.
const MAX_PARTS_LIMIT: usize = 200_000;

pub(super) async fn start_backtest(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<BacktestRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BacktestJob>), ApiError> {
    let Json(request) = body?;
    let max_parts = request.max_parts.unwrap_or(DEFAULT_MAX_PARTS);
    if !(1..=MAX_PARTS_LIMIT).contains(&max_parts) {
        return Err(ApiError::BadRequest(format!(
            "max_parts must be between 1 and {MAX_PARTS_LIMIT}"
        )));
    }
    if let Some(threshold) = request.threshold
        && !threshold.is_finite()
    {
        return Err(ApiError::BadRequest("threshold must be a number".into()));
    }
    let period = Period {
        from: super::checked_instant("from", request.from)?,
        to: super::checked_instant("to", request.to)?,
        max_parts,
    };
    let audit = who.audit(
        "backtest.start",
        &format!(
            "{} on parts from {} to {}",
            request.model,
            period.from.to_rfc3339(),
            period.to.to_rfc3339()
        ),
    );
    let job = api
        .models
        .start_backtest(&request.model, request.threshold, period, audit)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Serialize)]
pub(super) struct BacktestList {
    /// Newest first.
    backtests: Vec<BacktestJob>,
}

pub(super) async fn list_backtests(State(api): State<ApiState>) -> Json<BacktestList> {
    Json(BacktestList {
        backtests: api.models.backtests().list(),
    })
}

pub(super) async fn get_backtest(
    State(api): State<ApiState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<BacktestJob>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    api.models.backtests().get(id).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no backtest {id} (the newest {KEEP_JOBS} are kept until a restart)"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainingBody {
    family: Family,
    /// The model's name (its version adds a hash of what it learnt).
    name: String,
    /// Parts decided at or after `from` and before `to` (RFC 3339)…
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// …where unlabelled parts the live model passed count as good; default true for an
    /// anomaly model (nothing is labelled on a new product's first day) and a template one
    /// (its good parts show differences that are no defect), false for a supervised one (it
    /// learns from labels).
    passed_as_good: Option<bool>,
    /// Or the images of an upload set.
    upload: Option<String>,
    /// The side of the square the model sees: one of [`INPUT_SIZES`]; the family's default
    /// when absent.
    input_size: Option<String>,
    /// For an anomaly model: which turned copies of the good images its bank learns from
    /// (`none`, the default; `auto`; `all`; or turns by name, comma-separated), as the CLI's
    /// `--orientations`.
    orientations: Option<String>,
    /// For a template model: the recorded part whose image is the product's golden image.
    golden_part: Option<u64>,
}

/// The input sizes a station's training may be asked for: the run's choice (up to 256, or up
/// to 512) or a size the models are measured at. Any other size is refused, so that no request
/// makes the station's one training thread resample images to a square of its choosing.
pub(super) const INPUT_SIZES: [&str; 5] = ["auto", "auto:512", "128", "256", "512"];

pub(super) async fn start_training(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<TrainingBody>, JsonRejection>,
) -> Result<(StatusCode, Json<TrainingJob>), ApiError> {
    let Json(body) = body?;
    let source = match (body.from, body.to, body.upload, body.passed_as_good) {
        (Some(from), Some(to), None, passed_as_good) => Source::Records {
            from: super::checked_instant("from", from)?,
            to: super::checked_instant("to", to)?,
            // A supervised model learns from labels; an anomaly model's good parts, and a
            // template model's differences that are no defect, come from what passed.
            passed_as_good: passed_as_good.unwrap_or(body.family != Family::Supervised),
        },
        (None, None, Some(set), None) => Source::Upload { set },
        _ => {
            return Err(ApiError::BadRequest(
                "name the images: `from` and `to` (with `passed_as_good` if you like), or an \
                 `upload` set"
                    .into(),
            ));
        }
    };
    let input_size = match body.input_size.as_deref() {
        None => None,
        Some(size) if INPUT_SIZES.contains(&size) => Some(
            size.parse()
                .map_err(|e: String| ApiError::BadRequest(format!("`input_size` {size:?}: {e}")))?,
        ),
        Some(size) => {
            return Err(ApiError::BadRequest(format!(
                "`input_size` is one of {}, not {size:?}",
                INPUT_SIZES.join(", ")
            )));
        }
    };
    let orientations = match (body.orientations.as_deref(), body.family) {
        // `none` is every family's default, so any may say it.
        (None | Some("none"), _) => Orientations::None,
        // The names as the OpenAPI pattern spells them: no spaces (the CLI's parser trims).
        (Some(turns), Family::Anomaly) if turns.contains(char::is_whitespace) => {
            return Err(ApiError::BadRequest(format!(
                "`orientations` {turns:?}: names comma-separated, without spaces"
            )));
        }
        (Some(turns), Family::Anomaly) => turns
            .parse()
            .map_err(|e: String| ApiError::BadRequest(format!("`orientations`: {e}")))?,
        (Some(_), Family::Supervised) => {
            return Err(ApiError::BadRequest(
                "`orientations` is for anomaly models: a supervised model learns turned \
                 parts from its own augmentation"
                    .into(),
            ));
        }
        (Some(_), Family::Template) => {
            return Err(ApiError::BadRequest(
                "`orientations` is for anomaly models: a template model compares each part \
                 with its golden image as it lies, aligned"
                    .into(),
            ));
        }
    };
    if body.family == Family::Template && input_size.is_some() {
        return Err(ApiError::BadRequest(
            "`input_size` is not for template models: they compare parts pixel for pixel at \
             their own size"
                .into(),
        ));
    }
    let request = TrainingRequest {
        family: body.family,
        name: body.name,
        source,
        input_size,
        orientations,
        golden_part: body.golden_part,
        requested_by: who.name.clone(),
    };
    let audit = who.audit("model.train", &request.name);
    let job = api.models.start_training(request, Some(audit)).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Serialize)]
pub(super) struct TrainingList {
    /// Newest first.
    jobs: Vec<TrainingJob>,
}

pub(super) async fn list_training(State(api): State<ApiState>) -> Json<TrainingList> {
    Json(TrainingList {
        jobs: api.models.training().list(),
    })
}

pub(super) async fn get_training(
    State(api): State<ApiState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<TrainingJob>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    api.models.training().get(id).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no training job {id} (the newest {KEEP_TRAINING_JOBS} are kept until a restart)"
        ))
    })
}

/// Asks a running backtest to stop; it ends `cancelled` after the part it is replaying.
pub(super) async fn cancel_backtest(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<(StatusCode, Json<BacktestJob>), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let audit = who.audit("backtest.cancel", &format!("backtest {id}"));
    let job = api.models.cancel_backtest(id, audit).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Asks a running training job to stop; it ends `cancelled` within one step of its phase.
pub(super) async fn cancel_training(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<(StatusCode, Json<TrainingJob>), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let audit = who.audit("model.train.cancel", &format!("training job {id}"));
    let job = api.models.cancel_training(id, Some(audit)).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Runs `work` on the station's upload sets on a blocking thread (it reads and writes files).
async fn on_uploads<T: Send + 'static>(
    api: &ApiState,
    work: impl FnOnce(&Uploads) -> Result<T, UploadError> + Send + 'static,
) -> Result<T, ApiError> {
    let models = api.models.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<T, TrainingError> {
        Ok(work(models.training().uploads()?)?)
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("the upload task failed: {e}")))?;
    Ok(done.map_err(ControlError::from)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    /// `good`, or the defect class the image shows.
    class: String,
}

/// `POST /api/v1/training/uploads/{set}?class=…`: one image (PNG, JPEG or BMP) as the body.
/// Uploaded images become training data, so each new one is audited (after it is stored: an
/// image refused or already in the set changes nothing).
pub(super) async fn upload_image(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    set: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<UploadedImage>), ApiError> {
    let Path(set) = set.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let stored = on_uploads(&api, move |uploads| uploads.add(&set, &query.class, &body)).await?;
    if !stored.duplicate {
        let target = format!("{}/{}/{}", stored.set, stored.class, stored.image);
        api.store
            .append(RecordBody::Audit(who.audit("training.upload", &target)))
            .await?;
    }
    Ok((StatusCode::CREATED, Json(stored)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ZipQuery {
    /// `good` or a defect class for every image; absent: each image's folder names its class.
    class: Option<String>,
}

/// `POST /api/v1/training/uploads/{set}/zip[?class=…]`: a zip of images as the body.
pub(super) async fn upload_zip(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    set: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<ZipQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ZipUpload>), ApiError> {
    let Path(set) = set.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // Stop unpacking before the route's timeout answers 503, so the client gets the report.
    let deadline = std::time::Instant::now() + super::UPLOAD_TIMEOUT.mul_f32(0.9);
    let report = on_uploads(&api, move |uploads| {
        uploads.add_zip(&set, query.class.as_deref(), &body, deadline)
    })
    .await?;
    if !report.added.is_empty() {
        let added: Vec<String> = (report.added.iter())
            .map(|(class, n)| format!("{n} {class}"))
            .collect();
        let target = format!("{}: {}", report.set, added.join(", "));
        api.store
            .append(RecordBody::Audit(who.audit("training.upload", &target)))
            .await?;
    }
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Serialize)]
pub(super) struct UploadList {
    sets: Vec<UploadSet>,
}

pub(super) async fn list_uploads(
    State(api): State<ApiState>,
) -> Result<Json<UploadList>, ApiError> {
    let sets = on_uploads(&api, |uploads| uploads.list()).await?;
    Ok(Json(UploadList { sets }))
}

pub(super) async fn delete_upload(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    set: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(set) = set.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let models = api.models.clone();
    let audit = who.audit("training.upload.delete", &set);
    models.delete_upload(set, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::backtest::JobState;
    use crate::inspect::training::{Preview, TrainedModel, TrainingSet};
    use crate::learn::progress::PhaseProgress;
    use crate::part::Verdict;
    use crate::serve::openapi_check::{schema_fields, served_fields};

    /// The input sizes the OpenAPI description offers a training request are the ones the
    /// handler takes.
    #[test]
    fn the_openapi_input_sizes_are_the_ones_taken() {
        let spec: serde_json::Value = serde_json::from_str(crate::serve::OPENAPI).expect("json");
        let offered: Vec<&str> =
            spec["components"]["schemas"]["TrainingRequest"]["properties"]["input_size"]["enum"]
                .as_array()
                .expect("an enum of input sizes")
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
        assert_eq!(offered, INPUT_SIZES);
    }

    /// The turns the OpenAPI description's pattern lets a training request name are exactly
    /// [`Orientation::ALL`]'s, and what it allows parses.
    #[test]
    fn the_openapi_orientations_are_the_ones_taken() {
        use crate::models::anomaly::orientation::Orientation;
        let spec: serde_json::Value = serde_json::from_str(crate::serve::OPENAPI).expect("json");
        let pattern = spec["components"]["schemas"]["TrainingRequest"]["properties"]
            ["orientations"]["pattern"]
            .as_str()
            .expect("a pattern of orientations");
        let names: Vec<&str> = Orientation::ALL.iter().map(|turn| turn.name()).collect();
        let turn = format!("({})", names.join("|"));
        assert_eq!(pattern, format!("^(none|auto|all|{turn}(,{turn})*)$"));
        for text in ["none", "auto", "all", "rotate90,flip-horizontal"] {
            assert!(text.parse::<Orientations>().is_ok(), "{text}");
        }
    }

    /// Every kind of model a registry lists is one the OpenAPI description names.
    #[test]
    fn the_openapi_model_kinds_are_the_ones_loaded() {
        let spec: serde_json::Value = serde_json::from_str(crate::serve::OPENAPI).expect("json");
        let text = spec.to_string();
        let mut enums = Vec::new();
        // Each `kind` enum that names a model kind names all of them.
        fn walk<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(kind) = map.get("kind")
                        && kind["enum"]
                            .as_array()
                            .is_some_and(|e| e.iter().any(|v| v == crate::models::supervised::KIND))
                    {
                        out.push(&kind["enum"]);
                    }
                    map.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&spec, &mut enums);
        assert!(
            !enums.is_empty(),
            "no model kind enum in {} bytes",
            text.len()
        );
        for listed in enums {
            let mut listed: Vec<&str> = (listed.as_array().expect("an enum").iter())
                .filter_map(serde_json::Value::as_str)
                .collect();
            listed.sort_unstable();
            let mut kinds = crate::models::KINDS.to_vec();
            kinds.sort_unstable();
            assert_eq!(listed, kinds);
        }
    }

    /// The OpenAPI description names exactly the fields a training job serialises.
    #[test]
    fn the_training_schemas_match_what_is_served() {
        let at = Utc::now();
        let job = TrainingJob {
            id: 1,
            family: Family::Anomaly,
            name: "p".into(),
            source: Source::Records {
                from: at,
                to: at,
                passed_as_good: true,
            },
            golden_part: None,
            requested_by: "eng".into(),
            started_at: at,
            finished_at: None,
            state: JobState::Running,
            progress: Some(PhaseProgress {
                phase: "features of good images".into(),
                done: 1,
                total: Some(2),
                elapsed_s: 0.1,
                remaining_s: Some(0.1),
            }),
            phases: vec![PhaseProgress {
                phase: "features of good images".into(),
                done: 1,
                total: Some(2),
                elapsed_s: 0.1,
                remaining_s: Some(0.1),
            }],
            cancel_requested: false,
            training_set: Some(TrainingSet::default()),
            model: Some(TrainedModel {
                version: "p@1".into(),
                kind: "anomaly".into(),
                threshold: 1.0,
                card: serde_json::json!({}),
                already_registered: false,
                previews: vec![Preview {
                    part_id: Some(1),
                    class: "good".into(),
                    score: 0.5,
                    verdict: Verdict::Pass,
                    image: "a".into(),
                    heat_map: None,
                }],
            }),
            error: None,
        };
        let served = serde_json::to_value(&job).expect("json");
        assert_eq!(served_fields(&served), schema_fields("TrainingJob"));
        for (value, schema) in [
            (&served["progress"], "TrainingPhase"),
            (&served["training_set"], "TrainingSet"),
            (&served["model"], "TrainedModel"),
            (&served["model"]["previews"][0], "TrainingPreview"),
        ] {
            assert_eq!(served_fields(value), schema_fields(schema), "{schema}");
        }
        let list = serde_json::to_value(TrainingList { jobs: vec![job] }).expect("json");
        assert_eq!(served_fields(&list), schema_fields("TrainingList"));
        let uploaded = serde_json::to_value(UploadedImage {
            set: "lab".into(),
            class: "good".into(),
            image: "a".into(),
            width: 1,
            height: 1,
            duplicate: false,
        })
        .expect("json");
        assert_eq!(served_fields(&uploaded), schema_fields("UploadedImage"));
        let zipped = serde_json::to_value(ZipUpload {
            set: "lab".into(),
            added: [("good".to_owned(), 2)].into(),
            duplicates: 1,
            refused: vec![crate::inspect::training::uploads::RefusedFile {
                name: "notes.txt".into(),
                reason: "not an image".into(),
            }],
        })
        .expect("json");
        assert_eq!(served_fields(&zipped), schema_fields("ZipUpload"));
        assert_eq!(
            served_fields(&zipped["refused"][0]),
            ["name", "reason"],
            "as the document lists them"
        );
        let sets = serde_json::to_value(UploadList {
            sets: vec![UploadSet {
                name: "lab".into(),
                classes: Default::default(),
                bytes: 0,
            }],
        })
        .expect("json");
        assert_eq!(served_fields(&sets), schema_fields("UploadList"));
        assert_eq!(served_fields(&sets["sets"][0]), schema_fields("UploadSet"));
    }
}
