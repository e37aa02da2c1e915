"""The ABC constraint's grammar tables on disk, so a new process starts with the states earlier ones reached.

A table (:class:`~rwkv_music.formats.abc.constraint._Table`) is filled lazily: every grammar state a
tune reaches for the first time costs its 128 successors (about 0.6 ms).  In one process the
states converge (the shipped model's tunes: about 2,700 states after 32 tunes, 5,000 after 380),
but every process starts empty, and the first ``compose_abc(n=32)`` of a process spent 38-39 % of
its time filling the table (20 % in the next 32 tunes, 3-8 % from the fourth batch on).

A table is saved when its process ends (:func:`atexit`), in :func:`~rwkv_music.native_build.cache_dir`
``/abc_tables``, one file per grammar configuration; a new table of that configuration starts from
it.  A file holds the states (per field its distinct values, in JSON, and per state the index of
each of its values), their legal masks, the transitions found so far and a checksum; its name
hashes the configuration, the end id and the source of every module of
:mod:`rwkv_music.formats.abc` (a changed grammar never reads an old file).  A transition found in
the file is taken as it is; one not found yet is computed on first use, for that byte alone.  A
file that cannot be read, does not match its checksum or holds anything else is ignored (the table
starts empty, as without the file).
``RWKV_MUSIC_ABC_TABLES=0`` turns reading and writing off; ``RWKV_MUSIC_ABC_TABLES=/a/folder`` keeps the
files there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.formats.abc.grammar.state import AbcState

log = logging.getLogger(__name__)

ENV = "RWKV_MUSIC_ABC_TABLES"
FORMAT = 1  # bump when the file layout changes
MAX_SAVED = 20_000  # states written (the first ones; reading 20,000 takes about 0.3 s)
VOCAB = 128


def enabled() -> bool:
    """Off where ``RWKV_MUSIC_ABC_TABLES`` is 0, false, no or off (as ``RWKV_MUSIC_NATIVE``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def default_folder() -> Path:
    """``RWKV_MUSIC_ABC_TABLES`` where it names a folder, else ``abc_tables`` in the build cache
    (:func:`~rwkv_music.native_build.cache_dir`)."""
    value = os.environ.get(ENV, "").strip()
    if value and value.lower() not in ("1", "true", "yes", "on"):
        return Path(value).expanduser()
    from rwkv_music.native_build import cache_dir

    return cache_dir() / "abc_tables"


def _source_hash() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


_SOURCE: str | None = None


def table_path(config: Any, eos_id: int, folder: Path | None = None) -> Path:
    """The file of the table of ``config`` (with ``eos_id``) for this version of the grammar's code."""
    global _SOURCE
    if _SOURCE is None:
        _SOURCE = _source_hash()
    if folder is None:
        folder = default_folder()
    key = hashlib.sha256(f"{FORMAT}\0{_SOURCE}\0{config!r}\0{eos_id}".encode()).hexdigest()[:32]
    return folder / f"abc-table-{key}.npz"


def _encode(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"q": [value.numerator, value.denominator]}
    if isinstance(value, tuple):
        return {"t": [_encode(v) for v in value]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"an AbcState field of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"q"}:
            n, d = value["q"]
            if not (type(n) is int and type(d) is int and d > 0):
                raise ValueError("a bad fraction")
            return Fraction(n, d)
        if set(value) == {"t"} and isinstance(value["t"], list):
            return tuple(_decode(v) for v in value["t"])
        raise ValueError("an unknown tagged value")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise ValueError(f"a value of type {type(value).__name__}")


def _columns(states: list[AbcState]) -> tuple[list[list[Any]], np.ndarray]:
    """The states as columns: per field its distinct values (encoded) and per state the index of its value
    in each ([n, fields] uint16).  A table has a few thousand states but a handful of values per field."""
    values: list[dict[tuple[type, Any], int]] = [{} for _ in AbcState._fields]
    index = np.zeros((len(states), len(AbcState._fields)), dtype=np.uint16)
    for i, state in enumerate(states):
        for f, v in enumerate(state):
            index[i, f] = values[f].setdefault((type(v), v), len(values[f]))
    if any(len(column) > 65535 for column in values):
        raise ValueError("too many values of one field")
    return [[_encode(v) for _, v in column] for column in values], index


def _checksum(text: bytes, index: np.ndarray, legal: np.ndarray, trans: np.ndarray, body: np.ndarray) -> str:
    h = hashlib.sha256(text)
    for a in (index, legal, trans, body):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def saved_count(path: Path) -> int:
    """How many states the file at ``path`` holds (0 if none or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["body"].shape[0])
    except Exception:
        return 0


def save(path: Path, states: list[AbcState], legal: np.ndarray, trans: np.ndarray, body: np.ndarray) -> bool:
    """Write the first :data:`MAX_SAVED` states atomically (a temporary file renamed over ``path``); False
    where it cannot be written."""
    n = min(len(states), MAX_SAVED)
    tmp = None
    try:
        columns, index = _columns(states[:n])
        text = json.dumps({"fields": list(AbcState._fields), "values": columns}, separators=(",", ":")).encode()
        legal = np.ascontiguousarray(legal[:n], dtype=bool)
        trans = np.array(trans[:n], dtype=np.int32)
        trans[trans >= n] = -2  # a successor past the saved states: found again on first use
        body = np.ascontiguousarray(body[:n], dtype=bool)
        check = _checksum(text, index, legal, trans, body)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".abc-table-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, values=np.array(text.decode()), index=index, legal=legal, trans=trans, body=body,
                                check=np.array(check))
        os.replace(tmp, path)
        return True
    except (OSError, ValueError, TypeError) as exc:  # a folder that cannot be written; a state it cannot hold
        log.debug("could not save the ABC grammar table %s: %s", path, exc)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def load(path: Path) -> tuple[list[AbcState], np.ndarray, np.ndarray, np.ndarray] | None:
    """``(states, legal, trans, body)`` from ``path``, or None where it is missing or not a good table file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            text, check = str(data["values"][()]), str(data["check"][()])
            index, legal, trans, body = data["index"], data["legal"], data["trans"], data["body"]
        n, width = body.shape[0], len(AbcState._fields)
        if not (index.shape == (n, width) and index.dtype == np.uint16 and legal.shape == (n, VOCAB)
                and legal.dtype == bool and trans.shape == (n, VOCAB) and trans.dtype == np.int32
                and body.shape == (n,) and body.dtype == bool):
            raise ValueError("arrays of other shapes or types")
        if _checksum(text.encode(), index, legal, trans, body) != check:
            raise ValueError("the checksum does not match")
        if n and (trans.min() < -2 or trans.max() >= n):
            raise ValueError("a transition out of the table")
        found = json.loads(text)
        if not isinstance(found, dict) or found.get("fields") != list(AbcState._fields):
            raise ValueError("the states of another AbcState")
        columns = [[_decode(v) for v in column] for column in found["values"]]
        if len(columns) != width or any(n and int(index[:, f].max()) >= len(c) for f, c in enumerate(columns)):
            raise ValueError("a value index out of its column")
        make = tuple.__new__
        states = [make(AbcState, [c[j] for c, j in zip(columns, row)]) for row in index.tolist()]
        return states, legal, trans, body
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: start empty
        log.debug("ignoring the ABC grammar table %s: %s: %s", path, type(exc).__name__, exc)
        return None


__all__ = ["ENV", "MAX_SAVED", "default_folder", "enabled", "load", "save", "saved_count", "table_path"]
