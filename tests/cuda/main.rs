//! The `cuda` feature on a GPU: every model the station runs gives the same verdicts on the GPU
//! as on the CPU.
//!
//! Built only with `--features cuda` (`make test-cuda`), and run on a machine with an NVIDIA GPU:
//! without one, opening it fails and so does every test here, loudly. CI builds without the
//! feature and never compiles this file.
//!
//! The GPU takes different code paths from the CPU (its own depthwise and bias kernels, cuBLAS
//! matrix products instead of the CPU's 1×1 kernel, the nearest-neighbour minimum on the
//! device) and sums in a different order, so values are compared within a tolerance: relative
//! to the largest value compared, or, for probabilities, absolute.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use linesight::config::ModelDevice;
use linesight::inspect::registry::{Registry, open_device};
use linesight::learn::dataset::Layout;
use linesight::learn::progress::Progress;
use linesight::models::Detector;
use linesight::models::anomaly::bank_size::BankSize;
use linesight::models::anomaly::discriminator;
use linesight::models::anomaly::orientation::Orientations;
use linesight::models::anomaly::patch_stages::StagesSetting;
use linesight::models::anomaly::train::{self as anomaly_train, AnomalySettings, InputSize};
use linesight::models::backbone::depthwise::{BiasActivation, DepthwiseConv};
use linesight::models::backbone::{FEATURE_DIM, PatchFeatures, PatchStages};
use linesight::models::supervised::{self, SupervisedModel, SupervisedSettings};
use linesight::part::{GrayImage, HeatMap};
use linesight::simulate::{DefectKind, PartGenerator};

use crate::common::{backbone_weights, repo, write_mvtec_parts, write_tile_dataset};

/// Largest difference allowed, as a share of the largest value compared (or, for a
/// probability, absolute).
const TOLERANCE: f32 = 1e-3;

fn gpu() -> Device {
    match open_device(ModelDevice::Cuda) {
        Ok(device) => device,
        Err(e) => panic!("these tests need an NVIDIA GPU and its driver: {e}"),
    }
}

/// A few simulated parts, good and defective, at the camera's 256×256.
fn parts() -> Vec<GrayImage> {
    let mut generator = PartGenerator::new(7, 256, 256, 0.0);
    let mut images = vec![generator.render(None).image];
    images.extend(
        DefectKind::ALL
            .iter()
            .map(|&kind| generator.render(Some(kind)).image),
    );
    images
}

fn assert_close(what: &str, cpu: &[f32], gpu: &[f32]) {
    let largest = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close_on_scale(what, cpu, gpu, largest);
}

/// [`assert_close`] with the tolerance taken relative to `scale`.
fn assert_close_on_scale(what: &str, cpu: &[f32], gpu: &[f32], scale: f32) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: lengths differ");
    let largest = scale.max(1e-6);
    let (worst, at) = cpu
        .iter()
        .zip(gpu)
        .map(|(c, g)| (c - g).abs())
        .enumerate()
        .fold(
            (0f32, 0),
            |(worst, at), (i, d)| {
                if d > worst { (d, i) } else { (worst, at) }
            },
        );
    assert!(
        worst <= TOLERANCE * largest,
        "{what}: the GPU differs from the CPU by {worst} at {at} \
         (cpu {}, gpu {}; largest value {largest})",
        cpu[at],
        gpu[at]
    );
}

fn assert_same_heat_map(what: &str, cpu: &HeatMap, gpu: &HeatMap) {
    assert_eq!(
        (cpu.width, cpu.height),
        (gpu.width, gpu.height),
        "{what}: heat map size"
    );
    assert_close(what, &cpu.values, &gpu.values);
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("tensor values")
}

/// The model in `dir`, loaded through the registry as a station loads it: on the CPU and on
/// the GPU.
fn on_both_devices(dir: &Path) -> (Box<dyn Detector>, Box<dyn Detector>) {
    let registry = |device| Registry::new(repo().join("models"), Some(backbone_weights()), device);
    (
        registry(Device::Cpu)
            .load_dir(dir)
            .expect("loads on the CPU"),
        registry(gpu()).load_dir(dir).expect("loads on the GPU"),
    )
}

fn extractors(size: usize) -> (PatchFeatures, PatchFeatures) {
    let weights = backbone_weights();
    let cpu = PatchFeatures::load(&weights, &Device::Cpu).expect("backbone on the CPU");
    let gpu = PatchFeatures::load(&weights, &gpu()).expect("backbone on the GPU");
    assert!(gpu.device().is_cuda());
    (cpu.with_input_size(size), gpu.with_input_size(size))
}

#[test]
fn the_gpu_opens_when_configured() {
    assert!(gpu().is_cuda());
}

/// The GPU's depthwise kernel against the CPU's (which the unit tests hold to candle's grouped
/// convolution): kernel 3 and 5, stride 1 and 2, odd and even sizes, a shared grey input
/// plane, the previous layer's bias and ReLU6 applied on the way in.
#[test]
fn depthwise_kernels_match_the_cpu() {
    let gpu = gpu();
    let on = |t: &Tensor, device: &Device| t.to_device(device).expect("copy");
    for (h, w) in [(16, 16), (13, 40), (1, 7), (128, 128)] {
        for kernel in [3, 5] {
            for stride in [1, 2] {
                // (A shared plane is an image: it never takes an input activation.)
                for (shared, activation) in [
                    (false, None),
                    (false, Some(true)),
                    (false, Some(false)),
                    (true, None),
                ] {
                    let c = 6;
                    let what = format!(
                        "{h}x{w} k{kernel} s{stride} shared {shared} activation {activation:?}"
                    );
                    let c_in = if shared { 1 } else { c };
                    let x = Tensor::randn(0f32, 2f32, (2, c_in, h, w), &Device::Cpu).expect("x");
                    let weight =
                        Tensor::randn(0f32, 1f32, (c, 1, kernel, kernel), &Device::Cpu).expect("w");
                    let bias = Tensor::randn(0f32, 1f32, c, &Device::Cpu).expect("b");
                    let input_bias = Tensor::randn(0f32, 1f32, c_in, &Device::Cpu).expect("ib");
                    let build = |device: &Device| {
                        let (weight, bias) = (on(&weight, device), on(&bias, device));
                        let conv = if shared {
                            DepthwiseConv::from_one_plane(&weight, &bias, stride, true)
                        } else {
                            DepthwiseConv::new(&weight, &bias, stride, false)
                        }
                        .expect("conv");
                        match activation {
                            Some(relu6) => conv.with_input_activation(
                                BiasActivation::new(&on(&input_bias, device), relu6)
                                    .expect("activation"),
                            ),
                            None => conv,
                        }
                    };
                    let cpu = build(&Device::Cpu).forward(&x).expect("cpu");
                    let on_gpu = build(&gpu).forward(&on(&x, &gpu)).expect("gpu");
                    assert!(on_gpu.device().is_cuda());
                    assert_eq!(cpu.dims(), on_gpu.dims(), "{what}");
                    assert_close(&what, &values(&cpu), &values(&on_gpu));
                }
            }
        }
    }
    // Bias and activation in place, on their own.
    let x = Tensor::randn(0f32, 4f32, (2, 5, 9, 11), &Device::Cpu).expect("x");
    let bias = Tensor::new(&[0.5f32, -1.0, 2.0, 7.0, -3.0], &Device::Cpu).expect("bias");
    for relu6 in [true, false] {
        let cpu = BiasActivation::new(&bias, relu6)
            .expect("activation")
            .apply_in_place(x.copy().expect("copy"))
            .expect("cpu");
        let on_gpu = BiasActivation::new(&on(&bias, &gpu), relu6)
            .expect("activation")
            .apply_in_place(on(&x, &gpu))
            .expect("gpu");
        assert_close(
            &format!("bias-activation relu6 {relu6}"),
            &values(&cpu),
            &values(&on_gpu),
        );
    }
}

#[test]
fn backbone_features_match_the_cpu() {
    let (cpu, gpu) = extractors(256);
    for (i, image) in parts().iter().enumerate() {
        let (on_cpu, on_gpu) = (
            cpu.maps(image).expect("cpu maps"),
            gpu.maps(image).expect("gpu maps"),
        );
        assert_eq!(on_cpu.dims(), on_gpu.dims());
        assert_eq!(on_cpu.dims()[1], FEATURE_DIM);
        assert_close(
            &format!("maps of part {i}"),
            &values(&on_cpu),
            &values(&on_gpu),
        );
    }
}

#[test]
fn patch_features_and_descriptors_match_the_cpu() {
    let (cpu, gpu) = extractors(128);
    for (i, image) in parts().iter().enumerate() {
        let (on_cpu, on_gpu) = (
            cpu.extract(image).expect("cpu features"),
            gpu.extract(image).expect("gpu features"),
        );
        assert!(on_gpu.patches.device().is_cuda());
        assert_close(
            &format!("patches of part {i}"),
            &values(&on_cpu.patches),
            &values(&on_gpu.patches),
        );
        assert_close(
            &format!("descriptor of part {i}"),
            &on_cpu.descriptor,
            &on_gpu.descriptor,
        );
    }
}

/// The station's own path: a model trained here, loaded through the registry onto each
/// device, scores every part alike.
#[test]
fn a_trained_anomaly_model_scores_alike_on_the_gpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("parts");
    let mut generator = PartGenerator::new(21, 256, 256, 0.0);
    write_mvtec_parts(&data, &mut generator, 16, 4);
    let model_dir = dir.path().join("model");
    anomaly_train::train(&AnomalySettings {
        name: "gpu-parity".into(),
        layout: Layout::Mvtec,
        data,
        backbone_weights: backbone_weights(),
        bank_size: BankSize::Fixed(1024),
        input_size: InputSize::Fixed(128),
        // One map zeroed: the GPU path masks the patch features as the CPU path does.
        patch_stages: StagesSetting::Given(PatchStages::Stride8),
        target_false_reject_rate: 0.05,
        synthetic_defects_per_good: 2,
        coarse_input_size: Some(64),
        // Its adaptor and MLP run on the device too.
        discriminator_steps: 20,
        discriminator_noise_std: discriminator::DEFAULT_NOISE_STD,
        orientations: Orientations::None,
        seed: 3,
        out_dir: model_dir.clone(),
        progress: Progress::hidden(),
    })
    .expect("trains");

    let (cpu, gpu) = on_both_devices(&model_dir);
    assert_eq!(gpu.head().kind, "anomaly");
    let threshold = cpu.head().threshold;
    let (mut cpu_scores, mut gpu_scores) = (Vec::new(), Vec::new());
    for (i, image) in parts().iter().enumerate() {
        let (cpu_score, cpu_map) = cpu.score(image).expect("cpu score");
        let (gpu_score, gpu_map) = gpu.score(image).expect("gpu score");
        assert_same_heat_map(&format!("anomaly heat map of part {i}"), &cpu_map, &gpu_map);
        cpu_scores.push(cpu_score);
        gpu_scores.push(gpu_score);
    }
    // Combined scores are standard deviations above the good images' mean: compare them on
    // the scale of the largest of them and the threshold, and check that every verdict away
    // from the threshold agrees.
    let scale = cpu_scores
        .iter()
        .fold(threshold.abs(), |m, v| m.max(v.abs()));
    assert_close_on_scale("anomaly scores", &cpu_scores, &gpu_scores, scale);
    for (i, (c, g)) in cpu_scores.iter().zip(&gpu_scores).enumerate() {
        if (c - threshold).abs() > TOLERANCE * scale {
            assert_eq!(
                c > &threshold,
                g > &threshold,
                "verdict of part {i}: {c} vs {g}"
            );
        }
    }

    // Parts that queued up, scored in one GPU pass (`[model] batch`), a part repeated and a
    // part from a camera of another size among them: each as the CPU scores it alone.
    let mut images = parts();
    images.push(images[1].clone());
    images.push(PartGenerator::new(5, 200, 160, 0.0).render(None).image);
    let batch: Vec<&GrayImage> = images.iter().collect();
    let judged = gpu.judge_many(&batch, &[]);
    assert_eq!(judged.len(), images.len());
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for (i, (image, judgement)) in images.iter().zip(judged).enumerate() {
        let judgement = judgement.expect("a judgement in the batch");
        let (cpu_score, cpu_map) = cpu.score(image).expect("cpu score");
        assert_same_heat_map(
            &format!("anomaly heat map of part {i} in a GPU batch"),
            &cpu_map,
            &judgement.heat_map,
        );
        alone.push(cpu_score);
        together.push(judgement.score);
    }
    assert_close_on_scale("anomaly scores in a GPU batch", &alone, &together, scale);
}

/// A batch through the backbone on the GPU: each image's patches and descriptor as the CPU
/// gives them alone.
#[test]
fn batched_patch_features_match_the_cpu_one_by_one() {
    let (cpu, gpu) = extractors(128);
    let images = parts();
    let batch: Vec<&GrayImage> = images.iter().collect();
    let on_gpu = gpu.extract_many(&batch).expect("gpu batch features");
    assert!(on_gpu.patches.device().is_cuda());
    let gpu_patches = values(&on_gpu.patches);
    let per_image = gpu_patches.len() / images.len();
    for (i, image) in images.iter().enumerate() {
        let on_cpu = cpu.extract(image).expect("cpu features");
        assert_close(
            &format!("patches of part {i} in a batch"),
            &values(&on_cpu.patches),
            &gpu_patches[i * per_image..][..per_image],
        );
        assert_close(
            &format!("descriptor of part {i} in a batch"),
            &on_cpu.descriptor,
            &on_gpu.descriptors[i],
        );
    }
    let descriptors = gpu.descriptors(&batch).expect("gpu batch descriptors");
    for (i, (descriptor, features)) in descriptors.iter().zip(&on_gpu.descriptors).enumerate() {
        assert_close(&format!("descriptor of part {i}"), features, descriptor);
    }
}

#[test]
fn supervised_predictions_match_the_cpu() {
    for size in [256, 128] {
        let (cpu_features, gpu_features) = extractors(size);
        let cpu = SupervisedModel::untrained(cpu_features, 7, 1).expect("cpu model");
        let gpu = SupervisedModel::untrained(gpu_features, 7, 1).expect("gpu model");
        for (i, image) in parts().iter().enumerate() {
            let (on_cpu, on_gpu) = (
                cpu.predict(image).expect("cpu prediction"),
                gpu.predict(image).expect("gpu prediction"),
            );
            assert!(
                (on_cpu.defect_score - on_gpu.defect_score).abs() <= TOLERANCE,
                "defect score of part {i} at input {size}: cpu {}, gpu {}",
                on_cpu.defect_score,
                on_gpu.defect_score
            );
            assert_eq!(on_cpu.defect_class, on_gpu.defect_class, "part {i}");
            assert_same_heat_map(
                &format!("supervised heat map of part {i} at input {size}"),
                &on_cpu.heat_map,
                &on_gpu.heat_map,
            );
        }
    }
}

/// A supervised model trained here and loaded through the registry onto each device.
#[test]
fn a_trained_supervised_model_predicts_alike_on_the_gpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("tiles");
    write_tile_dataset(&data, &mut PartGenerator::new(5, 256, 256, 0.0), 12);
    let model_dir = dir.path().join("model");
    supervised::train(&SupervisedSettings {
        name: "gpu-parity".into(),
        layout: Layout::MagneticTile,
        data,
        backbone_weights: backbone_weights(),
        epochs: 10,
        batch_size: 8,
        learning_rate: 3e-3,
        input_size: linesight::models::supervised::InputSize::Fixed(256),
        augmented_copies: 1,
        feature_dropout: 0.1,
        target_escape_rate: None,
        fold: None,
        seed: 4,
        out_dir: model_dir.clone(),
        progress: Progress::hidden(),
    })
    .expect("trains");

    let (cpu, gpu) = on_both_devices(&model_dir);
    assert_eq!(gpu.head().kind, "supervised");
    for (i, image) in parts().iter().enumerate() {
        let (cpu_score, cpu_map) = cpu.score(image).expect("cpu score");
        let (gpu_score, gpu_map) = gpu.score(image).expect("gpu score");
        assert!(
            (cpu_score - gpu_score).abs() <= TOLERANCE,
            "defect probability of part {i}: cpu {cpu_score}, gpu {gpu_score}"
        );
        assert_same_heat_map(
            &format!("supervised heat map of part {i}"),
            &cpu_map,
            &gpu_map,
        );
    }
}

#[test]
fn the_simulated_line_model_scores_alike_on_the_gpu() {
    let dir = repo().join("models/defect-net-sim");
    let (cpu, gpu) = on_both_devices(&dir);
    for (i, image) in parts().iter().enumerate() {
        let image = crop_to_model(image, cpu.input_size());
        let (cpu_score, cpu_map) = cpu.score(&image).expect("cpu score");
        let (gpu_score, gpu_map) = gpu.score(&image).expect("gpu score");
        assert!(
            (cpu_score - gpu_score).abs() <= TOLERANCE,
            "score of part {i}: cpu {cpu_score}, gpu {gpu_score}"
        );
        assert_same_heat_map(
            &format!("defect-net heat map of part {i}"),
            &cpu_map,
            &gpu_map,
        );
    }
}

/// The centre of `image` at the model's fixed input size, if it has one.
fn crop_to_model(image: &GrayImage, size: Option<(u32, u32)>) -> GrayImage {
    let Some((w, h)) = size else {
        return image.clone();
    };
    let (x0, y0) = ((image.width - w) / 2, (image.height - h) / 2);
    let pixels = (y0..y0 + h)
        .flat_map(|y| {
            let row = (y * image.width + x0) as usize;
            image.pixels[row..row + w as usize].iter().copied()
        })
        .collect();
    GrayImage::new(w, h, pixels).expect("crop")
}
