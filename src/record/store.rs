//! [`Store`]: the journal on sled, its indexes, and the station's bookkeeping.
//!
//! Trees (schema version 2, see `schema.rs`):
//! - `journal`: seq (big-endian) → encoded [`Record`];
//! - `inspection_seq`: part id → seq of its inspection record;
//! - `kind_seq`: kind byte ++ seq → (), to list model changes, work orders, audit entries;
//! - `label_seq`: part id ++ seq → (), the labels of a part;
//! - `meta`: schema version, instance id, part-id reservation, first sequence, acknowledgements;
//! - `shadow`: part id → the shadow model's verdict (archived with the part's inspection);
//! - `image_log`: counter → digest ++ size, the images in the order they were last saved;
//! - `image_index`: digest → its key in `image_log`, so a re-save finds its old place.
//!
//! Writers take one lock, give the next sequence numbers, write records and indexes in one sled
//! transaction and flush. Only then does `durable` move past them; readers never look past
//! `durable`, so nothing is reported before it is on disk. A failed flush takes the records
//! back before anyone could see them, and their sequence numbers are given again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sled::Transactional;
use tokio::sync::{Mutex, watch};

use super::RecordError;
use super::images::ImageStore;
use super::inspection::InspectionRecord;
use super::journal::{
    Filter, ModelEvent, RawRecord, Record, RecordBody, RecordKind, WorkOrder, WorkOrderAction,
    encode,
};
use super::schema;
use super::{ShadowSummary, ShadowVerdict};
use crate::part::Verdict;

/// The station's durable record store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; `None` while it is being reopened after an I/O error.
    handles: std::sync::RwLock<Option<Arc<Handles>>>,
    db_path: PathBuf,
    /// Set when a write failed: sled keeps the first I/O error and fails every later write,
    /// so the database must be reopened (see [`Store::recover`]).
    broken: std::sync::atomic::AtomicBool,
    station: String,
    instance_id: String,
    images: ImageStore,
    /// The last sequence number on disk; readers see nothing past it.
    durable: AtomicU64,
    /// Sequence numbers below this were pruned (archived).
    first_seq: AtomicU64,
    /// Tells waiting readers (live stream, publishers) that `durable` moved.
    durable_tx: watch::Sender<u64>,
    /// Held while records are written and flushed; holds the next sequence number.
    writer: Mutex<u64>,
    /// Part ids below this are reserved (durably) for parts already given an id.
    reserved_until: AtomicU64,
    /// Every work order and when it ran, for attributing parts.
    work_orders: std::sync::RwLock<WorkOrderBook>,
    /// Images are kept under this many bytes (`u64::MAX`: no budget).
    image_budget: AtomicU64,
    images_evicted: AtomicU64,
    /// One image saved at a time: each takes the next key of the image log and adds to the
    /// byte count (the recorder and a backtest may save at once).
    image_writes: std::sync::Mutex<()>,
    /// Held by [`Store::append_labels`] from reading parts' latest results to writing the
    /// labels that supersede them.
    label_writes: Mutex<()>,
}

/// An open sled database and its trees.
struct Handles {
    db: sled::Db,
    trees: Trees,
}

#[derive(Clone)]
pub(crate) struct Trees {
    pub journal: sled::Tree,
    pub inspection_seq: sled::Tree,
    pub kind_seq: sled::Tree,
    pub label_seq: sled::Tree,
    pub meta: sled::Tree,
    pub shadow: sled::Tree,
    /// Images in the order they were last saved, oldest (first evicted) first: counter →
    /// digest (32 bytes) ++ size (8 bytes). One entry per image kept.
    pub image_log: sled::Tree,
    /// Digest (32 bytes) → its key in `image_log`: a re-saved image moves to the end of the
    /// log, and this finds its old entry without a scan. Written in the same transaction as
    /// the log (see [`Store::save_image`]); entries the log gained before the index existed
    /// are indexed at open (`index_image_log`).
    pub image_index: sled::Tree,
    /// Archived records the station's state is rebuilt from (model changes, work orders):
    /// seq → encoded record, still listed in `kind_seq`.
    pub retained: sled::Tree,
}

impl Trees {
    pub(crate) fn open(db: &sled::Db) -> Result<Trees, sled::Error> {
        Ok(Trees {
            journal: db.open_tree("journal")?,
            inspection_seq: db.open_tree("inspection_seq")?,
            kind_seq: db.open_tree("kind_seq")?,
            label_seq: db.open_tree("label_seq")?,
            meta: db.open_tree("meta")?,
            shadow: db.open_tree("shadow")?,
            image_log: db.open_tree("image_log")?,
            image_index: db.open_tree("image_index")?,
            retained: db.open_tree("retained")?,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("station", &self.inner.station)
            .field("instance_id", &self.inner.instance_id)
            .field("durable", &self.last_seq())
            .finish()
    }
}

/// A page of a pull.
#[derive(Debug)]
pub struct Page {
    /// The records, oldest first.
    pub records: Vec<RawRecord>,
    /// Pass as `from` for the next page.
    pub next_seq: u64,
    /// Whether records past this page exist now.
    pub more: bool,
    /// The oldest sequence number still kept.
    pub first_seq: u64,
    /// The newest durable sequence number.
    pub last_seq: u64,
}

/// At most this many records are looked at for one filtered page, so a sparse filter answers
/// quickly; the page then says `more` and the client goes on from `next_seq`.
const MAX_SCAN: usize = 50_000;

impl Store {
    /// Opens (or creates) the store in `data_dir` for `station`, migrating an older schema.
    pub fn open(data_dir: &Path, station: &str) -> Result<Store, RecordError> {
        let db_path = data_dir.join("records");
        let db = open_db(&db_path)?;
        let opened = schema::open(&db, &db_path)?;
        let trees = opened.trees.clone();
        index_image_log(&trees)?;
        let images = ImageStore::open(&data_dir.join("images"))?;
        let (first_seq, last) = extent(&trees)?;
        let reserved_until = match trees.meta.get(RESERVED_KEY)? {
            Some(bytes) => be_u64(&bytes),
            None => 0,
        };
        let (durable_tx, _) = watch::channel(last);
        let store = Store {
            inner: Arc::new(Inner {
                handles: std::sync::RwLock::new(Some(Arc::new(Handles {
                    db,
                    trees: opened.trees,
                }))),
                db_path,
                broken: std::sync::atomic::AtomicBool::new(false),
                station: station.to_owned(),
                instance_id: opened.instance_id,
                images,
                durable: AtomicU64::new(last),
                first_seq: AtomicU64::new(first_seq),
                durable_tx,
                writer: Mutex::new(last + 1),
                reserved_until: AtomicU64::new(reserved_until),
                work_orders: std::sync::RwLock::new(WorkOrderBook::default()),
                image_budget: AtomicU64::new(u64::MAX),
                images_evicted: AtomicU64::new(0),
                image_writes: std::sync::Mutex::new(()),
                label_writes: Mutex::new(()),
            }),
        };
        let book = WorkOrderBook::from_records(&store.records_of_kind(RecordKind::WorkOrder)?);
        if let Ok(mut slot) = store.inner.work_orders.write() {
            *slot = book;
        }
        Ok(store)
    }

    /// Identifies this store's history: it changes only when the history starts anew (a new
    /// data folder), so a client that sees another id knows its cursor means nothing here.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The station whose records these are.
    pub fn station(&self) -> &str {
        &self.inner.station
    }

    /// The newest durable sequence number (0 when the journal is empty).
    pub fn last_seq(&self) -> u64 {
        self.inner.durable.load(Ordering::Acquire)
    }

    /// The oldest sequence number still kept.
    pub fn first_seq(&self) -> u64 {
        self.inner.first_seq.load(Ordering::Acquire)
    }

    /// Wakes whenever new records become durable; the value is [`Store::last_seq`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable_tx.subscribe()
    }

    /// The open database, or [`RecordError::Reopening`] while it is being reopened.
    fn handles(&self) -> Result<Arc<Handles>, RecordError> {
        self.inner
            .handles
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(RecordError::Reopening)
    }

    fn mark_broken(&self) {
        self.inner.broken.store(true, Ordering::Release);
    }

    /// Whether a write failed and the database waits to be reopened.
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::Acquire)
    }

    /// Reopens the database after a failed write (a full disk, an I/O error): sled keeps the
    /// first I/O error and fails every later write, so only a fresh open recovers. A batch
    /// whose flush failed may still have reached the disk whole (it is one transaction): a
    /// writer that retries must first look whether it is there (the recorder looks up its
    /// first part).
    pub async fn recover(&self) -> Result<(), RecordError> {
        let mut next = self.inner.writer.lock().await;
        if !self.inner.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reopen(&mut next).await
    }

    /// Refuses a write or a reopen while the data disk has less than `need` bytes free.
    ///
    /// sled does not survive a full disk well: a flush that runs out of space breaks the
    /// database (see [`Store::recover`]), and after a few such fills and reopens `make soak`
    /// saw one that would not open again (an empty snapshot file, then "Read corrupted
    /// data"); which step left it so was not pinned down. So
    /// the station keeps sled away from the last bytes: records are written only while half
    /// the image floor (`[records] min_free_mb`) is free, and a broken database is reopened
    /// only once the whole floor is free again. Meanwhile records wait in memory and readers
    /// go on reading the database as it was.
    ///
    /// What else grows with production yields before the records, at the whole floor: images
    /// ([`Store::save_image`]), shadow verdicts ([`Store::put_shadow`]) and archive files
    /// ([`Store::archive_before`], when its files go to the data disk; an archive on a disk of
    /// its own needs only the records' half of the floor here, since archiving is what stops
    /// the journal growing). So the band between the whole floor and half of it is left to the
    /// records and their archiving. Tiny fixed-size metadata writes (an MES
    /// acknowledgement, a run's part-id reservation) are not refused at all: see
    /// [`Store::acknowledge`].
    fn ensure_space(&self, need: u64) -> Result<(), RecordError> {
        match self.images().free_bytes() {
            Ok(free) if free < need => Err(RecordError::DiskFull { free, need }),
            _ => Ok(()),
        }
    }

    /// The records' own floor, half the whole (`[records] min_free_mb`): what an append, and
    /// the prunes that free room (the archive's, the stray shadow sweep's), keep free.
    fn records_floor(&self) -> u64 {
        self.images().min_free_bytes() / 2
    }

    /// [`Store::ensure_space`] for an archive file of `bytes` in `dir` (which exists). On the
    /// data disk (the default, `<data>/archive`) the file must fit above the whole floor, as
    /// images must: sled does not give back the space its pruned records held, so archiving
    /// there only adds to what the disk holds. On a disk of its own the file needs only its
    /// bytes there, and the data disk only the records' own floor (half the whole) for the
    /// prune, a sled write like an append: archiving elsewhere is what keeps the journal from
    /// growing, so it must go on for as long as records are written.
    fn ensure_archive_space(&self, dir: &Path, bytes: u64) -> Result<(), RecordError> {
        let same_disk = same_filesystem(dir, self.images().dir());
        self.ensure_space(if same_disk {
            self.images().min_free_bytes().saturating_add(bytes)
        } else {
            self.records_floor()
        })?;
        if !same_disk {
            match super::images::free_bytes(dir) {
                Ok(free) if free < bytes => {
                    return Err(RecordError::DiskFull { free, need: bytes });
                }
                // As in `ensure_space`: a disk whose space cannot be read is not refused.
                _ => {}
            }
        }
        Ok(())
    }

    /// [`Store::recover`] with the writer lock held.
    async fn reopen(&self, next: &mut u64) -> Result<(), RecordError> {
        let inner = &self.inner;
        self.ensure_space(self.images().min_free_bytes())?;
        let old = inner
            .handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(old) = old {
            // Readers hold clones for the length of one read; the file lock is free only once
            // the last one is gone.
            let mut old = old;
            for _ in 0..1000 {
                match Arc::try_unwrap(old) {
                    Ok(handles) => {
                        drop(handles);
                        break;
                    }
                    Err(still_shared) => {
                        old = still_shared;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
        let path = inner.db_path.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<Handles, RecordError> {
            let db = open_db(&path)?;
            let trees = schema::open(&db, &path)?.trees;
            Ok(Handles { db, trees })
        })
        .await
        .map_err(|e| RecordError::Sled(sled::Error::ReportableBug(e.to_string())))??;
        // An archive may have moved first_seq on before the failed write.
        let (first_seq, last) = extent(&opened.trees)?;
        inner.first_seq.store(first_seq, Ordering::Release);
        *inner
            .handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(opened));
        *next = last + 1;
        inner.durable.store(last, Ordering::Release);
        inner.durable_tx.send_replace(last);
        inner.broken.store(false, Ordering::Release);
        tracing::warn!(
            last_seq = last,
            "record store reopened after a failed write"
        );
        Ok(())
    }

    /// The images kept beside the records.
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// Appends one record; returns it once durable.
    pub async fn append(&self, body: RecordBody) -> Result<Record, RecordError> {
        let mut records = self.append_all(vec![body]).await?;
        Ok(records.remove(0))
    }

    /// Appends records in one transaction and one flush (group commit); returns them, with
    /// their sequence numbers, once durable. All or none become visible.
    pub async fn append_all(&self, bodies: Vec<RecordBody>) -> Result<Vec<Record>, RecordError> {
        self.append_marked(bodies, None).await
    }

    /// Appends the records `build` makes from the store as it is, labels among them: a part's
    /// labels form one chain, each superseding the part's latest result (its last label, else
    /// its inspection), so `build` reads those results and the records are written under one
    /// lock, one writer of labels at a time (two labels written at once would both supersede
    /// the same result). `build` runs on a blocking thread; the whole runs to its end in a task
    /// of its own, so a dropped caller neither frees the lock early nor cuts the write short.
    /// Nothing is written when `build` makes no records.
    pub async fn append_labels<E>(
        &self,
        build: impl FnOnce(&Store) -> Result<Vec<RecordBody>, E> + Send + 'static,
    ) -> Result<Vec<Record>, E>
    where
        E: From<RecordError> + Send + 'static,
    {
        let store = self.clone();
        let lost = |e: tokio::task::JoinError| {
            E::from(RecordError::Sled(sled::Error::ReportableBug(e.to_string())))
        };
        tokio::spawn(async move {
            let _one_writer = store.inner.label_writes.lock().await;
            let reader = store.clone();
            let bodies = tokio::task::spawn_blocking(move || build(&reader))
                .await
                .map_err(lost)??;
            Ok(store.append_all(bodies).await?)
        })
        .await
        .map_err(lost)?
    }

    /// Appends `body` unless `mark` was set by an earlier call; the record and the mark are
    /// written in one transaction, so a crash never records it twice or loses it.
    pub async fn append_once(
        &self,
        mark: &str,
        body: RecordBody,
    ) -> Result<Option<Record>, RecordError> {
        let key = mark_key(mark);
        if self.handles()?.trees.meta.contains_key(&key)? {
            return Ok(None);
        }
        let mut records = self.append_marked(vec![body], Some(key)).await?;
        Ok(records.pop())
    }

    /// Writes the records in a task of their own, which the caller awaits. Between the
    /// transaction and the end of its flush the sequence has not moved on yet: a caller dropped
    /// there (a request past its timeout, a client that hung up) would leave the records and
    /// their index entries in the database under numbers the next write takes again, so its
    /// records would overwrite them and the label and kind indexes would name the wrong
    /// records. In its own task the write always runs to its end: the records of a dropped
    /// caller are kept, unacknowledged. A caller whose next step must follow its record (a
    /// model change, then the swap) runs both in a task of its own
    /// (`serve::models::to_completion`).
    async fn append_marked(
        &self,
        bodies: Vec<RecordBody>,
        mark: Option<Vec<u8>>,
    ) -> Result<Vec<Record>, RecordError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.clone();
        tokio::spawn(async move { store.write(bodies, mark).await })
            .await
            .map_err(|e| RecordError::Sled(sled::Error::ReportableBug(e.to_string())))?
    }

    /// [`Store::append_marked`]'s write, run to its end in its own task.
    async fn write(
        &self,
        bodies: Vec<RecordBody>,
        mark: Option<Vec<u8>>,
    ) -> Result<Vec<Record>, RecordError> {
        let inner = &self.inner;
        let mut next = inner.writer.lock().await;
        if inner.broken.load(Ordering::Acquire) {
            self.reopen(&mut next).await?;
        }
        self.ensure_space(self.records_floor())?;
        let recorded_at = Utc::now();
        let records: Vec<Record> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                seq: *next + i as u64,
                recorded_at,
                station: inner.station.clone(),
                body,
            })
            .collect();
        let encoded: Vec<(u64, Vec<u8>)> = records.iter().map(|r| (r.seq, encode(r))).collect();
        // When recorded part ids come near the end of the reservation, extend it in the same
        // transaction.
        let max_part = records
            .iter()
            .filter_map(|r| match &r.body {
                RecordBody::Inspection(i) => Some(i.part_id),
                _ => None,
            })
            .max();
        let extended = max_part
            .filter(|id| id + RESERVE_BLOCK / 2 >= inner.reserved_until.load(Ordering::SeqCst))
            .map(|id| id + RESERVE_BLOCK);
        let handles = self.handles()?;
        let t = &handles.trees;
        (
            &t.journal,
            &t.inspection_seq,
            &t.kind_seq,
            &t.label_seq,
            &t.meta,
        )
            .transaction(|(journal, inspection_seq, kind_seq, label_seq, meta)| {
                for (record, (seq, bytes)) in records.iter().zip(&encoded) {
                    let key = seq.to_be_bytes();
                    journal.insert(&key, bytes.as_slice())?;
                    match &record.body {
                        RecordBody::Inspection(i) => {
                            inspection_seq.insert(&i.part_id.to_be_bytes(), &key)?;
                        }
                        RecordBody::Label(l) => {
                            label_seq.insert(pair_key(l.part_id, *seq).as_slice(), &[])?;
                            kind_seq.insert(kind_key(RecordKind::Label, *seq).as_slice(), &[])?;
                        }
                        body => {
                            kind_seq.insert(kind_key(body.kind(), *seq).as_slice(), &[])?;
                        }
                    }
                }
                if let Some(until) = extended {
                    meta.insert(RESERVED_KEY, &until.to_be_bytes())?;
                }
                if let Some(mark) = &mark {
                    meta.insert(mark.as_slice(), &[])?;
                }
                Ok(())
            })
            .map_err(|e| {
                self.mark_broken();
                transaction_error(e)
            })?;
        if let Err(error) = handles.db.flush_async().await {
            // Not durable, so not acknowledged: nobody sees these records (`durable` stays),
            // and the database must be reopened before the next write.
            self.mark_broken();
            return Err(error.into());
        }
        let last = records.last().map_or(*next - 1, |r| r.seq);
        *next = last + 1;
        if let Some(until) = extended {
            inner.reserved_until.store(until, Ordering::SeqCst);
        }
        // Under the writer lock, so the book changes in journal order.
        for record in &records {
            if let RecordBody::WorkOrder(w) = &record.body
                && let Ok(mut book) = inner.work_orders.write()
            {
                book.apply(record.recorded_at, w.action, &w.order);
            }
        }
        inner.durable.store(last, Ordering::Release);
        inner.durable_tx.send_replace(last);
        drop(next);
        Ok(records)
    }

    /// One durable record by sequence number, checked.
    pub fn raw(&self, seq: u64) -> Result<Option<RawRecord>, RecordError> {
        if seq > self.last_seq() || seq < self.first_seq() {
            return Ok(None);
        }
        self.handles()?
            .trees
            .journal
            .get(seq.to_be_bytes())?
            .map(|bytes| RawRecord::check(seq, bytes))
            .transpose()
    }

    /// One record by sequence number.
    pub fn record(&self, seq: u64) -> Result<Option<Record>, RecordError> {
        self.raw(seq)?.map(|raw| raw.decode()).transpose()
    }

    /// Up to `limit` records from sequence `from` on that pass `filter`. `from` below the
    /// oldest kept record is [`RecordError::Pruned`].
    pub fn pull(&self, from: u64, limit: usize, filter: &Filter) -> Result<Page, RecordError> {
        let first_seq = self.first_seq();
        let last_seq = self.last_seq();
        if from < first_seq {
            return Err(RecordError::Pruned { from, first_seq });
        }
        let mut records = Vec::with_capacity(limit.min(1024));
        let mut next_seq = from;
        let mut scanned = 0;
        if from <= last_seq {
            for entry in self
                .handles()?
                .trees
                .journal
                .range(from.to_be_bytes()..=last_seq.to_be_bytes())
            {
                if records.len() == limit || scanned == MAX_SCAN {
                    break;
                }
                let (key, bytes) = entry?;
                let raw = RawRecord::check(be_u64(&key), bytes)?;
                next_seq = raw.seq + 1;
                scanned += 1;
                if filter.matches(&raw)? {
                    records.push(raw);
                }
            }
        }
        // The archiver moves `first_seq` on before it removes what it archived: moved past
        // `from` during the scan, the page may lack records that were there when it began, so
        // it is refused as pruned rather than answered with a gap.
        let first_now = self.first_seq();
        if from < first_now {
            return Err(RecordError::Pruned {
                from,
                first_seq: first_now,
            });
        }
        Ok(Page {
            records,
            next_seq,
            more: next_seq <= last_seq,
            first_seq,
            last_seq,
        })
    }

    /// The inspection record of a part, with its sequence number.
    pub fn inspection(&self, part_id: u64) -> Result<Option<Record>, RecordError> {
        match self
            .handles()?
            .trees
            .inspection_seq
            .get(part_id.to_be_bytes())?
        {
            Some(seq) => self.record(be_u64(&seq)),
            None => Ok(None),
        }
    }

    /// Up to `limit` inspection records, newest part first, with part ids below `before`.
    pub fn inspections(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, RecordError> {
        let index = &self.handles()?.trees.inspection_seq;
        let range = match before {
            Some(before) => index.range(..before.to_be_bytes()),
            None => index.iter(),
        };
        let mut records = Vec::with_capacity(limit.min(1024));
        for entry in range.rev() {
            if records.len() == limit {
                break;
            }
            let (_, seq) = entry?;
            // An index entry past `durable` belongs to a record still being flushed.
            if let Some(record) = self.record(be_u64(&seq))? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The bodies of [`Store::inspections`].
    pub fn inspection_records(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InspectionRecord>, RecordError> {
        Ok(self
            .inspections(before, limit)?
            .into_iter()
            .filter_map(|r| match r.body {
                RecordBody::Inspection(i) => Some(i),
                _ => None,
            })
            .collect())
    }

    /// Visits every inspection record decided at or after `from` and before `to`, newest part
    /// first, reading 512 at a time. Part ids follow capture order, not decision order, so the
    /// reading stops only after a whole page decided before `from`.
    pub fn for_each_inspection_decided<E: From<RecordError>>(
        &self,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        mut visit: impl FnMut(InspectionRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut before = None;
        loop {
            let page = self.inspection_records(before, 512)?;
            let Some(oldest) = page.last() else {
                return Ok(());
            };
            before = Some(oldest.part_id);
            let all_older = page.iter().all(|r| r.decided_at < from);
            for record in page {
                if record.decided_at >= from && record.decided_at < to {
                    visit(record)?;
                }
            }
            if all_older {
                return Ok(());
            }
        }
    }

    /// Number of inspection records.
    pub fn inspection_count(&self) -> usize {
        self.handles().map_or(0, |h| h.trees.inspection_seq.len())
    }

    /// Every durable record of one kind (not inspections or labels), oldest first.
    pub fn records_of_kind(&self, kind: RecordKind) -> Result<Vec<Record>, RecordError> {
        let mut records = Vec::new();
        let handles = self.handles()?;
        for entry in handles.trees.kind_seq.scan_prefix([kind as u8]) {
            let (key, _) = entry?;
            let seq = be_u64(&key[1..]);
            let record = if seq < self.first_seq() {
                // Archived, but kept because the station's state is rebuilt from it.
                handles
                    .trees
                    .retained
                    .get(seq.to_be_bytes())?
                    .map(|bytes| RawRecord::check(seq, bytes)?.decode())
                    .transpose()?
            } else {
                self.record(seq)?
            };
            records.extend(record);
        }
        Ok(records)
    }

    /// Up to `limit` records of one kind (not inspections), newest first, with sequence
    /// numbers below `before` when given.
    pub fn latest_of_kind(
        &self,
        kind: RecordKind,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, RecordError> {
        let start = kind_key(kind, 0);
        let end = kind_key(kind, before.unwrap_or(u64::MAX));
        let mut records = Vec::with_capacity(limit.min(1024));
        for entry in self.handles()?.trees.kind_seq.range(start..end).rev() {
            if records.len() == limit {
                break;
            }
            let (key, _) = entry?;
            if let Some(record) = self.record(be_u64(&key[1..]))? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The labels of a part, oldest first.
    pub fn labels(&self, part_id: u64) -> Result<Vec<Record>, RecordError> {
        let mut records = Vec::new();
        for entry in self
            .handles()?
            .trees
            .label_seq
            .scan_prefix(part_id.to_be_bytes())
        {
            let (key, _) = entry?;
            if let Some(record) = self.record(be_u64(&key[8..]))? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Every labelled part with the sequence number of its latest label, read from the index
    /// alone (no record is decoded): what the labelling queue needs to tell done from to do.
    pub fn latest_labels(&self) -> Result<std::collections::HashMap<u64, u64>, RecordError> {
        let mut latest = std::collections::HashMap::new();
        for entry in self.handles()?.trees.label_seq.iter() {
            let (key, _) = entry?;
            // Keys sort by part, then seq: the last one seen for a part is its latest.
            latest.insert(be_u64(&key[..8]), be_u64(&key[8..]));
        }
        Ok(latest)
    }

    /// Every model change, oldest first.
    pub fn model_events(&self) -> Result<Vec<ModelEvent>, RecordError> {
        Ok(self
            .records_of_kind(RecordKind::ModelChange)?
            .into_iter()
            .filter_map(|r| match r.body {
                RecordBody::ModelChange(event) => Some(event),
                _ => None,
            })
            .collect())
    }

    /// The work order running at `at`, if any.
    pub fn work_order_at(&self, at: DateTime<Utc>) -> Option<WorkOrder> {
        self.inner
            .work_orders
            .read()
            .ok()
            .and_then(|book| book.running_at(at).cloned())
    }

    /// Every work order known, with its state.
    pub fn work_orders(&self) -> Vec<WorkOrderState> {
        self.inner
            .work_orders
            .read()
            .map(|book| book.orders.clone())
            .unwrap_or_default()
    }

    /// The sequence number `client` acknowledged last (0 when none).
    pub fn acknowledged(&self, client: &str) -> Result<u64, RecordError> {
        Ok(self
            .handles()?
            .trees
            .meta
            .get(ack_key(client))?
            .map_or(0, |b| be_u64(&b)))
    }

    /// Records that `client` has everything up to `seq`. Never goes backwards; `seq` past
    /// the newest record is refused.
    pub async fn acknowledge(&self, client: &str, seq: u64) -> Result<u64, RecordError> {
        if self.is_broken() {
            self.recover().await?;
        }
        let last = self.last_seq();
        if seq > last {
            return Err(RecordError::AckBeyondEnd { seq, last });
        }
        // No free-space floor here, on purpose: an acknowledgement rewrites one 8-byte value,
        // and it is what lets records go (the MES has them). Refused on a full disk, it would
        // keep the station from ever freeing space.
        let handles = self.handles()?;
        // One atomic read-modify-write: concurrent acknowledgements never go backwards.
        let acked = handles
            .trees
            .meta
            .update_and_fetch(ack_key(client), |old| {
                Some(old.map_or(seq, be_u64).max(seq).to_be_bytes().to_vec())
            })?
            .map_or(seq, |v| be_u64(&v));
        if let Err(error) = handles.db.flush_async().await {
            self.mark_broken();
            return Err(error.into());
        }
        Ok(acked)
    }

    /// The first part id of a new run, past every id an earlier run could have handed out,
    /// recorded or not (after a kill -9, parts in flight had ids the PLC already saw). Reserves
    /// a block of ids durably before returning.
    pub fn start_run(&self) -> Result<u64, RecordError> {
        let reserved = self.inner.reserved_until.load(Ordering::SeqCst);
        let first = self.next_part_id()?.max(reserved);
        let until = first + RESERVE_BLOCK;
        // No free-space floor here: one 8-byte value once a run, and a station that could not
        // start a run on a full disk could not record (nor free space) at all.
        self.handles()?
            .trees
            .meta
            .insert(RESERVED_KEY, &until.to_be_bytes())?;
        self.handles()?.db.flush()?;
        self.inner.reserved_until.store(until, Ordering::SeqCst);
        Ok(first)
    }

    /// One past the highest part id recorded.
    pub fn next_part_id(&self) -> Result<u64, RecordError> {
        Ok(match self.handles()?.trees.inspection_seq.last()? {
            Some((key, _)) => be_u64(&key) + 1,
            None => 0,
        })
    }

    /// Keeps a shadow verdict. Not flushed here: shadow verdicts are acknowledged to no one,
    /// and sled's own periodic flush keeps them. One is kept per part, until the part's
    /// inspection is archived ([`Store::archive_before`]).
    ///
    /// [`RecordError::DiskFull`] below the whole free-space floor, as for images: a shadow
    /// verdict is worth less than the records, so it yields first. The caller (the shadow
    /// task) only logs that; inspection goes on.
    pub fn put_shadow(&self, verdict: &ShadowVerdict) -> Result<(), RecordError> {
        self.ensure_space(self.images().min_free_bytes())?;
        let value = serde_json::to_vec(verdict).unwrap_or_default();
        self.handles()?
            .trees
            .shadow
            .insert(verdict.part_id.to_be_bytes(), value)?;
        Ok(())
    }

    /// The shadow verdict of a part, if the shadow model saw it.
    pub fn shadow_verdict(&self, part_id: u64) -> Result<Option<ShadowVerdict>, RecordError> {
        self.handles()?
            .trees
            .shadow
            .get(part_id.to_be_bytes())?
            .map(|value| {
                serde_json::from_slice(&value).map_err(|e| RecordError::CorruptShadow {
                    part_id,
                    why: e.to_string(),
                })
            })
            .transpose()
    }

    /// How the shadow model `version` compared with the live model, over every verdict kept.
    /// Blocking: it reads the whole shadow tree, which retention bounds where it runs
    /// (`archive_after_days`: verdicts go with their parts, [`Store::archive_before`]) and
    /// which otherwise grows as the journal does; async callers run it with `spawn_blocking`.
    pub fn shadow_summary(&self, version: &str) -> Result<ShadowSummary, RecordError> {
        let mut summary = ShadowSummary {
            version: version.to_owned(),
            ..ShadowSummary::default()
        };
        for entry in self.handles()?.trees.shadow.iter() {
            let (key, value) = entry?;
            let verdict: ShadowVerdict =
                serde_json::from_slice(&value).map_err(|e| RecordError::CorruptShadow {
                    part_id: be_u64(&key),
                    why: e.to_string(),
                })?;
            if verdict.version != version {
                continue;
            }
            summary.compared += 1;
            match (verdict.live_verdict, verdict.verdict) {
                (live, shadow) if live == shadow => summary.agreed += 1,
                (_, Verdict::Error) => summary.shadow_errors += 1,
                (Verdict::Fail, Verdict::Pass) => summary.live_fail_shadow_pass += 1,
                (Verdict::Pass, Verdict::Fail) => summary.live_pass_shadow_fail += 1,
                _ => summary.other_disagreements += 1,
            }
        }
        Ok(summary)
    }

    /// Keeps images under `bytes` in all (oldest evicted first); `None`: no budget.
    pub fn set_image_budget(&self, bytes: Option<u64>) {
        self.inner
            .image_budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Saves a PNG beside the records and returns its digest. Under an image budget, the
    /// oldest images are deleted until the rest fit; their records keep the digest (the image
    /// then answers 404). "Oldest" is by the last save: an image saved again (the same bytes,
    /// for a newer record) is as new as that record. Blocking.
    ///
    /// [`RecordError::DiskFull`] while less than the whole free-space floor
    /// (`[records] min_free_mb`) is free: images yield to the records, whoever saves them
    /// (the recorder, which also looks once a batch, training previews, backtests).
    pub fn save_image(&self, png: &[u8]) -> Result<String, RecordError> {
        // Always `Some`: nothing refuses it.
        self.save_image_if(png, |_| true)
            .map(|saved| saved.unwrap_or_default())
    }

    /// Saves a PNG only if it fits the image budget without evicting anything: for pictures
    /// that must not cost the station its evidence (a backtest's heat maps). `None` when it
    /// does not fit; [`RecordError::DiskFull`] as for [`Store::save_image`]. Blocking.
    pub fn save_image_within_budget(&self, png: &[u8]) -> Result<Option<String>, RecordError> {
        let budget = self.inner.image_budget.load(Ordering::Relaxed);
        self.save_image_if(png, |total| {
            total.saturating_add(png.len() as u64) <= budget
        })
    }

    /// Saves `png` when `fits(bytes of images now)` says so, and makes it the newest entry of
    /// the image log.
    ///
    /// Images are content-addressed, so two records may name one file. Eviction takes the
    /// log's oldest entry, so the file must sit at the place of its newest save: were a
    /// re-save to leave it where it was first saved, it would be deleted while a newer
    /// record still names it. So a re-save moves its entry to the end (found through
    /// `image_index`: two lookups and a removal, O(log n), no scan of the log). Its bytes
    /// stay counted once: they are added only when the image gains its entry.
    fn save_image_if(
        &self,
        png: &[u8],
        fits: impl FnOnce(u64) -> bool,
    ) -> Result<Option<String>, RecordError> {
        let _one = match self.inner.image_writes.lock() {
            Ok(one) => one,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.ensure_space(self.images().min_free_bytes())?;
        if !fits(self.image_bytes()?) {
            return Ok(None);
        }
        // Whether the file was there before does not tell whether the log has it: a save cut
        // short between the file and the transaction below leaves a file no entry counts.
        // The index tells.
        let (digest, _new_file) = self.inner.images.put(png)?;
        let handles = self.handles()?;
        let t = &handles.trees;
        // Our own SHA-256 in hex: it always decodes.
        let raw = hex::decode(&digest).unwrap_or_default();
        let size = png.len() as u64;
        let mut entry = raw.clone();
        entry.extend_from_slice(&size.to_be_bytes());
        // Keys only grow (even once eviction has emptied the log), so every key below
        // IMAGE_INDEXED_KEY is one this build indexed. Under `image_writes` nobody else
        // writes the log.
        let indexed_until = t.meta.get(IMAGE_INDEXED_KEY)?.map_or(0, |v| be_u64(&v));
        let key = t
            .image_log
            .last()?
            .map_or(0, |(key, _)| be_u64(&key) + 1)
            .max(indexed_until);
        let total = (&t.image_log, &t.image_index, &t.meta)
            .transaction(|(log, index, meta)| {
                let mut total = meta.get(IMAGE_BYTES_KEY)?.map_or(0, |v| be_u64(&v));
                // The image's current entry, if the index names one that holds it.
                let logged = match index.get(raw.as_slice())? {
                    Some(old) => log
                        .get(&old)?
                        .is_some_and(|value| log_digest(&value) == raw.as_slice())
                        .then_some(old),
                    None => None,
                };
                match logged {
                    // Counted when it gained that entry: only its place moves.
                    Some(old) => {
                        log.remove(old)?;
                    }
                    None => {
                        total = total.saturating_add(size);
                        meta.insert(IMAGE_BYTES_KEY, &total.to_be_bytes())?;
                    }
                }
                log.insert(&key.to_be_bytes(), entry.as_slice())?;
                index.insert(raw.as_slice(), &key.to_be_bytes())?;
                meta.insert(IMAGE_INDEXED_KEY, &(key + 1).to_be_bytes())?;
                Ok(total)
            })
            .map_err(transaction_error)?;
        if total > self.inner.image_budget.load(Ordering::Relaxed) {
            self.evict_images(&handles)?;
        }
        Ok(Some(digest))
    }

    /// Bytes of images saved and not evicted.
    pub fn image_bytes(&self) -> Result<u64, RecordError> {
        Ok(self
            .handles()?
            .trees
            .meta
            .get(IMAGE_BYTES_KEY)?
            .map_or(0, |v| be_u64(&v)))
    }

    /// Deletes the images of the oldest log entries until the rest fit the budget. Each
    /// image has one entry (at its newest save), so the file deleted is named by no record
    /// newer than its entry.
    fn evict_images(&self, handles: &Handles) -> Result<(), RecordError> {
        let t = &handles.trees;
        let budget = self.inner.image_budget.load(Ordering::Relaxed);
        loop {
            let total = t.meta.get(IMAGE_BYTES_KEY)?.map_or(0, |v| be_u64(&v));
            if total <= budget {
                return Ok(());
            }
            let Some((key, value)) = t.image_log.first()? else {
                return Ok(());
            };
            let digest = log_digest(&value);
            let size = be_u64(&value[digest.len()..]);
            // The file goes first: a crash before the transaction leaves an entry for a missing
            // file, which the next eviction drops; the other order could leave a file that no
            // entry counts or evicts.
            self.inner.images.remove(&hex::encode(digest))?;
            (&t.image_log, &t.image_index, &t.meta)
                .transaction(|(log, index, meta)| {
                    log.remove(&key)?;
                    if index.get(digest)?.is_some_and(|at| at == key) {
                        index.remove(digest)?;
                    }
                    let total = meta.get(IMAGE_BYTES_KEY)?.map_or(0, |v| be_u64(&v));
                    meta.insert(IMAGE_BYTES_KEY, &total.saturating_sub(size).to_be_bytes())?;
                    Ok(())
                })
                .map_err(transaction_error)?;
            self.inner.images_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Images deleted under the budget since the store opened.
    pub fn images_evicted(&self) -> u64 {
        self.inner.images_evicted.load(Ordering::Relaxed)
    }

    /// Moves every record made before `cutoff` into a JSON-lines file in `dir` (synced before
    /// anything is deleted), then prunes them from the journal and its indexes, and the
    /// shadow verdicts of their parts with them. Pulls from before the new `first_seq` answer
    /// "gone". Returns `None` when nothing is that old. One chunk a call (the archiver calls
    /// again while something went).
    ///
    /// [`RecordError::DiskFull`] (nothing pruned) while the file would take the data disk
    /// below the whole free-space floor, or, with the archive on a disk of its own, while the
    /// data disk is below the records' half of it or the file does not fit there: archiving
    /// yields to the records, as images do, and the archiver tries again on its next run.
    pub async fn archive_before(
        &self,
        cutoff: DateTime<Utc>,
        dir: &Path,
    ) -> Result<Option<ArchiveReport>, RecordError> {
        let report = {
            // One writer at a time: records are not appended while old ones go.
            let _writer = self.inner.writer.lock().await;
            // Reading, writing and syncing thousands of records is blocking work.
            let store = self.clone();
            let dir = dir.to_owned();
            let archived = tokio::task::spawn_blocking(move || store.archive_chunk(cutoff, &dir))
                .await
                .map_err(|e| RecordError::Sled(sled::Error::ReportableBug(e.to_string())))??;
            if archived.is_some()
                && let Err(error) = self.handles()?.db.flush_async().await
            {
                self.mark_broken();
                return Err(error.into());
            }
            archived
        };
        // Then, without the writer lock (records go on being written), the shadow verdicts
        // no kept inspection can own. Each call looks, even with nothing to archive, so the
        // verdicts a build before this one left behind go too. Only logged when it fails:
        // the records were archived either way, and the next call tries again.
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.prune_stray_shadows()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => tracing::info!(pruned, "stray shadow verdicts pruned"),
            Ok(Err(error)) => tracing::warn!(%error, "stray shadow verdicts not pruned"),
            Err(error) => tracing::warn!(%error, "shadow pruning task failed"),
        }
        Ok(report)
    }

    /// Deletes the shadow verdicts of parts at or below the highest part id ever archived
    /// ([`SHADOW_SWEEP_THROUGH_KEY`]) whose inspection is not kept: verdicts whose inspection
    /// was archived before [`Store::archive_chunk`] took them along (by a build before it
    /// did), or whose part was never recorded (a crash between the shadow and the recorder).
    /// A part still in flight is newer than every archived one, so it is never touched, even
    /// when its record comes after a newer part's (a missed part's outcome overtakes the gate
    /// queue); nor is a kept inspection's verdict, whatever its id. With nothing archived yet
    /// there is no bound, and nothing goes. Keeps the records' half of the free-space floor
    /// (deleting is a sled write too, as the archive's prune). Removes in batches, each under
    /// a fresh handle, so a reopen never waits on a long sweep. Returns how many went.
    fn prune_stray_shadows(&self) -> Result<usize, RecordError> {
        const BATCH: usize = 10_000;
        let mut pruned = 0;
        // Where the previous batch stopped: kept inspections' verdicts stay, and are not
        // looked at again.
        let mut from = 0u64;
        loop {
            // As the archive's prune: deleting is what frees room.
            self.ensure_space(self.records_floor())?;
            let handles = self.handles()?;
            let t = &handles.trees;
            let Some(through) = t.meta.get(SHADOW_SWEEP_THROUGH_KEY)?.map(|v| be_u64(&v)) else {
                return Ok(pruned);
            };
            if from > through {
                return Ok(pruned);
            }
            let mut batch = sled::Batch::default();
            let (mut looked, mut n) = (0, 0);
            for entry in t
                .shadow
                .range(from.to_be_bytes()..=through.to_be_bytes())
                .take(BATCH)
            {
                let (key, _) = entry?;
                looked += 1;
                from = be_u64(&key).saturating_add(1);
                if !t.inspection_seq.contains_key(&key)? {
                    batch.remove(key);
                    n += 1;
                }
            }
            if looked == 0 {
                return Ok(pruned);
            }
            t.shadow.apply_batch(batch)?;
            pruned += n;
            if looked < BATCH {
                return Ok(pruned);
            }
        }
    }

    /// The blocking part of [`Store::archive_before`], with the writer lock held by the caller:
    /// up to [`ARCHIVE_CHUNK`] records before `cutoff` into a synced file, then out of the
    /// journal in one transaction (not yet flushed).
    fn archive_chunk(
        &self,
        cutoff: DateTime<Utc>,
        dir: &Path,
    ) -> Result<Option<ArchiveReport>, RecordError> {
        let handles = self.handles()?;
        let t = &handles.trees;
        let first = self.first_seq();
        let mut archived = Vec::new();
        for entry in t.journal.range(first.to_be_bytes()..) {
            let (key, bytes) = entry?;
            let raw = RawRecord::check(be_u64(&key), bytes)?;
            let record = raw.decode()?;
            if record.recorded_at >= cutoff || archived.len() >= ARCHIVE_CHUNK {
                break;
            }
            archived.push((raw, record));
        }
        let (Some((first_raw, _)), Some((last_raw, _))) = (archived.first(), archived.last())
        else {
            return Ok(None);
        };
        let (from, to) = (first_raw.seq, last_raw.seq);
        let io = |path: &Path, source| RecordError::Image {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // The file grows with production; it must not take the space the records need.
        let bytes: u64 = archived
            .iter()
            .map(|(raw, _)| raw.json().len() as u64 + 1)
            .sum();
        self.ensure_archive_space(dir, bytes)?;
        let file = dir.join(format!(
            "{}-{}-{from:012}-{to:012}.jsonl",
            self.inner.station, self.inner.instance_id
        ));
        {
            use std::io::Write;
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
            for (raw, _) in &archived {
                tmp.write_all(raw.json()).map_err(|e| io(&file, e))?;
                tmp.write_all(b"\n").map_err(|e| io(&file, e))?;
            }
            tmp.as_file().sync_all().map_err(|e| io(&file, e))?;
            tmp.persist(&file).map_err(|e| io(&file, e.error))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, e))?;
        }
        // Two folders on different devices may still share their space (btrfs subvolumes, an
        // overlay beside a volume of one disk): the prune below must find the records' floor
        // free after the file, whatever `ensure_archive_space` assumed. If not, the file goes
        // again and nothing is pruned: the records stay, the next run tries again.
        if let Err(short) = self.ensure_space(self.records_floor()) {
            if let Err(error) = std::fs::remove_file(&file) {
                tracing::warn!(file = %file.display(), %error, "an archive file not pruned from could not be removed");
            }
            return Err(short);
        }
        // Readers stop seeing the archived records before they go, so a pull from before them
        // answers "gone" rather than skipping them.
        let previous_first = self.inner.first_seq.swap(to + 1, Ordering::AcqRel);
        let pruned = (
            &t.journal,
            &t.inspection_seq,
            &t.kind_seq,
            &t.label_seq,
            &t.meta,
            &t.retained,
            &t.shadow,
        )
            .transaction(
                |(journal, inspection_seq, kind_seq, label_seq, meta, retained, shadow)| {
                    for (raw, record) in &archived {
                        journal.remove(&raw.seq.to_be_bytes())?;
                        match &record.body {
                            RecordBody::Inspection(i) => {
                                // Only if the index still points here (a part id is recorded once).
                                let key = i.part_id.to_be_bytes();
                                if inspection_seq
                                    .get(key)?
                                    .is_some_and(|s| be_u64(&s) == raw.seq)
                                {
                                    inspection_seq.remove(&key)?;
                                    // The shadow model's verdict on the part goes with its
                                    // record (same key): the shadow tree would otherwise grow
                                    // a verdict a part for ever, and `shadow_summary` read
                                    // them all.
                                    shadow.remove(&key)?;
                                }
                            }
                            RecordBody::Label(l) => {
                                label_seq.remove(pair_key(l.part_id, raw.seq).as_slice())?;
                                kind_seq.remove(kind_key(RecordKind::Label, raw.seq).as_slice())?;
                            }
                            // The station's model and work orders are rebuilt from these at start.
                            RecordBody::ModelChange(_) | RecordBody::WorkOrder(_) => {
                                retained.insert(&raw.seq.to_be_bytes(), encode(record))?;
                            }
                            body => {
                                kind_seq.remove(kind_key(body.kind(), raw.seq).as_slice())?;
                            }
                        }
                    }
                    meta.insert(FIRST_SEQ_KEY, &(to + 1).to_be_bytes())?;
                    // The stray-verdict sweep's bound: the highest part id archived so far.
                    let newest = archived
                        .iter()
                        .filter_map(|(_, record)| match &record.body {
                            RecordBody::Inspection(i) => Some(i.part_id),
                            _ => None,
                        });
                    if let Some(newest) = newest.max() {
                        let through = meta
                            .get(SHADOW_SWEEP_THROUGH_KEY)?
                            .map_or(newest, |v| be_u64(&v).max(newest));
                        meta.insert(SHADOW_SWEEP_THROUGH_KEY, &through.to_be_bytes())?;
                    }
                    Ok(())
                },
            )
            .map_err(transaction_error);
        if let Err(error) = pruned {
            self.inner
                .first_seq
                .store(previous_first, Ordering::Release);
            return Err(error);
        }
        Ok(Some(ArchiveReport {
            file,
            first_seq: from,
            last_seq: to,
            records: archived.len(),
        }))
    }

    /// Checks the whole journal: every record's checksum and JSON, no gap in the sequence,
    /// every index entry pointing at a record of its kind. For `linesight records verify`
    /// and the crash tests.
    pub fn verify(&self) -> Result<VerifyReport, RecordError> {
        let t = &self.handles()?.trees;
        let mut report = VerifyReport {
            instance_id: self.instance_id().to_owned(),
            first_seq: self.first_seq(),
            last_seq: self.last_seq(),
            records: 0,
            problems: Vec::new(),
        };
        let mut expected = report.first_seq;
        for entry in t.journal.iter() {
            let (key, bytes) = entry?;
            let seq = be_u64(&key);
            if seq != expected {
                report
                    .problems
                    .push(format!("sequence jumps from {} to {seq}", expected - 1));
            }
            expected = seq + 1;
            report.records += 1;
            match RawRecord::check(seq, bytes).and_then(|raw| raw.decode()) {
                Ok(record) if record.seq != seq => report
                    .problems
                    .push(format!("record at {seq} says it is {}", record.seq)),
                Ok(_) => {}
                Err(error) => report.problems.push(error.to_string()),
            }
        }
        for entry in t.inspection_seq.iter() {
            let (part, seq) = entry?;
            let (part, seq) = (be_u64(&part), be_u64(&seq));
            match self.record(seq) {
                Ok(Some(Record {
                    body: RecordBody::Inspection(i),
                    ..
                })) if i.part_id == part => {}
                Ok(_) if seq < report.first_seq => {}
                other => report.problems.push(format!(
                    "part {part} indexed at {seq}, which holds {:?}",
                    other.map(|r| r.map(|r| r.body.kind()))
                )),
            }
        }
        Ok(report)
    }
}

/// What one [`Store::archive_before`] moved out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveReport {
    pub file: PathBuf,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: usize,
}

/// Records archived per file and transaction at most.
const ARCHIVE_CHUNK: usize = 10_000;

/// Meta key of the bytes of images kept: each image's size once, from when it gains its log
/// entry until it is evicted.
const IMAGE_BYTES_KEY: &[u8] = b"image_bytes";
/// Meta key below which every `image_log` key is in `image_index` (and the next key a save
/// may take, at least). A store from before the index has none: its whole log is indexed at
/// the first open.
const IMAGE_INDEXED_KEY: &[u8] = b"image_indexed_until";

/// The digest part of an `image_log` value (digest ++ 8-byte size).
fn log_digest(entry: &[u8]) -> &[u8] {
    &entry[..entry.len().saturating_sub(8)]
}

/// Brings `image_index` up to the image log: indexes every entry from `IMAGE_INDEXED_KEY` on,
/// that is entries written before the index existed (a store from an earlier build). A
/// no-op otherwise (one range probe). Runs at open only: from then on every write to the
/// log updates the index in the same transaction, so a reopen after a failed write finds the
/// two agreeing.
///
/// An earlier build could log one image twice (its file deleted behind the store's back and
/// saved again): the older entry goes and its bytes are uncounted, so eviction never deletes
/// a file a newer entry still holds. Each step can be repeated, so a crash half-way is redone
/// at the next open.
fn index_image_log(trees: &Trees) -> Result<(), RecordError> {
    let from = trees.meta.get(IMAGE_INDEXED_KEY)?.map_or(0, |v| be_u64(&v));
    let mut until = from;
    for entry in trees.image_log.range(from.to_be_bytes()..) {
        let (key, value) = entry?;
        until = be_u64(&key) + 1;
        let digest = log_digest(&value);
        // Another entry the index names for this image, if that entry still holds it.
        let mut other = None;
        if let Some(at) = trees.image_index.get(digest)?
            && at != key
            && let Some(held) = trees.image_log.get(&at)?
            && log_digest(&held) == digest
        {
            other = Some((at, held));
        }
        let Some((other_key, other_value)) = other else {
            trees.image_index.insert(digest, &key)?;
            continue;
        };
        // Logged twice: keep the newer entry.
        let ((older, older_value), newer) = if be_u64(&other_key) < be_u64(&key) {
            ((other_key, other_value), key)
        } else {
            ((key, value.clone()), other_key)
        };
        let older_size = be_u64(&older_value[log_digest(&older_value).len()..]);
        (&trees.image_log, &trees.image_index, &trees.meta)
            .transaction(|(log, index, meta)| {
                log.remove(&older)?;
                index.insert(digest, &newer)?;
                let total = meta.get(IMAGE_BYTES_KEY)?.map_or(0, |v| be_u64(&v));
                meta.insert(
                    IMAGE_BYTES_KEY,
                    &total.saturating_sub(older_size).to_be_bytes(),
                )?;
                Ok(())
            })
            .map_err(transaction_error)?;
    }
    if until > from {
        trees.meta.insert(IMAGE_INDEXED_KEY, &until.to_be_bytes())?;
    }
    Ok(())
}

/// Whether two existing paths are on one filesystem; when that cannot be read, assumed so
/// (the stricter answer for [`Store::ensure_archive_space`]).
fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub instance_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// Empty when the journal is whole.
    pub problems: Vec<String>,
}

/// A work order and when it ran.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkOrderState {
    #[serde(flatten)]
    pub order: WorkOrder,
    pub released_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Work orders in the order they were released; at most one runs at a time.
#[derive(Debug, Default)]
struct WorkOrderBook {
    orders: Vec<WorkOrderState>,
}

impl WorkOrderBook {
    fn from_records(records: &[Record]) -> WorkOrderBook {
        let mut book = WorkOrderBook::default();
        for record in records {
            if let RecordBody::WorkOrder(w) = &record.body {
                book.apply(record.recorded_at, w.action, &w.order);
            }
        }
        book
    }

    fn apply(&mut self, at: DateTime<Utc>, action: WorkOrderAction, order: &WorkOrder) {
        let existing = self.orders.iter_mut().find(|o| o.order.id == order.id);
        match (action, existing) {
            (WorkOrderAction::Released, Some(state)) => state.order = order.clone(),
            (WorkOrderAction::Released, None) => self.orders.push(WorkOrderState {
                order: order.clone(),
                released_at: at,
                started_at: None,
                completed_at: None,
            }),
            (WorkOrderAction::Started, Some(state)) => {
                state.started_at = Some(at);
                state.completed_at = None;
            }
            (WorkOrderAction::Completed, Some(state)) => state.completed_at = Some(at),
            // A start or completion of an order never released: keep what it says.
            (action, None) => self.orders.push(WorkOrderState {
                order: order.clone(),
                released_at: at,
                started_at: Some(at),
                completed_at: (action == WorkOrderAction::Completed).then_some(at),
            }),
        }
    }

    /// The order that had started by `at` and not completed by then (the latest start wins).
    fn running_at(&self, at: DateTime<Utc>) -> Option<&WorkOrder> {
        self.orders
            .iter()
            .filter(|o| o.started_at.is_some_and(|s| s <= at))
            .filter(|o| o.completed_at.is_none_or(|c| c > at))
            .max_by_key(|o| o.started_at)
            .map(|o| &o.order)
    }
}

/// Meta key of the part-id reservation.
const RESERVED_KEY: &[u8] = b"part_ids_reserved_until";
/// Meta key of the highest part id whose inspection was archived: shadow verdicts at or below
/// it with no inspection kept are strays ([`Store::prune_stray_shadows`]).
const SHADOW_SWEEP_THROUGH_KEY: &[u8] = b"shadow_sweep_through";
/// Meta key of the oldest sequence number kept.
pub(crate) const FIRST_SEQ_KEY: &[u8] = b"first_seq";

/// Ids reserved at a time: far more than can be in flight between two records.
pub(crate) const RESERVE_BLOCK: u64 = 100_000;

/// Opens the sled database, waiting up to 2 s for its file lock: a handle just dropped in this
/// process (sled finishes a background flush after the drop) or a process just killed may
/// hold it for a moment. A second station on the same folder still fails, after the wait.
fn open_db(path: &Path) -> Result<sled::Db, RecordError> {
    open_sled(path).map_err(|source| RecordError::Open {
        path: path.to_owned(),
        source,
    })
}

/// How much of a database sled keeps in memory. Its default, 1 GiB for each of a station's
/// databases, would let the cache alone take gigabytes as records pile up over weeks; reads
/// of recent records (the live view, the MES pull) stay within this much. sled's memory grows
/// with each record until its cache is full, so this size bounds much of a station's memory:
/// 8 MiB fills within the first ten thousand records or so, where 32 MiB went on filling past
/// 36,000 (30 minutes at 20 parts/s). The OS's page cache holds the files besides.
const SLED_CACHE_BYTES: u64 = 8 << 20;

/// Opens a sled database, waiting up to 2 s for its file lock (see `open_db`); the sensor
/// and analysis databases open the same way.
pub fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let mut attempts = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && attempts < 40 =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(source) => return Err(source),
        }
    }
}

/// The oldest sequence number kept and the newest given. The newest is the journal's last key,
/// or, when archiving emptied the journal, the last one archived (numbers never start again
/// under one instance id).
fn extent(trees: &Trees) -> Result<(u64, u64), RecordError> {
    let first_seq = match trees.meta.get(FIRST_SEQ_KEY)? {
        Some(bytes) => be_u64(&bytes),
        None => 1,
    };
    let last = match trees.journal.last()? {
        Some((key, _)) => be_u64(&key),
        None => 0,
    };
    Ok((first_seq, last.max(first_seq.saturating_sub(1))))
}

/// Our transactions never abort by themselves; what fails is storage.
fn transaction_error(error: sled::transaction::TransactionError<()>) -> RecordError {
    match error {
        sled::transaction::TransactionError::Storage(e) => RecordError::Sled(e),
        sled::transaction::TransactionError::Abort(()) => {
            RecordError::Sled(sled::Error::ReportableBug("transaction aborted".into()))
        }
    }
}

fn mark_key(mark: &str) -> Vec<u8> {
    [b"mark/".as_slice(), mark.as_bytes()].concat()
}

fn ack_key(client: &str) -> Vec<u8> {
    [b"ack/".as_slice(), client.as_bytes()].concat()
}

fn kind_key(kind: RecordKind, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind as u8;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn pair_key(part_id: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&part_id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// A big-endian u64 (keys are big-endian so they sort in number order).
pub(crate) fn be_u64(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::testing::{judged_inspection, shadow_pass as shadow};

    /// A floor well past what the disk has free, as if it were nearly full.
    fn short_of_space(store: &Store) {
        let free = store.images().free_bytes().expect("statvfs");
        store
            .images()
            .set_min_free_bytes(free.saturating_mul(4).max(1));
    }

    /// An image a newer record names again is as new as that record: eviction takes the
    /// images saved longest ago, never one just saved again. Its bytes count once.
    #[test]
    fn a_resaved_image_is_evicted_as_new_and_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        store.images().set_min_free_bytes(0);
        store.set_image_budget(Some(3500));
        let pngs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let a = store.save_image(&pngs[0]).expect("a");
        let b = store.save_image(&pngs[1]).expect("b");
        let c = store.save_image(&pngs[2]).expect("c");
        assert_eq!(store.save_image(&pngs[0]).expect("a again"), a);
        assert_eq!(
            store.image_bytes().expect("bytes"),
            3000,
            "counted once per image, not per save"
        );
        let d = store.save_image(&pngs[3]).expect("d");
        assert_eq!(store.images_evicted(), 1);
        assert!(
            store.images().path(&a).is_some(),
            "the image saved again is kept"
        );
        assert!(store.images().path(&b).is_none(), "the oldest save went");
        assert!(store.images().path(&c).is_some());
        assert!(store.images().path(&d).is_some());
        assert_eq!(store.image_bytes().expect("bytes"), 3000);
        let handles = store.handles().expect("handles");
        assert_eq!(
            handles.trees.image_log.len(),
            3,
            "one log entry per image kept"
        );
        assert_eq!(handles.trees.image_index.len(), 3);
    }

    /// A save cut short between the file and its log entry leaves a file no entry counts; the
    /// next save of those bytes logs and counts it (before, it returned early: the file was
    /// never counted nor evicted).
    #[test]
    fn a_file_the_log_never_had_is_logged_and_counted_when_saved_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        store.images().set_min_free_bytes(0);
        let png = vec![9u8; 1000];
        let (digest, new) = store.images().put(&png).expect("file only");
        assert!(new);
        assert_eq!(store.image_bytes().expect("bytes"), 0);
        assert_eq!(store.save_image(&png).expect("save"), digest);
        assert_eq!(store.image_bytes().expect("bytes"), 1000);
        assert_eq!(store.handles().expect("handles").trees.image_log.len(), 1);
        store.set_image_budget(Some(500));
        store.save_image(&[8u8; 10]).expect("a small one");
        assert!(
            store.images().path(&digest).is_none(),
            "now it is evicted like any image"
        );
    }

    /// A store whose image log was written before the index (an earlier build) is indexed at
    /// open, so a re-save finds its old entry. An image that build logged twice keeps only its
    /// newer entry, counted once.
    #[test]
    fn an_image_log_from_before_the_index_is_indexed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pngs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let (a, b) = {
            let store = Store::open(dir.path(), "s").expect("open");
            store.images().set_min_free_bytes(0);
            let a = store.save_image(&pngs[0]).expect("a");
            let b = store.save_image(&pngs[1]).expect("b");
            store.save_image(&pngs[2]).expect("c");
            // As the earlier build left it: no index, and `a` logged a second time (its file
            // deleted behind the store's back, then saved again and counted again).
            let handles = store.handles().expect("handles");
            let t = &handles.trees;
            t.image_index.clear().expect("clear");
            t.meta.remove(IMAGE_INDEXED_KEY).expect("remove");
            let (_, first) = t.image_log.first().expect("read").expect("a's entry");
            t.image_log
                .insert(3u64.to_be_bytes(), first)
                .expect("insert");
            t.meta
                .insert(IMAGE_BYTES_KEY, &4000u64.to_be_bytes())
                .expect("insert");
            handles.db.flush().expect("flush");
            (a, b)
        };
        let store = Store::open(dir.path(), "s").expect("reopen");
        store.images().set_min_free_bytes(0);
        {
            let handles = store.handles().expect("handles");
            assert_eq!(handles.trees.image_log.len(), 3, "a's older entry went");
            assert_eq!(handles.trees.image_index.len(), 3);
        }
        assert_eq!(store.image_bytes().expect("bytes"), 3000);
        store.set_image_budget(Some(3500));
        store.save_image(&pngs[3]).expect("d");
        assert!(
            store.images().path(&a).is_some(),
            "a's newer entry is not the oldest"
        );
        assert!(store.images().path(&b).is_none());
        assert_eq!(store.image_bytes().expect("bytes"), 3000);
    }

    /// Images (whoever saves them) and shadow verdicts yield to the records below the whole
    /// free-space floor, with the error appends give.
    #[test]
    fn images_and_shadow_verdicts_yield_to_the_free_space_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        short_of_space(&store);
        let png = vec![7u8; 1000];
        assert!(matches!(
            store.save_image(&png),
            Err(RecordError::DiskFull { .. })
        ));
        assert!(matches!(
            store.save_image_within_budget(&png),
            Err(RecordError::DiskFull { .. })
        ));
        assert!(matches!(
            store.put_shadow(&shadow(1)),
            Err(RecordError::DiskFull { .. })
        ));
        assert_eq!(store.image_bytes().expect("bytes"), 0);
        let files = std::fs::read_dir(dir.path().join("images"))
            .expect("image folder")
            .count();
        assert_eq!(files, 0, "no image file written");
        assert_eq!(store.shadow_verdict(1).expect("read"), None);

        store.images().set_min_free_bytes(0);
        let digest = store.save_image(&png).expect("room again");
        assert!(store.images().path(&digest).is_some());
        store.put_shadow(&shadow(1)).expect("room again");
        assert_eq!(store.shadow_verdict(1).expect("read"), Some(shadow(1)));
    }

    /// An archive file yields to the records too (nothing written, nothing pruned); the MES's
    /// acknowledgement and a run's id reservation do not, since refusing them would keep the
    /// station from freeing space.
    #[tokio::test]
    async fn archiving_yields_to_the_floor_and_acknowledgements_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        store.images().set_min_free_bytes(0);
        let now = Utc::now();
        store
            .append_all((0..3).map(|p| judged_inspection(p, now, None)).collect())
            .await
            .expect("append");
        let everything = Utc::now() + chrono::TimeDelta::seconds(1);
        let archive = dir.path().join("archive");
        short_of_space(&store);
        assert!(matches!(
            store.archive_before(everything, &archive).await,
            Err(RecordError::DiskFull { .. })
        ));
        assert_eq!(store.first_seq(), 1, "nothing pruned");
        assert_eq!(
            std::fs::read_dir(&archive).map_or(0, |d| d.count()),
            0,
            "no archive file written"
        );
        assert_eq!(store.acknowledge("mes", 3).await.expect("ack"), 3);
        store.start_run().expect("a run starts");

        store.images().set_min_free_bytes(0);
        let report = store
            .archive_before(everything, &archive)
            .await
            .expect("archive")
            .expect("something archived");
        assert_eq!(report.records, 3);
        assert_eq!(store.first_seq(), 4);
    }
}
