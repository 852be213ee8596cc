//! The reference GPT-2: a readable forward pass on ndarray that taps every checkpoint.
//!
//! One struct per HF module, fields named after the HF weight keys (`wte`, `wpe`, `h`, `ln_f`,
//! `ln_1`, `attn.c_attn`, ...). Tensors are single-sequence: [T, C] where HF has [B, T, C].
//! Shapes: T tokens in this call, S cached positions, C n_embd, H heads, D = C / H, V vocab.

pub mod attention;
pub mod block;
pub mod conv1d;
pub mod kernels;
pub mod kv_cache;
mod lanes;
pub mod layer_norm;
pub mod mlp;
mod pairwise;
mod port;
pub mod softmax;

pub use port::Reference;

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::catalog::tap;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::taps::{NoTaps, TapSink};
use crate::weights::{ModelFiles, Weights};
use attention::Attention;
use block::Block;
use kv_cache::KvCache;
use layer_norm::LayerNorm;
use mlp::Mlp;

pub struct Gpt2 {
    pub config: Config,
    /// [V, C] token embeddings; also the (tied) lm_head
    pub wte: Array2<f32>,
    /// [n_positions, C] position embeddings
    pub wpe: Array2<f32>,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
    /// What the weight files held ("float32", "float16", "bfloat16"); the model computes in float32.
    pub source_dtype: String,
}

impl Gpt2 {
    /// Loads `<model_dir>/config.json` and the weights beside it (one safetensors file or shards;
    /// float32, float16 or bfloat16, upcast to float32: see [`crate::weights`]).
    pub fn load(model_dir: &Path) -> Result<Gpt2> {
        let config = Config::from_model_dir(model_dir)?;
        let mut weights = Weights::open(&ModelFiles::find(model_dir)?)?;
        let source_dtype = weights.source_dtype();
        let model = Gpt2::from_weights(config, source_dtype, &mut weights)?;
        weights.finish()?;
        Ok(model)
    }

    fn from_weights(config: Config, source_dtype: String, file: &mut Weights) -> Result<Gpt2> {
        let (c, inner) = (config.n_embd, config.inner_dim());
        let eps = config.layer_norm_epsilon as f32;
        let ln_f = file.layer_norm("ln_f", c, eps)?;
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            h.push(Block {
                ln_1: file.layer_norm(&format!("{p}.ln_1"), c, eps)?,
                attn: Attention {
                    c_attn: file.conv1d(&format!("{p}.attn.c_attn"), c, 3 * c)?,
                    c_proj: file.conv1d(&format!("{p}.attn.c_proj"), c, c)?,
                    n_head: config.n_head,
                    scale: config.attn_scale(i),
                },
                ln_2: file.layer_norm(&format!("{p}.ln_2"), c, eps)?,
                mlp: Mlp {
                    c_fc: file.conv1d(&format!("{p}.mlp.c_fc"), c, inner)?,
                    c_proj: file.conv1d(&format!("{p}.mlp.c_proj"), inner, c)?,
                },
            });
        }
        Ok(Gpt2 {
            wte: file.matrix("wte.weight", config.vocab_size, c)?,
            wpe: file.matrix("wpe.weight", config.n_positions, c)?,
            h,
            ln_f,
            config,
            source_dtype,
        })
    }

    /// An empty KV cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(c.n_layer, c.n_head, capacity, c.head_dim())
    }

    /// Checkpoint 00: wte[ids] + wpe[past .. past + T] -> [T, C]
    pub fn embed(&self, ids: &[u32], past: usize) -> Result<Array2<f32>> {
        if past + ids.len() > self.config.n_positions {
            return Err(Error::Input(format!(
                "{} positions exceed n_positions = {}: shorten the prompt or generate fewer tokens",
                past + ids.len(),
                self.config.n_positions
            )));
        }
        let mut x = Array2::<f32>::zeros((ids.len(), self.config.n_embd)); // [T, C]
        for (t, (&id, mut row)) in ids.iter().zip(x.rows_mut()).enumerate() {
            let token = self.wte.row(self.token_row(id)?);
            let position = self.wpe.row(past + t);
            row.assign(&(&token + &position));
        }
        Ok(x)
    }

    fn token_row(&self, id: u32) -> Result<usize> {
        let row = id as usize;
        if row >= self.config.vocab_size {
            return Err(Error::Input(format!("token id {id} is outside the vocabulary of {} tokens", self.config.vocab_size)));
        }
        Ok(row)
    }

    /// Runs `ids` through every block after the positions already in `cache`, appending to it;
    /// returns the final hidden states after ln_f [T, C]. Taps 00 to 07 and ln_f.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, sink: &mut dyn TapSink) -> Result<Array2<f32>> {
        if ids.is_empty() {
            return Err(Error::Input("no token ids to run: pass at least one token".into()));
        }
        let mut x = self.embed(ids, cache.len())?; // [T, C]
        sink.tap(tap::embeddings(), x.view().into_dyn());
        for (layer, (block, layer_cache)) in self.h.iter().zip(cache.layers.iter_mut()).enumerate() {
            x = block.forward(layer, x.view(), layer_cache, sink)?; // [T, C]
        }
        let out = self.ln_f.forward(x.view()); // [T, C]
        sink.tap(tap::ln_f(), out.view().into_dyn());
        Ok(out)
    }

    /// Checkpoint 08: the tied lm_head, h [T, C] -> logits [T, V] = h · wteᵀ (no bias).
    pub fn lm_head(&self, h: ArrayView2<f32>) -> Array2<f32> {
        kernels::x_wt(h, self.wte.view()) // [T, V]
    }

    /// One position: h [C] -> logits [V], one dot product per row of wte.
    pub fn lm_head_row(&self, h: ArrayView1<f32>) -> Array1<f32> {
        self.lm_head(h.insert_axis(Axis(0))).index_axis_move(Axis(0), 0) // [V]
    }

    /// Greedy decoding: `new_tokens` argmax tokens after `prompt`, with the KV cache.
    pub fn generate_greedy(&self, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>> {
        let mut cache = self.new_cache(prompt.len() + new_tokens);
        let mut generated = Vec::with_capacity(new_tokens);
        let mut input = prompt.to_vec();
        while generated.len() < new_tokens {
            let h = self.forward(&input, &mut cache, &mut NoTaps)?; // [T, C]
            let logits = self.lm_head_row(h.row(h.nrows() - 1)); // [V]
            let next = crate::sampling::argmax(logits.view())?;
            generated.push(next);
            input = vec![next];
        }
        Ok(generated)
    }
}
