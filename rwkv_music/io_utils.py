"""Atomic file writes that refuse to overwrite without ``force``.

Every file rwkv_music writes goes through here: the bytes land in a hidden temporary file in the
destination folder and are moved into place with :func:`os.replace`, so a reader (or a resumed
batch render) never sees a half-written file, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rwkv_music.errors import OutputExistsError


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Return ``path`` as a :class:`Path`; raise :class:`OutputExistsError` if it exists and not ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: file exists; pass --force (force=True) to overwrite it")
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory, expected a file name")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    For writers that insist on a file name (music21, matplotlib).  On error the temporary file is
    removed and ``path`` is left untouched.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "a.txt").read_text()
    'hi'
    """
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix: some writers pick the format from it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OSError(f"{path}: the writer produced no data")
        fsync_path(tmp)
        os.chmod(tmp, _default_file_mode())  # mkstemp makes 0600; outputs are ordinary files
        if not force and path.exists():  # appeared while we were writing
            raise OutputExistsError(f"{path}: file exists; pass --force (force=True) to overwrite it")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _default_file_mode() -> int:
    """0666 minus the process umask, the mode ``open()`` would have given the file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), force)


def atomic_write_json(path: str | os.PathLike, data: Any, force: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically; returns the path."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", force)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any], sync: bool = True) -> None:
    """Append one JSON row to ``path``; with ``sync`` (the default) flush it to disk before returning.

    The row is written with a single ``write`` call of a complete line, so a crash leaves at most
    one truncated last line, which :func:`read_jsonl` drops.  Without ``sync`` the row is in the
    file for every reader and survives the writer being killed, but not a power loss until
    :func:`fsync_path` (or a later synced append) runs.
    """
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON-lines file and the number of damaged lines skipped (a killed writer's tail)."""
    rows: list[dict[str, Any]] = []
    bad = 0
    path = Path(path)
    if not path.exists():
        return rows, bad
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file written earlier to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
