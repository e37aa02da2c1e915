"""Draw one token per row from processed scores: per-row counter-based uniforms, on the scores' device.

**The product path** (:func:`sample_batch` with :func:`counter_uniforms`): the uniform a row
uses at its ``n``-th draw is a hash of ``(seed, n)`` computed with 32-bit integer arithmetic that
numpy and torch evaluate identically, so a piece depends on its seed, prompt and options only --
not on the batch size, its batch position, or which backend (numpy or torch, CPU or GPU) ran it.
The draw is the same inverse-CDF lookup as :func:`sample_row`, vectorised over the batch and done
where the scores live (only the ``B`` chosen ids go to the host).

**The legacy path** (:func:`sample`, :func:`sample_row`), kept for callers of the public API and
as the slow reference of the tests:

Each row owns ``numpy.random.Generator(PCG64(seed))`` and consumes exactly one uniform double
per step in which it is active, so a seed gives the same piece whatever else is in the batch and
whichever backend produced the (equal) logits.  The draw is an inverse-CDF lookup in float64
over ``exp(score - max)`` of the finite scores, done row by row so that no result depends on
the batch size.  Greedy decoding is :class:`~rwkv_music.sampling.processors.Temperature` ``(0)``:
only the maximum (and exact ties) stays finite, and the draw picks among them.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from rwkv_music.sampling import native
from rwkv_music.sampling.arrays import on_accelerator, ops
from rwkv_music.sampling.base import Candidates, SamplingValueError, is_torch_tensor, to_numpy

_M32 = 0xFFFFFFFF


def make_generators(seeds: Sequence[int]) -> list[np.random.Generator]:
    """One PCG64 generator per row.

    >>> make_generators([7])[0].random() == np.random.Generator(np.random.PCG64(7)).random()
    True
    """
    out = []
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SamplingValueError(f"seeds[{i}] must be an integer >= 0, got {seed!r}")
        out.append(np.random.Generator(np.random.PCG64(int(seed))))
    return out


def sample_row(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one id from a 1-D score row; -1 (and no draw) if no score is finite."""
    s = np.asarray(scores)
    ids = np.flatnonzero(np.isfinite(s))
    if ids.size == 0:
        return -1
    vals = s[ids].astype(np.float64)
    cdf = np.cumsum(np.exp(vals - vals.max()))
    x = rng.random() * cdf[-1]
    # the first position whose cumulative sum exceeds x has p > 0 (equal sums mean p = 0)
    j = int(np.searchsorted(cdf, x, side="right"))
    if j >= ids.size:  # x rounded up to the total: take the last id with p > 0
        j = int(np.flatnonzero(np.diff(cdf, prepend=0.0) > 0)[-1])
    return int(ids[j])


def sample(scores: Any, generators: Sequence[np.random.Generator]) -> np.ndarray:
    """One id per row of ``[B, V]`` scores (numpy or torch) as int64 ``[B]``; -1 for empty rows.

    >>> sample(np.array([[0.0, -np.inf], [-np.inf, 5.0]]), make_generators([1, 2]))
    array([0, 1])
    """
    arr, _ = to_numpy(scores)
    if arr.ndim != 2 or arr.shape[0] != len(generators):
        raise SamplingValueError(f"sample: expected scores [{len(generators)}, vocab], got shape {arr.shape}")
    return np.array([sample_row(arr[r], generators[r]) for r in range(arr.shape[0])], dtype=np.int64)


# -- counter-based uniforms ----------------------------------------------------------------------
def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without overflowing int64 (16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: Any) -> Any:
    """A 32-bit integer finaliser (xor-shift-multiply, constants of the "lowbias32" hash)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_words(seed: int) -> tuple[int, int]:
    """A seed (any int >= 0) folded into two 32-bit words."""
    seed = int(seed)
    lo = hi = 0
    shift = 0
    while True:
        lo ^= (seed >> shift) & _M32
        hi ^= (seed >> (shift + 32)) & _M32
        shift += 64
        if seed >> shift == 0:
            return lo, hi


def counter_uniforms(seed_lo: Any, seed_hi: Any, counters: Any) -> Any:
    """Float64 uniforms in [0, 1), one per row, from int64 arrays (numpy or torch) of seed words and counters.

    Pure integer arithmetic on values below 2**48, so numpy and torch (CPU or GPU) give the same bits.

    >>> import numpy as np
    >>> u = counter_uniforms(np.array([1, 1]), np.array([0, 0]), np.array([0, 1]))
    >>> bool(0 <= u.min() and u.max() < 1 and u[0] != u[1])
    True
    """
    key = _mix32(seed_lo ^ _mix32(seed_hi ^ 0x9E3779B9))
    h1 = _mix32(key ^ _mix32((counters & _M32) ^ _mix32((counters >> 32) ^ 0x85EBCA6B)))
    h2 = _mix32(h1 ^ 0x27D4EB2F)
    bits = (h1 >> 5) * 67108864 + (h2 >> 6)  # 27 + 26 bits
    if isinstance(bits, int):
        return bits / 9007199254740992.0
    xp = ops(bits)
    return xp.cast(bits, "float64") / 9007199254740992.0


def _mix32_u64(x: np.ndarray) -> np.ndarray:
    """:func:`_mix32` on numpy uint64 values below 2**32: a product below 2**64 is exact, so one multiply
    and a mask give the low 32 bits that :func:`_mul32` builds from 16-bit halves."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(_M32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(_M32)
    return x ^ (x >> np.uint64(16))


def _mix32_int(x: int) -> int:
    """:func:`_mix32` of a Python int (exact big-int products, so no 16-bit halves)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _keys_u64(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return _mix32_u64(lo ^ _mix32_u64(hi ^ np.uint64(0x9E3779B9)))


def _uniforms_u64(key: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """:func:`counter_uniforms` from the rows' keys, in uint64 numpy (the same bits)."""
    m32 = np.uint64(_M32)
    if counters.size and (counters == counters[0]).all():  # rows in lockstep (a batch list): hash the one counter once
        c = int(counters[0])
        inner = np.uint64(_mix32_int((c & _M32) ^ _mix32_int((c >> 32) ^ 0x85EBCA6B)))
    else:
        inner = _mix32_u64((counters & m32) ^ _mix32_u64((counters >> np.uint64(32)) ^ np.uint64(0x85EBCA6B)))
    h1 = _mix32_u64(key ^ inner)
    h2 = _mix32_u64(h1 ^ np.uint64(0x27D4EB2F))
    bits = (h1 >> np.uint64(5)) * np.uint64(67108864) + (h2 >> np.uint64(6))
    return bits.astype(np.float64) / 9007199254740992.0


@functools.lru_cache(maxsize=8)
def _seed_keys(seeds: tuple[int, ...]) -> np.ndarray:
    """The rows' hash keys (read-only), kept for the next steps: a batch draws with the same seeds every step."""
    words = np.array([seed_words(s) for s in seeds], dtype=np.uint64).reshape(-1, 2)
    keys = _keys_u64(words[:, 0], words[:, 1])
    keys.flags.writeable = False
    return keys


def _uniform_int(key: int, counter: int) -> float:
    """:func:`counter_uniforms` of one row, from its key (:func:`row_keys`), in Python ints."""
    h1 = _mix32_int(key ^ _mix32_int((counter & _M32) ^ _mix32_int((counter >> 32) ^ 0x85EBCA6B)))
    h2 = _mix32_int(h1 ^ 0x27D4EB2F)
    return ((h1 >> 5) * 67108864 + (h2 >> 6)) / 9007199254740992.0


def row_uniforms(seeds: Sequence[int], counters: Sequence[int], like: Any = None) -> Any:
    """The uniforms of rows with these seeds at these draw counts, on ``like``'s device (numpy if None)."""
    return key_uniforms(row_keys(seeds), counters, like)


def row_keys(seeds: Sequence[int]) -> np.ndarray:
    """The rows' hash keys (uint64, read-only): what :func:`key_uniforms` draws from, for a caller that keeps
    them while its rows stay (hashing a tuple of seeds every step costs as much as the draw of a small row)."""
    return _seed_keys(tuple(int(x) for x in seeds))


def key_uniforms(keys: np.ndarray, counters: Sequence[int], like: Any = None) -> Any:
    """:func:`row_uniforms` of the rows whose :func:`row_keys` are ``keys``."""
    if len(keys) <= 2:  # Python ints: the same arithmetic (values stay below 2**48), far less overhead
        u = np.array([_uniform_int(int(k), int(c)) for k, c in zip(keys, counters)], dtype=np.float64)
    else:
        u = native.row_uniforms(keys, counters) if len(keys) == len(counters) else None  # (C: the same bits)
        if u is None:
            u = _uniforms_u64(keys, np.asarray(counters, dtype=np.uint64))
    return ops(like).asarray(u, "float64") if is_torch_tensor(like) else u


# -- the batched draw ---------------------------------------------------------------------------
def _finite_columns(xp: Any, fin: Any) -> tuple[Any, Any] | None:
    """Column ids of each row's finite entries in ascending order, padded, and their validity mask.

    None when compaction would not pay (a dense row, or a GPU where the full pass is cheap and a
    data-dependent width would cost a host sync)."""
    B, V = fin.shape
    if V <= 1024 or on_accelerator(fin):  # (a short row: one pass is cheaper)
        return None
    counts = xp.to_host(xp.count_true(fin)) if xp.name == "torch" else xp.count_true(fin)
    width = int(counts.max()) if counts.size else 0
    if width == 0 or width * 4 > V:
        return None
    if xp.name == "numpy":
        rows, cols = xp.finite_flat(fin)
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        idx = np.zeros((B, width), dtype=np.int64)
        idx[rows, np.arange(rows.size) - start[rows]] = cols
        return idx, np.arange(width)[None, :] < counts[:, None]
    torch = xp.torch
    picked = torch.topk(fin.to(torch.float32), width, dim=1).indices  # every finite id (ties: any order)
    idx = torch.sort(picked, dim=1).values
    return idx, torch.gather(fin, 1, idx)


def _draw_candidates(cand: Candidates, uniforms: np.ndarray) -> np.ndarray:
    """:func:`sample_batch` on :class:`Candidates`: its compacted branch (the same operations in the same
    order on the same entries), in plain numpy calls (or the candidates' own one-call draw, where they have one)."""
    draw = getattr(cand, "draw", None)
    drawn = draw(uniforms) if draw is not None else None
    if drawn is not None:
        return drawn
    B, width = cand.vals.shape
    if width == 0:
        return np.full(B, -1, dtype=np.int64)
    valid = np.isfinite(cand.vals)
    if B == 1 and valid.all():  # one row, every entry finite (the usual small batch): the same, on 1-D arrays
        vals = cand.vals[0].astype(np.float64)
        p = np.exp(vals - vals.max())
        cdf = np.cumsum(p)
        j = int(np.count_nonzero(cdf <= uniforms[0] * cdf[-1]))
        if j >= width:  # x rounded up to the total: the last id with p > 0
            j = int(np.flatnonzero(p > 0)[-1])
        return cand.ids[0, j : j + 1].copy()
    vals = np.where(valid, cand.vals.astype(np.float64), -np.inf)
    top = vals.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    p = np.where(valid, np.exp(vals - top), 0.0)
    cdf = np.cumsum(p, axis=1)
    x = uniforms.reshape(-1, 1) * cdf[:, -1:]
    # the first position whose cumulative sum exceeds x has p > 0 (equal sums mean p = 0)
    j = np.count_nonzero(cdf <= x, axis=1)
    last = np.where(p > 0, np.arange(width)[None, :], -1).max(axis=1)  # x rounded up to the total
    j = np.maximum(np.where(j >= width, last, j), 0)
    return np.where(valid.any(axis=1), cand.ids[np.arange(B), j], -1)


def sample_batch(scores: Any, uniforms: Any) -> Any:
    """One id per row of ``[B, V]`` scores with the given uniforms ``[B]``, as int64 ``[B]`` of the scores' kind.

    Row by row this is :func:`sample_row` with ``rng.random()`` replaced by the row's uniform
    (float64 inverse CDF over ``exp(score - max)`` of the finite scores); -1 for a row with no
    finite score.

    >>> import numpy as np
    >>> sample_batch(np.array([[0.0, -np.inf], [-np.inf, 5.0], [-np.inf, -np.inf]]), np.array([0.5, 0.5, 0.5]))
    array([ 0,  1, -1])
    """
    if isinstance(scores, Candidates):  # already compacted: the same draw over the same entries in the same order
        return _draw_candidates(scores, np.asarray(uniforms, dtype=np.float64))
    xp = ops(scores)
    B, V = scores.shape
    fin = xp.isfinite(scores)
    cols = _finite_columns(xp, fin)
    if cols is not None:
        idx, valid = cols
        vals = xp.cast(xp.take(scores, idx), "float64")
    else:
        idx, valid, vals = None, fin, xp.cast(scores, "float64")
    vals = xp.where(valid, vals, float("-inf"))
    top = xp.amax(vals, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    p = xp.where(valid, xp.exp(vals - top), 0.0)
    cdf = xp.cumsum(p)
    x = xp.asarray(uniforms, "float64").reshape(-1, 1) * cdf[:, -1:]
    # the first position whose cumulative sum exceeds x has p > 0 (equal sums mean p = 0)
    j = xp.sum(xp.cast(cdf <= x, "int64"))
    width = p.shape[1]
    last = xp.amax(xp.where(p > 0, xp.arange(width)[None, :], -1))  # x rounded up to the total
    j = xp.where(j >= width, last, j)
    j = xp.where(j < 0, 0, j)
    if idx is not None:
        j = xp.take(idx, j.reshape(-1, 1)).reshape(-1)
    return xp.where(xp.any(valid), j, -1)


__all__ = [
    "counter_uniforms",
    "make_generators",
    "row_uniforms",
    "sample",
    "sample_batch",
    "sample_row",
    "seed_words",
]
