"""The RWKV-7 WKV recurrence over many tokens at once (chunked), shared by inference and training.

The per-token rule is docs/formats.md A7 step 8, per head with ``S[value i, key j]`` (A8): with
``z_t = -S_{t-1}·kk_t`` and ``b = kk ⊙ a``, ``S_t = S_{t-1}·diag(w_t) + z_t b_tᵀ + v_t k_tᵀ`` and
``y_t = S_t·r_t`` (``rwkv_music.model.reference.v7.wkv_step`` writes it one token at a time).

Inside a chunk of L tokens with start state S₀ and cumulative decay ``W_t = Π_{s≤t} w_s``,
``S_t = (S₀ + Σ_{s≤t} z_s b̃_sᵀ + v_s k̃_sᵀ)·diag(W_t)`` with ``b̃ = b / W``, ``k̃ = k / W``.  So, with
``q_t = kk_t ⊙ W_{t-1}`` and ``p_t = r_t ⊙ W_t``:

* ``(I + M_b) Z = -Q S₀ᵀ - M_k V`` with strictly lower ``M_b = Q b̃ᵀ``, ``M_k = Q k̃ᵀ``, hence
  ``Z = Z_v - G S₀ᵀ`` where ``[G | -Z_v] = (I + M_b)⁻¹ [Q | M_k V]`` (one unit-triangular solve);
* ``Y = (P - A_b G) S₀ᵀ + A_b Z_v + A_k V`` with lower-inclusive ``A_b = P b̃ᵀ``, ``A_k = P k̃ᵀ``;
* ``S_L = S₀ (diag(W_L) - Gᵀ B̂) + Z_vᵀ B̂ + Vᵀ K̂`` with ``B̂ = b ⊙ W_L/W``, ``K̂ = k ⊙ W_L/W``.

Everything without S₀ is computed for all chunks at once; only ``S_{c+1} = S_c T_c + U_c`` (one
``baddbmm``) loops over chunks, and Y's S₀ term is one batched matmul afterwards.  Safety:
w ≥ exp(-e^{-1/2}) ≈ 0.545 (A7 step 7), so 1/W ≤ e^{0.607·L}: ≈ 2.7e8 for L = 32, far inside fp32;
the large factors only meet small ones (every unmasked product is a ratio W_t/W_s ≤ 1 of the true
recurrence).  No tensor autograd needs is modified in place, so training backpropagates through it.
"""

from __future__ import annotations

import torch

from rwkv_music.model.ops import from_chunks, to_chunks

CHUNK_LEN = 32  # tokens per chunk; 1/W_L stays ≤ 2.7e8 (module docstring)


def wkv7_chunked(
    S: torch.Tensor, log_w: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    kk: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK_LEN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a sequence: inputs [B,T,H,N] fp32 (``log_w`` = log w, ``b`` = kk ⊙ a), S [B,H,N,N].

    Returns (y [B,T,H,N], the state after the last token); ``S`` is not modified.  Autocast is
    switched off inside: the 1/W factors need fp32 (bf16 keeps 8 bits), also under mixed-precision training.
    """
    with torch.autocast(r.device.type, enabled=False):
        return _chunked(S.float(), *(t.float() for t in (log_w, r, k, v, kk, b)), chunk)


def _chunked(
    S: torch.Tensor, log_w: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    kk: torch.Tensor, b: torch.Tensor, chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, N = r.shape
    L = min(chunk, T)
    r, log_w, k, v, kk, b = (to_chunks(t, L) for t in (r, log_w, k, v, kk, b))  # [B,H,n_chunks,L,N]
    n_chunks = r.shape[2]
    cum = log_w.cumsum(-2)  # log W_t (inclusive)
    q = kk * (cum - log_w).exp()  # kk_t ⊙ W_{t-1}
    p = r * cum.exp()  # r_t ⊙ W_t
    inv = (-cum).exp()
    b_t, k_t = (b * inv).transpose(-1, -2), (k * inv).transpose(-1, -2)
    last = cum[..., -1:, :]
    tail = (last - cum).exp()  # W_L / W_s ≤ 1
    b_hat, k_hat = b * tail, k * tail
    # in-place steps below only touch fresh matmul results, which autograd does not keep
    m_b, m_k = (q @ b_t).tril_(-1), (q @ k_t).tril_(-1)
    a_b, a_k = (p @ b_t).tril_(), (p @ k_t).tril_()
    x = torch.linalg.solve_triangular(m_b, torch.cat([q, m_k @ v], -1), upper=False, unitriangular=True)
    G, z_v = x[..., :N], -x[..., N:]  # (not neg_: the solve's backward reads x)
    trans = G.transpose(-1, -2) @ b_hat
    trans.neg_().diagonal(dim1=-2, dim2=-1).add_(last.squeeze(-2).exp())  # diag(W_L) - Gᵀ B̂
    upd = z_v.transpose(-1, -2) @ b_hat + v.transpose(-1, -2) @ k_hat
    starts = torch.empty((B, H, n_chunks, N, N), dtype=S.dtype, device=S.device)  # each chunk's S₀
    cur = S.reshape(B * H, N, N)
    for c in range(n_chunks):  # the only sequential part: one baddbmm per chunk
        starts[:, :, c] = cur.view(B, H, N, N)
        cur = torch.baddbmm(upd[:, :, c].reshape(B * H, N, N), cur, trans[:, :, c].reshape(B * H, N, N))
    y = (p - a_b @ G) @ starts.transpose(-1, -2) + a_b @ z_v + a_k @ v  # [B,H,n_chunks,L,N]
    return from_chunks(y, T), cur.view(B, H, N, N)
