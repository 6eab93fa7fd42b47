//! Root cause over 100,000 parts × 50 tags, release build: `cargo bench --bench rootcause`
//! (issue 16's target: ≤ 1 s on the 2-core machine).
//!
//! The table: 50 numeric tags, of which four drive the defects: `press temperature` above
//! 212 °C, `zone 1 temperature` below 180 °C together with `line speed` above 30 m/min, and
//! `die pressure` outside [80, 120] bar; the other 46 are independent. About 5 % defective
//! parts. Measured: `analyse` with the default settings (bins, derived features, segments,
//! the forest and its permutation importance).

use criterion::{Criterion, criterion_group, criterion_main};
use linesight::analyse::rootcause::{Column, Settings, Table, Target, analyse};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PARTS: usize = 100_000;
const TAGS: usize = 50;

fn table() -> (Table, Target) {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut columns: Vec<Vec<f64>> = (0..TAGS).map(|_| Vec::with_capacity(PARTS)).collect();
    let mut positive = Vec::with_capacity(PARTS);
    for _ in 0..PARTS {
        for column in columns.iter_mut() {
            column.push(rng.gen_range(0.0..1.0));
        }
        let press = 190.0 + 30.0 * columns[0].last().copied().unwrap_or_default();
        let zone = 170.0 + 30.0 * columns[1].last().copied().unwrap_or_default();
        let speed = 20.0 + 20.0 * columns[2].last().copied().unwrap_or_default();
        let pressure = 70.0 + 60.0 * columns[3].last().copied().unwrap_or_default();
        *columns[0].last_mut().expect("pushed") = press;
        *columns[1].last_mut().expect("pushed") = zone;
        *columns[2].last_mut().expect("pushed") = speed;
        *columns[3].last_mut().expect("pushed") = pressure;
        let driven = (press > 212.0 && rng.gen_bool(0.1))
            || (zone < 180.0 && speed > 30.0 && rng.gen_bool(0.15))
            || (!(80.0..=120.0).contains(&pressure) && rng.gen_bool(0.05));
        positive.push(driven || rng.gen_bool(0.005));
    }
    let names = [
        "press temperature [°C]",
        "zone 1 temperature [°C]",
        "line speed [m/min]",
        "die pressure [bar]",
    ];
    let columns = columns
        .into_iter()
        .enumerate()
        .map(|(index, values)| match names.get(index) {
            Some(name) => Column::numeric(*name, values),
            None => Column::numeric(format!("tag {index:02} [u{}]", index % 7), values),
        })
        .collect();
    (
        Table {
            rows: PARTS,
            columns,
        },
        Target {
            name: "cracks".to_string(),
            positive,
        },
    )
}

fn bench(c: &mut Criterion) {
    let (table, target) = table();
    let settings = Settings::default();
    let analysis = analyse(&table, &target, &settings).expect("analysis runs");
    for finding in &analysis.findings {
        println!("{}", finding.sentence);
    }
    let mut group = c.benchmark_group("rootcause");
    group.sample_size(10);
    group.bench_function("100k parts x 50 tags", |b| {
        b.iter(|| analyse(&table, &target, &settings).expect("analysis runs"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
