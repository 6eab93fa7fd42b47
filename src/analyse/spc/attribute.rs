//! p, u, Laney p′ and Laney u′ charts: counts out of samples of varying size.
//!
//! Plain p and u charts take their σ per point from the binomial or Poisson model. With the
//! station's 100 % inspection n is in the thousands, so that σ is tiny and the ordinary
//! variation between intervals (material lots, shifts) breaks the limits all day. Laney's charts
//! measure that extra variation on the standardised points, σ_z = MR̄(z) / 1.128, and widen the
//! limits by it; with no extra variation σ_z ≈ 1 and they are the plain charts.

use super::constants::D2_MOVING_RANGE;
use super::{
    Chart, ChartDetails, ChartKind, ChartOptions, Count, Limits, LimitsBasis, PointMeta,
    ShewhartPlot, SpcError, baseline_indices, fixed_limits, mean_moving_range, require_points,
    shewhart_points, sort_violations,
};

/// p chart: fraction defective p_i = d_i / n_i, centre p̄ = Σd / Σn, limits
/// p̄ ± 3√(p̄(1−p̄)/n_i) clamped to [0, 1].
pub fn p_chart(points: &[Count], options: &ChartOptions) -> Result<Chart, SpcError> {
    attribute_chart(ChartKind::P, points, options)
}

/// Laney p′ chart: limits p̄ ± 3 σ_pi σ_z, σ_pi = √(p̄(1−p̄)/n_i), σ_z = MR̄ of
/// z_i = (p_i − p̄)/σ_pi over 1.128.
pub fn laney_p_chart(points: &[Count], options: &ChartOptions) -> Result<Chart, SpcError> {
    attribute_chart(ChartKind::LaneyP, points, options)
}

/// u chart: defects per unit u_i = c_i / n_i, centre ū = Σc / Σn, limits ū ± 3√(ū/n_i),
/// LCL ≥ 0.
pub fn u_chart(points: &[Count], options: &ChartOptions) -> Result<Chart, SpcError> {
    attribute_chart(ChartKind::U, points, options)
}

/// Laney u′ chart: as [`laney_p_chart`] with σ_ui = √(ū/n_i).
pub fn laney_u_chart(points: &[Count], options: &ChartOptions) -> Result<Chart, SpcError> {
    attribute_chart(ChartKind::LaneyU, points, options)
}

fn attribute_chart(
    kind: ChartKind,
    points: &[Count],
    options: &ChartOptions,
) -> Result<Chart, SpcError> {
    if options.spec.is_some() {
        return Err(SpcError::SpecNotApplicable { chart: kind });
    }
    let proportion = matches!(kind, ChartKind::P | ChartKind::LaneyP);
    let laney = matches!(kind, ChartKind::LaneyP | ChartKind::LaneyU);
    for (index, point) in points.iter().enumerate() {
        if point.n == 0 {
            return Err(SpcError::ZeroSampleSize { index });
        }
        if proportion && point.count > point.n {
            return Err(SpcError::CountExceedsSample {
                index,
                count: point.count,
                n: point.n,
            });
        }
    }
    require_points(kind, 1, points.len())?;
    let ratio = |p: &Count| p.count as f64 / p.n as f64;
    // σ of the ratio at sample size n, for centre c, before Laney's factor.
    let binomial_sigma = |center: f64, n: u64| {
        let variance = if proportion {
            center * (1.0 - center)
        } else {
            center
        };
        (variance / n as f64).sqrt()
    };

    let (used, baseline) = baseline_indices(points.iter().map(|p| p.excluded), &options.limits)?;
    let (center, sigma_z, moving_range_z, basis) = match options.limits {
        Limits::Estimated { .. } => {
            require_points(kind, if laney { 2 } else { 1 }, used.len())?;
            let defects: f64 = used.iter().map(|&i| points[i].count as f64).sum();
            let sampled: f64 = used.iter().map(|&i| points[i].n as f64).sum();
            let center = defects / sampled;
            if center == 0.0 || (proportion && center == 1.0) {
                return Err(SpcError::NoVariation {
                    chart: kind,
                    what: if proportion {
                        "binomial σ (p̄ is 0 or 1)"
                    } else {
                        "Poisson σ (ū is 0)"
                    },
                });
            }
            let (sigma_z, moving_range_z) = if laney {
                let z: Vec<f64> = used
                    .iter()
                    .map(|&i| (ratio(&points[i]) - center) / binomial_sigma(center, points[i].n))
                    .collect();
                let moving_range = mean_moving_range(&z).unwrap_or(0.0);
                if moving_range == 0.0 {
                    return Err(SpcError::NoVariation {
                        chart: kind,
                        what: "σ_z",
                    });
                }
                (moving_range / D2_MOVING_RANGE, Some(moving_range))
            } else {
                (1.0, None)
            };
            let basis = LimitsBasis::Estimated {
                baseline,
                points_used: used.len(),
            };
            (center, sigma_z, moving_range_z, basis)
        }
        Limits::Fixed { center, sigma } => {
            let (center, sigma) = fixed_limits(center, sigma)?;
            if center <= 0.0 || (proportion && center >= 1.0) {
                return Err(SpcError::InvalidParameter {
                    name: "center",
                    value: center,
                    expected: if proportion {
                        "a proportion strictly between 0 and 1"
                    } else {
                        "a rate above 0"
                    },
                });
            }
            if !laney && sigma != 1.0 {
                return Err(SpcError::InvalidParameter {
                    name: "sigma",
                    value: sigma,
                    expected: "1 on plain p and u charts (σ_z; use a Laney chart to widen)",
                });
            }
            (center, sigma, None, LimitsBasis::Fixed)
        }
    };

    let meta: Vec<PointMeta> = points
        .iter()
        .enumerate()
        .map(|(index, p)| PointMeta {
            index,
            at: p.at,
            n: Some(p.n),
            excluded: p.excluded,
        })
        .collect();
    let plots: Vec<ShewhartPlot> = points
        .iter()
        .map(|p| ShewhartPlot {
            value: ratio(p),
            center,
            sigma: binomial_sigma(center, p.n) * sigma_z,
            floor: Some(0.0),
            ceiling: proportion.then_some(1.0),
        })
        .collect();
    let (chart_points, mut violations) = shewhart_points(&meta, &plots, &options.rules);
    sort_violations(&mut violations);
    Ok(Chart {
        kind,
        center,
        sigma: sigma_z,
        limits: basis,
        rules: options.rules.iter().collect(),
        points: chart_points,
        secondary: None,
        violations,
        capability: None,
        details: ChartDetails::Attribute {
            sigma_z,
            moving_range_z,
        },
    })
}
