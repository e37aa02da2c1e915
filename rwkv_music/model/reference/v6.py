"""RWKV-6.0 ("x060"), one token at a time (docs/formats.md A3 v6 row, A6, A7 "v6.0 time mix", A8).

v6 keeps v5.2's per-head matrix ``S[key j, value i]`` and its update, but both the token-shift
mixes and the decay now depend on the token: a small LoRA reads the shifted input and offsets
the five mixes (w, k, v, r, g), and another LoRA offsets ``time_decay``.  A state-tuned checkpoint
carries its own starting S per layer (``att.time_state``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.reference import v5
from rwkv_music.model.reference.common import Weights, group_norm_heads, relu_squared_ffn, zero_matrix_state

LORA_ROWS = ("w", "k", "v", "r", "g")  # the order of time_maa_w2's five rows (A3 notes)


def zero_state(w: Weights, config: RWKVConfig) -> dict[str, torch.Tensor]:
    """Zero shift vectors; S is zero, or ``att.time_state`` where the checkpoint has it.

    ``time_state`` is stored ``[H, value, key]``; S here is ``[H, key, value]`` (A6, A8).
    """
    state = zero_matrix_state(config)
    H, N = config.n_head, config.head_size
    for i in range(config.n_layer):
        name = f"blocks.{i}.att.time_state"
        if name in w:
            state["att_kv"][i] = w(name).view(H, N, N).transpose(-1, -2)
    return state


def time_mix(w: Weights, config: RWKVConfig, i: int, xx: torch.Tensor, sx: torch.Tensor,
             S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v6 time mix of the LN1 output ``xx``: (out, S')."""
    H = config.n_head
    p = f"blocks.{i}.att."
    d = sx - xx  # step 1: how the previous token differs
    lora_in = torch.tanh((xx + d * w.vec(p + "time_maa_x")) @ w(p + "time_maa_w1"))  # [5·Dm]
    offsets = lora_in.view(5, 1, -1) @ w(p + "time_maa_w2")  # [5, 1, C]: one offset per mix
    mixed = {n: xx + d * (w.vec(f"{p}time_maa_{n}") + offsets[j, 0]) for j, n in enumerate(LORA_ROWS)}  # step 2
    r = w(p + "receptance.weight") @ mixed["r"]  # step 3
    k = w(p + "key.weight") @ mixed["k"]
    v = w(p + "value.weight") @ mixed["v"]
    g = F.silu(w(p + "gate.weight") @ mixed["g"])
    log_neg_log_w = w.vec(p + "time_decay") + torch.tanh(mixed["w"] @ w(p + "time_decay_w1")) @ w(p + "time_decay_w2")
    decay = torch.exp(-torch.exp(log_neg_log_w))  # step 4: per channel, per token
    u = w(p + "time_faaaa").view(H, -1)
    y, S = v5.wkv(S, decay.view(H, -1), u, r.view(H, -1), k.view(H, -1), v.view(H, -1))  # step 5 (as v5.2)
    out = group_norm_heads(y.flatten(), H, w.vec(p + "ln_x.weight"), w.vec(p + "ln_x.bias")) * g
    return w(p + "output.weight") @ out, S


def channel_mix(w: Weights, i: int, xx: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """A7 v6 channel mix: v4's, with the mixes written as ``xx + (sx - xx)·maa``."""
    p = f"blocks.{i}.ffn."
    d = sx - xx
    return relu_squared_ffn(w, p, xx + d * w.vec(p + "time_maa_k"), xx + d * w.vec(p + "time_maa_r"))


def step(w: Weights, config: RWKVConfig, token: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [V] for ``token``: v5's block loop with v6's two mixes; ``state`` is updated in place."""
    return v5.step(w, config, token, state, time_mix, channel_mix)
