//! What an implementation under test provides: the [`Candidate`] trait.
//!
//! A port of GPT-2 implements it once and runs the same suite as the reference ([`crate::suite`]).
//! Two kinds of method:
//! - **chained**: the whole model from token ids, handing each checkpoint's tensor to a
//!   [`TapSink`] under its catalog key;
//! - **isolated**: one component at a time, fed HF's golden input, so that a failure points at
//!   that component alone.
//!
//! All tensors are single-sequence: [T, C] where HF has [B, T, C], [H, T, D] for [B, H, T, D].
//! A port that does not have a component can return [`Error::Unsupported`]; that checkpoint then
//! fails in isolated mode with the message.
//!
//! [`Error::Unsupported`]: crate::error::Error::Unsupported

use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3};

use crate::error::Result;
use crate::taps::TapSink;

/// Which LayerNorm of the model (checkpoint 01).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LnSite {
    /// Before attention in block `layer`.
    Ln1(usize),
    /// Before the MLP in block `layer`.
    Ln2(usize),
    /// After the last block.
    LnF,
}

/// Checkpoint 02: per-head queries, keys and values, each [H, T, D].
pub struct Qkv {
    pub q: Array3<f32>,
    pub k: Array3<f32>,
    pub v: Array3<f32>,
}

/// Checkpoint 03: one layer's cache, keys and values each [H, S, D].
pub struct KvPair {
    pub keys: Array3<f32>,
    pub values: Array3<f32>,
}

/// Checkpoint 04: scaled, causally masked scores before softmax and the weights after, [H, T, S].
/// Masked entries may hold any value <= -1e30 or -inf (HF has torch.finfo(float32).min).
pub struct AttnScores {
    pub scores: Array3<f32>,
    pub weights: Array3<f32>,
}

/// Checkpoint 06: the GELU activation [T, 4C] and the MLP output [T, C].
pub struct MlpOutput {
    pub gelu: Array2<f32>,
    pub output: Array2<f32>,
}

/// Checkpoint 11: the distributions of the last position.
pub struct Sampling {
    /// softmax(logits) [V]
    pub probs: Array1<f32>,
    /// softmax(top_k(logits / temperature)) [V], HF's warpers' order
    pub probs_warped: Array1<f32>,
    /// the top_k ids, largest logit first
    pub top_ids: Vec<u32>,
}

pub trait Candidate {
    /// Chained, checkpoints 00-08 and 03: runs `prompt` through the whole model with a KV cache,
    /// tapping each checkpoint's tensor (00 embeddings, 01 ln_1/ln_2/ln_f, 02 q/k/v, 04
    /// scores/weights, 05 attn_output, 06 gelu/mlp_output, 07 output, 08 logits [T, V]); then taps the
    /// cache as step 0, feeds `decode_ids` one token at a time, tapping the cache after each step s
    /// as step s, and taps the logits of those steps as `03_kv_cache.decode_logits` [S, V].
    fn run_prompt(&mut self, prompt: &[u32], decode_ids: &[u32], sink: &mut dyn TapSink) -> Result<()>;

    /// Chained, checkpoint 12: `new_tokens` greedy tokens after `prompt`.
    fn generate_greedy(&mut self, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>>;

    /// 00: ids [T] -> wte[ids] + wpe[0..T], [T, C].
    fn embeddings(&mut self, ids: &[u32]) -> Result<Array2<f32>>;
    /// 01: x [T, C] -> the LayerNorm at `site`, [T, C].
    fn layer_norm(&mut self, site: LnSite, x: ArrayView2<f32>) -> Result<Array2<f32>>;
    /// 02: ln_1 output [T, C] -> q, k, v [H, T, D].
    fn qkv(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<Qkv>;
    /// 03: the cache after appending `new` [H, 1, D] to `past` [H, S, D].
    fn kv_append(&mut self, layer: usize, past: &KvPair, new: &KvPair) -> Result<KvPair>;
    /// 04: q [H, T, D], k [H, T, D] -> scores and weights [H, T, T].
    fn attention_scores(&mut self, layer: usize, q: ArrayView3<f32>, k: ArrayView3<f32>) -> Result<AttnScores>;
    /// 05: weights [H, T, T] and v [H, T, D] -> heads merged, c_proj, [T, C] (before the residual).
    fn attention_output(&mut self, layer: usize, weights: ArrayView3<f32>, v: ArrayView3<f32>) -> Result<Array2<f32>>;
    /// 06: ln_2 output [T, C] -> gelu [T, 4C] and MLP output [T, C].
    fn mlp(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<MlpOutput>;
    /// 07: block input [T, C] -> block output [T, C].
    fn block(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<Array2<f32>>;
    /// 08: ln_f output [T, C] -> logits [T, V].
    fn logits(&mut self, h: ArrayView2<f32>) -> Result<Array2<f32>>;
    /// 09: logits [T, V] -> the logits that predict the next token, [V].
    fn select_last(&mut self, logits: ArrayView2<f32>) -> Result<Array1<f32>>;
    /// 10: last logits [V] -> the greedy next token.
    fn argmax(&mut self, logits: ArrayView1<f32>) -> Result<u32>;
    /// 11: last logits [V] -> the sampling distributions.
    fn sampling(&mut self, logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> Result<Sampling>;
}
