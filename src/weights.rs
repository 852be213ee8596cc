//! Loads GPT-2 weights from a model directory as HF saves them, checking every name and shape.
//!
//! - **Layouts** ([`ModelFiles::find`]): `model.safetensors`; sharded safetensors
//!   (`model.safetensors.index.json` and the shards its `weight_map` names); `pytorch_model.bin`
//!   (a pickle, which Rust does not read: it is found and named, and `cargo xtask` converts it once
//!   through transformers).
//! - **Names**: HF saves `GPT2LMHeadModel` with a `transformer.` prefix; the original
//!   openai-community files have none. Both load. Every tensor the model needs must be present with
//!   the shape the config implies, and every tensor in the files must be used, except the buffers
//!   and the tied lm_head listed in `IGNORED_SUFFIXES`.
//! - **Dtypes**: float32, float16 and bfloat16, upcast to float32 at load (exactly: every float16
//!   and bfloat16 value is a float32). [`Weights::source_dtype`] says what the files held.
//! - **Memory**: the files are memory-mapped and each tensor is copied out (upcast) and then its
//!   pages are handed back to the kernel, so that the process holds the float32 weights plus about
//!   one tensor, never the weights twice (mapped and owned).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::conv1d::Conv1D;
use crate::model::kernels;
use crate::model::layer_norm::LayerNorm;

/// Tensors a GPT-2 file may carry that the model does not read: the causal-mask buffers older
/// transformers saved, and lm_head.weight, which is tied to wte.
const IGNORED_SUFFIXES: &[&str] = &[".attn.bias", ".attn.masked_bias", "lm_head.weight"];

pub const SAFETENSORS: &str = "model.safetensors";
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
pub const PYTORCH_BIN: &str = "pytorch_model.bin";
pub const PYTORCH_BIN_INDEX: &str = "pytorch_model.bin.index.json";

/// How a model directory stores its weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One `model.safetensors`.
    Safetensors,
    /// `model.safetensors.index.json` and its shards.
    Sharded,
    /// `pytorch_model.bin` (or its sharded index): a pickle, to be converted to safetensors.
    PytorchBin,
}

/// The weight files of a model directory.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub layout: Layout,
    /// The safetensors files to read (the shards, in name order), or the pickle.
    pub files: Vec<PathBuf>,
}

impl ModelFiles {
    /// Finds the weights in `dir`: safetensors first (HF's own preference), then the pickle.
    pub fn find(dir: &Path) -> Result<ModelFiles> {
        let found = |layout, files| Ok(ModelFiles { dir: dir.to_path_buf(), layout, files });
        if dir.join(SAFETENSORS).is_file() {
            return found(Layout::Safetensors, vec![dir.join(SAFETENSORS)]);
        }
        let index = dir.join(SAFETENSORS_INDEX);
        if index.is_file() {
            return found(Layout::Sharded, shards(&index)?);
        }
        for pickle in [PYTORCH_BIN, PYTORCH_BIN_INDEX] {
            if dir.join(pickle).is_file() {
                return found(Layout::PytorchBin, vec![dir.join(pickle)]);
            }
        }
        Err(Error::weights(
            dir,
            format!(
                "no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}: a GPT-2 model directory needs the weights that save_pretrained writes"
            ),
        ))
    }

    /// What the directory holds, for reports: "model.safetensors", "3 safetensors shards", ...
    pub fn describe(&self) -> String {
        match self.layout {
            Layout::Safetensors => SAFETENSORS.to_string(),
            Layout::Sharded => format!("{} safetensors shards ({SAFETENSORS_INDEX})", self.files.len()),
            Layout::PytorchBin => PYTORCH_BIN.to_string(),
        }
    }
}

/// The distinct shard files an index's `weight_map` names, each of which must exist.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::weights(index, format!("not a safetensors index ({e}): re-save the model with save_pretrained")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    match files.iter().find(|f| !f.is_file()) {
        Some(missing) => {
            Err(Error::weights(index, format!("names the shard {}, which is missing: download every shard", missing.display())))
        }
        None if files.is_empty() => Err(Error::weights(index, "its weight_map is empty: re-save the model with save_pretrained")),
        None => Ok(files),
    }
}

/// One memory-mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Where the tensor data starts: after the 8-byte length and the JSON header.
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; the weights are not expected to change while they are read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::weights(path, format!("not a safetensors file ({e}): re-save the model with save_pretrained")))?;
        Ok(Shard { path: path.to_path_buf(), map, data_start: 8 + header_len, metadata })
    }

    /// `info`'s bytes, upcast to float32.
    fn read_f32(&self, full: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let (begin, end) = (self.data_start + info.data_offsets.0, self.data_start + info.data_offsets.1);
        let bytes = &self.map[begin..end];
        let values = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::weights(
                    &self.path,
                    format!(
                        "tensor {full} is {other:?}; the reference reads float32, float16 and bfloat16: save the model with dtype=torch.float32"
                    ),
                ));
            }
        };
        self.release(begin, end - begin);
        Ok(values)
    }

    /// Hands the pages of a tensor that has been copied out back to the kernel, so that the
    /// process does not hold the weights twice. Only a hint: on failure the pages just stay.
    #[cfg(unix)]
    fn release(&self, offset: usize, len: usize) {
        // SAFETY: the mapping is a read-only shared map of a file: MADV_DONTNEED drops its pages
        // from this process, and any later read (the neighbouring tensor sharing a page) faults
        // them in again from the page cache, unchanged.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }

    #[cfg(not(unix))]
    fn release(&self, _offset: usize, _len: usize) {}
}

/// The safetensors files of a model directory, open, and the names read from them so far.
pub struct Weights {
    shards: Vec<Shard>,
    /// every tensor's full name -> its shard
    index: BTreeMap<String, usize>,
    prefix: &'static str,
    used: BTreeSet<String>,
}

impl Weights {
    /// Opens the safetensors files of `files` (headers only; no tensor is read yet).
    pub fn open(files: &ModelFiles) -> Result<Weights> {
        if files.layout == Layout::PytorchBin {
            return Err(Error::weights(
                &files.files[0],
                "a PyTorch pickle, which the reference does not read: `cargo xtask validate` converts it once to model.safetensors, or re-save with save_pretrained",
            ));
        }
        let shards = files.files.iter().map(|path| Shard::open(path)).collect::<Result<Vec<_>>>()?;
        let mut index = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.offset_keys() {
                if let Some(other) = index.insert(name.clone(), i) {
                    return Err(Error::weights(
                        &shard.path,
                        format!("tensor {name} is also in {}: the shards overlap; re-save the model", shards[other].path.display()),
                    ));
                }
            }
        }
        let prefix = if index.keys().any(|n| n.starts_with("transformer.")) { "transformer." } else { "" };
        Ok(Weights { shards, index, prefix, used: BTreeSet::new() })
    }

    /// The files' dtype(s), as torch names them: "float32", "float16", "bfloat16" (or several).
    pub fn source_dtype(&self) -> String {
        let dtypes: BTreeSet<String> = self
            .index
            .iter()
            .filter_map(|(name, &i)| self.shards[i].metadata.info(name))
            .map(|info| match info.dtype {
                Dtype::F32 => "float32".to_string(),
                Dtype::F16 => "float16".to_string(),
                Dtype::BF16 => "bfloat16".to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        dtypes.into_iter().collect::<Vec<_>>().join("+")
    }

    /// The file a name lives in, for messages; the first shard for a missing one.
    fn path_of(&self, full: &str) -> &Path {
        &self.shards[self.index.get(full).copied().unwrap_or(0)].path
    }

    /// Checks every tensor GPT-2 needs for `config` against the headers, without reading any data:
    /// present, of its shape, of a readable dtype. Then nothing else is in the files.
    pub fn check(&self, config: &Config) -> Result<()> {
        for (name, shape) in tensor_shapes(config) {
            let (full, info) = self.info(&name, &shape)?;
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(Error::weights(self.path_of(&full), format!("tensor {full} is {:?}: save the model as float32", info.dtype)));
            }
        }
        let needed: BTreeSet<String> = tensor_shapes(config).into_iter().map(|(name, _)| format!("{}{name}", self.prefix)).collect();
        self.no_extra_tensors(&needed)
    }

    /// The header entry of `name` (without the `transformer.` prefix), which must have `shape`.
    fn info(&self, name: &str, shape: &[usize]) -> Result<(String, &TensorInfo)> {
        let full = format!("{}{name}", self.prefix);
        let info = self.index.get(&full).and_then(|&i| self.shards[i].metadata.info(&full)).ok_or_else(|| {
            Error::weights(
                self.path_of(&full),
                format!("tensor {full} is missing: the file does not hold a complete GPT-2 for this config.json"),
            )
        })?;
        if info.shape != shape {
            return Err(Error::weights(
                self.path_of(&full),
                format!("tensor {full} has shape {:?}, config.json implies {shape:?}", info.shape),
            ));
        }
        Ok((full, info))
    }

    /// The tensor `name` (without the `transformer.` prefix) as float32; it must have `shape`.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let (full, info) = self.info(name, shape)?;
        let shard = &self.shards[self.index[&full]];
        let values = shard.read_f32(&full, info)?;
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| Error::weights(&shard.path, format!("tensor {full}: {e}")))?;
        self.used.insert(full);
        Ok(array)
    }

    pub fn vector(&mut self, name: &str, len: usize) -> Result<Array1<f32>> {
        self.tensor(name, &[len])?.into_dimensionality().map_err(|e| Error::Input(format!("tensor {name}: {e}")))
    }

    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        self.tensor(name, &[rows, cols])?.into_dimensionality().map_err(|e| Error::Input(format!("tensor {name}: {e}")))
    }

    /// `name.weight` [n_in, n_out] and `name.bias` [n_out]. HF's Conv1D stores the weight [in, out]
    /// (the transpose of nn.Linear); this is the one place that reads that layout, and it hands
    /// [`Conv1D`] the weight transposed to [out, in], its rows padded as the products read them
    /// fastest ([`kernels::with_padded_rows`]).
    pub fn conv1d(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Conv1D> {
        let stored = self.matrix(&format!("{name}.weight"), n_in, n_out)?; // [in, out]
        let weight = kernels::with_padded_rows(stored.t()); // [out, in]
        Ok(Conv1D { weight, bias: self.vector(&format!("{name}.bias"), n_out)? })
    }

    /// `name.weight` and `name.bias`, both [n].
    pub fn layer_norm(&mut self, name: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: self.vector(&format!("{name}.weight"), n)?, bias: self.vector(&format!("{name}.bias"), n)?, eps })
    }

    /// Fails on any tensor in the files that was not read and is not a known ignorable one.
    pub fn finish(self) -> Result<()> {
        self.no_extra_tensors(&self.used)
    }

    fn no_extra_tensors(&self, used: &BTreeSet<String>) -> Result<()> {
        let unused: Vec<&String> =
            self.index.keys().filter(|n| !used.contains(*n) && !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s))).collect();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(Error::weights(
                self.path_of(first),
                format!("{} tensors are not part of GPT-2 for this config.json (first: {first}): is n_layer right?", unused.len()),
            )),
        }
    }
}

/// Every tensor GPT-2 reads for `config`, without the `transformer.` prefix, with its stored shape.
pub fn tensor_shapes(config: &Config) -> Vec<(String, Vec<usize>)> {
    let (c, inner) = (config.n_embd, config.inner_dim());
    let mut shapes = vec![("wte.weight".to_string(), vec![config.vocab_size, c]), ("wpe.weight".to_string(), vec![config.n_positions, c])];
    let layer_norm = |name: String| [(format!("{name}.weight"), vec![c]), (format!("{name}.bias"), vec![c])];
    let conv1d =
        |name: String, n_in: usize, n_out: usize| [(format!("{name}.weight"), vec![n_in, n_out]), (format!("{name}.bias"), vec![n_out])];
    for i in 0..config.n_layer {
        shapes.extend(layer_norm(format!("h.{i}.ln_1")));
        shapes.extend(conv1d(format!("h.{i}.attn.c_attn"), c, 3 * c));
        shapes.extend(conv1d(format!("h.{i}.attn.c_proj"), c, c));
        shapes.extend(layer_norm(format!("h.{i}.ln_2")));
        shapes.extend(conv1d(format!("h.{i}.mlp.c_fc"), c, inner));
        shapes.extend(conv1d(format!("h.{i}.mlp.c_proj"), inner, c));
    }
    shapes.extend(layer_norm("ln_f".to_string()));
    shapes
}
