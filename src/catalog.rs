//! The checkpoint catalog: the 13 checkpoints, the tensors each one records and their shapes.
//!
//! This is the one definition that every side uses: the xtask names and shape-checks the goldens it
//! writes with it, the reference model taps under its keys, and the suite walks it to decide what to
//! feed and what to compare. Shapes are symbolic ([`Dim`]) and resolved against a model's config
//! and a golden set's prompt ([`Dims`]).

use std::fmt;

/// One of the 13 checkpoints, in the order a forward pass reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Checkpoint {
    Embeddings,
    LayerNorm,
    Qkv,
    KvCache,
    AttnScores,
    AttnOutput,
    Ffn,
    Block,
    Logits,
    SelectedLogits,
    Argmax,
    Softmax,
    Generation,
}

/// Whether a tensor exists once per model or once per transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Model,
    Layer,
}

/// What the suite does with a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fed to the component when a checkpoint is tested in isolation.
    Input,
    /// Compared with the candidate's value.
    Output,
    /// Recorded to interpret a comparison, never compared (HF's top-2 logits at each greedy step).
    Evidence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I64,
}

/// A symbolic dimension, resolved by [`Dims::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// Batch: always 1 in the goldens.
    B,
    /// Prompt tokens.
    T,
    /// Embedding width, n_embd.
    C,
    /// Attention heads, n_head.
    H,
    /// Head width, C / H.
    D,
    /// Vocabulary size.
    V,
    /// MLP width, n_inner or 4C.
    Inner,
    /// Keys held by the cache after decode step s: T + s.
    CacheLen,
    /// Single-token steps decoded with the cache for checkpoint 03.
    DecodeSteps,
    /// Tokens generated greedily for checkpoint 12.
    NewTokens,
    /// k of the top-k sampling distribution.
    TopK,
    /// The literal 2 (top-1 and top-2).
    Two,
}

/// One tensor a checkpoint records.
#[derive(Clone, Copy, Debug)]
pub struct TensorSpec {
    pub name: &'static str,
    pub scope: Scope,
    /// One tensor per cache state: after the prompt (step 0) and after each decode step.
    pub per_step: bool,
    pub role: Role,
    pub dtype: DType,
    pub shape: &'static [Dim],
}

const fn spec(name: &'static str, scope: Scope, role: Role, dtype: DType, shape: &'static [Dim]) -> TensorSpec {
    TensorSpec { name, scope, per_step: false, role, dtype, shape }
}

use DType::{F32, I64};
use Dim::*;
use Role::{Evidence, Input, Output};
use Scope::{Layer, Model};

const EMBEDDINGS: &[TensorSpec] = &[spec("input_ids", Model, Input, I64, &[B, T]), spec("embeddings", Model, Output, F32, &[B, T, C])];
const LAYER_NORM: &[TensorSpec] = &[
    spec("ln_1.input", Layer, Input, F32, &[B, T, C]),
    spec("ln_1", Layer, Output, F32, &[B, T, C]),
    spec("ln_2.input", Layer, Input, F32, &[B, T, C]),
    spec("ln_2", Layer, Output, F32, &[B, T, C]),
    spec("ln_f.input", Model, Input, F32, &[B, T, C]),
    spec("ln_f", Model, Output, F32, &[B, T, C]),
];
const QKV: &[TensorSpec] = &[
    spec("q", Layer, Output, F32, &[B, H, T, D]),
    spec("k", Layer, Output, F32, &[B, H, T, D]),
    spec("v", Layer, Output, F32, &[B, H, T, D]),
];
const KV_CACHE: &[TensorSpec] = &[
    TensorSpec { per_step: true, ..spec("keys", Layer, Output, F32, &[B, H, CacheLen, D]) },
    TensorSpec { per_step: true, ..spec("values", Layer, Output, F32, &[B, H, CacheLen, D]) },
    spec("decode_ids", Model, Input, I64, &[DecodeSteps]),
    spec("decode_logits", Model, Output, F32, &[DecodeSteps, V]),
];
const ATTN_SCORES: &[TensorSpec] = &[spec("scores", Layer, Output, F32, &[B, H, T, T]), spec("weights", Layer, Output, F32, &[B, H, T, T])];
const ATTN_OUTPUT: &[TensorSpec] = &[spec("attn_output", Layer, Output, F32, &[B, T, C])];
const FFN: &[TensorSpec] = &[spec("gelu", Layer, Output, F32, &[B, T, Inner]), spec("mlp_output", Layer, Output, F32, &[B, T, C])];
const BLOCK: &[TensorSpec] = &[spec("input", Layer, Input, F32, &[B, T, C]), spec("output", Layer, Output, F32, &[B, T, C])];
const LOGITS: &[TensorSpec] = &[spec("logits", Model, Output, F32, &[B, T, V])];
const SELECTED_LOGITS: &[TensorSpec] = &[spec("last_logits", Model, Output, F32, &[B, V])];
const ARGMAX: &[TensorSpec] = &[spec("next_token", Model, Output, I64, &[B])];
const SOFTMAX: &[TensorSpec] = &[
    spec("probs", Model, Output, F32, &[B, V]),
    spec("probs_warped", Model, Output, F32, &[B, V]),
    spec("top_ids", Model, Output, I64, &[B, TopK]),
];
const GENERATION: &[TensorSpec] =
    &[spec("new_ids", Model, Output, I64, &[NewTokens]), spec("top2_logits", Model, Evidence, F32, &[NewTokens, Two])];

impl Checkpoint {
    pub const ALL: [Checkpoint; 13] = [
        Checkpoint::Embeddings,
        Checkpoint::LayerNorm,
        Checkpoint::Qkv,
        Checkpoint::KvCache,
        Checkpoint::AttnScores,
        Checkpoint::AttnOutput,
        Checkpoint::Ffn,
        Checkpoint::Block,
        Checkpoint::Logits,
        Checkpoint::SelectedLogits,
        Checkpoint::Argmax,
        Checkpoint::Softmax,
        Checkpoint::Generation,
    ];

    /// 0 to 12, the number in `checkpoint_NN`.
    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<Checkpoint> {
        Checkpoint::ALL.get(usize::from(id)).copied()
    }

    /// The file-name part after the number: `07_block`.
    pub fn slug(self) -> &'static str {
        match self {
            Checkpoint::Embeddings => "embeddings",
            Checkpoint::LayerNorm => "layernorm",
            Checkpoint::Qkv => "qkv",
            Checkpoint::KvCache => "kv_cache",
            Checkpoint::AttnScores => "attn_scores",
            Checkpoint::AttnOutput => "attn_output",
            Checkpoint::Ffn => "ffn",
            Checkpoint::Block => "block",
            Checkpoint::Logits => "logits",
            Checkpoint::SelectedLogits => "selected_logits",
            Checkpoint::Argmax => "argmax",
            Checkpoint::Softmax => "softmax",
            Checkpoint::Generation => "generation",
        }
    }

    /// `07_block`: the prefix of every file and the key in tolerances.yaml.
    pub fn label(self) -> String {
        format!("{:02}_{}", self.id(), self.slug())
    }

    pub fn tensors(self) -> &'static [TensorSpec] {
        match self {
            Checkpoint::Embeddings => EMBEDDINGS,
            Checkpoint::LayerNorm => LAYER_NORM,
            Checkpoint::Qkv => QKV,
            Checkpoint::KvCache => KV_CACHE,
            Checkpoint::AttnScores => ATTN_SCORES,
            Checkpoint::AttnOutput => ATTN_OUTPUT,
            Checkpoint::Ffn => FFN,
            Checkpoint::Block => BLOCK,
            Checkpoint::Logits => LOGITS,
            Checkpoint::SelectedLogits => SELECTED_LOGITS,
            Checkpoint::Argmax => ARGMAX,
            Checkpoint::Softmax => SOFTMAX,
            Checkpoint::Generation => GENERATION,
        }
    }

    /// Whether any of this checkpoint's compared tensors has the given scope.
    pub fn has_output(self, scope: Scope) -> bool {
        self.tensors().iter().any(|t| t.scope == scope && t.role == Role::Output)
    }

    pub fn spec(self, name: &str) -> Option<&'static TensorSpec> {
        self.tensors().iter().find(|t| t.name == name)
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkpoint {}", self.label())
    }
}

/// Names one concrete tensor: a catalog entry at a layer and a cache step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorKey {
    pub checkpoint: Checkpoint,
    pub layer: Option<usize>,
    pub step: Option<usize>,
    pub name: &'static str,
}

impl TensorKey {
    pub fn new(checkpoint: Checkpoint, layer: Option<usize>, step: Option<usize>, name: &'static str) -> Self {
        TensorKey { checkpoint, layer, step, name }
    }

    /// Looks a tap's name up in the catalog, so that a key only ever holds catalog names.
    pub fn find(checkpoint: Checkpoint, layer: Option<usize>, step: Option<usize>, name: &str) -> Option<Self> {
        let spec = checkpoint.spec(name)?;
        let scope_ok = (spec.scope == Scope::Layer) == layer.is_some();
        let step_ok = spec.per_step == step.is_some();
        (scope_ok && step_ok).then_some(TensorKey { checkpoint, layer, step, name: spec.name })
    }

    pub fn spec(&self) -> &'static TensorSpec {
        self.checkpoint.spec(self.name).expect("TensorKey holds only catalog names")
    }

    /// `07_block.l02.output`, `03_kv_cache.l00.step1.keys`, `08_logits.logits`.
    pub fn stem(&self) -> String {
        let mut stem = self.checkpoint.label();
        if let Some(layer) = self.layer {
            stem.push_str(&format!(".l{layer:02}"));
        }
        if let Some(step) = self.step {
            stem.push_str(&format!(".step{step}"));
        }
        stem.push('.');
        stem.push_str(self.name);
        stem
    }

    pub fn file_name(&self) -> String {
        format!("{}.npy", self.stem())
    }

    /// Whether isolated mode compares this tensor: every output except 03's prompt cache (step 0,
    /// a copy of 02's k and v) and decode logits (they need the whole model).
    pub fn is_isolated_output(&self) -> bool {
        self.spec().role == Role::Output && !(self.checkpoint == Checkpoint::KvCache && (self.step == Some(0) || self.layer.is_none()))
    }
}

impl fmt::Display for TensorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem())
    }
}

/// The keys a forward pass taps under: one constructor per compared tensor, so that a port never
/// spells a name. Tensors are single-sequence ([T, C], [H, T, D], ...); a leading batch axis of 1
/// is accepted too.
///
/// ```
/// use gpt2_checkpoints::catalog::tap;
/// assert_eq!(tap::block_output(2).stem(), "07_block.l02.output");
/// assert_eq!(tap::q(0).file_name(), "02_qkv.l00.q.npy");
/// assert_eq!(tap::logits().stem(), "08_logits.logits");
/// ```
pub mod tap {
    use super::{Checkpoint as C, TensorKey};

    const fn model(checkpoint: C, name: &'static str) -> TensorKey {
        TensorKey { checkpoint, layer: None, step: None, name }
    }

    const fn layer(checkpoint: C, layer: usize, name: &'static str) -> TensorKey {
        TensorKey { checkpoint, layer: Some(layer), step: None, name }
    }

    /// 00: wte[ids] + wpe[positions], [T, C].
    pub const fn embeddings() -> TensorKey {
        model(C::Embeddings, "embeddings")
    }
    /// 01: block `l`'s first LayerNorm, [T, C].
    pub const fn ln_1(l: usize) -> TensorKey {
        layer(C::LayerNorm, l, "ln_1")
    }
    /// 01: block `l`'s second LayerNorm (before the MLP), [T, C].
    pub const fn ln_2(l: usize) -> TensorKey {
        layer(C::LayerNorm, l, "ln_2")
    }
    /// 01: the final LayerNorm, [T, C].
    pub const fn ln_f() -> TensorKey {
        model(C::LayerNorm, "ln_f")
    }
    /// 02: per-head queries, [H, T, D].
    pub const fn q(l: usize) -> TensorKey {
        layer(C::Qkv, l, "q")
    }
    /// 02: per-head keys, [H, T, D].
    pub const fn k(l: usize) -> TensorKey {
        layer(C::Qkv, l, "k")
    }
    /// 02: per-head values, [H, T, D].
    pub const fn v(l: usize) -> TensorKey {
        layer(C::Qkv, l, "v")
    }
    /// 03: every key the cache holds after this call, [H, S, D]. Tap it without a step: the suite
    /// knows which cache state (after the prompt, after decode step s) the call produced.
    pub const fn cache_keys(l: usize) -> TensorKey {
        layer(C::KvCache, l, "keys")
    }
    /// 03: every value the cache holds after this call, [H, S, D] (see [`cache_keys`]).
    pub const fn cache_values(l: usize) -> TensorKey {
        layer(C::KvCache, l, "values")
    }
    /// 04: scaled, causally masked scores before softmax, [H, T, S]. Masked entries may hold any
    /// value (-inf, finfo.min, -1e10, -1e4): only the causal positions are compared.
    pub const fn scores(l: usize) -> TensorKey {
        layer(C::AttnScores, l, "scores")
    }
    /// 04: the attention weights after softmax, [H, T, S] (zero at masked positions).
    pub const fn weights(l: usize) -> TensorKey {
        layer(C::AttnScores, l, "weights")
    }
    /// 05: heads merged and c_proj applied, before the residual add, [T, C].
    pub const fn attn_output(l: usize) -> TensorKey {
        layer(C::AttnOutput, l, "attn_output")
    }
    /// 06: the GELU activation, [T, 4C].
    pub const fn gelu(l: usize) -> TensorKey {
        layer(C::Ffn, l, "gelu")
    }
    /// 06: the MLP's output, before the residual add, [T, C].
    pub const fn mlp_output(l: usize) -> TensorKey {
        layer(C::Ffn, l, "mlp_output")
    }
    /// 07: block `l`'s output (the residual stream after it), [T, C].
    pub const fn block_output(l: usize) -> TensorKey {
        layer(C::Block, l, "output")
    }
    /// 08: logits of every position of this call, [T, V].
    pub const fn logits() -> TensorKey {
        model(C::Logits, "logits")
    }
}

/// The sizes that resolve symbolic shapes for one model and one golden set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n_layer: usize,
    pub prompt_tokens: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub vocab_size: usize,
    pub inner: usize,
    pub decode_steps: usize,
    pub new_tokens: usize,
    pub top_k: usize,
}

impl Dims {
    pub fn resolve(&self, shape: &[Dim], step: Option<usize>) -> Vec<usize> {
        shape
            .iter()
            .map(|dim| match dim {
                B => 1,
                T => self.prompt_tokens,
                C => self.n_embd,
                H => self.n_head,
                D => self.n_embd / self.n_head,
                V => self.vocab_size,
                Inner => self.inner,
                CacheLen => self.prompt_tokens + step.unwrap_or(0),
                DecodeSteps => self.decode_steps,
                NewTokens => self.new_tokens,
                TopK => self.top_k,
                Two => 2,
            })
            .collect()
    }

    /// Every tensor the catalog expects for these sizes, in checkpoint order, with its shape.
    pub fn all_tensors(&self) -> Vec<(TensorKey, Vec<usize>)> {
        let mut all = Vec::new();
        for checkpoint in Checkpoint::ALL {
            for spec in checkpoint.tensors() {
                let layers: Vec<Option<usize>> = match spec.scope {
                    Scope::Model => vec![None],
                    Scope::Layer => (0..self.n_layer).map(Some).collect(),
                };
                let steps: Vec<Option<usize>> = if spec.per_step { (0..=self.decode_steps).map(Some).collect() } else { vec![None] };
                for &layer in &layers {
                    for &step in &steps {
                        let key = TensorKey { checkpoint, layer, step, name: spec.name };
                        all.push((key, self.resolve(spec.shape, step)));
                    }
                }
            }
        }
        all
    }
}

/// The outputs of one block in the order its forward pass produces them.
const BLOCK_ORDER: &[(Checkpoint, &str)] = &[
    (Checkpoint::LayerNorm, "ln_1"),
    (Checkpoint::Qkv, "q"),
    (Checkpoint::Qkv, "k"),
    (Checkpoint::Qkv, "v"),
    (Checkpoint::KvCache, "keys"),
    (Checkpoint::KvCache, "values"),
    (Checkpoint::AttnScores, "scores"),
    (Checkpoint::AttnScores, "weights"),
    (Checkpoint::AttnOutput, "attn_output"),
    (Checkpoint::LayerNorm, "ln_2"),
    (Checkpoint::Ffn, "gelu"),
    (Checkpoint::Ffn, "mlp_output"),
    (Checkpoint::Block, "output"),
];

/// The model-level outputs after the last block, in order.
const HEAD_ORDER: &[(Checkpoint, &str)] = &[
    (Checkpoint::LayerNorm, "ln_f"),
    (Checkpoint::Logits, "logits"),
    (Checkpoint::SelectedLogits, "last_logits"),
    (Checkpoint::Argmax, "next_token"),
    (Checkpoint::Softmax, "probs"),
    (Checkpoint::Softmax, "probs_warped"),
    (Checkpoint::Softmax, "top_ids"),
    (Checkpoint::KvCache, "decode_logits"),
    (Checkpoint::Generation, "new_ids"),
];

impl Dims {
    /// Every compared tensor in the order a forward pass produces it: embeddings, then block by
    /// block (cache states right after the keys and values they hold), then the head. The first
    /// failing key in this order is where a chained run diverged first.
    pub fn forward_order(&self) -> Vec<TensorKey> {
        let mut order = vec![TensorKey::new(Checkpoint::Embeddings, None, None, "embeddings")];
        for layer in 0..self.n_layer {
            for &(checkpoint, name) in BLOCK_ORDER {
                let spec = checkpoint.spec(name).expect("BLOCK_ORDER holds catalog names");
                if spec.per_step {
                    order.extend((0..=self.decode_steps).map(|s| TensorKey::new(checkpoint, Some(layer), Some(s), spec.name)));
                } else {
                    order.push(TensorKey::new(checkpoint, Some(layer), None, spec.name));
                }
            }
        }
        order.extend(HEAD_ORDER.iter().map(|&(checkpoint, name)| TensorKey::new(checkpoint, None, None, name)));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_catalog_order() {
        for (i, checkpoint) in Checkpoint::ALL.iter().enumerate() {
            assert_eq!(usize::from(checkpoint.id()), i);
            assert_eq!(Checkpoint::from_id(checkpoint.id()), Some(*checkpoint));
        }
        assert_eq!(Checkpoint::from_id(13), None);
    }

    #[test]
    fn stems_read_well_in_a_listing() {
        let block = TensorKey::find(Checkpoint::Block, Some(2), None, "output").unwrap();
        assert_eq!(block.file_name(), "07_block.l02.output.npy");
        let keys = TensorKey::find(Checkpoint::KvCache, Some(0), Some(1), "keys").unwrap();
        assert_eq!(keys.stem(), "03_kv_cache.l00.step1.keys");
        assert_eq!(TensorKey::find(Checkpoint::Logits, None, None, "logits").unwrap().stem(), "08_logits.logits");
    }

    #[test]
    fn forward_order_lists_every_compared_tensor_once() {
        let dims = Dims {
            n_layer: 2,
            prompt_tokens: 3,
            n_embd: 6,
            n_head: 2,
            vocab_size: 10,
            inner: 24,
            decode_steps: 2,
            new_tokens: 4,
            top_k: 3,
        };
        let order = dims.forward_order();
        let mut outputs: Vec<TensorKey> =
            dims.all_tensors().into_iter().map(|(k, _)| k).filter(|k| k.spec().role == Role::Output).collect();
        let mut sorted = order.clone();
        sorted.sort();
        outputs.sort();
        assert_eq!(sorted, outputs);
        assert_eq!(order[0].checkpoint, Checkpoint::Embeddings);
    }

    #[test]
    fn find_refuses_names_scopes_and_steps_the_catalog_does_not_have() {
        assert!(TensorKey::find(Checkpoint::Block, Some(0), None, "nonsense").is_none());
        assert!(TensorKey::find(Checkpoint::Block, None, None, "output").is_none());
        assert!(TensorKey::find(Checkpoint::KvCache, Some(0), None, "keys").is_none());
    }
}
