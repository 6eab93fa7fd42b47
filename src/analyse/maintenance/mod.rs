//! Maintenance: patterns in the inspections and the line data that point at a machine about
//! to fail, or already damaged.
//!
//! - [`repeat`]: a defect at the same place on the part every N parts (a damaged roller).

pub mod repeat;
