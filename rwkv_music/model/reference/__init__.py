"""The plain RWKV math, one token at a time: the spec the fast paths are tested against.

One module per generation (:mod:`.v4`, :mod:`.v5` for 5.0/5.1/5.2, :mod:`.v6`, :mod:`.v7` for 7 and
7a), each a handful of short functions named after the block parts of docs/formats.md A7, in
float64, reading the raw BlinkDL state dict by name.  Nothing is fused, folded or batched: the
torch fast paths (``rwkv_music.model.v4`` … ``v7``), the ONNX and ncnn graphs and the training
model must all agree with :func:`reference_forward`.

Example::

    sd = torch.load("model.pth")
    logits, state = reference_forward(sd, None, [2, 83, 58])       # logits [3, V] float64
    more, state = reference_forward(sd, None, [50], state)          # continue from the state
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.detect import config_from_state_dict
from rwkv_music.model.reference import v4, v5, v6, v7
from rwkv_music.model.reference.common import DTYPE, Weights
from rwkv_music.model.state import State

_BY_FAMILY: dict[int, ModuleType] = {4: v4, 5: v5, 6: v6, 7: v7}


def module_for(config: RWKVConfig) -> ModuleType:
    """The reference module that runs ``config.version``."""
    return _BY_FAMILY[config.version.family]


def reference_forward(
    state_dict: Mapping[str, Any], config: RWKVConfig | None, tokens: Sequence[int], state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``tokens`` (one sequence) token by token: (logits [T, V] float64, the state after them).

    ``config`` is read from the state dict when None.  ``state`` is a one-row :class:`State` of any
    backend and dtype (``None``: the model's initial state); it is not modified.  The returned
    State holds float64 torch tensors with the usual ``[n_layer, 1, ...]`` layout (A8).
    """
    config = config if config is not None else config_from_state_dict(state_dict)
    module = module_for(config)
    w = Weights(state_dict)
    per_layer = module.zero_state(w, config) if state is None else _unbatched(state)
    logits = [module.step(w, config, int(token), per_layer) for token in tokens]
    out = torch.stack(logits) if logits else torch.zeros(0, config.vocab_size, dtype=DTYPE)
    return out, State(config.version, {name: t.unsqueeze(1) for name, t in per_layer.items()})


def _unbatched(state: State) -> dict[str, torch.Tensor]:
    """A one-row State's tensors as float64 copies without the batch axis."""
    if state.batch_size != 1:
        raise ValueError(f"reference_forward runs one sequence; the state has {state.batch_size} rows")
    out = {}
    for name, t in state.tensors.items():
        arr = t.detach().cpu() if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t))
        out[name] = arr[:, 0].to(DTYPE).clone()
    return out


__all__ = ["module_for", "reference_forward"]
