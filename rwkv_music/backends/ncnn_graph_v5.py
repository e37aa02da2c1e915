"""ncnn layers for one RWKV-5.0/5.1/5.2 or RWKV-6 block (docs/formats.md A6, A7).

Per head the state is ``S[key j, value i]`` (the rwkv package's layout, A8), one ``[B, H, N, N]``
blob per layer.  One token:

    y_i = Σ_j r_j S[j, i] + (Σ_j r_j u_j k_j) v_i      → MatMul([B,H,1,N], S) + a rank-1 term
    S'  = w_j S[j, i] + k_j v_i                        → S ⊙ w[B|1,H,N,1] + k[B,H,N,1] ⊙ v[B,H,1,N]

then GroupNorm over each head (a LayerNorm without affine over the innermost N, eps 64e-5, then
the ``ln_x`` affine over A), the 5.1/5.2/6 gate ``silu(Wg·gx)``, and the output projection.
v5.0/5.1 store one decay and bonus per head; they are broadcast to ``[H, N]`` at export.  v6
computes its decay per token from a LoRA: ``w = exp(-exp(td + tanh(wx·Dw1)·Dw2))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.ncnn_graph import EXP, NEG, R_SUM, NcnnGraph
from rwkv_music.backends.ncnn_graph_v4 import channel_mix_v4, pre_norm, state_in, state_out
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import GN_EPS

V6_MIX_ORDER = "wkvrg"  # rows of time_maa_w2 (docs/formats.md A3 notes)


def wkv5(g: NcnnGraph, cfg: RWKVConfig, i: int, r: str, k: str, v: str, u: np.ndarray, decay: str,
         per_token: bool = False) -> str:
    """The per-head recurrence above over ``g.seq_len`` steps; returns y as [B*T, A].

    ``decay`` is a ``[1, H, N, 1]`` constant, or with ``per_token`` (v6) a ``[B*T, A]`` blob."""
    H, N, A = cfg.n_head, cfg.head_size, cfg.dim_att
    T = g.seq_len
    S = state_in(g, "att_kv", i)
    # the bonus term needs no state: Σ_j r_j u_j k_j for all T tokens at once
    ruk = g.reduce_last(R_SUM, g.reshape(g.mul(g.mul(r, g.row(u.reshape(-1))), k), [-1, H, N]))  # [B*T, H, 1]
    decays = g.time_steps(decay, A) if per_token else [decay] * T
    ys = []
    for t, (rt, kt, vt, rukt) in enumerate(zip(g.time_steps(r, A), g.time_steps(k, A), g.time_steps(v, A),
                                               g.time_steps(ruk, H))):
        v_row = g.reshape(vt, [-1, H, 1, N])
        y = g.matmul(g.reshape(rt, [-1, H, 1, N]), S)  # Σ_j r_j S[j, i]
        y = g.add_(y, g.mul(g.reshape(rukt, [-1, H, 1, 1]), v_row))
        kv = g.mul(g.reshape(kt, [-1, H, N, 1]), v_row)
        dt = g.reshape(decays[t], [-1, H, N, 1]) if per_token else decays[t]
        S = g.add_(g.mul(S, dt), kv, out=state_out("att_kv", i) if t == T - 1 else None)
        ys.append(g.reshape(y, [-1, A]))
    return g.time_join(ys, A)


def group_norm(g: NcnnGraph, w: Weights, cfg: RWKVConfig, a: str, y: str) -> str:
    """GroupNorm with one group per head (A9 eps 64e-5) and the ``ln_x`` affine; y [B, A]."""
    H, N, A = cfg.n_head, cfg.head_size, cfg.dim_att
    y = g.layer_norm(g.reshape(y, [-1, H, N]), None, None, N, GN_EPS)
    y = g.mul(g.reshape(y, [-1, A]), g.row(w.get(a + "ln_x.weight")))
    return g.add_(y, g.row(w.get(a + "ln_x.bias")))


def time_mix_v5(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str) -> str:
    a = f"blocks.{i}.att."
    gated = cfg.version != "5.0"
    xx, sx = pre_norm(g, w, i, "ln1", x, "att_x")
    d = g.sub(xx, sx)
    names = ("r", "k", "v") + (("g",) if gated else ())
    mixed = {n: g.lerp(sx, d, g.row(w.get(a + f"time_mix_{n}"))) for n in names}
    proj = {"r": "receptance", "k": "key", "v": "value", "g": "gate"}
    r, k, v = (g.linear(mixed[n], w.get(a + proj[n] + ".weight")) for n in "rkv")
    u, decay = w.v5_bonus_decay(cfg, a)
    assert decay is not None
    decay_blob = g.const(decay.reshape(1, cfg.n_head, cfg.head_size, 1))
    y = group_norm(g, w, cfg, a, wkv5(g, cfg, i, r, k, v, u, decay_blob))
    if gated:
        y = g.mul(y, g.act("Swish", g.linear(mixed["g"], w.get(a + "gate.weight"))))
    return g.add_(x, g.linear(y, w.get(a + "output.weight")))


def time_mix_v6(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str) -> str:
    """docs/formats.md A7 "v6.0 time mix" (data-dependent shift and decay)."""
    a = f"blocks.{i}.att."
    xx, sx = pre_norm(g, w, i, "ln1", x, "att_x")
    dd = g.sub(sx, xx)  # v6 mixes are xx + (sx - xx)·m
    xxx = g.lerp(xx, dd, g.row(w.get(a + "time_maa_x")))
    w1 = w.get(a + "time_maa_w1")  # [C, 5·Dm]
    w2 = w.get(a + "time_maa_w2")  # [5, Dm, C]
    Dm = w2.shape[1]
    m = g.act("TanH", g.linear(xxx, w1.T, small=True))
    parts = g.slice_cols(m, [Dm] * 5)
    mixed = {}
    for j, n in enumerate(V6_MIX_ORDER):  # maa_n + m_j·W2[j], the bias carries maa_n
        coef = g.linear(parts[j], w2[j].T, bias=w.get(a + f"time_maa_{n}"), small=True)
        mixed[n] = g.lerp(xx, dd, coef)
    r = g.linear(mixed["r"], w.get(a + "receptance.weight"))
    k = g.linear(mixed["k"], w.get(a + "key.weight"))
    v = g.linear(mixed["v"], w.get(a + "value.weight"))
    gate = g.act("Swish", g.linear(mixed["g"], w.get(a + "gate.weight")))
    lora = g.act("TanH", g.linear(mixed["w"], w.get(a + "time_decay_w1").T, small=True))
    td = g.linear(lora, w.get(a + "time_decay_w2").T, bias=w.get(a + "time_decay").reshape(-1), small=True)
    decay = g.unary(EXP, g.unary(NEG, g.unary(EXP, td)))  # w = exp(-exp(td + ...)) per token
    u, _ = w.v5_bonus_decay(cfg, a)
    y = group_norm(g, w, cfg, a, wkv5(g, cfg, i, r, k, v, u, decay, per_token=True))
    return g.add_(x, g.linear(g.mul(y, gate), w.get(a + "output.weight")))


def block_v5(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    x = time_mix_v5(g, w, cfg, i, x)
    return channel_mix_v4(g, w, i, x)


def block_v6(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    x = time_mix_v6(g, w, cfg, i, x)
    return channel_mix_v4(g, w, i, x, ("time_maa_k", "time_maa_r"), maa=True)
