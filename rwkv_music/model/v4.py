"""RWKV-4 in torch: load-time rewrites and the forward pass (docs/formats.md A6, A7, A10).

Shapes: B batch, T time, C n_embd, A dim_att, F dim_ffn, V vocab.  Weights are stored for
row-vector products ``x @ W`` (``[in, out]``, contiguous); the three time-mix projections are
stacked as one ``[3, C, A]`` tensor so one ``bmm`` computes k, v and r for the whole batch.

The WKV recurrence keeps a running maximum ``pp`` so its exponentials never overflow
(``aa·e^pp`` and ``bb·e^pp`` are the numerator and denominator sums).  It is evaluated in fp32
whatever the run dtype, as the rwkv package does.  Prefill does every matmul for all T tokens
at once, then the WKV: chunk-parallel (:mod:`rwkv_music.model.wkv_chunked_v4`) on CUDA, one C loop
over time (``native/wkv4.c``) on a CPU, or the torch scan :func:`_wkv_scan` on a CPU without the C
kernels (see ``CHUNKED_ON_CPU``); ``PREFILL_CHUNK = 0`` selects that scan everywhere (the benchmark's
"before").

The channel mix here (:func:`channel_mix`) is shared with v5 (docs/formats.md A7: "v4/v5 channel mix").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rwkv_music.model import native
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import GN_EPS, LN_EPS
from rwkv_music.model.layer_plan import layer_plan, one_token_step_fits, run_layers
from rwkv_music.model.ops import fold_ln0, layer_norm, token_shift, write_state
from rwkv_music.model.state import State
from rwkv_music.model.wkv_chunked_v4 import CHUNK_LEN, wkv4_chunked

VERSIONS = ("4",)
PREFILL_CHUNK = CHUNK_LEN  # prefill WKV chunk length; 0: the sequential torch scan everywhere
# On a CPU the chunked form's [L, L] grid costs more arithmetic than the scan's per-step op overhead
# (measured on 2 busy cores, B=1, A=768, T=512: 40 vs 15 ms a layer), so a CPU takes the C loop, or the scan
# without the C kernels; True runs the chunked form on a CPU too (tests).
CHUNKED_ON_CPU = False
NATIVE_PARALLEL_MIN = 1 << 19  # B·T·A below which the C prefill loop runs on one thread (≈ 5 ms of work)


@dataclass
class ChannelMixWeights:
    """Channel mix of v4/v5: ``σ(rx·Wr) ⊙ (relu²(kx·Wk)·Wv)``."""

    mix: torch.Tensor  # [2, 1, C] mixing weights for (k, r); 1 = current token
    mix_c: torch.Tensor  # [2, 1, C] 1 - mix, precomputed
    key: torch.Tensor  # [C, F]
    receptance: torch.Tensor  # [C, C]
    value: torch.Tensor  # [F, C]


@dataclass
class V4Layer:
    ln1_w: torch.Tensor  # [C]
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    att_mix: torch.Tensor  # [3, 1, C] for (k, v, r)
    att_mix_c: torch.Tensor  # [3, 1, C] 1 - att_mix
    att_kvr: torch.Tensor  # [3, C, A] stacked Wk, Wv, Wr
    decay: torch.Tensor  # [A] f32, w = -exp(time_decay) (log-domain decay per step)
    first: torch.Tensor  # [A] f32, u = time_first (log-domain bonus of the current token)
    att_out: torch.Tensor  # [A, C]
    ffn: ChannelMixWeights


@dataclass
class V4Weights:
    emb: torch.Tensor  # [V, C] with LN0 folded in
    layers: list[V4Layer]
    ln_out_w: torch.Tensor  # [C]
    ln_out_b: torch.Tensor
    head: torch.Tensor  # [C, V]


# -- load time -----------------------------------------------------------------------------

def folded_embedding(sd: dict[str, torch.Tensor], dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``emb.weight`` with ``blocks.0.ln0`` applied to every row, computed in fp32 (A6 LN0 fold)."""
    emb = fold_ln0(sd.pop("emb.weight"), sd.pop("blocks.0.ln0.weight"), sd.pop("blocks.0.ln0.bias"))
    return emb.to(device=device, dtype=dtype).contiguous()


def as_vector(t: torch.Tensor, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A stored ``[1, 1, C]`` (or ``[C]``) vector as a contiguous ``[C]``."""
    return t.reshape(-1).to(device=device, dtype=dtype).contiguous()


def as_rows(t: torch.Tensor, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A stored ``[out, in]`` matrix as contiguous ``[in, out]`` for ``x @ W``."""
    return t.t().to(device=device, dtype=dtype).contiguous()


def mixes(vectors: list[torch.Tensor], dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token-shift mixes to ``[M, 1, C]`` and return (mix, 1 - mix) in the run dtype."""
    mix = torch.stack([v.reshape(-1).float() for v in vectors]).unsqueeze(1)
    return mix.to(device=device, dtype=dtype), (1 - mix).to(device=device, dtype=dtype)


def prepare_channel_mix(sd: dict[str, torch.Tensor], p: str, dtype: torch.dtype, device: Any) -> ChannelMixWeights:
    mix, mix_c = mixes([sd.pop(p + "time_mix_k"), sd.pop(p + "time_mix_r")], dtype, device)
    return ChannelMixWeights(
        mix=mix,
        mix_c=mix_c,
        key=as_rows(sd.pop(p + "key.weight"), dtype, device),
        receptance=as_rows(sd.pop(p + "receptance.weight"), dtype, device),
        value=as_rows(sd.pop(p + "value.weight"), dtype, device),
    )


def prepare_head(sd: dict[str, torch.Tensor], dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, ...]:
    """(ln_out weight, ln_out bias, head [C, V])."""
    return (
        as_vector(sd.pop("ln_out.weight"), dtype, device),
        as_vector(sd.pop("ln_out.bias"), dtype, device),
        as_rows(sd.pop("head.weight"), dtype, device),
    )


def prepare(sd: dict[str, torch.Tensor], config: RWKVConfig, dtype: torch.dtype, device: Any) -> V4Weights:
    """Load-time rewrites of a raw v4 checkpoint (docs/formats.md A6); pops what it uses from ``sd``."""
    emb = folded_embedding(sd, dtype, device)
    layers = []
    for i in range(config.n_layer):
        b, a = f"blocks.{i}.", f"blocks.{i}.att."
        mix, mix_c = mixes([sd.pop(a + f"time_mix_{n}") for n in "kvr"], dtype, device)
        kvr = torch.stack([sd.pop(a + n + ".weight").t().to(dtype) for n in ("key", "value", "receptance")])
        layers.append(V4Layer(
            ln1_w=as_vector(sd.pop(b + "ln1.weight"), dtype, device),
            ln1_b=as_vector(sd.pop(b + "ln1.bias"), dtype, device),
            ln2_w=as_vector(sd.pop(b + "ln2.weight"), dtype, device),
            ln2_b=as_vector(sd.pop(b + "ln2.bias"), dtype, device),
            att_mix=mix,
            att_mix_c=mix_c,
            att_kvr=kvr.to(device).contiguous(),
            decay=-torch.exp(as_vector(sd.pop(a + "time_decay"), torch.float32, device)),
            first=as_vector(sd.pop(a + "time_first"), torch.float32, device),
            att_out=as_rows(sd.pop(a + "output.weight"), dtype, device),
            ffn=prepare_channel_mix(sd, f"blocks.{i}.ffn.", dtype, device),
        ))
    ln_w, ln_b, head = prepare_head(sd, dtype, device)
    return V4Weights(emb=emb, layers=layers, ln_out_w=ln_w, ln_out_b=ln_b, head=head)


# -- shared pieces -------------------------------------------------------------------------

def channel_mix(xx: torch.Tensor, sx: torch.Tensor, w: ChannelMixWeights) -> torch.Tensor:
    """v4/v5 channel mix of LN2 outputs ``xx`` with shifted ``sx`` (both [..., C]) → [..., C]."""
    C = xx.shape[-1]
    km, rm = torch.addcmul(xx.reshape(-1, C) * w.mix, sx.reshape(-1, C), w.mix_c).unbind(0)  # 2 × [B(·T), C]
    k = torch.relu(km @ w.key).square_()  # [B(·T), F]
    return (torch.sigmoid(rm @ w.receptance) * (k @ w.value)).view(xx.shape)


def mixed_projections(xx: torch.Tensor, sx: torch.Tensor, mix: torch.Tensor, mix_c: torch.Tensor,
                      weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Token-shift mixes and their projections in one bmm.

    ``xx``, ``sx``: [N, C] (N = B, or B·T flattened); ``mix``: [M, 1, C]; ``weight``: [M, C, A].
    Returns M tensors [N, A] (views of one result).
    """
    xm = torch.addcmul(xx * mix, sx, mix_c)  # [M, N, C]: xx·μ + sx·(1-μ) per projection
    return torch.bmm(xm, weight).unbind(0)  # M × [N, A]


def head_logits(x: torch.Tensor, weights: Any) -> torch.Tensor:
    """Final LayerNorm and output projection: [..., C] → float32 [..., V]."""
    return (layer_norm(x, weights.ln_out_w, weights.ln_out_b) @ weights.head).float()


# -- time mix ------------------------------------------------------------------------------

def _wkv_step(k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, decay: Tensor,
              first: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One WKV step on [B, A] fp32 tensors → (wkv, aa', bb', pp')  (docs/formats.md A7 v4 steps 3–4)."""
    ww = first + k
    p = torch.maximum(pp, ww)
    e1 = torch.exp(pp - p)
    e2 = torch.exp(ww - p)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = decay + pp
    p = torch.maximum(ww, k)
    e1 = torch.exp(ww - p)
    e2 = torch.exp(k - p)
    return wkv, e1 * aa + e2 * v, e1 * bb + e2, p


def _fused_decode(r: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
                  ly: V4Layer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One token by ``native/wkv4.c``: (σ(r)·wkv, aa', bb', pp'), all [B, A] f32."""
    out, aa2, bb2, pp2 = torch.empty((4, *r.shape)).unbind(0)
    decay, first = ly.decay.contiguous(), ly.first.contiguous()  # alive during the call
    native.kernel("rwkv4_wkv_decode")(r.shape[0], r.shape[1], r.data_ptr(), k.data_ptr(), v.data_ptr(), aa.data_ptr(),
                                      bb.data_ptr(), pp.data_ptr(), decay.data_ptr(), first.data_ptr(),
                                      out.data_ptr(), aa2.data_ptr(), bb2.data_ptr(), pp2.data_ptr())
    return out, aa2, bb2, pp2


def _native_prefill(k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
                    ly: V4Layer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prefill WKV by ``native/wkv4.c``: k, v [B, T, A] f32 → (wkv [B, T, A], aa', bb', pp' [B, A]).

    On a CPU the chunked form's [L, L] grid costs more arithmetic than the scan saves in op
    overhead; a C loop over time has neither cost.
    """
    B, T, A = k.shape
    out = torch.empty_like(k)
    aa2, bb2, pp2 = torch.empty((3, B, A)).unbind(0)
    held = [t.contiguous() for t in (aa, bb, pp, ly.decay, ly.first)]  # alive during the call
    # threads only for work worth waking them (on a busy machine a wake-up costs milliseconds)
    threads = torch.get_num_threads() if B * T * A >= NATIVE_PARALLEL_MIN else 1
    native.kernel("rwkv4_wkv_prefill")(B, T, A, k.data_ptr(), v.data_ptr(), *(t.data_ptr() for t in held),
                                       out.data_ptr(), aa2.data_ptr(), bb2.data_ptr(), pp2.data_ptr(), threads)
    return out, aa2, bb2, pp2


def _wkv_scan(k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, decay: Tensor,
              first: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prefill: the steps of :func:`_wkv_step` over time.  k, v [B, T, A] f32; aa/bb/pp [B, A].

    Numerator and denominator travel stacked (values v and 1) so each step is a few ops on
    [2, B, A]; the division happens once at the end.  Returns (wkv [B, T, A], aa', bb', pp').
    """
    uk = (first + k).unsqueeze(2).unbind(1)  # T × [B, 1, A]: exponent of the current token's bonus term
    ks = k.unsqueeze(2).unbind(1)  # T × [B, 1, A]
    vals = torch.stack([v, torch.ones_like(v)], dim=2).unbind(1)  # T × [B, 2, A]: (v, 1)
    ab = torch.stack([aa, bb], dim=1)  # [B, 2, A]
    pp = pp.unsqueeze(1)  # [B, 1, A]
    acc = torch.empty(len(ks), *ab.shape, dtype=k.dtype, device=k.device)  # [T, B, 2, A]
    for t, (u_k, k_t, v_t) in enumerate(zip(uk, ks, vals)):
        p = torch.maximum(pp, u_k)
        torch.addcmul(torch.exp(pp - p) * ab, torch.exp(u_k - p), v_t, out=acc[t])  # e1·(aa, bb) + e2·(v, 1)
        ww = decay + pp
        pp = torch.maximum(ww, k_t)
        ab = torch.addcmul(torch.exp(ww - pp) * ab, torch.exp(k_t - pp), v_t)
    wkv = (acc[:, :, 0] / acc[:, :, 1]).transpose(0, 1)  # [B, T, A]
    return wkv, ab[:, 0], ab[:, 1], pp.squeeze(1)


def time_mix(xx: Tensor, sx: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
             ly: V4Layer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """v4 time mix.  ``xx``/``sx`` [B, C] (decode) or [B, T, C] (prefill); aa/bb/pp [B, A] f32.

    Returns (out like xx, aa', bb', pp').
    """
    C = xx.shape[-1]
    k, v, r = mixed_projections(xx.reshape(-1, C), sx.reshape(-1, C), ly.att_mix, ly.att_mix_c, ly.att_kvr)
    if k.dtype != torch.float32:  # WKV inputs in fp32 (A10)
        k, v = k.float(), v.float()
    if xx.dim() == 2 and native.fused_decode_ok(r, k, v, aa, bb, pp):  # WKV and the gate in one C call
        out, aa, bb, pp = _fused_decode(r, k, v, aa, bb, pp, ly)
        return (out @ ly.att_out).view(xx.shape), aa, bb, pp
    r = torch.sigmoid(r)  # [B(·T), A]
    if xx.dim() == 2:  # decode: one step
        wkv, aa, bb, pp = _wkv_step(k, v, aa, bb, pp, ly.decay, ly.first)
    else:  # prefill: matmuls above covered all T; only the elementwise recurrence scans time
        B, T, _ = xx.shape
        k, v = k.view(B, T, -1), v.view(B, T, -1)
        if PREFILL_CHUNK > 0 and native.fused_decode_ok(k, v, aa, bb, pp):  # fp32 CPU: one C scan
            wkv, aa, bb, pp = _native_prefill(k, v, aa, bb, pp, ly)
        elif PREFILL_CHUNK > 0 and (CHUNKED_ON_CPU or k.device.type != "cpu"):
            wkv, aa, bb, pp = wkv4_chunked(k, v, aa, bb, pp, ly.decay, ly.first, PREFILL_CHUNK)
        else:
            wkv, aa, bb, pp = _wkv_scan(k, v, aa, bb, pp, ly.decay, ly.first)
        wkv = wkv.reshape(B * T, -1)
    out = (r * wkv.to(r.dtype)) @ ly.att_out  # [B(·T), C]
    return out.view(xx.shape), aa, bb, pp


# -- every layer of a one-token step in one C call (v4 and v5) ---------------------------------

# native/v45_decode.c runs a one-token step's layers in one call (layer_plan.one_token_step_fits):
# * int8/int4 matrices on the native kernels, any width: the products are the per-layer path's kernel
#   calls, and the element-wise ops and dispatch around them go (random L12 D768, B = 1, one thread,
#   interleaved: v4 int8 164 -> 207 tok/s, int4 205 -> 273; v5.2 int8 180 -> 232, int4 243 -> 328);
# * fp32 while B·C <= FUSED_FP32_MAX_FLOATS (layer_plan.py; random L12 D768 B = 1, fp32 one thread: v4
#   23.1 -> 16.2 ms a step, v5.2 19.7 -> 12.2; two threads, v4: 20.4 -> 11.6).
# the kernel's weight order per layer (v45_decode.c's W_* enum); None: v4 has no ln_x
_V4_FIELDS = ("ln1_w", "ln1_b", "att_mix", "att_mix_c", "att_kvr", "decay", "first", None, None, "att_out",
              "ln2_w", "ln2_b", "ffn.mix", "ffn.mix_c", "ffn.key", "ffn.receptance", "ffn.value")
_FFN_SLICES = {"ffn.key": 1, "ffn.receptance": 1, "ffn.value": 1}


def fused_layers_step(weights: Any, config: RWKVConfig, tokens: Tensor, state: State, out_state: State | None,
                      all_logits: bool, fields: tuple, projections: str) -> tuple[Tensor, State] | None:
    """One token per row ([B, 1]) through every layer in one C call (``rwkv4_decode_layers`` or, for
    v5, ``rwkv5_decode_layers``), or None where it does not apply (not fp32 plain-tensor or native
    int8/int4 weights on the CPU, too many rows, too many fp32 products, the kernels off)."""
    B, C = tokens.shape[0], config.n_embd
    quantized = not isinstance(weights.layers[0].ffn.key, torch.Tensor)
    if not (native.FUSED_LAYERS and weights.emb.dtype == torch.float32 and one_token_step_fits(B, C, quantized)):
        return None
    slices = {projections: getattr(weights.layers[0], projections).shape[0], "att_out": 1, **_FFN_SLICES}
    plan = layer_plan(weights, fields, slices, config.head_size if config.version != "4" else None,
                      shape=lambda ly: (getattr(ly, projections).shape[0], getattr(ly, projections).shape[2],
                                        ly.ffn.key.shape[1]))
    if plan is None:
        return None
    M, A, F_ = plan.shape
    x = weights.emb[tokens[:, 0]]  # [B, C], a new tensor: the kernel leaves the last residual in it
    L = len(weights.layers)
    if config.version == "4":
        names: tuple[str, ...] = ("att_x", "att_a", "att_b", "att_p", "ffn_x")
        outs = run_layers("rwkv4_decode_layers", plan, (L, B, C, A, F_), x, state, out_state, names, (LN_EPS,),
                          None)
    else:
        names = ("att_x", "ffn_x", "att_kv")
        outs = run_layers("rwkv5_decode_layers", plan, (L, B, C, config.n_head, A // config.n_head, F_, M), x,
                          state, out_state, names, (LN_EPS, GN_EPS), config.head_size)
    if outs is None:
        return None
    logits = head_logits(x, weights)
    return (logits.unsqueeze(1) if all_logits else logits), write_state(out_state, config.version,
                                                                          dict(zip(names, outs)))


# -- forward -------------------------------------------------------------------------------

def forward(weights: V4Weights, config: RWKVConfig, tokens: Tensor, state: State,
            all_logits: bool, out_state: State | None = None) -> tuple[Tensor, State]:
    """Logits float32 [B, V] (or [B, T, V]) and the new state, for tokens [B, T].

    With ``out_state`` the new state is copied into its tensors (they may be ``state``'s own)
    and ``out_state`` is returned; else ``state`` is left alone and a new State returned.
    """
    B, T = tokens.shape
    if T == 1:
        fused = fused_layers_step(weights, config, tokens, state, out_state, all_logits, _V4_FIELDS, "att_kvr")
        if fused is not None:
            return fused
    s = state.tensors
    x = F.embedding(tokens, weights.emb)  # [B, T, C]
    if T == 1:
        x = x[:, 0]  # [B, C]: the lean decode path works on 2-D tensors
    prev_att, prev_a, prev_b, prev_p, prev_ffn = (s[n].unbind(0) for n in ("att_x", "att_a", "att_b", "att_p", "ffn_x"))
    att_x, att_a, att_b, att_p, ffn_x = [], [], [], [], []
    for i, ly in enumerate(weights.layers):
        xx = layer_norm(x, ly.ln1_w, ly.ln1_b)
        sx = prev_att[i] if T == 1 else token_shift(xx, prev_att[i])
        out, aa, bb, pp = time_mix(xx, sx, prev_a[i], prev_b[i], prev_p[i], ly)
        x = x + out
        att_x.append(xx if T == 1 else xx[:, -1])
        att_a.append(aa)
        att_b.append(bb)
        att_p.append(pp)
        xx = layer_norm(x, ly.ln2_w, ly.ln2_b)
        sx = prev_ffn[i] if T == 1 else token_shift(xx, prev_ffn[i])
        x = x + channel_mix(xx, sx, ly.ffn)
        ffn_x.append(xx if T == 1 else xx[:, -1])
    if T > 1 and not all_logits:
        x = x[:, -1]
    logits = head_logits(x, weights)
    if T == 1 and all_logits:
        logits = logits.unsqueeze(1)
    new = {
        "att_x": torch.stack(att_x), "att_a": torch.stack(att_a), "att_b": torch.stack(att_b),
        "att_p": torch.stack(att_p), "ffn_x": torch.stack(ffn_x),
    }
    return logits, write_state(out_state, config.version, new)
