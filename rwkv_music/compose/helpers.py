"""Compose glue around the decode loop: the shipped models, fitting a state, the generate call.

Format rules (prompts, constraints, validity) live in :mod:`rwkv_music.formats`; the row recipe
in :mod:`rwkv_music.compose.recipe`.  Nothing here imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from rwkv_music.errors import RwkvMusicError, StateError
from rwkv_music.formats.base import FORMAT_NAMES

log = logging.getLogger(__name__)


def default_model(mode: str) -> Path:
    """Path of the shipped model for ``mode``; a clear error when none is installed."""
    if mode not in FORMAT_NAMES:
        raise RwkvMusicError(f"unknown mode {mode!r}; use 'abc' or 'midi'")
    try:
        from rwkv_music.assets import default_model_path
    except ImportError:
        raise RwkvMusicError(f"no default {mode.upper()} model is installed; pass --model PATH (model=...)") from None
    return Path(default_model_path(mode))


def fit_state(backend: Any, state: Any, n: int) -> Any:
    """``state`` checked against the model and broadcast to ``n`` rows, in the backend's array kind."""
    from rwkv_music.model.state import State

    if not isinstance(state, State):
        state = State.load(state)
    state.check(backend.config)
    if state.batch_size == 1 and n > 1:
        state = State.concat([state] * n)
    elif state.batch_size != n:
        raise StateError(f"state has {state.batch_size} rows, the call makes {n} pieces (use 1 or {n})")
    template = backend.new_state(1)
    if template.is_torch and not state.is_torch:
        shift = template.tensors["att_x"]
        state = state.torch(shift.device, shift.dtype)
    elif not template.is_torch and state.is_torch:
        state = state.numpy()
    return state


def run_generate(
    backend: Any,
    prompts: list[list[int]],
    processors: Any,
    max_new_tokens: int,
    seeds: list[int],
    stop_tokens: Sequence[int],
    state: Any,
    callback: Callable[[int, int], None] | None,
) -> Any:
    """Call :func:`rwkv_music.sampling.generate.generate`; ``callback(step, max_new_tokens)`` per step.

    A row that a constraint leaves without a legal token ends (reason ``"constraint"``) instead
    of failing the whole batch.
    """
    from rwkv_music.sampling.generate import generate

    progress = None
    if callback is not None:

        def progress(step: int, _finished: int) -> None:
            callback(step + 1, max_new_tokens)

    return generate(
        backend,
        prompts,
        processors=processors,
        max_new_tokens=max_new_tokens,
        seeds=seeds,
        stop_tokens=list(stop_tokens),
        state=state,
        callback=progress,
        on_constraint="finish",
        return_state=False,
    )


def timing_of(result: Any) -> dict[str, Any]:
    """The generate result's timing as a JSON-friendly dict (batch totals)."""
    return {
        "prefill_seconds": round(float(result.prefill_seconds), 4),
        "decode_seconds": round(float(result.decode_seconds), 4),
        "prompt_tokens_total": int(result.n_prompt_tokens),
        "sampled_tokens_total": int(result.n_sampled_tokens),
    }
