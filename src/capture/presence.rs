//! The presence detector: one part per passage through a free-running camera's view.
//!
//! A free-running camera (an RTSP stream, a USB camera, a video file) delivers frames at its
//! own rate, 30 a second or more, while a part takes several of them to cross the view. With
//! `[camera.presence]` the station watches one number per frame in a region of the view the
//! parts cross — the mean grey level ([`PresenceMeasure::Intensity`]) or the mean edge
//! strength ([`PresenceMeasure::Edges`], for parts that are as bright as the belt but not as
//! plain) — and compares it with the same number for the empty belt:
//!
//! * a passage starts when the change stays above `threshold` for `enter_frames` frames in a
//!   row, so a flicker, a reflection or a speck of dust for fewer frames is not a part;
//! * it ends when the change stays below half the threshold (hysteresis, so a part whose
//!   edge sits on the threshold does not make two) for `leave_frames` frames in a row;
//! * the part is the passage's *best frame*: the one with the largest change, where the part
//!   fills the region the most. Only that frame is kept, so a passage costs one frame of
//!   memory however long it lasts;
//! * a passage longer than `max_passage_frames` (a part stopped under the camera) gives its
//!   part at that point, and the detector waits for the view to clear before the next one.
//!   A view that stays changed for as long again is taken as the new empty belt (the light
//!   changed), with a warning; should the old level come back (it was a part after all, taken
//!   away), the old level is the belt again, and no part is made of it.
//!
//! The empty belt's level is learnt from the first frame and follows slow changes (light
//! drift, dust) on the frames between parts. The belt must show a gap between two parts
//! inside the region, as a photo-eye needs one.
//!
//! The part's capture time is its best frame's, so tracking to the gate is not moved by the
//! wait for the passage to end; the part is handed on when the passage ends, which must come
//! well before its verdict deadline.

use crate::part::GrayImage;

/// What the detector measures in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceMeasure {
    /// Mean grey level: a part brighter or darker than the belt.
    Intensity,
    /// Mean absolute difference between neighbouring pixels: a part with edges or texture on
    /// a plainer belt, whatever its brightness.
    Edges,
}

/// A rectangle of the frame as it reaches the appsink (after any scaling in the pipeline), in
/// pixels; in the config `[x, y, width, height]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "[u32; 4]")]
pub struct PresenceRoi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl From<[u32; 4]> for PresenceRoi {
    fn from([x, y, width, height]: [u32; 4]) -> PresenceRoi {
        PresenceRoi {
            x,
            y,
            width,
            height,
        }
    }
}

/// How the detector decides that a part is in view: `[camera.presence]` in the station's
/// config, read as it is (the config checks the values).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    /// Where the parts pass; `None`: the whole frame. Keep it to the belt: people and machines
    /// beside it move too.
    pub roi: Option<PresenceRoi>,
    /// `intensity` (the default) or `edges`.
    #[serde(default = "default_measure")]
    pub measure: PresenceMeasure,
    /// Change from the empty belt's level that means a part is in view, in the measure's
    /// units (grey levels for both). Read the levels with and without a part on /metrics
    /// (`presence_level`, `presence_empty_level`) and put it about halfway.
    pub threshold: f32,
    /// Frames in a row above the threshold before a passage counts (debounce).
    #[serde(default = "default_enter_frames")]
    pub enter_frames: u32,
    /// Frames in a row below half the threshold that end a passage.
    #[serde(default = "default_leave_frames")]
    pub leave_frames: u32,
    /// A passage this long (counted from its first frame above the threshold) gives its part
    /// without waiting for its end: a part stopped in view.
    #[serde(default = "default_max_passage_frames")]
    pub max_passage_frames: u32,
    /// The empty belt's level to start from; `None`: learnt from the first frame. Capture
    /// keeps the learnt one here, so a camera that reconnects with a part in view does not
    /// take that part for the belt. Not in the config.
    #[serde(skip)]
    pub empty_level: Option<f32>,
}

fn default_measure() -> PresenceMeasure {
    PresenceMeasure::Intensity
}

fn default_enter_frames() -> u32 {
    2
}

fn default_leave_frames() -> u32 {
    3
}

fn default_max_passage_frames() -> u32 {
    300
}

/// The region does not fit the camera's frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the presence region x={x} y={y} {width}x{height} does not fit the camera's \
     {frame_width}x{frame_height} frame",
    x = .roi.x, y = .roi.y, width = .roi.width, height = .roi.height
)]
pub struct RoiOutsideFrame {
    pub roi: PresenceRoi,
    pub frame_width: u32,
    pub frame_height: u32,
}

/// The most pixels one measurement reads: larger regions are sampled on a coarser grid, so a
/// 5-megapixel frame costs no more than a small one on the camera's streaming thread.
const MAX_SAMPLES: u64 = 1 << 16;

/// How fast the empty belt's level follows the frames between parts (per frame).
const EMPTY_LEVEL_RATE: f32 = 0.05;

/// An 8-bit grey frame as it lies in memory, rows `stride` bytes apart: a mapped GStreamer
/// buffer is measured where it is, and copied only when the detector keeps it.
#[derive(Debug, Clone, Copy)]
pub struct GrayView<'a> {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub pixels: &'a [u8],
}

impl<'a> From<&'a GrayImage> for GrayView<'a> {
    fn from(image: &'a GrayImage) -> GrayView<'a> {
        GrayView {
            width: image.width,
            height: image.height,
            stride: image.width as usize,
            pixels: &image.pixels,
        }
    }
}

/// The measure of `image` inside `roi`.
pub fn measure(
    image: GrayView<'_>,
    roi: Option<PresenceRoi>,
    what: PresenceMeasure,
) -> Result<f32, RoiOutsideFrame> {
    let roi = roi.unwrap_or(PresenceRoi {
        x: 0,
        y: 0,
        width: image.width,
        height: image.height,
    });
    let fits = roi.width > 0
        && roi.height > 0
        && u64::from(roi.x) + u64::from(roi.width) <= u64::from(image.width)
        && u64::from(roi.y) + u64::from(roi.height) <= u64::from(image.height);
    if !fits {
        return Err(RoiOutsideFrame {
            roi,
            frame_width: image.width,
            frame_height: image.height,
        });
    }
    let area = u64::from(roi.width) * u64::from(roi.height);
    // The sampling step in each direction, so that at most MAX_SAMPLES pixels are read.
    let step = ((area as f64 / MAX_SAMPLES as f64).sqrt().ceil() as usize).max(1);
    let stride = image.stride;
    let (x0, y0) = (roi.x as usize, roi.y as usize);
    let (x1, y1) = (x0 + roi.width as usize, y0 + roi.height as usize);
    let (mut sum, mut count) = (0u64, 0u64);
    for y in (y0..y1).step_by(step) {
        let row = &image.pixels[y * stride..y * stride + image.width as usize];
        match what {
            PresenceMeasure::Intensity => {
                for x in (x0..x1).step_by(step) {
                    sum += u64::from(row[x]);
                    count += 1;
                }
            }
            PresenceMeasure::Edges => {
                // Differences to the right and downwards neighbour, inside the region.
                let below = (y + 1 < y1).then(|| &image.pixels[(y + 1) * stride..]);
                for x in (x0..x1).step_by(step) {
                    if x + 1 < x1 {
                        sum += u64::from(row[x].abs_diff(row[x + 1]));
                        count += 1;
                    }
                    if let Some(below) = below {
                        sum += u64::from(row[x].abs_diff(below[x]));
                        count += 1;
                    }
                }
            }
        }
    }
    Ok(if count == 0 {
        0.0
    } else {
        sum as f32 / count as f32
    })
}

/// Where the detector is between frames.
#[derive(Debug)]
enum State<T> {
    /// No part in view; `above` frames in a row have been above the threshold so far, the
    /// best of them kept in case they become a passage.
    Empty { above: u32, best: Option<(f32, T)> },
    /// A part in view.
    Passage {
        frames: u32,
        below: u32,
        best: (f32, T),
    },
    /// A passage that gave its part at `max_passage_frames` and has not cleared yet.
    Held { frames: u32, below: u32 },
}

impl<T> State<T> {
    fn empty() -> State<T> {
        State::Empty {
            above: 0,
            best: None,
        }
    }
}

/// Follows the measure frame by frame and says when a passage ends with its best frame.
/// Generic over what a frame carries (`T`), so the state machine is tested without images.
#[derive(Debug)]
pub struct PresenceDetector<T> {
    settings: PresenceSettings,
    /// The empty belt's level; `None` until the first frame.
    empty_level: Option<f32>,
    /// The empty belt's level before the view was last taken as the new belt.
    former_empty_level: Option<f32>,
    state: State<T>,
}

impl<T> PresenceDetector<T> {
    pub fn new(settings: PresenceSettings) -> PresenceDetector<T> {
        PresenceDetector {
            empty_level: settings.empty_level,
            former_empty_level: None,
            settings,
            state: State::empty(),
        }
    }

    /// The empty belt's level as learnt so far.
    pub fn empty_level(&self) -> Option<f32> {
        self.empty_level
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &PresenceSettings {
        &self.settings
    }

    /// Takes one frame's measure (`level`); `frame` makes what the frame carries, and is
    /// called only for a frame the detector keeps (the best of a passage so far). Returns the
    /// part whose passage this frame ended: its best frame.
    pub fn observe(&mut self, level: f32, frame: impl FnOnce() -> T) -> Option<T> {
        let empty = *self.empty_level.get_or_insert(level);
        let change = (level - empty).abs();
        let threshold = self.settings.threshold;
        let (above, clear) = (change > threshold, change < threshold / 2.0);
        let state = std::mem::replace(&mut self.state, State::empty());
        let (next, part) = match state {
            // The belt as it was before the view was taken for the new belt: what changed
            // the view was taken away. The old level is the belt again.
            State::Empty { .. }
                if self
                    .former_empty_level
                    .is_some_and(|former| (level - former).abs() < threshold / 2.0) =>
            {
                self.empty_level = self.former_empty_level.take();
                (State::empty(), None)
            }
            State::Empty { above: run, best } if above => {
                let best = keep_better(best, change, frame);
                if run + 1 >= self.settings.enter_frames {
                    // The passage counts from its first frame above the threshold.
                    self.passage_step(run + 1, 0, best)
                } else {
                    (
                        State::Empty {
                            above: run + 1,
                            best: Some(best),
                        },
                        None,
                    )
                }
            }
            State::Empty { .. } => {
                if clear {
                    // Only frames of the empty belt teach its level.
                    self.empty_level = Some(empty + EMPTY_LEVEL_RATE * (level - empty));
                }
                (State::empty(), None)
            }
            State::Passage {
                frames,
                below,
                best,
            } => {
                let below = if clear { below + 1 } else { 0 };
                let best = if clear {
                    best
                } else {
                    keep_better(Some(best), change, frame)
                };
                self.passage_step(frames + 1, below, best)
            }
            State::Held { frames, below } => {
                let below = if clear { below + 1 } else { 0 };
                if below >= self.settings.leave_frames {
                    (State::empty(), None)
                } else if frames + 1 >= self.settings.max_passage_frames {
                    tracing::warn!(
                        empty_level = empty,
                        level,
                        "the camera's view stayed changed for twice the longest passage: the \
                         presence detector takes it as the empty belt now (did the light change?)"
                    );
                    self.former_empty_level = self.empty_level.replace(level);
                    (State::empty(), None)
                } else {
                    (
                        State::Held {
                            frames: frames + 1,
                            below,
                        },
                        None,
                    )
                }
            }
        };
        self.state = next;
        part
    }

    /// A passage after one more frame: ended, given at its longest, or going on.
    fn passage_step(&self, frames: u32, below: u32, best: (f32, T)) -> (State<T>, Option<T>) {
        if below >= self.settings.leave_frames {
            (State::empty(), Some(best.1))
        } else if frames >= self.settings.max_passage_frames {
            tracing::warn!(
                frames,
                "a part stayed in the camera's view for the longest passage: inspected now, \
                 the next part counts once the view clears"
            );
            (State::Held { frames: 0, below }, Some(best.1))
        } else {
            (
                State::Passage {
                    frames,
                    below,
                    best,
                },
                None,
            )
        }
    }

    /// The end of the stream: a passage under way gives its part (the video ended with a part
    /// in view); one still in its debounce does not.
    pub fn finish(&mut self) -> Option<T> {
        let state = std::mem::replace(&mut self.state, State::empty());
        match state {
            State::Passage { best, .. } => Some(best.1),
            _ => None,
        }
    }
}

/// The better of the best so far and this frame: the larger change; the earlier on a tie.
/// The frame is made only when it is kept.
fn keep_better<T>(best: Option<(f32, T)>, change: f32, frame: impl FnOnce() -> T) -> (f32, T) {
    match best {
        Some(best) if best.0 >= change => best,
        _ => (change, frame()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PresenceSettings {
        PresenceSettings {
            roi: None,
            measure: PresenceMeasure::Intensity,
            threshold: 20.0,
            enter_frames: 2,
            leave_frames: 2,
            max_passage_frames: 10,
            empty_level: None,
        }
    }

    /// Runs levels through a detector; each frame carries its index. Returns the parts.
    fn parts(settings: PresenceSettings, levels: &[f32]) -> Vec<usize> {
        let mut detector = PresenceDetector::new(settings);
        let mut found = Vec::new();
        for (i, &level) in levels.iter().enumerate() {
            found.extend(detector.observe(level, || i));
        }
        found.extend(detector.finish());
        found
    }

    #[test]
    fn one_part_per_passage_at_its_strongest_frame() {
        // Empty belt at 50; two parts, each rising, peaking, falling.
        let levels = [
            50., 51., 49., 75., 90., 100., 95., 72., 50., 50., 52., 80., 85., 84., 60., 51., 50.,
        ];
        assert_eq!(parts(settings(), &levels), [5, 12]);
    }

    #[test]
    fn a_dark_part_on_a_bright_belt_counts_too() {
        let levels = [200., 200., 150., 120., 130., 199., 200., 200.];
        assert_eq!(parts(settings(), &levels), [3]);
    }

    #[test]
    fn a_flicker_shorter_than_the_debounce_is_not_a_part() {
        let levels = [50., 50., 120., 50., 50., 130., 50., 50.];
        assert!(parts(settings(), &levels).is_empty());
        let mut three = settings();
        three.enter_frames = 3;
        assert!(parts(three, &[50., 90., 95., 50., 50.]).is_empty());
    }

    #[test]
    fn a_dip_inside_a_passage_does_not_split_it() {
        // One frame below half the threshold (a gap in the part's texture) is under the
        // leave debounce; a level between half and the whole threshold never ends a passage.
        let levels = [50., 80., 90., 55., 90., 62., 65., 88., 50., 50., 50.];
        assert_eq!(parts(settings(), &levels), [2]);
    }

    #[test]
    fn the_empty_level_follows_slow_drift_but_not_parts() {
        // The belt brightens by 40 grey levels over 200 frames: no part. Then a part.
        let mut levels: Vec<f32> = (0..200).map(|i| 50.0 + i as f32 * 0.2).collect();
        levels.extend([90.; 30]);
        levels.extend([130., 140., 135., 90., 90., 90.]);
        let mut detector = PresenceDetector::new(settings());
        let mut found = Vec::new();
        for (i, &level) in levels.iter().enumerate() {
            found.extend(detector.observe(level, || i));
        }
        assert_eq!(found, [231]);
        let empty = detector.empty_level().unwrap();
        assert!((empty - 90.0).abs() < 5.0, "{empty}");
    }

    #[test]
    fn a_part_stopped_in_view_is_inspected_once_and_a_changed_view_becomes_the_belt() {
        // A part arrives and stays 18 frames (the longest passage is 10): one part when the
        // passage is 10 frames long, then nothing until it leaves; the next part counts again.
        let mut levels = vec![50., 50.];
        levels.extend([100.; 18]);
        levels.extend([50., 50., 50., 100., 100., 50., 50.]);
        assert_eq!(parts(settings(), &levels), [2, 23]);
        // The light goes up for good: one "part", then after as long again the new level is
        // the empty belt, and parts count against it.
        let mut levels = vec![50., 50.];
        levels.extend([100.; 40]);
        levels.extend([150., 150., 100., 100., 100.]);
        assert_eq!(parts(settings(), &levels), [2, 42]);
        // It was a part standing still after all: when it goes, the old belt comes back, and
        // the empty belt is not made a part.
        let mut levels = vec![50., 50.];
        levels.extend([100.; 40]);
        levels.extend([50.; 10]);
        levels.extend([100., 100., 50., 50., 50.]);
        assert_eq!(parts(settings(), &levels), [2, 52]);
    }

    #[test]
    fn a_reconnected_camera_keeps_the_learnt_belt() {
        // The first frame after a reconnection shows a part: with the belt's level carried
        // over, it is a part, not the belt.
        let mut carried = settings();
        carried.empty_level = Some(50.0);
        assert_eq!(parts(carried, &[100., 100., 100., 50., 50.]), [0]);
        // Learnt afresh, the part is taken for the belt, and the belt it leaves behind for a
        // part (frame 3, the empty belt).
        assert_eq!(parts(settings(), &[100., 100., 100., 50., 50.]), [3]);
    }

    #[test]
    fn a_video_ending_with_a_part_in_view_still_gives_it() {
        assert_eq!(parts(settings(), &[50., 50., 90., 95., 99.]), [4]);
        // Still in the debounce: not a part.
        assert!(parts(settings(), &[50., 50., 50., 95.]).is_empty());
    }

    fn image(width: u32, height: u32, pixel: impl Fn(u32, u32) -> u8) -> GrayImage {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| pixel(x, y))
            .collect();
        GrayImage::new(width, height, pixels).unwrap()
    }

    #[test]
    fn the_measures_read_the_region_only() {
        // Left half 200, right half 0; a checkerboard of 0/100 in the bottom-right corner.
        let frame = image(64, 64, |x, y| match (x < 32, y < 32) {
            (true, _) => 200,
            (false, true) => 0,
            (false, false) => ((x + y) % 2 * 100) as u8,
        });
        let left = PresenceRoi {
            x: 0,
            y: 0,
            width: 32,
            height: 64,
        };
        let corner = PresenceRoi {
            x: 32,
            y: 32,
            width: 32,
            height: 32,
        };
        assert_eq!(
            measure((&frame).into(), Some(left), PresenceMeasure::Intensity),
            Ok(200.0)
        );
        assert_eq!(
            measure((&frame).into(), Some(left), PresenceMeasure::Edges),
            Ok(0.0)
        );
        assert_eq!(
            measure((&frame).into(), Some(corner), PresenceMeasure::Intensity),
            Ok(50.0)
        );
        assert_eq!(
            measure((&frame).into(), Some(corner), PresenceMeasure::Edges),
            Ok(100.0)
        );
        let whole = measure((&frame).into(), None, PresenceMeasure::Intensity).unwrap();
        assert!((whole - 112.5).abs() < 1e-3, "{whole}");
        let outside = PresenceRoi {
            x: 40,
            y: 0,
            width: 32,
            height: 8,
        };
        let error =
            measure((&frame).into(), Some(outside), PresenceMeasure::Intensity).unwrap_err();
        assert!(error.to_string().contains("64x64 frame"), "{error}");
    }

    #[test]
    fn a_large_region_is_sampled_but_measures_the_same() {
        // 2448x2048, a bright square in the middle: the sampled mean is within a grey level
        // of the exact one.
        let frame = image(2448, 2048, |x, y| {
            if (800..1600).contains(&x) && (600..1400).contains(&y) {
                220
            } else {
                30
            }
        });
        let exact =
            (800.0 * 800.0 * 220.0 + (2448.0 * 2048.0 - 640_000.0) * 30.0) / (2448.0 * 2048.0);
        let sampled = measure((&frame).into(), None, PresenceMeasure::Intensity).unwrap();
        assert!((sampled - exact as f32).abs() < 1.0, "{sampled} vs {exact}");
    }
}
