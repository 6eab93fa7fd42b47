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

use sha2::Digest;

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
    #[error("calibration: {0}")]
    Invalid(String),
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
    /// 3×3, f64: from undistorted image pixels to a top-down view of the part's plane (a
    /// camera looking at the belt at an angle sees parts foreshortened; the model should not).
    /// With one, the ROI is given in the top-down view's pixels. `None`: the ROI is in
    /// undistorted pixels.
    pub homography: Option<Mat>,
    /// The size on the part's plane of one pixel of the view the ROI is given in (the top-down
    /// view, or the undistorted image), in millimetres; `None`: not measured.
    pub mm_per_pixel: Option<f64>,
    /// Which file it was read from, by name and content (`simulated.yaml@` and the first 12
    /// hex digits of its SHA-256), so that every record can say which calibration shaped its
    /// image; `None` for one built in code.
    pub id: Option<String>,
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
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let id = format!(
            "{}@{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            &hex::encode(sha2::Sha256::digest(&bytes))[..12]
        );
        let path_str = path
            .to_str()
            .ok_or_else(|| fail("path is not UTF-8".into()))?;
        let storage = FileStorage::new(path_str, FileStorage_Mode::READ as i32, "")
            .map_err(|e| fail(format!("not an OpenCV FileStorage file: {e}")))?;
        // OpenCV's own errors reading a key (a matrix whose data does not match its rows and
        // cols, say) name neither the file nor the key: both are added here.
        let cv = |key: &str, e: opencv::Error| fail(format!("`{key}`: {e}"));
        let int = |key: &str| -> Result<u32, CalibrateError> {
            let node = storage.get(key).map_err(|e| cv(key, e))?;
            if node.empty().map_err(|e| cv(key, e))? || !node.is_int().map_err(|e| cv(key, e))? {
                return Err(fail(format!("`{key}`: expected a non-negative integer")));
            }
            u32::try_from(node.to_i32().map_err(|e| cv(key, e))?)
                .map_err(|_| fail(format!("`{key}`: expected a non-negative integer")))
        };
        let matrix = |key: &str| -> Result<Mat, CalibrateError> {
            let node = storage.get(key).map_err(|e| cv(key, e))?;
            if node.empty().map_err(|e| cv(key, e))? {
                return Err(fail(format!("`{key}`: missing")));
            }
            let mat = node.mat().map_err(|e| cv(key, e))?;
            let mut as_f64 = Mat::default();
            mat.convert_to(&mut as_f64, core::CV_64F, 1.0, 0.0)
                .map_err(|e| cv(key, e))?;
            Ok(as_f64)
        };
        let present = |key: &str| -> Result<bool, CalibrateError> {
            let node = storage.get(key).map_err(|e| cv(key, e))?;
            Ok(!node.empty().map_err(|e| cv(key, e))?)
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
            homography: match present("homography")? {
                true => Some(matrix("homography")?),
                false => None,
            },
            mm_per_pixel: match present("mm_per_pixel")? {
                true => {
                    let key = "mm_per_pixel";
                    let node = storage.get(key).map_err(|e| cv(key, e))?;
                    if !node.is_real().map_err(|e| cv(key, e))?
                        && !node.is_int().map_err(|e| cv(key, e))?
                    {
                        return Err(fail("`mm_per_pixel`: expected a number".into()));
                    }
                    Some(node.to_f64().map_err(|e| cv(key, e))?)
                }
                false => None,
            },
            id: Some(id),
        };
        calibration.check().map_err(fail)?;
        Ok(calibration)
    }

    fn check(&self) -> Result<(), String> {
        // A camera matrix of the right shape can still make remap tables of NaN or a mirrored
        // image: every frame would come out black or wrong without any error, so what the
        // undistortion relies on is checked here, where the file is named.
        let k = matrix3(&self.camera_matrix).map_err(|e| format!("`camera_matrix`: {e}"))?;
        let (fx, fy) = (k[0][0], k[1][1]);
        if !(fx > 0.0 && fy > 0.0) {
            return Err(format!(
                "`camera_matrix`: the focal lengths fx and fy must be positive, got fx = {fx}, \
                 fy = {fy}"
            ));
        }
        // Within rounding: a matrix written through float32, or normalised, is still one.
        let bottom_row = [0.0, 0.0, 1.0];
        if (k[2].iter().zip(bottom_row)).any(|(value, expected)| (value - expected).abs() > 1e-6) {
            return Err(format!(
                "`camera_matrix`: the bottom row must be 0 0 1, got {} {} {}",
                k[2][0], k[2][1], k[2][2]
            ));
        }
        let n = self.distortion.total();
        if ![4, 5, 8, 12, 14].contains(&n) {
            return Err(format!(
                "`distortion_coefficients`: expected 4, 5, 8, 12 or 14 values, got {n}"
            ));
        }
        // At most 14 values (checked above), so each index fits an i32.
        for i in 0..n {
            let value = *self
                .distortion
                .at::<f64>(i as i32)
                .map_err(|e| format!("`distortion_coefficients`: {e}"))?;
            if !value.is_finite() {
                return Err(format!(
                    "`distortion_coefficients`: value {} is {value}, expected a finite number",
                    i + 1
                ));
            }
        }
        let roi = self.roi;
        if let Some(mm) = self.mm_per_pixel
            && !(mm.is_finite() && mm > 0.0)
        {
            return Err(format!(
                "`mm_per_pixel`: expected a positive size, got {mm}"
            ));
        }
        let homography = match &self.homography {
            Some(h) => Some(matrix3(h).map_err(|e| format!("`homography`: {e}"))?),
            None => None,
        };
        let fits = match homography {
            None => {
                // In u64: the ROI comes from a file or the command line, and `x + width` near
                // u32::MAX would overflow (a panic in debug builds, a wrap-around that "fits"
                // in release ones).
                u64::from(roi.x) + u64::from(roi.width) <= u64::from(self.image_width)
                    && u64::from(roi.y) + u64::from(roi.height) <= u64::from(self.image_height)
            }
            Some(h) => {
                invert3(&h).ok_or(
                    "`homography`: not invertible (it must map the image onto the part's plane)",
                )?;
                // The ROI's corners, back in the (undistorted) image, must be in it: outside
                // it the model would see black.
                roi_corners_in_image(roi, &h).is_some_and(|corners| {
                    corners.iter().all(|&(u, v)| {
                        (-0.5..=f64::from(self.image_width) + 0.5).contains(&u)
                            && (-0.5..=f64::from(self.image_height) + 0.5).contains(&v)
                    })
                })
            }
        };
        if roi.width == 0 || roi.height == 0 || !fits {
            return Err(format!(
                "ROI {}x{} at ({}, {}) does not fit the {}x{} image{}",
                roi.width,
                roi.height,
                roi.x,
                roi.y,
                self.image_width,
                self.image_height,
                if homography.is_some() {
                    " (seen through the homography, the ROI being in the top-down view)"
                } else {
                    ""
                }
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

/// A 3×3 f64 matrix's values.
fn matrix3(m: &Mat) -> Result<[[f64; 3]; 3], String> {
    if m.rows() != 3 || m.cols() != 3 {
        return Err(format!("expected 3x3, got {}x{}", m.rows(), m.cols()));
    }
    let mut out = [[0.0; 3]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = *m
                .at_2d::<f64>(r as i32, c as i32)
                .map_err(|e| e.to_string())?;
            if !value.is_finite() {
                return Err("expected finite values".into());
            }
        }
    }
    Ok(out)
}

/// The inverse of a 3×3 matrix, `None` when it is singular.
fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let cofactor = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det: f64 = (0..3).map(|c| m[0][c] * cofactor(0, c)).sum();
    let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    // NaN (from infinite values) fails the comparison too.
    if det.abs().partial_cmp(&(1e-12 * scale.powi(3))) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let mut inverse = [[0.0; 3]; 3];
    for (r, row) in inverse.iter_mut().enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            // The adjugate is the transposed cofactor matrix.
            *value = cofactor(c, r) / det;
        }
    }
    Some(inverse)
}

/// The ROI's corners (top-left, top-right, bottom-left, bottom-right), given in the view
/// `homography` makes, back in the undistorted image. `None` when the homography is singular
/// or the ROI reaches the plane's horizon (its corners on both sides of it).
fn roi_corners_in_image(roi: Roi, homography: &[[f64; 3]; 3]) -> Option<[(f64, f64); 4]> {
    let to_image = invert3(homography)?;
    let (x0, y0) = (f64::from(roi.x), f64::from(roi.y));
    let (x1, y1) = (x0 + f64::from(roi.width), y0 + f64::from(roi.height));
    let corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)];
    let w = |(x, y): (f64, f64)| to_image[2][0] * x + to_image[2][1] * y + to_image[2][2];
    let first_side = w(corners[0]).signum();
    if !corners.iter().all(|&c| w(c).signum() == first_side) {
        return None;
    }
    let mut out = [(0.0, 0.0); 4];
    for (slot, &corner) in out.iter_mut().zip(&corners) {
        *slot = apply3(&to_image, corner)?;
    }
    Some(out)
}

/// A homogeneous 3×3 transform applied to a point; `None` at infinity.
fn apply3(m: &[[f64; 3]; 3], (x, y): (f64, f64)) -> Option<(f64, f64)> {
    let w = m[2][0] * x + m[2][1] * y + m[2][2];
    (w.abs() > 1e-12).then(|| {
        (
            (m[0][0] * x + m[0][1] * y + m[0][2]) / w,
            (m[1][0] * x + m[1][1] * y + m[1][2]) / w,
        )
    })
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
    /// Millimetres per output pixel on the part's plane, across and down.
    mm_per_output_pixel: Option<(f64, f64)>,
    /// [`Calibration::id`], shared with every inspection it shaped.
    id: Option<std::sync::Arc<str>>,
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

/// `a · b` for 3×3 f64 matrices.
fn product(a: &Mat, b: &Mat) -> Result<Mat, CalibrateError> {
    let mut out = Mat::default();
    core::gemm(a, b, 1.0, &Mat::default(), 0.0, &mut out, 0)?;
    Ok(out)
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
        // A calibration built in code rather than loaded is held to the same rules.
        calibration.check().map_err(CalibrateError::Invalid)?;
        let roi = calibration.roi;
        let output = calibration.output.unwrap_or((roi.width, roi.height));
        // How many image pixels one output pixel spans, across and down: through a
        // homography, the ROI's shorter edge in the image on each axis (the side of the part
        // the camera sees smallest must keep every pixel it has).
        let (roi_width_px, roi_height_px) = match calibration.homography.as_ref() {
            Some(h) => {
                let corners = matrix3(h)
                    .ok()
                    .and_then(|h| roi_corners_in_image(roi, &h))
                    .ok_or_else(|| {
                        CalibrateError::Invalid("`homography`: the ROI is not in the image".into())
                    })?;
                let length = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).hypot(a.1 - b.1);
                let [top_left, top_right, bottom_left, bottom_right] = corners;
                (
                    length(top_left, top_right).min(length(bottom_left, bottom_right)),
                    length(top_left, bottom_left).min(length(top_right, bottom_right)),
                )
            }
            None => (f64::from(roi.width), f64::from(roi.height)),
        };
        let reduction = f64::min(
            roi_width_px / f64::from(output.0),
            roi_height_px / f64::from(output.1),
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
        // From the (undistorted) camera's normalised coordinates to output pixels: the camera
        // matrix, the homography to the top-down view when there is one, then the ROI's
        // corner and scale. OpenCV inverts it for each output pixel, so a perspective costs
        // nothing per frame: it is in the same remap table.
        let to_output = regrid(
            &Mat::eye(3, 3, core::CV_64F)?.to_mat()?,
            (f64::from(roi.x), f64::from(roi.y)),
            (
                f64::from(output.0) / f64::from(roi.width),
                f64::from(output.1) / f64::from(roi.height),
            ),
        )?;
        let to_view = match &calibration.homography {
            Some(homography) => product(homography, &calibration.camera_matrix)?,
            None => calibration.camera_matrix.try_clone()?,
        };
        let output_camera = product(&to_output, &to_view)?;
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
        let mm_per_output_pixel = calibration.mm_per_pixel.map(|mm| {
            (
                mm * f64::from(roi.width) / f64::from(output.0),
                mm * f64::from(roi.height) / f64::from(output.1),
            )
        });
        Ok(Undistorter {
            width,
            height,
            shrink_to,
            map_x,
            map_y,
            output,
            mm_per_output_pixel,
            id: calibration.id.as_deref().map(std::sync::Arc::from),
        })
    }

    /// Which calibration file this is ([`Calibration::id`]).
    pub fn id(&self) -> Option<&std::sync::Arc<str>> {
        self.id.as_ref()
    }

    /// The size of one output pixel on the part's plane, in millimetres across and down, when
    /// the calibration gives a scale: what turns a size in the model's image into one on the
    /// part.
    pub fn mm_per_output_pixel(&self) -> Option<(f64, f64)> {
        self.mm_per_output_pixel
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

    /// A camera matrix or distortion of the right shape but unusable values (NaN, a zero or
    /// negative focal length, a bottom row that is not 0 0 1, an infinite coefficient) would
    /// make remap tables that turn every frame black or mirrored: refused, naming the field.
    #[test]
    fn camera_matrix_and_distortion_values_are_checked() {
        let camera = |k: [[f64; 3]; 3]| Mat::from_slice_2d(&k).expect("camera matrix");
        for (k, expected) in [
            (
                [[0.0, 0.0, 128.0], [0.0, 256.0, 128.0], [0.0, 0.0, 1.0]],
                "focal lengths",
            ),
            (
                [[256.0, 0.0, 128.0], [0.0, -256.0, 128.0], [0.0, 0.0, 1.0]],
                "focal lengths",
            ),
            (
                [[256.0, 0.0, f64::NAN], [0.0, 256.0, 128.0], [0.0, 0.0, 1.0]],
                "finite",
            ),
            (
                [[256.0, 0.0, 128.0], [0.0, 256.0, 128.0], [0.0, 0.0, 2.0]],
                "bottom row",
            ),
        ] {
            let mut calibration = shipped();
            calibration.camera_matrix = camera(k);
            let err = calibration.check().unwrap_err();
            assert!(err.contains("`camera_matrix`"), "{err}");
            assert!(err.contains(expected), "{expected}: {err}");
        }
        for value in [f64::INFINITY, f64::NAN] {
            let mut calibration = shipped();
            calibration.distortion = Mat::from_slice(&[0.0f64, value, 0.0, 0.0, 0.0])
                .expect("mat")
                .try_clone()
                .expect("clone");
            let err = calibration.check().unwrap_err();
            assert!(err.contains("`distortion_coefficients`"), "{err}");
            assert!(err.contains("finite"), "{err}");
        }

        // Read from a file, the error names the file too.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("negative-fx.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml"),
        )
        .expect("read")
        .replace(
            "data: [ 256., 0., 128., 0., 256., 128., 0., 0., 1. ]",
            "data: [ -256., 0., 128., 0., 256., 128., 0., 0., 1. ]",
        );
        assert!(
            text.contains("-256."),
            "the fixture's camera matrix changed"
        );
        std::fs::write(&path, text).expect("write");
        let err = Calibration::load(&path).unwrap_err().to_string();
        assert!(err.contains("negative-fx.yaml"), "{err}");
        assert!(err.contains("focal lengths"), "{err}");
    }

    /// `x + width` past u32::MAX (`linesight calibrate --roi 4294967295,0,2,10`) is an ROI
    /// outside the image, not an overflow.
    #[test]
    fn an_roi_past_the_largest_u32_does_not_fit_rather_than_overflowing() {
        for roi in [
            Roi {
                x: u32::MAX,
                y: 0,
                width: 2,
                height: 10,
            },
            Roi {
                x: 0,
                y: u32::MAX - 1,
                width: 10,
                height: u32::MAX,
            },
        ] {
            let mut calibration = shipped();
            calibration.roi = roi;
            let err = calibration.check().unwrap_err();
            assert!(err.contains("does not fit"), "{err}");
        }
    }

    /// OpenCV's own error reading a key (here a 3x3 matrix with 4 values) names the file and
    /// the key, like every other problem with the file.
    #[test]
    fn opencv_errors_reading_the_file_name_the_file_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("short-matrix.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml"),
        )
        .expect("read")
        .replace(
            "data: [ 256., 0., 128., 0., 256., 128., 0., 0., 1. ]",
            "data: [ 256., 0., 128., 0. ]",
        );
        assert!(text.contains("data: [ 256., 0., 128., 0. ]"));
        std::fs::write(&path, text).expect("write");
        let err = Calibration::load(&path).unwrap_err();
        assert!(matches!(err, CalibrateError::File { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("short-matrix.yaml"), "{message}");
        assert!(message.contains("`camera_matrix`"), "{message}");
    }

    /// A camera looking down at the belt at an angle: the raw image is a perspective view of a
    /// plane carrying 16 mm squares. `homography` maps image pixels to the top-down view at
    /// 0.5 mm per pixel; the output must be that top-down view: squares, not trapezoids.
    #[test]
    fn a_homography_gives_the_top_down_view_of_the_part_plane() {
        // Image pixel -> top-down pixel: a foreshortening that grows down the image.
        let h = [[1.0, 0.25, -20.0], [0.0, 1.4, -10.0], [0.0, 0.0012, 1.0]];
        let square_px = 32.0; // 16 mm at 0.5 mm/px
        let pattern = |(x, y): (f64, f64)| {
            if ((x / square_px).floor() as i64 + (y / square_px).floor() as i64) % 2 == 0 {
                40u8
            } else {
                210u8
            }
        };
        let raw = GrayImage::new(
            256,
            256,
            (0..256 * 256)
                .map(|i| {
                    let (u, v) = ((i % 256) as f64, (i / 256) as f64);
                    pattern(apply3(&h, (u, v)).expect("finite"))
                })
                .collect(),
        )
        .expect("size");
        let mut calibration = shipped();
        calibration.homography = Some(Mat::from_slice_2d(&h).expect("homography"));
        calibration.mm_per_pixel = Some(0.5);
        // 4 x 3 squares of the top-down view, seen whole in the image.
        calibration.roi = Roi {
            x: 32,
            y: 32,
            width: 128,
            height: 96,
        };
        calibration.output = Some((64, 48));
        calibration.check().expect("the ROI lies inside the image");
        let undistorter = Undistorter::new(&calibration).expect("maps");
        assert_eq!(undistorter.mm_per_output_pixel(), Some((1.0, 1.0)));
        let out = undistorter.apply(&raw).expect("applies");
        // Each output pixel is 2x2 top-down pixels: compare with the pattern at its centre,
        // away from the squares' edges (where resampling mixes both sides).
        let (mut checked, mut wrong) = (0, 0);
        for v in 0..48u32 {
            for u in 0..64u32 {
                let (x, y) = (
                    32.0 + 2.0 * f64::from(u) + 1.0,
                    32.0 + 2.0 * f64::from(v) + 1.0,
                );
                let near_edge = |c: f64| (c / square_px - (c / square_px).round()).abs() < 0.15;
                if near_edge(x) || near_edge(y) {
                    continue;
                }
                checked += 1;
                let got = out.pixels[(v * 64 + u) as usize];
                if got.abs_diff(pattern((x, y))) > 20 {
                    wrong += 1;
                }
            }
        }
        assert!(checked > 1500, "{checked}");
        assert_eq!(
            wrong, 0,
            "{wrong} of {checked} pixels differ from the top-down view"
        );
        // Without the homography the same ROI is the slanted image: far from the pattern.
        let mut slanted = calibration;
        slanted.homography = None;
        let out = Undistorter::new(&slanted)
            .expect("maps")
            .apply(&raw)
            .expect("applies");
        let differ = (0..48u32)
            .flat_map(|v| (0..64u32).map(move |u| (u, v)))
            .filter(|&(u, v)| {
                let (x, y) = (
                    32.0 + 2.0 * f64::from(u) + 1.0,
                    32.0 + 2.0 * f64::from(v) + 1.0,
                );
                out.pixels[(v * 64 + u) as usize].abs_diff(pattern((x, y))) > 20
            })
            .count();
        assert!(
            differ > 600,
            "only {differ} pixels differ without the homography"
        );
    }

    #[test]
    fn a_homography_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("top-down.yaml");
        let shipped_text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration/simulated.yaml"),
        )
        .expect("read");
        // Without its own scale: each case below gives one.
        let shipped_text: String = shipped_text
            .lines()
            .filter(|line| !line.starts_with("mm_per_pixel"))
            .map(|line| format!("{line}\n"))
            .collect();
        let with = |homography: &str, extra: &str| {
            format!(
                "{shipped_text}homography: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   \
                 data: [ {homography} ]\n{extra}"
            )
        };
        std::fs::write(
            &path,
            with("1., 0., 0., 0., 1., 0., 0., 0., 1.", "mm_per_pixel: 0.25\n"),
        )
        .expect("write");
        let calibration = Calibration::load(&path).expect("loads");
        assert!(calibration.homography.is_some());
        assert_eq!(calibration.mm_per_pixel, Some(0.25));
        // The shipped ROI (224 px at 16, 16) at 0.25 mm per pixel, seen at 224 px: 0.25 mm.
        let undistorter = Undistorter::new(&calibration).expect("maps");
        assert_eq!(undistorter.mm_per_output_pixel(), Some((0.25, 0.25)));
        for (homography, extra, expected) in [
            ("1., 2., 0., 2., 4., 0., 0., 0., 0.", "", "not invertible"),
            // Top-down = image shrunk 4x: the ROI at (16, 16) is at (64, 64) in the image and
            // 896 px wide, far outside it.
            (
                "0.25, 0., 0., 0., 0.25, 0., 0., 0., 1.",
                "",
                "seen through the homography",
            ),
            (
                "1., 0., 0., 0., 1., 0., 0., 0., 1.",
                "mm_per_pixel: -1.\n",
                "positive size",
            ),
        ] {
            std::fs::write(&path, with(homography, extra)).expect("write");
            let err = Calibration::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
