//! The station's MES view: what the quality records and the sensor data say together.
//!
//! Sits between [`crate::record`] (and [`crate::sense`]) and [`crate::serve`]: it reads records
//! and samples, never the live path, so nothing here can delay a verdict or a reject.

pub mod spc;
