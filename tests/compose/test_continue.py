"""Continuing a piece that already ended adds music (a new part for ABC), keeps the tune's titles, and
fails with one line when nothing could be added."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from fake_backend import FakeBackend

from rwkv_music.compose.composer import Composer
from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.continuation import insert_titles, reopen_end, title_lines

FINISHED = "X:3\nT:My Reel\nT:The Other Name\nC:Trad.\nL:1/8\nM:4/4\nK:D\nDEFG ABcd|efga bagf|edcB AGFE|D4 D4|]\n"
EOS = 3


class EagerToEnd(FakeBackend):
    """A model that all but certainly ends the piece at every step (as real models do after a final barline)."""

    def forward(self, tokens: Any, state: Any = None, **kw: Any) -> tuple[np.ndarray, Any]:
        logits, new = super().forward(tokens, state, **kw)
        logits[..., EOS] += 1e4  # far above the fake's own logits (std ~20)
        return logits, new


def test_reopen_end_turns_the_final_barline_into_a_section_line() -> None:
    assert reopen_end("K:D\nDEFG|ABcd|]\n") == "K:D\nDEFG|ABcd||\n"
    assert reopen_end("K:D\nDEFG|ABcd||]") == "K:D\nDEFG|ABcd||"
    assert reopen_end("K:D\nDEFG|ABcd:|]  \n") == "K:D\nDEFG|ABcd:|  \n"
    assert reopen_end("K:D\n|]DEFG|ABcd|") == "K:D\n|]DEFG|ABcd|"  # only the end counts
    assert reopen_end("K:D\nDEFG|ABcd:|") == "K:D\nDEFG|ABcd:|"


def test_titles_are_read_from_the_header_and_put_back_after_control_codes() -> None:
    assert title_lines(FINISHED) == ["T:My Reel", "T:The Other Name"]
    assert title_lines("L:1/8\nK:D\nT:part title after K\nDEF|") == []
    text = insert_titles("S:2\nB:4\nL:1/8\nK:D\nDEF|", ["T:My Reel"])
    assert text == "S:2\nB:4\nT:My Reel\nL:1/8\nK:D\nDEF|"
    assert insert_titles(text, ["T:Another"]) == text  # a text with titles keeps its own


@pytest.mark.parametrize("source", ["file", "text"])
def test_continuing_a_finished_tune_adds_a_part_and_keeps_titles(tmp_path: Path, source: str) -> None:
    path = tmp_path / "reel.abc"
    path.write_text(FINISHED)
    composer = Composer(EagerToEnd(128), model_name="fake")
    arg = path if source == "file" else FINISHED
    pieces = composer.continue_abc(arg, n=2, seed=1, constrained=False, max_tokens=16)
    for piece in pieces:
        assert piece.meta["new_tokens"] == 1  # the end was banned for the first token only
        assert piece.text.startswith("S:2\nT:My Reel\nT:The Other Name\nL:1/8\nM:4/4\nK:D\n")
        assert "D4 D4||" in piece.text and "|]" not in piece.text.split("D4 D4")[1][:2]
        assert piece.meta["sampling"]["min_new_tokens"] == 1
    abc = pieces[0].to_abc()
    assert abc.startswith("X:1\nT:My Reel\nT:The Other Name\nL:1/8\n")
    saved = pieces[1].save(tmp_path / "out.abc")
    assert "T:My Reel" in saved.read_text()


def test_a_continuation_that_adds_nothing_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "reel.abc"
    path.write_text(FINISHED)
    composer = Composer(EagerToEnd(128), model_name="fake")
    with pytest.raises(RwkvMusicError) as err:  # the caller allowed an empty continuation: it is not silent
        composer.continue_abc(path, n=2, seed=1, constrained=False, max_tokens=16, min_new_tokens=0)
    message = str(err.value)
    assert "\n" not in message
    assert message == f"the model added nothing to {path}: it ended the piece at once (stop); try another seed"


class FirstRowEndsAtOnce(FakeBackend):
    """Row 0 of a batch ends right after its prompt (the prefill's logits); the others write on."""

    def forward(self, tokens: Any, state: Any = None, **kw: Any) -> tuple[np.ndarray, Any]:
        logits, new = super().forward(tokens, state, **kw)
        if np.asarray(tokens).shape[1] > 1:  # prefill
            logits[0, EOS] += 1e4
        else:
            logits[:, EOS] -= 1e4
        return logits, new


def test_one_empty_row_among_others_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rwkv_music.compose.options import AbcOptions, SamplingOptions

    path, other = tmp_path / "reel.abc", tmp_path / "other.abc"
    path.write_text(FINISHED)
    other.write_text(FINISHED.replace("D4 D4|]", "D4 d4|]"))  # another prompt: prefilled as its own row
    composer = Composer(FirstRowEndsAtOnce(128), model_name="fake")
    sampling = SamplingOptions(None, {"min_new_tokens": 0})  # the caller allows an empty continuation
    with caplog.at_level(logging.WARNING):
        pieces = composer.compose_rows([path, other], AbcOptions(constrained=False, max_tokens=8), seed=1,
                                       sampling=sampling)
    assert [p.meta["new_tokens"] for p in pieces] == [0, 8]
    assert f"continuation 0: the model added nothing to {path}" in caplog.text
    # the default (no min_new_tokens given) bans the end before the first token: both rows add music
    pieces = composer.compose_rows([path, other], AbcOptions(constrained=False, max_tokens=8), seed=1)
    assert [p.meta["new_tokens"] for p in pieces] == [8, 8]


def test_fresh_pieces_keep_the_presets_min_new_tokens() -> None:
    composer = Composer(FakeBackend(128), model_name="fake")
    piece = composer.compose_abc(n=1, seed=1, constrained=False, max_tokens=8)[0]
    assert piece.meta["sampling"]["min_new_tokens"] == 0


def test_midi_continuation_also_adds_at_least_one_token(tmp_path: Path) -> None:
    import mido

    class EagerMidiEnd(FakeBackend):
        def forward(self, tokens: Any, state: Any = None, **kw: Any) -> tuple[np.ndarray, Any]:
            logits, new = super().forward(tokens, state, **kw)
            logits[..., 0] += 1e4  # MIDI ends on id 0
            return logits, new

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for i, note in enumerate((60, 64, 67)):
        track.append(mido.Message("note_on", note=note, velocity=80, time=0 if i == 0 else 240))
        track.append(mido.Message("note_off", note=note, velocity=0, time=240))
    mid.save(tmp_path / "m.mid")
    composer = Composer(EagerMidiEnd(20096), model_name="fake")
    piece = composer.continue_midi(tmp_path / "m.mid", seed=2, constrained=False, max_tokens=8)[0]
    assert piece.meta["new_tokens"] >= 1


def test_cli_continue_keeps_the_title_and_adds_a_part(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from rwkv_music.cli.main import main

    model = checkpoint_path("7", vocab_size=128, n_layer=1)
    tune = tmp_path / "reel.abc"
    tune.write_text(FINISHED)
    args = ["continue", tune, "--model", model, "--seed", 4, "--max-tokens", 12, "--no-constraints", "-q",
            "--out", tmp_path / "out"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "reel-cont-4-00.abc").read_text()
    assert text.startswith("X:1\nT:My Reel\nT:The Other Name\nL:1/8\nM:4/4\nK:D\n")
    body = text.split("K:D\n", 1)[1]
    assert body.startswith("DEFG ABcd|efga bagf|edcB AGFE|D4 D4||")
    assert len(body.strip()) > len("DEFG ABcd|efga bagf|edcB AGFE|D4 D4||")


def test_an_abc_continuation_marks_where_its_prompt_ends() -> None:
    composer = Composer(EagerToEnd(128), model_name="fake")
    piece = composer.continue_abc(FINISHED, n=1, seed=2, constrained=False, max_tokens=16)[0]
    end = piece.prompt_seconds
    assert end is not None
    whole = float(piece.to_midi().length)
    assert 0 < end <= whole  # the marker sits inside the piece ...
    assert end == pytest.approx(float(piece.format.to_midi(FINISHED).length), abs=1e-6)  # ... after the prompt
    fresh = composer.compose_abc(n=1, seed=2, constrained=False, max_tokens=16)[0]
    assert fresh.prompt_seconds is None  # a header is no music: no marker on a fresh tune
