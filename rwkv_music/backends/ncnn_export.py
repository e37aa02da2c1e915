"""Export an RWKV checkpoint (v4, v5.0/5.1/5.2, v6, v7, v7a) to ncnn: ``.param``, ``.bin`` and a JSON sidecar.

Why the ``.param`` is written directly (not through pnnx): the text format is a list of stock
layers with numbered parameters, and the ``.bin`` is their weights in order (see
:mod:`rwkv_music.backends.ncnn_graph`), so writing them from numpy is short, needs neither torch
tracing nor another package, keeps stable blob names for the states, and makes the graph an
independent re-implementation of docs/formats.md A7 that the tests check against the torch backend.

Graph design: **one token for a batch of B rows**.  Every activation is ``[B, C]``; per-head work is
``[B, H, N]`` / ``[B, H, N, N]``; B is read from the inputs at run time.  Stock ncnn has no loop
layer, so prompts get a second graph, ``PREFIX.seq.param`` (``prefill_chunk`` T tokens per call,
default 16): activations are ``[B·T, C]`` (row b·T + t), so the embeddings, norms, token-shift mixes
and every projection run once for all T tokens, the token shift is a Slice/Concat along time, and
only the recurrence is unrolled T times (Slice per step, Concat back).  It has the step graph's
weighted layers in the same order, so both read the one ``.bin`` (checked at export).  The embedding lookup
is an Embed layer inside the graph (not numpy in the runtime), so the ``.bin`` is the only weight
file, the table can be stored fp16 or 8-bit like the matrices, and v7a's per-layer DeepEmbed
tables work the same way.  Layers used:
Input, Embed (token → row, LN0 folded in; v7a's DeepEmbed table too), LayerNorm (ln1/ln2/ln_out
and, without affine over each head's N values, the ln_x GroupNorm), InnerProduct (projections,
head, LoRAs), BinaryOp / UnaryOp / Sigmoid / TanH / ReLU / Swish (elementwise math), MemoryData
(per-channel constants as ``[1, C]`` rows, v5 decays as ``[1, H, N, 1]``), Reshape, MatMul
(per-head state products), Reduction (per-head sums and norms), Slice (v6 LoRA; time steps),
Concat, Split.

Blobs: ``token`` (int32 ids, [B]); per layer i the state inputs ``in_<name>_<i>`` and outputs
``out_<name>_<i>`` with the :class:`~rwkv_music.model.state.State` names (``att_x``, ``att_kv``,
``ffn_x``; v4 ``att_x``, ``att_a``, ``att_b``, ``att_p``, ``ffn_x``) and one row per batch row,
S oriented as in state.py; ``logits`` [B, V]; ``out_all`` [B, V + Σ state sizes], the logits and
every new state flattened per row and concatenated, so the runtime extracts one blob per step.
The prefill graph takes B·T ids and packs ``[B, T·V + Σ state sizes]`` (logits of every step first).

Storage (``dtype``): "fp32"; "fp16" (every matrix and embedding tagged float16, about half the
file); "int8": weight-only, activations float.  ``int8_scheme="rows"`` (default) stores each large
matrix as symmetric int8 with one scale per output row, the torch backend's int8 grid, in ncnn's
8-bit codebook format with the integers as levels (ncnn expands it at load), the row scales
applied by a BinaryOp after the InnerProduct; embeddings fp16 (torch int8 keeps them float); LoRAs
fp32.  ``int8_scheme="codebook"`` is the older variant: a fitted 256-level table per matrix of the
RMS-normalised rows, embeddings too (see :mod:`rwkv_music.backends.ncnn_quant`).  Why not ncnn's
own int8 layers: InnerProduct's int8 path quantises the input with a static per-layer scale, and
Gemm's weight-block quantisation (quantize_term 8xx, in the 20261020 wheel) rounds each input row
to int8 too (measured: its output equals per-row int8 activations × the int8 weights), so neither
keeps activations float.  Biases, norms and
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
from rwkv_music.errors import CheckpointError, ExportError, OptionError, OutputExistsError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

STORAGES = NCNN_STORAGES  # weight storage: "fp32", "fp16", "int8"
# Tokens per call of the prefill graph (the runtime feeds any remainder step by step).  Measured on one
# thread: 16 gives 4-8x the token loop's prompt tok/s on L12 D768 v5.2/v7 (fp32 and int8); per-token
# time grows again past ~32 (L2 D256 v7: 0.17 ms/token at 32, 0.58 at 128), so long chunks do not pay.
PREFILL_CHUNK = 16
MAX_PREFILL_CHUNK = 64  # the graph grows linearly with it (the recurrence is unrolled)
INT4_REFUSAL = ("dtype 'int4' is not available for ncnn: stock ncnn has no int4 matrix product; "
                "use int8 (export-ncnn --dtype int8) or the torch backend's int4")
INT8_SCHEMES = ("rows", "codebook")  # rwkv_music.backends.ncnn_quant.SCHEMES; "rows" is the default
QUANTIZATION = {  # sidecar "quantization" of an int8 export, per scheme
    "rows": "int8-rows: symmetric int8 per output row (as torch int8), stored in ncnn's 8-bit codebook "
            "format with integer levels, expanded by ncnn at load; activations float",
    "codebook": "codebook8: one 256-entry float32 table per large matrix, uint8 indices, expanded by ncnn at load",
}


def _check_scheme(dtype: str, int8_scheme: str) -> None:
    if dtype not in STORAGES:
        raise OptionError(f"dtype must be one of {', '.join(STORAGES)}, got {dtype!r}")
    if int8_scheme not in INT8_SCHEMES:
        raise OptionError(f"int8_scheme must be one of {', '.join(INT8_SCHEMES)}, got {int8_scheme!r}")


def _block_builder(cfg: RWKVConfig) -> Any:
    """The per-layer graph function of ``cfg.version`` (dispatch once)."""
    from rwkv_music.backends import ncnn_graph_v4, ncnn_graph_v5, ncnn_graph_v7

    return {4: ncnn_graph_v4.block, 5: ncnn_graph_v5.block_v5, 6: ncnn_graph_v5.block_v6,
            7: ncnn_graph_v7.block}[cfg.version.family]


def build_graph(state_dict: dict[str, Any], cfg: RWKVConfig, dtype: str = "fp32",
                source: str = "<state dict>", int8_scheme: str = "rows",
                seq_len: int = 1) -> tuple[NcnnGraph, list[dict[str, Any]]]:
    """The ncnn graph of a checked raw checkpoint and the layout of its packed output.

    ``seq_len`` T > 1 builds the prefill graph: ``token`` holds B·T ids (row-major [B, T]), ``logits``
    is [B·T, V] and the packed output [B, T·V + Σ state sizes] (the segments' offsets move by (T-1)·V).
    Its weighted layers come in the same order with the same buffers, so it reads the same ``.bin``.
    """
    from rwkv_music.backends.ncnn_graph_v4 import head

    if dtype == "int4":
        raise OptionError(INT4_REFUSAL)
    _check_scheme(dtype, int8_scheme)
    w = Weights(state_dict, source)
    g = NcnnGraph(dtype, int8_scheme, seq_len)
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
    parts = [LOGITS if seq_len == 1 else g.reshape(LOGITS, [-1, seq_len * cfg.vocab_size])]
    for seg in segments[1:]:  # flatten the [B, H, N, N] state blobs to rows before the concat
        size = seg["size"]
        parts.append(g.reshape(seg["name"], [-1, size]) if len(shapes[seg["state"]][0]) > 3 else seg["name"])
    g.concat_cols(parts, PACKED)
    return g, segments


def _write_prefill_graph(sd: dict[str, Any], cfg: RWKVConfig, dtype: str, source: str, int8_scheme: str,
                         chunk: int, path: Path, weights_sha256: bytes) -> dict[str, Any]:
    """Write the T-token graph; its weight stream must be the step graph's, byte for byte."""
    g, _ = build_graph(sd, cfg, dtype, source, int8_scheme, seq_len=chunk)
    digest = hashlib.sha256()
    for part in g.weight_chunks():
        digest.update(part)
    if digest.digest() != weights_sha256:  # a layer with weights inside a per-step loop, or a reordering
        raise ExportError(f"{path}: the prefill graph's weights differ from the step graph's (exporter bug)")
    text = g.param_text()
    path.write_text(text)
    return {"param": path.name, "param_sha256": hashlib.sha256(text.encode()).hexdigest(), "chunk": chunk,
            "layers": sum(g.counts().values())}


def _verify_prefill(param: Path, written: list[Path], chunk: int) -> None:
    """The prefill graph runs and gives the step graph's logits (else nothing is kept)."""
    from rwkv_music.backends.ncnn import load

    try:
        model = load(param, threads=1)
        ids = np.arange(chunk, dtype=np.int64)[None] % model.config.vocab_size
        fast, _ = model.forward(ids, all_logits=True)
        model.prefill = False
        slow, _ = model.forward(ids, all_logits=True)
        if not np.isfinite(fast).all() or np.abs(fast - slow).max() > 1e-2 * max(1.0, float(np.abs(slow).max())):
            raise ExportError("its logits differ from the step graph's")
    except Exception as exc:  # whatever ncnn or the check raises: the export is not usable
        for p in written:
            p.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{param}: the prefill graph does not run in ncnn ({first}); nothing was kept") from None


def initial_state(state_dict: dict[str, Any], cfg: RWKVConfig) -> State | None:
    """v6 state tuning: the checkpoint's ``time_state`` as the initial State, or ``None``."""
    kv = Weights(state_dict, "").initial_kv(cfg)
    if kv is None:
        return None
    tensors = State.zeros(cfg, 1).tensors
    tensors["att_kv"] = kv
    return State(cfg.version, tensors)


def export(checkpoint: Any, out_prefix: str | os.PathLike, dtype: str = "fp32", *, force: bool = False,
           int8_scheme: str = "rows", prefill_chunk: int = PREFILL_CHUNK) -> Path:
    """Write ``PREFIX.param``, ``PREFIX.bin`` and ``PREFIX.json`` (and ``PREFIX.state.npz`` for state-tuned v6).

    Args:
        checkpoint: a BlinkDL checkpoint file, or a raw state dict (torch tensors or numpy arrays).
        out_prefix: output path without extension (a trailing ``.param`` is accepted and dropped).
        dtype: weight storage, "fp32", "fp16" or "int8" (module docstring).
        force: overwrite existing outputs.
        int8_scheme: for ``dtype="int8"``: "rows" (default; per-row symmetric int8 like the torch
            backend's int8, activations float) or "codebook" (the older fitted 256-level table).
        prefill_chunk: tokens per call of the prefill graph ``PREFIX.seq.param`` (0: none, the
            runtime then feeds a prompt token by token).

    Returns:
        The path of the ``.param`` file (what ``load_model(..., backend="ncnn")`` takes).

    >>> import pathlib, tempfile
    >>> from rwkv_music.model.factory import save_random_checkpoint
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> param = export(save_random_checkpoint(tmp / "tiny.pth", "7"), tmp / "tiny")
    >>> param.name, sorted(p.name for p in tmp.iterdir())
    ('tiny.param', ['tiny.bin', 'tiny.json', 'tiny.param', 'tiny.pth', 'tiny.seq.param'])
    >>> from rwkv_music.backends.ncnn import load
    >>> logits, state = load(param, num_threads=1).forward([[2, 83, 58]])
    >>> logits.shape, state.batch_size
    ((1, 128), 1)
    """
    if dtype == "int4":
        raise OptionError(INT4_REFUSAL)
    _check_scheme(dtype, int8_scheme)
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or not (
            prefill_chunk == 0 or 2 <= prefill_chunk <= MAX_PREFILL_CHUNK):
        raise OptionError(f"prefill_chunk must be 0 (no prefill graph) or 2..{MAX_PREFILL_CHUNK}, "
                          f"got {prefill_chunk!r}")
    from rwkv_music.backends.ncnn import prefill_param_path  # here: the runtime and exporter load apart

    paths = ncnn_paths(out_prefix)
    seq_path = prefill_param_path(paths["param"])
    if not force:
        for p in [*paths.values(), seq_path]:
            if p.exists():
                raise OutputExistsError(f"{p}: exists; pass force=True (--force) to overwrite")
    sd, cfg, source = read_checkpoint(checkpoint)
    g, _ = build_graph(sd, cfg, dtype, source, int8_scheme)
    text = g.param_text()
    paths["param"].parent.mkdir(parents=True, exist_ok=True)
    paths["sidecar"].unlink(missing_ok=True)  # a half-written export must not look complete
    seq_path.unlink(missing_ok=True)
    paths["param"].write_text(text)
    size = 0
    digest = hashlib.sha256()
    with open(paths["bin"], "wb") as fh:
        for chunk in g.weight_chunks():
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    prefill = None
    if prefill_chunk:
        prefill = _write_prefill_graph(sd, cfg, dtype, source, int8_scheme, prefill_chunk, seq_path, digest.digest())
    files = {"param": paths["param"].name, "bin": paths["bin"].name,
             "param_sha256": hashlib.sha256(text.encode()).hexdigest(), "bin_bytes": size}
    meta = ncnn_sidecar(cfg, dtype, QUANTIZATION[int8_scheme] if dtype == "int8" else None, g.counts(), files, source)
    if prefill is not None:
        meta["prefill"] = prefill
    paths["state"].unlink(missing_ok=True)
    init = initial_state(sd, cfg)
    if init is not None:
        init.save(paths["state"], cfg)
        meta["initial_state"] = paths["state"].name
    paths["sidecar"].write_text(json.dumps(meta, indent=2) + "\n")
    written = [*paths.values(), seq_path]
    verify_export(paths["param"], written, "ncnn")
    if prefill is not None:
        _verify_prefill(paths["param"], written, prefill_chunk)
    log.info("exported %s (v%s, %s, %d layers, %.1f MB of weights)", paths["param"], cfg.version, dtype,
             sum(meta["layers"].values()), size / 2**20)
    return paths["param"]

