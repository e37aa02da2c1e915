"""Note groups and note prefixes of the ABC state machine (see abc_grammar).

Chords ``[CEG]``, grace groups ``{ga}``, quoted chord symbols ``"Am"``, ``!decorations!``, slurs
and tuplets ``(3``, and broken rhythm ``A>B``.  Mixed into
:class:`rwkv_music.formats.abc.grammar.machine.AbcGrammar` (through :class:`~rwkv_music.formats.abc.grammar.body.BodyRules`);
each ``_b_*`` method takes a state and one character and returns the next state or ``None``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Callable

from rwkv_music.formats.abc.grammar.header import PRINTABLE
from rwkv_music.formats.abc.grammar.state import ZERO, AbcState
from rwkv_music.formats.abc.grammar.timing import TimingRules
from rwkv_music.formats.abc.grammar.values import tuplet_ratio

if TYPE_CHECKING:
    from rwkv_music.formats.abc.grammar.values import ValueSet

PITCHES = "CDEFGABcdefgab"
ACCIDENTALS = "^_="
LENGTH_CHARS = frozenset("0123456789/")
LEFT_FACTOR = {">": Fraction(3, 2), ">>": Fraction(7, 4), ">>>": Fraction(15, 8),
               "<": Fraction(1, 2), "<<": Fraction(1, 4), "<<<": Fraction(1, 8)}  # fmt: skip


class GroupRules(TimingRules):
    """Chords, grace groups, chord symbols, decorations, slurs, tuplets and broken rhythm."""

    _bars: ValueSet
    _tuplets: ValueSet
    _tuplet_ext: dict[str, list[str]]
    _decorations: ValueSet | None
    _chord_names: ValueSet | None
    _b_idle: Callable[[AbcState, str], AbcState | None]
    _pitch: Callable[[AbcState, str, str], AbcState | None]
    _octave_mark: Callable[[AbcState, str], AbcState | None]
    _bar_text: Callable[[AbcState, str], AbcState | None]

    # -- chords and grace groups ---------------------------------------------------------------
    def _b_bracket(self, s: AbcState, c: str) -> AbcState | None:
        """After ``[``: a chord, a bar line ``[|`` / ``[1``, or an inline field ``[K:G]``."""
        if c in PITCHES or c in ACCIDENTALS:
            if not self.config.chords:
                return None
            t = self._begin_timing(s)
            return self._b_group(t.replace(mode="group", field="c", count=0, buf=""), c) if t is not None else None
        if s.broken is not None or s.need_note or (s.tuplet is not None and not self._lenient):
            return None
        if c in "|0123456789":
            return self._bar_text(s, "[" + c)
        if self._lenient and c in "KMLPVIT":
            return s.replace(mode="ilet", field=c)
        return None

    def _b_group(self, s: AbcState, c: str) -> AbcState | None:
        """Inside ``[...]`` (field ``c``) or ``{...}`` (field ``g``), between notes."""
        if c in ACCIDENTALS:
            if self.config.key_scale_only or s.count >= self._group_limit(s):
                return None
            return s.replace(mode="gacc", buf=c)
        if c in PITCHES:
            return self._inner_pitch(s, c)
        if s.field == "c" and c == "]" and s.count:
            return s.replace(mode="clen", buf="", field="", count=0)
        if s.field == "g" and c == "}" and s.count:
            return s.replace(mode="idle", buf="", field="", count=0, need_note=not self._lenient)
        if s.field == "g" and c == "/" and not s.count and not s.buf:
            return s.replace(buf="/")  # acciaccatura {/g}
        if self._lenient and c in " -":
            return s
        return None

    def _group_limit(self, s: AbcState) -> int:
        return self.config.max_chord_notes if s.field == "c" else self.config.max_grace_notes

    def _inner_pitch(self, s: AbcState, c: str) -> AbcState | None:
        if s.count >= self._group_limit(s):
            return None
        return self._pitch(s.replace(count=s.count + 1), c, "gnote")

    def _b_inner_note(self, s: AbcState, c: str) -> AbcState | None:
        """A note inside a chord or grace group: octave marks and (grace, lenient) a length."""
        if c in "',":
            return self._octave_mark(s, c)
        if c in LENGTH_CHARS and (s.field == "g" or self._lenient):
            text = s.buf + c
            return s.replace(buf=text) if self._length_set.is_prefix(text) else None
        if not self._length_set.is_complete(s.buf) or not self._in_range(s):
            return None
        t = s.replace(mode="group", buf="", case="")
        if s.field == "c" and s.count == 1 and s.buf:  # music21: a chord lasts as long as its first note
            t = t.replace(nfac=s.nfac * self._lengths[s.buf])
        return self._b_group(t, c)

    # -- quoted chord symbols, !decorations! ------------------------------------------------------
    def _b_quote(self, s: AbcState, c: str) -> AbcState | None:
        names = self._chord_names
        if c == '"':
            if names is not None and not names.is_complete(s.buf):
                return None
            return s.replace(mode="idle", buf="", need_note=not self._lenient)
        if c not in PRINTABLE:
            return None
        if names is None:
            return s
        return s.replace(buf=s.buf + c) if names.is_prefix(s.buf + c) else None

    def _b_bang(self, s: AbcState, c: str) -> AbcState | None:
        names = self._decorations
        if c == "!":
            if names is not None and not names.is_complete(s.buf):
                return None
            return s.replace(mode="idle", buf="", need_note=not self._lenient)
        if c not in PRINTABLE:
            return None
        if names is None:
            return s
        return s.replace(buf=s.buf + c) if names.is_prefix(s.buf + c) else None

    # -- slurs and tuplets ------------------------------------------------------------------------
    def _b_paren(self, s: AbcState, c: str) -> AbcState | None:
        """After ``(``: a digit opens a tuplet, anything else makes it a slur."""
        if c.isdigit():
            if not self.config.tuplets or (s.tuplet is not None and not self._lenient):
                return None
            return self._tuplet_text(s, "(" + c)
        if not self._lenient and s.slur >= self.config.max_slur_depth:
            return None
        return self._b_idle(s.replace(mode="idle", slur=s.slur + 1, need_note=not self._lenient), c)

    def _b_tuplet(self, s: AbcState, c: str) -> AbcState | None:
        t = self._tuplet_text(s, s.buf + c)
        if t is not None:
            return t
        done = self._finished(s)  # None if r notes in the time of q cannot end on the grid in this bar
        return self._b_idle(done, c) if done is not None else None

    def _tuplet_text(self, s: AbcState, text: str) -> AbcState | None:
        """A longer tuplet opener, if some completion of it can still fit the bar."""
        if not self._tuplets.is_prefix(text):
            return None
        t = s.replace(mode="tup", buf=text, after_note=False, last=ZERO, no_left=False, line_start=False)
        return t if any(self._tuplet_viable(t, full) for full in self._tuplet_ext[text]) else None

    def _tuplet_viable(self, s: AbcState, text: str) -> bool:
        if self._lenient:
            return True
        p, q, r = tuplet_ratio(text, s.compound)
        return self._begin_timing(s.replace(mode="idle", buf="", tuplet=(p, q, r))) is not None

    def _b_broken(self, s: AbcState, c: str) -> AbcState | None:
        """``>``, ``>>``, ``>>>`` (or ``<``...): then the right-hand note at once."""
        if c == s.buf[0] and len(s.buf) < 3:
            t = s.replace(buf=s.buf + c)
            return t if self._broken_ok(t, LEFT_FACTOR[t.buf]) else None
        if not (c in PITCHES or c in ACCIDENTALS or c in "z[" or self._lenient):
            return None
        left = LEFT_FACTOR[s.buf]
        t = s.replace(
            mode="idle",
            buf="",
            pos=s.pos + s.last * (left - 1),
            broken=2 - left,
            after_note=False,
            last=ZERO,
            no_left=False,
        )
        return self._b_idle(t, c)


__all__ = ["ACCIDENTALS", "GroupRules", "LEFT_FACTOR", "LENGTH_CHARS", "PITCHES"]
