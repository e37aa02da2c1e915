"""rwkv_music: compose music with RWKV language models.

``import rwkv_music`` is light: torch, onnxruntime and ncnn are imported only when a model is
loaded with the backend that needs them.
"""

from __future__ import annotations

from typing import Any

from rwkv_music.errors import (
    BackendUnavailable,
    CheckpointError,
    ConstraintError,
    MidiFormatError,
    RwkvMusicError,
    StateError,
    TokenizerError,
)

__version__ = "0.1.0"


def load_model(path: Any, backend: str = "torch", device: str = "cpu", dtype: str = "fp32", **kwargs: Any) -> Any:
    """Load an RWKV model for inference on ``backend`` ("torch", "onnx" or "ncnn").

    Returns an object implementing the backend protocol (:mod:`rwkv_music.backends.base`).
    """
    from rwkv_music.backends import load_backend

    return load_backend(path, backend=backend, device=device, dtype=dtype, **kwargs)


def __getattr__(name: str) -> Any:  # lazy public names that pull in heavier modules
    if name == "Composer":
        from rwkv_music.compose.composer import Composer

        return Composer
    if name == "Piece":
        from rwkv_music.compose.piece import Piece

        return Piece
    if name == "State":
        from rwkv_music.model.state import State

        return State
    raise AttributeError(f"module 'rwkv_music' has no attribute {name!r}")


__all__ = [
    "BackendUnavailable",
    "CheckpointError",
    "Composer",
    "ConstraintError",
    "MidiFormatError",
    "Piece",
    "RwkvMusicError",
    "State",
    "StateError",
    "TokenizerError",
    "load_model",
]
