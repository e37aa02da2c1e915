"""Writing MusicXML (the score conversions live in :mod:`rwkv_music.formats.score`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rwkv_music.formats.score import abc_to_midi, abc_to_score, midi_to_score, quiet_music21, score_to_midi_bytes
from rwkv_music.io_utils import atomic_write_bytes


def write_musicxml(score: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a music21 score as uncompressed MusicXML, atomically."""
    from music21.musicxml import m21ToXml

    data = m21ToXml.GeneralObjectExporter(score).parse()
    return atomic_write_bytes(path, data, force)


__all__ = ["abc_to_midi", "abc_to_score", "midi_to_score", "quiet_music21", "score_to_midi_bytes", "write_musicxml"]
