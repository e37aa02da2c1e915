"""The table-driven ABC constraint against its per-row reference (issue 16).

:class:`AbcConstraint` gathers the masks of free rows from a shared table and steps rows through
its transition array; :class:`PerRowAbcConstraint` plans every row alone, as the constraint did
before.  Driven by the same random logits they must give the same masks and the same tokens, with
and without length steering, with inactive rows and pad ids, and through the decode loop.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from test_sampling_fakes import pool_call_sizes

from rwkv_music.errors import ConstraintError
from rwkv_music.formats.abc import fast_table
from rwkv_music.formats.abc.constraint import AbcConstraint, PerRowAbcConstraint, decode_abc
from rwkv_music.formats.abc.grammar.machine import AbcGrammar

EOS = 3
HEADS = ["S:2\nL:1/8\nM:4/4\nK:D\n", "S:2\nL:1/16\nM:2/4\nK:Em\n", "L:1/8\nM:6/8\nK:F#m\n", "L:1/8\nM:",
         "S:2\nL:1/8\nM:3/4\nK:G\nG2 A2 B2|", ""]  # fmt: skip


def ids(text: str) -> list[int]:
    return [2] + [ord(c) for c in text]


def drive_both(kwargs: dict, heads: list[str], steps: int, seed: int,
               native: bool = True) -> tuple[list[list[int]], int]:
    """Sample through both classes side by side; every mask must match.  Returns tokens and planned rows seen.
    ``native``: the table constraint's batch step in C (fast_table.c) where it builds, else numpy."""
    fast, ref = AbcConstraint(**kwargs), PerRowAbcConstraint(**kwargs)
    fast.native = native
    prompts = [ids(h) for h in heads]
    fast.reset(prompts)
    ref.reset(prompts)
    rng = np.random.default_rng(seed)
    n = len(heads)
    prior = np.full(128, -2.0, dtype=np.float32)
    prior[[ord(c) for c in "ABCDEFGabcdefgz|2 /\n"]] = 1.0
    out: list[list[int]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    planned = 0
    for step in range(steps):
        scores = (prior + rng.normal(size=(n, 128)) * 1.5).astype(np.float32)
        scores[done] = -np.inf  # finished rows are inactive
        planned += int((fast._planned() & ~done).sum())
        a, b = fast(step, scores), ref(step, scores)
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
        inplace = scores.copy()  # the decode loop's host path: the same mask, written into its buffer
        assert fast.apply_inplace(step, inplace) is inplace
        np.testing.assert_array_equal(inplace, b, err_msg=f"step {step}, in place")
        chosen = []
        for r in range(n):
            if done[r]:
                chosen.append(0)  # the loop's pad id
                continue
            p = np.exp(a[r] - a[r].max())
            t = int(rng.choice(128, p=p / p.sum()))
            chosen.append(t)
            out[r].append(t)
            done[r] = t == EOS
        fast.update(chosen)
        ref.update(chosen)
        for r in range(n):
            assert fast.state(r) == ref.state(r), (step, r)
        if done.all():
            break
    return out, planned


@pytest.mark.parametrize("kwargs", [
    {"form": False},
    {"form": False, "max_new_tokens": 60},
    {"max_new_tokens": 160},
    {"max_new_tokens": 400, "parts": 1, "bars_per_part": 4},
])  # fmt: skip
@pytest.mark.parametrize("native", [False, True])
def test_table_masks_and_tokens_equal_the_per_row_reference(kwargs: dict, native: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if native and fast_table.kernels() is None:
        pytest.skip(f"fast_table.c does not build here ({fast_table.LIBRARY.error})")
    calls = []
    lib = fast_table.kernels()
    monkeypatch.setattr(fast_table, "kernels", lambda: calls.append(1) or lib)
    steps = kwargs.get("max_new_tokens", 150)
    heads = HEADS * 3
    for seed in (1, 2):
        out, planned = drive_both(kwargs, heads, steps, seed, native)
        grammar = AbcGrammar(AbcConstraint(**kwargs).config)
        for h, o in zip(heads, out):
            text = h + decode_abc(o)
            assert grammar.accepts(text, complete=bool(o and o[-1] == EOS)), text
        if "max_new_tokens" in kwargs:
            assert planned > 0  # the per-row plan ran for rows near the cap and in the header
            assert all(o and o[-1] == EOS and len(o) <= kwargs["max_new_tokens"] for o in out)
    assert bool(calls) == native


@pytest.mark.parametrize("kwargs", [{"form": False, "max_new_tokens": 60}, {"max_new_tokens": 160}])
def test_one_row_batches_take_the_scalar_path_with_the_same_masks_and_tokens(kwargs: dict) -> None:
    steps = kwargs["max_new_tokens"]
    for n, head in enumerate(HEADS):
        out, planned = drive_both(kwargs, [head], steps, seed=20 + n)
        assert out[0] and out[0][-1] == EOS and len(out[0]) <= steps
        assert planned > 0  # the one-row plan ran too (header, forced ending)


def test_the_shared_table_is_hit_by_a_second_identical_run() -> None:
    kwargs = {"form": False, "max_new_tokens": 80, "meter": "3/4", "unit": "1/8", "key": "A"}
    heads = ["L:1/8\nM:3/4\nK:A\n"] * 8
    first, _ = drive_both(kwargs, heads, 80, seed=11)
    c = AbcConstraint(**kwargs)
    before = c.table_stats()
    second, _ = drive_both(kwargs, heads, 80, seed=11)
    after = c.table_stats()
    assert second == first
    assert after["misses"] == before["misses"]  # every transition of the repeat was in the table
    assert after["hits"] > before["hits"]
    assert after["states"] == before["states"]


@pytest.mark.parametrize("native", [False, True])
def test_bad_tokens_are_refused_by_both_with_the_same_message(native: bool) -> None:
    for cls in (AbcConstraint, PerRowAbcConstraint):
        c = cls(form=False)
        c.native = native
        c.reset([ids("L:1/8\nM:6/8\nK:D\n"), ids("L:1/8\nM:6/8\nK:D\nA6|")])
        with pytest.raises(ConstraintError, match="step 0, row 1: token 35 is not allowed here"):
            c.update([ord("A"), ord("#")])
        c.reset([ids("L:1/8\nM:6/8\nK:D\n")])
        with pytest.raises(ConstraintError, match="row 0: token 200 is not allowed"):
            c.update([200])
        c.reset([ids("L:1/8\nM:6/8\nK:D\nA6|")])
        c.update([EOS])
        c.update([ord("#")])  # an ended row ignores what it is given
        assert c.state(0) is None and c.min_bytes_to_end(0) == 0


def test_the_decode_loop_draws_the_same_tunes_with_both(checkpoint_path: Callable[..., object]) -> None:
    from rwkv_music import load_model
    from rwkv_music.sampling.generate import generate

    model = load_model(str(checkpoint_path("7", vocab_size=128, n_embd=64, head_size=32, n_layer=2)))
    heads = ["S:2\nL:1/8\nM:4/4\nK:D\n", "S:2\nL:1/8\nM:6/8\nK:G\n", "S:2\nL:1/16\nM:2/4\nK:Bb\n"] * 2
    runs = []
    for cls in (AbcConstraint, PerRowAbcConstraint):
        result = generate(model, [ids(h) for h in heads], processors=[cls(max_new_tokens=200)], max_new_tokens=200,
                          seeds=list(range(len(heads))), stop_tokens=[EOS], return_state=False)  # fmt: skip
        runs.append((result.tokens, result.finish_reasons))
    assert runs[0] == runs[1]
    assert set(runs[0][1]) == {"stop"}


def test_in_place_masking_handles_wide_rows_inactive_rows_and_nan_like_the_reference() -> None:
    prompts = [ids("L:1/8\nM:6/8\nK:D\n"), ids("L:1/8\nM:6/8\nK:D\nA6|"), ids("L:1/8\nM:3/4\nK:G\n")]
    scores = np.random.default_rng(5).normal(size=(3, 130)).astype(np.float32)  # 2 ids past the bytes
    scores[1] = -np.inf  # inactive: left as it is
    scores[2, :5] = np.nan  # NaN with finite scores: an active row, masked like the rest
    expected = []
    for cls in (PerRowAbcConstraint, AbcConstraint):
        c = cls(form=False, max_new_tokens=100)
        c.reset(prompts)
        expected.append(c.process(0, scores))
        got = c.apply_inplace(0, scores.copy())
        np.testing.assert_array_equal(got, expected[0])
        for r in range(3):  # each row alone: the one-row path
            c.reset(prompts[r : r + 1])
            np.testing.assert_array_equal(c.apply_inplace(0, scores[r : r + 1].copy()), expected[0][r : r + 1])
    np.testing.assert_array_equal(expected[1], expected[0])
    assert np.isneginf(expected[0][[0, 2], 128:]).all() and np.isneginf(expected[0][1]).all()


def test_a_prompt_read_before_is_looked_up_and_bad_prompts_still_raise_every_time() -> None:
    head = ids("S:2\nL:1/8\nM:2/4\nK:Em\nE2 G2|")
    first = AbcConstraint(max_new_tokens=200)
    first.reset([head])
    state = first.state(0)
    table = first._table
    assert table.prompt_states[tuple(head)] == state
    second = AbcConstraint(max_new_tokens=200)  # same configuration: same table, the state is looked up
    assert second._table is table
    second.reset([head, head])
    assert second.state(0) == second.state(1) == state
    bad = ids("L:1/8\nM:2/4\nK:Em\nE2 #")
    for _ in range(2):
        with pytest.raises(ConstraintError, match="row 0, position 21: byte '#' is not valid ABC"):
            second.reset([bad])
    assert tuple(bad) not in table.prompt_states


def test_a_pool_of_one_row_constraints_masked_together_equals_each_alone() -> None:
    """apply_rows (a render's pool: every piece its own one-row constraint, one gather for the free rows)
    leaves row r as procs[r].apply_inplace leaves it alone: pieces in different metres and lengths, near
    their caps (planned rows), with the variety rules banning bytes, inactive rows, NaN, +inf and ids
    past the bytes; every piece advanced on its own stream until it ends."""
    heads = HEADS[:3] + ["S:2\nL:1/8\nM:3/4\nK:G\n", "S:2\nL:1/8\nM:4/4\nK:D\n"] * 2
    caps = [None, 90, 140, 60, 200, 120, None]
    kinds = [(h, caps[i % len(caps)]) for i, h in enumerate(heads)]
    procs = [AbcConstraint(max_new_tokens=cap) for _, cap in kinds]
    alone = [AbcConstraint(max_new_tokens=cap) for _, cap in kinds]
    for p, q, (head, _) in zip(procs, alone, kinds):
        p.reset([ids(head)])
        q.reset([ids(head)])
    rng = np.random.default_rng(3)
    prior = np.full(130, -3.0, dtype=np.float32)
    prior[[ord(c) for c in "ABCDEFGabcdefg|"]] = 1.0  # mostly one note length: the rhythm rule bans it
    P = len(procs)
    done = np.zeros(P, dtype=bool)
    seen = {"planned": 0, "banning": 0}
    for step in range(220):
        scores = (prior + rng.normal(size=(P, 130)) * 1.5).astype(np.float32)
        scores[done] = -np.inf  # a finished piece's row: inactive, left as it is
        if step % 11 == 0:
            scores[0, rng.integers(0, 130, 20)] = np.nan
            scores[-1, rng.integers(0, 130, 5)] = np.inf
        seen["planned"] += sum(p._planned_row(0) for p, d in zip(procs, done) if not d)
        seen["banning"] += sum(bool(p._banning) for p, d in zip(procs, done) if not d)
        want = np.concatenate([q.apply_inplace(step, scores[r : r + 1].copy()) for r, q in enumerate(alone)])
        on_device = AbcConstraint.apply_rows_device(procs, torch.from_numpy(scores.copy()))  # (a GPU's pool)
        np.testing.assert_array_equal(on_device.numpy(), want, err_msg=f"device, step {step}")
        got = scores.copy()
        assert AbcConstraint.apply_rows(procs, got)
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        for r in range(P):
            if done[r]:
                continue
            legal = np.flatnonzero((want[r] > -np.inf) & (np.arange(130) < 128))  # (+inf: legal; NaN: skipped)
            weights = np.exp(2 * prior[legal])
            t = int(rng.choice(legal, p=weights / weights.sum()))
            procs[r].update([t])
            alone[r].update([t])
            done[r] = t == EOS
        if done.all():
            break
    assert done.sum() >= P // 2 and seen["planned"] > 0 and seen["banning"] > 0  # every path ran

    # what the pool declines (nothing written; the rows then go one by one)
    scores = np.ones((2, 128), dtype=np.float32)
    ref = PerRowAbcConstraint()
    ref.reset([ids(HEADS[0])])
    assert not AbcConstraint.apply_rows([procs[1], ref], scores)  # the per-row reference class
    other = AbcConstraint(form=False)
    other.reset([ids(HEADS[0])])
    assert not AbcConstraint.apply_rows([procs[1], other], scores)  # another configuration, another table
    wide = AbcConstraint()
    wide.reset([ids(HEADS[0])] * 2)
    assert not AbcConstraint.apply_rows([wide], scores[:1])  # a two-row constraint is not a piece
    assert (scores == 1).all()
    for declined in ([procs[1], ref], [procs[1], other], [wide]):
        assert AbcConstraint.apply_rows_device(declined, torch.from_numpy(scores[: len(declined)])) is None


def test_the_mask_on_a_gpus_scores_is_made_without_reading_them_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply_device (a GPU's logits: the masks from the rows' states, the rules' checks of the scores made
    where they are) gives what process gives, over batches walking to their ends with caps, the variety
    rules, inactive rows, NaN and +inf; no score is read on the host meanwhile.  The per-row reference
    class declines (None)."""
    heads = [ids(h) for h in HEADS[:3] + ["S:2\nL:1/8\nM:3/4\nK:G\n", "S:2\nL:1/8\nM:4/4\nK:D\n",
                                          "S:2\nL:1/8\nM:2/4\nK:D\nABcd|ABcd|"]]  # (a third copy is banned)
    c, ref = AbcConstraint(max_new_tokens=120), AbcConstraint(max_new_tokens=120)
    c.reset(heads)
    ref.reset(heads)
    rng = np.random.default_rng(11)
    prior = np.full(130, -3.0, dtype=np.float32)
    prior[[ord(ch) for ch in "ABCDEFGabcdefg|"]] = 1.0
    B = len(heads)
    done = np.zeros(B, dtype=bool)
    banned = copies = 0

    def no_host_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scores were read on the host")

    for step in range(200):
        scores = (prior + rng.normal(size=(B, 130)) * 1.5).astype(np.float32)
        scores[done] = -np.inf
        if step % 7 == 0:
            scores[1, rng.integers(0, 130, 20)] = np.nan
            scores[2, rng.integers(0, 130, 5)] = np.inf
        banned += len(c._banning)
        copies += sum(t >= 0 for t in c._copy)
        tensor = torch.from_numpy(scores.copy())
        with monkeypatch.context() as m:
            for name in ("numpy", "cpu", "tolist", "item", "__array__"):
                m.setattr(torch.Tensor, name, no_host_read)
            got = c.apply_device(step, tensor)
        want = ref.process(step, scores)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"step {step}")
        tokens = []
        for r in range(B):
            legal = np.flatnonzero((want[r] > -np.inf) & (np.arange(130) < 128))
            if done[r] or not len(legal):
                tokens.append(0)  # the loop's pad id
                continue
            weights = np.exp(2 * prior[legal])
            tokens.append(int(rng.choice(legal, p=weights / weights.sum())))
            done[r] = tokens[-1] == EOS
        c.update(tokens)
        ref.update(tokens)
        if done.all():
            break
    assert done.all() and banned > 0 and copies > 0
    per_row = PerRowAbcConstraint()
    per_row.reset(heads[:1])
    assert per_row.apply_device(0, torch.zeros(1, 128)) is None


def test_continuous_batching_pools_the_pieces_abc_constraints_into_the_same_tunes(
        checkpoint_path: Callable[..., object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Render's pool with each piece's own AbcConstraint (apply_rows) gives the tunes that one list per row
    gives (POOLING off: each constraint on its own row)."""
    import importlib

    from rwkv_music import load_model
    from rwkv_music.sampling import SamplingConfig
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    decode_mod = importlib.import_module("rwkv_music.sampling.decode")
    model = load_model(str(checkpoint_path("7", vocab_size=128, n_embd=64, head_size=32, n_layer=2)))
    cfg = SamplingConfig(top_k=30, temperature=1.0)
    calls = pool_call_sizes(monkeypatch, AbcConstraint)

    def run() -> list:
        items = [WorkItem(prompt=ids(HEADS[s % 2]), seed=s, max_new_tokens=150, stop_tokens=(EOS,),
                          processors=cfg.build_processors([AbcConstraint(max_new_tokens=150)]))
                 for s in range(7)]
        return [(r.index, r.tokens, r.finish_reason) for r in generate_continuous(model, items, batch_size=3)]

    pooled = run()
    assert calls and max(calls) == 3  # the pool's rows went through one call
    assert {reason for _, _, reason in pooled} == {"stop"}
    monkeypatch.setattr(decode_mod, "POOLING", False)
    assert run() == pooled
