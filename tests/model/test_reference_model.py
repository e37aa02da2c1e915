"""The float64 reference model (rwkv_music.model.reference) is the spec every other path is held to.

(a) it agrees with the `rwkv` pip package; (b) the torch fast paths agree with it (prefill and
single steps, with and without in-place state); (c) so do the exported ONNX and ncnn graphs;
(d) so does the training model (v7).  Random 2-layer checkpoints in the BlinkDL layout.

Tolerances: the reference is float64, every other path fp32.  Measured max |logit or state
difference| on these models: pip 6e-6, torch 8e-6, ONNX 5e-6, ncnn 4e-6, training model 6e-6.
The asserted 1e-4 leaves headroom for other CPUs and still catches a formula slip (those move
logits by 1e-2 or more).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from rwkv_music.model.detect import config_from_state_dict
from rwkv_music.model.reference import reference_forward
from rwkv_music.model.state import V4_INIT_P, State

ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
TOL = 1e-4
PROMPT = tuple(int(t) for t in np.random.default_rng(21).integers(0, 128, size=70))  # > one chunk of every path
STEPS = tuple(int(t) for t in np.random.default_rng(22).integers(0, 128, size=6))
WIDE = {"n_embd": 128, "head_size": 64}  # the fast-path cases: 2 heads of 64, as released models use


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_sd(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(checkpoint_path: Callable[..., Path]) -> Callable[..., tuple]:
    """(version, prompt, steps, checkpoint kwargs) → (path, prompt logits [T, V], state after the prompt,
    step logits [S, V], final state), computed once per module."""
    cache: dict = {}

    def get(version: str, prompt: tuple[int, ...] = PROMPT, steps: tuple[int, ...] = STEPS, **kw: Any) -> tuple:
        key = (version, prompt, steps, tuple(sorted(kw.items())))
        if key not in cache:
            path = checkpoint_path(version, **kw)
            sd = _load_sd(path)
            config = config_from_state_dict(sd)
            prompt_logits, after_prompt = reference_forward(sd, config, prompt)
            step_logits, final = reference_forward(sd, config, steps, after_prompt)
            cache[key] = (path, prompt_logits, after_prompt, step_logits, final)
        return cache[key]

    return get


def _state_diff(ours: State, ref: State) -> float:
    """Largest difference over all state tensors of row 0; v4's sums compare relative to their size."""
    ours = ours.numpy()
    worst = 0.0
    for name, t in ref.tensors.items():
        a, b = np.asarray(ours.tensors[name][:, 0], np.float64), t[:, 0].numpy()
        assert a.shape == b.shape, name
        if name == "att_p":  # running max: -1e30 sentinels compare exactly, the rest by value
            assert np.array_equal(a <= V4_INIT_P / 10, b <= V4_INIT_P / 10)
            keep = b > V4_INIT_P / 10
            a, b = a[keep], b[keep]
        scale = max(1.0, float(np.abs(b).max())) if name in ("att_a", "att_b") else 1.0
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def _max_diff(a: Any, b: Any) -> float:
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# -- (a) the reference against the rwkv pip package ---------------------------------------------

@pytest.fixture(scope="module")
def pip_results(checkpoint_path: Callable[..., Path], pip_oracle: Any) -> dict[str, tuple]:
    prompt, steps = PROMPT[:24], STEPS
    cases = {v: pip_oracle.Case(checkpoint_path(v), v, prompt, steps) for v in ALL_VERSIONS}
    cases["6-time-state"] = pip_oracle.Case(checkpoint_path("6", time_state_std=0.3), "6", prompt, steps)
    return dict(zip(cases, zip(cases.values(), pip_oracle.run(list(cases.values())))))


@pytest.mark.parametrize("case", [*ALL_VERSIONS, "6-time-state"])
def test_reference_matches_pip_package(case: str, pip_results: dict[str, tuple]) -> None:
    oracle_case, pip = pip_results[case]
    sd = _load_sd(oracle_case.path)
    logits, state = reference_forward(sd, None, oracle_case.prompt)
    assert logits.dtype == torch.float64 and logits.shape == pip["prompt_logits"].shape
    assert _max_diff(logits, pip["prompt_logits"]) <= TOL
    pip_state = State(state.version, {n: torch.from_numpy(pip["prompt_state_" + n][:, None]).double()
                                      for n in state.tensors})
    assert _state_diff(state, pip_state) <= TOL
    steps, state = reference_forward(sd, None, oracle_case.steps, state)
    assert _max_diff(steps, pip["step_logits"]) <= TOL
    pip_state = State(state.version, {n: torch.from_numpy(pip["state_" + n][:, None]).double()
                                      for n in state.tensors})
    assert _state_diff(state, pip_state) <= TOL


def test_reference_continues_from_a_state_like_one_call(checkpoint_path: Callable[..., Path]) -> None:
    sd = _load_sd(checkpoint_path("7"))
    whole, s_whole = reference_forward(sd, None, PROMPT[:12])
    first, s = reference_forward(sd, None, PROMPT[:5])
    rest, s = reference_forward(sd, None, PROMPT[5:12], s)
    assert torch.equal(torch.cat([first, rest]), whole)
    assert all(torch.equal(s.tensors[n], t) for n, t in s_whole.tensors.items())


def test_reference_input_state_is_not_modified(checkpoint_path: Callable[..., Path]) -> None:
    sd = _load_sd(checkpoint_path("5.2"))
    _, s = reference_forward(sd, None, PROMPT[:4])
    before = {n: t.clone() for n, t in s.tensors.items()}
    reference_forward(sd, None, PROMPT[4:8], s)
    assert all(torch.equal(s.tensors[n], t) for n, t in before.items())


# -- (b) the torch fast paths against the reference ----------------------------------------------

@pytest.mark.parametrize("inplace", [False, True], ids=["new-state", "inplace"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_torch_fast_path_matches_reference(version: str, inplace: bool, reference: Callable[..., tuple],
                                           require_version: Callable[[str], None]) -> None:
    require_version(version)
    import rwkv_music

    path, ref_prompt, ref_after, ref_steps, ref_final = reference(version, **WIDE)
    model = rwkv_music.load_model(path)
    state = model.new_state(1)
    logits, out = model.forward([list(PROMPT)], state, all_logits=True, inplace=inplace)  # prefill
    assert (out is state) == inplace
    assert _max_diff(logits[0], ref_prompt) <= TOL
    assert _state_diff(out, ref_after) <= TOL
    state = out
    for j, tok in enumerate(STEPS):  # single-token decode
        logits, out = model.forward([[tok]], state, inplace=inplace)
        assert (out is state) == inplace
        assert _max_diff(logits[0], ref_steps[j]) <= TOL
        state = out
    assert _state_diff(state, ref_final) <= TOL


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_torch_fast_path_from_a_reference_state(version: str, reference: Callable[..., tuple],
                                                require_version: Callable[[str], None]) -> None:
    """A state the reference wrote (float64) is a valid starting point for the fast path."""
    require_version(version)
    import rwkv_music

    path, _, ref_after, ref_steps, _ = reference(version, **WIDE)
    model = rwkv_music.load_model(path)
    logits, _ = model.forward([list(STEPS)], ref_after.torch("cpu", torch.float32), all_logits=True)
    assert _max_diff(logits[0], ref_steps) <= TOL


# -- (c) the exported ONNX and ncnn graphs against the reference ---------------------------------

EXPORT_PROMPT = PROMPT[:10]


def _export(backend: str, tmp_path_factory: pytest.TempPathFactory, path: Path) -> Any:
    """``path`` exported once per session and loaded in ``backend`` ("onnx" or "ncnn"), one thread."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        from onnx_support import export_cached

        from rwkv_music.backends.onnx import load

        return load(export_cached(tmp_path_factory, path), threads=1)
    pytest.importorskip("ncnn")
    from ncnn_support import export_cached

    from rwkv_music.backends.ncnn import load

    return load(export_cached(tmp_path_factory, path), num_threads=1)


@pytest.mark.parametrize("backend", ["onnx", "ncnn"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_exported_graph_matches_reference(version: str, backend: str, reference: Callable[..., tuple],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    path, ref_prompt, ref_after, ref_steps, ref_final = reference(version, EXPORT_PROMPT, STEPS[:3])
    model = _export(backend, tmp_path_factory, path)
    logits, state = model.forward([list(EXPORT_PROMPT)], all_logits=True)
    assert _max_diff(logits[0], ref_prompt) <= TOL
    assert _state_diff(state, ref_after) <= TOL
    for j, tok in enumerate(STEPS[:3]):
        logits, state = model.forward([[tok]], state)
        assert _max_diff(logits[0], ref_steps[j]) <= TOL
    assert _state_diff(state, ref_final) <= TOL


# -- (d) the training model against the reference (v7) -------------------------------------------

@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "per-token"])
def test_training_model_matches_reference(chunked: bool, reference: Callable[..., tuple]) -> None:
    from rwkv_music.train.model_v7 import RWKV7

    path, ref_prompt, ref_after, ref_steps, _ = reference("7", **WIDE)
    sd = _load_sd(path)
    model = RWKV7(config_from_state_dict(sd))
    model.load_state_dict(sd)  # the training model's state_dict is the BlinkDL layout itself
    with torch.no_grad():
        logits, state = model(torch.tensor([list(PROMPT)]), chunked=chunked)
        assert _max_diff(logits[0], ref_prompt) <= TOL
        att_x, kv, ffn_x = (torch.stack(t) for t in zip(*state))  # per layer → [L, B, ...]
        assert _state_diff(State("7", {"att_x": att_x, "att_kv": kv, "ffn_x": ffn_x}), ref_after) <= TOL
        logits, _ = model(torch.tensor([list(STEPS)]), state, chunked=chunked)
        assert _max_diff(logits[0], ref_steps) <= TOL
