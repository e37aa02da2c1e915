"""ABC and MIDI ↔ music21 scores (music21 is imported only when one of these runs).

The MusicXML writer (:mod:`rwkv_music.export.music21_io`) builds on these.  No music21 error
reaches the caller: a tune that cannot be read or converted is an :class:`AbcFormatError` naming
its source.  Three music21 (10.x) weaknesses are worked around on the way:

* repeat marks it misreads or refuses are rewritten first (:mod:`rwkv_music.formats.abc.normalize`);
* its ABC reader can put one meter or key object into two measures (a mid-tune pickup after
  ``||``), which its MIDI writer then refuses ("already found in this Stream"): the second
  place gets a copy;
* when the repeat expander still refuses a tune, the MIDI is written without expanding its
  repeats (every bar played once) rather than not at all.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
from typing import Any, Iterator

from rwkv_music.errors import AbcFormatError, MidiFormatError
from rwkv_music.formats.abc.normalize import normalize_repeats
from rwkv_music.formats.abc.tune import TEXT_SOURCE, with_reference
from rwkv_music.formats.midi.files import midi_bytes, read_midi

log = logging.getLogger(__name__)

_TITLE_LINE = re.compile(r"^T:\s*(\S.*?)\s*$", re.MULTILINE)


@contextlib.contextmanager
def quiet_music21() -> Iterator[None]:
    """Route music21's direct ``sys.stderr`` warnings (e.g. "abcFormat: WARNING: ...") to logging."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("music21: %s", line.strip())


def _reason(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def abc_title(text: str) -> str | None:
    """The first ``T:`` title of an ABC tune, if it has one.

    >>> abc_title("X:1\\nT:The Kesh\\nK:G\\nGAB|")
    'The Kesh'
    """
    m = _TITLE_LINE.search(text)
    return m.group(1) if m else None


def abc_to_score(text: str, source: str = TEXT_SOURCE, title: str | None = None, composer: str | None = None) -> Any:
    """Parse one tune (model text or standard ABC) into a music21 score.

    Control codes are dropped, ``X:1`` added (docs/formats.md B) and repeat marks normalised
    first.  The score's title is the tune's ``T:``, else ``title``, else ``source``; ``composer``
    fills in a missing ``C:`` (so MusicXML does not credit "Music21").  music21 failures become
    :class:`AbcFormatError` naming ``source``.
    """
    from music21 import converter, metadata

    abc = normalize_repeats(with_reference(text, 1))
    try:
        with quiet_music21():
            score = converter.parse(abc, format="abc")
        if hasattr(score, "scores") and not hasattr(score, "parts"):  # an Opus: keep its first score
            score = score.scores[0]
        notes = score.flatten().notes
    except Exception as exc:  # music21 raises many unrelated types for bad ABC
        raise AbcFormatError(f"{source}: music21 cannot read this ABC ({_reason(exc)})") from None
    if not notes:
        raise AbcFormatError(f"{source}: the ABC tune contains no notes")
    _unshare(score)
    if score.metadata is None:
        score.metadata = metadata.Metadata()
    if not score.metadata.title:
        score.metadata.title = abc_title(abc) or title or (source if source != TEXT_SOURCE else "Untitled")
    if composer and not score.metadata.composer:
        score.metadata.composer = composer
    return score


def _unshare(score: Any) -> None:
    """Give every element one place: music21 may put one TimeSignature/Key into two measures."""
    seen: set[int] = set()
    for container in list(score.recurse(streamsOnly=True, includeSelf=True)):
        for el in list(container.elements):
            if id(el) in seen:
                container.replace(el, copy.deepcopy(el))
            else:
                seen.add(id(el))


def _without_repeats(score: Any) -> Any:
    """A copy of ``score`` without measures, repeat bar lines, endings and D.C./D.S. marks (played once)."""
    from music21 import bar, repeat, spanner, stream

    plain = copy.deepcopy(score)
    for m in plain.recurse().getElementsByClass(stream.Measure):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("double")
    for el in list(plain.recurse().getElementsByClass((spanner.RepeatBracket, repeat.RepeatExpression))):
        site = el.activeSite
        if site is not None:
            site.remove(el)
    for sp in list(plain.spannerBundle.getByClass(spanner.RepeatBracket)):
        plain.spannerBundle.remove(sp)
    # Without measures music21 expands nothing (a voice without bar lines made it fail on the others).
    flat = stream.Score()
    flat.metadata = plain.metadata
    for part in list(plain.parts) or [plain]:
        flat.insert(0, part.flatten())
    return flat


def score_to_midi_bytes(score: Any, source: str = "score") -> bytes:
    """A music21 stream as standard MIDI file bytes, repeats played as written.

    If music21 cannot expand the repeats, every bar is played once instead.  Anything else music21
    cannot convert is an :class:`AbcFormatError` naming ``source``.
    """
    from music21 import midi as m21midi

    def convert(s: Any) -> bytes:
        with quiet_music21():
            return m21midi.translate.music21ObjectToMidiFile(s).writestr()

    try:
        return convert(score)
    except Exception as exc:  # ExpanderException and friends: try once more without repeats
        first = exc
    log.info("%s: repeats not expanded (%s)", source, _reason(first))
    try:
        return convert(_without_repeats(score))
    except Exception as exc:
        raise AbcFormatError(f"{source}: music21 cannot write this tune as MIDI ({_reason(exc)})") from None


def abc_to_midi(text: str, source: str = TEXT_SOURCE) -> Any:
    """One ABC tune as a :class:`mido.MidiFile` (through music21); :class:`AbcFormatError` if it cannot be.

    The first track is named after the tune's title, each track with notes after its instrument.
    """
    score = abc_to_score(text, source)
    data = score_to_midi_bytes(score, source)
    try:
        midi = read_midi(data)
    except MidiFormatError as exc:
        raise AbcFormatError(f"{source}: music21 wrote unreadable MIDI ({exc})") from None
    return name_tracks(midi, str(score.metadata.title or ""))


def name_tracks(midi: Any, title: str) -> Any:
    """Give unnamed tracks a name in place: the first one ``title``, a track with notes its instrument."""
    import mido

    from rwkv_music.formats.midi.decode import instrument_name
    from rwkv_music.formats.midi.files import PERCUSSION_CHANNEL

    for k, track in enumerate(midi.tracks):
        named = [m for m in track if m.type == "track_name"]
        if named and named[0].name.strip():
            continue
        notes = [m for m in track if m.type == "note_on"]
        if notes:
            program = next((m.program for m in track if m.type == "program_change"), 0)
            name = instrument_name(program, notes[0].channel == PERCUSSION_CHANNEL)
        elif k == 0 and title:
            name = title
        else:
            continue
        if named:  # rename in place: its delta time stays where it is
            i = next(i for i, m in enumerate(track) if m.type == "track_name")
            track[i] = track[i].copy(name=name)
        else:
            track.insert(0, mido.MetaMessage("track_name", name=name, time=0))
    return midi


def midi_to_score(midi: Any, source: str = "MIDI data") -> Any:
    """A :class:`mido.MidiFile` as a music21 score (for MusicXML export), one part per instrument.

    A track that plays on several channels (the decoder writes one track) is split into one track
    per channel, named after its instrument, so each instrument gets its own part and name.
    """
    from music21 import converter

    try:
        with quiet_music21():
            return converter.parse(midi_bytes(split_channels(midi)), format="midi")
    except Exception as exc:
        raise MidiFormatError(f"{source}: music21 cannot read this MIDI ({_reason(exc)})") from None


def split_channels(midi: Any) -> Any:
    """``midi`` with every multi-channel track split into a meta track and one track per channel."""
    import mido

    from rwkv_music.formats.midi.decode import instrument_name
    from rwkv_music.formats.midi.files import PERCUSSION_CHANNEL

    if all(len({m.channel for m in track if not m.is_meta and hasattr(m, "channel")}) <= 1 for track in midi.tracks):
        return midi
    out = mido.MidiFile(type=1, ticks_per_beat=midi.ticks_per_beat)
    for track in midi.tracks:
        parts: dict[int | None, list[tuple[int, Any]]] = {}
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "end_of_track":
                continue
            channel = None if msg.is_meta or not hasattr(msg, "channel") else msg.channel
            if msg.type == "track_name":
                continue  # each new track gets its own name
            parts.setdefault(channel, []).append((now, msg))
        for channel, items in sorted(parts.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            program = next((m.program for _, m in items if m.type == "program_change"), 0)
            new = mido.MidiTrack()
            if channel is not None:
                name = instrument_name(program, channel == PERCUSSION_CHANNEL)
                new.append(mido.MetaMessage("track_name", name=name, time=0))
            last = 0
            for at, msg in items:
                new.append(msg.copy(time=at - last))
                last = at
            new.append(mido.MetaMessage("end_of_track", time=0))
            out.tracks.append(new)
    return out


__all__ = [
    "abc_title",
    "abc_to_midi",
    "abc_to_score",
    "midi_to_score",
    "name_tracks",
    "quiet_music21",
    "score_to_midi_bytes",
    "split_channels",
]
