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
