//! A month of KPIs for one station, release build: `cargo bench --bench kpis` (issue 15's
//! target: ≤ 100 ms).
//!
//! The month: 30 days at 120 parts/min in three 8-hour shifts a day, each with a 30-minute
//! break (the line stands), a 20-minute stop every day, six work orders of five days each, and
//! five defect classes: 43,200 minutes, about 4.9 million parts. Asked for: the KPIs per shift
//! (90 runs) and per work order, and the defect Pareto, as `GET /api/v1/kpis` and
//! `GET /api/v1/pareto` compute them. Measured twice: from buckets in memory (the
//! computation), and from the analysis database on disk (what a request costs).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use linesight::analyse::shifts::{BreakSection, ShiftSection, Weekday};
use linesight::analyse::{
    Counts, KpiInput, MinuteBucket, Period, ProductionCounts, ProductionPlan, Range, ShiftCalendar,
    WorkOrderSpan,
};

const DAYS: i64 = 30;
const CLASSES: [&str; 5] = ["scratch", "dent", "crack", "stain", "unclassified"];

fn shift(name: &str, start: &str, end: &str, pause: &str, pause_end: &str) -> ShiftSection {
    ShiftSection {
        name: name.into(),
        start: start.into(),
        end: end.into(),
        days: Weekday::ALL.to_vec(),
        breaks: vec![BreakSection {
            start: pause.into(),
            end: pause_end.into(),
        }],
    }
}

fn plan() -> ProductionPlan {
    let shifts = [
        shift("early", "06:00", "14:00", "10:00", "10:30"),
        shift("late", "14:00", "22:00", "18:00", "18:30"),
        shift("night", "22:00", "06:00", "02:00", "02:30"),
    ];
    ProductionPlan {
        calendar: Arc::new(ShiftCalendar::build(&shifts, 60).expect("calendar")),
        ideal_cycle_s: Some(0.5),
        stop_after_s: 5.0,
        running_tag: None,
    }
}

fn start() -> DateTime<Utc> {
    "2024-05-01T00:00:00Z".parse().expect("time")
}

/// The month's buckets, by minute, and its work orders.
fn month(plan: &ProductionPlan) -> (Vec<MinuteBucket>, Vec<WorkOrderSpan>) {
    let first = start().timestamp() / 60;
    let orders: Vec<WorkOrderSpan> = (0..6)
        .map(|i| WorkOrderSpan {
            id: format!("WO-2024-{i:04}"),
            started_at: Some(start() + Duration::days(5 * i)),
            completed_at: Some(start() + Duration::days(5 * (i + 1))),
            ideal_cycle_s: Some(0.5),
        })
        .collect();
    let mut buckets = Vec::new();
    for m in first..first + DAYS * 1440 {
        let slot = plan.calendar.slot(m);
        // The line stands in breaks and for 20 minutes after 08:00 UTC every day.
        if !slot.planned() || (480..500).contains(&(m - first).rem_euclid(1440)) {
            continue;
        }
        let rejected = (m % 7) as u64;
        let class = CLASSES[(m % 5) as usize];
        let escape = u64::from(m % 97 == 0);
        buckets.push(MinuteBucket {
            minute: m,
            work_order: Some(orders[((m - first) / (5 * 1440)) as usize].id.clone()),
            counts: Counts {
                inspected: 120,
                passed: 120 - rejected,
                rejected_failed: rejected.saturating_sub(1),
                rejected_error: 0,
                rejected_no_verdict: rejected.min(1),
                first_pass_good: 120 - rejected - escape,
                first_ms: 0,
                last_ms: 59_500,
                defects: if rejected + escape > 0 {
                    vec![(class.to_owned(), rejected + escape)]
                } else {
                    Vec::new()
                },
            },
        });
    }
    (buckets, orders)
}

fn kpis(c: &mut Criterion) {
    let plan = plan();
    let (buckets, orders) = month(&plan);
    let parts: u64 = buckets.iter().map(|b| b.counts.inspected).sum();
    eprintln!("a month: {} buckets, {parts} parts", buckets.len());
    let end = start() + Duration::days(DAYS);
    let range = Range::new(start(), end, end);
    let ask = |buckets: &[MinuteBucket]| {
        let input = KpiInput {
            plan: &plan,
            buckets,
            work_orders: &orders,
            external_stops: &[],
        };
        let shifts = input.report(range, Period::Shift);
        let work_orders = input.report(range, Period::WorkOrder);
        let pareto = input.pareto(range, None);
        assert_eq!(shifts.periods.len(), 91);
        assert_eq!(work_orders.periods.len(), 6);
        assert_eq!(pareto.classes.len(), CLASSES.len());
        (shifts, work_orders, pareto)
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let counts = ProductionCounts::open(dir.path()).expect("counts");
    counts.write_buckets(&buckets).expect("write");

    let mut group = c.benchmark_group("kpis");
    group.sample_size(20);
    group.bench_function("month_per_shift_and_work_order_and_pareto_in_memory", |b| {
        b.iter(|| ask(&buckets))
    });
    group.bench_function("month_per_shift_and_work_order_and_pareto_from_disk", |b| {
        b.iter(|| {
            let read = counts
                .buckets(range.from_minute, range.to_minute)
                .expect("read");
            ask(&read)
        })
    });
    group.finish();
}

criterion_group!(benches, kpis);
criterion_main!(benches);
