//! Sample quality: every stored sample carries a flag, in the spirit of OPC UA's status codes
//! (Good, Uncertain, Bad), and every later computation respects it: aggregates and control
//! charts use good samples only and count the rest.
//!
//! Flags are given once, when the sample arrives, from what came before it on the same tag
//! (samples are monotonic per tag, so "before" is well defined); they are never revised.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::tags::TagConfig;

/// What the station knows about a sample's trustworthiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Flag {
    /// Nothing wrong seen.
    Good = 0,
    /// The value has not moved for `stuck_after` samples: the sensor may be frozen.
    Stuck = 1,
    /// Far from the recent median: a glitch or a real jump; kept, but not trusted.
    Spike = 2,
    /// Outside the tag's valid range: physically impossible.
    OutOfRange = 16,
    /// Not a number (NaN or infinite).
    NotANumber = 17,
    /// The source did not answer: a placeholder marking the gap, with no value.
    SourceLost = 18,
}

/// OPC UA's three quality levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Good,
    Uncertain,
    Bad,
}

impl Flag {
    pub const ALL: [Flag; 6] = [
        Flag::Good,
        Flag::Stuck,
        Flag::Spike,
        Flag::OutOfRange,
        Flag::NotANumber,
        Flag::SourceLost,
    ];

    pub fn level(self) -> Level {
        match self {
            Flag::Good => Level::Good,
            Flag::Stuck | Flag::Spike => Level::Uncertain,
            Flag::OutOfRange | Flag::NotANumber | Flag::SourceLost => Level::Bad,
        }
    }

    pub fn is_good(self) -> bool {
        self == Flag::Good
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Good => "good",
            Flag::Stuck => "stuck",
            Flag::Spike => "spike",
            Flag::OutOfRange => "out_of_range",
            Flag::NotANumber => "not_a_number",
            Flag::SourceLost => "source_lost",
        }
    }

    pub fn from_byte(byte: u8) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| *f as u8 == byte)
    }
}

/// Samples the spike check looks back on.
const SPIKE_WINDOW: usize = 15;
/// The spike check needs this many earlier good samples before it judges.
const SPIKE_MIN_HISTORY: usize = 8;

/// One tag's running quality judgement.
#[derive(Debug, Clone)]
pub struct QualityCheck {
    valid_range: Option<[f64; 2]>,
    stuck_after: u32,
    spike_sigma: f64,
    /// The last value seen and how many times in a row.
    last_value: Option<f64>,
    repeats: u32,
    /// Recent good values, for the spike check.
    recent: VecDeque<f64>,
    /// The spikes in a row since the last good value: [`SPIKE_MIN_HISTORY`] of them are a new
    /// level, not a glitch.
    spikes_in_a_row: Vec<f64>,
}

impl QualityCheck {
    pub fn new(tag: &TagConfig) -> QualityCheck {
        QualityCheck {
            valid_range: tag.valid_range,
            stuck_after: tag.stuck_after,
            spike_sigma: tag.spike_sigma,
            last_value: None,
            repeats: 0,
            recent: VecDeque::with_capacity(SPIKE_WINDOW + 1),
            spikes_in_a_row: Vec::new(),
        }
    }

    /// The flag of the next sample on this tag. `SourceLost` placeholders are judged by the
    /// source, not here.
    pub fn judge(&mut self, value: f64) -> Flag {
        if !value.is_finite() {
            return Flag::NotANumber;
        }
        if let Some([low, high]) = self.valid_range
            && !(low..=high).contains(&value)
        {
            return Flag::OutOfRange;
        }
        if self.last_value == Some(value) {
            self.repeats += 1;
        } else {
            self.last_value = Some(value);
            self.repeats = 1;
        }
        if self.stuck_after > 0 && self.repeats >= self.stuck_after {
            return Flag::Stuck;
        }
        if self.is_spike(value) {
            self.spikes_in_a_row.push(value);
            if self.spikes_in_a_row.len() < SPIKE_MIN_HISTORY {
                return Flag::Spike;
            }
            // So many in a row are a new level (a line that stopped, a process that moved):
            // judged against the old level, every later value would be a spike, the tag
            // locked out of every analysis for good. The new level becomes the reference; the
            // spikes already flagged stay flagged, as flags are never revised.
            self.recent.clear();
            self.recent.extend(self.spikes_in_a_row.drain(..));
            return Flag::Good;
        }
        self.spikes_in_a_row.clear();
        if self.recent.len() == SPIKE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        Flag::Good
    }

    /// A value further than `spike_sigma` scaled MADs from the recent median. A flat history
    /// (MAD 0) judges nothing: a step after a flat stretch is a change, not a glitch.
    fn is_spike(&self, value: f64) -> bool {
        if self.spike_sigma <= 0.0 || self.recent.len() < SPIKE_MIN_HISTORY {
            return false;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        let median = median_in_place(&mut sorted);
        let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
        let mad = median_in_place(&mut deviations) * 1.4826;
        mad > 0.0 && (value - median).abs() > self.spike_sigma * mad
    }
}

fn median_in_place(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> TagConfig {
        toml::from_str(
            "name = \"t\"\nperiod_ms = 1000\nvalid_range = [0.0, 100.0]\nstuck_after = 4\n",
        )
        .expect("valid tag")
    }

    #[test]
    fn flags_range_nan_stuck_and_spike() {
        let mut check = QualityCheck::new(&tag());
        assert_eq!(check.judge(f64::NAN), Flag::NotANumber);
        assert_eq!(check.judge(f64::INFINITY), Flag::NotANumber);
        assert_eq!(check.judge(101.0), Flag::OutOfRange);
        assert_eq!(check.judge(-0.5), Flag::OutOfRange);
        // A noisy signal around 50 is good…
        let noisy = [50.0, 50.4, 49.7, 50.2, 49.9, 50.1, 50.3, 49.8, 50.0, 50.2];
        for v in noisy {
            assert_eq!(check.judge(v), Flag::Good, "{v}");
        }
        // …a jump of 30 is a spike, the next normal value is good again.
        assert_eq!(check.judge(80.0), Flag::Spike);
        assert_eq!(check.judge(50.1), Flag::Good);
        // Four identical values in a row: the fourth is stuck, and so on until it moves.
        assert_eq!(check.judge(50.6), Flag::Good);
        assert_eq!(check.judge(50.6), Flag::Good);
        assert_eq!(check.judge(50.6), Flag::Good);
        assert_eq!(check.judge(50.6), Flag::Stuck);
        assert_eq!(check.judge(50.6), Flag::Stuck);
        assert_eq!(check.judge(50.5), Flag::Good);
    }

    #[test]
    fn a_step_after_a_flat_signal_is_not_a_spike() {
        let mut tag = tag();
        tag.stuck_after = 0;
        let mut check = QualityCheck::new(&tag);
        for _ in 0..20 {
            assert_eq!(check.judge(1.0), Flag::Good);
        }
        assert_eq!(check.judge(0.0), Flag::Good);
    }

    #[test]
    fn a_lasting_step_becomes_the_new_level_after_a_few_samples() {
        let mut tag = tag();
        tag.stuck_after = 0;
        let mut check = QualityCheck::new(&tag);
        let noise = [
            0.0, 0.05, -0.04, 0.02, -0.03, 0.04, -0.01, 0.03, -0.05, 0.01,
        ];
        let level = |check: &mut QualityCheck, base: f64, n: usize| -> Vec<Flag> {
            (0..n)
                .map(|i| check.judge(base + noise[i % noise.len()]))
                .collect()
        };
        assert!(level(&mut check, 50.0, 20).iter().all(|f| *f == Flag::Good));
        // A step down to 20 (the line stopped): the first samples are spikes, then the new
        // level is the reference.
        let step = level(&mut check, 20.0, 20);
        let spikes = SPIKE_MIN_HISTORY - 1;
        assert!(step[..spikes].iter().all(|f| *f == Flag::Spike), "{step:?}");
        assert!(step[spikes..].iter().all(|f| *f == Flag::Good), "{step:?}");
        // And back up: the same, not locked out against the stopped level.
        let back = level(&mut check, 50.0, 20);
        assert!(back[..spikes].iter().all(|f| *f == Flag::Spike), "{back:?}");
        assert!(back[spikes..].iter().all(|f| *f == Flag::Good), "{back:?}");
        // A lone glitch is still a spike, and the value after it good.
        assert_eq!(check.judge(90.0), Flag::Spike);
        assert_eq!(check.judge(50.0), Flag::Good);
    }

    #[test]
    fn flags_round_trip_through_their_byte() {
        for flag in Flag::ALL {
            assert_eq!(Flag::from_byte(flag as u8), Some(flag));
        }
        assert_eq!(Flag::from_byte(99), None);
    }
}
