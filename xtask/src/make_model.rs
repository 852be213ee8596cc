//! `cargo xtask make-tiny-model`: the fixture GPT-2, created by HF itself.
//!
//! GPT2Config + GPT2LMHeadModel with a fixed torch seed, saved with save_pretrained together with the
//! real GPT-2 tokenizer from fixtures/tokenizer/gpt2. The dims are chosen to catch hard-coding:
//! 3 heads (not a power of two), 3 layers, C = 48 (not 768), the real 50257-token vocabulary (so
//! "Hello." is [15496, 13] as in GPT-2) and n_positions = 128; about 10 MB of weights.
//!
//! initializer_range = 0.3 (HF's default is 0.02) and seed 3 were chosen among eight candidates
//! (ranges 0.02-0.3, seeds 1, 2, 3, 42, 1234): at 0.02 random GPT-2s collapse into repeating one
//! token under greedy decoding, and their top-1/top-2 margins come within a few 1e-3 of each other.
//! This one generates 13-15 distinct tokens out of 16 for each committed prompt with argmax margins
//! of at least 0.057, 57 times the logits tolerance, so the "Hello." gate is sensitive and no step
//! is decided by rounding.

use std::path::Path;

use anyhow::{Context, Result};
use pyo3::types::PyAnyMethods;

use crate::project_root;
use crate::python::{Venv, path_str, python_error};

pub const TINY_SEED: u64 = 3;

/// GPT2Config arguments of the tiny fixture, as JSON.
const TINY_CONFIG: &str = r#"{"vocab_size": 50257, "n_positions": 128, "n_embd": 48, "n_layer": 3, "n_head": 3, "initializer_range": 0.3}"#;

pub fn make_tiny_model(venv: &Venv, out: &Path, seed: u64) -> Result<()> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}: choose a writable --out", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write under {}: choose a writable --out", parent.display()))?;
    let tokenizer_dir = project_root().join("fixtures").join("tokenizer").join("gpt2");
    let params = venv.with_reference(|py, reference| {
        let params: usize = reference
            .call_method1("make_model", (path_str(staging.path()), TINY_CONFIG, seed, path_str(&tokenizer_dir)))
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
