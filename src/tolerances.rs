//! fixtures/tolerances.yaml: how close each checkpoint must be to HF.
//!
//! One entry per checkpoint label (`07_block`), each with atol/rtol, optionally a tighter
//! `isolated:` tolerance and per-tensor overrides under `tensors:`. `exact: true` marks checkpoints
//! whose outputs are token ids; integer tensors are always compared exactly. Every change to a
//! number here goes with the measured errors that justify it in CHECKPOINTS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::{Checkpoint, DType, TensorKey};
use crate::compare::Tolerance;
use crate::error::{Error, Result};

/// How a checkpoint is driven: from its golden input alone, or by the port's whole forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The golden input of the checkpoint is fed to that one component.
    Isolated,
    /// The candidate runs from token ids and its own tap is compared.
    Chained,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointTolerance {
    #[serde(default)]
    atol: f64,
    #[serde(default)]
    rtol: f64,
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    isolated: Option<Tolerance>,
    #[serde(default)]
    tensors: BTreeMap<String, Tolerance>,
}

#[derive(Clone, Debug)]
pub struct Tolerances {
    path: PathBuf,
    checkpoints: BTreeMap<String, CheckpointTolerance>,
}

impl Tolerances {
    /// Reads the file and checks that it has an entry for every checkpoint and no other.
    pub fn load(path: &Path) -> Result<Tolerances> {
        let err = |message: String| Error::Tolerances { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let checkpoints: BTreeMap<String, CheckpointTolerance> =
            serde_yaml::from_str(&text).map_err(|e| err(format!("malformed ({e})")))?;
        for checkpoint in Checkpoint::ALL {
            let entry = checkpoints.get(&checkpoint.label()).ok_or_else(|| err(format!("no entry for {}", checkpoint.label())))?;
            let integer_only =
                checkpoint.tensors().iter().filter(|t| t.role == crate::catalog::Role::Output).all(|t| t.dtype == DType::I64);
            if integer_only && !entry.exact {
                return Err(err(format!("{} compares token ids: it must say `exact: true`", checkpoint.label())));
            }
            for name in entry.tensors.keys() {
                if checkpoint.spec(name).is_none() {
                    return Err(err(format!("{} has no tensor {name:?}", checkpoint.label())));
                }
            }
        }
        if let Some(extra) = checkpoints.keys().find(|k| !Checkpoint::ALL.iter().any(|c| &c.label() == *k)) {
            return Err(err(format!("{extra:?} is not a checkpoint (expected 00_embeddings .. 12_generation)")));
        }
        Ok(Tolerances { path: path.to_path_buf(), checkpoints })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tolerance for one tensor in one mode: integer tensors are exact; then the isolated
    /// override, then a per-tensor entry, then the checkpoint's atol/rtol.
    pub fn for_tensor(&self, key: TensorKey, mode: Mode) -> Tolerance {
        let Some(entry) = self.checkpoints.get(&key.checkpoint.label()) else { return Tolerance::EXACT };
        if entry.exact || key.spec().dtype == DType::I64 {
            return Tolerance::EXACT;
        }
        if let (Mode::Isolated, Some(isolated)) = (mode, entry.isolated) {
            return isolated;
        }
        entry.tensors.get(key.name).copied().unwrap_or(Tolerance { atol: entry.atol, rtol: entry.rtol })
    }

    /// The logits tolerance: an argmax whose top-1/top-2 margin is below it is ambiguous.
    pub fn logits(&self) -> f64 {
        self.checkpoints.get(&Checkpoint::Logits.label()).map_or(0.0, |e| e.atol)
    }
}
