"""ABC tune text: control codes, ``X:`` numbers, splitting tune books and continuation prompts.

Model text (docs/formats.md B) starts with TunesFormer control codes (``S:``, ``B:``, ``E:`` lines) and has
no ``X:`` line.  In standard ABC ``S:`` and ``B:`` mean "source" and "book", so before a tune is
saved or handed to music21 the control lines are dropped and ``X:n`` is put first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from rwkv_music.errors import AbcFormatError
from rwkv_music.formats.abc.header import check_key, check_meter, check_prompt_size, check_unit

MAX_FILE_BYTES = 16 << 20  # a tune book; only its first tune is read, and that within MAX_PROMPT_CHARS
TEXT_SOURCE = "ABC text"  # the source name of a tune given as text rather than a file

_CONTROL_LINE = re.compile(r"^[SBE]:\s*\d+\s*$")  # TunesFormer control codes (docs/formats.md B)
_REFERENCE_LINE = re.compile(r"^X:\s*(\d*)")


def strip_control_codes(text: str) -> str:
    """Drop the leading control-code lines (``S:2``, ``B:9``, ``E:4``) of a model tune.

    >>> strip_control_codes("S:2\\nB:8\\nL:1/8\\nK:D\\nDFA|")
    'L:1/8\\nK:D\\nDFA|'
    """
    lines = text.split("\n")
    i = 0
    while i < len(lines) and (_CONTROL_LINE.match(lines[i].strip()) or not lines[i].strip()):
        i += 1
    return "\n".join(lines[i:])


def control_lines(text: str) -> str:
    """The leading control-code block of ``text`` (possibly empty), one code per line."""
    out = []
    for line in text.split("\n"):
        if _CONTROL_LINE.match(line.strip()):
            out.append(line.strip())
        elif line.strip():
            break
    return "\n".join(out)


def with_reference(text: str, number: int = 1) -> str:
    """Standard ABC for one tune: control codes dropped, ``X:number`` first, old ``X:`` removed.

    >>> with_reference("S:2\\nL:1/8\\nK:G\\nGAB|", 3)
    'X:3\\nL:1/8\\nK:G\\nGAB|\\n'
    """
    body = [line for line in strip_control_codes(text.strip("\n")).split("\n") if not _REFERENCE_LINE.match(line)]
    return f"X:{number}\n" + "\n".join(body).rstrip() + "\n"


def tune_book(tunes: Iterable[str], first: int = 1) -> str:
    """Several tunes as one ABC file, numbered ``X:first``, ``X:first+1``, … and separated by blank lines."""
    return "\n".join(with_reference(t, first + i) for i, t in enumerate(tunes))


def split_tunes(text: str) -> list[tuple[int | None, str]]:
    """Split an ABC file into its tunes: ``(X number or None, tune text without the X: line)``.

    Text before the first ``X:`` (a file header) is dropped when the file has ``X:`` lines; a
    file without any is one tune.
    """
    tunes: list[tuple[int | None, list[str]]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _REFERENCE_LINE.match(line)
        if m:
            tunes.append((int(m.group(1)) if m.group(1) else None, []))
        elif tunes:
            tunes[-1][1].append(line)
    if not tunes:
        return [(None, text.strip())] if text.strip() else []
    return [(x, "\n".join(lines).strip()) for x, lines in tunes if "\n".join(lines).strip()]


def prompt_from_tune(tune: str) -> str:
    """A continuation prompt from an existing tune: musical header fields (L, M, Q, K) and the body.

    Titles, composers, sources, notes, lyrics, parts and voices are dropped (the models were
    trained without them; ``S:``/``B:`` would also be read as control codes), as are the ``X:``
    line, comments and blank lines.
    """
    keep_fields = {"L", "M", "Q", "K"}
    out = []
    for line in tune.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("%"):
            continue
        if re.match(r"^[A-Za-z]:", stripped) and stripped[0] not in keep_fields:
            continue
        out.append(line.rstrip())
    if not any(line.startswith("K:") for line in out):
        raise AbcFormatError("ABC prompt has no K: (key) line; a tune header needs L:, M: and K:")
    return _from_last_change(out)


_INLINE_FIELD = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")
_BODY_FIELD_LINE = re.compile(r"^([A-Za-z]):(.*)$")
_CHANGING = {"K": check_key, "M": check_meter, "L": check_unit}


def _from_last_change(lines: list[str]) -> str:
    """The prompt from the tune's last change of key, metre or unit on, under a header with the values
    then in force.

    The constrained decoder keeps one key, metre and unit per tune, so a tune that changes them in its
    body (``[K:Gm]``, ``[M:3/4]``, a ``K:`` line after the music started) is continued from its last
    change: the music before it is left out of the prompt, and thus of the piece.  Other inline fields
    (``[P:A]``, ``[Q:...]``) carry no notes and are dropped.
    """
    k = next(i for i, line in enumerate(lines) if line.startswith("K:"))
    header, body = lines[: k + 1], lines[k + 1 :]
    values: dict[str, str] = {}
    start = (0, 0)  # (body line, column) where the kept music starts
    kept_body: list[str] = []
    for i, line in enumerate(body):
        m = _BODY_FIELD_LINE.match(line.strip())
        if m:
            if m.group(1) in _CHANGING:
                values[m.group(1)] = _field_value(m.group(1), m.group(2))
                start = (i + 1, 0)
            kept_body.append("")
            continue
        out, pos = [], 0
        for f in _INLINE_FIELD.finditer(line):
            out.append(line[pos : f.start()])
            pos = f.end()
            if f.group(1) in _CHANGING:
                values[f.group(1)] = _field_value(f.group(1), f.group(2))
                start = (i, len("".join(out)))
        out.append(line[pos:])
        kept_body.append("".join(out))
    if not values:
        return "\n".join(header + [line for line in kept_body if line])
    line, column = start
    rest = ([kept_body[line][column:]] if line < len(kept_body) else []) + kept_body[line + 1 :]
    new_header = []
    for text in header:
        letter = text[:1]
        if letter in values and text[1:2] == ":" and letter != "K":
            text = f"{letter}:{values.pop(letter)}"
        new_header.append(text)
    key = values.pop("K", None)
    if key is not None:
        new_header[-1] = f"K:{key}"
    for letter, value in values.items():  # a change of a field the header did not have
        new_header.insert(len(new_header) - 1, f"{letter}:{value}")
    music = [r for r in rest if r.strip()]
    return "\n".join(new_header + music)


def _field_value(letter: str, value: str) -> str:
    try:
        return _CHANGING[letter](value)
    except AbcFormatError as exc:
        raise AbcFormatError(f"ABC prompt: body field {letter}:{value.strip()}: {exc}") from None



def read_tune(path_or_text: str | os.PathLike) -> tuple[str, str]:
    """(continuation prompt of the first tune, source name) from a file path or from ABC text.

    A string is read as text when it looks like a tune (several lines, or starting with ``X:``).
    """
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str)
        and "\n" not in path_or_text
        and len(path_or_text) < 4096
        and not path_or_text.lstrip().startswith("X:")
    ):
        path = Path(path_or_text)
        if not path.is_file():
            raise AbcFormatError(f"{path}: no such ABC file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise AbcFormatError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_FILE_BYTES} an ABC file "
                                 "(a tune book) may hold")
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
    else:
        text, source = str(path_or_text), TEXT_SOURCE
    tunes = split_tunes(text)
    if not tunes:
        raise AbcFormatError(f"{source}: contains no ABC tune")
    try:
        return prompt_from_tune(check_prompt_size(tunes[0][1], "first tune")), source
    except AbcFormatError as exc:
        raise AbcFormatError(f"{source}: {exc}") from None


__all__ = [
    "TEXT_SOURCE",
    "control_lines",
    "prompt_from_tune",
    "read_tune",
    "split_tunes",
    "strip_control_codes",
    "tune_book",
    "with_reference",
]
