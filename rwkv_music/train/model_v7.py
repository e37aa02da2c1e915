"""RWKV-7 ("x070") training model in pure torch, with a chunked WKV that autograd can run.

The recurrence is exactly docs/formats.md A7 (v7 time mix, v7 channel mix), the one
:mod:`rwkv_music.model.reference.v7` spells out per token; parameter names and shapes are the
BlinkDL trainer's (A3 v7 row), so ``state_dict()`` *is* a BlinkDL checkpoint: ``[1,1,C]`` vectors,
``[out,in]`` matrices, ``blocks.0.ln0.*`` kept unfolded (ln0 is trained, so it cannot be folded).

The WKV over a sequence is :func:`rwkv_music.model.wkv7.wkv7_chunked`, the same code inference
runs (why chunked: a per-token Python loop is too slow to train on CPU).  Training uses shorter
chunks than inference: with w ≥ e^{-e^{-1/2}} ≈ 0.545 (A7 step 7) the largest factor 1/W_t over a
16-token chunk is ≈ 1.6e4, which keeps the gradients well inside fp32 too.  ``chunked=False``
runs the reference's per-token step instead (slow; for checking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import GN_EPS, LN_EPS, V7_DECAY_SCALE
from rwkv_music.model.factory import v7_lora_dims
from rwkv_music.model.reference.v7 import wkv_step
from rwkv_music.model.wkv7 import wkv7_chunked

TRAIN_CHUNK_LEN = 16

LayerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # att_sx [B,C], S [B,H,N,N], ffn_sx [B,C]


def make_config(n_layer: int, n_embd: int, vocab_size: int, head_size: int = 64,
                dim_ffn: int | None = None) -> RWKVConfig:
    """An :class:`RWKVConfig` for a fresh v7 model (F = 4C, A = C like the released models)."""
    if n_embd % head_size:
        raise ValueError(f"n_embd {n_embd} is not a multiple of head_size {head_size}")
    return RWKVConfig(version="7", n_layer=n_layer, n_embd=n_embd, dim_att=n_embd,
                      dim_ffn=dim_ffn or 4 * n_embd, n_head=n_embd // head_size,
                      head_size=head_size, vocab_size=vocab_size, lora=v7_lora_dims(n_embd))


def wkv7_token_loop(S: torch.Tensor, log_w: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    kk: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's per-token WKV step over ``[B,T,H,N]`` inputs: (y [B,T,H,N], final S)."""
    ys = []
    for t in range(r.shape[1]):
        y, S = wkv_step(S, log_w[:, t].exp(), k[:, t], v[:, t], kk[:, t], a[:, t], r[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), S


# ----------------------------------------------------------------------------- modules


class TimeMix(nn.Module):
    """RWKV-7 time mix (docs/formats.md A7 v7 steps 1–10) with the trainer's parameter names."""

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
        self.ln_x = nn.GroupNorm(H, C, eps=GN_EPS)

    def forward(self, xx: torch.Tensor, sx: torch.Tensor, S: torch.Tensor, v_first: torch.Tensor | None,
                chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
        log_w = (-V7_DECAY_SCALE * torch.sigmoid((self.w0 + w_raw).float())).view(B, T, H, N)
        hr, hk, hv, hkk, ha = (t.float().view(B, T, H, N) for t in (r, k, v, kk, a))
        with torch.autocast(hr.device.type, enabled=False):  # the WKV state and its solve stay fp32 under bf16
            if chunked:
                y, S = wkv7_chunked(S, log_w, hr, hk, hv, hkk, hkk * ha, chunk=TRAIN_CHUNK_LEN)
            else:
                y, S = wkv7_token_loop(S, log_w, hr, hk, hv, hkk, ha)
        y = self.ln_x(y.reshape(B * T, C).to(xx.dtype)).view(B, T, C)
        bonus = ((r * k * self.r_k.view(1, 1, C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N))
        y = y + bonus.view(B, T, C)
        return self.output(y * g), xx[:, -1], S, v_first


class ChannelMix(nn.Module):
    """RWKV-7 channel mix: out = Wv·relu²(Wk·kx), no receptance (docs/formats.md A7)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, xx: torch.Tensor, sx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Trainable RWKV-7; ``state_dict()`` is in the BlinkDL layout (docs/formats.md A3)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        if cfg.version != "7":
            raise ValueError(f"RWKV7 trains version 7 only, got {cfg.version}")
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def zero_state(self, batch_size: int, device: torch.device | str | None = None) -> list[LayerState]:
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
