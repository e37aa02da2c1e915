"""Continuing a whole ABC tune: reopen its final barline, and keep its titles in the new piece.

A tune that ended (its last barline is ``|]``, the end of the piece) is continued as a tune with a
new part: the final ``|]`` becomes a section line ``||`` in the prompt, so the model writes on
instead of reading "the end" (the compose layer also bans the end token before the first new
token).  Titles (``T:``) are kept out of the prompt, since the models were trained without them
(:func:`~rwkv_music.formats.abc.tune.prompt_from_tune`), and put back into the piece's text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rwkv_music.formats.abc.tune import split_tunes

# a piece's final barline (optionally after a repeat) at the very end of the text, and its section form
_FINAL_BAR = re.compile(r"(:?)(?:\|\|\]|\[\|\]|\|\])\s*$")
_TITLE = re.compile(r"^T:.*\S")
_FIELD = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"^[SBE]:\s*\d+\s*$")
MAX_TITLE_BYTES = 1 << 20  # titles are read from the head of the file only


class TuneText(str):
    """The prompt text of a tune to continue, with the titles of the tune it came from.

    A ``str`` (it travels as a prompt row), marked ``continues`` so composing treats it as a
    continuation, not as the first bars of a fresh tune.
    """

    continues = True
    titles: tuple[str, ...] = ()

    def __new__(cls, text: str, titles: tuple[str, ...] | list[str] = ()) -> "TuneText":
        obj = super().__new__(cls, text)
        obj.titles = tuple(titles)
        return obj


def reopen_end(prompt: str) -> str:
    """``prompt`` with a final ``|]`` (``||]``, ``[|]``) turned into ``||`` (``:|]`` into ``:|``).

    >>> reopen_end("K:D\\nDEFG|ABcd|]\\n")
    'K:D\\nDEFG|ABcd||\\n'
    >>> reopen_end("K:D\\nDEFG|ABcd:|]")
    'K:D\\nDEFG|ABcd:|'
    >>> reopen_end("K:D\\nDEFG|ABcd|")
    'K:D\\nDEFG|ABcd|'
    """
    m = _FINAL_BAR.search(prompt)
    if m is None:
        return prompt
    return prompt[: m.start()] + (":|" if m.group(1) else "||") + prompt[len(prompt.rstrip()) :]


def title_lines(tune: str) -> list[str]:
    """The ``T:`` lines of a tune's header (before ``K:``).

    >>> title_lines("X:1\\nT:The Kesh\\nT:Kesh Jig\\nM:6/8\\nK:G\\nGAG|")
    ['T:The Kesh', 'T:Kesh Jig']
    """
    out = []
    for line in tune.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        if stripped.startswith("K:"):
            break
        if _TITLE.match(stripped):
            out.append(stripped)
    return out


def source_titles(item: object) -> list[str]:
    """The titles of a continued row: a :class:`TuneText`'s own, or those of an .abc file's first tune."""
    if isinstance(item, TuneText):
        return list(item.titles)
    if not isinstance(item, os.PathLike):
        return []
    try:
        with open(Path(item), encoding="utf-8", errors="replace") as fh:
            text = fh.read(MAX_TITLE_BYTES)
    except OSError:
        return []
    tunes = split_tunes(text)
    return title_lines(tunes[0][1]) if tunes else []


def insert_titles(text: str, titles: list[str]) -> str:
    """Model text with ``titles`` after its control codes and before its first field (none if it has some).

    >>> insert_titles("S:2\\nL:1/8\\nK:D\\nDEF|", ["T:Air"])
    'S:2\\nT:Air\\nL:1/8\\nK:D\\nDEF|'
    """
    lines = text.split("\n")
    if not titles or any(_TITLE.match(line.strip()) for line in lines):
        return text
    i = 0
    while i < len(lines) and (_CONTROL.match(lines[i].strip()) or not lines[i].strip()):
        i += 1
    if i < len(lines) and not _FIELD.match(lines[i].strip()):
        return text  # no header to put them in front of
    return "\n".join(lines[:i] + list(titles) + lines[i:])


__all__ = ["TuneText", "insert_titles", "reopen_end", "source_titles", "title_lines"]
