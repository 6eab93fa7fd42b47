//! Calibration: undistort each frame with the camera's OpenCV calibration, then crop the region
//! the model inspects.
//!
//! The calibration file is OpenCV FileStorage YAML (`camera_matrix`, `distortion_coefficients`,
//! `image_width`/`image_height`, the ROI as `roi_x`, `roi_y`, `roi_width`, `roi_height` in
//! undistorted pixels, and optionally `output_width`/`output_height`, the size the model sees,
//! when it is not the ROI's). [`Undistorter`] computes the remap tables once, for the ROI's
//! pixels only; per frame it is one `remap` of the ROI straight out of the raw frame (no
//! full-frame undistortion, no crop copy), and an area resize to the output size when there is
//! one. Only this module can make the image the model sees from a raw frame.

use std::path::{Path, PathBuf};

use opencv::core::{self, FileStorage, FileStorage_Mode, Mat, Scalar, Size};
use opencv::prelude::*;
use opencv::{calib3d, imgproc};

use crate::part::GrayImage;

pub mod board;

/// Why calibration could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("calibration {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("frame is {got_width}x{got_height}, calibration expects {want_width}x{want_height}")]
    FrameSize {
        got_width: u32,
        got_height: u32,
        want_width: u32,
        want_height: u32,
    },
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("checkerboard {0}")]
    Board(String),
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error(
        "{path} is {width}x{height}, but {first} (the first image) is {first_width}x{first_height}: \
         every view must come from the one camera at one resolution"
    )]
    ImageSize {
        path: PathBuf,
        width: u32,
        height: u32,
        first: PathBuf,
        first_width: u32,
        first_height: u32,
    },
    #[error(
        "{usable} usable views, calibration needs at least {needed} (the board at different \
         angles and places){}",
        board::skipped_note(.skipped)
    )]
    TooFewViews {
        usable: usize,
        needed: usize,
        skipped: Vec<PathBuf>,
    },
    #[error("writing calibration {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A region of interest in undistorted pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A camera calibration as read from file.
#[derive(Debug)]
pub struct Calibration {
    pub image_width: u32,
    pub image_height: u32,
    /// 3×3 intrinsics, f64.
    pub camera_matrix: Mat,
    /// 1×N distortion coefficients (k1, k2, p1, p2[, k3…]), f64.
    pub distortion: Mat,
    pub roi: Roi,
    /// The size of the image the model sees; `None`: the ROI's own.
    pub output: Option<(u32, u32)>,
}

impl Calibration {
    /// Reads an OpenCV FileStorage calibration file.
    pub fn load(path: &Path) -> Result<Calibration, CalibrateError> {
        let fail = |message: String| CalibrateError::File {
            path: path.to_owned(),
            message,
        };
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let path_str = path
            .to_str()
            .ok_or_else(|| fail("path is not UTF-8".into()))?;
        let storage = FileStorage::new(path_str, FileStorage_Mode::READ as i32, "")
            .map_err(|e| fail(format!("not an OpenCV FileStorage file: {e}")))?;
        let int = |key: &str| -> Result<u32, CalibrateError> {
            let node = storage.get(key)?;
            if node.empty()? || !node.is_int()? {
                return Err(fail(format!("`{key}`: expected a non-negative integer")));
            }
            u32::try_from(node.to_i32()?)
                .map_err(|_| fail(format!("`{key}`: expected a non-negative integer")))
        };
        let matrix = |key: &str| -> Result<Mat, CalibrateError> {
            let node = storage.get(key)?;
            if node.empty()? {
                return Err(fail(format!("`{key}`: missing")));
            }
            let mat = node.mat()?;
            let mut as_f64 = Mat::default();
            mat.convert_to(&mut as_f64, core::CV_64F, 1.0, 0.0)?;
            Ok(as_f64)
        };
        let calibration = Calibration {
            image_width: int("image_width")?,
            image_height: int("image_height")?,
            camera_matrix: matrix("camera_matrix")?,
            distortion: matrix("distortion_coefficients")?,
            roi: Roi {
                x: int("roi_x")?,
                y: int("roi_y")?,
                width: int("roi_width")?,
                height: int("roi_height")?,
            },
            output: {
                let present =
                    |key: &str| -> Result<bool, CalibrateError> { Ok(!storage.get(key)?.empty()?) };
                match (present("output_width")?, present("output_height")?) {
                    (false, false) => None,
                    (true, true) => Some((int("output_width")?, int("output_height")?)),
                    _ => {
                        return Err(fail(
                            "`output_width` and `output_height` go together".into(),
                        ));
                    }
                }
            },
        };
        calibration.check().map_err(fail)?;
        Ok(calibration)
    }

    fn check(&self) -> Result<(), String> {
        if self.camera_matrix.rows() != 3 || self.camera_matrix.cols() != 3 {
            return Err("`camera_matrix`: expected 3x3".into());
        }
        let n = self.distortion.total();
        if ![4, 5, 8, 12, 14].contains(&n) {
            return Err(format!(
                "`distortion_coefficients`: expected 4, 5, 8, 12 or 14 values, got {n}"
            ));
        }
        let roi = self.roi;
        if roi.width == 0
            || roi.height == 0
            || roi.x + roi.width > self.image_width
            || roi.y + roi.height > self.image_height
        {
            return Err(format!(
                "ROI {}x{} at ({}, {}) does not fit the {}x{} image",
                roi.width, roi.height, roi.x, roi.y, self.image_width, self.image_height
            ));
        }
        if let Some((width, height)) = self.output
            && (!(1..=8192).contains(&width) || !(1..=8192).contains(&height))
        {
            return Err(format!(
                "output {width}x{height}: expected 1 to 8192 pixels each way"
            ));
        }
        Ok(())
    }
}

/// Undistorts and crops frames with precomputed remap tables.
pub struct Undistorter {
    width: u32,
    height: u32,
    /// Before the remap, the raw frame is area-averaged down to this size (a whole factor of
    /// at least 2 smaller), when the output is that much smaller than the ROI.
    shrink_to: Option<(u32, u32)>,
    /// For each output pixel, where it lies in the (shrunk) raw frame.
    map_x: Mat,
    map_y: Mat,
    output: (u32, u32),
}

/// The camera matrix `camera` seen through a change of pixel grid: pixel `u` of the new grid
/// covers old pixels `[offset + u / scale, offset + (u + 1) / scale)`, on each axis.
fn regrid(camera: &Mat, offset: (f64, f64), scale: (f64, f64)) -> Result<Mat, CalibrateError> {
    let mut new = camera.try_clone()?;
    for (axis, (offset, scale)) in [(0, (offset.0, scale.0)), (1, (offset.1, scale.1))] {
        let focal = *camera.at_2d::<f64>(axis, axis)?;
        let centre = *camera.at_2d::<f64>(axis, 2)?;
        *new.at_2d_mut::<f64>(axis, axis)? = focal * scale;
        // Pixel centres: old coordinate c lands at (c - offset + 0.5) * scale - 0.5.
        *new.at_2d_mut::<f64>(axis, 2)? = (centre - offset + 0.5) * scale - 0.5;
    }
    Ok(new)
}

impl Undistorter {
    /// Precomputes the undistortion maps of a calibration, for the output's pixels only: the
    /// new camera matrix is the old one shifted to the ROI's corner and scaled to the output,
    /// so output pixel (0, 0) is the ROI's corner in the undistorted image.
    ///
    /// With an output at least twice smaller than the ROI, remapping every ROI pixel and then
    /// averaging them down would cost more than the rest of the frame's way to the model
    /// together, and sampling the ROI at the output's pitch would skip most of its pixels (a
    /// small defect between samples would vanish). So the raw frame is first area-averaged
    /// down by a whole factor no larger than the reduction (every pixel counts, and OpenCV has
    /// a fast path for whole factors), and the maps read that smaller frame, whose pixels are
    /// then at most about one output pixel apart.
    pub fn new(calibration: &Calibration) -> Result<Undistorter, CalibrateError> {
        let roi = calibration.roi;
        let output = calibration.output.unwrap_or((roi.width, roi.height));
        let reduction = f64::min(
            f64::from(roi.width) / f64::from(output.0),
            f64::from(roi.height) / f64::from(output.1),
        );
        let (width, height) = (calibration.image_width, calibration.image_height);
        // The largest whole factor the reduction allows, preferring one that divides the
        // frame (OpenCV's fast path: 2448×2048 to a 224 output shrinks by 8, not 9).
        let most = reduction.floor() as u32;
        let factor = (2..=most)
            .rev()
            .find(|f| width % f == 0 && height % f == 0)
            .unwrap_or(most);
        let (shrink_to, source_camera) = if factor >= 2 {
            let shrunk = (width.div_ceil(factor), height.div_ceil(factor));
            let scale = (
                f64::from(shrunk.0) / f64::from(width),
                f64::from(shrunk.1) / f64::from(height),
            );
            let camera = regrid(&calibration.camera_matrix, (0.0, 0.0), scale)?;
            (Some(shrunk), camera)
        } else {
            (None, calibration.camera_matrix.try_clone()?)
        };
        let output_camera = regrid(
            &calibration.camera_matrix,
            (f64::from(roi.x), f64::from(roi.y)),
            (
                f64::from(output.0) / f64::from(roi.width),
                f64::from(output.1) / f64::from(roi.height),
            ),
        )?;
        let (mut map_x, mut map_y) = (Mat::default(), Mat::default());
        calib3d::init_undistort_rectify_map(
            &source_camera,
            &calibration.distortion,
            &Mat::default(),
            &output_camera,
            Size::new(output.0 as i32, output.1 as i32),
            core::CV_16SC2,
            &mut map_x,
            &mut map_y,
        )?;
        Ok(Undistorter {
            width,
            height,
            shrink_to,
            map_x,
            map_y,
            output,
        })
    }

    /// The size of the images [`Undistorter::apply`] returns.
    pub fn output_size(&self) -> (u32, u32) {
        self.output
    }

    /// The output image out of `source` (the raw frame, or its shrunk copy).
    fn remap(&self, source: &impl core::ToInputArray) -> Result<Mat, CalibrateError> {
        let mut out = Mat::default();
        imgproc::remap(
            source,
            &mut out,
            &self.map_x,
            &self.map_y,
            imgproc::INTER_LINEAR,
            core::BORDER_CONSTANT,
            Scalar::default(),
        )?;
        Ok(out)
    }

    /// Undistorts a raw frame's ROI at the output size.
    pub fn apply(&self, raw: &GrayImage) -> Result<GrayImage, CalibrateError> {
        if (raw.width, raw.height) != (self.width, self.height) {
            return Err(CalibrateError::FrameSize {
                got_width: raw.width,
                got_height: raw.height,
                want_width: self.width,
                want_height: self.height,
            });
        }
        let src = Mat::new_rows_cols_with_data(raw.height as i32, raw.width as i32, &raw.pixels)?;
        let out = match self.shrink_to {
            Some((width, height)) => {
                let mut shrunk = Mat::default();
                imgproc::resize(
                    &src,
                    &mut shrunk,
                    Size::new(width as i32, height as i32),
                    0.0,
                    0.0,
                    imgproc::INTER_AREA,
                )?;
                self.remap(&shrunk)?
            }
            None => self.remap(&src)?,
        };
        Ok(GrayImage {
            width: self.output.0,
            height: self.output.1,
            pixels: out.data_bytes()?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Calibration {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml");
        Calibration::load(&path).expect("shipped calibration loads")
    }

    fn ramp(width: u32, height: u32) -> GrayImage {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| ((x * 7 + y * 3) % 256) as u8))
            .collect();
        GrayImage::new(width, height, pixels).expect("size matches")
    }

    #[test]
    fn identity_calibration_only_crops() {
        let undistorter = Undistorter::new(&shipped()).expect("maps");
        let raw = ramp(256, 256);
        let out = undistorter.apply(&raw).expect("applies");
        assert_eq!((out.width, out.height), (224, 224));
        for (y, row) in out.pixels.chunks(224).enumerate() {
            let src = &raw.pixels[(y + 16) * 256 + 16..(y + 16) * 256 + 240];
            assert_eq!(row, src, "row {y}");
        }
    }

    #[test]
    fn barrel_distortion_moves_corners_not_centre() {
        let mut calibration = shipped();
        calibration.distortion = Mat::from_slice(&[-0.3f64, 0.0, 0.0, 0.0, 0.0])
            .expect("mat")
            .try_clone()
            .expect("clone");
        let undistorter = Undistorter::new(&calibration).expect("maps");
        let raw = ramp(256, 256);
        let out = undistorter.apply(&raw).expect("applies");
        let centre = 112 * 224 + 112;
        assert_eq!(
            out.pixels[centre],
            raw.pixels[128 * 256 + 128],
            "optical centre stays"
        );
        let corner_same = out.pixels[0] == raw.pixels[16 * 256 + 16];
        assert!(!corner_same, "corner moved under distortion");
    }

    /// The ROI-only remap is what OpenCV's own `undistort` of the whole frame gives, cropped.
    #[test]
    fn the_roi_remap_equals_undistorting_the_whole_frame_then_cropping() {
        let mut calibration = shipped();
        calibration.distortion = Mat::from_slice(&[-0.3f64, 0.1, 0.001, -0.002, 0.0])
            .expect("mat")
            .try_clone()
            .expect("clone");
        let undistorter = Undistorter::new(&calibration).expect("maps");
        let raw = ramp(256, 256);
        let ours = undistorter.apply(&raw).expect("applies");
        let src = Mat::new_rows_cols_with_data(256, 256, &raw.pixels).expect("mat");
        let mut whole = Mat::default();
        calib3d::undistort(
            &src,
            &mut whole,
            &calibration.camera_matrix,
            &calibration.distortion,
            &calibration.camera_matrix,
        )
        .expect("undistort");
        let whole = whole.data_bytes().expect("bytes");
        let mut worst = 0;
        for y in 0..224 {
            for x in 0..224 {
                let theirs = whole[(y + 16) * 256 + x + 16];
                worst = worst.max(ours.pixels[y * 224 + x].abs_diff(theirs));
            }
        }
        assert!(worst <= 1, "differs by up to {worst}");
    }

    /// A quarter-size output is the mean of each 4×4 block: averaged, not sampled (sampling
    /// would read 2×2 of the 16 pixels and miss a small defect between them).
    #[test]
    fn an_output_size_averages_the_roi_down_to_it() {
        let mut calibration = shipped();
        calibration.output = Some((56, 56));
        let undistorter = Undistorter::new(&calibration).expect("maps");
        assert_eq!(undistorter.output_size(), (56, 56));
        let raw = ramp(256, 256);
        let out = undistorter.apply(&raw).expect("applies");
        assert_eq!((out.width, out.height, out.pixels.len()), (56, 56, 56 * 56));
        let at = |x: usize, y: usize| f64::from(raw.pixels[(y + 16) * 256 + x + 16]);
        for (y, row) in out.pixels.chunks(56).enumerate() {
            for (x, &value) in row.iter().enumerate() {
                let block: f64 = (0..4)
                    .flat_map(|dy| (0..4).map(move |dx| (4 * x + dx, 4 * y + dy)))
                    .map(|(sx, sy)| at(sx, sy))
                    .sum();
                let mean = block / 16.0;
                assert!(
                    (f64::from(value) - mean).abs() <= 1.0,
                    "({x}, {y}): {value} vs {mean}"
                );
            }
        }
    }

    /// A defect one pixel wide, wherever it lies, still shows in the smaller output.
    #[test]
    fn a_one_pixel_defect_survives_the_reduction() {
        let mut calibration = shipped();
        calibration.distortion = Mat::from_slice(&[-0.1f64, 0.0, 0.0, 0.0, 0.0])
            .expect("mat")
            .try_clone()
            .expect("clone");
        calibration.output = Some((56, 56));
        let undistorter = Undistorter::new(&calibration).expect("maps");
        for (x, y) in [(120, 120), (121, 122), (123, 121), (122, 123), (60, 200)] {
            let mut raw = GrayImage::new(256, 256, vec![0; 256 * 256]).expect("size");
            raw.pixels[y * 256 + x] = 255;
            let out = undistorter.apply(&raw).expect("applies");
            let brightest = out.pixels.iter().copied().max().unwrap_or(0);
            assert!(
                brightest >= 4,
                "a dot at ({x}, {y}) left at most {brightest}"
            );
        }
    }

    #[test]
    fn an_output_size_needs_both_sides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cal.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml"),
        )
        .expect("read");
        std::fs::write(&path, format!("{text}output_width: 112\n")).expect("write");
        let err = Calibration::load(&path).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        std::fs::write(
            &path,
            format!("{text}output_width: 112\noutput_height: 96\n"),
        )
        .expect("write");
        let calibration = Calibration::load(&path).expect("loads");
        assert_eq!(calibration.output, Some((112, 96)));
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        let undistorter = Undistorter::new(&shipped()).expect("maps");
        let err = undistorter.apply(&ramp(100, 100)).unwrap_err();
        assert!(err.to_string().contains("100x100"), "{err}");
    }

    #[test]
    fn missing_and_malformed_files_name_the_problem() {
        let err = Calibration::load(Path::new("/nonexistent/cal.yaml")).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml"),
        )
        .expect("read")
        .replace("roi_width: 224", "roi_width: 300");
        std::fs::write(&path, text).expect("write");
        let err = Calibration::load(&path).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
