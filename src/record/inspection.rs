//! Inspection records and the recorder stage that writes them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::journal::{AlarmRecord, AlarmSeverity, AlarmState, RecordBody};
use super::{RecordError, Store};
use crate::metrics::Metrics;
use crate::models::boxes::DefectBox;
use crate::part::{
    Actuation, Disposition, GrayImage, HeatMap, Inspection, PartOutcome, StationClock, Verdict,
};

/// Whether the gate fired for a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActuationStatus {
    NotRequired,
    Done,
    Failed,
}

/// One part's quality record (the body of a journal record of kind `inspection`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionRecord {
    pub part_id: u64,
    /// The work order running when the part was captured.
    pub work_order: Option<String>,
    /// That work order's product.
    pub product: Option<String>,
    pub captured_at: DateTime<Utc>,
    pub inspected_at: Option<DateTime<Utc>>,
    /// When the part's disposition was settled (its gate fire time).
    pub decided_at: DateTime<Utc>,
    /// When the part reached the gate.
    pub gate_at: DateTime<Utc>,
    /// When the PLC acknowledged the reject command.
    pub actuated_at: Option<DateTime<Utc>>,
    /// The model's verdict; absent when the frame was dropped or never inspected.
    pub verdict: Option<Verdict>,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    pub disposition: Disposition,
    /// Rejected by policy, not by its verdict: no verdict arrived by the deadline, or its PASS
    /// could not reach the PLC in its window (the PLC diverts a part without one).
    pub rejected_by_policy: bool,
    pub inspection_late: bool,
    pub actuation: ActuationStatus,
    pub actuation_error: Option<String>,
    pub model_version: Option<String>,
    /// The defect class the model named (models that learn classes) for a failed part, or for
    /// a passed one whose class the defect classes tolerate (`rejects = false`): a defect the
    /// gate let through on purpose.
    pub defect_class: Option<String>,
    /// SHA-256 of the calibrated image's PNG; absent when not saved (disk short of space).
    pub image: Option<String>,
    /// SHA-256 of the heat map's PNG.
    pub heat_map: Option<String>,
    pub error: Option<String>,
    /// Where the heat map peaks: the likeliest defect place, for patterns in where defects
    /// fall (a damaged roller marks every part it touches at one place). Absent from records
    /// older than the field, and from parts without a heat map.
    #[serde(default)]
    pub defect_at: Option<DefectPlace>,
    /// How large a failed part's defect region is, in pixels and, where the calibration has a
    /// scale, in millimetres; absent for parts that did not fail, when no cell of the heat map
    /// reached the threshold (an anomaly model may fail a part on its whole-image scores
    /// alone), and from records older than the field.
    #[serde(default)]
    pub defect_size: Option<DefectSize>,
    /// The defects the model outlined in the calibrated image, hottest first (at most
    /// [`crate::part::MAX_DEFECT_BOXES`]): for a failed part, and for a passed one whose defect
    /// class is tolerated. Empty for other parts, when no cell reached the threshold (or the
    /// supervised model's box cut), and in records older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defect_boxes: Vec<DefectBox>,
    /// A station with several cameras: each camera's look at the part, the station's own
    /// camera first; the fields above are those of the view that decided, the first whose
    /// verdict is the part's. Absent with one camera.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewRecord>,
    /// The calibration file that shaped the image, by name and content hash (that of the
    /// deciding view); absent from records older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// How unlike the model's good training images the image was (its input statistics, their
    /// novelty and the model's limit), that of the most novel view; absent when the model's card
    /// has no drift reference, for parts without an image, and from records older than the
    /// field. What the drift watch and the labelling queue read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub novelty: Option<crate::learn::drift::InputNovelty>,
}

/// One camera's look at a part, on a station with several views of each part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRecord {
    pub camera: String,
    pub verdict: Verdict,
    pub score: Option<f32>,
    pub defect_class: Option<String>,
    /// SHA-256 of this camera's calibrated image's PNG, when saved.
    pub image: Option<String>,
    /// SHA-256 of this view's heat map's PNG, when saved.
    pub heat_map: Option<String>,
    pub error: Option<String>,
    pub defect_at: Option<DefectPlace>,
    pub defect_size: Option<DefectSize>,
    /// The defects the model outlined in this camera's image ([`InspectionRecord::defect_boxes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defect_boxes: Vec<DefectBox>,
    /// This camera's calibration file, by name and content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
}

/// The size of a part's defect region: the heat map's cells at or past the threshold that are
/// connected (8 neighbours) to its hottest cell, measured in the calibrated image. Heat maps are
/// coarser than images, so sizes come in whole cells (8 pixels of the model's input for the
/// backbone models): a size to sort and trend defects by, not a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DefectSize {
    /// The region's bounding box across and down, in the calibrated image's pixels.
    pub width_px: f32,
    pub height_px: f32,
    /// The region's cells' area, in square pixels.
    pub area_px: f32,
    /// The same on the part's plane; absent without `mm_per_pixel` in the calibration.
    pub width_mm: Option<f32>,
    pub height_mm: Option<f32>,
    pub area_mm2: Option<f32>,
}

impl DefectSize {
    /// The region of `heat_map` (on the threshold's scale, 0.5 the threshold) over an image of
    /// `image_size` pixels, `mm_per_pixel` across and down when the scale is known. `None`
    /// when no cell reached the threshold, or the map does not fit its size.
    pub fn of(
        heat_map: &HeatMap,
        (image_width, image_height): (u32, u32),
        mm_per_pixel: Option<(f64, f64)>,
    ) -> Option<DefectSize> {
        let past = |i: usize| heat_map.values[i] >= 0.5;
        let peak = peak_cell(heat_map).filter(|&i| past(i))?;
        let (width, height) = (heat_map.width as usize, heat_map.height as usize);
        // Flood fill from the peak over cells past the threshold.
        let mut seen = vec![false; width * height];
        let mut stack = vec![peak];
        seen[peak] = true;
        let (mut cells, mut left, mut right, mut top, mut bottom) = (0usize, width, 0, height, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            cells += 1;
            (left, right, top, bottom) = (left.min(x), right.max(x), top.min(y), bottom.max(y));
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let n = ny * width + nx;
                    if !seen[n] && past(n) {
                        seen[n] = true;
                        stack.push(n);
                    }
                }
            }
        }
        let cell_width = image_width as f32 / width as f32;
        let cell_height = image_height as f32 / height as f32;
        let width_px = (right - left + 1) as f32 * cell_width;
        let height_px = (bottom - top + 1) as f32 * cell_height;
        let area_px = cells as f32 * cell_width * cell_height;
        let mm = mm_per_pixel.map(|(across, down)| (across as f32, down as f32));
        Some(DefectSize {
            width_px,
            height_px,
            area_px,
            width_mm: mm.map(|(across, _)| width_px * across),
            height_mm: mm.map(|(_, down)| height_px * down),
            area_mm2: mm.map(|(across, down)| area_px * across * down),
        })
    }
}

/// A place in the calibrated image, normalised: `(0, 0)` the top-left corner, `(1, 1)` the
/// bottom-right one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DefectPlace {
    pub x: f32,
    pub y: f32,
}

/// The index of the heat map's hottest cell (the first, on a tie), which [`DefectPlace`] and
/// [`DefectSize`] both start from; `None` for an empty map, one that does not fit its size, or
/// one whose values are not numbers.
fn peak_cell(heat_map: &HeatMap) -> Option<usize> {
    let (width, height) = (heat_map.width as usize, heat_map.height as usize);
    if width == 0 || height == 0 || heat_map.values.len() != width * height {
        return None;
    }
    let (index, _) = heat_map
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })?;
    Some(index)
}

impl DefectPlace {
    /// The centre of the heat map's hottest cell (the first, on a tie); `None` for an empty map
    /// or one whose values are not numbers.
    pub fn peak_of(heat_map: &HeatMap) -> Option<DefectPlace> {
        let index = peak_cell(heat_map)?;
        let (width, height) = (heat_map.width as usize, heat_map.height as usize);
        Some(DefectPlace {
            x: ((index % width) as f32 + 0.5) / width as f32,
            y: ((index / width) as f32 + 0.5) / height as f32,
        })
    }
}

/// A shadow model's verdict on one part, beside the live verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowVerdict {
    pub part_id: u64,
    pub version: String,
    pub verdict: Verdict,
    pub score: Option<f32>,
    pub live_version: String,
    pub live_verdict: Verdict,
    pub live_score: Option<f32>,
}

/// Agreement of a shadow model with the live model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowSummary {
    pub version: String,
    pub compared: u64,
    pub agreed: u64,
    /// The live model failed the part, the shadow would have passed it (a would-be escape).
    pub live_fail_shadow_pass: u64,
    /// The shadow would have rejected a part the live model passed.
    pub live_pass_shadow_fail: u64,
    pub shadow_errors: u64,
    pub other_disagreements: u64,
}

/// Encodes a grey image as PNG.
pub fn gray_png(image: &GrayImage) -> Result<Vec<u8>, RecordError> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(
        &image.pixels,
        image.width,
        image.height,
        image::ExtendedColorType::L8,
    )?;
    Ok(png)
}

/// Encodes a heat map on the threshold's scale as a grey PNG: the threshold mid-grey (128),
/// twice it and more white.
pub fn heat_map_png(heat_map: &HeatMap) -> Result<Vec<u8>, RecordError> {
    let pixels = heat_map
        .values
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    gray_png(&GrayImage {
        width: heat_map.width,
        height: heat_map.height,
        pixels,
    })
}

/// Everything the recorder needs.
pub struct RecordContext {
    pub store: Store,
    pub outcomes: mpsc::Receiver<PartOutcome>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
}

/// Outcomes written in one group commit at most.
const MAX_BATCH: usize = 512;

/// The alarm raised while images yield to records.
pub const DISK_LOW_ALARM: &str = "disk_low";

/// The alarm of records that could not be written (and wait in memory).
pub const RECORDS_FAILING_ALARM: &str = "records_failing";

/// One record built and not yet durable, with the part it is about (none for an alarm).
struct Prepared {
    body: RecordBody,
    part: Option<(u64, Disposition)>,
}

/// Records every outcome until the channel closes. Whatever has queued up while the last
/// commit was flushing goes into the next one, so a burst costs one flush, not one per part.
///
/// An outcome becomes its record (its images saved first, when the disk has room) as soon as
/// it is taken off the channel, and its frames are let go. While the store cannot write (a
/// full disk), the recorder goes on taking outcomes into records that wait in memory: a
/// record is a kilobyte or two where an outcome with its frame and heat map is hundreds, so
/// a long outage costs little memory, and the channel behind never backs up.
pub async fn run_recorder(mut ctx: RecordContext) {
    let mut disk_low = false;
    let mut waiting: std::collections::VecDeque<Prepared> = std::collections::VecDeque::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if waiting.is_empty() {
            if ctx.outcomes.recv_many(&mut batch, MAX_BATCH).await == 0 {
                break;
            }
            prepare(&ctx, &mut disk_low, &mut batch, &mut waiting).await;
        }
        let take = waiting.len().min(MAX_BATCH);
        let chunk: Vec<Prepared> = waiting.drain(..take).collect();
        write_chunk(&mut ctx, &mut disk_low, &mut batch, &mut waiting, chunk).await;
    }
}

/// Turns `batch` into records at the back of `waiting` (saving their images while the disk
/// has room) and empties it; a change of the disk's state goes first, as its alarm.
async fn prepare(
    ctx: &RecordContext,
    disk_low: &mut bool,
    batch: &mut Vec<PartOutcome>,
    waiting: &mut std::collections::VecDeque<Prepared>,
) {
    let room = ctx.store.images().has_room();
    if room == *disk_low {
        *disk_low = !room;
        ctx.metrics.disk_low.set(i64::from(*disk_low));
        waiting.push_back(Prepared {
            body: disk_alarm(&ctx.store, *disk_low),
            part: None,
        });
    }
    let images = save_images(ctx, batch, room).await;
    for (outcome, saved) in batch.iter().zip(images) {
        let work_order = ctx.store.work_order_at(ctx.clock.utc(outcome.captured_at));
        let mut record = build_record(&ctx.clock, outcome, saved);
        record.work_order = work_order.as_ref().map(|w| w.id.clone());
        record.product = work_order.map(|w| w.product);
        waiting.push_back(Prepared {
            body: RecordBody::Inspection(record),
            part: Some((outcome.part_id.0, outcome.disposition)),
        });
    }
    batch.clear();
}

/// Waits `wait`, taking the outcomes that come meanwhile into `waiting`.
async fn wait_taking(
    ctx: &mut RecordContext,
    wait: Duration,
    disk_low: &mut bool,
    batch: &mut Vec<PartOutcome>,
    waiting: &mut std::collections::VecDeque<Prepared>,
) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            // Cancel-safe: an outcome is either in `batch` or still in the channel.
            taken = ctx.outcomes.recv_many(batch, MAX_BATCH) => {
                if taken == 0 {
                    // The line has stopped: nothing more comes; the rest of the wait is a wait.
                    tokio::time::sleep_until(until).await;
                    return;
                }
                prepare(ctx, disk_low, batch, waiting).await;
            }
            () = tokio::time::sleep_until(until) => return,
        }
    }
}

/// Writes `chunk` in one transaction, trying again (and reopening the store) until it is
/// durable; the outcomes that come meanwhile wait in `waiting` as records.
async fn write_chunk(
    ctx: &mut RecordContext,
    disk_low: &mut bool,
    batch: &mut Vec<PartOutcome>,
    waiting: &mut std::collections::VecDeque<Prepared>,
    chunk: Vec<Prepared>,
) {
    let parts = |waiting: &std::collections::VecDeque<Prepared>| {
        chunk
            .iter()
            .chain(waiting.iter())
            .filter(|p| p.part.is_some())
            .count() as i64
    };
    let bodies: Vec<RecordBody> = chunk.iter().map(|p| p.body.clone()).collect();
    let first_part = chunk.iter().find_map(|p| p.part.map(|(id, _)| id));
    let mut backoff = Duration::from_millis(50);
    let mut failing_since = None;
    loop {
        let error = match ctx.store.append_all(bodies.clone()).await {
            Ok(_) => break,
            Err(error) => error,
        };
        ctx.metrics.record_errors.inc();
        ctx.metrics.records_waiting.set(parts(waiting));
        failing_since.get_or_insert_with(chrono::Utc::now);
        tracing::error!(parts = parts(waiting), %error, retry_in = ?backoff, "cannot record parts; they wait in memory");
        wait_taking(ctx, backoff, disk_low, batch, waiting).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // sled keeps a write error for good: reopen it (as often as it takes), then learn
        // whether the chunk reached the disk before the error (it is one transaction: whole
        // or not at all). Only then may it be written again.
        while ctx.store.is_broken() {
            if let Err(error) = ctx.store.recover().await {
                tracing::warn!(%error, retry_in = ?backoff, "record store not reopened yet");
                ctx.metrics.records_waiting.set(parts(waiting));
                wait_taking(ctx, backoff, disk_low, batch, waiting).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if first_part.is_some_and(|id| ctx.store.inspection(id).is_ok_and(|r| r.is_some())) {
            break;
        }
    }
    ctx.metrics.records_waiting.set(0);
    for (_, disposition) in chunk.iter().filter_map(|p| p.part) {
        ctx.metrics.records_written.inc();
        ctx.metrics.count_disposition(disposition);
    }
    if let Some(since) = failing_since {
        // Said once the store takes records again: when it stopped, and that it is back.
        let alarm = |state, message: String| {
            RecordBody::Alarm(AlarmRecord::condition(
                RECORDS_FAILING_ALARM,
                state,
                AlarmSeverity::Critical,
                message,
            ))
        };
        let notes = vec![
            alarm(
                AlarmState::Raised,
                format!("records could not be written from {since}; they waited in memory"),
            ),
            alarm(AlarmState::Cleared, "records are written again".into()),
        ];
        if let Err(error) = ctx.store.append_all(notes).await {
            tracing::warn!(%error, "cannot record the record-store alarm");
        }
    }
}

fn disk_alarm(store: &Store, low: bool) -> RecordBody {
    let free = store.images().free_bytes().unwrap_or(0);
    let need = store.images().min_free_bytes();
    let (state, message) = if low {
        tracing::warn!(free, need, "data disk short of space: images are not saved");
        (
            AlarmState::Raised,
            format!(
                "data disk short of space ({free} bytes free, images need {need} left free): \
                 records are kept, images are not saved"
            ),
        )
    } else {
        tracing::info!(free, "data disk has room again: images are saved");
        (
            AlarmState::Cleared,
            format!("data disk has room again ({free} bytes free): images are saved"),
        )
    };
    RecordBody::Alarm(AlarmRecord::condition(
        DISK_LOW_ALARM,
        state,
        AlarmSeverity::High,
        message,
    ))
}

/// The digests of one part's stored pictures.
#[derive(Debug, Clone, Default)]
pub struct SavedImages {
    pub image: Option<String>,
    pub heat_map: Option<String>,
    /// Each view's image and heat map, in the order of the inspection's views.
    pub views: Vec<(Option<String>, Option<String>)>,
}

/// Saves each outcome's images and heat maps (every view's) when there is room; a part whose
/// image cannot be saved is recorded without it (counted), never held back.
async fn save_images(ctx: &RecordContext, batch: &[PartOutcome], room: bool) -> Vec<SavedImages> {
    if !room {
        let skipped: usize = batch
            .iter()
            .filter_map(|o| o.inspection.as_ref())
            .map(|i| match &i.views {
                Some(views) => views
                    .views
                    .iter()
                    .filter(|v| v.inspection.image.is_some())
                    .count(),
                None => usize::from(i.image.is_some()),
            })
            .sum();
        ctx.metrics.images_skipped.inc_by(skipped as u64);
        return vec![SavedImages::default(); batch.len()];
    }
    let store = ctx.store.clone();
    let metrics = ctx.metrics.clone();
    let inspections: Vec<_> = batch.iter().map(|o| o.inspection.clone()).collect();
    // PNG encoding and file syncs are blocking work.
    let saved = tokio::task::spawn_blocking(move || {
        let save =
            |png: Result<Vec<u8>, RecordError>| match png.and_then(|png| store.save_image(&png)) {
                Ok(digest) => Some(digest),
                Err(error) => {
                    metrics.image_errors.inc();
                    tracing::warn!(%error, "image not saved; the record is kept without it");
                    None
                }
            };
        let save_look = |inspection: &Inspection| {
            (
                inspection
                    .image
                    .as_ref()
                    .and_then(|image| save(gray_png(image))),
                inspection
                    .heat_map
                    .as_ref()
                    .and_then(|map| save(heat_map_png(map))),
            )
        };
        inspections
            .iter()
            .map(|inspection| match inspection {
                None => SavedImages::default(),
                Some(inspection) => match &inspection.views {
                    None => {
                        let (image, heat_map) = save_look(inspection);
                        SavedImages {
                            image,
                            heat_map,
                            views: Vec::new(),
                        }
                    }
                    // The deciding view's pictures are the part's: saved once.
                    Some(views) => {
                        let views: Vec<_> = views
                            .views
                            .iter()
                            .map(|v| save_look(&v.inspection))
                            .collect();
                        let (image, heat_map) = inspection
                            .views
                            .as_ref()
                            .and_then(|v| views.get(v.deciding))
                            .cloned()
                            .unwrap_or_default();
                        SavedImages {
                            image,
                            heat_map,
                            views,
                        }
                    }
                },
            })
            .collect::<Vec<_>>()
    })
    .await;
    saved.unwrap_or_else(|join| {
        tracing::error!(error = %join, "image writer failed; records kept without images");
        vec![SavedImages::default(); batch.len()]
    })
}

/// Where a look's heat map peaks, and for a failed look its defect region's size.
fn defect_of(inspection: &Inspection) -> (Option<DefectPlace>, Option<DefectSize>) {
    let place = inspection.heat_map.as_ref().and_then(DefectPlace::peak_of);
    // A passed part has no defect, whatever cells came near the threshold.
    let size = (inspection.verdict == Verdict::Fail)
        .then(|| {
            let image = inspection.image.as_ref()?;
            DefectSize::of(
                inspection.heat_map.as_ref()?,
                (image.width, image.height),
                inspection.mm_per_pixel,
            )
        })
        .flatten();
    (place, size)
}

/// The record of an outcome, given the digests of its stored images.
pub fn build_record(
    clock: &StationClock,
    outcome: &PartOutcome,
    saved: SavedImages,
) -> InspectionRecord {
    let inspection = outcome.inspection.as_ref();
    let (actuation, actuated_at, actuation_error) = match &outcome.actuation {
        Actuation::NotRequired => (ActuationStatus::NotRequired, None, None),
        Actuation::Done { at } => (ActuationStatus::Done, Some(clock.utc(*at)), None),
        Actuation::Failed { error, .. } => (ActuationStatus::Failed, None, Some(error.clone())),
    };
    let (defect_at, defect_size) = inspection.map(defect_of).unwrap_or_default();
    let part_views = inspection.and_then(|i| i.views.as_ref());
    let views = part_views
        .map(|views| {
            views
                .views
                .iter()
                .zip(
                    saved
                        .views
                        .iter()
                        .cloned()
                        .chain(std::iter::repeat((None, None))),
                )
                .map(|(view, (image, heat_map))| {
                    let look = &view.inspection;
                    let (defect_at, defect_size) = defect_of(look);
                    ViewRecord {
                        camera: view.camera.to_string(),
                        verdict: look.verdict,
                        score: look.score,
                        defect_class: look.defect_class.clone(),
                        image,
                        heat_map,
                        error: look.error.clone(),
                        defect_at,
                        defect_size,
                        defect_boxes: look.defect_boxes.clone(),
                        calibration: look.calibration.as_deref().map(str::to_owned),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    InspectionRecord {
        part_id: outcome.part_id.0,
        work_order: None,
        product: None,
        captured_at: clock.utc(outcome.captured_at),
        inspected_at: inspection.map(|i| clock.utc(i.inspected_at)),
        decided_at: clock.utc(outcome.decided_at),
        gate_at: clock.utc(outcome.gate_at),
        actuated_at,
        verdict: inspection.map(|i| i.verdict),
        score: inspection.and_then(|i| i.score),
        threshold: inspection.map(|i| i.threshold),
        disposition: outcome.disposition,
        rejected_by_policy: outcome.disposition == Disposition::RejectNoVerdict
            || (outcome.disposition == Disposition::Pass && actuation == ActuationStatus::Failed),
        inspection_late: outcome.inspection_late,
        actuation,
        actuation_error,
        model_version: inspection.map(|i| i.model_version.to_string()),
        defect_class: inspection.and_then(|i| i.defect_class.clone()),
        image: saved.image,
        heat_map: saved.heat_map,
        error: inspection.and_then(|i| i.error.clone()),
        defect_at,
        defect_size,
        defect_boxes: inspection
            .map(|i| i.defect_boxes.clone())
            .unwrap_or_default(),
        views,
        calibration: inspection
            .and_then(|i| i.calibration.as_deref())
            .map(str::to_owned),
        novelty: inspection.and_then(|i| i.novelty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::{PartId, StationTime};
    use crate::record::journal::{Filter, RecordKind, WorkOrder, WorkOrderAction, WorkOrderRecord};
    use crate::record::store::RESERVE_BLOCK;

    /// A part rejected for want of a verdict, its gate fired.
    fn outcome(part_id: u64) -> PartOutcome {
        PartOutcome {
            part_id: PartId(part_id),
            captured_at: StationTime::default(),
            gate_at: StationTime(Duration::from_millis(1000)),
            decided_at: StationTime(Duration::from_millis(990)),
            disposition: Disposition::RejectNoVerdict,
            inspection: None,
            inspection_late: false,
            actuation: Actuation::Done {
                at: StationTime(Duration::from_millis(991)),
            },
        }
    }

    fn record(part_id: u64) -> RecordBody {
        let clock = StationClock::start();
        RecordBody::Inspection(build_record(
            &clock,
            &outcome(part_id),
            SavedImages::default(),
        ))
    }

    #[tokio::test]
    async fn records_survive_reopen_and_list_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance;
        {
            let store = Store::open(dir.path(), "test").expect("open");
            instance = store.instance_id().to_owned();
            assert_eq!(store.next_part_id().expect("id"), 0);
            for id in [3, 1, 2, 300] {
                store.append(record(id)).await.expect("append");
            }
        }
        let store = Store::open(dir.path(), "test").expect("reopen");
        assert_eq!(store.instance_id(), instance);
        assert_eq!((store.first_seq(), store.last_seq()), (1, 4));
        assert_eq!(store.next_part_id().expect("id"), 301);
        // Runs start past every reserved id, recorded or not: recording part 3 reserved ids up
        // to 3 + RESERVE_BLOCK (300 was not yet near the end), and each run reserves a block.
        assert_eq!(store.start_run().expect("run"), 3 + RESERVE_BLOCK);
        drop(store);
        let store = Store::open(dir.path(), "test").expect("reopen");
        assert_eq!(store.start_run().expect("run"), 3 + 2 * RESERVE_BLOCK);
        let ids = |records: Vec<crate::record::Record>| -> Vec<u64> {
            records
                .iter()
                .map(|r| match &r.body {
                    RecordBody::Inspection(i) => i.part_id,
                    _ => u64::MAX,
                })
                .collect()
        };
        assert_eq!(
            ids(store.inspections(None, 10).expect("list")),
            [300, 3, 2, 1]
        );
        assert_eq!(ids(store.inspections(Some(3), 1).expect("list")), [2]);
        let got = store.inspection(1).expect("get").expect("present");
        assert_eq!(got.seq, 2);
        let RecordBody::Inspection(got) = got.body else {
            panic!("not an inspection")
        };
        assert!(got.rejected_by_policy);
        assert_eq!(got.actuation, ActuationStatus::Done);
    }

    #[tokio::test]
    async fn a_write_whose_caller_is_dropped_keeps_its_numbers() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open");
        let alarm = RecordBody::Alarm(AlarmRecord::condition(
            "x",
            AlarmState::Raised,
            AlarmSeverity::Low,
            "m".into(),
        ));
        // Polled once and dropped, as a request past its timeout is (before this change the
        // write stopped at its flush, its transaction applied, its numbers not taken).
        assert!(
            store.append(alarm).now_or_never().is_none(),
            "still writing"
        );
        let inspection = store.append(record(5)).await.expect("append");
        // The dropped write ran to its end first, under its own number, not overwritten.
        assert_eq!(inspection.seq, 2);
        assert_eq!(store.last_seq(), 2);
        let first = store.record(1).expect("read").expect("kept");
        assert!(matches!(first.body, RecordBody::Alarm(_)), "{first:?}");
        // The kind index names the alarm, and the alarm only.
        let alarms = store.records_of_kind(RecordKind::Alarm).expect("alarms");
        assert_eq!(alarms.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        assert!(matches!(alarms[0].body, RecordBody::Alarm(_)));
    }

    #[tokio::test]
    async fn pulls_page_by_sequence_with_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open");
        let mut bodies: Vec<RecordBody> = (0..10).map(record).collect();
        bodies.insert(
            4,
            RecordBody::Alarm(AlarmRecord::condition(
                "x",
                AlarmState::Raised,
                AlarmSeverity::Low,
                "m".into(),
            )),
        );
        let written = store.append_all(bodies).await.expect("append");
        assert_eq!(
            written.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=11).collect::<Vec<_>>()
        );
        let all = Filter::default();
        let page = store.pull(1, 4, &all).expect("pull");
        assert_eq!(
            page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!((page.next_seq, page.more, page.last_seq), (5, true, 11));
        let page = store.pull(page.next_seq, 100, &all).expect("pull");
        assert_eq!(page.records.len(), 7);
        assert_eq!((page.next_seq, page.more), (12, false));
        // Past the end: an empty page that says where to go on from.
        let page = store.pull(12, 100, &all).expect("pull");
        assert!(page.records.is_empty());
        assert_eq!((page.next_seq, page.more), (12, false));
        let alarms = Filter {
            kinds: vec![RecordKind::Alarm],
            ..Filter::default()
        };
        let page = store.pull(1, 100, &alarms).expect("pull");
        assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5]);
        assert_eq!(page.next_seq, 12);
        assert!(matches!(
            store.pull(0, 1, &all),
            Err(RecordError::Pruned {
                from: 0,
                first_seq: 1
            })
        ));
        // Acknowledgements never go backwards and never past the end.
        assert_eq!(store.acknowledge("mes", 6).await.expect("ack"), 6);
        assert_eq!(store.acknowledge("mes", 3).await.expect("ack"), 6);
        assert!(store.acknowledge("mes", 12).await.is_err());
        assert_eq!(store.acknowledged("mes").expect("read"), 6);
        assert_eq!(store.acknowledged("other").expect("read"), 0);
        assert!(store.verify().expect("verify").problems.is_empty());
    }

    #[tokio::test]
    async fn parts_are_attributed_to_the_work_order_running_when_captured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open");
        let order = WorkOrder {
            id: "WO-1".into(),
            product: "bracket".into(),
            quantity: 10,
            due: Utc::now() + chrono::Duration::hours(1),
            ideal_cycle_time_s: 1.0,
        };
        let change = |action| {
            RecordBody::WorkOrder(WorkOrderRecord {
                action,
                order: order.clone(),
                by: "mes".into(),
            })
        };
        let before = Utc::now() - chrono::Duration::seconds(1);
        store
            .append(change(WorkOrderAction::Released))
            .await
            .expect("release");
        assert_eq!(
            store.work_order_at(Utc::now()),
            None,
            "released is not running"
        );
        store
            .append(change(WorkOrderAction::Started))
            .await
            .expect("start");
        assert_eq!(store.work_order_at(Utc::now()), Some(order.clone()));
        assert_eq!(store.work_order_at(before), None);
        store
            .append(change(WorkOrderAction::Completed))
            .await
            .expect("complete");
        let after = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(store.work_order_at(after), None);
        drop(store);
        let store = Store::open(dir.path(), "test").expect("reopen");
        let orders = store.work_orders();
        assert_eq!(orders.len(), 1);
        assert!(orders[0].started_at.is_some() && orders[0].completed_at.is_some());
    }

    #[test]
    fn the_defect_place_is_the_heat_maps_peak_and_old_records_read_without_it() {
        let heat_map = HeatMap {
            width: 4,
            height: 2,
            values: vec![0.1, 0.2, 0.1, 0.0, 0.3, 0.1, f32::NAN, 0.9],
        };
        assert_eq!(
            DefectPlace::peak_of(&heat_map),
            Some(DefectPlace { x: 0.875, y: 0.75 })
        );
        let short = HeatMap {
            width: 4,
            height: 2,
            values: vec![0.5],
        };
        assert_eq!(DefectPlace::peak_of(&short), None);
        // A record written before the field existed.
        let RecordBody::Inspection(old) = record(7) else {
            panic!("an inspection");
        };
        let mut json = serde_json::to_value(&old).expect("json");
        json.as_object_mut().expect("object").remove("defect_at");
        json.as_object_mut().expect("object").remove("defect_size");
        let read: InspectionRecord = serde_json::from_value(json).expect("old record reads");
        assert_eq!((read.defect_at, read.defect_size), (None, None));
        assert_eq!(read.part_id, 7);
    }

    #[test]
    fn the_defect_size_is_the_region_past_the_threshold_around_the_peak() {
        // 4×4 cells over a 64×32 image (16×8 px cells). The peak's region: three cells in an
        // L, one of them a diagonal neighbour; a hot cell elsewhere is another region.
        #[rustfmt::skip]
        let values = vec![
            0.9, 0.0, 0.0, 0.7,
            0.6, 0.2, 0.0, 0.0,
            0.0, 0.5, 0.0, 0.0,
            0.0, 0.0, 0.49, 0.0,
        ];
        let heat_map = HeatMap {
            width: 4,
            height: 4,
            values,
        };
        let size = DefectSize::of(&heat_map, (64, 32), Some((0.5, 0.25))).expect("a region");
        assert_eq!(
            size,
            DefectSize {
                width_px: 32.0,
                height_px: 24.0,
                area_px: 3.0 * 128.0,
                width_mm: Some(16.0),
                height_mm: Some(6.0),
                area_mm2: Some(3.0 * 128.0 * 0.125),
            }
        );
        // Without a scale, pixels only.
        let size = DefectSize::of(&heat_map, (64, 32), None).expect("a region");
        assert_eq!(
            (size.width_px, size.width_mm, size.area_mm2),
            (32.0, None, None)
        );
        // Nothing past the threshold: no region.
        let calm = HeatMap {
            width: 2,
            height: 1,
            values: vec![0.49, 0.1],
        };
        assert_eq!(DefectSize::of(&calm, (8, 8), None), None);
        let short = HeatMap {
            width: 4,
            height: 2,
            values: vec![0.9],
        };
        assert_eq!(DefectSize::of(&short, (8, 8), None), None);
    }

    /// A full disk: the store refuses records (sled never sees the full disk), and the
    /// recorder goes on taking outcomes off the channel as records that wait in memory, so the
    /// tracker sending them is never held up (here: a channel of 4 takes 40 outcomes). When
    /// space returns every record is written in order, with the alarm that says when they
    /// stopped.
    #[tokio::test]
    async fn a_full_disk_holds_records_in_memory_and_never_backs_up_the_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open");
        let free = store.images().free_bytes().expect("free space");
        // As if the disk were nearly full: more than what is free must stay free.
        store.images().set_min_free_bytes(free.saturating_mul(4));
        let (tx, rx) = mpsc::channel(4);
        let metrics = Metrics::new();
        let recorder = tokio::spawn(run_recorder(RecordContext {
            store: store.clone(),
            outcomes: rx,
            clock: StationClock::start(),
            metrics: metrics.clone(),
        }));
        for part_id in 0..40 {
            tokio::time::timeout(Duration::from_secs(30), tx.send(outcome(part_id)))
                .await
                .expect("the recorder keeps taking outcomes while the disk is full")
                .expect("recorder running");
        }
        assert_eq!(
            metrics.records_written.get(),
            0,
            "nothing written to a full disk"
        );
        assert!(!store.is_broken(), "sled never ran into the full disk");
        store.images().set_min_free_bytes(0);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), recorder)
            .await
            .expect("the records are written once space returns")
            .expect("recorder");
        assert_eq!(metrics.records_written.get(), 40);
        assert_eq!(metrics.records_waiting.get(), 0);
        let mut parts: Vec<u64> = store
            .inspection_records(None, 100)
            .expect("records")
            .iter()
            .map(|r| r.part_id)
            .collect();
        parts.reverse();
        assert_eq!(
            parts,
            (0..40).collect::<Vec<_>>(),
            "every part once, in order"
        );
        let alarms: Vec<String> = store
            .records_of_kind(RecordKind::Alarm)
            .expect("alarms")
            .into_iter()
            .filter_map(|r| match r.body {
                RecordBody::Alarm(a) => Some(format!("{} {:?}", a.alarm, a.state)),
                _ => None,
            })
            .collect();
        assert!(
            alarms.contains(&format!("{RECORDS_FAILING_ALARM} Raised")),
            "{alarms:?}"
        );
    }
}
