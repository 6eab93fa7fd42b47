//! Multivariate anomaly detection on line sensor data: fitted on a window of normal
//! operation, it scores every new sample by how far it leaves that operation.
//!
//! The model is principal component analysis of the standardised tags (MacGregor & Kourti
//! 1995, "Statistical process control of multivariate processes"), as SKAB's "T-squared+Q"
//! baseline: the components that explain `explained_variance` of the normal data span the
//! normal *directions*; Hotelling's T² measures how far a sample lies along them (an unusual
//! operating point), Q (the squared prediction error, SPE) how far it lies off them (a broken
//! correlation between tags: the pump draws current but the flow does not follow).
//!
//! Each statistic is divided by its own limit, the `limit_quantile` of its values on the
//! fitted rows, so the larger of the two, the *severity*, is 1 at the limit whatever the
//! number of tags. A single noisy sample must not raise an alarm: the severity is smoothed by
//! a trailing median of `smoothing_window` samples, and an anomaly starts only after the
//! smoothed severity has stayed above `alarm_level` for `persistence` samples in a row.
//!
//! [`Detector`] is the fitted model and is pure; [`Monitor`] is a detector with the state the
//! smoothing and persistence need, fed one sample at a time (the station's live tags).

use std::collections::VecDeque;

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::{Deserialize, Serialize};

/// Why a detector cannot be fitted or a sample scored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnomalyError {
    #[error("{rows} rows of normal operation are too few to fit {columns} columns (need {needed})")]
    TooFewRows {
        rows: usize,
        columns: usize,
        needed: usize,
    },
    #[error("the rows have no columns")]
    NoColumns,
    #[error("row {row} has {got} values, expected {expected}")]
    WrongWidth {
        row: usize,
        got: usize,
        expected: usize,
    },
    #[error("row {row}, column {column} is not a finite number ({value})")]
    NotFinite {
        row: usize,
        column: usize,
        value: f64,
    },
    #[error(
        "column {column} is constant ({value}) in the normal rows: it carries no information to \
         fit, and any change in it would be an infinite deviation; leave it out"
    )]
    ConstantColumn { column: usize, value: f64 },
    #[error("{name} is {value}, expected {expected}")]
    InvalidSetting {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
}

/// How a [`Detector`] is fitted and how its scores become alarms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Share of the normal data's variance the retained components explain (0 < v ≤ 1);
    /// the rest is the residual space Q watches. At least one component is kept and, with
    /// two columns or more, at least one left for Q.
    pub explained_variance: f64,
    /// Quantile of the fitted rows' T² and Q that each is divided by (0 < q < 1).
    pub limit_quantile: f64,
    /// Samples in the trailing median of the severity (1: none).
    pub smoothing_window: usize,
    /// The smoothed severity above which a sample counts as abnormal.
    pub alarm_level: f64,
    /// Abnormal samples in a row before an anomaly is reported (1: at once).
    pub persistence: usize,
}

impl Default for Settings {
    /// Chosen on SKAB's valve1 files only (`scripts/anomalies-skab.sh` prints the grid);
    /// measured on the others.
    fn default() -> Self {
        Settings {
            explained_variance: 0.85,
            limit_quantile: 0.99,
            smoothing_window: 30,
            alarm_level: 1.0,
            persistence: 5,
        }
    }
}

/// A sample's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Hotelling's T² in the retained components.
    pub t2: f64,
    /// Squared prediction error: the squared distance from the components' span, in
    /// standardised units.
    pub q: f64,
    /// max(T² / its limit, Q / its limit): 1 at the limit.
    pub severity: f64,
    /// Each column's share of Q (they sum to 1; all 0 when Q is 0): which tags broke the
    /// normal correlations, the "why" of an alert.
    pub q_contributions: Vec<f64>,
}

/// One sample as a [`Monitor`] judges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub score: Score,
    /// The trailing median of the severity, this sample included.
    pub smoothed_severity: f64,
    /// Whether the sample is inside a reported anomaly.
    pub anomalous: bool,
}

/// A PCA model of normal operation (pure; cheap to clone and to share).
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    settings: Settings,
    /// Per column: the normal mean and standard deviation the samples are standardised by.
    means: Vec<f64>,
    std_devs: Vec<f64>,
    /// Columns × retained components, orthonormal columns.
    loadings: DMatrix<f64>,
    /// The retained components' variances (eigenvalues of the correlation matrix).
    component_variances: Vec<f64>,
    t2_limit: f64,
    q_limit: f64,
}

impl Detector {
    /// Fits the model on rows of normal operation (each row one sample of every column, in
    /// the same order as the rows that will be scored). Needs more rows than twice the
    /// columns, and at least 10.
    pub fn fit<R: AsRef<[f64]>>(rows: &[R], settings: &Settings) -> Result<Self, AnomalyError> {
        check_settings(settings)?;
        let columns = rows.first().map(|r| r.as_ref().len()).unwrap_or(0);
        if rows.is_empty() {
            return Err(AnomalyError::TooFewRows {
                rows: 0,
                columns,
                needed: 10,
            });
        }
        if columns == 0 {
            return Err(AnomalyError::NoColumns);
        }
        let needed = (2 * columns + 1).max(10);
        if rows.len() < needed {
            return Err(AnomalyError::TooFewRows {
                rows: rows.len(),
                columns,
                needed,
            });
        }
        for (row_idx, row) in rows.iter().enumerate() {
            check_row(row.as_ref(), row_idx, columns)?;
        }
        let n = rows.len() as f64;
        let mut means = vec![0.0; columns];
        for row in rows {
            for (mean, value) in means.iter_mut().zip(row.as_ref()) {
                *mean += value / n;
            }
        }
        let mut std_devs = vec![0.0; columns];
        for row in rows {
            for ((sd, value), mean) in std_devs.iter_mut().zip(row.as_ref()).zip(&means) {
                *sd += (value - mean).powi(2) / (n - 1.0);
            }
        }
        for (column, sd) in std_devs.iter_mut().enumerate() {
            *sd = sd.sqrt();
            // Relative to the level, so a tag of 1e5 with rounding noise is not "varying".
            if *sd <= 1e-12 * means[column].abs().max(1.0) {
                return Err(AnomalyError::ConstantColumn {
                    column,
                    value: rows[0].as_ref()[column],
                });
            }
        }
        let standardised = DMatrix::from_fn(rows.len(), columns, |r, c| {
            (rows[r].as_ref()[c] - means[c]) / std_devs[c]
        });
        let correlation = standardised.tr_mul(&standardised) / (n - 1.0);
        let eigen = SymmetricEigen::new(correlation);
        let mut order: Vec<usize> = (0..columns).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let total: f64 = eigen.eigenvalues.iter().map(|v| v.max(0.0)).sum();
        let mut retained = 0;
        let mut explained = 0.0;
        for &idx in &order {
            retained += 1;
            explained += eigen.eigenvalues[idx].max(0.0);
            if explained >= settings.explained_variance * total - 1e-12 {
                break;
            }
        }
        if columns > 1 {
            retained = retained.min(columns - 1);
        }
        let loadings =
            DMatrix::from_fn(columns, retained, |r, c| eigen.eigenvectors[(r, order[c])]);
        // A component of (numerically) zero variance would make T² divide by zero.
        let variance_floor = 1e-9 * total.max(1e-12);
        let component_variances: Vec<f64> = order[..retained]
            .iter()
            .map(|&idx| eigen.eigenvalues[idx].max(variance_floor))
            .collect();
        let mut detector = Detector {
            settings: *settings,
            means,
            std_devs,
            loadings,
            component_variances,
            t2_limit: 1.0,
            q_limit: 1.0,
        };
        let mut t2s = Vec::with_capacity(rows.len());
        let mut qs = Vec::with_capacity(rows.len());
        for r in 0..rows.len() {
            let (t2, q, _) = detector.statistics(&standardised.row(r).transpose());
            t2s.push(t2);
            qs.push(q);
        }
        detector.t2_limit = quantile(&mut t2s, settings.limit_quantile).max(f64::MIN_POSITIVE);
        // Q is identically 0 when the components span everything (one column): its limit
        // then stays 1 so the ratio stays 0.
        let q_limit = quantile(&mut qs, settings.limit_quantile);
        detector.q_limit = if q_limit > 1e-12 { q_limit } else { 1.0 };
        tracing::debug!(
            columns,
            rows = rows.len(),
            components = retained,
            t2_limit = detector.t2_limit,
            q_limit = detector.q_limit,
            "anomaly detector fitted"
        );
        Ok(detector)
    }

    /// Scores one sample (same columns, same order as the fitted rows).
    pub fn score(&self, row: &[f64]) -> Result<Score, AnomalyError> {
        check_row(row, 0, self.means.len())?;
        let standardised = DVector::from_iterator(
            row.len(),
            row.iter()
                .zip(&self.means)
                .zip(&self.std_devs)
                .map(|((v, mean), sd)| (v - mean) / sd),
        );
        let (t2, q, residual) = self.statistics(&standardised);
        let q_contributions = if q > 0.0 {
            residual.iter().map(|r| r * r / q).collect()
        } else {
            vec![0.0; row.len()]
        };
        Ok(Score {
            t2,
            q,
            severity: (t2 / self.t2_limit).max(q / self.q_limit),
            q_contributions,
        })
    }

    /// Judges `rows` in order with a fresh [`Monitor`]: what a station that had watched them
    /// live would have said.
    pub fn assess<R: AsRef<[f64]>>(&self, rows: &[R]) -> Result<Vec<Assessment>, AnomalyError> {
        let mut monitor = Monitor::new(self.clone());
        rows.iter()
            .enumerate()
            .map(|(row_idx, row)| {
                monitor.push(row.as_ref()).map_err(|error| match error {
                    AnomalyError::WrongWidth { got, expected, .. } => AnomalyError::WrongWidth {
                        row: row_idx,
                        got,
                        expected,
                    },
                    AnomalyError::NotFinite { column, value, .. } => AnomalyError::NotFinite {
                        row: row_idx,
                        column,
                        value,
                    },
                    other => other,
                })
            })
            .collect()
    }

    /// Columns the detector expects in a row.
    pub fn columns(&self) -> usize {
        self.means.len()
    }

    /// Principal components retained.
    pub fn components(&self) -> usize {
        self.component_variances.len()
    }

    /// The settings it was fitted with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// T², Q and the residual vector of a standardised sample.
    fn statistics(&self, standardised: &DVector<f64>) -> (f64, f64, DVector<f64>) {
        let projected = self.loadings.tr_mul(standardised);
        let t2 = projected
            .iter()
            .zip(&self.component_variances)
            .map(|(t, variance)| t * t / variance)
            .sum();
        let residual = standardised - &self.loadings * projected;
        let q = residual.norm_squared();
        (t2, q, residual)
    }
}

/// A [`Detector`] watching a stream: keeps the recent severities for the median and the run
/// of abnormal samples for persistence.
#[derive(Debug, Clone)]
pub struct Monitor {
    detector: Detector,
    recent_severities: VecDeque<f64>,
    abnormal_run: usize,
}

impl Monitor {
    /// A monitor that has seen nothing yet.
    pub fn new(detector: Detector) -> Self {
        let window = detector.settings.smoothing_window;
        Monitor {
            detector,
            recent_severities: VecDeque::with_capacity(window),
            abnormal_run: 0,
        }
    }

    /// Scores the next sample and says whether it is inside an anomaly. Until the window has
    /// filled, the median is over the samples seen so far.
    pub fn push(&mut self, row: &[f64]) -> Result<Assessment, AnomalyError> {
        let score = self.detector.score(row)?;
        let settings = &self.detector.settings;
        if self.recent_severities.len() == settings.smoothing_window {
            self.recent_severities.pop_front();
        }
        self.recent_severities.push_back(score.severity);
        let mut window: Vec<f64> = self.recent_severities.iter().copied().collect();
        let smoothed_severity = median(&mut window);
        if smoothed_severity > settings.alarm_level {
            self.abnormal_run += 1;
        } else {
            self.abnormal_run = 0;
        }
        Ok(Assessment {
            score,
            smoothed_severity,
            anomalous: self.abnormal_run >= settings.persistence,
        })
    }

    /// The detector it runs.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }
}

fn check_settings(settings: &Settings) -> Result<(), AnomalyError> {
    let fraction = |name, value: f64, upper_inclusive: bool| {
        let inside = value > 0.0 && (value < 1.0 || (upper_inclusive && value == 1.0));
        if inside {
            Ok(())
        } else {
            Err(AnomalyError::InvalidSetting {
                name,
                value,
                expected: if upper_inclusive {
                    "a number in (0, 1]"
                } else {
                    "a number in (0, 1)"
                },
            })
        }
    };
    fraction("explained_variance", settings.explained_variance, true)?;
    fraction("limit_quantile", settings.limit_quantile, false)?;
    if !(settings.alarm_level.is_finite() && settings.alarm_level > 0.0) {
        return Err(AnomalyError::InvalidSetting {
            name: "alarm_level",
            value: settings.alarm_level,
            expected: "a finite number above 0",
        });
    }
    for (name, value) in [
        ("smoothing_window", settings.smoothing_window),
        ("persistence", settings.persistence),
    ] {
        if value == 0 {
            return Err(AnomalyError::InvalidSetting {
                name,
                value: 0.0,
                expected: "at least 1",
            });
        }
    }
    Ok(())
}

fn check_row(row: &[f64], row_idx: usize, columns: usize) -> Result<(), AnomalyError> {
    if row.len() != columns {
        return Err(AnomalyError::WrongWidth {
            row: row_idx,
            got: row.len(),
            expected: columns,
        });
    }
    if let Some((column, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(AnomalyError::NotFinite {
            row: row_idx,
            column,
            value,
        });
    }
    Ok(())
}

/// The `q` quantile by linear interpolation between order statistics (numpy's default).
/// `values` is non-empty and finite; it is reordered.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let position = q * (values.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(values.len() - 1);
    let weight = position - below as f64;
    values[below] * (1.0 - weight) + values[above] * weight
}

fn median(values: &mut [f64]) -> f64 {
    quantile(values, 0.5)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    use super::*;

    /// Rows of a little process: a pump's speed drives flow, pressure and current (with
    /// noise), and a temperature wanders on its own. A fault in `fault` rows breaks the
    /// flow-speed relation (a closing valve: flow drops, pressure rises).
    fn process(seed: u64, n: usize, fault: Option<std::ops::Range<usize>>) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let noise = Normal::new(0.0, 1.0).expect("a positive standard deviation");
        let mut rows = Vec::with_capacity(n);
        for idx in 0..n {
            let speed = 1450.0 + 20.0 * noise.sample(&mut rng);
            let mut flow = 0.02 * speed + 0.3 * noise.sample(&mut rng);
            let mut pressure = 0.001 * speed + 0.02 * noise.sample(&mut rng);
            let current = 0.0015 * speed + 0.01 * noise.sample(&mut rng);
            let temperature = 25.0 + 0.2 * noise.sample(&mut rng);
            if fault.as_ref().is_some_and(|f| f.contains(&idx)) {
                flow -= 1.0;
                pressure += 0.05;
            }
            rows.push(vec![speed, flow, pressure, current, temperature]);
        }
        rows
    }

    fn f1(truth: &[bool], predicted: &[bool]) -> f64 {
        let tp = truth
            .iter()
            .zip(predicted)
            .filter(|(t, p)| **t && **p)
            .count() as f64;
        let fp = truth
            .iter()
            .zip(predicted)
            .filter(|(t, p)| !**t && **p)
            .count() as f64;
        let fn_ = truth
            .iter()
            .zip(predicted)
            .filter(|(t, p)| **t && !**p)
            .count() as f64;
        tp / (tp + (fp + fn_) / 2.0)
    }

    #[test]
    fn an_injected_fault_window_is_found() {
        for seed in 0..5 {
            let normal = process(seed, 500, None);
            let detector = Detector::fit(&normal, &Settings::default()).expect("clean rows");
            let fault = 600..900;
            let live = process(seed + 100, 1200, Some(fault.clone()));
            let predicted: Vec<bool> = detector
                .assess(&live)
                .expect("clean rows")
                .iter()
                .map(|a| a.anomalous)
                .collect();
            let truth: Vec<bool> = (0..live.len()).map(|idx| fault.contains(&idx)).collect();
            let score = f1(&truth, &predicted);
            assert!(score > 0.9, "seed {seed}: F1 {score:.3}");
        }
    }

    #[test]
    fn the_tags_that_broke_the_correlation_carry_q() {
        let normal = process(1, 500, None);
        let detector = Detector::fit(&normal, &Settings::default()).expect("clean rows");
        let faulty = process(2, 50, Some(0..50));
        let mut shares = [0.0; 5];
        for row in &faulty {
            let score = detector.score(row).expect("a clean row");
            for (share, c) in shares.iter_mut().zip(&score.q_contributions) {
                *share += c / faulty.len() as f64;
            }
        }
        // Flow (1) moved most; PCA smears some of its residual onto the tags it is
        // correlated with (speed, current), but flow stays the largest share by far.
        let largest = (0..5)
            .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
            .expect("five shares");
        assert_eq!(largest, 1, "shares {shares:?}");
        assert!(
            shares[1] > 2.0 * shares[0].max(shares[3]),
            "shares {shares:?}"
        );
    }

    #[test]
    fn normal_operation_gives_few_alarms_and_no_lone_spike_alarms() {
        let normal = process(3, 500, None);
        let detector = Detector::fit(&normal, &Settings::default()).expect("clean rows");
        let mut live = process(4, 5000, None);
        // Lone spikes: one absurd sample now and then.
        for idx in (100..5000).step_by(400) {
            live[idx][1] += 50.0;
        }
        let assessments = detector.assess(&live).expect("clean rows");
        let alarms = assessments.iter().filter(|a| a.anomalous).count();
        assert!(
            alarms < 5000 / 100,
            "{alarms} of 5000 normal samples were called anomalous"
        );
        for idx in (100..5000).step_by(400) {
            assert!(
                assessments[idx].score.severity > 10.0,
                "the spike at {idx} scores {}",
                assessments[idx].score.severity
            );
            assert!(
                !assessments[idx].anomalous,
                "the lone spike at {idx} raised an alarm"
            );
        }
    }

    #[test]
    fn persistence_waits_for_a_run_of_abnormal_samples() {
        let normal = process(5, 500, None);
        let settings = Settings {
            smoothing_window: 1,
            persistence: 3,
            ..Settings::default()
        };
        let detector = Detector::fit(&normal, &settings).expect("clean rows");
        let mut monitor = Monitor::new(detector);
        let far = vec![2000.0, 10.0, 2.0, 0.0, 30.0];
        let normal_row = normal[0].clone();
        let flags: Vec<bool> = [&far, &far, &normal_row, &far, &far, &far, &far]
            .iter()
            .map(|row| monitor.push(row).expect("a clean row").anomalous)
            .collect();
        assert_eq!(flags, [false, false, false, false, false, true, true]);
    }

    #[test]
    fn bad_input_is_named() {
        let settings = Settings::default();
        let mut rows = process(6, 100, None);
        assert_eq!(
            Detector::fit(&rows[..5], &settings),
            Err(AnomalyError::TooFewRows {
                rows: 5,
                columns: 5,
                needed: 11
            })
        );
        let empty: Vec<Vec<f64>> = Vec::new();
        assert!(matches!(
            Detector::fit(&empty, &settings),
            Err(AnomalyError::TooFewRows { rows: 0, .. })
        ));
        for row in rows.iter_mut() {
            row[4] = 25.0;
        }
        assert_eq!(
            Detector::fit(&rows, &settings),
            Err(AnomalyError::ConstantColumn {
                column: 4,
                value: 25.0
            })
        );
        let mut rows = process(6, 100, None);
        rows[42][2] = f64::NAN;
        assert!(matches!(
            Detector::fit(&rows, &settings),
            Err(AnomalyError::NotFinite {
                row: 42,
                column: 2,
                ..
            })
        ));
        rows[42].pop();
        assert_eq!(
            Detector::fit(&rows, &settings),
            Err(AnomalyError::WrongWidth {
                row: 42,
                got: 4,
                expected: 5
            })
        );
        let detector = Detector::fit(&process(6, 100, None), &settings).expect("clean rows");
        assert!(matches!(
            detector.score(&[1.0, 2.0]),
            Err(AnomalyError::WrongWidth { got: 2, .. })
        ));
        let live = vec![
            vec![1450.0, 29.0, 1.45, 2.2, 25.0],
            vec![1450.0, f64::INFINITY, 1.45, 2.2, 25.0],
        ];
        assert!(matches!(
            detector.assess(&live),
            Err(AnomalyError::NotFinite {
                row: 1,
                column: 1,
                ..
            })
        ));
        let zero_window = Settings {
            smoothing_window: 0,
            ..settings
        };
        assert!(matches!(
            Detector::fit(&process(6, 100, None), &zero_window),
            Err(AnomalyError::InvalidSetting {
                name: "smoothing_window",
                ..
            })
        ));
    }

    #[test]
    fn the_quantile_interpolates_as_numpy_does() {
        let mut values = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut values, 0.5), 2.5);
        assert_eq!(quantile(&mut values, 1.0 / 3.0), 2.0);
        assert_eq!(median(&mut [7.0]), 7.0);
    }
}
