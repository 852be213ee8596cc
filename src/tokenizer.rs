//! GPT-2's byte-level BPE tokenizer, from a model directory's tokenizer.json (HF `tokenizers`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `<model_dir>/tokenizer.json`.
    pub fn from_model_dir(model_dir: &Path) -> Result<Tokenizer> {
        let path = model_dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: format!("cannot load it ({e}): save the tokenizer beside the model with save_pretrained"),
        })?;
        Ok(Tokenizer { path, inner })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// How many ids the tokenizer can produce (its vocabulary and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.error(e))
    }

    fn error(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer { path: self.path.clone(), message: e.to_string() }
    }
}
