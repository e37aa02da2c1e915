"""RWKV-5.0, 5.1 and 5.2, one token at a time (docs/formats.md A3 v5 rows, A6, A7 "v5.x time mix", A8).

Each head keeps a matrix ``S[key j, value i]`` (the rwkv package's layout, A8).  Per token,
``y_i = Σ_j r_j (u_j k_j v_i + S[j, i])`` and then ``S[j, i] ← k_j v_i + w_j S[j, i]``: the decay
acts along the key axis.  The sub-versions differ only in their parameters: 5.0/5.1 store one
decay and one bonus per head (5.2 one per channel), and 5.1/5.2 add a silu gate.  The channel mix
is v4's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.reference.common import Weights, embed, group_norm_heads, head, lerp_shift, ln, zero_matrix_state
from rwkv_music.model.reference.v4 import channel_mix


def zero_state(w: Weights, config: RWKVConfig) -> dict[str, torch.Tensor]:
    """Zero shift vectors and zero matrices (docs/formats.md A8)."""
    return zero_matrix_state(config)


def decay_and_bonus(w: Weights, p: str, config: RWKVConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, u) as [H, N]: w = exp(-exp(time_decay)); u = exp(time_first) or time_faaaa as is (A6).

    5.0/5.1 store one value per head; it is the same for every channel of that head.
    """
    H, N = config.n_head, config.head_size
    decay = torch.exp(-torch.exp(w.vec(p + "time_decay")))
    u = torch.exp(w.vec(p + "time_first")) if p + "time_first" in w else w.vec(p + "time_faaaa")
    return decay.view(H, -1).expand(H, N), u.view(H, -1).expand(H, N)


def wkv(S: torch.Tensor, decay: torch.Tensor, u: torch.Tensor, r: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v5 steps 3–5 for all heads: vectors [..., H, N], S [..., H, N(key), N(value)] → (y, S').

    Leading axes broadcast (the tests run a batch through it).
    """
    kv = k[..., :, None] * v[..., None, :]  # step 3: a[j, i] = k_j v_i
    y = (r[..., None, :] @ (u[..., :, None] * kv + S))[..., 0, :]  # step 4, reads the old S
    return y, kv + decay[..., :, None] * S  # step 5


def time_mix(w: Weights, config: RWKVConfig, i: int, xx: torch.Tensor, sx: torch.Tensor,
             S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v5.x time mix of the LN1 output ``xx``: (out, S')."""
    H = config.n_head
    p = f"blocks.{i}.att."
    rx = lerp_shift(xx, sx, w.vec(p + "time_mix_r"))  # step 1
    kx = lerp_shift(xx, sx, w.vec(p + "time_mix_k"))
    vx = lerp_shift(xx, sx, w.vec(p + "time_mix_v"))
    r = w(p + "receptance.weight") @ rx  # step 2: no sigmoid on r in v5
    k = w(p + "key.weight") @ kx
    v = w(p + "value.weight") @ vx
    decay, u = decay_and_bonus(w, p, config)
    y, S = wkv(S, decay, u, r.view(H, -1), k.view(H, -1), v.view(H, -1))
    out = group_norm_heads(y.flatten(), H, w.vec(p + "ln_x.weight"), w.vec(p + "ln_x.bias"))  # step 6
    if config.version != "5.0":  # 5.1 and 5.2 gate the output
        out = out * F.silu(w(p + "gate.weight") @ lerp_shift(xx, sx, w.vec(p + "time_mix_g")))
    return w(p + "output.weight") @ out, S


def step(w: Weights, config: RWKVConfig, token: int, state: dict[str, torch.Tensor],
         time_mix: Callable[..., tuple[torch.Tensor, torch.Tensor]] = time_mix,
         channel_mix: Callable[..., torch.Tensor] = channel_mix) -> torch.Tensor:
    """Logits [V] for ``token``; ``state`` (this module's layout) is updated in place.

    v6 runs this same loop with its own ``time_mix`` and ``channel_mix``.
    """
    s = state
    x = embed(w, token)
    for i in range(config.n_layer):
        xx = ln(w, i, "ln1", x)
        out, s["att_kv"][i] = time_mix(w, config, i, xx, s["att_x"][i], s["att_kv"][i])
        s["att_x"][i] = xx
        x = x + out
        xx = ln(w, i, "ln2", x)
        x = x + channel_mix(w, i, xx, s["ffn_x"][i])
        s["ffn_x"][i] = xx
    return head(w, x)
