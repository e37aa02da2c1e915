"""SamplingConfig validation, serialisation and the named presets (docs/formats.md D3, D4)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from rwkv_music.errors import RwkvMusicError
from rwkv_music.sampling import SamplingConfig, SamplingValueError, get_preset, preset_names
from rwkv_music.sampling.penalties import OccurrencePenalty


def test_preset_names() -> None:
    assert preset_names() == ["chatrwkv-midi", "chatrwkv-abc", "default-midi", "default-abc"]


def test_chatrwkv_midi_preset_is_the_d3_recipe() -> None:
    cfg = get_preset("chatrwkv-midi")
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p) == (1.0, 8, 0.8, 0.0)
    assert (cfg.presence_penalty, cfg.frequency_penalty, cfg.penalty_decay) == (0.0, 0.5, 0.997)
    assert cfg.eos_bias_tokens == (0,) and (cfg.eos_bias_start, cfg.eos_bias_scale) == (2000.0, 500.0)
    assert cfg.logit_bias == ((127, -1.0),) and cfg.stop_tokens == (0,) and cfg.max_new_tokens == 4096
    procs = cfg.build_processors()
    assert [p.rule for p in procs] == ["occurrence_penalty", "eos_bias", "logit_bias", "top_p", "top_k"]
    pen = procs[0]
    assert isinstance(pen, OccurrencePenalty)
    pen.reset([[0]])
    for t in (5, 127, 13146):
        pen.update([t])
    occ = pen.occurrences(0)
    assert occ[5] == pytest.approx(0.3 * 0.997**2) and occ[127] == pytest.approx(0.997) and occ[13146] == 1.0


def test_chatrwkv_abc_preset_is_the_d4_recipe() -> None:
    cfg = get_preset("chatrwkv-abc")
    assert (cfg.temperature, cfg.top_k, cfg.top_p) == (1.0, 8, 0.8)
    assert cfg.stop_tokens == (3,) and not cfg.eos_bias_tokens
    assert cfg.presence_penalty == cfg.frequency_penalty == 0.0
    assert [p.rule for p in cfg.build_processors()] == ["top_p", "top_k"]


def test_default_presets_are_valid_and_stop_on_their_end_tokens() -> None:
    assert set(get_preset("default-midi").stop_tokens) == {0, 2}
    assert get_preset("default-abc").stop_tokens == (3,)
    for name in preset_names():
        procs = get_preset(name).build_processors()
        procs.reset([[0], [0]])
        vocab = 20096 if "midi" in name else 128
        out = procs(0, np.zeros((2, vocab), np.float32))
        assert np.isfinite(out).any(axis=1).all()


def test_build_processors_inserts_constraints_in_the_fixed_order() -> None:
    cfg = SamplingConfig(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05, presence_penalty=0.1, banned_tokens=[4],
                         logit_bias={7: -1.0}, eos_bias_tokens=[0], eos_bias_scale=10, stop_tokens=[0],
                         min_new_tokens=2, forced_tokens={0: 1})
    marker = OccurrencePenalty()
    marker.rule = "constraint"
    rules = [p.rule for p in cfg.build_processors([marker])]
    assert rules == ["occurrence_penalty", "eos_bias", "logit_bias", "token_ban", "min_new_tokens", "constraint",
                     "force_tokens", "top_p", "top_k", "min_p", "temperature"]


def test_get_preset_overrides_and_unknown_name() -> None:
    assert get_preset("chatrwkv-midi", top_p=0.5).top_p == 0.5
    with pytest.raises(SamplingValueError, match="unknown sampling preset 'jazz'"):
        get_preset("jazz")
    with pytest.raises(SamplingValueError, match="temperature"):
        get_preset("chatrwkv-abc", temperature=-1.0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(temperature=-0.5), "temperature must be .* got -0.5"),
        (dict(top_k=-1), "top_k must be .* got -1"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(min_p=2.0), "min_p must be in \\[0, 1\\].* got 2.0"),
        (dict(penalty_decay=1.2), "penalty_decay must be in \\[0, 1\\], got 1.2"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
        (dict(min_new_tokens=10, max_new_tokens=5), "min_new_tokens 10 exceeds max_new_tokens 5"),
        (dict(banned_tokens=["x"]), "banned_tokens"),
        (dict(eos_bias_tokens=[0], eos_bias_scale=0), "scale"),
    ],
)
def test_config_constructor_rejects_bad_values_naming_them(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(SamplingValueError, match=match) as info:
        SamplingConfig(**kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RwkvMusicError)


def test_a_config_checked_once_is_not_checked_again_but_an_equal_bad_one_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.sampling.config as config

    monkeypatch.setattr(config, "_VALIDATED", {})
    builds = []
    real = SamplingConfig.build_processors
    monkeypatch.setattr(SamplingConfig, "build_processors", lambda self, *a: builds.append(1) or real(self, *a))
    SamplingConfig(top_k=3, top_p=0.7, temperature=0.9)
    SamplingConfig(top_k=3, top_p=0.7, temperature=0.9)
    assert len(builds) == 1
    SamplingConfig(top_k=1)
    with pytest.raises(SamplingValueError, match="top_k must be .* got True"):  # True == 1, yet not an integer
        SamplingConfig(top_k=True)


def test_config_is_frozen_and_round_trips_through_json() -> None:
    cfg = get_preset("chatrwkv-midi").replace(banned_tokens=[1], forced_tokens={0: 5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3  # type: ignore[misc]
    again = SamplingConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg)
    assert cfg.generate_kwargs() == {"max_new_tokens": 4096, "stop_tokens": (0,)}
    with pytest.raises(SamplingValueError, match="unknown field"):
        SamplingConfig.from_dict({"topk": 3})


def test_options_become_a_config_in_one_place_with_one_line_errors() -> None:
    cfg = SamplingConfig.from_options("chatrwkv-midi", {"temperature": 0.7, "top_p": None})
    assert cfg == get_preset("chatrwkv-midi").replace(temperature=0.7)  # None: the preset's value stays
    assert SamplingConfig.from_options(None, {}) == SamplingConfig()
    assert SamplingConfig.from_options(None, {"top_k": 3}).top_k == 3
    for call in (
        lambda: SamplingConfig.from_options("default-abc", {"topk": 3}),
        lambda: get_preset("default-abc", topk=3),  # a keyword, not a TypeError
        lambda: SamplingConfig().replace(topk=3),
    ):
        hint = r"unknown sampling option 'topk' \(did you mean 'top_k'\?\)"
        with pytest.raises(SamplingValueError, match=hint) as info:
            call()
        message = str(info.value)
        assert isinstance(info.value, RwkvMusicError) and "\n" not in message
        assert "valid: temperature, top_k," in message and "max_new_tokens" in message
    with pytest.raises(SamplingValueError, match="unknown sampling options 'a', 'b'; valid"):
        SamplingConfig.from_options(None, {"a": 1, "b": 2})
    with pytest.raises(SamplingValueError, match="unknown sampling preset 'jazz'"):
        SamplingConfig.from_options("jazz", {"temperature": 1.0})
    with pytest.raises(SamplingValueError, match="top_k must be an integer >= 0"):
        SamplingConfig.from_options("default-midi", {"top_k": "many"})
