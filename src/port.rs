//! What a GPT-2 port provides to be checked: the [`Port`] trait.
//!
//! One method is required: [`Port::forward`], the chained forward pass over token ids, which hands
//! each tensor it has to a [`TapSink`] under a [`tap`](crate::catalog::tap) key. With that alone the
//! suite checks 00-12 in chained mode: 09-12 are derived from the port's logits (and reported as
//! derived), 03's decode logits by running prompt + decode tokens again.
//!
//! Everything else has a default that says "not provided", which the suite reports as *pending*,
//! never as a failure:
//! - [`Port::forward_cached`]: one more token with the KV cache (checkpoint 03's cache states);
//! - the head: [`Port::select_last`], [`Port::argmax`], [`Port::sampling`], [`Port::generate_greedy`];
//! - the isolated components (`embeddings` .. `logits`), each fed HF's golden input so that a
//!   failure is that component's alone.
//!
//! Tensors are single-sequence: [T, C] where HF has [B, T, C], [H, T, D] for [B, H, T, D].
//!
//! ```
//! use gpt2_checkpoints::catalog::tap;
//! use gpt2_checkpoints::port::Port;
//! use gpt2_checkpoints::taps::TapSink;
//!
//! /// A port that is only begun: it embeds the tokens and stops.
//! struct Embedder {
//!     wte: Vec<Vec<f32>>,
//!     wpe: Vec<Vec<f32>>,
//! }
//!
//! impl Port for Embedder {
//!     fn forward(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> gpt2_checkpoints::Result<()> {
//!         let c = self.wte[0].len();
//!         let mut x = Vec::with_capacity(ids.len() * c); // [T, C]
//!         for (t, &id) in ids.iter().enumerate() {
//!             x.extend(self.wte[id as usize].iter().zip(&self.wpe[t]).map(|(a, b)| a + b));
//!         }
//!         taps.tap_slice(tap::embeddings(), &[ids.len(), c], &x);
//!         Ok(())
//!     }
//! }
//! ```

use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3};

use crate::error::{Error, Result};
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
/// Masked entries may hold any value: only causal positions of the scores are compared.
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

/// The default of every optional method.
fn not_provided<T>(what: &str) -> Result<T> {
    Err(Error::NotProvided(what.to_string()))
}

/// A GPT-2 implementation under test. Only [`Port::forward`] is required.
pub trait Port {
    /// Chained, required: runs `ids` as a new sequence from position 0 and taps what it has, in any
    /// order: 00 embeddings, 01 ln_1/ln_2/ln_f, 02 q/k/v, 03 the cache after the prompt, 04
    /// scores/weights, 05 attn_output, 06 gelu/mlp_output, 07 block output, and 08 logits [T, V],
    /// which 03 and 09-12 are derived from. A tap it does not make is pending (or fails, if the
    /// port claims that checkpoint).
    fn forward(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> Result<()>;

    /// Chained, optional: appends one token to the sequence of the last `forward` using the KV
    /// cache; taps its logits [1, V] and the cache keys/values [H, S, D] of every layer.
    fn forward_cached(&mut self, _id: u32, _taps: &mut dyn TapSink) -> Result<()> {
        not_provided("forward_cached (a KV cache)")
    }

    /// 12: `new_tokens` greedy tokens after `prompt`. Default: derived from `forward` (with the
    /// cache if `forward_cached` is provided) and `argmax`.
    fn generate_greedy(&mut self, _prompt: &[u32], _new_tokens: usize) -> Result<Vec<u32>> {
        not_provided("generate_greedy")
    }

    /// 00: ids [T] -> wte[ids] + wpe[0..T], [T, C].
    fn embeddings(&mut self, _ids: &[u32]) -> Result<Array2<f32>> {
        not_provided("embeddings")
    }
    /// 01: x [T, C] -> the LayerNorm at `site`, [T, C].
    fn layer_norm(&mut self, _site: LnSite, _x: ArrayView2<f32>) -> Result<Array2<f32>> {
        not_provided("layer_norm")
    }
    /// 02: ln_1 output [T, C] -> q, k, v [H, T, D].
    fn qkv(&mut self, _layer: usize, _x: ArrayView2<f32>) -> Result<Qkv> {
        not_provided("qkv")
    }
    /// 03: the cache after appending `new` [H, 1, D] to `past` [H, S, D].
    fn kv_append(&mut self, _layer: usize, _past: &KvPair, _new: &KvPair) -> Result<KvPair> {
        not_provided("kv_append")
    }
    /// 04: q [H, T, D], k [H, T, D] -> scores and weights [H, T, T].
    fn attention_scores(&mut self, _layer: usize, _q: ArrayView3<f32>, _k: ArrayView3<f32>) -> Result<AttnScores> {
        not_provided("attention_scores")
    }
    /// 05: weights [H, T, T] and v [H, T, D] -> heads merged, c_proj, [T, C] (before the residual).
    fn attention_output(&mut self, _layer: usize, _weights: ArrayView3<f32>, _v: ArrayView3<f32>) -> Result<Array2<f32>> {
        not_provided("attention_output")
    }
    /// 06: ln_2 output [T, C] -> gelu [T, 4C] and MLP output [T, C].
    fn mlp(&mut self, _layer: usize, _x: ArrayView2<f32>) -> Result<MlpOutput> {
        not_provided("mlp")
    }
    /// 07: block input [T, C] -> block output [T, C].
    fn block(&mut self, _layer: usize, _x: ArrayView2<f32>) -> Result<Array2<f32>> {
        not_provided("block")
    }
    /// 08: ln_f output [T, C] -> logits [T, V].
    fn logits(&mut self, _h: ArrayView2<f32>) -> Result<Array2<f32>> {
        not_provided("logits")
    }
    /// 09: logits [T, V] -> the logits that predict the next token, [V]. Default: derived (the last row).
    fn select_last(&mut self, _logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        not_provided("select_last")
    }
    /// 10: last logits [V] -> the greedy next token. Default: derived (the first largest).
    fn argmax(&mut self, _logits: ArrayView1<f32>) -> Result<u32> {
        not_provided("argmax")
    }
    /// 11: last logits [V] -> the sampling distributions. Default: derived from the logits.
    fn sampling(&mut self, _logits: ArrayView1<f32>, _temperature: f32, _top_k: usize) -> Result<Sampling> {
        not_provided("sampling")
    }
}
