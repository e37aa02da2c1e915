"""A musician's strict reading of one ABC tune: bar lengths, sections, cadence and layout.

This is the measuring stick for generated tunes (issue 15).  It shares no code with the
constraint (:mod:`rwkv_music.formats.abc.constraint`) or with music21: it reads the tune body
with its own small scanner and counts durations as exact fractions, so a bug in one of the
three shows up as a disagreement with the others.

The metre rule (:attr:`TuneReport.strictly_balanced`): every bar lasts exactly one bar of the
metre (``M:``, with ``C`` = 4/4 and ``C|`` = 2/2), whatever barline closes it.  The only short
bars allowed are a section's opening pickup and a section's (or an ending's) last bar, and only
in pairs that add up to one bar: the pickup with its own section's last bar (the usual repeated
strain), a section's last bar with the next section's pickup (the usual "short bar before
``||``, pickup after it"), or the tune's pickup with the tune's final bar; and both sections
involved must hold at least two full bars, so ``d2d2||fefe||`` is two wrong bars, not a pair.
Overfull bars are never allowed.  A multi-bar rest ``Zn`` is n full bars.  Sections end at
``||``, ``|]``, ``[|``, repeat signs and the end of the tune;
``[1``/``[2`` (or ``|1``/``:|2``) start endings, whose last bars may each complete the pickup.
Whitespace exempts nothing either: an empty bar (``| |``, a plain barline next to another barline
on the same line with nothing between) and a line of nothing but plain barlines count against the
tune, and so does any music after a blank line (ABC 2.1 section 2.2: a blank line ends the tune).
A barline closing one line and another opening the next (``...|\n| ...``) is one barline, a common
way of writing tunes (O'Neill's collection, for one).

Durations follow the ABC 2.1 standard (abcnotation.com/wiki/abc:standard:v2.1, section 4):
note length multipliers (``3``, ``/``, ``//``, ``3/2``), broken rhythm (``>`` = 3/2 then 1/2,
``>>`` = 7/4 then 1/4), tuplets ``(p:q:r`` with the standard's default ``q`` (3 for p = 2, 4, 8;
2 for p = 3, 6; 3 for p = 5, 7, 9 in compound metres and 2 otherwise), chords lasting their
first note times the chord's own multiplier, grace notes ``{...}`` taking no time, and inline
``[M:...]``/``[L:...]`` fields changing the metre or unit from that point.

>>> r = judge_tune("L:1/8\\nM:6/8\\nK:D\\nA|d2d fed|d2d fed|e2e gfe|d3 d2:|")
>>> r.strictly_balanced, r.bars, r.part_bars
(True, 4, (4,))
>>> judge_tune("L:1/8\\nM:4/4\\nK:D\\nd2d2||fefe||").strictly_balanced   # || exempts nothing
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

_FIELD_LINE = re.compile(r"^([A-Za-z]):(.*)$")
_CONTROL_LINE = re.compile(r"^[SBE]:\s*\d+\s*$")
_NOTE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([',]*)(\d*)(/*)(\d*)")
_REST = re.compile(r"([zx])(\d*)(/*)(\d*)")
_MULTI_REST = re.compile(r"([ZX])(\d*)")
_TUPLET = re.compile(r"\((\d)(?::(\d?))?(?::(\d?))?")
_INLINE_FIELD = re.compile(r"\[([A-Za-z]):([^\]]*)\]")
_BARLINE = re.compile(r"\.?(?:\[\||:*\|+\]?:*|::+)(?:\s*\[?\d+(?:[,-]\d+)*)?|\[\d+(?:[,-]\d+)*")
# ABC 2.1 section 4.14: . ~ H L M O P S T u v, and the letters h-w / H-W that U: may redefine
_DECORATION_CHARS = set(".~") | set("hijklmnopqrstuvw") | set("HIJKLMNOPQRSTUVW")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MAJOR_FIFTHS = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F": -1}
_MODE_SHIFT = {"": 0, "maj": 0, "ion": 0, "m": -3, "min": -3, "aeo": -3, "dor": -2, "phr": -4, "lyd": 1,
               "mix": -1, "loc": -5}
_SHARP_ORDER = "FCGDAEB"


@dataclass(frozen=True)
class Bar:
    """One bar as written: its length, where it sits, and what closed it."""

    duration: Fraction  # in whole notes
    section: int  # 0-based section number
    ending: int  # 0 outside an ending, else the ending's first number
    closing: str  # the barline text after it ("" at the end of the tune)
    full_bars: int = 1  # a multi-bar rest Zn stands for n bars
    metre: Fraction | None = None  # the bar length in force (M: and inline [M:] fields)
    text: str = ""  # the bar's music as written, without spaces and without its barlines


@dataclass(frozen=True)
class TuneReport:
    """What :func:`judge_tune` found (see the module docstring for the rules)."""

    metered: bool  # the tune has a metre with a bar length (not M:none, not missing)
    bar_length: Fraction | None  # one bar of the first metre, in whole notes
    bars: int  # bars of music (a completed pickup pair counts once)
    unbalanced: tuple[int, ...]  # indices into ``bar_list`` of bars breaking the rule
    overfull: int  # bars longer than the metre
    section_barlines: int  # ||, |], [|, repeats and endings, not counting the tune's last barline
    part_bars: tuple[int, ...]  # length of each section in bars (first endings only)
    max_space_run: int  # longest run of spaces inside a music line
    bars_per_line: float  # mean bars per music line
    final_pitch_class: int | None  # pitch class (0 = C) of the last note, None without notes
    tonic_pitch_class: int | None  # pitch class of K:'s tonic, None for K:none or a bagpipe key
    bar_list: tuple[Bar, ...] = field(default=(), repr=False)
    problems: tuple[str, ...] = ()  # one line per unbalanced bar or unreadable construct
    empty_bars: int = 0  # "| |" on a line, and lines of nothing but plain barlines
    lines_after_end: int = 0  # non-blank body lines after a blank line (the tune ended there)
    final_note_length: Fraction | None = None  # the last pitched note's length in whole notes, None without notes

    @property
    def strictly_balanced(self) -> bool:
        """Metered, has bars, every bar keeps the metre (pickup pairs excepted), no empty bars,
        nothing after the tune's end."""
        return (self.metered and self.bars > 0 and not self.unbalanced and not self.empty_bars
                and not self.lines_after_end)

    @property
    def max_same_bars(self) -> int:
        """The longest run of consecutive bars written alike (the same music text, spaces aside); human
        tunes rarely write one bar three times running."""
        best = run = 0
        last = None
        for bar in self.bar_list:
            run = run + 1 if bar.text and bar.text == last else 1
            last = bar.text
            best = max(best, run)
        return best

    @property
    def ends_on_tonic(self) -> bool:
        return self.final_pitch_class is not None and self.final_pitch_class == self.tonic_pitch_class

    @property
    def section_barlines_per_8_bars(self) -> float:
        return 8.0 * self.section_barlines / self.bars if self.bars else 0.0

    @property
    def regular_parts(self) -> bool:
        """Every section is 4, 8 or 16 bars long."""
        return bool(self.part_bars) and all(n in (4, 8, 16) for n in self.part_bars)


def parse_meter(value: str) -> Fraction | None:
    """Bar length in whole notes: ``6/8`` → 3/4, ``C`` → 1, ``C|`` → 1, ``2+3/8`` → 5/8; None for none.

    >>> parse_meter("6/8"), parse_meter("C|"), parse_meter("none")
    (Fraction(3, 4), Fraction(1, 1), None)
    """
    value = value.strip().split("%", 1)[0].strip()
    if value == "C":
        return Fraction(1)
    if value == "C|":
        return Fraction(1)
    m = re.fullmatch(r"\(?(\d+(?:\+\d+)*)\)?\s*/\s*(\d+)", value)
    if not m or int(m.group(2)) == 0:
        return None
    numerator = sum(int(x) for x in m.group(1).split("+"))
    return Fraction(numerator, int(m.group(2))) if numerator else None


def _parse_unit(value: str) -> Fraction | None:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value.split("%", 1)[0])
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        return None
    return Fraction(int(m.group(1)), int(m.group(2)))


def key_signature(value: str) -> tuple[int | None, dict[str, int]]:
    """(tonic pitch class, accidental per letter) of a ``K:`` value; (None, {}) for none/HP.

    >>> key_signature("Gm")[0], key_signature("Gm")[1]
    (7, {'B': -1, 'E': -1})
    """
    m = re.match(r"\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)", value)
    if not m:
        return None, {}
    letter = m.group(1).upper()
    accidental = {"#": 1, "b": -1, "": 0}[m.group(2)]
    mode = m.group(3).lower()[:3]
    if mode.startswith("m") and mode not in ("mix", "maj"):
        mode = "m" if mode in ("m", "mi", "min") else mode
    if mode not in _MODE_SHIFT:
        mode = ""
    fifths = _MAJOR_FIFTHS[letter] + 7 * accidental + _MODE_SHIFT[mode]
    signature: dict[str, int] = {}
    if fifths > 0:
        for ch in _SHARP_ORDER[: min(fifths, 7)]:
            signature[ch] = 1
    elif fifths < 0:
        for ch in reversed(_SHARP_ORDER[max(0, 7 + fifths) :]):
            signature[ch] = -1
    return (_LETTER_PC[letter] + accidental) % 12, signature


def _length(num: str, slashes: str, den: str) -> Fraction:
    """A note-length suffix in units of L; a zero length or divisor (``A/0``, ``A0``) counts as 1."""
    value = Fraction(int(num)) if num and int(num) else Fraction(1)
    if den and int(den) == 0:
        den = ""
    if slashes:
        value /= int(den) if den else 2 ** len(slashes)
        if den and len(slashes) > 1:
            value /= 2 ** (len(slashes) - 1)
    return value


def _default_tuplet_q(p: int, meter_text: str) -> int:
    if p in (2, 4, 8):
        return 3
    if p in (3, 6):
        return 2
    compound = bool(re.fullmatch(r"\s*(6|9|12)\s*/\s*8\s*", meter_text))
    return 3 if compound else 2


class _Scanner:
    """Walks the tune body once, building bars (durations as exact fractions)."""

    def __init__(self, unit: Fraction, bar: Fraction | None, meter_text: str, signature: dict[str, int]) -> None:
        self.unit = unit
        self.bar = bar
        self.meter_text = meter_text
        self.signature = signature
        self.bars: list[Bar] = []
        self.current = Fraction(0)
        self.has_music = False
        self.section = 0
        self.ending = 0
        self.section_barlines = 0
        self.tuplet_left = 0
        self.tuplet_ratio = Fraction(1)
        self.broken_next = Fraction(1)
        self.last_event = Fraction(0)  # duration of the last note/rest/chord in this bar
        self.final_pc: int | None = None
        self.final_len: Fraction | None = None  # the last note's length (tuplets and broken rhythm applied)
        self.problems: list[str] = []
        self.max_space_run = 0
        self.lines_with_bars: list[int] = []
        self.empty_bars = 0
        self.bar_text: list[str] = []  # the current bar's music so far, line by line

    # -- events ---------------------------------------------------------------------------
    def event(self, duration: Fraction) -> None:
        """A note, rest or chord of written length ``duration`` (whole notes)."""
        duration *= self.broken_next
        self.broken_next = Fraction(1)
        if self.tuplet_left > 0:
            duration *= self.tuplet_ratio
            self.tuplet_left -= 1
        self.current += duration
        self.last_event = duration
        self.has_music = True

    def broken(self, symbol: str) -> None:
        n = len(symbol)
        long = 2 - Fraction(1, 2**n)
        short = Fraction(1, 2**n)
        first, second = (long, short) if symbol[0] == ">" else (short, long)
        self.current += self.last_event * (first - 1)
        self.last_event *= first
        self.broken_next = second

    def close_bar(self, closing: str) -> None:
        if self.has_music:
            text = re.sub(r"\s+", "", "".join(self.bar_text))
            self.bars.append(Bar(self.current, self.section, self.ending, closing, 1, self.bar, text))
        self.bar_text = []
        self.current = Fraction(0)
        self.has_music = False
        self.broken_next = Fraction(1)

    def barline(self, text: str) -> None:
        token = text.strip().lstrip(".")
        m = re.search(r"\[?\s*(\d+)(?:[,-]\d+)*$", token)
        symbol = token[: m.start()].strip() if m else token
        ending = int(m.group(1)) if m else 0
        self.close_bar(symbol or "|")
        special = symbol not in ("", "|")
        if special or ending:
            self.section_barlines += 1
        # A repeat, double or final barline ends the strain, except the ":|2" that sends the
        # player back from a first ending: the second ending still belongs to that strain.
        if special and ending <= 1 and self.bars and self.bars[-1].section == self.section:
            self.section += 1
        if ending > 1 and self.bars and self.bars[-1].section == self.section - 1:
            self.section -= 1  # ":|" then "[2" written apart
        if ending:
            self.ending = ending
        elif special:
            self.ending = 0

    def multi_rest(self, count: int) -> None:
        self.close_bar("|")
        if self.bar is not None:
            self.bars.append(Bar(self.bar * count, self.section, self.ending, "|", count, self.bar, f"Z{count}"))

    # -- the scan -------------------------------------------------------------------------
    def scan_line(self, line: str) -> None:
        """One music line (comments and field lines already removed)."""
        for run in re.findall(r" {2,}", line.strip()):
            self.max_space_run = max(self.max_space_run, len(run))
        if line.strip():
            self.max_space_run = max(self.max_space_run, 1 if " " in line.strip() else 0)
        bars_before = len(self.bars)
        previous_barline = ""  # the last barline on this line, while no music has followed it
        plain_only = True  # every barline on this line so far is a plain "|"
        music = False
        i, n = 0, len(line)
        start = 0  # where this line's part of the current bar began
        while i < n:
            ch = line[i]
            if ch in " \t`\\y":
                i += 1
            elif ch == '"':
                j = line.find('"', i + 1)
                i = n if j < 0 else j + 1
            elif ch == "!" or (ch == "+" and line.find("+", i + 1) > i):
                j = line.find(ch, i + 1)
                i = n if j < 0 else j + 1
            elif ch == "{":
                j = line.find("}", i + 1)
                i = n if j < 0 else j + 1
            elif ch in "<>":
                j = i
                while j < n and line[j] == ch:
                    j += 1
                self.broken(line[i:j])
                i = j
            elif ch == "(" and i + 1 < n and line[i + 1].isdigit():
                m = _TUPLET.match(line, i)
                assert m is not None
                p = int(m.group(1))
                q = int(m.group(2)) if m.group(2) else _default_tuplet_q(p, self.meter_text)
                r = int(m.group(3)) if m.group(3) else p
                if p > 0:
                    self.tuplet_ratio, self.tuplet_left = Fraction(q, p), r
                i = m.end()
            elif ch in "()-":
                i += 1
            elif ch == "[" and _INLINE_FIELD.match(line, i):
                m = _INLINE_FIELD.match(line, i)
                assert m is not None
                self.field(m.group(1), m.group(2))
                i = m.end()
            elif ch == "[" and i + 1 < n and line[i + 1] not in "|" and not line[i + 1].isdigit():
                i = self.chord(line, i)
            elif ch in "|:[":
                m = _BARLINE.match(line, i)
                if m is None or m.end() == i:
                    self.problems.append(f"unreadable {ch!r} in {line.strip()[:40]!r}")
                    i += 1
                else:
                    symbol = m.group(0).strip()
                    if previous_barline and not self.has_music and "|" in (previous_barline, symbol):
                        self.empty_bars += 1
                        self.problems.append(f"empty bar {previous_barline} {symbol} in {line.strip()[:40]!r}")
                    plain_only &= symbol == "|"
                    music |= self.has_music
                    self.bar_text.append(line[start:i])
                    self.barline(m.group(0))
                    previous_barline = symbol
                    i = start = m.end()
            elif ch in _DECORATION_CHARS:
                i += 1
            else:
                m = _NOTE.match(line, i) or _REST.match(line, i)
                if m is not None and m.end() > i:
                    if m.re is _NOTE:
                        self.final_pc = self.pitch_class(m.group(1), m.group(2))
                        self.event(self.unit * _length(m.group(4), m.group(5), m.group(6)))
                        self.final_len = self.last_event
                    else:
                        self.event(self.unit * _length(m.group(2), m.group(3), m.group(4)))
                    i = m.end()
                    continue
                m = _MULTI_REST.match(line, i)
                if m is not None:
                    self.bar_text.append(line[start:i])
                    self.multi_rest(int(m.group(2) or 1))
                    previous_barline, music = "", True  # the rest is the bar's music
                    i = start = m.end()
                    continue
                self.problems.append(f"unreadable {ch!r} in {line.strip()[:40]!r}")
                i += 1
        self.bar_text.append(line[start:])  # (a bar may go on on the next line)
        music |= self.has_music or len(self.bars) > bars_before
        if not music and previous_barline and plain_only:
            self.empty_bars += 1
            self.problems.append(f"a line of bar lines only: {line.strip()[:40]!r}")
        self.lines_with_bars.append(len(self.bars) - bars_before)

    def chord(self, line: str, i: int) -> int:
        j = line.find("]", i + 1)
        if j < 0:
            self.problems.append(f"unclosed chord in {line.strip()[:40]!r}")
            return len(line)
        notes = list(_NOTE.finditer(line[i + 1 : j]))
        if not notes:
            return j + 1
        first = notes[0]
        length = _length(first.group(4), first.group(5), first.group(6))
        m = re.compile(r"(\d*)(/*)(\d*)").match(line, j + 1)
        assert m is not None
        multiplier = _length(m.group(1), m.group(2), m.group(3))
        pitch_classes = [self.pitch_class(n.group(1), n.group(2)) for n in notes]
        lowest = min(range(len(notes)), key=lambda k: (_octave(notes[k].group(2), notes[k].group(3)),
                                                      pitch_classes[k]))
        self.final_pc = pitch_classes[lowest]
        self.event(self.unit * length * multiplier)
        self.final_len = self.last_event
        return m.end()

    def pitch_class(self, accidental: str | None, letter: str) -> int:
        shift = {"^": 1, "^^": 2, "_": -1, "__": -2, "=": 0}.get(accidental or "", None)
        if shift is None:
            shift = self.signature.get(letter.upper(), 0)
        return (_LETTER_PC[letter.upper()] + shift) % 12

    def field(self, name: str, value: str) -> None:
        if name == "M":
            self.bar = parse_meter(value)
            self.meter_text = value
        elif name == "L":
            self.unit = _parse_unit(value) or self.unit
        elif name == "K":
            _, self.signature = key_signature(value)


def _octave(letter: str, marks: str) -> int:
    return (1 if letter.islower() else 0) + marks.count("'") - marks.count(",")


def _split_tune(text: str) -> tuple[dict[str, str], list[str]]:
    """Header fields (first value each, up to and including K:) and the body lines."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header: dict[str, str] = {}
    i = 0
    while i < len(lines):
        raw = lines[i].split("%", 1)[0].strip()
        i += 1
        if not raw or _CONTROL_LINE.match(raw):
            continue
        m = _FIELD_LINE.match(raw)
        if not m:
            i -= 1
            break
        header.setdefault(m.group(1), m.group(2).strip())
        if m.group(1) == "K":
            break
    return header, lines[i:]


def judge_tune(text: str) -> TuneReport:
    """Judge one tune (model text with control codes, or standard ABC); never raises on bad text."""
    header, body = _split_tune(text)
    meter_text = header.get("M", "none")
    bar = parse_meter(meter_text)
    unit = _parse_unit(header.get("L", "")) or (
        Fraction(1, 16) if bar is not None and bar < Fraction(3, 4) else Fraction(1, 8)
    )
    tonic, signature = key_signature(header.get("K", ""))
    first_bar = bar
    scanner = _Scanner(unit, bar, meter_text, signature)
    blank = False  # a blank line after music: the tune ended there (ABC 2.1 section 2.2)
    after_end = 0
    for raw in body:
        line = raw.split("%", 1)[0].rstrip()
        stripped = line.strip()
        if not raw.strip():
            blank = blank or bool(scanner.bars) or scanner.has_music
            continue
        if blank:
            after_end += 1
            continue
        if not stripped:
            continue
        m = _FIELD_LINE.match(stripped)
        if m and not stripped.startswith("|"):
            scanner.field(m.group(1), m.group(2))
            continue
        scanner.scan_line(line)
    scanner.close_bar("")
    bars = scanner.bars
    unbalanced, problems, overfull = _check_bars(bars)
    sections_barlines = scanner.section_barlines
    if bars and bars[-1].closing not in ("", "|"):
        sections_barlines -= 1  # the tune's own final barline is not a section break
    part_bars = _part_bars(bars, bar)
    music_bars = sum(part_bars) if part_bars else 0
    lines = [n for n in scanner.lines_with_bars if n > 0]
    return TuneReport(
        metered=first_bar is not None,
        bar_length=first_bar,
        bars=music_bars,
        unbalanced=tuple(unbalanced),
        overfull=overfull,
        section_barlines=max(0, sections_barlines),
        part_bars=part_bars,
        max_space_run=scanner.max_space_run,
        bars_per_line=(sum(lines) / len(lines)) if lines else 0.0,
        final_pitch_class=scanner.final_pc,
        tonic_pitch_class=tonic,
        bar_list=tuple(bars),
        problems=tuple(problems + scanner.problems + ([f"{after_end} lines after a blank line"] if after_end else [])),
        empty_bars=scanner.empty_bars,
        lines_after_end=after_end,
        final_note_length=scanner.final_len,
    )


def _check_bars(bars: list[Bar]) -> tuple[list[int], list[str], int]:
    """(indices of unbalanced bars, one line per problem, overfull count) by the module's rule."""
    unbalanced: list[int] = []
    problems: list[str] = []
    overfull = 0
    by_section: dict[int, list[int]] = {}
    for k, b in enumerate(bars):
        by_section.setdefault(b.section, []).append(k)
    firsts = {s: idx[0] for s, idx in by_section.items()}
    lasts: dict[int, set[int]] = {}
    for s, idx in by_section.items():
        ends = {idx[-1]}
        for k in idx:  # the last bar of every ending closes the strain too
            nxt = k + 1
            if bars[k].ending and (nxt >= len(bars) or bars[nxt].ending != bars[k].ending or bars[nxt].section != s):
                ends.add(k)
        lasts[s] = ends
    full_in_section: dict[int, int] = {}
    for b in bars:
        if b.metre is not None and b.duration == b.metre * b.full_bars:
            full_in_section[b.section] = full_in_section.get(b.section, 0) + b.full_bars
    for k, b in enumerate(bars):
        if b.metre is None:
            continue
        full = b.metre * b.full_bars
        if b.duration == full:
            continue
        if b.duration > full:
            overfull += 1
            unbalanced.append(k)
            problems.append(f"bar {k + 1} lasts {b.duration} of a whole note, the metre gives {full}")
            continue
        s = b.section
        partners: list[int] = []
        if k == firsts[s]:  # a pickup: completed by its strain's last bar or the one before it
            partners += sorted(lasts[s] - {k})
            partners += sorted(k2 for k2 in lasts.get(s - 1, ()) if k2 != firsts[s - 1])
        elif k in lasts[s]:  # a closing bar: completed by its strain's pickup or the next one
            partners.append(firsts[s])
            if s + 1 in firsts and firsts[s + 1] not in lasts[s + 1]:
                partners.append(firsts[s + 1])
        if len(bars) > 2 and k in (0, len(bars) - 1):
            partners.append(len(bars) - 1 - k)  # the tune's pickup and its final bar
        # a strain needs two full bars before its short bars count as a pair: "d2||fe||" is not one
        if full_in_section.get(s, 0) >= 2 and any(
            bars[p].duration + b.duration == b.metre and full_in_section.get(bars[p].section, 0) >= 2
            for p in partners
        ):
            continue
        unbalanced.append(k)
        problems.append(f"bar {k + 1} lasts {b.duration} of a whole note, the metre gives {full}")
    return unbalanced, problems, overfull


def _part_bars(bars: list[Bar], bar: Fraction | None) -> tuple[int, ...]:
    if bar is None or not bars:
        return ()
    totals: dict[int, Fraction] = {}
    for b in bars:
        if b.ending > 1:
            continue  # a second ending replaces the first: count the strain once
        totals[b.section] = totals.get(b.section, Fraction(0)) + b.duration
    return tuple(max(1, round(float(t / bar))) for _, t in sorted(totals.items()))


__all__ = ["Bar", "TuneReport", "judge_tune", "key_signature", "parse_meter"]
