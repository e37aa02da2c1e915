"""What a MIDI compose call asks for: :class:`MidiOptions` (frozen, checked on construction)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rwkv_music.errors import OptionError, RwkvMusicError
from rwkv_music.formats.base import positive_int
from rwkv_music.formats.midi.config import GM_PROGRAMS, MidiVocabConfig

MAX_MIDI_PROMPT = 2048  # continuation reads the last tokens of long files (the MIDI model saw ctx 4096)
# Bounds on counts a caller gives (one-line errors instead of an OverflowError or a run that never ends):
# a piece of 4 hours (the MIDI reader's limit too) and 2^20 new tokens are far beyond what the models write.
MAX_SECONDS = 4 * 3600.0
MAX_NEW_TOKENS = 1 << 20
LIMIT_NAMES = (
    "pitch_range", "max_polyphony", "max_note_seconds", "drums", "length_tolerance", "end_bias",
    "ranges", "key_notes", "scale_penalty",
)  # fmt: skip
# On unless a call says otherwise (issue 15): instruments stay in their ranges, at most 8 notes sound
# at once, and the constraint releases a note after 4 s instead of leaving it to the decoder's 5-s cut.
MUSICAL_DEFAULTS: dict[str, Any] = {"ranges": True, "max_polyphony": 8, "max_note_seconds": 4.0}


def bounded_int(name: str, value: Any, limit: int) -> int:
    """``value`` as an int in 1..``limit``, or a one-line error naming ``name``."""
    value = positive_int(name, value)
    if value > limit:
        raise OptionError(f"{name} must be at most {limit}, got {value}")
    return value


def _plain(name: str) -> str:
    """Lower case, one space between words, no brackets: 'Acoustic_Guitar-(nylon)' -> 'acoustic guitar nylon'."""
    return " ".join(w for w in re.split(r"[\s_()-]+", name.lower()) if w)


@functools.lru_cache(maxsize=1)
def _instrument_names() -> tuple[tuple[str, ...], dict[str, str | int]]:
    """(bin names, {accepted name: bin name, or the GM program number when it has no bin})."""
    bins = MidiVocabConfig().bin_instrument_names
    names: dict[str, str | int] = {}
    for program, (gm_name, bin_name) in enumerate(GM_PROGRAMS):
        short = gm_name.split(" (")[0]  # "Electric Piano 1 (Rhodes Piano)" is also "electric piano 1"
        for alias in (gm_name, short):
            names.setdefault(_plain(alias), bin_name or program)
    names.update({b: b for b in bins})  # a bin's own name wins ("violin", "bass", "drum")
    return bins, names


def instrument_bins(items: Sequence[str | int] | str) -> tuple[str, ...]:
    """The reference vocabulary's bins for instruments given as bin names, General MIDI program names
    (case, spaces and hyphens free: "acoustic grand piano", "Cello") or GM program numbers 0-127
    (docs/formats.md C3 maps each program to a bin).  Duplicates are dropped, order kept.

    >>> instrument_bins("piano, Violin,cello,40,acoustic-guitar-nylon")
    ('piano', 'violin', 'bass', 'guitar')
    """
    if isinstance(items, str):
        items = items.split(",")
    bins, names = _instrument_names()
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            raise RwkvMusicError(f"instruments: {item!r} is not an instrument")
        text = _plain(str(item))
        if not text:
            continue
        if isinstance(item, int) or text.isdigit():
            number = int(text)
            if not 0 <= number < len(GM_PROGRAMS):
                raise RwkvMusicError(f"instruments: General MIDI program numbers are 0-127, got {number}")
            found: str | int = GM_PROGRAMS[number][1] or number
        else:
            found = names.get(text, "")
        if isinstance(found, int):
            raise RwkvMusicError(
                f"instruments: {item!r} (General MIDI program {found}, {GM_PROGRAMS[found][0]}) has no bin in the "
                f"MIDI vocabulary (its notes are dropped); use one of {', '.join(bins)} or a GM instrument in them"
            )
        if not found:
            hint = difflib.get_close_matches(text, list(names), n=3)
            guess = f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""
            raise RwkvMusicError(
                f"instruments: unknown instrument {item!r}{guess}; use one of {', '.join(bins)}, or a General MIDI "
                "program name or number 0-127 (e.g. 'acoustic grand piano', 'cello', 40)"
            )
        if found not in out:
            out.append(found)
    return tuple(out)


@dataclass(frozen=True)
class MidiOptions:
    """What a MIDI compose call asks for (everything but the prompt, seed and sampling)."""

    seconds: float | None = None  # target length of the new music; None = the model decides
    max_tokens: int = 2048  # hard cap on new tokens per piece
    instruments: tuple[str, ...] | None = None  # bin names (C1), GM names or numbers given map to bins; None = any
    constrained: bool = True  # MidiConstraint on (needed for instruments/seconds/limits/key)
    limits: tuple[tuple[str, Any], ...] = ()  # more MidiConstraint arguments (LIMIT_NAMES), over MUSICAL_DEFAULTS
    max_prompt_tokens: int = MAX_MIDI_PROMPT
    key: str | None = "auto"  # diatonic key for pitched notes: "D", "Am", "auto" (the piece's own) or None

    def __post_init__(self) -> None:
        inst = self.instruments
        if inst is not None:
            inst = instrument_bins(inst) or None
        limits = self.limits.items() if isinstance(self.limits, Mapping) else self.limits
        limits = tuple(sorted((str(k), v) for k, v in limits if v is not None))
        unknown = [k for k, _ in limits if k not in LIMIT_NAMES]
        if unknown:
            raise RwkvMusicError(f"unknown MIDI limit(s) {', '.join(unknown)}; use {', '.join(LIMIT_NAMES)}")
        object.__setattr__(self, "instruments", inst)
        object.__setattr__(self, "limits", limits)
        bounded_int("max_tokens", self.max_tokens, MAX_NEW_TOKENS)
        bounded_int("max_prompt_tokens", self.max_prompt_tokens, MAX_NEW_TOKENS)
        seconds = self.seconds
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS
        ):  # (NaN fails the range test too)
            raise OptionError(f"seconds must be a number in (0, {MAX_SECONDS:g}], got {seconds!r}")
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


__all__ = [
    "LIMIT_NAMES", "MAX_MIDI_PROMPT", "MAX_NEW_TOKENS", "MAX_SECONDS", "MUSICAL_DEFAULTS", "MidiOptions", "bounded_int",
    "instrument_bins",
]
