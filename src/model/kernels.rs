//! The matrix products of the forward pass: the tied lm_head over wte's rows, every Conv1D layer,
//! and attention's q·kᵀ and weights·v per head. They go through the `gemm` crate (the GEMM that
//! candle uses; pure Rust, AVX2/FMA or AVX-512 picked at run time, no system library), except
//! prompts of 2 to [`HAND_MAX_TOKENS`] tokens on AVX2 + FMA, where a hand-written kernel
//! (`avx2` below) is faster, and the small products summed pairwise (attention's per head), which
//! `model/pairwise.rs` computes with the same floats as gemm would, faster.
//!
//! [`matmul`] takes any strides, so no operand is copied into another layout first: a Conv1D
//! weight kept [out, in] is passed as its transposed view [in, out]. From 16 to 64 tokens the
//! product is written into a column-major destination, so that gemm reads the weight in place
//! instead of packing it (`product` below).
//!
//! gemm's AVX-512 kernels need its `x86-v4` feature (Cargo.toml); without it gemm stopped at AVX2
//! on AVX-512 CPUs. On an Intel Xeon of this project's kind (2 cores, AVX-512), whole passes of
//! GPT-2 small's shape, the two builds taking turns (medians of 3, three turns each): 128 tokens
//! 477-757 -> 373-458 ms at 1 thread, 324-335 -> 191-224 at 2; 512 tokens 1827-3000 -> 1266-1897
//! and 1154-1635 -> 743-886. A prompt's hidden states are the same floats: each output element
//! is still summed in one lane, in order, a K chunk at a time. The matrix-vector products of
//! decode (T = 1, gemm's own path) sum in 16-wide lanes there instead of 8: other floats, of the
//! same accuracy (CHECKPOINTS.md, "The reference's headroom").
//!
//! Threads: [`set_threads`] makes a pool; a product large enough splits its output columns (the
//! weight's columns, N) into one block per thread, each computed on its own thread. Each thread
//! packs and reads only its own part of the weight, so prefill scales with the cores and decode (a
//! matrix-vector product, bound by memory bandwidth) with the bandwidth they get. How an element
//! is summed is chosen from the whole product's shape (`Summation` below), so the result does not
//! depend on the thread count.
//!
//! Measured on this project's 2-core AMD EPYC (2.45 GHz, AVX2 + FMA; the machine was shared with
//! other builds, so best of 7 runs): GPT-2 small's four Conv1D products over its 12 layers, one
//! thread, in GFLOP/s (T = 1: ms for the 12 layers, then for the lm_head row):
//!
//! | T tokens | gemm 0.19 | matrixmultiply 0.3 | hand-written AVX2 kernel |
//! |---|---|---|---|
//! | 1 (decode) | 30-34 ms, 12-13 ms | 65-88 ms, 36-48 ms | 33-88 ms, 13-35 ms |
//! | 8 | 11-17.6 | 16-19.7 | 17-24 |
//! | 16 | 27-31 | 26-31 | 29-31 |
//! | 128 | 64-66 | 46-62 | 41-48 |
//! | 512 | 76-77 | 71.7 | 69 |
//!
//! matrixmultiply has no matrix-vector path (2-3x slower at decode) and is slower than gemm from
//! 128 tokens on. Below 16 tokens the hand-written kernel is the faster; on the whole model an
//! 8-token prefill took 110 ms with it against 153-163 ms with gemm alone (`bench-rust`, same
//! hour, machine loaded), and 60-73 ms against 72-100 ms with gemm into a column-major
//! destination (later, alternating runs).
//!
//! Element-wise passes over a prompt's activations (a Conv1D's bias, the GELU) run on the pool's
//! threads too ([`for_each_row_block`]).

use std::ops::Range;
use std::sync::{Arc, RwLock};

use ndarray::{Array, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Dimension, IntoDimension, ShapeBuilder, s};
use rayon::iter::ParallelExtend;

use super::pairwise;

/// Products with fewer multiply-adds than this (attention's per-head ones for short prompts) stay
/// on the calling thread: handing them to the pool would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Element-wise passes over fewer elements than this stay on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Prompts of 2 to this many tokens go through the hand-written kernel where the CPU has AVX2 and
/// FMA (see the table at the top).
pub const HAND_MAX_TOKENS: usize = 15;

/// Prompts of up to this many tokens are computed into a column-major destination ([`product`]):
/// GPT-2 small's Conv1D products over 12 layers, one thread, 32 tokens: 125-160 ms against
/// 175-230 ms (same hour, alternating runs); 128 tokens: no difference. Checked again on the
/// Xeon, whole passes at 2 threads, the binaries taking turns (medians of 7, two turns each): 16
/// instead of 64, 64 tokens 102.0-112.0 -> 119.3-119.9 ms, 24 and 40 tokens within the noise;
/// every prompt column-major, 128 tokens 181.0-191.9 -> 215.2-235.0 and 512 tokens 703.1-722.1 ->
/// 851.6-874.5.
const WEIGHT_UNPACKED_MAX_TOKENS: usize = 64;

/// The pool the products run on; None: the calling thread alone.
static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// How many threads the products use (1: the calling thread, no pool).
pub fn set_threads(threads: usize) {
    let pool = (threads > 1).then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build().ok().map(Arc::new)).flatten();
    *POOL.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pool;
}

pub fn threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

fn pool() -> Option<Arc<rayon::ThreadPool>> {
    POOL.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

/// Runs `work` on every part, each part on one thread of the pool when there is one, else in order
/// on the calling thread: attention's heads, which are independent of one another. Each part is
/// computed the same way whatever the thread count, so the results do not depend on it.
pub fn for_each_part<P: Send>(parts: impl Iterator<Item = P>, work: impl Fn(P) + Sync) {
    match pool() {
        None => parts.for_each(work),
        Some(pool) => {
            let parts: Vec<P> = parts.collect();
            pool.scope(|scope| {
                let work = &work;
                for part in parts {
                    scope.spawn(move |_| work(part));
                }
            })
        }
    }
}

/// Runs `work` on blocks of `a`'s rows, one block per thread of the pool (on the calling thread
/// alone when there is no pool or `a` is small): the element-wise passes over a prompt's
/// activations (a Conv1D's bias, the GELU), which would otherwise leave the other threads idle
/// between two products. Each element is computed the same way whatever the thread count.
pub fn for_each_row_block(mut a: ArrayViewMut2<f32>, work: impl Fn(ArrayViewMut2<f32>) + Sync) {
    let threads = threads();
    if threads == 1 || a.len() < PARALLEL_MIN_ELEMENTS {
        return work(a);
    }
    let rows_per_block = a.nrows().div_ceil(threads);
    for_each_part(a.axis_chunks_iter_mut(Axis(0), rows_per_block), work);
}

/// An array of `shape` with `value` everywhere, written by the pool's threads when there is one
/// and the array is large: attention's [H, T, S] scores and weights (12.6 MB each at 512 tokens)
/// and the zeroed outputs a prompt's steps then fill (the products', q/k/v's heads, the merged
/// heads), which one thread would otherwise write while the others wait.
///
/// GPT-2 small's shape at 512 tokens, two threads (the same floats):
/// - the calling thread's share of perf's samples (the rest is the pool's): 3.7% with every array
///   filled on it; 2.1% with the scores and weights filled here and q/k/v's split into heads on the
///   pool ([`super::attention::Attention::qkv`]); 0.9-1.1% with the zeroed outputs filled here too;
/// - whole passes, the first two variants taking turns in one process, 30 pairs: a median of 0.95
///   of the first, twice (the first against itself: 0.99). The third step is below the noise of
///   such pairs (0.97 and 1.00, against itself 0.98).
pub fn filled<D: Dimension>(shape: impl IntoDimension<Dim = D>, value: f32) -> Array<f32, D> {
    let shape = shape.into_dimension();
    let len = shape.size();
    match pool().filter(|_| len >= PARALLEL_MIN_ELEMENTS) {
        None => Array::from_elem(shape, value),
        Some(pool) => {
            let mut values = Vec::with_capacity(len);
            pool.install(|| values.par_extend(rayon::iter::repeat_n(value, len)));
            Array::from_shape_vec(shape, values).expect("`len` values fill the shape")
        }
    }
}

/// x [T, K] · w [K, N] -> [T, N], for any strides of x and w.
pub fn matmul(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let mut y = filled((x.nrows(), w.ncols()), 0.0); // [T, N]
    matmul_into(x, w, y.view_mut());
    y
}

/// y [T, N] = x [T, K] · w [K, N], for any strides of x, w and y: [`matmul`] into a part of a
/// larger array (attention's scores, a block of query rows at a time).
pub fn matmul_into(x: ArrayView2<f32>, w: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
    let ((t, k), n) = (x.dim(), w.ncols());
    assert!(w.nrows() == k && y.dim() == (t, n), "matmul: x is [{t}, {k}], w {:?}, y {:?}", w.dim(), y.dim());
    let summation = Summation::for_shape(t, k, n);
    match pool().filter(|_| t * n * k >= PARALLEL_MIN_WORK) {
        None => product(x, w, y, summation),
        Some(pool) => {
            let columns_per_part = n.div_ceil(pool.current_num_threads()).max(1);
            let parts = w.axis_chunks_iter(Axis(1), columns_per_part).zip(y.axis_chunks_iter_mut(Axis(1), columns_per_part));
            pool.scope(|scope| {
                for (w_part, y_part) in parts {
                    scope.spawn(move |_| product(x, w_part, y_part, summation)); // [K, n_part] -> [T, n_part]
                }
            });
        }
    }
}

/// A weight [N, K] (a Conv1D's [out, in]) copied into the layout the products read fastest: each
/// row starts an odd number of 64-byte cache lines after the one before (a few floats of padding
/// after each row; the view is [N, K]).
///
/// gemm packs such a weight 16 rows at a time, one element of each row after another. Rows 12 KB
/// apart (GPT-2 small's mlp.c_proj, K = 3072; 4 KB for K = 1024) all fall in one set of the L1
/// cache, which then holds only 8 of the 16 lines that packing reads. mlp.c_proj's shape, one
/// thread, same runs (the same floats): 128 tokens 61.7-62.0 -> 67.2-68.2 GFLOP/s, 512 tokens
/// 71.1-71.3 -> 73.3-74.9; two threads 80.1-123.3 -> 90.5-131.7 and 80.3-103.3 -> 83.9-106.3. The
/// products of K = 768 (rows 3 KB apart) measured the same either way.
pub fn with_padded_rows(w: ArrayView2<f32>) -> Array2<f32> {
    let mut padded = zeros_with_padded_rows(w.nrows(), w.ncols()); // [N, K], rows padded
    padded.assign(&w);
    padded
}

/// An array [rows, cols] of zeros whose rows start an odd number of 64-byte cache lines apart (a
/// few floats of padding after each row), filled as [`filled`] fills.
pub fn zeros_with_padded_rows(rows: usize, cols: usize) -> Array2<f32> {
    const FLOATS_PER_LINE: usize = 16;
    let stride = (cols.div_ceil(FLOATS_PER_LINE) | 1) * FLOATS_PER_LINE; // an odd number of lines
    let mut padded = filled((rows, stride), 0.0); // [rows, stride]
    padded.slice_collapse(s![.., ..cols]); // [rows, cols], rows `stride` floats apart
    padded
}

/// x [T, C] · wᵀ with w [N, C] -> [T, N]: a Conv1D weight as the loader keeps it, [out, in], or
/// wte [V, C] for the lm_head.
pub fn x_wt(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    matmul(x, w.t())
}

/// [`x_wt`] for an output that the next product reads as its x (c_fc's, which mlp.c_proj reads):
/// past `WEIGHT_UNPACKED_MAX_TOKENS` (64) tokens, into rows that start an odd number of cache lines
/// apart ([`zeros_with_padded_rows`]). gemm reads x's rows there in place, 6 at a time, and rows
/// 12 KB apart (K = 3072) all fall in one set of the L1 cache, as the weight rows did when gemm
/// packed them ([`with_padded_rows`]). mlp.c_proj's shape on the Xeon, both layouts of x taking
/// turns (the same floats): through [`x_wt`] (medians of 31, three runs), 512 tokens 186.9, 186.0
/// and 160.2 -> 197.5, 195.3 and 163.2 GFLOP/s at 2 threads, 97.0-128.2 against 97.4-128.9 at 1;
/// 128 tokens +1-3% at 2 threads, 0-5% at 1. gemm's chained calls alone, one thread (four runs):
/// 512 tokens 114.2-131.6 -> 134.1-135.7. K = 768 (rows 3 KB apart): unchanged.
pub fn x_wt_for_next_product(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let (t, n) = (x.nrows(), w.nrows());
    if t <= WEIGHT_UNPACKED_MAX_TOKENS {
        return x_wt(x, w);
    }
    let mut y = zeros_with_padded_rows(t, n); // [T, N], rows padded
    matmul_into(x, w.t(), y.view_mut());
    y
}

/// y [T, N] = x [T, K] · w [K, N] on the calling thread, by whichever kernel is faster for T.
///
/// gemm's micro-kernel runs down the destination's contiguous axis. Into y [T, N] (row-major), it
/// computes yᵀ = wᵀ·xᵀ with the weight as its left operand, which it packs first (one element at
/// a time: the weight's rows are its columns). From [`HAND_MAX_TOKENS`] + 1 to
/// [`WEIGHT_UNPACKED_MAX_TOKENS`] tokens, a column-major destination is faster: the weight is then
/// its right operand, read in place, six weight rows at a time, and only x is packed.
fn product(x: ArrayView2<f32>, w: ArrayView2<f32>, mut y: ArrayViewMut2<f32>, summation: Summation) {
    #[cfg(target_arch = "x86_64")]
    if (2..=HAND_MAX_TOKENS).contains(&x.nrows())
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // The kernel wants w's rows [N, K] each contiguous, at one stride (padded or not), and x
        // as rows [T, K], contiguous.
        let w_rows: Option<Vec<&[f32]>> = w.reversed_axes().into_outer_iter().map(|row| row.to_slice()).collect();
        if let (Some(w_rows), Some(x_rows)) = (w_rows, x.to_slice()) {
            let (t, k) = x.dim();
            let w_stride = w.strides()[1].unsigned_abs(); // floats from one row of w [N, K] to the next
            let mut y_nt = vec![0.0f32; w.ncols() * t]; // [N, T]: each weight row's dots with every token
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            unsafe { avx2::dot_rows(x_rows, t, k, &w_rows, w_stride, &mut y_nt) };
            for (mut column, dots) in y.columns_mut().into_iter().zip(y_nt.chunks_exact(t)) {
                column.assign(&ArrayView1::from(dots));
            }
            return;
        }
    }
    if let Summation::Pairwise { chunk } = summation
        && w.len() <= PAIRWISE_KERNEL_MAX_WEIGHT
    {
        return pairwise::product(x, w, chunk, y);
    }
    if x.nrows() <= WEIGHT_UNPACKED_MAX_TOKENS {
        let mut y_nt = Array2::<f32>::zeros((w.ncols(), x.nrows())); // [N, T]
        summation.gemm(x, w, y_nt.view_mut().reversed_axes()); // as [T, N], column-major
        y.assign(&y_nt.t());
    } else {
        summation.gemm(x, w, y)
    }
}

/// How gemm sums each output element's K products.
///
/// gemm's micro-kernel keeps an output element in one register lane and adds its K products one
/// after another (in blocks of up to ~500), so the rounding error of one call grows with K; the
/// hand-written kernel sums in 8 interleaved lanes, K / 8 terms each. Measured on the committed
/// goldens, one call per product lost up to half the headroom of checkpoints 01 to 11, so K is
/// split into chunks, each summed from zero:
#[derive(Clone, Copy, Debug)]
enum Summation {
    /// T = 1 (decode): gemm's matrix-vector path sums in 64 interleaved partial sums already.
    OneCall,
    /// Up to 8 chunks of `chunk` terms, as 8 partial products summed pairwise: K / 8 + 3
    /// additions in a row. For products with small K and output (every product of the committed
    /// fixtures; attention's per-head products), where the 8 partial outputs stay in cache.
    Pairwise { chunk: usize },
    /// Chunks of K / 8 terms, at least 16 and at most [`K_CHUNK`], each added to the output in
    /// turn: K / 8 + 8 additions in a row up to K = 1024 (as the hand-written kernel), then
    /// K_CHUNK + K / K_CHUNK, 152 for GPT-2 small's K = 3072 (hand-written: 387).
    Chained,
}

/// The longest chunk of [`Summation::Pairwise`] and [`Summation::Chained`]. Each chunk is one gemm
/// call, which costs speed: GPT-2 small's Conv1D products at 512 tokens ran at 67 GFLOP/s in
/// chunks of 64, 72-74 in chunks of 128, 72-80 in one call (one thread, same machine and hour).
///
/// One call per product (gemm sums up to 512 terms in a row) was measured again on the whole
/// model: a 128-token prefill 8-12% faster (median 463 against 530 ms, 40 alternating runs), but
/// `validate` of GPT-2 small's shape with real statistics on a 108-token prompt lost half the
/// headroom of the products: 02 isolated 6.6× -> 2.5×, 06 8.0× -> 3.6×, 08 7.6× -> 2.7×.
const K_CHUNK: usize = 128;

/// The width of the blocks of y's columns that [`Summation::Chained`] completes one at a time: a
/// [128, 256] block is 128 KB. GPT-2 small's c_fc at 128 tokens, one thread: 63-64 GFLOP/s against
/// 57 with the chunks over the whole of y (one call: 67-69; same minute, medians of 24).
const CHAINED_COLUMNS: usize = 256;

/// The largest weight [K, N] (in floats) whose pairwise products go through [`pairwise`] rather
/// than gemm: attention's per-head operands up to 1024 positions.
const PAIRWISE_KERNEL_MAX_WEIGHT: usize = 1 << 16;

/// The largest output [T, N] (in floats) summed pairwise: 8 partial outputs of 256 KB.
const PAIRWISE_MAX_OUTPUT: usize = 1 << 16;

impl Summation {
    /// Chosen from the shape of the whole product, before it is split between threads.
    fn for_shape(t: usize, k: usize, n: usize) -> Summation {
        let chunk = k.div_ceil(8).clamp(1, K_CHUNK);
        if t == 1 || k <= 1 {
            Summation::OneCall
        } else if k <= 8 * chunk && t * n <= PAIRWISE_MAX_OUTPUT {
            Summation::Pairwise { chunk }
        } else {
            Summation::Chained
        }
    }

    /// y [T, N] = x [T, K] · w [K, N] on the calling thread.
    fn gemm(self, x: ArrayView2<f32>, w: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
        let ((t, k), n) = (x.dim(), w.ncols());
        let chunks = |chunk: usize| (0..k).step_by(chunk).map(move |start| start..(start + chunk).min(k));
        let part = |range: Range<usize>| (x.slice(s![.., range.clone()]), w.slice(s![range, ..])); // [T, c], [c, N]
        match self {
            Summation::OneCall => gemm_call(x, w, y, false),
            Summation::Pairwise { chunk } => {
                let column_major = y.t().is_standard_layout();
                let mut partials: Vec<Array2<f32>> = chunks(chunk)
                    .map(|range| {
                        let (x, w) = part(range);
                        let mut partial = Array2::<f32>::zeros((t, n).set_f(column_major)); // [T, N], laid out as y
                        gemm_call(x, w, partial.view_mut(), false);
                        partial
                    })
                    .collect();
                while partials.len() > 1 {
                    partials = partials
                        .chunks_mut(2)
                        .map(|pair| pair.iter_mut().map(std::mem::take).reduce(|a, b| a + b).unwrap_or_default())
                        .collect();
                }
                if let Some(sum) = partials.first() {
                    y.assign(sum);
                }
            }
            Summation::Chained => {
                // Every chunk is added to one block of y's columns before the next block, which
                // then stays in L2 between the calls; each element is summed as without blocks.
                let column_blocks = w.axis_chunks_iter(Axis(1), CHAINED_COLUMNS).zip(y.axis_chunks_iter_mut(Axis(1), CHAINED_COLUMNS));
                for (w, mut y) in column_blocks {
                    for (i, range) in chunks(k.div_ceil(8).clamp(16, K_CHUNK)).enumerate() {
                        gemm_call(x.slice(s![.., range.clone()]), w.slice(s![range, ..]), y.view_mut(), i > 0); // [T, c] · [c, n] -> [T, n]
                    }
                }
            }
        }
    }
}

/// One gemm call: y = x · w, or y += x · w when `accumulate`.
fn gemm_call(x: ArrayView2<f32>, w: ArrayView2<f32>, mut y: ArrayViewMut2<f32>, accumulate: bool) {
    let ((t, k), n) = (x.dim(), w.ncols());
    assert!(w.nrows() == k && y.dim() == (t, n), "gemm_call: shapes [{t}, {k}] · {:?} -> {:?}", w.dim(), y.dim());
    let (x_s, w_s, y_s) = (x.strides(), w.strides(), y.strides());
    let (x_rs, x_cs, w_rs, w_cs, y_rs, y_cs) = (x_s[0], x_s[1], w_s[0], w_s[1], y_s[0], y_s[1]);
    // SAFETY: each pointer is the first element of a view whose shape was checked just above
    // (x [t, k], w [k, n], y [t, n]) and whose strides (in elements) are passed with it, so gemm
    // reads and writes only elements of these views. y is borrowed mutably, so it aliases neither
    // x nor w. dst = 1·dst + 1·x·w, where read_dst = false drops the first term.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            y.as_mut_ptr(),
            y_cs,
            y_rs,
            accumulate,
            x.as_ptr(),
            x_cs,
            x_rs,
            w.as_ptr(),
            w_cs,
            w_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The hand-written kernel for short prompts (2 to HAND_MAX_TOKENS tokens), where it is faster than
/// gemm (table at the top): such a product reads far more weights than it does arithmetic on
/// them, and gemm's micro-kernel (16 x 6 outputs) leaves most of its registers idle on a few
/// tokens. This one works on tiles of TILE_ROWS weight rows x TILE_TOKENS tokens whose partial sums
/// stay in registers, reads each weight row once in storage order, and prefetches the weight rows
/// two tiles ahead into L2 so that memory and arithmetic overlap.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const TILE_ROWS: usize = 3;
    const TILE_TOKENS: usize = 4;

    /// y [N, T] = the dots of every row of w (N rows of c, `w_stride` floats apart in memory) with
    /// every row of x [T, c].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(x: &[f32], t: usize, c: usize, w: &[&[f32]], w_stride: usize, y: &mut [f32]) {
        let rows = w.len();
        let w_rows = |r: usize| -> [&[f32]; TILE_ROWS] { std::array::from_fn(|k| w[r + k]) };
        let x_rows = |i: usize| -> [&[f32]; TILE_TOKENS] { std::array::from_fn(|k| &x[(i + k) * c..(i + k + 1) * c]) };
        let (w_row, x_row) = (|r: usize| [w[r]], |i: usize| [&x[i * c..(i + 1) * c]]);
        let mut r = 0;
        while r < rows {
            let full_rows = rows - r >= TILE_ROWS;
            let mut i = 0;
            while i < t {
                let full_tokens = t - i >= TILE_TOKENS;
                // SAFETY (all four calls): the CPU has AVX2 and FMA (the caller checked) and every
                // slice is one full row of length c.
                match (full_rows, full_tokens) {
                    (true, true) => store(y, t, r, i, unsafe { tile(w_rows(r), w_stride, x_rows(i)) }),
                    (true, false) => store(y, t, r, i, unsafe { tile(w_rows(r), w_stride, x_row(i)) }),
                    (false, true) => store(y, t, r, i, unsafe { tile(w_row(r), w_stride, x_rows(i)) }),
                    (false, false) => store(y, t, r, i, unsafe { tile(w_row(r), w_stride, x_row(i)) }),
                }
                i += if full_tokens { TILE_TOKENS } else { 1 };
            }
            r += if full_rows { TILE_ROWS } else { 1 };
        }
    }

    /// y [rows, T] at rows r.., tokens i.. = the tile.
    #[inline(always)]
    fn store<const R: usize, const N: usize>(y: &mut [f32], t: usize, r: usize, i: usize, tile: [[f32; N]; R]) {
        for (o, sums) in tile.iter().enumerate() {
            y[(r + o) * t + i..(r + o) * t + i + N].copy_from_slice(sums);
        }
    }

    /// The R x N dot products of R weight rows (`w_stride` floats apart) with N token rows, all of
    /// one length.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and every slice must have the same length.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[f32]; R], w_stride: usize, x: [&[f32]; N]) -> [[f32; N]; R] {
        let c = w[0].len();
        debug_assert!(w.iter().all(|r| r.len() == c) && x.iter().all(|r| r.len() == c));
        let main = c - c % 8;
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut k = 0;
        while k < main {
            let mut wv = [_mm256_setzero_ps(); R];
            if k % 16 == 0 {
                for row in &w {
                    // The same place two tiles on (rows follow each other in memory), into L2
                    // only: prefetching into L1 evicts the token rows the tile keeps there.
                    // Measured on GPT-2 small shapes, T = 8: 36 GFLOP/s without, 57 with.
                    _mm_prefetch::<_MM_HINT_T1>(row.as_ptr().wrapping_add(k + 2 * R * w_stride) as *const i8);
                }
            }
            for o in 0..R {
                // SAFETY: k + 8 <= main <= c, the length of every row.
                wv[o] = unsafe { _mm256_loadu_ps(w[o].as_ptr().add(k)) };
            }
            for n in 0..N {
                // SAFETY: as above.
                let xn = unsafe { _mm256_loadu_ps(x[n].as_ptr().add(k)) };
                for o in 0..R {
                    acc[o][n] = _mm256_fmadd_ps(wv[o], xn, acc[o][n]);
                }
            }
            k += 8;
        }
        let mut out = [[0.0f32; N]; R];
        for o in 0..R {
            for n in 0..N {
                let mut lanes = [0.0f32; 8];
                // SAFETY: lanes holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[o][n]) };
                let tail: f32 = w[o][main..].iter().zip(&x[n][main..]).map(|(a, b)| a * b).sum();
                out[o][n] = lanes.iter().sum::<f32>() + tail;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, cols: usize, scale: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * scale - 0.5)
    }

    /// The product in float64, summed in order: the truth the float32 products are held to.
    fn exact(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((x.nrows(), w.ncols()), |(i, j)| {
            x.row(i).iter().zip(w.column(j)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() as f32
        })
    }

    #[test]
    fn every_shape_and_layout_agrees_with_float64_for_any_thread_count() {
        // (K, N): split between threads and chained; pairwise; chained in several chunks
        for (k, n) in [(37, 4100), (37, 50), (600, 300)] {
            for threads in [1, 2, 3] {
                set_threads(threads);
                // T: one call (matrix-vector), the hand-written kernel, gemm
                for t in [1, 2, 5, 16, 17, 70, 130] {
                    let x = ramp(t, k, 0.05); // [T, K]
                    let w_nk = ramp(n, k, 0.02); // [N, K]
                    let w_kn = w_nk.t().as_standard_layout().into_owned(); // [K, N], row-major
                    let w_padded = with_padded_rows(w_nk.view()); // [N, K], rows padded
                    let truth = exact(x.view(), w_kn.view());
                    let padded = x_wt(x.view(), w_padded.view());
                    for (layout, y) in
                        [("x·wᵀ", x_wt(x.view(), w_nk.view())), ("x·w", matmul(x.view(), w_kn.view())), ("x·wᵀ, padded", padded)]
                    {
                        let diff = (&y - &truth).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
                        assert!(diff < 1e-5 * k as f32, "{threads} threads, T={t}, K={k}, N={n}, {layout}: {diff}");
                    }
                }
            }
        }
        set_threads(1);
    }

    #[test]
    fn the_pairwise_kernel_sums_as_gemm_in_chunks_does_bit_for_bit() {
        // attention's q·kᵀ and weights·v at GPT-2's D = 64; chunks of 2 (gemm's unfused path) and
        // of 1; ragged shapes for every tail of rows, columns and chunks; w with contiguous rows
        // (as v) and with contiguous columns (kᵀ as a view of the keys)
        for (t, k, n) in [(64, 64, 300), (64, 300, 64), (16, 10, 48), (16, 26, 48), (16, 2, 48), (17, 37, 50), (5, 13, 3)] {
            let x = ramp(t, k, 0.05); // [T, K]
            let w = ramp(k, n, 0.02); // [K, N]
            let w_t = w.t().to_owned(); // [N, K]
            let Summation::Pairwise { chunk } = Summation::for_shape(t, k, n) else { panic!("[{t}, {k}] · [{k}, {n}] is not pairwise") };
            let mut through_gemm = Array2::<f32>::zeros((t, n));
            Summation::Pairwise { chunk }.gemm(x.view(), w.view(), through_gemm.view_mut());
            for (layout, w) in [("rows", w.view()), ("columns", w_t.t())] {
                for (width, product) in [
                    (16, pairwise::product_16 as fn(ArrayView2<f32>, ArrayView2<f32>, usize, ArrayViewMut2<f32>)),
                    (32, pairwise::product_32),
                ] {
                    let mut kernel = Array2::<f32>::zeros((t, n));
                    product(x.view(), w, chunk, kernel.view_mut());
                    assert_eq!(kernel, through_gemm, "[{t}, {k}] · [{k}, {n}], w by {layout}, panels of {width}");
                }
            }
        }
    }

    #[test]
    fn padded_rows_hold_the_same_weight_an_odd_number_of_cache_lines_apart() {
        for (n, k) in [(3, 768), (5, 3072), (4, 37), (2, 16)] {
            let w = ramp(n, k, 0.02); // [N, K]
            let padded = with_padded_rows(w.view());
            assert_eq!(padded, w, "[{n}, {k}]");
            let stride = padded.strides()[0] as usize;
            assert!(stride >= k && stride.is_multiple_of(16) && !(stride / 16).is_multiple_of(2), "[{n}, {k}]: rows {stride} floats apart");
            // the products read it as the same weight, bit for bit, on every path
            for t in [1, 8, 40, 100] {
                let x = ramp(t, k, 0.05); // [T, K]
                assert_eq!(x_wt(x.view(), padded.view()), x_wt(x.view(), w.view()), "[{n}, {k}], T={t}");
            }
        }
    }

    #[test]
    fn filled_arrays_hold_the_value_everywhere_for_any_thread_count() {
        for threads in [1, 2, 3] {
            set_threads(threads);
            // below and above the size handed to the pool
            for shape in [[2, 3, 5], [12, 64, 65]] {
                assert_eq!(filled(shape, -7.5), Array::from_elem(shape, -7.5f32), "{threads} threads, {shape:?}");
            }
        }
        set_threads(1);
    }

    #[test]
    fn the_thread_count_does_not_change_a_single_bit() {
        let x = ramp(33, 768, 0.05); // [T, K]: GPT-2 small's width
        let w = ramp(2304, 768, 0.02); // [N, K]: c_attn
        set_threads(1);
        let one = x_wt(x.view(), w.view());
        set_threads(2);
        let two = x_wt(x.view(), w.view());
        set_threads(1);
        assert_eq!(one, two);
    }
}
