"""The one decode loop: ``batch_size`` rows in flight, a finished row refilled with the next piece.

:func:`decode` takes :class:`WorkItem` objects (one piece each), prefills them, draws one token per
row per step and yields a :class:`PieceResult` the moment a piece ends.  A fixed batch is the same
loop with no refills: :func:`~rwkv_music.sampling.generate.generate` hands it all its rows at once
with one processor list for the whole batch, :func:`~rwkv_music.sampling.continuous.generate_continuous`
hands it an endless queue of items with a list each.

**Rules, written once.**  A piece ends with reason ``"stop"`` when it draws one of its stop tokens
(not part of its output, as in pip and ChatRWKV), ``"max_tokens"`` after ``max_new_tokens`` tokens,
or ``"constraint"`` when a processor left it no legal token (or the model no finite logit) and
``on_constraint="finish"``; with ``"raise"`` the
:class:`~rwkv_music.sampling.base.RowConstraintError` propagates.

**Processor groups.**  Rows that share one processor list form a group; the list sees the group as
one ``[B, V]`` batch (row ``slot`` of the group), rows that are not drawing are inactive (all
``-inf``, see :mod:`rwkv_music.sampling.base`) and ``update`` gets ``pad_token`` for them.  An item
with its own list is a group of one, so its step counter is its own token count; a batch list
(``processors=``) keeps its rows in lockstep, as the protocol's single ``step`` needs.

**On the logits' device.**  The batch logits stay where the backend put them (torch tensors on
their GPU; on a CPU a zero-copy numpy view, numpy for the onnx/ncnn backends): device processors and the draw
(:func:`~rwkv_music.sampling.sampler.sample_batch`) run there, and only the ``B`` chosen ids come to
the host each step for the end checks.  Host processors (the music constraints) get numpy, except
where one runs on the logits' device itself (``apply_device`` / ``apply_rows_device``: the MIDI
constraint sends a byte of flags per key and row and builds its mask there, the ABC constraint a
bool per byte and row).

**Pools.**  Items with their own lists of equal settings (continuous batching: one list per
piece, built from one config) are drawn as one batch: generic processors once over the pool, the
per-piece state of the penalties stacked, host processors on each piece's own instance (one call
for the pool where the class has ``apply_rows``), every row seeing exactly what its own list would
do alone (:meth:`_Loop._sample_pool`).  The pool works in place on one copy of its rows' logits.

**Same piece, however batched.**  A row's ``n``-th draw uses the counter-based uniform of
``(seed, n)`` (:func:`~rwkv_music.sampling.sampler.counter_uniforms`), its processors see only its
own scores, and rows of a backend batch are independent (:mod:`rwkv_music.backends.base`), so a
piece depends on its prompt, seed and processors only.

Prompts are prefilled in ``prefill_chunk`` pieces, equal lengths together; an item whose last
chunk is a single token (the one-token ``<pad>`` prompt of a fresh MIDI piece, say) reads that
token with the next decode step of the whole batch instead: the same forward calls per row, one
call fewer per admission.

**State.**  The batch state is compacted with ``State.select`` whenever rows finish (finished rows
cost no model time) and joined with ``State.concat`` on admission.  Decode steps pass
``inplace=True`` to backends that declare ``supports_inplace``: the loop only gives them states it
made itself (prefill results, selections, copies of a caller's state), never a caller's own.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from rwkv_music.sampling.arrays import HOST_DEVICE_TYPES, NEG_INF, on_accelerator, ops
from rwkv_music.sampling.base import (
    LogitsProcessor,
    LogitsProcessorList,
    RowConstraintError,
    SamplingValueError,
    _host_apply,
    is_torch_tensor,
    to_numpy,
)
from rwkv_music.sampling.sampler import key_uniforms, make_generators, row_keys, row_uniforms, sample_batch, seed_words

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "max_tokens", "constraint")


@dataclass
class WorkItem:
    """One piece to generate: a prompt, a seed, a length cap, processors and stop tokens.

    ``processors`` must be this item's own objects (stateful processors keep per-row state);
    build a fresh list per item, e.g. with ``SamplingConfig.build_processors()``.  ``state`` is an
    optional one-row initial :class:`~rwkv_music.model.state.State` (never written: the loop copies
    it).  ``tag`` is the caller's, handed back untouched in the result.
    """

    prompt: Sequence[int]
    seed: int
    max_new_tokens: int
    processors: LogitsProcessorList | Sequence[Any] | None = None
    stop_tokens: Sequence[int] = ()
    state: Any = None
    tag: Any = None


@dataclass
class PieceResult:
    """One finished piece.

    ``seconds`` is the piece's share of the run time: each forward call's time split evenly over
    the rows in it, plus the piece's own sampling time, so the shares of all pieces add up to
    the wall time of the run.
    """

    item: WorkItem
    index: int  # position of the item in the input
    tokens: list[int]  # generated ids, stop token excluded
    finish_reason: str  # "stop" | "max_tokens" | "constraint"
    stop_token: int | None
    state: Any  # one-row State after the prompt and every token (return_state=True), else None
    n_prompt_tokens: int
    n_sampled_tokens: int  # every sampled id, stop token included
    steps: int  # sampling steps the piece took part in
    prefill_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


# -- backend helpers ---------------------------------------------------------------------------
def logits_to_numpy(logits: Any) -> np.ndarray:
    """Backend logits (numpy or torch, any dtype) as float32 numpy."""
    if is_torch_tensor(logits):
        return logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def batch_logits(logits: Any) -> Any:
    """Backend logits as float32 where they are: a GPU tensor stays a tensor on its device.

    A CPU tensor becomes a numpy view of the same memory (no copy): on the host numpy's per-call
    cost is a fraction of torch's, which matters at small batches where the processors are many
    small operations.
    """
    if is_torch_tensor(logits):
        torch = sys.modules["torch"]
        logits = logits if logits.dtype == torch.float32 else logits.float()
        return logits if logits.device.type not in HOST_DEVICE_TYPES else logits.detach().numpy()
    return np.asarray(logits, dtype=np.float32)


def _join(parts: list[Any]) -> Any:
    """Concatenate row blocks; an int part is that many filler rows (-inf).  None if no array is given."""
    like = next((p for p in parts if not isinstance(p, int)), None)
    if like is None:
        return None
    xp = ops(like)
    blocks = [xp.full((p, like.shape[1]), NEG_INF, "float32") if isinstance(p, int) else p for p in parts]
    blocks = [b for b in blocks if b.shape[0]]
    if len(blocks) == 1:
        return blocks[0]
    return xp.torch.cat(blocks, dim=0) if xp.name == "torch" else np.concatenate(blocks, axis=0)


def _rows(xp: Any, array: Any, index: list[int]) -> Any:
    return array[xp.asarray(np.asarray(index, dtype=np.int64))] if xp.name == "torch" else array[index]


def decode_kwargs(backend: Any) -> dict[str, Any]:
    """Extra ``forward`` keywords for decode steps: ``inplace=True`` where the backend declares it.

    A backend with ``supports_inplace = True`` can write the next state into the state it was
    given instead of allocating a new one per token (much of a step's cost at large batch on a
    CPU).  The loop only passes it states it made itself, never a caller's.
    """
    return {"inplace": True} if bool(getattr(backend, "supports_inplace", False)) else {}


def prefill_prompts(backend: Any, prompts: list[list[int]], state: Any, chunk: int) -> tuple[Any, Any]:
    """Logits ``[B, V]`` (float32, backend's kind) after each prompt and the batch state, rows in prompt order.

    Equal prompts from one starting state (``state`` None or of one row) are prefilled once and their
    rows copied (compose and render start many pieces from one header).  Prompts of equal length run
    together (a ``[g, T]`` batch in chunks of ``chunk`` tokens); the group states are joined with
    ``State.concat`` and put back in prompt order.
    """
    n = len(prompts)
    if state is None or state.batch_size == 1:  # equal prompts from one start: prefill each once
        unique: dict[tuple[int, ...], int] = {}
        index = [unique.setdefault(tuple(int(t) for t in p), len(unique)) for p in prompts]
        if len(unique) < n:
            logits, joined = prefill_prompts(backend, [list(k) for k in unique], state, chunk)
            return _rows(ops(logits), logits, index), (joined.select(index) if joined is not None else None)
    groups: dict[int, list[int]] = {}
    for row, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(row)
    order: list[int] = []
    logits_parts, states = [], []
    for length, rows in groups.items():
        st = None
        if state is not None:
            if state.batch_size not in (1, n):
                raise SamplingValueError(f"state has {state.batch_size} rows; expected 1 or {n} (one per prompt)")
            st = state.select([0] * len(rows) if state.batch_size == 1 else rows)
        toks = np.array([prompts[r] for r in rows], dtype=np.int64)
        for start in range(0, length, chunk):
            out, st = backend.forward(toks[:, start : start + chunk], st)
        logits_parts.append(batch_logits(out))
        states.append(st)
        order.extend(rows)
    logits = _join(logits_parts)
    joined = states[0] if len(states) == 1 else type(states[0]).concat(states)
    if order != list(range(n)):
        back = [int(i) for i in np.argsort(order)]
        logits = _rows(ops(logits), logits, back)
        joined = joined.select(back)
    return logits, joined


def check_int(name: str, value: Any, low: int) -> None:
    """One-line :class:`SamplingValueError` unless ``value`` is an int (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SamplingValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_on_constraint(value: Any) -> None:
    if value not in ("raise", "finish"):
        raise SamplingValueError(f"on_constraint must be 'raise' or 'finish', got {value!r}")


# -- the loop ----------------------------------------------------------------------------------
def decode(
    backend: Any,
    items: Iterable[WorkItem],
    batch_size: int,
    *,
    processors: LogitsProcessorList | Sequence[Any] | None = None,
    pad_token: int = 0,
    prefill_chunk: int = 256,
    on_constraint: str = "raise",
    return_state: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Iterator[PieceResult]:
    """Generate every item with up to ``batch_size`` rows in flight; yield results as pieces end.

    Args:
        backend: an object with the backend protocol (``forward``; ``new_state`` for states).
        items: :class:`WorkItem` objects, read lazily: an item is taken only when a row is free.
        batch_size: rows in flight.
        processors: one list for all items as one batch (the fixed-batch form): ``reset`` gets every
            prompt, the rows draw in lockstep, no row is refilled.  Then ``items`` must fit in
            ``batch_size`` and carry no processors of their own.  ``None``: each item's own list.
        pad_token: the id a batch list's ``update`` gets for rows that are not drawing.
        prefill_chunk: prompt tokens per forward call during prefill.
        on_constraint: ``"raise"`` or ``"finish"`` (the piece ends with reason ``"constraint"``).
        return_state: give each result its final one-row state (a piece that ends at
            ``max_new_tokens`` stays one more step in the batch to read its last token).
        callback: ``callback(step, n_finished)`` after every step that drew tokens; ``n_finished``
            counts pieces that ended, including those only waiting to read their last token.

    Yields:
        :class:`PieceResult` in completion order (pieces ending at the same step: in batch order).
        Argument errors are raised at the call, item errors when the item is taken.

    >>> class Echo:                     # a stateless toy model: always predicts id (last + 1) % 4
    ...     def forward(self, tokens, state=None):
    ...         last = np.asarray(tokens)[:, -1]
    ...         return np.where(np.arange(4) == (last[:, None] + 1) % 4, 0.0, -9.0), None
    >>> from rwkv_music.sampling.processors import Temperature
    >>> work = [WorkItem([p], seed=1, max_new_tokens=5, processors=[Temperature(0)], stop_tokens=[3]) for p in (0, 2)]
    >>> [(r.index, r.tokens, r.finish_reason) for r in decode(Echo(), work, batch_size=2)]
    [(1, [], 'stop'), (0, [1, 2], 'stop')]
    """
    check_int("batch_size", batch_size, 1)
    check_int("prefill_chunk", prefill_chunk, 1)
    check_on_constraint(on_constraint)
    shared = None
    if processors is not None:
        shared = processors if isinstance(processors, LogitsProcessorList) else LogitsProcessorList(processors)
        items = list(items)
        if len(items) > batch_size:
            raise SamplingValueError(f"{len(items)} items for one batch list of processors; batch_size is {batch_size}")
    loop = _Loop(backend, prefill_chunk, on_constraint, return_state, shared, int(pad_token))
    return _drive(loop, iter(items), batch_size, callback)


_END = object()
POOLING = True  # run equal-setting per-piece lists as one batch (tests turn it off to compare)
# Prompts whose prefill a loop keeps (logits and a one-row state each; an RWKV-7 of 12 layers and
# width 768 has a 2.4 MB state): see _Loop._prefill.  0 turns the lookup off (tests compare).
PREFILL_CACHE = 8


def _pool_signature(procs: LogitsProcessorList) -> tuple | None:
    """A hashable description of a list's settings: lists with equal signatures can be pooled.

    Device processors give their ``pool_key`` (None, or no ``pool_mode``: the list is not pooled);
    host processors pool by type (each piece's own instance runs on its row).
    """
    parts: list[Any] = []
    for proc in procs:
        if getattr(proc, "runs_on", "host") == "device":
            if getattr(proc, "pool_mode", None) is None:
                return None
            try:
                key = proc.pool_key()
                hash(key)
            except TypeError:
                return None
            parts.append(key)
        else:
            parts.append(("host", type(proc).__module__, type(proc).__qualname__))
    return tuple(parts)


def _index(xp: Any, index: list[int]) -> Any:
    return xp.asarray(np.asarray(index, dtype=np.int64)) if xp.name == "torch" else index


def _drive(
    loop: "_Loop", source: Iterator[WorkItem], batch_size: int, callback: Callable[[int, int], None] | None
) -> Iterator[PieceResult]:
    """Fill free rows, draw, forward, repeat (a generator, so argument errors come at the call)."""
    taken = step = 0
    exhausted = False
    while True:
        # Free rows are filled *before* the next forward: new pieces are prefilled and draw their
        # first token now, so the step's forward runs on a full batch.
        drew = False
        while True:
            new: list[_Row] = []
            while not exhausted and len(loop.rows) + len(new) < batch_size:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                else:
                    new.append(loop.make_row(item, taken))
                    taken += 1
            if new:
                loop.admit(new)
            drew = loop.sample() or drew
            yield from loop.take_finished()
            if exhausted or len(loop.rows) >= batch_size:
                break
        if drew and callback is not None:
            callback(step, loop.n_finished + sum(r.feed_then_finish for r in loop.rows))
        step += drew
        if not loop.rows:
            return
        loop.forward()
        yield from loop.take_finished()  # max_tokens rows that read their last token (return_state)


class _Group:
    """Rows sharing one processor list; row ``slot`` of the list's batch is ``rows[slot]``."""

    def __init__(self, procs: LogitsProcessorList, shared: bool) -> None:
        self.procs, self.shared = procs, shared
        self.rows: list[_Row] = []
        self._scores: np.ndarray | None = None  # host_scores' buffer, kept between steps
        self._live: set[int] = set()  # its slots that hold logits (the others are -inf)
        self._keys: np.ndarray | None = None  # the rows' seed hash keys, one per slot (rows never change slots)
        self._pool_key: Any = _END  # pool_key's token, once: settings are public attributes set at creation

    def keys(self) -> np.ndarray:
        """Every slot's :func:`~rwkv_music.sampling.sampler.row_keys`, kept while the group's rows stay."""
        if self._keys is None or len(self._keys) != len(self.rows):
            self._keys = row_keys([row.seed for row in self.rows])
        return self._keys

    def pool_key(self, tokens: dict[tuple, object]) -> object | None:
        """One token per distinct :func:`_pool_signature` in ``tokens`` (the loop's table), computed on the first
        step (about 0.1 ms a list) and kept by the group, or None where the list is not pooled.  A signature is a
        nested tuple whose hash Python computes anew at every use: looked up for every row at every step it cost
        0.5 ms a step in a 32-piece render."""
        if self._pool_key is _END:
            sig = _pool_signature(self.procs)
            self._pool_key = None if sig is None else tokens.setdefault(sig, object())
        return self._pool_key

    def host_scores(self, logits: np.ndarray, batch_idx: list[int], slots: list[int]) -> np.ndarray:
        """``[len(rows), V]`` float32: row ``slots[j]`` = ``logits[batch_idx[j]]``, the other rows -inf.

        Once pieces have left a batch its logits rows no longer line up with the slots, at every step
        from then on; one buffer per group, of which only the rows that change are written, saves
        allocating and filling a fresh [B, V] array each time.  (Processors never write their input,
        and nothing keeps a step's scores past the step.)
        """
        shape = (len(self.rows), logits.shape[1])
        buf = self._scores
        if buf is None or buf.shape != shape:
            buf = self._scores = np.full(shape, NEG_INF, dtype=np.float32)
            self._live = set()
        live = set(slots)
        stale = sorted(self._live - live)
        if stale:
            buf[stale] = NEG_INF
        j, n = 0, len(slots)
        while j < n:  # runs of consecutive slots fed by consecutive batch rows, as slice copies
            e = j + 1
            while e < n and slots[e] == slots[e - 1] + 1 and batch_idx[e] == batch_idx[e - 1] + 1:
                e += 1
            buf[slots[j] : slots[e - 1] + 1] = logits[batch_idx[j] : batch_idx[e - 1] + 1]
            j = e
        self._live = live
        return buf


class _Row:
    """A piece in flight: its item, random generator, processor group and progress."""

    def __init__(self, item: WorkItem, index: int, prompt: list[int], group: _Group) -> None:
        self.item, self.index, self.prompt, self.group = item, index, prompt, group
        self.slot = len(group.rows)
        group.rows.append(self)
        make_generators([item.seed])  # names a bad seed
        self.seed = int(item.seed)
        self.seed_words = seed_words(item.seed)
        self.stops = {int(t) for t in item.stop_tokens}
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.hit: int | None = None
        self.final_state: Any = None
        self.has_logits = False  # its row of the loop's batch logits holds the next draw's scores
        self.feed: int | None = None  # the token the next forward reads for this row
        self.feed_then_finish = False  # max_tokens with return_state: read the last token, then end
        self.n_sampled = self.steps = 0
        self.prefill_s = self.decode_s = 0.0

    def result(self) -> PieceResult:
        return PieceResult(
            item=self.item,
            index=self.index,
            tokens=self.tokens,
            finish_reason=str(self.reason),
            stop_token=self.hit,
            state=self.final_state,
            n_prompt_tokens=len(self.prompt),
            n_sampled_tokens=self.n_sampled,
            steps=self.steps,
            prefill_seconds=self.prefill_s,
            decode_seconds=self.decode_s,
        )


def _check_item(item: Any, index: int) -> list[int]:
    """The item's prompt as ints; one-line errors naming the item."""
    if not isinstance(item, WorkItem):
        raise SamplingValueError(f"work item {index}: expected a WorkItem, got {type(item).__name__}")
    prompt = [int(t) for t in item.prompt]
    if not prompt:
        raise SamplingValueError(f"work item {index}: the prompt is empty; it needs at least one token")
    n = item.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SamplingValueError(f"work item {index}: max_new_tokens must be an integer >= 0, got {n!r}")
    if item.state is not None and getattr(item.state, "batch_size", None) != 1:
        raise SamplingValueError(f"work item {index}: state must have exactly one row")
    return prompt


class _Loop:
    """The rows in flight, their joint model state, and the three moves: admit, sample, forward."""

    def __init__(
        self,
        backend: Any,
        chunk: int,
        on_constraint: str,
        return_state: bool,
        shared: LogitsProcessorList | None,
        pad_token: int,
    ) -> None:
        self.backend, self.chunk = backend, chunk
        self.fwd = decode_kwargs(backend)  # inplace=True where declared: self.state is always ours
        self.on_constraint, self.return_state, self.pad_token = on_constraint, return_state, pad_token
        self.shared = None if shared is None else _Group(shared, shared=True)
        self.rows: list[_Row] = []  # batch order: row i is row i of self.state
        self.state: Any = None
        self.logits: Any = None  # float32 [len(rows), V] of the backend's kind, rows as self.rows (or None)
        self.n_finished = 0  # pieces already handed out
        self._owned: set[int] = set()  # ids of the processor objects in flight
        self._tails: dict[Any, tuple[int, LogitsProcessorList | None]] = {}  # per pool key, see _pool_tail
        self._pool_keys: dict[tuple, object] = {}  # signature -> the token its groups pool under (_Group.pool_key)
        self._pool_work: np.ndarray | None = None  # _pool_rows' buffer, reused from step to step
        self._prefilled: dict[tuple[int, ...], tuple[Any, Any]] = {}  # prompt -> (logits [1, V], state), see _prefill

    # -- admission -------------------------------------------------------------------------
    def make_row(self, item: Any, index: int) -> _Row:
        prompt = _check_item(item, index)
        if self.shared is not None:
            if item.processors:
                raise SamplingValueError(f"work item {index}: has its own processors and a batch list was given")
            return _Row(item, index, prompt, self.shared)
        raw = item.processors
        procs = raw if isinstance(raw, LogitsProcessorList) else LogitsProcessorList(raw or [])
        ids = {id(p) for p in procs}
        if ids & self._owned:  # a shared stateful processor would mix two pieces' histories
            raise SamplingValueError(
                f"work item {index}: its processors are also used by a piece in flight; build one list per item"
            )
        self._owned |= ids
        procs.reset([prompt])
        return _Row(item, index, prompt, _Group(procs, shared=False))

    def admit(self, new: list[_Row]) -> None:
        """Prefill ``new`` rows and join them to the batch."""
        if self.shared is not None:
            self.shared.procs.reset([r.prompt for r in self.shared.rows])
        heads: list[_Row] = []  # rows with prompt tokens to prefill now
        bare: list[_Row] = []  # one-token prompts: that token goes with the next decode step
        for row in new:
            p = row.prompt
            # a batch list keeps its rows in lockstep, so they all draw their first token together
            if not row.group.shared and row.item.max_new_tokens > 0 and len(p) % self.chunk == 1:
                row.feed = p[-1]  # a prefill's last chunk would be this token alone: same call sequence
            (bare if len(p) == 1 and row.feed is not None else heads).append(row)
        parts = [self.state] if self.rows else []
        blocks: list[Any] = [len(self.rows) if self.logits is None else self.logits] if self.rows else []
        if heads:
            prompts = [r.prompt[:-1] if r.feed is not None else r.prompt for r in heads]
            init = self._initial_state(heads)
            t0 = time.perf_counter()
            logits, state = self._prefill(prompts, init)
            spent = time.perf_counter() - t0
            total = sum(len(p) for p in prompts)
            for row, p in zip(heads, prompts):
                row.prefill_s += spent * len(p) / total
                row.has_logits = row.feed is None
            parts.append(state)
            blocks.append(logits)
        if bare:
            parts.append(self._initial_state(bare, always=True))
            blocks.append(len(bare))
        self.logits = _join(blocks)
        self.rows = self.rows + heads + bare
        parts = [p for p in parts if p is not None]
        if parts:
            self.state = parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
        for row in heads:
            if row.item.max_new_tokens == 0:
                self._finish(row, "max_tokens")

    def _prefill(self, prompts: list[list[int]], init: Any) -> tuple[Any, Any]:
        """:func:`prefill_prompts` of fresh rows, with the prompts of this loop's earlier admits looked up.

        A render refills its rows with the same few prompts over and over (every sample of a prompt;
        every row of a header-only dataset): 94 prefills of one 21-byte header in a 128-tune ABC
        render, about a tenth of its time.  Rows starting from a state of their own are prefilled
        as before.  A prompt's logits and state do not depend on the rows prefilled beside it (the
        loop's determinism), so a looked-up row is the row a prefill would give; each row gets a copy.
        """
        if init is not None or PREFILL_CACHE <= 0 or getattr(self.backend, "new_state", None) is None:
            return prefill_prompts(self.backend, prompts, init, self.chunk)  # (no state objects: nothing to keep)
        keys = [tuple(int(t) for t in p) for p in prompts]
        cache = self._prefilled
        unique = list(dict.fromkeys(keys))
        missing = [k for k in unique if k not in cache]
        hits = [k for k in unique if k in cache]
        logits_parts, state_parts, at = [], [], {}
        if missing:
            logits, state = prefill_prompts(self.backend, [list(k) for k in missing], None, self.chunk)
            xp = ops(logits)
            for j, k in list(enumerate(missing))[-PREFILL_CACHE:]:  # copies: the batch state is updated in place
                cache[k] = (_rows(xp, logits, [j]), state.select([j]))
            if not hits and len(keys) == len(missing):  # each prompt once, none met before: the prefill's own rows
                self._evict()
                return logits, state
            logits_parts.append(logits)
            state_parts.append(state)
            at.update((k, j) for j, k in enumerate(missing))
        for j, k in enumerate(hits, start=len(missing)):
            entry = cache[k] = cache.pop(k)  # (re)inserted last: the most recently used
            logits_parts.append(entry[0])
            state_parts.append(entry[1])
            at[k] = j
        self._evict()
        logits = logits_parts[0] if len(logits_parts) == 1 else _join(logits_parts)
        state = state_parts[0] if len(state_parts) == 1 else type(state_parts[0]).concat(state_parts)
        index = [at[k] for k in keys]
        return _rows(ops(logits), logits, index), state.select(index)  # copies, never the kept rows themselves

    def _evict(self) -> None:
        while len(self._prefilled) > PREFILL_CACHE:
            del self._prefilled[next(iter(self._prefilled))]

    def _initial_state(self, rows: list[_Row], always: bool = False) -> Any:
        """The rows' starting states (item state or a fresh one); None lets the backend start fresh."""
        fresh = getattr(self.backend, "new_state", None)
        if all(r.item.state is None for r in rows) and (not always or fresh is None):
            return None  # (a backend without new_state keeps no state: nothing to join)
        # Copies: decode steps may update the batch state in place, never a caller's state.
        parts = [r.item.state.copy() if r.item.state is not None else self.backend.new_state(1) for r in rows]
        return parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)

    # -- one step --------------------------------------------------------------------------
    def sample(self) -> bool:
        """Draw the next token of every row that has logits; True if any row took part."""
        rows = self.rows
        group = rows[0].group if rows else None
        if group is not None and (len(rows) == 1 or all(row.group is group for row in rows)):
            # one list (a batch list, or a single piece): the usual step, without the pooling below
            members = [(i, row) for i, row in enumerate(rows) if row.reason is None and row.has_logits]
            if not members:
                return False
            t0 = time.perf_counter()
            self._sample_group(group, members)
            share = (time.perf_counter() - t0) / len(members)
            for _, row in members:
                row.decode_s += share
            return True
        groups: dict[int, tuple[_Group, list[tuple[int, _Row]]]] = {}
        for i, row in enumerate(self.rows):
            if row.reason is None and row.has_logits:
                groups.setdefault(id(row.group), (row.group, []))[1].append((i, row))
        pools: dict[Any, list[tuple[_Group, list[tuple[int, _Row]]]]] = {}
        if len(groups) == 1:  # one list (a batch list, or a single piece): nothing to pool with
            pools[0] = list(groups.values())
        for group, members in groups.values() if len(groups) > 1 else ():
            key = None if group.shared or not POOLING else group.pool_key(self._pool_keys)
            pools.setdefault(key if key is not None else id(group), []).append((group, members))
        for entries in pools.values():
            t0 = time.perf_counter()
            if len(entries) > 1:
                self._sample_pool(entries)
            else:
                self._sample_group(*entries[0])
            rows = [row for _, members in entries for _, row in members]
            share = (time.perf_counter() - t0) / len(rows)
            for row in rows:
                row.decode_s += share
        return bool(groups)

    def _sample_pool(self, entries: list[tuple[_Group, list[tuple[int, _Row]]]]) -> None:
        """Pieces with their own, equal-setting lists, drawn as one batch (see :func:`_pool_signature`).

        Row ``r`` sees exactly what its own list would do alone: shared processors run once on the
        batch, step-dependent ones with one step per row, penalties over the stacked per-piece
        state, host processors (the music constraints) on each piece's own instance (:meth:`_host_rows`).
        """
        members = [(i, row, group) for group, ms in entries for i, row in ms]
        xp = ops(self.logits)
        n = len(members)
        scores = self._pool_rows(xp, [i for i, _, _ in members])
        steps = np.array([row.steps for _, row, _ in members], dtype=np.int64)
        for _, row, _ in members:
            row.steps += 1
            row.has_logits = False
        alive = np.ones(n, dtype=bool)
        columns = list(zip(*[group.procs for _, _, group in members]))
        tail_at, tail = self._pool_tail(entries[0][0], columns)
        for j, procs in enumerate(columns):
            p0 = procs[0]
            if j == tail_at and tail is not None and isinstance(scores, np.ndarray):
                # the shared processors left run as one list, as a single batch's do (a filter's compact
                # candidates and the one-call draw kernel where they apply); row r's result is unchanged
                scores = tail.run(int(steps[0]), scores, candidates=True)
                break
            mode = getattr(p0, "pool_mode", None) if getattr(p0, "runs_on", "host") == "device" else None
            if mode == "shared":
                inplace = getattr(p0, "apply_inplace", None)
                scores = (inplace or p0.apply)(int(steps[0]), scores)
            elif mode == "steps":
                scores = p0.apply_steps_inplace(steps, scores)
            elif mode == "state":
                pooled = getattr(type(p0), "apply_pool_inplace", None) or type(p0).apply_pool
                scores = pooled(procs, scores)
            else:
                scores = self._host_rows(procs, steps, scores, members, alive)
        seeds = [row.seed for _, row, _ in members]
        counts = [row.n_sampled for _, row, _ in members]
        picked = xp.to_host(sample_batch(scores, row_uniforms(seeds, counts, like=scores)))
        drawing: list[int] = []
        for r, (i, row, group) in enumerate(members):
            if not alive[r]:
                continue
            if int(picked[r]) < 0:
                self._dead_ends(group, int(steps[r]), self.logits[i : i + 1], [(i, row)])
                continue
            drawing.append(r)
        tokens = {r: int(picked[r]) for r in drawing}
        for j, procs in enumerate(columns):
            p0 = procs[0]
            mode = getattr(p0, "pool_mode", None) if getattr(p0, "runs_on", "host") == "device" else None
            if mode == "state":
                type(p0).update_pool([procs[r] for r in drawing], [tokens[r] for r in drawing],
                                     scores.shape[1], scores)
            elif mode is None and getattr(type(p0), "update_rows", None) is not None:  # one call for the pool
                type(p0).update_rows([procs[r] for r in drawing], [tokens[r] for r in drawing])
            elif mode is None or type(p0).update is not LogitsProcessor.update:
                for r in drawing:
                    procs[r].update([tokens[r]])
        for r in drawing:
            i, row, _ = members[r]
            self._advance(row, tokens[r], i)

    def _pool_rows(self, xp: Any, index: list[int]) -> Any:
        """The pool's own copy of its rows' logits, which each step of the pool writes in place where it can
        (self.logits, from which a dead end is diagnosed, is never written).  On the host the copy goes into
        one buffer kept from step to step: a fresh [32, 20,096] array cost 0.4-0.5 ms a step in a render on
        our 2-core CPU, its page faults included, against 0.1 ms for the copy alone.  Nothing outlives the
        step (the draw keeps ids only)."""
        if xp.name == "torch":
            return _rows(xp, self.logits, index)
        n, width = len(index), self.logits.shape[1]
        work = self._pool_work
        if work is None or work.shape[0] < n or work.shape[1] != width:
            work = self._pool_work = np.empty((max(n, len(self.rows)), width), dtype=np.float32)
        out = work[:n]
        # (mode "clip": the indices are valid, and "raise" copies through a buffer)
        np.take(self.logits, np.asarray(index, dtype=np.intp), axis=0, out=out, mode="clip")
        return out

    def _pool_tail(self, group: _Group, columns: list[tuple]) -> tuple[int, LogitsProcessorList | None]:
        """Where a pool's last run of ``shared`` processors starts, and one list of them (kept per signature:
        shared processors hold no state, so any piece's instances serve every row), or ``(len, None)``."""
        key = group.pool_key(self._pool_keys)
        hit = self._tails.get(key)
        if hit is None:
            at = len(columns)
            while at > 0:
                p0 = columns[at - 1][0]
                if getattr(p0, "runs_on", "host") != "device" or getattr(p0, "pool_mode", None) != "shared":
                    break
                at -= 1
            hit = self._tails[key] = (at, LogitsProcessorList(c[0] for c in columns[at:]) if at < len(columns)
                                      else None)
        return hit

    def _host_rows(self, procs: tuple, steps: np.ndarray, scores: Any, members: list, alive: np.ndarray) -> Any:
        """One host processor per row (each piece's own), on numpy; a raised dead end ends that piece.
        ``scores`` is the pool's own array, written in place where it is float32 host memory.  On an
        accelerator a class with ``apply_rows_device`` processes the pool there (the music constraints: only
        their masks or flags cross from the host)."""
        on_device = getattr(type(procs[0]), "apply_rows_device", None)
        if on_device is not None and on_accelerator(scores) and alive.all():
            done = on_device(procs, scores)
            if done is not None:
                return done
        arr, back = to_numpy(scores)
        if not (arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable):
            arr = np.array(arr, dtype=np.float32)
        pooled = getattr(type(procs[0]), "apply_rows", None)  # one call for every row's own processor
        if pooled is not None and alive.all() and pooled(procs, arr):
            return back(arr)
        for r, proc in enumerate(procs):
            if not alive[r]:
                continue
            try:
                arr[r : r + 1] = np.asarray(_host_apply(proc, int(steps[r]), arr[r : r + 1]))
            except RowConstraintError:
                i, row, _ = members[r]
                if self.on_constraint == "raise":
                    raise
                log.warning("piece %d ends with reason 'constraint' (rule %r)", row.index, getattr(proc, "rule", "?"))
                self._finish(row, "constraint", batch_row=i)
                alive[r] = False
                arr[r] = NEG_INF
        return back(arr)

    def _advance(self, row: _Row, t: int, i: int) -> None:
        """Book a drawn token: stop, max tokens, or the next token to read."""
        row.n_sampled += 1
        if t in row.stops:
            self._finish(row, "stop", t, batch_row=i)
            return
        row.tokens.append(t)
        row.feed = t
        if len(row.tokens) >= row.item.max_new_tokens:
            if self.return_state:
                row.feed_then_finish = True
            else:
                self._finish(row, "max_tokens")

    def _sample_group(self, group: _Group, members: list[tuple[int, _Row]]) -> None:
        step = members[0][1].steps  # a group's drawing rows are in lockstep
        xp = ops(self.logits)
        n_slots = len(group.rows)
        batch_idx = [i for i, _ in members]
        slots = [row.slot for _, row in members]
        if n_slots == len(self.rows) and slots == batch_idx == list(range(n_slots)):
            scores = self.logits  # the whole batch, in slot order (processors never write their input)
        elif n_slots == 1:
            scores = self.logits[batch_idx[0] : batch_idx[0] + 1]
        elif xp.name == "numpy":
            scores = group.host_scores(self.logits, batch_idx, slots)
        else:
            scores = xp.full((n_slots, self.logits.shape[1]), NEG_INF, "float32")
            scores[_index(xp, slots)] = _rows(xp, self.logits, batch_idx)
        for _, row in members:
            row.steps += 1
            row.has_logits = False
        processed = self._process(group, step, scores, members)
        counts = [0] * n_slots  # (a slot not drawing: any uniform, its draw is not read)
        for _, row in members:
            counts[row.slot] = row.n_sampled
        drawn = sample_batch(processed, key_uniforms(group.keys(), counts, like=processed))
        picked = xp.to_host(drawn)  # the one host sync of the step
        chosen = [self.pad_token] * n_slots
        drawing = []
        dead: list[tuple[int, _Row]] = []
        for i, row in members:
            if row.reason is not None:  # a constraint dead end raised by a host processor, just now
                continue
            t = int(picked[row.slot])
            if t < 0:
                dead.append((i, row))
                continue
            chosen[row.slot] = t
            drawing.append((i, row))
        if dead:
            self._dead_ends(group, step, scores, dead)
        # A batch list is updated every step (the pad id for rows not drawing); an item's own list
        # only when its piece drew, so a list that hit a dead end is handed back as it was.
        if drawing or group.shared:
            if xp.name == "numpy" and len(members) == n_slots:  # every slot drew: the ids are `chosen` already
                on_device = chosen
            else:
                on_device = xp.where(drawn < 0, self.pad_token, drawn) if not dead else xp.asarray(chosen, "int64")
            group.procs.update(on_device, host=chosen)
        for i, row in drawing:
            self._advance(row, chosen[row.slot], i)

    def _dead_ends(self, group: _Group, step: int, scores: Any, dead: list[tuple[int, _Row]]) -> None:
        """Rows left with no legal token: name the rule that emptied each, then raise or finish them."""
        rules = group.procs.diagnose(step, scores)
        for i, row in dead:
            rule = rules.get(row.slot, "model logits")
            detail = "no finite logit" if rule == "model logits" else ""
            err = RowConstraintError(row.slot, step, rule, detail)
            if self.on_constraint == "raise":
                raise err
            log.warning("%s; piece %d ends with reason 'constraint'", err, row.index)
            self._finish(row, "constraint", batch_row=i)

    def _process(self, group: _Group, step: int, scores: Any, members: list[tuple[int, _Row]]) -> Any:
        """Apply the group's processors (no row checks: an emptied row draws -1, see :meth:`_dead_ends`).

        A processor that raises :class:`RowConstraintError` itself ends that row with
        ``on_constraint="finish"``, and the step is retried without it."""
        batch_row = {row.slot: i for i, row in members}
        while True:
            try:
                return group.procs.run(step, scores, candidates=True)  # only drawn from
            except RowConstraintError as err:
                row = group.rows[err.row] if 0 <= err.row < len(group.rows) else None
                if self.on_constraint == "raise" or row is None or row.reason is not None:
                    raise
                log.warning("%s; piece %d ends with reason 'constraint'", err, row.index)
                self._finish(row, "constraint", batch_row=batch_row.get(err.row))
                if not group.shared and all(r.reason is not None for _, r in members):
                    return scores  # an item's own list: nobody left to draw (a batch list sees the step out)
                scores = ops(scores).copy(scores)
                scores[err.row] = NEG_INF

    def forward(self) -> None:
        """Read every row's pending token in one ``[B, 1]`` call."""
        tokens = np.array([[row.feed] for row in self.rows], dtype=np.int64)
        t0 = time.perf_counter()
        out, self.state = self.backend.forward(tokens, self.state, **self.fwd)
        self.logits = batch_logits(out)
        share = (time.perf_counter() - t0) / len(self.rows)
        for i, row in enumerate(self.rows):
            row.has_logits, row.feed = True, None
            row.decode_s += share
            if row.feed_then_finish:
                self._finish(row, "max_tokens", batch_row=i)

    # -- leaving the batch -----------------------------------------------------------------
    def _finish(self, row: _Row, reason: str, stop: int | None = None, batch_row: int | None = None) -> None:
        row.reason, row.hit = reason, stop
        if self.return_state and self.state is not None:
            i = self.rows.index(row) if batch_row is None else batch_row
            row.final_state = self.state.select([i])

    def take_finished(self) -> Iterator[PieceResult]:
        """Remove finished rows from the batch (compacting the state) and yield their results."""
        done = [r for r in self.rows if r.reason is not None]
        if not done:
            return
        keep = [i for i, r in enumerate(self.rows) if r.reason is None]
        if self.state is not None:
            self.state = self.state.select(keep) if keep else None
        if self.logits is not None:
            self.logits = _rows(ops(self.logits), self.logits, keep) if keep else None
        self.rows = [self.rows[i] for i in keep]
        self.n_finished += len(done)
        for row in done:
            if not row.group.shared:
                self._owned -= {id(p) for p in row.group.procs}
            yield row.result()


__all__ = ["FINISH_REASONS", "PieceResult", "WorkItem", "batch_logits", "decode", "decode_kwargs", "prefill_prompts"]
