//! The 1×1 convolutions' matrix products in bfloat16, on CPUs with AVX-512 BF16 (AMD Zen 4
//! and later, Intel Cooper Lake and Sapphire Rapids and later).
//!
//! `vdpbf16ps` multiplies pairs of bfloat16 values and adds both products to an f32 lane: 32
//! multiply-adds per instruction where an f32 `vfmadd` does 16, and half the bytes read. The
//! products are summed in f32; only the two factors are rounded (to 8 significant bits), the
//! weights once when the layer is built and the activations as a block of them is packed.
//! [`Precision`] chooses it at run time: `auto` takes it where the CPU has the instructions
//! and they pay there. Not every CPU that has `vdpbf16ps` issues it as often as an f32 FMA:
//! the backbone ran about a fifth faster in bfloat16 on the AMD Zen 4 development machine,
//! and its 1×1 layers about a quarter slower on the Intel Xeon that replaced it (`make
//! bench`, `bf16/*` beside the f32 benches; README.md has the figures). So `auto` times both
//! on 1×1 layers of the backbone's shapes, once per process ([`bf16_pays`]), and takes
//! bfloat16 only where it wins.
//!
//! The layout is the classic one of a packed GEMM: the weights `[m, k]` are stored once in
//! panels of [`MR`] rows, each k-pair of a row as one 32-bit word (`(w[2p+1] << 16) | w[2p]`),
//! so the kernel broadcasts a word to all lanes; a block of [`NR`] input columns is packed per
//! call the same way, one word per column and k-pair, so that lane `j` of a vector holds column
//! `j`'s pair. A task takes one column block (and a share of the rows when there are few
//! blocks), packs it into a thread's own buffer that stays in L1, and runs every row panel
//! over it, accumulating `MR × NR` outputs in sixteen registers.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

/// Rows of the weights per panel: the kernel's accumulators are `MR × 2` vectors.
const MR: usize = 8;
/// Columns per block: two 16-lane vectors.
const NR: usize = 32;

/// The arithmetic of the backbone's 1×1 convolutions on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bfloat16 products where the CPU has AVX-512 BF16 and they are faster there than f32
    /// ([`bf16_pays`]), else f32.
    #[default]
    Auto,
    /// f32 throughout.
    F32,
    /// bfloat16 products; f32 where the CPU lacks the instructions.
    Bf16,
}

impl Precision {
    /// `Bf16` where `bf16`, else `F32`: what a resolved choice comes to.
    fn resolved(bf16: bool) -> Precision {
        if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("precision {other:?}: expected auto, f32 or bf16")),
        }
    }
}

/// The process's default for layers built from now on: [`DEFAULT_F32`], [`DEFAULT_BF16`] or
/// [`DEFAULT_AUTO`] (resolved when the first layer is built, so that a command that builds
/// none never times the kernels). f32 until [`set_precision`] says otherwise, so that a
/// library user (and every test) gets f32 unless it asks.
static USE_BF16: AtomicU8 = AtomicU8::new(DEFAULT_F32);
const DEFAULT_F32: u8 = 0;
const DEFAULT_BF16: u8 = 1;
const DEFAULT_AUTO: u8 = 2;

thread_local! {
    /// A choice for layers built on this thread for a while ([`building_with`]), over the
    /// process's default.
    static BUILDING_BF16: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether this CPU has the instructions the bfloat16 kernel needs.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What `precision` comes to on this CPU: `F32` or `Bf16` (`bf16` gives bfloat16 where the
/// CPU has it; `auto` where it also pays, [`bf16_pays`]).
pub fn resolve(precision: Precision) -> Precision {
    let bf16 = match precision {
        Precision::F32 => false,
        Precision::Bf16 => cpu_has_bf16(),
        Precision::Auto => cpu_has_bf16() && bf16_pays(),
    };
    Precision::resolved(bf16)
}

/// Whether bfloat16 products are faster than f32 on this CPU: timed once per process, on
/// 1×1 layers of the backbone's shapes ([`super::pointwise::time_precisions`], a few
/// milliseconds), the first time `auto` is resolved on a CPU that has the instructions; the
/// figures are logged at debug level. A CPU without them never pays the timing.
pub fn bf16_pays() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| {
        if !cpu_has_bf16() {
            return false;
        }
        match super::pointwise::time_precisions() {
            Ok((f32_seconds, bf16_seconds)) => {
                let pays = bf16_seconds < f32_seconds;
                // Debug, not info: a CLI command that builds a model resolves the precision
                // first, and some write JSON to standard output, where the log goes too.
                tracing::debug!(
                    f32_ms = f32_seconds * 1e3,
                    bf16_ms = bf16_seconds * 1e3,
                    bf16 = pays,
                    "precision auto: 1x1 layers of the backbone timed in f32 and bfloat16"
                );
                pays
            }
            Err(error) => {
                tracing::warn!(%error, "precision auto: timing failed, computing in f32");
                false
            }
        }
    })
}

/// Sets the process's default for the backbone's 1×1 convolutions built from now on (the
/// CLI's `--precision`). `auto` stays unresolved until a layer is built ([`precision`]): a
/// command that builds no model never spends the timing. A layer keeps the precision it was
/// built with; a station's registry builds its models under `[model] precision`
/// ([`building_with`]), and `with_precision` on the backbone and the models on it chooses
/// another for one copy.
pub fn set_precision(precision: Precision) {
    let default = match precision {
        Precision::F32 => DEFAULT_F32,
        Precision::Bf16 => DEFAULT_BF16,
        Precision::Auto => DEFAULT_AUTO,
    };
    USE_BF16.store(default, Ordering::Relaxed);
}

/// Runs `build` with the layers it builds on this thread computing in `precision` (over the
/// process's default), and returns what `precision` came to beside its result. Scoped to the
/// thread, so that two stations in one process (or tests side by side) never see each
/// other's choice.
pub fn building_with<R>(precision: Precision, build: impl FnOnce() -> R) -> (R, Precision) {
    let resolved = resolve(precision);
    /// Puts the thread's earlier choice back, also when `build` panics.
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUILDING_BF16.set(self.0);
        }
    }
    let _restore = Restore(BUILDING_BF16.replace(Some(resolved == Precision::Bf16)));
    (build(), resolved)
}

/// What 1×1 convolutions built now, on this thread, compute in: `F32` or `Bf16`.
pub fn precision() -> Precision {
    if let Some(bf16) = BUILDING_BF16.get() {
        return Precision::resolved(bf16);
    }
    match USE_BF16.load(Ordering::Relaxed) {
        DEFAULT_BF16 => resolve(Precision::Bf16),
        DEFAULT_AUTO => resolve(Precision::Auto),
        _ => Precision::F32,
    }
}

/// Rounds to the nearest bfloat16, ties to even (as `vcvtneps2bf16`), as its 16 bits.
fn bf16_bits(value: f32) -> u32 {
    let bits = value.to_bits();
    if value.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

/// A layer's weights `[m, k]`, in bfloat16 panels for the kernel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    m: usize,
    k: usize,
    /// `[panels][k_pairs][MR]` words; rows past `m` and the pair past an odd `k` are zero.
    words: Vec<u32>,
}

impl PackedWeights {
    /// Packs row-major `[m, k]` weights.
    pub fn new(weight: &[f32], m: usize, k: usize) -> PackedWeights {
        let pairs = k.div_ceil(2);
        let panels = m.div_ceil(MR);
        let mut words = vec![0u32; panels * pairs * MR];
        let at = |row: usize, col: usize| {
            if row < m && col < k {
                bf16_bits(weight[row * k + col])
            } else {
                0
            }
        };
        for panel in 0..panels {
            for pair in 0..pairs {
                for r in 0..MR {
                    let row = panel * MR + r;
                    words[(panel * pairs + pair) * MR + r] =
                        (at(row, 2 * pair + 1) << 16) | at(row, 2 * pair);
                }
            }
        }
        PackedWeights { m, k, words }
    }
}

/// A matrix as its first value and its row stride. The tasks read the input through one (a
/// `*mut` only to share the type: nothing writes through it) and write the output through
/// another, each its own (row range, column block) tile.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Strided(*mut f32, usize);
// SAFETY: the tasks write disjoint tiles of the output and only read the input.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Strided {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Strided {}

#[cfg(target_arch = "x86_64")]
impl Strided {
    /// The pointer (a method, so that a closure captures the whole `Send` wrapper).
    fn ptr(self) -> *mut f32 {
        self.0
    }

    fn stride(self) -> usize {
        self.1
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each thread's packed column block, kept between calls.
    static PACKED_COLUMNS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c = a · b` (or `c += a · b` with `accumulate`), `a` the packed `[m, k]` weights, `b` a
/// row-major `[k, n]` input and `c` a row-major `[m, n]` output, products rounded to
/// bfloat16 and summed in f32, shared out over the thread pool.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and BF16 ([`cpu_has_bf16`]); `c` must point to `m × n`
/// writable values (initialised when `accumulate`), `b` must hold `k × n`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm(a: &PackedWeights, b: &[f32], n: usize, c: *mut f32, accumulate: bool) {
    debug_assert!(b.len() >= a.k * n);
    let (b, c) = (Strided(b.as_ptr().cast_mut(), n), Strided(c, n));
    // SAFETY: as the caller promises, with row strides `n`.
    unsafe { gemm_strided(a, b, n, c, accumulate, true) }
}

/// [`gemm`] on the calling thread only, with row strides of its own: row `p` of the input
/// starts at `b + p · b_stride`, row `i` of the output at `c + i · c_stride`. For callers that
/// share out the work themselves (a block computed in bands of rows, one band per thread).
///
/// # Safety
/// As [`gemm`]: the CPU must have the instructions; the `k` input rows of `n` values and the
/// `m` output rows of `n` values must lie in their allocations (the output's initialised when
/// `accumulate`), and nothing else may write them meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_on_this_thread(
    a: &PackedWeights,
    b: *const f32,
    b_stride: usize,
    n: usize,
    c: *mut f32,
    c_stride: usize,
    accumulate: bool,
) {
    let (b, c) = (Strided(b.cast_mut(), b_stride), Strided(c, c_stride));
    // SAFETY: as the caller promises.
    unsafe { gemm_strided(a, b, n, c, accumulate, false) }
}

/// The kernel's loop over tiles, on the pool (`parallel`) or on this thread.
///
/// # Safety
/// As [`gemm_on_this_thread`].
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_strided(
    a: &PackedWeights,
    b: Strided,
    n: usize,
    c: Strided,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    let blocks = n.div_ceil(NR);
    let panels = m.div_ceil(MR);
    // Enough tasks to keep every thread busy: with few column blocks (the late layers' small
    // planes), the row panels are shared out too. On this thread alone, each column block is
    // packed once for all the panels.
    let threads = rayon::current_num_threads().max(1);
    let row_groups = if parallel {
        (2 * threads).div_ceil(blocks).clamp(1, panels)
    } else {
        1
    };
    let panels_per_group = panels.div_ceil(row_groups);
    let task = |task: usize| {
        let (block, group) = (task / row_groups, task % row_groups);
        let first_panel = group * panels_per_group;
        let last_panel = (first_panel + panels_per_group).min(panels);
        if first_panel >= last_panel {
            return;
        }
        let j0 = block * NR;
        let width = NR.min(n - j0);
        PACKED_COLUMNS.with_borrow_mut(|packed| {
            // SAFETY: the caller checked the CPU; every index stays in `b` and `c` as the
            // bounds above keep (rows below `k` and `m`, columns below `n`).
            unsafe {
                x86::pack_columns(b.ptr(), b.stride(), k, j0, width, packed);
                for panel in first_panel..last_panel {
                    let rows = MR.min(m - panel * MR);
                    x86::kernel(
                        &a.words[panel * k.div_ceil(2) * MR..][..k.div_ceil(2) * MR],
                        packed,
                        c.ptr().add(panel * MR * c.stride() + j0),
                        c.stride(),
                        rows,
                        width,
                        accumulate,
                    );
                }
            }
        });
    };
    if parallel {
        (0..blocks * row_groups).into_par_iter().for_each(task);
    } else {
        (0..blocks * row_groups).for_each(task);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Mask of the first `width` of 16 lanes (the interleaved depthwise kernel's transposes
    /// use it too).
    pub(in crate::models::backbone) fn lanes(width: usize) -> __mmask16 {
        if width >= 16 {
            0xffff
        } else {
            ((1u32 << width) - 1) as __mmask16
        }
    }

    /// Packs columns `j0 .. j0 + width` of the `[k, _]` input at `b` (row stride `stride`):
    /// for each k-pair, `NR` words, word `j` holding column `j0 + j`'s two values as bfloat16
    /// (the odd row's in the high half); columns past `width` and the row past an odd `k` are
    /// zero.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_columns(
        b: *const f32,
        stride: usize,
        k: usize,
        j0: usize,
        width: usize,
        packed: &mut Vec<u32>,
    ) {
        // SAFETY: the caller has checked the CPU's features; loads and stores stay inside
        // `b`'s rows below k, columns below j0 + width, and `packed` (resized to `pairs × NR`).
        unsafe {
            let pairs = k.div_ceil(2);
            packed.clear();
            packed.resize(pairs * NR, 0);
            let dst = packed.as_mut_ptr();
            for pair in 0..pairs {
                for half in 0..NR / 16 {
                    let start = half * 16;
                    if start >= width {
                        break;
                    }
                    let mask = lanes(width - start);
                    let load = |row: usize| {
                        if row < k {
                            _mm512_maskz_loadu_ps(mask, b.add(row * stride + j0 + start))
                        } else {
                            _mm512_setzero_ps()
                        }
                    };
                    let (even, odd) = (load(2 * pair), load(2 * pair + 1));
                    let even = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                        _mm512_cvtneps_pbh(even),
                    ));
                    let odd = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                        _mm512_cvtneps_pbh(odd),
                    ));
                    let words = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                    _mm512_storeu_si512(dst.add(pair * NR + start).cast(), words);
                }
            }
        }
    }

    /// One `rows × width` tile (at most `MR × NR`) of the output at `c` (row stride `n`):
    /// `panel` is the weights' panel (`[pairs][MR]` words), `packed` the column block.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn kernel(
        panel: &[u32],
        packed: &[u32],
        c: *mut f32,
        n: usize,
        rows: usize,
        width: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller has checked the CPU's features and that the tile lies inside
        // `c`; `panel` and `packed` hold `pairs` k-pairs of MR and NR words.
        unsafe {
            let pairs = packed.len() / NR;
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let mut a = panel.as_ptr();
            let mut b = packed.as_ptr();
            for _ in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], w, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], w, b1);
                }
                a = a.add(MR);
                b = b.add(NR);
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (half, &sum) in acc.iter().enumerate() {
                    let start = half * 16;
                    if start >= width {
                        break;
                    }
                    let mask = lanes(width - start);
                    let at = c.add(r * n + start);
                    let value = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_choice_holds_on_its_thread_only() {
        let default = precision();
        let (inside, resolved) = building_with(Precision::Bf16, precision);
        assert_eq!(inside, resolve(Precision::Bf16));
        assert_eq!(resolved, inside);
        let (f32_inside, _) = building_with(Precision::F32, precision);
        assert_eq!(f32_inside, Precision::F32);
        // Another thread, meanwhile, builds with the process's default.
        let (elsewhere, _) = building_with(Precision::Bf16, || {
            std::thread::spawn(precision).join().expect("thread")
        });
        assert_eq!(elsewhere, default);
        assert_eq!(precision(), default, "restored after the scope");
    }

    #[test]
    fn auto_takes_bfloat16_only_where_it_pays() {
        assert_eq!(resolve(Precision::F32), Precision::F32);
        // An explicit choice holds wherever the CPU can.
        let can = Precision::resolved(cpu_has_bf16());
        assert_eq!(resolve(Precision::Bf16), can);
        let pays = bf16_pays();
        assert!(!pays || cpu_has_bf16(), "never without the instructions");
        let auto = Precision::resolved(pays);
        assert_eq!(resolve(Precision::Auto), auto);
        // Timed once: the same answer again.
        assert_eq!(bf16_pays(), pays);
        let (f32_seconds, bf16_seconds) =
            super::super::pointwise::time_precisions().expect("times both");
        assert!(
            f32_seconds > 0.0 && f32_seconds.is_finite(),
            "{f32_seconds}"
        );
        assert!(
            bf16_seconds > 0.0 && bf16_seconds.is_finite(),
            "{bf16_seconds}"
        );
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ lies halfway between two bfloat16 values: to the even one, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(bf16_bits(-2.0), 0xc000);
    }

    /// Every shape the kernel cuts differently: rows not a multiple of the panel, columns not
    /// a multiple of the block (and fewer than one vector), odd depths, accumulation.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn products_match_f32_within_bfloat16_rounding() {
        if !cpu_has_bf16() {
            eprintln!("skipping: this CPU has no AVX-512 BF16");
            return;
        }
        let mut seed = 1u32;
        let mut random = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (m, k, n) in [
            (8, 16, 32),
            (13, 7, 5),
            (40, 112, 257),
            (3, 1, 70),
            (672, 112, 36),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| random()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| random()).collect();
            let start: Vec<f32> = (0..m * n).map(|_| random()).collect();
            let packed = PackedWeights::new(&a, m, k);
            for accumulate in [false, true] {
                let mut c = start.clone();
                // SAFETY: the CPU was checked; c holds m × n, b k × n.
                unsafe { gemm(&packed, &b, n, c.as_mut_ptr(), accumulate) };
                for i in 0..m {
                    for j in 0..n {
                        let exact: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        let magnitude: f32 =
                            (0..k).map(|p| (a[i * k + p] * b[p * n + j]).abs()).sum();
                        let want = exact + if accumulate { start[i * n + j] } else { 0.0 };
                        // Each factor is off by at most 2⁻⁹ of itself.
                        let bound = magnitude * 2.0 * 2f32.powi(-8) + 1e-6;
                        assert!(
                            (c[i * n + j] - want).abs() <= bound,
                            "{m}x{k}x{n} at ({i}, {j}), accumulate {accumulate}: {} vs {want}",
                            c[i * n + j]
                        );
                    }
                }
            }
        }
    }
}
