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

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic version)


def load_model(path: Any, backend: str = "torch", device: str = "cpu", dtype: str | None = None, *,
               threads: int | None = None, native: bool | None = None, **kwargs: Any) -> "Backend":
    """Load an RWKV model for inference on ``backend`` ("torch", "onnx" or "ncnn").

    Args:
        path: a checkpoint (torch), an ``.onnx`` graph (onnx) or an export's ``.param`` (ncnn).
        device: "cpu", "cuda[:N]" (torch, onnx) or "vulkan[:N]" (ncnn).
        dtype: "fp32", "bf16", "fp16", or a weight storage with float activations: "int8"
            (per-channel) or "int4" (group-wise; torch CPU and onnx); ``None`` means the model's
            own (fp32 for checkpoints, the export's dtype for onnx and ncnn).  A dtype a backend
            cannot run is refused with :class:`BackendUnavailable` (onnx and ncnn fix theirs at
            export; given a checkpoint they export it in that dtype on first use).
        threads: CPU threads of the runtime; ``None`` changes nothing.  Only the torch backend's
            setting is process-wide (``torch.set_num_threads``).
        native: torch only: the C kernels of :mod:`rwkv_music.model.native` on or off; ``None`` is
            the process default (``RWKV_MUSIC_NATIVE``, on when unset).
        kwargs: backend-specific options (torch: ``cuda_graph``; ncnn: ``fp16``, ``vulkan``); a name the
            backend does not take is a one-line :class:`RwkvMusicError` listing the valid ones.

    Returns:
        A :class:`rwkv_music.backends.base.Backend`.  ``forward`` returns logits in the runtime's own
        array type (``model.array_kind``: a torch tensor on torch, a numpy array on onnx and ncnn);
        ``model.as_numpy(logits)`` gives a float32 numpy array on every backend.
    """
    from rwkv_music.backends import load_backend

    if kwargs:
        _check_backend_kwargs(backend, kwargs)
    return load_backend(path, backend=backend, device=device, dtype=dtype, threads=threads, native=native, **kwargs)


def _check_backend_kwargs(backend: str, kwargs: dict[str, Any]) -> None:
    """Refuse keywords the backend's ``load`` does not take, in one line (not a TypeError from deep inside)."""
    import importlib
    import inspect

    from rwkv_music.backends import BACKENDS

    if backend not in BACKENDS:
        return  # load_backend names the valid backends
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError:
        return  # load_backend reports the missing runtime
    params = inspect.signature(module.load).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "path"]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], valid, n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint and len(unknown) == 1 else ""
        raise RwkvMusicError(
            f"load_model(): unknown keyword argument{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
            f"for the {backend} backend{guess}; valid: {', '.join(valid)}"
        )


def __getattr__(name: str) -> Any:  # lazy public names that pull in heavier modules
    if name == "Composer":
        from rwkv_music.compose.composer import Composer

        return Composer
    if name == "Piece":
        from rwkv_music.compose.piece import Piece

        return Piece
    if name == "Backend":
        from rwkv_music.backends.base import Backend

        return Backend
    if name == "State":
        from rwkv_music.model.state import State

        return State
    raise AttributeError(f"module 'rwkv_music' has no attribute {name!r}")


__all__ = [
    "Backend",
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
