//! The Skoltech Anomaly Benchmark (SKAB, Katser & Kozitsin 2020): its CSV layout, its
//! protocol and its scores, so [`super::anomaly`] is measured the way SKAB's leaderboard is.
//!
//! Layout: one `;`-separated file per experiment with a `datetime` column
//! (`YYYY-MM-DD HH:MM:SS`), the eight sensor columns of [`SENSOR_COLUMNS`] and the labels
//! `anomaly` and `changepoint` (0/1); `anomaly-free/anomaly-free.csv` has no labels. A data
//! folder holds the group folders `valve1/`, `valve2/`, `other/`, `anomaly-free/`, or is
//! itself a folder of CSVs.
//!
//! Protocol (SKAB's `core/utils.py::preprocess_skab` and its notebooks, e.g.
//! `notebooks/t2_with_q_SKAB.ipynb`): each labelled file is split without shuffling into its
//! first 400 rows, on which a detector is fitted (normal operation, labels unused), and the
//! rest, on which it is scored. The outlier score is `chp_score(..., metric="binary")` of
//! `core/metrics.py`: true/false positives and negatives of the point labels summed over all
//! files, then F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN) and MAR = FN / (FN + TP).
//! Change points are SKAB's `average_time` metric: a predicted change point is where the
//! predicted anomaly label flips (the first sample counts as a flip when anomalous); a true
//! change point is detected when one falls within 60 s after it (`window_width="60s"`,
//! `anomaly_window_destination="righter"`), every other is a false positive.
//!
//! Here the monitor also sees the 400 fitted rows before the scored part (causal, labels
//! unused), so its median window is full at the first scored sample, as it would be live.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::Serialize;

use super::anomaly::{AnomalyError, Detector, Settings};

/// The sensor columns of every SKAB file, in the order the detector sees them.
pub const SENSOR_COLUMNS: [&str; 8] = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
];

/// Rows of each file the detector is fitted on, as SKAB's protocol does.
pub const TRAIN_ROWS: usize = 400;

/// Seconds after a true change point in which a predicted one counts (SKAB's 60 s).
pub const CHANGEPOINT_WINDOW_S: i64 = 60;

const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Why a SKAB folder or file cannot be read or scored. The causes are part of each message
/// (and not chained as sources), so `{:#}` names them once.
#[derive(Debug, thiserror::Error)]
pub enum SkabError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: no CSV files in it or in its subfolders")]
    NoFiles { path: PathBuf },
    #[error("{path}, line 1: {why}")]
    Header { path: PathBuf, why: String },
    #[error("{path}, line {line}: {why}")]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path}: {rows} rows, need more than the {train_rows} the detector is fitted on")]
    TooShort {
        path: PathBuf,
        rows: usize,
        train_rows: usize,
    },
    #[error("{path}: {error}")]
    Detector { path: PathBuf, error: AnomalyError },
}

/// One experiment file.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub path: PathBuf,
    /// The folder it lies in (`valve1`, `other`, …): the unit figures are reported by.
    pub group: String,
    pub times: Vec<NaiveDateTime>,
    /// One row per sample, the columns of [`SENSOR_COLUMNS`] in that order.
    pub rows: Vec<Vec<f64>>,
    /// The labels; `None` in the anomaly-free file.
    pub labels: Option<Labels>,
}

/// The point labels of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub anomaly: Vec<bool>,
    pub changepoint: Vec<bool>,
}

/// Point-wise confusion counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub true_positives: usize,
    pub true_negatives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
}

impl Confusion {
    /// Counts `predicted` against `truth` (same length).
    pub fn count(truth: &[bool], predicted: &[bool]) -> Self {
        let mut confusion = Confusion::default();
        for (&t, &p) in truth.iter().zip(predicted) {
            match (t, p) {
                (true, true) => confusion.true_positives += 1,
                (false, false) => confusion.true_negatives += 1,
                (false, true) => confusion.false_positives += 1,
                (true, false) => confusion.false_negatives += 1,
            }
        }
        confusion
    }

    /// TP / (TP + (FP + FN) / 2); 0 when there is nothing to find and nothing was found.
    pub fn f1(&self) -> f64 {
        let denominator =
            self.true_positives as f64 + (self.false_positives + self.false_negatives) as f64 / 2.0;
        ratio(self.true_positives as f64, denominator)
    }

    /// False alarm rate, %: FP / (FP + TN).
    pub fn false_alarm_rate_pct(&self) -> f64 {
        100.0
            * ratio(
                self.false_positives as f64,
                (self.false_positives + self.true_negatives) as f64,
            )
    }

    /// Missed alarm rate, %: FN / (FN + TP).
    pub fn missed_alarm_rate_pct(&self) -> f64 {
        100.0
            * ratio(
                self.false_negatives as f64,
                (self.false_negatives + self.true_positives) as f64,
            )
    }
}

/// SKAB's `average_time` change-point counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ChangepointCounts {
    /// True change points.
    pub labelled: usize,
    /// True change points with a predicted one within the window after them.
    pub detected: usize,
    /// Predicted change points outside every window.
    pub false_positives: usize,
    /// Sum of the delays of the detected ones (first prediction in the window), s.
    pub total_delay_s: f64,
}

impl ChangepointCounts {
    /// Mean delay of the detected change points, s (`None` when none was detected).
    pub fn mean_delay_s(&self) -> Option<f64> {
        (self.detected > 0).then(|| self.total_delay_s / self.detected as f64)
    }
}

/// The sum of two counts (SKAB sums over files before dividing).
impl std::ops::Add for Confusion {
    type Output = Confusion;

    fn add(self, other: Confusion) -> Confusion {
        Confusion {
            true_positives: self.true_positives + other.true_positives,
            true_negatives: self.true_negatives + other.true_negatives,
            false_positives: self.false_positives + other.false_positives,
            false_negatives: self.false_negatives + other.false_negatives,
        }
    }
}

/// The sum of two counts.
impl std::ops::Add for ChangepointCounts {
    type Output = ChangepointCounts;

    fn add(self, other: ChangepointCounts) -> ChangepointCounts {
        ChangepointCounts {
            labelled: self.labelled + other.labelled,
            detected: self.detected + other.detected,
            false_positives: self.false_positives + other.false_positives,
            total_delay_s: self.total_delay_s + other.total_delay_s,
        }
    }
}

/// What one experiment scored.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentScore {
    pub path: PathBuf,
    pub group: String,
    /// Rows scored (after the fitted ones).
    pub scored_rows: usize,
    /// Principal components the detector kept.
    pub components: usize,
    pub anomaly: Confusion,
    /// Always-anomalous prediction on the same rows: the floor any detector must beat
    /// (SKAB's scored parts are about half anomalous).
    pub all_anomalous: Confusion,
    pub changepoints: ChangepointCounts,
}

/// The CSV files of a SKAB data folder: those directly in it and those one folder down,
/// sorted by folder and then numerically by file name (`2.csv` before `10.csv`).
pub fn find_files(dir: &Path) -> Result<Vec<PathBuf>, SkabError> {
    let read = |path: &Path| {
        std::fs::read_dir(path).map_err(|error| SkabError::Read {
            path: path.to_path_buf(),
            error,
        })
    };
    let mut files = Vec::new();
    for entry in read(dir)? {
        let path = entry
            .map_err(|error| SkabError::Read {
                path: dir.to_path_buf(),
                error,
            })?
            .path();
        if path.is_dir() {
            for inner in read(&path)? {
                let inner = inner
                    .map_err(|error| SkabError::Read {
                        path: path.clone(),
                        error,
                    })?
                    .path();
                if is_csv(&inner) {
                    files.push(inner);
                }
            }
        } else if is_csv(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(SkabError::NoFiles {
            path: dir.to_path_buf(),
        });
    }
    files.sort_by_key(|path| {
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        (folder, stem.parse::<u64>().unwrap_or(u64::MAX), stem)
    });
    Ok(files)
}

fn is_csv(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Reads one experiment file.
pub fn read_experiment(path: &Path) -> Result<Experiment, SkabError> {
    let text = std::fs::read_to_string(path).map_err(|error| SkabError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_experiment(&text, path)
}

/// Parses the text of an experiment file; `path` names it in errors and gives its group.
pub fn parse_experiment(text: &str, path: &Path) -> Result<Experiment, SkabError> {
    let header_error = |why: String| SkabError::Header {
        path: path.to_path_buf(),
        why,
    };
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, line)| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .ok_or_else(|| header_error("the file is empty".to_string()))?;
    let names: Vec<&str> = header.split(';').map(str::trim).collect();
    if names.len() == 1 {
        let hint = if header.contains(',') {
            " (is the separator ',' instead of ';'?)"
        } else {
            ""
        };
        return Err(header_error(format!(
            "expected ';'-separated columns, found one: {header:?}{hint}"
        )));
    }
    let position = |name: &str| names.iter().position(|n| *n == name);
    let column = |name: &str| {
        position(name).ok_or_else(|| {
            header_error(format!(
                "no column {name:?} (columns: {})",
                names.join(", ")
            ))
        })
    };
    let datetime_column = column("datetime")?;
    let sensor_columns: Vec<usize> = SENSOR_COLUMNS
        .iter()
        .map(|name| column(name))
        .collect::<Result<_, _>>()?;
    let label_columns = match (position("anomaly"), position("changepoint")) {
        (Some(anomaly), Some(changepoint)) => Some((anomaly, changepoint)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(header_error(
                "an anomaly column without a changepoint column".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(header_error(
                "a changepoint column without an anomaly column".into(),
            ));
        }
    };

    let mut times = Vec::new();
    let mut rows = Vec::new();
    let mut anomaly = Vec::new();
    let mut changepoint = Vec::new();
    for (line_idx, line) in lines {
        let line_number = line_idx + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let line_error = |why: String| SkabError::Line {
            path: path.to_path_buf(),
            line: line_number,
            why,
        };
        let fields: Vec<&str> = line.split(';').map(str::trim).collect();
        if fields.len() != names.len() {
            return Err(line_error(format!(
                "{} fields, the header has {}",
                fields.len(),
                names.len()
            )));
        }
        let time = NaiveDateTime::parse_from_str(fields[datetime_column], DATETIME_FORMAT)
            .map_err(|error| {
                line_error(format!(
                    "datetime {:?} is not YYYY-MM-DD HH:MM:SS: {error}",
                    fields[datetime_column]
                ))
            })?;
        let number = |column_idx: usize| -> Result<f64, SkabError> {
            let field = fields[column_idx];
            match field.parse::<f64>() {
                Ok(value) if value.is_finite() => Ok(value),
                _ => Err(line_error(format!(
                    "{} is {field:?}, not a finite number",
                    names[column_idx]
                ))),
            }
        };
        let row = sensor_columns
            .iter()
            .map(|&c| number(c))
            .collect::<Result<Vec<f64>, _>>()?;
        if let Some((anomaly_column, changepoint_column)) = label_columns {
            let label = |column_idx: usize| -> Result<bool, SkabError> {
                match number(column_idx)? {
                    0.0 => Ok(false),
                    1.0 => Ok(true),
                    other => Err(line_error(format!(
                        "{} is {other}, expected 0 or 1",
                        names[column_idx]
                    ))),
                }
            };
            anomaly.push(label(anomaly_column)?);
            changepoint.push(label(changepoint_column)?);
        }
        times.push(time);
        rows.push(row);
    }
    let group = path
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Experiment {
        path: path.to_path_buf(),
        group,
        times,
        rows,
        labels: label_columns.map(|_| Labels {
            anomaly,
            changepoint,
        }),
    })
}

/// Fits a detector on the first [`TRAIN_ROWS`] rows of a labelled experiment and scores the
/// rest by SKAB's protocol. `None` for an unlabelled file (nothing to score).
pub fn score_experiment(
    experiment: &Experiment,
    settings: &Settings,
) -> Result<Option<ExperimentScore>, SkabError> {
    let Some(labels) = &experiment.labels else {
        return Ok(None);
    };
    let rows = experiment.rows.len();
    if rows <= TRAIN_ROWS {
        return Err(SkabError::TooShort {
            path: experiment.path.clone(),
            rows,
            train_rows: TRAIN_ROWS,
        });
    }
    let detector_error = |error| SkabError::Detector {
        path: experiment.path.clone(),
        error,
    };
    let detector =
        Detector::fit(&experiment.rows[..TRAIN_ROWS], settings).map_err(detector_error)?;
    let predicted: Vec<bool> = detector
        .assess(&experiment.rows)
        .map_err(detector_error)?
        .iter()
        .skip(TRAIN_ROWS)
        .map(|assessment| assessment.anomalous)
        .collect();
    let truth = &labels.anomaly[TRAIN_ROWS..];
    Ok(Some(ExperimentScore {
        path: experiment.path.clone(),
        group: experiment.group.clone(),
        scored_rows: truth.len(),
        components: detector.components(),
        anomaly: Confusion::count(truth, &predicted),
        all_anomalous: Confusion::count(truth, &vec![true; truth.len()]),
        changepoints: changepoint_counts(
            &experiment.times[TRAIN_ROWS..],
            &labels.changepoint[TRAIN_ROWS..],
            &predicted,
        ),
    }))
}

/// SKAB's `average_time` counts for one file: windows of [`CHANGEPOINT_WINDOW_S`] after
/// each true change point (a window is cut where the next one starts), predicted change
/// points where the predicted label flips.
pub fn changepoint_counts(
    times: &[NaiveDateTime],
    true_changepoints: &[bool],
    predicted_anomaly: &[bool],
) -> ChangepointCounts {
    let predicted_times: Vec<NaiveDateTime> = predicted_anomaly
        .iter()
        .enumerate()
        .filter(|&(idx, &flag)| {
            if idx == 0 {
                flag
            } else {
                flag != predicted_anomaly[idx - 1]
            }
        })
        .map(|(idx, _)| times[idx])
        .collect();
    let window = chrono::TimeDelta::seconds(CHANGEPOINT_WINDOW_S);
    let mut windows: Vec<(NaiveDateTime, NaiveDateTime)> = times
        .iter()
        .zip(true_changepoints)
        .filter(|&(_, &flag)| flag)
        .map(|(&t, _)| (t, t + window))
        .collect();
    // SKAB's "cut right window": an overlapping window starts where the previous one ends.
    for idx in 1..windows.len() {
        if windows[idx - 1].1 >= windows[idx].0 {
            windows[idx].0 = windows[idx - 1].1;
        }
    }
    let mut counts = ChangepointCounts {
        labelled: windows.len(),
        ..ChangepointCounts::default()
    };
    let mut inside_some_window = vec![false; predicted_times.len()];
    for &(start, end) in &windows {
        let mut first_inside = None;
        for (idx, &t) in predicted_times.iter().enumerate() {
            if t >= start && t <= end {
                inside_some_window[idx] = true;
                first_inside.get_or_insert(t);
            }
        }
        if let Some(t) = first_inside {
            counts.detected += 1;
            counts.total_delay_s += (t - start).num_milliseconds() as f64 / 1000.0;
        }
    }
    counts.false_positives = inside_some_window.iter().filter(|inside| !**inside).count();
    counts
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;\
                          Temperature;Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint";

    fn line(second: usize, anomaly: bool) -> String {
        format!(
            "2020-03-09 10:{:02}:{:02};0.0265;0.0401;1.33;0.0547;79.33;26.02;233.06;32.0;{};0.0",
            second / 60,
            second % 60,
            if anomaly { "1.0" } else { "0.0" }
        )
    }

    fn parse_error(text: &str) -> String {
        match parse_experiment(text, Path::new("valve1/7.csv")) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_well_formed_file_is_read() {
        let text = format!("{HEADER}\n{}\n{}\r\n\n", line(0, false), line(1, true));
        let experiment =
            parse_experiment(&text, Path::new("data/valve1/7.csv")).expect("a good file");
        assert_eq!(experiment.group, "valve1");
        assert_eq!(experiment.rows.len(), 2);
        assert_eq!(experiment.rows[1][7], 32.0);
        assert_eq!(
            experiment.labels,
            Some(Labels {
                anomaly: vec![false, true],
                changepoint: vec![false, false]
            })
        );
        let unlabelled = "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;\
                          Temperature;Thermocouple;Voltage;Volume Flow RateRMS\n\
                          2020-02-08 13:30:47;0.2;0.27;2.1;0.38;90.6;26.8;238.8;122.6\n";
        let experiment = parse_experiment(unlabelled, Path::new("anomaly-free/anomaly-free.csv"))
            .expect("a good file");
        assert_eq!(experiment.labels, None);
    }

    #[test]
    fn malformed_files_name_the_file_and_line() {
        let comma = HEADER.replace(';', ",");
        let got = parse_error(&format!("{comma}\n"));
        assert!(
            got.contains("valve1/7.csv, line 1") && got.contains("separator ','"),
            "{got}"
        );
        let no_pressure = HEADER.replace("Pressure;", "");
        let got = parse_error(&format!("{no_pressure}\n"));
        assert!(got.contains("line 1: no column \"Pressure\""), "{got}");
        let got = parse_error(&format!(
            "{HEADER}\n{}\n{}\n",
            line(0, false),
            line(1, false).replace("233.06", "2x3")
        ));
        assert!(
            got.contains("valve1/7.csv, line 3: Voltage is \"2x3\", not a finite number"),
            "{got}"
        );
        let got = parse_error(&format!(
            "{HEADER}\n{}\n",
            line(0, false).replace(";32.0", "")
        ));
        assert!(
            got.contains("line 2: 10 fields, the header has 11"),
            "{got}"
        );
        let got = parse_error(&format!(
            "{HEADER}\n{}\n",
            line(0, false).replace(";0.0;0.0", ";0.5;0.0")
        ));
        assert!(
            got.contains("line 2: anomaly is 0.5, expected 0 or 1"),
            "{got}"
        );
        let got = parse_error(&format!(
            "{HEADER}\n{}\n",
            line(0, false).replace("2020-03-09 ", "")
        ));
        assert!(got.contains("line 2: datetime"), "{got}");
        let got = parse_error(&format!(
            "{HEADER}\n{}\n",
            line(0, false).replace("0.0265", "NaN")
        ));
        assert!(
            got.contains("line 2: Accelerometer1RMS is \"NaN\""),
            "{got}"
        );
        assert!(parse_error("").contains("the file is empty"));
    }

    #[test]
    fn folders_of_groups_and_flat_folders_are_found_in_numeric_order() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let valve = dir.path().join("valve1");
        std::fs::create_dir(&valve).expect("a folder");
        for name in ["10.csv", "2.csv", "notes.txt"] {
            std::fs::write(valve.join(name), "").expect("a file");
        }
        std::fs::write(dir.path().join("1.csv"), "").expect("a file");
        let names: Vec<String> = find_files(dir.path())
            .expect("CSV files")
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["1.csv", "valve1/2.csv", "valve1/10.csv"]);
        let flat = find_files(&valve).expect("CSV files");
        assert_eq!(flat.len(), 2);
        let empty = tempfile::tempdir().expect("a temporary folder");
        let got = find_files(empty.path())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            got.as_ref().is_err_and(|e| e.contains("no CSV files")),
            "{got:?}"
        );
        let missing = find_files(&dir.path().join("absent")).map_err(|e| e.to_string());
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("reading ") && e.contains("absent")),
            "{missing:?}"
        );
    }

    #[test]
    fn the_binary_scores_follow_skab() {
        let truth = [true, true, true, false, false, false];
        let predicted = [true, true, false, true, false, false];
        let confusion = Confusion::count(&truth, &predicted);
        assert_eq!(
            confusion,
            Confusion {
                true_positives: 2,
                true_negatives: 2,
                false_positives: 1,
                false_negatives: 1
            }
        );
        assert!((confusion.f1() - 2.0 / 3.0).abs() < 1e-12);
        assert!((confusion.false_alarm_rate_pct() - 100.0 / 3.0).abs() < 1e-9);
        assert!((confusion.missed_alarm_rate_pct() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(Confusion::default().f1(), 0.0);
    }

    #[test]
    fn changepoints_count_within_sixty_seconds_after() {
        let start = NaiveDateTime::parse_from_str("2020-03-09 10:00:00", DATETIME_FORMAT)
            .expect("a valid time");
        let times: Vec<NaiveDateTime> = (0..300)
            .map(|s| start + chrono::TimeDelta::seconds(s))
            .collect();
        let mut truth = vec![false; 300];
        truth[50] = true;
        truth[200] = true;
        // Predicted anomaly from 60 to 150 (flips at 60 and 151), and from 280 on (a flip
        // far from the second window: missed, and a false positive).
        let predicted: Vec<bool> = (0..300)
            .map(|s| (60..=150).contains(&s) || s >= 280)
            .collect();
        let counts = changepoint_counts(&times, &truth, &predicted);
        assert_eq!(
            counts,
            ChangepointCounts {
                labelled: 2,
                detected: 1,
                false_positives: 2,
                total_delay_s: 10.0
            }
        );
    }

    #[test]
    fn the_real_folder_scores_above_the_target() {
        let dir = Path::new("/work/shared/datasets/skab");
        if !dir.exists() {
            eprintln!("skipping: {} is absent", dir.display());
            return;
        }
        let mut total = Confusion::default();
        let mut files = 0;
        for path in find_files(dir).expect("the SKAB folder") {
            let experiment = read_experiment(&path).expect("a SKAB file");
            if let Some(score) =
                score_experiment(&experiment, &Settings::default()).expect("a SKAB file scores")
            {
                total = total + score.anomaly;
                files += 1;
            }
        }
        assert!(files >= 20, "only {files} labelled files");
        assert!(
            total.f1() >= 0.70,
            "F1 {:.3} over {files} files",
            total.f1()
        );
    }
}
