//! Maintenance alerts: which machine is about to fail, by when, and how sure that is.
//!
//! - [`watch`]: the `[[maintenance]]` watches of the station TOML and the alarm each raises;
//! - [`monitor`]: the task that evaluates them while the station runs.

pub mod monitor;
pub mod watch;
