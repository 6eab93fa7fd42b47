//! A random forest of linfa-trees decision trees: which features predict the defect on parts
//! the model never saw (permutation importance), the thresholds its splits learnt, and the
//! leaves where defects concentrate (candidate interactions).
//!
//! The bagging is done here rather than with linfa-ensemble: its bootstrap drops sample
//! weights, and the forest needs them, because it learns from every defective part but only a
//! sample of the good ones (weighted so the two classes count alike).

use linfa::prelude::*;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// How the forest is grown.
#[derive(Debug, Clone, Copy)]
pub struct ForestSettings {
    /// Trees in the forest.
    pub trees: usize,
    /// Deepest split (conjunctions have at most this many terms).
    pub max_depth: usize,
    /// Most rows the forest is fitted on (all defective ones up to half of it, then good ones).
    pub row_budget: usize,
    /// Share of rows held out for permutation importance.
    pub held_out_share: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// What the forest learnt, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The model ("random forest of linfa-trees decision trees").
    pub kind: String,
    /// Trees fitted.
    pub trees: usize,
    /// Rows the trees were fitted on (after sampling the good parts).
    pub fit_rows: usize,
    /// Held-out rows importance was measured on.
    pub held_out_rows: usize,
    /// Area under the ROC curve on the held-out rows.
    pub held_out_auc: f64,
    /// Per feature, the drop in held-out AUC when its values are shuffled, largest first.
    pub importance: Vec<FeatureImportance>,
    /// The thresholds the trees split each feature at.
    pub splits: Vec<LearntSplits>,
}

/// One feature's permutation importance.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureImportance {
    /// The feature.
    pub feature: String,
    /// Held-out AUC lost when the feature's values are shuffled.
    pub auc_drop: f64,
}

/// The thresholds learnt for one feature.
#[derive(Debug, Clone, Serialize)]
pub struct LearntSplits {
    /// The feature.
    pub feature: String,
    /// How many splits use it.
    pub count: usize,
    /// The median of their thresholds.
    pub median_threshold: f64,
}

/// One term of a path from a tree's root to a leaf: `feature < threshold` (below) or `≥`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathTerm {
    /// Index into the forest's features.
    pub feature: usize,
    /// Whether the path goes below the threshold.
    pub below: bool,
    /// The split value.
    pub threshold: f64,
}

/// The forest's report and the paths to its defect leaves.
pub struct ForestOutcome {
    /// What it learnt.
    pub report: ModelReport,
    /// Root-to-leaf paths of leaves that predict the defect, with the tree's simplification
    /// (one bound per feature and side).
    pub defect_paths: Vec<Vec<PathTerm>>,
}

type Tree = DecisionTree<f64, bool>;

/// Fits the forest on `features` (columns, `NaN` missing) against `positive`.
pub fn fit_forest(
    names: &[String],
    features: &[&[f64]],
    positive: &[bool],
    settings: ForestSettings,
) -> Option<ForestOutcome> {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut fit_positives = Vec::new();
    let mut fit_negatives = Vec::new();
    let mut held_positives = Vec::new();
    let mut held_negatives = Vec::new();
    for (row, &is_positive) in positive.iter().enumerate() {
        let held = rng.r#gen::<f64>() < settings.held_out_share;
        match (held, is_positive) {
            (false, true) => fit_positives.push(row),
            (false, false) => fit_negatives.push(row),
            (true, true) => held_positives.push(row),
            (true, false) => held_negatives.push(row),
        }
    }
    if fit_positives.len() < 2 || held_positives.is_empty() || fit_negatives.is_empty() {
        return None;
    }
    let half = settings.row_budget / 2;
    fit_positives.shuffle(&mut rng);
    fit_positives.truncate(half);
    fit_negatives.shuffle(&mut rng);
    fit_negatives.truncate(settings.row_budget - fit_positives.len());
    held_positives.shuffle(&mut rng);
    held_positives.truncate(half);
    held_negatives.shuffle(&mut rng);
    held_negatives.truncate(settings.row_budget - held_positives.len());

    // Missing values take the column's median over the fitting rows.
    let fill: Vec<f64> = features
        .iter()
        .map(|column| {
            let mut present: Vec<f64> = fit_negatives
                .iter()
                .chain(&fit_positives)
                .map(|&row| column[row])
                .filter(|v| !v.is_nan())
                .collect();
            present.sort_unstable_by(f64::total_cmp);
            present.get(present.len() / 2).copied().unwrap_or(0.0)
        })
        .collect();
    let matrix = |rows: &[usize]| {
        Array2::from_shape_fn((rows.len(), features.len()), |(i, j)| {
            let value = features[j][rows[i]];
            if value.is_nan() { fill[j] } else { value }
        })
    };
    let fit_rows: Vec<usize> = fit_positives
        .iter()
        .chain(&fit_negatives)
        .copied()
        .collect();
    let fit_matrix = matrix(&fit_rows);
    let negative_weight = fit_positives.len() as f32 / fit_negatives.len() as f32;
    let weights: Vec<f32> = fit_rows
        .iter()
        .map(|&row| if positive[row] { 1.0 } else { negative_weight })
        .collect();
    let labels: Vec<bool> = fit_rows.iter().map(|&row| positive[row]).collect();
    let n_features = features.len();
    let features_per_tree = ((n_features as f64 * 0.6).ceil() as usize).clamp(1, n_features);
    let min_weight_leaf = (fit_positives.len() as f32 * 0.02).max(2.0);

    let trees: Vec<(Tree, Vec<usize>)> = (0..settings.trees)
        .into_par_iter()
        .filter_map(|tree_index| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(settings.seed ^ ((tree_index as u64 + 1) * 0x9E37_79B9));
            let sample: Vec<usize> = (0..fit_rows.len())
                .map(|_| rng.gen_range(0..fit_rows.len()))
                .collect();
            let mut chosen: Vec<usize> = (0..n_features).collect();
            chosen.shuffle(&mut rng);
            chosen.truncate(features_per_tree);
            chosen.sort_unstable();
            let records = Array2::from_shape_fn((sample.len(), chosen.len()), |(i, j)| {
                fit_matrix[(sample[i], chosen[j])]
            });
            let targets = ndarray::Array1::from_iter(sample.iter().map(|&i| labels[i]));
            let tree_weights = ndarray::Array1::from_iter(sample.iter().map(|&i| weights[i]));
            let dataset = Dataset::new(records, targets).with_weights(tree_weights);
            let tree = DecisionTree::params()
                .max_depth(Some(settings.max_depth))
                .min_weight_leaf(min_weight_leaf)
                .min_weight_split(2.0 * min_weight_leaf)
                .fit(&dataset)
                .ok()?;
            Some((tree, chosen))
        })
        .collect();
    if trees.is_empty() {
        return None;
    }

    let held_rows: Vec<usize> = held_positives
        .iter()
        .chain(&held_negatives)
        .copied()
        .collect();
    let held_labels: Vec<bool> = held_rows.iter().map(|&row| positive[row]).collect();
    let mut held_matrix = matrix(&held_rows);
    let held_out_auc = auc(&votes(&trees, &held_matrix), &held_labels);
    let mut importance: Vec<FeatureImportance> = (0..n_features)
        .map(|feature| {
            let original = held_matrix.column(feature).to_owned();
            let mut shuffled = original.to_vec();
            shuffled.shuffle(&mut rng);
            held_matrix
                .column_mut(feature)
                .assign(&ndarray::Array1::from(shuffled));
            let drop = held_out_auc - auc(&votes(&trees, &held_matrix), &held_labels);
            held_matrix.column_mut(feature).assign(&original);
            FeatureImportance {
                feature: names[feature].clone(),
                auc_drop: drop,
            }
        })
        .collect();
    importance.sort_by(|a, b| b.auc_drop.total_cmp(&a.auc_drop));

    let mut thresholds: Vec<Vec<f64>> = vec![Vec::new(); n_features];
    let mut defect_paths = Vec::new();
    for (tree, chosen) in &trees {
        walk(
            tree.root_node(),
            chosen,
            &mut Vec::new(),
            &mut thresholds,
            &mut defect_paths,
        );
    }
    let splits = thresholds
        .into_iter()
        .enumerate()
        .filter(|(_, values)| !values.is_empty())
        .map(|(feature, mut values)| {
            values.sort_unstable_by(f64::total_cmp);
            LearntSplits {
                feature: names[feature].clone(),
                count: values.len(),
                median_threshold: values[values.len() / 2],
            }
        })
        .collect();
    Some(ForestOutcome {
        report: ModelReport {
            kind: "random forest of linfa-trees decision trees".to_string(),
            trees: trees.len(),
            fit_rows: fit_rows.len(),
            held_out_rows: held_rows.len(),
            held_out_auc,
            importance,
            splits,
        },
        defect_paths,
    })
}

/// Collects every split threshold and the (simplified) paths to leaves that predict a defect.
fn walk(
    node: &TreeNode<f64, bool>,
    chosen: &[usize],
    path: &mut Vec<PathTerm>,
    thresholds: &mut [Vec<f64>],
    defect_paths: &mut Vec<Vec<PathTerm>>,
) {
    if let Some(prediction) = node.prediction() {
        if prediction && !path.is_empty() {
            defect_paths.push(simplify(path));
        }
        return;
    }
    let (local_feature, threshold, _) = node.split();
    let feature = chosen[local_feature];
    thresholds[feature].push(threshold);
    let children = node.children();
    for (child, below) in children.into_iter().zip([true, false]) {
        if let Some(child) = child {
            path.push(PathTerm {
                feature,
                below,
                threshold,
            });
            walk(child, chosen, path, thresholds, defect_paths);
            path.pop();
        }
    }
}

/// One bound per feature and side: the tightest.
fn simplify(path: &[PathTerm]) -> Vec<PathTerm> {
    let mut terms: Vec<PathTerm> = Vec::new();
    for term in path {
        match terms
            .iter_mut()
            .find(|kept| kept.feature == term.feature && kept.below == term.below)
        {
            Some(kept) if term.below => kept.threshold = kept.threshold.min(term.threshold),
            Some(kept) => kept.threshold = kept.threshold.max(term.threshold),
            None => terms.push(*term),
        }
    }
    terms.sort_by_key(|term| (term.feature, term.below));
    terms
}

/// The share of trees that predict a defect, per row.
fn votes(trees: &[(Tree, Vec<usize>)], matrix: &Array2<f64>) -> Vec<f64> {
    (0..matrix.nrows())
        .map(|row| {
            let defect_votes = trees
                .iter()
                .filter(|(tree, chosen)| {
                    let mut node = tree.root_node();
                    while node.prediction().is_none() {
                        let (local_feature, threshold, _) = node.split();
                        let value = matrix[(row, chosen[local_feature])];
                        let [left, right] = [node.children()[0], node.children()[1]];
                        let next = if value < threshold { left } else { right };
                        match next {
                            Some(child) => node = child,
                            None => break,
                        }
                    }
                    node.prediction().unwrap_or(false)
                })
                .count();
            defect_votes as f64 / trees.len() as f64
        })
        .collect()
}

/// Area under the ROC curve (ties count half).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| labels[order[k]]).count() as f64 * mean_rank;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_reversed_scores() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(auc(&[0.5; 4], &labels), 0.5);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
    }
}
