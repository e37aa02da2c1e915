"""Declared tensor sizes of a checkpoint file, read without allocating them (the bomb guard of checkpoint.py).

``torch.load`` allocates what a file declares before it can be checked: a 361-byte legacy ``.pth``
whose pickle claims a 1 GiB storage makes it allocate 1 GiB, and a stride-0 view of a 16-byte
storage loads as a ``[131072, 8192]`` tensor that the first copy turns into 4 GiB.  This module
reads only the pickle (or the safetensors header) with a restricted unpickler that runs no code
and builds no tensor: every tensor becomes a :class:`ScannedTensor` (dtype, shape, stride, offset,
storage size).  :func:`check_geometry` then refuses

* a view that needs more elements than its storage holds (stride 0, overlapping strides, an
  offset past the end), a negative size or stride;
* a storage whose bytes are not in the file (zip record size, legacy data length), a compressed
  zip record (``torch.save`` never compresses, so a deflated record is a zip bomb);
* declared tensor bytes above twice the file size (tied weights may share one storage);
* sparse, meta-device, quantized or other tensors that are not plain strided CPU data.

The shapes then go through the config checks of :mod:`rwkv_music.model.checkpoint` before
``torch.load`` reads a byte of tensor data.  ``mmap=True`` was tried and not used: torch 2.13
already refuses a zip record shorter than its declared storage, but mmap cannot read the legacy
format (the one that allocates) and would leave the model's fp32 weights as views of the file,
which a later in-place overwrite of the checkpoint (a trainer saving to the same path) turns
into SIGBUS.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rwkv_music.errors import CheckpointError

MAX_PICKLE_BYTES = 64 << 20  # a 1000-key state dict pickles to ~100 KB
MAX_SAFETENSORS_HEADER = 64 << 20

ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}
_SAFETENSORS_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class ScannedStorage:
    key: str
    kind: str  # e.g. "FloatStorage"
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * ELEMENT_SIZES[self.kind]


@dataclass(frozen=True)
class ScannedTensor:
    """What a file declares about one tensor; ``storage`` is None for safetensors (checked there)."""

    shape: tuple[int, ...]
    dtype: str
    stride: tuple[int, ...] | None = None
    offset: int = 0
    storage: ScannedStorage | None = None
    refused: str = ""  # why this is not a plain strided tensor (sparse, meta, ...), or ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        size = ELEMENT_SIZES.get(self.dtype) or _SAFETENSORS_SIZES.get(self.dtype, 1)
        return self.numel * size


class _Opaque:
    """Stand-in result of a global this scanner does not model (checked afterwards by type)."""

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Any:
    if not isinstance(storage, ScannedStorage):
        return _Opaque("a tensor without a storage")
    try:
        shape = tuple(int(d) for d in size)
        strides = tuple(int(s) for s in stride)
        return ScannedTensor(shape, storage.kind, strides, int(offset), storage)
    except (TypeError, ValueError):
        return _Opaque("a tensor with an unreadable size")


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _refused(why: str) -> Any:
    def build(*args: Any) -> ScannedTensor:
        return ScannedTensor((), "", refused=why)

    return build


_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_sparse_tensor"): _refused("a sparse tensor"),
    ("torch._utils", "_rebuild_sparse_csr_tensor"): _refused("a sparse tensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _refused("a meta-device tensor (it holds no data)"),
    ("torch._utils", "_rebuild_qtensor"): _refused("a quantized tensor"),
    ("torch._utils", "_rebuild_wrapper_subclass"): _refused("a tensor subclass without plain data"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _refused("a tensor stored as a numpy array"),
    ("torch._utils", "_rebuild_nested_tensor"): _refused("a nested tensor"),
}


class _ScanUnpickler(pickle.Unpickler):
    """Builds dicts, lists and :class:`ScannedTensor` s; never imports or calls anything from the file."""

    def __init__(self, fh: BinaryIO, legacy: bool) -> None:
        super().__init__(fh)
        self.legacy = legacy
        self.storages: dict[str, ScannedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in ELEMENT_SIZES:
            return name  # a storage type: persistent ids name it
        if module == "torch" and name.endswith("Storage"):
            return name  # unknown element size: refused in persistent_load
        qual = f"{module}.{name}"
        return lambda *args, **kw: _Opaque(qual)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError("unknown persistent id in the pickle")
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        if kind not in ELEMENT_SIZES:
            raise CheckpointError(f"storage of unsupported type {kind!r}")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key!r} declares {numel!r} elements")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"storage {key!r} is a legacy storage view (not supported)")
        if key in self.storages and self.storages[key] != ScannedStorage(key, kind, numel):
            raise CheckpointError(f"storage {key!r} is declared twice with different sizes")
        storage = self.storages.setdefault(key, ScannedStorage(key, kind, numel))
        return storage


@dataclass
class Scan:
    """The payload as declared (dicts and :class:`ScannedTensor` s) and the size of the file."""

    payload: Any
    file_size: int
    storages: dict[str, ScannedStorage]


def scan_file(path: Path) -> Scan | None:
    """Declared contents of a ``.pth`` (zip or legacy pickle) or ``.safetensors``; None for other formats."""
    size = path.stat().st_size
    try:
        if path.suffix == ".safetensors":
            return _scan_safetensors(path, size)
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] == b"PK":
            return _scan_zip(path, size)
        if magic[:1] == b"\x80":
            return _scan_legacy(path, size)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError,
            AttributeError, IndexError, struct.error, OSError, MemoryError, RecursionError) as exc:
        raise CheckpointError(f"{path.name}: not a PyTorch checkpoint (damaged; {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    return None


def _scan_zip(path: Path, size: int) -> Scan:
    with zipfile.ZipFile(path) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        pkl = [name for name in infos if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError("not a PyTorch checkpoint (no single '<name>/data.pkl' in the zip)")
        prefix = pkl[0][: -len("data.pkl")]
        for info in infos.values():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"record {info.filename!r} is compressed (torch.save never compresses; "
                                      "a zip bomb?)")
            if info.file_size > size:
                raise CheckpointError(f"record {info.filename!r} declares {info.file_size} bytes in a file of {size}")
        if infos[pkl[0]].file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"its pickle declares {infos[pkl[0]].file_size} bytes (at most {MAX_PICKLE_BYTES})")
        unpickler = _ScanUnpickler(io.BytesIO(zf.read(pkl[0])), legacy=False)
        payload = unpickler.load()
        for key, storage in unpickler.storages.items():
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"storage {key!r} has no record in the zip (truncated?)")
            if info.file_size != storage.nbytes:
                raise CheckpointError(f"storage {key!r} declares {storage.nbytes} bytes, its record holds "
                                      f"{info.file_size}")
    return Scan(payload, size, unpickler.storages)


def _scan_legacy(path: Path, size: int) -> Scan:
    with open(path, "rb") as fh:
        plain = _PlainUnpickler(fh)
        magic = plain.load()
        if magic != 0x1950A86A20F9469CFC6C:  # torch.serialization.MAGIC_NUMBER
            raise CheckpointError("not a PyTorch checkpoint (a pickle without torch's magic number)")
        _PlainUnpickler(fh).load()  # protocol version
        _PlainUnpickler(fh).load()  # sys info
        unpickler = _ScanUnpickler(fh, legacy=True)
        payload = unpickler.load()
        keys = _PlainUnpickler(fh).load()
        if not isinstance(keys, list) or any(str(k) not in unpickler.storages for k in keys):
            raise CheckpointError("not a PyTorch checkpoint (damaged storage key list)")
        for key in keys:
            storage = unpickler.storages[str(key)]
            head = fh.read(8)
            if len(head) != 8 or int.from_bytes(head, "little") != storage.numel:
                raise CheckpointError(f"storage {key!r} declares {storage.numel} elements, its data header "
                                      "disagrees (truncated or tampered)")
            if storage.nbytes > size - fh.tell():
                raise CheckpointError(f"storage {key!r} declares {storage.nbytes} bytes, more than the "
                                      f"{size - fh.tell()} left in the file")
            fh.seek(storage.nbytes, os.SEEK_CUR)
    return Scan(payload, size, unpickler.storages)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise CheckpointError(f"not a PyTorch checkpoint (its header pickle names {module}.{name})")


def _scan_safetensors(path: Path, size: int) -> Scan:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise CheckpointError("not a safetensors checkpoint (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise CheckpointError(f"not a safetensors checkpoint (header of {n} bytes in a file of {size})")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors checkpoint (its header is not a JSON object)")
    payload: dict[str, Any] = {}
    data_size = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_SIZES:
            raise CheckpointError(f"not a safetensors checkpoint (entry {key!r} has no known dtype)")
        shape = tuple(int(d) for d in entry.get("shape", ()))
        start, end = (int(x) for x in entry.get("data_offsets", (0, -1)))
        t = ScannedTensor(shape, entry["dtype"])
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data_size or t.nbytes != end - start:
            raise CheckpointError(f"tensor {key!r} declares shape {list(shape)} that its data range "
                                  f"[{start}, {end}) of {data_size} bytes does not hold")
        payload[key] = t
    return Scan(payload, size, {})


def check_geometry(scan: Scan, source: str) -> None:
    """Refuse views that reach outside their storage and declared sizes the file cannot back."""
    total = 0
    for key, t in scan.payload.items():
        if not isinstance(t, ScannedTensor):
            continue
        if t.refused:
            raise CheckpointError(f"{source}: tensor {key!r} is {t.refused}; expected a dense CPU tensor")
        if any(d < 0 for d in t.shape):
            raise CheckpointError(f"{source}: tensor {key!r} has a negative size {list(t.shape)}")
        total += t.nbytes
        if t.storage is None:
            continue
        if t.stride is None or len(t.stride) != len(t.shape) or any(s < 0 for s in t.stride) or t.offset < 0:
            raise CheckpointError(f"{source}: tensor {key!r} has an invalid stride {t.stride} for shape "
                                  f"{list(t.shape)}")
        if t.numel == 0:
            continue
        span = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride)) + 1
        if t.numel > t.storage.numel or span > t.storage.numel:
            what = "an expanded (stride-0) or overlapping view" if t.numel > t.storage.numel else "a view"
            raise CheckpointError(
                f"{source}: tensor {key!r} of shape {list(t.shape)} (stride {list(t.stride)}) is {what} "
                f"that needs more than the {t.storage.numel} elements its storage holds"
            )
    if total > 2 * scan.file_size + (1 << 20):
        raise CheckpointError(f"{source}: its tensors declare {total} bytes, more than a file of "
                              f"{scan.file_size} bytes can hold")
