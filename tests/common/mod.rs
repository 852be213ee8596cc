//! Helpers shared by the integration tests: scratch copies of fixtures, errors as text.

#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_model_dir() -> PathBuf {
    repo().join("fixtures/models/tiny-gpt2")
}

/// A scratch copy of a directory, subdirectories (a golden set's truth/) included.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    copy_into(from, scratch.path());
    scratch
}

pub fn copy_into(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("readable fixture") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            std::fs::create_dir(&target).expect("mkdir");
            copy_into(&path, &target);
        } else {
            std::fs::copy(&path, target).expect("copy");
        }
    }
}

pub fn error_of<T>(result: gpt2_checkpoints::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}
