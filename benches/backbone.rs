//! Where the backbone's time goes: each layer of EfficientNet-Lite0 up to stride 16 on its own,
//! at the shapes a 256×256 input gives it (random weights: the cost does not depend on them).
//! `make bench` runs it; `anomaly/backbone_features_256` in the `inspect` bench is the whole.

use candle_core::{Device, Module, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use linesight::models::backbone::LITE0_BLOCKS;
use linesight::models::backbone::depthwise::{BiasActivation, DepthwiseConv};
use linesight::models::backbone::pointwise::Pointwise;

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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = layers
}
criterion_main!(benches);
