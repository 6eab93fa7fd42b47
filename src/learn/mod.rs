//! The tools every model family learns with: where training data comes from and how it is
//! changed, how a model is judged, and what a training run records.
//!
//! Nothing here knows a model family; the families in [`crate::models`] use these pieces.
//!
//! * [`dataset`]: the dataset layouts read in place (MVTec AD, magnetic-tile, NEU-DET,
//!   KolektorSDD, DeepPCB, CrackForest) and their deterministic splits.
//! * [`augment`]: flips, rotations, brightness/contrast and noise on an image and its mask.
//! * [`synthetic_defect`]: defects painted on good images, for heads that learn from them.
//! * [`drift`]: what a model's inputs and scores looked like in training, for drift watching.
//! * [`eval`]: ranking and threshold metrics, pixel metrics, and every threshold rule.
//! * [`normaliser`]: per-channel standardisation of backbone features.
//! * [`fit`]: seeded initialisation, reproducible variable order, the stable cross-entropy.
//! * [`hash`]: the one content hash behind training-data hashes and model versions.
//! * [`progress`]: progress bars for long training and evaluation runs.

pub mod augment;
pub mod dataset;
pub mod drift;
pub mod eval;
pub mod fit;
pub mod hash;
pub mod normaliser;
pub mod progress;
pub mod synthetic_defect;
