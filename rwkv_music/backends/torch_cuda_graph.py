"""Batched decode of many independent pieces with one captured CUDA graph per batch size.

A single-token step of a small RWKV model is hundreds of tiny kernels; on a GPU the launch cost,
not the arithmetic, sets the speed.  :class:`GraphDecoder` records one decode step of a
:class:`~rwkv_music.backends.torch.TorchModel` into a ``torch.cuda.CUDAGraph`` over static
buffers (tokens ``[B, 1]``, the state, the logits) and replays it: one launch per token for the
whole batch.  The state stays resident in the static buffers (the captured step copies the new
state over the old one), so a step moves only ``B`` token ids in and ``B × V`` logits out.

Rows are independent, so a finished piece's row can be refilled with a new piece's state
(:meth:`GraphDecoder.set_rows`) while the others keep going (continuous batching).

Without CUDA (``use_graph=False``) the very same static-buffer step runs eagerly; that keeps the
buffer logic testable on a CPU and gives a reference for the graph.

>>> import tempfile, pathlib
>>> from rwkv_music.backends.torch import load
>>> from rwkv_music.model.factory import save_random_checkpoint
>>> model = load(save_random_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "t.pth", "7"))
>>> dec = GraphDecoder(model, batch_size=2, use_graph=False)
>>> tuple(dec.step([[1], [2]]).shape)
(2, 128)

**In the product path** (:class:`GraphSteps`): a CUDA :class:`~rwkv_music.backends.torch.TorchModel`
with ``cuda_graph=True`` (the default) runs every single-token ``forward(..., inplace=True)`` -- the
decode loop's steps -- through one :class:`GraphDecoder` per batch-size bucket (powers of two up
to :data:`MAX_GRAPH_BATCH`).  A batch of ``B`` rows uses the first ``B`` rows of the bucket's
buffers; the caller's :class:`~rwkv_music.model.state.State` is then rebound to views of those
rows, so while the batch does not change (no row finished or admitted) a step copies nothing but
the ``B`` token ids.  When the loop compacts or joins its state (new tensors), the next step copies
them in once.  Sampling runs on the device right after the replay (the logits never leave it).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Sequence

import torch

from rwkv_music.errors import BackendUnavailable, StateError
from rwkv_music.model.state import State

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lets lazy inits and allocator settle)
MAX_GRAPH_BATCH = 1024  # larger batches run eagerly (one graph per power of two up to here)


def bucket_for(batch_size: int) -> int | None:
    """The graph bucket (a power of two >= ``batch_size``) or None when the batch is too large.

    >>> bucket_for(1), bucket_for(3), bucket_for(32), bucket_for(5000)
    (1, 4, 32, None)
    """
    if batch_size > MAX_GRAPH_BATCH:
        return None
    return 1 << max(0, int(batch_size - 1).bit_length())


class GraphDecoder:
    """Decode ``batch_size`` rows at a time through one captured step (see the module docstring).

    Args:
        model: a torch-backend model (``rwkv_music.backends.torch.TorchModel``).
        batch_size: rows per step; fixed for the life of the decoder (capture one per size).
        state: the starting state (``batch_size`` rows); None: fresh rows.
        use_graph: capture a CUDA graph (needs the model on CUDA); False runs the step eagerly.
    """

    def __init__(self, model: Any, batch_size: int, state: State | None = None, use_graph: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"GraphDecoder: batch_size must be a positive int, got {batch_size!r}")
        device = torch.device(model.device)
        if use_graph and device.type != "cuda":
            raise BackendUnavailable(f"GraphDecoder: CUDA graphs need a model on a CUDA device, not {device}")
        self.model, self.batch_size, self.device = model, batch_size, device
        self._tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self._state = model.new_state(batch_size)
        if state is not None:
            self.set_state(state)
        self._logits: torch.Tensor | None = None
        self._graph: Any = None
        self._owner: Any = None  # weakref to the caller's State whose tensors are views of the buffers
        if use_graph:
            self._capture()

    # -- the step ---------------------------------------------------------------------------
    def _eager_step(self) -> torch.Tensor:
        """One decode step on the static buffers; the new state overwrites the old one in place."""
        m = self.model
        # out_state=self._state: the version module writes the new state into the static buffers
        # (each layer reads its old state before writing it), so no copies follow.
        logits, _ = m._module.forward(m._weights, m.config, self._tokens, self._state, False, self._state)
        return logits

    def _capture(self) -> None:
        saved = {k: v.clone() for k, v in self._state.tensors.items()}  # warm-up steps must not count
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager_step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._logits = self._eager_step()
        self._graph = graph
        for k, v in saved.items():  # capture does not run the kernels, but restore anyway
            self._state.tensors[k].copy_(v)
        log.info("captured a CUDA graph for decode at batch %d", self.batch_size)

    def _run(self) -> torch.Tensor:
        """One decode step on the static buffers: the captured graph, or eager where none was captured."""
        if self._graph is None:
            with torch.no_grad():
                logits = self._eager_step()
            if self._logits is None:
                self._logits = logits
            else:  # one logits buffer, overwritten by every step, as the graph's is (so CPU tests see the aliasing)
                self._logits.copy_(logits)
        else:
            self._graph.replay()
        assert self._logits is not None
        return self._logits

    def step(self, tokens: Any) -> torch.Tensor:
        """Feed one token per row (``[B]`` or ``[B, 1]`` ints); returns float32 logits ``[B, V]``.

        The returned tensor is a static buffer that the next step overwrites: clone it to keep it.
        """
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1, 1)
        if ids.shape[0] != self.batch_size:
            raise ValueError(f"GraphDecoder.step: expected {self.batch_size} tokens, got {ids.shape[0]}")
        self._tokens.copy_(ids, non_blocking=True)
        return self._run()

    # -- state access ---------------------------------------------------------------------
    @property
    def state(self) -> State:
        """A copy of the current state (all rows)."""
        return self._state.copy()

    def set_state(self, state: State) -> None:
        """Replace every row's state (``batch_size`` rows)."""
        self.set_rows(range(self.batch_size), state)

    def set_rows(self, rows: Sequence[int], state: State | None = None) -> None:
        """Put ``state`` (one row per entry of ``rows``; None: fresh rows) into those rows."""
        rows = list(rows)
        if not rows:
            return
        if any(not 0 <= r < self.batch_size for r in rows):
            raise ValueError(f"GraphDecoder.set_rows: rows must be in 0..{self.batch_size - 1}, got {rows}")
        src = self.model.new_state(len(rows)) if state is None else state
        if src.batch_size != len(rows):
            raise StateError(f"GraphDecoder.set_rows: {len(rows)} rows but a state of {src.batch_size}")
        src = self.model._state(src, len(rows))  # checked and converted to the device and dtype
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        for name, t in self._state.tensors.items():
            t.index_copy_(1, index, src.tensors[name])

    # -- partial batches (the product path) ---------------------------------------------------
    def holds(self, state: State, rows: int) -> bool:
        """True if ``state`` is the view of this decoder's first ``rows`` rows (nothing to copy in)."""
        return all(
            t.shape[1] == rows and t.data_ptr() == self._state.tensors[name].data_ptr()
            and t.stride() == self._state.tensors[name].stride()
            for name, t in state.tensors.items()
        )

    def adopt(self, state: State) -> None:
        """Copy ``state``'s rows into the first rows of the buffers and make ``state`` a view of them.

        The caller's state object keeps working as a state (same keys, shapes, dtypes); its tensors
        now live in this decoder, and the next :meth:`step_rows` on it copies nothing.
        """
        rows = state.batch_size
        previous = self._owner() if self._owner is not None else None
        if previous is not None and previous is not state and self.holds(previous, previous.batch_size):
            # another state still lives in these rows: give it its own memory before overwriting
            previous.tensors = {k: v.clone() for k, v in previous.tensors.items()}
        checked = self.model._state(state, rows)
        for name, t in self._state.tensors.items():
            t[:, :rows].copy_(checked.tensors[name])
        state.tensors = {name: t[:, :rows] for name, t in self._state.tensors.items()}
        self._owner = weakref.ref(state)

    def step_rows(self, ids: torch.Tensor, state: State) -> torch.Tensor:
        """One step for the first ``ids.shape[0]`` rows, ``state`` adopted first if needed.

        Returns a view of the logits buffer (valid until the next step).
        """
        rows = ids.shape[0]
        if not self.holds(state, rows):
            self.adopt(state)
        self._tokens[:rows].copy_(ids.reshape(-1, 1), non_blocking=True)
        return self._run()[:rows]


class GraphSteps:
    """The decoders of one model, one per batch-size bucket, made on first use."""

    def __init__(self, model: Any, use_graph: bool = True) -> None:
        self.model, self.use_graph = model, use_graph
        self.decoders: dict[int, GraphDecoder] = {}
        self.failed: str | None = None  # why capture failed (then every step runs eagerly)

    def step(self, ids: torch.Tensor, state: State) -> torch.Tensor | None:
        """Logits of one decode step through a bucket's decoder; None: run it eagerly instead
        (a batch above the largest bucket, or a capture that failed once)."""
        bucket = bucket_for(int(ids.shape[0]))
        if bucket is None or self.failed is not None:
            return None
        dec = self.decoders.get(bucket)
        if dec is None:
            try:
                dec = GraphDecoder(self.model, bucket, use_graph=self.use_graph)
            except RuntimeError as exc:  # an op that cannot be captured: decoding still works, eagerly
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed (%s); decoding eagerly", self.failed.splitlines()[0])
                return None
            self.decoders[bucket] = dec
        return dec.step_rows(ids, state)
