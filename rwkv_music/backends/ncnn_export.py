"""Export an RWKV checkpoint (v4, v5.0/5.1/5.2, v6, v7, v7a) to ncnn: ``.param``, ``.bin`` and a JSON sidecar.

Why the ``.param`` is written directly (not through pnnx): the text format is a list of stock
layers with numbered parameters, and the ``.bin`` is their weights in order (see
:mod:`rwkv_music.backends.ncnn_graph`), so writing them from numpy is short, needs neither torch
tracing nor another package, keeps stable blob names for the states, and makes the graph an
independent re-implementation of docs/formats.md A7 that the tests check against the torch backend.

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

import numpy as np

from rwkv_music.backends.export_weights import Weights, read_checkpoint
from rwkv_music.backends.ncnn_graph import NcnnGraph
from rwkv_music.backends.sidecar import (
    LOGITS,
    NCNN_STORAGES,
    PACKED,
    TOKEN,
    ncnn_paths,
    ncnn_segments,
    ncnn_sidecar,
    verify_export,
)
from rwkv_music.errors import CheckpointError, OptionError, OutputExistsError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

STORAGES = NCNN_STORAGES  # weight storage: "fp32", "fp16", "int8"
QUANTIZATION = {
    "int8": "codebook8: one 256-entry float32 table per large matrix, uint8 indices, expanded by ncnn at load",
}


def _block_builder(cfg: RWKVConfig) -> Any:
    """The per-layer graph function of ``cfg.version`` (dispatch once)."""
    from rwkv_music.backends import ncnn_graph_v4, ncnn_graph_v5, ncnn_graph_v7

    return {4: ncnn_graph_v4.block, 5: ncnn_graph_v5.block_v5, 6: ncnn_graph_v5.block_v6,
            7: ncnn_graph_v7.block}[cfg.version.family]


def build_graph(state_dict: dict[str, Any], cfg: RWKVConfig, dtype: str = "fp32",
                source: str = "<state dict>") -> tuple[NcnnGraph, list[dict[str, Any]]]:
    """The ncnn graph of a checked raw checkpoint and the layout of its packed output."""
    from rwkv_music.backends.ncnn_graph_v4 import head

    if dtype not in STORAGES:
        raise OptionError(f"dtype must be one of {', '.join(STORAGES)}, got {dtype!r}")
    w = Weights(state_dict, source)
    g = NcnnGraph(dtype)
    token = g.input(TOKEN)
    ctx: dict[str, Any] = {"token": token}
    x = g.embed(token, w.embedding().astype(np.float32))  # ln0 folded in (A6)
    block = _block_builder(cfg)
    for i in range(cfg.n_layer):
        x = block(g, w, cfg, i, x, ctx)
    head(g, w, x, LOGITS)
    for i in range(cfg.n_layer):  # known, deliberately unused (state tuning goes to the .state.npz)
        w.skip(f"blocks.{i}.att.time_state")
    unused = w.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} key(s) this exporter does not know, first {unused[0]!r}")

    segments = ncnn_segments(cfg)
    shapes = state_shapes(cfg, 1)
    parts = [LOGITS]
    for seg in segments[1:]:  # flatten the [B, H, N, N] state blobs to rows before the concat
        size = seg["size"]
        parts.append(g.reshape(seg["name"], [-1, size]) if len(shapes[seg["state"]][0]) > 3 else seg["name"])
    g.concat_cols(parts, PACKED)
    return g, segments


def initial_state(state_dict: dict[str, Any], cfg: RWKVConfig) -> State | None:
    """v6 state tuning: the checkpoint's ``time_state`` as the initial State, or ``None``."""
    kv = Weights(state_dict, "").initial_kv(cfg)
    if kv is None:
        return None
    tensors = State.zeros(cfg, 1).tensors
    tensors["att_kv"] = kv
    return State(cfg.version, tensors)


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
        raise OptionError(f"dtype must be one of {', '.join(STORAGES)}, got {dtype!r}")
    paths = ncnn_paths(out_prefix)
    if not force:
        for p in paths.values():
            if p.exists():
                raise OutputExistsError(f"{p}: exists; pass force=True (--force) to overwrite")
    sd, cfg, source = read_checkpoint(checkpoint)
    g, _ = build_graph(sd, cfg, dtype, source)
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
    meta = ncnn_sidecar(cfg, dtype, QUANTIZATION.get(dtype), g.counts(), files, source)
    paths["state"].unlink(missing_ok=True)
    init = initial_state(sd, cfg)
    if init is not None:
        init.save(paths["state"], cfg)
        meta["initial_state"] = paths["state"].name
    paths["sidecar"].write_text(json.dumps(meta, indent=2) + "\n")
    verify_export(paths["param"], list(paths.values()), "ncnn")
    log.info("exported %s (v%s, %s, %d layers, %.1f MB of weights)", paths["param"], cfg.version, dtype,
             sum(meta["layers"].values()), size / 2**20)
    return paths["param"]

