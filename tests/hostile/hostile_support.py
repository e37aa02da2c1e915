"""Builders of hostile files and a memory-capped subprocess runner for the tests in tests/hostile/.

The fixtures are written by hand (not by ``torch.save``) so that a file can declare sizes that its
data do not back: a storage that claims a gibibyte, a stride-0 view, a key ``blocks.999999999.*``.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MEMORY_CAP = 3 << 29  # 1.5 GiB of address space for a child that reads a bomb
REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeStorage:
    """A storage as a checkpoint's pickle names it: key, element count, storage type name."""

    key: str
    numel: int
    dtype: str = "FloatStorage"


@dataclass
class FakeTensor:
    """A tensor as ``torch._utils._rebuild_tensor_v2`` rebuilds it, with any declared geometry."""

    storage: FakeStorage
    size: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    offset: int = 0

    def __reduce__(self) -> tuple:
        import torch

        stride = self.stride
        if stride is None:  # contiguous
            stride, acc = [], 1
            for d in reversed(self.size):
                stride.insert(0, acc)
                acc *= d
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(stride), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, FakeStorage):
            return ("storage", getattr(torch, obj.dtype), obj.key, "cpu", obj.numel)
        return None


def write_zip_checkpoint(path: Path, tensors: dict[str, FakeTensor], data: dict[str, bytes],
                         compress: bool = False) -> Path:
    """A ``torch.save``-style zip: ``archive/data.pkl`` plus one record per storage key in ``data``."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, raw in data.items():
            zf.writestr(f"archive/data/{key}", raw, compress_type=method)
        zf.writestr("archive/version", "3\n")
    return path


def write_legacy_checkpoint(path: Path, tensors: dict[str, FakeTensor], data: dict[str, bytes]) -> Path:
    """The pre-1.6 ``torch.save`` layout: pickles of magic, protocol, sys info, the dict, the storage keys,
    then each storage's data behind an 8-byte element count (the count is what the file claims)."""
    import torch.serialization as ser

    buf = io.BytesIO()
    pickle.dump(ser.MAGIC_NUMBER, buf, protocol=2)
    pickle.dump(ser.PROTOCOL_VERSION, buf, protocol=2)
    pickle.dump({"protocol_version": ser.PROTOCOL_VERSION, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 8}}, buf, protocol=2)
    _LegacyPickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    keys = sorted(data)
    pickle.dump(keys, buf, protocol=2)
    storages = {t.storage.key: t.storage for t in tensors.values()}
    for key in keys:
        buf.write(int(storages[key].numel).to_bytes(8, "little"))
        buf.write(data[key])
    path.write_bytes(buf.getvalue())
    return path


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, FakeStorage):
            return ("storage", getattr(torch, obj.dtype), obj.key, "cpu", obj.numel, None)
        return None


def tensors_from_state_dict(sd: dict[str, Any]) -> tuple[dict[str, FakeTensor], dict[str, bytes]]:
    """A real state dict as fixture parts (one float32 storage per tensor), ready to be tampered with."""
    tensors, data = {}, {}
    for i, (name, t) in enumerate(sd.items()):
        arr = np.ascontiguousarray(t.detach().float().numpy())
        key = str(i)
        tensors[name] = FakeTensor(FakeStorage(key, arr.size), tuple(arr.shape))
        data[key] = arr.tobytes()
    return tensors, data


def run_capped(code: str, timeout: float = 60.0, cap: int = MEMORY_CAP) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter limited to ``cap`` bytes of address space.

    A regression then dies with MemoryError (or is killed) in the child instead of exhausting the machine.
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env, cwd=str(REPO))


def expect_one_line_error(proc: subprocess.CompletedProcess, error: str, *needles: str) -> str:
    """The child printed ``ERR <class>: <message>`` on one line and nothing crashed."""
    assert proc.returncode == 0, f"child failed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERR ")]
    assert lines, f"no error reported: {proc.stdout[-2000:]}"
    line = lines[-1]
    assert line.startswith(f"ERR {error}:"), line
    for needle in needles:
        assert needle in line, line
    return line


def dumps(obj: Any) -> str:
    return json.dumps(obj)
