"""The one protocol every inference backend implements.

Sampling, constraints, the composer and the CLI only ever talk to a model through this
protocol, so they never know whether torch, onnxruntime or ncnn runs it.

* ``config`` (also ``info``): the :class:`~rwkv_music.model.config.RWKVConfig` of the model.
* ``name``: "torch", "onnx" or "ncnn"; ``device``: where it runs.
* ``new_state(batch_size)``: a zero :class:`~rwkv_music.model.state.State`.
* ``forward(tokens, state=None, all_logits=False)``: ``tokens`` is ``[B, T]`` (list of lists,
  numpy or torch ints); returns ``(logits, new_state)`` with float32 logits ``[B, V]`` for the
  last position (``[B, T, V]`` with ``all_logits``).  The torch backend returns torch tensors,
  onnx and ncnn return numpy arrays.  ``forward`` never mutates ``state``; rows are independent.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from rwkv_music.errors import CheckpointError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State


@runtime_checkable
class Backend(Protocol):
    config: RWKVConfig
    name: str
    device: Any

    @property
    def info(self) -> RWKVConfig: ...

    def new_state(self, batch_size: int = 1) -> State: ...

    def forward(self, tokens: Any, state: State | None = None, *, all_logits: bool = False) -> tuple[Any, State]: ...


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
            raise CheckpointError(f"{source}: rows have different lengths {sorted(lengths)}; pad or run them separately")
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
        raise CheckpointError(f"{source}: token id {int(arr[b, t])} at row {b}, position {t} is outside the vocabulary (0..{vocab_size - 1})")
    return arr
