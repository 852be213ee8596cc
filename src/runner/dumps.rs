//! The dump protocol (CHECKPOINTS.md): a port in any language writes one `.npy` per tensor, named
//! exactly like the golden it is compared with (`07_block.l02.output.npy`); the chained run's
//! files at the top of its directory, isolated runs' outputs under `isolated/`. Any subset is
//! allowed. A port split into pipeline stages writes one directory per stage; [`read`] merges them.
//!
//! [`read`] turns directories into [`Observations`] (a file that is absent is simply not observed);
//! [`write`] is the other direction, for the reference's own dumps.
//!
//! A directory with no cache state at all (`03_kv_cache.lNN.stepS.*`) is a port without a KV cache:
//! those tensors are pending, not missing.
//!
//! Bad input is an error naming the file: an unknown file name, a shape or dtype other than the
//! golden's, NaN.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};

use super::{Missing, Observations, Observed, Value};
use crate::catalog::{DType, Dim, Role, TensorKey};
use crate::error::{Error, Result};
use crate::goldens::GoldenSet;
use crate::tolerances::Mode;

/// Where isolated-mode outputs go inside a candidate directory.
pub const ISOLATED_DIR: &str = "isolated";

fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {message}", path.display()))
}

/// Reads a candidate's directories (one, or one per pipeline stage; a later stage's file replaces
/// an earlier one's of the same name) against golden set `set`.
pub fn read(stages: &[PathBuf], set: &GoldenSet) -> Result<Observations> {
    let expected: BTreeMap<String, (TensorKey, Vec<usize>)> =
        set.manifest.dims().all_tensors().into_iter().map(|(k, shape)| (k.stem(), (k, shape))).collect();
    let mut obs = Observations::default();
    for stage in stages {
        if !stage.is_dir() {
            return Err(bad(stage, "no such candidate directory: pass the directory the port dumped its .npy files into"));
        }
        for (mode, dir) in [(Mode::Chained, stage.clone()), (Mode::Isolated, stage.join(ISOLATED_DIR))] {
            if dir.is_dir() {
                obs.merge(read_dir(&dir, mode, &expected)?);
            }
        }
    }
    if obs.seen.is_empty() {
        let dirs: Vec<String> = stages.iter().map(|s| s.display().to_string()).collect();
        return Err(Error::Input(format!(
            "{}: no .npy dumps of this golden set's tensors: is it the directory the port wrote into?",
            dirs.join(",")
        )));
    }
    // A port with no KV cache dumps no cache state at all: 03's keys and values are then pending,
    // as for a Rust port without `forward_cached`. Some states but not all is a port that forgot.
    let cache: Vec<TensorKey> = expected.values().map(|(k, _)| *k).filter(|k| k.step.is_some()).collect();
    if !cache.iter().any(|k| obs.get(Mode::Chained, *k).is_some()) {
        let no_cache = Missing::NotProvided("no 03 cache state in the dumps: the port has no KV cache".into());
        obs.missing_unless_seen(Mode::Chained, cache, &no_cache);
    }
    Ok(obs)
}

fn read_dir(dir: &Path, mode: Mode, expected: &BTreeMap<String, (TensorKey, Vec<usize>)>) -> Result<Observations> {
    let mut obs = Observations::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, format!("cannot list it ({e})")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    for path in files {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let Some((key, shape)) = expected.get(&stem) else {
            return Err(bad(
                &path,
                format!(
                    "not a tensor of this golden set ({}): name dumps exactly like the goldens, e.g. 07_block.l00.output.npy",
                    closest(&stem, expected)
                ),
            ));
        };
        if key.spec().role != Role::Output {
            continue; // a golden input or HF's evidence: nothing a port is judged on
        }
        obs.seen.insert((mode, *key), Observed::Value { value: read_value(&path, *key, shape)?, derived: None });
    }
    Ok(obs)
}

/// The expected stem nearest to `stem` (edit distance), for the error message.
fn closest(stem: &str, expected: &BTreeMap<String, (TensorKey, Vec<usize>)>) -> String {
    expected.keys().min_by_key(|s| strsim::levenshtein(s, stem)).map_or(String::new(), |s| format!("did you mean {s}.npy?"))
}

fn read_value(path: &Path, key: TensorKey, golden_shape: &[usize]) -> Result<Value> {
    let file = || std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open it ({e})")));
    let (value, shape) = match key.spec().dtype {
        DType::F32 => {
            let array = match ArrayD::<f32>::read_npy(file()?) {
                Err(ReadNpyError::WrongDescriptor(_)) => ArrayD::<f64>::read_npy(file()?).map(|a| a.mapv(|v| v as f32)),
                other => other,
            }
            .map_err(|e| bad(path, format!("not a float32 or float64 .npy file ({e})")))?;
            if let Some((index, _)) = array.indexed_iter().find(|(_, v)| v.is_nan()) {
                return Err(bad(path, format!("NaN at {:?}: the port produced no number there", ndarray::Dimension::slice(&index))));
            }
            let shape = array.shape().to_vec();
            (Value::F32(array), shape)
        }
        DType::I64 => {
            let ids = read_ids(path)?;
            let shape = ids.shape().to_vec();
            let ids = ids
                .iter()
                .map(|&v| u32::try_from(v).map_err(|_| bad(path, format!("{v} is not a token id"))))
                .collect::<Result<Vec<u32>>>()?;
            (Value::Ids(ids), shape)
        }
    };
    let batched = key.spec().shape.first() == Some(&Dim::B);
    let single = if batched { &golden_shape[1..] } else { golden_shape };
    if shape != golden_shape && shape != single {
        return Err(bad(path, format!("shape {shape:?}, the golden {key} has {golden_shape:?}")));
    }
    Ok(value)
}

fn read_ids(path: &Path) -> Result<ArrayD<i64>> {
    let file = || std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open it ({e})")));
    let not_ids = |e: ReadNpyError| bad(path, format!("not an integer .npy file of token ids ({e})"));
    match ArrayD::<i64>::read_npy(file()?) {
        Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<i32>::read_npy(file()?) {
            Err(ReadNpyError::WrongDescriptor(_)) => ArrayD::<u32>::read_npy(file()?).map(|a| a.mapv(i64::from)).map_err(not_ids),
            other => other.map(|a| a.mapv(i64::from)).map_err(not_ids),
        },
        other => other.map_err(not_ids),
    }
}

/// Writes every value of `obs` in the protocol: chained under `dir`, isolated under
/// `dir/isolated`, each with the golden's shape (batch axis included). Returns how many files.
pub fn write(obs: &Observations, set: &GoldenSet, dir: &Path) -> Result<usize> {
    let shapes: BTreeMap<TensorKey, Vec<usize>> = set.manifest.dims().all_tensors().into_iter().collect();
    let mut written = 0;
    for ((mode, key), seen) in &obs.seen {
        let (Observed::Value { value, .. }, Some(shape)) = (seen, shapes.get(key)) else { continue };
        let dir = match mode {
            Mode::Chained => dir.to_path_buf(),
            Mode::Isolated => dir.join(ISOLATED_DIR),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(key.file_name());
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let written_ok = match value {
            Value::F32(a) => {
                let a = if a.ndim() + 1 == shape.len() { a.view().insert_axis(Axis(0)) } else { a.view() };
                a.write_npy(std::io::BufWriter::new(file))
            }
            Value::Ids(ids) => ArrayD::from_shape_vec(shape.as_slice(), ids.iter().map(|&v| i64::from(v)).collect())
                .map_err(|e| bad(&path, e))?
                .write_npy(std::io::BufWriter::new(file)),
        };
        written_ok.map_err(|e| bad(&path, format!("cannot write it ({e})")))?;
        written += 1;
    }
    Ok(written)
}
