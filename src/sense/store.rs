//! The sensor store: samples of every tag in their own sled database beside the records
//! (`<data_dir>/sensors`), so a busy sensor feed never queues behind the quality records'
//! flushes and a slow analysis read never holds up either.
//!
//! # Layout
//!
//! * `raw`: **segments** of samples, keyed `tag id (u16) ++ first timestamp` (big-endian, so a
//!   tag's segments sort by time). A segment is columnar (time deltas, values, flags) and all its
//!   samples lie in one 10-minute bucket, so a read from `t` starts at the bucket of `t` and
//!   never looks further back. While a bucket is open, each write adds a small tail segment with
//!   just the new samples; when the tag's samples move past the bucket, its tails are merged into
//!   one segment (one atomic batch). Every sample is written about twice, never rewritten per
//!   flush, so a 1 Hz feed costs the flash little.
//! * `minute`: per-minute aggregates of the **good** samples (min, max, sum, count) and the
//!   counts of uncertain and bad ones, keyed like segments. They outlive the raw samples.
//! * `tags`: tag name → its id.
//!
//! One writer at a time (a mutex holds each tag's running state: last time, quality check,
//! the open minute); raw tails and minute aggregates change in one transaction, flushed before
//! the writer returns, so an acknowledged push is on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sled::Transactional;

use super::SenseError;
use super::quality::{Flag, QualityCheck};
use super::tags::TagConfig;

/// One stored sample: ms since the epoch, value, flag.
type StoredSample = (i64, f64, Flag);

/// Samples of one segment lie in one bucket of this length.
pub const BUCKET_MS: i64 = 10 * 60 * 1000;
/// A merged segment holds at most this many samples (fast tags get several per bucket).
const MAX_SEGMENT: usize = 16_384;
const MINUTE_MS: i64 = 60_000;
/// Encoding version byte at the head of every segment.
const SEGMENT_V1: u8 = 1;

/// One sample arriving from a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub tag: String,
    pub at: DateTime<Utc>,
    /// `None`: the source did not answer (stored as a `source_lost` placeholder).
    pub value: Option<f64>,
}

/// What became of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestReport {
    /// Samples stored (whatever their flag).
    pub accepted: usize,
    /// Stored samples by flag other than good.
    pub flagged: BTreeMap<Flag, usize>,
    /// Samples not stored, and why.
    pub refused: Vec<Refusal>,
}

/// One sample not stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    /// Index in the batch (the HTTP and CSV layers turn it into their line or element).
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// A tag's samples over a time range, column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Milliseconds since the Unix epoch (UTC).
    pub t: Vec<i64>,
    pub v: Vec<f64>,
    pub flag: Vec<Flag>,
}

impl Series {
    pub fn len(&self) -> usize {
        self.t.len()
    }
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }
}

/// One minute of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MinuteAggregate {
    /// The minute's start, ms since the epoch.
    pub start_ms: i64,
    /// Over good samples only; `None` when the minute had none.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub count: u32,
    pub uncertain: u32,
    pub bad: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct MinuteAcc {
    start_ms: i64,
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
    uncertain: u32,
    bad: u32,
}

impl MinuteAcc {
    fn new(start_ms: i64) -> MinuteAcc {
        MinuteAcc {
            start_ms,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            count: 0,
            uncertain: 0,
            bad: 0,
        }
    }

    fn add(&mut self, value: f64, flag: Flag) {
        match flag.level() {
            super::quality::Level::Good => {
                self.min = self.min.min(value);
                self.max = self.max.max(value);
                self.sum += value;
                self.count += 1;
            }
            super::quality::Level::Uncertain => self.uncertain += 1,
            super::quality::Level::Bad => self.bad += 1,
        }
    }

    fn encode(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[0..8].copy_from_slice(&self.min.to_le_bytes());
        out[8..16].copy_from_slice(&self.max.to_le_bytes());
        out[16..24].copy_from_slice(&self.sum.to_le_bytes());
        out[24..28].copy_from_slice(&self.count.to_le_bytes());
        out[28..32].copy_from_slice(&self.uncertain.to_le_bytes());
        out[32..36].copy_from_slice(&self.bad.to_le_bytes());
        out
    }

    fn decode(start_ms: i64, bytes: &[u8]) -> Option<MinuteAcc> {
        let f = |i: usize| Some(f64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        let u = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        Some(MinuteAcc {
            start_ms,
            min: f(0)?,
            max: f(8)?,
            sum: f(16)?,
            count: u(24)?,
            uncertain: u(28)?,
            bad: u(32)?,
        })
    }

    fn aggregate(&self) -> MinuteAggregate {
        let good = self.count > 0;
        MinuteAggregate {
            start_ms: self.start_ms,
            min: good.then_some(self.min),
            max: good.then_some(self.max),
            mean: good.then(|| self.sum / f64::from(self.count)),
            count: self.count,
            uncertain: self.uncertain,
            bad: self.bad,
        }
    }
}

/// One tag's running state, owned by the writer.
#[derive(Debug, Clone)]
struct TagState {
    id: u16,
    check: QualityCheck,
    /// The newest stored sample.
    last: Option<StoredSample>,
    /// The bucket whose tails are not merged yet, and how many tails it has.
    open_bucket: Option<(i64, usize)>,
    minute: Option<MinuteAcc>,
}

/// The sensor database. Cheap to clone.
#[derive(Clone)]
pub struct SensorStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    raw: sled::Tree,
    minute: sled::Tree,
    /// Every tag id ever given, configured or not: name → id.
    ids: HashMap<String, u16>,
    writer: Mutex<HashMap<String, TagState>>,
    /// Each tag's newest stored sample, apart from the writer: readers (the API, the alarm
    /// monitor) never wait behind a batch's flush.
    latest: std::sync::RwLock<HashMap<String, StoredSample>>,
    max_future_ms: i64,
}

impl std::fmt::Debug for SensorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SensorStore {
    /// Opens (or creates) `<data_dir>/sensors` for the configured `tags`; samples of tags no
    /// longer configured stay readable. `max_future_s`: samples stamped further ahead of the
    /// clock are refused.
    pub fn open(
        data_dir: &Path,
        tags: &[TagConfig],
        max_future_s: f64,
    ) -> Result<SensorStore, SenseError> {
        let path = data_dir.join("sensors");
        let open_error = |source| SenseError::Open {
            path: path.clone(),
            source,
        };
        let db = crate::record::open_sled(&path).map_err(open_error)?;
        let raw = db.open_tree("raw").map_err(open_error)?;
        let minute = db.open_tree("minute").map_err(open_error)?;
        let names = db.open_tree("tags").map_err(open_error)?;
        let mut ids = HashMap::new();
        for entry in names.iter() {
            let (name, id) = entry.map_err(open_error)?;
            let id = id
                .as_ref()
                .try_into()
                .map(u16::from_be_bytes)
                .map_err(|_| SenseError::Corrupt("tag id".into()))?;
            ids.insert(String::from_utf8_lossy(&name).into_owned(), id);
        }
        let mut writer = HashMap::new();
        for tag in tags {
            let id = match ids.get(&tag.name) {
                Some(id) => *id,
                None => {
                    let next = ids.values().max().map_or(Ok(0), |m| {
                        m.checked_add(1)
                            .ok_or_else(|| SenseError::Corrupt("more than 65536 tags".into()))
                    })?;
                    names
                        .insert(tag.name.as_bytes(), &next.to_be_bytes())
                        .map_err(open_error)?;
                    ids.insert(tag.name.clone(), next);
                    next
                }
            };
            let last = last_sample(&raw, id)?;
            let open_bucket = last.map(|(t, ..)| {
                let bucket = bucket_of(t);
                let tails = raw
                    .range(key(id, bucket)..key(id, bucket + BUCKET_MS))
                    .count();
                (bucket, tails)
            });
            let minute = match last {
                Some((t, ..)) => {
                    let start = t.div_euclid(MINUTE_MS) * MINUTE_MS;
                    minute
                        .get(key(id, start))
                        .map_err(open_error)?
                        .and_then(|bytes| MinuteAcc::decode(start, &bytes))
                }
                None => None,
            };
            writer.insert(
                tag.name.clone(),
                TagState {
                    id,
                    check: QualityCheck::new(tag),
                    last,
                    open_bucket,
                    minute,
                },
            );
        }
        db.flush().map_err(open_error)?;
        Ok(SensorStore {
            inner: Arc::new(Inner {
                path,
                db,
                raw,
                minute,
                ids,
                latest: std::sync::RwLock::new(
                    writer
                        .iter()
                        .filter_map(|(name, state)| Some((name.clone(), state.last?)))
                        .collect(),
                ),
                writer: Mutex::new(writer),
                max_future_ms: (max_future_s * 1000.0) as i64,
            }),
        })
    }

    /// Flags, stores and flushes a batch; returns once it is on disk. Samples of one tag must
    /// come in time order, after that tag's newest stored sample; each refused sample is named
    /// in the report and the rest of the batch is kept.
    pub fn ingest(&self, batch: &[Incoming]) -> Result<IngestReport, SenseError> {
        self.ingest_at(batch, Utc::now())
    }

    /// [`SensorStore::ingest`] with the clock given (tests).
    pub fn ingest_at(
        &self,
        batch: &[Incoming],
        now: DateTime<Utc>,
    ) -> Result<IngestReport, SenseError> {
        let mut writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut report = IngestReport::default();
        // Work on copies of the touched tags' states: they replace the originals only once
        // the batch is committed, so a write that fails leaves the writer as it was.
        let mut touched: HashMap<&str, TagState> = HashMap::new();
        // Per tag: the accepted samples, in order.
        let mut accepted: BTreeMap<u16, Vec<StoredSample>> = BTreeMap::new();
        let limit = now.timestamp_millis() + self.inner.max_future_ms;
        for (index, sample) in batch.iter().enumerate() {
            let refuse = |field: &str, message: String| Refusal {
                index,
                field: field.to_owned(),
                message,
            };
            let state = match touched.get_mut(sample.tag.as_str()) {
                Some(state) => state,
                None => match writer.get(&sample.tag) {
                    Some(state) => touched.entry(sample.tag.as_str()).or_insert(state.clone()),
                    None => {
                        report
                            .refused
                            .push(refuse("tag", format!("unknown tag {:?}", sample.tag)));
                        continue;
                    }
                },
            };
            let t = sample.at.timestamp_millis();
            if t > limit {
                report.refused.push(refuse(
                    "timestamp",
                    format!(
                        "{} is {:.0} s ahead of the station's clock",
                        sample.at.to_rfc3339(),
                        (t - now.timestamp_millis()) as f64 / 1000.0
                    ),
                ));
                continue;
            }
            if let Some((last, ..)) = state.last
                && t <= last
            {
                report.refused.push(refuse(
                    "timestamp",
                    format!(
                        "{} is not after tag {:?}'s newest sample ({}): samples of a tag must come in time order",
                        sample.at.to_rfc3339(),
                        sample.tag,
                        DateTime::from_timestamp_millis(last)
                            .map(|d| d.to_rfc3339())
                            .unwrap_or_default()
                    ),
                ));
                continue;
            }
            let (value, flag) = match sample.value {
                Some(value) => (value, state.check.judge(value)),
                None => (f64::NAN, Flag::SourceLost),
            };
            state.last = Some((t, value, flag));
            accepted.entry(state.id).or_default().push((t, value, flag));
            report.accepted += 1;
            if flag != Flag::Good {
                *report.flagged.entry(flag).or_default() += 1;
            }
        }
        if report.accepted == 0 {
            return Ok(report);
        }
        let plan = self.plan_writes(&mut touched, &accepted)?;
        let inner = &self.inner;
        (&inner.raw, &inner.minute)
            .transaction(|(raw, minute)| {
                // Removed first: a merged segment may take the key of a tail it replaces.
                for k in &plan.raw_removed {
                    raw.remove(k.as_slice())?;
                }
                for (k, v) in &plan.raw {
                    raw.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &plan.minutes {
                    minute.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => SenseError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    SenseError::Corrupt("transaction aborted".into())
                }
            })?;
        // Committed: the trees hold the batch now, so the writer's states follow them before
        // the flush. Were a failed flush (a full disk) to leave them behind, the batch's retry
        // would pass the time-order check and merge its samples into their segments twice,
        // and the next batch would overwrite the minute aggregates this one wrote.
        {
            let mut latest = inner.latest.write().unwrap_or_else(PoisonError::into_inner);
            for (name, state) in &touched {
                if let Some(last) = state.last {
                    latest.insert((*name).to_owned(), last);
                }
            }
        }
        for (name, state) in touched {
            writer.insert(name.to_owned(), state);
        }
        inner.db.flush().map_err(SenseError::NotFlushed)?;
        Ok(report)
    }

    /// Turns accepted samples into the segments and minute aggregates to write.
    fn plan_writes(
        &self,
        touched: &mut HashMap<&str, TagState>,
        accepted: &BTreeMap<u16, Vec<StoredSample>>,
    ) -> Result<WritePlan, SenseError> {
        let mut plan = WritePlan::default();
        for state in touched.values_mut() {
            let Some(samples) = accepted.get(&state.id) else {
                continue;
            };
            // Minute aggregates: every minute touched, the last one still open.
            for &(t, value, flag) in samples {
                let start = t.div_euclid(MINUTE_MS) * MINUTE_MS;
                let acc = match &mut state.minute {
                    Some(acc) if acc.start_ms == start => acc,
                    slot => {
                        if let Some(done) = slot.take() {
                            plan.minutes.push((
                                key(state.id, done.start_ms).to_vec(),
                                done.encode().to_vec(),
                            ));
                        }
                        slot.insert(MinuteAcc::new(start))
                    }
                };
                acc.add(value, flag);
            }
            if let Some(acc) = &state.minute {
                plan.minutes
                    .push((key(state.id, acc.start_ms).to_vec(), acc.encode().to_vec()));
            }
            // Segments: the batch's samples split by bucket. A bucket the batch leaves behind
            // is written whole (merged with the tails earlier batches left in it); the last
            // bucket stays open and gets a tail.
            if let Some((open, tails)) = state.open_bucket
                && open < bucket_of(samples[0].0)
            {
                // Moved past the open bucket: merge its tails.
                if tails > 1 {
                    let (merged, keys) = self.read_bucket(state.id, open)?;
                    plan.raw_removed.extend(keys);
                    for chunk in merged.chunks(MAX_SEGMENT) {
                        plan.raw.push(encode_segment(state.id, chunk));
                    }
                }
                state.open_bucket = None;
            }
            let mut start = 0;
            while start < samples.len() {
                let bucket = bucket_of(samples[start].0);
                let end = start
                    + samples[start..]
                        .iter()
                        .take_while(|s| bucket_of(s.0) == bucket)
                        .count();
                let part = &samples[start..end];
                let earlier_tails = match state.open_bucket {
                    Some((open, tails)) if open == bucket => tails,
                    _ => 0,
                };
                if end == samples.len() {
                    let chunks = part.chunks(MAX_SEGMENT);
                    let added = chunks.len();
                    plan.raw
                        .extend(chunks.map(|chunk| encode_segment(state.id, chunk)));
                    state.open_bucket = Some((bucket, earlier_tails + added));
                } else if earlier_tails == 0 {
                    plan.raw.extend(
                        part.chunks(MAX_SEGMENT)
                            .map(|chunk| encode_segment(state.id, chunk)),
                    );
                } else {
                    let (mut merged, keys) = self.read_bucket(state.id, bucket)?;
                    merged.extend_from_slice(part);
                    plan.raw_removed.extend(keys);
                    plan.raw.extend(
                        merged
                            .chunks(MAX_SEGMENT)
                            .map(|chunk| encode_segment(state.id, chunk)),
                    );
                    state.open_bucket = None;
                }
                start = end;
            }
        }
        Ok(plan)
    }

    /// Every stored sample of one bucket of a tag, and the keys of its segments.
    fn read_bucket(
        &self,
        id: u16,
        bucket: i64,
    ) -> Result<(Vec<StoredSample>, Vec<Vec<u8>>), SenseError> {
        let mut samples = Vec::new();
        let mut keys = Vec::new();
        for entry in self
            .inner
            .raw
            .range(key(id, bucket)..key(id, bucket + BUCKET_MS))
        {
            let (k, v) = entry?;
            let first = key_time(&k)?;
            decode_segment(first, &v, |t, value, flag| samples.push((t, value, flag)))?;
            keys.push(k.to_vec());
        }
        Ok((samples, keys))
    }

    /// The samples of `tag` with `from ≤ t < to`.
    pub fn read(
        &self,
        tag: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Series, SenseError> {
        self.read_first(tag, from, to, usize::MAX)
    }

    /// The first `at_most` samples of `tag` with `from ≤ t < to`: a page of a long range reads
    /// its page, not the range (a week of a 10 Hz tag is six million samples).
    pub fn read_first(
        &self,
        tag: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        at_most: usize,
    ) -> Result<Series, SenseError> {
        let id = self.id(tag)?;
        let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
        let mut series = Series::default();
        if from >= to {
            return Ok(series);
        }
        for entry in self.inner.raw.range(key(id, bucket_of(from))..key(id, to)) {
            if series.t.len() >= at_most {
                break;
            }
            let (k, v) = entry?;
            let first = key_time(&k)?;
            decode_segment(first, &v, |t, value, flag| {
                if (from..to).contains(&t) {
                    series.t.push(t);
                    series.v.push(value);
                    series.flag.push(flag);
                }
            })?;
        }
        // A segment holds many samples: the last one read may pass the count.
        series.t.truncate(at_most);
        series.v.truncate(at_most);
        series.flag.truncate(at_most);
        Ok(series)
    }

    /// The per-minute aggregates of `tag` for the minutes that overlap `[from, to)`.
    pub fn read_minutes(
        &self,
        tag: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteAggregate>, SenseError> {
        self.read_first_minutes(tag, from, to, usize::MAX)
    }

    /// The first `at_most` of [`SensorStore::read_minutes`].
    pub fn read_first_minutes(
        &self,
        tag: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        at_most: usize,
    ) -> Result<Vec<MinuteAggregate>, SenseError> {
        let id = self.id(tag)?;
        let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
        if from >= to {
            return Ok(Vec::new());
        }
        let from = from.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut out = Vec::new();
        for entry in (self.inner.minute.range(key(id, from)..key(id, to))).take(at_most) {
            let (k, v) = entry?;
            let start = key_time(&k)?;
            let acc = MinuteAcc::decode(start, &v)
                .ok_or_else(|| SenseError::Corrupt(format!("minute aggregate of {tag:?}")))?;
            out.push(acc.aggregate());
        }
        Ok(out)
    }

    /// The newest stored sample of a configured tag: (ms since epoch, value, flag).
    pub fn latest(&self, tag: &str) -> Option<StoredSample> {
        self.inner
            .latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tag)
            .copied()
    }

    /// Deletes raw samples before `raw_before` and minute aggregates before `minutes_before`.
    /// Returns how many segments and aggregates went.
    pub fn prune(
        &self,
        raw_before: DateTime<Utc>,
        minutes_before: DateTime<Utc>,
    ) -> Result<(usize, usize), SenseError> {
        // Whole buckets only: a segment goes when its bucket ended before the cutoff.
        let raw_cut = bucket_of(raw_before.timestamp_millis());
        let minute_cut = minutes_before.timestamp_millis();
        let (mut segments, mut minutes) = (0, 0);
        for &id in self.inner.ids.values() {
            for (tree, cut, count) in [
                (&self.inner.raw, raw_cut, &mut segments),
                (&self.inner.minute, minute_cut, &mut minutes),
            ] {
                let mut batch = sled::Batch::default();
                for entry in tree.range(key(id, i64::MIN)..key(id, cut)) {
                    let (k, _) = entry?;
                    batch.remove(k);
                    *count += 1;
                }
                tree.apply_batch(batch)?;
            }
        }
        self.inner.db.flush()?;
        Ok((segments, minutes))
    }

    fn id(&self, tag: &str) -> Result<u16, SenseError> {
        self.inner
            .ids
            .get(tag)
            .copied()
            .ok_or_else(|| SenseError::UnknownTag(tag.to_owned()))
    }
}

#[derive(Default)]
struct WritePlan {
    raw: Vec<(Vec<u8>, Vec<u8>)>,
    raw_removed: Vec<Vec<u8>>,
    minutes: Vec<(Vec<u8>, Vec<u8>)>,
}

fn bucket_of(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// `tag id ++ time`, the time as offset binary so negative times sort first.
fn key(id: u16, t: i64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&id.to_be_bytes());
    k[2..].copy_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
    k
}

fn key_time(k: &[u8]) -> Result<i64, SenseError> {
    let bytes: [u8; 8] = k
        .get(2..10)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SenseError::Corrupt("segment key".into()))?;
    Ok((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// `[version][count u32][time deltas u32 × n][values f64 × n][flags u8 × n]`, little-endian,
/// columns so a read copies runs instead of parsing records.
fn encode_segment(id: u16, samples: &[StoredSample]) -> (Vec<u8>, Vec<u8>) {
    let first = samples.first().map_or(0, |s| s.0);
    let n = samples.len();
    let mut out = Vec::with_capacity(5 + n * 13);
    out.push(SEGMENT_V1);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for s in samples {
        // Within one bucket: the delta is below BUCKET_MS.
        out.extend_from_slice(&((s.0 - first) as u32).to_le_bytes());
    }
    for s in samples {
        out.extend_from_slice(&s.1.to_le_bytes());
    }
    out.extend(samples.iter().map(|s| s.2 as u8));
    (key(id, first).to_vec(), out)
}

fn decode_segment(
    first: i64,
    bytes: &[u8],
    mut each: impl FnMut(i64, f64, Flag),
) -> Result<(), SenseError> {
    let corrupt = || SenseError::Corrupt(format!("segment at {first}"));
    if bytes.first() != Some(&SEGMENT_V1) {
        return Err(corrupt());
    }
    let n = u32::from_le_bytes(
        bytes
            .get(1..5)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let deltas = bytes.get(5..5 + 4 * n).ok_or_else(corrupt)?;
    let values = bytes.get(5 + 4 * n..5 + 12 * n).ok_or_else(corrupt)?;
    let flags = bytes.get(5 + 12 * n..5 + 13 * n).ok_or_else(corrupt)?;
    for ((d, v), f) in deltas
        .chunks_exact(4)
        .zip(values.chunks_exact(8))
        .zip(flags.iter())
    {
        let delta = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        let value = f64::from_le_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]);
        let flag = Flag::from_byte(*f).ok_or_else(corrupt)?;
        each(first + i64::from(delta), value, flag);
    }
    Ok(())
}

/// The newest sample stored for a tag.
fn last_sample(raw: &sled::Tree, id: u16) -> Result<Option<StoredSample>, SenseError> {
    let Some(entry) = raw.range(key(id, i64::MIN)..=key(id, i64::MAX)).next_back() else {
        return Ok(None);
    };
    let (k, v) = entry?;
    let mut last = None;
    decode_segment(key_time(&k)?, &v, |t, value, flag| {
        last = Some((t, value, flag))
    })?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<TagConfig> {
        ["temp", "speed"]
            .iter()
            .map(|name| {
                toml::from_str(&format!(
                    "name = \"{name}\"\nperiod_ms = 1000\nvalid_range = [-100.0, 1000.0]\nstuck_after = 0\n"
                ))
                .expect("valid tag")
            })
            .collect()
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("in range")
    }

    /// `n` samples per tag, one a second from `start_ms`, value = 10 + second index.
    fn batch(start_ms: i64, n: i64) -> Vec<Incoming> {
        let mut out = Vec::new();
        for i in 0..n {
            for (k, tag) in ["temp", "speed"].iter().enumerate() {
                out.push(Incoming {
                    tag: (*tag).into(),
                    at: at(start_ms + i * 1000),
                    value: Some(10.0 + (start_ms / 1000 + i) as f64 % 50.0 + k as f64),
                });
            }
        }
        out
    }

    const T0: i64 = 1_764_576_000_000; // 2025-12-01T08:00:00Z, on a bucket boundary

    #[test]
    fn samples_come_back_whole_across_buckets_tails_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = at(T0 + 86_400_000);
        let mut expected = Vec::new();
        {
            let store = SensorStore::open(dir.path(), &tags(), 60.0).expect("open");
            // Small batches (tails), then one long batch crossing several buckets.
            for b in 0..30 {
                let part = batch(T0 + b * 7_000, 7);
                assert_eq!(store.ingest_at(&part, now).expect("ingest").accepted, 14);
                expected.extend(part);
            }
            let long = batch(T0 + 210_000, 2_000);
            store.ingest_at(&long, now).expect("ingest");
            expected.extend(long);
        }
        // Reopened: the open bucket goes on, then closes and merges.
        let store = SensorStore::open(dir.path(), &tags(), 60.0).expect("reopen");
        assert_eq!(
            store.latest("temp").map(|l| l.0),
            Some(T0 + 210_000 + 1_999_000)
        );
        for b in 0..5 {
            let part = batch(T0 + 2_210_000 + b * 3_000, 3);
            store.ingest_at(&part, now).expect("ingest");
            expected.extend(part);
        }
        let more = batch(T0 + 2_225_000, 700);
        store.ingest_at(&more, now).expect("ingest");
        expected.extend(more);

        let want: Vec<(i64, f64)> = expected
            .iter()
            .filter(|s| s.tag == "temp")
            .map(|s| (s.at.timestamp_millis(), s.value.unwrap_or(f64::NAN)))
            .collect();
        let series = store
            .read("temp", at(T0), at(T0 + 86_400_000))
            .expect("read");
        let got: Vec<(i64, f64)> = series
            .t
            .iter()
            .copied()
            .zip(series.v.iter().copied())
            .collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
        // A page reads the range's first samples, across segments and buckets.
        for at_most in [0, 1, 5, 700, 2_500, usize::MAX] {
            let page = store
                .read_first("temp", at(T0), at(T0 + 86_400_000), at_most)
                .expect("read");
            let n = at_most.min(want.len());
            assert_eq!((page.t.len(), page.v.len(), page.flag.len()), (n, n, n));
            assert_eq!(page.t[..], series.t[..n], "{at_most}");
            assert_eq!(page.flag[..], series.flag[..n], "{at_most}");
        }
        let minutes = (store.read_minutes("temp", at(T0), at(T0 + 86_400_000))).expect("read");
        assert!(minutes.len() > 30, "{}", minutes.len());
        for at_most in [0, 1, 30] {
            let page = store
                .read_first_minutes("temp", at(T0), at(T0 + 86_400_000), at_most)
                .expect("read");
            assert_eq!(page, minutes[..at_most], "{at_most}");
        }
        // A window inside: exactly the samples in [from, to).
        let window = store
            .read("temp", at(T0 + 599_500), at(T0 + 1_200_000))
            .expect("read");
        assert_eq!(window.t.first(), Some(&(T0 + 600_000)));
        assert_eq!(window.len(), 600);
        // Closed buckets hold one segment each; only the open one may have tails.
        let id = store.id("temp").expect("known");
        let segments = store
            .inner
            .raw
            .range(key(id, T0)..key(id, T0 + 2_400_000))
            .count();
        assert_eq!(segments, 4, "buckets 0..4 merged into one segment each");
    }

    #[test]
    fn refuses_unknown_future_and_out_of_order_samples_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SensorStore::open(dir.path(), &tags(), 60.0).expect("open");
        let now = at(T0);
        let sample = |tag: &str, ms: i64, value: Option<f64>| Incoming {
            tag: tag.into(),
            at: at(ms),
            value,
        };
        let report = store
            .ingest_at(
                &[
                    sample("temp", T0 - 2000, Some(1.0)),
                    sample("nope", T0 - 2000, Some(1.0)),
                    sample("temp", T0 + 3_600_000, Some(1.0)),
                    sample("temp", T0 - 3000, Some(1.0)),
                    sample("temp", T0 - 1000, Some(f64::NAN)),
                    sample("temp", T0 - 500, Some(5000.0)),
                    sample("temp", T0 - 400, None),
                    sample("speed", T0 - 400, Some(3.0)),
                ],
                now,
            )
            .expect("ingest");
        assert_eq!(report.accepted, 5);
        let refused: Vec<(usize, &str)> = report
            .refused
            .iter()
            .map(|r| (r.index, r.field.as_str()))
            .collect();
        assert_eq!(refused, [(1, "tag"), (2, "timestamp"), (3, "timestamp")]);
        assert!(report.refused[1].message.contains("ahead"));
        assert!(report.refused[2].message.contains("time order"));
        assert_eq!(report.flagged.get(&Flag::NotANumber), Some(&1));
        assert_eq!(report.flagged.get(&Flag::OutOfRange), Some(&1));
        assert_eq!(report.flagged.get(&Flag::SourceLost), Some(&1));
        let series = store.read("temp", at(T0 - 10_000), at(T0)).expect("read");
        assert_eq!(
            series.flag,
            [
                Flag::Good,
                Flag::NotANumber,
                Flag::OutOfRange,
                Flag::SourceLost
            ]
        );
        assert!(matches!(
            store.read("nope", at(0), at(T0)),
            Err(SenseError::UnknownTag(_))
        ));
    }

    #[test]
    fn minute_aggregates_count_good_samples_only_and_outlive_pruned_raw_samples() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SensorStore::open(dir.path(), &tags(), 60.0).expect("open");
        let now = at(T0 + 86_400_000);
        let mut samples: Vec<Incoming> = (0..120)
            .map(|i| Incoming {
                tag: "temp".into(),
                at: at(T0 + i * 1000),
                value: Some(i as f64),
            })
            .collect();
        samples[5].value = Some(f64::NAN);
        samples[6].value = None;
        // Two batches, the first ending mid-minute.
        store.ingest_at(&samples[..30], now).expect("ingest");
        store.ingest_at(&samples[30..], now).expect("ingest");
        let minutes = store
            .read_minutes("temp", at(T0), at(T0 + 120_000))
            .expect("read");
        assert_eq!(minutes.len(), 2);
        let first = minutes[0];
        assert_eq!((first.count, first.bad), (58, 2));
        assert_eq!((first.min, first.max), (Some(0.0), Some(59.0)));
        let mean = (0..60).filter(|i| *i != 5 && *i != 6).sum::<i64>() as f64 / 58.0;
        assert!((first.mean.expect("good samples") - mean).abs() < 1e-12);
        assert_eq!(minutes[1].count, 60);

        let (segments, aggregates) = store.prune(at(T0 + 1_200_000), at(T0)).expect("prune");
        // The bucket was left open: its two tails go.
        assert_eq!((segments, aggregates), (2, 0));
        assert!(
            store
                .read("temp", at(T0), at(T0 + 120_000))
                .expect("read")
                .is_empty()
        );
        assert_eq!(
            store
                .read_minutes("temp", at(T0), at(T0 + 120_000))
                .expect("read")
                .len(),
            2
        );
    }
}
