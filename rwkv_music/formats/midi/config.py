"""Settings that generate the MIDI vocabulary and steer MIDI <-> text conversion.

The RWKV-4-MIDI vocabulary (``tokenizer-midi.json``, 20,096 words) is not a hand-made list: it
follows from MIDI-LLM-tokenizer's ``vocab_config.json`` by fixed rules (docs/formats.md C1).  This
module holds those settings as a frozen dataclass whose defaults *are* that file, so the package
needs no data file at run time; :meth:`MidiVocabConfig.from_json` reads any file of the same
shape and :meth:`MidiVocabConfig.to_dict` writes it back (the tests compare both ways with the
reference copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rwkv_music.errors import TokenizerError

# General MIDI programs 0-127 (0-based) with the instrument bin each one falls into;
# "" = dropped (docs/formats.md C3, table "GM programs").  Names exactly as in vocab_config.json.
GM_PROGRAMS: tuple[tuple[str, str], ...] = (
    ('Acoustic Grand Piano', 'piano'),  # 0
    ('Bright Acoustic Piano', 'piano'),  # 1
    ('Electric Grand Piano', 'piano'),  # 2
    ('Honky-tonk Piano', 'piano'),  # 3
    ('Electric Piano 1 (Rhodes Piano)', 'piano'),  # 4
    ('Electric Piano 2 (Chorused Piano)', 'piano'),  # 5
    ('Harpsichord', 'piano'),  # 6
    ('Clavinet', 'piano'),  # 7
    ('Celesta', 'marimba'),  # 8
    ('Glockenspiel', 'marimba'),  # 9
    ('Music Box', 'marimba'),  # 10
    ('Vibraphone', 'marimba'),  # 11
    ('Marimba', 'marimba'),  # 12
    ('Xylophone', 'marimba'),  # 13
    ('Tubular Bells', 'marimba'),  # 14
    ('Dulcimer (Santur)', 'marimba'),  # 15
    ('Drawbar Organ (Hammond)', 'marimba'),  # 16
    ('Percussive Organ', 'piano'),  # 17
    ('Rock Organ', 'piano'),  # 18
    ('Church Organ', 'piano'),  # 19
    ('Reed Organ', 'piano'),  # 20
    ('Accordion (French)', 'piano'),  # 21
    ('Harmonica', 'piano'),  # 22
    ('Tango Accordion (Band neon)', 'piano'),  # 23
    ('Acoustic Guitar (nylon)', 'guitar'),  # 24
    ('Acoustic Guitar (steel)', 'guitar'),  # 25
    ('Electric Guitar (jazz)', 'guitar'),  # 26
    ('Electric Guitar (clean)', 'guitar'),  # 27
    ('Electric Guitar (muted)', 'guitar'),  # 28
    ('Overdriven Guitar', 'guitar'),  # 29
    ('Distortion Guitar', 'guitar'),  # 30
    ('Guitar harmonics', 'guitar'),  # 31
    ('Acoustic Bass', 'bass'),  # 32
    ('Electric Bass (fingered)', 'bass'),  # 33
    ('Electric Bass (picked)', 'bass'),  # 34
    ('Fretless Bass', 'bass'),  # 35
    ('Slap Bass 1', 'bass'),  # 36
    ('Slap Bass 2', 'bass'),  # 37
    ('Synth Bass 1', 'bass'),  # 38
    ('Synth Bass 2', 'bass'),  # 39
    ('Violin', 'violin'),  # 40
    ('Viola', 'violin'),  # 41
    ('Cello', 'bass'),  # 42
    ('Contrabass', 'bass'),  # 43
    ('Tremolo Strings', 'violin'),  # 44
    ('Pizzicato Strings', 'violin'),  # 45
    ('Orchestral Harp', 'violin'),  # 46
    ('Timpani', 'drum'),  # 47
    ('String Ensemble 1 (strings)', 'violin'),  # 48
    ('String Ensemble 2 (slow strings)', 'violin'),  # 49
    ('SynthStrings 1', 'violin'),  # 50
    ('SynthStrings 2', 'violin'),  # 51
    ('Choir Aahs', 'violin'),  # 52
    ('Voice Oohs', 'violin'),  # 53
    ('Synth Voice', 'violin'),  # 54
    ('Orchestra Hit', ''),  # 55
    ('Trumpet', 'trumpet'),  # 56
    ('Trombone', 'tuba'),  # 57
    ('Tuba', 'tuba'),  # 58
    ('Muted Trumpet', 'trumpet'),  # 59
    ('French Horn', 'trumpet'),  # 60
    ('Brass Section', 'trumpet'),  # 61
    ('SynthBrass 1', 'trumpet'),  # 62
    ('SynthBrass 2', 'trumpet'),  # 63
    ('Soprano Sax', 'sax'),  # 64
    ('Alto Sax', 'sax'),  # 65
    ('Tenor Sax', 'sax'),  # 66
    ('Baritone Sax', 'sax'),  # 67
    ('Oboe', 'sax'),  # 68
    ('English Horn', 'trumpet'),  # 69
    ('Bassoon', 'sax'),  # 70
    ('Clarinet', 'sax'),  # 71
    ('Piccolo', 'flute'),  # 72
    ('Flute', 'flute'),  # 73
    ('Recorder', 'flute'),  # 74
    ('Pan Flute', 'flute'),  # 75
    ('Blown Bottle', 'flute'),  # 76
    ('Shakuhachi', 'flute'),  # 77
    ('Whistle', 'flute'),  # 78
    ('Ocarina', 'flute'),  # 79
    ('Lead 1 (square wave)', 'lead'),  # 80
    ('Lead 2 (sawtooth wave)', 'lead'),  # 81
    ('Lead 3 (calliope)', 'lead'),  # 82
    ('Lead 4 (chiffer)', 'lead'),  # 83
    ('Lead 5 (charang)', 'lead'),  # 84
    ('Lead 6 (voice solo)', 'violin'),  # 85
    ('Lead 7 (fifths)', 'lead'),  # 86
    ('Lead 8 (bass + lead)', 'lead'),  # 87
    ('Pad 1 (new age Fantasia)', 'pad'),  # 88
    ('Pad 2 (warm)', 'pad'),  # 89
    ('Pad 3 (polysynth)', 'pad'),  # 90
    ('Pad 4 (choir space voice)', 'violin'),  # 91
    ('Pad 5 (bowed glass)', 'pad'),  # 92
    ('Pad 6 (metallic pro)', 'pad'),  # 93
    ('Pad 7 (halo)', 'pad'),  # 94
    ('Pad 8 (sweep)', 'pad'),  # 95
    ('FX 1 (rain)', ''),  # 96
    ('FX 2 (soundtrack)', ''),  # 97
    ('FX 3 (crystal)', ''),  # 98
    ('FX 4 (atmosphere)', ''),  # 99
    ('FX 5 (brightness)', ''),  # 100
    ('FX 6 (goblins)', ''),  # 101
    ('FX 7 (echoes, drops)', ''),  # 102
    ('FX 8 (sci-fi, star theme)', ''),  # 103
    ('Sitar', 'guitar'),  # 104
    ('Banjo', 'guitar'),  # 105
    ('Shamisen', 'guitar'),  # 106
    ('Koto', 'guitar'),  # 107
    ('Kalimba', 'guitar'),  # 108
    ('Bag pipe', 'sax'),  # 109
    ('Fiddle', 'violin'),  # 110
    ('Shanai', 'sax'),  # 111
    ('Tinkle Bell', 'marimba'),  # 112
    ('Agogo', 'marimba'),  # 113
    ('Steel Drums', 'marimba'),  # 114
    ('Woodblock', 'marimba'),  # 115
    ('Taiko Drum', 'drum'),  # 116
    ('Melodic Tom', 'drum'),  # 117
    ('Synth Drum', 'drum'),  # 118
    ('Reverse Cymbal', ''),  # 119
    ('Guitar Fret Noise', ''),  # 120
    ('Breath Noise', ''),  # 121
    ('Seashore', ''),  # 122
    ('Bird Tweet', ''),  # 123
    ('Telephone Ring', ''),  # 124
    ('Helicopter', ''),  # 125
    ('Applause', ''),  # 126
    ('Gunshot', ''),  # 127
)

GM_PROGRAM_NAMES: tuple[str, ...] = tuple(name for name, _ in GM_PROGRAMS)

_DEFAULT_BINS = (
    "percussion", "drum", "tuba", "marimba", "bass", "guitar", "violin",
    "trumpet", "piano", "sax", "flute", "lead", "pad",
)  # fmt: skip
# GM program written for each bin when decoding (docs/formats.md C1 table); "" = percussion kit.
_DEFAULT_BIN_PROGRAMS = (
    "", "Synth Drum", "Tuba", "Marimba", "Acoustic Bass", "Acoustic Guitar (steel)", "Violin",
    "Trumpet", "Acoustic Grand Piano", "Tenor Sax", "Flute", "Lead 1 (square wave)",
    "Pad 1 (new age Fantasia)",
)  # fmt: skip

MAX_BINS = 16  # one MIDI channel per bin when decoding


@dataclass(frozen=True)
class MidiVocabConfig:
    """The ``vocab_config.json`` settings of MIDI-LLM-tokenizer (docs/formats.md C1, C3, C4).

    Field names follow the JSON keys, except the three mappings, which are stored as tuples:
    ``program_bins[p]`` is the bin name of GM program ``p`` ("" = dropped),
    ``bin_program_names[b]`` the GM program name written for bin ``b`` on decoding ("" for the
    percussion bin) and ``program_names`` the 128 GM names used in the JSON keys.
    """

    note_events: int = 128
    wait_events: int = 125
    max_wait_time: int = 1000  # ms covered by the longest wait token
    velocity_events: int = 128
    velocity_bins: int = 12
    velocity_exp: float = 0.5
    do_token_sorting: bool = True
    unrolled_tokens: bool = False
    decode_end_held_note_delay: float = 5.0  # seconds; 0 disables the held-note release
    decode_fix_repeated_notes: bool = True
    bin_instrument_names: tuple[str, ...] = _DEFAULT_BINS
    ch10_instrument_bin_name: str = "percussion"
    program_bins: tuple[str, ...] = tuple(bin_name for _, bin_name in GM_PROGRAMS)
    bin_program_names: tuple[str, ...] = _DEFAULT_BIN_PROGRAMS
    program_names: tuple[str, ...] = GM_PROGRAM_NAMES

    def __post_init__(self) -> None:
        bins = self.bin_instrument_names
        _require(0 < self.note_events <= 128, "note_events", self.note_events, "1..128")
        _require(self.wait_events > 0, "wait_events", self.wait_events, "> 0")
        _require(
            self.max_wait_time > 0 and self.max_wait_time % self.wait_events == 0,
            "max_wait_time", self.max_wait_time, "a positive multiple of wait_events",
        )  # fmt: skip
        _require(self.velocity_events > 1, "velocity_events", self.velocity_events, "> 1")
        _require(self.velocity_bins >= 2, "velocity_bins", self.velocity_bins, ">= 2")
        _require(self.velocity_exp > 0, "velocity_exp", self.velocity_exp, "> 0")
        _require(not self.unrolled_tokens, "unrolled_tokens", True, "false (unrolled not supported)")
        _require(self.decode_end_held_note_delay >= 0, "decode_end_held_note_delay",
                 self.decode_end_held_note_delay, ">= 0")  # fmt: skip
        _require(0 < len(bins) <= MAX_BINS, "bin_instrument_names", len(bins), f"1..{MAX_BINS} names")
        _require(len(set(bins)) == len(bins) and all(bins), "bin_instrument_names", bins,
                 "distinct non-empty names")  # fmt: skip
        _require(self.ch10_instrument_bin_name in ("", *bins), "ch10_instrument_bin_name",
                 self.ch10_instrument_bin_name, "one of bin_instrument_names or ''")  # fmt: skip
        _require(len(self.program_names) == 128, "program_names", len(self.program_names), "128 names")
        _require(len(self.program_bins) == 128, "program_bins", len(self.program_bins), "128 entries")
        unknown = sorted({b for b in self.program_bins if b and b not in bins})
        _require(not unknown, "program_name_to_bin_name", unknown, "bin names from bin_instrument_names")
        _require(len(self.bin_program_names) == len(bins), "bin_name_to_program_name",
                 len(self.bin_program_names), "one program per bin")  # fmt: skip
        for bin_name, program in zip(bins, self.bin_program_names):
            if bin_name != self.ch10_instrument_bin_name:
                _require(program in self.program_names, "bin_name_to_program_name",
                         f"{bin_name}: {program!r}", "a GM program name")  # fmt: skip

    @property
    def step_ms(self) -> int:
        """Milliseconds of one wait step (8 ms for the RWKV-4-MIDI vocabulary)."""
        return self.max_wait_time // self.wait_events

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MidiVocabConfig:
        """Build from the ``vocab_config.json`` layout (the inverse of :meth:`to_dict`)."""
        data = dict(data)
        if data.pop("velocity_bins_override", None) is not None:
            raise TokenizerError("vocab config: velocity_bins_override is not supported")
        try:
            names_by_index = data.pop("instrument_names")
            program_names = tuple(names_by_index[str(i)] for i in range(128))
            by_name = data.pop("program_name_to_bin_name")
            program_bins = tuple(by_name[name] for name in program_names)
            bin_names = tuple(data.pop("bin_instrument_names"))
            bin_to_program = data.pop("bin_name_to_program_name")
            bin_program_names = tuple(bin_to_program[name] for name in bin_names)
        except KeyError as exc:
            raise TokenizerError(f"vocab config: missing entry {exc}") from None
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise TokenizerError(f"vocab config: unknown key {extra[0]!r}")
        return cls(
            **data,
            bin_instrument_names=bin_names,
            program_bins=program_bins,
            bin_program_names=bin_program_names,
            program_names=program_names,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> MidiVocabConfig:
        """Read a MIDI-LLM-tokenizer ``vocab_config.json``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"{path}: cannot read vocab config ({exc})") from None
        if not isinstance(data, dict):
            raise TokenizerError(f"{path}: vocab config must be a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The ``vocab_config.json`` layout (equal to MIDI-LLM-tokenizer's file for the defaults)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("program_bins", "bin_program_names", "program_names")
        }
        out["bin_instrument_names"] = list(self.bin_instrument_names)
        out["program_name_to_bin_name"] = dict(zip(self.program_names, self.program_bins))
        out["bin_name_to_program_name"] = dict(zip(self.bin_instrument_names, self.bin_program_names))
        out["instrument_names"] = {str(i): name for i, name in enumerate(self.program_names)}
        return out


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise TokenizerError(f"vocab config: {key} = {value!r}, expected {expected}")


__all__ = ["GM_PROGRAMS", "GM_PROGRAM_NAMES", "MAX_BINS", "MidiVocabConfig"]
