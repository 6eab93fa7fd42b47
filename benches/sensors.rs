//! The sensor store's speed, release build: `make bench` (issue 15's targets: ingest ≥ 200,000
//! samples/s; a day of 50 tags at 1 Hz read back in ≤ 50 ms).
//!
//! Ingest stores batches of 50 tags × 200 samples (10,000 samples: what a gateway pushes, or
//! 200 s of a 50-tag line), each flagged, written in one transaction and flushed (fsync), as
//! `POST /api/v1/samples` does. The read fetches one whole day of all 50 tags (4.32 M samples)
//! from a store holding two days, every sample with its time, value and flag.

use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use linesight::sense::{Incoming, SensorStore, TagConfig};

const TAGS: usize = 50;
const DAY_MS: i64 = 86_400_000;
/// 2026-11-30T00:00:00Z.
const T0: i64 = 1_795_996_800_000;

fn tags() -> Vec<TagConfig> {
    (0..TAGS)
        .map(|i| {
            toml::from_str(&format!(
                "name = \"tag_{i:02}\"\nperiod_ms = 1000\nvalid_range = [-1000.0, 1000.0]\n"
            ))
            .expect("valid tag")
        })
        .collect()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("in range")
}

/// `seconds` seconds of every tag at 1 Hz from `start_ms`: a noisy drifting signal.
fn batch(names: &[String], start_ms: i64, seconds: i64) -> Vec<Incoming> {
    let mut out = Vec::with_capacity(names.len() * seconds as usize);
    for s in 0..seconds {
        let t = start_ms + s * 1000;
        for (i, name) in names.iter().enumerate() {
            let phase = (t / 1000) as f64 * 0.001 + i as f64;
            out.push(Incoming {
                tag: name.clone(),
                at: at(t),
                value: Some(
                    100.0 + 10.0 * phase.sin() + ((t / 1000 * 7 + i as i64) % 13) as f64 * 0.1,
                ),
            });
        }
    }
    out
}

fn sensors(c: &mut Criterion) {
    let tags = tags();
    let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    // Far enough ahead that no benchmarked batch counts as from the future.
    let now = at(T0 + 365 * DAY_MS);

    let mut group = c.benchmark_group("sensors");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SensorStore::open(dir.path(), &tags, 60.0).expect("store");
        let mut next = T0;
        let seconds = 200;
        group.throughput(Throughput::Elements((TAGS as i64 * seconds) as u64));
        group.bench_function("ingest 50 tags × 200 samples, flushed", |b| {
            b.iter_batched(
                || {
                    let samples = batch(&names, next, seconds);
                    next += seconds * 1000;
                    samples
                },
                |samples| {
                    let report = store.ingest_at(&samples, now).expect("ingest");
                    assert_eq!(report.accepted, samples.len());
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SensorStore::open(dir.path(), &tags, 60.0).expect("store");
        // Two days, so the read starts and ends inside stored data.
        let hour = 3600;
        for h in 0..48 {
            store
                .ingest_at(&batch(&names, T0 + h * hour * 1000, hour), now)
                .expect("fill");
        }
        let (from, to) = (at(T0 + DAY_MS / 2), at(T0 + DAY_MS / 2 + DAY_MS));
        group.throughput(Throughput::Elements((TAGS as i64 * DAY_MS / 1000) as u64));
        group.bench_function("read a day of 50 tags at 1 Hz", |b| {
            b.iter(|| {
                let mut total = 0;
                for name in &names {
                    total += store.read(name, from, to).expect("read").len();
                }
                assert_eq!(total, TAGS * 86_400);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, sensors);
criterion_main!(benches);
