"""The torch runtime against the reference `rwkv` package, and against itself.

Every version runs random 2-layer checkpoints in the exact BlinkDL key layout.  The pip
package is the oracle for logits and states (fp32); batching, sequence/step equivalence and
the low-precision dtypes are checked against our own fp32 single-row runs.

Low-precision tolerance: max |logit difference| to fp32 over a 24-token prompt and 8 steps.
Measured on random 2-layer checkpoints (logit scale 4–11), all versions: bf16 0.06–0.13,
fp16 0.006–0.022 (width 128 / vocab 20096 at the top of each range).  Asserted bounds leave
about 2x headroom over the width-64 values: bf16 0.25, fp16 0.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
import torch

from rwkv_music.backends.torch import load

if TYPE_CHECKING:
    from conftest import OracleCase, PipOracle

    from rwkv_music.model.state import State

ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
# (vocab, width, head size): the small ABC-like shape and the MIDI vocabulary with head size 64
SHAPES = {"small": (128, 64, 32), "midi": (20096, 128, 64)}
PROMPT = tuple(int(t) for t in np.random.default_rng(7).integers(0, 128, size=80))  # > one 64-token chunk
STEPS = tuple(int(t) for t in np.random.default_rng(8).integers(0, 128, size=16))
FP32_TOL = 1e-4  # max abs logit / state difference to the pip package (fp32)
LOW_PRECISION_TOL = {"bf16": 0.25, "fp16": 0.05}


def _compare_state(ours: State, theirs: dict, prefix: str, tol: float) -> None:
    for name, t in ours.tensors.items():
        a = t[:, 0].float().numpy()
        b = theirs[prefix + name]
        assert a.shape == b.shape, name
        if name == "att_p":  # v4 running max: -1e30 sentinels and huge magnitudes compare where finite
            keep = np.isfinite(b) & (b > -1e29)
            a, b = a[keep], b[keep]
        scale = max(1.0, float(np.abs(b).max())) if name in ("att_a", "att_b") else 1.0
        assert np.abs(a - b).max() <= tol * scale, f"{name}: max diff {np.abs(a - b).max()}"


@pytest.fixture(scope="module")
def oracle_results(
    checkpoint_path: Callable[..., Path], pip_oracle: PipOracle
) -> dict[tuple[str, str], tuple[OracleCase, dict[str, np.ndarray]]]:
    """Run the pip package once for every available version and shape (3 parallel subprocesses)."""
    from rwkv_music.model.registry import available_versions

    present = available_versions()
    cases = {}
    for version in ALL_VERSIONS:
        if version not in present:
            continue
        for shape, (V, C, N) in SHAPES.items():
            path = checkpoint_path(version, vocab_size=V, n_embd=C, head_size=N)
            prompt = tuple(t % V for t in PROMPT)
            cases[(version, shape)] = pip_oracle.Case(path, version, prompt, STEPS)
    if "6" in present:
        path = checkpoint_path("6", time_state_std=0.3)  # state-tuning tensors in every block
        cases[("6", "time_state")] = pip_oracle.Case(path, "6", PROMPT[:20], STEPS[:4])
    results = pip_oracle.run(list(cases.values()))
    return {key: (case, res) for (key, case), res in zip(cases.items(), results)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_logits_and_state_match_pip_package(
    version: str,
    shape: str,
    oracle_results: dict[tuple[str, str], tuple[OracleCase, dict[str, np.ndarray]]],
    require_version: Callable[[str], None],
) -> None:
    require_version(version)
    case, ref = oracle_results[(version, shape)]
    model = load(case.path)
    logits, state = model.forward([list(case.prompt)], all_logits=True)
    assert logits.dtype == torch.float32
    assert np.abs(logits[0].numpy() - ref["prompt_logits"]).max() <= FP32_TOL
    _compare_state(state, ref, "prompt_state_", FP32_TOL)
    steps = []
    for tok in case.steps:
        out, state = model.forward([[tok]], state)
        steps.append(out[0].numpy())
    assert np.abs(np.stack(steps) - ref["step_logits"]).max() <= FP32_TOL
    _compare_state(state, ref, "state_", FP32_TOL)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_batched_rows_equal_separate_runs(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> None:
    require_version(version)
    model = load(checkpoint_path(version))
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, 128, size=(4, 12))
    logits, state = model.forward(prompts)
    nxt = rng.integers(0, 128, size=(4, 1))
    step_logits, step_state = model.forward(nxt, state)
    for b in range(4):
        one, s1 = model.forward(prompts[b : b + 1])
        torch.testing.assert_close(logits[b : b + 1], one, rtol=1e-5, atol=1e-5)
        one, s1 = model.forward(nxt[b : b + 1], s1)
        torch.testing.assert_close(step_logits[b : b + 1], one, rtol=1e-5, atol=1e-5)
        for name, t in step_state.select(b).tensors.items():
            torch.testing.assert_close(t, s1.tensors[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_sequence_equals_split_calls_and_single_steps(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> None:
    require_version(version)
    model = load(checkpoint_path(version))
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, 128, size=70)]
    whole, s_whole = model.forward([tokens], all_logits=True)
    first, s = model.forward([tokens[:-1]])
    last, s_split = model.forward([tokens[-1:]], s)
    torch.testing.assert_close(last, whole[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first, whole[:, -2], rtol=1e-5, atol=1e-5)
    s = model.new_state(1)
    stepped = []
    for tok in tokens:
        out, s = model.forward([[tok]], s)
        stepped.append(out)
    torch.testing.assert_close(torch.stack(stepped, 1), whole, rtol=1e-5, atol=2e-5)
    for name, t in s_whole.tensors.items():
        torch.testing.assert_close(s_split.tensors[name], t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.tensors[name], t, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_low_precision_logits_close_to_fp32(
    version: str, dtype: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> None:
    require_version(version)
    path = checkpoint_path(version)
    ref, low = load(path), load(path, dtype=dtype)
    tokens = [list(PROMPT[:24])]
    a, sa = ref.forward(tokens)
    b, sb = low.forward(tokens)
    assert b.dtype == torch.float32 and sb.tensors["att_x"].dtype == low.dtype
    worst = float((a - b).abs().max())
    for tok in STEPS[:8]:
        a, sa = ref.forward([[tok]], sa)
        b, sb = low.forward([[tok]], sb)
        worst = max(worst, float((a - b).abs().max()))
    assert worst <= LOW_PRECISION_TOL[dtype]


def test_v5_strong_decay_chunks_match_single_steps(checkpoint_path: Callable[..., Path]) -> None:
    """Strong decays force short prefill chunks (and clamped factors); results must not change."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    sd = random_checkpoint("5.2", n_embd=64, head_size=32)
    sd["blocks.0.att.time_decay"][0, :4] = torch.tensor([2.5, 4.0, 4.5, 1.0])  # log w down to -90
    model = TorchModel.from_state_dict(sd)
    assert model._weights.layers[0].chunk < 64  # the clamp/short-chunk path is exercised
    tokens = [int(t) for t in np.random.default_rng(3).integers(0, 128, size=40)]
    whole, s_whole = model.forward([tokens], all_logits=True)
    assert torch.isfinite(whole).all()
    s = model.new_state(1)
    for t, tok in enumerate(tokens):
        out, s = model.forward([[tok]], s)
        torch.testing.assert_close(out, whole[:, t], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(s.tensors["att_kv"], s_whole.tensors["att_kv"], rtol=1e-5, atol=2e-5)


def test_v6_time_state_is_the_initial_state_like_pip(
    oracle_results: dict[tuple[str, str], tuple[OracleCase, dict[str, np.ndarray]]],
    require_version: Callable[[str], None],
) -> None:
    require_version("6")
    case, ref = oracle_results[("6", "time_state")]
    sd = torch.load(case.path, map_location="cpu", weights_only=True)
    tuned = torch.stack([sd[f"blocks.{i}.att.time_state"] for i in range(2)])  # [L, H, value, key]
    model = load(case.path)
    fresh = model.new_state(2)
    for row in range(2):  # every row starts from the tuned state, in the S[key, value] layout
        torch.testing.assert_close(fresh.tensors["att_kv"][:, row], tuned.transpose(-1, -2))
    logits, state = model.forward([list(case.prompt)], all_logits=True)
    assert np.abs(logits[0].numpy() - ref["prompt_logits"]).max() <= FP32_TOL
    _compare_state(state, ref, "prompt_state_", FP32_TOL)
    for tok in case.steps:
        out, state = model.forward([[tok]], state)
    assert np.abs(out[0].numpy() - ref["step_logits"][-1]).max() <= FP32_TOL
