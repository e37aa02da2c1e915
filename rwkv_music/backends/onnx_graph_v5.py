"""RWKV-5.0/5.1/5.2 and RWKV-6 blocks as ONNX nodes (docs/formats.md A6, A7).

Both families share the per-head WKV recurrence with S[h, key j, value i] (the rwkv package's
layout, A8):  ``y = r·(u⊙(kᵀv) + S)``, ``S ← kᵀv + w⊙S``, the decay acting along the key index.
r, k, v, w and S are fp32 (A10).  v5 decays are constants (a scalar per head for 5.0/5.1, per key
channel for 5.2); v6 computes one per token and channel, so it becomes a second scanned input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.onnx_graph_common import GraphBuilder, channel_mix_v4, channel_mix_v6
from rwkv_music.model.config import RWKVConfig

STATE_NAMES = ("att_x", "att_kv", "ffn_x")


def _heads_rows_cols(b: GraphBuilder, cfg: RWKVConfig, r: str, k: str, v: str) -> tuple[str, str, str]:
    """fp32 r, k, v [B,T,A] → r as rows [B,T,H,1,N], k as columns [B,T,H,N,1], v as rows."""
    H, N = cfg.n_head, cfg.head_size
    row, col = [0, 0, H, 1, N], [0, 0, H, N, 1]
    return b.reshape(r, row), b.reshape(k, col), b.reshape(v, row)


def _wkv(
    b: GraphBuilder, cfg: RWKVConfig, i: int, S0: str, r: str, k: str, v: str, u: str, w: str, w_per_token: bool
) -> tuple[str, str]:
    """Scan the v5/v6 recurrence; returns (final S [B,H,N,N], y [B,T,A] fp32)."""
    r_row, k_col, v_row = _heads_rows_cols(b, cfg, r, k, v)
    f32 = np.float32

    def step(s: GraphBuilder, state: list[str], xs: list[str]) -> tuple[list[str], list[str]]:
        (S,) = state
        rt, kt, vt = xs[:3]
        wt = xs[3] if w_per_token else w
        kv = s.mul(kt, vt)  # a[j,i] = k_j v_i  [B,H,N,N]
        y = s.matmul(rt, s.add(s.mul(u, kv), S))  # [B,H,1,N]
        return [s.add(kv, s.mul(wt, S))], [y]

    inputs = [(r_row, f32), (k_col, f32), (v_row, f32)]
    if w_per_token:
        inputs.append((b.reshape(w, [0, 0, cfg.n_head, cfg.head_size, 1]), f32))
    (S,), (y,) = b.scan(step, [(S0, f32)], inputs, 1, [f32], f"l{i}_wkv")
    return S, b.reshape(y, [0, 0, cfg.dim_att])


def block_v5(
    b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, x: str, st: dict[str, str], ctx: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """One v5.x layer: ``x`` [B,T,C] → ``x``; ``st`` holds this layer's state slices."""
    p = f"blocks.{i}."
    a = p + "att."
    gated = cfg.version in ("5.1", "5.2")
    xx = b.layer_norm(x, w.get(p + "ln1.weight"), w.get(p + "ln1.bias"), f"l{i}_ln1")
    sx = b.token_shift(xx, st["att_x"])
    kx = b.lerp_mix(xx, sx, w.get(a + "time_mix_k"), "mk")
    vx = b.lerp_mix(xx, sx, w.get(a + "time_mix_v"), "mv")
    rx = b.lerp_mix(xx, sx, w.get(a + "time_mix_r"), "mr")
    r = b.to_f32(b.matmul(rx, b.init(w.get(a + "receptance.weight").T, "Wr")))
    k = b.to_f32(b.matmul(kx, b.init(w.get(a + "key.weight").T, "Wk")))
    v = b.to_f32(b.matmul(vx, b.init(w.get(a + "value.weight").T, "Wv")))
    u, decay = w.v5_bonus_decay(cfg, a)  # [H, N] over key channels, broadcast over values
    S, y = _wkv(b, cfg, i, st["att_kv"], r, k, v, b.f32(u[..., None], "u"), b.f32(decay[..., None], "w"), False)
    out = b.to_act(b.group_norm_heads(y, cfg.n_head, cfg.head_size, w.get(a + "ln_x.weight"), w.get(a + "ln_x.bias")))
    if gated:
        gx = b.lerp_mix(xx, sx, w.get(a + "time_mix_g"), "mg")
        out = b.mul(out, b.silu(b.matmul(gx, b.init(w.get(a + "gate.weight").T, "Wg"))))
    x = b.add(x, b.matmul(out, b.init(w.get(a + "output.weight").T, "Wo")))

    xx2 = b.layer_norm(x, w.get(p + "ln2.weight"), w.get(p + "ln2.bias"), f"l{i}_ln2")
    x = b.add(x, channel_mix_v4(b, w, p + "ffn.", xx2, b.token_shift(xx2, st["ffn_x"])))
    return x, {"att_x": b.last(xx), "att_kv": S, "ffn_x": b.last(xx2)}


def block_v6(
    b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, x: str, st: dict[str, str], ctx: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """One v6.0 layer (data-dependent token shift and decay, A7)."""
    p = f"blocks.{i}."
    a = p + "att."
    C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
    xx = b.layer_norm(x, w.get(p + "ln1.weight"), w.get(p + "ln1.bias"), f"l{i}_ln1")
    sx = b.token_shift(xx, st["att_x"])
    d = b.sub(sx, xx)
    xxx = b.add(xx, b.mul(d, b.init(w.get(a + "time_maa_x"), "maa_x")))
    w1 = w.get(a + "time_maa_w1")  # [C, 5*Dm]
    w2 = w.get(a + "time_maa_w2", squeeze=False)  # [5, Dm, C]
    dm = w2.shape[1]
    m = b.op("Tanh", [b.matmul(xxx, b.init(w1, "maa_w1"))])
    m = b.matmul(b.reshape(m, [0, 0, 5, 1, dm]), b.init(w2, "maa_w2"))  # [B,T,5,1,C]
    m = b.reshape(m, [0, 0, 5, C])
    mixed = {}
    for j, name in enumerate(("w", "k", "v", "r", "g")):  # row order of time_maa_w2 (A3 notes)
        offset = b.add(b.init(w.get(a + f"time_maa_{name}"), f"maa_{name}"), b.gather(m, j, axis=2))
        mixed[name] = b.add(xx, b.mul(d, offset))
    r = b.to_f32(b.matmul(mixed["r"], b.init(w.get(a + "receptance.weight").T, "Wr")))
    k = b.to_f32(b.matmul(mixed["k"], b.init(w.get(a + "key.weight").T, "Wk")))
    v = b.to_f32(b.matmul(mixed["v"], b.init(w.get(a + "value.weight").T, "Wv")))
    g = b.silu(b.matmul(mixed["g"], b.init(w.get(a + "gate.weight").T, "Wg")))
    ww = b.op("Tanh", [b.matmul(mixed["w"], b.init(w.get(a + "time_decay_w1"), "td_w1"))])
    ww = b.to_f32(b.matmul(ww, b.init(w.get(a + "time_decay_w2"), "td_w2")))
    ww = b.add(b.f32(w.get(a + "time_decay").reshape(-1), "td"), ww)
    decay = b.op("Exp", [b.op("Neg", [b.op("Exp", [ww])])])  # w = exp(-exp(.)) [B,T,A] f32
    u = b.f32(w.v5_bonus_decay(cfg, a)[0][..., None], "u")
    S, y = _wkv(b, cfg, i, st["att_kv"], r, k, v, u, decay, True)
    out = b.to_act(b.group_norm_heads(y, H, N, w.get(a + "ln_x.weight"), w.get(a + "ln_x.bias")))
    x = b.add(x, b.matmul(b.mul(out, g), b.init(w.get(a + "output.weight").T, "Wo")))

    xx2 = b.layer_norm(x, w.get(p + "ln2.weight"), w.get(p + "ln2.bias"), f"l{i}_ln2")
    x = b.add(x, channel_mix_v6(b, w, p + "ffn.", xx2, b.token_shift(xx2, st["ffn_x"])))
    return x, {"att_x": b.last(xx), "att_kv": S, "ffn_x": b.last(xx2)}
