"""The pointer tables the all-layers C decode steps read (``native/v7_decode.c``, ``v45_decode.c``,
``v6_decode.c``), and the one way they are called (:func:`run_layers`).

A version lists, per layer, the fields its kernel takes in order (``"ffn.key"`` reaches into a member;
a tuple value such as v7's ``(weight, bias)`` gives one pointer each; a field ``None`` a null pointer).  Its
matrix fields may be fp32 tensors or int8/int4 matrices on the native kernels
(:mod:`rwkv_music.model.quant`); the latter become descriptors ``{kind, q, scale, zmin, group}``, one
per stack slice (``decode_common.h``), and an fp32 matrix among quantized ones gets kind 0 and is read
through its pointer.

A plan is built once and kept on the weights object; a step only checks that every layer still holds
the same matrix objects (quantizing is what replaces a layer's tensors, and it replaces matrices).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

import torch

from rwkv_music.model import native

# An fp32 one-token step goes through the all-layers kernels while B·C is at most this: dispatch is most of a
# small step, and the kernels' products (a big matrix split over the threads, decode_common.h) beat torch's
# BLAS up to about here.  Measured on two cores, torch on two threads, v4 per step: L4 D128 B8 652 -> 390
# us, B16 864 -> 708; D256 B4 1151 -> 590, B8 1296 -> 1018, B16 1874 -> 1926 (even); L12 D768 B1 20.4 ->
# 11.6 ms, B4 36.3 -> 21.1, B8 38.6 -> 29.9.  Narrow models take it up to FUSED_LAYERS_MAX_ROWS rows.
FUSED_FP32_MAX_FLOATS = 4096
# Rows an fp32 step takes the all-layers call for (every version; FUSED_FP32_MAX_FLOATS bounds it further),
# and a quantized one.  At 17-32 rows of a narrow fp32 model the call still beat torch's ops on either
# thread count (2026-12-08, L4 D128, 2-core AVX2, medians of 9 alternations): with 2 torch threads
# B = 24 / 32, random v4 1.30x / 1.21x, v5.2 1.11x / 1.06x, v6 1.20x / 1.19x, v7 1.12x / 1.02x, shipped
# abc 1.12x / 1.06x, midi 1.04x / 1.04x; with 1 thread (a render lending a core to its checks) shipped
# abc 1.24x / 1.10x, midi 1.19x / 1.09x.  Quantized steps stay at 16 rows (not measured beyond).
FUSED_LAYERS_MAX_ROWS = 32
FUSED_QUANTIZED_MAX_ROWS = 16
_PLACEHOLDER = torch.zeros(1)  # a quantized matrix's place among the fp32 pointers (never read)
# v6's and v7's kernels sum the channel mix's x @ W a block of outputs at a time: they read its fp32 value
# matrix as [F, C] (an fp32_rewrite for layer_plan)
FFN_VALUE_AS_F_C = {"ffn_value": lambda t: t.t().contiguous()}


def one_token_step_fits(rows: int, width: int, quantized: bool) -> bool:
    """Whether a one-token step of ``rows`` rows takes an all-layers kernel (every version): quantized up to
    FUSED_QUANTIZED_MAX_ROWS rows; fp32 up to FUSED_LAYERS_MAX_ROWS while rows x width <= FUSED_FP32_MAX_FLOATS."""
    if quantized:
        return rows <= FUSED_QUANTIZED_MAX_ROWS
    return rows <= FUSED_LAYERS_MAX_ROWS and rows * width <= FUSED_FP32_MAX_FLOATS


@dataclass(frozen=True)
class LayerPlan:
    matrices: tuple  # (owner, attribute, object) of every matrix field: the plan holds while these do
    pointers: Any  # ctypes int64 array: the fp32 pointers, layer after layer, in the kernel's order
    descriptors: Any  # ctypes int64 array of the matrix descriptors, or None where every matrix is fp32
    shape: tuple  # the per-layer shape the caller asked to be the same in every layer
    tensors: tuple  # what the pointers point into (held alive here: some are copies made for the plan)

    def current(self) -> bool:
        return all(getattr(owner, name) is value for owner, name, value in self.matrices)


def _owner_and_name(layer: Any, field: str) -> tuple[Any, str]:
    path, _, name = field.rpartition(".")
    return (attrgetter(path)(layer) if path else layer), name


def matrix_descriptors(matrix: Any, slices: int) -> list[int] | None:
    """The descriptors of each slice of ``matrix``: kind 0 for an fp32 tensor (read through the weight
    pointers), 1 int8 and 2 int4 on the native kernels; None for any other matrix (another kernel)."""
    from rwkv_music.model.quant import Int4Matrix, Int8Matrix

    if isinstance(matrix, torch.Tensor):
        return [0, 0, 0, 0, 0] * slices
    parts = matrix.stack if getattr(matrix, "stack", None) is not None else [matrix]
    if len(parts) != slices:
        return None
    out: list[int] = []
    for m in parts:
        if type(m) is Int8Matrix and m.kernel == "native":
            out += [1, m.q.data_ptr(), m.scale.data_ptr(), 0, 0]
        elif type(m) is Int4Matrix and m.kernel == "native":
            out += [2, m.q.data_ptr(), m.scale.data_ptr(), m.zmin.data_ptr(), m.group]
        else:
            return None
    return out


def layer_plan(weights: Any, fields: tuple[str | None, ...], matrix_slices: dict[str, int], head_size: int | None,
               shape: Callable[[Any], tuple] = lambda layer: (),
               fp32_rewrite: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> LayerPlan | None:
    """The kept plan of ``weights.layers`` for a kernel taking ``fields`` per layer, or a new one; None where
    the layers do not suit it (a matrix on another kernel, a tensor not fp32 contiguous on the CPU, layers
    of different ``shape``, the kernels off).

    ``matrix_slices``: the matrix fields and their stack sizes; ``fp32_rewrite``: per matrix field, the copy
    the kernel reads instead of an fp32 tensor (v7's transposed channel-mix value)."""
    plan = weights.__dict__.get("_layer_plan")
    if plan is not None and plan.current():
        return plan
    layers = weights.layers
    quantized = any(not isinstance(_get(ly, f), torch.Tensor) for ly in layers for f in matrix_slices)
    tensors: list[torch.Tensor | None] = []
    descriptors: list[int] = []
    for ly in layers:
        for field in fields:
            if field is None:  # (a null pointer: a weight this version does not have)
                tensors.append(None)
                continue
            value = _get(ly, field)
            if field in matrix_slices:
                if quantized:
                    found = matrix_descriptors(value, matrix_slices[field])
                    if found is None:
                        return None
                    descriptors.extend(found)
                    if not isinstance(value, torch.Tensor):
                        tensors.append(_PLACEHOLDER)
                        continue
                rewrite = (fp32_rewrite or {}).get(field)
                tensors.append(rewrite(value) if rewrite else value)
                continue
            tensors.extend(value if isinstance(value, tuple) else (value,))
    present = [t for t in tensors if t is not None]
    if not (len({shape(ly) for ly in layers}) == 1 and all(type(t) is torch.Tensor for t in present)
            and native.fused_decode_ok(*present, head_size=head_size)):
        return None  # (not kept: the verdict may hinge on the kernels being off just now)
    matrices = tuple((*_owner_and_name(ly, f), _get(ly, f)) for ly in layers for f in matrix_slices)
    pointers = (ctypes.c_int64 * len(tensors))(*[0 if t is None else t.data_ptr() for t in tensors])
    table = (ctypes.c_int64 * len(descriptors))(*descriptors) if quantized else None
    plan = LayerPlan(matrices, pointers, table, shape(layers[0]), tuple(present))
    weights.__dict__["_layer_plan"] = plan
    return plan


def _get(layer: Any, field: str) -> Any:
    owner, name = _owner_and_name(layer, field)
    return getattr(owner, name)


def run_layers(kernel: str, plan: LayerPlan, sizes: tuple, x: torch.Tensor, state: Any, out_state: Any,
               names: tuple[str, ...], floats: tuple[float, ...], head_size: int | None) -> list[torch.Tensor] | None:
    """Call an all-layers kernel as they all take their arguments: ``sizes``, the plan's pointer table,
    ``x`` (the embedded rows; the kernel leaves the residual in it), the state tensors ``names`` as (in,
    out) pairs, ``floats``, the plan's descriptors and the thread count.  Returns the new state tensors
    (``out_state``'s own, or new ones), or None where these tensors do not suit the kernel."""
    ins = [state.tensors[n] for n in names]
    outs = [torch.empty_like(t) for t in ins] if out_state is None else [out_state.tensors[n] for n in names]
    if not native.fused_decode_ok(x, *ins, *outs, head_size=head_size):  # (also: the kernels on and built)
        return None
    pairs = [p for i, o in zip(ins, outs) for p in (i.data_ptr(), o.data_ptr())]
    mats = None if plan.descriptors is None else ctypes.addressof(plan.descriptors)
    rc = native.kernel(kernel)(*sizes, ctypes.addressof(plan.pointers), x.data_ptr(), *pairs, *floats, mats,
                               torch.get_num_threads())
    if rc != 0:
        raise MemoryError(f"{kernel} failed (code {rc}; no scratch memory?)")
    return outs
