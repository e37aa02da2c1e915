"""Well-formed MIDI token streams: instruments, pitch range, polyphony, note lengths, piece length.

Vocabulary layout (docs/formats.md C1, 20 096 ids; read from :data:`rwkv_music.formats.midi.vocab.LAYOUT`,
the one description of it): id 0 ``<pad>``, 1 ``<start>``, 2 ``<end>``; ids 3..127 are the wait
tokens ``t1``..``t125`` (id = n + 2, each step 8 ms); a note token is
``128 + bin * 1536 + pitch * 12 + velbin`` with 13 instrument bins (0 percussion, 1 drum,
2 tuba, 3 marimba, 4 bass, 5 guitar, 6 violin, 7 trumpet, 8 piano, 9 sax, 10 flute, 11 lead,
12 pad), pitch 0..127 and velocity bin 0..11 where bin 0 is a note-off.  A sounding note is
keyed by (bin, pitch), as the reference decoder keys it by (channel, pitch) (C4).

End of piece: ``<pad>`` (0) is what the ChatRWKV recipe stops on (D3) and ``<end>`` (2) is the
tokenizer's end marker; both are *end tokens* here and obey the same rule.  Generate with
``stop_tokens=(0, 2)``.  If the loop does not stop on an end token, the row starts a fresh
piece after it (as after ``<start>``, which the constraint never proposes itself).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.midi.musicality import INSTRUMENT_RANGES, best_diatonic_scale, parse_key, scale_pitch_classes
from rwkv_music.formats.midi.vocab import LAYOUT
from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError

PAD_ID, START_ID, END_ID = LAYOUT.specials
WAIT_FIRST, MAX_WAIT = LAYOUT.first_wait_id, LAYOUT.n_waits  # t1 = id 3 ... t125 = id 127
MS_PER_WAIT = LAYOUT.step_ms  # max_wait_time 1000 ms / wait_events 125 (C3)
NOTE_BASE, N_PITCH, N_VEL = LAYOUT.first_note_id, LAYOUT.n_pitches, LAYOUT.n_velocity_bins
BIN_NAMES = LAYOUT.bin_names
N_BINS = len(BIN_NAMES)
N_KEYS = N_BINS * N_PITCH  # (bin, pitch) pairs
VOCAB_SIZE = LAYOUT.size  # 20096
DRUM_BINS = (BIN_NAMES.index("percussion"), BIN_NAMES.index("drum"))  # GM kit (channel 10); timpani, synth drums


def note_token(bin_index: int, pitch: int, velbin: int) -> int:
    """Id of a note token (docs/formats.md C1): ``note_token(8, 0x4A, 7) == 13311`` (``pi:4a:7``)."""
    return LAYOUT.note_id(bin_index, pitch, velbin)


def wait_token(ticks: int) -> int:
    """Id of the wait token ``t<ticks>`` (1..125): ``wait_token(125) == 127``."""
    return LAYOUT.wait_id(ticks)


def _bin_index(item: str | int) -> int:
    """An instrument bin from its index (0-12, this constraint's own numbering) or from any name
    :func:`~rwkv_music.formats.midi.options.instrument_bins` takes (bins, General MIDI names)."""
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if 0 <= item < N_BINS:
            return int(item)
        names = ", ".join(BIN_NAMES)
        raise SamplingValueError(f"instruments: bin index {item!r} is not one of 0-{N_BINS - 1} ({names})")
    if isinstance(item, str) and item.lower() in BIN_NAMES:
        return BIN_NAMES.index(item.lower())
    from rwkv_music.formats.midi.options import instrument_bins  # (options imports nothing from here)

    try:
        found = instrument_bins([str(item)])
    except RwkvMusicError as exc:
        raise SamplingValueError(str(exc)) from None
    if not found:
        raise SamplingValueError(f"instruments: {item!r} is not an instrument")
    return BIN_NAMES.index(found[0])


def _scale_row(pitch_classes: frozenset[int]) -> np.ndarray:
    row = np.zeros(12, dtype=bool)
    row[list(pitch_classes)] = True
    return row


class MidiConstraint(LogitsProcessor):
    """Only tokens that keep a MIDI piece well formed and within the requested limits.

    Args:
        instruments: bins (names or indices, docs/formats.md C1) whose notes may start; ``None`` = all.
        drums: ``True`` adds the "percussion" and "drum" bins, ``False`` removes them, ``None``
            leaves ``instruments`` as given.
        pitch_range: lowest and highest MIDI pitch a note may start on; percussion is exempt
            (its pitch is a drum-kit key).
        max_polyphony: most notes sounding at once (all bins counted); no note-on at the limit.
        max_note_seconds: longest a note may sound.  Waits never carry a note past it; a note
            that has reached it must be released before anything else happens.
        target_seconds: piece length.  End tokens become legal at ``target * (1 - tolerance)``,
            waits stop at ``target * (1 + tolerance)``, no note starts after ``target``, and the
            end tokens get a bias rising from 0 to ``end_bias`` between those two times.
        length_tolerance: relative tolerance of the piece length.
        end_bias: logit bias on the end tokens at ``target * (1 + tolerance)``.
        end_tokens: ids that end a piece (default ``<pad>`` and ``<end>``).
        ranges: also keep each instrument inside its playable range
            (:data:`~rwkv_music.formats.midi.musicality.INSTRUMENT_RANGES`: a violin never below G3).
        key: keep pitched note-ons in a diatonic scale: a key (``"D"``, ``"Am"``, ``"F# dorian"``),
            ``"auto"`` (the scale that fits the first ``key_notes`` notes of the row, prompt
            included, is kept from then on) or ``None`` (any pitch).  Drums are exempt.
        key_notes: notes heard before ``"auto"`` settles on a scale.
        scale_penalty: ``inf`` masks out-of-key note-ons; a finite value subtracts it from their logits.

    Rules for a row, each step (time = sum of wait tokens since the piece began, in 8 ms ticks;
    the prompt counts, from its last ``<pad>``/``<start>``/``<end>``):

    * ``<start>`` is never legal; an end token only when no note sounds (and, with a target,
      from the minimum length on).
    * A note-off only for a sounding (bin, pitch): no orphan note-offs.
    * A note-on only for an allowed bin and pitch that is not already sounding, below the
      polyphony limit, before the target time and while no note is overdue.
    * A wait ``t<n>`` only if no note is overdue, ``n`` does not take any sounding note past
      ``max_note_seconds`` and time stays within ``target * (1 + tolerance)``.
    * A note is overdue once it has sounded ``max_note_seconds`` (possible right after a
      wait, or from a prompt); then only note-offs of overdue notes are legal.

    Why a legal token always exists: if a note is overdue, its own note-off is legal.  Else if
    any note sounds, its note-off is legal.  Else no note sounds, so an end token is legal
    unless the time is below the minimum length; then the time is also below the maximum
    length and no note limits a wait, so ``t1`` is legal.  (Other processors can still
    conflict, e.g. ``min_new_tokens`` banning the end token after the maximum length.)

    >>> c = MidiConstraint.piano_only(max_polyphony=1)
    >>> c.reset([[0, note_token(8, 60, 9)]])            # prompt: <pad> pi:3c:9
    >>> out = c(0, np.zeros((1, VOCAB_SIZE), dtype=np.float32))
    >>> bool(np.isfinite(out[0, note_token(8, 60, 0)])), bool(np.isfinite(out[0, note_token(8, 62, 9)]))
    (True, False)
    """

    rule = "midi_constraint"

    def __init__(
        self,
        instruments: Sequence[str | int] | None = None,
        *,
        drums: bool | None = None,
        pitch_range: tuple[int, int] = (0, 127),
        max_polyphony: int | None = None,
        max_note_seconds: float | None = None,
        target_seconds: float | None = None,
        length_tolerance: float = 0.05,
        end_bias: float = 4.0,
        end_tokens: Sequence[int] = (PAD_ID, END_ID),
        ranges: bool = False,
        key: str | None = None,
        key_notes: int = 8,
        scale_penalty: float = math.inf,
    ) -> None:
        bins = set(range(N_BINS)) if instruments is None else {_bin_index(i) for i in instruments}
        if drums is True:
            bins |= set(DRUM_BINS)
        elif drums is False:
            if instruments is not None and bins & set(DRUM_BINS):
                raise SamplingValueError(f"instruments {list(instruments)!r} lists a drum bin but drums=False")
            bins -= set(DRUM_BINS)
        if not bins:
            raise SamplingValueError(
                f"instruments: no instrument left to play (instruments={instruments!r}, drums={drums!r})"
            )
        low, high = pitch_range
        if not (0 <= low <= high <= 127):
            raise SamplingValueError(f"pitch_range must satisfy 0 <= low <= high <= 127, got {pitch_range!r}")
        bad_poly = isinstance(max_polyphony, bool) or not isinstance(max_polyphony, int) or max_polyphony < 1
        if max_polyphony is not None and bad_poly:
            raise SamplingValueError(f"max_polyphony must be an integer >= 1 or None, got {max_polyphony!r}")
        self.max_note_ticks: int | None = None
        if max_note_seconds is not None:
            if not (isinstance(max_note_seconds, (int, float)) and max_note_seconds * 1000 >= MS_PER_WAIT):
                raise SamplingValueError(
                    f"max_note_seconds must be at least 0.008 (one wait step) or None, got {max_note_seconds!r}"
                )
            self.max_note_ticks = int(math.floor(max_note_seconds * 1000 / MS_PER_WAIT + 1e-9))
        if not (isinstance(length_tolerance, (int, float)) and 0 <= length_tolerance < 1):
            raise SamplingValueError(f"length_tolerance must be in [0, 1), got {length_tolerance!r}")
        if not (isinstance(end_bias, (int, float)) and math.isfinite(end_bias)):
            raise SamplingValueError(f"end_bias must be a finite number, got {end_bias!r}")
        self.target_ticks = self.min_end = self.max_end = None
        if target_seconds is not None:
            if not (isinstance(target_seconds, (int, float)) and math.isfinite(target_seconds) and target_seconds > 0):
                raise SamplingValueError(f"target_seconds must be a number > 0 or None, got {target_seconds!r}")
            per_s = 1000 / MS_PER_WAIT
            self.target_ticks = int(round(target_seconds * per_s))
            self.min_end = int(math.ceil(target_seconds * (1 - length_tolerance) * per_s - 1e-9))
            self.max_end = int(math.floor(target_seconds * (1 + length_tolerance) * per_s + 1e-9))
            if self.max_end < max(self.min_end, 1):
                raise SamplingValueError(
                    f"target_seconds {target_seconds!r} with length_tolerance {length_tolerance!r} "
                    "leaves no whole 8 ms step to end on"
                )
        for t in end_tokens:
            if t not in (PAD_ID, END_ID):
                raise SamplingValueError(f"end_tokens may only hold 0 (<pad>) and 2 (<end>), got {t!r}")
        if not end_tokens:
            raise SamplingValueError("end_tokens must not be empty")
        if not (isinstance(key_notes, int) and not isinstance(key_notes, bool) and key_notes >= 1):
            raise SamplingValueError(f"key_notes must be an integer >= 1, got {key_notes!r}")
        if not (isinstance(scale_penalty, (int, float)) and scale_penalty > 0):
            raise SamplingValueError(f"scale_penalty must be > 0 (inf masks), got {scale_penalty!r}")
        self.key = None if key in (None, "none", "") else str(key).strip()
        self._fixed_scale: np.ndarray | None = None
        if self.key is not None and self.key.lower() != "auto":
            try:
                tonic, mode = parse_key(self.key)
            except RwkvMusicError as exc:
                raise SamplingValueError(f"key: {exc}") from None
            self._fixed_scale = _scale_row(scale_pitch_classes(tonic, mode))
        self.key_notes = int(key_notes)
        self.scale_penalty = float(scale_penalty)
        self.ranges = bool(ranges)
        self.instruments = tuple(BIN_NAMES[b] for b in sorted(bins))
        self.pitch_range = (int(low), int(high))
        self.max_polyphony = max_polyphony
        self.length_tolerance = float(length_tolerance)
        self.end_bias = float(end_bias)
        self.end_tokens = tuple(int(t) for t in end_tokens)
        pitch = np.arange(N_PITCH)
        per_bin = []
        for b in range(N_BINS):
            lo, hi = low, high
            if self.ranges and BIN_NAMES[b] in INSTRUMENT_RANGES:  # the instrument's playable range too
                lo, hi = max(lo, INSTRUMENT_RANGES[BIN_NAMES[b]][0]), min(hi, INSTRUMENT_RANGES[BIN_NAMES[b]][1])
            unpitched = BIN_NAMES[b] == "percussion"  # drum-kit keys: the pitch picks a drum, no range
            per_bin.append(np.full(N_PITCH, b in bins) & (unpitched | ((pitch >= lo) & (pitch <= hi))))
        self._can_start = np.concatenate(per_bin)  # [N_KEYS] static note-on permission
        if not self._can_start.any():
            raise SamplingValueError(
                f"instruments {', '.join(BIN_NAMES[b] for b in sorted(bins))}: no pitch left in pitch_range "
                f"{self.pitch_range} and their ranges"
            )
        self._pitched = np.concatenate([np.full(N_PITCH, b not in DRUM_BINS) for b in range(N_BINS)])  # [N_KEYS]
        self._key_pc = np.tile(np.arange(N_PITCH) % 12, N_BINS)  # [N_KEYS] pitch class of each key
        self._scale = np.ones((0, 12), dtype=bool)  # per row: pitch classes a pitched note may start on
        self._pc_counts = np.zeros((0, 12), dtype=np.int64)  # per row: pitched note-ons so far (key "auto")
        self._start = np.zeros((0, N_KEYS), dtype=np.int64)  # tick a sounding note began, -1 = silent
        self._time = np.zeros(0, dtype=np.int64)  # ticks since the piece began

    @classmethod
    def piano_only(cls, **kwargs: object) -> "MidiConstraint":
        """Only piano notes (ChatRWKV's piano mode, D3 step 4), no drums."""
        return cls(("piano",), drums=False, **kwargs)  # type: ignore[arg-type]

    # -- per-row state -----------------------------------------------------------------
    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        self._start = np.full((len(prompts), N_KEYS), -1, dtype=np.int64)
        self._time = np.zeros(len(prompts), dtype=np.int64)
        self._scale = np.ones((len(prompts), 12), dtype=bool)
        if self._fixed_scale is not None:
            self._scale[:] = self._fixed_scale
        self._pc_counts = np.zeros((len(prompts), 12), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            for t in prompt:
                self._advance(row, int(t), where="prompt")

    def update(self, tokens: Sequence[int]) -> None:
        if len(tokens) != len(self._time):
            raise SamplingValueError(f"{self.rule}: update got {len(tokens)} tokens for a batch of {len(self._time)}")
        for row, t in enumerate(tokens):
            self._advance(row, int(t), where="update")

    def _advance(self, row: int, t: int, where: str) -> None:
        if not 0 <= t < VOCAB_SIZE:
            raise SamplingValueError(
                f"{self.rule}: {where} token {t} in row {row} is outside the MIDI vocabulary (0..{VOCAB_SIZE - 1})"
            )
        if t < WAIT_FIRST:  # <pad>, <start>, <end>: a new piece begins
            self._start[row] = -1
            self._time[row] = 0
        elif t < NOTE_BASE:
            self._time[row] += t - WAIT_FIRST + 1
        else:
            key, vel = divmod(t - NOTE_BASE, N_VEL)
            # note-on of a sounding note restarts it (the decoder re-triggers, C4); orphan offs in a prompt are ignored
            self._start[row, key] = self._time[row] if vel else -1
            if vel and self._pitched[key] and self.key is not None and self.key.lower() == "auto":
                counts = self._pc_counts[row]
                counts[self._key_pc[key]] += 1
                if counts.sum() == self.key_notes:  # enough notes heard: keep the piece in their key
                    _, tonic = best_diatonic_scale(np.repeat(np.arange(12), counts))
                    self._scale[row] = _scale_row(scale_pitch_classes(tonic))

    # -- masking -------------------------------------------------------------------------
    def allowed(self) -> np.ndarray:
        """Boolean ``[B, 20096]`` mask of the legal tokens for every row in the current state."""
        n_rows = len(self._time)
        time = self._time
        sounding = self._start >= 0
        n_sounding = sounding.sum(axis=1)
        wait_limit = np.full(n_rows, MAX_WAIT, dtype=np.int64)
        overdue = np.zeros_like(sounding)
        if self.max_note_ticks is not None:
            held = np.where(sounding, time[:, None] - self._start, -1)
            overdue = held >= self.max_note_ticks
            room = self.max_note_ticks - held.max(axis=1, initial=-1)
            wait_limit = np.where(n_sounding > 0, np.minimum(wait_limit, room), wait_limit)
        forced = overdue.any(axis=1)
        can_on = ~forced
        end_ok = n_sounding == 0
        if self.max_polyphony is not None:
            can_on &= n_sounding < self.max_polyphony
        if self.target_ticks is not None:
            wait_limit = np.minimum(wait_limit, self.max_end - time)
            can_on &= time < self.target_ticks
            end_ok &= time >= self.min_end
        wait_limit[forced] = 0

        mask = np.zeros((n_rows, VOCAB_SIZE), dtype=bool)
        mask[:, WAIT_FIRST:NOTE_BASE] = np.arange(1, MAX_WAIT + 1)[None, :] <= wait_limit[:, None]
        notes = mask[:, NOTE_BASE:].reshape(n_rows, N_KEYS, N_VEL)  # a view into mask
        notes[:, :, 0] = np.where(forced[:, None], overdue, sounding)
        start_ok = self._can_start[None, :] & ~sounding & can_on[:, None]
        if self.key is not None and math.isinf(self.scale_penalty):
            start_ok &= self._in_scale()
        notes[:, :, 1:] = start_ok[:, :, None]
        mask[:, list(self.end_tokens)] = end_ok[:, None]
        return mask

    def _in_scale(self) -> np.ndarray:
        """``[B, N_KEYS]``: the key's pitch class is in the row's scale, or the key is a drum."""
        return self._scale[:, self._key_pc] | ~self._pitched[None, :]

    def end_bias_now(self) -> np.ndarray:
        """Bias ``[B]`` added to the end tokens: 0 at the minimum length, ``end_bias`` at the maximum."""
        if self.target_ticks is None:
            return np.zeros(len(self._time))
        span = max(self.max_end - self.min_end, 1)
        return self.end_bias * np.clip((self._time - self.min_end) / span, 0.0, 1.0)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        if scores.shape != (len(self._time), VOCAB_SIZE):
            raise SamplingValueError(
                f"{self.rule}: scores have shape {scores.shape}, expected ({len(self._time)}, {VOCAB_SIZE}) "
                "(batch from reset(), MIDI vocabulary)"
            )
        out = np.where(self.allowed(), scores, np.array(-np.inf, dtype=scores.dtype))
        if self.key is not None and not math.isinf(self.scale_penalty):  # out-of-key note-ons: penalised
            off_key = ~self._in_scale()  # [B, N_KEYS]
            notes = out[:, NOTE_BASE:].reshape(len(self._time), N_KEYS, N_VEL)
            notes[:, :, 1:] -= (off_key * self.scale_penalty).astype(scores.dtype)[:, :, None]
        bias = self.end_bias_now().astype(scores.dtype)
        for t in self.end_tokens:
            out[:, t] += bias
        return out


__all__ = [
    "BIN_NAMES",
    "DRUM_BINS",
    "MS_PER_WAIT",
    "MidiConstraint",
    "VOCAB_SIZE",
    "note_token",
    "wait_token",
]
