"""Pieces every reference version shares: reading weights, the norms, the embedding and the head.

Everything is float64 and one token of one sequence at a time: these functions are the spec,
written to be read, not to be fast.  Matrices are used as stored (``[out, in]``, so ``y = W @ x``);
LoRA factors are stored ``[in, D]`` / ``[D, out]`` and used as ``x @ W1 @ W2`` (docs/formats.md A3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rwkv_music.errors import CheckpointError
from rwkv_music.model.constants import GN_EPS, LN_EPS

DTYPE = torch.float64


class Weights:
    """A raw BlinkDL state dict read by name, each tensor as float64 in its stored layout."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._sd = state_dict

    def __contains__(self, name: str) -> bool:
        return name in self._sd

    def __call__(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as stored (e.g. ``[out, in]`` for a matrix)."""
        try:
            t = self._sd[name]
        except KeyError:
            raise CheckpointError(f"checkpoint: missing key {name!r}") from None
        return torch.as_tensor(t).detach().to(device="cpu", dtype=DTYPE)

    def vec(self, name: str) -> torch.Tensor:
        """A vector stored as ``[1, 1, C]``, ``[H, N]`` or ``[C]``, flattened to ``[C]``."""
        return self(name).flatten()


def zero_matrix_state(config: Any) -> dict[str, torch.Tensor]:
    """The v5–v7 state with no batch axis: shift vectors [L, C] and one matrix per head [L, H, N, N] (A8)."""
    L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
    return {"att_x": torch.zeros(L, C, dtype=DTYPE), "att_kv": torch.zeros(L, H, N, N, dtype=DTYPE),
            "ffn_x": torch.zeros(L, C, dtype=DTYPE)}


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """LayerNorm over the last axis: biased variance, eps inside the root (docs/formats.md A9)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def group_norm_heads(y: torch.Tensor, n_head: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The ``ln_x`` GroupNorm of v5–v7: each head's N values normalised on their own, then the
    per-channel affine; eps 64e-5 (= 1e-5 · 8², the trainers' head_size_divisor, docs/formats.md A9)."""
    heads = y.view(n_head, -1)
    ones, zeros = torch.ones(heads.shape[-1], dtype=y.dtype), torch.zeros(heads.shape[-1], dtype=y.dtype)
    return layer_norm(heads, ones, zeros, GN_EPS).flatten() * weight + bias


def embed(w: Weights, token: int) -> torch.Tensor:
    """The residual stream's start: the token's embedding row through ``blocks.0.ln0``.

    Fast paths fold ln0 into the whole table at load time (docs/formats.md A6); here it is simply
    applied to the one row, which is the same number.
    """
    return layer_norm(w("emb.weight")[token], w.vec("blocks.0.ln0.weight"), w.vec("blocks.0.ln0.bias"))


def head(w: Weights, x: torch.Tensor) -> torch.Tensor:
    """Logits [V] from the residual ``x``: ``ln_out`` then the output matrix (docs/formats.md A7)."""
    return w("head.weight") @ layer_norm(x, w.vec("ln_out.weight"), w.vec("ln_out.bias"))


def ln(w: Weights, layer: int, which: str, x: torch.Tensor) -> torch.Tensor:
    """``blocks.{layer}.{which}`` LayerNorm (``which`` is "ln1" before the time mix, "ln2" before the channel mix)."""
    p = f"blocks.{layer}.{which}."
    return layer_norm(x, w.vec(p + "weight"), w.vec(p + "bias"))


def lerp_shift(xx: torch.Tensor, sx: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """v4/v5 token shift: ``mix`` of the current LN output plus ``1 - mix`` of the previous one."""
    return xx * mix + sx * (1 - mix)


def relu_squared_ffn(w: Weights, p: str, kx: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """The v4–v6 channel mix after its token shift: σ(Wr·rx) ⊙ Wv·relu²(Wk·kx) (docs/formats.md A7)."""
    k = torch.relu(w(p + "key.weight") @ kx) ** 2
    return torch.sigmoid(w(p + "receptance.weight") @ rx) * (w(p + "value.weight") @ k)
