//! The KV cache: keys and values of every past position, per layer, preallocated.
//!
//! Each layer holds [H, capacity, D] buffers and a length; a step appends its new keys and values
//! after the old ones and attention reads the first `len` positions. Nothing is reallocated per
//! token.

use ndarray::{Array3, ArrayView3, s};

use crate::catalog::tap;
use crate::error::{Error, Result};
use crate::taps::TapSink;

pub struct LayerCache {
    /// [H, capacity, D]
    keys: Array3<f32>,
    /// [H, capacity, D]
    values: Array3<f32>,
    len: usize,
}

impl LayerCache {
    pub fn new(n_head: usize, capacity: usize, head_dim: usize) -> Self {
        LayerCache { keys: Array3::zeros((n_head, capacity, head_dim)), values: Array3::zeros((n_head, capacity, head_dim)), len: 0 }
    }

    /// Appends k, v [H, T, D] after the cached positions.
    pub fn append(&mut self, k: ArrayView3<f32>, v: ArrayView3<f32>) -> Result<()> {
        let new = k.shape()[1];
        let capacity = self.keys.shape()[1];
        if self.len + new > capacity {
            return Err(Error::Input(format!(
                "KV cache overflow: {} cached + {new} new positions exceed its capacity of {capacity}; create the cache with a larger capacity",
                self.len
            )));
        }
        let range = s![.., self.len..self.len + new, ..];
        self.keys.slice_mut(range).assign(&k);
        self.values.slice_mut(range).assign(&v);
        self.len += new;
        Ok(())
    }

    /// [H, len, D]
    pub fn keys(&self) -> ArrayView3<'_, f32> {
        self.keys.slice(s![.., ..self.len, ..])
    }

    /// [H, len, D]
    pub fn values(&self) -> ArrayView3<'_, f32> {
        self.values.slice(s![.., ..self.len, ..])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_head: usize, capacity: usize, head_dim: usize) -> Self {
        KvCache { layers: (0..n_layer).map(|_| LayerCache::new(n_head, capacity, head_dim)).collect() }
    }

    /// Positions cached so far (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checkpoint 03: hands every layer's keys and values [H, S, D] to the sink.
    pub fn tap(&self, sink: &mut dyn TapSink) {
        for (layer, cache) in self.layers.iter().enumerate() {
            sink.tap(tap::cache_keys(layer), cache.keys().into_dyn());
            sink.tap(tap::cache_values(layer), cache.values().into_dyn());
        }
    }
}
