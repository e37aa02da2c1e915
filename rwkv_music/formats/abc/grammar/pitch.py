"""Note letters and octave marks of the ABC state machine: which pitches may be written.

:class:`PitchRules` reads a note letter (``A-G a-g``) and its octave marks (``'`` after lower
case, ``,`` after upper case) and keeps the written natural pitch inside the configured bounds.
State fields it owns: ``pitch`` (MIDI number of the natural note being read), ``case`` (which
octave mark may follow) and, with ``mode``/``buf``, the token being read.
"""

from __future__ import annotations

from rwkv_music.formats.abc.grammar.state import AbcGrammarConfig, AbcState

PITCHES = "CDEFGABcdefgab"
ACCIDENTALS = "^_="
NATURAL = {"C": 60, "D": 62, "E": 64, "F": 65, "G": 67, "A": 69, "B": 71}
NATURAL_UPPER = {p: p for p in NATURAL.values()}  # MIDI of an upper-case letter without octave marks


class PitchRules:
    """Pitch letters, octave marks and the pitch range of one configuration.

    Args:
        config: the grammar configuration (``pitch_range``, ``max_octave_marks``, ``lenient``).
    """

    def __init__(self, config: AbcGrammarConfig) -> None:
        self.lenient = config.lenient
        self.cadence = config.form and config.cadence  # notes remember whether they are the tonic
        self.by_letter = config.pitch_range is not None  # else every letter counts as C of its octave
        strict_low = 60 - 12 * config.max_octave_marks
        strict_high = 83 + 12 * config.max_octave_marks
        low, high = config.pitch_range or (0, 127)
        self.bounds = (max(low, strict_low), min(high, strict_high))
        self._memo: tuple[AbcState | None, dict] = (None, {})  # a cache only: letters of one state

    def pitch(self, s: AbcState, c: str, mode: str) -> AbcState | None:
        """A note letter: remember its natural MIDI pitch and which octave marks may follow.

        Without a pitch range only the number of octave marks matters, so every letter counts as
        C (of its octave): the seven letters then share one state.  Remembered for the last
        state asked about (by identity): callers try every letter on the same state.
        """
        key = c if self.by_letter else ("c" if c.islower() else "C")
        ton = self.cadence and c.upper() == s.tonic
        if ton:
            key += "t"
        last, memo = self._memo
        if last is not s or mode != memo.get("mode"):
            memo = {"mode": mode}
            self._memo = (s, memo)
        if key not in memo:
            pitch = NATURAL[key[0].upper()] + (12 if key[0].islower() else 0)
            t = s.replace(mode=mode, buf="", case="l" if key[0].islower() else "u", pitch=pitch, ton=ton)
            memo[key] = t if self.reachable(t) else None
        return memo[key]

    def reachable(self, s: AbcState) -> bool:
        """Some number of octave marks still brings the note into the pitch bounds."""
        low, high = self.bounds
        if self.lenient or s.buf:
            return self.lenient or low <= s.pitch <= high
        step = -12 if s.case == "u" else 12
        p = s.pitch
        while low - 12 <= p <= high + 12:
            if low <= p <= high:
                return True
            if (step < 0 and p < low) or (step > 0 and p > high):
                return False
            p += step
        return False

    def octave_mark(self, s: AbcState, c: str) -> AbcState | None:
        """``'`` or ``,`` after the letter (strict: only the one that moves toward the middle)."""
        if s.buf or not (self.lenient or c == ("," if s.case == "u" else "'")):
            return None
        t = s.replace(pitch=s.pitch + (12 if c == "'" else -12))
        return t if self.reachable(t) else None

    def in_range(self, s: AbcState) -> bool:
        """The note being read ends inside the pitch bounds."""
        low, high = self.bounds
        return self.lenient or low <= s.pitch <= high

    def field_like(self, s: AbcState) -> bool:
        """A bare upper-case letter (no octave mark, no length): ``A:`` after it reads as a field."""
        return s.case == "u" and not s.buf and s.pitch == NATURAL_UPPER.get(s.pitch)


__all__ = ["ACCIDENTALS", "NATURAL", "PITCHES", "PitchRules"]
