"""MIDI file -> token ids (docs/formats.md C3 "Timing and grouping" and "Flush").

Events between two groups of wait tokens form one time step; each step is sorted (percussion
first, then by bin index and pitch, stable) and written as ``prefix:pitch:velocity`` tokens.
The whole file becomes one ``<start> ... <end>`` sequence: unlike MLT's ``midi_to_str.py`` we
never split a file into pieces at long silences and never drop short files (the piece split and
30 s filter postdate the RWKV-4-MIDI training data, docs/formats.md C3).  Silence before the first
event is not written, as in MLT (a piece starts without a wait token).
"""

from __future__ import annotations

from collections.abc import Sequence

from rwkv_music.formats.midi.read import NoteEvent
from rwkv_music.formats.midi.timing import Timing, check_timing, grid_position, reference_wait_steps, split_wait
from rwkv_music.formats.midi.vocab import MidiVocab


def events_to_ids(events: Sequence[NoteEvent], vocab: MidiVocab, timing: Timing = "exact") -> list[int]:
    """Token ids ``<start> ... <end>`` for note events in stream order."""
    check_timing(timing)
    ids = [vocab.start_id]
    group: list[NoteEvent] = []
    position = 0  # exact: grid position of the current group, counted from the first event
    for index, event in enumerate(events):
        if index == 0:
            waits: list[int] = []
        elif timing == "exact":
            new_position = grid_position(event.time_ms, events[0].time_ms, vocab.step_ms)
            waits = split_wait(new_position - position, vocab.max_wait_steps)
            position = new_position
        else:
            waits = reference_wait_steps(event.reference_delta_ms, vocab.config.max_wait_time, vocab.max_wait_steps)
        if waits:
            ids += _flush(group, vocab)
            group = []
            ids += [vocab.wait_id(steps) for steps in waits]
        group.append(event)
    ids += _flush(group, vocab)
    ids.append(vocab.end_id)
    return ids


def _flush(group: list[NoteEvent], vocab: MidiVocab) -> list[int]:
    """Note ids of one time step, sorted as MLT's ``sort_token_data`` does."""
    if vocab.config.do_token_sorting:
        percussion = vocab.percussion_bin
        # sorted() is stable, so equal (bin, pitch) keep stream order (an off before an on).
        group = sorted(group, key=lambda e: (e.bin != percussion, e.bin, e.pitch))
    return [vocab.note_id(e.bin, e.pitch, e.velocity_bin) for e in group]


__all__ = ["events_to_ids"]
