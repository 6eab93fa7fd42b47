//! Statistical process control for the MES view: control charts as pure functions of their data.
//!
//! Every chart takes its points in time order and returns a [`Chart`], the body the API serves:
//! each point with its own limits (they vary with n on attribute charts, with t on EWMA), the
//! rules it broke, the violations grouped as an operator reads them, and the chart's estimates.
//!
//! * attribute charts ([`p_chart`], [`laney_p_chart`], [`u_chart`], [`laney_u_chart`]): the
//!   station inspects every part, so n is large and plain p/u limits become too tight for the
//!   ordinary between-interval variation; Laney's p′/u′ widen them by the observed dispersion;
//! * variables charts ([`individuals_chart`], [`xbar_r_chart`], [`xbar_s_chart`]) with process
//!   capability where a tag has specification limits;
//! * memory-based charts ([`ewma_chart`], [`cusum_chart`]) for the slow drifts Shewhart charts
//!   miss.
//!
//! Limits are either estimated from the data (Phase I, optionally from the first points only)
//! or fixed (Phase II). A point marked `excluded` (bad data quality, or set aside by a person:
//! AVEVA's `ignoreSample`) is plotted but left out of every statistic and every rule: the
//! points around it are treated as consecutive. Formulas: mes-anchors §1.3 (Montgomery, Laney
//! 2002, Nelson 1984, Western Electric 1956).

mod attribute;
mod constants;
mod memory;
mod rules;
mod variables;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use attribute::{laney_p_chart, laney_u_chart, p_chart, u_chart};
pub use constants::{SUBGROUP_SIZES, SubgroupConstants, subgroup_constants};
pub use memory::{CusumOptions, EwmaOptions, cusum_chart, ewma_chart};
pub use rules::{RuleId, RuleSet};
pub use variables::{capability, individuals_chart, xbar_r_chart, xbar_s_chart};

/// Why a chart could not be computed. Each message names the point, subgroup or field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpcError {
    #[error(
        "the {chart} chart needs at least {needed} included points to estimate its limits, got {got}"
    )]
    TooFewPoints {
        chart: ChartKind,
        needed: usize,
        got: usize,
    },
    #[error("point {index}: {field} is not a finite number")]
    NonFinite { index: usize, field: &'static str },
    #[error("point {index}: sample size n is 0")]
    ZeroSampleSize { index: usize },
    #[error("point {index}: {count} defectives out of n = {n}")]
    CountExceedsSample { index: usize, count: u64, n: u64 },
    #[error("subgroup {index} has {size} values; X̄ charts take subgroups of 2 to 25 values")]
    SubgroupSize { index: usize, size: usize },
    #[error("subgroup {index} has {size} values where the first has {expected}")]
    SubgroupSizeMismatch {
        index: usize,
        size: usize,
        expected: usize,
    },
    #[error("the {chart} chart's {what} is 0: the data show no variation, so there are no limits")]
    NoVariation {
        chart: ChartKind,
        what: &'static str,
    },
    #[error("{name} = {value} is out of range: it must be {expected}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("baseline = {baseline} is out of range: the chart has {points} points")]
    InvalidBaseline { baseline: usize, points: usize },
    #[error("specification limits: {0}")]
    InvalidSpec(&'static str),
    #[error("the {chart} chart counts attributes: specification limits apply to variables charts")]
    SpecNotApplicable { chart: ChartKind },
    #[error("unknown run rule {name:?}; known: {known}")]
    UnknownRule { name: String, known: String },
}

/// One measured value (an individual, or the observation an EWMA/CUSUM chart follows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    pub value: f64,
    /// Plotted, but left out of every statistic and rule (bad quality, or set aside).
    #[serde(default)]
    pub excluded: bool,
}

/// The values measured together at one time, for the X̄-R and X̄-S charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subgroup {
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    pub values: Vec<f64>,
    #[serde(default)]
    pub excluded: bool,
}

/// A count out of a sample: defectives out of `n` parts (p charts) or defects on `n` units
/// (u charts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Count {
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    pub count: u64,
    pub n: u64,
    #[serde(default)]
    pub excluded: bool,
}

/// Where a chart's centre and σ come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Limits {
    /// Phase I: from the data, or from the first `baseline` points only (excluded ones among
    /// them do not count), so later points are judged against a period known to be stable.
    Estimated {
        #[serde(default)]
        baseline: Option<usize>,
    },
    /// Phase II: given. `center` is the process mean (p̄ or ū for attribute charts); `sigma` is
    /// the process σ for variables charts and Laney's σ_z for p′/u′ (1 for plain p and u).
    Fixed { center: f64, sigma: f64 },
}

impl Default for Limits {
    fn default() -> Self {
        Limits::Estimated { baseline: None }
    }
}

/// Lower and/or upper specification limits of a tag; one-sided specifications are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecLimits {
    #[serde(default)]
    pub lower: Option<f64>,
    #[serde(default)]
    pub upper: Option<f64>,
}

/// What every chart is asked for besides its data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChartOptions {
    #[serde(default)]
    pub limits: Limits,
    /// The run rules to evaluate (default: Nelson 1 only). EWMA and CUSUM charts evaluate their
    /// own signal instead.
    #[serde(default)]
    pub rules: RuleSet,
    /// Specification limits: a variables chart with them reports [`Capability`].
    #[serde(default)]
    pub spec: Option<SpecLimits>,
}

/// Which chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    P,
    LaneyP,
    U,
    LaneyU,
    Individuals,
    XbarR,
    XbarS,
    Ewma,
    Cusum,
}

impl std::fmt::Display for ChartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChartKind::P => "p",
            ChartKind::LaneyP => "Laney p′",
            ChartKind::U => "u",
            ChartKind::LaneyU => "Laney u′",
            ChartKind::Individuals => "individuals",
            ChartKind::XbarR => "X̄-R",
            ChartKind::XbarS => "X̄-S",
            ChartKind::Ewma => "EWMA",
            ChartKind::Cusum => "CUSUM",
        })
    }
}

/// The companion chart drawn under the main one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondaryKind {
    /// |x_i − x_{i−1}| of the individuals chart.
    MovingRange,
    /// Subgroup ranges of the X̄-R chart.
    Range,
    /// Subgroup standard deviations of the X̄-S chart.
    StdDev,
    /// S⁻, the lower CUSUM (the main series is S⁺).
    CusumLower,
}

/// Which of a chart's two series a violation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Series {
    Primary,
    Secondary,
}

/// Which way a violation points: the side of the centre line, or the direction of a trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Above,
    Below,
    Increasing,
    Decreasing,
}

/// A computed control chart: the API's response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    pub kind: ChartKind,
    /// Centre line: p̄, ū, the process mean μ (x̿ on X̄ charts).
    pub center: f64,
    /// The chart's σ: process σ for variables, EWMA and CUSUM charts (σ within: MR̄/d2, R̄/d2,
    /// s̄/c4); σ_z for Laney p′/u′; 1 for plain p and u, whose σ is binomial/Poisson per point.
    pub sigma: f64,
    /// How the limits were set.
    pub limits: LimitsBasis,
    /// The rules evaluated on this chart.
    pub rules: Vec<RuleId>,
    /// One point per input point, in input order (`points[i].index == i`), excluded ones too.
    pub points: Vec<ChartPoint>,
    /// The moving range, range, s or S⁻ chart.
    pub secondary: Option<SecondaryChart>,
    /// Every rule broken, grouped: one entry per pattern (a run of 12 on one side is one
    /// Nelson 2 violation, not four).
    pub violations: Vec<Violation>,
    /// Cp, Cpk, Pp, Ppk, where specification limits were given.
    pub capability: Option<Capability>,
    /// What only this kind of chart has.
    pub details: ChartDetails,
}

/// How a chart's limits were set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum LimitsBasis {
    /// From the data: `points_used` included points (subgroups) of the first `baseline` points,
    /// or of all of them.
    Estimated {
        baseline: Option<usize>,
        points_used: usize,
    },
    /// Given.
    Fixed,
}

/// The estimates and parameters particular to a kind of chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartDetails {
    /// p, u, p′, u′: σ_z (1 for p and u) and, for Laney charts estimated from data, the mean
    /// moving range of z it came from.
    Attribute {
        sigma_z: f64,
        moving_range_z: Option<f64>,
    },
    /// Individuals: the mean moving range MR̄ (σ = MR̄ / 1.128).
    Individuals { moving_range: f64 },
    /// X̄-R, X̄-S: the subgroup size, its constants, and R̄ or s̄.
    Subgroups {
        constants: SubgroupConstants,
        mean_dispersion: f64,
    },
    /// EWMA weight λ and limit width L (in σ of the EWMA statistic).
    Ewma { lambda: f64, l: f64 },
    /// CUSUM reference value k and decision interval h in σ, as data units (K = kσ, H = hσ),
    /// and the starting sums.
    Cusum {
        k: f64,
        h: f64,
        reference: f64,
        decision_interval: f64,
        head_start: f64,
    },
}

/// One plotted point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartPoint {
    /// Position in the input.
    pub index: usize,
    pub at: Option<DateTime<Utc>>,
    /// The plotted statistic: p_i, u_i, x_i, x̄_i, R_i, s_i, the EWMA z_t, S⁺ or S⁻.
    pub value: f64,
    pub center: f64,
    /// Lower control limit (clamped at 0 where the statistic cannot go below).
    pub lcl: f64,
    /// Upper control limit (clamped at 1 for proportions).
    pub ucl: f64,
    /// Distance from the centre in σ of the plotted statistic at this point, which the zone
    /// rules read (so rules work alike on variable-n charts). `None` for excluded points and
    /// on charts without zones (EWMA, CUSUM, the secondary charts).
    pub z: Option<f64>,
    /// Sample size of the point: n for attribute charts, the subgroup size for X̄ charts.
    pub n: Option<u64>,
    pub excluded: bool,
    /// The rules this point signalled (it completed the pattern), in rule order.
    pub rules: Vec<RuleId>,
}

/// The companion chart: its kind, centre, and points (only those that have a value: the first
/// point and excluded ones have no moving range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondaryChart {
    pub kind: SecondaryKind,
    pub center: f64,
    pub points: Vec<ChartPoint>,
}

/// One broken rule: which, on which series, the points that make up the pattern, and a line
/// for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: RuleId,
    pub series: Series,
    /// Input indices of the points in the pattern, ascending.
    pub points: Vec<usize>,
    pub direction: Option<Direction>,
    /// E.g. "9 points in a row on one side of the centre line (Nelson 2): points 12–20, above".
    pub message: String,
}

/// Process capability against specification limits. Cp/Cpk use σ within (the chart's short-
/// term σ); Pp/Ppk use σ overall (the standard deviation of every included value), so the gap
/// between the two shows how much the process wanders between points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// Mean of the included values.
    pub mean: f64,
    pub sigma_within: f64,
    pub sigma_overall: f64,
    /// Number of included values.
    pub values: usize,
    /// (USL − LSL) / 6σ_within: only with both limits.
    pub cp: Option<f64>,
    /// (mean − LSL) / 3σ_within.
    pub cpl: Option<f64>,
    /// (USL − mean) / 3σ_within.
    pub cpu: Option<f64>,
    /// The smaller of cpl and cpu (the one there is, for a one-sided specification).
    pub cpk: f64,
    pub pp: Option<f64>,
    pub ppl: Option<f64>,
    pub ppu: Option<f64>,
    pub ppk: f64,
}

/// What the chart builders know of a point besides its statistic.
#[derive(Debug, Clone)]
struct PointMeta {
    index: usize,
    at: Option<DateTime<Utc>>,
    n: Option<u64>,
    excluded: bool,
}

/// A Shewhart point: its statistic, centre and σ of the statistic here; limits are
/// centre ± 3σ, clamped to `floor`/`ceiling` for plotting only (z uses the unclamped σ).
#[derive(Debug, Clone, Copy)]
struct ShewhartPlot {
    value: f64,
    center: f64,
    sigma: f64,
    floor: Option<f64>,
    ceiling: Option<f64>,
}

/// The indices of the points that set Phase I limits: included, and within the baseline.
fn baseline_indices(
    excluded: impl Iterator<Item = bool>,
    limits: &Limits,
) -> Result<(Vec<usize>, Option<usize>), SpcError> {
    let excluded: Vec<bool> = excluded.collect();
    let baseline = match limits {
        Limits::Estimated { baseline } => *baseline,
        Limits::Fixed { .. } => None,
    };
    if let Some(count) = baseline
        && (count == 0 || count > excluded.len())
    {
        return Err(SpcError::InvalidBaseline {
            baseline: count,
            points: excluded.len(),
        });
    }
    let end = baseline.unwrap_or(excluded.len());
    let used = (0..end).filter(|&i| !excluded[i]).collect();
    Ok((used, baseline))
}

/// Refuses fewer than `needed` points for a Phase I estimate.
fn require_points(chart: ChartKind, needed: usize, got: usize) -> Result<(), SpcError> {
    if got < needed {
        return Err(SpcError::TooFewPoints { chart, needed, got });
    }
    Ok(())
}

fn finite(value: f64, index: usize, field: &'static str) -> Result<f64, SpcError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(SpcError::NonFinite { index, field })
    }
}

/// Checks a Phase II centre and σ.
fn fixed_limits(center: f64, sigma: f64) -> Result<(f64, f64), SpcError> {
    if !center.is_finite() {
        return Err(SpcError::InvalidParameter {
            name: "center",
            value: center,
            expected: "a finite number",
        });
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(SpcError::InvalidParameter {
            name: "sigma",
            value: sigma,
            expected: "a finite number above 0",
        });
    }
    Ok((center, sigma))
}

/// Mean of the absolute differences of consecutive values.
fn mean_moving_range(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let total: f64 = values.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    Some(total / (values.len() - 1) as f64)
}

/// Builds the points of a Shewhart series and runs `rules` over the included ones' z.
fn shewhart_points(
    meta: &[PointMeta],
    plots: &[ShewhartPlot],
    rules: &RuleSet,
) -> (Vec<ChartPoint>, Vec<Violation>) {
    let mut points: Vec<ChartPoint> = meta
        .iter()
        .zip(plots)
        .map(|(m, p)| {
            let mut lcl = p.center - 3.0 * p.sigma;
            let mut ucl = p.center + 3.0 * p.sigma;
            if let Some(floor) = p.floor {
                lcl = lcl.max(floor);
            }
            if let Some(ceiling) = p.ceiling {
                ucl = ucl.min(ceiling);
            }
            ChartPoint {
                index: m.index,
                at: m.at,
                value: p.value,
                center: p.center,
                lcl,
                ucl,
                z: (!m.excluded).then(|| (p.value - p.center) / p.sigma),
                n: m.n,
                excluded: m.excluded,
                rules: Vec::new(),
            }
        })
        .collect();
    let zs: Vec<(usize, f64)> = points
        .iter()
        .filter_map(|p| p.z.map(|z| (p.index, z)))
        .collect();
    let firings = rules::evaluate(rules, &zs);
    let violations = rules::attach(&mut points, firings, Series::Primary);
    (points, violations)
}

/// A dispersion chart (MR, R, s) from `(meta, value)` pairs with fixed limits; points beyond
/// them signal Nelson 1 / Western Electric 1 where those rules are on.
fn dispersion_chart(
    kind: SecondaryKind,
    values: Vec<(PointMeta, f64)>,
    center: f64,
    lcl: f64,
    ucl: f64,
    rules: &RuleSet,
) -> (SecondaryChart, Vec<Violation>) {
    let mut points: Vec<ChartPoint> = values
        .into_iter()
        .map(|(m, value)| ChartPoint {
            index: m.index,
            at: m.at,
            value,
            center,
            lcl,
            ucl,
            z: None,
            n: m.n,
            excluded: m.excluded,
            rules: Vec::new(),
        })
        .collect();
    let firings = rules::beyond_limits(rules, &points);
    let violations = rules::attach(&mut points, firings, Series::Secondary);
    (
        SecondaryChart {
            kind,
            center,
            points,
        },
        violations,
    )
}

/// Violations in the order a reader scans a chart: by first point, then rule.
fn sort_violations(violations: &mut [Violation]) {
    violations.sort_by_key(|v| {
        (
            v.points.first().copied(),
            v.rule,
            v.series == Series::Secondary,
        )
    });
}

#[cfg(test)]
mod tests;
