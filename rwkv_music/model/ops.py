"""Small torch building blocks shared by the per-version model files."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from rwkv_music.model.constants import LN_EPS
from rwkv_music.model.state import State


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with the checkpoints' eps."""
    return F.layer_norm(x, (x.shape[-1],), weight=weight, bias=bias, eps=LN_EPS)


def fold_ln0(emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The embedding table with ``blocks.0.ln0`` applied to every row, in fp32 (docs/formats.md A6).

    ln0 only ever sees an embedding row, so applying it once at load time gives the same numbers
    as applying it per token; ``weight``/``bias`` may be stored ``[C]`` or ``[1, 1, C]``.
    """
    return layer_norm(emb.float(), weight.flatten().float(), bias.flatten().float())


def token_shift(xx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The previous token's vector for every position: ``xx`` [B,T,C], ``prev`` [B,C] → [B,T,C]."""
    if xx.shape[1] == 1:
        return prev.unsqueeze(1)
    return torch.cat([prev.unsqueeze(1), xx[:, :-1]], dim=1)


def to_chunks(t: torch.Tensor, length: int) -> torch.Tensor:
    """``[B,T,H,N]`` → ``[B,H,n_chunks,length,N]`` for the chunked WKVs, the tail zero-padded.

    A zero step is an identity for them: log w = 0 keeps the state, zero r/k/v add nothing.
    """
    B, T, H, N = t.shape
    n_chunks = -(-T // length)
    if n_chunks * length != T:
        t = F.pad(t, (0, 0, 0, 0, 0, n_chunks * length - T))
    return t.view(B, n_chunks, length, H, N).permute(0, 3, 1, 2, 4)


def from_chunks(y: torch.Tensor, T: int) -> torch.Tensor:
    """The inverse of :func:`to_chunks`: ``[B,H,n_chunks,L,N]`` → ``[B,T,H,N]``, padding dropped."""
    B, H, n_chunks, L, N = y.shape
    return y.permute(0, 2, 3, 1, 4).reshape(B, n_chunks * L, H, N)[:, :T]


def forward_in_segments(one_pass: Callable[..., tuple[torch.Tensor, State]], weights: Any, config: Any,
                        tokens: torch.Tensor, state: State, all_logits: bool, max_positions: int,
                        out_state: State | None = None) -> tuple[torch.Tensor, State]:
    """Run ``one_pass`` over ``tokens`` [B, T] in segments of at most ``max_positions`` positions (B·T).

    The state is carried between segments, which bounds activation memory and gives the same
    result as one call (docs/formats.md A11).  Returns ``(logits, new_state)`` like ``one_pass``; with
    ``out_state`` every segment writes its state into it (see :func:`write_state`).
    """
    B, T = tokens.shape
    step = max(1, max_positions // B)
    if T <= step:
        return one_pass(weights, config, tokens, state, all_logits, out_state)
    parts = []
    for t0 in range(0, T, step):
        logits, state = one_pass(weights, config, tokens[:, t0 : t0 + step], state, all_logits, out_state)
        parts.append(logits)
    return (torch.cat(parts, dim=1) if all_logits else logits), state


def write_state(out_state: State | None, version: object, tensors: dict[str, torch.Tensor]) -> State:
    """The new state: ``tensors`` as a new State, or, with ``out_state`` (a State), copied into its tensors.

    ``out_state`` may be the input state itself (in-place decode): a version module then reads each
    input tensor before it writes the matching output, and tensors it already wrote into ``out_state``
    (the same storage) are not copied again.
    """
    if out_state is None:
        return State(version, tensors)
    for name, t in tensors.items():
        dst = out_state.tensors[name]
        if t.data_ptr() != dst.data_ptr():
            dst.copy_(t)
    return out_state


def matrix_state_io(state: State, out_state: State | None, dtype: torch.dtype) -> tuple:
    """Per-layer views for a v6/v7 pass: (att_prev, ffn_prev, kv_in, kv_out, new_kv).

    ``new_kv`` [L, B, H, N, N] receives the new WKV states: a fresh buffer, or ``out_state``'s own
    tensor (which may be ``state``'s: in-place decode; each layer's WKV reads its S before writing S').
    """
    att_prev = state.tensors["att_x"].to(dtype).unbind(0)
    ffn_prev = state.tensors["ffn_x"].to(dtype).unbind(0)
    kv = state.tensors["att_kv"]
    if out_state is None:
        new_kv = torch.empty(kv.shape, dtype=torch.float32, device=kv.device)
    else:
        new_kv = out_state.tensors["att_kv"]
    return att_prev, ffn_prev, kv.unbind(0), new_kv.unbind(0), new_kv


def last_rows(xx: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """The last position's row per batch row of ``xx`` [B·T, C] (the next call's token shift)."""
    return xx if T == 1 else xx.view(B, T, -1)[:, -1]


def shifted_rows(xx: torch.Tensor, prev: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """The previous position's LN output for every row of ``xx`` [B·T, C] (``prev`` [B, C] before the first)."""
    if T == 1:
        return prev
    return token_shift(xx.view(B, T, -1), prev).view(B * T, -1)


def head_logits_rows(x: torch.Tensor, ln_out: tuple, head: torch.Tensor, B: int, T: int,
                     all_logits: bool) -> torch.Tensor:
    """float32 logits from the residual ``x`` [B·T, C]: [B, V] for the last position, or [B, T, V]."""
    C = x.shape[-1]
    if all_logits:
        x = x.view(B, T, C)
    elif T > 1:
        x = x.view(B, T, C)[:, -1]
    x = F.layer_norm(x, (C,), ln_out[0], ln_out[1], LN_EPS)
    return (x @ head).float()
