"""Reading checkpoint files and checking their key layout (docs/formats.md A1–A3).

A ladder of small steps, each failing with a one-line :class:`CheckpointError` that names the
file and the problem:

1. :func:`read_state_dict` — the file exists and holds a flat ``name → tensor`` dict
   (``.pth`` through ``torch.load(weights_only=True)``, ``.safetensors`` through safetensors);
   files pre-converted by the rwkv package (``_strategy`` key) are rejected.
2. :func:`inspect_state_dict` — version (:func:`~rwkv_music.model.detect.detect_version`),
   sizes (:func:`~rwkv_music.model.detect.config_from_state_dict`), then every key and shape
   against :func:`~rwkv_music.model.detect.expected_shapes`: missing and unexpected keys are
   listed by name, the first shape mismatch names key, expected and got.

Loading uses only safe deserialisation, so a hostile pickle cannot run code.  Before any tensor
data is read, :mod:`rwkv_music.model.checkpoint_scan` reads the sizes the file declares and they
are checked (geometry, sanity limits, the full key/shape table), so a file cannot make the loader
allocate more than it holds; after loading, every float tensor is checked for NaN/Inf in one pass.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from rwkv_music.errors import CheckpointError
from rwkv_music.model.checkpoint_scan import ScannedTensor, check_geometry, scan_file
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.detect import (
    config_from_state_dict,
    detect_version,
    expected_shapes,
    first_time_key,
    shapes_match,
    shapes_of,
)

log = logging.getLogger(__name__)

PIP_CONVERTED_KEYS = ("_strategy", "_version", "_rescale_layer")  # written by rwkv's convert_and_save_and_exit
_MAX_LISTED = 6  # key names quoted in one error message before "and N more"


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` as given, or with ``.pth`` appended (BlinkDL names models without it, A1)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    with_suffix = p.with_name(p.name + ".pth")
    if p.suffix != ".pth" and with_suffix.is_file():
        return with_suffix
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file")
    raise CheckpointError(f"{p}: no such checkpoint file")


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load ``path`` into a ``name → torch.Tensor`` dict (on the CPU, dtypes as stored).

    The declared sizes are checked before loading (see :func:`scan_state_dict`); the full key
    layout is not (that is :func:`inspect_state_dict`, or :func:`load_state_dict` for both).
    """
    p = resolve_path(path)
    declared = scan_state_dict(p)
    return _load_scanned(p, declared)


def scan_state_dict(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Key → declared shape of the file, after checking that its sizes fit the file; reads no tensor data.

    None for a file the scanner does not know (then torch's own checks decide).
    """
    scan = scan_file(path)
    if scan is None:
        return None
    payload = check_payload(scan.payload, path.name, tensor_type=ScannedTensor)
    check_geometry(scan, path.name)
    return {k: t.shape for k, t in payload.items()}


def _load_scanned(p: Path, declared: Mapping[str, tuple[int, ...]] | None) -> dict[str, Any]:
    payload = _read_safetensors(p) if p.suffix == ".safetensors" else _read_torch(p)
    sd = check_payload(payload, p.name)
    if declared is not None:
        for key, t in sd.items():
            if tuple(t.shape) != declared.get(key):
                raise CheckpointError(f"{p.name}: tensor {key!r} loaded with shape {list(t.shape)}, the file "
                                      f"declares {list(declared.get(key, ()))}")
    return sd


def check_finite(sd: Mapping[str, Any], source: str) -> None:
    """One pass over the float tensors: a NaN or Inf weight makes every output garbage, so refuse it.

    Sparse, quantized and meta-device tensors (no data to check or run) are refused here too."""
    import numpy as np
    import torch

    for key, t in sd.items():
        if isinstance(t, np.ndarray) and np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
            raise CheckpointError(f"{source}: tensor {key!r} holds {'NaN' if np.isnan(t).any() else 'Inf'} values")
        if isinstance(t, torch.Tensor) and (t.layout != torch.strided or t.is_meta or t.is_quantized):
            kind = "a meta-device tensor (it holds no data)" if t.is_meta else f"a {t.layout} tensor"
            raise CheckpointError(f"{source}: tensor {key!r} is {kind}; expected a dense tensor")
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise CheckpointError(f"{source}: tensor {key!r} holds {what} values")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 120:
        first = first[:117] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _read_torch(p: Path) -> Any:
    import pickle

    import torch

    with open(p, "rb") as fh:
        magic = fh.read(2)
    if not magic:
        raise CheckpointError(f"{p.name}: not a PyTorch checkpoint (empty file)")
    if magic != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip, legacy files a pickle
        raise CheckpointError(f"{p.name}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" notes: the result is checked below
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{p.name}: not a PyTorch checkpoint (holds objects other than tensors; refused by safe loading)"
        ) from None
    except Exception as exc:  # truncated zip, damaged pickle, ...
        what = "damaged or truncated zip archive" if magic == b"PK" else "damaged pickle"
        raise CheckpointError(f"{p.name}: not a PyTorch checkpoint ({what}; {_one_line(exc)})") from None


def _read_safetensors(p: Path) -> Any:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors is a dependency of the dev env only
        raise CheckpointError(f"{p.name}: reading .safetensors needs the 'safetensors' package") from None
    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{p.name}: not a safetensors checkpoint ({_one_line(exc)})") from None


def check_payload(payload: Any, source: str, tensor_type: Any = None) -> dict[str, Any]:
    """The loaded object must be a flat dict of tensors in the raw trainer layout.

    ``tensor_type``: what counts as a tensor (``torch.Tensor``, or the scanner's declared tensors).
    """
    if tensor_type is None:
        import torch

        tensor_type = torch.Tensor
    if not isinstance(payload, Mapping):
        kind = type(payload).__name__
        raise CheckpointError(f"{source}: not a checkpoint (holds a {kind}, expected a dict of tensors)")
    if "_strategy" in payload:
        raise CheckpointError(
            f"{source}: pre-converted by the rwkv package ('_strategy' {payload['_strategy']!r}); "
            "load the original trainer .pth instead"
        )
    if not payload:
        raise CheckpointError(f"{source}: not a checkpoint (empty dict)")
    for key, value in payload.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: not a checkpoint (key {key!r} is not a string)")
        if not isinstance(value, tensor_type):
            kind = getattr(value, "name", None) or type(value).__name__  # the scanner's stand-ins name their global
            raise CheckpointError(f"{source}: not a checkpoint (value of {key!r} is a {kind}, expected a tensor)")
    return dict(payload)


def _listing(keys: list[str]) -> str:
    keys = sorted(keys, key=_natural)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in key.replace(".", " . ").split())


def inspect_state_dict(sd: Mapping[str, Any], source: str = "checkpoint") -> RWKVConfig:
    """Version, sizes and a full key/shape check of a raw state dict; returns its config.

    Raises :class:`CheckpointError` naming the missing and unexpected keys (an unknown key
    layout), the first tensor whose shape disagrees with the sizes read from the others, or the
    first tensor holding NaN or Inf.
    """
    config = inspect_shapes(shapes_of(sd), source)
    check_finite(sd, source)
    return config


def inspect_shapes(shapes: Mapping[str, tuple[int, ...]], source: str = "checkpoint") -> RWKVConfig:
    """:func:`inspect_state_dict` on key → shape alone (so it runs before the data are loaded)."""
    version = detect_version(shapes, source)
    core_keys = ("emb.weight", "head.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight")
    core = [k for k in core_keys if k not in shapes]
    if core:
        unexpected = [k for k in shapes if not k.startswith(("blocks.", "emb.", "head.", "ln_out."))]
        extra = f"; unexpected keys {_listing(unexpected)}" if unexpected else ""
        raise CheckpointError(f"{source}: not an RWKV checkpoint (missing keys {_listing(core)}{extra})")
    config = config_from_state_dict(shapes, version, source)
    time_key = first_time_key(shapes)
    required, optional = expected_shapes(config, time_key)
    missing = [k for k in required if k not in shapes]
    unexpected = [k for k in shapes if k not in required and k not in optional]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        raise CheckpointError(f"{source}: unknown key layout for an RWKV v{version} checkpoint: {'; '.join(parts)}")
    _check_time_state(shapes, config, source)
    for key, shape in shapes.items():
        expected = required.get(key, optional.get(key))
        if not shapes_match(shape, expected):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(shape)}, expected {list(expected)}")
    log.debug("%s: RWKV v%s, %d layers, width %d", source, version, config.n_layer, config.n_embd)
    return config


def _check_time_state(shapes: Mapping[str, tuple[int, ...]], config: RWKVConfig, source: str) -> None:
    """v6 ``time_state`` replaces the initial state of every layer, so it is all or nothing."""
    present = [i for i in range(config.n_layer) if f"blocks.{i}.att.time_state" in shapes]
    if present and len(present) != config.n_layer:
        absent = [f"blocks.{i}.att.time_state" for i in range(config.n_layer) if i not in present]
        raise CheckpointError(f"{source}: 'time_state' is in some blocks only; missing keys {_listing(absent)}")


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, Any], RWKVConfig, str]:
    """Read and check ``path``: ``(state_dict, config, source_name)``."""
    p = resolve_path(path)
    declared = scan_state_dict(p)
    if declared is not None:
        inspect_shapes(declared, p.name)  # the key layout and sizes, before a byte of tensor data is read
    sd = _load_scanned(p, declared)
    config = inspect_state_dict(sd, p.name)
    return sd, config, p.name
