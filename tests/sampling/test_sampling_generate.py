"""The generation loop on a fake backend (and on a random-weights model when one can be built)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pytest
from test_sampling_fakes import FakeBackend, history_hash

from rwkv_music.sampling import (
    LogitsProcessor,
    RowConstraintError,
    SamplingConfig,
    SamplingValueError,
    Temperature,
    generate,
)

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend
    from rwkv_music.sampling.generate import GenerationResult

CFG = SamplingConfig(top_k=12, top_p=0.9, temperature=0.9, presence_penalty=0.3, frequency_penalty=0.2,
                     penalty_decay=0.99)


def run(
    backend: FakeBackend | Backend,
    prompts: list[list[int]],
    seeds: list[int],
    max_new: int = 30,
    stop: tuple[int, ...] = (),
    config: SamplingConfig = CFG,
    **kw,
) -> GenerationResult:
    return generate(backend, prompts, processors=config.build_processors(), max_new_tokens=max_new, seeds=seeds,
                    stop_tokens=stop, **kw)


def test_same_seed_gives_same_tokens_whatever_the_batch() -> None:
    alone = run(FakeBackend(), [[1, 2, 3]], [42])
    batch = run(FakeBackend(), [[5], [1, 2, 3], [7, 7, 7, 7, 7], [9, 8]], [1, 42, 3, 4])
    assert alone.tokens[0] == batch.tokens[1] and len(alone.tokens[0]) == 30
    assert batch.tokens[0] != batch.tokens[1]


def test_mixed_prompt_lengths_equal_running_each_row_alone_with_stops() -> None:
    prompts, seeds = [[3], [1, 2, 3, 4], [5, 6], [1, 2, 3, 4], [0] * 7], [10, 11, 12, 13, 14]
    batch = run(FakeBackend(), prompts, seeds, max_new=40, stop=(0, 1))
    for i in range(len(prompts)):
        single = run(FakeBackend(), [prompts[i]], [seeds[i]], max_new=40, stop=(0, 1))
        assert single.tokens[0] == batch.tokens[i]
        assert single.finish_reasons[0] == batch.finish_reasons[i]
    assert "stop" in batch.finish_reasons  # stops happened and did not disturb the other rows
    for toks, reason, hit in zip(batch.tokens, batch.finish_reasons, batch.stop_tokens):
        assert not {0, 1} & set(toks)
        assert (reason == "stop") == (hit in (0, 1)) and (reason == "max_tokens") == (len(toks) == 40)


def test_prefill_groups_equal_lengths_and_chunks_long_prompts() -> None:
    be = FakeBackend()
    prompts = [[1] * 600, [2] * 5, [3] * 600]
    res = run(be, prompts, [1, 2, 3], max_new=3, prefill_chunk=256)
    assert be.calls[:4] == [(2, 256), (2, 256), (2, 88), (1, 5)]
    ref = run(FakeBackend(), prompts, [1, 2, 3], max_new=3, prefill_chunk=1000)
    assert res.tokens == ref.tokens


def test_finished_rows_leave_the_model_batch_and_final_state_covers_every_token() -> None:
    be = FakeBackend()
    prompts = [[1, 2], [3], [4, 5, 6]]
    res = run(be, prompts, [7, 8, 9], max_new=25, stop=tuple(range(8)), config=SamplingConfig())
    decode_batches = [b for b, t in be.calls if t == 1][1:]
    assert decode_batches == sorted(decode_batches, reverse=True) and decode_batches[-1] < 3
    assert res.finish_reasons.count("stop") >= 1
    for i, p in enumerate(prompts):
        assert int(res.state.tensors["att_x"][0, i, 0]) == history_hash(p + res.tokens[i])
    assert res.state.batch_size == 3 and res.n_prompt_tokens == 6 and res.steps <= 25
    assert res.decode_tokens_per_second > 0 and res.prefill_tokens_per_second > 0


def test_max_tokens_and_callback_progress() -> None:
    seen = []
    res = run(FakeBackend(), [[1], [2]], [1, 2], max_new=5, callback=lambda step, done: seen.append((step, done)))
    assert res.finish_reasons == ["max_tokens", "max_tokens"] and [len(t) for t in res.tokens] == [5, 5]
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 2)]


def test_greedy_picks_the_argmax_each_step() -> None:
    be = FakeBackend()
    res = generate(be, [[4, 2]], processors=[Temperature(0)], max_new_tokens=6, seeds=[0])
    history = [4, 2]
    for tok in res.tokens[0]:
        assert tok == int(np.argmax(be.table[history_hash(history) % be.table.shape[0]]))
        history.append(tok)


def test_torch_logits_backend_gives_the_same_tokens() -> None:
    pytest.importorskip("torch")
    a = run(FakeBackend(), [[1, 2], [3]], [5, 6])
    b = run(FakeBackend(torch_logits=True), [[1, 2], [3]], [5, 6])
    assert a.tokens == b.tokens


def test_initial_state_with_one_row_is_shared_by_all_prompts() -> None:
    be = FakeBackend()
    _, st = be.forward([[9, 9, 9]])
    res = run(be, [[1], [2]], [1, 2], max_new=4, state=st)
    ref = run(FakeBackend(), [[9, 9, 9, 1], [9, 9, 9, 2]], [1, 2], max_new=4)
    assert res.tokens == ref.tokens
    with pytest.raises(SamplingValueError, match="state has 3 rows"):
        run(be, [[1], [2]], [1, 2], state=st.select([0, 0, 0]))


class BanAllForRow(LogitsProcessor):
    """Empties row ``row`` from step ``at`` on."""

    rule = "ban_all_for_row"

    def __init__(self, row: int, at: int):
        self.row, self.at = row, at

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if step >= self.at:
            out[self.row] = -np.inf
        return out


def test_constraint_dead_end_raises_or_finishes_the_row() -> None:
    be = FakeBackend()
    with pytest.raises(RowConstraintError, match=r"step 3, row 1: rule 'ban_all_for_row'"):
        generate(be, [[1], [2], [3]], processors=[BanAllForRow(1, 3)], max_new_tokens=8, seeds=[1, 2, 3])
    res = generate(be, [[1], [2], [3]], processors=[BanAllForRow(1, 3)], max_new_tokens=8, seeds=[1, 2, 3],
                   on_constraint="finish")
    assert res.finish_reasons == ["max_tokens", "constraint", "max_tokens"]
    assert [len(t) for t in res.tokens] == [8, 3, 8]
    assert int(res.state.tensors["att_x"][0, 1, 0]) == history_hash([2] + res.tokens[1])
    free = generate(FakeBackend(), [[1], [3]], processors=[], max_new_tokens=8, seeds=[1, 3])
    assert free.tokens == [res.tokens[0], res.tokens[2]]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prompts=[[]], seeds=[1]), "prompts\\[0\\] is empty"),
        (dict(prompts=[[1]], seeds=[1, 2]), "seeds has 2"),
        (dict(prompts=[[1]], seeds=[1], max_new_tokens=-1), "max_new_tokens"),
        (dict(prompts=[[1]], seeds=[1], on_constraint="skip"), "on_constraint"),
        (dict(prompts=[[1]], seeds=[-3]), "seeds\\[0\\]"),
    ],
)
def test_bad_generate_arguments_name_the_argument(kw: dict[str, Any], match: str) -> None:
    args = dict(max_new_tokens=3) | kw
    with pytest.raises(SamplingValueError, match=match):
        generate(FakeBackend(), args.pop("prompts"), **args)


def test_generation_with_random_weights_model_is_batch_independent(checkpoint_path: Callable[..., Path]) -> None:
    import rwkv_music

    model = rwkv_music.load_model(checkpoint_path("7", vocab_size=128, n_embd=64, head_size=32, n_layer=2, seed=1))
    cfg = SamplingConfig(top_k=20, top_p=0.95)
    alone = run(model, [[2, 10, 11]], [3], max_new=12, config=cfg, stop=(3,))
    batch = run(model, [[2, 5], [2, 10, 11], [2]], [9, 3, 4], max_new=12, config=cfg, stop=(3,))
    assert alone.tokens[0] == batch.tokens[1]
    assert batch.state.batch_size == 3
