"""Continuous batching: keep ``batch_size`` pieces in flight, refilling a row as soon as its piece ends.

:func:`~rwkv_music.sampling.generate.generate` runs a fixed set of rows and drops finished ones,
so its batch shrinks and the next call waits for the slowest piece.  :func:`generate_continuous`
takes an iterable of :class:`WorkItem` (one piece each), keeps up to ``batch_size`` of them in
the model batch, yields each :class:`PieceResult` the moment its piece ends (completion order)
and admits the next item into the freed row.

Both are the one loop of :mod:`rwkv_music.sampling.decode`; here every item brings its own
processor list (``reset`` with ``[prompt]``, then called and ``update``-d with that row alone), so
an item's tokens equal ``generate(backend, [prompt], ...)`` with the same settings.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from rwkv_music.sampling.decode import PieceResult, WorkItem, decode


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
    return decode(
        backend, items, batch_size, prefill_chunk=prefill_chunk, on_constraint=on_constraint, return_state=return_state
    )


__all__ = ["PieceResult", "WorkItem", "generate_continuous"]
