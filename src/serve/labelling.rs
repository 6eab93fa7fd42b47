//! The labelling queue and the operator's flag: which recorded parts a quality engineer should
//! judge next.
//!
//! A label teaches the model most where the model is least sure or plainly wrong, so the queue
//! puts first the parts someone on the line flagged (a person saw the verdict was wrong), then
//! the parts where a shadow model disagrees with the live one (one of the two is wrong), then
//! every other part by how close its score came to its threshold (the model's own doubt).
//! Parts already labelled leave the queue unless flagged again after their label.

use std::collections::{BTreeSet, HashMap};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::label_export::streamed_body;
use super::records::{check_judgement, part_image_size, valid_text};
use super::{ApiError, ApiState};
use crate::part::Verdict;
use crate::record::coco::{self, CocoDataset, LabelledImage};
use crate::record::regions::check_regions;
use crate::record::{
    FlagRecord, InspectionRecord, LabelRecord, Record, RecordBody, RecordKind, Store,
};

/// How many of the newest parts one queue request reads at most: a bound on its cost, not
/// on the queue (flagged parts are found wherever they are).
pub const MAX_SCAN: usize = 20_000;
/// Largest queue page.
pub const MAX_QUEUE: usize = 200;
/// A score within this share of its threshold is "near" it.
const NEAR_THRESHOLD: f32 = 0.2;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlagRequest {
    /// What looked wrong.
    note: Option<String>,
}

/// `POST /api/v1/inspections/{part_id}/flag`: someone on the line says the verdict looks
/// wrong; the part goes to the front of the labelling queue.
pub(super) async fn flag(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    part_id: Result<Path<u64>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Record>), ApiError> {
    let Path(part_id) = part_id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // A flag without a note is the common case (one tap on the line): an empty body is fine.
    let request: FlagRequest = super::optional_body(&body)?;
    if let Some(note) = &request.note
        && !valid_text(note, 1000)
    {
        return Err(ApiError::BadRequest(
            "note must be 1 to 1000 characters, no control characters".into(),
        ));
    }
    if api.store.inspection(part_id)?.is_none() {
        return Err(ApiError::NotFound(format!("no record of part {part_id}")));
    }
    let flag = RecordBody::Flag(FlagRecord {
        part_id,
        note: request.note,
        by: who.name.clone(),
    });
    let audit = RecordBody::Audit(who.audit("verdict.flag", &format!("part {part_id}")));
    let mut written = api.store.append_all(vec![flag, audit]).await?;
    Ok((StatusCode::CREATED, Json(written.remove(0))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueQuery {
    /// Items wanted, 1 to 200 (default 50).
    limit: Option<usize>,
    /// Only parts the model judged so (`error`: could not judge, or no verdict at all).
    verdict: Option<Verdict>,
    /// Only parts the model gave this defect class.
    class: Option<String>,
    work_order: Option<String>,
    /// Only parts captured at or after `from` and before `to`.
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Also parts already labelled (to review labels); default false.
    #[serde(default)]
    labelled: bool,
}

/// Why a part is in the queue where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Someone on the line flagged its verdict (after its latest label, if any).
    Flagged,
    /// The shadow model's verdict differs from the live one.
    ShadowDisagrees,
    /// Its image is unlike the good images its model was trained on (input statistics past
    /// the limit the model's card learnt): what a retrain needs labelled when the line drifts.
    UnlikeTraining,
    /// Its score came within 20 % of its threshold.
    NearThreshold,
}

/// One part of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    pub part_id: u64,
    pub captured_at: DateTime<Utc>,
    pub work_order: Option<String>,
    pub product: Option<String>,
    pub verdict: Option<Verdict>,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    pub defect_class: Option<String>,
    pub image: Option<String>,
    pub heat_map: Option<String>,
    /// The defects the model outlined in `image`, hottest first: where a labeller may start.
    pub defect_boxes: Vec<crate::models::boxes::DefectBox>,
    /// Strongest first.
    pub reasons: Vec<Reason>,
    /// The latest open flag's note.
    pub flag_note: Option<String>,
    pub labelled: bool,
    /// |score − threshold| / threshold; absent without both.
    pub margin: Option<f32>,
}

/// The queue's answer.
#[derive(Debug, Serialize)]
pub struct Queue {
    pub items: Vec<QueueItem>,
    /// How many recorded parts were read to build it (at most 20,000 of the newest, plus
    /// every flagged one).
    pub scanned: usize,
    /// The defect classes the read parts were given, by the models or by labels: the
    /// choices a class picker offers.
    pub classes: BTreeSet<String>,
}

/// `GET /api/v1/labelling/queue`.
pub(super) async fn queue(
    State(api): State<ApiState>,
    query: Result<Query<QueueQuery>, QueryRejection>,
) -> Result<Json<Queue>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_QUEUE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_QUEUE}, got {limit}"
        )));
    }
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from >= to
    {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let store = api.store.clone();
    let queue = tokio::task::spawn_blocking(move || build_queue(&store, &query, limit, MAX_SCAN))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the queue could not be built: {e}")))??;
    Ok(Json(queue))
}

/// The open flag of each part: the latest flag that came after the part's latest label.
/// Relies on `records_of_kind` reading oldest first (the kind index is in `seq` order), so a
/// later flag replaces an earlier one.
fn open_flags(
    store: &Store,
    latest_labels: &HashMap<u64, u64>,
) -> Result<HashMap<u64, Option<String>>, ApiError> {
    let mut open = HashMap::new();
    for record in store.records_of_kind(RecordKind::Flag)? {
        if let RecordBody::Flag(flag) = record.body {
            let labelled_after = latest_labels
                .get(&flag.part_id)
                .is_some_and(|&label| label > record.seq);
            if labelled_after {
                open.remove(&flag.part_id);
            } else {
                open.insert(flag.part_id, flag.note);
            }
        }
    }
    Ok(open)
}

fn build_queue(
    store: &Store,
    query: &QueueQuery,
    limit: usize,
    max_scan: usize,
) -> Result<Queue, ApiError> {
    let latest_labels = store.latest_labels()?;
    let mut flags = open_flags(store, &latest_labels)?;
    let mut classes = BTreeSet::new();
    let mut items = Vec::new();
    let mut consider = |part: InspectionRecord, flags: &mut HashMap<u64, Option<String>>| {
        classes.extend(part.defect_class.clone());
        let flag = flags.remove(&part.part_id);
        let labelled = latest_labels.contains_key(&part.part_id);
        if !matches(query, &part) || (labelled && flag.is_none() && !query.labelled) {
            return Ok::<(), ApiError>(());
        }
        let mut reasons = Vec::new();
        if flag.is_some() {
            reasons.push(Reason::Flagged);
        }
        if store
            .shadow_verdict(part.part_id)?
            .is_some_and(|shadow| shadow.verdict != shadow.live_verdict)
        {
            reasons.push(Reason::ShadowDisagrees);
        }
        let margin = match (part.score, part.threshold) {
            (Some(score), Some(threshold)) if threshold.abs() > f32::EPSILON => {
                Some((score - threshold).abs() / threshold.abs())
            }
            _ => None,
        };
        if part.novelty.is_some_and(|n| n.is_novel()) {
            reasons.push(Reason::UnlikeTraining);
        }
        if margin.is_some_and(|m| m <= NEAR_THRESHOLD) {
            reasons.push(Reason::NearThreshold);
        }
        items.push(QueueItem {
            part_id: part.part_id,
            captured_at: part.captured_at,
            work_order: part.work_order,
            product: part.product,
            verdict: part.verdict,
            score: part.score,
            threshold: part.threshold,
            defect_class: part.defect_class,
            image: part.image,
            heat_map: part.heat_map,
            defect_boxes: part.defect_boxes,
            reasons,
            flag_note: flag.flatten(),
            labelled,
            margin,
        });
        Ok(())
    };
    let newest = store.inspection_records(None, max_scan)?;
    let mut scanned = newest.len();
    for part in newest {
        consider(part, &mut flags)?;
    }
    // Flagged parts older than the newest `max_scan` still belong at the front.
    let older: Vec<u64> = flags.keys().copied().collect();
    for part_id in older {
        if let Some(RecordBody::Inspection(part)) = store.inspection(part_id)?.map(|r| r.body) {
            scanned += 1;
            consider(part, &mut flags)?;
        }
    }
    // Strongest reason first; then the model's doubt (smallest margin); then the newest.
    items.sort_by(|a, b| {
        let tier = |item: &QueueItem| match item.reasons.first() {
            Some(Reason::Flagged) => 0,
            Some(Reason::ShadowDisagrees) => 1,
            Some(Reason::UnlikeTraining) => 2,
            _ => 3,
        };
        tier(a)
            .cmp(&tier(b))
            .then(
                a.margin
                    .unwrap_or(f32::INFINITY)
                    .total_cmp(&b.margin.unwrap_or(f32::INFINITY)),
            )
            .then(b.part_id.cmp(&a.part_id))
    });
    items.truncate(limit);
    for item in &items {
        if let Some(class) = latest_class(store, item.part_id)? {
            classes.insert(class);
        }
    }
    Ok(Queue {
        items,
        scanned,
        classes,
    })
}

/// Whether a part passes the query's filters.
fn matches(query: &QueueQuery, part: &InspectionRecord) -> bool {
    let verdict = match query.verdict {
        None => true,
        Some(Verdict::Error) => matches!(part.verdict, None | Some(Verdict::Error)),
        Some(v) => part.verdict == Some(v),
    };
    verdict
        && query
            .class
            .as_ref()
            .is_none_or(|c| part.defect_class.as_ref() == Some(c))
        && query
            .work_order
            .as_ref()
            .is_none_or(|w| part.work_order.as_ref() == Some(w))
        && query.from.is_none_or(|from| part.captured_at >= from)
        && query.to.is_none_or(|to| part.captured_at < to)
}

/// The defect class of a part's latest label, if it has one.
fn latest_class(store: &Store, part_id: u64) -> Result<Option<String>, ApiError> {
    Ok(store
        .labels(part_id)?
        .into_iter()
        .next_back()
        .and_then(|r| match r.body {
            RecordBody::Label(label) => label.defect_class,
            _ => None,
        }))
}

/// The labelled parts an export goes through, listed without their labels: each label is read
/// again when its turn comes, so an export of thousands of brush masks holds one at a time.
pub(super) struct LabelledParts {
    /// Each listed part's id and the seq of its latest label, by part id.
    parts: Vec<(u64, u64)>,
    /// Labelled parts left out because their image is no longer kept (evicted for disk space).
    pub without_image: Vec<u64>,
    /// Every class the listed parts' labels name, sorted, each once.
    pub classes: Vec<String>,
}

impl LabelledParts {
    /// Every labelled part whose latest label has an image still kept.
    pub fn list(api: &ApiState) -> Result<LabelledParts, ApiError> {
        let mut latest: Vec<(u64, u64)> = api.store.latest_labels()?.into_iter().collect();
        latest.sort_unstable();
        let mut listed = LabelledParts {
            parts: Vec::new(),
            without_image: Vec::new(),
            classes: Vec::new(),
        };
        let mut classes = BTreeSet::new();
        for (part_id, seq) in latest {
            match labelled_part(api, part_id, seq)? {
                Some(Ok(part)) => {
                    listed.parts.push((part_id, seq));
                    classes.extend(
                        coco::class_names(std::slice::from_ref(&part))
                            .into_iter()
                            .map(str::to_owned),
                    );
                }
                Some(Err(NoImage)) => listed.without_image.push(part_id),
                None => {}
            }
        }
        listed.classes = classes.into_iter().collect();
        Ok(listed)
    }

    /// The class names, as the COCO and YOLO writers take them.
    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(String::as_str).collect()
    }

    /// A reader of the listed parts for `api`'s store. Parts gone since the listing (archived,
    /// or their image evicted) are skipped and added to `gone`.
    pub fn reader<'a>(&'a self, api: &'a ApiState, gone: &'a mut Vec<u64>) -> PartsReader<'a> {
        PartsReader {
            listed: self,
            api,
            gone,
            read: None,
        }
    }
}

/// Reads [`LabelledParts`] one label at a time, for [`coco::write_json`] and the zip export.
pub(super) struct PartsReader<'a> {
    listed: &'a LabelledParts,
    api: &'a ApiState,
    gone: &'a mut Vec<u64>,
    /// After a first pass, the parts it visited with their images and sizes: a second pass
    /// visits exactly these (the COCO annotations must name images the first pass wrote),
    /// reading only their labels again.
    read: Option<Vec<(u64, String, u32, u32)>>,
}

impl coco::LabelledSource for PartsReader<'_> {
    fn each(
        &mut self,
        visit: &mut dyn FnMut(&LabelledImage) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let failed = |e: ApiError| std::io::Error::other(e.to_string());
        if let Some(read) = &self.read {
            for (seq, image, width, height) in read {
                let Some(label) = label_record(self.api, *seq).map_err(failed)? else {
                    continue; // archived since the first pass: its image stays, unannotated
                };
                visit(&LabelledImage {
                    part_id: label.part_id,
                    image: image.clone(),
                    width: *width,
                    height: *height,
                    verdict: label.verdict,
                    defect_class: label.defect_class,
                    regions: label.regions,
                })?;
            }
            return Ok(());
        }
        let mut read = Vec::with_capacity(self.listed.parts.len());
        for &(part_id, seq) in &self.listed.parts {
            match labelled_part(self.api, part_id, seq).map_err(failed)? {
                Some(Ok(part)) => {
                    visit(&part)?;
                    read.push((seq, part.image, part.width, part.height));
                }
                Some(Err(NoImage)) | None => self.gone.push(part_id),
            }
        }
        self.read = Some(read);
        Ok(())
    }
}

/// A labelled part whose image is no longer kept.
struct NoImage;

/// The part's latest label (record `seq`) with its image and the image's size; `None` when the
/// label or the part's record is gone (archived).
fn labelled_part(
    api: &ApiState,
    part_id: u64,
    seq: u64,
) -> Result<Option<Result<LabelledImage, NoImage>>, ApiError> {
    let Some(label) = label_record(api, seq)? else {
        return Ok(None);
    };
    let Some(inspection) = api.store.inspection(part_id)? else {
        return Ok(None);
    };
    let sized = effective_image(&label, &inspection).and_then(|image| {
        let size = part_image_size(api, &inspection, &image).ok()?;
        Some((image, size))
    });
    let Some((image, (width, height))) = sized else {
        return Ok(Some(Err(NoImage)));
    };
    Ok(Some(Ok(LabelledImage {
        part_id,
        image,
        width,
        height,
        verdict: label.verdict,
        defect_class: label.defect_class,
        regions: label.regions,
    })))
}

/// The label recorded as `seq`, unless it was archived.
fn label_record(api: &ApiState, seq: u64) -> Result<Option<LabelRecord>, ApiError> {
    Ok(match api.store.record(seq)?.map(|r| r.body) {
        Some(RecordBody::Label(label)) => Some(label),
        _ => None,
    })
}

/// `GET /api/v1/labels/coco`: every labelled part's latest label as a COCO dataset, written
/// into the response as it goes, one label at a time. Parts whose image is no longer kept are
/// left out and counted in `info.parts_without_image`.
pub(super) async fn export_coco(State(api): State<ApiState>) -> Result<Response, ApiError> {
    let reader = api.clone();
    let listed = tokio::task::spawn_blocking(move || LabelledParts::list(&reader))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the export failed: {e}")))??;
    let body = streamed_body(move |out| {
        let mut gone = listed.without_image.clone();
        let mut source = listed.reader(&api, &mut gone);
        coco::write_json(out, &listed.class_names(), &mut source, |source| {
            let mut info = coco::info();
            info["station"] = api.store.station().into();
            info["parts_without_image"] = source.gone.len().into();
            info
        })
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The image a label is drawn on: its own, else its part's recorded image.
fn effective_image(label: &LabelRecord, inspection: &Record) -> Option<String> {
    match (&label.image, &inspection.body) {
        (Some(image), _) => Some(image.clone()),
        (None, RecordBody::Inspection(part)) => part.image.clone(),
        _ => None,
    }
}

/// What an import did.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    /// New labels recorded.
    pub written: usize,
    /// Images whose latest label already said the same (nothing recorded).
    pub unchanged: usize,
}

/// `POST /api/v1/labels/coco`: labels from a COCO dataset whose images are the station's
/// (`file_name` `<sha256>.png`, `id` the part id, as the export writes them). All or nothing:
/// any image that does not fit its part refuses the whole file, naming every problem.
pub(super) async fn import_coco(
    State(api): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<CocoDataset>, JsonRejection>,
) -> Result<(StatusCode, Json<ImportReport>), ApiError> {
    let Json(dataset) = body?;
    let imported = coco::import(&dataset).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // First every label is checked against its part (reading images for their sizes: the
    // slow part), with no lock held.
    let reader = api.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let (api, store) = (&reader, &reader.store);
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        for label in imported {
            let part_id = label.image_id;
            let Some(inspection) = store.inspection(part_id)? else {
                problems.push(format!("image {part_id}: no record of part {part_id}"));
                continue;
            };
            // Only regions need the image's size (a whole-image label stands without it).
            let size = if label.regions.is_empty() {
                Ok((0, 0))
            } else {
                part_image_size(api, &inspection, &label.image)
            };
            let fits = size.and_then(|(w, h)| {
                check_judgement(
                    label.verdict,
                    label.defect_class.as_deref(),
                    !label.regions.is_empty(),
                )?;
                check_regions(&label.regions, w, h, |c| valid_text(c, 64))
                    .map_err(|e| ApiError::BadRequest(e.to_string()))
            });
            match fits {
                Ok(()) => checked.push((inspection.seq, label)),
                Err(e) => problems.push(format!("image {part_id}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(checked)
        } else {
            Err(ApiError::BadRequest(problems.join("; ")))
        }
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("the import failed: {e}")))??;
    // Then each part's latest label is read and the next written, as one step
    // (`Store::append_labels`); a label the part already has is not written again.
    let checked_count = checked.len();
    let records = api
        .store
        .append_labels(move |store| {
            let mut labels = Vec::new();
            for (inspection_seq, label) in checked {
                let part_id = label.image_id;
                let previous = store.labels(part_id)?.pop();
                let image = (!label.regions.is_empty()).then_some(label.image);
                let same = previous.as_ref().is_some_and(|r| match &r.body {
                    RecordBody::Label(old) => {
                        old.verdict == label.verdict
                            && old.defect_class == label.defect_class
                            && old.regions == label.regions
                            && (image.is_none() || old.image == image)
                    }
                    _ => false,
                });
                if same {
                    continue;
                }
                labels.push(RecordBody::Label(LabelRecord {
                    part_id,
                    supersedes: previous.map_or(inspection_seq, |r| r.seq),
                    verdict: label.verdict,
                    defect_class: label.defect_class,
                    note: Some("imported from COCO".into()),
                    by: who.name.clone(),
                    image,
                    regions: label.regions,
                }));
            }
            if !labels.is_empty() {
                let audit = who.audit("label.import", &format!("{} parts from COCO", labels.len()));
                labels.push(RecordBody::Audit(audit));
            }
            Ok::<_, ApiError>(labels)
        })
        .await?;
    // Every label written comes with the one audit entry; the rest were the parts' own.
    let written = records.len().saturating_sub(1);
    let report = ImportReport {
        written,
        unchanged: checked_count - written,
    };
    Ok((StatusCode::OK, Json(report)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::testing::judged_inspection;
    use crate::record::{LabelRecord, ShadowVerdict};

    fn query() -> QueueQuery {
        QueueQuery {
            limit: None,
            verdict: None,
            class: None,
            work_order: None,
            from: None,
            to: None,
            labelled: false,
        }
    }

    fn scored(part_id: u64, score: f32) -> RecordBody {
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("time");
        let at = start + chrono::TimeDelta::seconds(part_id as i64);
        let mut body = judged_inspection(part_id, at, None);
        if let RecordBody::Inspection(part) = &mut body {
            part.score = Some(score);
            part.threshold = Some(0.5);
            part.verdict = Some(if score >= 0.5 {
                Verdict::Fail
            } else {
                Verdict::Pass
            });
        }
        body
    }

    fn label(part_id: u64, supersedes: u64) -> RecordBody {
        RecordBody::Label(LabelRecord {
            part_id,
            supersedes,
            verdict: Verdict::Pass,
            defect_class: None,
            note: None,
            by: "eng-1".into(),
            image: None,
            regions: Vec::new(),
        })
    }

    fn flag(part_id: u64, note: &str) -> RecordBody {
        RecordBody::Flag(FlagRecord {
            part_id,
            note: Some(note.into()),
            by: "op-1".into(),
        })
    }

    fn ids(queue: &Queue) -> Vec<u64> {
        queue.items.iter().map(|i| i.part_id).collect()
    }

    #[tokio::test]
    async fn parts_unlike_the_training_images_come_before_doubtful_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "s").expect("store");
        let stats = crate::learn::drift::InputStats::from_array([90.0; 6]);
        // Part 0 is near the threshold; part 1 far from it but past the training limit; part 2
        // far and within it.
        for (id, score, novelty) in [(0u64, 0.49, 1.0), (1, 0.05, 9.0), (2, 0.04, 2.9)] {
            let mut body = scored(id, score);
            if let RecordBody::Inspection(part) = &mut body {
                part.novelty = Some(crate::learn::drift::InputNovelty {
                    score: novelty,
                    limit: 3.0,
                    stats,
                });
            }
            store.append(body).await.expect("append");
        }
        let queue = build_queue(&store, &query(), 50, MAX_SCAN).expect("queue");
        assert_eq!(ids(&queue), [1, 0, 2]);
        assert_eq!(queue.items[0].reasons, [Reason::UnlikeTraining]);
        assert_eq!(queue.items[1].reasons, [Reason::NearThreshold]);
        assert!(queue.items[2].reasons.is_empty());
    }

    #[tokio::test]
    async fn flags_then_disagreements_then_doubt_and_labels_leave_the_queue() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "s").expect("store");
        // Scores: part 0 far from the threshold, 1 nearest, 2 near, 3 far, 4 mid.
        let scores = [0.05, 0.51, 0.45, 0.95, 0.3];
        for (id, score) in scores.into_iter().enumerate() {
            store
                .append(scored(id as u64, score))
                .await
                .expect("append");
        }
        let queue = build_queue(&store, &query(), 50, MAX_SCAN).expect("queue");
        assert_eq!(ids(&queue), [1, 2, 4, 3, 0]);
        assert_eq!(queue.items[0].reasons, [Reason::NearThreshold]);
        assert!(queue.items[2].reasons.is_empty());

        // A shadow that disagrees on part 3 lifts it; a flag on part 0 lifts it above all.
        store
            .put_shadow(&ShadowVerdict {
                part_id: 3,
                version: "b".into(),
                verdict: Verdict::Pass,
                score: Some(0.2),
                live_version: "a".into(),
                live_verdict: Verdict::Fail,
                live_score: Some(0.95),
            })
            .expect("shadow");
        store.append(flag(0, "clean part")).await.expect("flag");
        let queue = build_queue(&store, &query(), 50, MAX_SCAN).expect("queue");
        assert_eq!(ids(&queue), [0, 3, 1, 2, 4]);
        assert_eq!(queue.items[0].reasons, [Reason::Flagged]);
        assert_eq!(queue.items[0].flag_note.as_deref(), Some("clean part"));
        assert_eq!(queue.items[1].reasons, [Reason::ShadowDisagrees]);
        let served = serde_json::to_value(&queue.items[0]).expect("json");
        assert_eq!(
            crate::serve::openapi_check::served_fields(&served),
            crate::serve::openapi_check::schema_fields("QueueItem"),
            "the OpenAPI document describes a queue item as served"
        );

        // Labelled parts leave; a flag after the label brings the part back.
        let seq_of = |id: u64| store.inspection(id).expect("read").expect("there").seq;
        store.append(label(0, seq_of(0))).await.expect("label");
        store.append(label(1, seq_of(1))).await.expect("label");
        let queue = build_queue(&store, &query(), 50, MAX_SCAN).expect("queue");
        assert_eq!(ids(&queue), [3, 2, 4]);
        store.append(flag(1, "still wrong")).await.expect("flag");
        let queue = build_queue(&store, &query(), 2, MAX_SCAN).expect("queue");
        assert_eq!(
            ids(&queue),
            [1, 3],
            "flagged again after its label, and limited"
        );
        assert!(queue.items[0].labelled);

        let all = QueueQuery {
            labelled: true,
            ..query()
        };
        assert_eq!(
            build_queue(&store, &all, 50, MAX_SCAN)
                .expect("q")
                .items
                .len(),
            5
        );
    }

    #[tokio::test]
    async fn filters_narrow_the_queue_and_old_flags_are_found_beyond_the_scan() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "s").expect("store");
        for id in 0..10 {
            store
                .append(scored(id, 0.1 * id as f32))
                .await
                .expect("append");
        }
        store.append(flag(0, "old")).await.expect("flag");
        // Only the 3 newest are read, but the flagged part 0 still leads.
        let queue = build_queue(&store, &query(), 50, 3).expect("queue");
        assert_eq!(ids(&queue), [0, 7, 8, 9]);
        assert_eq!(queue.scanned, 4);

        let failed = QueueQuery {
            verdict: Some(Verdict::Fail),
            ..query()
        };
        let queue = build_queue(&store, &failed, 50, MAX_SCAN).expect("queue");
        assert!(queue.items.iter().all(|i| i.verdict == Some(Verdict::Fail)));
        assert_eq!(queue.items.len(), 5);

        let start: DateTime<Utc> = "2026-01-01T00:00:03Z".parse().expect("time");
        let window = QueueQuery {
            from: Some(start),
            to: Some(start + chrono::TimeDelta::seconds(2)),
            ..query()
        };
        let queue = build_queue(&store, &window, 50, MAX_SCAN).expect("queue");
        let mut got = ids(&queue);
        got.sort();
        assert_eq!(got, [3, 4]);

        let other_order = QueueQuery {
            work_order: Some("WO-none".into()),
            ..query()
        };
        assert!(
            build_queue(&store, &other_order, 50, MAX_SCAN)
                .expect("q")
                .items
                .is_empty()
        );
    }
}
