"""The host fast path of the decode loop against the plain one (issue 16: compose at model speed on a CPU).

``LogitsProcessorList.run(..., candidates=True)`` works in one reused buffer, writes in place where a
processor can (``apply_inplace``) and hands the draw only the few ids a top-k / top-p filter keeps
(:class:`~rwkv_music.sampling.base.Candidates`).  Every rewrite there claims exact equality, so these
tests compare bit for bit: the same kept scores, the same drawn ids, the same uniforms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rwkv_music.sampling import LogitsProcessorList, OccurrencePenalty, SamplingConfig, get_preset, native
from rwkv_music.sampling.arrays import NumpyOps
from rwkv_music.sampling.base import Candidates
from rwkv_music.sampling.sampler import (
    counter_uniforms,
    key_uniforms,
    row_keys,
    row_uniforms,
    sample_batch,
    seed_words,
)

VOCAB = 20096


def _scores(rng: np.random.Generator, rows: int, vocab: int = VOCAB) -> np.ndarray:
    x = (rng.standard_normal((rows, vocab)) * float(rng.choice([0.5, 3.0]))).astype(np.float32)
    x[:, rng.integers(0, vocab, vocab * 3 // 4)] = -np.inf  # a constraint's mask
    if rows > 2:
        x[1] = np.round(x[1])  # ties
        x[2] = -np.inf  # an inactive row
    if rows in (1, 4, 5) and rng.random() < 0.5:  # broken logits: illegal, as the filters clean them
        x[rows // 4 * 3, rng.integers(0, vocab, 3)] = np.nan
        x[rows // 4 * 3, 7] = np.inf
    return x


@pytest.mark.parametrize("vocab", [20096, 20000, 5000])
def test_top_pool_gives_the_top_values_and_every_entry_tied_with_the_kth(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    for trial in range(80):
        x = (rng.standard_normal((int(rng.integers(1, 7)), vocab)) * rng.choice([0.5, 3.0])).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x)  # ties at the k-th value
        if trial % 4 == 0:
            x[:, rng.integers(0, vocab, vocab * 9 // 10)] = -np.inf
        if trial % 7 == 0:
            x[0, :-5] = -np.inf  # fewer finite entries than k
        if trial % 13 == 0:
            x[:] = 1.0  # one value everywhere
        m = int(rng.choice([1, 8, 16]))
        top, (rows, cols, vals) = NumpyOps.top_pool(x, m)
        want = -np.sort(-x, axis=1)[:, :m]
        np.testing.assert_array_equal(top, want)
        r, c = np.nonzero((x >= want[:, -1:]) & np.isfinite(x))
        assert rows.tolist() == r.tolist() and cols.tolist() == c.tolist()
        np.testing.assert_array_equal(vals, x[r, c])
        flag = [False]
        assert NumpyOps.top_pool(x, m, unclean=flag) is not None and not flag[0]
        x[-1, int(rng.integers(0, vocab))] = float(rng.choice([np.nan, np.inf]))
        assert NumpyOps.top_pool(x, m, unclean=flag) is None and flag[0]  # NaN / +inf: clean first


CONFIGS: list[dict[str, Any]] = [
    {},  # default-midi: penalty, EOS bias, logit bias, top-p with top-k
    {"top_p": 1.0},  # top-k alone
    {"temperature": 0.7, "min_p": 0.05, "presence_penalty": 0.3},
    {"temperature": 0.0},  # greedy after the filters
    {"top_k": 0, "top_p": 0.95},  # no top-k: stays dense
    {"top_p": 0.0},  # the maximum and its ties
]


@pytest.mark.parametrize("vocab", [VOCAB, 128])  # (128: ABC's bytes, below the block-wise top_pool)
@pytest.mark.parametrize("rows", [5, 1])  # (one row: the single-row shortcuts of top_pool, the cut and the draw)
@pytest.mark.parametrize("overrides", CONFIGS)
def test_the_candidate_run_keeps_the_dense_scores_and_draws_the_same_ids(overrides: dict[str, Any], rows: int,
                                                                         vocab: int) -> None:
    cfg = get_preset("default-midi", **overrides)
    fast, slow = cfg.build_processors(), cfg.build_processors()
    fast.reset([[0]] * rows)
    slow.reset([[0]] * rows)
    rng = np.random.default_rng(len(str(overrides)))
    compact = 0
    for step in range(12):
        scores = _scores(rng, rows, vocab)
        before = scores.copy()
        dense = slow.run(step, scores)
        got = fast.run(step, scores, candidates=True)
        np.testing.assert_array_equal(scores, before)  # the input is never written
        compact += isinstance(got, Candidates)
        got_dense = got.dense() if isinstance(got, Candidates) else np.asarray(got)
        kept = np.isfinite(dense)
        assert np.array_equal(np.isfinite(got_dense), kept)
        np.testing.assert_array_equal(got_dense[kept], np.asarray(dense)[kept])
        u = rng.random(rows)
        u[0] = np.nextafter(1.0, 0.0)  # the top of the range
        ids = sample_batch(got, u)
        assert ids.tolist() == sample_batch(dense, u).tolist()
        assert rows < 3 or ids[2] == -1
        ids = np.where(ids < 0, 0, ids)  # the loop's pad id for a row that draws nothing
        fast.update(ids)
        slow.update(ids)
    assert compact == (0 if overrides.get("top_k") == 0 else 12)


def test_a_dense_result_of_the_fast_run_is_not_the_reused_buffer() -> None:
    procs = LogitsProcessorList(SamplingConfig(top_k=0, top_p=0.9, logit_bias={5: 1.0}).build_processors())
    rng = np.random.default_rng(3)
    first = procs.run(0, _scores(rng, 3), candidates=True)
    keep = np.array(first, copy=True)
    procs.run(1, _scores(rng, 3), candidates=True)
    np.testing.assert_array_equal(first, keep)


def test_the_vectorised_uniforms_are_the_bits_of_the_reference_hash() -> None:
    rng = np.random.default_rng(0)
    seeds = [int(s) for s in rng.integers(0, 2**63, 40)] + [0, 1, 2**70 + 5]
    counters = [int(c) for c in rng.integers(0, 2**40, len(seeds))]
    words = np.array([seed_words(s) for s in seeds], dtype=np.int64)
    want = counter_uniforms(words[:, 0], words[:, 1], np.array(counters, dtype=np.int64))
    for _ in range(2):  # the second call uses the cached keys
        np.testing.assert_array_equal(row_uniforms(seeds, counters), want)
    small = row_uniforms(seeds[:3], counters[:3])
    np.testing.assert_array_equal(small, want[:3])
    for n in (1, 2, 3, len(seeds)):  # from kept keys (the decode loop's), the Python-int path at n <= 2
        np.testing.assert_array_equal(key_uniforms(row_keys(seeds[:n]), counters[:n]), want[:n])
        np.testing.assert_array_equal(row_uniforms(seeds[:n], counters[:n]), want[:n])
    same = [counters[0]] * len(seeds)  # rows in lockstep: the counter hashed once
    want = counter_uniforms(words[:, 0], words[:, 1], np.array(same, dtype=np.int64))
    np.testing.assert_array_equal(row_uniforms(seeds, same), want)


@pytest.mark.skipif(not native.available(), reason="no C compiler with AVX2 here (the numpy path runs)")
def test_the_c_uniforms_are_the_numpy_bits_and_both_paths_run(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    seeds = [int(s) for s in rng.integers(0, 2**63, 64)] + [2**70 + 5]
    counters = [int(c) for c in rng.integers(0, 2**40, len(seeds))]
    words = np.array([seed_words(s) for s in seeds], dtype=np.int64)
    want = counter_uniforms(words[:, 0], words[:, 1], np.array(counters, dtype=np.int64))
    calls = []
    kernel = native.row_uniforms
    monkeypatch.setattr(native, "row_uniforms", lambda *a: calls.append(1) or kernel(*a))
    np.testing.assert_array_equal(row_uniforms(seeds, counters), want)  # C
    assert calls
    monkeypatch.setattr(native.LIBRARY, "_enabled", False)
    assert kernel(np.zeros(2, dtype=np.uint64), [0, 1]) is None
    np.testing.assert_array_equal(row_uniforms(seeds, counters), want)  # numpy


@pytest.mark.parametrize("rows", [4, 1])
def test_the_penalty_in_place_equals_its_apply_after_decayed_updates(rows: int) -> None:
    pen = OccurrencePenalty(presence=0.2, frequency=0.5, decay=0.9, weights={3: 0.3})
    pen.reset([[0]] * rows)
    rng = np.random.default_rng(1)
    for step in range(30):
        scores = _scores(rng, rows, vocab=3000)
        want = pen.apply(step, scores)
        got = pen.apply_inplace(step, scores.copy())
        np.testing.assert_array_equal(got, want)
        pen.update(rng.integers(0, 3000 if step % 2 else 40, rows))  # repeats and first occurrences
    assert pen._seen_columns(3000).tolist() == np.flatnonzero(pen._seen.any(axis=0)).tolist()


@pytest.mark.parametrize("decay", [0.9, 1.0])
def test_a_one_row_penalty_keeps_the_counts_of_that_row_in_a_batch(decay: float) -> None:
    alone = OccurrencePenalty(presence=0.2, frequency=0.5, decay=decay, weights={3: 0.3})
    batch = OccurrencePenalty(presence=0.2, frequency=0.5, decay=decay, weights={3: 0.3})
    alone.reset([[0]])
    batch.reset([[0]] * 3)
    rng = np.random.default_rng(7)
    for step in range(200):  # first occurrences, repeats, and (later) more seen ids than the sparse decay takes
        toks = rng.integers(0, 20 + 15 * step, 3)
        alone.update([int(toks[1])])
        batch.update(toks)
        np.testing.assert_array_equal(alone._occ[0], batch._occ[1, : alone._occ.shape[1]])
        assert alone._seen_columns(alone._occ.shape[1]).tolist() == np.flatnonzero(alone._seen[0]).tolist()
    scores = _scores(rng, 3, vocab=4000)
    np.testing.assert_array_equal(alone.apply(0, scores[1:2]), batch.apply(0, scores)[1:2])


@pytest.mark.parametrize("vocab", [VOCAB, 128])
def test_rows_left_with_nothing_draw_minus_one_after_a_later_filter(vocab: int) -> None:
    # (min_p after top-p/top-k met an empty candidate table and took the max of nothing)
    procs = LogitsProcessorList(SamplingConfig(top_k=8, top_p=0.9, min_p=0.05).build_processors())
    procs.reset([[0]] * 3)
    got = procs.run(0, np.full((3, vocab), -np.inf, dtype=np.float32), candidates=True)
    assert sample_batch(got, np.full(3, 0.5)).tolist() == [-1, -1, -1]
