"""Checkpoint taps for a GPT-2 port written in Python: golden sets in, tap files out.

The gpt2-checkpoints crate compares a GPT-2 port with HuggingFace at 13 checkpoints (00 embeddings,
01 LayerNorm, 02 QKV, 03 KV cache, 04 attention scores, 05 attention output, 06 FFN, 07 block,
08 logits, 09 selected logits, 10 argmax, 11 softmax, 12 greedy generation; CHECKPOINTS.md defines
every tensor). This module is the way in for a port that is not Rust. It needs only numpy.

The protocol
------------
A *golden set* is a directory, ``fixtures/goldens/<model>/<prompt-slug>/``, that holds one ``.npy``
per tensor HF computed, named by its *stem*:

    00_embeddings.embeddings        checkpoint label, then the tensor
    07_block.l02.output             ... with ``lNN`` for a per-layer tensor
    03_kv_cache.l00.step1.keys      ... and ``stepS`` for a cache state

plus ``manifest.json``: ``format_version``; ``model`` {name, source, config}; ``prompt`` {text,
slug, ids}; ``generation`` {new_tokens, decode_steps, temperature, top_k, new_ids, text};
``environment``; ``tensors`` [{checkpoint, layer, step, name, shape, dtype, file}].

A port writes *taps*: its own value of a golden tensor, as ``<tap dir>/<stem>.npy`` with the
golden's shape (HF's leading batch axis of 1 included) and dtype (float32, or int64 for token ids).

- **Chained** taps (``<tap dir>/``): the port runs from the prompt's token ids and records what it
  computes at each checkpoint. A failure there may come from anything upstream; the first tensor
  that fails in forward order (:meth:`GoldenSet.outputs`) is where the port diverged.
- **Isolated** taps (``<tap dir>/isolated/``): each component is fed HF's golden *input* and only
  its output is recorded, so a failure is that component's alone. Which golden feeds which
  component is the table :data:`ISOLATED_INPUTS` (the same as ``isolated_component`` in src/runner/port.rs):

  == ======================================= =========================================== ===========================
  #  golden input(s) (batch axis dropped)     component                                   writes
  == ======================================= =========================================== ===========================
  00 ``00_embeddings.input_ids``               wte[ids] + wpe[0..T]                        ``embeddings``
  01 ``01_layernorm.lNN.ln_1.input``           block NN's ln_1 (same for ln_2)             ``ln_1`` (``ln_2``)
  01 ``01_layernorm.ln_f.input``               the final LayerNorm                         ``ln_f``
  02 ``01_layernorm.lNN.ln_1``                 c_attn, split into heads                    ``q``, ``k``, ``v``
  03 ``03_kv_cache.lNN.step{s-1}.keys/values`` append the last position of step s's golden ``stepS.keys/values``
     + last position of ``stepS.keys/values`` keys/values to the cache of step s-1         for s = 1..decode_steps
  04 ``02_qkv.lNN.q``, ``02_qkv.lNN.k``        scaled, causally masked q·kᵀ and softmax    ``scores``, ``weights``
  05 ``04_attn_scores.lNN.weights``,           weights·v, heads merged, c_proj             ``attn_output``
     ``02_qkv.lNN.v``
  06 ``01_layernorm.lNN.ln_2``                 c_fc, gelu_new, c_proj                      ``gelu``, ``mlp_output``
  07 ``07_block.lNN.input``                    the whole block                             ``output``
  08 ``01_layernorm.ln_f``                     lm_head (tied to wte, no bias)              ``logits``
  09 ``08_logits.logits``                      the last position's row                     ``last_logits``
  10 ``09_selected_logits.last_logits``        argmax                                      ``next_token``
  11 ``09_selected_logits.last_logits``        softmax; temperature, top-k, softmax;       ``probs``, ``probs_warped``,
     + manifest temperature and top_k          top-k ids                                   ``top_ids``
  12 ``00_embeddings.input_ids``               greedy generation of new_tokens tokens      ``new_ids``
  == ======================================= =========================================== ===========================

  ``03_kv_cache.decode_logits`` needs the whole model: it is chained only. Step 0 of the cache is
  the prompt's own (checkpoint 02's k and v): the suite does not recompute it in isolation.

Typical use::

    import sys; sys.path.insert(0, "<repo>/python")
    from gpt2_checkpoints import GoldenSet, TapWriter, read_safetensors

    gs = GoldenSet("fixtures/goldens/tiny-gpt2/hello")
    params = read_safetensors(gs.model_dir("<repo>") + "/model.safetensors")
    taps = TapWriter("target/taps/hello", gs)
    taps.write("00_embeddings.embeddings", my_embeddings)      # [T, C] or [1, T, C]
    for job in gs.isolated_jobs():                             # isolated mode
        inputs = gs.isolated_inputs(job)                       # {"x": array, ...}
        ...                                                    # run that component
        taps.isolated.write(job.outputs[0], result)
    print(taps.missing(), taps.isolated.missing())

:class:`TapWriter` refuses, with a one-line ``ValueError``, a name the set does not have (and
suggests the closest), a shape that is not the golden's, a non-finite float and a wrong dtype:
mistakes in the protocol show up when the tap is written, not as a confusing comparison later.
"""

import difflib
import json
import os
import tempfile
from collections import namedtuple
from pathlib import Path

import numpy as np

FORMAT_VERSION = 3
MANIFEST = "manifest.json"

#: The 13 checkpoint labels, indexed by checkpoint number: ``CHECKPOINTS[7] == "07_block"``.
CHECKPOINTS = (
    "00_embeddings",
    "01_layernorm",
    "02_qkv",
    "03_kv_cache",
    "04_attn_scores",
    "05_attn_output",
    "06_ffn",
    "07_block",
    "08_logits",
    "09_selected_logits",
    "10_argmax",
    "11_softmax",
    "12_generation",
)

#: (checkpoint, tensor name) -> (role, batched). The mirror of src/catalog.rs: ``output`` is compared,
#: ``input`` feeds a component in isolated mode, ``evidence`` explains a comparison (never compared).
#: ``batched``: the golden has HF's leading batch axis of 1, which a tap may leave out.
CATALOG = {
    (0, "input_ids"): ("input", True),
    (0, "embeddings"): ("output", True),
    (1, "ln_1.input"): ("input", True),
    (1, "ln_1"): ("output", True),
    (1, "ln_2.input"): ("input", True),
    (1, "ln_2"): ("output", True),
    (1, "ln_f.input"): ("input", True),
    (1, "ln_f"): ("output", True),
    (2, "q"): ("output", True),
    (2, "k"): ("output", True),
    (2, "v"): ("output", True),
    (3, "keys"): ("output", True),
    (3, "values"): ("output", True),
    (3, "decode_ids"): ("input", False),
    (3, "decode_logits"): ("output", False),
    (4, "scores"): ("output", True),
    (4, "weights"): ("output", True),
    (5, "attn_output"): ("output", True),
    (6, "gelu"): ("output", True),
    (6, "mlp_output"): ("output", True),
    (7, "input"): ("input", True),
    (7, "output"): ("output", True),
    (8, "logits"): ("output", True),
    (9, "last_logits"): ("output", True),
    (10, "next_token"): ("output", True),
    (11, "probs"): ("output", True),
    (11, "probs_warped"): ("output", True),
    (11, "top_ids"): ("output", True),
    (12, "new_ids"): ("output", False),
    (12, "top2_logits"): ("evidence", False),
}

# Forward order (src/catalog.rs `forward_order`): embeddings, then block by block, then the head.
_BLOCK_ORDER = ((1, "ln_1"), (2, "q"), (2, "k"), (2, "v"), (3, "keys"), (3, "values"), (4, "scores"), (4, "weights"),
                (5, "attn_output"), (1, "ln_2"), (6, "gelu"), (6, "mlp_output"), (7, "output"))
_HEAD_ORDER = ((1, "ln_f"), (8, "logits"), (9, "last_logits"), (10, "next_token"), (11, "probs"), (11, "probs_warped"),
               (11, "top_ids"), (3, "decode_logits"), (12, "new_ids"))


def stem(checkpoint, name, layer=None, step=None):
    """The file stem of a tensor: ``stem(7, "output", layer=2) == "07_block.l02.output"``."""
    parts = [CHECKPOINTS[checkpoint]]
    if layer is not None:
        parts.append(f"l{layer:02}")
    if step is not None:
        parts.append(f"step{step}")
    parts.append(name)
    return ".".join(parts)


# ----------------------------------------------------------------------------------------------------
# Isolated mode

#: One isolated computation. ``inputs``: (argument, stem template, how) triples, where the template
#: has ``{l}`` for ``lNN``, ``{s}`` for the step and ``{p}`` for the step before, and ``how`` is
#: ``"last"`` when only the last position of the golden is fed (its axis -2); ``settings``: manifest
#: generation fields the component also takes; ``outputs``: the stems it must produce.
IsolatedRule = namedtuple("IsolatedRule", "checkpoint scope inputs settings outputs component")

#: What feeds which component in isolated mode, exactly as ``isolated_component`` in src/runner/port.rs.
#: ``scope``: ``model`` (once), ``layer`` (once per block) or ``step`` (per block and decode step 1..).
ISOLATED_INPUTS = (
    IsolatedRule(0, "model", (("ids", "00_embeddings.input_ids", None),), (),
                 ("00_embeddings.embeddings",), "wte[ids] + wpe[0..T]"),
    IsolatedRule(1, "layer", (("x", "01_layernorm.{l}.ln_1.input", None),), (),
                 ("01_layernorm.{l}.ln_1",), "block l's ln_1"),
    IsolatedRule(1, "layer", (("x", "01_layernorm.{l}.ln_2.input", None),), (),
                 ("01_layernorm.{l}.ln_2",), "block l's ln_2"),
    IsolatedRule(1, "model", (("x", "01_layernorm.ln_f.input", None),), (),
                 ("01_layernorm.ln_f",), "the final LayerNorm ln_f"),
    IsolatedRule(2, "layer", (("x", "01_layernorm.{l}.ln_1", None),), (),
                 ("02_qkv.{l}.q", "02_qkv.{l}.k", "02_qkv.{l}.v"), "c_attn, split into q, k, v [H, T, D]"),
    IsolatedRule(3, "step",
                 (("past_keys", "03_kv_cache.{l}.step{p}.keys", None),
                  ("past_values", "03_kv_cache.{l}.step{p}.values", None),
                  ("new_keys", "03_kv_cache.{l}.step{s}.keys", "last"),
                  ("new_values", "03_kv_cache.{l}.step{s}.values", "last")), (),
                 ("03_kv_cache.{l}.step{s}.keys", "03_kv_cache.{l}.step{s}.values"),
                 "append new [H, 1, D] to past [H, S-1, D] -> [H, S, D]"),
    IsolatedRule(4, "layer", (("q", "02_qkv.{l}.q", None), ("k", "02_qkv.{l}.k", None)), (),
                 ("04_attn_scores.{l}.scores", "04_attn_scores.{l}.weights"),
                 "q·kᵀ scaled and causally masked (scores), its softmax (weights) [H, T, T]"),
    IsolatedRule(5, "layer", (("weights", "04_attn_scores.{l}.weights", None), ("v", "02_qkv.{l}.v", None)), (),
                 ("05_attn_output.{l}.attn_output",), "weights·v, heads merged, c_proj [T, C]"),
    IsolatedRule(6, "layer", (("x", "01_layernorm.{l}.ln_2", None),), (),
                 ("06_ffn.{l}.gelu", "06_ffn.{l}.mlp_output"), "c_fc, gelu_new [T, 4C], c_proj [T, C]"),
    IsolatedRule(7, "layer", (("x", "07_block.{l}.input", None),), (),
                 ("07_block.{l}.output",), "the whole block"),
    IsolatedRule(8, "model", (("x", "01_layernorm.ln_f", None),), (),
                 ("08_logits.logits",), "lm_head: x·wteᵀ, no bias [T, V]"),
    IsolatedRule(9, "model", (("logits", "08_logits.logits", None),), (),
                 ("09_selected_logits.last_logits",), "the last position's logits [V]"),
    IsolatedRule(10, "model", (("logits", "09_selected_logits.last_logits", None),), (),
                 ("10_argmax.next_token",), "argmax (first index on a tie)"),
    IsolatedRule(11, "model", (("logits", "09_selected_logits.last_logits", None),), ("temperature", "top_k"),
                 ("11_softmax.probs", "11_softmax.probs_warped", "11_softmax.top_ids"),
                 "softmax; temperature, top-k filter, softmax; the top_k ids, largest first"),
    IsolatedRule(12, "model", (("ids", "00_embeddings.input_ids", None),), ("new_tokens",),
                 ("12_generation.new_ids",), "greedy generation"),
)

#: One concrete isolated computation of a golden set: a rule at a layer (and step).
IsolatedJob = namedtuple("IsolatedJob", "checkpoint layer step inputs settings outputs component")


def _expand(template, layer, step):
    values = {"l": f"l{layer:02}" if layer is not None else "", "s": step, "p": None if step is None else step - 1}
    return template.format(**values)


# ----------------------------------------------------------------------------------------------------
# Golden sets

#: One tensor of a golden set. ``name`` is the stem; ``tensor`` the catalog name (``ln_1.input``).
TensorInfo = namedtuple("TensorInfo", "name checkpoint layer step tensor shape dtype file role batched")


class GoldenSet:
    """A golden set directory: its manifest.json and the .npy files it lists.

    Attributes: ``dir``, ``manifest`` (the parsed JSON), ``name`` (``tiny-gpt2/hello``), ``config``
    (the HF config), ``n_layer``, ``prompt_text``, ``prompt_ids`` and ``decode_ids`` (lists of int),
    ``generation`` (the manifest's dict) with ``new_tokens``, ``decode_steps``, ``temperature``,
    ``top_k`` and ``new_ids`` also as attributes, and ``tensors`` (:class:`TensorInfo`, manifest order).
    """

    def __init__(self, directory):
        self.dir = Path(directory)
        self.manifest = _read_manifest(self.dir)
        m = self.manifest
        self.name = f"{m['model']['name']}/{m['prompt']['slug']}"
        self.config = m["model"]["config"]
        self.n_layer = int(self.config["n_layer"])
        self.prompt_text = m["prompt"]["text"]
        self.prompt_ids = [int(i) for i in m["prompt"]["ids"]]
        self.generation = m["generation"]
        self.new_tokens = int(self.generation["new_tokens"])
        self.decode_steps = int(self.generation["decode_steps"])
        self.temperature = float(self.generation["temperature"])
        self.top_k = int(self.generation["top_k"])
        self.new_ids = [int(i) for i in self.generation["new_ids"]]
        self.tensors = [self._info(entry) for entry in m["tensors"]]
        self._by_name = {t.name: t for t in self.tensors}
        self.decode_ids = [int(i) for i in self.golden("03_kv_cache.decode_ids")]  # HF's first greedy tokens

    def _info(self, entry):
        checkpoint, tensor = int(entry["checkpoint"]), entry["name"]
        if (checkpoint, tensor) not in CATALOG:
            raise ValueError(f"{self.dir / MANIFEST}: tensor {tensor!r} of checkpoint {checkpoint} is not in the catalog: "
                             "this module is older than the golden set")
        role, batched = CATALOG[(checkpoint, tensor)]
        layer, step = entry.get("layer"), entry.get("step")
        name = stem(checkpoint, tensor, layer, step)
        if entry["file"] != f"{name}.npy":
            raise ValueError(f"{self.dir / MANIFEST}: {name} is stored as {entry['file']!r}, expected {name}.npy")
        return TensorInfo(name, checkpoint, layer, step, tensor, tuple(int(d) for d in entry["shape"]), entry["dtype"],
                          entry["file"], role, batched)

    def __repr__(self):
        return f"GoldenSet({str(self.dir)!r}: {self.name}, {len(self.tensors)} tensors)"

    def names(self):
        """Every tensor stem of the set, in manifest order."""
        return [t.name for t in self.tensors]

    def info(self, name):
        """The :class:`TensorInfo` of a stem; ``ValueError`` naming the closest stems otherwise."""
        if name not in self._by_name:
            raise ValueError(f"{name} is not a tensor of golden set {self.name}; {_closest(name, self._by_name)}")
        return self._by_name[name]

    def shape(self, name):
        """The golden's shape, batch axis included."""
        return self.info(name).shape

    def outputs(self, mode="chained"):
        """The compared stems, in forward order (the first failure in this order is the divergence).

        ``mode="isolated"``: those computed in isolated mode: without ``03_kv_cache.decode_logits``
        (chained only) and the step-0 cache (the prompt's own k and v, not recomputed).
        """
        keys = [(0, "embeddings", None, None)]
        for layer in range(self.n_layer):
            for checkpoint, tensor in _BLOCK_ORDER:
                if checkpoint == 3:
                    keys += [(3, tensor, layer, s) for s in range(self.decode_steps + 1)]
                else:
                    keys.append((checkpoint, tensor, layer, None))
        keys += [(checkpoint, tensor, None, None) for checkpoint, tensor in _HEAD_ORDER]
        names = [stem(c, t, l, s) for c, t, l, s in keys]
        if mode == "isolated":
            names = [n for n in names if n != "03_kv_cache.decode_logits" and ".step0." not in n]
        elif mode != "chained":
            raise ValueError(f"mode {mode!r}: 'chained' or 'isolated'")
        return [n for n in names if n in self._by_name]

    def golden(self, name, batch=True):
        """HF's value of a tensor (float32, or int64 for ids), checked against the manifest.

        ``batch=False`` drops HF's leading batch axis of 1: the single-sequence shape a port works in.
        """
        info = self.info(name)
        path = self.dir / info.file
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the golden ({e})") from None
        expected_dtype = np.float32 if info.dtype == "f32" else np.int64
        if array.shape != info.shape or array.dtype != expected_dtype:
            raise ValueError(f"{path}: {array.dtype} {array.shape}, the manifest says {info.dtype} {info.shape}")
        return array[0] if info.batched and not batch else array

    def model_dir(self, root="."):
        """The directory of the model the goldens come from: manifest model.source, resolved against
        ``root`` (the repository) when relative. ``ValueError`` if it is not a local directory."""
        source = self.manifest["model"]["source"]
        path = Path(source) if os.path.isabs(source) else Path(root) / source
        if not path.is_dir():
            raise ValueError(f"model {source!r} of {self.name} is not a directory under {root}: pass the model directory")
        return str(path)

    def isolated_jobs(self):
        """Every isolated computation of this set (:data:`ISOLATED_INPUTS` at each layer and step),
        as :class:`IsolatedJob` with concrete stems."""
        jobs = []
        for rule in ISOLATED_INPUTS:
            layers = [None] if rule.scope == "model" else range(self.n_layer)
            steps = range(1, self.decode_steps + 1) if rule.scope == "step" else [None]
            for layer in layers:
                for step in steps:
                    inputs = tuple((arg, _expand(t, layer, step), how) for arg, t, how in rule.inputs)
                    outputs = tuple(_expand(t, layer, step) for t in rule.outputs)
                    jobs.append(IsolatedJob(rule.checkpoint, layer, step, inputs, rule.settings, outputs, rule.component))
        return jobs

    def isolated_inputs(self, job):
        """The arguments of an isolated job: ``{argument: golden array without its batch axis}``
        (only the last position where the rule says so), plus the manifest settings it takes."""
        args = {}
        for arg, name, how in job.inputs:
            array = self.golden(name, batch=False)
            args[arg] = array[..., -1:, :] if how == "last" else array
        for setting in job.settings:
            args[setting] = getattr(self, setting)
        return args


def _read_manifest(directory):
    path = directory / MANIFEST
    if not path.is_file():
        hint = " (it has manifest.yaml: convert it to JSON with the same structure)" if (directory / "manifest.yaml").is_file() else ""
        raise ValueError(f"{path} does not exist{hint}: pass a golden set directory, fixtures/goldens/<model>/<prompt>")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    for key in ("format_version", "model", "prompt", "generation", "tensors"):
        if key not in manifest:
            raise ValueError(f"{path} has no {key!r}: not a golden set manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']}, this module reads {FORMAT_VERSION}")
    return manifest


def _closest(name, names):
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f"closest: {', '.join(close)}" if close else f"names look like {next(iter(names), '?')}"


# ----------------------------------------------------------------------------------------------------
# Taps


class TapWriter:
    """Writes a port's taps as ``<out_dir>/<stem>.npy``, checking each against its golden.

    ``write(name, array)`` refuses (one-line ``ValueError``) a name the golden set does not have, a
    shape other than the golden's (the single-sequence shape without HF's leading batch axis of 1
    is accepted and the axis added), a float tensor that is not float32/float64 or holds NaN/Inf
    (masked attention scores may be -inf), ids that are not integers in the vocabulary. Floats are
    stored as float32 and ids as int64, each file atomically (a temporary file, then a rename).

    ``missing()`` lists the compared tensors not written yet, in forward order. ``isolated`` is the
    writer of isolated-mode outputs, the same names under ``<out_dir>/isolated/``.

    Masked attention scores may hold any mask value (-inf, finfo.min, -1e10): the positions HF
    masks are not compared.

    ``fresh=True`` (the default) first deletes the tap files an earlier run left in ``out_dir`` and
    ``out_dir/isolated`` (only ``.npy`` files named after the set's tensors), so that the directory
    holds only this run's taps.
    """

    def __init__(self, out_dir, golden_set, fresh=True, mode="chained"):
        self.dir = Path(out_dir)
        self.golden_set = golden_set
        self.mode = mode
        self.written = []
        self._fresh = fresh
        self._isolated = None
        if (self.dir / MANIFEST).exists() or self.dir.resolve() == golden_set.dir.resolve():
            raise ValueError(f"{self.dir} holds a golden set: write the taps to a directory of their own")
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            _remove_taps(self.dir, golden_set)
            if mode == "chained":
                _remove_taps(self.dir / "isolated", golden_set)

    @property
    def isolated(self):
        """The writer of isolated-mode outputs, ``<out_dir>/isolated/``."""
        if self.mode != "chained":
            raise ValueError("an isolated writer has no isolated writer of its own")
        if self._isolated is None:
            self._isolated = TapWriter(self.dir / "isolated", self.golden_set, fresh=self._fresh, mode="isolated")
        return self._isolated

    def expected(self):
        """The compared stems this writer should receive, in forward order."""
        return self.golden_set.outputs(self.mode)

    def missing(self):
        """The expected stems not written yet, in forward order."""
        done = set(self.written)
        return [n for n in self.expected() if n not in done]

    def write(self, name, array):
        """Checks ``array`` against golden ``name`` and writes it; returns the file's path."""
        info = self.golden_set.info(name)
        if self.mode == "isolated" and name not in self.expected():
            raise ValueError(f"{name} is not an isolated-mode output: {_why_not_isolated(info)}")
        array = _checked(info, array, self.golden_set.config.get("vocab_size"))
        path = self.dir / info.file
        _save_atomically(path, array)
        if name not in self.written:
            self.written.append(name)
        return path


def _why_not_isolated(info):
    if info.role != "output":
        return f"it is a golden {info.role}, never compared"
    if info.tensor == "decode_logits":
        return "decode logits need the whole model, write them with the chained writer"
    return "the step-0 cache is the prompt's own k and v, not recomputed in isolation"


def _checked(info, value, vocab_size):
    """``value`` as the array to store for ``info``: the golden's shape and dtype, or ValueError."""
    array = np.asarray(value)
    array = _with_shape(info, array)
    if info.dtype == "i64":
        return _checked_ids(info, array, vocab_size)
    return _checked_floats(info, array)


def _with_shape(info, array):
    if array.shape == info.shape:
        return array
    if info.batched and array.shape == info.shape[1:]:
        return array[np.newaxis]
    single = f" (or {info.shape[1:]} without the batch axis)" if info.batched else ""
    raise ValueError(f"{info.name}: shape {array.shape}, the golden is {info.shape}{single}")


def _checked_ids(info, array, vocab_size):
    if array.dtype.kind not in "iu":
        raise ValueError(f"{info.name}: dtype {array.dtype}, token ids must be integers")
    if array.size and (array.min() < 0 or (vocab_size and array.max() >= vocab_size)):
        raise ValueError(f"{info.name}: ids {array.min()}..{array.max()} outside the vocabulary 0..{vocab_size - 1}")
    return array.astype(np.int64)


def _checked_floats(info, array):
    if array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{info.name}: dtype {array.dtype}, expected float32 or float64")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if info.tensor == "scores":
        bad &= array != -np.inf  # -inf is a masked position
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{info.name}: {int(bad.sum())} of {array.size} values are NaN or infinite (in float32), "
                         f"first at index {first}: {array[first]}")
    return array


def _save_atomically(path, array):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_taps(directory, golden_set):
    if not directory.is_dir():
        return
    for info in golden_set.tensors:
        path = directory / info.file
        if path.is_file():
            path.unlink()


# ----------------------------------------------------------------------------------------------------
# safetensors

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path):
    """The tensors of a .safetensors file as ``{name: np.ndarray}`` (numpy only, no torch).

    Layout: an 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape,
    data_offsets: [begin, end]}, "__metadata__": {...}}``, then the raw little-endian data, offsets
    counted from its start. Arrays are read-only views of a memory map (BF16 is widened to float32).
    """
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ValueError(f"{path}: {data.size} bytes, too short for a safetensors file")
    header_len = int(data[:8].view("<u8")[0])
    if header_len > data.size - 8:
        raise ValueError(f"{path}: header of {header_len} bytes in a {data.size}-byte file: not a safetensors file")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: malformed safetensors header ({e})") from None
    body = data[8 + header_len :]
    return {name: _tensor(path, name, spec, body) for name, spec in header.items() if name != "__metadata__"}


def _tensor(path, name, spec, body):
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: tensor {name} has dtype {spec['dtype']}, which this reader does not support")
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
    shape = tuple(spec["shape"])
    begin, end = spec["data_offsets"]
    if not 0 <= begin <= end <= body.size or end - begin != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: tensor {name} {spec['dtype']} {list(shape)} has data_offsets {[begin, end]} "
                         f"that do not fit it (data is {body.size} bytes)")
    array = body[begin:end].view(dtype).reshape(shape)
    if spec["dtype"] == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


# ----------------------------------------------------------------------------------------------------


def _describe(directory):
    """``python gpt2_checkpoints.py SET_DIR``: what a golden set holds and what isolated mode feeds."""
    gs = GoldenSet(directory)
    print(f"{gs.name}: prompt {gs.prompt_text!r} = {gs.prompt_ids}, {gs.n_layer} layers")
    print(f"generation: {gs.new_tokens} greedy tokens {gs.new_ids}, decode_ids {gs.decode_ids}, "
          f"temperature {gs.temperature}, top_k {gs.top_k}")
    print(f"{len(gs.outputs())} compared tensors chained, {len(gs.outputs('isolated'))} isolated:")
    for name in gs.outputs():
        print(f"  {name:40} {list(gs.shape(name))}")
    print("isolated mode:")
    for rule in ISOLATED_INPUTS:
        inputs = " + ".join(t + (" (last position)" if how else "") for _, t, how in rule.inputs)
        extra = "".join(f" + {s}" for s in rule.settings)
        print(f"  {CHECKPOINTS[rule.checkpoint]:18} {inputs}{extra} -> {', '.join(rule.outputs)}: {rule.component}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python gpt2_checkpoints.py GOLDEN_SET_DIR")
    _describe(sys.argv[1])
