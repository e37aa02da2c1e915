"""``NumpyOps.top_values`` through block maxima equals the full sort (issue 16: top-k on masked rows).

A constraint leaves most of a 20,096-id row at -inf, where numpy's ``partition`` is ten times
slower; the block path must give exactly the values the full sort gives, ties and -inf included.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_music.sampling.arrays import NumpyOps
from rwkv_music.sampling.processors import TopK, TopP


@pytest.mark.parametrize("vocab", [20096, 20100, 4096])
def test_block_top_values_equal_the_full_sort(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    for trial in range(60):
        x = rng.standard_normal((int(rng.integers(1, 6)), vocab)).astype(np.float32)
        if trial % 3 == 0:
            x[rng.random(x.shape) < 0.98] = -np.inf  # a constraint's mask
        if trial % 4 == 0:
            x = np.round(x * 2)  # many ties
        if trial % 11 == 0:
            x[0] = -np.inf  # an inactive row
        m = int(rng.integers(1, 20))
        np.testing.assert_array_equal(NumpyOps.top_values(x, m), -np.sort(-x, axis=1)[:, :m])


def test_top_p_with_top_k_after_on_masked_rows_keeps_the_reference_survivors() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 20096)).astype(np.float32)
    x[rng.random(x.shape) < 0.95] = -np.inf
    fused = TopP(0.9, top_k_after=16).process(0, x)
    apart = TopK(16).process(0, TopP(0.9).process(0, x))
    np.testing.assert_array_equal(np.isfinite(fused), np.isfinite(apart))
    assert (np.isfinite(fused).sum(axis=1) <= 16).all()


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_a_config_top_k_after_its_top_p_changes_nothing(top_p: float) -> None:
    from rwkv_music.sampling.config import SamplingConfig

    procs = SamplingConfig(top_k=8, top_p=top_p).build_processors()
    top_k = next(p for p in procs if isinstance(p, TopK))
    assert top_k._after_top_p  # skipped: the TopP before it applies top-k
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((16, 20096)).astype(np.float32) * 2)  # ties at the k-th value
    x[rng.random(x.shape) < 0.9] = -np.inf
    for scores in (x, x[:, :300]):
        full = TopK(8).process(0, TopP(top_p, top_k_after=8).process(0, scores))
        np.testing.assert_array_equal(procs(0, scores), full)
    assert not SamplingConfig(top_k=8, top_p=1.0).build_processors()[-1]._after_top_p  # no TopP: TopK cuts
