//! Float64 sums in 8 interleaved partial sums, which vector instructions add side by side: one
//! running sum waits ~4 cycles for each addition. The softmax's denominator and LayerNorm's mean
//! and variance.

/// The sum of `term(v)` over `values` followed by zeros up to `len` entries, in 8 interleaved
/// partial sums: entry i goes to partial sum i % 8, except the last len % 8 entries, added after
/// them in order. The zeros change no partial sum, so a softmax row's masked tail need not be
/// summed.
///
/// In float64 the order moves a sum only in its last bits, and a float32 result only where it lies
/// that close to a rounding boundary:
/// - the softmax's weights (and multiplying by the inverse of the sum instead of dividing): the
///   same table as in order;
/// - LayerNorm (summed in order before): the hashes of 8- to 512-token passes of GPT-2 small's
///   shape, `cargo xtask measure`'s table and `validate`'s on a 70-token prompt with real
///   statistics are unchanged. On the Xeon at 512 tokens, perf's samples of LayerNorm per sample of
///   gemm's micro-kernel went from 0.033 to 0.008 at 1 thread and 0.029 to 0.010 at 2.
#[inline(always)]
pub fn sum_in_lanes<T: Copy>(values: &[T], len: usize, term: impl Fn(T) -> f64) -> f64 {
    let (in_lanes, after) = values.split_at(values.len().min(len - len % 8));
    let mut lanes = [0.0f64; 8];
    let mut chunks = in_lanes.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += term(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += term(v);
    }
    lanes.iter().sum::<f64>() + after.iter().map(|&v| term(v)).sum::<f64>()
}
