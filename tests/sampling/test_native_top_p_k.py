"""The C top-p/top-k kernel (rwkv_music/sampling/native) against the numpy path it replaces.

``TopP(top_k_after=k).candidates`` takes the kernel where it is built; the numpy rule stays the
reference (``TopP.use_kernel = False``).  The survivors must be the same ids with the same scores, row
for row; rows the kernel hands back (NaN, +inf, too many ties) must still come out as numpy's.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_music.sampling import native
from rwkv_music.sampling.base import Candidates
from rwkv_music.sampling.processors import TopP
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
    monkeypatch.setattr(native, "_enabled", [False])
    assert native.top_p_k(big.astype(np.float32), 8, 0.9) is None
    assert native.status().startswith("unavailable: turned off")
    _same(*_both(big.astype(np.float32), 8, 0.9))
