"""Body rules of the ABC state machine: notes, rests, bar lines, field lines (see abc_grammar).

Mixed into :class:`rwkv_music.formats.abc.grammar.machine.AbcGrammar`.  Each ``_b_*`` method takes a
state and one character and returns the next state or ``None``.  A token that cannot grow by
the character is finished (its duration committed, its bar line checked) and the character is
read again from ``idle`` -- longest match, as music21's tokenizer does.

Timing: ``pos`` is the committed duration of the current bar; the note being read adds
``length(buf) * nfac``.  :meth:`_length_ok` is the lookahead that keeps the machine free of
dead ends in strict mode (see :mod:`rwkv_music.formats.abc.grammar.timing`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from rwkv_music.formats.abc.grammar.groups import ACCIDENTALS, LEFT_FACTOR, LENGTH_CHARS, PITCHES, GroupRules
from rwkv_music.formats.abc.grammar.header import PRINTABLE
from rwkv_music.formats.abc.grammar.state import ZERO, AbcState
from rwkv_music.formats.abc.grammar.values import tuplet_ratio

NATURAL = {"C": 60, "D": 62, "E": 64, "F": 65, "G": 67, "A": 69, "B": 71}
NATURAL_UPPER = {p: p for p in NATURAL.values()}  # MIDI of an upper-case letter without octave marks


class BodyRules(GroupRules):
    """Lexical rules of the tune body (chords, tuplets ... in :class:`GroupRules`, timing and bar
    checks in :class:`~rwkv_music.formats.abc.grammar.timing.TimingRules`)."""

    _idle_chars: dict[str, Callable[[AbcState, str], AbcState | None]]

    def _init_body(self) -> None:
        self._idle_chars = {
            " ": self._i_space, "\t": self._i_noise, "`": self._i_noise, "y": self._i_noise,
            "\n": self._i_newline, "\\": self._i_continue, "%": self._i_comment,
            "|": self._i_bar, ":": self._i_bar, "[": self._i_bracket, "(": self._i_paren,
            ")": self._i_close_slur, "-": self._i_tie, ">": self._i_broken, "<": self._i_broken,
            '"': self._i_quote, "!": self._i_bang, "{": self._i_grace,
        }  # fmt: skip
        self._finish_memo: tuple[AbcState | None, AbcState | None] = (None, None)  # a cache only
        self._pitch_memo: tuple[AbcState | None, dict] = (None, {})  # a cache only: letters of one state
        self._bar_ext: dict[str, list[str]] = {}  # bar-line prefix -> its completions
        for text in sorted(self._bars.values, key=lambda t: (len(t), t)):
            for i in range(1, len(text) + 1):
                self._bar_ext.setdefault(text[:i], []).append(text)
        self._tuplet_ext = {}
        for text in sorted(self._tuplets.values, key=lambda t: (len(t), t)):
            for i in range(2, len(text) + 1):
                self._tuplet_ext.setdefault(text[:i], []).append(text)
        forced = {"M": self.config.meter, "L": self.config.unit, "K": self.config.key}
        self._body_fields = "".join(f for f in self.config.body_fields if forced.get(f) is None)
        strict_pitch_low = 60 - 12 * self.config.max_octave_marks
        strict_pitch_high = 83 + 12 * self.config.max_octave_marks
        low, high = self.config.pitch_range or (0, 127)
        self._pitch_bounds = (max(low, strict_pitch_low), min(high, strict_pitch_high))

    # -- idle: between tokens ---------------------------------------------------------------
    def _b_idle(self, s: AbcState, c: str) -> AbcState | None:
        if s.broken is not None and not self._lenient:
            # the right note of A>B must follow at once: music21 only pairs neighbouring tokens
            return self._note_start(s, c) if (c in PITCHES or c in ACCIDENTALS or c in "z[") else None
        if c in PITCHES or c in ACCIDENTALS or c == "z" or (self._lenient and c in "xZ"):
            return self._note_start(s, c)
        if s.line_start and c in self._body_fields and (self._lenient or self._bar_start(s)):
            return s.replace(mode="fletter", buf=c, line_start=False)
        if c in self.config.decorations:
            t = self._prefix(s)
            # music21 reads "~" and "T" as the start of a note: in strict mode the note follows at once
            return t.replace(mode="deco") if t is not None and c in "~T" and not self._lenient else t
        handler = self._idle_chars.get(c)
        return handler(s, c) if handler is not None else None

    def _bar_start(self, s: AbcState) -> bool:
        return not (s.bar_notes or s.tuplet is not None or s.need_note)

    def _prefix(self, s: AbcState) -> AbcState | None:
        """A decoration (or chord symbol, grace group, slur) that belongs to the next note."""
        if not self._lenient and not self._music_ok(s):
            return None
        return s.replace(
            mode="idle",
            buf="",
            need_note=not self._lenient,
            after_note=False,
            last=ZERO,
            no_left=False,
            line_start=False,
        )

    def _i_space(self, s: AbcState, c: str) -> AbcState | None:
        return (
            s.replace(after_note=False, last=ZERO, no_left=False, line_start=False)
            if (s.after_note or s.line_start)
            else s
        )

    def _i_noise(self, s: AbcState, c: str) -> AbcState | None:
        return s if self._lenient else None

    def _i_newline(self, s: AbcState, c: str) -> AbcState | None:
        if (s.line_start and not self._lenient) or s.need_note:
            return None
        if s.tuplet is not None and not self._lenient:
            return None
        return self._body_line(s)

    def _body_line(self, s: AbcState) -> AbcState:
        return s.replace(mode="idle", buf="", field="", line_start=True, after_note=False, last=ZERO, no_left=False)

    def _i_continue(self, s: AbcState, c: str) -> AbcState | None:
        return None if s.need_note else s.replace(mode="cont", after_note=False, last=ZERO, no_left=False)

    def _i_comment(self, s: AbcState, c: str) -> AbcState | None:
        return (
            s.replace(mode="comment", after_note=False, last=ZERO, no_left=False)
            if self.config.comments and not s.need_note
            else None
        )

    def _i_bar(self, s: AbcState, c: str) -> AbcState | None:
        if (s.need_note or s.tuplet is not None) and not self._lenient:
            return None
        return self._bar_text(s.replace(after_note=False, last=ZERO, no_left=False, line_start=False), c)

    def _i_bracket(self, s: AbcState, c: str) -> AbcState | None:
        return s.replace(mode="lbr", after_note=False, last=ZERO, no_left=False, line_start=False)

    def _i_paren(self, s: AbcState, c: str) -> AbcState | None:
        if not self._lenient and (not self._music_ok(s) or s.slur >= self.config.max_slur_depth):
            return None  # strict: "(" must be able to open a slur (a tuplet may not be possible)
        return s.replace(mode="paren", after_note=False, last=ZERO, no_left=False, line_start=False)

    def _i_close_slur(self, s: AbcState, c: str) -> AbcState | None:
        if self._lenient:  # keeps ``last``: humans write (AB)>c
            return s.replace(after_note=False, no_left=False, line_start=False, slur=max(s.slur - 1, 0))
        if s.slur == 0 or s.need_note:
            return None
        return s.replace(slur=s.slur - 1, after_note=False, last=ZERO, no_left=False)

    def _i_tie(self, s: AbcState, c: str) -> AbcState | None:
        if self._lenient:  # keeps ``last``: humans write G-<E
            return s.replace(after_note=False, no_left=False, line_start=False)
        if not s.after_note:
            return None
        return s.replace(after_note=False, last=ZERO, no_left=False, line_start=False)

    def _i_broken(self, s: AbcState, c: str) -> AbcState | None:
        cfg = self.config
        if self._lenient:
            return s.replace(mode="brk", buf=c) if s.last > 0 else None
        if not (cfg.broken_rhythm and s.after_note and not s.no_left and s.tuplet is None):
            return None
        t = s.replace(mode="brk", buf=c)
        return t if self._broken_ok(t, LEFT_FACTOR[c]) else None

    def _i_quote(self, s: AbcState, c: str) -> AbcState | None:
        if self.config.chord_symbols == "none" or (not self._lenient and not self._music_ok(s)):
            return None
        return s.replace(mode="quote", buf="", after_note=False, last=ZERO, no_left=False, line_start=False)

    def _i_bang(self, s: AbcState, c: str) -> AbcState | None:
        if not self.config.named_decorations or (not self._lenient and not self._music_ok(s)):
            return None
        return s.replace(mode="bang", buf="", after_note=False, last=ZERO, no_left=False, line_start=False)

    def _i_grace(self, s: AbcState, c: str) -> AbcState | None:
        if not self.config.grace_notes:
            return None
        if not self._lenient and (s.tuplet is not None or not self._music_ok(s)):
            return None  # music21 counts grace notes as tuplet notes
        return s.replace(
            mode="group", field="g", count=0, buf="", after_note=False, last=ZERO, no_left=False, line_start=False
        )

    # -- notes and rests ------------------------------------------------------------------------
    def _note_start(self, s: AbcState, c: str) -> AbcState | None:
        if c == "[":
            return s.replace(mode="lbr", after_note=False, last=ZERO, no_left=False, line_start=False)
        if c in ACCIDENTALS and self.config.key_scale_only:
            return None
        t = self._begin_timing(s)
        if t is None:
            return None
        if c in ACCIDENTALS:
            return t.replace(mode="acc", buf=c)
        if c == "Z":
            return t.replace(mode="mrest", buf="") if not s.bar_notes else None
        if c == "x":  # lenient: music21 drops invisible rests, so they take no time
            return t.replace(mode="rest", buf="", nfac=Fraction(0))
        if c == "z":
            return t.replace(mode="rest", buf="")
        return self._pitch(t, c, "note")

    def _pitch(self, s: AbcState, c: str, mode: str) -> AbcState | None:
        """A note letter: remember its natural MIDI pitch and which octave marks may follow.

        Without a pitch range only the number of octave marks matters, so every letter counts as
        C (of its octave): the seven letters then share one state.
        """
        key = c if self.config.pitch_range is not None else ("c" if c.islower() else "C")
        last, memo = self._pitch_memo
        if last is not s or mode != memo.get("mode"):
            memo = {"mode": mode}
            self._pitch_memo = (s, memo)
        if key not in memo:
            pitch = NATURAL[key.upper()] + (12 if key.islower() else 0)
            t = s.replace(mode=mode, buf="", case="l" if key.islower() else "u", pitch=pitch)
            memo[key] = t if self._pitch_reachable(t) else None
        return memo[key]

    def _pitch_reachable(self, s: AbcState) -> bool:
        """Some number of octave marks still brings the note into the pitch bounds."""
        low, high = self._pitch_bounds
        if self._lenient or s.buf:
            return self._lenient or low <= s.pitch <= high
        step = -12 if s.case == "u" else 12
        p = s.pitch
        while low - 12 <= p <= high + 12:
            if low <= p <= high:
                return True
            if (step < 0 and p < low) or (step > 0 and p > high):
                return False
            p += step
        return False

    def _octave_mark(self, s: AbcState, c: str) -> AbcState | None:
        if s.buf or not (self._lenient or c == ("," if s.case == "u" else "'")):
            return None
        t = s.replace(pitch=s.pitch + (12 if c == "'" else -12))
        return t if self._pitch_reachable(t) else None

    def _b_acc(self, s: AbcState, c: str) -> AbcState | None:
        if c == s.buf and c in "^_":
            return s.replace(buf=c + c)
        if c not in PITCHES:
            return None
        if s.field in ("c", "g"):
            return self._inner_pitch(s.replace(mode="group"), c)
        return self._pitch(s, c, "note")

    def _b_deco(self, s: AbcState, c: str) -> AbcState | None:
        """After ``~`` / ``T``: the note itself (music21 would read ``~.`` or ``T!`` as a note)."""
        if c in PITCHES or c in ACCIDENTALS or c == "z":
            return self._note_start(s.replace(mode="idle"), c)
        return None

    def _b_note(self, s: AbcState, c: str) -> AbcState | None:
        """A pitched note: octave marks, then its length; anything else ends it."""
        if c in "',":
            return self._octave_mark(s, c)
        t = self._b_length(s, c, pitched=True)
        if c == ":" and t is not None and s.case == "u" and not s.buf and s.pitch == NATURAL_UPPER.get(s.pitch):
            return t.replace(field="u")  # "A::" would be a field line "A:" to music21; see _b_bar
        return t

    def _b_rest(self, s: AbcState, c: str) -> AbcState | None:
        return self._b_length(s, c, pitched=False)

    def _b_chord_length(self, s: AbcState, c: str) -> AbcState | None:
        return self._b_length(s, c, pitched=True)

    def _b_length(self, s: AbcState, c: str, pitched: bool) -> AbcState | None:
        if c in LENGTH_CHARS:
            text = s.buf + c
            if not self._length_set.is_prefix(text):
                return None
            t = s.replace(buf=text)
            return t if self._length_ok(t, text) else None
        done = self._finished(s)
        return self._b_idle(done, c) if done is not None else None

    def _b_multirest(self, s: AbcState, c: str) -> AbcState | None:
        """Lenient ``Z``/``Z4``: rests filling this bar (and more)."""
        if c.isdigit():
            return s
        done = s.replace(
            mode="idle",
            pos=s.bar_len or s.pos,
            bar_notes=True,
            after_note=False,
            last=ZERO,
            no_left=False,
            closed=False,
        )
        return self._b_idle(done, c)

    # -- bar lines and field lines --------------------------------------------------------------
    def _b_bar(self, s: AbcState, c: str) -> AbcState | None:
        text = s.buf + c
        if text == "::" and s.field == "u" and not self._lenient:
            return None
        if self._bars.is_prefix(text):
            return self._bar_text(s, text)
        done = self._finished(s)
        return self._b_idle(done, c) if done is not None else None

    def _bar_text(self, s: AbcState, text: str) -> AbcState | None:
        """A (longer) bar-line prefix, if some bar line it can still become may end this bar."""
        t = s.replace(mode="bar", buf=text)
        return t if any(self._close_bar(t, full) is not None for full in self._bar_ext.get(text, ())) else None

    def _b_field_letter(self, s: AbcState, c: str) -> AbcState | None:
        """A letter at the start of a body line: ``K:``-style field line, or a decoration."""
        letter = s.buf
        if c == ":":
            if not self._lenient and not self._bar_start(s):
                return None  # only between bars: music21 starts a new measure at a field line
            mode = "value" if letter in "MLK" else "text"
            return s.replace(mode=mode, buf="", field=letter)
        if letter in self.config.decorations:
            t = self._prefix(s.replace(mode="idle", buf=""))
            return self._b_idle(t, c) if t is not None else None
        return None

    def _b_continue(self, s: AbcState, c: str) -> AbcState | None:
        if c == " ":
            return s
        if c == "\n":
            return self._body_line(s)
        return None

    def _b_inline_letter(self, s: AbcState, c: str) -> AbcState | None:
        return s.replace(mode="ival", buf="") if c == ":" else None

    def _b_inline_value(self, s: AbcState, c: str) -> AbcState | None:
        """Lenient ``[M:3/4]``, ``[L:1/16]``, ``[K:D]``: applied when the value is a valid one."""
        if c != "]":
            return s.replace(buf=s.buf + c) if c in PRINTABLE and len(s.buf) < 40 else None
        core = s.buf.strip()
        t = s.replace(mode="idle", buf="", field="")
        if s.field == "M" and self._meters.is_complete(core) and not s.bar_notes:
            t = self._apply_value(s.replace(field="M"), core).replace(mode="idle", buf="", field="")
        elif s.field == "L" and self._units.is_complete(core):
            t = self._apply_value(s.replace(field="L"), core).replace(mode="idle", buf="", field="")
        elif s.field == "V":  # another voice: its bars are counted from the start
            t = t.replace(pos=ZERO, bar_notes=False, first_bar=True, after_section=True, carry=None)
        return t

    # -- end of tune ------------------------------------------------------------------------------
    def _finished(self, s: AbcState) -> AbcState | None:
        """:meth:`_finish` of the last state asked about, remembered (by identity, no hashing):
        callers try all 128 bytes on one state, and each byte that does not extend the token
        finishes it first."""
        last, done = self._finish_memo
        if last is not s:
            done = self._finish(s)
            self._finish_memo = (s, done)
        return done

    def _finish(self, s: AbcState) -> AbcState | None:
        """``s`` with the token being read finished (as if a space followed); None if incomplete."""
        if s.mode == "idle":
            return s
        if s.mode in ("note", "rest", "clen"):
            return self._end_note(s, pitched=s.mode != "rest")
        if s.mode == "bar":
            return self._close_bar(s, s.buf) if self._bars.is_complete(s.buf) else None
        if s.mode == "mrest":
            return self._b_multirest(s, " ")
        if s.mode == "paren":  # a slur opens; its note follows
            return s.replace(mode="idle", slur=s.slur + 1, need_note=not self._lenient)
        if s.mode == "tup" and self._tuplets.is_complete(s.buf) and self._tuplet_viable(s, s.buf):
            p, q, r = tuplet_ratio(s.buf, s.compound)
            return s.replace(mode="idle", buf="", tuplet=(p, q, r), need_note=not self._lenient)
        if s.mode == "brk":
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
        return None

    def _final(self, s: AbcState) -> bool:
        if self._lenient and s.mode in ("comment", "text"):  # a last comment or lyrics line
            s = s.replace(mode="idle", buf="", field="")
        if self._lenient and s.mode == "bar" and self._bars.is_complete(s.buf):
            s = s.replace(buf="|]")  # the last bar may be partial, whatever its bar line
        t = self._finish(s)
        if t is None or t.need_note or t.broken is not None or t.tuplet is not None:
            return False
        if not t.any_note or t.full_bars < self.config.min_full_bars:
            return False
        if t.closed and not t.bar_notes:
            return self._lenient or t.slur == 0
        return self._lenient and t.bar_notes and self._close_bar(t, "|]") is not None


__all__ = ["ACCIDENTALS", "BodyRules", "LEFT_FACTOR", "PITCHES"]
