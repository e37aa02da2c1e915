"""Fast decode paths: the static-buffer (CUDA graph) decoder against the plain forward pass."""

from __future__ import annotations

import pytest
import torch

from rwkv_music.backends.torch import TorchModel
from rwkv_music.backends.torch_cuda_graph import GraphDecoder
from rwkv_music.errors import BackendUnavailable, StateError
from rwkv_music.model.factory import random_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model(version: str, device: str = "cpu") -> TorchModel:
    return TorchModel.from_state_dict(random_checkpoint(version, n_layer=2, n_embd=64, seed=4), device=device)


def _tokens(batch: int, steps: int) -> torch.Tensor:
    return torch.randint(0, 128, (batch, steps), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_static_decoder_steps_match_forward(version: str) -> None:
    model = _model(version)
    toks = _tokens(3, 4)
    dec = GraphDecoder(model, 3, use_graph=False)
    state = None
    for t in range(toks.shape[1]):
        want, state = model.forward(toks[:, t : t + 1], state)
        got = dec.step(toks[:, t])
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    for name, t in dec.state.tensors.items():
        assert torch.allclose(t, state.tensors[name], atol=1e-5), name


def test_static_decoder_starts_from_a_given_state() -> None:
    model = _model("7")
    toks = _tokens(2, 3)
    _, start = model.forward(toks[:, :2])
    want, _ = model.forward(toks[:, 2:], start)
    dec = GraphDecoder(model, 2, state=start, use_graph=False)
    assert torch.allclose(dec.step(toks[:, 2]), want, atol=1e-5)


def test_refilled_row_restarts_while_others_continue() -> None:
    model = _model("5.2")
    toks = _tokens(2, 3)
    dec = GraphDecoder(model, 2, use_graph=False)
    dec.step(toks[:, 0])
    dec.step(toks[:, 1])
    dec.set_rows([1])  # row 1 becomes a new piece; row 0 goes on
    got = dec.step(toks[:, 2]).clone()
    cont, _ = model.forward(toks[:1])
    fresh, _ = model.forward(toks[1:, 2:])
    assert torch.allclose(got[0], cont[0], atol=1e-5)
    assert torch.allclose(got[1], fresh[0], atol=1e-5)


def test_static_decoder_rejects_bad_arguments() -> None:
    model = _model("7")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        GraphDecoder(model, 2, use_graph=True)  # a CPU model
    dec = GraphDecoder(model, 2, use_graph=False)
    with pytest.raises(ValueError, match="expected 2 tokens"):
        dec.step([1, 2, 3])
    with pytest.raises(ValueError, match="rows"):
        dec.set_rows([2])
    with pytest.raises(StateError):
        dec.set_rows([0, 1], model.new_state(1))


@needs_cuda
@pytest.mark.parametrize("version", ["5.2", "7"])
def test_cuda_graph_replay_matches_eager_forward(version: str) -> None:
    model = _model(version, device="cuda")
    toks = _tokens(4, 5).cuda()
    dec = GraphDecoder(model, 4, use_graph=True)
    state = None
    for t in range(toks.shape[1]):
        want, state = model.forward(toks[:, t : t + 1], state)
        got = dec.step(toks[:, t])
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
