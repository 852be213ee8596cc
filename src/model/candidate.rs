//! The reference model as a [`Candidate`]: the suite runs it exactly as it runs a port.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayView3, Axis, stack};

use super::Gpt2;
use super::kv_cache::LayerCache;
use crate::candidate::{AttnScores, Candidate, KvPair, LnSite, MlpOutput, Qkv, Sampling};
use crate::catalog::{Checkpoint, TensorKey};
use crate::error::{Error, Result};
use crate::sampling;
use crate::taps::{NoTaps, TapSink};

impl Gpt2 {
    fn block_at(&self, layer: usize) -> Result<&super::block::Block> {
        self.h.get(layer).ok_or_else(|| Error::Input(format!("layer {layer} does not exist: the model has {} layers", self.h.len())))
    }
}

impl Candidate for Gpt2 {
    fn run_prompt(&mut self, prompt: &[u32], decode_ids: &[u32], sink: &mut dyn TapSink) -> Result<()> {
        let mut cache = self.new_cache(prompt.len() + decode_ids.len());
        let h = self.forward(prompt, &mut cache, sink)?; // [T, C]
        let logits = self.lm_head(h.view()); // [T, V]
        sink.tap(TensorKey::new(Checkpoint::Logits, None, None, "logits"), logits.view().into_dyn());
        cache.tap(sink, 0);
        let mut decode_logits = Vec::with_capacity(decode_ids.len());
        for (step, &id) in decode_ids.iter().enumerate() {
            let h = self.forward(&[id], &mut cache, &mut NoTaps)?; // [1, C]
            decode_logits.push(self.lm_head_row(h.row(0))); // [V]
            cache.tap(sink, step + 1);
        }
        let views: Vec<ArrayView1<f32>> = decode_logits.iter().map(|l| l.view()).collect();
        if !views.is_empty() {
            let stacked = stack(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))?; // [S, V]
            sink.tap(TensorKey::new(Checkpoint::KvCache, None, None, "decode_logits"), stacked.view().into_dyn());
        }
        Ok(())
    }

    fn generate_greedy(&mut self, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>> {
        Gpt2::generate_greedy(self, prompt, new_tokens)
    }

    fn embeddings(&mut self, ids: &[u32]) -> Result<Array2<f32>> {
        self.embed(ids, 0)
    }

    fn layer_norm(&mut self, site: LnSite, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let ln = match site {
            LnSite::Ln1(layer) => &self.block_at(layer)?.ln_1,
            LnSite::Ln2(layer) => &self.block_at(layer)?.ln_2,
            LnSite::LnF => &self.ln_f,
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
        let mut cache = LayerCache::new(self.config.n_head, x.nrows(), self.config.head_dim());
        block.forward(layer, x, &mut cache, &mut NoTaps)
    }

    fn logits(&mut self, h: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(self.lm_head(h))
    }

    fn select_last(&mut self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let last = logits.nrows().checked_sub(1).ok_or_else(|| Error::Input("logits with no positions".into()))?;
        Ok(logits.row(last).to_owned())
    }

    fn argmax(&mut self, logits: ArrayView1<f32>) -> Result<u32> {
        sampling::argmax(logits)
    }

    fn sampling(&mut self, logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> Result<Sampling> {
        Ok(Sampling {
            probs: sampling::softmax_with_temperature(logits, 1.0)?,
            probs_warped: sampling::warped_probs(logits, temperature, top_k)?,
            top_ids: sampling::top_k_ids(logits, top_k),
        })
    }
}
