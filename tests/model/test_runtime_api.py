"""The runtime's public surface: version detection, model info, input forms and state values."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import rwkv_music
from rwkv_music.backends.base import Backend
from rwkv_music.backends.torch import TorchModel, load
from rwkv_music.model import registry
from rwkv_music.model.config import ModelVersion
from rwkv_music.model.detect import config_from_state_dict, detect_version, shapes_of
from rwkv_music.model.factory import random_checkpoint
from rwkv_music.model.state import State

ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")


@pytest.mark.parametrize("n_layer", [1, 3])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_version_is_detected_from_keys_alone_in_any_order(version: str, n_layer: int) -> None:
    shapes = list(shapes_of(random_checkpoint(version, n_layer=n_layer)).items())
    random.Random(0).shuffle(shapes)
    assert detect_version(dict(shapes)) == version


def test_v5_0_with_one_scalar_decay_per_head_stored_as_column() -> None:
    sd = random_checkpoint("5.0")
    for i in range(2):
        sd[f"blocks.{i}.att.time_decay"] = sd[f"blocks.{i}.att.time_decay"].reshape(-1, 1)  # [H, 1]
    assert detect_version(shapes_of(sd)) == "5.0"
    model = TorchModel.from_state_dict(sd)
    assert model.info.n_head == 2


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_info_reports_sizes_and_parameter_count(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> None:
    require_version(version)
    path = checkpoint_path(version, vocab_size=128, n_embd=64, head_size=32)
    model = rwkv_music.load_model(path)
    info = model.info
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert info is model.config
    assert info.version == ModelVersion(version) and str(info.version) == version
    assert (info.n_layer, info.n_embd, info.vocab_size, info.ffn_size) == (2, 64, 128, 256)
    if version == "4":
        assert (info.n_head, info.head_size) == (0, 0)
    else:
        assert (info.n_head, info.head_size) == (2, 32)
    assert info.n_params == sum(t.numel() for t in sd.values())
    if version.startswith("7"):
        assert set(info.lora) >= {"w", "a", "v", "g"}
    if version == "7a":
        assert info.lora["semb"] == 1024


def test_loaded_model_implements_the_backend_protocol(checkpoint_path: Callable[..., Path]) -> None:
    model = rwkv_music.load_model(checkpoint_path("5.2"), backend="torch", device="cpu", dtype="fp32")
    assert isinstance(model, Backend)
    assert model.name == "torch" and model.device == torch.device("cpu") and model.dtype == torch.float32


def test_forward_shapes_and_input_state_is_not_mutated(checkpoint_path: Callable[..., Path]) -> None:
    model = load(checkpoint_path("5.1"))
    _, state = model.forward([[1, 2, 3], [4, 5, 6]])
    before = state.copy()
    logits, new = model.forward([[7, 8], [9, 10]], state)
    assert logits.shape == (2, 128) and logits.dtype == torch.float32
    full, _ = model.forward([[7, 8], [9, 10]], state, all_logits=True)
    assert full.shape == (2, 2, 128)
    torch.testing.assert_close(full[:, -1], logits)
    one, _ = model.forward([[7], [9]], state, all_logits=True)
    assert one.shape == (2, 1, 128)
    for name, t in state.tensors.items():
        assert torch.equal(t, before.tensors[name])
        assert new.tensors[name].data_ptr() != t.data_ptr()
    assert not torch.equal(new.tensors["att_kv"], state.tensors["att_kv"])


def test_token_input_forms_agree(checkpoint_path: Callable[..., Path]) -> None:
    model = load(checkpoint_path("4"))
    ref, _ = model.forward([[3, 1, 4]])
    for tokens in ([3, 1, 4], np.array([[3, 1, 4]], dtype=np.int32), torch.tensor([[3, 1, 4]]), (3, 1, 4)):
        got, _ = model.forward(tokens)
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("version", ["4", "5.2", "7"])
def test_state_values_round_trip_and_continue_identically(
    version: str, checkpoint_path: Callable[..., Path], tmp_path: Path, require_version: Callable[[str], None]
) -> None:
    require_version(version)
    model = load(checkpoint_path(version))
    prompts, nxt = [[1, 2, 3, 4], [5, 6, 7, 8]], [[9], [10]]
    _, state = model.forward(prompts)
    ref, _ = model.forward(nxt, state)

    state.save(tmp_path / "s.npz", model.config)
    loaded = State.load(tmp_path / "s.npz")
    assert not loaded.is_torch  # saved states are numpy; the backend converts them
    got, _ = model.forward(nxt, loaded)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)

    row1 = state.select(1)
    got, _ = model.forward(nxt[1:], row1)
    torch.testing.assert_close(got, ref[1:], rtol=1e-6, atol=1e-6)

    _, s0 = model.forward(prompts[:1])
    _, s1 = model.forward(prompts[1:])
    joined = State.concat([s0, s1])
    got, _ = model.forward(nxt, joined)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

    branch = state.copy()
    branch.tensors["att_x"].zero_()
    again, _ = model.forward(nxt, state)
    torch.testing.assert_close(again, ref)


def test_pth_suffix_is_optional(checkpoint_path: Callable[..., Path]) -> None:
    path = checkpoint_path("5.0")
    a, _ = load(path).forward([[1, 2]])
    b, _ = load(str(path)[: -len(".pth")]).forward([[1, 2]])
    torch.testing.assert_close(a, b)


def test_from_state_dict_matches_file_and_leaves_dict_alone(checkpoint_path: Callable[..., Path]) -> None:
    path = checkpoint_path("5.2")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(sd)
    model = TorchModel.from_state_dict(sd, source="mem")
    assert list(sd) == keys
    a, _ = model.forward([[1, 2, 3]])
    b, _ = load(path).forward([[1, 2, 3]])
    torch.testing.assert_close(a, b)


def test_safetensors_checkpoint_loads_like_pth(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    path = checkpoint_path("4")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    a, _ = load(path).forward([[1, 2, 3]])
    b, _ = load(tmp_path / "m.safetensors").forward([[1, 2, 3]])
    torch.testing.assert_close(a, b)


def test_half_precision_checkpoint_file_loads(checkpoint_path: Callable[..., Path]) -> None:
    model = load(checkpoint_path("5.2", dtype=torch.bfloat16))
    logits, state = model.forward([[1, 2, 3]])
    assert torch.isfinite(logits).all() and state.tensors["att_kv"].dtype == torch.float32


def test_v5_time_first_and_time_faaaa_spellings_agree() -> None:
    sd = random_checkpoint("5.1", time_first_key="time_faaaa")
    for i in range(2):
        sd[f"blocks.{i}.att.time_faaaa"] = sd[f"blocks.{i}.att.time_faaaa"].abs() + 0.1
    alt = dict(sd)
    for i in range(2):  # time_first is log u (A6)
        alt[f"blocks.{i}.att.time_first"] = torch.log(alt.pop(f"blocks.{i}.att.time_faaaa"))
    a, _ = TorchModel.from_state_dict(sd).forward([[1, 2, 3, 4]])
    b, _ = TorchModel.from_state_dict(alt).forward([[1, 2, 3, 4]])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_v7_block0_value_residual_weights_are_optional(require_version: Callable[[str], None]) -> None:
    require_version("7")
    sd = random_checkpoint("7")
    a, _ = TorchModel.from_state_dict(sd).forward([[1, 2, 3]])
    for name in ("v0", "v1", "v2"):
        del sd[f"blocks.0.att.{name}"]
    b, _ = TorchModel.from_state_dict(sd).forward([[1, 2, 3]])
    torch.testing.assert_close(a, b)


def test_config_is_derived_from_shapes_per_version() -> None:
    cfg = config_from_state_dict(random_checkpoint("6", n_embd=128, head_size=64, dim_ffn=448))
    assert (cfg.n_head, cfg.head_size, cfg.dim_ffn, cfg.lora) == (2, 64, 448, {"maa": 32, "decay": 64})
    cfg = config_from_state_dict(random_checkpoint("5.0", n_embd=128, head_size=32))
    assert (cfg.n_head, cfg.head_size) == (4, 32)
    sd = random_checkpoint("7a")
    assert config_from_state_dict(sd).n_params == sum(math.prod(t.shape) for t in sd.values())


def test_registry_maps_every_version_to_a_module() -> None:
    for version in ALL_VERSIONS:
        assert registry.module_name(version).startswith("rwkv_music.model.v")
    for version in registry.available_versions():
        assert version in registry.get_module(version).VERSIONS
