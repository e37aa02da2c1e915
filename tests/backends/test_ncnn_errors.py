"""Bad ncnn inputs fail with one-line project errors naming the file or tensor."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from ncnn_support import export_cached

from rwkv_music.errors import BackendUnavailable, CheckpointError, OutputExistsError, StateError


@pytest.fixture()
def export_copy(checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of a v5.2 fp32 export (prefix path) that a test may damage."""
    param = export_cached(tmp_path_factory, checkpoint_path("5.2"))
    for suffix in (".param", ".bin", ".json"):
        shutil.copy(param.with_suffix(suffix), tmp_path / f"m{suffix}")
    return tmp_path / "m"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("suffix", [".param", ".bin", ".json"])
def test_missing_file_raises_checkpoint_error_naming_it(export_copy: Path, suffix: str) -> None:
    from rwkv_music.backends.ncnn import load

    export_copy.with_suffix(suffix).unlink()
    with pytest.raises(CheckpointError) as exc:
        load(export_copy)
    assert f"m{suffix}" in _one_line(exc)


def test_sidecar_of_another_export_is_rejected(
    export_copy: Path, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load

    other = export_cached(tmp_path_factory, checkpoint_path("7"))
    shutil.copy(other.with_suffix(".json"), export_copy.with_suffix(".json"))
    with pytest.raises(CheckpointError) as exc:
        load(export_copy.with_suffix(".param"))
    assert "sidecar does not match" in _one_line(exc)


def test_truncated_bin_is_rejected(export_copy: Path) -> None:
    from rwkv_music.backends.ncnn import load

    data = export_copy.with_suffix(".bin").read_bytes()
    export_copy.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load(export_copy)
    assert "m.bin" in _one_line(exc)


@pytest.mark.parametrize("damage", ["not json", "format", "config"])
def test_damaged_sidecar_is_rejected(export_copy: Path, damage: str) -> None:
    from rwkv_music.backends.ncnn import load

    side = export_copy.with_suffix(".json")
    data = json.loads(side.read_text())
    if damage == "not json":
        side.write_text("{ nope")
    elif damage == "format":
        data["format"] = "something/else"
        side.write_text(json.dumps(data))
    else:
        data["config"]["n_layer"] = 3
        side.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as exc:
        load(export_copy)
    assert "m.json" in _one_line(exc)


def test_state_of_the_wrong_shape_raises_state_error(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load
    from rwkv_music.model.state import State

    model = load(export_cached(tmp_path_factory, checkpoint_path("5.2")))
    state = model.new_state(2)
    with pytest.raises(StateError) as exc:  # batch mismatch
        model.forward([[1]], state)
    assert "batch" in _one_line(exc)
    bad = State(state.version, {**state.tensors, "att_kv": np.zeros((2, 2, 2, 16, 16), np.float32)})
    with pytest.raises(StateError) as exc:
        model.forward([[1], [2]], bad)
    assert "att_kv" in _one_line(exc)
    with pytest.raises(StateError):
        model.forward([[1]], {"att_x": 0})


def test_v7_state_is_refused_by_a_v5_model(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load

    v5 = load(export_cached(tmp_path_factory, checkpoint_path("5.2")))
    v7 = load(export_cached(tmp_path_factory, checkpoint_path("7")))
    with pytest.raises(StateError):
        v5.forward([[1]], v7.new_state(1))


def test_out_of_vocabulary_token_is_rejected(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.ncnn import load

    model = load(export_cached(tmp_path_factory, checkpoint_path("4")))
    with pytest.raises(CheckpointError) as exc:
        model.forward([[1, 128]])
    assert "128" in _one_line(exc)


def test_missing_ncnn_package_raises_backend_unavailable(export_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music

    monkeypatch.setitem(sys.modules, "ncnn", None)  # makes `import ncnn` fail
    with pytest.raises(BackendUnavailable) as exc:
        rwkv_music.load_model(export_copy.with_suffix(".param"), backend="ncnn")
    assert "ncnn" in _one_line(exc)


def test_unknown_device_and_dtype_raise_backend_unavailable(export_copy: Path) -> None:
    from rwkv_music.backends.ncnn import load

    with pytest.raises(BackendUnavailable):
        load(export_copy, device="cuda")
    with pytest.raises(BackendUnavailable):
        load(export_copy, dtype="bf16")


def test_vulkan_without_a_gpu_falls_back_to_the_cpu(export_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ncnn

    from rwkv_music.backends.ncnn import load

    monkeypatch.setattr(ncnn, "get_gpu_count", lambda: 0)
    model = load(export_copy, vulkan=True)
    assert model.device == "cpu"
    assert model.forward([[1, 2]])[0].shape == (1, 128)


def test_export_refuses_to_overwrite_without_force(export_copy: Path, checkpoint_path: Callable[..., Path]) -> None:
    from rwkv_music.backends.ncnn_export import export

    with pytest.raises(OutputExistsError):
        export(checkpoint_path("5.2"), export_copy)
    before = [export_copy.with_suffix(s).read_bytes() for s in (".param", ".bin")]
    export_copy.with_suffix(".json").unlink()
    export(checkpoint_path("5.2"), str(export_copy) + ".param", force=True)  # a .param path works as prefix
    assert [export_copy.with_suffix(s).read_bytes() for s in (".param", ".bin")] == before  # deterministic
    assert export_copy.with_suffix(".json").is_file()


def test_export_rejects_unknown_keys_and_dtypes(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    import torch

    from rwkv_music.backends.ncnn_export import export

    with pytest.raises(ValueError):
        export(checkpoint_path("7"), tmp_path / "x", dtype="int4")
    sd = torch.load(checkpoint_path("4"), weights_only=True)
    sd["blocks.0.att.mystery"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as exc:
        export(sd, tmp_path / "y")
    assert "mystery" in _one_line(exc)
