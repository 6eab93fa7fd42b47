//! Choosing which of the model's scores count, per product, from its good images and defects
//! painted on them.
//!
//! The model sums up to five scores, each in good standard deviations ([`super::ScoreScale`]):
//! the patch distances to the bank, the image descriptor's Gaussian, the patch head, the coarse
//! image Gaussian and the discriminator in the adapted feature space
//! ([`super::discriminator`], which, unlike the head, never saw the painter). Which of them
//! see a product's defects depends on the product: on a tile, a defect changes the surface's
//! make-up and the image scores find it best; on a circuit board
//! whose every image shows a different layout, a short between two tracks is a few patches,
//! and the image scores rank it no better than chance (DeepPCB held out: image 0.53, coarse
//! image 0.48, patch 0.82, the four summed 0.77). A score at chance adds nothing but its own
//! spread to the sum, and the sum then separates less than its best terms alone (DeepPCB with
//! the two left out by this choice: 0.85).
//!
//! The protocol ([`choose`]):
//! 1. **Trial**: the good validation images (the fold the first fit never saw), and each of
//!    them again with the defects the head is taught with painted on it
//!    ([`crate::learn::synthetic_defect`]), are scored by the first fit.
//! 2. **Each score alone**: its image AUROC, painted against unpainted.
//! 3. **Choice**: the patch score, and every other score whose AUROC clears chance (0.5) by
//!    [`CLEARANCE`] standard deviations of an AUROC under chance at these counts
//!    (Mann–Whitney's); if no score clears it, or the trial has fewer than
//!    [`MIN_TRIAL_IMAGES`] good images, all of them count, as every model did before the
//!    choice.
//!
//! The patch score always counts: it is the bank's own, and the heat map a rejected part's
//! regions are drawn from is its patch distances, so a sum without it would reject parts for
//! reasons the regions do not show. The choice never picks a best subset: the head learnt the
//! painter's defects (on other images), so it clears the bar on every product, and a best
//! subset on painted defects would crown it, the weakest score on magnetic-tile's real ones.
//! What it leaves out is a score that does not tell painted copies from good images better
//! than chance plus the bar; where every score does (magnetic-tile's development part), all
//! of them count, as before. The bar is an approximation: the painted copies are of the trial's
//! own images, several of each, so they are less independent than its counts say; a blind
//! score's copies score about as their images do, which puts its AUROC nearer 0.5 than the
//! spread assumed. The card keeps each score's AUROC, the bar and the rule ([`ScoreChoice`]).

use serde::{Deserialize, Serialize};

use super::{RawScores, ScoreAuroc, ScoreKind};

/// Standard deviations of a chance AUROC a score's must clear to count.
pub const CLEARANCE: f64 = 2.0;

/// The fewest good validation images the choice is made on: with fewer, the bar nears 0.65
/// (20 images and 80 painted copies: 0.645; 18 and 72: 0.653), and a score with a modest eye for painted
/// defects could not be told from a blind one. Below it every score counts.
pub const MIN_TRIAL_IMAGES: usize = 20;

/// Which scores count, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreChoice {
    /// The scores that count, in the model's order.
    pub counted: Vec<ScoreKind>,
    /// The rule, in words.
    pub rule: String,
    /// Each score's image AUROC on the trial's painted images against the unpainted ones.
    pub painted_auroc: ScoreAuroc,
    /// The AUROC a score had to reach.
    pub bar: f64,
    /// Good validation images, and painted copies of them, the trial scored.
    pub n_good: usize,
    pub n_painted: usize,
}

/// The AUROC a score must reach to count, for `n_good` good and `n_painted` painted images:
/// 0.5 plus [`CLEARANCE`] standard deviations of a chance AUROC at those counts.
pub fn bar(n_good: usize, n_painted: usize) -> f64 {
    let (n0, n1) = (n_good.max(1) as f64, n_painted.max(1) as f64);
    0.5 + CLEARANCE * ((n0 + n1 + 1.0) / (12.0 * n0 * n1)).sqrt()
}

/// The scores that count, from the first fit's raw scores of good validation images and of
/// painted copies of them. A score only some images have (a model without a head) is not a
/// candidate.
pub fn choose(good: &[RawScores], painted: &[RawScores]) -> ScoreChoice {
    let labels: Vec<bool> = (good.iter().map(|_| false))
        .chain(painted.iter().map(|_| true))
        .collect();
    let all: Vec<RawScores> = good.iter().chain(painted).copied().collect();
    let painted_auroc = ScoreAuroc::of(&all, &labels);
    let bar = bar(good.len(), painted.len());
    let candidates: Vec<(ScoreKind, f64)> = (ScoreKind::ALL.iter())
        .filter_map(|&kind| painted_auroc.of_kind(kind).map(|auroc| (kind, auroc)))
        .collect();
    let clear: Vec<ScoreKind> = (candidates.iter())
        .filter(|&&(_, auroc)| auroc >= bar)
        .map(|&(kind, _)| kind)
        .collect();
    let every_score = || candidates.iter().map(|&(kind, _)| kind).collect();
    let trial = format!(
        "image AUROC of each score alone: {} painted copies of {} good validation images \
         against the unpainted, scored by a fit that saw none of them",
        painted.len(),
        good.len()
    );
    let (counted, rule) = if good.len() < MIN_TRIAL_IMAGES {
        (
            every_score(),
            format!(
                "every score: {} good validation images are too few to tell a blind score \
                 (at least {MIN_TRIAL_IMAGES}); the {trial}",
                good.len()
            ),
        )
    } else if clear.is_empty() {
        (
            every_score(),
            format!(
                "every score: none reached {bar:.3} ({CLEARANCE} standard deviations above \
                 chance) in the {trial}"
            ),
        )
    } else {
        // The patch score counts whether or not it clears the bar (see the module's docs).
        let counted: Vec<ScoreKind> = (candidates.iter())
            .map(|&(kind, _)| kind)
            .filter(|kind| *kind == ScoreKind::Patch || clear.contains(kind))
            .collect();
        let left_out: Vec<&str> = (candidates.iter())
            .filter(|(kind, _)| !counted.contains(kind))
            .map(|(kind, _)| kind.name())
            .collect();
        let rule = format!(
            "the patch score, and the others reaching {bar:.3} ({CLEARANCE} standard \
             deviations above chance) in the {trial}{}",
            if left_out.is_empty() {
                String::new()
            } else {
                format!("; left out: {}", left_out.join(", "))
            }
        );
        (counted, rule)
    };
    ScoreChoice {
        counted,
        rule,
        painted_auroc,
        bar,
        n_good: good.len(),
        n_painted: painted.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(patch: f32, image: f32, head: f32) -> RawScores {
        RawScores {
            patch,
            image: Some(image),
            head: Some(head),
            coarse_image: None,
            discriminator: None,
        }
    }

    /// `n` good images' scores and `n` painted copies': the patch and head scores rank every
    /// painted copy above every good image unless `patch_blind`; the image score interleaves
    /// them (its AUROC is 0.5 + 1 / 2n).
    fn trial(n: usize, patch_blind: bool) -> (Vec<RawScores>, Vec<RawScores>) {
        let good = (0..n)
            .map(|i| raw(i as f32, (2 * i) as f32, -(i as f32)))
            .collect();
        let painted = (0..n)
            .map(|i| {
                let patch = if patch_blind {
                    i as f32
                } else {
                    100.0 + i as f32
                };
                raw(patch, (2 * i + 1) as f32 - 0.5, 50.0)
            })
            .collect();
        (good, painted)
    }

    #[test]
    fn a_score_at_chance_on_painted_defects_is_left_out() {
        let (good, painted) = trial(20, false);
        let choice = choose(&good, &painted);
        assert_eq!(choice.counted, vec![ScoreKind::Patch, ScoreKind::Head]);
        assert_eq!(choice.painted_auroc.patch, Some(1.0));
        assert!((choice.painted_auroc.image.expect("image") - 0.525).abs() < 1e-9);
        // No coarse score on these images: not a candidate.
        assert_eq!(choice.painted_auroc.coarse_image, None);
        assert!(choice.rule.contains("left out: image"), "{}", choice.rule);
        assert_eq!((choice.n_good, choice.n_painted), (20, 20));
        // The bar: 0.5 + 2 × sqrt(41 / 4800).
        assert!((choice.bar - 0.6848).abs() < 1e-3, "{}", choice.bar);
    }

    #[test]
    fn the_patch_score_counts_even_below_the_bar() {
        let (good, painted) = trial(20, true);
        let choice = choose(&good, &painted);
        assert!(choice.painted_auroc.patch.expect("patch") < choice.bar);
        assert_eq!(choice.counted, vec![ScoreKind::Patch, ScoreKind::Head]);
        assert!(choice.rule.contains("left out: image"), "{}", choice.rule);
    }

    #[test]
    fn every_score_counts_when_all_or_none_clear_the_bar_or_the_trial_is_small() {
        let good: Vec<RawScores> = (0..20).map(|i| raw(i as f32, i as f32, 0.0)).collect();
        let painted: Vec<RawScores> = (0..20)
            .map(|i| raw(40.0 + i as f32, 40.0 + i as f32, 1.0))
            .collect();
        let all = ScoreKind::ALL[..3].to_vec();
        assert_eq!(choose(&good, &painted).counted, all);
        assert!(!choose(&good, &painted).rule.contains("left out"));
        // Painted images that score like the good ones: nothing to choose by.
        let blind = choose(&good, &good);
        assert_eq!(blind.counted, all);
        assert!(
            blind.rule.starts_with("every score: none reached"),
            "{}",
            blind.rule
        );
        // Too few good images: the image score at chance still counts.
        let (good, painted) = trial(MIN_TRIAL_IMAGES - 1, false);
        let small = choose(&good, &painted);
        assert_eq!(small.counted, all);
        assert!(small.rule.contains("too few"), "{}", small.rule);
        assert!(
            small.painted_auroc.image.is_some(),
            "the trial is still kept"
        );
    }

    #[test]
    fn the_bar_tightens_with_more_images() {
        assert!(bar(10, 10) > bar(35, 140));
        assert!(bar(35, 140) > 0.5);
    }
}
