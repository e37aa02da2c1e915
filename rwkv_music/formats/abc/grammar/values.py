"""Finite value tables of the ABC grammar: header values, note lengths, bar lines, decorations.

Every token of the ABC subset that is not free text is one string of a finite set (a
:class:`ValueSet`): meters, unit lengths, keys, tempos, control codes, note-length suffixes,
tuplet openers, bar lines, ``!decoration!`` names and chord symbols.  A set answers in O(1)
"is this a prefix?", "is this complete?" and "what is the shortest way to complete it?", so the
state machine (:mod:`rwkv_music.formats.abc.grammar.machine`) never needs a regular expression in the
per-byte loop, and the tables double as documentation of what is accepted.

Musical meaning (exact :class:`~fractions.Fraction` durations in whole notes):

* :func:`meter_info` -- bar length, compound flag (music21 ``beatDivisionCount == 3``, which
  sets the default ``q`` of ``(5``, ``(7``, ``(9`` tuplets) and default unit length (ABC 2.1:
  1/16 below 3/4, else 1/8; the same rule as music21's ``getDefaultQuarterLength``).
* :func:`length_value` -- the multiplier of ``L`` written after a note (``3/2``, ``/``, ``//``).
* :func:`tuplet_ratio` -- ``(p:q:r`` with music21's defaults for ``q``.

The header value rules (meter and unit denominators, modes, tempo range, control codes) are the
ones of :mod:`rwkv_music.formats.abc.header`, the one ABC header validator: the sets here are
those rules spelled out as strings, narrowed by the grammar configuration.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

from rwkv_music.formats.abc.header import (
    BPM_RANGE,
    CONTROL_RANGES,
    METER_DENOMINATORS,
    MODE_SHARPS,
    SHORT_MODES,
    SPECIAL_KEYS,
    TEMPO_BEATS,
    UNIT_DENOMINATORS,
)

# -- generic finite sets --------------------------------------------------------------------


class ValueSet:
    """A finite set of strings with O(1) prefix tests and shortest completions.

    >>> v = ValueSet(["C", "C|", "6/8"])
    >>> v.is_prefix("6/"), v.is_complete("6/"), v.completion("6/"), v.completion("x")
    (True, False, '8', None)
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.values = frozenset(values)
        shortest: dict[str, str] = {}
        for value in sorted(self.values, key=lambda v: (len(v), v)):
            for i in range(len(value) + 1):
                shortest.setdefault(value[:i], value[i:])
        self._shortest = shortest

    def is_prefix(self, text: str) -> bool:
        """Whether ``text`` can still grow into a member (members count as prefixes)."""
        return text in self._shortest

    def is_complete(self, text: str) -> bool:
        return text in self.values

    def completion(self, text: str) -> str | None:
        """The shortest suffix that makes ``text`` a member, or ``None`` if none does."""
        return self._shortest.get(text)

    def __len__(self) -> int:
        return len(self.values)


# -- meters, unit lengths, keys, tempo --------------------------------------------------------


def meter_values(max_numerator: int, free_meter: bool, denominators: Iterable[int] = METER_DENOMINATORS) -> list[str]:
    """``M:`` values: ``C``, ``C|``, ``n/d`` (n <= max_numerator) and optionally ``none``."""
    values = ["C", "C|"] + [f"{n}/{d}" for n in range(1, max_numerator + 1) for d in denominators]
    return values + (["none"] if free_meter else [])


def meter_info(value: str) -> tuple[Fraction | None, bool, Fraction]:
    """``(bar length or None for free meter, compound, default unit length)`` of an ``M:`` value.

    >>> meter_info("6/8")
    (Fraction(3, 4), True, Fraction(1, 8))
    >>> meter_info("C|"), meter_info("2/4")[2]
    ((Fraction(1, 1), False, Fraction(1, 8)), Fraction(1, 16))
    """
    value = value.strip()
    if value.lower() == "none":
        return None, False, Fraction(1, 8)
    if value == "C":
        num, den = 4, 4
    elif value == "C|":
        num, den = 2, 2
    else:
        n, d = value.split("/")
        num, den = int(n), int(d)
    bar = Fraction(num, den)
    compound = num % 3 == 0 and num > 3  # music21 TimeSignature.beatDivisionCount == 3
    return bar, compound, Fraction(1, 16) if bar < Fraction(3, 4) else Fraction(1, 8)


def unit_values(denominators: Iterable[int] = UNIT_DENOMINATORS) -> list[str]:
    """``L:`` values ``1/d`` (``1/1`` .. ``1/64`` by default)."""
    return [f"1/{d}" for d in denominators]


_MAJOR_SHARPS = {"C": 0, "D": 2, "E": 4, "F": -1, "G": 1, "A": 3, "B": 5}


def key_sharps(tonic: str, mode: str) -> int:
    """Sharps (negative: flats) of a key such as ``("F#", "m")`` -> 3."""
    shift = {"#": 7, "b": -7, "": 0}[tonic[1:]]
    return _MAJOR_SHARPS[tonic[0]] + shift + MODE_SHARPS[mode.lower()]


def key_values(lenient: bool) -> list[str]:
    """``K:`` values: tonic (with ``#``/``b``) plus a mode, ``HP``, ``Hp``, ``none``.

    Strict: the short lowercase modes, no space, at most 7 sharps or flats.  Lenient adds
    long and capitalised mode names with an optional space (``E Minor``, ``A Mixolydian``).
    """
    out = list(SPECIAL_KEYS)
    modes = [(m, m) for m in SHORT_MODES]
    if lenient:
        modes = [(form, m) for m in MODE_SHARPS for form in {m, m.capitalize(), m.upper()}]
    for letter in _MAJOR_SHARPS:
        for acc in ("", "#", "b"):
            for written, mode in modes:
                if not lenient and abs(key_sharps(letter + acc, mode)) > 7:
                    continue
                out.append(letter + acc + written)
                if lenient and written:
                    out.append(letter + acc + " " + written)
    return out


def tempo_values() -> list[str]:
    """``Q:`` values: ``bpm`` or ``beat=bpm`` with bpm 40..240 (free text crashes music21)."""
    bpms = [str(b) for b in range(BPM_RANGE[0], BPM_RANGE[1] + 1)]
    return bpms + [f"{beat}={b}" for beat in TEMPO_BEATS for b in bpms]


def control_values(letter: str) -> list[str]:
    low, high = CONTROL_RANGES[letter]
    return [str(v) for v in range(low, high + 1)]


# -- note lengths ------------------------------------------------------------------------------


def length_texts(max_numerator: int, denominators: Iterable[int], lenient: bool) -> dict[str, Fraction]:
    """Note-length suffixes and their values in units of ``L``.

    ``""`` 1, ``n``, ``/`` 1/2, ``//`` 1/4, ``///`` 1/8, ``/d``, ``n/`` (n/2) and ``n/d``; the
    forms music21 reads correctly (it misreads ``n//``).  Lenient also accepts ``n//`` (n/4).
    No leading zeros; denominators are powers of two.
    """
    texts: dict[str, Fraction] = {"": Fraction(1), "/": Fraction(1, 2), "//": Fraction(1, 4), "///": Fraction(1, 8)}
    for n in range(1, max_numerator + 1):
        texts[str(n)] = Fraction(n)
        texts[f"{n}/"] = Fraction(n, 2)
        if lenient:
            texts[f"{n}//"] = Fraction(n, 4)
        for d in denominators:
            texts[f"{n}/{d}"] = Fraction(n, d)
    for d in denominators:
        texts[f"/{d}"] = Fraction(1, d)
    return texts


# The note lengths a musician writes, one spelling each, in units of L: 1/4 (a 32nd note at
# L:1/8), 1/2, dotted 1/2, 1, dotted 1, 2, 3, 4, 6, 8, 12, 16.
MUSICAL_LENGTHS = ("/4", "/", "3/4", "", "3/2", "2", "3", "4", "6", "8", "12", "16")

# Shortest written note and shortest dotted note of a folk tune, in whole notes: a sixteenth and a
# dotted eighth.  Shorter values (a 32nd, a dotted sixteenth) are what a model reaches for to
# squeeze a bar shut (``A3/4c/4`` at L:1/8), not what the tunes it learned from write.
SHORTEST_NOTE = Fraction(1, 16)
SHORTEST_DOTTED = Fraction(3, 16)


def musical_lengths(unit: str | None) -> tuple[str, ...]:
    """:data:`MUSICAL_LENGTHS` that make a musical note under ``L:unit`` (all of them if ``unit`` is unknown).

    >>> musical_lengths("1/8")
    ('/', '', '3/2', '2', '3', '4', '6', '8', '12', '16')
    >>> musical_lengths("1/16")[:3], musical_lengths("1/4")[:3]
    (('', '2', '3'), ('/4', '/', '3/4'))
    """
    if not unit or "/" not in unit:
        return MUSICAL_LENGTHS
    num, den = unit.split("/", 1)
    try:
        base = Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return MUSICAL_LENGTHS
    keep = []
    for text in MUSICAL_LENGTHS:
        whole = length_value(text) * base
        dotted = whole.numerator % 3 == 0
        if whole >= SHORTEST_NOTE and (not dotted or whole >= SHORTEST_DOTTED):
            keep.append(text)
    return tuple(keep)


def length_value(text: str) -> Fraction:
    """Value of a note-length suffix (units of ``L``); ``text`` must be well formed.

    >>> length_value("3/2"), length_value("//"), length_value("4")
    (Fraction(3, 2), Fraction(1, 4), Fraction(4, 1))
    """
    if "/" not in text:
        return Fraction(int(text)) if text else Fraction(1)
    num, _, rest = text.partition("/")
    n = int(num) if num else 1
    if rest == "" or set(rest) == {"/"}:
        return Fraction(n, 2 ** (rest.count("/") + 1))
    return Fraction(n, int(rest))


# -- tuplets ----------------------------------------------------------------------------------

_TUPLET_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}  # p -> q; 5, 7, 9 depend on the meter


def tuplet_texts() -> list[str]:
    """Tuplet openers ``(p``, ``(p:q``, ``(p:q:r``, ``(p::r`` with single digits, p in 2..9."""
    out = []
    for p in range(2, 10):
        out += [f"({p}"] + [f"({p}::{r}" for r in range(1, 10)]
        for q in range(1, 10):
            out += [f"({p}:{q}"] + [f"({p}:{q}:{r}" for r in range(1, 10)]
    return out


def tuplet_ratio(text: str, compound: bool) -> tuple[int, int, int]:
    """``(p, q, r)`` of a tuplet opener: ``p`` notes in the time of ``q``, applied to ``r`` notes.

    Defaults as music21 ``ABCTuplet.updateRatio``: q = 3 for p in (2, 4, 8), 2 for (3, 6), and
    for 5, 7, 9 it is 3 in compound meters, else 2; r defaults to p.

    >>> tuplet_ratio("(3", False), tuplet_ratio("(5", True), tuplet_ratio("(3:2:4", False)
    ((3, 2, 3), (5, 3, 5), (3, 2, 4))
    """
    parts = text[1:].split(":")
    p = int(parts[0])
    q = int(parts[1]) if len(parts) > 1 and parts[1] else _TUPLET_Q.get(p, 3 if compound else 2)
    r = int(parts[2]) if len(parts) > 2 and parts[2] else p
    return p, q, r


# -- bar lines --------------------------------------------------------------------------------

# The bar lines music21 reads as one token (ABC_BARS in music21.abcFormat); others such as
# ``||:`` or ``:|]`` split into a bar line plus a stray ``:``/``]``.
STRICT_BARS = ("|", "||", "|]", "[|", "|:", ":|", "::", "|1", "|2", ":|1", ":|2", "[1", "[2")
LENIENT_EXTRA_BARS = (
    ":||", ":|]", ":|:", ":||:", "||:", "[|:", "|::", "::|", "[|]", "|||", "||]", "|:|",
    "|3", "|4", "[3", "[4", ":|3", ":||1", ":||2", "||1", "||2", ":::",
)  # fmt: skip
FINAL_BARS = frozenset({"|", "||", "|]", ":|", ":||", ":|]", "[|]", "|||", "||]"})  # may end a tune


def bar_texts(lenient: bool) -> list[str]:
    return list(STRICT_BARS) + (list(LENIENT_EXTRA_BARS) if lenient else [])


def is_section_bar(text: str) -> bool:
    """Double, final and repeat bar lines: those music21 draws as something other than ``|``.

    Endings (``|1``, ``[2``) are plain bar lines to music21 unless it also builds a repeat
    bracket, so they do not count.
    """
    return text not in ("|", "|1", "|2", "|3", "|4", "[1", "[2", "[3", "[4")


# -- decorations and chord symbols ----------------------------------------------------------

DECORATION_NAMES = (
    "trill", "fermata", "accent", "emphasis", "mordent", "lowermordent", "uppermordent",
    "pralltriller", "roll", "turn", "tenuto", "breath", "upbow", "downbow", "segno", "coda",
    "fine", "p", "pp", "ppp", "mp", "mf", "f", "ff", "fff", "sfz", "wedge", "open", "thumb",
    "snap", "0", "1", "2", "3", "4", "5",
)  # fmt: skip  # ABC 2.1 section 4.14; music21 skips them, so none changes a duration

CHORD_QUALITIES = (
    "",
    "m",
    "7",
    "m7",
    "maj7",
    "dim",
    "dim7",
    "aug",
    "+",
    "sus2",
    "sus4",
    "6",
    "m6",
    "9",
    "m9",
    "add9",
    "m7b5",
)


def chord_symbol_texts() -> list[str]:
    """Chord symbols ``root[#b][quality][/bass]`` that music21's ``ChordSymbol`` reads."""
    roots = [n + a for n in "ABCDEFG" for a in ("", "#", "b")]
    basses = [""] + ["/" + r for r in roots]
    return [r + q + b for r in roots for q in CHORD_QUALITIES for b in basses]


__all__ = [
    "CHORD_QUALITIES",
    "CONTROL_RANGES",
    "DECORATION_NAMES",
    "FINAL_BARS",
    "STRICT_BARS",
    "ValueSet",
    "bar_texts",
    "chord_symbol_texts",
    "control_values",
    "is_section_bar",
    "key_sharps",
    "key_values",
    "MUSICAL_LENGTHS",
    "SHORTEST_DOTTED",
    "SHORTEST_NOTE",
    "musical_lengths",
    "length_texts",
    "length_value",
    "meter_info",
    "meter_values",
    "tempo_values",
    "tuplet_ratio",
    "tuplet_texts",
    "unit_values",
]
