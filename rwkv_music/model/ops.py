"""Small torch building blocks shared by the per-version model files."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkv_music.model.state import State

LN_EPS = 1e-5  # LayerNorm eps of ln0/ln1/ln2/ln_out in every version (FORMATS A9)
GN_EPS = 64e-5  # GroupNorm ln_x eps for v5, v6, v7 (FORMATS A9: 1e-5 * head_size_divisor**2)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with the checkpoints' eps."""
    return F.layer_norm(x, (x.shape[-1],), weight=weight, bias=bias, eps=LN_EPS)


def group_norm_heads(y: torch.Tensor, n_head: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GroupNorm with one group per head over the last axis of ``y`` ([..., A]), computed in fp32."""
    shape = y.shape
    flat = y.reshape(-1, shape[-1]).float()
    out = F.group_norm(flat, n_head, weight=weight.float(), bias=bias.float(), eps=GN_EPS)
    return out.reshape(shape)


def token_shift(xx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The previous token's vector for every position: ``xx`` [B,T,C], ``prev`` [B,C] → [B,T,C]."""
    if xx.shape[1] == 1:
        return prev.unsqueeze(1)
    return torch.cat([prev.unsqueeze(1), xx[:, :-1]], dim=1)


def forward_in_segments(one_pass, weights, config, tokens: torch.Tensor, state, all_logits: bool,
                        max_positions: int, out_state=None):
    """Run ``one_pass`` over ``tokens`` [B, T] in segments of at most ``max_positions`` positions (B·T).

    The state is carried between segments, which bounds activation memory and gives the same
    result as one call (FORMATS A11).  Returns ``(logits, new_state)`` like ``one_pass``; with
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


def matrix_state_io(state: State, out_state: State | None, dtype: torch.dtype):
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
