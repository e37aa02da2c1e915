"""Export an RWKV checkpoint (v4, v5.0/5.1/5.2, v6, v7, v7a) to one ONNX graph plus a JSON sidecar.

Why the graph is written node by node with ``onnx.helper`` instead of ``torch.onnx.export``:
torch 2.13's default exporter (dynamo) needs ``onnxscript`` and traces Python loops over time
into fixed-length graphs, while the recurrence needs a real ONNX ``Scan`` to serve any T; building
the graph from numpy weights also keeps the export independent of the torch model code, gives
stable value names, and makes the graph an independent re-implementation of FORMATS.md A7 that
the tests compare against the torch backend.

Graph design (one graph serves prefill and decode, dynamic ``batch`` and ``time``):

* the embedding (LN0 folded in at export, A6), LayerNorms, token shifts, every projection and
  the channel mix run for all T positions at once (big MatMuls);
* only the recurrent WKV update of each layer runs in an ONNX ``Scan`` over time (one Scan per
  layer; its body is 5–9 small nodes), carrying the fp32 state;
* ``logits`` [B,V] fp32 come from the last position; ``all_logits`` [B,T,V] fp32 are computed
  only when the bool input ``return_all_logits`` (default false, an overridable initializer) is
  true, otherwise it is an empty [B,0,V] array.

Inputs: ``tokens`` int64 [batch, time]; ``state_<name>`` for each :class:`~rwkv_music.model.state.State`
tensor (``att_x``, ``att_kv``, ``ffn_x``; v4: ``att_x``, ``att_a``, ``att_b``, ``att_p``, ``ffn_x``)
with the same shapes and orientation as state.py ([L,B,...]); ``return_all_logits`` bool [].
Outputs: ``logits``, ``all_logits``, ``new_state_<name>``.  The shift states use the graph dtype
(fp16 graphs: float16), the WKV state is always float32.  Files: ``OUT.onnx``, the sidecar
``OUT.onnx.json`` (format, version, config, vocab size, tokenizer kind, dtype, quantization, and
every input/output with its dtype and shape), ``OUT.onnx.data`` with external weights, and for
state-tuned v6 checkpoints ``OUT.onnx.state.npz`` holding the initial state (``time_state``).

Measured (random 2-layer models, every version): fp32 logits within 6e-6 of the rwkv package and
1e-4 of the torch backend; fp16 graphs within 1.1e-2 of fp32 (onnxruntime CPU; the CUDA EP is
untested here).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from rwkv_music.backends import onnx as rt
from rwkv_music.backends.onnx_graph_common import LN_EPS, GraphBuilder, Weights, layer_norm_np, onnx_modules
from rwkv_music.cli.common import CONTEXT, boundary
from rwkv_music.errors import CheckpointError, OutputExistsError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 100 * 2**20  # weights above ~100 MB go to OUT.onnx.data (protobuf caps a file at 2 GB)
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _block_builder(cfg: RWKVConfig) -> Any:
    """The per-layer graph function of ``cfg.version`` (dispatch once, by family)."""
    from rwkv_music.backends import onnx_graph_v4, onnx_graph_v5, onnx_graph_v7

    if cfg.version.family == 4:
        return onnx_graph_v4.block
    if cfg.version.family == 5:
        return onnx_graph_v5.block_v5
    if cfg.version.family == 6:
        return onnx_graph_v5.block_v6
    return onnx_graph_v7.block


def read_checkpoint(checkpoint: Any) -> tuple[dict[str, Any], RWKVConfig, str]:
    """``(state_dict, config, source)`` of a checkpoint path or raw state dict, fully checked."""
    from rwkv_music.model.checkpoint import inspect_state_dict, load_state_dict

    if isinstance(checkpoint, (str, os.PathLike)):
        return load_state_dict(checkpoint)
    return checkpoint, inspect_state_dict(checkpoint, "<state dict>"), "<state dict>"


def initial_state(w: Weights, cfg: RWKVConfig) -> dict[str, np.ndarray] | None:
    """v6 state tuning: ``time_state`` [H,N,N] per layer (S[value, key]) as the initial ``att_kv``
    [L,1,H,N,N] in the v5/v6 S[key, value] layout (transposed, as the rwkv package does, A6/A8)."""
    keys = [f"blocks.{i}.att.time_state" for i in range(cfg.n_layer)]
    if cfg.version != "6" or keys[0] not in w:
        return None
    kv = np.stack([w.get(k, squeeze=False).reshape(cfg.n_head, cfg.head_size, cfg.head_size) for k in keys])
    return {"att_kv": np.ascontiguousarray(kv.transpose(0, 1, 3, 2)[:, None])}


def build_model(
    state_dict: dict[str, Any], cfg: RWKVConfig, dtype: str = "fp32", opset: int = DEFAULT_OPSET, source: str = "<state dict>"
) -> tuple[Any, dict[str, np.ndarray] | None]:
    """The ONNX ``ModelProto`` of a checked raw checkpoint, and its initial state (v6 ``time_state``) if any."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    onnx, helper, _ = onnx_modules()
    act = np.dtype(DTYPES[dtype])
    b = GraphBuilder(opset, act)
    w = Weights(state_dict, source)
    L, C, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size

    init_state = initial_state(w, cfg)
    emb = layer_norm_np(w.get("emb.weight"), w.get("blocks.0.ln0.weight"), w.get("blocks.0.ln0.bias"))  # A6 fold
    shapes = state_shapes(cfg, 1)
    state_dt = {n: (np.float32 if fp32 else act) for n, (_, fp32) in shapes.items()}

    inputs = [helper.make_tensor_value_info(rt.TOKENS, onnx.TensorProto.INT64, ["batch", "time"])]
    for name, (shape, _) in shapes.items():
        dims = [shape[0], "batch", *shape[2:]]
        inputs.append(helper.make_tensor_value_info(rt.STATE_IN + name, helper.np_dtype_to_tensor_dtype(np.dtype(state_dt[name])), dims))
    inputs.append(helper.make_tensor_value_info(rt.ALL_FLAG, onnx.TensorProto.BOOL, []))
    b.initializers.append(helper.make_tensor(rt.ALL_FLAG, onnx.TensorProto.BOOL, [], [False]))

    ctx: dict[str, Any] = {"tokens": rt.TOKENS, "emb_folded": emb}
    x = b.gather(b.init(emb, "emb"), rt.TOKENS, axis=0)  # [B,T,C]
    block = _block_builder(cfg)
    per_layer: dict[str, list[str]] = {n: [] for n in shapes}
    for i in range(L):
        st = {n: b.gather(rt.STATE_IN + n, i, axis=0) for n in shapes}
        x, new = block(b, w, cfg, i, x, st, ctx)
        for n in shapes:
            per_layer[n].append(b.unsqueeze(new[n], [0]))

    outputs = []
    for n in shapes:
        b.nodes.append(helper.make_node("Concat", per_layer[n], [rt.STATE_OUT + n], axis=0))
        dims = [L, "batch", *shapes[n][0][2:]]
        outputs.append(helper.make_tensor_value_info(rt.STATE_OUT + n, helper.np_dtype_to_tensor_dtype(np.dtype(state_dt[n])), dims))

    ln_w, ln_b = b.init(w.get("ln_out.weight"), "ln_out_w"), b.init(w.get("ln_out.bias"), "ln_out_b")
    head = b.init(w.get("head.weight").T, "head")

    def logits_of(h: str, out_name: str) -> None:
        h = b.op("LayerNormalization", [h, ln_w, ln_b], axis=-1, epsilon=LN_EPS)
        h = b.matmul(h, head)
        b.nodes.append(helper.make_node("Cast", [h], [out_name], to=onnx.TensorProto.FLOAT))

    logits_of(b.last(x), rt.LOGITS)
    t_len = b.op("Gather", [b.op("Shape", [rt.TOKENS]), b.ints([1])])
    start = b.op("Where", [rt.ALL_FLAG, b.ints([0]), t_len])  # all positions, or none
    logits_of(b.op("Slice", [x, start, t_len, b.ints([1])]), rt.ALL_LOGITS)
    outputs.insert(0, helper.make_tensor_value_info(rt.ALL_LOGITS, onnx.TensorProto.FLOAT, ["batch", "time_or_0", V]))
    outputs.insert(0, helper.make_tensor_value_info(rt.LOGITS, onnx.TensorProto.FLOAT, ["batch", V]))

    unused = w.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} key(s) this exporter does not know, first {unused[0]!r}")
    graph = helper.make_graph(b.nodes, "rwkv_music", inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rwkv_music")
    helper.set_model_props(model, {rt.META_KEY: json.dumps(_identity(cfg, dtype))})
    return model, init_state


def _identity(cfg: RWKVConfig, dtype: str) -> dict[str, Any]:
    """What the runtime checks between the graph's metadata and its sidecar."""
    return {"format": rt.SIDECAR_FORMAT, "config": cfg.to_dict(), "dtype": dtype}


def sidecar(cfg: RWKVConfig, dtype: str, opset: int, quantization: str | None, source: str | None) -> dict[str, Any]:
    """The JSON written next to the graph: everything the runtime needs without torch."""
    act = "float16" if dtype == "fp16" else "float32"
    state = {}
    for name, (shape, fp32) in state_shapes(cfg, 1).items():
        state[name] = {
            "input": rt.STATE_IN + name,
            "output": rt.STATE_OUT + name,
            "shape": ["n_layer", "batch", *shape[2:]],
            "dtype": "float32" if fp32 else act,
            "init": -1e30 if name == "att_p" else 0.0,
        }
    if cfg.version.family >= 5:
        orient = "S[h, value i, key j]" if cfg.version.family == 7 else "S[h, key j, value i]"
        state["att_kv"]["orientation"] = orient
    return {
        **_identity(cfg, dtype),
        "version": str(cfg.version),
        "vocab_size": cfg.vocab_size,
        "tokenizer": rt.TOKENIZER_BY_VOCAB.get(cfg.vocab_size),
        "opset": opset,
        "quantization": quantization,
        "source": source,
        "inputs": {
            rt.TOKENS: {"dtype": "int64", "shape": ["batch", "time"]},
            rt.ALL_FLAG: {"dtype": "bool", "shape": [], "default": False},
            **{s["input"]: {"dtype": s["dtype"], "shape": s["shape"]} for s in state.values()},
        },
        "outputs": {
            rt.LOGITS: {"dtype": "float32", "shape": ["batch", "vocab"], "note": "last position"},
            rt.ALL_LOGITS: {"dtype": "float32", "shape": ["batch", "time", "vocab"], "note": "empty [B,0,V] unless return_all_logits"},
            **{s["output"]: {"dtype": s["dtype"], "shape": s["shape"]} for s in state.values()},
        },
        "state": state,
    }


def export(
    checkpoint: Any,
    out_path: str | os.PathLike,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    *,
    int8: bool = False,
    external_data: bool | None = None,
    force: bool = False,
) -> Path:
    """Export ``checkpoint`` (a path or a raw state dict) to ``out_path`` and ``out_path + '.json'``.

    Args:
        checkpoint: a checkpoint file (.pth) or a raw BlinkDL state dict (torch tensors or numpy).
        out_path: the ``.onnx`` file to write.
        dtype: "fp32" or "fp16" (fp16 graphs keep the WKV state and decays in fp32).
        opset: ONNX opset (>= 17).
        int8: weight-only int8 quantization of the large matrices (fp32 graphs only).
        external_data: store weights in ``out_path + '.data'``; default: when they exceed ~100 MB.
        force: overwrite existing outputs.

    Returns:
        The path of the written ``.onnx`` file.
    """
    onnx, _, _ = onnx_modules()
    out = Path(out_path)
    side = rt.sidecar_path(out)
    if not force:
        for p in (out, side):
            if p.exists():
                raise OutputExistsError(f"{p}: exists; pass force=True (--force) to overwrite")
    if int8 and dtype != "fp32":
        raise ValueError(f"int8 quantization needs dtype 'fp32', got {dtype!r}")
    sd, cfg, source = read_checkpoint(checkpoint)
    model, init_state = build_model(sd, cfg, dtype, opset, source)
    quant = None
    if int8:
        from rwkv_music.backends.onnx_int8 import QUANTIZATION, quantize_weights

        model, quant = quantize_weights(model), QUANTIZATION
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    data_name = out.name + ".data"
    if external_data:
        (out.parent / data_name).unlink(missing_ok=True)  # save appends to an existing file
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
    else:
        onnx.save_model(model, str(out))
    onnx.checker.check_model(str(out))
    meta = sidecar(cfg, dtype, opset, quant, source)
    state_file = out.with_name(out.name + ".state.npz")
    state_file.unlink(missing_ok=True)
    if init_state is not None:
        full = State.zeros(cfg, 1).tensors
        full.update(init_state)
        State(cfg.version, full).save(state_file, cfg)
        meta["initial_state"] = state_file.name
    side.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("exported %s (v%s, %s, %.1f MB of weights)", out, cfg.version, quant or dtype, weight_bytes / 2**20)
    return out


@click.command("export-onnx", context_settings=CONTEXT, epilog="""\b
Examples:
  rwkv-music export-onnx RWKV-5-ABC-82M.pth abc.onnx
  rwkv-music export-onnx model.pth model-fp16.onnx --dtype fp16
  rwkv-music export-onnx model.pth model-int8.onnx --int8
  rwkv-music generate-abc --model abc.onnx --backend onnx
""")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True, help="Activation dtype of the graph (the WKV state stays fp32).")
@click.option("--int8", is_flag=True, help="Int8 weights for the large matrices (MatMulNBits; fp32 graphs only).")
@click.option("--opset", type=click.IntRange(min=17), default=DEFAULT_OPSET, show_default=True, help="ONNX opset version.")
@click.option("--external-data/--no-external-data", default=None, help="Store weights in OUT.data (default: when above ~100 MB).")
@click.option("--force", is_flag=True, help="Overwrite OUT and its sidecar.")
@boundary
def export_onnx(checkpoint: str, out: str, dtype: str, int8: bool, opset: int, external_data: bool | None, force: bool) -> None:
    """Export CHECKPOINT to the ONNX graph OUT plus its sidecar OUT.json (for --backend onnx)."""
    if int8 and dtype != "fp32":
        raise click.BadParameter("--int8 needs --dtype fp32", param_hint="--int8")
    path = export(checkpoint, out, dtype, opset, int8=int8, external_data=external_data, force=force)
    click.echo(f"wrote {path} and {rt.sidecar_path(path)}")
