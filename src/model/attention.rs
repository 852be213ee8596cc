//! Causal multi-head self-attention, split into the steps the checkpoints tap:
//! 02 q/k/v per head, 03 the cache append, 04 scaled and masked scores and their softmax,
//! 05 the output projection.

use std::ops::Range;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, CowArray, Ix2, s};

use super::conv1d::Conv1D;
use super::kernels;
use super::kv_cache::LayerCache;
use super::softmax::{MASKED, softmax_into};
use crate::catalog::tap;
use crate::error::Result;
use crate::port::{AttnScores, Qkv};
use crate::taps::TapSink;

pub struct Attention {
    /// [C, 3C]: q, k and v side by side
    pub c_attn: Conv1D,
    /// [C, C]
    pub c_proj: Conv1D,
    pub n_head: usize,
    /// 1 / sqrt(D), or as the config says
    pub scale: f32,
}

impl Attention {
    /// x [T, C] (ln_1 output) -> q, k, v [H, T, D], each contiguous
    pub fn qkv(&self, x: ArrayView2<f32>) -> Qkv {
        let (t, c) = x.dim();
        let h = self.n_head;
        let d = c / h;
        let qkv = self.c_attn.forward(x); // [T, 3C]
        // Part `part` of [T, 3C] is a [T, C] block whose column head*D + j is head `head`'s j-th
        // feature: gather it as a contiguous [H, T, D].
        let split = |part: usize| -> Array3<f32> {
            let block = qkv.slice(s![.., part * c..(part + 1) * c]); // [T, C]
            let mut split = kernels::filled((h, t, d), 0.0); // [H, T, D]
            kernels::for_each_part(split.outer_iter_mut().enumerate(), |(head, mut rows)| {
                rows.assign(&block.slice(s![.., head * d..(head + 1) * d])); // [T, D]
            });
            split
        };
        Qkv { q: split(0), k: split(1), v: split(2) }
    }

    /// q [H, T, D] and the keys of all S positions k [H, S, D] -> scaled, causally masked scores and
    /// their softmax, both [H, T, S]; masked entries hold [`MASKED`]. Query i sits at absolute
    /// position S - T + i and sees keys 0..=it.
    pub fn scores(&self, q: ArrayView3<f32>, k: ArrayView3<f32>) -> AttnScores {
        let (h, t, _) = q.dim();
        let s_len = k.shape()[1];
        let past = s_len - t;
        let mut scores = kernels::filled((h, t, s_len), MASKED); // [H, T, S]: the future is masked
        let mut weights = kernels::filled((h, t, s_len), 0.0); // [H, T, S]
        let heads = scores.axis_iter_mut(Axis(0)).zip(weights.axis_iter_mut(Axis(0))).enumerate();
        kernels::for_each_part(heads, |(head, (mut scores, mut weights))| {
            let mut exps = Vec::with_capacity(s_len); // [S]: each row's exponentials, one row at a time
            let (q, k) = (q.index_axis(Axis(0), head), k.index_axis(Axis(0), head)); // [T, D], [S, D]
            // kᵀ copied once when several blocks read it, so that each reads rows of it (see
            // KEYS_COPIED_FROM); else a view.
            let k_t = k.reversed_axes(); // [D, S], a view
            let k_t: CowArray<f32, Ix2> = if t >= KEYS_COPIED_FROM { k_t.as_standard_layout() } else { k_t.view().into() };
            for (rows, seen) in causal_blocks(t, past) {
                let mut block = scores.slice_mut(s![rows.clone(), ..seen]); // [rows, seen]
                kernels::matmul_into(q.slice(s![rows.clone(), ..]), k_t.slice(s![.., ..seen]), block.view_mut()); // q·kᵀ
                block *= self.scale;
                for (i, mut row) in rows.clone().zip(block.rows_mut()) {
                    row.slice_mut(s![past + i + 1..]).fill(MASKED); // the future within the block
                }
                // The block's softmax while its scores are still in cache.
                for (weights, scores) in
                    weights.slice_mut(s![rows.clone(), ..]).rows_mut().into_iter().zip(scores.slice(s![rows, ..]).rows())
                {
                    softmax_into(scores, weights, &mut exps); // [S] -> [S]
                }
            }
        });
        AttnScores { scores, weights }
    }

    /// weights [H, T, S] and values v [H, S, D] -> heads merged [T, C] -> c_proj -> [T, C]
    pub fn output(&self, weights: ArrayView3<f32>, v: ArrayView3<f32>) -> Array2<f32> {
        let (h, t, s_len) = weights.dim();
        let d = v.shape()[2];
        let mut merged = kernels::filled((t, h * d), 0.0); // [T, C]
        kernels::for_each_part(merged.axis_chunks_iter_mut(Axis(1), d).enumerate(), |(head, mut merged)| {
            let (weights, v) = (weights.index_axis(Axis(0), head), v.index_axis(Axis(0), head)); // [T, S], [S, D]
            for (rows, seen) in causal_blocks(t, s_len - t) {
                let ctx = merged.slice_mut(s![rows.clone(), ..]); // [rows, D]: the head's D columns of [T, C]
                kernels::matmul_into(weights.slice(s![rows, ..seen]), v.slice(s![..seen, ..]), ctx); // weights·v
            }
        });
        self.c_proj.forward(merged.view()) // [T, C]
    }

    /// x [T, C] (ln_1 output) -> attention output [T, C], before the residual add. Appends this
    /// step's keys and values to `cache` and attends over everything cached.
    pub fn forward(&self, layer: usize, x: ArrayView2<f32>, cache: &mut LayerCache, sink: &mut dyn TapSink) -> Result<Array2<f32>> {
        let Qkv { q, k, v } = self.qkv(x); // [H, T, D] each
        sink.tap(tap::q(layer), q.view().into_dyn());
        sink.tap(tap::k(layer), k.view().into_dyn());
        sink.tap(tap::v(layer), v.view().into_dyn());
        cache.append(k.view(), v.view())?;
        let AttnScores { scores, weights } = self.scores(q.view(), cache.keys()); // [H, T, S]
        sink.tap(tap::scores(layer), scores.view().into_dyn());
        sink.tap(tap::weights(layer), weights.view().into_dyn());
        let out = self.output(weights.view(), cache.values()); // [T, C]
        sink.tap(tap::attn_output(layer), out.view().into_dyn());
        Ok(out)
    }
}

/// Query rows per block of attention's products: a block sees only the keys up to its last row,
/// so the masked part of a long prompt's scores (nearly half) is neither computed nor multiplied
/// by v.
const QUERY_BLOCK: usize = 64;

/// Prompts from this many tokens (two query blocks) on copy each head's keys transposed, [D, S],
/// once: every block's q·kᵀ then packs its panels of kᵀ by rows, one slice copy each, instead of
/// gathering them from the keys' columns. Attention's scores step of GPT-2 small's shape at 512
/// tokens, one layer, one thread: 217 -> 198 million instructions (callgrind; the floats are the
/// same). A decode step (one query) keeps the view.
const KEYS_COPIED_FROM: usize = QUERY_BLOCK + 1;

/// The blocks of T query rows that follow `past` cached positions: each block's rows, and how many
/// keys its last row sees.
fn causal_blocks(t: usize, past: usize) -> impl Iterator<Item = (Range<usize>, usize)> {
    (0..t).step_by(QUERY_BLOCK).map(move |start| {
        let end = (start + QUERY_BLOCK).min(t);
        (start..end, past + end)
    })
}
