"""RWKV-5.0 / 5.1 / 5.2 in torch: load-time rewrites and the forward pass (docs/formats.md A6, A7, A10).

Shapes: B batch, T time, C n_embd, A dim_att = H·N, H heads of size N, F dim_ffn, V vocab.

The three sub-versions share one code path.  At load time the per-head decay and bonus of
5.0/5.1 are broadcast to per-channel ``[H, N]`` tensors (5.2 already has that shape), and 5.0
simply has no gate.  Per head, with S[j, i] indexed by key j and value i (the rwkv package's
layout, docs/formats.md A8):

    y_i   = Σ_j r_j (u_j k_j v_i + S[j, i])
    S'    = w_j S[j, i] + k_j v_i

r, k, v, S, w, u and the GroupNorm are fp32 whatever the run dtype (A10).

Prefill evaluates the same recurrence chunk-parallel: inside a chunk of Tc tokens the pairwise
weights ``w^(t-1-s)`` are factored as ``w^(t-c) · w^(c-1-s)`` around the chunk centre c, so they
become one matmul per chunk.  Tc is chosen per layer at load time so that no factor exceeds
``e^MAX_CHUNK_EXPONENT`` in fp32; only strongly decaying layers get short chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rwkv_music.model import native
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import GN_EPS
from rwkv_music.model.ops import layer_norm, token_shift, write_state
from rwkv_music.model.state import State
from rwkv_music.model.v4 import (
    ChannelMixWeights,
    as_rows,
    as_vector,
    channel_mix,
    folded_embedding,
    fused_layers_step,
    head_logits,
    mixed_projections,
    mixes,
    prepare_channel_mix,
    prepare_head,
)

VERSIONS = ("5.0", "5.1", "5.2")

MAX_CHUNK = 64  # longest prefill chunk; longer chunks mean bigger matmuls and fewer Python steps
MAX_CHUNK_EXPONENT = 60.0  # |exponent| bound of the factored decays: e^60 ≈ 1e26, fp32 max ≈ 3e38
MIN_LOG_DECAY = -MAX_CHUNK_EXPONENT  # w below e^-60 contributes nothing visible in fp32 past one step


@dataclass
class V5Layer:
    ln1_w: torch.Tensor  # [C]
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    att_mix: torch.Tensor  # [M, 1, C] for (r, k, v[, g]); M = 3 (5.0) or 4
    att_mix_c: torch.Tensor  # [M, 1, C] 1 - att_mix
    att_rkvg: torch.Tensor  # [M, C, A] stacked Wr, Wk, Wv[, Wg]
    decay: torch.Tensor  # [H, N, 1] f32: w = exp(-exp(time_decay)), acting on the key axis of S
    log_decay: torch.Tensor  # [H, N] f32: log w = -exp(time_decay)
    bonus: torch.Tensor  # [H, N] f32: u
    chunk: int  # prefill chunk length Tc for this layer
    ln_x_w: torch.Tensor  # [A] f32
    ln_x_b: torch.Tensor
    att_out: torch.Tensor  # [A, C]
    ffn: ChannelMixWeights


@dataclass
class V5Weights:
    emb: torch.Tensor  # [V, C] with LN0 folded in
    layers: list[V5Layer]
    ln_out_w: torch.Tensor
    ln_out_b: torch.Tensor
    head: torch.Tensor  # [C, V]


# -- load time -----------------------------------------------------------------------------

def chunk_length(log_decay: torch.Tensor) -> int:
    """Largest power-of-two chunk ≤ MAX_CHUNK whose factored decays stay within fp32 range.

    The factors are w^(t-c) and w^(c-1-s) with c = Tc/2, so |c · log w| must stay below
    MAX_CHUNK_EXPONENT for the (clamped) strongest decay of the layer.
    """
    strongest = float(log_decay.clamp(min=MIN_LOG_DECAY).abs().max())
    tc = MAX_CHUNK
    while tc > 2 and (tc // 2) * strongest > MAX_CHUNK_EXPONENT:
        tc //= 2
    return tc


def _decay_and_bonus(sd: dict[str, torch.Tensor], a: str, config: RWKVConfig, device: Any):
    """(log w [H,N], u [H,N]) in fp32 from the stored time_decay and time_first/time_faaaa (A6)."""
    H, N = config.n_head, config.head_size
    log_w = -torch.exp(sd.pop(a + "time_decay").float()).reshape(H, -1).expand(H, N)
    if a + "time_first" in sd:  # 5.0/5.1 "time_first" is log u
        u = torch.exp(sd.pop(a + "time_first").float())
    else:  # "time_faaaa" is u itself
        u = sd.pop(a + "time_faaaa").float()
    u = u.reshape(H, -1).expand(H, N)
    return log_w.to(device).contiguous(), u.to(device).contiguous()


def prepare(sd: dict[str, torch.Tensor], config: RWKVConfig, dtype: torch.dtype, device: Any) -> V5Weights:
    """Load-time rewrites of a raw v5.x checkpoint (docs/formats.md A6); pops what it uses from ``sd``."""
    gated = config.version != "5.0"
    names = ("receptance", "key", "value") + (("gate",) if gated else ())
    emb = folded_embedding(sd, dtype, device)
    layers = []
    for i in range(config.n_layer):
        b, a = f"blocks.{i}.", f"blocks.{i}.att."
        mix_keys = ("time_mix_r", "time_mix_k", "time_mix_v") + (("time_mix_g",) if gated else ())
        mix, mix_c = mixes([sd.pop(a + k) for k in mix_keys], dtype, device)
        rkvg = torch.stack([sd.pop(a + n + ".weight").t().to(dtype) for n in names]).to(device).contiguous()
        log_w, u = _decay_and_bonus(sd, a, config, device)
        layers.append(V5Layer(
            ln1_w=as_vector(sd.pop(b + "ln1.weight"), dtype, device),
            ln1_b=as_vector(sd.pop(b + "ln1.bias"), dtype, device),
            ln2_w=as_vector(sd.pop(b + "ln2.weight"), dtype, device),
            ln2_b=as_vector(sd.pop(b + "ln2.bias"), dtype, device),
            att_mix=mix,
            att_mix_c=mix_c,
            att_rkvg=rkvg,
            decay=torch.exp(log_w).unsqueeze(-1).contiguous(),
            log_decay=log_w,
            bonus=u,
            chunk=chunk_length(log_w),
            ln_x_w=as_vector(sd.pop(a + "ln_x.weight"), torch.float32, device),
            ln_x_b=as_vector(sd.pop(a + "ln_x.bias"), torch.float32, device),
            att_out=as_rows(sd.pop(a + "output.weight"), dtype, device),
            ffn=prepare_channel_mix(sd, f"blocks.{i}.ffn.", dtype, device),
        ))
    ln_w, ln_b, head = prepare_head(sd, dtype, device)
    return V5Weights(emb=emb, layers=layers, ln_out_w=ln_w, ln_out_b=ln_b, head=head)


# -- WKV -----------------------------------------------------------------------------------

def wkv_one(r: Tensor, k: Tensor, v: Tensor, S: Tensor, S_out: Tensor, ly: V5Layer) -> Tensor:
    """One token.  r, k, v [B, H, N] f32; S [B, H, N, N] f32 (read only).

    Writes S' into ``S_out`` (same shape) and returns y [B, H, N].
    """
    B, H, N = r.shape
    y = torch.bmm(r.view(B * H, 1, N), S.view(B * H, N, N)).view(B, H, N)  # Σ_j r_j S[j, i]
    y.addcmul_((r * ly.bonus * k).sum(-1, keepdim=True), v)  # + (Σ_j r_j u_j k_j) v_i
    torch.mul(S, ly.decay, out=S_out)  # w_j S[j, i]
    S_out.addcmul_(k.unsqueeze(-1), v.unsqueeze(-2))  # + k_j v_i
    return y


def wkv_chunked(r: Tensor, k: Tensor, v: Tensor, S: Tensor, ly: V5Layer) -> tuple[Tensor, Tensor]:
    """Prefill.  r, k, v [B, H, T, N] f32; S [B, H, N, N] f32 → (y [B, H, T, N], S_T).

    Per chunk of length Tc (positions t, s inside it, S0 the state entering it):
      y_t = (r_t ⊙ w^t) S0 + Σ_{s<t} (r_t·(w^(t-1-s) ⊙ k_s)) v_s + (r_t·(u ⊙ k_t)) v_t
      S   = w^Tc ⊙ S0 + Σ_s (w^(Tc-1-s) ⊙ k_s) v_sᵀ
    """
    B, H, T, N = r.shape
    Tc, c = ly.chunk, ly.chunk // 2
    log_w = ly.log_decay.clamp(min=MIN_LOG_DECAY).unsqueeze(1)  # [H, 1, N]
    pos = torch.arange(Tc, device=r.device, dtype=torch.float32).view(1, Tc, 1)  # [1, Tc, 1]
    w_inter = torch.exp(pos * log_w)  # [H, Tc, N]: w^t
    w_r = torch.exp((pos - c) * log_w)  # w^(t-c)
    w_k = torch.exp((c - 1 - pos) * log_w)  # w^(c-1-s)
    y = torch.empty_like(r)
    for start in range(0, T, Tc):
        end = min(start + Tc, T)
        n = end - start
        rc, kc, vc = r[:, :, start:end], k[:, :, start:end], v[:, :, start:end]  # [B, H, n, N]
        att = (rc * w_r[:, :n]) @ (kc * w_k[:, :n]).transpose(-1, -2)  # [B, H, n, n]
        att = att.tril_(-1)  # keep s < t (the dropped upper part may hold inf)
        att.diagonal(0, -2, -1).copy_((rc * ly.bonus.unsqueeze(1) * kc).sum(-1))  # s = t: bonus u
        y[:, :, start:end] = torch.baddbmm(
            (att @ vc).flatten(0, 1), (rc * w_inter[:, :n]).flatten(0, 1), S.flatten(0, 1)
        ).view(B, H, n, N)
        w_tail = torch.exp((n - 1 - pos[:, :n]) * log_w)  # [H, n, N]: w^(n-1-s)
        S = torch.exp(n * log_w).transpose(-1, -2) * S + (kc * w_tail).transpose(-1, -2) @ vc  # [B, H, N, N]
    return y, S


def _fused_decode(r: Tensor, k: Tensor, v: Tensor, S: Tensor, S_out: Tensor, ly: V5Layer, H: int) -> Tensor:
    """One token by ``native/wkv5.c``: :func:`wkv_one` then the ln_x GroupNorm → y [B, A] f32."""
    B, A = r.shape
    y = torch.empty(B, A)
    held = [t.contiguous() for t in (ly.decay, ly.bonus, ly.ln_x_w, ly.ln_x_b)]  # alive during the call
    native.kernel("rwkv5_wkv_decode")(B, H, A // H, 0, S.data_ptr(), S_out.data_ptr(), r.data_ptr(), k.data_ptr(),
                                      v.data_ptr(), *(t.data_ptr() for t in held), GN_EPS, y.data_ptr(),
                                      torch.get_num_threads())
    return y


# -- time mix ------------------------------------------------------------------------------

def time_mix(xx: Tensor, sx: Tensor, S: Tensor, S_out: Tensor | None, ly: V5Layer,
             n_head: int) -> tuple[Tensor, Tensor]:
    """v5.x time mix.  ``xx``/``sx`` [B, C] (decode) or [B, T, C] (prefill); S [B, H, N, N] f32.

    Returns (out like xx, S'); in decode S' is written into ``S_out``.
    """
    C, H = xx.shape[-1], n_head
    r, k, v, *g = mixed_projections(xx.reshape(-1, C), sx.reshape(-1, C), ly.att_mix, ly.att_mix_c, ly.att_rkvg)
    if r.dtype != torch.float32:  # r, k, v in fp32 (A10)
        r, k, v = r.float(), k.float(), v.float()
    if xx.dim() == 2 and native.fused_decode_ok(r, k, v, S, S_out, head_size=S.shape[-1]):
        y, S_new = _fused_decode(r, k, v, S, S_out, ly, H), S_out  # WKV and GroupNorm in one C call
        y = y.to(xx.dtype)
        if g:
            y = y * F.silu(g[0])
        return (y @ ly.att_out).view(xx.shape), S_new
    if xx.dim() == 2:
        B = xx.shape[0]
        y = wkv_one(r.view(B, H, -1), k.view(B, H, -1), v.view(B, H, -1), S, S_out, ly)  # [B, H, N]
        S_new = S_out
    else:
        B, T, _ = xx.shape
        r, k, v = (t.view(B, T, H, -1).transpose(1, 2).contiguous() for t in (r, k, v))  # [B, H, T, N]
        y, S_new = wkv_chunked(r, k, v, S, ly)  # [B, H, T, N]
        y = y.transpose(1, 2)  # [B, T, H, N]
    y = F.group_norm(y.reshape(-1, H * y.shape[-1]), H, ly.ln_x_w, ly.ln_x_b, eps=GN_EPS)  # [B·T, A] f32
    y = y.to(xx.dtype)
    if g:  # 5.1 / 5.2 gate
        y = y * F.silu(g[0])
    return (y @ ly.att_out).view(xx.shape), S_new


# -- forward -------------------------------------------------------------------------------

# every layer of a one-token step in one C call (v4.fused_layers_step): the kernel's weight order per layer
_V5_FIELDS = ("ln1_w", "ln1_b", "att_mix", "att_mix_c", "att_rkvg", "decay", "bonus", "ln_x_w", "ln_x_b", "att_out",
              "ln2_w", "ln2_b", "ffn.mix", "ffn.mix_c", "ffn.key", "ffn.receptance", "ffn.value")


def forward(weights: V5Weights, config: RWKVConfig, tokens: Tensor, state: State,
            all_logits: bool, out_state: State | None = None) -> tuple[Tensor, State]:
    """Logits float32 [B, V] (or [B, T, V]) and the new state, for tokens [B, T].

    With ``out_state`` the new state is written into its tensors (they may be ``state``'s own)
    and ``out_state`` is returned; else ``state`` is left alone and a new State returned.
    """
    B, T = tokens.shape
    if T == 1:
        fused = fused_layers_step(weights, config, tokens, state, out_state, all_logits, _V5_FIELDS, "att_rkvg")
        if fused is not None:
            return fused
    s = state.tensors
    x = F.embedding(tokens, weights.emb)  # [B, T, C]
    if T == 1:
        x = x[:, 0]  # [B, C]: the lean decode path works on 2-D tensors
    prev_att, prev_kv, prev_ffn = (s[n].unbind(0) for n in ("att_x", "att_kv", "ffn_x"))
    kv_new = None
    if T == 1:  # decode writes each S' in place (wkv_one reads S before writing S_out)
        kv_new = torch.empty_like(s["att_kv"]) if out_state is None else out_state.tensors["att_kv"]
    kv_out = kv_new.unbind(0) if kv_new is not None else [None] * len(weights.layers)
    att_x, att_kv, ffn_x = [], [], []
    for i, ly in enumerate(weights.layers):
        xx = layer_norm(x, ly.ln1_w, ly.ln1_b)
        sx = prev_att[i] if T == 1 else token_shift(xx, prev_att[i])
        out, S = time_mix(xx, sx, prev_kv[i], kv_out[i], ly, config.n_head)
        x = x + out
        att_x.append(xx if T == 1 else xx[:, -1])
        att_kv.append(S)
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
        "att_x": torch.stack(att_x),
        "att_kv": kv_new if kv_new is not None else torch.stack(att_kv),
        "ffn_x": torch.stack(ffn_x),
    }
    return logits, write_state(out_state, config.version, new)
