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

import functools
import math
from typing import Any, Sequence

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.midi import fast_mask
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
        self._can_start, self._pitched, self._key_pc, self._heads = _static_tables(
            frozenset(bins), int(low), int(high), self.ranges, self.end_tokens)
        if not self._can_start.any():
            raise SamplingValueError(
                f"instruments {', '.join(BIN_NAMES[b] for b in sorted(bins))}: no pitch left in pitch_range "
                f"{self.pitch_range} and their ranges"
            )
        self._auto_key = self.key is not None and self.key.lower() == "auto"
        self._scale_masks = self.key is not None and math.isinf(self.scale_penalty)  # else: penalised
        self._scale = np.ones((0, 12), dtype=bool)  # per row: pitch classes a pitched note may start on
        self._pc_counts = np.zeros((0, 12), dtype=np.int64)  # per row: pitched note-ons until the key settles
        self._settled: set[int] = set()  # rows whose "auto" key is settled
        self._start = np.zeros((0, N_KEYS), dtype=np.int64)  # tick a sounding note began, -1 = silent
        self._time = np.zeros(0, dtype=np.int64)  # ticks since the piece began
        # kept by _advance so that a step needs no [B, N_KEYS] pass (_row_rules):
        self._n_sounding = np.zeros(0, dtype=np.int64)  # notes sounding per row
        self._earliest = np.zeros(0, dtype=np.int64)  # start of the longest-held sounding note, -1 = none
        self._tmpl: np.ndarray | None = None  # [B, V] float32 mask cache (_template), None = rebuild
        self._tmpl_rows: set[int] = set()  # rows whose note cells must all be rewritten
        self._tmpl_keys: list[tuple[int, int]] = []  # (row, key) cells whose note changed
        self._tmpl_can_on = self._tmpl_forced = np.zeros(0, dtype=bool)  # per row: the flags the cache was written with
        self.native = True  # the mask in C (fast_mask.c) where it builds; False: the numpy template (the reference)
        self._piece: Any = None  # _piece_args: this constraint's arrays for the pooled kernel, and ...
        self._piece_of: Any = None  # ... the _start array they were taken from
        none = -1  # (the kernel's "no limit")
        self._rules_c = fast_mask.MidiRules(
            vocab=VOCAB_SIZE, first_wait=WAIT_FIRST, n_waits=MAX_WAIT, first_note=NOTE_BASE, n_keys=N_KEYS,
            n_vel=N_VEL, max_note_ticks=none if self.max_note_ticks is None else self.max_note_ticks,
            max_polyphony=none if max_polyphony is None else max_polyphony,
            target_ticks=none if self.target_ticks is None else self.target_ticks,
            min_end=self.min_end or 0, max_end=self.max_end or 0,
            end_mask=sum(1 << t for t in self.end_tokens), use_scale=int(self._scale_masks),
            key_notes=self.key_notes)

    @classmethod
    def piano_only(cls, **kwargs: object) -> "MidiConstraint":
        """Only piano notes (ChatRWKV's piano mode, D3 step 4), no drums."""
        return cls(("piano",), drums=False, **kwargs)  # type: ignore[arg-type]

    # -- per-row state -----------------------------------------------------------------
    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        self._start = np.full((len(prompts), N_KEYS), -1, dtype=np.int64)
        self._time = np.zeros(len(prompts), dtype=np.int64)
        self._n_sounding = np.zeros(len(prompts), dtype=np.int64)
        self._earliest = np.full(len(prompts), -1, dtype=np.int64)
        self._scale = np.ones((len(prompts), 12), dtype=bool)
        if self._fixed_scale is not None:
            self._scale[:] = self._fixed_scale
        self._pc_counts = np.zeros((len(prompts), 12), dtype=np.int64)
        self._settled = set()
        self._tmpl = None
        for row, prompt in enumerate(prompts):
            for t in prompt:
                self._advance(row, int(t), where="prompt")

    def update(self, tokens: Sequence[int]) -> None:
        if len(tokens) != len(self._time):
            raise SamplingValueError(f"{self.rule}: update got {len(tokens)} tokens for a batch of {len(self._time)}")
        for row, t in enumerate(tokens):
            self._advance(row, int(t), where="update")

    @classmethod
    def update_rows(cls, procs: Sequence["MidiConstraint"], tokens: Sequence[int]) -> None:
        """``procs[r].update([tokens[r]])`` for every piece of a render's pool (one-row constraints): waits,
        notes and the pitch classes an "auto" key hears in one kernel call (``rwkv_midi_update_pieces``, 11 us
        a piece in Python), the rest (an end token, the note-on that settles an "auto" key, an id outside the
        vocabulary) by the piece's own :meth:`update`.  The same states as :meth:`update` (tested)."""
        pieces = cls._pieces_of(procs)
        left = None
        if pieces:
            counting = np.array([p._auto_key and 0 not in p._settled for p in procs], dtype=np.uint8)
            left = fast_mask.update_pieces(pieces, np.asarray(tokens, dtype=np.int64), counting)
        for r, proc in enumerate(procs):
            if left is None or left[r]:
                proc.update([int(tokens[r])])
            else:
                proc._tmpl = None  # (the numpy mask's cache did not see this token: rebuilt if it runs again)

    def _advance(self, row: int, t: int, where: str) -> None:
        if not 0 <= t < VOCAB_SIZE:
            raise SamplingValueError(
                f"{self.rule}: {where} token {t} in row {row} is outside the MIDI vocabulary (0..{VOCAB_SIZE - 1})"
            )
        if t < WAIT_FIRST:  # <pad>, <start>, <end>: a new piece begins
            if self._time[row] or self._n_sounding[row]:  # (finished rows get <pad> every step)
                self._tmpl_rows.add(row)
                self._start[row] = -1
                self._time[row] = self._n_sounding[row] = 0
                self._earliest[row] = -1
        elif t < NOTE_BASE:
            self._time[row] += t - WAIT_FIRST + 1
        else:
            key, vel = divmod(t - NOTE_BASE, N_VEL)
            # note-on of a sounding note restarts it (the decoder re-triggers, C4); orphan offs in a prompt are ignored
            starts = self._start[row]
            was = int(starts[key])
            now = int(self._time[row]) if vel else -1
            starts[key] = now
            if was < 0:
                if now >= 0:
                    self._n_sounding[row] += 1
                    if self._earliest[row] < 0:
                        self._earliest[row] = now
            else:
                if now < 0:
                    self._n_sounding[row] -= 1
                if was == self._earliest[row]:  # the longest-held note ended or restarted
                    self._earliest[row] = starts[starts >= 0].min() if self._n_sounding[row] else -1
            self._tmpl_keys.append((row, key))
            if vel and self._auto_key and row not in self._settled and self._pitched[key]:
                counts = self._pc_counts[row]
                counts[self._key_pc[key]] += 1
                if counts.sum() == self.key_notes:  # enough notes heard: keep the piece in their key
                    _, tonic = best_diatonic_scale(np.repeat(np.arange(12), counts))
                    self._scale[row] = _scale_row(scale_pitch_classes(tonic))
                    self._settled.add(row)
                    self._tmpl_rows.add(row)

    # -- masking -------------------------------------------------------------------------
    def _rules(self) -> tuple[np.ndarray, ...]:
        """Per row, this step: ``sounding`` and ``overdue`` ``[B, N_KEYS]``, ``forced``, ``wait_limit``,
        ``can_on`` and ``end_ok`` ``[B]`` (the rules of the class docstring)."""
        n_rows = len(self._time)
        time = self._time
        sounding = self._start >= 0
        n_sounding = np.count_nonzero(sounding, axis=1)
        wait_limit = np.full(n_rows, MAX_WAIT, dtype=np.int64)
        overdue = np.zeros_like(sounding)
        forced = np.zeros(n_rows, dtype=bool)
        if self.max_note_ticks is not None:
            # the longest-held note began first: held.max() is time - the earliest start (-1 if none sounds)
            never = np.iinfo(np.int64).max
            earliest = np.where(sounding, self._start, never).min(axis=1, initial=never)
            longest = np.where(n_sounding > 0, time - earliest, -1)
            forced = longest >= self.max_note_ticks  # some note is overdue
            if forced.any():
                rows = np.flatnonzero(forced)
                overdue[rows] = sounding[rows] & (time[rows, None] - self._start[rows] >= self.max_note_ticks)
            room = self.max_note_ticks - longest
            wait_limit = np.where(n_sounding > 0, np.minimum(wait_limit, room), wait_limit)
        wait_limit, can_on, end_ok = self._limits(time, n_sounding, forced, wait_limit)
        return sounding, overdue, forced, wait_limit, can_on, end_ok

    def allowed(self) -> np.ndarray:
        """Boolean ``[B, 20096]`` mask of the legal tokens for every row in the current state.

        Built from scratch each call: the reference for the cached mask :meth:`process` applies.
        """
        sounding, overdue, forced, wait_limit, can_on, end_ok = self._rules()
        n_rows = len(self._time)
        mask = np.zeros((n_rows, VOCAB_SIZE), dtype=bool)
        mask[:, WAIT_FIRST:NOTE_BASE] = np.arange(1, MAX_WAIT + 1)[None, :] <= wait_limit[:, None]
        notes = mask[:, NOTE_BASE:].reshape(n_rows, N_KEYS, N_VEL)  # a view into mask
        notes[:, :, 0] = np.where(forced[:, None], overdue, sounding)
        start_ok = self._can_start[None, :] & ~sounding & can_on[:, None]
        if self._scale_masks:
            start_ok &= self._in_scale()
        notes[:, :, 1:] = start_ok[:, :, None]
        mask[:, list(self.end_tokens)] = end_ok[:, None]
        return mask

    def _row_rules(self) -> tuple[np.ndarray, ...]:
        """``forced``, ``wait_limit``, ``can_on`` and ``end_ok`` ``[B]`` as :meth:`_rules` gives them, from the
        per-row counters :meth:`_advance` keeps (no pass over the ``[B, N_KEYS]`` note table)."""
        time, n_sounding = self._time, self._n_sounding
        if len(time) == 1:
            return self._one_row_rules()
        any_on = n_sounding > 0
        if self.max_note_ticks is not None:
            longest = np.where(any_on, time - self._earliest, -1)  # ticks the longest-held note has sounded
            forced = longest >= self.max_note_ticks
            wait_limit = np.where(any_on, np.minimum(MAX_WAIT, self.max_note_ticks - longest), MAX_WAIT)
        else:
            forced = np.zeros(len(time), dtype=bool)
            wait_limit = np.full(len(time), MAX_WAIT, dtype=np.int64)
        return (forced, *self._limits(time, n_sounding, forced, wait_limit))

    def _one_row_rules(self) -> tuple[np.ndarray, ...]:
        """:meth:`_row_rules` of a one-row batch in Python scalars (9.7 -> ~2 us a step at B = 1)."""
        now, n_on = int(self._time[0]), int(self._n_sounding[0])
        forced, wait = False, MAX_WAIT
        if self.max_note_ticks is not None and n_on > 0:
            longest = now - int(self._earliest[0])
            forced = longest >= self.max_note_ticks
            wait = min(MAX_WAIT, self.max_note_ticks - longest)
        can_on, end_ok = not forced, n_on == 0
        if self.max_polyphony is not None:
            can_on = can_on and n_on < self.max_polyphony
        if self.target_ticks is not None:
            wait = min(wait, self.max_end - now)
            can_on = can_on and now < self.target_ticks
            end_ok = end_ok and now >= self.min_end
        if forced:
            wait = 0
        return (np.array([forced]), np.array([wait], dtype=np.int64), np.array([can_on]), np.array([end_ok]))

    def _limits(self, time: np.ndarray, n_sounding: np.ndarray, forced: np.ndarray,
                wait_limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``wait_limit``, ``can_on``, ``end_ok`` [B] from the hold rule's result: polyphony and the
        target length (shared by :meth:`_rules` and :meth:`_row_rules`)."""
        can_on = ~forced
        end_ok = n_sounding == 0
        if self.max_polyphony is not None:
            can_on &= n_sounding < self.max_polyphony
        if self.target_ticks is not None:
            wait_limit = np.minimum(wait_limit, self.max_end - time)
            can_on &= time < self.target_ticks
            end_ok &= time >= self.min_end
        wait_limit[forced] = 0
        return wait_limit, can_on, end_ok

    def _template(self) -> np.ndarray:
        """``[B, 20096]`` float32: NaN where :meth:`allowed` is True, -inf where it is False.

        ``np.fmin(scores, template)`` is then ``np.where(allowed, scores, -inf)`` for every score (NaN
        included: fmin returns the other operand of a NaN), in one branch-free pass instead of a masked
        write.  The cache is kept between steps: the first 128 columns (specials and waits) are written
        every step; a note's 12 cells when it starts or ends; a row's note cells all when the row starts a
        piece, settles its key, or its ``can_on`` / ``forced`` flags change (and every step while forced,
        since the note-offs then follow the overdue notes).
        """
        forced, wait_limit, can_on, end_ok = self._row_rules()
        n_rows = len(self._time)
        tmpl = self._tmpl
        if tmpl is None or tmpl.shape[0] != n_rows:
            tmpl = self._tmpl = np.empty((n_rows, VOCAB_SIZE), dtype=np.float32)
            full = np.arange(n_rows)
        else:
            changed = (can_on != self._tmpl_can_on) | forced | self._tmpl_forced
            if self._tmpl_rows:
                changed[list(self._tmpl_rows)] = True
            full = np.flatnonzero(changed)
        tmpl[:, :NOTE_BASE] = self._heads[end_ok * (MAX_WAIT + 1) + np.maximum(wait_limit, 0)]
        notes = np.reshape(tmpl[:, NOTE_BASE:], (n_rows, N_KEYS, N_VEL), copy=False)
        yes, no = np.float32(np.nan), np.float32(-np.inf)
        cells = self._tmpl_keys
        if full.size:
            starts = self._start[full]
            sounding = starts >= 0
            off_ok = sounding
            if forced[full].any():  # only the overdue notes may end
                late = (self._time[full, None] - starts >= self.max_note_ticks) | ~forced[full, None]
                off_ok = sounding & late
            start_ok = self._can_start[None, :] & ~sounding & can_on[full, None]
            if self._scale_masks:
                start_ok &= self._scale[full][:, self._key_pc] | ~self._pitched[None, :]
            notes[full, :, 0] = np.where(off_ok, yes, no)
            notes[full, :, 1:] = np.where(start_ok, yes, no)[:, :, None]
            done = set(full.tolist())
            cells = [(r, k) for r, k in cells if r not in done]
        # (a cell's row is not forced here: a forced row is rewritten in full)
        if len(cells) <= 4:  # the usual step at a small batch: a few cells, as scalars (no array calls)
            for r, k in cells:
                on = self._start[r, k] >= 0
                ok = not on and self._can_start[k] and can_on[r] and (
                    not self._scale_masks or self._scale[r, self._key_pc[k]] or not self._pitched[k])
                notes[r, k, 0] = yes if on else no
                notes[r, k, 1:] = yes if ok else no
        else:
            rows, keys = np.array(cells, dtype=np.int64).T
            on = self._start[rows, keys] >= 0
            start_ok = self._can_start[keys] & ~on & can_on[rows]
            if self._scale_masks:
                start_ok &= self._scale[rows, self._key_pc[keys]] | ~self._pitched[keys]
            notes[rows, keys, 0] = np.where(on, yes, no)
            notes[rows, keys, 1:] = np.where(start_ok, yes, no)[:, None]
        self._tmpl_rows.clear()
        self._tmpl_keys.clear()
        self._tmpl_can_on, self._tmpl_forced = can_on, forced
        return tmpl

    def _in_scale(self) -> np.ndarray:
        """``[B, N_KEYS]``: the key's pitch class is in the row's scale, or the key is a drum."""
        return self._scale[:, self._key_pc] | ~self._pitched[None, :]

    def end_bias_now(self) -> np.ndarray:
        """Bias ``[B]`` added to the end tokens: 0 at the minimum length, ``end_bias`` at the maximum."""
        if self.target_ticks is None:
            return np.zeros(len(self._time))
        span = max(self.max_end - self.min_end, 1)
        if len(self._time) == 1:  # (the same float64 arithmetic on a scalar)
            return np.array([self.end_bias * min(max((int(self._time[0]) - self.min_end) / span, 0.0), 1.0)])
        return self.end_bias * np.clip((self._time - self.min_end) / span, 0.0, 1.0)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        return self.apply_inplace(step, np.array(scores, dtype=scores.dtype))

    def apply_inplace(self, step: int, scores: np.ndarray) -> np.ndarray:
        """:meth:`process` written into ``scores`` (a numpy array the caller owns); returns it.

        Equal to ``np.where(self.allowed(), scores, -inf)`` followed by the scale penalty and the end bias.
        """
        return self.apply_into(step, scores, scores)

    def apply_into(self, step: int, scores: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`process` of ``scores`` written into ``out`` (float32, the same shape; may be ``scores``),
        which is returned: the decode loop's working copy made by the mask's own pass."""
        if scores.shape != (len(self._time), VOCAB_SIZE):
            raise SamplingValueError(
                f"{self.rule}: scores have shape {scores.shape}, expected ({len(self._time)}, {VOCAB_SIZE}) "
                "(batch from reset(), MIDI vocabulary)"
            )
        if self.native and fast_mask.mask_into(self._rules_c, scores, out, self._start, self._time,
                                               self._n_sounding, self._earliest, self._can_start, self._pitched,
                                               self._key_pc, self._scale):
            self._masked_natively()
        else:
            np.fmin(scores, self._template(), out=out)
        return self._penalise_and_bias(out)

    @classmethod
    def apply_rows(cls, procs: Sequence["MidiConstraint"], scores: np.ndarray) -> bool:
        """Row r of ``scores`` (float32 ``[P, V]``, the caller's to write) processed by ``procs[r]``, each a
        one-row constraint of its own (the pieces of a render's pool), with one kernel call for the masks;
        False (nothing written) where that cannot run, and the caller processes the rows one by one.

        Row r ends as ``procs[r].apply_inplace(step, scores[r : r + 1])`` leaves it (tested)."""
        pieces = cls._pieces_of(procs)
        if pieces is None or not fast_mask.mask_pieces(scores, scores, pieces):
            return False
        for r, proc in enumerate(procs):
            proc._masked_natively()
            proc._penalise_and_bias(scores[r : r + 1])
        return True

    # -- on an accelerator: the mask built where the scores are ------------------------------
    def apply_device(self, step: int, scores: Any) -> Any:
        """:meth:`process` of a torch tensor on its own device (a GPU's logits), or None where the kernel does
        not run (the caller then takes the host path): this step's rules cross to the device as flags, a byte
        a key and row (1.7 KB a row where the scores would take 80 KB each way), and the mask, the scale
        penalty and the end bias are torch operations there.  The same scores as :meth:`process`."""
        if tuple(scores.shape) != (len(self._time), VOCAB_SIZE) or not self.native:
            return None
        found = fast_mask.flags(self._rules_c, self._start, self._time, self._n_sounding, self._earliest,
                                self._can_start, self._pitched, self._key_pc, self._scale)
        if found is None:
            return None
        self._masked_natively()
        return _finish_on_device(scores, found, [self])

    @classmethod
    def apply_rows_device(cls, procs: Sequence["MidiConstraint"], scores: Any) -> Any:
        """:meth:`apply_rows` of a torch tensor on its device (row r by ``procs[r]``, one-row constraints), as
        :meth:`apply_device` does it for one constraint: the result (a new tensor), or None (nothing done)."""
        pieces = cls._pieces_of(procs)
        if pieces is None or tuple(scores.shape) != (len(procs), VOCAB_SIZE):
            return None
        found = fast_mask.flags_pieces(pieces)
        if found is None:
            return None
        for proc in procs:
            proc._masked_natively()
        return _finish_on_device(scores, found, procs)

    @classmethod
    def _pieces_of(cls, procs: Sequence["MidiConstraint"]) -> list[Any] | None:
        """The pool's one-row constraints as the kernel's pieces, or None where one cannot be (another class,
        the numpy path, more than one row)."""
        pieces = []
        for proc in procs:
            piece = proc._piece_args() if type(proc) is cls and proc.native else None
            if piece is None:
                return None
            pieces.append(piece)
        return pieces

    def _piece_args(self) -> Any:
        """This one-row constraint for the pooled kernel, made once per :meth:`reset` (which replaces the
        state arrays; every other change is in place)."""
        if self._piece_of is not self._start:
            self._piece = fast_mask.piece_args(self._rules_c, self._start, self._time, self._n_sounding,
                                               self._earliest, self._can_start, self._pitched, self._key_pc,
                                               self._scale, self._pc_counts)
            self._piece_of = self._start
        return self._piece

    def _masked_natively(self) -> None:
        self._tmpl = None  # the template cache was not kept: the numpy path rebuilds it if it runs again
        if self._tmpl_keys:
            self._tmpl_keys.clear()
            self._tmpl_rows.clear()

    def _penalise_and_bias(self, out: np.ndarray) -> np.ndarray:
        """The scale penalty and the end bias, after the mask."""
        if self.key is not None and not self._scale_masks:  # out-of-key note-ons: penalised
            off_key = ~self._in_scale()  # [B, N_KEYS]
            notes = np.reshape(out[:, NOTE_BASE:], (len(self._time), N_KEYS, N_VEL), copy=False)
            notes[:, :, 1:] -= (off_key * self.scale_penalty).astype(out.dtype)[:, :, None]
        if self.target_ticks is not None:  # (without a target the end bias is 0)
            bias = self.end_bias_now().astype(out.dtype)
            for t in self.end_tokens:
                out[:, t] += bias
        return out


@functools.lru_cache(maxsize=64)
def _static_tables(bins: frozenset[int], low: int, high: int, ranges: bool,
                   end_tokens: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A constraint's tables that depend on its settings alone, made once per settings and shared, read-only:
    ``can_start`` (a key's note-on allowed at all), ``pitched``, ``key_pc`` (pitch class), all ``[N_KEYS]``, and
    the heads (below).  A render makes a constraint per piece: building them was most of its 0.25 ms."""
    pitch = np.arange(N_PITCH)
    per_bin = []
    for b in range(N_BINS):
        lo, hi = low, high
        if ranges and BIN_NAMES[b] in INSTRUMENT_RANGES:  # the instrument's playable range too
            lo, hi = max(lo, INSTRUMENT_RANGES[BIN_NAMES[b]][0]), min(hi, INSTRUMENT_RANGES[BIN_NAMES[b]][1])
        unpitched = BIN_NAMES[b] == "percussion"  # drum-kit keys: the pitch picks a drum, no range
        per_bin.append(np.full(N_PITCH, b in bins) & (unpitched | ((pitch >= lo) & (pitch <= hi))))
    can_start = np.concatenate(per_bin)
    pitched = np.concatenate([np.full(N_PITCH, b not in DRUM_BINS) for b in range(N_BINS)])
    key_pc = np.tile(np.arange(N_PITCH) % 12, N_BINS)
    # The first 128 template columns (specials and waits) for each (end_ok, wait limit 0..MAX_WAIT),
    # row end_ok * (MAX_WAIT + 1) + limit: one gather per step writes them.
    head = np.zeros((2, MAX_WAIT + 1, NOTE_BASE), dtype=bool)
    head[:, :, WAIT_FIRST:] = np.arange(1, MAX_WAIT + 1)[None, :] <= np.arange(MAX_WAIT + 1)[:, None]
    head[1, :, list(end_tokens)] = True
    heads = np.where(head, np.float32(np.nan), np.float32(-np.inf)).reshape(-1, NOTE_BASE)
    tables = (can_start, pitched, key_pc, heads)
    for table in tables:
        table.setflags(write=False)
    return tables


def _finish_on_device(scores: Any, found: tuple, owners: Sequence[MidiConstraint]) -> Any:
    """``scores`` (torch ``[B, V]``) masked by the kernel's flags, then each owner's scale penalty and end bias,
    as :meth:`MidiConstraint._penalise_and_bias` gives them, on its rows (the owners cover the rows in order:
    one constraint all of them, or a pool's pieces one each); a new tensor on the scores' device.  The mask
    keeps a legal score as it is and puts -inf elsewhere, as the host kernel; the penalty and the bias are
    the host's float32 values, subtracted and added there."""
    import torch

    heads, wait, keys = found
    dev, n = scores.device, scores.shape[0]
    to = {"device": dev, "non_blocking": True}
    keys_t = torch.from_numpy(keys).to(**to)
    notes = torch.cat([(keys_t & 1).bool()[:, :, None], (keys_t >= 2)[:, :, None].expand(n, N_KEYS, N_VEL - 1)],
                      dim=2).reshape(n, N_KEYS * N_VEL)
    waits = torch.arange(1, MAX_WAIT + 1, device=dev)[None, :] <= torch.from_numpy(wait).to(**to)[:, None]
    legal = torch.cat([torch.from_numpy(heads).to(**to).bool(), waits, notes], dim=1)
    out = torch.where(legal, scores, torch.tensor(float("-inf"), dtype=scores.dtype, device=dev))
    pen_rows, pens, bias_rows, bias_ids, biases = [], [], [], [], []
    first = 0
    for c in owners:
        rows = list(range(first, first + len(c._time)))
        first += len(rows)
        if c.key is not None and not c._scale_masks:  # out-of-key note-ons: a finite penalty, not a mask
            pen_rows += rows
            pens.append((~c._in_scale() * c.scale_penalty).astype(np.float32))
        if c.target_ticks is not None:
            bias = c.end_bias_now().astype(np.float32)
            for t in c.end_tokens:
                bias_rows += rows
                bias_ids += [t] * len(rows)
                biases.append(bias)
    if pen_rows:
        notes_out = out[:, NOTE_BASE:].view(n, N_KEYS, N_VEL)
        pen = torch.from_numpy(np.concatenate(pens)).to(device=dev, dtype=out.dtype)
        notes_out[torch.tensor(pen_rows, device=dev), :, 1:] -= pen[:, :, None]
    if bias_rows:
        out.index_put_((torch.tensor(bias_rows, device=dev), torch.tensor(bias_ids, device=dev)),
                       torch.from_numpy(np.concatenate(biases)).to(device=dev, dtype=out.dtype), accumulate=True)
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
