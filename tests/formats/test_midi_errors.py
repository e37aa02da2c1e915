"""Unreadable MIDI input fails with one MidiFormatError naming the file, never a mido traceback."""

from __future__ import annotations

import struct
from pathlib import Path

import mido
import pytest

from rwkv_music.errors import MidiFormatError, RwkvMusicError, TokenizerError
from rwkv_music.tokenizers import MidiTokenizer, load_midi, midi_to_text

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sample3-RWKV-4-MIDI-120M.mid"


def header(midi_format: int = 1, tracks: int = 1, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">LHHH", 6, midi_format, tracks, division)


def chunk(kind: bytes, body: bytes, declared: int | None = None) -> bytes:
    return kind + struct.pack(">L", len(body) if declared is None else declared) + body


END = b"\x00\xff\x2f\x00"
NOTE = b"\x00\x90\x3c\x64\x60\x80\x3c\x00"


def assert_fails(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "broken.mid"
    path.write_bytes(data)
    with pytest.raises(MidiFormatError, match=match) as info:
        midi_to_text(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_midi_format_error_is_a_project_error() -> None:
    assert issubclass(MidiFormatError, TokenizerError) and issubclass(MidiFormatError, RwkvMusicError)


def test_text_file_is_not_midi(tmp_path: Path) -> None:
    assert_fails(tmp_path, b"X:1\nT:not a midi file\nK:C\nCDEF|\n", "not a MIDI file")


def test_empty_file(tmp_path: Path) -> None:
    assert_fails(tmp_path, b"", "empty file")


def test_header_only_file(tmp_path: Path) -> None:
    assert_fails(tmp_path, header(), "no MTrk track chunk")


def test_truncated_file(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    assert_fails(tmp_path, data[: len(data) // 2], "truncated")
    assert_fails(tmp_path, data[:10], "truncated MIDI header")


def test_absurd_chunk_length(tmp_path: Path) -> None:
    assert_fails(tmp_path, header() + chunk(b"MTrk", NOTE + END, declared=0xFFFFFFF0), "declares 4294967280 bytes")


def test_chunk_shorter_than_its_events(tmp_path: Path) -> None:
    # Track 0 ends inside a message; parsed on its own it cannot run into track 1.
    assert_fails(tmp_path, header(tracks=2) + chunk(b"MTrk", NOTE[:7]) + chunk(b"MTrk", NOTE + END), "damaged track 0")


def test_wrong_chunk_length_leaves_garbage_that_is_reported(tmp_path: Path) -> None:
    assert_fails(tmp_path, header() + chunk(b"MTrk", NOTE + END, declared=6) + NOTE + END, "declares")


def test_running_status_without_status_byte(tmp_path: Path) -> None:
    assert_fails(tmp_path, header() + chunk(b"MTrk", b"\x00\x3c\x64" + END), "damaged track 0")


def test_data_byte_out_of_range(tmp_path: Path) -> None:
    assert_fails(tmp_path, header() + chunk(b"MTrk", b"\x00\x90\x3c\xe4" + END), "damaged track 0")


def test_smpte_division_is_refused(tmp_path: Path) -> None:
    assert_fails(tmp_path, header(division=0xE728) + chunk(b"MTrk", NOTE + END), "SMPTE")


def test_zero_ticks_per_beat_is_refused(tmp_path: Path) -> None:
    assert_fails(tmp_path, header(division=0) + chunk(b"MTrk", NOTE + END), "ticks per beat is 0")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    assert_fails(tmp_path, header(midi_format=7) + chunk(b"MTrk", NOTE + END), "format 7")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MidiFormatError, match="nope.mid: cannot read"):
        midi_to_text(tmp_path / "nope.mid")
    with pytest.raises(MidiFormatError, match="cannot read"):
        midi_to_text(tmp_path)


def test_unknown_chunks_are_skipped_and_track_count_taken_from_chunks(tmp_path: Path) -> None:
    data = header(tracks=5) + chunk(b"XFIH", b"\x01\x02\x03") + chunk(b"MTrk", NOTE + END)
    path = tmp_path / "odd.mid"
    path.write_bytes(data)
    assert midi_to_text(path) == "<start> pi:3c:a t12 pi:3c:0 <end>"  # 96 ticks = 100 ms


def test_trailing_garbage_shorter_than_a_chunk_is_ignored() -> None:
    data = header() + chunk(b"MTrk", NOTE + END) + b"\x00\x00"
    assert MidiTokenizer().midi_to_text(data) == "<start> pi:3c:a t12 pi:3c:0 <end>"


def test_loaded_file_with_bad_division_or_times_is_refused() -> None:
    with pytest.raises(MidiFormatError, match="ticks per beat"):
        load_midi(mido.MidiFile(ticks_per_beat=0))
    mid = mido.MidiFile()
    mid.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, time=0.5)]))
    with pytest.raises(MidiFormatError, match="track 0 has delta time 0.5"):
        MidiTokenizer().midi_to_text(mid)


def test_error_names_bytes_input() -> None:
    with pytest.raises(MidiFormatError, match="<bytes>: not a MIDI file"):
        MidiTokenizer().midi_to_text(b"RIFF....")
