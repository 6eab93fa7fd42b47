//! The statistics behind a finding: Wilson intervals, Fisher's exact test, the G statistic of
//! a two-by-two table and Benjamini–Hochberg q-values. Pure functions.

/// The normal quantile of a two-sided 95 % interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval (95 %) of `positives` out of `parts`; `(0, 1)` for no parts.
pub fn wilson_interval(positives: usize, parts: usize) -> (f64, f64) {
    if parts == 0 {
        return (0.0, 1.0);
    }
    let n = parts as f64;
    let rate = positives as f64 / n;
    let z2 = Z_95 * Z_95;
    let centre = (rate + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z_95 / (1.0 + z2 / n) * (rate * (1.0 - rate) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Natural logarithms of `0! ..= n!`, so a hypergeometric probability is three look-ups.
pub struct LogFactorials(Vec<f64>);

impl LogFactorials {
    /// The table up to `n!`.
    pub fn up_to(n: usize) -> Self {
        let mut table = Vec::with_capacity(n + 1);
        let mut sum = 0.0;
        table.push(0.0);
        for k in 1..=n {
            sum += (k as f64).ln();
            table.push(sum);
        }
        Self(table)
    }

    fn ln_choose(&self, n: usize, k: usize) -> f64 {
        self.0[n] - self.0[k] - self.0[n - k]
    }

    /// One-sided Fisher exact p-value for enrichment: the chance that a group of `group_parts`
    /// drawn from `total_parts` parts holding `total_positives` positives holds
    /// `group_positives` or more of them.
    pub fn fisher_enrichment(
        &self,
        group_positives: usize,
        group_parts: usize,
        total_positives: usize,
        total_parts: usize,
    ) -> f64 {
        let upper = group_parts.min(total_positives);
        let lower = (group_parts + total_positives).saturating_sub(total_parts);
        if group_positives <= lower {
            return 1.0;
        }
        let ln_denominator = self.ln_choose(total_parts, group_parts);
        let mut p = 0.0;
        for k in group_positives..=upper {
            let ln_term = self.ln_choose(total_positives, k)
                + self.ln_choose(total_parts - total_positives, group_parts - k)
                - ln_denominator;
            let term = ln_term.exp();
            p += term;
            // Terms fall off geometrically past the mode: stop once they no longer count.
            if term < p * 1e-15
                && k as f64 > group_parts as f64 * total_positives as f64 / total_parts as f64
            {
                break;
            }
        }
        p.min(1.0)
    }
}

/// The G statistic (log-likelihood ratio) of a condition's two-by-two table: how much better
/// two rates (inside and outside the condition) explain the positives than one. Zero when the
/// rate inside is not above the rate outside, so only conditions that raise defects score.
pub fn g_statistic(
    inside_positives: f64,
    inside_parts: f64,
    total_positives: f64,
    total_parts: f64,
) -> f64 {
    let outside_positives = total_positives - inside_positives;
    let outside_parts = total_parts - inside_parts;
    if inside_parts <= 0.0 || outside_parts <= 0.0 {
        return 0.0;
    }
    if inside_positives / inside_parts <= outside_positives / outside_parts {
        return 0.0;
    }
    let cell = |observed: f64, expected: f64| {
        if observed > 0.0 {
            observed * (observed / expected).ln()
        } else {
            0.0
        }
    };
    let base_rate = total_positives / total_parts;
    2.0 * (cell(inside_positives, inside_parts * base_rate)
        + cell(
            inside_parts - inside_positives,
            inside_parts * (1.0 - base_rate),
        )
        + cell(outside_positives, outside_parts * base_rate)
        + cell(
            outside_parts - outside_positives,
            outside_parts * (1.0 - base_rate),
        ))
}

/// Benjamini–Hochberg q-values of `p_values`, in their order: the smallest false discovery
/// rate at which each would be rejected.
pub fn benjamini_hochberg(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut q_values = vec![1.0; m];
    let mut running_min: f64 = 1.0;
    for (rank, &index) in order.iter().enumerate().rev() {
        let q = p_values[index] * m as f64 / (rank + 1) as f64;
        running_min = running_min.min(q);
        q_values[index] = running_min.min(1.0);
    }
    q_values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), table I: 81/263 → 0.2553–0.3662.
        let (low, high) = wilson_interval(81, 263);
        assert!((low - 0.2553).abs() < 5e-4, "{low}");
        assert!((high - 0.3662).abs() < 5e-4, "{high}");
        // 0/10 → 0–0.2775.
        let (low, high) = wilson_interval(0, 10);
        assert_eq!(low, 0.0);
        assert!((high - 0.2775).abs() < 5e-4, "{high}");
    }

    #[test]
    fn fisher_matches_hand_computed_tails() {
        let table = LogFactorials::up_to(100);
        // [[8, 2], [1, 5]], alternative "greater": (C(9,8)·C(7,2) + C(9,9)·C(7,1)) / C(16,10)
        // = 196 / 8008.
        let p = table.fisher_enrichment(8, 10, 9, 16);
        assert!((p - 196.0 / 8008.0).abs() < 1e-12, "{p}");
        // The lady tasting tea: [[3, 1], [1, 3]] → 0.242857.
        let p = table.fisher_enrichment(3, 4, 4, 8);
        assert!((p - 0.242857).abs() < 1e-5, "{p}");
        assert_eq!(table.fisher_enrichment(0, 4, 4, 8), 1.0);
    }

    #[test]
    fn benjamini_hochberg_matches_r() {
        // p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.2), "BH") → 0.025 0.05 0.05 0.025 0.2
        let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005, 0.2]);
        let expected = [0.025, 0.05, 0.05, 0.025, 0.2];
        for (got, want) in q.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{q:?}");
        }
    }

    #[test]
    fn g_statistic_is_zero_for_depletion_and_grows_with_lift() {
        assert_eq!(g_statistic(1.0, 100.0, 50.0, 1000.0), 0.0);
        let weak = g_statistic(10.0, 100.0, 50.0, 1000.0);
        let strong = g_statistic(30.0, 100.0, 50.0, 1000.0);
        assert!(strong > weak && weak > 0.0);
    }
}
