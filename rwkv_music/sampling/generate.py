"""A fixed batch: every prompt prefilled, then one token per row per step until all rows end.

:func:`generate` is :func:`~rwkv_music.sampling.decode.decode` with all rows admitted at once and
no refills, one processor list for the whole batch (``reset`` with every prompt, called on the
``[B, V]`` scores of the batch, finished rows inactive).  The stop, max-token and constraint rules,
prefill grouping, state compaction and per-row counter-based random draws are the loop's (see
:mod:`rwkv_music.sampling.decode`); this module only shapes the arguments and the batch result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rwkv_music.sampling.base import LogitsProcessorList, SamplingValueError
from rwkv_music.sampling.decode import (  # decode_kwargs, logits_to_numpy, prefill_prompts: re-exported (were here)
    FINISH_REASONS,
    WorkItem,
    check_int,
    check_on_constraint,
    decode,
    decode_kwargs,
    logits_to_numpy,
    prefill_prompts,
)
from rwkv_music.sampling.sampler import make_generators


@dataclass
class GenerationResult:
    """What :func:`generate` returns.

    ``state`` holds, per row, the model state after its prompt and every token in ``tokens``
    (the stop token is not fed), ready to continue; ``None`` if ``return_state=False``.
    """

    tokens: list[list[int]]  # generated ids per row, stop token excluded
    finish_reasons: list[str]  # "stop" | "max_tokens" | "constraint"
    stop_tokens: list[int | None]  # the stop id that ended each row (None otherwise)
    state: Any  # State or None
    n_prompt_tokens: int
    n_sampled_tokens: int  # every sampled id, stop tokens included
    steps: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.n_prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("inf")

    @property
    def decode_tokens_per_second(self) -> float:
        return self.n_sampled_tokens / self.decode_seconds if self.decode_seconds > 0 else float("inf")


def _check_args(
    prompts: Sequence[Sequence[int]], seeds: Sequence[int], max_new_tokens: int, prefill_chunk: int, on_constraint: str
) -> None:
    if not prompts:
        raise SamplingValueError("prompts must hold at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise SamplingValueError(f"prompts[{i}] is empty; a prompt needs at least one token (<pad> 0 for MIDI)")
    if len(seeds) != len(prompts):
        raise SamplingValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
    check_int("max_new_tokens", max_new_tokens, 0)
    check_int("prefill_chunk", prefill_chunk, 1)
    check_on_constraint(on_constraint)
    make_generators(seeds)  # names a bad seed by its row


def _row_states(state: Any, n: int) -> list[Any]:
    """The caller's initial state as one one-row state per prompt (``None`` each when absent)."""
    if state is None:
        return [None] * n
    if state.batch_size not in (1, n):
        raise SamplingValueError(f"state has {state.batch_size} rows; expected 1 or {n} (one per prompt)")
    if state.batch_size == 1:
        return [state] * n  # the loop copies it per row
    return [state.select([r]) for r in range(n)]


def generate(
    backend: Any,
    prompts: Sequence[Sequence[int]],
    *,
    processors: LogitsProcessorList | Sequence[Any] | None = None,
    max_new_tokens: int,
    seeds: Sequence[int],
    stop_tokens: Sequence[int] = (),
    state: Any = None,
    callback: Callable[[int, int], None] | None = None,
    prefill_chunk: int = 256,
    pad_token: int = 0,
    on_constraint: str = "raise",
    return_state: bool = True,
) -> GenerationResult:
    """Sample up to ``max_new_tokens`` tokens after each prompt, all rows as one batch.

    Args:
        backend: an object with the backend protocol (``forward``, ``new_state``).
        prompts: one list of token ids per row (lengths may differ; none may be empty).
        processors: applied to the logits each step (see :mod:`rwkv_music.sampling.processors`
            for the usual order); ``reset`` gets the prompts, ``update`` the chosen ids.
        max_new_tokens: most tokens sampled per row (stop token included).
        seeds: one seed per row (integers >= 0; the row's n-th draw uses the counter-based uniform of
            ``(seed, n)``, see :func:`~rwkv_music.sampling.sampler.counter_uniforms`).
        stop_tokens: ids that end a row; not included in its output.
        state: initial model state with ``len(prompts)`` rows, or 1 row shared by all.
        callback: ``callback(step, n_finished)`` after every step.
        prefill_chunk: prompt tokens per forward call during prefill.
        pad_token: id passed to ``processors.update`` for rows that already finished.
        on_constraint: ``"raise"`` or ``"finish"`` (the row ends with reason ``"constraint"``).
        return_state: build the per-row final state (costs one extra forward for rows that end
            at ``max_new_tokens``).

    Returns:
        A :class:`GenerationResult`.

    >>> import numpy as np
    >>> class Echo:                     # a stateless toy model: always predicts id (last + 1) % 4
    ...     def forward(self, tokens, state=None):
    ...         last = np.asarray(tokens)[:, -1]
    ...         return np.where(np.arange(4) == (last[:, None] + 1) % 4, 0.0, -9.0), None
    >>> from rwkv_music.sampling.processors import Temperature
    >>> r = generate(Echo(), [[0], [2]], processors=[Temperature(0)], max_new_tokens=5, seeds=[1, 2],
    ...              stop_tokens=[3], return_state=False)
    >>> r.tokens, r.finish_reasons
    ([[1, 2], []], ['stop', 'stop'])
    """
    prompts = [[int(t) for t in p] for p in prompts]
    _check_args(prompts, seeds, max_new_tokens, prefill_chunk, on_constraint)
    procs = processors if isinstance(processors, LogitsProcessorList) else LogitsProcessorList(processors or [])
    n_rows = len(prompts)
    stops = tuple(int(t) for t in stop_tokens)
    items = [
        WorkItem(prompt=p, seed=int(s), max_new_tokens=max_new_tokens, stop_tokens=stops, state=st)
        for p, s, st in zip(prompts, seeds, _row_states(state, n_rows))
    ]
    t0 = time.perf_counter()
    results = decode(
        backend,
        items,
        n_rows,
        processors=procs,
        pad_token=pad_token,
        prefill_chunk=prefill_chunk,
        on_constraint=on_constraint,
        return_state=return_state,
        callback=callback,
    )
    by_row = sorted(results, key=lambda r: r.index)
    wall = time.perf_counter() - t0
    prefill_seconds = sum(r.prefill_seconds for r in by_row)
    final = None
    if return_state and all(r.state is not None for r in by_row):
        parts = [r.state for r in by_row]
        final = parts[0] if n_rows == 1 else type(parts[0]).concat(parts)
    return GenerationResult(
        tokens=[r.tokens for r in by_row],
        finish_reasons=[r.finish_reason for r in by_row],
        stop_tokens=[r.stop_token for r in by_row],
        state=final,
        n_prompt_tokens=sum(len(p) for p in prompts),
        n_sampled_tokens=sum(r.n_sampled_tokens for r in by_row),
        steps=max(r.steps for r in by_row),
        prefill_seconds=prefill_seconds,
        decode_seconds=max(wall - prefill_seconds, 0.0),
    )


__all__ = ["FINISH_REASONS", "GenerationResult", "decode_kwargs", "generate", "logits_to_numpy", "prefill_prompts"]
