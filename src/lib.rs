//! gpt2-checkpoints: tells someone porting GPT-2 exactly where their implementation stops matching
//! HuggingFace.
//!
//! - [`catalog`]: the 13 checkpoints and the tensors each records (one definition for every side).
//! - [`model`]: a readable reference GPT-2 that taps every checkpoint into a [`taps::TapSink`].
//! - [`goldens`]: HF's tensors as `cargo xtask extract-goldens` wrote them, with their manifest.
//! - [`suite`]: runs any [`suite::Candidate`] against the goldens, checkpoint by checkpoint.

pub mod candidate;
pub mod catalog;
pub mod compare;
pub mod config;
pub mod error;
pub mod goldens;
pub mod model;
pub mod sampling;
pub mod suite;
pub mod taps;
pub mod tokenizer;
pub mod tolerances;
pub mod weights;

pub use catalog::{Checkpoint, TensorKey};
pub use config::Config;
pub use error::{Error, Result};
pub use model::Gpt2;
