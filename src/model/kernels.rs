//! The one matrix product of the forward pass, y = x · Wᵀ with W [N, C] stored row-major: the
//! tied lm_head over wte's rows, every Conv1D layer, whose weights the loader transposes to this
//! [out, in] layout (see [`crate::weights`]), and attention's q·kᵀ and weights·v per head.
//!
//! GPT-2 inference multiplies activations by large weights that are read far more often than
//! they fit in cache, so each weight row is read once per call, in storage order:
//! - decode (T = 1) is bound by memory bandwidth: one dot product per weight row, with 16
//!   interleaved partial sums, streams the weights at full speed;
//! - prefill is bound by arithmetic: on x86-64 with AVX2 and FMA (checked at run time) it works on
//!   tiles of 3 weight rows x 4 tokens whose 12 partial sums stay in registers, with tokens taken
//!   in blocks of `TOKEN_BLOCK` so that a block of activations stays in L2 while the weights
//!   stream past it. (A GEMM such as matrixmultiply re-packs the whole weight matrix on every call;
//!   measured on GPT-2 small, that packing cost as much as the arithmetic.)
//!
//! [`set_threads`] splits the weight rows between the threads of a pool; the default is 1. The
//! summation order does not depend on the thread count.

use std::sync::{Arc, RwLock};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Tokens per block: 64 rows of activations (C = 1024: 256 KB) stay in a 512 KB+ L2 cache.
const TOKEN_BLOCK: usize = 64;

/// Smaller products (attention's per-head ones) stay on the calling thread: handing them to the
/// pool would cost more than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 18;

/// The pool the kernels run on; None: the calling thread alone.
static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// How many threads the kernels use (1: the calling thread, no pool).
pub fn set_threads(threads: usize) {
    let pool = (threads > 1).then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build().ok().map(Arc::new)).flatten();
    *POOL.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pool;
}

pub fn threads() -> usize {
    POOL.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map_or(1, |p| p.current_num_threads())
}

/// x [T, C] · wᵀ with w [N, C] -> [T, N]
pub fn x_wt(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let (t, c) = x.dim();
    let n = w.nrows();
    let (x, w) = (x.as_standard_layout(), w.as_standard_layout());
    let (Some(x_s), Some(w_s)) = (x.as_slice(), w.as_slice()) else { unreachable!("standard layout is contiguous") };
    let mut y_nt = vec![0.0f32; n * t]; // [N, T]: each weight row's dots with every token
    let pool = POOL.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    match pool.filter(|_| n * c >= PARALLEL_MIN_WEIGHTS) {
        None => dot_rows(x_s, t, c, w_s, &mut y_nt),
        Some(pool) => {
            let rows_per_part = n.div_ceil(pool.current_num_threads()).max(1);
            pool.install(|| {
                y_nt.par_chunks_mut(rows_per_part * t)
                    .zip(w_s.par_chunks(rows_per_part * c))
                    .for_each(|(y_part, w_part)| dot_rows(x_s, t, c, w_part, y_part))
            });
        }
    }
    let mut y = Array2::<f32>::zeros((t, n)); // [T, N]
    for (j, dots) in y_nt.chunks_exact(t).enumerate() {
        for (i, &v) in dots.iter().enumerate() {
            y[[i, j]] = v;
        }
    }
    y
}

/// y [rows, T]: the dot product of every row of w [rows, C] with every row of x [T, C].
fn dot_rows(x: &[f32], t: usize, c: usize, w: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { avx2::dot_rows(x, t, c, w, y) };
    }
    for (wr, yr) in w.chunks_exact(c).zip(y.chunks_exact_mut(t)) {
        for (out, xr) in yr.iter_mut().zip(x.chunks_exact(c)) {
            *out = dot::<false>(wr, xr);
        }
    }
}

/// Lanes of partial sums in [`dot`]: enough independent accumulators to keep the vector units busy.
const LANES: usize = 16;

/// w · x, with LANES interleaved partial sums (the order HF's BLAS does not promise either).
#[inline(always)]
fn dot<const FMA: bool>(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (wc, xc) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
    for (wl, xl) in wc.zip(xc) {
        for l in 0..LANES {
            acc[l] = fmadd::<FMA>(wl[l], xl[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// The AVX2 + FMA kernels. Decode (T = 1) is bound by memory and the portable [`dot`] loop,
/// compiled for these instructions, streams at full speed. Prefill is bound by arithmetic: it
/// works on tiles of TILE_ROWS weight rows x TILE_TOKENS tokens whose partial sums stay in
/// registers, so that every load feeds several fused multiply-adds, and prefetches the weight rows
/// two tiles ahead into L2 so that memory and arithmetic overlap.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const TILE_ROWS: usize = 3;
    const TILE_TOKENS: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(x: &[f32], t: usize, c: usize, w: &[f32], y: &mut [f32]) {
        let rows = w.len() / c;
        if t == 1 {
            for (wr, out) in w.chunks_exact(c).zip(y.iter_mut()) {
                *out = super::dot::<true>(wr, x);
            }
            return;
        }
        let w_rows = |r: usize| -> [&[f32]; TILE_ROWS] { std::array::from_fn(|k| &w[(r + k) * c..(r + k + 1) * c]) };
        let x_rows = |i: usize| -> [&[f32]; TILE_TOKENS] { std::array::from_fn(|k| &x[(i + k) * c..(i + k + 1) * c]) };
        let (w_row, x_row) = (|r: usize| [&w[r * c..(r + 1) * c]], |i: usize| [&x[i * c..(i + 1) * c]]);
        for block in (0..t).step_by(super::TOKEN_BLOCK) {
            let block_end = (block + super::TOKEN_BLOCK).min(t);
            let mut r = 0;
            while r < rows {
                let full_rows = rows - r >= TILE_ROWS;
                let mut i = block;
                while i < block_end {
                    let full_tokens = block_end - i >= TILE_TOKENS;
                    // SAFETY (all four calls): the CPU has AVX2 and FMA (the caller checked) and every
                    // slice is one full row of length c.
                    match (full_rows, full_tokens) {
                        (true, true) => store(y, t, r, i, unsafe { tile(w_rows(r), x_rows(i)) }),
                        (true, false) => store(y, t, r, i, unsafe { tile(w_rows(r), x_row(i)) }),
                        (false, true) => store(y, t, r, i, unsafe { tile(w_row(r), x_rows(i)) }),
                        (false, false) => store(y, t, r, i, unsafe { tile(w_row(r), x_row(i)) }),
                    }
                    i += if full_tokens { TILE_TOKENS } else { 1 };
                }
                r += if full_rows { TILE_ROWS } else { 1 };
            }
        }
    }

    /// y [rows, T] at rows r.., tokens i.. = the tile.
    #[inline(always)]
    fn store<const R: usize, const N: usize>(y: &mut [f32], t: usize, r: usize, i: usize, tile: [[f32; N]; R]) {
        for (o, sums) in tile.iter().enumerate() {
            y[(r + o) * t + i..(r + o) * t + i + N].copy_from_slice(sums);
        }
    }

    /// The R x N dot products of R weight rows with N token rows, all of one length.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and every slice must have the same length.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[f32]; R], x: [&[f32]; N]) -> [[f32; N]; R] {
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
                    _mm_prefetch::<_MM_HINT_T1>(row.as_ptr().wrapping_add(k + 2 * R * c) as *const i8);
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

    #[test]
    fn every_path_agrees_with_ndarray_for_any_thread_count() {
        for threads in [1, 2, 3] {
            set_threads(threads);
            for t in [1, 2, 5, 16, 17, 70, 130] {
                let x = ramp(t, 37, 0.05);
                let w = ramp(41, 37, 0.02);
                let diff = (&x_wt(x.view(), w.view()) - &x.dot(&w.t())).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
                assert!(diff < 1e-5, "{threads} threads, T={t}: {diff}");
            }
        }
        set_threads(1);
    }
}
