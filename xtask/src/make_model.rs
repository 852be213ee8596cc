//! `cargo xtask make-model` and `make-tiny-model`: GPT-2s created by HF itself.
//!
//! GPT2Config + GPT2LMHeadModel with a fixed torch seed, saved with save_pretrained together with the
//! real GPT-2 tokenizer from fixtures/tokenizer/gpt2: real config.json, model.safetensors and
//! tokenizer, random weights. The presets have the real shapes of distilgpt2, gpt2, gpt2-medium, gpt2-large and gpt2-xl
//! (HF's default initializer_range 0.02); `tiny` and `tiny-stats` are the committed fixtures.
//!
//! With real statistics (`--real-stats`, always for `tiny-stats`), HF's initialisation is then
//! edited, deterministically, to look like real GPT-2 (reference/gpt2_taps.py,
//! `impose_real_statistics`): non-zero biases everywhere, LayerNorm gamma in 0.2-2.5 and beta far
//! from 0, residual outlier channels in the hundreds at every position and a 3000 activation at
//! position 0 (with small gamma on those channels, as GPT-2 keeps them from dominating), wte rows
//! of norm ~3.5 sharing a common direction, and logits around -165, so that a softmax without the
//! max shift gives NaN. HF's own initialisation hides a dropped bias, swapped gamma/beta and the
//! missing max shift; this one does not. `tiny-stats` is 80 wide with 5 heads of 16 and 4 layers,
//! dims unlike the tiny fixture's, to catch hard-coding.
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

/// The seed of `tiny-stats`: among 100 seeds, the one whose greedy decoding of the committed
/// prompts has the largest smallest top-1/top-2 margin (0.95 on "Hello.", 8000 times HF float32's
/// own logits error) with distinct tokens.
pub const TINY_STATS_SEED: u64 = 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    Tiny,
    /// The second committed fixture, with real GPT-2's statistics.
    TinyStats,
    Distilgpt2,
    Gpt2,
    Gpt2Medium,
    Gpt2Large,
    Gpt2Xl,
}

impl Preset {
    /// GPT2Config arguments, as JSON.
    fn config_json(self) -> &'static str {
        match self {
            Preset::Tiny => {
                r#"{"vocab_size": 50257, "n_positions": 128, "n_embd": 48, "n_layer": 3, "n_head": 3, "initializer_range": 0.3}"#
            }
            Preset::TinyStats => r#"{"vocab_size": 50257, "n_positions": 128, "n_embd": 80, "n_layer": 4, "n_head": 5}"#,
            Preset::Distilgpt2 => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 6, "n_head": 12}"#,
            Preset::Gpt2 => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}"#,
            Preset::Gpt2Medium => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 1024, "n_layer": 24, "n_head": 16}"#,
            Preset::Gpt2Large => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 1280, "n_layer": 36, "n_head": 20}"#,
            Preset::Gpt2Xl => r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 1600, "n_layer": 48, "n_head": 25}"#,
        }
    }

    /// The directory name: `gpt2-medium`.
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

fn save_as_name(save_as: SaveAs) -> String {
    save_as.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// Creates `preset` with HF (torch seed `seed`; with `real_stats`, edited to real GPT-2's statistics)
/// and saves it to `out`, replacing what was there only once the new model is complete.
/// How the model is saved (the layouts GPT-2 checkpoints are found in; reference/gpt2_taps.py, `_save`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SaveAs {
    /// model.safetensors, as save_pretrained writes it
    #[default]
    Safetensors,
    /// three shards and model.safetensors.index.json
    Sharded,
    /// the legacy pytorch_model.bin (a pickle)
    PytorchBin,
    Float16,
    Bfloat16,
    /// the original openai-community names, without `transformer.`
    NoPrefix,
}

pub fn make_model(venv: &Venv, preset: Preset, out: &Path, seed: u64, real_stats: bool, save_as: SaveAs) -> Result<()> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}: choose a writable --out", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write under {}: choose a writable --out", parent.display()))?;
    let tokenizer_dir = project_root().join("fixtures").join("tokenizer").join("gpt2");
    let stats = if real_stats { ", real GPT-2 statistics" } else { "" };
    eprintln!("creating {} with HF (seed {seed}{stats})", preset.name());
    let params = venv.with_reference(|py, reference| {
        let params: usize = reference
            .call_method1(
                "make_model",
                (path_str(staging.path()), preset.config_json(), seed, path_str(&tokenizer_dir), real_stats, save_as_name(save_as)),
            )
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
