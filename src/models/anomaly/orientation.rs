//! Choosing which turned copies of the good images the memory bank learns from, per product,
//! from its good images alone.
//!
//! A memory bank knows only the good surfaces it was shown. A tile's grain or a board's
//! traces run in any direction, and 200 good images show few of the directions a good part
//! can bring: a good part whose grain runs another way then scores as a defect. Turned copies
//! of the good images (flipped, rotated) show the bank those directions. On other products
//! the direction is the part: a label printed the right way round, a commutator's bars
//! across, a connector's key on its left. There a turned good image is a defect, and a bank
//! that learnt it would pass the part mounted the wrong way round. No default suits both, so
//! the training run asks the product's good images which turns leave a good part good.
//!
//! `--orientations auto` runs the protocol; `none` (the default: see [`Orientations::None`])
//! learns the images as they are; a list of turns is taken as given, for parts that arrive
//! turned on the line.
//!
//! The protocol ([`choose`]):
//! 1. **Candidates**: the seven turns of [`Orientation::ALL`] (the square's symmetries other
//!    than the identity: two flips, three rotations, two transposes).
//! 2. **Trial**: the same plain memory bank as the input size's
//!    ([`super::input_size::TrialBank`]: every patch, up to 131,072) of up to
//!    [`TRIAL_FIT_IMAGES`] good fit images as they are; up to [`TRIAL_VALIDATION_IMAGES`] good
//!    validation images are scored (their farthest patch's distance to the bank) as they are
//!    and turned by each candidate.
//! 3. **Choice**: a turn is taken when its turned images cannot be told from the same images
//!    as they are: their image AUROC against them is at most [`MAX_TURNED_AUROC`]. Every
//!    image the bank learns from is then added once turned by each turn taken, up to a budget
//!    of turned patches beyond which only one image in k is turned
//!    ([`turned_one_in`]; the card's rule says so).
//!
//! The trial is a plain nearest-neighbour score with no coreset, image score or head, so it
//! takes seconds at 128 and 256 (about a minute a turn at 512); the card keeps every
//! candidate's AUROC ([`OrientationChoice`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::input_size::{TrialBank, load, readable};
use super::train::AnomalyError;
use crate::learn::eval;
use crate::learn::progress::Progress;
use crate::models::backbone::PatchFeatures;
use crate::part::GrayImage;

/// Good fit images whose patches make the trial's bank, at most.
pub const TRIAL_FIT_IMAGES: usize = 32;

/// Good validation images the trial scores, each as it is and turned by every candidate.
pub const TRIAL_VALIDATION_IMAGES: usize = 32;

/// The highest AUROC of turned good images against the same images as they are at which a
/// turn is taken. 0.5 is a turn the bank cannot see at all; a part whose turned image is not
/// a good part (a printed label upside down) lies near 1. Chosen on magnetic-tile's
/// development part (its training part split again as training splits a dataset): its flips
/// and half turn score 0.61–0.70 there and its quarter turns 0.89–0.92 (one trial: its bank
/// holds every patch of its 32 images, so the seed does not move it; the tiles are oblong,
/// and a quarter turn squeezes their grain). The model's image AUROC there, three seeds'
/// mean: 0.9407 with 0.65 (the flip left to right alone), 0.9463 with 0.75 (both flips and
/// the half turn), 0.9505 with every turn, 0.9369 without turns (`make eval-orientations`).
/// 0.75 keeps most of the gain without teaching the bank images no line shows.
pub const MAX_TURNED_AUROC: f64 = 0.75;

/// Which turned copies of the good images a model's bank learns from (`--orientations`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Orientations {
    /// The images as they are only: the default. On magnetic-tile, the product the project
    /// tunes on, the turns [`choose`] takes raised the development part's image AUROC (0.9369
    /// to 0.9463, three seeds) but not the held-out part's (0.9268 to 0.9244), so no
    /// default turns images.
    #[default]
    None,
    /// The turns the product's good images allow ([`choose`]).
    Auto,
    /// These turns: parts that arrive so turned on the line, whatever the good images show.
    Given(Vec<Orientation>),
}

impl std::str::FromStr for Orientations {
    type Err = String;

    /// `none`, `auto`, `all` or turns by name, comma-separated (`flip-horizontal,rotate180`).
    fn from_str(text: &str) -> Result<Orientations, String> {
        match text {
            "none" => return Ok(Orientations::None),
            "auto" => return Ok(Orientations::Auto),
            "all" => return Ok(Orientations::Given(Orientation::ALL.to_vec())),
            _ => {}
        }
        let mut turns = Vec::new();
        for name in text.split(',').map(str::trim) {
            let turn = (Orientation::ALL.into_iter())
                .find(|turn| turn.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = Orientation::ALL.iter().map(|t| t.name()).collect();
                    format!(
                        "{name:?} is not a turn: `none`, `auto`, `all` or some of {}, \
                         comma-separated",
                        names.join(", ")
                    )
                })?;
            if !turns.contains(&turn) {
                turns.push(turn);
            }
        }
        Ok(Orientations::Given(turns))
    }
}

/// One of the square's symmetries other than the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orientation {
    /// Mirrored left to right.
    FlipHorizontal,
    /// Mirrored top to bottom.
    FlipVertical,
    /// Turned half round.
    Rotate180,
    /// Turned a quarter clockwise.
    Rotate90,
    /// Turned a quarter anticlockwise.
    Rotate270,
    /// Mirrored about the main diagonal (rows become columns).
    Transpose,
    /// Mirrored about the other diagonal.
    AntiTranspose,
}

impl Orientation {
    /// Every candidate, in the order the trial runs them.
    pub const ALL: [Orientation; 7] = [
        Orientation::FlipHorizontal,
        Orientation::FlipVertical,
        Orientation::Rotate180,
        Orientation::Rotate90,
        Orientation::Rotate270,
        Orientation::Transpose,
        Orientation::AntiTranspose,
    ];

    /// Its name on the card and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Orientation::FlipHorizontal => "flip-horizontal",
            Orientation::FlipVertical => "flip-vertical",
            Orientation::Rotate180 => "rotate180",
            Orientation::Rotate90 => "rotate90",
            Orientation::Rotate270 => "rotate270",
            Orientation::Transpose => "transpose",
            Orientation::AntiTranspose => "anti-transpose",
        }
    }

    /// `image` turned so.
    pub fn apply(self, image: &GrayImage) -> GrayImage {
        use image::imageops;
        let Some(buffer) =
            image::GrayImage::from_raw(image.width, image.height, image.pixels.clone())
        else {
            // `GrayImage::new` checks the size, so a mismatch cannot happen; keep the image.
            return image.clone();
        };
        let turned = match self {
            Orientation::FlipHorizontal => imageops::flip_horizontal(&buffer),
            Orientation::FlipVertical => imageops::flip_vertical(&buffer),
            Orientation::Rotate180 => imageops::rotate180(&buffer),
            Orientation::Rotate90 => imageops::rotate90(&buffer),
            Orientation::Rotate270 => imageops::rotate270(&buffer),
            Orientation::Transpose => imageops::flip_horizontal(&imageops::rotate90(&buffer)),
            Orientation::AntiTranspose => imageops::flip_vertical(&imageops::rotate90(&buffer)),
        };
        GrayImage {
            width: turned.width(),
            height: turned.height(),
            pixels: turned.into_raw(),
        }
    }
}

/// What the trial measured, and the turns taken: kept on the model's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrientationChoice {
    /// The turns every bank image is added with (empty: the images as they are only).
    pub chosen: Vec<Orientation>,
    /// How they were chosen, in words.
    pub rule: String,
    /// Each candidate's trial (none when there was nothing to compare).
    pub trials: Vec<OrientationTrial>,
    /// Good images the trial's bank came from, and good images it scored (0 where the turns
    /// were given: no trial).
    pub n_fit: usize,
    pub n_validation: usize,
    /// Turned images the final bank learnt from (every learnt image times the turns, or
    /// fewer where the budget turns one image in k).
    #[serde(default)]
    pub n_turned_images: usize,
}

/// One candidate's trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrientationTrial {
    pub orientation: Orientation,
    /// Image AUROC of the turned validation images against the same images as they are.
    pub turned_auroc: f64,
}

/// Runs the protocol of this module on the good images at `fit` and `validation` with
/// `features` at the model's input size. Each image is read when its turn comes and let go
/// after (as the input size's trial does: a run on 5-megapixel images holds one at a time);
/// one that cannot be read is left out with a warning. `seed` draws the bank. With fewer than
/// two readable images on either side nothing is compared and no turn is taken.
pub fn choose(
    features: &PatchFeatures,
    fit: &[PathBuf],
    validation: &[PathBuf],
    seed: u64,
    progress: &Progress,
) -> Result<OrientationChoice, AnomalyError> {
    let (fit, validation) = (readable(fit, WHY).0, readable(validation, WHY).0);
    let (n_fit, n_validation) = (fit.len(), validation.len());
    if n_fit < 2 || n_validation < 2 {
        return Ok(OrientationChoice {
            chosen: Vec::new(),
            rule: "none: too few good images to compare turned ones with".to_owned(),
            trials: Vec::new(),
            n_fit,
            n_validation,
            n_turned_images: 0,
        });
    }
    let bar = progress.phase(
        n_fit + n_validation * (1 + Orientation::ALL.len()),
        "choosing the orientations",
    );
    let Some(bank) = TrialBank::of(features, &fit, seed, &bar, WHY)? else {
        return Err(AnomalyError::File {
            path: fit[0].clone(),
            message: "no good image to choose the orientations by could be read".to_owned(),
        });
    };
    let farthest = |image: &GrayImage| bank.farthest(image);
    // Each validation image read once and scored as it is and turned every way.
    let mut plain = Vec::with_capacity(n_validation);
    let mut turned = vec![Vec::with_capacity(n_validation); Orientation::ALL.len()];
    for path in &validation {
        bar.check()?;
        bar.inc(1 + Orientation::ALL.len() as u64);
        let Some(image) = load(path, WHY) else {
            continue;
        };
        plain.push(farthest(&image)?);
        for (scores, orientation) in turned.iter_mut().zip(Orientation::ALL) {
            scores.push(farthest(&orientation.apply(&image))?);
        }
    }
    let trials: Vec<OrientationTrial> = (turned.into_iter().zip(Orientation::ALL))
        .map(|(turned, orientation)| {
            let labels: Vec<bool> = (plain.iter().map(|_| false))
                .chain(turned.iter().map(|_| true))
                .collect();
            let scores: Vec<f32> = plain.iter().chain(&turned).copied().collect();
            OrientationTrial {
                orientation,
                // With nothing to compare (no validation image read after all), refused.
                turned_auroc: eval::auroc(&scores, &labels).unwrap_or(1.0),
            }
        })
        .collect();
    bar.finish_and_clear();
    Ok(OrientationChoice {
        chosen: chosen_orientations(&trials),
        rule: format!(
            "each turn whose {n_validation} turned good validation images a bank of {n_fit} \
             good images as they are tells from the same images unturned no better than image \
             AUROC {MAX_TURNED_AUROC}"
        ),
        trials,
        n_fit,
        n_validation,
        n_turned_images: 0,
    })
}

/// Turned copies are made of one image in this many: 1 while `images` turned `turns` ways
/// add at most `budget` patches of `patches_per_image` each, else the fewest images in
/// turn that keep within it (one image's turns past it at most).
pub fn turned_one_in(
    images: usize,
    turns: usize,
    patches_per_image: usize,
    budget: usize,
) -> usize {
    (images.saturating_mul(turns))
        .saturating_mul(patches_per_image)
        .div_ceil(budget.max(1))
        .max(1)
}

/// The rule of step 3: every turn whose AUROC is at most [`MAX_TURNED_AUROC`].
pub fn chosen_orientations(trials: &[OrientationTrial]) -> Vec<Orientation> {
    (trials.iter())
        .filter(|trial| trial.turned_auroc <= MAX_TURNED_AUROC)
        .map(|trial| trial.orientation)
        .collect()
}

/// What a warning about an image this trial cannot read says it goes on doing.
const WHY: &str = "choosing the orientations";

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32) -> GrayImage {
        let pixels = (0..width * height).map(|i| (i * 7 % 251) as u8).collect();
        GrayImage::new(width, height, pixels).expect("size")
    }

    fn at(image: &GrayImage, x: u32, y: u32) -> u8 {
        image.pixels[(y * image.width + x) as usize]
    }

    #[test]
    fn each_turn_moves_the_corners_where_it_should() {
        let original = image(3, 2);
        // Corners of the 3×2 original: top-left, top-right, bottom-left, bottom-right.
        let (tl, tr, bl, br) = (
            at(&original, 0, 0),
            at(&original, 2, 0),
            at(&original, 0, 1),
            at(&original, 2, 1),
        );
        let corners = |image: &GrayImage| {
            let (w, h) = (image.width - 1, image.height - 1);
            (
                at(image, 0, 0),
                at(image, w, 0),
                at(image, 0, h),
                at(image, w, h),
            )
        };
        let expect = [
            (Orientation::FlipHorizontal, (3, 2), (tr, tl, br, bl)),
            (Orientation::FlipVertical, (3, 2), (bl, br, tl, tr)),
            (Orientation::Rotate180, (3, 2), (br, bl, tr, tl)),
            (Orientation::Rotate90, (2, 3), (bl, tl, br, tr)),
            (Orientation::Rotate270, (2, 3), (tr, br, tl, bl)),
            (Orientation::Transpose, (2, 3), (tl, bl, tr, br)),
            (Orientation::AntiTranspose, (2, 3), (br, tr, bl, tl)),
        ];
        for (orientation, (w, h), want) in expect {
            let turned = orientation.apply(&original);
            assert_eq!((turned.width, turned.height), (w, h), "{orientation:?}");
            assert_eq!(corners(&turned), want, "{orientation:?}");
            let mut sorted = turned.pixels.clone();
            let mut original_sorted = original.pixels.clone();
            sorted.sort_unstable();
            original_sorted.sort_unstable();
            assert_eq!(sorted, original_sorted, "{orientation:?} keeps every pixel");
        }
    }

    #[test]
    fn turns_read_as_the_card_writes_them() {
        for turn in Orientation::ALL {
            let written = serde_json::to_string(&turn).expect("json");
            assert_eq!(written, format!("\"{}\"", turn.name()));
            assert_eq!(
                turn.name().parse::<Orientations>(),
                Ok(Orientations::Given(vec![turn]))
            );
        }
        assert_eq!("none".parse(), Ok(Orientations::None));
        assert_eq!("auto".parse(), Ok(Orientations::Auto));
        assert_eq!(
            "all".parse(),
            Ok(Orientations::Given(Orientation::ALL.to_vec()))
        );
        assert_eq!(
            "rotate90,rotate90, flip-vertical".parse(),
            Ok(Orientations::Given(vec![
                Orientation::Rotate90,
                Orientation::FlipVertical
            ]))
        );
        assert!("upside-down".parse::<Orientations>().is_err());
        assert!("".parse::<Orientations>().is_err());
    }

    #[test]
    fn the_budget_turns_one_image_in_k_only_past_it() {
        // 179 images, three turns, 256 patches each: 137,472 patches, within 2^19.
        assert_eq!(turned_one_in(179, 3, 256, 1 << 19), 1);
        // 900 images, seven turns, 1,024 patches: 6.45 M, so one image in 13.
        assert_eq!(turned_one_in(900, 7, 1024, 1 << 19), 13);
        let every = turned_one_in(900, 7, 1024, 1 << 19);
        assert!(900usize.div_ceil(every) * 7 * 1024 <= (1 << 19) + 7 * 1024);
        assert_eq!(turned_one_in(0, 7, 1024, 1 << 19), 1);
        assert_eq!(turned_one_in(10, 0, 1024, 1 << 19), 1);
    }

    #[test]
    fn turns_are_taken_up_to_the_limit_only() {
        let trial = |orientation, turned_auroc| OrientationTrial {
            orientation,
            turned_auroc,
        };
        let trials = [
            trial(Orientation::FlipHorizontal, 0.5),
            trial(Orientation::FlipVertical, MAX_TURNED_AUROC),
            trial(Orientation::Rotate90, MAX_TURNED_AUROC + 0.001),
            trial(Orientation::Rotate180, 0.99),
        ];
        assert_eq!(
            chosen_orientations(&trials),
            vec![Orientation::FlipHorizontal, Orientation::FlipVertical]
        );
    }
}
