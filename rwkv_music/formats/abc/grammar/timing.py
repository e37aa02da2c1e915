"""Timing rules of the ABC state machine: note durations, lookahead, tuplets and bar lines.

All durations are exact :class:`~fractions.Fraction` s of a whole note.  A note lasts
``length * L`` times its tuplet factor ``q/p`` and broken-rhythm factor (``A>B``: 3/2 and 1/2,
``>>``: 7/4 and 1/4, ``>>>``: 15/8 and 1/8, ``<`` the other way round), as music21 reads it.

**The grid.**  In strict mode every bar position between notes is a multiple of the grid
``G = L * g`` where ``g`` is the shortest note length (1/16 of ``L`` by default).  Plain notes
are multiples of ``G`` anyway; a tuplet (as a whole) and a broken-rhythm pair must also end on
the grid.  Because bar lengths are multiples of ``G`` too (meter denominators <= 16), whatever
is left of a bar can always be filled with plain notes -- this is what makes the machine free of
dead ends.  While a tuplet note or the right note of a broken pair is being read,
:meth:`BarTiming.length_ok` checks that some length still lets the group end on the grid
inside the bar (integer arithmetic over the few possible lengths).

:class:`BarTiming` owns the timing fields of :class:`~rwkv_music.formats.abc.grammar.state.AbcState`:
``bar_len``/``compound``/``unit`` (read), ``pos``, ``nfac``, ``nkind``, ``room``, ``last``,
``tuplet``, ``broken`` and the bar flags (``bar_notes``, ``first_bar``, ``after_section``,
``after_repeat``, ``carry``, ``closed``, ``full_bars``).  Every quantity is a small number (a
:class:`~fractions.Fraction` of a whole note or an int), so it can become an array later.
"""

from __future__ import annotations

from fractions import Fraction

from rwkv_music.formats.abc.grammar.state import ZERO, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.values import (
    FINAL_BARS,
    ValueSet,
    bar_texts,
    is_section_bar,
    length_texts,
    tuplet_ratio,
    tuplet_texts,
)

LENGTH_CHARS = frozenset("0123456789/")
LEFT_FACTOR = {">": Fraction(3, 2), ">>": Fraction(7, 4), ">>>": Fraction(15, 8),
               "<": Fraction(1, 2), "<<": Fraction(1, 4), "<<<": Fraction(1, 8)}  # fmt: skip


def _simple(value: Fraction) -> bool:
    """A length of one notehead with at most three dots: 2**k * (1, 3, 7 or 15)."""
    odd = value.numerator
    while odd % 2 == 0:
        odd //= 2
    return odd in (1, 3, 7, 15)


class BarTiming:
    """Durations, the grid lookahead, tuplet openers and the bar-line rules of one configuration.

    Its own data are tables derived from the configuration (note-length suffixes and their
    values in grains, bar lines, tuplet openers) and a one-entry cache; it reads and returns
    :class:`AbcState` values.

    Args:
        config: the grammar configuration.
    """

    def __init__(self, config: AbcGrammarConfig) -> None:
        self.lenient = config.lenient
        self.short_bars = config.short_bars
        self.pair_short_bars = config.pair_short_bars
        self.min_full_bars = config.min_full_bars
        lengths = length_texts(config.max_length_numerator, config.length_denominators, config.lenient)
        self.lengths = lengths  # length suffix -> value in units of L
        self.length_set = ValueSet(lengths)
        ext: dict[str, set[Fraction]] = {}
        for text, value in lengths.items():
            for i in range(len(text) + 1):
                ext.setdefault(text[:i], set()).add(value)
        self._length_ext = {p: tuple(sorted(v)) for p, v in ext.items()}  # prefix -> values of its completions
        # music21 cannot put a tuplet on a note of "complex" length (5/8: a tied note), so tuplet
        # notes take one notehead with up to three dots: 2**k * (1, 3, 7 or 15)
        grain = min(lengths.values())
        self.grain = grain  # shortest length, units of L
        # the same in grains (integers), for the tuplet and broken-rhythm lookahead
        self._ext_grains = {p: tuple(int(v / grain) for v in values) for p, values in self._length_ext.items()}
        self._simple_grains = {p: tuple(int(v / grain) for v in values if _simple(v))
                               for p, values in self._length_ext.items()}  # fmt: skip
        best: dict[Fraction, str] = {}
        for text in sorted(lengths, key=lambda x: (len(x), x)):
            best.setdefault(lengths[text], text)
        # one suffix per value (the shortest): by text length, and by value
        self.length_choices = sorted(((t, v) for v, t in best.items()), key=lambda tv: (len(tv[0]), tv[1]))
        self.length_choices_by_value = sorted(self.length_choices, key=lambda tv: tv[1])
        simple = {v for v in lengths.values() if _simple(v)}
        run = 1
        while grain * (run + 1) in simple:
            run += 1
        self.run = run  # tuplet-note lengths grain, 2*grain, ..., run*grain all exist (tuplet lookahead)
        self.bars = ValueSet(bar_texts(config.lenient))
        self.bar_ext: dict[str, list[str]] = {}  # bar-line prefix -> its completions
        for text in sorted(self.bars.values, key=lambda t: (len(t), t)):
            for i in range(1, len(text) + 1):
                self.bar_ext.setdefault(text[:i], []).append(text)
        self.tuplets = ValueSet(tuplet_texts())
        self.tuplet_ext: dict[str, list[str]] = {}  # tuplet-opener prefix -> its completions
        for text in sorted(self.tuplets.values, key=lambda t: (len(t), t)):
            for i in range(2, len(text) + 1):
                self.tuplet_ext.setdefault(text[:i], []).append(text)
        self._memo: tuple[AbcState | None, AbcState | None] = (None, None)  # a cache only

    # -- note timing -----------------------------------------------------------------------
    def music_ok(self, s: AbcState) -> bool:
        """Room for one more note in this bar."""
        return s.bar_len is None or s.pos < s.bar_len

    def begin(self, s: AbcState) -> AbcState | None:
        """A note, rest or chord starts: its factor (unit, tuplet, broken rhythm), if it can fit.

        Remembered for the last state asked about (by identity): callers try every note letter
        on the same state.
        """
        last, begun = self._memo
        if last is not s:
            begun = self._begin(s)
            self._memo = (s, begun)
        return begun

    def _begin(self, s: AbcState) -> AbcState | None:
        factor, kind, tup = s.unit, 0, s.tuplet
        if tup is not None:
            p, q, left = tup
            factor, kind, tup = factor * Fraction(q, p), 1, (p, q, left - 1)
        if s.broken is not None:
            factor, kind = factor * s.broken, 2
        room = (s.bar_len - s.pos) / factor if s.bar_len is not None else ZERO
        t = s.replace(
            nfac=factor,
            nkind=kind,
            room=room,
            tuplet=tup,
            broken=None,
            need_note=False,
            after_note=False,
            last=ZERO,
            no_left=False,
            line_start=False,
            closed=False,
        )
        return t if self.length_ok(t, "") else None

    def _grid(self, s: AbcState) -> Fraction:
        return s.unit * self.grain

    def extend_length(self, s: AbcState, c: str) -> AbcState | None:
        """One more length character (``0-9`` or ``/``) of the note being read, if it can still fit."""
        text = s.buf + c
        if not self.length_set.is_prefix(text):
            return None
        t = s.replace(buf=text)
        return t if self.length_ok(t, text) else None

    def length_ok(self, s: AbcState, text: str) -> bool:
        """Some completion of length ``text`` fits the bar (and, strict, ends its group on the grid)."""
        if s.bar_len is None:
            return True
        if self.lenient:
            return True
        if s.nkind == 0:
            return self._length_ext[text][0] <= s.room
        if s.nkind == 2:
            return self._broken_right_ok(s, self._ext_grains[text])
        return self._tuplet_ok(s, self._simple_grains[text])

    def _tuplet_ok(self, s: AbcState, grains: tuple[int, ...]) -> bool:
        """A tuplet note of a length in ``grains``, then ``left`` more, can end the tuplet on the grid.

        In units ``U = G / p`` a note of ``k`` grains lasts ``k * q`` units; the tuplet ends on
        the grid when the position is a multiple of ``p``.  The other notes can take any sum of
        ``left .. left * run`` grains.  Integer arithmetic: this runs for every length byte.
        """
        p, q, left = s.tuplet  # type: ignore[misc]
        unit = self._grid(s) / p
        start, room = int(s.pos / unit), int(s.bar_len / unit)  # type: ignore[operator]
        top = left * self.run
        for k in grains:
            base = start + k * q
            if base > room:
                return False
            if left == 0:
                if base % p == 0:
                    return True
                continue
            for m in range(left, min(top, left + p - 1) + 1):
                end = base + q * m
                if end > room:
                    break
                if end % p == 0:
                    return True
        return False

    def _broken_right_ok(self, s: AbcState, grains: tuple[int, ...]) -> bool:
        """The right note of a broken pair, of a length in ``grains``, ends the pair on the grid in the bar."""
        unit = self._grid(s) / 8  # factors 1/8 .. 15/8
        start, room = int(s.pos / unit), int(s.bar_len / unit)  # type: ignore[operator]
        per_grain = int((s.nfac / s.unit) * 8)  # type: ignore[operator]
        for k in grains:
            end = start + k * per_grain
            if end > room:
                return False
            if end % 8 == 0:
                return True
        return False

    def end_note(self, s: AbcState, pitched: bool) -> AbcState | None:
        """Commit the note being read: its duration joins the bar; a tuplet may end.

        (The pitch range is the caller's check.)
        """
        text = s.buf
        if not self.length_set.is_complete(text):
            return None
        dur = self.lengths[text] * s.nfac
        tup = s.tuplet
        if s.bar_len is None:
            pos = ZERO
        else:
            pos = s.pos + dur
            if pos > s.bar_len and not self.lenient:  # lenient bars may overflow: see close_bar
                return None
            off_grid = not self.lenient and (pos / self._grid(s)).denominator != 1
            if s.nkind == 2 and off_grid:
                return None
            if s.nkind == 1 and tup is not None and not self.lenient:
                value = self.lengths[text]
                if not _simple(value) or (
                    off_grid if tup[2] == 0 else not self._tuplet_ok(s, (int(value / self.grain),))
                ):
                    return None  # the tuplet could no longer end on the grid in this bar
        if s.nkind == 1 and tup is not None and tup[2] == 0:
            tup = None
        return s.replace(
            mode="idle",
            buf="",
            case="",
            count=0,
            pitch=0,
            nfac=ZERO,
            nkind=0,
            room=ZERO,
            pos=pos,
            last=dur,
            tuplet=tup,
            after_note=True,
            no_left=s.nkind != 0,
            bar_notes=True,
            any_note=s.any_note or pitched,
        )

    # -- tuplets and broken rhythm -------------------------------------------------------------
    def tuplet_text(self, s: AbcState, text: str) -> AbcState | None:
        """A (longer) tuplet opener ``(p:q:r``, if some completion of it can still fit the bar."""
        if not self.tuplets.is_prefix(text):
            return None
        t = s.replace(mode="tup", buf=text, after_note=False, last=ZERO, no_left=False, line_start=False)
        return t if any(self._tuplet_viable(t, full) for full in self.tuplet_ext[text]) else None

    def _tuplet_viable(self, s: AbcState, text: str) -> bool:
        if self.lenient:
            return True
        p, q, r = tuplet_ratio(text, s.compound)
        return self.begin(s.replace(mode="idle", buf="", tuplet=(p, q, r))) is not None

    def end_tuplet(self, s: AbcState) -> AbcState | None:
        """The tuplet opener being read is complete: its notes follow (``None``: it cannot end here)."""
        if self.tuplets.is_complete(s.buf) and self._tuplet_viable(s, s.buf):
            p, q, r = tuplet_ratio(s.buf, s.compound)
            return s.replace(mode="idle", buf="", tuplet=(p, q, r), need_note=not self.lenient)
        return None

    def broken_ok(self, s: AbcState, left: Fraction) -> bool:
        """``>``/``<`` after the last note: the stretched left note fits and a right note can follow."""
        if s.bar_len is None:
            return True
        pos = s.pos + s.last * (left - 1)
        if pos > s.bar_len:
            return False
        if self.lenient:
            return pos < s.bar_len
        right = s.replace(pos=pos, nfac=s.unit * (2 - left), nkind=2)
        return self.length_ok(right, "")

    def end_broken(self, s: AbcState) -> AbcState:
        """The broken-rhythm sign being read ends: the left note stretches, the right one is owed."""
        left = LEFT_FACTOR[s.buf]
        return s.replace(
            mode="idle",
            buf="",
            pos=s.pos + s.last * (left - 1),
            broken=2 - left,
            after_note=False,
            last=ZERO,
            no_left=False,
        )

    # -- bar lines --------------------------------------------------------------------------
    def bar_text(self, s: AbcState, text: str) -> AbcState | None:
        """A (longer) bar-line prefix, if some bar line it can still become may end this bar."""
        t = s.replace(mode="bar", buf=text)
        return t if any(self.close_bar(t, full) is not None for full in self.bar_ext.get(text, ())) else None

    def end_bar(self, s: AbcState) -> AbcState | None:
        """The bar line being read is complete and ends the bar (``None``: it may not)."""
        return self.close_bar(s, s.buf) if self.bars.is_complete(s.buf) else None

    def close_bar(self, s: AbcState, text: str) -> AbcState | None:
        """A bar line ``text`` ends the current bar; ``None`` if the bar may not end here.

        A bar with no notes ends silently (``|`` then ``|:`` is one boundary).  A full bar may
        always end.  A short bar only if it is the first bar (pickup), if ``text`` is a section
        bar line (double, final or repeat bar line), or if it follows one -- with
        ``pair_short_bars``, only when it completes the short bar before that line.

        Lenient only: a bar may overflow, as in Essen tunes whose bar lines drift from the meter;
        like music21's re-barring, whole bars are counted and the rest flows into the next bar.
        """
        section = is_section_bar(text) or (self.lenient and text != "|")  # lenient: endings too
        final = text in FINAL_BARS
        if not s.bar_notes:
            if s.after_repeat and not self.lenient:
                return None  # music21 would drop the empty bar and the repeat sign with it
            return s.replace(
                mode="idle",
                buf="",
                field="",
                after_note=False,
                last=ZERO,
                no_left=False,
                line_start=False,
                after_section=s.after_section or section,
                after_repeat=text.endswith(":"),
                closed=final,
            )
        full, carry, rest = 1, None, ZERO
        if s.bar_len is not None:
            full, short = divmod(s.pos, s.bar_len)
            if full and short:  # lenient overflow
                rest, short = short, ZERO
            if short:
                policy = self.short_bars
                paired = not self.pair_short_bars or (s.carry is not None and s.carry + short == s.bar_len)
                if policy == "none" or (policy == "pickup" and not s.first_bar):
                    return None
                if policy == "sections" and not (section or s.first_bar or (s.after_section and paired)):
                    return None
                carry = short if section else None
        return s.replace(
            mode="idle",
            buf="",
            field="",
            after_note=False,
            no_left=False,
            line_start=False,
            pos=rest,
            last=ZERO,
            bar_notes=rest > 0,
            first_bar=False,
            after_section=section,
            after_repeat=text.endswith(":"),
            carry=carry,
            closed=final and not rest,
            full_bars=min(s.full_bars + int(full), self.min_full_bars),
        )


__all__ = ["BarTiming", "LEFT_FACTOR", "LENGTH_CHARS"]
