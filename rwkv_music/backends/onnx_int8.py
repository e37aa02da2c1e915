"""int8 ``MatMulNBits`` graphs that also round activations: ``export(..., int8_mode="dynamic")``.

The default int8 export is weight-only (:mod:`rwkv_music.backends.onnx_weights`); this is the
faster, less accurate option.  Every large projection (time-mix r/k/v/g/output, channel-mix
key/value/receptance and the head) is replaced by a ``com.microsoft.MatMulNBits`` node with 8-bit
weights: blocks of :data:`BLOCK_SIZE` input rows share one fp32 scale, symmetric around the default
zero point 128, so ``W ≈ (q − 128)·scale``.  With :data:`ACCURACY_LEVEL` 4 the kernel also rounds
the activations to int8 per block on every call.  LayerNorms, LoRAs, decays and the WKV state stay
fp32.  The quantization is done here in numpy (a few lines) rather than through
``onnxruntime.quantization``, whose import configures the root logger.

Accuracy (random-weight models, which amplify weight noise more than trained ones): max
|Δlogit| vs fp32 0.13–0.81 on the 2-layer test models of every version (logits of magnitude
≈ 7–9; the weight-only default: 0.075–0.56, equal to the torch int8 backend's), and 0.26–0.29 on
L12 D768 (82M) v5.2/v7 models.  The big matrices shrink ~3.9×; batch-1 decode on one CPU thread
ran ~1.9–2.9× faster than the fp32 graph (benchmarks/bench_onnx.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.onnx_graph_common import onnx_modules

BLOCK_SIZE = 32  # input rows per scale (MatMulNBits needs a power of two >= 16)
BITS = 8
# MatMulNBits accuracy_level 4 = int8 compute: onnxruntime 1.32's x86 CPU kernel for 8-bit weights
# then quantizes activations per block on the fly; level 1 (fp32 compute) is exact w.r.t. the
# dequantized weights but ~40x slower than fp32 MatMul at batch 1 (it dequantizes every call).
ACCURACY_LEVEL = 4
QUANTIZATION = f"int8 (MatMulNBits, block {BLOCK_SIZE}, symmetric, accuracy_level {ACCURACY_LEVEL})"
# Initializer name prefixes (from the graph builders) of the matrices worth quantizing.
BIG_MATRICES = ("Wr_", "Wk_", "Wv_", "Wo_", "Wg_", "ffn_k_", "ffn_v_", "ffn_r_", "head_")
MS_DOMAIN = "com.microsoft"


def quantize_block_int8(weight: np.ndarray, block_size: int = BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] → (packed uint8 [N, k_blocks, block_size], scales fp32 [N, k_blocks])."""
    k, n = weight.shape
    k_blocks = -(-k // block_size)
    padded = np.zeros((k_blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    blocks = padded.T.reshape(n, k_blocks, block_size)  # per output column, runs of K
    scales = np.abs(blocks).max(axis=2) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(blocks / scales[:, :, None]), -127, 127) + 128  # zero point 128 (the default)
    return q.astype(np.uint8), scales.astype(np.float32)


def dequantize_block_int8(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`quantize_block_int8` (for tests): [K, N] fp32."""
    n = packed.shape[0]
    w = (packed.astype(np.float32) - 128.0) * scales[:, :, None]
    return w.reshape(n, -1)[:, :k].T


def quantize_weights(model: Any, block_size: int = BLOCK_SIZE, accuracy_level: int = ACCURACY_LEVEL) -> Any:
    """Return ``model`` (an fp32 ``ModelProto``, edited in place) with its big MatMuls in int8."""
    onnx, helper, numpy_helper = onnx_modules()
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: dict[str, tuple[int, int]] = {}  # quantized weight → (K, N); the head feeds two MatMuls
    new_nodes = []
    for node in graph.node:
        wname = node.input[1] if node.op_type == "MatMul" else ""
        tensor = inits.get(wname)
        if tensor is None or not wname.startswith(BIG_MATRICES) or len(tensor.dims) != 2:
            new_nodes.append(node)
            continue
        if wname not in done:
            weight = numpy_helper.to_array(tensor)
            if weight.dtype != np.float32:
                raise ValueError(f"int8 quantization needs an fp32 graph; {wname} is {weight.dtype}")
            packed, scales = quantize_block_int8(weight, block_size)
            graph.initializer.remove(tensor)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(packed, wname + "_q8"),
                    numpy_helper.from_array(scales.reshape(-1), wname + "_scale"),
                ]
            )
            done[wname] = weight.shape
        k, n = done[wname]
        new_nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], wname + "_q8", wname + "_scale"],
                list(node.output),
                domain=MS_DOMAIN,
                K=k,
                N=n,
                bits=BITS,
                block_size=block_size,
                accuracy_level=accuracy_level,
            )
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model
