"""8-bit weight storage for ncnn exports: one 256-entry codebook per matrix.

Why a codebook: ncnn's model loader has a stock weight-only 8-bit format for every buffer it
reads "by type 0" (InnerProduct and Embed weights): a tag, a table of 256 float32 values, then
one uint8 index per weight.  The loader expands it to float32 at load time (float16 with
``fp16=True``), so inference runs the ordinary float kernels and needs no activation scales
or calibration; the ``.bin`` shrinks to about a quarter.  (ncnn's true int8 InnerProduct
quantises the activations as well, with static per-layer scales from a calibration set, which
a language model's wide activation range does not suit.)

The table is fitted per matrix with a few Lloyd iterations (1-D k-means) started from quantiles,
so it places more levels where the weights are dense; that beats a uniform int8 grid with one
scale per matrix and is close to per-row scaling for Gaussian-like weights.
"""

from __future__ import annotations

import numpy as np

LEVELS = 256
LLOYD_ITERATIONS = 12
FIT_SAMPLE = 1 << 20  # weights used to fit the table; assignment always uses all of them


def _assign(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table entry for every value (``table`` sorted ascending)."""
    edges = (table[1:] + table[:-1]) * 0.5
    return np.searchsorted(edges, values).astype(np.uint8)


def codebook_quantize(weight: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(table float32[256], index uint8[weight.size])`` with ``table[index] ≈ weight.ravel()``."""
    flat = np.ascontiguousarray(weight, dtype=np.float32).ravel()
    if flat.size == 0:
        return np.zeros(LEVELS, np.float32), np.zeros(0, np.uint8)
    sample = flat
    if flat.size > FIT_SAMPLE:
        sample = np.random.default_rng(seed).choice(flat, FIT_SAMPLE, replace=False)
    sample = np.sort(sample.astype(np.float64))
    table = np.quantile(sample, (np.arange(LEVELS) + 0.5) / LEVELS)
    for _ in range(LLOYD_ITERATIONS):
        idx = _assign(sample, table)
        sums = np.bincount(idx, weights=sample, minlength=LEVELS)
        counts = np.bincount(idx, minlength=LEVELS)
        filled = counts > 0
        table[filled] = sums[filled] / counts[filled]
        table = np.sort(table)
    table[0], table[-1] = min(table[0], sample[0]), max(table[-1], sample[-1])  # keep the extremes representable
    table32 = table.astype(np.float32)
    return table32, _assign(flat, table32)


def dequantize(table: np.ndarray, index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """What ncnn's loader reconstructs (for tests and error estimates)."""
    return table[index].reshape(shape)
