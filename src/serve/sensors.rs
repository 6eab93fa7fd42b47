//! Sensor data over HTTP: the tags, their samples by time range (raw or per minute), and the
//! push endpoint line gateways send batches to (JSON or CSV).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::sense::{
    BatchOutcome, Flag, Incoming, Level, MinuteAggregate, SampleProblem, SenseError, Sensors,
    TagConfig,
};

/// Most samples in one response; a longer range is read in pages (`next_from`).
const MAX_SAMPLES: usize = 100_000;
/// Most samples in one pushed batch.
pub const MAX_PUSH_SAMPLES: usize = 100_000;
/// Longest range one request may ask for.
const MAX_RANGE_DAYS: i64 = 400;

impl From<SenseError> for ApiError {
    fn from(error: SenseError) -> ApiError {
        match error {
            SenseError::UnknownTag(_) => ApiError::NotFound(error.to_string()),
            error => ApiError::InternalMessage(error.to_string()),
        }
    }
}

fn sensors(api: &ApiState) -> Result<&Sensors, ApiError> {
    api.sensors
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this station keeps no sensor data".into()))
}

/// A tag as the API shows it: its configuration and newest sample.
#[derive(Debug, Serialize)]
pub(super) struct TagView {
    name: String,
    unit: String,
    description: String,
    period_ms: u64,
    valid_range: Option<[f64; 2]>,
    spec_limits: Option<[Option<f64>; 2]>,
    transport_delay_ms: Option<u64>,
    /// `modbus`, `mqtt`, or `push` (HTTP and CSV import only).
    source: &'static str,
    latest: Option<SampleView>,
}

/// One sample: time, value (null when there is none: not a number, source lost), flag.
#[derive(Debug, Serialize)]
pub(super) struct SampleView {
    t: DateTime<Utc>,
    v: Option<f64>,
    flag: Flag,
    quality: Level,
}

fn sample_view(t: i64, v: f64, flag: Flag) -> Option<SampleView> {
    Some(SampleView {
        t: DateTime::from_timestamp_millis(t)?,
        v: v.is_finite().then_some(v),
        flag,
        quality: flag.level(),
    })
}

fn tag_view(sensors: &Sensors, tag: &TagConfig) -> TagView {
    TagView {
        name: tag.name.clone(),
        unit: tag.unit.clone(),
        description: tag.description.clone(),
        period_ms: tag.period_ms,
        valid_range: tag.valid_range,
        spec_limits: tag.spec_limits,
        transport_delay_ms: tag
            .transport_delay(sensors.settings.belt_speed_mm_s)
            .map(|d| d.as_millis() as u64),
        source: if tag.modbus.is_some() {
            "modbus"
        } else if tag.mqtt.is_some() {
            "mqtt"
        } else {
            "push"
        },
        latest: sensors
            .store
            .latest(&tag.name)
            .and_then(|(t, v, flag)| sample_view(t, v, flag)),
    }
}

pub(super) async fn list_tags(State(api): State<ApiState>) -> Result<Json<Vec<TagView>>, ApiError> {
    let sensors = sensors(&api)?;
    Ok(Json(
        sensors.tags.iter().map(|t| tag_view(sensors, t)).collect(),
    ))
}

fn configured<'a>(sensors: &'a Sensors, name: &str) -> Result<&'a TagConfig, ApiError> {
    sensors
        .tag(name)
        .ok_or_else(|| ApiError::NotFound(format!("no tag named {name:?}")))
}

pub(super) async fn get_tag(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<TagView>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let sensors = sensors(&api)?;
    Ok(Json(tag_view(sensors, configured(sensors, &name)?)))
}

/// A time range in a query: RFC 3339 `from` and `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SamplesQuery {
    /// Default: `to` − 1 hour.
    from: Option<DateTime<Utc>>,
    /// Default: now.
    to: Option<DateTime<Utc>>,
    /// `raw` (default) or `minute`.
    resolution: Option<Resolution>,
    /// Most samples in the page, 1 to 100 000 (default 10 000).
    limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Resolution {
    Raw,
    Minute,
}

/// Checks a range: `from < to`, at most 400 days.
pub(super) fn range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    default_span: Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    super::time_range(
        from,
        to,
        Utc::now(),
        default_span,
        Duration::days(MAX_RANGE_DAYS),
    )
}

/// A silence longer than the tag's period allows.
#[derive(Debug, Serialize)]
pub(super) struct Gap {
    /// The last sample before the silence.
    from: DateTime<Utc>,
    /// The first sample after it.
    to: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub(super) struct SamplesPage {
    tag: String,
    unit: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    resolution: &'static str,
    /// Raw samples (resolution `raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    samples: Option<Vec<SampleView>>,
    /// Per-minute aggregates of good samples (resolution `minute`).
    #[serde(skip_serializing_if = "Option::is_none")]
    minutes: Option<Vec<MinuteView>>,
    /// Silences longer than 2.5 sample periods between samples in the page.
    gaps: Vec<Gap>,
    /// Samples by flag in the page.
    flags: std::collections::BTreeMap<Flag, usize>,
    /// Set when the page was cut at `limit`: ask again from here.
    next_from: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub(super) struct MinuteView {
    start: DateTime<Utc>,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    /// Good samples in the minute.
    count: u32,
    uncertain: u32,
    bad: u32,
}

fn minute_view(m: MinuteAggregate) -> Option<MinuteView> {
    Some(MinuteView {
        start: DateTime::from_timestamp_millis(m.start_ms)?,
        min: m.min,
        max: m.max,
        mean: m.mean,
        count: m.count,
        uncertain: m.uncertain,
        bad: m.bad,
    })
}

pub(super) async fn samples(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<SamplesQuery>, QueryRejection>,
) -> Result<Json<SamplesPage>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let sensors = sensors(&api)?.clone();
    let tag = configured(&sensors, &name)?.clone();
    let (from, to) = range(query.from, query.to, Duration::hours(1))?;
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=MAX_SAMPLES).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_SAMPLES}, got {limit}"
        )));
    }
    let resolution = query.resolution.unwrap_or(Resolution::Raw);
    let store = sensors.store.clone();
    let tag_name = tag.name.clone();
    let page = tokio::task::spawn_blocking(move || -> Result<SamplesPage, ApiError> {
        let mut page = SamplesPage {
            tag: tag_name.clone(),
            unit: tag.unit.clone(),
            from,
            to,
            resolution: "raw",
            samples: None,
            minutes: None,
            gaps: Vec::new(),
            flags: Default::default(),
            next_from: None,
        };
        match resolution {
            Resolution::Raw => {
                // One past the page: whether more are there, and where they start.
                let series = store.read_first(&tag_name, from, to, limit + 1)?;
                let n = series.len().min(limit);
                if series.len() > limit {
                    page.next_from = DateTime::from_timestamp_millis(series.t[limit]);
                }
                let allowed = (tag.period_ms as f64 * 2.5) as i64;
                for pair in series.t[..n].windows(2) {
                    if pair[1] - pair[0] > allowed
                        && let (Some(a), Some(b)) = (
                            DateTime::from_timestamp_millis(pair[0]),
                            DateTime::from_timestamp_millis(pair[1]),
                        )
                    {
                        page.gaps.push(Gap { from: a, to: b });
                    }
                }
                for flag in &series.flag[..n] {
                    *page.flags.entry(*flag).or_default() += 1;
                }
                page.samples = Some(
                    (0..n)
                        .filter_map(|i| sample_view(series.t[i], series.v[i], series.flag[i]))
                        .collect(),
                );
            }
            Resolution::Minute => {
                page.resolution = "minute";
                let minutes = store.read_first_minutes(&tag_name, from, to, limit + 1)?;
                let n = minutes.len().min(limit);
                if minutes.len() > limit {
                    page.next_from = DateTime::from_timestamp_millis(minutes[limit].start_ms);
                }
                page.minutes = Some(
                    minutes[..n]
                        .iter()
                        .filter_map(|m| minute_view(*m))
                        .collect(),
                );
            }
        }
        Ok(page)
    })
    .await
    .map_err(|e| ApiError::InternalMessage(format!("reader task: {e}")))??;
    Ok(Json(page))
}

/// The JSON push body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    samples: Vec<serde_json::Value>,
}

/// One JSON sample: `{"tag": "press_temp", "timestamp": "2026-12-01T08:00:00Z", "value": 181.5}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushSample {
    tag: String,
    timestamp: DateTime<Utc>,
    value: f64,
}

/// `POST /api/v1/samples`: a batch as JSON (`application/json`) or CSV (`text/csv`). Every
/// sample that cannot be stored is named with its place and field; the rest are kept and
/// on disk when the answer comes.
pub(super) async fn push(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BatchOutcome>, ApiError> {
    let sensors = sensors(&api)?.clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (samples, places, mut problems): (Vec<Incoming>, Vec<String>, Vec<SampleProblem>) =
        match content_type.as_str() {
            "application/json" => {
                let body: PushBody = serde_json::from_slice(&body).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "expected {{\"samples\": [{{\"tag\", \"timestamp\", \"value\"}}, …]}}: {e}"
                    ))
                })?;
                let mut samples = Vec::new();
                let mut places = Vec::new();
                let mut problems = Vec::new();
                for (i, raw) in body.samples.into_iter().enumerate() {
                    match serde_path_to_error::deserialize::<_, PushSample>(raw) {
                        Ok(s) => {
                            samples.push(Incoming {
                                tag: s.tag,
                                at: s.timestamp,
                                value: Some(s.value),
                            });
                            places.push(format!("samples[{i}]"));
                        }
                        Err(e) => problems.push(SampleProblem {
                            at: format!("samples[{i}]"),
                            field: match e.path().to_string() {
                                p if p == "." => "(sample)".into(),
                                p => p,
                            },
                            message: e.into_inner().to_string(),
                        }),
                    }
                }
                (samples, places, problems)
            }
            "text/csv" => {
                let parsed = crate::sense::csv::parse(&body).map_err(ApiError::BadRequest)?;
                let places = parsed.lines.iter().map(|l| format!("line {l}")).collect();
                (parsed.samples, places, parsed.problems)
            }
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "send application/json or text/csv, not {other:?}"
                )));
            }
        };
    // A sample older than anything the store keeps (its per-minute aggregates outlive its raw
    // samples) would be stored, acknowledged and pruned within the hour (epoch seconds read
    // as milliseconds land in 1970): refused with the reason.
    let retention_days =
        (sensors.settings.raw_retention_days).max(sensors.settings.aggregate_retention_days);
    let oldest = chrono::TimeDelta::try_milliseconds((retention_days * 86_400_000.0) as i64)
        .and_then(|keep| Utc::now().checked_sub_signed(keep));
    let (samples, places) = match oldest {
        Some(oldest) => {
            let (mut kept, mut kept_places) = (Vec::new(), Vec::new());
            for (sample, place) in samples.into_iter().zip(places) {
                if sample.at < oldest {
                    problems.push(SampleProblem {
                        at: place,
                        field: "timestamp".into(),
                        message: format!(
                            "{} is older than the {retention_days} days samples are kept \
                             (as per-minute aggregates)",
                            sample.at.to_rfc3339()
                        ),
                    });
                } else {
                    kept.push(sample);
                    kept_places.push(place);
                }
            }
            (kept, kept_places)
        }
        None => (samples, places),
    };
    if samples.len() + problems.len() > MAX_PUSH_SAMPLES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PUSH_SAMPLES} samples per batch"
        )));
    }
    let report = sensors.ingest(samples).await.map_err(|e| {
        api.metrics.sensor_store_errors.inc();
        match e {
            // Stored, not yet durable: a resend would only be refused as out of time order.
            SenseError::NotFlushed(_) => ApiError::Unavailable(format!(
                "{e}; do not resend: the station keeps them and flushes with its next write"
            )),
            e => ApiError::Unavailable(format!("the samples were not stored: {e}")),
        }
    })?;
    api.metrics.count_sensor_report(&report);
    api.metrics
        .sensor_samples_refused
        .inc_by(problems.len() as u64);
    Ok(Json(BatchOutcome::new(report, problems, |i| {
        places.get(i).cloned().unwrap_or_default()
    })))
}
