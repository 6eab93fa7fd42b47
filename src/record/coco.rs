//! Labels as a COCO dataset, and back: how labels move to and from Label Studio, CVAT and
//! training tools.
//!
//! One COCO image per labelled part: its `file_name` is the recorded image's content address
//! (`<sha256>.png`, served at `/api/v1/images/<sha256>`), its `id` the part id. Regions become
//! annotations: a polygon a `segmentation` polygon, a mask an uncompressed-RLE `segmentation`
//! (`iscrowd: 0`, so training tools use it), a box a `bbox` with an empty `segmentation` (a
//! box-only annotation, which pycocotools cannot turn into a mask). What COCO
//! has no field for (the whole-image verdict and class) rides in a `linesight` object on the
//! image, which other tools keep or drop; without it an image with annotations is a fail of
//! its most frequent class and one without is a pass.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::regions::{Region, Shape};
use crate::part::Verdict;

/// A COCO dataset (the subset of fields that labels use; others are ignored on import).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoDataset {
    #[serde(default)]
    pub info: serde_json::Value,
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    pub categories: Vec<CocoCategory>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// The whole-image judgement, which COCO has no field for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linesight: Option<ImageJudgement>,
}

/// A part's whole-image verdict and class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageJudgement {
    pub verdict: Verdict,
    #[serde(default)]
    pub defect_class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// Polygons (`[[x1, y1, x2, y2, …], …]`), an RLE object, or empty for a box.
    #[serde(default)]
    pub segmentation: Segmentation,
    pub bbox: [f32; 4],
    #[serde(default)]
    pub area: f32,
    #[serde(default)]
    pub iscrowd: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Polygons(Vec<Vec<f32>>),
    Rle { size: [u32; 2], counts: Vec<u32> },
}

impl Default for Segmentation {
    fn default() -> Segmentation {
        Segmentation::Polygons(Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub supercategory: String,
}

/// One labelled part to export.
#[derive(Debug, Clone)]
pub struct LabelledImage {
    pub part_id: u64,
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub verdict: Verdict,
    pub defect_class: Option<String>,
    pub regions: Vec<Region>,
}

/// A label read back from a COCO image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedLabel {
    /// The COCO image id (the part id in our exports).
    pub image_id: u64,
    /// The content address from `file_name`.
    pub image: String,
    pub verdict: Verdict,
    pub defect_class: Option<String>,
    pub regions: Vec<Region>,
}

/// Why a COCO file cannot be read as labels; every problem, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct CocoError(pub Vec<String>);

/// Every class the labels name (whole-image or region), sorted, each once.
pub fn class_names(labelled: &[LabelledImage]) -> Vec<&str> {
    let mut names: Vec<&str> = labelled
        .iter()
        .flat_map(|l| {
            l.regions
                .iter()
                .map(|r| r.class.as_str())
                .chain(l.defect_class.as_deref())
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The COCO dataset of `labelled` parts; categories numbered from 1 in name order.
pub fn export(labelled: &[LabelledImage]) -> CocoDataset {
    let names = class_names(labelled);
    let category = category_ids(&names);
    let mut annotations = Vec::new();
    for part in labelled {
        let first_id = annotations.len() as u64 + 1;
        annotations.extend(annotations_of(part, &category, first_id));
    }
    CocoDataset {
        info: info(),
        images: labelled.iter().map(image_of).collect(),
        annotations,
        categories: categories(&names),
    }
}

/// The `info` object every export starts from.
pub fn info() -> serde_json::Value {
    serde_json::json!({
        "description": "Linesight labels",
        "version": "1",
        "contributor": "linesight",
    })
}

/// Each class's category id: its place in `names` (sorted) from 1.
pub fn category_ids<'a>(names: &[&'a str]) -> HashMap<&'a str, u64> {
    names.iter().zip(1..).map(|(n, id)| (*n, id)).collect()
}

/// The categories of `names`, numbered as [`category_ids`] numbers them.
pub fn categories(names: &[&str]) -> Vec<CocoCategory> {
    names
        .iter()
        .zip(1..)
        .map(|(name, id)| CocoCategory {
            id,
            name: (*name).to_owned(),
            supercategory: "defect".into(),
        })
        .collect()
}

/// A labelled part's COCO image.
pub fn image_of(part: &LabelledImage) -> CocoImage {
    CocoImage {
        id: part.part_id,
        file_name: format!("{}.png", part.image),
        width: part.width,
        height: part.height,
        linesight: Some(ImageJudgement {
            verdict: part.verdict,
            defect_class: part.defect_class.clone(),
        }),
    }
}

/// A labelled part's regions as annotations, numbered from `first_id`. A region whose class
/// has no category is left out (`category` comes from the same labels' names).
pub fn annotations_of(
    part: &LabelledImage,
    category: &HashMap<&str, u64>,
    first_id: u64,
) -> Vec<CocoAnnotation> {
    let mut annotations = Vec::with_capacity(part.regions.len());
    for region in &part.regions {
        let Some(&category_id) = category.get(region.class.as_str()) else {
            continue;
        };
        let (segmentation, iscrowd) = match &region.shape {
            Shape::Box { .. } => (Segmentation::Polygons(Vec::new()), 0),
            Shape::Polygon { points } => (
                Segmentation::Polygons(vec![points.iter().flatten().copied().collect()]),
                0,
            ),
            // RLE with iscrowd 0: training tools (Detectron2, MMDetection) skip crowds.
            Shape::Mask { size, counts } => (
                Segmentation::Rle {
                    size: *size,
                    counts: counts.clone(),
                },
                0,
            ),
        };
        annotations.push(CocoAnnotation {
            id: first_id + annotations.len() as u64,
            image_id: part.part_id,
            category_id,
            segmentation,
            bbox: region.shape.bounding_box().unwrap_or([0.0; 4]),
            area: region.shape.area(),
            iscrowd,
        });
    }
    annotations
}

/// Where a streamed export finds its parts: the same parts, in the same order, on each of the
/// two passes [`write_json`] makes, each read when its turn comes.
pub trait LabelledSource {
    /// Calls `visit` with each part in turn.
    fn each(
        &mut self,
        visit: &mut dyn FnMut(&LabelledImage) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

impl LabelledSource for &[LabelledImage] {
    fn each(
        &mut self,
        visit: &mut dyn FnMut(&LabelledImage) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.iter().try_for_each(visit)
    }
}

/// The COCO dataset of the parts `source` visits (whose labels name `names`, sorted) as JSON
/// into `out`, holding one part at a time: the images in a first pass, the annotations in a
/// second. `info`, asked of the source after both passes (so it may count what they found),
/// comes last. Reads back as [`export`] of the same parts, with that `info`.
pub fn write_json<S: LabelledSource>(
    out: &mut impl std::io::Write,
    names: &[&str],
    source: &mut S,
    info: impl FnOnce(&S) -> serde_json::Value,
) -> std::io::Result<()> {
    let category = category_ids(names);
    out.write_all(b"{\"images\":[")?;
    let mut first = true;
    source.each(&mut |part| element(&mut *out, &mut first, &image_of(part)))?;
    out.write_all(b"],\"annotations\":[")?;
    let (mut first, mut next_id) = (true, 1);
    source.each(&mut |part| {
        for annotation in annotations_of(part, &category, next_id) {
            next_id += 1;
            element(&mut *out, &mut first, &annotation)?;
        }
        Ok(())
    })?;
    out.write_all(b"],\"categories\":")?;
    serde_json::to_writer(&mut *out, &categories(names))?;
    out.write_all(b",\"info\":")?;
    serde_json::to_writer(&mut *out, &info(source))?;
    out.write_all(b"}")?;
    Ok(())
}

/// One element of a JSON array, after a comma unless it is the `first`.
fn element(
    out: &mut impl std::io::Write,
    first: &mut bool,
    value: &impl Serialize,
) -> std::io::Result<()> {
    if !std::mem::take(first) {
        out.write_all(b",")?;
    }
    serde_json::to_writer(out, value).map_err(std::io::Error::from)
}

/// The labels a COCO dataset holds, one per image, in image order. Shapes are taken as they
/// are; whether they fit the image is checked where the image is known.
pub fn import(dataset: &CocoDataset) -> Result<Vec<ImportedLabel>, CocoError> {
    let mut problems = Vec::new();
    let categories: HashMap<u64, &str> = dataset
        .categories
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    let mut by_image: BTreeMap<u64, Vec<&CocoAnnotation>> = BTreeMap::new();
    for annotation in &dataset.annotations {
        by_image
            .entry(annotation.image_id)
            .or_default()
            .push(annotation);
    }
    let known: std::collections::HashSet<u64> = dataset.images.iter().map(|i| i.id).collect();
    for image_id in by_image.keys().filter(|id| !known.contains(id)) {
        problems.push(format!(
            "annotations name image {image_id}, which is not listed"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for image in &dataset.images {
        if !seen.insert(image.id) {
            problems.push(format!("image {} is listed twice", image.id));
        }
    }
    let mut labels = Vec::new();
    for image in &dataset.images {
        let digest = image.file_name.strip_suffix(".png").unwrap_or("");
        let content_address = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !content_address {
            problems.push(format!(
                "image {}: file_name {:?} is not a recorded image (<sha256>.png)",
                image.id, image.file_name
            ));
            continue;
        }
        let mut regions = Vec::new();
        for annotation in by_image.get(&image.id).into_iter().flatten() {
            let Some(class) = categories.get(&annotation.category_id) else {
                problems.push(format!(
                    "annotation {}: category {} is not listed",
                    annotation.id, annotation.category_id
                ));
                continue;
            };
            let class = (*class).to_owned();
            match &annotation.segmentation {
                Segmentation::Rle { size, counts } => regions.push(Region {
                    class,
                    shape: Shape::Mask {
                        size: *size,
                        counts: counts.clone(),
                    },
                }),
                Segmentation::Polygons(polygons) if polygons.is_empty() => {
                    let [x, y, width, height] = annotation.bbox;
                    regions.push(Region {
                        class,
                        shape: Shape::Box {
                            x,
                            y,
                            width,
                            height,
                        },
                    });
                }
                Segmentation::Polygons(polygons) => {
                    for flat in polygons {
                        if flat.len() % 2 != 0 {
                            problems.push(format!(
                                "annotation {}: a polygon has an odd number of coordinates",
                                annotation.id
                            ));
                            continue;
                        }
                        regions.push(Region {
                            class: class.clone(),
                            shape: Shape::Polygon {
                                points: flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect(),
                            },
                        });
                    }
                }
            }
        }
        let (verdict, defect_class) = match &image.linesight {
            Some(judgement) => (judgement.verdict, judgement.defect_class.clone()),
            None if regions.is_empty() => (Verdict::Pass, None),
            None => (Verdict::Fail, most_frequent_class(&regions)),
        };
        if verdict == Verdict::Error {
            problems.push(format!(
                "image {}: a label says pass or fail, not error",
                image.id
            ));
        }
        labels.push(ImportedLabel {
            image_id: image.id,
            image: digest.to_owned(),
            verdict,
            defect_class,
            regions,
        });
    }
    if problems.is_empty() {
        Ok(labels)
    } else {
        Err(CocoError(problems))
    }
}

/// The class most regions have (the first in name order on a tie).
fn most_frequent_class(regions: &[Region]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for region in regions {
        *counts.entry(region.class.as_str()).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == most)
        .map(|(c, _)| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(part_id: u64, image: char, verdict: Verdict, regions: Vec<Region>) -> LabelledImage {
        LabelledImage {
            part_id,
            image: image.to_string().repeat(64),
            width: 8,
            height: 6,
            verdict,
            defect_class: (verdict == Verdict::Fail).then(|| "scratch".into()),
            regions,
        }
    }

    fn region(class: &str, shape: Shape) -> Region {
        Region {
            class: class.into(),
            shape,
        }
    }

    fn sample() -> Vec<LabelledImage> {
        vec![
            part(
                4,
                'a',
                Verdict::Fail,
                vec![
                    region(
                        "scratch",
                        Shape::Polygon {
                            points: vec![[0.5, 1.0], [7.0, 1.0], [3.25, 5.0]],
                        },
                    ),
                    region(
                        "dent",
                        Shape::Box {
                            x: 1.0,
                            y: 1.0,
                            width: 2.0,
                            height: 3.0,
                        },
                    ),
                    region(
                        "dent",
                        Shape::Mask {
                            size: [6, 8],
                            counts: vec![7, 2, 39],
                        },
                    ),
                ],
            ),
            part(9, 'b', Verdict::Pass, Vec::new()),
        ]
    }

    #[test]
    fn the_streamed_json_reads_back_as_the_export_of_the_same_parts() {
        for parts in [sample(), Vec::new()] {
            let names = class_names(&parts);
            let mut out = Vec::new();
            write_json(&mut out, &names, &mut parts.as_slice(), |_| info()).unwrap();
            let streamed: CocoDataset = serde_json::from_slice(&out).unwrap();
            assert_eq!(streamed, export(&parts));
        }
    }

    #[test]
    fn an_export_reads_back_as_the_labels_it_was_made_of() {
        let labelled = sample();
        let dataset = export(&labelled);
        assert_eq!(
            dataset
                .categories
                .iter()
                .map(|c| (c.id, c.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "dent"), (2, "scratch")]
        );
        assert_eq!(dataset.annotations.len(), 3);
        let mask = &dataset.annotations[2];
        assert_eq!((mask.iscrowd, mask.area), (0, 2.0));
        assert_eq!(mask.bbox, [1.0, 1.0, 1.0, 2.0]);
        // Through JSON, as a file would travel.
        let json = serde_json::to_string(&dataset).expect("encodes");
        let read: CocoDataset = serde_json::from_str(&json).expect("decodes");
        assert_eq!(read, dataset);
        let imported = import(&read).expect("imports");
        for (back, original) in imported.iter().zip(&labelled) {
            assert_eq!(back.image_id, original.part_id);
            assert_eq!(back.image, original.image);
            assert_eq!(back.verdict, original.verdict);
            assert_eq!(back.defect_class, original.defect_class);
            assert_eq!(back.regions, original.regions);
        }
        assert_eq!(export(&labelled), dataset, "an export is deterministic");
    }

    #[test]
    fn a_foreign_file_without_our_fields_still_reads_and_bad_ones_say_every_problem() {
        let foreign = r#"{
            "images": [
                {"id": 1, "file_name": "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.png", "width": 8, "height": 6},
                {"id": 2, "file_name": "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd.png", "width": 8, "height": 6}
            ],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[1,1,4,1,4,4],[5,5,6,5,6,6]], "bbox": [1,1,5,5], "area": 9, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 4, "bbox": [0,0,2,2]}
            ],
            "categories": [{"id": 3, "name": "crack"}, {"id": 4, "name": "pit"}]
        }"#;
        let dataset: CocoDataset = serde_json::from_str(foreign).expect("decodes");
        let labels = import(&dataset).expect("imports");
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].verdict, Verdict::Fail);
        assert_eq!(labels[0].defect_class.as_deref(), Some("crack"));
        assert_eq!(labels[0].regions.len(), 3, "two polygons and a box");
        assert_eq!(
            (labels[1].verdict, labels[1].regions.len()),
            (Verdict::Pass, 0)
        );

        let bad = r#"{
            "images": [{"id": 1, "file_name": "photo.jpg", "width": 8, "height": 6},
                       {"id": 1, "file_name": "photo.jpg", "width": 8, "height": 6}],
            "annotations": [
                {"id": 7, "image_id": 5, "category_id": 1, "bbox": [0,0,1,1]}
            ],
            "categories": []
        }"#;
        let error = import(&serde_json::from_str(bad).expect("decodes")).expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("image 5, which is not listed"), "{text}");
        assert!(
            text.contains("\"photo.jpg\" is not a recorded image"),
            "{text}"
        );
    }
}
