"""Training-data augmentation: ABC headers as callers write them, re-keyed ABC tunes, shifted MIDI.

Why: a model imitates its data.  The corpus writes ``M:C`` where callers pass ``M:4/4``, almost
always ``L:1/8`` where callers may pass ``L:1/16``, and a handful of keys; tunes the strict judge
finds unbalanced teach unbalanced bars.  So each kept tune is written again

* with the metre spelled either way (``C`` ↔ ``4/4``, ``C|`` ↔ ``2/2``: same bar length),
* in the other unit (``L:1/8`` ↔ ``L:1/16``, every note, rest and grace-note length rescaled
  exactly; a chord's own multiplier is kept since its first note is rescaled),
* in another key of the same mode (letters shifted by k diatonic steps and every pitch by the
  same number of semitones; accidentals re-spelled against the new key signature, accidentals
  carrying to the end of the bar as ABC 2.1 §4.2 says; chord symbols dropped),
* with caller-style control codes (``S:n`` alone, as ``Composer`` sends) in some copies,

and every rewrite is checked with :func:`rwkv_music.formats.abc.judge.judge_tune`: the bar
durations must be unchanged, otherwise the copy is dropped.  A tune that cannot be mapped
(mid-tune key or unit changes, odd keys, notes out of range, triple accidentals) is not
transposed or rescaled; :class:`AugmentError` says why.

MIDI: :func:`shift_midi_ids` moves every pitched note of a token sequence by a number of
semitones, keeping each instrument bin within its range (:data:`INSTRUMENT_RANGES`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from rwkv_music.formats.abc.judge import (  # the same ABC scanning tables the judge reads with
    _BARLINE,
    _FIELD_LINE,
    _INLINE_FIELD,
    _LETTER_PC,
    _MAJOR_FIFTHS,
    _MODE_SHIFT,
    _NOTE,
    _REST,
    judge_tune,
    key_signature,
    parse_meter,
)

# ----------------------------------------------------------------------------- ABC scanning

_LETTERS = "CDEFGAB"
_ACC_TEXT = {-2: "__", -1: "_", 0: "=", 1: "^", 2: "^^"}
_ACC_VALUE = {"__": -2, "_": -1, "=": 0, "^": 1, "^^": 2}
_LEN = re.compile(r"(\d*)(/*)(\d*)")
_KEY = re.compile(r"^\s*([A-G])([#b]?)\s*([A-Za-z]*)\s*$")
LOWEST_PITCH, HIGHEST_PITCH = 43, 93  # G, .. a'' : where fiddle/flute/whistle tunes live
CALLER_METRES = ("4/4", "3/4", "2/4", "6/8", "9/8", "C", "C|")
CALLER_UNITS = ("1/8", "1/16")


class AugmentError(ValueError):
    """A tune that a rewrite cannot map exactly (the copy is skipped, the tune kept)."""


def _parse_length(num: str, slashes: str, den: str) -> Fraction:
    value = Fraction(int(num)) if num else Fraction(1)
    if slashes:
        if den:
            value /= int(den) * 2 ** (len(slashes) - 1)
        else:
            value /= 2 ** len(slashes)
    return value


def format_length(value: Fraction) -> str:
    """ABC length suffix: 1 → '', 2 → '2', 1/2 → '/', 1/4 → '/4', 3/2 → '3/2'."""
    if value <= 0:
        raise AugmentError(f"length {value} is not positive")
    if value == 1:
        return ""
    if value.denominator == 1:
        return str(value.numerator)
    if value.denominator & (value.denominator - 1):
        raise AugmentError(f"length {value} has a denominator that is not a power of two")
    num = "" if value.numerator == 1 else str(value.numerator)
    return f"{num}/" if value.denominator == 2 and not num else f"{num}/{value.denominator}"


def _split(tune: str) -> tuple[list[str], list[str]]:
    """(header lines up to and including K:, body lines) of a cleaned tune."""
    lines = tune.rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            return lines[: i + 1], lines[i + 1:]
    raise AugmentError("no K: line")


def _header(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        m = _FIELD_LINE.match(line)
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def _set_header(lines: list[str], name: str, value: str) -> list[str]:
    out, done = [], False
    for line in lines:
        if line.startswith(f"{name}:") and not done:
            out.append(f"{name}:{value}")
            done = True
        else:
            out.append(line)
    if not done:  # insert before M:/K: so the order stays L, M, K
        at = next(i for i, line in enumerate(out) if line[:2] in ("M:", "K:"))
        out.insert(at, f"{name}:{value}")
    return out


@dataclass
class _Note:
    """A note as it sounds: MIDI pitch and the letter/octave it was written with."""

    pitch: int
    letter: str  # upper case
    octave: int  # 0 for C..B, 1 for c..b, ±1 per ' or ,


def _write_note(letter: str, octave: int) -> str:
    if octave >= 1:
        return letter.lower() + "'" * (octave - 1)
    return letter + "," * (-octave)


class _BodyRewriter:
    """One pass over a tune body, calling hooks for notes and lengths; everything else is copied."""

    def __init__(self, signature: dict[str, int], scale: Fraction = Fraction(1),
                 note_map: Callable[[_Note], _Note] | None = None, new_signature: dict[str, int] | None = None,
                 drop_quotes: bool = False) -> None:
        self.signature = signature
        self.new_signature = new_signature if new_signature is not None else signature
        self.scale = scale
        self.note_map = note_map
        self.drop_quotes = drop_quotes
        self.carry: dict[tuple[str, int], int] = {}  # (letter, octave) -> alteration, old text
        self.new_carry: dict[tuple[str, int], int] = {}

    def new_bar(self) -> None:
        self.carry.clear()
        self.new_carry.clear()

    def length(self, num: str, slashes: str, den: str) -> str:
        if self.scale == 1:
            return num + slashes + den
        return format_length(_parse_length(num, slashes, den) * self.scale)

    def note(self, m: re.Match) -> str:
        acc, letter, marks = m.group(1), m.group(2), m.group(3)
        length = self.length(m.group(4), m.group(5), m.group(6))
        if self.note_map is None:
            return (acc or "") + letter + marks + length
        up = letter.upper()
        octave = (1 if letter.islower() else 0) + marks.count("'") - marks.count(",")
        if acc:
            alter = _ACC_VALUE[acc]
            self.carry[(up, octave)] = alter
        else:
            alter = self.carry.get((up, octave), self.signature.get(up, 0))
        pitch = 60 + 12 * octave + _LETTER_PC[up] + alter
        new = self.note_map(_Note(pitch, up, octave))
        natural = 60 + 12 * new.octave + _LETTER_PC[new.letter]
        want = new.pitch - natural
        if want not in _ACC_TEXT:
            raise AugmentError(f"{letter} would need an alteration of {want}")
        implied = self.new_carry.get((new.letter, new.octave), self.new_signature.get(new.letter, 0))
        text = ""
        if acc or want != implied:  # keep written accidentals written; add the ones the new key needs
            text = _ACC_TEXT[want]
            self.new_carry[(new.letter, new.octave)] = want
        return text + _write_note(new.letter, new.octave) + length

    def line(self, line: str) -> str:
        out: list[str] = []
        i, n = 0, len(line)
        while i < n:
            ch = line[i]
            if ch == '"':
                j = line.find('"', i + 1)
                j = n if j < 0 else j + 1
                if not self.drop_quotes:
                    out.append(line[i:j])
                i = j
            elif ch == "!" or (ch == "+" and line.find("+", i + 1) > i):
                j = line.find(ch, i + 1)
                j = n if j < 0 else j + 1
                out.append(line[i:j])
                i = j
            elif ch == "{":  # grace notes: rescaled and re-keyed like notes, take no time
                j = line.find("}", i + 1)
                if j < 0:
                    raise AugmentError("unclosed grace notes")
                saved = dict(self.carry), dict(self.new_carry)
                out.append("{" + self.line(line[i + 1: j]) + "}")
                self.carry, self.new_carry = saved  # grace accidentals: do not trust them to carry
                i = j + 1
            elif ch == "(" and i + 1 < n and line[i + 1].isdigit():
                m = re.compile(r"\(\d(?::\d?)?(?::\d?)?").match(line, i)
                assert m is not None
                out.append(m.group(0))
                i = m.end()
            elif ch == "[" and _INLINE_FIELD.match(line, i):
                m = _INLINE_FIELD.match(line, i)
                assert m is not None
                if m.group(1) in "KL" and (self.note_map is not None or self.scale != 1):
                    raise AugmentError(f"inline field [{m.group(1)}:...] inside the tune")
                out.append(m.group(0))
                i = m.end()
            elif ch == "[" and i + 1 < n and line[i + 1] != "|" and not line[i + 1].isdigit():
                j = line.find("]", i + 1)
                if j < 0:
                    raise AugmentError("unclosed chord")
                inner = self.line(line[i + 1: j])  # notes inside keep their own lengths, rescaled
                mult = _LEN.match(line, j + 1)
                assert mult is not None
                out.append("[" + inner + "]" + mult.group(0))  # the chord multiplier stays
                i = mult.end()
            elif ch in "|:[":
                m = _BARLINE.match(line, i)
                if m is None or m.end() == i:
                    out.append(ch)
                    i += 1
                else:
                    out.append(m.group(0))
                    self.new_bar()
                    i = m.end()
            else:
                m = _NOTE.match(line, i)
                if m is not None and m.end() > i:
                    out.append(self.note(m))
                    i = m.end()
                    continue
                m = _REST.match(line, i)
                if m is not None and m.end() > i:
                    out.append(m.group(1) + self.length(m.group(2), m.group(3), m.group(4)))
                    i = m.end()
                    continue
                if ch.isdigit():
                    raise AugmentError(f"stray digit in {line[:40]!r}")
                out.append(ch)
                i += 1
        return "".join(out)

    def body(self, lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            m = _FIELD_LINE.match(line)
            if m and not line.startswith("|"):
                if m.group(1) in "KL" and (self.note_map is not None or self.scale != 1):
                    raise AugmentError(f"{m.group(1)}: change inside the tune")
                out.append(line)
                continue
            out.append(self.line(line))
        return out


def _durations(tune: str) -> list[Fraction]:
    return [b.duration for b in judge_tune(tune).bar_list]


def _checked(original: str, new: str) -> str:
    if _durations(original) != _durations(new):
        raise AugmentError("bar durations changed")
    return new


# ----------------------------------------------------------------------------- header rewrites


def default_unit(meter: str) -> str:
    """ABC 2.1 §3.1.7: L defaults to 1/16 when the metre is under 3/4, else 1/8."""
    bar = parse_meter(meter)
    return "1/16" if bar is not None and bar < Fraction(3, 4) else "1/8"


def with_explicit_unit(tune: str) -> str:
    """The tune with an ``L:`` line (the standard's default made explicit)."""
    head, body = _split(tune)
    fields = _header(head)
    if "L" in fields:
        return tune
    return "\n".join(_set_header(head, "L", default_unit(fields.get("M", "4/4"))) + body) + "\n"


def respell_meter(tune: str, meter: str) -> str:
    """``M:C`` ↔ ``M:4/4`` and ``M:C|`` ↔ ``M:2/2``; AugmentError if ``meter`` changes the bar length."""
    head, body = _split(tune)
    old = _header(head).get("M", "")
    if parse_meter(old) is None or parse_meter(old) != parse_meter(meter):
        raise AugmentError(f"M:{old} cannot be written as M:{meter}")
    return "\n".join(_set_header(head, "M", meter) + body) + "\n"


def rescale_unit(tune: str, unit: str) -> str:
    """Rewrite the tune in ``L:unit`` with every length rescaled exactly (durations checked)."""
    tune = with_explicit_unit(tune)
    head, body = _split(tune)
    fields = _header(head)
    old = Fraction(fields["L"])
    new = Fraction(unit)
    if old == new:
        return tune
    signature = key_signature(fields.get("K", ""))[1]
    rewriter = _BodyRewriter(signature, scale=old / new)
    text = "\n".join(_set_header(head, "L", unit) + rewriter.body(body)) + "\n"
    return _checked(tune, text)


# ----------------------------------------------------------------------------- transposition


@dataclass(frozen=True)
class Key:
    """A parsed ``K:`` value: tonic letter, its accidental (-1/0/1) and the mode text as written."""

    letter: str
    accidental: int
    mode: str

    @property
    def mode_shift(self) -> int:
        return _mode_shift(self.mode)

    @property
    def fifths(self) -> int:
        return _MAJOR_FIFTHS[self.letter] + 7 * self.accidental + self.mode_shift

    @property
    def pitch_class(self) -> int:
        return (_LETTER_PC[self.letter] + self.accidental) % 12

    def text(self) -> str:
        return self.letter + {1: "#", -1: "b", 0: ""}[self.accidental] + self.mode


def _mode_shift(mode: str) -> int:
    """Fifths below the major key of the same tonic (minor: 3 flats more), as judge.key_signature."""
    low = mode.lower()
    if low == "m" or low.startswith("min"):
        return -3
    if low[:3] not in _MODE_SHIFT:
        raise AugmentError(f"unknown mode {mode!r}")
    return _MODE_SHIFT[low[:3]]


def parse_key(value: str) -> Key:
    """A ``K:`` value this module can transpose (tonic, optional #/b, a known mode)."""
    m = _KEY.match(value.split("%", 1)[0])
    if not m:
        raise AugmentError(f"K:{value} is not a plain key")
    _mode_shift(m.group(3))
    return Key(m.group(1), {"#": 1, "b": -1, "": 0}[m.group(2)], m.group(3))


def related_keys(key: Key, max_fifths: int = 4) -> list[Key]:
    """Other tonics in the same mode whose signature has at most ``max_fifths`` sharps or flats."""
    out = []
    for letter in _LETTERS:
        for acc in (0, 1, -1):
            k = Key(letter, acc, key.mode)
            if abs(k.fifths) <= max_fifths and (letter, acc) != (key.letter, key.accidental):
                out.append(k)
    return out


def transpose(tune: str, target: str, *, low: int = LOWEST_PITCH, high: int = HIGHEST_PITCH) -> str:
    """The tune re-keyed to ``K:target`` (same mode), the nearest way up or down.

    Chord symbols are dropped (their names would need re-spelling); written accidentals stay
    written; AugmentError when a note would leave ``[low, high]`` or anything does not map.
    """
    head, body = _split(tune)
    fields = _header(head)
    old, new = parse_key(fields.get("K", "")), parse_key(target)
    if old.mode_shift != new.mode_shift:
        raise AugmentError(f"K:{target} is not in the mode of K:{fields['K']}")
    steps0 = (_LETTERS.index(new.letter) - _LETTERS.index(old.letter)) % 7
    semis0 = (new.pitch_class - old.pitch_class) % 12
    # up or down, whichever moves less; letters and semitones must move the same way
    moves = [(k, c) for k in (steps0, steps0 - 7) for c in (semis0, semis0 - 12)]
    moves = [(k, c) for k, c in moves if abs(c - 12 * k / 7) <= 2]
    if not moves:
        raise AugmentError(f"K:{fields['K']} → K:{target}: letter and pitch shifts disagree")
    steps, semis = min(moves, key=lambda m: abs(m[1]))

    def move(note: _Note) -> _Note:
        index = _LETTERS.index(note.letter) + steps
        pitch = note.pitch + semis
        if not low <= pitch <= high:
            raise AugmentError(f"pitch {pitch} out of range after transposing")
        return _Note(pitch, _LETTERS[index % 7], note.octave + index // 7)

    rewriter = _BodyRewriter(key_signature(fields["K"])[1], note_map=move,
                             new_signature=key_signature(new.text())[1], drop_quotes=True)
    new_body = rewriter.body(body)
    text = "\n".join(_set_header(head, "K", new.text()) + new_body) + "\n"
    original = "\n".join(head + [re.sub(r'"[^"]*"', "", line) for line in body]) + "\n"
    return _checked(original, text)


# ----------------------------------------------------------------------------- the ABC recipe


@dataclass(frozen=True)
class AbcAugment:
    """How many copies of each tune and what they vary (see the module docstring)."""

    copies: int = 4  # rewritten copies per tune, besides the original
    transpose_share: float = 0.75  # share of copies moved to another key
    unit_16_share: float = 0.4  # share of copies written in L:1/16
    caller_controls_share: float = 0.3  # share of documents whose control codes are just S:n
    strict_only: bool = True  # drop tunes the judge finds not strictly balanced
    tidy_spaces: bool = True  # one space at most between note groups, none at a line's ends


def tidy_spaces(tune: str) -> str:
    """Runs of spaces and tabs in the music cut to one space, and none at either end of a line.

    Why: a third of the corpus' tunes align their bars in columns with long space runs, which mean
    nothing musically (only "space or no space" sets beaming) and teach a model to write them.
    Header lines are left as they are.
    """
    lines = tune.split("\n")
    body = next((i + 1 for i, line in enumerate(lines) if line.startswith("K:")), 0)
    music = [re.sub(r"[ \t]+", " ", line).strip() for line in lines[body:]]
    return "\n".join(lines[:body] + music)


def strictly_balanced(tune: str) -> bool:
    return judge_tune(tune).strictly_balanced


def caller_meter(meter: str, rng: random.Random) -> str:
    """How a caller may spell the tune's metre: C/4/4 and C|/2/2 either way, others as written."""
    spellings = {"C": ("C", "4/4"), "4/4": ("C", "4/4"), "C|": ("C|", "2/2"), "2/2": ("C|", "2/2")}
    return rng.choice(spellings.get(meter.strip(), (meter.strip(),)))


def augment_tune(tune: str, rng: random.Random, recipe: AbcAugment = AbcAugment()) -> list[str]:
    """The cleaned tune (explicit L:) and its rewritten copies; [] if the tune is dropped."""
    try:
        tune = with_explicit_unit(tidy_spaces(tune) if recipe.tidy_spaces else tune)
        fields = _header(_split(tune)[0])
    except (AugmentError, StopIteration):
        return []
    if recipe.strict_only and not strictly_balanced(tune):
        return []
    out = [tune]
    meter = fields.get("M", "")
    for _ in range(recipe.copies):
        copy = tune
        try:
            if meter:
                copy = respell_meter(copy, caller_meter(meter, rng))
            if rng.random() < recipe.transpose_share:
                targets = related_keys(parse_key(fields.get("K", "")))
                if targets:
                    copy = transpose(copy, rng.choice(targets).text())
            copy = rescale_unit(copy, "1/16" if rng.random() < recipe.unit_16_share else "1/8")
        except AugmentError:
            continue
        if copy not in out:
            out.append(copy)
    return out


def caller_controls(document_text: str) -> str:
    """Control codes cut to the ``S:n`` line alone, as ``Composer`` sends them (``S:2`` by default)."""
    lines = document_text.split("\n")
    return "\n".join(line for line in lines if not re.match(r"^[BE]:\d+$", line))


def abc_augmented_documents(tunes: list[tuple[str, str]], rng: random.Random,
                            recipe: AbcAugment = AbcAugment()) -> list:
    """``Document``s for raw (source, tune) pairs: originals and copies, strict tunes only."""
    from rwkv_music.train.data import ABC_BOS, ABC_EOS, Document, clean_abc_tune, control_codes

    docs = []
    for source, raw in tunes:
        clean = clean_abc_tune(raw)
        if clean is None or not clean.isascii():
            continue
        for i, text in enumerate(augment_tune(clean, rng, recipe)):
            codes = control_codes(text)
            if rng.random() < recipe.caller_controls_share:
                codes = caller_controls(codes)
            data = (codes + text).encode("ascii")
            ids = np.array([ABC_BOS, *data, ABC_EOS], dtype=np.int64)
            mask = np.ones(len(ids), dtype=np.float32)
            mask[0] = 0.0
            docs.append(Document(ids, mask, f"{source}+{i}" if i else source))
    return docs


def document_texts(docs: list) -> list[str]:
    """The ABC text of ABC documents (bos/eos removed)."""
    return [bytes(int(t) for t in d.ids if t > 3).decode("ascii") for d in docs]


# ----------------------------------------------------------------------------- MIDI


def _bin_ranges() -> list[tuple[int, int] | None]:
    from rwkv_music.formats.midi.musicality import INSTRUMENT_RANGES, UNPITCHED_BINS
    from rwkv_music.formats.midi.vocab import LAYOUT

    out: list[tuple[int, int] | None] = []
    for name in LAYOUT.bin_names:
        if any(u in name for u in UNPITCHED_BINS):
            out.append(None)  # drum keys: never shift
        else:
            out.append(INSTRUMENT_RANGES.get(name, (0, 127)))
    return out


def shift_midi_ids(ids: np.ndarray, semitones: int) -> np.ndarray | None:
    """``ids`` with every pitched note moved by ``semitones``; None if a note would leave its
    instrument's range (or 0..127) where it was inside it before."""
    from rwkv_music.formats.midi.vocab import LAYOUT

    ids = np.asarray(ids, dtype=np.int64)
    first, size, nvel = LAYOUT.first_note_id, LAYOUT.bin_size, LAYOUT.n_velocity_bins
    notes = ids >= first
    rel = ids[notes] - first
    bins, pitch = rel // size, (rel % size) // nvel
    ranges = _bin_ranges()
    lo = np.array([r[0] if r else 0 for r in ranges])[bins]
    hi = np.array([r[1] if r else 127 for r in ranges])[bins]
    pitched = np.array([r is not None for r in ranges])[bins]
    new_pitch = np.where(pitched, pitch + semitones, pitch)
    was_in = (pitch >= lo) & (pitch <= hi)
    now_in = (new_pitch >= lo) & (new_pitch <= hi)
    if np.any(pitched & was_in & ~now_in) or np.any((new_pitch < 0) | (new_pitch > 127)):
        return None
    out = ids.copy()
    out[notes] = ids[notes] + (new_pitch - pitch) * nvel
    return out


def midi_augmented_documents(docs: list, rng: random.Random, copies: int = 3, max_shift: int = 5) -> list:
    """The documents plus up to ``copies`` pitch-shifted copies of each (shifts in ±max_shift)."""
    from rwkv_music.train.data import Document

    out = list(docs)
    shifts = [s for s in range(-max_shift, max_shift + 1) if s]
    for d in docs:
        for s in rng.sample(shifts, min(copies, len(shifts))):
            ids = shift_midi_ids(d.ids, s)
            if ids is not None:
                out.append(Document(ids, d.mask, f"{d.source}{s:+d}"))
    return out


# ----------------------------------------------------------------------------- prepared files


def prepare_abc_data(path: str, copies: int = 4, seed: int = 0, val_fraction: float = 0.05,
                     recipe: AbcAugment | None = None) -> dict:
    """music21's non-Essen ABC tunes, split as the trainer splits them (seeded), the training
    split augmented, written with :func:`rwkv_music.train.data.save_documents`; returns counts."""
    from rwkv_music.train.data import ABC_VOCAB, abc_documents, save_documents, split_documents

    train, val = split_documents(abc_documents(), val_fraction, seed)
    recipe = recipe or AbcAugment(copies=copies)
    texts = document_texts(train)
    augmented = abc_augmented_documents([(d.source, t) for d, t in zip(train, texts)], random.Random(seed), recipe)
    save_documents(path, augmented, val, ABC_VOCAB)
    return {"train_tunes": len(train), "train_documents": len(augmented), "val_documents": len(val),
            "train_tokens": int(sum(len(d.ids) for d in augmented)), "recipe": dict(vars(recipe))}


def prepare_midi_data(path: str, folders: list[str], seed: int = 0, val_fraction: float = 0.05) -> dict:
    """Tokenized .mid files of ``folders``, split (seeded) and written like :func:`prepare_abc_data`;
    pitch shifts are added at training time (``--augment``), so the held-out split stays unshifted."""
    from pathlib import Path

    from rwkv_music.train.data import save_documents, split_documents
    from rwkv_music.train.midi_data import MIDI_VOCAB, midi_documents

    train, val = split_documents(midi_documents([Path(f) for f in folders]), val_fraction, seed)
    save_documents(path, train, val, MIDI_VOCAB)
    return {"train_documents": len(train), "val_documents": len(val),
            "train_tokens": int(sum(len(d.ids) for d in train))}


__all__ = ["AbcAugment", "AugmentError", "CALLER_METRES", "CALLER_UNITS", "Key", "abc_augmented_documents",
           "augment_tune", "caller_controls", "format_length", "midi_augmented_documents", "parse_key",
           "prepare_abc_data", "prepare_midi_data",
           "related_keys", "rescale_unit", "respell_meter", "shift_midi_ids", "strictly_balanced", "tidy_spaces",
           "transpose", "with_explicit_unit"]
