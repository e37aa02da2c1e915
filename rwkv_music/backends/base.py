"""The one protocol every inference backend implements.

Sampling, constraints, the composer and the CLI only ever talk to a model through this
protocol, so they never know whether torch, onnxruntime or ncnn runs it.

* ``config`` (also ``info``): the :class:`~rwkv_music.model.config.RWKVConfig` of the model.
* ``new_state(batch_size)``: a zero :class:`~rwkv_music.model.state.State`.
* ``forward(tokens, state=None, all_logits=False)``: ``tokens`` is ``[B, T]`` (list of lists,
  numpy or torch ints); returns ``(logits, new_state)`` with float32 logits ``[B, V]`` for the
  last position (``[B, T, V]`` with ``all_logits``).  ``forward`` never mutates ``state``; rows
  are independent.

Capabilities, declared by every backend so callers never inspect signatures or types:

* ``name``: "torch", "onnx" or "ncnn"; ``device``: where it runs (a ``torch.device`` for torch,
  a string such as "cpu", "cuda:0" or "vulkan:0" otherwise);
* ``dtype``: the arithmetic dtype of the weights, as the runtime names it (a ``torch.dtype`` for
  torch, whose int8 and int4 models compute in float32 over quantized weights; "fp32", "fp16",
  "int8", "int4" or "bf16" (weights stored in bf16 over an fp32 graph) otherwise);
  ``compute_dtype``: the same as one of "fp32", "bf16", "fp16", "int8", "int4" on every backend.
  Each backend's ``load`` documents which ``dtype`` it accepts and which it refuses;
* ``supports_inplace``: ``forward(..., inplace=True)`` writes the new state into the given
  state's own tensors and returns that object (a decode loop then reuses one state's memory);
* ``array_kind``: "torch" or "numpy", the kind of arrays ``forward`` returns;
  ``as_numpy(logits)`` turns them into a float32 numpy array.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from rwkv_music.errors import BackendUnavailable, CheckpointError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State

ArrayKind = Literal["torch", "numpy"]


@runtime_checkable
class Backend(Protocol):
    config: RWKVConfig
    name: str
    device: Any
    dtype: Any
    compute_dtype: str
    supports_inplace: bool
    array_kind: ArrayKind

    @property
    def info(self) -> RWKVConfig: ...

    def new_state(self, batch_size: int = 1) -> State: ...

    def forward(self, tokens: Any, state: State | None = None, *, all_logits: bool = False) -> tuple[Any, State]: ...

    def as_numpy(self, logits: Any) -> np.ndarray: ...


class NumpyRuntime:
    """What the exported-graph runtimes (onnx, ncnn) share: numpy in and out, no in-place states,
    and a dtype fixed by the export (``dtype`` is already the name every backend uses)."""

    config: RWKVConfig
    dtype: str
    supports_inplace = False
    array_kind: ArrayKind = "numpy"

    @property
    def info(self) -> RWKVConfig:
        return self.config

    @property
    def compute_dtype(self) -> str:
        return self.dtype

    def as_numpy(self, logits: Any) -> np.ndarray:
        return as_numpy(logits)


def as_numpy(array: Any) -> np.ndarray:
    """A float32 numpy view or copy of a numpy array or a torch tensor (without importing torch)."""
    if type(array).__module__.split(".")[0] == "torch":
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def refuse_native(backend: str, native: bool | None) -> None:
    """The C kernels of :mod:`rwkv_music.model.native` serve the torch backend only."""
    if native:
        raise BackendUnavailable(f"native=True: the native C kernels serve the torch backend, not {backend!r}")


def tokens_to_numpy(tokens: Any, vocab_size: int, source: str = "tokens") -> np.ndarray:
    """Validate ``tokens`` as a ``[B, T]`` int64 array with ids below ``vocab_size``.

    Accepts a list of lists, a numpy array or a torch tensor (1-D input is one row).
    """
    if type(tokens).__module__.split(".")[0] == "torch":
        arr = tokens.detach().cpu().numpy()
    elif isinstance(tokens, np.ndarray):
        arr = tokens
    else:
        rows: Sequence[Any] = tokens
        if len(rows) and not isinstance(rows[0], (list, tuple, np.ndarray)):
            rows = [rows]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise CheckpointError(
                f"{source}: rows have different lengths {sorted(lengths)}; pad or run them separately"
            )
        arr = np.asarray(rows)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CheckpointError(f"{source}: expected a non-empty [batch, time] array of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise CheckpointError(f"{source}: token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        b, t = map(int, np.argwhere(bad)[0])
        raise CheckpointError(
            f"{source}: token id {int(arr[b, t])} at row {b}, position {t} is outside the vocabulary "
            f"(0..{vocab_size - 1})"
        )
    return arr
