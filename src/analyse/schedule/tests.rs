use super::*;
use crate::analyse::production::Counts;

// Most tests project a line planned 24/7, where planned time is wall-clock time.
fn schedule(
    orders: &[OrderInput],
    line: &LineRate,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Schedule {
    super::schedule(orders, line, now, &ShiftCalendar::always(), settings)
}

fn impacts(before: &Schedule, after: &Schedule, threshold_s: f64) -> Vec<ImpactEvent> {
    super::impacts(before, after, &ShiftCalendar::always(), threshold_s)
}

fn compare_with_baselines(
    baselines: &mut HashMap<String, Arc<Schedule>>,
    schedule: &Arc<Schedule>,
    threshold_s: f64,
) -> Vec<ImpactEvent> {
    super::compare_with_baselines(baselines, schedule, &ShiftCalendar::always(), threshold_s)
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("time")
}

fn order(id: &str, quantity: u64, due: &str, cycle_s: f64) -> WorkOrder {
    WorkOrder {
        id: id.into(),
        product: "disc".into(),
        quantity,
        due: at(due),
        ideal_cycle_time_s: cycle_s,
    }
}

fn input(order: WorkOrder, good_so_far: u64, running: bool) -> OrderInput {
    OrderInput {
        order,
        good_so_far,
        running,
    }
}

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

/// A running order and one behind it, worked out by hand below.
fn two_orders() -> Vec<OrderInput> {
    vec![
        input(order("WO-A", 100, "2024-05-06T08:10:00Z", 6.0), 40, true),
        input(order("WO-B", 48, "2024-05-06T09:00:00Z", 3.0), 0, false),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn eta_slack_and_critical_ratio_by_hand() {
    let now = at("2024-05-06T08:00:00Z");
    let plan = schedule(
        &two_orders(),
        &line(1.0, 0.8, true),
        now,
        &Settings::default(),
    );
    let a = &plan.orders[0];
    // 6 s per part at full speed and 80 % yield: 8 good parts a minute; 60 left → 7.5 min.
    assert!(close(a.good_per_min, 8.0), "{}", a.good_per_min);
    assert_eq!(a.remaining_good, 60);
    assert_eq!(a.starts_needed, Some(75));
    assert_eq!(a.eta, Some(at("2024-05-06T08:07:30Z")));
    assert_eq!(a.slack_s, Some(150.0));
    assert_eq!(a.lateness_s, Some(-150.0));
    assert!(close(a.critical_ratio.expect("cr"), 600.0 / 450.0));
    // 150 s of slack is under the 15-minute margin.
    assert_eq!(a.status, OrderStatus::LateRisk);
    let b = &plan.orders[1];
    // Starts when A ends; 3 s per part at 80 %: 16 a minute, 48 → 3 min.
    assert_eq!(b.start, a.eta);
    assert_eq!(b.eta, Some(at("2024-05-06T08:10:30Z")));
    assert_eq!(b.slack_s, Some(2970.0));
    assert!(close(b.critical_ratio.expect("cr"), 3600.0 / 180.0));
    assert_eq!(b.status, OrderStatus::OnTime);
}

/// Weekdays 06:00–14:00 with a break 10:00–10:30.
fn day_shift() -> ShiftCalendar {
    ShiftCalendar::build(&[crate::analyse::shifts::test_early_shift()], 0).expect("valid")
}

#[test]
fn work_waits_for_the_next_shift_and_critical_ratio_counts_planned_time() {
    let calendar = day_shift();
    // Friday 13:55, five minutes before the weekend: WO-A needs 7.5 min, WO-B 3 min.
    let now = at("2024-05-10T13:55:00Z");
    let orders = vec![
        input(order("WO-A", 100, "2024-05-10T14:30:00Z", 6.0), 40, true),
        input(order("WO-B", 48, "2024-05-13T09:00:00Z", 3.0), 0, false),
    ];
    let plan = super::schedule(
        &orders,
        &line(1.0, 0.8, true),
        now,
        &calendar,
        &Settings::default(),
    );
    let a = &plan.orders[0];
    assert_eq!(a.eta, Some(at("2024-05-13T06:02:30Z")));
    assert_eq!(a.status, OrderStatus::Late);
    // Five planned minutes to its due time for 7.5 minutes of work.
    assert!(close(a.critical_ratio.expect("cr"), 300.0 / 450.0));
    let b = &plan.orders[1];
    assert_eq!(b.start, a.eta);
    assert_eq!(b.eta, Some(at("2024-05-13T06:05:30Z")));
    assert_eq!(b.status, OrderStatus::OnTime);
    // The same queue on a 24/7 line would be done before 14:06.
    let always = schedule(&orders, &line(1.0, 0.8, true), now, &Settings::default());
    assert_eq!(always.orders[1].eta, Some(at("2024-05-10T14:05:30Z")));
}

#[test]
fn hours_off_shift_are_no_downtime() {
    let calendar = day_shift();
    let orders = vec![input(
        order("WO-A", 1000, "2024-05-13T12:00:00Z", 6.0),
        40,
        true,
    )];
    let rate = line(1.0, 0.8, false);
    let project = |now: &str, calendar: &ShiftCalendar| {
        super::schedule(&orders, &rate, at(now), calendar, &Settings::default())
    };
    // Friday after the shift, and the same evening later: nothing made, nothing planned.
    let evening = project("2024-05-10T15:00:00Z", &calendar);
    let night = project("2024-05-10T23:00:00Z", &calendar);
    assert_eq!(evening.orders[0].eta, night.orders[0].eta);
    assert!(super::impacts(&evening, &night, &calendar, 60.0).is_empty());
    // Without the calendar, the same eight hours read as the line being down.
    let evening = project("2024-05-10T15:00:00Z", &ShiftCalendar::always());
    let night = project("2024-05-10T23:00:00Z", &ShiftCalendar::always());
    let events = super::impacts(&evening, &night, &ShiftCalendar::always(), 60.0);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].cause, Cause::Downtime, "{}", events[0].message);
}

#[test]
fn an_order_past_due_is_late_and_one_without_good_parts_cannot_finish() {
    let now = at("2024-05-06T08:09:00Z");
    let plan = schedule(
        &two_orders(),
        &line(1.0, 0.8, true),
        now,
        &Settings::default(),
    );
    assert_eq!(plan.orders[0].lateness_s, Some(390.0));
    assert_eq!(plan.orders[0].status, OrderStatus::Late);
    let nothing_good = schedule(
        &two_orders(),
        &line(1.0, 0.0, true),
        now,
        &Settings::default(),
    );
    for order in &nothing_good.orders {
        assert_eq!(order.eta, None);
        assert_eq!(order.status, OrderStatus::Late);
        assert_eq!(order.starts_needed, None);
    }
    // An order already made needs no time: done now, no critical ratio.
    let made = vec![input(
        order("WO-C", 10, "2024-05-06T09:00:00Z", 6.0),
        10,
        true,
    )];
    let done = schedule(&made, &line(1.0, 0.8, true), now, &Settings::default());
    assert_eq!(done.orders[0].eta, Some(now));
    assert_eq!(done.orders[0].critical_ratio, None);
}

#[test]
fn a_downtime_pushes_every_queued_order_by_its_length() {
    let orders: Vec<OrderInput> = (0..5)
        .map(|i| {
            input(
                order(&format!("WO-{i}"), 200, "2024-05-06T12:00:00Z", 4.0),
                0,
                i == 0,
            )
        })
        .collect();
    let settings = Settings::default();
    let before = schedule(
        &orders,
        &line(0.9, 0.95, true),
        at("2024-05-06T08:00:00Z"),
        &settings,
    );
    // Twenty minutes later, nothing made: the line stood still.
    let after = schedule(
        &orders,
        &line(0.9, 0.95, false),
        at("2024-05-06T08:20:00Z"),
        &settings,
    );
    for (was, now) in before.orders.iter().zip(&after.orders) {
        let pushed = now.lateness_s.expect("after") - was.lateness_s.expect("before");
        assert!(close(pushed, 1200.0), "{} pushed {pushed} s", now.id);
    }
    let events = impacts(&before, &after, settings.impact_threshold_s);
    assert_eq!(events.len(), 5);
    for event in &events {
        assert_eq!(event.cause, Cause::Downtime, "{}", event.message);
        assert!(close(event.downtime_min.expect("minutes"), 20.0));
        assert!(
            event
                .message
                .contains("because the line was down (20 min lost)"),
            "{}",
            event.message
        );
    }
}

#[test]
fn a_defect_excursion_is_named_with_the_new_reject_rate() {
    let orders = two_orders();
    let settings = Settings::default();
    let now = at("2024-05-06T08:00:00Z");
    let before = schedule(&orders, &line(1.0, 0.98, true), now, &settings);
    let after = schedule(&orders, &line(1.0, 0.91, true), now, &settings);
    let events = impacts(&before, &after, 1.0);
    assert!(!events.is_empty());
    for event in &events {
        assert_eq!(event.cause, Cause::RejectRateRose);
        assert!(
            event
                .message
                .ends_with("because the reject rate rose to 9 %"),
            "{}",
            event.message
        );
    }
}

#[test]
fn a_slowdown_and_a_recovery_are_told_apart() {
    let orders = two_orders();
    let settings = Settings::default();
    let now = at("2024-05-06T08:00:00Z");
    let fast = schedule(&orders, &line(1.0, 0.9, true), now, &settings);
    let slow = schedule(&orders, &line(0.8, 0.9, true), now, &settings);
    let slowed = impacts(&fast, &slow, 1.0);
    assert!(!slowed.is_empty());
    assert!(slowed.iter().all(|e| e.cause == Cause::Slowdown));
    assert!(
        slowed[0]
            .message
            .ends_with("because the line slowed to 80 % of its ideal rate (was 100 %)"),
        "{}",
        slowed[0].message
    );
    let recovered = impacts(&slow, &fast, 1.0);
    assert!(recovered.iter().all(|e| e.cause == Cause::Speedup));
    // Under the threshold: nothing to tell.
    assert!(impacts(&fast, &slow, 1e6).is_empty());
}

#[test]
fn sentences_read_as_an_operator_would_say_them() {
    let event = ImpactEvent {
        at: at("2024-05-06T08:00:00Z"),
        since: at("2024-05-06T07:30:00Z"),
        work_order: "WO-1234".into(),
        lateness_before_s: Some(-600.0),
        lateness_after_s: Some(2100.0),
        status_before: OrderStatus::LateRisk,
        status_after: OrderStatus::Late,
        cause: Cause::RejectRateRose,
        downtime_min: None,
        effectiveness_before: 1.0,
        effectiveness_after: 1.0,
        reject_rate_before: 0.02,
        reject_rate_after: 0.09,
        message: String::new(),
    };
    assert_eq!(
        sentence(&event),
        "WO-1234 now 35 min late (was 10 min early) because the reject rate rose to 9 %"
    );
    let check = |lateness: Option<f64>, expected: &str| {
        let e = ImpactEvent {
            lateness_after_s: lateness,
            cause: Cause::QueueChanged,
            ..event.clone()
        };
        assert_eq!(sentence(&e), expected);
    };
    check(
        Some(10.0),
        "WO-1234 now on time (was 10 min early) because the orders ahead of it changed",
    );
    check(
        Some(-7_500.0),
        "WO-1234 now 2 h 5 min early (was 10 min early) because the orders ahead of it changed",
    );
    check(
        Some(3.0 * 86_400.0 + 4.0 * 3600.0),
        "WO-1234 now 3 d 4 h late (was 10 min early) because the orders ahead of it changed",
    );
    check(
        None,
        "WO-1234 can no longer finish at the current rate (was 10 min early) because the orders ahead of it changed",
    );
    assert_eq!(percent(0.005), "0.5 %");
    assert_eq!(percent(0.09), "9 %");
    assert_eq!(percent(0.875), "88 %");
}

#[test]
fn a_queue_change_ahead_is_named() {
    let settings = Settings::default();
    let now = at("2024-05-06T08:00:00Z");
    let mut orders = two_orders();
    let before = schedule(&orders, &line(1.0, 0.9, true), now, &settings);
    // A big order released before WO-B's turn: nothing else changed.
    orders.insert(
        1,
        input(order("WO-X", 500, "2024-05-06T10:00:00Z", 3.0), 0, false),
    );
    let after = schedule(&orders, &line(1.0, 0.9, true), now, &settings);
    let events = impacts(&before, &after, 60.0);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].work_order, "WO-B");
    assert_eq!(events[0].cause, Cause::QueueChanged);
}

fn bucket(minute: i64, work_order: &str, inspected: u64, passed: u64) -> MinuteBucket {
    MinuteBucket {
        minute,
        work_order: Some(work_order.into()),
        counts: Counts {
            inspected,
            passed,
            first_ms: 1_000,
            last_ms: 59_000,
            ..Counts::default()
        },
    }
}

#[test]
fn the_line_rate_is_measured_over_running_minutes_only() {
    let start = at("2024-05-06T08:00:00Z").timestamp() / 60;
    // 30 minutes at 9 parts a minute (6 s ideal: 90 %), 8 good; then the line stops.
    let buckets: Vec<MinuteBucket> = (0..30).map(|m| bucket(start + m, "WO-A", 9, 8)).collect();
    let cycles = HashMap::from([("WO-A".to_owned(), 6.0)]);
    let settings = Settings::default();
    let measure =
        |as_of: &str| measure_line(&buckets, &cycles, None, 60.0, None, at(as_of), &settings);
    let running = measure("2024-05-06T08:30:10Z");
    assert_eq!(running.source, RateSource::Recent);
    assert!(running.running);
    assert!(
        close(running.effectiveness, 0.9),
        "{}",
        running.effectiveness
    );
    assert!(close(running.yield_ratio, 8.0 / 9.0));
    assert_eq!(running.running_minutes, 15);
    // Ten minutes into the stop: stopped since the last part, the rate as it was.
    let stopped = measure("2024-05-06T08:40:00Z");
    assert!(!stopped.running);
    assert_eq!(stopped.stopped_since, Some(at("2024-05-06T08:29:59Z")));
    assert!(close(stopped.effectiveness, running.effectiveness));
    // The line-running tag overrides the parts.
    let tagged = measure_line(
        &buckets,
        &cycles,
        None,
        60.0,
        Some(false),
        at("2024-05-06T08:30:10Z"),
        &settings,
    );
    assert!(!tagged.running);
    // Nothing in the lookback: the plan, said so.
    let planned = measure("2024-05-07T08:00:00Z");
    assert_eq!(planned.source, RateSource::Plan);
    assert_eq!(planned.effectiveness, 1.0);
    assert!(planned.note.contains("planned rate"), "{}", planned.note);
}

#[test]
fn a_slower_stretch_lowers_the_rate_and_the_ewma_weighs_recent_minutes_more() {
    let start = at("2024-05-06T08:00:00Z").timestamp() / 60;
    let mut buckets: Vec<MinuteBucket> =
        (0..20).map(|m| bucket(start + m, "WO-A", 10, 10)).collect();
    buckets.extend((20..30).map(|m| bucket(start + m, "WO-A", 5, 5)));
    let cycles = HashMap::from([("WO-A".to_owned(), 6.0)]);
    let rate = measure_line(
        &buckets,
        &cycles,
        None,
        60.0,
        None,
        at("2024-05-06T08:30:10Z"),
        &Settings::default(),
    );
    // Of the last 15 minutes, 10 ran at half speed: below the plain mean of 2/3.
    assert!(
        rate.effectiveness < 0.5 + 0.5 * 5.0 / 15.0,
        "{}",
        rate.effectiveness
    );
    assert!(rate.effectiveness > 0.5);
}

#[test]
fn the_queue_puts_the_running_order_first_and_counts_its_good_parts() {
    let state = |id: &str, started: Option<&str>, completed: Option<&str>| WorkOrderState {
        order: order(id, 100, "2024-05-06T12:00:00Z", 6.0),
        released_at: at("2024-05-06T07:00:00Z"),
        started_at: started.map(at),
        completed_at: completed.map(at),
    };
    let states = vec![
        state(
            "WO-1",
            Some("2024-05-06T07:01:00Z"),
            Some("2024-05-06T07:30:00Z"),
        ),
        state("WO-2", None, None),
        state("WO-3", Some("2024-05-06T07:31:00Z"), None),
        state("WO-4", None, None),
    ];
    let minute = at("2024-05-06T07:40:00Z").timestamp() / 60;
    let buckets = vec![
        bucket(minute, "WO-3", 10, 9),
        bucket(minute + 1, "WO-3", 10, 7),
    ];
    let queue = queue(&states, &buckets);
    let ids: Vec<&str> = queue.iter().map(|o| o.order.id.as_str()).collect();
    assert_eq!(ids, ["WO-3", "WO-2", "WO-4"]);
    assert!(queue[0].running);
    assert_eq!(queue[0].good_so_far, 16);
}

#[test]
fn baselines_move_only_for_orders_with_an_event() {
    let orders = two_orders();
    let settings = Settings::default();
    let mut baselines = HashMap::new();
    let first = Arc::new(schedule(
        &orders,
        &line(1.0, 0.9, true),
        at("2024-05-06T08:00:00Z"),
        &settings,
    ));
    assert!(compare_with_baselines(&mut baselines, &first, 300.0).is_empty());
    // Two minutes of stop: under the threshold, no event.
    let short = Arc::new(schedule(
        &orders,
        &line(1.0, 0.9, false),
        at("2024-05-06T08:02:00Z"),
        &settings,
    ));
    assert!(compare_with_baselines(&mut baselines, &short, 300.0).is_empty());
    // Six minutes: both orders moved past it since the first schedule.
    let long = Arc::new(schedule(
        &orders,
        &line(1.0, 0.9, false),
        at("2024-05-06T08:06:00Z"),
        &settings,
    ));
    let events = compare_with_baselines(&mut baselines, &long, 300.0);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.since == first.computed_at));
    // Measured from the event now: another minute is no event.
    let later = Arc::new(schedule(
        &orders,
        &line(1.0, 0.9, false),
        at("2024-05-06T08:07:00Z"),
        &settings,
    ));
    assert!(compare_with_baselines(&mut baselines, &later, 300.0).is_empty());
}

#[test]
fn impact_events_survive_a_restart_and_are_read_by_range() {
    use crate::analyse::{ProductionCounts, ProductionPlan};
    let dir = tempfile::tempdir().expect("tempdir");
    let orders = two_orders();
    let settings = Settings::default();
    let before = schedule(
        &orders,
        &line(1.0, 0.9, true),
        at("2024-05-06T08:00:00Z"),
        &settings,
    );
    let after = schedule(
        &orders,
        &line(1.0, 0.9, false),
        at("2024-05-06T08:30:00Z"),
        &settings,
    );
    let events = impacts(&before, &after, 300.0);
    assert_eq!(events.len(), 2);
    let open = || Production {
        counts: ProductionCounts::open(dir.path()).expect("open"),
        plan: Arc::new(ProductionPlan::default()),
    };
    {
        let production = open();
        ImpactLog::open(&production)
            .expect("log")
            .append(&events)
            .expect("append");
    }
    let production = open();
    let log = ImpactLog::open(&production).expect("log");
    let read = log
        .range(at("2024-05-06T08:00:00Z"), at("2024-05-06T09:00:00Z"), 100)
        .expect("range");
    assert_eq!(read, events);
    assert_eq!(
        log.range(at("2024-05-06T08:00:00Z"), at("2024-05-06T09:00:00Z"), 1)
            .expect("range")
            .len(),
        1
    );
    assert!(
        log.range(at("2024-05-06T08:31:00Z"), at("2024-05-06T09:00:00Z"), 100)
            .expect("range")
            .is_empty()
    );
}
