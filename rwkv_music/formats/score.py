"""ABC and MIDI ↔ music21 scores (music21 is imported only when one of these runs).

The MusicXML writer (:mod:`rwkv_music.export.music21_io`) builds on these.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Iterator

from rwkv_music.errors import AbcFormatError, MidiFormatError
from rwkv_music.formats.abc.tune import with_reference
from rwkv_music.formats.midi.files import midi_bytes, read_midi

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_music21() -> Iterator[None]:
    """Route music21's direct ``sys.stderr`` warnings (e.g. "abcFormat: WARNING: ...") to logging."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("music21: %s", line.strip())


def abc_to_score(text: str, source: str = "ABC text") -> Any:
    """Parse one tune (model text or standard ABC) into a music21 score.

    Control codes are dropped and ``X:1`` added first (docs/formats.md B).  music21 failures become
    :class:`AbcFormatError` naming ``source``.
    """
    from music21 import converter

    try:
        with quiet_music21():
            score = converter.parse(with_reference(text, 1), format="abc")
    except Exception as exc:  # music21 raises many unrelated types for bad ABC
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise AbcFormatError(f"{source}: music21 cannot read this ABC ({type(exc).__name__}: {first[:160]})") from None
    if not score.flatten().notes:
        raise AbcFormatError(f"{source}: the ABC tune contains no notes")
    return score


def score_to_midi_bytes(score: Any) -> bytes:
    """A music21 stream as standard MIDI file bytes."""
    from music21 import midi as m21midi

    return m21midi.translate.music21ObjectToMidiFile(score).writestr()


def abc_to_midi(text: str, source: str = "ABC text") -> Any:
    """One ABC tune as a :class:`mido.MidiFile` (through music21)."""
    return read_midi(score_to_midi_bytes(abc_to_score(text, source)))


def midi_to_score(midi: Any, source: str = "MIDI data") -> Any:
    """A :class:`mido.MidiFile` as a music21 score (for MusicXML export)."""
    from music21 import converter

    try:
        with quiet_music21():
            return converter.parse(midi_bytes(midi), format="midi")
    except Exception as exc:
        raise MidiFormatError(f"{source}: music21 cannot read this MIDI ({type(exc).__name__}: {exc})") from None


__all__ = ["abc_to_midi", "abc_to_score", "midi_to_score", "quiet_music21", "score_to_midi_bytes"]
