"""Body rules of the ABC state machine: notes, rests, bar lines, field lines (see the machine).

:class:`BodyRules` reads the tune body between tokens (``idle``) and the tokens that are not note
groups: notes, rests, bar lines, field lines, continuations.  Each mode method takes a state and
one character and returns the next state or ``None``.  A token that cannot grow by the character
is finished (its duration committed, its bar line checked) and the character is read again from
``idle`` -- longest match, as music21's tokenizer does.

It composes the narrower rules: :class:`~rwkv_music.formats.abc.grammar.timing.BarTiming`
(durations, lookahead, bar lines), :class:`~rwkv_music.formats.abc.grammar.pitch.PitchRules`
(letters, octave marks), :class:`~rwkv_music.formats.abc.grammar.groups.NoteGroupRules` (chords,
grace groups, symbols, slurs, tuplets, broken rhythm; it gets :meth:`BodyRules.idle` to read a
character again) and :class:`~rwkv_music.formats.abc.grammar.header.HeaderRules` (field values).
State fields it owns: ``line_start``, ``after_note``, ``no_left``, ``any_note`` and ``mode``/``buf``
of the plain tokens.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from rwkv_music.formats.abc.grammar.groups import NoteGroupRules
from rwkv_music.formats.abc.grammar.header import PRINTABLE, HeaderRules
from rwkv_music.formats.abc.grammar.pitch import ACCIDENTALS, PITCHES, PitchRules
from rwkv_music.formats.abc.grammar.state import ZERO, AbcGrammarConfig, AbcState, body_line
from rwkv_music.formats.abc.grammar.timing import LENGTH_CHARS, BarTiming

Rule = Callable[[AbcState, str], "AbcState | None"]


class BodyRules:
    """Lexical rules of the tune body for one configuration.

    Args:
        config: the grammar configuration.
        header: the header rules (field values of body field lines and inline fields).
        timing: the bar timing.
        pitches: the pitch rules.
    """

    def __init__(self, config: AbcGrammarConfig, header: HeaderRules, timing: BarTiming, pitches: PitchRules) -> None:
        self.config = config
        self.lenient = config.lenient
        self.header = header
        self.timing = timing
        self.pitches = pitches
        self.groups = groups = NoteGroupRules(config, timing, pitches, reread=self.idle)
        forced = {"M": config.meter, "L": config.unit, "K": config.key}
        # a form keeps one metre, unit and key, and its own line breaks: no body field lines
        self.body_fields = "" if config.form else "".join(f for f in config.body_fields if forced.get(f) is None)
        self.form = config.form
        self._idle_chars: dict[str, Rule] = {
            " ": self._space, "\t": self._noise, "`": self._noise, "y": self._noise,
            "\n": self._newline, "\\": self._open_continue, "%": self._open_comment,
            "|": self._open_bar, ":": self._open_bar, "[": groups.open_bracket, "(": groups.open_paren,
            ")": groups.close_slur, "-": self._tie, ">": groups.open_broken, "<": groups.open_broken,
            '"': groups.open_quote, "!": groups.open_bang, "{": groups.open_grace,
        }  # fmt: skip
        idle = set(PITCHES + ACCIDENTALS + "zxZ" + config.decorations + self.body_fields) | set(self._idle_chars)
        self.idle_candidates = "".join(sorted(idle))  # every character idle may take (a superset)
        self._memo: tuple[AbcState | None, AbcState | None] = (None, None)  # a cache only

    # -- idle: between tokens ---------------------------------------------------------------
    def idle(self, s: AbcState, c: str) -> AbcState | None:
        if self.form and (s.need_nl or s.part >= s.parts):  # a due line break, or the tune is complete
            return self._newline(s, c) if c == "\n" and s.need_nl else None
        if s.broken is not None and not self.lenient:
            # the right note of A>B must follow at once: music21 only pairs neighbouring tokens
            return self._note_start(s, c) if (c in PITCHES or c in ACCIDENTALS or c in "z[") else None
        if c in PITCHES or c in ACCIDENTALS or c == "z" or (self.lenient and c in "xZ"):
            return self._note_start(s, c)
        if s.line_start and c in self.body_fields and (self.lenient or self._bar_start(s)):
            return s.replace(mode="fletter", buf=c, line_start=False)
        if c in self.config.decorations:
            t = self._prefix(s)
            # music21 reads "~" and "T" as the start of a note: in strict mode the note follows at once
            return t.replace(mode="deco") if t is not None and c in "~T" and not self.lenient else t
        rule = self._idle_chars.get(c)
        return rule(s, c) if rule is not None else None

    def _bar_start(self, s: AbcState) -> bool:
        return not (s.bar_notes or s.tuplet is not None or s.need_note)

    def _prefix(self, s: AbcState) -> AbcState | None:
        """A decoration (or chord symbol, grace group, slur) that belongs to the next note."""
        if not self.lenient and not self.timing.music_ok(s):
            return None
        return s.replace(
            mode="idle",
            buf="",
            need_note=not self.lenient,
            after_note=False,
            last=ZERO,
            no_left=False,
            line_start=False,
        )

    def _space(self, s: AbcState, c: str) -> AbcState | None:
        if self.form:  # (the machine resets the count at any other byte)
            if s.line_start or s.spaces >= self.config.max_spaces:
                return None
            s = s.replace(spaces=s.spaces + 1)
        if s.line_start and not self.lenient:
            # leading spaces keep the line "at its start", so a line of spaces alone cannot end:
            # a whitespace-only line reads as a blank line, and a blank line ends an ABC tune
            return s.replace(after_note=False, last=ZERO, no_left=False)
        return (
            s.replace(after_note=False, last=ZERO, no_left=False, line_start=False)
            if (s.after_note or s.line_start)
            else s
        )

    def _noise(self, s: AbcState, c: str) -> AbcState | None:
        return s if self.lenient else None

    def _newline(self, s: AbcState, c: str) -> AbcState | None:
        if (s.line_start and not self.lenient) or s.need_note:
            return None
        if s.lbar == 2:  # a line of bar lines only (lbar stays 0 where empty bars are allowed)
            return None
        if s.tuplet is not None and not self.lenient:
            return None
        if self.form:
            return body_line(s.replace(need_nl=False)) if s.need_nl else None
        return body_line(s)

    def _open_continue(self, s: AbcState, c: str) -> AbcState | None:
        return None if s.need_note or self.form else s.replace(mode="cont", after_note=False, last=ZERO, no_left=False)

    def _open_comment(self, s: AbcState, c: str) -> AbcState | None:
        return (
            s.replace(mode="comment", after_note=False, last=ZERO, no_left=False)
            if self.config.comments and not s.need_note
            else None
        )

    def _open_bar(self, s: AbcState, c: str) -> AbcState | None:
        if (s.need_note or s.tuplet is not None) and not self.lenient:
            return None
        return self.timing.bar_text(s.replace(after_note=False, last=ZERO, no_left=False, line_start=False), c)

    def _tie(self, s: AbcState, c: str) -> AbcState | None:
        if self.lenient:  # keeps ``last``: humans write G-<E
            return s.replace(after_note=False, no_left=False, line_start=False)
        if not s.after_note:
            return None
        if self.timing.cadence_bar(s) and s.bar_len is not None and s.pos == self.timing.cap(s):
            return None  # the tune's last note ties into nothing
        return s.replace(after_note=False, last=ZERO, no_left=False, line_start=False)

    # -- notes and rests ------------------------------------------------------------------------
    def _note_start(self, s: AbcState, c: str) -> AbcState | None:
        t = self._begin_note(s, c)
        return t.replace(lbar=0) if t is not None and t.lbar else t  # music on the line

    def _begin_note(self, s: AbcState, c: str) -> AbcState | None:
        if c == "[":
            return self.groups.open_bracket(s, c)
        if c in ACCIDENTALS and (self.config.key_scale_only or self.timing.cadence_bar(s)):
            return None  # (the last bar has no accidentals: the key signature makes its tonic)
        t = self.timing.begin(s)
        if t is None:
            return None
        if c in ACCIDENTALS:
            return t.replace(mode="acc", buf=c)
        if c == "Z":
            return t.replace(mode="mrest", buf="") if not s.bar_notes else None
        if c == "x":  # lenient: music21 drops invisible rests, so they take no time
            return t.replace(mode="rest", buf="", nfac=Fraction(0))
        if c == "z":
            t = t.replace(mode="rest", buf="")
            return t if not self.timing.cadence or self.timing.length_ok(t, "") else None
        t = self.pitches.pitch(t, c, "note")
        if t is not None and self.timing.cadence and not self.timing.length_ok(t, ""):
            return None  # not the tonic, and no room left for it after this note
        return t

    def accidental(self, s: AbcState, c: str) -> AbcState | None:
        """After ``^``/``_``/``=`` before a note: a second ``^``/``_``, then the letter."""
        if c == s.buf and c in "^_":
            return s.replace(buf=c + c)
        if c not in PITCHES:
            return None
        t = self.pitches.pitch(s, c, "note")
        if t is not None and self.timing.cadence and not self.timing.length_ok(t, ""):
            return None
        return t

    def decoration(self, s: AbcState, c: str) -> AbcState | None:
        """After ``~`` / ``T``: the note itself (music21 would read ``~.`` or ``T!`` as a note)."""
        if c in PITCHES or c in ACCIDENTALS or c == "z":
            return self._note_start(s.replace(mode="idle"), c)
        return None

    def note(self, s: AbcState, c: str) -> AbcState | None:
        """A pitched note: octave marks, then its length; anything else ends it."""
        if c in "',":
            return self.pitches.octave_mark(s, c)
        t = self._length(s, c)
        if c == ":" and t is not None and self.pitches.field_like(s):
            return t.replace(field="u")  # "A::" would be a field line "A:" to music21; see bar()
        return t

    def _length(self, s: AbcState, c: str) -> AbcState | None:
        """A length character of a note, rest or chord; anything else ends it."""
        if c in LENGTH_CHARS:
            return self.timing.extend_length(s, c)
        done = self.finish(s)
        return self.idle(done, c) if done is not None else None

    rest = _length  # a rest and a chord's length ("[CE]2") read only lengths
    chord_length = _length

    def multirest(self, s: AbcState, c: str) -> AbcState | None:
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
        return self.idle(done, c)

    # -- bar lines and field lines --------------------------------------------------------------
    def bar(self, s: AbcState, c: str) -> AbcState | None:
        text = s.buf + c
        if text == "::" and s.field == "u" and not self.lenient:
            return None
        if self.timing.bars.is_prefix(text):
            return self.timing.bar_text(s, text)
        done = self.finish(s)
        return self.idle(done, c) if done is not None else None

    def field_letter(self, s: AbcState, c: str) -> AbcState | None:
        """A letter at the start of a body line: ``K:``-style field line, or a decoration."""
        letter = s.buf
        if c == ":":
            if not self.lenient and not self._bar_start(s):
                return None  # only between bars: music21 starts a new measure at a field line
            mode = "value" if letter in "MLK" else "text"
            return s.replace(mode=mode, buf="", field=letter)
        if letter in self.config.decorations:
            t = self._prefix(s.replace(mode="idle", buf=""))
            return self.idle(t, c) if t is not None else None
        return None

    def continuation(self, s: AbcState, c: str) -> AbcState | None:
        if c == " ":
            return s
        if c == "\n":
            return body_line(s)
        return None

    def inline_letter(self, s: AbcState, c: str) -> AbcState | None:
        return s.replace(mode="ival", buf="") if c == ":" else None

    def inline_value(self, s: AbcState, c: str) -> AbcState | None:
        """Lenient ``[M:3/4]``, ``[L:1/16]``, ``[K:D]``: applied when the value is a valid one."""
        if c != "]":
            return s.replace(buf=s.buf + c) if c in PRINTABLE and len(s.buf) < 40 else None
        core = s.buf.strip()
        t = s.replace(mode="idle", buf="", field="")
        header = self.header
        if s.field == "M" and header.meters.is_complete(core) and not s.bar_notes:
            t = header.apply_value(s.replace(field="M"), core).replace(mode="idle", buf="", field="")
        elif s.field == "L" and header.units.is_complete(core):
            t = header.apply_value(s.replace(field="L"), core).replace(mode="idle", buf="", field="")
        elif s.field == "V":  # another voice: its bars are counted from the start
            t = t.replace(pos=ZERO, bar_notes=False, first_bar=True, after_section=True, carry=None)
        return t

    # -- end of a token, end of tune ------------------------------------------------------------
    def finish(self, s: AbcState) -> AbcState | None:
        """:meth:`finish_token` of the last state asked about, remembered (by identity, no hashing):
        callers try all 128 bytes on one state, and each byte that does not extend the token
        finishes it first."""
        last, done = self._memo
        if last is not s:
            done = self.finish_token(s)
            self._memo = (s, done)
        return done

    def finish_token(self, s: AbcState) -> AbcState | None:
        """``s`` with the token being read finished (as if a space followed); None if incomplete."""
        mode = s.mode
        if mode == "idle":
            return s
        if mode in ("note", "rest", "clen"):
            pitched = mode != "rest"
            return self.timing.end_note(s, pitched) if not pitched or self.pitches.in_range(s) else None
        if mode == "bar":
            return self.timing.end_bar(s)
        if mode == "mrest":
            return self.multirest(s, " ")
        if mode == "paren":  # a slur opens; its note follows
            return self.groups.end_paren(s)
        if mode == "tup":
            return self.timing.end_tuplet(s)
        if mode == "brk":
            return self.timing.end_broken(s)
        return None

    def final(self, s: AbcState) -> bool:
        """Whether the tune may end in body state ``s``."""
        if self.lenient and s.mode in ("comment", "text"):  # a last comment or lyrics line
            s = s.replace(mode="idle", buf="", field="")
        if self.lenient and s.mode == "bar" and self.timing.bars.is_complete(s.buf):
            s = s.replace(buf="|]")  # the last bar may be partial, whatever its bar line
        t = self.finish_token(s)
        if t is None or t.need_note or t.broken is not None or t.tuplet is not None:
            return False
        if self.form:  # the tune ends right after its last part's bar line
            return t.part >= t.parts and t.slur == 0
        if t.sect_pick:  # the pickup's closing bar is still owed
            return False
        if not t.any_note or t.full_bars < self.config.min_full_bars:
            return False
        if t.closed and not t.bar_notes:
            return self.lenient or t.slur == 0
        return self.lenient and t.bar_notes and self.timing.close_bar(t, "|]") is not None


__all__ = ["BodyRules"]
