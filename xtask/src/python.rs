//! The Python side: finds (or creates) the virtualenv with torch and transformers, embeds the
//! interpreter through pyo3 and imports reference/gpt2_taps.py.
//!
//! The environment is `$VIRTUAL_ENV`, else `./.venv`. When it lacks the packages, it is created with
//! the interpreter the xtask was built against and `reference/requirements.txt` is installed into
//! it, with pip's own progress on the terminal: one command does the whole job on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::project_root;

/// The interpreter the xtask was built against (and whose libpython it embeds).
fn base_python() -> &'static str {
    option_env!("XTASK_PYTHON").unwrap_or("python3")
}

pub struct Venv {
    pub dir: PathBuf,
}

impl Venv {
    /// `$VIRTUAL_ENV`, else `<repo>/.venv`, with the reference requirements installed.
    pub fn ensure() -> Result<Venv> {
        let dir = match std::env::var_os("VIRTUAL_ENV") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => project_root().join(".venv"),
        };
        let venv = Venv { dir };
        if !venv.has_packages() {
            venv.install()?;
        }
        Ok(venv)
    }

    fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    fn has_packages(&self) -> bool {
        self.imports("torch, transformers, safetensors, numpy, yaml")
    }

    /// Whether the venv's Python can `import <modules>`.
    fn imports(&self, modules: &str) -> bool {
        Command::new(self.python())
            .args(["-c", &format!("import {modules}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn install(&self) -> Result<()> {
        let requirements = project_root().join("reference").join("requirements.txt");
        // torch is nearly all of the install: a venv that has it needs little more
        if !self.imports("torch") {
            ensure_disk_for_install(&self.dir)?;
        }
        if !self.python().exists() {
            eprintln!("creating the Python environment {} with {}", self.dir.display(), base_python());
            let status =
                Command::new(base_python()).args(["-m", "venv"]).arg(&self.dir).status().with_context(|| {
                    format!("cannot run {} to create {}: install Python 3 with venv", base_python(), self.dir.display())
                })?;
            if !status.success() {
                bail!(
                    "`{} -m venv {}` failed ({status}): install python3-venv or set VIRTUAL_ENV to an existing environment",
                    base_python(),
                    self.dir.display()
                );
            }
        }
        eprintln!("installing {} into {} (torch is large: a few minutes)", requirements.display(), self.dir.display());
        // pip's own progress bar on a terminal, none in logs and pipes
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { "on" } else { "off" };
        let status = Command::new(self.python())
            .args(["-m", "pip", "install", "--progress-bar", bar, "-r"])
            .arg(&requirements)
            .status()
            .with_context(|| format!("cannot run pip in {}", self.dir.display()))?;
        if !status.success() {
            bail!(
                "pip could not install {} into {} ({status}): is PyPI reachable, and is the disk not full (see pip's last line)? Offline, set VIRTUAL_ENV to an environment that has torch and transformers",
                requirements.display(),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Runs `f` with the embedded interpreter, the venv's packages and `gpt2_taps` imported.
    pub fn with_reference<R>(&self, f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyModule>) -> Result<R>) -> Result<R> {
        Python::attach(|py| {
            let module = self.import_reference(py).map_err(|e| python_error(py, e))?;
            f(py, &module)
        })
    }

    fn import_reference<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyModule>> {
        let sys = py.import("sys")?;
        let (major, minor): (u32, u32) =
            (sys.getattr("version_info")?.getattr("major")?.extract()?, sys.getattr("version_info")?.getattr("minor")?.extract()?);
        let site_packages = self.dir.join("lib").join(format!("python{major}.{minor}")).join("site-packages");
        if !site_packages.is_dir() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "{} has no {}: the venv was made for another Python than the embedded {major}.{minor}; delete it (or point VIRTUAL_ENV elsewhere) and run again",
                self.dir.display(),
                site_packages.display()
            )));
        }
        py.import("site")?.call_method1("addsitedir", (site_packages.to_string_lossy().to_string(),))?;
        let reference_dir = project_root().join("reference");
        sys.getattr("path")?.call_method1("insert", (0, reference_dir.to_string_lossy().to_string()))?;
        let module = py.import("gpt2_taps")?;
        let env = module.call_method0("environment")?;
        let get = |k: &str| -> PyResult<String> { env.get_item(k)?.extract() };
        // once per command, however often it enters Python
        static PRINTED: AtomicBool = AtomicBool::new(false);
        if !PRINTED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "python {} ({}), torch {}, transformers {}, numpy {}",
                get("python")?,
                self.python().display(),
                get("torch")?,
                get("transformers")?,
                get("numpy")?
            );
        }
        Ok(module)
    }
}

/// What `pip install -r reference/requirements.txt` takes on disk, measured on Linux x86_64: the
/// venv ends at 5.6 GB (torch's CUDA libraries 3.0 GB, torch 1.2 GB, triton 1.0 GB) and pip first
/// downloads ~2.9 GB of wheels into the temporary directory. Checked before pip starts, so that a
/// full disk is one line naming the directory instead of pip's error after minutes of download.
const INSTALL_BYTES_VENV: u64 = 6 << 30;
const INSTALL_BYTES_DOWNLOAD: u64 = 3 << 30;

fn ensure_disk_for_install(venv: &Path) -> Result<()> {
    let temp = std::env::temp_dir();
    let (venv_fs, venv_free) = free_space(venv)?;
    let (temp_fs, temp_free) = free_space(&temp)?;
    let gb = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let venv_needs = if venv_fs == temp_fs { INSTALL_BYTES_VENV + INSTALL_BYTES_DOWNLOAD } else { INSTALL_BYTES_VENV };
    if venv_free < venv_needs {
        bail!(
            "installing torch and transformers into {} needs about {:.0} GB free there, and it has {:.1} GB: free some disk or set VIRTUAL_ENV to an environment that has them",
            venv.display(),
            gb(venv_needs),
            gb(venv_free)
        );
    }
    if venv_fs != temp_fs && temp_free < INSTALL_BYTES_DOWNLOAD {
        bail!(
            "pip downloads about {:.0} GB of wheels into {} (the temporary directory), and it has {:.1} GB free: free some disk or set TMPDIR elsewhere",
            gb(INSTALL_BYTES_DOWNLOAD),
            temp.display(),
            gb(temp_free)
        );
    }
    Ok(())
}

/// The file system (its device id) and the bytes free to an unprivileged user at `path`, or at its
/// nearest existing ancestor when it does not exist yet.
fn free_space(path: &Path) -> Result<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let stat = rustix::fs::statvfs(existing).with_context(|| format!("cannot read the free space of {}", existing.display()))?;
    let metadata = existing.metadata().with_context(|| format!("cannot read {}", existing.display()))?;
    Ok((std::os::unix::fs::MetadataExt::dev(&metadata), stat.f_bavail * stat.f_frsize))
}

/// One line for a Python exception, never a traceback: the message alone for the reference's own
/// input errors (GoldenInputError), else `Type: message` and the file the traceback was saved to.
pub fn python_error(py: Python<'_>, err: PyErr) -> anyhow::Error {
    let type_name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let message = err.value(py).to_string();
    let message = message.lines().next().unwrap_or_default();
    if type_name == "GoldenInputError" {
        return anyhow::anyhow!("{message}");
    }
    match save_traceback(py, &err) {
        Some(log) => anyhow::anyhow!("HF failed: {type_name}: {message} (the Python traceback is in {})", log.display()),
        None => anyhow::anyhow!("HF failed: {type_name}: {message}"),
    }
}

/// Writes the traceback of `err` to target/python-traceback.txt for whoever wants it.
fn save_traceback(py: Python<'_>, err: &PyErr) -> Option<PathBuf> {
    let lines = py.import("traceback").ok()?.call_method1("format_exception", (err.value(py),)).ok()?;
    let text: Vec<String> = lines.extract().ok()?;
    let path = project_root().join("target").join("python-traceback.txt");
    std::fs::create_dir_all(path.parent()?).ok()?;
    std::fs::write(&path, text.concat()).ok()?;
    Some(path)
}

/// `Path` as the `str` Python wants.
pub fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_venv_not_yet_made_is_its_nearest_existing_folder() {
        let dir = tempfile::tempdir().expect("scratch");
        let (device, free) = free_space(dir.path()).expect("statvfs of a folder");
        let not_yet = dir.path().join(".venv").join("lib");
        assert_eq!(free_space(&not_yet).expect("statvfs of its ancestor").0, device);
        assert!(free > 0, "{} reports no free space", dir.path().display());
    }
}
