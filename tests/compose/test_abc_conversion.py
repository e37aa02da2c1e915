"""ABC -> MIDI / MusicXML never fails with a music21 error, and writes what a musician expects (issue 18).

Repeat forms music21 misreads or refuses, shared meter objects of overfull bars, the fallback
without repeats, typed errors, ``render --abc-to-midi`` with failing tunes, titles, the MIDI
writer's header and delta times, piano-roll legends, SoundFont search and file modes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import mido
import pytest
from click.testing import CliRunner

from rwkv_music.compose.composer import Composer
from rwkv_music.compose.piece import Piece
from rwkv_music.errors import AbcFormatError, RwkvMusicError
from rwkv_music.export.abc_to_midi import convert_folder
from rwkv_music.export.audio import AudioUnavailable, find_soundfont
from rwkv_music.export.music21_io import musicxml_bytes
from rwkv_music.formats.abc.normalize import normalize_repeats
from rwkv_music.formats.midi.files import MAX_DELTA, midi_bytes, notes_of, read_midi
from rwkv_music.formats.score import abc_to_midi, abc_to_score, score_to_midi_bytes
from rwkv_music.io_utils import atomic_write_text
from rwkv_music.tokenizers import MidiTokenizer

HEAD = "L:1/8\nM:2/4\nK:G\n"


def midi_notes(body: str) -> int:
    return len(notes_of(abc_to_midi(HEAD + body)))


# -- repeats -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "normalised", "notes"),
    [
        # :: and :|: are an end-and-start (music21 drops notes at :: and plays :|: three times)
        ("|:GA Bc|dc BA::de fg|ed cB:|", "|:GA Bc|dc BA:||:de fg|ed cB:|", 32),
        ("|:GA Bc|dc BA:|:de fg|ed cB:|", "|:GA Bc|dc BA:||:de fg|ed cB:|", 32),
        ("|:GA Bc|dc BA::|de fg|ed cB|]", "|:GA Bc|dc BA:|de fg|ed cB|]", 24),
        # expander refusals: |: twice, |: never closed, [2 without [1
        ("|:GA Bc|dc BA|:de fg|ed cB:|", "|GA Bc|dc BA|:de fg|ed cB:|", 24),
        ("GA Bc|dc BA|:de fg|ed cB|]", "GA Bc|dc BA|de fg|ed cB|]", 16),
        ("|:GA Bc|dc BA:|[2 de fg|ed cB|]", "|:GA Bc|dc BA:| de fg|ed cB|]", 24),
        # A:|B:| repeats B from the first :|, not the whole tune again
        ("GA Bc|dc BA:|de fg|ed cB:|", "GA Bc|dc BA:||:de fg|ed cB:|", 32),
        # well-formed forms are left alone
        ("|:GA Bc|dc BA|[1 de fg:|[2 ed cB|]", "|:GA Bc|dc BA|[1 de fg:|[2 ed cB|]", 24),
        ("|:GA Bc|dc BA:||:de fg|ed cB:|", "|:GA Bc|dc BA:||:de fg|ed cB:|", 32),
    ],
)
def test_repeat_forms_are_normalised_and_played_as_written(body: str, normalised: str, notes: int) -> None:
    assert normalize_repeats(HEAD + body) == HEAD + normalised
    assert midi_notes(body) == notes


def test_normalising_leaves_fields_strings_decorations_and_comments_alone() -> None:
    text = 'X:1\nI: :: (1) :| (2) ||\nK:G\n"A::B"GA Bc|!fermata!dc BA|[M:3/4]ded:|  % a :: comment\nw: la :: la\n'
    assert normalize_repeats(text) == text


def test_an_overfull_bar_converts_with_every_note() -> None:
    # music21 re-bars the 5/8 bar into two measures sharing one TimeSignature; its MIDI writer refused that
    assert midi_notes("GABcd|GABc|GABc|") == 13


def test_repeats_music21_cannot_expand_are_played_once_instead_of_failing() -> None:
    from music21 import converter

    raw = converter.parse("X:1\n" + HEAD + "|:GA Bc|dc BA|:de fg|ed cB:|\n", format="abc")  # not normalised
    midi = read_midi(score_to_midi_bytes(raw, source="raw tune"))
    assert len(notes_of(midi)) == 16


def test_a_voice_without_bar_lines_does_not_stop_the_others_repeats_from_converting() -> None:
    from music21 import bar, note, stream

    melody = stream.Part()
    for number in (1, 2):
        measure = stream.Measure(number=number)
        measure.append([note.Note("C4"), note.Note("D4")])
        melody.append(measure)
    melody.getElementsByClass(stream.Measure)[0].leftBarline = bar.Repeat(direction="start")
    melody.getElementsByClass(stream.Measure)[1].rightBarline = bar.Repeat(direction="end")
    score = stream.Score()
    score.insert(0, melody)
    score.insert(0, stream.Part([note.Note("C3", quarterLength=4)]))  # music21: "does not contain measures"
    midi = read_midi(score_to_midi_bytes(score, source="two voices"))
    assert sorted(n.pitch for n in notes_of(midi)) == [48, 60, 60, 62, 62]


def test_a_music21_failure_is_an_abc_format_error_naming_the_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    from music21.midi import translate

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("deep inside music21")

    monkeypatch.setattr(translate, "music21ObjectToMidiFile", broken)
    with pytest.raises(AbcFormatError, match=r"my tune: music21 cannot write this tune as MIDI \(ZeroDivisionError"):
        abc_to_midi(HEAD + "GA Bc|dc BA|", source="my tune")


# -- render --abc-to-midi --------------------------------------------------------------------------------
def test_abc_to_midi_folder_finishes_lists_failures_and_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rwkv_music.export.music21_io as music21_io
    from rwkv_music.cli.main import main

    src = tmp_path / "abc"
    src.mkdir()
    tunes = [
        "T:one\n" + HEAD + "|:GA Bc|dc BA::de fg|ed cB:|",
        "T:empty\n" + HEAD,  # no notes: a typed error
        "T:crash\n" + HEAD + "GA Bc|dc BA|",  # a library bug on this tune only
        "T:four\n" + HEAD + "GABcd|GABc|GABc|",
    ]
    (src / "book.abc").write_text("".join(f"X:{i}\n{t}\n\n" for i, t in enumerate(tunes, 1)))
    real = music21_io.abc_to_midi

    def flaky(text: str, source: str = "") -> mido.MidiFile:
        if "T:crash" in text:
            raise KeyError("music21 internals")
        return real(text, source=source)

    monkeypatch.setattr(music21_io, "abc_to_midi", flaky)
    result = CliRunner().invoke(main, ["render", "--abc-to-midi", str(src), "--out", str(tmp_path / "mid"), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 written" in result.output and "2 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "mid").glob("*.mid")) == ["book_0001.mid", "book_0004.mid"]
    failed = (tmp_path / "mid" / "failed.txt").read_text().splitlines()
    assert [line.split("\t")[0].rsplit("#", 1)[1] for line in failed] == ["X:2", "X:3"]
    assert "no notes" in failed[0] and "KeyError" in failed[1]
    assert all(line.count("\t") == 1 for line in failed)


def test_a_rerun_that_converts_everything_removes_the_old_failure_list(tmp_path: Path) -> None:
    src = tmp_path / "abc"
    src.mkdir()
    (src / "a.abc").write_text("X:1\n" + HEAD + "GA Bc|dc BA|\n")
    atomic_write_text(tmp_path / "mid" / "failed.txt", "old\treason\n")
    report = convert_folder(src, tmp_path / "mid")
    assert report.written == 1 and not report.failed
    assert not (tmp_path / "mid" / "failed.txt").exists()


# -- generated tunes -------------------------------------------------------------------------------------
def test_every_constrained_tune_converts_to_midi_and_musicxml(checkpoint_path: Callable[..., Path]) -> None:
    composer = Composer.load(checkpoint_path("7", vocab_size=128, n_layer=2))
    pieces = []
    for k, meter in enumerate(("4/4", "3/4", "2/4", "6/8")):
        pieces += composer.compose_abc(
            n=3, key="D", meter=meter, unit="1/8", max_tokens=200, parts=2, bars_per_part=2, seed=20 + k
        )
    for piece in pieces:
        midi = piece.to_midi()  # raises on failure
        assert notes_of(midi), piece.text
        assert b"<note" in musicxml_bytes(piece.to_score())


# -- titles ------------------------------------------------------------------------------------------------
JIG = "S:2\nB:4\nE:0\nB:4\nL:1/8\nM:6/8\nK:D\n|:DFA dAF|GBd gdB|AFD DFA|G3 E3:|\n"


def test_abc_output_and_musicxml_have_real_titles(tmp_path: Path) -> None:
    piece = Piece("abc", [], JIG, {"seed": 3}, index=1)
    assert piece.to_abc().splitlines()[:2] == ["X:2", "T:Tune 2 in D"]
    saved = piece.save(tmp_path / "t.abc").read_text()
    assert saved.splitlines()[:2] == ["X:2", "T:Tune 2 in D"] and "S:2" not in saved
    xml = musicxml_bytes(piece.to_score()).decode()
    assert "<movement-title>Tune 2 in D</movement-title>" in xml
    assert '<creator type="composer">rwkv-music</creator>' in xml
    assert "Music21" not in xml
    named = Piece("abc", [], "T:The Kesh\n" + JIG.split("\n", 4)[4], {"title": "ignored"})
    assert "T:The Kesh" in named.to_abc() and "ignored" not in named.to_abc()


def test_midi_of_an_abc_tune_names_its_tracks() -> None:
    midi = abc_to_midi("T:The Kesh\n" + HEAD + "|:GA Bc|dc BA:|")
    names = [[m.name for m in track if m.type == "track_name"] for track in midi.tracks]
    assert names == [["The Kesh"], ["Acoustic Grand Piano"]]


def test_musicxml_of_plain_abc_is_not_credited_to_music21() -> None:
    xml = musicxml_bytes(abc_to_score(HEAD + "GA Bc|dc BA|")).decode()
    assert "Music21" not in xml and "<movement-title>Untitled</movement-title>" in xml


def test_piece_repr_is_short() -> None:
    piece = Piece("midi", list(range(5000)), "<start> " + "t1 " * 5000 + "<end>", {"seed": 9})
    text = repr(piece)
    assert len(text) < 200 and "tokens=5000" in text and "seed=9" in text


# -- MIDI writer -------------------------------------------------------------------------------------------
TOKENIZER = MidiTokenizer()


def test_decoded_midi_names_its_instruments_and_programs_only_playing_channels() -> None:
    text = "pi:3c:a t10 pi:3c:0 t10 v:40:a t20 v:40:0"
    mid = TOKENIZER.text_to_midi(text)
    programs = [(m.channel, m.program) for m in mid.tracks[0] if m.type == "program_change"]
    assert programs == [(5, 40), (7, 0)]  # violin and piano bins (docs/formats.md C1)
    names = [m.name for m in mid.tracks[0] if m.type == "track_name"]
    assert names == ["Violin, Acoustic Grand Piano"]
    back = read_midi(midi_bytes(mid))
    assert {(n.channel, n.program) for n in notes_of(back)} == {(5, 40), (7, 0)}
    assert TOKENIZER.midi_to_text(back) == f"<start> {text} <end>"


def test_reference_timing_keeps_mlt_header() -> None:
    ref = MidiTokenizer(timing="reference")
    mid = ref.text_to_midi("pi:3c:a t10 pi:3c:0")
    assert sum(m.type == "program_change" for m in mid.tracks[0]) == 13


def test_musicxml_of_a_midi_piece_has_one_named_part_per_instrument() -> None:
    text = "<start> pi:3c:a t10 pi:3c:0 t10 v:40:a t20 v:40:0 <end>"
    piece = Piece("midi", TOKENIZER.encode(text), text, {}, tokenizer=TOKENIZER)
    score = piece.to_score()
    assert sorted(p.partName for p in score.parts) == ["Acoustic Grand Piano", "Violin"]
    assert score.metadata.title == "Piece 1"


def _vlq_lengths(data: bytes) -> list[int]:
    """Byte lengths of every delta time in a file of one track with running-status-free events."""
    pos = data.index(b"MTrk") + 8
    lengths = []
    while pos < len(data):
        start = pos
        while data[pos] & 0x80:
            pos += 1
        pos += 1
        lengths.append(pos - start)
        status = data[pos]
        if status == 0xFF:  # meta: type, length, data
            length = data[pos + 2]
            pos += 3 + length
        else:
            pos += 3  # note on/off
    return lengths


def test_waits_longer_than_a_delta_time_are_split_into_standard_ones() -> None:
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    wait = 2 * MAX_DELTA + 7
    mid.tracks.append(
        mido.MidiTrack(
            [
                mido.Message("note_on", note=60, velocity=90, time=0),
                mido.Message("note_off", note=60, time=wait),
                mido.MetaMessage("end_of_track", time=0),
            ]
        )
    )
    data = midi_bytes(mid)
    assert max(_vlq_lengths(data)) <= 4
    back = read_midi(data)
    assert sum(m.time for m in back.tracks[0]) == wait
    assert [m.type for m in back.tracks[0] if not m.is_meta] == ["note_on", "note_off"]
    assert mid.tracks[0][1].time == wait  # the caller's file is not changed


# -- piano roll --------------------------------------------------------------------------------------------
def test_piano_roll_names_instruments_keeps_the_legend_off_the_notes_and_marks_the_prompt() -> None:
    from rwkv_music.export.pianoroll import piano_roll_figure

    mid = TOKENIZER.text_to_midi("pi:3c:a t100 pi:3c:0 v:40:a t100 v:40:0 p:24:a t50 p:24:0")
    fig = piano_roll_figure(mid, "roll", prompt_seconds=0.8)
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["Acoustic Grand Piano", "Violin", "Drums", "end of prompt"]
    renderer = fig.canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    assert any(abs(line.get_xdata()[0] - 0.8) < 1e-9 for line in ax.get_lines())


def test_continuation_piece_knows_where_its_prompt_ends() -> None:
    text = "<start> pi:3c:a t125 pi:3c:0 t125 pi:40:a t50 pi:40:0 <end>"
    ids = TOKENIZER.encode(text)
    body = [i for i in ids if i not in (TOKENIZER.vocab.start_id, TOKENIZER.vocab.end_id, TOKENIZER.vocab.pad_id)]
    meta = {"prompt_tokens": 5, "input": "songs/melody.mid"}  # <pad> + 4 prompt ids
    piece = Piece("midi", body, text, meta, tokenizer=TOKENIZER)
    assert piece.prompt_seconds == pytest.approx(2.0)
    assert piece.title == "melody, continuation 1"
    assert Piece("midi", body, text, {"prompt_tokens": 1}, tokenizer=TOKENIZER).prompt_seconds is None


# -- audio -----------------------------------------------------------------------------------------------
def test_soundfont_is_found_where_the_system_installs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    font = tmp_path / "FluidR3_GM.sf2"
    font.write_bytes(b"RIFF")
    assert find_soundfont(search=(str(tmp_path / "missing.sf2"), str(font))) == font
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AudioUnavailable, match="fluid-soundfont-gm"):
        find_soundfont(search=(str(tmp_path / "missing.sf2"),))


def test_audio_extra_is_declared() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert any(dep.startswith("pyfluidsynth") for dep in pyproject["project"]["optional-dependencies"]["audio"])


# -- file modes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_and_states_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    import numpy as np

    from rwkv_music.model.state import State

    old = os.umask(umask)
    try:
        written = atomic_write_text(tmp_path / "a.txt", "x")
        state = State("7", {"att_x_prev": np.zeros((1, 1, 4), dtype=np.float32)})
        state.save(tmp_path / "s.npz")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == mode
    assert (tmp_path / "s.npz").stat().st_mode & 0o777 == mode
    assert State.load(tmp_path / "s.npz").batch_size == 1


def test_abc_errors_are_rwkv_music_errors() -> None:
    with pytest.raises(RwkvMusicError):
        abc_to_midi(HEAD, source="empty")
