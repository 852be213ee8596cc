//! `cargo xtask make-model` and `make-tiny-model`: GPT-2s created by HF itself.
//!
//! GPT2Config + GPT2LMHeadModel with a fixed torch seed, saved with save_pretrained together with the
//! real GPT-2 tokenizer from fixtures/tokenizer/gpt2: real config.json, model.safetensors and
//! tokenizer, random weights. The presets have the real shapes of distilgpt2, gpt2 and gpt2-medium
//! (HF's default initializer_range 0.02); `tiny` is the committed fixture.
//!
//! The tiny fixture's dims catch hard-coding: 3 heads (not a power of two), 3 layers, C = 48 (not
//! 768), the real 50257-token vocabulary (so "Hello." is [15496, 13] as in GPT-2) and
//! n_positions = 128; about 10 MB of weights. Its initializer_range = 0.3 and seed 3 were chosen
//! among eight candidates (ranges 0.02-0.3, seeds 1, 2, 3, 42, 1234): at 0.02 a random tiny GPT-2
//! collapses into repeating one token under greedy decoding, with top-1/top-2 margins within a few
//! 1e-3. This one generates 13-15 distinct tokens out of 16 for each committed prompt with argmax
//! margins of at least 0.057, 57 times the logits tolerance, so the "Hello." gate is sensitive and
//! no step is decided by rounding.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use pyo3::types::PyAnyMethods;

use crate::project_root;
use crate::python::{Venv, path_str, python_error};

pub const TINY_SEED: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    Tiny,
    Distilgpt2,
    Gpt2,
    Gpt2Medium,
}

impl Preset {
    /// GPT2Config arguments, as JSON.
    fn config_json(self) -> &'static str {
        match self {
            Preset::Tiny => {
                r#"{"vocab_size": 50257, "n_positions": 128, "n_embd": 48, "n_layer": 3, "n_head": 3, "initializer_range": 0.3}"#
            }
            Preset::Distilgpt2 => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 6, "n_head": 12}"#,
            Preset::Gpt2 => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}"#,
            Preset::Gpt2Medium => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 1024, "n_layer": 24, "n_head": 16}"#,
        }
    }

    /// The directory name: `gpt2-medium`.
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

/// Creates `preset` with HF (torch seed `seed`) and saves it to `out`, replacing what was there only
/// once the new model is complete.
pub fn make_model(venv: &Venv, preset: Preset, out: &Path, seed: u64) -> Result<()> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}: choose a writable --out", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write under {}: choose a writable --out", parent.display()))?;
    let tokenizer_dir = project_root().join("fixtures").join("tokenizer").join("gpt2");
    eprintln!("creating {} with HF (seed {seed})", preset.name());
    let params = venv.with_reference(|py, reference| {
        let params: usize = reference
            .call_method1("make_model", (path_str(staging.path()), preset.config_json(), seed, path_str(&tokenizer_dir)))
            .and_then(|n| n.extract())
            .map_err(|e| python_error(py, e))?;
        Ok(params)
    })?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    std::fs::rename(staging.keep(), out).with_context(|| format!("cannot move the model into {}", out.display()))?;
    eprintln!("wrote {} ({params} parameters, seed {seed})", out.display());
    Ok(())
}
