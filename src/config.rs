//! GPT-2 hyper-parameters, read from HuggingFace's config.json.
//!
//! Any GPT-2 family size loads (distilgpt2, gpt2, -medium, -large, -xl, the tiny fixture). Options
//! the reference model does not implement are refused with an error that names them; none is
//! silently ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP width; HF's `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu_new".to_string()
}

fn default_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads and validates `<model_dir>/config.json`.
    pub fn from_model_dir(model_dir: &Path) -> Result<Config> {
        let path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::config(&path, format!("cannot read it ({e}): a GPT-2 model directory needs the config.json that save_pretrained writes"))
        })?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| Error::config(&path, format!("not a GPT-2 config.json ({e}): re-save the model with save_pretrained")))?;
        config.validate().map_err(|message| Error::config(&path, message))?;
        Ok(config)
    }

    /// Refuses what the reference model does not implement, naming the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_type != "gpt2" {
            return Err(format!("model_type is {:?}, not \"gpt2\": this crate checks GPT-2 family models only", self.model_type));
        }
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!(
                "activation_function {:?} is not implemented: the reference implements GPT-2's gelu_new (tanh form) only",
                self.activation_function
            ));
        }
        if self.reorder_and_upcast_attn {
            return Err("reorder_and_upcast_attn = true is not implemented: set it to false (it only matters for fp16 training)".into());
        }
        if self.add_cross_attention {
            return Err("add_cross_attention = true is not implemented: GPT-2 language models have no cross-attention".into());
        }
        if !self.tie_word_embeddings {
            return Err("tie_word_embeddings = false is not implemented: GPT-2's lm_head is tied to wte".into());
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!("n_embd = {} is not divisible by n_head = {}", self.n_embd, self.n_head));
        }
        if self.n_layer == 0 || self.vocab_size == 0 || self.n_positions == 0 {
            return Err("n_layer, vocab_size and n_positions must be positive".into());
        }
        Ok(())
    }

    /// Head width D = C / H.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// MLP width: n_inner, or 4 * n_embd when it is null.
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The factor the attention scores are multiplied by in `layer` (0-based), as HF computes it.
    pub fn attn_scale(&self, layer: usize) -> f32 {
        // HF computes the factor as a Python float (f64) and multiplies the f32 scores by it.
        let mut scale = if self.scale_attn_weights { (self.head_dim() as f64).powf(-0.5) } else { 1.0 };
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        scale as f32
    }
}
