//! Runners: whatever produces a port's tensors, as named [`Observations`].
//!
//! - [`port`]: a Rust [`Port`](crate::port::Port), run from token ids (chained) and component by
//!   component on HF's golden inputs (isolated).
//! - [`dumps`]: a directory of `.npy` files that a port in any language wrote (the dump protocol
//!   of CHECKPOINTS.md).
//!
//! A runner only records what it saw; judging it against the goldens is [`crate::judge`]'s job.

pub mod dumps;
pub mod port;

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::catalog::TensorKey;
use crate::tolerances::Mode;

/// A port's value for one catalog tensor.
#[derive(Clone, Debug)]
pub enum Value {
    /// Single-sequence, or with the golden's leading batch axis of 1.
    F32(ArrayD<f32>),
    Ids(Vec<u32>),
}

/// Why a tensor has no value.
#[derive(Clone, Debug, PartialEq)]
pub enum Missing {
    /// The port does not provide the method (or the file) that produces it: pending.
    NotProvided(String),
    /// The port tried and returned an error (or wrote an unreadable file).
    Failed(String),
}

/// What a runner saw of one tensor.
#[derive(Clone, Debug)]
pub enum Observed {
    Value {
        value: Value,
        /// Set when the suite computed it from the port's other outputs (09-12 from its logits,
        /// with the standard argmax and softmax) because the port does not provide that step.
        derived: Option<String>,
    },
    Missing(Missing),
}

/// Everything a runner saw, by mode and tensor. A key that is absent was never reported.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    pub seen: BTreeMap<(Mode, TensorKey), Observed>,
}

impl Observations {
    pub fn get(&self, mode: Mode, key: TensorKey) -> Option<&Observed> {
        self.seen.get(&(mode, key))
    }

    pub fn value(&mut self, mode: Mode, key: TensorKey, value: Value) {
        self.seen.insert((mode, key), Observed::Value { value, derived: None });
    }

    pub fn derived(&mut self, mode: Mode, key: TensorKey, value: Value, how: impl Into<String>) {
        self.seen.insert((mode, key), Observed::Value { value, derived: Some(how.into()) });
    }

    pub fn missing(&mut self, mode: Mode, key: TensorKey, missing: Missing) {
        self.seen.insert((mode, key), Observed::Missing(missing));
    }

    /// Records `missing` for each key that has no observation yet.
    pub fn missing_unless_seen(&mut self, mode: Mode, keys: impl IntoIterator<Item = TensorKey>, missing: &Missing) {
        for key in keys {
            self.seen.entry((mode, key)).or_insert_with(|| Observed::Missing(missing.clone()));
        }
    }

    /// Merges `other` in (the stages of a pipeline, or the two modes): a value replaces a missing
    /// one, never the other way round.
    pub fn merge(&mut self, other: Observations) {
        for (at, seen) in other.seen {
            let keep_ours = matches!((self.seen.get(&at), &seen), (Some(Observed::Value { .. }), Observed::Missing(_)));
            if !keep_ours {
                self.seen.insert(at, seen);
            }
        }
    }
}
