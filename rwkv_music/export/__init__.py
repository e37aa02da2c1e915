"""Exporters: model output → .abc, .mid, .musicxml, .png piano roll, .wav.

One module per format (:mod:`~rwkv_music.export.abc`, :mod:`~rwkv_music.export.midi`,
:mod:`~rwkv_music.export.music21_io`, :mod:`~rwkv_music.export.pianoroll`,
:mod:`~rwkv_music.export.audio`); every writer is atomic and refuses to overwrite an existing
file unless ``force`` is set (:class:`~rwkv_music.errors.OutputExistsError`).  Heavy libraries
(music21, matplotlib, FluidSynth) are imported only by the function that needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

from rwkv_music.errors import RwkvMusicError

# file suffix → format name used by Piece.save
SUFFIX_FORMATS = {
    ".mid": "midi",
    ".midi": "midi",
    ".abc": "abc",
    ".musicxml": "musicxml",
    ".xml": "musicxml",
    ".png": "png",
    ".wav": "wav",
}


def format_for(path: str | os.PathLike) -> str:
    """The output format implied by ``path``'s extension (raises RwkvMusicError if unknown)."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIX_FORMATS[suffix]
    except KeyError:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        raise RwkvMusicError(
            f"{path}: unknown output format {suffix or '(no extension)'!r}; use one of {known}"
        ) from None


__all__ = ["SUFFIX_FORMATS", "format_for"]
