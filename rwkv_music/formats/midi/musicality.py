"""Musical facts the MIDI constraint and the quality measures share: instrument ranges, keys, scales.

* :data:`INSTRUMENT_RANGES` -- the written-at-pitch range (lowest, highest MIDI note) of each
  instrument bin of the RWKV-4-MIDI vocabulary (docs/formats.md C1), taken from the usual
  orchestration ranges of the General MIDI instrument each bin decodes to (sources: the range
  tables in Samuel Adler, *The Study of Orchestration*, 3rd ed., and Wikipedia's "Range (music)";
  middle C = 60).  Percussion bins are not pitched (their note number picks a drum) and have no
  range.
* :func:`best_diatonic_scale` -- the major/minor-mode diatonic collection (7 pitch classes) that
  holds the most notes, and the share it holds; :func:`pitch_class_entropy`.
* :func:`estimate_key` -- tonic and mode from a pitch-class histogram, by correlation with the
  Krumhansl–Kessler key profiles (C. L. Krumhansl, *Cognitive Foundations of Musical Pitch*,
  1990, table 4.1).
* :func:`scale_pitch_classes` and :func:`parse_key` -- the pitch classes of ``"D"``, ``"Am"``,
  ``"F#dorian"``, ...

Nothing here imports torch; numpy only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from rwkv_music.errors import RwkvMusicError

if TYPE_CHECKING:
    from rwkv_music.formats.midi.vocab import MidiVocab

# Bin name -> (lowest, highest) MIDI pitch.  Violin G3..E7, flute C4..C7, trumpet F#3..D6,
# tuba D1..F4, alto+tenor sax Ab2..F5 (sounding), guitar E2..E6 (sounding an octave below the
# written part), electric bass E1..G4 (sounding), piano A0..C8, marimba (5 octaves) C2..C7;
# the synth "lead" and "pad" bins take a wide keyboard range C2..C7.
INSTRUMENT_RANGES: dict[str, tuple[int, int]] = {
    "tuba": (26, 65),
    "marimba": (36, 96),
    "bass": (28, 67),
    "guitar": (40, 88),
    "violin": (55, 100),
    "trumpet": (54, 86),
    "piano": (21, 108),
    "sax": (44, 77),
    "flute": (60, 96),
    "lead": (36, 96),
    "pad": (36, 96),
}
UNPITCHED_BINS = ("percussion", "drum")  # drum-kit keys and timpani/synth drums: no melodic range

PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Diatonic modes as semitone steps above the tonic (ionian = major, aeolian = natural minor).
MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
}
_MODE_ALIASES = {
    "": "major", "maj": "major", "major": "major", "ion": "major", "ionian": "major",
    "m": "minor", "min": "minor", "minor": "minor", "aeo": "minor", "aeolian": "minor",
    "dor": "dorian", "dorian": "dorian", "phr": "phrygian", "phrygian": "phrygian",
    "lyd": "lydian", "lydian": "lydian", "mix": "mixolydian", "mixolydian": "mixolydian",
    "loc": "locrian", "locrian": "locrian",
}  # fmt: skip

# Krumhansl–Kessler probe-tone profiles, C major and C minor (Krumhansl 1990, table 4.1).
_KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
_KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def parse_key(key: str) -> tuple[int, str]:
    """(tonic pitch class, mode name) of ``"D"``, ``"Bbm"``, ``"F#dor"``, ``"A minor"``.

    >>> parse_key("Bbm"), parse_key("F# dorian"), parse_key("c")
    ((10, 'minor'), (6, 'dorian'), (0, 'major'))
    """
    m = re.fullmatch(r"\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)\s*", str(key))
    mode = _MODE_ALIASES.get(m.group(3).lower()) if m else None
    if not m or mode is None:
        raise RwkvMusicError(f"invalid key {key!r}; expected e.g. C, Am, Bb, F#m, D dorian or 'auto'")
    shift = {"#": 1, "b": -1, "": 0}[m.group(2)]
    return (_LETTER_PC[m.group(1).upper()] + shift) % 12, mode


def scale_pitch_classes(tonic: int, mode: str = "major") -> frozenset[int]:
    """The seven pitch classes of ``mode`` on ``tonic``.

    >>> sorted(scale_pitch_classes(2, "major"))     # D major: D E F# G A B C#
    [1, 2, 4, 6, 7, 9, 11]
    """
    return frozenset((tonic + step) % 12 for step in MODES[mode])


def pitch_class_histogram(pitches: Iterable[int], weights: Iterable[float] | None = None) -> np.ndarray:
    """Notes (or their ``weights``, e.g. durations) per pitch class."""
    hist = np.zeros(12, dtype=np.float64)
    if weights is None:
        for p in pitches:
            hist[int(p) % 12] += 1
    else:
        for p, w in zip(pitches, weights):
            hist[int(p) % 12] += float(w)
    return hist


def pitch_class_entropy(pitches: Iterable[int]) -> float:
    """Shannon entropy (bits) of the pitch-class distribution; log2(12) = 3.58 at most."""
    hist = pitch_class_histogram(pitches)
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def best_diatonic_scale(pitches: Iterable[int]) -> tuple[float, int]:
    """(share of notes inside the best-fitting diatonic collection, its major tonic).

    The 12 diatonic collections are the major scales' pitch-class sets (every mode of one
    collection is the same set), so this asks how diatonic the notes are, not which mode.

    >>> best_diatonic_scale([60, 62, 64, 65, 67, 69, 71, 61])
    (0.875, 0)
    """
    hist = pitch_class_histogram(pitches)
    total = hist.sum()
    if total == 0:
        return 1.0, 0
    best = max(range(12), key=lambda t: (sum(hist[pc] for pc in scale_pitch_classes(t)), -t))
    return float(sum(hist[pc] for pc in scale_pitch_classes(best)) / total), best


def estimate_key(pitches: Iterable[int], weights: Iterable[float] | None = None) -> tuple[int, str]:
    """(tonic, "major" or "minor") whose Krumhansl–Kessler profile best correlates with the notes.

    ``weights`` (e.g. note durations) weigh each note; by default every note counts once.

    >>> estimate_key([62, 66, 69, 62, 64, 66, 67, 69, 71, 73, 74])  # a D major line
    (2, 'major')
    """
    hist = pitch_class_histogram(pitches, weights)
    if hist.sum() == 0:
        return 0, "major"
    best: tuple[float, int, str] = (-2.0, 0, "major")
    for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR)):
        prof = np.asarray(profile)
        for tonic in range(12):
            r = _correlation(hist, np.roll(prof, tonic))
            if r > best[0] + 1e-12:
                best = (r, tonic, mode)
    return best[1], best[2]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def instrument_range(name: str) -> tuple[int, int] | None:
    """The pitch range of an instrument bin, or None for the unpitched bins."""
    if name in UNPITCHED_BINS:
        return None
    try:
        return INSTRUMENT_RANGES[name]
    except KeyError:
        raise RwkvMusicError(f"no pitch range for instrument {name!r}") from None


def out_of_range(notes: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Count of (instrument bin name, pitch) notes outside that instrument's range, per bin."""
    counts: dict[str, int] = {}
    for name, pitch in notes:
        rng = INSTRUMENT_RANGES.get(name)
        if rng is not None and not rng[0] <= pitch <= rng[1]:
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass(frozen=True)
class NoteEvent:
    """One note of a token stream, as the reference decoder would play it."""

    instrument: str  # bin name
    pitch: int
    start: float  # seconds
    end: float  # seconds
    forced: bool  # never released by a note-off: the decoder's held-note limit ended it


def note_events(ids: Sequence[int], vocab: MidiVocab | None = None, held_limit: float = 5.0) -> list[NoteEvent]:
    """The notes of MIDI token ids (docs/formats.md C1, C4), with how each one ended.

    Time is the sum of wait tokens; a note-on starts (instrument, pitch), its note-off ends it, a
    repeated note-on of a sounding key restarts it, and a note still sounding ``held_limit``
    seconds after its start, or at the end of the stream, is ended by force there (the reference
    decoder's ``decode_end_held_note_delay``).  ``<pad>``/``<start>``/``<end>`` reset the clock.
    """
    from rwkv_music.formats.midi.vocab import MidiVocab, NoteToken, WaitToken

    vocab = vocab or MidiVocab()
    names = [b.name for b in vocab.instrument_bins]
    step = vocab.step_ms / 1000.0
    out: list[NoteEvent] = []
    sounding: dict[tuple[int, int], float] = {}
    now = 0.0

    def expire(until: float) -> None:
        for key, start in sorted(sounding.items(), key=lambda kv: kv[1]):
            if until - start >= held_limit:
                out.append(NoteEvent(names[key[0]], key[1], start, start + held_limit, True))
                del sounding[key]

    for token_id in ids:
        token = vocab.parse(int(token_id))
        if isinstance(token, WaitToken):
            now += token.steps * step
            expire(now)
        elif isinstance(token, NoteToken):
            key = (token.bin, token.pitch)
            if key in sounding:
                out.append(NoteEvent(names[key[0]], key[1], sounding.pop(key), now, False))
            if not token.is_off:
                sounding[key] = now
        else:
            for key, start in sounding.items():
                out.append(NoteEvent(names[key[0]], key[1], start, min(now, start + held_limit), True))
            sounding.clear()
            now = 0.0
    for key, start in sounding.items():
        out.append(NoteEvent(names[key[0]], key[1], start, min(now, start + held_limit), True))
    return sorted(out, key=lambda e: (e.start, e.instrument, e.pitch))


def max_polyphony(events: Sequence[NoteEvent]) -> int:
    """Most notes sounding at one time."""
    edges = sorted([(e.start, 1) for e in events] + [(e.end, -1) for e in events], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, delta in edges:
        cur += delta
        best = max(best, cur)
    return best


__all__ = [
    "NoteEvent",
    "max_polyphony",
    "note_events",
    "INSTRUMENT_RANGES",
    "MODES",
    "PITCH_CLASS_NAMES",
    "UNPITCHED_BINS",
    "best_diatonic_scale",
    "estimate_key",
    "instrument_range",
    "out_of_range",
    "parse_key",
    "pitch_class_entropy",
    "pitch_class_histogram",
    "scale_pitch_classes",
]
