//! The backbone's 1×1 convolutions as one call to gemm each, with their epilogue fused (or, in
//! a block computed in bands of rows, [`super::banded`], one call per band on the calling
//! thread: [`Pointwise::product_on_this_thread`]).
//!
//! A 1×1 convolution is the matrix product `W · X` of its `[out, in]` weights and the input's
//! `[in, h·w]` planes. candle's `matmul` runs the same gemm kernels, but first zeroes its output,
//! and the bias (and a block's skip connection) then take a pass each over the result. Here
//! the output is written once: a layer whose bias a later kernel applies (an expansion, see
//! [`super::depthwise::DepthwiseConv::with_input_activation`]) gets the bare product into
//! uninitialised memory; a projection starts from its bias (plus the skip input) and gemm adds
//! the product onto it. On magnetic-tile sized inputs (256×256) zeroing and the extra passes
//! were a tenth of the backbone's time. Other devices use candle's ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// A 1×1 convolution with folded batch norm: `[b, in, h, w]` → `[b, out, h, w]`.
#[derive(Debug, Clone)]
pub struct Pointwise {
    /// `[out, in]`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    out_channels: usize,
    in_channels: usize,
    /// The same weights `[out, in]` and bias `[out, 1]`, for devices without the kernel.
    weight_tensor: Tensor,
    bias_tensor: Tensor,
    /// The weights in bfloat16 panels, present while the CPU kernel multiplies in bfloat16
    /// ([`super::bf16::Precision::Bf16`], only where the CPU can). A layer in f32 does without
    /// them: they are half its weights' size again. The layer's copies share them.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bf16: Option<Arc<super::bf16::PackedWeights>>,
}

/// What is added to the product.
#[derive(Debug, Clone, Copy)]
enum Epilogue {
    /// Nothing: the next layer adds the bias.
    None,
    /// The bias.
    Bias,
    /// The bias and the block's input (the skip connection, same shape as the output).
    BiasAndSkip,
}

impl Pointwise {
    /// `weight` is `[out, in]` (or `[out, in, 1, 1]`), `bias` is `[out]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Pointwise> {
        let out_channels = weight.dim(0)?;
        let weight_tensor = weight.flatten_from(1)?.contiguous()?;
        let in_channels = weight_tensor.dim(1)?;
        if bias.dims() != [out_channels] {
            candle_core::bail!(
                "1x1 conv bias must be [{out_channels}], got {:?}",
                bias.dims()
            );
        }
        let weight = weight_tensor.flatten_all()?.to_vec1::<f32>()?;
        // The packed kernel runs on the CPU only.
        let on_cpu = weight_tensor.device().is_cpu();
        let bf16 =
            (on_cpu && super::bf16::precision() == super::bf16::Precision::Bf16).then(|| {
                Arc::new(super::bf16::PackedWeights::new(
                    &weight,
                    out_channels,
                    in_channels,
                ))
            });
        Ok(Pointwise {
            bf16,
            weight,
            bias: bias.to_vec1::<f32>()?,
            out_channels,
            in_channels,
            bias_tensor: bias.reshape((out_channels, 1))?,
            weight_tensor,
        })
    }

    /// The same layer computing in `precision` on the CPU (bfloat16 only where the CPU has
    /// it; `auto` takes it there).
    pub fn with_precision(self, precision: super::bf16::Precision) -> Pointwise {
        let bf16 = (super::bf16::resolve(precision) == super::bf16::Precision::Bf16).then(|| {
            self.bf16.clone().unwrap_or_else(|| {
                Arc::new(super::bf16::PackedWeights::new(
                    &self.weight,
                    self.out_channels,
                    self.in_channels,
                ))
            })
        });
        Pointwise { bf16, ..self }
    }

    /// The product alone, for a next layer that applies the bias itself.
    pub fn product(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, Epilogue::None, None)
    }

    /// Product plus bias.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, Epilogue::Bias, None)
    }

    /// Product plus bias plus `skip` (the block's input, shaped as the output).
    pub fn forward_with_skip(&self, xs: &Tensor, skip: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, Epilogue::BiasAndSkip, Some(skip))
    }

    /// The kernel on the CPU, candle's ops elsewhere.
    fn apply(
        &self,
        xs: &Tensor,
        epilogue: Epilogue,
        skip: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if !xs.device().is_cpu() {
            return self.apply_with_candle_ops(xs, epilogue, skip);
        }
        let op = PointwiseOp {
            layer: self,
            epilogue,
        };
        match skip {
            Some(skip) => xs.apply_op2_no_bwd(skip, &op),
            None => xs.apply_op1_no_bwd(&op),
        }
    }

    /// The same with candle's ops, on any device: the path off the CPU, which a test holds
    /// equal to the kernel.
    fn apply_with_candle_ops(
        &self,
        xs: &Tensor,
        epilogue: Epilogue,
        skip: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let product = self
            .weight_tensor
            .broadcast_matmul(&xs.reshape((b, c, h * w))?)?;
        let ys = match epilogue {
            Epilogue::None => product,
            Epilogue::Bias | Epilogue::BiasAndSkip => product.broadcast_add(&self.bias_tensor)?,
        }
        .reshape((b, (), h, w))?;
        match (epilogue, skip) {
            (Epilogue::BiasAndSkip, Some(skip)) => ys + skip,
            (Epilogue::BiasAndSkip, None) => candle_core::bail!("1x1 conv: skip input missing"),
            _ => Ok(ys),
        }
    }

    /// The CPU kernel: `skip`, when given, is the contiguous skip input.
    fn cpu_forward(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        epilogue: Epilogue,
        skip: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        if c != self.in_channels {
            candle_core::bail!(
                "1x1 conv takes {} channels, input has {c}",
                self.in_channels
            );
        }
        let input = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("1x1 conv needs a contiguous f32 input"),
        };
        let (m, k, n) = (self.out_channels, self.in_channels, h * w);
        let len = b * m * n;
        if let Some(skip) = skip
            && skip.len() != len
        {
            candle_core::bail!("skip input has {} values, output {len}", skip.len());
        }
        let mut output: Vec<f32> = Vec::with_capacity(len);
        match (epilogue, skip) {
            (Epilogue::None, _) => {}
            (Epilogue::Bias, _) => {
                for _ in 0..b {
                    for &bias in &self.bias {
                        output.extend(std::iter::repeat_n(bias, n));
                    }
                }
            }
            (Epilogue::BiasAndSkip, Some(skip)) => {
                for (plane, &bias) in skip.chunks_exact(n).zip(self.bias.iter().cycle()) {
                    output.extend(plane.iter().map(|v| v + bias));
                }
            }
            (Epilogue::BiasAndSkip, None) => candle_core::bail!("1x1 conv: skip input missing"),
        }
        let read_output = !matches!(epilogue, Epilogue::None);
        let parallelism = match rayon::current_num_threads() {
            1 => gemm::Parallelism::None,
            threads => gemm::Parallelism::Rayon(threads),
        };
        // The start of the allocation: writable up to its capacity, `len`.
        let dst = output.as_mut_ptr();
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.bf16 {
            for image in 0..b {
                // SAFETY: `bf16` is present only on a CPU with the instructions; `dst` has
                // room for `b·m·n` values and `input` holds `b·k·n`, each image's `m × n`
                // output and `k × n` input row-major; with `read_output` they were
                // initialised above, else the kernel writes every value.
                unsafe {
                    super::bf16::gemm(
                        packed,
                        &input[image * k * n..][..k * n],
                        n,
                        dst.add(image * m * n),
                        read_output,
                    );
                }
            }
            // SAFETY: every value is now written (or added to the ones written above).
            unsafe { output.set_len(len) };
            return Ok((CpuStorage::F32(output), Shape::from((b, m, h, w))));
        }
        for image in 0..b {
            // SAFETY: `dst` has room for `b·m·n` values (`len`, the capacity above) and
            // `input` holds `b·k·n`; every pointer below stays inside its image's `m × n`
            // output and `k × n` input, row-major, and the weights are `m × k`, row-major.
            // With `read_output` false gemm writes every output value without reading it
            // (`alpha` is then ignored); with it true the values were initialised above.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.add(image * m * n),
                    1,
                    n as isize,
                    read_output,
                    self.weight.as_ptr(),
                    1,
                    k as isize,
                    input.as_ptr().add(image * k * n),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        // SAFETY: gemm has now written all `len` values (or added to the ones written above).
        unsafe { output.set_len(len) };
        Ok((CpuStorage::F32(output), Shape::from((b, m, h, w))))
    }
}

impl Pointwise {
    /// Channels in and out.
    pub(super) fn channels(&self) -> (usize, usize) {
        (self.in_channels, self.out_channels)
    }

    /// The bias, one per output channel.
    pub(super) fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The product alone on `n` columns, on the calling thread: input channel `i` is the
    /// `n` values at `input + i · input_stride`, output channel `o` the `n` values at
    /// `output + o · output_stride`, written (or added to, with `accumulate`). For a block
    /// computed in bands of rows ([`super::banded`]), where each thread runs its own bands.
    ///
    /// # Safety
    /// The `in_channels` input rows and `out_channels` output rows of `n` values must lie in
    /// their allocations, the output's initialised when `accumulate`, and nothing else may
    /// write them meanwhile.
    pub(super) unsafe fn product_on_this_thread(
        &self,
        input: *const f32,
        input_stride: usize,
        n: usize,
        output: *mut f32,
        output_stride: usize,
        accumulate: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.bf16 {
            // SAFETY: `bf16` is present only on a CPU with the instructions; the caller
            // promises the rest.
            unsafe {
                super::bf16::gemm_on_this_thread(
                    packed,
                    input,
                    input_stride,
                    n,
                    output,
                    output_stride,
                    accumulate,
                )
            };
            return;
        }
        let (m, k) = (self.out_channels, self.in_channels);
        // SAFETY: the weights are `m × k` row-major; the caller promises the rest. With
        // `accumulate` false gemm writes every output value without reading it.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                output,
                1,
                output_stride as isize,
                accumulate,
                self.weight.as_ptr(),
                1,
                k as isize,
                input,
                1,
                input_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// One application of a [`Pointwise`] layer, as a candle op.
struct PointwiseOp<'a> {
    layer: &'a Pointwise,
    epilogue: Epilogue,
}

impl CustomOp1 for PointwiseOp<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.layer.cpu_forward(storage, layout, self.epilogue, None)
    }
}

impl CustomOp2 for PointwiseOp<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv-skip"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        skip_storage: &CpuStorage,
        skip_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _, h, w) = layout.shape().dims4()?;
        let want = Shape::from((b, self.layer.out_channels, h, w));
        if skip_layout.shape() != &want {
            candle_core::bail!(
                "skip input {:?} does not match the 1x1 conv's output {want:?}",
                skip_layout.shape()
            );
        }
        let skip = match (skip_storage, skip_layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("1x1 conv needs a contiguous f32 skip input"),
        };
        self.layer
            .cpu_forward(storage, layout, self.epilogue, Some(skip))
    }
}

/// 1×1 layers `(out, in, positions)` of the backbone at a 256-pixel input that
/// [`time_precisions`] times: an expansion at stride 4, a projection at stride 8 and an
/// expansion at stride 16, which between them span the shapes the network's time goes to.
const TIMED_LAYERS: [(usize, usize, usize); 3] =
    [(144, 24, 64 * 64), (40, 240, 32 * 32), (480, 80, 16 * 16)];

/// Rounds of [`time_precisions`]: each times every layer once in each precision, the two
/// interleaved so that a busy moment of the machine weighs on both alike.
const TIMING_ROUNDS: usize = 9;

/// The time in seconds one pass over [`TIMED_LAYERS`] takes on this CPU in f32 and in
/// bfloat16 (f32 where the CPU lacks it): each the fastest of [`TIMING_ROUNDS`] rounds, after
/// one to warm the caches and the thread pool. For `auto` precision
/// ([`super::bf16::bf16_pays`]).
pub fn time_precisions() -> candle_core::Result<(f64, f64)> {
    use super::bf16::Precision;
    let device = candle_core::Device::Cpu;
    let mut layers = Vec::new();
    for (m, k, n) in TIMED_LAYERS {
        // Any values do: the time does not depend on them.
        let weight: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let input: Vec<f32> = (0..k * n).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
        // Built with the precision fixed: left to the process's default, a layer built while
        // `auto` is being resolved would ask for it again, inside its own `OnceLock`.
        let (layer, _) = super::bf16::building_with(Precision::F32, || {
            Pointwise::new(
                &Tensor::from_vec(weight, (m, k), &device)?,
                &Tensor::zeros(m, candle_core::DType::F32, &device)?,
            )
        });
        let layer = layer?;
        let xs = Tensor::from_vec(input, (1, k, n, 1), &device)?;
        layers.push((
            layer.clone().with_precision(Precision::F32),
            layer.with_precision(Precision::Bf16),
            xs,
        ));
    }
    let mut best = [f64::INFINITY; 2];
    for round in 0..=TIMING_ROUNDS {
        for (which, best) in best.iter_mut().enumerate() {
            let started = std::time::Instant::now();
            for (f32_layer, bf16_layer, xs) in &layers {
                let layer = if which == 0 { f32_layer } else { bf16_layer };
                layer.forward(xs)?;
            }
            if round > 0 {
                *best = best.min(started.elapsed().as_secs_f64());
            }
        }
    }
    Ok((best[0], best[1]))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff")
    }

    /// Each epilogue against candle's matmul and broadcast adds, batch of two.
    #[test]
    fn matches_candle_matmul_with_bias_and_skip() {
        let device = Device::Cpu;
        let (b, c_in, c_out, h, w) = (2, 7, 12, 5, 9);
        let x = Tensor::randn(0f32, 1f32, (b, c_in, h, w), &device).expect("x");
        let weight = Tensor::randn(0f32, 1f32, (c_out, c_in, 1, 1), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, c_out, &device).expect("b");
        let skip = Tensor::randn(0f32, 1f32, (b, c_out, h, w), &device).expect("skip");
        let layer = Pointwise::new(&weight, &bias).expect("layer");

        let product = weight
            .reshape((c_out, c_in))
            .and_then(|m| m.broadcast_matmul(&x.reshape((b, c_in, h * w))?))
            .and_then(|p| p.reshape((b, c_out, h, w)))
            .expect("reference");
        let with_bias = product
            .broadcast_add(&bias.reshape((1, c_out, 1, 1)).expect("bias"))
            .expect("bias");
        let with_skip = (&with_bias + &skip).expect("skip");

        assert!(max_diff(&layer.product(&x).expect("product"), &product) < 1e-5);
        assert!(max_diff(&layer.forward(&x).expect("forward"), &with_bias) < 1e-5);
        let fused = layer.forward_with_skip(&x, &skip).expect("fused");
        assert!(max_diff(&fused, &with_skip) < 1e-5);
    }

    /// The path other devices take, run on the CPU against the kernel.
    #[test]
    fn candle_op_fallback_matches_the_kernel() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 6, 4, 7), &device).expect("x");
        let weight = Tensor::randn(0f32, 1f32, (5, 6), &device).expect("w");
        let bias = Tensor::randn(0f32, 1f32, 5, &device).expect("b");
        let skip = Tensor::randn(0f32, 1f32, (2, 5, 4, 7), &device).expect("skip");
        let layer = Pointwise::new(&weight, &bias).expect("layer");
        for (epilogue, skip) in [
            (Epilogue::None, None),
            (Epilogue::Bias, None),
            (Epilogue::BiasAndSkip, Some(&skip)),
        ] {
            let kernel = layer.apply(&x, epilogue, skip).expect("kernel");
            let fallback = layer
                .apply_with_candle_ops(&x, epilogue, skip)
                .expect("fallback");
            assert_eq!(kernel.dims(), fallback.dims(), "{epilogue:?}");
            assert!(max_diff(&kernel, &fallback) < 1e-5, "{epilogue:?}");
        }
    }

    #[test]
    fn refuses_mismatched_inputs() {
        let device = Device::Cpu;
        let weight = Tensor::zeros((4, 3), candle_core::DType::F32, &device).expect("w");
        let bias = Tensor::zeros(4, candle_core::DType::F32, &device).expect("b");
        let layer = Pointwise::new(&weight, &bias).expect("layer");
        let wrong_channels = Tensor::zeros((1, 5, 2, 2), candle_core::DType::F32, &device);
        assert!(layer.forward(&wrong_channels.expect("x")).is_err());
        let x = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &device).expect("x");
        let wrong_skip = Tensor::zeros((1, 4, 2, 3), candle_core::DType::F32, &device).expect("s");
        assert!(layer.forward_with_skip(&x, &wrong_skip).is_err());
    }
}
