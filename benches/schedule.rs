//! Schedule impact for 200 open work orders: the projection before and after a defect
//! excursion and a stop, and the impact of each order with its cause and sentence, in the
//! planned time of a two-shift week with breaks (work waits through nights and the weekend:
//! the queue reaches weeks ahead). The target: at most 10 ms.

use std::hint::black_box;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use linesight::analyse::ShiftCalendar;
use linesight::analyse::schedule::{LineRate, OrderInput, RateSource, Settings, impacts, schedule};
use linesight::analyse::shifts::{BreakSection, ShiftSection, Weekday};
use linesight::record::WorkOrder;

const ORDERS: usize = 200;

fn line(effectiveness: f64, yield_ratio: f64, running: bool) -> LineRate {
    LineRate {
        source: RateSource::Recent,
        effectiveness,
        yield_ratio,
        running_minutes: 15,
        running,
        stopped_since: None,
        note: String::new(),
    }
}

fn orders(now: DateTime<Utc>) -> Vec<OrderInput> {
    (0..ORDERS)
        .map(|i| OrderInput {
            order: WorkOrder {
                id: format!("WO-{i:04}"),
                product: format!("product-{}", i % 7),
                quantity: 200 + (i as u64 * 37) % 900,
                due: now + TimeDelta::minutes(45 * (i as i64 + 1)),
                ideal_cycle_time_s: 0.5 + (i % 5) as f64 * 0.25,
            },
            good_so_far: if i == 0 { 120 } else { 0 },
            running: i == 0,
        })
        .collect()
}

/// Weekdays 06:00–14:00 and 14:00–22:00, each with a 30-min break.
fn two_shifts() -> ShiftCalendar {
    let weekdays = Weekday::ALL[..5].to_vec();
    let shift = |name: &str, start: &str, end: &str, pause: &str, resume: &str| ShiftSection {
        name: name.into(),
        start: start.into(),
        end: end.into(),
        days: weekdays.clone(),
        breaks: vec![BreakSection {
            start: pause.into(),
            end: resume.into(),
        }],
    };
    let shifts = [
        shift("early", "06:00", "14:00", "10:00", "10:30"),
        shift("late", "14:00", "22:00", "18:00", "18:30"),
    ];
    ShiftCalendar::build(&shifts, 60).expect("a valid calendar")
}

fn bench(c: &mut Criterion) {
    let calendar = two_shifts();
    let now: DateTime<Utc> = "2024-05-06T08:00:00Z".parse().expect("time");
    let later = now + TimeDelta::minutes(20);
    let queue = orders(now);
    let settings = Settings::default();
    c.bench_function("schedule impact, 200 orders (excursion and stop)", |b| {
        b.iter(|| {
            let before = schedule(
                black_box(&queue),
                &line(0.95, 0.98, true),
                now,
                &calendar,
                &settings,
            );
            let after = schedule(
                black_box(&queue),
                &line(0.95, 0.91, false),
                later,
                &calendar,
                &settings,
            );
            let events = impacts(&before, &after, &calendar, settings.impact_threshold_s);
            assert_eq!(events.len(), ORDERS);
            black_box(events)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
