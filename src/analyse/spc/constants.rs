//! The constants of the subgroup charts (X̄-R, X̄-S) for subgroup sizes 2 to 25.
//!
//! d2, A2, D3 and D4 are the published table values (Montgomery, *Introduction to Statistical
//! Quality Control*, Appendix VI; ASTM E2587) to three decimals, because those are the numbers
//! every other SPC tool and every operator's handbook uses: limits that differ from the
//! handbook's in the fourth digit would start arguments nobody needs. c4 has a closed form
//! (a ratio of gamma functions), so it and everything derived from it (A3, B3, B4) is computed.

use serde::{Deserialize, Serialize};

use super::SpcError;

/// The smallest and largest subgroup size the X̄ charts accept.
pub const SUBGROUP_SIZES: std::ops::RangeInclusive<usize> = 2..=25;

/// (d2, A2, D3, D4) for n = 2..=25, from the published table.
const RANGE_TABLE: [(f64, f64, f64, f64); 24] = [
    (1.128, 1.880, 0.0, 3.267),
    (1.693, 1.023, 0.0, 2.574),
    (2.059, 0.729, 0.0, 2.282),
    (2.326, 0.577, 0.0, 2.114),
    (2.534, 0.483, 0.0, 2.004),
    (2.704, 0.419, 0.076, 1.924),
    (2.847, 0.373, 0.136, 1.864),
    (2.970, 0.337, 0.184, 1.816),
    (3.078, 0.308, 0.223, 1.777),
    (3.173, 0.285, 0.256, 1.744),
    (3.258, 0.266, 0.283, 1.717),
    (3.336, 0.249, 0.307, 1.693),
    (3.407, 0.235, 0.328, 1.672),
    (3.472, 0.223, 0.347, 1.653),
    (3.532, 0.212, 0.363, 1.637),
    (3.588, 0.203, 0.378, 1.622),
    (3.640, 0.194, 0.391, 1.608),
    (3.689, 0.187, 0.403, 1.597),
    (3.735, 0.180, 0.415, 1.585),
    (3.778, 0.173, 0.425, 1.575),
    (3.819, 0.167, 0.434, 1.566),
    (3.858, 0.162, 0.443, 1.557),
    (3.895, 0.157, 0.451, 1.548),
    (3.931, 0.153, 0.459, 1.541),
];

/// d2 for moving ranges of two points: MR̄ / d2 estimates σ of individuals (and Laney's σ_z).
pub const D2_MOVING_RANGE: f64 = RANGE_TABLE[0].0;
/// D4 for moving ranges of two points: the moving-range chart's UCL is D4 · MR̄.
pub const D4_MOVING_RANGE: f64 = RANGE_TABLE[0].3;

/// The control chart constants for one subgroup size, as reported with a chart so a reader can
/// redo its limits by hand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubgroupConstants {
    /// The subgroup size the constants are for.
    pub n: usize,
    /// E[R] / σ for normal data (table).
    pub d2: f64,
    /// X̄ limits are x̿ ± A2 · R̄ (table).
    pub a2: f64,
    /// R chart LCL = D3 · R̄ (table).
    pub d3: f64,
    /// R chart UCL = D4 · R̄ (table).
    pub d4: f64,
    /// E[s] / σ for normal data: √(2/(n−1)) · Γ(n/2) / Γ((n−1)/2).
    pub c4: f64,
    /// X̄ limits are x̿ ± A3 · s̄, with A3 = 3 / (c4 √n).
    pub a3: f64,
    /// S chart LCL = B3 · s̄, with B3 = max(0, 1 − 3√(1−c4²)/c4).
    pub b3: f64,
    /// S chart UCL = B4 · s̄, with B4 = 1 + 3√(1−c4²)/c4.
    pub b4: f64,
}

/// The constants for subgroups of `n` values, `n` in 2..=25.
pub fn subgroup_constants(n: usize) -> Result<SubgroupConstants, SpcError> {
    constants_for(n, 0)
}

/// [`subgroup_constants`], naming subgroup `index` if `n` is out of range.
pub(super) fn constants_for(n: usize, index: usize) -> Result<SubgroupConstants, SpcError> {
    if !SUBGROUP_SIZES.contains(&n) {
        return Err(SpcError::SubgroupSize { index, size: n });
    }
    let (d2, a2, d3, d4) = RANGE_TABLE[n - 2];
    let c4 = c4(n);
    let spread = (1.0 - c4 * c4).sqrt() / c4;
    Ok(SubgroupConstants {
        n,
        d2,
        a2,
        d3,
        d4,
        c4,
        a3: 3.0 / (c4 * (n as f64).sqrt()),
        b3: (1.0 - 3.0 * spread).max(0.0),
        b4: 1.0 + 3.0 * spread,
    })
}

/// c4(n) = √(2/(n−1)) · Γ(n/2) / Γ((n−1)/2), for n ≥ 2.
fn c4(n: usize) -> f64 {
    let n_f = n as f64;
    (2.0 / (n_f - 1.0)).sqrt() * gamma_of_half(n) / gamma_of_half(n - 1)
}

/// Γ(k/2) for k ≥ 1: the only arguments c4 needs. Built up from Γ(1) = 1 and Γ(½) = √π by
/// Γ(x + 1) = x · Γ(x), which is exact up to rounding (no series approximation), and the
/// largest value needed, Γ(12.5), is far from overflow.
fn gamma_of_half(k: usize) -> f64 {
    let whole = k.is_multiple_of(2);
    let mut x = if whole { 1.0 } else { 0.5 };
    let mut gamma = if whole {
        1.0
    } else {
        std::f64::consts::PI.sqrt()
    };
    let target = k as f64 / 2.0;
    while x < target {
        gamma *= x;
        x += 1.0;
    }
    gamma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_of_half_integers_matches_known_values() {
        assert_eq!(gamma_of_half(2), 1.0); // Γ(1)
        assert_eq!(gamma_of_half(6), 2.0); // Γ(3) = 2!
        assert!((gamma_of_half(1) - 1.772_453_850_905_516).abs() < 1e-15); // √π
        assert!((gamma_of_half(3) - 0.886_226_925_452_758).abs() < 1e-15); // √π/2
    }

    #[test]
    fn c4_b3_b4_match_the_handbook() {
        // Handbook values to four decimals: c4(2) = 0.7979, c4(5) = 0.9400, c4(25) = 0.9896.
        let two = subgroup_constants(2).expect("n = 2");
        assert!((two.c4 - (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-15);
        assert!((subgroup_constants(5).expect("5").c4 - 0.9400).abs() < 5e-5);
        let big = subgroup_constants(25).expect("25");
        assert!((big.c4 - 0.9896).abs() < 5e-5);
        assert!((big.b3 - 0.565).abs() < 5e-4 && (big.b4 - 1.435).abs() < 5e-4);
        assert!((subgroup_constants(5).expect("5").a3 - 1.427).abs() < 5e-4);
        assert_eq!(subgroup_constants(5).expect("5").b3, 0.0);
    }

    #[test]
    fn sizes_outside_2_to_25_are_refused() {
        assert!(matches!(
            subgroup_constants(1),
            Err(SpcError::SubgroupSize { size: 1, .. })
        ));
        assert!(subgroup_constants(26).is_err());
        assert_eq!(subgroup_constants(25).expect("25").d2, 3.931);
    }
}
