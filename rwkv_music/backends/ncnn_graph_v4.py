"""ncnn layers for one RWKV-4 block, and the pieces v5/v6/v7 share (docs/formats.md A7).

Every function appends layers to an :class:`~rwkv_music.backends.ncnn_graph.NcnnGraph` and returns
blob names.  Activations are ``[B, C]`` (one token for each of B rows); per-channel constants are
``[1, C]`` rows.  ``w`` reads the raw checkpoint (:class:`~rwkv_music.backends.export_weights.Weights`).

State blobs of layer ``i`` are named ``in_<name>_<i>`` / ``out_<name>_<i>`` after the
:class:`~rwkv_music.model.state.State` tensors, one row of the batch per row of the blob.
"""

from __future__ import annotations

from typing import Any

from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.ncnn_graph import DIV, EXP, MAX, SQUARE, NcnnGraph
from rwkv_music.backends.sidecar import ncnn_state_blob
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import LN_EPS


def state_in(g: NcnnGraph, name: str, i: int) -> str:
    return g.input(ncnn_state_blob("in", name, i))


def state_out(name: str, i: int) -> str:
    return ncnn_state_blob("out", name, i)


def pre_norm(g: NcnnGraph, w: Weights, i: int, which: str, x: str, state: str) -> tuple[str, str]:
    """``(xx, sx)``: the LN output and the token-shifted one (the previous token's LN output).

    One token: ``xx`` is the new shift state ``state`` and ``sx`` the state input.  T tokens: ``sx``
    is ``xx`` moved down one step with the state input first, and the last step's row is the new state.
    """
    C = w.get(f"blocks.{i}.{which}.weight").shape[0]
    weight, bias = w.get(f"blocks.{i}.{which}.weight"), w.get(f"blocks.{i}.{which}.bias")
    if g.seq_len == 1:
        return g.layer_norm(x, weight, bias, C, LN_EPS, out=state_out(state, i)), state_in(g, state, i)
    xx = g.layer_norm(x, weight, bias, C, LN_EPS)
    return xx, g.shift(xx, state_in(g, state, i), C, state_out(state, i))


def channel_mix_v4(g: NcnnGraph, w: Weights, i: int, x: str, keys: tuple[str, str] = ("time_mix_k", "time_mix_r"),
                   maa: bool = False) -> str:
    """``x + σ(Wr·rx) ⊙ (Wv·relu²(Wk·kx))`` (v4/v5; v6 with ``maa=True``: mixes are ``1 - time_maa``)."""
    f = f"blocks.{i}.ffn."
    xx, sx = pre_norm(g, w, i, "ln2", x, "ffn_x")
    d = g.sub(xx, sx)
    mk, mr = (w.get(f + key) for key in keys)
    if maa:  # v6: x* = xx + (sx - xx)·maa = sx + (xx - sx)·(1 - maa)
        mk, mr = 1 - mk, 1 - mr
    kx, rx = g.lerp(sx, d, g.row(mk)), g.lerp(sx, d, g.row(mr))
    k = g.unary(SQUARE, g.act("ReLU", g.linear(kx, w.get(f + "key.weight"))))
    r = g.act("Sigmoid", g.linear(rx, w.get(f + "receptance.weight")))
    return g.add_(x, g.mul(r, g.linear(k, w.get(f + "value.weight"))))


def head(g: NcnnGraph, w: Weights, x: str, out: str) -> str:
    """``logits = head · LN_out(x)`` → ``[B, V]``."""
    C = w.get("ln_out.weight").shape[0]
    h = g.layer_norm(x, w.get("ln_out.weight"), w.get("ln_out.bias"), C, LN_EPS)
    return g.linear(h, w.get("head.weight"), out=out)


def _exp(g: NcnnGraph, a: str) -> str:
    return g.unary(EXP, a)


def time_mix_v4(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str) -> str:
    """docs/formats.md A7 "v4 time mix" with the running-maximum WKV; returns ``x + TimeMix(LN1(x))``."""
    a = f"blocks.{i}.att."
    xx, sx = pre_norm(g, w, i, "ln1", x, "att_x")
    d = g.sub(xx, sx)
    kx, vx, rx = (g.lerp(sx, d, g.row(w.get(a + f"time_mix_{n}"))) for n in "kvr")
    k = g.linear(kx, w.get(a + "key.weight"))
    v = g.linear(vx, w.get(a + "value.weight"))
    r = g.act("Sigmoid", g.linear(rx, w.get(a + "receptance.weight")))
    aa, bb, pp = (state_in(g, n, i) for n in ("att_a", "att_b", "att_p"))
    decay = g.row(w.v4_decay(a))  # A6: w = -exp(time_decay)
    first = g.row(w.get(a + "time_first"))  # A6: u = time_first (log domain)
    A = w.get(a + "key.weight").shape[0]
    T = g.seq_len
    outs: list[str] = []
    for t, (kt, vt) in enumerate(zip(g.time_steps(k, A), g.time_steps(v, A))):  # the recurrence, step by step
        last = t == T - 1
        # output: q = max(pp, u + k); wkv = (e^{pp-q} aa + e^{u+k-q} v) / (e^{pp-q} bb + e^{u+k-q})
        ww = g.add_(kt, first)
        q = g.binary(MAX, pp, ww)
        e1, e2 = _exp(g, g.sub(pp, q)), _exp(g, g.sub(ww, q))
        num = g.add_(g.mul(e1, aa), g.mul(e2, vt))
        den = g.add_(g.mul(e1, bb), e2)
        outs.append(g.binary(DIV, num, den))
        # state: q' = max(w + pp, k); aa' = e^{w+pp-q'} aa + e^{k-q'} v; bb' likewise; pp' = q'
        ww = g.add_(pp, decay)
        q2 = g.binary(MAX, ww, kt, out=state_out("att_p", i) if last else None)
        e1, e2 = _exp(g, g.sub(ww, q2)), _exp(g, g.sub(kt, q2))
        aa = g.add_(g.mul(e1, aa), g.mul(e2, vt), out=state_out("att_a", i) if last else None)
        bb = g.add_(g.mul(e1, bb), e2, out=state_out("att_b", i) if last else None)
        pp = q2
    wkv = g.time_join(outs, A)
    return g.add_(x, g.linear(g.mul(r, wkv), w.get(a + "output.weight")))


def block(g: NcnnGraph, w: Weights, cfg: RWKVConfig, i: int, x: str, ctx: dict[str, Any]) -> str:
    """One v4 block: ``x`` [B, C] → [B, C]."""
    x = time_mix_v4(g, w, cfg, i, x)
    return channel_mix_v4(g, w, i, x)
