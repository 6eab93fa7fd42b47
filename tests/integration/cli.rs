//! The `linesight` binary: what a user sees on bad input.

use std::process::Command;

use crate::repo;

fn linesight(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run linesight");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run_with_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("station.toml");
    std::fs::write(&path, text).expect("write config");
    run_station(&path, &[])
}

/// `linesight run` on the config at `path`, on any free port, with `more` arguments.
fn run_station(path: &std::path::Path, more: &[&str]) -> (bool, String) {
    let config = path.to_str().expect("utf-8");
    let mut args = vec!["run", "--config", config, "--bind", "127.0.0.1:0"];
    args.extend(more);
    linesight(&args)
}

fn shipped_config() -> String {
    std::fs::read_to_string(repo().join("config/simulated-line.toml")).expect("shipped config")
}

#[test]
fn malformed_config_is_refused_naming_file_and_field() {
    let (ok, stderr) =
        run_with_config(&shipped_config().replace("travel_ms = 1200", "travel_ms = \"fast\""));
    assert!(!ok);
    assert!(stderr.contains("station.toml"), "{stderr}");
    assert!(stderr.contains("line.travel_ms"), "{stderr}");
    assert!(stderr.contains("expected u64"), "{stderr}");
}

#[test]
fn unknown_field_is_refused() {
    let (ok, stderr) =
        run_with_config(&shipped_config().replace("[line]", "[line]\nbelt_speed = 3"));
    assert!(!ok);
    assert!(stderr.contains("unknown field `belt_speed`"), "{stderr}");
}

#[test]
fn missing_files_are_all_reported() {
    // Relative paths resolve against the config's folder: a temp dir with none of them.
    let (ok, stderr) = run_with_config(&shipped_config());
    assert!(!ok);
    for field in [
        "camera.pipeline",
        "calibration.file",
        "plc.register_map",
        "model.dir",
    ] {
        assert!(stderr.contains(field), "{field} missing from: {stderr}");
    }
}

#[test]
fn version_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .arg("version")
        .output()
        .expect("run");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("linesight "));
}

/// `[model] threshold` is on the model's own scale: 3.5 deviations suits an anomaly model, but
/// the simulated line's defect network scores a probability, so the station refuses it,
/// naming the field; a probability starts. `--max-parts` ends a station that wrongly starts.
#[test]
fn a_threshold_off_the_models_scale_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |threshold: &str| {
        let path = crate::station_process::config_file(
            dir.path(),
            &[("# threshold = 0.5", &format!("threshold = {threshold}"))],
        );
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8");
        run_station(&path, &["--max-parts", "3", "--data-dir", data])
    };
    let (ok, stderr) = run("3.5");
    assert!(
        !ok,
        "a threshold of 3.5 for a probability started the station"
    );
    assert!(
        stderr.contains("model.threshold")
            && stderr.contains("3.5 is not a probability in (0, 1]")
            && stderr.contains("defect-net"),
        "{stderr}"
    );
    let (ok, stderr) = run("0.7");
    assert!(ok, "a probability threshold is refused: {stderr}");
}

/// `train supervised --folds K` cross-validates: a model per fold, a table with the pooled
/// row, and the figures as JSON; one fold is refused.
#[test]
fn train_supervised_cross_validates_with_folds() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("tiles");
    crate::write_tile_dataset(
        &data,
        &mut linesight::simulate::PartGenerator::new(3, 256, 256, 0.0),
        6,
    );
    let out = dir.path().join("cv");
    let weights = crate::backbone_weights();
    let args = |folds: &str| -> Vec<String> {
        [
            "train",
            "supervised",
            "--layout",
            "magnetic-tile",
            "--epochs",
            "2",
            "--augmented-copies",
            "0",
            "--input-size",
            "128",
            "--folds",
            folds,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--data".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--backbone".into(),
            weights.display().to_string(),
        ])
        .collect()
    };
    let (ok, stderr) = linesight(&args("1").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(stderr.contains("--folds"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(args("2"))
        .output()
        .expect("run linesight");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("pooled") && l.contains(" 18 ")),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("cross-validation.json")).expect("json written"),
    )
    .expect("json");
    assert_eq!(report["folds"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["pooled"]["n_test"], 18);
    assert!(out.join("fold-1/card.json").is_file() && out.join("fold-2/card.json").is_file());
}
