"""Note groups and note prefixes of the ABC state machine (see the machine).

Chords ``[CEG]``, grace groups ``{ga}``, quoted chord symbols ``"Am"``, ``!decorations!``, slurs
and tuplets ``(3``, and broken rhythm ``A>B``.  :class:`NoteGroupRules` has two kinds of methods:
*openers* (``open_*``: the character that starts a group, read from ``idle``) and *mode* methods
(``bracket``, ``group``, ``inner_note``, ``quote``, ``bang``, ``paren``, ``tuplet``, ``broken``,
``group_accidental``), each taking a state and one character and returning the next state or
``None``.  A mode that ends on a character it does not take hands it back through ``reread``
(read it again from ``idle``: longest match, as music21's tokenizer does).

State fields it owns: ``field`` (``c`` chord / ``g`` grace group), ``count`` (notes in the group),
``slur``, ``need_note`` (a prefix waits for its note) and ``buf`` of a symbol or opener being read;
durations are :class:`~rwkv_music.formats.abc.grammar.timing.BarTiming`'s.
"""

from __future__ import annotations

from typing import Callable

from rwkv_music.formats.abc.grammar.header import PRINTABLE
from rwkv_music.formats.abc.grammar.pitch import ACCIDENTALS, PITCHES, PitchRules
from rwkv_music.formats.abc.grammar.state import ZERO, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.timing import LEFT_FACTOR, LENGTH_CHARS, BarTiming
from rwkv_music.formats.abc.grammar.values import DECORATION_NAMES, ValueSet, chord_symbol_texts

Reread = Callable[[AbcState, str], "AbcState | None"]  # read a character again from body/idle


class NoteGroupRules:
    """Chords, grace groups, chord symbols, decorations, slurs, tuplets and broken rhythm.

    Args:
        config: the grammar configuration.
        timing: the bar timing (note starts, tuplet openers, broken-rhythm lookahead, bar lines).
        pitches: the pitch rules (letters and octave marks inside a group).
        reread: reads a character from ``idle`` (the body's idle rule).
    """

    def __init__(self, config: AbcGrammarConfig, timing: BarTiming, pitches: PitchRules, reread: Reread) -> None:
        self.config = config
        self.lenient = config.lenient
        self.timing = timing
        self.pitches = pitches
        self.reread = reread
        self.decorations = None if config.lenient else ValueSet(DECORATION_NAMES)
        self.chord_names = ValueSet(chord_symbol_texts()) if config.chord_symbols == "chords" else None
        self._tuplet_memo: tuple[AbcState | None, AbcState | None] = (None, None)  # a cache only

    # -- openers (from idle) -------------------------------------------------------------------
    def open_bracket(self, s: AbcState, c: str) -> AbcState | None:
        if not self.lenient:  # "[" must start a chord that fits or a bar line that may end the bar
            timing = self.timing
            chord = self.config.chords and timing.music_ok(s) and not timing.cadence_bar(s)
            bar = s.broken is None and not s.need_note and s.tuplet is None and timing.bar_text(s, "[") is not None
            if not (chord or bar):
                return None
        return s.replace(mode="lbr", after_note=False, last=ZERO, no_left=False, line_start=False)

    def open_paren(self, s: AbcState, c: str) -> AbcState | None:
        if not self.lenient and (not self.timing.music_ok(s) or s.slur >= self.config.max_slur_depth):
            return None  # strict: "(" must be able to open a slur (a tuplet may not be possible)
        return s.replace(mode="paren", after_note=False, last=ZERO, no_left=False, line_start=False)

    def close_slur(self, s: AbcState, c: str) -> AbcState | None:
        if self.lenient:  # keeps ``last``: humans write (AB)>c
            return s.replace(after_note=False, no_left=False, line_start=False, slur=max(s.slur - 1, 0))
        if s.slur == 0 or s.need_note:
            return None
        return s.replace(slur=s.slur - 1, after_note=False, last=ZERO, no_left=False)

    def open_broken(self, s: AbcState, c: str) -> AbcState | None:
        if self.lenient:
            return s.replace(mode="brk", buf=c) if s.last > 0 else None
        if not (self.config.broken_rhythm and s.after_note and not s.no_left and s.tuplet is None):
            return None
        if self.timing.cadence_bar(s):
            return None
        t = s.replace(mode="brk", buf=c)
        return t if self.timing.broken_ok(t, LEFT_FACTOR[c]) else None

    def open_quote(self, s: AbcState, c: str) -> AbcState | None:
        if self.config.chord_symbols == "none" or (not self.lenient and not self.timing.music_ok(s)):
            return None
        return s.replace(mode="quote", buf="", after_note=False, last=ZERO, no_left=False, line_start=False)

    def open_bang(self, s: AbcState, c: str) -> AbcState | None:
        if not self.config.named_decorations or (not self.lenient and not self.timing.music_ok(s)):
            return None
        return s.replace(mode="bang", buf="", after_note=False, last=ZERO, no_left=False, line_start=False)

    def open_grace(self, s: AbcState, c: str) -> AbcState | None:
        if not self.config.grace_notes:
            return None
        if not self.lenient and (s.tuplet is not None or not self.timing.music_ok(s)):
            return None  # music21 counts grace notes as tuplet notes
        return s.replace(
            mode="group", field="g", count=0, buf="", after_note=False, last=ZERO, no_left=False, line_start=False
        )

    # -- chords and grace groups ---------------------------------------------------------------
    def bracket(self, s: AbcState, c: str) -> AbcState | None:
        """After ``[``: a chord, a bar line ``[|`` / ``[1``, or an inline field ``[K:G]``."""
        if c in PITCHES or c in ACCIDENTALS:
            if not self.config.chords or self.timing.cadence_bar(s):
                return None  # (no chord in the last bar: its last note must be the tonic)
            t = self.timing.begin(s)
            return self.group(t.replace(mode="group", field="c", count=0, buf=""), c) if t is not None else None
        if s.broken is not None or s.need_note or (s.tuplet is not None and not self.lenient):
            return None
        if c in "|0123456789":
            return self.timing.bar_text(s, "[" + c)
        if self.lenient and c in "KMLPVIT":
            return s.replace(mode="ilet", field=c)
        return None

    def group(self, s: AbcState, c: str) -> AbcState | None:
        """Inside ``[...]`` (field ``c``) or ``{...}`` (field ``g``), between notes."""
        if c in ACCIDENTALS:
            if self.config.key_scale_only or s.count >= self._limit(s) or self.timing.cadence_bar(s):
                return None
            return s.replace(mode="gacc", buf=c)
        if c in PITCHES:
            return self._inner_pitch(s, c)
        if s.field == "c" and c == "]" and s.count:
            return s.replace(mode="clen", buf="", field="", count=0)
        if s.field == "g" and c == "}" and s.count:
            return s.replace(mode="idle", buf="", field="", count=0, need_note=not self.lenient)
        if s.field == "g" and c == "/" and not s.count and not s.buf:
            return s.replace(buf="/")  # acciaccatura {/g}
        if self.lenient and c in " -":
            return s
        return None

    def _limit(self, s: AbcState) -> int:
        return self.config.max_chord_notes if s.field == "c" else self.config.max_grace_notes

    def _inner_pitch(self, s: AbcState, c: str) -> AbcState | None:
        if s.count >= self._limit(s):
            return None
        return self.pitches.pitch(s.replace(count=s.count + 1), c, "gnote")

    def group_accidental(self, s: AbcState, c: str) -> AbcState | None:
        """After ``^``/``_``/``=`` inside a group: a second ``^``/``_``, then the letter."""
        if c == s.buf and c in "^_":
            return s.replace(buf=c + c)
        if c not in PITCHES:
            return None
        return self._inner_pitch(s.replace(mode="group"), c)

    def inner_note(self, s: AbcState, c: str) -> AbcState | None:
        """A note inside a chord or grace group: octave marks and (grace, lenient) a length."""
        timing = self.timing
        if c in "',":
            return self.pitches.octave_mark(s, c)
        if c in LENGTH_CHARS and (s.field == "g" or self.lenient):
            text = s.buf + c
            return s.replace(buf=text) if timing.length_set.is_prefix(text) else None
        if not timing.length_set.is_complete(s.buf) or not self.pitches.in_range(s):
            return None
        t = s.replace(mode="group", buf="", case="")
        if s.field == "c" and s.count == 1 and s.buf:  # music21: a chord lasts as long as its first note
            t = t.replace(nfac=s.nfac * timing.lengths[s.buf])
        return self.group(t, c)

    # -- quoted chord symbols, !decorations! ------------------------------------------------------
    def quote(self, s: AbcState, c: str) -> AbcState | None:
        return self._symbol(s, c, '"', self.chord_names)

    def bang(self, s: AbcState, c: str) -> AbcState | None:
        return self._symbol(s, c, "!", self.decorations)

    def _symbol(self, s: AbcState, c: str, close: str, names: ValueSet | None) -> AbcState | None:
        """Text up to ``close``, one of ``names`` (``None``: any printable text)."""
        if c == close:
            if names is not None and not names.is_complete(s.buf):
                return None
            return s.replace(mode="idle", buf="", need_note=not self.lenient)
        if c not in PRINTABLE:
            return None
        if names is None:
            return s
        return s.replace(buf=s.buf + c) if names.is_prefix(s.buf + c) else None

    # -- slurs and tuplets ------------------------------------------------------------------------
    def paren(self, s: AbcState, c: str) -> AbcState | None:
        """After ``(``: a digit opens a tuplet, anything else makes it a slur."""
        if c.isdigit():
            if not self.config.tuplets or (s.tuplet is not None and not self.lenient) or self.timing.cadence_bar(s):
                return None
            return self.timing.tuplet_text(s, "(" + c)
        if not self.lenient and s.slur >= self.config.max_slur_depth:
            return None
        return self.reread(self.end_paren(s), c)

    def end_paren(self, s: AbcState) -> AbcState:
        """``(`` not followed by a digit: a slur opens; its note follows."""
        return s.replace(mode="idle", slur=s.slur + 1, need_note=not self.lenient)

    def tuplet(self, s: AbcState, c: str) -> AbcState | None:
        """A tuplet opener grows by ``c``, or ends and ``c`` is read again."""
        t = self.timing.tuplet_text(s, s.buf + c)
        if t is not None:
            return t
        last, done = self._tuplet_memo  # callers try every byte on one state
        if last is not s:
            done = self.timing.end_tuplet(s)
            self._tuplet_memo = (s, done)
        # done is None if r notes in the time of q cannot end on the grid in this bar
        return self.reread(done, c) if done is not None else None

    def broken(self, s: AbcState, c: str) -> AbcState | None:
        """``>``, ``>>``, ``>>>`` (or ``<``...): then the right-hand note at once."""
        if c == s.buf[0] and len(s.buf) < 3:
            t = s.replace(buf=s.buf + c)
            return t if self.timing.broken_ok(t, LEFT_FACTOR[t.buf]) else None
        if not (c in PITCHES or c in ACCIDENTALS or c in "z[" or self.lenient):
            return None
        return self.reread(self.timing.end_broken(s), c)


__all__ = ["NoteGroupRules", "Reread"]
