"""RWKV-7 (x070) and RWKV-7a (DeepEmbed) blocks as ONNX nodes (docs/formats.md A6, A7).

Everything but the state update runs for all T positions at once; the ``Scan`` body holds only
``S ← S·diag(w) − (S·kk)(kk⊙a)ᵀ + v·kᵀ; y = S·r`` with S[h, value i, key j] in fp32 (A8).
The inputs are pre-shaped as rows ``[.., 1, N]`` or columns ``[.., N, 1]`` so the body is two
MatMuls and a few broadcasts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.onnx_graph_common import GraphBuilder
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import V7_DECAY_SCALE

STATE_NAMES = ("att_x", "att_kv", "ffn_x")
L2_EPS = 1e-12  # kk is divided by max(‖kk‖₂, 1e-12), as torch.nn.functional.normalize does
SEMB_SIDE = 32  # DeepEmbed rows are viewed as 32×32 matrices (A3, v7a row)


def _lora(b: GraphBuilder, w: Weights, x: str, first: str, second: str, inner: str | None, hint: str) -> str:
    """``inner(x·first)·second`` (inner = "Tanh", "Sigmoid" or None) in the activation dtype."""
    h = b.matmul(x, b.init(w.get(first), hint + "1"))
    if inner:
        h = b.op(inner, [h])
    return b.matmul(h, b.init(w.get(second), hint + "2"))


def _time_mix(
    b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, xx: str, sx: str, S0: str, ctx: dict[str, Any]
) -> tuple[str, str]:
    a = f"blocks.{i}.att."
    H, N, C = cfg.n_head, cfg.head_size, cfg.n_embd
    d = b.sub(sx, xx)
    m = {n: b.add(xx, b.mul(d, b.init(w.get(a + f"x_{n}"), f"x_{n}"))) for n in ("r", "w", "k", "v", "a", "g")}
    r = b.matmul(m["r"], b.init(w.get(a + "receptance.weight").T, "Wr"))
    k = b.matmul(m["k"], b.init(w.get(a + "key.weight").T, "Wk"))
    v = b.matmul(m["v"], b.init(w.get(a + "value.weight").T, "Wv"))
    w_raw = _lora(b, w, m["w"], a + "w1", a + "w2", "Tanh", "w")
    aa = b.sigmoid(b.add(b.init(w.get(a + "a0"), "a0"), _lora(b, w, m["a"], a + "a1", a + "a2", None, "a")))
    g = _lora(b, w, m["g"], a + "g1", a + "g2", "Sigmoid", "g")

    heads = [0, 0, H, N]
    kk32 = b.reshape(b.to_f32(b.mul(k, b.init(w.get(a + "k_k"), "k_k"))), heads)  # normalised in fp32
    norm = b.op("Max", [b.reduce("ReduceL2", kk32, [-1]), b.f32(np.array(L2_EPS), "eps")])
    kk32 = b.op("Div", [kk32, norm])  # [B,T,H,N], computed before k is rescaled (A7 step 4)
    one = b.init(np.ones(C), "one")
    k = b.mul(k, b.add(one, b.mul(b.sub(aa, one), b.init(w.get(a + "k_a"), "k_a"))))
    if i == 0:
        ctx["v_first"] = v
        for n in ("v0", "v1", "v2"):
            w.skip(a + n)  # present in layer 0 but unused (A3)
    else:
        gate = b.sigmoid(b.add(b.init(w.get(a + "v0"), "v0"), _lora(b, w, m["v"], a + "v1", a + "v2", None, "v")))
        v = b.add(v, b.mul(b.sub(ctx["v_first"], v), gate))
    decay = b.to_f32(b.add(b.init(w.get(a + "w0"), "w0"), w_raw))
    decay = b.op("Exp", [b.mul(b.sigmoid(decay), b.f32(np.array(-V7_DECAY_SCALE), "wscale"))])  # [B,T,C] f32

    row, col = [0, 0, H, 1, N], [0, 0, H, N, 1]
    r32, k32, v32 = b.to_f32(r), b.to_f32(k), b.to_f32(v)
    a32 = b.to_f32(b.reshape(aa, heads))
    inputs = [
        b.reshape(decay, row),  # w along the key axis
        b.reshape(kk32, col),  # kk as a column
        b.reshape(b.op("Neg", [b.mul(kk32, a32)]), row),  # −(kk⊙a) as a row
        b.reshape(v32, col),
        b.reshape(k32, row),
        b.reshape(r32, col),
    ]

    def step(s: GraphBuilder, state: list[str], xs: list[str]) -> tuple[list[str], list[str]]:
        (S,) = state
        wt, kk_c, ka_r, v_c, k_r, r_c = xs
        S_new = s.add(s.add(s.mul(S, wt), s.mul(s.matmul(S, kk_c), ka_r)), s.mul(v_c, k_r))
        return [S_new], [s.matmul(S_new, r_c)]  # y = S·r  [B,H,N,1]

    f32 = np.float32
    (S,), (y,) = b.scan(step, [(S0, f32)], [(n, f32) for n in inputs], 1, [f32], f"l{i}_wkv")
    y = b.reshape(y, [0, 0, C])
    y = b.group_norm_heads(y, H, N, w.get(a + "ln_x.weight"), w.get(a + "ln_x.bias"))
    rk = b.mul(b.mul(r32, k32), b.f32(w.get(a + "r_k").reshape(-1), "r_k"))
    bonus = b.mul(b.reduce("ReduceSum", b.reshape(rk, heads), [-1]), b.reshape(v32, heads))  # [B,T,H,N]
    y = b.to_act(b.add(y, b.reshape(bonus, [0, 0, C])))
    return b.matmul(b.mul(y, g), b.init(w.get(a + "output.weight").T, "Wo")), S


def _channel_mix(b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, xx: str, sx: str, ctx: dict[str, Any]) -> str:
    f = f"blocks.{i}.ffn."
    kx = b.add(xx, b.mul(b.sub(sx, xx), b.init(w.get(f + "x_k"), "ffn_xk")))
    k = b.relu_sq(b.matmul(kx, b.init(w.get(f + "key.weight").T, "ffn_k")))
    if cfg.version == "7a":
        k = b.mul(k, _deep_embed(b, w, i, xx, ctx))
    return b.matmul(k, b.init(w.get(f + "value.weight").T, "ffn_v"))


def _deep_embed(b: GraphBuilder, w: Weights, i: int, xx: str, ctx: dict[str, Any]) -> str:
    """``(xx·s1)·reshape(s_emb[token], 32×32)·s2 + s0`` [B,T,F] (A7, v7a channel mix)."""
    f = f"blocks.{i}.ffn."
    table = w.deep_embed_table(i)  # s_emb merged with the folded embedding at export (A6)
    semb = b.gather(b.init(table, "s_emb"), ctx["tokens"], axis=0)  # [B,T,1024]
    semb = b.reshape(semb, [0, 0, SEMB_SIDE, SEMB_SIDE])
    s = b.unsqueeze(b.matmul(xx, b.init(w.get(f + "s1"), "s1")), [2])  # [B,T,1,32]
    s = b.reshape(b.matmul(s, semb), [0, 0, SEMB_SIDE])
    return b.add(b.matmul(s, b.init(w.get(f + "s2"), "s2")), b.init(w.get(f + "s0").reshape(-1), "s0"))


def block(
    b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, x: str, st: dict[str, str], ctx: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """One v7/v7a layer: ``x`` [B,T,C] → ``x``; ``ctx`` carries ``v_first`` between layers."""
    p = f"blocks.{i}."
    xx = b.layer_norm(x, w.get(p + "ln1.weight"), w.get(p + "ln1.bias"), f"l{i}_ln1")
    att, S = _time_mix(b, w, cfg, i, xx, b.token_shift(xx, st["att_x"]), st["att_kv"], ctx)
    x = b.add(x, att)
    xx2 = b.layer_norm(x, w.get(p + "ln2.weight"), w.get(p + "ln2.bias"), f"l{i}_ln2")
    x = b.add(x, _channel_mix(b, w, cfg, i, xx2, b.token_shift(xx2, st["ffn_x"]), ctx))
    return x, {"att_x": b.last(xx), "att_kv": S, "ffn_x": b.last(xx2)}
