""":class:`~rwkv_music.formats.abc.constraint.AbcConstraint`'s batch step over its grammar table in C
(``fast_table.c``), built on first use.

The numpy path stays the reference and the fallback (no C compiler, ``RWKV_MUSIC_NATIVE=0``); tests drive
both side by side and require the same scores, states and errors.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import rwkv_music.native_build as native_build

_P, _I64 = ctypes.c_void_p, ctypes.c_int64

LIBRARY = native_build.Library(
    (Path(__file__).with_name("fast_table.c"),), "rwkv_music_abc_table",
    {
        "rwkv_abc_mask": ([_P, _I64, _I64, _P, _P, _P, _P, _I64, _P, _P, _P, _P], None),
        "rwkv_abc_move": ([_I64, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _P], _I64),
    },
)


def kernels() -> Any:
    """The library, or None where the numpy path runs."""
    return LIBRARY.get()
