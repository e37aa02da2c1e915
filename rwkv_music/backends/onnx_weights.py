"""Weight storage of an exported fp32 graph: int8 per channel, int4 ``MatMulNBits``, bf16.

Each function takes the fp32 ``ModelProto`` of :func:`rwkv_music.backends.onnx_export.build_model`,
rewrites the initializers of its big matrices in place and returns it.  Activations, LayerNorms,
LoRAs, decays and the WKV state stay fp32 in all three; only how the weights are stored changes.

* :func:`int8_per_channel` (``--dtype int8``, the default int8): the matrices of
  :data:`~rwkv_music.backends.onnx_int8.BIG_MATRICES` as int8 with one symmetric fp32 scale per
  output channel (``W[:, n] ≈ q[:, n]·scale[n]``, ``scale[n] = max|W[:, n]| / 127``), the rounding
  of the torch backend's int8 (:func:`rwkv_music.model.quant.quantize_rows`).  A per-axis
  ``DequantizeLinear`` rebuilds each float matrix and a plain fp32 ``MatMul`` uses it.  At its
  default optimization level onnxruntime 1.32 fuses ``DequantizeLinear → MatMul`` into an 8-bit
  ``MatMulNBits`` with accuracy_level 4, which rounds the activations to int8 again; the sidecar
  therefore names the session setting :data:`INT8_SESSION_CONFIG` (``session.disable_quant_qdq``)
  and :mod:`rwkv_music.backends.onnx` applies it.  onnxruntime then folds the dequantization at
  load: logits equal the torch int8 backend's (~1e-5), speed and memory are fp32's, the file is
  ~3.4x smaller.  The older graph with 8-bit ``MatMulNBits`` (activations rounded to int8 per
  block; faster decode, larger error) is ``int8_mode="dynamic"`` (:mod:`rwkv_music.backends.onnx_int8`).
* :func:`int4_blockwise` (``--dtype int4``): the same matrices as 4-bit ``com.microsoft.MatMulNBits``
  weights, asymmetric per block of :data:`INT4_BLOCK` input rows (an fp32 scale and a 4-bit zero
  point per block); ``accuracy_level`` 0 keeps the activations fp32 inside the kernel.
* :func:`bf16_weights` (``--dtype bf16``): every fp32 matrix read only by ``MatMul`` or ``Gather``
  (projections, LoRAs, embedding, head) stored as bfloat16 and ``Cast`` to fp32 in the graph.
  onnxruntime 1.32's CPU provider has no bfloat16 kernel for ``MatMul``, ``Add``, ``Mul``,
  ``Sigmoid`` or ``Exp`` (checked one node each), so a graph computing in bf16 would not run there;
  this one halves the file and computes in fp32 (onnxruntime folds the constant ``Cast`` at
  load: speed and memory are fp32's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import int8_symmetric
from rwkv_music.backends.onnx_graph_common import onnx_modules
from rwkv_music.backends.onnx_int8 import BIG_MATRICES, MS_DOMAIN

INT4_BLOCK = 32  # input rows per int4 scale; MatMulNBits takes powers of two >= 16
INT4_BLOCKS = (16, 32, 64, 128)
INT4_ACCURACY_LEVEL = 0  # 0: activations unquantized (4 would round them to int8 per block)
# Stops onnxruntime from fusing DequantizeLinear -> MatMul into an activation-quantizing MatMulNBits.
INT8_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def int8_quantization() -> str:
    return "int8 (per-channel symmetric scales, DequantizeLinear + fp32 MatMul; activations fp32)"


def int4_quantization(block_size: int = INT4_BLOCK) -> str:
    return f"int4 (MatMulNBits, block {block_size}, asymmetric, accuracy_level {INT4_ACCURACY_LEVEL})"


BF16_QUANTIZATION = "bf16 weights (Cast to fp32 in the graph; fp32 compute)"


def _big_matmul_weights(model: Any) -> dict[str, np.ndarray]:
    """fp32 [K, N] weights of the top-level ``MatMul`` nodes over :data:`BIG_MATRICES` initializers."""
    _, _, numpy_helper = onnx_modules()
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "MatMul" else ""
        tensor = inits.get(name)
        if tensor is None or not name.startswith(BIG_MATRICES) or len(tensor.dims) != 2 or name in found:
            continue
        weight = numpy_helper.to_array(tensor)
        if weight.dtype != np.float32:
            raise ValueError(f"weight quantization needs an fp32 graph; {name} is {weight.dtype}")
        found[name] = weight
    return found


def _replace_initializers(model: Any, names: set[str], new: list[Any]) -> None:
    graph = model.graph
    keep = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(keep + new)


# -- int8, per output channel -------------------------------------------------------------------------
def quantize_int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] fp32 → (q int8 [K, N], scale fp32 [N]); one symmetric scale per output column."""
    return int8_symmetric(weight, axis=0)


def int8_per_channel(model: Any) -> Any:
    """Store the big matrices as int8 + per-column fp32 scales, dequantized in the graph before ``MatMul``."""
    _, helper, numpy_helper = onnx_modules()
    weights = _big_matmul_weights(model)
    new, dq = [], []
    for name, weight in weights.items():
        q, scale = quantize_int8_columns(weight)
        new += [numpy_helper.from_array(q, name + "_q8"), numpy_helper.from_array(scale, name + "_scale")]
        # The output keeps the fp32 weight's name, so the MatMul nodes reading it stay as they are.
        dq.append(helper.make_node("DequantizeLinear", [name + "_q8", name + "_scale"], [name], axis=1))
    _replace_initializers(model, set(weights), new)
    nodes = dq + list(model.graph.node)  # producers before consumers (topological order)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# -- int4, block-wise (MatMulNBits) ---------------------------------------------------------------------
def quantize_int4_blocks(weight: np.ndarray, block_size: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``weight`` [K, N] → MatMulNBits inputs: packed uint8 [N, k_blocks, block_size/2], scales fp32
    [N, k_blocks], packed 4-bit zero points uint8 [N, ceil(k_blocks/2)].

    Per block, codes 0..15 span [min(w, 0), max(w, 0)]: ``scale = (hi − lo)/15``,
    ``zp = round(−lo/scale)``, ``q = clip(round(w/scale) + zp, 0, 15)``, ``w ≈ (q − zp)·scale``.
    Zero points are 4-bit integers: onnxruntime 1.32 also takes fp32 zero points (the torch int4
    scheme, ``w ≈ min + q·scale``), but then runs MatMulNBits over 10x slower at batch 1 for no
    measurable gain in top-1 agreement.  Two codes per byte, the earlier one in the low nibble (the
    op's layout, for B and the zero points).
    """
    k, n = weight.shape
    k_blocks = -(-k // block_size)
    # Pad K by repeating the last row: the padding then widens no block's range.
    padded = np.pad(weight.astype(np.float32), ((0, k_blocks * block_size - k), (0, 0)), mode="edge")
    blocks = padded.T.reshape(n, k_blocks, block_size)  # per output column, runs of K
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = (hi - lo) / 15.0
    scale[scale == 0] = 1.0  # an all-zero block: codes = zero point
    zp = np.clip(np.rint(-lo / scale), 0, 15)
    q = np.clip(np.rint(blocks / scale[:, :, None]) + zp[:, :, None], 0, 15).astype(np.uint8)
    packed = q[:, :, 0::2] | (q[:, :, 1::2] << 4)
    zp8 = np.concatenate([zp, np.zeros((n, k_blocks % 2))], axis=1).astype(np.uint8)
    return packed, scale.astype(np.float32), zp8[:, 0::2] | (zp8[:, 1::2] << 4)


def dequantize_int4_blocks(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`quantize_int4_blocks` (for tests): [K, N] fp32."""
    n, k_blocks, _ = packed.shape
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, k_blocks, -1).astype(np.float32)
    zp = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(n, -1)[:, :k_blocks].astype(np.float32)
    w = (q - zp[:, :, None]) * scales[:, :, None]
    return w.reshape(n, -1)[:, :k].T


def int4_blockwise(model: Any, block_size: int = INT4_BLOCK) -> Any:
    """Replace the big ``MatMul`` nodes by 4-bit ``com.microsoft.MatMulNBits`` (weights only)."""
    _, helper, numpy_helper = onnx_modules()
    if block_size not in INT4_BLOCKS:
        raise ValueError(f"int4 block size must be one of {INT4_BLOCKS}, got {block_size}")
    weights = _big_matmul_weights(model)
    new = []
    for name, weight in weights.items():
        packed, scale, zp = quantize_int4_blocks(weight, block_size)
        new += [
            numpy_helper.from_array(packed, name + "_q4"),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(zp, name + "_zp"),
        ]
    _replace_initializers(model, set(weights), new)
    nodes = []
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "MatMul" else ""
        if name not in weights:
            nodes.append(node)
            continue
        k, n = weights[name].shape
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], name + "_q4", name + "_scale", name + "_zp"],
                list(node.output),
                domain=MS_DOMAIN,
                K=k,
                N=n,
                bits=4,
                block_size=block_size,
                accuracy_level=INT4_ACCURACY_LEVEL,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


# -- bf16 storage ---------------------------------------------------------------------------------------
def to_bf16_bits(array: np.ndarray) -> np.ndarray:
    """fp32 → the uint16 bit patterns of bfloat16, rounded to nearest even (as torch's ``.bfloat16()``)."""
    u = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _subgraph_inputs(model: Any) -> set[str]:
    """Every value name a node inside a subgraph (a Scan body) reads."""
    names: set[str] = set()
    stack = [a.g for node in model.graph.node for a in node.attribute if a.type == a.GRAPH]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            names.update(node.input)
            stack += [a.g for a in node.attribute if a.type == a.GRAPH]
    return names


def bf16_weights(model: Any) -> Any:
    """Store each fp32 matrix read only as a ``MatMul`` weight or a ``Gather`` table in bfloat16."""
    onnx, helper, numpy_helper = onnx_modules()
    graph = model.graph
    uses: dict[str, list[bool]] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            ok = (node.op_type == "MatMul" and pos == 1) or (node.op_type == "Gather" and pos == 0)
            uses.setdefault(name, []).append(ok)
    inner = _subgraph_inputs(model)
    chosen = [
        t for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2 and all(uses.get(t.name, [False]))
        and t.name not in inner
    ]
    new, casts = [], []
    for t in chosen:
        bits = to_bf16_bits(numpy_helper.to_array(t))
        stored = helper.make_tensor(t.name + "_bf16", onnx.TensorProto.BFLOAT16, list(t.dims), bits.tobytes(),
                                    raw=True)
        new.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [t.name], to=onnx.TensorProto.FLOAT))
    _replace_initializers(model, {t.name for t in chosen}, new)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
