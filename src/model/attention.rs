//! Causal multi-head self-attention, split into the steps the checkpoints tap:
//! 02 q/k/v per head, 03 the cache append, 04 scaled and masked scores and their softmax,
//! 05 the output projection. When no one taps 04 (`TapSink::wants`), 04 and 05 run together a
//! block of query rows at a time (`Attention::attend`), with the same floats, and the [H, T, S]
//! scores and weights are never built.

use std::ops::Range;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, CowArray, Ix2, s};

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
        let mut scores = kernels::filled((h, t, s_len), MASKED); // [H, T, S]: the future is masked
        let mut weights = kernels::filled((h, t, s_len), 0.0); // [H, T, S]
        let heads = scores.axis_iter_mut(Axis(0)).zip(weights.axis_iter_mut(Axis(0))).enumerate();
        kernels::for_each_part(heads, |(head, (mut scores, mut weights))| {
            let mut head = HeadBlocks::new(self, q, k, head);
            for (rows, _) in causal_blocks(t, s_len - t) {
                head.scores(rows.clone(), scores.slice_mut(s![rows.clone(), ..]), weights.slice_mut(s![rows, ..]));
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
                weighted_values(weights.slice(s![rows.clone(), ..seen]), v, merged.slice_mut(s![rows, ..]));
            }
        });
        self.c_proj.forward(merged.view()) // [T, C]
    }

    /// q [H, T, D], k and v [H, S, D] -> attention output [T, C]: [`Self::scores`] then
    /// [`Self::output`], a block of query rows at a time, without the [H, T, S] scores and weights.
    /// Each block's scores and weights are rows of one [64, S] buffer per head (256 KB at 512
    /// positions), still in cache when weights·v reads them. Every element is computed as there,
    /// from the same operands in the same layout: the same floats (a unit test below holds it).
    pub fn attend(&self, q: ArrayView3<f32>, k: ArrayView3<f32>, v: ArrayView3<f32>) -> Array2<f32> {
        let (h, t, d) = q.dim();
        let s_len = k.shape()[1];
        let mut merged = kernels::filled((t, h * d), 0.0); // [T, C]
        kernels::for_each_part(merged.axis_chunks_iter_mut(Axis(1), d).enumerate(), |(head, mut merged)| {
            let mut scores = Array2::from_elem((QUERY_BLOCK.min(t), s_len), MASKED); // [rows, S], a block's
            let mut weights = Array2::<f32>::zeros((QUERY_BLOCK.min(t), s_len)); // [rows, S]
            let v = v.index_axis(Axis(0), head); // [S, D]
            let mut head = HeadBlocks::new(self, q, k, head);
            for (rows, seen) in causal_blocks(t, s_len - t) {
                let n = rows.len();
                head.scores(rows.clone(), scores.slice_mut(s![..n, ..]), weights.slice_mut(s![..n, ..]));
                weighted_values(weights.slice(s![..n, ..seen]), v, merged.slice_mut(s![rows, ..]));
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
        let out = if sink.wants(tap::scores(layer)) || sink.wants(tap::weights(layer)) {
            let AttnScores { scores, weights } = self.scores(q.view(), cache.keys()); // [H, T, S]
            sink.tap(tap::scores(layer), scores.view().into_dyn());
            sink.tap(tap::weights(layer), weights.view().into_dyn());
            self.output(weights.view(), cache.values()) // [T, C]
        } else {
            self.attend(q.view(), cache.keys(), cache.values()) // [T, C], the same floats
        };
        sink.tap(tap::attn_output(layer), out.view().into_dyn());
        Ok(out)
    }
}

/// One head's q and keys, ready for its blocks of query rows.
struct HeadBlocks<'a> {
    attention: &'a Attention,
    /// [T, D]
    q: ArrayView2<'a, f32>,
    /// [D, S]: kᵀ, copied once when several blocks read it, so that each reads rows of it (see
    /// KEYS_COPIED_FROM); else a view.
    k_t: CowArray<'a, f32, Ix2>,
    /// positions cached before the T queries: query i sees keys 0..=past + i
    past: usize,
    /// [S]: a row's exponentials, one row at a time
    exps: Vec<f64>,
}

impl<'a> HeadBlocks<'a> {
    /// Head `head` of q [H, T, D] and k [H, S, D].
    fn new(attention: &'a Attention, q: ArrayView3<'a, f32>, k: ArrayView3<'a, f32>, head: usize) -> Self {
        let (q, k) = (q.index_axis_move(Axis(0), head), k.index_axis_move(Axis(0), head)); // [T, D], [S, D]
        let (t, s_len) = (q.nrows(), k.nrows());
        let k_t = k.reversed_axes(); // [D, S], a view
        let k_t = if t >= KEYS_COPIED_FROM { k_t.as_standard_layout().into_owned().into() } else { k_t.into() };
        HeadBlocks { attention, q, k_t, past: s_len - t, exps: Vec::with_capacity(s_len) }
    }

    /// The query rows `rows` -> their scores (q·kᵀ of the keys they see, scaled, the future
    /// [`MASKED`]) and softmax, each [rows, S]. The scores past the keys the block sees are not
    /// written: they must hold [`MASKED`] already.
    fn scores(&mut self, rows: Range<usize>, mut scores: ArrayViewMut2<f32>, mut weights: ArrayViewMut2<f32>) {
        let seen = self.past + rows.end; // keys the block's last row sees
        let mut seen_scores = scores.slice_mut(s![.., ..seen]); // [rows, seen]
        kernels::matmul_into(self.q.slice(s![rows.clone(), ..]), self.k_t.slice(s![.., ..seen]), seen_scores.view_mut()); // q·kᵀ
        seen_scores *= self.attention.scale;
        for (i, mut row) in rows.zip(seen_scores.rows_mut()) {
            row.slice_mut(s![self.past + i + 1..]).fill(MASKED); // the future within the block
        }
        // The block's softmax while its scores are still in cache.
        for (weights, scores) in weights.rows_mut().into_iter().zip(scores.rows()) {
            softmax_into(scores, weights, &mut self.exps); // [S] -> [S]
        }
    }
}

/// One head's weights of a block of query rows [rows, seen] · its values v [S, D] (the first
/// `seen`) -> its D columns of the merged heads for these rows, [rows, D].
fn weighted_values(weights: ArrayView2<f32>, v: ArrayView2<f32>, merged: ArrayViewMut2<f32>) {
    kernels::matmul_into(weights, v.slice(s![..weights.ncols(), ..]), merged);
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

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array3};

    use super::*;

    /// Values that look random and round differently from one another.
    fn filled_with(shape: (usize, usize, usize), seed: usize) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(a, b, c)| ((a * 7919 + b * 104_729 + c * 1_299_709 + seed) as f32 * 0.618).sin() * 2.0)
    }

    #[test]
    fn attend_gives_the_floats_of_scores_then_output_for_any_thread_count() {
        let (h, d) = (3, 16);
        let c = h * d;
        let conv = |seed| {
            let weight = filled_with((1, c, c), seed).index_axis_move(Axis(0), 0);
            Conv1D { weight, bias: Array1::from_shape_fn(c, |i| i as f32 * 0.01) }
        };
        let attention = Attention { c_attn: conv(1), c_proj: conv(2), n_head: h, scale: 1.0 / (d as f32).sqrt() };
        // (T queries, S positions): three blocks, the last ragged, after a cache; one block; decode
        for (t, s_len) in [(130, 136), (5, 5), (1, 10)] {
            let q = filled_with((h, t, d), 3); // [H, T, D]
            let (k, v) = (filled_with((h, s_len, d), 4), filled_with((h, s_len, d), 5)); // [H, S, D]
            for threads in [1, 2] {
                kernels::set_threads(threads);
                let AttnScores { weights, .. } = attention.scores(q.view(), k.view());
                let expected = attention.output(weights.view(), v.view()); // [T, C]
                assert_eq!(attention.attend(q.view(), k.view(), v.view()), expected, "T = {t}, S = {s_len}, {threads} threads");
            }
        }
        kernels::set_threads(1);
    }
}
