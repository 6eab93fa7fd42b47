//! Production counts per minute and work order: the input of every KPI.
//!
//! A month at 120 parts/min is 5 million inspection records: far too many to re-read from the
//! journal for each question. [`run_production_counter`] follows the journal instead (as the
//! MQTT publisher does) and folds inspection and label records into one [`Counts`] per
//! (minute of capture, work order), kept in its own sled database, `<data_dir>/analysis`:
//!
//! - tree `minutes`: minute (big-endian, sign bit flipped so it sorts) ++ work-order id →
//!   [`Counts`], binary (see [`encode`]); a range of minutes is one contiguous scan;
//! - tree `meta`: the journal cursor (the last sequence number folded in) and the record
//!   store's instance id.
//!
//! **Exactly once.** The counts a page of records produced and the cursor past that page are
//! written in one sled transaction, so a restart or a kill -9 finds both or neither: nothing
//! is counted twice or lost. Deleting the database rebuilds it from the oldest record kept; a
//! record store with another instance id (a new data folder) starts the counts afresh.
//!
//! **Labels.** An engineer's label can say a part the model passed was defective, or name
//! another class. The counter then moves the part between classes of its own bucket (a part
//! never changes minute or work order). It needs the part's state before the label, and
//! recomputes it instead of keeping an index of its own: the record store already indexes the
//! inspection (the label's `supersedes`) and the labels of each part, and labels are rare next
//! to parts. A 5-million-entry part index would cost more disk than every count together, and
//! recomputing gives the same answer on a rebuild as it did live (only labels *before* this
//! one are looked at). A label whose inspection was archived changes nothing (logged).
//!
//! What a part counts as (see [`Judgement`]):
//! - `passed`, `rejected_*`: what happened at the gate (its disposition); labels never change it.
//! - defective, in `defects` under its class: the latest label says fail (or error); without a
//!   label, the gate rejected it. The class is the label's, else the model's `defect_class`,
//!   else [`UNCLASSIFIED`].
//! - `first_pass_good`: passed at the gate and no label says otherwise (ISO 22400 GP: good
//!   the first time through, without rework).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sled::Transactional;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AnalyseError;
use crate::part::{Disposition, Verdict};
use crate::record::{Filter, InspectionRecord, LabelRecord, Record, RecordBody, RecordKind, Store};

/// The class of a defective part that neither a label nor the model classified.
pub const UNCLASSIFIED: &str = "unclassified";

/// Records folded per transaction at most.
const PAGE: usize = 10_000;

const CURSOR_KEY: &[u8] = b"cursor";
const INSTANCE_KEY: &[u8] = b"instance_id";
const ENCODING_VERSION: u8 = 1;

/// What one minute of one work order produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Parts recorded (ISO 22400 PQ, and IP: every part is inspected).
    pub inspected: u64,
    pub passed: u64,
    /// Rejected because the model failed the part.
    pub rejected_failed: u64,
    /// Rejected because the model could not inspect it.
    pub rejected_error: u64,
    /// Rejected by policy: no verdict by the deadline.
    pub rejected_no_verdict: u64,
    /// Passed, and no label says otherwise (ISO 22400 GP).
    pub first_pass_good: u64,
    /// Milliseconds into the minute of the first and last part's capture (both 0 when empty):
    /// a stop between two minutes is measured to the millisecond.
    pub first_ms: u16,
    pub last_ms: u16,
    /// Defective parts by class, sorted by class, no zero counts.
    pub defects: Vec<(String, u64)>,
}

impl Counts {
    /// Parts rejected at the gate, whatever the reason (ISO 22400 SQ).
    pub fn rejected(&self) -> u64 {
        self.rejected_failed + self.rejected_error + self.rejected_no_verdict
    }

    /// Adds another bucket's counts (a later minute's, or another work order's of the same
    /// minute: the first and last part then span both).
    pub fn add(&mut self, other: &Counts) {
        if other.inspected > 0 {
            if self.inspected == 0 {
                (self.first_ms, self.last_ms) = (other.first_ms, other.last_ms);
            } else {
                self.first_ms = self.first_ms.min(other.first_ms);
                self.last_ms = self.last_ms.max(other.last_ms);
            }
        }
        self.inspected += other.inspected;
        self.passed += other.passed;
        self.rejected_failed += other.rejected_failed;
        self.rejected_error += other.rejected_error;
        self.rejected_no_verdict += other.rejected_no_verdict;
        self.first_pass_good += other.first_pass_good;
        for (class, count) in &other.defects {
            match self
                .defects
                .binary_search_by(|(c, _)| c.as_str().cmp(class))
            {
                Ok(at) => self.defects[at].1 += count,
                Err(at) => self.defects.insert(at, (class.clone(), *count)),
            }
        }
    }
}

/// The counts of one minute (UTC minutes since the Unix epoch) and work order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteBucket {
    pub minute: i64,
    /// `None`: parts made while no work order ran.
    pub work_order: Option<String>,
    pub counts: Counts,
}

/// How a part counts: its defect class if defective, and whether it was good first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub defect: Option<String>,
    pub first_pass_good: bool,
}

/// How a part counts, given its inspection and its latest label (if any).
pub fn judge(inspection: &InspectionRecord, label: Option<&LabelRecord>) -> Judgement {
    let passed = inspection.disposition == Disposition::Pass;
    let defective = match label {
        Some(label) => label.verdict != Verdict::Pass,
        None => !passed,
    };
    let defect = defective.then(|| {
        label
            .and_then(|l| l.defect_class.clone())
            .or_else(|| inspection.defect_class.clone())
            .unwrap_or_else(|| UNCLASSIFIED.to_owned())
    });
    Judgement {
        defect,
        first_pass_good: passed && !defective,
    }
}

/// The durable production counts. Cheap to clone.
#[derive(Clone)]
pub struct ProductionCounts {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    minutes: sled::Tree,
    meta: sled::Tree,
    /// The cursor, for waiters (tests, the shutdown grace).
    cursor_tx: watch::Sender<u64>,
}

impl std::fmt::Debug for ProductionCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductionCounts")
            .field("cursor", &self.cursor())
            .finish()
    }
}

/// Signed changes to one bucket from one page of records.
#[derive(Debug, Default)]
struct Delta {
    inspected: i64,
    passed: i64,
    rejected_failed: i64,
    rejected_error: i64,
    rejected_no_verdict: i64,
    first_pass_good: i64,
    first_ms: Option<u16>,
    last_ms: Option<u16>,
    defects: BTreeMap<String, i64>,
}

impl Delta {
    fn count(&mut self, judgement: &Judgement, sign: i64) {
        if judgement.first_pass_good {
            self.first_pass_good += sign;
        }
        if let Some(class) = &judgement.defect {
            *self.defects.entry(class.clone()).or_default() += sign;
        }
    }

    fn apply(&self, mut counts: Counts) -> Counts {
        let add = |value: &mut u64, delta: i64| *value = value.saturating_add_signed(delta);
        if let (Some(first), Some(last)) = (self.first_ms, self.last_ms) {
            if counts.inspected == 0 {
                (counts.first_ms, counts.last_ms) = (first, last);
            } else {
                counts.first_ms = counts.first_ms.min(first);
                counts.last_ms = counts.last_ms.max(last);
            }
        }
        add(&mut counts.inspected, self.inspected);
        add(&mut counts.passed, self.passed);
        add(&mut counts.rejected_failed, self.rejected_failed);
        add(&mut counts.rejected_error, self.rejected_error);
        add(&mut counts.rejected_no_verdict, self.rejected_no_verdict);
        add(&mut counts.first_pass_good, self.first_pass_good);
        let mut defects: BTreeMap<String, u64> = counts.defects.into_iter().collect();
        for (class, delta) in &self.defects {
            let count = defects.entry(class.clone()).or_default();
            add(count, *delta);
        }
        counts.defects = defects.into_iter().filter(|(_, n)| *n > 0).collect();
        counts
    }
}

impl ProductionCounts {
    /// Opens (or creates) the counts in `<data_dir>/analysis`.
    pub fn open(data_dir: &Path) -> Result<ProductionCounts, AnalyseError> {
        let path = data_dir.join("analysis");
        let db = open_db(&path)?;
        let minutes = db.open_tree("minutes")?;
        let meta = db.open_tree("meta")?;
        let cursor = meta.get(CURSOR_KEY)?.map_or(0, |v| be_u64(&v));
        let (cursor_tx, _) = watch::channel(cursor);
        Ok(ProductionCounts {
            inner: Arc::new(Inner {
                db,
                minutes,
                meta,
                cursor_tx,
            }),
        })
    }

    /// A tree of its own in the analysis database, for an analysis that keeps results beside
    /// the counts (the schedule's impact events). sled opens a database once per process, so
    /// they share this handle.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, AnalyseError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// The last journal sequence number folded into the counts (0: none).
    pub fn cursor(&self) -> u64 {
        *self.inner.cursor_tx.borrow()
    }

    /// Wakes whenever the cursor moves; the value is [`ProductionCounts::cursor`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.cursor_tx.subscribe()
    }

    /// Every bucket of minutes `[from, to)` (UTC minutes since the epoch), by minute then
    /// work order (no work order first).
    pub fn buckets(&self, from: i64, to: i64) -> Result<Vec<MinuteBucket>, AnalyseError> {
        let mut buckets = Vec::new();
        if from >= to {
            return Ok(buckets);
        }
        for entry in self.inner.minutes.range(minute_key(from)..minute_key(to)) {
            let (key, value) = entry?;
            let (minute, work_order) = split_key(&key);
            buckets.push(MinuteBucket {
                minute,
                work_order,
                counts: decode(minute, &value)?,
            });
        }
        Ok(buckets)
    }

    /// Replaces buckets as given, outside the journal. For benchmarks and tests only: the
    /// counter never calls it, and it leaves the cursor alone.
    #[doc(hidden)]
    pub fn write_buckets(&self, buckets: &[MinuteBucket]) -> Result<(), AnalyseError> {
        let mut batch = sled::Batch::default();
        for bucket in buckets {
            batch.insert(
                bucket_key(bucket.minute, bucket.work_order.as_deref()),
                encode(&bucket.counts),
            );
        }
        self.inner.minutes.apply_batch(batch)?;
        Ok(())
    }

    /// Folds every durable record past the cursor into the counts, a page per transaction;
    /// returns the number of inspection and label records folded. Blocking. Stops early (with
    /// what it folded durable) when `stop` fires.
    pub fn catch_up(&self, store: &Store, stop: &CancellationToken) -> Result<u64, AnalyseError> {
        self.check_instance(store)?;
        let filter = Filter {
            kinds: vec![RecordKind::Inspection, RecordKind::Label],
            ..Filter::default()
        };
        let mut folded = 0;
        while !stop.is_cancelled() {
            let cursor = self.cursor();
            if cursor >= store.last_seq() {
                break;
            }
            let mut from = cursor + 1;
            if from < store.first_seq() {
                tracing::warn!(
                    from,
                    first_seq = store.first_seq(),
                    "records were archived before they were counted; production counts start at the oldest record kept"
                );
                from = store.first_seq();
            }
            let page = store.pull(from, PAGE, &filter)?;
            let mut deltas: BTreeMap<Vec<u8>, Delta> = BTreeMap::new();
            for raw in &page.records {
                fold(store, &raw.decode()?, &mut deltas)?;
            }
            self.commit(store.instance_id(), page.next_seq - 1, &deltas)?;
            folded += page.records.len() as u64;
        }
        Ok(folded)
    }

    /// A store with another history (a new data folder) starts the counts afresh.
    fn check_instance(&self, store: &Store) -> Result<(), AnalyseError> {
        let inner = &self.inner;
        let Some(counted) = inner.meta.get(INSTANCE_KEY)? else {
            return Ok(());
        };
        if counted.as_ref() == store.instance_id().as_bytes() {
            return Ok(());
        }
        tracing::warn!(
            counted = %String::from_utf8_lossy(&counted),
            store = store.instance_id(),
            "the record store has a new history; production counts start again"
        );
        // Buckets first: a crash half-way leaves the old instance id, so this runs again.
        inner.minutes.clear()?;
        inner.db.flush()?;
        inner.meta.remove(CURSOR_KEY)?;
        inner.meta.remove(INSTANCE_KEY)?;
        inner.db.flush()?;
        inner.cursor_tx.send_replace(0);
        Ok(())
    }

    /// Writes a page's counts and the cursor past it in one transaction, then flushes.
    fn commit(
        &self,
        instance_id: &str,
        cursor: u64,
        deltas: &BTreeMap<Vec<u8>, Delta>,
    ) -> Result<(), AnalyseError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let inner = &self.inner;
        (&inner.minutes, &inner.meta)
            .transaction(|(minutes, meta)| {
                for (key, delta) in deltas {
                    let (minute, _) = split_key(key);
                    let counts = match minutes.get(key)? {
                        Some(value) => {
                            decode(minute, &value).map_err(ConflictableTransactionError::Abort)?
                        }
                        None => Counts::default(),
                    };
                    minutes.insert(key.as_slice(), encode(&delta.apply(counts)))?;
                }
                meta.insert(CURSOR_KEY, &cursor.to_be_bytes())?;
                meta.insert(INSTANCE_KEY, instance_id.as_bytes())?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => AnalyseError::Sled(e),
            })?;
        inner.db.flush()?;
        inner.cursor_tx.send_replace(cursor);
        Ok(())
    }
}

/// Adds one record's effect to the page's deltas.
fn fold(
    store: &Store,
    record: &Record,
    deltas: &mut BTreeMap<Vec<u8>, Delta>,
) -> Result<(), AnalyseError> {
    match &record.body {
        RecordBody::Inspection(inspection) => {
            let (key, ms) = inspection_key(inspection);
            let delta = deltas.entry(key).or_default();
            delta.inspected += 1;
            match inspection.disposition {
                Disposition::Pass => delta.passed += 1,
                Disposition::RejectFailed => delta.rejected_failed += 1,
                Disposition::RejectError => delta.rejected_error += 1,
                Disposition::RejectNoVerdict => delta.rejected_no_verdict += 1,
            }
            delta.first_ms = Some(delta.first_ms.map_or(ms, |f| f.min(ms)));
            delta.last_ms = Some(delta.last_ms.map_or(ms, |l| l.max(ms)));
            delta.count(&judge(inspection, None), 1);
        }
        RecordBody::Label(label) => {
            let inspection = match store.record(label.supersedes)? {
                Some(Record {
                    body: RecordBody::Inspection(inspection),
                    ..
                }) if inspection.part_id == label.part_id => inspection,
                _ => {
                    tracing::warn!(
                        seq = record.seq,
                        part_id = label.part_id,
                        supersedes = label.supersedes,
                        "label of a part whose inspection is not kept; production counts unchanged"
                    );
                    return Ok(());
                }
            };
            // The part's state before this label: its inspection and the label before this one.
            let earlier = store
                .labels(label.part_id)?
                .into_iter()
                .filter(|r| r.seq < record.seq)
                .filter_map(|r| match r.body {
                    RecordBody::Label(l) => Some(l),
                    _ => None,
                })
                .next_back();
            let before = judge(&inspection, earlier.as_ref());
            let after = judge(&inspection, Some(label));
            if before != after {
                let (key, _) = inspection_key(&inspection);
                let delta = deltas.entry(key).or_default();
                delta.count(&before, -1);
                delta.count(&after, 1);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Follows the journal until `cancel`, folding every new inspection and label into `counts`
/// as soon as it is durable. Failures (a store being reopened, a full disk) are logged and
/// retried with back-off; nothing is skipped. Spawn it beside the recorder.
pub async fn run_production_counter(
    store: Store,
    counts: ProductionCounts,
    cancel: CancellationToken,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_BACKOFF;
    let mut durable = store.subscribe();
    loop {
        durable.borrow_and_update();
        let (s, c, stop) = (store.clone(), counts.clone(), cancel.clone());
        let round = tokio::task::spawn_blocking(move || c.catch_up(&s, &stop)).await;
        let failed = match round {
            Ok(Ok(_)) => {
                backoff = FIRST_BACKOFF;
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, retry_in = ?backoff, "production counting interrupted");
                true
            }
            Err(error) => {
                tracing::error!(%error, retry_in = ?backoff, "production counter task failed");
                true
            }
        };
        if failed {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The bucket key of a part and the milliseconds into the minute of its capture.
fn inspection_key(inspection: &InspectionRecord) -> (Vec<u8>, u16) {
    let ms = inspection.captured_at.timestamp_millis();
    (
        bucket_key(ms.div_euclid(60_000), inspection.work_order.as_deref()),
        ms.rem_euclid(60_000) as u16,
    )
}

fn minute_key(minute: i64) -> [u8; 8] {
    ((minute as u64) ^ (1 << 63)).to_be_bytes()
}

fn bucket_key(minute: i64, work_order: Option<&str>) -> Vec<u8> {
    let mut key = minute_key(minute).to_vec();
    key.extend_from_slice(work_order.unwrap_or_default().as_bytes());
    key
}

fn split_key(key: &[u8]) -> (i64, Option<String>) {
    let minute = (be_u64(&key[..key.len().min(8)]) ^ (1 << 63)) as i64;
    let work_order = key
        .get(8..)
        .filter(|rest| !rest.is_empty())
        .map(|rest| String::from_utf8_lossy(rest).into_owned());
    (minute, work_order)
}

/// `[version][inspected, passed, rejected_failed, rejected_error, rejected_no_verdict,
/// first_pass_good: u64 BE][first_ms, last_ms: u16 BE][classes: u16 BE] {[len: u16 BE][class]
/// [count: u64 BE]}`: a month of buckets decodes in milliseconds, which JSON would not.
pub fn encode(counts: &Counts) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(55 + counts.defects.len() * 24);
    bytes.push(ENCODING_VERSION);
    for value in [
        counts.inspected,
        counts.passed,
        counts.rejected_failed,
        counts.rejected_error,
        counts.rejected_no_verdict,
        counts.first_pass_good,
    ] {
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    bytes.extend_from_slice(&counts.first_ms.to_be_bytes());
    bytes.extend_from_slice(&counts.last_ms.to_be_bytes());
    let classes = counts.defects.len().min(usize::from(u16::MAX));
    bytes.extend_from_slice(&(classes as u16).to_be_bytes());
    for (class, count) in counts.defects.iter().take(classes) {
        let name = &class.as_bytes()[..class.len().min(usize::from(u16::MAX))];
        bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    bytes
}

/// The inverse of [`encode`].
pub fn decode(minute: i64, bytes: &[u8]) -> Result<Counts, AnalyseError> {
    let corrupt = |why: &str| AnalyseError::Corrupt {
        minute,
        why: why.to_owned(),
    };
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], AnalyseError> {
        let slice = bytes.get(at..at + n).ok_or_else(|| corrupt("truncated"))?;
        at += n;
        Ok(slice)
    };
    if take(1)? != [ENCODING_VERSION] {
        return Err(corrupt("unknown encoding version"));
    }
    let mut numbers = [0u64; 6];
    for number in &mut numbers {
        *number = be_u64(take(8)?);
    }
    let first_ms = be_u64(take(2)?) as u16;
    let last_ms = be_u64(take(2)?) as u16;
    let classes = be_u64(take(2)?) as usize;
    let mut defects = Vec::with_capacity(classes);
    for _ in 0..classes {
        let len = be_u64(take(2)?) as usize;
        let class = String::from_utf8(take(len)?.to_vec())
            .map_err(|_| corrupt("a class name is not UTF-8"))?;
        defects.push((class, be_u64(take(8)?)));
    }
    let [
        inspected,
        passed,
        rejected_failed,
        rejected_error,
        rejected_no_verdict,
        first_pass_good,
    ] = numbers;
    Ok(Counts {
        inspected,
        passed,
        rejected_failed,
        rejected_error,
        rejected_no_verdict,
        first_pass_good,
        first_ms,
        last_ms,
        defects,
    })
}

/// A big-endian unsigned number of up to 8 bytes.
fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b))
}

/// Opens the sled database as the record store opens its own (`record::open_sled`).
fn open_db(path: &Path) -> Result<sled::Db, AnalyseError> {
    crate::record::open_sled(path).map_err(|source| AnalyseError::Open {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn inspection(
        part_id: u64,
        at: &str,
        disposition: Disposition,
        class: Option<&str>,
        work_order: Option<&str>,
    ) -> RecordBody {
        let at: DateTime<Utc> = at.parse().expect("time");
        let RecordBody::Inspection(mut inspection) =
            crate::record::testing::judged_inspection(part_id, at, class)
        else {
            unreachable!("an inspection")
        };
        inspection.work_order = work_order.map(str::to_owned);
        inspection.verdict = Some(match disposition {
            Disposition::Pass => Verdict::Pass,
            Disposition::RejectFailed => Verdict::Fail,
            _ => Verdict::Error,
        });
        inspection.disposition = disposition;
        inspection.rejected_by_policy = disposition == Disposition::RejectNoVerdict;
        RecordBody::Inspection(inspection)
    }

    fn label(part_id: u64, supersedes: u64, verdict: Verdict, class: Option<&str>) -> RecordBody {
        RecordBody::Label(LabelRecord {
            part_id,
            supersedes,
            verdict,
            defect_class: class.map(str::to_owned),
            note: None,
            by: "eng-1".into(),
            image: None,
            regions: Vec::new(),
        })
    }

    fn minute(at: &str) -> i64 {
        let at: DateTime<Utc> = at.parse().expect("time");
        at.timestamp().div_euclid(60)
    }

    fn all(counts: &ProductionCounts) -> Vec<MinuteBucket> {
        counts.buckets(i64::MIN / 2, i64::MAX / 2).expect("buckets")
    }

    fn defects(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
    }

    /// The first journal: five parts over two minutes and two work orders.
    fn first_parts() -> Vec<RecordBody> {
        use Disposition::*;
        vec![
            inspection(1, "2024-05-06T10:00:01.250Z", Pass, None, Some("WO-1")),
            inspection(
                2,
                "2024-05-06T10:00:30Z",
                RejectFailed,
                Some("scratch"),
                Some("WO-1"),
            ),
            inspection(
                3,
                "2024-05-06T10:00:59.900Z",
                RejectError,
                None,
                Some("WO-1"),
            ),
            inspection(4, "2024-05-06T10:01:10Z", RejectNoVerdict, None, None),
            inspection(5, "2024-05-06T10:01:20Z", Pass, None, None),
        ]
    }

    #[test]
    fn inspections_fold_into_minute_buckets_by_work_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        let counts = ProductionCounts::open(dir.path()).expect("counts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        runtime
            .block_on(store.append_all(first_parts()))
            .expect("append");
        let folded = counts
            .catch_up(&store, &CancellationToken::new())
            .expect("catch up");
        assert_eq!(folded, 5);
        assert_eq!(counts.cursor(), 5);
        let ten = minute("2024-05-06T10:00:00Z");
        assert_eq!(
            all(&counts),
            [
                MinuteBucket {
                    minute: ten,
                    work_order: Some("WO-1".into()),
                    counts: Counts {
                        inspected: 3,
                        passed: 1,
                        rejected_failed: 1,
                        rejected_error: 1,
                        rejected_no_verdict: 0,
                        first_pass_good: 1,
                        first_ms: 1_250,
                        last_ms: 59_900,
                        defects: defects(&[("scratch", 1), (UNCLASSIFIED, 1)]),
                    },
                },
                MinuteBucket {
                    minute: ten + 1,
                    work_order: None,
                    counts: Counts {
                        inspected: 2,
                        passed: 1,
                        rejected_failed: 0,
                        rejected_error: 0,
                        rejected_no_verdict: 1,
                        first_pass_good: 1,
                        first_ms: 10_000,
                        last_ms: 20_000,
                        defects: defects(&[(UNCLASSIFIED, 1)]),
                    },
                },
            ]
        );
        // Nothing new: nothing counted again.
        assert_eq!(
            counts
                .catch_up(&store, &CancellationToken::new())
                .expect("again"),
            0
        );
        assert_eq!(all(&counts)[0].counts.inspected, 3);
    }

    #[test]
    fn a_later_label_moves_its_part_between_classes_and_out_of_first_pass_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        let counts = ProductionCounts::open(dir.path()).expect("counts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let append = |body| runtime.block_on(store.append(body)).expect("append").seq;
        let catch_up = || {
            counts
                .catch_up(&store, &CancellationToken::new())
                .expect("catch up");
            all(&counts).remove(0).counts
        };
        let at = "2024-05-06T10:00:01Z";
        let passed = append(inspection(1, at, Disposition::Pass, None, None));
        let failed = append(inspection(
            2,
            at,
            Disposition::RejectFailed,
            Some("dent"),
            None,
        ));
        let c = catch_up();
        assert_eq!(
            (c.first_pass_good, c.defects.clone()),
            (1, defects(&[("dent", 1)]))
        );
        // The passed part was an escape: a scratch.
        append(label(1, passed, Verdict::Fail, Some("scratch")));
        let c = catch_up();
        assert_eq!(
            (c.first_pass_good, c.defects.clone()),
            (0, defects(&[("dent", 1), ("scratch", 1)]))
        );
        // Relabelled a dent; the failed part is relabelled without a class (keeps the model's).
        append(label(1, passed, Verdict::Fail, Some("dent")));
        append(label(2, failed, Verdict::Fail, None));
        let c = catch_up();
        assert_eq!(
            (c.first_pass_good, c.defects.clone()),
            (0, defects(&[("dent", 2)]))
        );
        // Both good after all: the passed one is first-pass good again, the rejected one is not
        // (it was rejected at the gate), and neither is a defect.
        append(label(1, passed, Verdict::Pass, None));
        append(label(2, failed, Verdict::Pass, None));
        let c = catch_up();
        assert_eq!((c.first_pass_good, c.defects.clone()), (1, Vec::new()));
        // What happened at the gate never changes.
        assert_eq!((c.inspected, c.passed, c.rejected_failed), (2, 1, 1));
        // A label of a part whose inspection is not in the journal changes nothing.
        append(label(99, 1_000, Verdict::Fail, Some("crack")));
        assert_eq!(catch_up().defects, Vec::new());
    }

    #[test]
    fn counts_survive_a_reopen_exactly_once_and_a_rebuild_gives_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let stop = CancellationToken::new();
        let seqs: Vec<u64> = runtime
            .block_on(store.append_all(first_parts()))
            .expect("append")
            .iter()
            .map(|r| r.seq)
            .collect();
        {
            let counts = ProductionCounts::open(dir.path()).expect("counts");
            counts.catch_up(&store, &stop).expect("catch up");
        }
        // Reopened (as after a restart or a kill -9: the cursor is in the same transaction as
        // the counts), it goes on from its cursor.
        let counts = ProductionCounts::open(dir.path()).expect("reopen");
        assert_eq!(counts.cursor(), 5);
        runtime
            .block_on(store.append_all(vec![
                label(1, seqs[0], Verdict::Fail, Some("scratch")),
                inspection(6, "2024-05-06T10:01:30Z", Disposition::Pass, None, None),
                label(6, 7, Verdict::Fail, None),
            ]))
            .expect("append");
        assert_eq!(counts.catch_up(&store, &stop).expect("catch up"), 3);
        let incremental = all(&counts);
        assert_eq!(incremental[0].counts.inspected, 3);
        assert_eq!(incremental[1].counts.inspected, 3);
        assert_eq!(incremental[0].counts.first_pass_good, 0);
        assert_eq!(incremental[1].counts.defects, defects(&[(UNCLASSIFIED, 2)]));
        drop(counts);
        // The analysis database deleted: rebuilt from the journal, from seq 1, in one go.
        std::fs::remove_dir_all(dir.path().join("analysis")).expect("delete");
        let rebuilt = ProductionCounts::open(dir.path()).expect("fresh");
        assert_eq!(rebuilt.cursor(), 0);
        rebuilt.catch_up(&store, &stop).expect("rebuild");
        assert_eq!(all(&rebuilt), incremental);
        assert_eq!(rebuilt.cursor(), store.last_seq());
    }

    #[test]
    fn a_store_with_a_new_history_starts_the_counts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let stop = CancellationToken::new();
        let counts = ProductionCounts::open(dir.path()).expect("counts");
        {
            let old = Store::open(&dir.path().join("old"), "s").expect("store");
            runtime
                .block_on(old.append_all(first_parts()))
                .expect("append");
            counts.catch_up(&old, &stop).expect("catch up");
        }
        let new = Store::open(&dir.path().join("new"), "s").expect("store");
        runtime
            .block_on(new.append(inspection(
                1,
                "2024-05-07T00:00:00Z",
                Disposition::Pass,
                None,
                None,
            )))
            .expect("append");
        counts.catch_up(&new, &stop).expect("catch up");
        let buckets = all(&counts);
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0].minute, minute("2024-05-07T00:00:00Z"));
        assert_eq!(counts.cursor(), 1);
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_damage() {
        let counts = Counts {
            inspected: 120,
            passed: 100,
            rejected_failed: 15,
            rejected_error: 3,
            rejected_no_verdict: 2,
            first_pass_good: 99,
            first_ms: 12,
            last_ms: 59_999,
            defects: defects(&[("dent", 4), ("ünïcode", 16)]),
        };
        let bytes = encode(&counts);
        assert_eq!(decode(7, &bytes).expect("decodes"), counts);
        assert!(matches!(
            decode(7, &bytes[..bytes.len() - 1]),
            Err(AnalyseError::Corrupt { minute: 7, .. })
        ));
        let key = bucket_key(-3, Some("WO-1"));
        assert_eq!(split_key(&key), (-3, Some("WO-1".into())));
        assert!(minute_key(-1) < minute_key(0) && minute_key(0) < minute_key(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_counter_task_follows_the_journal_as_records_become_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        let counts = ProductionCounts::open(dir.path()).expect("counts");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_production_counter(
            store.clone(),
            counts.clone(),
            cancel.clone(),
        ));
        let mut cursor = counts.subscribe();
        for batch in [first_parts(), first_parts()] {
            store.append_all(batch).await.expect("append");
            let want = store.last_seq();
            tokio::time::timeout(Duration::from_secs(20), cursor.wait_for(|c| *c >= want))
                .await
                .expect("counted before the deadline")
                .expect("counter alive");
        }
        let buckets = all(&counts);
        assert_eq!(buckets.iter().map(|b| b.counts.inspected).sum::<u64>(), 10);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("stops when cancelled")
            .expect("no panic");
    }
}
