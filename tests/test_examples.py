"""The scripts in examples/ run end to end on tiny random models (in-process, like `python script.py`)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Callable

import mido
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, args: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [script] + [str(a) for a in args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")


def test_compose_jig_writes_a_tune_book(
    checkpoint_path: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = checkpoint_path("7", vocab_size=128, n_layer=2)
    _run("compose_jig.py", ["--model", model, "-n", 2, "--max-tokens", 160, "--out", tmp_path], monkeypatch)
    book = (tmp_path / "jigs.abc").read_text()
    assert [line for line in book.splitlines() if line.startswith(("X:", "M:", "K:"))] == [
        "X:1",
        "M:6/8",
        "K:D",
        "X:2",
        "M:6/8",
        "K:D",
    ]
    assert "jigs.abc: 2 tunes" in capsys.readouterr().out


def test_continue_midi_writes_midi_and_piano_rolls(
    checkpoint_path: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    model = checkpoint_path("7", vocab_size=20096, n_layer=2)
    src = tmp_path / "tune.mid"
    MidiTokenizer().text_to_midi("pi:3c:a t60 pi:3c:0 pi:43:a t60 pi:43:0").save(src)
    _run("continue_midi.py", [src, "--model", model, "-n", 2, "--max-tokens", 8, "--out", tmp_path / "o"], monkeypatch)
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["tune-1.mid", "tune-1.png", "tune-2.mid", "tune-2.png"]
    assert mido.MidiFile(tmp_path / "o" / "tune-1.mid").length > 0


def test_render_folder_renders_and_resumes(
    checkpoint_path: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = checkpoint_path("7", vocab_size=128, n_layer=2)
    folder = tmp_path / "tunes"
    folder.mkdir()
    for key in ("G", "D"):
        (folder / f"{key}.abc").write_text(f"X:1\nT:t\nL:1/8\nM:2/4\nK:{key}\nGABc|d2B2|\n")
    args = [folder, "--model", model, "--samples", 2, "--max-tokens", 6, "--out", tmp_path / "o"]
    _run("render_folder.py", args, monkeypatch)
    rows = [json.loads(x) for x in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sorted(r["output"] for r in rows) == sorted(
        p.name for p in (tmp_path / "o").glob("*.abc")
    )
    _run("render_folder.py", args, monkeypatch)  # everything is there: nothing new
    assert "0 new, 4 already there" in capsys.readouterr().out
