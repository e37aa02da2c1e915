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
``after_repeat``, ``carry``, ``closed``, ``full_bars``), the strict metre's pickup pairs
(``pickup`` in grid units, ``sect_pick``, ``sect_full``) and the form's bar counting (``part``,
``bar_no``, ``need_nl``, ``on_tonic``).  Every quantity is a small number (a
:class:`~fractions.Fraction` of a whole note or an int), so it can become an array later.

**The bar's cap.**  Under a form a bar may hold less than the metre: a part's pickup holds
exactly the tune's pickup ``p`` and a part's closing bar ``bar - p`` (:meth:`BarTiming.cap`).
Both are multiples of the grid, so the grid argument holds for them too.  In the tune's last
bar (with a cadence) every plain note must leave room for a final tonic of at least an eighth
note (:meth:`BarTiming.cadence_length`), unless it is that tonic, so the tonic can always still
follow and the tune never ends on a flick.  In 4/4, 3/4 and 6/8 the floor is a quarter note
(:data:`LONG_ENDING_METERS`): the final tonic starts a quarter or more before the tune's end, held or
followed by a rest, and is never squeezed onto the last off-beat.
"""

from __future__ import annotations

from fractions import Fraction

from rwkv_music.formats.abc.grammar.state import ZERO, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.values import (
    FINAL_BARS,
    SHORTEST_DOTTED,
    SHORTEST_NOTE,
    ValueSet,
    bar_texts,
    is_section_bar,
    length_texts,
    musical_lengths,
    tuplet_ratio,
    tuplet_texts,
)

LENGTH_CHARS = frozenset("0123456789/")
PAIR_BARS = frozenset({"||", "|]", "[|", "|:", ":|", "::"})  # section lines a pickup pair may span
FORM_BARS = ("|", "||", "|]", ":|")
PART_ENDS = frozenset({"||", ":|"})  # form: the end of a part that is not the last
TUNE_ENDS = frozenset({"|]", ":|"})  # form: the end of the tune
LEFT_FACTOR = {">": Fraction(3, 2), ">>": Fraction(7, 4), ">>>": Fraction(15, 8),
               "<": Fraction(1, 2), "<<": Fraction(1, 4), "<<<": Fraction(1, 8)}  # fmt: skip

# Metres whose tunes end on a quarter note or longer in music21's non-Essen collections: 4/4 91 %,
# 3/4 92 %, 6/8 86 % of the tunes (last note, broken rhythm aside; measured 2026-12-07).  In 2/4, 9/8,
# C and C| a shorter final note is common (28-69 % end on a quarter or longer): there an eighth is the floor.
# The floor covers the tonic and the rest that may follow it ("D z2" in 6/8 keeps it; "A2 z G" in 4/4 not).
LONG_ENDING_METERS = frozenset({"4/4", "3/4", "6/8"})


# What every bar line resets: no token is being read and no note is pending.
_AFTER_BARLINE: dict[str, object] = dict(
    mode="idle", buf="", field="", after_note=False, no_left=False, line_start=False, last=ZERO
)


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
        self.form = config.form
        self.empty_bars = config.empty_bars or config.lenient
        self.cadence = config.form and config.cadence
        meter = (config.meter or "").replace(" ", "")
        self.final_floor = Fraction(1, 4) if meter in LONG_ENDING_METERS else Fraction(1, 8)  # whole notes
        self.bars_per_line = config.bars_per_line
        self.allow_pickup = config.pickup
        lengths = length_texts(config.max_length_numerator, config.length_denominators, config.lenient)
        chosen = config.note_lengths
        if chosen is None and config.form:
            chosen = musical_lengths(config.unit)
        # the same floor for both sides of a broken rhythm (A>B at L:1/16 would make a 32nd)
        self.min_note = SHORTEST_NOTE if config.form and config.note_lengths is None and config.unit else ZERO
        if chosen is not None:
            lengths = {text: value for text, value in lengths.items() if text in chosen}
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
        texts = bar_texts(config.lenient)
        if config.form:  # section bar lines only where a part ends; no endings
            texts = [t for t in texts if t in FORM_BARS]
        self.bars = ValueSet(texts)
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
        return s.bar_len is None or s.pos < self.cap(s)

    def cap(self, s: AbcState) -> Fraction:
        """The most the current bar may hold: the bar, or (form) the pickup or the closing bar.

        ``bar_len`` must be known.
        """
        bar = s.bar_len
        if not self.form or s.pickup <= 0:  # no form, no pickup, or the first bar (undecided)
            return bar  # type: ignore[return-value]
        p = s.pickup * self._grid(s)
        if s.bar_no < 0:
            return p
        return bar - p if s.bar_no + 1 == s.bars else bar  # type: ignore[operator]

    def target(self, s: AbcState) -> Fraction:
        """The length the current bar is to reach (the completer's aim); ``bar_len`` must be known."""
        if self.form:
            return self.cap(s)
        bar = s.bar_len
        if self.short_bars == "paired" and s.sect_pick and s.sect_full >= 2:
            short = bar - s.pickup * self._grid(s)  # type: ignore[operator]
            if s.pos <= short:
                return short
        return bar  # type: ignore[return-value]

    def cadence_bar(self, s: AbcState) -> bool:
        """(form + cadence) The current bar is the tune's last: its last note must be the tonic."""
        return self.cadence and bool(s.tonic) and s.part == s.parts - 1 and s.bar_no >= 0 and s.bar_no + 1 == s.bars

    def _reserve(self, s: AbcState) -> bool:
        """The note or rest being read is a plain one in the tune's last bar (it must leave room for the tonic)."""
        if not self.cadence or s.nkind != 0 or s.mode not in ("note", "rest") or not self.cadence_bar(s):
            return False  # (a note that has not got its letter yet is checked again when it has)
        return True

    def _may_end(self, s: AbcState) -> bool:
        """The note or rest being read may be the tune's last: the tonic, or a rest after it."""
        return s.ton if s.mode == "note" else (s.mode == "rest" and s.on_tonic)

    def cadence_length(self, s: AbcState) -> Fraction:
        """Shortest final tonic (with the rest that may follow it), in units of ``L``: an eighth note (a
        cadence is no 32nd-note flick), a quarter in :data:`LONG_ENDING_METERS`, or the whole last bar
        when a pickup leaves it shorter."""
        if not s.unit:
            return self.grain
        return min(max(self.grain, self.final_floor / s.unit), self.cap(s) / s.unit)

    def _cadence_fits(self, s: AbcState, value: Fraction, left: Fraction) -> bool:
        """In the last bar, a plain note of ``value`` leaving ``left`` (units of ``L``) keeps a cadence possible."""
        cad = self.cadence_length(s)
        return left >= cad or (left == 0 and value >= cad and self._may_end(s))

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
        room = (self.cap(s) - s.pos) / factor if s.bar_len is not None else ZERO
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
            if self._reserve(s):  # the tune's last bar: the tonic must still be able to close it
                return any(v <= s.room and self._cadence_fits(s, v, s.room - v) for v in self._length_ext[text])
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
        start, room = int(s.pos / unit), int(self.cap(s) / unit)
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
        start, room = int(s.pos / unit), int(self.cap(s) / unit)
        per_grain = int((s.nfac / s.unit) * 8)  # type: ignore[operator]
        for k in grains:
            if self._too_short(k * self.grain * s.nfac):  # type: ignore[operator]
                continue
            end = start + k * per_grain
            if end > room:
                return False
            if end % 8 == 0:
                return True
        return False

    def _too_short(self, dur: Fraction) -> bool:
        """(form, known unit) Shorter than a sixteenth, or a dotted note shorter than a dotted eighth."""
        return bool(self.min_note) and (dur < self.min_note or (dur.numerator % 3 == 0 and dur < SHORTEST_DOTTED))

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
            if not self.lenient and pos > self.cap(s):
                return None  # (lenient bars may overflow: see close_bar)
            if not self.lenient and self._reserve(s):
                value = self.lengths[text]
                if not self._cadence_fits(s, value, (self.cap(s) - pos) / s.unit):
                    return None
            off_grid = not self.lenient and (pos / self._grid(s)).denominator != 1
            if s.nkind == 2 and (off_grid or self._too_short(dur)):
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
            ton=False,
            on_tonic=(s.ton if s.mode == "note" else s.on_tonic and s.mode == "rest") if self.cadence else False,
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
        if pos > (s.bar_len if self.lenient else self.cap(s)):
            return False
        if self.lenient:
            return pos < s.bar_len
        if s.last * min(left, 2 - left) < self.min_note:  # both notes of a pair of equals stay >= the floor
            return False
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
        """:meth:`_close_bar`, and no empty bar on a line (``| |``) unless ``config.empty_bars``."""
        if not self.empty_bars and not s.bar_notes and s.lbar:
            return None
        t = self._close_bar(s, text)
        if t is None or self.empty_bars:
            return t
        return t.replace(lbar=2 if not s.bar_notes else 1)  # (lbar is 0 here)

    def _close_bar(self, s: AbcState, text: str) -> AbcState | None:
        """A bar line ``text`` ends the current bar; ``None`` if the bar may not end here.

        A bar with no notes ends silently (``|`` then ``|:`` is one boundary).  A full bar may
        always end.  A short bar only if it is the first bar (pickup), if ``text`` is a section
        bar line (double, final or repeat bar line), or if it follows one -- with
        ``pair_short_bars``, only when it completes the short bar before that line.

        Lenient only: a bar may overflow, as in Essen tunes whose bar lines drift from the meter;
        like music21's re-barring, whole bars are counted and the rest flows into the next bar.
        """
        if self.form:
            return self._close_form(s, text)
        if self.short_bars == "paired" and s.bar_len is not None and s.bar_notes:
            return self._close_paired(s, text)
        section = is_section_bar(text) or (self.lenient and text != "|")  # lenient: endings too
        final = text in FINAL_BARS
        if not s.bar_notes:
            if s.after_repeat and not self.lenient:
                return None  # music21 would drop the empty bar and the repeat sign with it
            if self.short_bars == "paired" and not self.lenient and s.pickup != 0 and not self._paired_empty(s, text):
                return None
            return s.replace(
                **_AFTER_BARLINE,
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
            **_AFTER_BARLINE,
            pos=rest,
            bar_notes=rest > 0,
            first_bar=False,
            after_section=section,
            after_repeat=text.endswith(":"),
            carry=carry,
            closed=final and not rest,
            full_bars=min(s.full_bars + int(full), self.min_full_bars),
        )

    def _closed(self, s: AbcState, text: str, **changes: object) -> AbcState:
        """The state after bar line ``text`` closed the (non-empty) current bar."""
        return s.replace(
            **_AFTER_BARLINE,
            pos=ZERO,
            bar_notes=False,
            first_bar=False,
            after_repeat=text.endswith(":"),
            carry=None,
            **changes,
        )

    def _close_paired(self, s: AbcState, text: str) -> AbcState | None:
        """The strict metre rule (``short_bars="paired"``), without a form.

        Every bar is full except pairs inside one section: the section opens with a pickup of
        the tune's pickup length ``p`` (the tune's first bar sets ``p``; later sections may open
        with it right after a section bar line of :data:`PAIR_BARS`), and then its closing bar
        -- ended by a :data:`PAIR_BARS` line, after at least two full bars -- lasts ``bar - p``.
        A section that opened with a pickup may only be closed that way (and no ending may
        come inside it), so no short bar is left without its partner.
        """
        bar, pos = s.bar_len, s.pos
        grid = self._grid(s)
        pair = text in PAIR_BARS
        section = is_section_bar(text)
        ending = text[-1:].isdigit()
        changes: dict[str, object] = {}
        if ending and not (s.pickup == 0 or s.first_bar):
            return None  # a tune with a pickup has no endings (a reader regroups sections at [2)
        if pos == bar:
            if s.sect_pick and (section or ending):
                return None  # the section's pickup would stay unpaired
            full_bars = min(s.full_bars + 1, self.min_full_bars)
            if section:
                changes = dict(sect_pick=False, sect_full=0)
            else:
                changes = dict(sect_full=min(s.sect_full + 1, 2))
            pickup = 0 if s.first_bar else s.pickup
            return self._closed(s, text, after_section=pair, closed=text in FINAL_BARS, full_bars=full_bars,
                                pickup=pickup, **changes)  # fmt: skip
        if s.first_bar:  # the tune's pickup
            if text != "|" or not self.allow_pickup:
                return None
            return self._closed(s, text, after_section=False, closed=False, pickup=int(pos / grid), sect_pick=True,
                                sect_full=0)  # fmt: skip
        p = max(s.pickup, 0) * grid
        if s.sect_pick and pair and p and pos == bar - p and s.sect_full >= 2:  # the closing bar completes it
            return self._closed(s, text, after_section=True, closed=text in FINAL_BARS, sect_pick=False, sect_full=0)
        if s.after_section and not s.sect_pick and p and pos == p and text == "|":  # a new section's pickup
            return self._closed(s, text, after_section=False, closed=False, sect_pick=True, sect_full=0)
        return None

    @staticmethod
    def _paired_empty(s: AbcState, text: str) -> bool:
        """("paired", a tune that has or may have a pickup) Whether ``text`` may close an empty bar.

        A reader starts a new section at a section bar line unless one just did; so a section
        line on an empty bar must follow a :data:`PAIR_BARS` line (``:| |:``) or open the tune,
        and endings do not come at all.
        """
        if text[-1:].isdigit():
            return False
        return not is_section_bar(text) or s.after_section or s.first_bar

    def _close_form(self, s: AbcState, text: str) -> AbcState | None:
        """A bar line under the form (see :class:`~rwkv_music.formats.abc.grammar.state.AbcGrammarConfig`).

        Bar ``k`` of a part (``bar_no + 1``) ends with ``|`` when full, except the part's last
        (``bars``), which lasts the bar minus the pickup and ends with a section line
        (:data:`PART_ENDS`, or :data:`TUNE_ENDS` for the last part).  The tune's first bar
        may be a pickup; then every part opens with one of that length.  A line break follows
        every ``bars_per_line`` bars and each part end; the tune ends after the last part.
        """
        if not s.bar_notes or s.bar_len is None:
            return None  # no empty bars: a second bar line would count as one more to a reader
        bar, pos = s.bar_len, s.pos
        if s.pickup < 0:  # the tune's first bar
            if pos != bar:
                if not (self.allow_pickup and s.bars >= 3 and text == "|"):
                    return None  # (a part needs two full bars for its pickup pair to count)
                if pos * 2 > bar:
                    return None  # a pickup is an upbeat: at most half a bar, as in the tunes we learn from
                return self._closed(s, text, pickup=int(pos / self._grid(s)), bar_no=0)
            s = s.replace(pickup=0)
        if s.bar_no < 0:  # a later part's pickup: cap() made it exactly the tune's pickup
            return self._closed(s, text, bar_no=0) if text == "|" and pos == self.cap(s) else None
        k = s.bar_no + 1
        if k < s.bars:
            if text != "|" or pos != bar:
                return None
            return self._closed(s, text, bar_no=k, need_nl=k % self.bars_per_line == 0)
        last = s.part == s.parts - 1
        if pos != self.cap(s) or text not in (TUNE_ENDS if last else PART_ENDS) or (last and s.slur):
            return None
        return self._closed(
            s,
            text,
            part=s.part + 1,
            bar_no=-1 if s.pickup > 0 else 0,
            need_nl=not last,
            closed=last,
            after_section=True,
        )


__all__ = ["BarTiming", "FORM_BARS", "LEFT_FACTOR", "LENGTH_CHARS", "PAIR_BARS", "PART_ENDS", "TUNE_ENDS"]
