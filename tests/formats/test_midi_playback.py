"""The note list and metrics of a MIDI file, read without mido's message copies, and the decoder's
unchecked messages: both against mido itself (its playback and its own value checks)."""

from __future__ import annotations

import io
from pathlib import Path

import mido
import numpy as np
import pytest
from mido.messages.checks import check_msgdict

from rwkv_music.compose.piece import Piece
from rwkv_music.formats.midi import files as files_mod
from rwkv_music.formats.midi.files import midi_bytes, midi_metrics, notes_of, playback
from rwkv_music.tokenizers import MidiTokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = sorted(DATA.glob("sample*.mid"))  # made by RWKV-4-MIDI-120M (see tests/data)


def _mido_playback(mid: mido.MidiFile) -> list[tuple[float, mido.Message]]:
    """What iterating the file with mido gives, as (seconds from the start, message)."""
    now, out = 0.0, []
    for msg in mid:
        now += msg.time
        out.append((now, msg))
    return out


def _random_file(rng: np.random.Generator, tracks: int, kind: int, floats: bool = False) -> mido.MidiFile:
    """Tracks of notes, program and tempo changes at random times, many of them equal across tracks,
    end_of_track messages in the middle of tracks as well as at their ends."""
    mid = mido.MidiFile(type=kind, ticks_per_beat=int(rng.choice([96, 384, 480, 960])))
    for t in range(tracks):
        track = mido.MidiTrack()
        for _ in range(int(rng.integers(0, 60))):
            delta = int(rng.choice([0, 0, 1, 7, 120, 480, 1000]))
            delta = delta + 0.25 if floats and rng.random() < 0.3 else delta
            what = rng.random()
            channel = int(rng.integers(0, 16))
            if what < 0.1:
                track.append(mido.MetaMessage("set_tempo", tempo=int(rng.integers(200_000, 1_500_000)), time=delta))
            elif what < 0.15:
                track.append(mido.MetaMessage("end_of_track", time=delta))
            elif what < 0.25:
                track.append(mido.Message("program_change", channel=channel, program=int(rng.integers(128)),
                                          time=delta))
            else:
                kind_ = "note_on" if rng.random() < 0.6 else "note_off"
                track.append(mido.Message(kind_, channel=channel % 3, note=int(rng.integers(58, 64)),
                                          velocity=int(rng.integers(0, 128)), time=delta))
        if rng.random() < 0.7:
            track.append(mido.MetaMessage("end_of_track", time=int(rng.integers(0, 500))))
        mid.tracks.append(track)
    return mid


def _files() -> list[mido.MidiFile]:
    rng = np.random.default_rng(21)
    files = [mido.MidiFile(str(p)) for p in SAMPLES]
    files += [_random_file(rng, int(rng.integers(0, 5)), int(rng.integers(0, 2))) for _ in range(60)]
    files += [_random_file(rng, 3, 1, floats=True) for _ in range(10)]
    files.append(mido.MidiFile(type=1))  # no tracks at all
    return files


def test_playback_gives_midos_order_and_times_exactly() -> None:
    """Same messages in the same order, and the same float seconds bit for bit (tempo changes in any
    track, ties across tracks, end_of_track messages mid-track), over recorded and random files."""
    assert len(SAMPLES) == 3
    for n, mid in enumerate(_files()):
        want, got = _mido_playback(mid), list(playback(mid))
        assert [t for t, _ in got] == [t for t, _ in want], n
        assert [{**m.dict(), "time": 0} for _, m in got] == [{**m.dict(), "time": 0} for _, m in want], n
        assert got[-1][0] == mid.length, n
    with pytest.raises(TypeError):
        list(playback(mido.MidiFile(type=2)))


def test_notes_and_metrics_are_what_midos_playback_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """notes_of and midi_metrics over playback() equal the same rules over mido's own playback."""
    files = _files()
    got = [(notes_of(mid), midi_metrics(mid)) for mid in files]
    monkeypatch.setattr(files_mod, "playback", _mido_playback)
    for n, mid in enumerate(files):
        assert got[n] == (notes_of(mid), midi_metrics(mid)), n
        assert got[n][1]["seconds"] == round(float(mid.length), 3), n
    assert sum(len(notes) for notes, _ in got) > 500


@pytest.mark.parametrize("timing", ["exact", "reference"])
def test_every_decoded_message_passes_midos_own_checks(timing: str) -> None:
    """The decoder builds note messages without mido's checks (a third of a decode): every note id of
    the vocabulary, on and off, between waits of every length, gives messages mido would have accepted,
    equal to mido's checked messages, and a file that saves and reads back the same."""
    tok = MidiTokenizer(timing=timing)
    vocab = tok.vocab
    notes = sorted(vocab.note_ids)
    waits = sorted(vocab.wait_ids)
    rng = np.random.default_rng(3)
    ids = []
    for k, i in enumerate(notes):
        ids.append(i)
        if k % 3 == 0:
            ids.append(int(rng.choice(waits)))
    mid = tok.ids_to_midi(ids)
    checked = 0
    for msg in mid.tracks[0]:
        if msg.type in ("note_on", "note_off"):
            check_msgdict(vars(msg).copy())  # raises on a value out of range or of the wrong type
            assert msg == mido.Message(**msg.dict())
            checked += 1
    assert checked >= len(notes) // 2
    again = mido.MidiFile(file=io.BytesIO(midi_bytes(mid)))
    assert [m.dict() for m in again.tracks[0]] == [m.dict() for m in mid.tracks[0]]


def test_a_piece_decodes_once_for_its_file_and_check_and_hands_out_new_files(tmp_path: Path) -> None:
    tok = MidiTokenizer()
    text = "<start> pi:3c:a pi:40:8 t16 pi:3c:0 t47 pi:40:0 v:43:7 t125 v:43:0 <end>"
    piece = Piece("midi", [], text, {}, 3, tok)
    first, second = piece.to_midi(), piece.to_midi()
    assert first is not second  # the caller's to change
    first.tracks[0].clear()
    path = piece.save(tmp_path / "a.mid")
    assert path.read_bytes() == midi_bytes(tok.text_to_midi(text))
    assert piece.validity == piece.format.validity(text)
    assert piece.validity["notes"] == 3 and piece.validity["decodes"]
