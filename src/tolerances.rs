//! fixtures/tolerances.yaml: how far from the truth each checkpoint may be, as a multiple of
//! HuggingFace float32's own distance there ([`Limit`]: `factor × HF's error + floor`).
//!
//! One entry per checkpoint label (`07_block`) with `factor` and `floor`, optionally an
//! `isolated:` limit and per-tensor overrides under `tensors:`. `exact: true` marks checkpoints
//! whose outputs are token ids; integer tensors are always compared exactly. Every number here goes
//! with the measured errors that justify it in CHECKPOINTS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::{Checkpoint, DType, Role, TensorKey};
use crate::compare::{Limit, Scale};
use crate::error::{Error, Result};

/// How a checkpoint is driven: from its golden input alone, or by the port's whole forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The golden input of the checkpoint is fed to that one component.
    Isolated,
    /// The port runs from token ids and its own tap is compared.
    Chained,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLimits {
    #[serde(default)]
    factor: f64,
    #[serde(default)]
    floor: f64,
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    isolated: Option<Limit>,
    #[serde(default)]
    tensors: BTreeMap<String, Limit>,
}

/// The precision a port computes in. A port in bfloat16 or float16 is judged against the same
/// truth, in units of HF's own error at that precision (measured at extraction, kept in the
/// manifest), instead of HF float32's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const LOW: [Precision; 2] = [Precision::Bf16, Precision::F16];

    /// `f32`, `bf16`, `f16`: the names in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    pub fn parse(text: &str) -> Result<Precision> {
        [Precision::F32, Precision::Bf16, Precision::F16]
            .into_iter()
            .find(|p| p.name() == text.trim())
            .ok_or_else(|| Error::Input(format!("precision {text:?}: write f32, bf16 or f16")))
    }
}

#[derive(Clone, Debug)]
pub struct Tolerances {
    path: PathBuf,
    checkpoints: BTreeMap<String, CheckpointLimits>,
    precision: Precision,
}

impl Tolerances {
    /// Reads the file and checks that it has an entry for every checkpoint and no other.
    pub fn load(path: &Path) -> Result<Tolerances> {
        let err = |message: String| Error::Tolerances { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let checkpoints: BTreeMap<String, CheckpointLimits> = serde_yaml::from_str(&text).map_err(|e| err(format!("malformed ({e})")))?;
        for checkpoint in Checkpoint::ALL {
            let entry = checkpoints.get(&checkpoint.label()).ok_or_else(|| err(format!("no entry for {}", checkpoint.label())))?;
            let integer_only = checkpoint.tensors().iter().filter(|t| t.role == Role::Output).all(|t| t.dtype == DType::I64);
            if integer_only && !entry.exact {
                return Err(err(format!("{} compares token ids: it must say `exact: true`", checkpoint.label())));
            }
            if !integer_only && entry.factor <= 0.0 && entry.floor <= 0.0 {
                return Err(err(format!("{} needs a positive factor or floor", checkpoint.label())));
            }
            if let Some(name) = entry.tensors.keys().find(|name| checkpoint.spec(name).is_none()) {
                return Err(err(format!("{} has no tensor {name:?}", checkpoint.label())));
            }
        }
        if let Some(extra) = checkpoints.keys().find(|k| !Checkpoint::ALL.iter().any(|c| &c.label() == *k)) {
            return Err(err(format!("{extra:?} is not a checkpoint (expected 00_embeddings .. 12_generation)")));
        }
        Ok(Tolerances { path: path.to_path_buf(), checkpoints, precision: Precision::F32 })
    }

    /// The same limits, in units of HF's own error at `precision`.
    pub fn with_precision(self, precision: Precision) -> Tolerances {
        Tolerances { precision, ..self }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limit of one float tensor in one mode: the isolated override, then a per-tensor
    /// entry, then the checkpoint's factor and floor.
    pub fn limit(&self, key: TensorKey, mode: Mode) -> Limit {
        let Some(entry) = self.checkpoints.get(&key.checkpoint.label()) else { return Limit { factor: 0.0, floor: 0.0 } };
        if let (Mode::Isolated, Some(isolated)) = (mode, entry.isolated) {
            return isolated;
        }
        entry.tensors.get(key.name).copied().unwrap_or(Limit { factor: entry.factor, floor: entry.floor })
    }

    /// The scale a tensor's errors are measured on: probabilities (11) against themselves, every
    /// other float tensor against its row's RMS.
    pub fn scale(key: TensorKey) -> Scale {
        if key.checkpoint == Checkpoint::Softmax { Scale::Probability } else { Scale::RowRms }
    }
}
