"""int8 (and int4) weight quantization of the big matrices, applied once after a version's ``prepare``.

Each large projection (receptance/key/value/gate/output, the channel-mix matrices, the head) is
stored as int8 with one symmetric scale per output channel: ``W[o, :] ≈ scale[o] · q[o, :]``,
``scale[o] = max|W[o, :]| / 127``.  That reads a quarter of the fp32 bytes per token, and
single-token decode on a CPU is bound by reading weights.  RWKV-7's four LoRAs (v, a, w, g), kept
as zero-padded stacks, are int8 too: at L12 D768 they are a third of a layer's fp32 bytes, and with
them int8 decode at B=1 went from 93 to 120 tok/s (int4's default from 103 to 139) on a random
v7 L12 D768 checkpoint, one thread; top-1 agreement on the shipped models stayed at 99.9 % (int8)
and 99.6 % / 99.1 % (int4, abc / midi), on that random model's flat logits int8 went 84.2 → 83.0 %.
Embeddings (a gather), LayerNorm vectors, decays and v6's LoRAs (not in :data:`MATRIX_FIELDS`)
stay float32.

The version modules are not rewritten: an :class:`Int8Matrix` is a *tensor-like* object (torch's
``__torch_function__`` protocol), so the ``x @ W``, ``F.linear(x, W)`` and ``torch.bmm(x, W)``
calls in ``rwkv_music/model/v*.py`` reach its int8 kernels unchanged.  Which fields are matrices,
and in which orientation they are used, is the table :data:`MATRIX_FIELDS`; a test compares the
int8 logits of every version with fp32, so a wrong entry fails loudly.

Kernels (:data:`KERNELS`), chosen once per model:

* ``"native"`` (default where a C compiler is found): our C kernel
  (``rwkv_music/model/native/int8_gemm.c``, built on first use) — each activation row is rounded
  to int16 with its own scale (relative error ~1.5e-5, rows stay independent), int16 × int8
  products in AVX2 integer lanes, on ``torch.get_num_threads()`` threads; the fastest at batch 1
  and the most accurate.
* ``"weight_only"`` (the default without a compiler): ``torch._weight_int8pack_mm`` —
  activations are rounded to bf16 inside the kernel, only the weights are int8.
* ``"dynamic"``: fbgemm's ``quantized::linear_dynamic`` — activations are quantized per call
  (one scale per call, so rows of a batch share it and are independent only up to that
  rounding), int8 × int8 products; the fastest on x86 at batch ≥ 8, less accurate.
* ``"dequant"``: rebuild the float matrix per call; slow, always available (the reference).

int4 (:class:`Int4Matrix`, :func:`quantize_weights_int4`, ``dtype="int4"``): the same matrices as
group-wise asymmetric 4-bit codes, ``w ≈ zmin + scale · code`` with one fp32 scale and minimum per
:data:`INT4_GROUP` inputs (fitted to a small squared error, :func:`_fit_groups`), two codes a byte.
At the default group of 64 that is 5 bits a weight (int8: 8).  Kernels: ``"native"``
(``rwkv_music/model/native/int4_gemm.c``: int16 activations, integer products per group, fp32
accumulation; vpdpbusd on byte planes of the activations where the CPU has AVX512-VNNI or
AVX-VNNI) or ``"dequant"`` (the fallback without a C compiler: the float matrix rebuilt per call,
slower than fp32).  With the C kernel a batch row's numbers do not depend on the other rows.

The head, each layer's time-mix output projection (:data:`INT4_INT8_FIELDS`) and every matrix of
the first layer (:data:`INT4_INT8_LAYERS`) stay per-channel int8; the rest is int4: the FFN, the
time mix's input projections and RWKV-7's LoRAs.  ``int8_fields=("head",)``
(:data:`INT4_ALL_BUT_HEAD`, with ``int8_layers=()``) makes every layer matrix int4,
``int8_fields=()`` the head too.

Which codes, scales and minimums are stored is chosen by calibration (``dtype="int4"`` does it by
default; ``TorchModel.quantize_int4(calibration=None)`` rounds each weight to its nearest code
instead): the model samples 16 sequences of 64 tokens from itself (fixed seed, each after its
format's document start: ABC bos, MIDI ``<pad>``), runs them, and every int4 matrix is rounded by
GPTQ (:func:`gptq_codes_int4`) for ``H = Σ x xᵀ`` of the inputs it saw, layer by layer so each layer
sees the inputs the quantized layers before it give.  The kernels and the storage are unchanged, so
is the speed; at load it costs 0.8 s (abc) and 1.4 s (midi) on one thread, sampling included (a
random L12 D768 v7 checkpoint: 103 s, nearest codes 67 s).  Calibration raises the peak memory of
a load: at L12 D768 (v7) 1.2-1.4 GB where int8 and int4 with nearest codes peak at 0.83 GB (1.6-1.8
GB before the Hessian work of each 3,072-input matrix, 75 MB a float64 copy, was done in place).
Most of what remains is glibc's heap keeping freed blocks once its mmap threshold has risen with
the big temporaries: with ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment (a process setting,
Linux/glibc) the same load peaked at 1.0 GB.

Top-1 agreement with fp32 on the shipped models (32 prompts of 64 tokens sampled from the fp32
model, as ``benchmarks/bench_runtime.py`` measures, its prompt seed 1; 2,048 positions, other
prompt seeds move them by 0.2-0.8; in parentheses the mean over prompt seeds 1, 3, 5, 7):

=================================================  =====================  =====================
scheme                                             abc (V128)             midi (V20096)
=================================================  =====================  =====================
int8 (the ceiling)                                 99.9 % (99.85)         99.85 % (99.80)
int4 groups of 64, head int4                       97.3 %                 95.2 %
int4 groups of 32, head int4                       97.3 %                 95.6 %
int4 groups of 64, head int8, nearest codes        98.8 % (98.60)         95.7 % (96.08)
int4 groups of 32, head int8, nearest codes        98.3 %                 97.0 %
int4 groups of 64, head int8, GPTQ (old default)   99.2 % (99.08)         97.3 % (97.30)
int4 groups of 32, head int8, GPTQ                 98.3 % (98.50)         97.5 % (97.60)
=================================================  =====================  =====================

The default since 2026-12-05 keeps the time mix in int8 as well (int4 for the FFN only).  On the
shipped models (prompt seed 1 / mean of 1, 3, 5, 7); a candidate abc fine-tune that was not shipped
lost more to int4 (all layers 97.6 %, this default 98.8 %), which is why the default changed:

=================================================  =====================  =====================
scheme (GPTQ, groups of 64)                        abc (V128)             midi (V20096)
=================================================  =====================  =====================
head int8, layers int4 (``INT4_ALL_BUT_HEAD``)     99.2 % (99.08)         97.3 % (97.30)
head and rkv int8                                  99.6 % (99.37)         98.0 % (98.21)
head and output int8                               99.2 % (99.21)         97.95 % (97.62)
head, rkv and output int8 (default)                99.5 % (99.44)         99.1 % (98.97)
=================================================  =====================  =====================

It costs decode speed: on a random v7 L12 D768 checkpoint at B=1 on one thread (another job on the
second core) int4 ran 1.11x int8 with every layer matrix int4 and 1.06x with the default.  With
v7's LoRAs in int8 as well (2026-12-06; int4's default keeps them int8, ``INT4_ALL_BUT_HEAD``
makes them int4): 1.25x and 1.15x int8, and the default's agreement 99.6 % (abc) and 99.1 % (midi),
int4 in every layer matrix 99.2 % and 97.5 % (prompt seed 1).

The default since 2026-12-06 (issue 20: int4 at B=1 was 1.13-1.20x int8, the target 1.3x) moves the
time mix's input projections and the LoRAs to int4 and keeps layer 0 int8 instead, as llama.cpp's
mixed k-quants spend more bits on chosen layers.  On the shipped models (GPTQ, groups of 64; prompt
seeds 1 / 3 / 5 / 7, as above; the first three rows were measured together):

=================================================  ===============================  ===============================
scheme                                             abc (V128)                       midi (V20096)
=================================================  ===============================  ===============================
head, rkv, output int8 (the previous default)      99.56 / 99.07 / 99.56 / 99.66    99.12 / 99.02 / 99.02 / 99.02
head and output int8                               99.27 / 98.88 / 99.32 / 99.41    98.19 / 97.61 / 97.61 / 97.56
head, output and layer 0 int8 (default)            99.27 / 99.37 / 99.61 / 99.66    98.63 / 98.78 / 98.88 / 98.29
every layer matrix int4 but layer 0                —                                98.10 / 98.10 (seeds 1, 3)
every layer matrix int4 but layer 0, groups of 32  —                                98.68 / 98.49 (seeds 1, 3)
=================================================  ===============================  ===============================

Only the first layer matters this much: int4 everywhere but the last layer gave 97.5 / 97.3 % (midi,
seeds 1, 3), as much as int4 everywhere.  On the random L12 D768 checkpoints of
``benchmarks/bench_runtime.py`` (B=1, one thread, interleaved with int8 in one run), where layer 0 is
one twelfth of the layer matrices, int4 decodes at 1.20x (v7), 1.25x (v4) and 1.28x (v5.2) int8
(the previous default: 1.13x, 1.20x, 1.18x in an earlier run that day; int4 in every layer matrix
1.28x, 1.32x, 1.38x); with groups of 64 in pairs through 512-bit registers (``int4_gemm.c``) 1.24x,
1.27x, 1.27x (int4 everywhere 1.33x, 1.36x, 1.38x).  A v7 step there spent about 1.5 ms besides
its products (the recurrence, norms and Python per layer), the same for int8 and int4; with the
layers of a quantized v7 step in one C call (``v7_decode.c``) v7 went to 1.31x (int8 220, int4 288
tok/s), v4 and v5.2 (unchanged, still per layer in torch) read 1.37x and 1.25x in that run: on this
shared machine the same comparison moves by about 5 % between runs.  With v4 and v5 steps in one C
call as well (``v45_decode.c``, 2026-12-06): v7 1.33x (int8 213, int4 284 tok/s), v4 1.46x (193, 281),
v5.2 1.36x (222, 303); int4 in every layer matrix 1.44x, 1.57x, 1.47x.  Two more runs of all three:
v7 1.29x and 1.30x (206, 267), v4 1.36x (228, 310), v5.2 1.43x and 1.44x (226, 325); then, with v7's
recurrence taking its exponentials 16 lanes at a time (``wkv7.c``), v7 alone 1.37x (227, 311): v7
sits at the 1.3x line within this machine's noise, v4 and v5.2 above it.

Tried and not better: symmetric groups (64: 97.0 / 93.6 %), plain min/max grids (32: 96.8 /
94.9 %), a clip search over 0.80-1.00 × absmax (symmetric, 32: 97.3 / 95.2 %); the int16
activation rounding costs nothing (float activations on the same int4 weights give the same
agreement).  On the midi model int4 on any one kind of matrix alone (head, rkv, output, ffn)
costs 0.7-3.2 points; groups of 32 cost 6-10 % of the int4 decode speed, so 64 stays the default.

GPTQ variants on midi (mean over 3 calibration seeds × 4 prompt seeds, where calibration seeds
alone move it by ±0.3; the reference, GPTQ as above plus the re-solve below, 97.4 %): calibration
sequences after a uniformly drawn first token instead of the document start 96.6-97.0 % (one
calibration seed); without act order 97.1 %; the scales and minimums re-solved for the chosen codes
(exact least squares in ``H``; dropped: it needs [out, in, 2 · groups] memory) 97.4 → 97.3 %;
damping 0.1 instead of 0.01, 32 sequences instead of 16, one matrix at a time instead of one layer,
3 alternations of GPTQ and the re-solve, GPTQ on the int8 head too, act order over all inputs with
every group's scale and minimum fitted first (the paper's "static groups"): 97.3-97.4 %; each layer's
target moved so it also undoes the error of the layers before (least squares to the fp32 model's
outputs): 97.2 %.  GPTQ halves each matrix's output error on the calibration inputs, which buys
0.5 (abc) and 1.2 (midi) points.  The calibration fits the format's own documents: on uniform
random token ids agreement drops by 1-2 points (abc 93.5 → 92.5 %, midi 72.4 → 70.2 %).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> w = torch.randn(64, 32, generator=g)           # [out, in], as in a checkpoint
>>> m = Int8Matrix.from_float(w, layout="out_in", kernel="dequant")
>>> x = torch.randn(2, 32, generator=g)
>>> y = x @ w.t()
>>> bool((torch.nn.functional.linear(x, m) - y).abs().max() < 0.02 * y.abs().max())  # within 2% of the largest
True
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rwkv_music.errors import OptionError
from rwkv_music.model import native

log = logging.getLogger(__name__)

KERNELS = ("native", "dynamic", "weight_only", "dequant")
QMAX = 127  # symmetric int8: -127..127 (−128 unused so the range is symmetric)

# Field name → how the version modules use it: "in_out" (x @ W, W stored [in, out]), "out_in"
# (F.linear(x, W), W stored [out, in]), "bmm" (torch.bmm(x, W), W stored [M, in, out]).
# Fields are looked up on the weights object, its per-layer objects and their ``ffn`` member.
MATRIX_FIELDS: dict[str, str] = {
    "head": "in_out",
    # v4 / v5 time mix and the shared v4/v5 channel mix (rwkv_music/model/v4.py)
    "att_kvr": "bmm", "att_rkvg": "bmm", "att_out": "in_out",
    "key": "in_out", "receptance": "in_out", "value": "in_out",
    # v6 / v7
    "rkvg": "bmm", "rkv": "bmm", "output": "in_out",
    # v7's four LoRAs (v a w g) as zero-padded stacks: at L12 D768 they are a third of a layer's
    # bytes in fp32 and took 3.7 of 10.6 ms a step at B=1 beside int8 projections
    "lora_in": "bmm", "lora_out": "bmm",
    "ffn_key": "in_out", "ffn_receptance": "in_out", "ffn_value": "out_in",
}
LORA_FIELDS: tuple[str, ...] = ("lora_in", "lora_out")  # (the ONNX and ncnn int8 exports keep them fp32)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight`` [out, in] float → (q int8 [out, in], scale f32 [out])."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))  # an all-zero row keeps q = 0
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dynamic_available() -> bool:
    """Whether fbgemm's dynamic int8 linear is usable here (x86 CPU builds of torch)."""
    engine = torch.backends.quantized.engine
    return engine in ("x86", "fbgemm") and hasattr(torch.ops.quantized, "linear_dynamic")


def weight_only_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def native_available(choice: bool | None = None) -> bool:
    """Whether our C kernel is chosen (``choice``; ``None``: :func:`rwkv_music.model.native.enabled`)
    and built (or builds now) on this machine."""
    return native.int8_gemm(choice) is not None


def default_kernel(choice: bool | None = None) -> str:
    """Our C kernel where it is chosen (``choice``, as in :func:`native_available`) and builds, else
    torch's weight-only kernel; ``"dynamic"`` is opt-in (the fastest at large batch on x86, but it
    rounds activations to int8 per call)."""
    if native_available(choice):
        return "native"
    return "weight_only" if weight_only_available() else "dequant"


class Int8Matrix:
    """One int8 matrix (or a stack of them for ``bmm``) that torch ops treat as the float original.

    Stores ``q`` [out, in] int8 and ``scale`` [out] f32 (per-output-channel, symmetric); computes
    in float32 and returns float32.  ``shape`` is the logical shape of the replaced tensor.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, layout: str, kernel: str,
                 stack: list["Int8Matrix"] | None = None) -> None:
        if layout not in ("in_out", "out_in", "bmm"):
            raise ValueError(f"Int8Matrix: layout must be 'in_out', 'out_in' or 'bmm', got {layout!r}")
        if kernel not in KERNELS:
            raise ValueError(f"Int8Matrix: kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.layout, self.kernel = layout, kernel
        self.stack = stack  # "bmm": one Int8Matrix per slice
        self.q, self.scale = q, scale
        self._packed: Any = None
        self._scale_bf16: torch.Tensor | None = None
        self._native: Callable[..., int] | None = None
        self._stack_call: Callable[..., int] | None = None
        if stack is None:
            out_f, in_f = q.shape
            self.shape = torch.Size((in_f, out_f) if layout == "in_out" else (out_f, in_f))
            self._prepare_kernel()
        else:
            self.shape = torch.Size((len(stack), *stack[0].shape))
            if kernel == "native":  # the whole stack in one C call, its slices' pointers taken once
                self._stack_call = native.kernel("rwkv_int8_gemm_stack", True)
                self._stack_ptrs = _pointer_arrays([m.q for m in stack], [m.scale for m in stack])

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_float(cls, weight: torch.Tensor, layout: str, kernel: str | None = None) -> "Int8Matrix":
        """Quantize ``weight`` as the version modules store it (``layout`` says its orientation)."""
        kernel = kernel or default_kernel()
        if layout == "bmm":
            parts = [cls.from_float(w, "in_out", kernel) for w in weight.unbind(0)]
            return cls(parts[0].q[:0], parts[0].scale[:0], "bmm", kernel, stack=parts)
        rows = weight.t() if layout == "in_out" else weight  # per output channel = per row of [out, in]
        q, scale = quantize_rows(rows)
        return cls(q, scale, layout, kernel)

    def _prepare_kernel(self) -> None:
        if self.kernel == "dynamic":
            with warnings.catch_warnings():  # quantized tensors are deprecated, the fbgemm op is not
                warnings.simplefilter("ignore")
                zeros = torch.zeros(self.q.shape[0], dtype=torch.long)
                qw = torch._make_per_channel_quantized_tensor(self.q, self.scale.double(), zeros, 0)
                self._packed = torch.ops.quantized.linear_prepack(qw, None)
            self.q = self.q[:0]  # the packed copy is the only one kept (see nbytes)
        elif self.kernel == "weight_only":
            self._scale_bf16 = self.scale.to(torch.bfloat16)
        elif self.kernel == "native":  # asked for by name: an explicit choice, whatever the default
            self._native = native.int8_gemm(True)
            if self._native is None:
                raise ValueError(f"int8 kernel 'native' is unavailable: {native.status(True)}")

    # -- maths -----------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """The float32 matrix this stands for, in its logical layout."""
        if self.stack is not None:
            return torch.stack([m.dequantize() for m in self.stack])
        w = self._int8().float() * self.scale[:, None]  # [out, in]
        return w.t().contiguous() if self.layout == "in_out" else w

    def _int8(self) -> torch.Tensor:
        if self._packed is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.ops.quantized.linear_unpack(self._packed)[0].int_repr()
        return self.q

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., in] → float32 [..., out] (x·Wᵀ with W [out, in])."""
        if x.dim() == 2:  # the decode shape: no reshapes (each costs microseconds, 70+ calls a token)
            return self._kernel(x).float()
        y = self._kernel(x.reshape(-1, x.shape[-1])).float()
        return y.view(*x.shape[:-1], y.shape[-1])

    def _kernel(self, x2: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, in] → [rows, out] in the kernel's output dtype (bf16 for weight_only).

        ``out`` (float32 [rows, out], contiguous) is written in place by the native kernel."""
        if self._native is not None:
            x2 = x2.float().contiguous()
            rows = x2.shape[0]
            if out is None:
                out = torch.empty(rows, self.q.shape[0], dtype=torch.float32)
            if self._native(x2.data_ptr(), self.q.data_ptr(), self.scale.data_ptr(), out.data_ptr(),
                            rows, x2.shape[1], self.q.shape[0], torch.get_num_threads()) != 0:
                raise MemoryError("int8 kernel: could not allocate its scratch buffer")
            return out
        if self.kernel == "weight_only":
            return torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.q, self._scale_bf16)
        if self.kernel == "dynamic":
            return torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed, True)
        return (x2.float() @ self.q.t().float()) * self.scale

    def bmm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [M, N, in] → float32 [M, N, out], slice i through matrix i."""
        if self._stack_call is not None:  # (the native kernel: the whole stack in one C call)
            return _stack_product(self, x, self.stack[0].q.shape[0], ())
        if self.kernel == "weight_only":  # one bf16 cast in and one fp32 cast out for the whole stack
            x = x.to(torch.bfloat16)
        return torch.stack([m._kernel(xi) for m, xi in zip(self.stack, x.unbind(0))]).float()

    @property
    def nbytes(self) -> int:
        """Bytes held (int8 values and scales)."""
        if self.stack is not None:
            return sum(m.nbytes for m in self.stack)
        out_f, in_f = (self.shape[1], self.shape[0]) if self.layout == "in_out" else tuple(self.shape)
        return out_f * in_f + 4 * out_f

    def __repr__(self) -> str:
        return f"Int8Matrix(shape={tuple(self.shape)}, layout={self.layout!r}, kernel={self.kernel!r})"

    # -- the tensor-like protocol ------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is None:
            raise TypeError(f"Int8Matrix does not support {getattr(func, '__name__', func)}; "
                            "add it to rwkv_music.model.quant._HANDLERS")
        return handler(*args, **kwargs)

# -- int4 ------------------------------------------------------------------------------------

INT4_KERNELS = ("native", "dequant")
INT4_GROUP = 64  # inputs per scale/minimum; a multiple of 32 (see int4_gemm.c)
# What dtype="int4" keeps in per-channel int8: the head (alone in int4 it cost the shipped models
# 2.5-3 points of top-1 agreement with fp32), each layer's time-mix output projection, and every
# matrix of the first layer (INT4_INT8_LAYERS: with every other layer matrix int4, layer 0 in int8
# gave the midi model back 0.6-1.1 points).  Everything else is int4: the FFN, the time mix's input
# projections and RWKV-7's LoRAs.  See the module docstring for the numbers.
INT4_INT8_FIELDS: tuple[str, ...] = ("head", "att_out", "output")
INT4_INT8_LAYERS: tuple[int, ...] = (0,)  # layer indices (negative: from the end) kept int8 whole
INT4_ALL_BUT_HEAD: tuple[str, ...] = ("head",)  # with int8_layers=(): every layer matrix int4 (faster, less accurate)
INT4_BLOCK = 32  # codes are packed in blocks of 32 inputs (16 bytes)
INT4_DAMP = 0.01  # GPTQ's damping: λ = INT4_DAMP · mean(diag H) added to H's diagonal (the paper's 1 %)


def int4_native_available(choice: bool | None = None) -> bool:
    """Whether the C int4 kernel is chosen (``choice`` as in :func:`native_available`) and builds."""
    return native.int4_gemm(choice) is not None


def default_int4_kernel(choice: bool | None = None) -> str:
    """The C kernel where it is chosen and builds, else ``"dequant"`` (a float matrix rebuilt per call)."""
    return "native" if int4_native_available(choice) else "dequant"


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes [out, n] (0..15, n a multiple of 32) → bytes [out, n / 2]: in each block of 32 inputs,
    byte j holds input j (low nibble) and input j + 16 (high nibble), the layout int4_gemm.c reads."""
    out_f, n = codes.shape
    if n % INT4_BLOCK:
        raise ValueError(f"pack_int4: the input size {n} is not a multiple of {INT4_BLOCK}")
    c = codes.to(torch.uint8).reshape(out_f, n // INT4_BLOCK, 2, INT4_BLOCK // 2)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(out_f, n // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: bytes [out, n / 2] → codes uint8 [out, n]."""
    out_f, half = packed.shape
    b = packed.reshape(out_f, half // (INT4_BLOCK // 2), 1, INT4_BLOCK // 2)
    return torch.cat([b & 15, b >> 4], dim=2).reshape(out_f, half * 2)


def _fit_groups(wp: torch.Tensor, valid: torch.Tensor, steps: int = 21
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scale and minimum of every group of ``wp`` [out, ng, group] (``valid`` masks padding)
    with a small squared error: for each of ``steps`` code grids spanning the group's [min, max]
    (15 ± 1 steps across it), the least-squares scale and minimum of those codes; the best is kept.
    The same search as llama.cpp's ``make_qkx2_quants``; on Gaussian weights it lowers the squared
    error of the plain min/max grid by 20-30 %, and lifted the shipped models' int4 top-1 agreement
    with fp32 by 0.5-1.5 points."""
    v = valid.expand_as(wp).to(wp.dtype)
    w0 = wp * v
    wmin = torch.where(valid, wp, torch.inf).amin(-1)
    wmax = torch.where(valid, wp, -torch.inf).amax(-1)
    span = wmax - wmin
    flat = span <= 0  # a constant group: codes 0 and its value as the minimum, exact
    span = torch.where(flat, torch.ones_like(span), span)
    n, sw = v.sum(-1), w0.sum(-1)
    best_err = best_s = best_m = None
    for d in torch.linspace(-1.0, 1.0, steps).tolist():
        codes = (torch.round((wp - wmin[..., None]) * ((15 + d) / span)[..., None]).clamp_(0, 15)) * v
        sl, sll, slw = codes.sum(-1), (codes * codes).sum(-1), (codes * w0).sum(-1)
        den = n * sll - sl * sl
        ok = (den > 0) & ~flat
        s = torch.where(ok, (n * slw - sl * sw) / torch.where(ok, den, torch.ones_like(den)), span / 15)
        s = torch.where(s > 0, s, span / 15)
        m = torch.where(ok, (sw - s * sl) / n, wmin)
        err = (((m[..., None] + s[..., None] * codes) - w0) * v).square().sum(-1)
        if best_err is None:
            best_err, best_s, best_m = err, s, m
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_m = torch.where(better, s, best_s), torch.where(better, m, best_m)
    best_s = torch.where(flat, torch.ones_like(best_s), best_s)
    best_m = torch.where(flat, wmin, best_m)
    codes = torch.round((wp - best_m[..., None]) / best_s[..., None]).clamp_(0, 15)
    return codes, best_s, best_m


def quantize_groups_int4(weight: torch.Tensor, group: int = INT4_GROUP, hessian: torch.Tensor | None = None,
                         damp: float = INT4_DAMP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit: ``weight`` [out, in] → (packed uint8 [out, n_pad / 2],
    scale f32 [out, ng], zmin f32 [out, ng]) with ``w ≈ zmin + scale · code``, code 0..15, the
    scale and minimum of each group fitted by :func:`_fit_groups`; n_pad = in rounded up to 32,
    ng = ceil(n_pad / group).

    With ``hessian`` (``Σ x xᵀ`` [in, in] of the matrix's inputs, e.g. as recorded through an
    :class:`InputRecorder`) the codes are chosen by :func:`gptq_codes_int4` (rounding errors
    compensated on the inputs not yet rounded, damped by ``damp``), else each weight is rounded to
    its nearest code."""
    if group <= 0 or group % INT4_BLOCK or group > 4096:
        raise ValueError(f"int4 group size must be a positive multiple of {INT4_BLOCK} up to 4096, got {group}")
    w = weight.detach().float()
    out_f, n_in = w.shape
    n_pad = -(-n_in // INT4_BLOCK) * INT4_BLOCK
    ng = -(-n_pad // group)
    if hessian is not None:
        codes, scale, zmin = gptq_codes_int4(w, hessian, group, damp)
        return pack_int4(F.pad(codes, (0, n_pad - n_in))), scale.contiguous(), zmin.contiguous()
    wp = F.pad(w, (0, ng * group - n_in)).view(out_f, ng, group)
    valid = (torch.arange(ng * group) < n_in).view(1, ng, group)
    codes, scale, zmin = _fit_groups(wp, valid)
    codes = torch.where(valid, codes, torch.zeros_like(codes)).view(out_f, ng * group)[:, :n_pad]
    return pack_int4(codes), scale.contiguous(), zmin.contiguous()


def _inverse_hessian_factor(hessian: torch.Tensor, damp: float, overwrite: bool = False) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (float64), ``λ = damp · mean(diag H)``.

    Inputs that never fired (a zero diagonal) get ``H[i, i] = 1``: their weights are rounded plainly
    and pass no error on.  If the factorization still fails the damping grows tenfold and it retries.
    ``overwrite``: ``hessian`` (float64) may be used as scratch."""
    # (in place where it can: at 3,072 inputs each [in, in] float64 copy is 75 MB, and the copies
    # made the peak memory of an int4 load twice an int8 one's)
    h = hessian.detach().to(torch.float64)
    if not overwrite or not h.is_contiguous():
        h = h.clone(memory_format=torch.contiguous_format)
    diag = h.diagonal()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    diag[dead] = 1
    base = diag.clone()
    mean = float(diag.mean())
    for attempt in range(6):
        lam = damp * mean * 10 ** attempt
        torch.add(base, lam, out=diag)  # H + λI
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            del chol
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return u
    return torch.eye(base.shape[0], dtype=torch.float64)  # (a pathological H: plain rounding)


def gptq_codes_int4(weight: torch.Tensor, hessian: torch.Tensor, group: int = INT4_GROUP,
                    damp: float = INT4_DAMP, act_order: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Error-compensating rounding (GPTQ: Frantar et al. 2022, arXiv 2210.17323) of ``weight``
    [out, in] into the group-wise int4 grid of :func:`quantize_groups_int4`, for inputs whose
    second moment is ``hessian`` = ``Σ x xᵀ`` [in, in].

    The goal is a small output error ``Σ ‖(W - Ŵ) x‖²`` on those inputs rather than a small weight
    error.  Inputs (columns of W) are rounded one at a time; the rounding error of column j, divided
    by ``U[j, j]``, is taken off the columns not yet rounded in proportion to row j of ``U``, the
    upper Cholesky factor of the damped inverse Hessian ``(H + λI)⁻¹``, ``λ = damp · mean(diag H)``
    (the paper's closed form of the optimal update of the remaining weights, its eq. 3 in the
    Cholesky form of its section 4), lazily: within a group at once, on the later columns once per
    group.  A group's scale and minimum are fitted (:func:`_fit_groups`) to its weights as updated
    by the groups before it, when it is reached.

    ``act_order``: groups in falling order of their inputs' total ``H[i, i]``, and inside each group
    its inputs likewise (the paper's "act order", here inside the fixed groups, so the storage does
    not change).  Returns (codes float [out, in], scale f32 [out, ng], zmin f32 [out, ng]),
    ng = ceil(ceil(in / 32) · 32 / group)."""
    w0 = weight.detach().to(torch.float64)
    h = hessian.detach().to(torch.float64)
    out_f, n_in = w0.shape
    if h.shape != (n_in, n_in):
        raise ValueError(f"gptq: a hessian of shape {tuple(h.shape)} for {n_in} inputs")
    ng = -(-(-(-n_in // INT4_BLOCK) * INT4_BLOCK) // group)
    bounds = [(g, g * group, min((g + 1) * group, n_in)) for g in range(ng) if g * group < n_in]
    # (a group of padding only, n_in ≤ n_pad − group, keeps codes 0: never read)
    imp = h.diagonal()
    if act_order:
        bounds.sort(key=lambda t: -float(imp[t[1]:t[2]].sum()))
        perm = torch.cat([a + torch.argsort(-imp[a:b], stable=True) for _, a, b in bounds])
    else:
        perm = torch.arange(n_in)
    u = _inverse_hessian_factor(h[perm[:, None], perm], damp, overwrite=True)  # (a fresh copy: scratch)
    codes_p, scale, zmin = _gptq_pass(w0[:, perm].clone(), u, bounds, ng)
    codes = torch.empty_like(codes_p)
    codes[:, perm] = codes_p
    return codes.float(), scale, zmin


def _gptq_pass(w: torch.Tensor, u: torch.Tensor, bounds: list[tuple[int, int, int]], ng: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One GPTQ sweep over ``w`` [out, in] (float64, its columns already in processing order, updated
    in place), ``u`` the inverse Hessian's upper Cholesky factor in that order, ``bounds`` the groups
    (id, first, end input in the original order) in that order: (codes [out, in] in that order, scale,
    zmin [out, ng])."""
    out_f, n_in = w.shape
    codes = torch.zeros(out_f, n_in, dtype=torch.float64)
    scale = torch.ones(out_f, ng, dtype=torch.float32)
    zmin = torch.zeros(out_f, ng, dtype=torch.float32)
    a = 0
    for g, ga, gb in bounds:
        b = a + gb - ga  # this group's columns in the processing order: [a, b)
        _, s, m = _fit_groups(w[:, a:b].float().unsqueeze(1), torch.ones(1, 1, b - a, dtype=torch.bool))
        scale[:, g], zmin[:, g] = s[:, 0], m[:, 0]
        s64, m64 = s[:, 0].double(), m[:, 0].double()
        err = torch.empty(out_f, b - a, dtype=torch.float64)
        for j in range(a, b):
            col = w[:, j]
            q = torch.round((col - m64) / s64).clamp_(0, 15)
            codes[:, j] = q
            e = (col - (m64 + s64 * q)) / u[j, j]
            err[:, j - a] = e
            if j + 1 < b:  # within the group: at once
                w[:, j + 1:b].addr_(e, u[j, j + 1:b], alpha=-1)
        if b < n_in:  # the later groups: once per group
            w[:, b:].addmm_(err, u[a:b, b:], alpha=-1)
        a = b
    return codes, scale, zmin


class Int4Matrix:
    """One group-wise int4 matrix (or a stack for ``bmm``) that torch ops treat as the float original.

    Stores ``q`` packed codes [out, n_pad / 2] uint8 (:func:`pack_int4`), ``scale`` [out, ng] and
    ``zmin`` [out, ng] f32 (one pair per ``group`` inputs); computes in float32 and returns float32.  Kernels:
    ``"native"`` (``rwkv_music/model/native/int4_gemm.c``) or ``"dequant"`` (the float matrix rebuilt
    per call: slow, needs no compiler, and the reference the C kernel is tested against).
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zmin: torch.Tensor, n_in: int, layout: str,
                 kernel: str, group: int, stack: list["Int4Matrix"] | None = None) -> None:
        if layout not in ("in_out", "out_in", "bmm"):
            raise ValueError(f"Int4Matrix: layout must be 'in_out', 'out_in' or 'bmm', got {layout!r}")
        if kernel not in INT4_KERNELS:
            raise ValueError(f"Int4Matrix: kernel must be one of {', '.join(INT4_KERNELS)}, got {kernel!r}")
        self.layout, self.kernel, self.group, self.n_in = layout, kernel, group, n_in
        self.stack = stack
        self.q, self.scale = q, scale
        self.zmin = zmin.contiguous()  # [out, ng], as scale: a row's codes and group parameters stream forward
        self._native: Callable[..., int] | None = None
        self._stack_call: Callable[..., int] | None = None
        if stack is None:
            out_f = q.shape[0]
            self.shape = torch.Size((n_in, out_f) if layout == "in_out" else (out_f, n_in))
            if kernel == "native":
                self._native = native.int4_gemm(True)
                if self._native is None:
                    raise ValueError(f"int4 kernel 'native' is unavailable: {native.status(True)}")
                # the fixed arguments of every call, taken once (70+ calls a token; q, scale, zmin never change)
                self._fixed = (self.q.data_ptr(), self.scale.data_ptr(), self.zmin.data_ptr())
        else:
            self.shape = torch.Size((len(stack), *stack[0].shape))
            if kernel == "native":
                self._stack_call = native.kernel("rwkv_int4_gemm_stack", True)
                self._stack_ptrs = _pointer_arrays([m.q for m in stack], [m.scale for m in stack],
                                                   [m.zmin for m in stack])

    @classmethod
    def from_float(cls, weight: torch.Tensor, layout: str, kernel: str | None = None,
                   group: int = INT4_GROUP, hessian: torch.Tensor | None = None) -> "Int4Matrix":
        """Quantize ``weight`` as the version modules store it (``layout`` says its orientation).

        ``hessian``: ``Σ x xᵀ`` of the inputs ([in, in]; [M, in, in] for ``"bmm"``, one per slice),
        for error-compensating rounding (:func:`gptq_codes_int4`); ``None``: nearest codes."""
        kernel = kernel or default_int4_kernel()
        if layout == "bmm":
            hs = [None] * weight.shape[0] if hessian is None else list(hessian.unbind(0))
            parts = [cls.from_float(w, "in_out", kernel, group, h) for w, h in zip(weight.unbind(0), hs)]
            p0 = parts[0]
            return cls(p0.q[:0], p0.scale[:0], p0.scale[:0], p0.n_in, "bmm", kernel, group, stack=parts)
        rows = weight.t() if layout == "in_out" else weight  # groups run along the input dimension
        q, scale, zmin = quantize_groups_int4(rows, group, hessian)
        return cls(q, scale, zmin, rows.shape[1], layout, kernel, group)

    def _dequant_out_in(self) -> torch.Tensor:
        codes = unpack_int4(self.q).float()  # [out, n_pad]
        n_pad = codes.shape[1]
        s = self.scale.repeat_interleave(self.group, dim=1)[:, :n_pad]
        z = self.zmin.repeat_interleave(self.group, dim=1)[:, :n_pad]
        return torch.addcmul(z, codes, s)[:, : self.n_in]

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix this stands for, in its logical layout."""
        if self.stack is not None:
            return torch.stack([m.dequantize() for m in self.stack])
        w = self._dequant_out_in()
        return w.t().contiguous() if self.layout == "in_out" else w

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., in] → float32 [..., out] (x·Wᵀ with W [out, in])."""
        if x.dim() == 2:
            return self._kernel(x)
        y = self._kernel(x.reshape(-1, x.shape[-1]))
        return y.view(*x.shape[:-1], y.shape[-1])

    def _kernel(self, x2: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, in] → float32 [rows, out]; ``out`` (contiguous) is written in place when given."""
        if self._native is None:
            y = x2.float() @ self._dequant_out_in().t()
            return y if out is None else out.copy_(y)
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        n_out = self.q.shape[0]
        if out is None:
            out = torch.empty(x2.shape[0], n_out, dtype=torch.float32)
        rc = self._native(x2.data_ptr(), *self._fixed, out.data_ptr(), x2.shape[0], self.n_in, n_out, self.group,
                          torch.get_num_threads())
        if rc == -2:
            raise ValueError(f"int4 kernel: group size {self.group} is not a multiple of 32 in [32, 4096]")
        if rc != 0:
            raise MemoryError("int4 kernel: could not allocate its scratch buffers")
        return out

    def bmm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [M, N, in] → float32 [M, N, out], slice i through matrix i."""
        if self._stack_call is not None:
            return _stack_product(self, x, self.stack[0].q.shape[0], (self.group,))
        y = torch.empty(x.shape[0], x.shape[1], self.stack[0].q.shape[0], dtype=torch.float32)
        for m, xi, yi in zip(self.stack, x.unbind(0), y.unbind(0)):
            m._kernel(xi, yi)
        return y

    @property
    def nbytes(self) -> int:
        """Bytes held (packed codes, scales and minimums)."""
        if self.stack is not None:
            return sum(m.nbytes for m in self.stack)
        return self.q.numel() + 4 * (self.scale.numel() + self.zmin.numel())

    def __repr__(self) -> str:
        return (f"Int4Matrix(shape={tuple(self.shape)}, layout={self.layout!r}, group={self.group}, "
                f"kernel={self.kernel!r})")

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        handler = _HANDLERS.get(func)
        if handler is None:
            raise TypeError(f"Int4Matrix does not support {getattr(func, '__name__', func)}; "
                            "add it to rwkv_music.model.quant._HANDLERS")
        return handler(*args, **(kwargs or {}))


def _pointer_arrays(*columns: list[torch.Tensor]) -> tuple[Any, ...]:
    """Per column, a C array of the tensors' data pointers (the tensors stay held by the stack)."""
    return tuple((ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts]) for ts in columns)


def _stack_product(matrix: Any, x: torch.Tensor, n_out: int, extra: tuple[int, ...]) -> torch.Tensor:
    """``x`` [M, N, in] through a native stack's C call (``extra``: int4's group) → float32 [M, N, out]."""
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    m, n, n_in = x.shape
    if m != len(matrix.stack):
        raise ValueError(f"{type(matrix).__name__}: bmm of {m} slices with a stack of {len(matrix.stack)}")
    y = torch.empty(m, n, n_out, dtype=torch.float32)
    rc = matrix._stack_call(x.data_ptr(), *[ctypes.addressof(a) for a in matrix._stack_ptrs], y.data_ptr(), m, n,
                            n_in, n_out, *extra, torch.get_num_threads())
    if rc == -2:
        raise ValueError(f"int4 kernel: group size {extra[0]} is not a multiple of 32 in [32, 4096]")
    if rc != 0:
        raise MemoryError(f"{type(matrix).__name__}: the kernel could not allocate its scratch buffers")
    return y


class CalibrationStop(Exception):
    """Raised by an :class:`InputRecorder` of a later layer to end a calibration pass early (see
    ``early_stop`` of :func:`quantize_weights_int4`)."""


class InputRecorder:
    """A matrix slot during int4 calibration: products go through ``inner`` (the float original in its
    stored layout, then the quantized matrix once it is made) unchanged and, while :attr:`inputs` is
    a list, each call appends its input rows to it (float32 [rows, in]; [M, rows, in] for ``"bmm"``,
    slice i the inputs of matrix i)."""

    def __init__(self, weight: torch.Tensor, layout: str) -> None:
        self.inner, self.layout = weight, layout
        self.shape = weight.shape
        self.inputs: list[torch.Tensor] | None = None
        self.stop = False  # when set, a call raises CalibrationStop: the pass has what it needs

    def _check(self) -> None:
        if self.stop:
            raise CalibrationStop

    def project(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        if self.inputs is not None:
            self.inputs.append(x.detach().reshape(-1, x.shape[-1]).float().clone())
        return x @ self.inner if self.layout == "in_out" else F.linear(x, self.inner)

    def bmm(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        if self.inputs is not None:
            self.inputs.append(x.detach().float().clone())
        return torch.bmm(x, self.inner)

    def take(self) -> torch.Tensor | None:
        """The inputs recorded since :attr:`inputs` was set to a list, all rows together (and stop)."""
        xs, self.inputs = self.inputs, None
        if not xs:
            return None
        return torch.cat(xs, dim=1 if self.layout == "bmm" else 0)

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        handler = _HANDLERS.get(func)
        if handler is None:
            raise TypeError(f"InputRecorder does not support {getattr(func, '__name__', func)}")
        return handler(*args, **(kwargs or {}))


QUANT_TYPES = (Int8Matrix, Int4Matrix, InputRecorder)


def _matmul(x: Any, w: Any) -> torch.Tensor:
    if not isinstance(w, QUANT_TYPES) or w.layout != "in_out":
        raise TypeError("Int8Matrix: x @ W needs an [in, out] int8 matrix on the right")
    return w.project(x)


def _linear(x: torch.Tensor, w: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(w, QUANT_TYPES) or w.layout != "out_in":
        raise TypeError("Int8Matrix: F.linear needs an [out, in] int8 matrix as weight")
    y = w.project(x)
    return y if bias is None else y + bias


def _bmm(x: torch.Tensor, w: Any) -> torch.Tensor:
    if not isinstance(w, QUANT_TYPES) or w.layout != "bmm":
        raise TypeError("Int8Matrix: torch.bmm needs a stacked [M, in, out] int8 matrix second")
    return w.bmm(x)


def _addmm(bias: torch.Tensor, x: torch.Tensor, w: Any, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    return beta * bias + alpha * _matmul(x, w)


def _baddbmm(bias: torch.Tensor, x: torch.Tensor, w: Any, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    y = _bmm(x, w)
    return y.add_(bias) if beta == 1 and alpha == 1 else beta * bias + alpha * y


_HANDLERS: dict[Any, Callable] = {
    torch.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    torch.Tensor.matmul: _matmul,
    F.linear: _linear,
    torch.bmm: _bmm,
    torch.baddbmm: _baddbmm,
    torch.addmm: _addmm,
}


# -- whole models ----------------------------------------------------------------------------

def quantize_weights(weights: Any, kernel: str | None = None, native_choice: bool | None = None,
                     skip: tuple[str, ...] = ()) -> int:
    """Replace, in place, every :data:`MATRIX_FIELDS` matrix of a version's prepared weights.

    ``weights`` is what ``rwkv_music.model.v*.prepare`` returned (a dataclass with ``layers``);
    ``kernel`` one of :data:`KERNELS`, by default :func:`default_kernel` of ``native_choice``
    (the model's ``native`` argument); ``skip``: fields left in float (:data:`LORA_FIELDS`, say, to
    match the ONNX and ncnn int8 exports, which keep those in float).  Returns the number of matrices quantized.
    The float originals are dropped as it goes, so peak memory stays near the fp32 model.
    """
    unknown = sorted(set(skip) - set(MATRIX_FIELDS))
    if unknown:
        raise OptionError(f"int8: unknown matrix fields {', '.join(unknown)} (fields: {', '.join(MATRIX_FIELDS)})")
    kernel = kernel or default_kernel(native_choice)
    if kernel not in KERNELS:
        raise ValueError(f"int8 kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "dynamic" and not dynamic_available():
        raise ValueError("int8 kernel 'dynamic' needs torch's fbgemm/x86 quantized engine")
    if kernel == "native" and not native_available(True):
        raise ValueError(f"int8 kernel 'native' is unavailable here: {native.status(True)}")
    if kernel == "weight_only" and not weight_only_available():
        raise ValueError("int8 kernel 'weight_only' needs torch._weight_int8pack_mm (torch >= 2.3)")
    count = 0
    for obj, name, value, layout in _matrix_slots(weights, "int8"):
        if name in skip:
            continue
        setattr(obj, name, Int8Matrix.from_float(value, layout, kernel))
        count += 1
    log.info("int8: quantized %d matrices with the %r kernel", count, kernel)
    return count


def _matrix_slots(weights: Any, what: str) -> Any:
    """(holder, field name, tensor, layout) of every :data:`MATRIX_FIELDS` matrix of prepared weights."""
    holders = [weights]
    for layer in getattr(weights, "layers", ()):
        holders.append(layer)
        if dataclasses.is_dataclass(getattr(layer, "ffn", None)):
            holders.append(layer.ffn)
    for obj in holders:
        for f in dataclasses.fields(obj):
            layout = MATRIX_FIELDS.get(f.name)
            value = getattr(obj, f.name)
            if layout is None or not isinstance(value, torch.Tensor):
                continue
            if value.device.type != "cpu":
                raise ValueError(f"{what} weights run on the CPU only; {f.name} is on {value.device}")
            yield obj, f.name, value, layout


def quantize_weights_int4(weights: Any, kernel: str | None = None, native_choice: bool | None = None,
                          group: int = INT4_GROUP, int8_fields: tuple[str, ...] = INT4_INT8_FIELDS,
                          calibrate: Callable[[], Any] | None = None, sequential: bool = True,
                          early_stop: bool = False, int8_layers: tuple[int, ...] = INT4_INT8_LAYERS) -> int:
    """Replace, in place, every :data:`MATRIX_FIELDS` matrix by a group-wise :class:`Int4Matrix`
    (as :func:`quantize_weights` does for int8), except the fields named in ``int8_fields`` (see
    :data:`INT4_INT8_FIELDS`) and every matrix of the layers in ``int8_layers`` (indices, negative
    ones from the end; the head and other matrices outside the layers are not in any), which become
    per-channel :class:`Int8Matrix` with the matching kernel (``"native"`` for the C int4 kernel,
    ``"dequant"`` for the fallback).
    Returns the number of matrices quantized (int4 and int8 together).

    ``calibrate``: a function that runs the model (through ``weights``) on calibration inputs.  With
    it each int4 matrix is rounded by :func:`gptq_codes_int4` for ``H = Σ x xᵀ`` of the inputs it
    saw there (its slot holds an :class:`InputRecorder` meanwhile).  ``sequential`` (the default):
    layer by layer, one run per layer, each layer's inputs those that the layers before it give once
    quantized (GPTQ's sequential order); else all from one run of the float model.  The int8 fields
    are rounded plainly.  If ``calibrate`` raises, the slots hold their float matrices again.
    ``early_stop`` (with ``sequential``): a pass ends, by :class:`CalibrationStop`, at the first matrix
    of a later layer, skipping the rest of the model; only for a ``calibrate`` whose every model
    call is one pass through the layers (not split over time), which catches the exception around
    each call (a single call needs no catching: it is caught here too)."""
    kernel = kernel or default_int4_kernel(native_choice)
    if kernel not in INT4_KERNELS:
        raise ValueError(f"int4 kernel must be one of {', '.join(INT4_KERNELS)}, got {kernel!r}")
    if kernel == "native" and not int4_native_available(True):
        raise ValueError(f"int4 kernel 'native' is unavailable here: {native.status(True)}")
    unknown = sorted(set(int8_fields) - set(MATRIX_FIELDS))
    if unknown:
        raise OptionError(f"int4: int8_fields names no matrix field: {', '.join(unknown)} "
                          f"(fields: {', '.join(MATRIX_FIELDS)})")
    slots = list(_matrix_slots(weights, "int4"))
    layer_of = _layer_index(weights)
    n_layers = len(getattr(weights, "layers", ()))
    bad = [k for k in int8_layers if isinstance(k, bool) or not isinstance(k, int)]
    if bad:
        raise OptionError(f"int4: int8_layers takes layer indices (integers), got {bad[0]!r}")
    keep_layers = {k % n_layers for k in int8_layers if -n_layers <= k < n_layers}

    def keeps_int8(obj: Any, name: str) -> bool:
        return name in int8_fields or layer_of.get(id(obj), -1) in keep_layers

    def quantize(obj: Any, name: str, value: torch.Tensor, layout: str, hessian: torch.Tensor | None) -> Any:
        if keeps_int8(obj, name):
            return Int8Matrix.from_float(value, layout, kernel)
        return Int4Matrix.from_float(value, layout, kernel, group, hessian)

    if calibrate is None:
        for obj, name, value, layout in slots:
            setattr(obj, name, quantize(obj, name, value, layout, None))
    else:
        recorders = [InputRecorder(value, layout) for _, _, value, layout in slots]
        done = False
        for (obj, name, _, _), rec in zip(slots, recorders):
            setattr(obj, name, rec)
        try:
            stages = _layer_stages(weights, slots) if sequential else [list(range(len(slots)))]
            for k, stage in enumerate(stages):
                todo = [i for i in stage if not keeps_int8(slots[i][0], slots[i][1])]  # (int8 ones need no inputs)
                for i in todo:
                    recorders[i].inputs = []
                for j, other in enumerate(stages):
                    for i in other:
                        recorders[i].stop = early_stop and sequential and j > k
                if todo:
                    try:
                        calibrate()
                    except CalibrationStop:
                        pass
                for i in stage:
                    obj, name, value, layout = slots[i]
                    x = recorders[i].take()
                    recorders[i].inner = quantize(obj, name, value, layout, None if x is None else _gram(x))
            done = True
        finally:  # the slots hold their quantized matrices (or, after an error, the float ones again)
            for (obj, name, value, _), rec in zip(slots, recorders):
                rec.stop = False
                setattr(obj, name, rec.inner if done else value)
    n8 = sum(keeps_int8(obj, name) for obj, name, _, _ in slots)
    log.info("int4: quantized %d matrices (groups of %d; %d kept int8%s) with the %r kernel", len(slots), group,
             n8, ", calibrated" if calibrate else "", kernel)
    return len(slots)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``Σ x xᵀ`` (float64) of recorded inputs: [in, in], or [M, in, in] for ``"bmm"``."""
    xd = x.double()
    return xd.transpose(-1, -2) @ xd


def _layer_index(weights: Any) -> dict[int, int]:
    """id(holder) → its layer's index, for each layer and its ``ffn``."""
    layers = list(getattr(weights, "layers", ()))
    owner = {id(layer): k for k, layer in enumerate(layers)}
    owner.update({id(layer.ffn): k for k, layer in enumerate(layers)
                  if dataclasses.is_dataclass(getattr(layer, "ffn", None))})
    return owner


def _layer_stages(weights: Any, slots: list) -> list[list[int]]:
    """Slot indices grouped by layer in model order (a layer's ``ffn`` with it), then the rest (the head)."""
    layers = list(getattr(weights, "layers", ()))
    owner = _layer_index(weights)
    stages: list[list[int]] = [[] for _ in range(len(layers) + 1)]
    for i, (obj, *_rest) in enumerate(slots):
        stages[owner.get(id(obj), len(layers))].append(i)
    return [st for st in stages if st]
