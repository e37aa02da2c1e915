"""The sampler as an ONNX graph: penalties, top-p, top-k, temperature and the draw, for a batch.

``export-onnx --with-sampler`` writes it beside the model as ``OUT.sampler.onnx`` (recorded in
the sidecar under ``"sampler"``), so an app that runs the model with onnxruntime can pick tokens
without reimplementing :mod:`rwkv_music.sampling`.  The graph holds no weights and no settings:
every knob is an input, one value per row, so rows may sample differently in one call.

Inputs (B rows, V = vocabulary; any B >= 1 and V; names as the :class:`SamplingConfig` fields):

* ``logits`` float32 [B, V] -- the model's logits (``-inf`` = illegal; NaN and ``+inf`` count as illegal);
* ``occurrence`` float64 [B, V] and ``seen`` bool [B, V] -- the penalty state (zeros / false at the
  start of a piece; feed back ``new_occurrence`` / ``new_seen``);
* ``penalty_weights`` float64 [V] -- what a chosen id adds to its count (all 1 = plain counts;
  ChatRWKV's MIDI recipe: 0.3 for ids 0-126), shared by the batch;
* ``temperature`` float32 [B] (0 = greedy), ``top_k`` int64 [B] (0 = off), ``top_p`` float64 [B]
  (>= 1 = off), ``presence_penalty``, ``frequency_penalty``, ``penalty_decay`` float64 [B];
* ``uniform`` float64 [B] in [0, 1) -- the caller's random number for each row (the graph has no RNG,
  so a run is reproducible from the caller's generator).

Outputs: ``ids`` int64 [B] (-1 for a row with no legal token; its penalty state is then left as it
was), ``new_occurrence`` float64 [B, V], ``new_seen`` bool [B, V].

**Semantics** are those of our numpy sampler, step for step (docs/formats.md D1, D2): the
:class:`~rwkv_music.sampling.penalties.OccurrencePenalty` (``logit -= presence*seen +
frequency*occurrence`` in float64, back to float32), then :class:`~rwkv_music.sampling.processors.TopP`
on the temperature-1 distribution (with its fused top-k path when ``0 < top_k < V``), then
:class:`~rwkv_music.sampling.processors.TopK` (ties with the k-th score survive), then
:class:`~rwkv_music.sampling.processors.Temperature` (float32 division; 0 keeps the maximum and its
exact ties), then :func:`~rwkv_music.sampling.sampler.sample_batch`'s float64 inverse CDF over the
vocabulary in id order with ``uniform``, then ``occurrence = occurrence * decay + weight[id]`` at
the chosen id and ``seen[id] = true``.  A temperature below about 1e-30 overflows float32 scores to
``±inf`` exactly as the numpy sampler does (positive ones then count as illegal): use 0 for greedy.
The graph does not validate its inputs (negative temperatures, top-p or uniforms outside their
ranges give meaningless ids); :func:`check_params` does, for Python callers.

**Equal ids, not equal bits.** onnxruntime's ``Exp`` and its sums differ from numpy's in the last
bits, so the probabilities differ by rounding: the ids are the numpy sampler's except where a
uniform, or a cumulative sum against ``top_p``, lands within that rounding (~1e-7 relative) of a
boundary.  Not covered (apply them to the logits first): EOS bias, logit bias, bans, min-p and the
music constraints.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rwkv_music.backends.onnx_graph_common import MIN_OPSET, GraphBuilder, onnx_modules
from rwkv_music.errors import ExportError, OptionError
from rwkv_music.io_utils import atomic_write_bytes, check_writable

SAMPLER_FORMAT = "rwkv_music.onnx-sampler/1"
LOGITS_IN = "logits"
OCC_IN, SEEN_IN, WEIGHTS_IN = "occurrence", "seen", "penalty_weights"
PARAMS = ("temperature", "top_k", "top_p", "presence_penalty", "frequency_penalty", "penalty_decay", "uniform")
IDS_OUT, OCC_OUT, SEEN_OUT = "ids", "new_occurrence", "new_seen"
_F32, _F64, _I64, _BOOL = "float32", "float64", "int64", "bool"
PARAM_DTYPES = {"temperature": _F32, "top_k": _I64, "top_p": _F64, "presence_penalty": _F64,
                "frequency_penalty": _F64, "penalty_decay": _F64, "uniform": _F64}


def sampler_io() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The graph's inputs and outputs as ``{name: {"dtype", "shape"}}`` (what the sidecar records)."""
    bv = ["batch", "vocab"]
    inputs = {LOGITS_IN: {"dtype": _F32, "shape": bv}, OCC_IN: {"dtype": _F64, "shape": bv},
              SEEN_IN: {"dtype": _BOOL, "shape": bv}, WEIGHTS_IN: {"dtype": _F64, "shape": ["vocab"]}}
    inputs.update({name: {"dtype": PARAM_DTYPES[name], "shape": ["batch"]} for name in PARAMS})
    outputs = {IDS_OUT: {"dtype": _I64, "shape": ["batch"]}, OCC_OUT: {"dtype": _F64, "shape": bv},
               SEEN_OUT: {"dtype": _BOOL, "shape": bv}}
    return inputs, outputs


class _B(GraphBuilder):
    """:class:`GraphBuilder` with the few extra helpers the sampler needs (typed casts and constants)."""

    def to(self, x: str, dtype: str) -> str:
        return self.op("Cast", [x], to=self._helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def const(self, value: float, dtype: str) -> str:
        key = (dtype, float(value))
        if key not in self._consts:
            self._consts[key] = self.init(np.array(value, dtype=dtype), "k", np.dtype(dtype))
        return self._consts[key]

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", [cond, a, b])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if op_type == "ReduceSum" and self.opset < 18:  # (its axes became an input in opset 13 already)
            return self.op(op_type, [x, self.ints(list(axes))], keepdims=keepdims)
        return super().reduce(op_type, x, axes, keepdims)

    def pick(self, cond: str, a: str, b: str) -> str:
        """``Where`` for bool values (onnxruntime's CPU Where has no bool kernel)."""
        return self.op("Or", [self.op("And", [cond, a]), self.op("And", [self.op("Not", [cond]), b])])

    def row(self, x: str) -> str:
        """[B] → [B, 1]."""
        return self.unsqueeze(x, [1])

    def take(self, x: str, idx: str) -> str:
        """``x[b, idx[b]]`` as [B, 1] for int64 ``idx`` [B, 1]."""
        return self.op("GatherElements", [x, idx], axis=1)

    def finite(self, x: str) -> str:
        return self.op("Not", [self.op("Or", [self.op("IsNaN", [x]), self.op("IsInf", [x])])])


def build_sampler(opset: int = 18) -> Any:
    """The sampler graph (an ``onnx.ModelProto``); see the module docstring for its inputs and outputs."""
    onnx, helper, _ = onnx_modules()
    b = _B(opset)
    neg = b.const(-math.inf, _F32)
    zero32, zero64, one64 = b.const(0.0, _F32), b.const(0.0, _F64), b.const(1.0, _F64)
    temp, top_k, top_p, presence, frequency, decay, uniform = (b.row(n) for n in PARAMS)  # each [B, 1]

    # 1. occurrence penalty (OccurrencePenalty._penalize): float64 arithmetic, back to float32
    penalty = b.add(b.mul(frequency, OCC_IN), b.mul(presence, b.to(SEEN_IN, _F64)))
    s1 = b.to(b.sub(b.to(LOGITS_IN, _F64), penalty), _F32)
    fin = b.finite(s1)
    s = b.where(fin, s1, neg)  # NaN / +inf are illegal, as everywhere in the numpy path

    vocab = b.gather(b.op("Shape", [s]), 1, axis=0)  # int64 []
    cols = b.op("Range", [b.ints(0), vocab, b.ints(1)])  # [V]
    k_on = b.op("And", [b.op("Greater", [top_k, b.ints(0)]), b.op("Less", [top_k, vocab])])  # [B, 1]
    p_on = b.op("Less", [top_p, one64])
    def first_hit(prob_sorted: str, valid_pos: str | None) -> tuple[str, str]:
        """(the first position whose cumulative sum reaches top_p, whether any does), TopP.cutoff_sorted."""
        hit = b.op("GreaterOrEqual", [b.op("CumSum", [prob_sorted, b.ints(1)]), top_p])
        if valid_pos is not None:
            hit = b.op("And", [hit, valid_pos])
        hit_i = b.to(hit, "int32")
        return b.op("ArgMax", [hit_i], axis=1, keepdims=1), b.to(b.reduce("ReduceMax", hit_i, [1]), _BOOL)

    def top_sorted(width: str) -> str:
        """The ``width`` ([1] int64) largest scores of each row, descending."""
        return b.op("TopK", [s, width], n_out=2, axis=1, largest=1, sorted=1)[0]

    # the float64 softmax of top-p alone (TopP.apply); sorted scores give the sorted probabilities
    # (exp is monotonic), so the probabilities themselves need no sort
    s64 = b.to(s, _F64)
    top64 = b.reduce("ReduceMax", s64, [1])
    top64 = b.where(b.finite(top64), top64, zero64)
    e_b = b.where(fin, b.op("Exp", [b.sub(s64, top64)]), zero64)
    total_b = b.reduce("ReduceSum", e_b, [1])
    total_b = b.where(b.op("Greater", [total_b, zero64]), total_b, one64)

    def sorted_probs(ordered: str) -> str:
        exps = b.op("Exp", [b.sub(b.to(ordered, _F64), top64)])
        return b.op("Div", [b.where(b.finite(ordered), exps, zero64), total_b])

    # 2. one descending sort, as wide as some row needs: top-k rows k; top-p-alone rows the top 64
    # first (TopP._FAST), the full row only when some such row's top 64 do not reach its top_p
    only_p = b.op("And", [p_on, b.op("Not", [k_on])])
    fast = b.op("Min", [b.ints(64), vocab])
    need = b.where(k_on, top_k, b.where(p_on, b.unsqueeze(fast, [0, 1]), b.ints([[1]])))
    width1 = b.reshape(b.reduce("ReduceMax", need, [0, 1], keepdims=0), [1])
    _, hit1 = first_hit(sorted_probs(top_sorted(width1)), None)
    missed = b.op("And", [only_p, b.op("Not", [hit1])])
    missed = b.to(b.reduce("ReduceMax", b.to(missed, "int32"), [0, 1], keepdims=0), _BOOL)
    width = b.where(missed, b.reshape(vocab, [1]), width1)
    ordered = top_sorted(width)  # [B, W] float32
    pos = b.unsqueeze(b.op("Range", [b.ints(0), b.reshape(width, []), b.ints(1)]), [0])  # [1, W]
    last_pos = b.sub(width, b.ints([1]))
    kth_idx = b.op("Max", [b.op("Min", [b.sub(top_k, b.ints(1)), last_pos]), b.ints(0)])  # [B, 1]
    kth = b.take(ordered, kth_idx)

    # 3a. top-p with top-k after it (TopP._apply_with_top_k): float32 exps summed in float64
    smax = b.slice(ordered, 0, 1, axis=1)
    smax = b.where(b.finite(smax), smax, zero32)
    total_a = b.reduce("ReduceSum", b.to(b.op("Exp", [b.sub(s, smax)]), _F64), [1])
    total_a = b.where(b.op("Greater", [total_a, zero64]), total_a, one64)
    in_k = b.op("Less", [pos, top_k])
    p_a = b.op("Div", [b.op("Exp", [b.sub(b.to(ordered, _F64), b.to(smax, _F64))]), total_a])
    first_a, any_a = first_hit(b.where(in_k, p_a, zero64), in_k)
    cut_a = b.where(any_a, b.take(ordered, first_a), kth)
    keep_a = b.op("GreaterOrEqual", [s, cut_a])

    # 3b. top-p alone (TopP.apply): keep p >= the probability at the first hit
    p_sorted = sorted_probs(ordered)
    first_b, any_b = first_hit(p_sorted, None)
    cut_b = b.where(any_b, b.take(p_sorted, first_b), zero64)
    keep_b = b.op("And", [fin, b.op("GreaterOrEqual", [b.op("Div", [e_b, total_b]), cut_b])])

    # 3c. top-k alone (TopK.apply): keep every score >= the k-th largest
    keep_k = b.op("GreaterOrEqual", [s, kth])
    keep = b.pick(p_on, b.pick(k_on, keep_a, keep_b), b.op("Or", [b.op("Not", [k_on]), keep_k]))
    s2 = b.where(keep, s, neg)

    # 4. temperature (Temperature.apply): 0 keeps the row maximum and its ties; else float32 division
    greedy = b.where(b.op("Equal", [s2, b.reduce("ReduceMax", s2, [1])]), s2, neg)
    s3 = b.where(b.op("Equal", [temp, zero32]), greedy, b.op("Div", [s2, temp]))

    # 5. the draw (sample_batch): float64 inverse CDF over exp(score - max), vocabulary order
    valid = b.finite(s3)
    vals = b.where(valid, b.to(s3, _F64), b.const(-math.inf, _F64))
    top = b.reduce("ReduceMax", vals, [1])
    top = b.where(b.finite(top), top, zero64)
    p = b.where(valid, b.op("Exp", [b.sub(vals, top)]), zero64)
    cdf = b.op("CumSum", [p, b.ints(1)])
    x = b.mul(b.to(uniform, _F64), b.slice(cdf, -1, 2**62, axis=1))
    j = b.reduce("ReduceSum", b.to(b.op("LessOrEqual", [cdf, x]), _I64), [1])
    cols_row = b.unsqueeze(cols, [0])
    last = b.reduce("ReduceMax", b.where(b.op("Greater", [p, zero64]), cols_row, b.ints([[-1]])), [1])
    j = b.where(b.op("GreaterOrEqual", [j, vocab]), last, j)  # x rounded up to the total
    j = b.op("Max", [j, b.ints(0)])
    active = b.to(b.reduce("ReduceMax", b.to(valid, "int32"), [1]), _BOOL)  # [B, 1]
    ids = b.where(active, j, b.ints([[-1]]))
    ids_flat = b.reshape(ids, [-1])

    # 6. the penalty state (OccurrencePenalty.update); a row without a token keeps its state
    chosen = b.op("Equal", [cols_row, ids])  # [B, V]
    grown = b.add(b.mul(OCC_IN, decay), b.mul(b.to(chosen, _F64), b.unsqueeze(WEIGHTS_IN, [0])))
    new_occ = b.where(active, grown, OCC_IN)
    new_seen = b.op("Or", [SEEN_IN, chosen])

    b.nodes.append(helper.make_node("Identity", [ids_flat], [IDS_OUT]))
    b.nodes.append(helper.make_node("Identity", [new_occ], [OCC_OUT]))
    b.nodes.append(helper.make_node("Identity", [new_seen], [SEEN_OUT]))
    ins, outs = sampler_io()

    def info(name: str, spec: dict[str, Any]) -> Any:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(spec["dtype"])),
                                             spec["shape"])

    graph = helper.make_graph(b.nodes, "rwkv_music_sampler", [info(n, v) for n, v in ins.items()],
                              [info(n, v) for n, v in outs.items()], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="rwkv_music")
    model.ir_version = min(model.ir_version, 9)  # onnxruntime releases lag the onnx package's IR
    helper.set_model_props(model, {"rwkv_music": SAMPLER_FORMAT})
    onnx.checker.check_model(model)
    return model


def export_sampler(out_path: str | os.PathLike, opset: int = 18, *, force: bool = False) -> Path:
    """Write the sampler graph to ``out_path`` (atomically) and check that onnxruntime runs it."""
    onnx, _, _ = onnx_modules()
    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise OptionError(f"opset must be {MIN_OPSET}-{newest} (the onnx package's newest), got {opset!r}")
    out = check_writable(out_path, force)
    data = build_sampler(opset).SerializeToString()
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        feeds = sampler_feeds([[-math.inf, 0.0]], params={"uniform": [0.5]})
        if session.run([IDS_OUT], feeds)[0].tolist() != [1]:
            raise ExportError(f"{out}: the sampler graph picked an illegal id; nothing was written")
    except ImportError:
        pass  # written unchecked: onnxruntime is optional at export time
    except ExportError:
        raise
    except Exception as exc:  # whatever the runtime raises: not usable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{out}: the sampler graph does not run in onnxruntime ({first}); nothing was written") \
            from None
    return atomic_write_bytes(out, data, force)


def export_beside(model_path: str | os.PathLike, opset: int = 18, *, force: bool = False) -> Path:
    """The sampler for an exported model: ``OUT.sampler.onnx`` beside ``OUT.onnx``, recorded in its sidecar."""
    from rwkv_music.backends.sidecar import find_onnx_sidecar, onnx_sampler_path, record_onnx_sampler

    side = find_onnx_sidecar(model_path)
    out = export_sampler(onnx_sampler_path(model_path), opset, force=force)
    inputs, outputs = sampler_io()
    record_onnx_sampler(side, {"file": out.name, "format": SAMPLER_FORMAT, "opset": opset,
                               "inputs": inputs, "outputs": outputs})
    return out


DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "penalty_decay": 1.0}


def check_params(params: dict[str, Sequence[float]], batch: int) -> None:
    """:class:`OptionError` for per-row settings the graph would not refuse (it validates nothing)."""
    rules = {"temperature": lambda v: math.isfinite(v) and v >= 0, "top_k": lambda v: v >= 0 and v == int(v),
             "top_p": lambda v: math.isfinite(v) and v >= 0, "presence_penalty": math.isfinite,
             "frequency_penalty": math.isfinite, "penalty_decay": lambda v: 0 <= v <= 1,
             "uniform": lambda v: 0 <= v < 1}
    for name, values in params.items():
        if name not in rules:
            raise OptionError(f"unknown sampler input {name!r}; valid: {', '.join(PARAMS)}")
        if len(values) != batch:
            raise OptionError(f"sampler input {name!r} has {len(values)} values for {batch} rows")
        for v in values:
            if not rules[name](float(v)):
                raise OptionError(f"sampler input {name!r} has an out-of-range value {v!r}")


def sampler_feeds(
    logits: Any,
    occurrence: Any = None,
    seen: Any = None,
    weights: Any = None,
    params: dict[str, Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """The graph's inputs as numpy arrays: fresh penalty state and the :data:`DEFAULTS` unless given."""
    arr = np.asarray(logits, dtype=np.float32)
    batch, vocab = arr.shape
    params = dict(params or {})
    check_params(params, batch)
    if "uniform" not in params:
        raise OptionError("sampler inputs need 'uniform': one number in [0, 1) per row")
    feeds = {
        LOGITS_IN: arr,
        OCC_IN: np.zeros((batch, vocab)) if occurrence is None else np.asarray(occurrence, dtype=np.float64),
        SEEN_IN: np.zeros((batch, vocab), bool) if seen is None else np.asarray(seen, dtype=bool),
        WEIGHTS_IN: np.ones(vocab) if weights is None else np.asarray(weights, dtype=np.float64),
    }
    for name in PARAMS:
        values = params.get(name, [DEFAULTS.get(name, 0.0)] * batch)
        feeds[name] = np.asarray(values, dtype=PARAM_DTYPES[name])
    return feeds


__all__ = ["PARAMS", "SAMPLER_FORMAT", "build_sampler", "check_params", "export_beside", "export_sampler",
           "sampler_feeds",
           "sampler_io"]
