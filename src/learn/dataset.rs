//! Reading labelled image datasets in their published layouts, in place.
//!
//! Each reader returns [`Sample`]s sorted by path, so a split by index is deterministic. Bad
//! files are not this module's concern: [`load_gray`] reports them and the caller skips them.

use std::path::{Path, PathBuf};

use crate::learn::hash::ContentHash;
use crate::part::GrayImage;

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset {root}: {message}")]
    Layout { root: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub image: PathBuf,
    /// `good`, or the defect class.
    pub class: String,
    /// Pixel mask of the defect (non-zero = defect), when the dataset has one.
    pub mask: Option<PathBuf>,
    /// The dataset's own train/test assignment (MVTec's `train/` and `test/`), when it has one.
    pub held_out: Option<bool>,
    /// Defect boxes, for datasets labelled with boxes.
    pub boxes: Vec<LabelledBox>,
}

/// One defect labelled with a box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledBox {
    /// `[x_min, y_min, x_max, y_max]` in pixels counted from 0, the maxima the last pixel in
    /// (inclusive).
    pub bbox: [u32; 4],
    /// Its defect type.
    pub class: String,
}

impl LabelledBox {
    /// A box `[x_min, y_min, x_max, y_max]` (maxima inclusive) of the defect type `class`.
    pub fn new(bbox: [u32; 4], class: impl Into<String>) -> LabelledBox {
        LabelledBox {
            bbox,
            class: class.into(),
        }
    }
}

impl Sample {
    /// Whether the sample shows a defect.
    pub fn defective(&self) -> bool {
        self.class != "good"
    }

    /// The class a model is taught the image as: its class where one of its boxes names it,
    /// else the type most of its boxes name (the first such box's on a tie), or else its
    /// class. A DeepPCB board shows defects of several types under one image label, `defect`,
    /// which stays its class for splitting the dataset (so held-out parts do not move with how
    /// boxes are named); a model that tells types apart learns each box's own type, and the
    /// image's main one.
    pub fn taught_class(&self) -> &str {
        // An image class its boxes name stands (a station's part labelled scratch with a dent
        // drawn beside its scratches is a scratched part).
        if self.boxes.iter().any(|b| b.class == self.class) {
            return &self.class;
        }
        let mut best: Option<(&str, usize)> = None;
        for labelled in &self.boxes {
            let count = (self.boxes.iter())
                .filter(|b| b.class == labelled.class)
                .count();
            if best.is_none_or(|(_, n)| count > n) {
                best = Some((&labelled.class, count));
            }
        }
        best.map_or(&self.class, |(class, _)| class)
    }
}

/// The dataset layouts Linesight reads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `MT_<Class>/Imgs/*.jpg` with same-stem `.png` masks; `MT_Free` is good.
    MagneticTile,
    /// MVTec AD: `train/good`, `test/<defect>`, `ground_truth/<defect>/<stem>_mask.png`; where
    /// a defect's regions are of several types (a station's labels), also
    /// `ground_truth/<defect>/<stem>_boxes.txt`, each region's box and type ([`write_boxes`]).
    Mvtec,
    /// NEU-DET: `images/<class>_<n>.jpg` with Pascal VOC boxes in `annotations/<class>_<n>.xml`.
    NeuDet,
    /// KolektorSDD: `kosNN/PartK.jpg` with `PartK_label.bmp`; defective when the label is
    /// non-empty.
    Kolektorsdd,
    /// DeepPCB: `PCBData/groupG/G/<id>_temp.jpg` (the defect-free template: good) and
    /// `<id>_test.jpg` (the tested board: defective, its boxes in `G_not/<id>.txt`, one
    /// `x1 y1 x2 y2 type` per line).
    Deeppcb,
    /// CrackForest (CFD): `image/NNN.jpg`, each with a crack, outlined in `seg/NNN.seg` (the
    /// Berkeley segmentation text format; segment 1 is the crack). Images without a `.seg`
    /// (`image_unlabelled/`) are not read.
    Crackforest,
}

impl Layout {
    /// Whether the dataset's defects are thin lines (cracks), which validation and held-out
    /// figures outline pixel by pixel at the images' resolution
    /// ([`crate::learn::eval::ThinDefectTruth`]), and which a supervised model may look at
    /// larger than the images to outline them.
    pub fn thin_defects(self) -> bool {
        self == Layout::Crackforest
    }

    /// Whether the dataset pairs each part with a defect-free reference of its own (DeepPCB's
    /// tested boards and their templates), which the template family compares it with.
    pub fn pairs_parts(self) -> bool {
        self == Layout::Deeppcb
    }

    /// The reference `sample` is paired with, where the layout pairs parts ([`Self::pairs_parts`]):
    /// a DeepPCB board's `<id>_temp.jpg` beside its `<id>_test.jpg`. The references themselves
    /// have none.
    pub fn reference_of(self, sample: &Sample) -> Option<PathBuf> {
        if self != Layout::Deeppcb {
            return None;
        }
        let name = sample.image.file_name()?.to_str()?;
        let (id, rest) = name.rsplit_once("_test")?;
        Some(sample.image.with_file_name(format!("{id}_temp{rest}")))
    }
}

/// All samples of a dataset, sorted by image path.
pub fn read(layout: Layout, root: &Path) -> Result<Vec<Sample>, DatasetError> {
    if !root.is_dir() {
        return Err(DatasetError::Layout {
            root: root.to_owned(),
            message: "no such folder".into(),
        });
    }
    let mut samples = match layout {
        Layout::MagneticTile => magnetic_tile(root)?,
        Layout::Mvtec => mvtec(root)?,
        Layout::NeuDet => neu_det(root)?,
        Layout::Kolektorsdd => kolektorsdd(root)?,
        Layout::Deeppcb => deeppcb(root)?,
        Layout::Crackforest => crackforest(root)?,
    };
    samples.sort_by(|a, b| a.image.cmp(&b.image));
    if samples.is_empty() {
        return Err(DatasetError::Layout {
            root: root.to_owned(),
            message: format!("no images in the {layout:?} layout"),
        });
    }
    Ok(samples)
}

fn magnetic_tile(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for class_dir in list(root)? {
        let Some(name) = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("MT_"))
        else {
            continue;
        };
        let class = if name == "Free" {
            "good".to_owned()
        } else {
            name.to_lowercase()
        };
        for image in list(&class_dir.join("Imgs"))? {
            if image.extension().is_some_and(|e| e == "jpg") {
                let mask = image.with_extension("png");
                samples.push(Sample {
                    mask: mask.is_file().then_some(mask),
                    image,
                    class: class.clone(),
                    held_out: None,
                    boxes: Vec::new(),
                });
            }
        }
    }
    Ok(samples)
}

fn mvtec(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for split in ["train", "test"] {
        let split_dir = root.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        for class_dir in list(&split_dir)? {
            let class = class_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            for image in list(&class_dir)? {
                let stem = image
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                let truth = root.join("ground_truth").join(&class);
                let mask = truth.join(format!("{stem}_mask.png"));
                let boxes_file = truth.join(format!("{stem}_boxes.txt"));
                let boxes = match std::fs::read_to_string(&boxes_file) {
                    Ok(text) => read_boxes(&text).map_err(|message| DatasetError::Image {
                        path: boxes_file.clone(),
                        message,
                    })?,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(source) => {
                        return Err(DatasetError::Io {
                            path: boxes_file,
                            source,
                        });
                    }
                };
                samples.push(Sample {
                    mask: mask.is_file().then_some(mask),
                    image,
                    class: class.clone(),
                    held_out: Some(split == "test"),
                    boxes,
                });
            }
        }
    }
    Ok(samples)
}

/// Typed boxes as the MVTec layout's `<stem>_boxes.txt` holds them: one box a line,
/// `x_min y_min x_max y_max type`, the maxima the last pixel in, the type the rest of the line
/// (read back with single spaces between its words).
pub fn write_boxes(boxes: &[LabelledBox]) -> String {
    (boxes.iter())
        .map(|b| {
            let [x0, y0, x1, y1] = b.bbox;
            format!("{x0} {y0} {x1} {y1} {}\n", b.class)
        })
        .collect()
}

/// The `<stem>_boxes.txt` ([`write_boxes`]) of a part labelled `class` with `regions` on a
/// `width` × `height` image: each region's box (the pixels it paints) and type, named as its
/// class folder would be ([`class_folder`], as the part's own class becomes its folder's
/// name, so that one class is one name whichever way it came). `None` where every region is
/// of the part's class, which its mask already says.
pub fn region_boxes(
    regions: &[crate::record::Region],
    class: &str,
    width: u32,
    height: u32,
) -> Option<String> {
    let class = class_folder(class);
    if regions.iter().all(|r| class_folder(&r.class) == class) {
        return None;
    }
    Some(every_region_box(regions, width, height))
}

/// The `<stem>_boxes.txt` ([`write_boxes`]) of every region of a part on a `width` × `height`
/// image, whatever their types: for a model that learns from boxes alone (the template
/// family), where a mask says nothing.
pub fn every_region_box(regions: &[crate::record::Region], width: u32, height: u32) -> String {
    let boxes: Vec<LabelledBox> = (regions.iter())
        .filter_map(|region| {
            Some(LabelledBox {
                bbox: region.shape.pixel_box(width, height)?,
                class: class_folder(&region.class),
            })
        })
        .collect();
    write_boxes(&boxes)
}

/// Reads what [`write_boxes`] writes; blank lines are skipped.
fn read_boxes(text: &str) -> Result<Vec<LabelledBox>, String> {
    (text.lines().filter(|l| !l.trim().is_empty()))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let mut corner = || -> Result<u32, String> {
                let field = fields.next().unwrap_or_default();
                field
                    .parse()
                    .map_err(|e| format!("{line:?}: {field:?}: {e}"))
            };
            let bbox = [corner()?, corner()?, corner()?, corner()?];
            let class = fields.collect::<Vec<_>>().join(" ");
            if class.is_empty() || bbox[0] > bbox[2] || bbox[1] > bbox[3] {
                return Err(format!("{line:?}: want x_min y_min x_max y_max type"));
            }
            Ok(LabelledBox { bbox, class })
        })
        .collect()
}

fn neu_det(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for image in list(&root.join("images"))? {
        let Some(stem) = image
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        let Some((class, _number)) = stem.rsplit_once('_') else {
            continue;
        };
        let class = class.to_owned();
        let annotation = root.join("annotations").join(format!("{stem}.xml"));
        let boxes = match std::fs::read_to_string(&annotation) {
            Ok(text) => voc_boxes(&text).map_err(|message| DatasetError::Image {
                path: annotation.clone(),
                message,
            })?,
            Err(_) => Vec::new(),
        };
        // Every box of a NEU-DET image is of the image's class (its file name's).
        let boxes = (boxes.into_iter())
            .map(|bbox| LabelledBox {
                bbox,
                class: class.clone(),
            })
            .collect();
        samples.push(Sample {
            image,
            class,
            mask: None,
            held_out: None,
            boxes,
        });
    }
    Ok(samples)
}

/// The boxes of a Pascal VOC annotation.
fn voc_boxes(xml: &str) -> Result<Vec<[u32; 4]>, String> {
    #[derive(serde::Deserialize)]
    struct Annotation {
        #[serde(default)]
        object: Vec<Object>,
    }
    #[derive(serde::Deserialize)]
    struct Object {
        bndbox: BndBox,
    }
    #[derive(serde::Deserialize)]
    struct BndBox {
        xmin: f64,
        ymin: f64,
        xmax: f64,
        ymax: f64,
    }
    let annotation: Annotation =
        quick_xml::de::from_str(xml).map_err(|e| format!("not a VOC annotation: {e}"))?;
    // VOC counts pixels from 1; samples from 0.
    annotation
        .object
        .iter()
        .map(|o| {
            let b = &o.bndbox;
            if !(b.xmin <= b.xmax && b.ymin <= b.ymax) {
                return Err(format!(
                    "box ({}, {})-({}, {}): its minimum is past its maximum",
                    b.xmin, b.ymin, b.xmax, b.ymax
                ));
            }
            Ok([b.xmin, b.ymin, b.xmax, b.ymax].map(|v| (v - 1.0).max(0.0) as u32))
        })
        .collect()
}

fn deeppcb(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let data = root.join("PCBData");
    let data = if data.is_dir() { data } else { root.to_owned() };
    let mut samples = Vec::new();
    for group in list(&data)?.into_iter().filter(|p| p.is_dir()) {
        for boards in list(&group)?.into_iter().filter(|p| p.is_dir()) {
            let Some(name) = boards.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with("_not") {
                continue;
            }
            let annotations = group.join(format!("{name}_not"));
            for image in list(&boards)? {
                let Some(stem) = image.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let (id, defective) = match stem.rsplit_once('_') {
                    Some((id, "temp")) => (id, false),
                    Some((id, "test")) => (id, true),
                    _ => continue,
                };
                let boxes = if defective {
                    let path = annotations.join(format!("{id}.txt"));
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| DatasetError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    deeppcb_boxes(&text).map_err(|message| DatasetError::Image {
                        path: path.clone(),
                        message,
                    })?
                } else {
                    Vec::new()
                };
                samples.push(Sample {
                    image,
                    class: if defective { "defect" } else { "good" }.into(),
                    mask: None,
                    held_out: None,
                    boxes,
                });
            }
        }
    }
    Ok(samples)
}

/// DeepPCB's defect types, by their number in its annotations (from 1).
pub const DEEPPCB_TYPES: [&str; 6] = [
    "open",
    "short",
    "mousebite",
    "spur",
    "spurious-copper",
    "pin-hole",
];

/// The boxes of a DeepPCB annotation: `x1 y1 x2 y2 type` per line, spaces or commas, `type`
/// one of [`DEEPPCB_TYPES`] by its number.
fn deeppcb_boxes(text: &str) -> Result<Vec<LabelledBox>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let numbers: Vec<u32> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|f| !f.is_empty())
                .map(|f| f.parse::<u32>().map_err(|e| format!("{line:?}: {e}")))
                .collect::<Result<_, _>>()?;
            match numbers[..] {
                [x1, y1, x2, y2, kind] if x1 <= x2 && y1 <= y2 => {
                    let class = (kind.checked_sub(1))
                        .and_then(|k| DEEPPCB_TYPES.get(k as usize))
                        .ok_or_else(|| format!("{line:?}: defect type {kind} is none of 1 to 6"))?;
                    Ok(LabelledBox {
                        bbox: [x1, y1, x2, y2],
                        class: (*class).to_owned(),
                    })
                }
                _ => Err(format!("{line:?}: want x1 y1 x2 y2 type")),
            }
        })
        .collect()
}

fn crackforest(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for image in list(&root.join("image"))? {
        if image.extension().is_none_or(|e| e != "jpg") {
            continue;
        }
        let Some(stem) = image.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let seg = root.join("seg").join(format!("{stem}.seg"));
        if !seg.is_file() {
            continue;
        }
        samples.push(Sample {
            image,
            class: "crack".into(),
            mask: Some(seg),
            held_out: None,
            boxes: Vec::new(),
        });
    }
    Ok(samples)
}

/// Reads a defect mask: an image (non-zero = defect), or a Berkeley `.seg` file, whose segment
/// 1 is the defect (CrackForest's convention: 0 the road, 1 the crack, 2 and up road the
/// cracks enclose).
pub fn load_mask(path: &Path) -> Result<GrayImage, DatasetError> {
    if path.extension().is_some_and(|e| e == "seg") {
        let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
            path: path.to_owned(),
            source,
        })?;
        return berkeley_seg(&text).map_err(|message| DatasetError::Image {
            path: path.to_owned(),
            message,
        });
    }
    load_gray(path)
}

/// A mask from the Berkeley segmentation format: a header (`width W`, `height H`, …, `data`),
/// then one `segment row first_column last_column` run per line; pixels of segment 1 are 255.
fn berkeley_seg(text: &str) -> Result<GrayImage, String> {
    let mut lines = text.lines();
    let (mut width, mut height, mut data) = (None, None, false);
    for line in lines.by_ref() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("data"), _) => {
                data = true;
                break;
            }
            (Some("width"), Some(n)) => width = n.parse::<u32>().ok(),
            (Some("height"), Some(n)) => height = n.parse::<u32>().ok(),
            // Mirrored or inverted files would put the crack elsewhere: refused, not misread.
            (Some(flag @ ("invert" | "flipflop")), Some(n)) if n != "0" => {
                return Err(format!("`{flag} {n}` is not supported"));
            }
            _ => {}
        }
    }
    let (Some(width), Some(height), true) = (width, height, data) else {
        return Err("no `width`, `height` and `data` lines: not a .seg file, or cut short".into());
    };
    // 64 megapixels: larger than any camera here, small enough to allocate without fear.
    if width == 0 || height == 0 || u64::from(width) * u64::from(height) > 1 << 26 {
        return Err(format!("{width}×{height} is not an image size"));
    }
    let mut pixels = vec![0u8; width as usize * height as usize];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let numbers: Vec<u32> = line
            .split_whitespace()
            .map(|f| f.parse::<u32>().map_err(|e| format!("{line:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [segment, row, first, last] = numbers[..] else {
            return Err(format!(
                "{line:?}: want segment row first_column last_column"
            ));
        };
        if row >= height || first > last || last >= width {
            return Err(format!("{line:?}: outside the {width}×{height} image"));
        }
        if segment == 1 {
            let start = (row * width) as usize;
            pixels[start + first as usize..=start + last as usize].fill(255);
        }
    }
    GrayImage::new(width, height, pixels).ok_or_else(|| "the mask is not its size".to_owned())
}

fn kolektorsdd(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for item in list(root)? {
        if !item.is_dir() {
            continue;
        }
        for image in list(&item)? {
            if image.extension().is_none_or(|e| e != "jpg") {
                continue;
            }
            let stem = image
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let mask = item.join(format!("{stem}_label.bmp"));
            // The image label is whether the mask marks anything; an unreadable mask is a
            // problem the caller sees when it loads the sample, so it counts as defective here.
            let defective = load_gray(&mask)
                .map(|m| m.pixels.iter().any(|&p| p > 0))
                .unwrap_or(true);
            samples.push(Sample {
                image,
                class: if defective {
                    "crack".into()
                } else {
                    "good".into()
                },
                mask: Some(mask),
                held_out: held_out_item(&item),
                boxes: Vec::new(),
            });
        }
    }
    Ok(samples)
}

/// KolektorSDD is split by physical item (`kosNN`), as its authors do: the 8 photographs of
/// one commutator are alike (two items even share JPEGs), so splitting inside an item would
/// test on what training saw. Items with `NN % 8 == 5` are held out.
fn held_out_item(item: &Path) -> Option<bool> {
    let number: u32 = item
        .file_name()?
        .to_str()?
        .strip_prefix("kos")?
        .parse()
        .ok()?;
    Some(number % 8 == 5)
}

/// SHA-256 over the images' file names and bytes, in the given order: the training-data hash
/// of a model card. An unreadable file is an error, not silently left out.
pub fn content_digest<'a>(
    images: impl Iterator<Item = &'a PathBuf>,
) -> Result<String, DatasetError> {
    let mut hash = ContentHash::new();
    for path in images {
        hash.file(path).map_err(|source| DatasetError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(hash.hex())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatasetError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// The image at `path` opened with its format told by the content (a file's name may lie
/// about it), for [`image_dimensions`] and [`load_gray`] alike.
fn open_image(
    path: &Path,
) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, DatasetError> {
    image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(|e| image_error(path, e))
}

fn image_error(path: &Path, error: impl std::fmt::Display) -> DatasetError {
    DatasetError::Image {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// The width and height of the image at `path`, from its header, read as [`load_gray`]
/// reads the image.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32), DatasetError> {
    open_image(path)?
        .into_dimensions()
        .map_err(|e| image_error(path, e))
}

/// Reads an image file as 8-bit grey.
pub fn load_gray(path: &Path) -> Result<GrayImage, DatasetError> {
    let image = open_image(path)?
        .decode()
        .map_err(|e| image_error(path, e))?;
    let luma = image.to_luma8();
    let (width, height) = luma.dimensions();
    Ok(GrayImage {
        width,
        height,
        pixels: luma.into_raw(),
    })
}

/// A folder name for a class: letters, digits, `-` and `_` kept, anything else `_`, so no
/// class name can climb out of its folder or clash with the file system; `good` (the good
/// images' folder in the MVTec AD layout) becomes `good_`.
pub fn class_folder(class: &str) -> String {
    let name: String = class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name == "good" { "good_".into() } else { name }
}

/// Which images of a dataset an evaluation scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalPart {
    /// The part training held out, as the model's family splits the dataset.
    HeldOut,
    /// Every image in the folder: a test set of its own, which training never saw.
    All,
}

impl EvalPart {
    /// The samples this part names, and what they are in words: all of them, or the part
    /// `held_out` picks (each model family splits datasets its own way).
    pub fn pick(
        self,
        samples: Vec<Sample>,
        held_out: impl FnOnce(&[Sample]) -> (Vec<Sample>, String),
    ) -> (Vec<Sample>, String) {
        match self {
            EvalPart::All => (samples, "every image of the folder".to_owned()),
            EvalPart::HeldOut => held_out(&samples),
        }
    }
}

/// Splits samples into (train, held out). The dataset's own split wins where it has one;
/// otherwise every `k`-th sample of each class is held out. Deterministic: it depends only on
/// the sorted paths.
pub fn split_every(samples: &[Sample], k: usize) -> (Vec<Sample>, Vec<Sample>) {
    let mut train = Vec::new();
    let mut held_out = Vec::new();
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for sample in samples {
        let index = seen.entry(sample.class.as_str()).or_default();
        if sample.held_out.unwrap_or(*index % k == k - 1) {
            held_out.push(sample.clone());
        } else {
            train.push(sample.clone());
        }
        *index += 1;
    }
    (train, held_out)
}

/// Like [`split_every`], but ignoring the dataset's own assignment: for validation parts cut
/// from a training part, and for datasets whose own training part cannot serve.
pub fn split_every_ignoring_own(samples: &[Sample], k: usize) -> (Vec<Sample>, Vec<Sample>) {
    let unassigned: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            held_out: None,
            ..s.clone()
        })
        .collect();
    split_every(&unassigned, k)
}

/// One part of a k-fold cross-validation: fold `index` (from 0) of `of` is held out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fold {
    pub index: usize,
    pub of: usize,
}

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fold {} of {}", self.index + 1, self.of)
    }
}

/// Holds out `fold` of `samples`, in place of the dataset's own split: whole items where the
/// layout has them (KolektorSDD's `kosNN` folders, each item's position among the sorted items
/// deciding its fold; its photographs of one part are alike), otherwise every `of`-th image of
/// each class, starting at the fold's index. Every sample is held out by exactly one fold.
pub fn hold_out_fold(samples: &mut [Sample], layout: Layout, fold: Fold) {
    let of = fold.of.max(1);
    if layout == Layout::Kolektorsdd {
        let items: std::collections::BTreeSet<PathBuf> = samples
            .iter()
            .filter_map(|s| s.image.parent().map(Path::to_owned))
            .collect();
        for sample in samples.iter_mut() {
            let position = sample
                .image
                .parent()
                .and_then(|item| items.iter().position(|i| i == item))
                .unwrap_or(0);
            sample.held_out = Some(position % of == fold.index);
        }
        return;
    }
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for sample in samples.iter_mut() {
        let index = seen.entry(sample.class.clone()).or_default();
        sample.held_out = Some(*index % of == fold.index);
        *index += 1;
    }
}

/// A training part in `k` folds, the way [`split_validation`] cuts it: the last fold is its
/// validation part, and every sample is in exactly one fold (a fold may be empty), in the
/// part's order, without the dataset's own assignment.
pub fn split_folds(samples: &[Sample], layout: Layout, k: usize) -> Vec<Vec<Sample>> {
    let k = k.max(1);
    (0..k)
        .map(|index| {
            let mut part = samples.to_vec();
            hold_out_fold(&mut part, layout, Fold { index, of: k });
            part.into_iter()
                .filter(|s| s.held_out == Some(true))
                .map(|s| Sample {
                    held_out: None,
                    ..s
                })
                .collect()
        })
        .collect()
}

/// The validation part cut from a training part: every `k`-th item where the layout has items
/// (KolektorSDD's photographs of one part are alike: one in each part would choose the
/// threshold on what the fit saw), otherwise every `k`-th image of each class, as
/// [`split_every_ignoring_own`]. Returns (the rest, validation), without the dataset's own
/// assignment.
pub fn split_validation(
    samples: &[Sample],
    layout: Layout,
    k: usize,
) -> (Vec<Sample>, Vec<Sample>) {
    let k = k.max(1);
    let mut part = samples.to_vec();
    hold_out_fold(
        &mut part,
        layout,
        Fold {
            index: k - 1,
            of: k,
        },
    );
    let (validation, rest): (Vec<Sample>, Vec<Sample>) =
        part.into_iter().partition(|s| s.held_out == Some(true));
    let unassigned = |part: Vec<Sample>| -> Vec<Sample> {
        part.into_iter()
            .map(|s| Sample {
                held_out: None,
                ..s
            })
            .collect()
    };
    (unassigned(rest), unassigned(validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_folders_cannot_leave_their_place() {
        assert_eq!(class_folder("scratch"), "scratch");
        assert_eq!(class_folder("../../etc"), "______etc");
        assert_eq!(class_folder("good"), "good_");
        assert_eq!(class_folder("dent/deep ü"), "dent_deep__");
    }

    fn sample(class: &str, n: usize) -> Sample {
        Sample {
            image: PathBuf::from(format!("{class}/{n}.png")),
            class: class.into(),
            mask: None,
            held_out: None,
            boxes: Vec::new(),
        }
    }

    #[test]
    fn split_holds_out_every_kth_per_class() {
        let samples: Vec<Sample> = (0..8)
            .map(|n| sample("good", n))
            .chain((0..4).map(|n| sample("crack", n)))
            .collect();
        let (train, held_out) = split_every(&samples, 4);
        let names: Vec<String> = held_out
            .iter()
            .map(|s| s.image.display().to_string())
            .collect();
        assert_eq!(names, ["good/3.png", "good/7.png", "crack/3.png"]);
        assert_eq!(train.len(), 9);
    }

    #[test]
    fn neu_det_and_kolektorsdd_layouts_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let blank = GrayImage::new(4, 4, vec![0; 16]).expect("size");
        let png = crate::record::gray_png(&blank).expect("png");
        let write = |path: &str, bytes: &[u8]| {
            std::fs::create_dir_all(root.join(path).parent().expect("parent")).expect("mkdir");
            std::fs::write(root.join(path), bytes).expect("write");
        };
        write("neu/images/rolled-in_scale_7.jpg", &png);
        write(
            "neu/annotations/rolled-in_scale_7.xml",
            b"<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>2</ymax></bndbox></object></annotation>",
        );
        let neu = read(Layout::NeuDet, &root.join("neu")).expect("neu-det");
        assert_eq!(
            (neu[0].class.as_str(), neu[0].boxes.as_slice()),
            // VOC's pixels counted from 1, the sample's from 0.
            (
                "rolled-in_scale",
                &[LabelledBox::new([0, 0, 2, 1], "rolled-in_scale")][..]
            )
        );
        assert_eq!(neu[0].taught_class(), "rolled-in_scale");

        // KolektorSDD: the label BMP decides the class.
        let mut marked = blank.clone();
        marked.pixels[5] = 255;
        for (part, mask) in [("Part0", &blank), ("Part1", &marked)] {
            let mut bmp = std::io::Cursor::new(Vec::new());
            image::GrayImage::from_raw(4, 4, mask.pixels.clone())
                .expect("mask")
                .write_to(&mut bmp, image::ImageFormat::Bmp)
                .expect("bmp");
            write(&format!("ksdd/kos01/{part}.jpg"), &png);
            write(&format!("ksdd/kos01/{part}_label.bmp"), bmp.get_ref());
        }
        let classes: Vec<String> = read(Layout::Kolektorsdd, &root.join("ksdd"))
            .expect("ksdd")
            .into_iter()
            .map(|s| s.class)
            .collect();
        assert_eq!(classes, ["good", "crack"]);
    }

    #[test]
    fn every_image_is_held_out_by_exactly_one_fold() {
        let mut samples: Vec<Sample> = (0..7)
            .map(|n| sample("good", n))
            .chain((0..5).map(|n| sample("scratch", n)))
            .collect();
        let mut held = vec![0; samples.len()];
        for index in 0..3 {
            let fold = Fold { index, of: 3 };
            hold_out_fold(&mut samples, Layout::MagneticTile, fold);
            for (count, s) in held.iter_mut().zip(&samples) {
                *count += usize::from(s.held_out == Some(true));
            }
            // Stratified: each class spread over the folds.
            let out = |class: &str| {
                samples
                    .iter()
                    .filter(|s| s.class == class && s.held_out == Some(true))
                    .count()
            };
            assert!((2..=3).contains(&out("good")), "{fold}: {}", out("good"));
            assert!((1..=2).contains(&out("scratch")), "{fold}");
        }
        assert!(held.iter().all(|&n| n == 1), "{held:?}");
    }

    #[test]
    fn kolektor_folds_hold_out_whole_items() {
        let mut samples: Vec<Sample> = ["kos01", "kos02", "kos05", "kos06"]
            .iter()
            .flat_map(|item| {
                (0..3).map(move |k| Sample {
                    image: PathBuf::from(format!("ksdd/{item}/Part{k}.jpg")),
                    ..sample("good", k)
                })
            })
            .collect();
        let mut held = vec![0; samples.len()];
        for index in 0..2 {
            hold_out_fold(&mut samples, Layout::Kolektorsdd, Fold { index, of: 2 });
            for item in samples.chunks(3) {
                assert!(item.iter().all(|s| s.held_out == item[0].held_out));
            }
            for (count, s) in held.iter_mut().zip(&samples) {
                *count += usize::from(s.held_out == Some(true));
            }
            assert_eq!(
                samples.iter().filter(|s| s.held_out == Some(true)).count(),
                6
            );
        }
        assert!(held.iter().all(|&n| n == 1), "{held:?}");
    }

    /// `items` KolektorSDD items (`kosNN`) of two good photographs each.
    fn kolektor_items(items: usize) -> Vec<Sample> {
        (1..=items)
            .flat_map(|item| {
                (0..2).map(move |k| Sample {
                    image: PathBuf::from(format!("ksdd/kos{item:02}/Part{k}.jpg")),
                    held_out: Some(false),
                    ..sample("good", k)
                })
            })
            .collect()
    }

    #[test]
    fn validation_cuts_whole_items_where_there_are_items() {
        let samples = kolektor_items(6);
        let (rest, validation) = split_validation(&samples, Layout::Kolektorsdd, 3);
        let item = |s: &Sample| s.image.parent().map(Path::to_owned);
        let names: Vec<_> = validation.iter().filter_map(item).collect();
        assert_eq!(validation.len(), 4, "two items of two photographs");
        assert!(
            rest.iter()
                .all(|s| !names.contains(&item(s).expect("item")))
        );
        assert!(rest.iter().chain(&validation).all(|s| s.held_out.is_none()));
        // Without items: the same cut as every k-th image of each class.
        let flat: Vec<Sample> = (0..7).map(|n| sample("good", n)).collect();
        assert_eq!(
            split_validation(&flat, Layout::MagneticTile, 3),
            split_every_ignoring_own(&flat, 3)
        );
    }

    /// The folds cover the part once, whole items together, and the last is the validation
    /// part `split_validation` cuts.
    #[test]
    fn folds_cover_the_part_once_and_end_with_its_validation_part() {
        let samples = kolektor_items(7);
        let folds = split_folds(&samples, Layout::Kolektorsdd, 3);
        assert_eq!(folds.len(), 3);
        let mut seen: Vec<PathBuf> = folds.iter().flatten().map(|s| s.image.clone()).collect();
        seen.sort();
        let mut all: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
        all.sort();
        assert_eq!(seen, all, "every sample in exactly one fold");
        // Both photographs of an item in the same fold.
        let item = |s: &Sample| s.image.parent().map(Path::to_owned).expect("item");
        for (i, fold) in folds.iter().enumerate() {
            assert!(fold.iter().all(|s| s.held_out.is_none()));
            for sample in fold {
                for (j, other) in folds.iter().enumerate() {
                    assert!(
                        i == j || other.iter().all(|o| item(o) != item(sample)),
                        "{} split over folds {i} and {j}",
                        sample.image.display()
                    );
                }
            }
        }
        let (_, validation) = split_validation(&samples, Layout::Kolektorsdd, 3);
        assert_eq!(folds[2], validation);
        let flat: Vec<Sample> = (0..11).map(|n| sample("good", n)).collect();
        let folds = split_folds(&flat, Layout::MagneticTile, 5);
        assert_eq!(folds.iter().map(Vec::len).sum::<usize>(), 11);
        assert_eq!(folds[4], split_validation(&flat, Layout::MagneticTile, 5).1);
    }

    #[test]
    fn deeppcb_pairs_read_as_good_templates_and_defective_boards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boards = dir.path().join("PCBData/group00041/00041");
        let notes = dir.path().join("PCBData/group00041/00041_not");
        std::fs::create_dir_all(&boards).expect("mkdir");
        std::fs::create_dir_all(&notes).expect("mkdir");
        for name in ["00041001_temp.jpg", "00041001_test.jpg", "readme.md"] {
            std::fs::write(boards.join(name), b"").expect("write");
        }
        std::fs::write(
            notes.join("00041001.txt"),
            "540 140 571 182 1\n342,492,375,521,3\n",
        )
        .expect("write");
        let samples = read(Layout::Deeppcb, dir.path()).expect("reads");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].class, "good");
        assert!(samples[0].boxes.is_empty());
        // The board's class splits the dataset; each box names its own type, and the image is
        // taught as the type most of its boxes name (the first one's on a tie).
        assert_eq!(samples[1].class, "defect");
        let boxes: Vec<([u32; 4], &str)> = (samples[1].boxes.iter())
            .map(|b| (b.bbox, b.class.as_str()))
            .collect();
        assert_eq!(
            boxes,
            [
                ([540, 140, 571, 182], "open"),
                ([342, 492, 375, 521], "mousebite")
            ]
        );
        // Each tested board is paired with its template; the template with nothing.
        assert_eq!(
            Layout::Deeppcb.reference_of(&samples[1]),
            Some(boards.join("00041001_temp.jpg"))
        );
        assert_eq!(Layout::Deeppcb.reference_of(&samples[0]), None);
        assert_eq!(Layout::Mvtec.reference_of(&samples[1]), None);
        assert_eq!(samples[1].taught_class(), "open");
        assert_eq!(samples[0].taught_class(), "good");
        std::fs::write(
            notes.join("00041001.txt"),
            "540 140 571 182 1\n342 492 375 521 6\n10 10 20 20 6\n",
        )
        .expect("write");
        let samples = read(Layout::Deeppcb, dir.path()).expect("reads");
        assert_eq!(samples[1].taught_class(), "pin-hole");
        // A broken annotation names its file, and so does a type DeepPCB does not have.
        for broken in ["540 140 1\n", "540 140 571 182 7\n", "540 140 571 182 0\n"] {
            std::fs::write(notes.join("00041001.txt"), broken).expect("write");
            let error = read(Layout::Deeppcb, dir.path()).expect_err("refused");
            assert!(error.to_string().contains("00041001.txt"), "{error}");
        }
    }

    #[test]
    fn kolektor_items_are_held_out_whole() {
        assert_eq!(held_out_item(Path::new("ksdd/kos05")), Some(true));
        assert_eq!(held_out_item(Path::new("ksdd/kos13")), Some(true));
        assert_eq!(held_out_item(Path::new("ksdd/kos01")), Some(false));
        assert_eq!(held_out_item(Path::new("ksdd/other")), None);
    }

    #[test]
    fn image_dimensions_are_read_from_the_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A PNG under a JPEG's name, as the tile datasets the tests write (and a camera's
        // export may) have them: read as what it is, like load_gray reads it.
        let misnamed = dir.path().join("tile.jpg");
        let png = crate::record::gray_png(&GrayImage::new(6, 4, vec![0; 24]).expect("size"))
            .expect("png");
        std::fs::write(&misnamed, png).expect("write");
        assert!(image::image_dimensions(&misnamed).is_err());
        assert_eq!(image_dimensions(&misnamed).expect("dimensions"), (6, 4));
        let broken = dir.path().join("broken.png");
        std::fs::write(&broken, b"not an image").expect("write");
        let error = image_dimensions(&broken)
            .expect_err("not an image")
            .to_string();
        assert!(error.contains("broken.png"), "{error}");
        assert!(image_dimensions(&dir.path().join("gone.png")).is_err());
    }

    #[test]
    fn content_digest_sees_names_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        std::fs::write(&a, b"one").expect("write");
        std::fs::write(&b, b"two").expect("write");
        let both = content_digest([&a, &b].into_iter()).expect("digest");
        assert_eq!(both.len(), 64);
        assert_ne!(both, content_digest([&b, &a].into_iter()).expect("digest"));
        std::fs::write(&b, b"tw0").expect("write");
        assert_ne!(both, content_digest([&a, &b].into_iter()).expect("digest"));
        assert!(content_digest([&dir.path().join("gone.png")].into_iter()).is_err());
    }

    #[test]
    fn crackforest_is_read_with_its_seg_masks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["image", "seg", "image_unlabelled"] {
            std::fs::create_dir_all(root.join(sub)).expect("dir");
        }
        let jpg = |path: &Path| {
            image::GrayImage::new(6, 4).save(path).expect("jpg");
        };
        jpg(&root.join("image/001.jpg"));
        jpg(&root.join("image/002.jpg")); // no .seg: not read
        jpg(&root.join("image_unlabelled/201.jpg"));
        std::fs::write(
            root.join("seg/001.seg"),
            "format ascii cr\nwidth 6\nheight 4\nsegments 2\ndata\n\
             0 0 0 5\n0 1 0 1\n1 1 2 3\n0 1 4 5\n0 2 0 5\n1 3 5 5\n2 3 0 4\n",
        )
        .expect("seg");
        let samples = read(Layout::Crackforest, root).expect("layout reads");
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].class, "crack");
        let mask = load_mask(samples[0].mask.as_deref().expect("mask")).expect("mask reads");
        assert_eq!((mask.width, mask.height), (6, 4));
        let crack: Vec<usize> = (0..mask.pixels.len())
            .filter(|&i| mask.pixels[i] == 255)
            .collect();
        assert_eq!(
            crack,
            [8, 9, 23],
            "row 1 columns 2–3 and row 3 column 5; segment 2 (road the crack encloses) is not crack"
        );

        for bad in [
            "width 6\nheight 4\ndata\n1 4 0 0\n",
            "width 6\nheight 4\ndata\n1 0 3 9\n",
            "width 6\nheight 4\ndata\n1 0 3\n",
            "height 4\ndata\n",
            "width 6\nheight 4\n",
            "width 6\nheight 4\nflipflop 1\ndata\n",
            "width 100000\nheight 100000\ndata\n",
        ] {
            assert!(berkeley_seg(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn voc_boxes_are_read() {
        let xml = "<annotation><size><width>200</width></size>\
            <object><name>crazing</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>193</xmax><ymax>194</ymax></bndbox></object>\
            <object><name>crazing</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>\
            </annotation>";
        assert_eq!(
            voc_boxes(xml).expect("parses"),
            [[1, 2, 192, 193], [9, 19, 29, 39]]
        );
        let flipped = "<annotation><object><bndbox><xmin>30</xmin><ymin>3</ymin>\
            <xmax>10</xmax><ymax>9</ymax></bndbox></object></annotation>";
        assert!(
            voc_boxes(flipped)
                .expect_err("refused")
                .contains("past its maximum")
        );
        assert!(
            voc_boxes("<annotation><object><bndbox><xmin>x</xmin></bndbox></object></annotation>")
                .is_err()
        );
    }

    #[test]
    fn mvtec_layout_is_read_with_masks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let png = crate::record::gray_png(&GrayImage::new(4, 4, vec![0; 16]).expect("size"))
            .expect("png");
        for (path, bytes) in [
            ("train/good/000.png", &png),
            ("test/good/000.png", &png),
            ("test/scratch/000.png", &png),
            ("ground_truth/scratch/000_mask.png", &png),
        ] {
            std::fs::create_dir_all(root.join(path).parent().expect("parent")).expect("mkdir");
            std::fs::write(root.join(path), bytes).expect("write");
        }
        let samples = read(Layout::Mvtec, root).expect("read");
        assert_eq!(samples.len(), 3);
        let scratch = samples
            .iter()
            .find(|s| s.class == "scratch")
            .expect("scratch");
        assert!(scratch.mask.is_some() && scratch.defective());
        assert_eq!(load_gray(&scratch.image).expect("load").width, 4);
        assert!(
            scratch.boxes.is_empty(),
            "MVTec's own folders have no boxes"
        );
        let err = read(Layout::Mvtec, &root.join("missing")).unwrap_err();
        assert!(err.to_string().contains("no such folder"));

        // A station's label with regions of two types: each region's box, of its type. The
        // part's class stands where a box names it, however many boxes name another.
        let boxes = vec![
            LabelledBox::new([3, 3, 3, 3], "oil stain"),
            LabelledBox::new([0, 1, 2, 3], "scratch"),
            LabelledBox::new([0, 0, 0, 0], "oil stain"),
        ];
        let boxes_file = root.join("ground_truth/scratch/000_boxes.txt");
        std::fs::write(&boxes_file, write_boxes(&boxes)).expect("write");
        let samples = read(Layout::Mvtec, root).expect("read");
        let scratch = samples.iter().find(|s| s.class == "scratch");
        assert_eq!(scratch.map(|s| &s.boxes), Some(&boxes));
        assert_eq!(scratch.map(Sample::taught_class), Some("scratch"));
        // What a station writes for a part labelled scratch with a scratch and a dent drawn;
        // nothing where every region is a scratch.
        let region = |class: &str, x: f32| crate::record::Region {
            class: class.into(),
            shape: crate::record::Shape::Box {
                x,
                y: 1.0,
                width: 2.0,
                height: 3.0,
            },
        };
        let regions = [region("scratch", 0.0), region("dent", 2.5)];
        assert_eq!(
            region_boxes(&regions, "scratch", 4, 4).as_deref(),
            Some("0 1 1 3 scratch\n2 1 3 3 dent\n"),
            "the pixels whose centres each region covers"
        );
        assert_eq!(region_boxes(&regions[..1], "scratch", 4, 4), None);
        // Types named as their class folders are, as the part's class is.
        let named = [region("oil stain", 0.0), region("good", 2.5)];
        assert_eq!(
            region_boxes(&named, "oil stain", 4, 4).as_deref(),
            Some("0 1 1 3 oil_stain\n2 1 3 3 good_\n")
        );
        assert_eq!(region_boxes(&named[..1], "oil stain", 4, 4), None);
        for (bad, says) in [
            ("0 1 2 3\n", "want x_min"),
            ("0 1 x 3 dent\n", "\"x\""),
            ("4 1 2 3 dent\n", "want x_min"),
        ] {
            std::fs::write(&boxes_file, bad).expect("write");
            let err = read(Layout::Mvtec, root).unwrap_err().to_string();
            assert!(
                err.contains("000_boxes.txt") && err.contains(says),
                "{bad:?}: {err}"
            );
        }
    }
}
