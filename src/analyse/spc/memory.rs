//! Memory-based charts, EWMA and tabular CUSUM: they accumulate evidence over many points, so a
//! shift of half a σ to one σ that an individuals chart only sees after dozens of points signals
//! here within a handful. Their statistics are autocorrelated, so the run rules do not apply:
//! each chart has its one signal, reported as a rule (`ewma_limit`, `cusum_upper`,
//! `cusum_lower`). An excluded point leaves the statistic as it was (and, for EWMA, the limits:
//! t counts included points only).

use serde::{Deserialize, Serialize};

use super::constants::D2_MOVING_RANGE;
use super::rules::{self, Firing, RuleId};
use super::variables::{
    chart_capability, check_observations, included_values, individuals_estimate, observation_meta,
};
use super::{
    Chart, ChartDetails, ChartKind, ChartOptions, ChartPoint, Direction, Observation,
    SecondaryChart, SecondaryKind, Series, SpcError, mean_moving_range, require_points,
    sort_violations,
};

/// EWMA parameters: weight λ of the newest point (0 < λ ≤ 1; small λ, long memory) and limit
/// width L in σ of the EWMA statistic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EwmaOptions {
    pub lambda: f64,
    pub l: f64,
}

impl Default for EwmaOptions {
    /// λ = 0.2 and L = 3: Montgomery's usual design, in-control ARL ≈ 500.
    fn default() -> Self {
        EwmaOptions {
            lambda: 0.2,
            l: 3.0,
        }
    }
}

/// Tabular CUSUM parameters in units of σ: reference value k (half the shift to detect) and
/// decision interval h; `head_start` starts both sums at h/2 (FIR), so a process that starts
/// out of control signals sooner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CusumOptions {
    pub k: f64,
    pub h: f64,
    pub head_start: bool,
}

impl Default for CusumOptions {
    /// k = 0.5, h = 5: detects a 1σ shift, in-control ARL ≈ 465.
    fn default() -> Self {
        CusumOptions {
            k: 0.5,
            h: 5.0,
            head_start: false,
        }
    }
}

fn positive(name: &'static str, value: f64) -> Result<f64, SpcError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(SpcError::InvalidParameter {
            name,
            value,
            expected: "a finite number above 0",
        })
    }
}

/// EWMA chart: z_t = λ x_t + (1 − λ) z_{t−1}, z_0 = μ, with the exact time-varying limits
/// μ ± L σ √(λ/(2−λ) · (1 − (1−λ)^{2t})). μ and σ as for the individuals chart (σ = MR̄/1.128).
pub fn ewma_chart(
    points: &[Observation],
    ewma: &EwmaOptions,
    options: &ChartOptions,
) -> Result<Chart, SpcError> {
    let kind = ChartKind::Ewma;
    let lambda = positive("lambda", ewma.lambda)?;
    if lambda > 1.0 {
        return Err(SpcError::InvalidParameter {
            name: "lambda",
            value: lambda,
            expected: "at most 1",
        });
    }
    let width = positive("l", ewma.l)?;
    check_observations(points)?;
    require_points(kind, 1, points.len())?;
    let (center, sigma, _, basis) = individuals_estimate(kind, points, &options.limits)?;

    let mut statistic = center;
    let mut t: i32 = 0;
    let mut previous_included: Option<usize> = None;
    let mut firings = Vec::new();
    let mut chart_points = Vec::with_capacity(points.len());
    for (meta, point) in observation_meta(points).into_iter().zip(points) {
        if !meta.excluded {
            t = t.saturating_add(1);
            statistic = lambda * point.value + (1.0 - lambda) * statistic;
        }
        let half_width =
            width * sigma * (lambda / (2.0 - lambda) * (1.0 - (1.0 - lambda).powi(2 * t))).sqrt();
        let (lcl, ucl) = (center - half_width, center + half_width);
        if !meta.excluded {
            let direction = if statistic > ucl {
                Some(Direction::Above)
            } else if statistic < lcl {
                Some(Direction::Below)
            } else {
                None
            };
            if let Some(direction) = direction {
                firings.push(signal(
                    RuleId::EwmaLimit,
                    meta.index,
                    previous_included,
                    direction,
                ));
            }
            previous_included = Some(meta.index);
        }
        chart_points.push(ChartPoint {
            index: meta.index,
            at: meta.at,
            value: statistic,
            center,
            lcl,
            ucl,
            z: None,
            n: None,
            excluded: meta.excluded,
            rules: Vec::new(),
        });
    }
    let mut violations = rules::attach(&mut chart_points, firings, Series::Primary);
    sort_violations(&mut violations);
    Ok(Chart {
        kind,
        center,
        sigma,
        limits: basis,
        rules: vec![RuleId::EwmaLimit],
        points: chart_points,
        secondary: None,
        violations,
        capability: memory_capability(kind, points, options)?,
        details: ChartDetails::Ewma { lambda, l: width },
    })
}

/// Tabular CUSUM: S⁺_t = max(0, S⁺_{t−1} + (x_t − μ) − K), S⁻_t = max(0, S⁻_{t−1} − (x_t − μ) − K)
/// with K = kσ, signalling where a sum exceeds H = hσ. The main series is S⁺, the secondary S⁻;
/// both are plotted upwards from 0 against H. The sums are not reset after a signal, so the
/// chart shows how long a shift lasted.
pub fn cusum_chart(
    points: &[Observation],
    cusum: &CusumOptions,
    options: &ChartOptions,
) -> Result<Chart, SpcError> {
    let kind = ChartKind::Cusum;
    let k = positive("k", cusum.k)?;
    let h = positive("h", cusum.h)?;
    check_observations(points)?;
    require_points(kind, 1, points.len())?;
    let (center, sigma, _, basis) = individuals_estimate(kind, points, &options.limits)?;
    let reference = k * sigma;
    let decision_interval = h * sigma;
    let head_start = if cusum.head_start {
        decision_interval / 2.0
    } else {
        0.0
    };

    let (mut upper, mut lower) = (head_start, head_start);
    let mut previous_included: Option<usize> = None;
    let (mut upper_firings, mut lower_firings) = (Vec::new(), Vec::new());
    let (mut upper_points, mut lower_points) = (Vec::new(), Vec::new());
    for (meta, point) in observation_meta(points).into_iter().zip(points) {
        if !meta.excluded {
            let deviation = point.value - center;
            upper = (upper + deviation - reference).max(0.0);
            lower = (lower - deviation - reference).max(0.0);
            if upper > decision_interval {
                upper_firings.push(signal(
                    RuleId::CusumUpper,
                    meta.index,
                    previous_included,
                    Direction::Above,
                ));
            }
            if lower > decision_interval {
                lower_firings.push(signal(
                    RuleId::CusumLower,
                    meta.index,
                    previous_included,
                    Direction::Below,
                ));
            }
            previous_included = Some(meta.index);
        }
        for (value, series) in [(upper, &mut upper_points), (lower, &mut lower_points)] {
            series.push(ChartPoint {
                index: meta.index,
                at: meta.at,
                value,
                center: 0.0,
                lcl: 0.0,
                ucl: decision_interval,
                z: None,
                n: None,
                excluded: meta.excluded,
                rules: Vec::new(),
            });
        }
    }
    let mut violations = rules::attach(&mut upper_points, upper_firings, Series::Primary);
    violations.extend(rules::attach(
        &mut lower_points,
        lower_firings,
        Series::Secondary,
    ));
    sort_violations(&mut violations);
    Ok(Chart {
        kind,
        center,
        sigma,
        limits: basis,
        rules: vec![RuleId::CusumUpper, RuleId::CusumLower],
        points: upper_points,
        secondary: Some(SecondaryChart {
            kind: SecondaryKind::CusumLower,
            center: 0.0,
            points: lower_points,
        }),
        violations,
        capability: memory_capability(kind, points, options)?,
        details: ChartDetails::Cusum {
            k,
            h,
            reference,
            decision_interval,
            head_start,
        },
    })
}

/// A signal at `at`; consecutive signalling points (no included point between) are one
/// violation.
fn signal(rule: RuleId, at: usize, previous: Option<usize>, direction: Direction) -> Firing {
    Firing {
        rule,
        at,
        merge_from: previous.unwrap_or(at),
        involved: vec![at],
        direction: Some(direction),
    }
}

fn memory_capability(
    kind: ChartKind,
    points: &[Observation],
    options: &ChartOptions,
) -> Result<Option<super::Capability>, SpcError> {
    let included = included_values(points);
    chart_capability(kind, options.spec.as_ref(), &included, || {
        mean_moving_range(&included).unwrap_or(0.0) / D2_MOVING_RANGE
    })
}
