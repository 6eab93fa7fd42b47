//! Run rules (Western Electric 1–4, Nelson 1–8) on standardised points, and the grouping of
//! their hits into violations.
//!
//! Rules read z, the distance from the centre line in σ of the plotted statistic at that point,
//! so they work alike on charts whose limits vary with n. Zone boundaries are strict: "beyond
//! 2σ" is z > 2, "within 1σ" is |z| < 1, and a point exactly on the centre line is on neither
//! side (it ends a run). A rule signals at the point that completes its pattern, and only once
//! its whole window exists (the third point for "2 of 3"); "k of m" rules signal only at a point
//! that is itself one of the k, so the signal sits on an unusual point.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ChartPoint, Direction, Series, SpcError, Violation};

/// A rule a point can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleId {
    /// One point beyond 3σ.
    #[serde(rename = "we_1")]
    We1,
    /// 2 of 3 consecutive points beyond 2σ on the same side.
    #[serde(rename = "we_2")]
    We2,
    /// 4 of 5 consecutive points beyond 1σ on the same side.
    #[serde(rename = "we_3")]
    We3,
    /// 8 consecutive points on one side of the centre line.
    #[serde(rename = "we_4")]
    We4,
    /// One point beyond 3σ.
    #[serde(rename = "nelson_1")]
    Nelson1,
    /// 9 points in a row on one side of the centre line.
    #[serde(rename = "nelson_2")]
    Nelson2,
    /// 6 points in a row steadily increasing or decreasing.
    #[serde(rename = "nelson_3")]
    Nelson3,
    /// 14 points in a row alternating up and down.
    #[serde(rename = "nelson_4")]
    Nelson4,
    /// 2 of 3 points in a row beyond 2σ on the same side.
    #[serde(rename = "nelson_5")]
    Nelson5,
    /// 4 of 5 points in a row beyond 1σ on the same side.
    #[serde(rename = "nelson_6")]
    Nelson6,
    /// 15 points in a row within 1σ (stratification).
    #[serde(rename = "nelson_7")]
    Nelson7,
    /// 8 points in a row beyond 1σ, on both sides (mixture).
    #[serde(rename = "nelson_8")]
    Nelson8,
    /// The EWMA statistic beyond its limits.
    #[serde(rename = "ewma_limit")]
    EwmaLimit,
    /// S⁺ above the decision interval h.
    #[serde(rename = "cusum_upper")]
    CusumUpper,
    /// S⁻ above the decision interval h.
    #[serde(rename = "cusum_lower")]
    CusumLower,
}

/// The run rules a user can choose, by the names [`RuleSet`] parses.
const SELECTABLE: [(&str, RuleId); 12] = [
    ("we_1", RuleId::We1),
    ("we_2", RuleId::We2),
    ("we_3", RuleId::We3),
    ("we_4", RuleId::We4),
    ("nelson_1", RuleId::Nelson1),
    ("nelson_2", RuleId::Nelson2),
    ("nelson_3", RuleId::Nelson3),
    ("nelson_4", RuleId::Nelson4),
    ("nelson_5", RuleId::Nelson5),
    ("nelson_6", RuleId::Nelson6),
    ("nelson_7", RuleId::Nelson7),
    ("nelson_8", RuleId::Nelson8),
];

impl RuleId {
    /// The operator's line for the rule, and its citation.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            RuleId::We1 => ("1 point beyond the 3σ control limits", "Western Electric 1"),
            RuleId::We2 => (
                "2 of 3 points in a row beyond 2σ on the same side",
                "Western Electric 2",
            ),
            RuleId::We3 => (
                "4 of 5 points in a row beyond 1σ on the same side",
                "Western Electric 3",
            ),
            RuleId::We4 => (
                "8 points in a row on one side of the centre line",
                "Western Electric 4",
            ),
            RuleId::Nelson1 => ("1 point beyond the 3σ control limits", "Nelson 1"),
            RuleId::Nelson2 => (
                "9 points in a row on one side of the centre line",
                "Nelson 2",
            ),
            RuleId::Nelson3 => (
                "6 points in a row steadily increasing or decreasing",
                "Nelson 3",
            ),
            RuleId::Nelson4 => ("14 points in a row alternating up and down", "Nelson 4"),
            RuleId::Nelson5 => (
                "2 of 3 points in a row beyond 2σ on the same side",
                "Nelson 5",
            ),
            RuleId::Nelson6 => (
                "4 of 5 points in a row beyond 1σ on the same side",
                "Nelson 6",
            ),
            RuleId::Nelson7 => (
                "15 points in a row within 1σ of the centre line",
                "Nelson 7",
            ),
            RuleId::Nelson8 => (
                "8 points in a row beyond 1σ on both sides, none within 1σ",
                "Nelson 8",
            ),
            RuleId::EwmaLimit => ("smoothed mean beyond its control limits", "EWMA"),
            RuleId::CusumUpper => (
                "upward shift: upper sum above the decision interval",
                "CUSUM",
            ),
            RuleId::CusumLower => (
                "downward shift: lower sum above the decision interval",
                "CUSUM",
            ),
        }
    }
}

/// The run rules evaluated on a chart. Default: Nelson 1 alone, since every added rule raises
/// the false-alarm rate of a stable process (ISO 7870-2 keeps 3σ-only for Phase II).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<RuleId>")]
pub struct RuleSet(BTreeSet<RuleId>);

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet([RuleId::Nelson1].into())
    }
}

impl RuleSet {
    /// No run rules: the chart is plotted and judged by nobody.
    pub fn none() -> Self {
        RuleSet(BTreeSet::new())
    }

    /// Every Western Electric and Nelson rule.
    pub fn all() -> Self {
        RuleSet(SELECTABLE.iter().map(|(_, id)| *id).collect())
    }

    /// Parses rule names: `we_1`…`we_4`, `nelson_1`…`nelson_8`, and the families `nelson` (all
    /// eight) and `western_electric` (all four); case and surrounding spaces do not matter.
    pub fn parse<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, SpcError> {
        let mut set = BTreeSet::new();
        for name in names {
            let name = name.as_ref().trim().to_ascii_lowercase();
            let family = match name.as_str() {
                "nelson" => Some("nelson_"),
                "western_electric" => Some("we_"),
                _ => None,
            };
            let matched: Vec<RuleId> = SELECTABLE
                .iter()
                .filter(|(known, _)| match family {
                    Some(prefix) => known.starts_with(prefix),
                    None => *known == name,
                })
                .map(|(_, id)| *id)
                .collect();
            if matched.is_empty() {
                let mut known: Vec<&str> = SELECTABLE.iter().map(|(n, _)| *n).collect();
                known.extend(["nelson", "western_electric"]);
                return Err(SpcError::UnknownRule {
                    name,
                    known: known.join(", "),
                });
            }
            set.extend(matched);
        }
        Ok(RuleSet(set))
    }

    pub fn contains(&self, rule: RuleId) -> bool {
        self.0.contains(&rule)
    }

    /// The rules, in rule order.
    pub fn iter(&self) -> impl Iterator<Item = RuleId> + '_ {
        self.0.iter().copied()
    }
}

/// A comma-separated list, e.g. `"nelson_1, we_2"` or `"nelson"`.
impl FromStr for RuleSet {
    type Err = SpcError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RuleSet::parse(text.split(',').filter(|name| !name.trim().is_empty()))
    }
}

impl TryFrom<Vec<String>> for RuleSet {
    type Error = SpcError;

    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        RuleSet::parse(names)
    }
}

impl From<RuleSet> for Vec<RuleId> {
    fn from(set: RuleSet) -> Self {
        set.0.into_iter().collect()
    }
}

/// One rule signalling at one point.
#[derive(Debug, Clone)]
pub(super) struct Firing {
    pub rule: RuleId,
    /// Input index of the point that completed the pattern.
    pub at: usize,
    /// A firing of the same rule and direction at or after this input index continues the same
    /// violation (the windows overlap).
    pub merge_from: usize,
    /// Input indices of the points that make up the pattern.
    pub involved: Vec<usize>,
    pub direction: Option<Direction>,
}

/// Runs `rules` over the included points' `(input index, z)`, in time order.
pub(super) fn evaluate(rules: &RuleSet, zs: &[(usize, f64)]) -> Vec<Firing> {
    let mut firings = Vec::new();
    for rule in rules.iter() {
        for end in 0..zs.len() {
            let hit = match rule {
                RuleId::We1 | RuleId::Nelson1 => beyond_three_sigma(zs, end),
                RuleId::We2 | RuleId::Nelson5 => k_of_m_beyond(zs, end, 2, 3, 2.0),
                RuleId::We3 | RuleId::Nelson6 => k_of_m_beyond(zs, end, 4, 5, 1.0),
                RuleId::We4 => same_side(zs, end, 8),
                RuleId::Nelson2 => same_side(zs, end, 9),
                RuleId::Nelson3 => trend(zs, end, 6),
                RuleId::Nelson4 => alternating(zs, end, 14),
                RuleId::Nelson7 => within_one_sigma(zs, end, 15),
                RuleId::Nelson8 => mixture(zs, end, 8),
                RuleId::EwmaLimit | RuleId::CusumUpper | RuleId::CusumLower => None,
            };
            if let Some((involved, direction)) = hit {
                firings.push(Firing {
                    rule,
                    at: zs[end].0,
                    merge_from: involved.first().copied().unwrap_or(zs[end].0),
                    involved,
                    direction,
                });
            }
        }
    }
    firings
}

/// Points of a dispersion chart beyond its limits, under Nelson 1 and/or Western Electric 1
/// (the only rule such charts are judged by: their points are not independent).
pub(super) fn beyond_limits(rules: &RuleSet, points: &[ChartPoint]) -> Vec<Firing> {
    let mut firings = Vec::new();
    for rule in [RuleId::We1, RuleId::Nelson1] {
        if !rules.contains(rule) {
            continue;
        }
        for point in points.iter().filter(|p| !p.excluded) {
            let direction = if point.value > point.ucl {
                Direction::Above
            } else if point.value < point.lcl {
                Direction::Below
            } else {
                continue;
            };
            firings.push(Firing {
                rule,
                at: point.index,
                merge_from: point.index,
                involved: vec![point.index],
                direction: Some(direction),
            });
        }
    }
    firings
}

type Hit = Option<(Vec<usize>, Option<Direction>)>;

/// The window of `len` points ending at `end`, if it exists.
fn window(zs: &[(usize, f64)], end: usize, len: usize) -> Option<&[(usize, f64)]> {
    (end + 1 >= len).then(|| &zs[end + 1 - len..=end])
}

fn indices(points: &[(usize, f64)]) -> Vec<usize> {
    points.iter().map(|(i, _)| *i).collect()
}

fn side(z: f64) -> Option<Direction> {
    if z > 0.0 {
        Some(Direction::Above)
    } else if z < 0.0 {
        Some(Direction::Below)
    } else {
        None
    }
}

fn beyond_three_sigma(zs: &[(usize, f64)], end: usize) -> Hit {
    let (index, z) = zs[end];
    (z.abs() > 3.0).then(|| (vec![index], side(z)))
}

/// `k` of the `m` points ending at `end` beyond `limit` σ on one side, `end` among them.
fn k_of_m_beyond(zs: &[(usize, f64)], end: usize, k: usize, m: usize, limit: f64) -> Hit {
    let points = window(zs, end, m)?;
    let z_end = zs[end].1;
    if z_end.abs() <= limit {
        return None;
    }
    let sign = z_end.signum();
    let beyond: Vec<usize> = points
        .iter()
        .filter(|(_, z)| sign * z > limit)
        .map(|(i, _)| *i)
        .collect();
    (beyond.len() >= k).then(|| (beyond, side(z_end)))
}

fn same_side(zs: &[(usize, f64)], end: usize, len: usize) -> Hit {
    let points = window(zs, end, len)?;
    let direction = side(points[0].1)?;
    points
        .iter()
        .all(|(_, z)| side(*z) == Some(direction))
        .then(|| (indices(points), Some(direction)))
}

fn trend(zs: &[(usize, f64)], end: usize, len: usize) -> Hit {
    let points = window(zs, end, len)?;
    if points.windows(2).all(|w| w[1].1 > w[0].1) {
        Some((indices(points), Some(Direction::Increasing)))
    } else if points.windows(2).all(|w| w[1].1 < w[0].1) {
        Some((indices(points), Some(Direction::Decreasing)))
    } else {
        None
    }
}

fn alternating(zs: &[(usize, f64)], end: usize, len: usize) -> Hit {
    let points = window(zs, end, len)?;
    let steps: Vec<f64> = points.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let alternates = steps.iter().all(|s| *s != 0.0) && steps.windows(2).all(|s| s[0] * s[1] < 0.0);
    alternates.then(|| (indices(points), None))
}

fn within_one_sigma(zs: &[(usize, f64)], end: usize, len: usize) -> Hit {
    let points = window(zs, end, len)?;
    points
        .iter()
        .all(|(_, z)| z.abs() < 1.0)
        .then(|| (indices(points), None))
}

fn mixture(zs: &[(usize, f64)], end: usize, len: usize) -> Hit {
    let points = window(zs, end, len)?;
    let outside = points.iter().all(|(_, z)| z.abs() > 1.0);
    let both_sides = points.iter().any(|(_, z)| *z > 0.0) && points.iter().any(|(_, z)| *z < 0.0);
    (outside && both_sides).then(|| (indices(points), None))
}

/// Marks each firing on its point and groups firings into violations: firings of one rule and
/// direction whose windows overlap are one pattern.
pub(super) fn attach(
    points: &mut [ChartPoint],
    mut firings: Vec<Firing>,
    series: Series,
) -> Vec<Violation> {
    firings.sort_by_key(|f| (f.rule, f.at));
    for firing in &firings {
        if let Ok(position) = points.binary_search_by_key(&firing.at, |p| p.index) {
            let rules = &mut points[position].rules;
            if !rules.contains(&firing.rule) {
                rules.push(firing.rule);
                rules.sort();
            }
        }
    }
    let mut groups: Vec<(RuleId, Option<Direction>, usize, BTreeSet<usize>)> = Vec::new();
    for firing in firings {
        match groups.last_mut() {
            Some((rule, direction, last_at, involved))
                if *rule == firing.rule
                    && *direction == firing.direction
                    && firing.merge_from <= *last_at =>
            {
                *last_at = firing.at;
                involved.extend(firing.involved);
            }
            _ => groups.push((
                firing.rule,
                firing.direction,
                firing.at,
                firing.involved.into_iter().collect(),
            )),
        }
    }
    groups
        .into_iter()
        .map(|(rule, direction, _, involved)| {
            let points: Vec<usize> = involved.into_iter().collect();
            Violation {
                rule,
                series,
                message: message(rule, series, &points, direction),
                points,
                direction,
            }
        })
        .collect()
}

fn message(rule: RuleId, series: Series, points: &[usize], direction: Option<Direction>) -> String {
    let (text, citation) = rule.describe();
    let place = match (points.first(), points.last()) {
        (Some(first), Some(last)) if first != last => format!("points {first}–{last}"),
        (Some(first), _) => format!("point {first}"),
        _ => String::from("no points"),
    };
    let chart = match series {
        Series::Primary => "",
        Series::Secondary => " on the secondary chart",
    };
    let way = match direction {
        Some(Direction::Above) => ", above",
        Some(Direction::Below) => ", below",
        Some(Direction::Increasing) => ", increasing",
        Some(Direction::Decreasing) => ", decreasing",
        None => "",
    };
    format!("{text} ({citation}){chart}: {place}{way}")
}
