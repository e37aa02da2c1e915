"""Compose glue around the decode loop: the shipped models, continuations, fitting a state, the generate call.

Format rules (prompts, constraints, validity) live in :mod:`rwkv_music.formats`; the row recipe
in :mod:`rwkv_music.compose.recipe`.  Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
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


def is_continuation(item: Any) -> bool:
    """Whether a row continues existing music: a file, or text marked ``continues`` (ABC ``TuneText``)."""
    return isinstance(item, os.PathLike) or bool(getattr(item, "continues", False))


def continuation_recipe(recipe: Any) -> Any:
    """``recipe`` with its stop tokens banned before the first new token when it continues a piece.

    A finished piece is a likely place for the model to stop (the shipped ABC model ends ~40 % of
    finished tunes at once), which would return the input unchanged; a continuation must add
    music.  A ``min_new_tokens`` the caller gave is kept.
    """
    if not is_continuation(recipe.input) or recipe.config.min_new_tokens > 0:
        return recipe
    if any(name == "min_new_tokens" for name, _ in recipe.sampling.overrides):
        return recipe  # an explicit 0: the caller allows an empty continuation
    return dataclasses.replace(recipe, config=recipe.config.replace(min_new_tokens=1))


def check_continued(inputs: Sequence[Any], pieces: list[Any]) -> list[Any]:
    """``pieces``, after checking that continued rows added music.

    When every continued row came back without a new token (the constraint left nothing but the
    end, say), the call fails with one line naming the input; a row that is empty among others is
    a warning on the log.
    """
    empty = [(x, p) for x, p in zip(inputs, pieces) if is_continuation(x) and not p.meta.get("new_tokens")]
    if not empty:
        return pieces
    for x, piece in empty:
        label = str(x) if isinstance(x, os.PathLike) else "the given tune"
        if piece.meta.get("finish_reason") == "constraint":
            budget = piece.meta.get("params", {}).get("max_tokens")
            why = (f"the model added nothing to {label}: the constraint left no legal new token within "
                   f"max_tokens={budget}; raise --max-tokens, or turn the constraint off (--no-constraints)")
        else:
            why = (f"the model added nothing to {label}: it ended the piece at once "
                   f"({piece.meta.get('finish_reason')}); try another seed")
        if len(empty) == sum(is_continuation(x) for x in inputs):
            raise RwkvMusicError(why)
        log.warning("continuation %d: %s", piece.index, why)
    return pieces


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
