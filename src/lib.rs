//! gpt2-checkpoints: tells someone porting GPT-2 exactly where their implementation stops matching
//! HuggingFace.
//!
//! The layers, as NVIDIA Polygraphy keeps them apart:
//! - [`catalog`]: the 13 checkpoints and the tensors each records ([`catalog::tap`]: their keys).
//! - [`port`]: the trait a GPT-2 implementation under test provides (one required method), and
//!   [`taps`], how it hands over its tensors.
//! - [`runner`]: whatever produces a port's tensors: a Rust [`port::Port`] ([`runner::port`]) or a
//!   directory of `.npy` dumps from any language ([`runner::dumps`]).
//! - [`goldens`]: HF's tensors as `cargo xtask extract-goldens` wrote them, with their manifest.
//! - [`judge`]: observations against goldens, tensor by tensor: pass, FAIL or pending, with
//!   [`compare`] and the per-checkpoint [`tolerances`]; [`judge::Claims`] says what must pass.
//! - [`report`]: the checkpoint table, failure messages and the first divergence, text and JSON.
//! - [`testing`]: [`checkpoint_tests!`], the `cargo test` entry for a port's own crate.
//! - [`model`]: the readable reference GPT-2, one port among others ([`model::Reference`]);
//!   [`config`] and [`weights`] load it from HF's config.json and safetensors (one file or shards; f32, f16 or bf16).
//! - [`sampling`], [`tokenizer`]: argmax, softmax with temperature and top-k; GPT-2's BPE.
//!
//! The harness (catalog, port, runner, goldens, judge, report, testing) does not use [`model`].

// Doc comments write tensor shapes as [T, C], which rustdoc would read as links.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod catalog;
pub mod compare;
pub mod config;
pub mod error;
pub mod goldens;
pub mod judge;
pub mod model;
pub mod port;
pub mod report;
pub mod runner;
pub mod sampling;
pub mod taps;
pub mod testing;
pub mod tokenizer;
pub mod tolerances;
pub mod weights;

pub use catalog::{Checkpoint, TensorKey};
pub use config::Config;
pub use error::{Error, Result};
pub use judge::Claims;
pub use model::{Gpt2, Reference};
pub use port::Port;
