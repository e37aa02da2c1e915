"""The recurrent state of an RWKV model: one value type for every version and backend.

A :class:`State` is a small dict of named arrays, each shaped ``[n_layer, batch, ...]`` (batch is
axis 1), holding numpy arrays or torch tensors.  Per version (docs/formats.md A8):

=========  ==========================================================================
version    tensors
=========  ==========================================================================
4          ``att_x`` [L,B,C] run dtype; ``att_a``, ``att_b`` [L,B,A] f32;
           ``att_p`` [L,B,A] f32 initialised to -1e30; ``ffn_x`` [L,B,C]
5.x, 6     ``att_x`` [L,B,C]; ``att_kv`` [L,B,H,N,N] f32 as ``S[h, key j, value i]``
           (the rwkv package's layout); ``ffn_x`` [L,B,C]
7, 7a      ``att_x`` [L,B,C]; ``att_kv`` [L,B,H,N,N] f32 as ``S[h, value i, key j]``
           (the rwkv package's and the RWKV-7 kernels' layout); ``ffn_x`` [L,B,C]
=========  ==========================================================================

``att_x``/``ffn_x`` hold the LayerNorm outputs of the previous token (token shift).  States are
values: backends return new ones and never mutate their input.  ``save``/``load`` use ``.npz``
(float32) with a JSON header, so they work without torch.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from rwkv_music.errors import StateError
from rwkv_music.io_utils import atomic_write_bytes
from rwkv_music.model.config import ModelVersion, RWKVConfig

if TYPE_CHECKING:  # pragma: no cover
    from rwkv_music.model.config import RWKVConfig as _Cfg  # noqa: F401

V4_INIT_P = -1e30  # "minus infinity" for the v4 running max, as the rwkv package uses
_FORMAT = "rwkv_music.state/1"


def state_shapes(config: RWKVConfig, batch_size: int) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name → (shape, is_fp32) for a zero state of ``config`` with ``batch_size`` rows."""
    L, B, C = config.n_layer, batch_size, config.n_embd
    if config.version.family == 4:
        A = config.dim_att
        return {
            "att_x": ((L, B, C), False),
            "att_a": ((L, B, A), True),
            "att_b": ((L, B, A), True),
            "att_p": ((L, B, A), True),
            "ffn_x": ((L, B, C), False),
        }
    H, N = config.n_head, config.head_size
    return {
        "att_x": ((L, B, C), False),
        "att_kv": ((L, B, H, N, N), True),
        "ffn_x": ((L, B, C), False),
    }


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class State:
    """Recurrent state of a batch of sequences (see the module docstring for the layout)."""

    def __init__(self, version: Any, tensors: dict[str, Any]) -> None:
        self.version = ModelVersion(version)
        self.tensors = dict(tensors)
        self.origin: dict[str, Any] | None = None  # the saving model's config and file, for State.load'ed states
        if not self.tensors:
            raise StateError("State: no tensors given")
        flat = [name for name, t in self.tensors.items() if len(getattr(t, "shape", ())) < 2]
        if flat:
            raise StateError(f"State: tensor {flat[0]!r} is not shaped [n_layer, batch, ...]")
        sizes = {name: t.shape[1] for name, t in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise StateError(f"State: tensors disagree on the batch size: {sizes}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def zeros(
        cls,
        config: RWKVConfig,
        batch_size: int = 1,
        backend: str = "numpy",
        device: Any = "cpu",
        dtype: Any = None,
    ) -> "State":
        """A fresh state. ``dtype`` is the run dtype of the shift vectors (WKV parts stay f32)."""
        if batch_size < 1:
            raise StateError(f"State.zeros: batch_size must be >= 1, got {batch_size}")
        tensors = {}
        for name, (shape, fp32) in state_shapes(config, batch_size).items():
            if backend == "torch":
                import torch

                dt = torch.float32 if fp32 or dtype is None else dtype
                t = torch.zeros(shape, dtype=dt, device=device)
            else:
                dt = np.float32 if fp32 or dtype is None else dtype
                t = np.zeros(shape, dtype=dt)
            if name == "att_p":
                t[...] = V4_INIT_P
            tensors[name] = t
        return cls(config.version, tensors)

    # -- basic properties ---------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(next(iter(self.tensors.values())).shape[1])

    @property
    def n_layer(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    @property
    def is_torch(self) -> bool:
        return _is_torch(next(iter(self.tensors.values())))

    def __getitem__(self, name_or_rows: Any) -> Any:
        if isinstance(name_or_rows, str):
            return self.tensors[name_or_rows]
        return self.select(name_or_rows)

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.tensors.items())
        kind = "torch" if self.is_torch else "numpy"
        return f"State(version={str(self.version)!r}, batch={self.batch_size}, {kind}: {parts})"

    # -- value operations ---------------------------------------------------------------
    def copy(self) -> "State":
        return State(self.version, {k: (v.clone() if _is_torch(v) else v.copy()) for k, v in self.tensors.items()})

    def select(self, rows: int | slice | Sequence[int] | Any) -> "State":
        """Rows of the batch as a new state (an int keeps the batch axis: batch size 1)."""
        if isinstance(rows, (int, np.integer)):
            index: Any = slice(int(rows), int(rows) + 1) if rows != -1 else slice(-1, None)
        elif isinstance(rows, slice):
            index = rows
        else:
            index = list(int(r) for r in rows)
        out = {}
        for name, t in self.tensors.items():
            if _is_torch(t) and isinstance(index, list):
                import torch

                sel = t[:, torch.as_tensor(index, dtype=torch.long, device=t.device)]
            else:
                sel = t[:, index]
            out[name] = sel.clone() if _is_torch(sel) else np.array(sel, copy=True)
        if next(iter(out.values())).shape[1] == 0:
            raise StateError(f"State.select: rows {rows!r} select nothing from a batch of {self.batch_size}")
        return State(self.version, out)

    @staticmethod
    def concat(states: Iterable["State"]) -> "State":
        """Stack states of the same model along the batch axis."""
        states = list(states)
        if not states:
            raise StateError("State.concat: no states given")
        first = states[0]
        for s in states[1:]:
            if s.version != first.version or set(s.tensors) != set(first.tensors):
                raise StateError(f"State.concat: cannot join a v{s.version} state to a v{first.version} state")
        out = {}
        for name, t in first.tensors.items():
            parts = [s.tensors[name] for s in states]
            if _is_torch(t):
                import torch

                parts = [torch.as_tensor(p, device=t.device).to(t.dtype) for p in parts]
                out[name] = torch.cat(parts, dim=1)
            else:
                parts = [p.detach().cpu().float().numpy() if _is_torch(p) else p for p in parts]
                out[name] = np.concatenate([np.asarray(p, dtype=t.dtype) for p in parts], axis=1)
        return State(first.version, out)

    # -- conversions ------------------------------------------------------------------
    def numpy(self) -> "State":
        """All tensors as float32 numpy arrays (on the host)."""
        return State(
            self.version,
            {
                k: (v.detach().float().cpu().numpy() if _is_torch(v) else np.asarray(v, dtype=np.float32))
                for k, v in self.tensors.items()
            },
        )

    def torch(self, device: Any = "cpu", dtype: Any = None) -> "State":
        """Torch tensors on ``device``; ``dtype`` applies to the shift vectors (WKV parts stay f32)."""
        import torch

        out = {}
        for name, v in self.tensors.items():
            t = v if _is_torch(v) else torch.from_numpy(np.ascontiguousarray(v))
            fp32 = name not in ("att_x", "ffn_x")
            target = torch.float32 if (fp32 or dtype is None) else dtype
            out[name] = t.to(device=device, dtype=target)
        return State(self.version, out)

    def to(self, device: Any) -> "State":
        """Move a torch state to ``device`` (keeps dtypes)."""
        if not self.is_torch:
            return self.torch(device)
        return State(self.version, {k: v.to(device) for k, v in self.tensors.items()})

    # -- checks ---------------------------------------------------------------------------
    def check(self, config: RWKVConfig, batch_size: int | None = None) -> None:
        """Raise :class:`StateError` unless this state fits ``config`` (and ``batch_size``)."""
        if self.version != config.version and not (
            self.version.family == config.version.family == 7
        ):
            raise StateError(f"state is for an RWKV v{self.version} model, this model is v{config.version}")
        expected = state_shapes(config, self.batch_size)
        if set(expected) != set(self.tensors):
            raise StateError(f"state has tensors {sorted(self.tensors)}, this model needs {sorted(expected)}")
        for name, (shape, _) in expected.items():
            got = tuple(self.tensors[name].shape)
            if got != shape:
                raise StateError(f"state tensor {name!r} has shape {got}, this model needs {shape}")
        if batch_size is not None and self.batch_size != batch_size:
            raise StateError(f"state has batch size {self.batch_size}, the tokens have {batch_size} rows")
        made = (self.origin or {}).get("config") or {}
        if isinstance(made.get("vocab_size"), int) and made["vocab_size"] != config.vocab_size:
            raise StateError(f"{self.origin.get('file', 'state')}: made with a model of vocabulary "
                             f"{made['vocab_size']}, this model has {config.vocab_size}")

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, config: RWKVConfig | None = None) -> None:
        """Write the state to ``path`` (.npz, float32) atomically."""
        path = Path(path)
        host = self.numpy()
        header = {"format": _FORMAT, "version": str(self.version), "config": config.to_dict() if config else None}
        buf = io.BytesIO()
        np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **host.tensors)
        atomic_write_bytes(path, buf.getvalue(), force=True)  # an ordinary file mode, not mkstemp's 0600

    @classmethod
    def load(cls, path: str | os.PathLike) -> "State":
        """Read a state written by :meth:`save` (numpy arrays; backends convert as needed).

        Member sizes are checked from the zip and npy headers before any array is read, then every
        value is checked to be finite; any problem is one :class:`StateError` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise StateError(f"{path}: no such state file")
        try:
            _check_npz_sizes(path)
            with np.load(path, allow_pickle=False) as data:
                if "__header__" not in data.files:
                    raise StateError(f"{path}: not a saved rwkv_music state (no header)")
                header = json.loads(bytes(data["__header__"]).decode())
                tensors = {k: np.array(data[k]) for k in data.files if k != "__header__"}
        except StateError:
            raise
        except Exception as exc:  # zip/npz/json damage: one line, no traceback
            raise StateError(f"{path}: not a saved rwkv_music state ({type(exc).__name__}: {exc})") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            got = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise StateError(f"{path}: not a saved rwkv_music state (format {got!r})")
        for name, t in tensors.items():
            if not np.issubdtype(t.dtype, np.floating):
                raise StateError(f"{path}: state tensor {name!r} has dtype {t.dtype}, expected float32")
            if not np.isfinite(t).all():
                raise StateError(f"{path}: state tensor {name!r} holds NaN or Inf values")
        try:
            state = cls(header["version"], tensors)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{path}: damaged state header ({exc})") from None
        except StateError as exc:
            raise StateError(f"{path}: {exc}") from None
        config = header.get("config")
        state.origin = {"file": path.name, "config": config if isinstance(config, dict) else None}
        return state


MAX_STATE_BYTES = 4 << 30  # a 61-layer, width-7168 model has 112 MB of state per row
MAX_COMPRESSED_STATE_BYTES = 64 << 20  # save() never compresses; a deflated member may inflate this far


def _check_npz_sizes(path: Path) -> None:
    """Every member's declared size fits the file (or a small cap when compressed), and each npy
    header's shape and dtype make exactly the member's size: checked before an array is read."""
    import zipfile

    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise StateError(f"{path}: not a saved rwkv_music state (not an .npz zip archive)") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > 64:
            raise StateError(f"{path}: not a saved rwkv_music state ({len(infos)} members)")
        total = 0
        for info in infos:
            total += info.file_size
            stored = info.compress_type == zipfile.ZIP_STORED
            if (stored and info.file_size > size) or (not stored and total > MAX_COMPRESSED_STATE_BYTES) \
                    or total > MAX_STATE_BYTES:
                raise StateError(f"{path}: member {info.filename!r} declares {info.file_size} bytes, more than "
                                 f"a state file of {size} bytes may hold")
            with zf.open(info) as fh:
                try:
                    fmt = np.lib.format
                    version = fmt.read_magic(fh)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = read(fh)
                except ValueError as exc:
                    raise StateError(f"{path}: member {info.filename!r} is not an npy array ({exc})") from None
                header_len = fh.tell()
            if dtype.hasobject or math.prod(shape) * dtype.itemsize != info.file_size - header_len:
                raise StateError(f"{path}: member {info.filename!r} declares shape {list(shape)} of {dtype}, "
                                 f"which its {info.file_size} bytes do not hold")
