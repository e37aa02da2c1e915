"""Named sampling recipes: the ChatRWKV ones (docs/formats.md D3, D4) and the toolkit's defaults.

>>> get_preset("chatrwkv-abc").top_k
8
>>> get_preset("chatrwkv-midi", temperature=0.9).temperature
0.9
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

from rwkv_music.sampling.base import SamplingValueError
from rwkv_music.sampling.config import SamplingConfig

# ChatRWKV music/run.py counts ids 0-126 (<pad>, <start>, <end>, t1..t124) with weight 0.3 and
# t125 and every note with weight 1 (D3 step 7).
_CHATRWKV_MIDI_WEIGHTS = ((0, 127, 0.3),)


def _chatrwkv_midi() -> SamplingConfig:
    """ChatRWKV ``music/run.py`` MIDI recipe (D3): prompt ``[0]``, stop on ``<pad>``, 4096 steps."""
    return SamplingConfig(
        temperature=1.0,
        top_k=8,
        top_p=0.8,
        frequency_penalty=0.5,  # logit[id] -= 0.5 * occ[id]; no presence term
        penalty_decay=0.997,
        penalty_weights=_CHATRWKV_MIDI_WEIGHTS,
        eos_bias_tokens=(0,),  # logit[0] += (i - 2000) / 500
        eos_bias_start=2000.0,
        eos_bias_scale=500.0,
        logit_bias=((127, -1.0),),  # t125 discouraged
        stop_tokens=(0,),
        max_new_tokens=4096,  # "only trained with ctx4096"
    )


def _chatrwkv_abc() -> SamplingConfig:
    """ChatRWKV ABC recipe (D4): the MIDI sampler call, no penalties or EOS bias, stop on id 3."""
    return SamplingConfig(temperature=1.0, top_k=8, top_p=0.8, stop_tokens=(3,), max_new_tokens=4096)


def _default_midi() -> SamplingConfig:
    """Ours for MIDI: the ChatRWKV recipe with a slightly wider nucleus and both end markers.

    Meant to run with a :class:`~rwkv_music.formats.midi.constraint.MidiConstraint`, which
    handles length and note hygiene; the step-based EOS bias stays as the model's own ending cue.
    """
    return _chatrwkv_midi().replace(top_k=16, top_p=0.9, stop_tokens=(0, 2))


def _default_abc() -> SamplingConfig:
    """Ours for ABC: nucleus 0.9 with a min-p floor; the ABC models are ctx1024."""
    return SamplingConfig(temperature=1.0, top_k=16, top_p=0.9, min_p=0.02, stop_tokens=(3,), max_new_tokens=2048)


PRESETS: Mapping[str, Callable[[], SamplingConfig]] = MappingProxyType({
    "chatrwkv-midi": _chatrwkv_midi,
    "chatrwkv-abc": _chatrwkv_abc,
    "default-midi": _default_midi,
    "default-abc": _default_abc,
})


# The model vocabulary each preset is written for: its stop ids, penalty ranges and biases are ids of
# that vocabulary (id 3 ends an ABC tune but is the wait t1 in MIDI), so it is wrong for the other.
PRESET_MODES: Mapping[str, str] = MappingProxyType({
    "chatrwkv-midi": "midi",
    "chatrwkv-abc": "abc",
    "default-midi": "midi",
    "default-abc": "abc",
})


def check_preset_mode(name: str, mode: str) -> None:
    """A one-line :class:`SamplingValueError` when preset ``name`` is written for another mode than ``mode``.

    >>> check_preset_mode("chatrwkv-abc", "midi")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rwkv_music.sampling.base.SamplingValueError: preset 'chatrwkv-abc' is for ABC models, not MIDI; use default-midi ...
    """
    own = PRESET_MODES.get(name)
    if own is not None and own != mode:
        fits = sorted((n for n, m in PRESET_MODES.items() if m == mode), key=lambda n: not n.startswith("default"))
        raise SamplingValueError(
            f"preset {name!r} is for {own.upper()} models, not {mode.upper()}; use {' or '.join(fits)}"
        )


def preset_names() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> SamplingConfig:
    """The named :class:`SamplingConfig`, with any fields in ``overrides`` replaced.

    An unknown preset, an unknown field name or a bad value is a :class:`SamplingValueError`
    (a :class:`~rwkv_music.errors.RwkvMusicError`) naming the valid choices; for options that may
    be ``None`` ("not given") use :meth:`SamplingConfig.from_options`.
    """
    if name not in PRESETS:
        raise SamplingValueError(f"unknown sampling preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]()
    return config.replace(**overrides) if overrides else config


__all__ = ["PRESETS", "PRESET_MODES", "SamplingConfig", "check_preset_mode", "get_preset", "preset_names"]
