"""Logits processors against hand-computed distributions (small vocabularies, exact numbers)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest

from rwkv_music.errors import ConstraintError, RwkvMusicError
from rwkv_music.sampling import (
    EosBiasSchedule,
    ForceTokens,
    LogitBias,
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokens,
    MinP,
    OccurrencePenalty,
    RowConstraintError,
    SamplingValueError,
    Temperature,
    TokenBan,
    TopK,
    TopP,
    make_generators,
    sample,
)

if TYPE_CHECKING:
    import numpy.typing as npt

INF = np.inf


def probs(scores: npt.ArrayLike) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    e = np.where(np.isfinite(s), np.exp(s - np.max(s[np.isfinite(s)])), 0.0)
    return e / e.sum()


def logp(*p) -> np.ndarray:
    return np.log(np.array([p], dtype=np.float32))


def test_temperature_divides_scores_and_zero_keeps_only_maximum_ties() -> None:
    np.testing.assert_allclose(Temperature(2.0)(0, np.array([[1.0, 2.0, 3.0]], np.float32)), [[0.5, 1.0, 1.5]])
    greedy = Temperature(0)(0, np.array([[3.0, 1.0, 3.0, -INF]], np.float32))
    np.testing.assert_array_equal(greedy, [[3.0, -INF, 3.0, -INF]])


def test_temperature_half_squares_probabilities() -> None:
    out = Temperature(0.5)(0, logp(0.4, 0.3, 0.2, 0.1))
    expected = np.array([0.16, 0.09, 0.04, 0.01]) / 0.30
    np.testing.assert_allclose(probs(out[0]), expected, rtol=1e-6)


def test_top_k_keeps_k_best_and_ties_with_the_kth() -> None:
    np.testing.assert_array_equal(TopK(2)(0, np.array([[0.0, 3.0, 1.0, 2.0]])), [[-INF, 3.0, -INF, 2.0]])
    np.testing.assert_array_equal(TopK(1)(0, np.array([[1.0, 2.0, 2.0, 0.0]])), [[-INF, 2.0, 2.0, -INF]])
    np.testing.assert_array_equal(TopK(0)(0, np.array([[1.0, 2.0]])), [[1.0, 2.0]])


def test_top_p_uses_pip_cutoff_rule_with_ties_surviving() -> None:
    scores = logp(0.1, 0.5, 0.3, 0.1)
    keep = lambda p: np.isfinite(TopP(p)(0, scores)[0]).tolist()  # noqa: E731
    assert keep(0.45) == [False, True, False, False]  # 0.5 >= 0.45 at the first position
    assert keep(0.6) == [False, True, True, False]  # 0.5, 0.8
    assert keep(0.85) == [True, True, True, True]  # 0.5, 0.8, 0.9: cutoff 0.1, both 0.1s survive
    assert keep(1.0) == [True, True, True, True]  # >= 1 is off
    assert keep(0.0) == [False, True, False, False]  # 0 is greedy, as in pip
    np.testing.assert_allclose(probs(TopP(0.6)(0, scores)[0]), [0, 0.625, 0.375, 0], atol=1e-7)


def test_top_p_fast_path_matches_full_sort_on_peaked_and_flat_rows() -> None:
    rng = np.random.default_rng(3)
    flat = rng.standard_normal((2, 500)).astype(np.float32)
    peaked = flat * 8
    for scores in (flat, peaked):
        out = TopP(0.7)(0, scores)
        for r in range(2):
            p = probs(scores[r])
            order = np.sort(p)[::-1]
            cutoff = order[np.argmax(np.cumsum(order) >= 0.7)]
            np.testing.assert_array_equal(np.isfinite(out[r]), p >= cutoff)


def test_min_p_keeps_tokens_above_fraction_of_max() -> None:
    out = MinP(0.5)(0, logp(0.5, 0.3, 0.2))
    np.testing.assert_allclose(probs(out[0]), [0.625, 0.375, 0.0], atol=1e-7)


@pytest.mark.parametrize("row", [
    [1.0, 2.0, np.nan, -np.inf],  # nan dropped, the finite max decides
    [np.inf, 1.0, 2.0],  # +inf is not finite: the batched rule drops it
    [-np.inf, -np.inf],  # nothing finite: stays all -inf
    [0.1, -2.9, -3.0, -3.1, 5.0],
])
def test_min_p_one_row_fast_path_matches_the_batched_rule(row: list) -> None:
    one = np.array([row], np.float32)
    batched = MinP(0.05)(0, np.vstack([one, one + 0.0]))
    np.testing.assert_array_equal(MinP(0.05)(0, one)[0], batched[0])
    assert np.isneginf(MinP(0.05)(0, one)).sum() >= np.isneginf(one).sum()


def test_ban_bias_min_new_tokens_and_force_tokens() -> None:
    z = np.zeros((2, 4), np.float32)
    np.testing.assert_array_equal(TokenBan([1, 3])(0, z)[0], [0, -INF, 0, -INF])
    np.testing.assert_array_equal(LogitBias({2: -1.0, 0: 0.5})(0, z)[1], [0.5, 0, -1, 0])
    mnt = MinNewTokens(2, [0])
    assert not np.isfinite(mnt(1, z)[:, 0]).any() and np.isfinite(mnt(2, z)[:, 0]).all()
    forced = ForceTokens({3: 2})
    np.testing.assert_array_equal(forced(2, z), z)
    np.testing.assert_array_equal(forced(3, z)[1], [-INF, -INF, 0, -INF])


def test_eos_bias_schedule_follows_chatrwkv_formula() -> None:
    eos = EosBiasSchedule([0], start=2000, scale=500)
    for step, bias in ((0, -4.0), (2000, 0.0), (4095, 4.19)):
        assert eos(step, np.zeros((1, 3), np.float32))[0, 0] == pytest.approx(bias)
    clamped = EosBiasSchedule([1], start=0, scale=1, max_bias=2.5)
    assert clamped(10, np.zeros((1, 3), np.float32))[0, 1] == 2.5


def test_occurrence_penalty_hand_computed_presence_frequency_decay() -> None:
    pen = OccurrencePenalty(presence=0.2, frequency=0.5, decay=0.9, weights={3: 0.0})
    pen.reset([[0]])
    for t in (1, 1, 3, 2):
        pen.update([t])
    # occ[1] = (1*0.9 + 1)*0.9*0.9 = 1.539; occ[3] = 0 (weight 0, in map); occ[2] = 1
    expected = -np.array([0.0, 0.2 + 0.5 * 1.539, 0.2 + 0.5 * 1.0, 0.2])
    np.testing.assert_allclose(pen(0, np.zeros((1, 4), np.float32))[0], expected, rtol=1e-6)
    assert pen.occurrences(0) == pytest.approx({1: 1.539, 2: 1.0, 3: 0.0})


def test_chained_processors_give_exact_distribution() -> None:
    procs = LogitsProcessorList([TopP(0.95), TopK(2), Temperature(0.5)])
    procs.reset([[0]])
    out = procs(0, logp(0.4, 0.3, 0.2, 0.1))
    np.testing.assert_allclose(probs(out[0]), [0.64, 0.36, 0.0, 0.0], rtol=1e-6)


def test_processors_return_new_array_and_leave_input_untouched() -> None:
    scores = np.array([[0.5, 1.0, 2.0, -1.0]], np.float32)
    before = scores.copy()
    procs = (Temperature(0.7), TopK(2), TopP(0.5), MinP(0.2), TokenBan([0]), LogitBias({1: 1.0}), ForceTokens({0: 2}))
    for proc in procs:
        out = proc(0, scores)
        assert out is not scores and out.dtype == np.float32 and out.shape == scores.shape
        np.testing.assert_array_equal(scores, before)


def test_torch_scores_come_back_as_torch_with_same_values() -> None:
    torch = pytest.importorskip("torch")
    scores = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    procs = LogitsProcessorList([TokenBan([4]), TopP(0.8), TopK(10), Temperature(0.8)])
    procs.reset([[0]] * 3)
    out_np = procs(0, scores)
    out_t = procs(0, torch.from_numpy(scores.copy()))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), out_np)


def test_importing_sampling_does_not_import_torch() -> None:
    code = "import sys, rwkv_music.sampling, rwkv_music.formats.midi.constraint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inactive_rows_pass_through_without_error() -> None:
    scores = np.array([[-INF, -INF, -INF], [0.0, 1.0, 2.0]], np.float32)
    procs = LogitsProcessorList([TokenBan([0, 1]), TopP(0.5), TopK(1), MinP(0.5), Temperature(0), ForceTokens({0: 2})])
    procs.reset([[0], [0]])
    out = procs(0, scores)
    assert not np.isfinite(out[0]).any()
    np.testing.assert_array_equal(np.isfinite(out[1]), [False, False, True])


def test_emptying_a_row_raises_constraint_error_naming_row_step_rule() -> None:
    scores = np.zeros((2, 3), np.float32)
    scores[1, 2] = -INF
    procs = LogitsProcessorList([TokenBan([0, 1])])
    with pytest.raises(RowConstraintError, match=r"step 7, row 1: rule 'token_ban'") as info:
        procs(7, scores)
    assert isinstance(info.value, ConstraintError) and (info.value.row, info.value.step) == (1, 7)


def test_list_catches_a_processor_that_empties_a_row_without_raising() -> None:
    class Sloppy(LogitsProcessor):
        rule = "sloppy"

        def __call__(self, step: int, scores: np.ndarray):
            return np.full_like(scores, -INF)

    with pytest.raises(RowConstraintError, match="sloppy"):
        LogitsProcessorList([Sloppy()])(0, np.zeros((1, 3), np.float32))


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: Temperature(-1), "temperature"),
        (lambda: Temperature(float("nan")), "temperature"),
        (lambda: TopK(-2), "top_k"),
        (lambda: TopK(1.5), "top_k"),
        (lambda: TopP(-0.1), "top_p"),
        (lambda: MinP(1.5), "min_p"),
        (lambda: TokenBan([-1]), "token_ban"),
        (lambda: LogitBias({1: float("inf")}), "logit_bias"),
        (lambda: EosBiasSchedule([0], start=0, scale=0), "scale"),
        (lambda: OccurrencePenalty(decay=1.5), "penalty_decay"),
        (lambda: OccurrencePenalty(frequency=float("nan")), "frequency_penalty"),
        (lambda: MinNewTokens(-1, [0]), "min_new_tokens"),
    ],
)
def test_bad_arguments_raise_value_error_naming_argument(make: Callable[[], object], name: str) -> None:
    with pytest.raises(SamplingValueError, match=name) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, RwkvMusicError)


def test_sampler_follows_distribution_and_never_picks_illegal_tokens() -> None:
    scores = np.log(np.array([[0.64, 0.36, 1e-9, 1e-9]], np.float32))
    scores[0, 2:] = -INF
    rngs = make_generators([123])
    draws = np.array([sample(scores, rngs)[0] for _ in range(5000)])
    assert set(draws.tolist()) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.64) < 0.03


def test_sampler_is_reproducible_per_seed_and_handles_empty_rows() -> None:
    scores = np.random.default_rng(1).standard_normal((3, 100)).astype(np.float32)
    scores[1] = -INF
    a = [sample(scores, g) for g in [make_generators([5, 6, 7])] for _ in range(20)]
    b = [sample(scores, g) for g in [make_generators([5, 6, 7])] for _ in range(20)]
    np.testing.assert_array_equal(a, b)
    assert all(x[1] == -1 for x in a) and len({int(x[0]) for x in a}) > 1
    with pytest.raises(SamplingValueError, match="seeds"):
        make_generators([-1])


def test_sampler_draw_uses_float64_inverse_cdf() -> None:
    scores = np.array([[0.0, math.log(3.0)]], np.float32)  # p = [0.25, 0.75]
    u = np.random.Generator(np.random.PCG64(9)).random()
    assert sample(scores, make_generators([9]))[0] == (0 if u < 0.25 else 1)


def _reference_top_k(k: int, scores: np.ndarray) -> np.ndarray:
    """Top-k by a full partition of every row (the plain algorithm, for comparison)."""
    vocab = scores.shape[1]
    clean = np.where(np.isfinite(scores), scores, -np.inf)
    kth = np.partition(clean, vocab - k, axis=1)[:, vocab - k : vocab - k + 1]
    return np.where(clean >= kth, scores, -np.inf).astype(scores.dtype)


def _reference_top_p_cutoff(top_p: float, p: np.ndarray) -> float:
    ordered = np.sort(p)[::-1]
    hit = np.cumsum(ordered) >= top_p
    return float(ordered[int(np.argmax(hit))]) if hit.any() else 0.0


@pytest.mark.parametrize("seed", range(6))
def test_pruned_top_k_and_top_p_equal_the_full_sort(seed: int) -> None:
    """TopK / TopP select among candidates above a cheap bound; the result must be the full sort's."""
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([300, 2000, 20096]))
    spread = float(rng.choice([0.3, 3.0, 12.0]))  # flat to peaked rows
    scores = (rng.standard_normal((5, vocab)) * spread).astype(np.float32)
    scores[0, rng.integers(0, vocab, vocab // 3)] = -np.inf  # masked by a constraint
    scores[1, :] = np.round(scores[1, :])  # many ties, also at the k-th value
    scores[2, :40] = np.nan
    for k in (1, 8, 16, 64):
        np.testing.assert_array_equal(TopK(k).process(0, scores), _reference_top_k(k, scores))
    for top_p in (0.3, 0.8, 0.9, 0.999):
        proc = TopP(top_p)
        for row in scores:
            finite = row[np.isfinite(row)].astype(np.float64)
            p = np.exp(finite - finite.max())
            p /= p.sum()
            assert proc.cutoff(p[None, :])[0, 0] == _reference_top_p_cutoff(top_p, p)


def test_pooled_occurrence_penalties_in_c_equal_the_numpy_pool_and_each_piece_alone() -> None:
    """apply_pool / update_pool (a render's pieces, each its own one-row penalty, as one batch) with the C
    kernels give what the numpy pool and each piece alone give, bit for bit: the pool's members changing
    from step to step, a piece stepping alone in between, a piece replaced by a new one, and lists that
    outgrow their first size (over 64 ids a row)."""
    from rwkv_music.sampling import native
    from rwkv_music.sampling.penalties import OccurrencePenalty

    if native.occurrence_kernels() is None:
        pytest.skip("the occurrence kernels do not build here")
    V, P = 300, 6
    rng = np.random.default_rng(4)

    def make(kernel: bool) -> OccurrencePenalty:
        p = OccurrencePenalty(presence=0.3, frequency=0.4, decay=0.95, weights={7: 0.5, 11: 0.0})
        p.use_kernel = kernel
        p.reset([[0]])
        return p

    in_c, in_numpy, alone = ([make(k) for _ in range(P)] for k in (True, False, True))
    grew = False
    for step in range(260):
        if step % 50 == 49:  # a finished piece's slot takes a new piece
            r = int(rng.integers(P))
            in_c[r], in_numpy[r], alone[r] = make(True), make(False), make(True)
        members = [r for r in range(P) if rng.random() < 0.85] or [0]
        if step % 7 == 3:
            members.reverse()  # (the loop keeps its rows' order; the pool functions must not rely on it)
        scores = rng.normal(size=(len(members), V)).astype(np.float32)
        scores[rng.random(scores.shape) < 0.05] = -np.inf
        got = OccurrencePenalty.apply_pool([in_c[r] for r in members], scores)
        want = OccurrencePenalty.apply_pool([in_numpy[r] for r in members], scores)
        each = np.concatenate([alone[r].apply(step, scores[i : i + 1]) for i, r in enumerate(members)])
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        np.testing.assert_array_equal(got, each, err_msg=f"step {step}")
        assert got is not scores and np.isneginf(scores).any()  # (the input is never written)
        own = scores.copy()  # a pooled step's own array: written in place, the same result
        assert OccurrencePenalty.apply_pool_inplace([in_c[r] for r in members], own) is own
        np.testing.assert_array_equal(own, got, err_msg=f"step {step}")
        tokens = [int(t) for t in rng.integers(0, V, len(members))]
        if step % 13 == 5:  # one piece steps alone (its own list, outside the pool)
            r = members[0]
            for p in (in_c[r], in_numpy[r], alone[r]):
                p.update([tokens[0]])
            continue
        OccurrencePenalty.update_pool([in_c[r] for r in members], tokens, V, scores)
        OccurrencePenalty.update_pool([in_numpy[r] for r in members], tokens, V, scores)
        for r, t in zip(members, tokens):
            alone[r].update([t])
        grew = grew or any(p._lists is not None and p._lists.shape[1] > 64 for p in in_c)
    for r in range(P):
        assert in_c[r].occurrences(0) == in_numpy[r].occurrences(0) == alone[r].occurrences(0)
    assert grew  # the kernels' lists outgrew their first size


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_step_processors_in_place_give_what_they_give_on_a_copy(kind: str) -> None:
    """apply_steps_inplace (a render's pooled step, on its own copy of the rows) writes into its input and
    leaves exactly what apply_steps returns, which never writes its input; rows at different steps."""
    from rwkv_music.sampling.processors import EosBiasSchedule, ForceTokens, MinNewTokens

    torch = pytest.importorskip("torch") if kind == "torch" else None
    rng = np.random.default_rng(9)
    procs = [EosBiasSchedule([0], start=4, scale=2.0), EosBiasSchedule([0, 3], start=1, scale=3.0, max_bias=0.5),
             MinNewTokens(3, [0, 2]), ForceTokens({1: 4, 5: 2})]
    for proc in procs:
        for steps in ([0, 1, 2, 5, 9, 1], [7, 7, 7, 7, 7, 7], [1, 5, 0, 3, 4, 2]):
            scores = rng.normal(size=(6, 10)).astype(np.float32)
            scores[0, 5] = -np.inf
            if kind == "torch":
                scores = torch.from_numpy(scores)
            before = scores.clone() if kind == "torch" else scores.copy()
            want = proc.apply_steps(np.array(steps), scores)
            assert (want is scores) == (proc.apply_steps(np.array(steps), before) is before)
            own = before.clone() if kind == "torch" else before.copy()
            got = proc.apply_steps_inplace(np.array(steps), own)
            assert got is own, (proc, steps)
            np.testing.assert_array_equal(np.asarray(scores), np.asarray(before))  # apply_steps wrote nothing
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{proc} {steps}")
            changed = not np.array_equal(np.asarray(got), np.asarray(before))
            assert changed == (want is not scores), (proc, steps)


def test_step_processors_give_each_row_what_apply_gives_it_at_its_own_step() -> None:
    """apply_steps (a pool whose rows are at different steps) leaves row r as apply(steps[r]) leaves it alone,
    bit for bit: the end-bias schedule's vectorised arithmetic (clamped and not) against bias_at's per step."""
    from rwkv_music.sampling.processors import EosBiasSchedule, ForceTokens, MinNewTokens

    rng = np.random.default_rng(21)
    procs = [EosBiasSchedule([0], start=2000, scale=500), EosBiasSchedule([0, 2], start=1234.567, scale=0.3,
                                                                          min_bias=-1000, max_bias=9000.25),
             EosBiasSchedule([1], start=-7, scale=3.0, max_bias=1), MinNewTokens(40, [0, 2]),
             ForceTokens({3: 1, 700: 2})]
    for proc in procs:
        steps = np.concatenate([rng.integers(0, 5000, 200), [0, 3, 39, 40, 700, 4095]])
        scores = rng.normal(size=(len(steps), 4)).astype(np.float32)
        got = proc.apply_steps(steps, scores)
        want = np.concatenate([proc.apply(int(t), scores[r : r + 1]) for r, t in enumerate(steps)])
        np.testing.assert_array_equal(got, want, err_msg=repr(proc))


def test_a_pools_penalty_state_on_torch_stays_stacked_between_steps_and_equals_numpy() -> None:
    """Torch state (a GPU's pool): after update_pool the pieces hold rows of one tensor, which the next
    apply_pool and update_pool use as it is (not stacked again from every piece each step); the scores
    equal the numpy pool's while pieces join (some with host state of their own), leave and step alone."""
    torch = pytest.importorskip("torch")
    from rwkv_music.sampling.penalties import OccurrencePenalty

    V, P = 200, 5
    rng = np.random.default_rng(12)

    def make() -> OccurrencePenalty:
        p = OccurrencePenalty(presence=0.2, frequency=0.3, decay=0.9, weights={3: 0.5})
        p.reset([[0]])
        return p

    on_torch, on_numpy = [make() for _ in range(P)], [make() for _ in range(P)]
    kept = 0
    for step in range(120):
        if step % 40 == 39:
            r = int(rng.integers(P))
            on_torch[r], on_numpy[r] = make(), make()
            first = int(rng.integers(0, V // 2))  # a new piece's first id, read alone: host state narrower
            on_torch[r].update([first])           # than the vocabulary, which the pool takes over
            on_numpy[r].update([first])
        members = list(range(P)) if step % 10 < 7 else sorted(rng.choice(P, 3, replace=False).tolist())
        scores = rng.normal(size=(len(members), V)).astype(np.float32)
        procs_t = [on_torch[r] for r in members]
        before = OccurrencePenalty._stack(procs_t, V, torch.from_numpy(scores))[0]
        kept += int(procs_t[0]._occ._base is before)  # the rows the last update_pool left, as they are
        got = OccurrencePenalty.apply_pool_inplace(procs_t, torch.from_numpy(scores.copy()))
        want = OccurrencePenalty.apply_pool([on_numpy[r] for r in members], scores)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"step {step}")
        tokens = [int(t) for t in rng.integers(0, V, len(members))]
        if step % 17 == 8:  # one piece steps alone
            on_torch[members[0]].update([tokens[0]])
            on_numpy[members[0]].update([tokens[0]])
            continue
        OccurrencePenalty.update_pool(procs_t, tokens, V, torch.from_numpy(scores))
        OccurrencePenalty.update_pool([on_numpy[r] for r in members], tokens, V, scores)
    assert kept > 40
