//! Golden sets: HF's tensors for one model and one prompt, as `cargo xtask extract-goldens` writes
//! them under `fixtures/goldens/<model>/<prompt-slug>/`.
//!
//! `manifest.json` lists every tensor (checkpoint, layer, step, name, shape, dtype, file) with the
//! provenance (model and config, prompt and ids, HF's generation, library versions). Reading a
//! tensor checks it against the manifest: a missing or truncated file, or a dtype or shape that
//! disagrees, is an error that names the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use serde::{Deserialize, Serialize};

use crate::catalog::{Checkpoint, DType, Dims, TensorKey};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tolerances::Mode;

/// Bumped whenever the layout or the meaning of a golden changes.
pub const FORMAT_VERSION: u32 = 3;

pub const MANIFEST: &str = "manifest.json";

/// Where a set keeps the truth: `truth/<file>` for chained mode, `truth/isolated/<file>` for
/// isolated mode (HF's float64 modules fed the float32 goldens), as float32.
pub const TRUTH_DIR: &str = "truth";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model: ModelInfo,
    pub prompt: PromptInfo,
    pub generation: GenerationInfo,
    pub environment: Environment,
    pub tensors: Vec<TensorEntry>,
    /// HF's own error at a lower precision ("bf16", "f16"), by `"<mode>/<checkpoint>.<tensor>"`
    /// (`chained/07_block.output`): the worst over layers and steps, on the comparison's scale.
    /// A port judged with that precision profile is held to a multiple of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub precision_noise: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The directory name under fixtures/goldens.
    pub name: String,
    /// What was passed to from_pretrained: a local directory (relative to the repository) or a hub id.
    pub source: String,
    pub config: Config,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptInfo {
    pub text: String,
    pub slug: String,
    pub ids: Vec<u32>,
}

/// What HF generated, and with which settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationInfo {
    /// Greedy tokens generated for checkpoint 12.
    pub new_tokens: usize,
    /// Single-token cache steps for checkpoint 03.
    pub decode_steps: usize,
    /// The second softmax of checkpoint 11: temperature, then top-k.
    pub temperature: f32,
    pub top_k: usize,
    /// HF's greedy continuation (ids and decoded text), also in `12_generation.new_ids.npy`.
    pub new_ids: Vec<u32>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub python: String,
    pub torch: String,
    pub transformers: String,
    pub numpy: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub checkpoint: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub file: String,
}

impl Manifest {
    /// The sizes that resolve the catalog's shapes for this set.
    pub fn dims(&self) -> Dims {
        let c = &self.model.config;
        Dims {
            n_layer: c.n_layer,
            prompt_tokens: self.prompt.ids.len(),
            n_embd: c.n_embd,
            n_head: c.n_head,
            vocab_size: c.vocab_size,
            inner: c.inner_dim(),
            decode_steps: self.generation.decode_steps,
            new_tokens: self.generation.new_tokens,
            top_k: self.generation.top_k,
        }
    }

    /// The manifest as written to disk: pretty JSON, readable by any language's standard library.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// `tiny-gpt2/hello`
    pub fn set_name(&self) -> String {
        format!("{}/{}", self.model.name, self.prompt.slug)
    }
}

impl TensorEntry {
    /// The catalog key this entry stands for, if the catalog has it.
    pub fn key(&self) -> Option<TensorKey> {
        TensorKey::find(Checkpoint::from_id(self.checkpoint)?, self.layer, self.step, &self.name)
    }
}

/// One golden set on disk: a directory with manifest.json and its .npy files.
#[derive(Clone, Debug)]
pub struct GoldenSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl GoldenSet {
    /// Reads `<dir>/manifest.json` and checks that it lists exactly the catalog's tensors.
    pub fn open(dir: &Path) -> Result<GoldenSet> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::golden(&path, format!("cannot read the manifest ({e}): run `cargo xtask extract-goldens`")))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::golden(&path, format!("malformed manifest ({e}): re-run `cargo xtask extract-goldens`")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::golden(
                &path,
                format!(
                    "format_version {} but this crate reads {FORMAT_VERSION}: re-run `cargo xtask extract-goldens`",
                    manifest.format_version
                ),
            ));
        }
        let set = GoldenSet { dir: dir.to_path_buf(), manifest };
        set.check_against_catalog()?;
        Ok(set)
    }

    /// Every golden set under `root` (`<root>/<model>/<slug>/manifest.json`), sorted by path.
    pub fn discover(root: &Path) -> Result<Vec<GoldenSet>> {
        let mut dirs = Vec::new();
        for model in read_dir_sorted(root)? {
            for set in read_dir_sorted(&model)? {
                if set.join(MANIFEST).is_file() {
                    dirs.push(set);
                }
            }
        }
        dirs.iter().map(|d| GoldenSet::open(d)).collect()
    }

    fn check_against_catalog(&self) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        let expected = self.manifest.dims().all_tensors();
        if expected.len() != self.manifest.tensors.len() {
            return Err(Error::golden(
                &path,
                format!(
                    "lists {} tensors, the checkpoint catalog expects {}: re-run `cargo xtask extract-goldens`",
                    self.manifest.tensors.len(),
                    expected.len()
                ),
            ));
        }
        for (key, shape) in expected {
            let entry = self.entry(key)?;
            if entry.shape != shape || entry.dtype != key.spec().dtype || entry.file != key.file_name() {
                return Err(Error::golden(
                    &path,
                    format!(
                        "{key}: the manifest says {:?} {:?} in {}, the catalog expects {shape:?}: re-run `cargo xtask extract-goldens`",
                        entry.dtype, entry.shape, entry.file
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn name(&self) -> String {
        self.manifest.set_name()
    }

    pub fn entry(&self, key: TensorKey) -> Result<&TensorEntry> {
        self.manifest
            .tensors
            .iter()
            .find(|e| e.key() == Some(key))
            .ok_or_else(|| Error::golden(&self.dir.join(MANIFEST), format!("{key} is not listed: re-run `cargo xtask extract-goldens`")))
    }

    /// A float tensor, checked against its manifest entry.
    pub fn f32(&self, key: TensorKey) -> Result<ArrayD<f32>> {
        self.read(key, DType::F32)
    }

    /// An integer tensor (token ids), checked against its manifest entry.
    pub fn i64(&self, key: TensorKey) -> Result<ArrayD<i64>> {
        self.read(key, DType::I64)
    }

    /// The float64 truth of a float output in `mode` (stored as float32), checked against the
    /// golden's manifest entry.
    pub fn truth(&self, key: TensorKey, mode: Mode) -> Result<ArrayD<f32>> {
        let entry = self.entry(key)?;
        let dir = match mode {
            Mode::Chained => self.dir.join(TRUTH_DIR),
            Mode::Isolated => self.dir.join(TRUTH_DIR).join("isolated"),
        };
        read_checked(&dir.join(&entry.file), entry, DType::F32)
    }

    /// A float tensor without the leading batch axis (single-sequence, as ports see it), as `D`.
    pub fn single<D: ndarray::Dimension>(&self, key: TensorKey) -> Result<ndarray::Array<f32, D>> {
        let array = self.f32(key)?;
        let array =
            if key.spec().shape.first() == Some(&crate::catalog::Dim::B) { array.index_axis_move(ndarray::Axis(0), 0) } else { array };
        array.into_dimensionality::<D>().map_err(|e| Error::golden(&self.dir.join(key.file_name()), e.to_string()))
    }

    /// Token ids as u32, for feeding a model.
    pub fn ids(&self, key: TensorKey) -> Result<Vec<u32>> {
        let path = self.dir.join(&self.entry(key)?.file);
        self.i64(key)?.iter().map(|&v| u32::try_from(v).map_err(|_| Error::golden(&path, format!("{v} is not a token id")))).collect()
    }

    fn read<T: ndarray_npy::ReadableElement>(&self, key: TensorKey, dtype: DType) -> Result<ArrayD<T>> {
        let entry = self.entry(key)?;
        let path = self.dir.join(&entry.file);
        if entry.dtype != dtype {
            return Err(Error::golden(&path, format!("the manifest says {:?}, {key} is read as {dtype:?}", entry.dtype)));
        }
        read_checked(&path, entry, dtype)
    }
}

/// A .npy file whose shape must be its manifest entry's.
fn read_checked<T: ndarray_npy::ReadableElement>(path: &Path, entry: &TensorEntry, dtype: DType) -> Result<ArrayD<T>> {
    let array = read_npy::<T>(path, dtype)?;
    if array.shape() != entry.shape.as_slice() {
        return Err(Error::golden(path, format!("shape {:?} disagrees with the manifest's {:?}", array.shape(), entry.shape)));
    }
    Ok(array)
}

fn read_npy<T: ndarray_npy::ReadableElement>(path: &Path, dtype: DType) -> Result<ArrayD<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::golden(path, format!("cannot open it ({e}): re-run `cargo xtask extract-goldens`")))?;
    ArrayD::<T>::read_npy(std::io::BufReader::new(file)).map_err(|e| {
        Error::golden(path, format!("not a readable {dtype:?} .npy file ({e}): it may be truncated; re-run `cargo xtask extract-goldens`"))
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::golden(dir, format!("cannot list it ({e}): run `cargo xtask extract-goldens`")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    Ok(entries)
}
