"""Interpolated Witten–Bell n-gram over token ids: the baseline the trained models must beat.

P(w | h) = (c(h,w) + T(h)·P(w | h')) / (c(h) + T(h)), with T(h) the number of distinct words seen
after h and h' the context shortened by one; the recursion ends in a Witten–Bell unigram
interpolated with the uniform distribution over the vocabulary, so no id has zero probability.
Counting is vectorised with numpy (contexts packed into int64 keys), so a 5-gram over a million
bytes fits in seconds.
"""

from __future__ import annotations

import numpy as np

PAD = 0  # stream start is padded with id 0 so every position has a full context


class WittenBellNGram:
    """``WittenBellNGram(order, vocab_size).fit(ids)``; then ``bits(ids, mask)``."""

    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if float(vocab_size) ** order >= 2.0 ** 62:
            raise ValueError(f"order {order} with vocab {vocab_size} does not fit int64 keys")
        self.order, self.vocab_size = order, vocab_size
        self._full: list[tuple[np.ndarray, np.ndarray]] = []  # per context length k: sorted keys, counts
        self._ctx: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # keys, c(h), T(h)

    def _keys(self, padded: np.ndarray, k: int, n: int) -> np.ndarray:
        """Key of (the k tokens before position t, token t) for t = order-1 … order-1+n-1."""
        key = np.zeros(n, dtype=np.int64)
        start = self.order - 1
        for j in range(k, -1, -1):  # oldest context token first
            key = key * self.vocab_size + padded[start - j:start - j + n]
        return key

    def fit(self, ids: np.ndarray) -> "WittenBellNGram":
        ids = np.asarray(ids, dtype=np.int64)
        padded = np.concatenate([np.full(self.order - 1, PAD, dtype=np.int64), ids])
        n = len(ids)
        self._full, self._ctx = [], []
        for k in range(self.order):
            full, counts = np.unique(self._keys(padded, k, n), return_counts=True)
            self._full.append((full, counts))
            ctx_of_full = full // self.vocab_size
            ctx, first = np.unique(ctx_of_full, return_index=True)
            c_h = np.add.reduceat(counts, first)
            t_h = np.diff(np.append(first, len(full)))
            self._ctx.append((ctx, c_h, t_h))
        return self

    @staticmethod
    def _lookup(keys: np.ndarray, table: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(table, keys)
        pos_c = np.minimum(pos, len(table) - 1)
        hit = table[pos_c] == keys
        return np.where(hit, values[pos_c], 0)

    def probs(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[t] | previous order-1 ids) for every position (stream start padded with 0)."""
        ids = np.asarray(ids, dtype=np.int64)
        padded = np.concatenate([np.full(self.order - 1, PAD, dtype=np.int64), ids])
        n = len(ids)
        p = np.full(n, 1.0 / self.vocab_size)
        for k in range(self.order):
            full_keys = self._keys(padded, k, n)
            full, counts = self._full[k]
            ctx, c_h, t_h = self._ctx[k]
            c_hw = self._lookup(full_keys, full, counts).astype(np.float64)
            ctx_keys = full_keys // self.vocab_size
            ch = self._lookup(ctx_keys, ctx, c_h).astype(np.float64)
            th = self._lookup(ctx_keys, ctx, t_h).astype(np.float64)
            seen = ch > 0
            p = np.where(seen, (c_hw + th * p) / np.maximum(ch + th, 1.0), p)
        return p

    def bits(self, ids: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Mean −log2 P over positions 1… whose mask is 1 (position 0 has no prediction)."""
        lp = -np.log2(self.probs(ids))[1:]
        m = np.ones_like(lp) if mask is None else np.asarray(mask, dtype=np.float64)[1:]
        return float((lp * m).sum() / max(m.sum(), 1.0))
