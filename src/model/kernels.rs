//! The two matrix products of the forward pass, written for what GPT-2 inference does most: few rows
//! (decode is T = 1, a short prefill T <= 16) against large weights. Such products are bound by
//! how fast the weights stream from memory, so the kernels read every weight exactly once, in
//! storage order, with the activations kept in cache:
//!
//! - [`x_w`]: x [T, in] · W [in, out], HF's Conv1D layout: each row of W is added, scaled by x[t, i],
//!   into y[t, :] (an axpy per weight row).
//! - [`x_wt`]: x [T, C] · Wᵀ with W [N, C], the tied lm_head over wte's rows: one dot product per
//!   weight row and token.
//!
//! Longer inputs go to ndarray's blocked GEMM (matrixmultiply), which wins once the weights are
//! reused across many rows. On x86-64 with AVX2 and FMA (checked at run time) the same loops are
//! compiled for those instructions. [`set_threads`] splits the weight rows or columns between
//! threads (default 1).

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array2, ArrayView2};

/// Up to this many rows, the streaming kernels; above it, GEMM.
const STREAMING_MAX_ROWS: usize = 16;

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// How many threads the kernels use (at least 1).
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
}

pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// x [T, in] · w [in, out] -> [T, out]
pub fn x_w(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let (t, n_in) = x.dim();
    let n_out = w.ncols();
    let (Some(x_s), Some(w_s)) = (x.as_slice(), w.as_slice()) else { return x.dot(&w) };
    if t > STREAMING_MAX_ROWS {
        return x.dot(&w);
    }
    let mut y = Array2::<f32>::zeros((t, n_out)); // [T, out]
    let y_s = y.as_slice_mut().expect("a new array is contiguous");
    // Each thread owns a range of output columns and streams its part of every weight row.
    let ranges = split(n_out, threads(), 16);
    let mut y_parts: Vec<Vec<f32>> = ranges.iter().map(|&(start, end)| vec![0.0f32; t * (end - start)]).collect(); // [T, end - start] each
    std::thread::scope(|scope| {
        let mut jobs = ranges.iter().zip(y_parts.iter_mut());
        let first = jobs.next();
        for (&(start, end), part) in jobs {
            scope.spawn(move || axpy_rows(x_s, t, n_in, w_s, n_out, start, end, part));
        }
        if let Some((&(start, end), part)) = first {
            axpy_rows(x_s, t, n_in, w_s, n_out, start, end, part);
        }
    });
    join_columns(y_s, t, n_out, &ranges, &y_parts);
    y
}

/// x [T, C] · wᵀ with w [N, C] -> [T, N]
pub fn x_wt(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let (t, c) = x.dim();
    let n = w.nrows();
    let (Some(x_s), Some(w_s)) = (x.as_slice(), w.as_slice()) else { return x.dot(&w.t()) };
    if t > STREAMING_MAX_ROWS {
        return x.dot(&w.t());
    }
    // Computed as [N, T] (each weight row's dots with every token), transposed at the end.
    let mut y_t = vec![0.0f32; n * t];
    let ranges = split(n, threads(), 1);
    std::thread::scope(|scope| {
        let mut rest: &mut [f32] = &mut y_t;
        for (k, &(start, end)) in ranges.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut((end - start) * t);
            rest = tail;
            let w_part = &w_s[start * c..end * c];
            if k + 1 == ranges.len() {
                dot_rows(x_s, t, c, w_part, mine);
            } else {
                scope.spawn(move || dot_rows(x_s, t, c, w_part, mine));
            }
        }
    });
    let y_nt = Array2::from_shape_vec((n, t), y_t).expect("n * t elements"); // [N, T]
    y_nt.reversed_axes().as_standard_layout().into_owned() // [T, N]
}

/// `len` split into at most `parts` ranges, each a multiple of `align` long except the last.
fn split(len: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, len.div_ceil(align).max(1));
    let chunk = len.div_ceil(parts).div_ceil(align) * align;
    (0..parts).map(|p| (p * chunk).min(len)).map(|start| (start, (start + chunk).min(len))).filter(|(s, e)| s < e).collect()
}

fn join_columns(y: &mut [f32], t: usize, n_out: usize, ranges: &[(usize, usize)], parts: &[Vec<f32>]) {
    for (&(start, end), part) in ranges.iter().zip(parts) {
        let width = end - start;
        for row in 0..t {
            y[row * n_out + start..row * n_out + end].copy_from_slice(&part[row * width..(row + 1) * width]);
        }
    }
}

/// y [T, end - start] += x [T, in] · w [in, start..end]: streams the weight rows in order.
#[allow(clippy::too_many_arguments)]
fn axpy_rows(x: &[f32], t: usize, n_in: usize, w: &[f32], n_out: usize, start: usize, end: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { axpy_rows_avx2(x, t, n_in, w, n_out, start, end, y) };
    }
    axpy_rows_impl::<false>(x, t, n_in, w, n_out, start, end, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows_avx2(x: &[f32], t: usize, n_in: usize, w: &[f32], n_out: usize, start: usize, end: usize, y: &mut [f32]) {
    axpy_rows_impl::<true>(x, t, n_in, w, n_out, start, end, y)
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_rows_impl<const FMA: bool>(x: &[f32], t: usize, n_in: usize, w: &[f32], n_out: usize, start: usize, end: usize, y: &mut [f32]) {
    let width = end - start;
    // Four weight rows at a time: each y element is loaded and stored once per four rows.
    let mut i = 0;
    while i + 4 <= n_in {
        let w0 = &w[i * n_out + start..i * n_out + end];
        let w1 = &w[(i + 1) * n_out + start..(i + 1) * n_out + end];
        let w2 = &w[(i + 2) * n_out + start..(i + 2) * n_out + end];
        let w3 = &w[(i + 3) * n_out + start..(i + 3) * n_out + end];
        for row in 0..t {
            let xr = &x[row * n_in + i..row * n_in + i + 4];
            let (a0, a1, a2, a3) = (xr[0], xr[1], xr[2], xr[3]);
            let yr = &mut y[row * width..(row + 1) * width];
            for ((((yj, &b0), &b1), &b2), &b3) in yr.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *yj = fmadd::<FMA>(a3, b3, fmadd::<FMA>(a2, b2, fmadd::<FMA>(a1, b1, fmadd::<FMA>(a0, b0, *yj))));
            }
        }
        i += 4;
    }
    for i in i..n_in {
        let wi = &w[i * n_out + start..i * n_out + end];
        for row in 0..t {
            let a = x[row * n_in + i];
            for (yj, &b) in y[row * width..(row + 1) * width].iter_mut().zip(wi) {
                *yj = fmadd::<FMA>(a, b, *yj);
            }
        }
    }
}

/// y [rows, T]: the dot product of every row of w [rows, C] with every row of x [T, C].
fn dot_rows(x: &[f32], t: usize, c: usize, w: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { dot_rows_avx2(x, t, c, w, y) };
    }
    dot_rows_impl::<false>(x, t, c, w, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(x: &[f32], t: usize, c: usize, w: &[f32], y: &mut [f32]) {
    dot_rows_impl::<true>(x, t, c, w, y)
}

/// Lanes of partial sums: enough independent accumulators for the vector units to stay busy.
const LANES: usize = 16;

#[inline(always)]
fn dot_rows_impl<const FMA: bool>(x: &[f32], t: usize, c: usize, w: &[f32], y: &mut [f32]) {
    for (wr, yr) in w.chunks_exact(c).zip(y.chunks_exact_mut(t)) {
        for (row, out) in yr.iter_mut().enumerate() {
            let xr = &x[row * c..(row + 1) * c];
            let mut acc = [0.0f32; LANES];
            let (w_main, w_tail) = wr.split_at(c - c % LANES);
            let (x_main, x_tail) = xr.split_at(c - c % LANES);
            for (wc, xc) in w_main.chunks_exact(LANES).zip(x_main.chunks_exact(LANES)) {
                for k in 0..LANES {
                    acc[k] = fmadd::<FMA>(wc[k], xc[k], acc[k]);
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (&a, &b) in w_tail.iter().zip(x_tail) {
                sum = fmadd::<FMA>(a, b, sum);
            }
            *out = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn ramp(rows: usize, cols: usize, scale: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * scale - 0.5)
    }

    #[test]
    fn streaming_kernels_agree_with_gemm_for_any_thread_count() {
        for threads in [1, 2, 3] {
            set_threads(threads);
            for t in [1, 3, 16] {
                let x = ramp(t, 37, 0.05);
                let w = ramp(37, 50, 0.03);
                let diff = (&x_w(x.view(), w.view()) - &x.dot(&w)).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
                assert!(diff < 1e-5, "x_w, {threads} threads, T={t}: {diff}");
                let wt = ramp(41, 37, 0.02);
                let diff = (&x_wt(x.view(), wt.view()) - &x.dot(&wt.t())).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
                assert!(diff < 1e-5, "x_wt, {threads} threads, T={t}: {diff}");
            }
        }
        set_threads(1);
    }
}
