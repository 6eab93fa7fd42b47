//! Hand-checkable charts, and every run rule firing on a constructed series and staying quiet
//! on a near miss.

use super::*;

fn close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

fn observations(values: &[f64]) -> Vec<Observation> {
    values
        .iter()
        .map(|&value| Observation {
            at: None,
            value,
            excluded: false,
        })
        .collect()
}

fn counts(pairs: &[(u64, u64)]) -> Vec<Count> {
    pairs
        .iter()
        .map(|&(count, n)| Count {
            at: None,
            count,
            n,
            excluded: false,
        })
        .collect()
}

fn subgroups(groups: &[&[f64]]) -> Vec<Subgroup> {
    groups
        .iter()
        .map(|values| Subgroup {
            at: None,
            values: values.to_vec(),
            excluded: false,
        })
        .collect()
}

/// Options with the centre at 0 and σ = 1, so an individuals point's z is its value.
fn unit_options(rules: &str) -> ChartOptions {
    ChartOptions {
        limits: Limits::Fixed {
            center: 0.0,
            sigma: 1.0,
        },
        rules: rules.parse().expect("rule names"),
        spec: None,
    }
}

/// The input indices where `rule` signalled on the individuals chart of `z`.
fn signals(rule: &str, z: &[f64]) -> Vec<usize> {
    signals_on(rule, observations(z))
}

fn signals_on(rule: &str, points: Vec<Observation>) -> Vec<usize> {
    let chart = individuals_chart(&points, &unit_options(rule)).expect("chart");
    chart
        .points
        .iter()
        .filter(|p| !p.rules.is_empty())
        .map(|p| p.index)
        .collect()
}

fn alternating(len: usize, size: f64) -> Vec<f64> {
    (0..len)
        .map(|i| if i.is_multiple_of(2) { size } else { -size })
        .collect()
}

#[test]
fn p_chart_limits_follow_each_sample_size() {
    let chart = p_chart(
        &counts(&[(2, 100), (4, 100), (3, 200), (1, 100)]),
        &ChartOptions::default(),
    )
    .expect("p chart");
    close(chart.center, 0.02, 1e-15); // 10 / 500
    // n = 100: σ = √(0.02 · 0.98 / 100) = 0.014, so 0.02 ± 0.042, LCL clamped at 0.
    close(chart.points[0].ucl, 0.062, 1e-12);
    assert_eq!(chart.points[0].lcl, 0.0);
    close(
        chart.points[2].ucl,
        0.02 + 3.0 * (0.000_098f64).sqrt(),
        1e-12,
    );
    close(chart.points[1].value, 0.04, 1e-15);
    close(chart.points[1].z.expect("z"), 0.02 / 0.014, 1e-12);
    assert_eq!(chart.points[2].n, Some(200));
    assert!(chart.violations.is_empty());
}

#[test]
fn u_chart_uses_poisson_sigma() {
    let chart =
        u_chart(&counts(&[(4, 2), (2, 2), (6, 4)]), &ChartOptions::default()).expect("u chart");
    close(chart.center, 1.5, 1e-15); // 12 / 8
    close(chart.points[0].ucl, 1.5 + 3.0 * 0.75f64.sqrt(), 1e-12);
    close(chart.points[2].ucl, 1.5 + 3.0 * 0.375f64.sqrt(), 1e-12);
    assert_eq!(chart.points[0].lcl, 0.0);
}

#[test]
fn laney_p_with_equal_n_is_an_individuals_chart_of_p() {
    // p alternates 0.1, 0.2 at n = 100: p̄ = 0.15, every |Δp| = 0.1, so σ_pi σ_z = 0.1 / 1.128
    // and the limits are 0.15 ± 3 · 0.1 / 1.128, exactly the individuals chart of p.
    let chart = laney_p_chart(
        &counts(&[(10, 100), (20, 100), (10, 100), (20, 100)]),
        &ChartOptions::default(),
    )
    .expect("laney p");
    close(chart.center, 0.15, 1e-15);
    close(chart.points[0].ucl, 0.15 + 0.3 / 1.128, 1e-12);
    close(chart.points[0].lcl, 0.0, 0.0); // 0.15 − 0.266 clamped
    let sigma_p = (0.15f64 * 0.85 / 100.0).sqrt();
    close(chart.sigma, 0.1 / sigma_p / 1.128, 1e-12);
    match chart.details {
        ChartDetails::Attribute {
            moving_range_z: Some(mr),
            ..
        } => close(mr, 0.1 / sigma_p, 1e-12),
        ref other => panic!("details {other:?}"),
    }
    // The same data on the plain p chart: σ = 0.0357, limits 0.043..0.257; on Laney's, 0.
    let plain = p_chart(
        &counts(&[(10, 100), (20, 100), (10, 100), (20, 100)]),
        &ChartOptions::default(),
    )
    .expect("p");
    close(plain.points[0].ucl, 0.15 + 3.0 * sigma_p, 1e-12);
}

#[test]
fn laney_u_widens_for_overdispersion() {
    // Large n, rates far apart: plain u limits are far too tight, Laney's take the spread in.
    let data = counts(&[(500, 10_000), (700, 10_000), (450, 10_000), (650, 10_000)]);
    let plain = u_chart(&data, &ChartOptions::default()).expect("u");
    let laney = laney_u_chart(&data, &ChartOptions::default()).expect("u′");
    assert!(plain.violations.len() == 4, "{:?}", plain.violations);
    assert!(laney.violations.is_empty(), "{:?}", laney.violations);
    assert!(laney.sigma > 3.0);
}

#[test]
fn individuals_and_moving_range_by_hand() {
    let options = ChartOptions {
        spec: Some(SpecLimits {
            lower: Some(8.0),
            upper: Some(16.0),
        }),
        ..ChartOptions::default()
    };
    let chart =
        individuals_chart(&observations(&[10.0, 12.0, 11.0, 13.0, 12.0]), &options).expect("I-MR");
    close(chart.center, 11.6, 1e-12);
    let sigma = 1.5 / 1.128; // MR̄ = (2 + 1 + 2 + 1) / 4
    close(chart.sigma, sigma, 1e-12);
    close(chart.points[0].ucl, 11.6 + 3.0 * sigma, 1e-12);
    let secondary = chart.secondary.expect("MR chart");
    assert_eq!(secondary.kind, SecondaryKind::MovingRange);
    assert_eq!(secondary.points.len(), 4);
    assert_eq!(secondary.points[0].index, 1);
    close(secondary.points[0].ucl, 3.267 * 1.5, 1e-12);
    let capability = chart.capability.expect("capability");
    close(capability.cp.expect("cp"), 8.0 / (6.0 * sigma), 1e-12);
    close(capability.cpk, 3.6 / (3.0 * sigma), 1e-12);
    close(capability.sigma_overall, 1.3f64.sqrt(), 1e-12);
    close(capability.ppk, 3.6 / (3.0 * 1.3f64.sqrt()), 1e-12);
}

#[test]
fn one_sided_capability_has_no_cp() {
    let capability = capability(
        &[10.0, 12.0, 11.0, 13.0, 12.0],
        1.0,
        &SpecLimits {
            lower: None,
            upper: Some(14.0),
        },
    )
    .expect("capability");
    assert_eq!(capability.cp, None);
    assert_eq!(capability.cpl, None);
    close(capability.cpk, 2.4 / 3.0, 1e-12);
    assert!(matches!(
        super::capability(&[1.0, 2.0], 1.0, &SpecLimits::default()),
        Err(SpcError::InvalidSpec(_))
    ));
}

#[test]
fn xbar_r_and_xbar_s_by_hand() {
    let data = subgroups(&[&[1.0, 2.0, 3.0], &[2.0, 3.0, 4.0], &[3.0, 4.0, 5.0]]);
    let r = xbar_r_chart(&data, &ChartOptions::default()).expect("X̄-R");
    close(r.center, 3.0, 1e-15);
    close(r.points[0].ucl, 3.0 + 1.023 * 2.0, 1e-12); // A2(3) R̄
    close(r.sigma, 2.0 / 1.693, 1e-12);
    let range = r.secondary.expect("R chart");
    close(range.points[0].ucl, 2.574 * 2.0, 1e-12);
    assert_eq!(range.points[0].lcl, 0.0);

    let s = xbar_s_chart(&data, &ChartOptions::default()).expect("X̄-S");
    // c4(3) = √(2/2) Γ(3/2) / Γ(1) = √π / 2.
    let c4_exact = std::f64::consts::PI.sqrt() / 2.0;
    close(s.sigma, 1.0 / c4_exact, 1e-12); // s̄ = 1
    close(s.points[0].ucl, 3.0 + 3.0 / (c4_exact * 3f64.sqrt()), 1e-12);
    let sd = s.secondary.expect("s chart");
    let b4 = 1.0 + 3.0 * (1.0 - c4_exact * c4_exact).sqrt() / c4_exact;
    close(sd.points[0].ucl, b4, 1e-12);
}

#[test]
fn phase_two_xbar_uses_given_sigma() {
    let data = subgroups(&[&[1.0, 2.0, 3.0, 4.0], &[2.0, 3.0, 4.0, 5.0]]);
    let options = ChartOptions {
        limits: Limits::Fixed {
            center: 2.0,
            sigma: 2.0,
        },
        ..ChartOptions::default()
    };
    let chart = xbar_r_chart(&data, &options).expect("X̄-R");
    close(chart.points[0].ucl, 2.0 + 3.0 * 2.0 / 2.0, 1e-12); // σ/√4 = 1
    let range = chart.secondary.expect("R");
    close(range.center, 2.059 * 2.0, 1e-12);
    close(range.points[0].ucl, 2.282 * 2.059 * 2.0, 1e-12);
    assert_eq!(chart.limits, LimitsBasis::Fixed);
}

#[test]
fn baseline_sets_limits_from_the_first_points_only() {
    let mut values = vec![10.0, 12.0, 10.0, 12.0];
    values.extend([30.0, 40.0]);
    let options = ChartOptions {
        limits: Limits::Estimated { baseline: Some(4) },
        ..ChartOptions::default()
    };
    let chart = individuals_chart(&observations(&values), &options).expect("chart");
    close(chart.center, 11.0, 1e-15);
    close(chart.sigma, 2.0 / 1.128, 1e-12);
    assert_eq!(
        chart.limits,
        LimitsBasis::Estimated {
            baseline: Some(4),
            points_used: 4
        }
    );
    assert_eq!(chart.points[4].rules, vec![RuleId::Nelson1]);
    let too_long = ChartOptions {
        limits: Limits::Estimated { baseline: Some(7) },
        ..ChartOptions::default()
    };
    assert_eq!(
        individuals_chart(&observations(&values), &too_long),
        Err(SpcError::InvalidBaseline {
            baseline: 7,
            points: 6
        })
    );
}

#[test]
fn excluded_points_are_plotted_but_ignored() {
    let mut points = observations(&[10.0, 12.0, 100.0, 10.0, 12.0]);
    points[2].excluded = true;
    let chart = individuals_chart(&points, &ChartOptions::default()).expect("chart");
    close(chart.center, 11.0, 1e-15); // 100 left out
    close(chart.sigma, 2.0 / 1.128, 1e-12); // MR 2, 2, 2: across the gap, 12 → 10
    assert!(chart.points[2].excluded);
    assert_eq!(chart.points[2].value, 100.0);
    assert_eq!(chart.points[2].z, None);
    assert!(chart.points[2].rules.is_empty() && chart.violations.is_empty());
    let ranges = chart.secondary.expect("MR");
    assert_eq!(
        ranges.points.iter().map(|p| p.index).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
}

#[test]
fn nelson_1_and_we_1_beyond_three_sigma() {
    assert_eq!(signals("nelson_1", &[0.0, 3.5, -3.2, 1.0]), vec![1, 2]);
    assert_eq!(signals("we_1", &[0.0, 3.5]), vec![1]);
    assert!(signals("nelson_1", &[2.99, -2.99, 3.0]).is_empty());
}

#[test]
fn two_of_three_beyond_two_sigma() {
    for rule in ["we_2", "nelson_5"] {
        assert_eq!(signals(rule, &[0.0, 2.5, 0.0, 2.5]), vec![3]);
        // The pair is there, but no third point yet, then an ordinary one: no signal.
        assert!(signals(rule, &[-2.5, -2.1, 0.0]).is_empty());
        assert_eq!(signals(rule, &[0.0, -2.5, -2.1]), vec![2]);
        // Near misses: too far apart, opposite sides, or the second at exactly 2σ.
        assert!(signals(rule, &[2.5, 0.0, 0.0, 2.5]).is_empty());
        assert!(signals(rule, &[0.0, 2.5, -2.5]).is_empty());
        assert!(signals(rule, &[0.0, 2.5, 2.0]).is_empty());
    }
}

#[test]
fn four_of_five_beyond_one_sigma() {
    for rule in ["we_3", "nelson_6"] {
        assert_eq!(signals(rule, &[1.5, 1.5, 0.0, 1.5, 1.5]), vec![4]);
        assert!(signals(rule, &[1.5, 0.0, 1.5, 0.0, 1.5]).is_empty());
        assert_eq!(signals(rule, &[1.5, 1.5, -1.5, 1.5, 1.5]), vec![4]);
        assert!(signals(rule, &[1.5, 1.5, -1.5, -1.5, 1.5]).is_empty());
        assert!(
            signals(rule, &[1.0, 1.5, 1.5, 1.0, 1.5]).is_empty(),
            "1σ is not beyond"
        );
    }
}

#[test]
fn runs_on_one_side() {
    assert_eq!(signals("we_4", &[0.5; 8]), vec![7]);
    let mut broken = vec![0.5; 7];
    broken.extend([0.0, 0.5]);
    assert!(
        signals("we_4", &broken).is_empty(),
        "a point on the line ends the run"
    );
    assert_eq!(signals("nelson_2", &[-0.5; 9]), vec![8]);
    assert!(signals("nelson_2", &[-0.5; 8]).is_empty());
}

#[test]
fn steady_trends() {
    let up = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5];
    assert_eq!(signals("nelson_3", &up), vec![5]);
    let down: Vec<f64> = up.iter().map(|z| -z).collect();
    assert_eq!(signals("nelson_3", &down), vec![5]);
    assert!(signals("nelson_3", &[0.0, 0.1, 0.2, 0.3, 0.4, 0.4]).is_empty());
    assert!(signals("nelson_3", &up[..5]).is_empty());
}

#[test]
fn alternation() {
    assert_eq!(signals("nelson_4", &alternating(14, 0.5)), vec![13]);
    assert!(signals("nelson_4", &alternating(13, 0.5)).is_empty());
    let mut stalled = alternating(14, 0.5);
    stalled[13] = stalled[12];
    assert!(signals("nelson_4", &stalled).is_empty());
}

#[test]
fn stratification_within_one_sigma() {
    assert_eq!(signals("nelson_7", &alternating(15, 0.5)), vec![14]);
    let mut edge = alternating(15, 0.5);
    edge[7] = 1.0; // exactly 1σ is not within
    assert!(signals("nelson_7", &edge).is_empty());
}

#[test]
fn mixture_beyond_one_sigma_on_both_sides() {
    assert_eq!(signals("nelson_8", &alternating(8, 1.5)), vec![7]);
    assert!(signals("nelson_8", &[1.5; 8]).is_empty(), "one side only");
    let mut inside = alternating(8, 1.5);
    inside[3] = 0.5;
    assert!(signals("nelson_8", &inside).is_empty());
}

#[test]
fn runs_skip_excluded_points() {
    // Nine included points above, with a wild excluded one inside: the run holds.
    let mut values = vec![0.5; 10];
    values[4] = -5.0;
    let mut points = observations(&values);
    points[4].excluded = true;
    assert_eq!(signals_on("nelson_2", points.clone()), vec![9]);
    assert!(signals_on("nelson_1", points.clone()).is_empty());
    points.truncate(9);
    assert!(signals_on("nelson_2", points).is_empty(), "only 8 included");
}

#[test]
fn a_long_run_is_one_violation() {
    let chart =
        individuals_chart(&observations(&[0.5; 12]), &unit_options("nelson_2")).expect("chart");
    assert_eq!(chart.violations.len(), 1);
    let violation = &chart.violations[0];
    assert_eq!(violation.points, (0..12).collect::<Vec<_>>());
    assert_eq!(violation.direction, Some(Direction::Above));
    assert_eq!(
        violation.message,
        "9 points in a row on one side of the centre line (Nelson 2): points 0–11, above"
    );
    let flagged: Vec<usize> = chart
        .points
        .iter()
        .filter(|p| p.rules == [RuleId::Nelson2])
        .map(|p| p.index)
        .collect();
    assert_eq!(flagged, vec![8, 9, 10, 11]);
}

#[test]
fn moving_range_beyond_its_limit_is_flagged_on_the_secondary_chart() {
    let chart =
        individuals_chart(&observations(&[0.0, 5.0]), &unit_options("nelson_1")).expect("chart");
    // MR = 5 > 3.267 · 1.128: and the point itself is beyond 3σ too.
    let secondary = chart.secondary.expect("MR");
    assert_eq!(secondary.points[0].rules, vec![RuleId::Nelson1]);
    assert!(
        chart
            .violations
            .iter()
            .any(|v| v.series == Series::Secondary && v.points == [1])
    );
}

#[test]
fn ewma_by_hand_signals_at_the_third_point() {
    let options = unit_options("nelson_1");
    let ewma = EwmaOptions {
        lambda: 0.5,
        l: 3.0,
    };
    let chart = ewma_chart(&observations(&[2.0, 2.0, 2.0]), &ewma, &options).expect("EWMA");
    let values: Vec<f64> = chart.points.iter().map(|p| p.value).collect();
    assert_eq!(values, vec![1.0, 1.5, 1.75]);
    close(chart.points[0].ucl, 1.5, 1e-12); // 3 √(1/3 · (1 − 1/4))
    close(
        chart.points[1].ucl,
        3.0 * (1.0f64 / 3.0 * (1.0 - 1.0 / 16.0)).sqrt(),
        1e-12,
    );
    // 1.5 < 1.677 (no signal), 1.75 > 1.718.
    assert!(chart.points[1].rules.is_empty());
    assert_eq!(chart.points[2].rules, vec![RuleId::EwmaLimit]);
    assert_eq!(chart.violations.len(), 1);
}

#[test]
fn cusum_by_hand_with_and_without_head_start() {
    let options = unit_options("nelson_1");
    let data = observations(&[1.5; 6]);
    let chart = cusum_chart(&data, &CusumOptions::default(), &options).expect("CUSUM");
    let upper: Vec<f64> = chart.points.iter().map(|p| p.value).collect();
    assert_eq!(upper, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(chart.points[4].rules.is_empty(), "5 is not above h = 5");
    assert_eq!(chart.points[5].rules, vec![RuleId::CusumUpper]);
    let lower = chart.secondary.expect("S⁻");
    assert!(lower.points.iter().all(|p| p.value == 0.0));

    let fir = CusumOptions {
        head_start: true,
        ..CusumOptions::default()
    };
    let chart = cusum_chart(&data, &fir, &options).expect("CUSUM");
    assert_eq!(chart.points[2].value, 5.5);
    assert_eq!(chart.points[2].rules, vec![RuleId::CusumUpper]);
    // Signals at 2..=5 make one violation.
    assert_eq!(chart.violations.len(), 1);
    assert_eq!(chart.violations[0].points, vec![2, 3, 4, 5]);

    let down = cusum_chart(
        &observations(&[-1.5; 6]),
        &CusumOptions::default(),
        &options,
    )
    .expect("CUSUM");
    assert_eq!(down.violations[0].rule, RuleId::CusumLower);
    assert_eq!(down.violations[0].series, Series::Secondary);
}

#[test]
fn rule_sets_parse_by_name_and_family() {
    assert_eq!(
        RuleSet::default().iter().collect::<Vec<_>>(),
        vec![RuleId::Nelson1]
    );
    assert_eq!(
        "nelson".parse::<RuleSet>().expect("nelson").iter().count(),
        8
    );
    let we: RuleSet = "western_electric".parse().expect("we");
    assert_eq!(
        we.iter().collect::<Vec<_>>(),
        vec![RuleId::We1, RuleId::We2, RuleId::We3, RuleId::We4]
    );
    let mixed: RuleSet = " Nelson_1 , we_2".parse().expect("mixed");
    assert!(mixed.contains(RuleId::We2) && mixed.contains(RuleId::Nelson1));
    let error = "nelson_9".parse::<RuleSet>().expect_err("unknown");
    let text = error.to_string();
    assert!(
        text.contains("\"nelson_9\"") && text.contains("western_electric"),
        "{text}"
    );
    assert_eq!(RuleSet::all().iter().count(), 12);
}

#[test]
fn charts_serialise_in_snake_case() {
    let chart = laney_p_chart(
        &counts(&[(10, 100), (20, 100), (10, 100)]),
        &ChartOptions::default(),
    )
    .expect("chart");
    let json = serde_json::to_value(&chart).expect("json");
    assert_eq!(json["kind"], "laney_p");
    assert_eq!(json["rules"], serde_json::json!(["nelson_1"]));
    assert_eq!(json["limits"]["source"], "estimated");
    assert!(json["details"]["attribute"]["sigma_z"].is_number());
    let back: Chart = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, chart);
    let options: ChartOptions = serde_json::from_str(
        r#"{"limits": {"source": "fixed", "center": 1, "sigma": 2}, "rules": ["nelson"]}"#,
    )
    .expect("options");
    assert_eq!(options.rules, RuleSet::parse(["nelson"]).expect("nelson"));
}

#[test]
fn bad_input_is_refused_naming_the_point() {
    assert_eq!(
        p_chart(&counts(&[(1, 10), (1, 0)]), &ChartOptions::default()),
        Err(SpcError::ZeroSampleSize { index: 1 })
    );
    assert!(
        SpcError::ZeroSampleSize { index: 1 }
            .to_string()
            .contains("point 1")
    );
    assert_eq!(
        p_chart(&counts(&[(11, 10)]), &ChartOptions::default()),
        Err(SpcError::CountExceedsSample {
            index: 0,
            count: 11,
            n: 10
        })
    );
    assert_eq!(
        individuals_chart(&observations(&[1.0, f64::NAN]), &ChartOptions::default()),
        Err(SpcError::NonFinite {
            index: 1,
            field: "value"
        })
    );
    assert_eq!(
        individuals_chart(&observations(&[1.0]), &ChartOptions::default()),
        Err(SpcError::TooFewPoints {
            chart: ChartKind::Individuals,
            needed: 2,
            got: 1
        })
    );
    assert!(matches!(
        xbar_r_chart(&subgroups(&[&[1.0]]), &ChartOptions::default()),
        Err(SpcError::SubgroupSize { index: 0, size: 1 })
    ));
    assert_eq!(
        xbar_s_chart(
            &subgroups(&[&[1.0, 2.0], &[1.0, 2.0, 3.0]]),
            &ChartOptions::default()
        ),
        Err(SpcError::SubgroupSizeMismatch {
            index: 1,
            size: 3,
            expected: 2
        })
    );
    assert!(matches!(
        individuals_chart(&observations(&[1.0, 1.0, 1.0]), &ChartOptions::default()),
        Err(SpcError::NoVariation { .. })
    ));
    assert!(matches!(
        p_chart(
            &counts(&[(1, 10)]),
            &ChartOptions {
                spec: Some(SpecLimits::default()),
                ..ChartOptions::default()
            }
        ),
        Err(SpcError::SpecNotApplicable { .. })
    ));
    assert!(matches!(
        ewma_chart(
            &observations(&[1.0, 2.0]),
            &EwmaOptions {
                lambda: 1.5,
                l: 3.0
            },
            &ChartOptions::default()
        ),
        Err(SpcError::InvalidParameter { name: "lambda", .. })
    ));
}
