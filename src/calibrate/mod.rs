//! Calibration: undistort each frame with the camera's OpenCV calibration, then crop the region
//! the model inspects.
//!
//! The calibration file is OpenCV FileStorage YAML (`camera_matrix`, `distortion_coefficients`,
//! `image_width`/`image_height`, and the ROI as `roi_x`, `roi_y`, `roi_width`, `roi_height` in
//! undistorted pixels). [`Undistorter`] computes the remap tables once; per frame it is one
//! `remap` and one crop. Only this module can make the image the model sees from a raw frame.

use std::path::{Path, PathBuf};

use opencv::core::{self, FileStorage, FileStorage_Mode, Mat, Rect, Scalar, Size};
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
        Ok(())
    }
}

/// Undistorts and crops frames with precomputed remap tables.
pub struct Undistorter {
    width: u32,
    height: u32,
    map_x: Mat,
    map_y: Mat,
    roi: Roi,
}

impl Undistorter {
    /// Precomputes the undistortion maps of a calibration.
    pub fn new(calibration: &Calibration) -> Result<Undistorter, CalibrateError> {
        let size = Size::new(
            calibration.image_width as i32,
            calibration.image_height as i32,
        );
        let (mut map_x, mut map_y) = (Mat::default(), Mat::default());
        calib3d::init_undistort_rectify_map(
            &calibration.camera_matrix,
            &calibration.distortion,
            &Mat::default(),
            &calibration.camera_matrix,
            size,
            core::CV_16SC2,
            &mut map_x,
            &mut map_y,
        )?;
        Ok(Undistorter {
            width: calibration.image_width,
            height: calibration.image_height,
            map_x,
            map_y,
            roi: calibration.roi,
        })
    }

    /// The size of the images [`Undistorter::apply`] returns.
    pub fn output_size(&self) -> (u32, u32) {
        (self.roi.width, self.roi.height)
    }

    /// Undistorts a raw frame and crops the ROI.
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
        let mut undistorted = Mat::default();
        imgproc::remap(
            &src,
            &mut undistorted,
            &self.map_x,
            &self.map_y,
            imgproc::INTER_LINEAR,
            core::BORDER_CONSTANT,
            Scalar::default(),
        )?;
        let roi = self.roi;
        let crop = Mat::roi(
            &undistorted,
            Rect::new(
                roi.x as i32,
                roi.y as i32,
                roi.width as i32,
                roi.height as i32,
            ),
        )?;
        // The crop is a view with the parent's stride; clone it into a continuous buffer.
        let crop = crop.try_clone()?;
        let pixels = crop.data_bytes()?.to_vec();
        Ok(GrayImage {
            width: roi.width,
            height: roi.height,
            pixels,
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
