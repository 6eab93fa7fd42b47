//! Alarm system performance as ISA-18.2 and EEMUA 191 measure it, over a stretch of the
//! transition history: a pure function, so every figure can be counted by hand in a test.
//!
//! What counts as "an alarm" is an annunciated activation: an `activated` transition that left
//! the alarm `active_unacknowledged` (one activated while shelved, suppressed or out of service
//! was not shown to anyone). Rates, floods, the priority distribution and the most frequent
//! alarms count those. Chattering counts every activation (a chattering alarm that was shelved
//! is still a badly designed alarm), and staleness follows the condition: an alarm is stale
//! when its condition stayed active for more than 24 h.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::record::{AlarmEvent, AlarmSeverity, AlarmState, Record, RecordBody};

/// The window alarm rates are counted in.
pub fn window() -> Duration {
    Duration::minutes(10)
}

/// Alarms in one window that make a flood.
pub const FLOOD_ALARMS: u64 = 10;

/// Activations of one alarm within [`chatter_window`] that make it chattering.
pub const CHATTER_ACTIVATIONS: usize = 3;

/// The window chattering is counted in.
pub fn chatter_window() -> Duration {
    Duration::seconds(60)
}

/// How long an alarm may stay active before it is stale.
pub fn stale_after() -> Duration {
    Duration::hours(24)
}

/// How many of the most frequent alarms are listed.
pub const TOP: usize = 10;

/// One transition, as the figures need it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub alarm: String,
    pub event: AlarmEvent,
    pub state: AlarmState,
    pub priority: AlarmSeverity,
}

impl TransitionEntry {
    /// The entry of a journal record, if it is an alarm transition.
    pub fn from_record(record: &Record) -> Option<TransitionEntry> {
        let RecordBody::Alarm(alarm) = &record.body else {
            return None;
        };
        Some(TransitionEntry {
            seq: record.seq,
            at: alarm.at.unwrap_or(record.recorded_at),
            alarm: alarm.alarm.clone(),
            event: alarm.event?,
            state: alarm.state,
            priority: alarm.severity,
        })
    }

    fn annunciated(&self) -> bool {
        self.event == AlarmEvent::Activated && self.state == AlarmState::ActiveUnacknowledged
    }
}

/// The performance figures of `[from, to)`, with the targets beside them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmPerformance {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Annunciated alarms in the range.
    pub alarms: u64,
    pub per_10_min: Rate,
    /// The mean rate as alarms per day.
    pub per_day: f64,
    pub floods: Floods,
    /// Alarms with at least 3 activations within 60 s.
    pub chattering: Vec<Chattering>,
    /// Alarms whose condition was active for more than 24 h in the range.
    pub stale: Vec<Stale>,
    pub priorities: Vec<PriorityShare>,
    /// The 10 most frequent alarms, most frequent first.
    pub top: Vec<Frequent>,
    pub targets: Targets,
}

/// Alarms per 10-minute window, the windows laid from `from` on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// Alarms over the range's length in 10-minute units.
    pub mean: f64,
    /// The busiest window's alarms.
    pub max: u64,
    /// Where the busiest window starts (the first of equals); absent without alarms.
    pub max_at: Option<DateTime<Utc>>,
}

/// Floods: runs of windows with at least 10 alarms each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Floods {
    pub count: u64,
    pub alarms_in_floods: u64,
    pub time_in_flood_s: i64,
    /// Share of the range spent in floods, in %.
    pub time_in_flood_pct: f64,
    pub periods: Vec<Flood>,
}

/// One flood.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flood {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub alarms: u64,
    /// The busiest window's alarms.
    pub peak: u64,
}

/// A chattering alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chattering {
    pub alarm: String,
    /// Activations in the range.
    pub activations: u64,
    /// Most activations within any 60 s.
    pub max_in_60_s: u64,
}

/// A stale alarm: one active period longer than 24 h.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stale {
    pub alarm: String,
    pub priority: AlarmSeverity,
    pub active_since: DateTime<Utc>,
    /// When it returned; absent while still active at the range's end.
    pub returned_at: Option<DateTime<Utc>>,
    /// How long it was active (to the range's end when it has not returned).
    pub active_for_s: i64,
}

/// One priority's share of the alarms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityShare {
    pub priority: AlarmSeverity,
    pub alarms: u64,
    pub share_pct: f64,
    /// EEMUA 191's share; absent for `critical`, which it counts with `high`.
    pub target_pct: Option<f64>,
}

/// One of the most frequent alarms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frequent {
    pub alarm: String,
    pub alarms: u64,
    pub share_pct: f64,
}

/// The targets ISA-18.2 and EEMUA 191 set, for the figures to be read against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Targets {
    /// EEMUA 191: about 1 alarm per 10 min per operator is manageable in steady state.
    pub per_10_min_manageable: f64,
    /// ISA-18.2: about 150 alarms a day are very likely acceptable…
    pub per_day_acceptable: f64,
    /// …about 300 a day are the most manageable.
    pub per_day_maximum: f64,
    /// 10 alarms in 10 minutes are a flood.
    pub flood_alarms_per_10_min: u64,
    /// ISA-18.2: under 1 % of the time in flood.
    pub time_in_flood_pct_max: f64,
    /// ISA-18.2: no chattering alarms.
    pub chattering_max: u64,
    /// ISA-18.2: fewer than 5 stale alarms a day.
    pub stale_per_day_max: u64,
    /// EEMUA 191: about 80 % low, 15 % medium, 5 % high priority.
    pub priority_pct: [(AlarmSeverity, f64); 3],
}

impl Default for Targets {
    fn default() -> Targets {
        Targets {
            per_10_min_manageable: 1.0,
            per_day_acceptable: 150.0,
            per_day_maximum: 300.0,
            flood_alarms_per_10_min: FLOOD_ALARMS,
            time_in_flood_pct_max: 1.0,
            chattering_max: 0,
            stale_per_day_max: 5,
            priority_pct: [
                (AlarmSeverity::Low, 80.0),
                (AlarmSeverity::Medium, 15.0),
                (AlarmSeverity::High, 5.0),
            ],
        }
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The figures of `[from, to)` from `history` (transitions oldest first; those before `from`
/// count only for staleness). An empty or reversed range gives all zeros.
pub fn performance(
    history: &[TransitionEntry],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> AlarmPerformance {
    let to = to.max(from);
    let in_range = |e: &&TransitionEntry| e.at >= from && e.at < to;
    let annunciated: Vec<&TransitionEntry> = history
        .iter()
        .filter(in_range)
        .filter(|e| e.annunciated())
        .collect();
    let alarms = annunciated.len() as u64;

    // Windows of 10 minutes from `from`; the last may be shorter.
    let span = to - from;
    let window_ms = window().num_milliseconds();
    let windows =
        usize::try_from((span.num_milliseconds() + window_ms - 1).max(0) / window_ms).unwrap_or(0);
    let mut counts = vec![0u64; windows];
    for e in &annunciated {
        let index = ((e.at - from).num_milliseconds() / window_ms) as usize;
        if let Some(count) = counts.get_mut(index) {
            *count += 1;
        }
    }
    let window_start = |i: usize| from + window() * i as i32;
    let (max, max_at) =
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .fold((0, None), |(max, at), (i, c)| {
                if *c > max {
                    (*c, Some(window_start(i)))
                } else {
                    (max, at)
                }
            });
    let mean = if span > Duration::zero() {
        alarms as f64 * window_ms as f64 / span.num_milliseconds() as f64
    } else {
        0.0
    };

    // Floods: consecutive flooded windows are one flood.
    let mut periods: Vec<Flood> = Vec::new();
    let mut previous_flooded = false;
    for (i, count) in counts.iter().enumerate() {
        let flooded = *count >= FLOOD_ALARMS;
        if flooded {
            let end = (window_start(i) + window()).min(to);
            match periods.last_mut() {
                Some(flood) if previous_flooded => {
                    flood.end = end;
                    flood.alarms += count;
                    flood.peak = flood.peak.max(*count);
                }
                _ => periods.push(Flood {
                    start: window_start(i),
                    end,
                    alarms: *count,
                    peak: *count,
                }),
            }
        }
        previous_flooded = flooded;
    }
    let time_in_flood_s: i64 = periods
        .iter()
        .map(|f| (f.end - f.start).num_seconds())
        .sum();
    let floods = Floods {
        count: periods.len() as u64,
        alarms_in_floods: periods.iter().map(|f| f.alarms).sum(),
        time_in_flood_s,
        time_in_flood_pct: if span > Duration::zero() {
            time_in_flood_s as f64 * 100.0 / span.num_seconds().max(1) as f64
        } else {
            0.0
        },
        periods,
    };

    // Chattering: every activation, per alarm.
    let mut activations: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for e in history
        .iter()
        .filter(in_range)
        .filter(|e| e.event == AlarmEvent::Activated)
    {
        activations.entry(&e.alarm).or_default().push(e.at);
    }
    let chattering = activations
        .iter()
        .filter_map(|(alarm, times)| {
            let mut most = 0;
            let mut first = 0;
            for (last, at) in times.iter().enumerate() {
                while *at - times[first] >= chatter_window() {
                    first += 1;
                }
                most = most.max(last - first + 1);
            }
            (most >= CHATTER_ACTIVATIONS).then(|| Chattering {
                alarm: (*alarm).to_owned(),
                activations: times.len() as u64,
                max_in_60_s: most as u64,
            })
        })
        .collect();

    // Staleness: active periods from the whole history, those reaching into the range.
    let mut since: BTreeMap<&str, (DateTime<Utc>, AlarmSeverity)> = BTreeMap::new();
    let mut stale = Vec::new();
    let mut stale_if_long =
        |alarm: &str, start: DateTime<Utc>, priority, end: Option<DateTime<Utc>>| {
            let until = end.unwrap_or(to);
            if until > from && until - start > stale_after() {
                stale.push(Stale {
                    alarm: alarm.to_owned(),
                    priority,
                    active_since: start,
                    returned_at: end,
                    active_for_s: (until - start).num_seconds(),
                });
            }
        };
    for e in history.iter().filter(|e| e.at < to) {
        match e.event {
            AlarmEvent::Activated => {
                since.entry(&e.alarm).or_insert((e.at, e.priority));
            }
            AlarmEvent::Returned => {
                if let Some((start, priority)) = since.remove(e.alarm.as_str()) {
                    stale_if_long(&e.alarm, start, priority, Some(e.at));
                }
            }
            _ => {}
        }
    }
    for (alarm, (start, priority)) in since {
        stale_if_long(alarm, start, priority, None);
    }

    let targets = Targets::default();
    let priorities = AlarmSeverity::ALL
        .into_iter()
        .map(|priority| {
            let n = annunciated
                .iter()
                .filter(|e| e.priority == priority)
                .count() as u64;
            PriorityShare {
                priority,
                alarms: n,
                share_pct: share(n, alarms),
                target_pct: targets
                    .priority_pct
                    .iter()
                    .find(|(p, _)| *p == priority)
                    .map(|(_, pct)| *pct),
            }
        })
        .collect();

    let mut frequency: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &annunciated {
        *frequency.entry(&e.alarm).or_default() += 1;
    }
    let mut top: Vec<Frequent> = frequency
        .into_iter()
        .map(|(alarm, n)| Frequent {
            alarm: alarm.to_owned(),
            alarms: n,
            share_pct: share(n, alarms),
        })
        .collect();
    // Most frequent first; equals by name (the map's order, kept by a stable sort).
    top.sort_by_key(|f| std::cmp::Reverse(f.alarms));
    top.truncate(TOP);

    AlarmPerformance {
        from,
        to,
        alarms,
        per_10_min: Rate { mean, max, max_at },
        per_day: mean * 144.0,
        floods,
        chattering,
        stale,
        priorities,
        top,
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    fn entry(at: i64, alarm: &str, event: AlarmEvent, priority: AlarmSeverity) -> TransitionEntry {
        let state = match event {
            AlarmEvent::Activated => AlarmState::ActiveUnacknowledged,
            _ => AlarmState::Normal,
        };
        TransitionEntry {
            seq: 0,
            at: t(at),
            alarm: alarm.into(),
            event,
            state,
            priority,
        }
    }

    fn on(at: i64, alarm: &str) -> TransitionEntry {
        entry(at, alarm, AlarmEvent::Activated, AlarmSeverity::Low)
    }

    fn off(at: i64, alarm: &str) -> TransitionEntry {
        entry(at, alarm, AlarmEvent::Returned, AlarmSeverity::Low)
    }

    #[test]
    fn rates_per_ten_minutes_counted_by_hand() {
        // One hour: windows [0,600) [600,1200) … [3000,3600).
        // 3 alarms in the first window, 5 in the third, 1 in the last: 9 in all.
        let mut history = Vec::new();
        for (i, at) in [10, 200, 599].into_iter().enumerate() {
            history.push(on(at, &format!("a{i}")));
        }
        for (i, at) in [1200, 1300, 1400, 1500, 1799].into_iter().enumerate() {
            history.push(on(at, &format!("b{i}")));
        }
        history.push(on(3599, "c"));
        // Outside the range, and not annunciated: not counted.
        history.push(on(3600, "late"));
        let mut hidden = on(100, "hidden");
        hidden.state = AlarmState::Shelved;
        history.push(hidden);
        history.sort_by_key(|e| e.at);
        let p = performance(&history, t(0), t(3600));
        assert_eq!(p.alarms, 9);
        assert_eq!(p.per_10_min.max, 5);
        assert_eq!(p.per_10_min.max_at, Some(t(1200)));
        assert!(
            (p.per_10_min.mean - 1.5).abs() < 1e-9,
            "9 alarms / 6 windows"
        );
        assert!((p.per_day - 216.0).abs() < 1e-9);
        assert_eq!(p.floods.count, 0);
        assert!(p.chattering.is_empty());
    }

    #[test]
    fn floods_merge_consecutive_windows_and_report_their_peak() {
        // Window 0: 12 alarms, window 1: 10, window 2: 3, window 3: 11. Two floods.
        let mut history = Vec::new();
        let mut add = |start: i64, n: i64| {
            for i in 0..n {
                history.push(on(start + i * 10, &format!("w{start}-{i}")));
            }
        };
        add(0, 12);
        add(600, 10);
        add(1200, 3);
        add(1800, 11);
        let p = performance(&history, t(0), t(2400));
        assert_eq!(p.alarms, 36);
        assert_eq!(p.floods.count, 2);
        assert_eq!(
            p.floods.periods,
            vec![
                Flood {
                    start: t(0),
                    end: t(1200),
                    alarms: 22,
                    peak: 12
                },
                Flood {
                    start: t(1800),
                    end: t(2400),
                    alarms: 11,
                    peak: 11
                },
            ]
        );
        assert_eq!(p.floods.alarms_in_floods, 33);
        assert_eq!(p.floods.time_in_flood_s, 1800);
        assert!((p.floods.time_in_flood_pct - 75.0).abs() < 1e-9);
    }

    #[test]
    fn three_activations_within_a_minute_are_chattering() {
        let history = vec![
            // a: 0, 30, 59 → 3 within 60 s.
            on(0, "a"),
            off(10, "a"),
            on(30, "a"),
            off(40, "a"),
            on(59, "a"),
            // b: 0, 60, 120 → never 3 within 60 s (60 s apart is outside).
            on(0, "b"),
            off(1, "b"),
            on(60, "b"),
            off(61, "b"),
            on(120, "b"),
            // c: 4 within 50 s.
            on(200, "c"),
            on(210, "c"),
            on(220, "c"),
            on(250, "c"),
        ];
        let mut history = history;
        history.sort_by_key(|e| e.at);
        let p = performance(&history, t(0), t(600));
        assert_eq!(
            p.chattering,
            vec![
                Chattering {
                    alarm: "a".into(),
                    activations: 3,
                    max_in_60_s: 3
                },
                Chattering {
                    alarm: "c".into(),
                    activations: 4,
                    max_in_60_s: 4
                },
            ]
        );
    }

    #[test]
    fn alarms_active_for_more_than_a_day_are_stale() {
        let day = 86_400;
        let history = vec![
            // Active since before the range, still active: stale.
            on(-2 * day, "old"),
            // Active 25 h, returned inside the range: stale.
            on(-day, "long"),
            off(3600 + 60, "long"),
            // Active 23 h: not stale.
            on(0, "short"),
            off(23 * 3600, "short"),
            // Stale, but returned before the range: not counted.
            on(-5 * day, "gone"),
            off(-3 * day, "gone"),
        ];
        let mut history = history;
        history.sort_by_key(|e| e.at);
        let p = performance(&history, t(0), t(day));
        let names: Vec<_> = p.stale.iter().map(|s| s.alarm.as_str()).collect();
        assert_eq!(names, ["long", "old"]);
        assert_eq!(p.stale[0].active_for_s, day + 3660);
        assert_eq!(p.stale[0].returned_at, Some(t(3660)));
        assert_eq!(p.stale[1].active_for_s, 3 * day);
        assert_eq!(p.stale[1].returned_at, None);
    }

    #[test]
    fn priorities_and_the_most_frequent_alarms() {
        let mut history = Vec::new();
        // 8 low (x ×5, y ×3), 1 medium (z), 1 high (h).
        for i in 0..5 {
            history.push(on(i * 100, "x"));
        }
        for i in 0..3 {
            history.push(on(1000 + i * 100, "y"));
        }
        history.push(entry(
            2000,
            "z",
            AlarmEvent::Activated,
            AlarmSeverity::Medium,
        ));
        history.push(entry(2100, "h", AlarmEvent::Activated, AlarmSeverity::High));
        // Twelve more alarms of one activation each, to see the list cut at 10.
        for i in 0..12 {
            history.push(on(3000 + i, &format!("n{i:02}")));
        }
        history.sort_by_key(|e| e.at);
        let p = performance(&history, t(0), t(3600));
        assert_eq!(p.alarms, 22);
        let low = &p.priorities[0];
        assert_eq!((low.priority, low.alarms), (AlarmSeverity::Low, 20));
        assert_eq!(low.target_pct, Some(80.0));
        assert_eq!(p.priorities[1].alarms, 1);
        assert_eq!(p.priorities[2].alarms, 1);
        assert_eq!(p.priorities[3].alarms, 0);
        assert_eq!(p.priorities[3].target_pct, None);
        let top: Vec<_> = p.top.iter().map(|f| (f.alarm.as_str(), f.alarms)).collect();
        assert_eq!(
            top,
            [
                ("x", 5),
                ("y", 3),
                ("h", 1),
                ("n00", 1),
                ("n01", 1),
                ("n02", 1),
                ("n03", 1),
                ("n04", 1),
                ("n05", 1),
                ("n06", 1)
            ]
        );
        assert!((p.top[0].share_pct - 500.0 / 22.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_range_is_all_zeros() {
        let p = performance(&[on(0, "a")], t(10), t(10));
        assert_eq!(p.alarms, 0);
        assert_eq!(p.per_10_min.mean, 0.0);
        assert_eq!(p.per_10_min.max_at, None);
        let reversed = performance(&[on(0, "a")], t(10), t(0));
        assert_eq!(reversed.to, reversed.from);
    }
}
