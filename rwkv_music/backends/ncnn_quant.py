"""8-bit weight storage for ncnn exports, in ncnn's stock 256-entry codebook format.

Two schemes share the format (``SCHEMES``); the exporter picks one per export:

* ``"rows"`` (the default): symmetric int8 with one scale per output row, the grid of
  :func:`rwkv_music.model.quant.quantize_rows` (``scale = max|row| / 127``, ``q`` in -127..127).  The
  table is the 256 integers -128..127 and the index is ``q + 128``, so ncnn's loader rebuilds the
  integer matrix exactly and the row scales are applied after the InnerProduct (:func:`int8_rows`):
  the same weights as our torch int8, activations in float.
* ``"codebook"``: the older fitted table described below.

Why a codebook: ncnn's model loader has a stock weight-only 8-bit format for every buffer it
reads "by type 0" (InnerProduct and Embed weights): a tag, a table of 256 float32 values, then
one uint8 index per weight.  The loader expands it to float32 at load time (float16 with
``fp16=True``), so inference runs the ordinary float kernels and needs no activation scales
or calibration; the ``.bin`` shrinks to about a quarter.  (ncnn's true int8 InnerProduct
quantises the activations as well, with static per-layer scales from a calibration set, which
a language model's wide activation range does not suit.)

The table is fitted per matrix: levels start with a density proportional to p(w)^(1/3) (the
high-resolution optimum for mean squared error, Panter–Dite) plus a uniform floor that keeps
levels in sparse tails, read off a histogram, and are refined by a few Lloyd iterations (1-D
k-means).  The exporter quantises each matrix divided by its per-row RMS and multiplies the
rows back after the InnerProduct (:func:`row_scales`).  For Gaussian-like weights this is as accurate
as per-row int8 scaling, and it follows skewed or heavy-tailed matrices without clipping them.
"""

from __future__ import annotations

import numpy as np

from rwkv_music.backends.export_weights import int8_symmetric

LEVELS = 256
SCHEMES = ("rows", "codebook")
INT_TABLE = np.arange(-LEVELS // 2, LEVELS // 2, dtype=np.float32)  # index i -> integer i - 128
LLOYD_ITERATIONS = 8
FIT_SAMPLE = 1 << 18  # weights used to fit the table; assignment always uses all of them
DENSITY_FLOOR = 0.2  # uniform share added to the level density, so sparse tails keep some levels
MAX_HIST_BINS = 4096  # resolution of the density estimate that seeds the table
SAMPLES_PER_BIN = 64  # fewer bins for small matrices, so the density estimate is not noise
ASSIGN_BINS = 1 << 16  # grid of the nearest-level lookup in _assign


def _assign(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table entry for every value (``table`` sorted ascending).

    Same result as ``searchsorted(midpoints, values)``, but a lookup on a fine uniform grid plus a
    short fix-up pass is several times faster for millions of weights.
    """
    edges = (table[1:] + table[:-1]) * 0.5
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.searchsorted(edges, values).astype(np.uint8)
    scale = ASSIGN_BINS / (hi - lo)
    bins = np.minimum(((values - lo) * scale).astype(np.int64), ASSIGN_BINS - 1)
    starts = lo + (np.arange(ASSIGN_BINS) - 0.5) / scale  # at or below every value of the bin
    idx = np.searchsorted(edges, starts)[bins]
    upper = np.append(edges, np.inf).astype(values.dtype)
    while True:  # a bin holds at most a few edges, so this runs once or twice
        step = values > upper[idx]
        if not step.any():
            break
        idx += step
    return idx.astype(np.uint8)


def _initial_table(sample: np.ndarray) -> np.ndarray:
    """Levels spaced by the cube root of the weight density (Panter–Dite point density)."""
    lo, hi = float(sample[0]), float(sample[-1])
    if hi - lo <= 0:
        return np.full(LEVELS, lo)
    bins = int(np.clip(sample.size // SAMPLES_PER_BIN, LEVELS // 4, MAX_HIST_BINS))
    hist, edges = np.histogram(sample, bins=bins, range=(lo, hi))
    density = np.cbrt(hist.astype(np.float64))
    density += DENSITY_FLOOR * density.mean()
    cdf = np.concatenate([[0.0], np.cumsum(density)])
    cdf /= cdf[-1]
    return np.interp((np.arange(LEVELS) + 0.5) / LEVELS, cdf, edges)


def codebook_quantize(weight: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(table float32[256], index uint8[weight.size])`` with ``table[index] ≈ weight.ravel()``."""
    flat = np.ascontiguousarray(weight, dtype=np.float32).ravel()
    if flat.size == 0:
        return np.zeros(LEVELS, np.float32), np.zeros(0, np.uint8)
    sample = flat
    if flat.size > FIT_SAMPLE:  # a random subset, plus both extremes so the table spans them
        picked = flat[np.random.default_rng(seed).integers(0, flat.size, FIT_SAMPLE)]
        sample = np.concatenate([picked, [flat.min(), flat.max()]])
    sample = np.sort(sample.astype(np.float64))
    table = _initial_table(sample)
    prefix = np.concatenate([[0.0], np.cumsum(sample)])
    for _ in range(LLOYD_ITERATIONS):  # the sample is sorted, so each cell is a contiguous run
        bounds = np.concatenate([[0], np.searchsorted(sample, (table[1:] + table[:-1]) * 0.5), [sample.size]])
        counts = np.diff(bounds)
        filled = counts > 0
        table[filled] = (prefix[bounds[1:]] - prefix[bounds[:-1]])[filled] / counts[filled]
        table = np.sort(table)
    table32 = table.astype(np.float32)
    return table32, _assign(flat, table32)


def row_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-row RMS of a ``[out, in]`` matrix (1 for all-zero rows).

    The exporter stores ``weight / scale[:, None]`` through the codebook and multiplies the
    InnerProduct's output by ``scale``, so one table serves rows of very different magnitude.
    """
    rms = np.sqrt(np.mean(np.square(weight, dtype=np.float64), axis=1))
    return np.where(rms > 0, rms, 1.0).astype(np.float32)


def int8_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row symmetric int8 of ``weight`` [out, in]: ``(table, index uint8, scale float32[out])``.

    ``table[index].reshape(weight.shape) * scale[:, None]`` is the int8 approximation (an all-zero
    row keeps scale 1 and q = 0); ``table`` is :data:`INT_TABLE`, so the codebook holds integers.
    """
    q, scale = int8_symmetric(weight, axis=1)
    return INT_TABLE, (q.astype(np.int16) + LEVELS // 2).astype(np.uint8).ravel(), scale


def dequantize(table: np.ndarray, index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """What ncnn's loader reconstructs (for tests and error estimates)."""
    return table[index].reshape(shape)
