"""Reading MIDI files safely and turning them into timed note events (docs/formats.md C3).

Two layers:

* :func:`load_midi` checks the chunk structure itself (a ladder of small functions with size
  limits) before letting mido parse each track, so a file that is not MIDI, is empty or
  truncated, or declares absurd chunk lengths fails with one :class:`MidiFormatError` naming the
  file, never with a traceback from inside mido.
* :func:`read_note_events` walks the merged message stream with MLT's per-channel state
  (programs, volume, expression, sustain pedal, held notes) and yields one :class:`NoteEvent` per
  token-producing event, carrying both the exact absolute time and the reference converter's
  float delta, so either timing mode can be applied afterwards.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Union

import mido

from rwkv_music.errors import MidiFormatError
from rwkv_music.formats.midi.vocab import MidiVocab

MidiSource = Union[str, Path, bytes, mido.MidiFile]

MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any real MIDI file (a few hundred KB); guards against junk
# mido builds a Python object (~200 bytes) per message, so events are counted from the bytes before
# mido sees a track: 7.8 M notes would otherwise take gigabytes.  The music time is bounded while
# the events are read, since every second becomes wait tokens (docs/formats.md C3).
MAX_EVENTS = 2_000_000
MAX_NOTES = 500_000
MAX_DURATION_S = 4 * 3600
DEFAULT_TEMPO = 500_000  # microseconds per beat until the first set_tempo
CHUNK_HEADER = struct.Struct(">4sL")
FILE_HEADER = struct.Struct(">HHH")  # format, number of tracks, division


@dataclass(frozen=True)
class NoteEvent:
    """One token-producing event: a note-on (``velocity_bin`` > 0) or a note-off (bin 0).

    ``time_ms`` is the exact absolute time (through every tempo change); ``reference_delta_ms``
    is the float that MLT accumulated since the previous token-producing event.
    """

    time_ms: Fraction
    reference_delta_ms: float
    bin: int
    pitch: int
    velocity_bin: int


# -- file loading ------------------------------------------------------------------------------


def load_midi(source: MidiSource) -> mido.MidiFile:
    """Open a MIDI file (path, raw bytes or an already loaded ``mido.MidiFile``).

    Raises :class:`MidiFormatError` naming the file for anything unreadable.
    """
    if isinstance(source, mido.MidiFile):
        _check_loaded(source, _name(source))
        return source
    if isinstance(source, (bytes, bytearray)):
        name, data = "<bytes>", bytes(source)
    else:
        name, data = str(source), _read_file(Path(source))
    return _parse(data, name)


def _name(mid: mido.MidiFile) -> str:
    return str(mid.filename) if getattr(mid, "filename", None) else "<MidiFile>"


def _check_loaded(mid: mido.MidiFile, name: str) -> None:
    """A file built in memory can hold what no MIDI file can: fractional or negative delta times."""
    _check_division(mid.ticks_per_beat, name)
    for index, track in enumerate(mid.tracks):
        for msg in track:
            if not isinstance(msg.time, int) or msg.time < 0:
                raise MidiFormatError(f"{name}: track {index} has delta time {msg.time!r}, expected ticks >= 0")


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise MidiFormatError(f"{path}: {size} bytes is too large for a MIDI file")
        return path.read_bytes()
    except OSError as exc:
        raise MidiFormatError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _parse(data: bytes, name: str) -> mido.MidiFile:
    if not data:
        raise MidiFormatError(f"{name}: empty file, not a MIDI file")
    midi_format, division, tracks = _split_chunks(data, name)
    mid = mido.MidiFile(type=midi_format, ticks_per_beat=division)
    events = notes = 0
    for index, chunk in enumerate(tracks):
        n_events, n_notes = count_events(chunk, MAX_EVENTS - events)
        events, notes = events + n_events, notes + n_notes
        if events > MAX_EVENTS or notes > MAX_NOTES:
            what = f"{notes} notes" if notes > MAX_NOTES else f"{events} events"
            limit = MAX_NOTES if notes > MAX_NOTES else MAX_EVENTS
            raise MidiFormatError(f"{name}: more than {limit} {what.split()[1]} (at least {what} by track {index}); "
                                  "too large to read")
        mid.tracks.append(_parse_track(chunk, division, name, index))
    mid.filename = name
    return mid


def _split_chunks(data: bytes, name: str) -> tuple[int, int, list[bytes]]:
    """Check the RIFF-style chunk structure; return format, division and the raw MTrk chunks."""
    if data[:4] != b"MThd":
        raise MidiFormatError(f"{name}: not a MIDI file (no MThd header; starts with {data[:4]!r})")
    if len(data) < CHUNK_HEADER.size + FILE_HEADER.size:
        raise MidiFormatError(f"{name}: truncated MIDI header ({len(data)} bytes)")
    _, header_len = CHUNK_HEADER.unpack_from(data, 0)
    if not FILE_HEADER.size <= header_len <= len(data) - CHUNK_HEADER.size:
        raise MidiFormatError(f"{name}: MThd header declares {header_len} bytes, expected 6")
    midi_format, _declared_tracks, division = FILE_HEADER.unpack_from(data, CHUNK_HEADER.size)
    if midi_format > 2:
        raise MidiFormatError(f"{name}: unknown MIDI file format {midi_format} (expected 0, 1 or 2)")
    _check_division(division, name)

    # Track chunks are counted as found: the header's track count is often wrong in the wild.
    tracks: list[bytes] = []
    offset = CHUNK_HEADER.size + header_len
    while len(data) - offset >= CHUNK_HEADER.size:
        kind, length = CHUNK_HEADER.unpack_from(data, offset)
        start = offset + CHUNK_HEADER.size
        if length > len(data) - start:
            raise MidiFormatError(
                f"{name}: chunk {kind!r} at byte {offset} declares {length} bytes but only "
                f"{len(data) - start} remain (truncated or damaged file)"
            )
        if kind == b"MTrk":
            tracks.append(data[offset : start + length])
        offset = start + length  # unknown chunk types are skipped, as the standard asks
    if not tracks:
        raise MidiFormatError(f"{name}: no MTrk track chunk (truncated or damaged file)")
    return midi_format, division, tracks


def _check_division(division: int, name: str) -> None:
    if division & 0x8000:
        raise MidiFormatError(f"{name}: SMPTE time division is not supported")
    if division <= 0:
        raise MidiFormatError(f"{name}: ticks per beat is {division}, must be positive")


def count_events(chunk: bytes, limit: int = MAX_EVENTS) -> tuple[int, int]:
    """``(events, note-ons)`` of one MTrk chunk (with its 8-byte header), read from the bytes alone.

    Walks the event grammar as mido's ``read_track`` does (delta times, running status that meta
    events keep and sysex sets, meta and sysex lengths), so the count is what mido would build.
    Stops once ``events`` passes ``limit``.
    """
    data, pos, end = chunk, CHUNK_HEADER.size, len(chunk)
    events = notes = 0
    last = 0

    def varlen() -> int:
        nonlocal pos
        value = 0
        while pos < end:
            byte = data[pos]
            pos += 1
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        return value

    while pos < end and events <= limit:
        varlen()  # delta time
        if pos >= end:
            break
        status = data[pos]
        if status >= 0x80:
            pos += 1
            if status != 0xFF:
                last = status
        elif last:
            status = last
        else:
            break  # running status without a status: mido reports the damage
        events += 1
        if status in (0xFF, 0xF0, 0xF7):
            pos += status == 0xFF  # the meta type byte
            length = varlen()  # (moves pos past the length itself)
            pos += length
        else:
            kind = status & 0xF0
            size = 1 if kind in (0xC0, 0xD0) else 2 if kind != 0xF0 else {0xF2: 2, 0xF1: 1, 0xF3: 1}.get(status, 0)
            if kind == 0x90 and pos + 1 < end and data[pos + 1]:
                notes += 1
            pos += size
    return events, notes


def _parse_track(chunk: bytes, division: int, name: str, index: int) -> mido.MidiTrack:
    """Parse one MTrk chunk with mido, isolated so errors cannot run into the next chunk."""
    header = b"MThd" + struct.pack(">LHHH", 6, 0, 1, division)
    try:
        return mido.MidiFile(file=io.BytesIO(header + chunk)).tracks[0]
    # mido signals damage with many exception types (EOFError, OSError, ValueError, KeyError,
    # IndexError...); all of them mean the same thing to our caller.
    except Exception as exc:  # noqa: BLE001
        raise MidiFormatError(f"{name}: damaged track {index} ({type(exc).__name__}: {exc})") from None


# -- events ------------------------------------------------------------------------------------


class _ChannelState:
    """MLT's per-channel bookkeeping (docs/formats.md C3 "Input handling" 3)."""

    def __init__(self) -> None:
        self.program = 0
        self.volume = 127
        self.expression = 127
        self.pedal = False
        self.held: dict[int, bool] = {}  # notes sounding, in order struck
        self.deferred: dict[tuple[int, int], bool] = {}  # (note, program) offs held by pedal


def _merged_messages(mid: mido.MidiFile) -> list[mido.Message]:
    """Messages of all tracks in time order (docs/formats.md C3 step 1); unknown metas dropped."""
    tracks = [[m for m in track if m.type != "unknown_meta"] for track in mid.tracks]
    if len(tracks) > 1:
        return list(mido.merge_tracks(tracks))  # stable: equal times keep track order
    return tracks[0] if tracks else []


def read_note_events(mid: mido.MidiFile, vocab: MidiVocab) -> list[NoteEvent]:
    """Token-producing note events of a loaded MIDI file, in stream order (docs/formats.md C3)."""
    tpb = mid.ticks_per_beat
    channels = [_ChannelState() for _ in range(16)]
    events: list[NoteEvent] = []
    tempo = DEFAULT_TEMPO
    clock = 0  # exact absolute time in microsecond-ticks: sum(delta_ticks * tempo)
    reference_delta = 0.0  # MLT's float accumulator, reset at every emitted event

    def emit(program: int, channel: int, note: int, velocity: float) -> None:
        nonlocal reference_delta
        bin = vocab.bin_for_program(program, channel)
        if bin is None or note >= vocab.n_pitches:
            return  # dropped instrument: no token, and its time stays in the accumulator
        time_ms = Fraction(clock, tpb * 1000)
        velocity_bin = vocab.velocity_to_bin(velocity)
        events.append(NoteEvent(time_ms, reference_delta, bin, note, velocity_bin))
        reference_delta = 0.0

    def note_off(channel: int, program: int, note: int) -> None:
        state = channels[channel]
        if state.pedal:
            state.deferred[(note, program)] = True
            return
        emit(program, channel, note, 0)
        state.held.pop(note, None)

    max_clock = MAX_DURATION_S * 1_000_000 * tpb
    for msg in _merged_messages(mid):
        reference_delta += mido.tick2second(msg.time, tpb, tempo) * 1000.0
        clock += msg.time * tempo
        if clock > max_clock:  # every second of music becomes wait tokens
            raise MidiFormatError(f"{_name(mid)}: lasts more than {MAX_DURATION_S // 3600} hours "
                                  f"(event at {float(Fraction(clock, tpb * 1_000_000)):.0f} s); too long to encode")
        if msg.is_meta:
            if msg.type == "set_tempo":
                tempo = msg.tempo  # applies from the next message on
            continue
        kind = msg.type
        if kind not in ("note_on", "note_off", "program_change", "control_change"):
            continue  # pitch bend, aftertouch, sysex, ...: discarded on purpose
        state = channels[msg.channel]
        if kind == "program_change":
            state.program = msg.program
        elif kind == "control_change":
            _control_change(msg, channels, note_off)
        elif kind == "note_off" or msg.velocity == 0:
            note_off(msg.channel, state.program, msg.note)
        else:
            state.deferred.pop((msg.note, state.program), None)
            # Same float expression as MLT's mix_volume so bins match bit for bit.
            velocity = msg.velocity * (state.volume / 127.0) * (state.expression / 127.0)
            emit(state.program, msg.channel, msg.note, velocity)
            state.held[msg.note] = True
    return events


def _control_change(
    msg: mido.Message, channels: list[_ChannelState], note_off: Callable[[int, int, int], None]
) -> None:
    """CC7/CC39 volume, CC11 expression, CC64 sustain, CC123 all notes off (docs/formats.md C3)."""
    state = channels[msg.channel]
    if msg.control in (7, 39):
        state.volume = msg.value
    elif msg.control == 11:
        state.expression = msg.value
    elif msg.control == 64:
        state.pedal = msg.value >= 64
        if not state.pedal:
            deferred, state.deferred = state.deferred, {}
            for note, program in deferred:
                note_off(msg.channel, program, note)
    elif msg.control == 123:  # releases held notes on every channel, as MLT does
        for channel, other in enumerate(channels):
            for note in list(other.held):
                note_off(channel, other.program, note)


__all__ = [
    "MAX_DURATION_S", "MAX_EVENTS", "MAX_FILE_BYTES", "MAX_NOTES", "MidiSource", "NoteEvent", "count_events",
    "load_midi", "read_note_events",
]
