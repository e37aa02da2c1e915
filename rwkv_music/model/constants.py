"""Numeric constants every implementation shares (torch, reference, ONNX, ncnn, training).

Kept free of torch and numpy so the ONNX and ncnn paths can import them without torch.
"""

import math

LN_EPS = 1e-5  # LayerNorm eps of ln0/ln1/ln2/ln_out in every version (docs/formats.md A9)
GN_EPS = 64e-5  # GroupNorm ln_x eps of v5, v6 and v7: 1e-5 * head_size_divisor**2 (docs/formats.md A9)
V7_DECAY_SCALE = math.exp(-0.5)  # v7 decay w = exp(-e^{-1/2}·σ(w0 + w_raw)) ∈ (0.545, 1) (docs/formats.md A7 step 7)

__all__ = ["GN_EPS", "LN_EPS", "V7_DECAY_SCALE"]
