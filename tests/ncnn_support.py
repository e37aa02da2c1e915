"""Test helper for the ncnn tests: export each random checkpoint once per session (on disk).

Not a test module (no ``test_`` prefix); ``tests/backends/test_ncnn_*.py`` import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ncnn")

ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
FP32_TOL = 1e-3  # issue 7; measured ≤ 1e-5 on the random 2-layer models (logit scale ≈ 8)
FP16_TOL = 5e-2  # fp16 weights and/or fp16 storage vs fp32; measured ≤ 1.3e-2
INT8_TOL = 0.6  # 8-bit codebook weights vs fp32; measured ≤ 0.25 (random models amplify weight noise)
INT8_TOP1 = 0.9  # share of positions whose argmax agrees with fp32
PROMPT_LEN, DECODE_STEPS = 8, 16


def export_cached(tmp_path_factory: pytest.TempPathFactory, ckpt: Path, dtype: str = "fp32") -> Path:
    """``ckpt`` exported to ncnn once per session; returns the ``.param`` path."""
    from rwkv_music.backends.ncnn_export import export

    root = tmp_path_factory.getbasetemp() / "ncnn-exports"
    root.mkdir(exist_ok=True)
    prefix = root / f"{ckpt.stem}-{dtype}"
    param = prefix.with_name(prefix.name + ".param")
    if not param.exists():
        export(ckpt, prefix, dtype)
    return param


def tokens(batch: int, length: int, seed: int, vocab: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def as_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def prompt_then_decode(model: Any, toks: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
    """Prompt ``toks[:, :PROMPT_LEN]`` in one call (all logits), then one token per call: logits [B, T, V]."""
    logits, state = model.forward(toks[:, :PROMPT_LEN], state, all_logits=True)
    out = [as_numpy(logits)]
    for t in range(PROMPT_LEN, toks.shape[1]):
        logits, state = model.forward(toks[:, t : t + 1], state)
        out.append(as_numpy(logits)[:, None])
    return np.concatenate(out, axis=1), state


def max_state_diff(a: Any, b: Any) -> float:
    a, b = a.numpy(), b.numpy()
    assert set(a.tensors) == set(b.tensors)
    return max(float(np.abs(a.tensors[k] - b.tensors[k]).max()) for k in a.tensors)
