"""Header rules of the ABC state machine: control codes, ``X:``, fields, ``K:`` (see abc_grammar).

Mixed into :class:`rwkv_music.formats.abc.grammar.machine.AbcGrammar`; each ``_h_*`` method takes a
state and one character and returns the next state or ``None`` (illegal).  Field values that
matter (``M:``, ``L:``, ``K:``, ``Q:``, control codes) are read against the finite value sets of
:mod:`rwkv_music.formats.abc.grammar.values`; other fields are free text.  ``value``/``text``/``comment``
lines are shared with body field lines (``K:G`` on its own line in the tune).
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Callable

from rwkv_music.formats.abc.grammar.state import BODY, CONTROL, HEADER, AbcState
from rwkv_music.formats.abc.grammar.values import ValueSet, meter_info

if TYPE_CHECKING:
    from rwkv_music.formats.abc.grammar.state import AbcGrammarConfig

PRINTABLE = frozenset(chr(i) for i in range(32, 127))
LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
VALUE_FIELDS = frozenset("MLKQ")  # fields read against a value set (X: is digits)


class HeaderRules:
    """Control-code block and header fields; also the field-value lines of the body."""

    config: AbcGrammarConfig
    _lenient: bool
    _meters: ValueSet
    _body_meters: ValueSet
    _units: ValueSet
    _keys: ValueSet
    _tempos: ValueSet
    _controls: dict[str, ValueSet]
    _body_line: Callable[[AbcState], AbcState]  # from the body rules

    # -- which line may start ---------------------------------------------------------------
    def _is_control(self, s: AbcState, letter: str) -> bool:
        """``S:``/``B:``/``E:`` before any header field is a control code; ``S`` only first."""
        return self.config.control_codes and s.phase == CONTROL and letter in "SBE" and (letter != "S" or not s.seen)

    def _header_letter_ok(self, s: AbcState, letter: str) -> bool:
        cfg = self.config
        if letter == "X":
            return cfg.x_field != "forbidden" and s.phase == CONTROL and "X" not in s.seen
        if cfg.x_field == "required" and "X" not in s.seen:
            return False
        if letter == "K":  # music21 needs M: or L: to time notes; a forced value must be stated
            return (
                ("M" in s.seen or "L" in s.seen)
                and (cfg.meter is None or "M" in s.seen)
                and (cfg.unit is None or "L" in s.seen)
            )
        if letter in "ML":
            return self._lenient or letter not in s.seen
        if letter == "Q":
            return cfg.tempo_field or self._lenient
        return letter in cfg.text_fields

    def _h_line(self, s: AbcState, c: str) -> AbcState | None:
        """Start of a header line: a field letter, or ``%`` for a comment line."""
        if c == "%" and self.config.comments:
            return s.replace(mode="comment")
        if c not in LETTERS:
            return None
        if self._is_control(s, c):
            return s.replace(mode="letter", field=c)
        if self._header_letter_ok(s, c):
            return s.replace(phase=HEADER, mode="letter", field=c)
        return None

    def _h_letter(self, s: AbcState, c: str) -> AbcState | None:
        """After the field letter only ``:`` may follow."""
        if c != ":":
            return None
        if s.phase == CONTROL or s.field == "X" or (s.field in VALUE_FIELDS and not (s.field == "Q" and self._lenient)):
            return s.replace(mode="value", buf="")
        return s.replace(mode="text", buf="")

    # -- values ---------------------------------------------------------------------------------
    def _value_set(self, s: AbcState) -> ValueSet | None:
        if s.phase == CONTROL:
            return self._controls[s.field]
        if s.field == "M" and s.phase == BODY and not self._lenient:
            return self._body_meters  # no M:none in the body: music21 would keep timing the old meter
        return {"M": self._meters, "L": self._units, "K": self._keys, "Q": self._tempos}.get(s.field)

    def _value_complete(self, s: AbcState, core: str) -> bool:
        if s.field == "X" and s.phase != CONTROL:
            return core.isdigit() and len(core) <= 6
        values = self._value_set(s)
        return values is not None and values.is_complete(core)

    def _h_value(self, s: AbcState, c: str) -> AbcState | None:
        """A field value read against its value set; one leading space allowed (more if lenient)."""
        if c == "\n":
            core = s.buf.strip(" ")
            return self._end_value(s, core) if self._value_complete(s, core) else None
        if c not in PRINTABLE:
            return None
        core = s.buf.lstrip(" ")
        if c == " " and not core:
            return s.replace(buf=s.buf + c) if (self._lenient or not s.buf) else None
        new = core + c
        if s.field == "X" and s.phase != CONTROL:
            ok = c.isdigit() and len(new) <= 6
        else:
            values = self._value_set(s)
            ok = values is not None and values.is_prefix(new)
        if ok:
            return s.replace(buf=s.buf + c)
        if self._lenient and c in " \t%" and self._value_complete(s, core.strip()):
            # trailing words after a value ("K:E phr bass", "M:9/8 % comment"): applied now
            done = self._apply_value(s, core.strip())
            return done.replace(mode="text", buf="", field="K" if s.field == "K" else "")
        return None

    def _h_text(self, s: AbcState, c: str) -> AbcState | None:
        """Free text up to the end of the line (only "anything typed yet" is kept: states stay few).

        Not ``|`` right after the colon: music21 reads ``T:|`` as a note and a bar line.
        """
        if c == "\n":
            if s.phase == BODY:
                return self._body_line(s.replace(buf=""))
            return self._start_body(s) if s.field == "K" else s.replace(mode="line", field="", buf="")
        if c in PRINTABLE or (c == "\t" and self._lenient):
            if s.buf:
                return s
            return None if c == "|" and not self._lenient else s.replace(buf=".")
        return None

    def _h_comment(self, s: AbcState, c: str) -> AbcState | None:
        if c == "\n":
            return self._body_line(s) if s.phase == BODY else s.replace(mode="line")
        if c in PRINTABLE or (c == "\t" and self._lenient):
            return s
        return None

    # -- meaning of a complete value --------------------------------------------------------------
    def _end_value(self, s: AbcState, core: str) -> AbcState | None:
        done = self._apply_value(s, core)
        if done is None:
            return None
        if s.phase == BODY:
            return self._body_line(done)
        return self._start_body(done) if s.field == "K" else done.replace(mode="line", buf="", field="")

    def _apply_value(self, s: AbcState, core: str) -> AbcState | None:
        """The state with the field's value applied (meter, unit length, seen letters)."""
        if s.phase == CONTROL:
            return s.replace(seen=s.seen + "s")
        seen = s.seen if s.phase == BODY or s.field in s.seen else s.seen + s.field
        if s.field == "M":
            bar, compound, default_unit = meter_info(core)
            # music21 takes the default L from the first M: when no L: came before it
            unit = s.unit if (s.unit is not None or s.phase == BODY) else default_unit
            return s.replace(seen=seen, bar_len=bar, compound=compound, unit=unit)
        if s.field == "L":
            return s.replace(seen=seen, unit=Fraction(1, int(core.split("/")[1])))
        return s.replace(seen=seen)

    def _start_body(self, s: AbcState) -> AbcState:
        """After the ``K:`` line: the tune body begins."""
        return s.replace(
            phase=BODY, mode="idle", buf="", field="", line_start=True, unit=s.unit or Fraction(1, 8), pos=Fraction(0)
        )


__all__ = ["HeaderRules", "LETTERS", "PRINTABLE"]
