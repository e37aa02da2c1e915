"""Instrument ranges, keys and scale measures (rwkv_music.formats.midi.musicality)."""

from __future__ import annotations

import math
import random

import pytest

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.midi.musicality import (
    INSTRUMENT_RANGES,
    UNPITCHED_BINS,
    best_diatonic_scale,
    estimate_key,
    instrument_range,
    out_of_range,
    parse_key,
    pitch_class_entropy,
    scale_pitch_classes,
)
from rwkv_music.formats.midi.vocab import MidiVocab


def test_every_pitched_bin_of_the_vocabulary_has_a_range() -> None:
    names = [b.name for b in MidiVocab().instrument_bins]
    for name in names:
        if name in UNPITCHED_BINS:
            assert instrument_range(name) is None
        else:
            lo, hi = instrument_range(name)
            assert 0 <= lo < hi <= 127 and hi - lo >= 24, name
    assert set(INSTRUMENT_RANGES) | set(UNPITCHED_BINS) == set(names)
    assert instrument_range("violin")[0] == 55  # the open G string
    with pytest.raises(RwkvMusicError):
        instrument_range("theremin")


def test_out_of_range_counts_per_instrument() -> None:
    notes = [("violin", 43), ("violin", 60), ("flute", 50), ("piano", 21), ("percussion", 5)]
    assert out_of_range(notes) == {"violin": 1, "flute": 1}


def test_keys_and_scales() -> None:
    assert parse_key("D") == (2, "major")
    assert parse_key("F#m") == (6, "minor")
    assert parse_key("Eb mixolydian") == (3, "mixolydian")
    for bad in ("H", "Dx", "", "C##"):
        with pytest.raises(RwkvMusicError):
            parse_key(bad)
    assert sorted(scale_pitch_classes(9, "minor")) == sorted(scale_pitch_classes(0, "major"))
    assert sorted(scale_pitch_classes(2, "dorian")) == sorted(scale_pitch_classes(0, "major"))


def test_diatonic_share_and_entropy() -> None:
    assert best_diatonic_scale([62, 64, 66, 67, 69, 71, 73] * 3) == (1.0, 2)
    share, _ = best_diatonic_scale(range(60, 72))
    assert math.isclose(share, 7 / 12)
    assert math.isclose(pitch_class_entropy(range(60, 72)), math.log2(12))
    assert pitch_class_entropy([60, 72, 48]) == 0.0


@pytest.mark.parametrize("tonic,mode", [(0, "major"), (2, "major"), (9, "minor"), (4, "minor"), (10, "major")])
def test_estimated_key_of_tonal_melodies(tonic: int, mode: str) -> None:
    rng = random.Random(tonic * 7 + len(mode))
    steps = sorted(scale_pitch_classes(tonic, mode))
    weights = {tonic: 4.0, (tonic + 7) % 12: 2.5, (tonic + (4 if mode == "major" else 3)) % 12: 2.0}
    melody = [60 + rng.choices(steps, [weights.get(s, 1.0) for s in steps])[0] for _ in range(200)]
    assert estimate_key(melody) == (tonic, mode)


def test_estimated_key_agrees_with_music21_on_chorales() -> None:
    """Same profiles, duration-weighted, as music21's own Krumhansl-Kessler key analysis."""
    from music21 import corpus

    for name in ("bach/bwv66.6", "bach/bwv7.7", "bach/bwv10.7", "bach/bwv13.6", "bach/bwv26.6", "bach/bwv40.8"):
        score = corpus.parse(name)
        notes = [(p.midi, float(n.quarterLength)) for n in score.flatten().notes for p in n.pitches]
        theirs = score.analyze("key.krumhanslkessler")
        tonic, mode = estimate_key([p for p, _ in notes], [w for _, w in notes])
        assert (tonic, mode) == (theirs.tonic.pitchClass, theirs.mode), name


def test_note_events_follow_the_tokens() -> None:
    from rwkv_music.formats.midi.musicality import max_polyphony, note_events

    v = MidiVocab()
    on = lambda name, p: v.note_id(name, p, 9)  # noqa: E731
    off = lambda name, p: v.note_id(name, p, 0)  # noqa: E731
    ids = [0, on("piano", 60), on("violin", 67), v.wait_id(125), off("piano", 60), v.wait_id(125)]
    ids += [v.wait_id(125)] * 4 + [on("piano", 62), v.wait_id(25), on("piano", 62), v.wait_id(25)]
    events = note_events(ids)
    by_pitch = {(e.instrument, e.pitch, round(e.start, 3)): e for e in events}
    assert by_pitch[("piano", 60, 0.0)].end == 1.0 and not by_pitch[("piano", 60, 0.0)].forced
    violin = by_pitch[("violin", 67, 0.0)]
    assert violin.forced and violin.end == 5.0  # never released: the 5-s limit ends it
    first, second = by_pitch[("piano", 62, 6.0)], by_pitch[("piano", 62, 6.2)]
    assert first.end == 6.2 and not first.forced  # a repeated note-on restarts the key
    assert second.forced and second.end == 6.4  # still sounding when the stream ends
    assert max_polyphony(events) == 2


def test_note_events_of_a_real_rwkv_midi_sample() -> None:
    from pathlib import Path

    from rwkv_music.formats.midi.musicality import note_events
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    path = Path(__file__).resolve().parents[1] / "data" / "sample3-RWKV-4-MIDI-120M.mid"
    events = note_events(MidiTokenizer().midi_to_ids(path))
    import mido

    ons = sum(1 for msg in mido.MidiFile(path) if msg.type == "note_on" and msg.velocity > 0)
    assert len(events) == ons
    share, _ = best_diatonic_scale([e.pitch for e in events if e.instrument not in UNPITCHED_BINS])
    assert share > 0.9
