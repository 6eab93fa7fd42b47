//! `linesight rootcause` on CSV files: findings on a generated table, bad input, and AI4I 2020
//! when the shared datasets are there.

use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::repo;

/// Runs the binary: (success, stdout, stderr).
fn rootcause(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .arg("rootcause")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run linesight");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A semicolon-separated table: cracks when the press runs hot, three independent tags, a
/// serial number and a constant column.
fn generated_csv(path: &std::path::Path) {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut text = String::from(
        "\u{feff}serial;press temperature [°C];line speed [m/min];humidity [%];vibration [mm/s];site;cracks\n",
    );
    for part in 0..6000 {
        let temperature: f64 = rng.gen_range(180.0..240.0);
        let cracked = if temperature > 212.0 {
            rng.gen_bool(0.3)
        } else {
            rng.gen_bool(0.02)
        };
        text += &format!(
            "SN{part:05};{temperature:.2};{:.1};{:.1};{:.3};plant-1;{}\n",
            rng.gen_range(20.0..40.0),
            rng.gen_range(30.0..70.0),
            rng.gen_range(0.0..5.0),
            cracked as u8
        );
    }
    std::fs::write(path, text).expect("write csv");
}

#[test]
fn findings_name_the_driver_and_no_independent_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("parts.csv");
    let json = dir.path().join("analysis.json");
    generated_csv(&csv);
    let (ok, stdout, stderr) = rootcause(&[
        "--csv",
        csv.to_str().expect("utf-8"),
        "--target",
        "cracks",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("\"serial\" skipped: identifier"),
        "{stderr}"
    );
    assert!(stderr.contains("\"site\" skipped: constant"), "{stderr}");
    assert!(
        stdout.contains("when press temperature [°C] > 21"),
        "{stdout}"
    );
    for decoy in ["line speed", "humidity", "vibration"] {
        assert!(
            !stdout.contains(&format!("when {decoy}")),
            "{decoy} named:\n{stdout}"
        );
    }
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let threshold = analysis["findings"][0]["condition"]["region"]["threshold"]
        .as_f64()
        .expect("a threshold");
    assert!((threshold - 212.0).abs() < 2.0, "threshold {threshold}");
    assert!(
        analysis["features"][0]["bins"]
            .as_array()
            .is_some_and(|bins| bins.len() == 10)
    );
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("parts.csv");
    std::fs::write(&csv, "a,b,defect\n1,2,0\n3,4\n").expect("write csv");
    let path = csv.to_str().expect("utf-8");
    let (ok, _, stderr) = rootcause(&["--csv", path, "--target", "defect"]);
    assert!(!ok);
    assert!(
        stderr.contains("line 3: 2 fields where the header has 3"),
        "{stderr}"
    );
    let (ok, _, stderr) = rootcause(&["--csv", path, "--target", "cracks"]);
    assert!(!ok);
    assert!(stderr.contains("no target column \"cracks\""), "{stderr}");
    std::fs::write(&csv, "a,b,defect\n1,2,0\n3,4,0\n").expect("write csv");
    let (ok, _, stderr) = rootcause(&["--csv", path, "--target", "defect"]);
    assert!(!ok);
    assert!(stderr.contains("one class only"), "{stderr}");
}

#[test]
fn ai4i_tool_wear_failures_follow_tool_wear() {
    let data = repo().join("../shared/datasets/ai4i2020/ai4i2020_dev.csv");
    if !data.exists() {
        eprintln!("skipped: {} is absent", data.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("twf.json");
    let mut args = vec!["--csv", data.to_str().expect("utf-8"), "--target", "TWF"];
    for other in [
        "UDI",
        "Product ID",
        "Machine failure",
        "HDF",
        "PWF",
        "OSF",
        "RNF",
    ] {
        args.extend(["--exclude", other]);
    }
    args.extend(["--json", json.to_str().expect("utf-8")]);
    let (ok, stdout, stderr) = rootcause(&args);
    assert!(ok, "{stderr}");
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let findings = analysis["findings"].as_array().expect("findings");
    let threshold = findings
        .iter()
        .find(|f| f["feature"] == "Tool wear [min]" && f["condition"]["region"]["kind"] == "above")
        .and_then(|f| f["condition"]["region"]["threshold"].as_f64())
        .unwrap_or_else(|| panic!("no tool wear finding:\n{stdout}"));
    assert!(
        (threshold - 200.0).abs() <= 20.0,
        "tool wear threshold {threshold}\n{stdout}"
    );
}
