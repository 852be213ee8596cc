//! Taps: how a forward pass hands each checkpoint's tensor to whoever is watching.
//!
//! The model calls [`TapSink::tap`] with a view of the tensor it already holds; a sink that keeps it
//! copies it ([`TapRecorder`]), and [`NoTaps`] ignores it, so an untapped forward pass copies
//! nothing. A sink says which tensors it keeps ([`TapSink::wants`]; [`NoTaps`]: none), so that a
//! forward pass need not build one only to be tapped. Tensors are single-sequence (the batch axis
//! of the goldens is left out).

use std::collections::BTreeMap;

use ndarray::{ArrayD, ArrayView1, ArrayViewD, IxDyn};

use crate::catalog::TensorKey;

/// Receives the tensor of each checkpoint as a forward pass reaches it.
pub trait TapSink {
    fn tap(&mut self, key: TensorKey, tensor: ArrayViewD<'_, f32>);

    /// Whether this sink keeps `key`'s tensor (every key unless the sink says otherwise). A forward
    /// pass may then skip building a tensor that it needs only for its tap: the reference's
    /// attention holds its [H, T, S] scores and weights only for a sink that wants them.
    fn wants(&self, _key: TensorKey) -> bool {
        true
    }

    /// The same for a port that keeps flat row-major buffers: `data` holds `shape` (a shape that
    /// does not match the data's length is recorded as a shape mismatch by the suite, not here).
    fn tap_slice(&mut self, key: TensorKey, shape: &[usize], data: &[f32]) {
        match ArrayViewD::from_shape(IxDyn(shape), data) {
            Ok(view) => self.tap(key, view),
            Err(_) => self.tap(key, ArrayView1::from(data).into_dyn()),
        }
    }
}

/// A sink that records nothing.
pub struct NoTaps;

impl TapSink for NoTaps {
    fn tap(&mut self, _key: TensorKey, _tensor: ArrayViewD<'_, f32>) {}

    fn wants(&self, _key: TensorKey) -> bool {
        false
    }
}

/// A sink that keeps a copy of every tap, by key; a later tap of the same key replaces it.
#[derive(Default)]
pub struct TapRecorder {
    pub tensors: BTreeMap<TensorKey, ArrayD<f32>>,
}

impl TapSink for TapRecorder {
    fn tap(&mut self, key: TensorKey, tensor: ArrayViewD<'_, f32>) {
        self.tensors.insert(key, tensor.to_owned());
    }
}
