//! The model families, one folder each: the model, its training, and its part of the card.
//!
//! * [`backbone`]: EfficientNet-Lite0 (ImageNet) in candle, and [`backbone::PatchFeatures`],
//!   the frozen feature extractor the anomaly and supervised models share.
//! * [`defect_net`]: the small network the simulated line ships with, trained on synthetic parts.
//! * [`anomaly`]: the cold-start model, learnt from good parts only (PatchCore and friends).
//! * [`supervised`]: per-patch defect segmentation, once defects are labelled.
//!
//! What they learn with (datasets, augmentation, metrics, threshold rules) is in
//! [`crate::learn`]; the station runs any of them through [`crate::inspect`].

pub mod anomaly;
pub mod backbone;
pub mod defect_net;
pub mod supervised;

/// Runs `work` on one of rayon's worker threads, or right here when already on one.
///
/// A model's forward pass is a chain of a few dozen short parallel kernels (each 0.1–1 ms).
/// Started from a thread outside the pool, such as the inspector's, every kernel is a cold
/// start: its job is queued for the pool, the caller sleeps on a latch, and the workers wake
/// for it and doze off after. Started on a worker, the kernels fork and join on a pool that
/// stays warm. The backbone at 256×256 took 6.95 ms this way against 8.1 ms from outside.
pub fn on_worker_thread<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}
