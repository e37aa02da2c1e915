"""MIDI files as mido objects: bytes, safe reading, the note list and cheap validity metrics.

The writers (:mod:`rwkv_music.export.midi`) and the piano roll build on these.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from rwkv_music.errors import MidiFormatError

PERCUSSION_CHANNEL = 9  # General MIDI drums (0-based channel 10)


@dataclass(frozen=True)
class Note:
    """One sounding note, times in seconds from the start of the file."""

    start: float
    end: float
    pitch: int
    velocity: int
    channel: int
    program: int


MAX_DELTA = 0x0FFFFFFF  # the largest delta time a 4-byte variable-length quantity holds (SMF 1.0)


def midi_bytes(midi: Any) -> bytes:
    """Serialise a :class:`mido.MidiFile` to standard MIDI bytes.

    A wait longer than :data:`MAX_DELTA` ticks is split across empty text events, since mido
    would write a longer, non-standard variable-length number; ``midi`` itself is not changed.
    """
    import mido

    if any(msg.time > MAX_DELTA for track in midi.tracks for msg in track):
        out = mido.MidiFile(type=midi.type, ticks_per_beat=midi.ticks_per_beat, charset=midi.charset)
        out.tracks = [_split_long_waits(track) for track in midi.tracks]
        midi = out
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def _split_long_waits(track: Any) -> Any:
    import mido

    out = mido.MidiTrack()
    for msg in track:
        wait = msg.time
        while wait > MAX_DELTA:
            out.append(mido.MetaMessage("text", text="", time=MAX_DELTA))
            wait -= MAX_DELTA
        out.append(msg.copy(time=wait))
    return out


def read_midi(path_or_bytes: str | os.PathLike | bytes) -> Any:
    """Open a MIDI file (path or bytes) with mido; damage becomes :class:`MidiFormatError`."""
    import mido

    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            return mido.MidiFile(file=io.BytesIO(path_or_bytes))
        return mido.MidiFile(str(path_or_bytes))
    except FileNotFoundError:
        raise MidiFormatError(f"{path_or_bytes}: no such MIDI file") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        name = "MIDI data" if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
        raise MidiFormatError(f"{name}: not a readable MIDI file ({exc})") from None


def notes_of(midi: Any) -> list[Note]:
    """Every note of ``midi`` with start/end in seconds (tempo changes applied by mido).

    A note-on with velocity 0 counts as a note-off; notes still held at the end close at the
    file's end; repeated note-ons of a held pitch close the earlier note first.
    """
    programs = [0] * 16
    active: dict[tuple[int, int], tuple[float, int]] = {}
    notes: list[Note] = []
    now = 0.0
    for msg in midi:  # mido yields messages merged over tracks, .time in seconds
        now += msg.time
        if msg.type == "program_change":
            programs[msg.channel] = msg.program
        elif msg.type in ("note_on", "note_off"):
            key = (msg.channel, msg.note)
            if key in active:
                start, vel = active.pop(key)
                notes.append(Note(start, now, msg.note, vel, msg.channel, programs[msg.channel]))
            if msg.type == "note_on" and msg.velocity > 0:
                active[key] = (now, msg.velocity)
    for (channel, pitch), (start, vel) in active.items():
        notes.append(Note(start, now, pitch, vel, channel, programs[channel]))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def midi_metrics(midi: Any) -> dict[str, Any]:
    """Cheap validity and size numbers for a generated MIDI file (manifest / ``Piece.meta``)."""
    notes = notes_of(midi)
    return {
        "notes": len(notes),
        "seconds": round(float(midi.length), 3),
        "channels": sorted({n.channel for n in notes}),
        "pitch_min": min((n.pitch for n in notes if n.channel != PERCUSSION_CHANNEL), default=None),
        "pitch_max": max((n.pitch for n in notes if n.channel != PERCUSSION_CHANNEL), default=None),
    }


__all__ = ["MAX_DELTA", "PERCUSSION_CHANNEL", "Note", "midi_bytes", "midi_metrics", "notes_of", "read_midi"]
