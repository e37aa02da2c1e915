"""Sampling knobs, one logits processor each (protocol: :mod:`rwkv_music.sampling.base`).

:meth:`rwkv_music.sampling.config.SamplingConfig.build_processors` composes them in this
fixed order (additive terms first, then masks, then the filters, temperature last):

1. :class:`~rwkv_music.sampling.penalties.OccurrencePenalty` -- presence/frequency with decay (FORMATS D2)
2. :class:`EosBiasSchedule` -- ``logit[eos] += (step - start) / scale`` (FORMATS D3)
3. :class:`LogitBias` -- fixed per-token bias (ChatRWKV ``t125`` -1)
4. :class:`TokenBan`
5. :class:`MinNewTokens` -- bans the stop tokens before ``min_new_tokens``
6. music constraints (ABC grammar, :class:`~rwkv_music.formats.midi.constraint.MidiConstraint`)
7. :class:`ForceTokens`
8. :class:`TopP` -- on the temperature-1 distribution of what is left
9. :class:`TopK`
10. :class:`MinP`
11. :class:`Temperature`

Then :func:`rwkv_music.sampling.sampler.sample` draws one token per row.

Why temperature comes last: the reference sampler (pip ``rwkv`` ``PIPELINE.sample_logits``,
FORMATS D1) applies top-p and top-k to the softmax of the raw logits and only then raises the
survivors to ``1/T``.  Since ``p**(1/T)`` renormalised equals ``softmax(logit / T)`` on the same
survivors, filtering first and dividing by ``T`` afterwards gives exactly pip's distribution for
every ``T``.  (Hugging Face divides by ``T`` before top-p, which keeps a different set when
``T != 1``.)  Top-p before top-k is pip's order too; both keep a prefix of the sorted
distribution, so the result is the shorter prefix.  Min-p compares ``p / p_max``, which does not
depend on renormalisation, so its place among the filters does not matter.

Differences from pip, on purpose: ``top_p >= 1`` is "off" (pip collapses to greedy with large
vocabularies, FORMATS D1 quirk); top-k keeps every token tied with the k-th score (pip keeps
exactly k, broken by sort order).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError

NEG_INF = -np.inf


def _finite_max(scores: np.ndarray) -> np.ndarray:
    """Row maxima over finite entries (``-inf`` for a row without one), shape ``[B, 1]``."""
    return np.where(np.isfinite(scores), scores, NEG_INF).max(axis=1, keepdims=True)


def _check_ids(name: str, ids: Sequence[int]) -> tuple[int, ...]:
    out = []
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise SamplingValueError(f"{name} must hold non-negative token ids, got {t!r}")
        out.append(int(t))
    return tuple(out)


def _check_vocab(rule: str, ids: Sequence[int], vocab_size: int) -> None:
    if ids and max(ids) >= vocab_size:
        raise SamplingValueError(f"{rule}: token id {max(ids)} is outside the vocabulary of {vocab_size}")


class Temperature(LogitsProcessor):
    """Divide finite scores by ``temperature``; 0 keeps only the maximum (ties survive, as pip).

    >>> Temperature(0.5).process(0, np.array([[1.0, 2.0, -np.inf]]))
    array([[  2.,   4., -inf]])
    """

    rule = "temperature"

    def __init__(self, temperature: float) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise SamplingValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        self.temperature = float(temperature)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        if self.temperature == 1.0:
            return scores.copy()
        if self.temperature == 0.0:
            top = _finite_max(scores)
            return np.where(scores == top, scores, NEG_INF).astype(scores.dtype)
        return (scores / self.temperature).astype(scores.dtype)


def kth_largest_bound(values: np.ndarray, k: int) -> np.ndarray:
    """A lower bound of the ``k``-th largest value of each row of ``values`` [B, V] (k <= V), cheap.

    Split a row into ``k`` chunks: their maxima are ``k`` different entries, so the smallest of
    them is at most the ``k``-th largest.  Every entry at or above this bound is a candidate; the
    row's top ``k`` are among them, and for peaked rows there are few, so selecting among the
    candidates costs far less than a partition of the whole row (20,096 MIDI ids).
    """
    B, V = values.shape
    width = -(-V // k)  # every chunk holds at least one real entry: (k - 1) * width < V
    padded = np.full((B, k * width), -np.inf, dtype=values.dtype)
    padded[:, :V] = values
    return padded.reshape(B, k, width).max(axis=2).min(axis=1)


def kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest value of each row of ``values`` [B, V] (no NaN; k <= V), as [B, 1]."""
    B, V = values.shape
    if 8 * k > V:  # the bound would not prune much
        return np.partition(values, V - k, axis=1)[:, V - k : V - k + 1]
    bound = kth_largest_bound(values, k)
    out = np.empty((B, 1), dtype=values.dtype)
    for r in range(B):
        cand = values[r][values[r] >= bound[r]]  # at least k entries
        out[r, 0] = np.partition(cand, cand.size - k)[cand.size - k]
    return out


class TopK(LogitsProcessor):
    """Keep the ``top_k`` highest scores per row (plus ties with the k-th); 0 = off.

    >>> TopK(2).process(0, np.array([[0.0, 3.0, 1.0, 2.0]]))
    array([[-inf,   3., -inf,   2.]])
    """

    rule = "top_k"

    def __init__(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise SamplingValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        self.top_k = int(top_k)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        vocab = scores.shape[1]
        if self.top_k == 0 or self.top_k >= vocab:
            return scores.copy()
        clean = np.where(np.isfinite(scores), scores, NEG_INF)
        kth = kth_largest(clean, self.top_k)
        return np.where(clean >= kth, scores, NEG_INF).astype(scores.dtype)


class TopP(LogitsProcessor):
    """Nucleus filter with pip's rule (FORMATS D1 step 3); ``top_p >= 1`` = off, 0 = greedy.

    Sort the probabilities (softmax of the finite scores, float64) in descending order, find the
    first position whose cumulative sum reaches ``top_p`` and keep every token whose probability
    is at least the one there.

    >>> TopP(0.6).process(0, np.log(np.array([[0.1, 0.5, 0.3, 0.1]])))[0].round(3)
    array([  -inf, -0.693, -1.204,   -inf])
    """

    rule = "top_p"
    _FAST = 64  # sort only the top candidates first; most real distributions are peaked

    def __init__(self, top_p: float) -> None:
        if not (isinstance(top_p, (int, float)) and math.isfinite(top_p) and top_p >= 0):
            raise SamplingValueError(f"top_p must be a number >= 0 (>= 1 = off), got {top_p!r}")
        self.top_p = float(top_p)

    def _cutoff(self, p: np.ndarray) -> float:
        n = p.size
        if n > 8 * self._FAST:
            # Every entry at or above the bound, sorted: a prefix of the whole sorted row (all the
            # others are smaller), so a hit inside it is the hit of the full sort below.
            bound = kth_largest_bound(p[None, :], self._FAST)[0]
            cand = np.sort(p[p >= bound])[::-1]
            hit = np.cumsum(cand) >= self.top_p
            if hit.any():
                return float(cand[int(np.argmax(hit))])
        ordered = np.sort(p)[::-1]
        hit = np.cumsum(ordered) >= self.top_p
        # float64 sums of a softmax reach any top_p < 1; if not, keep everything (faster-rwkv)
        return float(ordered[int(np.argmax(hit))]) if hit.any() else 0.0

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if self.top_p >= 1.0:
            return out
        for r in range(scores.shape[0]):
            finite = np.isfinite(scores[r])
            if not finite.any():
                continue
            s = scores[r, finite].astype(np.float64)
            p = np.exp(s - s.max())
            p /= p.sum()
            drop = np.flatnonzero(finite)[p < self._cutoff(p)]
            out[r, drop] = NEG_INF
            out[r, ~finite] = NEG_INF
        return out


class MinP(LogitsProcessor):
    """Keep tokens whose probability is at least ``min_p`` times the row's largest; 0 = off.

    >>> MinP(0.5).process(0, np.log(np.array([[0.5, 0.3, 0.2]])))[0].round(3)
    array([-0.693, -1.204,   -inf])
    """

    rule = "min_p"

    def __init__(self, min_p: float) -> None:
        if not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
            raise SamplingValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
        self.min_p = float(min_p)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        if self.min_p == 0.0:
            return scores.copy()
        # p_i >= min_p * p_max  <=>  s_i >= s_max + log(min_p)
        threshold = _finite_max(scores).astype(np.float64) + math.log(self.min_p)
        keep = np.isfinite(scores) & (scores.astype(np.float64) >= threshold)
        return np.where(keep, scores, NEG_INF).astype(scores.dtype)


class TokenBan(LogitsProcessor):
    """Make the listed ids illegal at every step (pip ``token_ban``).

    >>> TokenBan([0]).process(0, np.zeros((1, 3)))
    array([[-inf,   0.,   0.]])
    """

    rule = "token_ban"

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = _check_ids("token_ban", token_ids)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        _check_vocab(self.rule, self.token_ids, scores.shape[1])
        out[:, list(self.token_ids)] = NEG_INF
        return out


class LogitBias(LogitsProcessor):
    """Add a fixed bias to chosen ids at every step (ChatRWKV MIDI: ``{127: -1.0}``).

    >>> LogitBias({2: -1.0}).process(0, np.zeros((1, 3)))
    array([[ 0.,  0., -1.]])
    """

    rule = "logit_bias"

    def __init__(self, bias: Mapping[int, float]) -> None:
        ids = _check_ids("logit_bias", list(bias))
        for t, b in bias.items():
            if not (isinstance(b, (int, float)) and math.isfinite(b)):
                raise SamplingValueError(f"logit_bias[{t}] must be a finite number, got {b!r}")
        self.bias = {t: float(bias[t]) for t in ids}

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        _check_vocab(self.rule, list(self.bias), scores.shape[1])
        for t, b in self.bias.items():
            out[:, t] += b
        return out


class EosBiasSchedule(LogitsProcessor):
    """``logit[t] += (step - start) / scale`` for each end token ``t``, optionally clamped.

    ChatRWKV's MIDI recipe (FORMATS D3) is ``EosBiasSchedule([0], start=2000, scale=500)``:
    -4 at the first token, 0 at token 2000, +4.19 at token 4095.

    >>> EosBiasSchedule([0], start=2000, scale=500).process(0, np.zeros((1, 2)))
    array([[-4.,  0.]])
    """

    rule = "eos_bias"

    def __init__(
        self,
        token_ids: Sequence[int],
        start: float,
        scale: float,
        min_bias: float | None = None,
        max_bias: float | None = None,
    ) -> None:
        self.token_ids = _check_ids("eos_bias tokens", token_ids)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise SamplingValueError(f"eos_bias scale must be a number > 0, got {scale!r}")
        if not (isinstance(start, (int, float)) and math.isfinite(start)):
            raise SamplingValueError(f"eos_bias start must be a finite number, got {start!r}")
        if min_bias is not None and max_bias is not None and min_bias > max_bias:
            raise SamplingValueError(f"eos_bias min_bias {min_bias!r} is above max_bias {max_bias!r}")
        self.start, self.scale = float(start), float(scale)
        self.min_bias, self.max_bias = min_bias, max_bias

    def bias_at(self, step: int) -> float:
        """The bias added at generated-token index ``step``."""
        b = (step - self.start) / self.scale
        if self.min_bias is not None:
            b = max(b, self.min_bias)
        if self.max_bias is not None:
            b = min(b, self.max_bias)
        return b

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        _check_vocab(self.rule, self.token_ids, scores.shape[1])
        out[:, list(self.token_ids)] += self.bias_at(step)
        return out


class MinNewTokens(LogitsProcessor):
    """Ban the stop tokens while fewer than ``min_new_tokens`` tokens were generated.

    >>> MinNewTokens(1, [0]).process(0, np.zeros((1, 2)))
    array([[-inf,   0.]])
    """

    rule = "min_new_tokens"

    def __init__(self, min_new_tokens: int, stop_tokens: Sequence[int]) -> None:
        if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)) or min_new_tokens < 0:
            raise SamplingValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
        self.min_new_tokens = int(min_new_tokens)
        self.stop_tokens = _check_ids("stop_tokens", stop_tokens)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if step < self.min_new_tokens and self.stop_tokens:
            _check_vocab(self.rule, self.stop_tokens, scores.shape[1])
            out[:, list(self.stop_tokens)] = NEG_INF
        return out


class ForceTokens(LogitsProcessor):
    """At the given steps only the given id is legal (``{step: token_id}``, all rows).

    The forced id keeps its own score; if an earlier processor banned it the row is empty and
    a :class:`~rwkv_music.sampling.base.RowConstraintError` says so.

    >>> ForceTokens({0: 1}).process(0, np.zeros((1, 3)))
    array([[-inf,   0., -inf]])
    """

    rule = "force_tokens"

    def __init__(self, schedule: Mapping[int, int]) -> None:
        for step in schedule:
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
                raise SamplingValueError(f"force_tokens steps must be integers >= 0, got {step!r}")
        _check_ids("force_tokens", list(schedule.values()))
        self.schedule = {int(s): int(t) for s, t in schedule.items()}

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        token = self.schedule.get(step)
        if token is None:
            return scores.copy()
        _check_vocab(self.rule, [token], scores.shape[1])
        out = np.full_like(scores, NEG_INF)
        out[:, token] = scores[:, token]
        return out


__all__ = [
    "EosBiasSchedule",
    "ForceTokens",
    "LogitBias",
    "MinNewTokens",
    "MinP",
    "Temperature",
    "TokenBan",
    "TopK",
    "TopP",
]
