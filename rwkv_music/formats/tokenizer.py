"""The protocol both tokenizers implement, and rebuilding one from its saved settings.

STYLE.md section 5: one small interface (``encode``, ``decode``, ``vocab_size``, special ids),
implemented by :class:`~rwkv_music.formats.abc.tokenizer.AbcTokenizer` and
:class:`~rwkv_music.formats.midi.tokenizer.MidiTokenizer`; each one's settings round-trip through
``to_dict`` / :func:`tokenizer_from_dict` so they can be stored beside a model or an output.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from rwkv_music.errors import TokenizerError


@runtime_checkable
class Tokenizer(Protocol):
    """What sampling and composing code may rely on, whatever the music format."""

    name: str  # "abc" or "midi"
    vocab_size: int
    pad_id: int
    bos_id: int  # sequence start (ABC: 2, MIDI: <start> = 1)
    eos_id: int  # sequence end (ABC: 3, MIDI: <end> = 2)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output (``{"kind": "abc" | "midi", ...}``)."""
    kind = data.get("kind")
    if kind == "abc":
        from rwkv_music.formats.abc.tokenizer import AbcTokenizer

        return AbcTokenizer.from_dict(data)
    if kind == "midi":
        from rwkv_music.formats.midi.tokenizer import MidiTokenizer

        return MidiTokenizer.from_dict(data)
    raise TokenizerError(f"tokenizer settings: unknown kind {kind!r} (expected 'abc' or 'midi')")


__all__ = ["Tokenizer", "tokenizer_from_dict"]
