"""Test helper for the ONNX tests: export each random checkpoint once per session (on disk).

Not a test module (no ``test_`` prefix); ``tests/backends/test_onnx_*.py`` import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
FP32_TOL = 1e-4  # onnxruntime fp32 vs the torch backend / the rwkv package (issue 6)
FP16_TOL = 5e-2  # fp16 graph vs fp32 (random 2-layer models, logits of magnitude ≈ 7; measured ≤ 1.1e-2)


def export_cached(tmp_path_factory: pytest.TempPathFactory, ckpt: Path, dtype: str = "fp32", **kw: Any) -> Path:
    """``ckpt`` exported to ONNX once per session (same arguments → same file)."""
    from rwkv_music.backends.onnx_export import export

    root = tmp_path_factory.getbasetemp() / "onnx-graphs"
    root.mkdir(exist_ok=True)
    tag = "-".join([ckpt.stem, dtype] + [f"{k}={v}" for k, v in sorted(kw.items())])
    out = root / f"{tag}.onnx"
    if not out.exists():
        export(ckpt, out, dtype, **kw)
    return out


def tokens(batch: int, length: int, seed: int, vocab: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def as_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def max_state_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over all tensors of two States (numpy or torch)."""
    a, b = a.numpy(), b.numpy()
    assert set(a.tensors) == set(b.tensors)
    return max(float(np.abs(a.tensors[k] - b.tensors[k]).max()) for k in a.tensors)
