//! The same two kernels on an NVIDIA GPU (`cuda` feature).
//!
//! candle runs a grouped convolution one group at a time, and on a GPU each group is its own
//! handful of kernel launches: a 1152-channel depthwise layer became thousands of launches,
//! and the backbone took 142 ms on an H200 (5 ms on its CPU). Here each layer is one launch,
//! one thread per output value. The source is compiled once per process by NVRTC (which
//! candle's CUDA backend links already), so a `cuda` build needs no extra build step.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor};

use super::{BiasActivation, DepthwiseConv, SamePadding};

const MODULE: &str = "linesight-depthwise";

/// Threads per block: enough to hide memory latency, few enough that the 8×8 planes of the
/// last layers still fill the GPU.
const BLOCK: u32 = 256;

const SOURCE: &str = r#"
// out[b, c, y, x] = bias[c] + sum over taps of weight[c, ky, kx] * in'[b, c_in, iy, ix], where
// in' is the input after the previous layer's bias and activation (in_act: 0 none, 1 bias,
// 2 bias + ReLU6; never with a shared input plane) and is zero outside the plane (TF "same"
// padding, top/left given).
extern "C" __global__ void depthwise_conv(
    const float* __restrict__ input, const float* __restrict__ weight,
    const float* __restrict__ bias, const float* __restrict__ in_bias,
    float* __restrict__ output,
    long long total, int channels, int shared_input, int h, int w, int ho, int wo,
    int kernel, int stride, int pad_top, int pad_left, int in_act, int relu6)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int x = (int)(i % wo);
    int y = (int)((i / wo) % ho);
    long long plane = i / ((long long)wo * ho);
    int c = (int)(plane % channels);
    long long b = plane / channels;
    long long in_plane = shared_input ? b : plane;
    const float* src = input + in_plane * h * w;
    const float* taps = weight + (long long)c * kernel * kernel;
    float add = in_act ? in_bias[c] : 0.0f;
    float acc = bias[c];
    int y0 = y * stride - pad_top, x0 = x * stride - pad_left;
    for (int ky = 0; ky < kernel; ++ky) {
        int iy = y0 + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kernel; ++kx) {
            int ix = x0 + kx;
            if (ix < 0 || ix >= w) continue;
            float v = src[(long long)iy * w + ix];
            if (in_act) {
                v += add;
                if (in_act == 2) v = fminf(fmaxf(v, 0.0f), 6.0f);
            }
            acc = fmaf(taps[ky * kernel + kx], v, acc);
        }
    }
    if (relu6) acc = fminf(fmaxf(acc, 0.0f), 6.0f);
    output[i] = acc;
}

// values[b, c, ...] += bias[c], then ReLU6 if asked; in place.
extern "C" __global__ void bias_activation(
    float* __restrict__ values, const float* __restrict__ bias,
    long long total, int channels, long long plane, int relu6)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    float v = values[i] + bias[(i / plane) % channels];
    if (relu6) v = fminf(fmaxf(v, 0.0f), 6.0f);
    values[i] = v;
}
"#;

/// The kernels' PTX, compiled on first use.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("compiling the depthwise kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn launch_config(total: usize) -> candle_core::Result<LaunchConfig> {
    let blocks = u32::try_from(total.div_ceil(BLOCK as usize))
        .map_err(|_| candle_core::Error::Msg(format!("{total} values: too many for one launch")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Runs `f` on the f32 device slice behind `tensor`, the op's `what` (which must be a
/// contiguous f32 tensor on the GPU).
fn with_slice<R>(
    what: &str,
    tensor: &Tensor,
    f: impl FnOnce(CudaView<'_, f32>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let (Storage::Cuda(storage), Some((start, end))) = (&*storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("GPU kernel: the {what} is not a contiguous tensor on the GPU");
    };
    f(storage.as_cuda_slice::<f32>()?.slice(start..end))
}

fn as_i32(n: usize) -> candle_core::Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{n} is too large")))
}

/// [`DepthwiseConv`] on the GPU: `[b, c_in, h, w]` → `[b, c, ceil(h/s), ceil(w/s)]`.
pub(super) fn depthwise(
    conv: &DepthwiseConv,
    storage: &CudaStorage,
    layout: &Layout,
    (b, h, w): (usize, usize, usize),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("depthwise conv needs a contiguous input");
    };
    let input = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let device = storage.device().clone();
    let (ho, wo) = conv.output_size(h, w);
    // The kernel indexes a plane with 32-bit rows and columns.
    as_i32(h * w)?;
    let pad = SamePadding::new(h, w, conv.kernel, conv.stride);
    let total = b * conv.channels * ho * wo;
    let func = device.get_or_load_custom_func("depthwise_conv", MODULE, ptx()?)?;
    // SAFETY: the kernel writes every one of the `total` values.
    let mut output = unsafe { device.alloc::<f32>(total) }?;
    let in_act: i32 = match &conv.input_activation {
        None => 0,
        Some(activation) if activation.relu6 => 2,
        Some(_) => 1,
    };
    // The kernel's parameters after `total`, in order.
    let scalars = [
        as_i32(conv.channels)?,
        i32::from(conv.shared_input),
        as_i32(h)?,
        as_i32(w)?,
        as_i32(ho)?,
        as_i32(wo)?,
        as_i32(conv.kernel)?,
        as_i32(conv.stride)?,
        as_i32(pad.top)?,
        as_i32(pad.left)?,
        in_act,
        i32::from(conv.relu6),
    ];
    let total_arg = total as i64;
    let config = launch_config(total)?;
    with_slice("depthwise weight", &conv.weight_tensor, |weight| {
        with_slice("depthwise bias", &conv.bias_tensor, |bias| {
            let mut launch = |in_bias: &CudaView<'_, f32>| {
                let mut launch = func.builder();
                launch
                    .arg(&input)
                    .arg(&weight)
                    .arg(&bias)
                    .arg(in_bias)
                    .arg(&mut output)
                    .arg(&total_arg);
                for scalar in &scalars {
                    launch.arg(scalar);
                }
                // SAFETY: the arguments match the kernel's parameters in order and type, and
                // every index it reads is checked against the sizes passed.
                unsafe { launch.launch(config) }.w()?;
                Ok(())
            };
            match &conv.input_activation {
                Some(activation) => with_slice(
                    "input activation's bias",
                    &activation.bias_tensor,
                    |in_bias| launch(&in_bias),
                ),
                // Without an input activation the kernel never reads `in_bias`: any valid
                // pointer does (and taking `bias`'s lock a second time could deadlock).
                None => launch(&bias),
            }
        })
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(output, device),
        Shape::from((b, conv.channels, ho, wo)),
    ))
}

/// [`BiasActivation`] on the GPU, in place on `[b, c, …]`.
pub(super) fn bias_activation(
    activation: &BiasActivation,
    storage: &mut CudaStorage,
    layout: &Layout,
) -> candle_core::Result<()> {
    let dims = layout.shape().dims();
    let channels = activation.bias.len();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("bias-activation needs a contiguous input");
    };
    let device = storage.device().clone();
    let func = device.get_or_load_custom_func("bias_activation", MODULE, ptx()?)?;
    let plane = dims[2..].iter().product::<usize>().max(1) as i64;
    let total = end - start;
    let (total_arg, channels, relu6) =
        (total as i64, as_i32(channels)?, i32::from(activation.relu6));
    let config = launch_config(total)?;
    let mut values = storage.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    with_slice("bias", &activation.bias_tensor, |bias| {
        let mut launch = func.builder();
        launch
            .arg(&mut values)
            .arg(&bias)
            .arg(&total_arg)
            .arg(&channels)
            .arg(&plane)
            .arg(&relu6);
        // SAFETY: as above; `i / plane % channels` stays inside `bias`.
        unsafe { launch.launch(config) }.w()?;
        Ok(())
    })
}
