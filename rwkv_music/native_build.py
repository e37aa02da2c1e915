"""Building our C kernels with the system compiler: a cached shared library per source set, flags and CPU.

Torch-free, so the numpy-only paths (the sampling kernels behind the ONNX and ncnn backends) can
build theirs too.  A library is compiled once per machine (``-O3 -march=native -fopenmp`` where the
compiler takes them) into :func:`cache_dir` and reused; its file name carries a hash of the sources,
the flags and this CPU, so a changed source or a different machine builds a fresh copy.  Several
processes may build at once: each writes a temporary file and renames it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 180
# Tried in order: the first that compiles wins (no -march=native on compilers without it, no
# OpenMP where the compiler lacks it: the kernels then run on one thread).
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)
ENV_VAR = "RWKV_MUSIC_NATIVE"  # "0" turns every C kernel off; unset means on


def env_enabled() -> bool:
    """Whether ``RWKV_MUSIC_NATIVE`` leaves the C kernels on (0/false/no/off turns them off)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """``RWKV_MUSIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/rwkv_music`` (``~/.cache/rwkv_music``)."""
    env = os.environ.get("RWKV_MUSIC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkv_music"


def cpu_identity() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU model and flags."""
    ident = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    ident += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    return ident


def find_compiler() -> str | None:
    """``$CC``, else the first of cc, gcc, clang on the PATH (``None``: no compiler)."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_library(compiler: str, sources: Sequence[Path], stem: str, source_bytes: bytes | None = None,
                  flag_sets: Sequence[Sequence[str]] = FLAG_SETS, folder: Path | None = None) -> Path:
    """Compile ``sources`` into one shared library with the first flag set that works; the cached
    library's path.  ``source_bytes``: what the cache key hashes (default: the sources' contents).
    Raises ``RuntimeError`` naming each flag set's error when none works."""
    folder = folder or cache_dir() / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    if source_bytes is None:
        source_bytes = b"\0".join(Path(p).read_bytes() for p in sources)
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(source_bytes + " ".join([compiler, *flags]).encode() + cpu_identity().encode())
        target = folder / f"{stem}-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = [compiler, *flags, "-shared", "-fPIC", "-o", tmp, *map(str, sources), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{' '.join(flags)}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


class Library:
    """A kernel library built on first use from ``sources``: :meth:`get` gives the ctypes library with
    ``signatures`` (``{name: (argtypes, restype)}``) set, or None where it cannot run (no compiler, a
    failed build, ``check(lib)`` false, or ``RWKV_MUSIC_NATIVE=0``); :attr:`error` says why."""

    def __init__(self, sources: Sequence[Path], stem: str, signatures: dict[str, tuple[list, Any]],
                 check: Callable[[ctypes.CDLL], str | None] | None = None) -> None:
        self.sources, self.stem, self.signatures, self.check = tuple(sources), stem, signatures, check
        self.error: str | None = None
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._lock = threading.Lock()
        self._enabled: bool | None = None

    def enabled(self) -> bool:
        """``RWKV_MUSIC_NATIVE`` leaves the kernels on (read once)."""
        if self._enabled is None:
            self._enabled = env_enabled()
        return self._enabled

    def get(self) -> ctypes.CDLL | None:
        if self._lib is not None and self._enabled:  # the hot path: no lock once loaded
            return self._lib
        if not self.enabled():
            self.error = f"turned off by {ENV_VAR}=0"
            return None
        with self._lock:
            if self._tried:
                return self._lib
            self._tried = True
            compiler = find_compiler()
            if compiler is None:
                self.error = "no C compiler found (set CC, or install gcc)"
                return None
            names = ", ".join(p.name for p in self.sources)
            try:
                lib = ctypes.CDLL(str(build_library(compiler, self.sources, self.stem)))
                for name, (args, result) in self.signatures.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = args, result
            except (OSError, RuntimeError, AttributeError) as exc:
                self.error = f"building {names} failed: {exc}"
                log.warning("C kernels unavailable (%s); using numpy", self.error)
                return None
            self.error = self.check(lib) if self.check is not None else None
            if self.error is None:
                self._lib = lib
            return self._lib


_ADDRESSES: dict[int, tuple[weakref.ref, int]] = {}


def address(arr: Any) -> int:
    """``arr.ctypes.data`` of a numpy array, kept for arrays passed again and again (a decode loop's working
    buffers, a processor's state): reading it costs ~1.3 us, as much as a small kernel's work.  Held by weak
    reference, so the cache keeps no array alive."""
    hit = _ADDRESSES.get(id(arr))
    if hit is None or hit[0]() is not arr:
        if len(_ADDRESSES) >= 1024:  # (a pool of 32 pieces' MIDI constraints passes ~320 arrays a step: 64 thrashed)
            _ADDRESSES.clear()
        hit = _ADDRESSES[id(arr)] = (weakref.ref(arr), arr.ctypes.data)
    return hit[1]


def plain(arr: Any, dtype: Any) -> bool:
    """Whether numpy ``arr`` can go to a kernel as it is: of ``dtype``, in C order."""
    return arr.dtype == dtype and arr.flags.c_contiguous
