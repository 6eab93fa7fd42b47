//! The judged parts root cause reads: the sliding window the station analyses every few
//! minutes, and the one-off read of any scope the API asks for.
//!
//! Two things keep a round's cost bounded however long the window and however fast the line:
//!
//! - **The window is kept between rounds.** A round reads only the journal past the previous
//!   one (new inspections, and labels that change a part's class) instead of decoding the whole
//!   window again. At 20 parts/s an 8-hour window holds 576,000 parts; re-reading it every five
//!   minutes cost a full scan of the record store, and each scan churned the store's cache.
//! - **Beyond `max_parts`, a uniform sample.** A part stays in the window when a hash of its
//!   id has `level` low zero bits (one part in 2^level); when the window outgrows `max_parts`
//!   the level rises by one and half the parts go. Whether a part is kept depends on nothing
//!   but its id, so the sample is uniform over time and over defect classes: rates and lifts
//!   stay unbiased, only their spread grows. The analysis says which fraction it read.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::station::{InspectedPart, Scope};
use crate::analyse::AnalyseError;
use crate::part::Verdict;
use crate::record::{
    Filter, InspectionRecord, LabelRecord, RecordBody, RecordError, RecordKind, Store,
};

/// Records are read in pages of this many.
const PAGE: usize = 1024;

/// The default most parts a root-cause analysis reads (`root_cause.max_parts`). A defect class
/// at 1 % still has hundreds of parts in a full sample, and the engine's memory (a few
/// hundred bytes a part, its derived features included) stays in the tens of MiB.
pub const DEFAULT_MAX_PARTS: usize = 50_000;

/// Each distinct work order, product and class name held once, however many parts carry it.
#[derive(Debug, Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: Option<String>) -> Option<Arc<str>> {
        let name = name?;
        if let Some(known) = self.0.get(name.as_str()) {
            return Some(known.clone());
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(name.clone());
        Some(name)
    }

    /// Forgets the names no part carries any more (an order long finished).
    fn forget_unused(&mut self) {
        self.0.retain(|name| Arc::strong_count(name) > 1);
    }
}

/// Which parts a sample keeps: one in 2^level, chosen by a hash of the part id.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    level: u32,
    max_parts: usize,
}

impl Sampling {
    fn new(max_parts: usize) -> Sampling {
        Sampling {
            level: 0,
            max_parts: max_parts.max(1),
        }
    }

    fn keeps(&self, part_id: u64) -> bool {
        let mask = (1u64 << self.level.min(63)) - 1;
        mix(part_id) & mask == 0
    }

    /// One in how many parts the sample holds.
    fn one_in(&self) -> u64 {
        1u64 << self.level.min(63)
    }
}

/// SplitMix64's finaliser: consecutive part ids land on unrelated bits, so "low bits zero"
/// picks no pattern of the line (every other part, one lane of two).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Parts read so far, oldest first, sampled so that at most `max_parts` are held.
#[derive(Debug)]
struct Parts {
    parts: VecDeque<InspectedPart>,
    names: Names,
    sampling: Sampling,
}

impl Parts {
    fn new(max_parts: usize) -> Parts {
        Parts {
            parts: VecDeque::new(),
            names: Names::default(),
            sampling: Sampling::new(max_parts),
        }
    }

    /// Adds a judged part (in any order: the window is kept in capture order).
    fn add(&mut self, inspection: InspectionRecord, label: Option<&LabelRecord>) {
        if !matches!(inspection.verdict, Some(Verdict::Pass | Verdict::Fail))
            || !self.sampling.keeps(inspection.part_id)
        {
            return;
        }
        let judgement = crate::analyse::production::judge(&inspection, label);
        let part = InspectedPart {
            part_id: inspection.part_id,
            captured_ms: inspection.captured_at.timestamp_millis(),
            work_order: self.names.get(inspection.work_order),
            product: self.names.get(inspection.product),
            defect: self.names.get(judgement.defect),
        };
        // Records come nearly in capture order; a late one is placed where it belongs.
        match self.parts.back() {
            Some(last) if last.captured_ms > part.captured_ms => {
                let at = self
                    .parts
                    .partition_point(|p| p.captured_ms <= part.captured_ms);
                self.parts.insert(at, part);
            }
            _ => self.parts.push_back(part),
        }
        while self.parts.len() > self.sampling.max_parts && self.sampling.level < 63 {
            self.sampling.level += 1;
            let sampling = self.sampling;
            self.parts.retain(|p| sampling.keeps(p.part_id));
        }
    }

    /// Drops the parts captured before `from_ms`.
    fn forget_before(&mut self, from_ms: i64) {
        while self.parts.front().is_some_and(|p| p.captured_ms < from_ms) {
            self.parts.pop_front();
        }
    }

    /// The parts captured in `[from_ms, to_ms)`, oldest first.
    fn between(&mut self, from_ms: i64, to_ms: i64) -> &[InspectedPart] {
        let parts = self.parts.make_contiguous();
        let start = parts.partition_point(|p| p.captured_ms < from_ms);
        let end = parts.partition_point(|p| p.captured_ms < to_ms);
        &parts[start..end.max(start)]
    }
}

/// The judged parts of `scope`, oldest first, at most `max_parts` of them (a uniform sample
/// beyond), and one in how many parts the sample holds. Blocking.
pub fn inspected_parts(
    store: &Store,
    scope: &Scope,
    max_parts: usize,
) -> Result<(Vec<InspectedPart>, u64), AnalyseError> {
    let mut parts = Parts::new(max_parts);
    read_back(store, scope, None, &mut parts)?;
    let (from, to) = (scope.from.timestamp_millis(), scope.to.timestamp_millis());
    let one_in = parts.sampling.one_in();
    Ok((parts.between(from, to).to_vec(), one_in))
}

/// Reads the judged parts of `scope` newest first through the inspection index into `parts`,
/// leaving out records past `up_to_seq` when given. Blocking.
fn read_back(
    store: &Store,
    scope: &Scope,
    up_to_seq: Option<u64>,
    parts: &mut Parts,
) -> Result<(), AnalyseError> {
    let (from, to) = (scope.from.timestamp_millis(), scope.to.timestamp_millis());
    let mut before = None;
    loop {
        let page = store.inspections(before, PAGE)?;
        let full = page.len() == PAGE;
        for record in page {
            let seq = record.seq;
            let RecordBody::Inspection(inspection) = record.body else {
                continue;
            };
            before = Some(inspection.part_id);
            let at = inspection.captured_at.timestamp_millis();
            if at < from {
                return Ok(());
            }
            if at >= to || up_to_seq.is_some_and(|last| seq > last) {
                continue;
            }
            if let Some(wanted) = &scope.work_order
                && inspection.work_order.as_ref() != Some(wanted)
            {
                continue;
            }
            if !parts.sampling.keeps(inspection.part_id) {
                continue;
            }
            let labels = store.labels(inspection.part_id)?;
            let label = labels.iter().rev().find_map(|r| match &r.body {
                RecordBody::Label(label) => Some(label),
                _ => None,
            });
            parts.add(inspection, label);
        }
        if !full {
            return Ok(());
        }
    }
}

/// The station's sliding window of judged parts, kept from one root-cause round to the next.
#[derive(Debug)]
pub struct Window {
    parts: Parts,
    /// The next journal record to read; `None` until the window is first filled.
    next_seq: Option<u64>,
}

impl Window {
    /// An empty window that holds at most `max_parts` parts.
    pub fn new(max_parts: usize) -> Window {
        Window {
            parts: Parts::new(max_parts),
            next_seq: None,
        }
    }

    /// Brings the window to `[from, to)`: reads what was recorded since the last call (the
    /// whole span the first time, or when records it had not read yet were archived), and
    /// forgets parts older than `from`. Returns the parts, oldest first, and one in how many
    /// parts they are. Blocking.
    pub fn advance(
        &mut self,
        store: &Store,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(&[InspectedPart], u64), AnalyseError> {
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        // Old parts go first, so they never push the sample to a coarser level.
        self.parts.forget_before(from_ms);
        let read_on = match self.next_seq {
            Some(next) => self.read_on(store, next)?,
            None => false,
        };
        // A sample thinned for a busier time, now holding under a quarter of its bound, is
        // read again at the finest level the window allows (a slow night after a busy shift).
        let sampling = self.parts.sampling;
        let thin = sampling.level > 0 && self.parts.parts.len() < sampling.max_parts / 4;
        if !read_on || thin {
            self.refill(store, from)?;
        }
        self.parts.forget_before(from_ms);
        self.parts.names.forget_unused();
        let one_in = self.parts.sampling.one_in();
        Ok((self.parts.between(from_ms, to_ms), one_in))
    }

    /// Reads the window afresh through the inspection index, up to the journal's end as it
    /// stands now; what comes after is read on from there next time.
    fn refill(&mut self, store: &Store, from: DateTime<Utc>) -> Result<(), AnalyseError> {
        let max_parts = self.parts.sampling.max_parts;
        self.parts = Parts::new(max_parts);
        let last = store.last_seq();
        let scope = Scope {
            from,
            to: DateTime::<Utc>::MAX_UTC,
            work_order: None,
        };
        read_back(store, &scope, Some(last), &mut self.parts)?;
        self.next_seq = Some(last + 1);
        Ok(())
    }

    /// Folds the inspections and labels recorded from `next` on into the window; `false` when
    /// some of them were archived before they could be read.
    fn read_on(&mut self, store: &Store, mut next: u64) -> Result<bool, AnalyseError> {
        let filter = Filter {
            kinds: vec![RecordKind::Inspection, RecordKind::Label],
            ..Filter::default()
        };
        loop {
            let page = match store.pull(next, PAGE, &filter) {
                Ok(page) => page,
                // Archived before this round read them: the window starts again.
                Err(RecordError::Pruned { .. }) => return Ok(false),
                Err(error) => return Err(error.into()),
            };
            for raw in &page.records {
                match raw.decode()?.body {
                    RecordBody::Inspection(inspection) => self.parts.add(inspection, None),
                    RecordBody::Label(label) => self.relabel(store, &label)?,
                    _ => {}
                }
            }
            next = page.next_seq;
            self.next_seq = Some(next);
            if !page.more {
                return Ok(true);
            }
        }
    }

    /// A label changes the class of a part in the window (a part outside it, or left out of
    /// the sample, is not there to change).
    fn relabel(&mut self, store: &Store, label: &LabelRecord) -> Result<(), AnalyseError> {
        let Some(at) = self
            .parts
            .parts
            .iter()
            .rposition(|p| p.part_id == label.part_id)
        else {
            return Ok(());
        };
        let Some(record) = store.inspection(label.part_id)? else {
            return Ok(());
        };
        let RecordBody::Inspection(inspection) = record.body else {
            return Ok(());
        };
        let judgement = crate::analyse::production::judge(&inspection, Some(label));
        self.parts.parts[at].defect = self.parts.names.get(judgement.defect);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::testing::judged_inspection;

    const T0: i64 = 1_700_000_000_000;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(T0 + ms).expect("valid time")
    }

    /// Part `id` at `id` seconds, a scratch on every fifth.
    fn part(id: u64) -> RecordBody {
        let class = id.is_multiple_of(5).then_some("scratch");
        judged_inspection(id, at(id as i64 * 1000), class)
    }

    fn label(part_id: u64, class: Option<&str>) -> RecordBody {
        RecordBody::Label(LabelRecord {
            part_id,
            supersedes: 0,
            verdict: if class.is_some() {
                Verdict::Fail
            } else {
                Verdict::Pass
            },
            defect_class: class.map(str::to_owned),
            note: None,
            by: "eng-1".into(),
            image: None,
            regions: Vec::new(),
        })
    }

    fn append(store: &Store, bodies: Vec<RecordBody>) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(store.append_all(bodies))
            .expect("append");
    }

    fn scope(from_s: i64, to_s: i64) -> Scope {
        Scope {
            from: at(from_s * 1000),
            to: at(to_s * 1000),
            work_order: None,
        }
    }

    /// What a fresh read of the scope finds.
    fn full_read(store: &Store, from_s: i64, to_s: i64) -> Vec<InspectedPart> {
        inspected_parts(store, &scope(from_s, to_s), 1_000_000)
            .expect("read")
            .0
    }

    #[test]
    fn a_kept_window_reads_on_and_agrees_with_a_fresh_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        append(&store, (1..=100).map(part).collect());
        let mut window = Window::new(1_000_000);

        let (parts, one_in) = window.advance(&store, at(0), at(101_000)).expect("first");
        assert_eq!((parts.len(), one_in), (100, 1));
        assert_eq!(parts, full_read(&store, 0, 101));

        // New parts, one recorded late (captured before the newest), a relabelled old part
        // (10 was a scratch, an engineer says good), a new class for 12, and a label for a
        // part read in this same round.
        let mut bodies: Vec<RecordBody> = (101..=150).map(part).collect();
        bodies.push(judged_inspection(151, at(99_500), Some("dent")));
        bodies.push(label(10, None));
        bodies.push(label(12, Some("dent")));
        bodies.push(label(140, Some("crack")));
        append(&store, bodies);
        let before = store.last_seq();
        let (parts, _) = window.advance(&store, at(5_000), at(151_000)).expect("on");
        assert_eq!(parts, full_read(&store, 5, 151));
        assert_eq!(parts.len(), 147, "parts 5..=150 and the late 151");
        assert_eq!(
            parts.iter().map(|p| p.part_id).take(3).collect::<Vec<_>>(),
            [5, 6, 7],
            "older parts forgotten"
        );
        let late = parts.iter().position(|p| p.part_id == 151).expect("late");
        assert_eq!(parts[late + 1].part_id, 100, "placed by capture time");
        let class = |id: u64| {
            parts
                .iter()
                .find(|p| p.part_id == id)
                .and_then(|p| p.defect.as_deref())
        };
        assert_eq!(
            [class(10), class(12), class(140), class(15)],
            [None, Some("dent"), Some("crack"), Some("scratch")]
        );
        assert_eq!(store.last_seq(), before, "reading wrote nothing");
    }

    #[test]
    fn a_window_whose_records_were_archived_unread_starts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        append(&store, (1..=20).map(part).collect());
        let mut window = Window::new(1_000_000);
        let (parts, _) = window.advance(&store, at(0), at(100_000)).expect("first");
        assert_eq!(parts.len(), 20);

        append(&store, (21..=30).map(part).collect());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let archive = dir.path().join("archive");
        std::fs::create_dir_all(&archive).expect("archive dir");
        let cutoff = Utc::now() + chrono::TimeDelta::seconds(5);
        while runtime
            .block_on(store.archive_before(cutoff, &archive))
            .expect("archive")
            .is_some()
        {}
        assert!(store.first_seq() > 21, "the unread records are gone");
        append(&store, (31..=40).map(part).collect());
        let (parts, _) = window.advance(&store, at(0), at(100_000)).expect("again");
        assert_eq!(parts, full_read(&store, 0, 100));
        assert_eq!(
            parts.iter().map(|p| p.part_id).collect::<Vec<_>>(),
            (31..=40).collect::<Vec<_>>(),
            "what is kept, read afresh"
        );
    }

    #[test]
    fn a_sample_thinned_for_a_busy_hour_is_read_finer_when_the_line_slows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("store");
        // A busy first 4,000 s (a part a second), then a slow line: one part every 20 s.
        append(&store, (1..=4_000).map(part).collect());
        let mut window = Window::new(1_000);
        let (parts, one_in) = window.advance(&store, at(0), at(4_001_000)).expect("busy");
        assert!(
            one_in > 1 && parts.len() <= 1_000,
            "{one_in}, {}",
            parts.len()
        );
        let slow: Vec<RecordBody> = (0..100u64)
            .map(|k| {
                let id = 4_001 + k;
                judged_inspection(id, at(4_000_000 + 20_000 * (k as i64 + 1)), None)
            })
            .collect();
        append(&store, slow);
        // The window moves past the busy hour: the last busy part and 100 slow ones are left,
        // fewer than a quarter of the bound, so the window reads them all again.
        let (parts, one_in) = window
            .advance(&store, at(4_000_000), at(6_100_000))
            .expect("slow");
        assert_eq!((one_in, parts.len()), (1, 101));
        assert_eq!(parts, full_read(&store, 4_000, 6_100).as_slice());
    }

    #[test]
    fn beyond_max_parts_the_window_is_a_uniform_sample() {
        let mut parts = Parts::new(1_000);
        let n = 20_000u64;
        for id in 0..n {
            let RecordBody::Inspection(inspection) = part(id) else {
                unreachable!()
            };
            parts.add(inspection, None);
        }
        let one_in = parts.sampling.one_in();
        assert_eq!(
            one_in, 32,
            "20,000 parts halved until at most 1,000 are left"
        );
        let held = parts.between(i64::MIN, i64::MAX).to_vec();
        assert!((500..=1_000).contains(&held.len()), "{} held", held.len());
        // One in five had a scratch; the sample says so within a few points.
        let scratches = held.iter().filter(|p| p.defect.is_some()).count();
        let rate = scratches as f64 / held.len() as f64;
        assert!((0.16..=0.24).contains(&rate), "scratch rate {rate:.3}");
        // Spread evenly over time: each quarter holds about a quarter.
        let quarter = (n as i64 / 4) * 1000;
        for q in 0..4 {
            let span = (T0 + q * quarter)..(T0 + (q + 1) * quarter);
            let share = held
                .iter()
                .filter(|p| span.contains(&p.captured_ms))
                .count() as f64
                / held.len() as f64;
            assert!((0.19..=0.31).contains(&share), "quarter {q}: {share:.3}");
        }
        // Oldest first, as the engine needs.
        assert!(
            held.windows(2)
                .all(|w| w[0].captured_ms <= w[1].captured_ms)
        );
    }
}
