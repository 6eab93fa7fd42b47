use rand_distr::{Distribution, Normal};

use super::*;

/// `n_engines` synthetic engines run to failure: channel 5 (`s3`) and channel 9 (`s7`) drift
/// towards failure (exponentially, as wear feeds on itself), channel 12 (`s10`) is pure noise,
/// the rest constant.
fn synthetic_engines(n_engines: usize, seed: u64) -> Vec<Engine> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0f32, 0.05).expect("a valid deviation");
    (0..n_engines)
        .map(|engine_idx| {
            let len = rng.gen_range(120..200usize);
            let cycles = (0..len)
                .map(|cycle_idx| {
                    let remaining = (len - 1 - cycle_idx) as f32;
                    let wear = (-remaining / 40.0).exp();
                    let mut channels = [100.0f32; N_CHANNELS];
                    channels[5] = 10.0 + 3.0 * wear + noise.sample(&mut rng);
                    channels[9] = 50.0 - 2.0 * wear + noise.sample(&mut rng);
                    channels[12] = 7.0 + noise.sample(&mut rng);
                    Cycle {
                        cycle: cycle_idx as u32 + 1,
                        channels,
                    }
                })
                .collect();
            Engine {
                unit: engine_idx as u32 + 1,
                cycles,
            }
        })
        .collect()
}

fn quick_settings() -> RulSettings {
    RulSettings {
        window: 15,
        cap: 80.0,
        epochs: 12,
        batch_size: 64,
        learning_rate: 3e-3,
        filters: 8,
        ..RulSettings::default()
    }
}

#[test]
fn synthetic_engines_train_quickly_and_beat_the_mean_by_far() {
    let engines = synthetic_engines(40, 1);
    let split = split_holdout(
        &engines,
        &HoldoutSettings {
            n_holdout: 10,
            cuts_per_engine: 4,
            min_history: 10,
            seed: 2,
        },
    )
    .expect("split");
    let settings = quick_settings();
    let model = train(&split.train, &settings, false).expect("training");
    assert!(
        model.card().features.contains(&"s3".to_owned())
            && model.card().features.contains(&"s7".to_owned()),
        "the drifting sensors are kept: {:?}",
        model.card().features
    );
    assert!(
        !model.card().features.contains(&"s10".to_owned()),
        "the noise channel is dropped: {:?}",
        model.card().features
    );
    assert_eq!(model.card().dropped.len(), N_CHANNELS - 2);

    let figures = model.evaluate(&split.test, &split.rul).expect("evaluation");
    let truth: Vec<f64> = split
        .rul
        .iter()
        .map(|&r| (r as f32).min(settings.cap) as f64)
        .collect();
    // The constant-mean baseline: the training windows' mean capped RUL, whatever the engine.
    let (_, train_targets) = all_windows(&split.train, settings.cap);
    let mean = train_targets.iter().map(|&t| t as f64).sum::<f64>() / train_targets.len() as f64;
    let baseline =
        (truth.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / truth.len() as f64).sqrt();
    assert!(
        figures.rmse < 0.5 * baseline,
        "RMSE {:.1} against the mean's {baseline:.1}",
        figures.rmse
    );
    assert!(figures.coverage > 0.6, "{figures:?}");
}

#[test]
fn training_is_deterministic_for_a_seed_and_the_saved_model_predicts_the_same() {
    let engines = synthetic_engines(8, 3);
    let settings = RulSettings {
        epochs: 2,
        ..quick_settings()
    };
    let first = train(&engines, &settings, false).expect("training");
    let second = train(&engines, &settings, false).expect("training");
    assert_eq!(first.card(), second.card());

    let dir = tempfile::tempdir().expect("temporary folder");
    first.save(dir.path()).expect("save");
    let loaded = RulModel::load(dir.path()).expect("load");
    let history = &engines[0].cycles[..50];
    let estimate = first.predict(history).expect("estimate");
    assert_eq!(loaded.predict(history).expect("estimate"), estimate);
    assert!(estimate.low <= estimate.cycles && estimate.cycles <= estimate.high);
    assert!(estimate.cycles >= 0.0 && estimate.cycles <= settings.cap);
    // A history shorter than the window is padded, not refused.
    assert!(loaded.predict(&engines[0].cycles[..1]).is_ok());
    assert!(loaded.predict(&[]).is_err());
}

#[test]
fn constant_channels_only_are_refused() {
    let mut engines = synthetic_engines(4, 5);
    for engine in &mut engines {
        for cycle in &mut engine.cycles {
            cycle.channels = [1.0; N_CHANNELS];
        }
    }
    let error = train(&engines, &quick_settings(), false).expect_err("nothing to learn from");
    assert!(error.to_string().contains("no channel"), "{error}");
}

fn line(unit: u32, cycle: u32) -> String {
    let mut text = format!("{unit} {cycle}");
    for value in 0..N_CHANNELS {
        text.push_str(&format!(" {}.5", value));
    }
    text
}

/// Parses `text` and expects an error naming `line` and containing `words`.
fn check_error(text: &str, line_no: usize, words: &str) {
    match parse_cmapss(text) {
        Err(RulError::Line { line, why }) => {
            assert_eq!(line, line_no, "{why}");
            assert!(why.contains(words), "expected {words:?} in {why:?}");
        }
        other => panic!("expected an error on line {line_no}, got {other:?}"),
    }
}

#[test]
fn cmapss_lines_parse_with_trailing_spaces_and_round_trip() {
    let text = format!("{}  \n{}  \n{}  \n", line(1, 1), line(1, 2), line(2, 1));
    let engines = parse_cmapss(&text).expect("parse");
    assert_eq!(engines.len(), 2);
    assert_eq!(engines[0].cycles.len(), 2);
    assert_eq!(engines[0].cycles[1].cycle, 2);
    assert_eq!(engines[0].cycles[0].channels[23], 23.5);
    assert_eq!(
        parse_cmapss(&format_cmapss(&engines)).expect("parse"),
        engines
    );
}

#[test]
fn cmapss_errors_name_their_line() {
    let short = format!("{}\n1 2 3 4\n", line(1, 1));
    check_error(&short, 2, "4 numbers");
    let not_a_number = format!("{}\n{}", line(1, 1), line(1, 2).replace(" 7.5", " seven"));
    check_error(&not_a_number, 2, "s5 \"seven\" is not a number");
    let backwards = format!("{}\n{}\n{}\n", line(1, 1), line(1, 3), line(1, 2));
    check_error(&backwards, 3, "cycle 2 after cycle 3");
    let split_unit = format!("{}\n{}\n{}\n", line(1, 1), line(2, 1), line(1, 2));
    check_error(&split_unit, 3, "unit 1 starts again");
    let fractional_unit = line(1, 1).replacen("1 1", "1.5 1", 1);
    check_error(&fractional_unit, 1, "not a positive whole number");
    let nan = line(1, 1).replace(" 3.5", " NaN");
    check_error(&nan, 1, "not a finite number");
    assert!(matches!(parse_cmapss("\n  \n"), Err(RulError::Data(_))));
}

#[test]
fn rul_files_parse_and_their_count_is_checked() {
    assert_eq!(parse_rul("112\n98 \n\n69\n").expect("parse"), [112, 98, 69]);
    assert!(matches!(
        parse_rul("112\nabc\n"),
        Err(RulError::Line { line: 2, .. })
    ));
    assert!(matches!(
        parse_rul("1 2\n"),
        Err(RulError::Line { line: 1, .. })
    ));
    assert!(matches!(
        parse_rul("-3\n"),
        Err(RulError::Line { line: 1, .. })
    ));
    let engines = parse_cmapss(&format!("{}\n{}\n", line(1, 1), line(2, 1))).expect("parse");
    let error = check_rul_count(&engines, &[5]).expect_err("one value for two units");
    assert_eq!(
        error.to_string(),
        "the RUL file has 1 values but the test file has 2 units"
    );
}

#[test]
fn holdout_split_cuts_engines_before_failure_like_the_official_test_set() {
    let engines = synthetic_engines(10, 4);
    let settings = HoldoutSettings {
        n_holdout: 3,
        cuts_per_engine: 2,
        min_history: 31,
        seed: 9,
    };
    let split = split_holdout(&engines, &settings).expect("split");
    assert_eq!(split.train.len(), 7);
    assert_eq!(split.test.len(), 6);
    assert_eq!(split.rul.len(), 6);
    for ((test_unit, &rul), &source_unit) in
        split.test.iter().zip(&split.rul).zip(&split.source_units)
    {
        let source = engines
            .iter()
            .find(|e| e.unit == source_unit)
            .expect("the source engine");
        assert!(split.train.iter().all(|e| e.unit != source_unit));
        assert!(test_unit.cycles.len() >= 31 && rul >= 1);
        assert_eq!(test_unit.cycles.len() + rul as usize, source.cycles.len());
        assert_eq!(
            test_unit.cycles[..],
            source.cycles[..test_unit.cycles.len()]
        );
    }
    let units: Vec<u32> = split.test.iter().map(|e| e.unit).collect();
    assert_eq!(units, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        split_holdout(&engines, &settings).expect("split").rul,
        split.rul
    );
    assert!(
        split_holdout(
            &engines,
            &HoldoutSettings {
                n_holdout: 10,
                ..settings
            }
        )
        .is_err()
    );
}

#[test]
fn phm08_penalises_late_estimates_more() {
    assert_eq!(phm08(0.0), 0.0);
    assert!((phm08(10.0) - (1.0f64.exp() - 1.0)).abs() < 1e-12);
    assert!((phm08(-13.0) - (1.0f64.exp() - 1.0)).abs() < 1e-12);
    assert!(phm08(20.0) > phm08(-20.0));
}

#[test]
fn conformal_bands_cover_their_share_of_residuals() {
    let predicted: Vec<f32> = (0..600).map(|i| (i % 120) as f32).collect();
    let truth: Vec<f32> = predicted
        .iter()
        .enumerate()
        .map(|(i, p)| p + ((i * 37) % 21) as f32 - 10.0)
        .collect();
    let bands = calibrate_interval(&predicted, &truth, 0.9);
    assert_eq!(bands.len(), 3);
    let inside = predicted
        .iter()
        .zip(&truth)
        .filter(|(p, t)| {
            let band = band_of(&bands, **p);
            **p + band.residual_low <= **t && **t <= **p + band.residual_high
        })
        .count();
    assert!(inside as f64 / 600.0 >= 0.9, "{inside} of 600");
}

/// The real FD001 training file, when the shared datasets are there: a short training still
/// lands far below the constant-mean baseline (about 40 cycles) on held-out engines.
#[test]
fn fd001_short_training_beats_a_loose_bound() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/datasets/cmapss-fd001/train_FD001.txt"
    ));
    if !path.exists() {
        eprintln!("skipping: {} is absent", path.display());
        return;
    }
    let engines = read_cmapss(path).expect("FD001 parses");
    assert_eq!(engines.len(), 100);
    let split = split_holdout(
        &engines,
        &HoldoutSettings {
            n_holdout: 20,
            cuts_per_engine: 3,
            min_history: 31,
            seed: 5,
        },
    )
    .expect("split");
    let settings = RulSettings {
        epochs: 5,
        ..RulSettings::default()
    };
    let model = train(&split.train, &settings, false).expect("training");
    let figures = model.evaluate(&split.test, &split.rul).expect("evaluation");
    assert!(figures.rmse < 30.0, "{figures:?}");
}
