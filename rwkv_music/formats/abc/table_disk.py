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
starts empty, as without the file).  Reading 5,400 states took 29-33 ms, 16,800 states 0.16-0.19 s;
saving 16,800 states 66-95 ms (only the states added since the last read or save are encoded).
``RWKV_MUSIC_ABC_TABLES=0`` turns reading and writing off; ``RWKV_MUSIC_ABC_TABLES=/a/folder`` keeps the
files there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.formats.abc.grammar.state import AbcState

log = logging.getLogger(__name__)

ENV = "RWKV_MUSIC_ABC_TABLES"
FORMAT = 1  # bump when the file layout changes
MAX_SAVED = 20_000  # states written (the first ones; reading 16,800 took 0.16-0.19 s)
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


class _Fraction(Fraction):
    """A Fraction read from a file that keeps its hash.  Reading a table hashes every state, eight
    Fractions each, and ``Fraction.__hash__`` is Python code: 16,800 states spent 0.3-0.5 s there.
    Equal to and hashed as the plain Fraction of its value; arithmetic on it gives plain Fractions."""

    __slots__ = ("_hash",)

    def __hash__(self) -> int:
        return self._hash


def _fraction(numerator: int, denominator: int) -> Fraction:
    value = _Fraction(numerator, denominator)
    value._hash = Fraction.__hash__(value)
    return value


def _key(value: Any) -> tuple[type, Any]:
    """A value's key in its column: with its type (True == 1 == Fraction(1)), a read Fraction as a Fraction."""
    kind = type(value)
    return (Fraction if kind is _Fraction else kind), value


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
            return _fraction(n, d)
        if set(value) == {"t"} and isinstance(value["t"], list):
            return tuple(_decode(v) for v in value["t"])
        raise ValueError("an unknown tagged value")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise ValueError(f"a value of type {type(value).__name__}")


_WIDTH = len(AbcState._fields)


class Columns:
    """States as columns: per field its distinct values, and per state the index of its value in each
    (``index``, [n, fields] uint16).  A table has thousands of states but a handful of values per field.
    Kept by a table between saves, so a save encodes only the states added since (encoding 16,800
    states at once took 0.54 s)."""

    def __init__(self) -> None:
        self.seen: list[dict[tuple[type, Any], int]] = [{} for _ in range(_WIDTH)]  # (type, value) -> index
        self.index = np.zeros((0, _WIDTH), dtype=np.uint16)

    @classmethod
    def of(cls, values: list[list[Any]], index: np.ndarray) -> "Columns":
        out = cls()
        for seen, column in zip(out.seen, values):
            seen.update((_key(v), k) for k, v in enumerate(column))
        out.index = index
        return out

    def extend(self, states: list[AbcState]) -> None:
        """Encode ``states[len(index):]`` (``states`` begins with the ones encoded already)."""
        new = states[len(self.index):]
        if not new:
            return
        block = np.zeros((len(new), _WIDTH), dtype=np.uint16)
        for f, column in enumerate(zip(*new)):  # a field at a time: a list, not a numpy store per value
            seen = self.seen[f]  # keyed with the type too: True == 1 == Fraction(1)
            at = [seen.setdefault(key, len(seen)) for key in map(_key, column)]
            if len(seen) > 65535:
                raise ValueError("too many values of one field")
            block[:, f] = at
        self.index = np.concatenate([self.index, block])

    def values(self) -> list[list[Any]]:
        """Each field's values, encoded for JSON, in index order."""
        return [[_encode(v) for (_, v) in sorted(seen, key=seen.__getitem__)] for seen in self.seen]


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


def _write_npz(f: Any, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s file (a zip of .npy files, what ``np.load`` reads) at zlib level 1: a save of
    16,800 states took 66-95 ms (0.23-0.33 s at numpy's level, 0.19 s of it compressing) for a file twice the
    size (925 against 434 KB)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)


def save(path: Path, states: list[AbcState], legal: np.ndarray, trans: np.ndarray, body: np.ndarray,
         columns: Columns | None = None) -> bool:
    """Write the first :data:`MAX_SAVED` states atomically (a temporary file renamed over ``path``); False
    where it cannot be written.  ``columns``: the encoding of the states saved or read before (extended here)."""
    n = min(len(states), MAX_SAVED)
    tmp = None
    try:
        columns = columns if columns is not None and len(columns.index) <= n else Columns()
        columns.extend(states[:n])
        index = columns.index[:n]
        text = json.dumps({"fields": list(AbcState._fields), "values": columns.values()},
                          separators=(",", ":")).encode()
        legal = np.ascontiguousarray(legal[:n], dtype=bool)
        trans = np.array(trans[:n], dtype=np.int32)
        trans[trans >= n] = -2  # a successor past the saved states: found again on first use
        body = np.ascontiguousarray(body[:n], dtype=bool)
        check = _checksum(text, index, legal, trans, body)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".abc-table-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, {"values": np.array(text.decode()), "index": index, "legal": legal, "trans": trans,
                           "body": body, "check": np.array(check)})
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


def load(path: Path) -> tuple[list[AbcState], np.ndarray, np.ndarray, np.ndarray, Columns] | None:
    """``(states, legal, trans, body, columns)`` from ``path``, or None where it is missing or not a good table
    file."""
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
        if any(len(set(map(_key, c))) != len(c) for c in columns):
            raise ValueError("a value twice in its column")  # (a later save would number the values wrongly)
        per_field = []  # each field's value for every state, gathered by numpy over object arrays
        for f, column in enumerate(columns):
            objects = np.empty(len(column), dtype=object)
            for k, v in enumerate(column):  # (one by one: a tuple value must stay one object)
                objects[k] = v
            per_field.append(objects[index[:, f]].tolist())
        states = list(map(functools.partial(tuple.__new__, AbcState), zip(*per_field)))
        return states, legal, trans, body, Columns.of(columns, index)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: start empty
        log.debug("ignoring the ABC grammar table %s: %s: %s", path, type(exc).__name__, exc)
        return None


__all__ = ["Columns", "ENV", "MAX_SAVED", "default_folder", "enabled", "load", "save", "saved_count", "table_path"]
