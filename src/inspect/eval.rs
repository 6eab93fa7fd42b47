//! Detection metrics and threshold choice: pure functions over scores and labels.
//!
//! Scores are "higher means more defective"; labels are `true` for defective parts.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve: the probability that a random defective part scores above a random
/// good one (ties count half). `None` when either class is empty.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives: Vec<f32> = pick(scores, labels, true);
    let negatives: Vec<f32> = pick(scores, labels, false);
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    // Rank-sum (Mann–Whitney U) with average ranks for ties: O(n log n).
    let mut all: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let average_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum_pos += average_rank * all[i..j].iter().filter(|(_, label)| *label).count() as f64;
        i = j;
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    Some((rank_sum_pos - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Average precision: the mean of precision at each defective part's rank, best score first.
/// `None` when there is no defective part.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|l| **l).count();
    if n_pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut hits, mut sum) = (0usize, 0.0);
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    Some(sum / n_pos as f64)
}

/// How a threshold performs on a set of parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    pub threshold: f32,
    pub accuracy: f64,
    pub f1: f64,
    /// Defective parts passed (missed) over all defective parts.
    pub escape_rate: f64,
    /// Good parts rejected over all good parts.
    pub false_reject_rate: f64,
}

/// Metrics of "fail when score ≥ threshold".
pub fn at_threshold(scores: &[f32], labels: &[bool], threshold: f32) -> ThresholdMetrics {
    let (mut tp, mut fp, mut tn, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    for (&score, &label) in scores.iter().zip(labels) {
        match (score >= threshold, label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    ThresholdMetrics {
        threshold,
        accuracy: ratio(tp + tn, scores.len()),
        f1: ratio(2 * tp, 2 * tp + fp + fn_),
        escape_rate: ratio(fn_, tp + fn_),
        false_reject_rate: ratio(fp, fp + tn),
    }
}

/// The threshold for a target escape rate: catch all but `floor(target × defective)` defective
/// parts, placed halfway to the best-scoring good part below it so both sides keep a margin.
/// `None` when there is no defective part.
pub fn threshold_for_escape_rate(
    scores: &[f32],
    labels: &[bool],
    target_escape_rate: f64,
) -> Option<f32> {
    let mut defective = pick(scores, labels, true);
    if defective.is_empty() {
        return None;
    }
    defective.sort_by(f32::total_cmp);
    let allowed_misses =
        (target_escape_rate.clamp(0.0, 1.0) * defective.len() as f64).floor() as usize;
    let lowest_caught = defective[allowed_misses.min(defective.len() - 1)];
    let best_good_below = pick(scores, labels, false)
        .into_iter()
        .filter(|s| *s < lowest_caught)
        .max_by(f32::total_cmp);
    Some(match best_good_below {
        Some(good) => (good + lowest_caught) / 2.0,
        None => lowest_caught,
    })
}

fn pick(scores: &[f32], labels: &[bool], which: bool) -> Vec<f32> {
    scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == which)
        .map(|(s, _)| *s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_by_hand() {
        // Pairs (pos, neg): (0.9,0.1) win, (0.9,0.6) win, (0.4,0.1) win, (0.4,0.6) loss: 3/4.
        assert_eq!(
            auroc(&[0.9, 0.4, 0.1, 0.6], &[true, true, false, false]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[0.5], &[true]), None);
    }

    #[test]
    fn average_precision_by_hand() {
        // Ranked: 0.9 (pos) P=1, 0.6 (neg), 0.4 (pos) P=2/3 → (1 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.4, 0.1, 0.6], &[true, true, false, false]).unwrap();
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn threshold_metrics_by_hand() {
        let m = at_threshold(&[0.9, 0.4, 0.1, 0.6], &[true, true, false, false], 0.5);
        assert_eq!(m.escape_rate, 0.5);
        assert_eq!(m.false_reject_rate, 0.5);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.f1, 0.5);
    }

    #[test]
    fn threshold_catches_all_defects_with_margin() {
        let scores = [0.9, 0.7, 0.2, 0.3, 0.8];
        let labels = [true, true, false, false, false];
        // Lowest defect 0.7; best good below it 0.3 → 0.5. The good part at 0.8 is a false reject.
        assert_eq!(threshold_for_escape_rate(&scores, &labels, 0.0), Some(0.5));
        // Allowing one miss of two: lowest caught is 0.9; best good below is 0.8.
        assert_eq!(threshold_for_escape_rate(&scores, &labels, 0.5), Some(0.85));
    }
}
