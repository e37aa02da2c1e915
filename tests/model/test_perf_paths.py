"""Fast decode paths: the static-buffer (CUDA graph) decoder against the plain forward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import torch

from rwkv_music.backends.torch import TorchModel
from rwkv_music.backends.torch_cuda_graph import GraphDecoder
from rwkv_music.errors import BackendUnavailable, StateError
from rwkv_music.model.factory import random_checkpoint

if TYPE_CHECKING:
    from rwkv_music.model.state import State

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


# -- forward(..., inplace=True): the state is updated in its own memory --------------------------

@pytest.mark.parametrize("version", ["4", "5.2", "6", "7", "7a"])
def test_inplace_forward_equals_default_forward(version: str) -> None:
    model = _model(version)
    toks = _tokens(3, 12)
    want, want_state = model.forward(toks[:, :8])  # prefill, then single-token decode steps
    state = model.new_state(3)
    tensors = dict(state.tensors)
    got, same = model.forward(toks[:, :8], state, inplace=True)
    assert same is state and torch.equal(got, want)
    for t in range(8, 12):
        want, want_state = model.forward(toks[:, t : t + 1], want_state)
        got, _ = model.forward(toks[:, t : t + 1], state, inplace=True)
        assert torch.equal(got, want)
    for name, t in state.tensors.items():
        assert t is tensors[name], name  # the very same tensors, overwritten
        assert torch.equal(t, want_state.tensors[name]), name


def test_inplace_forward_across_segments_equals_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.model.v7 as v7

    monkeypatch.setattr(v7, "MAX_POSITIONS", 16)  # 2 rows x 20 tokens: three segments
    model = _model("7")
    toks = _tokens(2, 20)
    want, want_state = model.forward(toks, all_logits=True)
    state = model.new_state(2)
    got, _ = model.forward(toks, state, all_logits=True, inplace=True)
    assert torch.equal(got, want)
    assert all(torch.equal(state.tensors[k], v) for k, v in want_state.tensors.items())


def test_inplace_forward_refuses_a_state_it_would_have_to_convert() -> None:
    model = _model("5.2")
    on_host = model.new_state(2).numpy()  # numpy arrays: forward would convert, so nothing to update in place
    with pytest.raises(StateError, match="inplace"):
        model.forward([[1], [2]], on_host, inplace=True)
    assert all(not a.any() for a in on_host.tensors.values())


class _NoInplace:
    """The same model seen through the plain backend protocol (no ``inplace`` keyword)."""

    def __init__(self, model: TorchModel) -> None:
        self.model = model

    def new_state(self, batch_size: int = 1):
        return self.model.new_state(batch_size)

    def forward(self, tokens: Any, state: State | None = None):
        return self.model.forward(tokens, state)


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_generate_decodes_in_place_without_touching_callers_state(version: str) -> None:
    from rwkv_music.sampling import SamplingConfig, generate
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous
    from rwkv_music.sampling.generate import decode_kwargs

    model = _model(version)
    assert decode_kwargs(model) == {"inplace": True} and decode_kwargs(_NoInplace(model)) == {}
    start = model.forward([[5, 6, 7]])[1]
    before = {k: t.clone() for k, t in start.tensors.items()}
    prompts = [[1, 2], [3], [4, 5, 6]]
    kw = dict(max_new_tokens=12, seeds=[1, 2, 3], stop_tokens=[0], state=start)
    fast = generate(model, prompts, processors=SamplingConfig(top_k=5).build_processors(), **kw)
    plain = generate(_NoInplace(model), prompts, processors=SamplingConfig(top_k=5).build_processors(), **kw)
    assert fast.tokens == plain.tokens
    for name, t in fast.state.tensors.items():
        assert torch.equal(t, plain.state.tensors[name]), name
    items = [WorkItem(prompt=p, seed=s, max_new_tokens=12, processors=SamplingConfig(top_k=5).build_processors(),
                      stop_tokens=(0,), state=start) for p, s in zip(prompts, [1, 2, 3])]
    cont = sorted(generate_continuous(model, items, batch_size=2), key=lambda r: r.index)
    assert [r.tokens for r in cont] == fast.tokens
    alone = list(generate_continuous(model, items[1:2], batch_size=1))  # a one-token prompt joins as is
    assert alone[0].tokens == fast.tokens[1]
    for name, t in start.tensors.items():  # the caller's state was never written
        assert torch.equal(t, before[name]), name
