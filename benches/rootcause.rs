//! Root cause over 100,000 parts × 50 tags, release build: `cargo bench --bench rootcause`
//! (issue 16's target: ≤ 1 s on the 2-core machine for 1 million samples of 50 tags and
//! 100,000 parts). Two figures: the engine on the table, and the station's whole round (the
//! samples lined up with the parts, then the engine).
//!
//! The table: 50 numeric tags, of which four drive the defects: `press temperature` above
//! 212 °C, `zone 1 temperature` below 180 °C together with `line speed` above 30 m/min, and
//! `die pressure` outside [80, 120] bar; the other 46 are independent. About 5 % defective
//! parts. Measured: `analyse` with the default settings (bins, derived features, segments,
//! the forest and its permutation importance).

use criterion::{Criterion, criterion_group, criterion_main};
use linesight::analyse::rootcause::station::{InspectedPart, TagTrace, line_up};
use linesight::analyse::rootcause::{Column, ColumnValues, Settings, Table, Target, analyse};
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

/// The bench table as the station holds it: parts every 0.5 s, and each tag sampled once a
/// second with the value the part two samples later saw (so every part finds its value).
fn station_input(table: &Table, target: &Target) -> (Vec<InspectedPart>, Vec<TagTrace>) {
    let parts: Vec<InspectedPart> = (0..PARTS)
        .map(|i| InspectedPart {
            part_id: i as u64,
            captured_ms: i as i64 * 500,
            work_order: None,
            product: None,
            defect: target.positive[i].then(|| "crack".into()),
        })
        .collect();
    let traces = table
        .columns
        .iter()
        .map(|column| {
            let ColumnValues::Numeric(values) = &column.values else {
                unreachable!("the bench table is numeric")
            };
            // One sample a second: the value of the part captured at that second.
            let t: Vec<i64> = (0..PARTS / 2).map(|k| k as i64 * 1000).collect();
            let v: Vec<f64> = (0..PARTS / 2).map(|k| values[2 * k]).collect();
            TagTrace {
                name: column.name.clone(),
                unit: column.unit.clone(),
                delay_ms: 0,
                max_age_ms: 5_000,
                t,
                v,
            }
        })
        .collect();
    (parts, traces)
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
    // The station's whole round: 1,000,000 samples of 50 tags (20,000 each, one a second over
    // the 50,000 s the parts took) lined up with 100,000 parts, then analysed.
    let (parts, traces) = station_input(&table, &target);
    group.bench_function(
        "1M samples of 50 tags lined up with 100k parts, then analysed",
        |b| {
            b.iter(|| {
                let lined_up = line_up(&parts, &traces);
                analyse(&lined_up, &target, &settings).expect("analysis runs")
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
