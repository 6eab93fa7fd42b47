//! Maintenance alerts: what the line's sensor data say about the equipment's health, beside
//! the path like the rest of [`crate::analyse`].
//!
//! - [`changepoint`]: where a tag's level or spread shifted (PELT), with the level before and
//!   after and how strongly the data ask for it;
//! - [`anomaly`]: a multivariate detector fitted on normal operation (PCA with Hotelling's T²
//!   and the residual Q), scoring new samples with smoothing and persistence;
//! - [`skab`]: the Skoltech Anomaly Benchmark's CSV layout and its scoring, to measure
//!   [`anomaly`] on real test-bed data.

pub mod anomaly;
pub mod changepoint;
pub mod skab;
