""":class:`~rwkv_music.formats.midi.constraint.MidiConstraint`'s mask in C (``fast_mask.c``), built on first use.

The numpy path (a cached NaN/-inf template, rows rewritten when their flags change, ``fmin`` after a copy
of the scores) stays the reference and the fallback: it runs where no C compiler is found or
``RWKV_MUSIC_NATIVE=0``.  Tests drive both on the same states and require the same scores.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

import rwkv_music.native_build as native_build

_P, _I64 = ctypes.c_void_p, ctypes.c_int64


class MidiRules(ctypes.Structure):
    """``midi_rules`` in ``fast_mask.c``: the vocabulary layout and a constraint's settings (-1: none)."""

    _fields_ = [(name, ctypes.c_int64) for name in (
        "vocab", "first_wait", "n_waits", "first_note", "n_keys", "n_vel", "max_note_ticks", "max_polyphony",
        "target_ticks", "min_end", "max_end", "end_mask", "use_scale")]


LIBRARY = native_build.Library(
    (Path(__file__).with_name("fast_mask.c"),), "rwkv_music_midi_mask",
    {"rwkv_midi_mask": ([_P, _P, _I64, ctypes.POINTER(MidiRules), _P, _P, _P, _P, _P, _P, _P, _P], ctypes.c_int)},
)


def kernel() -> Any:
    """``rwkv_midi_mask``, or None where the numpy path runs."""
    lib = LIBRARY.get()
    return None if lib is None else lib.rwkv_midi_mask


def mask_into(rules: MidiRules, src: np.ndarray, out: np.ndarray, start: np.ndarray, time: np.ndarray,
              n_sounding: np.ndarray, earliest: np.ndarray, can_start: np.ndarray, pitched: np.ndarray,
              key_pc: np.ndarray, scale: np.ndarray) -> bool:
    """Write ``src`` masked by the rules into ``out`` (float32 ``[B, vocab]``, C order; may be ``src``); False
    (nothing written) where the kernel cannot run on these arrays."""
    fn = kernel()
    if fn is None:
        return False
    B = time.shape[0]
    shape = (B, rules.vocab)
    _plain = native_build.plain
    if not (src.shape == out.shape == shape and _plain(src, np.float32) and _plain(out, np.float32)
            and _plain(start, np.int64) and _plain(time, np.int64) and _plain(n_sounding, np.int64)
            and _plain(earliest, np.int64) and _plain(scale, np.bool_) and start.shape == (B, rules.n_keys)
            and scale.shape == (B, 12)):
        return False
    at = native_build.address
    fn(at(src), at(out), B, ctypes.byref(rules), at(start), at(time), at(n_sounding), at(earliest),
       at(can_start), at(pitched), at(key_pc), at(scale))
    return True
