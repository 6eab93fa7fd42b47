//! An inverted-residual block computed a band of rows at a time, on the CPU.
//!
//! Layer by layer, a block's 1×1 expansion writes its whole expanded activation (96 channels
//! of 128×128 at a 256 input: 6 MB), the depthwise convolution reads it back and writes its
//! own, and the projection reads that: each pass goes through L3, past the 1–2 MB of a core's
//! L2: the depthwise layers ran at about 78 GFLOP/s where the 1×1 layers reach 335 (`cargo
//! bench --bench backbone`, AMD Zen 5). Here each thread
//! takes a run of consecutive output rows of an image and works through it in bands small
//! enough for L2 ([`BAND_BYTES`]): it expands the input rows the band reads, filters them and
//! projects the filtered rows straight into the block's output, which is the only activation
//! written in full. Rows a band shares with the next (the kernel's overlap) stay expanded and
//! move to the front of the buffer, so no row is expanded twice except at the edge between
//! two threads' runs.
//!
//! The arithmetic is the layers' own ([`super::pointwise::Pointwise::product_on_this_thread`],
//! [`DepthwiseConv::convolve_rows`]), so a banded block gives the layers' values within
//! rounding (f32 gemm may block its sums differently on fewer columns; a test holds the two
//! within 1e-4). Blocks whose expanded
//! activation fits in L2 anyway ([`BANDED_MIN_BYTES`]) run layer by layer: there the threads
//! share each layer's channels and no rows are expanded twice.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::MbConv;
use super::depthwise::DepthwiseConv;

/// The most bytes of expanded rows one band holds, about three quarters of a core's L2 (1 MB
/// on the AMD Zen 5 measured; the band's filtered rows, up to as many bytes again for
/// stride-1 blocks, spill to L3 but are read once). Chosen there by rebuilding with each
/// budget and timing Lite0 at a 256 input (`EfficientNetLite::features`, the variants' runs
/// interleaved), median ms f32 / bf16: 192 kB 2.42 / 1.84, 384 kB 2.32 / 1.77, 768 kB
/// 2.23 / 1.67, 1.5 MB 2.30 / 1.76 (layer by layer 2.40 / 2.05).
const BAND_BYTES: usize = 768 * 1024;

/// A block whose expanded activation of one image (f32 bytes) is smaller than this runs layer
/// by layer: it fits in L2 already, and banded the threads would split its few rows and
/// expand the rows around the split twice. Banding every block measured slower (timed as
/// [`BAND_BYTES`] was; Lite0 at 256, median ms f32 / bf16: all blocks 2.63 / 1.93, from
/// 512 kB 2.28 / 1.70, from 1 MB 2.26 / 1.68; at 128: 1.27 / 1.04 against 0.73 / 0.63 from
/// 1 MB).
pub(super) const BANDED_MIN_BYTES: usize = 1 << 20;

/// Whether `block` pays off banded on `[_, c_in, h, w]` inputs: its expanded activation of one
/// image would not stay in L2.
pub(super) fn pays(block: &MbConv, h: usize, w: usize) -> bool {
    let (c_mid, _, _) = block.depthwise.shape();
    c_mid * h * w * size_of::<f32>() >= BANDED_MIN_BYTES
}

/// Output rows per band for a block on `w`-wide inputs: as many as keep the input rows they
/// read, expanded, within [`BAND_BYTES`] (at least one).
fn band_rows(depthwise: &DepthwiseConv, w: usize) -> usize {
    let (c_mid, kernel, stride) = depthwise.shape();
    let rows_that_fit = BAND_BYTES / (c_mid * w * size_of::<f32>()).max(1);
    rows_that_fit.saturating_sub(kernel) / stride + 1
}

/// One application of a block, banded, as a candle op on the block's input.
pub(super) struct Banded<'a> {
    block: &'a MbConv,
    /// Output rows per band.
    band_rows: usize,
    /// Runs of bands per image: one per thread of the pool unless a test says otherwise.
    runs: Option<usize>,
}

impl<'a> Banded<'a> {
    /// `block` on `w`-wide inputs, in bands whose expanded rows fit [`BAND_BYTES`].
    pub(super) fn new(block: &'a MbConv, w: usize) -> Banded<'a> {
        Banded {
            block,
            band_rows: band_rows(&block.depthwise, w),
            runs: None,
        }
    }

    /// The same with `band_rows` output rows per band and `runs` runs of bands per image
    /// (tests cut the rows every way, whatever the pool's size).
    #[cfg(test)]
    fn cut(block: &'a MbConv, band_rows: usize, runs: usize) -> Banded<'a> {
        Banded {
            block,
            band_rows: band_rows.max(1),
            runs: Some(runs.max(1)),
        }
    }
}

/// A thread's buffers, kept between bands, blocks and images.
#[derive(Default)]
struct BandBuffers {
    /// `[c_mid][held_rows][w]`: the expanded input rows of the band at hand, without the
    /// expansion's bias and activation (the depthwise convolution applies them as it reads).
    expanded: Vec<f32>,
    /// `[c_mid][band rows · wo]`: the band's filtered rows, the projection's input.
    filtered: Vec<f32>,
}

thread_local! {
    static BAND_BUFFERS: RefCell<BandBuffers> = RefCell::new(BandBuffers::default());
}

/// The output, written by the tasks: each its own rows of its own image.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: the tasks write disjoint row ranges of the output.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The pointer (a method, so that a closure captures the whole `Send` wrapper).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl CustomOp1 for Banded<'_> {
    fn name(&self) -> &'static str {
        "banded-mbconv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let block = self.block;
        let (b, c_in, h, w) = layout.shape().dims4()?;
        let (c_mid, _, _) = block.depthwise.shape();
        let (project_in, c_out) = block.project.channels();
        let (expand_in, expand_out) = block
            .expand
            .as_ref()
            .map_or((c_mid, c_mid), |e| e.channels());
        if c_in != expand_in || expand_out != c_mid || project_in != c_mid {
            candle_core::bail!(
                "block takes {expand_in} channels to {expand_out}, {c_mid} depthwise, then \
                 {project_in} to {c_out}; input has {c_in}"
            );
        }
        block.depthwise.check_band_input(c_mid)?;
        if b == 0 || h == 0 || w == 0 {
            candle_core::bail!("block on an empty input ({b} images of {h}x{w})");
        }
        let input = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("banded block needs a contiguous f32 input"),
        };
        let (ho, wo) = block.depthwise.output_size_of(h, w);
        if block.skip && (c_out, ho, wo) != (c_in, h, w) {
            candle_core::bail!("block with a skip changes its input's shape");
        }
        let band_rows = self.band_rows.min(ho);
        // One run of consecutive bands per thread and image: only the edge between two runs
        // expands its rows twice.
        let runs = (self.runs)
            .unwrap_or_else(rayon::current_num_threads)
            .clamp(1, ho.div_ceil(band_rows));
        let rows_per_run = ho.div_ceil(runs);
        let len = b * c_out * ho * wo;
        let mut output: Vec<f32> = Vec::with_capacity(len);
        let out = Output(output.as_mut_ptr());
        (0..b * runs).into_par_iter().for_each(|task| {
            let (image, run) = (task / runs, task % runs);
            let rows = run * rows_per_run..((run + 1) * rows_per_run).min(ho);
            if rows.is_empty() {
                return;
            }
            let input = &input[image * c_in * h * w..][..c_in * h * w];
            BAND_BUFFERS.with_borrow_mut(|buffers| {
                // SAFETY: the output has room for `b` images of `c_out × ho × wo` values
                // (its capacity) and this task alone writes rows `rows` of image `image`.
                unsafe {
                    self.run_rows(
                        input,
                        (h, w),
                        rows,
                        band_rows,
                        out.ptr().add(image * c_out * ho * wo),
                        buffers,
                    )
                }
            });
        });
        // SAFETY: the runs cover rows 0..ho of every image, and each band writes every value
        // of its rows in every output channel (bias first, then the product added).
        unsafe { output.set_len(len) };
        Ok((CpuStorage::F32(output), Shape::from((b, c_out, ho, wo))))
    }
}

impl Banded<'_> {
    /// Output rows `rows` of one image, `band_rows` at a time: `input` is its `[c_in, h, w]`
    /// planes, `output` the start of its `[c_out, ho, wo]` output.
    ///
    /// # Safety
    /// `output` must have room for `c_out × ho × wo` values, and no other thread may touch
    /// rows `rows` of them meanwhile.
    unsafe fn run_rows(
        &self,
        input: &[f32],
        (h, w): (usize, usize),
        rows: Range<usize>,
        band_rows: usize,
        output: *mut f32,
        buffers: &mut BandBuffers,
    ) {
        let block = self.block;
        let (c_mid, kernel, stride) = block.depthwise.shape();
        let (ho, wo) = block.depthwise.output_size_of(h, w);
        let plane = h * w;
        // The most input rows a band reads, and so the rows each channel has in `expanded`.
        let held_rows = (band_rows - 1) * stride + kernel;
        let BandBuffers { expanded, filtered } = buffers;
        if block.expand.is_some() {
            expanded.resize(c_mid * held_rows * w, 0.0);
        }
        filtered.resize(c_mid * band_rows * wo, 0.0);
        // The input rows whose expansion `expanded` holds, from its row 0.
        let mut held = 0..0;
        let mut first = rows.start;
        while first < rows.end {
            let band = first..(first + band_rows).min(rows.end);
            let reads = block.depthwise.input_rows(h, w, band.clone());
            let (source, source_stride): (&[f32], usize) = match &block.expand {
                None => (&input[reads.start * w..], plane),
                Some(expand) => {
                    // Bands move down, so a band's rows start at or below the last one's:
                    // what they share moves to the front, the rest is expanded now.
                    let shared = reads.start.max(held.start)..held.end.min(reads.end);
                    let fresh = if shared.is_empty() {
                        reads.start
                    } else {
                        let skipped = (shared.start - held.start) * w;
                        if skipped > 0 {
                            for channel in expanded.chunks_exact_mut(held_rows * w) {
                                channel.copy_within(skipped..skipped + shared.len() * w, 0);
                            }
                        }
                        shared.end
                    };
                    // SAFETY: input rows `fresh..reads.end` of each of the `c_in` planes lie
                    // in `input`; they land in rows `fresh - reads.start ..` of each
                    // channel's `held_rows` (a band reads at most that many).
                    unsafe {
                        expand.product_on_this_thread(
                            input.as_ptr().add(fresh * w),
                            plane,
                            (reads.end - fresh) * w,
                            expanded.as_mut_ptr().add((fresh - reads.start) * w),
                            held_rows * w,
                            false,
                        );
                    }
                    held = reads.clone();
                    (&expanded[..], held_rows * w)
                }
            };
            block
                .depthwise
                .convolve_rows(source, source_stride, (h, w), band.clone(), filtered);
            // The projection starts from its bias (and the skip, the block's input) and adds
            // the product onto it.
            let n = band.len() * wo;
            for (channel, &bias) in block.project.bias().iter().enumerate() {
                // SAFETY: rows `band` of output channel `channel`, inside the image's output
                // and this task's rows.
                let start = unsafe { output.add(channel * ho * wo + band.start * wo) };
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(start.cast::<MaybeUninit<f32>>(), n) };
                if block.skip {
                    let skip = &input[channel * plane + band.start * w..][..n];
                    for (d, &s) in dst.iter_mut().zip(skip) {
                        d.write(s + bias);
                    }
                } else {
                    for d in dst {
                        d.write(bias);
                    }
                }
            }
            // SAFETY: `filtered` holds `c_mid` rows of `n` values; the output rows were
            // initialised just above.
            unsafe {
                block.project.product_on_this_thread(
                    filtered.as_ptr(),
                    n,
                    n,
                    output.add(band.start * wo),
                    ho * wo,
                    true,
                );
            }
            first = band.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};

    use super::super::depthwise::BiasActivation;
    use super::super::pointwise::Pointwise;
    use super::*;

    fn random(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 0.5f32, shape, &Device::Cpu).expect("random")
    }

    /// A block with random weights: `(expand_ratio, kernel, stride, c_in, c_out)`.
    fn block(
        (expand_ratio, kernel, stride, c_in, c_out): (usize, usize, usize, usize, usize),
    ) -> MbConv {
        let c_mid = c_in * expand_ratio;
        let mut depthwise = DepthwiseConv::new(
            &random(&[c_mid, 1, kernel, kernel]),
            &random(&[c_mid]),
            stride,
            true,
        )
        .expect("depthwise");
        let expand = (expand_ratio > 1).then(|| {
            let bias = random(&[c_mid]);
            depthwise = depthwise
                .clone()
                .with_input_activation(BiasActivation::new(&bias, true).expect("activation"));
            Pointwise::new(&random(&[c_mid, c_in]), &bias).expect("expand")
        });
        MbConv {
            expand,
            depthwise,
            project: Pointwise::new(&random(&[c_out, c_mid]), &random(&[c_out])).expect("project"),
            skip: stride == 1 && c_in == c_out,
            banded: false,
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff")
    }

    /// Every kind of block (expanded or not, stride 1 and 2, 3×3 and 5×5, with and without
    /// the skip), on odd and even sizes, cut into bands every way from one row to more rows
    /// than the image has: the same values as the layers one after another, in f32 and in
    /// bfloat16 where the CPU has it.
    #[test]
    fn banded_blocks_match_the_layers_one_after_another() {
        use super::super::bf16::{Precision, cpu_has_bf16};
        let mut precisions = vec![Precision::F32];
        if cpu_has_bf16() {
            precisions.push(Precision::Bf16);
        } else {
            eprintln!("bfloat16 not checked: this CPU has no AVX-512 BF16");
        }
        for precision in precisions {
            let in_precision = |block: MbConv| MbConv {
                expand: block.expand.map(|e| e.with_precision(precision)),
                project: block.project.with_precision(precision),
                ..block
            };
            check_bands(in_precision);
        }
    }

    fn check_bands(in_precision: impl Fn(MbConv) -> MbConv) {
        for shape in [
            (1, 3, 1, 8, 4),
            (1, 3, 1, 6, 6),
            (1, 3, 2, 6, 6),
            (6, 3, 2, 4, 6),
            (6, 3, 1, 6, 6),
            (6, 5, 2, 6, 10),
            (6, 5, 1, 10, 10),
        ] {
            let block = in_precision(block(shape));
            // Odd and even, one row, and 70 wide: the kernel's runs of four vectors.
            for (b, h, w) in [(1, 9, 7), (2, 16, 16), (1, 5, 12), (1, 1, 3), (1, 11, 70)] {
                let xs = random(&[b, shape.3, h, w]);
                let layers = block.forward(&xs).expect("layers");
                for band_rows in [1, 2, 3, 5, 64] {
                    // One run per image, two, three, and more runs than bands.
                    for runs in [1, 2, 3, 16] {
                        let banded = xs
                            .apply_op1_no_bwd(&Banded::cut(&block, band_rows, runs))
                            .expect("banded");
                        assert_eq!(banded.dims(), layers.dims(), "{shape:?} {h}x{w}");
                        let diff = max_diff(&banded, &layers);
                        assert!(
                            diff < 1e-4,
                            "{shape:?} on {b}×{h}x{w} in bands of {band_rows}, {runs} runs: \
                             {diff}"
                        );
                    }
                }
            }
        }
    }

    /// A block run through the network's own path takes the banded op where it pays and gives
    /// the layers' values.
    #[test]
    fn a_block_takes_the_banded_op_where_it_pays() {
        let layers = block((6, 3, 1, 8, 8));
        let banded = MbConv {
            banded: true,
            ..layers.clone()
        };
        // 48 channels of 80×80: 1.2 MB expanded.
        let xs = random(&[1, 8, 80, 80]);
        assert!(pays(&banded, 80, 80));
        let diff = max_diff(
            &banded.forward(&xs).expect("banded"),
            &layers.forward(&xs).expect("layers"),
        );
        assert!(diff < 1e-4, "{diff}");
        // A block the banded op would refuse says why instead of reading past its buffers.
        let mut wrong = banded.clone();
        wrong.expand =
            Some(Pointwise::new(&random(&[40, 8]), &random(&[40])).expect("narrower expansion"));
        let error = xs
            .apply_op1_no_bwd(&Banded::new(&wrong, 80))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("8 channels to 40, 48 depthwise"), "{error}");
    }

    #[test]
    fn bands_fit_the_budget_and_large_activations_are_banded() {
        // Lite0's block 1 at a 256 input: 96 channels of 128-wide rows, stride 2, 3×3.
        let block1 = block((6, 3, 2, 16, 24));
        let rows = band_rows(&block1.depthwise, 128);
        assert!(rows >= 1);
        assert!(((rows - 1) * 2 + 3) * 96 * 128 * 4 <= BAND_BYTES);
        assert!(
            ((rows * 2) + 3) * 96 * 128 * 4 > BAND_BYTES,
            "as many rows as fit"
        );
        assert!(pays(&block1, 128, 128), "6 MB expanded");
        // Lite0's block 9: 672 channels of 16×16, 688 kB, fits in L2.
        assert!(!pays(&block((6, 5, 1, 112, 112)), 16, 16));
        // A band too wide for the budget still has a row.
        assert_eq!(band_rows(&block((6, 5, 1, 112, 112)).depthwise, 4096), 1);
    }
}
