"""Chunked (parallel) prefill equals token-by-token decoding and the float64 reference (issue 16 item 4).

Every version's ``T > 1`` forward runs its WKV chunk-parallel (v4: ``wkv_chunked_v4``; v5: factored
per-chunk decays; v6: exact exponent grid; v7: ``wkv7``).  Here prefill of T = 1..300 tokens must
give the logits and the state of T single-token steps and of the reference, in fp32, on tiny random
models whose decays are pushed to the extremes (near 1 and far below e^-1000 per token), and the
v4 chunked WKV itself must agree with the sequential scan on hostile inputs.
"""

from __future__ import annotations

import pytest
import torch

from rwkv_music.backends.torch import TorchModel
from rwkv_music.model import v4 as v4_module
from rwkv_music.model.factory import random_checkpoint
from rwkv_music.model.reference import reference_forward
from rwkv_music.model.wkv_chunked_v4 import wkv4_chunked

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
LENGTHS = (1, 2, 15, 16, 17, 33, 100, 300)
DECAY_KEYS = ("att.time_decay", "att.w0")  # v4-v6 time_decay, v7 w0 (the base of its decay)


def extreme_checkpoint(version: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A random checkpoint whose decays span from almost none to e^-8000 per token (v4-v6).

    v4-v6 store ``time_decay`` with w = exp(-exp(time_decay)): values from -9 (w ≈ 1 - 1e-4) to 9
    (log w ≈ -8100); v7 bounds w by construction, so its ``w0`` spans the whole sigmoid.
    """
    sd = random_checkpoint(version, n_layer=2, n_embd=64, head_size=32, seed=seed)
    pattern = torch.tensor([-9.0, -6.0, -3.0, -1.0, 0.0, 1.0, 2.5, 4.0, 6.0, 9.0])
    for key, t in sd.items():
        if key.endswith(DECAY_KEYS):
            flat = pattern.repeat(t.numel() // pattern.numel() + 1)[: t.numel()]
            sd[key] = flat[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(seed))].reshape(t.shape)
    return sd


@pytest.fixture(autouse=True)
def chunked_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """v4 takes its chunked WKV on this CPU too (by default a CPU runs the C loop or the scan)."""
    monkeypatch.setattr(v4_module, "CHUNKED_ON_CPU", True)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[dict[str, torch.Tensor], TorchModel]]:
    """Per version: (raw checkpoint with extreme decays, model on torch's kernels: the chunked WKVs)."""
    out = {}
    for version in VERSIONS:
        sd = extreme_checkpoint(version)
        out[version] = (sd, TorchModel.from_state_dict({k: v.clone() for k, v in sd.items()}, native=False))
    return out


@pytest.fixture(scope="module")
def plain_models() -> dict[str, tuple[dict[str, torch.Tensor], TorchModel]]:
    """The same with the factory's ordinary decays (the ranges real models use)."""
    out = {}
    for version in VERSIONS:
        sd = random_checkpoint(version, n_layer=2, n_embd=64, head_size=32, seed=4)
        out[version] = (sd, TorchModel.from_state_dict({k: v.clone() for k, v in sd.items()}, native=False))
    return out


@pytest.fixture(scope="module")
def native_v4(models: dict) -> TorchModel:
    """The v4 model with the C kernels (fp32 CPU prefill: one C loop over time), where they build."""
    from rwkv_music.model import native

    if native.kernel("rwkv4_wkv_prefill", native=True) is None:
        pytest.skip(f"no C kernels here: {native.status(native=True)}")
    sd, _ = models["4"]
    return TorchModel.from_state_dict({k: v.clone() for k, v in sd.items()}, native=True)


def _tokens(T: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 128, (T,), generator=torch.Generator().manual_seed(seed + T)).tolist()


def _assert_states_close(a: dict, b: dict, atol: float, rtol: float, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].double().cpu(), b[name].double().cpu()
        assert torch.isfinite(x).all(), f"{what}: {name} not finite"
        assert torch.allclose(x, y, atol=atol, rtol=rtol), f"{what}: {name} differs by {(x - y).abs().max():.3g}"


CASES = [(v, kind) for kind in ("extreme", "plain") for v in VERSIONS] + [("4-native", "extreme")]


@pytest.mark.parametrize(("version", "kind"), CASES)
def test_prefill_equals_single_steps_and_the_reference(version: str, kind: str, request: pytest.FixtureRequest,
                                                       ) -> None:
    models = request.getfixturevalue("models" if kind == "extreme" else "plain_models")
    if version == "4-native":  # the C loop over time (fp32 CPU default)
        version, model = "4", request.getfixturevalue("native_v4")
        sd = models["4"][0]
    else:
        sd, model = models[version]
    for T in LENGTHS:
        ids = _tokens(T)
        logits, state = model.forward([ids], all_logits=True)  # one prefill call
        assert logits.shape == (1, T, 128) and torch.isfinite(logits).all()
        step_state = model.new_state(1)
        step_logits = []
        for tok in ids:  # the decode path, one token at a time
            out, step_state = model.forward([[tok]], step_state)
            step_logits.append(out[0])
        assert torch.allclose(logits[0], torch.stack(step_logits), atol=2e-4, rtol=1e-4), (version, T)
        _assert_states_close(state.tensors, step_state.tensors, 2e-4, 1e-4, f"v{version} T={T} vs steps")
        if T in (17, 300):  # the float64 specification (slow: plain per-token math)
            ref_logits, ref_state = reference_forward(sd, None, ids)
            assert torch.allclose(logits[0].double(), ref_logits, atol=2e-4, rtol=1e-4), (version, T)
            _assert_states_close(state.tensors, ref_state.tensors, 2e-4, 1e-4, f"v{version} T={T} vs reference")


@pytest.mark.parametrize("version", VERSIONS)
def test_prefill_from_a_used_state_in_pieces_equals_one_call(version: str, models: dict) -> None:
    """The state carried across calls (and chunks): 37 + 100 tokens from a non-zero start = 137 at once."""
    _, model = models[version]
    _, start = model.forward([_tokens(5, seed=9)])
    ids = _tokens(137, seed=1)
    whole, s_whole = model.forward([ids], start)
    _, s_half = model.forward([ids[:37]], start)
    parts, s_parts = model.forward([ids[37:]], s_half)
    assert torch.allclose(whole, parts, atol=2e-4, rtol=1e-4)
    _assert_states_close(s_whole.tensors, s_parts.tensors, 2e-4, 1e-4, f"v{version} pieces")


def test_batched_prefill_rows_equal_their_own_prefill(models: dict) -> None:
    _, model = models["4"]
    rows = [_tokens(40, seed=s) for s in range(3)]
    batched, state = model.forward(rows)
    for i, row in enumerate(rows):
        alone, s1 = model.forward([row])
        assert torch.allclose(batched[i], alone[0], atol=1e-4, rtol=1e-4)
        for name, t in s1.tensors.items():
            assert torch.allclose(state.tensors[name][:, i], t[:, 0], atol=1e-4, rtol=1e-4), name


def _scan64(k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor,
            w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return v4_module._wkv_scan(*(t.double() for t in (k, v, aa, bb, pp, w, u)))


@pytest.mark.parametrize("state_grid", [True, False])
@pytest.mark.parametrize("T", [1, 5, 16, 31, 64, 300])
@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_v4_chunked_wkv_matches_the_sequential_scan_on_hostile_inputs(T: int, chunk: int, state_grid: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Huge |k| (e^±40), decays from -1e-4 to -inf (fp32 exp overflow), a used state: finite and equal.

    ``state_grid``: the chunk start states from one grid, or (False) from the loop over chunks.
    """
    import rwkv_music.model.wkv_chunked_v4 as wkv_module

    monkeypatch.setattr(wkv_module, "MAX_STATE_GRID", 10**6 if state_grid else 0)
    g = torch.Generator().manual_seed(T * 7 + chunk)
    B, A = 2, 12
    k = torch.randn(B, T, A, generator=g) * 15
    v = torch.randn(B, T, A, generator=g)
    time_decay = torch.tensor([-9.0, -5, -2, 0, 1, 2, 3, 5, 8, 20, 60, 100])  # exp(100) = inf in fp32
    w = -torch.exp(time_decay)
    u = torch.randn(A, generator=g) * 5
    aa, bb, pp = torch.randn(B, A, generator=g), torch.rand(B, A, generator=g) + 0.1, torch.randn(B, A, generator=g)
    got = wkv4_chunked(k, v, aa, bb, pp, w, u, chunk=chunk)
    want = _scan64(k, v, aa, bb, pp, w.clamp(min=-1e30), u)
    for name, x, y in zip(("wkv", "aa", "bb", "pp"), got, want):
        assert torch.isfinite(x).all(), name
        assert torch.allclose(x.double(), y, atol=1e-4, rtol=1e-4), (name, float((x.double() - y).abs().max()))
    for t in (k, v, aa, bb, pp):  # inputs untouched
        assert torch.isfinite(t).all()


def test_v4_chunked_wkv_from_a_fresh_state_and_the_sequential_switch() -> None:
    """pp = -1e30 ("no past"); PREFILL_CHUNK = 0 selects the scan and gives the same prefill."""
    B, T, A = 1, 50, 8
    g = torch.Generator().manual_seed(5)
    k, v = torch.randn(B, T, A, generator=g), torch.randn(B, T, A, generator=g)
    w, u = -torch.rand(A, generator=g), torch.randn(A, generator=g)
    aa, bb, pp = torch.zeros(B, A), torch.zeros(B, A), torch.full((B, A), -1e30)
    got = wkv4_chunked(k, v, aa, bb, pp, w, u)
    want = _scan64(k, v, aa, bb, pp, w, u)
    for x, y in zip(got, want):
        assert torch.allclose(x.double(), y, atol=1e-5, rtol=1e-5)


def test_v4_sequential_switch_gives_the_same_prefill(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = models["4"]
    ids = [_tokens(70)]
    chunked, s1 = model.forward(ids, all_logits=True)
    monkeypatch.setattr(v4_module, "PREFILL_CHUNK", 0)
    scanned, s2 = model.forward(ids, all_logits=True)
    assert torch.allclose(chunked, scanned, atol=1e-3, rtol=1e-3)
    _assert_states_close(s1.tensors, s2.tensors, 1e-4, 1e-4, "scan vs chunked")


def test_v4_cpu_prefill_takes_the_c_loop_or_the_scan_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v4_module, "CHUNKED_ON_CPU", False)
    calls: list[str] = []
    for name in ("_native_prefill", "wkv4_chunked", "_wkv_scan"):
        real = getattr(v4_module, name)
        monkeypatch.setattr(v4_module, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    sd = random_checkpoint("4", n_layer=1, n_embd=32)
    TorchModel.from_state_dict(sd, native=False).forward([[1, 2, 3]])
    assert calls == ["_wkv_scan"]
    from rwkv_music.model import native

    if native.kernel("rwkv4_wkv_prefill", native=True) is not None:
        calls.clear()
        TorchModel.from_state_dict(sd, native=True).forward([[1, 2, 3]])
        assert calls == ["_native_prefill"]


def test_v7_prefill_uses_the_chunked_wkv(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.model.v7 as v7

    calls = []
    real = v7.wkv7_chunked

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(v7, "wkv7_chunked", spy)
    _, model = models["7"]
    model.forward([_tokens(40)])
    assert len(calls) == model.config.n_layer and calls[0][1] == 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_cuda_prefill_equals_cpu_prefill(version: str) -> None:
    sd = extreme_checkpoint(version)
    cpu = TorchModel.from_state_dict({k: v.clone() for k, v in sd.items()})
    gpu = TorchModel.from_state_dict(sd, device="cuda")
    ids = [_tokens(300)]
    a, sa = cpu.forward(ids)
    b, sb = gpu.forward(ids)
    assert torch.allclose(a, b.cpu(), atol=2e-4, rtol=1e-4)
    _assert_states_close(sa.tensors, sb.tensors, 2e-4, 1e-4, f"v{version} cuda vs cpu")


@pytest.mark.parametrize("T", [1, 7, 300])
def test_v4_native_prefill_kernel_matches_the_sequential_scan(T: int, native_v4: TorchModel) -> None:
    """The C loop over time (fp32 CPU prefill) on the hostile inputs above, 70 channels (a partial block)."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(T)
    B, A = 3, 70
    k, v = torch.randn(B, T, A, generator=g) * 15, torch.randn(B, T, A, generator=g)
    w = -torch.exp(torch.linspace(-9, 100, A))  # down to -inf
    u = torch.randn(A, generator=g) * 5
    aa, bb, pp = torch.randn(B, A, generator=g), torch.rand(B, A, generator=g) + 0.1, torch.randn(B, A, generator=g)
    got = v4_module._native_prefill(k, v, aa, bb, pp, SimpleNamespace(decay=w, first=u))
    want = _scan64(k, v, aa, bb, pp, w, u)
    for name, x, y in zip(("wkv", "aa", "bb", "pp"), got, want):
        assert torch.isfinite(x).all(), name
        assert torch.allclose(x.double(), y, atol=1e-4, rtol=1e-4), (name, float((x.double() - y).abs().max()))


def test_v4_native_and_chunked_prefill_agree_across_calls(native_v4: TorchModel, models: dict) -> None:
    _, chunked = models["4"]
    rows = [_tokens(90, seed=s) for s in range(2)]
    a, sa = native_v4.forward(rows, all_logits=True)
    b, sb = chunked.forward(rows, all_logits=True)
    assert torch.allclose(a, b, atol=2e-4, rtol=1e-4)
    _assert_states_close(sa.tensors, sb.tensors, 2e-4, 1e-4, "native vs chunked")
