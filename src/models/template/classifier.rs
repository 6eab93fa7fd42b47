//! Which candidates are defects, and of which type: multinomial logistic regression over a
//! candidate's measurements ([`super::compare::FEATURES`]), each standardised and squared.
//!
//! Class 0 is "no defect" (a scan's noise, a wandering edge); the others are the defect types
//! the labelled boxes name. A linear model on so few measurements learns from a hundred boards
//! in a second, has nothing to tune but its weight decay, and its weights fit in the card.

use serde::{Deserialize, Serialize};

use super::compare::N_FEATURES;

/// The class of a candidate that is no defect.
pub const NO_DEFECT: &str = "no defect";

/// Full-batch gradient steps of a fit: enough for the loss to settle on a few thousand
/// candidates, a second or two on one core.
const STEPS: usize = 2000;
const STEP_SIZE: f64 = 0.5;
const WEIGHT_DECAY: f64 = 1e-3;

/// A fitted classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    /// [`NO_DEFECT`] first, then the defect types.
    pub classes: Vec<String>,
    /// Each measurement's mean and spread over the candidates it was fitted on.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// One row per class: a weight per standardised measurement, one per its square, a bias.
    pub weights: Vec<Vec<f32>>,
}

/// Why a classifier could not be fitted or used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClassifierError {
    #[error("no candidate to learn from: the parts do not differ from their references")]
    NoCandidates,
    #[error("no candidate overlaps a labelled defect, so there is nothing to learn a defect from")]
    NoDefects,
    #[error("the classifier has {got} weights where it needs {want}")]
    Shape { got: usize, want: usize },
    #[error(
        "the classifier's classes must be {NO_DEFECT:?} and at least one defect type, not {0:?}"
    )]
    Classes(Vec<String>),
    #[error(
        "the classifier has a weight, mean or spread that is not a finite number (or a spread of 0)"
    )]
    NotFinite,
}

/// The inputs of the linear model: standardised measurements, their squares, 1.
fn expanded(features: &[f32; N_FEATURES], mean: &[f32], std: &[f32]) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * N_FEATURES + 1);
    let z: Vec<f64> = (0..N_FEATURES)
        .map(|i| f64::from((features[i] - mean[i]) / std[i]))
        .collect();
    out.extend(&z);
    out.extend(z.iter().map(|v| v * v));
    out.push(1.0);
    out
}

fn softmax(logits: &mut [f64]) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        sum += *l;
    }
    for l in logits.iter_mut() {
        *l /= sum;
    }
}

impl Classifier {
    /// Fits the classifier to candidates labelled by class index (0: no defect) into
    /// `classes` ([`NO_DEFECT`] first). Deterministic.
    pub fn fit(
        features: &[[f32; N_FEATURES]],
        labels: &[usize],
        classes: Vec<String>,
    ) -> Result<Classifier, ClassifierError> {
        if features.is_empty() {
            return Err(ClassifierError::NoCandidates);
        }
        if !labels.iter().any(|&l| l > 0) {
            return Err(ClassifierError::NoDefects);
        }
        let n = features.len() as f64;
        let mut mean = vec![0.0f32; N_FEATURES];
        let mut std = vec![0.0f32; N_FEATURES];
        for i in 0..N_FEATURES {
            let m = features.iter().map(|f| f64::from(f[i])).sum::<f64>() / n;
            let v = features
                .iter()
                .map(|f| (f64::from(f[i]) - m).powi(2))
                .sum::<f64>()
                / n;
            mean[i] = m as f32;
            // A measurement that never varies is centred to 0 and left there.
            std[i] = if v > 1e-12 { v.sqrt() as f32 } else { 1.0 };
        }
        let inputs: Vec<Vec<f64>> = features.iter().map(|f| expanded(f, &mean, &std)).collect();
        let (k, d) = (classes.len(), 2 * N_FEATURES + 1);
        let mut weights = vec![vec![0.0f64; d]; k];
        let mut gradient = vec![vec![0.0f64; d]; k];
        let mut p = vec![0.0f64; k];
        for _ in 0..STEPS {
            for row in gradient.iter_mut() {
                row.iter_mut().for_each(|g| *g = 0.0);
            }
            for (x, &label) in inputs.iter().zip(labels) {
                for (c, w) in weights.iter().enumerate() {
                    p[c] = w.iter().zip(x).map(|(w, x)| w * x).sum();
                }
                softmax(&mut p);
                for (c, g) in gradient.iter_mut().enumerate() {
                    let err = p[c] - f64::from(u8::from(c == label));
                    for (g, x) in g.iter_mut().zip(x) {
                        *g += err * x;
                    }
                }
            }
            for (w, g) in weights.iter_mut().zip(&gradient) {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= STEP_SIZE * (g / n + WEIGHT_DECAY * *w);
                }
            }
        }
        Ok(Classifier {
            classes,
            mean,
            std,
            weights: weights
                .into_iter()
                .map(|row| row.into_iter().map(|w| w as f32).collect())
                .collect(),
        })
    }

    /// Whether it is whole (a card edited by hand may not be): a row of weights per class,
    /// [`NO_DEFECT`] first and a defect type after it, every number finite, every spread
    /// positive.
    pub fn check(&self) -> Result<(), ClassifierError> {
        let want = 2 * N_FEATURES + 1;
        if self.classes.len() < 2 || self.classes[0] != NO_DEFECT {
            return Err(ClassifierError::Classes(self.classes.clone()));
        }
        if self.weights.len() != self.classes.len() {
            return Err(ClassifierError::Shape {
                got: self.weights.len(),
                want: self.classes.len(),
            });
        }
        for row in &self.weights {
            if row.len() != want {
                return Err(ClassifierError::Shape {
                    got: row.len(),
                    want,
                });
            }
        }
        if self.mean.len() != N_FEATURES || self.std.len() != N_FEATURES {
            return Err(ClassifierError::Shape {
                got: self.mean.len().min(self.std.len()),
                want: N_FEATURES,
            });
        }
        let finite = (self.weights.iter().flatten().chain(&self.mean)).all(|v| v.is_finite());
        if !finite || !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(ClassifierError::NotFinite);
        }
        Ok(())
    }

    /// Each class's probability for a candidate, in the order of [`Self::classes`].
    pub fn probabilities(&self, features: &[f32; N_FEATURES]) -> Vec<f64> {
        let x = expanded(features, &self.mean, &self.std);
        let mut p: Vec<f64> = (self.weights.iter())
            .map(|w| w.iter().zip(&x).map(|(w, x)| f64::from(*w) * x).sum())
            .collect();
        softmax(&mut p);
        p
    }

    /// The probability that a candidate is a defect, and its likeliest defect type (an index
    /// into [`Self::classes`], never 0). Of a classifier that passed [`Self::check`].
    pub fn judge(&self, features: &[f32; N_FEATURES]) -> (f32, usize) {
        let p = self.probabilities(features);
        let defect = 1.0 - p.first().copied().unwrap_or(1.0);
        let kind = (1..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(1);
        (defect as f32, kind)
    }

    /// The weights as floats, for the model's version hash.
    pub fn floats(&self) -> Vec<f32> {
        let mut all = self.mean.clone();
        all.extend(&self.std);
        for row in &self.weights {
            all.extend(row);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(depth: f32, extra: f32) -> [f32; N_FEATURES] {
        let mut f = [0.0; N_FEATURES];
        f[0] = depth;
        f[6] = extra;
        f
    }

    #[test]
    fn it_learns_which_candidates_are_defects_and_their_type() {
        // Shallow differences are noise; deep ones are "extra" or "missing" by their share.
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let jitter = (i % 7) as f32 * 0.05;
            features.push(candidate(0.5 + jitter, (i % 2) as f32));
            labels.push(0);
            features.push(candidate(2.0 + jitter, 1.0));
            labels.push(1);
            features.push(candidate(2.0 + jitter, 0.0));
            labels.push(2);
        }
        let classes = vec![NO_DEFECT.into(), "extra".into(), "missing".into()];
        let classifier = Classifier::fit(&features, &labels, classes).expect("fits");
        classifier.check().expect("consistent");
        let (noise, _) = classifier.judge(&candidate(0.6, 1.0));
        let (extra, extra_type) = classifier.judge(&candidate(2.1, 1.0));
        let (missing, missing_type) = classifier.judge(&candidate(2.1, 0.0));
        assert!(noise < 0.2, "{noise}");
        assert!(extra > 0.8 && missing > 0.8, "{extra} {missing}");
        assert_eq!((extra_type, missing_type), (1, 2));
    }

    #[test]
    fn a_classifier_edited_out_of_shape_is_refused() {
        let features = vec![candidate(0.5, 0.0), candidate(2.0, 1.0)];
        let classes = vec![NO_DEFECT.into(), "extra".into()];
        let good = Classifier::fit(&features, &[0, 1], classes).expect("fits");
        good.check().expect("whole");
        let mut extra_row = good.clone();
        extra_row.weights.push(extra_row.weights[1].clone());
        assert!(matches!(
            extra_row.check(),
            Err(ClassifierError::Shape { .. })
        ));
        let mut no_rows = good.clone();
        no_rows.weights.clear();
        assert!(no_rows.check().is_err());
        let mut renamed = good.clone();
        renamed.classes[0] = "good".into();
        assert!(matches!(renamed.check(), Err(ClassifierError::Classes(_))));
        let mut flat = good.clone();
        flat.std[3] = 0.0;
        assert_eq!(flat.check(), Err(ClassifierError::NotFinite));
        let mut nan = good;
        nan.weights[1][0] = f32::NAN;
        assert_eq!(nan.check(), Err(ClassifierError::NotFinite));
    }

    #[test]
    fn nothing_to_learn_from_is_an_error() {
        let classes = vec![NO_DEFECT.into(), "defect".into()];
        assert_eq!(
            Classifier::fit(&[], &[], classes.clone()),
            Err(ClassifierError::NoCandidates)
        );
        assert_eq!(
            Classifier::fit(&[candidate(1.0, 0.0)], &[0], classes),
            Err(ClassifierError::NoDefects)
        );
    }
}
