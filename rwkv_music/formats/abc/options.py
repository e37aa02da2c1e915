"""What an ABC compose call asks for: :class:`AbcOptions` (frozen, checked on construction)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rwkv_music.errors import OptionError, RwkvMusicError
from rwkv_music.formats.abc.header import check_controls, check_key, check_meter, check_tempo, check_unit
from rwkv_music.formats.midi.options import MAX_NEW_TOKENS, bounded_int


@dataclass(frozen=True)
class AbcOptions:
    """What an ABC compose call asks for (everything but the prompt, seed and sampling).

    The header values are checked by :mod:`rwkv_music.formats.abc.header`, the rules the ABC
    constraint honours, so a bad value fails here, before any model is loaded.
    """

    key: str = "D"
    meter: str = "4/4"
    unit: str = "1/8"
    tempo: str | int | None = None  # Q: (beats per minute or "1/4=120"); None = no Q: line
    controls: str = "S:2"  # TunesFormer control codes (docs/formats.md B)
    constrained: bool = True  # ABC grammar / bar-balance constraint
    max_tokens: int = 1024
    # Tune form (issue 15), used by the constraint for fresh tunes: ``parts`` parts of
    # ``bars_per_part`` bars (None: the prompt's S:/B: control codes, else 2 and 8), section
    # barlines only at part ends, a line per 4 bars, and the last note on the tonic (``cadence``).
    form: bool = True
    parts: int | None = None
    bars_per_part: int | None = None
    cadence: bool = True
    # Under the constraint, no bar written more than this many times in a row (0: no limit; human tunes
    # rarely write one three times running; rwkv_music.formats.abc.variety).
    max_bar_repeats: int = 2
    # Under the form, after three bars whose notes all have one written length the next note takes
    # another (human tunes almost never keep one length throughout; rwkv_music.formats.abc.variety).
    vary_rhythm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", check_key(self.key))
        object.__setattr__(self, "meter", check_meter(self.meter))
        object.__setattr__(self, "unit", check_unit(self.unit))
        if self.tempo is not None:
            object.__setattr__(self, "tempo", check_tempo(self.tempo))
        check_controls(self.controls)
        bounded_int("max_tokens", self.max_tokens, MAX_NEW_TOKENS)
        for name in ("parts", "bars_per_part"):
            if getattr(self, name) is not None:
                bounded_int(name, getattr(self, name), 1024)
        for name in ("constrained", "form", "cadence", "vary_rhythm"):  # (a .jsonl render row may hold anything)
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be true or false, got {getattr(self, name)!r}")
        limit = self.max_bar_repeats
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 1024:
            raise OptionError(f"max_bar_repeats must be an integer in 0..1024 (0 = no limit), got {limit!r}")
        if (self.parts is not None or self.bars_per_part is not None) and not self.form:
            raise RwkvMusicError("parts and bars_per_part shape the tune form: drop form=False (--free-form)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["AbcOptions"]
