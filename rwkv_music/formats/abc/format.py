"""The ABC format (docs/formats.md B, D4) as composing code sees it: :class:`AbcFormat`.

A prompt is ``[bos]`` + control codes + header lines (+ first bars); a piece ends on ``eos``.
Rows sharing a header (:class:`~rwkv_music.formats.abc.header.AbcHeader`) share a constraint.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

from rwkv_music.errors import AbcFormatError, BackendUnavailable, RwkvMusicError
from rwkv_music.formats.abc.continuation import insert_titles, reopen_end, source_titles
from rwkv_music.formats.abc.header import (
    AbcHeader,
    check_controls,
    has_control_codes,
    header_fields,
    music_after_header,
    prompt_text,
)
from rwkv_music.formats.abc.options import AbcOptions
from rwkv_music.formats.abc.tokenizer import AbcTokenizer
from rwkv_music.formats.abc.tune import read_tune
from rwkv_music.formats.base import RowInput, RowPrompt, SpecialIds
from rwkv_music.formats.midi.vocab import LAYOUT


class AbcFormat(SpecialIds):
    """ABC tunes, one character per token (see :class:`~rwkv_music.formats.base.Format`)."""

    name = "abc"
    article = "an"  # "an ABC model"
    suffix = ".abc"
    input_suffixes = (".abc",)
    default_preset = "default-abc"
    checks_in_workers = True  # a tune's file and check depend on its text alone
    slow_checks = True  # the check (music21 + strict bars) costs about what composing the tune does
    options_class = AbcOptions

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else AbcTokenizer()

    @property
    def prompt_start(self) -> int:
        return self.bos_id

    def check_vocab(self, vocab_size: int, source: str = "model") -> None:
        need = int(self.tokenizer.vocab_size)
        if not need <= vocab_size <= 256:  # byte-level: one id per byte at most (the ABC models have 128)
            kind = " (a MIDI model's vocabulary)" if vocab_size == LAYOUT.size else ""
            raise RwkvMusicError(
                f"{source}: vocabulary has {vocab_size} ids{kind}, an ABC model has {need} to 256 "
                "(vocab/model mismatch)"
            )

    def encode(self, text: str, vocab_size: int | None = None) -> list[int]:
        ids = [int(t) for t in self.tokenizer.encode(text)]
        if vocab_size is not None:
            bad = next((i for i, t in enumerate(ids) if t >= vocab_size), None)
            if bad is not None:
                raise AbcFormatError(
                    f"ABC prompt: character {text[bad]!r} at position {bad} is outside the model's vocabulary"
                )
        return ids

    def read_file(self, path: str | os.PathLike) -> str:
        """The continuation prompt of the first tune of an .abc file."""
        return read_tune(path)[0]

    def row_prompt(self, item: RowInput, options: AbcOptions, vocab_size: int | None = None) -> RowPrompt:
        """A tune start with its own ``K:`` keeps its header; anything else gets the options' header."""
        if isinstance(item, os.PathLike):
            item = self.read_file(item)
        fields = header_fields(item) if item is not None else {}
        if item is not None and fields.get("K"):
            item = reopen_end(item)  # a whole tune gets a new part, not "the end" (formats/abc/continuation.py)
            controls = [] if has_control_codes(item) else check_controls(options.controls)
            text = "\n".join(controls + [item.strip("\n")]) + "\n"
            free = bool(music_after_header(item).strip())
            header = AbcHeader(fields.get("M"), fields.get("L"), fields.get("K"), free=free)
        else:
            text = prompt_text(options.controls, options.key, options.meter, options.unit, options.tempo, item)
            header = AbcHeader(options.meter, options.unit, options.key, free=bool(item and item.strip()))
        return RowPrompt([self.prompt_start] + self.encode(text, vocab_size), header)

    def keep_titles(self, item: RowInput, text: str) -> str:
        """A continued tune's text with the ``T:`` lines of its source (kept out of the prompt)."""
        return insert_titles(text, source_titles(item))

    def stop_ids(self, options: AbcOptions) -> list[int]:
        return [self.eos_id]

    def constraint(self, options: AbcOptions, group: Hashable) -> Any:
        """The grammar / bar-balance constraint for the header ``group``, steering rows to end in time."""
        if not options.constrained:
            return None
        try:
            from rwkv_music.formats.abc.constraint import AbcConstraint
        except ImportError as exc:
            raise BackendUnavailable(
                f"the ABC constraint is not available ({exc}); compose with constrained=False (--no-constraints)"
            ) from None
        header = group if isinstance(group, AbcHeader) else AbcHeader(*group)
        forced = {"meter": header.meter, "unit": header.unit, "key": header.key}
        form = options.form and not header.free  # a continuation keeps the layout its prompt began
        shape = {"parts": options.parts, "bars_per_part": options.bars_per_part} if form else {}
        return AbcConstraint(
            max_new_tokens=options.max_tokens,
            form=form,
            cadence=options.cadence and form,
            max_bar_repeats=options.max_bar_repeats,
            vary_rhythm=options.vary_rhythm and form,
            **{k: v for k, v in {**forced, **shape}.items() if v},
        )

    def piece_ids(self, prompt: Sequence[int], new: Sequence[int]) -> list[int]:
        specials = max(self.pad_id, self.bos_id, self.eos_id)
        return [int(t) for t in list(prompt[1:]) + list(new) if t > specials]

    def piece_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def validity(self, text: str, midi: Any = None) -> dict[str, Any]:
        """music21 validity and the strict bar balance of a tune (:mod:`rwkv_music.formats.abc.check`).

        ``bar_balance`` is the share of judged bars keeping the strict metre rule (pickup pairs and
        endings only); ``strictly_balanced`` says the whole tune keeps it (metered, every bar).  ``midi``
        is not read: the check judges the text.
        """
        from rwkv_music.formats.abc.check import bar_balance, parse_ok
        from rwkv_music.formats.score import quiet_music21

        with quiet_music21():
            report = bar_balance(text)
            ok = bool(report.parsed and parse_ok(text))
        return {
            "parse_ok": ok,
            "bars_checked": report.checked,
            "bar_balance": round(report.rate, 4),
            "overfull_bars": report.overfull,
            "all_balanced": report.all_balanced,
            "strictly_balanced": report.strictly_balanced,
        }

    def to_midi(self, text: str, source: str = "ABC text") -> Any:
        from rwkv_music.formats.score import abc_to_midi

        return abc_to_midi(text, source=source)

    def to_score(self, text: str, source: str = "ABC text") -> Any:
        from rwkv_music.formats.score import abc_to_score

        return abc_to_score(text, source=source)

    def __repr__(self) -> str:
        return f"AbcFormat({self.tokenizer!r})"


__all__ = ["AbcFormat"]
