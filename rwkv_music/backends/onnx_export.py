"""Export an RWKV checkpoint (v4, v5.0/5.1/5.2, v6, v7, v7a) to one ONNX graph plus a JSON sidecar.

Why the graph is written node by node with ``onnx.helper`` instead of ``torch.onnx.export``:
torch 2.13's default exporter (dynamo) needs ``onnxscript`` and traces Python loops over time
into fixed-length graphs, while the recurrence needs a real ONNX ``Scan`` to serve any T; building
the graph from numpy weights also keeps the export independent of the torch model code, gives
stable value names, and makes the graph an independent re-implementation of docs/formats.md A7 that
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
untested here).  Weight storages over an fp32 graph (``dtype`` "int8", "int4", "bf16";
:mod:`rwkv_music.backends.onnx_weights`), max |Δlogit| vs fp32 on the same models: int8
0.075–0.56, the torch int8 backend's own error to 1e-5; bf16 0.024–0.13; int4 1.0–2.8.  On the
shipped models (16 prompts × 128 tokens sampled from fp32) top-1 agreement with fp32 was 99.5–99.8 %
(int8), 99.9–100 % (bf16) and 95.3–95.7 % (int4; its flips fall where fp32's top two logits
are within ~0.1).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import Weights, read_checkpoint
from rwkv_music.backends.onnx_graph_common import MIN_OPSET, GraphBuilder, onnx_modules
from rwkv_music.backends.onnx_weights import INT4_BLOCK, INT4_BLOCKS
from rwkv_music.backends.sidecar import (
    ALL_FLAG,
    ALL_LOGITS,
    LOGITS,
    META_KEY,
    STATE_IN,
    STATE_OUT,
    TOKENS,
    onnx_identity,
    onnx_sidecar,
    onnx_sidecar_path,
    verify_export,
)
from rwkv_music.errors import CheckpointError, OptionError, OutputExistsError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import LN_EPS
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 100 * 2**20  # weights above ~100 MB go to OUT.onnx.data (protobuf caps a file at 2 GB)
DTYPES = {"fp32": np.float32, "fp16": np.float16}  # the graph dtypes the sidecar accepts (ONNX_DTYPES)
WEIGHT_DTYPES = ("int8", "int4", "bf16")  # weight storages over an fp32 graph (onnx_weights)
EXPORT_DTYPES = (*DTYPES, *WEIGHT_DTYPES)  # what export(dtype=...) and export-onnx --dtype take
INT8_MODES = ("weight", "dynamic")


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


def build_model(
    state_dict: dict[str, Any],
    cfg: RWKVConfig,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    source: str = "<state dict>",
) -> tuple[Any, dict[str, np.ndarray] | None]:
    """The ONNX ``ModelProto`` of a checked raw checkpoint, and its initial state (v6 ``time_state``) if any."""
    if dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    onnx, helper, _ = onnx_modules()
    act = np.dtype(DTYPES[dtype])
    b = GraphBuilder(opset, act)
    w = Weights(state_dict, source)
    L, V = cfg.n_layer, cfg.vocab_size

    init_kv = w.initial_kv(cfg)
    init_state = None if init_kv is None else {"att_kv": init_kv}
    emb = w.embedding()  # ln0 folded in (A6)
    shapes = state_shapes(cfg, 1)
    state_dt = {n: (np.float32 if fp32 else act) for n, (_, fp32) in shapes.items()}

    inputs = [helper.make_tensor_value_info(TOKENS, onnx.TensorProto.INT64, ["batch", "time"])]
    for name, (shape, _) in shapes.items():
        dims = [shape[0], "batch", *shape[2:]]
        inputs.append(
            helper.make_tensor_value_info(
                STATE_IN + name, helper.np_dtype_to_tensor_dtype(np.dtype(state_dt[name])), dims
            )
        )
    inputs.append(helper.make_tensor_value_info(ALL_FLAG, onnx.TensorProto.BOOL, []))
    b.initializers.append(helper.make_tensor(ALL_FLAG, onnx.TensorProto.BOOL, [], [False]))

    ctx: dict[str, Any] = {"tokens": TOKENS}
    x = b.gather(b.init(emb, "emb"), TOKENS, axis=0)  # [B,T,C]
    block = _block_builder(cfg)
    per_layer: dict[str, list[str]] = {n: [] for n in shapes}
    for i in range(L):
        st = {n: b.gather(STATE_IN + n, i, axis=0) for n in shapes}
        x, new = block(b, w, cfg, i, x, st, ctx)
        for n in shapes:
            per_layer[n].append(b.unsqueeze(new[n], [0]))

    outputs = []
    for n in shapes:
        b.nodes.append(helper.make_node("Concat", per_layer[n], [STATE_OUT + n], axis=0))
        dims = [L, "batch", *shapes[n][0][2:]]
        outputs.append(
            helper.make_tensor_value_info(STATE_OUT + n, helper.np_dtype_to_tensor_dtype(np.dtype(state_dt[n])), dims)
        )

    ln_w, ln_b = b.init(w.get("ln_out.weight"), "ln_out_w"), b.init(w.get("ln_out.bias"), "ln_out_b")
    head = b.init(w.get("head.weight").T, "head")

    def logits_of(h: str, out_name: str) -> None:
        h = b.op("LayerNormalization", [h, ln_w, ln_b], axis=-1, epsilon=LN_EPS)
        h = b.matmul(h, head)
        b.nodes.append(helper.make_node("Cast", [h], [out_name], to=onnx.TensorProto.FLOAT))

    logits_of(b.last(x), LOGITS)
    t_len = b.op("Gather", [b.op("Shape", [TOKENS]), b.ints([1])])
    start = b.op("Where", [ALL_FLAG, b.ints([0]), t_len])  # all positions, or none
    logits_of(b.op("Slice", [x, start, t_len, b.ints([1])]), ALL_LOGITS)
    outputs.insert(0, helper.make_tensor_value_info(ALL_LOGITS, onnx.TensorProto.FLOAT, ["batch", "time_or_0", V]))
    outputs.insert(0, helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, ["batch", V]))

    unused = w.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} key(s) this exporter does not know, first {unused[0]!r}")
    graph = helper.make_graph(b.nodes, "rwkv_music", inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rwkv_music")
    helper.set_model_props(model, {META_KEY: json.dumps(onnx_identity(cfg, dtype))})
    return model, init_state


def _store_weights(
    model: Any, weights: str | None, int8_mode: str, int4_block: int
) -> tuple[Any, str | None, dict[str, str] | None]:
    """``model`` with its big matrices stored as ``weights``; the sidecar's quantization text and the
    onnxruntime session settings the graph needs (``None`` where there are none)."""
    from rwkv_music.backends import onnx_int8, onnx_weights

    if weights == "int8" and int8_mode == "dynamic":
        return onnx_int8.quantize_weights(model), onnx_int8.QUANTIZATION, None
    if weights == "int8":
        return onnx_weights.int8_per_channel(model), onnx_weights.int8_quantization(), onnx_weights.INT8_SESSION_CONFIG
    if weights == "int4":
        return onnx_weights.int4_blockwise(model, int4_block), onnx_weights.int4_quantization(int4_block), None
    if weights == "bf16":
        return onnx_weights.bf16_weights(model), onnx_weights.BF16_QUANTIZATION, None
    return model, None, None


def export(
    checkpoint: Any,
    out_path: str | os.PathLike,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    *,
    int8: bool = False,
    int8_mode: str = "weight",
    int4_block: int = INT4_BLOCK,
    external_data: bool | None = None,
    force: bool = False,
) -> Path:
    """Export ``checkpoint`` (a path or a raw state dict) to ``out_path`` and ``out_path + '.json'``.

    Args:
        checkpoint: a checkpoint file (.pth) or a raw BlinkDL state dict (torch tensors or numpy).
        out_path: the ``.onnx`` file to write.
        dtype: "fp32" or "fp16" (fp16 graphs keep the WKV state and decays in fp32); or a weight
            storage over an fp32 graph (see :mod:`rwkv_music.backends.onnx_weights`): "int8"
            (per-channel int8 big matrices), "int4" (4-bit ``MatMulNBits``, group-wise) or "bf16"
            (bfloat16 matrices cast to fp32 in the graph: onnxruntime's CPU provider has no bf16
            MatMul).  Activations stay fp32 in all three.
        opset: ONNX opset (>= 17).
        int8: the same as ``dtype="int8"`` (kept for existing callers; needs dtype "fp32" or "int8").
        int8_mode: "weight" (default: weight-only, activations fp32, logits as the torch int8
            backend's) or "dynamic" (8-bit ``MatMulNBits`` that also rounds activations to int8:
            faster decode on x86, up to ~2x the logit error).
        int4_block: input rows per int4 scale and zero point (16, 32, 64 or 128).
        external_data: store weights in ``out_path + '.data'``; default: when they exceed ~100 MB.
        force: overwrite existing outputs.

    Returns:
        The path of the written ``.onnx`` file.
    """
    onnx, _, _ = onnx_modules()
    out = Path(out_path)
    side = onnx_sidecar_path(out)
    if not force:
        for p in (out, side):
            if p.exists():
                raise OutputExistsError(f"{p}: exists; pass force=True (--force) to overwrite")
    if int8 and dtype not in ("fp32", "int8"):
        raise OptionError(f"int8 quantization needs dtype 'fp32', got {dtype!r}")
    weights = "int8" if int8 else dtype if dtype in WEIGHT_DTYPES else None
    if weights is None and dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if int8_mode not in INT8_MODES:
        raise OptionError(f"int8_mode must be one of {', '.join(INT8_MODES)}, got {int8_mode!r}")
    if isinstance(int4_block, bool) or int4_block not in INT4_BLOCKS:
        raise OptionError(f"int4_block must be one of {', '.join(map(str, INT4_BLOCKS))}, got {int4_block!r}")
    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise OptionError(f"opset must be {MIN_OPSET}-{newest} (the onnx package's newest), got {opset!r}")
    sd, cfg, source = read_checkpoint(checkpoint)
    model, init_state = build_model(sd, cfg, "fp32" if weights else dtype, opset, source)
    model, quant, session_config = _store_weights(model, weights, int8_mode, int4_block)
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    data_name = out.name + ".data"
    if external_data:
        (out.parent / data_name).unlink(missing_ok=True)  # save appends to an existing file
        onnx.save_model(
            model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(out))
    onnx.checker.check_model(str(out))
    meta = onnx_sidecar(cfg, "fp32" if weights else dtype, opset, quant, source)
    if weights:
        meta["weights"] = weights  # what OnnxModel.dtype reports; "dtype" stays the activations' fp32
    if session_config:
        meta["ort_session_config"] = session_config  # applied by rwkv_music.backends.onnx (see onnx_weights)
    state_file = out.with_name(out.name + ".state.npz")
    state_file.unlink(missing_ok=True)
    if init_state is not None:
        full = State.zeros(cfg, 1).tensors
        full.update(init_state)
        State(cfg.version, full).save(state_file, cfg)
        meta["initial_state"] = state_file.name
    side.write_text(json.dumps(meta, indent=2) + "\n")
    verify_export(out, [out, side, out.parent / data_name, state_file], "onnx")
    log.info("exported %s (v%s, %s, %.1f MB of weights)", out, cfg.version, quant or dtype, weight_bytes / 2**20)
    return out

