"""ncnn layers for one RWKV-7 block, with the v7a DeepEmbed gate (docs/formats.md A6, A7 "v7 time mix").

The state is ``S[value i, key j]`` per head (A8), one ``[B, H, N, N]`` blob per layer.  One token
(A7 step 8, every term uses the old S):

    S' = S ⊙ w[B,H,1,N] − (S·kk)[B,H,N,1] ⊙ (kk⊙a)[B,H,1,N] + v[B,H,N,1] ⊙ k[B,H,1,N]
    y  = S'·r                                   (MatMul with r as [B,H,N,1])

The four LoRAs (w, a, v, g) are pairs of InnerProducts whose second bias carries w0 / a0 / v0.
``v_first`` (layer 0's value) lives only inside one token's pass; it is a blob handed from block
to block through ``ctx``.
"""

from __future__ import annotations

from typing import Any

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.ncnn_graph import ADD, DIV, EXP, MAX, MUL, R_SUM, R_SUMSQ, SQRT, SQUARE, SUB, NcnnGraph
from rwkv_music.backends.ncnn_graph_v4 import pre_norm, state_in, state_out
from rwkv_music.backends.ncnn_graph_v5 import group_norm
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import V7_DECAY_SCALE

L2_EPS = 1e-12  # A7 step 4: kk / max(‖kk‖₂, 1e-12)
SEMB_SIDE = 32  # v7a: s_emb rows are 32×32 matrices (A3)
_MIXES = ("r", "w", "k", "v", "a", "g")


def _lora(g: NcnnGraph, x: str, w1: Any, w2: Any, mid: str | None = None, bias: Any = None) -> str:
    """``(mid(x·w1))·w2 + bias`` with the trainer's ``w1`` [C, D] and ``w2`` [D, C]."""
    h = g.linear(x, w1.T, small=True)
    if mid is not None:
        h = g.act(mid, h)
    return g.linear(h, w2.T, bias=bias, small=True)


def time_mix(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    a = f"blocks.{i}.att."
    H, N, C = cfg.n_head, cfg.head_size, cfg.n_embd
    xx, sx = pre_norm(g, w, i, "ln1", x, "att_x")
    dd = g.sub(sx, xx)
    m = {n: g.lerp(xx, dd, g.row(w.get(a + f"x_{n}"))) for n in _MIXES}  # step 1
    r = g.linear(m["r"], w.get(a + "receptance.weight"))  # step 2
    k = g.linear(m["k"], w.get(a + "key.weight"))
    v = g.linear(m["v"], w.get(a + "value.weight"))
    wz = _lora(g, m["w"], w.get(a + "w1"), w.get(a + "w2"), "TanH", w.get(a + "w0"))  # step 3
    alpha = g.act("Sigmoid", _lora(g, m["a"], w.get(a + "a1"), w.get(a + "a2"), None, w.get(a + "a0")))
    gate = _lora(g, m["g"], w.get(a + "g1"), w.get(a + "g2"), "Sigmoid")
    # step 4: kk = normalize(k ⊙ k_k) per head
    kk = g.reshape(g.mul(k, g.row(w.get(a + "k_k"))), [-1, H, N])
    norm = g.scalar(MAX, g.unary(SQRT, g.reduce_last(R_SUMSQ, kk)), L2_EPS)
    kk = g.binary(DIV, kk, norm)
    # step 5: k ⊙ (1 + (a − 1) ⊙ k_a)
    k = g.mul(k, g.scalar(ADD, g.mul(g.scalar(SUB, alpha, 1.0), g.row(w.get(a + "k_a"))), 1.0))
    # step 6: value residual
    if i == 0:
        for n in ("v0", "v1", "v2"):
            w.skip(a + n)  # A6: unused in layer 0
        ctx["v_first"] = v
    else:
        mix = g.act("Sigmoid", _lora(g, m["v"], w.get(a + "v1"), w.get(a + "v2"), None, w.get(a + "v0")))
        v = g.lerp(v, g.sub(ctx["v_first"], v), mix)
    # step 7: decay in fp32
    decay = g.unary(EXP, g.scalar(MUL, g.act("Sigmoid", wz), -V7_DECAY_SCALE))
    # step 8: state update and read-out
    S = state_in(g, "att_kv", i)
    T = g.seq_len
    b = g.reshape(g.mul(kk, g.reshape(alpha, [-1, H, N])), [-1, C])  # kk ⊙ a, for all T tokens at once
    steps = zip(*(g.time_steps(blob, C) for blob in (g.reshape(kk, [-1, C]), b, decay, k, v, r)))
    ys = []
    for t, (kkt, bt, dt, kt, vt, rt) in enumerate(steps):
        sk = g.matmul(S, g.reshape(kkt, [-1, H, N, 1]))  # S·kk  [B,H,N,1]
        S_new = g.sub(g.mul(S, g.reshape(dt, [-1, H, 1, N])), g.mul(sk, g.reshape(bt, [-1, H, 1, N])))
        S = g.add_(S_new, g.mul(g.reshape(vt, [-1, H, N, 1]), g.reshape(kt, [-1, H, 1, N])),
                   out=state_out("att_kv", i) if t == T - 1 else None)
        ys.append(g.reshape(g.matmul(S, g.reshape(rt, [-1, H, N, 1])), [-1, C]))
    y = g.time_join(ys, C)
    # step 9: GroupNorm and the bonus (Σ_j r_j k_j r_k[h,j]) v_h
    y = group_norm(g, w, cfg, a, y)
    rk = g.reduce_last(R_SUM, g.reshape(g.mul(g.mul(r, k), g.row(w.get(a + "r_k").reshape(-1))), [-1, H, N]))
    y = g.add_(y, g.reshape(g.mul(rk, g.reshape(v, [-1, H, N])), [-1, C]))
    # step 10
    return g.add_(x, g.linear(g.mul(y, gate), w.get(a + "output.weight")))


def channel_mix(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    """``x + Wv·relu²(Wk·kx)``; v7a multiplies the hidden vector by the DeepEmbed gate."""
    f = f"blocks.{i}.ffn."
    xx, sx = pre_norm(g, w, i, "ln2", x, "ffn_x")
    kx = g.lerp(xx, g.sub(sx, xx), g.row(w.get(f + "x_k")))
    k = g.unary(SQUARE, g.act("ReLU", g.linear(kx, w.get(f + "key.weight"))))
    if cfg.version == "7a":  # s = (xx·s1)·s_emb[token] (32×32); k ⊙= s·s2 + s0 — the gate reads xx, not kx
        side = SEMB_SIDE
        emb = g.reshape(g.embed(ctx["token"], w.deep_embed_table(i)), [-1, side, side])  # merged at export (A6)
        s = g.reshape(g.linear(xx, w.get(f + "s1").T, small=True), [-1, 1, side])
        s = g.reshape(g.matmul(s, emb), [-1, side])
        k = g.mul(k, g.linear(s, w.get(f + "s2").T, bias=w.get(f + "s0").reshape(-1), small=True))
    return g.add_(x, g.linear(k, w.get(f + "value.weight")))


def block(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    x = time_mix(g, w, cfg, i, x, ctx)
    return channel_mix(g, w, cfg, i, x, ctx)
