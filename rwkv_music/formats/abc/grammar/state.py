"""Configuration and state value of the ABC state machine (see :mod:`rwkv_music.formats.abc.grammar.machine`).

:class:`AbcGrammarConfig` is the frozen set of switches (defaults = the strict subset used to
constrain generation; :meth:`AbcGrammarConfig.human` = the relaxed subset used to read human
tunes).  :class:`AbcState` is the immutable, hashable machine state: everything the next byte
depends on, and nothing else (no text already read), so equal states can share cached masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from rwkv_music.sampling.base import SamplingValueError

CONTROL, HEADER, BODY = 0, 1, 2  # phases: control-code block, header fields, tune body

ZERO = Fraction(0)


@dataclass(frozen=True)
class AbcGrammarConfig:
    """Switches of the ABC subset.  Defaults: the strict subset for constrained generation.

    Args:
        x_field: ``"optional"`` (an ``X:`` line may open the header), ``"required"`` or ``"forbidden"``.
        control_codes: allow TunesFormer ``S:``/``B:``/``E:`` lines before the header (docs/formats.md B).
        text_fields: header letters whose value is free text.
        tempo_field: allow ``Q:`` (strict value ``bpm`` or ``beat=bpm``).
        body_fields: letters of field lines allowed inside the body (``K:``, ``M:``, ``L:``).
        comments: allow ``%`` comment lines and trailing comments.
        free_meter: allow ``M:none`` (no bar checks).
        max_meter_numerator, meter_denominators: the ``n/d`` meters allowed (plus ``C``, ``C|``).
        unit_denominators: the ``L:1/d`` unit lengths allowed.
        max_length_numerator: largest numerator of a note length (``A16``).
        length_denominators: denominators of note lengths (``A3/2``, ``A/4``).
        chord_symbols: ``"chords"`` (quoted chord symbols such as ``"Am7/G"``), ``"any"`` (any
            quoted text) or ``"none"``.
        decorations: one-character decorations placed before a note.
        named_decorations: allow ``!trill!``-style decorations (strict: a fixed list of names).
        chords, max_chord_notes: allow ``[CEG]`` chords of up to this many notes.
        grace_notes, max_grace_notes: allow ``{ga}`` grace groups of up to this many notes.
        tuplets, broken_rhythm: allow ``(3abc`` / ``(p:q:r`` and ``A>B`` / ``A<B``.
        max_slur_depth: deepest nesting of ``( )`` slurs (strict: all must close before the end).
        max_octave_marks: most ``'`` or ``,`` after one note.
        short_bars: which bars may be shorter than the meter: ``"paired"`` (default, the strict
            metre rule of issue 15: a section's opening pickup, and its closing bar completing
            that pickup; see the grammar docstring), ``"sections"`` (the old loose rule, kept for
            reading human tunes: the first bar, a bar ended by a double/final/repeat bar line,
            and the bar after one), ``"pickup"`` (only the first bar) or ``"none"``.
        pair_short_bars: with ``"sections"``, a short bar right after a section bar line must
            complete the short bar before it (``|: ... A6 :| B2 | ...`` in 4/4 with L:1/8).
        form: impose a tune form (the constraint's default; off for the bare grammar): ``parts``
            parts of ``bars_per_part`` bars, section bar lines exactly at part ends, line breaks
            every ``bars_per_line`` bars, at most ``max_spaces`` spaces in a row, the tune ends
            right after its last part, on the tonic with ``cadence``.  Implies strict bars (one
            pickup length for the whole tune, decided by the first bar), no body field lines,
            no ``\\`` continuations and no endings (``|1``, ``[2``).
        parts: parts of the tune; ``None``: the prompt's ``S:n`` control code, else 2.
        bars_per_part: bars of each part (a pickup and the closing bar it completes count as
            one); ``None``: the prompt's ``B:m`` control code, else 8.
        cadence: the last note of the tune is the tonic of ``K:`` (its letter, no accidental in
            the last bar, so the key signature makes it the tonic; no chord, tuplet or broken
            rhythm in the last bar).
        max_spaces: most spaces in a row (and none at the start of a line).
        bars_per_line: a line break follows every this many bars of a part and each part end,
            and comes nowhere else.
        pickup: let the first bar be a pickup (parts of at least 3 bars only; under ``form`` at most
            half a bar: an upbeat).
        note_lengths: the note-length suffixes a note may take (``None``: every spelling
            ``max_length_numerator``/``length_denominators`` allow, or, under ``form``,
            :func:`~rwkv_music.formats.abc.grammar.values.musical_lengths`: one spelling per value,
            and with a known ``unit`` nothing shorter than a sixteenth note and no dotted note
            shorter than a dotted eighth, so a bar cannot be squeezed shut with ``A3/4c/4``).
        min_full_bars: complete bars needed before the tune may end.
        key_scale_only: no accidentals: every note is in the key signature's scale.
        pitch_range: ``(low, high)`` MIDI numbers for the written natural note (letter and octave
            marks; an accidental may move it by up to two semitones).
        meter, unit, key: if given, the only ``M:``/``L:``/``K:`` value allowed, and the header
            must state it (body changes of that field are then not allowed).
        empty_bars: allow an empty bar on a line (``| |``, ``[||``) and a line of bar lines only.
            Off by default: the output could fill bars and lines with bar lines instead of music.
            A bar line closing one line and another opening the next is one bar line either way.
        lenient: read human tunes: see :meth:`human`.  Not for generation: lenient tunes may
            dead-end, and music21 mis-reads some lenient constructs.
    """

    x_field: str = "optional"
    control_codes: bool = True
    text_fields: str = "TCOANZRDHGFSBW"
    tempo_field: bool = True
    body_fields: str = "KML"
    comments: bool = False
    free_meter: bool = True
    max_meter_numerator: int = 12
    meter_denominators: tuple[int, ...] = (2, 4, 8, 16)
    unit_denominators: tuple[int, ...] = (4, 8, 16, 32)
    max_length_numerator: int = 16
    length_denominators: tuple[int, ...] = (2, 4, 8, 16)
    chord_symbols: str = "chords"
    decorations: str = "~.Tuv"
    named_decorations: bool = True
    chords: bool = True
    max_chord_notes: int = 4
    grace_notes: bool = True
    max_grace_notes: int = 4
    tuplets: bool = True
    broken_rhythm: bool = True
    max_slur_depth: int = 2
    max_octave_marks: int = 2
    short_bars: str = "paired"
    pair_short_bars: bool = True
    form: bool = False
    parts: int | None = None
    bars_per_part: int | None = None
    cadence: bool = True
    max_spaces: int = 1
    bars_per_line: int = 4
    pickup: bool = True
    note_lengths: tuple[str, ...] | None = None
    min_full_bars: int = 1
    key_scale_only: bool = False
    pitch_range: tuple[int, int] | None = None
    meter: str | None = None
    unit: str | None = None
    key: str | None = None
    empty_bars: bool = False
    lenient: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> SamplingValueError:
            return SamplingValueError(f"AbcGrammarConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        if self.x_field not in ("optional", "required", "forbidden"):
            raise bad("x_field", "'optional', 'required' or 'forbidden'")
        if self.short_bars not in ("paired", "sections", "pickup", "none") or (
            self.lenient and self.short_bars != "sections"
        ):
            raise bad("short_bars", "'paired', 'sections', 'pickup' or 'none' ('sections' when lenient)")
        if self.form and self.lenient:
            raise bad("form", "False when lenient")
        for name, low, high in (("parts", 1, 8), ("bars_per_part", 1, 32)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
            ):
                raise bad(name, f"None or an integer from {low} to {high}")
        for name in ("max_spaces", "bars_per_line"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "bars_per_line" else 0):
                raise bad(name, "an integer >= 1" if name == "bars_per_line" else "an integer >= 0")
        if self.chord_symbols not in ("chords", "any", "none"):
            raise bad("chord_symbols", "'chords', 'any' or 'none'")
        for name in ("max_meter_numerator", "max_length_numerator", "max_chord_notes", "max_grace_notes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("max_slur_depth", "max_octave_marks", "min_full_bars"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if not self.length_denominators or any(d not in (2, 4, 8, 16, 32, 64) for d in self.length_denominators):
            raise bad("length_denominators", "powers of two between 2 and 64")
        if not self.meter_denominators or any(d not in (1, 2, 4, 8, 16) for d in self.meter_denominators):
            raise bad("meter_denominators", "powers of two between 1 and 16")
        if not self.unit_denominators or any(d not in (1, 2, 4, 8, 16, 32, 64) for d in self.unit_denominators):
            raise bad("unit_denominators", "powers of two between 1 and 64")
        if set(self.decorations) - set("~.HLMOPSTuvJRk"):
            raise bad("decorations", "characters from '~.HLMOPSTuvJRk'")
        if self.pitch_range is not None:
            low, high = self.pitch_range
            if not (0 <= low <= high <= 127):
                raise bad("pitch_range", "(low, high) with 0 <= low <= high <= 127")

    @classmethod
    def human(cls, **overrides: Any) -> "AbcGrammarConfig":
        """The relaxed subset for reading human tunes (the music21 corpus).

        Relaxes, relative to the strict default: any header field letter, leading zeros in
        ``X:``, free ``Q:`` text, long/capitalised key modes (``E Minor``), trailing words after
        ``K:``/``M:`` values, comments, any quoted or ``!...!`` text, more bar-line spellings
        (``:||``, ``:|]``, ``|:|``, ``[|]``), endings counted as section bar lines, ``x``
        (taking no time, as in music21) and ``Z`` rests, decorations ``H L M O P S T u v``
        anywhere, chord notes with their own lengths, broken rhythm across slurs, ties and
        decorations, unbalanced slurs, tabs and backquotes, inline ``[K:]`` ``[M:]`` ``[L:]``
        ``[V:]`` fields (a voice restarts the bar count), any body field line anywhere, blank
        lines, lengths up to 128, bars that overflow the meter (music21 re-bars them: whole
        bars count and the rest flows on, as in Essen tunes whose bar lines follow phrases), a
        partial last bar, a tune ending in a comment or without a final bar line, no pairing
        of short bars, and no lookahead (so lenient states may dead-end).
        """
        base: dict[str, Any] = dict(
            text_fields="ABCDFGHINOPRSTUVWZmrsw", body_fields="KMLPTWwNQRVIU", comments=True,
            max_meter_numerator=16, meter_denominators=(1, 2, 4, 8, 16), unit_denominators=(1, 2, 4, 8, 16, 32, 64),
            max_length_numerator=128, length_denominators=(2, 4, 8, 16, 32, 64),
            chord_symbols="any", decorations="~.HLMOPSTuvJRk", max_chord_notes=8, max_grace_notes=16,
            max_slur_depth=8, max_octave_marks=4, short_bars="sections", pair_short_bars=False, min_full_bars=0,
            control_codes=False, lenient=True,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AbcGrammarConfig":
        data = dict(data)
        for name in ("length_denominators", "meter_denominators", "unit_denominators", "pitch_range"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


class AbcState(NamedTuple):
    """One state of the ABC machine.  Immutable and hashable; compare with ``==``.

    Lexical fields say which token is being read; musical fields carry what bar balance needs.
    Durations are exact fractions of a whole note.  (A named tuple: hashing, comparing and
    copying with changes are several times faster than for a dataclass, and the constraint
    does them for every byte of every state.)

    Which rule object writes which fields (each reads what it needs):

    * ``HeaderRules``: ``phase``, ``seen``, ``field``/``buf`` of field lines, ``bar_len``,
      ``compound``, ``unit``;
    * ``BarTiming``: ``pos``, ``nfac``, ``nkind``, ``room``, ``last``, ``tuplet``, ``broken``,
      the bar fields (``bar_notes`` ... ``full_bars``), the strict-metre fields (``pickup``,
      ``sect_pick``, ``sect_full``), the form's ``part``/``bar_no``/``need_nl`` and ``on_tonic``;
    * ``HeaderRules`` also: ``parts``/``bars`` (from ``S:``/``B:``, settled at the body) and ``tonic``;
    * ``PitchRules`` also: ``ton``; ``BodyRules`` also: ``spaces`` (reset by the machine);
    * ``PitchRules``: ``pitch``, ``case``;
    * ``NoteGroupRules``: ``count``, ``slur``, ``need_note``, ``field`` ``c``/``g``;
    * ``BodyRules``: ``mode``/``buf`` of plain tokens, ``line_start``, ``after_note``,
      ``no_left``, ``any_note``.

    Every field is a small number, flag or short string, so the state can be packed into
    arrays (a compiled table plus per-row counters) without changing its meaning.
    """

    phase: int = CONTROL  # CONTROL, HEADER or BODY
    mode: str = "line"  # token being read (see the grammar docstring)
    buf: str = ""  # text of the token or value read so far (only where it matters)
    field: str = ""  # field letter of the line / inline field being read; 'c'/'g' in chord/grace
    case: str = ""  # 'u'/'l': octave marks allowed after an upper/lower-case note letter
    # -- header ------------------------------------------------------------------------------
    seen: str = ""  # header field letters read so far (X, M, L, ...; 's' = a control code)
    # -- musical context -------------------------------------------------------------------
    bar_len: Fraction | None = None  # length of a full bar; None = free meter (no checks)
    compound: bool = False  # compound meter (default q of (5 (7 (9 tuplets is 3)
    unit: Fraction | None = None  # L:, once known
    # -- body: timing ------------------------------------------------------------------------
    pos: Fraction = ZERO  # duration of the current bar before the note being read
    nfac: Fraction = ZERO  # duration of one L-length of the note being read (unit x tuplet x broken)
    nkind: int = 0  # note being read: 0 plain, 1 in a tuplet, 2 right side of a broken rhythm
    room: Fraction = ZERO  # ... and the room left in the bar, in units of nfac (lengths up to it fit)
    last: Fraction = ZERO  # duration of the last note (left side of a broken rhythm)
    tuplet: tuple[int, int, int] | None = None  # (p, q, notes still to start) of an open tuplet
    broken: Fraction | None = None  # duration factor waiting for the right note of A>B
    pitch: int = 0  # MIDI number of the written natural note being read (pitch range)
    count: int = 0  # notes in the chord / grace group, or octave marks of the note being read
    # -- body: syntax context -----------------------------------------------------------------
    line_start: bool = True  # at the start of a body line (field lines may begin)
    after_note: bool = False  # a note/rest/chord just ended: '>' '<' '-' may follow
    no_left: bool = False  # ... but it may not be the left side of a broken rhythm
    need_note: bool = False  # a decoration / chord symbol / grace group / slur waits for its note
    slur: int = 0  # open slurs
    # -- body: bars ---------------------------------------------------------------------------
    bar_notes: bool = False  # the current bar has a note or rest
    first_bar: bool = True  # no non-empty bar closed yet (the first may be a pickup)
    after_section: bool = False  # the current bar follows a section bar line (|: :| || |] ...)
    after_repeat: bool = False  # ... that starts a repeat (|: ::): it must not stay empty
    carry: Fraction | None = None  # length of the short bar the last section bar line closed
    closed: bool = False  # the last bar line may end the tune
    any_note: bool = False  # a pitched note has been written
    full_bars: int = 0  # complete bars so far (capped at config.min_full_bars)
    # -- strict metre ("paired") and form: small integers and flags ------------------------------
    pickup: int = -1  # the tune's pickup length in grid units (0: none; -1: first bar not closed yet)
    sect_pick: bool = False  # "paired": this section opened with a pickup, its closing bar must complete it
    sect_full: int = 0  # "paired": full bars in this section (capped at 2)
    parts: int = 0  # form: parts of the tune (control phase: the S: code, 0 = none given)
    bars: int = 0  # form: bars per part (control phase: the B: code, 0 = none given)
    part: int = 0  # form: index of the current part (== parts once the tune is complete)
    bar_no: int = 0  # form: bars closed in this part, the pickup not counted (-1: in the pickup)
    need_nl: bool = False  # form: a line break must come next
    spaces: int = 0  # form: spaces in a row just read
    tonic: str = ""  # form + cadence: the letter of K:'s tonic ('' if none)
    ton: bool = False  # form + cadence: the note being read is the tonic
    on_tonic: bool = False  # form + cadence: the last note written was the tonic
    lbar: int = 0  # bar lines on this line since its last music: 0 none, 1 after music, 2 on a line with none

    def replace(self, **changes: Any) -> "AbcState":
        """A copy with some fields changed (``_replace``'s result, in a quarter of its time: the grammar
        makes a state per byte it tries, and a new state of the constraint's table tries every byte)."""
        values = list(self)
        for name, value in changes.items():
            at = _FIELD_AT.get(name)
            if at is None:
                raise ValueError(f"AbcState has no field {name!r}")
            values[at] = value
        return tuple.__new__(AbcState, values)


_FIELD_AT = {name: i for i, name in enumerate(AbcState._fields)}  # AbcState.replace's field positions


def body_line(s: AbcState) -> AbcState:
    """A new body line starts (after a newline, a field line or a continuation)."""
    return s.replace(mode="idle", buf="", field="", line_start=True, after_note=False, last=ZERO, no_left=False,
                     lbar=0)


__all__ = ["AbcGrammarConfig", "AbcState", "BODY", "CONTROL", "HEADER", "ZERO", "body_line"]
