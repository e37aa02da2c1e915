"""Continuous batching: keep ``batch_size`` pieces in flight, refilling a row as soon as its piece ends.

:func:`~rwkv_music.sampling.generate.generate` runs a fixed set of rows and drops finished ones,
so its batch shrinks and the next call waits for the slowest piece.  :func:`generate_continuous`
takes an iterable of :class:`WorkItem` (one piece each), keeps up to ``batch_size`` of them in
the model batch, yields each :class:`PieceResult` the moment its piece ends (completion order)
and admits the next item into the freed row.

**Same piece as generate().**  Every item carries what ``generate`` takes for one row: its
prompt, its own processor list (``reset`` with ``[prompt]``, then called and ``update``-d with that
row alone), its own ``PCG64(seed)``, ``max_new_tokens`` and stop tokens.  The step counter passed
to the processors is the piece's own token count, the prompt is prefilled in the same
``prefill_chunk`` pieces, and the stop/max-token/constraint rules are generate's, so an item's
tokens equal ``generate(backend, [prompt], ...)`` with the same settings (rows of a backend batch
are independent, see :mod:`rwkv_music.backends.base`).

**Admission.**  New items are prefilled together (equal lengths share a forward, as in
generate), their states joined to the running batch with ``State.select``/``State.concat``
(valid for every backend and version: they all share :class:`~rwkv_music.model.state.State`).
When a prompt's last prefill chunk is a single token (for example the one-token ``<pad>``
prompt of a fresh MIDI piece), that token is not prefilled alone but fed with the next decode
step of the whole batch: the same forward calls per row, one call fewer per admission.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rwkv_music.sampling.base import LogitsProcessorList, RowConstraintError, SamplingValueError
from rwkv_music.sampling.generate import decode_kwargs, logits_to_numpy, prefill_prompts
from rwkv_music.sampling.sampler import make_generators, sample_row

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One piece to generate: what :func:`~rwkv_music.sampling.generate.generate` takes for one row.

    ``processors`` must be this item's own objects (stateful processors keep per-row state);
    build a fresh list per item, e.g. with ``SamplingConfig.build_processors()``.  ``state`` is an
    optional one-row initial :class:`~rwkv_music.model.state.State`.  ``tag`` is the caller's,
    handed back untouched in the result.
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
    """One finished piece (the per-row fields of a ``GenerationResult``).

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
    steps: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


class _Row:
    """A piece in flight: its item, random generator, processors and progress."""

    def __init__(self, item: WorkItem, index: int, prompt: list[int], procs: LogitsProcessorList) -> None:
        self.item, self.index, self.prompt, self.procs = item, index, prompt, procs
        self.rng = make_generators([item.seed])[0]
        self.stops = {int(t) for t in item.stop_tokens}
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.hit: int | None = None
        self.final_state: Any = None
        self.logits: np.ndarray | None = None  # [V] for the next sample; None while a token waits
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


def generate_continuous(
    backend: Any,
    items: Iterable[WorkItem],
    *,
    batch_size: int,
    prefill_chunk: int = 256,
    on_constraint: str = "raise",
    return_state: bool = False,
) -> Iterator[PieceResult]:
    """Generate every item with up to ``batch_size`` rows in flight; yield results as pieces end.

    Args:
        backend: an object with the backend protocol (``forward``, ``new_state``).
        items: :class:`WorkItem` objects, read lazily: an item is taken only when a row is free.
        batch_size: rows in flight.
        prefill_chunk: prompt tokens per forward call during prefill (as in ``generate``).
        on_constraint: ``"raise"`` or ``"finish"`` (the piece ends with reason ``"constraint"``).
        return_state: give each result its final one-row state (a piece that ends at
            ``max_new_tokens`` stays one more step in the batch to read its last token).

    Yields:
        :class:`PieceResult` in completion order (pieces ending at the same step: in batch order).

    >>> import numpy as np
    >>> class Echo:                     # a stateless toy model: always predicts id (last + 1) % 4
    ...     def forward(self, tokens, state=None):
    ...         last = np.asarray(tokens)[:, -1]
    ...         return np.where(np.arange(4) == (last[:, None] + 1) % 4, 0.0, -9.0), None
    >>> from rwkv_music.sampling.processors import Temperature
    >>> work = [WorkItem([p], seed=1, max_new_tokens=5, processors=[Temperature(0)], stop_tokens=[3]) for p in (0, 2)]
    >>> [(r.index, r.tokens, r.finish_reason) for r in generate_continuous(Echo(), work, batch_size=2)]
    [(1, [], 'stop'), (0, [1, 2], 'stop')]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SamplingValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
        raise SamplingValueError(f"prefill_chunk must be an integer >= 1, got {prefill_chunk!r}")
    if on_constraint not in ("raise", "finish"):
        raise SamplingValueError(f"on_constraint must be 'raise' or 'finish', got {on_constraint!r}")
    return _run(_Loop(backend, prefill_chunk, on_constraint, return_state), iter(items), batch_size)


def _run(loop: "_Loop", source: Iterator[WorkItem], batch_size: int) -> Iterator[PieceResult]:
    """The loop of :func:`generate_continuous` (a generator, so argument errors above come at once)."""
    taken = 0
    exhausted = False
    while True:
        # Free rows are filled *before* the next forward: new pieces are prefilled and draw their
        # first token now, so the step's forward runs on a full batch.
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
            loop.sample()
            finished = list(loop.take_finished())
            yield from finished
            if exhausted or len(loop.rows) >= batch_size:
                break
        if not loop.rows:
            return
        loop.forward()
        yield from loop.take_finished()  # max_tokens rows that read their last token (return_state)


_END = object()


class _Loop:
    """The rows in flight, their joint model state, and the three moves: admit, sample, forward."""

    def __init__(self, backend: Any, chunk: int, on_constraint: str, return_state: bool) -> None:
        self.backend, self.chunk = backend, chunk
        self.fwd = decode_kwargs(backend)  # inplace=True on torch: self.state is always ours
        self.on_constraint, self.return_state = on_constraint, return_state
        self.rows: list[_Row] = []  # batch order: row i is row i of self.state
        self.state: Any = None
        self._owned: set[int] = set()  # ids of the processor objects in flight

    # -- admission -------------------------------------------------------------------------
    def make_row(self, item: Any, index: int) -> _Row:
        prompt = _check_item(item, index)
        raw = item.processors
        procs = raw if isinstance(raw, LogitsProcessorList) else LogitsProcessorList(raw or [])
        ids = {id(p) for p in procs}
        if ids & self._owned:  # a shared stateful processor would mix two pieces' histories
            raise SamplingValueError(
                f"work item {index}: its processors are also used by a piece in flight; build one list per item"
            )
        self._owned |= ids
        row = _Row(item, index, prompt, procs)
        procs.reset([prompt])
        return row

    def admit(self, new: list[_Row]) -> None:
        """Prefill ``new`` rows and join them to the batch."""
        heads: list[_Row] = []  # rows with prompt tokens to prefill now
        bare: list[_Row] = []  # one-token prompts: that token goes with the next decode step
        for row in new:
            p = row.prompt
            if row.item.max_new_tokens > 0 and len(p) % self.chunk == 1:
                row.feed = p[-1]  # generate's last chunk would be this token alone: same call sequence
            (bare if len(p) == 1 and row.feed is not None else heads).append(row)
        parts = [self.state] if self.rows else []
        if heads:
            prompts = [r.prompt[:-1] if r.feed is not None else r.prompt for r in heads]
            init = self._initial_state(heads)
            t0 = time.perf_counter()
            logits, state = prefill_prompts(self.backend, prompts, init, self.chunk)
            spent = time.perf_counter() - t0
            total = sum(len(p) for p in prompts)
            for i, (row, p) in enumerate(zip(heads, prompts)):
                row.prefill_s += spent * len(p) / total
                if row.feed is None:
                    row.logits = logits[i]
            parts.append(state)
        if bare:
            parts.append(self._initial_state(bare, always=True))
        self.rows = self.rows + heads + bare
        parts = [p for p in parts if p is not None]
        if parts:
            self.state = parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
        for row in heads:
            if row.item.max_new_tokens == 0:
                self._finish(row, "max_tokens")

    def _initial_state(self, rows: list[_Row], always: bool = False) -> Any:
        """The rows' starting states (item state or a fresh one); None lets the backend start fresh."""
        fresh = getattr(self.backend, "new_state", None)
        if all(r.item.state is None for r in rows) and (not always or fresh is None):
            return None  # (a backend without new_state keeps no state: nothing to join)
        # Copies: decode steps may update the batch state in place, never a caller's state.
        parts = [r.item.state.copy() if r.item.state is not None else self.backend.new_state(1) for r in rows]
        return parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)

    # -- one step --------------------------------------------------------------------------
    def sample(self) -> None:
        """Draw the next token of every row that has logits (as generate's step, for one row)."""
        for i, row in enumerate(self.rows):
            if row.reason is not None or row.logits is None:
                continue
            t0 = time.perf_counter()
            self._sample_row(i, row)
            row.decode_s += time.perf_counter() - t0

    def _sample_row(self, i: int, row: _Row) -> None:
        step = row.steps
        row.steps += 1
        scores = np.array(row.logits, dtype=np.float32, copy=True)[None, :]
        row.logits = None
        try:
            processed = row.procs(step, scores)
        except RowConstraintError as err:
            if self.on_constraint == "raise":
                raise
            log.warning("%s; piece %d ends with reason 'constraint'", err, row.index)
            self._finish(row, "constraint", batch_row=i)
            return
        chosen = sample_row(np.asarray(processed)[0], row.rng)
        if chosen < 0:  # the model gave no finite logit
            err = RowConstraintError(0, step, "model logits", "no finite logit")
            if self.on_constraint == "raise":
                raise err
            log.warning("%s", err)
            self._finish(row, "constraint", batch_row=i)
            return
        row.procs.update([chosen])
        row.n_sampled += 1
        if chosen in row.stops:
            self._finish(row, "stop", chosen, batch_row=i)
            return
        row.tokens.append(chosen)
        row.feed = chosen
        if len(row.tokens) >= row.item.max_new_tokens:
            if self.return_state:
                row.feed_then_finish = True
            else:
                self._finish(row, "max_tokens")

    def forward(self) -> None:
        """Read every row's pending token in one ``[B, 1]`` call."""
        tokens = np.array([[row.feed] for row in self.rows], dtype=np.int64)
        t0 = time.perf_counter()
        out, self.state = self.backend.forward(tokens, self.state, **self.fwd)
        logits = logits_to_numpy(out)
        share = (time.perf_counter() - t0) / len(self.rows)
        for i, row in enumerate(self.rows):
            row.logits, row.feed = logits[i], None
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
        self.rows = [self.rows[i] for i in keep]
        for row in done:
            self._owned -= {id(p) for p in row.procs}
            yield row.result()


__all__ = ["PieceResult", "WorkItem", "generate_continuous"]
