//! When one tag's degradation trend reaches its failure limit, for equipment without
//! run-to-failure history.
//!
//! Given a tag's recent good samples or minute means and a failure limit, [`forecast`] fits a
//! straight line and, when every value and the limit are positive, an exponential (a straight
//! line through the logarithms: wear that feeds on itself, such as a bearing's vibration), keeps
//! the one with the smaller squared error in the tag's own units, and says when it crosses the
//! limit. There is no forecast when the trend is not clearly there (its slope under
//! [`TrendSettings::min_t_statistic`] standard errors), heads away from the limit, or would need
//! to be carried on for more than [`TrendSettings::max_extrapolation`] times the span the samples
//! cover.
//!
//! The interval comes from a moving-block bootstrap of the residuals (blocks, because minute
//! means of a slowly drifting tag are correlated with their neighbours, and resampling them one
//! by one would make the interval too narrow): the chosen model is refitted to the fitted values
//! plus resampled residuals, and each refit's crossing time is one draw. The share of refits
//! that reach the limit at all is the forecast's confidence.
//!
//! Times are in any unit (seconds, hours, milliseconds since the epoch); every time the
//! forecast gives is in the same unit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Which side of the limit is failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Failure when the value rises to the limit (vibration, temperature, wear).
    Rising,
    /// Failure when the value falls to the limit (pressure, flow, thickness).
    Falling,
}

/// The shape of the trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrendModel {
    /// `v = a + b·t`.
    Linear,
    /// `v = e^(a + b·t)`.
    Exponential,
}

/// How [`forecast_with`] judges a trend; [`Default`] is what [`forecast`] uses.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendSettings {
    /// Fewest finite samples to fit.
    pub min_samples: usize,
    /// The slope must be at least this many standard errors from zero, towards the limit.
    pub min_t_statistic: f64,
    /// A crossing further ahead than this many times the samples' span is no forecast.
    pub max_extrapolation: f64,
    /// The interval's intended coverage.
    pub coverage: f64,
    /// Bootstrap refits.
    pub n_bootstrap: usize,
    /// Seed of the bootstrap (the same samples always give the same forecast).
    pub seed: u64,
}

impl Default for TrendSettings {
    fn default() -> Self {
        Self {
            min_samples: 10,
            min_t_statistic: 3.0,
            max_extrapolation: 10.0,
            coverage: 0.8,
            n_bootstrap: 300,
            seed: 16,
        }
    }
}

/// A trend that reaches the failure limit: when, how sure, and the fit behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// The trend's shape.
    pub model: TrendModel,
    /// Time from the newest sample until the fitted trend reaches the limit (0 when the fitted
    /// trend is already past it).
    pub time_to_limit: f64,
    /// The interval's lower end, time from the newest sample.
    pub low: f64,
    /// The interval's upper end; `None` when more than the interval's upper tail of resampled
    /// trends never reach the limit.
    pub high: Option<f64>,
    /// The coverage the interval aims at.
    pub coverage: f64,
    /// Share of bootstrap refits whose trend reaches the limit within the extrapolation bound.
    pub confidence: f64,
    /// When the trend reaches the limit, in the samples' time.
    pub crossing_time: f64,
    /// The fitted value at the newest sample.
    pub level: f64,
    /// The fitted rate of change at the newest sample (value per time unit).
    pub rate: f64,
    /// Share of the values' variance the fit explains (in the values' own units).
    pub r_squared: f64,
    /// The slope over its standard error (in the fitted space: values or their logarithms).
    pub t_statistic: f64,
    /// Finite samples fitted.
    pub n_samples: usize,
    /// Time between the oldest and the newest sample.
    pub span: f64,
    /// The failure limit.
    pub limit: f64,
    /// Which side of the limit is failure.
    pub direction: Direction,
}

impl Forecast {
    /// The why of an alert, in words, with each time written by `duration` (the samples'
    /// time unit in, words out): "exponential trend (R² 0.94, 180 samples over 90 h) reaches
    /// 7.1 in 60–90 h (central 74 h); 97 % of resampled trends reach it".
    pub fn describe(&self, duration: impl Fn(f64) -> String) -> String {
        let shape = match self.model {
            TrendModel::Linear => "linear",
            TrendModel::Exponential => "exponential",
        };
        let when = match self.high {
            Some(high) => format!("{}–{}", duration(self.low), duration(high)),
            None => format!("{} or later", duration(self.low)),
        };
        format!(
            "{shape} trend (R² {:.2}, {} samples over {}) reaches {} in {when} \
             (central {}); {:.0} % of resampled trends reach it",
            self.r_squared,
            self.n_samples,
            duration(self.span),
            self.limit,
            duration(self.time_to_limit),
            self.confidence * 100.0
        )
    }
}

/// [`forecast_with`] with the default settings.
pub fn forecast(samples: &[(f64, f64)], limit: f64, direction: Direction) -> Option<Forecast> {
    forecast_with(samples, limit, direction, &TrendSettings::default())
}

/// When the trend of `samples` (time, value) reaches `limit` from the side `direction` says,
/// with an interval; `None` when there is no such trend (too few finite samples, no time span,
/// a flat trend, one moving away, or a crossing too far ahead to extrapolate to). Non-finite
/// samples are left out; the order of the samples does not matter.
pub fn forecast_with(
    samples: &[(f64, f64)],
    limit: f64,
    direction: Direction,
    settings: &TrendSettings,
) -> Option<Forecast> {
    if !limit.is_finite() {
        return None;
    }
    let mut finite: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect();
    if finite.len() < settings.min_samples.max(3) {
        return None;
    }
    finite.sort_by(|a, b| a.0.total_cmp(&b.0));
    let newest = finite.last()?.0;
    let span = newest - finite.first()?.0;
    if span <= 0.0 {
        return None;
    }
    // Time measured from the newest sample, so the intercept is the current level.
    let times: Vec<f64> = finite.iter().map(|(t, _)| t - newest).collect();
    let values: Vec<f64> = finite.iter().map(|(_, v)| *v).collect();
    let horizon = span * settings.max_extrapolation;

    let mut candidates = vec![Fit::new(TrendModel::Linear, &times, &values)?];
    if limit > 0.0 && values.iter().all(|&v| v > 0.0) {
        let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
        if let Some(fit) = Fit::new(TrendModel::Exponential, &times, &logs) {
            candidates.push(fit);
        }
    }
    let chosen = candidates
        .into_iter()
        .map(|fit| {
            let sse = fit.sse_in_values(&times, &values);
            (fit, sse)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let (fit, sse) = chosen;

    let toward = match direction {
        Direction::Rising => fit.slope > 0.0,
        Direction::Falling => fit.slope < 0.0,
    };
    let t_statistic = fit.t_statistic();
    if !toward || t_statistic.abs() < settings.min_t_statistic {
        return None;
    }
    let time_to_limit = fit.time_to_limit(limit, direction)?;
    if time_to_limit > horizon {
        return None;
    }

    // Moving-block bootstrap of the residuals in the fitted space.
    let fitted_space: Vec<f64> = match fit.model {
        TrendModel::Linear => values.clone(),
        TrendModel::Exponential => values.iter().map(|v| v.ln()).collect(),
    };
    let fitted: Vec<f64> = times.iter().map(|&t| fit.at(t)).collect();
    let residuals: Vec<f64> = fitted_space
        .iter()
        .zip(&fitted)
        .map(|(y, f)| y - f)
        .collect();
    let n = residuals.len();
    let block = ((n as f64).cbrt().round() as usize).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut draws: Vec<f64> = Vec::with_capacity(settings.n_bootstrap);
    let mut resampled = vec![0.0; n];
    for _ in 0..settings.n_bootstrap {
        let mut filled = 0;
        while filled < n {
            let start = rng.gen_range(0..=n - block);
            for offset in 0..block.min(n - filled) {
                resampled[filled + offset] = fitted[filled + offset] + residuals[start + offset];
            }
            filled += block;
        }
        let draw = Fit::new(fit.model, &times, &resampled)
            .filter(|refit| match direction {
                Direction::Rising => refit.slope > 0.0,
                Direction::Falling => refit.slope < 0.0,
            })
            .and_then(|refit| refit.time_to_limit(limit, direction))
            .filter(|&t| t <= horizon)
            .unwrap_or(f64::INFINITY);
        draws.push(draw);
    }
    draws.sort_by(f64::total_cmp);
    let n_reaching = draws.iter().filter(|t| t.is_finite()).count();
    let tail = (1.0 - settings.coverage) / 2.0;
    let quantile = |q: f64| -> f64 {
        let rank = ((draws.len() as f64 - 1.0) * q).round() as usize;
        draws.get(rank).copied().unwrap_or(f64::INFINITY)
    };
    let low = quantile(tail);
    let high = quantile(1.0 - tail);
    let total: f64 = {
        let mean = values.iter().sum::<f64>() / n as f64;
        values.iter().map(|v| (v - mean) * (v - mean)).sum()
    };
    let level = fit.value_at(0.0);
    Some(Forecast {
        model: fit.model,
        time_to_limit,
        low: if low.is_finite() {
            low.min(time_to_limit)
        } else {
            time_to_limit
        },
        high: high.is_finite().then(|| high.max(time_to_limit)),
        coverage: settings.coverage,
        confidence: n_reaching as f64 / draws.len().max(1) as f64,
        crossing_time: newest + time_to_limit,
        level,
        rate: match fit.model {
            TrendModel::Linear => fit.slope,
            TrendModel::Exponential => fit.slope * level,
        },
        r_squared: if total > 0.0 { 1.0 - sse / total } else { 0.0 },
        t_statistic,
        n_samples: n,
        span,
        limit,
        direction,
    })
}

/// A least-squares line `y = intercept + slope·t` (for the exponential, `y` is the logarithm).
#[derive(Debug, Clone, Copy)]
struct Fit {
    model: TrendModel,
    intercept: f64,
    slope: f64,
    slope_std_error: f64,
}

impl Fit {
    /// `None` when the times do not vary.
    fn new(model: TrendModel, times: &[f64], ys: &[f64]) -> Option<Self> {
        let n = times.len() as f64;
        let mean_t = times.iter().sum::<f64>() / n;
        let mean_y = ys.iter().sum::<f64>() / n;
        let (mut stt, mut sty) = (0.0, 0.0);
        for (&t, &y) in times.iter().zip(ys) {
            stt += (t - mean_t) * (t - mean_t);
            sty += (t - mean_t) * (y - mean_y);
        }
        if stt <= 0.0 {
            return None;
        }
        let slope = sty / stt;
        let intercept = mean_y - slope * mean_t;
        let sse: f64 = times
            .iter()
            .zip(ys)
            .map(|(&t, &y)| (y - intercept - slope * t).powi(2))
            .sum();
        let slope_std_error = (sse / (n - 2.0).max(1.0) / stt).sqrt();
        Some(Self {
            model,
            intercept,
            slope,
            slope_std_error,
        })
    }

    /// The line at `t`, in the fitted space.
    fn at(&self, t: f64) -> f64 {
        self.intercept + self.slope * t
    }

    /// The trend at `t`, in the values' units.
    fn value_at(&self, t: f64) -> f64 {
        match self.model {
            TrendModel::Linear => self.at(t),
            TrendModel::Exponential => self.at(t).exp(),
        }
    }

    fn sse_in_values(&self, times: &[f64], values: &[f64]) -> f64 {
        times
            .iter()
            .zip(values)
            .map(|(&t, &v)| (v - self.value_at(t)).powi(2))
            .sum()
    }

    fn t_statistic(&self) -> f64 {
        if self.slope_std_error > 0.0 {
            self.slope / self.slope_std_error
        } else if self.slope == 0.0 {
            0.0
        } else {
            // A perfect fit: as sure as a slope can be.
            self.slope.signum() * f64::MAX
        }
    }

    /// Time from `t = 0` until the trend reaches `limit`: 0 when it already has, `None` when it
    /// never does.
    fn time_to_limit(&self, limit: f64, direction: Direction) -> Option<f64> {
        let level = self.value_at(0.0);
        let past = match direction {
            Direction::Rising => level >= limit,
            Direction::Falling => level <= limit,
        };
        if past {
            return Some(0.0);
        }
        let target = match self.model {
            TrendModel::Linear => limit,
            TrendModel::Exponential if limit > 0.0 => limit.ln(),
            TrendModel::Exponential => return None,
        };
        if self.slope == 0.0 {
            return None;
        }
        let crossing = (target - self.intercept) / self.slope;
        (crossing.is_finite() && crossing >= 0.0).then_some(crossing)
    }
}

#[cfg(test)]
mod tests {
    use rand_distr::{Distribution, Normal};

    use super::*;

    /// Hourly samples over `hours` from `value_at`, with Gaussian noise of `noise_sd`.
    fn samples(
        hours: usize,
        noise_sd: f64,
        seed: u64,
        value_at: impl Fn(f64) -> f64,
    ) -> Vec<(f64, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let noise = Normal::new(0.0, noise_sd).expect("a valid deviation");
        (0..hours)
            .map(|h| {
                let t = h as f64;
                (t, value_at(t) + noise.sample(&mut rng))
            })
            .collect()
    }

    #[test]
    fn a_growing_vibration_is_forecast_within_its_interval() {
        // 2 mm/s rising 0.05 mm/s an hour reaches 10 mm/s at hour 160: 61 h after hour 99.
        let mut inside = 0;
        for seed in 0..20 {
            let history = samples(100, 0.3, seed, |t| 2.0 + 0.05 * t);
            let forecast =
                forecast(&history, 10.0, Direction::Rising).expect("a clear trend is forecast");
            let high = forecast.high.expect("an upper end");
            if forecast.low <= 61.0 && 61.0 <= high {
                inside += 1;
            }
            assert!((forecast.time_to_limit - 61.0).abs() < 10.0, "{forecast:?}");
            assert!(forecast.confidence > 0.9, "{forecast:?}");
            assert_eq!(forecast.model, TrendModel::Linear);
        }
        // The interval aims at 80 %: 16 of 20 on average; 12 leaves room for chance only.
        assert!(inside >= 12, "61 h inside {inside} of 20 intervals");
    }

    #[test]
    fn an_exponential_growth_is_fitted_as_one() {
        // e^(0.02 t) reaches e^3 at hour 150: 51 h after hour 99.
        let mut inside = 0;
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let noise = Normal::new(0.0, 0.03).expect("a valid deviation");
            let history: Vec<(f64, f64)> = (0..100)
                .map(|h| {
                    let t = h as f64;
                    (t, (0.02 * t).exp() * (1.0 + noise.sample(&mut rng)))
                })
                .collect();
            let forecast = forecast(&history, 3.0f64.exp(), Direction::Rising).expect("a forecast");
            assert_eq!(forecast.model, TrendModel::Exponential);
            assert!((forecast.time_to_limit - 51.0).abs() < 3.0, "{forecast:?}");
            let high = forecast.high.expect("an upper end");
            if forecast.low <= 51.0 && 51.0 <= high {
                inside += 1;
            }
            let text = forecast.describe(|h| format!("{h:.0} h"));
            assert!(text.contains("exponential trend"), "{text}");
        }
        assert!(inside >= 12, "51 h inside {inside} of 20 intervals");
    }

    #[test]
    fn a_falling_pressure_is_forecast_towards_a_low_limit() {
        // 6 bar losing 0.02 bar an hour reaches 4 bar at hour 100: 21 h after hour 79.
        let history = samples(80, 0.05, 3, |t| 6.0 - 0.02 * t);
        let forecast = forecast(&history, 4.0, Direction::Falling).expect("a forecast");
        let high = forecast.high.expect("an upper end");
        assert!(forecast.low <= 21.0 && 21.0 <= high, "{forecast:?}");
        assert!(forecast.rate < 0.0);
    }

    #[test]
    fn noise_without_trend_gives_no_forecast() {
        let mut forecasts = 0;
        for seed in 0..20 {
            let history = samples(100, 0.5, seed, |_| 3.0);
            if forecast(&history, 10.0, Direction::Rising).is_some() {
                forecasts += 1;
            }
        }
        // A t-statistic of 3 lets through well under 1 % of trendless series.
        assert_eq!(forecasts, 0);
    }

    #[test]
    fn a_trend_moving_away_from_the_limit_gives_no_forecast() {
        let history = samples(100, 0.2, 1, |t| 8.0 - 0.05 * t);
        assert_eq!(forecast(&history, 10.0, Direction::Rising), None);
        let rising = samples(100, 0.2, 1, |t| 2.0 + 0.05 * t);
        assert_eq!(forecast(&rising, 1.0, Direction::Falling), None);
    }

    #[test]
    fn a_crossing_beyond_the_extrapolation_bound_gives_no_forecast() {
        // Reaches 1000 only after ~20,000 h of 100 h of data.
        let history = samples(100, 0.1, 2, |t| 2.0 + 0.05 * t);
        assert_eq!(forecast(&history, 1000.0, Direction::Rising), None);
    }

    #[test]
    fn a_trend_already_past_the_limit_is_due_now() {
        let history = samples(50, 0.1, 4, |t| 2.0 + 0.2 * t);
        let forecast = forecast(&history, 5.0, Direction::Rising).expect("a forecast");
        assert_eq!(forecast.time_to_limit, 0.0);
        assert_eq!(forecast.crossing_time, 49.0);
    }

    #[test]
    fn bad_samples_give_no_forecast_and_no_panic() {
        assert_eq!(forecast(&[], 1.0, Direction::Rising), None);
        let same_time: Vec<(f64, f64)> = (0..20).map(|i| (5.0, i as f64)).collect();
        assert_eq!(forecast(&same_time, 100.0, Direction::Rising), None);
        let mut with_nan = samples(100, 0.3, 0, |t| 2.0 + 0.05 * t);
        with_nan[10].1 = f64::NAN;
        with_nan[20].0 = f64::INFINITY;
        let forecast = forecast(&with_nan, 10.0, Direction::Rising).expect("NaNs are left out");
        assert_eq!(forecast.n_samples, 98);
        assert_eq!(
            super::forecast(&with_nan, f64::NAN, Direction::Rising),
            None
        );
    }

    #[test]
    fn the_same_samples_give_the_same_forecast() {
        let history = samples(60, 0.3, 9, |t| 1.0 + 0.1 * t);
        assert_eq!(
            forecast(&history, 20.0, Direction::Rising),
            forecast(&history, 20.0, Direction::Rising)
        );
    }
}
