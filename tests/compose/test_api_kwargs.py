"""The composing API's keywords: typos fail in one line with the valid names, max_new_tokens is never
ignored, presets must suit the model, instruments take General MIDI names; load_model's Backend (issue 18)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from rwkv_music import Backend, Composer, RwkvMusicError, load_model
from rwkv_music.compose.options import MidiOptions, SamplingOptions
from rwkv_music.formats.midi.options import instrument_bins
from rwkv_music.sampling.base import SamplingValueError


@pytest.fixture(scope="module")
def midi(checkpoint_path: Callable[..., Path]) -> Composer:
    return Composer.load(checkpoint_path("7", vocab_size=20096, n_layer=1))


@pytest.fixture(scope="module")
def abc(checkpoint_path: Callable[..., Path]) -> Composer:
    return Composer.load(checkpoint_path("7", vocab_size=128, n_layer=1))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("call", ["compose_midi", "compose_abc"])
def test_a_misspelt_keyword_fails_in_one_line_listing_the_valid_names(
    call: str, midi: Composer, abc: Composer
) -> None:
    composer = midi if call == "compose_midi" else abc
    with pytest.raises(RwkvMusicError) as exc:
        getattr(composer, call)(temprature=0.5)
    text = _one_line(exc)
    assert text.startswith(f"{call}() got unknown keyword argument 'temprature'")
    assert "did you mean 'temperature'" in text
    valid = text.split("valid: ")[1].split(", ")
    assert {"n", "seed", "max_tokens", "max_new_tokens", "temperature", "top_p", "min_p"} <= set(valid)
    assert "sampling" not in valid  # the **sampling catch-all is not a name to pass


def test_continue_calls_check_their_keywords_too(midi: Composer, tmp_path: Path) -> None:
    with pytest.raises(RwkvMusicError, match=r"continue_midi\(\) got unknown keyword argument 'topp'"):
        midi.continue_midi(tmp_path / "never-read.mid", topp=0.5)


@pytest.mark.parametrize("call, kwargs", [("compose_midi", {}), ("compose_abc", {"constrained": False})])
def test_max_new_tokens_is_an_alias_of_max_tokens(call: str, kwargs: dict, midi: Composer, abc: Composer) -> None:
    composer = midi if call == "compose_midi" else abc
    pieces = getattr(composer, call)(n=2, max_new_tokens=6, seed=1, **kwargs)
    assert [p.meta["new_tokens"] <= 6 for p in pieces] == [True, True]
    assert [p.meta["params"]["max_tokens"] for p in pieces] == [6, 6]


def test_max_tokens_and_a_different_max_new_tokens_are_refused(midi: Composer) -> None:
    with pytest.raises(RwkvMusicError) as exc:
        midi.compose_midi(max_tokens=5, max_new_tokens=7)
    assert "not both" in _one_line(exc)


def test_the_row_api_refuses_max_new_tokens_instead_of_ignoring_it(midi: Composer) -> None:
    with pytest.raises(RwkvMusicError, match="max_tokens"):
        SamplingOptions(None, {"max_new_tokens": 10})
    with pytest.raises(RwkvMusicError, match="max_tokens"):
        midi.compose_rows([None], MidiOptions(max_tokens=4), seed=1, max_new_tokens=10)


def test_a_preset_for_the_other_mode_is_refused(midi: Composer, abc: Composer) -> None:
    with pytest.raises(SamplingValueError) as exc:
        midi.compose_midi(preset="chatrwkv-abc", max_tokens=4)
    assert "is for ABC models, not MIDI" in _one_line(exc) and "default-midi" in str(exc.value)
    with pytest.raises(SamplingValueError, match="is for MIDI models, not ABC"):
        abc.compose_abc(preset="default-midi", constrained=False, max_tokens=4)
    assert midi.compose_midi(preset="chatrwkv-midi", max_tokens=4, seed=2)[0].meta["preset"] == "chatrwkv-midi"


# -- instruments -------------------------------------------------------------------------------------
def test_general_midi_names_and_numbers_map_to_the_reference_bins() -> None:
    assert instrument_bins(["Acoustic Grand Piano", "harpsichord", 42, "41", "string ensemble 1"]) == (
        "piano", "bass", "violin",
    )
    assert instrument_bins("electric-guitar-(jazz), TIMPANI, pan_flute, Lead 1 (square wave)") == (
        "guitar", "drum", "flute", "lead",
    )
    assert MidiOptions(instruments="violin,viola,cello").instruments == ("violin", "bass")


@pytest.mark.parametrize(
    "item, message",
    [
        ("kazoo", "unknown instrument 'kazoo'"),
        ("gunshot", "program 127, Gunshot) has no bin"),
        (128, "numbers are 0-127"),
        ("55", "Orchestra Hit"),
    ],
)
def test_an_instrument_without_a_bin_is_one_line_naming_the_bins(item: object, message: str) -> None:
    with pytest.raises(RwkvMusicError) as exc:
        MidiOptions(instruments=["piano", item])
    text = _one_line(exc)
    assert message in text and "bin index" not in text
    if "numbers" not in message:
        assert "percussion, drum, tuba, marimba, bass, guitar, violin, trumpet, piano, sax, flute, lead, pad" in text


def test_composed_notes_stay_in_the_mapped_bins(midi: Composer) -> None:
    from rwkv_music.formats.midi.vocab import LAYOUT

    piece = midi.compose_midi(instruments=["Acoustic Grand Piano"], max_tokens=40, seed=3, key=None)[0]
    assert piece.meta["params"]["instruments"] == ["piano"]
    first = LAYOUT.first_note_id
    bins = {(t - first) // LAYOUT.bin_size for t in piece.tokens if t >= first}
    assert bins == {LAYOUT.bin_names.index("piano")}  # notes were played, all by the piano bin


# -- load_model --------------------------------------------------------------------------------------
def test_load_model_returns_a_backend_with_numpy_logits_on_request(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("7", vocab_size=128, n_layer=1))
    assert isinstance(model, Backend)
    logits, _state = model.forward([[2, 83, 58]])
    as_np = model.as_numpy(logits)
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32 and as_np.shape == (1, 128)
    assert model.array_kind == "torch"


def test_load_model_refuses_an_unknown_keyword_in_one_line(checkpoint_path: Callable[..., Path]) -> None:
    with pytest.raises(RwkvMusicError) as exc:
        load_model(checkpoint_path("7", vocab_size=128, n_layer=1), devcie="cpu")
    text = _one_line(exc)
    assert "'devcie'" in text and "did you mean 'device'" in text and "threads" in text.split("valid: ")[1]
