"""RWKV-6.0 ("x060") inference math in torch (docs/formats.md A3, A6–A8, A10, A11).

:func:`prepare` does every load-time rewrite once (A6); :func:`forward` runs ``[B, T]`` token rows
from a :class:`~rwkv_music.model.state.State` and returns a new one.  ``T == 1`` is the lean decode
step; ``T > 1`` runs all projections for all ``B·T`` positions at once and the WKV recurrence in
chunks (below).  Shapes: B rows, T tokens, C = n_embd, A = dim_att = H·N, F = dim_ffn.  The per-head
state is ``S[key j, value i]`` (A8, the rwkv package's layout) and r, k, v, S, the decay, u and the
GroupNorm run in fp32 whatever the run dtype (A10).

Fusions: the five data-dependent mixes are one ``addcmul`` against ``maa + LoRA`` stacked as
``[5, B·T, C]`` (rows reordered to r k v g w so receptance/key/value/gate are one ``bmm`` with
``[4, C, A]``); the state step is ``S·diag(w)`` plus one rank-1 update.

Chunked WKV (sequence mode).  Per head, ``y_t = r_tᵀ S_{t-1} + (r_t·(u⊙k_t)) v_tᵀ`` and
``S_t = diag(w_t) S_{t-1} + k_t v_tᵀ``.  Inside a chunk of L tokens with start state S₀ and
log-decay sums ``c_t = Σ_{s≤t} log w_s``:

* ``y_t = (r_t ⊙ e^{c_{t-1}})ᵀ S₀ + Σ_{s<t} [Σ_j r_t[j] k_s[j] e^{c_{t-1}[j] - c_s[j]}] v_s + (r_t·(u⊙k_t)) v_t``;
* ``S_L = diag(e^{c_L}) S₀ + Σ_s (k_s ⊙ e^{c_L - c_s}) v_sᵀ``.

v6 decays are unbounded below (w = exp(-exp(·)) can be 1e-9), so unlike v7 the intra-chunk
weights are *not* factorised into e^{c_t}·e^{-c_s} (that overflows); every exponent used is a
difference ≤ 0, evaluated exactly on an [L, L, N] grid per chunk.  Only ``S_{c+1} = diag·S_c + U_c``
loops over chunks.
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
    from_chunks,
    head_logits_rows,
    last_rows,
    matrix_state_io,
    shifted_rows,
    to_chunks,
    write_state,
)
from rwkv_music.model.state import State

VERSIONS: tuple[str, ...] = ("6",)
MAX_POSITIONS = 4096  # B·T positions per pass (≈ 0.4 GB of fp32 activations at C = 768)
CHUNK_LEN = 16  # sequence-mode WKV chunk (the [L, L, N] grid grows with L²)
MIN_LOG_DECAY = -60.0  # chunked WKV: per-token log w clamp (e^-60 ≈ 1e-26; see _wkv_chunked)
GRID_ELEMENTS = 1 << 22  # cap on one intra-chunk grid batch (16 MiB of fp32)
_STORED_MIX = ("w", "k", "v", "r", "g")  # row order of time_maa_w2 / column blocks of time_maa_w1 (A3)
_MIX = ("r", "k", "v", "g", "w")  # our order: [:4] feed the [4, C, A] matmul, [4] the decay LoRA


@dataclass
class V6Layer:
    """One block's weights, rewritten for row-vector math (``x @ W`` with W as [in, out], except ffn_value)."""

    ln1: tuple[torch.Tensor, torch.Tensor]
    ln2: tuple[torch.Tensor, torch.Tensor]
    maa_x: torch.Tensor  # [C]
    maa_w1: torch.Tensor  # [C, 5·Dm], column blocks in _MIX order
    maa_w2: torch.Tensor  # [5, Dm, C] in _MIX order
    maa: torch.Tensor  # [5, 1, C] time_maa_r/k/v/g/w
    rkvg: torch.Tensor  # [4, C, A] receptance, key, value, gate
    decay_w1: torch.Tensor  # [C, Dd]
    decay_w2: torch.Tensor  # [Dd, A]
    time_decay: torch.Tensor  # [A] fp32, raw (the decay is computed per token, A7)
    u: torch.Tensor  # [H, N] fp32 (time_faaaa)
    output: torch.Tensor  # [A, C]
    ln_x: tuple[torch.Tensor, torch.Tensor]  # fp32 [A]
    ffn_maa: torch.Tensor  # [2, 1, C] time_maa_k, time_maa_r
    ffn_key: torch.Tensor  # [C, F]
    ffn_receptance: torch.Tensor  # [C, C]
    ffn_value: torch.Tensor  # [C, F] as stored: F.linear streams this long-K matrix faster at batch 1


@dataclass
class V6Weights:
    """Everything :func:`forward` needs, on one device in one run dtype."""

    emb: torch.Tensor  # [V, C], LN0 folded in
    layers: list[V6Layer]
    ln_out: tuple[torch.Tensor, torch.Tensor]
    head: torch.Tensor  # [C, V]
    dtype: torch.dtype
    time_state: torch.Tensor | None  # [L, H, N(key), N(value)] fp32 from state tuning, or None


def _key(sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return sd[name].detach().to(device="cpu", dtype=torch.float32)  # rewrites run on the host in fp32
    except KeyError:
        raise CheckpointError(f"checkpoint: missing key {name!r} needed by RWKV v6") from None


def prepare(sd: dict[str, torch.Tensor], config: RWKVConfig, dtype: torch.dtype, device: Any) -> V6Weights:
    """Load-time rewrites of a raw BlinkDL v6 state dict (A6), done once.

    LN0 is folded into the embedding, vectors squeezed, matrices transposed to [in, out] and
    stacked (see :class:`V6Layer`); ``time_decay``, ``time_faaaa`` and ``ln_x`` stay fp32; an
    optional per-layer ``att.time_state`` [H, N(value), N(key)] is transposed to the ``S[key, value]``
    layout (A8) and kept for :func:`initial_state`.
    """
    g = lambda name: _key(sd, name)  # noqa: E731
    vec = lambda name: g(name).flatten()  # noqa: E731
    C, H, N = config.n_embd, config.n_head, config.head_size
    emb = fold_ln0(g("emb.weight"), g("blocks.0.ln0.weight"), g("blocks.0.ln0.bias"))
    order = [_STORED_MIX.index(n) for n in _MIX]

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    layers, states = [], []
    for i in range(config.n_layer):
        att, ffn = f"blocks.{i}.att.", f"blocks.{i}.ffn."
        w1 = g(att + "time_maa_w1")
        w2 = g(att + "time_maa_w2").view(5, -1, C)
        w1 = w1.view(C, 5, -1)[:, order].reshape(C, -1)
        layers.append(V6Layer(
            ln1=(cast(vec(f"blocks.{i}.ln1.weight")), cast(vec(f"blocks.{i}.ln1.bias"))),
            ln2=(cast(vec(f"blocks.{i}.ln2.weight")), cast(vec(f"blocks.{i}.ln2.bias"))),
            maa_x=cast(vec(att + "time_maa_x")),
            maa_w1=cast(w1),
            maa_w2=cast(w2[order]),
            maa=cast(torch.stack([vec(f"{att}time_maa_{n}") for n in _MIX]).view(5, 1, C)),
            rkvg=cast(torch.stack([g(f"{att}{n}.weight").t() for n in ("receptance", "key", "value", "gate")])),
            decay_w1=cast(g(att + "time_decay_w1")),
            decay_w2=cast(g(att + "time_decay_w2")),
            time_decay=vec(att + "time_decay").to(device),
            u=g(att + "time_faaaa").reshape(H, N).to(device),
            output=cast(g(att + "output.weight").t()),
            ln_x=(vec(att + "ln_x.weight").to(device), vec(att + "ln_x.bias").to(device)),
            ffn_maa=cast(torch.stack([vec(ffn + "time_maa_k"), vec(ffn + "time_maa_r")]).view(2, 1, C)),
            ffn_key=cast(g(ffn + "key.weight").t()),
            ffn_receptance=cast(g(ffn + "receptance.weight").t()),
            ffn_value=cast(g(ffn + "value.weight")),
        ))
        if att + "time_state" in sd:
            states.append(g(att + "time_state").reshape(H, N, N).transpose(1, 2))
    if states and len(states) != config.n_layer:
        raise CheckpointError(f"checkpoint: att.time_state present in {len(states)} of {config.n_layer} layers")
    return V6Weights(
        emb=cast(emb),
        layers=layers,
        ln_out=(cast(vec("ln_out.weight")), cast(vec("ln_out.bias"))),
        head=cast(g("head.weight").t()),
        dtype=dtype,
        time_state=torch.stack(states).to(device).contiguous() if states else None,
    )


def initial_state(
    weights: V6Weights, config: RWKVConfig, batch_size: int, device: Any, dtype: torch.dtype
) -> State | None:
    """The state a state-tuned checkpoint starts from (its ``time_state`` in every row), or None.

    ``att_x``/``ffn_x`` are zero in ``dtype``; ``att_kv`` is fp32 ``S[key, value]`` (A8).
    """
    if weights.time_state is None:
        return None
    state = State.zeros(config, batch_size, backend="torch", device=device, dtype=dtype)
    state.tensors["att_kv"].copy_(weights.time_state.unsqueeze(1).to(device))
    return state


@torch.no_grad()
def forward(
    weights: V6Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, all_logits: bool,
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
    weights: V6Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, all_logits: bool,
    out_state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """One pass over all of ``tokens``; activations are ``[B·T, C]`` (``[B, C]`` when T == 1)."""
    B, T = tokens.shape
    C, dtype = config.n_embd, weights.dtype
    if T == 1 and weights.layers and one_token_step_fits(
            B, C, quantized=not isinstance(weights.layers[0].ffn_key, torch.Tensor)):
        fused = _fused_layers(weights, config, tokens, state, out_state, all_logits)
        if fused is not None:
            return fused
    att_prev, ffn_prev, kv_in, kv_out, new_kv = matrix_state_io(state, out_state, dtype)
    att_last, ffn_last = [], []
    x = weights.emb[tokens.reshape(-1)]  # [B·T, C]
    for i, lw in enumerate(weights.layers):
        xx = F.layer_norm(x, (C,), lw.ln1[0], lw.ln1[1], LN_EPS)
        x = x + _time_mix(lw, config, B, T, xx, att_prev[i], kv_in[i], kv_out[i])
        att_last.append(last_rows(xx, B, T))
        xx = F.layer_norm(x, (C,), lw.ln2[0], lw.ln2[1], LN_EPS)
        x = x + _channel_mix(lw, B, T, xx, ffn_prev[i])
        ffn_last.append(last_rows(xx, B, T))
    logits = head_logits_rows(x, weights.ln_out, weights.head, B, T, all_logits)
    tensors = {"att_x": torch.stack(att_last), "att_kv": new_kv, "ffn_x": torch.stack(ffn_last)}
    return logits, write_state(out_state, config.version, tensors)



# native/v6_decode.c runs a one-token step's layers in one call (as v4/v5/v7): int8/int4 models at any width,
# fp32 ones while B·C is small, a few rows (layer_plan.one_token_step_fits).  Random L12 D768,
# B = 1, one thread, per step (per-layer -> one call): fp32 20.8 -> 12.9 ms, int8 6.7 -> 4.8, int4 5.4 -> 3.5.
_LAYER_FIELDS = ("ln1", "maa_x", "maa_w1", "maa_w2", "maa", "rkvg", "decay_w1", "decay_w2", "time_decay", "u", "ln_x",
                 "output", "ln2", "ffn_maa", "ffn_key", "ffn_receptance", "ffn_value")  # the kernel's order
_MATRIX_SLICES = {"rkvg": 4, "output": 1, "ffn_key": 1, "ffn_receptance": 1, "ffn_value": 1}


def _layer_plan(weights: V6Weights, config: RWKVConfig) -> LayerPlan | None:
    """The kernel's plan of the layers (:mod:`rwkv_music.model.layer_plan`; shape: the channel mix's F and
    the two LoRA widths, one for all layers), or None if they do not suit it."""
    return layer_plan(weights, _LAYER_FIELDS, _MATRIX_SLICES, config.head_size,
                      shape=lambda lw: (lw.ffn_key.shape[1], lw.maa_w2.shape[1], lw.decay_w1.shape[1]),
                      fp32_rewrite=FFN_VALUE_AS_F_C)


def _fused_layers(
    weights: V6Weights, config: RWKVConfig, tokens: torch.Tensor, state: State, out_state: State | None,
    all_logits: bool,
) -> tuple[torch.Tensor, State] | None:
    """``tokens`` [B, 1] through every layer in one C call (``rwkv6_decode_layers``), or None where it does
    not apply (not fp32 plain-tensor or native int8/int4 weights on the CPU, the kernels off)."""
    if weights.dtype != torch.float32 or not native.FUSED_LAYERS:
        return None
    plan = _layer_plan(weights, config)
    if plan is None:
        return None
    names = ("att_x", "ffn_x", "att_kv")
    x = weights.emb[tokens[:, 0]]  # [B, C], a new tensor: the kernel leaves the last residual in it
    sizes = (len(weights.layers), tokens.shape[0], config.n_embd, config.n_head, config.head_size, *plan.shape)
    outs = run_layers("rwkv6_decode_layers", plan, sizes, x, state, out_state, names, (LN_EPS, GN_EPS),
                      config.head_size)
    if outs is None:
        return None
    logits = head_logits_rows(x, weights.ln_out, weights.head, tokens.shape[0], 1, all_logits)
    return logits, write_state(out_state, config.version, dict(zip(names, outs)))


def _time_mix(
    lw: V6Layer, config: RWKVConfig, B: int, T: int, xx: torch.Tensor, prev: torch.Tensor,
    S: torch.Tensor, S_out: torch.Tensor,
) -> torch.Tensor:
    """A7 v6 time mix of LN1 outputs ``xx`` [B·T, C]; writes the new S into ``S_out``."""
    H, N = config.n_head, config.head_size
    BT, C = xx.shape
    d = shifted_rows(xx, prev, B, T) - xx  # step 1
    m = torch.tanh(torch.addcmul(xx, d, lw.maa_x) @ lw.maa_w1).view(BT, 5, -1).transpose(0, 1)
    mixed = torch.addcmul(xx, d, torch.baddbmm(lw.maa, m, lw.maa_w2))  # step 2: [5, B·T, C]
    r, k, v, g = torch.bmm(mixed[:4], lw.rkvg)  # step 3
    r, k, v = r.float(), k.float(), v.float()
    decay = lw.time_decay + (torch.tanh(mixed[4] @ lw.decay_w1) @ lw.decay_w2).float()
    log_w = decay.exp_().neg_()  # step 4: log w = -exp(·), fp32
    if T == 1:
        y = _wkv_step(S, S_out, lw.u, log_w.exp_(), r, k, v)
    else:
        y = _wkv_chunked(S, S_out, lw.u, *(t.view(B, T, H, N) for t in (log_w, r, k, v))).reshape(BT, -1)
    y = F.group_norm(y, H, lw.ln_x[0], lw.ln_x[1], GN_EPS)  # step 5, fp32
    if y.dtype != xx.dtype:  # (a no-op .to() still costs microseconds per layer)
        y = y.to(xx.dtype)
    return (y * F.silu(g)) @ lw.output


def _channel_mix(lw: V6Layer, B: int, T: int, xx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """A7 v6 channel mix of LN2 outputs ``xx`` [B·T, C]."""
    kx, rx = torch.addcmul(xx, shifted_rows(xx, prev, B, T) - xx, lw.ffn_maa)
    k = torch.relu_(kx @ lw.ffn_key).square_()
    return torch.sigmoid(rx @ lw.ffn_receptance) * F.linear(k, lw.ffn_value)


def _wkv_step(
    S: torch.Tensor, S_out: torch.Tensor, u: torch.Tensor, w: torch.Tensor,
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
) -> torch.Tensor:
    """One token: vectors [B, A] fp32, S [B,H,N(key),N(value)]; returns y [B, A] (uses the old S)."""
    B, A = r.shape
    H, N = u.shape
    BH = B * H
    S = S.reshape(BH, N, N)
    out = S_out.view(BH, N, N)
    y = torch.bmm(r.view(BH, 1, N), S).view(B, H, N)  # rᵀ·S
    bonus = (r * k).view(B, H, N).mul_(u).sum(-1, keepdim=True)  # r·(u ⊙ k)
    y = torch.addcmul(y, bonus, v.view(B, H, N))
    torch.mul(S, w.view(BH, N, 1), out=out)
    out.addcmul_(k.view(BH, N, 1), v.view(BH, 1, N))
    return y.view(B, A)


def _wkv_chunked(
    S: torch.Tensor, S_out: torch.Tensor, u: torch.Tensor, log_w: torch.Tensor,
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = CHUNK_LEN,
) -> torch.Tensor:
    """Many tokens at once (module docstring): inputs [B,T,H,N] fp32; returns y [B,T,H,N]."""
    B, T, H, N = r.shape
    L = min(chunk, T)
    # log w below -60 is w = 0 in every visible digit; the clamp keeps the chunk's cumulative sums
    # small, so their differences (the exponents used) keep fp32 precision (|c| <= 60·L).
    log_w = log_w.clamp(min=MIN_LOG_DECAY)
    log_w, r, k, v = (to_chunks(t, L) for t in (log_w, r, k, v))  # [B,H,n_chunks,L,N]
    n_chunks = r.shape[2]
    cum = log_w.cumsum(-2)  # c_t
    excl = F.pad(cum[..., :-1, :], (0, 0, 1, 0))  # c_{t-1}: the same fp32 numbers as cum, so c_{t-1} - c_{t-1} = 0
    last = cum[..., -1:, :]
    upd = (k * (last - cum).exp()).transpose(-1, -2) @ v  # [B,H,n_chunks,N(key),N(value)]
    decay = last.transpose(-1, -2).exp()  # [B,H,n_chunks,N,1]
    scores = _intra_scores(r, k, excl, cum)  # [B,H,n_chunks,L,L], strictly lower
    scores.diagonal(dim1=-2, dim2=-1).copy_((r * k * u.view(1, H, 1, 1, N)).sum(-1))
    starts = torch.empty((B, H, n_chunks, N, N), dtype=S.dtype, device=S.device)
    cur = S
    for c in range(n_chunks):  # the only sequential part: one addcmul per chunk
        starts[:, :, c] = cur
        cur = torch.addcmul(upd[:, :, c], cur, decay[:, :, c])
    S_out.copy_(cur)
    y = scores @ v + (r * excl.exp()) @ starts
    return from_chunks(y, T)


def _intra_scores(r: torch.Tensor, k: torch.Tensor, excl: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """``A[t, s] = Σ_j r_t[j] k_s[j] e^{c_{t-1}[j] - c_s[j]}`` for s < t, else 0; inputs [..., n_chunks, L, N].

    Evaluated on the exact [L, L, N] exponent grid (every exponent ≤ 0), a few chunks at a time.
    """
    *lead, n_chunks, L, N = r.shape
    upper = torch.ones(L, L, dtype=torch.bool, device=r.device).triu_().unsqueeze(-1)  # s ≥ t
    per_chunk = max(1, r[..., 0, 0, 0].numel() * L * L * N)
    step = max(1, GRID_ELEMENTS // per_chunk)
    out = []
    for c0 in range(0, n_chunks, step):
        sl = slice(c0, c0 + step)
        grid = excl[..., sl, :, None, :] - cum[..., sl, None, :, :]  # [..., c, t, s, N]
        grid.masked_fill_(upper, float("-inf")).exp_()
        grid.mul_(r[..., sl, :, None, :]).mul_(k[..., sl, None, :, :])
        out.append(grid.sum(-1))
    return out[0] if len(out) == 1 else torch.cat(out, dim=-3)
