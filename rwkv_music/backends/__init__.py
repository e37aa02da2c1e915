"""Inference backends behind one protocol (see :mod:`rwkv_music.backends.base`).

Each backend is one module imported only when chosen, so ``--backend onnx`` never imports torch
(unless it is given a checkpoint, which is exported once into the cache: :mod:`.export_cache`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Any

from rwkv_music.errors import BackendUnavailable

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend

BACKENDS = {
    "torch": "rwkv_music.backends.torch",
    "onnx": "rwkv_music.backends.onnx",
    "ncnn": "rwkv_music.backends.ncnn",
}
_RUNTIMES = {"onnx": "onnxruntime", "ncnn": "ncnn"}  # the package each runtime imports when it loads


def load_backend(path: Any, backend: str = "torch", cache_dir: Any = None, **kwargs: Any) -> "Backend":
    """Import the backend module named ``backend`` and call its ``load(path, **kwargs)``.

    ``path`` may name a shipped model (``"abc-default"``, ``"midi-default"``; an existing file of
    that name wins).  A checkpoint given to the onnx or ncnn backend is exported on first use
    into ``cache_dir`` (default ``$RWKV_MUSIC_CACHE`` or ``~/.cache/rwkv-music``) and loaded
    from there.  Every ``load`` takes ``device``, ``dtype``, ``threads`` and ``native`` (see each
    module)."""
    from rwkv_music.assets import resolve_model

    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        raise BackendUnavailable(f"backend {backend!r} is not available: {exc}") from None
    if isinstance(path, (str, os.PathLike)):
        path = resolve_model(path)
        if backend != "torch":
            from rwkv_music.backends.export_cache import exported, is_checkpoint

            if is_checkpoint(path):
                runtime = _RUNTIMES[backend]
                if importlib.util.find_spec(runtime) is None:  # fail before a seconds-long export
                    raise BackendUnavailable(f"backend {backend!r} needs {runtime}; pip install rwkv-music[{backend}]")
                path = exported(path, backend, kwargs.get("dtype"), cache_dir)
    return module.load(path, **kwargs)
