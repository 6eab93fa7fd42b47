//! Maintenance alerts: which machine is about to fail, by when, and how sure that is.
//!
//! - [`rul`]: remaining useful life for equipment with run-to-failure history (the NASA
//!   C-MAPSS text formats, a small 1D CNN over a window of cycles, split-conformal intervals);
//! - [`trend`]: when one tag's degradation trend crosses its failure limit, for equipment
//!   without such history (linear or exponential fit, bootstrap interval);
//! - [`watch`]: the `[[maintenance]]` watches of the station TOML and the alarm each raises;
//! - [`monitor`]: the task that evaluates the watches while the station runs.

pub mod monitor;
pub mod rul;
pub mod trend;
pub mod watch;
