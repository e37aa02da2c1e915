"""The compose recipe of one input row, written once for every way pieces are generated.

A :class:`RowRecipe` holds what the pieces of one row share: the prompt ids and grouping key
(from the row's :class:`~rwkv_music.formats.base.Format`), the options, the sampling config,
and the stop ids.  :meth:`RowRecipe.processors` builds fresh processors (a new constraint each
time: constraints keep per-row state), :meth:`RowRecipe.meta` the piece's ``meta`` and
:meth:`RowRecipe.piece` the :class:`~rwkv_music.compose.piece.Piece`.

:meth:`rwkv_music.compose.composer.Composer.compose_rows` runs rows sharing a group as one fixed
batch with one processor list (:func:`~rwkv_music.sampling.generate.generate`); the renderer
feeds one :class:`~rwkv_music.sampling.continuous.WorkItem` per sample (:meth:`RowRecipe.work_item`)
to :func:`~rwkv_music.sampling.continuous.generate_continuous`.  Both end in
:meth:`RowRecipe.piece`, so a sample's file does not depend on how it was batched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rwkv_music.compose.options import AbcOptions, MidiOptions, SamplingOptions
from rwkv_music.compose.piece import Piece
from rwkv_music.formats.base import Format, RowInput


@dataclass(frozen=True)
class RowRecipe:
    """Everything the pieces of one input row share: prompt ids, options, sampling, stop ids."""

    input: RowInput
    options: MidiOptions | AbcOptions
    sampling: SamplingOptions
    prompt: list[int]
    group: Hashable  # rows with equal groups share a constraint: AbcHeader or PromptTime
    format: Format = field(compare=False, repr=False)
    config: Any = field(compare=False, repr=False)  # the SamplingConfig (recorded in each piece's meta)

    @property
    def preset(self) -> str:
        return self.sampling.preset or self.format.default_preset

    @property
    def header(self) -> Hashable:
        """The grouping key (the name of the earlier API)."""
        return self.group

    @property
    def stop_ids(self) -> list[int]:
        return sorted(set(self.format.stop_ids(self.options)) | set(self.config.stop_tokens))

    def processors(self) -> Any:
        """A fresh processor list: the preset's processors and this row's constraint (if any)."""
        constraint = self.format.constraint(self.options, self.group)
        return self.config.build_processors([] if constraint is None else [constraint])

    def check_prompt(self) -> None:
        """Raise the constraint's one-line error now if it cannot read this row's prompt (else it would
        surface mid-run, when the row is admitted)."""
        constraint = self.format.constraint(self.options, self.group)
        if constraint is not None:
            constraint.reset([self.prompt])

    def work_item(self, seed: int, tag: Any = None) -> Any:
        """One piece of this row for the continuous loop, with its own processors."""
        from rwkv_music.sampling.continuous import WorkItem

        return WorkItem(
            prompt=self.prompt,
            seed=int(seed),
            max_new_tokens=self.options.max_tokens,
            processors=self.processors(),
            stop_tokens=self.stop_ids,
            tag=tag,
        )

    def meta(
        self,
        seed: int,
        new: Sequence[int],
        finish_reason: str,
        model: dict[str, Any],
        timing: dict[str, Any],
        custom_state: bool,
    ) -> dict[str, Any]:
        """The piece's meta before validity, base seed and input are added."""
        return {
            "mode": self.format.name,
            "seed": int(seed),
            "preset": self.preset,
            "sampling": self.config.to_dict(),
            "params": self.options.to_dict(),
            "model": model,
            "prompt_tokens": len(self.prompt),
            "new_tokens": len(new),
            "finish_reason": str(finish_reason),
            "timing": timing,
            "custom_state": custom_state,
        }

    def piece(self, new: Sequence[int], meta: dict[str, Any], index: int, base_seed: int | None = None) -> Piece:
        """The finished piece (``meta`` gains base seed and input; validity is :attr:`Piece.validity`)."""
        piece = make_piece(self.format, self.prompt, new, meta, index)
        piece.meta.update(base_seed=base_seed, input=None if self.input is None else str(self.input))
        keep_titles = getattr(self.format, "keep_titles", None)  # ABC: a continued tune keeps its T: lines
        if keep_titles is not None and self.input is not None:
            piece = dataclasses.replace(piece, text=keep_titles(self.input, piece.text))
        return piece


def row_recipe(
    fmt: Format, item: RowInput, options: MidiOptions | AbcOptions, sampling: SamplingOptions, vocab_size: int
) -> RowRecipe:
    """The recipe of one input row (reads and checks the prompt or file once)."""
    row = fmt.row_prompt(item, options, vocab_size)
    config = sampling.config(fmt.default_preset)
    return RowRecipe(item, options, sampling, row.ids, row.group, fmt, config)


def make_piece(fmt: Format, prompt: Sequence[int], new: Sequence[int], meta: dict[str, Any], index: int) -> Piece:
    """The :class:`Piece` of prompt ids + generated ids (``index`` numbers ABC tunes, X:)."""
    ids = fmt.piece_ids(prompt, new)
    return Piece(fmt.name, ids, fmt.piece_text(ids), meta, index, fmt.tokenizer)  # validity: on first use


def continuous_meta_timing(result: Any, rows_in_flight: int) -> dict[str, Any]:
    """``timing`` of a piece from the continuous loop: its own share of the run (``batch_size`` 1),
    so the manifest's ``seconds`` column keeps adding up to the generation time."""
    return {
        "batch_seconds": round(result.seconds, 4),
        "batch_size": 1,
        "rows_in_flight": rows_in_flight,
        "prefill_seconds": round(result.prefill_seconds, 4),
        "decode_seconds": round(result.decode_seconds, 4),
        "prompt_tokens_total": result.n_prompt_tokens,
        "sampled_tokens_total": result.n_sampled_tokens,
    }


def piece_from_result(model: dict[str, Any], recipe: RowRecipe, result: Any, rows_in_flight: int) -> Piece:
    """The finished piece of a continuous-loop result, with the meta ``compose_rows`` would give it."""
    new = [int(t) for t in result.tokens]
    timing = continuous_meta_timing(result, rows_in_flight)
    meta = recipe.meta(result.item.seed, new, result.finish_reason, model, timing, custom_state=False)
    return recipe.piece(new, meta, 0)


__all__ = ["RowRecipe", "continuous_meta_timing", "make_piece", "piece_from_result", "row_recipe"]
