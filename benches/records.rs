//! The record store's throughput, release build: `make bench` (issue 14's targets: ingest of
//! inspection records ≥ 20,000/s with images stored separately, JSON pull ≥ 100,000/s).
//!
//! Ingest writes groups of 512 inspection records, one transaction and one flush (fsync) each,
//! as the recorder does when parts queue up; pull reads, checks and assembles 5,000-record pages
//! of `GET /api/v1/records` from a store of 100,000 records; archive moves one 10,000-record
//! chunk to a file and out of the journal (the time appends wait behind it).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use linesight::part::{Actuation, Disposition, PartId, PartOutcome, StationClock, StationTime};
use linesight::record::{Filter, RecordBody, SavedImages, Store, build_record};
use linesight::serve::records::pull_json;

/// A realistic inspection record: failed, actuated, with image and heat-map digests.
fn inspection(clock: &StationClock, part_id: u64) -> RecordBody {
    let outcome = PartOutcome {
        part_id: PartId(part_id),
        captured_at: StationTime(Duration::from_millis(part_id * 100)),
        gate_at: StationTime(Duration::from_millis(part_id * 100 + 1200)),
        decided_at: StationTime(Duration::from_millis(part_id * 100 + 1195)),
        disposition: Disposition::RejectFailed,
        inspection: None,
        inspection_late: false,
        actuation: Actuation::Done {
            at: StationTime(Duration::from_millis(part_id * 100 + 1196)),
        },
    };
    let digest = format!("{:064x}", part_id);
    let saved = SavedImages {
        image: Some(digest.clone()),
        heat_map: Some(digest),
        views: Vec::new(),
    };
    let mut record = build_record(clock, &outcome, saved);
    record.verdict = Some(linesight::part::Verdict::Fail);
    record.score = Some(0.87);
    record.threshold = Some(0.5);
    record.model_version = Some("defect-net-sim@5fb28c4f1789".into());
    record.work_order = Some("WO-2026-0042".into());
    record.product = Some("bracket-a".into());
    RecordBody::Inspection(record)
}

/// A store holding `n` inspection records, in its own temporary folder.
fn filled_store(
    runtime: &tokio::runtime::Runtime,
    clock: &StationClock,
    n: u64,
) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "bench-1").expect("store");
    runtime.block_on(async {
        for start in (0..n).step_by(5_000) {
            let bodies = (start..(start + 5_000).min(n))
                .map(|id| inspection(clock, id))
                .collect();
            store.append_all(bodies).await.expect("fill");
        }
    });
    (dir, store)
}

fn records(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let clock = StationClock::start();
    const BATCH: usize = 512;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "bench-1").expect("store");
    let mut next_part = 0u64;
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("ingest_512_inspections_one_flush", |b| {
        b.iter(|| {
            let bodies: Vec<RecordBody> = (0..BATCH as u64)
                .map(|i| inspection(&clock, next_part + i))
                .collect();
            next_part += BATCH as u64;
            runtime.block_on(store.append_all(bodies)).expect("append")
        })
    });

    let (_dir, store) = filled_store(&runtime, &clock, 100_000);
    const PAGE: usize = 5_000;
    group.throughput(Throughput::Elements(PAGE as u64));
    let mut from = 1u64;
    group.bench_function("pull_json_page_5000", |b| {
        b.iter(|| {
            let page = store.pull(from, PAGE, &Filter::default()).expect("pull");
            from = if page.more { page.next_seq } else { 1 };
            pull_json(&store, &page)
        })
    });
    group.finish();

    // Archiving holds the writer lock for one chunk: how long appends wait at most.
    let mut group = c.benchmark_group("record");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("archive_chunk_10000", |b| {
        b.iter_batched(
            || filled_store(&runtime, &clock, 10_000),
            |(dir, store)| {
                let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
                let report = runtime
                    .block_on(store.archive_before(cutoff, &dir.path().join("archive")))
                    .expect("archive");
                assert_eq!(report.map(|r| r.records), Some(10_000));
                (dir, store)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
