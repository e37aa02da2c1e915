"""Rewrite ABC repeat marks that music21 misreads or refuses, before a tune is handed to it.

music21 (10.x) reads ``::`` and ``::|`` as stray notes (a ``|:A::B:|`` tune loses most of its
notes), reads ``:|:`` as three repeats, and its repeat expander raises ``ExpanderException`` on
a second ``|:`` before the first is closed, a ``|:`` that is never closed, or a second ending
(``[2``) without a first.  :func:`normalize_repeats` rewrites those forms into the ones it
reads as a musician would (``:||:`` for an end-and-start), and leaves everything else alone:
header and field lines, quoted chord symbols and annotations, ``!decorations!``, inline fields
and comments are never touched.

>>> normalize_repeats("K:D\\n|:DFA dAF::GBd gdB:|")
'K:D\\n|:DFA dAF:||:GBd gdB:|'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lines that are fields (``K:D``, ``w: lyrics``, ``I: :: ::``) and not music.
_FIELD_LINE = re.compile(r"^\s*[A-Za-z+]:")
# Parts of a music line whose colons and bars are not bar lines.
_PROTECTED = re.compile(r'"[^"\n]*"|![^!\n]*!|\+[^+\n]*\+|\[[A-Za-z]:[^\]\n]*\]|%.*')
_TEXT_RULES = (
    (re.compile(r":+\|{1,2}:+"), ":||:"),  # :|: ::|:: :||: -> one end-and-start
    (re.compile(r":{2,}(?=\|)"), ":"),  # ::| -> :|
    (re.compile(r"(?<=\|):{2,}"), ":"),  # |:: -> |:
    (re.compile(r":{2,}"), ":||:"),  # bare :: -> end-and-start
)
_REPEAT = re.compile(r"(?P<both>:\|\|:)|(?P<end>:\|)|(?P<start>\|:)|(?P<ending>(?:\[|(?<=\|))(?P<n>\d)[\d,\-]*)")


@dataclass
class _Mark:
    kind: str  # "start", "end", "both", "ending"
    line: int
    start: int
    end: int
    number: int = 0


def _music_spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of the parts of a music line outside protected text."""
    spans, pos = [], 0
    for m in _PROTECTED.finditer(line):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(line)))
    return [(a, b) for a, b in spans if b > a]


def _rewrite_text(line: str) -> str:
    out, pos = [], 0
    for a, b in _music_spans(line):
        out.append(line[pos:a])
        chunk = line[a:b]
        for pattern, repl in _TEXT_RULES:
            chunk = pattern.sub(repl, chunk)
        out.append(chunk)
        pos = b
    out.append(line[pos:])
    return "".join(out)


def _marks(lines: list[str], music: list[bool]) -> list[_Mark]:
    marks = []
    for i, line in enumerate(lines):
        if not music[i]:
            continue
        for a, b in _music_spans(line):
            for m in _REPEAT.finditer(line, a, b):
                kind = m.lastgroup if m.lastgroup != "n" else "ending"
                number = int(m.group("n")) if kind == "ending" else 0
                marks.append(_Mark(kind, i, m.start(), m.end(), number))
    return marks


def _structure_edits(marks: list[_Mark]) -> dict[int, str]:
    """Replacement text for marks (by index) that music21's expander would refuse or misplay."""
    edits: dict[int, str] = {}
    open_start: int | None = None  # a |: not closed yet
    last_end: int | None = None  # the last :| with no |: after it
    first_ending = False  # a [1 since the last |:
    for k, mark in enumerate(marks):
        if mark.kind == "ending":
            if mark.number == 1:
                first_ending = True
            elif not first_ending:  # [2 with no [1: music21 refuses it; play it as plain bars
                edits[k] = ""
            continue
        if mark.kind in ("end", "both") and open_start is None and last_end is not None:
            # A second :| with no |: between repeats from the previous :| (the AABB tune
            # ``A:|B:|``), not from the top again as music21 would play it.
            if not _ending_follows(marks, last_end):
                edits[last_end] = ":||:"
        if mark.kind == "start" and open_start is not None:
            edits[open_start] = "|"  # |: ... |: -- the first one never closes
        if mark.kind == "end":
            open_start, last_end = None, k
        else:  # a start, or an end-and-start
            open_start, last_end, first_ending = k, None, False
    if open_start is not None:  # |: never closed: no repeat
        edits[open_start] = "|" if marks[open_start].kind == "start" else ":|"
    return edits


def _ending_follows(marks: list[_Mark], k: int) -> bool:
    return k + 1 < len(marks) and marks[k + 1].kind == "ending"


def _apply(lines: list[str], marks: list[_Mark], edits: dict[int, str]) -> list[str]:
    out = list(lines)
    for k in sorted(edits, key=lambda k: (marks[k].line, -marks[k].start)):  # right to left in a line
        mark, line = marks[k], out[marks[k].line]
        out[mark.line] = line[: mark.start] + edits[k] + line[mark.end :]
    return out


def normalize_repeats(text: str) -> str:
    """``text`` with repeat marks music21 misreads rewritten (see the module docstring).

    A ``|: ... |:`` keeps only the second start, a ``|:`` never closed becomes a plain bar, a
    second ending without a first becomes plain bars, and ``A:|B:|`` repeats B from the first
    ``:|``.
    """
    lines = text.split("\n")
    in_body = False
    music = []
    for i, line in enumerate(lines):
        field = bool(_FIELD_LINE.match(line))
        music.append(in_body and not field)
        if field and line.lstrip().startswith("K:"):
            in_body = True  # the header ends with K:
        if music[i]:
            lines[i] = _rewrite_text(line)
    marks = _marks(lines, music)
    edits = _structure_edits(marks)
    return "\n".join(_apply(lines, marks, edits)) if edits else "\n".join(lines)


__all__ = ["normalize_repeats"]
