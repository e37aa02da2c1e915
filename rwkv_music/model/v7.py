"""RWKV-7 ("x070") and RWKV-7a (DeepEmbed) inference math in torch (docs/formats.md A3, A6–A8, A10, A11).

:func:`prepare` does every load-time rewrite once (A6); :func:`forward` runs ``[B, T]`` token rows
from a :class:`~rwkv_music.model.state.State` and returns a new one.  ``T == 1`` is the lean decode
step; ``T > 1`` runs all projections for all ``B·T`` positions at once and the WKV recurrence in
chunks (see the end of this docstring).  Shapes: B rows, T tokens, C = n_embd, H heads of N channels, F = dim_ffn; the
per-head state is ``S[value i, key j]`` (A8) and always fp32, as is the decay (A10).

Fusions (why: one token step is dozens of tiny ops, so op count is the cost at batch 1):

* the six token-shift mixes are one ``lerp`` against a stacked ``[6, 1, C]`` mix (order r k v a w g);
* receptance/key/value are one ``bmm`` with ``[3, C, C]``; the four LoRAs (v a w g) are one ``bmm``
  each way with zero-padded ``[4, C, D]`` / ``[4, D, C]`` (padding adds exact zeros), and one
  in-place tanh serves w and g because σ(x)·g2 = tanh(x/2)·(g2/2) + Σ(g2)/2 (folded at load);
* the state step is ``S·diag(w)`` plus two in-place rank-1 updates (no N×N×N matmul).

The sequence-mode WKV runs in chunks (:mod:`rwkv_music.model.wkv7`, shared with training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rwkv_music.errors import CheckpointError
from rwkv_music.model import native
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import GN_EPS, LN_EPS
from rwkv_music.model.constants import V7_DECAY_SCALE as DECAY_SCALE
from rwkv_music.model.layer_plan import (
    FFN_VALUE_AS_F_C,
    LayerPlan,
    layer_plan,
    one_token_step_fits,
    run_layers,
)
from rwkv_music.model.ops import (
    fold_ln0,
    forward_in_segments,
    head_logits_rows,
    last_rows,
    matrix_state_io,
    shifted_rows,
    write_state,
)
from rwkv_music.model.state import State
from rwkv_music.model.wkv7 import wkv7_chunked

VERSIONS: tuple[str, ...] = ("7", "7a")
MAX_POSITIONS = 4096  # B·T positions per pass (≈ 0.4 GB of fp32 activations at C = 768)
SEMB_SIDE = 32  # DeepEmbed rows are viewed as 32×32 matrices (A3, v7a row)
_ATT_MIX = ("x_r", "x_k", "x_v", "x_a", "x_w", "x_g")  # [:3] feed r,k,v; [2:] feed the LoRAs
_LORA = ("v", "a", "w", "g")  # LoRA stack order; w and g (the two with tanh) last


@dataclass
class V7Layer:
    """One block's weights, rewritten for row-vector math (``x @ W`` with W as [in, out], except ffn_value)."""

    ln1: tuple[torch.Tensor, torch.Tensor]
    ln2: tuple[torch.Tensor, torch.Tensor]
    mix: torch.Tensor  # [6, 1, C] in _ATT_MIX order
    rkv: torch.Tensor  # [3, C, C] receptance, key, value
    lora_in: torch.Tensor  # [4, C, D] v1 a1 w1 g1/2, zero-padded to the widest D
    lora_out: torch.Tensor  # [4, D, C] v2 a2 w2 g2/2, zero-padded
    lora_bias: torch.Tensor  # [4, 1, C] v0 a0 w0 Σ(g2)/2
    k_k: torch.Tensor  # [C]
    k_a: torch.Tensor  # [C]
    one_minus_k_a: torch.Tensor  # [C]
    r_k: torch.Tensor  # [C] (flattened [H, N])
    output: torch.Tensor  # [C, C]
    ln_x: tuple[torch.Tensor, torch.Tensor]  # fp32 [C]
    ffn_mix: torch.Tensor  # [C]
    ffn_key: torch.Tensor  # [C, F]
    ffn_value: torch.Tensor  # [C, F] as stored: F.linear streams this long-K matrix faster at batch 1
    s_emb: torch.Tensor | None = None  # v7a: [V, 32, 32], embedding residual merged in (A6)
    s1: torch.Tensor | None = None  # v7a: [C, 32]
    s2: torch.Tensor | None = None  # v7a: [32, F]
    s0: torch.Tensor | None = None  # v7a: [F]


@dataclass
class V7Weights:
    """Everything :func:`forward` needs, on one device in one run dtype."""

    emb: torch.Tensor  # [V, C], LN0 folded in
    layers: list[V7Layer]
    ln_out: tuple[torch.Tensor, torch.Tensor]
    head: torch.Tensor  # [C, V]
    dtype: torch.dtype
    deep_embed: bool


def _key(sd: dict[str, torch.Tensor], name: str, version: str) -> torch.Tensor:
    try:
        return sd[name].detach().to(device="cpu", dtype=torch.float32)  # rewrites run on the host in fp32
    except KeyError:
        raise CheckpointError(f"checkpoint: missing key {name!r} needed by RWKV v{version}") from None


def prepare(sd: dict[str, torch.Tensor], config: RWKVConfig, dtype: torch.dtype, device: Any) -> V7Weights:
    """Load-time rewrites of a raw BlinkDL v7/v7a state dict (A6), done once.

    LN0 is folded into the embedding, vectors squeezed, matrices transposed to [in, out] and
    stacked (see :class:`V7Layer`), and for DeepEmbed ``s_emb += emb_folded · s_emb_xᵀ`` with the
    *folded* embedding, as the rwkv package does (A6).  The rewrites run in fp32, then everything
    is cast to ``dtype`` except ``ln_x`` (GroupNorm runs in fp32).
    """
    version = str(config.version)
    deep = version == "7a"
    g = lambda name: _key(sd, name, version)  # noqa: E731
    C = config.n_embd
    emb = fold_ln0(g("emb.weight"), g("blocks.0.ln0.weight"), g("blocks.0.ln0.bias"))

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    layers = []
    for i in range(config.n_layer):
        att, ffn = f"blocks.{i}.att.", f"blocks.{i}.ffn."
        vec = lambda name: g(name).flatten()  # noqa: E731
        widths = {n: g(f"{att}{n}1").shape[1] for n in _LORA if i or n != "v"}
        D = max(widths.values())
        lora_in = torch.zeros(4, C, D)
        lora_out = torch.zeros(4, D, C)
        for j, n in enumerate(_LORA):
            if n not in widths:
                continue  # A6: layer 0's v0/v1/v2 are unused (its value *is* v_first)
            lora_in[j, :, : widths[n]] = g(f"{att}{n}1")
            lora_out[j, : widths[n]] = g(f"{att}{n}2")
        # g = σ(xg·g1)·g2 = tanh(xg·g1/2)·(g2/2) + Σ_rows(g2)/2, so one in-place tanh serves w and g
        lora_in[3] *= 0.5
        g_bias = lora_out[3].sum(0) * 0.5
        lora_out[3] *= 0.5
        zero = torch.zeros(C)
        bias = torch.stack([zero if i == 0 else vec(att + "v0"), vec(att + "a0"), vec(att + "w0"), g_bias])
        layer = V7Layer(
            ln1=(cast(vec(f"blocks.{i}.ln1.weight")), cast(vec(f"blocks.{i}.ln1.bias"))),
            ln2=(cast(vec(f"blocks.{i}.ln2.weight")), cast(vec(f"blocks.{i}.ln2.bias"))),
            mix=cast(torch.stack([vec(att + n) for n in _ATT_MIX]).view(6, 1, C)),
            rkv=cast(torch.stack([g(att + n + ".weight").t() for n in ("receptance", "key", "value")])),
            lora_in=cast(lora_in),
            lora_out=cast(lora_out),
            lora_bias=cast(bias.view(4, 1, C)),
            k_k=cast(vec(att + "k_k")),
            k_a=cast(vec(att + "k_a")),
            one_minus_k_a=cast(1.0 - vec(att + "k_a")),
            r_k=cast(vec(att + "r_k")),
            output=cast(g(att + "output.weight").t()),
            ln_x=(vec(att + "ln_x.weight").to(device), vec(att + "ln_x.bias").to(device)),
            ffn_mix=cast(vec(ffn + "x_k")),
            ffn_key=cast(g(ffn + "key.weight").t()),
            ffn_value=cast(g(ffn + "value.weight")),
        )
        if deep:
            s_emb = g(ffn + "s_emb.weight") + emb @ g(ffn + "s_emb_x.weight").t()
            layer.s_emb = cast(s_emb.view(-1, SEMB_SIDE, SEMB_SIDE))
            layer.s1, layer.s2, layer.s0 = cast(g(ffn + "s1")), cast(g(ffn + "s2")), cast(vec(ffn + "s0"))
        layers.append(layer)
    return V7Weights(
        emb=cast(emb),
        layers=layers,
        ln_out=(cast(g("ln_out.weight").flatten()), cast(g("ln_out.bias").flatten())),
        head=cast(g("head.weight").t()),
        dtype=dtype,
        deep_embed=deep,
    )


@torch.no_grad()
def forward(
    weights: V7Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, all_logits: bool,
    out_state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``tokens`` [B, T] from ``state``: float32 logits [B, V] (or [B, T, V]) and a new State.

    ``state`` is not mutated unless it is ``out_state``: with ``out_state`` the new state is written
    into its tensors (which may be ``state``'s own: in-place decode) and ``out_state`` is returned.
    Long inputs run in segments of at most ``MAX_POSITIONS`` positions (B·T) with the state
    carried between them, which bounds the activation memory and gives the same result (A11).
    """
    return forward_in_segments(_forward, weights, config, tokens, state, all_logits, MAX_POSITIONS, out_state)

def _forward(
    weights: V7Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, all_logits: bool,
    out_state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """One pass over all of ``tokens``; activations are ``[B·T, C]`` (``[B, C]`` when T == 1)."""
    B, T = tokens.shape
    C, dtype = config.n_embd, weights.dtype
    flat_tokens = tokens.reshape(-1)
    quantized = not isinstance(weights.layers[0].ffn_key, torch.Tensor) if weights.layers else False
    if one_token_step_fits(B, C, quantized) and (
            T == 1 or C <= FUSED_LAYERS_MAX_WIDTH and B * T <= FUSED_PREFILL_MAX_POSITIONS and not all_logits):
        fused = _fused_layers(weights, config, tokens, state, out_state, all_logits)
        if fused is not None:
            return fused
    att_prev, ffn_prev, kv_in, kv_out, new_kv = matrix_state_io(state, out_state, dtype)
    att_last, ffn_last = [], []
    x = weights.emb[flat_tokens]  # [B·T, C]
    v_first = None
    for i, lw in enumerate(weights.layers):
        xx = F.layer_norm(x, (C,), lw.ln1[0], lw.ln1[1], LN_EPS)
        dx, v_first = _time_mix(lw, config, B, T, xx, att_prev[i], kv_in[i], kv_out[i], v_first)
        x = x + dx
        att_last.append(last_rows(xx, B, T))
        xx = F.layer_norm(x, (C,), lw.ln2[0], lw.ln2[1], LN_EPS)
        x = x + _channel_mix(lw, B, T, xx, ffn_prev[i], flat_tokens)
        ffn_last.append(last_rows(xx, B, T))
    logits = head_logits_rows(x, weights.ln_out, weights.head, B, T, all_logits)
    tensors = {"att_x": torch.stack(att_last), "att_kv": new_kv, "ffn_x": torch.stack(ffn_last)}
    return logits, write_state(out_state, config.version, tensors)



# The all-layers C step (native/v7_decode.c) runs for up to 32 rows of a narrow fp32 model: there torch's
# per-op dispatch is most of a step (shipped L4 D128: see the kernel's notes); wider models and bigger
# batches spend their time in the matrix products, where torch's BLAS on every thread catches up with the
# kernel's one (shipped models, one C thread against torch's two: 2.1x / 1.4x at 8 rows, 1.5x / 1.2x at
# 16, 1.1x / 0.96x at 32 for abc / midi when the cap was 16; 1.06x / 1.04x at 32 on 2026-12-08 with the
# mixes vectorized, layer_plan.FUSED_LAYERS_MAX_ROWS).
FUSED_LAYERS_MAX_WIDTH = 256  # (FUSED_LAYERS_MAX_ROWS: layer_plan.py)
# ... and a wider fp32 model's step while B·C is small (layer_plan.one_token_step_fits): a few rows at D768
# there stream each matrix faster than torch's BLAS (random L12 D768, B = 1: 19.8 -> 15.4 ms a step on
# one thread, 17.5 -> 10.7 ms on two).
# Quantized models (int8/int4 matrices on the native kernels) take it for one-token steps at any width:
# the products are the same kernel calls as the per-layer path's, and the ~20 torch ops a layer around
# them (~1 ms a step at L12 D768) go; their prompts keep the chunked form, which reads each matrix once.
# ... and prompts of up to this many positions (B·T) are read as one-token steps in one call
# (rwkv7_prefill_layers), where only the last logits are wanted: a compose header (~20 tokens, B = 1
# once equal prompts are merged) 2.7x faster than the chunked form, 64 tokens 2x (with the kernel's
# first version, which at 4 rows of 21 tokens was only as fast as the chunked form)
FUSED_PREFILL_MAX_POSITIONS = 64
_LAYER_FIELDS = ("ln1", "mix", "rkv", "lora_in", "lora_out", "lora_bias", "k_k", "k_a", "one_minus_k_a", "r_k",
                 "ln_x", "output", "ln2", "ffn_mix", "ffn_key", "ffn_value")  # the kernel's order (pairs: w, b)


def _fused_layers(
    weights: V7Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, out_state: State | None,
    all_logits: bool,
) -> tuple[torch.Tensor, State] | None:
    """``tokens`` [B, T] through every layer in one C call (``rwkv7_decode_layers``; for T > 1
    ``rwkv7_prefill_layers``, the last position's logits only), or None where it does not apply (not fp32
    plain-tensor weights on the CPU, DeepEmbed, the kernels off or missing, another state)."""
    if weights.deep_embed or weights.dtype != torch.float32 or not native.FUSED_LAYERS:
        return None
    plan = _layer_plan(weights, config)
    if plan is None:
        return None
    B, T = tokens.shape
    # [T, B, C] position-major, a new tensor: the kernel writes each position's residual into it
    xs = weights.emb[tokens.t().reshape(-1)].view(T, B, -1)
    names = ("att_x", "ffn_x", "att_kv")
    sizes = (len(weights.layers), B, config.n_embd, config.n_head, config.head_size, *plan.shape)
    kernel, sizes = ("rwkv7_decode_layers", sizes) if T == 1 else ("rwkv7_prefill_layers", (T, *sizes))
    outs = run_layers(kernel, plan, sizes, xs, state, out_state, names, (LN_EPS, GN_EPS, DECAY_SCALE),
                      config.head_size)
    if outs is None:
        return None
    logits = head_logits_rows(xs[T - 1], weights.ln_out, weights.head, B, 1, all_logits)
    return logits, write_state(out_state, config.version, dict(zip(names, outs)))


def _layer_plan(weights: V7Weights, config: RWKVConfig) -> LayerPlan | None:
    """The kernel's plan of the layers (:mod:`rwkv_music.model.layer_plan`; shape: the LoRA width D and
    the channel mix's F, one for all layers), or None if they do not suit it."""
    return layer_plan(weights, _LAYER_FIELDS, _MATRIX_SLICES, config.head_size,
                      shape=lambda lw: (lw.lora_in.shape[2], lw.ffn_key.shape[1]), fp32_rewrite=FFN_VALUE_AS_F_C)


_MATRIX_SLICES = {"rkv": 3, "lora_in": 4, "lora_out": 4, "output": 1, "ffn_key": 1, "ffn_value": 1}


def _time_mix(
    lw: V7Layer, config: RWKVConfig, B: int, T: int, xx: torch.Tensor, prev: torch.Tensor,
    S: torch.Tensor, S_out: torch.Tensor, v_first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v7 time mix of LN1 outputs ``xx`` [B·T, C]; writes the new S into ``S_out``; returns (out, v_first)."""
    H, N = config.n_head, config.head_size
    BT, C = xx.shape
    mixed = torch.lerp(xx, shifted_rows(xx, prev, B, T), lw.mix)  # step 1: [6, B·T, C]
    r, k, v = torch.bmm(mixed[:3], lw.rkv)  # step 2
    h = torch.bmm(mixed[2:], lw.lora_in)  # [4, B·T, D]: v a w g
    h[2:].tanh_()  # w's tanh, and g's sigmoid via σ(x) = (1 + tanh(x/2)) / 2 folded into the weights
    lv, la, lw_raw, g = torch.baddbmm(lw.lora_bias, h, lw.lora_out)  # step 3
    if T == 1 and native.fused_decode_ok(r, S, S_out, head_size=S.shape[-1]):  # steps 4-9 in one C call
        y, v_first = _fused_steps(lw, config, S, S_out, r, k, v, lv, la, lw_raw, v_first)
        return (y * g) @ lw.output, v_first
    a = torch.sigmoid(la)
    kk = (k * lw.k_k).view(BT, H, N)
    kk = (kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)).view(BT, C)  # step 4 (F.normalize)
    k = k * torch.addcmul(lw.one_minus_k_a, a, lw.k_a)  # step 5: 1 + (a - 1)·k_a
    if v_first is None:  # step 6: layer 0 keeps its value for the others
        v_first = v
    else:
        v = torch.lerp(v, v_first, torch.sigmoid(lv))
    neg_decay = lw_raw.float().sigmoid_().mul_(-DECAY_SCALE)  # step 7: log w, fp32 (A10)
    vecs = (r.float(), k.float(), v.float(), kk.float(), (kk * a).float())
    if T == 1:
        y = _wkv_step(S, S_out, H, neg_decay.exp_(), *vecs)
    else:
        y, S_new = wkv7_chunked(S, neg_decay.view(B, T, H, N), *(t.view(B, T, H, N) for t in vecs))
        S_out.copy_(S_new)  # S_out may be S itself (in-place decode): S was fully read above
        y = y.reshape(BT, C)
    y = F.group_norm(y, H, lw.ln_x[0], lw.ln_x[1], GN_EPS).view(BT, H, N)  # step 9, fp32
    rk = (vecs[0] * vecs[1]).mul_(lw.r_k).view(BT, H, N).sum(-1, keepdim=True)
    y = torch.addcmul(y, rk, vecs[2].view(BT, H, N)).view(BT, C)  # the r·k bonus
    if y.dtype != xx.dtype:  # (a no-op .to() still costs microseconds per layer)
        y = y.to(xx.dtype)
    return (y * g) @ lw.output, v_first  # step 10


def _fused_steps(
    lw: V7Layer, config: RWKVConfig, S: torch.Tensor, S_out: torch.Tensor, r: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, lv: torch.Tensor, la: torch.Tensor, lw_raw: torch.Tensor, v_first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-9 for one token by ``native/wkv7.c``: (y [B, C] before the gate, v_first)."""
    B, C = r.shape
    y, v_out = torch.empty(B, C), torch.empty(B, C)
    # every tensor whose address is passed is held by a name until the call returns
    vecs = [t.contiguous() for t in (r, k, v, lv, la, lw_raw)]
    first = None if v_first is None else v_first.contiguous()
    params = [t.contiguous() for t in (lw.k_k, lw.k_a, lw.one_minus_k_a, lw.r_k, lw.ln_x[0], lw.ln_x[1])]
    rc = native.kernel("rwkv7_time_mix_decode")(
        B, config.n_head, config.head_size, S.data_ptr(), S_out.data_ptr(), *(t.data_ptr() for t in vecs),
        None if first is None else first.data_ptr(), *(t.data_ptr() for t in params),
        GN_EPS, DECAY_SCALE, y.data_ptr(), v_out.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"fused RWKV-7 decode failed (head size {config.head_size})")
    return y, (v_out if v_first is None else v_first)


def _channel_mix(
    lw: V7Layer, B: int, T: int, xx: torch.Tensor, prev: torch.Tensor, flat_tokens: torch.Tensor
) -> torch.Tensor:
    """A7 v7 channel mix (and the v7a DeepEmbed gate) of LN2 outputs ``xx`` [B·T, C]."""
    kx = torch.lerp(xx, shifted_rows(xx, prev, B, T), lw.ffn_mix)
    k = torch.relu_(kx @ lw.ffn_key).square_()
    if lw.s_emb is not None:  # v7a: the gate reads xx (the LN2 output), not kx
        s = torch.bmm((xx @ lw.s1).unsqueeze(1), lw.s_emb[flat_tokens]).squeeze(1)  # [B·T, 32]
        k = k * torch.addmm(lw.s0, s, lw.s2)
    return F.linear(k, lw.ffn_value)


def _wkv_step(
    S: torch.Tensor, S_out: torch.Tensor, H: int, w: torch.Tensor,
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kk: torch.Tensor, b: torch.Tensor,
) -> torch.Tensor:
    """One token (A7 step 8): vectors [B, C] fp32, S [B,H,N(value),N(key)]; returns y = S_new·r as [B, C]."""
    B, C = r.shape
    BH, N = B * H, C // H
    S = S.reshape(BH, N, N)
    out = S_out.view(BH, N, N)
    # (S·kk)ᵀ = kkᵀ·Sᵀ: the row form is several times faster than bmm with a [N, 1] right side on CPU
    sk = torch.bmm(kk.view(BH, 1, N), S.transpose(1, 2)).view(BH, N, 1)
    torch.mul(S, w.view(BH, 1, N), out=out)
    out.addcmul_(sk, b.view(BH, 1, N), value=-1.0)
    out.addcmul_(v.view(BH, N, 1), k.view(BH, 1, N))
    return torch.bmm(r.view(BH, 1, N), out.transpose(1, 2)).view(B, C)

