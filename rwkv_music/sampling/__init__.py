"""Sampling: logits processors, presets, music constraints and the one decode loop.

>>> from rwkv_music.sampling import get_preset
>>> [p.rule for p in get_preset("chatrwkv-midi").build_processors()]
['occurrence_penalty', 'eos_bias', 'logit_bias', 'top_p', 'top_k']

The music constraints live with their formats (:mod:`rwkv_music.formats.abc.constraint`,
:mod:`rwkv_music.formats.midi.constraint`); their names stay importable from here (loaded on first
use, because the formats build on this package's processor protocol).
"""

from __future__ import annotations

from rwkv_music.sampling.base import (
    LogitsProcessor,
    LogitsProcessorList,
    RowConstraintError,
    SamplingValueError,
)
from rwkv_music.sampling.config import SamplingConfig
from rwkv_music.sampling.continuous import generate_continuous
from rwkv_music.sampling.decode import PieceResult, WorkItem, decode
from rwkv_music.sampling.generate import GenerationResult, generate
from rwkv_music.sampling.penalties import OccurrencePenalty, pip_text_weights, weights_from_ranges
from rwkv_music.sampling.presets import get_preset, preset_names
from rwkv_music.sampling.processors import (
    EosBiasSchedule,
    ForceTokens,
    LogitBias,
    MinNewTokens,
    MinP,
    Temperature,
    TokenBan,
    TopK,
    TopP,
)
from rwkv_music.sampling.sampler import counter_uniforms, make_generators, row_uniforms, sample, sample_batch

_FORMAT_NAMES = {
    "AbcConstraint": "rwkv_music.formats.abc.constraint",
    "decode_abc": "rwkv_music.formats.abc.constraint",
    "AbcGrammar": "rwkv_music.formats.abc.grammar.machine",
    "AbcGrammarConfig": "rwkv_music.formats.abc.grammar.machine",
    "MidiConstraint": "rwkv_music.formats.midi.constraint",
}


def __getattr__(name: str) -> object:  # the constraints, re-exported lazily (no import cycle)
    if name in _FORMAT_NAMES:
        import importlib

        return getattr(importlib.import_module(_FORMAT_NAMES[name]), name)
    raise AttributeError(f"module 'rwkv_music.sampling' has no attribute {name!r}")


__all__ = [
    "PieceResult",
    "WorkItem",
    "generate_continuous",
    "decode",
    "AbcConstraint",
    "AbcGrammar",
    "AbcGrammarConfig",
    "decode_abc",
    "EosBiasSchedule",
    "ForceTokens",
    "GenerationResult",
    "LogitBias",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MidiConstraint",
    "MinNewTokens",
    "MinP",
    "OccurrencePenalty",
    "RowConstraintError",
    "SamplingConfig",
    "SamplingValueError",
    "Temperature",
    "TokenBan",
    "TopK",
    "TopP",
    "generate",
    "get_preset",
    "make_generators",
    "pip_text_weights",
    "preset_names",
    "sample",
    "sample_batch",
    "counter_uniforms",
    "row_uniforms",
    "weights_from_ranges",
]
