"""Equal prompts from one starting state are prefilled once (compose and render start many pieces from one
header): the same logits and states as prefilling every row, for fewer forward rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rwkv_music import load_model
from rwkv_music.sampling.decode import prefill_prompts


class CountingBackend:
    """A real backend that counts the rows it is asked to run."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rows = inner, 0

    def forward(self, tokens: Any, state: Any = None, **kw: Any) -> Any:
        self.rows += int(np.asarray(tokens).shape[0])
        return self.inner.forward(tokens, state, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_equal_prompts_are_prefilled_once_with_the_same_results(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("7", vocab_size=128, n_layer=2, n_embd=64, head_size=32))
    head, other = [2, 40, 41, 42, 43, 44], [2, 50, 51]
    prompts = [head, head, other, head, other]
    counted = CountingBackend(model)
    logits, state = prefill_prompts(counted, prompts, None, chunk=4)
    assert counted.rows == 2 + 1  # the 6-token head once (two chunks of 4), the 3-token prompt once (not 6 + 2)
    for row, p in enumerate(prompts):  # each row as if prefilled alone
        alone, alone_state = model.forward([p])
        assert np.allclose(model.as_numpy(logits)[row], model.as_numpy(alone)[0], atol=1e-5)
        mine = state.select([row])
        for name, ref in alone_state.tensors.items():
            assert np.allclose(mine.tensors[name].numpy(), ref.numpy(), atol=1e-5), name
    first = next(iter(state.tensors))
    before = state.tensors[first][1].clone()
    state.tensors[first][0].add_(1.0)  # copies of one prefill are separate rows: writing one leaves the other
    assert torch.equal(state.tensors[first][1], before)


def test_rows_with_their_own_states_are_not_merged(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("7", vocab_size=128, n_layer=2, n_embd=64, head_size=32))
    _, s1 = model.forward([[2, 60]])
    _, s2 = model.forward([[2, 61]])
    start = type(s1).concat([s1, s2])
    counted = CountingBackend(model)
    prefill_prompts(counted, [[70, 71], [70, 71]], start, chunk=8)
    assert counted.rows == 2  # different starting states: both rows run


def test_a_loop_looks_up_the_prompts_it_prefilled_before_with_the_same_pieces(
        checkpoint_path: Callable[..., Path], monkeypatch: Any) -> None:
    """Continuous batching refills rows with prompts it has met: they are looked up, not prefilled again,
    and every piece is the one a fresh prefill gives (PREFILL_CACHE 0): more prompts than the lookup keeps,
    rows from a state of their own (never looked up), and a prompt's copies written in place by the steps."""
    import importlib

    from rwkv_music.sampling import SamplingConfig
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    decode_mod = importlib.import_module("rwkv_music.sampling.decode")
    model = load_model(checkpoint_path("7", vocab_size=128, n_layer=2, n_embd=64, head_size=32))
    assert getattr(model, "supports_inplace", False)  # the batch state is written in place: copies matter
    _, own_state = model.forward([[2, 77, 78]])
    cfg = SamplingConfig(top_k=20, temperature=1.0)
    prompts = [[2, 40 + (i % 3), 41, 42] for i in range(12)] + [[2, 50 + i, 51] for i in range(10)]

    def run(batch_size: int = 3) -> tuple[list, int]:
        counted = CountingBackend(model)
        items = [WorkItem(prompt=p, seed=i, max_new_tokens=4 + i % 5, processors=cfg.build_processors(),
                          state=own_state if i % 7 == 3 else None)
                 for i, p in enumerate(prompts)]
        out = [(r.index, r.tokens, r.finish_reason) for r in generate_continuous(counted, items, batch_size=batch_size)]
        return out, counted.rows

    looked_up, rows = run()
    alone = run(1)[0]  # one row: the looked-up copy is the whole batch state, stepped in place
    monkeypatch.setattr(decode_mod, "PREFILL_CACHE", 0)
    fresh, fresh_rows = run()
    assert looked_up == fresh and alone == run(1)[0]
    assert rows < fresh_rows  # fewer forward rows: the three repeated heads were prefilled once each
    monkeypatch.setattr(decode_mod, "PREFILL_CACHE", 2)  # fewer kept than met: evicted ones run again
    assert run()[0] == fresh
