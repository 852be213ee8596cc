//! The crate's one error type. Every variant names the file, checkpoint or argument it is about and
//! says what to do, in one line, so that a failing run never ends in a panic from a dependency.

use std::path::{Path, PathBuf};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config.json that is missing, malformed or asks for something this crate does not implement.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A safetensors file with a missing, extra or misshaped tensor.
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A golden file or manifest that is missing, truncated or disagrees with the manifest.
    #[error("{path}: {message}")]
    Golden { path: PathBuf, message: String },
    /// fixtures/tolerances.yaml that is malformed or incomplete.
    #[error("{path}: {message}")]
    Tolerances { path: PathBuf, message: String },
    /// A tokenizer.json that cannot be loaded or used.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A bad argument to a public function (an empty prompt, a layer that does not exist, ...).
    #[error("{0}")]
    Input(String),
    /// NaN or Inf where a finite number belongs.
    #[error("{0}")]
    NonFinite(String),
    /// A port does not provide this optional method: its checks are pending, not failed.
    #[error("not provided by the port: {0}")]
    NotProvided(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub fn golden(path: &Path, message: impl Into<String>) -> Self {
        Error::Golden { path: path.to_path_buf(), message: message.into() }
    }

    pub fn weights(path: &Path, message: impl Into<String>) -> Self {
        Error::Weights { path: path.to_path_buf(), message: message.into() }
    }

    pub fn config(path: &Path, message: impl Into<String>) -> Self {
        Error::Config { path: path.to_path_buf(), message: message.into() }
    }
}
