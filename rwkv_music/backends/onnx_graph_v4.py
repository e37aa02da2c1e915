"""RWKV-4 block as ONNX nodes (docs/formats.md A7, v4 time mix and channel mix).

The projections run for all T positions at once; only the per-channel WKV recurrence
(``aa``, ``bb``, ``pp``, all fp32) runs inside a ``Scan`` over time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.onnx_graph_common import GraphBuilder, channel_mix_v4
from rwkv_music.model.config import RWKVConfig

STATE_NAMES = ("att_x", "att_a", "att_b", "att_p", "ffn_x")


def block(
    b: GraphBuilder, w: Weights, cfg: RWKVConfig, i: int, x: str, st: dict[str, str], ctx: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """One layer: ``x`` [B,T,C] → ``x`` [B,T,C]; ``st`` holds this layer's state slices."""
    p = f"blocks.{i}."
    a = p + "att."
    xx = b.layer_norm(x, w.get(p + "ln1.weight"), w.get(p + "ln1.bias"), f"l{i}_ln1")
    sx = b.token_shift(xx, st["att_x"])
    kx = b.lerp_mix(xx, sx, w.get(a + "time_mix_k"), "mk")
    vx = b.lerp_mix(xx, sx, w.get(a + "time_mix_v"), "mv")
    rx = b.lerp_mix(xx, sx, w.get(a + "time_mix_r"), "mr")
    r = b.sigmoid(b.matmul(rx, b.init(w.get(a + "receptance.weight").T, "Wr")))
    k = b.to_f32(b.matmul(kx, b.init(w.get(a + "key.weight").T, "Wk")))  # [B,T,A] f32
    v = b.to_f32(b.matmul(vx, b.init(w.get(a + "value.weight").T, "Wv")))
    u = b.f32(w.get(a + "time_first"), "u")  # log-domain bonus (A6)
    decay = b.f32(w.v4_decay(a), "w")  # w = -exp(td)

    def wkv_step(s: GraphBuilder, state: list[str], xs: list[str]) -> tuple[list[str], list[str]]:
        aa, bb, pp = state
        kt, vt = xs  # [B,A]
        ww = s.add(u, kt)
        q = s.op("Max", [pp, ww])
        e1 = s.op("Exp", [s.sub(pp, q)])
        e2 = s.op("Exp", [s.sub(ww, q)])
        num = s.add(s.mul(e1, aa), s.mul(e2, vt))
        den = s.add(s.mul(e1, bb), e2)
        out = s.op("Div", [num, den])
        ww = s.add(decay, pp)
        q = s.op("Max", [ww, kt])
        e1 = s.op("Exp", [s.sub(ww, q)])
        e2 = s.op("Exp", [s.sub(kt, q)])
        aa = s.add(s.mul(e1, aa), s.mul(e2, vt))
        bb = s.add(s.mul(e1, bb), e2)
        return [aa, bb, q], [out]

    f32 = np.float32
    (aa, bb, pp), (wkv,) = b.scan(
        wkv_step,
        [(st["att_a"], f32), (st["att_b"], f32), (st["att_p"], f32)],
        [(k, f32), (v, f32)],
        1,
        [f32],
        f"l{i}_wkv",
    )
    att = b.matmul(b.mul(r, b.to_act(wkv)), b.init(w.get(a + "output.weight").T, "Wo"))
    x = b.add(x, att)

    f = p + "ffn."
    xx2 = b.layer_norm(x, w.get(p + "ln2.weight"), w.get(p + "ln2.bias"), f"l{i}_ln2")
    x = b.add(x, channel_mix_v4(b, w, f, xx2, b.token_shift(xx2, st["ffn_x"])))
    new = {"att_x": b.last(xx), "att_a": aa, "att_b": bb, "att_p": pp, "ffn_x": b.last(xx2)}
    return x, new
