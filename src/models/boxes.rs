//! Defects as boxes: the hot blobs of a model's heat map, outlined on the image.
//!
//! Every model marks a defect as a blob of heat-map cells past a cut, and each 8-connected blob
//! becomes one box around it, in the image's own pixels, scored by its hottest cell: what a
//! failed part's record keeps and the live page draws, and the detections that box metrics read
//! ([`crate::learn::eval::BoxTruth`]). Boxes outline every defect class the model knows,
//! tolerated ones too: tolerating a class changes the verdict, not what the model sees.
//!
//! Two ways to draw them:
//! * [`cell_boxes`], the station's default ([`crate::models::Detector::defect_boxes`]): whole
//!   cells at or past the threshold, each a cell that would reject the part as the image's
//!   score. The peak's box is the region a record's `defect_size` measures.
//! * [`boxes_from_heat_map`], the supervised family's: a defect probability its training chose
//!   where images were labelled with boxes (by default one half, [`BOX_CUT`]: the patch is
//!   likelier defect than good), and a scale. Its grid is coarse (one cell per 8 input pixels:
//!   20 pixels of a 640-pixel board at input 256), so the map is first upsampled bilinearly
//!   [`UPSAMPLE`] times. A blob's edge then falls where the probability crosses the cut between
//!   cell centres, not on a cell border, which matters for a 35-pixel defect judged by its
//!   overlap with the true box. The factor is odd so that one upsampled point lies on each
//!   cell's centre and carries its value: a lone cell past the cut is a blob (with an even
//!   factor no point does, and a lone cell at 0.6 would vanish under a cut of 0.5).

use serde::{Deserialize, Serialize};

use crate::learn::eval::label_regions;
use crate::models::backbone::features::bilinear;
use crate::part::HeatMap;

/// A supervised model's patch is part of a defect's blob from this defect probability on,
/// unless training chose another cut ([`BoxShape`]).
pub const BOX_CUT: f32 = 0.5;

/// How a supervised model's boxes are drawn from its heat map ([`boxes_from_heat_map`]). Its
/// training chooses it on the validation images where they are labelled with boxes; supervised
/// models trained without boxes keep the default (cut [`BOX_CUT`], scale 1). The other
/// families draw [`cell_boxes`] at the station's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxShape {
    /// A cell is part of a defect's blob from this value on (the model's score scale).
    pub cut: f32,
    /// Each blob's box is scaled about its centre by this factor: the patch grid and the
    /// labels' coverage rule make blobs larger or smaller than the boxes a product's labellers
    /// draw around its defects.
    pub scale: f32,
}

impl BoxShape {
    pub fn is_default(&self) -> bool {
        *self == BoxShape::default()
    }
}

impl Default for BoxShape {
    fn default() -> BoxShape {
        BoxShape {
            cut: BOX_CUT,
            scale: 1.0,
        }
    }
}

/// The heat map is upsampled this many times per side before blobs are outlined (odd: see the
/// module doc).
pub const UPSAMPLE: usize = 3;

/// One defect the model outlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefectBox {
    /// `[x_min, y_min, x_max, y_max]` in the image's pixels, the maxima exclusive.
    pub bbox: [u32; 4],
    /// The highest heat-map value among the cells the blob covers, on the model's score scale
    /// (a defect probability for the trained families).
    pub score: f32,
    /// The defect class of the blob, for families that know classes ([`classed_boxes`]): each
    /// of the blob's points votes, with its heat, for its cell's likeliest defect class, and
    /// the class with the most heat names the box. A part with a scratch and a spot has a box
    /// of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// The boxes of the blobs of `heat_map` (one value per cell, on the model's scale) at or above
/// `shape.cut`, scaled by `shape.scale`, on a `width`×`height` image, hottest first; the map
/// upsampled [`UPSAMPLE`] times first, so that edges fall between cell centres.
pub fn boxes_from_heat_map(
    heat_map: &HeatMap,
    width: u32,
    height: u32,
    shape: BoxShape,
) -> Vec<DefectBox> {
    blob_boxes(heat_map, width, height, shape, UPSAMPLE, None)
}

/// [`boxes_from_heat_map`], each box with its defect class: `patch_class` holds each cell's
/// likeliest defect class (an index into `class_names`), and a blob takes the class its
/// points' heat sums highest for.
pub fn classed_boxes(
    heat_map: &HeatMap,
    patch_class: &[u8],
    class_names: &[String],
    width: u32,
    height: u32,
    shape: BoxShape,
) -> Vec<DefectBox> {
    let classes =
        (patch_class.len() == heat_map.values.len()).then_some((patch_class, class_names));
    blob_boxes(heat_map, width, height, shape, UPSAMPLE, classes)
}

/// The boxes of the 8-connected blobs of whole cells of `heat_map` at or above `cut`, each
/// the cells' extent on a `width`×`height` image, hottest first: the threshold's own regions,
/// with no upsampling. A diagonal run of hot cells (a thin scratch at an angle) stays one blob,
/// where upsampling would blend the cold cells beside it into the gaps and break it up unless
/// the cut is low against the blob's values; and the peak's blob is exactly the region a
/// record's `defect_size` measures.
pub fn cell_boxes(heat_map: &HeatMap, width: u32, height: u32, cut: f32) -> Vec<DefectBox> {
    let shape = BoxShape { cut, scale: 1.0 };
    blob_boxes(heat_map, width, height, shape, 1, None)
}

/// The boxes of the blobs of `heat_map`, upsampled `upsample` times, each named by the class
/// its points vote for when `classes` (each cell's class index, the names) is given.
fn blob_boxes(
    heat_map: &HeatMap,
    width: u32,
    height: u32,
    shape: BoxShape,
    upsample: usize,
    classes: Option<(&[u8], &[String])>,
) -> Vec<DefectBox> {
    let cut = shape.cut;
    let (w, h) = (heat_map.width as usize, heat_map.height as usize);
    if w == 0 || h == 0 || heat_map.values.len() != w * h || width == 0 || height == 0 {
        return Vec::new();
    }
    // A value that is not a number is a defect, never calm (as on the threshold's scale).
    let value = |v: f32| if v.is_nan() { f32::INFINITY } else { v };
    // No cell past the cut, no blob (upsampled values lie between their cells'): skip the
    // upsampling (most good parts).
    if !heat_map.values.iter().any(|v| value(*v) >= cut) {
        return Vec::new();
    }
    let (fw, fh) = (w * upsample, h * upsample);
    let fine = if upsample == 1 {
        heat_map.values.clone()
    } else {
        bilinear(|x, y| heat_map.values[y * w + x], w, h, fw, fh)
    };
    let hot: Vec<bool> = fine.iter().map(|v| value(*v) >= cut).collect();
    let (labels, next) = label_regions(&hot, fw, fh, 1);
    let n = (next - 1) as usize;
    // Per blob: its extent on the fine grid, its highest value and the first cell (in raster
    // order) that holds it, which breaks ties between blobs as the record's `defect_at` and
    // `defect_size` do: the hottest box is their region.
    let mut extent = vec![[usize::MAX, usize::MAX, 0, 0]; n];
    let mut peak = vec![f32::MIN; n];
    let mut peak_cell = vec![usize::MAX; n];
    // Per blob and class: the heat of the blob's points whose cell likes that class best.
    let n_classes = classes.map_or(0, |(_, names)| names.len());
    let mut votes = vec![0f32; n * n_classes];
    for (i, &label) in labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        let b = (label - 1) as usize;
        let (x, y) = (i % fw, i / fw);
        let e = &mut extent[b];
        e[0] = e[0].min(x);
        e[1] = e[1].min(y);
        e[2] = e[2].max(x + 1);
        e[3] = e[3].max(y + 1);
        // The cell the point lies in: the score is the model's own value, not a blend.
        let cell = (y / upsample) * w + x / upsample;
        let v = value(heat_map.values[cell]);
        if v > peak[b] || (v == peak[b] && cell < peak_cell[b]) {
            (peak[b], peak_cell[b]) = (v, cell);
        }
        // Class 0 is good: never a defect's name.
        if let Some((patch_class, _)) = classes {
            let class = usize::from(patch_class[cell]);
            if class > 0 && class < n_classes {
                votes[b * n_classes + class] += value(fine[i]).min(f32::MAX);
            }
        }
    }
    let class_of = |b: usize| -> Option<String> {
        let (_, names) = classes?;
        let blob = &votes[b * n_classes..(b + 1) * n_classes];
        let (best, heat) = blob.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
        (*heat > 0.0).then(|| names[best].clone())
    };
    // Fine cell edges to image pixels: floor the minima, ceil the maxima.
    let to_image = |cell: usize, cells: usize, pixels: u32| -> (u32, u32) {
        let lo = (cell as u64 * u64::from(pixels)) / cells as u64;
        let hi = ((cell as u64 + 1) * u64::from(pixels)).div_ceil(cells as u64);
        (lo as u32, hi as u32)
    };
    let mut boxes: Vec<(DefectBox, usize)> = extent
        .iter()
        .zip(&peak)
        .enumerate()
        .map(|(b, (&[x0, y0, x1, y1], &score))| {
            let found = DefectBox {
                bbox: scaled(
                    [
                        to_image(x0, fw, width).0,
                        to_image(y0, fh, height).0,
                        to_image(x1 - 1, fw, width).1,
                        to_image(y1 - 1, fh, height).1,
                    ],
                    shape.scale,
                    width,
                    height,
                ),
                // Finite, so that the record can be read back (JSON has no infinity).
                score: score.min(f32::MAX),
                class: class_of(b),
            };
            (found, peak_cell[b])
        })
        .collect();
    boxes
        .sort_by(|(a, a_cell), (b, b_cell)| (b.score.total_cmp(&a.score)).then(a_cell.cmp(b_cell)));
    boxes.into_iter().map(|(found, _)| found).collect()
}

/// `bbox` scaled by `scale` about its centre, kept on the `width`×`height` image and at least
/// a pixel across.
fn scaled(bbox: [u32; 4], scale: f32, width: u32, height: u32) -> [u32; 4] {
    if scale == 1.0 {
        return bbox;
    }
    let axis = |lo: u32, hi: u32, pixels: u32| -> (u32, u32) {
        let centre = (lo as f32 + hi as f32) / 2.0;
        let half = ((hi - lo) as f32 * scale / 2.0).max(0.5);
        let lo = (centre - half).round().clamp(0.0, pixels as f32 - 1.0) as u32;
        let hi = (centre + half)
            .round()
            .clamp(lo as f32 + 1.0, pixels as f32) as u32;
        (lo, hi)
    };
    let (x0, x1) = axis(bbox[0], bbox[2], width);
    let (y0, y1) = axis(bbox[1], bbox[3], height);
    [x0, y0, x1, y1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::eval::box_iou;

    fn map(w: usize, h: usize, hot: &[(usize, usize, f32)]) -> HeatMap {
        let mut values = vec![0.05; w * h];
        for &(x, y, v) in hot {
            values[y * w + x] = v;
        }
        HeatMap {
            width: w as u32,
            height: h as u32,
            values,
        }
    }

    #[test]
    fn each_blob_becomes_one_box_on_the_image_hottest_first() {
        // Two blobs on a 32×32 grid of a 640×640 image (20 pixels a cell): a 2×2 block at
        // cells 4..6 and a single cell at (20, 25).
        let heat = map(
            32,
            32,
            &[
                (4, 4, 0.9),
                (5, 4, 0.9),
                (4, 5, 0.9),
                (5, 5, 0.9),
                (20, 25, 0.99),
            ],
        );
        let boxes = boxes_from_heat_map(&heat, 640, 640, BoxShape::default());
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        assert!((boxes[0].score - 0.99).abs() < 1e-6);
        // The single cell, centred at pixel (410, 510): its box lies within the cell's
        // neighbourhood and around its centre.
        let [x0, y0, x1, y1] = boxes[0].bbox;
        assert!(
            x0 < 410 && 410 < x1 && y0 < 510 && 510 < y1,
            "{:?}",
            boxes[0]
        );
        assert!(x1 - x0 <= 40 && y1 - y0 <= 40, "{:?}", boxes[0]);
        // The block spans cells 4 and 5 (pixels 80..120): its box overlaps that square well.
        assert!(
            box_iou(&boxes[1].bbox, &[80, 80, 120, 120]) > 0.5,
            "{:?}",
            boxes[1]
        );
    }

    #[test]
    fn a_lone_patch_past_the_cut_is_a_box_of_about_its_size() {
        // One patch at 0.6 on a 32×32 map of a 100-pixel image (3.125 pixels a patch), at
        // cell (10, 20): pixels 31.25..34.375 across, 62.5..65.625 down.
        let heat = map(32, 32, &[(10, 20, 0.6)]);
        let boxes = boxes_from_heat_map(&heat, 100, 100, BoxShape::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        assert!((boxes[0].score - 0.6).abs() < 1e-6);
        // Only the centre third of the patch is past 0.5 after upsampling: pixels 32.3..33.3
        // across and 63.5..64.6 down, widened to whole pixels.
        assert_eq!(boxes[0].bbox, [32, 63, 34, 65]);
        // Not past a cut of 0.7.
        let strict = BoxShape {
            cut: 0.7,
            ..BoxShape::default()
        };
        assert!(boxes_from_heat_map(&heat, 100, 100, strict).is_empty());
    }

    #[test]
    fn a_calm_map_and_a_malformed_one_have_no_boxes() {
        assert!(boxes_from_heat_map(&map(32, 32, &[]), 640, 640, BoxShape::default()).is_empty());
        let broken = HeatMap {
            width: 32,
            height: 32,
            values: vec![0.9; 10],
        };
        assert!(boxes_from_heat_map(&broken, 640, 640, BoxShape::default()).is_empty());
        assert!(
            boxes_from_heat_map(&map(32, 32, &[(1, 1, 0.9)]), 0, 640, BoxShape::default())
                .is_empty()
        );
    }

    #[test]
    fn whole_cell_boxes_keep_a_diagonal_scratch_whole_and_match_the_records_defect_size() {
        // A scratch of hot cells on a diagonal of a 16×16 map over a 64×64 image (4 pixels a
        // cell), against a threshold of 0.9 near its values: one blob of whole cells.
        let mut heat = map(16, 16, &[]);
        for i in 3..9 {
            heat.values[i * 16 + i] = 0.95;
        }
        heat.values[12 * 16 + 2] = 0.91; // a lone cell apart, cooler
        let boxes = cell_boxes(&heat, 64, 64, 0.9);
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        assert_eq!(boxes[0].bbox, [12, 12, 36, 36]);
        assert!((boxes[0].score - 0.95).abs() < 1e-6);
        assert_eq!(boxes[1].bbox, [8, 48, 12, 52]);
        // Upsampled, the blends between the diagonal's cells fall below the cut and the
        // scratch breaks up into its cells.
        let upsampled = boxes_from_heat_map(
            &heat,
            64,
            64,
            BoxShape {
                cut: 0.9,
                scale: 1.0,
            },
        );
        assert_eq!(upsampled.len(), 7, "{upsampled:?}");
        // The peak's box is the region the record's size measures (on the threshold's scale,
        // where 0.9 is 0.5).
        let size =
            crate::record::DefectSize::of(&heat.clone().on_threshold_scale(0.9), (64, 64), None)
                .expect("a region");
        let [x0, y0, x1, y1] = boxes[0].bbox;
        assert_eq!(
            ((x1 - x0) as f32, (y1 - y0) as f32),
            (size.width_px, size.height_px)
        );
        assert!(cell_boxes(&heat, 64, 64, 0.99).is_empty());
    }

    #[test]
    fn blobs_as_hot_as_each_other_come_in_the_records_order_and_a_broken_cell_is_a_defect() {
        // Two blobs at the same peak: the one whose hottest cell comes first in raster order
        // is the hottest box, as `DefectPlace`/`DefectSize` take the first hottest cell, even
        // where the other blob starts earlier.
        let heat = map(16, 16, &[(10, 2, 0.8), (10, 3, 1.0), (2, 3, 1.0)]);
        let boxes = cell_boxes(&heat, 16, 16, 0.5);
        assert_eq!(boxes[0].bbox, [2, 3, 3, 4], "{boxes:?}");
        assert_eq!(boxes[1].bbox, [10, 2, 11, 4], "{boxes:?}");
        let at = crate::record::DefectPlace::peak_of(&heat).expect("a peak");
        assert_eq!((at.x * 16.0, at.y * 16.0), (2.5, 3.5));
        let mut later = map(16, 16, &[(2, 9, 1.0), (12, 12, 1.0)]);
        assert_eq!(cell_boxes(&later, 16, 16, 0.5)[0].bbox, [2, 9, 3, 10]);
        // A value that is not a number (or infinite) is outlined, with a finite score that
        // a record can be written and read back with.
        later.values[5 * 16 + 5] = f32::NAN;
        later.values[14 * 16 + 1] = f32::INFINITY;
        let boxes = cell_boxes(&later, 16, 16, 0.5);
        assert_eq!(boxes.len(), 4, "{boxes:?}");
        assert!(boxes.iter().all(|b| b.score.is_finite()), "{boxes:?}");
        let json = serde_json::to_string(&boxes).expect("json");
        let back: Vec<DefectBox> = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, boxes);
    }

    #[test]
    fn each_box_is_named_by_the_class_its_cells_hold_most_heat_for() {
        // Two blobs on a 16×16 map: a 2×2 block whose cells like class 1 (one of them class
        // 2, cooler), and a lone cell of class 2.
        let heat = map(
            16,
            16,
            &[
                (2, 2, 0.9),
                (3, 2, 0.9),
                (2, 3, 0.9),
                (3, 3, 0.6),
                (12, 12, 0.95),
            ],
        );
        let mut patch_class = vec![1u8; 256];
        patch_class[3 * 16 + 3] = 2;
        patch_class[12 * 16 + 12] = 2;
        let names: Vec<String> = ["good", "scratch", "spot"].map(String::from).into();
        let boxes = classed_boxes(&heat, &patch_class, &names, 64, 64, BoxShape::default());
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        assert_eq!(boxes[0].class.as_deref(), Some("spot"));
        assert_eq!(boxes[1].class.as_deref(), Some("scratch"));
        // Without classes, or with a class map of another size, boxes are unnamed.
        let plain = boxes_from_heat_map(&heat, 64, 64, BoxShape::default());
        assert!(plain.iter().all(|b| b.class.is_none()));
        assert_eq!(
            plain.iter().map(|b| b.bbox).collect::<Vec<_>>(),
            boxes.iter().map(|b| b.bbox).collect::<Vec<_>>()
        );
        let short = classed_boxes(
            &heat,
            &patch_class[..10],
            &names,
            64,
            64,
            BoxShape::default(),
        );
        assert!(short.iter().all(|b| b.class.is_none()));
        // A class index past the names is not voted for.
        let unknown = classed_boxes(&heat, &vec![7u8; 256], &names, 64, 64, BoxShape::default());
        assert!(unknown.iter().all(|b| b.class.is_none()));
    }

    #[test]
    fn a_hot_map_is_one_box_over_the_whole_image() {
        let heat = HeatMap {
            width: 8,
            height: 8,
            values: vec![0.8; 64],
        };
        let boxes = boxes_from_heat_map(&heat, 100, 60, BoxShape::default());
        assert_eq!(boxes.len(), 1);
        assert_eq!(boxes[0].bbox, [0, 0, 100, 60]);
        // Scaled about its centre, and never past the image.
        let half = BoxShape {
            scale: 0.5,
            ..BoxShape::default()
        };
        assert_eq!(
            boxes_from_heat_map(&heat, 100, 60, half)[0].bbox,
            [25, 15, 75, 45]
        );
        let double = BoxShape {
            scale: 2.0,
            ..BoxShape::default()
        };
        assert_eq!(
            boxes_from_heat_map(&heat, 100, 60, double)[0].bbox,
            [0, 0, 100, 60]
        );
        // A higher cut keeps only the hotter blobs.
        let strict = BoxShape {
            cut: 0.9,
            ..BoxShape::default()
        };
        assert!(boxes_from_heat_map(&heat, 100, 60, strict).is_empty());
    }
}
