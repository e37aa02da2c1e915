"""Values nobody checked: devices, thread counts, float token ids, sidecars pointing outside their
folder, a graph of another model behind our sidecar, unsupported opsets, exports that do not run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_music.backends import load_backend
from rwkv_music.backends.limits import MAX_THREADS, check_threads
from rwkv_music.backends.torch import TorchModel, load
from rwkv_music.compose.composer import Composer
from rwkv_music.errors import (
    BackendUnavailable,
    CheckpointError,
    ExportError,
    OptionError,
    RwkvMusicError,
)
from rwkv_music.model.factory import random_checkpoint, save_random_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth", "7", n_layer=1, vocab_size=128)


@pytest.mark.parametrize("device, error", [("tpu", OptionError), ("", OptionError), ("bogus", OptionError),
                                           ("meta", BackendUnavailable), ("vulkan", BackendUnavailable),
                                           (5, OptionError), ("cpu:3", OptionError), ("cuda:x", OptionError)])
def test_bad_devices_are_one_line_errors_on_the_torch_backend(tiny: Path, device: object, error: type) -> None:
    if device == "cuda:x" and not torch.cuda.is_available():
        error = OptionError  # refused as a name before CUDA is looked for
    with pytest.raises(error) as info:
        load(tiny, device=device)
    assert "\n" not in str(info.value) and repr(device) in str(info.value)
    with pytest.raises(RwkvMusicError):
        Composer.load(tiny, mode="abc", device=device)


@pytest.mark.parametrize("backend", ["torch", "onnx", "ncnn"])
@pytest.mark.parametrize("threads", [10**6, 0, -3, 2.5, "many"])
def test_absurd_thread_counts_are_refused_before_the_runtime(tiny: Path, backend: str, threads: object) -> None:
    if backend != "torch":
        pytest.importorskip({"onnx": "onnxruntime", "ncnn": "ncnn"}[backend])
    before = torch.get_num_threads()
    with pytest.raises(OptionError, match="threads must be"):
        load_backend(tiny, backend=backend, threads=threads)
    assert torch.get_num_threads() == before


def test_thread_bounds() -> None:
    assert check_threads(None, "torch") is None
    assert check_threads(1, "torch") == 1 and check_threads(MAX_THREADS, "torch") == MAX_THREADS
    assert check_threads(2.0, "torch") == 2
    with pytest.raises(OptionError):
        check_threads(MAX_THREADS + 1, "torch")


@pytest.mark.parametrize("tokens", [[[1.0, 2.0]], np.array([[1.5, 2.0]]), torch.tensor([[1.0, 2.0]])])
def test_float_token_ids_are_refused_not_truncated(tiny: Path, tokens: object) -> None:
    model = load(tiny)
    with pytest.raises(RwkvMusicError, match="integers"):
        model.forward(tokens)


# -- exports -----------------------------------------------------------------------------------
onnx_needed = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime")), reason="needs onnx"
)


@onnx_needed
@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.npz", "sub/state.npz", ""])
def test_sidecar_initial_state_outside_its_folder_is_refused(tmp_path: Path, tiny: Path, name: str) -> None:
    from rwkv_music.backends.onnx import load as load_onnx
    from rwkv_music.backends.onnx_export import export

    graph = export(tiny, tmp_path / "g.onnx")
    side = tmp_path / "g.onnx.json"
    meta = json.loads(side.read_text())
    meta["initial_state"] = name
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="initial_state"):
        load_onnx(graph)


@onnx_needed
def test_graph_of_another_model_behind_our_sidecar_is_refused(tmp_path: Path) -> None:
    import onnx

    from rwkv_music.backends.onnx import load as load_onnx
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.backends.sidecar import META_KEY

    ours = export(save_random_checkpoint(tmp_path / "a.pth", "7", n_layer=1, vocab_size=128), tmp_path / "a.onnx")
    other = export(save_random_checkpoint(tmp_path / "b.pth", "7", n_layer=1, vocab_size=256), tmp_path / "b.onnx")
    # the other graph, carrying our identity in its metadata, with our sidecar beside it
    model = onnx.load(str(other))
    ident = onnx.load(str(ours)).metadata_props
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            prop.value = next(p.value for p in ident if p.key == META_KEY)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    onnx.save(model, str(swapped / "a.onnx"))
    shutil.copy(tmp_path / "a.onnx.json", swapped / "a.onnx.json")
    with pytest.raises(CheckpointError, match="vocabulary of 128"):
        load_onnx(swapped / "a.onnx")
    shutil.copy(other, swapped / "a.onnx")  # plain copy: its metadata already disagrees
    with pytest.raises(CheckpointError, match="sidecar does not match"):
        load_onnx(swapped / "a.onnx")


@onnx_needed
@pytest.mark.parametrize("opset", [999, 16, True, "18"])
def test_unsupported_opsets_are_refused_before_writing(tmp_path: Path, tiny: Path, opset: object) -> None:
    from rwkv_music.backends.onnx_export import export

    with pytest.raises(OptionError, match="opset must be"):
        export(tiny, tmp_path / "g.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


@onnx_needed
def test_export_that_does_not_load_is_removed(tmp_path: Path, tiny: Path) -> None:
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.backends.sidecar import verify_export

    graph = export(tiny, tmp_path / "g.onnx")
    written = [graph, tmp_path / "g.onnx.json"]
    graph.write_bytes(graph.read_bytes()[:200])  # as a runtime that cannot read it would see it
    with pytest.raises(ExportError, match="does not run in onnx"):
        verify_export(graph, written, "onnx")
    assert not any(p.exists() for p in written)


@onnx_needed
def test_nan_weights_are_not_exported(tmp_path: Path) -> None:
    from rwkv_music.backends.onnx_export import export

    sd = random_checkpoint("7", n_layer=1, vocab_size=128)
    sd["head.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="nan.pth: tensor 'head.weight' holds NaN"):
        export(path, tmp_path / "g.onnx")
    with pytest.raises(CheckpointError, match="head.weight"):  # an in-memory dict of numpy arrays too
        export({k: v.numpy() for k, v in sd.items()}, tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_nan_weights_in_memory_are_refused() -> None:
    sd = random_checkpoint("4", n_layer=1, vocab_size=16)
    sd["emb.weight"][1, 1] = float("inf")
    with pytest.raises(CheckpointError, match="'emb.weight' holds Inf"):
        TorchModel.from_state_dict(sd)
