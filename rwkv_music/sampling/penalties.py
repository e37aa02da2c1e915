"""Presence / frequency penalties with decay, the ``rwkv`` pip package's semantics (FORMATS D2).

Per row the processor keeps an occurrence map ``occ`` over the *generated* tokens (the prompt
is not counted, as in pip and ChatRWKV).  Each step:

* every id already in the map gets ``logit -= presence + occ[id] * frequency`` (the presence
  term never decays, and applies even to ids whose weight is 0);
* after a token is chosen, every entry is multiplied by ``decay`` and then
  ``occ[token] += weight(token)``.

Weights make the recipes expressible: pip uses 0 for tokens whose text is a space, tab or digit
run (:func:`pip_text_weights`), ChatRWKV's MIDI recipe (D3) uses 0.3 for ids 0-126 and 1 for
the rest with presence 0, frequency 0.5, decay 0.997 (:func:`weights_from_ranges`).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError


def weights_from_ranges(ranges: Sequence[tuple[int, int, float]]) -> dict[int, float]:
    """``[(start, stop, weight), ...]`` (half-open id ranges) as an ``{id: weight}`` dict.

    >>> weights_from_ranges([(0, 3, 0.3)])
    {0: 0.3, 1: 0.3, 2: 0.3}
    """
    out: dict[int, float] = {}
    for start, stop, weight in ranges:
        if not (0 <= start <= stop):
            raise SamplingValueError(f"penalty weight range must satisfy 0 <= start <= stop, got ({start}, {stop})")
        for t in range(int(start), int(stop)):
            out[t] = float(weight)
    return out


def pip_text_weights(decode: Callable[[list[int]], str], vocab_size: int) -> dict[int, float]:
    """pip's rule: weight 0 for ids whose decoded text is a substring of ``" \\t0123456789"``.

    That covers a space, a tab, a digit, an ascending digit run and the empty string (the text
    of special tokens).  Returns only the zero-weight ids; everything else defaults to 1.
    """
    return {t: 0.0 for t in range(vocab_size) if decode([t]) in " \t0123456789"}


class OccurrencePenalty(LogitsProcessor):
    """Presence and frequency penalties over generated tokens, decayed every step.

    Args:
        presence: subtracted once from every id that occurred (pip ``alpha_presence``).
        frequency: times the decayed occurrence count (pip ``alpha_frequency``).
        decay: multiplies every count after each step, before the new token is added (pip
            ``alpha_decay``; 1 = no decay).
        weights: ``{id: weight}`` added to the count when ``id`` is chosen; others get
            ``default_weight``.

    >>> pen = OccurrencePenalty(presence=0.0, frequency=0.5, decay=0.5)
    >>> pen.reset([[0]])
    >>> pen.update([1]); pen.update([1])
    >>> pen(0, np.zeros((1, 3)))   # occ[1] = 1 * 0.5 + 1 = 1.5 -> 0.75
    array([[ 0.  , -0.75,  0.  ]])
    """

    rule = "occurrence_penalty"

    def __init__(
        self,
        presence: float = 0.0,
        frequency: float = 0.0,
        decay: float = 1.0,
        weights: Mapping[int, float] | None = None,
        default_weight: float = 1.0,
    ) -> None:
        for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise SamplingValueError(f"{name} must be a finite number, got {value!r}")
        if not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise SamplingValueError(f"penalty_decay must be in [0, 1], got {decay!r}")
        weights = dict(weights or {})
        for t, w in list(weights.items()) + [("default", default_weight)]:
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise SamplingValueError(f"penalty weight for {t} must be a finite number >= 0, got {w!r}")
            if t != "default" and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0):
                raise SamplingValueError(f"penalty weights must be keyed by token ids >= 0, got {t!r}")
        self.presence, self.frequency, self.decay = float(presence), float(frequency), float(decay)
        self.weights = {int(t): float(w) for t, w in weights.items()}
        self.default_weight = float(default_weight)
        self._occ = np.zeros((0, 0))  # [B, cap] decayed weighted counts
        self._seen = np.zeros((0, 0), dtype=bool)  # [B, cap] ids that entered the map

    @property
    def enabled(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0

    def occurrences(self, row: int) -> dict[int, float]:
        """The occurrence map of one row, as pip's ``occurrence`` dict."""
        ids = np.flatnonzero(self._seen[row])
        return {int(t): float(self._occ[row, t]) for t in ids}

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        self._occ = np.zeros((len(prompts), 0))
        self._seen = np.zeros((len(prompts), 0), dtype=bool)

    def update(self, tokens: Sequence[int]) -> None:
        tokens = [int(t) for t in tokens]
        if len(tokens) != self._occ.shape[0]:
            n_rows = self._occ.shape[0]
            raise SamplingValueError(f"{self.rule}: update got {len(tokens)} tokens for a batch of {n_rows}")
        need = max(tokens) + 1 if tokens else 0
        if need > self._occ.shape[1]:  # grow to cover the largest id seen (the vocab size is not known here)
            grow = ((0, 0), (0, need - self._occ.shape[1]))
            self._occ = np.pad(self._occ, grow)
            self._seen = np.pad(self._seen, grow)
        self._occ *= self.decay
        for row, t in enumerate(tokens):
            self._occ[row, t] += self.weights.get(t, self.default_weight)
            self._seen[row, t] = True

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        cap = min(self._occ.shape[1], scores.shape[1])
        if cap == 0 or not self.enabled:
            return out
        if self._occ.shape[0] != scores.shape[0]:
            n_rows = self._occ.shape[0]
            raise SamplingValueError(f"{self.rule}: scores have {scores.shape[0]} rows but reset() was given {n_rows}")
        penalty = self.presence * self._seen[:, :cap] + self.frequency * self._occ[:, :cap]
        out[:, :cap] = (scores[:, :cap] - penalty).astype(scores.dtype)
        return out


__all__ = ["OccurrencePenalty", "pip_text_weights", "weights_from_ranges"]
