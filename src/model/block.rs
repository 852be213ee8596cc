//! One transformer block, pre-LayerNorm: x + attn(ln_1(x)), then + mlp(ln_2(.)).

use ndarray::{Array2, ArrayView2};

use super::attention::Attention;
use super::kv_cache::LayerCache;
use super::layer_norm::LayerNorm;
use super::mlp::Mlp;
use crate::catalog::tap;
use crate::error::Result;
use crate::taps::TapSink;

pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    /// x [T, C] -> [T, C]
    pub fn forward(&self, layer: usize, x: ArrayView2<f32>, cache: &mut LayerCache, sink: &mut dyn TapSink) -> Result<Array2<f32>> {
        let ln_1 = self.ln_1.forward(x); // [T, C]
        sink.tap(tap::ln_1(layer), ln_1.view().into_dyn());
        let attn_output = self.attn.forward(layer, ln_1.view(), cache, sink)?; // [T, C]
        let residual = &x + &attn_output; // [T, C]
        let ln_2 = self.ln_2.forward(residual.view()); // [T, C]
        sink.tap(tap::ln_2(layer), ln_2.view().into_dyn());
        let mlp = self.mlp.forward(ln_2.view()); // gelu [T, 4C], output [T, C]
        sink.tap(tap::gelu(layer), mlp.gelu.view().into_dyn());
        sink.tap(tap::mlp_output(layer), mlp.output.view().into_dyn());
        let out = residual + &mlp.output; // [T, C]
        sink.tap(tap::block_output(layer), out.view().into_dyn());
        Ok(out)
    }
}
