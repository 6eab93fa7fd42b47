//! Where on a part's image a label puts its defects: boxes, polygons and pixel masks.
//!
//! Coordinates are the recorded (calibrated) image's pixels, origin top-left, x right, y down.
//! Masks are COCO's *uncompressed* run-length encoding: pixels in column-major order (x outer,
//! y inner), runs alternating from a run of zeros. Keeping COCO's own convention means a label
//! leaves for Label Studio, CVAT or a training tool without a conversion that could go wrong,
//! and a browser encodes it from a canvas in one pass.

use serde::{Deserialize, Serialize};

/// The most regions one label may carry: more is a runaway client, not a part.
pub const MAX_REGIONS: usize = 1_000;
/// The most vertices of one polygon.
pub const MAX_POLYGON_POINTS: usize = 10_000;

/// One defect region of a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// The defect class this region shows.
    pub class: String,
    pub shape: Shape,
}

/// A region's outline, in image pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// An axis-aligned rectangle from its top-left corner.
    Box {
        x: f32,
        y: f32,
        width: f32,
        height: f32,
    },
    /// A closed polygon; the last point joins the first.
    Polygon { points: Vec<[f32; 2]> },
    /// A pixel mask of the whole image: COCO uncompressed RLE.
    Mask { size: [u32; 2], counts: Vec<u32> },
}

/// Why a region does not fit the image it is drawn on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    #[error("a label has at most {MAX_REGIONS} regions, this one {0}")]
    TooMany(usize),
    #[error("region {index}: {why}")]
    Invalid { index: usize, why: String },
}

impl Shape {
    /// Checks the shape against an image of `width` × `height` pixels.
    fn check(&self, width: u32, height: u32) -> Result<(), String> {
        let (w, h) = (width as f32, height as f32);
        let inside = |x: f32, y: f32| {
            x.is_finite() && y.is_finite() && (0.0..=w).contains(&x) && (0.0..=h).contains(&y)
        };
        match self {
            Shape::Box {
                x,
                y,
                width: bw,
                height: bh,
            } => {
                if !(bw.is_finite() && bh.is_finite() && *bw > 0.0 && *bh > 0.0) {
                    return Err("a box needs a positive width and height".into());
                }
                if !inside(*x, *y) || !inside(x + bw, y + bh) {
                    return Err(format!("the box leaves the {width}×{height} image"));
                }
            }
            Shape::Polygon { points } => {
                if !(3..=MAX_POLYGON_POINTS).contains(&points.len()) {
                    return Err(format!(
                        "a polygon has 3 to {MAX_POLYGON_POINTS} points, this one {}",
                        points.len()
                    ));
                }
                if let Some([x, y]) = points.iter().find(|[x, y]| !inside(*x, *y)) {
                    return Err(format!(
                        "point ({x}, {y}) lies outside the {width}×{height} image"
                    ));
                }
            }
            Shape::Mask { size, counts } => {
                if *size != [height, width] {
                    return Err(format!(
                        "a mask's size is [height, width] of its image, [{height}, {width}], not {size:?}"
                    ));
                }
                let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
                if total != u64::from(width) * u64::from(height) {
                    return Err(format!(
                        "a mask's counts add up to its {} pixels, not {total}",
                        u64::from(width) * u64::from(height)
                    ));
                }
                if self.area() == 0.0 {
                    return Err("a mask marks at least one pixel".into());
                }
            }
        }
        Ok(())
    }

    /// The smallest box around the shape, `[x, y, width, height]`; `None` for an empty mask.
    pub fn bounding_box(&self) -> Option<[f32; 4]> {
        match self {
            Shape::Box {
                x,
                y,
                width,
                height,
            } => Some([*x, *y, *width, *height]),
            Shape::Polygon { points } => {
                let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
                for [x, y] in points {
                    (x0, y0, x1, y1) = (x0.min(*x), y0.min(*y), x1.max(*x), y1.max(*y));
                }
                Some([x0, y0, x1 - x0, y1 - y0])
            }
            Shape::Mask { size, counts } => {
                let height = u64::from(size[0]).max(1);
                let (mut x0, mut y0, mut x1, mut y1) = (u64::MAX, u64::MAX, 0, 0);
                let mut at = 0u64;
                for (i, &run) in counts.iter().enumerate() {
                    let run = u64::from(run);
                    if i % 2 == 1 && run > 0 {
                        let (first, last) = (at, at + run - 1);
                        let (fx, lx) = (first / height, last / height);
                        x0 = x0.min(fx);
                        x1 = x1.max(lx);
                        // A run that wraps a column covers every row in between.
                        if fx == lx {
                            y0 = y0.min(first % height);
                            y1 = y1.max(last % height);
                        } else {
                            y0 = 0;
                            y1 = height - 1;
                        }
                    }
                    at += run;
                }
                (x0 != u64::MAX).then(|| {
                    [
                        x0 as f32,
                        y0 as f32,
                        (x1 - x0 + 1) as f32,
                        (y1 - y0 + 1) as f32,
                    ]
                })
            }
        }
    }

    /// The pixels [`Region::paint`] may mark, as `[x_min, y_min, x_max, y_max]` with the maxima
    /// the last pixel in (inclusive) on a `width` × `height` image: the columns and rows whose
    /// centres lie within [`Self::bounding_box`]. `None` where that holds no pixel centre.
    pub fn pixel_box(&self, width: u32, height: u32) -> Option<[u32; 4]> {
        let [x, y, w, h] = self.bounding_box()?;
        // Centres at i + 0.5 inside [start, end): from ceil(start - 0.5) to ceil(end - 0.5) - 1.
        let span = |start: f32, end: f32, side: u32| {
            let first = (start - 0.5).ceil().max(0.0) as u32;
            let past = ((end - 0.5).ceil().max(0.0) as u32).min(side);
            (first < past).then(|| (first, past - 1))
        };
        let (x0, x1) = span(x, x + w, width)?;
        let (y0, y1) = span(y, y + h, height)?;
        Some([x0, y0, x1, y1])
    }

    /// The shape's area in pixels (a polygon's by the shoelace formula).
    pub fn area(&self) -> f32 {
        match self {
            Shape::Box { width, height, .. } => width * height,
            Shape::Polygon { points } => {
                let twice: f32 = points
                    .iter()
                    .zip(points.iter().cycle().skip(1))
                    .map(|([x0, y0], [x1, y1])| x0 * y1 - x1 * y0)
                    .sum();
                twice.abs() / 2.0
            }
            Shape::Mask { counts, .. } => counts.iter().skip(1).step_by(2).map(|&c| c as f32).sum(),
        }
    }
}

impl Region {
    /// Sets the pixels the region covers to 255 in a row-major `width` × `height` mask: a
    /// pixel is covered when its centre lies inside the shape (even-odd rule for polygons).
    /// What lies outside the mask is ignored, so an unchecked shape cannot write out of bounds.
    pub fn paint(&self, mask: &mut [u8], width: u32, height: u32) {
        let (w, h) = (width as usize, height as usize);
        if mask.len() != w * h {
            return;
        }
        // The columns whose centres lie in [x0, x1).
        let span = |x0: f32, x1: f32| {
            let first = (x0 - 0.5).ceil().max(0.0) as usize;
            let end = ((x1 - 0.5).ceil().max(0.0) as usize).min(w);
            first..end
        };
        match &self.shape {
            Shape::Box {
                x,
                y,
                width: bw,
                height: bh,
            } => {
                for row in span(*y, y + bh).take_while(|r| *r < h) {
                    mask[row * w..][span(*x, x + bw)].fill(255);
                }
            }
            Shape::Polygon { points } => {
                let mut crossings = Vec::new();
                for (row, line) in mask.chunks_exact_mut(w.max(1)).enumerate().take(h) {
                    let yc = row as f32 + 0.5;
                    crossings.clear();
                    for ([x0, y0], [x1, y1]) in points.iter().zip(points.iter().cycle().skip(1)) {
                        if (*y0 <= yc) != (*y1 <= yc) {
                            crossings.push(x0 + (yc - y0) * (x1 - x0) / (y1 - y0));
                        }
                    }
                    crossings.sort_by(f32::total_cmp);
                    for pair in crossings.chunks_exact(2) {
                        line[span(pair[0], pair[1])].fill(255);
                    }
                }
            }
            Shape::Mask { size, counts } => {
                if *size != [height, width] {
                    return;
                }
                let mut at = 0usize;
                for (i, &run) in counts.iter().enumerate() {
                    let end = (at + run as usize).min(w * h);
                    if i % 2 == 1 {
                        // Column-major index i is pixel (i / h, i % h).
                        for index in at..end {
                            mask[(index % h) * w + index / h] = 255;
                        }
                    }
                    at = end;
                }
            }
        }
    }
}

/// The mask of every region on a `width` × `height` image: 255 where a defect is, 0 elsewhere
/// (the MVTec AD ground-truth convention).
pub fn regions_mask(regions: &[Region], width: u32, height: u32) -> crate::part::GrayImage {
    let mut pixels = vec![0u8; width as usize * height as usize];
    for region in regions {
        region.paint(&mut pixels, width, height);
    }
    crate::part::GrayImage {
        width,
        height,
        pixels,
    }
}

/// Checks every region of a label against its image of `width` × `height` pixels.
pub fn check_regions(
    regions: &[Region],
    width: u32,
    height: u32,
    valid_class: impl Fn(&str) -> bool,
) -> Result<(), RegionError> {
    if regions.len() > MAX_REGIONS {
        return Err(RegionError::TooMany(regions.len()));
    }
    for (index, region) in regions.iter().enumerate() {
        if !valid_class(&region.class) {
            return Err(RegionError::Invalid {
                index,
                why: "a class is 1 to 64 characters, no control characters".into(),
            });
        }
        region
            .shape
            .check(width, height)
            .map_err(|why| RegionError::Invalid { index, why })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_class(c: &str) -> bool {
        !c.is_empty()
    }

    fn region(shape: Shape) -> Region {
        Region {
            class: "scratch".into(),
            shape,
        }
    }

    #[test]
    fn shapes_inside_the_image_pass_and_outside_it_are_named() {
        let good = [
            region(Shape::Box {
                x: 0.0,
                y: 0.0,
                width: 8.0,
                height: 6.0,
            }),
            region(Shape::Polygon {
                points: vec![[1.0, 1.0], [7.5, 1.0], [4.0, 5.0]],
            }),
            region(Shape::Mask {
                size: [6, 8],
                counts: vec![10, 4, 34],
            }),
        ];
        assert_eq!(check_regions(&good, 8, 6, any_class), Ok(()));

        let cases = [
            (
                Shape::Box {
                    x: 4.0,
                    y: 0.0,
                    width: 5.0,
                    height: 1.0,
                },
                "leaves the 8×6 image",
            ),
            (
                Shape::Box {
                    x: 0.0,
                    y: 0.0,
                    width: 0.0,
                    height: 1.0,
                },
                "positive width",
            ),
            (
                Shape::Polygon {
                    points: vec![[1.0, 1.0], [2.0, 2.0]],
                },
                "3 to",
            ),
            (
                Shape::Polygon {
                    points: vec![[1.0, 1.0], [2.0, f32::NAN], [3.0, 1.0]],
                },
                "outside",
            ),
            (
                Shape::Mask {
                    size: [8, 6],
                    counts: vec![48],
                },
                "[6, 8]",
            ),
            (
                Shape::Mask {
                    size: [6, 8],
                    counts: vec![40, 4],
                },
                "not 44",
            ),
            (
                Shape::Mask {
                    size: [6, 8],
                    counts: vec![48],
                },
                "at least one pixel",
            ),
        ];
        for (shape, why) in cases {
            let error = check_regions(&[region(shape.clone())], 8, 6, any_class)
                .expect_err(&format!("{shape:?} passed"));
            assert!(error.to_string().contains(why), "{error} lacks {why}");
            assert!(error.to_string().starts_with("region 0:"), "{error}");
        }
        let nameless = Region {
            class: String::new(),
            ..good[0].clone()
        };
        assert!(check_regions(&[nameless], 8, 6, any_class).is_err());
        let many = vec![good[0].clone(); MAX_REGIONS + 1];
        assert_eq!(
            check_regions(&many, 8, 6, any_class),
            Err(RegionError::TooMany(MAX_REGIONS + 1))
        );
    }

    #[test]
    fn boxes_and_areas_follow_the_shapes() {
        let triangle = Shape::Polygon {
            points: vec![[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]],
        };
        assert_eq!(triangle.area(), 6.0);
        assert_eq!(triangle.bounding_box(), Some([0.0, 0.0, 4.0, 3.0]));
        // A 6-high image: pixels 8..11 are column 1, rows 2..5.
        let mask = Shape::Mask {
            size: [6, 5],
            counts: vec![8, 4, 18],
        };
        assert_eq!(mask.area(), 4.0);
        assert_eq!(mask.bounding_box(), Some([1.0, 2.0, 1.0, 4.0]));
        // A run from column 1's last row into column 2 spans every row.
        let wrapping = Shape::Mask {
            size: [6, 5],
            counts: vec![11, 2, 17],
        };
        assert_eq!(wrapping.bounding_box(), Some([1.0, 0.0, 2.0, 6.0]));
        let empty = Shape::Mask {
            size: [6, 5],
            counts: vec![30],
        };
        assert_eq!(empty.bounding_box(), None);
        assert_eq!(empty.area(), 0.0);
        // The pixels each may mark, as paint marks them.
        assert_eq!(mask.pixel_box(5, 6), Some([1, 2, 1, 5]));
        assert_eq!(triangle.pixel_box(5, 6), Some([0, 0, 3, 2]));
        let sliver = Shape::Box {
            x: 2.6,
            y: 1.0,
            width: 0.8,
            height: 2.0,
        };
        assert_eq!(sliver.pixel_box(5, 6), None, "covers no pixel centre");
        let past = Shape::Box {
            x: 3.0,
            y: 4.0,
            width: 9.0,
            height: 9.0,
        };
        assert_eq!(past.pixel_box(5, 6), Some([3, 4, 4, 5]), "cut to the image");
        assert_eq!(empty.pixel_box(5, 6), None);
        for shape in [mask, triangle] {
            let mut painted = vec![0u8; 5 * 6];
            let region = Region {
                class: "dent".into(),
                shape: shape.clone(),
            };
            region.paint(&mut painted, 5, 6);
            let [x0, y0, x1, y1] = shape.pixel_box(5, 6).expect("pixels");
            for (i, &p) in painted.iter().enumerate() {
                let (x, y) = ((i % 5) as u32, (i / 5) as u32);
                if p > 0 {
                    assert!(
                        (x0..=x1).contains(&x) && (y0..=y1).contains(&y),
                        "{shape:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn regions_paint_the_pixels_whose_centres_they_cover() {
        let (w, h) = (6u32, 4u32);
        let painted = |shape: Shape| {
            let mut mask = vec![0u8; (w * h) as usize];
            region(shape).paint(&mut mask, w, h);
            mask.chunks(w as usize)
                .map(|row| {
                    row.iter()
                        .map(|&p| if p > 0 { '#' } else { '.' })
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        };
        let square = Shape::Box {
            x: 1.0,
            y: 1.0,
            width: 2.0,
            height: 2.0,
        };
        assert_eq!(painted(square), ["......", ".##...", ".##...", "......"]);
        // A right triangle over the whole image: row centres 0.5..3.5 cut it at x = 6·(1 − y/4).
        let triangle = Shape::Polygon {
            points: vec![[0.0, 0.0], [6.0, 0.0], [0.0, 4.0]],
        };
        assert_eq!(painted(triangle), ["#####.", "####..", "##....", "#....."]);
        // Column-major in a 4-high image: pixels 5..=7 are column 1, rows 1..=3; pixel 8 column 2, row 0.
        let mask = Shape::Mask {
            size: [h, w],
            counts: vec![5, 4, 15],
        };
        assert_eq!(painted(mask), ["..#...", ".#....", ".#....", ".#...."]);
        // Past the image: clipped, never out of bounds.
        let outside = Shape::Box {
            x: 4.0,
            y: 3.0,
            width: 100.0,
            height: 100.0,
        };
        assert_eq!(painted(outside), ["......", "......", "......", "....##"]);
    }

    #[test]
    fn shapes_read_and_write_coco_s_field_names() {
        let json = r#"{"class":"dent","shape":{"kind":"mask","size":[2,3],"counts":[0,6]}}"#;
        let region: Region = serde_json::from_str(json).expect("decodes");
        assert_eq!(
            region.shape,
            Shape::Mask {
                size: [2, 3],
                counts: vec![0, 6]
            }
        );
        assert_eq!(serde_json::to_string(&region).expect("encodes"), json);
    }
}
