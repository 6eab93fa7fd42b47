//! Variables charts: individuals with moving range (I-MR), X̄-R and X̄-S, and process capability.

use super::constants::{D2_MOVING_RANGE, D4_MOVING_RANGE, SubgroupConstants, constants_for};
use super::{
    Capability, Chart, ChartDetails, ChartKind, ChartOptions, Limits, LimitsBasis, Observation,
    PointMeta, SecondaryKind, ShewhartPlot, SpcError, SpecLimits, Subgroup, baseline_indices,
    dispersion_chart, finite, fixed_limits, mean_moving_range, require_points, shewhart_points,
    sort_violations,
};

/// Checks every value is finite, naming the first that is not.
pub(super) fn check_observations(points: &[Observation]) -> Result<(), SpcError> {
    for (index, point) in points.iter().enumerate() {
        finite(point.value, index, "value")?;
    }
    Ok(())
}

/// Phase I μ and σ of individuals, σ = MR̄ / 1.128 over consecutive included baseline points,
/// or the given ones; with the basis and MR̄ (1.128 σ when fixed).
pub(super) fn individuals_estimate(
    kind: ChartKind,
    points: &[Observation],
    limits: &Limits,
) -> Result<(f64, f64, f64, LimitsBasis), SpcError> {
    let (used, baseline) = baseline_indices(points.iter().map(|p| p.excluded), limits)?;
    match *limits {
        Limits::Estimated { .. } => {
            require_points(kind, 2, used.len())?;
            let values: Vec<f64> = used.iter().map(|&i| points[i].value).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let moving_range = mean_moving_range(&values).unwrap_or(0.0);
            if moving_range == 0.0 {
                return Err(SpcError::NoVariation {
                    chart: kind,
                    what: "mean moving range",
                });
            }
            let basis = LimitsBasis::Estimated {
                baseline,
                points_used: used.len(),
            };
            Ok((mean, moving_range / D2_MOVING_RANGE, moving_range, basis))
        }
        Limits::Fixed { center, sigma } => {
            let (center, sigma) = fixed_limits(center, sigma)?;
            Ok((center, sigma, sigma * D2_MOVING_RANGE, LimitsBasis::Fixed))
        }
    }
}

/// Capability of a variables chart's included values, σ within estimated from all of them the
/// way the chart estimates σ (so it describes the data shown, whatever set the limits).
pub(super) fn chart_capability(
    chart: ChartKind,
    spec: Option<&SpecLimits>,
    values: &[f64],
    sigma_within: impl FnOnce() -> f64,
) -> Result<Option<super::Capability>, SpcError> {
    match spec {
        Some(spec) => capability_of(chart, values, sigma_within(), spec).map(Some),
        None => Ok(None),
    }
}

/// Individuals chart (x_i, limits μ ± 3σ with σ = MR̄ / 1.128) with its moving-range chart
/// (MR_i = |x_i − x_{i−1}| over consecutive included points, UCL = 3.267 MR̄, LCL = 0).
pub fn individuals_chart(
    points: &[Observation],
    options: &ChartOptions,
) -> Result<Chart, SpcError> {
    let kind = ChartKind::Individuals;
    check_observations(points)?;
    require_points(kind, 1, points.len())?;
    let (center, sigma, moving_range, basis) = individuals_estimate(kind, points, &options.limits)?;
    let meta = observation_meta(points);
    let plots: Vec<ShewhartPlot> = points
        .iter()
        .map(|p| ShewhartPlot {
            value: p.value,
            center,
            sigma,
            floor: None,
            ceiling: None,
        })
        .collect();
    let (chart_points, mut violations) = shewhart_points(&meta, &plots, &options.rules);

    let mut ranges = Vec::new();
    let mut previous: Option<f64> = None;
    for (m, p) in meta.iter().zip(points).filter(|(m, _)| !m.excluded) {
        if let Some(previous) = previous {
            ranges.push((m.clone(), (p.value - previous).abs()));
        }
        previous = Some(p.value);
    }
    let (secondary, secondary_violations) = dispersion_chart(
        SecondaryKind::MovingRange,
        ranges,
        moving_range,
        0.0,
        D4_MOVING_RANGE * moving_range,
        &options.rules,
    );
    violations.extend(secondary_violations);
    sort_violations(&mut violations);

    let included = included_values(points);
    let capability = chart_capability(kind, options.spec.as_ref(), &included, || {
        mean_moving_range(&included).unwrap_or(0.0) / D2_MOVING_RANGE
    })?;
    Ok(Chart {
        kind,
        center,
        sigma,
        limits: basis,
        rules: options.rules.iter().collect(),
        points: chart_points,
        secondary: Some(secondary),
        violations,
        capability,
        details: ChartDetails::Individuals { moving_range },
    })
}

/// X̄-R chart: subgroup means, limits x̿ ± A2 R̄ (σ = R̄ / d2), with the range chart
/// (D3 R̄, R̄, D4 R̄). Phase II: x̄ limits μ ± 3σ/√n, range chart centred on d2 σ.
pub fn xbar_r_chart(subgroups: &[Subgroup], options: &ChartOptions) -> Result<Chart, SpcError> {
    subgroup_chart(ChartKind::XbarR, subgroups, options)
}

/// X̄-S chart: subgroup means, limits x̿ ± A3 s̄ (σ = s̄ / c4), with the s chart
/// (B3 s̄, s̄, B4 s̄). Phase II: x̄ limits μ ± 3σ/√n, s chart centred on c4 σ.
pub fn xbar_s_chart(subgroups: &[Subgroup], options: &ChartOptions) -> Result<Chart, SpcError> {
    subgroup_chart(ChartKind::XbarS, subgroups, options)
}

fn subgroup_chart(
    kind: ChartKind,
    subgroups: &[Subgroup],
    options: &ChartOptions,
) -> Result<Chart, SpcError> {
    let first = subgroups.first().ok_or(SpcError::TooFewPoints {
        chart: kind,
        needed: 1,
        got: 0,
    })?;
    let size = first.values.len();
    let constants = constants_for(size, 0)?;
    for (index, subgroup) in subgroups.iter().enumerate() {
        if subgroup.values.len() != size {
            return Err(SpcError::SubgroupSizeMismatch {
                index,
                size: subgroup.values.len(),
                expected: size,
            });
        }
        for value in &subgroup.values {
            finite(*value, index, "subgroup value")?;
        }
    }
    let use_range = kind == ChartKind::XbarR;
    let means: Vec<f64> = subgroups.iter().map(|s| mean(&s.values)).collect();
    let dispersions: Vec<f64> = subgroups
        .iter()
        .map(|s| {
            if use_range {
                range(&s.values)
            } else {
                std_dev(&s.values)
            }
        })
        .collect();
    // E[dispersion] / σ, and (LCL, UCL) factors on the mean dispersion.
    let (unbias, lower_factor, upper_factor) = dispersion_factors(&constants, use_range);

    let (used, baseline) = baseline_indices(subgroups.iter().map(|s| s.excluded), &options.limits)?;
    let (center, sigma, mean_dispersion, xbar_sigma, basis) = match options.limits {
        Limits::Estimated { .. } => {
            require_points(kind, 2, used.len())?;
            let center = used.iter().map(|&i| means[i]).sum::<f64>() / used.len() as f64;
            let mean_dispersion =
                used.iter().map(|&i| dispersions[i]).sum::<f64>() / used.len() as f64;
            if mean_dispersion == 0.0 {
                return Err(SpcError::NoVariation {
                    chart: kind,
                    what: if use_range { "R̄" } else { "s̄" },
                });
            }
            // The handbook's A2 (table) or A3 (3 / (c4 √n)) times R̄ or s̄ is the 3σ width.
            let half_width = if use_range {
                constants.a2 * mean_dispersion
            } else {
                constants.a3 * mean_dispersion
            };
            let basis = LimitsBasis::Estimated {
                baseline,
                points_used: used.len(),
            };
            (
                center,
                mean_dispersion / unbias,
                mean_dispersion,
                half_width / 3.0,
                basis,
            )
        }
        Limits::Fixed { center, sigma } => {
            let (center, sigma) = fixed_limits(center, sigma)?;
            let xbar_sigma = sigma / (size as f64).sqrt();
            (
                center,
                sigma,
                unbias * sigma,
                xbar_sigma,
                LimitsBasis::Fixed,
            )
        }
    };

    let meta: Vec<PointMeta> = subgroups
        .iter()
        .enumerate()
        .map(|(index, s)| PointMeta {
            index,
            at: s.at,
            n: Some(size as u64),
            excluded: s.excluded,
        })
        .collect();
    let plots: Vec<ShewhartPlot> = means
        .iter()
        .map(|&value| ShewhartPlot {
            value,
            center,
            sigma: xbar_sigma,
            floor: None,
            ceiling: None,
        })
        .collect();
    let (chart_points, mut violations) = shewhart_points(&meta, &plots, &options.rules);
    let (secondary, secondary_violations) = dispersion_chart(
        if use_range {
            SecondaryKind::Range
        } else {
            SecondaryKind::StdDev
        },
        meta.iter()
            .cloned()
            .zip(dispersions.iter().copied())
            .collect(),
        mean_dispersion,
        lower_factor * mean_dispersion,
        upper_factor * mean_dispersion,
        &options.rules,
    );
    violations.extend(secondary_violations);
    sort_violations(&mut violations);

    let included: Vec<usize> = (0..subgroups.len())
        .filter(|&i| !subgroups[i].excluded)
        .collect();
    let values: Vec<f64> = included
        .iter()
        .flat_map(|&i| subgroups[i].values.iter().copied())
        .collect();
    let capability = chart_capability(kind, options.spec.as_ref(), &values, || {
        let total: f64 = included.iter().map(|&i| dispersions[i]).sum();
        total / included.len() as f64 / unbias
    })?;
    Ok(Chart {
        kind,
        center,
        sigma,
        limits: basis,
        rules: options.rules.iter().collect(),
        points: chart_points,
        secondary: Some(secondary),
        violations,
        capability,
        details: ChartDetails::Subgroups {
            constants,
            mean_dispersion,
        },
    })
}

/// (d2, D3, D4) for ranges or (c4, B3, B4) for standard deviations.
fn dispersion_factors(constants: &SubgroupConstants, use_range: bool) -> (f64, f64, f64) {
    if use_range {
        (constants.d2, constants.d3, constants.d4)
    } else {
        (constants.c4, constants.b3, constants.b4)
    }
}

/// Process capability of `values` against `spec`: Cp, Cpk on `sigma_within`, Pp, Ppk on the
/// standard deviation of `values` (n − 1). At least one limit; two must be ordered.
pub fn capability(
    values: &[f64],
    sigma_within: f64,
    spec: &SpecLimits,
) -> Result<Capability, SpcError> {
    capability_of(ChartKind::Individuals, values, sigma_within, spec)
}

/// [`capability`], naming `chart` in its errors.
fn capability_of(
    chart: ChartKind,
    values: &[f64],
    sigma_within: f64,
    spec: &SpecLimits,
) -> Result<Capability, SpcError> {
    if spec.lower.is_none() && spec.upper.is_none() {
        return Err(SpcError::InvalidSpec("give a lower or an upper limit"));
    }
    if spec.lower.is_some_and(|l| !l.is_finite()) || spec.upper.is_some_and(|u| !u.is_finite()) {
        return Err(SpcError::InvalidSpec("limits must be finite numbers"));
    }
    if let (Some(lower), Some(upper)) = (spec.lower, spec.upper)
        && lower >= upper
    {
        return Err(SpcError::InvalidSpec(
            "the lower limit must be below the upper",
        ));
    }
    for (index, value) in values.iter().enumerate() {
        finite(*value, index, "value")?;
    }
    if values.len() < 2 {
        return Err(SpcError::TooFewPoints {
            chart,
            needed: 2,
            got: values.len(),
        });
    }
    let sigma_overall = std_dev(values);
    for (what, sigma) in [("σ within", sigma_within), ("σ overall", sigma_overall)] {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(SpcError::NoVariation { chart, what });
        }
    }
    let mean = mean(values);
    let indices = |sigma: f64| {
        let both = spec.lower.zip(spec.upper);
        let ratio = both.map(|(l, u)| (u - l) / (6.0 * sigma));
        let lower = spec.lower.map(|l| (mean - l) / (3.0 * sigma));
        let upper = spec.upper.map(|u| (u - mean) / (3.0 * sigma));
        let worst = match (lower, upper) {
            (Some(l), Some(u)) => l.min(u),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => f64::NAN, // ruled out above
        };
        (ratio, lower, upper, worst)
    };
    let (cp, cpl, cpu, cpk) = indices(sigma_within);
    let (pp, ppl, ppu, ppk) = indices(sigma_overall);
    Ok(Capability {
        lower: spec.lower,
        upper: spec.upper,
        mean,
        sigma_within,
        sigma_overall,
        values: values.len(),
        cp,
        cpl,
        cpu,
        cpk,
        pp,
        ppl,
        ppu,
        ppk,
    })
}

pub(super) fn observation_meta(points: &[Observation]) -> Vec<PointMeta> {
    points
        .iter()
        .enumerate()
        .map(|(index, p)| PointMeta {
            index,
            at: p.at,
            n: None,
            excluded: p.excluded,
        })
        .collect()
}

pub(super) fn included_values(points: &[Observation]) -> Vec<f64> {
    points
        .iter()
        .filter(|p| !p.excluded)
        .map(|p| p.value)
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn range(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    max - min
}

/// Sample standard deviation (n − 1 denominator).
fn std_dev(values: &[f64]) -> f64 {
    let mean = mean(values);
    let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    (squares / (values.len() - 1) as f64).sqrt()
}
