"""Time <-> wait tokens, in two flavours.

``"reference"`` reproduces MIDI-LLM-tokenizer (MLT) exactly: the encoder turns the time since
the previous event into wait tokens and throws the rounding residue away at every event
(docs/formats.md C3 "Timing and grouping"), and the decoder rounds each message's delta to ticks on
its own (docs/formats.md C4 "Ticks").  Both errors accumulate, so onsets drift over a long piece.

``"exact"`` (the default) quantizes *absolute* times: the encoder puts every event on the
8 ms grid counted from the first event and emits the difference of grid positions; the decoder
places every message at the tick nearest to its absolute time.  Every onset then lies within
half a step (plus half a tick) of the original, however long the piece.  Long gaps are not
clipped to 10 s either.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, cast

import mido

from rwkv_music.errors import TokenizerError

Timing = Literal["exact", "reference"]
TIMINGS: tuple[str, ...] = ("exact", "reference")

# Decoded files: 480 ticks per beat at 120 bpm (docs/formats.md C4), so 1 tick = 25/24 ms.
DECODE_TICKS_PER_BEAT = 480
DECODE_TEMPO = 500_000  # microseconds per beat
END_PAUSE_MS = 3000  # time added by <end> when decoding (docs/formats.md C4)
MAX_REFERENCE_GAP_SECONDS = 10  # the reference clips any gap to 10 x t125 (docs/formats.md C3)


def check_timing(timing: str) -> Timing:
    """Return ``timing`` if it names a supported mode, else raise TokenizerError."""
    if timing not in TIMINGS:
        raise TokenizerError(f"timing {timing!r} is not one of {', '.join(TIMINGS)}")
    return cast(Timing, timing)


def round_half_down(value: Fraction | float) -> int:
    """MLT's ``roundi``: ceil(value - 1/2), so exact halves round down (62.5 -> 62)."""
    return math.ceil(value - Fraction(1, 2) if isinstance(value, Fraction) else value - 0.5)


def split_wait(steps: int, max_steps: int) -> list[int]:
    """Split a wait of ``steps`` grid steps into full ``t{max_steps}`` tokens plus a remainder."""
    full, rest = divmod(steps, max_steps)
    return [max_steps] * full + ([rest] if rest else [])


def reference_wait_steps(delta_ms: float, max_wait_ms: int, max_steps: int) -> list[int]:
    """Wait tokens (as step counts) MLT emits for a gap of ``delta_ms`` (docs/formats.md C3).

    0 ms -> none; the gap is clipped to 10 s; one ``t125`` per whole second, then the rest
    rounded half down to steps (so 996.1 ms -> ``t125`` and 4 ms -> nothing).
    """
    if delta_ms == 0.0:
        return []
    step_ms = max_wait_ms / max_steps
    delta_ms = min(delta_ms, max_wait_ms * MAX_REFERENCE_GAP_SECONDS)
    steps = [round_half_down(max_wait_ms / step_ms)] * math.floor(delta_ms / max_wait_ms)
    rest = round_half_down((delta_ms % max_wait_ms) / step_ms)
    return steps + [rest] if rest > 0 else steps


def grid_position(time_ms: Fraction, origin_ms: Fraction, step_ms: int) -> int:
    """Grid step nearest to ``time_ms`` counted from ``origin_ms`` (halves round down)."""
    return round_half_down((time_ms - origin_ms) / step_ms)


class DecodeClock:
    """Decoder time keeping: ``advance`` by token durations, ``delta_ticks`` per emitted message.

    ``total_ms`` is the decoder's notion of "now" (used by the held-note rule).
    """

    def __init__(self, timing: Timing) -> None:
        self.timing = check_timing(timing)
        self.total_ms: float = 0  # int for "exact" (sums of whole ms), float for "reference"
        self._pending_ms = 0.0  # reference: ms since the last emitted message
        self._last_tick = 0  # exact: absolute tick of the last emitted message

    def advance(self, ms: float) -> None:
        self.total_ms += ms
        self._pending_ms += ms

    def delta_ticks(self) -> int:
        """Delta time in ticks for a message emitted now (marks it emitted)."""
        if self.timing == "reference":
            # MLT: int(mido.second2tick(delta_accum / 1000, 480, 500000)), residue dropped.
            ticks = int(mido.second2tick(self._pending_ms / 1000.0, DECODE_TICKS_PER_BEAT, DECODE_TEMPO))
            self._pending_ms = 0.0
            return ticks
        now = exact_ms_to_tick(self.total_ms)
        delta, self._last_tick = now - self._last_tick, now
        return delta


def exact_ms_to_tick(ms: float) -> int:
    """Tick nearest to ``ms`` at 480 ticks/beat and 120 bpm (0.96 ticks per ms, halves up)."""
    if type(ms) is int:  # the exact clock's whole ms: the same rounding in integers, without Fractions
        return (2000 * DECODE_TICKS_PER_BEAT * ms + DECODE_TEMPO) // (2 * DECODE_TEMPO)
    exact = Fraction(ms) * DECODE_TICKS_PER_BEAT * 1000 / DECODE_TEMPO
    return math.floor(exact + Fraction(1, 2))


__all__ = [
    "DECODE_TEMPO",
    "DECODE_TICKS_PER_BEAT",
    "DecodeClock",
    "END_PAUSE_MS",
    "TIMINGS",
    "Timing",
    "check_timing",
    "exact_ms_to_tick",
    "grid_position",
    "reference_wait_steps",
    "round_half_down",
    "split_wait",
]
