"""Class 1 and 2 for checkpoints: sizes a file declares are checked before anything is allocated.

Every bomb is read in a child process capped at 1.5 GiB of address space (hostile_support.run_capped),
so a regression fails with MemoryError in the child instead of exhausting the test machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hostile_support import (
    FakeStorage,
    FakeTensor,
    expect_one_line_error,
    run_capped,
    tensors_from_state_dict,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)

from rwkv_music import CheckpointError
from rwkv_music.backends.torch import TorchModel, load
from rwkv_music.model.checkpoint import inspect_shapes, load_state_dict
from rwkv_music.model.detect import shapes_of
from rwkv_music.model.factory import random_checkpoint

LOAD = """
from rwkv_music.errors import RwkvMusicError
from rwkv_music.backends.torch import load
try:
    load({path!r})
    print("LOADED")
except RwkvMusicError as exc:
    print("ERR", type(exc).__name__ + ":", str(exc).replace(chr(10), " | "))
"""


def _capped_load(path: Path) -> str:
    start = time.monotonic()
    proc = run_capped(LOAD.format(path=str(path)))
    assert time.monotonic() - start < 60
    return expect_one_line_error(proc, "CheckpointError", path.name)


def _tiny() -> tuple[dict, dict]:
    return tensors_from_state_dict(random_checkpoint("5.2", n_layer=1, n_embd=32, head_size=16, vocab_size=16))


@pytest.mark.parametrize("numel", [1 << 28, 1 << 38])  # 1 GiB and 1 TiB of float32
def test_legacy_pth_with_a_huge_declared_storage_is_refused(tmp_path: Path, numel: int) -> None:
    tensors, data = _tiny()
    tensors["emb.weight"] = FakeTensor(FakeStorage("0", numel), (16, 32))
    path = write_legacy_checkpoint(tmp_path / "legacy.pth", tensors, data)
    assert path.stat().st_size < 128 << 10  # a 66 KB file
    line = _capped_load(path)
    assert "storage '0'" in line or "storage 0" in line


def test_zip_pth_whose_storage_claims_a_gibibyte_is_refused(tmp_path: Path) -> None:
    tensors, data = _tiny()
    tensors["emb.weight"] = FakeTensor(FakeStorage("0", 1 << 28), (1 << 14, 1 << 14))
    path = write_zip_checkpoint(tmp_path / "claims.pth", tensors, data)
    line = _capped_load(path)
    assert "declares" in line


def test_zip_bomb_record_is_refused(tmp_path: Path) -> None:
    tensors, data = _tiny()
    tensors["emb.weight"] = FakeTensor(FakeStorage("0", 1 << 24), (1 << 12, 1 << 12))
    data["0"] = bytes(1 << 26)  # 64 MiB of zeros deflate to ~64 KB
    path = write_zip_checkpoint(tmp_path / "deflated.pth", tensors, data, compress=True)
    assert path.stat().st_size < 1 << 20
    assert "compressed" in _capped_load(path)


def test_stride_zero_tensor_of_width_2_17_is_refused(tmp_path: Path) -> None:
    tensors, data = _tiny()
    tensors["emb.weight"] = FakeTensor(FakeStorage("0", 4), (1 << 17, 1 << 13), (0, 0))
    data["0"] = bytes(16)
    line = _capped_load(write_zip_checkpoint(tmp_path / "stride0.pth", tensors, data))
    assert "stride-0" in line and "emb.weight" in line


def test_overlapping_view_is_refused(tmp_path: Path) -> None:
    tensors, data = _tiny()
    tensors["head.weight"] = FakeTensor(FakeStorage("h", 32), (16, 32), (1, 1))  # rows overlap
    data["h"] = bytes(32 * 4)
    line = _capped_load(write_zip_checkpoint(tmp_path / "overlap.pth", tensors, data))
    assert "head.weight" in line and "overlapping" in line


def test_a_billion_layers_key_is_refused_quickly(tmp_path: Path) -> None:
    tensors, data = _tiny()
    tensors["blocks.999999999.ln1.weight"] = FakeTensor(FakeStorage("x", 32), (32,))
    data["x"] = bytes(128)
    line = _capped_load(write_zip_checkpoint(tmp_path / "deep.pth", tensors, data))
    assert "blocks.999999999" in line and "layers" in line


@pytest.mark.parametrize("name, shape", [("emb.weight", (1 << 21, 32)), ("blocks.0.ffn.key.weight", (1 << 20, 32))])
def test_sizes_over_the_sanity_limits_are_refused(name: str, shape: tuple) -> None:
    shapes = shapes_of(random_checkpoint("4", n_layer=1, n_embd=32, vocab_size=16))
    shapes[name] = shape
    with pytest.raises(CheckpointError, match="above the limit"):
        inspect_shapes(shapes, "big.pth")


def test_valid_checkpoint_written_by_the_fixture_writer_loads(tmp_path: Path) -> None:
    """The writer makes files torch reads: the refusals above are about the tampering, not the writer."""
    tensors, data = _tiny()
    path = write_zip_checkpoint(tmp_path / "fine.pth", tensors, data)
    _, config, _ = load_state_dict(path)
    assert config.n_layer == 1 and config.vocab_size == 16
    legacy = write_legacy_checkpoint(tmp_path / "fine-legacy.pth", tensors, data)
    assert load_state_dict(legacy)[1].n_embd == 32


def test_safetensors_header_declaring_more_than_its_data_is_refused(tmp_path: Path) -> None:
    import json
    import struct

    header = json.dumps({"emb.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 12], "data_offsets": [0, 16]}})
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(16))
    with pytest.raises(CheckpointError, match="emb.weight"):
        load(path)


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_and_sparse_tensors_are_refused(tmp_path: Path, kind: str) -> None:
    sd = random_checkpoint("4", n_layer=1, n_embd=32, vocab_size=16)
    sd["ln_out.weight"] = (torch.empty(32, device="meta") if kind == "meta" else torch.zeros(32).to_sparse())
    path = tmp_path / f"{kind}.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"{kind}.pth: tensor 'ln_out.weight' is a"):
        load(path)
    with pytest.raises(CheckpointError, match="ln_out.weight"):
        TorchModel.from_state_dict(sd)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(tmp_path: Path, bad: float) -> None:
    sd = random_checkpoint("7", n_layer=2, n_embd=64, head_size=32, vocab_size=16)
    sd["blocks.1.att.key.weight"][3, 5] = bad
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    what = "NaN" if bad != bad else "Inf"
    with pytest.raises(CheckpointError, match=f"nan.pth: tensor 'blocks.1.att.key.weight' holds {what}"):
        load(path)


@pytest.mark.parametrize("version", ["7", "7a", "5.2", "6"])
def test_single_head_checkpoint_loads_and_runs(tmp_path: Path, version: str) -> None:
    """r_k (and v5.2/v6 decay/bonus) of shape (1, 64) is one head, not a vector to squeeze away."""
    sd = random_checkpoint(version, n_layer=1, n_embd=64, head_size=64, vocab_size=16)
    path = tmp_path / "one-head.pth"
    torch.save(sd, path)
    model = load(path)
    assert (model.config.n_head, model.config.head_size) == (1, 64)
    logits, _ = model.forward([[1, 2, 3]])
    assert tuple(logits.shape) == (1, 16) and bool(torch.isfinite(logits).all())
