"""The constraint's variety rules, read from a row's bytes: no bar three times running, no tune in one note length.

**Bar repeats** (:class:`BarRun`, the constraint's ``max_bar_repeats``).  Human tunes rarely write one
bar three times running: 0.4 % of music21's non-Essen tunes have such a run (``TuneReport.max_same_bars``),
while the shipped model under the constraint wrote one in 5.8 % of 120 tunes before this rule (14 times as
often).  While a row's last ``limit`` bars are the same and the bar it is writing is still a copy of them,
the byte that would continue the copy is banned.  Bars are compared as written, spaces and line breaks
aside, with the barline's own characters (``:``, ``[``, ``]``, an ending's number) stripped from their edges.

**One note length** (:class:`RhythmRun`, the constraint's ``vary_rhythm``).  Twelve of music21's 4,433
non-Essen tunes (none of its 292 in 3/4) write every note and rest with one written length and no broken
rhythm or tuplet; the shipped model did so in 24 % of its constrained 3/4 tunes (all crotchets, as a rule).
Once a row has written :data:`RHYTHM_BARS` bars in one length, the next note may not take that length
again: the bytes that would give it that length are banned at the point where its length is written.

Either rule bans a byte only where another legal byte is left, so neither leaves a row without a token.
This module reads bytes on its own; the judge (:mod:`rwkv_music.formats.abc.judge`) and
:func:`rwkv_music.train.rewards.rhythm_is_monotone` measure the same things from their own parses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SPACE = " \t\r\n"
_EDGE_AFTER = ":["  # "...:|" and "...[|" leave these at a bar's end
_EDGE_BEFORE = ":[]0123456789"  # "|:", "|]", "|1", "|[2" leave these at the next bar's start
_NOTES = "ABCDEFGabcdefgzx"  # a note letter or a rest
_LENGTH_CHARS = "0123456789/"
_OCTAVE_MARKS = ",'"
RHYTHM_BARS = 3  # bars in one length before the next note must take another


def _music(bar: str) -> str:
    """A finished bar's text as compared: the barline's characters off both edges."""
    return bar.rstrip(_EDGE_AFTER).lstrip(_EDGE_BEFORE)


@dataclass
class _Body:
    """Finds the tune body: everything after the header's ``K:`` line."""

    in_body: bool = False
    line: str = ""  # the header line being read

    def header(self, ch: str) -> bool:
        """Read one header character; False once the body has begun (``ch`` is then the body's)."""
        if self.in_body:
            return False
        if ch == "\n":
            self.in_body = self.line.startswith("K:")
            self.line = ""
        else:
            self.line += ch
        return True


@dataclass
class BarRun(_Body):
    """One row: the bar being written and the run of equal bars just before it."""

    current: str = ""  # the bar being written, spaces removed
    previous: str = ""  # the last finished bar, as compared
    run: int = 0  # how many bars in a row were ``previous``

    def feed(self, ch: str) -> None:
        """One more character of the tune (prompt or sampled)."""
        if self.header(ch) or ch in _SPACE:
            return
        if ch == "|" or (ch == ":" and self.current.endswith(":")):  # "|..." or the "::" repeat
            bar = _music(self.current)
            if bar:  # (the second character of "||", ":|:" ...: no music, no bar)
                self.run = self.run + 1 if bar == self.previous else 1
                self.previous = bar
            self.current = ""
            return
        self.current += ch

    def copy_byte(self, limit: int) -> int:
        """The byte that would make the bar being written the ``limit + 1``-th copy in a row's run
        one character closer to done, or -1 where no copy is under way."""
        if self.run < limit:
            return -1
        done = self.current.lstrip(_EDGE_BEFORE)
        if len(done) >= len(self.previous) or not self.previous.startswith(done):
            return -1
        return ord(self.previous[len(done)])


@dataclass
class RhythmRun(_Body):
    """One row: the written lengths of its notes so far, until it has used two (then it is done)."""

    varied: bool = False  # two lengths, a broken rhythm or a tuplet seen: nothing more to watch
    lengths: set[str] = field(default_factory=set)  # length suffixes of the finished notes ("" = one unit)
    bars: int = 0  # bars closed
    note: bool = False  # a note's letter (or a chord's "]") was read; its octave marks and length may follow
    suffix: str = ""  # that note's length so far
    skip: str = ""  # the character that closes what is being skipped ('"' text, '!' decoration, '}' grace notes)
    bracket: str | None = None  # inside "[...": what was read (a chord, or an inline field)
    last: str = ""  # the previous body character

    def feed(self, ch: str) -> None:
        """One more character of the tune (prompt or sampled)."""
        if self.varied or self.header(ch):
            return
        last, self.last = self.last, ch
        if self.skip:
            if ch == self.skip:
                self.skip = ""
            return
        if self.note:
            if ch in _OCTAVE_MARKS and not self.suffix:
                return
            if ch in _LENGTH_CHARS:
                self.suffix += ch
                return
            self._end_note()
            if self.varied:
                return
        if self.bracket is not None:
            if ch == "]":
                chord = any(c in _NOTES for c in self.bracket) and ":" not in self.bracket[:2]
                self.bracket = None
                self.note, self.suffix = chord, ""  # a chord's length is written after its "]"
            elif ch == "|":
                self.bracket = None  # "[|": a barline
                self.bars += 1
            else:
                self.bracket += ch
            return
        if ch in "<>" or (ch.isdigit() and last == "("):  # broken rhythm, a tuplet
            self.varied = True
        elif ch in '"!':
            self.skip = ch
        elif ch == "{":
            self.skip = "}"
        elif ch == "[":
            self.bracket = ""
        elif ch in _NOTES:
            self.note, self.suffix = True, ""
        elif ch == "|" and last != "|":
            self.bars += 1

    def _end_note(self) -> None:
        self.lengths.add(self.suffix)
        self.note, self.suffix = False, ""
        self.varied = len(self.lengths) > 1

    def banned(self) -> tuple[str, str] | None:
        """Where the next byte must not keep the tune in one length: ``("ban", chars)`` bans those bytes,
        ``("keep", chars)`` bans every byte but those; None where the rule does not apply now."""
        if self.varied or self.bars < RHYTHM_BARS or not self.note or self.suffix or len(self.lengths) != 1:
            return None
        (length,) = self.lengths
        if length:
            return ("ban", length[0])  # (a length's first character: "2" bans 2; "3/2" bans 3 and 3/2)
        return ("keep", _LENGTH_CHARS + _OCTAVE_MARKS)  # one unit is written as nothing: a length must follow


__all__ = ["RHYTHM_BARS", "BarRun", "RhythmRun"]
