//! Detection metrics and threshold choice: pure functions over scores and labels.
//!
//! Scores are "higher means more defective"; labels are `true` for defective parts.

use serde::{Deserialize, Serialize};

use crate::models::backbone::features::{bilinear, resize_bilinear};
use crate::part::{GrayImage, HeatMap};

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
        // total_cmp: a NaN equals itself here, so the loop always moves on.
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
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

/// What every held-out evaluation of a defect detector reports, whatever the model; each
/// model's metrics flatten it into their JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    pub n_test: usize,
    pub n_test_defective: usize,
    /// Held-out images that could not be read (or are of a class the model does not know).
    pub n_skipped: usize,
    /// Of the image score; `None` unless there are both good and defective images.
    pub image_auroc: Option<f64>,
    pub average_precision: Option<f64>,
    /// Over pixels (64×64 per image) of images with masks or boxes; good images count as all
    /// good.
    pub pixel_auroc: Option<f64>,
    /// Normalised area under the per-region-overlap curve up to 30 % false-positive pixels.
    pub pixel_pro: Option<f64>,
}

impl DetectionMetrics {
    /// From image scores and labels (defective = true); the pixel figures come from the caller.
    pub fn from_scores(
        scores: &[f32],
        labels: &[bool],
        n_skipped: usize,
        pixel_auroc: Option<f64>,
        pixel_pro: Option<f64>,
    ) -> DetectionMetrics {
        let both = labels.iter().any(|l| *l) && labels.iter().any(|l| !l);
        DetectionMetrics {
            n_test: scores.len(),
            n_test_defective: labels.iter().filter(|l| **l).count(),
            n_skipped,
            image_auroc: both.then(|| auroc(scores, labels)).flatten(),
            average_precision: both.then(|| average_precision(scores, labels)).flatten(),
            pixel_auroc,
            pixel_pro,
        }
    }
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

/// A threshold with (nearly) the best accuracy on `scores`: among the cuts halfway between
/// neighbouring scores, and `prior` itself, those that get at most `slack` parts fewer right
/// than the best; of these the one nearest `prior`. A small validation set cannot tell apart
/// cuts a part or two apart, so the choice leans to the model's natural cut (0.5 for a
/// probability) instead of jumping to wherever one validation part happened to fall. `None`
/// unless there are both good and defective parts.
pub fn threshold_for_accuracy_near(
    scores: &[f32],
    labels: &[bool],
    prior: f32,
    slack: usize,
) -> Option<f32> {
    if !labels.iter().any(|l| *l) || labels.iter().all(|l| *l) {
        return None;
    }
    let mut sorted: Vec<f32> = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    let mut candidates: Vec<f32> = sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let top = sorted[sorted.len() - 1];
    candidates.extend([sorted[0], top + f32::EPSILON * top.abs().max(1.0), prior]);
    let correct = |t: f32| {
        scores
            .iter()
            .zip(labels)
            .filter(|(s, l)| (**s >= t) == **l)
            .count()
    };
    let best = candidates.iter().map(|&t| correct(t)).max()?;
    candidates
        .into_iter()
        .filter(|&t| correct(t) + slack >= best)
        .min_by(|a, b| (a - prior).abs().total_cmp(&(b - prior).abs()))
}

/// The lowest threshold that rejects at most `floor(rate × good)` of the good parts, just above
/// the highest good score that must pass: the rule of models learnt from good parts only.
/// Infinite when there is no good part (nothing to measure a false-reject rate on).
pub fn threshold_for_false_reject_rate(scores: &[f32], labels: &[bool], rate: f64) -> f32 {
    let mut good = pick(scores, labels, false);
    if good.is_empty() {
        return f32::INFINITY;
    }
    good.sort_by(f32::total_cmp);
    let allowed = (rate * good.len() as f64).floor() as usize;
    let index = good.len() - 1 - allowed.min(good.len() - 1);
    // Just above the highest good score that must pass.
    good[index] + f32::EPSILON * good[index].abs().max(1.0)
}

/// Which rate a threshold promises to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromisedRate {
    /// Good parts rejected.
    FalseReject,
    /// Defective parts passed.
    Escape,
}

/// What a threshold chosen by split conformal prediction promises for parts to come, exchangeable
/// with the `n` calibration parts it was chosen on (the same product, process and camera): the
/// rate is at most `target` in expectation over calibration sets (`expected_rate`), and for this
/// calibration set lies in `interval_90` with probability 0.9. Written into the model's card.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdGuarantee {
    pub rate: PromisedRate,
    pub target: f64,
    /// Calibration parts of the class the rate is about (good parts, or defective ones).
    pub n: usize,
    /// The rate's expectation: `(n + 1 - k) / (n + 1)` for the k-th order statistic.
    pub expected_rate: f64,
    /// The rate's 5th and 95th percentiles given this calibration set: it is Beta-distributed,
    /// Beta(n + 1 - k, k), for continuous scores.
    pub interval_90: [f64; 2],
}

/// Why no threshold with a guarantee can be had: `needed` is `usize::MAX` for a rate of 0, which
/// no number of calibration parts can promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFewForGuarantee {
    pub have: usize,
    pub needed: usize,
}

impl std::fmt::Display for TooFewForGuarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.needed == usize::MAX {
            write!(
                f,
                "a rate of 0 cannot be promised with any number of calibration parts"
            )
        } else {
            write!(
                f,
                "{} calibration parts cannot promise this rate: it takes at least {}",
                self.have, self.needed
            )
        }
    }
}

impl std::error::Error for TooFewForGuarantee {}

/// The threshold for a target false-reject rate `alpha` on good parts' scores, by split conformal
/// prediction: just above the k-th smallest of the `n` good scores, `k = ceil((n + 1)(1 - alpha))`,
/// so a new good part scores past it with probability at most `alpha` (exactly
/// `(n + 1 - k) / (n + 1)` for continuous scores). Needs `n >= ceil(1 / alpha) - 1`.
pub fn conformal_false_reject_threshold(
    good_scores: &[f32],
    alpha: f64,
) -> Result<(f32, ThresholdGuarantee), TooFewForGuarantee> {
    let n = good_scores.len();
    let alpha = alpha.clamp(0.0, 1.0);
    let k = ((n + 1) as f64 * (1.0 - alpha)).ceil().max(1.0) as usize;
    if k > n {
        return Err(TooFewForGuarantee {
            have: n,
            needed: needed_for(alpha),
        });
    }
    let mut sorted = good_scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let kth = sorted[k - 1];
    // A part fails at the threshold: the k-th score itself must pass.
    let threshold = kth + f32::EPSILON * kth.abs().max(1.0);
    Ok((
        threshold,
        guarantee(PromisedRate::FalseReject, alpha, n, n + 1 - k, k),
    ))
}

/// The threshold for a target escape rate `beta` on defective parts' scores (labels `true`), by
/// split conformal prediction: at most the j-th smallest defective score, `j = floor((n + 1)
/// beta)`, so a new defective part scores below it with probability at most `j / (n + 1) <=
/// beta`. It is placed halfway down to the best good score below that one, when there is one, so
/// good parts keep a margin too; a lower threshold only catches more, so the promise (its
/// expectation and interval) is an upper bound. Needs `n >= ceil(1 / beta) - 1` defective parts.
pub fn conformal_escape_threshold(
    scores: &[f32],
    labels: &[bool],
    beta: f64,
) -> Result<(f32, ThresholdGuarantee), TooFewForGuarantee> {
    let mut defective = pick(scores, labels, true);
    let n = defective.len();
    let beta = beta.clamp(0.0, 1.0);
    let j = ((n + 1) as f64 * beta).floor() as usize;
    if j == 0 || n == 0 {
        return Err(TooFewForGuarantee {
            have: n,
            needed: needed_for(beta),
        });
    }
    let j = j.min(n);
    defective.sort_by(f32::total_cmp);
    let lowest_caught = defective[j - 1];
    let best_good_below = pick(scores, labels, false)
        .into_iter()
        .filter(|s| *s < lowest_caught)
        .max_by(f32::total_cmp);
    // Halfway down to the good part below: the margin may catch some of the defective parts
    // under the j-th, which only lowers the escape rate.
    let threshold = match best_good_below {
        Some(good) => (good + lowest_caught) / 2.0,
        None => lowest_caught,
    };
    Ok((
        threshold,
        guarantee(PromisedRate::Escape, beta, n, j, n + 1 - j),
    ))
}

impl ThresholdGuarantee {
    /// The promise in words, for a card's threshold rule.
    pub fn describe(&self) -> String {
        format!(
            "split conformal on {} {} images: {} {:.4} on new parts in expectation (target {}), \
             90 % interval {:.4}–{:.4} for this calibration",
            self.n,
            match self.rate {
                PromisedRate::FalseReject => "good",
                PromisedRate::Escape => "defective",
            },
            match self.rate {
                PromisedRate::FalseReject => "false-reject rate",
                PromisedRate::Escape => "escape rate",
            },
            self.expected_rate,
            self.target,
            self.interval_90[0],
            self.interval_90[1],
        )
    }
}

/// The fewest calibration parts with which a rate of `target` can be promised.
fn needed_for(target: f64) -> usize {
    if target <= 0.0 {
        usize::MAX
    } else {
        ((1.0 / target).ceil() as usize).saturating_sub(1).max(1)
    }
}

/// The promise of an order statistic: the rate is Beta(a, b) with `a + b = n + 1`.
fn guarantee(rate: PromisedRate, target: f64, n: usize, a: usize, b: usize) -> ThresholdGuarantee {
    use statrs::distribution::{Beta, ContinuousCDF};
    let expected_rate = a as f64 / (n + 1) as f64;
    let interval_90 = match Beta::new(a as f64, b as f64) {
        Ok(beta) => [beta.inverse_cdf(0.05), beta.inverse_cdf(0.95)],
        // a, b >= 1 always; kept total.
        Err(_) => [expected_rate, expected_rate],
    };
    ThresholdGuarantee {
        rate,
        target,
        n,
        expected_rate,
        interval_90,
    }
}

/// Labels the 8-connected defect regions of a `w`×`h` mask: 0 for good pixels, `first`,
/// `first + 1`, … for each region. Returns the labels and the next unused label.
pub fn label_regions(mask: &[bool], w: usize, h: usize, first: u32) -> (Vec<u32>, u32) {
    let mut labels = vec![0u32; mask.len()];
    let mut next = first;
    let mut stack = Vec::new();
    if mask.len() != w * h {
        return (labels, next);
    }
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = next;
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    (labels, next)
}

/// The normalised area under the per-region-overlap curve (PRO, Bergmann et al., MVTec AD)
/// up to a false-positive rate of `max_fpr` (0.3 by convention): for each threshold, the mean
/// over defect regions of the share of the region flagged, against the share of good pixels
/// flagged. `regions[i]` is 0 for a good pixel, else the pixel's region (from
/// [`label_regions`], numbered across images). 1.0 is perfect; `None` without both good pixels
/// and regions.
pub fn pro_auc(scores: &[f32], regions: &[u32], max_fpr: f64) -> Option<f64> {
    let n_regions = regions.iter().copied().max().unwrap_or(0) as usize;
    let mut sizes = vec![0usize; n_regions + 1];
    for &r in regions {
        sizes[r as usize] += 1;
    }
    let n_good = sizes[0];
    let present = sizes[1..].iter().filter(|&&s| s > 0).count();
    if n_good == 0 || present == 0 || max_fpr <= 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len().min(regions.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut false_positives, mut overlap_sum) = (0usize, 0f64);
    let (mut last_fpr, mut last_pro, mut area) = (0f64, 0f64, 0f64);
    let mut i = 0;
    while i < order.len() {
        // Pixels with equal scores are flagged together.
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]].total_cmp(&score).is_eq() {
            match regions[order[i]] as usize {
                0 => false_positives += 1,
                r => overlap_sum += 1.0 / sizes[r] as f64,
            }
            i += 1;
        }
        let fpr = false_positives as f64 / n_good as f64;
        let pro = overlap_sum / present as f64;
        if fpr >= max_fpr {
            let t = (max_fpr - last_fpr) / (fpr - last_fpr);
            let pro_at_max = last_pro + t * (pro - last_pro);
            area += (max_fpr - last_fpr) * (last_pro + pro_at_max) / 2.0;
            return Some(area / max_fpr);
        }
        area += (fpr - last_fpr) * (last_pro + pro) / 2.0;
        (last_fpr, last_pro) = (fpr, pro);
    }
    Some(area / max_fpr)
}

/// Side of the grid pixel metrics are computed on.
const PIXEL_GRID: usize = 64;

/// Pixel-level scores and truth gathered over images, each on a `PIXEL_GRID`² grid.
#[derive(Debug, Default)]
pub struct PixelTruth {
    scores: Vec<f32>,
    labels: Vec<bool>,
    /// 0 for good pixels, else the defect region (numbered across images).
    regions: Vec<u32>,
    regions_used: u32,
}

impl PixelTruth {
    /// Adds one image: its heat map and its mask (non-zero = defect; any size).
    pub fn add(&mut self, heat_map: &HeatMap, mask: &GrayImage) {
        self.scores.extend(upsample_heat_map(heat_map, PIXEL_GRID));
        let labels: Vec<bool> = resize_bilinear(mask, PIXEL_GRID, PIXEL_GRID)
            .iter()
            .map(|&v| v >= 128.0)
            .collect();
        let (regions, next) = label_regions(&labels, PIXEL_GRID, PIXEL_GRID, self.regions_used + 1);
        self.regions_used = next - 1;
        self.regions.extend(regions);
        self.labels.extend(labels);
    }

    pub fn auroc(&self) -> Option<f64> {
        auroc(&self.scores, &self.labels)
    }

    /// PRO up to a 30 % false-positive rate, the MVTec AD convention.
    pub fn pro(&self) -> Option<f64> {
        pro_auc(&self.scores, &self.regions, 0.3)
    }
}

/// The area two boxes `[x_min, y_min, x_max, y_max]` (maxima exclusive) share.
pub fn box_intersection(a: &[u32; 4], b: &[u32; 4]) -> f64 {
    let [ax0, ay0, ax1, ay1] = a.map(f64::from);
    let [bx0, by0, bx1, by1] = b.map(f64::from);
    let w = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    let h = (ay1.min(by1) - ay0.max(by0)).max(0.0);
    w * h
}

/// The area of a box `[x_min, y_min, x_max, y_max]`, maxima exclusive.
pub fn box_area(b: &[u32; 4]) -> f64 {
    let [x0, y0, x1, y1] = b.map(f64::from);
    (x1 - x0).max(0.0) * (y1 - y0).max(0.0)
}

/// Intersection over union of two boxes `[x_min, y_min, x_max, y_max]`, maxima exclusive.
pub fn box_iou(a: &[u32; 4], b: &[u32; 4]) -> f64 {
    let inter = box_intersection(a, b);
    let union = box_area(a) + box_area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The overlap a predicted box needs with a true one to count (more than this): 0.5, PASCAL
/// VOC's rule.
pub const BOX_IOU: f64 = 0.5;

/// The looser overlap DeepPCB's authors match at (IoU > 0.33), for comparison with their figure.
pub const BOX_IOU_DEEPPCB: f64 = 0.33;

/// Box detection at one overlap rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxAtIou {
    pub iou: f64,
    /// PASCAL VOC's all-point average precision over the predicted boxes, ranked by score.
    pub average_precision: f64,
    /// Of all predicted boxes, the share that found a true box.
    pub precision: f64,
    /// Of all true boxes, the share found.
    pub recall: f64,
}

/// How well the model's boxes find the labelled ones: `at_iou` whatever the defect types (a
/// box counts when it overlaps a true box of any type: class-agnostic average precision), and,
/// where every true box names its type, each type's own figures and their mean (a box counts
/// only for a true box of the type it names: PASCAL VOC's mean average precision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxMetrics {
    pub n_images: usize,
    pub n_true_boxes: usize,
    pub n_predicted_boxes: usize,
    /// At [`BOX_IOU`], then at [`BOX_IOU_DEEPPCB`].
    pub at_iou: Vec<BoxAtIou>,
    /// Each defect type's figures, by name, where every true box names its type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassBoxMetrics>,
    /// The mean over [`Self::per_class`] of their average precision, at [`BOX_IOU`], then at
    /// [`BOX_IOU_DEEPPCB`]; empty where the types are not told.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean_average_precision: Vec<MeanAveragePrecision>,
}

/// Box detection of one defect type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassBoxMetrics {
    pub class: String,
    pub n_true_boxes: usize,
    /// Predicted boxes naming this type.
    pub n_predicted_boxes: usize,
    /// At [`BOX_IOU`], then at [`BOX_IOU_DEEPPCB`].
    pub at_iou: Vec<BoxAtIou>,
}

/// The mean of the defect types' average precision at one overlap rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanAveragePrecision {
    pub iou: f64,
    pub value: f64,
}

/// A box `[x_min, y_min, x_max, y_max]` a model predicted, with its score.
pub type ScoredBox = ([u32; 4], f32);

/// One image's boxes for [`BoxTruth`]: predicted (with score and the type each names, if any)
/// and true (with its type, if told). Maxima exclusive.
#[derive(Debug, Default)]
struct ImageBoxes {
    predicted: Vec<(ScoredBox, Option<String>)>,
    truth: Vec<([u32; 4], Option<String>)>,
}

/// Predicted and true boxes gathered over images, for [`BoxMetrics`].
#[derive(Debug, Default)]
pub struct BoxTruth {
    images: Vec<ImageBoxes>,
}

impl BoxTruth {
    /// Adds one image: the boxes predicted on it (with scores) and its true boxes (none for a
    /// good image, whose every predicted box is a false one), types not told. Maxima exclusive.
    pub fn add(&mut self, predicted: Vec<ScoredBox>, truth: Vec<[u32; 4]>) {
        self.images.push(ImageBoxes {
            predicted: predicted.into_iter().map(|b| (b, None)).collect(),
            truth: truth.into_iter().map(|b| (b, None)).collect(),
        });
    }

    /// [`Self::add`] with defect types: each predicted box's (`None`: it names none, and counts
    /// for no type) and each true box's.
    pub fn add_classed(
        &mut self,
        predicted: Vec<(ScoredBox, Option<String>)>,
        truth: Vec<([u32; 4], String)>,
    ) {
        self.images.push(ImageBoxes {
            predicted,
            truth: truth.into_iter().map(|(b, c)| (b, Some(c))).collect(),
        });
    }

    /// The figures at [`BOX_IOU`] and [`BOX_IOU_DEEPPCB`], class-agnostic and, where every
    /// true box names its type, per type; `None` without a true box.
    pub fn metrics(&self) -> Option<BoxMetrics> {
        let n_true = self.n_true();
        if n_true == 0 {
            return None;
        }
        let rules = [BOX_IOU, BOX_IOU_DEEPPCB];
        let per_class: Vec<ClassBoxMetrics> = (self.truth_types().unwrap_or_default())
            .into_iter()
            .map(|class| ClassBoxMetrics {
                class: class.to_owned(),
                n_true_boxes: self.count(|i| &i.truth, class),
                n_predicted_boxes: self.count(|i| &i.predicted, class),
                at_iou: rules.map(|iou| self.at(iou, Some(class))).to_vec(),
            })
            .collect();
        let mean_average_precision = if per_class.is_empty() {
            Vec::new()
        } else {
            (0..rules.len())
                .map(|r| MeanAveragePrecision {
                    iou: rules[r],
                    value: (per_class.iter())
                        .map(|c| c.at_iou[r].average_precision)
                        .sum::<f64>()
                        / per_class.len() as f64,
                })
                .collect()
        };
        Some(BoxMetrics {
            n_images: self.images.len(),
            n_true_boxes: n_true,
            n_predicted_boxes: self.images.iter().map(|i| i.predicted.len()).sum(),
            at_iou: rules.map(|iou| self.at(iou, None)).to_vec(),
            per_class,
            mean_average_precision,
        })
    }

    /// How many boxes of `class` the list `boxes` picks holds over all images.
    fn count<B>(
        &self,
        boxes: impl Fn(&ImageBoxes) -> &Vec<(B, Option<String>)>,
        class: &str,
    ) -> usize {
        (self.images.iter())
            .map(|i| {
                boxes(i)
                    .iter()
                    .filter(|(_, c)| c.as_deref() == Some(class))
                    .count()
            })
            .sum()
    }

    /// Class-agnostic average precision at the overlap rule `iou` alone; `None` without a true
    /// box.
    pub fn average_precision_at(&self, iou: f64) -> Option<f64> {
        let n_true = self.n_true();
        (n_true > 0).then(|| self.at(iou, None).average_precision)
    }

    /// The mean over defect types of their average precision at the overlap rule `iou`
    /// alone; `None` unless every true box names its type (and there is one).
    pub fn mean_average_precision_at(&self, iou: f64) -> Option<f64> {
        let classes = self.truth_types()?;
        let n = classes.len();
        (n > 0).then(|| {
            (classes.into_iter())
                .map(|class| self.at(iou, Some(class)).average_precision)
                .sum::<f64>()
                / n as f64
        })
    }

    /// The true boxes over all images.
    fn n_true(&self) -> usize {
        self.images.iter().map(|i| i.truth.len()).sum()
    }

    /// The defect types the true boxes name, in order; `None` unless every true box names
    /// one (a mean over types would leave the untyped boxes out).
    fn truth_types(&self) -> Option<std::collections::BTreeSet<&str>> {
        let mut classes = std::collections::BTreeSet::new();
        for image in &self.images {
            for (_, class) in &image.truth {
                classes.insert(class.as_deref()?);
            }
        }
        Some(classes)
    }

    /// PASCAL VOC's matching, of the boxes of `class` (every box where `None`): over all
    /// images, predicted boxes in falling score order each take the true box of their image
    /// they overlap most, when that overlap is more than `iou`; a box whose best true box is
    /// already taken is a duplicate, and false, as is one that overlaps no true box enough.
    /// Average precision is the area under the precision–recall curve with precision made
    /// monotone (the all-point rule of VOC 2010 on).
    fn at(&self, iou: f64, class: Option<&str>) -> BoxAtIou {
        let of_class = |c: &Option<String>| class.is_none() || c.as_deref() == class;
        // Per image, its true boxes of the class.
        let truths: Vec<Vec<[u32; 4]>> = (self.images.iter())
            .map(|i| {
                (i.truth.iter())
                    .filter(|(_, c)| of_class(c))
                    .map(|(b, _)| *b)
                    .collect()
            })
            .collect();
        let n_true: usize = truths.iter().map(Vec::len).sum();
        let mut ranked: Vec<(f32, usize, [u32; 4])> = self
            .images
            .iter()
            .enumerate()
            .flat_map(|(i, image)| {
                (image.predicted.iter())
                    .filter(|(_, c)| of_class(c))
                    .map(move |((b, s), _)| (*s, i, *b))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut taken: Vec<Vec<bool>> = truths.iter().map(|t| vec![false; t.len()]).collect();
        let mut hits = Vec::with_capacity(ranked.len());
        for (_, image, bbox) in &ranked {
            let truth = &truths[*image];
            let best = (0..truth.len())
                .map(|t| (t, box_iou(bbox, &truth[t])))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let hit = match best {
                Some((t, overlap)) if overlap > iou && !taken[*image][t] => {
                    taken[*image][t] = true;
                    true
                }
                _ => false,
            };
            hits.push(hit);
        }
        // Precision and recall after each ranked box.
        let mut curve = Vec::with_capacity(hits.len());
        let mut tp = 0usize;
        let recall_of = |tp: usize| {
            if n_true > 0 {
                tp as f64 / n_true as f64
            } else {
                0.0
            }
        };
        for (k, hit) in hits.iter().enumerate() {
            tp += usize::from(*hit);
            curve.push((recall_of(tp), tp as f64 / (k + 1) as f64));
        }
        // Monotone precision from the right, then the area over each step in recall.
        for k in (0..curve.len().saturating_sub(1)).rev() {
            curve[k].1 = curve[k].1.max(curve[k + 1].1);
        }
        let mut average_precision = 0.0;
        let mut last_recall = 0.0;
        for (recall, precision) in &curve {
            average_precision += (recall - last_recall) * precision;
            last_recall = *recall;
        }
        BoxAtIou {
            iou,
            average_precision,
            precision: if hits.is_empty() {
                0.0
            } else {
                tp as f64 / hits.len() as f64
            },
            recall: recall_of(tp),
        }
    }
}

/// How far (in pixels, Euclidean) a predicted pixel of a thin defect may lie from a true one and
/// still count, and the other way round: a crack's outline is uncertain by a pixel or two, and
/// crack benchmarks score with such a margin.
pub const THIN_DEFECT_TOLERANCE_PX: usize = 2;

/// Heat-map values a thin defect's pixels are counted at: 0.05, 0.10, …, 0.95.
const THIN_DEFECT_THRESHOLDS: usize = 19;

fn thin_defect_threshold(k: usize) -> f32 {
    (k + 1) as f32 / (THIN_DEFECT_THRESHOLDS + 1) as f32
}

/// Precision, recall and F1 of a thin defect's pixels at one heat-map threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelF1 {
    pub threshold: f32,
    /// Predicted pixels within the tolerance of a true one, over all predicted pixels.
    pub precision: f64,
    /// True pixels within the tolerance of a predicted one, over all true pixels.
    pub recall: f64,
    pub f1: f64,
}

/// How well a model outlines thin defects (cracks), at the images' own resolution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThinDefectMetrics {
    /// [`THIN_DEFECT_TOLERANCE_PX`].
    pub tolerance_px: usize,
    /// Where the heat map reaches the model's threshold: the regions a station draws.
    pub at_model_threshold: PixelF1,
    /// At the one threshold best over these images (the crack literature's "ODS"): a ceiling
    /// chosen on the very images it reports, not a held-out figure.
    pub best_over_images: PixelF1,
}

/// Pixel counts of thin defects over images, at each of [`THIN_DEFECT_THRESHOLDS`] and at the
/// model's own threshold.
#[derive(Debug)]
pub struct ThinDefectTruth {
    /// The heat-map values counted at: the grid, then the model's threshold.
    thresholds: Vec<f32>,
    /// Per threshold: predicted pixels, those near a true one, true pixels, those near a
    /// predicted one.
    counts: Vec<[u64; 4]>,
}

impl ThinDefectTruth {
    /// Counts for a model whose heat map rejects at `model_threshold`.
    pub fn new(model_threshold: f32) -> ThinDefectTruth {
        let mut thresholds: Vec<f32> = (0..THIN_DEFECT_THRESHOLDS)
            .map(thin_defect_threshold)
            .collect();
        thresholds.push(model_threshold);
        ThinDefectTruth {
            counts: vec![[0; 4]; thresholds.len()],
            thresholds,
        }
    }

    /// Adds one image: its heat map (upsampled to the mask's size) and its mask
    /// (non-zero = defect).
    pub fn add(&mut self, heat_map: &HeatMap, mask: &GrayImage) {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let hw = heat_map.width as usize;
        if w == 0 || h == 0 || hw == 0 || heat_map.height == 0 {
            return;
        }
        let values = bilinear(
            |x, y| heat_map.values[y * hw + x],
            hw,
            heat_map.height as usize,
            w,
            h,
        );
        let truth: Vec<bool> = mask.pixels.iter().map(|&p| p >= 128).collect();
        let near_truth = dilate(&truth, w, h, THIN_DEFECT_TOLERANCE_PX);
        let n_truth = truth.iter().filter(|&&t| t).count() as u64;
        for (&threshold, counts) in self.thresholds.iter().zip(&mut self.counts) {
            let predicted: Vec<bool> = values.iter().map(|&v| v >= threshold).collect();
            let near_predicted = dilate(&predicted, w, h, THIN_DEFECT_TOLERANCE_PX);
            let both =
                |a: &[bool], b: &[bool]| a.iter().zip(b).filter(|&(&a, &b)| a && b).count() as u64;
            counts[0] += predicted.iter().filter(|&&p| p).count() as u64;
            counts[1] += both(&predicted, &near_truth);
            counts[2] += n_truth;
            counts[3] += both(&truth, &near_predicted);
        }
    }

    /// The figures at the model's threshold and at the best one (of the grid and the model's);
    /// `None` before any image with a defect pixel.
    pub fn metrics(&self) -> Option<ThinDefectMetrics> {
        let at = |k: usize| {
            let [predicted, precise, truth, recalled] = self.counts[k];
            let precision = if predicted > 0 {
                precise as f64 / predicted as f64
            } else {
                0.0
            };
            let recall = recalled as f64 / truth as f64;
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            PixelF1 {
                threshold: self.thresholds[k],
                precision,
                recall,
                f1,
            }
        };
        if self.counts.first().is_none_or(|c| c[2] == 0) {
            return None;
        }
        let all: Vec<PixelF1> = (0..self.counts.len()).map(at).collect();
        let best = all.iter().copied().max_by(|a, b| a.f1.total_cmp(&b.f1))?;
        Some(ThinDefectMetrics {
            tolerance_px: THIN_DEFECT_TOLERANCE_PX,
            at_model_threshold: *all.last()?,
            best_over_images: best,
        })
    }
}

/// The pixels within `radius` (Euclidean) of a set pixel of the `w`×`h` `mask`.
fn dilate(mask: &[bool], w: usize, h: usize, radius: usize) -> Vec<bool> {
    let r = radius as isize;
    let offsets: Vec<(isize, isize)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
        .filter(|(dx, dy)| dx * dx + dy * dy <= r * r)
        .collect();
    let mut out = vec![false; mask.len()];
    for (i, _) in mask.iter().enumerate().filter(|(_, set)| **set) {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for &(dx, dy) in &offsets {
            let (nx, ny) = (x + dx, y + dy);
            if (0..w as isize).contains(&nx) && (0..h as isize).contains(&ny) {
                out[ny as usize * w + nx as usize] = true;
            }
        }
    }
    out
}

/// Bilinear upsampling of a heat map to `side`×`side`.
fn upsample_heat_map(heat_map: &HeatMap, side: usize) -> Vec<f32> {
    let w = heat_map.width as usize;
    bilinear(
        |x, y| heat_map.values[y * w + x],
        w,
        heat_map.height as usize,
        side,
        side,
    )
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

    /// The share of new parts from [`draws`] that score at or past `t`: exactly
    /// `P((-ln U)^1.5 >= t) = exp(-t^(2/3))`, so no sampling noise blurs the rate.
    fn share_at_or_past(t: f32) -> f64 {
        (-f64::from(t).max(0.0).powf(2.0 / 3.0)).exp()
    }

    /// Draws from one continuous distribution (a skewed one, as anomaly scores are).
    fn draws(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        use rand::Rng;
        (0..n)
            .map(|_| {
                let u: f64 = rng.gen_range(1e-9..1.0);
                (-u.ln()).powf(1.5) as f32
            })
            .collect()
    }

    #[test]
    fn thin_defect_pixels_count_within_the_tolerance() {
        // A one-pixel crack along row 10 of a 32×32 image.
        let mut mask = GrayImage::new(32, 32, vec![0; 32 * 32]).expect("size");
        mask.pixels[10 * 32..11 * 32].fill(255);
        let map = |values: Vec<f32>| HeatMap {
            width: 32,
            height: 32,
            values,
        };
        let row = |y: usize| -> Vec<f32> {
            (0..32 * 32)
                .map(|i| if i / 32 == y { 0.9 } else { 0.0 })
                .collect()
        };
        // Two rows off: inside the tolerance, so perfect.
        let mut near = ThinDefectTruth::new(0.5);
        near.add(&map(row(12)), &mask);
        let near = near.metrics().expect("defect pixels");
        assert_eq!(near.tolerance_px, THIN_DEFECT_TOLERANCE_PX);
        assert!((near.at_model_threshold.f1 - 1.0).abs() < 1e-12, "{near:?}");
        // Three rows off: nothing counts.
        let mut far = ThinDefectTruth::new(0.5);
        far.add(&map(row(13)), &mask);
        let far = far.metrics().expect("defect pixels");
        assert_eq!(far.at_model_threshold.f1, 0.0, "{far:?}");
        // A band six rows wide (9–14) over the crack: all of the crack recalled.
        let band: Vec<f32> = (0..32 * 32)
            .map(|i| {
                if (9..=14).contains(&(i / 32)) {
                    0.9
                } else {
                    0.0
                }
            })
            .collect();
        let mut wide = ThinDefectTruth::new(0.5);
        wide.add(&map(band), &mask);
        let wide = wide.metrics().expect("defect pixels").at_model_threshold;
        assert_eq!(wide.recall, 1.0);
        // Rows 9–12 lie within 2 of row 10; rows 13 and 14 do not.
        assert!((wide.precision - 4.0 / 6.0).abs() < 1e-12, "{wide:?}");
        // A model whose threshold is above the map's values draws nothing there; the best of
        // the grid still finds the crack.
        let mut strict = ThinDefectTruth::new(0.95);
        strict.add(&map(row(12)), &mask);
        let strict = strict.metrics().expect("defect pixels");
        assert_eq!(strict.at_model_threshold.threshold, 0.95);
        assert_eq!(strict.at_model_threshold.recall, 0.0);
        assert!((strict.best_over_images.f1 - 1.0).abs() < 1e-12);
        // A calm map finds nothing; no image with a defect pixel gives no figure.
        let mut calm = ThinDefectTruth::new(0.5);
        calm.add(&map(vec![0.0; 32 * 32]), &mask);
        assert_eq!(calm.metrics().expect("pixels").best_over_images.recall, 0.0);
        let mut none = ThinDefectTruth::new(0.5);
        none.add(
            &map(row(3)),
            &GrayImage::new(32, 32, vec![0; 32 * 32]).expect("size"),
        );
        assert!(none.metrics().is_none());
    }

    #[test]
    fn a_conformal_false_reject_threshold_keeps_its_promise_on_new_parts() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (alpha, n, trials) = (0.05, 150, 400);
        let (mut mean_rate, mut inside) = (0.0, 0);
        let mut promised = None;
        for _ in 0..trials {
            let calibration = draws(&mut rng, n);
            let (threshold, guarantee) =
                conformal_false_reject_threshold(&calibration, alpha).expect("enough parts");
            let rate = share_at_or_past(threshold);
            mean_rate += rate / trials as f64;
            inside +=
                usize::from((guarantee.interval_90[0]..=guarantee.interval_90[1]).contains(&rate));
            promised = Some(guarantee);
        }
        let promised = promised.expect("trials ran");
        // k = ceil(151 × 0.95) = 144: 7 of 151 above.
        assert!((promised.expected_rate - 7.0 / 151.0).abs() < 1e-12);
        assert!(promised.expected_rate <= alpha);
        assert!(
            (mean_rate - promised.expected_rate).abs() < 0.003,
            "new parts' false-reject rate {mean_rate:.4}, promised {:.4}",
            promised.expected_rate
        );
        // The interval holds the rate in 90 % of calibration sets.
        let share = inside as f64 / trials as f64;
        assert!(
            (0.86..=0.94).contains(&share),
            "inside the interval {share}"
        );
        assert!(promised.interval_90[0] < promised.expected_rate);
        assert!(promised.interval_90[1] > promised.expected_rate);
    }

    #[test]
    fn a_conformal_escape_threshold_keeps_its_promise_and_too_few_parts_are_said() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (beta, n, trials) = (0.1, 60, 400);
        let mut mean_rate = 0.0;
        let mut promised = None;
        for _ in 0..trials {
            let defective = draws(&mut rng, n);
            let labels = vec![true; n];
            let (threshold, guarantee) =
                conformal_escape_threshold(&defective, &labels, beta).expect("enough parts");
            mean_rate += (1.0 - share_at_or_past(threshold)) / trials as f64;
            promised = Some(guarantee);
        }
        let promised = promised.expect("trials ran");
        // j = floor(61 × 0.1) = 6: 6 of 61 below.
        assert!((promised.expected_rate - 6.0 / 61.0).abs() < 1e-12);
        assert!(
            (mean_rate - promised.expected_rate).abs() < 0.004,
            "escape rate {mean_rate:.4}, promised {:.4}",
            promised.expected_rate
        );
        // 2 % needs 49 defective parts; 5 % false rejects 19 good ones.
        let few = conformal_escape_threshold(&[1.0; 30], &[true; 30], 0.02).unwrap_err();
        assert_eq!(
            few,
            TooFewForGuarantee {
                have: 30,
                needed: 49
            }
        );
        let few = conformal_false_reject_threshold(&[1.0; 18], 0.05).unwrap_err();
        assert_eq!(few.needed, 19);
        assert!(conformal_false_reject_threshold(&[1.0; 19], 0.05).is_ok());
    }

    #[test]
    fn box_iou_by_hand() {
        assert!((box_iou(&[0, 0, 10, 10], &[0, 0, 10, 10]) - 1.0).abs() < 1e-12);
        assert!((box_iou(&[0, 0, 10, 10], &[5, 0, 15, 10]) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(box_iou(&[0, 0, 10, 10], &[10, 10, 20, 20]), 0.0);
        assert_eq!(box_iou(&[3, 3, 3, 3], &[3, 3, 3, 3]), 0.0);
    }

    #[test]
    fn box_average_precision_by_hand() {
        let mut truth = BoxTruth::default();
        assert!(truth.metrics().is_none(), "no true box, no figure");
        // Image 0: two true boxes, found by the best box (0.9) and a weak one (0.3); a second
        // box on the first defect (0.8) is a duplicate, so false. Image 1 is good: its box
        // (0.6) is false.
        truth.add(
            vec![
                ([0, 0, 10, 10], 0.9),
                ([1, 0, 11, 10], 0.8),
                ([50, 50, 60, 60], 0.3),
            ],
            vec![[0, 0, 10, 10], [50, 50, 60, 60]],
        );
        truth.add(vec![([20, 20, 30, 30], 0.6)], vec![]);
        let metrics = truth.metrics().expect("true boxes");
        assert_eq!(
            (
                metrics.n_images,
                metrics.n_true_boxes,
                metrics.n_predicted_boxes
            ),
            (2, 2, 4)
        );
        // Ranked 0.9 hit, 0.8 dup, 0.6 false, 0.3 hit: recall 0.5 at precision 1, recall 1 at
        // precision 2/4. AP = 0.5·1 + 0.5·0.5.
        let at_50 = metrics.at_iou[0];
        assert_eq!(at_50.iou, BOX_IOU);
        assert!((at_50.average_precision - 0.75).abs() < 1e-12, "{at_50:?}");
        assert!((at_50.precision - 0.5).abs() < 1e-12);
        assert!((at_50.recall - 1.0).abs() < 1e-12);
        // A box shifted by half its width overlaps 1/3: found at DeepPCB's > 0.33, not at 0.5.
        let mut shifted = BoxTruth::default();
        shifted.add(vec![([5, 0, 15, 10], 0.9)], vec![[0, 0, 10, 10]]);
        let metrics = shifted.metrics().expect("true boxes");
        assert_eq!(metrics.at_iou[0].average_precision, 0.0);
        assert!((metrics.at_iou[1].average_precision - 1.0).abs() < 1e-12);
        // Exactly 0.5 is not more than 0.5.
        let mut half = BoxTruth::default();
        half.add(vec![([0, 0, 10, 10], 0.9)], vec![[0, 0, 20, 10]]);
        assert_eq!(
            half.metrics().expect("a true box").at_iou[0].average_precision,
            0.0
        );
        // Two defects side by side: a box that overlaps a taken true box most is a duplicate,
        // even where it overlaps the other true box enough (VOC's rule).
        let mut pair = BoxTruth::default();
        pair.add(
            vec![([0, 0, 10, 10], 0.9), ([2, 0, 12, 10], 0.8)],
            vec![[0, 0, 10, 10], [5, 0, 15, 10]],
        );
        let at_50 = pair.metrics().expect("true boxes").at_iou[0];
        assert!((at_50.recall - 0.5).abs() < 1e-12, "{at_50:?}");
        assert!((at_50.precision - 0.5).abs() < 1e-12, "{at_50:?}");
    }

    #[test]
    fn box_mean_average_precision_tells_defect_types_apart() {
        let mut truth = BoxTruth::default();
        // An open found and named open; a short found but named spur, which counts for neither
        // type; a spur box (0.2) where no spur is, false for spur.
        truth.add_classed(
            vec![
                (([0, 0, 10, 10], 0.9), Some("open".into())),
                (([50, 50, 60, 60], 0.8), Some("spur".into())),
                (([80, 80, 90, 90], 0.2), Some("spur".into())),
                (([20, 20, 30, 30], 0.5), None),
            ],
            vec![
                ([0, 0, 10, 10], "open".into()),
                ([50, 50, 60, 60], "short".into()),
            ],
        );
        let metrics = truth.metrics().expect("true boxes");
        // Whatever the types: 0.9 hit, 0.8 hit, 0.5 false, 0.2 false: AP 1.
        assert!((metrics.at_iou[0].average_precision - 1.0).abs() < 1e-12);
        let per_class: Vec<(&str, usize, usize, f64)> = (metrics.per_class.iter())
            .map(|c| {
                (
                    c.class.as_str(),
                    c.n_true_boxes,
                    c.n_predicted_boxes,
                    c.at_iou[0].average_precision,
                )
            })
            .collect();
        // Types with a true box only: spur has none, so it is not averaged.
        assert_eq!(per_class, [("open", 1, 1, 1.0), ("short", 1, 0, 0.0)]);
        assert_eq!(metrics.mean_average_precision[0].iou, BOX_IOU);
        assert!((metrics.mean_average_precision[0].value - 0.5).abs() < 1e-12);
        // Untyped truth gives no per-type figures.
        let mut untyped = BoxTruth::default();
        untyped.add(vec![([0, 0, 10, 10], 0.9)], vec![[0, 0, 10, 10]]);
        let metrics = untyped.metrics().expect("a true box");
        assert!(metrics.per_class.is_empty() && metrics.mean_average_precision.is_empty());
    }

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
    fn accuracy_threshold_by_hand() {
        // Sorted: 0.1 g, 0.3 g, 0.4 d, 0.6 g, 0.8 d, 0.9 d. Cuts at 0.35 and at 0.7 both get
        // 5/6 right; 0.5 gets 4/6.
        let scores = [0.9, 0.4, 0.1, 0.6, 0.3, 0.8];
        let labels = [true, true, false, false, false, true];
        let near = |got: Option<f32>, want: f32| got.is_some_and(|t| (t - want).abs() < 1e-6);
        // No slack: the best cut nearest the prior.
        assert!(near(
            threshold_for_accuracy_near(&scores, &labels, 0.3, 0),
            0.35
        ));
        assert!(near(
            threshold_for_accuracy_near(&scores, &labels, 0.85, 0),
            0.7
        ));
        // One part of slack lets the prior itself stand.
        assert!(near(
            threshold_for_accuracy_near(&scores, &labels, 0.5, 1),
            0.5
        ));
        // Perfectly separated: halfway across the gap, whatever the prior.
        assert!(near(
            threshold_for_accuracy_near(&[0.2, 0.6], &[false, true], 0.9, 0),
            0.4
        ));
        assert_eq!(
            threshold_for_accuracy_near(&[0.2, 0.6], &[true, true], 0.5, 0),
            None
        );
    }

    #[test]
    fn regions_are_eight_connected() {
        // Two regions: a diagonal pair (connected) and a lone pixel.
        let mask = [
            true, false, false, false, //
            false, true, false, true, //
        ];
        let (labels, next) = label_regions(&mask, 4, 2, 1);
        assert_eq!(labels, [1, 0, 0, 0, 0, 1, 0, 2]);
        assert_eq!(next, 3);
    }

    #[test]
    fn pro_by_hand() {
        // Region 1 (2 pixels), region 2 (1 pixel), 4 good pixels.
        let regions = [1, 1, 2, 0, 0, 0, 0];
        // Perfect: every region pixel above every good pixel.
        let perfect = [0.9, 0.8, 0.7, 0.1, 0.1, 0.1, 0.1];
        assert!((pro_auc(&perfect, &regions, 0.3).expect("pro") - 1.0).abs() < 1e-12);
        // Inverted: no region pixel flagged until every good pixel is.
        let inverted = [0.1, 0.1, 0.1, 0.9, 0.8, 0.7, 0.6];
        assert_eq!(pro_auc(&inverted, &regions, 0.3), Some(0.0));
        // Region 2 first, then one good pixel (FPR 0.25), then region 1, then the rest:
        // PRO 0.5 on [0, 0.25] and 1.0 from 0.25 → area (0.25·0.5 + 0.05·1.0) / 0.3.
        let mixed = [0.5, 0.5, 0.9, 0.6, 0.1, 0.1, 0.1];
        let want = (0.25 * 0.5 + 0.05 * 1.0) / 0.3;
        assert!((pro_auc(&mixed, &regions, 0.3).expect("pro") - want).abs() < 1e-9);
        assert_eq!(pro_auc(&[0.5], &[0], 0.3), None);
    }

    #[test]
    fn false_reject_threshold_passes_all_but_the_allowed_good_parts() {
        // Ten good parts scored 1..=10 and a defective one.
        let mut scores: Vec<f32> = (1..=10).map(|s| s as f32).collect();
        let mut labels = vec![false; 10];
        scores.push(0.5);
        labels.push(true);
        let rejected = |t: f32| (1..=10).filter(|&s| s as f32 >= t).count();
        // 0 % may be rejected: just above the highest good score.
        let t = threshold_for_false_reject_rate(&scores, &labels, 0.0);
        assert!(t > 10.0 && t < 10.001, "{t}");
        assert_eq!(rejected(t), 0);
        // 20 % of ten: the two highest fail, the third passes.
        let t = threshold_for_false_reject_rate(&scores, &labels, 0.2);
        assert!(t > 8.0 && t < 8.001, "{t}");
        assert_eq!(rejected(t), 2);
        // 25 % rounds down to two as well; 100 % still lets the lowest good part through.
        assert_eq!(threshold_for_false_reject_rate(&scores, &labels, 0.25), t);
        let t = threshold_for_false_reject_rate(&scores, &labels, 1.0);
        assert_eq!(rejected(t), 9);
        // The defective part's score plays no part; no good part means no threshold.
        assert_eq!(
            threshold_for_false_reject_rate(&[3.0], &[true], 0.05),
            f32::INFINITY
        );
    }

    #[test]
    fn threshold_catches_all_defects_with_margin() {
        let scores = [0.9, 0.7, 0.2, 0.3, 0.8];
        let labels = [true, true, false, false, false];
        // Lowest defect 0.7; best good below it 0.3 → 0.5. The good part at 0.8 is a false
        // reject.
        assert_eq!(threshold_for_escape_rate(&scores, &labels, 0.0), Some(0.5));
        // Allowing one miss of two: lowest caught is 0.9; best good below is 0.8.
        assert_eq!(threshold_for_escape_rate(&scores, &labels, 0.5), Some(0.85));
    }
}
