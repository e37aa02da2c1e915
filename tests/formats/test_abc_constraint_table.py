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
