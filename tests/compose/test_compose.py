"""The composing API on tiny random RWKV-7 models (and a numpy fake where speed matters)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mido
import numpy as np
import pytest
from fake_backend import FakeBackend

from rwkv_music.compose.composer import AbcOptions, Composer, MidiOptions, piece_seed
from rwkv_music.compose.options import MAX_MIDI_PROMPT
from rwkv_music.errors import AbcFormatError, RwkvMusicError
from rwkv_music.formats.midi.constraint import N_PITCH, N_VEL, NOTE_BASE
from rwkv_music.model.state import State

DATA = Path(__file__).resolve().parents[1] / "data"
PIANO_BIN = 8  # docs/formats.md C1 bin order


@pytest.fixture(scope="module")
def midi_composer(checkpoint_path: Callable[..., Path]) -> Composer:
    return Composer.load(checkpoint_path("7", vocab_size=20096, n_layer=2))


@pytest.fixture(scope="module")
def abc_composer(checkpoint_path: Callable[..., Path]) -> Composer:
    return Composer.load(checkpoint_path("7", vocab_size=128, n_layer=2))


def test_mode_is_inferred_from_the_vocabulary(midi_composer: Composer, abc_composer: Composer) -> None:
    assert (midi_composer.mode, abc_composer.mode) == ("midi", "abc")


def test_mode_override_that_contradicts_the_vocabulary_fails(checkpoint_path: Callable[..., Path]) -> None:
    with pytest.raises(RwkvMusicError, match="vocab/model mismatch"):
        Composer.load(checkpoint_path("7", vocab_size=128, n_layer=2), mode="midi")


def test_abc_model_refuses_midi_composition(abc_composer: Composer) -> None:
    with pytest.raises(RwkvMusicError, match="ABC model"):
        abc_composer.compose_midi(max_tokens=4)


def test_missing_default_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rwkv_music.assets as assets

    monkeypatch.setattr(assets, "default_model_dir", lambda mode: tmp_path)
    with pytest.raises(RwkvMusicError, match="default midi model is missing"):
        Composer.load(mode="midi")


@pytest.fixture(scope="module")
def midi_batch(midi_composer: Composer) -> list:
    return midi_composer.compose_midi(n=3, max_tokens=10, seed=11)


def test_midi_pieces_are_wrapped_in_start_end_and_decode_to_midi(midi_batch: list) -> None:
    assert [p.index for p in midi_batch] == [0, 1, 2]
    for p in midi_batch:
        assert p.text.startswith("<start> ") and p.text.endswith(" <end>")
        assert p.tokens and 0 not in p.tokens  # <pad> separates pieces, it is never part of one
        assert p.meta["prompt_tokens"] == 1  # the D3 prompt: just <pad>
        assert isinstance(p.to_midi(), mido.MidiFile)
        assert p.validity["decodes"] is True
        assert p.meta["finish_reason"] in ("stop", "max_tokens", "constraint")


def test_a_piece_depends_on_its_seed_not_on_its_batch(midi_composer: Composer, midi_batch: list) -> None:
    alone = midi_composer.compose_midi(n=1, max_tokens=10, seed=11)[0]
    assert midi_batch[0].tokens == alone.tokens
    assert midi_batch[0].meta["seed"] == piece_seed(11, 0)
    assert len({tuple(p.tokens) for p in midi_batch}) > 1


def test_piano_only_pieces_contain_only_piano_notes(midi_composer: Composer) -> None:
    pieces = midi_composer.compose_midi(n=2, max_tokens=16, seed=2, instruments="piano")
    lo = NOTE_BASE + PIANO_BIN * N_PITCH * N_VEL
    hi = lo + N_PITCH * N_VEL
    notes = [t for p in pieces for t in p.tokens if t >= NOTE_BASE]
    assert notes and all(lo <= t < hi for t in notes)


def test_unknown_instrument_fails_before_generating(midi_composer: Composer) -> None:
    with pytest.raises(RwkvMusicError, match="kazoo"):
        midi_composer.compose_midi(instruments="piano,kazoo")


def test_continue_midi_starts_with_the_files_tokens(midi_composer: Composer, tmp_path: Path) -> None:
    text = "<start> pi:3c:a pi:40:8 t30 pi:3c:0 pi:40:0 t10 pi:43:9 t60 pi:43:0 <end>"
    path = tmp_path / "short.mid"
    midi_composer.tokenizer.text_to_midi(text).save(path)
    file_ids = [t for t in midi_composer.tokenizer.midi_to_ids(path) if t > 2]
    piece = midi_composer.continue_midi(path, max_tokens=6, seed=1)[0]
    assert piece.tokens[: len(file_ids)] == file_ids
    assert piece.meta["prompt_tokens"] == len(file_ids) + 1


def test_continuing_a_long_file_keeps_its_last_tokens() -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")
    path = DATA / "sample-RWKV-4-MIDI-120M.mid"
    file_ids = [t for t in composer.tokenizer.midi_to_ids(path) if t > 2]
    piece = composer.continue_midi(path, max_tokens=2, seed=1)[0]
    kept = file_ids[-MAX_MIDI_PROMPT:]
    assert len(file_ids) > MAX_MIDI_PROMPT and piece.tokens[: len(kept)] == kept


def test_prompt_text_is_the_start_of_the_piece(midi_composer: Composer) -> None:
    piece = midi_composer.compose_midi(max_tokens=4, prompt="pi:4a:7 t20 pi:4a:0", seed=0)[0]
    assert piece.text.startswith("<start> pi:4a:7 t20 pi:4a:0 ")


def test_abc_prompt_is_bos_controls_and_header(abc_composer: Composer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    import rwkv_music.compose.helpers as ch

    real = ch.run_generate

    def spy(backend: object, prompts: list, *args: object, **kwargs: object) -> object:
        seen["prompts"] = prompts
        return real(backend, prompts, *args, **kwargs)

    monkeypatch.setattr(ch, "run_generate", spy)
    pieces = abc_composer.compose_abc(
        n=2, key="G", meter="6/8", tempo=100, controls="S:3;B:8", constrained=False, max_tokens=8, seed=1
    )
    expected = [2] + [ord(c) for c in "S:3\nB:8\nL:1/8\nM:6/8\nQ:1/4=100\nK:G\n"]
    assert seen["prompts"] == [expected, expected]
    saved = pieces[1].to_abc()
    assert saved.startswith("X:2\nT:Tune 2 in G\nL:1/8\nM:6/8\nQ:1/4=100\nK:G\n")  # T: from Piece.title
    assert "S:3" not in saved and "B:8" not in saved


def test_invalid_abc_header_fails_at_construction() -> None:
    with pytest.raises(AbcFormatError, match="meter"):
        AbcOptions(meter="7/7")
    with pytest.raises(AbcFormatError, match="key"):
        AbcOptions(key="H")
    with pytest.raises(RwkvMusicError, match="max_tokens"):
        MidiOptions(max_tokens=0)


def test_constrained_abc_tunes_parse_in_music21(abc_composer: Composer) -> None:
    pieces = abc_composer.compose_abc(n=2, key="D", meter="6/8", max_tokens=64, parts=1, bars_per_part=4, seed=3)
    assert all(p.validity.get("parse_ok") for p in pieces)


def test_continue_abc_reads_the_first_tune_of_a_file(abc_composer: Composer, tmp_path: Path) -> None:
    src = tmp_path / "t.abc"
    src.write_text("X:1\nT:Title\nL:1/8\nM:3/4\nK:A\n|:ABc d2|\n\nX:2\nT:other\nL:1/8\nM:2/4\nK:C\nCD|\n")
    piece = abc_composer.continue_abc(src, max_tokens=5, constrained=False, seed=0)[0]
    assert piece.text.startswith("S:2\nT:Title\nL:1/8\nM:3/4\nK:A\n|:ABc d2|")  # its title kept (issue 18)
    assert piece.meta["params"]["controls"] == "S:2" and piece.meta["input"] == str(src)


def test_custom_state_changes_the_piece_and_survives_save_load(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(128), model_name="fake")
    plain = composer.compose_abc(max_tokens=12, constrained=False, seed=4)[0]
    state = composer.make_state("S:3\nL:1/8\nM:6/8\nK:D\nDFA dAF|")
    state.save(tmp_path / "s.npz")
    loaded = State.load(tmp_path / "s.npz")
    a = composer.compose_abc(n=2, max_tokens=12, constrained=False, seed=4, state=state)
    b = composer.compose_abc(n=2, max_tokens=12, constrained=False, seed=4, state=loaded)
    assert [p.tokens for p in a] == [p.tokens for p in b]
    start = plain.meta["prompt_tokens"] - 1  # tokens = prompt (without bos) + new ones
    assert a[0].tokens[:start] == plain.tokens[:start]
    assert a[0].tokens[start:] != plain.tokens[start:] and a[0].meta["custom_state"] is True


def test_state_of_another_model_is_refused(midi_composer: Composer) -> None:
    other = FakeBackend(20096).new_state(1)
    with pytest.raises(RwkvMusicError, match="state"):
        midi_composer.compose_midi(max_tokens=2, state=other)


def test_meta_records_seed_params_model_timing_and_validity(midi_composer: Composer) -> None:
    p = midi_composer.compose_midi(max_tokens=4, seed=9, temperature=0.7)[0]
    assert {"seed", "params", "model", "timing", "sampling"} <= set(p.meta)
    assert "validity" not in p.meta  # computed on first use (an ABC check parses the tune with music21)
    assert p.validity["decodes"] is True and p.meta["validity"] is p.validity
    assert p.meta["sampling"]["temperature"] == 0.7
    assert p.meta["model"]["vocab_size"] == 20096 and p.meta["model"]["version"] == "7"
    assert np.isfinite(p.meta["timing"]["batch_seconds"])


def test_seconds_counts_new_music_after_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv_music.formats.midi.options import MidiOptions as Options
    from rwkv_music.formats.midi.vocab import LAYOUT

    targets = []
    real = Options.constraint

    def spy(self: Options, seconds: float | None) -> object:
        targets.append(seconds)
        return real(self, seconds)

    monkeypatch.setattr(Options, "constraint", spy)
    composer = Composer(FakeBackend(20096), model_name="fake")
    prompt = "pi:3c:a t125 t125 pi:3c:0"  # 2 s of music already
    pieces = composer.compose_midi(n=2, seconds=0.5, max_tokens=60, prompt=prompt, seed=3)
    assert targets[-1] == pytest.approx(2.5)
    for p in pieces:
        new = p.tokens[p.meta["prompt_tokens"] - 1 :]
        assert LAYOUT.seconds(new) <= 0.5 + 2.5 * 0.05 + 1e-9  # the tolerance is 5 % of the whole piece


def test_sampling_options_and_keyword_overrides_make_the_same_pieces() -> None:
    from rwkv_music.compose.options import SamplingOptions

    composer = Composer(FakeBackend(20096), model_name="fake")
    options = MidiOptions(max_tokens=12)
    by_keywords = composer.compose_rows([None] * 2, options, seed=5, preset="chatrwkv-midi", temperature=0.7)
    sampling = SamplingOptions("chatrwkv-midi", {"temperature": 0.7})
    by_object = composer.compose_rows([None] * 2, options, seed=5, sampling=sampling)
    assert [p.tokens for p in by_keywords] == [p.tokens for p in by_object]
    assert by_object[0].meta["preset"] == "chatrwkv-midi" and by_object[0].meta["sampling"]["temperature"] == 0.7


def test_an_unknown_sampling_option_is_one_line_before_any_work() -> None:
    from rwkv_music.compose.options import SamplingOptions

    with pytest.raises(RwkvMusicError, match="temperatur") as info:
        SamplingOptions(None, {"temperatur": 0.5})
    assert "\n" not in str(info.value)
    composer = Composer(FakeBackend(128), model_name="fake")
    with pytest.raises(RwkvMusicError, match="top_pp"):
        composer.compose_abc(max_tokens=2, top_pp=0.5)


def test_equal_rows_share_one_recipe_and_other_rows_get_their_own() -> None:
    from rwkv_music.compose.options import SamplingOptions

    composer = Composer(FakeBackend(128), model_name="fake")
    inputs = [None, "|:DFA|", None, "|:DFA|", "|:EGB|"]
    recipes = composer._recipes(inputs, AbcOptions(), SamplingOptions())
    assert recipes[0] is recipes[2] and recipes[1] is recipes[3] and recipes[4] is not recipes[1]
    assert [r.prompt for r in recipes] == [composer.recipe(x, AbcOptions(), SamplingOptions()).prompt for x in inputs]


def test_row_recipes_give_fresh_constraints_and_the_format_stop_ids() -> None:
    from rwkv_music.compose.options import SamplingOptions

    composer = Composer(FakeBackend(128), model_name="fake")
    recipe = composer.recipe("|:DFA|", AbcOptions(meter="6/8"), SamplingOptions())
    first, second = recipe.processors(), recipe.processors()
    assert first is not second and recipe.stop_ids == [composer.tokenizer.eos_id]
    assert recipe.prompt[0] == composer.tokenizer.bos_id and recipe.preset == "default-abc"
