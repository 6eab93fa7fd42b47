//! Where the backbone's time goes: each layer of EfficientNet-Lite0 up to stride 16 on its own,
//! at the shapes a 256×256 input gives it (random weights: the cost does not depend on them),
//! and the whole network on a grey image with its large blocks computed in bands of rows
//! (the default) beside layer by layer, in f32 and in bfloat16 where the CPU has it. `make
//! bench` runs it; `anomaly/backbone_features_256` in the `inspect` bench is the whole
//! extractor (resampling and stacking the features too).

use candle_core::{Device, Module, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use linesight::models::backbone::bf16::{self, Precision};
use linesight::models::backbone::depthwise::{BiasActivation, DepthwiseConv, Interleave};
use linesight::models::backbone::pointwise::Pointwise;
use linesight::models::backbone::{EfficientNetLite, LITE0_BLOCKS};

fn random(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.1f32, shape, &Device::Cpu).expect("random tensor")
}

fn layers(c: &mut Criterion) {
    // The stem halves 256 to 128.
    let mut side = 128;
    for (i, &(expand_ratio, kernel, stride, c_in, c_out)) in LITE0_BLOCKS.iter().enumerate() {
        let c_mid = c_in * expand_ratio;
        let input = random(&[1, c_in, side, side]);
        let mut depthwise = DepthwiseConv::new(
            &random(&[c_mid, 1, kernel, kernel]),
            &random(&[c_mid]),
            stride,
            true,
        )
        .expect("depthwise");
        let expanded = if expand_ratio == 1 {
            input.clone()
        } else {
            let expand =
                Pointwise::new(&random(&[c_mid, c_in]), &random(&[c_mid])).expect("expand");
            depthwise = depthwise
                .with_input_activation(BiasActivation::new(&random(&[c_mid]), true).expect("bias"));
            c.bench_function(
                &format!("backbone/block{i:02}_expand_{c_in}to{c_mid}_{side}px"),
                |b| b.iter(|| expand.product(&input).expect("expand")),
            );
            expand.product(&input).expect("expand")
        };
        c.bench_function(
            &format!("backbone/block{i:02}_depthwise{kernel}x{kernel}s{stride}_{c_mid}_{side}px"),
            |b| b.iter(|| depthwise.forward(&expanded).expect("depthwise")),
        );
        let filtered = depthwise.forward(&expanded).expect("depthwise");
        side = side.div_ceil(stride);
        let project = Pointwise::new(&random(&[c_out, c_mid]), &random(&[c_out])).expect("project");
        c.bench_function(
            &format!("backbone/block{i:02}_project_{c_mid}to{c_out}_{side}px"),
            |b| b.iter(|| project.forward(&filtered).expect("project")),
        );
    }
}

/// The depthwise layers of small planes at each input size the models use, plane by plane
/// against channels interleaved (`INTERLEAVE_MAX_WIDTH` in `depthwise.rs` is chosen by these).
fn small_planes(c: &mut Criterion) {
    for input in [256, 128, 96] {
        let mut side: usize = input / 2;
        for (i, &(expand_ratio, kernel, stride, c_in, _)) in LITE0_BLOCKS.iter().enumerate() {
            let c_mid = c_in * expand_ratio;
            let out_side = side.div_ceil(stride);
            if out_side <= 32 {
                let planes = random(&[1, c_mid, side, side]);
                let depthwise = DepthwiseConv::new(
                    &random(&[c_mid, 1, kernel, kernel]),
                    &random(&[c_mid]),
                    stride,
                    true,
                )
                .expect("depthwise")
                .with_input_activation(BiasActivation::new(&random(&[c_mid]), true).expect("bias"));
                for (how, interleave) in [
                    ("planes", Interleave::Never),
                    ("interleaved", Interleave::Always),
                ] {
                    let depthwise = depthwise.clone().with_interleaving(interleave);
                    c.bench_function(
                        &format!(
                            "backbone/input{input}_block{i:02}_depthwise{kernel}x{kernel}s{stride}_{c_mid}_to{out_side}px_{how}"
                        ),
                        |b| b.iter(|| depthwise.forward(&planes).expect("depthwise")),
                    );
                }
            }
            side = out_side;
        }
    }
}

/// The whole network, banded and layer by layer, at both input sizes and both precisions,
/// interleaved so that a busy moment of the machine weighs on each alike.
fn network(c: &mut Criterion) {
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/efficientnet-lite0/efficientnet-lite0.safetensors");
    if !weights.exists() {
        eprintln!(
            "skipping the whole-network benches: {} is missing (make weights)",
            weights.display()
        );
        return;
    }
    let network = EfficientNetLite::load(&weights, &Device::Cpu).expect("backbone");
    let mut precisions = vec![Precision::F32];
    if bf16::cpu_has_bf16() {
        precisions.push(Precision::Bf16);
    }
    for precision in precisions {
        let network = network.clone().with_precision(precision);
        for size in [256, 128] {
            let image = random(&[1, 1, size, size]);
            for banded in [true, false] {
                let network = network.clone().with_banding(banded);
                let how = if banded { "banded" } else { "layers" };
                c.bench_function(&format!("backbone/lite0_{size}_{precision}_{how}"), |b| {
                    b.iter(|| network.features(&image).expect("features"))
                });
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = network, layers, small_planes
}
criterion_main!(benches);
