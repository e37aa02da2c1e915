"""The shortest known way from an ABC state to a legal end of tune.

:meth:`Completer.completion` builds text that takes a state of the ABC machine to one where eos
is legal: finish the header line and the header (``M:`` if needed, ``K:``), finish the token
being read, give pending decorations / tuplets / broken rhythms their notes, close slurs, fill
the bar with notes or rests and end it with a bar line.  Every candidate is checked by feeding
it through the machine, so a returned text is always legal; its length is what the constraint
uses to steer toward ``max_new_tokens`` (``len(completion) + 1`` bytes including eos).  It is
short, not guaranteed minimal.

A :class:`Completer` gets what it needs as arguments (the machine's ``feed``/``is_final``/
``finish_token`` and the rule objects whose tables it reads), so this module does not import
the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rwkv_music.formats.abc.grammar.groups import NoteGroupRules
from rwkv_music.formats.abc.grammar.header import HeaderRules
from rwkv_music.formats.abc.grammar.state import BODY, CONTROL, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.timing import BarTiming

PITCH_ORDER = "CcDdEeFfGgAaBb"
_MAX_TOKEN_STEPS = 16


@dataclass(frozen=True)
class Completer:
    """Finds short legal endings; see the module docstring.

    Args:
        config: the grammar configuration.
        header, timing, groups: the machine's rule objects (value sets, length, bar-line and
            tuplet tables, symbol names).
        feed: the machine's ``feed(state, text)`` (``None`` if the text is not allowed).
        is_final: the machine's ``is_final(state)``.
        finish: the machine's ``finish_token(state)``.
    """

    config: AbcGrammarConfig
    header: HeaderRules
    timing: BarTiming
    groups: NoteGroupRules
    feed: Callable[[AbcState, str], "AbcState | None"]
    is_final: Callable[[AbcState], bool]
    finish: Callable[[AbcState], "AbcState | None"]

    @property
    def lenient(self) -> bool:
        return self.config.lenient

    def completion(self, s: AbcState) -> str | None:
        """Text after which ``is_final`` holds, or ``None`` if none was found."""
        g = self
        if g.is_final(s):
            return ""
        head = ""
        if s.phase != BODY:
            head = _finish_header(g, s)
            if head is None:
                return None
            s = g.feed(s, head)  # type: ignore[assignment]
            if s is None:
                return None
        token = _close_token(g, s)
        if token is None:
            return None
        after = g.feed(s, token)
        if after is None:
            return None
        if self.config.form or (self.config.short_bars == "paired" and not self.lenient):
            tail = _greedy(g, after)
            return None if tail is None else head + token + tail
        for tail in _tails(g, after):
            end = g.feed(after, tail)
            if end is not None and g.is_final(end):
                return head + token + tail
        return None


# -- header --------------------------------------------------------------------------------------
def _value_completion(g: Completer, s: AbcState, letter: str, typed: str) -> str | None:
    if letter == "X" and s.phase != CONTROL:
        return "" if typed.strip() else "1"
    probe = s.replace(mode="value", field=letter, buf=typed)
    values = g.header.value_set(probe)
    if values is None:  # free text
        return ""
    return values.completion(typed.lstrip(" "))


def _finish_header(g: Completer, s: AbcState) -> str | None:
    """End the header line being read, add ``M:`` if neither M nor L was given, then ``K:``."""
    out = ""
    if s.mode == "letter":
        rest = _value_completion(g, s.replace(mode="value"), s.field, "")
        if rest is None:
            return None
        out = ":" + rest + "\n"
    elif s.mode == "value":
        rest = _value_completion(g, s, s.field, s.buf)
        if rest is None:
            return None
        out = rest + "\n"
    elif s.mode in ("text", "comment"):
        out = "\n"
    t = g.feed(s, out)
    if t is None:
        return None
    if t.phase == BODY:
        return out
    cfg = g.config
    if cfg.x_field == "required" and "X" not in t.seen:
        out += "X:1\n"
    if "M" not in t.seen and (cfg.meter is not None or "L" not in t.seen or cfg.form):  # the form needs a metre
        out += "M:" + (g.header.meters.completion("") or "C") + "\n"
    if cfg.unit is not None and "L" not in t.seen:
        out += "L:" + cfg.unit + "\n"
    return out + "K:" + (g.header.keys.completion("") or "C") + "\n"


# -- the token being read ----------------------------------------------------------------------------
def _close_token(g: Completer, s: AbcState) -> str | None:
    """Text that completes the token in progress (``""`` if it is complete already)."""
    out = ""
    for _ in range(_MAX_TOKEN_STEPS):
        if g.finish(s) is not None:
            return out
        piece = _token_piece(g, s)
        if piece is None:
            return None
        nxt = g.feed(s, piece)
        if nxt is None:
            return None
        out, s = out + piece, nxt
    return None


def _first_ok(g: Completer, s: AbcState, candidates: list[str]) -> str | None:
    """The first candidate that is legal from ``s`` and leaves a finishable or longer-lived state."""
    for cand in candidates:
        t = g.feed(s, cand)
        if t is not None and (g.finish(t) is not None or t.mode != s.mode or t.buf != s.buf):
            return cand
    return None


def _pitch(g: Completer, s: AbcState) -> str | None:
    return _first_ok(g, s, list(PITCH_ORDER))


def _token_piece(g: Completer, s: AbcState) -> str | None:
    """One step toward finishing the token of ``s``."""
    mode = s.mode
    if mode in ("note", "rest", "clen", "gnote"):
        texts = sorted((t for t in g.timing.lengths if t.startswith(s.buf) and t != s.buf), key=lambda t: (len(t), t))
        suffixes = [t[len(s.buf) :] for t in texts]
        if mode == "gnote":
            suffixes = ["]" if s.field == "c" else "}"] + suffixes
        for suffix in suffixes:
            t = g.feed(s, suffix)
            if t is not None and (g.finish(t) is not None or mode == "gnote"):
                return suffix
        return None
    if mode in ("acc", "gacc", "paren", "deco"):
        return _pitch(g, s)
    if mode == "group":
        return ("]" if s.field == "c" else "}") if s.count else _pitch(g, s)
    if mode in ("quote", "bang"):
        names = g.groups.chord_names if mode == "quote" else g.groups.decorations
        rest = "" if names is None else names.completion(s.buf)
        return None if rest is None else rest + ('"' if mode == "quote" else "!")
    if mode == "bar":
        bars = g.timing.bars.values
        texts = sorted((t for t in bars if t.startswith(s.buf) and t != s.buf), key=lambda t: (len(t), t))
        return _first_ok(g, s, [t[len(s.buf) :] for t in texts])
    if mode == "tup":
        return _first_ok(g, s, [t[len(s.buf) :] for t in g.timing.tuplet_ext.get(s.buf, []) if t != s.buf])
    if mode == "lbr":
        return _first_ok(g, s, ["|"] + [p + "]" for p in PITCH_ORDER])
    if mode == "brk":
        return _first_ok(g, s, ["z"] + list(PITCH_ORDER))
    if mode == "fletter":
        rest = _value_completion(g, s.replace(phase=BODY), s.buf, "")
        return _first_ok(g, s, ([":" + rest + "\n"] if rest is not None else []) + list(PITCH_ORDER))
    if mode == "value":
        rest = _value_completion(g, s, s.field, s.buf)
        return None if rest is None else rest + "\n"
    if mode in ("text", "comment", "cont"):
        return "\n"
    if mode == "ilet":
        return ":]"
    if mode == "ival":
        return "]"
    return None


# -- from a token boundary to the end ----------------------------------------------------------------
def _note(g: Completer, s: AbcState, pitched: bool) -> str | None:
    """One legal note (pitched) or rest from ``s``, with the shortest legal length."""
    for start in ([] if pitched else ["z"]) + [_pitch(g, s)]:
        t = g.feed(s, start) if start is not None else None
        if t is None:
            continue
        for text, _ in g.timing.length_choices:
            u = g.feed(t, text)
            if u is not None and g.finish(u) is not None:
                return start + text  # type: ignore[operator]
    return None


_MAX_PIECES = 6000  # pieces of a greedy ending (the longest form: 8 parts of 32 bars)


def _fill_note(g: Completer, s: AbcState, t: AbcState) -> str | None:
    """One note of the greedy fill from ``s`` (finished state ``t``): the longest that fits the bar.

    A rest, but a pitched note when none was written yet, and the tonic in a cadence bar.
    """
    timing = g.timing
    if timing.cadence_bar(t):
        letter = t.tonic
        starts = [letter, letter.lower(), letter + ",", letter.lower() + "'"]
    elif not t.any_note:
        starts = [_pitch(g, s) or "C"]
    else:
        starts = ["z"]
    room = (timing.target(t) - t.pos) / t.unit
    for start in starts:
        u = g.feed(s, start)
        if u is None:
            continue
        for text, value in reversed(timing.length_choices_by_value):
            if value <= room:
                v = g.feed(u, text)
                if v is not None and g.finish(v) is not None:
                    return start + text
    return None


def _greedy(g: Completer, s: AbcState) -> str | None:
    """An ending built piece by piece (strict metre and form): owed notes, slurs, then bars.

    Each bar is filled toward :meth:`BarTiming.target` and closed by the first bar line the
    machine takes (``|``, ``|]``, ``||``, ``:|``); line breaks come where the form asks.
    """
    out = ""
    for _ in range(_MAX_PIECES):
        if g.is_final(s):
            return out
        t = g.finish(s)
        if t is None:
            return None
        if t.need_nl:
            piece = "\n"
        elif t.tuplet is not None or t.need_note or t.broken is not None:
            piece = _note(g, s, not t.any_note)  # type: ignore[assignment]
        elif t.slur and g.feed(s, ")") is not None:
            piece = ")"
        elif t.bar_len is None:
            piece = (_note(g, s, True) or "") if not t.any_note else ("" if t.bar_notes else "C") + "|"
        elif t.bar_notes and t.pos >= g.timing.target(t):
            piece = next((b for b in ("|", "|]", "||", ":|") if _closes(g, s, b)), None)  # type: ignore[assignment]
        else:
            piece = _fill_note(g, s, t)  # type: ignore[assignment]
        nxt = g.feed(s, piece) if piece else None
        if nxt is None:
            return None
        out, s = out + piece, nxt
    return None


def _closes(g: Completer, s: AbcState, bar: str) -> bool:
    t = g.feed(s, bar)
    return t is not None and g.finish(t) is not None


def _fill(g: Completer, t: AbcState, pitch: str) -> str:
    """Plain notes filling the rest of the bar of the finished state ``t`` (greedy, longest first)."""
    first = pitch if not t.any_note else "z"
    if t.bar_len is None:
        return "" if t.bar_notes and t.any_note else first
    room = (t.bar_len - t.pos) / t.unit
    out = []
    for text, value in reversed(g.timing.length_choices_by_value):
        while value <= room:
            out.append((first if not out else "z") + text)
            room -= value
    return "".join(out)


def _tails(g: Completer, s: AbcState) -> list[str]:
    """Candidate endings from ``s`` (token complete), shortest first; each is checked by the caller.

    Notes owed to an open tuplet, a decoration / chord symbol / grace group or a broken rhythm
    come first, then slurs close, then the bar is ended: by a bar line alone (a short bar that
    may end, an empty bar), by ``|]`` (a section line may end a short bar), or filled; then more
    full bars while ``min_full_bars`` or a first pitched note is still missing.
    """
    head = " " if s.mode == "bar" else ""  # a bar line being read would swallow the next "|"
    for _ in range(12):
        t = g.finish(s)
        if t is None or not (t.tuplet is not None or t.need_note or t.broken is not None):
            break
        note = _note(g, s, not t.any_note)
        s = g.feed(s, note) if note is not None else None  # type: ignore[assignment]
        if s is None:
            return []
        head += note  # type: ignore[operator]
    t = g.finish(s)
    if t is None:
        return []
    head += "" if g.lenient else ")" * t.slur
    pitch = _pitch(g, t) or "z"
    tails = [head + "|", head + "|]", head + _fill(g, t, pitch) + "|"]
    after = g.feed(s, tails[-1])
    start = g.finish(after) if after is not None else None
    if start is not None and start.phase == BODY:
        bar = _fill(g, start, pitch) + "|"  # a whole bar: ``start`` is at a bar line
        for _ in range(g.config.min_full_bars + 1):
            tails.append(tails[-1] + bar)
    return sorted(tails, key=lambda t: (len(t), t))


__all__ = ["Completer"]
