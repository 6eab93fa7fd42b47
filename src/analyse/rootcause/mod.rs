//! Root cause: which line conditions move with a defect class.
//!
//! In: a [`Table`] (one row per part; numeric tags and settings, categorical columns such as a
//! product type) and a [`Target`] (which parts had the defect), from a CSV file or from the
//! station's parts lined up with their sensor values. Out: an [`Analysis`] whose
//! [`Finding`]s are sentences an engineer can act on, each with its evidence.
//!
//! The method, in order:
//! 1. every feature is sorted once and cut into quantile bins; each bin's defect rate gets a
//!    Wilson interval, a lift over the base rate and a one-sided Fisher exact p-value against
//!    all other parts;
//! 2. derived quantities are added: differences of same-unit columns, and differences,
//!    products and ratios of pairs among the strongest columns, plus any the caller names
//!    ([`derive`]); a torque (Nm) × speed (rpm) product is a power in W;
//! 3. Benjamini–Hochberg runs over every bin of every feature at once; a feature is
//!    significant when one of its bins is. A derived feature is kept only when it separates
//!    defects clearly better than each column it is made of (its G statistic gains at least
//!    [`Settings::min_gain`]), so a derived feature that restates a raw one is not a second
//!    finding;
//! 4. each significant feature's best region (above or below a threshold, or outside a band)
//!    is searched on its sorted values; for a categorical column with few levels the threshold
//!    is searched per level ("by product type") and kept when that explains defects better;
//! 5. a random forest ([`forest`]) on the significant features gives permutation importance
//!    on held-out rows and its learnt split thresholds; its defect leaves are conjunctions
//!    ("ΔT < 8.6 K and speed < 1380 rpm") whose thresholds are refined on all parts, kept when
//!    the conjunction beats each of its parts by [`Settings::min_gain`].
//!
//! Only features that pass step 3 are named in any finding: a tag independent of the defects
//! reaches a finding only as a false discovery at the chosen FDR level.

pub mod derive;
pub mod forest;
pub mod scan;
pub mod station;
pub mod stats;
pub mod table;
pub mod window;

use std::borrow::Cow;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

pub use derive::{Derived, Expr, parse_definition};
pub use forest::{ForestSettings, ModelReport};
pub use scan::{Bin, Region};
pub use table::{Column, ColumnValues, CsvTable, Table, Target, parse_csv, read_csv};

use scan::{SearchLimits, Totals};
use stats::LogFactorials;

/// Why root cause could not run.
#[derive(Debug, thiserror::Error)]
pub enum RootCauseError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CSV text is malformed.
    #[error("{path}, line {line}: {message}")]
    Csv {
        /// The file.
        path: String,
        /// The line (1 is the header).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The file has a header but no rows.
    #[error("the table has no rows")]
    Empty,
    /// The target column is not in the table.
    #[error("no target column {target:?}; columns: {columns}")]
    MissingTarget {
        /// The column asked for.
        target: String,
        /// The columns there are.
        columns: String,
    },
    /// An excluded column is not in the table.
    #[error("no column {0:?} to exclude")]
    UnknownColumn(String),
    /// The target has a blank in some row.
    #[error("target {target:?} has no value in row {row}")]
    TargetMissingValue {
        /// The target column.
        target: String,
        /// The data row (1-based).
        row: usize,
    },
    /// The target has more than two values.
    #[error("target {target:?} is not two-valued: {values}, …")]
    TargetNotBinary {
        /// The target column.
        target: String,
        /// The first values seen.
        values: String,
    },
    /// Every part has the same target value.
    #[error("target {target:?} has one class only (every part is {value:?}): nothing to explain")]
    OneClass {
        /// The target column.
        target: String,
        /// The one value.
        value: String,
    },
    /// The target and the table differ in length.
    #[error("target {target:?} has {target_rows} rows, the table {table_rows}")]
    TargetLength {
        /// The target.
        target: String,
        /// Its length.
        target_rows: usize,
        /// The table's rows.
        table_rows: usize,
    },
    /// A column and the table differ in length.
    #[error("column {column:?} has {column_rows} values, the table {table_rows} rows")]
    ColumnLength {
        /// The column.
        column: String,
        /// Its length.
        column_rows: usize,
        /// The table's rows.
        table_rows: usize,
    },
    /// Nothing is left to analyse.
    #[error("no usable column: {0}")]
    NoUsableColumns(String),
    /// A derived expression is malformed.
    #[error("derived expression {expression:?}: {message}")]
    Expression {
        /// The expression.
        expression: String,
        /// What is wrong.
        message: String,
    },
}

/// How the analysis runs. [`Settings::default`] holds the values chosen on generated data and
/// the first half of the AI4I development file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Quantile bins per numeric feature.
    pub bins: usize,
    /// Benjamini–Hochberg false discovery rate a bin must pass.
    pub fdr: f64,
    /// Fewest parts in a finding's region (and on each side of a band).
    pub min_parts: usize,
    /// Fewest defective parts in a finding's region.
    pub min_positives: usize,
    /// G a derived feature, band, per-level threshold or conjunction must gain over the
    /// simpler finding it refines (10.83 is the χ² 0.1 % point at one degree of freedom).
    pub min_gain: f64,
    /// The strongest columns whose pairs are combined.
    pub pair_columns: usize,
    /// Most derived features tried (those the caller names come on top).
    pub derived_budget: usize,
    /// Derived features the caller names.
    pub derived: Vec<Derived>,
    /// Most levels a categorical column may have to split thresholds by.
    pub max_segment_levels: usize,
    /// The tree model.
    pub forest: ForestSettings,
    /// Most findings reported.
    pub max_findings: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bins: 10,
            fdr: 0.01,
            min_parts: 10,
            min_positives: 3,
            min_gain: 10.83,
            pair_columns: 6,
            derived_budget: 60,
            derived: Vec::new(),
            max_segment_levels: 12,
            forest: ForestSettings {
                trees: 40,
                max_depth: 3,
                row_budget: 4000,
                held_out_share: 0.3,
                seed: 16,
            },
            max_findings: 20,
        }
    }
}

/// The outcome: findings ranked strongest first, and the evidence behind them.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// The defect class explained.
    pub target: String,
    /// Parts analysed.
    pub parts: usize,
    /// Defective parts among them.
    pub positives: usize,
    /// Their rate.
    pub base_rate: f64,
    /// Significant findings, strongest first.
    pub findings: Vec<Finding>,
    /// Every feature tested, with its bins (the chart behind a finding).
    pub features: Vec<FeatureReport>,
    /// The derived features tried, by name.
    pub derived_tried: Vec<String>,
    /// Columns left out of the analysis and why.
    pub skipped: Vec<SkippedColumn>,
    /// What the tree model learnt, when there were significant features to fit it on.
    pub model: Option<ModelReport>,
}

/// A column left out and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedColumn {
    /// The column.
    pub column: String,
    /// Why ("constant", "empty: no values").
    pub reason: String,
}

/// One feature's test.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    /// The feature's name.
    pub name: String,
    /// Raw column, derived quantity or categorical column.
    pub kind: FeatureKind,
    /// Its unit.
    pub unit: Option<String>,
    /// Its value bins (levels for a categorical column).
    pub bins: Vec<Bin>,
    /// Its q-value: its best bin's p-value times its number of bins, through
    /// Benjamini–Hochberg across the columns (or across the derived features).
    pub q_value: f64,
    /// Whether it may be named in a finding.
    pub significant: bool,
    /// The best region of a numeric feature and its G statistic.
    pub best_region: Option<Region>,
    /// That region's G statistic (0 when none).
    pub g_statistic: f64,
    /// Why a feature with a significant bin is not named ("restates Torque [Nm]").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a feature comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A numeric column of the table.
    Raw,
    /// A quantity computed from columns.
    Derived,
    /// A categorical column.
    Categorical,
}

/// A significant association between a condition and the defect.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The defect class.
    pub target: String,
    /// The main feature named (the first term of a conjunction).
    pub feature: String,
    /// Every feature the condition names.
    pub features: Vec<String>,
    /// What kind of finding.
    pub kind: FindingKind,
    /// Where the defects concentrate.
    pub condition: Condition,
    /// Parts in the condition.
    pub parts: usize,
    /// Defective parts in it.
    pub positives: usize,
    /// Their rate.
    pub rate: f64,
    /// Lower end of its 95 % Wilson interval.
    pub rate_low: f64,
    /// Upper end.
    pub rate_high: f64,
    /// The rate over all parts.
    pub base_rate: f64,
    /// Rate over base rate.
    pub lift: f64,
    /// Share of all defective parts the condition holds.
    pub share_of_positives: f64,
    /// The largest q-value among the features named ([`FeatureReport::q_value`]): how surely
    /// each of them moves with the defect.
    pub q_value: f64,
    /// G statistic of the condition's two-by-two table (the ranking key).
    pub g_statistic: f64,
    /// Held-out permutation importance (AUC drop) of the features named, largest.
    pub importance: Option<f64>,
    /// How long before inspection the values acted, in seconds (filled by the caller that
    /// lined parts up with sensor values).
    pub lag_s: Option<f64>,
    /// Where the chart behind the finding is (filled by the caller).
    pub chart: Option<String>,
    /// The finding as one sentence.
    pub sentence: String,
}

/// What kind of condition a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Above or below one threshold.
    Threshold,
    /// Outside a band.
    Band,
    /// One level of a categorical column.
    Level,
    /// A threshold that differs by the level of a categorical column.
    Segmented,
    /// Several conditions that hold together.
    Interaction,
}

/// Where the defects concentrate.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// One feature in one region.
    Region(Term),
    /// One level of a categorical column.
    Level {
        /// The column.
        feature: String,
        /// The level.
        level: String,
    },
    /// All terms hold.
    Conjunction {
        /// The terms.
        terms: Vec<Term>,
    },
    /// A threshold per level of a categorical column.
    Segmented {
        /// The numeric feature.
        feature: String,
        /// Its unit.
        unit: Option<String>,
        /// The categorical column.
        segment: String,
        /// Whether defects lie below (else above) the thresholds.
        below: bool,
        /// Each level's threshold.
        thresholds: Vec<LevelThreshold>,
    },
}

/// One feature in one region.
#[derive(Debug, Clone, Serialize)]
pub struct Term {
    /// The feature.
    pub feature: String,
    /// Its unit.
    pub unit: Option<String>,
    /// The region.
    pub region: Region,
}

/// One level's threshold.
#[derive(Debug, Clone, Serialize)]
pub struct LevelThreshold {
    /// The level.
    pub level: String,
    /// The threshold applied to the level's parts: its own when `estimated`, else the one
    /// common to all parts.
    pub threshold: f64,
    /// Whether the level's parts gave a threshold of their own; a level with no defective
    /// part gives none (AI4I's type H products rarely overstrain), and its threshold is then
    /// no finding about it.
    pub estimated: bool,
    /// Defective parts of the level.
    pub defective: usize,
}

/// How many times its strongest column's G a derived feature must reach (plus
/// [`Settings::min_gain`]) to be named.
const DERIVED_MIN_RATIO: f64 = 1.2;

/// A feature under test: a numeric column or a derived quantity.
struct Feature<'a> {
    name: String,
    unit: Option<String>,
    kind: FeatureKind,
    values: Cow<'a, [f64]>,
    parents: Vec<usize>,
    explicit: bool,
}

/// A feature after its scan.
struct Scanned<'a> {
    feature: Feature<'a>,
    sorted: Vec<(f64, u32)>,
    bins: Vec<Bin>,
    best: Option<scan::BestRegion>,
}

/// Finds what moves with `target` in `table`.
pub fn analyse(
    table: &Table,
    target: &Target,
    settings: &Settings,
) -> Result<Analysis, RootCauseError> {
    let rows = table.rows;
    if target.positive.len() != rows {
        return Err(RootCauseError::TargetLength {
            target: target.name.clone(),
            target_rows: target.positive.len(),
            table_rows: rows,
        });
    }
    let positives = target.positive.iter().filter(|p| **p).count();
    if positives == 0 || positives == rows {
        return Err(RootCauseError::OneClass {
            target: target.name.clone(),
            value: if positives == 0 {
                "no defect"
            } else {
                "defect"
            }
            .to_string(),
        });
    }
    let mut skipped = Vec::new();
    let mut raw = Vec::new();
    let mut categorical = Vec::new();
    for (index, column) in table.columns.iter().enumerate() {
        if column.len() != rows {
            return Err(RootCauseError::ColumnLength {
                column: column.name.clone(),
                column_rows: column.len(),
                table_rows: rows,
            });
        }
        let reason = match &column.values {
            ColumnValues::Numeric(values) => {
                let mut present = values.iter().filter(|v| v.is_finite());
                match present.next() {
                    None => Some("empty: no values"),
                    Some(first) if present.all(|v| v == first) => Some("constant"),
                    Some(_) => None,
                }
            }
            ColumnValues::Categorical { levels, codes } => {
                let mut present = codes.iter().flatten();
                match present.next() {
                    None => Some("empty: no values"),
                    Some(first) if present.all(|c| c == first) => Some("constant"),
                    Some(_) if levels.len() > 200 => Some("too many levels"),
                    Some(_) => None,
                }
            }
        };
        match (reason, &column.values) {
            (Some(reason), _) => skipped.push(SkippedColumn {
                column: column.name.clone(),
                reason: reason.to_string(),
            }),
            (None, ColumnValues::Numeric(values)) => raw.push(Feature {
                name: column.name.clone(),
                unit: column.unit.clone(),
                kind: FeatureKind::Raw,
                values: Cow::Borrowed(values.as_slice()),
                parents: vec![index],
                explicit: false,
            }),
            (None, ColumnValues::Categorical { .. }) => categorical.push(index),
        }
    }
    if raw.is_empty() && categorical.is_empty() {
        return Err(RootCauseError::NoUsableColumns(
            skipped
                .iter()
                .map(|s| format!("{} ({})", s.column, s.reason))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let totals = Totals {
        positives,
        parts: rows,
    };
    let log_factorials = LogFactorials::up_to(rows);
    let limits = SearchLimits {
        min_parts: settings.min_parts,
        min_positives: settings.min_positives,
        min_gain: settings.min_gain,
    };
    let positive = &target.positive;
    let scan_all = |features| {
        scan_features(
            features,
            positive,
            settings.bins,
            totals,
            &log_factorials,
            limits,
        )
    };
    let mut scanned = scan_all(raw);

    // Derived features: pairs among the strongest columns, same-unit differences, then the
    // caller's.
    let strength = |s: &Scanned| s.best.map_or(0.0, |best| best.g);
    let mut by_strength: Vec<usize> = (0..scanned.len()).collect();
    by_strength.sort_by(|&a, &b| strength(&scanned[b]).total_cmp(&strength(&scanned[a])));
    let column_of = |s: &Scanned| s.feature.parents[0];
    let mut candidates: Vec<Derived> = Vec::new();
    let strongest: Vec<usize> = by_strength
        .iter()
        .take(settings.pair_columns)
        .map(|&i| column_of(&scanned[i]))
        .collect();
    for (i, &a) in strongest.iter().enumerate() {
        for &b in &strongest[i + 1..] {
            candidates.extend(derive::pair_candidates(table, a, b));
        }
    }
    for (i, &first) in by_strength.iter().enumerate() {
        for &second in &by_strength[i + 1..] {
            let (a, b) = (column_of(&scanned[first]), column_of(&scanned[second]));
            if table.columns[a].unit.is_some() && table.columns[a].unit == table.columns[b].unit {
                candidates.extend(
                    derive::pair_candidates(table, a, b)
                        .into_iter()
                        .filter(|d| matches!(d.expr, Expr::Binary(_, derive::Op::Sub, _))),
                );
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|d| seen.insert(d.name.clone()));
    candidates.truncate(settings.derived_budget);
    candidates.extend(settings.derived.iter().cloned());
    let derived_tried: Vec<String> = candidates.iter().map(|d| d.name.clone()).collect();
    let derived_features: Vec<Feature> = candidates
        .into_iter()
        .map(|d| Feature {
            values: Cow::Owned(d.expr.evaluate(table)),
            name: d.name,
            unit: d.unit,
            kind: FeatureKind::Derived,
            parents: d.parents,
            explicit: d.explicit,
        })
        .filter(|f| {
            let mut present = f.values.iter().filter(|v| v.is_finite());
            present
                .next()
                .is_some_and(|first| present.any(|v| v != first))
        })
        .collect();
    scanned.extend(scan_all(derived_features));

    // Categorical columns: one bin per level.
    let mut categorical_bins: Vec<(usize, Vec<Bin>)> = categorical
        .iter()
        .map(|&index| {
            (
                index,
                level_bins(&table.columns[index], positive, totals, &log_factorials),
            )
        })
        .collect();

    // Benjamini–Hochberg over every bin of every feature: the q-values the bin tables show.
    let p_values: Vec<f64> = scanned
        .iter()
        .flat_map(|s| s.bins.iter().map(|b| b.p_value))
        .chain(
            categorical_bins
                .iter()
                .flat_map(|(_, bins)| bins.iter().map(|b| b.p_value)),
        )
        .collect();
    let q_values = stats::benjamini_hochberg(&p_values);
    let mut q_iter = q_values.into_iter();
    for bin in scanned.iter_mut().flat_map(|s| s.bins.iter_mut()).chain(
        categorical_bins
            .iter_mut()
            .flat_map(|(_, bins)| bins.iter_mut()),
    ) {
        bin.q_value = q_iter.next().unwrap_or(1.0);
    }
    // Which features may be named: a feature's p-value is its best bin's, times its number of
    // bins (Bonferroni within the feature); Benjamini–Hochberg then runs across the columns
    // (numeric and categorical) and, as a family of its own, across the derived features, so
    // the many derived features of one strong column cannot loosen the bar for the columns.
    let feature_p = |bins: &[Bin]| {
        let best = bins.iter().map(|b| b.p_value).fold(1.0, f64::min);
        (best * bins.len() as f64).min(1.0)
    };
    let column_p: Vec<f64> = scanned
        .iter()
        .filter(|s| s.feature.kind == FeatureKind::Raw)
        .map(|s| feature_p(&s.bins))
        .chain(categorical_bins.iter().map(|(_, bins)| feature_p(bins)))
        .collect();
    let derived_p: Vec<f64> = scanned
        .iter()
        .filter(|s| s.feature.kind == FeatureKind::Derived)
        .map(|s| feature_p(&s.bins))
        .collect();
    let mut column_q = stats::benjamini_hochberg(&column_p).into_iter();
    let mut derived_q = stats::benjamini_hochberg(&derived_p).into_iter();
    let feature_q: Vec<f64> = scanned
        .iter()
        .map(|s| match s.feature.kind {
            FeatureKind::Derived => derived_q.next().unwrap_or(1.0),
            _ => column_q.next().unwrap_or(1.0),
        })
        .collect();
    let categorical_q: Vec<f64> = column_q.collect();

    let raw_g = |column: usize| {
        scanned
            .iter()
            .find(|s| s.feature.kind == FeatureKind::Raw && s.feature.parents[0] == column)
            .map_or(0.0, strength)
    };
    let mut notes: Vec<Option<String>> = vec![None; scanned.len()];
    let mut significant: Vec<bool> = scanned
        .iter()
        .zip(&feature_q)
        .map(|(s, q)| *q <= settings.fdr && s.best.is_some())
        .collect();
    for (i, s) in scanned.iter().enumerate() {
        if s.feature.kind != FeatureKind::Derived || !significant[i] || s.feature.explicit {
            continue;
        }
        let (parent, parent_g) = s
            .feature
            .parents
            .iter()
            .map(|&p| (p, raw_g(p)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        // The threshold search fits noise too, so a derived feature must beat its strongest
        // column by a share as well as by the χ² margin.
        if strength(s) < parent_g * DERIVED_MIN_RATIO + settings.min_gain {
            significant[i] = false;
            notes[i] = Some(format!("restates {}", table.columns[parent].name));
        }
    }

    let base_rate = totals.base_rate();
    let describe = DescribeContext {
        target: &target.name,
        totals,
    };
    let mut findings: Vec<Candidate> = Vec::new();
    for (i, s) in scanned.iter().enumerate() {
        let (true, Some(best)) = (significant[i], s.best) else {
            continue;
        };
        let inside: Vec<bool> = s
            .feature
            .values
            .iter()
            .map(|&v| best.region.contains(v))
            .collect();
        findings.push(Candidate {
            condition: Condition::Region(Term {
                feature: s.feature.name.clone(),
                unit: s.feature.unit.clone(),
                region: best.region,
            }),
            features: vec![i],
            q_value: feature_q[i],
            inside,
            refines: None,
        });
    }
    for ((index, bins), q_value) in categorical_bins.iter().zip(&categorical_q) {
        if *q_value > settings.fdr {
            continue;
        }
        let Some((level, bin)) = bins
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.p_value.total_cmp(&b.1.p_value))
        else {
            continue;
        };
        let ColumnValues::Categorical { codes, .. } = &table.columns[*index].values else {
            continue;
        };
        findings.push(Candidate {
            condition: Condition::Level {
                feature: table.columns[*index].name.clone(),
                level: bin.level.clone().unwrap_or_default(),
            },
            features: Vec::new(),
            q_value: *q_value,
            inside: codes.iter().map(|c| *c == Some(level as u32)).collect(),
            refines: None,
        });
    }

    // Thresholds by level of a categorical column.
    let mut segmented = Vec::new();
    for candidate in findings.iter() {
        let Condition::Region(term) = &candidate.condition else {
            continue;
        };
        let below = match term.region {
            Region::Below { .. } => true,
            Region::Above { .. } => false,
            Region::Outside { .. } => continue,
        };
        let s = &scanned[candidate.features[0]];
        for &index in &categorical {
            let ColumnValues::Categorical { levels, codes } = &table.columns[index].values else {
                continue;
            };
            if levels.len() > settings.max_segment_levels {
                continue;
            }
            let Some((fits, inside)) = segment_if_better(
                s,
                term,
                below,
                codes,
                levels.len(),
                positive,
                limits,
                &candidate.inside,
            ) else {
                continue;
            };
            segmented.push(Candidate {
                condition: Condition::Segmented {
                    feature: term.feature.clone(),
                    unit: term.unit.clone(),
                    segment: table.columns[index].name.clone(),
                    below,
                    thresholds: fits
                        .iter()
                        .enumerate()
                        .map(|(level, fit)| LevelThreshold {
                            level: levels[level].clone(),
                            threshold: fit.threshold,
                            estimated: fit.estimated,
                            defective: (0..codes.len())
                                .filter(|&row| positive[row] && codes[row] == Some(level as u32))
                                .count(),
                        })
                        .collect(),
                },
                features: candidate.features.clone(),
                q_value: candidate.q_value,
                inside,
                refines: Some(candidate.features[0]),
            });
        }
    }
    findings.extend(segmented);

    // The forest, on the features that may be named.
    let mut forest_features: Vec<usize> = (0..scanned.len()).filter(|&i| significant[i]).collect();
    forest_features.sort_by(|&a, &b| strength(&scanned[b]).total_cmp(&strength(&scanned[a])));
    forest_features.truncate(20);
    let model = if forest_features.is_empty() {
        None
    } else {
        let names: Vec<String> = forest_features
            .iter()
            .map(|&i| scanned[i].feature.name.clone())
            .collect();
        let columns: Vec<&[f64]> = forest_features
            .iter()
            .map(|&i| &*scanned[i].feature.values)
            .collect();
        forest::fit_forest(&names, &columns, positive, settings.forest).map(|outcome| {
            let interactions = interactions(
                &outcome.defect_paths,
                &forest_features,
                &scanned,
                positive,
                totals,
                limits,
                &describe,
            );
            for (terms, inside) in interactions {
                let q_value = terms.iter().map(|(i, _)| feature_q[*i]).fold(0.0, f64::max);
                findings.push(Candidate {
                    condition: Condition::Conjunction {
                        terms: terms
                            .iter()
                            .map(|(i, region)| Term {
                                feature: scanned[*i].feature.name.clone(),
                                unit: scanned[*i].feature.unit.clone(),
                                region: *region,
                            })
                            .collect(),
                    },
                    features: terms.iter().map(|(i, _)| *i).collect(),
                    q_value,
                    inside,
                    refines: None,
                });
            }
            outcome.report
        })
    };

    // Rank, then drop what restates a stronger finding.
    let mut ranked: Vec<(f64, Candidate)> = findings
        .into_iter()
        .map(|c| (describe.g(&c.inside, positive), c))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let refined: Vec<usize> = ranked.iter().filter_map(|(_, c)| c.refines).collect();
    let mut kept: Vec<(f64, Candidate)> = Vec::new();
    for (g, candidate) in ranked {
        if let Condition::Region(_) = candidate.condition
            && refined.contains(&candidate.features[0])
        {
            continue;
        }
        let restates = kept
            .iter()
            .any(|(_, stronger)| jaccard(&stronger.inside, &candidate.inside) >= 0.9);
        if restates || !holds_beyond(&candidate, &kept, &scanned, positive) {
            continue;
        }
        kept.push((g, candidate));
        if kept.len() == settings.max_findings {
            break;
        }
    }
    let importance_of = |feature: usize| {
        model.as_ref().and_then(|model| {
            model
                .importance
                .iter()
                .find(|i| i.feature == scanned[feature].feature.name)
                .map(|i| i.auc_drop)
        })
    };
    let findings: Vec<Finding> = kept
        .into_iter()
        .map(|(g, candidate)| {
            let importance = candidate
                .features
                .iter()
                .filter_map(|&f| importance_of(f))
                .reduce(f64::max);
            describe.finding(candidate, g, importance, positive)
        })
        .collect();

    let mut features: Vec<FeatureReport> = scanned
        .into_iter()
        .zip(significant)
        .zip(notes)
        .zip(feature_q)
        .map(|(((s, significant), note), q_value)| FeatureReport {
            q_value,
            g_statistic: strength(&s),
            best_region: s.best.map(|b| b.region),
            name: s.feature.name,
            kind: s.feature.kind,
            unit: s.feature.unit,
            bins: s.bins,
            significant,
            note,
        })
        .collect();
    for ((index, bins), q_value) in categorical_bins.into_iter().zip(categorical_q) {
        features.push(FeatureReport {
            name: table.columns[index].name.clone(),
            kind: FeatureKind::Categorical,
            unit: None,
            q_value,
            significant: q_value <= settings.fdr,
            bins,
            best_region: None,
            g_statistic: 0.0,
            note: None,
        });
    }
    Ok(Analysis {
        target: target.name.clone(),
        parts: rows,
        positives,
        base_rate,
        findings,
        features,
        derived_tried,
        skipped,
        model,
    })
}

/// Sorts, bins and searches the best region of each feature, in parallel.
fn scan_features<'a>(
    features: Vec<Feature<'a>>,
    positive: &[bool],
    n_bins: usize,
    totals: Totals,
    log_factorials: &LogFactorials,
    limits: SearchLimits,
) -> Vec<Scanned<'a>> {
    features
        .into_par_iter()
        .map(|feature| {
            let sorted = scan::sort_values(&feature.values);
            let bins = scan::quantile_bins(&sorted, positive, n_bins, totals, log_factorials);
            let labelled: Vec<(f64, bool)> = sorted
                .iter()
                .map(|&(value, row)| (value, positive[row as usize]))
                .collect();
            let best = scan::best_region(&labelled, totals, limits);
            Scanned {
                feature,
                sorted,
                bins,
                best,
            }
        })
        .collect()
}

/// A finding before ranking: its condition and which parts it holds.
struct Candidate {
    condition: Condition,
    /// Indices of the scanned features it names.
    features: Vec<usize>,
    q_value: f64,
    inside: Vec<bool>,
    /// The feature whose single-threshold finding this one refines (a per-level threshold).
    refines: Option<usize>,
}

/// Stronger findings a weaker one is judged against: the strata multiply with each.
const MAX_STRATA_FINDINGS: usize = 3;
/// Quantile bins of a stronger finding's features in the strata (deciles: coarser bins leave
/// enough of a true cause's spread inside a bin for a companion tag to ride along).
const STRATA_BINS: usize = 10;
/// The Cochran–Mantel–Haenszel statistic a finding needs within the strata (χ²₁ at p = 0.001).
const CONDITIONAL_CHI2: f64 = 10.83;

/// Whether `candidate` still moves with the target among parts alike in what the stronger
/// `kept` findings name: the same side of each stronger condition and the same decile of
/// each of its features. A tag that only rides along with a true cause (a drive power creeping up over
/// the same hours that a press runs hotter) shows a lift on its own, and none once the press
/// is held fixed; it is then not a finding. The test is Cochran–Mantel–Haenszel over the
/// strata, and the excess must lie on the finding's side.
fn holds_beyond(
    candidate: &Candidate,
    kept: &[(f64, Candidate)],
    scanned: &[Scanned],
    positive: &[bool],
) -> bool {
    if kept.is_empty() {
        return true;
    }
    let rows = positive.len();
    let mut key = vec![0u64; rows];
    for (_, stronger) in kept.iter().take(MAX_STRATA_FINDINGS) {
        for (k, &inside) in key.iter_mut().zip(&stronger.inside) {
            *k = k.wrapping_mul(2).wrapping_add(u64::from(inside));
        }
        if matches!(stronger.condition, Condition::Level { .. }) {
            continue;
        }
        for &feature in &stronger.features {
            // Holding the candidate's own feature fixed would test nothing.
            if feature >= scanned.len() || candidate.features.contains(&feature) {
                continue;
            }
            let values = &scanned[feature].feature.values;
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            if sorted.is_empty() {
                continue;
            }
            sorted.sort_by(f64::total_cmp);
            let edges: Vec<f64> = (1..STRATA_BINS)
                .map(|q| sorted[q * sorted.len() / STRATA_BINS])
                .collect();
            for (k, &v) in key.iter_mut().zip(values.iter()) {
                let bin = if v.is_finite() {
                    edges.partition_point(|&e| e <= v)
                } else {
                    STRATA_BINS
                };
                *k = k
                    .wrapping_mul(STRATA_BINS as u64 + 1)
                    .wrapping_add(bin as u64);
            }
        }
    }
    // Per stratum: parts, parts inside, positives, positives inside.
    let mut strata: std::collections::HashMap<u64, [f64; 4]> = std::collections::HashMap::new();
    for ((&k, &inside), &pos) in key.iter().zip(&candidate.inside).zip(positive) {
        let s = strata.entry(k).or_default();
        s[0] += 1.0;
        s[1] += f64::from(u8::from(inside));
        s[2] += f64::from(u8::from(pos));
        s[3] += f64::from(u8::from(inside && pos));
    }
    let (mut observed, mut expected, mut variance) = (0.0, 0.0, 0.0);
    for [n, inside, pos, both] in strata.into_values() {
        if n < 2.0 {
            continue;
        }
        observed += both;
        expected += inside * pos / n;
        variance += inside * (n - inside) * pos * (n - pos) / (n * n * (n - 1.0));
    }
    if variance <= 0.0 || observed <= expected {
        return false;
    }
    let chi2 = ((observed - expected).abs() - 0.5).max(0.0).powi(2) / variance;
    chi2 >= CONDITIONAL_CHI2
}

fn jaccard(a: &[bool], b: &[bool]) -> f64 {
    let (mut both, mut either) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        both += (x && y) as usize;
        either += (x || y) as usize;
    }
    if either == 0 {
        0.0
    } else {
        both as f64 / either as f64
    }
}

/// One bin per level of a categorical column (then one for missing values).
fn level_bins(
    column: &Column,
    positive: &[bool],
    totals: Totals,
    log_factorials: &LogFactorials,
) -> Vec<Bin> {
    let ColumnValues::Categorical { levels, codes } = &column.values else {
        return Vec::new();
    };
    let mut counts = vec![(0usize, 0usize); levels.len() + 1];
    for (code, &p) in codes.iter().zip(positive) {
        let slot = code.map_or(levels.len(), |c| c as usize);
        counts[slot].0 += 1;
        counts[slot].1 += p as usize;
    }
    counts
        .iter()
        .enumerate()
        .filter(|(level, (parts, _))| *level < levels.len() || *parts > 0)
        .map(|(level, &(parts, positives))| {
            let mut bin = Bin::new(f64::NAN, f64::NAN, parts, positives, totals, log_factorials);
            bin.level = Some(
                levels
                    .get(level)
                    .cloned()
                    .unwrap_or_else(|| "(missing)".to_string()),
            );
            bin
        })
        .collect()
}

/// One level's threshold as fitted: its own, or the common one when its parts gave none.
#[derive(Debug, Clone, Copy)]
struct LevelFit {
    threshold: f64,
    estimated: bool,
}

/// Per-level thresholds of `term` by coordinate ascent on the whole condition's G, over the
/// rows `in_sample` admits; `None` for a band. A level whose rows hold no defective part
/// keeps the common threshold and is marked not estimated.
#[allow(clippy::too_many_arguments)]
fn segment_thresholds(
    scanned: &Scanned,
    term: &Term,
    below: bool,
    codes: &[Option<u32>],
    n_levels: usize,
    positive: &[bool],
    limits: SearchLimits,
    in_sample: &dyn Fn(usize) -> bool,
) -> Option<Vec<LevelFit>> {
    let global = match term.region {
        Region::Below { threshold } | Region::Above { threshold } => threshold,
        Region::Outside { .. } => return None,
    };
    let values = &scanned.feature.values;
    let sample: Vec<usize> = (0..values.len()).filter(|&row| in_sample(row)).collect();
    let totals = Totals {
        positives: sample.iter().filter(|&&row| positive[row]).count(),
        parts: sample.len(),
    };
    if totals.positives == 0 || totals.positives == totals.parts {
        return None;
    }
    let mut thresholds = vec![global; n_levels];
    let mut estimated = vec![false; n_levels];
    let per_level: Vec<Vec<(f64, bool)>> = (0..n_levels)
        .map(|level| {
            scanned
                .sorted
                .iter()
                .filter(|(_, row)| {
                    codes[*row as usize] == Some(level as u32) && in_sample(*row as usize)
                })
                .map(|&(value, row)| (value, positive[row as usize]))
                .collect()
        })
        .collect();
    for _round in 0..2 {
        for level in 0..n_levels {
            let mut fixed = (0, 0);
            for &row in &sample {
                if codes[row] != Some(level as u32)
                    && segment_holds(values[row], codes[row], below, &thresholds)
                {
                    fixed.0 += 1;
                    fixed.1 += positive[row] as usize;
                }
            }
            if !per_level[level].iter().any(|(_, positive)| *positive) {
                continue;
            }
            if let Some(threshold) =
                scan::best_threshold(&per_level[level], below, fixed, totals, limits)
            {
                thresholds[level] = threshold;
                estimated[level] = true;
            }
        }
    }
    Some(
        thresholds
            .into_iter()
            .zip(estimated)
            .map(|(threshold, estimated)| LevelFit {
                threshold,
                estimated,
            })
            .collect(),
    )
}

fn segment_holds(value: f64, code: Option<u32>, below: bool, thresholds: &[f64]) -> bool {
    match code {
        Some(level) if below => value < thresholds[level as usize],
        Some(level) => value > thresholds[level as usize],
        None => false,
    }
}

/// G of a condition over the rows `in_sample` admits.
fn g_within(inside: &[bool], positive: &[bool], in_sample: &dyn Fn(usize) -> bool) -> f64 {
    let (mut parts, mut positives, mut all_parts, mut all_positives) =
        (0usize, 0usize, 0usize, 0usize);
    for row in (0..inside.len()).filter(|&row| in_sample(row)) {
        all_parts += 1;
        all_positives += positive[row] as usize;
        parts += inside[row] as usize;
        positives += (inside[row] && positive[row]) as usize;
    }
    stats::g_statistic(
        positives as f64,
        parts as f64,
        all_positives as f64,
        all_parts as f64,
    )
}

/// Whether per-level thresholds of `term` by the categorical `codes` beat one threshold: by
/// [`Settings::min_gain`] on all parts, and by half of it on the odd rows when both are
/// chosen on the even rows (thresholds fitted per level also fit noise). The thresholds and
/// the parts they hold when they do.
#[allow(clippy::too_many_arguments)]
fn segment_if_better(
    scanned: &Scanned,
    term: &Term,
    below: bool,
    codes: &[Option<u32>],
    n_levels: usize,
    positive: &[bool],
    limits: SearchLimits,
    single_inside: &[bool],
) -> Option<(Vec<LevelFit>, Vec<bool>)> {
    let values = &scanned.feature.values;
    // A level may hold few defective parts (AI4I's H products rarely fail): each level's
    // threshold needs only one, and the gains below decide whether splitting by level holds.
    let limits = SearchLimits {
        min_parts: 1,
        min_positives: 1,
        ..limits
    };
    let all = |_: usize| true;
    let even = |row: usize| row.is_multiple_of(2);
    let odd = |row: usize| row % 2 == 1;
    let fits = segment_thresholds(
        scanned, term, below, codes, n_levels, positive, limits, &all,
    )?;
    let thresholds: Vec<f64> = fits.iter().map(|fit| fit.threshold).collect();
    let inside: Vec<bool> = (0..values.len())
        .map(|row| segment_holds(values[row], codes[row], below, &thresholds))
        .collect();
    if g_within(&inside, positive, &all) < g_within(single_inside, positive, &all) + limits.min_gain
    {
        return None;
    }
    let even_thresholds: Vec<f64> = segment_thresholds(
        scanned, term, below, codes, n_levels, positive, limits, &even,
    )?
    .iter()
    .map(|fit| fit.threshold)
    .collect();
    let even_rows: Vec<(f64, bool)> = scanned
        .sorted
        .iter()
        .filter(|(_, row)| even(*row as usize))
        .map(|&(value, row)| (value, positive[row as usize]))
        .collect();
    let even_totals = Totals {
        positives: even_rows.iter().filter(|(_, p)| *p).count(),
        parts: values.len().div_ceil(2),
    };
    let single = scan::best_threshold(&even_rows, below, (0, 0), even_totals, limits)?;
    let region = if below {
        Region::Below { threshold: single }
    } else {
        Region::Above { threshold: single }
    };
    let single_even: Vec<bool> = values.iter().map(|&v| region.contains(v)).collect();
    let segmented_even: Vec<bool> = (0..values.len())
        .map(|row| segment_holds(values[row], codes[row], below, &even_thresholds))
        .collect();
    let validated_gain =
        g_within(&segmented_even, positive, &odd) - g_within(&single_even, positive, &odd);
    (validated_gain >= limits.min_gain / 2.0).then_some((fits, inside))
}

/// Conjunctions from the forest's defect leaves, refined on all parts; each kept one beats
/// every conjunction of its terms but one by the minimum gain.
fn interactions(
    paths: &[Vec<forest::PathTerm>],
    forest_features: &[usize],
    scanned: &[Scanned],
    positive: &[bool],
    totals: Totals,
    limits: SearchLimits,
    describe: &DescribeContext,
) -> Vec<(Conjunction, Vec<bool>)> {
    let rows = positive.len();
    let to_terms = |path: &Vec<forest::PathTerm>| -> Vec<(usize, Region)> {
        path.iter()
            .map(|t| {
                let feature = forest_features[t.feature];
                let region = if t.below {
                    Region::Below {
                        threshold: t.threshold,
                    }
                } else {
                    Region::Above {
                        threshold: t.threshold,
                    }
                };
                (feature, region)
            })
            .collect()
    };
    let inside_of = |terms: &[(usize, Region)]| -> Vec<bool> {
        (0..rows)
            .map(|row| {
                terms
                    .iter()
                    .all(|(f, region)| region.contains(scanned[*f].feature.values[row]))
            })
            .collect()
    };
    // Distinct shapes (features and sides), each with its best thresholds from the trees.
    // Each shape (features and sides) with its best thresholds from the trees and their G.
    type Shape = (Vec<(usize, bool)>, Conjunction, f64);
    let mut shapes: Vec<Shape> = Vec::new();
    for path in paths {
        let terms = to_terms(path);
        let mut distinct: Vec<usize> = terms.iter().map(|(f, _)| *f).collect();
        distinct.dedup();
        if distinct.len() < 2 {
            continue;
        }
        let shape: Vec<(usize, bool)> = terms
            .iter()
            .map(|(f, r)| (*f, matches!(r, Region::Below { .. })))
            .collect();
        let g = describe.g(&inside_of(&terms), positive);
        match shapes.iter_mut().find(|(s, ..)| *s == shape) {
            Some(existing) if existing.2 >= g => {}
            Some(existing) => *existing = (shape, terms, g),
            None => shapes.push((shape, terms, g)),
        }
    }
    shapes.sort_by(|a, b| b.2.total_cmp(&a.2));
    shapes.truncate(5);
    let mut kept = Vec::new();
    for (_, mut terms, _) in shapes {
        for _round in 0..2 {
            for i in 0..terms.len() {
                let (feature, region) = terms[i];
                let others: Vec<(usize, Region)> = terms
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, t)| *t)
                    .collect();
                let others_inside = inside_of(&others);
                let candidates: Vec<(f64, bool)> = scanned[feature]
                    .sorted
                    .iter()
                    .filter(|(_, row)| others_inside[*row as usize])
                    .map(|&(value, row)| (value, positive[row as usize]))
                    .collect();
                let below = matches!(region, Region::Below { .. });
                if let Some(threshold) =
                    scan::best_threshold(&candidates, below, (0, 0), totals, limits)
                {
                    terms[i].1 = if below {
                        Region::Below { threshold }
                    } else {
                        Region::Above { threshold }
                    };
                }
            }
        }
        let inside = inside_of(&terms);
        let g = describe.g(&inside, positive);
        let best_part = (0..terms.len())
            .map(|i| {
                let others: Vec<(usize, Region)> = terms
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, t)| *t)
                    .collect();
                describe.g(&inside_of(&others), positive)
            })
            .fold(0.0, f64::max);
        let parts = inside.iter().filter(|x| **x).count();
        if g >= best_part + limits.min_gain && parts >= limits.min_parts {
            kept.push((terms, inside));
        }
    }
    kept
}

/// A conjunction: features (indices into the scanned features) and their regions.
type Conjunction = Vec<(usize, Region)>;

/// What turning a condition into a finding needs.
struct DescribeContext<'a> {
    target: &'a str,
    totals: Totals,
}

impl DescribeContext<'_> {
    fn counts(&self, inside: &[bool], positive: &[bool]) -> (usize, usize) {
        inside
            .iter()
            .zip(positive)
            .fold((0, 0), |(parts, positives), (&i, &p)| {
                (parts + i as usize, positives + (i && p) as usize)
            })
    }

    fn g(&self, inside: &[bool], positive: &[bool]) -> f64 {
        let (parts, positives) = self.counts(inside, positive);
        stats::g_statistic(
            positives as f64,
            parts as f64,
            self.totals.positives as f64,
            self.totals.parts as f64,
        )
    }

    fn finding(
        &self,
        candidate: Candidate,
        g: f64,
        importance: Option<f64>,
        positive: &[bool],
    ) -> Finding {
        let (parts, positives) = self.counts(&candidate.inside, positive);
        let rate = positives as f64 / parts.max(1) as f64;
        let (rate_low, rate_high) = stats::wilson_interval(positives, parts);
        let base_rate = self.totals.base_rate();
        let (kind, features) = match &candidate.condition {
            Condition::Region(term) => (
                if matches!(term.region, Region::Outside { .. }) {
                    FindingKind::Band
                } else {
                    FindingKind::Threshold
                },
                vec![term.feature.clone()],
            ),
            Condition::Level { feature, .. } => (FindingKind::Level, vec![feature.clone()]),
            Condition::Conjunction { terms } => (
                FindingKind::Interaction,
                terms.iter().map(|t| t.feature.clone()).collect(),
            ),
            Condition::Segmented {
                feature, segment, ..
            } => (
                FindingKind::Segmented,
                vec![feature.clone(), segment.clone()],
            ),
        };
        let mut finding = Finding {
            target: self.target.to_string(),
            feature: features[0].clone(),
            features,
            kind,
            condition: candidate.condition,
            parts,
            positives,
            rate,
            rate_low,
            rate_high,
            base_rate,
            lift: rate / base_rate,
            share_of_positives: positives as f64 / self.totals.positives as f64,
            q_value: candidate.q_value,
            g_statistic: g,
            importance,
            lag_s: None,
            chart: None,
            sentence: String::new(),
        };
        finding.sentence = finding.describe();
        finding
    }
}

impl Finding {
    /// The finding as one sentence, e.g. "HDF ×27 when Process temperature [K] − Air
    /// temperature [K] < 8.6 K and Rotational speed [rpm] < 1380 rpm (93 % of the HDF; 80 of
    /// 82 parts, rate 98 % [92–99 %], q < 0.001)". Call again after filling [`Finding::lag_s`].
    pub fn describe(&self) -> String {
        let lag = self
            .lag_s
            .map(|lag| format!(", {} s before inspection", number(lag)))
            .unwrap_or_default();
        let q = if self.q_value < 0.001 {
            "q < 0.001".to_string()
        } else {
            format!("q = {:.3}", self.q_value)
        };
        format!(
            "{} ×{} when {}{} ({:.0} % of the {}; {} of {} parts, rate {:.0} % [{:.0}–{:.0} %], {})",
            self.target,
            number(self.lift),
            condition_text(&self.condition),
            lag,
            self.share_of_positives * 100.0,
            self.target,
            self.positives,
            self.parts,
            self.rate * 100.0,
            self.rate_low * 100.0,
            self.rate_high * 100.0,
            q
        )
    }
}

/// Below this many defective parts a level's own threshold is named with its count, so a
/// reader weighs it accordingly.
const FEW_DEFECTIVE: usize = 5;

fn condition_text(condition: &Condition) -> String {
    match condition {
        Condition::Region(term) => term_text(term),
        Condition::Level { feature, level } => format!("{feature} is {level}"),
        Condition::Conjunction { terms } => terms
            .iter()
            .map(term_text)
            .collect::<Vec<_>>()
            .join(" and "),
        Condition::Segmented {
            feature,
            unit,
            segment,
            below,
            thresholds,
        } => {
            let side = if *below { "<" } else { ">" };
            let per_level = thresholds
                .iter()
                .filter(|t| t.estimated)
                .map(|t| {
                    let few = if t.defective < FEW_DEFECTIVE {
                        format!(" (from {} defective)", t.defective)
                    } else {
                        String::new()
                    };
                    format!(
                        "{} for {segment} {}{few}",
                        with_unit(t.threshold, unit),
                        t.level
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            // A level without defective parts says nothing about its own threshold; say so
            // rather than print the common one as if it were the level's.
            let unknown: Vec<&str> = thresholds
                .iter()
                .filter(|t| !t.estimated)
                .map(|t| t.level.as_str())
                .collect();
            match unknown.as_slice() {
                [] => format!("{feature} {side} {per_level}"),
                levels => format!(
                    "{feature} {side} {per_level} ({segment} {} not estimable: no defective parts)",
                    levels.join(", ")
                ),
            }
        }
    }
}

fn term_text(term: &Term) -> String {
    match term.region {
        Region::Below { threshold } => {
            format!("{} < {}", term.feature, with_unit(threshold, &term.unit))
        }
        Region::Above { threshold } => {
            format!("{} > {}", term.feature, with_unit(threshold, &term.unit))
        }
        Region::Outside { low, high } => format!(
            "{} < {} or > {}",
            term.feature,
            with_unit(low, &term.unit),
            with_unit(high, &term.unit)
        ),
    }
}

fn with_unit(value: f64, unit: &Option<String>) -> String {
    match unit {
        Some(unit) => format!("{} {unit}", number(value)),
        None => number(value),
    }
}

/// A value with about three significant digits, without a trailing ".0".
fn number(value: f64) -> String {
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
