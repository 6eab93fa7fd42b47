//! Helpers shared by the integration tests (`tests/integration`) and the GPU parity tests
//! (`tests/cuda`): where the repository's files are, and datasets generated on the fly.

use std::path::{Path, PathBuf};

use linesight::part::GrayImage;
use linesight::simulate::{DefectKind, PartGenerator};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The converted pretrained backbone, which `make test` provides (`make weights`).
pub fn backbone_weights() -> PathBuf {
    let weights = repo().join("models/efficientnet-lite0/efficientnet-lite0.safetensors");
    assert!(
        weights.exists(),
        "{} is missing: run `make weights` (make test does)",
        weights.display()
    );
    weights
}

/// Writes `image` as a PNG at `path`, creating its folder.
pub fn write_png(path: &Path, image: &GrayImage) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, linesight::record::gray_png(image).expect("png")).expect("write");
}

/// A defect's mask as an image: 255 where the part is defective.
fn mask_image(mask: &[u8], width: u32, height: u32) -> GrayImage {
    GrayImage::new(width, height, mask.iter().map(|m| m * 255).collect()).expect("mask")
}

/// An MVTec AD layout under `root`: `n_train` good parts in `train/good`; `n_test` good parts
/// in `test/good` and as many defective ones in `test/defect` (each defect kind in turn), with
/// their masks in `ground_truth/defect`.
pub fn write_mvtec_parts(
    root: &Path,
    generator: &mut PartGenerator,
    n_train: usize,
    n_test: usize,
) {
    linesight::simulate::write_mvtec_layout(root, generator, n_train, n_test)
        .expect("the dataset is written");
}

/// A magnetic-tile layout under `root`: `per_class` images each of `MT_Free`, `MT_Spot` and
/// `MT_Scratch` (`MT_<Class>/Imgs/<n>.jpg`, PNG inside: the format is sniffed), the defects'
/// masks beside them as same-stem PNGs.
pub fn write_tile_dataset(root: &Path, generator: &mut PartGenerator, per_class: usize) {
    for i in 0..per_class {
        write_png(
            &root.join(format!("MT_Free/Imgs/{i:03}.jpg")),
            &generator.render(None).image,
        );
        for (class, kind) in [("Spot", DefectKind::Spot), ("Scratch", DefectKind::Scratch)] {
            let part = generator.render(Some(kind));
            write_png(
                &root.join(format!("MT_{class}/Imgs/{i:03}.jpg")),
                &part.image,
            );
            let mask = mask_image(&part.mask, part.image.width, part.image.height);
            write_png(&root.join(format!("MT_{class}/Imgs/{i:03}.png")), &mask);
        }
    }
}
