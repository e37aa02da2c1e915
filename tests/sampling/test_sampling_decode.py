"""The one decode loop: a fixed batch is continuous batching with no refills; declared in-place decoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fake_backend import FakeBackend as StateBackend
from test_sampling_fakes import FakeBackend

from rwkv_music.sampling import SamplingConfig, SamplingValueError, generate
from rwkv_music.sampling.continuous import generate_continuous
from rwkv_music.sampling.decode import WorkItem, decode, decode_kwargs

CFG = SamplingConfig(top_k=10, top_p=0.9, presence_penalty=0.3, frequency_penalty=0.1, penalty_decay=0.98)
PROMPTS = [[3], [1, 2, 3, 4, 5], [5, 6], [7], [8, 8, 8]]
SEEDS = [11, 12, 13, 14, 15]


def _items(max_new: int = 20, own: bool = True, state: Any = None) -> list[WorkItem]:
    return [WorkItem(p, s, max_new, CFG.build_processors() if own else None, (0, 1), state=state)
            for p, s in zip(PROMPTS, SEEDS)]


def test_a_batch_list_of_processors_runs_the_rows_in_lockstep_like_one_item_each() -> None:
    batch = list(decode(FakeBackend(), _items(own=False), 5, processors=CFG.build_processors(), return_state=True))
    each = list(decode(FakeBackend(), _items(), 5, return_state=True))
    refilled = list(decode(FakeBackend(), _items(), 2, return_state=True))
    by_index = [sorted(r, key=lambda x: x.index) for r in (batch, each, refilled)]
    for a, b, c in zip(*by_index):
        assert a.tokens == b.tokens == c.tokens and a.finish_reason == b.finish_reason == c.finish_reason
        assert np.array_equal(a.state.tensors["att_x"], c.state.tensors["att_x"])
    assert {r.finish_reason for r in batch} == {"stop", "max_tokens"}
    lockstep = generate(FakeBackend(), PROMPTS, processors=CFG.build_processors(), max_new_tokens=20, seeds=SEEDS,
                        stop_tokens=(0, 1))
    assert lockstep.tokens == [r.tokens for r in by_index[0]]


def test_callback_counts_steps_and_ended_pieces_in_either_form() -> None:
    seen: list[tuple[int, int]] = []
    list(decode(FakeBackend(), _items(max_new=3), 5, callback=lambda step, done: seen.append((step, done))))
    assert [s for s, _ in seen] == list(range(len(seen))) and seen[-1][1] == 5
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:]))  # pieces only ever end


def test_a_batch_list_refuses_more_items_than_rows_and_items_with_their_own_processors() -> None:
    with pytest.raises(SamplingValueError, match="5 items for one batch list"):
        decode(FakeBackend(), _items(own=False), 4, processors=[])
    with pytest.raises(SamplingValueError, match="work item 0: has its own processors"):
        list(decode(FakeBackend(), _items(own=True), 5, processors=[]))
    with pytest.raises(SamplingValueError, match="on_constraint"):
        decode(FakeBackend(), [], 1, on_constraint="ignore")


class _Spy:
    """Wraps the fake backend; records the ``inplace`` keyword of every forward call."""

    def __init__(self, inner: StateBackend, declare: bool) -> None:
        self.inner, self.supports_inplace, self.seen = inner, declare, []

    def new_state(self, batch_size: int = 1) -> Any:
        return self.inner.new_state(batch_size)

    def forward(self, tokens: Any, state: Any = None, *, inplace: bool = False) -> Any:
        self.seen.append((np.asarray(tokens).shape[1], inplace))
        return self.inner.forward(tokens, state, inplace=inplace)


def test_in_place_decoding_follows_the_declared_capability_and_never_writes_a_callers_state() -> None:
    assert decode_kwargs(StateBackend()) == {"inplace": True}
    assert decode_kwargs(_Spy(StateBackend(), declare=False)) == {}  # accepting the keyword is not declaring it
    assert decode_kwargs(FakeBackend()) == {}
    start = StateBackend(vocab_size=64).forward([[5, 6, 7]])[1]
    before = start.tensors["att_x"].copy()
    runs = {}
    for declare in (True, False):
        spy = _Spy(StateBackend(vocab_size=64), declare)
        fixed = generate(spy, PROMPTS, processors=CFG.build_processors(), max_new_tokens=15, seeds=SEEDS,
                         stop_tokens=(0,), state=start)
        cont = sorted(generate_continuous(spy, _items(15, state=start), batch_size=2, return_state=True),
                      key=lambda r: r.index)
        alone = next(generate_continuous(spy, _items(15, state=start)[:1], batch_size=1))  # [3] joins as is
        assert alone.tokens == cont[0].tokens
        runs[declare] = (fixed, cont)
        assert all(width == 1 for width, flag in spy.seen if flag)  # prefill never in place
        n_inplace = sum(flag for _, flag in spy.seen)
        assert n_inplace > 20 if declare else n_inplace == 0  # every decode step, or none
    (fast, fast_c), (plain, plain_c) = runs[True], runs[False]
    assert fast.tokens == plain.tokens and np.array_equal(fast.state.tensors["att_x"], plain.state.tensors["att_x"])
    assert [r.tokens for r in fast_c] == [r.tokens for r in plain_c]
    for a, b in zip(fast_c, plain_c):
        assert np.array_equal(a.state.tensors["att_x"], b.state.tensors["att_x"])
    assert np.array_equal(start.tensors["att_x"], before)  # the caller's state was never written
