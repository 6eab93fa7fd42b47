//! Repeating defects: a defect at the same place on the part every N parts points at a damaged
//! roller (or any turning tool) whose circumference is N part pitches.
//!
//! In: the inspected parts in line order ([`PartDefect`]: the part's index on the line, whether
//! it was defective, and where on the calibrated image the defect's heat-map peak was, x and y
//! normalised to `[0, 1]`). Out: the strongest period, if one recurs far more often than chance
//! ([`RepeatPattern`]).
//!
//! For each period N tried, the pairs of defects N parts apart that sit within `radius` of each
//! other vote for a place; the place with most votes is the candidate. Its test: of the `n`
//! defects at that place whose part N later was inspected, `k` were followed by a defect at the
//! same place. By chance a part has a defect there with probability q = (defects at the place) /
//! (parts inspected), so k ~ Binomial(n, q) under "no period"; the p-value is P(X ≥ k).
//! Bonferroni over every (period, place) tried (the places being the disjoint discs of the
//! radius that fit in the image) keeps the chance of any false pattern under `alpha`. Of the
//! periods that pass, the most significant wins, and is replaced by its smallest divisor that
//! also passes: a roller of 37 pitches repeats at 74 too.

use std::collections::HashMap;

use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};

/// One inspected part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartDefect {
    /// The part's place on the line (consecutive parts differ by 1; gaps are parts not
    /// inspected).
    pub part_index: u64,
    pub defective: bool,
    /// The defect's place in the calibrated image, `(x, y)` normalised to `[0, 1]`; `None` when
    /// the part is good or the model gave no heat map.
    pub at: Option<(f64, f64)>,
}

/// What is searched and how sure it must be.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Shortest and longest period tried, in parts.
    pub min_period: u64,
    pub max_period: u64,
    /// Two defects within this distance (normalised image units) are at the same place.
    pub radius: f64,
    /// Family-wise error rate over every (period, place) tried.
    pub alpha: f64,
    /// Fewest repeats a pattern needs, however small its p-value.
    pub min_repeats: u64,
}

impl Default for Settings {
    /// Periods 2–200, places within 0.04 of the image, α = 0.001, at least 4 repeats.
    fn default() -> Settings {
        Settings {
            min_period: 2,
            max_period: 200,
            radius: 0.04,
            alpha: 0.001,
            min_repeats: 4,
        }
    }
}

/// A defect recurring at one place every `period` parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatPattern {
    pub period: u64,
    /// Mean place of the repeating defects, normalised `(x, y)`.
    pub at: (f64, f64),
    /// Defects at the place followed, `period` parts later, by one at the same place.
    pub repeats: u64,
    /// Defects at the place whose part `period` later was inspected.
    pub chances: u64,
    /// The chance of a defect at the place on any part (the null hypothesis).
    pub chance_rate: f64,
    /// P(X ≥ repeats) under that chance, before and after Bonferroni.
    pub p_value: f64,
    pub adjusted_p_value: f64,
    /// What it says, for an engineer.
    pub message: String,
}

/// Why the search could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RepeatError {
    #[error("repeat search: {0}")]
    Settings(String),
    #[error("repeat search: part {part_index} has a defect place {at:?} outside [0, 1]²")]
    Place { part_index: u64, at: (f64, f64) },
    #[error("repeat search: part index {0} appears twice")]
    Duplicate(u64),
}

/// The strongest repeating defect in `parts`, if any passes the test.
pub fn find(
    parts: &[PartDefect],
    settings: &Settings,
) -> Result<Option<RepeatPattern>, RepeatError> {
    check(settings)?;
    let mut by_index: HashMap<u64, Option<(f64, f64)>> = HashMap::with_capacity(parts.len());
    for part in parts {
        if let Some((x, y)) = part.at
            && !((0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y))
        {
            return Err(RepeatError::Place {
                part_index: part.part_index,
                at: (x, y),
            });
        }
        // A defective part without a place cannot repeat at one; a good part has none.
        let place = part.at.filter(|_| part.defective);
        if by_index.insert(part.part_index, place).is_some() {
            return Err(RepeatError::Duplicate(part.part_index));
        }
    }
    let defects: Vec<(u64, (f64, f64))> = {
        let mut d: Vec<_> = by_index
            .iter()
            .filter_map(|(&i, place)| Some((i, (*place)?)))
            .collect();
        d.sort_by_key(|(i, _)| *i);
        d
    };
    let inspected = by_index.len() as f64;
    if defects.len() < 2 {
        return Ok(None);
    }
    let periods = settings.max_period - settings.min_period + 1;
    let places = (1.0 / (std::f64::consts::PI * settings.radius * settings.radius)).ceil();
    let tests = periods as f64 * places.max(1.0);
    let r2 = settings.radius * settings.radius;
    let near = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2) <= r2;

    let mut passed: Vec<RepeatPattern> = Vec::new();
    for period in settings.min_period..=settings.max_period {
        // Pairs of defects `period` apart at the same place.
        let pairs: Vec<(f64, f64)> = defects
            .iter()
            .filter_map(|&(i, a)| {
                let b = (*by_index.get(&(i + period))?)?;
                near(a, b).then_some(((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0))
            })
            .collect();
        if (pairs.len() as u64) < settings.min_repeats {
            continue;
        }
        // The place most pairs agree on, then the mean of those pairs.
        let Some(centre) = pairs
            .iter()
            .max_by_key(|&&p| pairs.iter().filter(|&&q| near(p, q)).count())
            .copied()
        else {
            continue;
        };
        let voters: Vec<(f64, f64)> = pairs.iter().copied().filter(|&q| near(centre, q)).collect();
        let place = (
            voters.iter().map(|p| p.0).sum::<f64>() / voters.len() as f64,
            voters.iter().map(|p| p.1).sum::<f64>() / voters.len() as f64,
        );
        let at_place: Vec<u64> = defects
            .iter()
            .filter(|(_, a)| near(*a, place))
            .map(|(i, _)| *i)
            .collect();
        let mut chances = 0u64;
        let mut repeats = 0u64;
        for &i in &at_place {
            match by_index.get(&(i + period)) {
                None => {}
                Some(next) => {
                    chances += 1;
                    if next.is_some_and(|b| near(b, place)) {
                        repeats += 1;
                    }
                }
            }
        }
        if repeats < settings.min_repeats {
            continue;
        }
        let chance_rate = (at_place.len() as f64 / inspected).clamp(f64::MIN_POSITIVE, 1.0);
        let p_value = binomial_tail(repeats, chances, chance_rate);
        let adjusted_p_value = (p_value * tests).min(1.0);
        if adjusted_p_value <= settings.alpha {
            passed.push(RepeatPattern {
                period,
                at: place,
                repeats,
                chances,
                chance_rate,
                p_value,
                adjusted_p_value,
                message: String::new(),
            });
        }
    }
    let Some(best) = passed
        .iter()
        .min_by(|a, b| a.p_value.total_cmp(&b.p_value))
        .cloned()
    else {
        return Ok(None);
    };
    // A multiple of the true period repeats too: prefer the smallest divisor that passed at
    // the same place.
    let mut pattern = passed
        .into_iter()
        .find(|p| best.period % p.period == 0 && near(p.at, best.at))
        .unwrap_or(best);
    pattern.message = format!(
        "a defect at ({:.2}, {:.2}) every {} parts ({} of {} repeats) suggests damage on a roller with a circumference of {} part pitches",
        pattern.at.0,
        pattern.at.1,
        pattern.period,
        pattern.repeats,
        pattern.chances,
        pattern.period
    );
    Ok(Some(pattern))
}

fn check(settings: &Settings) -> Result<(), RepeatError> {
    let mut problems = Vec::new();
    if settings.min_period == 0 {
        problems.push("min_period must be at least 1".to_owned());
    }
    if settings.max_period < settings.min_period {
        problems.push(format!(
            "max_period ({}) must be at least min_period ({})",
            settings.max_period, settings.min_period
        ));
    }
    if settings.max_period > 100_000 {
        problems.push("max_period must be at most 100000".to_owned());
    }
    if !(settings.radius.is_finite() && settings.radius > 0.0 && settings.radius <= 1.0) {
        problems.push(format!("radius ({}) must be in (0, 1]", settings.radius));
    }
    if !(settings.alpha.is_finite() && settings.alpha > 0.0 && settings.alpha < 1.0) {
        problems.push(format!("alpha ({}) must be in (0, 1)", settings.alpha));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RepeatError::Settings(problems.join("; ")))
    }
}

/// P(X ≥ k) for X ~ Binomial(n, q).
fn binomial_tail(k: u64, n: u64, q: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(q, n) {
        // sf(k − 1) = P(X > k − 1) = P(X ≥ k).
        Ok(binomial) => binomial.sf(k - 1),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `n` parts with random defects at `rate` anywhere, and, when given, a roller mark at
    /// `place` (jittered by 0.01) on every `period`-th part from `phase`.
    fn line(
        seed: u64,
        n: u64,
        rate: f64,
        roller: Option<(u64, u64, (f64, f64))>,
    ) -> Vec<PartDefect> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                if let Some((period, phase, (x, y))) = roller
                    && i % period == phase
                {
                    let jitter = |rng: &mut ChaCha8Rng| rng.gen_range(-0.01..0.01);
                    return PartDefect {
                        part_index: i,
                        defective: true,
                        at: Some((x + jitter(&mut rng), y + jitter(&mut rng))),
                    };
                }
                let defective = rng.gen_bool(rate);
                PartDefect {
                    part_index: i,
                    defective,
                    at: defective.then(|| (rng.gen_range(0.0..1.0), rng.gen_range(0.0..1.0))),
                }
            })
            .collect()
    }

    #[test]
    fn a_roller_mark_is_found_with_its_period_and_place() {
        let parts = line(7, 600, 0.08, Some((37, 5, (0.62, 0.18))));
        let pattern = find(&parts, &Settings::default())
            .expect("valid")
            .expect("a pattern");
        assert_eq!(pattern.period, 37);
        assert!((pattern.at.0 - 0.62).abs() < 0.02, "{:?}", pattern.at);
        assert!((pattern.at.1 - 0.18).abs() < 0.02, "{:?}", pattern.at);
        assert!(pattern.repeats >= 14, "{pattern:?}");
        assert!(
            pattern.message.starts_with("a defect at (0.6")
                && pattern.message.contains("every 37 parts"),
            "{}",
            pattern.message
        );
    }

    #[test]
    fn a_mark_on_only_some_turns_and_parts_not_inspected_still_show() {
        // The roller marks 3 turns in 4, and every 10th part was not inspected.
        let mut parts = line(11, 1_000, 0.1, Some((23, 0, (0.3, 0.7))));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for part in &mut parts {
            if part.part_index % 23 == 0 && rng.gen_bool(0.25) {
                part.defective = false;
                part.at = None;
            }
        }
        parts.retain(|p| p.part_index % 10 != 9);
        let pattern = find(&parts, &Settings::default())
            .expect("valid")
            .expect("a pattern");
        assert_eq!(pattern.period, 23);
    }

    #[test]
    fn random_defects_give_no_pattern() {
        for seed in 0..10 {
            let parts = line(seed, 2_000, 0.15, None);
            let found = find(&parts, &Settings::default()).expect("valid");
            assert_eq!(found, None, "seed {seed}");
        }
    }

    #[test]
    fn defects_always_at_one_place_without_a_period_give_no_pattern() {
        // A fixture scratch on a third of the parts at random: the same place, but no rhythm.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let parts: Vec<PartDefect> = (0..1_500)
            .map(|i| {
                let defective = rng.gen_bool(0.3);
                PartDefect {
                    part_index: i,
                    defective,
                    at: defective.then_some((0.5, 0.5)),
                }
            })
            .collect();
        assert_eq!(find(&parts, &Settings::default()).expect("valid"), None);
    }

    #[test]
    fn bad_input_is_named() {
        let parts = [PartDefect {
            part_index: 3,
            defective: true,
            at: Some((1.5, 0.2)),
        }];
        assert!(matches!(
            find(&parts, &Settings::default()),
            Err(RepeatError::Place { part_index: 3, .. })
        ));
        let twice = [PartDefect {
            part_index: 1,
            defective: false,
            at: None,
        }; 2];
        assert_eq!(
            find(&twice, &Settings::default()),
            Err(RepeatError::Duplicate(1))
        );
        let settings = Settings {
            min_period: 0,
            radius: f64::NAN,
            ..Settings::default()
        };
        let message = find(&[], &settings).expect_err("bad settings").to_string();
        assert!(
            message.contains("min_period") && message.contains("radius"),
            "{message}"
        );
        assert_eq!(find(&[], &Settings::default()), Ok(None));
    }
}
