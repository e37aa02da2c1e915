"""RWKV-7 ("x070") and RWKV-7a (DeepEmbed) inference math in torch (FORMATS.md A3, A6–A8, A10, A11).

:func:`prepare` does every load-time rewrite once (A6); :func:`forward` runs ``[B, T]`` token rows
from a :class:`~rwkv_music.model.state.State` and returns a new one.  ``T == 1`` is the lean decode
step; ``T > 1`` runs all projections for all ``B·T`` positions at once and the WKV recurrence in
chunks (below).  Shapes: B rows, T tokens, C = n_embd, H heads of N channels, F = dim_ffn; the
per-head state is ``S[value i, key j]`` (A8) and always fp32, as is the decay (A10).

Fusions (why: one token step is dozens of tiny ops, so op count is the cost at batch 1):

* the six token-shift mixes are one ``lerp`` against a stacked ``[6, 1, C]`` mix (order r k v w a g);
* receptance/key/value are one ``bmm`` with ``[3, C, C]``; the four LoRA inputs (v w a g) are one
  ``bmm`` with zero-padded ``[4, C, D]`` and ``[4, D, C]`` (padding adds exact zeros);
* the state step is ``S·diag(w)`` plus two rank-1 ``baddbmm`` updates (no N×N×N matmul).

Chunked WKV (sequence mode).  Per head, with ``z_t = -S_{t-1}·kk_t`` and ``b = kk ⊙ a`` (A7 step 8):
``S_t = S_{t-1}·diag(w_t) + z_t b_tᵀ + v_t k_tᵀ``.  Inside a chunk of L tokens with start state S₀
and cumulative decay ``W_t = Π_{s≤t} w_s``, ``S_t = (S₀ + Σ_{s≤t} z_s b̃_sᵀ + v_s k̃_sᵀ)·diag(W_t)``
with ``b̃ = b / W``, ``k̃ = k / W``.  So, with ``q_t = kk_t ⊙ W_{t-1}`` and ``p_t = r_t ⊙ W_t``:

* ``(I + M_b) Z = -Q S₀ᵀ - M_k V`` with strictly lower ``M_b = Q b̃ᵀ``, ``M_k = Q k̃ᵀ``, hence
  ``Z = Z_v - G S₀ᵀ`` where ``[G | -Z_v] = (I + M_b)⁻¹ [Q | M_k V]`` (one unit-triangular solve);
* ``Y = (P - A_b G) S₀ᵀ + A_b Z_v + A_k V`` with lower-inclusive ``A_b = P b̃ᵀ``, ``A_k = P k̃ᵀ``;
* ``S_L = S₀ (diag(W_L) - Gᵀ B̂) + Z_vᵀ B̂ + Vᵀ K̂`` with ``B̂ = b ⊙ W_L/W``, ``K̂ = k ⊙ W_L/W``.

Everything except the last line's S₀ products is computed for all chunks at once; only
``S_{c+1} = S_c T_c + U_c`` (one ``baddbmm``) loops over chunks.  Safety: w ≥ exp(-e^{-1/2}) ≈ 0.545
(A7 step 7), so 1/W ≤ e^{0.607·L} ≈ 2.7e8 for L = 32, far inside fp32; the large factors only meet
small ones (every unmasked product equals a ratio W_t/W_s ≤ 1 of the true recurrence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rwkv_music.errors import CheckpointError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.ops import GN_EPS, LN_EPS, token_shift
from rwkv_music.model.state import State

VERSIONS: tuple[str, ...] = ("7", "7a")
DECAY_SCALE = math.exp(-0.5)  # A7 step 7: w = exp(-e^{-1/2}·σ(w0 + w_raw)) ∈ (0.545, 1)
CHUNK_LEN = 32  # sequence-mode WKV chunk; 1/W_L stays ≤ 2.7e8 (module docstring)
SEMB_SIDE = 32  # DeepEmbed rows are viewed as 32×32 matrices (A3, v7a row)
_ATT_MIX = ("x_r", "x_k", "x_v", "x_w", "x_a", "x_g")  # [:3] feed r,k,v; [2:] feed the LoRAs
_LORA = ("v", "w", "a", "g")  # LoRA stack order (input mixes x_v, x_w, x_a, x_g)


@dataclass
class V7Layer:
    """One block's weights, rewritten for row-vector math (``x @ W`` with W as [in, out])."""

    ln1: tuple[torch.Tensor, torch.Tensor]
    ln2: tuple[torch.Tensor, torch.Tensor]
    mix: torch.Tensor  # [6, 1, C] in _ATT_MIX order
    rkv: torch.Tensor  # [3, C, C] receptance, key, value
    lora_in: torch.Tensor  # [4, C, D] v1 w1 a1 g1, zero-padded to the widest D
    lora_out: torch.Tensor  # [4, D, C] v2 w2 a2 g2, zero-padded
    lora_bias: torch.Tensor  # [4, 1, C] v0 w0 a0 0
    k_k: torch.Tensor  # [C]
    k_a: torch.Tensor  # [C]
    r_k: torch.Tensor  # [C] (flattened [H, N])
    output: torch.Tensor  # [C, C]
    ln_x: tuple[torch.Tensor, torch.Tensor]  # fp32 [C]
    ffn_mix: torch.Tensor  # [C]
    ffn_key: torch.Tensor  # [C, F]
    ffn_value: torch.Tensor  # [F, C]
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
        return sd[name].detach().float()
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
    emb = F.layer_norm(g("emb.weight"), (C,), g("blocks.0.ln0.weight").flatten(), g("blocks.0.ln0.bias").flatten(), LN_EPS)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    layers = []
    for i in range(config.n_layer):
        att, ffn = f"blocks.{i}.att.", f"blocks.{i}.ffn."
        vec = lambda name: g(name).flatten()  # noqa: E731
        widths = {n: g(f"{att}{n}1").shape[1] for n in _LORA}
        D = max(widths.values())
        lora_in = torch.zeros(4, C, D)
        lora_out = torch.zeros(4, D, C)
        for j, n in enumerate(_LORA):
            if i == 0 and n == "v":
                continue  # A6: layer 0's v0/v1/v2 are unused (its value *is* v_first)
            lora_in[j, :, : widths[n]] = g(f"{att}{n}1")
            lora_out[j, : widths[n]] = g(f"{att}{n}2")
        zero = torch.zeros(C)
        bias = torch.stack([zero if i == 0 else vec(att + "v0"), vec(att + "w0"), vec(att + "a0"), zero])
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
            r_k=cast(vec(att + "r_k")),
            output=cast(g(att + "output.weight").t()),
            ln_x=(vec(att + "ln_x.weight").to(device), vec(att + "ln_x.bias").to(device)),
            ffn_mix=cast(vec(ffn + "x_k")),
            ffn_key=cast(g(ffn + "key.weight").t()),
            ffn_value=cast(g(ffn + "value.weight").t()),
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
    weights: V7Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, all_logits: bool
) -> tuple[torch.Tensor, State]:
    """Run ``tokens`` [B, T] from ``state`` (not mutated): float32 logits [B, V] (or [B, T, V]) and a new State."""
    B, T = tokens.shape
    C, dtype = config.n_embd, weights.dtype
    att_x, att_kv, ffn_x = state.tensors["att_x"], state.tensors["att_kv"], state.tensors["ffn_x"]
    new_att_x = torch.empty(att_x.shape, dtype=dtype, device=att_x.device)
    new_kv = torch.empty(att_kv.shape, dtype=torch.float32, device=att_kv.device)
    new_ffn_x = torch.empty_like(new_att_x)
    flat_tokens = tokens.reshape(-1)
    x = weights.emb[tokens]  # [B, T, C]
    v_first = None
    for i, lw in enumerate(weights.layers):
        xx = F.layer_norm(x, (C,), lw.ln1[0], lw.ln1[1], LN_EPS)
        dx, v_first = _time_mix(lw, config, xx, att_x[i].to(dtype), att_kv[i], new_kv[i], v_first)
        new_att_x[i] = xx[:, -1]
        x = x + dx
        xx = F.layer_norm(x, (C,), lw.ln2[0], lw.ln2[1], LN_EPS)
        x = x + _channel_mix(lw, xx, ffn_x[i].to(dtype), flat_tokens)
        new_ffn_x[i] = xx[:, -1]
    if not all_logits:
        x = x[:, -1]
    x = F.layer_norm(x, (C,), weights.ln_out[0], weights.ln_out[1], LN_EPS)
    logits = (x @ weights.head).float()
    return logits, State(config.version, {"att_x": new_att_x, "att_kv": new_kv, "ffn_x": new_ffn_x})


def _time_mix(
    lw: V7Layer, config: RWKVConfig, xx: torch.Tensor, prev: torch.Tensor,
    S: torch.Tensor, S_out: torch.Tensor, v_first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A7 v7 time mix on LN1 outputs ``xx`` [B,T,C]; writes the new S into ``S_out``; returns (out, v_first)."""
    B, T, C = xx.shape
    H, N = config.n_head, config.head_size
    BT = B * T
    mixed = torch.lerp(xx, token_shift(xx, prev), lw.mix.unsqueeze(1)).view(6, BT, C)  # step 1
    r, k, v = torch.bmm(mixed[:3], lw.rkv)  # step 2, each [BT, C]
    h = torch.bmm(mixed[2:], lw.lora_in)  # [4, BT, D]: v w a g
    h[1].tanh_()
    h[3].sigmoid_()
    lora = torch.baddbmm(lw.lora_bias, h, lw.lora_out)  # [4, BT, C]
    a = torch.sigmoid(lora[2])  # step 3
    g = lora[3]
    log_w = lora[1].float().sigmoid_().mul_(-DECAY_SCALE)  # step 7, as log w (fp32)
    kk = F.normalize((k * lw.k_k).view(BT, H, N), dim=-1, p=2.0, eps=1e-12).view(BT, C)  # step 4
    k = k * ((a - 1) * lw.k_a + 1)  # step 5
    if v_first is None:  # step 6 (layer 0 keeps its value)
        v_first = v
    else:
        v = torch.lerp(v, v_first, torch.sigmoid(lora[0]))
    heads = [t.float().view(B, T, H, N) for t in (r, k, v, kk, kk * a)]
    if T == 1:
        y = _wkv_step(S, S_out, heads[0][:, 0], log_w.view(B, H, N).exp(), *(t[:, 0] for t in heads[1:]))
    else:
        y = _wkv_chunked(S, S_out, heads[0], log_w.view(B, T, H, N), *heads[1:])
    y = F.group_norm(y.reshape(BT, C), H, lw.ln_x[0], lw.ln_x[1], GN_EPS)  # step 9 (fp32)
    bonus = (r * k * lw.r_k).view(BT, H, N).sum(-1, keepdim=True) * v.view(BT, H, N)
    y = (y + bonus.view(BT, C)).to(xx.dtype) * g
    return (y @ lw.output).view(B, T, C), v_first  # step 10


def _channel_mix(lw: V7Layer, xx: torch.Tensor, prev: torch.Tensor, flat_tokens: torch.Tensor) -> torch.Tensor:
    """A7 v7 channel mix (and the v7a DeepEmbed gate) on LN2 outputs ``xx`` [B,T,C]."""
    B, T, C = xx.shape
    kx = torch.lerp(xx, token_shift(xx, prev), lw.ffn_mix)
    k = F.relu(kx @ lw.ffn_key).square_()
    if lw.s_emb is not None:  # v7a: the gate reads xx (the LN2 output), not kx
        s = torch.bmm((xx @ lw.s1).view(B * T, 1, SEMB_SIDE), lw.s_emb[flat_tokens])
        k = k * (s.view(B, T, SEMB_SIDE) @ lw.s2 + lw.s0)
    return k @ lw.ffn_value


def _wkv_step(
    S: torch.Tensor, S_out: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
    k: torch.Tensor, v: torch.Tensor, kk: torch.Tensor, b: torch.Tensor,
) -> torch.Tensor:
    """One token (A7 step 8): vectors [B,H,N] fp32, S [B,H,N(value),N(key)]; returns y = S_new·r [B,H,N]."""
    B, H, N = r.shape
    BH = B * H
    S = S.reshape(BH, N, N)
    out = S_out.view(BH, N, N)
    sk = torch.bmm(S, kk.reshape(BH, N, 1))  # S·kk with the old S
    torch.mul(S, w.reshape(BH, 1, N), out=out)
    out.baddbmm_(sk, b.reshape(BH, 1, N), alpha=-1.0)
    out.baddbmm_(v.reshape(BH, N, 1), k.reshape(BH, 1, N))
    return torch.bmm(out, r.reshape(BH, N, 1)).view(B, H, N)


def _wkv_chunked(
    S: torch.Tensor, S_out: torch.Tensor, r: torch.Tensor, log_w: torch.Tensor,
    k: torch.Tensor, v: torch.Tensor, kk: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK_LEN,
) -> torch.Tensor:
    """Many tokens at once (module docstring): inputs [B,T,H,N] fp32; returns y [B,T,H,N]."""
    B, T, H, N = r.shape
    L = min(chunk, T)
    n_chunks = -(-T // L)
    pad = n_chunks * L - T

    def chunks(t: torch.Tensor) -> torch.Tensor:  # [B,T,H,N] -> [B,H,n_chunks,L,N]
        if pad:  # padded steps are identities: w = 1, every vector 0
            t = F.pad(t, (0, 0, 0, 0, 0, pad))
        return t.view(B, n_chunks, L, H, N).permute(0, 3, 1, 2, 4)

    r, log_w, k, v, kk, b = (chunks(t) for t in (r, log_w, k, v, kk, b))
    cum = log_w.cumsum(-2)  # log W_t (inclusive)
    q = kk * (cum - log_w).exp()  # kk_t ⊙ W_{t-1}
    p = r * cum.exp()  # r_t ⊙ W_t
    inv = (-cum).exp()
    b_t, k_t = (b * inv).transpose(-1, -2), (k * inv).transpose(-1, -2)
    last = cum[..., -1:, :]
    tail = (last - cum).exp()  # W_L / W_s ≤ 1
    b_hat, k_hat = b * tail, k * tail
    m_b, m_k = (q @ b_t).tril_(-1), (q @ k_t).tril_(-1)
    a_b, a_k = (p @ b_t).tril_(), (p @ k_t).tril_()
    x = torch.linalg.solve_triangular(m_b, torch.cat([q, m_k @ v], -1), upper=False, unitriangular=True)
    G, z_v = x[..., :N], x[..., N:].neg_()
    trans = G.transpose(-1, -2) @ b_hat
    trans.neg_().diagonal(dim1=-2, dim2=-1).add_(last.squeeze(-2).exp())  # diag(W_L) - Gᵀ B̂
    upd = z_v.transpose(-1, -2) @ b_hat + v.transpose(-1, -2) @ k_hat
    starts = torch.empty((B, H, n_chunks, N, N), dtype=S.dtype, device=S.device)
    cur = S.reshape(B * H, N, N)
    for c in range(n_chunks):  # the only sequential part: one baddbmm per chunk
        starts[:, :, c] = cur.view(B, H, N, N)
        cur = torch.baddbmm(upd[:, :, c].reshape(B * H, N, N), cur, trans[:, :, c].reshape(B * H, N, N))
    S_out.copy_(cur.view(B, H, N, N))
    y = (p - a_b @ G) @ starts.transpose(-1, -2) + a_b @ z_v + a_k @ v  # [B,H,n_chunks,L,N]
    return y.permute(0, 2, 3, 1, 4).reshape(B, n_chunks * L, H, N)[:, :T]
