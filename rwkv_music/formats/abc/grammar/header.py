"""Header rules of the ABC state machine: control codes, ``X:``, fields, ``K:`` (see the machine).

:class:`HeaderRules` is used by :class:`rwkv_music.formats.abc.grammar.machine.AbcGrammar`; each
mode method (``line``, ``letter``, ``value``, ``text``, ``comment``) takes a state and one
character and returns the next state or ``None`` (illegal).  Field values that matter (``M:``,
``L:``, ``K:``, ``Q:``, control codes) are read against the finite value sets of
:mod:`rwkv_music.formats.abc.grammar.values`; other fields are free text.  ``value``/``text``/
``comment`` lines are shared with body field lines (``K:G`` on its own line in the tune).

State fields it owns: ``phase``, ``seen``, ``field`` and ``buf`` of a field line, and the musical
context a field sets (``bar_len``, ``compound``, ``unit``).
"""

from __future__ import annotations

from fractions import Fraction

from rwkv_music.formats.abc.grammar.state import BODY, CONTROL, HEADER, AbcGrammarConfig, AbcState, body_line
from rwkv_music.formats.abc.grammar.values import (
    ValueSet,
    control_values,
    key_values,
    meter_info,
    meter_values,
    tempo_values,
    unit_values,
)

PRINTABLE = frozenset(chr(i) for i in range(32, 127))
LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
VALUE_FIELDS = frozenset("MLKQ")  # fields read against a value set (X: is digits)


class HeaderRules:
    """Control-code block and header fields; also the field-value lines of the body.

    Its own data are the value sets of one configuration (forced ``M:``/``L:``/``K:`` values
    narrow them to one).

    Args:
        config: the grammar configuration.
    """

    def __init__(self, config: AbcGrammarConfig) -> None:
        cfg = config
        self.config = cfg
        self.lenient = cfg.lenient
        # a form needs bars: no M:none
        meters = meter_values(cfg.max_meter_numerator, cfg.free_meter and not cfg.form, cfg.meter_denominators)
        self.meters = ValueSet([cfg.meter] if cfg.meter else meters)
        self.body_meters = ValueSet(m for m in self.meters.values if m != "none")
        self.units = ValueSet([cfg.unit] if cfg.unit else unit_values(cfg.unit_denominators))
        self.keys = ValueSet([cfg.key] if cfg.key else key_values(cfg.lenient))
        self.tempos = ValueSet(tempo_values())
        self.controls = {letter: ValueSet(control_values(letter)) for letter in "SBE"}

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
            return self.lenient or letter not in s.seen
        if letter == "Q":
            return cfg.tempo_field or self.lenient
        return letter in cfg.text_fields

    def line(self, s: AbcState, c: str) -> AbcState | None:
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

    def letter(self, s: AbcState, c: str) -> AbcState | None:
        """After the field letter only ``:`` may follow."""
        if c != ":":
            return None
        if s.phase == CONTROL or s.field == "X" or (s.field in VALUE_FIELDS and not (s.field == "Q" and self.lenient)):
            return s.replace(mode="value", buf="")
        return s.replace(mode="text", buf="")

    # -- values ---------------------------------------------------------------------------------
    def value_set(self, s: AbcState) -> ValueSet | None:
        if s.phase == CONTROL:
            return self.controls[s.field]
        if s.field == "M" and s.phase == BODY and not self.lenient:
            return self.body_meters  # no M:none in the body: music21 would keep timing the old meter
        return {"M": self.meters, "L": self.units, "K": self.keys, "Q": self.tempos}.get(s.field)

    def _value_complete(self, s: AbcState, core: str) -> bool:
        if s.field == "X" and s.phase != CONTROL:
            return core.isdigit() and len(core) <= 6
        values = self.value_set(s)
        return values is not None and values.is_complete(core)

    def value(self, s: AbcState, c: str) -> AbcState | None:
        """A field value read against its value set; one leading space allowed (more if lenient)."""
        if c == "\n":
            core = s.buf.strip(" ")
            return self._end_value(s, core) if self._value_complete(s, core) else None
        if c not in PRINTABLE:
            return None
        core = s.buf.lstrip(" ")
        if c == " " and not core:
            return s.replace(buf=s.buf + c) if (self.lenient or not s.buf) else None
        new = core + c
        if s.field == "X" and s.phase != CONTROL:
            ok = c.isdigit() and len(new) <= 6
        else:
            values = self.value_set(s)
            ok = values is not None and values.is_prefix(new)
        if ok:
            return s.replace(buf=s.buf + c)
        if self.lenient and c in " \t%" and self._value_complete(s, core.strip()):
            # trailing words after a value ("K:E phr bass", "M:9/8 % comment"): applied now
            done = self.apply_value(s, core.strip())
            return done.replace(mode="text", buf="", field="K" if s.field == "K" else "")
        return None

    def text(self, s: AbcState, c: str) -> AbcState | None:
        """Free text up to the end of the line (only "anything typed yet" is kept: states stay few).

        Not ``|`` right after the colon: music21 reads ``T:|`` as a note and a bar line.
        """
        if c == "\n":
            if s.phase == BODY:
                return body_line(s.replace(buf=""))
            return self.start_body(s) if s.field == "K" else s.replace(mode="line", field="", buf="")
        if c in PRINTABLE or (c == "\t" and self.lenient):
            if s.buf:
                return s
            return None if c == "|" and not self.lenient else s.replace(buf=".")
        return None

    def comment(self, s: AbcState, c: str) -> AbcState | None:
        if c == "\n":
            return body_line(s) if s.phase == BODY else s.replace(mode="line")
        if c in PRINTABLE or (c == "\t" and self.lenient):
            return s
        return None

    # -- meaning of a complete value --------------------------------------------------------------
    def _end_value(self, s: AbcState, core: str) -> AbcState | None:
        done = self.apply_value(s, core)
        if done is None:
            return None
        if s.phase == BODY:
            return body_line(done)
        return self.start_body(done) if s.field == "K" else done.replace(mode="line", buf="", field="")

    def apply_value(self, s: AbcState, core: str) -> AbcState | None:
        """The state with the field's value applied (meter, unit length, seen letters)."""
        if s.phase == CONTROL:  # S:n and B:m shape the form
            number = {"S": "parts", "B": "bars"}.get(s.field)
            return s.replace(seen=s.seen + "s", **({number: int(core)} if number else {}))
        seen = s.seen if s.phase == BODY or s.field in s.seen else s.seen + s.field
        if s.field == "M":
            bar, compound, default_unit = meter_info(core)
            # music21 takes the default L from the first M: when no L: came before it
            unit = s.unit if (s.unit is not None or s.phase == BODY) else default_unit
            return s.replace(seen=seen, bar_len=bar, compound=compound, unit=unit)
        if s.field == "L":
            return s.replace(seen=seen, unit=Fraction(1, int(core.split("/")[1])))
        if s.field == "K" and self.config.form and self.config.cadence:
            return s.replace(seen=seen, tonic=core[0] if core[:1] in "ABCDEFG" and core[:1] else "")
        return s.replace(seen=seen)

    def start_body(self, s: AbcState) -> AbcState:
        """After the ``K:`` line: the tune body begins (the form's sizes are settled here)."""
        t = s.replace(
            phase=BODY, mode="idle", buf="", field="", line_start=True, unit=s.unit or Fraction(1, 8), pos=Fraction(0)
        )
        cfg = self.config
        if not cfg.form:
            return t.replace(parts=0, bars=0)
        return t.replace(parts=cfg.parts or s.parts or 2, bars=cfg.bars_per_part or s.bars or 8)


__all__ = ["HeaderRules", "LETTERS", "PRINTABLE"]
