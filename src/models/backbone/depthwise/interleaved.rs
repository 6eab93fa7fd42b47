//! The depthwise convolution of small planes, a vector's worth of channels at a time.
//!
//! The plane-by-plane kernel (in `depthwise.rs`) runs a plane's output rows in vectors. A plane
//! narrower than a vector (8 columns at input 128 past stride 16, 6 at 96) leaves the rest of
//! each vector idle, and in a plane one vector wide (16 columns past stride 16 at 256) every
//! tap but the first loads across two cache lines. Here the channels are interleaved instead:
//! `lanes` planes are copied into one padded buffer whose every pixel holds one value of each,
//! so that a vector is one pixel of `lanes` channels. Every lane then does work whatever the
//! plane's width, every load is one aligned vector, each tap's weights are one vector, and
//! several pixels accumulate side by side (independent chains through the FMA latency). The
//! price is the interleaving itself, each value moved once on the way in and once on the way
//! out: 16×16 transposes in AVX-512 registers where the CPU has them, value by value elsewhere.
//! It pays only for small planes ([`DepthwiseConv::interleaves`]).

use std::mem::MaybeUninit;

use super::{DepthwiseConv, MAX_LANES, SamePadding};

/// The most taps a kernel interleaved may have (5×5, Lite0's widest).
pub(super) const MAX_TAPS: usize = 25;

/// The geometry of one image's planes, interleaved and padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Interleaving {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    stride: usize,
    top: usize,
    left: usize,
    /// Rows and columns of the padded buffer (pixels, each of `lanes` values).
    rows: usize,
    cols: usize,
    lanes: usize,
}

impl Interleaving {
    pub(super) fn new(conv: &DepthwiseConv, h: usize, w: usize, lanes: usize) -> Interleaving {
        let (ho, wo) = conv.output_size(h, w);
        let pad = SamePadding::new(h, w, conv.kernel, conv.stride);
        Interleaving {
            h,
            w,
            ho,
            wo,
            kernel: conv.kernel,
            stride: conv.stride,
            top: pad.top,
            left: pad.left,
            rows: ((ho - 1) * conv.stride + conv.kernel).max(pad.top + h),
            cols: ((wo - 1) * conv.stride + conv.kernel).max(pad.left + w),
            lanes,
        }
    }

    /// Values in the padded buffer.
    fn len(&self) -> usize {
        self.rows * self.cols * self.lanes
    }

    /// Offset in the padded buffer of each tap `(ky, kx)` (row-major) for output `(0, 0)`.
    pub(super) fn tap_offsets(&self) -> Vec<usize> {
        (0..self.kernel)
            .flat_map(|ky| (0..self.kernel).map(move |kx| (ky * self.cols + kx) * self.lanes))
            .collect()
    }
}

/// A thread's padded buffer and output tile, kept between groups, layers and images.
#[derive(Debug, Default)]
pub(super) struct InterleavedBuffers {
    geometry: Option<Interleaving>,
    /// The padded pixels, from the first vector-aligned value of `padded_store`.
    padded_store: Vec<f32>,
    /// One group's output pixels, `lanes` values each.
    tile: Vec<f32>,
}

impl InterleavedBuffers {
    /// The padded buffer for `geometry`, zero wherever no input lands. A buffer last used
    /// for the same geometry has zero padding already, and its inside is overwritten.
    fn prepare(&mut self, geometry: &Interleaving) -> (&mut [f32], &mut [f32]) {
        let align = MAX_LANES;
        if self.geometry != Some(*geometry) {
            self.padded_store.clear();
            self.padded_store.resize(geometry.len() + align, 0.0);
            self.tile.clear();
            self.tile
                .resize(geometry.ho * geometry.wo * geometry.lanes, 0.0);
            self.geometry = Some(*geometry);
        }
        // Every load is then one aligned vector (a split load costs two).
        let skip = self
            .padded_store
            .as_ptr()
            .align_offset(align * size_of::<f32>())
            .min(align);
        let padded = &mut self.padded_store[skip..skip + geometry.len()];
        (padded, &mut self.tile)
    }
}

/// One group of up to `lanes` channels of one image, interleaved, filtered and written back
/// plane by plane.
pub(super) struct ConvolveGroup<'a> {
    pub(super) conv: &'a DepthwiseConv,
    pub(super) geometry: &'a Interleaving,
    /// [`Interleaving::tap_offsets`]
    pub(super) offsets: &'a [usize],
    /// The group's first channel and how many it has (at most `lanes`).
    pub(super) first: usize,
    pub(super) count: usize,
    /// The group's input planes, `h × w` each, one after another.
    pub(super) input: &'a [f32],
    /// The group's output planes, `ho × wo` each, one after another; every value is written.
    pub(super) out: &'a mut [MaybeUninit<f32>],
    pub(super) buffers: &'a mut InterleavedBuffers,
    /// Whether to interleave with AVX-512 transposes ([`transposes_available`]).
    pub(super) transposes: bool,
}

/// Whether the interleaving can run as AVX-512 transposes with vectors of `lanes` values.
pub(super) fn transposes_available(lanes: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return lanes == 16 && avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

impl pulp::WithSimd for ConvolveGroup<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let g = self.geometry;
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        debug_assert_eq!(lanes, g.lanes);
        let (padded, tile) = self.buffers.prepare(g);
        let channels = self.first..self.first + self.count;
        if self.transposes {
            let activation = self.conv.input_activation.as_ref().map(|a| {
                let mut bias = [0f32; 16];
                bias[..self.count].copy_from_slice(&a.bias[channels.clone()]);
                (bias, a.relu6)
            });
            // SAFETY: `transposes` is set only where the CPU has AVX-512F and vectors are 16
            // lanes; the group's planes and `g`'s buffer are as the function needs.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let activation = activation.as_ref().map(|(bias, relu6)| (bias, *relu6));
                avx512::interleave(g, self.input, self.count, activation, padded)
            };
        } else {
            interleave(self.conv, g, self.input, channels, padded);
        }
        // Each tap's weights and the bias as one vector per group: lanes past `count` are zero
        // (their sums are never stored).
        let k2 = g.kernel * g.kernel;
        let mut taps = [0f32; MAX_LANES * MAX_TAPS];
        let mut bias = [0f32; MAX_LANES];
        for (lane, channel) in (self.first..self.first + self.count).enumerate() {
            for (t, &weight) in self.conv.weight[channel * k2..(channel + 1) * k2]
                .iter()
                .enumerate()
            {
                taps[t * lanes + lane] = weight;
            }
            bias[lane] = self.conv.bias[channel];
        }
        let run = PixelRun {
            padded,
            taps: S::as_simd_f32s(&taps[..k2 * lanes]).0,
            offsets: self.offsets,
            bias: S::as_simd_f32s(&bias[..lanes]).0[0],
            relu6: self.conv.relu6,
        };
        // Output pixels in reading order, eight at a time (eight independent chains), each
        // reading its own corner of the padded buffer.
        let pixels = g.ho * g.wo;
        // Each pixel's corner, walked in reading order (a division per pixel cost more than
        // the pixel's taps).
        let mut corners = Corners { g, oy: 0, ox: 0 };
        let tile = &mut tile[..pixels * lanes];
        let mut p = 0;
        while p + 8 <= pixels {
            let at = std::array::from_fn(|_| corners.next());
            run.pixels::<8>(simd, at, &mut tile[p * lanes..]);
            p += 8;
        }
        while p + 4 <= pixels {
            let at = std::array::from_fn(|_| corners.next());
            run.pixels::<4>(simd, at, &mut tile[p * lanes..]);
            p += 4;
        }
        while p < pixels {
            run.pixels::<1>(simd, [corners.next()], &mut tile[p * lanes..]);
            p += 1;
        }
        // Back to planes.
        if self.transposes {
            // SAFETY: as for the interleaving above; `tile` holds `pixels` of 16 values and
            // `out` the group's `count` planes.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::deinterleave(tile, pixels, self.count, self.out)
            };
            return;
        }
        for (lane, plane) in self
            .out
            .chunks_exact_mut(pixels)
            .take(self.count)
            .enumerate()
        {
            for (d, pixel) in plane.iter_mut().zip(tile.chunks_exact(lanes)) {
                d.write(pixel[lane]);
            }
        }
    }
}

/// Input planes `input` of channels `channels` into the inside of `padded`, through the
/// convolution's input activation.
#[inline(always)]
fn interleave(
    conv: &DepthwiseConv,
    g: &Interleaving,
    input: &[f32],
    channels: std::ops::Range<usize>,
    padded: &mut [f32],
) {
    let planes = input.chunks_exact(g.h * g.w);
    for ((lane, channel), plane) in channels.enumerate().zip(planes) {
        // One copy of the loop per activation, so that none branches per value.
        match conv.input_activation.as_ref() {
            Some(a) if a.relu6 => {
                let bias = a.bias[channel];
                g.scatter(plane, lane, padded, |v| (v + bias).clamp(0.0, 6.0))
            }
            Some(a) => {
                let bias = a.bias[channel];
                g.scatter(plane, lane, padded, |v| v + bias)
            }
            None => g.scatter(plane, lane, padded, |v| v),
        }
    }
}

impl Interleaving {
    /// Plane `plane` (`h × w`) into lane `lane` of the inside of `padded`.
    #[inline(always)]
    fn scatter(
        &self,
        plane: &[f32],
        lane: usize,
        padded: &mut [f32],
        activate: impl Fn(f32) -> f32,
    ) {
        for (y, row) in plane.chunks_exact(self.w).enumerate() {
            let start = ((y + self.top) * self.cols + self.left) * self.lanes + lane;
            let pixels = padded[start..].iter_mut().step_by(self.lanes);
            for (d, &v) in pixels.zip(row) {
                *d = activate(v);
            }
        }
    }
}

/// The offset in the padded buffer of tap `(0, 0)` of each output pixel, in reading order.
struct Corners<'a> {
    g: &'a Interleaving,
    oy: usize,
    ox: usize,
}

impl Corners<'_> {
    #[inline(always)]
    fn next(&mut self) -> usize {
        let g = self.g;
        let corner = (self.oy * g.stride * g.cols + self.ox * g.stride) * g.lanes;
        self.ox += 1;
        if self.ox == g.wo {
            (self.oy, self.ox) = (self.oy + 1, 0);
        }
        corner
    }
}

/// What every run of output pixels of one group shares.
struct PixelRun<'a, S: pulp::Simd> {
    padded: &'a [f32],
    /// One vector per tap, row-major.
    taps: &'a [S::f32s],
    offsets: &'a [usize],
    bias: S::f32s,
    relu6: bool,
}

impl<S: pulp::Simd> PixelRun<'_, S> {
    /// `N` output pixels whose tap `(0, 0)` reads `corners[j]`, into `tile[j · lanes..]`.
    #[inline(always)]
    fn pixels<const N: usize>(&self, simd: S, corners: [usize; N], tile: &mut [f32]) {
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        let mut acc = [self.bias; N];
        // One check for every load below: a checked slice per load cost three instructions
        // beside each multiply-add.
        let max_offset = self.offsets.iter().copied().max().unwrap_or(0);
        assert!(
            corners
                .iter()
                .all(|&c| c + max_offset + lanes <= self.padded.len())
        );
        for (&tap, &offset) in self.taps.iter().zip(self.offsets) {
            for (a, &corner) in acc.iter_mut().zip(&corners) {
                let from = corner + offset;
                // SAFETY: `offset ≤ max_offset`: `from + lanes` is within the check above.
                let values = unsafe { self.padded.get_unchecked(from..from + lanes) };
                *a = simd.mul_add_e_f32s(tap, S::as_simd_f32s(values).0[0], *a);
            }
        }
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        let (dst, _) = S::as_mut_simd_f32s(&mut tile[..N * lanes]);
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = if self.relu6 {
                simd.min_f32s(simd.max_f32s(a, zero), six)
            } else {
                a
            };
        }
    }
}

/// Interleaving sixteen channels at a time with AVX-512 16×16 transposes: about a quarter of
/// an instruction a value, where moving the values one by one took most of the interleaved
/// kernel's time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::Interleaving;
    use crate::models::backbone::bf16::x86::lanes;

    /// Whether this CPU runs the transposes.
    pub(in super::super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// Transposes the 16×16 block `rows` in place (row `i`, lane `j` → row `j`, lane `i`).
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(rows: &mut [__m512; 16]) {
        let r = rows;
        let mut t = [_mm512_setzero_ps(); 16];
        // Pairs of rows interleaved within each 128-bit quarter.
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Quarter q of r[4i + c] now holds column 4q + c of rows 4i .. 4i + 4.
        for i in 0..4 {
            let (a0, a1) = (_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 1]));
            let (b0, b1) = (
                _mm512_castps_pd(t[4 * i + 2]),
                _mm512_castps_pd(t[4 * i + 3]),
            );
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
        }
        // Quarters gathered across row groups: (0, 4) and (8, 12), then (0, 8).
        for half in 0..2 {
            for c in 0..4 {
                let (a, b) = (r[8 * half + c], r[8 * half + 4 + c]);
                t[8 * half + c] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * half + 4 + c] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        for c in 0..8 {
            r[c] = _mm512_shuffle_f32x4::<0x88>(t[c], t[8 + c]);
            r[8 + c] = _mm512_shuffle_f32x4::<0xdd>(t[c], t[8 + c]);
        }
    }

    /// Channels `count` (at most 16) of `planes` (`h × w` each, one after another) into the
    /// inside of the 16-lane `padded`, through `activation` (`(bias per channel, relu6)`).
    ///
    /// # Safety
    /// The CPU has AVX-512F ([`available`]); `g.lanes` is 16, `planes` holds `count` planes
    /// and `padded` is `g`'s buffer.
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn interleave(
        g: &Interleaving,
        planes: &[f32],
        count: usize,
        activation: Option<(&[f32; 16], bool)>,
        padded: &mut [f32],
    ) {
        debug_assert!(g.lanes == 16 && count <= 16 && planes.len() >= count * g.h * g.w);
        let pixels = g.h * g.w;
        let (bias, relu6) = match activation {
            // SAFETY: `bias` is 16 values.
            Some((bias, relu6)) => (unsafe { _mm512_loadu_ps(bias.as_ptr()) }, relu6),
            None => (_mm512_setzero_ps(), false),
        };
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        for p0 in (0..pixels).step_by(16) {
            let width = (pixels - p0).min(16);
            let mask = lanes(width);
            let mut rows = [_mm512_setzero_ps(); 16];
            for (lane, row) in rows.iter_mut().enumerate().take(count) {
                // SAFETY: the masked lanes lie inside plane `lane`.
                *row =
                    unsafe { _mm512_maskz_loadu_ps(mask, planes.as_ptr().add(lane * pixels + p0)) };
            }
            // SAFETY: AVX-512F, as the caller promised.
            unsafe { transpose(&mut rows) };
            // One division per sixteen pixels: one per pixel cost more than the transposes.
            let (mut y, mut x) = (p0 / g.w, p0 % g.w);
            for &pixel in rows.iter().take(width) {
                let mut pixel = _mm512_add_ps(pixel, bias);
                if relu6 {
                    pixel = _mm512_min_ps(_mm512_max_ps(pixel, zero), six);
                }
                let at = ((y + g.top) * g.cols + x + g.left) * 16;
                x += 1;
                if x == g.w {
                    (y, x) = (y + 1, 0);
                }
                let dst = &mut padded[at..at + 16];
                // SAFETY: `dst` is 16 values.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), pixel) };
            }
        }
    }

    /// `tile`'s pixels (16 values each, `pixels` of them) back to the planes `out` (`pixels`
    /// each), the first `count` lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F ([`available`]); `tile` holds `pixels × 16` values and `out`
    /// `count × pixels`.
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn deinterleave(
        tile: &[f32],
        pixels: usize,
        count: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        debug_assert!(count <= 16 && tile.len() >= pixels * 16 && out.len() >= count * pixels);
        for p0 in (0..pixels).step_by(16) {
            let width = (pixels - p0).min(16);
            let mut rows = [_mm512_setzero_ps(); 16];
            for (j, row) in rows.iter_mut().enumerate().take(width) {
                let from = &tile[(p0 + j) * 16..(p0 + j + 1) * 16];
                // SAFETY: `from` is 16 values.
                *row = unsafe { _mm512_loadu_ps(from.as_ptr()) };
            }
            // SAFETY: AVX-512F, as the caller promised.
            unsafe { transpose(&mut rows) };
            let mask = lanes(width);
            for (lane, &row) in rows.iter().enumerate().take(count) {
                let dst = &mut out[lane * pixels + p0..lane * pixels + p0 + width];
                // SAFETY: the masked lanes are `dst`'s `width` values.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().cast(), mask, row) };
            }
        }
    }
}
