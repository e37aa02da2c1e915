"""onnxruntime graphs agree with the rwkv package, the torch backend, and themselves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
from onnx_support import ALL_VERSIONS, FP16_TOL, FP32_TOL, as_numpy, export_cached, max_state_diff, tokens

if TYPE_CHECKING:
    from conftest import PipOracle

    from rwkv_music.backends.base import Backend
    from rwkv_music.model.state import State

PROMPT_LEN, DECODE_STEPS = 8, 16


def _prompt_then_decode(model: Backend, toks: np.ndarray, state: State | None = None):
    """Any backend: prompt toks[:, :PROMPT_LEN] in one call, then one token per call; logits per call."""
    logits, state = model.forward(toks[:, :PROMPT_LEN], state)
    out = [as_numpy(logits)]
    for t in range(PROMPT_LEN, toks.shape[1]):
        logits, state = model.forward(toks[:, t : t + 1], state)
        out.append(as_numpy(logits))
    return np.stack(out, axis=1), state


@pytest.fixture(scope="module")
def pip_reference(
    checkpoint_path: Callable[..., Path], pip_oracle: PipOracle
) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """The rwkv package's logits and states for every version (one subprocess per family)."""
    toks = tokens(1, PROMPT_LEN + DECODE_STEPS, seed=1)
    prompt, steps = tuple(toks[0, :PROMPT_LEN].tolist()), tuple(toks[0, PROMPT_LEN:].tolist())
    cases = [pip_oracle.Case(checkpoint_path(v), v, prompt, steps) for v in ALL_VERSIONS]
    return toks, dict(zip(ALL_VERSIONS, pip_oracle.run(cases)))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_onnx_fp32_matches_rwkv_package(
    version: str,
    checkpoint_path: Callable[..., Path],
    pip_reference: tuple[np.ndarray, dict[str, dict[str, np.ndarray]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from rwkv_music.backends.onnx import load

    toks, refs = pip_reference
    ref = refs[version]
    model = load(export_cached(tmp_path_factory, checkpoint_path(version)), threads=1)
    prompt_logits, state = model.forward(toks[:, :PROMPT_LEN], all_logits=True)
    assert np.abs(prompt_logits[0] - ref["prompt_logits"]).max() <= FP32_TOL
    step_logits = []
    for t in toks[0, PROMPT_LEN:]:
        logits, state = model.forward([[int(t)]], state)
        step_logits.append(logits[0])
    assert np.abs(np.stack(step_logits) - ref["step_logits"]).max() <= FP32_TOL
    for name, arr in state.tensors.items():
        scale = max(1.0, np.abs(ref["state_" + name]).max())
        assert np.abs(arr[:, 0] - ref["state_" + name]).max() <= FP32_TOL * scale, name


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_onnx_fp32_matches_torch_backend_prompt_then_decode(
    version: str,
    batch: int,
    checkpoint_path: Callable[..., Path],
    require_version: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_version(version)
    import rwkv_music

    ckpt = checkpoint_path(version)
    onnx_model = rwkv_music.load_model(export_cached(tmp_path_factory, ckpt), backend="onnx", threads=1)
    torch_model = rwkv_music.load_model(ckpt)
    toks = tokens(batch, PROMPT_LEN + DECODE_STEPS, seed=2 + batch)
    got, got_state = _prompt_then_decode(onnx_model, toks)
    want, want_state = _prompt_then_decode(torch_model, toks)
    assert got.shape == (batch, 1 + DECODE_STEPS, 128)
    assert np.abs(got - want).max() <= FP32_TOL
    assert max_state_diff(got_state, want_state) <= FP32_TOL * 10  # v4's aa/bb/pp grow to O(10)


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_onnx_fp16_graph_stays_close_to_fp32(
    version: str, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.onnx import load

    ckpt = checkpoint_path(version)
    f32 = load(export_cached(tmp_path_factory, ckpt), threads=1)
    f16 = load(export_cached(tmp_path_factory, ckpt, "fp16"), threads=1)
    toks = tokens(2, PROMPT_LEN + DECODE_STEPS, seed=5)
    want, _ = _prompt_then_decode(f32, toks)
    got, state = _prompt_then_decode(f16, toks)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= FP16_TOL
    kv = [n for n in state.tensors if n not in ("att_x", "ffn_x")]
    assert all(state.tensors[n].dtype == np.float32 for n in kv)  # the WKV state stays fp32
    assert state.tensors["att_x"].dtype == np.float16


@pytest.mark.parametrize("version", ["4", "5.0", "6", "7a"])
def test_onnx_sequence_mode_equals_one_token_at_a_time(
    version: str, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.onnx import load

    model = load(export_cached(tmp_path_factory, checkpoint_path(version)), threads=1)
    toks = tokens(2, 12, seed=7)
    all_logits, seq_state = model.forward(toks, all_logits=True)
    last, _ = model.forward(toks)
    state, stepwise = None, []
    for t in range(toks.shape[1]):
        logits, state = model.forward(toks[:, t : t + 1], state)
        stepwise.append(logits)
    assert all_logits.shape == (2, 12, 128)
    assert np.abs(all_logits - np.stack(stepwise, axis=1)).max() <= FP32_TOL
    assert np.abs(all_logits[:, -1] - last).max() == 0.0
    assert max_state_diff(seq_state, state) <= FP32_TOL * 10


@pytest.mark.parametrize("version", ["4", "5.2", "7"])
def test_states_move_between_torch_and_onnx_backends(
    version: str,
    checkpoint_path: Callable[..., Path],
    require_version: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_version(version)
    import rwkv_music

    ckpt = checkpoint_path(version)
    onnx_model = rwkv_music.load_model(export_cached(tmp_path_factory, ckpt), backend="onnx", threads=1)
    torch_model = rwkv_music.load_model(ckpt)
    toks = tokens(2, 10, seed=11)
    _, torch_state = torch_model.forward(toks[:, :6])
    _, onnx_state = onnx_model.forward(toks[:, :6])
    from_torch, _ = onnx_model.forward(toks[:, 6:], torch_state)  # a torch State fed to onnx
    from_onnx, _ = torch_model.forward(toks[:, 6:], onnx_state)  # a numpy State fed to torch
    want, _ = torch_model.forward(toks[:, 6:], torch_state)
    assert np.abs(from_torch - as_numpy(want)).max() <= FP32_TOL
    assert np.abs(as_numpy(from_onnx) - as_numpy(want)).max() <= FP32_TOL


def test_v6_time_state_becomes_the_onnx_initial_state(tmp_path: Path, require_version: Callable[[str], None]) -> None:
    require_version("6")
    import torch

    import rwkv_music
    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.model.factory import random_checkpoint

    sd = random_checkpoint("6", seed=3)
    gen = torch.Generator().manual_seed(4)
    for i in range(2):
        sd[f"blocks.{i}.att.time_state"] = torch.randn(2, 32, 32, generator=gen) * 0.1
    ckpt = tmp_path / "tuned.pth"
    torch.save(sd, ckpt)
    model = load(export(ckpt, tmp_path / "tuned.onnx"), threads=1)
    start = model.new_state(2)
    # S[key, value]
    assert np.allclose(start.tensors["att_kv"][1, 1], sd["blocks.1.att.time_state"].numpy().transpose(0, 2, 1))
    toks = tokens(2, 5, seed=12)
    got, _ = model.forward(toks)
    want, _ = rwkv_music.load_model(ckpt).forward(toks)
    assert np.abs(got - as_numpy(want)).max() <= FP32_TOL
