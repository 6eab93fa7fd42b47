use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::*;
use crate::learn::drift::{InputProfile, ProfileImages};

/// Input statistics of a good part: brightness 128 ± 4, the rest around their own means.
fn good_stats(rng: &mut ChaCha8Rng, brightness_shift: f32) -> InputStats {
    let noise = Normal::new(0.0f32, 1.0).expect("normal");
    let mut draw = |mean: f32, spread: f32| mean + spread * noise.sample(rng);
    let brightness = draw(128.0, 4.0) + brightness_shift;
    InputStats {
        brightness,
        contrast: draw(30.0, 2.0),
        shadows: brightness - draw(50.0, 3.0),
        highlights: brightness + draw(50.0, 3.0),
        edges: draw(6.0, 0.8),
        fine_texture: draw(9.0, 1.0),
    }
}

/// A reference learnt from 300 + 300 good parts, with good scores uniform on [0, 0.4) and a
/// validation error rate of (3 + 1) / (398 + 2) = 0.01.
fn reference() -> DriftReference {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let fit: Vec<InputStats> = (0..300).map(|_| good_stats(&mut rng, 0.0)).collect();
    let calibration: Vec<InputStats> = (0..300).map(|_| good_stats(&mut rng, 0.0)).collect();
    let scores: Vec<f32> = (0..300).map(|i| 0.4 * i as f32 / 300.0).collect();
    DriftReference::learn(
        &fit,
        &calibration,
        ProfileImages::Good,
        &scores,
        (3, 398),
        true,
    )
    .expect("learns")
}

/// `n` parts newest first, drawn like the training parts unless changed by `shape`.
fn parts(
    seed: u64,
    n: usize,
    reference: &DriftReference,
    mut shape: impl FnMut(usize, &mut PartSeen, &mut ChaCha8Rng),
) -> Vec<PartSeen> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let uniform = rand_distr::Uniform::new(0.0f32, 0.4);
    (0..n)
        .map(|i| {
            let stats = good_stats(&mut rng, 0.0);
            let mut part = PartSeen {
                part_id: (n - i) as u64,
                verdict: Verdict::Pass,
                score: Some(uniform.sample(&mut rng)),
                novelty: Some(InputNovelty {
                    score: reference.input.novelty(&stats),
                    limit: reference.input.limit,
                    stats,
                }),
                views: 1,
                flagged: false,
                shadow_disagrees: None,
                image: Some(format!("img{i}")),
            };
            shape(i, &mut part, &mut rng);
            part
        })
        .collect()
}

fn renovelty(part: &mut PartSeen, profile: &InputProfile, stats: InputStats) {
    part.novelty = Some(InputNovelty {
        score: profile.novelty(&stats),
        limit: profile.limit,
        stats,
    });
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("time")
}

fn run(
    reference: &DriftReference,
    parts: &[PartSeen],
    previous: Option<&DriftReport>,
) -> DriftReport {
    evaluate("m@1", Some(reference), 0.5, None, parts, previous, now())
}

fn state(report: &DriftReport, check: &str) -> CheckState {
    report.check(check).expect("the check is reported").state
}

#[test]
fn the_tests_give_the_textbook_values() {
    // P(X ≥ 3) for Binomial(10, 0.1) = 1 − (0.3487 + 0.3874 + 0.1937) = 0.0702.
    assert!((binomial_upper_tail(3, 10, 0.1) - 0.070_190_8).abs() < 1e-6);
    assert_eq!(binomial_upper_tail(0, 10, 0.1), 1.0);
    assert_eq!(binomial_upper_tail(11, 10, 0.1), 0.0);
    // Identical samples: distance 0; disjoint ones: distance 1.
    let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
    assert_eq!(ks_distance(&a, &a), 0.0);
    let b: Vec<f32> = (200..300).map(|i| i as f32).collect();
    assert_eq!(ks_distance(&a, &b), 1.0);
    // Half-overlapping: 0.5.
    let c: Vec<f32> = (50..150).map(|i| i as f32).collect();
    assert!((ks_distance(&a, &c) - 0.5).abs() < 1e-12);
    // Kolmogorov's distribution: Q(1.36) ≈ 0.05 and Q(1.95) ≈ 0.001 for large samples.
    let big = 1_000_000;
    let d = |lambda: f64| lambda / ((big / 2) as f64).sqrt();
    assert!((ks_p_value(d(1.358), big, big) - 0.05).abs() < 0.002);
    assert!((ks_p_value(d(1.949), big, big) - 0.001).abs() < 0.0002);
    // The critical value is where the p-value lands on its level.
    let critical = ks_critical(RAISE_P, 200, 150);
    assert!((ks_p_value(critical, 200, 150) / RAISE_P - 1.0).abs() < 0.01);
}

#[test]
fn a_line_that_has_not_changed_raises_nothing() {
    let reference = reference();
    for seed in 0..20 {
        let window = parts(100 + seed, WINDOW, &reference, |_, _, _| {});
        let report = run(&reference, &window, None);
        assert!(!report.drifting, "seed {seed}: {}", report.message);
        for check in ["inputs", "scores", "flags"] {
            assert_ne!(
                state(&report, check),
                CheckState::Drifting,
                "seed {seed}: {check}"
            );
            assert_ne!(state(&report, check), CheckState::NotWatched, "{check}");
        }
        assert_eq!(state(&report, "shadow"), CheckState::NotWatched);
        assert!(
            report.message.contains("fits the last 200 parts"),
            "{}",
            report.message
        );
    }
}

#[test]
fn a_dimmer_lamp_drifts_the_inputs_and_names_the_parts_it_changed() {
    let reference = reference();
    let profile = reference.input.clone();
    // The newest 60 parts of 200 came after the lamp lost 15 % of its light.
    let window = parts(1, WINDOW, &reference, |i, part, rng| {
        if i < 60 {
            let stats = good_stats(rng, -20.0);
            renovelty(part, &profile, stats);
        }
    });
    let report = run(&reference, &window, None);
    assert!(report.drifting, "{}", report.message);
    let inputs = report.check("inputs").expect("inputs");
    assert_eq!(inputs.state, CheckState::Drifting);
    assert!(inputs.observed >= 55.0, "{inputs:?}");
    assert!(
        inputs.detail.contains("brightness") || inputs.detail.contains("shadows"),
        "{}",
        inputs.detail
    );
    // The named parts are the relit ones (ids 141..=200), most novel first.
    assert!(!report.parts.is_empty());
    assert!(
        report.parts.iter().all(|p| p.part_id > 140),
        "{:?}",
        report.parts
    );
    let novelties: Vec<f32> = report.parts.iter().filter_map(|p| p.novelty).collect();
    assert!(novelties.windows(2).all(|w| w[0] >= w[1]));
    assert!(report.message.contains("inputs:"), "{}", report.message);
    assert!(
        report.message.contains("labelling queue"),
        "{}",
        report.message
    );
}

#[test]
fn passed_scores_that_creep_up_drift_the_scores() {
    let reference = reference();
    // Half the passed parts score in the top of the good range: the model sees something new.
    let window = parts(2, WINDOW, &reference, |i, part, _| {
        if i % 2 == 0 {
            part.score = Some(0.38 + 0.1 * (i as f32 / WINDOW as f32));
        }
    });
    let report = run(&reference, &window, None);
    assert_eq!(
        state(&report, "scores"),
        CheckState::Drifting,
        "{}",
        report.message
    );
    assert_eq!(state(&report, "inputs"), CheckState::Fine);
    let scores = report.check("scores").expect("scores");
    assert!(scores.observed > scores.expected);
    // Rejected parts are not compared: a line that makes more defects is not a drifting model.
    let rejects = parts(3, WINDOW, &reference, |i, part, _| {
        if i % 2 == 0 {
            part.verdict = Verdict::Fail;
            part.score = Some(0.9);
        }
    });
    let report = run(&reference, &rejects, None);
    assert_eq!(
        state(&report, "scores"),
        CheckState::Fine,
        "{}",
        report.message
    );
}

#[test]
fn flags_beyond_the_validation_error_rate_drift() {
    let reference = reference();
    // 0.01 × 200 = 2 expected; 4 is within chance, 12 is not.
    let few = parts(4, WINDOW, &reference, |i, part, _| part.flagged = i < 4);
    assert_eq!(
        state(&run(&reference, &few, None), "flags"),
        CheckState::Fine
    );
    let many = parts(4, WINDOW, &reference, |i, part, _| {
        part.flagged = i % 16 == 0
    });
    let report = run(&reference, &many, None);
    assert_eq!(
        state(&report, "flags"),
        CheckState::Drifting,
        "{}",
        report.message
    );
    assert_eq!(
        report.parts.iter().filter(|p| p.check == "flags").count(),
        13,
        "every flagged part is named"
    );
}

#[test]
fn a_drifting_check_clears_only_well_inside_its_limit() {
    let reference = reference();
    // 8 of 200 flagged: p ≈ 0.004, between the raising (1e-4) and clearing (1e-2) levels.
    let between = parts(5, WINDOW, &reference, |i, part, _| part.flagged = i < 8);
    let p = binomial_upper_tail(8, WINDOW, reference.error_rate);
    assert!(p > RAISE_P && p < CLEAR_P, "{p}");
    let fresh = run(&reference, &between, None);
    assert_eq!(state(&fresh, "flags"), CheckState::Watch);
    assert!(!fresh.drifting);
    let many = parts(5, WINDOW, &reference, |i, part, _| part.flagged = i < 20);
    let drifting = run(&reference, &many, None);
    assert!(drifting.drifting);
    // After drifting, the same in-between window keeps it drifting…
    let held = run(&reference, &between, Some(&drifting));
    assert_eq!(state(&held, "flags"), CheckState::Drifting);
    // …but not for another model, and a clean window clears it.
    let other = evaluate(
        "m@2",
        Some(&reference),
        0.5,
        None,
        &between,
        Some(&drifting),
        now(),
    );
    assert_eq!(state(&other, "flags"), CheckState::Watch);
    let clean = parts(6, WINDOW, &reference, |_, _, _| {});
    assert!(!run(&reference, &clean, Some(&held)).drifting);
}

#[test]
fn shadow_disagreements_beyond_both_error_rates_drift() {
    let reference = reference();
    let shadow = Some(ShadowReference { error_rate: 0.01 });
    // 0.02 × 200 = 4 allowed; 20 is a model that sees other parts.
    let window = parts(7, WINDOW, &reference, |i, part, _| {
        part.shadow_disagrees = Some(i % 10 == 0);
    });
    let report = evaluate("m@1", Some(&reference), 0.5, shadow, &window, None, now());
    assert_eq!(
        state(&report, "shadow"),
        CheckState::Drifting,
        "{}",
        report.message
    );
    let calm = parts(7, WINDOW, &reference, |i, part, _| {
        part.shadow_disagrees = Some(i == 3);
    });
    let report = evaluate("m@1", Some(&reference), 0.5, shadow, &calm, None, now());
    assert_eq!(state(&report, "shadow"), CheckState::Fine);
    // A shadow without a reference is not compared.
    let report = evaluate("m@1", Some(&reference), 0.5, None, &window, None, now());
    assert_eq!(state(&report, "shadow"), CheckState::NotWatched);
}

#[test]
fn too_few_parts_or_no_reference_watch_nothing() {
    let reference = reference();
    let few = parts(8, MIN_PARTS - 1, &reference, |_, part, _| {
        part.flagged = true
    });
    let report = run(&reference, &few, None);
    assert!(!report.drifting);
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.state == CheckState::NotWatched)
    );
    assert!(
        report
            .check("flags")
            .expect("flags")
            .detail
            .contains("needs 50")
    );
    assert!(
        report.message.contains("too few to judge"),
        "{}",
        report.message
    );
    let window = parts(9, WINDOW, &reference, |_, part, _| part.flagged = true);
    let report = evaluate("m@1", None, 0.5, None, &window, None, now());
    assert!(!report.drifting && !report.has_reference);
    assert!(
        report.message.contains("no drift reference"),
        "{}",
        report.message
    );
}

#[test]
fn the_openapi_document_describes_a_report_as_served() {
    use crate::serve::openapi_check::{schema_fields, served_fields};
    let reference = reference();
    let profile = reference.input.clone();
    let window = parts(12, WINDOW, &reference, |i, part, rng| {
        if i < 60 {
            renovelty(part, &profile, good_stats(rng, -20.0));
        }
    });
    let report = run(&reference, &window, None);
    let served = serde_json::to_value(&report).expect("json");
    assert_eq!(served_fields(&served), schema_fields("DriftReport"));
    assert_eq!(
        served_fields(&served["checks"][0]),
        schema_fields("DriftCheck")
    );
    assert_eq!(
        served_fields(&served["parts"][0]),
        schema_fields("DriftPart")
    );
    let novelty = serde_json::to_value(window[0].novelty.expect("measured")).expect("json");
    assert_eq!(served_fields(&novelty), schema_fields("InputNovelty"));
    assert_eq!(
        served_fields(&novelty["stats"]),
        schema_fields("InputStats")
    );
}

/// `n_novel` of `WINDOW` parts past the limit, each seen by `views` cameras.
fn novel_window(reference: &DriftReference, n_novel: usize, views: usize) -> Vec<PartSeen> {
    let limit = reference.input.limit;
    parts(13, WINDOW, reference, |i, part, _| {
        part.views = views;
        if let Some(novelty) = &mut part.novelty {
            novelty.score = if i < n_novel {
                limit * 2.0
            } else {
                limit * 0.5
            };
        }
    })
}

#[test]
fn a_part_seen_by_several_cameras_is_judged_at_its_views_rate() {
    let reference = reference();
    // 12 of 200: far beyond the 2.4 expected of one camera, within the 7 expected of the most
    // novel of three.
    let one = run(&reference, &novel_window(&reference, 12, 1), None);
    assert_eq!(
        state(&one, "inputs"),
        CheckState::Drifting,
        "{}",
        one.message
    );
    let three = run(&reference, &novel_window(&reference, 12, 3), None);
    assert_eq!(
        state(&three, "inputs"),
        CheckState::Fine,
        "{}",
        three.message
    );
    let expected = three.check("inputs").expect("inputs").expected;
    assert!(
        (expected - 200.0 * (1.0 - (1.0 - reference.input.expected_share).powi(3))).abs() < 1e-9
    );
}

#[test]
fn scores_compare_like_with_like_or_not_at_all() {
    let reference = reference();
    // Half the parts passed on a tolerated class, above the threshold: not what the reference
    // holds, so not compared.
    let tolerated = parts(14, WINDOW, &reference, |i, part, _| {
        if i % 2 == 0 {
            part.score = Some(0.9);
        }
    });
    let report = run(&reference, &tolerated, None);
    assert_eq!(
        state(&report, "scores"),
        CheckState::Fine,
        "{}",
        report.message
    );
    assert_eq!(report.check("scores").expect("scores").parts, WINDOW / 2);
    // Scores of a first fit the shipped model refitted are not compared.
    let refitted = DriftReference {
        scores_of_shipped_model: false,
        ..reference.clone()
    };
    let creeping = parts(2, WINDOW, &reference, |_, part, _| part.score = Some(0.45));
    let report = run(&refitted, &creeping, None);
    assert_eq!(state(&report, "scores"), CheckState::NotWatched);
    assert_eq!(
        state(&run(&reference, &creeping, None), "scores"),
        CheckState::Drifting
    );
    // A limit from the fit images alone has no known rate: the inputs are not judged by it.
    let uncalibrated = DriftReference {
        input: InputProfile {
            n_calibration: 0,
            ..reference.input.clone()
        },
        ..reference.clone()
    };
    let report = run(&uncalibrated, &novel_window(&reference, 60, 1), None);
    assert_eq!(state(&report, "inputs"), CheckState::NotWatched);
}

#[test]
fn a_restart_keeps_a_raised_alarm_until_its_checks_clear() {
    let reference = reference();
    // 8 flagged of 200: between the raising and clearing levels.
    let between = parts(5, WINDOW, &reference, |i, part, _| part.flagged = i < 8);
    let restarted = DriftReport::raised_before("m@1");
    let report = run(&reference, &between, Some(&restarted));
    assert!(report.drifting, "{}", report.message);
    assert_eq!(state(&report, "flags"), CheckState::Drifting);
    let clean = parts(6, WINDOW, &reference, |_, _, _| {});
    assert!(!run(&reference, &clean, Some(&restarted)).drifting);
}

#[tokio::test]
async fn the_last_condition_report_is_read_back_from_the_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), "s").expect("store");
    assert_eq!(last_condition(&store), None);
    let report = |alarm: &str, state| {
        RecordBody::Alarm(AlarmRecord::condition(
            alarm,
            state,
            AlarmSeverity::Medium,
            "m".into(),
        ))
    };
    store
        .append_all(vec![
            report(MODEL_DRIFT_ALARM, AlarmState::Raised),
            report("disk_low", AlarmState::Cleared),
        ])
        .await
        .expect("append");
    assert_eq!(last_condition(&store), Some(true));
    store
        .append(report(MODEL_DRIFT_ALARM, AlarmState::Cleared))
        .await
        .expect("append");
    assert_eq!(last_condition(&store), Some(false));
}
