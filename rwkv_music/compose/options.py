"""Options of a compose call (frozen, validated on construction), seeds and the mode rule."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from rwkv_music.errors import RwkvMusicError

MIDI_SEPARATOR = 0  # <pad>: starts a MIDI prompt and ends a piece (FORMATS D3)
ABC_BOS, ABC_EOS = 2, 3  # FORMATS B
ABC_VOCAB = 128
MIDI_VOCAB = 20096
VOCAB_MODES = {ABC_VOCAB: "abc", MIDI_VOCAB: "midi"}
DEFAULT_PRESETS = {"midi": "default-midi", "abc": "default-abc"}
MAX_MIDI_PROMPT = 2048  # continuation reads the last tokens of long files (the MIDI model saw ctx 4096)
LIMIT_NAMES = ("pitch_range", "max_polyphony", "max_note_seconds", "drums", "length_tolerance", "end_bias")

ProgressCallback = Callable[[int, int], None]


def piece_seed(base_seed: int, index: int) -> int:
    """The seed of piece ``index`` of a call (or render sample ``index``) with ``base_seed``.

    >>> piece_seed(1, 0) == piece_seed(1, 0) != piece_seed(1, 1)
    True
    """
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def new_base_seed() -> int:
    """A fresh random base seed (recorded in every piece's meta so the piece can be reproduced)."""
    return secrets.randbelow(2**31)


def mode_for_vocab(vocab_size: int, mode: str | None, source: str = "model") -> str:
    """Check or infer the mode from the vocabulary size (128 → abc, 20,096 → midi).

    >>> mode_for_vocab(128, None), mode_for_vocab(20096, None)
    ('abc', 'midi')
    """
    if mode is None:
        if vocab_size not in VOCAB_MODES:
            raise RwkvMusicError(
                f"{source}: a vocabulary of {vocab_size} ids matches neither ABC ({ABC_VOCAB}) "
                f"nor MIDI ({MIDI_VOCAB}); pass mode='abc' or 'midi'"
            )
        return VOCAB_MODES[vocab_size]
    if mode not in DEFAULT_PRESETS:
        raise RwkvMusicError(f"unknown mode {mode!r}; use 'abc' or 'midi'")
    if mode == "midi" and vocab_size != MIDI_VOCAB:
        raise RwkvMusicError(
            f"{source}: vocabulary has {vocab_size} ids, a MIDI model needs {MIDI_VOCAB} (vocab/model mismatch)"
        )
    if mode == "abc" and vocab_size < ABC_VOCAB:
        raise RwkvMusicError(
            f"{source}: vocabulary has {vocab_size} ids, an ABC model needs at least {ABC_VOCAB} (vocab/model mismatch)"
        )
    return mode


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RwkvMusicError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MidiOptions:
    """What a MIDI compose call asks for (everything but the prompt, seed and sampling)."""

    seconds: float | None = None  # target length; None = the model decides
    max_tokens: int = 2048  # hard cap on new tokens per piece
    instruments: tuple[str, ...] | None = None  # FORMATS C1 bin names; None = any
    constrained: bool = True  # MidiConstraint on (needed for instruments/seconds/limits)
    limits: tuple[tuple[str, Any], ...] = ()  # more MidiConstraint arguments (LIMIT_NAMES)
    max_prompt_tokens: int = MAX_MIDI_PROMPT

    def __post_init__(self) -> None:
        inst = self.instruments
        if isinstance(inst, str):
            inst = inst.split(",")
        if inst is not None:
            inst = tuple(str(i).strip().lower() for i in inst if str(i).strip()) or None
        limits = self.limits.items() if isinstance(self.limits, Mapping) else self.limits
        limits = tuple(sorted((str(k), v) for k, v in limits if v is not None))
        unknown = [k for k, _ in limits if k not in LIMIT_NAMES]
        if unknown:
            raise RwkvMusicError(f"unknown MIDI limit(s) {', '.join(unknown)}; use {', '.join(LIMIT_NAMES)}")
        object.__setattr__(self, "instruments", inst)
        object.__setattr__(self, "limits", limits)
        _positive_int("max_tokens", self.max_tokens)
        _positive_int("max_prompt_tokens", self.max_prompt_tokens)
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise RwkvMusicError(f"seconds must be a positive number, got {self.seconds!r}")
        if not self.constrained and (inst or self.seconds or limits):
            raise RwkvMusicError("instruments, seconds and limits need the MIDI constraint (drop --no-constraints)")
        if self.constrained:  # validate instrument names and limits now, not mid-generation
            from rwkv_music.compose.helpers import midi_constraint

            midi_constraint(inst, self.seconds, **dict(limits))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["instruments"] = list(self.instruments) if self.instruments else None
        d["limits"] = {k: v for k, v in self.limits}
        return d


@dataclass(frozen=True)
class AbcOptions:
    """What an ABC compose call asks for (everything but the prompt, seed and sampling)."""

    key: str = "D"
    meter: str = "4/4"
    unit: str = "1/8"
    tempo: str | int | None = None  # Q: (beats per minute or "1/4=120"); None = no Q: line
    controls: str = "S:2"  # TunesFormer control codes (FORMATS B)
    constrained: bool = True  # ABC grammar / bar-balance constraint
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        from rwkv_music.compose.helpers import check_controls, check_key, check_meter, check_tempo, check_unit

        object.__setattr__(self, "key", check_key(self.key))
        object.__setattr__(self, "meter", check_meter(self.meter))
        object.__setattr__(self, "unit", check_unit(self.unit))
        if self.tempo is not None:
            object.__setattr__(self, "tempo", check_tempo(self.tempo))
        check_controls(self.controls)
        _positive_int("max_tokens", self.max_tokens)
        if self.constrained:  # the constraint's own value checks, before any model is loaded
            from rwkv_music.compose.helpers import abc_constraint

            abc_constraint(self.meter, self.unit, self.key, self.max_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
