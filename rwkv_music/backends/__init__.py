"""Inference backends behind one protocol (see :mod:`rwkv_music.backends.base`).

Each backend is one module imported only when chosen, so ``--backend onnx`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rwkv_music.errors import BackendUnavailable

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend

BACKENDS = {
    "torch": "rwkv_music.backends.torch",
    "onnx": "rwkv_music.backends.onnx",
    "ncnn": "rwkv_music.backends.ncnn",
}


def load_backend(path: Any, backend: str = "torch", **kwargs: Any) -> "Backend":
    """Import the backend module named ``backend`` and call its ``load(path, **kwargs)``.

    Every ``load`` takes ``device``, ``dtype``, ``threads`` and ``native`` (see each module)."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        raise BackendUnavailable(f"backend {backend!r} is not available: {exc}") from None
    return module.load(path, **kwargs)
