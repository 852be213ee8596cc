//! A small GPT-2 forward pass in plain Rust, written the way llm.c writes one: flat row-major
//! `Vec<f32>` buffers, one named activation per step with its shape in a comment, and one struct
//! per HuggingFace module whose fields are named after the keys of HF's `model.safetensors`.
//!
//! Shapes: T prompt tokens, C = n_embd, H = n_head, D = C / H, V = vocab_size, 4C = the MLP width.
//!
//! Checking it against HF takes one method of [`gpt2_checkpoints::Port`], `forward`, which hands
//! every activation it computes to the checker under its catalog key ([`tap`]). There is no KV
//! cache and no isolated component; sampling (checkpoint 11) is the port's own only when
//! [`Gpt2::sampling`] is set. The checker derives 03's decode logits and the rest of 09-12 from
//! the logits and reports the rest as pending.

use std::path::Path;

use gpt2_checkpoints::catalog::tap;
use gpt2_checkpoints::port::{Port, Sampling};
use gpt2_checkpoints::taps::TapSink;
use ndarray::{Array1, ArrayView1};
use safetensors::{Dtype, SafeTensors};

/// A bug to plant on purpose, to see the checker catch it at its own checkpoint
/// (tests/planted_bugs.rs). `Gpt2::bug` is `None` unless a test sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// 00: positions counted from 1 (wpe[t + 1]).
    PositionsFrom1,
    /// 01: LayerNorm with the unbiased variance (divided by C - 1, torch.var's default).
    UnbiasedVariance,
    /// 01: LayerNorm's weight (gamma) and bias (beta) swapped: normalized * beta + gamma.
    SwapGammaBeta,
    /// 01: LayerNorm divided by sqrt(var) + eps instead of sqrt(var + eps).
    EpsOutsideSqrt,
    /// 04: scores scaled by 1/sqrt(64), GPT-2 small's head width, whatever the config says.
    HardCodedHeadDim64,
    /// 04: no causal mask: every position also attends to the ones after it.
    NoCausalMask,
    /// 05: heads merged without the transpose: [H, T, D] read as if it were [T, C].
    MergeHeadsNoTranspose,
    /// 06: the exact erf GELU instead of GPT-2's tanh approximation (gelu_new).
    GeluErf,
    /// 06: gelu_new with 0.0447 for its cubic coefficient 0.044715 (off by 0.03%).
    GeluConstant0447,
    /// 06: c_fc's bias left out.
    DropFcBias,
    /// 11: the port's own sampling (only when `Gpt2::sampling` is set) takes exp(logit) / sum
    /// without subtracting the largest logit first: 0 / 0 = NaN where every logit is below -104.
    SoftmaxNoMaxShift,
}

/// Another correct way to compute GPT-2, which a port may choose: each passes every check on
/// every golden set (tests/variants.rs), as a port with it must. `Gpt2::variant` is `None` unless
/// a test sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Every dot product and sum taken from its last term to its first (matmuls, attention,
    /// LayerNorm's mean and variance, softmax).
    ReversedSums,
    /// LayerNorm's mean and variance in float64.
    F64LayerNorm,
    /// Attention in one pass over the keys, flash-attention style: a running max, and the sum of
    /// the exponentials and the output rescaled whenever it grows.
    OnlineSoftmax,
    /// The future masked with -1e4 instead of -1e10.
    MaskNeg1e4,
    /// The future masked with -inf.
    MaskNegInf,
}

/// The fields of config.json this forward pass uses.
#[derive(Clone, Debug)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP width: `n_inner`, or 4 * n_embd where config.json has null.
    pub n_inner: usize,
    pub layer_norm_epsilon: f32,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let err = |what: String| format!("{}: {what}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let int = |key: &str| json[key].as_u64().map(|n| n as usize).ok_or_else(|| err(format!("no integer `{key}`")));

        // The options of HF's GPT2Config that would change this forward pass.
        let activation = json["activation_function"].as_str().unwrap_or("gelu_new");
        if activation != "gelu_new" {
            return Err(err(format!("activation_function {activation:?}: this port implements gelu_new only")));
        }
        if json["scale_attn_weights"] == false || json["scale_attn_by_inverse_layer_idx"] == true {
            return Err(err("this port scales attention scores by 1/sqrt(head_dim) only".into()));
        }

        let n_embd = int("n_embd")?;
        let config = Config {
            vocab_size: int("vocab_size")?,
            n_positions: int("n_positions")?,
            n_embd,
            n_layer: int("n_layer")?,
            n_head: int("n_head")?,
            n_inner: json["n_inner"].as_u64().map_or(4 * n_embd, |n| n as usize),
            layer_norm_epsilon: json["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32,
        };
        if config.n_head == 0 || n_embd % config.n_head != 0 {
            return Err(err(format!("n_embd {n_embd} is not a multiple of n_head {}", config.n_head)));
        }
        Ok(config)
    }
}

/// `ln_1`, `ln_2`, `ln_f`: y = (x - mean) / sqrt(var + eps) * weight + bias, over each row.
pub struct LayerNorm {
    pub weight: Vec<f32>, // [C]
    pub bias: Vec<f32>,   // [C]
}

/// HF's Conv1D (`c_attn`, `c_proj`, `c_fc`): y = x W + b, with W stored [n_in, n_out]
/// (the transpose of an nn.Linear's weight).
pub struct Conv1D {
    pub weight: Vec<f32>, // [n_in, n_out]
    pub bias: Vec<f32>,   // [n_out]
    pub n_in: usize,
    pub n_out: usize,
}

pub struct Attention {
    pub c_attn: Conv1D, // C -> 3C: q, k, v side by side
    pub c_proj: Conv1D, // C -> C
}

pub struct Mlp {
    pub c_fc: Conv1D,   // C -> 4C
    pub c_proj: Conv1D, // 4C -> C
}

/// One transformer block, `h.{i}`.
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

/// GPT-2 with its LM head. The head has no weights of its own: it is tied to `wte`, without bias.
pub struct Gpt2 {
    pub config: Config,
    pub wte: Vec<f32>, // [V, C]
    pub wpe: Vec<f32>, // [n_positions, C]
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
    /// A planted bug, for tests only.
    pub bug: Option<Bug>,
    /// A harmless variant of the computation, for tests only.
    pub variant: Option<Variant>,
    /// Whether the port provides its own `Port::sampling` (11): temperature, top-k, softmax.
    /// Without it (the default) the checker derives 11 from the logits.
    pub sampling: bool,
}

impl Gpt2 {
    /// Loads `config.json` and `model.safetensors` from a directory HF's `save_pretrained` wrote.
    pub fn load(dir: &Path) -> Result<Gpt2, String> {
        let config = Config::load(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let weights = Weights { file: SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?, path: &path };

        let Config { vocab_size: n_vocab, n_positions, n_embd: c, n_inner, .. } = config;
        let h = (0..config.n_layer)
            .map(|i| {
                Ok(Block {
                    ln_1: weights.layer_norm(&format!("h.{i}.ln_1"), c)?,
                    attn: Attention {
                        c_attn: weights.conv1d(&format!("h.{i}.attn.c_attn"), c, 3 * c)?,
                        c_proj: weights.conv1d(&format!("h.{i}.attn.c_proj"), c, c)?,
                    },
                    ln_2: weights.layer_norm(&format!("h.{i}.ln_2"), c)?,
                    mlp: Mlp {
                        c_fc: weights.conv1d(&format!("h.{i}.mlp.c_fc"), c, n_inner)?,
                        c_proj: weights.conv1d(&format!("h.{i}.mlp.c_proj"), n_inner, c)?,
                    },
                })
            })
            .collect::<Result<Vec<Block>, String>>()?;
        Ok(Gpt2 {
            wte: weights.get("wte.weight", &[n_vocab, c])?,
            wpe: weights.get("wpe.weight", &[n_positions, c])?,
            h,
            ln_f: weights.layer_norm("ln_f", c)?,
            config,
            bug: None,
            variant: None,
            sampling: false,
        })
    }
}

/// model.safetensors, read by HF's names.
struct Weights<'a> {
    file: SafeTensors<'a>,
    path: &'a Path,
}

impl Weights<'_> {
    /// `name` as HF saves it: under `transformer.` (GPT2LMHeadModel) or bare (GPT2Model, the
    /// hub's original gpt2 files). An `lm_head.weight` in the file is wte again and is not read.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let prefixed = format!("transformer.{name}");
        let tensor = self
            .file
            .tensor(&prefixed)
            .or_else(|_| self.file.tensor(name))
            .map_err(|_| format!("{}: no tensor {prefixed} (nor {name})", self.path.display()))?;
        if tensor.dtype() != Dtype::F32 || tensor.shape() != shape {
            return Err(format!(
                "{}: {name} is {:?} {:?}, this port reads F32 {shape:?}",
                self.path.display(),
                tensor.dtype(),
                tensor.shape()
            ));
        }
        Ok(tensor.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    fn layer_norm(&self, name: &str, c: usize) -> Result<LayerNorm, String> {
        Ok(LayerNorm { weight: self.get(&format!("{name}.weight"), &[c])?, bias: self.get(&format!("{name}.bias"), &[c])? })
    }

    fn conv1d(&self, name: &str, n_in: usize, n_out: usize) -> Result<Conv1D, String> {
        Ok(Conv1D {
            weight: self.get(&format!("{name}.weight"), &[n_in, n_out])?,
            bias: self.get(&format!("{name}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }
}

impl Port for Gpt2 {
    fn forward(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> gpt2_checkpoints::Result<()> {
        let Config { vocab_size: n_vocab, n_positions, n_embd: c, n_head: nh, n_inner, layer_norm_epsilon: eps, .. } = self.config;
        let (t, d) = (ids.len(), c / nh);
        let how = How { bug: self.bug, variant: self.variant };
        let first_position = usize::from(how.bug(Bug::PositionsFrom1)); // planted bug: 1
        if t == 0 || first_position + t > n_positions {
            return Err(gpt2_checkpoints::Error::Input(format!("{t} tokens: this model takes 1 to {n_positions}")));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(gpt2_checkpoints::Error::Input(format!("token id {bad} is not below vocab_size {n_vocab}")));
        }

        // 00: the residual stream starts as token + position embeddings, x [T, C]
        let mut x = Vec::with_capacity(t * c);
        for (pos, &id) in ids.iter().enumerate() {
            let token = &self.wte[id as usize * c..][..c];
            let position = &self.wpe[(first_position + pos) * c..][..c];
            x.extend(token.iter().zip(position).map(|(a, b)| a + b));
        }
        taps.tap_slice(tap::embeddings(), &[t, c], &x);

        for (l, block) in self.h.iter().enumerate() {
            // 01: ln_1 [T, C]
            let ln_1 = layer_norm(&x, &block.ln_1, eps, how);
            taps.tap_slice(tap::ln_1(l), &[t, c], &ln_1);

            // 02: qkv [T, 3C] = ln_1 c_attn, then each third split into heads: q, k, v [H, T, D]
            let qkv = block.attn.c_attn.forward(&ln_1, how);
            let q = split_heads(&qkv, 0, t, nh, d);
            let k = split_heads(&qkv, c, t, nh, d);
            let v = split_heads(&qkv, 2 * c, t, nh, d);
            taps.tap_slice(tap::q(l), &[nh, t, d], &q);
            taps.tap_slice(tap::k(l), &[nh, t, d], &k);
            taps.tap_slice(tap::v(l), &[nh, t, d], &v);

            // 04: scores [H, T, T] = q k^T / sqrt(D), the future masked with -1e10 (or a variant's mask)
            let scale = if how.bug(Bug::HardCodedHeadDim64) { 1.0 / 8.0 } else { 1.0 / (d as f32).sqrt() };
            let mask = match how.variant {
                Some(Variant::MaskNeg1e4) => -1e4,
                Some(Variant::MaskNegInf) => f32::NEG_INFINITY,
                _ => -1e10,
            };
            let mut scores = vec![0.0f32; nh * t * t];
            for h in 0..nh {
                for i in 0..t {
                    let qi = &q[(h * t + i) * d..][..d];
                    for j in 0..t {
                        let masked = j > i && !how.bug(Bug::NoCausalMask);
                        let kj = &k[(h * t + j) * d..][..d];
                        scores[(h * t + i) * t + j] = if masked { mask } else { how.dot(qi, kj) * scale };
                    }
                }
            }
            taps.tap_slice(tap::scores(l), &[nh, t, t], &scores);

            // 04: weights [H, T, T] = softmax of each row of the scores
            // 05: heads [H, T, D] = weights v (each query row in one pass with Variant::OnlineSoftmax)
            let mut weights = scores.clone();
            let mut heads = vec![0.0f32; nh * t * d];
            for h in 0..nh {
                let vh = &v[h * t * d..][..t * d]; // [T, D]
                for i in 0..t {
                    let w = &mut weights[(h * t + i) * t..][..t];
                    let out = &mut heads[(h * t + i) * d..][..d];
                    if how.variant(Variant::OnlineSoftmax) {
                        online_attention(w, vh, out);
                    } else {
                        softmax(w, true, how);
                        how.accumulate(w.iter().zip(vh.chunks_exact(d)), |(&wj, vj)| add_scaled(out, wj, vj));
                    }
                }
            }
            taps.tap_slice(tap::weights(l), &[nh, t, t], &weights);

            // 05: heads merged back to [T, C]; attn_output [T, C] = merged c_proj
            let merged = if how.bug(Bug::MergeHeadsNoTranspose) { heads } else { merge_heads(&heads, t, nh, d) };
            let attn_output = block.attn.c_proj.forward(&merged, how);
            taps.tap_slice(tap::attn_output(l), &[t, c], &attn_output);
            add(&mut x, &attn_output);

            // 01: ln_2 [T, C]
            let ln_2 = layer_norm(&x, &block.ln_2, eps, how);
            taps.tap_slice(tap::ln_2(l), &[t, c], &ln_2);

            // 06: fc [T, 4C] = ln_2 c_fc; gelu [T, 4C]; mlp_output [T, C] = gelu c_proj
            let fc = if how.bug(Bug::DropFcBias) { block.mlp.c_fc.matmul(&ln_2, None, how) } else { block.mlp.c_fc.forward(&ln_2, how) };
            let gelu: Vec<f32> = fc
                .iter()
                .map(|&a| match how.bug {
                    Some(Bug::GeluErf) => gelu_erf(a),
                    Some(Bug::GeluConstant0447) => gelu_tanh(a, 0.0447),
                    _ => gelu_new(a),
                })
                .collect();
            let mlp_output = block.mlp.c_proj.forward(&gelu, how);
            taps.tap_slice(tap::gelu(l), &[t, n_inner], &gelu);
            taps.tap_slice(tap::mlp_output(l), &[t, c], &mlp_output);
            add(&mut x, &mlp_output);

            // 07: the residual stream after block l, x [T, C]
            taps.tap_slice(tap::block_output(l), &[t, c], &x);
        }

        // 01: ln_f [T, C]
        let ln_f = layer_norm(&x, &self.ln_f, eps, how);
        taps.tap_slice(tap::ln_f(), &[t, c], &ln_f);

        // 08: logits [T, V] = ln_f wte^T (lm_head is wte, no bias)
        let mut logits = vec![0.0f32; t * n_vocab];
        for (token, embedding) in self.wte.chunks_exact(c).enumerate() {
            for (pos, row) in ln_f.chunks_exact(c).enumerate() {
                logits[pos * n_vocab + token] = how.dot(row, embedding);
            }
        }
        taps.tap_slice(tap::logits(), &[t, n_vocab], &logits);
        Ok(())
    }

    /// 11, only when `Gpt2::sampling` is set: softmax(logits); and in HF's order the logits divided
    /// by the temperature, those below the k-th largest set to -inf, softmax; and the top-k ids.
    fn sampling(&mut self, logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> gpt2_checkpoints::Result<Sampling> {
        if !self.sampling {
            return Err(gpt2_checkpoints::Error::NotProvided("sampling (Gpt2::sampling is not set)".into()));
        }
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(gpt2_checkpoints::Error::Input(format!("temperature {temperature} must be a positive number")));
        }
        let how = How { bug: self.bug, variant: self.variant };
        let subtract_max = !how.bug(Bug::SoftmaxNoMaxShift); // planted bug: false
        let logits = logits.to_vec(); // [V]

        // top_ids [k]: the ids of the k largest logits, largest first (on a tie the smaller id)
        let mut top_ids: Vec<u32> = (0..logits.len() as u32).collect();
        top_ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        top_ids.truncate(top_k);

        // probs [V] = softmax(logits)
        let mut probs = logits.clone();
        softmax(&mut probs, subtract_max, how);

        // probs_warped [V] = softmax of logits / temperature, below the k-th largest -inf
        let mut warped: Vec<f32> = logits.iter().map(|z| z / temperature).collect();
        if let Some(&kth) = top_ids.last() {
            let threshold = warped[kth as usize];
            warped.iter_mut().filter(|s| **s < threshold).for_each(|s| *s = f32::NEG_INFINITY);
        }
        softmax(&mut warped, subtract_max, how);

        Ok(Sampling { probs: Array1::from(probs), probs_warped: Array1::from(warped), top_ids })
    }
}

/// What one run computes differently from plain GPT-2: the planted bug and the variant, handed to
/// every step that has one.
#[derive(Clone, Copy)]
struct How {
    bug: Option<Bug>,
    variant: Option<Variant>,
}

impl How {
    fn bug(self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn variant(self, variant: Variant) -> bool {
        self.variant == Some(variant)
    }

    /// Adds up `terms` with `add`, first to last (last to first with Variant::ReversedSums): the
    /// matmuls, dot products, weights v, and LayerNorm's and softmax's sums go through here.
    fn accumulate<T>(self, terms: impl DoubleEndedIterator<Item = T>, add: impl FnMut(T)) {
        if self.variant(Variant::ReversedSums) { terms.rev().for_each(add) } else { terms.for_each(add) }
    }

    fn sum(self, terms: impl DoubleEndedIterator<Item = f32>) -> f32 {
        let mut sum = 0.0;
        self.accumulate(terms, |a| sum += a);
        sum
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        self.sum(a.iter().zip(b).map(|(x, y)| x * y))
    }
}

impl Conv1D {
    /// x [rows, n_in] -> x W + b [rows, n_out]
    fn forward(&self, x: &[f32], how: How) -> Vec<f32> {
        self.matmul(x, Some(&self.bias), how)
    }

    fn matmul(&self, x: &[f32], bias: Option<&[f32]>, how: How) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len() / self.n_in * self.n_out);
        for row in x.chunks_exact(self.n_in) {
            // out [n_out] = the sum over i of x[i] W[i]
            let mut out = vec![0.0f32; self.n_out];
            how.accumulate(row.iter().zip(self.weight.chunks_exact(self.n_out)), |(&xi, w)| add_scaled(&mut out, xi, w));
            if let Some(b) = bias {
                add(&mut out, b);
            }
            y.extend(out);
        }
        y
    }
}

/// Each row of x [T, C] normalized: mean and biased variance (divided by C, as torch's LayerNorm),
/// (x - mean) / sqrt(var + eps) * weight + bias.
fn layer_norm(x: &[f32], ln: &LayerNorm, eps: f32, how: How) -> Vec<f32> {
    let c = ln.weight.len();
    let n = (if how.bug(Bug::UnbiasedVariance) { c - 1 } else { c }) as f32; // planted bug: C - 1
    let (weight, bias) = if how.bug(Bug::SwapGammaBeta) { (&ln.bias, &ln.weight) } else { (&ln.weight, &ln.bias) }; // planted bug: swapped
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(c) {
        let normalized: Vec<f32> = if how.variant(Variant::F64LayerNorm) {
            normalize_f64(row, eps)
        } else {
            let mean = how.sum(row.iter().copied()) / c as f32;
            let var = how.sum(row.iter().map(|a| (a - mean) * (a - mean))) / n;
            let std = if how.bug(Bug::EpsOutsideSqrt) { var.sqrt() + eps } else { (var + eps).sqrt() }; // planted bug: eps outside
            let rstd = 1.0 / std;
            row.iter().map(|a| (a - mean) * rstd).collect()
        };
        y.extend(normalized.iter().zip(weight.iter().zip(bias)).map(|(a, (w, b))| a * w + b));
    }
    y
}

/// Variant::F64LayerNorm: (x - mean) / sqrt(var + eps) of one row, taken in float64.
fn normalize_f64(row: &[f32], eps: f32) -> Vec<f32> {
    let n = row.len() as f64;
    let mean = row.iter().map(|&a| f64::from(a)).sum::<f64>() / n;
    let var = row.iter().map(|&a| (f64::from(a) - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + f64::from(eps)).sqrt();
    row.iter().map(|&a| ((f64::from(a) - mean) * rstd) as f32).collect()
}

/// Columns offset..offset+C of qkv [T, 3C], as heads [H, T, D].
fn split_heads(qkv: &[f32], offset: usize, t: usize, nh: usize, d: usize) -> Vec<f32> {
    let c = nh * d;
    let mut out = Vec::with_capacity(nh * t * d);
    for h in 0..nh {
        for i in 0..t {
            out.extend_from_slice(&qkv[i * 3 * c + offset + h * d..][..d]);
        }
    }
    out
}

/// heads [H, T, D] -> [T, C], head h in columns h*D..(h+1)*D.
fn merge_heads(heads: &[f32], t: usize, nh: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(nh * t * d);
    for i in 0..t {
        for h in 0..nh {
            out.extend_from_slice(&heads[(h * t + i) * d..][..d]);
        }
    }
    out
}

/// In place: exp(x - max) / sum (exp(x) / sum when not `subtract_max`: Bug::SoftmaxNoMaxShift).
fn softmax(row: &mut [f32], subtract_max: bool, how: How) {
    let max = if subtract_max { row.iter().copied().fold(f32::NEG_INFINITY, f32::max) } else { 0.0 };
    row.iter_mut().for_each(|a| *a = (*a - max).exp());
    let sum = how.sum(row.iter().copied());
    row.iter_mut().for_each(|a| *a /= sum);
}

/// Variant::OnlineSoftmax, one query row flash-attention style: a single pass over the keys keeps
/// the largest score m so far, l = sum of exp(score - m) and out = sum of exp(score - m) v, both
/// rescaled by exp(m_old - m_new) when m grows, then out /= l. `weights` holds the row's scores
/// [T] and becomes exp(score - m) / l with the final m and l, for the tap only; v [T, D], out [D].
fn online_attention(weights: &mut [f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
    for (&score, vj) in weights.iter().zip(v.chunks_exact(d)) {
        let m_new = m.max(score);
        let rescale = (m - m_new).exp(); // 0 at the first key (m = -inf), 1 while m stays
        let p = (score - m_new).exp();
        l = l * rescale + p;
        out.iter_mut().zip(vj).for_each(|(o, a)| *o = *o * rescale + p * a);
        m = m_new;
    }
    out.iter_mut().for_each(|o| *o /= l);
    weights.iter_mut().for_each(|w| *w = (*w - m).exp() / l);
}

/// gelu_new, GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
fn gelu_new(x: f32) -> f32 {
    gelu_tanh(x, 0.044715)
}

/// The tanh GELU with cubic coefficient `a` (0.044715 in gelu_new; Bug::GeluConstant0447 0.0447).
fn gelu_tanh(x: f32, a: f32) -> f32 {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt() as f32;
    0.5 * x * (1.0 + (sqrt_2_over_pi * (x + a * x * x * x)).tanh())
}

/// The exact GELU, 0.5 x (1 + erf(x / sqrt 2)): not GPT-2's (Bug::GeluErf).
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 (Rust's std has no erf).
fn erf(x: f32) -> f32 {
    let a = f64::from(x.abs());
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    ((1.0 - poly * (-a * a).exp()) as f32).copysign(x)
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// x += s y
fn add_scaled(x: &mut [f32], s: f32, y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += s * b);
}
