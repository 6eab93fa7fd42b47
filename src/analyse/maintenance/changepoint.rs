//! Change points in one tag's series: where its level or spread moved, and by how much.
//!
//! The EWMA and CUSUM charts of [`crate::analyse::spc`] say *that* a tag left its limits, and
//! soon; they do not say when the shift began or what the new level is. This module answers
//! that for a window on demand with PELT (Killick, Fearnhead & Eckley 2012, "Optimal detection
//! of changepoints with a linear computational cost"): the exact minimiser of the summed
//! segment costs plus one penalty per change, in about linear time thanks to pruning.
//!
//! The segment cost is the Gaussian negative log-likelihood (times two, constants dropped) of a
//! segment with its own mean and variance ([`Cost::MeanAndVariance`]) or with its own mean and
//! the window's variance ([`Cost::Mean`]). The penalty is BIC-like: `factor × (parameters per
//! segment + 1) × ln n`, as the R `changepoint` package counts it. The samples are taken as
//! independent: a strongly autocorrelated tag (a slow temperature) is better fed as per-minute
//! means, or with a larger factor, else slow drifts come out as a staircase of small steps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a series cannot be segmented.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChangepointError {
    #[error("the series is empty")]
    Empty,
    #[error("sample {index} is not a finite number ({value})")]
    NotFinite { index: usize, value: f64 },
    #[error("{name} is {value}, expected {expected}")]
    InvalidSetting {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
}

/// What a segment is allowed to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    /// Each segment has its own mean and variance: finds level shifts and changes in noise
    /// (a bearing starting to rattle), at the price of needing longer segments.
    #[default]
    MeanAndVariance,
    /// Each segment has its own mean; the variance is the whole window's (robustly
    /// estimated from successive differences, so the shifts themselves do not inflate it).
    Mean,
}

impl Cost {
    /// Parameters a segment adds, for the BIC-like penalty.
    fn parameters(self) -> f64 {
        match self {
            Cost::MeanAndVariance => 2.0,
            Cost::Mean => 1.0,
        }
    }
}

/// How [`detect`] segments a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// What may change between segments.
    pub cost: Cost,
    /// Multiplies the BIC penalty `(parameters + 1) × ln n`: above 1 reports fewer, surer
    /// changes (autocorrelated tags), below 1 more.
    pub penalty_factor: f64,
    /// The shortest segment, in samples: a variance needs a few samples to be estimated, and
    /// a spike is not a change of level.
    pub min_segment_len: usize,
}

impl Default for Settings {
    /// Mean and variance, twice the BIC penalty, segments of at least 10 samples. The plain
    /// BIC penalty found changes in a few percent of stationary Gaussian series (the maximum
    /// over every split point of a likelihood ratio outgrows `ln n` a little); at twice it,
    /// none of 200 generated series of 200 to 5,000 samples has one, with either cost
    /// (`changepoint::tests::stationary_noise_has_no_change`), while a step of 1σ between
    /// two stretches of 100 samples still clears it (expected gain 200 ln 1.25 ≈ 45 against
    /// a penalty of 2 × 3 × ln 200 ≈ 32).
    fn default() -> Self {
        Settings {
            cost: Cost::MeanAndVariance,
            penalty_factor: 2.0,
            min_segment_len: 10,
        }
    }
}

/// The level and spread of the samples on one side of a change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    /// Index of the segment's first sample in the series.
    pub start: usize,
    /// Samples in the segment.
    pub len: usize,
    pub mean: f64,
    /// Standard deviation (divisor n: the maximum-likelihood estimate the cost uses).
    pub std_dev: f64,
}

/// One change: from `index` on, the series follows `after` rather than `before`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChangePoint {
    /// Index of the first sample after the change.
    pub index: usize,
    pub before: SegmentStats,
    pub after: SegmentStats,
    /// How strongly the data ask for this change: the drop in cost from splitting the two
    /// neighbouring segments here, in units of the penalty. Every reported change has about 1
    /// or more (the search is joint, so a change can lean a little on its neighbours); a clean
    /// step of a few σ over a hundred samples scores in the tens.
    pub strength: f64,
    /// The shift in level in units of the segments' pooled standard deviation (signed: above
    /// 0 when the level rose).
    pub shift_in_std_devs: f64,
}

impl ChangePoint {
    /// The change as a sentence an engineer reads, e.g. "press temperature shifted from 181
    /// to 192 °C at 10:42 (σ 1 → 1)": `what` names the tag, `unit` its unit, `at` the
    /// time of the sample at [`ChangePoint::index`].
    pub fn sentence(&self, what: &str, unit: &str, at: DateTime<Utc>) -> String {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        format!(
            "{what} shifted from {} to {}{unit} at {} (σ {} → {})",
            round_for_reading(self.before.mean, self.before.std_dev),
            round_for_reading(self.after.mean, self.after.std_dev),
            at.format("%H:%M"),
            round_for_reading(self.before.std_dev, self.before.std_dev),
            round_for_reading(self.after.std_dev, self.after.std_dev),
        )
    }
}

/// Finds the change points of `values` (in time order, equally spaced or nearly so) under
/// `settings`. A series too short for two segments has none.
pub fn detect(values: &[f64], settings: &Settings) -> Result<Vec<ChangePoint>, ChangepointError> {
    check_settings(settings)?;
    if values.is_empty() {
        return Err(ChangepointError::Empty);
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ChangepointError::NotFinite { index, value });
    }
    let min_len = settings.min_segment_len.max(2);
    let n = values.len();
    if n < 2 * min_len {
        return Ok(Vec::new());
    }
    let costs = SegmentCosts::new(values, settings.cost);
    let penalty = settings.penalty_factor * (settings.cost.parameters() + 1.0) * (n as f64).ln();
    let starts = pelt(&costs, n, min_len, penalty);

    // `starts` holds the first index of every segment after the first.
    let mut bounds = Vec::with_capacity(starts.len() + 2);
    bounds.push(0);
    bounds.extend_from_slice(&starts);
    bounds.push(n);
    let mut changes = Vec::with_capacity(starts.len());
    for window in bounds.windows(3) {
        let (a, c, b) = (window[0], window[1], window[2]);
        let before = segment_stats(values, a, c);
        let after = segment_stats(values, c, b);
        let gain = costs.cost(a, b) - costs.cost(a, c) - costs.cost(c, b);
        let pooled_variance = (before.len as f64 * before.std_dev.powi(2)
            + after.len as f64 * after.std_dev.powi(2))
            / (before.len + after.len) as f64;
        let pooled_std_dev = pooled_variance.sqrt();
        let shift = after.mean - before.mean;
        let shift_in_std_devs = if pooled_std_dev > 0.0 {
            shift / pooled_std_dev
        } else if shift == 0.0 {
            0.0
        } else {
            shift.signum() * f64::INFINITY
        };
        changes.push(ChangePoint {
            index: c,
            before,
            after,
            strength: gain / penalty,
            shift_in_std_devs,
        });
    }
    Ok(changes)
}

fn check_settings(settings: &Settings) -> Result<(), ChangepointError> {
    if !(settings.penalty_factor.is_finite() && settings.penalty_factor > 0.0) {
        return Err(ChangepointError::InvalidSetting {
            name: "penalty_factor",
            value: settings.penalty_factor,
            expected: "a finite number above 0",
        });
    }
    if settings.min_segment_len == 0 {
        return Err(ChangepointError::InvalidSetting {
            name: "min_segment_len",
            value: 0.0,
            expected: "at least 1",
        });
    }
    Ok(())
}

/// PELT: `best[t]` is the least penalised cost of `values[..t]`; a candidate last change `s`
/// that cannot win now can never win later (the cost is superadditive), so it is dropped.
/// Returns the first index of every segment but the first, in order.
fn pelt(costs: &SegmentCosts, n: usize, min_len: usize, penalty: f64) -> Vec<usize> {
    let mut best = vec![f64::INFINITY; n + 1];
    let mut previous = vec![0usize; n + 1];
    best[0] = -penalty;
    let mut candidates: Vec<usize> = Vec::new();
    for t in min_len..=n {
        // A split at `s` becomes possible once `values[s..t]` holds `min_len` samples, and
        // only where `values[..s]` can itself be segmented.
        let newly_admissible = t - min_len;
        if best[newly_admissible].is_finite() {
            candidates.push(newly_admissible);
        }
        let mut best_here = f64::INFINITY;
        let mut best_start = 0;
        let mut totals = Vec::with_capacity(candidates.len());
        for &s in &candidates {
            let total = best[s] + costs.cost(s, t) + penalty;
            totals.push(total);
            if total < best_here {
                best_here = total;
                best_start = s;
            }
        }
        best[t] = best_here;
        previous[t] = best_start;
        let mut kept = Vec::with_capacity(candidates.len());
        for (&s, &total) in candidates.iter().zip(&totals) {
            if total - penalty <= best_here {
                kept.push(s);
            }
        }
        candidates = kept;
    }
    let mut starts = Vec::new();
    let mut t = n;
    while t > 0 {
        let s = previous[t];
        if s > 0 {
            starts.push(s);
        }
        t = s;
    }
    starts.reverse();
    starts
}

/// Prefix sums that give any segment's cost in O(1).
struct SegmentCosts {
    cost_kind: Cost,
    /// Σ x and Σ x² of the standardised series up to each index.
    sums: Vec<f64>,
    squares: Vec<f64>,
    /// The smallest variance a segment may have, so a flat stretch (a stuck sensor, a
    /// quantised tag) costs a finite amount.
    variance_floor: f64,
    /// The variance the [`Cost::Mean`] cost divides by.
    noise_variance: f64,
}

impl SegmentCosts {
    fn new(values: &[f64], cost_kind: Cost) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // Standardising keeps the prefix sums well conditioned (a temperature of 181 °C
        // with a spread of 0.1).
        let scale = if variance > 0.0 { variance.sqrt() } else { 1.0 };
        let standardised: Vec<f64> = values.iter().map(|v| (v - mean) / scale).collect();
        let mut sums = Vec::with_capacity(values.len() + 1);
        let mut squares = Vec::with_capacity(values.len() + 1);
        let (mut sum, mut square) = (0.0, 0.0);
        sums.push(0.0);
        squares.push(0.0);
        for &z in &standardised {
            sum += z;
            square += z * z;
            sums.push(sum);
            squares.push(square);
        }
        // The noise from successive differences: a step adds one large difference, not a
        // whole segment's worth of spread (MR̄-style, as the individuals chart does).
        let differences: f64 = standardised
            .windows(2)
            .map(|w| (w[1] - w[0]).powi(2))
            .sum::<f64>()
            / (standardised.len().saturating_sub(1).max(1)) as f64;
        let noise_variance = (differences / 2.0).max(1e-12);
        SegmentCosts {
            cost_kind,
            sums,
            squares,
            variance_floor: 1e-6,
            noise_variance,
        }
    }

    /// Twice the Gaussian negative log-likelihood of `[a, b)`, constants dropped.
    fn cost(&self, a: usize, b: usize) -> f64 {
        let len = (b - a) as f64;
        let sum = self.sums[b] - self.sums[a];
        let square = self.squares[b] - self.squares[a];
        let scatter = (square - sum * sum / len).max(0.0);
        match self.cost_kind {
            Cost::MeanAndVariance => len * (scatter / len).max(self.variance_floor).ln(),
            Cost::Mean => scatter / self.noise_variance,
        }
    }
}

fn segment_stats(values: &[f64], start: usize, end: usize) -> SegmentStats {
    let segment = &values[start..end];
    let len = segment.len();
    let mean = segment.iter().sum::<f64>() / len as f64;
    let variance = segment.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len as f64;
    SegmentStats {
        start,
        len,
        mean,
        std_dev: variance.sqrt(),
    }
}

/// `value` with as many decimals as its `spread` makes meaningful (the spread's first
/// significant digit), at most 6.
fn round_for_reading(value: f64, spread: f64) -> String {
    let decimals = if spread > 0.0 && spread.is_finite() {
        (-spread.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        0
    };
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    use super::*;

    fn noise(rng: &mut ChaCha8Rng, n: usize, mean: f64, std_dev: f64) -> Vec<f64> {
        let normal = Normal::new(mean, std_dev).expect("a positive standard deviation");
        (0..n).map(|_| normal.sample(rng)).collect()
    }

    /// Series made of `(len, mean, std_dev)` pieces; returns it and the true change indices.
    fn pieces(seed: u64, parts: &[(usize, f64, f64)]) -> (Vec<f64>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::new();
        let mut changes = Vec::new();
        for &(len, mean, std_dev) in parts {
            if !values.is_empty() {
                changes.push(values.len());
            }
            values.extend(noise(&mut rng, len, mean, std_dev));
        }
        (values, changes)
    }

    fn check(parts: &[(usize, f64, f64)], settings: &Settings, tolerance: usize) {
        for seed in 0..20 {
            let (values, expected) = pieces(seed, parts);
            let found: Vec<usize> = detect(&values, settings)
                .expect("a clean series")
                .iter()
                .map(|c| c.index)
                .collect();
            assert_eq!(
                found.len(),
                expected.len(),
                "seed {seed}: expected changes at {expected:?}, got {found:?}"
            );
            for (f, e) in found.iter().zip(&expected) {
                assert!(
                    f.abs_diff(*e) <= tolerance,
                    "seed {seed}: expected changes at {expected:?}, got {found:?}"
                );
            }
        }
    }

    #[test]
    fn steps_in_level_are_found_within_a_few_samples() {
        let parts = [(300, 181.0, 1.0), (200, 184.0, 1.0), (250, 179.0, 1.0)];
        check(&parts, &Settings::default(), 3);
        let mean_only = Settings {
            cost: Cost::Mean,
            ..Settings::default()
        };
        check(&parts, &mean_only, 3);
    }

    #[test]
    fn a_change_in_spread_is_found_by_the_mean_and_variance_cost() {
        let parts = [(400, 0.5, 0.01), (400, 0.5, 0.04)];
        check(&parts, &Settings::default(), 10);
    }

    #[test]
    fn stationary_noise_has_no_change() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (case, n) in [200usize, 500, 1000, 2000, 5000]
            .iter()
            .cycle()
            .take(200)
            .enumerate()
        {
            let values = noise(&mut rng, *n, 50.0, 2.0);
            for cost in [Cost::MeanAndVariance, Cost::Mean] {
                let settings = Settings {
                    cost,
                    ..Settings::default()
                };
                let found = detect(&values, &settings).expect("a clean series");
                assert!(
                    found.is_empty(),
                    "case {case} (n = {n}, {cost:?}): expected no change, got {found:?}"
                );
            }
        }
    }

    #[test]
    fn before_and_after_describe_the_step() {
        let (values, _) = pieces(3, &[(300, 181.0, 0.5), (300, 192.0, 0.5)]);
        let found = detect(&values, &Settings::default()).expect("a clean series");
        assert_eq!(found.len(), 1, "{found:?}");
        let change = found[0];
        assert!((change.before.mean - 181.0).abs() < 0.2, "{change:?}");
        assert!((change.after.mean - 192.0).abs() < 0.2, "{change:?}");
        assert_eq!(change.before.start, 0);
        assert_eq!(change.after.start + change.after.len, values.len());
        assert!(change.shift_in_std_devs > 15.0, "{change:?}");
        assert!(change.strength > 10.0, "{change:?}");
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:42:00Z")
            .expect("a valid time")
            .with_timezone(&Utc);
        let sentence = change.sentence("press temperature", "°C", at);
        assert_eq!(
            sentence,
            "press temperature shifted from 181.0 to 192.0 °C at 10:42 (σ 0.5 → 0.5)"
        );
    }

    #[test]
    fn a_stuck_stretch_is_a_change_with_a_finite_strength() {
        let (mut values, _) = pieces(5, &[(300, 10.0, 1.0)]);
        values.extend(std::iter::repeat_n(10.0, 100));
        let found = detect(&values, &Settings::default()).expect("a clean series");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].index.abs_diff(300) <= 2, "{found:?}");
        assert!(found[0].strength.is_finite(), "{found:?}");
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            detect(&[], &Settings::default()),
            Err(ChangepointError::Empty)
        );
        let mut values = vec![1.0; 50];
        values[17] = f64::NAN;
        assert!(matches!(
            detect(&values, &Settings::default()),
            Err(ChangepointError::NotFinite { index: 17, .. })
        ));
        let zero_penalty = Settings {
            penalty_factor: 0.0,
            ..Settings::default()
        };
        assert!(matches!(
            detect(&[1.0, 2.0], &zero_penalty),
            Err(ChangepointError::InvalidSetting {
                name: "penalty_factor",
                ..
            })
        ));
        // Too short for two segments: no change, not an error.
        assert_eq!(detect(&[1.0, 5.0, 1.0], &Settings::default()), Ok(vec![]));
        // A constant series has no change.
        assert_eq!(detect(&[3.0; 100], &Settings::default()), Ok(vec![]));
    }
}
