"""Draw one token per row from processed scores, with one random generator per row.

Each row owns ``numpy.random.Generator(PCG64(seed))`` and consumes exactly one uniform double
per step in which it is active, so a seed gives the same piece whatever else is in the batch and
whichever backend produced the (equal) logits.  The draw is an inverse-CDF lookup in float64
over ``exp(score - max)`` of the finite scores, done row by row so that no result depends on
the batch size.  Greedy decoding is :class:`~rwkv_music.sampling.processors.Temperature` ``(0)``:
only the maximum (and exact ties) stays finite, and the draw picks among them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rwkv_music.sampling.base import SamplingValueError, to_numpy


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


__all__ = ["make_generators", "sample", "sample_row"]
