"""The RWKV-4 WKV over many tokens at once (chunked prefill), numerically stable.

Per channel (docs/formats.md A7 v4 steps 3–4), with the state ``N = aa·e^pp`` (numerator) and
``D = bb·e^pp`` (denominator), decay ``w < 0`` and bonus ``u`` in log space, at position t of a
chunk of L tokens that starts from state (N₀, D₀):

* ``wkv_t = (e^{t·w} N₀ + Σ_{s<t} e^{(t-1-s)w + k_s} v_s + e^{u + k_t} v_t) / (same with v → 1, N₀ → D₀)``
* the state after the chunk: ``e^{L·w} N₀ + Σ_s e^{(L-1-s)w + k_s} v_s`` (and D likewise).

Every exponent is formed exactly on an ``[L, L]`` grid per chunk and channel and shifted by its
row maximum before ``exp`` (the same max-shift the step path keeps in ``pp``), so nothing over- or
underflows whatever k and w are; no exponent is factored into a product of large and small parts.
The state a chunk leaves depends on the chunk's own tokens only through (max, Σ, Σ) of its last
row, computed for all chunks at once; the states entering the chunks then come from the same
max-shifted sum one level up (chunk c' contributes ``e^{(start_c - end_c')·w}`` times its own
end state to the start of chunk c > c'), again one grid, so nothing loops over time (beyond
``MAX_STATE_GRID`` chunks, or a grid above the memory cap, a loop over chunks takes over).  The token grid
costs O(T·L·A) elementwise work: a few dozen kernel launches a layer on a GPU instead of a dozen per
token, but more arithmetic than the sequential scan, which is why a CPU runs a C loop instead
(``rwkv_music.model.v4.CHUNKED_ON_CPU``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_LEN = 16  # tokens per chunk: the token grid grows with L, the chunk-state grid with (T / L)²
GRID_ELEMENTS = 1 << 22  # cap on one [B, chunks, L, L, A] grid (16 MiB of fp32); larger runs go in groups
GRID_ELEMENTS_GPU = 1 << 24  # (64 MiB: fewer, larger launches)
MAX_STATE_GRID = 256  # chunks up to which the states entering them come from one [n+1, n] grid, not a loop
MIN_DECAY = -1e30  # w = -exp(time_decay) can be -inf in fp32; (t-1-s)·w must stay finite (0·inf = nan)


def wkv4_chunked(k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, decay: Tensor, first: Tensor,
                 chunk: int = CHUNK_LEN) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """k, v [B, T, A] fp32; aa, bb, pp [B, A]; decay w, first u [A] → (wkv [B, T, A], aa', bb', pp').

    The inputs are not modified.  Equals T steps of ``rwkv_music.model.v4._wkv_step`` up to rounding.
    """
    B, T, A = k.shape
    L = max(1, min(chunk, T))
    n = -(-T // L)
    pad = n * L - T
    w = decay.clamp(min=MIN_DECAY)
    if pad:  # a padded token has k = -inf: it adds nothing; the state decay counts real tokens only
        k = F.pad(k, (0, 0, 0, pad), value=float("-inf"))
        v = F.pad(v, (0, 0, 0, pad))
    k, v = k.view(B, n, L, A), v.view(B, n, L, A)
    dev = k.device
    pos = torch.arange(L, device=dev, dtype=torch.float32)
    lengths = torch.full((n,), float(L), device=dev)
    lengths[-1] = L - pad

    # each chunk's own contribution to the state after its last real token: exponents (len-1-s)·w + k_s
    e_end = k + (lengths.view(n, 1, 1) - 1 - pos.view(L, 1)) * w  # [B, n, L, A]
    p_loc = e_end.amax(2)  # [B, n, A]: finite (every chunk has a real token)
    ex = torch.exp(e_end - p_loc.unsqueeze(2))
    a_loc, b_loc = (ex * v).sum(2), ex.sum(2)

    # the states entering each chunk, and the one after the last
    cap = GRID_ELEMENTS if dev.type == "cpu" else GRID_ELEMENTS_GPU
    if n <= MAX_STATE_GRID and B * (n + 1) * n * A <= cap:
        starts, (aa, bb, pp) = _chunk_states_grid(a_loc, b_loc, p_loc, aa, bb, pp, w, L, T)
    else:
        starts, (aa, bb, pp) = _chunk_states_loop(a_loc, b_loc, p_loc, aa, bb, pp, lengths.view(n, 1) * w)

    # outputs: rel[t, s] = (t-1-s)·w for s < t, u at s = t, -inf above the diagonal
    t_minus_s = pos.view(L, 1) - pos.view(1, L)
    rel = (t_minus_s - 1).unsqueeze(-1) * w  # [L, L, A]
    rel = torch.where((t_minus_s == 0).unsqueeze(-1), first.expand(L, L, A), rel)
    rel = rel.masked_fill((t_minus_s < 0).unsqueeze(-1), float("-inf"))
    e_state = pos.view(L, 1) * w  # [L, A]: the start state's decay at position t
    out = torch.empty((B, n, L, A), device=dev, dtype=torch.float32)
    step = max(1, cap // max(1, B * L * L * A))
    for c0 in range(0, n, step):
        sl = slice(c0, min(n, c0 + step))
        grid = k[:, sl].unsqueeze(2) + rel  # [B, c, L(t), L(s), A]
        es = starts[2, :, sl].unsqueeze(2) + e_state  # [B, c, L, A]
        p = torch.maximum(grid.amax(3), es)
        grid.sub_(p.unsqueeze(3)).exp_()
        num = (grid * v[:, sl].unsqueeze(2)).sum(3)
        den = grid.sum(3)
        es = torch.exp(es - p)
        out[:, sl] = (num + es * starts[0, :, sl].unsqueeze(2)) / (den + es * starts[1, :, sl].unsqueeze(2))
    return out.view(B, n * L, A)[:, :T], aa, bb, pp


def _chunk_states_grid(a_loc: Tensor, b_loc: Tensor, p_loc: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, w: Tensor,
                       L: int, T: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """States at every chunk start and at T from the chunks' own end states, as one grid.

    ``a_loc``/``b_loc``/``p_loc`` [B, n, A]: chunk c's own contribution at its end position
    ``end_c = min((c+1)·L, T)``; (aa, bb, pp) [B, A] the state at position 0.  The state at position
    q sums ``e^{(q - end_c)·w + p_loc_c}·(a_loc_c, b_loc_c)`` over chunks with ``end_c <= q``, plus
    ``e^{q·w + pp}·(aa, bb)``; q - end_c is an exact integer, and each row is shifted by its maximum.
    Returns ((aa, bb, pp) per chunk start stacked as [3, B, n, A], (aa, bb, pp) at T).
    """
    B, n, A = p_loc.shape
    dev = p_loc.device
    q = torch.cat([torch.arange(n, device=dev) * L, torch.tensor([T], device=dev)]).float()  # [n+1] positions
    ends = torch.clamp((torch.arange(n, device=dev) + 1) * L, max=T).float()  # [n]
    gap = q.view(-1, 1) - ends.view(1, -1)  # [n+1, n]
    grid = p_loc.unsqueeze(1) + (gap.clamp(min=0).unsqueeze(-1) * w)  # [B, n+1, n, A]
    grid = grid.masked_fill((gap < 0).unsqueeze(-1), float("-inf"))
    e0 = pp.unsqueeze(1) + q.view(-1, 1) * w  # [B, n+1, A]: the initial state's exponent
    top = torch.maximum(grid.amax(2), e0)  # [B, n+1, A]
    grid.sub_(top.unsqueeze(2)).exp_()
    e0 = torch.exp(e0 - top)
    a = (grid * a_loc.unsqueeze(1)).sum(2) + e0 * aa.unsqueeze(1)
    b = (grid * b_loc.unsqueeze(1)).sum(2) + e0 * bb.unsqueeze(1)
    starts = torch.stack([a[:, :n], b[:, :n], top[:, :n]])
    return starts, (a[:, n], b[:, n], top[:, n])


def _chunk_states_loop(a_loc: Tensor, b_loc: Tensor, p_loc: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
                       decays: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """As :func:`_chunk_states_grid`, one max-shifted combine per chunk (``decays`` [n, A]: len_c·w)."""
    B, n, A = p_loc.shape
    starts = torch.empty((3, B, n, A), device=p_loc.device, dtype=torch.float32)
    for c in range(n):
        starts[0, :, c], starts[1, :, c], starts[2, :, c] = aa, bb, pp
        ww = pp + decays[c]
        p = torch.maximum(ww, p_loc[:, c])
        e1, e2 = torch.exp(ww - p), torch.exp(p_loc[:, c] - p)
        aa = e1 * aa + e2 * a_loc[:, c]
        bb = e1 * bb + e2 * b_loc[:, c]
        pp = p
    return starts, (aa, bb, pp)
