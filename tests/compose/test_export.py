"""Exporters: ABC text, ABC → MIDI/MusicXML through music21, piano rolls, .wav, atomic writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mido
import pytest

from rwkv_music.compose.piece import Piece
from rwkv_music.errors import AbcFormatError, BackendUnavailable, OutputExistsError
from rwkv_music.export import abc as abc_export
from rwkv_music.export.abc_to_midi import convert_folder
from rwkv_music.export.midi import notes_of, read_midi
from rwkv_music.export.music21_io import abc_to_midi, abc_to_score, write_musicxml
from rwkv_music.io_utils import append_jsonl, atomic_path, atomic_write_text, read_jsonl

DATA = Path(__file__).resolve().parents[1] / "data"
JIG = "S:2\nB:4\nE:0\nB:4\nL:1/8\nM:6/8\nK:D\n|:DFA dAF|GBd gdB|AFD DFA|G3 E3:|\n"


def test_with_reference_drops_control_codes_and_puts_x_first() -> None:
    text = abc_export.with_reference(JIG, 7)
    assert text.splitlines()[:2] == ["X:7", "L:1/8"]
    assert not any(line.startswith(("S:", "B:", "E:")) for line in text.splitlines())


def test_tune_book_numbers_tunes_from_one_and_splits_back() -> None:
    book = abc_export.tune_book([JIG, JIG.replace("K:D", "K:G")])
    tunes = abc_export.split_tunes(book)
    assert [x for x, _ in tunes] == [1, 2]
    assert "K:G" in tunes[1][1] and "K:G" not in tunes[0][1]


def test_prompt_from_tune_keeps_music_fields_only() -> None:
    tune = "T:Title\nC:Someone\nR:jig\nL:1/8\nM:6/8\nK:D\n|:DFA dAF|\n"
    assert abc_export.prompt_from_tune(tune) == "L:1/8\nM:6/8\nK:D\n|:DFA dAF|"
    with pytest.raises(AbcFormatError, match="K:"):
        abc_export.prompt_from_tune("L:1/8\nM:6/8\nDFA|")


def test_abc_to_midi_has_the_notes_music21_reads() -> None:
    midi = abc_to_midi(JIG)
    score = abc_to_score(JIG)
    expected = len([n for n in score.flatten().notes])
    # the repeat is played twice in MIDI; music21 expands repeats when writing MIDI
    assert len(notes_of(midi)) in (expected, 2 * expected)
    assert midi.length > 0


def test_bad_abc_raises_abc_format_error_naming_the_source() -> None:
    with pytest.raises(AbcFormatError, match="my tune"):
        abc_to_score("L:1/8\nM:6/8\nK:D\n", source="my tune")  # no notes


def test_musicxml_export_reads_back_in_music21(tmp_path: Path) -> None:
    from music21 import converter

    path = write_musicxml(abc_to_score(JIG), tmp_path / "jig.musicxml")
    back = converter.parse(str(path))
    assert len(back.flatten().notes) == len(abc_to_score(JIG).flatten().notes)


def test_notes_of_counts_every_note_on_of_a_real_file() -> None:
    midi = read_midi(DATA / "sample-RWKV-4-MIDI-120M.mid")
    ons = sum(1 for m in midi if m.type == "note_on" and m.velocity > 0)
    notes = notes_of(midi)
    assert len(notes) == ons
    assert all(n.end >= n.start for n in notes)


def test_piano_roll_is_a_png_and_pyplot_stays_unloaded(tmp_path: Path) -> None:
    import sys

    piece = Piece("abc", [], JIG)
    path = piece.save(tmp_path / "roll.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matplotlib.pyplot" not in sys.modules


def test_saving_twice_needs_force(tmp_path: Path) -> None:
    piece = Piece("abc", [], JIG)
    piece.save(tmp_path / "a.abc")
    with pytest.raises(OutputExistsError, match="a.abc"):
        piece.save(tmp_path / "a.abc")
    piece.save(tmp_path / "a.abc", force=True)
    assert (tmp_path / "a.abc").read_text().startswith("X:1\n")


def test_saved_midi_of_abc_piece_opens_in_mido(tmp_path: Path) -> None:
    path = Piece("abc", [], JIG, index=2).save(tmp_path / "jig.mid")
    assert len(mido.MidiFile(path).tracks) >= 1
    assert "X:3" in Piece("abc", [], JIG, index=2).to_abc()


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown output format"):
        Piece("abc", [], JIG).save(tmp_path / "x.mp3")


@pytest.mark.skipif(importlib.util.find_spec("fluidsynth") is not None, reason="FluidSynth is installed")
def test_wav_without_fluidsynth_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="FluidSynth"):
        Piece("abc", [], JIG).save(tmp_path / "a.wav")
    assert not (tmp_path / "a.wav").exists()


def test_atomic_write_failure_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.mid") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(tmp_path / "y.txt", "ok")
    assert [p.name for p in tmp_path.iterdir()] == ["y.txt"]


def test_read_jsonl_drops_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"id": 1})
    append_jsonl(path, {"id": 2})
    with open(path, "a") as fh:
        fh.write('{"id": 3, "outp')
    rows, bad = read_jsonl(path)
    assert [r["id"] for r in rows] == [1, 2] and bad == 1


def test_abc_folder_converts_every_tune_and_lists_failures(tmp_path: Path) -> None:
    src = tmp_path / "abc"
    (src / "sub").mkdir(parents=True)
    (src / "book.abc").write_text("X:1\nT:a\n" + JIG + "\nX:2\nT:b\n" + JIG.replace("K:D", "K:G"))
    (src / "sub" / "bad.abc").write_text("X:5\nT:empty\nL:1/8\nM:6/8\nK:D\n")
    report = convert_folder(src, tmp_path / "mid")
    assert report.written == 2 and len(report.failed) == 1
    outs = sorted(p.relative_to(tmp_path / "mid").as_posix() for p in (tmp_path / "mid").rglob("*.mid"))
    assert outs == ["book_0001.mid", "book_0002.mid"]
    assert "bad.abc#X:5" in (tmp_path / "mid" / "failed.txt").read_text()
    again = convert_folder(src, tmp_path / "mid")  # a rerun keeps what is there
    assert again.skipped == 2 and again.written == 0
