//! Per-part costs on the station's hot path, release build: `make bench`.

use std::path::Path;

use candle_core::Device;
use candle_core::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linesight::calibrate::{Calibration, Undistorter};
use linesight::models::Detector;
use linesight::models::anomaly::train::COARSE_INPUT_SIZE;
use linesight::models::anomaly::{
    CoarseImage, ImageGaussian, NoiseDiscriminator, PatchCore, PatchHead, discriminator,
    nearest_distances, search_layout,
};
use linesight::models::backbone::bf16::Precision;
use linesight::models::backbone::{FEATURE_DIM, PatchFeatures, PatchStages};
use linesight::models::boxes::cell_boxes;
use linesight::models::defect_net::DefectModel;
use linesight::models::supervised::{BoxShape, SupervisedModel, boxes_from_heat_map};
use linesight::record::gray_png;
use linesight::simulate::{DefectKind, FRAME_SIZE, PartGenerator};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn hot_path(c: &mut Criterion) {
    let mut generator = PartGenerator::new(1, FRAME_SIZE, FRAME_SIZE, 0.0);
    let raw = generator.render(Some(DefectKind::Scratch)).image;
    let calibration = Calibration::load(&repo("calibration/simulated.yaml")).expect("calibration");
    let undistorter = Undistorter::new(&calibration).expect("maps");
    let calibrated = undistorter.apply(&raw).expect("calibrated");
    let model = DefectModel::load(&repo("models/defect-net-sim"), &Device::Cpu).expect("model");

    c.bench_function("calibrate/undistort_crop_256", |b| {
        b.iter(|| undistorter.apply(&raw).expect("apply"))
    });
    c.bench_function("inspect/score_224", |b| {
        b.iter(|| model.score(&calibrated).expect("score"))
    });
    // The drift watch's per-part cost on the inspect thread: the image's six statistics and
    // their novelty against the shipped model's training.
    let reference = model
        .card
        .head
        .drift
        .clone()
        .expect("the shipped card's drift reference");
    c.bench_function("inspect/input_novelty_224", |b| {
        b.iter(|| reference.novelty_of(&calibrated))
    });
    let large = linesight::part::GrayImage::new(
        1280,
        1024,
        (0..1280 * 1024).map(|i| (i % 251) as u8).collect(),
    )
    .expect("an image");
    c.bench_function("inspect/input_novelty_1280x1024", |b| {
        b.iter(|| reference.novelty_of(&large))
    });
    c.bench_function("record/png_encode_224", |b| {
        b.iter(|| gray_png(&calibrated).expect("png"))
    });
    c.bench_function("simulate/render_part_256", |b| {
        b.iter(|| generator.render(Some(DefectKind::Crack)))
    });
    // The supervised model's boxes on a defective board's map at input 512 (64×64 patches of a
    // 640-pixel image, as DeepPCB's): eight defects of 3×3 patches past the cut.
    let mut values = vec![0.02f32; 64 * 64];
    for k in 0..8 {
        let (cx, cy) = (6 + 7 * k, 10 + 5 * k);
        for dy in 0..3 {
            for dx in 0..3 {
                values[(cy + dy) * 64 + cx + dx] = 0.9;
            }
        }
    }
    let board = linesight::part::HeatMap {
        width: 64,
        height: 64,
        values,
    };
    c.bench_function("supervised/boxes_640_map64", |b| {
        b.iter(|| boxes_from_heat_map(&board, 640, 640, BoxShape::default()))
    });
    // The station's default boxes for a failed part (whole cells at the threshold): the same
    // board's map, what the inspect stage adds to each rejected part.
    c.bench_function("inspect/cell_boxes_640_map64", |b| {
        b.iter(|| cell_boxes(&board, 640, 640, 0.5))
    });

    template_comparison(c);

    anomaly(c, &raw, &Device::Cpu, "");
    // The same with the 1×1 convolutions in bfloat16, where the CPU has AVX-512 BF16.
    if linesight::models::backbone::bf16::cpu_has_bf16() {
        linesight::models::backbone::bf16::set_precision(Precision::Bf16);
        anomaly(c, &raw, &Device::Cpu, "bf16/");
    }
    linesight::models::backbone::bf16::set_precision(Precision::F32);
    #[cfg(feature = "cuda")]
    gpu(c, &raw, &calibrated);
}

/// The golden-template comparison of a 640×640 board (DeepPCB's size): dark traces on a
/// bright ground, the tested board with six defects and a scan's wandering edges. The
/// classifier's part (a dot product per candidate) is left out: microseconds. The golden image
/// is prepared once, as a station prepares it when it loads the model.
fn template_comparison(c: &mut Criterion) {
    use linesight::models::template::{CompareSettings, PreparedReference, compare_prepared};
    const SIDE: usize = 640;
    let mut reference = vec![225u8; SIDE * SIDE];
    for top in (20..SIDE - 40).step_by(36) {
        for y in top..top + 14 {
            reference[y * SIDE + 16..y * SIDE + SIDE - 16].fill(30);
        }
    }
    let mut part = reference.clone();
    for k in 0..6 {
        let (x, y) = (60 + 90 * k, 22 + 36 * 2 * k);
        for row in y..y + 10 {
            // Alternately a cut through a trace and copper past its edge.
            let value = if k % 2 == 0 { 225 } else { 30 };
            let x = if k % 2 == 0 { x } else { x + 8 };
            part[row * SIDE + x..row * SIDE + x + 8].fill(value);
        }
    }
    for i in (SIDE..SIDE * (SIDE - 1)).step_by(7) {
        if part[i] != part[i - SIDE] {
            part[i] = part[i - SIDE];
        }
    }
    let image = |pixels| linesight::part::GrayImage::new(SIDE as u32, SIDE as u32, pixels);
    let (reference, part) = (
        image(reference).expect("640x640"),
        image(part).expect("640x640"),
    );
    let settings = CompareSettings::default();
    // As a station runs it: the golden image prepared once, at load, each part compared.
    let reference = PreparedReference::new(&reference, settings.pattern).expect("prepares");
    c.bench_function("template/compare_640", |b| {
        b.iter(|| compare_prepared(&part, &reference, &settings).expect("compares"))
    });
    // What a wider alignment costs, for a product whose training measured its parts sitting
    // further off their golden image (the default reach is 2 pixels each way).
    for align_px in [4, 9, 16] {
        let settings = CompareSettings {
            align_px,
            ..settings
        };
        c.bench_function(&format!("template/compare_640_reach{align_px}"), |b| {
            b.iter(|| compare_prepared(&part, &reference, &settings).expect("compares"))
        });
    }
}

/// The same models on the GPU, in a `cuda` build (`make bench-cuda`): names start `cuda/`.
#[cfg(feature = "cuda")]
fn gpu(
    c: &mut Criterion,
    raw: &linesight::part::GrayImage,
    calibrated: &linesight::part::GrayImage,
) {
    let gpu = match Device::new_cuda(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipping GPU benches: no CUDA GPU 0 ({e})");
            return;
        }
    };
    let model = DefectModel::load(&repo("models/defect-net-sim"), &gpu).expect("model on GPU");
    c.bench_function("cuda/inspect/score_224", |b| {
        b.iter(|| model.score(calibrated).expect("score"))
    });
    anomaly(c, raw, &gpu, "cuda/");
}

/// The pretrained-backbone models' costs on a 256×256 image: backbone features, the anomaly
/// model's nearest-neighbour search against a 4096-entry bank with its image Gaussian, patch
/// head and coarse image score (a second backbone pass at 96), the supervised model's head. On
/// `device`, with bench names starting `prefix`.
fn anomaly(c: &mut Criterion, image: &linesight::part::GrayImage, device: &Device, prefix: &str) {
    let weights = repo("models/efficientnet-lite0/efficientnet-lite0.safetensors");
    if !weights.exists() {
        eprintln!(
            "skipping anomaly benches: {} is missing (make weights)",
            weights.display()
        );
        return;
    }
    let features = PatchFeatures::load(&weights, device).expect("backbone");
    let bank = Tensor::randn(0f32, 1f32, (4096, FEATURE_DIM), device).expect("bank");
    // The image Gaussian's cost does not depend on its values: fit it to random descriptors.
    let descriptors: Vec<Vec<f32>> = (0..32u32)
        .map(|i| {
            (0..2 * FEATURE_DIM as u32)
                .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0)
                .collect()
        })
        .collect();
    let gaussian = ImageGaussian::fit(&descriptors).expect("gaussian");
    // Nor does the patch head's.
    let head = PatchHead::from_tensors(
        &Tensor::randn(0f32, 1f32, FEATURE_DIM, device).expect("head weight"),
        &Tensor::new(&[0f32], device).expect("head bias"),
    )
    .expect("head");
    c.bench_function(&format!("{prefix}anomaly/backbone_features_256"), |b| {
        b.iter(|| features.extract(image).expect("features"))
    });
    let features_128 = features.clone().with_input_size(128);
    c.bench_function(&format!("{prefix}anomaly/backbone_features_128"), |b| {
        b.iter(|| features_128.extract(image).expect("features"))
    });
    // The deeper Lite1 (`train … --backbone`), where `make weights` installed it: its features
    // and the anomaly model on it, at both input sizes.
    let lite1 = repo("models/efficientnet-lite1/efficientnet-lite1.safetensors");
    if lite1.exists() {
        let lite1 = PatchFeatures::load(&lite1, device).expect("Lite1 backbone");
        for size in [256, 128] {
            let lite1 = lite1.clone().with_input_size(size);
            c.bench_function(
                &format!("{prefix}anomaly/backbone_features_{size}_lite1"),
                |b| b.iter(|| lite1.extract(image).expect("features")),
            );
        }
        for size in [256, 128] {
            let model = model_at_defaults(&lite1, size, &bank, &gaussian, &head);
            c.bench_function(
                &format!("{prefix}anomaly/score_256_input{size}_bank4096_lite1"),
                |b| b.iter(|| model.score(image).expect("score")),
            );
        }
    } else {
        eprintln!(
            "skipping the Lite1 benches: {} is missing (make weights)",
            lite1.display()
        );
    }
    // The search alone, at a 256 input's 1,024 patches: `make bench-compare` sets it beside
    // numpy's one-GEMM search of the same shape.
    let queries = Tensor::randn(0f32, 1f32, (1024, FEATURE_DIM), device).expect("queries");
    let (bank_t, bank_sq) = search_layout(&bank).expect("search layout");
    c.bench_function(&format!("{prefix}anomaly/nearest_1024x4096"), |b| {
        b.iter(|| nearest_distances(&queries, &bank_t, &bank_sq).expect("distances"))
    });
    // The discriminator's share of a part at a 256 input: its adaptor and MLP over the same
    // 1,024 patches, both maps' channels.
    let judge = random_discriminator(PatchStages::Both, device);
    c.bench_function(&format!("{prefix}anomaly/discriminator_1024"), |b| {
        b.iter(|| judge.patch_scores(&queries).expect("scores"))
    });
    // The model at 256 with it (`--discriminator-steps N`): set it beside
    // `anomaly/score_256_input256_bank4096` of the same run.
    let judged = model_at_defaults(&features, 256, &bank, &gaussian, &head)
        .with_discriminator(Some(judge.clone()));
    c.bench_function(
        &format!("{prefix}anomaly/score_256_input256_bank4096_discriminator"),
        |b| b.iter(|| judged.score(image).expect("score")),
    );
    // The anomaly model at 512 (`--input-size auto:512` may choose it), at 256 and at its
    // default input size, 128.
    for size in [512, 256, 128] {
        let model = model_at_defaults(&features, size, &bank, &gaussian, &head);
        c.bench_function(
            &format!("{prefix}anomaly/score_256_input{size}_bank4096"),
            |b| b.iter(|| model.score(image).expect("score")),
        );
        if size == 128 {
            batches(c, &model, image, device, prefix);
            if device.is_cpu() {
                two_parts_at_once(c, &model, image);
            }
        }
    }
    // One map alone, at 256 (DeepPCB's boards chose the stride-8 map there): the search reads
    // its 40 channels where both maps' reads 152, so set it beside
    // `anomaly/score_256_input256_bank4096` of the same run (what a one-map model cost before
    // its search was cut). The same search cost buys a one-map model a larger bank
    // (`bank_size::default_largest`): stride 8 alone at 256 may take 8,192 entries, as
    // DeepPCB's boards did.
    let bank_8192 = Tensor::randn(0f32, 1f32, (8192, FEATURE_DIM), device).expect("bank");
    for (stages, name, bank) in [
        (PatchStages::Stride8, "bank4096_stride8", &bank),
        (PatchStages::Stride16, "bank4096_stride16", &bank),
        (PatchStages::Stride8, "bank8192_stride8", &bank_8192),
    ] {
        let model = model_at_defaults(
            &features.clone().with_patch_stages(stages),
            256,
            bank,
            &gaussian,
            &head,
        );
        c.bench_function(&format!("{prefix}anomaly/score_256_input256_{name}"), |b| {
            b.iter(|| model.score(image).expect("score"))
        });
    }
    // The larger banks `--bank-size auto` may choose at a 128 input, up to the one whose
    // search costs what 256's against 4,096 entries does (`models::anomaly::bank_size`).
    for entries in [8192, 16_384] {
        let bank = Tensor::randn(0f32, 1f32, (entries, FEATURE_DIM), device).expect("bank");
        let model = model_at_defaults(&features, 128, &bank, &gaussian, &head);
        c.bench_function(
            &format!("{prefix}anomaly/score_256_input128_bank{entries}"),
            |b| b.iter(|| model.score(image).expect("score")),
        );
    }
    // Six defect classes plus good, as on NEU-DET; the image is 256×256 either way, the model
    // sees it at its own input size. 512 and 1024 are what `auto:512` and `auto:1024` may
    // choose (DeepPCB's boxes take 512, CrackForest's cracks 1024), ten samples each: they
    // take 25 to 175 ms an image on a CPU.
    let mut large = c.benchmark_group(format!("{prefix}supervised"));
    large
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(10));
    for size in [1024, 512] {
        let supervised = SupervisedModel::untrained(features.clone().with_input_size(size), 7, 1)
            .expect("supervised model");
        large.bench_function(format!("predict_256_input{size}"), |b| {
            b.iter(|| supervised.predict(image).expect("prediction"))
        });
    }
    large.finish();
    for size in [256, 160, 128] {
        let supervised = SupervisedModel::untrained(features.clone().with_input_size(size), 7, 1)
            .expect("supervised model");
        c.bench_function(
            &format!("{prefix}supervised/predict_256_input{size}"),
            |b| b.iter(|| supervised.predict(image).expect("prediction")),
        );
    }
}

/// A discriminator of the shape training gives, reading `stages`' channels: its cost does not
/// depend on its weights.
fn random_discriminator(stages: PatchStages, device: &Device) -> NoiseDiscriminator {
    let c = stages.channels().len();
    let random = |shape: &[usize]| Tensor::randn(0f32, 0.1f32, shape, device).expect("weights");
    let hidden = discriminator::HIDDEN;
    let tensors = [
        random(&[c, c]),
        random(&[c]),
        random(&[c, hidden]),
        random(&[hidden]),
        random(&[hidden]),
    ];
    let [a, b, w, x, o] = &tensors;
    NoiseDiscriminator::from_tensors([a, b, w, x, o], stages, device).expect("discriminator")
}

/// The anomaly model as training builds it by default (bank, image Gaussian, patch head,
/// coarse image score), on `features` at input `size`.
fn model_at_defaults(
    features: &PatchFeatures,
    size: usize,
    bank: &Tensor,
    gaussian: &ImageGaussian,
    head: &PatchHead,
) -> PatchCore {
    PatchCore::from_bank(features.clone().with_input_size(size), bank.clone())
        .expect("model")
        .with_image_gaussian(gaussian.clone())
        .with_head(Some(head.clone()))
        .with_coarse_image(Some(CoarseImage::new(
            features.clone().with_input_size(COARSE_INPUT_SIZE),
            gaussian.clone(),
        )))
}

/// Parts that queued up, scored in one pass (`[model] batch`): throughput in parts a second
/// (criterion's elements), against `anomaly/score_256_input128_bank4096`'s one part at a time.
fn batches(
    c: &mut Criterion,
    model: &PatchCore,
    image: &linesight::part::GrayImage,
    device: &Device,
    prefix: &str,
) {
    let sizes: &[usize] = if device.is_cpu() {
        &[2, 4]
    } else {
        &[8, 32, 64, 128]
    };
    let mut group = c.benchmark_group(format!("{prefix}anomaly/batch_256_input128_bank4096"));
    for &size in sizes {
        let images = vec![image; size];
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| model.raw_scores_many(&images).expect("scores"))
        });
    }
    group.finish();
    // Where a GPU batch's time goes: the backbone at the input size, the coarse pass, the
    // search over every patch of the batch.
    if !device.is_cpu() {
        let size = 64;
        let images = vec![image; size];
        let mut group = c.benchmark_group(format!("{prefix}anomaly/batch64_stages"));
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function("features_input128", |b| {
            b.iter(|| model.extractor().extract_many(&images).expect("features"))
        });
        if let Some(coarse) = model.coarse_image() {
            group.bench_function("coarse_descriptors", |b| {
                b.iter(|| {
                    coarse
                        .extractor()
                        .descriptors(&images)
                        .expect("descriptors")
                })
            });
        }
        let patches = model
            .extractor()
            .extract_many(&images)
            .expect("features")
            .patches;
        group.bench_function("nearest", |b| {
            b.iter(|| model.nearest(&patches).expect("distances"))
        });
        group.finish();
    }
}

/// Two parts scored at once by two inspect workers, as a station with `[model] workers = 2`
/// does when parts queue up (both on the global pool), and the alternative it was chosen over
/// (each worker on a one-thread pool of its own). Set beside twice
/// `anomaly/score_256_input128_bank4096` (one part at a time on every core) for the
/// throughput a second worker buys.
fn two_parts_at_once(c: &mut Criterion, model: &PatchCore, image: &linesight::part::GrayImage) {
    let pools: Vec<rayon::ThreadPool> = (0..2)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("pool")
        })
        .collect();
    c.bench_function("anomaly/two_parts_at_once_input128_own_pools", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for pool in &pools {
                    s.spawn(|| pool.install(|| model.score(image).expect("score")));
                }
            })
        })
    });
    c.bench_function("anomaly/two_parts_at_once_input128_shared_pool", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| model.score(image).expect("score"));
                }
            })
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
