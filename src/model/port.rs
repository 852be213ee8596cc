//! The reference model as a [`Port`]: the suite runs it exactly as it runs anyone's port, and it
//! provides every optional method, so it is checked in both modes at every checkpoint.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayView3};

use super::Gpt2;
use super::block::Block;
use super::kv_cache::{KvCache, LayerCache};
use crate::catalog::tap;
use crate::error::{Error, Result};
use crate::port::{AttnScores, KvPair, LnSite, MlpOutput, Port, Qkv, Sampling};
use crate::sampling;
use crate::taps::{NoTaps, TapSink};

/// The reference GPT-2 with the KV cache of the sequence it is running.
pub struct Reference {
    pub model: Gpt2,
    cache: KvCache,
}

impl Reference {
    pub fn new(model: Gpt2) -> Reference {
        let cache = model.new_cache(0);
        Reference { model, cache }
    }

    /// Loads `<model_dir>/config.json` and its weights (see [`crate::weights`]).
    pub fn load(model_dir: &Path) -> Result<Reference> {
        Gpt2::load(model_dir).map(Reference::new)
    }

    fn block_at(&self, layer: usize) -> Result<&Block> {
        let n = self.model.h.len();
        self.model.h.get(layer).ok_or_else(|| Error::Input(format!("layer {layer} does not exist: the model has {n} layers")))
    }

    /// Runs `ids` after what the cache holds and taps the logits (and the cache after the call).
    fn run(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> Result<()> {
        let h = self.model.forward(ids, &mut self.cache, taps)?; // [T, C]
        let logits = self.model.lm_head(h.view()); // [T, V]
        taps.tap(tap::logits(), logits.view().into_dyn());
        self.cache.tap(taps);
        Ok(())
    }
}

impl Port for Reference {
    fn forward(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> Result<()> {
        self.cache = self.model.new_cache(self.model.config.n_positions);
        self.run(ids, taps)
    }

    fn forward_cached(&mut self, id: u32, taps: &mut dyn TapSink) -> Result<()> {
        if self.cache.is_empty() {
            return Err(Error::Input("forward_cached before forward: there is no sequence to continue".into()));
        }
        self.run(&[id], taps)
    }

    fn generate_greedy(&mut self, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>> {
        self.model.generate_greedy(prompt, new_tokens)
    }

    fn embeddings(&mut self, ids: &[u32]) -> Result<Array2<f32>> {
        self.model.embed(ids, 0)
    }

    fn layer_norm(&mut self, site: LnSite, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let ln = match site {
            LnSite::Ln1(layer) => &self.block_at(layer)?.ln_1,
            LnSite::Ln2(layer) => &self.block_at(layer)?.ln_2,
            LnSite::LnF => &self.model.ln_f,
        };
        Ok(ln.forward(x))
    }

    fn qkv(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<Qkv> {
        Ok(self.block_at(layer)?.attn.qkv(x))
    }

    fn kv_append(&mut self, _layer: usize, past: &KvPair, new: &KvPair) -> Result<KvPair> {
        let (h, s, d) = past.keys.dim();
        let mut cache = LayerCache::new(h, s + new.keys.shape()[1], d);
        cache.append(past.keys.view(), past.values.view())?;
        cache.append(new.keys.view(), new.values.view())?;
        Ok(KvPair { keys: cache.keys().to_owned(), values: cache.values().to_owned() })
    }

    fn attention_scores(&mut self, layer: usize, q: ArrayView3<f32>, k: ArrayView3<f32>) -> Result<AttnScores> {
        Ok(self.block_at(layer)?.attn.scores(q, k))
    }

    fn attention_output(&mut self, layer: usize, weights: ArrayView3<f32>, v: ArrayView3<f32>) -> Result<Array2<f32>> {
        Ok(self.block_at(layer)?.attn.output(weights, v))
    }

    fn mlp(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<MlpOutput> {
        Ok(self.block_at(layer)?.mlp.forward(x))
    }

    fn block(&mut self, layer: usize, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let block = self.block_at(layer)?;
        let mut cache = LayerCache::new(self.model.config.n_head, x.nrows(), self.model.config.head_dim());
        block.forward(layer, x, &mut cache, &mut NoTaps)
    }

    fn logits(&mut self, h: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(self.model.lm_head(h))
    }

    fn select_last(&mut self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let last = logits.nrows().checked_sub(1).ok_or_else(|| Error::Input("logits with no positions".into()))?;
        Ok(logits.row(last).to_owned())
    }

    fn argmax(&mut self, logits: ArrayView1<f32>) -> Result<u32> {
        sampling::argmax(logits)
    }

    fn sampling(&mut self, logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> Result<Sampling> {
        sampling::distributions(logits, temperature, top_k)
    }
}
