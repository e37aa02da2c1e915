"""The MIDI format (docs/formats.md C, D3) as composing code sees it: :class:`MidiFormat`.

A prompt is ``<pad>`` + the notes and waits of the prompt (markers dropped); a piece ends when
``<pad>`` is sampled and its text is ``<start> … <end>``.  With a target length the constraint
counts the prompt's music time too, so rows group by that time (:class:`PromptTime`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwkv_music.errors import MidiFormatError, RwkvMusicError
from rwkv_music.formats.base import RowInput, RowPrompt, SpecialIds
from rwkv_music.formats.midi.options import MidiOptions

MAX_PROMPT_CHARS = 1024 * 1024  # a MIDI text prompt longer than this is refused before encoding


@dataclass(frozen=True)
class PromptTime:
    """Music seconds already in a row's prompt (``None`` when the call sets no target length)."""

    seconds: float | None = None


class MidiFormat(SpecialIds):
    """RWKV-4-MIDI token text (see :class:`~rwkv_music.formats.base.Format`)."""

    name = "midi"
    article = "a"  # "a MIDI model"
    suffix = ".mid"
    input_suffixes = (".mid", ".midi")
    default_preset = "default-midi"
    slow_checks = False  # a piece's file and check cost a few ms: less than composing it
    options_class = MidiOptions

    def __init__(self, tokenizer: Any = None) -> None:
        if tokenizer is None:
            from rwkv_music.formats.midi.tokenizer import MidiTokenizer

            tokenizer = MidiTokenizer()
        self.tokenizer = tokenizer
        self.layout = tokenizer.vocab.layout
        self.specials = frozenset(int(t) for t in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id))

    @property
    def prompt_start(self) -> int:
        return self.pad_id  # the piece separator (docs/formats.md D3)

    @property
    def checks_in_workers(self) -> bool:
        """Workers finish pieces with the default tokenizer: only pieces of that one may go to them."""
        from rwkv_music.formats.midi.config import MidiVocabConfig

        return self.tokenizer.config == MidiVocabConfig() and getattr(self.tokenizer, "timing", None) == "exact"

    def check_vocab(self, vocab_size: int, source: str = "model") -> None:
        need = int(self.tokenizer.vocab_size)
        if vocab_size != need:
            raise RwkvMusicError(
                f"{source}: vocabulary has {vocab_size} ids, a MIDI model needs {need} (vocab/model mismatch)"
            )

    def body(self, ids: Sequence[int]) -> list[int]:
        """``ids`` without ``<pad>``/``<start>``/``<end>``."""
        return [int(t) for t in ids if t not in self.specials]

    def encode(self, text: str, vocab_size: int | None = None) -> list[int]:
        return self.body(self.tokenizer.encode(text))

    def read_file(self, path: str | os.PathLike) -> list[int]:
        """Ids of the notes and waits of a MIDI file (markers dropped); MidiFormatError if unreadable."""
        if not Path(path).is_file():
            raise MidiFormatError(f"{path}: no such MIDI file")
        ids = self.body(self.tokenizer.midi_to_ids(path))
        if not ids:
            raise MidiFormatError(f"{path}: the MIDI file has no notes to continue")
        return ids

    def prompt_seconds(self, ids: Sequence[int]) -> float:
        """Music time of prompt ids: the sum of their waits."""
        return self.layout.seconds(ids)

    def row_prompt(self, item: RowInput, options: MidiOptions, vocab_size: int | None = None) -> RowPrompt:
        """``<pad>`` + body; a long file or text keeps its last ``options.max_prompt_tokens`` tokens."""
        if item is None:
            body: list[int] = []
        elif isinstance(item, os.PathLike):
            body = self.read_file(item)[-options.max_prompt_tokens :]
        else:
            if len(item) > MAX_PROMPT_CHARS:  # (about 100k words: far past any model's context)
                raise MidiFormatError(
                    f"MIDI text prompt: {len(item)} characters, more than the {MAX_PROMPT_CHARS} a prompt may hold"
                )
            body = self.encode(item)[-options.max_prompt_tokens :]  # as for a file: the last tokens
        # `seconds` is new music after the prompt; MidiConstraint counts the prompt's time too
        group = PromptTime(round(self.prompt_seconds(body), 3) if options.seconds else None)
        return RowPrompt([self.prompt_start] + body, group)

    def stop_ids(self, options: MidiOptions) -> list[int]:
        return [self.pad_id]

    def constraint(self, options: MidiOptions, group: Hashable) -> Any:
        if not options.constrained:
            return None
        before = group.seconds if isinstance(group, PromptTime) else group
        return options.constraint(options.seconds + (before or 0.0) if options.seconds else None)

    def piece_ids(self, prompt: Sequence[int], new: Sequence[int]) -> list[int]:
        return self.body(list(prompt[1:]) + list(new))

    def piece_text(self, ids: Sequence[int]) -> str:
        """``<start> … <end>`` (D3: the output starts with ``<start>`` and ends with ``<end>``)."""
        body = self.tokenizer.decode(self.body(ids))
        return f"<start> {body} <end>" if body else "<start> <end>"

    def validity(self, text: str, midi: Any = None) -> dict[str, Any]:
        """Whether the text decodes, and note metrics of the decoded file (``midi``, where the caller
        decoded ``text`` already)."""
        from rwkv_music.formats.midi.files import midi_metrics

        try:
            return {"decodes": True, **midi_metrics(self.to_midi(text) if midi is None else midi)}
        except RwkvMusicError as exc:
            return {"decodes": False, "error": str(exc)}

    def to_midi(self, text: str, source: str = "") -> Any:
        return self.tokenizer.text_to_midi(text)

    def to_score(self, text: str, source: str = "MIDI data") -> Any:
        from rwkv_music.formats.score import midi_to_score

        return midi_to_score(self.to_midi(text), source=source)

    def __repr__(self) -> str:
        return f"MidiFormat({self.tokenizer!r})"


__all__ = ["MidiFormat", "PromptTime"]
