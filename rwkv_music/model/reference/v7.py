"""RWKV-7 ("x070") and RWKV-7a (DeepEmbed), one token at a time (docs/formats.md A3 v7 rows, A6, A7, A8).

Each head keeps ``S[value i, key j]`` (A8: the layout every RWKV-7 implementation uses).  The
update is a "delta rule": ``S ← S·diag(w) − (S·kk)(kk⊙a)ᵀ + v·kᵀ`` removes part of what S
currently returns for the normalised key ``kk`` before writing the new value under ``k``.  Layer 0's
value (``v_first``) is mixed into every later layer's value; it lives within one token's pass only.
7a adds a per-token gate to the channel mix, read from an extra embedding table per layer.
"""

from __future__ import annotations

import torch

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import V7_DECAY_SCALE
from rwkv_music.model.reference.common import Weights, embed, group_norm_heads, head, ln, zero_matrix_state

SEMB_SIDE = 32  # 7a: a row of s_emb is a 32×32 matrix (A3 v7a row)


def zero_state(w: Weights, config: RWKVConfig) -> dict[str, torch.Tensor]:
    """Zero shift vectors and zero matrices (docs/formats.md A8)."""
    return zero_matrix_state(config)


def wkv_step(S: torch.Tensor, decay: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kk: torch.Tensor,
             a: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v7 step 8 for every head: vectors [..., H, N], S [..., H, N(value), N(key)] → (y, S').

    Every term reads the old S; y is read from the new one.  Leading axes broadcast, so the
    training code can run its batch through this same function.
    """
    removed = S @ kk[..., :, None]  # what S returns for kk now: [..., H, N(value), 1]
    S = S * decay[..., None, :] - removed @ (kk * a)[..., None, :] + v[..., :, None] @ k[..., None, :]
    return (S @ r[..., :, None])[..., 0], S


def lora(x: torch.Tensor, w: Weights, p: str, name: str) -> torch.Tensor:
    """The low-rank product ``x·{name}1·{name}2`` (without bias or squashing)."""
    return (x @ w(f"{p}{name}1")) @ w(f"{p}{name}2")


def time_mix(w: Weights, config: RWKVConfig, i: int, xx: torch.Tensor, sx: torch.Tensor, S: torch.Tensor,
             v_first: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A7 v7 time mix of the LN1 output ``xx``: (out, S', v_first)."""
    H = config.n_head
    p = f"blocks.{i}.att."
    d = sx - xx  # step 1
    xr, xw, xk, xv, xa, xg = (xx + d * w.vec(f"{p}x_{n}") for n in ("r", "w", "k", "v", "a", "g"))
    r = w(p + "receptance.weight") @ xr  # step 2
    k = w(p + "key.weight") @ xk
    v = w(p + "value.weight") @ xv
    w_raw = torch.tanh(xw @ w(p + "w1")) @ w(p + "w2")  # step 3
    a = torch.sigmoid(w.vec(p + "a0") + lora(xa, w, p, "a"))  # in-context learning rate per channel
    g = torch.sigmoid(xg @ w(p + "g1")) @ w(p + "g2")  # no sigmoid after g2
    kk = (k * w.vec(p + "k_k")).view(H, -1)  # step 4: unit key per head, taken before step 5
    kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k * (1 + (a - 1) * w.vec(p + "k_a"))  # step 5
    if v_first is None:  # step 6: layer 0 hands its value to every later layer
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(w.vec(p + "v0") + lora(xv, w, p, "v"))
    decay = torch.exp(-V7_DECAY_SCALE * torch.sigmoid(w.vec(p + "w0") + w_raw))  # step 7: every w lies in (0.545, 1)
    y, S = wkv_step(S, decay.view(H, -1), k.view(H, -1), v.view(H, -1), kk, a.view(H, -1), r.view(H, -1))  # step 8
    y = group_norm_heads(y.flatten(), H, w.vec(p + "ln_x.weight"), w.vec(p + "ln_x.bias"))  # step 9
    bonus = (r * k * w.vec(p + "r_k")).view(H, -1).sum(-1, keepdim=True) * v.view(H, -1)  # the current token
    y = y + bonus.flatten()
    return w(p + "output.weight") @ (y * g), S, v_first  # step 10


def channel_mix(w: Weights, i: int, xx: torch.Tensor, sx: torch.Tensor, token: int) -> torch.Tensor:
    """A7 v7 channel mix (no receptance); 7a gates the hidden units with DeepEmbed."""
    p = f"blocks.{i}.ffn."
    kx = xx + (sx - xx) * w.vec(p + "x_k")
    k = torch.relu(w(p + "key.weight") @ kx) ** 2
    if p + "s_emb.weight" in w:  # 7a
        k = k * deep_embed_gate(w, p, xx, token)
    return w(p + "value.weight") @ k


def deep_embed_gate(w: Weights, p: str, xx: torch.Tensor, token: int) -> torch.Tensor:
    """7a: ``(xx·s1)·M·s2 + s0`` with M the token's 32×32 matrix (A7 "v7a channel mix").

    M is ``s_emb[token] + s_emb_x·e`` with e the token's ln0-normalised embedding (A6: the rwkv
    package folds this product into ``s_emb`` at load time, with the folded embedding).  The gate
    reads ``xx``, the LN2 output, not the shifted mix.
    """
    e = embed(w, token)
    row = w(p + "s_emb.weight")[token] + w(p + "s_emb_x.weight") @ e
    s = (xx @ w(p + "s1")) @ row.view(SEMB_SIDE, SEMB_SIDE)
    return s @ w(p + "s2") + w.vec(p + "s0")


def step(w: Weights, config: RWKVConfig, token: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [V] for ``token``; ``state`` (this module's layout) is updated in place."""
    s = state
    x = embed(w, token)
    v_first = None
    for i in range(config.n_layer):
        xx = ln(w, i, "ln1", x)
        out, s["att_kv"][i], v_first = time_mix(w, config, i, xx, s["att_x"][i], s["att_kv"][i], v_first)
        s["att_x"][i] = xx
        x = x + out
        xx = ln(w, i, "ln2", x)
        x = x + channel_mix(w, i, xx, s["ffn_x"][i], token)
        s["ffn_x"][i] = xx
    return head(w, x)
