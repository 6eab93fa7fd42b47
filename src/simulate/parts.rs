//! Synthetic parts: a machined disc on a belt, with brushed texture, uneven light and sensor
//! noise, carrying at most one known defect whose true mask is drawn with it.
//!
//! Everything is drawn from a seeded ChaCha generator, so a seed names a reproducible line.
//! Used by the simulated camera, by `linesight train` and by the tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::part::GrayImage;

/// The kinds of defect the simulator draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A thin straight line, darker or brighter than the surface.
    Scratch,
    /// A small round blot.
    Spot,
    /// A dark, jagged path.
    Crack,
    /// A shallow round hollow, lit on one side and shadowed on the other.
    Dent,
}

impl DefectKind {
    /// The kind's name in configs, records and the API (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Spot => "spot",
            DefectKind::Crack => "crack",
            DefectKind::Dent => "dent",
        }
    }

    /// All kinds, in a fixed order.
    pub const ALL: [DefectKind; 4] = [
        DefectKind::Scratch,
        DefectKind::Spot,
        DefectKind::Crack,
        DefectKind::Dent,
    ];
}

/// Each defect kind's probability for one part. A part carries at most one defect, so the kinds
/// exclude each other: the part is defective with probability `total()` (at most 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefectProbabilities([f64; 4]);

impl DefectProbabilities {
    /// `rate` shared evenly among the kinds: the flat defect rate.
    pub fn uniform(rate: f64) -> DefectProbabilities {
        DefectProbabilities([rate / DefectKind::ALL.len() as f64; 4])
    }

    /// No defects at all.
    pub fn none() -> DefectProbabilities {
        DefectProbabilities([0.0; 4])
    }

    pub fn get(&self, kind: DefectKind) -> f64 {
        self.0[kind.index()]
    }

    /// Raises (or lowers) one kind's probability, held in [0, 1]; a NaN changes nothing.
    pub fn add(&mut self, kind: DefectKind, delta: f64) {
        let value = &mut self.0[kind.index()];
        if !delta.is_nan() {
            *value = (*value + delta).clamp(0.0, 1.0);
        }
    }

    /// The probability that a part has a defect of any kind, before clamping to 1.
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

impl DefectKind {
    /// Position in [`DefectKind::ALL`].
    fn index(self) -> usize {
        match self {
            DefectKind::Scratch => 0,
            DefectKind::Spot => 1,
            DefectKind::Crack => 2,
            DefectKind::Dent => 3,
        }
    }
}

/// One rendered part with its ground truth.
#[derive(Debug, Clone)]
pub struct SyntheticPart {
    pub image: GrayImage,
    /// 1 where the defect is, 0 elsewhere; same size as the image.
    pub mask: Vec<u8>,
    pub defect: Option<DefectKind>,
}

/// A reproducible stream of parts.
#[derive(Debug, Clone)]
pub struct PartGenerator {
    rng: ChaCha8Rng,
    width: u32,
    height: u32,
    defect_rate: f64,
}

impl PartGenerator {
    /// Parts of `width`×`height`, a share `defect_rate` of them defective.
    pub fn new(seed: u64, width: u32, height: u32, defect_rate: f64) -> PartGenerator {
        PartGenerator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            width,
            height,
            defect_rate,
        }
    }

    /// The next part at the generator's flat defect rate; its defect kind is drawn uniformly
    /// when it has one.
    pub fn next_part(&mut self) -> SyntheticPart {
        self.next_part_with(&DefectProbabilities::uniform(self.defect_rate))
    }

    /// The next part, its defect drawn with these per-kind probabilities (the simulated line's
    /// sensors set them part by part).
    pub fn next_part_with(&mut self, probabilities: &DefectProbabilities) -> SyntheticPart {
        let defect = self.draw_defect(probabilities);
        self.render(defect)
    }

    /// A defect (or none) drawn with these probabilities, without rendering a part.
    pub fn draw_defect(&mut self, probabilities: &DefectProbabilities) -> Option<DefectKind> {
        let weights = probabilities.0;
        // Equal kinds draw exactly as the flat rate always has (a Bernoulli draw, then a uniform
        // kind), so a seed names the same parts as before the line had sensors. `× 4` is exact.
        let uniform = weights.iter().all(|&w| w == weights[0]);
        let total = if uniform {
            weights[0] * weights.len() as f64
        } else {
            probabilities.total()
        };
        if !self.rng.gen_bool(total.clamp(0.0, 1.0)) {
            return None;
        }
        if uniform {
            return Some(DefectKind::ALL[self.rng.gen_range(0..DefectKind::ALL.len())]);
        }
        // gen_bool above was true, so total > 0.
        let mut left = self.rng.gen_range(0.0..total);
        let mut last = None;
        for kind in DefectKind::ALL {
            let weight = probabilities.get(kind);
            if weight > 0.0 {
                if left < weight {
                    return Some(kind);
                }
                left -= weight;
                last = Some(kind);
            }
        }
        // Rounding left a sliver past the last kind.
        last
    }

    /// A part with exactly this defect (or none).
    pub fn render(&mut self, defect: Option<DefectKind>) -> SyntheticPart {
        self.render_with(defect, None)
    }

    /// A part with this defect starting at `place` of the frame, `(x, y)` normalised to
    /// `[0, 1]` (a damaged roller marks every part it touches at the same place).
    pub fn render_at(&mut self, defect: DefectKind, place: (f32, f32)) -> SyntheticPart {
        self.render_with(Some(defect), Some(place))
    }

    fn render_with(
        &mut self,
        defect: Option<DefectKind>,
        place: Option<(f32, f32)>,
    ) -> SyntheticPart {
        let rng = &mut self.rng;
        let (w, h) = (self.width as usize, self.height as usize);
        let scale = w.min(h) as f32 / 256.0;
        let cx = w as f32 / 2.0 + rng.gen_range(-8.0..8.0) * scale;
        let cy = h as f32 / 2.0 + rng.gen_range(-8.0..8.0) * scale;
        let radius = rng.gen_range(90.0..102.0) * scale;
        let grain_phase = rng.gen_range(0.0..std::f32::consts::TAU);
        let grain_freq = rng.gen_range(0.30..0.42);
        let light_angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let light = (
            light_angle.cos() * 18.0 / w as f32,
            light_angle.sin() * 18.0 / h as f32,
        );
        let surface = rng.gen_range(140.0..165.0);

        let mut pixels = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32, y as f32);
                let inside = (fx - cx).hypot(fy - cy) < radius;
                let noise = gaussian(rng);
                pixels[y * w + x] = if inside {
                    let grain =
                        7.0 * (fy * grain_freq + grain_phase + 2.5 * (fx * 0.021).sin()).sin();
                    surface + grain + light.0 * (fx - cx) + light.1 * (fy - cy) + 4.0 * noise
                } else {
                    let belt = if (x / 16 + y / 16) % 2 == 0 {
                        48.0
                    } else {
                        40.0
                    };
                    belt + 3.0 * noise
                };
            }
        }

        let mut mask = vec![0u8; w * h];
        if let Some(kind) = defect {
            // Keep the defect well inside the part.
            let reach = radius - 30.0 * scale;
            let (angle, dist) = (
                rng.gen_range(0.0..std::f32::consts::TAU),
                rng.gen_range(0.0..reach),
            );
            let origin = match place {
                Some((x, y)) => (x.clamp(0.0, 1.0) * w as f32, y.clamp(0.0, 1.0) * h as f32),
                None => (cx + dist * angle.cos(), cy + dist * angle.sin()),
            };
            draw_defect(rng, kind, origin, scale, w, h, &mut pixels, &mut mask);
        }

        let pixels = pixels
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        SyntheticPart {
            // Sizes match by construction.
            image: GrayImage::new(self.width, self.height, pixels)
                .expect("pixel count matches size"),
            mask,
            defect,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_defect(
    rng: &mut ChaCha8Rng,
    kind: DefectKind,
    (ox, oy): (f32, f32),
    scale: f32,
    w: usize,
    h: usize,
    pixels: &mut [f32],
    mask: &mut [u8],
) {
    let sign = if rng.gen_bool(0.7) { -1.0 } else { 1.0 };
    match kind {
        DefectKind::Scratch => {
            let len = rng.gen_range(30.0..70.0) * scale;
            let a: f32 = rng.gen_range(0.0..std::f32::consts::PI);
            let (dx, dy) = (a.cos() * len / 2.0, a.sin() * len / 2.0);
            let segment = [(ox - dx, oy - dy), (ox + dx, oy + dy)];
            paint_path(&segment, 1.6 * scale, sign * 45.0, w, h, pixels, mask);
        }
        DefectKind::Crack => {
            let mut points = vec![(ox, oy)];
            let mut a: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
            for _ in 0..rng.gen_range(9..15) {
                a += rng.gen_range(-0.7..0.7);
                let (px, py) = points[points.len() - 1];
                points.push((px + 5.0 * scale * a.cos(), py + 5.0 * scale * a.sin()));
            }
            paint_path(&points, 1.3 * scale, -60.0, w, h, pixels, mask);
        }
        DefectKind::Spot => {
            let r = rng.gen_range(4.0..9.0) * scale;
            paint_disc((ox, oy), r, w, h, |_, _, _| sign * 55.0, pixels, mask);
        }
        DefectKind::Dent => {
            let r = rng.gen_range(12.0..20.0) * scale;
            let a: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
            let (ca, sa) = (a.cos(), a.sin());
            paint_disc(
                (ox, oy),
                r,
                w,
                h,
                |dx, dy, d| 40.0 * (dx * ca + dy * sa) / r * (1.0 - (d / r).powi(2)) - 10.0,
                pixels,
                mask,
            );
        }
    }
}

/// Adds `delta` along a polyline of half-width `half_width`, marking the mask.
fn paint_path(
    points: &[(f32, f32)],
    half_width: f32,
    delta: f32,
    w: usize,
    h: usize,
    pixels: &mut [f32],
    mask: &mut [u8],
) {
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let (minx, maxx) = (x0.min(x1) - half_width - 1.0, x0.max(x1) + half_width + 1.0);
        let (miny, maxy) = (y0.min(y1) - half_width - 1.0, y0.max(y1) + half_width + 1.0);
        for y in clamp_range(miny, maxy, h) {
            for x in clamp_range(minx, maxx, w) {
                let d = distance_to_segment((x as f32, y as f32), (x0, y0), (x1, y1));
                let i = y * w + x;
                if d <= half_width && mask[i] == 0 {
                    pixels[i] += delta;
                    mask[i] = 1;
                }
            }
        }
    }
}

/// Adds `delta(dx, dy, distance)` inside a disc, marking the mask.
#[allow(clippy::too_many_arguments)]
fn paint_disc(
    (cx, cy): (f32, f32),
    r: f32,
    w: usize,
    h: usize,
    delta: impl Fn(f32, f32, f32) -> f32,
    pixels: &mut [f32],
    mask: &mut [u8],
) {
    for y in clamp_range(cy - r - 1.0, cy + r + 1.0, h) {
        for x in clamp_range(cx - r - 1.0, cx + r + 1.0, w) {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let d = dx.hypot(dy);
            if d <= r {
                let i = y * w + x;
                pixels[i] += delta(dx, dy, d);
                mask[i] = 1;
            }
        }
    }
}

fn clamp_range(lo: f32, hi: f32, n: usize) -> std::ops::Range<usize> {
    let lo = lo.floor().max(0.0) as usize;
    let hi = (hi.ceil().max(0.0) as usize + 1).min(n);
    lo.min(hi)..hi
}

fn distance_to_segment((px, py): (f32, f32), (x0, y0): (f32, f32), (x1, y1): (f32, f32)) -> f32 {
    let (vx, vy) = (x1 - x0, y1 - y0);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 {
        (((px - x0) * vx + (py - y0) * vy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (px - (x0 + t * vx)).hypot(py - (y0 + t * vy))
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Writes simulated parts as a dataset in the MVTec AD layout under `root`, the layout the
/// training commands read: `n_train` good parts in `train/good`; `n_test` good parts in
/// `test/good` and as many defective ones in `test/defect` (each defect kind in turn), their
/// masks in `ground_truth/defect`. For onboarding a product from the simulated line's own
/// parts, and for tests and benchmarks that need a model of it.
pub fn write_mvtec_layout(
    root: &std::path::Path,
    generator: &mut PartGenerator,
    n_train: usize,
    n_test: usize,
) -> Result<(), crate::record::RecordError> {
    let write = |path: std::path::PathBuf, image: &GrayImage| {
        let io = |source| crate::record::RecordError::Image {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, crate::record::gray_png(image)?).map_err(io)
    };
    for i in 0..n_train {
        write(
            root.join(format!("train/good/{i:03}.png")),
            &generator.render(None).image,
        )?;
    }
    for i in 0..n_test {
        write(
            root.join(format!("test/good/{i:03}.png")),
            &generator.render(None).image,
        )?;
        let part = generator.render(Some(DefectKind::ALL[i % DefectKind::ALL.len()]));
        write(root.join(format!("test/defect/{i:03}.png")), &part.image)?;
        let (width, height) = (part.image.width, part.image.height);
        let mask = GrayImage {
            width,
            height,
            pixels: part.mask.iter().map(|m| m * 255).collect(),
        };
        write(
            root.join(format!("ground_truth/defect/{i:03}_mask.png")),
            &mask,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_kinds_name_is_its_serde_name() {
        for kind in DefectKind::ALL {
            assert_eq!(serde_json::to_value(kind).ok(), Some(kind.as_str().into()));
        }
    }
    use super::*;

    #[test]
    fn same_seed_same_parts() {
        let a = PartGenerator::new(3, 64, 64, 0.5).next_part();
        let b = PartGenerator::new(3, 64, 64, 0.5).next_part();
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
    }

    #[test]
    fn defect_has_mask_and_changes_pixels_good_part_has_none() {
        let mut generator = PartGenerator::new(11, 256, 256, 0.0);
        for kind in DefectKind::ALL {
            let mut with = generator.clone();
            let good = generator.render(None);
            let bad = with.render(Some(kind));
            assert!(good.mask.iter().all(|&m| m == 0));
            let marked = bad.mask.iter().filter(|&&m| m == 1).count();
            assert!(marked > 20, "{kind:?} marks {marked} pixels");
            // Where the mask is set, the defect visibly changes the surface on average.
            let change: f32 = bad
                .mask
                .iter()
                .zip(bad.image.pixels.iter().zip(&good.image.pixels))
                .filter(|(m, _)| **m == 1)
                .map(|(_, (b, g))| (f32::from(*b) - f32::from(*g)).abs())
                .sum::<f32>()
                / marked as f32;
            assert!(
                change > 8.0,
                "{kind:?} changes pixels by {change} on average"
            );
        }
    }

    #[test]
    fn drawn_kinds_follow_their_probabilities() {
        let mut generator = PartGenerator::new(9, 8, 8, 0.0);
        let mut probabilities = DefectProbabilities::none();
        probabilities.add(DefectKind::Crack, 0.4);
        probabilities.add(DefectKind::Spot, 0.1);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..20_000 {
            *counts
                .entry(generator.draw_defect(&probabilities))
                .or_insert(0usize) += 1;
        }
        let share = |kind| counts.get(&kind).copied().unwrap_or(0) as f64 / 20_000.0;
        assert!(
            (share(Some(DefectKind::Crack)) - 0.4).abs() < 0.02,
            "{counts:?}"
        );
        assert!(
            (share(Some(DefectKind::Spot)) - 0.1).abs() < 0.01,
            "{counts:?}"
        );
        assert!((share(None) - 0.5).abs() < 0.02, "{counts:?}");
        assert_eq!(share(Some(DefectKind::Scratch)), 0.0);
        assert_eq!(share(Some(DefectKind::Dent)), 0.0);
    }

    #[test]
    fn kinds_past_certainty_share_in_proportion() {
        let mut generator = PartGenerator::new(2, 8, 8, 0.0);
        let mut probabilities = DefectProbabilities::none();
        probabilities.add(DefectKind::Crack, 0.9);
        probabilities.add(DefectKind::Dent, 0.3);
        let draws: Vec<_> = (0..4000)
            .map(|_| generator.draw_defect(&probabilities))
            .collect();
        assert!(draws.iter().all(Option::is_some));
        let cracks = draws
            .iter()
            .filter(|d| **d == Some(DefectKind::Crack))
            .count();
        assert!((2850..3150).contains(&cracks), "{cracks} cracks of 4000");
    }

    #[test]
    fn flat_rate_draws_as_before_the_sensors_came() {
        // The draw before per-kind probabilities existed, kept here to hold it.
        let mut old = ChaCha8Rng::seed_from_u64(17);
        let mut generator = PartGenerator::new(17, 8, 8, 0.3);
        for _ in 0..2000 {
            let expected = if old.gen_bool(0.3) {
                Some(DefectKind::ALL[old.gen_range(0..DefectKind::ALL.len())])
            } else {
                None
            };
            assert_eq!(
                generator.draw_defect(&DefectProbabilities::uniform(0.3)),
                expected
            );
        }
    }

    #[test]
    fn defect_rate_is_respected() {
        let mut generator = PartGenerator::new(5, 32, 32, 0.3);
        let defective = (0..400)
            .filter(|_| generator.next_part().defect.is_some())
            .count();
        assert!((90..150).contains(&defective), "{defective} of 400");
    }
}
