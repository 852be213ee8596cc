//! Small products summed pairwise, without gemm: attention's per-head q·kᵀ and weights·v (and
//! every product of the committed fixtures' tiny models).
//!
//! Each output element is summed exactly as [`super::kernels`]' pairwise summation sums it through
//! gemm, so the results are the same bit for bit: K is cut into at most 8 chunks; each chunk's
//! products are added from zero by fused multiply-adds, one after another; then the chunks' sums
//! are added in pairs, pairs of pairs, and so on. Through gemm, that is one call per chunk, each
//! with a depth of K / 8 (8 for a head of 64 features), where gemm is slow, plus a temporary
//! output per chunk. Here the chunks' sums of 16 output columns stay in registers.
//!
//! Measured on GPT-2 small's shape at 512 tokens, one thread, per forward pass (alternating runs,
//! same minutes): the scores step (q·kᵀ and softmax) 377-409 ms against 496-509 through gemm; the
//! output step (weights·v and c_proj) 237-265 ms against 274-289.

use multiversion::multiversion;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Rows and columns of the output computed together: 4 x 16 sums, 8 AVX registers.
const ROWS: usize = 4;
const COLUMNS: usize = 16;

/// The most chunks a sum is cut into.
pub const MAX_CHUNKS: usize = 8;

/// y [T, N] = x [T, K] · w [K, N], where w is row-major (its rows contiguous) and K is cut into
/// chunks of `chunk` (at most [`MAX_CHUNKS`] of them).
pub fn product(x: ArrayView2<f32>, w: &[f32], n: usize, chunk: usize, mut y: ArrayViewMut2<f32>) {
    let (t, k) = x.dim();
    assert!(w.len() == k * n && k.div_ceil(chunk.max(1)) <= MAX_CHUNKS, "pairwise::product: w has {} floats for [{k}, {n}]", w.len());
    let x_copy; // only if x's rows are not contiguous
    let x_rows: Vec<&[f32]> = match x.rows().into_iter().map(|row| row.to_slice()).collect::<Option<_>>() {
        Some(rows) => rows,
        None => {
            x_copy = x.as_standard_layout().into_owned();
            x_copy.rows().into_iter().filter_map(|row| row.to_slice()).collect()
        }
    };
    let mut out = vec![0.0f32; t * n]; // [T, N]
    all_tiles(&x_rows, w, n, chunk.max(1), &mut out);
    if let Ok(out) = ArrayView2::from_shape((t, n), &out) {
        y.assign(&out);
    }
}

/// out [T, N] = x [T, K] · w [K, N], w and out row-major.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn all_tiles(x: &[&[f32]], w: &[f32], n: usize, chunk: usize, out: &mut [f32]) {
    let t = x.len();
    let full_rows = t - t % ROWS;
    let full_columns = n - n % COLUMNS;
    for i in (0..t).step_by(ROWS) {
        for j in (0..n).step_by(COLUMNS) {
            match (i < full_rows, j < full_columns) {
                (true, true) => tile::<ROWS, COLUMNS>(x, w, n, i, j, chunk, out),
                (true, false) => (j..n).for_each(|j| tile::<ROWS, 1>(x, w, n, i, j, chunk, out)),
                (false, true) => (i..t).for_each(|i| tile::<1, COLUMNS>(x, w, n, i, j, chunk, out)),
                (false, false) => (i..t).for_each(|i| (j..n).for_each(|j| tile::<1, 1>(x, w, n, i, j, chunk, out))),
            }
        }
    }
}

/// Rows i..i + R and columns j..j + W of out = x · w, each element summed in chunks then pairwise.
#[inline(always)]
fn tile<const R: usize, const W: usize>(x: &[&[f32]], w: &[f32], n: usize, i: usize, j: usize, chunk: usize, out: &mut [f32]) {
    let k = x[i].len();
    let x_rows: [&[f32]; R] = std::array::from_fn(|r| x[i + r]);
    let mut sums = [[[0.0f32; W]; R]; MAX_CHUNKS]; // [chunk][row][column]
    let mut count = 0usize;
    for (c, sum) in (0..k).step_by(chunk).zip(sums.iter_mut()) {
        let mut acc = [[0.0f32; W]; R]; // this chunk's sums, in registers
        let end = (c + chunk).min(k);
        // gemm sums a product of depth 2 with a separate multiply and add (gemm_common's gevv).
        let fused = end - c != 2;
        for kk in c..end {
            let w_row: &[f32; W] = w[kk * n + j..][..W].try_into().expect("W floats");
            for (acc_row, x_row) in acc.iter_mut().zip(&x_rows) {
                let a = x_row[kk];
                for (s, &b) in acc_row.iter_mut().zip(w_row) {
                    *s = if fused { a.mul_add(b, *s) } else { a * b + *s };
                }
            }
        }
        *sum = acc;
        count += 1;
    }
    // Pairs, pairs of pairs, ...: sums[p] = sums[2p] + sums[2p + 1], in place; an odd one out is
    // carried to the next round as it is.
    while count > 1 {
        for p in 0..count.div_ceil(2) {
            let second = (2 * p + 1 < count).then(|| 2 * p + 1); // else + -0.0, which changes no float
            #[allow(clippy::needless_range_loop)] // three arrays of one array: indices read clearer
            for r in 0..R {
                for l in 0..W {
                    sums[p][r][l] = sums[2 * p][r][l] + second.map_or(-0.0, |q| sums[q][r][l]);
                }
            }
        }
        count = count.div_ceil(2);
    }
    for (r, row_sum) in sums[0].iter().enumerate() {
        out[(i + r) * n + j..][..W].copy_from_slice(row_sum);
    }
}
