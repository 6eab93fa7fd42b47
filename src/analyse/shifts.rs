//! The shift calendar: when the line is planned to run (ISO 22400 planned busy time, PBT).
//!
//! The station TOML names shifts by local time of day and weekday, with planned breaks:
//!
//! ```toml
//! [production]
//! utc_offset_minutes = 60      # local time = UTC + 60 min (a fixed offset, see below)
//!
//! [[shifts]]
//! name = "night"
//! start = "22:00"
//! end = "06:00"                # before the start: the shift crosses midnight
//! days = ["sun", "mon", "tue", "wed", "thu"]   # the day each shift *starts* on
//! [[shifts.breaks]]
//! start = "02:00"
//! end = "02:30"
//! ```
//!
//! Local time is UTC plus a fixed `utc_offset_minutes`, not an IANA zone: a fixed offset is
//! all a per-minute calendar needs, and it keeps time-zone data off the station. A plant that
//! changes to daylight saving time edits the offset (the change applies to every range asked
//! for afterwards, including past ones).
//!
//! [`ShiftCalendar`] turns the sections into one table of the 10,080 minutes of a local week,
//! so "is this minute planned, in which shift, on a break?" is one lookup; a month of minute
//! buckets is then walked in microseconds. No shifts configured means every minute is planned
//! (24/7), as one all-day shift named [`ALL_DAY`].

use serde::Deserialize;

/// Minutes in a day and in a week; milliseconds in a minute.
const DAY: i64 = 1440;
const WEEK: i64 = 7 * DAY;
const MINUTE_MS: i64 = 60_000;

/// The shift of a station without a shift calendar: every minute of every day.
pub const ALL_DAY: &str = "24/7";

/// A shift as written in the station TOML (`[[shifts]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftSection {
    /// Shown in the KPIs per shift; unique.
    pub name: String,
    /// Local time of day, `HH:MM`.
    pub start: String,
    /// Local time of day, `HH:MM` (`24:00` for midnight at the end). At or before `start`: the
    /// shift ends the next day.
    pub end: String,
    /// The days the shift starts on; default every day.
    #[serde(default = "every_day")]
    pub days: Vec<Weekday>,
    /// Planned breaks: planned downtime, not part of the planned busy time.
    #[serde(default)]
    pub breaks: Vec<BreakSection>,
}

/// A planned break inside a shift (`[[shifts.breaks]]`), by local time of day.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakSection {
    pub start: String,
    pub end: String,
}

/// The station TOML's `[production]` section: master data for the KPIs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductionSection {
    /// The ideal cycle time per part (ISO 22400 PRU, planned run time per unit). Default on
    /// the simulated line: 60 000 / `camera.simulator.parts_per_min`. Without it (and without
    /// a work order that gives one) effectiveness and OEE are not computed.
    pub ideal_cycle_ms: Option<f64>,
    /// No part for this long inside planned time counts as down time (ADOT). Default 10 ideal
    /// cycles, or 60 s without an ideal cycle time.
    pub stop_after_s: Option<f64>,
    /// Local time (of the shift calendar, hours and days) = UTC + this.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// A sensor tag that says whether the line runs (≥ 0.5: running, < 0.5: stopped); its
    /// stopped stretches in planned time are down time, beside the stops seen as missing parts.
    pub running_tag: Option<String>,
}

/// A day of the week, as written in `days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// Days after Monday.
    fn index(self) -> i64 {
        self as i64
    }

    fn name(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

fn every_day() -> Vec<Weekday> {
    Weekday::ALL.to_vec()
}

/// One problem in the shift sections: the dotted field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarProblem {
    pub field: String,
    pub message: String,
}

/// What the calendar says about one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    /// Index of the shift in [`ShiftCalendar::names`]; `None` outside every shift.
    pub shift: Option<u8>,
    /// In a planned break of that shift (so not planned busy time).
    pub on_break: bool,
    /// Minutes since the start of the shift instance this minute belongs to.
    pub since_start: u16,
}

impl Slot {
    /// Planned busy time: in a shift and not on a break.
    pub fn planned(self) -> bool {
        self.shift.is_some() && !self.on_break
    }
}

/// One run of a shift: `[start, end)` in UTC minutes since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftInstance {
    pub shift: u8,
    pub start_minute: i64,
    pub end_minute: i64,
}

/// The planned week, minute by minute, and the offset of local time from UTC.
#[derive(Clone)]
pub struct ShiftCalendar {
    offset_minutes: i64,
    names: Vec<String>,
    /// Length of each shift in minutes, by index.
    lengths: Vec<u16>,
    /// Local week, Monday 00:00 first.
    week: Box<[Slot]>,
    /// `cumulative[i]`: planned minutes in the local week's first `i` minutes (`WEEK + 1`
    /// entries), for range sums and "when is this much planned time over" in O(1) and O(log).
    cumulative: Box<[u32]>,
}

impl std::fmt::Debug for ShiftCalendar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The week table is 10,080 slots: the names and offset say what matters.
        f.debug_struct("ShiftCalendar")
            .field("offset_minutes", &self.offset_minutes)
            .field("shifts", &self.names)
            .finish()
    }
}

impl ShiftCalendar {
    /// Planned minutes in the week: any seven days in a row hold exactly this many.
    fn planned_per_week(&self) -> i64 {
        self.cumulative.last().map_or(0, |&total| i64::from(total))
    }

    /// Every minute planned, at UTC.
    pub fn always() -> ShiftCalendar {
        ShiftCalendar::build(&[], 0).unwrap_or_else(|_| ShiftCalendar {
            offset_minutes: 0,
            names: vec![ALL_DAY.into()],
            lengths: vec![DAY as u16],
            week: (0..WEEK)
                .map(|minute| Slot {
                    shift: Some(0),
                    on_break: false,
                    since_start: (minute % DAY) as u16,
                })
                .collect(),
            cumulative: (0..=WEEK as u32).collect(),
        })
    }

    /// Builds the calendar, or says every problem with the sections at once (field names as
    /// in the TOML: `shifts[1].breaks[0].end`). No shifts: every minute planned.
    pub fn build(
        shifts: &[ShiftSection],
        utc_offset_minutes: i32,
    ) -> Result<ShiftCalendar, Vec<CalendarProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(CalendarProblem { field, message });
        if !(-14 * 60..=14 * 60).contains(&utc_offset_minutes) {
            problem(
                "production.utc_offset_minutes".into(),
                format!("expected an offset in [-840, 840] minutes, got {utc_offset_minutes}"),
            );
        }
        if shifts.len() > usize::from(u8::MAX) {
            problem(
                "shifts".into(),
                format!("at most 255 shifts, got {}", shifts.len()),
            );
        }
        let default_shift;
        let shifts = if shifts.is_empty() {
            default_shift = [ShiftSection {
                name: ALL_DAY.into(),
                start: "00:00".into(),
                end: "24:00".into(),
                days: every_day(),
                breaks: Vec::new(),
            }];
            &default_shift[..]
        } else {
            shifts
        };
        let mut week = vec![Slot::default(); WEEK as usize];
        let mut lengths = Vec::with_capacity(shifts.len());
        for (i, shift) in shifts.iter().enumerate().take(usize::from(u8::MAX)) {
            let field = |name: &str| format!("shifts[{i}].{name}");
            if shift.name.trim().is_empty() || shift.name.chars().any(char::is_control) {
                problem(
                    field("name"),
                    "expected a non-empty name without control characters".into(),
                );
            }
            if shifts[..i].iter().any(|s| s.name == shift.name) {
                problem(
                    field("name"),
                    format!("{:?} names two shifts; names must be unique", shift.name),
                );
            }
            if shift.days.is_empty() {
                problem(
                    field("days"),
                    "expected at least one day, e.g. [\"mon\", \"tue\"]".into(),
                );
            }
            for (d, day) in shift.days.iter().enumerate() {
                if shift.days[..d].contains(day) {
                    problem(field("days"), format!("{:?} is listed twice", day.name()));
                }
            }
            let start = parse_time(&shift.start, false)
                .map_err(|m| problem(field("start"), m))
                .ok();
            let end = parse_time(&shift.end, true)
                .map_err(|m| problem(field("end"), m))
                .ok();
            let (Some(start), Some(end)) = (start, end) else {
                lengths.push(0);
                continue;
            };
            // End at or before start: the shift ends the next day. 00:00 to 24:00 is a whole day.
            let length = if end > start {
                end - start
            } else {
                end + DAY - start
            };
            if length > DAY {
                problem(
                    field("end"),
                    "a shift lasts at most 24 hours (00:00 to 24:00)".into(),
                );
                lengths.push(0);
                continue;
            }
            lengths.push(length as u16);
            // Breaks as minutes since the shift's start.
            let mut breaks: Vec<(i64, i64)> = Vec::new();
            for (b, pause) in shift.breaks.iter().enumerate() {
                let field = |name: &str| format!("shifts[{i}].breaks[{b}].{name}");
                let from = parse_time(&pause.start, false)
                    .map_err(|m| problem(field("start"), m))
                    .ok();
                let to = parse_time(&pause.end, true)
                    .map_err(|m| problem(field("end"), m))
                    .ok();
                let (Some(from), Some(to)) = (from, to) else {
                    continue;
                };
                let from = (from - start).rem_euclid(DAY);
                let to = match (to - start).rem_euclid(DAY) {
                    0 => DAY,
                    to => to,
                };
                if !(from < to && to <= length) {
                    problem(
                        field("start"),
                        format!(
                            "the break {}–{} must lie inside its shift {}–{} and end after it starts",
                            pause.start, pause.end, shift.start, shift.end
                        ),
                    );
                    continue;
                }
                if let Some((a, z)) = breaks.iter().find(|(a, z)| from < *z && *a < to) {
                    problem(
                        field("start"),
                        format!(
                            "the break {}–{} overlaps another break of the shift ({} to {} minutes into it)",
                            pause.start, pause.end, a, z
                        ),
                    );
                    continue;
                }
                breaks.push((from, to));
            }
            for (d, day) in shift.days.iter().enumerate() {
                if shift.days[..d].contains(day) {
                    continue; // reported above
                }
                for since in 0..length {
                    let minute = (day.index() * DAY + start + since).rem_euclid(WEEK) as usize;
                    if let Some(other) = week[minute].shift {
                        let other = &shifts[usize::from(other)].name;
                        let local = minute as i64;
                        problem(
                            field("start"),
                            format!(
                                "shift {:?} overlaps shift {other:?} on {} at {:02}:{:02}",
                                shift.name,
                                Weekday::ALL[(local / DAY) as usize].name(),
                                local % DAY / 60,
                                local % 60
                            ),
                        );
                        break;
                    }
                    week[minute] = Slot {
                        shift: Some(i as u8),
                        on_break: breaks.iter().any(|(a, z)| (*a..*z).contains(&since)),
                        since_start: since as u16,
                    };
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ShiftCalendar {
            offset_minutes: i64::from(utc_offset_minutes),
            names: shifts.iter().map(|s| s.name.clone()).collect(),
            lengths,
            cumulative: cumulative(&week),
            week: week.into_boxed_slice(),
        })
    }

    /// The shift names, by index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Local time minus UTC, in minutes.
    pub fn offset_minutes(&self) -> i64 {
        self.offset_minutes
    }

    /// What the calendar says about the UTC minute `minute` (minutes since the Unix epoch).
    pub fn slot(&self, minute: i64) -> Slot {
        self.week[self.local(minute).rem_euclid(WEEK) as usize]
    }

    /// The planned busy time in `[from, to)` (UTC minutes) as sorted, disjoint minute ranges.
    pub fn planned(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for minute in from..to {
            if !self.slot(minute).planned() {
                continue;
            }
            match runs.last_mut() {
                Some((_, end)) if *end == minute => *end = minute + 1,
                _ => runs.push((minute, minute + 1)),
            }
        }
        runs
    }

    /// Local week minutes since a Monday 00:00 for the UTC minute `minute`.
    fn local(&self, minute: i64) -> i64 {
        // 1970-01-01 was a Thursday: three days after a Monday.
        minute + self.offset_minutes + 3 * DAY
    }

    /// Planned minutes in local minutes `[0, local)`, counted from that Monday (negative
    /// before it): two of these subtract to the planned minutes of any range in O(1).
    fn planned_before(&self, local: i64) -> i64 {
        local.div_euclid(WEEK) * self.planned_per_week()
            + i64::from(self.cumulative[local.rem_euclid(WEEK) as usize])
    }

    /// Planned busy time in `[from_ms, to_ms)` (UTC milliseconds since the epoch), in
    /// milliseconds; 0 for an empty or reversed range. Constant time, whatever the range.
    pub fn planned_ms(&self, from_ms: i64, to_ms: i64) -> i64 {
        if to_ms <= from_ms {
            return 0;
        }
        let first = from_ms.div_euclid(MINUTE_MS);
        let last = (to_ms - 1).div_euclid(MINUTE_MS);
        let planned = |minute: i64| self.slot(minute).planned();
        if first == last {
            return if planned(first) { to_ms - from_ms } else { 0 };
        }
        let mut total = 0;
        if planned(first) {
            total += (first + 1) * MINUTE_MS - from_ms;
        }
        if planned(last) {
            total += to_ms - last * MINUTE_MS;
        }
        // The whole minutes between the two part minutes.
        let whole =
            self.planned_before(self.local(last)) - self.planned_before(self.local(first + 1));
        total + whole * MINUTE_MS
    }

    /// When `work_ms` of planned busy time after `from_ms` (UTC milliseconds) is over: the end
    /// of work that advances only while the calendar plans the line to run, so a shift's end,
    /// its breaks and the days off push it back. `None` when the calendar plans no minute at
    /// all (nothing ever finishes) or the answer overflows. Logarithmic in the week's minutes.
    pub fn after_planned_ms(&self, from_ms: i64, work_ms: i64) -> Option<i64> {
        if work_ms <= 0 {
            return Some(from_ms);
        }
        if self.planned_per_week() == 0 {
            return None;
        }
        let mut left = work_ms;
        let minute = from_ms.div_euclid(MINUTE_MS);
        if self.slot(minute).planned() {
            let rest_of_minute = (minute + 1) * MINUTE_MS - from_ms;
            if left <= rest_of_minute {
                return from_ms.checked_add(left);
            }
            left -= rest_of_minute;
        }
        // The work ends in the k-th planned minute from the next whole minute on: find the
        // first local minute x with k planned minutes before it, counted from there.
        let k = (left - 1) / MINUTE_MS + 1;
        let target = self.planned_before(self.local(minute + 1)).checked_add(k)?;
        let weeks = (target - 1).div_euclid(self.planned_per_week());
        let in_week = target - weeks * self.planned_per_week();
        let r = self.cumulative.partition_point(|&c| i64::from(c) < in_week) as i64;
        let x = weeks.checked_mul(WEEK)?.checked_add(r)?;
        let last_minute = x - 1 - self.offset_minutes - 3 * DAY;
        last_minute
            .checked_mul(MINUTE_MS)?
            .checked_add(left - (k - 1) * MINUTE_MS)
    }

    /// Every shift run that overlaps `[from, to)` (UTC minutes), whole (not clipped), in order.
    pub fn instances(&self, from: i64, to: i64) -> Vec<ShiftInstance> {
        let mut instances: Vec<ShiftInstance> = Vec::new();
        let mut minute = from;
        while minute < to {
            let slot = self.slot(minute);
            let Some(shift) = slot.shift else {
                minute += 1;
                continue;
            };
            let start_minute = minute - i64::from(slot.since_start);
            let end_minute = start_minute + i64::from(self.lengths[usize::from(shift)]);
            instances.push(ShiftInstance {
                shift,
                start_minute,
                end_minute,
            });
            minute = end_minute.max(minute + 1);
        }
        instances
    }

    /// The start of the local hour holding UTC minute `minute`.
    pub fn hour_start(&self, minute: i64) -> i64 {
        (minute + self.offset_minutes).div_euclid(60) * 60 - self.offset_minutes
    }

    /// The start of the local day holding UTC minute `minute`.
    pub fn day_start(&self, minute: i64) -> i64 {
        (minute + self.offset_minutes).div_euclid(DAY) * DAY - self.offset_minutes
    }
}

/// Planned minutes before each minute of the week, and in all of it last.
fn cumulative(week: &[Slot]) -> Box<[u32]> {
    std::iter::once(0)
        .chain(week.iter().scan(0u32, |sum, slot| {
            *sum += u32::from(slot.planned());
            Some(*sum)
        }))
        .collect()
}

/// Weekdays 06:00–14:00 with a break 10:00–10:30 (7.5 planned hours a day): the early shift
/// the calendar's, the KPIs' and the schedule's tests share.
#[cfg(test)]
pub(crate) fn test_early_shift() -> ShiftSection {
    ShiftSection {
        name: "early".into(),
        start: "06:00".into(),
        end: "14:00".into(),
        days: Weekday::ALL[..5].to_vec(),
        breaks: vec![BreakSection {
            start: "10:00".into(),
            end: "10:30".into(),
        }],
    }
}

/// `HH:MM` as minutes since midnight; `24:00` only where `allow_24` (an end).
fn parse_time(text: &str, allow_24: bool) -> Result<i64, String> {
    let bad = || format!("expected a local time of day \"HH:MM\", got {text:?}");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (0..=23, 0..=59) => Ok(h * 60 + m),
        (24, 0) if allow_24 => Ok(DAY),
        (24, 0) => Err(format!(
            "{text:?} is the end of a day; a start is 00:00 to 23:59"
        )),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn minute(at: &str) -> i64 {
        let at: DateTime<Utc> = at.parse().expect("time");
        at.timestamp().div_euclid(60)
    }

    fn shift(name: &str, start: &str, end: &str, days: &[Weekday]) -> ShiftSection {
        ShiftSection {
            name: name.into(),
            start: start.into(),
            end: end.into(),
            days: days.to_vec(),
            breaks: Vec::new(),
        }
    }

    fn ms(at: &str) -> i64 {
        let at: DateTime<Utc> = at.parse().expect("time");
        at.timestamp_millis()
    }

    /// Weekdays 06:00–14:00 with a break 10:00–10:30: 7.5 planned hours a day, 37.5 a week.
    fn day_shift() -> ShiftCalendar {
        ShiftCalendar::build(&[test_early_shift()], 0).expect("valid")
    }

    #[test]
    fn work_advances_only_in_planned_time() {
        let hour = 3_600_000;
        let always = ShiftCalendar::build(&[], 0).expect("valid");
        let from = ms("2024-05-10T13:00:00.250Z");
        assert_eq!(
            always.after_planned_ms(from, 2 * hour),
            Some(from + 2 * hour)
        );
        assert_eq!(always.planned_ms(from, from + 2 * hour), 2 * hour);

        let calendar = day_shift();
        // Friday 13:00 with two hours to go: one hour today, the other on Monday morning.
        let friday = ms("2024-05-10T13:00:00Z");
        assert_eq!(
            calendar.after_planned_ms(friday, 2 * hour),
            Some(ms("2024-05-13T07:00:00Z"))
        );
        // The break does not count: 09:30 + 2 h of work ends at 12:00.
        assert_eq!(
            calendar.after_planned_ms(ms("2024-05-10T09:30:00Z"), 2 * hour),
            Some(ms("2024-05-10T12:00:00Z"))
        );
        // Off shift, work starts when the shift does; a part-minute start is kept.
        assert_eq!(
            calendar.after_planned_ms(ms("2024-05-11T20:00:00Z"), 90_000),
            Some(ms("2024-05-13T06:01:30Z"))
        );
        assert_eq!(
            calendar.after_planned_ms(ms("2024-05-13T06:00:30Z"), 15_000),
            Some(ms("2024-05-13T06:00:45Z"))
        );
        // Three weeks and a day of planned time from Monday 06:00: the end of Monday's shift
        // three weeks on.
        let work = (3 * 375 + 75) * hour / 10;
        assert_eq!(
            calendar.after_planned_ms(ms("2024-05-13T06:00:00Z"), work),
            Some(ms("2024-06-03T14:00:00Z"))
        );
        assert_eq!(
            calendar.planned_ms(ms("2024-05-13T06:00:00Z"), ms("2024-06-03T14:00:00Z")),
            work
        );
        assert_eq!(calendar.planned_ms(friday, friday), 0);
        assert_eq!(calendar.planned_ms(friday, friday - hour), 0);
    }

    #[test]
    fn planned_time_and_the_end_of_work_agree() {
        use Weekday::*;
        let mut night = shift("night", "22:00", "06:00", &[Sun, Mon, Tue, Wed, Thu]);
        night.breaks.push(BreakSection {
            start: "02:00".into(),
            end: "02:30".into(),
        });
        for (calendar, offset) in [
            (day_shift(), 0),
            (
                ShiftCalendar::build(std::slice::from_ref(&night), 60).expect("valid"),
                60,
            ),
            (ShiftCalendar::build(&[night], -300).expect("valid"), -300),
        ] {
            assert_eq!(calendar.offset_minutes(), offset);
            agree(&calendar);
        }
    }

    fn agree(calendar: &ShiftCalendar) {
        let base = ms("2024-05-08T05:59:59.500Z");
        // Against a walk of the minutes, over three days.
        let from = base.div_euclid(60_000);
        let walked: i64 = calendar
            .planned(from, from + 3 * DAY)
            .iter()
            .map(|(a, z)| z - a)
            .sum();
        assert_eq!(
            calendar.planned_ms(from * 60_000, (from + 3 * DAY) * 60_000),
            walked * 60_000
        );
        for step in 0..200i64 {
            let from = base + step * 7_777_777;
            let work = (step * step * 9_876_543) % (40 * 86_400_000) + 1;
            let end = calendar.after_planned_ms(from, work).expect("finite");
            assert_eq!(
                calendar.planned_ms(from, end),
                work,
                "from {from}, work {work}"
            );
            // The end is the first moment with all of it done, never later.
            assert!(calendar.planned_ms(from, end - 1) < work);
        }
    }

    #[test]
    fn a_calendar_that_plans_nothing_never_finishes_work() {
        let mut resting = shift("rest", "00:00", "24:00", &Weekday::ALL);
        resting.breaks.push(BreakSection {
            start: "00:00".into(),
            end: "24:00".into(),
        });
        let calendar = ShiftCalendar::build(&[resting], 0).expect("valid");
        let from = ms("2024-05-10T13:00:00Z");
        assert_eq!(calendar.after_planned_ms(from, 1), None);
        assert_eq!(calendar.after_planned_ms(from, 0), Some(from));
        assert_eq!(calendar.planned_ms(from, from + 86_400_000), 0);
    }

    #[test]
    fn no_shifts_plans_every_minute() {
        let calendar = ShiftCalendar::build(&[], 0).expect("valid");
        let from = minute("2024-05-06T00:00:00Z");
        assert_eq!(
            calendar.planned(from, from + 3 * DAY),
            [(from, from + 3 * DAY)]
        );
        let instances = calendar.instances(from + 30, from + 2 * DAY);
        assert_eq!(instances.len(), 2);
        assert_eq!(instances[0].start_minute, from);
        assert_eq!(calendar.names(), [ALL_DAY]);
    }

    #[test]
    fn a_night_shift_crosses_midnight_with_its_break_and_belongs_to_its_start_day() {
        use Weekday::*;
        let mut night = shift("night", "22:00", "06:00", &[Mon]);
        night.breaks.push(BreakSection {
            start: "02:00".into(),
            end: "02:30".into(),
        });
        let calendar = ShiftCalendar::build(&[night], 60).expect("valid");
        // Monday 2024-05-06 22:00 local = 21:00 UTC; ends Tuesday 06:00 local = 05:00 UTC.
        let start = minute("2024-05-06T21:00:00Z");
        let end = minute("2024-05-07T05:00:00Z");
        assert_eq!(calendar.slot(start - 1).shift, None);
        assert_eq!(calendar.slot(start).shift, Some(0));
        assert_eq!(calendar.slot(end - 1).since_start, 479);
        assert_eq!(calendar.slot(end).shift, None);
        // The break: 02:00–02:30 local on Tuesday = 01:00–01:30 UTC.
        let pause = minute("2024-05-07T01:00:00Z");
        assert!(calendar.slot(pause).on_break && !calendar.slot(pause).planned());
        assert!(calendar.slot(pause + 30).planned());
        let planned = calendar.planned(start - DAY, end + DAY);
        assert_eq!(planned, [(start, pause), (pause + 30, end)]);
        let minutes: i64 = planned.iter().map(|(a, z)| z - a).sum();
        assert_eq!(minutes, 8 * 60 - 30);
        // Asked from the middle of the night, the run is still Monday's, whole.
        let instances = calendar.instances(pause, end + 2 * DAY);
        assert_eq!(
            instances,
            [ShiftInstance {
                shift: 0,
                start_minute: start,
                end_minute: end
            }]
        );
        // Sunday's night is not planned (only Monday's).
        assert_eq!(calendar.slot(start - DAY).shift, None);
    }

    #[test]
    fn hours_and_days_follow_local_time() {
        let calendar = ShiftCalendar::build(&[], -150).expect("valid");
        let at = minute("2024-05-06T12:10:00Z"); // 09:40 local
        assert_eq!(calendar.hour_start(at), minute("2024-05-06T11:30:00Z"));
        assert_eq!(calendar.day_start(at), minute("2024-05-06T02:30:00Z"));
    }

    #[test]
    fn bad_sections_are_all_reported() {
        use Weekday::*;
        let mut early = shift("early", "06:00", "14:00", &[Mon, Mon]);
        early.breaks.push(BreakSection {
            start: "15:00".into(),
            end: "15:30".into(),
        });
        let problems = ShiftCalendar::build(
            &[
                early,
                shift("late", "13:00", "22:00", &[Mon]),
                shift("early", "6am", "24:00", &[]),
                shift("x", "24:00", "01:00", &[Tue]),
            ],
            2000,
        )
        .expect_err("invalid");
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "production.utc_offset_minutes",
                "shifts[0].days",
                "shifts[0].breaks[0].start",
                "shifts[1].start",
                "shifts[2].name",
                "shifts[2].days",
                "shifts[2].start",
                "shifts[3].start",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[3]
                .message
                .contains("overlaps shift \"early\" on mon at 13:00")
        );
    }
}
