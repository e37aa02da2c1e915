"""Export an RWKV checkpoint (v4, v5.0/5.1/5.2, v6, v7, v7a) to ncnn: ``.param``, ``.bin`` and a JSON sidecar.

Why the ``.param`` is written directly (not through pnnx): the text format is a list of stock
layers with numbered parameters, and the ``.bin`` is their weights in order (see
:mod:`rwkv_music.backends.ncnn_graph`), so writing them from numpy is short, needs neither torch
tracing nor another package, keeps stable blob names for the states, and makes the graph an
independent re-implementation of FORMATS.md A7 that the tests check against the torch backend.

Graph design: **one token for a batch of B rows** (no loop layer exists in stock ncnn, so the
runtime feeds a sequence token by token).  Every activation is ``[B, C]``; per-head work is
``[B, H, N]`` / ``[B, H, N, N]``; B is read from the inputs at run time.  The embedding lookup
is an Embed layer inside the graph (not numpy in the runtime), so the ``.bin`` is the only weight
file, the table can be stored fp16 or 8-bit like the matrices, and v7a's per-layer DeepEmbed
tables work the same way.  Layers used:
Input, Embed (token → row, LN0 folded in; v7a's DeepEmbed table too), LayerNorm (ln1/ln2/ln_out
and, without affine over each head's N values, the ln_x GroupNorm), InnerProduct (projections,
head, LoRAs), BinaryOp / UnaryOp / Sigmoid / TanH / ReLU / Swish (elementwise math), MemoryData
(per-channel constants as ``[1, C]`` rows, v5 decays as ``[1, H, N, 1]``), Reshape, MatMul
(per-head state products), Reduction (per-head sums and norms), Slice (v6 LoRA), Concat, Split.

Blobs: ``token`` (int32 ids, [B]); per layer i the state inputs ``in_<name>_<i>`` and outputs
``out_<name>_<i>`` with the :class:`~rwkv_music.model.state.State` names (``att_x``, ``att_kv``,
``ffn_x``; v4 ``att_x``, ``att_a``, ``att_b``, ``att_p``, ``ffn_x``) and one row per batch row,
S oriented as in state.py; ``logits`` [B, V]; ``out_all`` [B, V + Σ state sizes], the logits and
every new state flattened per row and concatenated, so the runtime extracts one blob per step.

Storage (``dtype``): "fp32"; "fp16" (every matrix and embedding tagged float16, about half the
file); "int8" (each large matrix divided by its per-row RMS and stored as an 8-bit codebook that
ncnn expands at load, the row scales applied by a BinaryOp after the InnerProduct; embeddings get
a codebook too; LoRAs stay fp32; see :mod:`rwkv_music.backends.ncnn_quant`).  Biases, norms and
constants are always fp32.  Independently, ``load(..., fp16=True)`` runs with ncnn's fp16 storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from rwkv_music.backends import ncnn as rt
from rwkv_music.backends.ncnn_graph import LN_EPS, STORAGES, NcnnGraph
from rwkv_music.errors import CheckpointError, OutputExistsError, RwkvMusicError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

QUANTIZATION = {
    "int8": "codebook8: one 256-entry float32 table per large matrix, uint8 indices, expanded by ncnn at load",
}


class CheckpointWeights:
    """A raw checkpoint as float32 numpy arrays (``[1,1,C]`` squeezed), recording which keys were read."""

    def __init__(self, state_dict: dict[str, Any], source: str) -> None:
        self._sd = state_dict
        self._used: set[str] = set()
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._sd

    def get(self, key: str) -> np.ndarray:
        if key not in self._sd:
            raise CheckpointError(f"{self.source}: missing key {key!r}")
        self._used.add(key)
        value = self._sd[key]
        if type(value).__module__.split(".")[0] == "torch":
            value = value.detach().float().cpu().numpy()
        arr = np.asarray(value, dtype=np.float32)
        return np.squeeze(arr) if arr.ndim > 1 else arr

    def skip(self, key: str) -> None:
        """Mark a key as known but unused (v7 layer 0's v0/v1/v2)."""
        if key in self._sd:
            self._used.add(key)

    def unused(self) -> list[str]:
        return sorted(k for k in self._sd if k not in self._used)


def layer_norm_np(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis, in float64 (to fold ``ln0`` into the embedding, A6)."""
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + LN_EPS) * weight + bias).astype(np.float32)


def _block_builder(cfg: RWKVConfig) -> Any:
    """The per-layer graph function of ``cfg.version`` (dispatch once)."""
    from rwkv_music.backends import ncnn_graph_v4, ncnn_graph_v5, ncnn_graph_v7

    return {4: ncnn_graph_v4.block, 5: ncnn_graph_v5.block_v5, 6: ncnn_graph_v5.block_v6,
            7: ncnn_graph_v7.block}[cfg.version.family]


def build_graph(state_dict: dict[str, Any], cfg: RWKVConfig, dtype: str = "fp32",
                source: str = "<state dict>") -> tuple[NcnnGraph, list[dict[str, Any]]]:
    """The ncnn graph of a checked raw checkpoint and the layout of its packed output."""
    from rwkv_music.backends.ncnn_graph_v4 import head, state_out

    if dtype not in STORAGES:
        raise ValueError(f"dtype must be one of {', '.join(STORAGES)}, got {dtype!r}")
    w = CheckpointWeights(state_dict, source)
    g = NcnnGraph(dtype)
    token = g.input(rt.TOKEN)
    emb = layer_norm_np(w.get("emb.weight"), w.get("blocks.0.ln0.weight"), w.get("blocks.0.ln0.bias"))  # A6 fold
    ctx: dict[str, Any] = {"token": token, "emb_folded": emb}
    x = g.embed(token, emb)
    block = _block_builder(cfg)
    for i in range(cfg.n_layer):
        x = block(g, w, cfg, i, x, ctx)
    head(g, w, x, rt.LOGITS)
    for i in range(cfg.n_layer):  # known, deliberately unused (state tuning goes to the .state.npz)
        w.skip(f"blocks.{i}.att.time_state")
    unused = w.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} key(s) this exporter does not know, first {unused[0]!r}")

    segments = [{"name": rt.LOGITS, "offset": 0, "size": cfg.vocab_size}]
    parts = [rt.LOGITS]
    offset = cfg.vocab_size
    for name, (shape, _) in state_shapes(cfg, 1).items():
        size = int(np.prod(shape[2:]))
        for i in range(cfg.n_layer):
            blob = state_out(name, i)
            parts.append(g.reshape(blob, [-1, size]) if len(shape) > 3 else blob)
            segments.append({"name": blob, "state": name, "layer": i, "offset": offset, "size": size})
            offset += size
    g.concat_cols(parts, rt.PACKED)
    return g, segments


def initial_state(state_dict: dict[str, Any], cfg: RWKVConfig) -> State | None:
    """v6 state tuning: ``time_state`` [H,N,N] (S[value, key]) per layer → the initial State
    (``att_kv`` transposed to the v5/v6 S[key, value] layout, as the rwkv package does; A6/A8)."""
    keys = [f"blocks.{i}.att.time_state" for i in range(cfg.n_layer)]
    if cfg.version != "6" or keys[0] not in state_dict:
        return None
    w = CheckpointWeights(state_dict, "")
    kv = np.stack([w.get(k).reshape(cfg.n_head, cfg.head_size, cfg.head_size) for k in keys])
    tensors = State.zeros(cfg, 1).tensors
    tensors["att_kv"] = np.ascontiguousarray(kv.transpose(0, 1, 3, 2)[:, None])
    return State(cfg.version, tensors)


def sidecar(cfg: RWKVConfig, dtype: str, g: NcnnGraph, segments: list[dict[str, Any]], files: dict[str, Any],
            source: str | None) -> dict[str, Any]:
    """The JSON written next to the graph: everything the runtime needs, readable without torch."""
    state = {}
    for name, (shape, _) in state_shapes(cfg, 1).items():
        entry = {
            "inputs": [f"in_{name}_{i}" for i in range(cfg.n_layer)],
            "outputs": [f"out_{name}_{i}" for i in range(cfg.n_layer)],
            "shape": ["batch", *shape[2:]],
            "dtype": "float32",
            "init": -1e30 if name == "att_p" else 0.0,
        }
        if name == "att_kv":
            entry["orientation"] = "S[h, value i, key j]" if cfg.version.family == 7 else "S[h, key j, value i]"
        state[name] = entry
    return {
        "format": rt.SIDECAR_FORMAT,
        "version": str(cfg.version),
        "config": cfg.to_dict(),
        "vocab_size": cfg.vocab_size,
        "tokenizer": rt.TOKENIZER_BY_VOCAB.get(cfg.vocab_size),
        "dtype": dtype,
        "quantization": QUANTIZATION.get(dtype),
        "source": source,
        "files": files,
        "inputs": {rt.TOKEN: {"dtype": "int32", "shape": ["batch"], "note": "one token per row"}},
        "outputs": {rt.LOGITS: {"dtype": "float32", "shape": ["batch", cfg.vocab_size]},
                    rt.PACKED: {"dtype": "float32", "shape": ["batch", segments[-1]["offset"] + segments[-1]["size"]],
                                "segments": segments}},
        "state": state,
        "layers": g.counts(),
    }


def read_checkpoint(checkpoint: Any) -> tuple[dict[str, Any], RWKVConfig, str]:
    """``(state_dict, config, source)`` of a checkpoint path or a raw state dict, fully checked."""
    from rwkv_music.model.checkpoint import inspect_state_dict, load_state_dict

    if isinstance(checkpoint, (str, os.PathLike)):
        return load_state_dict(checkpoint)
    return checkpoint, inspect_state_dict(checkpoint, "<state dict>"), "<state dict>"


def export(checkpoint: Any, out_prefix: str | os.PathLike, dtype: str = "fp32", *, force: bool = False) -> Path:
    """Write ``PREFIX.param``, ``PREFIX.bin`` and ``PREFIX.json`` (and ``PREFIX.state.npz`` for state-tuned v6).

    Args:
        checkpoint: a BlinkDL checkpoint file, or a raw state dict (torch tensors or numpy arrays).
        out_prefix: output path without extension (a trailing ``.param`` is accepted and dropped).
        dtype: weight storage, "fp32", "fp16" or "int8" (module docstring).
        force: overwrite existing outputs.

    Returns:
        The path of the ``.param`` file (what ``load_model(..., backend="ncnn")`` takes).

    >>> import pathlib, tempfile
    >>> from rwkv_music.model.factory import save_random_checkpoint
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> param = export(save_random_checkpoint(tmp / "tiny.pth", "7"), tmp / "tiny")
    >>> param.name, sorted(p.suffix for p in tmp.iterdir())
    ('tiny.param', ['.bin', '.json', '.param', '.pth'])
    >>> from rwkv_music.backends.ncnn import load
    >>> logits, state = load(param, num_threads=1).forward([[2, 83, 58]])
    >>> logits.shape, state.batch_size
    ((1, 128), 1)
    """
    if dtype not in STORAGES:
        raise ValueError(f"dtype must be one of {', '.join(STORAGES)}, got {dtype!r}")
    paths = rt.prefix_paths(out_prefix)
    if not force:
        for p in paths.values():
            if p.exists():
                raise OutputExistsError(f"{p}: exists; pass force=True (--force) to overwrite")
    sd, cfg, source = read_checkpoint(checkpoint)
    g, segments = build_graph(sd, cfg, dtype, source)
    text = g.param_text()
    paths["param"].parent.mkdir(parents=True, exist_ok=True)
    paths["sidecar"].unlink(missing_ok=True)  # a half-written export must not look complete
    paths["param"].write_text(text)
    size = 0
    with open(paths["bin"], "wb") as fh:
        for chunk in g.weight_chunks():
            fh.write(chunk)
            size += len(chunk)
    files = {"param": paths["param"].name, "bin": paths["bin"].name,
             "param_sha256": hashlib.sha256(text.encode()).hexdigest(), "bin_bytes": size}
    meta = sidecar(cfg, dtype, g, segments, files, source)
    paths["state"].unlink(missing_ok=True)
    init = initial_state(sd, cfg)
    if init is not None:
        init.save(paths["state"], cfg)
        meta["initial_state"] = paths["state"].name
    paths["sidecar"].write_text(json.dumps(meta, indent=2) + "\n")
    log.info("exported %s (v%s, %s, %d layers, %.1f MB of weights)", paths["param"], cfg.version, dtype,
             sum(meta["layers"].values()), size / 2**20)
    return paths["param"]


@click.command("export-ncnn")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_prefix", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(STORAGES), default="fp32", show_default=True,
              help="Weight storage: fp32, fp16, or int8 (8-bit codebook per matrix, expanded at load).")
@click.option("--force", is_flag=True, help="Overwrite OUT_PREFIX.param/.bin/.json.")
def export_ncnn(checkpoint: str, out_prefix: str, dtype: str, force: bool) -> None:
    """Export CHECKPOINT to OUT_PREFIX.param/.bin/.json for `--backend ncnn --model OUT_PREFIX.param`."""
    try:
        path = export(checkpoint, out_prefix, dtype, force=force)
    except RwkvMusicError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    paths = rt.prefix_paths(path)
    click.echo(f"wrote {paths['param']}, {paths['bin']} and {paths['sidecar']}")
