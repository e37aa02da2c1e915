"""The MIDI vocabulary: ids, token strings and the note/wait structure behind them.

Layout (docs/formats.md C1), generated from a :class:`MidiVocabConfig` by rule:

* ids 0, 1, 2: ``<pad>``, ``<start>``, ``<end>``;
* ids 3 .. 3+W-1: wait tokens ``t1`` .. ``tW`` (W = ``wait_events`` = 125; ``tN`` = N steps of
  8 ms);
* then one block per instrument bin of ``note_events`` x ``velocity_bins`` note tokens
  ``PREFIX:NOTE:VEL`` (lowercase hex, no zero padding):
  id = 3 + W + bin*(128*12) + note*12 + velocity_bin;
* ``<extraN>`` words pad the size to a multiple of 128 (none for the default settings: 20,096).

:class:`MidiVocab` is the public helper other modules (sampling constraints, the composer) use to
reason about ids without string handling: :meth:`MidiVocab.note_id`, :meth:`MidiVocab.parse`,
:attr:`MidiVocab.wait_ids`, :attr:`MidiVocab.instrument_bins`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Union

from rwkv_music.errors import TokenizerError
from rwkv_music.formats.midi.config import MidiVocabConfig

PAD_TOKEN, START_TOKEN, END_TOKEN = "<pad>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD_TOKEN, START_TOKEN, END_TOKEN)
PERCUSSION_CHANNEL = 9  # 0-based MIDI channel 10


@dataclass(frozen=True)
class InstrumentBin:
    """One instrument bin: its token prefix and the channel/program it decodes to (docs/formats.md C1)."""

    index: int
    name: str
    prefix: str
    channel: int  # 0-based MIDI channel used when decoding
    program: int  # GM program (0-based) written for that channel
    is_percussion: bool


@dataclass(frozen=True)
class NoteToken:
    """A note event ``prefix:pitch:velocity_bin``; velocity bin 0 means note-off."""

    bin: int
    pitch: int
    velocity_bin: int

    @property
    def is_off(self) -> bool:
        return self.velocity_bin == 0


@dataclass(frozen=True)
class WaitToken:
    """``tN``: advance time by ``steps`` wait steps (8 ms each by default)."""

    steps: int


@dataclass(frozen=True)
class SpecialToken:
    """``<pad>``, ``<start>``, ``<end>`` or an ``<extraN>`` filler."""

    name: str


Token = Union[NoteToken, WaitToken, SpecialToken]


@dataclass(frozen=True)
class MidiLayout:
    """Where each kind of token sits in a MIDI vocabulary: the one place the id arithmetic lives.

    Computed from a :class:`MidiVocabConfig` by the rules of the module docstring, without
    building the token strings, so constraints, composers, runtimes and training can share it.
    :data:`LAYOUT` is the layout of the reference vocabulary (20,096 ids).

    >>> LAYOUT.size, LAYOUT.wait_ids, LAYOUT.note_id(8, 0x4A, 7)
    (20096, range(3, 128), 13311)
    """

    n_waits: int  # wait tokens t1 .. tN
    step_ms: int  # music time of one wait step
    n_pitches: int
    n_velocity_bins: int
    bin_names: tuple[str, ...]
    pad_id: int = 0
    start_id: int = 1
    end_id: int = 2

    @classmethod
    def from_config(cls, config: MidiVocabConfig) -> "MidiLayout":
        return cls(
            config.wait_events,
            config.step_ms,
            config.note_events,
            config.velocity_bins,
            tuple(config.bin_instrument_names),
        )

    @property
    def specials(self) -> tuple[int, int, int]:
        """``<pad>``, ``<start>``, ``<end>`` ids."""
        return (self.pad_id, self.start_id, self.end_id)

    @property
    def first_wait_id(self) -> int:
        return len(SPECIAL_TOKENS)

    @property
    def wait_ids(self) -> range:
        """Ids of ``t1`` .. ``tN`` in order."""
        return range(self.first_wait_id, self.first_note_id)

    @property
    def first_note_id(self) -> int:
        return len(SPECIAL_TOKENS) + self.n_waits

    @property
    def bin_size(self) -> int:
        """Note ids per instrument bin (pitches x velocity bins)."""
        return self.n_pitches * self.n_velocity_bins

    @property
    def n_note_ids(self) -> int:
        return len(self.bin_names) * self.bin_size

    @property
    def size(self) -> int:
        """Vocabulary size: specials, waits and notes, padded to a multiple of 128 (as MIDI-LLM-tokenizer)."""
        used = self.first_note_id + self.n_note_ids
        return used + (-used % 128)

    def note_id(self, bin: int, pitch: int, velocity_bin: int) -> int:
        """Id of a note token (no range checks: callers on hot paths check once)."""
        return self.first_note_id + bin * self.bin_size + pitch * self.n_velocity_bins + velocity_bin

    def wait_id(self, steps: int) -> int:
        """Id of ``t{steps}`` (no range check)."""
        return self.first_wait_id + steps - 1

    def wait_steps(self, ids: Iterable[int]) -> int:
        """Total wait steps among ``ids`` (the music time of a token run, in steps)."""
        first, end = self.first_wait_id, self.first_note_id
        return sum(t - first + 1 for t in ids if first <= t < end)

    def seconds(self, ids: Iterable[int]) -> float:
        """Music time of ``ids`` in seconds: their wait steps times ``step_ms``."""
        return self.wait_steps(ids) * self.step_ms / 1000


LAYOUT = MidiLayout.from_config(MidiVocabConfig())


def _short_prefixes(names: tuple[str, ...]) -> tuple[str, ...]:
    """Shortest prefix of each bin name not taken by an earlier bin (docs/formats.md C1)."""
    prefixes: list[str] = []
    for name in names:
        size = 1
        while name[:size] in prefixes:
            size += 1
        prefixes.append(name[:size])
    return tuple(prefixes)


def _decode_channels(config: MidiVocabConfig) -> tuple[int, ...]:
    """Channels in bin order, skipping channel 9 which only the percussion bin gets (docs/formats.md C1)."""
    free = iter(c for c in range(16) if c != PERCUSSION_CHANNEL)
    return tuple(
        PERCUSSION_CHANNEL if name == config.ch10_instrument_bin_name else next(free)
        for name in config.bin_instrument_names
    )


class MidiVocab:
    """The id <-> token table of a MIDI vocabulary plus structured lookups.

    Immutable after construction. ``MidiVocab()`` is the RWKV-4-MIDI vocabulary
    (``tokenizer-midi.json``).
    """

    pad_id = 0
    start_id = 1
    end_id = 2

    def __init__(self, config: MidiVocabConfig | None = None) -> None:
        self.config = config = config or MidiVocabConfig()
        self.n_velocity_bins = config.velocity_bins
        self.n_pitches = config.note_events
        self.max_wait_steps = config.wait_events
        self.step_ms = config.step_ms
        self.layout = MidiLayout.from_config(config)
        self.first_note_id = self.layout.first_note_id
        self._bin_size = self.layout.bin_size

        prefixes = _short_prefixes(config.bin_instrument_names)
        channels = _decode_channels(config)
        bins = []
        for index, (name, prefix, channel, program_name) in enumerate(
            zip(config.bin_instrument_names, prefixes, channels, config.bin_program_names)
        ):
            percussion = name == config.ch10_instrument_bin_name
            program = 0 if percussion else config.program_names.index(program_name)
            bins.append(InstrumentBin(index, name, prefix, channel, program, percussion))
        self.instrument_bins: tuple[InstrumentBin, ...] = tuple(bins)
        self.percussion_bin: int | None = next((b.index for b in bins if b.is_percussion), None)
        self._bin_by_key = {b.name: b.index for b in bins} | {b.prefix: b.index for b in bins}
        self._program_bin = tuple(
            self._bin_by_key[name] if name else None for name in config.program_bins
        )

        tokens = list(SPECIAL_TOKENS)
        tokens += [f"t{steps}" for steps in range(1, config.wait_events + 1)]
        for b in bins:
            tokens += [
                f"{b.prefix}:{pitch:x}:{vel:x}"
                for pitch in range(config.note_events)
                for vel in range(config.velocity_bins)
            ]
        self.n_note_ids = len(tokens) - self.first_note_id
        # Same rule as MIDI-LLM-tokenizer's build_tokenizer.py: pad to a multiple of 128.
        tokens += [f"<extra{i}>" for i in range(-len(tokens) % 128)]
        self.tokens: tuple[str, ...] = tuple(tokens)
        self._ids = {token: i for i, token in enumerate(tokens)}
        self._velocities = tuple(self._bin_velocity(b) for b in range(config.velocity_bins))

    # -- sizes and id ranges --------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def wait_ids(self) -> range:
        """Ids of ``t1`` .. ``t125`` in order (``wait_ids[n - 1]`` is ``tn``)."""
        return self.layout.wait_ids

    @property
    def note_ids(self) -> range:
        """Ids of every note token (all bins, pitches and velocity bins)."""
        return range(self.first_note_id, self.first_note_id + self.n_note_ids)

    def bin_note_ids(self, bin: int) -> range:
        """Ids of the note tokens of one instrument bin."""
        start = self.first_note_id + self._check_bin(bin) * self._bin_size
        return range(start, start + self._bin_size)

    # -- strings <-> ids ------------------------------------------------------------------

    def token_to_id(self, token: str) -> int:
        """Id of an exact (already lowercase) vocabulary word; TokenizerError if unknown."""
        try:
            return self._ids[token]
        except KeyError:
            raise TokenizerError(f"MIDI token {token!r} is not in the vocabulary") from None

    def get_id(self, token: str) -> int | None:
        """Id of ``token``, or None when it is not a vocabulary word."""
        return self._ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self.tokens[self._check_id(token_id)]

    # -- structure ------------------------------------------------------------------------

    def note_id(self, bin: int | str, pitch: int, velocity_bin: int) -> int:
        """Id of the note token for ``bin`` (index, name or prefix), ``pitch`` and ``velocity_bin``."""
        b = self.bin_index(bin)
        if not 0 <= pitch < self.n_pitches:
            raise TokenizerError(f"MIDI note pitch {pitch} outside 0..{self.n_pitches - 1}")
        if not 0 <= velocity_bin < self.n_velocity_bins:
            raise TokenizerError(f"velocity bin {velocity_bin} outside 0..{self.n_velocity_bins - 1}")
        return self.layout.note_id(b, pitch, velocity_bin)

    def wait_id(self, steps: int) -> int:
        """Id of ``t{steps}`` (1 <= steps <= 125)."""
        if not 1 <= steps <= self.max_wait_steps:
            raise TokenizerError(f"wait of {steps} steps outside 1..{self.max_wait_steps}")
        return self.layout.wait_id(steps)

    def parse(self, token_id: int) -> Token:
        """Structured view of an id: :class:`NoteToken`, :class:`WaitToken` or :class:`SpecialToken`."""
        i = self._check_id(token_id)
        if i >= self.first_note_id + self.n_note_ids or i < len(SPECIAL_TOKENS):
            return SpecialToken(self.tokens[i])
        if i < self.first_note_id:
            return WaitToken(i - len(SPECIAL_TOKENS) + 1)
        b, rest = divmod(i - self.first_note_id, self._bin_size)
        pitch, vel = divmod(rest, self.n_velocity_bins)
        return NoteToken(b, pitch, vel)

    def parse_token(self, token: str) -> Token:
        """Structured view of a token string (lowercased first): ``parse_token("PI:3C:A")``."""
        return self.parse(self.token_to_id(token.lower()))

    def is_note(self, token_id: int) -> bool:
        return token_id in self.note_ids

    def is_wait(self, token_id: int) -> bool:
        return token_id in self.wait_ids

    def note_token(self, bin: int | str, pitch: int, velocity_bin: int) -> str:
        """Token string of a note, e.g. ``note_token("piano", 74, 7) == "pi:4a:7"``."""
        return self.tokens[self.note_id(bin, pitch, velocity_bin)]

    def bin_index(self, bin: int | str) -> int:
        """Bin index from an index, a bin name (``"piano"``) or a prefix (``"pi"``)."""
        if isinstance(bin, str):
            try:
                return self._bin_by_key[bin]
            except KeyError:
                raise TokenizerError(f"unknown instrument bin {bin!r}") from None
        return self._check_bin(bin)

    def bin_for_program(self, program: int, channel: int = 0) -> int | None:
        """Bin of a GM ``program`` played on 0-based ``channel``; None if dropped (docs/formats.md C3)."""
        if channel == PERCUSSION_CHANNEL:
            return self.percussion_bin
        return self._program_bin[program]

    # -- velocity bins (docs/formats.md C1) ---------------------------------------------------------

    def velocity_to_bin(self, velocity: float) -> int:
        """Velocity bin of a (possibly fractional) velocity; only 0 maps to bin 0."""
        cfg = self.config
        v = max(0, min(velocity, cfg.velocity_events - 1))
        binsize = cfg.velocity_events / (cfg.velocity_bins - 1)
        if cfg.velocity_exp == 1.0:
            return math.ceil(v / binsize)
        x, e = cfg.velocity_exp, cfg.velocity_events
        # Same float expression as the reference so ties fall on the same side.
        return math.ceil((e * ((x ** (v / e) - 1.0) / (x - 1.0))) / binsize)

    def bin_to_velocity(self, velocity_bin: int) -> int:
        """Velocity written for a bin: the top of its range (bin 0 -> 0, 11 -> 127)."""
        if not 0 <= velocity_bin < self.n_velocity_bins:
            raise TokenizerError(f"velocity bin {velocity_bin} outside 0..{self.n_velocity_bins - 1}")
        return self._velocities[velocity_bin]

    def _bin_velocity(self, velocity_bin: int) -> int:
        cfg = self.config
        binsize = cfg.velocity_events / (cfg.velocity_bins - 1)
        if cfg.velocity_exp == 1.0:
            return max(0, math.ceil(velocity_bin * binsize - 1))
        x, e = cfg.velocity_exp, cfg.velocity_events
        arg = ((x - 1) * binsize * velocity_bin) / e + 1
        if arg <= 0:  # only reachable with exotic settings; clamp like an overflowing bin
            return e - 1
        return min(e - 1, max(0, math.ceil(e * math.log(arg, x) - 1)))

    # -- checks ---------------------------------------------------------------------------

    def _check_id(self, token_id: int) -> int:
        i = int(token_id)
        if not 0 <= i < len(self.tokens):
            raise TokenizerError(f"MIDI token id {token_id} outside 0..{len(self.tokens) - 1}")
        return i

    def _check_bin(self, bin: int) -> int:
        if not 0 <= bin < len(self.instrument_bins):
            raise TokenizerError(f"instrument bin {bin} outside 0..{len(self.instrument_bins) - 1}")
        return bin

    def __repr__(self) -> str:
        return f"MidiVocab(size={self.size}, bins={[b.prefix for b in self.instrument_bins]})"


__all__ = [
    "END_TOKEN",
    "InstrumentBin",
    "LAYOUT",
    "MidiLayout",
    "MidiVocab",
    "NoteToken",
    "PAD_TOKEN",
    "PERCUSSION_CHANNEL",
    "SPECIAL_TOKENS",
    "START_TOKEN",
    "SpecialToken",
    "Token",
    "WaitToken",
]
