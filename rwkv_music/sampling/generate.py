"""The generation loop: prefill every prompt, then decode the batch one token per step.

Batching policy:

* **Prefill**: rows with prompts of equal length run together (a ``[g, T]`` batch in chunks of
  ``prefill_chunk`` tokens); the group states are joined with ``State.concat`` and put back
  in row order.
* **Decode**: the model batch is compacted with ``state.select(rows)`` whenever rows finish,
  so finished rows cost no model time.  The processors keep seeing the full batch: a finished
  row's scores are all ``-inf`` (an *inactive* row, see :mod:`rwkv_music.sampling.base`) and
  ``update`` gets ``pad_token`` for it.
* **Sampling**: one ``numpy.random.Generator(PCG64(seed))`` per row
  (:mod:`rwkv_music.sampling.sampler`), so a row's tokens depend only on its prompt, its seed
  and its logits, not on the rest of the batch.

A row finishes with reason ``"stop"`` when it samples one of ``stop_tokens`` (the stop token
is not part of its output, as in pip and ChatRWKV), ``"max_tokens"`` after ``max_new_tokens``
tokens, or ``"constraint"`` when a processor left it no legal token and
``on_constraint="finish"`` (with the default ``"raise"`` the
:class:`~rwkv_music.sampling.base.RowConstraintError` propagates).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from rwkv_music.sampling.base import LogitsProcessorList, RowConstraintError, SamplingValueError, is_torch_tensor
from rwkv_music.sampling.sampler import make_generators, sample

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "max_tokens", "constraint")


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


def logits_to_numpy(logits: Any) -> np.ndarray:
    if is_torch_tensor(logits):
        return logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


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
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise SamplingValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
        raise SamplingValueError(f"prefill_chunk must be an integer >= 1, got {prefill_chunk!r}")
    if on_constraint not in ("raise", "finish"):
        raise SamplingValueError(f"on_constraint must be 'raise' or 'finish', got {on_constraint!r}")


def decode_kwargs(backend: Any) -> dict[str, Any]:
    """Extra ``forward`` keywords for decode steps: ``inplace=True`` where the backend offers it.

    The torch backend can write the next state into the state it was given instead of allocating
    a new one per token (much of a step's cost at large batch on a CPU).  The decode loops only
    pass it states they made themselves (prefill results, row selections), never a caller's.
    """
    try:
        params = inspect.signature(backend.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"inplace": True} if "inplace" in params else {}


def prefill_prompts(backend: Any, prompts: list[list[int]], state: Any, chunk: int) -> tuple[np.ndarray, Any]:
    """Logits ``[B, V]`` after each prompt and the batch state, rows in prompt order."""
    n = len(prompts)
    groups: dict[int, list[int]] = {}
    for row, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(row)
    order: list[int] = []
    logits_parts, states = [], []
    for length, rows in groups.items():
        st = None
        if state is not None:
            if state.batch_size not in (1, n):
                raise SamplingValueError(f"state has {state.batch_size} rows; expected 1 or {n} (one per prompt)")
            st = state.select([0] * len(rows) if state.batch_size == 1 else rows)
        toks = np.array([prompts[r] for r in rows], dtype=np.int64)
        for start in range(0, length, chunk):
            out, st = backend.forward(toks[:, start : start + chunk], st)
        logits_parts.append(logits_to_numpy(out))
        states.append(st)
        order.extend(rows)
    logits = np.concatenate(logits_parts, axis=0)
    joined = states[0] if len(states) == 1 else type(states[0]).concat(states)
    if order != list(range(n)):
        back = np.argsort(order)
        logits = logits[back]
        joined = joined.select([int(i) for i in back])
    return logits, joined


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
        seeds: one seed per row (``PCG64``).
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
    stops = {int(t) for t in stop_tokens}
    rngs = make_generators(seeds)
    procs.reset(prompts)

    t0 = time.perf_counter()
    logits, model_state = prefill_prompts(backend, prompts, state, prefill_chunk)
    fwd = decode_kwargs(backend)  # model_state is ours from here on (prefill made it)
    prefill_seconds = time.perf_counter() - t0

    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    reasons: list[str | None] = [None] * n_rows
    hit: list[int | None] = [None] * n_rows
    final_states: dict[int, Any] = {}
    live = list(range(n_rows))  # rows in the model batch, in batch order
    n_sampled = steps = 0

    def finish(row: int, reason: str, stop: int | None = None) -> None:
        reasons[row], hit[row] = reason, stop
        if return_state and model_state is not None:
            final_states[row] = model_state.select([live.index(row)])

    t1 = time.perf_counter()
    if max_new_tokens == 0 and return_state and model_state is not None:
        final_states = {r: model_state.select([r]) for r in range(n_rows)}
    for step in range(max_new_tokens):
        steps = step + 1
        scores = np.full((n_rows, logits.shape[1]), -np.inf, dtype=np.float32)
        running = [r for r in live if reasons[r] is None]
        scores[running] = logits[[live.index(r) for r in running]]
        processed = _run_processors(procs, step, scores, reasons, on_constraint, finish)
        chosen = sample(processed, rngs)
        for r in live:
            if reasons[r] is None and chosen[r] < 0:  # the model gave no finite logit
                err = RowConstraintError(r, step, "model logits", "no finite logit")
                if on_constraint == "raise":
                    raise err
                log.warning("%s", err)
                finish(r, "constraint")
        procs.update([int(chosen[r]) if reasons[r] is None and r in live else pad_token for r in range(n_rows)])
        cont = []
        for r in live:
            if reasons[r] is not None:
                continue
            t = int(chosen[r])
            n_sampled += 1
            if t in stops:
                finish(r, "stop", t)
            else:
                tokens[r].append(t)
                cont.append(r)
        last_step = step == max_new_tokens - 1
        if callback is not None:
            callback(step, sum(x is not None for x in reasons) + (len(cont) if last_step else 0))
        if not cont:
            break
        if last_step and not return_state:
            for r in cont:
                reasons[r] = "max_tokens"
            break
        sub = model_state
        if len(cont) != len(live) and model_state is not None:
            sub = model_state.select([live.index(r) for r in cont])
        out, model_state = backend.forward(np.array([[tokens[r][-1]] for r in cont], dtype=np.int64), sub, **fwd)
        logits, live = logits_to_numpy(out), cont
        if last_step:
            for r in cont:
                finish(r, "max_tokens")
    decode_seconds = time.perf_counter() - t1

    final = None
    if return_state and final_states and len(final_states) == n_rows:
        parts = [final_states[r] for r in range(n_rows)]
        final = parts[0] if n_rows == 1 else type(parts[0]).concat(parts)
    for r in range(n_rows):  # max_new_tokens == 0
        if reasons[r] is None:
            reasons[r] = "max_tokens"
    return GenerationResult(
        tokens=tokens,
        finish_reasons=[str(x) for x in reasons],
        stop_tokens=hit,
        state=final,
        n_prompt_tokens=sum(len(p) for p in prompts),
        n_sampled_tokens=n_sampled,
        steps=steps,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
    )


def _run_processors(
    procs: LogitsProcessorList,
    step: int,
    scores: np.ndarray,
    reasons: list[str | None],
    on_constraint: str,
    finish: Callable[[int, str], None],
) -> np.ndarray:
    """Apply the processors; with ``on_constraint="finish"`` drop emptied rows and retry."""
    while True:
        try:
            return procs(step, scores)
        except RowConstraintError as err:
            if on_constraint == "raise" or reasons[err.row] is not None:
                raise
            log.warning("%s; the row ends with reason 'constraint'", err)
            finish(err.row, "constraint")
            scores = scores.copy()
            scores[err.row] = -np.inf


__all__ = ["FINISH_REASONS", "GenerationResult", "generate"]
