"""Initialisation of a fresh RWKV-7 for training, after the spirit of BlinkDL's v7 trainer.

The recipe (written from the published trainer's ideas, not copied):
* tiny embedding (±1e-4) — the ln0 LayerNorm rescales it, and large embeddings train worse;
* token-shift mixes ``x_*`` = 1 − (c/C)^p with a power shrinking in deeper layers;
* decay bias ``w0`` spread across channels from very slow (−6.5) to fast (−1.5), so heads see
  several time scales from step one;
* zero output projections (``att.output``, ``ffn.value``) and zero LoRA down-projections: every
  block starts as the identity and the residual stream is clean;
* ``ln_x`` weight growing with depth, ``k_k`` 0.85, ``k_a`` 1, ``v0`` 1 (no value residual at first).
"""

from __future__ import annotations

import math

import torch

from rwkv_music.train.model_v7 import RWKV7


def _ortho_(t: torch.Tensor, gain: float) -> None:
    torch.nn.init.orthogonal_(t, gain=gain)


@torch.no_grad()
def init_rwkv7(model: RWKV7, seed: int = 0) -> RWKV7:
    """Fill every parameter of ``model`` in place (deterministic for a given ``seed``)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _init(model)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def _init(model: RWKV7) -> None:
    cfg = model.config
    C, L = cfg.n_embd, cfg.n_layer
    model.emb.weight.uniform_(-1e-4, 1e-4)
    head_std = 0.5 / math.sqrt(C)
    model.head.weight.normal_(0.0, head_std)
    ddd = torch.arange(C, dtype=torch.float32) / C
    for i, block in enumerate(model.blocks):
        r01 = i / max(L - 1, 1)
        r1a0 = 1.0 - i / L
        att = block.att
        for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(att, name).copy_((1.0 - ddd.pow(p * r1a0)).view(1, 1, C))
        n = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
        decay = -7.0 + 5.0 * n.pow(0.85 + 1.0 * math.sqrt(r01))
        att.w0.copy_((decay + 0.5).view(1, 1, C))
        att.a0.zero_()
        att.v0.fill_(1.0)
        att.k_k.fill_(0.85)
        att.k_a.fill_(1.0)
        att.r_k.fill_(-0.04)
        for name in ("w", "a", "v", "g"):
            getattr(att, f"{name}1").zero_()
            _ortho_(getattr(att, f"{name}2"), 0.1)
        bound = 1.0 / math.sqrt(C)
        att.receptance.weight.uniform_(-0.5 * bound, 0.5 * bound)
        att.key.weight.uniform_(-0.05 * bound, 0.05 * bound)
        att.value.weight.uniform_(-0.5 * bound, 0.5 * bound)
        att.output.weight.zero_()
        att.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
        att.ln_x.bias.zero_()
        block.ffn.x_k.copy_((1.0 - ddd.pow(r1a0 ** 4)).view(1, 1, C))
        block.ffn.key.weight.uniform_(-0.5 * bound, 0.5 * bound)
        block.ffn.value.weight.zero_()
        for ln in (block.ln1, block.ln2, getattr(block, "ln0", None)):
            if ln is not None:
                ln.weight.fill_(1.0)
                ln.bias.zero_()
    model.ln_out.weight.fill_(1.0)
    model.ln_out.bias.zero_()
