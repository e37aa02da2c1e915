"""Writing ABC files: control codes off, ``X:`` reference numbers on (text rules in
:mod:`rwkv_music.formats.abc.tune`, re-exported here)."""

from __future__ import annotations

import os
from pathlib import Path

from rwkv_music.formats.abc.tune import (
    control_lines,
    prompt_from_tune,
    split_tunes,
    strip_control_codes,
    tune_book,
    with_reference,
)
from rwkv_music.io_utils import atomic_write_text


def write_abc(tunes: list[str] | str, path: str | os.PathLike, force: bool = False, first: int = 1) -> Path:
    """Write one tune or a tune book to ``path`` atomically (``X:`` numbering from ``first``)."""
    if isinstance(tunes, str):
        tunes = [tunes]
    return atomic_write_text(path, tune_book(tunes, first), force)


__all__ = [
    "control_lines",
    "prompt_from_tune",
    "split_tunes",
    "strip_control_codes",
    "tune_book",
    "with_reference",
    "write_abc",
]
