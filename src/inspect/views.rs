//! Joining further cameras' frames to the parts the station's camera makes.
//!
//! Each `[[views]]` camera runs a capture of its own (reconnecting like the station's camera)
//! whose newest frames wait in a [`FrameRing`]. The inspect thread, inspecting a part, takes from
//! each ring the frame captured nearest the part's trigger, within the view's window: a
//! triggered camera wired to the same photo-eye gives one frame a part, a free-running one
//! many, of which the nearest there at the time wins. Frames before the window show no part
//! any more and are discarded; a frame past the nearest is kept for the parts to come. The
//! window must be under half the time between parts, or a part whose own frame is missing
//! would take its neighbour's. A part with no
//! frame in its window is judged [`crate::part::Verdict::Error`] for that view, so it is
//! rejected; while the camera is lost, or after its capture ended, no one waits for it.

use std::sync::Arc;
use std::time::Duration;

use crate::calibrate::Undistorter;
use crate::capture::{CameraStatus, FrameRing, Popped};
use crate::metrics::Metrics;
use crate::part::{Frame, GrayImage, StationClock, StationTime};

/// How long past a part's window the inspect thread waits for a view's frame that has not come:
/// a frame captured in the window is in the queue this soon after, even on a busy machine.
const LATE_FRAME_GRACE: Duration = Duration::from_millis(30);

/// One further camera as the inspect thread sees it: its frames and its calibration.
pub struct ViewJoin {
    pub name: Arc<str>,
    pub undistorter: Undistorter,
    pub frames: ViewFrames,
}

/// A further camera's frames on their way to the parts they show.
pub struct ViewFrames {
    name: Arc<str>,
    frames: Arc<FrameRing>,
    window: Duration,
    /// How much later than the station camera's this camera's frames arrive (a network
    /// camera's pipeline buffers): the wait for a part's frame is that much longer.
    latency: Duration,
    /// A frame captured after the last part's window: it belongs to a part to come.
    ahead: Option<Frame>,
    status: Arc<CameraStatus>,
    /// The view's own capture counters (frames it delivered: a loss ends with the next one).
    capture_metrics: Metrics,
    /// The station's counters.
    metrics: Metrics,
}

impl ViewFrames {
    /// The view `name`, whose capture delivers into `frames` and keeps `status` and
    /// `capture_metrics`; a frame within `window` of a part's trigger shows that part, and may
    /// arrive up to `latency` after the station camera's.
    pub fn new(
        name: Arc<str>,
        frames: Arc<FrameRing>,
        (window, latency): (Duration, Duration),
        status: Arc<CameraStatus>,
        capture_metrics: Metrics,
        metrics: Metrics,
    ) -> ViewFrames {
        ViewFrames {
            name,
            frames,
            window,
            latency,
            ahead: None,
            status,
            capture_metrics,
            metrics,
        }
    }

    /// This view's raw frame of the part captured at `captured_at`, or why there is none.
    pub fn frame_for(
        &mut self,
        captured_at: StationTime,
        clock: &StationClock,
    ) -> Result<GrayImage, String> {
        let (from, to) = (
            captured_at.before(self.window),
            captured_at.after(self.window),
        );
        let deadline = clock.instant(to) + self.latency + LATE_FRAME_GRACE;
        let lost = self.status.lost(self.capture_metrics.frames_captured.get());
        let distance = |frame: &Frame| frame.captured_at.0.abs_diff(captured_at.0);
        let mut nearest: Option<Frame> = None;
        loop {
            let next = match self.ahead.take() {
                Some(frame) => Some(frame),
                // Once one frame fits, or while the camera is lost, only frames already
                // here are looked at: nobody waits for a camera that is not there. A capture
                // that ended leaves the ring closed: no wait either.
                None => {
                    let until = (nearest.is_none() && lost.is_none()).then_some(deadline);
                    match self.frames.pop(until) {
                        Popped::Frame(frame) => Some(frame),
                        Popped::Empty | Popped::Closed => None,
                    }
                }
            };
            let Some(frame) = next else { break };
            if frame.captured_at < from {
                self.unmatched();
            } else if frame.captured_at > to {
                self.ahead = Some(frame);
                break;
            } else if nearest
                .as_ref()
                .is_none_or(|n| distance(&frame) < distance(n))
            {
                if nearest.replace(frame).is_some() {
                    self.unmatched();
                }
            } else {
                // Frames come in time order: one farther than the nearest so far is past the
                // part, and may be the next part's.
                self.ahead = Some(frame);
                break;
            }
        }
        match nearest {
            Some(frame) => Ok(frame.image),
            None => {
                self.metrics
                    .view_frames_missing
                    .get_or_create(&self.label())
                    .inc();
                Err(match lost {
                    Some(reason) => format!("camera `{}` is lost: {reason}", self.name),
                    None => format!(
                        "camera `{}` delivered no frame within {} ms of the part's trigger",
                        self.name,
                        self.window.as_millis()
                    ),
                })
            }
        }
    }

    fn unmatched(&self) {
        self.metrics
            .view_frames_unmatched
            .get_or_create(&self.label())
            .inc();
    }

    fn label(&self) -> crate::metrics::CameraLabel {
        crate::metrics::CameraLabel {
            camera: self.name.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::PartId;

    fn frame(ms: u64, level: u8) -> Frame {
        Frame {
            part_id: PartId(0),
            captured_at: StationTime(Duration::from_millis(ms)),
            image: GrayImage {
                width: 1,
                height: 1,
                pixels: vec![level],
            },
        }
    }

    fn at(ms: u64) -> StationTime {
        StationTime(Duration::from_millis(ms))
    }

    struct Fixture {
        frames: ViewFrames,
        ring: Arc<FrameRing>,
        metrics: Metrics,
        clock: Arc<StationClock>,
    }

    fn fixture() -> Fixture {
        let ring = FrameRing::new(16, Default::default());
        let metrics = Metrics::new();
        Fixture {
            frames: ViewFrames::new(
                Arc::from("side"),
                ring.clone(),
                (Duration::from_millis(40), Duration::ZERO),
                Arc::new(CameraStatus::default()),
                Metrics::new(),
                metrics.clone(),
            ),
            ring,
            metrics,
            clock: StationClock::start(),
        }
    }

    fn count(
        family: &prometheus_client::metrics::family::Family<
            crate::metrics::CameraLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> u64 {
        family
            .get_or_create(&crate::metrics::CameraLabel {
                camera: "side".into(),
            })
            .get()
    }

    #[test]
    fn each_part_takes_the_frame_nearest_its_trigger_and_leaves_the_next_parts_frame() {
        let mut f = fixture();
        // A free-running view: frames every 30 ms; parts at 100 and 200 ms.
        for (ms, level) in [
            (40, 1),
            (70, 2),
            (95, 3),
            (130, 4),
            (160, 5),
            (190, 6),
            (220, 7),
        ] {
            f.ring.push(frame(ms, level));
        }
        let first = f.frames.frame_for(at(100), &f.clock).expect("a frame");
        assert_eq!(first.pixels, [3], "95 ms is the nearest to 100 ms");
        let second = f.frames.frame_for(at(200), &f.clock).expect("a frame");
        assert_eq!(second.pixels, [6], "190 ms is the nearest to 200 ms");
        // 40 ms is before the first window; 70 was farther than 95; 160 farther than 190.
        assert_eq!(count(&f.metrics.view_frames_unmatched), 4);
        assert_eq!(count(&f.metrics.view_frames_missing), 0);
    }

    #[test]
    fn a_part_whose_frame_never_came_is_missing_and_its_neighbours_frame_stays_its_own() {
        let mut f = fixture();
        // A triggered view that missed the part at 100 ms: its next frame is the next part's.
        f.ring.push(frame(201, 9));
        let missing = f
            .frames
            .frame_for(at(100), &f.clock)
            .expect_err("no frame within 40 ms of 100 ms");
        assert!(missing.contains("camera `side`"), "{missing}");
        assert!(missing.contains("40 ms"), "{missing}");
        let next = f.frames.frame_for(at(200), &f.clock).expect("a frame");
        assert_eq!(next.pixels, [9]);
        assert_eq!(count(&f.metrics.view_frames_missing), 1);
        assert_eq!(count(&f.metrics.view_frames_unmatched), 0);
    }

    #[test]
    fn a_frame_that_arrives_while_the_inspect_thread_waits_is_taken() {
        let mut f = fixture();
        let now = f.clock.now();
        let ring = f.ring.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            ring.push(Frame {
                captured_at: now,
                ..frame(0, 7)
            });
        });
        let image = f
            .frames
            .frame_for(now, &f.clock)
            .expect("the frame that came");
        assert_eq!(image.pixels, [7]);
        late.join().expect("sender");
    }

    #[test]
    fn a_full_ring_lets_its_oldest_frame_go_so_the_frames_near_a_trigger_stay() {
        let dropped = prometheus_client::metrics::counter::Counter::default();
        let ring = FrameRing::new(3, dropped.clone());
        for ms in [10, 20, 30, 40, 50] {
            ring.push(frame(ms, 0));
        }
        assert_eq!(dropped.get(), 2);
        let left: Vec<u128> = std::iter::from_fn(|| match ring.pop(None) {
            Popped::Frame(frame) => Some(frame.captured_at.0.as_millis()),
            Popped::Empty | Popped::Closed => None,
        })
        .collect();
        assert_eq!(left, [30, 40, 50]);
        ring.close();
        assert!(matches!(ring.pop(None), Popped::Closed));
        assert_eq!(ring.push(frame(60, 0)), crate::capture::Delivered::Closed);
    }

    #[test]
    fn a_view_whose_capture_ended_is_not_waited_for() {
        let ring = FrameRing::new(4, Default::default());
        // A window of 10 s: waiting it out would be unmistakable.
        let mut frames = ViewFrames::new(
            Arc::from("side"),
            ring.clone(),
            (Duration::from_secs(10), Duration::ZERO),
            Arc::new(CameraStatus::default()),
            Metrics::new(),
            Metrics::new(),
        );
        ring.close();
        let clock = StationClock::start();
        let started = std::time::Instant::now();
        let missing = frames
            .frame_for(clock.now(), &clock)
            .expect_err("no frame will come");
        assert!(missing.contains("camera `side`"), "{missing}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} for a capture that ended",
            started.elapsed()
        );
    }
}
