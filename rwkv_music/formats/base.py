"""What composing needs to know about a music format, asked of one object instead of a mode string.

:class:`Format` is the protocol; :class:`~rwkv_music.formats.abc.format.AbcFormat` and
:class:`~rwkv_music.formats.midi.format.MidiFormat` implement it.  Composing code (the
:class:`~rwkv_music.compose.composer.Composer`, the row recipe, batch rendering, the CLI) asks the
format for special ids, prompt ids, the stop ids, a fresh constraint, the piece text, the validity
metrics and the output suffix, and never branches on ``mode == "midi"``.

:func:`format_for` finds a format by name, :func:`format_for_vocab` by a model's vocabulary
size.  This module imports no torch and nothing above ``formats``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.tokenizer import AbcTokenizer
from rwkv_music.formats.midi.vocab import LAYOUT

FORMAT_NAMES = ("abc", "midi")
# Vocabulary size -> format name of the BlinkDL music models (ABC 128 ids, MIDI 20,096).
VOCAB_MODES = {AbcTokenizer.vocab_size: "abc", LAYOUT.size: "midi"}

RowInput = str | os.PathLike | None  # None: a fresh piece; str: prompt text; a path: a file to continue


@dataclass(frozen=True)
class RowPrompt:
    """The prompt ids of one row and the key that groups rows sharing one constraint (a batch)."""

    ids: list[int]
    group: Hashable  # AbcHeader for ABC, PromptTime for MIDI


@runtime_checkable
class Format(Protocol):
    """One music format as composing code sees it.

    Attributes:
        name: ``"abc"`` or ``"midi"`` (the mode recorded in pieces).
        tokenizer: the tokenizer whose special ids the format uses.
        suffix: file suffix of a piece (``".abc"``, ``".mid"``).
        input_suffixes: suffixes of files a piece can continue.
        default_preset: sampling preset when a call names none.
        options_class: the frozen options dataclass of a compose call (``AbcOptions``/``MidiOptions``).
        prompt_start: the id every prompt starts with (ABC ``bos``, MIDI ``<pad>``).
        checks_in_workers: a render may write a piece's file and check it in worker processes
            (:mod:`rwkv_music.compose.piece_workers`), which use the format's default tokenizer.
        slow_checks: ``validity`` costs about as much CPU as composing the piece, or more (the CLI's
            render then leaves half of a CPU's cores to the workers).
    """

    name: str
    tokenizer: Any
    suffix: str
    input_suffixes: tuple[str, ...]
    default_preset: str
    options_class: type
    prompt_start: int
    checks_in_workers: bool
    slow_checks: bool

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def check_vocab(self, vocab_size: int, source: str = "model") -> None:
        """Raise :class:`RwkvMusicError` when a model of ``vocab_size`` ids cannot speak this format."""

    def encode(self, text: str, vocab_size: int | None = None) -> list[int]:
        """Ids of prompt text (no start id; markers dropped); checked against ``vocab_size``."""

    def read_file(self, path: str | os.PathLike) -> str | list[int]:
        """What a file to continue contributes: ABC prompt text, or MIDI body ids."""

    def row_prompt(self, item: RowInput, options: Any, vocab_size: int | None = None) -> RowPrompt:
        """Prompt ids and grouping key of one row (``None``, prompt text or a file path)."""

    def stop_ids(self, options: Any) -> list[int]:
        """Ids that end a piece."""

    def constraint(self, options: Any, group: Hashable) -> Any:
        """A fresh constraint (a logits processor) for rows of ``group``, or ``None``."""

    def piece_ids(self, prompt: Sequence[int], new: Sequence[int]) -> list[int]:
        """The ids a piece keeps of its prompt and generated ids (no markers)."""

    def piece_text(self, ids: Sequence[int]) -> str:
        """The piece's model text from :meth:`piece_ids`."""

    def validity(self, text: str, midi: Any = None) -> dict[str, Any]:
        """Cheap validity metrics of a piece's text; never raises (failures are recorded).  ``midi``: the
        text's :meth:`to_midi` file where the caller has it already (a MIDI check reads it instead of
        decoding the text again; an ABC check reads the text)."""

    def to_midi(self, text: str, source: str = "") -> Any:
        """The piece text as a :class:`mido.MidiFile` (``source`` names it in errors)."""

    def to_score(self, text: str, source: str = "") -> Any:
        """The piece text as a music21 score."""


class SpecialIds:
    """The special ids a format reads from its tokenizer (which declares them), shared by both formats."""

    tokenizer: Any

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_id)

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_id)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a one-line :class:`RwkvMusicError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RwkvMusicError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def format_for(mode: str, tokenizer: Any = None) -> Format:
    """The format called ``mode`` (``"abc"`` or ``"midi"``), with ``tokenizer`` or its default one."""
    if mode == "abc":
        from rwkv_music.formats.abc.format import AbcFormat

        return AbcFormat(tokenizer)
    if mode == "midi":
        from rwkv_music.formats.midi.format import MidiFormat

        return MidiFormat(tokenizer)
    raise RwkvMusicError(f"unknown mode {mode!r}; use 'abc' or 'midi'")


def format_for_suffix(suffix: str) -> Format | None:
    """The format whose files end in ``suffix`` (``".mid"``, ``".abc"``, any case), or ``None``."""
    for name in FORMAT_NAMES:
        fmt = format_for(name)
        if suffix.lower() in fmt.input_suffixes:
            return fmt
    return None


def mode_for_vocab(vocab_size: int, mode: str | None = None, source: str = "model") -> str:
    """Check ``mode`` against a vocabulary size, or infer it (128 -> abc, 20,096 -> midi).

    >>> mode_for_vocab(128), mode_for_vocab(20096)
    ('abc', 'midi')
    """
    if mode is None:
        if vocab_size not in VOCAB_MODES:
            sizes = " nor ".join(f"{name.upper()} ({size})" for size, name in VOCAB_MODES.items())
            raise RwkvMusicError(
                f"{source}: a vocabulary of {vocab_size} ids matches neither {sizes}; pass mode='abc' or 'midi'"
            )
        return VOCAB_MODES[vocab_size]
    format_for(mode).check_vocab(vocab_size, source)
    return mode


def format_for_vocab(vocab_size: int, mode: str | None = None, source: str = "model", tokenizer: Any = None) -> Format:
    """The format of a model with ``vocab_size`` ids (``mode`` checked against it when given)."""
    return format_for(mode_for_vocab(vocab_size, mode, source), tokenizer)


__all__ = [
    "FORMAT_NAMES",
    "Format",
    "RowInput",
    "RowPrompt",
    "VOCAB_MODES",
    "format_for",
    "format_for_suffix",
    "format_for_vocab",
    "mode_for_vocab",
    "positive_int",
]
