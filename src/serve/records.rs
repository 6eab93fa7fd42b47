//! Records over HTTP: the MES pull by sequence number (JSON, CSV or B2MML by content
//! negotiation), acknowledgements, inspections by part, labels, images, the audit log.
//!
//! The pull follows MTConnect's `sample`: `from` a sequence number, at most `limit` records,
//! and the answer says where to go on (`next_seq`), whether more are there (`more`), and the
//! store's `instance_id` (a different one means the history was reset: start again). A cursor
//! before the oldest kept record is 410 with `first_seq`; one past the next record is 409. A
//! client that omits `from` (and `after`) goes on after the last sequence number it
//! acknowledged. JSON records are served
//! exactly as stored.

use std::io::Write;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::b2mml::{PlantScope, QaResult, quality_document};
use super::{ApiError, ApiState};
use crate::models::card::CardHead;
use crate::part::Verdict;
use crate::record::explain::Explanation;
use crate::record::regions::check_regions;
use crate::record::{
    Filter, LabelRecord, Page, RawRecord, Record, RecordBody, RecordError, RecordKind, Region,
};

/// Largest page of one pull.
pub const MAX_PULL: usize = 5000;
/// Largest page of inspections or audit entries.
pub const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PullQuery {
    /// First sequence number wanted.
    from: Option<u64>,
    /// Records after this sequence number (`from = after + 1`).
    after: Option<u64>,
    /// Page size, 1 to 5000 (default 500).
    limit: Option<usize>,
    /// Comma-separated record kinds.
    kind: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    station: Option<String>,
    work_order: Option<String>,
    verdict: Option<Verdict>,
    defect_class: Option<String>,
}

/// The formats a pull can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    B2mml,
}

/// Picks the format from `Accept`, honouring q-values; no header means JSON.
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Format::Json);
    };
    let accept = accept
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Accept header is not ASCII".into()))?;
    let mut wanted: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (q > 0.0 && !media.is_empty()).then_some((q, i, media))
        })
        .collect();
    wanted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, media) in wanted {
        match media.to_ascii_lowercase().as_str() {
            "application/json" | "application/*" | "*/*" => return Ok(Format::Json),
            "text/csv" | "text/*" => return Ok(Format::Csv),
            "application/xml" | "text/xml" => return Ok(Format::B2mml),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(
        "records come as application/json, text/csv or application/xml (ISA-95 B2MML)".into(),
    ))
}

pub(super) async fn pull(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let format = negotiate(&headers)?;
    let limit = query.limit.unwrap_or(500);
    if !(1..=MAX_PULL).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PULL}, got {limit}"
        )));
    }
    let from = match (query.from, query.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give `from` or `after`, not both".into(),
            ));
        }
        (Some(from), None) => from,
        (None, Some(after)) => after.checked_add(1).ok_or_else(|| {
            ApiError::BadRequest(format!("after = {after} is past any sequence number"))
        })?,
        (None, None) => (api.store.acknowledged(&who.name)? + 1).max(api.store.first_seq()),
    };
    let from = super::cursor_in_history(&api.store, from)?;
    let kinds = match &query.kind {
        Some(kinds) => kinds
            .split(',')
            .map(|k| k.trim().parse::<RecordKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::BadRequest)?,
        None => Vec::new(),
    };
    let filter = Filter {
        kinds,
        since: query.since,
        until: query.until,
        station: query.station,
        work_order: query.work_order,
        verdict: query.verdict,
        defect_class: query.defect_class,
    };
    let store = api.store.clone();
    // Reading and checking thousands of records is blocking work.
    let page = tokio::task::spawn_blocking(move || store.pull(from, limit, &filter))
        .await
        .map_err(|e| ApiError::InternalMessage(format!("pull task failed: {e}")))??;
    let (content_type, body) = match format {
        Format::Json => ("application/json", pull_json(&api.store, &page)),
        Format::Csv => ("text/csv; charset=utf-8", pull_csv(&page)?),
        Format::B2mml => ("application/xml", pull_b2mml(&api, &page)?.into_bytes()),
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-instance-id", api.store.instance_id().to_owned());
    set("x-first-seq", page.first_seq.to_string());
    set("x-last-seq", page.last_seq.to_string());
    set("x-next-seq", page.next_seq.to_string());
    set("x-more", page.more.to_string());
    Ok(response)
}

/// The page as the JSON body of `GET /api/v1/records`, records spliced in exactly as stored.
pub fn pull_json(store: &crate::record::Store, page: &Page) -> Vec<u8> {
    let size: usize = page.records.iter().map(|r| r.json().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 160);
    // Writing into a Vec cannot fail.
    let _ = write!(
        body,
        r#"{{"instance_id":"{}","first_seq":{},"last_seq":{},"next_seq":{},"more":{},"items":["#,
        store.instance_id(),
        page.first_seq,
        page.last_seq,
        page.next_seq,
        page.more
    );
    for (i, record) in page.records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record.json());
    }
    body.extend_from_slice(b"]}");
    body
}

/// One row per record: the inspection's and label's fields in columns, anything else as JSON
/// in `detail`.
fn pull_csv(page: &Page) -> Result<Vec<u8>, ApiError> {
    let mut csv = csv::Writer::from_writer(Vec::with_capacity(page.records.len() * 200));
    let csv_error = |e: csv::Error| ApiError::InternalMessage(format!("CSV: {e}"));
    csv.write_record([
        "seq",
        "recorded_at",
        "station",
        "kind",
        "part_id",
        "work_order",
        "product",
        "verdict",
        "disposition",
        "score",
        "threshold",
        "model_version",
        "defect_class",
        "defect_width_mm",
        "defect_height_mm",
        "defect_area_mm2",
        "supersedes",
        "detail",
        "views",
    ])
    .map_err(csv_error)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for raw in &page.records {
        let record = raw.decode()?;
        let mut row = vec![
            record.seq.to_string(),
            record.recorded_at.to_rfc3339(),
            record.station.clone(),
            record.body.kind().as_str().to_owned(),
        ];
        match &record.body {
            RecordBody::Inspection(i) => row.extend([
                i.part_id.to_string(),
                opt(i.work_order.clone()),
                opt(i.product.clone()),
                opt(i.verdict.map(|v| v.as_str().to_owned())),
                i.disposition.as_str().to_owned(),
                opt(i.score.map(|s| s.to_string())),
                opt(i.threshold.map(|t| t.to_string())),
                opt(i.model_version.clone()),
                opt(i.defect_class.clone()),
                opt(i
                    .defect_size
                    .and_then(|d| d.width_mm)
                    .map(|v| v.to_string())),
                opt(i
                    .defect_size
                    .and_then(|d| d.height_mm)
                    .map(|v| v.to_string())),
                opt(i
                    .defect_size
                    .and_then(|d| d.area_mm2)
                    .map(|v| v.to_string())),
                String::new(),
                String::new(),
                // Several cameras: each one's verdict, as `top:pass;side:fail`.
                i.views
                    .iter()
                    .map(|view| format!("{}:{}", view.camera, view.verdict.as_str()))
                    .collect::<Vec<_>>()
                    .join(";"),
            ]),
            RecordBody::Label(l) => row.extend([
                l.part_id.to_string(),
                String::new(),
                String::new(),
                l.verdict.as_str().to_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                opt(l.defect_class.clone()),
                String::new(),
                String::new(),
                String::new(),
                l.supersedes.to_string(),
                serde_json::json!({ "by": l.by, "note": l.note }).to_string(),
                String::new(),
            ]),
            body => {
                row.extend(std::iter::repeat_n(String::new(), 13));
                row.push(serde_json::to_string(body).unwrap_or_default());
                row.push(String::new());
            }
        }
        csv.write_record(&row).map_err(csv_error)?;
    }
    csv.into_inner()
        .map_err(|e| ApiError::InternalMessage(format!("CSV: {e}")))
}

/// The inspections and labels of the page as one B2MML `MaterialInformation` document:
/// each part a material sublot, each inspection a test result on it, each label a superseding
/// result. Other kinds of record have no place in it; the paging headers still cover them.
fn pull_b2mml(api: &ApiState, page: &Page) -> Result<String, ApiError> {
    let records: Vec<Record> = page
        .records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Inspection | RecordKind::Label))
        .map(RawRecord::decode)
        .collect::<Result<_, _>>()?;
    // A label names its part; the part's inspection gives its work order and disposition.
    let mut inspected = std::collections::HashMap::new();
    for record in &records {
        if let RecordBody::Label(l) = &record.body
            && !inspected.contains_key(&l.part_id)
            && let Some(Record {
                body: RecordBody::Inspection(i),
                ..
            }) = api.store.inspection(l.part_id)?
        {
            inspected.insert(l.part_id, i);
        }
    }
    let results: Vec<QaResult<'_>> = records
        .iter()
        .map(|record| match &record.body {
            RecordBody::Inspection(i) => QaResult {
                seq: record.seq,
                part_id: i.part_id,
                work_order: i.work_order.as_deref(),
                product: i.product.as_deref(),
                tested_at: i.inspected_at.unwrap_or(i.decided_at),
                verdict: i.verdict.map(Verdict::as_str),
                disposition: i.disposition.as_str(),
                score: i.score,
                threshold: i.threshold,
                model_version: i.model_version.as_deref(),
                defect_class: i.defect_class.as_deref(),
                supersedes_seq: None,
                corrected_by: None,
            },
            RecordBody::Label(l) => {
                let part = inspected.get(&l.part_id);
                QaResult {
                    seq: record.seq,
                    part_id: l.part_id,
                    work_order: part.and_then(|i| i.work_order.as_deref()),
                    product: part.and_then(|i| i.product.as_deref()),
                    tested_at: record.recorded_at,
                    verdict: Some(l.verdict.as_str()),
                    disposition: part.map_or("unknown", |i| i.disposition.as_str()),
                    score: None,
                    threshold: None,
                    model_version: None,
                    defect_class: l.defect_class.as_deref(),
                    supersedes_seq: Some(l.supersedes),
                    corrected_by: Some(&l.by),
                }
            }
            // Filtered above.
            _ => unreachable!("only inspections and labels reach the B2MML page"),
        })
        .collect();
    let [enterprise, site, area, line, station] = &*api.hierarchy;
    let scope = PlantScope {
        enterprise,
        site,
        area,
        line,
        station,
    };
    Ok(quality_document(&scope, &results))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckRequest {
    /// Everything up to and including this sequence number was received.
    seq: u64,
    /// When given, must be this store's: an acknowledgement for another history is refused.
    instance_id: Option<String>,
}

#[derive(Serialize)]
pub(super) struct AckView {
    client: String,
    instance_id: String,
    acknowledged: u64,
    last_seq: u64,
}

pub(super) async fn acknowledged(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<AckView>, ApiError> {
    Ok(Json(AckView {
        acknowledged: api.store.acknowledged(&who.name)?,
        client: who.name,
        instance_id: api.store.instance_id().to_owned(),
        last_seq: api.store.last_seq(),
    }))
}

pub(super) async fn acknowledge(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> Result<Json<AckView>, ApiError> {
    let Json(request) = body?;
    if let Some(instance) = &request.instance_id
        && instance != api.store.instance_id()
    {
        return Err(ApiError::Conflict(format!(
            "instance {instance:?} is not this store's ({}): its history was reset; pull from \
             the start",
            api.store.instance_id()
        )));
    }
    // Not audited: an audit entry is itself a record, so a client that acknowledges every
    // page it pulls would pull its own acknowledgement, acknowledge that, and never catch up.
    // The acknowledgement is the client's cursor, kept per client and shown by the GET.
    let acknowledged = api.store.acknowledge(&who.name, request.seq).await?;
    tracing::debug!(client = %who.name, seq = request.seq, acknowledged, "records acknowledged");
    Ok(Json(AckView {
        client: who.name,
        instance_id: api.store.instance_id().to_owned(),
        acknowledged,
        last_seq: api.store.last_seq(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// Only parts with a smaller id: pass the previous page's `next_before`.
    before: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct InspectionPage {
    items: Vec<Record>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next_before: Option<u64>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )))
    }
}

pub(super) async fn list_inspections(
    State(api): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<InspectionPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page_limit(query.limit)?;
    let items = api.store.inspections(query.before, limit)?;
    let next_before = (items.len() == limit)
        .then(|| items.last().and_then(part_id_of))
        .flatten()
        .filter(|id| *id > 0);
    Ok(Json(InspectionPage { items, next_before }))
}

fn part_id_of(record: &Record) -> Option<u64> {
    match &record.body {
        RecordBody::Inspection(i) => Some(i.part_id),
        _ => None,
    }
}

pub(super) async fn get_inspection(
    State(api): State<ApiState>,
    part_id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    api.store
        .inspection(part_id)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no record of part {part_id}")))
}

/// One part's decision explained ([`Explanation`]): the record, its model's card, its labels
/// and its shadow verdict, read off the async threads (the registry is a folder).
pub(super) async fn explain_inspection(
    State(api): State<ApiState>,
    part_id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Explanation>, ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let explained = tokio::task::spawn_blocking(move || {
        let record = api.store.inspection(part_id)?;
        let Some((seq, RecordBody::Inspection(inspection))) = record.map(|r| (r.seq, r.body))
        else {
            return Err(ApiError::NotFound(format!("no record of part {part_id}")));
        };
        let card = inspection
            .model_version
            .as_deref()
            .and_then(|version| api.models.registry().find(version).ok())
            .and_then(|entry| CardHead::read(&entry.dir).ok());
        let labels = api
            .store
            .labels(part_id)?
            .into_iter()
            .filter_map(|r| match r.body {
                RecordBody::Label(label) => Some(label),
                _ => None,
            })
            .collect();
        let shadow = api.store.shadow_verdict(part_id)?;
        Ok(Explanation::of(
            &inspection,
            seq,
            card.as_ref(),
            labels,
            shadow,
        ))
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("explaining part {part_id}: {e}")))??;
    Ok(Json(explained))
}

pub(super) async fn list_labels(
    State(api): State<ApiState>,
    part_id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Vec<Record>>, ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(api.store.labels(part_id)?))
}

/// An engineer's judgement of a part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LabelRequest {
    verdict: LabelVerdict,
    defect_class: Option<String>,
    note: Option<String>,
    /// The image the regions are drawn on (the part's, or one of its views'); required with
    /// regions.
    image: Option<String>,
    /// Where the defects are, in `image`'s pixels.
    #[serde(default)]
    regions: Vec<Region>,
}

/// A person says pass or fail; "error" is the station's word for "could not judge".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LabelVerdict {
    Pass,
    Fail,
}

pub(super) async fn add_label(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    part_id: Result<Path<u64>, PathRejection>,
    body: Result<Json<LabelRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Record>), ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(request) = body?;
    if let Some(note) = &request.note
        && !valid_text(note, 1000)
    {
        return Err(ApiError::BadRequest(
            "note must be 1 to 1000 characters, no control characters".into(),
        ));
    }
    let verdict = match request.verdict {
        LabelVerdict::Pass => Verdict::Pass,
        LabelVerdict::Fail => Verdict::Fail,
    };
    check_judgement(
        verdict,
        request.defect_class.as_deref(),
        !request.regions.is_empty(),
    )?;
    let inspection = api
        .store
        .inspection(part_id)?
        .ok_or_else(|| ApiError::NotFound(format!("no record of part {part_id}")))?;
    // Only regions need the image itself (its size); a whole-image label stands even when the
    // image was evicted for disk space, and then names none.
    let image = match (&request.image, request.regions.is_empty()) {
        (Some(image), false) => {
            let (width, height) = part_image_size(&api, &inspection, image)?;
            check_regions(&request.regions, width, height, |c| valid_text(c, 64))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Some(image.clone())
        }
        (None, false) => {
            return Err(ApiError::BadRequest(
                "regions are drawn on an image: name it in `image`".into(),
            ));
        }
        (_, true) => None,
    };
    let audit = RecordBody::Audit(who.audit("label.create", &format!("part {part_id}")));
    let inspection_seq = inspection.seq;
    // A label supersedes the part's latest result: its last label, else its inspection.
    let mut written = api
        .store
        .append_labels(move |store| {
            let supersedes = store
                .labels(part_id)?
                .last()
                .map_or(inspection_seq, |l| l.seq);
            let label = RecordBody::Label(LabelRecord {
                part_id,
                supersedes,
                verdict,
                defect_class: request.defect_class,
                note: request.note,
                by: who.name.clone(),
                image,
                regions: request.regions,
            });
            Ok::<_, ApiError>(vec![label, audit])
        })
        .await?;
    Ok((StatusCode::CREATED, Json(written.remove(0))))
}

/// Whether a label's judgement holds together: a valid class name, and a part labelled pass
/// has neither a defect class nor defect regions. Labels made by hand and imported alike.
pub(super) fn check_judgement(
    verdict: Verdict,
    defect_class: Option<&str>,
    has_regions: bool,
) -> Result<(), ApiError> {
    if let Some(class) = defect_class
        && !valid_text(class, 64)
    {
        return Err(ApiError::BadRequest(
            "defect_class must be 1 to 64 characters, no control characters".into(),
        ));
    }
    if verdict == Verdict::Pass && defect_class.is_some() {
        return Err(ApiError::BadRequest(
            "a part labelled pass has no defect class".into(),
        ));
    }
    if verdict == Verdict::Pass && has_regions {
        return Err(ApiError::BadRequest(
            "a part labelled pass has no defect regions".into(),
        ));
    }
    Ok(())
}

/// The size of `digest`, which must be the recorded image of the part, or of one of its views.
pub(super) fn part_image_size(
    api: &ApiState,
    inspection: &Record,
    digest: &str,
) -> Result<(u32, u32), ApiError> {
    let RecordBody::Inspection(part) = &inspection.body else {
        return Err(ApiError::NotFound("no inspection record".into()));
    };
    let of_part = part.image.as_deref() == Some(digest)
        || part
            .views
            .iter()
            .any(|v| v.image.as_deref() == Some(digest));
    if !of_part {
        return Err(ApiError::BadRequest(format!(
            "image {digest} is not an image of part {}",
            part.part_id
        )));
    }
    let path = api.store.images().path(digest).ok_or_else(|| {
        ApiError::Conflict(format!(
            "image {digest} of part {} is no longer kept (evicted for disk space)",
            part.part_id
        ))
    })?;
    image::image_dimensions(&path).map_err(|e| {
        ApiError::Internal(RecordError::Image {
            path,
            source: std::io::Error::other(e),
        })
    })
}

/// Text a person typed: not empty, not too long, no control characters.
pub(super) fn valid_text(text: &str, max_chars: usize) -> bool {
    let n = text.chars().count();
    (1..=max_chars).contains(&n) && !text.chars().any(char::is_control)
}

pub(super) async fn get_image(
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
        .map_err(|source| ApiError::Internal(RecordError::Image { path, source }))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            // Content-addressed: an image never changes.
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// Only entries with a smaller sequence number: pass the previous page's `next_before`.
    before: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct AuditPage {
    items: Vec<Record>,
    next_before: Option<u64>,
}

pub(super) async fn audit_log(
    State(api): State<ApiState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page_limit(query.limit)?;
    let items = api
        .store
        .latest_of_kind(RecordKind::Audit, query.before, limit)?;
    let next_before = (items.len() == limit)
        .then(|| items.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage { items, next_before }))
}
