"""RWKV-4, one token at a time (docs/formats.md A3 v4 row, A7 "v4 time mix", A8).

The time mix keeps, per channel, a numerator ``aa`` and a denominator ``bb`` of exponentially
decayed sums of past values, both scaled by ``e^{-pp}`` where ``pp`` is the largest exponent seen:
that running maximum is what keeps the exponentials finite.  The channel mix is shared with v5.
"""

from __future__ import annotations

import torch

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.reference.common import DTYPE, Weights, embed, head, lerp_shift, ln, relu_squared_ffn
from rwkv_music.model.state import V4_INIT_P

STATE_NAMES = ("att_x", "att_a", "att_b", "att_p", "ffn_x")


def zero_state(w: Weights, config: RWKVConfig) -> dict[str, torch.Tensor]:
    """[L, C] shift vectors, [L, A] sums; ``pp`` starts at -1e30 ("no past yet", docs/formats.md A8)."""
    L, C, A = config.n_layer, config.n_embd, config.dim_att
    state = {name: torch.zeros(L, C if name.endswith("_x") else A, dtype=DTYPE) for name in STATE_NAMES}
    state["att_p"].fill_(V4_INIT_P)
    return state


def time_mix(w: Weights, i: int, xx: torch.Tensor, sx: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
             pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A7 v4 time mix of the LN1 output ``xx`` (``sx``: the previous one): (out, aa', bb', pp')."""
    p = f"blocks.{i}.att."
    kx = lerp_shift(xx, sx, w.vec(p + "time_mix_k"))  # step 1
    vx = lerp_shift(xx, sx, w.vec(p + "time_mix_v"))
    rx = lerp_shift(xx, sx, w.vec(p + "time_mix_r"))
    r = torch.sigmoid(w(p + "receptance.weight") @ rx)  # step 2
    k = w(p + "key.weight") @ kx
    v = w(p + "value.weight") @ vx
    u = w.vec(p + "time_first")  # log-domain bonus of the current token
    decay = -torch.exp(w.vec(p + "time_decay"))  # log of the per-step decay (A6)

    # step 3: output; the current token enters with weight e^{u+k}, the past with e^{pp}
    q = torch.maximum(pp, u + k)
    e_past, e_now = torch.exp(pp - q), torch.exp(u + k - q)
    wkv = (e_past * aa + e_now * v) / (e_past * bb + e_now)

    # step 4: state; the past decays by e^{decay}, the current token joins with e^{k}
    q = torch.maximum(pp + decay, k)
    e_past, e_now = torch.exp(pp + decay - q), torch.exp(k - q)
    aa, bb, pp = e_past * aa + e_now * v, e_past * bb + e_now, q
    return w(p + "output.weight") @ (r * wkv), aa, bb, pp  # step 5


def channel_mix(w: Weights, i: int, xx: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """A7 v4/v5 channel mix: σ(Wr·rx) ⊙ Wv·relu²(Wk·kx)."""
    p = f"blocks.{i}.ffn."
    kx = lerp_shift(xx, sx, w.vec(p + "time_mix_k"))
    rx = lerp_shift(xx, sx, w.vec(p + "time_mix_r"))
    return relu_squared_ffn(w, p, kx, rx)


def step(w: Weights, config: RWKVConfig, token: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [V] for ``token``; ``state`` (this module's layout) is updated in place."""
    s = state
    x = embed(w, token)
    for i in range(config.n_layer):
        xx = ln(w, i, "ln1", x)
        out, s["att_a"][i], s["att_b"][i], s["att_p"][i] = time_mix(
            w, i, xx, s["att_x"][i], s["att_a"][i], s["att_b"][i], s["att_p"][i])
        s["att_x"][i] = xx  # token shift stores the LN output, not the residual (A7)
        x = x + out
        xx = ln(w, i, "ln2", x)
        x = x + channel_mix(w, i, xx, s["ffn_x"][i])
        s["ffn_x"][i] = xx
    return head(w, x)
