"""C kernels built on first use with the system compiler, loaded through ctypes.

* ``rwkv_int8_gemm`` (``int8_gemm.c``): the int8 weight-only product behind
  :mod:`rwkv_music.model.quant`'s ``"native"`` kernel;
* ``rwkv_int4_gemm`` (``int4_gemm.c``): the group-wise int4 product behind ``Int4Matrix``;
* ``rwkv_int8_gemm_stack``, ``rwkv_int4_gemm_stack``: a stack of either (``torch.bmm``) in one call;
* ``rwkv4_wkv_decode``, ``rwkv5_wkv_decode``, ``rwkv7_time_mix_decode`` (``wkv4.c``, ``wkv5.c``,
  ``wkv7.c``): the one-token recurrence of each version, with the elementwise steps around it,
  fused into one call (used by the version modules on fp32 CPU decode); ``rwkv4_wkv_prefill``:
  v4's recurrence over all tokens of a prefill (fp32 CPU);
* ``rwkv7_decode_layers`` (``v7_decode.c``): every layer of a small fp32 RWKV-7's one-token step in
  one call (and of an int8/int4 one at any width, its products through the kernels above);
  ``rwkv7_prefill_layers``: a short prompt as such steps, in one call;
* ``rwkv4_decode_layers``, ``rwkv5_decode_layers`` (``v45_decode.c``), ``rwkv6_decode_layers``
  (``v6_decode.c``): the same one-token step for RWKV-4, 5.x and 6 (helpers shared through
  ``decode_common.h``).

The shared library (all the files) is compiled once per machine by :mod:`rwkv_music.native_build`
(``-O3 -march=native -fopenmp``, a few seconds) into a cache folder and reused.

Where no C compiler is found, or the build fails, :func:`int8_gemm` and :func:`kernel`
return ``None`` and the callers fall back to torch's kernels; :func:`status` says why.

Whether the kernels are used is the caller's choice: ``load_model(..., native=False)`` (the torch
backend's ``native`` argument) runs that model on torch's kernels.  Every function here takes
the same ``native`` argument; ``None`` means the choice the current model made (:class:`choose`,
set by the torch backend around each forward), else the process default, ``RWKV_MUSIC_NATIVE``
("0" turns the kernels off; unset means on).  ``RWKV_MUSIC_CACHE_DIR`` moves the build cache
(default ``~/.cache/rwkv_music``).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable

import torch

import rwkv_music.native_build as native_build

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(n)
                for n in ("int8_gemm.c", "int4_gemm.c", "wkv4.c", "wkv5.c", "wkv7.c", "v7_decode.c", "v45_decode.c",
                          "v6_decode.c"))
HEADERS = (Path(__file__).with_name("decode_common.h"),)  # included by the sources: part of the cache key
_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
# name → (argument types, result type) of every exported kernel
SIGNATURES = {
    "rwkv_int8_gemm": ([_P] * 4 + [_I64] * 3 + [_INT], _INT),
    "rwkv_int8_gemm_simd": ([], _INT),
    "rwkv_int4_gemm": ([_P] * 5 + [_I64] * 4 + [_INT], _INT),
    "rwkv_int8_gemm_stack": ([_P] * 4 + [_I64] * 4 + [_INT], _INT),
    "rwkv_int4_gemm_stack": ([_P] * 5 + [_I64] * 5 + [_INT], _INT),
    "rwkv4_wkv_decode": ([_I64] * 2 + [_P] * 12, None),
    "rwkv4_wkv_prefill": ([_I64] * 3 + [_P] * 11 + [_INT], None),
    "rwkv5_wkv_decode": ([_I64] * 4 + [_P] * 9 + [_F32, _P, _INT], _INT),
    "rwkv7_time_mix_decode": ([_I64] * 3 + [_P] * 15 + [_F32] * 2 + [_P] * 2 + [_INT], _INT),
    "rwkv7_decode_layers": ([_I64] * 7 + [_P] * 8 + [_F32] * 3 + [_P, _INT], _INT),
    "rwkv7_prefill_layers": ([_I64] * 8 + [_P] * 8 + [_F32] * 3 + [_P, _INT], _INT),
    "rwkv4_decode_layers": ([_I64] * 5 + [_P] * 12 + [_F32, _P, _INT], _INT),
    "rwkv5_decode_layers": ([_I64] * 7 + [_P] * 8 + [_F32] * 2 + [_P, _INT], _INT),
    "rwkv6_decode_layers": ([_I64] * 8 + [_P] * 8 + [_F32] * 2 + [_P, _INT], _INT),
}
FLAG_SETS = native_build.FLAG_SETS

MAX_HEAD_SIZE = 256  # the stack buffers of wkv5.c / wkv7.c
# fp32 CPU decode runs each version's one-token WKV (and the steps next to it) as one C call
# where the kernels build; False keeps the torch ops (tests compare the two).
FUSED_DECODE = True
# Small fp32 models and int8/int4 ones decode a few rows at a time through one call for all layers
# (v7_decode.c, v45_decode.c) where FUSED_DECODE holds; False keeps the per-layer path (tests compare
# the two).
FUSED_LAYERS = True

ENV_VAR = native_build.ENV_VAR

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "lib" → ctypes.CDLL, or "error" → str
_env_default: list[bool] = []  # RWKV_MUSIC_NATIVE, read once (the hot path asks several times a layer)
_choice: ContextVar[bool | None] = ContextVar("rwkv_music_native", default=None)


def env_default() -> bool:
    """The process default: on unless ``RWKV_MUSIC_NATIVE`` is 0/false/no/off (read once)."""
    if not _env_default:
        _env_default.append(native_build.env_enabled())
    return _env_default[0]


def enabled(native: bool | None = None) -> bool:
    """The choice in effect: ``native`` when given, else the innermost :class:`choose`, else :func:`env_default`."""
    if native is None:
        native = _choice.get()
    return env_default() if native is None else bool(native)


class choose:
    """``with choose(native): ...`` makes ``native`` (``None``: no choice) the default of this thread
    or task for the calls inside; the torch backend wraps each forward in its model's choice."""

    __slots__ = ("native", "_token")

    def __init__(self, native: bool | None) -> None:
        self.native = native

    def __enter__(self) -> None:
        self._token = _choice.set(self.native)

    def __exit__(self, *exc: object) -> None:
        _choice.reset(self._token)


def _sources_bytes() -> bytes:
    return b"\0".join(p.read_bytes() for p in SOURCES + HEADERS)


def _build(compiler: str, source: bytes, flag_sets: tuple = FLAG_SETS, folder: Path | None = None) -> Path:
    """Compile ``SOURCES`` (``source``: their bytes, for the cache key) with the first flag set that
    works; returns the cached library's path."""
    return native_build.build_library(compiler, SOURCES, "rwkv_music_kernels", source, flag_sets, folder)


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (args, result) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def _load() -> ctypes.CDLL | None:
    lib = _loaded.get("lib")  # the hot path (several calls a layer): no lock once loaded
    if lib is not None:
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" in _loaded or "error" in _loaded:
            return _loaded.get("lib")  # type: ignore[return-value]
        compiler = native_build.find_compiler()
        if compiler is None:
            _loaded["error"] = "no C compiler found (set CC, or install gcc)"
            return None
        try:
            path = _build(compiler, _sources_bytes())
            lib = _open(path)
        except (OSError, RuntimeError, AttributeError) as exc:
            _loaded["error"] = f"building {', '.join(p.name for p in SOURCES)} failed: {exc}"
            log.warning("native kernels unavailable (%s); using torch's kernels", _loaded["error"])
            return None
        _loaded["lib"] = lib
        log.info("native kernels: %s (AVX2 %s)", path, "yes" if lib.rwkv_int8_gemm_simd() else "no")
        return lib


def int8_gemm(native: bool | None = None) -> Callable[..., int] | None:
    """``rwkv_int8_gemm(x, q, scale, y, nb, n_in, n_out, nthreads)`` on raw pointers, or ``None``
    (turned off, or unavailable here)."""
    lib = _load() if enabled(native) else None
    return None if lib is None else lib.rwkv_int8_gemm


def int4_gemm(native: bool | None = None) -> Callable[..., int] | None:
    """``rwkv_int4_gemm(x, q, scale, zmin, y, nb, n_in, n_out, group, nthreads)`` on raw pointers
    (layout in ``int4_gemm.c``), or ``None`` (turned off, or unavailable here)."""
    lib = _load() if enabled(native) else None
    return None if lib is None else lib.rwkv_int4_gemm


def kernel(name: str, native: bool | None = None) -> Callable[..., Any] | None:
    """The exported C function ``name`` (a key of :data:`SIGNATURES`; its arguments are in its
    source file), or ``None`` where the kernels are turned off or unavailable."""
    lib = _load() if enabled(native) else None
    return None if lib is None else getattr(lib, name)


def usable(*tensors: Any, native: bool | None = None) -> bool:
    """Whether the C kernels are chosen, built, and can take these tensors as raw float32 CPU memory
    (and no gradient is wanted through them: the kernels are invisible to autograd)."""
    if not enabled(native):
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _load() is not None


def fused_decode_ok(*tensors: Any, head_size: int | None = None, native: bool | None = None) -> bool:
    """Whether a version's decode step may take its fused C kernel for these tensors."""
    return FUSED_DECODE and (head_size is None or head_size <= MAX_HEAD_SIZE) and usable(*tensors, native=native)


def status(native: bool | None = None) -> str:
    """One line: where the native kernel was loaded from and whether it uses AVX2, or why not."""
    if not enabled(native):
        chosen = native if native is not None else _choice.get()
        why = f"native={chosen}" if chosen is not None else f"{ENV_VAR}=0"
        return f"unavailable: turned off by {why}"
    lib = _load()
    if lib is None:
        return f"unavailable: {_loaded.get('error')}"
    return f"{'AVX2' if lib.rwkv_int8_gemm_simd() else 'portable C'} ({lib._name})"
