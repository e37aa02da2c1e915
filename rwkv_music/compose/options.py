"""Options of a compose call: the format's options, the sampling options, and seeds.

:class:`AbcOptions` and :class:`MidiOptions` live with their formats
(:mod:`rwkv_music.formats.abc.options`, :mod:`rwkv_music.formats.midi.options`) and are
re-exported here; :class:`SamplingOptions` is the preset plus overrides a call samples with.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.options import AbcOptions
from rwkv_music.formats.base import VOCAB_MODES, mode_for_vocab
from rwkv_music.formats.midi.options import LIMIT_NAMES, MAX_MIDI_PROMPT, MidiOptions

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


@dataclass(frozen=True)
class SamplingOptions:
    """A sampling preset (``None``: the format's default) and overrides of its fields.

    Overrides of ``None`` mean "not given" and are dropped; names and values are checked when
    the options are made, so a typo fails before any model is loaded.

    A piece's length is the compose options' ``max_tokens``, so ``max_new_tokens`` is refused here
    rather than ignored (the ``compose_*`` calls take it as an alias of ``max_tokens``).

    >>> SamplingOptions("chatrwkv-abc", {"temperature": 0.7, "top_p": None}).overrides
    (('temperature', 0.7),)
    """

    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from rwkv_music.sampling.config import SamplingConfig

        items = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        object.__setattr__(self, "overrides", tuple(sorted((str(k), v) for k, v in items if v is not None)))
        if any(k == "max_new_tokens" for k, _ in self.overrides):
            raise RwkvMusicError(
                "max_new_tokens is not a sampling option here: a piece's length is the compose option max_tokens"
            )
        # names and values (the mode check waits for config(), which knows the model)
        SamplingConfig.from_options(self.preset or "default-midi", dict(self.overrides))

    def merged(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> "SamplingOptions":
        """These options with ``preset`` (when given) and ``overrides`` on top."""
        return SamplingOptions(preset or self.preset, {**dict(self.overrides), **dict(overrides or {})})

    def to_dict(self) -> dict[str, Any]:
        """``{"preset": ..., **overrides}`` with what was given (the render settings' ``sampling``)."""
        return ({"preset": self.preset} if self.preset else {}) | dict(self.overrides)

    def config(self, default_preset: str) -> Any:
        """The :class:`~rwkv_music.sampling.config.SamplingConfig` (``default_preset`` when none is named).

        A named preset written for another mode than ``default_preset``'s (``chatrwkv-abc`` for a MIDI
        model) is a one-line :class:`~rwkv_music.sampling.base.SamplingValueError`.
        """
        from rwkv_music.sampling.config import SamplingConfig
        from rwkv_music.sampling.presets import PRESET_MODES, check_preset_mode

        if self.preset is not None and default_preset in PRESET_MODES:
            check_preset_mode(self.preset, PRESET_MODES[default_preset])
        return SamplingConfig.from_options(self.preset or default_preset, dict(self.overrides))


__all__ = [
    "AbcOptions",
    "LIMIT_NAMES",
    "MAX_MIDI_PROMPT",
    "MidiOptions",
    "ProgressCallback",
    "SamplingOptions",
    "VOCAB_MODES",
    "mode_for_vocab",
    "new_base_seed",
    "piece_seed",
]
