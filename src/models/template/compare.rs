//! The comparison itself: a part against its golden image, as candidate defects with the
//! measurements the classifier ([`super::classifier`]) judges them by.
//!
//! Both images are cut in two at Otsu's threshold. The pattern (a board's copper, a label's
//! print) is the dark or the bright side, whichever covers less of the product's references
//! over its training ([`PatternSide`]): one product's pattern is the same side on every part,
//! even on a board whose copper covers most of it. A pixel that differs is *extra*
//! pattern or *missing* pattern, and its depth is how far it lies from where the reference
//! changes side: a scan's edges wander by a pixel or two, a defect reaches further in. Pixels
//! at least [`CompareSettings::min_depth_px`] deep are the cores of candidates, and cores
//! closer than [`CompareSettings::join_px`] are joined, so that one defect broken by the
//! pattern stays one candidate. [`Difference`] holds a part aligned and measured, before those
//! two settings: training asks one for its candidates at each setting it tries.

use opencv::core::{self, Mat, Point, Scalar, Size};
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::learn::eval::label_regions;
use crate::part::GrayImage;

/// Which side of Otsu's cut is the product's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternSide {
    Dark,
    Bright,
}

impl PatternSide {
    /// The pixels of `image` on the bright side of its Otsu cut, and all its pixels.
    pub fn bright_pixels(image: &GrayImage) -> Result<(usize, usize), CompareError> {
        let (mask, _) = binarise(image)?;
        Ok((mask.iter().filter(|&&b| b).count(), mask.len()))
    }

    /// The side that covers less of references with `bright` of `all` pixels bright, pooled:
    /// the pattern on a ground.
    pub fn of_counts(bright: usize, all: usize) -> PatternSide {
        if 2 * bright >= all {
            PatternSide::Dark
        } else {
            PatternSide::Bright
        }
    }
}

/// How images are compared: sizes in the images' pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompareSettings {
    /// Which side of the cut is the pattern (chosen by training from the references).
    pub pattern: PatternSide,
    /// How far from the reference's edges a difference must reach to be a candidate's core.
    pub min_depth_px: f32,
    /// Cores closer than this are one candidate.
    pub join_px: u32,
    /// The largest shift, each way, tried to align the part with the reference.
    pub align_px: u32,
    /// Islands of pattern smaller than this are crumbs of the binarisation, not pattern, when
    /// a candidate's neighbourhood is counted.
    pub min_island_px: usize,
}

impl Default for CompareSettings {
    /// A training run's first candidate (see [`crate::models::template::train`]), which it
    /// keeps unless its validation parts find better: worked out on DeepPCB's training boards
    /// (its held-out quarter never looked at), about 48 pixels a millimetre, where a scan's
    /// edges wander by up to 2 pixels and the smallest defects (pin-holes) are 3 to 4 pixels
    /// deep.
    fn default() -> CompareSettings {
        CompareSettings {
            pattern: PatternSide::Dark,
            min_depth_px: 3.0,
            join_px: 7,
            align_px: 2,
            min_island_px: 10,
        }
    }
}

impl CompareSettings {
    /// Why these settings cannot be compared with (a hand-edited card's), if they cannot:
    /// alignment and joining are searched over squares of their size, so they are bounded.
    pub fn problem(&self) -> Option<String> {
        if !(self.min_depth_px.is_finite() && self.min_depth_px > 0.0) {
            return Some(format!(
                "min_depth_px {} is not a positive number",
                self.min_depth_px
            ));
        }
        if self.align_px > MAX_ALIGN_PX {
            return Some(format!("align_px {} is past {MAX_ALIGN_PX}", self.align_px));
        }
        if self.join_px > MAX_JOIN_PX {
            return Some(format!("join_px {} is past {MAX_JOIN_PX}", self.join_px));
        }
        None
    }
}

/// The largest alignment search, each way.
pub const MAX_ALIGN_PX: u32 = 16;
/// The largest joining square.
pub const MAX_JOIN_PX: u32 = 64;

/// The measurements of a candidate the classifier reads, in this order.
pub const FEATURES: [&str; N_FEATURES] = [
    "ln(1 + deepest difference)",
    "ln(1 + thickest difference)",
    "ln(1 + joined area)",
    "ln(1 + differing pixels)",
    "ln(1 + width)",
    "ln(1 + height)",
    "extra share",
    "at the image's edge",
    "pattern islands gained",
    "background islands gained",
    "reaches the reference's edge",
    "extra share × pattern islands gained",
    "extra share × background islands gained",
    "extra share × reaches the edge",
];

/// How many measurements a candidate has.
pub const N_FEATURES: usize = 14;

/// A place where the part differs from its reference deeply enough to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The extent of its joined core, `[x_min, y_min, x_max, y_max]`, maxima exclusive, in
    /// the part's pixels: where the defect is on the part, which sits off its reference by
    /// the alignment's shift.
    pub core: [u32; 4],
    /// [`FEATURES`].
    pub features: [f32; N_FEATURES],
}

/// Why two images could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("the part is {got_width}x{got_height}, its reference {want_width}x{want_height}")]
    Size {
        got_width: u32,
        got_height: u32,
        want_width: u32,
        want_height: u32,
    },
    #[error("the image is empty")]
    Empty,
    #[error("image processing: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// An image cut at Otsu's threshold: `true` where bright, and whether most of it is.
fn binarise(image: &GrayImage) -> Result<(Vec<bool>, bool), CompareError> {
    let mat = Mat::new_rows_cols_with_data(image.height as i32, image.width as i32, &image.pixels)?;
    let mut cut = Mat::default();
    let otsu = imgproc::threshold(
        &mat,
        &mut cut,
        0.0,
        255.0,
        imgproc::THRESH_BINARY | imgproc::THRESH_OTSU,
    )?;
    let bright: Vec<bool> = image.pixels.iter().map(|&p| f64::from(p) > otsu).collect();
    let n_bright = bright.iter().filter(|&&b| b).count();
    Ok((bright, 2 * n_bright >= image.pixels.len()))
}

/// How the picture is continued past its edges before a distance transform.
#[derive(Clone, Copy)]
enum PastTheEdge {
    /// By its edge pixels, so that the edge of the picture is no edge of the pattern.
    Replicated,
    /// By pixels where the mask is false, so that the edge of the picture ends a region.
    False,
}

/// Each pixel's distance to the nearest pixel where `mask` is false (0 there).
fn distance_to_false(
    mask: &[bool],
    w: usize,
    h: usize,
    past_the_edge: PastTheEdge,
) -> Result<Vec<f32>, CompareError> {
    // A replicated edge goes on 24 pixels, so that depths near the picture's edge read as if
    // the pattern went on that far; a false edge needs one pixel.
    let (pad, border) = match past_the_edge {
        PastTheEdge::Replicated => (24, core::BORDER_REPLICATE),
        PastTheEdge::False => (1, core::BORDER_CONSTANT),
    };
    let bytes: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    let mat = Mat::new_rows_cols_with_data(h as i32, w as i32, &bytes)?;
    let mut padded = Mat::default();
    core::copy_make_border(
        &mat,
        &mut padded,
        pad,
        pad,
        pad,
        pad,
        border,
        Scalar::all(0.0),
    )?;
    let mut distance = Mat::default();
    imgproc::distance_transform(
        &padded,
        &mut distance,
        imgproc::DIST_L2,
        imgproc::DIST_MASK_PRECISE,
        core::CV_32F,
    )?;
    let pad = pad as usize;
    let row_len = w + 2 * pad;
    let all = distance.data_typed::<f32>()?;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let start = (y + pad) * row_len + pad;
        out.extend_from_slice(&all[start..start + w]);
    }
    Ok(out)
}

/// `mask` closed by a `size`×`size` square (dilated, then eroded), or'ed with itself.
fn joined(mask: &[bool], w: usize, h: usize, size: u32) -> Result<Vec<bool>, CompareError> {
    if size <= 1 {
        return Ok(mask.to_vec());
    }
    let bytes: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    let mat = Mat::new_rows_cols_with_data(h as i32, w as i32, &bytes)?;
    let kernel = imgproc::get_structuring_element(
        imgproc::MORPH_RECT,
        Size::new(size as i32, size as i32),
        Point::new(-1, -1),
    )?;
    let mut closed = Mat::default();
    imgproc::morphology_ex(
        &mat,
        &mut closed,
        imgproc::MORPH_CLOSE,
        &kernel,
        Point::new(-1, -1),
        1,
        core::BORDER_CONSTANT,
        Scalar::all(0.0),
    )?;
    let closed = closed.data_bytes()?;
    Ok(mask
        .iter()
        .zip(closed)
        .map(|(&m, &c)| m || c != 0)
        .collect())
}

/// The shift `(dx, dy)` of `part` within `align` pixels each way (at most [`reach_limit`])
/// that differs from `reference` in the fewest pixels (counted inside a margin as wide as the
/// reach searched), the smallest shift on a tie.
fn alignment(part: &[bool], reference: &[bool], w: usize, h: usize, align: i64) -> (i64, i64) {
    let mut best = ((0, 0), usize::MAX);
    for (shift, differing, _) in
        differing_by_shift(part, reference, w, h, align, Counted::InsideMargin)
    {
        if differing < best.1 {
            best = (shift, differing);
        }
    }
    best.0
}

/// Which pixels a shift's differences are counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Inside a margin as wide as the reach searched: the same pixels for every shift, so
    /// that counts compare as they are (the comparison's own alignment).
    InsideMargin,
    /// Wherever the shifted part and the reference overlap, which changes with the shift (a
    /// part's offset measured: [`PreparedReference::offset_of`]).
    Overlap,
}

/// Each shift `(dx, dy)` of `part` within `reach` pixels each way (at most
/// [`reach_limit`]), the smallest first, the pixels in which it differs from `reference`
/// and the pixels counted; only `(0, 0)`, uncounted, where the images are too small to shift.
fn differing_by_shift(
    part: &[bool],
    reference: &[bool],
    w: usize,
    h: usize,
    reach: i64,
    counted: Counted,
) -> Vec<((i64, i64), usize, usize)> {
    // A reach wider than the images allow searches as far as they do (a hand-edited card's,
    // or a small product's), rather than not at all.
    let reach = reach.min(reach_limit(w, h) as i64);
    if reach <= 0 {
        return vec![((0, 0), 0, 0)];
    }
    let margin = reach as usize;
    let mut shifts: Vec<(i64, i64)> = (-reach..=reach)
        .flat_map(|dy| (-reach..=reach).map(move |dx| (dx, dy)))
        .collect();
    shifts.sort_by_key(|&(dx, dy)| dx.abs() + dy.abs());
    // The counted columns of the reference's rows and of the part's at each sideways shift,
    // 64 pixels a word: a shift's count is then an XOR and a popcount per word. Compared
    // pixel by pixel, a 640-pixel board's 81 shifts within 4 pixels took 7 of its
    // comparison's 16 ms. Inside a margin the reference's columns are one set for all.
    let columns = |dx: i64| match counted {
        Counted::InsideMargin => (margin, w - 2 * margin),
        Counted::Overlap => ((-dx).max(0) as usize, w - dx.unsigned_abs() as usize),
    };
    let reference_rows: Vec<Vec<u64>> = match counted {
        Counted::InsideMargin => vec![packed_rows(reference, w, h, margin, w - 2 * margin)],
        Counted::Overlap => (-reach..=reach)
            .map(|dx| {
                let (from, width) = columns(dx);
                packed_rows(reference, w, h, from, width)
            })
            .collect(),
    };
    let part_rows: Vec<Vec<u64>> = (-reach..=reach)
        .map(|dx| {
            let (from, width) = columns(dx);
            packed_rows(part, w, h, (from as i64 + dx) as usize, width)
        })
        .collect();
    shifts
        .into_iter()
        .map(|(dx, dy)| {
            let (_, width) = columns(dx);
            let words = width.div_ceil(64);
            let part_rows = &part_rows[(dx + reach) as usize];
            let reference_rows = match counted {
                Counted::InsideMargin => &reference_rows[0],
                Counted::Overlap => &reference_rows[(dx + reach) as usize],
            };
            let rows = match counted {
                Counted::InsideMargin => margin..h - margin,
                Counted::Overlap => (-dy).max(0) as usize..h - dy.max(0) as usize,
            };
            let n_rows = rows.len();
            let differing: usize = rows
                .map(|y| {
                    let py = (y as i64 + dy) as usize;
                    let part_row = &part_rows[py * words..(py + 1) * words];
                    let reference_row = &reference_rows[y * words..(y + 1) * words];
                    (part_row.iter().zip(reference_row))
                        .map(|(p, r)| (p ^ r).count_ones() as usize)
                        .sum::<usize>()
                })
                .sum();
            ((dx, dy), differing, width * n_rows)
        })
        .collect()
}

/// Columns `from..from + width` of every row of `mask` (`w` wide, `h` high), each row packed
/// into `width.div_ceil(64)` words, pixel `from + i` at bit `i % 64` of word `i / 64`, the
/// last word's unused bits clear.
fn packed_rows(mask: &[bool], w: usize, h: usize, from: usize, width: usize) -> Vec<u64> {
    let words = width.div_ceil(64);
    let mut packed = vec![0u64; h * words];
    for (row, out) in mask.chunks_exact(w).zip(packed.chunks_exact_mut(words)) {
        for (chunk, word) in row[from..from + width].chunks(64).zip(out.iter_mut()) {
            *word = (chunk.iter().enumerate())
                .filter(|(_, set)| **set)
                .fold(0, |word, (bit, _)| word | 1 << bit);
        }
    }
    packed
}

/// The 8-connected islands of at least `min_size` pixels of `mask` within a window.
fn islands(mask: &[bool], w: usize, window: [usize; 4], min_size: usize) -> i32 {
    let [x0, y0, x1, y1] = window;
    let (ww, wh) = (x1 - x0, y1 - y0);
    let cut: Vec<bool> = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| mask[y * w + x]))
        .collect();
    let (labels, next) = label_regions(&cut, ww, wh, 1);
    let mut sizes = vec![0usize; next as usize];
    for &l in &labels {
        sizes[l as usize] += 1;
    }
    sizes.iter().skip(1).filter(|&&s| s >= min_size).count() as i32
}

/// A reference made ready to compare parts with: its pattern and each pixel's depth past its
/// edges, which depend on the reference alone, so that a station computes them once and not
/// for every part.
#[derive(Debug, Clone)]
pub struct PreparedReference {
    width: u32,
    height: u32,
    /// The side its pattern was cut on, which the parts are cut on too.
    side: PatternSide,
    /// `true` where the reference shows pattern.
    pattern: Vec<bool>,
    /// Each pixel's distance to the nearest pattern (how deep extra pattern reaches).
    to_pattern: Vec<f32>,
    /// Each pixel's distance to the nearest ground (how deep missing pattern reaches).
    to_background: Vec<f32>,
}

impl PreparedReference {
    /// `reference` cut at Otsu's threshold, its pattern on `side`, and its depth maps.
    pub fn new(
        reference: &GrayImage,
        side: PatternSide,
    ) -> Result<PreparedReference, CompareError> {
        let (w, h) = (reference.width as usize, reference.height as usize);
        if w == 0 || h == 0 || reference.pixels.len() != w * h {
            return Err(CompareError::Empty);
        }
        let dark_pattern = side == PatternSide::Dark;
        let (bright, _) = binarise(reference)?;
        let pattern: Vec<bool> = bright.iter().map(|&b| b != dark_pattern).collect();
        let to_pattern = distance_to_false(
            &pattern.iter().map(|&r| !r).collect::<Vec<_>>(),
            w,
            h,
            PastTheEdge::Replicated,
        )?;
        let to_background = distance_to_false(&pattern, w, h, PastTheEdge::Replicated)?;
        Ok(PreparedReference {
            width: reference.width,
            height: reference.height,
            side,
            pattern,
            to_pattern,
            to_background,
        })
    }
}

impl PreparedReference {
    /// `part` cut at its own Otsu threshold, `true` where it shows pattern on this
    /// reference's side; a part of another size is refused.
    fn pattern_of(&self, part: &GrayImage) -> Result<Vec<bool>, CompareError> {
        if (part.width, part.height) != (self.width, self.height) {
            return Err(CompareError::Size {
                got_width: part.width,
                got_height: part.height,
                want_width: self.width,
                want_height: self.height,
            });
        }
        if part.pixels.len() != self.pattern.len() {
            return Err(CompareError::Empty);
        }
        let dark_pattern = self.side == PatternSide::Dark;
        let (part_bright, _) = binarise(part)?;
        Ok(part_bright.iter().map(|&b| b != dark_pattern).collect())
    }

    /// The widest reach (pixels each way) an alignment can search on images of this
    /// reference's size, at most `max_px`: a search of `a` pixels leaves a margin of `a`
    /// uncounted on each side, and a pixel at least must be counted.
    pub fn reach_limit(&self, max_px: u32) -> u32 {
        max_px.min(reach_limit(self.width as usize, self.height as usize) as u32)
    }

    /// How far `part` sits from where this reference has its pattern: the shift `(dx, dy)`
    /// within `max_px` each way (and [`Self::reach_limit`]) that aligns them. A training run
    /// measures its parts with it to choose how far the comparison searches
    /// ([`CompareSettings::align_px`]).
    ///
    /// Unlike the comparison's own alignment, which counts every shift inside one margin as
    /// wide as its reach, each shift is counted wherever the part and the reference overlap,
    /// as a share of that overlap: a margin of the widest reach would leave out what lies
    /// near the part's edge (the ends of traces that run across it), which the station's
    /// narrower search does count. And the smallest shift whose count is within chance of
    /// the best share is taken: along a direction in which the pattern does not change, every
    /// shift differs in the scan's noise alone, and the fewest differences would fall at a
    /// shift chosen by that noise. Counts within three standard deviations (√count, as for
    /// pixels that differ at random) of what the best share gives on a shift's overlap count
    /// as ties; a misalignment of one pixel changes every edge of the pattern across it, far
    /// more.
    pub fn offset_of(&self, part: &GrayImage, max_px: u32) -> Result<(i64, i64), CompareError> {
        let pattern = self.pattern_of(part)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let reach = i64::from(self.reach_limit(max_px));
        let counts = differing_by_shift(&pattern, &self.pattern, w, h, reach, Counted::Overlap);
        let share = |&(_, differing, overlap): &((i64, i64), usize, usize)| {
            differing as f64 / overlap.max(1) as f64
        };
        let best = counts.iter().map(share).fold(f64::INFINITY, f64::min);
        Ok((counts.iter())
            .find(|&&(_, differing, overlap)| {
                let expected = best * overlap as f64;
                differing as f64 <= expected + 3.0 * expected.sqrt().max(1.0)
            })
            .map_or((0, 0), |&(shift, _, _)| shift))
    }
}

/// The widest alignment search (pixels each way) on `w`×`h` images: one that leaves at least
/// a pixel counted inside its margins.
fn reach_limit(w: usize, h: usize) -> usize {
    w.min(h).saturating_sub(1) / 2
}

/// The candidate defects of `part` against its golden `reference`, in no particular order
/// (the reference prepared on the way: see [`compare_prepared`] to prepare it once; it also
/// checks the sizes).
pub fn compare(
    part: &GrayImage,
    reference: &GrayImage,
    settings: &CompareSettings,
) -> Result<Vec<Candidate>, CompareError> {
    let prepared = PreparedReference::new(reference, settings.pattern)?;
    compare_prepared(part, &prepared, settings)
}

/// The candidate defects of `part` against a prepared golden `reference`, in no particular
/// order; the part is cut on the side the reference was prepared with.
pub fn compare_prepared(
    part: &GrayImage,
    reference: &PreparedReference,
    settings: &CompareSettings,
) -> Result<Vec<Candidate>, CompareError> {
    Difference::of(part, reference, settings.align_px)?.candidates(settings)
}

/// A part aligned with its prepared reference and its differences measured: all the
/// comparison does before the settings that choose which differences count (depth, join,
/// islands). A training run's choice of those settings compares each part once and asks it
/// for candidates at each ([`Difference::candidates`]).
pub struct Difference<'a> {
    w: usize,
    h: usize,
    /// Where the part sits off the reference: its pixel `(x + dx, y + dy)` is the
    /// reference's `(x, y)`.
    shift: (i64, i64),
    /// The reference's pattern.
    reference: &'a [bool],
    /// The part's pattern, moved onto the reference.
    part: Vec<bool>,
    /// Pattern in the part where the reference has none.
    extra: Vec<bool>,
    /// Pattern in the reference or in the part, not both.
    differs: Vec<bool>,
    /// How deep each differing pixel lies on the other side of the reference's edge.
    depth: Vec<f32>,
    /// Each differing pixel's distance to the nearest pixel that does not differ.
    thickness: Vec<f32>,
    /// Where the part and the reference show ground (no pattern): a candidate's neighbourhood
    /// counts their islands too.
    part_ground: Vec<bool>,
    reference_ground: Vec<bool>,
}

impl<'a> Difference<'a> {
    /// `part` aligned with `reference` within `align_px` each way, and its differences.
    pub fn of(
        part: &GrayImage,
        reference: &'a PreparedReference,
        align_px: u32,
    ) -> Result<Difference<'a>, CompareError> {
        let shifted = reference.pattern_of(part)?;
        let (w, h) = (reference.width as usize, reference.height as usize);
        let PreparedReference {
            pattern: reference,
            to_pattern,
            to_background,
            ..
        } = reference;
        let (dx, dy) = alignment(&shifted, reference, w, h, i64::from(align_px));
        // The part moved onto the reference; where the shift leaves no part, the reference
        // shows through (no difference there).
        let part: Vec<bool> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as i64 + dx, (i / w) as i64 + dy);
                if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                    reference[i]
                } else {
                    shifted[y as usize * w + x as usize]
                }
            })
            .collect();

        // How deep each differing pixel lies on the other side of the reference's edge.
        let extra: Vec<bool> = (0..w * h).map(|i| part[i] && !reference[i]).collect();
        let missing: Vec<bool> = (0..w * h).map(|i| !part[i] && reference[i]).collect();
        let differs: Vec<bool> = (0..w * h).map(|i| extra[i] || missing[i]).collect();
        let depth: Vec<f32> = (0..w * h)
            .map(|i| {
                if extra[i] {
                    to_pattern[i]
                } else if missing[i] {
                    to_background[i]
                } else {
                    0.0
                }
            })
            .collect();
        // How far inside the difference itself: a sliver along an edge is 1 thick.
        let thickness = distance_to_false(&differs, w, h, PastTheEdge::False)?;
        Ok(Difference {
            w,
            h,
            shift: (dx, dy),
            reference,
            part_ground: part.iter().map(|&p| !p).collect(),
            reference_ground: reference.iter().map(|&r| !r).collect(),
            part,
            extra,
            differs,
            depth,
            thickness,
        })
    }

    /// The candidate defects at `settings`' depth, join and island size (its alignment was
    /// [`Difference::of`]'s), in no particular order.
    pub fn candidates(&self, settings: &CompareSettings) -> Result<Vec<Candidate>, CompareError> {
        let Difference {
            w,
            h,
            shift: (dx, dy),
            reference,
            ref part,
            ref extra,
            ref differs,
            ref depth,
            ref thickness,
            ref part_ground,
            ref reference_ground,
        } = *self;
        let core: Vec<bool> = depth.iter().map(|&d| d >= settings.min_depth_px).collect();
        let grown = joined(&core, w, h, settings.join_px)?;
        let (labels, next) = label_regions(&grown, w, h, 1);

        #[derive(Clone)]
        struct Tally {
            bbox: [usize; 4],
            area: usize,
            differing: usize,
            extra: usize,
            deepest: f32,
            thickest: f32,
        }
        let mut tallies = vec![
            Tally {
                bbox: [usize::MAX, usize::MAX, 0, 0],
                area: 0,
                differing: 0,
                extra: 0,
                deepest: 0.0,
                thickest: 0.0,
            };
            next as usize
        ];
        for (i, &label) in labels.iter().enumerate() {
            if label == 0 {
                continue;
            }
            let t = &mut tallies[label as usize];
            let (x, y) = (i % w, i / w);
            t.bbox = [
                t.bbox[0].min(x),
                t.bbox[1].min(y),
                t.bbox[2].max(x + 1),
                t.bbox[3].max(y + 1),
            ];
            t.area += 1;
            t.differing += usize::from(differs[i]);
            t.extra += usize::from(extra[i]);
            t.deepest = t.deepest.max(depth[i]);
            t.thickest = t.thickest.max(thickness[i]);
        }

        let mut candidates = Vec::new();
        for (label, t) in tallies.iter().enumerate().skip(1) {
            if t.area == 0 {
                continue;
            }
            let [x0, y0, x1, y1] = t.bbox;
            // The neighbourhood: does the defect join or split the pattern, and does it reach the
            // reference's edge (a spur, a bite) or float free of it (a speck, a hole)?
            let window = [
                x0.saturating_sub(4),
                y0.saturating_sub(4),
                (x1 + 4).min(w),
                (y1 + 4).min(h),
            ];
            let min = settings.min_island_px;
            let pattern_gained = islands(part, w, window, min) - islands(reference, w, window, min);
            let background_gained =
                islands(part_ground, w, window, min) - islands(reference_ground, w, window, min);
            let reaches_edge = reaches_edge(&labels, label as u32, differs, depth, w, window);
            let extra_share = t.extra as f32 / t.differing.max(1) as f32;
            let pattern_gained = pattern_gained.clamp(-2, 2) as f32;
            let background_gained = background_gained.clamp(-2, 2) as f32;
            // On the reference's grid, as every measurement here: whether the defect meets
            // the edge of the product's image, wherever this part happens to sit.
            let at_edge = x0.min(y0).min(w - x1).min(h - y1) < 2;
            let ln = |v: f32| v.ln_1p();
            // Measured on the reference's grid, boxed where the part shows it (a part that
            // sits off its reference shows its defects off by as much).
            let on_part =
                |v: usize, by: i64, size: usize| (v as i64 + by).clamp(0, size as i64) as u32;
            candidates.push(Candidate {
                core: [
                    on_part(x0, dx, w),
                    on_part(y0, dy, h),
                    on_part(x1, dx, w),
                    on_part(y1, dy, h),
                ],
                features: [
                    ln(t.deepest),
                    ln(t.thickest),
                    ln(t.area as f32),
                    ln(t.differing as f32),
                    ln((x1 - x0) as f32),
                    ln((y1 - y0) as f32),
                    extra_share,
                    f32::from(u8::from(at_edge)),
                    pattern_gained,
                    background_gained,
                    f32::from(u8::from(reaches_edge)),
                    extra_share * pattern_gained,
                    extra_share * background_gained,
                    extra_share * f32::from(u8::from(reaches_edge)),
                ],
            });
        }
        Ok(candidates)
    }
}

/// Whether the differences that candidate `label` covers, followed to their whole extent
/// within `window`, come within 1.5 pixels of the reference's edge.
fn reaches_edge(
    labels: &[u32],
    label: u32,
    differs: &[bool],
    depth: &[f32],
    w: usize,
    window: [usize; 4],
) -> bool {
    let [x0, y0, x1, y1] = window;
    let (ww, wh) = (x1 - x0, y1 - y0);
    let at = |x: usize, y: usize| (y0 + y) * w + x0 + x;
    let cut: Vec<bool> = (0..wh)
        .flat_map(|y| (0..ww).map(move |x| (x, y)))
        .map(|(x, y)| differs[at(x, y)])
        .collect();
    let (regions, next) = label_regions(&cut, ww, wh, 1);
    let mut touched = vec![false; next as usize];
    for y in 0..wh {
        for x in 0..ww {
            let r = regions[y * ww + x];
            if r != 0 && labels[at(x, y)] == label {
                touched[r as usize] = true;
            }
        }
    }
    (0..wh).any(|y| {
        (0..ww).any(|x| {
            let r = regions[y * ww + x];
            r != 0 && touched[r as usize] && depth[at(x, y)] <= 1.5
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board: dark traces (the pattern, a minority) on a bright ground.
    fn board() -> Vec<u8> {
        let (w, h) = (96, 96);
        let mut pixels = vec![230u8; w * h];
        for trace in [10..16, 40..48, 70..74] {
            for y in trace.clone() {
                for x in 4..92 {
                    pixels[y * w + x] = 20;
                }
            }
        }
        pixels
    }

    /// The board with a 6×6 speck of pattern on the ground, far from any trace (at x 60–66,
    /// y 26–32), and its middle trace cut through (x 30–36).
    fn board_with_a_speck_and_a_cut() -> Vec<u8> {
        let mut part = board();
        for y in 26..32 {
            for x in 60..66 {
                part[y * 96 + x] = 20;
            }
        }
        for y in 40..48 {
            for x in 30..36 {
                part[y * 96 + x] = 230;
            }
        }
        part
    }

    fn image(pixels: Vec<u8>) -> GrayImage {
        GrayImage::new(96, 96, pixels).expect("96x96")
    }

    #[test]
    fn an_identical_part_has_no_candidate_and_a_scan_shifted_by_a_pixel_neither() {
        let reference = image(board());
        let settings = CompareSettings::default();
        assert!(
            compare(&reference, &reference, &settings)
                .expect("compares")
                .is_empty()
        );
        // The whole part one pixel lower: aligned back, nothing differs deeply.
        let mut shifted = vec![230u8; 96 * 96];
        shifted[96..].copy_from_slice(&board()[..96 * 95]);
        assert!(
            compare(&image(shifted), &reference, &settings)
                .expect("compares")
                .is_empty()
        );
    }

    #[test]
    fn shifts_are_counted_as_pixel_by_pixel_whatever_the_width() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        // Counted widths of 5, 58, 62, 64, 65, 98 and 198 pixels: within a word, on its
        // boundary and past it.
        for (w, h, align) in [
            (9, 7, 2),
            (64, 20, 3),
            (70, 33, 4),
            (70, 20, 3),
            (71, 20, 3),
            (130, 40, 16),
            (200, 45, 1),
        ] {
            let mut mask = || -> Vec<bool> { (0..w * h).map(|_| rng.gen_bool(0.3)).collect() };
            let (part, reference) = (mask(), mask());
            let counts = differing_by_shift(&part, &reference, w, h, align, Counted::InsideMargin);
            assert_eq!(counts.len(), ((2 * align + 1) * (2 * align + 1)) as usize);
            let a = align as usize;
            for ((dx, dy), differing, _) in counts {
                let mut expected = 0;
                for y in a..h - a {
                    for x in a..w - a {
                        let (px, py) = ((x as i64 + dx) as usize, (y as i64 + dy) as usize);
                        expected += usize::from(part[py * w + px] != reference[y * w + x]);
                    }
                }
                assert_eq!(differing, expected, "{w}x{h} shifted {dx},{dy}");
            }
        }
        // Counted over each shift's overlap instead, as a part is measured.
        let (w, h) = (70, 21);
        let mut mask = || -> Vec<bool> { (0..w * h).map(|_| rng.gen_bool(0.3)).collect() };
        let (part, reference) = (mask(), mask());
        for ((dx, dy), differing, overlap) in
            differing_by_shift(&part, &reference, w, h, 7, Counted::Overlap)
        {
            let (mut expected, mut pixels) = (0, 0);
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (px, py) = (x + dx, y + dy);
                    if (0..w as i64).contains(&px) && (0..h as i64).contains(&py) {
                        pixels += 1;
                        expected += usize::from(
                            part[py as usize * w + px as usize]
                                != reference[y as usize * w + x as usize],
                        );
                    }
                }
            }
            assert_eq!(
                (differing, overlap),
                (expected, pixels),
                "shifted {dx},{dy}"
            );
        }
        // Asked further than the images allow, as far as they do: a 3×3 pair one pixel.
        let counts = differing_by_shift(&[true; 9], &[false; 9], 3, 3, 2, Counted::InsideMargin);
        assert_eq!(counts.len(), 9);
        assert!(counts.iter().all(|&(_, n, _)| n == 1), "{counts:?}");
        // Too small to shift: only the place it is.
        assert_eq!(
            differing_by_shift(&[true; 4], &[false; 4], 2, 2, 2, Counted::InsideMargin),
            vec![((0, 0), 0, 0)]
        );
    }

    #[test]
    fn a_part_sitting_off_its_place_is_measured_and_aligned_within_the_reach_asked() {
        // The board with a post between two traces: the traces' ends lie in the margin the
        // alignment leaves uncounted, so they alone would not show a sideways shift.
        let mut posted = board();
        for y in 20..36 {
            for x in 50..56 {
                posted[y * 96 + x] = 20;
            }
        }
        let reference = image(posted.clone());
        // The whole part 5 pixels right and 3 down, the ground showing where it left.
        let mut moved = vec![230u8; 96 * 96];
        for y in 3..96 {
            for x in 5..96 {
                moved[y * 96 + x] = posted[(y - 3) * 96 + x - 5];
            }
        }
        let moved = image(moved);
        let prepared = PreparedReference::new(&reference, PatternSide::Dark).expect("prepares");
        assert_eq!(prepared.offset_of(&moved, 8).expect("measures"), (5, 3));
        assert_eq!(prepared.offset_of(&moved, 16).expect("measures"), (5, 3));
        // A search that cannot reach it says so: the part sits on its edge.
        let (dx, dy) = prepared.offset_of(&moved, 2).expect("measures");
        assert_eq!(dx.abs().max(dy.abs()), 2, "{dx},{dy}");
        // Only sideways, with the traces' ends the one thing that shows it: counted inside a
        // margin of 16 pixels, as the comparison counts, they would be left out.
        let bare_board = board();
        let mut sideways = vec![230u8; 96 * 96];
        for y in 0..96 {
            for x in 6..96 {
                sideways[y * 96 + x] = bare_board[y * 96 + x - 6];
            }
        }
        let bare = PreparedReference::new(&image(board()), PatternSide::Dark).expect("prepares");
        assert_eq!(
            bare.offset_of(&image(sideways), 16).expect("measures"),
            (6, 0)
        );
        assert_eq!(bare.reach_limit(16), 16);
        let tiny = PreparedReference::new(
            &GrayImage::new(9, 9, vec![230; 81]).expect("9x9"),
            PatternSide::Dark,
        )
        .expect("prepares");
        assert_eq!(tiny.reach_limit(16), 4);
        // Searched far enough, nothing differs; searched 2 pixels, the traces' ends do.
        let reach = |align_px| CompareSettings {
            align_px,
            ..CompareSettings::default()
        };
        assert!(
            (compare(&moved, &reference, &reach(6)).expect("compares")).is_empty(),
            "aligned within 6 pixels"
        );
        assert!(!(compare(&moved, &reference, &reach(2)).expect("compares")).is_empty());
        // A speck on the moved part is boxed where the part shows it, not where the
        // reference has that place.
        let mut specked = moved.clone();
        for y in 58..64 {
            for x in 70..76 {
                specked.pixels[y * 96 + x] = 20;
            }
        }
        let found = compare(&specked, &reference, &reach(6)).expect("compares");
        assert_eq!(found.len(), 1, "{found:?}");
        let [x0, y0, x1, y1] = found[0].core;
        assert!(
            x0 >= 70 && y0 >= 58 && x1 <= 76 && y1 <= 64,
            "{:?}",
            found[0].core
        );
        // A part of another size is refused, not measured.
        let small = GrayImage::new(48, 48, vec![230; 48 * 48]).expect("48x48");
        assert!(matches!(
            prepared.offset_of(&small, 8),
            Err(CompareError::Size { .. })
        ));
    }

    #[test]
    fn a_speck_and_a_break_are_candidates_of_their_kind() {
        let reference = image(board());
        let part = board_with_a_speck_and_a_cut();
        let mut found =
            compare(&image(part), &reference, &CompareSettings::default()).expect("compares");
        found.sort_by_key(|c| c.core[0]);
        assert_eq!(found.len(), 2, "{found:?}");
        let (cut, speck) = (&found[0], &found[1]);
        assert!(cut.core[0] >= 28 && cut.core[2] <= 38, "{:?}", cut.core);
        assert!(
            speck.core[0] >= 58 && speck.core[2] <= 68,
            "{:?}",
            speck.core
        );
        // The speck is extra pattern, reaching no edge, adding an island of pattern.
        assert_eq!(speck.features[6], 1.0);
        assert_eq!(speck.features[10], 0.0);
        assert_eq!(speck.features[8], 1.0);
        // The cut is missing pattern, and splits its trace in two.
        assert_eq!(cut.features[6], 0.0);
        assert_eq!(cut.features[8], 1.0);
        assert_eq!(cut.features[10], 1.0);
    }

    /// One part aligned and measured once, asked at several depths and joins: the depth
    /// decides which differences are cores (the cut, at most 4 px deep, goes at 6), and the
    /// join where the speck and the cut stay two candidates.
    #[test]
    fn the_depth_and_join_asked_for_decide_the_candidates() {
        let reference = image(board());
        let part = image(board_with_a_speck_and_a_cut());
        let prepared = PreparedReference::new(&reference, PatternSide::Dark).expect("prepares");
        let difference = Difference::of(&part, &prepared, 2).expect("aligns");
        let cores = |min_depth_px, join_px| {
            let settings = CompareSettings {
                min_depth_px,
                join_px,
                ..CompareSettings::default()
            };
            let mut found = difference.candidates(&settings).expect("candidates");
            found.sort_by_key(|c| c.core[0]);
            found.iter().map(|c| c.core).collect::<Vec<_>>()
        };
        let both = cores(3.0, 7);
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[0][0] >= 28 && both[0][2] <= 38, "the cut: {both:?}");
        assert!(both[1][0] >= 58 && both[1][2] <= 68, "the speck: {both:?}");
        let speck_only = cores(6.0, 7);
        assert_eq!(speck_only, [both[1]], "depth 6 keeps the speck alone");
        assert_eq!(cores(2.0, 3).len(), 2);
        assert_eq!(cores(3.0, 11).len(), 2);
    }

    #[test]
    fn uniform_and_tiny_images_have_no_candidate() {
        let settings = CompareSettings::default();
        for (w, h) in [(1, 1), (3, 3), (5, 2), (40, 40)] {
            let n = (w * h) as usize;
            for value in [0u8, 128, 255] {
                let flat = GrayImage::new(w, h, vec![value; n]).expect("image");
                let found = compare(&flat, &flat, &settings).expect("compares");
                assert!(found.is_empty(), "{w}x{h} of {value}: {found:?}");
            }
        }
        let empty = GrayImage::new(0, 0, Vec::new()).expect("0x0");
        assert!(compare(&empty, &empty, &settings).is_err());
    }

    #[test]
    fn images_of_different_sizes_are_refused() {
        let reference = image(board());
        let part = GrayImage::new(48, 96, vec![0; 48 * 96]).expect("48x96");
        let error = compare(&part, &reference, &CompareSettings::default()).unwrap_err();
        assert!(error.to_string().contains("48x96"), "{error}");
    }
}
