"""States: npz members are sized from their headers before loading; odd headers, flat tensors, NaN and
states from another model give one StateError naming the file."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_support import expect_one_line_error, run_capped

from rwkv_music import StateError
from rwkv_music.backends.torch import TorchModel
from rwkv_music.compose.helpers import fit_state
from rwkv_music.model.factory import random_checkpoint
from rwkv_music.model.state import State

LOAD = """
from rwkv_music.errors import RwkvMusicError
from rwkv_music.model.state import State
try:
    State.load({path!r})
    print("LOADED")
except RwkvMusicError as exc:
    print("ERR", type(exc).__name__ + ":", str(exc).replace(chr(10), " | "))
"""


def _header(**over: object) -> bytes:
    head = {"format": "rwkv_music.state/1", "version": "7", "config": None, **over}
    return np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def _model(vocab: int = 16) -> TorchModel:
    sd = random_checkpoint("7", n_layer=1, n_embd=64, head_size=32, vocab_size=vocab)
    return TorchModel.from_state_dict(sd)


def test_npz_member_that_inflates_to_1_5_gib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inflate.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__header__.npy", _npy(_header()))
        with zf.open("att_kv.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (3 << 27,)})
            zeros = bytes(64 << 20)
            for _ in range(24):  # 1.5 GiB of zeros, deflated to ~1.5 MB
                fh.write(zeros)
    assert path.stat().st_size < 8 << 20
    line = expect_one_line_error(run_capped(LOAD.format(path=str(path))), "StateError", "inflate.npz")
    assert "att_kv.npy" in line


def test_npy_header_claiming_more_than_its_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__header__.npy", _npy(_header()))
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30,)})
        zf.writestr("att_x.npy", buf.getvalue() + bytes(16))
    line = expect_one_line_error(run_capped(LOAD.format(path=str(path))), "StateError", "claims.npz")
    assert "att_x.npy" in line and "1073741824" in line


@pytest.mark.parametrize("header", [["a", "list"], "text", 5])
def test_header_that_is_not_an_object_is_refused(tmp_path: Path, header: object) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             att_x=np.zeros((1, 1, 64), np.float32))
    with pytest.raises(StateError, match="odd.npz: not a saved rwkv_music state"):
        State.load(path)


def test_one_dimensional_tensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.npz"
    np.savez(path, __header__=_header(), att_x=np.zeros(64, np.float32), att_kv=np.zeros(64, np.float32),
             ffn_x=np.zeros(64, np.float32))
    with pytest.raises(StateError, match=r"flat.npz: .*'att_x' is not shaped \[n_layer, batch"):
        State.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_state_is_refused(tmp_path: Path, bad: float) -> None:
    model = _model()
    state = model.new_state(1).numpy()
    state.tensors["att_kv"][0, 0, 1, 2, 3] = bad
    path = tmp_path / "nan.npz"
    state.save(path, model.config)
    with pytest.raises(StateError, match="nan.npz: state tensor 'att_kv' holds NaN or Inf"):
        State.load(path)


def test_state_from_a_model_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    abc, midi = _model(16), _model(40)
    path = tmp_path / "midi-state.npz"
    _, state = midi.forward([[1, 2, 3]])
    state.save(path, midi.config)
    loaded = State.load(path)
    loaded.check(midi.config)  # its own model takes it
    with pytest.raises(StateError, match="midi-state.npz: made with a model of vocabulary 40, this model has 16"):
        fit_state(abc, str(path), 1)


def test_saved_state_round_trips(tmp_path: Path) -> None:
    model = _model()
    _, state = model.forward([[1, 2, 3]])
    path = tmp_path / "ok.npz"
    state.save(path, model.config)
    back = State.load(path)
    np.testing.assert_array_equal(back["att_kv"], state.numpy()["att_kv"])
