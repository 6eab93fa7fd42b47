//! Choosing the supervised model's input size per product, from its labelled validation images
//! (`--input-size auto`, `auto:512`, `auto:1024`).
//!
//! A crack two pixels wide on a 480×320 road photo is found at 256 but outlined by patches of
//! 15×10 photo pixels; at 512 the patches are a quarter of that, and the outline follows the
//! crack (CrackForest's held-out crack F1 0.62 at 256 against 0.80 at 512, both measured after
//! the size was given by hand). Magnetic tiles need no more than 256. The size is a property of
//! the product, so the training run measures it on the product's own labels.
//!
//! The protocol ([`choose`], run by [`super::train()`]):
//! 1. **Candidates**: [`CANDIDATES`] up to the run's largest size (256 unless asked, as the
//!    anomaly family's: 512 costs about four times as much per part, 1024 about 26 times) and
//!    up to the images' median *longer* side (10 % of upsampling allowed). The longer side,
//!    not the shorter one the anomaly family stops at: the model resamples every image to a
//!    square, and the finer patch grid of a square as large as the longer side outlines
//!    defects better even where it interpolates the shorter side. For thin defects, up to
//!    twice that side (and 10 %): a heat-map cell is 8×8 model pixels whatever the input, so
//!    a square larger than the image draws finer cells, and a crack's outline follows them
//!    (CrackForest's 480×320 photos: validation F1 0.877 at 512, 0.895 at 1024, whose cells
//!    are 3.75×2.5 photo pixels). Images judged by verdicts or boxes gain nothing measured
//!    from pixels the camera never took, so they stop at their side. The smallest candidate
//!    always runs.
//! 2. **Trial per candidate**: the first fit (on the training part less its validation part)
//!    at that size, with the same seed and augmentations, scored on the validation images.
//!    The figure is what the product's labels can judge: for thin defects (cracks) the F1 of
//!    their outline at the best heat-map cut; for images labelled with boxes the boxes' mean
//!    AP (the one the box shape is chosen by); else the image AUROC of good against defective
//!    validation images. Without a figure (say, no good validation image and no outline), the
//!    smallest candidate is taken.
//! 3. **Choice**: from the smallest up, a larger candidate replaces the chosen one only when
//!    its figure is more than [`MIN_GAIN`] higher; the run then goes on with the chosen
//!    candidate's first fit, as a run given that size would. Every trial is kept on the card.

use serde::{Deserialize, Serialize};

use crate::learn::dataset;

/// The sizes a run may choose from, smallest first: the anomaly family's and 1024, which thin
/// defects reach on images of 466 px and more, others on images of 931 px and more.
pub const CANDIDATES: [usize; 4] = [128, 256, 512, 1024];

/// How much higher a larger candidate's figure must be to replace a smaller one.
pub const MIN_GAIN: f64 = 0.01;

/// How far above the images' median longer side a candidate may go.
const MAX_UPSAMPLING: f64 = 1.1;

/// How far above it a candidate may go where the validation images judge thin defects'
/// outlines: twice, and 10 %.
const THIN_DEFECT_MAX_UPSAMPLING: f64 = 2.2;

/// What each candidate measured on the validation images, and the size chosen: on the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeChoice {
    pub chosen: usize,
    /// How it was chosen, in words.
    pub rule: String,
    /// The validation figure the trials compare, in words.
    pub figure: String,
    pub trials: Vec<SizeTrial>,
    /// The training images' median longer side, which bounds the candidates.
    pub median_longer_side: usize,
}

impl SizeChoice {
    /// The choice of `chosen` after `trials`, which `figure` judged (`None` where the
    /// validation images could not), for images whose median longer side is
    /// `median_longer_side`.
    pub fn new(
        chosen: usize,
        trials: Vec<SizeTrial>,
        figure: Option<&str>,
        median_longer_side: usize,
    ) -> SizeChoice {
        let rule = match figure {
            Some(_) => format!(
                "the smallest size, replaced by a larger one only where its validation figure \
                 is more than {MIN_GAIN} higher"
            ),
            None => "the smallest size: the validation images cannot judge one".to_owned(),
        };
        SizeChoice {
            chosen,
            rule,
            figure: figure.unwrap_or("none").to_owned(),
            trials,
            median_longer_side,
        }
    }
}

/// One candidate's first fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeTrial {
    pub input_size: usize,
    /// `None` where the validation images could not judge it.
    pub value: Option<f64>,
    /// Features, fit and validation scoring.
    pub seconds: f64,
}

/// The candidates for images whose median longer side is `median_side`, none above `largest`;
/// `thin_defects` where the images' labels outline thin defects.
pub fn candidates(median_side: usize, largest: usize, thin_defects: bool) -> Vec<usize> {
    let upsampling = if thin_defects {
        THIN_DEFECT_MAX_UPSAMPLING
    } else {
        MAX_UPSAMPLING
    };
    crate::models::anomaly::input_size::candidates_within(
        &CANDIDATES,
        median_side as f64 * upsampling,
        largest,
    )
}

/// Step 3: from the first (smallest) trial up, a larger size replaces the chosen one only when
/// its figure is more than [`MIN_GAIN`] higher; a trial without a figure never does, and
/// without any figure the first trial's size stands.
pub fn chosen_size(trials: &[SizeTrial]) -> Option<usize> {
    let mut best: Option<(usize, Option<f64>)> = None;
    for trial in trials {
        best = match (best, trial.value) {
            (None, value) => Some((trial.input_size, value)),
            (Some((_, None)), Some(value)) => Some((trial.input_size, Some(value))),
            (Some((_, Some(chosen))), Some(value)) if value > chosen + MIN_GAIN => {
                Some((trial.input_size, Some(value)))
            }
            (kept, _) => kept,
        };
    }
    best.map(|(size, _)| size)
}

/// What [`choose`] found: the chosen size's fit (`None` only without sizes), every trial, and
/// what their figure is, in words (`None` where none was judged).
pub type Chosen<T> = (Option<T>, Vec<SizeTrial>, Option<&'static str>);

/// Runs `trial` (a first fit at a size, and its validation figure with what it is) at each of
/// `sizes`, smallest first, and keeps the fit of the size [`chosen_size`] takes; the others are
/// let go as soon as a later size replaces them, so at most two are held at once.
pub fn choose<T, E>(
    sizes: &[usize],
    mut trial: impl FnMut(usize) -> Result<(T, Option<(f64, &'static str)>), E>,
) -> Result<Chosen<T>, E> {
    let mut trials = Vec::new();
    let mut kept = None;
    let mut figure = None;
    for &size in sizes {
        let started = std::time::Instant::now();
        let (fit, judged) = trial(size)?;
        figure = figure.or(judged.map(|(_, what)| what));
        trials.push(SizeTrial {
            input_size: size,
            value: judged.map(|(value, _)| value),
            seconds: started.elapsed().as_secs_f64(),
        });
        if chosen_size(&trials) == Some(size) {
            kept = Some(fit);
        }
    }
    Ok((kept, trials, figure))
}

/// The median of the longer sides of the images at `paths` that can be read (header only, see
/// [`dataset::image_dimensions`]); 0 when none can.
pub fn median_longer_side<'a>(paths: impl Iterator<Item = &'a std::path::Path>) -> usize {
    let mut sides: Vec<usize> = paths
        .filter_map(|path| dataset::image_dimensions(path).ok())
        .map(|(width, height)| width.max(height) as usize)
        .collect();
    sides.sort_unstable();
    sides.get(sides.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(input_size: usize, value: Option<f64>) -> SizeTrial {
        SizeTrial {
            input_size,
            value,
            seconds: 1.0,
        }
    }

    /// [`choose`] with fits that are their size, judged by `figures`.
    fn kept(figures: &[(usize, Option<f64>)]) -> Chosen<usize> {
        let sizes: Vec<usize> = figures.iter().map(|(size, _)| *size).collect();
        choose(&sizes, |size| {
            let value = figures
                .iter()
                .find(|(s, _)| *s == size)
                .and_then(|(_, v)| *v);
            Ok::<_, String>((size, value.map(|v| (v, "AUROC"))))
        })
        .expect("no trial fails")
    }

    #[test]
    fn the_fit_kept_is_the_chosen_sizes() {
        // A larger size that earns its cost; one that does not; the first unjudged.
        assert_eq!(kept(&[(128, Some(0.6)), (256, Some(0.9))]).0, Some(256));
        assert_eq!(kept(&[(128, Some(0.9)), (256, Some(0.905))]).0, Some(128));
        assert_eq!(kept(&[(128, None), (256, Some(0.5))]).0, Some(256));
        // A later size unjudged, and one after it judged against the chosen one.
        let (size, trials, _) = kept(&[(128, Some(0.7)), (256, None), (512, Some(0.75))]);
        assert_eq!(size, Some(512));
        assert_eq!(trials.len(), 3);
        assert_eq!(trials[1].value, None);
        // Nothing judged: the smallest; no size: nothing.
        assert_eq!(kept(&[(128, None), (256, None)]).0, Some(128));
        assert_eq!(kept(&[]).0, None);
        // A trial that fails fails the choice.
        let failed = choose(&[128, 256], |size| {
            if size == 256 {
                Err("out of memory")
            } else {
                Ok(((), Some((0.5, "AUROC"))))
            }
        });
        assert_eq!(failed.err(), Some("out of memory"));
        // The card says what was judged and by which rule.
        let (_, trials, figure) = kept(&[(128, None), (512, Some(0.8))]);
        assert_eq!(figure, Some("AUROC"));
        let choice = SizeChoice::new(512, trials, figure, 480);
        assert_eq!(choice.figure, "AUROC");
        assert!(
            choice.rule.contains("more than 0.01 higher"),
            "{}",
            choice.rule
        );
        let (_, trials, figure) = kept(&[(128, None)]);
        assert_eq!(figure, None);
        let blind = SizeChoice::new(128, trials, figure, 480);
        assert_eq!(blind.figure, "none");
        assert!(blind.rule.contains("cannot judge"), "{}", blind.rule);
    }

    #[test]
    fn candidates_stop_at_the_longer_side_and_the_largest_size() {
        // A 480×320 crack photo may be looked at as 512 when asked, a 640 board too.
        assert_eq!(candidates(480, 512, false), vec![128, 256, 512]);
        assert_eq!(candidates(640, 512, false), vec![128, 256, 512]);
        // Not unless asked.
        assert_eq!(candidates(480, 256, false), vec![128, 256]);
        // Not far past the images' own pixels.
        assert_eq!(candidates(200, 512, false), vec![128]);
        assert_eq!(candidates(240, 512, false), vec![128, 256]);
        assert_eq!(candidates(640, 1024, false), vec![128, 256, 512]);
        // Tiny images still get the smallest.
        assert_eq!(candidates(40, 512, false), vec![128]);
    }

    #[test]
    fn thin_defects_may_take_up_to_twice_the_images_side() {
        // The crack photo as 1024 when asked, a 256-pixel tile as 512 at most.
        assert_eq!(candidates(480, 1024, true), vec![128, 256, 512, 1024]);
        assert_eq!(candidates(480, 512, true), vec![128, 256, 512]);
        assert_eq!(candidates(256, 1024, true), vec![128, 256, 512]);
        assert_eq!(candidates(100, 1024, true), vec![128]);
        assert_eq!(candidates(40, 1024, true), vec![128]);
    }

    #[test]
    fn a_larger_size_must_earn_its_cost() {
        // 256 is better by less than the gain asked: 128 stands; 512 is better by more.
        let trials = [
            trial(128, Some(0.80)),
            trial(256, Some(0.805)),
            trial(512, Some(0.83)),
        ];
        assert_eq!(chosen_size(&trials), Some(512));
        let close = [trial(128, Some(0.80)), trial(256, Some(0.81))];
        assert_eq!(chosen_size(&close), Some(128));
        // Compared with the chosen one, not the one before: 512 is 0.015 over 256 but only
        // 0.008 over the chosen 128.
        let steps = [
            trial(128, Some(0.80)),
            trial(256, Some(0.793)),
            trial(512, Some(0.808)),
        ];
        assert_eq!(chosen_size(&steps), Some(128));
        // A size that cannot be judged never wins; one that can replaces one that could not.
        let unjudged = [trial(128, Some(0.7)), trial(256, None)];
        assert_eq!(chosen_size(&unjudged), Some(128));
        let later = [trial(128, None), trial(256, Some(0.5))];
        assert_eq!(chosen_size(&later), Some(256));
        assert_eq!(
            chosen_size(&[trial(128, None), trial(256, None)]),
            Some(128)
        );
        assert_eq!(chosen_size(&[]), None);
    }
}
