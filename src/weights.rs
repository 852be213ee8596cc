//! Loads GPT-2 weights from model.safetensors (memory-mapped), checking every name and shape.
//!
//! HF saves `GPT2LMHeadModel` with a `transformer.` prefix; the original openai-community files
//! have none. Both load. Every tensor the model needs must be present with the shape the config
//! implies, and every tensor in the file must be used, except the buffers and the tied lm_head
//! listed in `IGNORED_SUFFIXES`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::conv1d::Conv1D;
use crate::model::layer_norm::LayerNorm;

/// Tensors a GPT-2 file may carry that the model does not read: the causal-mask buffers older
/// transformers saved, and lm_head.weight, which is tied to wte.
const IGNORED_SUFFIXES: &[&str] = &[".attn.bias", ".attn.masked_bias", "lm_head.weight"];

/// An open safetensors file and the names read from it so far.
pub struct WeightFile<'a> {
    path: PathBuf,
    tensors: SafeTensors<'a>,
    prefix: &'static str,
    used: BTreeSet<String>,
}

impl<'a> WeightFile<'a> {
    pub fn parse(path: &Path, bytes: &'a [u8]) -> Result<Self> {
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::weights(path, format!("not a safetensors file ({e}): re-save the model with save_pretrained")))?;
        let prefix = if tensors.names().iter().any(|n| n.starts_with("transformer.")) { "transformer." } else { "" };
        Ok(WeightFile { path: path.to_path_buf(), tensors, prefix, used: BTreeSet::new() })
    }

    /// The f32 tensor `name` (without the `transformer.` prefix), which must have `shape`.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let full = format!("{}{name}", self.prefix);
        let view = self.tensors.tensor(&full).map_err(|_| {
            Error::weights(&self.path, format!("tensor {full} is missing: the file does not hold a complete GPT-2 for this config.json"))
        })?;
        if view.shape() != shape {
            return Err(Error::weights(&self.path, format!("tensor {full} has shape {:?}, config.json implies {shape:?}", view.shape())));
        }
        if view.dtype() != Dtype::F32 {
            return Err(Error::weights(
                &self.path,
                format!("tensor {full} is {:?}; the reference reads float32 only: save the model with dtype=torch.float32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        self.used.insert(full.clone());
        ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| Error::weights(&self.path, format!("tensor {full}: {e}")))
    }

    pub fn vector(&mut self, name: &str, len: usize) -> Result<Array1<f32>> {
        self.tensor(name, &[len])?.into_dimensionality().map_err(|e| Error::weights(&self.path, e.to_string()))
    }

    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        self.tensor(name, &[rows, cols])?.into_dimensionality().map_err(|e| Error::weights(&self.path, e.to_string()))
    }

    /// `name.weight` [n_in, n_out] and `name.bias` [n_out]. HF's Conv1D stores the weight [in, out]
    /// (the transpose of nn.Linear); this is the one place that reads that layout, and it hands
    /// [`Conv1D`] the weight transposed to [out, in].
    pub fn conv1d(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Conv1D> {
        let stored = self.matrix(&format!("{name}.weight"), n_in, n_out)?; // [in, out]
        let weight = stored.reversed_axes().as_standard_layout().into_owned(); // [out, in]
        Ok(Conv1D { weight, bias: self.vector(&format!("{name}.bias"), n_out)? })
    }

    /// `name.weight` and `name.bias`, both [n].
    pub fn layer_norm(&mut self, name: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: self.vector(&format!("{name}.weight"), n)?, bias: self.vector(&format!("{name}.bias"), n)?, eps })
    }

    /// Fails on any tensor in the file that was not read and is not a known ignorable one.
    pub fn finish(self) -> Result<()> {
        let unused: Vec<String> = self
            .tensors
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(*n) && !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
            .map(str::to_string)
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(Error::weights(
                &self.path,
                format!("{} tensors are not part of GPT-2 for this config.json (first: {first}): is n_layer right?", unused.len()),
            )),
        }
    }
}

/// Memory-maps `path` and hands its bytes to `read`.
pub fn with_mapped_file<T>(path: &Path, read: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::weights(
            path,
            format!("cannot open it ({e}): a GPT-2 model directory needs the model.safetensors that save_pretrained writes"),
        )
    })?;
    // SAFETY: the map is read-only and lives only for this call; the file is not expected to be
    // modified while the weights are copied out of it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    read(&map)
}
