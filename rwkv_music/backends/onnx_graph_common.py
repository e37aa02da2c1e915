"""Building blocks of the exported ONNX graph: a small node builder and the parts all versions share.

:class:`GraphBuilder` appends ONNX nodes and initializers and hands back value names, so the
per-version files (``onnx_graph_v4.py``, ``onnx_graph_v5.py``, ``onnx_graph_v7.py``) read like the
recurrences in docs/formats.md A7.  Activations run in the graph's dtype (fp32 or fp16); everything the
rwkv package keeps in fp32 (A10: the WKV state, decays, v4's k/v, v5/v6's r/k/v and GroupNorm) is
cast to fp32 here as well.  Shapes in comments: B batch, T time, C n_embd, A dim_att, H heads,
N head size.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from rwkv_music.backends.export_weights import Weights
from rwkv_music.model.constants import GN_EPS, LN_EPS

MIN_OPSET = 17  # LayerNormalization appeared in opset 17


def onnx_modules() -> tuple[Any, Any, Any]:
    """``(onnx, helper, numpy_helper)``, imported on first use (an optional dependency)."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is in the test extras
        from rwkv_music.errors import BackendUnavailable

        raise BackendUnavailable(
            f"ONNX export needs the 'onnx' package ({exc}); pip install rwkv-music[onnx]"
        ) from None
    return onnx, helper, numpy_helper


class GraphBuilder:
    """Collects nodes and initializers of one ONNX graph (or of a Scan body).

    Every method returns the name of the value it produced.  ``act`` is the activation dtype
    (``np.float32`` or ``np.float16``).  A body builder made with :meth:`child` shares the name
    counter, so names stay unique across the whole model, and may read any outer value.
    """

    def __init__(self, opset: int, act: Any = np.float32, _counter: Any = None) -> None:
        if opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET} (LayerNormalization), got {opset}")
        self.opset = opset
        self.act = np.dtype(act)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = _counter if _counter is not None else itertools.count()
        self._consts: dict[tuple, str] = {}
        _, self._helper, self._numpy_helper = onnx_modules()

    # -- names, constants, nodes ----------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._count)}"

    def child(self) -> "GraphBuilder":
        return GraphBuilder(self.opset, self.act, self._count)

    def init(self, array: np.ndarray, hint: str, dtype: Any = None) -> str:
        """Add ``array`` (cast to ``dtype``, default the activation dtype) as an initializer."""
        name = self.fresh(hint)
        arr = np.array(array, dtype=dtype or self.act, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        self.initializers.append(self._numpy_helper.from_array(arr, name))
        return name

    def f32(self, array: np.ndarray, hint: str) -> str:
        return self.init(array, hint, np.float32)

    def ints(self, values: Sequence[int] | int) -> str:
        """A cached int64 constant (shapes, axes, indices); scalars stay 0-d."""
        arr = np.asarray(values, dtype=np.int64)
        key = ("i64", arr.shape, tuple(arr.ravel().tolist()))
        if key not in self._consts:
            self._consts[key] = self.init(arr, "c", np.int64)
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    # -- elementwise and shape helpers ----------------------------------------------------
    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def matmul(self, a: str, b: str) -> str:
        return self.op("MatMul", [a, b])

    def sigmoid(self, x: str) -> str:
        return self.op("Sigmoid", [x])

    def silu(self, x: str) -> str:
        return self.mul(x, self.sigmoid(x))

    def relu_sq(self, x: str) -> str:
        r = self.op("Relu", [x])
        return self.mul(r, r)

    def cast(self, x: str, dtype: Any) -> str:
        """Cast ``x`` (currently of the activation dtype) to ``dtype``; a no-op when equal."""
        if np.dtype(dtype) == self.act:
            return x
        return self.op("Cast", [x], to=self._helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def to_f32(self, x: str) -> str:
        return self.cast(x, np.float32)

    def to_act(self, x: str) -> str:
        """Cast an fp32 value back to the activation dtype."""
        if self.act == np.float32:
            return x
        return self.op("Cast", [x], to=self._helper.np_dtype_to_tensor_dtype(self.act))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """``Reshape`` where 0 copies the input dimension (B and T stay dynamic)."""
        return self.op("Reshape", [x, self.ints(list(shape))])

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(list(axes))])

    def gather(self, x: str, index: int | str, axis: int) -> str:
        idx = self.ints(index) if isinstance(index, int) else index
        return self.op("Gather", [x, idx], axis=axis)

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """A Reduce* node; axes moved from attribute to input in opset 18."""
        if self.opset >= 18:
            return self.op(op_type, [x, self.ints(list(axes))], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    # -- RWKV pieces shared by all versions -------------------------------------------------
    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        """LayerNorm over C (eps 1e-5) in the activation dtype."""
        w, b = self.init(weight, hint + "_w"), self.init(bias, hint + "_b")
        return self.op("LayerNormalization", [x, w, b], axis=-1, epsilon=LN_EPS)

    def group_norm_heads(self, y32: str, n_head: int, head_size: int, weight: np.ndarray, bias: np.ndarray) -> str:
        """GroupNorm with one group per head (eps 64e-5) of fp32 ``y32`` [B,T,A] → fp32 [B,T,A].

        Written as an un-affine LayerNormalization over each head's N values followed by the
        per-channel affine ``ln_x`` (GroupNormalization's scale layout changed in opset 21).
        """
        heads = self.reshape(y32, [0, 0, n_head, head_size])
        ones = self.f32(np.ones(head_size), "gn_one")
        zeros = self.f32(np.zeros(head_size), "gn_zero")
        normed = self.op("LayerNormalization", [heads, ones, zeros], axis=-1, epsilon=GN_EPS)
        flat = self.reshape(normed, [0, 0, n_head * head_size])
        return self.add(self.mul(flat, self.f32(weight, "ln_x_w")), self.f32(bias, "ln_x_b"))

    def token_shift(self, xx: str, prev: str) -> str:
        """Previous token's vector per position: ``xx`` [B,T,C], ``prev`` [B,C] → [B,T,C]."""
        head = self.unsqueeze(prev, [1])
        body = self.slice(xx, 0, -1, axis=1)  # [B,T-1,C]; empty when T == 1
        return self.op("Concat", [head, body], axis=1)

    def last(self, x: str) -> str:
        """The last time step of [B,T,...] → [B,...]."""
        return self.gather(x, -1, axis=1)

    def lerp_mix(self, xx: str, sx: str, mu: np.ndarray, hint: str) -> str:
        """v4/v5 token-shift mix ``xx⊙μ + sx⊙(1−μ)`` written as ``sx + (xx−sx)⊙μ``."""
        return self.add(sx, self.mul(self.sub(xx, sx), self.init(mu, hint)))

    def scan(
        self,
        body: Callable[["GraphBuilder", list[str], list[str]], tuple[list[str], list[str]]],
        states: Sequence[tuple[str, Any]],
        inputs: Sequence[tuple[str, Any]],
        n_outputs: int,
        out_dtypes: Sequence[Any],
        hint: str,
    ) -> tuple[list[str], list[str]]:
        """An ONNX ``Scan`` over axis 1 (time) of ``inputs`` carrying ``states``.

        ``states``/``inputs`` are ``(name, dtype)`` pairs of outer values; ``body(b, s, x)`` gets the
        body's state and per-step input names and returns ``(new_states, step_outputs)``.  Returns
        the final states and the stacked outputs ([B,T,...]).
        """
        helper = self._helper
        sub = self.child()
        s_in = [sub.fresh(f"{hint}_s") for _ in states]
        x_in = [sub.fresh(f"{hint}_x") for _ in inputs]
        new_s, outs = body(sub, s_in, x_in)
        # Body outputs must be distinct names produced inside the body.
        new_s = [sub.op("Identity", [n], hint=f"{hint}_so") for n in new_s]
        outs = [sub.op("Identity", [n], hint=f"{hint}_yo") for n in outs]

        def vi(name: str, dtype: Any) -> Any:
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)

        s_dt = [d for _, d in states]
        graph = helper.make_graph(
            sub.nodes,
            self.fresh(f"{hint}_body"),
            [vi(n, d) for n, d in zip(s_in, s_dt)] + [vi(n, d) for n, (_, d) in zip(x_in, inputs)],
            [vi(n, d) for n, d in zip(new_s, s_dt)] + [vi(n, d) for n, d in zip(outs, out_dtypes)],
            initializer=sub.initializers,
        )
        results = self.op(
            "Scan",
            [n for n, _ in states] + [n for n, _ in inputs],
            hint=hint,
            n_out=len(states) + n_outputs,
            body=graph,
            num_scan_inputs=len(inputs),
            scan_input_axes=[1] * len(inputs),
            scan_output_axes=[1] * n_outputs,
        )
        results = results if isinstance(results, list) else [results]
        return results[: len(states)], results[len(states) :]


def channel_mix_v4(b: GraphBuilder, w: Weights, p: str, xx: str, sx: str) -> str:
    """v4/v5 channel mix: ``σ(Wr·rx) ⊙ (Wv·relu²(Wk·kx))`` with lerp token shift (A7)."""
    kx = b.lerp_mix(xx, sx, w.get(p + "time_mix_k"), "ffn_mk")
    rx = b.lerp_mix(xx, sx, w.get(p + "time_mix_r"), "ffn_mr")
    return _channel_out(b, w, p, kx, rx)


def channel_mix_v6(b: GraphBuilder, w: Weights, p: str, xx: str, sx: str) -> str:
    """v6 channel mix: ``kx = xx + (sx−xx)⊙maa_k`` (likewise rx), then as v4 (A7)."""
    d = b.sub(sx, xx)
    kx = b.add(xx, b.mul(d, b.init(w.get(p + "time_maa_k"), "ffn_mk")))
    rx = b.add(xx, b.mul(d, b.init(w.get(p + "time_maa_r"), "ffn_mr")))
    return _channel_out(b, w, p, kx, rx)


def _channel_out(b: GraphBuilder, w: Weights, p: str, kx: str, rx: str) -> str:
    k = b.relu_sq(b.matmul(kx, b.init(w.get(p + "key.weight").T, "ffn_k")))
    kv = b.matmul(k, b.init(w.get(p + "value.weight").T, "ffn_v"))
    r = b.sigmoid(b.matmul(rx, b.init(w.get(p + "receptance.weight").T, "ffn_r")))
    return b.mul(r, kv)
