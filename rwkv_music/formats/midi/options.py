"""What a MIDI compose call asks for: :class:`MidiOptions` (frozen, checked on construction)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.base import positive_int

MAX_MIDI_PROMPT = 2048  # continuation reads the last tokens of long files (the MIDI model saw ctx 4096)
LIMIT_NAMES = (
    "pitch_range", "max_polyphony", "max_note_seconds", "drums", "length_tolerance", "end_bias",
    "ranges", "key_notes", "scale_penalty",
)  # fmt: skip
# On unless a call says otherwise (issue 15): instruments stay in their ranges, at most 8 notes sound
# at once, and the constraint releases a note after 4 s instead of leaving it to the decoder's 5-s cut.
MUSICAL_DEFAULTS: dict[str, Any] = {"ranges": True, "max_polyphony": 8, "max_note_seconds": 4.0}


@dataclass(frozen=True)
class MidiOptions:
    """What a MIDI compose call asks for (everything but the prompt, seed and sampling)."""

    seconds: float | None = None  # target length of the new music; None = the model decides
    max_tokens: int = 2048  # hard cap on new tokens per piece
    instruments: tuple[str, ...] | None = None  # docs/formats.md C1 bin names; None = any
    constrained: bool = True  # MidiConstraint on (needed for instruments/seconds/limits/key)
    limits: tuple[tuple[str, Any], ...] = ()  # more MidiConstraint arguments (LIMIT_NAMES), over MUSICAL_DEFAULTS
    max_prompt_tokens: int = MAX_MIDI_PROMPT
    key: str | None = "auto"  # diatonic key for pitched notes: "D", "Am", "auto" (the piece's own) or None

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
        positive_int("max_tokens", self.max_tokens)
        positive_int("max_prompt_tokens", self.max_prompt_tokens)
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise RwkvMusicError(f"seconds must be a positive number, got {self.seconds!r}")
        if not self.constrained and (inst or self.seconds or limits):
            raise RwkvMusicError("instruments, seconds and limits need the MIDI constraint (drop --no-constraints)")
        if self.key is not None and not isinstance(self.key, str):
            raise RwkvMusicError(f"key must be a key name, 'auto' or None, got {self.key!r}")
        if self.constrained:  # instrument names and limits are checked by the constraint itself: now, not mid-run
            self.constraint(self.seconds)

    def constraint(self, target_seconds: float | None) -> Any:
        """A fresh :class:`~rwkv_music.formats.midi.constraint.MidiConstraint` for these options."""
        from rwkv_music.formats.midi.constraint import MidiConstraint

        limits = {**MUSICAL_DEFAULTS, **dict(self.limits)}
        return MidiConstraint(self.instruments, target_seconds=target_seconds, key=self.key, **limits)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["instruments"] = list(self.instruments) if self.instruments else None
        d["limits"] = {k: v for k, v in self.limits}
        return d


__all__ = ["LIMIT_NAMES", "MAX_MIDI_PROMPT", "MUSICAL_DEFAULTS", "MidiOptions"]
