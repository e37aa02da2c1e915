"""The C top-p/top-k kernels (rwkv_music/sampling/native) against the numpy path they replace.

``TopP(top_k_after=k).candidates`` takes the kernel where it is built; the numpy rule stays the
reference (``TopP.use_kernel = False``).  The survivors must be the same ids with the same scores, row
for row; rows the kernel hands back (NaN, +inf, too many ties) must still come out as numpy's.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_music.sampling import native
from rwkv_music.sampling.base import Candidates, LogitsProcessor, LogitsProcessorList
from rwkv_music.sampling.penalties import OccurrencePenalty, weights_from_ranges
from rwkv_music.sampling.processors import MinP, NucleusCandidates, Temperature, TokenBan, TopK, TopP
from rwkv_music.sampling.sampler import row_uniforms, sample_batch

needs_kernel = pytest.mark.skipif(native._load() is None or not native.enabled(),
                                  reason=f"sampling kernel: {native.status()}")


def _both(scores: np.ndarray, k: int, top_p: float) -> tuple[Candidates, Candidates]:
    fast, ref = TopP(top_p, top_k_after=k), TopP(top_p, top_k_after=k)
    ref.use_kernel = False
    a = fast.candidates(0, scores.copy(), scratch=np.empty_like(scores))
    b = ref.candidates(0, scores.copy(), scratch=np.empty_like(scores))
    return a, b


def _same(a: Candidates, b: Candidates) -> None:
    assert a.ids.shape == b.ids.shape
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.vals, b.vals)


def _random_batch(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, int, float]:
    B = int(rng.integers(1, 20))
    # (1031: a tail past the 8- and 256-wide blocks; 5, 17, 128: narrower than a block, ABC's vocabulary)
    V = int(rng.choice([5, 17, 128, 1024, 1031, 5000, 20096]))
    k = min(int(rng.choice([1, 2, 8, 16, 40])), V - 1)
    top_p = float(rng.choice([0.0, 0.3, 0.8, 0.9, 0.999]))
    x = (rng.standard_normal((B, V)) * rng.choice([0.3, 2.0, 8.0])).astype(np.float32)
    if trial % 2:
        x[rng.random((B, V)) < 0.7] = -np.inf  # a constraint's mask
    if trial % 3 == 0:
        x = np.round(x)  # ties, also with the k-th value
    if B > 1 and trial % 4 == 0:
        x[1, : V - 3] = -np.inf  # fewer finite scores than k
        x[B - 1] = -np.inf  # a row with none
    return x, k, top_p


@needs_kernel
def test_kernel_survivors_equal_the_numpy_rule_on_random_batches() -> None:
    rng = np.random.default_rng(0)
    used = 0
    for trial in range(150):
        x, k, top_p = _random_batch(rng, trial)
        used += native.top_p_k(x, k, top_p) is not None
        a, b = _both(x, k, top_p)
        _same(a, b)
    assert used >= 120  # the kernel, not the fallback, answered (batches with > 2k ties in a row go back)


@needs_kernel
def test_kernel_matches_on_peaked_rows_where_the_cut_comes_before_k() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32, 20096)) * 2.0).astype(np.float32)
    x[np.arange(32)[:, None], rng.integers(0, 20096, (32, 3))] += 20.0  # 3 dominant ids a row: top-p stops early
    found = native.top_p_k(x, 16, 0.9)
    assert found is not None and found[0].shape[1] < 16
    _same(*_both(x, 16, 0.9))


@needs_kernel
def test_rows_with_nan_or_inf_go_back_to_numpy_and_still_agree() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4096)).astype(np.float32)
    x[2, 10] = np.nan
    x[4, 99] = np.inf
    assert native.top_p_k(x, 8, 0.9) is None
    _same(*_both(x, 8, 0.9))


@needs_kernel
def test_more_ties_than_the_buffer_go_back_to_numpy() -> None:
    x = np.zeros((3, 2048), dtype=np.float32)  # every score tied: all 2048 survive top-k
    assert native.top_p_k(x, 4, 0.999) is None
    a, b = _both(x, 4, 0.999)
    _same(a, b)
    assert a.ids.shape[1] == 2048


@needs_kernel
def test_drawn_ids_are_the_same_with_and_without_the_kernel() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((32, 20096)) * 3.0).astype(np.float32)
    x[rng.random(x.shape) < 0.6] = -np.inf
    a, b = _both(x, 16, 0.9)
    u = row_uniforms(list(range(32)), [5] * 32)
    np.testing.assert_array_equal(sample_batch(a, u), sample_batch(b, u))


def test_other_dtypes_k_out_of_range_and_switched_off_use_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(4).standard_normal((4, 8)).astype(np.float32)
    assert native.top_p_k(x, 8, 0.9) is None  # k >= V: top-k keeps everything, nothing to do
    big = np.random.default_rng(4).standard_normal((4, 4096))
    assert native.top_p_k(big, 8, 0.9) is None  # float64
    assert native.top_p_k(big.astype(np.float32), native.MAX_K + 1, 0.9) is None
    monkeypatch.setattr(native.LIBRARY, "_enabled", False)
    assert native.top_p_k(big.astype(np.float32), 8, 0.9) is None
    assert native.status().startswith("unavailable: turned off")
    _same(*_both(big.astype(np.float32), 8, 0.9))


# -- the one-call draw (rwkv_top_p_k_draw): survivors, MinP and the draw --------------------------------
def _numpy_draw(x: np.ndarray, k: int, top_p: float, min_p: float, u: np.ndarray) -> np.ndarray:
    """The reference: numpy's TopP(top_k_after=k) candidates, MinP on them, the numpy draw."""
    ref = TopP(top_p, top_k_after=k)
    ref.use_kernel = False
    cand = ref.candidates(0, x.copy(), scratch=np.empty_like(x))
    if min_p and cand.vals.shape[1]:
        cand.vals = MinP(min_p).apply(0, cand.vals)
    return sample_batch(cand, u)


@needs_kernel
def test_one_call_draw_gives_the_numpy_ids_on_random_batches() -> None:
    rng = np.random.default_rng(5)
    answered = 0
    for trial in range(200):
        x, k, top_p = _random_batch(rng, trial)
        min_p = float(rng.choice([0.0, 0.02, 0.3]))
        u = rng.random(x.shape[0])
        if trial % 7 == 0:
            u[0] = 1.0 - 2.0**-53  # the largest uniform
        got = native.top_p_k_draw(x, k, top_p, min_p, u)
        if got is None:  # (too many ties for the kernel's buffer: the caller draws in numpy)
            continue
        answered += 1
        np.testing.assert_array_equal(got, _numpy_draw(x, k, top_p, min_p, u), err_msg=f"trial {trial}")
    assert answered >= 170


@needs_kernel
def test_one_call_draw_marks_empty_rows_and_hands_back_nan_rows() -> None:
    x = np.full((3, 128), -np.inf, dtype=np.float32)
    x[1, 7] = 2.0
    np.testing.assert_array_equal(native.top_p_k_draw(x, 16, 0.9, 0.02, np.full(3, 0.5)), [-1, 7, -1])
    x[2, 3] = np.nan
    assert native.top_p_k_draw(x, 16, 0.9, 0.02, np.full(3, 0.5)) is None


def _tail(*procs: LogitsProcessor) -> LogitsProcessorList:
    return LogitsProcessorList([TokenBan([1]), *procs])


@needs_kernel
def test_the_decode_fast_path_draws_what_the_candidates_draw() -> None:
    """``run(candidates=True)`` hands the draw a lazy :class:`NucleusCandidates` where the tail is TopP (+ a
    no-op TopK) (+ MinP); reading it gives the plain candidates, and its one-call draw their ids."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((8, 20096)) * 3.0).astype(np.float32)
    u = row_uniforms(list(range(8)), [3] * 8)
    top_k = TopK(16)
    top_k._after_top_p = True
    fused = _tail(TopP(0.9, top_k_after=16), top_k, MinP(0.05)).run(0, x, candidates=True)
    assert isinstance(fused, NucleusCandidates)
    ids = sample_batch(fused, u)
    plain = TopP(0.9, top_k_after=16)
    plain.use_kernel = False
    xb = x.copy()
    xb[:, 1] = -np.inf
    ref = plain.candidates(0, xb)
    ref.vals = MinP(0.05).apply(0, ref.vals)
    np.testing.assert_array_equal(ids, sample_batch(ref, u))
    again = _tail(TopP(0.9, top_k_after=16), top_k, MinP(0.05)).run(0, x, candidates=True)
    _same(again, ref)  # read, it is the candidates themselves
    assert again.draw(u) is None  # (once computed, the numpy draw takes them)
    np.testing.assert_array_equal(sample_batch(again, u), ids)


def test_tails_the_kernel_does_not_cover_keep_the_plain_candidates() -> None:
    x = np.random.default_rng(7).standard_normal((2, 128)).astype(np.float32)
    for tail in ([TopP(0.9, top_k_after=16), Temperature(0.7)], [TopP(0.9, top_k_after=16), MinP(0.1), TopK(4)],
                 [TopP(0.9), TopK(16)]):
        out = _tail(*tail).run(0, x, candidates=True)
        assert not isinstance(out, NucleusCandidates)


@needs_kernel
def test_generation_is_the_same_with_and_without_the_one_call_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_sampling_fakes import FakeBackend  # logits from a table, by history

    from rwkv_music.sampling import generate, get_preset

    def run() -> list[list[int]]:
        rows = []
        for prompts, seeds in (([[2], [2, 5], [2]], [1, 2, 3]), ([[2, 5]], [2])):  # a batch, and one row alone
            procs = get_preset("default-abc").build_processors()
            out = generate(FakeBackend(128, scale=3.0), prompts, processors=procs, max_new_tokens=60, seeds=seeds,
                           return_state=False)
            rows += out.tokens
        return rows

    answered = []
    kernel = native.top_p_k_draw
    monkeypatch.setattr(native, "top_p_k_draw", lambda *a: answered.append(kernel(*a)) or answered[-1])
    first = run()
    assert sum(a is not None for a in answered) >= 100  # the one-call draw ran
    assert first[1] == first[3]  # (the same piece in a batch and alone)
    monkeypatch.setattr(TopP, "drawn_tail", lambda self, *a, **k: None)
    assert run() == first


# -- OccurrencePenalty's numpy state in C (occurrence.c) ------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("presence, decay", [(0.0, 0.997), (0.4, 1.0), (0.25, 0.9)])
def test_occurrence_kernels_keep_the_numpy_state_and_scores_bit_for_bit(rows: int, presence: float,
                                                                        decay: float) -> None:
    """Penalise and update in C and in numpy side by side for 300 steps, past the point (a twentieth of the
    vocabulary seen) where numpy's update switches to the dense pass, past a full row list (grown), and with a
    third penalty that changes path every few steps (each path must pick up the state the other left)."""
    rng = np.random.default_rng(rows)
    V = 2000
    weights = weights_from_ranges([(0, 50, 0.3), (1990, 2000, 0.0)])
    fast, ref, mixed = (OccurrencePenalty(presence, 0.5, decay, weights) for _ in range(3))
    ref.use_kernel = False
    for proc in (fast, ref, mixed):
        proc.reset([[1]] * rows)
    for step in range(300):
        mixed.use_kernel = step % 7 < 4
        x = (rng.standard_normal((rows, V)) * 3).astype(np.float32)
        x[rng.random(x.shape) < 0.3] = -np.inf
        a, b, c = (p.apply_inplace(step, x.copy()) for p in (fast, ref, mixed))
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
        np.testing.assert_array_equal(c, b, err_msg=f"step {step}")
        toks = rng.integers(0, V if step % 3 else 60, rows)  # (repeats: counts above one)
        for p in (fast, ref, mixed):
            p.update(toks.tolist())
        for p in (fast, mixed):
            np.testing.assert_array_equal(p._occ, ref._occ)
            np.testing.assert_array_equal(p._seen, ref._seen)
        np.testing.assert_array_equal(fast._seen_columns(V), ref._cols)
        for r in range(rows):  # each row's list: exactly the ids it has seen
            assert sorted(fast._lists[r, : fast._counts[r]]) == np.flatnonzero(ref._seen[r]).tolist()
    assert ref._cols.size * 20 > V  # the dense branch of the numpy update ran
    assert fast._lists.shape[1] > 64  # a row outgrew the first list


@needs_kernel
def test_occurrence_kernels_answer_both_apply_and_update(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    kernels = native.occurrence_kernels
    monkeypatch.setattr(native, "occurrence_kernels", lambda: calls.append(1) or kernels())
    pen = OccurrencePenalty(0.0, 0.5, 0.997)
    pen.reset([[1], [2]])
    pen.update([3, 4])
    out = pen.apply_inplace(0, np.zeros((2, 8), dtype=np.float32))
    assert len(calls) == 2 and out[0, 3] == out[1, 4] == -0.5 and out[0, 4] == 0.0


def test_kept_addresses_follow_the_array_and_hold_none_alive() -> None:
    import gc
    import weakref

    a = np.zeros(8)
    assert native.address(a) == a.ctypes.data == native.address(a)
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None  # the cache kept no reference
    b = np.ones(16)  # (may reuse a's id: the dead entry is not taken for it)
    assert native.address(b) == b.ctypes.data
