"""Sampling: logits processors, presets, music constraints and the generation loop.

>>> from rwkv_music.sampling import get_preset
>>> [p.rule for p in get_preset("chatrwkv-midi").build_processors()]
['occurrence_penalty', 'eos_bias', 'logit_bias', 'top_p', 'top_k']

The ABC grammar constraint lives in ``rwkv_music.sampling.abc_*`` (import it from there).
"""

from __future__ import annotations

from rwkv_music.sampling.base import (
    LogitsProcessor,
    LogitsProcessorList,
    RowConstraintError,
    SamplingValueError,
)
from rwkv_music.sampling.config import SamplingConfig
from rwkv_music.sampling.continuous import PieceResult, WorkItem, generate_continuous
from rwkv_music.sampling.generate import GenerationResult, generate
from rwkv_music.sampling.midi_constraint import MidiConstraint
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
from rwkv_music.sampling.sampler import make_generators, sample
from rwkv_music.sampling.abc_constraint import AbcConstraint, decode_abc
from rwkv_music.sampling.abc_grammar import AbcGrammar, AbcGrammarConfig

__all__ = [
    "PieceResult",
    "WorkItem",
    "generate_continuous",
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
    "weights_from_ranges",
]
