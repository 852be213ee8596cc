"""GPT-2 in plain NumPy, in the spirit of picoGPT: one small function per piece of the model.

No KV cache: greedy generation recomputes the whole sequence at every step. Everything runs in
float32, as HF does. Shapes in the comments: T tokens, C = n_embd, H = n_head, D = C / H,
V = vocab_size.

The checkpoints see inside through ``tap(name, array)``: every function that computes a tensor the
checkpoint suite compares hands it to ``tap`` under its golden name (``07_block.l02.output``).
The default ``tap`` does nothing; run.py passes a function that writes the tap files.
"""

import json
import math
import os

import numpy as np

from gpt2_checkpoints import read_safetensors, stem  # python/gpt2_checkpoints.py


def no_tap(name, array):
    """The default tap: records nothing."""


# ----------------------------------------------------------------------------------------------------
# The model


def gelu(x):
    """GPT-2's gelu_new, the tanh approximation (not torch's default erf GELU)."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x):  # [..., N] -> [..., N]
    """Softmax over the last axis, shifted by the row's max so that exp never overflows."""
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [T, C] -> [T, C]
    """Normalizes each row: biased variance (divide by C), eps inside the square root."""
    mean = np.mean(x, axis=-1, keepdims=True)  # [T, 1]
    variance = np.var(x, axis=-1, keepdims=True)  # [T, 1]
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):  # [T, in] -> [T, out]
    """GPT-2's Conv1D: the weight is stored [in, out], so it is x @ w + b (no transpose)."""
    return x @ w + b


def ffn(x, c_fc, c_proj, tap=no_tap, layer=0):  # [T, C] -> [T, C]
    """The MLP: c_fc to 4C, gelu, c_proj back to C (before the residual add)."""
    a = gelu(linear(x, **c_fc))  # [T, 4C]
    tap(stem(6, "gelu", layer), a)
    out = linear(a, **c_proj)  # [T, C]
    tap(stem(6, "mlp_output", layer), out)
    return out


def split_heads(x, n_head):  # [T, C] -> [H, T, D]
    t, c = x.shape
    return x.reshape(t, n_head, c // n_head).transpose(1, 0, 2)


def merge_heads(x):  # [H, T, D] -> [T, C]
    h, t, d = x.shape
    return x.transpose(1, 0, 2).reshape(t, h * d)


def qkv(x, c_attn, n_head):  # [T, C] -> q, k, v [H, T, D]
    """c_attn, then q, k and v are the three C-wide blocks of its 3C outputs, split into heads."""
    q, k, v = np.split(linear(x, **c_attn), 3, axis=-1)  # 3 x [T, C]
    return split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)


def causal_mask(t, dtype=np.float32):  # [T, T]
    """0 where a query may look (itself and the past), -1e10 at future positions (added to scores)."""
    return (1 - np.tri(t, dtype=dtype)) * -1e10


def attention_scale(hparams, layer):
    """The factor of q·kᵀ: 1/sqrt(D) (HF's scale_attn_weights), divided by layer + 1 if the config asks."""
    scale = (hparams["n_embd"] // hparams["n_head"]) ** -0.5 if hparams["scale_attn_weights"] else 1.0
    return scale / (layer + 1) if hparams["scale_attn_by_inverse_layer_idx"] else scale


def attention(q, k, scale):  # q, k [H, T, D] -> scores, weights [H, T, T]
    """Scaled, causally masked q·kᵀ (scores) and its softmax (weights)."""
    scores = q @ k.transpose(0, 2, 1) * scale + causal_mask(q.shape[1], q.dtype)  # [H, T, T]
    return scores, softmax(scores)


def attention_output(weights, v, c_proj):  # [H, T, T], [H, T, D] -> [T, C]
    """Each head's weighted sum of values, heads merged back to C, then c_proj."""
    return linear(merge_heads(weights @ v), **c_proj)


def mha(x, c_attn, c_proj, hparams, tap=no_tap, layer=0):  # [T, C] -> [T, C]
    """Causal multi-head self-attention (before the residual add)."""
    q, k, v = qkv(x, c_attn, hparams["n_head"])  # [H, T, D] each
    for name, t in (("q", q), ("k", k), ("v", v)):
        tap(stem(2, name, layer), t)
    scores, weights = attention(q, k, attention_scale(hparams, layer))  # [H, T, T]
    tap(stem(4, "scores", layer), scores)
    tap(stem(4, "weights", layer), weights)
    out = attention_output(weights, v, c_proj)  # [T, C]
    tap(stem(5, "attn_output", layer), out)
    return out


def transformer_block(x, mlp, attn, ln_1, ln_2, hparams, tap=no_tap, layer=0):  # [T, C] -> [T, C]
    """Pre-LayerNorm block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""
    eps = hparams["layer_norm_epsilon"]
    h = layer_norm(x, **ln_1, eps=eps)  # [T, C]
    tap(stem(1, "ln_1", layer), h)
    x = x + mha(h, **attn, hparams=hparams, tap=tap, layer=layer)  # [T, C]
    h = layer_norm(x, **ln_2, eps=eps)  # [T, C]
    tap(stem(1, "ln_2", layer), h)
    x = x + ffn(h, **mlp, tap=tap, layer=layer)  # [T, C]
    tap(stem(7, "output", layer), x)
    return x


def embeddings(ids, wte, wpe):  # [T] -> [T, C]
    """Token embedding plus the position embedding of positions 0..T-1."""
    return wte[ids] + wpe[np.arange(len(ids))]


def lm_head(x, wte):  # [T, C] -> [T, V]
    """Logits: tied to the token embeddings, no bias."""
    return x @ wte.T


def gpt2(ids, params, hparams, tap=no_tap):  # [T] -> [T, V]
    """The logits of every position of ``ids``."""
    x = embeddings(np.asarray(ids), params["wte"], params["wpe"])  # [T, C]
    tap(stem(0, "embeddings"), x)
    for layer, block in enumerate(params["blocks"]):
        x = transformer_block(x, **block, hparams=hparams, tap=tap, layer=layer)  # [T, C]
    x = layer_norm(x, **params["ln_f"], eps=hparams["layer_norm_epsilon"])  # [T, C]
    tap(stem(1, "ln_f"), x)
    logits = lm_head(x, params["wte"])  # [T, V]
    tap(stem(8, "logits"), logits)
    return logits


# ----------------------------------------------------------------------------------------------------
# From logits to tokens


def select_last(logits):  # [T, V] -> [V]
    """The row that predicts the next token."""
    return logits[-1]


def next_token(last_logits):  # [V] -> id
    """Greedy choice: the largest logit (the first one on a tie)."""
    return int(np.argmax(last_logits))


def sampling(last_logits, temperature, top_k):  # [V] -> probs [V], probs_warped [V], top_ids [top_k]
    """softmax(logits); HF's sampling distribution: logits / temperature, everything below the
    top_k-th largest set to -inf, softmax; and the top_k ids, largest logit first."""
    probs = softmax(last_logits)
    scores = last_logits / temperature  # [V]
    kth = np.partition(scores, -top_k)[-top_k]
    probs_warped = softmax(np.where(scores < kth, -np.inf, scores))
    top_ids = np.argsort(-last_logits, kind="stable")[:top_k]
    return probs, probs_warped, top_ids


def generate(ids, params, hparams, n_tokens):  # [T] -> [n_tokens]
    """Greedy decoding without a cache: recompute the whole sequence for every new token."""
    ids = list(ids)
    for _ in range(n_tokens):
        logits = gpt2(ids, params, hparams)  # [T + i, V]
        ids.append(next_token(select_last(logits)))
    return ids[len(ids) - n_tokens :]


# ----------------------------------------------------------------------------------------------------
# Loading a HF checkpoint


def load_hparams(model_dir):
    """The config.json fields the model uses."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{model_dir}: activation {config['activation_function']!r}, this port implements gelu_new")
    keys = ("n_embd", "n_head", "n_layer", "vocab_size", "layer_norm_epsilon")
    hparams = {key: config[key] for key in keys}
    hparams["scale_attn_weights"] = config.get("scale_attn_weights", True)
    hparams["scale_attn_by_inverse_layer_idx"] = config.get("scale_attn_by_inverse_layer_idx", False)
    return hparams


def load_params(model_dir, n_layer):
    """model.safetensors as nested dicts of float32 arrays, picoGPT's layout:
    {wte [V, C], wpe [P, C], blocks: [{ln_1: {g, b}, attn: {c_attn: {w, b}, c_proj}, ln_2,
    mlp: {c_fc, c_proj}}], ln_f}. Conv1D weights stay [in, out]; lm_head is wte (tied)."""
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    # save_pretrained of GPT2LMHeadModel prefixes "transformer."; the original gpt2 checkpoints do not.
    tensors = {name.removeprefix("transformer."): t for name, t in tensors.items()}

    def get(name):
        return np.array(tensors[name], dtype=np.float32)

    def ln(prefix):
        return {"g": get(f"{prefix}.weight"), "b": get(f"{prefix}.bias")}

    def conv1d(prefix):
        return {"w": get(f"{prefix}.weight"), "b": get(f"{prefix}.bias")}

    blocks = [
        {
            "ln_1": ln(f"h.{i}.ln_1"),
            "attn": {"c_attn": conv1d(f"h.{i}.attn.c_attn"), "c_proj": conv1d(f"h.{i}.attn.c_proj")},
            "ln_2": ln(f"h.{i}.ln_2"),
            "mlp": {"c_fc": conv1d(f"h.{i}.mlp.c_fc"), "c_proj": conv1d(f"h.{i}.mlp.c_proj")},
        }
        for i in range(n_layer)
    ]
    return {"wte": get("wte.weight"), "wpe": get("wpe.weight"), "blocks": blocks, "ln_f": ln("ln_f")}


def load(model_dir):
    """(params, hparams) of a GPT-2 saved with save_pretrained (config.json + model.safetensors)."""
    hparams = load_hparams(model_dir)
    return load_params(model_dir, hparams["n_layer"]), hparams
