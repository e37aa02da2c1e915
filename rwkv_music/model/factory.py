"""Random-weight checkpoints in the exact BlinkDL key layout of every version (docs/formats.md A3).

Used by the tests (as stand-ins for the real checkpoints, which cannot be downloaded here), by
examples, and as the starting point of training from scratch.  Keys come in the trainer's
module order (``emb``, then per block ``ln1``, ``ln2``, ``ln0`` (block 0), ``att.*``, ``ffn.*``,
then ``ln_out``, ``head``), vectors are ``[1, 1, C]`` and matrices ``[out, in]`` as stored by
the trainers.  Values are random but in the ranges real models use, so decays stay in (0, 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from rwkv_music.model.config import ModelVersion

# RWKV-6 trainer defaults (docs/formats.md A3 notes): D_MIX_LORA and D_DECAY_LORA.
V6_MIX_LORA = 32
V6_DECAY_LORA = 64
# RWKV-7 DeepEmbed: s_emb rows are viewed as a 32x32 matrix (docs/formats.md A3, v7a row).
V7A_SEMB_DIM = 1024
V7A_SEMB_SIDE = 32


def v7_lora_dims(n_embd: int) -> dict[str, int]:
    """The RWKV-7 trainer's LoRA widths for width ``n_embd`` (docs/formats.md A3 notes)."""

    def rounded(factor: float) -> int:
        return max(32, int(round(factor * math.sqrt(n_embd) / 32)) * 32)

    return {"w": rounded(2.5), "a": rounded(2.5), "v": rounded(1.7), "g": rounded(5.0)}


class _Rand:
    """Draws tensors from one seeded generator (so a seed gives the same checkpoint)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std + mean

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) * (high - low) + low

    def linear(self, n_out: int, n_in: int, gain: float = 1.0) -> torch.Tensor:
        return self.normal(n_out, n_in, std=gain / math.sqrt(n_in))

    def mix(self, c: int) -> torch.Tensor:
        return self.uniform(1, 1, c)


def random_checkpoint(
    version: Any,
    n_layer: int = 2,
    n_embd: int = 64,
    head_size: int = 32,
    vocab_size: int = 128,
    dim_ffn: int | None = None,
    seed: int = 0,
    time_first_key: str | None = None,
    time_state_std: float = 0.0,
) -> dict[str, torch.Tensor]:
    """A random state dict in the raw trainer layout of ``version`` (fp32 tensors).

    ``time_first_key`` picks ``"time_first"`` or ``"time_faaaa"`` for v5.0/v5.1 (both occur in
    the wild, docs/formats.md A3); by default 5.0 uses ``time_first`` and 5.1 ``time_faaaa``.
    ``time_state_std`` > 0 (v6 only) adds state-tuning tensors ``att.time_state`` [H, N, N] to every
    block, drawn after everything else so the other tensors stay those of the same seed.
    """
    version = ModelVersion(version)
    if n_embd % 32 or (version.family >= 5 and n_embd % head_size):
        raise ValueError(f"n_embd {n_embd} must be a multiple of 32 and of head_size {head_size}")
    C, V, H, N = n_embd, vocab_size, n_embd // head_size, head_size
    F = dim_ffn or 4 * C
    r = _Rand(seed)
    sd: dict[str, torch.Tensor] = {"emb.weight": r.normal(V, C, std=1.0)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2") + (("ln0",) if i == 0 else ()):
            sd[p + ln + ".weight"] = r.normal(C, std=0.1, mean=1.0)
            sd[p + ln + ".bias"] = r.normal(C, std=0.1)
        att = _ATT_BUILDERS[version.family](version, r, C, H, N, V, i, time_first_key)
        sd.update({p + "att." + k: v for k, v in att.items()})
        ffn = _ffn(version, r, C, F, V)
        sd.update({p + "ffn." + k: v for k, v in ffn.items()})
    sd["ln_out.weight"] = r.normal(C, std=0.1, mean=1.0)
    sd["ln_out.bias"] = r.normal(C, std=0.1)
    sd["head.weight"] = r.linear(V, C, gain=2.0)
    if time_state_std:
        if version != "6":
            raise ValueError(f"time_state_std: only v6 checkpoints carry att.time_state, not v{version}")
        for i in range(n_layer):
            sd[f"blocks.{i}.att.time_state"] = r.normal(H, N, N, std=time_state_std)
    return sd


def _att_v4(
    version: ModelVersion, r: _Rand, C: int, H: int, N: int, V: int, i: int, tf_key: str | None
) -> dict[str, torch.Tensor]:
    return {
        "time_decay": r.uniform(C, low=-1.5, high=1.0),
        "time_first": r.normal(C, std=0.5),
        "time_mix_k": r.mix(C),
        "time_mix_v": r.mix(C),
        "time_mix_r": r.mix(C),
        "key.weight": r.linear(C, C),
        "value.weight": r.linear(C, C),
        "receptance.weight": r.linear(C, C),
        "output.weight": r.linear(C, C),
    }


def _att_v5(
    version: ModelVersion, r: _Rand, C: int, H: int, N: int, V: int, i: int, tf_key: str | None
) -> dict[str, torch.Tensor]:
    out = {"time_mix_k": r.mix(C), "time_mix_v": r.mix(C), "time_mix_r": r.mix(C)}
    if version in ("5.1", "5.2"):
        out["time_mix_g"] = r.mix(C)
    if version == "5.2":
        out["time_decay"] = r.uniform(H, N, low=-3.0, high=0.5)
        out["time_faaaa"] = r.normal(H, N, std=0.3)
    else:
        out["time_decay"] = r.uniform(H, low=-3.0, high=0.5)
        key = tf_key or ("time_first" if version == "5.0" else "time_faaaa")
        out[key] = r.normal(H, std=0.3)
    out["receptance.weight"] = r.linear(C, C)
    out["key.weight"] = r.linear(C, C)
    out["value.weight"] = r.linear(C, C)
    out["output.weight"] = r.linear(C, C)
    if version in ("5.1", "5.2"):
        out["gate.weight"] = r.linear(C, C)
    out["ln_x.weight"] = r.normal(C, std=0.1, mean=1.0)
    out["ln_x.bias"] = r.normal(C, std=0.1)
    return out


def _att_v6(
    version: ModelVersion, r: _Rand, C: int, H: int, N: int, V: int, i: int, tf_key: str | None
) -> dict[str, torch.Tensor]:
    Dm, Dd = V6_MIX_LORA, V6_DECAY_LORA
    out = {f"time_maa_{n}": r.mix(C) for n in ("x", "w", "k", "v", "r", "g")}
    out["time_maa_w1"] = r.normal(C, 5 * Dm, std=0.1)
    out["time_maa_w2"] = r.normal(5, Dm, C, std=0.1)
    out["time_decay"] = r.uniform(1, 1, C, low=-3.0, high=0.5)
    out["time_decay_w1"] = r.normal(C, Dd, std=0.1)
    out["time_decay_w2"] = r.normal(Dd, C, std=0.1)
    out["time_faaaa"] = r.normal(H, N, std=0.3)
    out["receptance.weight"] = r.linear(C, C)
    out["key.weight"] = r.linear(C, C)
    out["value.weight"] = r.linear(C, C)
    out["output.weight"] = r.linear(C, C)
    out["gate.weight"] = r.linear(C, C)
    out["ln_x.weight"] = r.normal(C, std=0.1, mean=1.0)
    out["ln_x.bias"] = r.normal(C, std=0.1)
    return out


def _att_v7(
    version: ModelVersion, r: _Rand, C: int, H: int, N: int, V: int, i: int, tf_key: str | None
) -> dict[str, torch.Tensor]:
    d = v7_lora_dims(C)
    out = {f"x_{n}": r.mix(C) for n in ("r", "w", "k", "v", "a", "g")}
    out["w0"] = r.uniform(1, 1, C, low=-2.0, high=1.0)
    out["w1"] = r.normal(C, d["w"], std=0.1)
    out["w2"] = r.normal(d["w"], C, std=0.1)
    out["a0"] = r.normal(1, 1, C, std=0.3)
    out["a1"] = r.normal(C, d["a"], std=0.1)
    out["a2"] = r.normal(d["a"], C, std=0.1)
    out["v0"] = r.normal(1, 1, C, std=0.3, mean=0.5)
    out["v1"] = r.normal(C, d["v"], std=0.1)
    out["v2"] = r.normal(d["v"], C, std=0.1)
    out["g1"] = r.normal(C, d["g"], std=0.1)
    out["g2"] = r.normal(d["g"], C, std=0.1)
    out["k_k"] = r.uniform(1, 1, C, low=0.5, high=1.0)
    out["k_a"] = r.uniform(1, 1, C)
    out["r_k"] = r.normal(H, N, std=0.3)
    out["receptance.weight"] = r.linear(C, C)
    out["key.weight"] = r.linear(C, C)
    out["value.weight"] = r.linear(C, C)
    out["output.weight"] = r.linear(C, C)
    out["ln_x.weight"] = r.normal(C, std=0.1, mean=1.0)
    out["ln_x.bias"] = r.normal(C, std=0.1)
    return out


def _ffn(version: ModelVersion, r: _Rand, C: int, F: int, V: int) -> dict[str, torch.Tensor]:
    if version.family == 7:
        out = {"x_k": r.mix(C), "key.weight": r.linear(F, C), "value.weight": r.linear(C, F)}
        if version == "7a":
            S, side = V7A_SEMB_DIM, V7A_SEMB_SIDE
            out["s_emb.weight"] = r.normal(V, S, std=0.1)
            out["s_emb_x.weight"] = r.normal(S, C, std=0.02)
            out["s1"] = r.normal(C, side, std=0.1)
            out["s2"] = r.normal(side, F, std=0.1)
            out["s0"] = r.normal(F, std=0.1, mean=1.0)
        return out
    names = ("time_maa_k", "time_maa_r") if version.family == 6 else ("time_mix_k", "time_mix_r")
    return {
        names[0]: r.mix(C),
        names[1]: r.mix(C),
        "key.weight": r.linear(F, C),
        "receptance.weight": r.linear(C, C),
        "value.weight": r.linear(C, F),
    }


_ATT_BUILDERS = {4: _att_v4, 5: _att_v5, 6: _att_v6, 7: _att_v7}


def save_random_checkpoint(
    path: str | os.PathLike, version: Any, dtype: torch.dtype = torch.float32, **kw: Any
) -> Path:
    """Write :func:`random_checkpoint` to ``path`` with ``torch.save`` (as the trainers do)."""
    path = Path(path)
    sd = {k: v.to(dtype) for k, v in random_checkpoint(version, **kw).items()}
    torch.save(sd, path)
    return path
