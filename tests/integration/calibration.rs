//! Making a calibration (`linesight calibrate`): from checkerboard views rendered through a
//! camera whose intrinsics and distortion are known, the calibration must recover them.
//!
//! Each view is rendered by tracing every pixel back through the lens: its coordinate is
//! undistorted (Newton's method on OpenCV's distortion model), the ray is cast onto the board's
//! plane in that view's pose, and the pixel takes the colour of the square it lands on. Sixteen
//! rays a pixel anti-alias the edges, so corners detect to a fraction of a pixel, as in a
//! real photograph.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use opencv::prelude::*;
use rayon::prelude::*;

use linesight::calibrate::Calibration;
use linesight::calibrate::board::{self, BoardCalibration, BoardSpec};
use linesight::part::GrayImage;

use crate::write_png;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;
/// The true camera: fx, fy, cx, cy.
const FX: f64 = 700.0;
const FY: f64 = 700.0;
const CX: f64 = 322.0;
const CY: f64 = 238.0;
/// The true lens: k1, k2, p1, p2, k3 (barrel distortion, as a wide-angle lens has).
const DISTORTION: [f64; 5] = [-0.18, 0.04, 0.0, 0.0, 0.0];

const BOARD: BoardSpec = BoardSpec {
    inner_corners: (9, 6),
    square_mm: 25.0,
    charuco: None,
};
/// Squares across and down: one more than inner corners.
const SQUARES: (u32, u32) = (10, 7);
/// White paper around the squares, in mm: the detector needs the outer squares' edges.
const PAPER_MARGIN_MM: f64 = 20.0;
/// Rays per pixel along each axis.
const SUPERSAMPLE: u32 = 4;
const BLACK: u32 = 40;
const WHITE: u32 = 215;
/// What lies around the paper.
const BACKGROUND: u32 = 110;

/// Where the board is in one view: turned about the camera's x, then y, then z axis (degrees),
/// its centre at `centre_mm` in camera coordinates (z along the optical axis).
struct Pose {
    degrees: [f64; 3],
    centre_mm: [f64; 3],
}

const fn pose(x: f64, y: f64, z: f64, centre_mm: [f64; 3]) -> Pose {
    Pose {
        degrees: [x, y, z],
        centre_mm,
    }
}

/// Tilted both ways about both axes (a tilt is what separates focal length from distance),
/// turned, and moved towards each corner of the image (where distortion is largest). Every
/// pose keeps the paper at least 15 px inside the image: `rendered_views` checks it.
const POSES: [Pose; 14] = [
    pose(0.0, 0.0, 0.0, [0.0, 0.0, 520.0]),
    pose(25.0, 0.0, 5.0, [0.0, -10.0, 560.0]),
    pose(-25.0, 0.0, -5.0, [0.0, 10.0, 560.0]),
    pose(0.0, 30.0, 0.0, [10.0, 0.0, 560.0]),
    pose(0.0, -30.0, 8.0, [-10.0, 0.0, 560.0]),
    pose(20.0, 20.0, 12.0, [-100.0, -62.0, 650.0]),
    pose(-20.0, 20.0, -10.0, [95.0, -62.0, 650.0]),
    pose(20.0, -20.0, 0.0, [-100.0, 62.0, 650.0]),
    pose(-20.0, -20.0, 15.0, [95.0, 58.0, 650.0]),
    pose(35.0, 10.0, 0.0, [0.0, 0.0, 600.0]),
    pose(10.0, -35.0, -12.0, [0.0, 0.0, 600.0]),
    pose(-15.0, 25.0, 25.0, [55.0, 35.0, 640.0]),
    pose(15.0, 15.0, -25.0, [-55.0, -28.0, 610.0]),
    pose(-30.0, -15.0, 5.0, [0.0, 0.0, 560.0]),
];

type Matrix = [[f64; 3]; 3];

impl Pose {
    fn rotation(&self) -> Matrix {
        let [x, y, z] = self.degrees.map(f64::to_radians);
        let about_x = [
            [1.0, 0.0, 0.0],
            [0.0, x.cos(), -x.sin()],
            [0.0, x.sin(), x.cos()],
        ];
        let about_y = [
            [y.cos(), 0.0, y.sin()],
            [0.0, 1.0, 0.0],
            [-y.sin(), 0.0, y.cos()],
        ];
        let about_z = [
            [z.cos(), -z.sin(), 0.0],
            [z.sin(), z.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        multiply(&multiply(&about_x, &about_y), &about_z)
    }

    /// Board point (u, v) in mm, from the squares' top-left corner, to camera coordinates.
    fn to_camera(&self, u: f64, v: f64) -> [f64; 3] {
        let rotation = self.rotation();
        let (du, dv) = (u - board_width_mm() / 2.0, v - board_height_mm() / 2.0);
        std::array::from_fn(|i| rotation[i][0] * du + rotation[i][1] * dv + self.centre_mm[i])
    }

    /// The homography from an undistorted ray (x, y, 1) to the board point it hits, (u, v, 1)
    /// up to scale: the inverse of the plane's [r1 r2 t] with the origin moved to the squares'
    /// corner.
    fn ray_to_board(&self) -> Matrix {
        let rotation = self.rotation();
        let origin = self.to_camera(0.0, 0.0);
        let to_ray = std::array::from_fn(|i| [rotation[i][0], rotation[i][1], origin[i]]);
        invert(&to_ray)
    }
}

fn board_width_mm() -> f64 {
    f64::from(SQUARES.0) * BOARD.square_mm
}

fn board_height_mm() -> f64 {
    f64::from(SQUARES.1) * BOARD.square_mm
}

fn multiply(a: &Matrix, b: &Matrix) -> Matrix {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn invert(m: &Matrix) -> Matrix {
    let cofactor = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    let det: f64 = (0..3).map(|j| m[0][j] * cofactor(0, j)).sum();
    assert!(
        det.abs() > 1e-12,
        "the board plane passes through the camera"
    );
    // The inverse is the transposed cofactor matrix over the determinant.
    std::array::from_fn(|i| std::array::from_fn(|j| cofactor(j, i) / det))
}

/// OpenCV's lens model: an undistorted normalised point to a distorted one, with its Jacobian.
fn distort(x: f64, y: f64, d: &[f64; 5]) -> ((f64, f64), Matrix) {
    let [k1, k2, p1, p2, k3] = *d;
    let r2 = x * x + y * y;
    let radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3));
    // d(radial)/dx = slope * x, d(radial)/dy = slope * y
    let slope = 2.0 * k1 + r2 * (4.0 * k2 + 6.0 * k3 * r2);
    let xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x);
    let yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y;
    let jacobian = [
        [
            radial + slope * x * x + 2.0 * p1 * y + 6.0 * p2 * x,
            slope * x * y + 2.0 * p1 * x + 2.0 * p2 * y,
            0.0,
        ],
        [
            slope * x * y + 2.0 * p1 * x + 2.0 * p2 * y,
            radial + slope * y * y + 6.0 * p1 * y + 2.0 * p2 * x,
            0.0,
        ],
        [0.0, 0.0, 1.0],
    ];
    ((xd, yd), jacobian)
}

/// The undistorted normalised point the lens maps to (xd, yd): Newton's method, which converges
/// to 1e-12 in a few steps since this lens is monotonic over the image (OpenCV's own
/// `undistort_points` stops after five fixed-point steps, short of that at the corners).
fn undistort(xd: f64, yd: f64) -> (f64, f64) {
    let (mut x, mut y) = (xd, yd);
    for _ in 0..20 {
        let ((fx, fy), j) = distort(x, y, &DISTORTION);
        let (ex, ey) = (fx - xd, fy - yd);
        let det = j[0][0] * j[1][1] - j[0][1] * j[1][0];
        let step_x = (j[1][1] * ex - j[0][1] * ey) / det;
        let step_y = (j[0][0] * ey - j[1][0] * ex) / det;
        x -= step_x;
        y -= step_y;
        if step_x.abs() + step_y.abs() < 1e-13 {
            break;
        }
    }
    (x, y)
}

/// A 3D camera point to pixels through the true camera.
fn project(point: [f64; 3]) -> (f64, f64) {
    let ((xd, yd), _) = distort(point[0] / point[2], point[1] / point[2], &DISTORTION);
    (FX * xd + CX, FY * yd + CY)
}

/// The grey a ray through board point (u, v) sees.
fn shade(u: f64, v: f64) -> u32 {
    let (w, h) = (board_width_mm(), board_height_mm());
    if (0.0..w).contains(&u) && (0.0..h).contains(&v) {
        let square = (u / BOARD.square_mm).floor() as i64 + (v / BOARD.square_mm).floor() as i64;
        if square % 2 == 0 { BLACK } else { WHITE }
    } else if (-PAPER_MARGIN_MM..w + PAPER_MARGIN_MM).contains(&u)
        && (-PAPER_MARGIN_MM..h + PAPER_MARGIN_MM).contains(&v)
    {
        WHITE
    } else {
        BACKGROUND
    }
}

/// One pixel row of every view, each pixel the grey `shade` gives the board point its rays
/// hit. The lens is the same in every view, so each ray is undistorted once and cast onto all
/// the boards.
fn render_row(
    y: u32,
    ray_to_board: &[Matrix],
    shade: &(dyn Fn(f64, f64) -> u32 + Sync),
) -> Vec<Vec<u8>> {
    let n = SUPERSAMPLE;
    let mut sums = vec![vec![0u32; WIDTH as usize]; ray_to_board.len()];
    for sy in 0..n {
        // OpenCV puts pixel centres on integer coordinates: pixel y spans y - 0.5 to y + 0.5.
        let py = f64::from(y) - 0.5 + (f64::from(sy) + 0.5) / f64::from(n);
        for x in 0..WIDTH {
            for sx in 0..n {
                let px = f64::from(x) - 0.5 + (f64::from(sx) + 0.5) / f64::from(n);
                let (rx, ry) = undistort((px - CX) / FX, (py - CY) / FY);
                for (view, h) in ray_to_board.iter().enumerate() {
                    let w = h[2][0] * rx + h[2][1] * ry + h[2][2];
                    // w <= 0: the ray meets the board's plane behind the camera.
                    let grey = if w <= 0.0 {
                        BACKGROUND
                    } else {
                        let u = (h[0][0] * rx + h[0][1] * ry + h[0][2]) / w;
                        let v = (h[1][0] * rx + h[1][1] * ry + h[1][2]) / w;
                        shade(u, v)
                    };
                    sums[view][x as usize] += grey;
                }
            }
        }
    }
    let samples = n * n;
    sums.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|sum| ((sum + samples / 2) / samples) as u8)
                .collect()
        })
        .collect()
}

/// The paper's outline projected through the true camera stays `margin_px` inside the image.
fn assert_paper_in_view(index: usize, pose: &Pose, margin_px: f64) {
    let m = PAPER_MARGIN_MM;
    let (w, h) = (board_width_mm() + m, board_height_mm() + m);
    let steps = 40;
    let outline = (0..=steps).flat_map(|i| {
        let t = f64::from(i) / f64::from(steps);
        let u = -m + t * (w + m);
        let v = -m + t * (h + m);
        [(u, -m), (u, h), (-m, v), (w, v)]
    });
    for (u, v) in outline {
        let (px, py) = project(pose.to_camera(u, v));
        let inside = (margin_px..f64::from(WIDTH) - margin_px).contains(&px)
            && (margin_px..f64::from(HEIGHT) - margin_px).contains(&py);
        assert!(
            inside,
            "pose {index}: paper at ({px:.0}, {py:.0}) is not {margin_px} px inside the image"
        );
    }
}

/// Every view, rendered once and shared by the tests.
static VIEWS: LazyLock<Vec<(PathBuf, GrayImage)>> = LazyLock::new(|| {
    for (index, pose) in POSES.iter().enumerate() {
        assert_paper_in_view(index, pose, 15.0);
    }
    render(&POSES.iter().collect::<Vec<_>>(), &shade)
});

/// The board in each of `poses`, seen through the true camera, its surface shaded by `shade`.
fn render(poses: &[&Pose], shade: &(dyn Fn(f64, f64) -> u32 + Sync)) -> Vec<(PathBuf, GrayImage)> {
    let ray_to_board: Vec<Matrix> = poses.iter().map(|pose| pose.ray_to_board()).collect();
    // ~5 M rays, each onto 14 boards: a second or two on 2 cores, so taken like the other
    // CPU-heavy tests rather than beside a station holding real deadlines.
    let _one = crate::CPU_HEAVY.blocking_lock();
    let rows: Vec<Vec<Vec<u8>>> = (0..HEIGHT)
        .into_par_iter()
        .map(|y| render_row(y, &ray_to_board, shade))
        .collect();
    (0..poses.len())
        .map(|view| {
            let pixels = rows
                .iter()
                .flat_map(|row| row[view].iter().copied())
                .collect();
            let image = GrayImage::new(WIDTH, HEIGHT, pixels).expect("size matches");
            (PathBuf::from(format!("view{:02}.png", view + 1)), image)
        })
        .collect()
}

/// A ChArUco board of the same squares, as OpenCV's `CharucoBoard::draw` prints it: 18 mm
/// markers from the 5x5_100 dictionary in its white squares.
const CHARUCO: board::Charuco = board::Charuco {
    marker_mm: 18.0,
    dictionary: board::ArucoDictionary::Dict5x5_100,
};

/// The printed ChArUco board, at this many pixels a millimetre.
const CHARUCO_PX_PER_MM: f64 = 8.0;

/// Views of the ChArUco board: the checkerboard's poses, and three where much of the board is
/// out of the image (a checkerboard view that cannot be used), covering its corners.
static CHARUCO_VIEWS: LazyLock<Vec<(PathBuf, GrayImage)>> = LazyLock::new(|| {
    let spec = BoardSpec {
        charuco: Some(CHARUCO),
        ..BOARD
    };
    let (board, _) = board::charuco_board(&spec, &CHARUCO).expect("OpenCV makes the board");
    let size = opencv::core::Size::new(
        (board_width_mm() * CHARUCO_PX_PER_MM) as i32,
        (board_height_mm() * CHARUCO_PX_PER_MM) as i32,
    );
    let mut printed = opencv::core::Mat::default();
    let mut board = board;
    board
        .draw(size, &mut printed, 0, 1)
        .expect("OpenCV draws the board");
    let (cols, rows) = (printed.cols(), printed.rows());
    let printed: Vec<u8> = printed.data_bytes().expect("8-bit image").to_vec();
    let charuco_shade = move |u: f64, v: f64| {
        let (x, y) = (u * CHARUCO_PX_PER_MM, v * CHARUCO_PX_PER_MM);
        if (0.0..f64::from(cols)).contains(&x) && (0.0..f64::from(rows)).contains(&y) {
            let ink = u32::from(printed[y as usize * cols as usize + x as usize]);
            BLACK + (WHITE - BLACK) * ink / 255
        } else {
            // The paper around the board, and what lies around the paper.
            shade(u, v)
        }
    };
    let partial = [
        pose(10.0, -10.0, 5.0, [-230.0, 0.0, 520.0]),
        pose(-10.0, 15.0, -8.0, [215.0, 150.0, 520.0]),
        pose(15.0, 10.0, 10.0, [180.0, -160.0, 560.0]),
    ];
    let poses: Vec<&Pose> = POSES.iter().chain(partial.iter()).collect();
    render(&poses, &charuco_shade)
});
fn blank(name: &str, width: u32, height: u32) -> (PathBuf, GrayImage) {
    let pixels = vec![WHITE as u8; (width * height) as usize];
    (
        PathBuf::from(name),
        GrayImage::new(width, height, pixels).expect("size matches"),
    )
}

fn calibrate(images: &[(PathBuf, GrayImage)]) -> Result<BoardCalibration, String> {
    board::calibrate_views(images, &BOARD).map_err(|e| e.to_string())
}

/// The largest distance, in pixels, between where the true and the recovered camera put points
/// over the part of the image the boards covered (out to 240 px from the centre).
fn largest_disagreement_px(recovered: &BoardCalibration) -> f64 {
    let mut largest: f64 = 0.0;
    for i in -8..=8 {
        for j in -6..=6 {
            let (px, py) = (CX + f64::from(i) * 20.0, CY + f64::from(j) * 20.0);
            if (px - CX).hypot(py - CY) > 240.0 {
                continue;
            }
            // The ray the true camera sees at (px, py), through the recovered camera.
            let (x, y) = undistort((px - CX) / FX, (py - CY) / FY);
            let ((xd, yd), _) = distort(x, y, &recovered.distortion);
            let (qx, qy) = (
                recovered.fx() * xd + recovered.cx(),
                recovered.fy() * yd + recovered.cy(),
            );
            largest = largest.max((qx - px).hypot(qy - py));
        }
    }
    largest
}

/// The camera `calibration` recovered is the true one: every view used, focal lengths within
/// 1 %, the principal point within 2 px, RMS and each view's error under 0.5 px, and points put
/// within `disagreement_px` of where the true camera puts them (k1, k2 and k3 trade off against
/// each other, so the lens is judged by what it does).
fn assert_true_camera(
    board: &str,
    calibration: &BoardCalibration,
    views: usize,
    disagreement_px: f64,
) {
    let disagreement = largest_disagreement_px(calibration);
    eprintln!(
        "{board}: fx {:.3} fy {:.3} cx {:.3} cy {:.3}, distortion {:?}, RMS {:.4} px, largest \
         disagreement with the true camera {disagreement:.3} px, per view {:?}",
        calibration.fx(),
        calibration.fy(),
        calibration.cx(),
        calibration.cy(),
        calibration.distortion,
        calibration.rms_px,
        calibration
            .views
            .iter()
            .map(|v| (v.rms_px * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    assert_eq!(calibration.views.len(), views, "every view used");
    assert!(calibration.skipped.is_empty(), "{:?}", calibration.skipped);
    assert_eq!(
        (calibration.image_width, calibration.image_height),
        (WIDTH, HEIGHT)
    );
    for (name, value, truth) in [("fx", calibration.fx(), FX), ("fy", calibration.fy(), FY)] {
        assert!((value / truth - 1.0).abs() < 0.01, "{name} {value}");
    }
    for (name, value, truth) in [("cx", calibration.cx(), CX), ("cy", calibration.cy(), CY)] {
        assert!((value - truth).abs() < 2.0, "{name} {value}");
    }
    assert!(calibration.rms_px < 0.5, "RMS {} px", calibration.rms_px);
    assert!(
        calibration.views.iter().all(|v| v.rms_px < 0.5),
        "{:?}",
        calibration.views
    );
    assert!(disagreement < disagreement_px, "{disagreement} px");
}

#[test]
fn recovers_the_camera_it_was_rendered_with() {
    let calibration = calibrate(&VIEWS).expect("calibrates");
    assert_true_camera("checkerboard", &calibration, POSES.len(), 1.0);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("camera.yaml");
    board::write_yaml(&path, &calibration, None, None).expect("writes");
    let loaded = Calibration::load(&path).expect("the station loads it");
    assert_eq!((loaded.image_width, loaded.image_height), (WIDTH, HEIGHT));
    assert_eq!((loaded.roi.width, loaded.roi.height), (WIDTH, HEIGHT));
    let fx = *loaded.camera_matrix.at_2d::<f64>(0, 0).expect("fx");
    assert_eq!(fx, calibration.fx());
    assert_eq!(loaded.distortion.total(), 5);
}

/// ChArUco: the same camera recovered from the markered board, including views that show only
/// part of it (a checkerboard needs all of its corners in view).
#[test]
fn recovers_the_camera_from_a_charuco_board_partly_out_of_view() {
    let spec = BoardSpec {
        charuco: Some(CHARUCO),
        ..BOARD
    };
    let calibration = board::calibrate_views(&CHARUCO_VIEWS, &spec).expect("calibrates");
    // ChArUco corners are found through the markers and refined in squares that hold a marker
    // beside them, a little less exactly than a plain checkerboard's (1.1 px here against its
    // 0.4 px): within 1.5 px of the true camera out to 240 px from the centre.
    assert_true_camera("ChArUco", &calibration, CHARUCO_VIEWS.len(), 1.5);
    // The partial views are of no use as a checkerboard's.
    let partial = &CHARUCO_VIEWS[POSES.len()..];
    let as_checkerboard = board::calibrate_views(&[&VIEWS[..5], partial].concat(), &BOARD)
        .expect("the five whole checkerboard views calibrate");
    assert_eq!(as_checkerboard.skipped.len(), partial.len());
}

#[test]
fn too_few_views_are_refused() {
    let err = calibrate(&VIEWS[..3]).unwrap_err();
    assert!(err.contains("3 usable views"), "{err}");
    assert!(err.contains("at least 5"), "{err}");
}

#[test]
fn a_view_without_the_board_is_skipped_and_named() {
    let mut images = VIEWS[..6].to_vec();
    images.insert(2, blank("blank.png", WIDTH, HEIGHT));
    let calibration = calibrate(&images).expect("six good views are enough");
    assert_eq!(calibration.skipped, vec![PathBuf::from("blank.png")]);
    assert_eq!(calibration.views.len(), 6);

    // Too few left once the blanks are out: the error says which were skipped.
    let mut images = VIEWS[..4].to_vec();
    images.push(blank("empty-1.png", WIDTH, HEIGHT));
    images.push(blank("empty-2.png", WIDTH, HEIGHT));
    let err = calibrate(&images).unwrap_err();
    assert!(err.contains("4 usable views"), "{err}");
    assert!(
        err.contains("empty-1.png") && err.contains("empty-2.png"),
        "{err}"
    );
}

#[test]
fn an_image_of_another_size_is_named() {
    let mut images = VIEWS[..6].to_vec();
    images.insert(4, blank("small.png", 320, 240));
    let err = calibrate(&images).unwrap_err();
    assert!(err.contains("small.png is 320x240"), "{err}");
    assert!(
        err.contains("view01.png") && err.contains("640x480"),
        "{err}"
    );
}

#[test]
fn the_command_writes_a_calibration_the_station_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("calibration/camera.yaml");
    let mut args = strings(&[
        "--board",
        "9x6",
        "--square-mm",
        "25",
        "--roi",
        "16,16,608,448",
        "--out",
    ]);
    args.push(path_arg(&out));
    let blank = blank("blank.png", WIDTH, HEIGHT);
    let views = dir.path().join("views");
    let images: Vec<_> = VIEWS.iter().chain(std::iter::once(&blank)).collect();
    let stdout = calibrate_command(&args, &views, &images);
    assert!(stdout.contains("RMS reprojection error"), "{stdout}");
    assert!(stdout.contains("fx 70"), "{stdout}");
    assert!(stdout.contains("view14.png"), "{stdout}");
    let skipped = stdout.split("skipped").nth(1).unwrap_or_default();
    assert!(skipped.contains("blank.png"), "{stdout}");
    let loaded = Calibration::load(&out).expect("the station loads it");
    assert_eq!(loaded.roi.width, 608);
}

/// `linesight calibrate --charuco-marker-mm 18 --dictionary 5x5_100` through the binary.
#[test]
fn the_command_calibrates_from_a_charuco_board() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("camera.yaml");
    let mut args = strings(&[
        "--board",
        "9x6",
        "--square-mm",
        "25",
        "--charuco-marker-mm",
        "18",
        "--dictionary",
        "5x5_100",
        "--out",
    ]);
    args.push(path_arg(&out));
    let images: Vec<_> = CHARUCO_VIEWS.iter().collect();
    let stdout = calibrate_command(&args, dir.path(), &images);
    assert!(
        stdout.contains("fx 70") || stdout.contains("fx 69"),
        "{stdout}"
    );
    let loaded = Calibration::load(&out).expect("the station loads it");
    assert_eq!((loaded.image_width, loaded.image_height), (WIDTH, HEIGHT));
    let written = std::fs::read_to_string(&out).expect("yaml");
    assert!(written.contains("ChArUco"), "the board is named: {written}");

    // A dictionary without its marker size is refused by the command line.
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args([
            "calibrate",
            "--board",
            "9x6",
            "--square-mm",
            "25",
            "--dictionary",
            "5x5_100",
        ])
        .args(["--out", &path_arg(&out), "x.png"])
        .output()
        .expect("run linesight");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--charuco-marker-mm"), "{stderr}");
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// Runs `linesight calibrate` with `args` and `images` written as PNG files under `dir` (their
/// paths last), and asks it to succeed; returns what it printed.
fn calibrate_command(args: &[String], dir: &Path, images: &[&(PathBuf, GrayImage)]) -> String {
    let mut args: Vec<String> = std::iter::once("calibrate".to_owned())
        .chain(args.iter().cloned())
        .collect();
    for (name, image) in images {
        let path = dir.join(name);
        write_png(&path, image);
        args.push(path_arg(&path));
    }
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(&args)
        .output()
        .expect("run linesight");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// `--plane`: one of the views, the board tilted 25° away from the camera, taken as the board
/// lying on the belt. The station's undistorted, perspective-corrected image of that view must
/// be the board seen from straight above: every square where the top-down grid puts it, dark
/// and light alternating, each `square_mm / mm_per_pixel` pixels wide.
#[test]
fn the_command_makes_a_top_down_view_of_the_plane_the_board_lies_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("top-down.yaml");
    let (plane_name, plane_image) = &VIEWS[1];
    let mut args = strings(&["--board", "9x6", "--square-mm", "25", "--plane"]);
    args.extend([
        path_arg(&dir.path().join(plane_name)),
        "--out".into(),
        path_arg(&out),
    ]);
    let images: Vec<_> = VIEWS.iter().collect();
    let stdout = calibrate_command(&args, dir.path(), &images);
    assert!(stdout.contains("mm per pixel"), "{stdout}");

    let calibration = Calibration::load(&out).expect("the station loads it");
    let mm_per_pixel = calibration.mm_per_pixel.expect("a scale");
    let square_px = BOARD.square_mm / mm_per_pixel;
    // The default scale is the finest the view resolves: a square 25 mm wide at ~520-560 mm
    // is some 30 px in the image.
    assert!((20.0..45.0).contains(&square_px), "{square_px} px a square");
    // The ROI defaults to the board's squares.
    let squares = (SQUARES.0 as f64 * square_px, SQUARES.1 as f64 * square_px);
    assert!((f64::from(calibration.roi.width) - squares.0).abs() <= 1.0);
    assert!((f64::from(calibration.roi.height) - squares.1).abs() <= 1.0);

    let undistorter = linesight::calibrate::Undistorter::new(&calibration).expect("maps");
    assert_eq!(
        undistorter.mm_per_output_pixel(),
        Some((mm_per_pixel, mm_per_pixel))
    );
    let top_down = undistorter.apply(plane_image).expect("applies");
    let at = |x: f64, y: f64| top_down.pixels[y as usize * top_down.width as usize + x as usize];
    // Whichever corner the detector started from, squares alternate from the first one's shade.
    let first_dark = at(0.5 * square_px, 0.5 * square_px) < 128;
    let mut wrong = Vec::new();
    for row in 0..SQUARES.1 {
        for col in 0..SQUARES.0 {
            let (x, y) = (
                (f64::from(col) + 0.5) * square_px,
                (f64::from(row) + 0.5) * square_px,
            );
            let dark = (col + row) % 2 == 0;
            // A quarter square each way around the centre, all one shade.
            for (dx, dy) in [
                (0.0, 0.0),
                (-0.25, -0.25),
                (0.25, -0.25),
                (-0.25, 0.25),
                (0.25, 0.25),
            ] {
                let value = at(x + dx * square_px, y + dy * square_px);
                let expected = if dark == first_dark { BLACK } else { WHITE };
                if value.abs_diff(expected as u8) > 40 {
                    wrong.push((col, row, value));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "squares off the top-down grid: {wrong:?}");
}

/// The model is given the calibration's output: a camera whose ROI is larger than the model's
/// input is resampled to it (a 1280×1024 camera to a 224×224 model), and a station whose
/// calibration gives another size is refused with both sizes named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_takes_the_calibrations_output_size_not_its_roi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::fs::read_to_string(crate::repo().join("calibration/simulated.yaml"))
        .expect("shipped calibration");
    let resampled = |output: u32| {
        let path = dir.path().join(format!("whole-{output}.yaml"));
        let text = shipped
            .replace("roi_x: 16", "roi_x: 0")
            .replace("roi_y: 16", "roi_y: 0")
            .replace("roi_width: 224", "roi_width: 256")
            .replace(
                "roi_height: 224",
                &format!("roi_height: 256\noutput_width: {output}\noutput_height: {output}"),
            );
        assert!(text.contains("output_width"), "the shipped file changed");
        std::fs::write(&path, text).expect("calibration");
        path.display().to_string()
    };
    let station = |output: u32| {
        let file = resampled(output);
        let data = dir.path().join(format!("data-{output}"));
        async move {
            let (station_file, view_file) = (
                format!("file = {file:?}"),
                format!("calibration = {file:?}"),
            );
            let config = crate::station_config(
                &data,
                &[
                    (
                        "file = \"../calibration/simulated.yaml\"",
                        station_file.as_str(),
                    ),
                    (
                        "calibration = \"../calibration/simulated.yaml\"",
                        view_file.as_str(),
                    ),
                ],
            );
            crate::simulated_station(config)
                .await
                .map(|(_, station)| station)
        }
    };
    assert!(
        station(224).await.is_ok(),
        "a 256×256 ROI resampled to the model's 224×224 runs"
    );
    let refused = station(200).await.err().expect("refused").to_string();
    assert!(
        refused.contains("224x224") && refused.contains("200x200"),
        "{refused}"
    );
}
