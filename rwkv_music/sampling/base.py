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

**numpy and torch.**  Subclasses of :class:`LogitsProcessor` implement :meth:`~LogitsProcessor.process`
on numpy arrays; the inherited ``__call__`` converts a torch tensor to numpy and back (torch is
imported only when a tensor is given, so the onnx/ncnn backends never import it), finds the
active rows and checks the result.  A processor may instead override ``__call__`` itself as
long as it keeps the contract above.

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


# -- the protocol --------------------------------------------------------------------------
class LogitsProcessor:
    """Base class of all processors; see the module docstring for the contract.

    Subclasses set ``rule`` (a short name used in error messages) and implement
    :meth:`process`; stateful ones also override :meth:`reset` and :meth:`update`.
    """

    rule: str = "processor"

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        """Start of a generation: one prompt (token ids) per batch row.  No-op by default."""

    def update(self, tokens: Sequence[int]) -> None:
        """The ids chosen this step, one per row.  No-op by default."""

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        """Return a new ``[B, V]`` numpy array of processed scores (never edit ``scores``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement process() or __call__()")

    def __call__(self, step: int, scores: Any) -> Any:
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


class LogitsProcessorList(list):
    """Processors applied in list order; ``reset``/``update`` go to each in the same order.

    A torch input is converted to numpy once, run through every processor and converted back,
    so a long list costs one host round trip.  After each processor the list checks that no
    active row was emptied (naming that processor's ``rule``).
    """

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        prompts = [list(p) for p in prompts]
        for proc in self:
            proc.reset(prompts)

    def update(self, tokens: Sequence[int]) -> None:
        tokens = as_token_list(tokens)
        for proc in self:
            proc.update(tokens)

    def __call__(self, step: int, scores: Any) -> Any:
        arr, back = to_numpy(scores)
        active = active_rows(arr)
        for proc in self:
            arr = proc(step, arr)
            check_rows(arr, active, step, getattr(proc, "rule", type(proc).__name__))
        return back(arr)


__all__ = [
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
