"""Every backend declares what it can do (name, device, dtype, in-place states, array kind), takes its
choices as arguments (dtype, threads, native kernels), and refuses a dtype it cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rwkv_music
from rwkv_music.backends.base import Backend
from rwkv_music.errors import BackendUnavailable
from rwkv_music.model import native

pytest.importorskip("onnxruntime")
pytest.importorskip("ncnn")

EXPECTED = {  # backend → (supports_inplace, array_kind, compute_dtype of a default load)
    "torch": (True, "torch", "fp32"),
    "onnx": (False, "numpy", "fp32"),
    "ncnn": (False, "numpy", "fp32"),
}


@pytest.fixture(scope="module")
def exports(checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rwkv_music.backends import ncnn_export, onnx_export

    ckpt = checkpoint_path("5.2")
    tmp = tmp_path_factory.mktemp("capabilities")
    return {
        "torch": ckpt,
        "onnx": onnx_export.export(ckpt, tmp / "m.onnx"),
        "onnx-fp16": onnx_export.export(ckpt, tmp / "m16.onnx", "fp16"),
        "ncnn": ncnn_export.export(ckpt, tmp / "m"),
    }


@pytest.mark.parametrize("backend", sorted(EXPECTED))
def test_backends_declare_their_capabilities(backend: str, exports: dict[str, Path]) -> None:
    model = rwkv_music.load_model(exports[backend], backend=backend, threads=1)
    inplace, kind, compute = EXPECTED[backend]
    assert isinstance(model, Backend)
    assert model.name == backend and model.supports_inplace is inplace and model.array_kind == kind
    assert model.compute_dtype == compute
    assert str(model.device) == "cpu"
    logits, _ = model.forward([[1, 2, 3]])
    assert type(logits).__module__.split(".")[0] == kind
    as_np = model.as_numpy(logits)
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32 and as_np.shape == (1, 128)


def test_only_the_torch_backend_takes_inplace(exports: dict[str, Path]) -> None:
    torch_model = rwkv_music.load_model(exports["torch"])
    state = torch_model.new_state(1)
    _, new = torch_model.forward([[1, 2]], state, inplace=True)
    assert new is state
    onnx_model = rwkv_music.load_model(exports["onnx"], backend="onnx")
    with pytest.raises(TypeError):
        onnx_model.forward([[1, 2]], onnx_model.new_state(1), inplace=True)


def test_torch_dtypes_name_the_arithmetic() -> None:
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    sd = random_checkpoint("7")
    assert TorchModel.from_state_dict(sd, dtype="bf16").compute_dtype == "bf16"
    q = TorchModel.from_state_dict(sd)
    q.quantize_int8("dequant")
    assert q.compute_dtype == "int8" and q.dtype == torch.float32  # fp32 arithmetic over int8 weights


def test_onnx_dtype_is_the_graphs_own_or_refused(exports: dict[str, Path]) -> None:
    model = rwkv_music.load_model(exports["onnx-fp16"], backend="onnx")  # dtype unset: the graph's
    assert model.dtype == model.compute_dtype == "fp16"
    assert rwkv_music.load_model(exports["onnx-fp16"], backend="onnx", dtype="fp16").dtype == "fp16"
    for wrong in ("fp32", "bf16", "int8"):
        with pytest.raises(BackendUnavailable, match="fixed at export") as exc:
            rwkv_music.load_model(exports["onnx-fp16"], backend="onnx", dtype=wrong)
        assert "\n" not in str(exc.value)


def test_ncnn_dtype_chooses_the_arithmetic_and_refuses_int8_without_an_int8_export(exports: dict[str, Path]) -> None:
    assert rwkv_music.load_model(exports["ncnn"], backend="ncnn", dtype="fp16").compute_dtype == "fp16"
    assert rwkv_music.load_model(exports["ncnn"], backend="ncnn", dtype="fp32").compute_dtype == "fp32"
    with pytest.raises(BackendUnavailable, match="not int8"):
        rwkv_music.load_model(exports["ncnn"], backend="ncnn", dtype="int8")
    with pytest.raises(BackendUnavailable, match="contradict"):
        rwkv_music.load_model(exports["ncnn"], backend="ncnn", dtype="fp32", fp16=True)


@pytest.mark.parametrize("backend", ["onnx", "ncnn"])
def test_native_kernels_are_refused_off_torch(backend: str, exports: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="torch backend"):
        rwkv_music.load_model(exports[backend], backend=backend, native=True)
    assert rwkv_music.load_model(exports[backend], backend=backend, native=False).name == backend


def test_torch_sets_threads_only_when_asked(exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    rwkv_music.load_model(exports["torch"])
    assert calls == []
    rwkv_music.load_model(exports["torch"], threads=2)
    assert calls == [2]


def test_a_render_may_lend_torchs_threads_only_where_the_caller_left_them(
    exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """set_host_threads (what a render calls to leave cores to its checks) sets torch's count, except for
    a model loaded with threads=, whose count the caller chose."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    free = rwkv_music.load_model(exports["torch"])
    assert not free.threads_pinned and free.set_host_threads(1) and calls == [1]
    pinned = rwkv_music.load_model(exports["torch"], threads=2)
    assert pinned.threads_pinned and not pinned.set_host_threads(1) and calls == [1, 2]


def _counting_kernels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = native.kernel

    def counting(name: str, choice: Any = None) -> Any:
        fn = real(name, choice)
        if fn is None:
            return None

        def wrapper(*args: object) -> Any:
            calls.append(name)
            return fn(*args)

        return wrapper

    monkeypatch.setattr(native, "kernel", counting)
    return calls


@pytest.mark.skipif(native.kernel("rwkv7_time_mix_decode", True) is None, reason=f"native: {native.status(True)}")
def test_native_is_a_per_model_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    calls = _counting_kernels(monkeypatch)
    sd = random_checkpoint("7", seed=3)
    on, off = TorchModel.from_state_dict(sd, native=True), TorchModel.from_state_dict(sd, native=False)
    want, _ = on.forward([[5]])
    assert calls == ["rwkv7_decode_layers"]  # a small fp32 model: all layers in one call (v7_decode.c)
    calls.clear()
    got, _ = off.forward([[5]])
    assert calls == []  # the other model's choice does not leak into this one
    assert float((got - want).abs().max()) < 1e-4
    assert native.enabled() == native.env_default()  # no choice left behind after a forward
    assert native.status(False) == "unavailable: turned off by native=False"
