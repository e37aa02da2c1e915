"""Presence / frequency penalties with decay, the ``rwkv`` pip package's semantics (docs/formats.md D2).

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

import bisect
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rwkv_music.sampling import native
from rwkv_music.sampling.arrays import on_accelerator, ops
from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError, is_torch_tensor


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
    use_kernel = True  # the numpy state's steps may run in C (rwkv_music.sampling.native); False: numpy only

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
        self._occ: Any = np.zeros((0, 0))  # [B, cap] decayed weighted counts (numpy, or torch on the logits' device)
        self._seen: Any = np.zeros((0, 0), dtype=bool)  # [B, cap] ids that entered the map
        self._wvec: Any = None  # dense weights [cap], same kind as _occ
        self._cols = None
        self._lists: np.ndarray | None = None  # [B, L] each row's seen ids, the kernels' (None: rebuild from _seen)
        self._counts = np.zeros(0, dtype=np.int64)  # [B] how many of a row's list are filled
        self._pool_row = -1  # its row in the arrays of the last update_pool it took part in (-1: none)
        self._lists_of: Any = None  # the pool's stacked _occ its _lists row was last updated with (_stack_lists)

    runs_on = "device"
    pool_mode = "state"  # continuous batching: the pieces' instances run as one batch (apply_pool)

    def pool_key(self) -> tuple:
        return ("OccurrencePenalty", self.presence, self.frequency, self.decay,
                tuple(sorted(self.weights.items())), self.default_weight)

    @property
    def enabled(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0

    def occurrences(self, row: int) -> dict[int, float]:
        """The occurrence map of one row, as pip's ``occurrence`` dict."""
        occ, seen = ops(self._occ).to_host(self._occ), ops(self._seen).to_host(self._seen)
        ids = np.flatnonzero(seen[row])
        return {int(t): float(occ[row, t]) for t in ids}

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        self._occ = np.zeros((len(prompts), 0))
        self._seen = np.zeros((len(prompts), 0), dtype=bool)
        self._wvec = None
        self._cols: np.ndarray | None = None  # ids some row has seen, ascending (numpy state; None: not known)
        self._lists = None

    def _dense_weights(self, cap: int) -> np.ndarray:
        w = np.full(cap, self.default_weight)
        for t, v in self.weights.items():
            if t < cap:
                w[t] = v
        return w

    def _grow(self, cap: int, like: Any = None) -> None:
        """Cover ids below ``cap``; with a torch ``like``, move the state to its device for good."""
        if cap > self._occ.shape[1]:
            if is_torch_tensor(self._occ):
                torch = ops(self._occ).torch
                pad = (0, cap - self._occ.shape[1])
                self._occ = torch.nn.functional.pad(self._occ, pad)
                self._seen = torch.nn.functional.pad(self._seen, pad)
            else:  # (zeros and a copy: np.pad is several times slower)
                occ = np.zeros((self._occ.shape[0], cap), dtype=self._occ.dtype)
                seen = np.zeros((self._seen.shape[0], cap), dtype=self._seen.dtype)
                occ[:, : self._occ.shape[1]] = self._occ
                seen[:, : self._seen.shape[1]] = self._seen
                self._occ, self._seen = occ, seen
            self._wvec = None
        if is_torch_tensor(like) and not is_torch_tensor(self._occ):
            xp = ops(like)
            self._occ = xp.asarray(self._occ, "float64")
            self._seen = xp.asarray(self._seen, "bool")
            self._wvec = None
        if self._wvec is None or self._wvec.shape[0] != self._occ.shape[1]:
            w = self._dense_weights(self._occ.shape[1])
            self._wvec = ops(self._occ).asarray(w, "float64") if is_torch_tensor(self._occ) else w

    def update(self, tokens: Any) -> None:
        n_rows = self._occ.shape[0]
        on_torch = is_torch_tensor(self._occ)
        if on_torch:
            xp = ops(self._occ)
            toks = xp.asarray(tokens, "int64").reshape(-1)
        else:
            toks = np.asarray(ops(tokens).to_host(tokens) if is_torch_tensor(tokens) else tokens,
                              dtype=np.int64).reshape(-1)
        if toks.shape[0] != n_rows:
            raise SamplingValueError(f"{self.rule}: update got {toks.shape[0]} tokens for a batch of {n_rows}")
        if n_rows == 0:
            return
        if on_torch:
            if self._wvec is None:
                self._grow(self._occ.shape[1])
            rows = ops(self._occ).arange(n_rows)
            self._occ *= self.decay
            self._occ[rows, toks] += self._wvec[toks]
            self._seen[rows, toks] = True
            return
        if int(toks.max()) >= self._occ.shape[1] or self._wvec is None:
            self._grow(int(toks.max()) + 1)  # the vocab size is not known before the first call
        if self._update_rows(toks):
            self._cols = None  # (the union of the rows' ids, which only the numpy path uses: found again there)
            return
        self._lists = None  # (the rows' lists: rebuilt if the kernels run again)
        cols = self._seen_columns(self._occ.shape[1])
        if n_rows == 1:
            self._update_one(int(toks[0]), cols)
            return
        rows = np.arange(n_rows)
        before = self._seen[rows, toks]
        if self.decay != 1.0:
            # only seen columns hold non-zero counts (0 * decay is 0): the same values, fewer of them; a
            # gather and scatter costs ~20 times a dense multiply per element (measured, [32, 20096] float64)
            if cols.size * 20 < self._occ.shape[1]:
                self._occ[:, cols] = self._occ.take(cols, axis=1) * self.decay
            else:
                self._occ *= self.decay
        self._occ[rows, toks] += self._wvec[toks]
        self._seen[rows, toks] = True
        if not before.all():  # first occurrences: their ids join the seen columns
            fresh = np.unique(toks[~before])  # (few: at most one a row)
            # insert the ids no row had seen into the ascending columns (a full union1d sorts them all again)
            at = np.searchsorted(cols, fresh)
            known = np.zeros(fresh.size, dtype=bool)
            inside = at < cols.size
            known[inside] = cols[at[inside]] == fresh[inside]
            self._cols = np.insert(cols, at[~known], fresh[~known])

    def _update_one(self, t: int, cols: np.ndarray) -> None:
        """:meth:`update` of a one-row numpy state, the same float64 arithmetic in scalars (B = 1: 3x faster)."""
        occ = self._occ
        fresh = not self._seen[0, t]
        if self.decay != 1.0 and cols.size:
            if cols.size * 20 < occ.shape[1]:  # (as in update: only seen columns hold counts)
                occ[0, cols] = occ[0].take(cols) * self.decay
            else:
                occ *= self.decay
        occ[0, t] += self._wvec[t]
        self._seen[0, t] = True
        if fresh:  # t joins the ascending columns (a copy by hand: np.insert costs ~5 us, this ~1)
            at = bisect.bisect_left(cols, t)
            grown = np.empty(cols.size + 1, dtype=np.int64)
            grown[:at], grown[at], grown[at + 1 :] = cols[:at], t, cols[at:]
            self._cols = grown

    # -- the C kernels of the numpy state (rwkv_music/sampling/native/occurrence.c) ----------------------
    def _row_lists(self) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """The kernels' library and each row's seen ids (``[B, L]`` int64, row ``r``'s first ``counts[r]``,
        kept between steps; rebuilt from ``_seen`` when unknown), or None where the numpy path must run."""
        lib = native.occurrence_kernels() if self.use_kernel else None
        if lib is None or is_torch_tensor(self._occ) or not (self._occ.flags.c_contiguous and
                                                             self._seen.flags.c_contiguous):
            return None  # (a pool's one-row views of a stacked state, for one)
        if self._lists is None or self._lists.shape[0] != self._occ.shape[0]:
            seen = self._seen
            counts = np.count_nonzero(seen, axis=1).astype(np.int64)
            lists = np.zeros((seen.shape[0], max(64, 2 * int(counts.max(initial=0)))), dtype=np.int64)
            for r in range(seen.shape[0]):
                lists[r, : counts[r]] = np.flatnonzero(seen[r])
            self._lists, self._counts = lists, counts
        return lib, self._lists, self._counts

    def _update_rows(self, toks: np.ndarray) -> bool:
        """:meth:`update`'s decay, count and seen flag in C; False where the numpy path must run."""
        found = self._row_lists()
        if found is None or toks.dtype != np.int64 or not toks.flags.c_contiguous:
            return False
        lib, lists, counts = found
        self._lists = _update_in_c(lib, self._occ, self._seen, lists, counts, self.decay, toks, self._wvec)
        return True

    def apply(self, step: int, scores: Any) -> Any:
        if not self.enabled:
            return scores
        if self._occ.shape[0] != scores.shape[0]:
            n_rows = self._occ.shape[0]
            raise SamplingValueError(f"{self.rule}: scores have {scores.shape[0]} rows but reset() was given {n_rows}")
        if is_torch_tensor(scores):
            self._grow(scores.shape[1], like=scores)
        elif is_torch_tensor(self._occ):  # a device state on host scores: the loop's dead-end diagnosis on a GPU
            return self._penalize(scores, self._occ.detach().cpu().numpy(), self._seen.detach().cpu().numpy())
        return self._penalize(scores, self._occ, self._seen)

    def apply_inplace(self, step: int, scores: np.ndarray) -> np.ndarray:
        """:meth:`apply` written into ``scores`` (host numpy the caller owns): only the seen columns change."""
        if not self.enabled or is_torch_tensor(self._occ):
            out = self.apply(step, scores)
            if out is not scores:
                scores[...] = out
            return scores
        if self._occ.shape[0] != scores.shape[0]:
            return self.apply(step, scores)  # (names the mismatch)
        if self._occ.shape[1] < scores.shape[1]:
            # the whole vocabulary at once: update() would otherwise copy the state at every new highest id
            self._grow(scores.shape[1])
        found = self._row_lists() if scores.dtype == np.float32 and scores.flags.c_contiguous else None
        if found is not None:
            lib, lists, counts = found
            _penalize_in_c(lib, scores, self._occ, lists, counts, self.frequency, self.presence)
            return scores
        cols = self._seen_columns(scores.shape[1])
        if cols.size:
            # the same float64 arithmetic as _penalize, on the same columns (take: a faster gather than [:, cols])
            penalty = self.frequency * self._occ.take(cols, axis=1)
            if self.presence:
                penalty = penalty + self.presence * self._seen.take(cols, axis=1).astype(np.float64)
            scores[:, cols] = (scores.take(cols, axis=1) - penalty).astype(scores.dtype)
        return scores

    def _seen_columns(self, limit: int) -> np.ndarray:
        """Ids below ``limit`` some row has seen, ascending (numpy state), kept between steps."""
        cols = self._cols
        if cols is None:
            cols = self._cols = np.flatnonzero(self._seen.any(axis=0)) if self._seen.size else np.zeros(0, np.int64)
        if not cols.size or cols[-1] < limit:  # (the usual case: all of them, no search)
            return cols
        return cols[: np.searchsorted(cols, limit)]

    def _penalize(self, scores: Any, occ: Any, seen: Any) -> Any:
        cap = min(occ.shape[1], scores.shape[1])
        if cap == 0:
            return scores
        xp = ops(scores)
        # On a CPU only the columns some row has seen change (few of a 20,096-id vocabulary); on a
        # GPU the whole block is cheaper than finding them (a host sync).
        cols: Any = slice(0, cap)
        if not on_accelerator(scores):
            seen_any = xp.any(seen[:, :cap], axis=0)
            cols = np.flatnonzero(seen_any) if xp.name == "numpy" else xp.torch.nonzero(seen_any).reshape(-1)
            if cols.shape[0] == 0:
                return scores
        penalty = self.frequency * occ[:, cols]
        if self.presence:
            penalty = penalty + self.presence * xp.cast(seen[:, cols], "float64")
        out = xp.copy(scores)
        out[:, cols] = xp.cast(xp.cast(scores[:, cols], "float64") - penalty, "float32") \
            if xp.name == "torch" else (scores[:, cols] - penalty).astype(scores.dtype)
        return out

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = self.apply(step, scores)
        return out.copy() if out is scores else out

    # -- pools (continuous batching): the instances of several pieces as one batch ---------------
    @staticmethod
    def _stack(procs: Sequence["OccurrencePenalty"], vocab: int, like: Any) -> tuple[Any, Any, Any]:
        """The pool's state, ``[P, V]`` occ and seen (numpy, or torch on ``like``'s device) and the weights.

        The arrays the last :meth:`update_pool` (or restack) left are used as they are while every piece
        still holds its row of them and they are wide enough: a ``_grow`` per piece and step was most of a
        32-piece pool's penalty step, and on a GPU a ``torch.cat`` of every piece's rows twice a step.
        Else the pool is stacked again (:meth:`_restack`), the pieces' state moving into the new arrays so
        that the next step finds it there."""
        first = procs[0]
        both = _rows_of_one(procs, "_occ", "_seen")
        if both is not None:
            occ, seen = both
            w = first._wvec
            if occ.shape[1] >= vocab and w is not None and w.shape[0] == occ.shape[1] and _same_place(occ, like):
                return occ, seen, w
        return OccurrencePenalty._restack(procs, vocab, like)

    @staticmethod
    def _restack(procs: Sequence["OccurrencePenalty"], vocab: int, like: Any) -> tuple[Any, Any, Any]:
        """New pool arrays, zeroed, with each piece's rows copied in and its views re-pointed at its row.  A piece
        that has seen nothing yet (a new one: every piece of a render starts so) has nothing to copy: growing
        each to the vocabulary and concatenating them made 32 fresh arrays and a copy of 5 MB, 2.5-3.5 ms at
        every new batch of a render, against 0.3-0.4 ms.  On torch the pieces' rows go in with one ``cat``
        and ``index_copy_`` (a GPU pool is stacked again whenever a piece joins or leaves: not a copy per
        piece), and the weights are kept from a piece that has them for this width, else made once for the
        pool (the pool key holds them equal)."""
        width = max(vocab, *(p._occ.shape[1] for p in procs))
        for p in procs:
            if p._occ.shape[0] != 1:
                raise SamplingValueError(f"{p.rule}: a pooled piece has one row, this one {p._occ.shape[0]}")
        xp = ops(like)
        on_torch = xp.name == "torch"
        if on_torch:
            torch = xp.torch
            occ = torch.zeros((len(procs), width), dtype=torch.float64, device=like.device)
            seen = torch.zeros((len(procs), width), dtype=torch.bool, device=like.device)
        else:
            occ, seen = np.zeros((len(procs), width)), np.zeros((len(procs), width), dtype=bool)
        held = [i for i, p in enumerate(procs) if p._occ.shape[1]]  # (the others stay zero)
        if held and on_torch:
            for i in held:  # to the pool's width and device (a no-op for a piece of the last pool)
                procs[i]._grow(width, like=like)
            index = torch.tensor(held, device=like.device)
            occ.index_copy_(0, index, torch.cat([procs[i]._occ for i in held]))
            seen.index_copy_(0, index, torch.cat([procs[i]._seen for i in held]))
        elif held:
            for i in held:
                p, have = procs[i], procs[i]._occ.shape[1]
                occ[i, :have], seen[i, :have] = ops(p._occ).to_host(p._occ[0]), ops(p._seen).to_host(p._seen[0])
        w = next((p._wvec for p in procs if p._wvec is not None and p._wvec.shape[0] == width
                  and _same_place(p._wvec, like)), None)
        if w is None:
            w = xp.asarray(procs[0]._dense_weights(width), "float64")
        for i, p in enumerate(procs):
            p._occ, p._seen, p._pool_row, p._wvec = occ[i : i + 1], seen[i : i + 1], i, w
        return occ, seen, w

    @staticmethod
    def _pool_kernels(procs: Sequence["OccurrencePenalty"], occ: Any) -> Any:
        """The kernels' library where a pool's stacked numpy state may run in C, else None."""
        if not procs[0].use_kernel or is_torch_tensor(occ):
            return None
        return native.occurrence_kernels()

    @staticmethod
    def _stack_lists(procs: Sequence["OccurrencePenalty"], occ: np.ndarray,
                     seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pool's rows' seen-id lists and counts for the kernels (``[P, L]``, ``[P]``): the arrays the last
        :meth:`update_pool` left with this ``occ``, where every piece still holds its row of them; else stacked
        again from each piece's own list, or its seen flags where it has none."""
        if all(p._lists is not None and p._lists_of is occ for p in procs):
            both = _rows_of_one(procs, "_lists", "_counts")
            if both is not None:
                return both[0], both[1]
        rows = [p._lists[0, : int(p._counts[0])] if p._lists is not None and p._lists.shape[0] == 1
                else np.flatnonzero(seen[r]) for r, p in enumerate(procs)]
        counts = np.array([ids.shape[0] for ids in rows], dtype=np.int64)
        lists = np.zeros((len(procs), max(64, 2 * int(counts.max(initial=0)))), dtype=np.int64)
        for r, ids in enumerate(rows):
            lists[r, : ids.shape[0]] = ids
        return lists, counts

    @classmethod
    def apply_pool(cls, procs: Sequence["OccurrencePenalty"], scores: Any) -> Any:
        """Row ``r`` of ``scores`` penalised by ``procs[r]`` (equal settings, one row each)."""
        return cls._pool(procs, scores, inplace=False)

    @classmethod
    def apply_pool_inplace(cls, procs: Sequence["OccurrencePenalty"], scores: Any) -> Any:
        """:meth:`apply_pool` written into ``scores`` (an array the caller owns) where the C kernel runs
        (host float32, C order): only the seen ids change.  Returns the result, ``scores`` or a new array."""
        return cls._pool(procs, scores, inplace=True)

    @classmethod
    def _pool(cls, procs: Sequence["OccurrencePenalty"], scores: Any, inplace: bool) -> Any:
        if not procs[0].enabled:
            return scores
        occ, seen, _ = cls._stack(procs, scores.shape[1], scores)
        lib = cls._pool_kernels(procs, occ) if isinstance(scores, np.ndarray) and scores.dtype == np.float32 else None
        if lib is not None:  # each row's own seen ids in C, as apply_inplace does for one list
            lists, counts = cls._stack_lists(procs, occ, seen)
            out = scores if inplace and scores.flags.c_contiguous and scores.flags.writeable else np.array(
                scores, order="C")  # (a copy unless the caller gave its own array)
            _penalize_in_c(lib, out, occ, lists, counts, procs[0].frequency, procs[0].presence)
            return out
        return procs[0]._penalize(scores, occ, seen)

    @classmethod
    def update_pool(cls, procs: Sequence["OccurrencePenalty"], tokens: Sequence[int], vocab: int, like: Any) -> None:
        """``procs[r].update([tokens[r]])`` for every row, as one batched update."""
        if not procs:
            return
        occ, seen, w = cls._stack(procs, vocab, like)
        lib = cls._pool_kernels(procs, occ)
        if lib is not None:  # decay, count and seen flag in C over each row's own ids (update's kernel)
            lists, counts = cls._stack_lists(procs, occ, seen)
            toks = np.ascontiguousarray(tokens, dtype=np.int64)
            lists = _update_in_c(lib, occ, seen, lists, counts, procs[0].decay, toks, w)
            for i, p in enumerate(procs):
                p._occ, p._seen, p._cols = occ[i : i + 1], seen[i : i + 1], None
                p._lists, p._counts, p._lists_of = lists[i : i + 1], counts[i : i + 1], occ
                p._pool_row = i  # row i of the pool's arrays (_rows_of_one)
            return
        xp = ops(occ)
        toks = xp.asarray(np.asarray(tokens, dtype=np.int64))
        rows = xp.arange(len(procs))
        occ *= procs[0].decay
        occ[rows, toks] += w[toks]
        seen[rows, toks] = True
        for i, p in enumerate(procs):
            p._occ, p._seen, p._cols, p._lists = occ[i : i + 1], seen[i : i + 1], None, None
            p._pool_row = i  # row i of occ and seen (_rows_of_one)


def _penalize_in_c(lib: Any, scores: np.ndarray, occ: np.ndarray, lists: np.ndarray, counts: np.ndarray,
                   frequency: float, presence: float) -> None:
    """occurrence.c's penalty of each row's own seen ids, written into ``scores`` (float32, C order)."""
    at = native.address
    lib.rwkv_occ_penalize_rows(at(scores), scores.shape[0], scores.shape[1], at(occ), occ.shape[1], at(lists),
                               lists.shape[1], at(counts), frequency, presence)


def _update_in_c(lib: Any, occ: np.ndarray, seen: np.ndarray, lists: np.ndarray, counts: np.ndarray, decay: float,
                 toks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """occurrence.c's step of every row (decay, count, seen flag, list); returns the lists, grown (a new
    array, twice as wide) where a row's list was full."""
    at = native.address
    while lib.rwkv_occ_update_rows(at(occ), at(seen), toks.shape[0], occ.shape[1], at(lists), lists.shape[1],
                                   at(counts), decay, toks.ctypes.data, at(weights)):
        grown = np.zeros((lists.shape[0], 2 * lists.shape[1]), dtype=np.int64)  # (it changed nothing)
        grown[:, : lists.shape[1]] = lists
        lists = grown
    return lists


def _rows_of_one(procs: Sequence[OccurrencePenalty], *names: str) -> list[Any] | None:
    """For each of ``names``, the array whose rows 0, 1, ... are ``procs``' views of that name in order, as
    :meth:`update_pool` left them (it tags each piece with its row), or None: then the pool's state is stacked
    again (a [B, V] copy, 5 MB at B=32, V=20,096).  A path that replaces a piece's array breaks the ``base``
    link.  (Checked for every piece twice a step: one plain loop, one torch-or-numpy test for the pool.)"""
    views = [getattr(procs[0], name) for name in names]
    link = "_base" if is_torch_tensor(views[0]) else "base"  # (torch's view link, numpy's)
    bases = [getattr(view, link, None) for view in views]
    if any(not (isinstance(b, np.ndarray) or is_torch_tensor(b)) or b.shape[0] != len(procs) for b in bases):
        return None
    pairs = list(zip(names, bases))
    for i, p in enumerate(procs):
        if p._pool_row != i:
            return None
        for name, base in pairs:
            if getattr(getattr(p, name), link, None) is not base:
                return None
    return bases


def _same_place(state: Any, like: Any) -> bool:
    """The pool's state is where the scores are: both numpy, or torch tensors on one device."""
    if is_torch_tensor(like) != is_torch_tensor(state):
        return False
    return not is_torch_tensor(like) or state.device == like.device


__all__ = ["OccurrencePenalty", "pip_text_weights", "weights_from_ranges"]
