"""RWKV-7 ("x070") training model in pure torch, with a chunked WKV that autograd can run.

The recurrence is exactly FORMATS A7 (v7 time mix, v7 channel mix); parameter names and shapes
are the BlinkDL trainer's (FORMATS A3 v7 row), so ``state_dict()`` *is* a BlinkDL checkpoint:
``[1,1,C]`` vectors, ``[out,in]`` matrices, ``blocks.0.ln0.*`` kept unfolded.

Chunked WKV (why: a per-token Python loop is too slow to train on CPU).  Per head, with
S[value i, key j], the step is ``S_t = S_{t-1} diag(w_t) + z_t b_tᵀ + v_t k_tᵀ`` where
``b = kk ⊙ a`` and ``z_t = -S_{t-1} kk_t``.  Inside a chunk of L tokens, with cumulative decay
``W_t = Π_{s≤t} w_s`` (elementwise), every term becomes a product of "decayed" vectors, and the
unknown z's solve one unit lower-triangular L×L system.  With w ≥ e^{-e^{-1/2}} ≈ 0.545
(A7 step 7) the largest factor 1/W_t over a 16-token chunk is ≈ 1.6e4, well inside fp32.
:func:`wkv7_sequential` is the obvious per-token loop; tests check the two agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_music.model.config import RWKVConfig

GROUP_NORM_EPS = 64e-5  # FORMATS A9: v7 ln_x uses 64e-5
LN_EPS = 1e-5
DECAY_SCALE = math.exp(-0.5)  # A7 step 7: w = exp(-e^{-1/2} σ(w0 + w_raw))
CHUNK_LEN = 16

LayerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # att_sx [B,C], S [B,H,N,N], ffn_sx [B,C]


def lora_dims(n_embd: int) -> dict[str, int]:
    """The v7 trainer's LoRA widths for width C (FORMATS A3 notes)."""

    def rnd(factor: float) -> int:
        return max(32, int(round(factor * math.sqrt(n_embd) / 32)) * 32)

    return {"w": rnd(2.5), "a": rnd(2.5), "v": rnd(1.7), "g": rnd(5.0)}


def make_config(n_layer: int, n_embd: int, vocab_size: int, head_size: int = 64,
                dim_ffn: int | None = None) -> RWKVConfig:
    """An :class:`RWKVConfig` for a fresh v7 model (F = 4C, A = C like the released models)."""
    if n_embd % head_size:
        raise ValueError(f"n_embd {n_embd} is not a multiple of head_size {head_size}")
    return RWKVConfig(version="7", n_layer=n_layer, n_embd=n_embd, dim_att=n_embd,
                      dim_ffn=dim_ffn or 4 * n_embd, n_head=n_embd // head_size,
                      head_size=head_size, vocab_size=vocab_size, lora=lora_dims(n_embd))


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> RWKVConfig:
    """Read every v7 size from tensor shapes (FORMATS A5)."""
    vocab, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_head, head_size = sd["blocks.0.att.r_k"].shape
    lora = {n: int(sd[f"blocks.0.att.{n}1"].shape[1]) for n in ("w", "a", "v", "g")}
    return RWKVConfig(version="7", n_layer=n_layer, n_embd=n_embd, dim_att=n_embd,
                      dim_ffn=int(sd["blocks.0.ffn.key.weight"].shape[0]), n_head=int(n_head),
                      head_size=int(head_size), vocab_size=int(vocab), lora=lora)


# ----------------------------------------------------------------------------- WKV kernels


def wkv7_sequential(r, w, k, v, kk, a, state):
    """Reference per-token loop of A7 step 8. Inputs [B,T,H,N] fp32, state [B,H,N,N]."""
    b = kk * a
    ys = []
    S = state
    for t in range(r.shape[1]):
        sa = S @ kk[:, t, :, :, None]  # [B,H,N,1] = S·kk (old S)
        S = S * w[:, t, :, None, :] - sa @ b[:, t, :, None, :] + v[:, t, :, :, None] @ k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    return torch.stack(ys, dim=1), S


def wkv7_chunked(r, w, k, v, kk, a, state, chunk: int = CHUNK_LEN):
    """Same result as :func:`wkv7_sequential`, one triangular solve per chunk (see module doc)."""
    B, T, H, N = r.shape
    b = kk * a
    S = state
    ys = []
    for c0 in range(0, T, chunk):
        rc, wc, kc, vc, kkc, bc = (x[:, c0:c0 + chunk].transpose(1, 2) for x in (r, w, k, v, kk, b))
        L = rc.shape[2]  # [B,H,L,N] each
        logw = torch.log(wc)
        cum = torch.cumsum(logw, dim=2)  # log W_t, inclusive
        kk_q = kkc * torch.exp(cum - logw)  # kk_t ⊙ W_{t-1}: z_t reads S_{t-1}
        r_q = rc * torch.exp(cum)  # r_t ⊙ W_t: y_t reads S_t
        inv = torch.exp(-cum)
        b_s, k_s = bc * inv, kc * inv
        ones = torch.ones(L, L, dtype=r.dtype, device=r.device)
        strict, incl = torch.tril(ones, -1), torch.tril(ones)
        m_b = (kk_q @ b_s.transpose(-1, -2)) * strict  # [B,H,t,s]
        m_k = (kk_q @ k_s.transpose(-1, -2)) * strict
        rhs = -(kk_q @ S.transpose(-1, -2)) - m_k @ vc  # [B,H,L,N_v]
        eye = torch.eye(L, dtype=r.dtype, device=r.device)
        z = torch.linalg.solve_triangular(eye + m_b, rhs, upper=False, unitriangular=True)
        a_b = (r_q @ b_s.transpose(-1, -2)) * incl
        a_k = (r_q @ k_s.transpose(-1, -2)) * incl
        ys.append((r_q @ S.transpose(-1, -2) + a_b @ z + a_k @ vc).transpose(1, 2))
        w_end = torch.exp(cum[:, :, -1:, :])  # [B,H,1,N] decay over the whole chunk
        S = S * w_end + z.transpose(-1, -2) @ (b_s * w_end) + vc.transpose(-1, -2) @ (k_s * w_end)
    return torch.cat(ys, dim=1), S


# ----------------------------------------------------------------------------- modules


class TimeMix(nn.Module):
    """RWKV-7 time mix (FORMATS A7 v7 steps 1–10) with the trainer's parameter names."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head, self.head_size = layer_id, H, N
        d = cfg.lora
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, C)))
        for name, dim in (("w", d["w"]), ("a", d["a"]), ("v", d["v"]), ("g", d["g"])):
            setattr(self, f"{name}1", nn.Parameter(torch.zeros(C, dim)))
            setattr(self, f"{name}2", nn.Parameter(torch.zeros(dim, C)))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUP_NORM_EPS)

    def forward(self, xx, sx, S, v_first, chunked: bool = True):
        """xx: LN1 output [B,T,C]; sx: previous LN1 output [B,C]; S: [B,H,N,N] fp32."""
        B, T, C = xx.shape
        H, N = self.n_head, self.head_size
        d = torch.cat([sx[:, None, :], xx[:, :-1]], dim=1) - xx  # A7 step 1: d = sx - xx
        xr, xw, xk, xv, xa, xg = (xx + d * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        w_raw = torch.tanh(xw @ self.w1) @ self.w2
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0, eps=1e-12).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        w = torch.exp(-DECAY_SCALE * torch.sigmoid((self.w0 + w_raw).float()))
        heads = [t.float().view(B, T, H, N) for t in (r, k, v, kk, a)]
        kernel = wkv7_chunked if chunked else wkv7_sequential
        y, S = kernel(heads[0], w.view(B, T, H, N), heads[1], heads[2], heads[3], heads[4], S)
        y = self.ln_x(y.reshape(B * T, C).to(xx.dtype)).view(B, T, C)
        bonus = ((r * k * self.r_k.view(1, 1, C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N))
        y = y + bonus.view(B, T, C)
        return self.output(y * g), xx[:, -1], S, v_first


class ChannelMix(nn.Module):
    """RWKV-7 channel mix: out = Wv·relu²(Wk·kx), no receptance (FORMATS A7)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, xx, sx):
        d = torch.cat([sx[:, None, :], xx[:, :-1]], dim=1) - xx
        k = torch.relu(self.key(xx + d * self.x_k)) ** 2
        return self.value(k), xx[:, -1]


class Block(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)


class RWKV7(nn.Module):
    """Trainable RWKV-7; ``state_dict()`` is in the BlinkDL layout (FORMATS A3)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        if cfg.version != "7":
            raise ValueError(f"RWKV7 trains version 7 only, got {cfg.version}")
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def zero_state(self, batch_size: int, device=None) -> list[LayerState]:
        cfg = self.config
        dev = device or self.emb.weight.device
        dt = self.emb.weight.dtype
        return [(torch.zeros(batch_size, cfg.n_embd, device=dev, dtype=dt),
                 torch.zeros(batch_size, cfg.n_head, cfg.head_size, cfg.head_size, device=dev),
                 torch.zeros(batch_size, cfg.n_embd, device=dev, dtype=dt)) for _ in range(cfg.n_layer)]

    def forward(self, idx: torch.Tensor, state: list[LayerState] | None = None, *,
                chunked: bool = True) -> tuple[torch.Tensor, list[LayerState]]:
        """idx [B,T] int → (logits [B,T,V], new state). The input state is not modified."""
        state = state if state is not None else self.zero_state(idx.shape[0], idx.device)
        x = self.blocks[0].ln0(self.emb(idx))
        v_first = None
        new_state = []
        for block, (att_sx, S, ffn_sx) in zip(self.blocks, state):
            dx, att_sx, S, v_first = block.att(block.ln1(x), att_sx, S, v_first, chunked)
            x = x + dx
            dx, ffn_sx = block.ffn(block.ln2(x), ffn_sx)
            x = x + dx
            new_state.append((att_sx, S, ffn_sx))
        return self.head(self.ln_out(x)), new_state

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
