"""Checks of the runtime values every backend takes from outside: thread counts and device indices."""

from __future__ import annotations

import os
from typing import Any

from rwkv_music.errors import OptionError

# More threads than cores only adds contention; far more (10**6) makes the runtimes crash (SIGSEGV in
# torch, onnxruntime and ncnn alike), so a count is refused above four per core.
MAX_THREADS = 4 * (os.cpu_count() or 1)


def check_threads(threads: Any, backend: str) -> int | None:
    """``threads`` as an int in 1..MAX_THREADS, or None (the runtime's default)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        try:
            if isinstance(threads, bool) or float(threads) != int(threads):
                raise ValueError
            threads = int(threads)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"threads must be a whole number, got {threads!r}") from None
    if not 1 <= threads <= MAX_THREADS:
        raise OptionError(f"threads must be 1-{MAX_THREADS} on this machine ({os.cpu_count()} CPUs) for the "
                          f"{backend} backend, got {threads}")
    return threads


def device_index(device: str, backend: str) -> int:
    """The N of ``"cuda:N"`` / ``"vulkan:N"`` (0 when absent), or :class:`OptionError`."""
    text = device.partition(":")[2]
    if not text:
        return 0
    if not text.isdigit() or len(text) > 4:
        raise OptionError(f"device {device!r}: the index after ':' must be a number (e.g. cuda:0), for the "
                          f"{backend} backend")
    return int(text)


# Pieces of one compose call are generated together, one batch row each (a recurrent state and a
# logits row apiece): -n 10**9 would build a billion-row plan before anything else failed.
MAX_ROWS = 4096


def check_rows(n: Any, name: str = "n") -> int:
    """``n`` (pieces of one call) as an int in 1..MAX_ROWS, or :class:`OptionError`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ROWS:
        raise OptionError(f"{name} must be an integer 1-{MAX_ROWS} (the pieces of one call form one batch; "
                          f"render more with 'rwkv-music render'), got {n!r}")
    return n
