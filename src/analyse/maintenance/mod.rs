//! Maintenance alerts: which machine is about to fail, by when, and how sure that is; beside
//! the path like the rest of [`crate::analyse`].
//!
//! - [`rul`]: remaining useful life for equipment with run-to-failure history (the NASA
//!   C-MAPSS text formats, a small 1D CNN over a window of cycles, split-conformal intervals);
//! - [`trend`]: when one tag's degradation trend crosses its failure limit, for equipment
//!   without such history (linear or exponential fit, bootstrap interval);
//! - [`changepoint`]: where a tag's level or spread shifted (PELT), with the level before and
//!   after and how strongly the data ask for it;
//! - [`anomaly`]: a multivariate detector fitted on normal operation (PCA with Hotelling's T²
//!   and the residual Q), scoring new samples with smoothing and persistence;
//! - [`skab`]: the Skoltech Anomaly Benchmark's CSV layout and its scoring, to measure
//!   [`anomaly`] on real test-bed data;
//! - [`repeat`]: a defect at one place every N parts (a damaged roller);
//! - [`watch`]: the `[[maintenance]]` watches of the station TOML and the alarm each raises;
//! - [`monitor`]: the task that evaluates the watches while the station runs.

pub mod anomaly;
pub mod changepoint;
pub mod monitor;
pub mod repeat;
pub mod rul;
pub mod skab;
pub mod trend;
pub mod watch;
