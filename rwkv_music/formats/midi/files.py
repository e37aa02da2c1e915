"""MIDI files as mido objects: bytes, safe reading, the note list and cheap validity metrics.

The writers (:mod:`rwkv_music.export.midi`) and the piano roll build on these.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Iterator

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


def playback(midi: Any) -> Iterator[tuple[float, Any]]:
    """``(seconds from the start, message)`` for every message of ``midi``, in playback order.

    The order and the times are those of iterating the :class:`mido.MidiFile` (tracks merged by time,
    a tie in track order; ``end_of_track`` messages dropped but their time kept, one at the end; each
    message's delta converted with the tempo in force before it; the deltas summed from the start in
    that order), but the messages are the file's own, not mido's three copies of each (about half of
    a piece's validity check): do not change them.  The last time is the file's ``length``.  Type 2
    (asynchronous) files cannot be played as one stream: TypeError, as mido.
    """
    import mido

    if midi.type == 2:
        raise TypeError("can't merge tracks in type 2 (asynchronous) file")
    timed = []
    for track in midi.tracks:
        at = 0
        for msg in track:
            at += msg.time
            timed.append((at, msg))
    timed.sort(key=_first)  # stable: equal times keep track order
    tempo, per_beat = _DEFAULT_TEMPO, midi.ticks_per_beat
    now, last, held = 0.0, 0, 0  # seconds; the last message's tick; ticks of end_of_track messages dropped
    for at, msg in timed:
        delta, last = at - last, at
        if msg.type == "end_of_track":
            held += delta
            continue
        if held:
            delta, held = held + delta, 0
        now += mido.tick2second(delta, per_beat, tempo) if delta > 0 else 0
        yield now, msg
        if msg.type == "set_tempo":
            tempo = msg.tempo
    now += mido.tick2second(held, per_beat, tempo) if held > 0 else 0
    yield now, mido.MetaMessage("end_of_track", time=held)


_DEFAULT_TEMPO = 500_000  # mido's (and the MIDI standard's) tempo before any set_tempo: 120 bpm


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def notes_of(midi: Any) -> list[Note]:
    """Every note of ``midi`` with start/end in seconds (tempo changes applied, as mido plays the file).

    A note-on with velocity 0 counts as a note-off; notes still held at the end close at the
    file's end; repeated note-ons of a held pitch close the earlier note first.
    """
    return _notes_and_length(midi)[0]


def _notes_and_length(midi: Any) -> tuple[list[Note], float]:
    programs = [0] * 16
    active: dict[tuple[int, int], tuple[float, int]] = {}
    notes: list[Note] = []
    now = 0.0
    for now, msg in playback(midi):
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
    return notes, now


def midi_metrics(midi: Any) -> dict[str, Any]:
    """Cheap validity and size numbers for a generated MIDI file (manifest / ``Piece.meta``)."""
    notes, length = _notes_and_length(midi)
    return {
        "notes": len(notes),
        "seconds": round(float(length), 3),
        "channels": sorted({n.channel for n in notes}),
        "pitch_min": min((n.pitch for n in notes if n.channel != PERCUSSION_CHANNEL), default=None),
        "pitch_max": max((n.pitch for n in notes if n.channel != PERCUSSION_CHANNEL), default=None),
    }


__all__ = ["MAX_DELTA", "PERCUSSION_CHANNEL", "Note", "midi_bytes", "midi_metrics", "notes_of", "playback", "read_midi"]
