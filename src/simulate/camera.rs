//! The simulated camera: renders parts at the belt's rate and pushes them into the pipeline's
//! appsrc, one frame per part.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio_util::sync::CancellationToken;

use crate::capture::FrameFeeder;
use crate::config::SimulatorSection;
use crate::simulate::{FRAME_SIZE, PartGenerator};

/// Parts as the station config's `[camera.simulator]` describes them, one frame each.
pub struct SimulatedCamera {
    pub settings: SimulatorSection,
}

impl FrameFeeder for SimulatedCamera {
    fn feed(
        self: Box<Self>,
        appsrc: gst_app::AppSrc,
        max_parts: Option<u64>,
        stop: CancellationToken,
    ) {
        feed(appsrc, &self.settings, max_parts, &stop);
    }
}

fn feed(
    appsrc: gst_app::AppSrc,
    settings: &SimulatorSection,
    max_parts: Option<u64>,
    stop: &CancellationToken,
) {
    let mut generator =
        PartGenerator::new(settings.seed, FRAME_SIZE, FRAME_SIZE, settings.defect_rate);
    let period = Duration::from_secs_f64(60.0 / settings.parts_per_min);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.is_cancelled() && max_parts.is_none_or(|max| sent < max) {
        // Parts arrive on a fixed schedule, however long rendering took.
        let due = started + period.mul_f64(sent as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let part = generator.next_part();
        tracing::debug!(part = sent, defect = ?part.defect, "simulated part");
        if let Err(error) = appsrc.push_buffer(gst::Buffer::from_mut_slice(part.image.pixels)) {
            tracing::debug!(?error, "simulated camera: pipeline refused the frame");
            break;
        }
        sent += 1;
    }
    let _ = appsrc.end_of_stream();
}
