"""Every way a checkpoint, token list or state can be wrong gives one clear, one-line error."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch

from rwkv_music import CheckpointError, StateError, load_model
from rwkv_music.model.factory import random_checkpoint


def _raises(
    exc_type: type[BaseException], fn: Callable[..., object], *args, must_name: Sequence[str] = (), **kwargs
) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in must_name:
        assert part in message, message
    return message


def _save(path: Path, sd: object):
    torch.save(sd, path)
    return path


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    _raises(CheckpointError, load_model, tmp_path / "nope.pth", must_name=("nope.pth", "no such"))


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    _raises(CheckpointError, load_model, tmp_path, must_name=(tmp_path.name, "directory"))


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.pth", b"X:1\nT:tune\nK:C\nCDEF|\n"),
        ("empty.pth", b""),
        ("plain.pth", pickle.dumps({"emb.weight": 1})),  # a pickle the safe loader refuses
    ],
)
def test_non_checkpoint_bytes_are_rejected(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    _raises(CheckpointError, load_model, path, must_name=(name, "not a PyTorch checkpoint"))


def test_truncated_zip_is_rejected(tmp_path: Path, checkpoint_path: Callable[..., Path]) -> None:
    data = checkpoint_path("5.2").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    _raises(CheckpointError, load_model, path, must_name=("cut.pth", "not a PyTorch checkpoint"))


@pytest.mark.parametrize("payload", [[torch.zeros(3)], {"emb.weight": 3}, {}])
def test_payload_that_is_not_a_dict_of_tensors_is_rejected(
    tmp_path: Path, payload: list[torch.Tensor] | dict[str, int]
) -> None:
    path = _save(tmp_path / "odd.pth", payload)
    _raises(CheckpointError, load_model, path, must_name=("odd.pth", "not a checkpoint"))


def test_pip_converted_file_is_rejected(tmp_path: Path) -> None:
    sd = random_checkpoint("4")
    sd.update({"_strategy": "cpu fp32", "_version": "0.7", "_rescale_layer": 0})
    path = _save(tmp_path / "converted.pth", sd)
    _raises(CheckpointError, load_model, path, must_name=("converted.pth", "pre-converted", "_strategy"))


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    sd = random_checkpoint("4")
    sd["blocks.0.ffnPre.key.weight"] = torch.zeros(64, 64)  # trainer-only option pip would ignore
    path = _save(tmp_path / "extra.pth", sd)
    _raises(CheckpointError, load_model, path, must_name=("extra.pth", "unexpected", "blocks.0.ffnPre.key.weight"))


def test_missing_key_is_named(tmp_path: Path) -> None:
    sd = random_checkpoint("5.2")
    del sd["blocks.1.att.gate.weight"], sd["blocks.1.ffn.time_mix_r"]
    path = _save(tmp_path / "holes.pth", sd)
    _raises(CheckpointError, load_model, path,
            must_name=("holes.pth", "missing", "blocks.1.att.gate.weight", "blocks.1.ffn.time_mix_r"))


def test_foreign_state_dict_is_not_an_rwkv_checkpoint(tmp_path: Path) -> None:
    path = _save(tmp_path / "gpt.pth", {"transformer.wte.weight": torch.zeros(4, 4)})
    _raises(CheckpointError, load_model, path, must_name=("gpt.pth", "missing", "emb.weight"))


def test_shape_mismatch_names_key_expected_and_got(tmp_path: Path) -> None:
    sd = random_checkpoint("5.1")
    sd["blocks.1.att.value.weight"] = torch.zeros(64, 32)
    path = _save(tmp_path / "bent.pth", sd)
    _raises(CheckpointError, load_model, path,
            must_name=("bent.pth", "blocks.1.att.value.weight", "[64, 32]", "[64, 64]"))


def test_v7b_dea_checkpoint_is_unsupported(tmp_path: Path) -> None:
    sd = random_checkpoint("7")
    sd["blocks.0.qkv.qq.weight"] = torch.zeros(64, 64)
    path = _save(tmp_path / "dea.pth", sd)
    _raises(CheckpointError, load_model, path, must_name=("dea.pth", "not supported"))


def test_partial_time_state_is_rejected(tmp_path: Path) -> None:
    sd = random_checkpoint("6")
    sd["blocks.0.att.time_state"] = torch.zeros(2, 32, 32)
    path = _save(tmp_path / "half-tuned.pth", sd)
    _raises(CheckpointError, load_model, path, must_name=("half-tuned.pth", "blocks.1.att.time_state"))


@pytest.mark.parametrize("tokens, bad", [([[1, 2, 128]], "128"), ([[5, -1]], "-1"), (np.array([[3, 200]]), "200")])
def test_token_outside_vocabulary_is_rejected(
    checkpoint_path: Callable[..., Path], tokens: list[list[int]] | np.ndarray, bad: str
) -> None:
    model = load_model(checkpoint_path("5.2"))
    _raises(CheckpointError, model.forward, tokens, must_name=(checkpoint_path("5.2").name, bad))


def test_float_tokens_are_rejected(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("4"))
    _raises(CheckpointError, model.forward, np.array([[1.0, 2.0]]), must_name=("integers",))


def test_state_of_another_width_is_rejected(checkpoint_path: Callable[..., Path]) -> None:
    small = load_model(checkpoint_path("5.2"))
    wide = load_model(checkpoint_path("5.2", n_embd=128))
    _, state = wide.forward([[1, 2]])
    _raises(StateError, small.forward, [[3]], state, must_name=(checkpoint_path("5.2").name, "att_x"))


def test_state_of_another_version_is_rejected(checkpoint_path: Callable[..., Path]) -> None:
    v4 = load_model(checkpoint_path("4"))
    v5 = load_model(checkpoint_path("5.0"))
    _, state = v4.forward([[1]])
    _raises(StateError, v5.forward, [[3]], state, must_name=(checkpoint_path("5.0").name, "v4"))


def test_state_batch_must_match_tokens(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("5.1"))
    state = model.new_state(2)
    _raises(StateError, model.forward, [[1], [2], [3]], state, must_name=("batch size 2",))


def test_state_must_be_a_state_object(checkpoint_path: Callable[..., Path]) -> None:
    model = load_model(checkpoint_path("4"))
    _raises(StateError, model.forward, [[1]], [torch.zeros(3)], must_name=("State",))


def test_bad_dtype_and_device_arguments_are_rejected(checkpoint_path: Callable[..., Path]) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_model(checkpoint_path("4"), dtype="int3")
    with pytest.raises(ValueError, match="device"):
        load_model(checkpoint_path("4"), device="toaster")
