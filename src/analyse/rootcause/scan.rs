//! One feature against the target: value bins with their defect rates, and the threshold (or
//! band) that best separates defective parts. Each feature is sorted once; every scan after
//! that walks the sorted order.

use serde::Serialize;

use super::stats::{LogFactorials, g_statistic, wilson_interval};

/// Parts and positives in the whole table: what every rate is compared with.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Parts with the defect.
    pub positives: usize,
    /// All parts.
    pub parts: usize,
}

impl Totals {
    /// The defect rate over all parts.
    pub fn base_rate(&self) -> f64 {
        self.positives as f64 / self.parts as f64
    }
}

/// One value bin of a feature: "the chart behind" a finding.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    /// Lowest value in the bin (for a level of a categorical column, `NaN`).
    pub low: f64,
    /// Highest value in the bin.
    pub high: f64,
    /// The level, for a categorical column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Parts in the bin.
    pub parts: usize,
    /// Defective parts in the bin.
    pub positives: usize,
    /// Their rate.
    pub rate: f64,
    /// Lower end of the rate's 95 % Wilson interval.
    pub rate_low: f64,
    /// Upper end of it.
    pub rate_high: f64,
    /// Rate over the base rate.
    pub lift: f64,
    /// One-sided Fisher exact p-value: is the rate higher here than in all other parts?
    pub p_value: f64,
    /// Benjamini–Hochberg q-value across every feature's bins (filled once all are tested).
    pub q_value: f64,
}

impl Bin {
    /// A bin's statistics from its counts.
    pub fn new(
        low: f64,
        high: f64,
        parts: usize,
        positives: usize,
        totals: Totals,
        log_factorials: &LogFactorials,
    ) -> Self {
        let rate = if parts == 0 {
            0.0
        } else {
            positives as f64 / parts as f64
        };
        let (rate_low, rate_high) = wilson_interval(positives, parts);
        Self {
            low,
            high,
            level: None,
            parts,
            positives,
            rate,
            rate_low,
            rate_high,
            lift: rate / totals.base_rate(),
            p_value: log_factorials.fisher_enrichment(
                positives,
                parts,
                totals.positives,
                totals.parts,
            ),
            q_value: 1.0,
        }
    }
}

/// Where a one-feature condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Region {
    /// Values below the threshold.
    Below {
        /// The threshold.
        threshold: f64,
    },
    /// Values above the threshold.
    Above {
        /// The threshold.
        threshold: f64,
    },
    /// Values below `low` or above `high`.
    Outside {
        /// Lower threshold.
        low: f64,
        /// Upper threshold.
        high: f64,
    },
}

impl Region {
    /// Whether `value` lies in the region (missing values never do).
    pub fn contains(&self, value: f64) -> bool {
        match *self {
            Region::Below { threshold } => value < threshold,
            Region::Above { threshold } => value > threshold,
            Region::Outside { low, high } => value < low || value > high,
        }
    }
}

/// The best region of one feature and how strongly it separates defective parts.
#[derive(Debug, Clone, Copy)]
pub struct BestRegion {
    /// Where defects concentrate.
    pub region: Region,
    /// G statistic of the region's two-by-two table.
    pub g: f64,
    /// Parts in the region.
    pub parts: usize,
    /// Defective parts in it.
    pub positives: usize,
}

/// What a threshold search needs besides the data.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// Fewest parts a region (or each side of a band) may hold.
    pub min_parts: usize,
    /// Fewest defective parts a region (or each side of a band) must hold.
    pub min_positives: usize,
    /// G a band must gain over one side to be reported as a band.
    pub min_gain: f64,
}

/// A feature's non-missing values with their rows, sorted by value.
pub fn sort_values(values: &[f64]) -> Vec<(f64, u32)> {
    let mut sorted: Vec<(f64, u32)> = values
        .iter()
        .enumerate()
        .filter(|(_, value)| !value.is_nan())
        .map(|(row, &value)| (value, row as u32))
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    sorted
}

/// Quantile bins (`n_bins` of about equal parts, never splitting equal values) over `sorted`,
/// then one bin of the missing values when there are any.
pub fn quantile_bins(
    sorted: &[(f64, u32)],
    positive: &[bool],
    n_bins: usize,
    totals: Totals,
    log_factorials: &LogFactorials,
) -> Vec<Bin> {
    let mut bins = Vec::with_capacity(n_bins + 1);
    let mut start = 0;
    for k in 1..=n_bins {
        let mut end = (sorted.len() * k / n_bins).max(start);
        // Equal values stay in one bin.
        while end > start && end < sorted.len() && sorted[end].0 == sorted[end - 1].0 {
            end += 1;
        }
        if end <= start {
            continue;
        }
        let positives = sorted[start..end]
            .iter()
            .filter(|(_, row)| positive[*row as usize])
            .count();
        bins.push(Bin::new(
            sorted[start].0,
            sorted[end - 1].0,
            end - start,
            positives,
            totals,
            log_factorials,
        ));
        start = end;
    }
    let missing_parts = totals.parts - sorted.len();
    if missing_parts > 0 {
        let present_positives: usize = bins.iter().map(|bin| bin.positives).sum();
        bins.push(Bin::new(
            f64::NAN,
            f64::NAN,
            missing_parts,
            totals.positives - present_positives,
            totals,
            log_factorials,
        ));
    }
    bins
}

/// Boundaries up to which every one is tried. Above it a coarse pass over every k-th boundary
/// finds the peak of the G statistic and a fine pass around it finds the exact cut: G over the
/// cut position is a smooth curve on this many parts, and the logarithms of a full pass were
/// most of the time of an analysis of 100,000 parts.
const EXACT_UP_TO: usize = 8192;
/// Boundaries the coarse pass tries.
const COARSE_CUTS: usize = 1024;

/// One side's best cut over `candidates` (sorted; the rows a side may still take), with
/// `fixed` (parts, positives) already inside the condition from elsewhere.
fn best_cut(
    candidates: &[(f64, bool)],
    below: bool,
    fixed: (usize, usize),
    totals: Totals,
    limits: SearchLimits,
) -> Option<(f64, f64, usize, usize)> {
    let n = candidates.len();
    // Positives before each row, and where the value changes (a cut can only go there).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    for &(_, positive) in candidates {
        prefix.push(prefix[prefix.len() - 1] + usize::from(positive));
    }
    let boundaries: Vec<usize> = (1..n)
        .filter(|&i| candidates[i].0 != candidates[i - 1].0)
        .collect();
    let cut = |i: usize| -> Option<(f64, f64, usize, usize)> {
        let (side_parts, side_positives) = if below {
            (i, prefix[i])
        } else {
            (n - i, prefix[n] - prefix[i])
        };
        if side_parts < limits.min_parts || side_positives < limits.min_positives {
            return None;
        }
        let parts = fixed.0 + side_parts;
        let positives = fixed.1 + side_positives;
        let g = g_statistic(
            positives as f64,
            parts as f64,
            totals.positives as f64,
            totals.parts as f64,
        );
        let threshold = 0.5 * (candidates[i - 1].0 + candidates[i].0);
        Some((g, threshold, parts, positives))
    };
    // The first best, as a full pass in order would keep it.
    let best_of = |indices: &mut dyn Iterator<Item = usize>| {
        let mut best: Option<(usize, (f64, f64, usize, usize))> = None;
        for k in indices {
            if let Some(found) = cut(boundaries[k])
                && best.is_none_or(|(_, (best_g, ..))| found.0 > best_g)
            {
                best = Some((k, found));
            }
        }
        best
    };
    if boundaries.len() <= EXACT_UP_TO {
        return best_of(&mut (0..boundaries.len())).map(|(_, found)| found);
    }
    let step = boundaries.len() / COARSE_CUTS;
    let coarse = best_of(&mut (0..boundaries.len()).step_by(step))
        // Every coarse cut broke a limit: the whole pass decides.
        .or_else(|| best_of(&mut (0..boundaries.len())))?;
    let (from, to) = (
        coarse.0.saturating_sub(2 * step),
        (coarse.0 + 2 * step + 1).min(boundaries.len()),
    );
    best_of(&mut (from..to)).map(|(_, found)| found)
}

/// The best region of a feature over `rows` (sorted values with their defect flags): a
/// threshold on either side, or a band outside which defects concentrate when that explains
/// them clearly better.
pub fn best_region(
    rows: &[(f64, bool)],
    totals: Totals,
    limits: SearchLimits,
) -> Option<BestRegion> {
    let below = best_cut(rows, true, (0, 0), totals, limits);
    let above = best_cut(rows, false, (0, 0), totals, limits);
    let (g, single, parts, positives) = match (below, above) {
        (Some(b), Some(a)) if b.0 >= a.0 => (b.0, Region::Below { threshold: b.1 }, b.2, b.3),
        (Some(b), None) => (b.0, Region::Below { threshold: b.1 }, b.2, b.3),
        (_, Some(a)) => (a.0, Region::Above { threshold: a.1 }, a.2, a.3),
        (None, None) => return None,
    };
    if g <= 0.0 {
        return None;
    }
    let single = BestRegion {
        region: single,
        g,
        parts,
        positives,
    };
    // Coordinate ascent on a band: fix one side, search the other among the rows it left.
    let (mut low, mut high) = match single.region {
        Region::Below { threshold } => (threshold, f64::INFINITY),
        Region::Above { threshold } => (f64::NEG_INFINITY, threshold),
        Region::Outside { .. } => unreachable!("a single cut is one-sided"),
    };
    let mut band: Option<BestRegion> = None;
    for round in 0..4 {
        let search_high = matches!(single.region, Region::Below { .. }) == (round % 2 == 0);
        // The rows the other side already holds, and those this side may still take.
        let in_other_side = |value: f64| {
            if search_high {
                value < low
            } else {
                value > high
            }
        };
        let fixed_side: Vec<&(f64, bool)> =
            rows.iter().filter(|(v, _)| in_other_side(*v)).collect();
        let rest: Vec<(f64, bool)> = rows
            .iter()
            .filter(|(v, _)| !in_other_side(*v))
            .copied()
            .collect();
        let fixed = (
            fixed_side.len(),
            fixed_side.iter().filter(|(_, p)| *p).count(),
        );
        let Some((g, threshold, parts, positives)) =
            best_cut(&rest, !search_high, fixed, totals, limits)
        else {
            break;
        };
        if search_high {
            high = threshold;
        } else {
            low = threshold;
        }
        if low.is_finite() && high.is_finite() {
            band = Some(BestRegion {
                region: Region::Outside { low, high },
                g,
                parts,
                positives,
            });
        }
    }
    match band {
        Some(band) if band.g >= single.g + limits.min_gain => Some(band),
        _ => Some(single),
    }
}

/// The best threshold on one side for the rows in `rows` (sorted), with `fixed` parts and
/// positives inside the condition from its other terms: one coordinate of a conjunction.
pub fn best_threshold(
    rows: &[(f64, bool)],
    below: bool,
    fixed: (usize, usize),
    totals: Totals,
    limits: SearchLimits,
) -> Option<f64> {
    best_cut(rows, below, fixed, totals, limits).map(|(_, threshold, ..)| threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SearchLimits = SearchLimits {
        min_parts: 5,
        min_positives: 3,
        min_gain: 10.83,
    };

    fn rows(values: &[f64], rule: impl Fn(f64) -> bool) -> (Vec<(f64, bool)>, Totals) {
        let rows: Vec<(f64, bool)> = values.iter().map(|&v| (v, rule(v))).collect();
        let positives = rows.iter().filter(|(_, p)| *p).count();
        (
            rows,
            Totals {
                positives,
                parts: values.len(),
            },
        )
    }

    #[test]
    fn a_threshold_and_a_band_are_found() {
        let values: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let (above, totals) = rows(&values, |v| v > 700.0);
        let best = best_region(&above, totals, LIMITS).expect("a region");
        assert_eq!(best.region, Region::Above { threshold: 700.5 });
        let (band, totals) = rows(&values, |v| !(100.0..=900.0).contains(&v));
        let best = best_region(&band, totals, LIMITS).expect("a region");
        assert_eq!(
            best.region,
            Region::Outside {
                low: 99.5,
                high: 900.5
            }
        );
    }

    #[test]
    fn bins_keep_equal_values_together_and_count_missing() {
        let values = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0, f64::NAN, 4.0];
        let positive = [true, false, false, false, false, true, true, false];
        let totals = Totals {
            positives: 3,
            parts: 8,
        };
        let sorted = sort_values(&values);
        let bins = quantile_bins(&sorted, &positive, 4, totals, &LogFactorials::up_to(8));
        let parts: Vec<usize> = bins.iter().map(|bin| bin.parts).collect();
        assert_eq!(parts, vec![4, 1, 2, 1], "{bins:?}");
        assert!(bins[3].low.is_nan() && bins[3].positives == 1);
    }
}
