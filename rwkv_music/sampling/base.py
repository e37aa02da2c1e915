"""The logits-processor protocol shared by every sampling knob and music constraint.

A processor is one concern (temperature, top-p, a penalty, the ABC grammar, the MIDI note
rules, ...).  Behaviours combine by putting processors in a :class:`LogitsProcessorList`,
never by passing flags (STYLE.md section 3).  The protocol, fixed for all implementers:

``reset(prompts)``
    Called once at the start of a generation with one prompt (a list of token ids) per batch
    row.  Stateful processors size their per-row state here and may read the prompts (for
    example to learn which notes are already sounding).
``__call__(step, scores) -> scores``
    ``step`` counts generated tokens (0 for the first new token).  ``scores`` is a float32
    ``[B, V]`` array, numpy **or** torch; the result is a **new** array of the same type,
    shape and dtype (the input is never modified).  ``-inf`` marks a token as illegal; every
    finite score is legal.  ``__call__`` must not change the processor's state: the loop may
    call it again for the same step.
``update(tokens)``
    The ids chosen at this step, one ``int`` per row; advance the per-row state.

Stateless processors leave ``reset``/``update`` as the no-ops inherited from
:class:`LogitsProcessor`.

**Inactive rows.**  A row whose *input* scores hold no finite value is inactive:
:func:`rwkv_music.sampling.generate.generate` passes rows that already finished that way.
Processors must return inactive rows still without a finite value and must never raise for
them; ``update`` receives the loop's pad token for them, which processors may use or ignore
but must not reject.

**Empty rows are errors.**  A processor that turns an active row into one with no finite score
raises :class:`RowConstraintError` (a :class:`~rwkv_music.errors.ConstraintError`) naming the
row, the step and the rule; :func:`check_rows` does this.  :class:`LogitsProcessorList` checks
again after every processor, so a processor that forgets still cannot hand the sampler an
empty row.

**numpy and torch; host and device.**  A processor declares where it runs with ``runs_on``:

* ``"host"`` (the default): it implements :meth:`~LogitsProcessor.process` on numpy arrays; the
  inherited ``__call__`` converts a torch tensor to numpy and back (torch is imported only when a
  tensor is given, so the onnx/ncnn backends never import it), finds the active rows and checks
  the result.  The music constraints are host processors.  A host processor that sets
  ``mask_only = True`` (its result depends only on which scores are finite, and it only bans)
  gets a 0/-inf probe instead, so only masks cross between a GPU and the host.
* ``"device"``: it implements ``apply(step, scores)`` on numpy arrays *and* torch tensors (the
  generic knobs of :mod:`rwkv_music.sampling.processors`, written against
  :mod:`rwkv_music.sampling.arrays`), so torch logits stay on their device.

A processor may instead override ``__call__`` itself as long as it keeps the contract above.
:meth:`LogitsProcessorList.run` is the decode loop's fast path: no per-processor row checks (the
sampler's -1 for an empty row triggers :meth:`LogitsProcessorList.diagnose`, which names the rule).

>>> import numpy as np
>>> class BanOdd(LogitsProcessor):
...     rule = "ban odd ids"
...     def process(self, step, scores):
...         out = scores.copy()
...         out[:, 1::2] = -np.inf
...         return out
>>> procs = LogitsProcessorList([BanOdd()])
>>> procs.reset([[0]])
>>> procs(0, np.zeros((1, 4), dtype=np.float32))
array([[  0., -inf,   0., -inf]], dtype=float32)
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np

from rwkv_music.errors import ConstraintError, RwkvMusicError


class SamplingValueError(RwkvMusicError, ValueError):
    """A sampling argument out of range; the message names the argument and the value received."""


class RowConstraintError(ConstraintError):
    """A constraint left one batch row with no legal token.

    Attributes ``row``, ``step`` and ``rule`` say which row, at which generated-token index,
    and which processor or rule emptied it; the message names all three on one line.
    """

    def __init__(self, row: int, step: int, rule: str, detail: str = "") -> None:
        self.row = int(row)
        self.step = int(step)
        self.rule = str(rule)
        extra = f" ({detail})" if detail else ""
        super().__init__(f"step {self.step}, row {self.row}: rule {self.rule!r} left no legal token{extra}")


# -- numpy/torch bridge --------------------------------------------------------------------
def is_torch_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch (a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(scores: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """``scores`` as a numpy array plus a function that turns a result back into the input's type.

    Torch tensors come over as float32 (whatever their dtype and device) and go back to their
    own dtype and device.  The numpy view may share memory with the input; processors never
    write into it.
    """
    if is_torch_tensor(scores):
        device, dtype = scores.device, scores.dtype

        def back(arr: np.ndarray) -> Any:
            import torch

            return torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=dtype)

        return scores.detach().float().cpu().numpy(), back  # float32: numpy has no bfloat16
    arr = np.asarray(scores)
    in_dtype = arr.dtype

    def back_np(out: np.ndarray) -> np.ndarray:
        return out if out.dtype == in_dtype else out.astype(in_dtype)

    return arr, back_np


def active_rows(scores: np.ndarray) -> np.ndarray:
    """Boolean ``[B]``: rows with at least one finite score."""
    return np.isfinite(scores).any(axis=1)


def check_rows(scores: np.ndarray, active: np.ndarray, step: int, rule: str) -> None:
    """Raise :class:`RowConstraintError` for the first active row of ``scores`` with no finite value."""
    empty = active & ~np.isfinite(scores).any(axis=1)
    if empty.any():
        raise RowConstraintError(int(np.flatnonzero(empty)[0]), step, rule)


def as_token_list(tokens: Any) -> list[int]:
    """A step's chosen ids (list, numpy or torch) as a list of Python ints."""
    if is_torch_tensor(tokens):
        tokens = tokens.detach().cpu().numpy()
    return [int(t) for t in np.asarray(tokens).reshape(-1)]


class Candidates:
    """The finite scores of each row after a filter that keeps few ids (top-k, top-p with top-k), compacted.

    ``ids`` ``[B, w]`` int64 in ascending order per row, ``vals`` ``[B, w]`` their scores (float32),
    ``-inf`` where a row has fewer than ``w`` (its ``ids`` there are 0).  The dense form is ``-inf``
    everywhere else: :meth:`dense`.  Host numpy only; the draw (:func:`~rwkv_music.sampling.sampler.sample_batch`)
    takes either form and gives the same ids.
    """

    def __init__(self, ids: np.ndarray, vals: np.ndarray, vocab: int) -> None:
        self.ids, self.vals, self.vocab = ids, vals, int(vocab)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.vals.shape[0], self.vocab)

    def dense(self) -> np.ndarray:
        """The ``[B, vocab]`` scores: the candidates' values, ``-inf`` elsewhere."""
        out = np.full(self.shape, -np.inf, dtype=self.vals.dtype)
        rows, cols = np.nonzero(np.isfinite(self.vals))
        out[rows, self.ids[rows, cols]] = self.vals[rows, cols]
        return out


# -- the protocol --------------------------------------------------------------------------
class LogitsProcessor:
    """Base class of all processors; see the module docstring for the contract.

    Subclasses set ``rule`` (a short name used in error messages) and implement
    :meth:`process`; stateful ones also override :meth:`reset` and :meth:`update`.
    """

    rule: str = "processor"
    runs_on: str = "host"  # "host": process() on numpy; "device": apply() on numpy or torch

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        """Start of a generation: one prompt (token ids) per batch row.  No-op by default."""

    def update(self, tokens: Sequence[int]) -> None:
        """The ids chosen this step, one per row.  No-op by default."""

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        """Return a new ``[B, V]`` numpy array of processed scores (never edit ``scores``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement process() or __call__()")

    def __call__(self, step: int, scores: Any) -> Any:
        if self.runs_on == "device" and is_torch_tensor(scores):
            if scores.ndim != 2:
                raise ValueError(f"{type(self).__name__}: scores must be [batch, vocab], not {tuple(scores.shape)}")
            out = self.apply(step, scores)  # type: ignore[attr-defined]
            out = out.clone() if out is scores else out
            _check_any(scores, out, step, self.rule)
            return out
        arr, back = to_numpy(scores)
        if arr.ndim != 2:
            raise ValueError(f"{type(self).__name__}: scores must be [batch, vocab], got shape {arr.shape}")
        active = active_rows(arr)
        out = self.process(step, arr)
        check_rows(out, active, step, self.rule)
        return back(out)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _check_any(before: Any, after: Any, step: int, rule: str) -> None:
    """:func:`check_rows` for numpy or torch (one host sync for a tensor)."""
    if not is_torch_tensor(before):
        check_rows(np.asarray(after), active_rows(np.asarray(before)), step, rule)
        return
    import torch

    empty = torch.isfinite(before).any(dim=1) & ~torch.isfinite(after).any(dim=1)
    if bool(empty.any()):
        raise RowConstraintError(int(torch.nonzero(empty)[0, 0]), step, rule)


def _on_device(proc: Any) -> bool:
    return getattr(proc, "runs_on", "host") == "device" and hasattr(proc, "apply")


class LogitsProcessorList(list):
    """Processors applied in list order; ``reset``/``update`` go to each in the same order.

    Device processors (``runs_on = "device"``) take the scores as they come -- a torch tensor
    stays on its device; host processors get numpy (a tensor crosses to the host only around
    them, once per run of consecutive host processors).  ``__call__`` checks after each
    processor that no active row was emptied (naming that processor's ``rule``).
    """

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        prompts = [list(p) for p in prompts]
        for proc in self:
            proc.reset(prompts)

    def update(self, tokens: Any, host: Sequence[int] | None = None) -> None:
        """The chosen ids (list, numpy or torch): device processors get them as given, host ones as ints
        (``host``: the same ids already on the host, which saves a copy)."""
        host = None if host is None else [int(t) for t in host]
        for proc in self:
            if getattr(type(proc), "update", None) is LogitsProcessor.update:  # stateless: nothing to tell it
                continue
            if _on_device(proc):
                proc.update(tokens)
            else:
                host = as_token_list(tokens) if host is None else host
                proc.update(host)

    def run(self, step: int, scores: Any, candidates: bool = False) -> Any:
        """Every processor in order, no row checks (the loop's fast path); the result may be ``scores`` itself.

        ``candidates=True`` (the decode loop, which only draws from the result): on host numpy scores the
        result may be a :class:`Candidates` instead of a dense array, when a filter that keeps few ids per
        row (top-k, top-p with top-k) is followed only by ``candidate_safe`` processors; the scores are then
        worked on in one buffer of the list's own, in place (processors with ``apply_inplace``).
        """
        # (every vocabulary: at ABC's 128 ids the host path was 6 % faster in compose_abc at B=32, even at B=1)
        if candidates and isinstance(scores, np.ndarray) and scores.ndim == 2:
            return self._run_host(step, scores)
        torch_in = is_torch_tensor(scores)
        back = None
        cur = scores
        for proc in self:
            if _on_device(proc):
                if back is not None:  # return from the host
                    cur, back = back(cur), None
                cur = proc.apply(step, cur)
            elif getattr(proc, "mask_only", False) and back is None and is_torch_tensor(cur):
                cur = _via_mask(proc, step, cur)
            else:
                done = _apply_on_device(proc, step, cur) if back is None else None
                if done is not None:  # (a host processor that can run where the scores are)
                    cur = done
                    continue
                if torch_in and back is None:
                    cur, back = to_numpy(cur)
                cur = _host_apply(proc, step, cur)
        return back(cur) if back is not None else cur

    def _run_host(self, step: int, scores: np.ndarray) -> Any:
        """:meth:`run` on host numpy scores: one working copy, in-place steps, a compact tail where possible.

        Each step gives what :meth:`run` gives: ``apply_inplace`` is the processor's ``apply`` / ``process``
        written into its input (``apply_into(step, scores, out)``, where a processor has it, the same written
        into ``out``: the first in-place step then makes the working copy in its own pass), and a filter's
        ``candidates`` are exactly the finite entries of its dense result, which is all the draw reads.
        """
        procs = list(self)
        tail_from = len(procs)  # processors from here on are candidate_safe
        while tail_from > 0 and getattr(procs[tail_from - 1], "candidate_safe", False):
            tail_from -= 1
        work = self.__dict__.get("_work")
        if work is None or work.shape != scores.shape or work.dtype != scores.dtype:
            work = np.empty_like(scores)  # reused every step: a fresh [B, V] allocation costs more than the copy
            self.__dict__["_work"] = work
        cur: Any = scores
        owned = False  # cur may be written: the working buffer, or a new array a processor returned
        for i, proc in enumerate(procs):
            if i + 1 >= tail_from and hasattr(proc, "candidates"):
                scratch = cur if owned else (work if work.dtype == cur.dtype and work.shape == cur.shape else None)
                drawn_tail = getattr(proc, "drawn_tail", None)  # the filter, the rest and the draw in one call
                found = drawn_tail(step, cur, procs[i + 1 :], scratch=scratch) if drawn_tail is not None else None
                if found is not None:
                    return found
                found = proc.candidates(step, cur, scratch=scratch)
                if found is not None:
                    for later in procs[i + 1 :] if found.vals.shape[1] else ():  # (no entries: nothing to filter)
                        found.vals = _host_apply(later, step, found.vals)
                    return found
            inplace = getattr(proc, "apply_inplace", None)
            if inplace is not None:
                if not owned:
                    same = cur.shape == work.shape and cur.dtype == work.dtype
                    into = getattr(proc, "apply_into", None)
                    if same and into is not None:  # the processor's own pass makes the working copy
                        cur, owned = into(step, cur, work), True
                        continue
                    if same:
                        np.copyto(work, cur)
                        cur = work
                    else:
                        cur = np.array(cur)
                    owned = True
                cur = inplace(step, cur)
                continue
            nxt = _host_apply(proc, step, cur)
            if nxt is not cur:
                owned = not np.may_share_memory(nxt, scores)
                cur = nxt
        return cur.copy() if np.may_share_memory(cur, work) else cur  # the buffer is reused: never hand it out

    def diagnose(self, step: int, scores: Any) -> dict[int, str]:
        """Which rows each processor emptied: ``{row: rule}`` (rows already empty in ``scores``: "model logits").

        Processors do not change state when called, so re-running them here is allowed.
        """
        arr, _ = to_numpy(scores)
        active = active_rows(arr)
        found: dict[int, str] = {int(r): "model logits" for r in np.flatnonzero(~active)}
        cur = arr
        for proc in self:
            try:
                out = _host_apply(proc, step, cur)
            except RowConstraintError as err:  # a processor with its own checks
                found.setdefault(err.row, err.rule)
                return found
            cur = np.asarray(to_numpy(out)[0])
            empty = active & ~np.isfinite(cur).any(axis=1)
            for r in np.flatnonzero(empty):
                found.setdefault(int(r), getattr(proc, "rule", type(proc).__name__))
            active = active & ~empty
        return found

    def __call__(self, step: int, scores: Any) -> Any:
        cur = scores
        for proc in self:
            nxt = proc(step, cur) if _on_device(proc) or not is_torch_tensor(cur) else _via_host(proc, step, cur)
            _check_any(cur, nxt, step, getattr(proc, "rule", type(proc).__name__))
            cur = nxt
        return cur.clone() if cur is scores and is_torch_tensor(cur) else (
            cur.copy() if cur is scores else cur)


def _host_apply(proc: Any, step: int, scores: Any) -> Any:
    """One processor without its row checks where it has them separately (``process``)."""
    if _on_device(proc):
        return proc.apply(step, scores)
    if isinstance(proc, LogitsProcessor) and type(proc).__call__ is LogitsProcessor.__call__:
        return proc.process(step, scores)
    return proc(step, scores)


def _apply_on_device(proc: Any, step: int, scores: Any) -> Any:
    """A host processor's ``apply_device(step, scores)`` for torch scores, which stay where they are (the music
    constraints build their masks there from a few flags or bools a row), or None: it has none, the scores
    are numpy, or it declined.  (The decode loop hands this path a GPU's logits; a CPU's reach it as numpy
    views.)"""
    apply_device = getattr(proc, "apply_device", None)
    if apply_device is None or not is_torch_tensor(scores):
        return None
    return apply_device(step, scores)


def _via_mask(proc: Any, step: int, scores: Any) -> Any:
    """A ``mask_only`` host processor on a tensor: only which entries are finite crosses, both ways.

    ``mask_only = True`` declares that the processor's result depends only on which scores are
    finite and that it only turns scores into ``-inf``; it then runs on a 0 / -inf probe.
    """
    import torch

    finite = torch.isfinite(scores).cpu().numpy()
    probe = np.where(finite, np.float32(0.0), np.float32(-np.inf))
    keep = np.isfinite(np.asarray(_host_apply(proc, step, probe)))
    keep_t = torch.from_numpy(keep).to(scores.device, non_blocking=True)
    return torch.where(keep_t, scores, float("-inf"))


def _via_host(proc: Any, step: int, scores: Any) -> Any:
    arr, back = to_numpy(scores)
    return back(np.asarray(proc(step, arr)))


__all__ = [
    "Candidates",
    "LogitsProcessor",
    "LogitsProcessorList",
    "RowConstraintError",
    "SamplingValueError",
    "active_rows",
    "as_token_list",
    "check_rows",
    "is_torch_tensor",
    "to_numpy",
]
