"""The onnx backend as a Backend: graph layout, sidecar, no torch at run time, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from onnx_support import ALL_VERSIONS, FP32_TOL, export_cached, tokens

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def graph_52(checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cached(tmp_path_factory, checkpoint_path("5.2"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_exported_graph_passes_checker_and_names_state_io(
    version: str, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnx

    from rwkv_music.model.state import state_shapes

    path = export_cached(tmp_path_factory, checkpoint_path(version))
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    names = list(state_shapes(_config(path), 1))
    assert [i.name for i in graph.input] == ["tokens"] + [f"state_{n}" for n in names] + ["return_all_logits"]
    assert [o.name for o in graph.output] == ["logits", "all_logits"] + [f"new_state_{n}" for n in names]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "time"]
    assert any(n.op_type == "Scan" for n in graph.node)
    side = json.loads(Path(str(path) + ".json").read_text())
    assert side["version"] == version and side["tokenizer"] == "abc" and side["dtype"] == "fp32"
    assert side["config"]["n_layer"] == 2 and side["config"]["n_embd"] == 64
    assert set(side["state"]) == set(names)


def _config(path: Path):
    from rwkv_music.model.config import RWKVConfig

    return RWKVConfig.from_dict(json.loads(Path(str(path) + ".json").read_text())["config"])


def test_load_model_onnx_runs_in_a_fresh_process_without_torch(graph_52: Path) -> None:
    from rwkv_music.backends.onnx import load

    code = (
        "import sys, json, numpy as np\n"
        "import rwkv_music\n"
        f"m = rwkv_music.load_model({str(graph_52)!r}, backend='onnx', threads=1)\n"
        "logits, state = m.forward([[1, 2, 3], [4, 5, 6]])\n"
        "logits, state = m.forward([[7], [8]], state)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps(logits.tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load(graph_52, threads=1)
    _, state = model.forward([[1, 2, 3], [4, 5, 6]])
    want, _ = model.forward([[7], [8]], state)
    assert np.abs(np.array(json.loads(proc.stdout)) - want).max() <= FP32_TOL


def test_onnx_model_implements_backend_protocol(graph_52: Path) -> None:
    from rwkv_music.backends.base import Backend
    from rwkv_music.backends.onnx import load
    from rwkv_music.model.state import State

    model = load(graph_52, threads=1)
    assert isinstance(model, Backend)
    assert model.name == "onnx" and model.info is model.config and model.config.version == "5.2"
    state = model.new_state(3)
    assert isinstance(state, State) and state.batch_size == 3
    before = {k: v.copy() for k, v in state.tensors.items()}
    logits, new = model.forward(tokens(3, 4, seed=0), state)
    assert logits.shape == (3, 128) and logits.dtype == np.float32
    assert all(np.array_equal(before[k], state.tensors[k]) for k in before)  # input state untouched
    assert new.tensors["att_kv"].shape == (2, 3, 2, 32, 32)


def test_onnx_rows_of_a_batch_are_independent(graph_52: Path) -> None:
    from rwkv_music.backends.onnx import load

    model = load(graph_52, threads=1)
    toks = tokens(3, 6, seed=9)
    batch, _ = model.forward(toks)
    single, _ = model.forward(toks[1:2])
    assert np.abs(batch[1] - single[0]).max() <= FP32_TOL


def test_external_data_export_gives_the_same_logits(
    checkpoint_path: Callable[..., Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_export import export

    ckpt = checkpoint_path("7")
    out = export(ckpt, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > (tmp_path / "ext.onnx").stat().st_size
    toks = tokens(1, 5, seed=3)
    got, _ = load(out, threads=1).forward(toks)
    want, _ = load(export_cached(tmp_path_factory, ckpt), threads=1).forward(toks)
    assert np.array_equal(got, want)


def test_cli_export_onnx_writes_graph_and_sidecar_and_refuses_overwrite(
    checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.export import export_onnx

    out = tmp_path / "m.onnx"
    runner = CliRunner()
    result = runner.invoke(export_onnx, [str(checkpoint_path("4")), str(out), "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.onnx.json").read_text())["dtype"] == "fp16"
    again = runner.invoke(export_onnx, [str(checkpoint_path("4")), str(out)])
    assert again.exit_code != 0 and "exists" in again.output
    bad = runner.invoke(export_onnx, [str(checkpoint_path("4")), str(out), "--dtype", "fp16", "--int8", "--force"])
    assert bad.exit_code == 2 and "--int8" in bad.output


def test_export_accepts_a_state_dict(
    tmp_path: Path, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import torch

    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_export import export

    ckpt = checkpoint_path("6")
    out = export(torch.load(ckpt, weights_only=True), tmp_path / "sd.onnx")
    toks = tokens(2, 4, seed=4)
    got, _ = load(out, threads=1).forward(toks)
    want, _ = load(export_cached(tmp_path_factory, ckpt), threads=1).forward(toks)
    assert np.array_equal(got, want)


# -- errors -------------------------------------------------------------------------------


def test_missing_sidecar_is_a_checkpoint_error(graph_52: Path, tmp_path: Path) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import CheckpointError

    lone = tmp_path / "lone.onnx"
    shutil.copy(graph_52, lone)
    with pytest.raises(CheckpointError, match="no sidecar lone.onnx.json"):
        load(lone)


def test_sidecar_that_disagrees_with_the_graph_is_a_checkpoint_error(graph_52: Path, tmp_path: Path) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import CheckpointError

    copy = tmp_path / "m.onnx"
    shutil.copy(graph_52, copy)
    side = json.loads(Path(str(graph_52) + ".json").read_text())
    side["config"]["n_layer"] = 3
    (tmp_path / "m.onnx.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match=r"sidecar does not match m.onnx: config \{'n_layer': 3\}"):
        load(copy)


def test_non_rwkv_onnx_file_is_a_checkpoint_error(graph_52: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import CheckpointError

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:]))
    onnx.save(model, tmp_path / "other.onnx")
    shutil.copy(str(graph_52) + ".json", tmp_path / "other.onnx.json")
    with pytest.raises(CheckpointError, match="not an rwkv_music RWKV graph"):
        load(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    shutil.copy(str(graph_52) + ".json", tmp_path / "junk.onnx.json")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        load(tmp_path / "junk.onnx")
    (tmp_path / "junk.onnx.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable ONNX sidecar"):
        load(tmp_path / "junk.onnx")


def test_state_of_the_wrong_shape_is_a_state_error(
    graph_52: Path, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import StateError

    model = load(graph_52, threads=1)
    with pytest.raises(StateError, match="batch size 2, the tokens have 1 rows"):
        model.forward([[1, 2]], model.new_state(2))
    v7 = load(export_cached(tmp_path_factory, checkpoint_path("7")), threads=1)
    with pytest.raises(StateError, match="this model is v7"):
        v7.forward([[1]], model.new_state(1))
    wide = load(export_cached(tmp_path_factory, checkpoint_path("5.2", n_embd=128)), threads=1)
    with pytest.raises(StateError, match="'att_x' has shape"):
        wide.forward([[1]], model.new_state(1))


def test_missing_onnxruntime_is_backend_unavailable(graph_52: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import BackendUnavailable

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(BackendUnavailable, match="needs onnxruntime"):
        load(graph_52)


def test_cuda_device_without_cuda_provider_is_backend_unavailable(graph_52: Path) -> None:
    import onnxruntime

    from rwkv_music.backends.onnx import load
    from rwkv_music.errors import BackendUnavailable

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider"):
        load(graph_52, device="cuda")
