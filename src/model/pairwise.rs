//! Small products summed pairwise, without gemm: attention's per-head q·kᵀ and weights·v (and
//! every product of the committed fixtures' tiny models).
//!
//! Each output element is summed exactly as [`super::kernels`]' pairwise summation sums it through
//! gemm, so the results are the same bit for bit: K is cut into at most 8 chunks; each chunk's
//! products are added from zero by fused multiply-adds, one after another (a chunk of two by a
//! multiply and an add, as gemm does there); then the chunks' sums are added in pairs, pairs of
//! pairs, and so on. Through gemm, that is one call per chunk, each with a depth of K / 8 (8 for a
//! head of 64 features), where gemm is slow, plus a temporary output per chunk. Here the chunks'
//! sums of 4 x 16 outputs (4 x 32 with AVX-512) stay in registers, and w is read as panels of 16
//! (32) columns, each copied once into a small contiguous buffer: row by row where w's rows are
//! contiguous (v, and kᵀ, which attention copies once per head for a long prompt), else column by
//! column (kᵀ as a view).
//!
//! Measured on GPT-2 small's shape at 512 tokens, one thread, per forward pass (alternating runs,
//! same minutes): the scores step (q·kᵀ and softmax) 377-409 ms against 496-509 through gemm; the
//! output step (weights·v and c_proj) 237-265 ms against 274-289. Copying kᵀ whole in every call
//! measured the same as gathering its panels (scores 290-341 against 314-324 ms); once per head,
//! for all its query blocks, it saves instructions (attention.rs, `KEYS_COPIED_FROM`).

use multiversion::multiversion;
use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, s};

/// Rows of the output computed together.
const ROWS: usize = 4;

/// The most chunks a sum is cut into.
pub const MAX_CHUNKS: usize = 8;

/// y [T, N] = x [T, K] · w [K, N], any strides, with K cut into chunks of `chunk` (at most
/// [`MAX_CHUNKS`] of them): [`product_32`] where the CPU has AVX-512, else [`product_16`].
pub fn product(x: ArrayView2<f32>, w: ArrayView2<f32>, chunk: usize, y: ArrayViewMut2<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return product_32(x, w, chunk, y);
    }
    product_16(x, w, chunk, y)
}

/// [`product`] in panels of 16 columns: a tile of 4 x 16 sums is 8 AVX registers.
pub fn product_16(x: ArrayView2<f32>, w: ArrayView2<f32>, chunk: usize, y: ArrayViewMut2<f32>) {
    product_in_panels::<16>(x, w, chunk, y, panel_product_16)
}

/// [`product`] in panels of 32 columns: a tile of 4 x 32 sums is 8 AVX-512 registers, where 16
/// columns would leave it 4 (too few to hide the latency of a multiply-add). Each column is summed
/// as at 16, so the floats are the same. On an AVX-512 Xeon at 512 tokens, two threads, perf's
/// samples of this kernel per sample of gemm's micro-kernel: 0.142-0.150 at 16 columns (built for
/// AVX2 or for AVX-512 alike) -> 0.100-0.102 (two runs each); ROWS = 6 did not gain (0.117-0.124).
pub fn product_32(x: ArrayView2<f32>, w: ArrayView2<f32>, chunk: usize, y: ArrayViewMut2<f32>) {
    product_in_panels::<32>(x, w, chunk, y, panel_product_32)
}

/// `COLUMNS` columns of one row of w.
type PanelRow<const COLUMNS: usize> = [f32; COLUMNS];

/// Every row of x [T, K] · panel [K, COLUMNS], handed to `store` row by row.
type PanelProduct<const COLUMNS: usize> = fn(&[&[f32]], &[PanelRow<COLUMNS>], usize, &mut dyn FnMut(usize, &PanelRow<COLUMNS>));

/// [`product`] with panels of `COLUMNS` columns, each multiplied by `panel_product`.
fn product_in_panels<const COLUMNS: usize>(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    chunk: usize,
    mut y: ArrayViewMut2<f32>,
    panel_product: PanelProduct<COLUMNS>,
) {
    let (k, n) = w.dim();
    assert!(x.ncols() == k && k.div_ceil(chunk.max(1)) <= MAX_CHUNKS, "pairwise::product: [{}, {}] · [{k}, {n}]", x.nrows(), x.ncols());
    let x_copy; // only if x's rows are not contiguous
    let x_rows: Vec<&[f32]> = match x.rows().into_iter().map(|row| row.to_slice()).collect::<Option<_>>() {
        Some(rows) => rows,
        None => {
            x_copy = x.as_standard_layout().into_owned();
            x_copy.rows().into_iter().filter_map(|row| row.to_slice()).collect()
        }
    };
    let mut panel = vec![[0.0f32; COLUMNS]; k]; // [K, COLUMNS]
    // y's rows, each made a view once: a row of sums is then one slice copy where y's rows are
    // contiguous (attention's), rather than a new view and an ndarray assign per row and panel.
    // Attention at 512 tokens, one layer, one thread: 355 -> 336 million instructions (callgrind).
    let mut y_rows: Vec<ArrayViewMut1<f32>> = y.rows_mut().into_iter().collect(); // T rows [N]
    for (first, w_columns) in (0..n).step_by(COLUMNS).zip(w.axis_chunks_iter(Axis(1), COLUMNS)) {
        // The panel [K, COLUMNS]: these columns of w, zeros past the last one (their sums are
        // dropped).
        let width = w_columns.ncols();
        if w_columns.row(0).as_slice().is_some() {
            // rows of w contiguous (v, a copied kᵀ): each panel row is one slice copy. Attention's
            // output step of GPT-2 small's shape at 512 tokens, one layer, one thread: 192 -> 164
            // million instructions against gathering by columns (callgrind).
            for (row, w_row) in panel.iter_mut().zip(w_columns.rows()) {
                row[..width].copy_from_slice(w_row.as_slice().unwrap_or_default());
            }
        } else {
            for (c, column) in w_columns.columns().into_iter().enumerate() {
                for (row, &v) in panel.iter_mut().zip(column) {
                    row[c] = v;
                }
            }
        }
        for row in &mut panel {
            row[width..].fill(0.0);
        }
        let columns = first..first + width;
        panel_product(&x_rows, &panel, chunk.max(1), &mut |i, sums: &PanelRow<COLUMNS>| match y_rows[i].as_slice_mut() {
            // A full panel's floats as a copy of known size, which compiles to a few moves, not a
            // call to memcpy.
            Some(row) if width == COLUMNS => row[columns.clone()].copy_from_slice(sums),
            Some(row) => row[columns.clone()].copy_from_slice(&sums[..width]),
            None => y_rows[i].slice_mut(s![columns.clone()]).assign(&ArrayView1::from(&sums[..width])),
        });
    }
}

/// [`panel_product`] of 16-column panels, compiled for AVX2.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn panel_product_16(x: &[&[f32]], panel: &[PanelRow<16>], chunk: usize, store: &mut dyn FnMut(usize, &PanelRow<16>)) {
    panel_product(x, panel, chunk, store)
}

/// [`panel_product`] of 32-column panels, compiled for AVX-512.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f+avx512bw+avx512cd+avx512dq+avx512vl"))]
fn panel_product_32(x: &[&[f32]], panel: &[PanelRow<32>], chunk: usize, store: &mut dyn FnMut(usize, &PanelRow<32>)) {
    panel_product(x, panel, chunk, store)
}

/// Every row of x [T, K] · panel [K, COLUMNS], handed to `store` row by row.
#[inline(always)]
fn panel_product<const COLUMNS: usize>(
    x: &[&[f32]],
    panel: &[PanelRow<COLUMNS>],
    chunk: usize,
    store: &mut dyn FnMut(usize, &PanelRow<COLUMNS>),
) {
    // The chunks' sums of a tile, zeroed once here rather than per tile (a 2 KB memset call each
    // time): a tile writes the chunks it reads.
    let mut sums = [[[0.0f32; COLUMNS]; ROWS]; MAX_CHUNKS]; // [chunk][row][column]
    let mut sums_of_one_row = [[[0.0f32; COLUMNS]; 1]; MAX_CHUNKS];
    let full_rows = x.len() - x.len() % ROWS;
    for i in (0..full_rows).step_by(ROWS) {
        let tile_sums = tile::<ROWS, COLUMNS>(rows_of(&x[i..]), panel, chunk, &mut sums);
        for (r, row_sums) in tile_sums.iter().enumerate() {
            store(i + r, row_sums);
        }
    }
    for (i, &x_row) in x.iter().enumerate().skip(full_rows) {
        store(i, &tile::<1, COLUMNS>([x_row], panel, chunk, &mut sums_of_one_row)[0]);
    }
}

/// The first R rows of `x`. (`std::array::from_fn` and `map` were calls, not inlined, in
/// the multiversioned kernel: 4% of attention's time at 512 tokens.)
#[inline(always)]
fn rows_of<'a, const R: usize>(x: &[&'a [f32]]) -> [&'a [f32]; R] {
    let mut rows: [&[f32]; R] = [&[]; R];
    rows.copy_from_slice(&x[..R]);
    rows
}

/// R rows of x [R, K] · panel [K, COLUMNS], each sum taken in chunks then pairwise. `sums` holds the
/// chunks' sums [chunk][row][column]; what it held before is overwritten, never read.
#[inline(always)]
fn tile<'s, const R: usize, const COLUMNS: usize>(
    x: [&[f32]; R],
    panel: &[PanelRow<COLUMNS>],
    chunk: usize,
    sums: &'s mut [[PanelRow<COLUMNS>; R]; MAX_CHUNKS],
) -> &'s [PanelRow<COLUMNS>; R] {
    let k = panel.len();
    let mut count = 0usize;
    for (c, sum) in (0..k).step_by(chunk).zip(sums.iter_mut()) {
        let mut acc = [[0.0f32; COLUMNS]; R]; // this chunk's sums, in registers
        let end = (c + chunk).min(k);
        // gemm sums a product of depth 2 with a separate multiply and add (gemm_common's gevv).
        let fused = end - c != 2;
        // This chunk of each row of x and of the panel, of one length: the loop below then checks
        // one bound per step, not one per row of x (attention at 512 tokens, one layer, one
        // thread: 336 -> 317 million instructions, callgrind).
        let mut x_chunk = x;
        for x_row in &mut x_chunk {
            *x_row = &x_row[c..end];
        }
        let panel_chunk = &panel[c..end];
        for (j, w_row) in panel_chunk.iter().enumerate() {
            for (acc_row, x_row) in acc.iter_mut().zip(&x_chunk) {
                let a = x_row[j];
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
                for l in 0..COLUMNS {
                    sums[p][r][l] = sums[2 * p][r][l] + second.map_or(-0.0, |q| sums[q][r][l]);
                }
            }
        }
        count = count.div_ceil(2);
    }
    &sums[0]
}
