"""C kernels of the host (numpy) sampling path, built on first use; numpy and ctypes only (no torch).

* ``rwkv_top_p_k`` (``top_p_k.c``): :class:`~rwkv_music.sampling.processors.TopP` with
  ``top_k_after=k`` on float32 ``[B, V]`` scores: per row the top ``k``, the float64 softmax total
  over the row and the survivors in column order (rows on :data:`THREADS` OpenMP threads).  On the shipped MIDI
  model's vocabulary (20,096) at B=32 the numpy path spends ~0.9 ms a step here, the kernel
  ~0.35 ms on one thread (``benchmarks/bench_e2e.py`` shows the end-to-end effect).

* ``rwkv_top_p_k_draw`` (same file): those survivors, then :class:`~rwkv_music.sampling.processors.MinP`
  on them and the draw of :func:`~rwkv_music.sampling.sampler.sample_batch` with the caller's uniforms, in
  one call that returns the ``B`` ids.  At B=1 the separate steps (survivors handed to Python, MinP and
  the draw in numpy) cost ~25 us a token, as much as a fifth of the shipped ABC model's forward.

* ``rwkv_row_uniforms`` (``uniforms.c``): :func:`~rwkv_music.sampling.sampler.row_uniforms`'s hash for a
  batch (at B=32 ~25 us a step in numpy).

* ``rwkv_occ_penalize_rows`` / ``rwkv_occ_update_rows`` (``occurrence.c``): the two steps of
  :class:`~rwkv_music.sampling.penalties.OccurrencePenalty`'s numpy state over each row's own seen ids,
  where numpy gathers and scatters ``[B, columns]`` blocks over the ids any row has seen or, once those
  are many, passes over the whole ``[B, vocab]`` float64 map (at B=32 on the MIDI vocabulary ~0.35 ms a step).

The numpy path stays the reference and the fallback: it runs where no C compiler is found, where
the build lacks AVX2/FMA (a portable build's scalar exponential is slower than numpy's), where
``RWKV_MUSIC_NATIVE=0``, and for rows the kernel hands back (NaN or +inf in a row, more survivors
than its buffer).  Tests compare the two on the same scores.
"""

from __future__ import annotations

import ctypes
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

import rwkv_music.native_build as native_build

SOURCES = tuple(Path(__file__).with_name(name) for name in ("top_p_k.c", "occurrence.c", "uniforms.c"))
_P, _I64 = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {
    "rwkv_top_p_k": ([_P, _I64, _I64, _I64, ctypes.c_double, _I64, _P, _P, _P, ctypes.c_int], ctypes.c_int),
    "rwkv_top_p_k_draw": ([_P, _I64, _I64, _I64, ctypes.c_double, ctypes.c_double, _P, _P, ctypes.c_int],
                          ctypes.c_int),
    "rwkv_top_p_k_simd": ([], ctypes.c_int),
    "rwkv_occ_penalize_rows": ([_P, _I64, _I64, _P, _I64, _P, _I64, _P, ctypes.c_double, ctypes.c_double], None),
    "rwkv_occ_update_rows": ([_P, _P, _I64, _I64, _P, _I64, _P, ctypes.c_double, _P, _P], ctypes.c_int),
    "rwkv_row_uniforms": ([_P, _P, _I64, _P], None),
}
MAX_K = 256  # TOPPK_MAX_K in top_p_k.c
# Rows run on one thread by default: the kernel's OpenMP threads keep spinning after it returns and
# slow the model's next forward (torch's own thread pool) more than they save.  Measured on the
# 2-core CI-like machine, compose_midi B=32 with the shipped MIDI model, best of 3: numpy 4,145
# tok/s, kernel on one thread 4,639, on two 4,488.  Raise it where CPUs are plentiful.
THREADS = 1


def _check(lib: ctypes.CDLL) -> str | None:
    if not lib.rwkv_top_p_k_simd():
        return "built without AVX2/FMA (numpy's exponential is faster than its portable one)"
    return None


LIBRARY = native_build.Library(SOURCES, "rwkv_music_sampling", SIGNATURES, check=_check)


def enabled() -> bool:
    return LIBRARY.enabled()


_load = LIBRARY.get  # the library, or None (off, or not built); a step calls it several times: no wrapper


def available() -> bool:
    """Whether the kernels run here (turned on, built, AVX2); builds them on the first call."""
    return _load() is not None


def status() -> str:
    """One line: whether the sampling kernel is in use, or why not."""
    lib = _load()
    return f"AVX2 ({lib._name})" if lib is not None else f"unavailable: {LIBRARY.error}"


def top_p_k(scores: np.ndarray, k: int, top_p: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``TopP(top_p, top_k_after=k)``'s survivors of float32 ``scores`` [B, V] as ``(ids, vals)``
    ([B, w] int64 ascending per row, float32, ``-inf`` / 0 padded; the layout of
    :class:`~rwkv_music.sampling.base.Candidates`), or ``None`` where the numpy path must run."""
    lib = _kernels_for(scores, k)
    if lib is None:
        return None
    B, V = scores.shape
    x = np.ascontiguousarray(scores)
    cap = max(2 * k, 64)  # survivors beyond the top k are ties with the k-th: rare
    (ids, vals, counts), addresses = _kept("top_p_k", ((B, cap), np.int64), ((B, cap), np.float32), ((B,), np.int64))
    status_code = lib.rwkv_top_p_k(address(x), B, V, k, float(top_p), cap, *addresses, min(THREADS, B))
    if status_code != 0:
        return None  # NaN / +inf in a row, or too many ties: the numpy path handles it
    width = int(counts.max())
    return ids[:, :width].copy(), vals[:, :width].copy()  # (copies: the buffers are the next call's)


def top_p_k_draw(scores: np.ndarray, k: int, top_p: float, min_p: float, uniforms: np.ndarray) -> np.ndarray | None:
    """The ids ``sample_batch`` draws with ``uniforms`` [B] (float64) from ``TopP(top_p, top_k_after=k)``
    then ``MinP(min_p)`` (0: none) of float32 ``scores`` [B, V], as int64 [B] (-1: an emptied row), or
    ``None`` where the numpy path must run (as :func:`top_p_k`)."""
    lib = _kernels_for(scores, k)
    if lib is None or len(uniforms) != scores.shape[0]:
        return None
    B, V = scores.shape
    x = np.ascontiguousarray(scores)
    (u, out), (u_at, out_at) = _kept("draw", ((B,), np.float64), ((B,), np.int64))
    u[:] = uniforms
    log_min_p = math.log(min_p) if min_p > 0.0 else -math.inf
    if lib.rwkv_top_p_k_draw(address(x), B, V, k, float(top_p), log_min_p, u_at, out_at, min(THREADS, B)) != 0:
        return None
    return out.copy()


def _kernels_for(scores: Any, k: int) -> ctypes.CDLL | None:
    """The library where the top-p/top-k kernels may run on ``scores`` (float32 [B, V], B >= 1, 0 < k < V,
    k <= :data:`MAX_K`), else None."""
    if not (isinstance(scores, np.ndarray) and scores.ndim == 2 and scores.dtype == np.float32):
        return None
    B, V = scores.shape
    if not 0 < k <= min(MAX_K, V - 1) or B == 0:
        return None
    return _load()


def row_uniforms(keys: np.ndarray, counters: Any) -> np.ndarray | None:
    """The uniforms of rows with hash ``keys`` (uint64 [B], C order) at draw ``counters`` (B ints), or None where
    the numpy path must run."""
    lib = _load()
    if lib is None:
        return None
    c = np.asarray(counters, dtype=np.int64)
    out = np.empty(c.shape[0], dtype=np.float64)
    lib.rwkv_row_uniforms(address(keys), c.ctypes.data, c.shape[0], out.ctypes.data)
    return out


def occurrence_kernels() -> ctypes.CDLL | None:
    """The library holding ``rwkv_occ_penalize_rows`` / ``rwkv_occ_update_rows`` (``occurrence.c``), or None where the
    numpy path must run (as for :func:`top_p_k`)."""
    return _load()


address = native_build.address  # (kept here too: the kernels' callers import it from this module)

_BUFFERS = threading.local()  # per thread and kernel: the output arrays of the last shapes, and their addresses


def _kept(name: str, *specs: tuple[tuple[int, ...], Any]) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Arrays of these ``(shape, dtype)`` kept between calls of kernel ``name`` (per thread), with their
    addresses: a fresh array and its ``.ctypes.data`` cost as much as the kernel's work on a 128-id row."""
    found = getattr(_BUFFERS, name, None)
    if found is None or found[0] != specs:
        arrays = [np.empty(shape, dtype=dtype) for shape, dtype in specs]
        found = (specs, arrays, tuple(a.ctypes.data for a in arrays))
        setattr(_BUFFERS, name, found)
    return found[1], found[2]


