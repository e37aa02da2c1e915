"""Writing MusicXML (the score conversions live in :mod:`rwkv_music.formats.score`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from rwkv_music.errors import TokenizerError
from rwkv_music.formats.score import abc_to_midi, abc_to_score, midi_to_score, quiet_music21, score_to_midi_bytes
from rwkv_music.io_utils import atomic_write_bytes


@contextlib.contextmanager
def _no_music21_defaults() -> Iterator[None]:
    """Keep music21 from filling a missing title or composer with "Music21 Fragment" / "Music21"."""
    from music21 import defaults

    saved = defaults.title, defaults.author
    defaults.title, defaults.author = "", ""
    try:
        yield
    finally:
        defaults.title, defaults.author = saved


def musicxml_bytes(score: Any, source: str = "score") -> bytes:
    """A music21 score as uncompressed MusicXML; music21 failures become a one-line error naming ``source``."""
    from music21.musicxml import m21ToXml

    try:
        with quiet_music21(), _no_music21_defaults():
            return m21ToXml.GeneralObjectExporter(score).parse()
    except Exception as exc:  # music21 raises many types
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise TokenizerError(f"{source}: music21 cannot write MusicXML ({type(exc).__name__}: {first})") from None


def write_musicxml(score: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a music21 score as uncompressed MusicXML, atomically."""
    return atomic_write_bytes(path, musicxml_bytes(score, str(path)), force)


__all__ = [
    "abc_to_midi",
    "abc_to_score",
    "midi_to_score",
    "musicxml_bytes",
    "quiet_music21",
    "score_to_midi_bytes",
    "write_musicxml",
]
