"""An incremental, byte-level state machine for valid, bar-balanced ABC (issue 4).

``AbcGrammar.step(state, char)`` returns the next immutable :class:`AbcState` or ``None``; the
ABC constraint (:mod:`rwkv_music.formats.abc.constraint`) masks every byte whose step is
``None``.  States are small and hashable, so the set of legal next bytes is computed once per
distinct state and cached by the caller.  Text is what BlinkDL's ABC models write (docs/formats.md B):
optional control codes, header, body, then eos.

Grammar subset (strict = default :class:`AbcGrammarConfig`; *lenient* = :meth:`AbcGrammarConfig.human`,
for reading human tunes; each strict limit below is a config field):

==========================  =================================================================
construct                   accepted (strict)
==========================  =================================================================
control codes               ``S:n`` (1-8, first), ``B:n`` (1-32), ``E:n`` (0-10), one per line,
                            before any header field (TunesFormer, docs/formats.md B)
``X:``                      ``X:digits``, first among header fields (optional/required/forbidden)
header fields               ``T C O A N Z R D H G F S B W`` free text; ``Q:bpm`` / ``Q:1/4=bpm``
                            (bpm 40-240); ``M:`` ``C`` ``C|`` ``n/d`` (n <= 12, d 2..16) ``none``;
                            ``L:1/4`` .. ``L:1/32``; ``K:`` tonic ``[A-G][#b]?`` + mode ``m min
                            maj mix dor phr lyd loc aeo ion`` (<= 7 sharps/flats), ``HP``,
                            ``Hp``, ``none``; one optional space after ``:``; M, L at most once;
                            ``K:`` last, only after ``M:`` or ``L:`` (music21 needs one)
note                        ``[decorations][^ ^^ _ __ =]pitch[octave marks][length]``: pitch
                            ``A-G a-g``; ``'`` after lower case, ``,`` after upper case (<= 2)
length                      ``n`` (1-16), ``/``, ``//``, ``///``, ``/d``, ``n/``, ``n/d``
                            (d 2, 4, 8, 16), no leading zero (music21 misreads ``n//``)
rest                        ``z[length]`` (``x``, ``Z``: lenient only; music21 drops them)
chord                       ``[CEG][length]``: 1-4 notes with accidentals and octave marks; no
                            inner lengths (lenient: allowed, the first note's counts)
tuplet                      ``(p`` ``(p:q`` ``(p:q:r`` ``(p::r`` (one digit each, p 2-9,
                            music21's default q): the next r notes/rests/chords, each one
                            notehead long (music21 cannot tuple a tied 5/8); no bar line, line
                            break or grace group inside; the tuplet ends on the grid (below)
broken rhythm               ``>`` ``>>`` ``>>>`` ``<`` ``<<`` ``<<<`` right between two
                            notes/rests/chords (music21 pairs neighbours only), not in tuplets,
                            not chained; the pair ends on the grid
tie, slur                   ``-`` after a note; ``(`` ... ``)`` up to 2 deep, closed by the end
grace notes                 ``{ga}``, ``{/g}``: 1-4 notes with lengths, before a note
decorations                 ``. u v`` and ``!name!`` (trill, fermata, accent, p, mf, ... ) before
                            a note; ``~ T`` right before it (music21 reads ``~.`` as a note);
                            ``H`` etc. lenient only (music21 drops a note after ``H``)
chord symbols               ``"Am7/G"``: root, ``#``/``b``, quality (m 7 m7 maj7 dim dim7 aug +
                            sus2 sus4 6 m6 9 m9 add9 m7b5), ``/bass``; before a note
bar lines                   ``| || |] [| |: :| :: |1 |2 :|1 :|2 [1 [2`` (music21's bar tokens);
                            not ``::`` right after a bare upper-case note (``A::`` reads as a
                            field ``A:``), no empty bar right after ``|:``/``::``
body field lines            ``K:`` ``M:`` ``L:`` on their own line between bars (music21 starts
                            a measure at any field line); no ``M:none`` in the body
inline fields, comments     lenient only (music21 ignores ``[M:]``/``[L:]``); ``%`` by config
spacing                     spaces, ``\\`` + newline, newlines; no blank line (ends a tune)
==========================  =================================================================

Bar balance (exact :class:`~fractions.Fraction` durations in whole notes; ``M:none`` = none):

* a bar never exceeds the meter: a length byte is only allowed while the note still fits;
* a bar line closes a **full** bar, whatever its kind (``||`` and ``|]`` exempt nothing).  The
  only short bars (``short_bars="paired"``, the default; issue 15) come in pairs inside one
  section: the tune's first bar may be a pickup of length ``p``; a later section may open with
  a pickup of the same ``p`` right after ``|| |] [| |: :| ::``; a section that opened with a
  pickup must close -- after at least two full bars, with one of those bar lines -- with a bar
  of exactly ``bar - p`` (the pickup and that bar make one bar), and no ending may come inside
  it.  These are the pairs the strict judge (:mod:`rwkv_music.formats.abc.judge`) accepts.
  The older, looser policies stay for reading human tunes: ``"sections"`` (a short bar at any
  section bar line, and after one -- with ``pair_short_bars`` only when it completes the one
  before), ``"pickup"`` (only the first bar) and ``"none"``.  Outside a form, a bar line right
  after another one (an empty bar) just merges with it;
* eos only right after a bar line that may end a tune (``| || |] :|``), possibly followed by
  spaces, newlines or field lines, once a pitched note and ``min_full_bars`` full bars were
  written, no pickup pair is owed and no slur, tuplet, decoration or chord symbol is open.

**Form** (``AbcGrammarConfig(form=True)``, the constraint's default): ``parts`` parts (``S:n``
or 2) of ``bars_per_part`` bars (``B:m`` or 8).  If the tune's first bar is a pickup of ``p``,
every part opens with a pickup of ``p`` and closes with a bar of ``bar - p``; otherwise every
bar is full.  Bars inside a part end with ``|``; a part ends with ``||`` or ``:|``, the last
with ``|]`` or ``:|``, and then only eos may follow.  A line break comes right after every
``bars_per_line``-th bar of a part and after each part end, and nowhere else; at most
``max_spaces`` spaces in a row, none at a line start; no empty bars, endings, body field lines
or continuations.  With ``cadence`` the tune's last pitched note is the tonic letter of ``K:``
(no accidental, chord, tuplet or broken rhythm in the last bar, and a note that is not the
tonic may not fill it).  The form's state is a few small integers (part, bar in part, pickup
in grid units, spaces in a row) and flags.

Strict mode keeps every reachable state completable (the grid argument of
:mod:`rwkv_music.formats.abc.grammar.timing`): a correct constraint never leaves a row without a legal
byte; :class:`rwkv_music.formats.abc.grammar.complete.Completer` builds a short way to a legal end.

Structure: :class:`AbcGrammar` is thin.  It holds the state value's dispatch table (phase and
mode -> rule) and delegates to small rule objects, each with its own tables and no shared
``self``: :class:`~rwkv_music.formats.abc.grammar.header.HeaderRules` (control codes, header
and field lines), :class:`~rwkv_music.formats.abc.grammar.body.BodyRules` (notes, rests, bar
lines between tokens), :class:`~rwkv_music.formats.abc.grammar.groups.NoteGroupRules` (chords,
grace groups, symbols, slurs, tuplets, broken rhythm),
:class:`~rwkv_music.formats.abc.grammar.pitch.PitchRules` (letters, octave marks, range) and
:class:`~rwkv_music.formats.abc.grammar.timing.BarTiming` (durations, grid lookahead, tuplet
openers, bar lines).  Every rule is a function ``(AbcState, char) -> AbcState | None``.

>>> g = AbcGrammar()
>>> g.accepts("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2|e6|]")
True
>>> g.accepts("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2|e4|]")  # a short bar, whatever closes it
False
>>> g.explain("L:1/8\\nM:3/4\\nK:D\\nA2 Bc d2 e|").reason  # a seventh eighth in 3/4
"byte 'e' not allowed in body/idle"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rwkv_music.formats.abc.grammar.body import BodyRules
from rwkv_music.formats.abc.grammar.complete import Completer
from rwkv_music.formats.abc.grammar.header import HeaderRules
from rwkv_music.formats.abc.grammar.pitch import PitchRules
from rwkv_music.formats.abc.grammar.state import BODY, CONTROL, HEADER, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.timing import BarTiming

Rule = Callable[[AbcState, str], "AbcState | None"]
PHASE_NAMES = {CONTROL: "control", HEADER: "header", BODY: "body"}
_ALL_CHARS = "".join(chr(b) for b in range(128))
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


class AbcGrammar:
    """The ABC state machine for one configuration.

    Its behaviour is fixed at construction (its rule objects only keep small caches of recent
    answers); states are values, so one grammar can serve any number of rows.

    Args:
        config: the ABC subset (:class:`AbcGrammarConfig`; default strict).
    """

    def __init__(self, config: AbcGrammarConfig | None = None) -> None:
        cfg = config if config is not None else AbcGrammarConfig()
        self.config = cfg
        self.header = header = HeaderRules(cfg)
        self.timing = timing = BarTiming(cfg)
        self.pitches = pitches = PitchRules(cfg)
        self.body = body = BodyRules(cfg, header, timing, pitches)
        groups = body.groups
        head: dict[str, Rule] = {
            "line": header.line, "letter": header.letter, "value": header.value,
            "text": header.text, "comment": header.comment,
        }  # fmt: skip
        tune: dict[str, Rule] = {
            "idle": body.idle, "deco": body.decoration, "acc": body.accidental, "note": body.note,
            "rest": body.rest, "clen": body.chord_length, "mrest": body.multirest, "bar": body.bar,
            "fletter": body.field_letter, "cont": body.continuation, "ilet": body.inline_letter,
            "ival": body.inline_value,
            "lbr": groups.bracket, "group": groups.group, "gacc": groups.group_accidental,
            "gnote": groups.inner_note, "quote": groups.quote, "bang": groups.bang, "paren": groups.paren,
            "tup": groups.tuplet, "brk": groups.broken,
            "value": header.value, "text": header.text, "comment": header.comment,
        }  # fmt: skip
        self._rules = {CONTROL: head, HEADER: head, BODY: tune}
        self._completer = Completer(cfg, header, timing, groups, self.feed, self.is_final, body.finish_token)

    # -- public API ---------------------------------------------------------------------------
    def initial(self) -> AbcState:
        """The state before the first character (bos)."""
        return AbcState()

    def step(self, state: AbcState, char: str) -> AbcState | None:
        """The state after one character, or ``None`` if the character is not allowed here."""
        t = self._rules[state.phase][state.mode](state, char)
        if t is not None and t.spaces and char != " ":
            return t.replace(spaces=0)  # (form) the run of spaces ended
        return t

    def feed(self, state: AbcState, text: str) -> AbcState | None:
        """The state after ``text`` (``None`` as soon as a character is not allowed)."""
        for char in text:
            state = self.step(state, char)  # type: ignore[assignment]
            if state is None:
                return None
        return state

    def is_final(self, state: AbcState) -> bool:
        """Whether the tune may end here (eos is legal)."""
        return state.phase == BODY and self.body.final(state)

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
                return Rejection(
                    i,
                    char,
                    PHASE_NAMES[state.phase],
                    state.mode,
                    f"byte {char!r} not allowed in {PHASE_NAMES[state.phase]}/{state.mode}",
                )
            state = nxt
        if complete and not self.is_final(state):
            return Rejection(
                len(text),
                "",
                PHASE_NAMES[state.phase],
                state.mode,
                f"text ends in {PHASE_NAMES[state.phase]}/{state.mode}, where the tune may not end",
            )
        return None

    def extenders(self, state: AbcState) -> frozenset[str] | None:
        """Characters that continue the token being read (a note length, a bar line ...).

        Every other character first ends the token, so its successor is the same as from
        :meth:`finish_token`'s state: callers that cache successors per state use this to share
        work.  ``None`` for modes without this shortcut.
        """
        return _EXTENDERS.get(state.mode) if state.phase == BODY else None

    def candidates(self, state: AbcState) -> str:
        """Characters that may be legal in ``state`` (a superset; all 128 except in a few modes)."""
        return self.body.idle_candidates if state.phase == BODY and state.mode == "idle" else _ALL_CHARS

    def finish_token(self, state: AbcState) -> AbcState | None:
        """The state after the token being read ends (``None`` if it cannot end here)."""
        return self.body.finish(state)

    def allowed(self, state: AbcState) -> str:
        """The ASCII characters (codes 0..127) legal in ``state``, in code order."""
        return "".join(chr(b) for b in range(128) if self.step(state, chr(b)) is not None)

    def completion(self, state: AbcState) -> str | None:
        """The shortest known text that takes ``state`` to a legal end (``None``: none found)."""
        return self._completer.completion(state)


__all__ = ["AbcGrammar", "AbcGrammarConfig", "AbcState", "PHASE_NAMES", "Rejection"]
