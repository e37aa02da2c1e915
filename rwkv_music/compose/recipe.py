"""The Composer's recipe cut into one work item per piece, for continuous batching in render.

:meth:`rwkv_music.compose.composer.Composer.compose_rows` builds the prompt, the constraint and the
processors of a whole batch and runs :func:`~rwkv_music.sampling.generate.generate`.  The
renderer instead feeds :func:`~rwkv_music.sampling.continuous.generate_continuous` one
:class:`~rwkv_music.sampling.continuous.WorkItem` per sample, so this module repeats that
recipe per piece with the Composer's own helpers: the same prompt ids (``Composer.row_prompt``),
constraint, preset processors and stop tokens, and the same ``Piece`` and ``meta`` at the end
(``Composer.make_piece``), so a sample's file does not depend on how it was batched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rwkv_music.compose import helpers as _c
from rwkv_music.compose.options import ABC_EOS, DEFAULT_PRESETS, MIDI_SEPARATOR, AbcOptions, MidiOptions
from rwkv_music.compose.piece import Piece
from rwkv_music.sampling.continuous import PieceResult, WorkItem

RowInput = str | os.PathLike | None  # as in compose: None, prompt text, or a file to continue


@dataclass(frozen=True)
class RowRecipe:
    """Everything the pieces of one input row share: prompt ids, options, preset and sampling."""

    input: RowInput
    options: MidiOptions | AbcOptions
    preset: str
    sampling: dict[str, Any]
    prompt: list[int]
    header: Any  # Composer.row_prompt's grouping key: ABC (meter, unit, key) or the MIDI prompt's seconds
    config: Any = field(compare=False)  # the SamplingConfig (recorded in each piece's meta)


def row_recipe(
    composer: Any, item: RowInput, options: MidiOptions | AbcOptions, preset: str | None, sampling: dict[str, Any]
) -> RowRecipe:
    """Prompt and settings of one input row (reads and checks the prompt or file once)."""
    preset = preset or DEFAULT_PRESETS[composer.mode]
    prompt, header = composer.row_prompt(item, options)
    config, _ = _c.build_processors(preset, sampling, [])  # checks the sampling options up front
    return RowRecipe(item, options, preset, dict(sampling), prompt, header, config)


def _constraint(recipe: RowRecipe) -> Any:
    """A fresh music constraint for one piece (None when unconstrained), as ``Composer._run``."""
    options = recipe.options
    if not options.constrained:
        return None
    if isinstance(options, MidiOptions):
        target = options.seconds + recipe.header if options.seconds else None  # header: the prompt's seconds
        return _c.midi_constraint(options.instruments, target, **dict(options.limits))
    return _c.abc_constraint(*recipe.header, options.max_tokens)


def work_item(recipe: RowRecipe, seed: int, tag: Any = None) -> WorkItem:
    """One piece of ``recipe`` with its own processors (new objects: they keep per-piece state)."""
    constraint = _constraint(recipe)
    config, processors = _c.build_processors(recipe.preset, recipe.sampling, [] if constraint is None else [constraint])
    stop = {MIDI_SEPARATOR} if isinstance(recipe.options, MidiOptions) else {ABC_EOS}
    return WorkItem(
        prompt=recipe.prompt,
        seed=int(seed),
        max_new_tokens=recipe.options.max_tokens,
        processors=processors,
        stop_tokens=sorted(stop | set(config.stop_tokens)),
        tag=tag,
    )


def piece_from_result(composer: Any, recipe: RowRecipe, result: PieceResult, rows_in_flight: int) -> Piece:
    """The finished piece with the meta ``Composer.compose_rows`` would give it (index 0).

    ``timing.batch_seconds`` is the piece's own share of the run (``batch_size`` 1), so the
    manifest's ``seconds`` column keeps adding up to the generation time.
    """
    new = [int(t) for t in result.tokens]
    meta: dict[str, Any] = {
        "mode": composer.mode,
        "seed": int(result.item.seed),
        "preset": recipe.preset,
        "sampling": recipe.config.to_dict(),
        "params": recipe.options.to_dict(),
        "model": composer.model_info(),
        "prompt_tokens": len(recipe.prompt),
        "new_tokens": len(new),
        "finish_reason": result.finish_reason,
        "timing": {
            "batch_seconds": round(result.seconds, 4),
            "batch_size": 1,
            "rows_in_flight": rows_in_flight,
            "prefill_seconds": round(result.prefill_seconds, 4),
            "decode_seconds": round(result.decode_seconds, 4),
            "prompt_tokens_total": result.n_prompt_tokens,
            "sampled_tokens_total": result.n_sampled_tokens,
        },
        "custom_state": False,
    }
    piece = composer.make_piece(recipe.prompt, new, meta, 0)
    piece.meta.update(base_seed=None, input=None if recipe.input is None else str(recipe.input))
    return piece


__all__ = ["RowRecipe", "piece_from_result", "row_recipe", "work_item"]
