//! The station's MES view: what the quality records and the sensor data say together.
//!
//! Sits between [`crate::record`] (and [`crate::sense`]) and [`crate::serve`]: it reads records
//! and samples, never the live path, so nothing here can delay a verdict or a reject.
//!
//! [`alarms`]: the ISA-18.2 alarm life cycle over tags, KPIs, chart rules and the station.

pub mod alarms;
