//! `linesight calibrate`: the camera's intrinsics and lens distortion from photographs of a
//! printed checkerboard or ChArUco board, written as the calibration file a station loads.
//!
//! Take 10–20 photographs with the station's camera, at the resolution it runs at: tilted
//! different ways, and near the image's edges and corners as well as its middle (distortion is
//! largest there). A checkerboard must be wholly in view; a ChArUco board (`--charuco`) may be
//! partly out of it, which makes the corners of the image easy to cover.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use linesight::calibrate::Roi;
use linesight::calibrate::board::{self, ArucoDictionary, BoardSpec, Charuco};

#[derive(clap::Args)]
pub struct Calibrate {
    /// Inner corners of the checkerboard (where four squares meet) along a row and down a
    /// column: 9x6 for a board of 10 × 7 squares.
    #[arg(long, value_parser = parse_board)]
    board: (u32, u32),
    /// The side of one square, in millimetres.
    #[arg(long)]
    square_mm: f64,
    /// A ChArUco board: the side of one of its ArUco markers, in millimetres (as OpenCV's
    /// CharucoBoard lays them out, one in each white square).
    #[arg(long, requires = "dictionary")]
    charuco_marker_mm: Option<f64>,
    /// The ChArUco board's ArUco dictionary: 4x4_50, 4x4_100, 5x5_100, 5x5_250 or 6x6_250.
    #[arg(long, requires = "charuco_marker_mm")]
    dictionary: Option<ArucoDictionary>,
    /// Where to write the calibration (OpenCV FileStorage YAML); replaced if it exists.
    #[arg(long)]
    out: PathBuf,
    /// The region the model inspects, in undistorted pixels (with --plane: in the top-down
    /// view's pixels): x,y,width,height. Default: the whole image (with --plane: the board).
    #[arg(long, value_parser = parse_roi)]
    roi: Option<Roi>,
    /// A photograph of the board lying flat where the parts pass: the model then sees the
    /// part's plane from above (a homography to a top-down view), and sizes on it are known in
    /// millimetres.
    #[arg(long)]
    plane: Option<PathBuf>,
    /// With --plane: the top-down view's pixel size on the plane. Default: the finest the
    /// photograph resolves.
    #[arg(long, requires = "plane")]
    mm_per_pixel: Option<f64>,
    /// The photographs of the board (PNG, JPEG or BMP), all from the camera at one resolution.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

impl Calibrate {
    pub fn run(self) -> anyhow::Result<()> {
        let spec = BoardSpec {
            inner_corners: self.board,
            square_mm: self.square_mm,
            charuco: self
                .charuco_marker_mm
                .zip(self.dictionary)
                .map(|(marker_mm, dictionary)| Charuco {
                    marker_mm,
                    dictionary,
                }),
        };

        let loading = bar(self.images.len(), "loading");
        let mut images = Vec::with_capacity(self.images.len());
        for path in &self.images {
            images.push((path.clone(), board::load_gray(path)?));
            loading.inc(1);
        }
        loading.finish_and_clear();

        let searching = bar(images.len(), "finding the board");
        let calibration = board::calibrate_views_with_progress(&images, &spec, |_, _| {
            searching.inc(1);
        });
        searching.finish_and_clear();
        let calibration = calibration?;

        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let plane = match &self.plane {
            Some(path) => {
                let image = board::load_gray(path)?;
                Some(board::plane_view(
                    path,
                    &image,
                    &calibration,
                    self.mm_per_pixel,
                )?)
            }
            None => None,
        };
        board::write_yaml(&self.out, &calibration, self.roi, plane.as_ref())?;

        println!(
            "calibrated from {} of {} images ({}), {}x{} px",
            calibration.views.len(),
            images.len(),
            spec,
            calibration.image_width,
            calibration.image_height
        );
        println!("RMS reprojection error {:.3} px", calibration.rms_px);
        println!(
            "fx {:.2}  fy {:.2}  cx {:.2}  cy {:.2}",
            calibration.fx(),
            calibration.fy(),
            calibration.cx(),
            calibration.cy()
        );
        let [k1, k2, p1, p2, k3] = calibration.distortion;
        println!("k1 {k1:.5}  k2 {k2:.5}  p1 {p1:.5}  p2 {p2:.5}  k3 {k3:.5}");
        println!("per view (RMS px):");
        // A view far above the overall error is most often blurred or mis-detected; it pulls
        // the fit, and the calibration is better made again without it.
        for view in &calibration.views {
            let flag = if view.rms_px > 2.0 * calibration.rms_px.max(0.25) {
                "  <- well above the rest: consider dropping it"
            } else {
                ""
            };
            println!("  {:.3}  {}{flag}", view.rms_px, view.path.display());
        }
        if calibration.skipped.is_empty() {
            println!("skipped: none");
        } else {
            println!("skipped (board not found):");
            for path in &calibration.skipped {
                println!("  {}", path.display());
            }
        }
        if let Some(plane) = &plane {
            println!(
                "top-down view of the plane in {}: {:.4} mm per pixel; the board spans {}x{} px",
                self.plane
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                plane.mm_per_pixel,
                plane.board_roi.width,
                plane.board_roi.height
            );
        }
        println!("wrote {}", self.out.display());
        Ok(())
    }
}

fn bar(len: usize, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

/// `9x6` → (9, 6).
fn parse_board(text: &str) -> Result<(u32, u32), String> {
    let numbers = parse_numbers(text, 'x', 2)?;
    Ok((numbers[0], numbers[1]))
}

/// `x,y,width,height` → the ROI.
fn parse_roi(text: &str) -> Result<Roi, String> {
    let numbers = parse_numbers(text, ',', 4)?;
    Ok(Roi {
        x: numbers[0],
        y: numbers[1],
        width: numbers[2],
        height: numbers[3],
    })
}

fn parse_numbers(text: &str, separator: char, count: usize) -> Result<Vec<u32>, String> {
    let numbers = text
        .split(separator)
        .map(|part| part.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    if numbers.len() != count {
        return Err(format!(
            "{text:?}: expected {count} whole numbers separated by '{separator}'"
        ));
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_and_roi_parse() {
        assert_eq!(parse_board("9x6"), Ok((9, 6)));
        assert!(parse_board("9").is_err());
        assert!(parse_board("9x6x2").is_err());
        assert!(parse_board("ninexsix").is_err());
        assert_eq!(
            parse_roi("10, 20,600,440"),
            Ok(Roi {
                x: 10,
                y: 20,
                width: 600,
                height: 440
            })
        );
        assert!(parse_roi("10,20,600").is_err());
    }
}
