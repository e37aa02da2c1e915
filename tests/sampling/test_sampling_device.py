"""Processors and the draw on batched arrays (numpy, and torch on its device) against per-row references.

The references below are the per-row implementations the toolkit used before the processors were
vectorised (one Python iteration per row, numpy, float64).  Both sides get the same random logits and
the same uniforms; they must give the same processed scores (within float tolerance) and the same ids.
"""

from __future__ import annotations

import numpy as np
import pytest

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
    SamplingConfig,
    Temperature,
    TokenBan,
    TopK,
    TopP,
    generate,
    get_preset,
)
from rwkv_music.sampling.arrays import on_accelerator
from rwkv_music.sampling.sampler import counter_uniforms, row_uniforms, sample_batch, seed_words

torch = pytest.importorskip("torch")

# "gpu-branches": CPU tensors treated as accelerator memory, so the branches written for a GPU (no
# data-dependent shortcuts, full sorts, no compaction) run and are checked here too.
KINDS = ["numpy", "torch", "gpu-branches"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _gpu_branches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kind") == "gpu-branches":
        import importlib

        import rwkv_music.sampling.arrays as arrays

        monkeypatch.setattr(arrays, "HOST_DEVICE_TYPES", set())
        # the decode loop's own name too: it keeps a GPU's logits as tensors (a CPU's become numpy views)
        monkeypatch.setattr(importlib.import_module("rwkv_music.sampling.decode"), "HOST_DEVICE_TYPES", set())


def _as(kind: str, arr: np.ndarray) -> object:
    if kind == "numpy":
        return arr
    t = torch.from_numpy(arr)
    return t.cuda() if kind == "cuda" else t


def _np(x: object) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# -- per-row references ----------------------------------------------------------------------
def ref_top_p(top_p: float, scores: np.ndarray) -> np.ndarray:
    out = scores.copy()
    for r in range(scores.shape[0]):
        finite = np.isfinite(scores[r])
        if not finite.any():
            continue
        s = scores[r, finite].astype(np.float64)
        p = np.exp(s - s.max())
        p /= p.sum()
        ordered = np.sort(p)[::-1]
        hit = np.cumsum(ordered) >= top_p
        cut = float(ordered[int(np.argmax(hit))]) if hit.any() else 0.0
        out[r, np.flatnonzero(finite)[p < cut]] = -np.inf
        out[r, ~finite] = -np.inf
    return out


def ref_top_k(k: int, scores: np.ndarray) -> np.ndarray:
    out = scores.copy()
    for r in range(scores.shape[0]):
        clean = np.where(np.isfinite(scores[r]), scores[r], -np.inf)
        kth = np.sort(clean)[::-1][k - 1]
        out[r, clean < kth] = -np.inf
        out[r, ~np.isfinite(scores[r])] = -np.inf
    return out


def ref_penalty(presence: float, frequency: float, decay: float, weights: dict, history: list[list[int]],
                scores: np.ndarray) -> np.ndarray:
    out = scores.astype(np.float64)
    for r, toks in enumerate(history):
        occ: dict[int, float] = {}
        for t in toks:
            for key in occ:
                occ[key] *= decay
            occ[t] = occ.get(t, 0.0) + weights.get(t, 1.0)
        for t, c in occ.items():
            out[r, t] -= presence + frequency * c
    return out.astype(scores.dtype)


def ref_sample_row(scores: np.ndarray, u: float) -> int:
    ids = np.flatnonzero(np.isfinite(scores))
    if ids.size == 0:
        return -1
    vals = scores[ids].astype(np.float64)
    cdf = np.cumsum(np.exp(vals - vals.max()))
    j = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if j >= ids.size:
        j = int(np.flatnonzero(np.diff(cdf, prepend=0.0) > 0)[-1])
    return int(ids[j])


def _random_scores(seed: int, rows: int = 6, vocab: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = float(rng.choice([0.5, 3.0, 10.0]))
    scores = (rng.standard_normal((rows, vocab)) * spread).astype(np.float32)
    scores[0, rng.integers(0, vocab, vocab // 2)] = -np.inf  # masked by a constraint
    scores[1] = np.round(scores[1])  # ties
    scores[2] = -np.inf  # an inactive row
    return scores


# -- processors -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_filters_equal_the_per_row_references(kind: str, seed: int) -> None:
    scores = _random_scores(seed, vocab=int(np.random.default_rng(seed).choice([300, 2000, 20096])))
    x = _as(kind, scores)
    assert on_accelerator(x) == (kind in ("gpu-branches", "cuda"))
    for k in (1, 8, 64):
        got = TopK(k)(0, x)
        assert type(got) is type(x) and (kind == "numpy" or got.device == x.device)
        np.testing.assert_array_equal(_np(got), ref_top_k(k, scores))
    for top_p in (0.0, 0.3, 0.9, 0.999):
        np.testing.assert_array_equal(_np(TopP(top_p)(0, x)), ref_top_p(top_p, scores))
        for k in (4, 16):  # TopP told that TopK(k) follows: the pair equals the reference pair
            pair = LogitsProcessorList([TopP(top_p, top_k_after=k), TopK(k)])(0, x)
            np.testing.assert_array_equal(_np(pair), ref_top_k(k, ref_top_p(top_p, scores)))
    for t in (0.0, 0.7):
        want = Temperature(t).process(0, scores)  # the numpy side is checked by the unit tests
        np.testing.assert_allclose(_np(Temperature(t)(0, x)), want, rtol=1e-6)
    np.testing.assert_array_equal(_np(MinP(0.1)(0, x)), MinP(0.1).process(0, scores))


@pytest.mark.parametrize("kind", KINDS)
def test_bans_biases_schedules_and_forced_tokens_on_every_kind(kind: str) -> None:
    scores = _random_scores(9, vocab=300)
    x = _as(kind, scores)
    want = scores.copy()
    want[:, [3, 5]] = -np.inf
    np.testing.assert_array_equal(_np(TokenBan([3, 5])(0, x)), want)
    want = scores.copy()
    want[:, 7] -= 1.0
    want[:, 9] += 0.5
    np.testing.assert_allclose(_np(LogitBias({7: -1.0, 9: 0.5})(0, x)), want)
    want = scores.copy()
    want[:, 0] += (10 - 2000) / 500
    np.testing.assert_allclose(_np(EosBiasSchedule([0], 2000, 500)(10, x)), want, rtol=1e-6)
    banned = scores.copy()
    banned[:, [0, 2]] = -np.inf
    np.testing.assert_array_equal(_np(MinNewTokens(3, [0, 2])(2, x)), banned)
    np.testing.assert_array_equal(_np(MinNewTokens(3, [0, 2])(3, x)), scores)
    scores[[0, 1, 3, 4, 5], 4] = 1.0  # legal in every active row
    forced = np.full_like(scores, -np.inf)
    forced[:, 4] = scores[:, 4]
    np.testing.assert_array_equal(_np(ForceTokens({1: 4})(1, _as(kind, scores))), forced)


@pytest.mark.parametrize("kind", KINDS)
def test_occurrence_penalty_state_lives_with_the_scores_and_equals_the_reference(kind: str) -> None:
    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((3, 300))).astype(np.float32)
    weights = {t: 0.3 for t in range(50)}
    pen = OccurrencePenalty(presence=0.2, frequency=0.5, decay=0.97, weights=weights)
    pen.reset([[0]] * 3)
    history: list[list[int]] = [[], [], []]
    x = _as(kind, scores)
    for step in range(25):
        got = pen(step, x)
        np.testing.assert_allclose(_np(got), ref_penalty(0.2, 0.5, 0.97, weights, history, scores), rtol=1e-5,
                                   atol=1e-5)
        toks = rng.integers(0, 300 if step else 60, size=3)
        pen.update(_as(kind, toks) if kind != "numpy" and step % 2 else [int(t) for t in toks])
        for r in range(3):
            history[r].append(int(toks[r]))
    if kind != "numpy":
        assert isinstance(pen._occ, torch.Tensor) and pen._occ.device == x.device  # no host round trip
    assert pen.occurrences(0).keys() == set(history[0])


# -- the draw ----------------------------------------------------------------------------------
def test_counter_uniforms_are_the_same_bits_in_numpy_and_torch() -> None:
    seeds = [0, 1, 7, 2**32 - 1, 2**40 + 3, 2**70 + 11]
    words = np.array([seed_words(s) for s in seeds], dtype=np.int64)
    counters = np.array([0, 1, 2, 3, 2**33, 99], dtype=np.int64)
    a = counter_uniforms(words[:, 0], words[:, 1], counters)
    b = counter_uniforms(torch.from_numpy(words[:, 0]), torch.from_numpy(words[:, 1]), torch.from_numpy(counters))
    np.testing.assert_array_equal(a, b.numpy())
    assert a.dtype == np.float64 and (a >= 0).all() and (a < 1).all() and len(set(a.tolist())) == len(seeds)
    many = row_uniforms([5] * 4000, range(4000))
    assert 0.45 < many.mean() < 0.55 and abs(np.corrcoef(many[:-1], many[1:])[0, 1]) < 0.05
    assert row_uniforms([2**70 + 11], [99])[0] == a[-1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("vocab", [500, 20096])
def test_batched_draw_equals_the_per_row_draw_with_the_same_uniforms(kind: str, seed: int, vocab: int) -> None:
    scores = _random_scores(seed, rows=8, vocab=vocab)
    scores[3, :-10] = -np.inf  # a sparse row
    uniforms = np.random.default_rng(seed).random(8)
    uniforms[4] = np.nextafter(1.0, 0.0)  # the top of the range
    want = [ref_sample_row(scores[r], uniforms[r]) for r in range(8)]
    got = sample_batch(_as(kind, scores), _as(kind, uniforms))
    assert _np(got).tolist() == want and want[2] == -1
    sparse = ref_top_k(8, scores)  # every row has few finite entries: the compacted draw for a long row
    want = [ref_sample_row(sparse[r], uniforms[r]) for r in range(8)]
    assert _np(sample_batch(_as(kind, sparse), _as(kind, uniforms))).tolist() == want


@pytest.mark.parametrize("kind", KINDS)
def test_a_preset_pipeline_gives_the_reference_scores_and_tokens(kind: str) -> None:
    cfg = get_preset("default-midi")
    procs = cfg.build_processors()
    rows, vocab = 4, 20096
    procs.reset([[0]] * rows)
    rng = np.random.default_rng(1)
    history: list[list[int]] = [[] for _ in range(rows)]
    weights = {t: 0.3 for t in range(127)}
    for step in range(6):
        scores = (rng.standard_normal((rows, vocab)) * 4).astype(np.float32)
        ref = ref_penalty(0.0, cfg.frequency_penalty, cfg.penalty_decay, weights, history, scores)
        ref[:, 0] += (step - cfg.eos_bias_start) / cfg.eos_bias_scale
        ref[:, 127] -= 1.0
        ref = ref_top_k(cfg.top_k, ref_top_p(cfg.top_p, ref))
        got = procs.run(step, _as(kind, scores))
        np.testing.assert_allclose(_np(got), ref, rtol=1e-5, atol=1e-5)
        u = rng.random(rows)
        toks = _np(sample_batch(got, _as(kind, u)))
        assert toks.tolist() == [ref_sample_row(ref[r], u[r]) for r in range(rows)]
        procs.update(_as(kind, toks) if kind != "numpy" else toks)
        for r in range(rows):
            history[r].append(int(toks[r]))


class _BanAbove(LogitsProcessor):
    """A host processor (numpy only): bans ids >= limit, or everything for row ``empty``."""

    rule = "ban above"

    def __init__(self, limit: int, empty: int = -1) -> None:
        self.limit, self.empty = limit, empty

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        out[:, self.limit :] = -np.inf
        if 0 <= self.empty < out.shape[0]:
            out[self.empty] = -np.inf
        return out


def test_host_processors_get_numpy_inside_a_device_list_and_dead_ends_name_their_rule() -> None:
    x = torch.from_numpy(_random_scores(4, vocab=300))
    procs = LogitsProcessorList([TopK(50), _BanAbove(100), Temperature(0.5)])
    got = procs(0, x)
    assert isinstance(got, torch.Tensor) and torch.isinf(got[:, 100:]).all()
    with pytest.raises(RowConstraintError, match="ban above") as info:
        LogitsProcessorList([TopK(5), _BanAbove(300, empty=1)])(0, x)
    assert info.value.row == 1
    assert LogitsProcessorList([TopK(5), _BanAbove(300, empty=1)]).diagnose(0, x) == {1: "ban above", 2: "model logits"}


def test_a_mask_only_host_processor_sees_only_which_scores_are_finite() -> None:
    class BanNearBanned(_BanAbove):
        mask_only = True

        def process(self, step: int, scores: np.ndarray) -> np.ndarray:  # bans the right neighbour of a ban
            out = super().process(step, scores)
            out[:, 1:][~np.isfinite(scores[:, :-1])] = -np.inf
            return out

    scores = _random_scores(6, vocab=300)
    procs = LogitsProcessorList([TopK(40), BanNearBanned(200), Temperature(0.7)])
    want = procs.run(0, scores)
    got = procs.run(0, torch.from_numpy(scores))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


# -- the loop ----------------------------------------------------------------------------------
def _model(version: str = "7"):
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    return TorchModel.from_state_dict(random_checkpoint(version, n_layer=2, n_embd=64, seed=4))


@pytest.mark.parametrize("version", ["4", "7"])
def test_a_piece_depends_on_its_seed_prompt_and_options_only(version: str) -> None:
    model = _model(version)
    cfg = SamplingConfig(top_k=20, top_p=0.95, temperature=0.9, frequency_penalty=0.3, penalty_decay=0.99)
    prompts, seeds = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]], [11, 12, 13, 2**40]

    def run(order: list[int]) -> dict[int, list[int]]:
        res = generate(model, [prompts[i] for i in order], processors=cfg.build_processors(), max_new_tokens=24,
                       seeds=[seeds[i] for i in order], return_state=False)
        return {i: toks for i, toks in zip(order, res.tokens)}

    together = run([0, 1, 2, 3])
    assert run([3, 1, 0, 2]) == together  # other batch positions
    for i in range(4):
        assert run([i]) == {i: together[i]}  # batch size 1
    assert len({tuple(t) for t in together.values()}) == 4


def test_the_loop_on_device_tensors_gives_the_pieces_of_the_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU logits go through numpy; with the GPU branches forced they stay tensors: same pieces, same ends."""
    import rwkv_music.sampling.arrays as arrays
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    model = _model("7")
    cfg = SamplingConfig(top_k=12, top_p=0.9, frequency_penalty=0.4, penalty_decay=0.98, logit_bias=((5, -1.0),),
                         eos_bias_tokens=(0,), eos_bias_start=10.0, eos_bias_scale=5.0, stop_tokens=(0,))
    prompts = [[1, 2], [3], [4, 5, 6], [7]]

    def run() -> tuple[list, list]:
        fixed = generate(model, prompts, processors=cfg.build_processors(), max_new_tokens=30, seeds=[1, 2, 3, 4],
                         stop_tokens=(0,), return_state=False)
        items = [WorkItem(prompt=p, seed=s, max_new_tokens=20, processors=cfg.build_processors(), stop_tokens=(0,))
                 for s, p in enumerate(prompts)]
        cont = sorted(generate_continuous(model, items, batch_size=2), key=lambda r: r.index)
        return [fixed.tokens, fixed.finish_reasons], [(r.tokens, r.finish_reason) for r in cont]

    host = run()
    monkeypatch.setattr(arrays, "HOST_DEVICE_TYPES", set())
    assert run() == host
    assert {"stop", "max_tokens"} & set(host[0][1])


class _HostMask(LogitsProcessor):
    """A stateful host processor: bans the id it saw last (checks that pooled rows keep their own state)."""

    rule = "host mask"

    def reset(self, prompts: list) -> None:
        self.last = [p[-1] for p in prompts]

    def update(self, tokens: list) -> None:
        self.last = [int(t) for t in tokens]

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        out[np.arange(len(self.last)), self.last] = -np.inf
        return out


@pytest.mark.parametrize("kind", ["numpy", "torch", "gpu-branches"])
def test_pooled_per_piece_lists_give_each_piece_what_its_own_list_gives(kind: str, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """Continuous batching runs equal-setting lists as one batch: the same pieces as one list per row."""
    import importlib

    from test_sampling_fakes import FakeBackend

    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    decode_mod = importlib.import_module("rwkv_music.sampling.decode")  # (the package's `decode` is the function)

    backend = FakeBackend(vocab_size=64, torch_logits=kind != "numpy")
    cfg = SamplingConfig(top_k=12, top_p=0.9, presence_penalty=0.3, frequency_penalty=0.4, penalty_decay=0.95,
                         logit_bias=((5, -1.0),), eos_bias_tokens=(0,), eos_bias_start=6.0, eos_bias_scale=3.0,
                         min_new_tokens=3, forced_tokens=((1, 7),), temperature=0.8, stop_tokens=(0,))
    prompts = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [10], [11, 12, 13]]

    def run() -> list:
        items = [WorkItem(prompt=p, seed=s, max_new_tokens=6 + 2 * s,
                          processors=cfg.build_processors([_HostMask()]), stop_tokens=(0,))
                 for s, p in enumerate(prompts)]
        return [(r.index, r.tokens, r.finish_reason) for r in generate_continuous(backend, items, batch_size=3)]

    pooled = run()
    monkeypatch.setattr(decode_mod, "POOLING", False)
    assert run() == pooled
    assert all(toks[1] == 7 for _, toks, _ in pooled if len(toks) > 1)  # the forced step of each piece


@pytest.mark.parametrize("kind", ["numpy", "gpu-branches"])
def test_a_pooled_dead_end_is_diagnosed_from_the_logits_the_model_gave(kind: str, monkeypatch: pytest.MonkeyPatch
                                                                       ) -> None:
    """A pooled step writes its rows in place, but into its own copy: a row emptied there is diagnosed from
    the model's logits and ends naming the rule that emptied it (forcing an id an earlier ban removed), as
    with one list per row; the other pieces carry on."""
    import importlib

    from test_sampling_fakes import FakeBackend

    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    decode_mod = importlib.import_module("rwkv_music.sampling.decode")
    backend = FakeBackend(vocab_size=32, torch_logits=kind != "numpy")
    doomed = SamplingConfig(top_k=8, banned_tokens=(6,), forced_tokens=((3, 6),), presence_penalty=0.2)
    fine = SamplingConfig(top_k=8, banned_tokens=(6,), forced_tokens=((3, 5),), presence_penalty=0.2)

    def run(on_constraint: str) -> list:
        items = [WorkItem(prompt=[1 + s], seed=s, max_new_tokens=6, stop_tokens=(),
                          processors=(doomed if s % 2 else fine).build_processors()) for s in range(6)]
        return sorted((r.index, r.tokens, r.finish_reason)
                      for r in generate_continuous(backend, items, batch_size=4, on_constraint=on_constraint))

    for pooling in (True, False):
        monkeypatch.setattr(decode_mod, "POOLING", pooling)
        with pytest.raises(RowConstraintError, match="force_tokens"):
            run("raise")
        ended = run("finish")
        assert [reason for _, _, reason in ended] == ["max_tokens", "constraint"] * 3
        assert all(len(toks) == 3 for _, toks, reason in ended if reason == "constraint")
        assert all(toks[3] == 5 for _, toks, reason in ended if reason == "max_tokens")


def test_the_static_buffer_step_path_gives_the_eager_pieces_and_keeps_the_state_resident() -> None:
    """What the CUDA graph path does, run eagerly on a CPU: buckets, adopted states, refills."""
    from rwkv_music.backends.torch_cuda_graph import bucket_for
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    plain, graphed = _model("7"), _model("7")
    graphed._graph_eager = True
    cfg = SamplingConfig(top_k=10, stop_tokens=(0,))
    prompts = [[1, 2], [3], [4, 5, 6], [7], [8, 9]]

    def items():
        return [WorkItem(prompt=p, seed=s, max_new_tokens=8 + 3 * s, processors=cfg.build_processors(),
                         stop_tokens=(0,)) for s, p in enumerate(prompts)]

    want = sorted(generate_continuous(plain, items(), batch_size=3, return_state=True), key=lambda r: r.index)
    got = sorted(generate_continuous(graphed, items(), batch_size=3, return_state=True), key=lambda r: r.index)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    for a, b in zip(got, want):
        for name, t in a.state.tensors.items():
            assert torch.allclose(t, b.state.tensors[name], atol=1e-5), name
    assert set(graphed._graph_steps.decoders) <= {bucket_for(n) for n in (1, 2, 3)}
    # a state stepped twice stays in the buffers; a second state taking them over gets its own memory first
    state = graphed.new_state(3)
    graphed.forward([[1], [2], [3]], state, inplace=True)
    dec = graphed._graph_steps.decoders[4]
    assert dec.holds(state, 3)
    before = {k: v.clone() for k, v in state.tensors.items()}
    other = graphed.new_state(4)  # the same bucket
    logits, same = graphed.forward([[4], [5], [6], [7]], other, inplace=True)
    assert same is other and dec.holds(other, 4) and not dec.holds(state, 3)
    for name, t in state.tensors.items():
        assert torch.equal(t, before[name]), name
    want_logits, _ = plain.forward([[4], [5], [6], [7]], plain.new_state(4))
    assert torch.allclose(logits, want_logits, atol=1e-5)


def test_a_failed_capture_falls_back_to_eager_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.backends.torch_cuda_graph as tcg

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    model, plain = _model("7"), _model("7")
    model._graph_eager = True
    monkeypatch.setattr(tcg.GraphDecoder, "__init__", refuse)
    state, want_state = model.new_state(2), plain.new_state(2)
    for tok in ([[1], [2]], [[3], [4]]):
        got, _ = model.forward(tok, state, inplace=True)
        want, want_state = plain.forward(tok, want_state)
        assert torch.allclose(got, want, atol=1e-6)
    assert "stream is capturing" in model._graph_steps.failed and not model._graph_steps.decoders


def test_cuda_graph_option_is_off_on_a_cpu_and_can_be_turned_off() -> None:
    model = _model("7")
    assert model.cuda_graph and model._graphs() is None  # a CPU model decodes eagerly
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    off = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=64), cuda_graph=False)
    assert off.cuda_graph is False and off._graphs() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("version", ["4", "7"])
def test_cuda_decode_through_graphs_equals_eager_cuda(version: str) -> None:
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    sd = random_checkpoint(version, n_layer=2, n_embd=64, seed=4)
    graphed = TorchModel.from_state_dict(sd, device="cuda")
    eager = TorchModel.from_state_dict(sd, device="cuda", cuda_graph=False)
    cfg = SamplingConfig(top_k=10, top_p=0.9, frequency_penalty=0.2)
    kw = dict(max_new_tokens=32, seeds=[1, 2, 3], return_state=False)
    a = generate(graphed, [[1, 2], [3], [4, 5]], processors=cfg.build_processors(), **kw)
    b = generate(eager, [[1, 2], [3], [4, 5]], processors=cfg.build_processors(), **kw)
    steps = graphed._graph_steps
    assert steps is not None and steps.failed is None and steps.decoders, getattr(steps, "failed", None)
    same = sum(x == y for x, y in zip(a.tokens, b.tokens))
    assert same >= 2  # fp32 graph replay equals eager up to rounding; a rare flip may change one row
