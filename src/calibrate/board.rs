//! Making a calibration: the camera's intrinsics and lens distortion from views of a printed
//! checkerboard or ChArUco board, as `linesight calibrate` does.
//!
//! Each view is searched for the board's inner corners: a checkerboard's with
//! `find_chessboard_corners` (the whole board must be in view), refined to a fraction of a pixel
//! with `corner_sub_pix`; a ChArUco board's from its ArUco markers (`detect_markers`, then
//! `interpolate_corners_charuco`, which refines them the same way), each corner named by its id,
//! so a view that shows part of the board still counts, and the image's edges and corners,
//! where distortion is largest, are easy to cover. `calibrate_camera` then fits one camera
//! matrix and five distortion coefficients (k1 k2 p1 p2 k3) to all views at once. [`write_yaml`] writes the
//! result in the FileStorage YAML that [`Calibration::load`] (and OpenCV's own tools) read.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use opencv::core::{
    self, FileStorage, FileStorage_Mode, Mat, Point2f, Point3f, Size, TermCriteria, Vector,
};
use opencv::prelude::*;
use opencv::{aruco, calib3d, imgproc};

use super::{CalibrateError, Calibration, Roi};
use crate::part::GrayImage;

/// Fewer views than this leave the fit under-determined in practice: OpenCV solves with 3, but
/// then every view's noise lands in the intrinsics.
pub const MIN_VIEWS: usize = 5;

/// The printed board: a checkerboard, or a ChArUco board.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoardSpec {
    /// Inner corners (where four squares meet) along a row and down a column: `(9, 6)` for a
    /// board of 10 × 7 squares.
    pub inner_corners: (u32, u32),
    /// The side of one square, in millimetres. It sets the scale of the board poses only; the
    /// intrinsics come out the same whatever it is.
    pub square_mm: f64,
    /// A ChArUco board (markers in its white squares); `None`: a plain checkerboard.
    pub charuco: Option<Charuco>,
}

/// A ChArUco board's markers, as OpenCV's `CharucoBoard::create` lays them out: one in each
/// white square, the top-left square black.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charuco {
    /// The side of one marker, in millimetres (smaller than a square).
    pub marker_mm: f64,
    pub dictionary: ArucoDictionary,
}

/// The ArUco dictionaries a ChArUco board is printed with: marker size in bits, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArucoDictionary {
    Dict4x4_50,
    Dict4x4_100,
    Dict5x5_100,
    Dict5x5_250,
    Dict6x6_250,
}

impl std::str::FromStr for ArucoDictionary {
    type Err = String;

    /// `4x4_50`, `4x4_100`, `5x5_100`, `5x5_250` or `6x6_250` (OpenCV's `DICT_` names, case
    /// aside, also do).
    fn from_str(text: &str) -> Result<ArucoDictionary, String> {
        let wanted = text.to_ascii_lowercase();
        let wanted = wanted.strip_prefix("dict_").unwrap_or(&wanted);
        Self::ALL
            .into_iter()
            .find(|d| d.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
                format!(
                    "unknown ArUco dictionary {text:?}; one of {}",
                    names.join(", ")
                )
            })
    }
}

impl ArucoDictionary {
    const ALL: [ArucoDictionary; 5] = [
        ArucoDictionary::Dict4x4_50,
        ArucoDictionary::Dict4x4_100,
        ArucoDictionary::Dict5x5_100,
        ArucoDictionary::Dict5x5_250,
        ArucoDictionary::Dict6x6_250,
    ];

    fn opencv(self) -> aruco::PREDEFINED_DICTIONARY_NAME {
        use aruco::PREDEFINED_DICTIONARY_NAME as D;
        match self {
            ArucoDictionary::Dict4x4_50 => D::DICT_4X4_50,
            ArucoDictionary::Dict4x4_100 => D::DICT_4X4_100,
            ArucoDictionary::Dict5x5_100 => D::DICT_5X5_100,
            ArucoDictionary::Dict5x5_250 => D::DICT_5X5_250,
            ArucoDictionary::Dict6x6_250 => D::DICT_6X6_250,
        }
    }

    /// How many markers it has.
    fn size(self) -> u32 {
        match self {
            ArucoDictionary::Dict4x4_50 => 50,
            ArucoDictionary::Dict4x4_100 | ArucoDictionary::Dict5x5_100 => 100,
            ArucoDictionary::Dict5x5_250 | ArucoDictionary::Dict6x6_250 => 250,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ArucoDictionary::Dict4x4_50 => "4x4_50",
            ArucoDictionary::Dict4x4_100 => "4x4_100",
            ArucoDictionary::Dict5x5_100 => "5x5_100",
            ArucoDictionary::Dict5x5_250 => "5x5_250",
            ArucoDictionary::Dict6x6_250 => "6x6_250",
        }
    }
}

/// Fewer ChArUco corners than this in a view leave its pose ill-determined: the view is
/// skipped.
pub const MIN_CHARUCO_CORNERS: usize = 8;

/// OpenCV's ChArUco board for `spec` and `charuco`, with its dictionary.
pub fn charuco_board(
    spec: &BoardSpec,
    charuco: &Charuco,
) -> Result<(core::Ptr<aruco::CharucoBoard>, core::Ptr<aruco::Dictionary>), CalibrateError> {
    let dictionary = aruco::get_predefined_dictionary(charuco.dictionary.opencv())?;
    let (cols, rows) = spec.inner_corners;
    let board = aruco::CharucoBoard::create(
        cols as i32 + 1,
        rows as i32 + 1,
        spec.square_mm as f32,
        charuco.marker_mm as f32,
        &dictionary,
    )?;
    Ok((board, dictionary))
}

impl BoardSpec {
    fn check(&self) -> Result<(), CalibrateError> {
        let (cols, rows) = self.inner_corners;
        // OpenCV's detector needs more than two corners each way to order them.
        if cols < 3 || rows < 3 {
            return Err(CalibrateError::Board(format!(
                "{cols}x{rows}: needs at least 3 inner corners each way"
            )));
        }
        if !(self.square_mm.is_finite() && self.square_mm > 0.0) {
            return Err(CalibrateError::Board(format!(
                "square size {} mm: must be a positive number",
                self.square_mm
            )));
        }
        if let Some(charuco) = &self.charuco {
            if !(charuco.marker_mm.is_finite()
                && charuco.marker_mm > 0.0
                && charuco.marker_mm < self.square_mm)
            {
                return Err(CalibrateError::Board(format!(
                    "marker size {} mm: must be a positive number below the square's {} mm",
                    charuco.marker_mm, self.square_mm
                )));
            }
            // A marker in every white square; the top-left square is black.
            let markers = (cols + 1) * (rows + 1) / 2;
            if markers > charuco.dictionary.size() {
                return Err(CalibrateError::Board(format!(
                    "{} squares need {markers} markers; the {} dictionary has {}",
                    (cols + 1) * (rows + 1),
                    charuco.dictionary.name(),
                    charuco.dictionary.size()
                )));
            }
        }
        Ok(())
    }

    fn pattern_size(&self) -> Size {
        Size::new(self.inner_corners.0 as i32, self.inner_corners.1 as i32)
    }

    /// The inner corners on the board's plane (z = 0), in millimetres, in the order
    /// `find_chessboard_corners` returns them: row by row.
    fn object_points(&self) -> Vector<Point3f> {
        let (cols, rows) = self.inner_corners;
        let side = self.square_mm as f32;
        (0..rows)
            .flat_map(|r| {
                (0..cols).map(move |c| Point3f::new(c as f32 * side, r as f32 * side, 0.0))
            })
            .collect()
    }
}

impl fmt::Display for BoardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cols, rows) = self.inner_corners;
        write!(
            f,
            "{cols}x{rows} inner corners, {} mm squares",
            self.square_mm
        )?;
        if let Some(charuco) = &self.charuco {
            write!(
                f,
                ", ChArUco {} mm markers from {}",
                charuco.marker_mm,
                charuco.dictionary.name()
            )?;
        }
        Ok(())
    }
}

/// How well the calibration explains one view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewError {
    pub path: PathBuf,
    /// RMS distance, in pixels, between the detected corners and the corners the calibration
    /// projects for this view's pose.
    pub rms_px: f64,
}

/// A camera calibration made from checkerboard views.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardCalibration {
    pub board: BoardSpec,
    pub image_width: u32,
    pub image_height: u32,
    /// Row-major 3×3 intrinsics: `[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`.
    pub camera_matrix: [[f64; 3]; 3],
    /// k1, k2, p1, p2, k3 (OpenCV's order).
    pub distortion: [f64; 5],
    /// RMS reprojection error over every corner of every view used, in pixels.
    pub rms_px: f64,
    /// Each view used, in input order.
    pub views: Vec<ViewError>,
    /// Images in which the board was not found, in input order.
    pub skipped: Vec<PathBuf>,
}

impl BoardCalibration {
    pub fn fx(&self) -> f64 {
        self.camera_matrix[0][0]
    }
    pub fn fy(&self) -> f64 {
        self.camera_matrix[1][1]
    }
    pub fn cx(&self) -> f64 {
        self.camera_matrix[0][2]
    }
    pub fn cy(&self) -> f64 {
        self.camera_matrix[1][2]
    }
}

/// Reads an image file (PNG, JPEG or BMP) as 8-bit grey.
pub fn load_gray(path: &Path) -> Result<GrayImage, CalibrateError> {
    let fail = |message: String| CalibrateError::Image {
        path: path.to_owned(),
        message,
    };
    let decoded = image::ImageReader::open(path)
        .map_err(|e| fail(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?
        .decode()
        .map_err(|e| fail(e.to_string()))?
        .into_luma8();
    let (width, height) = decoded.dimensions();
    GrayImage::new(width, height, decoded.into_raw())
        .ok_or_else(|| fail("decoded size does not match its pixels".into()))
}

/// Calibrates the camera from views of `board` (see [`calibrate_views_with_progress`]).
pub fn calibrate_views(
    images: &[(PathBuf, GrayImage)],
    board: &BoardSpec,
) -> Result<BoardCalibration, CalibrateError> {
    calibrate_views_with_progress(images, board, |_, _| {})
}

/// Calibrates the camera from views of `board`, calling `progress(path, found)` after each image
/// has been searched for the board (the search is the slow part).
///
/// Images in which the board is not found are skipped and listed in the result; fewer than
/// [`MIN_VIEWS`] usable views is an error that names them. All images must have one size.
pub fn calibrate_views_with_progress(
    images: &[(PathBuf, GrayImage)],
    board: &BoardSpec,
    mut progress: impl FnMut(&Path, bool),
) -> Result<BoardCalibration, CalibrateError> {
    board.check()?;
    // Sizes first: it is cheap, and a mixed set (another camera, a resized copy) is a mistake to
    // fix, not views to skip. Intrinsics are in pixels of one resolution.
    let Some((first_path, first)) = images.first() else {
        return Err(CalibrateError::TooFewViews {
            usable: 0,
            needed: MIN_VIEWS,
            skipped: Vec::new(),
        });
    };
    if let Some((path, image)) = images
        .iter()
        .find(|(_, image)| (image.width, image.height) != (first.width, first.height))
    {
        return Err(CalibrateError::ImageSize {
            path: path.clone(),
            width: image.width,
            height: image.height,
            first: first_path.clone(),
            first_width: first.width,
            first_height: first.height,
        });
    }

    let mut used_paths = Vec::new();
    let mut image_points: Vector<Vector<Point2f>> = Vector::new();
    let mut object_points: Vector<Vector<Point3f>> = Vector::new();
    let mut skipped = Vec::new();
    let finder = CornerFinder::new(board)?;
    for (path, image) in images {
        let corners = finder.find(image)?;
        progress(path, corners.is_some());
        match corners {
            Some((corners, on_board)) => {
                used_paths.push(path.clone());
                image_points.push(corners);
                object_points.push(on_board);
            }
            None => skipped.push(path.clone()),
        }
    }
    if used_paths.len() < MIN_VIEWS {
        return Err(CalibrateError::TooFewViews {
            usable: used_paths.len(),
            needed: MIN_VIEWS,
            skipped,
        });
    }

    let image_size = Size::new(first.width as i32, first.height as i32);
    // A 1×5 start asks for exactly k1 k2 p1 p2 k3, what the station's remap uses.
    let mut camera_matrix = Mat::default();
    let mut distortion = Mat::zeros(1, 5, core::CV_64F)?.to_mat()?;
    let mut rvecs: Vector<Mat> = Vector::new();
    let mut tvecs: Vector<Mat> = Vector::new();
    let rms_px = calib3d::calibrate_camera(
        &object_points,
        &image_points,
        image_size,
        &mut camera_matrix,
        &mut distortion,
        &mut rvecs,
        &mut tvecs,
        0,
        TermCriteria::new(
            core::TermCriteria_COUNT + core::TermCriteria_EPS,
            100,
            f64::EPSILON,
        )?,
    )?;

    // Per-view errors: project the board with each view's fitted pose and compare. A view far
    // above the rest is usually blurred or has a mis-ordered detection; the user drops it.
    let mut views = Vec::with_capacity(used_paths.len());
    for (i, path) in used_paths.into_iter().enumerate() {
        let mut projected: Vector<Point2f> = Vector::new();
        calib3d::project_points_def(
            &object_points.get(i)?,
            &rvecs.get(i)?,
            &tvecs.get(i)?,
            &camera_matrix,
            &distortion,
            &mut projected,
        )?;
        let detected = image_points.get(i)?;
        let squared: f64 = detected
            .iter()
            .zip(projected.iter())
            .map(|(d, p)| {
                let (dx, dy) = (f64::from(d.x - p.x), f64::from(d.y - p.y));
                dx * dx + dy * dy
            })
            .sum();
        views.push(ViewError {
            path,
            rms_px: (squared / detected.len() as f64).sqrt(),
        });
    }

    let mut k = [[0.0; 3]; 3];
    for (r, row) in k.iter_mut().enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = *camera_matrix.at_2d::<f64>(r as i32, c as i32)?;
        }
    }
    let mut d = [0.0; 5];
    for (i, value) in d.iter_mut().enumerate() {
        *value = *distortion.at::<f64>(i as i32)?;
    }
    Ok(BoardCalibration {
        board: *board,
        image_width: first.width,
        image_height: first.height,
        camera_matrix: k,
        distortion: d,
        rms_px,
        views,
        skipped,
    })
}

/// The corners found in one view (image pixels) and where each lies on the board (mm, z = 0).
type FoundCorners = (Vector<Point2f>, Vector<Point3f>);

/// Finds a board's inner corners in images.
struct CornerFinder {
    board: BoardSpec,
    /// OpenCV's ChArUco board and its dictionary, made once.
    charuco: Option<(core::Ptr<aruco::CharucoBoard>, core::Ptr<aruco::Dictionary>)>,
}

impl CornerFinder {
    fn new(board: &BoardSpec) -> Result<CornerFinder, CalibrateError> {
        let charuco = match &board.charuco {
            Some(charuco) => Some(charuco_board(board, charuco)?),
            None => None,
        };
        Ok(CornerFinder {
            board: *board,
            charuco,
        })
    }

    /// The board's inner corners in `image`, to subpixel accuracy, with where each lies on the
    /// board (mm, z = 0); `None` when too little of the board is in view (a checkerboard: not
    /// all of it; a ChArUco board: fewer than [`MIN_CHARUCO_CORNERS`] corners).
    fn find(&self, image: &GrayImage) -> Result<Option<FoundCorners>, CalibrateError> {
        match &self.charuco {
            Some((board, dictionary)) => {
                find_charuco_corners(image, &self.board, board, dictionary)
            }
            None => Ok(find_corners(image, &self.board)?
                .map(|corners| (corners, self.board.object_points()))),
        }
    }
}

/// A ChArUco board's inner corners in one image, found from its markers: each corner's id
/// says where it is on the board (row by row, as a checkerboard's), so any part of the board
/// with enough corners will do.
fn find_charuco_corners(
    image: &GrayImage,
    spec: &BoardSpec,
    board: &core::Ptr<aruco::CharucoBoard>,
    dictionary: &core::Ptr<aruco::Dictionary>,
) -> Result<Option<FoundCorners>, CalibrateError> {
    if image.width == 0 || image.height == 0 {
        return Ok(None);
    }
    let mat = Mat::new_rows_cols_with_data(image.height as i32, image.width as i32, &image.pixels)?;
    let mut marker_corners: Vector<Vector<Point2f>> = Vector::new();
    let mut marker_ids: Vector<i32> = Vector::new();
    let mut rejected: Vector<Vector<Point2f>> = Vector::new();
    let parameters = aruco::DetectorParameters::create()?;
    aruco::detect_markers(
        &mat,
        dictionary,
        &mut marker_corners,
        &mut marker_ids,
        &parameters,
        &mut rejected,
    )?;
    if marker_ids.is_empty() {
        return Ok(None);
    }
    let mut corners: Vector<Point2f> = Vector::new();
    let mut ids: Vector<i32> = Vector::new();
    // Two markers must agree on a corner: one alone can be a false detection.
    aruco::interpolate_corners_charuco(
        &marker_corners,
        &marker_ids,
        &mat,
        board,
        &mut corners,
        &mut ids,
        &core::no_array(),
        &core::no_array(),
        2,
    )?;
    if corners.len() < MIN_CHARUCO_CORNERS {
        return Ok(None);
    }
    // In id order (row by row, as a checkerboard's), each with its place on the board.
    let all = spec.object_points();
    let mut found = Vec::with_capacity(corners.len());
    for (corner, id) in corners.iter().zip(ids.iter()) {
        let on_board = usize::try_from(id)
            .ok()
            .filter(|&id| id < all.len())
            .ok_or_else(|| {
                CalibrateError::Board(format!("ChArUco corner id {id} is not on the board"))
            })?;
        found.push((on_board, corner));
    }
    found.sort_by_key(|(id, _)| *id);
    // Corners all in one row or one column fix no pose: such a view is no use.
    let columns = spec.inner_corners.0 as usize;
    let distinct = |key: &dyn Fn(usize) -> usize| {
        let mut keys: Vec<usize> = found.iter().map(|(id, _)| key(*id)).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    if distinct(&|id| id / columns) < 2 || distinct(&|id| id % columns) < 2 {
        return Ok(None);
    }
    let corners: Vector<Point2f> = found.iter().map(|(_, corner)| *corner).collect();
    let on_board = found
        .iter()
        .map(|(id, _)| all.get(*id))
        .collect::<Result<Vector<Point3f>, _>>()?;
    Ok(Some((corners, on_board)))
}

/// The board's inner corners in one image, to subpixel accuracy, or `None` when the whole board
/// is not in view.
fn find_corners(
    image: &GrayImage,
    board: &BoardSpec,
) -> Result<Option<Vector<Point2f>>, CalibrateError> {
    if image.width == 0 || image.height == 0 {
        return Ok(None);
    }
    let mat = Mat::new_rows_cols_with_data(image.height as i32, image.width as i32, &image.pixels)?;
    let mut corners: Vector<Point2f> = Vector::new();
    // Adaptive thresholding copes with uneven light across the board; normalising copes with a
    // dim or washed-out exposure. No fast check: it saves time only on images without a board,
    // and it has been known to reject real ones.
    let found = calib3d::find_chessboard_corners(
        &mat,
        board.pattern_size(),
        &mut corners,
        calib3d::CALIB_CB_ADAPTIVE_THRESH + calib3d::CALIB_CB_NORMALIZE_IMAGE,
    )?;
    if !found {
        return Ok(None);
    }
    // The refinement window must stay inside the squares around a corner: one that reaches the
    // next corner is pulled towards it. OpenCV's usual 11 (a 23-pixel window) is the upper bound
    // for large images; small or distant boards get a smaller one.
    let half = ((min_spacing(&corners, board) / 2.0).floor() as i32 - 1).clamp(2, 11);
    imgproc::corner_sub_pix(
        &mat,
        &mut corners,
        Size::new(half, half),
        Size::new(-1, -1),
        TermCriteria::new(core::TermCriteria_COUNT + core::TermCriteria_EPS, 40, 0.001)?,
    )?;
    Ok(Some(corners))
}

/// The shortest distance, in pixels, between neighbouring corners along a row or a column.
fn min_spacing(corners: &Vector<Point2f>, board: &BoardSpec) -> f64 {
    let (cols, rows) = (
        board.inner_corners.0 as usize,
        board.inner_corners.1 as usize,
    );
    let points = corners.to_vec();
    let distance = |a: Point2f, b: Point2f| f64::from((a.x - b.x).hypot(a.y - b.y));
    let mut shortest = f64::INFINITY;
    for r in 0..rows {
        for c in 0..cols {
            let here = points[r * cols + c];
            if c + 1 < cols {
                shortest = shortest.min(distance(here, points[r * cols + c + 1]));
            }
            if r + 1 < rows {
                shortest = shortest.min(distance(here, points[(r + 1) * cols + c]));
            }
        }
    }
    shortest
}

/// A top-down view of the plane the parts lie on, made from one image of the board lying flat
/// where they pass (`linesight calibrate --plane`).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneView {
    /// From undistorted image pixels to the view's pixels.
    pub homography: [[f64; 3]; 3],
    /// The size of one of the view's pixels on the plane.
    pub mm_per_pixel: f64,
    /// The board's squares in the view: the ROI when none is given.
    pub board_roi: Roi,
}

/// The top-down view of the plane the board lies on in `image`, for a camera calibrated as
/// `calibration`: the board's inner corners are found and undistorted, and the homography
/// takes them to a square grid at `mm_per_pixel` (default: the finest the image resolves, the
/// board's closest corners one square apart), with the board's outer squares starting at the
/// view's (0, 0).
pub fn plane_view(
    path: &Path,
    image: &GrayImage,
    calibration: &BoardCalibration,
    mm_per_pixel: Option<f64>,
) -> Result<PlaneView, CalibrateError> {
    let board = &calibration.board;
    if (image.width, image.height) != (calibration.image_width, calibration.image_height) {
        return Err(CalibrateError::Image {
            path: path.to_owned(),
            message: format!(
                "is {}x{}, the calibration's views {}x{}: the plane's image must come from \
                 the same camera at the same resolution",
                image.width, image.height, calibration.image_width, calibration.image_height
            ),
        });
    }
    let not_found = || CalibrateError::Image {
        path: path.to_owned(),
        message: format!("the board ({board}) is not found: the whole board must be in view"),
    };
    let (corners, _) = CornerFinder::new(board)?
        .find(image)?
        .ok_or_else(not_found)?;
    // The grid below is every inner corner, row by row: a ChArUco board must show them all.
    let (cols, rows) = board.inner_corners;
    if corners.len() != (cols * rows) as usize {
        return Err(not_found());
    }
    let camera_matrix = Mat::from_slice_2d(&calibration.camera_matrix)?;
    let distortion = Mat::from_slice(&calibration.distortion)?.try_clone()?;
    let mut undistorted: Vector<Point2f> = Vector::new();
    calib3d::undistort_points(
        &corners,
        &mut undistorted,
        &camera_matrix,
        &distortion,
        &core::no_array(),
        &camera_matrix,
    )?;
    let mm_per_pixel = match mm_per_pixel {
        Some(mm) if mm.is_finite() && mm > 0.0 => mm,
        Some(mm) => {
            return Err(CalibrateError::Board(format!(
                "{mm} mm per pixel: must be a positive number"
            )));
        }
        None => board.square_mm / min_spacing(&undistorted, board),
    };
    let square_px = board.square_mm / mm_per_pixel;
    // Inner corner (c, r) at (c + 1, r + 1) squares: the outer squares start at (0, 0).
    let grid: Vector<Point2f> = (0..rows)
        .flat_map(|r| {
            (0..cols).map(move |c| {
                Point2f::new(
                    ((f64::from(c) + 1.0) * square_px) as f32,
                    ((f64::from(r) + 1.0) * square_px) as f32,
                )
            })
        })
        .collect();
    let homography = calib3d::find_homography(&undistorted, &grid, &mut Mat::default(), 0, 3.0)?;
    if homography.empty() {
        return Err(CalibrateError::Image {
            path: path.to_owned(),
            message: "no homography fits the board's corners".into(),
        });
    }
    let homography = super::matrix3(&homography).map_err(CalibrateError::Board)?;
    let side = |corners: u32| (f64::from(corners + 1) * square_px).floor() as u32;
    Ok(PlaneView {
        homography,
        mm_per_pixel,
        board_roi: Roi {
            x: 0,
            y: 0,
            width: side(cols),
            height: side(rows),
        },
    })
}

/// Writes `calibration` to `path` as OpenCV FileStorage YAML, with the keys
/// [`Calibration::load`] reads, plus `reprojection_error` (px) and `board`. `roi` (undistorted
/// pixels) defaults to the whole image.
///
/// The file is checked the way the station will check it, and replaces `path` only when
/// complete, so a failed write never leaves a half calibration where a station would load it.
pub fn write_yaml(
    path: &Path,
    calibration: &BoardCalibration,
    roi: Option<Roi>,
    plane: Option<&PlaneView>,
) -> Result<(), CalibrateError> {
    let file_error = |message: String| CalibrateError::File {
        path: path.to_owned(),
        message,
    };
    let write_error = |source: std::io::Error| CalibrateError::Write {
        path: path.to_owned(),
        source,
    };
    let roi = roi.unwrap_or(match plane {
        Some(plane) => plane.board_roi,
        None => Roi {
            x: 0,
            y: 0,
            width: calibration.image_width,
            height: calibration.image_height,
        },
    });
    let homography = match plane {
        Some(plane) => Some(Mat::from_slice_2d(&plane.homography)?),
        None => None,
    };
    let camera_matrix = Mat::from_slice_2d(&calibration.camera_matrix)?;
    let distortion = Mat::from_slice(&calibration.distortion)?.try_clone()?;
    // Refuse what the station would refuse (an ROI outside the image) before writing anything.
    Calibration {
        image_width: calibration.image_width,
        image_height: calibration.image_height,
        camera_matrix: camera_matrix.try_clone()?,
        distortion: distortion.try_clone()?,
        roi,
        output: None,
        homography: match &homography {
            Some(h) => Some(h.try_clone()?),
            None => None,
        },
        mm_per_pixel: plane.map(|p| p.mm_per_pixel),
        id: None,
    }
    .check()
    .map_err(file_error)?;
    let int = |key: &str, value: u32| {
        i32::try_from(value).map_err(|_| file_error(format!("`{key}` = {value} is too large")))
    };

    // OpenCV formats the text, so OpenCV's own tools read it back; the file itself is written
    // here, where I/O errors can name the path.
    let mut storage = FileStorage::new(
        ".yaml",
        FileStorage_Mode::WRITE as i32
            | FileStorage_Mode::MEMORY as i32
            | FileStorage_Mode::FORMAT_YAML as i32,
        "",
    )?;
    storage.write_comment(
        &format!(
            "Camera calibration made by `linesight calibrate` from {} views of a {}\n\
             ({}). The ROI is what the model inspects, in {}.",
            calibration.views.len(),
            if calibration.board.charuco.is_some() {
                "ChArUco board"
            } else {
                "checkerboard"
            },
            calibration.board,
            if plane.is_some() {
                "the top-down view's pixels (see homography)"
            } else {
                "undistorted pixels"
            }
        ),
        false,
    )?;
    storage.write_i32("image_width", int("image_width", calibration.image_width)?)?;
    storage.write_i32(
        "image_height",
        int("image_height", calibration.image_height)?,
    )?;
    storage.write_mat("camera_matrix", &camera_matrix)?;
    storage.write_mat("distortion_coefficients", &distortion)?;
    storage.write_i32("roi_x", int("roi_x", roi.x)?)?;
    storage.write_i32("roi_y", int("roi_y", roi.y)?)?;
    storage.write_i32("roi_width", int("roi_width", roi.width)?)?;
    storage.write_i32("roi_height", int("roi_height", roi.height)?)?;
    if let (Some(homography), Some(plane)) = (&homography, plane) {
        storage.write_comment(
            "The part's plane seen from above: the homography takes undistorted pixels to\n\
             that view, whose pixels are mm_per_pixel wide on the plane; the ROI is in it.",
            false,
        )?;
        storage.write_mat("homography", homography)?;
        storage.write_f64("mm_per_pixel", plane.mm_per_pixel)?;
    }
    storage.write_f64("reprojection_error", calibration.rms_px)?;
    storage.write_str("board", &calibration.board.to_string())?;
    let text = storage.release_and_get_string()?;

    // A temporary file beside the target, renamed over it once synced.
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    file.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

/// The tail of a too-few-views message: which images were skipped, and the usual reason.
pub(super) fn skipped_note(skipped: &[PathBuf]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let names: Vec<String> = skipped.iter().map(|p| p.display().to_string()).collect();
    format!(
        "; the board was not found in (skipped) {}: is all of it in view, and does the board \
         size count inner corners (where four squares meet), not squares?",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOARD: BoardSpec = BoardSpec {
        inner_corners: (9, 6),
        square_mm: 25.0,
        charuco: None,
    };

    fn blank(name: &str, width: u32, height: u32) -> (PathBuf, GrayImage) {
        let image = GrayImage::new(width, height, vec![200; (width * height) as usize])
            .expect("size matches");
        (PathBuf::from(name), image)
    }

    fn made() -> BoardCalibration {
        BoardCalibration {
            board: BOARD,
            image_width: 640,
            image_height: 480,
            camera_matrix: [[700.5, 0.0, 321.25], [0.0, 699.75, 238.5], [0.0, 0.0, 1.0]],
            distortion: [-0.18, 0.04, 0.001, -0.002, 0.003],
            rms_px: 0.125,
            views: Vec::new(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn written_yaml_loads_as_the_station_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("camera.yaml");
        let roi = Roi {
            x: 20,
            y: 10,
            width: 600,
            height: 460,
        };
        write_yaml(&path, &made(), Some(roi), None).expect("writes");
        let loaded = Calibration::load(&path).expect("loads");
        assert_eq!((loaded.image_width, loaded.image_height), (640, 480));
        assert_eq!(loaded.roi, roi);
        for (r, row) in made().camera_matrix.iter().enumerate() {
            for (c, want) in row.iter().enumerate() {
                let got = *loaded
                    .camera_matrix
                    .at_2d::<f64>(r as i32, c as i32)
                    .expect("element");
                assert_eq!(got, *want, "camera_matrix[{r}][{c}]");
            }
        }
        let distortion: Vec<f64> = (0..5)
            .map(|i| *loaded.distortion.at::<f64>(i).expect("element"))
            .collect();
        assert_eq!(distortion, made().distortion);
        // The extra keys are there for people and OpenCV tools; the station ignores them.
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("%YAML:1.0"), "{text}");
        let rms: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("reprojection_error:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reprojection_error in {text}"));
        assert_eq!(rms, 0.125);
        assert!(text.contains("9x6 inner corners, 25 mm squares"), "{text}");
    }

    #[test]
    fn roi_defaults_to_the_whole_image_and_must_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("camera.yaml");
        write_yaml(&path, &made(), None, None).expect("writes");
        let loaded = Calibration::load(&path).expect("loads");
        assert_eq!(
            loaded.roi,
            Roi {
                x: 0,
                y: 0,
                width: 640,
                height: 480
            }
        );
        let outside = Roi {
            x: 100,
            y: 0,
            width: 600,
            height: 480,
        };
        let other = dir.path().join("other.yaml");
        let err = write_yaml(&other, &made(), Some(outside), None).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(!other.exists(), "nothing written");
    }

    #[test]
    fn too_few_views_names_the_skipped_images() {
        let images: Vec<_> = (0..3)
            .map(|i| blank(&format!("blank{i}.png"), 64, 48))
            .collect();
        let err = calibrate_views(&images, &BOARD).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("0 usable views"), "{text}");
        assert!(text.contains("at least 5"), "{text}");
        for i in 0..3 {
            assert!(text.contains(&format!("blank{i}.png")), "{text}");
        }
        let err = calibrate_views(&[], &BOARD).unwrap_err();
        assert!(err.to_string().contains("0 usable views"), "{err}");
    }

    #[test]
    fn mixed_sizes_name_the_first_that_differs() {
        let images = vec![
            blank("a.png", 64, 48),
            blank("b.png", 64, 48),
            blank("c.png", 32, 48),
            blank("d.png", 16, 16),
        ];
        let text = calibrate_views(&images, &BOARD).unwrap_err().to_string();
        assert!(text.contains("c.png is 32x48"), "{text}");
        assert!(text.contains("a.png") && text.contains("64x48"), "{text}");
        assert!(!text.contains("d.png"), "{text}");
    }

    #[test]
    fn impossible_boards_are_refused() {
        let images = vec![blank("a.png", 64, 48)];
        let flat = BoardSpec {
            inner_corners: (9, 1),
            ..BOARD
        };
        let err = calibrate_views(&images, &flat).unwrap_err();
        assert!(err.to_string().contains("9x1"), "{err}");
        let nothing = BoardSpec {
            square_mm: 0.0,
            ..BOARD
        };
        let err = calibrate_views(&images, &nothing).unwrap_err();
        assert!(err.to_string().contains("square size"), "{err}");
        let charuco = |marker_mm, dictionary| BoardSpec {
            charuco: Some(Charuco {
                marker_mm,
                dictionary,
            }),
            ..BOARD
        };
        let err =
            calibrate_views(&images, &charuco(30.0, ArucoDictionary::Dict5x5_100)).unwrap_err();
        assert!(err.to_string().contains("below the square's"), "{err}");
        // 10 × 7 squares hold 35 markers: 4x4_50 has room, a 20 × 20 board does not.
        let large = BoardSpec {
            inner_corners: (19, 19),
            ..charuco(18.0, ArucoDictionary::Dict4x4_50)
        };
        let err = calibrate_views(&images, &large).unwrap_err();
        assert!(err.to_string().contains("200 markers"), "{err}");
        assert_eq!(
            "DICT_6X6_250".parse::<ArucoDictionary>(),
            Ok(ArucoDictionary::Dict6x6_250)
        );
        assert!("7x7_1000".parse::<ArucoDictionary>().is_err());
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not-an-image.png");
        std::fs::write(&path, b"hello").expect("write");
        let err = load_gray(&path).unwrap_err();
        assert!(err.to_string().contains("not-an-image.png"), "{err}");
        let err = load_gray(&dir.path().join("missing.png")).unwrap_err();
        assert!(err.to_string().contains("missing.png"), "{err}");
    }
}
