"""Checkpoints on the ONNX and ncnn backends: export once, on first use, into a user cache folder.

``load_model("midi-default", backend="onnx")`` (or any ``.pth``/``.safetensors`` with ``--backend
onnx``/``ncnn``) finds its export in ``$RWKV_MUSIC_CACHE`` (default ``$XDG_CACHE_HOME/rwkv-music``,
else ``~/.cache/rwkv-music``) under ``exports/``, keyed by the checkpoint's SHA-256, the backend,
the export settings and the package version, so an edited checkpoint or a new exporter gets a
fresh export and an old one is never used by mistake.

An export is written into a temporary folder beside its final place and renamed into place in
one step, so a crash (or two processes exporting at once) never leaves a half export where a
loader would take it; leftover ``.tmp-*`` folders are ignored.  Exporting needs torch (to read
the checkpoint) and, for ONNX, the ``onnx`` package; loading a cached export needs neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from rwkv_music import __version__
from rwkv_music.errors import BackendUnavailable, CheckpointError

log = logging.getLogger(__name__)

CACHE_ENV = "RWKV_MUSIC_CACHE"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_STEM = "model"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RWKV_MUSIC_CACHE``, else ``$XDG_CACHE_HOME/rwkv-music``, else ``~/.cache/rwkv-music``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rwkv-music"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint file by its suffix (what the torch backend reads)."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_settings(backend: str, dtype: str | None) -> dict[str, object]:
    """The exporter arguments that let ``backend`` run in ``dtype`` (``None``/"auto": fp32)."""
    want = "fp32" if dtype in (None, "auto") else dtype
    if backend == "onnx":  # int8, int4 and bf16 are weight storages over an fp32 graph (onnx_export)
        if want not in ("fp32", "fp16", "int8", "int4", "bf16"):
            raise BackendUnavailable(f"the onnx backend cannot run {want}; use fp32, fp16, int8, int4 or bf16")
        return {"dtype": want}
    if backend == "ncnn":
        if want == "int4":
            raise BackendUnavailable("the ncnn backend cannot run int4: stock ncnn has no int4 matrix product with "
                                     "float activations; use int8, or int4 on the torch or onnx backend")
        if want not in ("fp32", "fp16", "int8"):
            raise BackendUnavailable(f"the ncnn backend cannot compute in {want}; use fp32, fp16 or int8")
        return {"dtype": want}
    raise BackendUnavailable(f"backend {backend!r} does not run exports")


def _key(backend: str, settings: dict[str, object], sha: str) -> str:
    flags = "-".join(str(v) if not isinstance(v, bool) else k for k, v in settings.items() if v is not False)
    return f"{sha[:20]}-{backend}-{flags}-v{__version__}"


def _entry(folder: Path, backend: str) -> Path:
    """The file the backend loads inside an export folder."""
    return folder / (f"{_STEM}.onnx" if backend == "onnx" else f"{_STEM}.param")


def exported(
    checkpoint: str | os.PathLike,
    backend: str,
    dtype: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The cached export of ``checkpoint`` for ``backend`` (written now if there is none yet).

    Returns what the backend's ``load`` takes: the ``.onnx`` graph or the ncnn ``.param``.
    """
    src = Path(checkpoint)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such checkpoint file")
    settings = export_settings(backend, dtype)
    root = cache_root(cache_dir) / "exports"
    final = root / _key(backend, settings, file_sha256(src))
    if _entry(final, backend).is_file():
        return _entry(final, backend)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _drop_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    except OSError as exc:
        raise BackendUnavailable(
            f"{root}: cannot write the {backend} export cache ({exc.strerror or exc}); set {CACHE_ENV} to a "
            f"writable folder or export it yourself with 'rwkv-music export-{backend}'"
        ) from None
    log.info("%s: first use on the %s backend, exporting it once into %s", src, backend, final)
    try:
        _export(src, backend, settings, tmp)
        try:
            os.rename(tmp, final)  # one step: the folder is complete or absent
        except OSError:
            if not _entry(final, backend).is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; a failed export's leftovers
    return _entry(final, backend)


def _drop_stale(root: Path, age_s: float = 6 * 3600) -> None:
    """Remove temporary folders of exports killed mid-way (older than ``age_s``: not one running now)."""
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _export(src: Path, backend: str, settings: dict[str, object], folder: Path) -> None:
    try:
        if backend == "onnx":
            from rwkv_music.backends import onnx_export

            onnx_export.export(src, folder / f"{_STEM}.onnx", str(settings["dtype"]))
        else:
            from rwkv_music.backends import ncnn_export

            ncnn_export.export(src, folder / _STEM, str(settings["dtype"]))
    except ImportError as exc:
        raise BackendUnavailable(
            f"{src}: exporting it for the {backend} backend needs {exc.name or exc} "
            f"(pip install rwkv-music[{backend}]), or pass an existing export"
        ) from None


__all__ = ["CACHE_ENV", "cache_root", "export_settings", "exported", "is_checkpoint"]
