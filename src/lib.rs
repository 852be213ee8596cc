//! gpt2-checkpoints: tells someone porting GPT-2 exactly where their implementation stops matching
//! HuggingFace.
//!
//! - [`catalog`]: the 13 checkpoints and the tensors each records (one definition for every side).
//! - [`model`]: a readable reference GPT-2 that taps every checkpoint into a [`taps::TapSink`];
//!   [`config`] and [`weights`] load it from HF's config.json and model.safetensors.
//! - [`goldens`]: HF's tensors as `cargo xtask extract-goldens` wrote them, with their manifest.
//! - [`candidate`]: the trait an implementation under test provides (the reference is one).
//! - [`suite`]: runs any [`candidate::Candidate`] against the goldens, checkpoint by checkpoint,
//!   with [`compare`] and the per-checkpoint [`tolerances`].
//! - [`sampling`], [`tokenizer`]: argmax, softmax with temperature and top-k; GPT-2's BPE.

// Doc comments write tensor shapes as [T, C], which rustdoc would read as links.
#![allow(rustdoc::broken_intra_doc_links)]

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
