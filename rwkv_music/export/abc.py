"""Writing ABC files: control codes off, ``X:`` reference numbers and ``T:`` titles on (text rules in
:mod:`rwkv_music.formats.abc.tune`, re-exported here)."""

from __future__ import annotations

import os
import re
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

_CONTROL_OR_X = re.compile(r"^([SBE]:\s*\d+|X:.*)\s*$")
_TITLE = re.compile(r"^T:", re.MULTILINE)


def with_title(text: str, title: str | None) -> str:
    """``text`` with a ``T:title`` line after its control codes and ``X:`` line, unless it has a ``T:``.

    >>> with_title("S:2\\nL:1/8\\nK:G\\nGAB|", "Tune 1 in G")
    'S:2\\nT:Tune 1 in G\\nL:1/8\\nK:G\\nGAB|'
    """
    if not title or _TITLE.search(text):
        return text
    lines = text.split("\n")
    i = 0
    while i < len(lines) and (not lines[i].strip() or _CONTROL_OR_X.match(lines[i].strip())):
        i += 1
    title = " ".join(title.split())  # one line
    return "\n".join(lines[:i] + [f"T:{title}"] + lines[i:])


def write_abc(
    tunes: list[str] | str,
    path: str | os.PathLike,
    force: bool = False,
    first: int = 1,
    titles: list[str] | str | None = None,
) -> Path:
    """Write one tune or a tune book to ``path`` atomically (``X:`` numbering from ``first``).

    ``titles`` (one per tune) become ``T:`` lines of tunes that have none.
    """
    if isinstance(tunes, str):
        tunes = [tunes]
    if isinstance(titles, str):
        titles = [titles]
    if titles is not None:
        tunes = [with_title(t, title) for t, title in zip(tunes, titles)] + list(tunes[len(titles) :])
    return atomic_write_text(path, tune_book(tunes, first), force)


__all__ = [
    "control_lines",
    "prompt_from_tune",
    "split_tunes",
    "strip_control_codes",
    "tune_book",
    "with_reference",
    "with_title",
    "write_abc",
]
