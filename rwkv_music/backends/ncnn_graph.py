"""A small writer for ncnn's text ``.param`` format and its ``.bin`` weights (no ncnn needed).

The file formats (ncnn ``docs/developer-guide/param-and-model-file-structure.md`` and
``operators.md``):

* ``.param``: the magic ``7767517``, then ``<layer count> <blob count>``, then one line per layer:
  ``Type name n_in n_out in_blobs... out_blobs... key=value ...``.  Integer keys 0–19 hold ints or
  floats (a float must contain ``.`` or ``e``, and a value fits in 15 characters); arrays use the
  key ``-23300 - id`` and the value ``count,v1,v2,...``.  Every blob must be produced once and
  consumed at most once: a blob used by several layers goes through a ``Split`` layer, which
  :meth:`NcnnGraph.param_text` inserts automatically.
* ``.bin``: the weights of every layer, in layer order, each buffer padded to 4 bytes.  Buffers a
  layer loads "by type 0" (InnerProduct / Embed weights) start with a 4-byte storage tag:
  ``0`` = float32, ``0x01306B47`` = float16, any other tag whose bytes do not sum to zero = an
  8-bit codebook (256 float32 values, then one uint8 index per weight).  Buffers loaded "by
  type 1" (biases, LayerNorm affine, MemoryData) are raw float32 with no tag.

Shapes in this module are written in numpy order (outermost first); ncnn names the axes the other
way round (``w`` innermost, then ``h``, ``d``, ``c``).  BinaryOp broadcasting in ncnn is not numpy's
for operands of different rank, so every constant here has the rank of the activation it meets,
with explicit 1-sized axes (the "explicit broadcast" rows of ncnn's broadcasting table).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

MAGIC = 7767517
TAG_FP32 = 0
TAG_FP16 = 0x01306B47
TAG_CODEBOOK = 1  # any tag with a non-zero byte sum that is not fp16/int8/"scaled fp32" (ModelBin)
STORAGES = ("fp32", "fp16", "int8")

# BinaryOp op_type / UnaryOp op_type / Reduction operation numbers (operators.md)
ADD, SUB, MUL, DIV, MAX = 0, 1, 2, 3, 4
NEG, SQUARE, SQRT, EXP = 1, 4, 5, 7
R_SUM, R_SUMSQ = 0, 2


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)
    weights: list[bytes] = field(default_factory=list)


def _fmt(value: object) -> str:
    """One param value as ncnn's ParamDict reads it."""
    if isinstance(value, (bool, int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.8e}" if value != 0 else "0.0"
        assert len(text) <= 15, text  # ParamDict reads at most 15 characters per value
        return text
    raise TypeError(f"unsupported param value {value!r}")


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def raw_f32(array: np.ndarray) -> bytes:
    """A type-1 buffer: plain little-endian float32."""
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def tagged(array: np.ndarray, storage: str) -> bytes:
    """A type-0 buffer of ``array`` stored as ``storage`` ("fp32", "fp16" or "int8" codebook)."""
    if storage == "fp32":
        return struct.pack("<I", TAG_FP32) + raw_f32(array)
    if storage == "fp16":
        return struct.pack("<I", TAG_FP16) + _pad4(np.ascontiguousarray(array, dtype="<f2").tobytes())
    if storage == "int8":
        from rwkv_music.backends.ncnn_quant import codebook_quantize

        return codebook_bytes(*codebook_quantize(np.asarray(array, dtype=np.float32)))
    raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")


def codebook_bytes(table: np.ndarray, index: np.ndarray) -> bytes:
    """A type-0 buffer in ncnn's 8-bit codebook format: 256 float32 levels, one uint8 index per weight."""
    return struct.pack("<I", TAG_CODEBOOK) + raw_f32(table) + _pad4(np.ascontiguousarray(index, np.uint8).tobytes())


class NcnnGraph:
    """Layers appended in execution order; each helper returns the name of its output blob.

    ``storage`` is how the large matrices (projections, embedding, head) are stored; the small
    LoRA matrices of v6/v7 are passed with ``small=True`` and stay float32 under "int8" (their
    outputs feed decays and gates, where an 8-bit codebook costs more accuracy than it saves).
    """

    def __init__(self, storage: str = "fp32", int8_scheme: str = "rows", seq_len: int = 1) -> None:
        from rwkv_music.backends.ncnn_quant import SCHEMES

        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if int8_scheme not in SCHEMES:
            raise ValueError(f"int8_scheme must be one of {SCHEMES}, got {int8_scheme!r}")
        self.storage = storage
        self.int8_scheme = int8_scheme  # under "int8": per-row int8 ("rows") or the fitted codebook
        # tokens per row of one graph call: activations are [B*T, ...] with row b*T + t (batch-major), so
        # every weighted layer runs once for all T tokens and only the recurrences loop (time_steps)
        self.seq_len = int(seq_len)
        self.layers: list[Layer] = []
        self._names: set[str] = set()
        self._counter = 0

    # -- bookkeeping ---------------------------------------------------------------------------
    def _fresh(self, stem: str) -> str:
        self._counter += 1
        name = f"{stem}_{self._counter}"
        while name in self._names:
            self._counter += 1
            name = f"{stem}_{self._counter}"
        return name

    def add(self, type_: str, inputs: Sequence[str], n_out: int = 1, params: dict[int, object] | None = None,
            weights: Sequence[bytes] = (), outputs: Sequence[str] | None = None) -> list[str]:
        """Append a layer; ``outputs`` names its output blobs (fresh names by default)."""
        name = self._fresh(type_.lower())
        outs = list(outputs) if outputs is not None else [self._fresh("b") for _ in range(n_out)]
        for blob in outs:
            if blob in self._names:
                raise ValueError(f"blob {blob!r} is produced twice")
            self._names.add(blob)
        self._names.add(name)
        self.layers.append(Layer(type_, name, list(inputs), outs, dict(params or {}), list(weights)))
        return outs

    def one(self, type_: str, inputs: Sequence[str], params: dict[int, object] | None = None,
            weights: Sequence[bytes] = (), out: str | None = None) -> str:
        return self.add(type_, inputs, 1, params, weights, None if out is None else [out])[0]

    # -- sources -------------------------------------------------------------------------------
    def input(self, name: str) -> str:
        return self.one("Input", [], out=name)

    def const(self, array: np.ndarray) -> str:
        """A float32 constant (MemoryData) of the given numpy shape (rank 1–4)."""
        arr = np.asarray(array, dtype=np.float32)
        if not 1 <= arr.ndim <= 4:
            raise ValueError(f"MemoryData needs rank 1..4, got shape {arr.shape}")
        dims = list(reversed(arr.shape))  # w, h, (d,) c
        keys = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[arr.ndim]
        return self.one("MemoryData", [], dict(zip(keys, dims)), [raw_f32(arr)])

    def row(self, vector: np.ndarray) -> str:
        """A ``[1, n]`` constant that broadcasts over the rows of a ``[B, n]`` activation."""
        return self.const(np.asarray(vector, dtype=np.float32).reshape(1, -1))

    # -- elementwise ---------------------------------------------------------------------------
    def binary(self, op: int, a: str, b: str, out: str | None = None) -> str:
        return self.one("BinaryOp", [a, b], {0: op}, out=out)

    def scalar(self, op: int, a: str, value: float) -> str:
        return self.one("BinaryOp", [a], {0: op, 1: 1, 2: float(value)})

    def lerp(self, base: str, diff: str, coef: str) -> str:
        """``base + diff * coef`` (the token-shift mixes)."""
        return self.add_(base, self.mul(diff, coef))

    def unary(self, op: int, a: str) -> str:
        return self.one("UnaryOp", [a], {0: op})

    def add_(self, a: str, b: str, out: str | None = None) -> str:
        return self.binary(ADD, a, b, out)

    def sub(self, a: str, b: str) -> str:
        return self.binary(SUB, a, b)

    def mul(self, a: str, b: str, out: str | None = None) -> str:
        return self.binary(MUL, a, b, out)

    def act(self, type_: str, a: str) -> str:
        """A parameterless activation layer: Sigmoid, TanH, ReLU, Swish."""
        return self.one(type_, [a])

    # -- shapes --------------------------------------------------------------------------------
    def reshape(self, a: str, shape: Sequence[int], out: str | None = None) -> str:
        """Reshape to ``shape`` (numpy order, one entry may be -1 for "the rest", e.g. the batch)."""
        dims = list(reversed(list(shape)))
        keys = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[len(dims)]
        return self.one("Reshape", [a], dict(zip(keys, dims)), out=out)

    def slice_cols(self, a: str, sizes: Sequence[int]) -> list[str]:
        """Split a ``[B, sum(sizes)]`` blob along its last axis."""
        return self.add("Slice", [a], len(sizes), {-23300: list(sizes), 1: 1})

    def concat_cols(self, blobs: Sequence[str], out: str) -> str:
        return self.one("Concat", list(blobs), {0: 1}, out=out)

    # -- time (seq_len T > 1: rows are b*T + t) ----------------------------------------------------
    def time_steps(self, a: str, width: int) -> list[str]:
        """``[B*T, width]`` → T blobs ``[B, width]``, one per time step (``[a]`` when T is 1)."""
        T = self.seq_len
        if T == 1:
            return [a]
        parts = self.add("Slice", [self.reshape(a, [-1, T, width])], T, {-23300: [1] * T, 1: 1})
        return [self.reshape(part, [-1, width]) for part in parts]

    def time_join(self, steps: Sequence[str], width: int) -> str:
        """The inverse of :meth:`time_steps`: T blobs ``[B, width]`` → ``[B*T, width]``."""
        if self.seq_len == 1:
            return steps[0]
        joined = self.one("Concat", [self.reshape(s, [-1, 1, width]) for s in steps], {0: 1})
        return self.reshape(joined, [-1, width])

    def shift(self, xx: str, prev: str, width: int, last: str) -> str:
        """Token shift of ``xx`` [B*T, width]: each row's predecessor, ``prev`` [B, width] before the first.

        The last token's row of every sequence becomes the blob ``last`` (the new shift state)."""
        T = self.seq_len
        x3 = self.reshape(xx, [-1, T, width])
        head, tail = self.add("Slice", [x3], 2, {-23300: [T - 1, 1], 1: 1})
        self.reshape(tail, [-1, width], out=last)
        shifted = self.one("Concat", [self.reshape(prev, [-1, 1, width]), head], {0: 1})
        return self.reshape(shifted, [-1, width])

    # -- math with weights ---------------------------------------------------------------------
    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None = None, small: bool = False,
               out: str | None = None) -> str:
        """InnerProduct ``x @ weight.T + bias`` on ``[B, in]``; ``weight`` is ``[out, in]`` as stored."""
        n_out, n_in = weight.shape
        if self.storage == "int8" and not small:  # 8-bit rows (integers or codebook), rows rescaled after
            from rwkv_music.backends.ncnn_quant import int8_rows, row_scales

            if self.int8_scheme == "rows":
                table, index, scale = int8_rows(weight)
                buffer = codebook_bytes(table, index)
            else:
                scale = row_scales(weight)
                buffer = tagged(weight / scale[:, None], "int8")
            y = self.one("InnerProduct", [x], {0: n_out, 1: 0, 2: n_out * n_in}, [buffer])
            if bias is None:
                return self.mul(y, self.row(scale), out=out)
            return self.add_(self.mul(y, self.row(scale)), self.row(bias), out=out)
        storage = "fp32" if small and self.storage == "int8" else self.storage
        weights = [tagged(weight, storage)]
        if bias is not None:
            weights.append(raw_f32(bias))
        params = {0: n_out, 1: int(bias is not None), 2: n_out * n_in}
        return self.one("InnerProduct", [x], params, weights, out=out)

    def embed(self, tokens: str, table: np.ndarray) -> str:
        """Rows of ``table`` [V, D] for int32 token ids ``tokens`` [B] → ``[B, D]``."""
        V, D = table.shape
        storage = self.storage
        if storage == "int8" and self.int8_scheme == "rows":
            # fp16, as torch int8 keeps embeddings float: an 8-bit table is the one int8 error torch lacks
            # (measured on random v5.0: max |Δlogit| 0.48 with it, 0.28 without, torch int8 0.28)
            storage = "fp16"
        return self.one("Embed", [tokens], {0: D, 1: V, 2: 0, 3: V * D}, [tagged(table, storage)])

    def layer_norm(self, x: str, weight: np.ndarray | None, bias: np.ndarray | None, size: int, eps: float,
                   out: str | None = None) -> str:
        """Normalise every innermost row of length ``size`` (optionally with an affine of that size)."""
        if weight is None:
            return self.one("LayerNorm", [x], {0: size, 1: float(eps), 2: 0}, out=out)
        return self.one("LayerNorm", [x], {0: size, 1: float(eps), 2: 1}, [raw_f32(weight), raw_f32(bias)], out=out)

    def matmul(self, a: str, b: str) -> str:
        """Batched ``a @ b`` over the leading axes (numpy semantics, same rank)."""
        return self.one("MatMul", [a, b])

    def reduce_last(self, op: int, x: str) -> str:
        """Reduce the innermost axis, keeping it as size 1."""
        return self.one("Reduction", [x], {0: op, 1: 0, -23303: [-1], 4: 1, 5: 1})

    # -- output ---------------------------------------------------------------------------------
    def _with_splits(self) -> list[Layer]:
        """The layers with a Split after every blob consumed more than once."""
        uses: dict[str, int] = {}
        for layer in self.layers:
            for blob in layer.inputs:
                uses[blob] = uses.get(blob, 0) + 1
        produced = {blob for layer in self.layers for blob in layer.outputs}
        missing = sorted(set(uses) - produced)
        if missing:
            raise ValueError(f"blobs consumed but never produced: {missing[:5]}")
        taken: dict[str, int] = {}
        out: list[Layer] = []
        for layer in self.layers:
            inputs = []
            for blob in layer.inputs:
                if uses[blob] > 1:
                    k = taken.get(blob, 0)
                    taken[blob] = k + 1
                    blob = f"{blob}_sp{k}"
                inputs.append(blob)
            out.append(Layer(layer.type, layer.name, inputs, layer.outputs, layer.params, layer.weights))
            for blob in layer.outputs:
                if uses.get(blob, 0) > 1:
                    copies = [f"{blob}_sp{k}" for k in range(uses[blob])]
                    out.append(Layer("Split", f"split_{blob}", [blob], copies))
        return out

    def param_text(self) -> str:
        layers = self._with_splits()
        blobs = {blob for layer in layers for blob in layer.outputs}
        lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
        for layer in layers:
            parts = [layer.type, layer.name, str(len(layer.inputs)), str(len(layer.outputs)),
                     *layer.inputs, *layer.outputs]
            for key, value in layer.params.items():
                if isinstance(value, (list, tuple)):
                    parts.append(f"{key}={len(value)}," + ",".join(_fmt(v) for v in value))
                else:
                    parts.append(f"{key}={_fmt(value)}")
            lines.append(" ".join(parts))
        return "\n".join(lines) + "\n"

    def weight_chunks(self) -> Iterator[bytes]:
        """The ``.bin`` content as a stream of byte chunks, in layer order."""
        for layer in self.layers:
            yield from layer.weights

    def counts(self) -> dict[str, int]:
        """How many layers of each type (for the sidecar and the docs)."""
        out: dict[str, int] = {}
        for layer in self._with_splits():
            out[layer.type] = out.get(layer.type, 0) + 1
        return dict(sorted(out.items()))
