"""ncnn graphs agree with the torch backend (fp32), and stay close in fp16 and int8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
from ncnn_support import (
    ALL_VERSIONS,
    DECODE_STEPS,
    FP16_TOL,
    FP32_TOL,
    INT8_TOL,
    INT8_TOP1,
    PROMPT_LEN,
    export_cached,
    max_state_diff,
    prompt_then_decode,
    tokens,
)

if TYPE_CHECKING:
    from rwkv_music.model.state import State


@pytest.fixture(scope="module")
def torch_reference(
    checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> Callable[[str, int], tuple[np.ndarray, np.ndarray, State]]:
    """Torch-backend logits and final states per (version, batch), computed once."""
    import rwkv_music

    cache: dict = {}

    def get(version: str, batch: int):
        require_version(version)
        if (version, batch) not in cache:
            model = rwkv_music.load_model(checkpoint_path(version))
            toks = tokens(batch, PROMPT_LEN + DECODE_STEPS, seed=10 + batch)
            cache[version, batch] = (toks, *prompt_then_decode(model, toks))
        return cache[version, batch]

    return get


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ncnn_fp32_matches_torch_backend_prompt_then_decode(
    version: str,
    batch: int,
    checkpoint_path: Callable[..., Path],
    torch_reference: Callable[[str, int], tuple[np.ndarray, np.ndarray, State]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import rwkv_music

    toks, ref_logits, ref_state = torch_reference(version, batch)
    model = rwkv_music.load_model(export_cached(tmp_path_factory, checkpoint_path(version)), backend="ncnn",
                                  num_threads=1)
    logits, state = prompt_then_decode(model, toks)
    assert logits.shape == (batch, PROMPT_LEN + DECODE_STEPS, 128) and logits.dtype == np.float32
    assert np.abs(logits - ref_logits).max() <= FP32_TOL
    assert max_state_diff(state, ref_state) <= FP32_TOL
    assert state.batch_size == batch and not state.is_torch


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
@pytest.mark.parametrize("export_dtype,fp16", [("fp32", True), ("fp16", False), ("fp16", True)])
def test_ncnn_fp16_stays_within_tolerance(
    version: str,
    export_dtype: str,
    fp16: bool,
    checkpoint_path: Callable[..., Path],
    torch_reference: Callable[[str, int], tuple[np.ndarray, np.ndarray, State]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from rwkv_music.backends.ncnn import load

    toks, ref_logits, _ = torch_reference(version, 3)
    model = load(export_cached(tmp_path_factory, checkpoint_path(version), export_dtype), num_threads=1, fp16=fp16)
    logits, _ = prompt_then_decode(model, toks)
    diff = np.abs(logits - ref_logits).max()
    assert diff <= FP16_TOL
    assert model.fp16 == fp16 and model.storage == export_dtype and model.dtype == ("fp16" if fp16 else "fp32")


@pytest.mark.parametrize("version", ["4", "5.1", "6", "7a"])
def test_ncnn_int8_stays_near_fp32(
    version: str,
    checkpoint_path: Callable[..., Path],
    torch_reference: Callable[[str, int], tuple[np.ndarray, np.ndarray, State]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from rwkv_music.backends.ncnn import load

    toks, ref_logits, _ = torch_reference(version, 3)
    model = load(export_cached(tmp_path_factory, checkpoint_path(version), "int8"), num_threads=1)
    logits, _ = prompt_then_decode(model, toks)
    assert np.abs(logits - ref_logits).max() <= INT8_TOL
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).mean() >= INT8_TOP1
    assert model.quantization and model.quantization.startswith("int8-rows")


def test_ncnn_int8_and_fp16_files_are_smaller(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    ckpt = checkpoint_path("5.2", n_embd=256, head_size=64, seed=3)
    sizes = {dt: export_cached(tmp_path_factory, ckpt, dt).with_suffix(".bin").stat().st_size
             for dt in ("fp32", "fp16", "int8")}
    assert sizes["fp16"] < 0.55 * sizes["fp32"]
    assert sizes["int8"] < 0.32 * sizes["fp32"]


def test_ncnn_rows_of_a_batch_are_independent(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load

    model = load(export_cached(tmp_path_factory, checkpoint_path("7")), threads=1)  # the onnx backend's name
    assert model.num_threads == 1
    toks = tokens(3, 6, seed=5)
    batch_logits, batch_state = model.forward(toks, all_logits=True)
    for row in range(3):
        logits, state = model.forward(toks[row : row + 1], all_logits=True)
        assert np.abs(logits[0] - batch_logits[row]).max() <= 1e-5
        assert max_state_diff(state, batch_state[row]) <= 1e-5


def test_ncnn_forward_leaves_the_input_state_unchanged(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load

    model = load(export_cached(tmp_path_factory, checkpoint_path("4")), num_threads=1)
    _, state = model.forward([[1, 2, 3]])
    before = state.copy()
    _, after = model.forward([[4]], state)
    assert max_state_diff(state, before) == 0.0
    assert max_state_diff(after, before) > 0.0
    assert model.new_state(2).tensors["att_p"].min() == pytest.approx(-1e30)


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_ncnn_continues_a_torch_state_like_torch(
    version: str,
    checkpoint_path: Callable[..., Path],
    require_version: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_version(version)
    import rwkv_music

    ckpt = checkpoint_path(version)
    torch_model = rwkv_music.load_model(ckpt)
    ncnn_model = rwkv_music.load_model(export_cached(tmp_path_factory, ckpt), backend="ncnn", num_threads=1)
    toks = tokens(2, 10, seed=7)
    _, torch_state = torch_model.forward(toks[:, :6])
    want, want_state = torch_model.forward(toks[:, 6:], torch_state)
    got, got_state = ncnn_model.forward(toks[:, 6:], torch_state)  # a torch State goes straight in
    assert np.abs(got - want.numpy()).max() <= FP32_TOL
    assert max_state_diff(got_state, want_state) <= FP32_TOL
    more = tokens(2, 3, seed=8)
    back, _ = torch_model.forward(more, got_state)  # and the ncnn State goes back
    again, _ = ncnn_model.forward(more, got_state)
    assert np.abs(back.numpy() - again).max() <= FP32_TOL
