//! A stretch of the simulated line's history, computed rather than lived: the parts and sensor
//! samples the line would have produced over hours, in the time it takes to draw them. Tests
//! and benchmarks use it to ask what the MES view finds in a whole shift of the line, whose true
//! causes ([`LineProcess`]'s effects) are known.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::process::LineProcess;
use super::{DefectKind, PartGenerator};
use crate::sense::Incoming;

/// One part of the computed history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoricPart {
    /// When the camera saw it.
    pub captured_at: DateTime<Utc>,
    /// Its true defect.
    pub defect: Option<DefectKind>,
}

/// The name of the running flag's tag in the computed samples.
pub const RUNNING_TAG: &str = "line_running";

/// The parts the line makes from `start` (line time zero) for `length` at `parts_per_min`, as
/// the simulated camera draws them (the same seed names the same parts), and every sensor's
/// reported value (and the running flag, as [`RUNNING_TAG`]) every `sample_period`.
pub fn history(
    process: &LineProcess,
    seed: u64,
    parts_per_min: f64,
    start: DateTime<Utc>,
    length: Duration,
    sample_period: Duration,
) -> (Vec<HistoricPart>, Vec<Incoming>) {
    let mut generator = PartGenerator::new(seed, 1, 1, 0.0);
    let mut parts = Vec::new();
    if parts_per_min > 0.0 {
        let period = Duration::from_secs_f64(60.0 / parts_per_min);
        let mut slot = 0u32;
        loop {
            let t = period * slot;
            if t >= length {
                break;
            }
            slot += 1;
            if !process.is_running(t) {
                continue;
            }
            let defect = generator.draw_defect(&process.defect_probabilities(t));
            parts.push(HistoricPart {
                captured_at: at(start, t),
                defect,
            });
        }
    }
    let mut samples = Vec::new();
    if !sample_period.is_zero() {
        let mut tick = 0u32;
        loop {
            let t = sample_period * tick;
            if t >= length {
                break;
            }
            tick += 1;
            for (i, sensor) in process.sensors().iter().enumerate() {
                samples.push(Incoming {
                    tag: sensor.name.clone(),
                    at: at(start, t),
                    value: Some(process.reported_value(i, t)),
                });
            }
            samples.push(Incoming {
                tag: RUNNING_TAG.into(),
                at: at(start, t),
                value: Some(f64::from(u8::from(process.is_running(t)))),
            });
        }
    }
    (parts, samples)
}

fn at(start: DateTime<Utc>, t: Duration) -> DateTime<Utc> {
    start + chrono::TimeDelta::from_std(t).unwrap_or(chrono::TimeDelta::MAX)
}
