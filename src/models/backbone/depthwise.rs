//! Fast CPU kernels for the backbone, as candle custom ops: the depthwise convolution, and
//! bias + ReLU6 fused into one in-place pass.
//!
//! candle runs grouped convolutions one group at a time (about 3 GFLOP/s here), which makes an
//! EfficientNet spend most of its time in its depthwise layers. [`DepthwiseConv`] works on whole
//! channel planes: each input plane is zero-padded and (for stride 2) split into its even and
//! odd columns once, so every tap of an output row reads one contiguous run; a run of output
//! columns is then accumulated over all k×k taps in SIMD registers and stored once, with bias
//! and ReLU6 applied on the way out. [`pulp`] picks the widest instruction set the CPU has at
//! run time (AVX2 + FMA on any x86-64 from the last decade), so the release build needs no
//! `target-cpu` flag. Channels run in parallel; in a block computed in bands of rows
//! ([`super::banded`]) each thread filters its own rows of every channel instead. The same
//! kernel runs the stem on a grey image: every output channel reads the one input plane.
//! Planes a few pixels wide (past stride 16 at inputs of 128 and 96) would leave most of each
//! vector idle: those layers (and 16-wide ones of 5×5 kernels at stride 1) filter a vector's
//! worth of channels at a time, interleaved by AVX-512 transposes or value by value on CPUs
//! without them ([`interleaved`]). On an NVIDIA GPU (`depthwise/cuda.rs`, `cuda` feature) both ops are one kernel launch each; other
//! devices fall back to candle's own ops. (The 1×1 convolutions are gemm calls, see
//! [`super::pointwise`]: 85–180 GFLOP/s on the Intel Xeon measured, about 335 on the AMD Zen 5.)

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;
mod interleaved;

use self::interleaved::{ConvolveGroup, InterleavedBuffers, Interleaving};

/// Padding on each side, TensorFlow "same" style (the extra pixel goes bottom/right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamePadding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl SamePadding {
    /// TF "same" padding of a `kernel` × `kernel` conv with `stride` over an `h` × `w` input.
    pub fn new(h: usize, w: usize, kernel: usize, stride: usize) -> SamePadding {
        let total = |n: usize| ((n.div_ceil(stride) - 1) * stride + kernel).saturating_sub(n);
        let (ph, pw) = (total(h), total(w));
        SamePadding {
            top: ph / 2,
            bottom: ph - ph / 2,
            left: pw / 2,
            right: pw - pw / 2,
        }
    }
}

/// A depthwise k×k convolution with folded batch norm, optionally followed by ReLU6.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// `[channels, k, k]`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
    relu6: bool,
    /// Every output channel reads input channel 0 (a k×k convolution of one plane to
    /// `channels` planes) instead of its own.
    shared_input: bool,
    /// The previous layer's bias and activation, applied as each input plane is padded (one
    /// pass over the input saved).
    input_activation: Option<BiasActivation>,
    /// Whether the CPU kernel interleaves the channels of small planes
    /// ([`DepthwiseConv::interleaves`]).
    interleave: Interleave,
    /// On the model's device, for the GPU kernel and candle's ops: `[channels, 1, k, k]` and
    /// `[channels]`.
    weight_tensor: Tensor,
    bias_tensor: Tensor,
}

impl DepthwiseConv {
    /// `weight` is `[channels, 1, k, k]`, `bias` is `[channels]`.
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        relu6: bool,
    ) -> candle_core::Result<DepthwiseConv> {
        let (channels, one, kernel, kernel_w) = weight.dims4()?;
        if one != 1 || kernel != kernel_w {
            candle_core::bail!(
                "depthwise weight must be [c, 1, k, k], got {:?}",
                weight.dims()
            );
        }
        Ok(DepthwiseConv {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            bias: bias.to_vec1::<f32>()?,
            channels,
            kernel,
            stride,
            relu6,
            shared_input: false,
            input_activation: None,
            interleave: Interleave::Auto,
            weight_tensor: weight.contiguous()?,
            bias_tensor: bias.contiguous()?,
        })
    }

    /// A k×k convolution of a one-channel input to `channels` outputs (`weight` is
    /// `[channels, 1, k, k]`), on the same kernel.
    pub fn from_one_plane(
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        relu6: bool,
    ) -> candle_core::Result<DepthwiseConv> {
        Ok(DepthwiseConv {
            shared_input: true,
            ..DepthwiseConv::new(weight, bias, stride, relu6)?
        })
    }

    /// The same convolution on inputs that still lack the previous layer's bias and activation
    /// (`activation`, one bias per input channel): it applies them as it reads the input. (Not
    /// for a convolution [`DepthwiseConv::from_one_plane`]: its input is an image.)
    pub fn with_input_activation(self, activation: BiasActivation) -> DepthwiseConv {
        DepthwiseConv {
            input_activation: Some(activation),
            ..self
        }
    }

    /// The same convolution, its CPU kernel told when to interleave the channels of a layer's
    /// planes (for tests and benches; [`Interleave::Auto`] otherwise).
    pub fn with_interleaving(self, interleave: Interleave) -> DepthwiseConv {
        DepthwiseConv { interleave, ..self }
    }

    fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.stride), w.div_ceil(self.stride))
    }

    /// Whether the CPU kernel filters `h × w` planes a vector's worth of channels at a time
    /// ([`interleaved`]) rather than plane by plane.
    fn interleaves(&self, h: usize, w: usize) -> bool {
        if self.shared_input || self.kernel * self.kernel > interleaved::MAX_TAPS {
            return false;
        }
        match self.interleave {
            Interleave::Always | Interleave::Scalar => true,
            Interleave::Never => false,
            Interleave::Auto => {
                let (_, wo) = self.output_size(h, w);
                wo <= INTERLEAVE_MAX_WIDTH
                    || (wo <= INTERLEAVE_MAX_WIDTH_5X5 && self.kernel >= 5 && self.stride == 1)
            }
        }
    }
}

/// Output planes at most this wide are filtered with their channels interleaved, and those at
/// most [`INTERLEAVE_MAX_WIDTH_5X5`] wide when each output reads 25 inputs or more (5×5, stride
/// 1): the interleaving moves each input and output value once whatever the kernel, so it pays
/// where each value feeds many taps. Chosen layer by layer (`cargo bench --bench backbone --
/// input`: each of Lite0's depthwise layers with outputs up to 32 wide, at inputs 256, 128 and
/// 96, both ways; the 2-core Zen 5), plane by plane against interleaved: 6 to 12 wide,
/// interleaved took 15 to 55 % less time (block 9 at 96, 6 wide: 46 against 22 µs); 16 wide,
/// 8 to 31 % less for 5×5 at stride 1 (block 4 at 128: 40 against 28 µs; block 9 at 256: 75
/// against 70 µs), 12 to 35 % more for 3×3 or stride 2; 24 and 32 wide, 8 to 102 % more.
const INTERLEAVE_MAX_WIDTH: usize = 12;
/// See [`INTERLEAVE_MAX_WIDTH`].
const INTERLEAVE_MAX_WIDTH_5X5: usize = 16;

/// When the CPU kernel interleaves the channels of a layer's planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interleave {
    /// For planes narrow enough that it pays.
    Auto,
    /// Whatever the planes' size.
    Always,
    /// Whatever the planes' size, moving the values one by one even where AVX-512 transposes
    /// them (for the tests: the path CPUs without AVX-512 take).
    Scalar,
    /// Never: plane by plane.
    Never,
}

impl Module for DepthwiseConv {
    /// `[b, c, h, w]` → `[b, c, ceil(h/s), ceil(w/s)]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if xs.device().is_cpu() || xs.device().is_cuda() {
            return xs.apply_op1_no_bwd(self);
        }
        self.forward_with_candle_ops(xs)
    }
}

impl DepthwiseConv {
    /// [`Module::forward`] with candle's ops, on any device: the path for devices without a
    /// kernel of ours, which a test holds equal to the CPU kernel.
    fn forward_with_candle_ops(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let activated;
        let xs = match &self.input_activation {
            Some(activation) => {
                activated = activation.apply_with_candle_ops(xs)?;
                &activated
            }
            None => xs,
        };
        let (_, _, h, w) = xs.dims4()?;
        let pad = SamePadding::new(h, w, self.kernel, self.stride);
        let padded = xs
            .pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?;
        let groups = if self.shared_input { 1 } else { self.channels };
        let ys = padded
            .conv2d(&self.weight_tensor, 0, self.stride, 1, groups)?
            .broadcast_add(&self.bias_tensor.reshape((1, self.channels, 1, 1))?)?;
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }
}

/// Computing a convolution a band of output rows at a time, for a block run in bands
/// ([`super::banded`]).
impl DepthwiseConv {
    /// Channels (in and out), kernel side and stride.
    pub(super) fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.kernel, self.stride)
    }

    /// `[ho, wo]` of an `h × w` input.
    pub(super) fn output_size_of(&self, h: usize, w: usize) -> (usize, usize) {
        self.output_size(h, w)
    }

    /// The input rows that output rows `rows` (not empty) of an `h × w` input read (padding
    /// aside).
    pub(super) fn input_rows(&self, h: usize, w: usize, rows: Range<usize>) -> Range<usize> {
        let top = SamePadding::new(h, w, self.kernel, self.stride).top;
        let first = (rows.start * self.stride).saturating_sub(top);
        let last = ((rows.end - 1) * self.stride + self.kernel).saturating_sub(top);
        first..last.min(h)
    }

    /// Whether [`DepthwiseConv::convolve_rows`] takes bands of `channels` channels: its own
    /// channels, not one shared plane, and an input activation (if any) as wide.
    pub(super) fn check_band_input(&self, channels: usize) -> candle_core::Result<()> {
        let activation = self.input_activation.as_ref().map(|a| a.bias.len());
        if self.shared_input
            || channels != self.channels
            || activation.is_some_and(|n| n != channels)
        {
            candle_core::bail!(
                "depthwise conv of {} channels cannot take bands of {channels}",
                self.channels
            );
        }
        Ok(())
    }

    /// Output rows `rows` of every plane of one image of `h × w` input planes, on the calling
    /// thread. `band` holds the input rows [`DepthwiseConv::input_rows`] names (still without
    /// the input activation, if the convolution has one), channel `c`'s at
    /// `band[c · band_stride..]`; `out` receives channel `c`'s rows at
    /// `out[c · rows.len() · wo..]`. The caller checks the channels first
    /// ([`DepthwiseConv::check_band_input`]); `rows` must not be empty.
    pub(super) fn convolve_rows(
        &self,
        band: &[f32],
        band_stride: usize,
        (h, w): (usize, usize),
        rows: Range<usize>,
        out: &mut [f32],
    ) {
        debug_assert!(!self.shared_input && !rows.is_empty());
        let (_, wo) = self.output_size(h, w);
        let pad = SamePadding::new(h, w, self.kernel, self.stride);
        let input_rows = self.input_rows(h, w, rows.clone());
        // Zero rows above the band: the plane's padding for its first band, none inside.
        let top = input_rows.start + pad.top - rows.start * self.stride;
        let geometry = PaddedPlane::band(
            input_rows.len(),
            w,
            rows.len(),
            wo,
            self.kernel,
            self.stride,
            top,
            pad.left,
        );
        let (plane_in, plane_out) = (input_rows.len() * w, rows.len() * wo);
        assert!(
            out.len() >= self.channels * plane_out,
            "{} values for {} planes of {plane_out}",
            out.len(),
            self.channels
        );
        let offsets = geometry.tap_offsets();
        let arch = pulp::Arch::new();
        // SAFETY: a `MaybeUninit<f32>` view of initialised `f32`s; the kernel writes only
        // initialised values through it.
        let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
        PADDING.with_borrow_mut(|scratch| {
            for (channel, out) in out
                .chunks_exact_mut(plane_out)
                .take(self.channels)
                .enumerate()
            {
                let plane = &band[channel * band_stride..][..plane_in];
                let input = self.raw_input(channel, plane, scratch);
                self.convolve_plane(arch, channel, input, out, &offsets, &geometry);
            }
        });
    }
}

impl DepthwiseConv {
    /// Channel `channel`'s input `plane`, to be padded into `scratch` with the input
    /// activation (if the convolution has one).
    fn raw_input<'a>(
        &self,
        channel: usize,
        plane: &'a [f32],
        scratch: &'a mut PaddingBuffer,
    ) -> PlaneInput<'a> {
        PlaneInput::Raw {
            plane,
            activation: (self.input_activation.as_ref()).map(|a| (a.bias[channel], a.relu6)),
            scratch,
        }
    }

    /// Output plane (or band of it) `out` of channel `channel` from `input`, on the widest
    /// instruction set `arch` has.
    fn convolve_plane(
        &self,
        arch: pulp::Arch,
        channel: usize,
        input: PlaneInput<'_>,
        out: &mut [MaybeUninit<f32>],
        offsets: &[usize],
        geometry: &PaddedPlane,
    ) {
        let k2 = self.kernel * self.kernel;
        arch.dispatch(ConvolvePlane {
            input,
            out,
            taps: &self.weight[channel * k2..(channel + 1) * k2],
            offsets,
            bias: self.bias[channel],
            relu6: self.relu6,
            geometry,
        });
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w) = self.check_input(layout)?;
        let c = self.channels;
        let input = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("depthwise conv needs a contiguous f32 input"),
        };
        if self.interleaves(h, w) {
            return Ok(self.convolve_interleaved(input, b, h, w));
        }
        let (ho, wo) = self.output_size(h, w);
        let geometry = PaddedPlane::new(h, w, ho, wo, self.kernel, self.stride);
        let len = b * c * ho * wo;
        // Every value is written exactly once below: no zeroing pass first (each layer's
        // output is megabytes at 256×256).
        let mut output: Vec<f32> = Vec::with_capacity(len);
        // The stem's one input plane serves all its outputs: pad it once.
        let shared: Vec<Vec<f32>> = if self.shared_input {
            input
                .par_chunks(h * w)
                .map(|plane| {
                    let mut padded = PaddingBuffer::default();
                    geometry.pad_into(plane, &mut padded, None);
                    padded.values
                })
                .collect()
        } else {
            Vec::new()
        };
        let arch = pulp::Arch::new();
        let k2 = self.kernel * self.kernel;
        let offsets = geometry.tap_offsets();
        // Late layers have hundreds of 16×16 planes: hand rayon a few planes per task, so that
        // each task does at least ~64k multiply-adds and scheduling stays a small cost.
        let planes_per_task = (65_536 / (ho * wo * k2).max(1)).clamp(1, 64);
        output.spare_capacity_mut()[..len]
            .par_chunks_mut(ho * wo * planes_per_task)
            .enumerate()
            .for_each(|(task, outs)| {
                PADDING.with_borrow_mut(|scratch| {
                    for (i, out) in outs.chunks_exact_mut(ho * wo).enumerate() {
                        let plane = task * planes_per_task + i;
                        let channel = plane % c;
                        let input = match shared.get(plane / c) {
                            Some(padded) => PlaneInput::Padded(padded),
                            None => self.raw_input(
                                channel,
                                &input[plane * h * w..(plane + 1) * h * w],
                                scratch,
                            ),
                        };
                        self.convolve_plane(arch, channel, input, out, &offsets, &geometry);
                    }
                })
            });
        // SAFETY: the chunks above cover all `len` values, plane by plane, and
        // `ConvolvePlane` writes every value of its plane (rows of wide runs, narrow vectors
        // and single columns: together every column of every row).
        unsafe { output.set_len(len) };
        Ok((CpuStorage::F32(output), Shape::from((b, c, ho, wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dims = self.check_input(layout)?;
        cuda::depthwise(self, storage, layout, dims)
    }
}

impl DepthwiseConv {
    /// [`CustomOp1::cpu_fwd`] of `b` images of `h × w` planes (checked), a vector's worth of
    /// channels at a time ([`interleaved`]).
    fn convolve_interleaved(
        &self,
        input: &[f32],
        b: usize,
        h: usize,
        w: usize,
    ) -> (CpuStorage, Shape) {
        let c = self.channels;
        let (ho, wo) = self.output_size(h, w);
        let arch = pulp::Arch::new();
        let lanes = arch.dispatch(VectorLanes);
        let geometry = Interleaving::new(self, h, w, lanes);
        let offsets = geometry.tap_offsets();
        let transposes =
            interleaved::transposes_available(lanes) && self.interleave != Interleave::Scalar;
        let len = b * c * ho * wo;
        let mut output: Vec<f32> = Vec::with_capacity(len);
        output.spare_capacity_mut()[..len]
            .par_chunks_mut(c * ho * wo)
            .zip(input.par_chunks(c * h * w))
            .for_each(|(outs, image)| {
                outs.par_chunks_mut(lanes * ho * wo)
                    .zip(image.par_chunks(lanes * h * w))
                    .enumerate()
                    .for_each(|(group, (out, input))| {
                        INTERLEAVED.with_borrow_mut(|buffers| {
                            arch.dispatch(ConvolveGroup {
                                conv: self,
                                geometry: &geometry,
                                offsets: &offsets,
                                first: group * lanes,
                                count: out.len() / (ho * wo),
                                input,
                                out,
                                buffers,
                                transposes,
                            })
                        })
                    })
            });
        // SAFETY: the groups cover every plane of every image, and `ConvolveGroup` writes
        // every value of each of its planes.
        unsafe { output.set_len(len) };
        (CpuStorage::F32(output), Shape::from((b, c, ho, wo)))
    }

    /// `(batch, h, w)` of an input this convolution takes, or why it does not take it.
    fn check_input(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (b, c_in, h, w) = layout.shape().dims4()?;
        if b == 0 || h == 0 || w == 0 {
            candle_core::bail!("depthwise conv of an empty input ({b} planes of {h}x{w})");
        }
        if self.shared_input && self.input_activation.is_some() {
            candle_core::bail!("a depthwise conv of one shared plane takes no input activation");
        }
        let want = if self.shared_input { 1 } else { self.channels };
        if c_in != want {
            candle_core::bail!("depthwise conv takes {want} channels, input has {c_in}");
        }
        if let Some(activation) = &self.input_activation
            && activation.bias.len() != c_in
        {
            candle_core::bail!(
                "input activation has {} channels, input has {c_in}",
                activation.bias.len()
            );
        }
        Ok((b, h, w))
    }
}

/// One input plane, zero-padded TF-"same" style and split into `stride` column phases, so that
/// every tap of every output row reads one contiguous run: output column `x` of tap `(ky, kx)`
/// reads phase `kx % stride`, row `y * stride + ky`, column `x + kx / stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PaddedPlane {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    stride: usize,
    top: usize,
    left: usize,
    /// Rows of the padded plane.
    rows: usize,
    /// Columns of each phase.
    phase_width: usize,
}

impl PaddedPlane {
    fn new(h: usize, w: usize, ho: usize, wo: usize, kernel: usize, stride: usize) -> PaddedPlane {
        let pad = SamePadding::new(h, w, kernel, stride);
        PaddedPlane::band(h, w, ho, wo, kernel, stride, pad.top, pad.left)
    }

    /// The geometry of a band of a plane: `h` input rows of `w` columns that need `top` zero
    /// rows above them (the plane's own padding, or none inside it), giving `ho` output rows;
    /// whatever the last output row reads below the band is zero too.
    #[allow(clippy::too_many_arguments)]
    fn band(
        h: usize,
        w: usize,
        ho: usize,
        wo: usize,
        kernel: usize,
        stride: usize,
        top: usize,
        left: usize,
    ) -> PaddedPlane {
        let rows = ((ho - 1) * stride + kernel).max(top + h);
        let width = ((wo - 1) * stride + kernel).max(left + w);
        PaddedPlane {
            h,
            w,
            ho,
            wo,
            kernel,
            stride,
            top,
            left,
            rows,
            phase_width: width.div_ceil(stride),
        }
    }

    /// Writes `plane` (`h × w`) padded and split into `buffer`, adding `bias` and clamping to
    /// ReLU6's range on the way when `activation` is `Some((bias, relu6))`.
    #[inline(always)]
    fn pad_into(&self, plane: &[f32], buffer: &mut PaddingBuffer, activation: Option<(f32, bool)>) {
        // A buffer last used for this same geometry has zero padding already, and its inside
        // is overwritten below: zeroing it again per plane cost about 2 % of the backbone's time.
        if buffer.geometry != Some(*self) {
            buffer.values.clear();
            // One vector of zeros past the end: a row's last partial run loads whole vectors.
            buffer
                .values
                .resize(self.stride * self.rows * self.phase_width + MAX_LANES, 0.0);
            buffer.geometry = Some(*self);
        }
        // One copy of the loops per activation, so that each compiles to vector code (with the
        // choice inside the loop it stayed scalar: a quarter of the depthwise layers' time).
        match activation {
            Some((bias, true)) => {
                self.copy_rows(plane, &mut buffer.values, |v| (v + bias).clamp(0.0, 6.0))
            }
            Some((bias, false)) => self.copy_rows(plane, &mut buffer.values, |v| v + bias),
            None => self.copy_rows(plane, &mut buffer.values, |v| v),
        }
    }

    /// The rows of `plane` into the inside of the padded `buffer`, through `activate`.
    #[inline(always)]
    fn copy_rows(&self, plane: &[f32], buffer: &mut [f32], activate: impl Fn(f32) -> f32) {
        let rows = plane.chunks_exact(self.w).take(self.h);
        match self.stride {
            1 => {
                for (y, row) in rows.enumerate() {
                    let start = (y + self.top) * self.phase_width + self.left;
                    for (d, &v) in buffer[start..start + self.w].iter_mut().zip(row) {
                        *d = activate(v);
                    }
                }
            }
            2 => {
                // Column x lands in phase (x + left) % 2 at (x + left) / 2: the even columns
                // fill one phase and the odd ones the other, pair by pair.
                let phase_size = self.rows * self.phase_width;
                let even_phase = self.left % 2;
                let even_start = self.left / 2;
                let odd_start = self.left.div_ceil(2);
                let pairs = self.w / 2;
                for (y, row) in rows.enumerate() {
                    let at = (y + self.top) * self.phase_width;
                    let (first, second) = buffer.split_at_mut(phase_size);
                    let (even, odd) = if even_phase == 0 {
                        (first, second)
                    } else {
                        (second, first)
                    };
                    let even = &mut even[at + even_start..at + even_start + self.w.div_ceil(2)];
                    let odd = &mut odd[at + odd_start..at + odd_start + pairs];
                    for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd) {
                        *e = activate(pair[0]);
                        *o = activate(pair[1]);
                    }
                    if self.w % 2 == 1 {
                        even[pairs] = activate(row[self.w - 1]);
                    }
                }
            }
            stride => {
                // Column x lands in phase (x + left) % stride at (x + left) / stride: walk each
                // phase's columns in order, so the writes are contiguous.
                for (y, row) in rows.enumerate() {
                    let py = y + self.top;
                    for phase in 0..stride {
                        let first = (phase + stride - self.left % stride) % stride;
                        let start = (phase * self.rows + py) * self.phase_width
                            + (first + self.left) / stride;
                        for (d, &v) in buffer[start..]
                            .iter_mut()
                            .zip(row.iter().skip(first).step_by(stride))
                        {
                            *d = activate(v);
                        }
                    }
                }
            }
        }
    }

    /// Offset in the padded buffer of each tap `(ky, kx)` (row-major) for output `(0, 0)`.
    fn tap_offsets(&self) -> Vec<usize> {
        (0..self.kernel)
            .flat_map(|ky| {
                (0..self.kernel).map(move |kx| {
                    ((kx % self.stride) * self.rows + ky) * self.phase_width + kx / self.stride
                })
            })
            .collect()
    }
}

/// One output plane of the depthwise convolution (bias, taps, optional ReLU6), vectorised for
/// the best instruction set the CPU has ([`pulp`] dispatches at run time). Each run of output
/// columns is accumulated in registers over all k×k taps and stored once.
struct ConvolvePlane<'a> {
    input: PlaneInput<'a>,
    /// Uninitialised: every value gets written once.
    out: &'a mut [MaybeUninit<f32>],
    taps: &'a [f32],
    /// [`PaddedPlane::tap_offsets`]
    offsets: &'a [usize],
    bias: f32,
    relu6: bool,
    geometry: &'a PaddedPlane,
}

impl pulp::WithSimd for ConvolvePlane<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let g = self.geometry;
        // Padding runs here, under the same instruction set as the convolution.
        let padded: &[f32] = match self.input {
            PlaneInput::Padded(padded) => padded,
            PlaneInput::Raw {
                plane,
                activation,
                scratch,
            } => {
                g.pad_into(plane, scratch, activation);
                &scratch.values
            }
        };
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        let run = RunContext {
            padded,
            taps: self.taps,
            offsets: self.offsets,
            max_offset: self.offsets.iter().copied().max().unwrap_or(0),
            bias: self.bias,
            relu6: self.relu6,
        };
        let row_step = g.stride * g.phase_width;
        let out = &mut self.out[..g.ho * g.wo];
        // Wide rows: runs of four vectors, two rows at a time: eight independent accumulator
        // chains, enough to keep both FMA pipes busy through their latency (Lite0's block 0 at
        // a 256 input: 89 µs, down from 104 with four chains, one row at a time).
        let wide = g.wo / (4 * lanes) * (4 * lanes);
        let mut oy = 0;
        while oy + 2 <= g.ho {
            for x in (0..wide).step_by(4 * lanes) {
                let at = oy * g.wo + x;
                run.block::<S, 2, 4>(simd, oy * row_step + x, row_step, &mut out[at..], g.wo);
            }
            oy += 2;
        }
        for oy in oy..g.ho {
            for x in (0..wide).step_by(4 * lanes) {
                let at = oy * g.wo + x;
                run.block::<S, 1, 4>(simd, oy * row_step + x, row_step, &mut out[at..], g.wo);
            }
        }
        // The remaining whole vectors of each row: four rows at a time, so that there are
        // still four independent chains (the 16-wide late layers live here).
        let narrow_end = g.wo / lanes * lanes;
        for x in (wide..narrow_end).step_by(lanes) {
            let mut oy = 0;
            while oy + 4 <= g.ho {
                let at = oy * g.wo + x;
                run.block::<S, 4, 1>(simd, oy * row_step + x, row_step, &mut out[at..], g.wo);
                oy += 4;
            }
            for oy in oy..g.ho {
                let at = oy * g.wo + x;
                run.block::<S, 1, 1>(simd, oy * row_step + x, row_step, &mut out[at..], g.wo);
            }
        }
        // Columns short of a vector: one partial vector per row, four rows at a time. Small
        // inputs live here (at input 128 the stride-16 planes are 8 wide, at 96 six, narrower
        // than one AVX-512 vector); scalar code made their depthwise layers a third of the
        // anomaly model's time.
        let tail = g.wo - narrow_end;
        if tail > 0 {
            let mut oy = 0;
            while oy + 4 <= g.ho {
                let at = oy * g.wo + narrow_end;
                let from = oy * row_step + narrow_end;
                run.partial_block::<S, 4>(simd, from, row_step, &mut out[at..], g.wo, tail);
                oy += 4;
            }
            for oy in oy..g.ho {
                let at = oy * g.wo + narrow_end;
                let from = oy * row_step + narrow_end;
                run.partial_block::<S, 1>(simd, from, row_step, &mut out[at..], g.wo, tail);
            }
        }
    }
}

/// f32 lanes of the widest vector pulp uses (AVX-512).
const MAX_LANES: usize = 16;

/// A padded plane and the geometry its padding was zeroed for.
#[derive(Debug, Default)]
struct PaddingBuffer {
    geometry: Option<PaddedPlane>,
    values: Vec<f32>,
}

thread_local! {
    /// Each thread's padding buffer, kept between planes, layers and images.
    static PADDING: std::cell::RefCell<PaddingBuffer> =
        std::cell::RefCell::new(PaddingBuffer::default());
    /// Each thread's buffers for interleaved groups of channels.
    static INTERLEAVED: std::cell::RefCell<InterleavedBuffers> =
        std::cell::RefCell::new(InterleavedBuffers::default());
}

/// The f32 lanes of the vectors pulp dispatches to.
struct VectorLanes;

impl pulp::WithSimd for VectorLanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        size_of::<S::f32s>() / size_of::<f32>()
    }
}

/// The input plane of one output plane.
enum PlaneInput<'a> {
    /// Already padded (the stem's one plane, shared by all its outputs).
    Padded(&'a [f32]),
    /// To be padded into `scratch`, with the previous layer's `(bias, relu6)` if it has one.
    Raw {
        plane: &'a [f32],
        activation: Option<(f32, bool)>,
        scratch: &'a mut PaddingBuffer,
    },
}

/// What every run of one output plane shares.
struct RunContext<'a> {
    padded: &'a [f32],
    taps: &'a [f32],
    /// [`PaddedPlane::tap_offsets`]
    offsets: &'a [usize],
    /// The largest of `offsets`.
    max_offset: usize,
    bias: f32,
    relu6: bool,
}

impl RunContext<'_> {
    /// `R` output rows × `V` vectors: input row `r` starts at padded offset
    /// `start + r·row_step`, output row `r` at `out[r·out_step..]`.
    #[inline(always)]
    fn block<S: pulp::Simd, const R: usize, const V: usize>(
        &self,
        simd: S,
        start: usize,
        row_step: usize,
        out: &mut [MaybeUninit<f32>],
        out_step: usize,
    ) {
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        let mut acc = [[simd.splat_f32s(self.bias); V]; R];
        // One check for every load below: a checked slice per load cost about three
        // instructions beside each multiply-add.
        assert!(start + (R - 1) * row_step + self.max_offset + V * lanes <= self.padded.len());
        for (&tap, &offset) in self.taps.iter().zip(self.offsets) {
            let tap = simd.splat_f32s(tap);
            for (r, acc) in acc.iter_mut().enumerate() {
                let from = start + r * row_step + offset;
                // SAFETY: `offset ≤ max_offset` and `r < R`: within the check above.
                let values = unsafe { self.padded.get_unchecked(from..from + V * lanes) };
                let (src, _) = S::as_simd_f32s(values);
                for (a, &s) in acc.iter_mut().zip(src) {
                    *a = simd.mul_add_e_f32s(tap, s, *a);
                }
            }
        }
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        for (r, acc) in acc.iter_mut().enumerate() {
            if self.relu6 {
                for a in acc.iter_mut() {
                    *a = simd.min_f32s(simd.max_f32s(*a, zero), six);
                }
            }
            let (dst, _) =
                S::as_uninit_mut_simd_f32s(&mut out[r * out_step..r * out_step + V * lanes]);
            for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                d.write(a);
            }
        }
    }
}

impl RunContext<'_> {
    /// `R` output rows of `width` columns, fewer than a vector's lanes, as in
    /// [`RunContext::block`]. The loads take whole vectors (the padded plane ends in a
    /// vector of slack, and pulp's masked loads are calls, not instructions); the lanes past
    /// `width` are left unstored. Its loop is [`RunContext::block`]'s on purpose: one shared
    /// accumulator helper returning the sums measured 3–5 % slower for the whole model.
    #[inline(always)]
    fn partial_block<S: pulp::Simd, const R: usize>(
        &self,
        simd: S,
        start: usize,
        row_step: usize,
        out: &mut [MaybeUninit<f32>],
        out_step: usize,
        width: usize,
    ) {
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        let mut acc = [simd.splat_f32s(self.bias); R];
        // One check for every load, as in `block`.
        assert!(start + (R - 1) * row_step + self.max_offset + lanes <= self.padded.len());
        for (&tap, &offset) in self.taps.iter().zip(self.offsets) {
            let tap = simd.splat_f32s(tap);
            for (r, acc) in acc.iter_mut().enumerate() {
                let from = start + r * row_step + offset;
                // SAFETY: `offset ≤ max_offset` and `r < R`: within the check above.
                let values = unsafe { self.padded.get_unchecked(from..from + lanes) };
                *acc = simd.mul_add_e_f32s(tap, S::as_simd_f32s(values).0[0], *acc);
            }
        }
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        let mut values = [0f32; MAX_LANES];
        let width = width.min(lanes);
        for (r, &acc) in acc.iter().enumerate() {
            let acc = if self.relu6 {
                simd.min_f32s(simd.max_f32s(acc, zero), six)
            } else {
                acc
            };
            S::as_mut_simd_f32s(&mut values[..lanes]).0[0] = acc;
            let dst = &mut out[r * out_step..r * out_step + width];
            for (d, &v) in dst.iter_mut().zip(&values[..width]) {
                d.write(v);
            }
        }
    }
}

/// Per-channel bias followed by an optional ReLU6, in one pass over `[b, c, …]`, in place:
/// candle's broadcast add and clamp would take three passes and three allocations.
#[derive(Debug, Clone)]
pub struct BiasActivation {
    bias: Vec<f32>,
    relu6: bool,
    /// `bias` as `[channels]` on the model's device, for the kernels off the CPU.
    bias_tensor: Tensor,
}

impl BiasActivation {
    /// `bias` is `[channels]`.
    pub fn new(bias: &Tensor, relu6: bool) -> candle_core::Result<BiasActivation> {
        let bias_tensor = bias.flatten_all()?.contiguous()?;
        Ok(BiasActivation {
            bias: bias_tensor.to_vec1::<f32>()?,
            relu6,
            bias_tensor,
        })
    }

    /// Applies it to `xs` (`[b, c, …]`), overwriting `xs`'s storage on the CPU and on a GPU:
    /// pass a tensor nothing else reads, such as a fresh matrix product (candle's clones share
    /// storage). Other devices use candle's ops, into a new tensor.
    pub fn apply_in_place(&self, xs: Tensor) -> candle_core::Result<Tensor> {
        if xs.device().is_cpu() || xs.device().is_cuda() {
            xs.inplace_op1(self)?;
            return Ok(xs);
        }
        self.apply_with_candle_ops(&xs)
    }

    /// The same with candle's ops, on any device, into a new tensor.
    fn apply_with_candle_ops(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut shape = vec![1, self.bias.len()];
        shape.extend(std::iter::repeat_n(1, xs.rank().saturating_sub(2)));
        let ys = xs.broadcast_add(&self.bias_tensor.reshape(shape)?)?;
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }
}

impl InplaceOp1 for BiasActivation {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.check_input(layout)?;
        let dims = layout.shape().dims();
        let values = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &mut data[start..end],
            _ => candle_core::bail!("bias-activation needs a contiguous f32 input"),
        };
        let plane: usize = dims[2..].iter().product();
        let channels = self.bias.len();
        let arch = pulp::Arch::new();
        values
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                arch.dispatch(AddBias {
                    plane,
                    bias: self.bias[i % channels],
                    relu6: self.relu6,
                })
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        self.check_input(layout)?;
        cuda::bias_activation(self, storage, layout)
    }
}

impl BiasActivation {
    fn check_input(&self, layout: &Layout) -> candle_core::Result<()> {
        let dims = layout.shape().dims();
        if dims.len() < 2 || dims[1] != self.bias.len() {
            candle_core::bail!("bias has {} channels, input is {dims:?}", self.bias.len());
        }
        Ok(())
    }
}

/// One plane of [`BiasActivation`], vectorised.
struct AddBias<'a> {
    plane: &'a mut [f32],
    bias: f32,
    relu6: bool,
}

impl pulp::WithSimd for AddBias<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (head, tail) = S::as_mut_simd_f32s(self.plane);
        let bias = simd.splat_f32s(self.bias);
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        for v in head {
            *v = simd.add_f32s(*v, bias);
            if self.relu6 {
                *v = simd.min_f32s(simd.max_f32s(*v, zero), six);
            }
        }
        for v in tail {
            *v += self.bias;
            if self.relu6 {
                *v = v.clamp(0.0, 6.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// The custom kernel (plane by plane and interleaved, on `c` channels) against candle's
    /// own grouped convolution on explicit padding.
    fn check(c: usize, h: usize, w: usize, kernel: usize, stride: usize, interleave: Interleave) {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, c, h, w), &device).expect("x");
        let weight = Tensor::randn(0f32, 1f32, (c, 1, kernel, kernel), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, c, &device).expect("b");
        let conv = DepthwiseConv::new(&weight, &bias, stride, false)
            .expect("conv")
            .with_interleaving(interleave);
        let fast = conv.forward(&x).expect("fast");
        let pad = SamePadding::new(h, w, kernel, stride);
        let padded = x
            .pad_with_zeros(2, pad.top, pad.bottom)
            .and_then(|t| t.pad_with_zeros(3, pad.left, pad.right))
            .expect("pad");
        let reference = padded
            .conv2d(&weight, 0, stride, 1, c)
            .and_then(|t| t.broadcast_add(&bias.reshape((1, c, 1, 1))?))
            .expect("reference");
        assert_eq!(
            fast.dims(),
            reference.dims(),
            "h{h} w{w} k{kernel} s{stride}"
        );
        let diff = (fast - reference)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        assert!(
            diff < 1e-4,
            "c{c} h{h} w{w} k{kernel} s{stride} {interleave:?}: max diff {diff}"
        );
    }

    #[test]
    fn matches_candle_grouped_conv() {
        for (h, w) in [
            (8, 8),
            (9, 7),
            (16, 12),
            (20, 75),
            (6, 1),
            (5, 2),
            (7, 17),
            (3, 33),
        ] {
            for kernel in [3, 5] {
                // Lite0 has strides 1 and 2; 3 runs the general phase split.
                for stride in [1, 2, 3] {
                    // 17 channels: one group short of its vector's lanes, on AVX2 and AVX-512.
                    for c in [5, 17] {
                        for interleave in
                            [Interleave::Never, Interleave::Always, Interleave::Scalar]
                        {
                            check(c, h, w, kernel, stride, interleave);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn input_activation_is_applied_before_the_convolution() {
        let device = Device::Cpu;
        let (c, h, w) = (4, 13, 40);
        let x = Tensor::randn(0f32, 4f32, (1, c, h, w), &device).expect("x");
        let input_bias = Tensor::new(&[0.5f32, -1.0, 2.0, 7.0], &device).expect("input bias");
        let weight = Tensor::randn(0f32, 1f32, (c, 1, 5, 5), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, c, &device).expect("b");
        let cases = [1, 2].into_iter().flat_map(|stride| {
            [true, false].into_iter().flat_map(move |relu6| {
                [Interleave::Never, Interleave::Always, Interleave::Scalar]
                    .map(|interleave| (stride, relu6, interleave))
            })
        });
        for (stride, relu6, interleave) in cases {
            let activation = BiasActivation::new(&input_bias, relu6).expect("activation");
            let activated = activation
                .apply_in_place(x.copy().expect("copy"))
                .expect("act");
            let conv = DepthwiseConv::new(&weight, &bias, stride, true)
                .expect("conv")
                .with_interleaving(interleave);
            let reference = conv.forward(&activated).expect("reference");
            let fused = conv
                .with_input_activation(activation)
                .forward(&x)
                .expect("fused");
            let diff = (fused - reference)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert!(
                diff < 1e-4,
                "stride {stride} relu6 {relu6} {interleave:?}: max diff {diff}"
            );
        }
    }

    #[test]
    fn one_plane_mode_matches_candle_conv() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 1, 11, 10), &device).expect("x");
        let weight = Tensor::randn(0f32, 1f32, (6, 1, 3, 3), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, 6, &device).expect("b");
        let conv = DepthwiseConv::from_one_plane(&weight, &bias, 2, false).expect("conv");
        let fast = conv.forward(&x).expect("fast");
        let pad = SamePadding::new(11, 10, 3, 2);
        let reference = x
            .pad_with_zeros(2, pad.top, pad.bottom)
            .and_then(|t| t.pad_with_zeros(3, pad.left, pad.right))
            .and_then(|t| t.conv2d(&weight, 0, 2, 1, 1))
            .and_then(|t| t.broadcast_add(&bias.reshape((1, 6, 1, 1))?))
            .expect("reference");
        let diff = (fast - reference)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-4, "max diff {diff}");
    }

    #[test]
    fn bias_activation_matches_candle_ops() {
        let device = Device::Cpu;
        let x =
            (Tensor::randn(0f32, 4f32, (2, 3, 4, 5), &device).expect("x") + 1.0).expect("shift");
        let bias = Tensor::new(&[0.5f32, -1.0, 2.0], &device).expect("bias");
        for relu6 in [false, true] {
            let fast = BiasActivation::new(&bias, relu6)
                .and_then(|op| op.apply_in_place(x.copy()?))
                .expect("fast");
            let reference = x
                .broadcast_add(&bias.reshape((1, 3, 1, 1)).expect("reshape"))
                .expect("add");
            let reference = if relu6 {
                reference.clamp(0f32, 6f32).expect("clamp")
            } else {
                reference
            };
            let diff = (fast - reference)
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
                .expect("diff");
            assert!(diff < 1e-6, "relu6 {relu6}: {diff}");
        }
    }

    #[test]
    fn candle_op_fallback_matches_the_kernel() {
        let device = Device::Cpu;
        let (c, h, w) = (6, 11, 14);
        let input_bias = Tensor::randn(0f32, 1f32, c, &device).expect("input bias");
        for kernel in [3, 5] {
            for stride in [1, 2] {
                let weight = Tensor::randn(0f32, 1f32, (c, 1, kernel, kernel), &device).expect("w");
                let bias = Tensor::randn(0f32, 1f32, c, &device).expect("b");
                let grey = Tensor::randn(0f32, 2f32, (2, 1, h, w), &device).expect("grey");
                let planes = Tensor::randn(0f32, 2f32, (2, c, h, w), &device).expect("planes");
                let activation =
                    |relu6| BiasActivation::new(&input_bias, relu6).expect("activation");
                let plain = DepthwiseConv::new(&weight, &bias, stride, true).expect("conv");
                let cases = [
                    (
                        DepthwiseConv::from_one_plane(&weight, &bias, stride, false).expect("c"),
                        &grey,
                    ),
                    (plain.clone(), &planes),
                    (
                        plain.clone().with_input_activation(activation(true)),
                        &planes,
                    ),
                    (plain.with_input_activation(activation(false)), &planes),
                ];
                for (i, (conv, xs)) in cases.iter().enumerate() {
                    let kernel_out = conv.forward(xs).expect("kernel");
                    let candle_out = conv.forward_with_candle_ops(xs).expect("candle");
                    let diff = (kernel_out - candle_out)
                        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                        .expect("diff");
                    assert!(diff < 1e-4, "k{kernel} s{stride} case {i}: max diff {diff}");
                }
            }
        }
    }

    #[test]
    fn refuses_inputs_it_cannot_take() {
        let device = Device::Cpu;
        let weight = Tensor::ones((4, 1, 3, 3), DType::F32, &device).expect("w");
        let bias = Tensor::zeros(4, DType::F32, &device).expect("b");
        let conv = DepthwiseConv::new(&weight, &bias, 1, false).expect("conv");
        let message = |conv: &DepthwiseConv, dims: (usize, usize, usize, usize)| {
            let xs = Tensor::zeros(dims, DType::F32, &device).expect("xs");
            conv.forward(&xs).expect_err("refused").to_string()
        };
        assert!(message(&conv, (1, 3, 8, 8)).contains("takes 4 channels"));
        assert!(message(&conv, (0, 4, 8, 8)).contains("empty"));
        let grey = DepthwiseConv::from_one_plane(&weight, &bias, 1, false)
            .expect("conv")
            .with_input_activation(
                BiasActivation::new(&Tensor::zeros(1, DType::F32, &device).expect("b"), true)
                    .expect("activation"),
            );
        assert!(message(&grey, (1, 1, 8, 8)).contains("no input activation"));
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        // TF: out = ceil(in / s); total pad = max((out - 1) * s + k - in, 0), extra at the end.
        assert_eq!(
            SamePadding::new(256, 256, 3, 2),
            SamePadding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        assert_eq!(
            SamePadding::new(64, 64, 5, 2),
            SamePadding {
                top: 1,
                bottom: 2,
                left: 1,
                right: 2
            }
        );
        assert_eq!(
            SamePadding::new(32, 32, 5, 1),
            SamePadding {
                top: 2,
                bottom: 2,
                left: 2,
                right: 2
            }
        );
    }
}
