"""An incremental, byte-level state machine for valid, bar-balanced ABC (issue 4).

``AbcGrammar.step(state, char)`` returns the next immutable :class:`AbcState` or ``None``; the
ABC constraint (:mod:`rwkv_music.sampling.abc_constraint`) masks every byte whose step is
``None``.  States are small and hashable, so the set of legal next bytes is computed once per
distinct state and cached by the caller.  Text is what BlinkDL's ABC models write (FORMATS B):
optional control codes, header, body, then eos.

Grammar subset (strict = default :class:`AbcGrammarConfig`; *lenient* = :meth:`AbcGrammarConfig.human`):

==========================  =================================================================
construct                   accepted (strict)
==========================  =================================================================
control codes               ``S:n`` (1-8, first), ``B:n`` (1-32), ``E:n`` (0-10), one per line,
                            before any header field
``X:``                      ``X:digits`` first among header fields (optional/required/forbidden)
header fields               ``T C O A N Z R D H G F S B W`` free text; ``Q:bpm`` / ``Q:1/4=bpm``
                            (40-240); ``M:`` ``C`` ``C|`` ``n/d`` (n <= 12, d in 2..16) ``none``;
                            ``L:1/4`` .. ``L:1/32``; ``K:`` tonic ``[A-G][#b]?`` + ``m min maj
                            mix dor phr lyd loc aeo ion`` (<= 7 sharps/flats), ``HP``, ``Hp``,
                            ``none``; one optional space after ``:``; M and L once each; ``K:``
                            last, and only after ``M:`` or ``L:`` (music21 needs one to time notes)
note                        ``[decorations][^ ^^ _ __ =]pitch[' or ,]*[length]``; pitch
                            ``A-G a-g``; ``'`` after lower case, ``,`` after upper case (<= 2)
length                      ``n`` (1-16), ``/``, ``//``, ``///``, ``/d``, ``n/``, ``n/d``
                            (d in 2, 4, 8, 16); no leading zeros (music21 misreads ``n//``)
rest                        ``z[length]``  (``x``, ``Z``: lenient only -- music21 drops them)
chord                       ``[CEG][length]``, 1-4 notes with accidentals and octave marks, no
                            inner lengths (lenient: inner lengths, the first note's counts)
tuplet                      ``(p``, ``(p:q``, ``(p:q:r``, ``(p::r`` (single digits, p 2..9,
                            music21's default q); the next r notes/rests/chords; no bar line,
                            line break or grace group inside
broken rhythm               ``>`` ``>>`` ``>>>`` ``<`` ``<<`` ``<<<`` directly between two
                            notes/rests/chords, not in tuplets, not chained
tie, slur                   ``-`` after a note; ``(`` ... ``)`` up to 2 deep, closed by the end
grace notes                 ``{ga}``, ``{/g}``, 1-4 notes with lengths, before a note
decorations                 ``~ . T u v`` and ``!name!`` (trill, fermata, accent, p, mf, ...)
                            before a note (H drops the note in music21: lenient only)
chord symbols               ``"Am7/G"``: root, ``#``/``b``, quality (m 7 m7 maj7 dim dim7 aug +
                            sus2 sus4 6 m6 9 m9 add9 m7b5), ``/bass``; before a note
bar lines                   ``| || |] [| |: :| :: |1 |2 :|1 :|2 [1 [2`` (music21's tokens)
body field lines            ``K:`` any time, ``M:`` and ``L:`` between bars, own line
inline fields, comments     lenient only (music21 ignores ``[M:]``/``[L:]``; ``%`` via config)
spacing                     spaces between elements, ``\\`` + newline, newlines; no blank line
==========================  =================================================================

Bar balance (exact fractions; ``M:none`` = no checks):

* a bar never exceeds the meter: a note's length is only allowed while it still fits;
* a bar line may close a **full** bar; a **short** bar only if it is (a) the first bar of the
  tune (pickup), (b) closed by a *section* bar line (anything but ``|``: ``|| |] [| |: :| ::``
  and endings), or (c) the bar right after a section bar line -- with ``pair_short_bars``
  (strict default) only when it completes the short bar before that line (``A6 :| B2 |`` in
  4/4); a bar line right after another bar line just merges with it;
* the tune may end (eos) only at a bar line that can end a tune (``| || |] :|``) with nothing
  after it but spaces, newlines or field lines, after at least one pitched note,
  ``min_full_bars`` complete bars, with slurs, tuplets and decorations closed.

Strict mode keeps every reachable state completable (see :mod:`rwkv_music.sampling.abc_timing`
for the grid argument), so a correct constraint never leaves a row without a legal byte;
:func:`rwkv_music.sampling.abc_complete.completion` builds the shortest known way to a legal end.

>>> g = AbcGrammar()
>>> g.accepts("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2|e6|]")
True
>>> g.accepts("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2|e4|]"), g.explain("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2 e|").reason
(False, "byte 'e' not allowed in body/idle")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rwkv_music.sampling.abc_body import BodyRules
from rwkv_music.sampling.abc_header import HeaderRules
from rwkv_music.sampling.abc_state import BODY, CONTROL, HEADER, AbcGrammarConfig, AbcState
from rwkv_music.sampling.abc_values import (
    DECORATION_NAMES,
    ValueSet,
    bar_texts,
    chord_symbol_texts,
    control_values,
    key_values,
    length_texts,
    meter_values,
    tempo_values,
    tuplet_texts,
    unit_values,
)

Handler = Callable[[AbcState, str], "AbcState | None"]
PHASE_NAMES = {CONTROL: "control", HEADER: "header", BODY: "body"}
_LENGTH = frozenset("0123456789/")
_EXTENDERS = {  # characters read by the token's own rule; ':' after a note is special ("A::")
    "note": _LENGTH | {"'", ",", ":"}, "rest": _LENGTH, "clen": _LENGTH,
    "bar": frozenset("|]:[0123456789"), "tup": frozenset("0123456789:"),
}  # fmt: skip


@dataclass(frozen=True)
class Rejection:
    """Where and why a text leaves the grammar (for diagnostics and benchmarks)."""

    position: int  # index of the offending character (len(text) if the text ends too early)
    char: str  # the character ('' at the end of the text)
    phase: str
    mode: str
    reason: str


class AbcGrammar(HeaderRules, BodyRules):
    """The ABC state machine for one configuration.  Immutable after construction.

    Args:
        config: the ABC subset (:class:`AbcGrammarConfig`; default strict).
    """

    def __init__(self, config: AbcGrammarConfig | None = None) -> None:
        cfg = config if config is not None else AbcGrammarConfig()
        self.config = cfg
        self._lenient = cfg.lenient
        meters = meter_values(cfg.max_meter_numerator, cfg.free_meter, cfg.meter_denominators)
        self._meters = ValueSet([cfg.meter] if cfg.meter else meters)
        self._units = ValueSet([cfg.unit] if cfg.unit else unit_values(cfg.unit_denominators))
        self._keys = ValueSet([cfg.key] if cfg.key else key_values(cfg.lenient))
        self._tempos = ValueSet(tempo_values())
        self._controls = {letter: ValueSet(control_values(letter)) for letter in "SBE"}
        self._bars = ValueSet(bar_texts(cfg.lenient))
        self._tuplets = ValueSet(tuplet_texts())
        self._decorations = None if cfg.lenient else ValueSet(DECORATION_NAMES)
        self._chord_names = ValueSet(chord_symbol_texts()) if cfg.chord_symbols == "chords" else None
        self._init_timing(length_texts(cfg.max_length_numerator, cfg.length_denominators, cfg.lenient))
        self._init_body()
        header: dict[str, Handler] = {
            "line": self._h_line, "letter": self._h_letter, "value": self._h_value,
            "text": self._h_text, "comment": self._h_comment,
        }  # fmt: skip
        body: dict[str, Handler] = {
            "idle": self._b_idle, "deco": self._b_deco, "acc": self._b_acc, "note": self._b_note, "rest": self._b_rest,
            "clen": self._b_chord_length, "mrest": self._b_multirest, "lbr": self._b_bracket,
            "group": self._b_group, "gacc": self._b_acc, "gnote": self._b_inner_note,
            "quote": self._b_quote, "bang": self._b_bang, "paren": self._b_paren, "tup": self._b_tuplet,
            "brk": self._b_broken, "bar": self._b_bar, "fletter": self._b_field_letter,
            "value": self._h_value, "text": self._h_text, "comment": self._h_comment,
            "cont": self._b_continue, "ilet": self._b_inline_letter, "ival": self._b_inline_value,
        }  # fmt: skip
        self._handlers = {CONTROL: header, HEADER: header, BODY: body}

    # -- public API ---------------------------------------------------------------------------
    def initial(self) -> AbcState:
        """The state before the first character (bos)."""
        return AbcState()

    def step(self, state: AbcState, char: str) -> AbcState | None:
        """The state after one character, or ``None`` if the character is not allowed here."""
        return self._handlers[state.phase][state.mode](state, char)

    def feed(self, state: AbcState, text: str) -> AbcState | None:
        """The state after ``text`` (``None`` as soon as a character is not allowed)."""
        for char in text:
            state = self.step(state, char)  # type: ignore[assignment]
            if state is None:
                return None
        return state

    def is_final(self, state: AbcState) -> bool:
        """Whether the tune may end here (eos is legal)."""
        return state.phase == BODY and self._final(state)

    def accepts(self, text: str, *, complete: bool = True) -> bool:
        """Whether ``text`` (model text: control codes and header, no bos/eos) is legal.

        With ``complete=False`` any legal prefix is accepted.
        """
        state = self.feed(self.initial(), text)
        return state is not None and (not complete or self.is_final(state))

    def explain(self, text: str, *, complete: bool = True) -> Rejection | None:
        """``None`` if ``text`` is accepted, else where and why it is not."""
        state = self.initial()
        for i, char in enumerate(text):
            nxt = self.step(state, char)
            if nxt is None:
                return Rejection(i, char, PHASE_NAMES[state.phase], state.mode,
                                 f"byte {char!r} not allowed in {PHASE_NAMES[state.phase]}/{state.mode}")  # fmt: skip
            state = nxt
        if complete and not self.is_final(state):
            return Rejection(len(text), "", PHASE_NAMES[state.phase], state.mode,
                             f"text ends in {PHASE_NAMES[state.phase]}/{state.mode}, where the tune may not end")  # fmt: skip
        return None

    def extenders(self, state: AbcState) -> frozenset[str] | None:
        """Characters that continue the token being read (a note length, a bar line ...).

        Every other character first ends the token, so its successor is the same as from
        :meth:`finish_token`'s state: callers that cache successors per state use this to share
        work.  ``None`` for modes without this shortcut.
        """
        return _EXTENDERS.get(state.mode) if state.phase == BODY else None

    def finish_token(self, state: AbcState) -> AbcState | None:
        """The state after the token being read ends (``None`` if it cannot end here)."""
        return self._finished(state)

    def allowed(self, state: AbcState) -> str:
        """The ASCII characters (codes 0..127) legal in ``state``, in code order."""
        return "".join(chr(b) for b in range(128) if self.step(state, chr(b)) is not None)

    def completion(self, state: AbcState) -> str | None:
        """The shortest known text that takes ``state`` to a legal end (``None``: none found)."""
        from rwkv_music.sampling.abc_complete import completion

        return completion(self, state)


__all__ = ["AbcGrammar", "AbcGrammarConfig", "AbcState", "Rejection"]
