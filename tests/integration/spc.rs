//! The control charts against an independent computation: every chart kind, every rule, on
//! seeded data with the patterns the rules exist for, recomputed by `tests/spc/check_spc.py`
//! (numpy/scipy, written from the textbook formulas) and compared to 1e-9.

use std::collections::BTreeSet;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use linesight::analyse::spc::{
    Chart, ChartOptions, Count, CusumOptions, EwmaOptions, Limits, Observation, RuleId, RuleSet,
    SpecLimits, Subgroup, cusum_chart, ewma_chart, individuals_chart, laney_p_chart, laney_u_chart,
    p_chart, u_chart, xbar_r_chart, xbar_s_chart,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Normal, Poisson};
use serde_json::{Value, json};

use crate::repo;

/// Points per series.
const LENGTH: usize = 170;
/// Points (subgroups) the Phase I limits come from: the in-control start.
const BASELINE: usize = 40;
/// Excluded points, given wild values so that counting them would show.
const EXCLUDED: [usize; 4] = [5, 52, 101, 150];

/// The offset from the centre (in σ of the plotted statistic) and the noise scale at time `t`:
/// in control, a 3σ+ outlier, a 1.5σ shift, a trend, alternation, stratification, a mixture,
/// a downward shift, in control again.
fn pattern(t: usize) -> (f64, f64) {
    match t {
        30 => (4.5, 0.0),
        40..=59 => (1.5, 1.0),
        60..=69 => (-1.5 + 0.4 * (t - 60) as f64, 0.03),
        70..=89 => (if t.is_multiple_of(2) { 1.2 } else { -1.2 }, 0.1),
        90..=109 => (0.0, 0.25),
        110..=124 => (if t.is_multiple_of(2) { 2.0 } else { -2.0 }, 0.3),
        125..=149 => (-1.0, 1.0),
        _ => (0.0, 1.0),
    }
}

fn timestamp(t: usize) -> Option<DateTime<Utc>> {
    let start = DateTime::parse_from_rfc3339("2025-03-01T06:00:00Z")
        .expect("fixed start")
        .with_timezone(&Utc);
    // Every third point without a time, as a CSV import might deliver.
    (t % 3 != 2).then(|| start + Duration::minutes(15 * t as i64))
}

fn noise(rng: &mut ChaCha8Rng, sd: f64) -> f64 {
    Normal::new(0.0, sd).expect("normal").sample(rng)
}

fn individuals(rng: &mut ChaCha8Rng) -> Vec<Observation> {
    (0..LENGTH)
        .map(|t| {
            let (offset, scale) = pattern(t);
            let excluded = EXCLUDED.contains(&t);
            let value = if excluded {
                25.0
            } else {
                10.0 + offset + scale * noise(rng, 1.0)
            };
            Observation {
                at: timestamp(t),
                value,
                excluded,
            }
        })
        .collect()
}

fn subgroups(rng: &mut ChaCha8Rng, size: usize) -> Vec<Subgroup> {
    let sigma = 2.0;
    let mean_sigma = sigma / (size as f64).sqrt();
    (0..LENGTH)
        .map(|t| {
            let (offset, scale) = pattern(t);
            let excluded = EXCLUDED.contains(&t);
            // The within-subgroup noise keeps a floor so ranges never collapse to 0.
            let values = (0..size)
                .map(|_| {
                    if excluded {
                        60.0 + noise(rng, sigma)
                    } else {
                        50.0 + offset * mean_sigma + scale.max(0.05) * noise(rng, sigma)
                    }
                })
                .collect();
            Subgroup {
                at: timestamp(t),
                values,
                excluded,
            }
        })
        .collect()
}

/// Counts out of large, varying samples, with lot-to-lot variation of the rate (so plain
/// limits are too tight and Laney's σ_z is well above 1), plus a rise halfway.
fn counts(rng: &mut ChaCha8Rng, rate: f64, defects_per_unit: bool) -> Vec<Count> {
    (0..LENGTH)
        .map(|t| {
            let n: u64 = rng.gen_range(2_000..8_000);
            let lot = 1.0 + 0.15 * noise(rng, 1.0);
            let shift = if (80..100).contains(&t) { 1.6 } else { 1.0 };
            let mean = rate * lot * shift;
            let count = if defects_per_unit {
                Poisson::new(mean * n as f64).expect("poisson").sample(rng) as u64
            } else {
                Binomial::new(n, mean.clamp(0.0, 1.0))
                    .expect("binomial")
                    .sample(rng)
            };
            let excluded = EXCLUDED.contains(&t);
            Count {
                at: timestamp(t),
                count: if excluded { n / 2 } else { count },
                n,
                excluded,
            }
        })
        .collect()
}

fn options(limits: Limits, spec: Option<SpecLimits>) -> ChartOptions {
    ChartOptions {
        limits,
        rules: RuleSet::parse(["western_electric", "nelson"]).expect("rule families"),
        spec,
    }
}

fn estimated() -> Limits {
    Limits::Estimated {
        baseline: Some(BASELINE),
    }
}

struct Case {
    name: &'static str,
    input: Value,
    options: ChartOptions,
    parameters: Value,
    chart: Chart,
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let x = individuals(&mut rng);
    let small = subgroups(&mut rng, 5);
    let large = subgroups(&mut rng, 12);
    let defectives = counts(&mut rng, 0.02, false);
    let defects = counts(&mut rng, 0.05, true);
    let both = Some(SpecLimits {
        lower: Some(6.0),
        upper: Some(15.0),
    });
    let upper_only = Some(SpecLimits {
        lower: None,
        upper: Some(14.0),
    });
    let subgroup_spec = Some(SpecLimits {
        lower: Some(42.0),
        upper: Some(58.0),
    });
    let fixed = Limits::Fixed {
        center: 10.0,
        sigma: 1.0,
    };
    let all_points = Limits::Estimated { baseline: None };
    let ewma_slow = EwmaOptions {
        lambda: 0.1,
        l: 2.7,
    };
    let cusum_fir = CusumOptions {
        k: 0.5,
        h: 4.0,
        head_start: true,
    };
    let observations = json!({ "observations": x });
    let mut cases = Vec::new();
    let mut add = |name, input: &Value, options: ChartOptions, parameters: Value, chart| {
        cases.push(Case {
            name,
            input: input.clone(),
            options,
            parameters,
            chart,
        })
    };

    let o = options(estimated(), both);
    add(
        "individuals, baseline",
        &observations,
        o.clone(),
        Value::Null,
        individuals_chart(&x, &o).expect("I-MR"),
    );
    let o = options(fixed, upper_only);
    add(
        "individuals, fixed",
        &observations,
        o.clone(),
        Value::Null,
        individuals_chart(&x, &o).expect("I-MR"),
    );
    let o = options(estimated(), subgroup_spec);
    let input = json!({ "subgroups": small });
    add(
        "xbar_r n=5",
        &input,
        o.clone(),
        Value::Null,
        xbar_r_chart(&small, &o).expect("X̄-R"),
    );
    add(
        "xbar_s n=5",
        &input,
        o.clone(),
        Value::Null,
        xbar_s_chart(&small, &o).expect("X̄-S"),
    );
    let input = json!({ "subgroups": large });
    add(
        "xbar_s n=12",
        &input,
        o.clone(),
        Value::Null,
        xbar_s_chart(&large, &o).expect("X̄-S"),
    );
    let o = options(
        Limits::Fixed {
            center: 50.0,
            sigma: 2.0,
        },
        None,
    );
    add(
        "xbar_r n=12, fixed",
        &input,
        o.clone(),
        Value::Null,
        xbar_r_chart(&large, &o).expect("X̄-R"),
    );

    let input = json!({ "counts": defectives });
    let o = options(all_points, None);
    add(
        "p",
        &input,
        o.clone(),
        Value::Null,
        p_chart(&defectives, &o).expect("p"),
    );
    add(
        "laney p",
        &input,
        o.clone(),
        Value::Null,
        laney_p_chart(&defectives, &o).expect("p′"),
    );
    let o = options(
        Limits::Fixed {
            center: 0.02,
            sigma: 2.5,
        },
        None,
    );
    add(
        "laney p, fixed",
        &input,
        o.clone(),
        Value::Null,
        laney_p_chart(&defectives, &o).expect("p′"),
    );
    let input = json!({ "counts": defects });
    let o = options(estimated(), None);
    add(
        "u, baseline",
        &input,
        o.clone(),
        Value::Null,
        u_chart(&defects, &o).expect("u"),
    );
    add(
        "laney u, baseline",
        &input,
        o.clone(),
        Value::Null,
        laney_u_chart(&defects, &o).expect("u′"),
    );

    let o = options(estimated(), both);
    let ewma = EwmaOptions::default();
    add(
        "ewma",
        &observations,
        o.clone(),
        json!(ewma),
        ewma_chart(&x, &ewma, &o).expect("EWMA"),
    );
    let o = options(fixed, None);
    add(
        "ewma slow, fixed",
        &observations,
        o.clone(),
        json!(ewma_slow),
        ewma_chart(&x, &ewma_slow, &o).expect("EWMA"),
    );
    let o = options(estimated(), None);
    let cusum = CusumOptions::default();
    add(
        "cusum",
        &observations,
        o.clone(),
        json!(cusum),
        cusum_chart(&x, &cusum, &o).expect("CUSUM"),
    );
    let o = options(fixed, None);
    add(
        "cusum head start, fixed",
        &observations,
        o.clone(),
        json!(cusum_fir),
        cusum_chart(&x, &cusum_fir, &o).expect("CUSUM"),
    );
    cases
}

/// Every rule that signalled anywhere, on either series.
fn rules_hit(cases: &[Case]) -> BTreeSet<RuleId> {
    cases
        .iter()
        .flat_map(|case| {
            let secondary = case.chart.secondary.iter().flat_map(|s| &s.points);
            case.chart.points.iter().chain(secondary)
        })
        .flat_map(|point| point.rules.iter().copied())
        .collect()
}

#[test]
fn spc_charts_agree_with_an_independent_numpy_computation() {
    let cases = cases();

    // The comparison is only worth something if every rule had something to agree on.
    let hit = rules_hit(&cases);
    let mut wanted: Vec<RuleId> = RuleSet::all().iter().collect();
    wanted.extend([RuleId::EwmaLimit, RuleId::CusumUpper, RuleId::CusumLower]);
    let missing: Vec<&RuleId> = wanted.iter().filter(|r| !hit.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "the test data never triggered {missing:?}"
    );
    let excluded_flagged = cases
        .iter()
        .all(|c| EXCLUDED.iter().all(|&i| c.chart.points[i].excluded));
    assert!(excluded_flagged, "excluded points are plotted as excluded");

    let document = json!({
        "cases": cases.iter().map(|case| json!({
            "name": case.name,
            "input": case.input,
            "options": case.options,
            "parameters": case.parameters,
            "output": case.chart,
        })).collect::<Vec<_>>(),
    });
    let file = tempfile::Builder::new()
        .prefix("spc-")
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    serde_json::to_writer(file.as_file(), &document).expect("write the cases");

    let root = repo();
    let python = root.join(".venv/bin/python");
    let has_numpy = python.exists()
        && Command::new(&python)
            .args(["-c", "import numpy, scipy"])
            .output()
            .is_ok_and(|out| out.status.success());
    assert!(
        has_numpy,
        "run `make setup` (installs numpy and scipy for the SPC check)"
    );
    let output = Command::new(&python)
        .arg("tests/spc/check_spc.py")
        .arg(file.path())
        .current_dir(&root)
        .output()
        .expect("run check_spc.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the independent SPC check disagrees ({}):\n{text}",
        output.status
    );
    assert!(
        text.contains("all agree"),
        "unexpected check output:\n{text}"
    );
}
