//! Where the belt is: the station's clock under time tracking, the PLC's encoder under encoder
//! tracking.
//!
//! Positions are plain numbers on one axis. With [`Belt::Clock`] a position is a station time
//! in microseconds: the belt is assumed to run at its nominal speed, so a part reaches the gate
//! `travel` after its trigger. With [`Belt::Encoder`] a position is an encoder count, unwrapped
//! from the PLC's 32-bit counter by [`EncoderTrack`], which keeps the recent readings: a part's
//! place is the count at its capture (interpolated between readings), and the time it reaches
//! the diverter is predicted from the newest reading and the belt's recent speed, so stops and
//! speed changes move every part's gate time with it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::part::StationTime;

/// A reading of the encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at: StationTime,
    /// The unwrapped count.
    position: i64,
}

/// Readings older than this are dropped (the newest two are always kept).
const KEEP: Duration = Duration::from_secs(2);

/// The speed is measured over at least this span of readings: single polls jitter.
const SPEED_SPAN: Duration = Duration::from_millis(20);

/// A count this far below the last is a counter that started again (a PLC restart), not
/// encoder jitter at a standstill.
const RESET_BELOW: i64 = 64;

/// No reading for this long and the counter's continuity cannot be vouched for: a PLC that
/// restarted in the gap may have started its counter again anywhere, even ahead of the last
/// count. A PLC restart takes far longer; a slow reply or two does not.
pub const OUTAGE: Duration = Duration::from_millis(500);

/// A capture between two readings at most this far apart is placed between them; across a
/// longer gap its place is a guess and it gets none.
pub const PLACE_ACROSS: Duration = Duration::from_millis(100);

/// The encoder's recent readings, unwrapped into one growing count.
#[derive(Debug)]
pub struct EncoderTrack {
    readings: VecDeque<Reading>,
    last_raw: Option<u32>,
    /// Bumped whenever the counter is found to have started again: positions taken before
    /// are on another axis and mean nothing now.
    epoch: u64,
    stale_after: Duration,
    /// The PLC's heartbeat at the last reading, when it is read with the count.
    last_heartbeat: Option<(StationTime, u16)>,
}

/// What the newest fresh reading says about the belt now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeltView {
    at: StationTime,
    position: i64,
    /// Counts per microsecond, never negative.
    speed: f64,
}

impl BeltView {
    /// The position predicted at `t` (at or after the reading) at the current speed.
    pub fn position_at(&self, t: StationTime) -> i64 {
        let ahead = t.0.saturating_sub(self.at.0).as_micros() as f64;
        self.position + (self.speed * ahead).floor() as i64
    }

    /// The position the newest reading measured (the furthest count read, when a standing
    /// belt's count jitters back by a few): a moving belt is at least this far now, since it
    /// never runs backwards.
    pub fn measured_position(&self) -> i64 {
        self.position
    }

    /// The belt's speed now, in counts per millisecond.
    pub fn counts_per_ms(&self) -> f64 {
        self.speed * 1000.0
    }

    /// When the belt is predicted to reach `position`; `None` while it stands.
    pub fn time_at(&self, position: i64) -> Option<StationTime> {
        if position <= self.position {
            return Some(self.at);
        }
        if self.speed <= 0.0 {
            return None;
        }
        let micros = ((position - self.position) as f64 / self.speed).ceil();
        Some(self.at.after(Duration::from_micros(micros as u64)))
    }
}

impl EncoderTrack {
    /// An encoder with no reading yet, whose readings count for `stale_after`.
    pub fn new(stale_after: Duration) -> EncoderTrack {
        EncoderTrack {
            readings: VecDeque::new(),
            last_raw: None,
            epoch: 0,
            stale_after,
            last_heartbeat: None,
        }
    }

    /// Shared between the task that reads the encoder and the tracker.
    pub fn shared(stale_after: Duration) -> SharedEncoder {
        Arc::new(Mutex::new(EncoderTrack::new(stale_after)))
    }

    /// The counter read `raw` at `at`. Returns whether the counter was found to have started
    /// again, or could have (a count that went back, or one after an outage longer than
    /// [`OUTAGE`]): every place taken before is lost.
    pub fn record(&mut self, at: StationTime, raw: u32) -> bool {
        self.record_checked(at, raw, false)
    }

    /// [`EncoderTrack::record`] with the PLC's own heartbeat read with the count (it beats
    /// every `period`): after an outage the counter is taken to have gone on when the
    /// heartbeat moved on by about the outage's length, so the PLC did not restart (a cable
    /// pulled and plugged back); a heartbeat that went back or moved too little is a PLC that
    /// restarted, and its counter may have started anywhere.
    pub fn record_with_plc(
        &mut self,
        at: StationTime,
        raw: u32,
        heartbeat: u16,
        period: Duration,
    ) -> bool {
        let kept_beating = self.last_heartbeat.is_some_and(|(then, before)| {
            let moved = f64::from(heartbeat.wrapping_sub(before) as i16);
            let expected = at.0.saturating_sub(then.0).as_secs_f64() / period.as_secs_f64();
            moved >= 0.0 && (moved - expected).abs() <= expected * 0.25 + 3.0
        });
        self.last_heartbeat = Some((at, heartbeat));
        self.record_checked(at, raw, kept_beating)
    }

    fn record_checked(&mut self, at: StationTime, raw: u32, kept_beating: bool) -> bool {
        let mut reset = false;
        let position = match (self.last_raw, self.readings.back()) {
            (Some(_), Some(last)) if at.0.saturating_sub(last.at.0) > OUTAGE && !kept_beating => {
                reset = true;
                i64::from(raw)
            }
            (Some(last_raw), Some(last)) => {
                let step = i64::from(raw.wrapping_sub(last_raw) as i32);
                if step < -RESET_BELOW {
                    reset = true;
                    i64::from(raw)
                } else if step < 0 {
                    // A count or two back at a standstill is jitter: the belt has not moved,
                    // and the counts ahead are measured from the furthest one seen.
                    last.position
                } else {
                    self.last_raw = Some(raw);
                    last.position + step
                }
            }
            _ => i64::from(raw),
        };
        if reset {
            self.epoch += 1;
            self.readings.clear();
        }
        if reset || self.last_raw.is_none() {
            self.last_raw = Some(raw);
        }
        self.readings.push_back(Reading { at, position });
        while self.readings.len() > 2
            && self
                .readings
                .front()
                .is_some_and(|r| at.0.saturating_sub(r.at.0) > KEEP)
        {
            self.readings.pop_front();
        }
        reset
    }

    /// Which axis positions are on now; see [`EncoderTrack::record`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the newest reading was taken, fresh or not.
    pub fn newest_at(&self) -> Option<StationTime> {
        self.readings.back().map(|r| r.at)
    }

    /// The belt now, from the newest reading, unless it is older than the stale limit.
    pub fn view(&self, now: StationTime) -> Option<BeltView> {
        let newest = *self.readings.back()?;
        if now.0.saturating_sub(newest.at.0) > self.stale_after {
            return None;
        }
        let older = self
            .readings
            .iter()
            .rev()
            .find(|r| newest.at.0.saturating_sub(r.at.0) >= SPEED_SPAN)
            .or(self.readings.front())
            .copied()
            .unwrap_or(newest);
        let span = newest.at.0.saturating_sub(older.at.0).as_micros() as f64;
        let speed = if span > 0.0 {
            ((newest.position - older.position) as f64 / span).max(0.0)
        } else {
            0.0
        };
        Some(BeltView {
            at: newest.at,
            position: newest.position,
            speed,
        })
    }

    /// Where the belt was at `t`: interpolated between the readings around it, or predicted
    /// from the newest when `t` is after it (and the reading is fresh). `None` when no reading
    /// covers `t`, or the two around it are further apart than [`PLACE_ACROSS`] (a guess
    /// across an outage is no place).
    pub fn position_at(&self, t: StationTime) -> Option<i64> {
        let after = self.readings.partition_point(|r| r.at <= t);
        if after == self.readings.len() {
            return self.view(t).map(|view| view.position_at(t));
        }
        let next = self.readings[after];
        let previous = self.readings.get(after.checked_sub(1)?)?;
        if next.at.0.saturating_sub(previous.at.0) > PLACE_ACROSS {
            return None;
        }
        let span = next.at.0.saturating_sub(previous.at.0).as_micros() as f64;
        let into = t.0.saturating_sub(previous.at.0).as_micros() as f64;
        let fraction = if span > 0.0 { into / span } else { 1.0 };
        Some(previous.position + ((next.position - previous.position) as f64 * fraction) as i64)
    }
}

/// The encoder track the poller writes and the tracker reads.
pub type SharedEncoder = Arc<Mutex<EncoderTrack>>;

/// How the tracker knows where the belt is.
#[derive(Debug, Clone)]
pub enum Belt {
    /// Time tracking: positions are station times in microseconds.
    Clock,
    /// Encoder tracking: positions are encoder counts.
    Encoder {
        track: SharedEncoder,
        /// Counts from the camera's trigger to the diverter.
        travel_counts: i64,
        /// How often the encoder is read: the tracker looks again at least this often.
        poll: Duration,
    },
}

/// The encoder track, whoever panicked holding it.
pub fn lock(track: &SharedEncoder) -> std::sync::MutexGuard<'_, EncoderTrack> {
    track.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> StationTime {
        StationTime(Duration::from_millis(n))
    }

    #[test]
    fn the_count_unwraps_and_the_speed_follows_the_belt() {
        let mut track = EncoderTrack::new(Duration::from_millis(50));
        assert!(track.view(ms(0)).is_none(), "no reading yet");
        // 10 counts per ms, across the counter's wrap.
        let start = u32::MAX - 95;
        for i in 0..=30u32 {
            assert!(!track.record(ms(u64::from(i) * 2), start.wrapping_add(i * 20)));
        }
        let view = track.view(ms(60)).expect("fresh");
        assert_eq!(view.position, i64::from(start) + 600);
        assert!((view.speed - 0.01).abs() < 1e-9, "{}", view.speed);
        assert_eq!(view.position_at(ms(70)), i64::from(start) + 700);
        assert_eq!(view.time_at(i64::from(start) + 800), Some(ms(80)));
        // Interpolated between readings, for a capture in the past.
        assert_eq!(
            track.position_at(StationTime(Duration::from_micros(31_000))),
            Some(i64::from(start) + 310)
        );
        assert_eq!(track.epoch(), 0);
    }

    #[test]
    fn a_stopped_belt_has_no_arrival_time_and_a_stale_reading_no_view() {
        let mut track = EncoderTrack::new(Duration::from_millis(50));
        for i in 0..20 {
            track.record(ms(i * 2), 5000);
        }
        let view = track.view(ms(40)).expect("fresh");
        assert_eq!(view.speed, 0.0);
        assert_eq!(view.time_at(5001), None);
        assert_eq!(view.time_at(5000), Some(ms(38)), "already there");
        assert!(track.view(ms(38 + 51)).is_none(), "stale");
        assert!(track.position_at(ms(38 + 51)).is_none());
        // Jitter of a count back is no movement and no reset.
        assert!(!track.record(ms(100), 4999));
        assert_eq!(track.view(ms(100)).map(|v| v.position), Some(5000));
        track.record(ms(102), 5001);
        assert_eq!(track.view(ms(102)).map(|v| v.position), Some(5001));
    }

    #[test]
    fn a_counter_that_starts_again_is_a_new_axis() {
        let mut track = EncoderTrack::new(Duration::from_millis(50));
        track.record(ms(0), 1_000_000);
        track.record(ms(2), 1_000_020);
        assert!(track.record(ms(4), 12), "the PLC restarted its counter");
        assert_eq!(track.epoch(), 1);
        assert_eq!(track.view(ms(4)).map(|v| v.position), Some(12));
        // After an outage nothing says the counter went on: even a count ahead starts anew.
        assert!(!track.record(ms(6), 20));
        assert!(track.record(ms(6 + 501), 5_000), "after an outage");
        assert_eq!(track.epoch(), 2);
        // A capture during a gap longer than the stale limit has no place.
        assert!(!track.record(ms(700), 5_100));
        assert_eq!(track.position_at(ms(650)), None);
        assert!(track.position_at(ms(701)).is_some());
        // Across a short gap (a slow reply) a capture is placed between the two readings.
        assert!(!track.record(ms(760), 5_700));
        assert_eq!(track.position_at(ms(730)), Some(5_400));
    }

    #[test]
    fn a_plc_that_kept_beating_through_an_outage_kept_counting() {
        let period = Duration::from_millis(100);
        let mut track = EncoderTrack::new(Duration::from_millis(10));
        assert!(!track.record_with_plc(ms(0), 1_000, 40, period));
        assert!(!track.record_with_plc(ms(2), 1_020, 40, period));
        // A cable out for 2 s: the heartbeat went on by 20, the counter by 20,000.
        assert!(!track.record_with_plc(ms(2002), 21_020, 60, period));
        assert_eq!(track.epoch(), 0);
        assert_eq!(track.view(ms(2002)).map(|v| v.position), Some(21_020));
        // A PLC restarted in a 2 s outage beats from 0 again: a new epoch, whatever the count.
        assert!(track.record_with_plc(ms(4002), 41_020, 3, period));
        assert_eq!(track.epoch(), 1);
        // One that beat too little (it restarted and beat a while) is no better.
        assert!(!track.record_with_plc(ms(4004), 41_040, 3, period));
        assert!(track.record_with_plc(ms(9004), 91_040, 30, period));
        assert_eq!(track.epoch(), 2);
    }
}
