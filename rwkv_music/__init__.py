"""rwkv_music: compose music with RWKV language models.

``import rwkv_music`` is light: torch, onnxruntime and ncnn are imported only when a model is
loaded with the backend that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rwkv_music.errors import (
    BackendUnavailable,
    CheckpointError,
    ConstraintError,
    MidiFormatError,
    RwkvMusicError,
    StateError,
    TokenizerError,
)

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend

__version__ = "0.1.0"


def load_model(path: Any, backend: str = "torch", device: str = "cpu", dtype: str | None = None, *,
               threads: int | None = None, native: bool | None = None, **kwargs: Any) -> "Backend":
    """Load an RWKV model for inference on ``backend`` ("torch", "onnx" or "ncnn").

    Args:
        path: a checkpoint (torch), an ``.onnx`` graph (onnx) or an export's ``.param`` (ncnn).
        device: "cpu", "cuda[:N]" (torch, onnx) or "vulkan[:N]" (ncnn).
        dtype: the arithmetic dtype, "fp32", "bf16", "fp16" or "int8"; ``None`` means the model's
            own (fp32 for checkpoints, the export's dtype for onnx and ncnn).  A dtype a backend
            cannot run is refused with :class:`BackendUnavailable` (onnx and ncnn fix theirs at
            export).
        threads: CPU threads of the runtime; ``None`` changes nothing.  Only the torch backend's
            setting is process-wide (``torch.set_num_threads``).
        native: torch only: the C kernels of :mod:`rwkv_music.model.native` on or off; ``None`` is
            the process default (``RWKV_MUSIC_NATIVE``, on when unset).
        kwargs: backend-specific options (ncnn: ``fp16``, ``vulkan``).

    Returns an object implementing the backend protocol (:class:`rwkv_music.backends.base.Backend`).
    """
    from rwkv_music.backends import load_backend

    return load_backend(path, backend=backend, device=device, dtype=dtype, threads=threads, native=native, **kwargs)


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
