//! Fast CPU kernels for the backbone, as candle custom ops: the depthwise convolution, and
//! bias + ReLU6 fused into one pass.
//!
//! candle runs grouped convolutions one group at a time (about 3 GFLOP/s here), which makes an
//! EfficientNet spend most of its time in its depthwise layers. [`DepthwiseConv`] works on whole
//! channel planes: for each of the k×k taps it adds one shifted, scaled row to each output row,
//! an inner loop over contiguous memory that the compiler vectorises (stride-2 layers first
//! split each input row into its even and odd columns, so their loops are contiguous too).
//! Channels run in parallel. The same kernel runs the stem on a grey image: every output
//! channel reads the one input plane.
//! Bias and the ReLU6 activation are fused. Other devices fall back to candle's own ops.
//! (The 1×1 convolutions stay on candle's matrix product: a hand-written axpy kernel measured
//! no faster for 16–24 input channels and half as fast for 144 and more.)

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

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
    /// For devices without the custom kernel: `[channels, 1, k, k]` and `[channels]`.
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
            weight_tensor: weight.clone(),
            bias_tensor: bias.clone(),
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

    fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.stride), w.div_ceil(self.stride))
    }
}

impl Module for DepthwiseConv {
    /// `[b, c, h, w]` → `[b, c, ceil(h/s), ceil(w/s)]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if xs.device().is_cpu() {
            return xs.apply_op1_no_bwd(self);
        }
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

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c_in, h, w) = layout.shape().dims4()?;
        let c = self.channels;
        let want = if self.shared_input { 1 } else { c };
        if c_in != want {
            candle_core::bail!("depthwise conv takes {want} channels, input has {c_in}");
        }
        let input = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("depthwise conv needs a contiguous f32 input"),
        };
        let (ho, wo) = self.output_size(h, w);
        let pad = SamePadding::new(h, w, self.kernel, self.stride);
        let mut output = vec![0f32; b * c * ho * wo];
        // Stride 2 reads each input plane as its even and odd columns: split once per input
        // plane (the stem's one plane serves all 32 outputs).
        let phases: Vec<[Vec<f32>; 2]> = if self.stride == 2 {
            input
                .par_chunks(h * w)
                .map(|plane| split_columns(plane, h, w))
                .collect()
        } else {
            Vec::new()
        };
        output
            .par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(plane, out)| {
                let channel = plane % c;
                let source = if self.shared_input { plane / c } else { plane };
                let inp = &input[source * h * w..(source + 1) * h * w];
                let taps = &self.weight[channel * self.kernel * self.kernel
                    ..(channel + 1) * self.kernel * self.kernel];
                out.fill(self.bias[channel]);
                let geometry = Geometry {
                    h,
                    w,
                    ho,
                    wo,
                    kernel: self.kernel,
                    stride: self.stride,
                    pad,
                };
                match phases.get(source) {
                    Some(phases) => convolve_plane_stride2(phases, out, taps, &geometry),
                    None => convolve_plane(inp, out, taps, &geometry),
                }
                if self.relu6 {
                    out.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
                }
            });
        Ok((CpuStorage::F32(output), Shape::from((b, c, ho, wo))))
    }
}

struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    stride: usize,
    pad: SamePadding,
}

/// Adds the k×k taps' contributions of one input plane to one output plane (any stride;
/// stride 2 has its faster path below).
fn convolve_plane(inp: &[f32], out: &mut [f32], taps: &[f32], g: &Geometry) {
    for ky in 0..g.kernel {
        for kx in 0..g.kernel {
            let tap = taps[ky * g.kernel + kx];
            // Output columns whose input column `ox*s + kx - left` lies inside the row.
            let ox_start = g.pad.left.saturating_sub(kx).div_ceil(g.stride);
            let ox_end = ((g.w + g.pad.left).saturating_sub(kx))
                .div_ceil(g.stride)
                .min(g.wo);
            if ox_start >= ox_end {
                continue;
            }
            for oy in 0..g.ho {
                let iy = (oy * g.stride + ky) as isize - g.pad.top as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let row_in = &inp[iy as usize * g.w..(iy as usize + 1) * g.w];
                let row_out = &mut out[oy * g.wo..(oy + 1) * g.wo];
                let ix0 = ox_start * g.stride + kx - g.pad.left;
                if g.stride == 1 {
                    let n = ox_end - ox_start;
                    for (o, i) in row_out[ox_start..ox_end]
                        .iter_mut()
                        .zip(&row_in[ix0..ix0 + n])
                    {
                        *o += tap * i;
                    }
                } else {
                    for (k, o) in row_out[ox_start..ox_end].iter_mut().enumerate() {
                        *o += tap * row_in[ix0 + k * g.stride];
                    }
                }
            }
        }
    }
}

/// A plane's even and odd columns as two planes of `ceil(w/2)` columns.
fn split_columns(plane: &[f32], h: usize, w: usize) -> [Vec<f32>; 2] {
    let half = w.div_ceil(2);
    let mut phases = [vec![0f32; h * half], vec![0f32; h * half]];
    for y in 0..h {
        for (x, &v) in plane[y * w..(y + 1) * w].iter().enumerate() {
            phases[x % 2][y * half + x / 2] = v;
        }
    }
    phases
}

/// Stride 2 on a plane split by [`split_columns`]: every tap's inner loop reads contiguous
/// memory.
fn convolve_plane_stride2(phases: &[Vec<f32>; 2], out: &mut [f32], taps: &[f32], g: &Geometry) {
    let half = g.w.div_ceil(2);
    for ky in 0..g.kernel {
        for kx in 0..g.kernel {
            let tap = taps[ky * g.kernel + kx];
            let ox_start = g.pad.left.saturating_sub(kx).div_ceil(2);
            let ox_end = ((g.w + g.pad.left).saturating_sub(kx))
                .div_ceil(2)
                .min(g.wo);
            if ox_start >= ox_end {
                continue;
            }
            let n = ox_end - ox_start;
            let ix0 = ox_start * 2 + kx - g.pad.left;
            let (phase, j0) = (&phases[ix0 % 2], ix0 / 2);
            for oy in 0..g.ho {
                let iy = (oy * 2 + ky) as isize - g.pad.top as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let row_in = &phase[iy as usize * half + j0..iy as usize * half + j0 + n];
                let row_out = &mut out[oy * g.wo + ox_start..oy * g.wo + ox_end];
                for (o, i) in row_out.iter_mut().zip(row_in) {
                    *o += tap * i;
                }
            }
        }
    }
}

/// Per-channel bias followed by an optional ReLU6, in one pass over `[b, c, …]`: candle's
/// broadcast add and clamp would take three passes and three allocations.
#[derive(Debug, Clone)]
pub struct BiasActivation {
    bias: Vec<f32>,
    relu6: bool,
}

impl BiasActivation {
    /// `bias` is `[channels]`.
    pub fn new(bias: &Tensor, relu6: bool) -> candle_core::Result<BiasActivation> {
        Ok(BiasActivation {
            bias: bias.flatten_all()?.to_vec1::<f32>()?,
            relu6,
        })
    }

    /// Applies it to `xs` (`[b, c, …]`); other devices use candle's ops.
    pub fn apply(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if xs.device().is_cpu() {
            return xs.apply_op1_no_bwd(self);
        }
        let mut shape = vec![1, self.bias.len()];
        shape.extend(std::iter::repeat_n(1, xs.rank().saturating_sub(2)));
        let bias = Tensor::from_vec(self.bias.clone(), shape, xs.device())?;
        let ys = xs.broadcast_add(&bias)?;
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }
}

impl CustomOp1 for BiasActivation {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        if dims.len() < 2 || dims[1] != self.bias.len() {
            candle_core::bail!("bias has {} channels, input is {dims:?}", self.bias.len());
        }
        let input = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("bias-activation needs a contiguous f32 input"),
        };
        let plane: usize = dims[2..].iter().product();
        let channels = self.bias.len();
        let mut output = input.to_vec();
        output
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, chunk)| {
                let bias = self.bias[i % channels];
                if self.relu6 {
                    chunk
                        .iter_mut()
                        .for_each(|v| *v = (*v + bias).clamp(0.0, 6.0));
                } else {
                    chunk.iter_mut().for_each(|v| *v += bias);
                }
            });
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// The custom kernel against candle's own grouped convolution on explicit padding.
    fn check(h: usize, w: usize, kernel: usize, stride: usize) {
        let device = Device::Cpu;
        let c = 5;
        let x = Tensor::randn(0f32, 1f32, (2, c, h, w), &device).expect("x");
        let weight = Tensor::randn(0f32, 1f32, (c, 1, kernel, kernel), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, c, &device).expect("b");
        let conv = DepthwiseConv::new(&weight, &bias, stride, false).expect("conv");
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
            "h{h} w{w} k{kernel} s{stride}: max diff {diff}"
        );
    }

    #[test]
    fn matches_candle_grouped_conv() {
        for (h, w) in [(8, 8), (9, 7), (16, 12)] {
            for kernel in [3, 5] {
                for stride in [1, 2] {
                    check(h, w, kernel, stride);
                }
            }
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
                .and_then(|op| op.apply(&x))
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
