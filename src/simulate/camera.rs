//! The simulated camera: renders parts at the belt's rate and pushes them into the pipeline's
//! appsrc, one frame per part, their defects drawn from the line's sensors at the time.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio_util::sync::CancellationToken;

use crate::capture::FrameFeeder;
use crate::config::SimulatorSection;
use crate::simulate::{FRAME_SIZE, LineProcess, PartGenerator, PlcSimulator, SyntheticPart};

/// Parts as the station config's `[camera.simulator]` describes them, one frame each.
pub struct SimulatedCamera {
    settings: SimulatorSection,
    process: Arc<LineProcess>,
    /// When the line started: the clock the PLC's sensor registers follow too.
    line_started: Instant,
    /// The slot of the line's first part, shared by the line's cameras.
    first_slot: Arc<OnceLock<u64>>,
    /// The simulated PLC and how long a part takes from the camera to its gate eye: every
    /// part shown reaches the eye, whatever the station makes of it.
    conveyor: Option<(PlcSimulator, Duration)>,
}

impl SimulatedCamera {
    /// A camera on the line `process` describes, whose time since start runs from
    /// `line_started`, starting on the line's first slot (set by whichever of the line's cameras
    /// starts first), and whose parts go on to the gate eye of `conveyor`'s PLC.
    pub fn new(
        settings: SimulatorSection,
        process: Arc<LineProcess>,
        (line_started, first_slot): (Instant, Arc<OnceLock<u64>>),
        conveyor: Option<(PlcSimulator, Duration)>,
    ) -> SimulatedCamera {
        SimulatedCamera {
            settings,
            process,
            line_started,
            first_slot,
            conveyor,
        }
    }
}

impl FrameFeeder for SimulatedCamera {
    fn feed(
        self: Box<Self>,
        appsrc: gst_app::AppSrc,
        max_parts: Option<u64>,
        software_trigger: Option<std::sync::mpsc::Receiver<()>>,
        stop: CancellationToken,
    ) {
        match software_trigger {
            Some(trigger) => feed_on_trigger(appsrc, &self, max_parts, &trigger, &stop),
            None => feed(appsrc, &self, max_parts, &stop),
        }
    }
}

/// The part the camera sees at line time `t`: none while the line is down, otherwise one whose
/// defect follows the sensors at `t`.
pub fn part_at(
    process: &LineProcess,
    generator: &mut PartGenerator,
    t: Duration,
) -> Option<SyntheticPart> {
    process
        .is_running(t)
        .then(|| generator.next_part_with(&process.defect_probabilities(t)))
}

/// [`part_at`] for the `part_index`-th part the camera sees (from 0): a part the damaged roller
/// touches carries its mark instead of the defect the sensors drew (drawn all the same, so the
/// parts after it are those of a line without the roller), lit as the line's lighting is then.
pub fn part_on_line(
    process: &LineProcess,
    generator: &mut PartGenerator,
    t: Duration,
    part_index: u64,
) -> Option<SyntheticPart> {
    let mut part = match process.roller_mark(part_index) {
        None => part_at(process, generator, t)?,
        Some((defect, place)) => {
            if !process.is_running(t) {
                return None;
            }
            let _drawn = generator.draw_defect(&process.defect_probabilities(t));
            generator.render_at(defect, place)
        }
    };
    process.light(part_index, &mut part.image);
    Some(part)
}

fn feed(
    appsrc: gst_app::AppSrc,
    camera: &SimulatedCamera,
    max_parts: Option<u64>,
    stop: &CancellationToken,
) {
    let settings = &camera.settings;
    let mut generator =
        PartGenerator::new(settings.seed, FRAME_SIZE, FRAME_SIZE, settings.defect_rate);
    let period = Duration::from_secs_f64(60.0 / settings.parts_per_min);
    // Slots fall on the line's clock (every `period` from its start), so that every camera on
    // the line (the station's and its further views) sees a part at the same moment.
    let next_slot =
        (camera.line_started.elapsed().as_secs_f64() / period.as_secs_f64()).ceil() as u64;
    let first_slot = *camera.first_slot.get_or_init(|| next_slot);
    // Slots tick on through downtimes (the part clock goes on); only running slots carry a part.
    // A camera that starts after the first slot went by begins on the next one.
    let (mut slot, mut sent) = (first_slot.max(next_slot), 0u64);
    while !stop.is_cancelled() && max_parts.is_none_or(|max| sent < max) {
        // Parts arrive on a fixed schedule, however long rendering took.
        let t = period.mul_f64(slot as f64);
        slot += 1;
        if let Some(wait) = (camera.line_started + t).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(part) = part_on_line(&camera.process, &mut generator, t, sent) else {
            continue;
        };
        tracing::debug!(part = sent, defect = ?part.defect, ?t, "simulated part");
        if let Err(error) = appsrc.push_buffer(gst::Buffer::from_mut_slice(part.image.pixels)) {
            tracing::debug!(?error, "simulated camera: pipeline refused the frame");
            break;
        }
        if let Some((plc, to_eye)) = &camera.conveyor {
            plc.part_reaches_eye_in(*to_eye);
        }
        sent += 1;
    }
    let _ = appsrc.end_of_stream();
}

/// A triggered camera (server mode): one part per software trigger, whenever the PLC's
/// photo-eye sees one; the belt's pace is the PLC's.
fn feed_on_trigger(
    appsrc: gst_app::AppSrc,
    camera: &SimulatedCamera,
    max_parts: Option<u64>,
    trigger: &std::sync::mpsc::Receiver<()>,
    stop: &CancellationToken,
) {
    let settings = &camera.settings;
    let mut generator =
        PartGenerator::new(settings.seed, FRAME_SIZE, FRAME_SIZE, settings.defect_rate);
    let mut sent = 0u64;
    while !stop.is_cancelled() && max_parts.is_none_or(|max| sent < max) {
        match trigger.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let t = camera.line_started.elapsed();
        // The PLC saw a part at its eye, so there is one, whatever the line's downtimes say.
        let part = part_on_line(&camera.process, &mut generator, t, sent).unwrap_or_else(|| {
            let mut part = generator.next_part_with(&camera.process.defect_probabilities(t));
            camera.process.light(sent, &mut part.image);
            part
        });
        if let Err(error) = appsrc.push_buffer(gst::Buffer::from_mut_slice(part.image.pixels)) {
            tracing::debug!(?error, "simulated camera: pipeline refused the frame");
            break;
        }
        sent += 1;
    }
    let _ = appsrc.end_of_stream();
}
