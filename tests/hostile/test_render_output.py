"""Render output integrity: one writer per folder, no writes through links, its own outputs are not
inputs, nothing left behind by a run that fails before its first sample, unreadable inputs listed."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import NoReturn

import mido
import pytest
from fake_backend import FakeBackend

from rwkv_music.compose.composer import Composer
from rwkv_music.compose.render import FAILED, MAX_SAMPLES, RenderSettings, read_jobs, render
from rwkv_music.errors import OptionError, OutputLockedError, RwkvMusicError

SETTINGS = RenderSettings(2, 4, 7, {"max_tokens": 4})


def _composer() -> Composer:
    return Composer(FakeBackend(20096), model_name="fake")


def _prompts(path: Path, n: int = 3) -> Path:
    path.write_text("\n".join(f"pi:{0x30 + i:x}:7 t{5 + i} pi:{0x30 + i:x}:0" for i in range(n)) + "\n")
    return path


def _midi_file(path: Path, pitch: int = 60) -> Path:
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack(
        [mido.Message("note_on", note=pitch, velocity=64, time=0), mido.Message("note_off", note=pitch, time=480)]
    )
    mid.tracks.append(track)
    mid.save(path)
    return path


def test_second_writer_fails_at_once_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a render in progress holds this
    try:
        for resume in (False, True):
            settings = RenderSettings(2, 4, 7, {"max_tokens": 4}, resume=resume)
            with pytest.raises(OutputLockedError, match="another render is writing into this folder"):
                render(_composer(), _prompts(tmp_path / "p.txt"), out, settings)
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    report = render(_composer(), _prompts(tmp_path / "p.txt"), out, SETTINGS)  # released: it runs
    assert report.written == 6
    rows = (out / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 6


def test_lock_is_released_after_a_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(_composer(), _prompts(tmp_path / "p.txt"), out, SETTINGS)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        released = True
    except BlockingIOError:  # the render's lock is still held
        released = False
    finally:
        os.close(fd)
    assert released


@pytest.mark.parametrize("name", ["manifest.jsonl", "render.json", "stats.json"])
def test_links_out_of_the_output_folder_are_not_written_through(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    for resume in (True, False):
        settings = RenderSettings(2, 4, 7, {"max_tokens": 4}, resume=resume, force=True)
        with pytest.raises(RwkvMusicError, match=f"{name}: is a symbolic link"):
            render(_composer(), _prompts(tmp_path / "p.txt"), out, settings)
    assert victim.read_text() == "keep me\n"


def test_output_folder_inside_the_input_folder_is_not_read_as_input(tmp_path: Path) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(2):
        _midi_file(songs / f"s{i}.mid", 60 + i)
    out = songs / "out"
    first = render(_composer(), songs, out, SETTINGS)
    assert first.total == 4 and first.written == 4
    again = render(_composer(), songs, out, RenderSettings(2, 4, 7, {"max_tokens": 4}, resume=True))
    assert again.total == 4 and again.written == 0 and again.complete
    assert len(read_jobs(songs, "midi", exclude=out)) == 2
    assert len(read_jobs(songs, "midi")) == 6  # without the exclusion its 4 outputs would be inputs


class _Broken(FakeBackend):
    def forward(self, *args, **kwargs) -> NoReturn:  # noqa: ANN002, ANN003, ANN201
        raise RuntimeError("device lost")


def test_render_failing_before_its_first_sample_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new-out"
    with pytest.raises(RuntimeError, match="device lost"):
        render(Composer(_Broken(20096), model_name="broken"), _prompts(tmp_path / "p.txt"), out, SETTINGS)
    assert not out.exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        render(Composer(_Broken(20096), model_name="broken"), _prompts(tmp_path / "p.txt"), existing, SETTINGS)
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_unreadable_inputs_are_listed_and_the_others_rendered(tmp_path: Path) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    _midi_file(songs / "good.mid")
    (songs / "bad.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x10\x00junk")
    outside = _midi_file(tmp_path / "elsewhere.mid")
    (songs / "link.mid").symlink_to(outside)
    out = tmp_path / "out"
    report = render(_composer(), songs, out, SETTINGS)
    assert report.written == 2 and report.complete
    listed = dict(line.split("\t", 1) for line in (out / FAILED).read_text().splitlines())
    assert set(listed) == {str(songs / "bad.mid"), str(songs / "link.mid")}
    assert "link out of the input folder" in listed[str(songs / "link.mid")]
    assert "bad.mid" in listed[str(songs / "bad.mid")]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {Path(r["input"]).name for r in rows} == {"good.mid"}
    assert json.loads((out / "stats.json").read_text())["failed_inputs"] == 2
    for settings in (RenderSettings(2, 4, 7, {"max_tokens": 4}, force=True, continuous=False),):
        again = render(_composer(), songs, out, settings)  # the fixed-batch path skips them too
        assert again.written == 2 and len(again.failed) == 2


@pytest.mark.parametrize("row, what", [({"prompt": 123}, "'prompt' must be a string, got int"),
                                       ({"file": 5}, "'file' must be a string, got int"),
                                       ({"prompt": "t5", "name": ["x"]}, "'name' must be a string, got list")])
def test_jsonl_fields_of_the_wrong_type_are_refused(tmp_path: Path, row: dict, what: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "t5"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(RwkvMusicError, match=f"rows.jsonl:2: {what}"):
        read_jobs(path, "midi")


def test_prompts_file_with_invalid_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"t5 t6\n\xff\xfe t7\n")
    with pytest.raises(RwkvMusicError, match=r"p.txt: not UTF-8 text \(byte 6"):
        read_jobs(path, "midi")


@pytest.mark.parametrize("kw", [{"samples_per_prompt": 10**9}, {"batch_size": 10**9}, {"samples_per_prompt": 0},
                                {"max_samples": -1}, {"samples_per_prompt": 2.5}])
def test_absurd_counts_are_refused_at_once(kw: dict) -> None:
    with pytest.raises(OptionError):
        RenderSettings(**kw)


def test_inputs_times_samples_is_bounded_before_planning(tmp_path: Path) -> None:
    settings = RenderSettings(MAX_SAMPLES // 2 + 1, 4, 7, {"max_tokens": 4})
    out = tmp_path / "out"
    with pytest.raises(OptionError, match="more than the"):
        render(_composer(), _prompts(tmp_path / "p.txt", 2), out, settings)
    assert not out.exists()


def test_a_tune_the_abc_constraint_cannot_read_is_listed_and_the_others_rendered(tmp_path: Path) -> None:
    tunes = tmp_path / "tunes"
    tunes.mkdir()
    (tunes / "good.abc").write_text("X:1\nL:1/8\nM:2/4\nK:G\nG2 A2|B4|\n")
    (tunes / "odd.abc").write_text("X:2\nL:1/8\nM:2/4\nK:G\nG2 A#|B4|\n")  # '#' is no ABC
    out = tmp_path / "out"
    settings = RenderSettings(1, 2, 7, {"max_tokens": 200})
    report = render(Composer(FakeBackend(128), model_name="fake"), tunes, out, settings)
    assert report.written == 1 and report.complete
    listed = dict(line.split("\t", 1) for line in (out / FAILED).read_text().splitlines())
    assert set(listed) == {str(tunes / "odd.abc")} and "not valid ABC" in listed[str(tunes / "odd.abc")]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["good.abc"]
