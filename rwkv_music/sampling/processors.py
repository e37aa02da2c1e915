"""Sampling knobs, one logits processor each (protocol: :mod:`rwkv_music.sampling.base`).

:meth:`rwkv_music.sampling.config.SamplingConfig.build_processors` composes them in this
fixed order (additive terms first, then masks, then the filters, temperature last):

1. :class:`~rwkv_music.sampling.penalties.OccurrencePenalty` -- presence/frequency with decay (docs/formats.md D2)
2. :class:`EosBiasSchedule` -- ``logit[eos] += (step - start) / scale`` (docs/formats.md D3)
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
docs/formats.md D1) applies top-p and top-k to the softmax of the raw logits and only then raises the
survivors to ``1/T``.  Since ``p**(1/T)`` renormalised equals ``softmax(logit / T)`` on the same
survivors, filtering first and dividing by ``T`` afterwards gives exactly pip's distribution for
every ``T``.  (Hugging Face divides by ``T`` before top-p, which keeps a different set when
``T != 1``.)  Top-p before top-k is pip's order too; both keep a prefix of the sorted
distribution, so the result is the shorter prefix.  Min-p compares ``p / p_max``, which does not
depend on renormalisation, so its place among the filters does not matter.

Every processor here declares ``runs_on = "device"``: its :meth:`apply` is written once against
the array shim of :mod:`rwkv_music.sampling.arrays`, so it runs as tensor ops on the device that
holds torch logits and vectorised on numpy logits, with no per-row Python and no host copy.

Differences from pip, on purpose: ``top_p >= 1`` is "off" (pip collapses to greedy with large
vocabularies, docs/formats.md D1 quirk); top-k keeps every token tied with the k-th score (pip keeps
exactly k, broken by sort order).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from rwkv_music.sampling import native
from rwkv_music.sampling.arrays import NEG_INF, NumpyOps, on_accelerator, ops
from rwkv_music.sampling.base import Candidates, LogitsProcessor, SamplingValueError


def _finite_max(xp: Any, scores: Any) -> Any:
    """Row maxima over finite entries (``-inf`` for a row without one), shape ``[B, 1]``."""
    return xp.amax(xp.where(xp.isfinite(scores), scores, NEG_INF), keepdims=True)


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


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class DeviceProcessor(LogitsProcessor):
    """A processor whose :meth:`apply` works on numpy arrays and torch tensors alike (on their device).

    ``apply`` may return its input unchanged when it has nothing to do; ``__call__`` (the protocol)
    always hands back a new array.

    **Pools.**  In continuous batching every piece brings its own list; the decode loop runs the
    lists of pieces with equal settings as one batch (a pool) when each processor says how:
    ``pool_mode = "shared"`` (no state, no step: one instance serves every row), ``"steps"``
    (:meth:`apply_steps` takes one step per row) or ``"state"`` (class methods ``apply_pool`` and
    ``update_pool`` over the pieces' instances).  ``None`` (the default): not pooled.
    """

    runs_on = "device"
    pool_mode: str | None = None

    def pool_key(self) -> tuple:
        """Equal keys: interchangeable settings (the public attributes)."""
        return (type(self).__name__,) + tuple(
            (k, _freeze(v)) for k, v in sorted(vars(self).items()) if not k.startswith("_"))

    def apply_steps(self, steps: np.ndarray, scores: Any) -> Any:
        """``apply`` with one step per row (host ints ``[B]``)."""
        raise NotImplementedError

    def apply_steps_inplace(self, steps: np.ndarray, scores: Any) -> Any:
        """:meth:`apply_steps` written into ``scores`` (an array the caller owns), which is returned: a
        render's pooled step works on one copy of its rows' logits (a [B, V] copy per processor and step
        is 0.2-0.6 ms at the MIDI vocabulary on our 2-core CPU)."""
        out = self.apply_steps(steps, scores)
        if out is not scores:
            scores[...] = out
        return scores

    def apply(self, step: int, scores: Any) -> Any:
        raise NotImplementedError

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = self.apply(step, scores)
        return out.copy() if out is scores else out


class Temperature(DeviceProcessor):
    """Divide finite scores by ``temperature``; 0 keeps only the maximum (ties survive, as pip).

    >>> Temperature(0.5).process(0, np.array([[1.0, 2.0, -np.inf]]))
    array([[  2.,   4., -inf]])
    """

    rule = "temperature"
    pool_mode = "shared"
    candidate_safe = True  # each finite score on its own, and the row maximum: same on a row's finite entries

    def __init__(self, temperature: float) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise SamplingValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        self.temperature = float(temperature)

    def apply(self, step: int, scores: Any) -> Any:
        if self.temperature == 1.0:
            return scores
        xp = ops(scores)
        if self.temperature == 0.0:
            return xp.where(scores == _finite_max(xp, scores), scores, NEG_INF)
        return scores / self.temperature


def _pooled(pool: tuple[np.ndarray, np.ndarray, np.ndarray], cut: np.ndarray | None,
            shape: tuple[int, int]) -> Candidates:
    """:class:`Candidates` from row-major ``(rows, cols, values)`` entries, those below ``cut[row]`` left out."""
    rows, cols, vals = pool
    n_rows = shape[0]
    if n_rows == 1:  # one row: its entries, as they are, are its candidates
        if cut is not None:
            keep = vals >= cut[0]
            cols, vals = cols[keep], vals[keep]
        return Candidates(cols.astype(np.int64, copy=False)[None, :], vals[None, :], shape[1])
    if cut is not None:
        keep = vals >= cut[rows]
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    counts = np.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if rows.size else 0
    start = np.cumsum(counts) - counts
    pos = np.arange(rows.size) - start[rows]
    ids = np.zeros((n_rows, width), dtype=np.int64)
    out = np.full((n_rows, width), -np.inf, dtype=vals.dtype)
    ids[rows, pos] = cols
    out[rows, pos] = vals
    return Candidates(ids, out, shape[1])


class NucleusCandidates(Candidates):
    """The candidates of ``TopP(top_k_after=k)`` then a no-op ``TopK`` and ``MinP``, left uncomputed until read.

    The decode loop only draws from them: :meth:`draw` runs the three filters and the draw in one C call
    (:func:`rwkv_music.sampling.native.top_p_k_draw`), the same ids as drawing from the computed
    candidates.  ``ids``/``vals`` are computed (by :meth:`TopP.candidates` and the later processors) when
    first read, or when the kernel hands a row back.  Valid until the processor list's next step, which
    reuses the scores' buffer.
    """

    def __init__(self, top_p: TopP, step: int, scores: np.ndarray, later: Sequence[Any],
                 scratch: np.ndarray | None, min_p: float) -> None:
        self._source = (top_p, step, scores, tuple(later), scratch)
        self.min_p, self.vocab = min_p, int(scores.shape[1])
        self._computed: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self._source[2].shape[0], self.vocab)

    def _compute(self) -> tuple[np.ndarray, np.ndarray]:
        if self._computed is None:
            top_p, step, scores, later, scratch = self._source
            found = top_p.candidates(step, scores, scratch=scratch)
            assert found is not None  # (drawn_tail checked what candidates() needs)
            for proc in later if found.vals.shape[1] else ():
                found.vals = proc.apply(step, found.vals)
            self._computed = (found.ids, found.vals)
        return self._computed

    @property
    def ids(self) -> np.ndarray:  # type: ignore[override]
        return self._compute()[0]

    @property
    def vals(self) -> np.ndarray:  # type: ignore[override]
        return self._compute()[1]

    def draw(self, uniforms: np.ndarray) -> np.ndarray | None:
        """The drawn ids [B] (-1: an emptied row), or None where the caller must draw from ``ids``/``vals``."""
        if self._computed is not None:
            return None
        top_p, _, scores, _, _ = self._source
        return native.top_p_k_draw(scores, top_p.top_k_after, top_p.top_p, self.min_p, uniforms)


def kth_largest(values: Any, k: int) -> Any:
    """The ``k``-th largest value of each row of ``values`` [B, V] (no NaN; k <= V), as [B, 1].

    >>> kth_largest(np.array([[0.0, 3.0, 1.0, 2.0]]), 2)
    array([[2.]])
    """
    xp = ops(values)
    return xp.top_values(values, k)[:, k - 1 : k]


class TopK(DeviceProcessor):
    """Keep the ``top_k`` highest scores per row (plus ties with the k-th); 0 = off.

    >>> TopK(2).process(0, np.array([[0.0, 3.0, 1.0, 2.0]]))
    array([[-inf,   3., -inf,   2.]])
    """

    rule = "top_k"
    pool_mode = "shared"
    candidate_safe = True  # the k-th largest of a row is found among its finite entries (else it is -inf)

    def __init__(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise SamplingValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        self.top_k = int(top_k)
        # Set by SamplingConfig.build_processors when a TopP(top_k_after=top_k) runs right before:
        # that filter already kept only values >= the k-th largest (ties included), so nothing is left to cut.
        self._after_top_p = False

    def apply(self, step: int, scores: Any) -> Any:
        vocab = scores.shape[1]
        if self.top_k == 0 or self.top_k >= vocab or self._after_top_p:
            return scores
        xp = ops(scores)
        if not on_accelerator(scores):
            fin = xp.isfinite(scores)
            if int(xp.count_true(fin).max()) <= self.top_k:
                return scores  # no row has more than k legal ids (after TopP(top_k_after=k), say): nothing to cut
        clean = xp.clean(scores)
        return xp.where(clean >= kth_largest(clean, self.top_k), scores, NEG_INF)

    def candidates(self, step: int, scores: Any, scratch: np.ndarray | None = None) -> Candidates | None:
        """The survivors of :meth:`apply`, compacted (host numpy only; else None): every finite score at
        or above the row's ``k``-th largest, as ``apply`` keeps them."""
        if self._after_top_p or not isinstance(scores, np.ndarray) or not 0 < self.top_k < scores.shape[1]:
            return None
        found = NumpyOps.top_pool(scores, self.top_k, unclean=[False])
        _, pool = found if found is not None else NumpyOps.top_pool(NumpyOps().clean(scores), self.top_k)
        return _pooled(pool, None, scores.shape)


class TopP(DeviceProcessor):
    """Nucleus filter with pip's rule (docs/formats.md D1 step 3); ``top_p >= 1`` = off, 0 = greedy.

    Sort the probabilities (softmax of the finite scores, float64) in descending order, find the
    first position whose cumulative sum reaches ``top_p`` and keep every token whose probability
    is at least the one there.

    >>> TopP(0.6).process(0, np.log(np.array([[0.1, 0.5, 0.3, 0.1]])))[0].round(3)
    array([  -inf, -0.693, -1.204,   -inf])
    """

    rule = "top_p"
    pool_mode = "shared"
    use_kernel = True  # candidates() may use the C kernel (rwkv_music.sampling.native); False: numpy only
    _FAST = 64  # look at the top candidates first; most real distributions are peaked

    def __init__(self, top_p: float, top_k_after: int = 0) -> None:
        if not (isinstance(top_p, (int, float)) and math.isfinite(top_p) and top_p >= 0):
            raise SamplingValueError(f"top_p must be a number >= 0 (>= 1 = off), got {top_p!r}")
        if isinstance(top_k_after, bool) or not isinstance(top_k_after, (int, np.integer)) or top_k_after < 0:
            raise SamplingValueError(f"top_k_after must be an integer >= 0, got {top_k_after!r}")
        self.top_p = float(top_p)
        # A TopK(k) right after this filter: both keep a prefix of the sorted distribution and the
        # shorter one wins, so only the top k need sorting (a flat row would otherwise need the
        # full sort) and this filter applies the pair's result at once (TopK then finds nothing
        # to cut).  Same survivors as the two in turn.
        self.top_k_after = int(top_k_after)

    def cutoff(self, p: Any) -> Any:
        """Per row of probabilities ``p`` [B, V] (float64): the smallest probability kept, as [B, 1].

        The sorted prefix of the top ``_FAST`` candidates decides most rows; rows whose prefix does
        not reach ``top_p`` are decided by the full sort (on a GPU the full sort always runs, since
        asking which rows need it would cost a host sync).
        """
        xp = ops(p)
        V = p.shape[1]
        k = self.top_k_after
        if 0 < k < V:
            return self.cutoff_sorted(xp, xp.top_values(p, k))  # no hit in the top k: TopK decides
        m = V if on_accelerator(p) or V <= 8 * self._FAST else self._FAST
        ordered = xp.top_values(p, m)
        cut = self.cutoff_sorted(xp, ordered)
        if m < V:
            hit = xp.cumsum(ordered) >= self.top_p
            missed = ~xp.any(hit)
            if bool(missed.any()):
                full = self.cutoff_sorted(xp, xp.sort_desc(p[missed]))
                cut[missed] = full
        return cut

    def cutoff_sorted(self, xp: Any, ordered: Any) -> Any:
        hit = xp.cumsum(ordered) >= self.top_p
        first = xp.argmax(xp.cast(hit, "int64")).reshape(-1, 1)
        # float64 sums of a softmax reach any top_p < 1; if not, keep everything (faster-rwkv)
        return xp.where(xp.any(hit).reshape(-1, 1), xp.take(ordered, first), 0.0)

    def _apply_with_top_k(self, scores: Any, k: int) -> Any:
        """TopP then TopK(k) in one pass over the row: the top k scores, the softmax total, a score threshold.

        Probabilities are monotonic in the scores, so the kept set ``p >= cutoff`` is ``s >= s_cut``;
        the total uses a float32 exp summed in float64 (the reference sums float64 exps: equal cutoffs
        except where a cumulative sum lands within rounding of ``top_p``).
        """
        xp = ops(scores)
        clean = xp.clean(scores)
        top = xp.top_values(clean, k)  # [B, k] descending
        s_cut = self._score_cut(xp, clean, top, k, scratch=None)
        return xp.where(clean >= s_cut, scores, NEG_INF)

    def _score_cut(self, xp: Any, clean: Any, top: Any, k: int, scratch: Any) -> Any:
        """``[B, 1]``: the lowest score the pair keeps, from the rows' top ``k`` scores ``top`` (descending).

        ``scratch``: a numpy array of ``clean``'s shape to compute the exponentials in (may be ``clean``).
        """
        smax = top[:, :1]
        if xp.name == "numpy" and top.shape[0] == 1:  # one row (the usual small batch): the same, fewer calls
            if not math.isfinite(smax[0, 0]):
                smax = np.zeros_like(smax)
            e = np.subtract(clean, smax, out=scratch)
            np.exp(e, out=e)
            total = e.sum(axis=1, keepdims=True, dtype=np.float64)
            p = np.exp(top.astype(np.float64) - smax.astype(np.float64)) / (total if total[0, 0] > 0 else 1.0)
            hit = np.cumsum(p, axis=1)[0] >= self.top_p
            first = int(hit.argmax())
            return top[:, first : first + 1] if hit[first] else top[:, k - 1 : k]
        if xp.name == "numpy":  # the arithmetic below in fewer numpy calls (the same operations, dtypes and order)
            smax = np.where(np.isfinite(smax), smax, smax.dtype.type(0.0))
            e = np.subtract(clean, smax, out=scratch)
            np.exp(e, out=e)  # in place: one [B, V] temporary, not two
            total = e.sum(axis=1, keepdims=True, dtype=np.float64)
            p = np.exp(top.astype(np.float64) - smax.astype(np.float64)) / np.where(total > 0, total, 1.0)
            hit = np.cumsum(p, axis=1) >= self.top_p
            first = hit.argmax(axis=1)  # the first True (0 if none), as argmax of its int64 cast
            rows = np.arange(top.shape[0])
            return np.where(hit[rows, first], top[rows, first], top[:, k - 1]).reshape(-1, 1)
        smax = xp.where(xp.isfinite(smax), smax, 0.0)
        e = xp.exp(clean - smax)
        total = e.sum(dim=1, keepdim=True, dtype=xp.dtype("float64"))
        p = xp.exp(xp.cast(top, "float64") - xp.cast(smax, "float64")) / xp.where(total > 0, total, 1.0)
        hit = xp.cumsum(p) >= self.top_p
        first = xp.argmax(xp.cast(hit, "int64")).reshape(-1, 1)
        return xp.where(xp.any(hit).reshape(-1, 1), xp.take(top, first), top[:, k - 1 : k])

    def candidates(self, step: int, scores: Any, scratch: np.ndarray | None = None) -> Candidates | None:
        """The survivors of :meth:`apply` with ``top_k_after`` set, compacted (host numpy only; else None).

        The same threshold as :meth:`_apply_with_top_k` (the same arithmetic on the same arrays), applied
        to the entries at or above each row's ``k``-th score, which hold every survivor (``s_cut`` is a
        top-``k`` value, or -inf when a row has fewer than ``k`` finite scores).  ``scratch``: an array of
        the scores' shape and dtype that may be overwritten (``scores`` itself, say).
        """
        k = self.top_k_after
        if self.top_p >= 1.0 or not isinstance(scores, np.ndarray) or not 0 < k < scores.shape[1]:
            return None
        from_kernel = native.top_p_k(scores, k, self.top_p) if self.use_kernel else None
        if from_kernel is not None:  # the C kernel: the same rule (see rwkv_music/sampling/native)
            return Candidates(*from_kernel, scores.shape[1])
        xp = NumpyOps()
        clean = scores
        found = xp.top_pool(scores, k, unclean=[False])  # None: NaN or +inf in scores (clean them first)
        if found is None:
            clean = xp.clean(scores)
            found = xp.top_pool(clean, k)
        top, pool = found  # (pool: copies, so the scratch may be clean itself)
        s_cut = self._score_cut(xp, clean, top, k, scratch=clean if clean is not scores else scratch)
        return _pooled(pool, s_cut[:, 0], scores.shape)

    def drawn_tail(self, step: int, scores: Any, later: Sequence[Any],
                   scratch: np.ndarray | None = None) -> "NucleusCandidates | None":
        """:meth:`candidates` with the ``later`` processors folded in, drawn from by one C call; None unless the
        kernel runs and ``later`` is only a no-op :class:`TopK` (the pair's own ``k``) and one :class:`MinP`."""
        k = self.top_k_after
        if (self.top_p >= 1.0 or not self.use_kernel or not isinstance(scores, np.ndarray) or scores.ndim != 2
                or scores.dtype != np.float32 or not 0 < k < min(scores.shape[1], native.MAX_K + 1)):
            return None
        min_p = 0.0
        for i, proc in enumerate(later):
            if type(proc) is TopK and (proc._after_top_p or proc.top_k in (0, k)) and i == 0:
                continue
            if type(proc) is MinP and i == len(later) - 1:
                min_p = proc.min_p
                continue
            return None
        if not native.available():
            return None
        return NucleusCandidates(self, step, scores, later, scratch, min_p)

    def apply(self, step: int, scores: Any) -> Any:
        if self.top_p >= 1.0:
            return scores
        if 0 < self.top_k_after < scores.shape[1]:
            return self._apply_with_top_k(scores, self.top_k_after)
        xp = ops(scores)
        fin = xp.isfinite(scores)
        s = xp.where(fin, xp.cast(scores, "float64"), NEG_INF)
        top = xp.amax(s, keepdims=True)
        e = xp.where(fin, xp.exp(s - xp.where(xp.isfinite(top), top, 0.0)), 0.0)
        total = xp.sum(e, keepdims=True)
        p = e / xp.where(total > 0, total, 1.0)
        keep = fin & (p >= self.cutoff(p))
        return xp.where(keep, scores, NEG_INF)


class MinP(DeviceProcessor):
    """Keep tokens whose probability is at least ``min_p`` times the row's largest; 0 = off.

    >>> MinP(0.5).process(0, np.log(np.array([[0.5, 0.3, 0.2]])))[0].round(3)
    array([-0.693, -1.204,   -inf])
    """

    rule = "min_p"
    pool_mode = "shared"
    candidate_safe = True  # compares each score with the row maximum

    def __init__(self, min_p: float) -> None:
        if not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
            raise SamplingValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
        self.min_p = float(min_p)

    def apply(self, step: int, scores: Any) -> Any:
        if self.min_p == 0.0:
            return scores
        if isinstance(scores, np.ndarray):  # the same arithmetic in fewer numpy calls (candidates at B = 1: 3x faster)
            if scores.shape[0] == 1:  # one row: a plain max is the finite max unless it is inf or nan
                top1 = np.float64(scores.max())
                if math.isfinite(top1):  # (nan scores compare False below, so they are dropped as above)
                    return np.where(scores >= top1 + math.log(self.min_p), scores, scores.dtype.type(NEG_INF))
            finite = np.isfinite(scores)
            top = np.max(scores, axis=1, keepdims=True, where=finite, initial=-np.inf)
            keep = finite & (scores >= top.astype(np.float64) + math.log(self.min_p))
            return np.where(keep, scores, scores.dtype.type(NEG_INF))
        xp = ops(scores)
        # p_i >= min_p * p_max  <=>  s_i >= s_max + log(min_p)
        threshold = xp.cast(_finite_max(xp, scores), "float64") + math.log(self.min_p)
        keep = xp.isfinite(scores) & (xp.cast(scores, "float64") >= threshold)
        return xp.where(keep, scores, NEG_INF)


class TokenBan(DeviceProcessor):
    """Make the listed ids illegal at every step (pip ``token_ban``).

    >>> TokenBan([0]).process(0, np.zeros((1, 3)))
    array([[-inf,   0.,   0.]])
    """

    rule = "token_ban"
    pool_mode = "shared"

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = _check_ids("token_ban", token_ids)

    def apply(self, step: int, scores: Any) -> Any:
        if not self.token_ids:
            return scores
        _check_vocab(self.rule, self.token_ids, scores.shape[1])
        return self.apply_inplace(step, ops(scores).copy(scores))

    def apply_inplace(self, step: int, scores: Any) -> Any:
        """:meth:`apply` written into ``scores`` (an array the caller owns)."""
        if self.token_ids:
            _check_vocab(self.rule, self.token_ids, scores.shape[1])
            scores[:, list(self.token_ids)] = NEG_INF
        return scores


class LogitBias(DeviceProcessor):
    """Add a fixed bias to chosen ids at every step (ChatRWKV MIDI: ``{127: -1.0}``).

    >>> LogitBias({2: -1.0}).process(0, np.zeros((1, 3)))
    array([[ 0.,  0., -1.]])
    """

    rule = "logit_bias"
    pool_mode = "shared"

    def __init__(self, bias: Mapping[int, float]) -> None:
        ids = _check_ids("logit_bias", list(bias))
        for t, b in bias.items():
            if not (isinstance(b, (int, float)) and math.isfinite(b)):
                raise SamplingValueError(f"logit_bias[{t}] must be a finite number, got {b!r}")
        self.bias = {t: float(bias[t]) for t in ids}
        self._ids = list(self.bias)
        self._values = np.asarray(list(self.bias.values()), dtype=np.float32)

    def apply(self, step: int, scores: Any) -> Any:
        if not self.bias:
            return scores
        return self.apply_inplace(step, ops(scores).copy(scores))

    def apply_inplace(self, step: int, scores: Any) -> Any:
        """:meth:`apply` written into ``scores`` (an array the caller owns)."""
        if not self.bias:
            return scores
        _check_vocab(self.rule, self._ids, scores.shape[1])
        if isinstance(scores, np.ndarray):  # (the ids and values as arrays once, not every step)
            values = self._values if self._values.dtype == scores.dtype else self._values.astype(scores.dtype)
        else:
            values = ops(scores).asarray(self._values, scores.dtype)
        if len(self._ids) == 1:  # one column, as a view: the same sum without a gather and a scatter
            scores[:, self._ids[0]] += values[0]
        else:
            scores[:, self._ids] = scores[:, self._ids] + values
        return scores


class EosBiasSchedule(DeviceProcessor):
    """``logit[t] += (step - start) / scale`` for each end token ``t``, optionally clamped.

    ChatRWKV's MIDI recipe (docs/formats.md D3) is ``EosBiasSchedule([0], start=2000, scale=500)``:
    -4 at the first token, 0 at token 2000, +4.19 at token 4095.

    >>> EosBiasSchedule([0], start=2000, scale=500).process(0, np.zeros((1, 2)))
    array([[-4.,  0.]])
    """

    rule = "eos_bias"
    pool_mode = "steps"

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
        self._ids = list(self.token_ids)

    def bias_at(self, step: Any) -> Any:
        """The bias added at generated-token index ``step``: a float, or for an int array (a pool's rows, each at
        its own step) a float64 array of the same arithmetic."""
        b = (step - self.start) / self.scale
        if self.min_bias is not None:
            b = np.maximum(b, self.min_bias)
        if self.max_bias is not None:
            b = np.minimum(b, self.max_bias)
        return b if isinstance(b, np.ndarray) else float(b)  # (a Python float: numpy adds it to float32 as float32)

    def apply(self, step: int, scores: Any) -> Any:
        if not self.token_ids:
            return scores
        return self.apply_inplace(step, ops(scores).copy(scores))

    def apply_inplace(self, step: int, scores: Any) -> Any:
        """:meth:`apply` written into ``scores`` (an array the caller owns)."""
        if not self.token_ids:
            return scores
        _check_vocab(self.rule, self.token_ids, scores.shape[1])
        ids = self._ids
        if len(ids) == 1:  # one column, as a view (as LogitBias)
            scores[:, ids[0]] += self.bias_at(step)
        else:
            scores[:, ids] = scores[:, ids] + self.bias_at(step)
        return scores

    def apply_steps(self, steps: np.ndarray, scores: Any) -> Any:
        if not self.token_ids:
            return scores
        return self.apply_steps_inplace(steps, ops(scores).copy(scores))

    def apply_steps_inplace(self, steps: np.ndarray, scores: Any) -> Any:
        if not self.token_ids:
            return scores
        _check_vocab(self.rule, self.token_ids, scores.shape[1])
        xp = ops(scores)
        bias = self.bias_at(np.asarray(steps, dtype=np.int64))
        bias = xp.asarray(bias.astype(np.float32).reshape(-1, 1), "float32")
        ids = self._ids
        if len(ids) == 1:  # one column, as a view (as apply_inplace)
            scores[:, ids[0] : ids[0] + 1] += bias
        else:
            scores[:, ids] = scores[:, ids] + bias
        return scores


class MinNewTokens(DeviceProcessor):
    """Ban the stop tokens while fewer than ``min_new_tokens`` tokens were generated.

    >>> MinNewTokens(1, [0]).process(0, np.zeros((1, 2)))
    array([[-inf,   0.]])
    """

    rule = "min_new_tokens"
    pool_mode = "steps"

    def __init__(self, min_new_tokens: int, stop_tokens: Sequence[int]) -> None:
        if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)) or min_new_tokens < 0:
            raise SamplingValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
        self.min_new_tokens = int(min_new_tokens)
        self.stop_tokens = _check_ids("stop_tokens", stop_tokens)

    def apply(self, step: int, scores: Any) -> Any:
        if step >= self.min_new_tokens or not self.stop_tokens:
            return scores
        return self.apply_inplace(step, ops(scores).copy(scores))

    def apply_inplace(self, step: int, scores: Any) -> Any:
        """:meth:`apply` written into ``scores`` (an array the caller owns)."""
        if step < self.min_new_tokens and self.stop_tokens:
            _check_vocab(self.rule, self.stop_tokens, scores.shape[1])
            scores[:, list(self.stop_tokens)] = NEG_INF
        return scores

    def apply_steps(self, steps: np.ndarray, scores: Any) -> Any:
        if not self.stop_tokens or not (np.asarray(steps) < self.min_new_tokens).any():
            return scores
        return self.apply_steps_inplace(steps, ops(scores).copy(scores))

    def apply_steps_inplace(self, steps: np.ndarray, scores: Any) -> Any:
        rows = np.flatnonzero(np.asarray(steps) < self.min_new_tokens)
        if rows.size == 0 or not self.stop_tokens:
            return scores
        _check_vocab(self.rule, self.stop_tokens, scores.shape[1])
        xp = ops(scores)
        scores[xp.asarray(rows[:, None]), xp.asarray(np.array(self.stop_tokens)[None, :])] = NEG_INF
        return scores


class ForceTokens(DeviceProcessor):
    """At the given steps only the given id is legal (``{step: token_id}``, all rows).

    The forced id keeps its own score; if an earlier processor banned it the row is empty and
    a :class:`~rwkv_music.sampling.base.RowConstraintError` says so.

    >>> ForceTokens({0: 1}).process(0, np.zeros((1, 3)))
    array([[-inf,   0., -inf]])
    """

    rule = "force_tokens"
    pool_mode = "steps"

    def __init__(self, schedule: Mapping[int, int]) -> None:
        for step in schedule:
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
                raise SamplingValueError(f"force_tokens steps must be integers >= 0, got {step!r}")
        _check_ids("force_tokens", list(schedule.values()))
        self.schedule = {int(s): int(t) for s, t in schedule.items()}

    def apply(self, step: int, scores: Any) -> Any:
        token = self.schedule.get(step)
        if token is None:
            return scores
        _check_vocab(self.rule, [token], scores.shape[1])
        out = ops(scores).full(scores.shape, NEG_INF, scores.dtype)
        out[:, token] = scores[:, token]
        return out

    def apply_steps(self, steps: np.ndarray, scores: Any) -> Any:
        if not any(int(t) in self.schedule for t in steps):
            return scores
        return self.apply_steps_inplace(steps, ops(scores).copy(scores))

    def apply_steps_inplace(self, steps: np.ndarray, scores: Any) -> Any:
        forced = np.array([self.schedule.get(int(t), -1) for t in steps], dtype=np.int64)
        rows = np.flatnonzero(forced >= 0)
        if rows.size == 0:
            return scores
        _check_vocab(self.rule, forced[rows].tolist(), scores.shape[1])
        xp = ops(scores)
        r, t = xp.asarray(rows), xp.asarray(forced[rows])
        keep = scores[r, t]  # (a copy, read before the rows are cleared)
        scores[r] = NEG_INF
        scores[r, t] = keep
        return scores


__all__ = [
    "DeviceProcessor",
    "EosBiasSchedule",
    "ForceTokens",
    "LogitBias",
    "MinNewTokens",
    "MinP",
    "Temperature",
    "TokenBan",
    "TopK",
    "TopP",
    "kth_largest",
]
