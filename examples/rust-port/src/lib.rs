//! A small GPT-2 forward pass in plain Rust, written the way llm.c writes one: flat row-major
//! `Vec<f32>` buffers, one named activation per step with its shape in a comment, and one struct
//! per HuggingFace module whose fields are named after the keys of HF's `model.safetensors`.
//!
//! Shapes: T prompt tokens, C = n_embd, H = n_head, D = C / H, V = vocab_size, 4C = the MLP width.
//!
//! Checking it against HF takes one method of [`gpt2_checkpoints::Port`], `forward`, which hands
//! every activation it computes to the checker under its catalog key ([`tap`]). There is no KV
//! cache, no sampling and no isolated component: the checker derives 03's decode logits and
//! 09-12 from the logits and reports the rest as pending.

use std::path::Path;

use gpt2_checkpoints::catalog::tap;
use gpt2_checkpoints::port::Port;
use gpt2_checkpoints::taps::TapSink;
use safetensors::{Dtype, SafeTensors};

/// A bug to plant on purpose, to see the checker catch it at its own checkpoint
/// (tests/planted_bugs.rs). `Gpt2::bug` is `None` unless a test sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// 00: positions counted from 1 (wpe[t + 1]).
    PositionsFrom1,
    /// 01: LayerNorm with the unbiased variance (divided by C - 1, torch.var's default).
    UnbiasedVariance,
    /// 04: scores scaled by 1/sqrt(64), GPT-2 small's head width, whatever the config says.
    HardCodedHeadDim64,
    /// 04: no causal mask: every position also attends to the ones after it.
    NoCausalMask,
    /// 05: heads merged without the transpose: [H, T, D] read as if it were [T, C].
    MergeHeadsNoTranspose,
    /// 06: the exact erf GELU instead of GPT-2's tanh approximation (gelu_new).
    GeluErf,
    /// 06: c_fc's bias left out.
    DropFcBias,
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
        let bug = self.bug;
        let first_position = usize::from(bug == Some(Bug::PositionsFrom1)); // planted bug: 1
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
            let ln_1 = layer_norm(&x, &block.ln_1, eps, bug);
            taps.tap_slice(tap::ln_1(l), &[t, c], &ln_1);

            // 02: qkv [T, 3C] = ln_1 c_attn, then each third split into heads: q, k, v [H, T, D]
            let qkv = block.attn.c_attn.forward(&ln_1);
            let q = split_heads(&qkv, 0, t, nh, d);
            let k = split_heads(&qkv, c, t, nh, d);
            let v = split_heads(&qkv, 2 * c, t, nh, d);
            taps.tap_slice(tap::q(l), &[nh, t, d], &q);
            taps.tap_slice(tap::k(l), &[nh, t, d], &k);
            taps.tap_slice(tap::v(l), &[nh, t, d], &v);

            // 04: scores [H, T, T] = q k^T / sqrt(D), the future masked with -1e10;
            //     weights [H, T, T] = softmax of each row
            let scale = if bug == Some(Bug::HardCodedHeadDim64) { 1.0 / 8.0 } else { 1.0 / (d as f32).sqrt() };
            let mut scores = vec![0.0f32; nh * t * t];
            for h in 0..nh {
                for i in 0..t {
                    let qi = &q[(h * t + i) * d..][..d];
                    for j in 0..t {
                        let masked = j > i && bug != Some(Bug::NoCausalMask);
                        let kj = &k[(h * t + j) * d..][..d];
                        scores[(h * t + i) * t + j] = if masked { -1e10 } else { dot(qi, kj) * scale };
                    }
                }
            }
            let mut weights = scores.clone();
            weights.chunks_exact_mut(t).for_each(softmax);
            taps.tap_slice(tap::scores(l), &[nh, t, t], &scores);
            taps.tap_slice(tap::weights(l), &[nh, t, t], &weights);

            // 05: heads [H, T, D] = weights v, merged back to [T, C]; attn_output [T, C] = merged c_proj
            let mut heads = vec![0.0f32; nh * t * d];
            for h in 0..nh {
                for i in 0..t {
                    let out = &mut heads[(h * t + i) * d..][..d];
                    for j in 0..t {
                        let w = weights[(h * t + i) * t + j];
                        let vj = &v[(h * t + j) * d..][..d];
                        out.iter_mut().zip(vj).for_each(|(o, a)| *o += w * a);
                    }
                }
            }
            let merged = if bug == Some(Bug::MergeHeadsNoTranspose) { heads } else { merge_heads(&heads, t, nh, d) };
            let attn_output = block.attn.c_proj.forward(&merged);
            taps.tap_slice(tap::attn_output(l), &[t, c], &attn_output);
            add(&mut x, &attn_output);

            // 01: ln_2 [T, C]
            let ln_2 = layer_norm(&x, &block.ln_2, eps, bug);
            taps.tap_slice(tap::ln_2(l), &[t, c], &ln_2);

            // 06: fc [T, 4C] = ln_2 c_fc; gelu [T, 4C]; mlp_output [T, C] = gelu c_proj
            let fc = if bug == Some(Bug::DropFcBias) { block.mlp.c_fc.matmul(&ln_2, None) } else { block.mlp.c_fc.forward(&ln_2) };
            let gelu: Vec<f32> = fc.iter().map(|&a| if bug == Some(Bug::GeluErf) { gelu_erf(a) } else { gelu_new(a) }).collect();
            let mlp_output = block.mlp.c_proj.forward(&gelu);
            taps.tap_slice(tap::gelu(l), &[t, n_inner], &gelu);
            taps.tap_slice(tap::mlp_output(l), &[t, c], &mlp_output);
            add(&mut x, &mlp_output);

            // 07: the residual stream after block l, x [T, C]
            taps.tap_slice(tap::block_output(l), &[t, c], &x);
        }

        // 01: ln_f [T, C]
        let ln_f = layer_norm(&x, &self.ln_f, eps, bug);
        taps.tap_slice(tap::ln_f(), &[t, c], &ln_f);

        // 08: logits [T, V] = ln_f wte^T (lm_head is wte, no bias)
        let mut logits = vec![0.0f32; t * n_vocab];
        for (token, embedding) in self.wte.chunks_exact(c).enumerate() {
            for (pos, row) in ln_f.chunks_exact(c).enumerate() {
                logits[pos * n_vocab + token] = dot(row, embedding);
            }
        }
        taps.tap_slice(tap::logits(), &[t, n_vocab], &logits);
        Ok(())
    }
}

impl Conv1D {
    /// x [rows, n_in] -> x W + b [rows, n_out]
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.matmul(x, Some(&self.bias))
    }

    fn matmul(&self, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len() / self.n_in * self.n_out);
        for row in x.chunks_exact(self.n_in) {
            let mut out = vec![0.0f32; self.n_out];
            for (&xi, w) in row.iter().zip(self.weight.chunks_exact(self.n_out)) {
                out.iter_mut().zip(w).for_each(|(o, wi)| *o += xi * wi);
            }
            if let Some(b) = bias {
                add(&mut out, b);
            }
            y.extend(out);
        }
        y
    }
}

/// Each row of x [T, C] normalized: mean and biased variance (divided by C, as torch's LayerNorm).
fn layer_norm(x: &[f32], ln: &LayerNorm, eps: f32, bug: Option<Bug>) -> Vec<f32> {
    let c = ln.weight.len();
    let n = (if bug == Some(Bug::UnbiasedVariance) { c - 1 } else { c }) as f32; // planted bug: C - 1
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(c) {
        let mean = row.iter().sum::<f32>() / c as f32;
        let var = row.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        y.extend(row.iter().zip(ln.weight.iter().zip(&ln.bias)).map(|(a, (w, b))| (a - mean) * rstd * w + b));
    }
    y
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

/// In place: exp(x - max) / sum.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for a in row.iter_mut() {
        *a = (*a - max).exp();
        sum += *a;
    }
    row.iter_mut().for_each(|a| *a /= sum);
}

/// gelu_new, GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
fn gelu_new(x: f32) -> f32 {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt() as f32;
    0.5 * x * (1.0 + (sqrt_2_over_pi * (x + 0.044715 * x * x * x)).tanh())
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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
