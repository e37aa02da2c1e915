""":class:`~rwkv_music.formats.midi.constraint.MidiConstraint`'s mask in C (``fast_mask.c``), built on first use.

The numpy path (a cached NaN/-inf template, rows rewritten when their flags change, ``fmin`` after a copy
of the scores) stays the reference and the fallback: it runs where no C compiler is found or
``RWKV_MUSIC_NATIVE=0``.  Tests drive both on the same states and require the same scores.

For scores on a GPU the kernel writes the same rules as flags instead (:func:`flags`, :func:`flags_pieces`:
a byte per key and row, the legal specials and the longest legal wait), from which
:meth:`MidiConstraint.apply_device` builds the mask where the scores are; the scores never come to the host.
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
        "target_ticks", "min_end", "max_end", "end_mask", "use_scale", "key_notes")]


class MidiPiece(ctypes.Structure):
    """``midi_piece`` in ``fast_mask.c``: one one-row constraint's rules and state arrays, by address."""

    _fields_ = [("rules", ctypes.POINTER(MidiRules))] + [(name, _P) for name in (
        "start", "time", "n_sounding", "earliest", "key_pc", "can_start", "pitched", "scale", "pc_counts")]


LIBRARY = native_build.Library(
    (Path(__file__).with_name("fast_mask.c"),), "rwkv_music_midi_mask",
    {"rwkv_midi_mask": ([_P, _P, _I64, ctypes.POINTER(MidiRules), _P, _P, _P, _P, _P, _P, _P, _P], ctypes.c_int),
     "rwkv_midi_mask_pieces": ([_P, _P, _I64, _P], ctypes.c_int),
     "rwkv_midi_flags": ([_I64, ctypes.POINTER(MidiRules), _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P], ctypes.c_int),
     "rwkv_midi_flags_pieces": ([_I64, _P, _P, _P, _P], ctypes.c_int),
     "rwkv_midi_update_pieces": ([_I64, _P, _P, _P, _P], ctypes.c_int)},
)

Flags = tuple  # (heads uint8 [B, first_wait], wait int64 [B], keys uint8 [B, n_keys]): see rwkv_midi_flags


def kernel() -> Any:
    """``rwkv_midi_mask``, or None where the numpy path runs."""
    lib = LIBRARY.get()
    return None if lib is None else lib.rwkv_midi_mask


def _readable(rules: MidiRules, start: np.ndarray, time: np.ndarray, n_sounding: np.ndarray, earliest: np.ndarray,
              scale: np.ndarray) -> bool:
    """A constraint's state arrays as the kernels read them: int64 / bool, C order, one batch of rows."""
    B = time.shape[0]
    _plain = native_build.plain
    return (n_sounding.shape == earliest.shape == (B,) and start.shape == (B, rules.n_keys) and scale.shape == (B, 12)
            and _plain(start, np.int64) and _plain(time, np.int64) and _plain(n_sounding, np.int64)
            and _plain(earliest, np.int64) and _plain(scale, np.bool_))


def _table(pieces: list[MidiPiece]) -> Any:
    """The pieces' addresses as the ``const midi_piece* const*`` the pooled kernels take."""
    return (ctypes.c_void_p * len(pieces))(*[ctypes.addressof(p) for p in pieces])


def mask_into(rules: MidiRules, src: np.ndarray, out: np.ndarray, start: np.ndarray, time: np.ndarray,
              n_sounding: np.ndarray, earliest: np.ndarray, can_start: np.ndarray, pitched: np.ndarray,
              key_pc: np.ndarray, scale: np.ndarray) -> bool:
    """Write ``src`` masked by the rules into ``out`` (float32 ``[B, vocab]``, C order; may be ``src``); False
    (nothing written) where the kernel cannot run on these arrays."""
    fn = kernel()
    if fn is None:
        return False
    B = time.shape[0]
    _plain = native_build.plain
    if not (src.shape == out.shape == (B, rules.vocab) and _plain(src, np.float32) and _plain(out, np.float32)
            and _readable(rules, start, time, n_sounding, earliest, scale)):
        return False
    at = native_build.address
    fn(at(src), at(out), B, ctypes.byref(rules), at(start), at(time), at(n_sounding), at(earliest),
       at(can_start), at(pitched), at(key_pc), at(scale))
    return True


def flags(rules: MidiRules, start: np.ndarray, time: np.ndarray, n_sounding: np.ndarray, earliest: np.ndarray,
          can_start: np.ndarray, pitched: np.ndarray, key_pc: np.ndarray, scale: np.ndarray) -> Flags | None:
    """The rules :func:`mask_into` applies, as flags a mask is built from where the scores are (``fast_mask.c``,
    ``rwkv_midi_flags``), or None where the kernel cannot run on these arrays."""
    lib = LIBRARY.get()
    B = time.shape[0]
    if lib is None or not _readable(rules, start, time, n_sounding, earliest, scale):
        return None
    heads, wait = np.empty((B, rules.first_wait), np.uint8), np.empty(B, np.int64)
    keys = np.empty((B, rules.n_keys), np.uint8)
    at = native_build.address
    lib.rwkv_midi_flags(B, ctypes.byref(rules), at(start), at(time), at(n_sounding), at(earliest), at(can_start),
                        at(pitched), at(key_pc), at(scale), at(heads), at(wait), at(keys))
    return heads, wait, keys


def flags_pieces(pieces: list[MidiPiece]) -> Flags | None:
    """:func:`flags` of a pool, row r by ``pieces[r]`` (equal layouts), or None where the kernel cannot run."""
    lib = LIBRARY.get()
    if lib is None or not pieces:
        return None
    rules = pieces[0].rules.contents
    P = len(pieces)
    heads, wait = np.empty((P, rules.first_wait), np.uint8), np.empty(P, np.int64)
    keys = np.empty((P, rules.n_keys), np.uint8)
    at = native_build.address
    lib.rwkv_midi_flags_pieces(P, _table(pieces), at(heads), at(wait), at(keys))
    return heads, wait, keys


def update_pieces(pieces: list[MidiPiece], tokens: np.ndarray, counting: np.ndarray) -> np.ndarray | None:
    """Each piece's update token (``tokens[r]``) read into its state arrays where the kernel can
    (``rwkv_midi_update_pieces``: waits and notes, and the pitch classes an "auto" key hears where
    ``counting[r]``, short of the note that settles it); returns ``left`` (uint8 ``[P]``, 1: the piece was not
    touched and its token is the caller's to read), or None where the kernel cannot run."""
    lib = LIBRARY.get()
    P = len(pieces)
    if lib is None or not pieces or tokens.shape != (P,) or counting.shape != (P,):
        return None
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    counting = np.ascontiguousarray(counting, dtype=np.uint8)
    left = np.empty(P, np.uint8)
    at = native_build.address
    lib.rwkv_midi_update_pieces(P, _table(pieces), at(tokens), at(counting), at(left))
    return left


def piece_args(rules: MidiRules, start: np.ndarray, time: np.ndarray, n_sounding: np.ndarray, earliest: np.ndarray,
               can_start: np.ndarray, pitched: np.ndarray, key_pc: np.ndarray, scale: np.ndarray,
               pc_counts: np.ndarray) -> MidiPiece | None:
    """The :class:`MidiPiece` of a one-row constraint's arrays (valid while they live and are not replaced;
    :func:`update_pieces` writes the state ones), or None where the kernel cannot read them."""
    if time.shape != (1,) or not _readable(rules, start, time, n_sounding, earliest, scale):
        return None
    if pc_counts.shape != (1, 12) or not native_build.plain(pc_counts, np.int64):
        return None
    return MidiPiece(ctypes.pointer(rules), *(a.ctypes.data for a in (
        start, time, n_sounding, earliest, key_pc, can_start, pitched, scale, pc_counts)))


def mask_pieces(src: np.ndarray, out: np.ndarray, pieces: list[MidiPiece]) -> bool:
    """Row r of ``src`` masked by ``pieces[r]`` into ``out`` (float32 ``[P, vocab]``, C order; may be ``src``);
    False (nothing written) where the kernel cannot run."""
    lib = LIBRARY.get()
    if lib is None or not pieces:
        return False
    vocab = pieces[0].rules.contents.vocab
    if not (src.shape == out.shape == (len(pieces), vocab) and native_build.plain(src, np.float32)
            and native_build.plain(out, np.float32)):
        return False
    lib.rwkv_midi_mask_pieces(native_build.address(src), native_build.address(out), len(pieces), _table(pieces))
    return True
