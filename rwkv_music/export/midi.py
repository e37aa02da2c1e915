"""Writing MIDI files atomically (reading, notes and metrics live in :mod:`rwkv_music.formats.midi.files`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rwkv_music.formats.midi.files import PERCUSSION_CHANNEL, Note, midi_bytes, midi_metrics, notes_of, read_midi
from rwkv_music.io_utils import atomic_write_bytes


def write_midi(midi: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a :class:`mido.MidiFile` to ``path`` atomically."""
    return atomic_write_bytes(path, midi_bytes(midi), force)


__all__ = ["PERCUSSION_CHANNEL", "Note", "midi_bytes", "midi_metrics", "notes_of", "read_midi", "write_midi"]
