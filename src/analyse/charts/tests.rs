//! Chart definitions and their checks; charts computed from a sensor store and production
//! counts built in a temporary folder.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::analyse::spc::{ChartDetails, RuleId};
use crate::analyse::{Counts, MinuteBucket, ProductionCounts, ProductionPlan};
use crate::sense::{Incoming, SensorsSection};

/// 2025-12-01T08:00:00Z, a Monday: a whole hour (and a whole UTC day minus eight hours).
pub(crate) const T0: i64 = 1_764_576_000_000;

const HOUR: i64 = 3_600_000;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("in range")
}

fn definitions(text: &str) -> Vec<ChartDefinition> {
    #[derive(serde::Deserialize)]
    struct File {
        charts: Vec<ChartDefinition>,
    }
    toml::from_str::<File>(text).expect("parses").charts
}

/// A tag sampled every 10 s, valid in [0, 1000], with the stuck and spike checks off (the
/// test data are smooth on purpose), and a specification.
fn oven() -> TagConfig {
    toml::from_str(
        "name = \"oven\"\nperiod_ms = 10000\nvalid_range = [0.0, 1000.0]\nspec_limits = [150.0, 210.0]\nstuck_after = 0\nspike_sigma = 0.0\n",
    )
    .expect("tag")
}

fn sources(dir: &std::path::Path) -> ChartSources {
    ChartSources {
        production: Production {
            counts: ProductionCounts::open(dir).expect("counts"),
            plan: Arc::new(ProductionPlan::default()),
        },
        sensors: Some(
            Sensors::open(dir, SensorsSection::default(), vec![oven()]).expect("sensors"),
        ),
    }
}

/// A small, repeatable wobble in [-1, 1]: minute means that vary without a trend.
fn wobble(i: i64) -> f64 {
    ((i * 7919) % 13) as f64 / 6.0 - 1.0
}

/// Six samples a minute for `minutes` minutes from T0: minute m's samples average
/// 180 + wobble(m) (+ `last_shift` in the last minute); a sample of 5000 (bad: outside the
/// valid range) sits in minute 10 and must change nothing.
fn ingest_oven(sensors: &Sensors, minutes: i64, last_shift: f64) {
    let mut batch = Vec::new();
    for m in 0..minutes {
        let shift = if m == minutes - 1 { last_shift } else { 0.0 };
        for s in 0..6 {
            let spread = [-0.3, 0.3, -0.1, 0.1, -0.2, 0.2][s as usize];
            batch.push(Incoming {
                tag: "oven".into(),
                at: at(T0 + m * 60_000 + s * 10_000),
                value: Some(180.0 + wobble(m) + shift + spread),
            });
        }
        if m == 10 {
            batch.push(Incoming {
                tag: "oven".into(),
                at: at(T0 + m * 60_000 + 55_000),
                value: Some(5000.0),
            });
        }
    }
    let report = sensors
        .store
        .ingest_at(&batch, at(T0 + 86_400_000))
        .expect("ingest");
    assert_eq!(report.accepted, batch.len());
    assert_eq!(
        report.flagged.get(&Flag::OutOfRange).copied().unwrap_or(0),
        1,
        "{report:?}"
    );
}

#[test]
fn definitions_parse_with_defaults_and_resolve() {
    let charts = definitions(
        r#"
        [[charts]]
        name = "reject_rate"
        of = "reject_rate"

        [[charts]]
        name = "defects_daily"
        of = "defects_per_part"
        kind = "u"
        period = "day"
        window_hours = 336
        baseline = 7

        [[charts]]
        name = "oven_xbar"
        of = "tag:oven"
        kind = "xbar_r"
        subgroup_size = 4
        center = 182.0
        sigma = 1.5
        rules = ["western_electric"]

        [[charts]]
        name = "oven_ewma"
        of = "tag:oven"
        kind = "ewma"
        lambda = 0.1
        l = 2.7
        "#,
    );
    assert_eq!(check_definitions(&charts, &[oven()]), vec![]);
    let reject = charts[0].request().expect("valid");
    assert_eq!(reject.kind, ChartKind::LaneyP);
    assert_eq!(reject.period, ChartPeriod::Hour);
    assert_eq!(reject.rules, RuleSet::default());
    assert_eq!(charts[0].window().expect("window"), TimeDelta::hours(24));
    let defects = charts[1].request().expect("valid");
    assert_eq!(defects.kind, ChartKind::U);
    assert_eq!(defects.period, ChartPeriod::Day);
    assert_eq!(defects.limits, Limits::Estimated { baseline: Some(7) });
    let xbar = charts[2].request().expect("valid");
    assert_eq!(xbar.subgroup_size, 4);
    assert_eq!(
        xbar.limits,
        Limits::Fixed {
            center: 182.0,
            sigma: 1.5
        }
    );
    assert_eq!(
        xbar.rules.iter().collect::<Vec<_>>(),
        [RuleId::We1, RuleId::We2, RuleId::We3, RuleId::We4]
    );
    assert_eq!(charts[2].window().expect("window"), TimeDelta::hours(8));
    let ewma = charts[3].request().expect("valid");
    assert_eq!((ewma.ewma.lambda, ewma.ewma.l), (0.1, 2.7));
}

#[test]
fn every_problem_is_named_with_its_field() {
    let charts = definitions(
        r#"
        [[charts]]
        name = "Bad Name"
        of = "scrap"

        [[charts]]
        name = "a"
        of = "reject_rate"
        kind = "u"
        window_hours = 0
        rules = ["nelson_9"]

        [[charts]]
        name = "a"
        of = "tag:nowhere"

        [[charts]]
        name = "reject-rate"
        of = "tag:oven"
        kind = "xbar_s"
        period = "hour"
        subgroup_size = 30
        lambda = 0.5

        [[charts]]
        name = "fixed"
        of = "reject_rate"
        kind = "p"
        center = 1.5
        baseline = 3

        [[charts]]
        name = "half"
        of = "tag:oven"
        sigma = 2.0

        [[charts]]
        name = "long"
        of = "tag:oven"
        window_hours = 720
        "#,
    );
    let problems = check_definitions(&charts, &[oven()]);
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "charts[0].name",
            "charts[0].of",
            "charts[1].window_hours",
            "charts[1].rules",
            "charts[1].kind",
            "charts[2].name",
            "charts[2].of",
            "charts[3].name",
            "charts[3].period",
            "charts[3].lambda",
            "charts[3].subgroup_size",
            "charts[4].sigma",
            "charts[5].center",
            "charts[6].window_hours",
        ],
        "{problems:#?}"
    );
    let message = |field: &str| {
        problems
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    assert!(
        message("charts[1].kind").contains("p, laney_p"),
        "{problems:?}"
    );
    assert!(
        message("charts[1].rules").contains("nelson_9"),
        "{problems:?}"
    );
    assert!(
        message("charts[2].name").contains("defined twice"),
        "{problems:?}"
    );
    assert!(message("charts[2].of").contains("nowhere"), "{problems:?}");
    assert!(
        message("charts[3].name").contains("reserved"),
        "{problems:?}"
    );
    assert!(
        message("charts[3].subgroup_size").contains("2 to 25"),
        "{problems:?}"
    );
    assert!(
        message("charts[6].window_hours").contains("43200"),
        "{problems:?}"
    );
    // Unknown fields are refused by the parser.
    assert!(
        toml::from_str::<ChartDefinition>("name = \"a\"\nof = \"reject_rate\"\nwindow = 3\n")
            .is_err()
    );
}

#[test]
fn a_tag_whose_last_minute_shifts_breaks_nelson_1_there_and_bad_samples_stay_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    let sensors = sources.sensors.clone().expect("sensors");
    ingest_oven(&sensors, 60, 8.0);
    let definition = &definitions(
        r#"
        [[charts]]
        name = "oven"
        of = "tag:oven"
        window_hours = 1
        baseline = 50
        "#,
    )[0];
    let chart = evaluate(definition, &sources, at(T0 + 3_600_000), None).expect("chart");
    assert_eq!(chart.kind, ChartKind::Individuals);
    assert_eq!(chart.points.len(), 60);
    // The bad sample of 5000 never entered minute 10's mean.
    assert!((chart.points[10].value - (180.0 + wobble(10))).abs() < 1e-9);
    assert_eq!(chart.points[0].at, Some(at(T0)));
    let capability = chart.capability.expect("the tag's spec limits give Cp/Cpk");
    assert_eq!(
        (capability.lower, capability.upper),
        (Some(150.0), Some(210.0))
    );
    let message = latest_violation(&chart).expect("the newest point breaks Nelson 1");
    assert!(message.contains("Nelson 1"), "{message}");
    assert!(chart.points[59].rules.contains(&RuleId::Nelson1));
    // An hour ending a minute earlier: the shift is not in it, nothing is broken now.
    let before = evaluate(definition, &sources, at(T0 + 3_540_000), None).expect("chart");
    assert_eq!(before.points.len(), 59);
    assert_eq!(latest_violation(&before), None);
    // A window override: the last ten minutes only, too few for a baseline of 50.
    let short = evaluate(
        definition,
        &sources,
        at(T0 + 3_600_000),
        Some(TimeDelta::minutes(10)),
    );
    assert!(
        matches!(
            short,
            Err(ChartError::Spc(SpcError::InvalidBaseline { .. }))
        ),
        "{short:?}"
    );
}

#[test]
fn subgroups_are_made_of_good_samples_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    ingest_oven(sources.sensors.as_ref().expect("sensors"), 20, 0.0);
    let mut request = ChartRequest::new(ChartOf::Tag("oven".into()), Some(ChartKind::XbarS));
    request.subgroup_size = 4;
    let chart = compute(&request, &sources, at(T0), at(T0 + 20 * 60_000)).expect("chart");
    // 120 good samples (the bad one skipped) in subgroups of 4.
    assert_eq!(chart.points.len(), 30);
    assert!(chart.points.iter().all(|p| p.n == Some(4)));
    assert!(chart.points.iter().all(|p| p.value < 200.0));
    assert!(matches!(chart.details, ChartDetails::Subgroups { .. }));
    // Minute 10's samples and the bad one: the subgroup holding minute 10 stays near 180.
    request.subgroup_size = 7;
    let chart = compute(&request, &sources, at(T0), at(T0 + 20 * 60_000)).expect("chart");
    assert_eq!(chart.points.len(), 120 / 7);
    assert!(chart.points.iter().all(|p| p.value < 200.0));
}

#[test]
fn tag_charts_say_why_they_cannot_be_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    let request = ChartRequest::new(ChartOf::Tag("oven".into()), None);
    let empty = compute(&request, &sources, at(T0), at(T0 + 3_600_000));
    assert!(
        matches!(&empty, Err(ChartError::NoData(m)) if m.contains("oven")),
        "{empty:?}"
    );
    let unknown = ChartRequest::new(ChartOf::Tag("press".into()), None);
    assert!(matches!(
        compute(&unknown, &sources, at(T0), at(T0 + 3_600_000)),
        Err(ChartError::UnknownTag(name)) if name == "press"
    ));
    let long = compute(&request, &sources, at(T0), at(T0 + 15 * 86_400_000));
    assert!(
        matches!(long, Err(ChartError::TooManyPoints { points: 21_600 })),
        "{long:?}"
    );
    let no_sensors = ChartSources {
        sensors: None,
        ..sources.clone()
    };
    assert!(matches!(
        compute(&request, &no_sensors, at(T0), at(T0 + 3_600_000)),
        Err(ChartError::NoSensors)
    ));
}

/// Four minutes of each of 24 hours from T0: 250 parts a minute (1000 an hour), about 2 %
/// rejected, and 80 rejected in hour 23 (8 %). Minute 1 of each hour also has parts of a
/// work order, which count with the rest.
fn hourly_buckets() -> Vec<MinuteBucket> {
    let mut buckets = Vec::new();
    for hour in 0..24i64 {
        let rejected_per_hour = if hour == 23 { 80 } else { 16 + (hour * 5) % 9 };
        for m in 0..4i64 {
            let minute = T0 / 60_000 + hour * 60 + m;
            let rejected = rejected_per_hour / 4 + i64::from(m < rejected_per_hour % 4);
            let counts = |inspected: u64, rejected: u64| Counts {
                inspected,
                passed: inspected - rejected,
                rejected_failed: rejected,
                first_pass_good: inspected - rejected,
                defects: vec![("dent".into(), rejected), ("scratch".into(), 1)],
                ..Counts::default()
            };
            buckets.push(MinuteBucket {
                minute,
                work_order: None,
                counts: counts(if m == 1 { 200 } else { 250 }, rejected as u64),
            });
            if m == 1 {
                buckets.push(MinuteBucket {
                    minute,
                    work_order: Some("WO-1".into()),
                    counts: counts(50, 0),
                });
            }
        }
    }
    buckets
}

#[test]
fn the_reject_rate_is_charted_per_hour_and_a_bad_last_hour_is_the_latest_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    sources
        .production
        .counts
        .write_buckets(&hourly_buckets())
        .expect("buckets");
    let definition = &definitions(
        "[[charts]]\nname = \"rejects\"\nof = \"reject_rate\"\nkind = \"p\"\nbaseline = 20\n",
    )[0];
    // A window that starts mid-hour still gets whole hours: the first point is 08:00.
    let to = at(T0 + 24 * 3_600_000);
    let chart = evaluate(
        definition,
        &sources,
        to,
        Some(TimeDelta::minutes(24 * 60 - 30)),
    )
    .expect("chart");
    assert_eq!(chart.kind, ChartKind::P);
    assert_eq!(chart.points.len(), 24);
    assert_eq!(chart.points[0].at, Some(at(T0)));
    assert!(chart.points.iter().all(|p| p.n == Some(1000)));
    assert!((chart.points[23].value - 0.08).abs() < 1e-12);
    let message = latest_violation(&chart).expect("hour 23 is out of control");
    assert!(message.contains("Nelson 1"), "{message}");
    // Laney's p′ over the same hours (the default kind).
    let laney = ChartRequest::new(ChartOf::RejectRate, None);
    let chart = compute(&laney, &sources, at(T0), to).expect("chart");
    assert_eq!(chart.kind, ChartKind::LaneyP);
    assert!(matches!(chart.details, ChartDetails::Attribute { .. }));
    // Defects per part: every class counts (rejects as dents, one scratch per minute).
    let mut defects = ChartRequest::new(ChartOf::DefectsPerPart, Some(ChartKind::U));
    defects.period = ChartPeriod::Day;
    let chart = compute(&defects, &sources, at(T0), to).expect("chart");
    // 08:00 to 08:00: two UTC days, 16 hours and 8.
    assert_eq!(chart.points.len(), 2);
    assert_eq!(chart.points[0].n, Some(16_000));
    let day_one: i64 = (0..16).map(|h| 16 + (h * 5) % 9 + 5).sum();
    assert!((chart.points[0].value - day_one as f64 / 16_000.0).abs() < 1e-12);
    // Shifts: the default calendar is one all-day shift from midnight.
    defects.period = ChartPeriod::Shift;
    let chart = compute(&defects, &sources, at(T0), to).expect("chart");
    assert_eq!(chart.points.len(), 2);
    // Nothing inspected: says so.
    let empty = compute(&laney, &sources, at(T0 - 86_400_000), at(T0));
    assert!(
        matches!(&empty, Err(ChartError::NoData(m)) if m.contains("no hour")),
        "{empty:?}"
    );
}

#[test]
fn latest_violation_reads_only_the_newest_included_point() {
    let observations: Vec<Observation> = [10.0, 10.5, 9.5, 10.2, 9.8, 30.0, 10.1, 9.9]
        .iter()
        .map(|&value| Observation {
            at: None,
            value,
            excluded: false,
        })
        .collect();
    let options = ChartOptions {
        limits: Limits::Fixed {
            center: 10.0,
            sigma: 0.5,
        },
        ..ChartOptions::default()
    };
    let chart = spc::individuals_chart(&observations, &options).expect("chart");
    assert!(!chart.violations.is_empty());
    assert_eq!(latest_violation(&chart), None);
    // The outlier last, then set aside: an excluded point is not the newest included one.
    let mut last = observations[..6].to_vec();
    assert!(latest_violation(&spc::individuals_chart(&last, &options).expect("chart")).is_some());
    last.push(Observation {
        at: None,
        value: 50.0,
        excluded: true,
    });
    assert!(latest_violation(&spc::individuals_chart(&last, &options).expect("chart")).is_some());
    // The next included point is back at the centre, but its moving range (from 30) breaks
    // the moving-range chart's limit: that counts too.
    last.push(Observation {
        at: None,
        value: 10.0,
        excluded: false,
    });
    let message = latest_violation(&spc::individuals_chart(&last, &options).expect("chart"))
        .expect("the moving range is out");
    assert!(message.contains("secondary chart"), "{message}");
    last.push(Observation {
        at: None,
        value: 10.1,
        excluded: false,
    });
    assert_eq!(
        latest_violation(&spc::individuals_chart(&last, &options).expect("chart")),
        None
    );
}

/// A p chart of the reject rate per hour (the default window of 24 hours), limits from its
/// first 20 hours.
pub(crate) const REJECTS_CHART: &str =
    "[[charts]]\nname = \"rejects\"\nof = \"reject_rate\"\nkind = \"p\"\nbaseline = 20\n";

/// The parsed [`REJECTS_CHART`].
pub(crate) fn rejects_chart() -> ChartDefinition {
    definitions(REJECTS_CHART).remove(0)
}

/// `inspected` parts of one minute, `rejected` of them failed.
pub(crate) fn minute_of(minute: i64, inspected: u64, rejected: u64) -> MinuteBucket {
    MinuteBucket {
        minute,
        work_order: None,
        counts: Counts {
            inspected,
            passed: inspected - rejected,
            rejected_failed: rejected,
            first_pass_good: inspected - rejected,
            ..Counts::default()
        },
    }
}

/// Hours 0 to 23 from T0 with 1000 parts each, 8 to 12 rejected (p̄ = 1 % over any 20 hours
/// in a row, none near a limit: UCL 1.94 % at n = 1000), then 20 parts with 2 rejected in the
/// first minute of hour 24: 10 % against a UCL of 7.7 % at n = 20, a break of Nelson 1.
pub(crate) fn steady_hours_then_a_few_parts() -> Vec<MinuteBucket> {
    let mut buckets: Vec<MinuteBucket> = (0..24i64)
        .map(|hour| minute_of(T0 / 60_000 + hour * 60, 1000, 8 + (hour % 5) as u64))
        .collect();
    buckets.push(minute_of(T0 / 60_000 + 24 * 60, 20, 2));
    buckets
}

/// The newest point's period start.
fn newest(chart: &Chart) -> Option<DateTime<Utc>> {
    chart.points.last().and_then(|p| p.at)
}

#[test]
fn alarms_judge_completed_periods_only_and_the_last_one_until_the_next_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    sources
        .production
        .counts
        .write_buckets(&steady_hours_then_a_few_parts())
        .expect("buckets");
    let definition = &rejects_chart();
    // 20 s into hour 24. Shown up to now, its 2 rejects of 20 break Nelson 1 …
    let now = at(T0 + 24 * HOUR + 20_000);
    let shown = evaluate(definition, &sources, now, None).expect("chart");
    assert_eq!(newest(&shown), Some(at(T0 + 24 * HOUR)));
    let message = latest_violation(&shown).expect("the partial hour breaks Nelson 1");
    assert!(message.contains("Nelson 1"), "{message}");
    // … but the hour is still filling: the alarm's chart ends at its start, hour 23 is the
    // newest point, and it breaks nothing.
    let judged = evaluate_completed(definition, &sources, now, now).expect("chart");
    assert_eq!(judged.points.len(), 24);
    assert_eq!(newest(&judged), Some(at(T0 + 23 * HOUR)));
    assert_eq!(latest_violation(&judged), None);

    // The same counts once their hour is over: judged, and out of control.
    let next = at(T0 + 25 * HOUR + 20_000);
    let judged = evaluate_completed(definition, &sources, next, next).expect("chart");
    assert_eq!(newest(&judged), Some(at(T0 + 24 * HOUR)));
    let message = latest_violation(&judged).expect("the completed hour breaks Nelson 1");
    assert!(message.contains("Nelson 1"), "{message}");
    // Parts still on their way to the record at the turn of the hour: hour 24 is not
    // complete until the recording delay has passed, and hour 23 still decides.
    let delayed = at(T0 + 25 * HOUR - 3_000);
    let judged = evaluate_completed(definition, &sources, next, delayed).expect("chart");
    assert_eq!(newest(&judged), Some(at(T0 + 23 * HOUR)));
    assert_eq!(latest_violation(&judged), None);

    // Hour 25 fills with clean parts. Up to now, its partial point would be the newest and
    // clear the excursion; the alarm's chart keeps hour 24 newest until hour 25 is over.
    sources
        .production
        .counts
        .write_buckets(&[minute_of(T0 / 60_000 + 25 * 60 + 5, 20, 0)])
        .expect("bucket");
    let later = at(T0 + 25 * HOUR + 30 * 60_000);
    let shown = evaluate(definition, &sources, later, None).expect("chart");
    assert_eq!(newest(&shown), Some(at(T0 + 25 * HOUR)));
    assert_eq!(latest_violation(&shown), None);
    let judged = evaluate_completed(definition, &sources, later, later).expect("chart");
    assert_eq!(newest(&judged), Some(at(T0 + 24 * HOUR)));
    assert!(latest_violation(&judged).is_some());
    // Once hour 25 is over, it is judged: 0 of 20 rejected breaks nothing.
    let after = at(T0 + 26 * HOUR + 20_000);
    let judged = evaluate_completed(definition, &sources, after, after).expect("chart");
    assert_eq!(newest(&judged), Some(at(T0 + 25 * HOUR)));
    assert_eq!(latest_violation(&judged), None);
}

/// Ended at the start of the current period, an alarm's chart still holds as many points as the
/// chart up to now: a day chart over 24 hours has yesterday and the day before (up to now it
/// had the day before's last hours and today's first), not yesterday alone, which a Laney p′
/// chart (the default) refuses as too few points.
#[test]
fn an_alarms_chart_holds_the_periods_its_window_began_in_and_ended_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = sources(dir.path());
    const DAY: i64 = 24 * HOUR;
    // Sunday and Monday at 20:00 UTC, Tuesday at 08:00 (T0 is a Monday, 08:00).
    let buckets: Vec<MinuteBucket> = [(T0 - 12 * HOUR, 10), (T0 + 12 * HOUR, 14), (T0 + DAY, 7)]
        .iter()
        .map(|&(ms, rejected)| minute_of(ms / 60_000, 1000, rejected))
        .collect();
    sources
        .production
        .counts
        .write_buckets(&buckets)
        .expect("buckets");
    let daily = definitions(
        "[[charts]]\nname = \"daily\"\nof = \"reject_rate\"\nperiod = \"day\"\nwindow_hours = 24\n",
    )
    .remove(0);
    // Tuesday 09:00: up to now the window holds Monday's evening and Tuesday's morning.
    let now = at(T0 + DAY + HOUR);
    let shown = evaluate(&daily, &sources, now, None).expect("chart");
    assert_eq!(shown.points.len(), 2);
    let judged = evaluate_completed(&daily, &sources, now, now).expect("two completed days");
    assert_eq!(judged.points.len(), 2);
    assert_eq!(newest(&judged), Some(at(T0 - 8 * HOUR)), "Monday, complete");
}

#[test]
fn the_current_period_starts_at_the_calendars_hour_day_or_shift_run() {
    let utc = ShiftCalendar::always();
    // Monday 08:00:20 UTC.
    let now = at(T0 + 20_000);
    assert_eq!(current_period_start(ChartPeriod::Hour, &utc, now), at(T0));
    assert_eq!(
        current_period_start(ChartPeriod::Day, &utc, now),
        at(T0 - 8 * HOUR)
    );
    // The default calendar is one all-day shift from midnight.
    assert_eq!(
        current_period_start(ChartPeriod::Shift, &utc, now),
        at(T0 - 8 * HOUR)
    );
    // Half an hour ahead of UTC: local hours start at half past UTC hours.
    let ahead = ShiftCalendar::build(&[], 30).expect("calendar");
    assert_eq!(
        current_period_start(ChartPeriod::Hour, &ahead, now),
        at(T0 - 30 * 60_000)
    );
    // Weekdays 06:00–14:00 with a break 10:00–10:30: the run under way since 06:00, its break
    // included; after 14:00 no run is under way and every one before is complete.
    let early =
        ShiftCalendar::build(&[crate::analyse::shifts::test_early_shift()], 0).expect("calendar");
    assert_eq!(
        current_period_start(ChartPeriod::Shift, &early, now),
        at(T0 - 2 * HOUR)
    );
    assert_eq!(
        current_period_start(ChartPeriod::Shift, &early, at(T0 + 2 * HOUR + 15 * 60_000)),
        at(T0 - 2 * HOUR)
    );
    assert_eq!(
        current_period_start(ChartPeriod::Shift, &early, at(T0 + 7 * HOUR + 20_000)),
        at(T0 + 7 * HOUR)
    );
}
