"""The files of an ONNX or ncnn export: names, and the JSON sidecar written and read beside the graph.

Both the exporters (``onnx_export``, ``ncnn_export``) and the runtimes (``onnx``, ``ncnn``)
import this module; neither imports the other, so a runtime loads without the exporter's
dependencies and the names of inputs, outputs and files are written down once.

The sidecar carries what a runtime needs without torch: the model's config, the storage dtype,
and every state tensor with its blob names, shape, dtype, initial value and (``att_kv``) the
orientation of S.  An ONNX graph repeats the sidecar's identity (format, config, dtype) in its
metadata under :data:`META_KEY`; an ncnn sidecar records the hash and size of its ``.param`` and
``.bin`` instead, since those files have no metadata field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rwkv_music.errors import CheckpointError, ExportError
from rwkv_music.formats.base import VOCAB_MODES
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import state_shapes

log = logging.getLogger(__name__)
TOKENIZER_BY_VOCAB = VOCAB_MODES  # vocab size -> format of the BlinkDL music models (formats.base)
LOGITS = "logits"  # [B, V] float32, the last position (both formats)

# -- ONNX ------------------------------------------------------------------------------------------
ONNX_FORMAT = "rwkv_music.onnx/1"
META_KEY = "rwkv_music"  # model metadata entry repeating the sidecar's identity (config, dtype)
TOKENS = "tokens"  # int64 [batch, time]
ALL_FLAG = "return_all_logits"  # bool [], default false
ALL_LOGITS = "all_logits"  # float32 [batch, time, V], empty unless ALL_FLAG
STATE_IN = "state_"  # + state name: [L, batch, ...]
STATE_OUT = "new_state_"
ONNX_DTYPES = ("fp32", "fp16")

# -- ncnn ------------------------------------------------------------------------------------------
NCNN_FORMAT = "rwkv_music.ncnn/1"
TOKEN = "token"  # int32 ids [B]
PACKED = "out_all"  # [B, V + Σ state sizes]: logits, then every out_<name>_<i>
NCNN_STORAGES = ("fp32", "fp16", "int8")
_NCNN_SUFFIXES = (".param", ".bin", ".json")


def state_entry(cfg: RWKVConfig, name: str) -> dict[str, Any]:
    """The format-independent part of a sidecar's state entry: initial value and S orientation."""
    entry: dict[str, Any] = {"init": -1e30 if name == "att_p" else 0.0}
    if name == "att_kv":
        entry["orientation"] = "S[h, value i, key j]" if cfg.version.family == 7 else "S[h, key j, value i]"
    return entry


def _read(
    path: Path, kind: str, fmt: str, check: Callable[[dict[str, Any], RWKVConfig], None]
) -> tuple[dict[str, Any], RWKVConfig]:
    """Parse a sidecar of ``fmt``; ``check`` raises :class:`CheckpointError` on entries that do not fit."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != fmt:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{path}: not an rwkv_music {kind} sidecar (format {got!r}, expected {fmt!r})")
        cfg = RWKVConfig.from_dict(data["config"])
        _check_sizes(path, cfg)
        _check_initial_state(path, data.get("initial_state"))
        check(data, cfg)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable {kind} sidecar ({type(exc).__name__}: {exc})") from None
    return data, cfg


def _check_sizes(path: Path, cfg: RWKVConfig) -> None:
    """The sizes a sidecar declares are held to the checkpoint loader's limits (states are built from them)."""
    from rwkv_music.model.detect import LIMITS

    sizes = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "dim_att": cfg.dim_att, "dim_ffn": cfg.dim_ffn,
             "vocab_size": cfg.vocab_size, "head_size": cfg.head_size}
    for name, value in sizes.items():
        if not isinstance(value, int) or value > LIMITS[name]:
            raise CheckpointError(f"{path}: sidecar config {name} {value!r} is above the limit of {LIMITS[name]}")


def _check_initial_state(path: Path, name: Any) -> None:
    """``initial_state`` names a file in the sidecar's own folder: no path, no ``..``, nothing outside."""
    if name is None:
        return
    if (not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..")
            or Path(name).is_absolute()):
        raise CheckpointError(f"{path}: sidecar initial_state {name!r} must be a file name in the sidecar's folder")
    target = path.parent / name
    if target.is_symlink() and path.parent.resolve() not in target.resolve().parents:
        raise CheckpointError(f"{path}: sidecar initial_state {name!r} is a link out of the sidecar's folder")


# -- ONNX files ------------------------------------------------------------------------------------
def onnx_sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """Where the exporter writes the sidecar: ``OUT.onnx`` → ``OUT.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def find_onnx_sidecar(onnx_path: str | os.PathLike) -> Path:
    """``OUT.onnx.json`` or ``OUT.json`` next to the graph; :class:`CheckpointError` if neither."""
    p = Path(onnx_path)
    for cand in (onnx_sidecar_path(p), p.with_suffix(".json")):
        if cand.is_file():
            return cand
    raise CheckpointError(
        f"{p}: no sidecar {onnx_sidecar_path(p).name} next to it; re-export with 'rwkv-music export-onnx'"
    )


def read_onnx_sidecar(path: Path) -> tuple[dict[str, Any], RWKVConfig]:
    """Parse and check an ONNX sidecar; returns ``(data, config)``."""

    def check(data: dict[str, Any], cfg: RWKVConfig) -> None:
        if data.get("dtype") not in ONNX_DTYPES or set(data.get("state", {})) != set(state_shapes(cfg, 1)):
            raise CheckpointError(f"{path}: sidecar dtype/state entries do not fit an RWKV v{cfg.version} model")

    return _read(path, "ONNX", ONNX_FORMAT, check)


def onnx_identity(cfg: RWKVConfig, dtype: str) -> dict[str, Any]:
    """What the runtime checks between an ONNX graph's metadata and its sidecar."""
    return {"format": ONNX_FORMAT, "config": cfg.to_dict(), "dtype": dtype}


def onnx_sidecar(
    cfg: RWKVConfig, dtype: str, opset: int, quantization: str | None, source: str | None
) -> dict[str, Any]:
    """The JSON written next to an ONNX graph."""
    act = "float16" if dtype == "fp16" else "float32"
    state = {}
    for name, (shape, fp32) in state_shapes(cfg, 1).items():
        state[name] = {
            "input": STATE_IN + name,
            "output": STATE_OUT + name,
            "shape": ["n_layer", "batch", *shape[2:]],
            "dtype": "float32" if fp32 else act,
            **state_entry(cfg, name),
        }
    return {
        **onnx_identity(cfg, dtype),
        "version": str(cfg.version),
        "vocab_size": cfg.vocab_size,
        "tokenizer": TOKENIZER_BY_VOCAB.get(cfg.vocab_size),
        "opset": opset,
        "quantization": quantization,
        "source": source,
        "inputs": {
            TOKENS: {"dtype": "int64", "shape": ["batch", "time"]},
            ALL_FLAG: {"dtype": "bool", "shape": [], "default": False},
            **{s["input"]: {"dtype": s["dtype"], "shape": s["shape"]} for s in state.values()},
        },
        "outputs": {
            LOGITS: {"dtype": "float32", "shape": ["batch", "vocab"], "note": "last position"},
            ALL_LOGITS: {
                "dtype": "float32",
                "shape": ["batch", "time", "vocab"],
                "note": "empty [B,0,V] unless return_all_logits",
            },
            **{s["output"]: {"dtype": s["dtype"], "shape": s["shape"]} for s in state.values()},
        },
        "state": state,
    }


SAMPLER_KEY = "sampler"  # sidecar entry of the sampler graph (export-onnx --with-sampler): file, format, io


def onnx_sampler_path(onnx_path: str | os.PathLike) -> Path:
    """Where ``export-onnx --with-sampler`` writes the sampler graph: ``OUT.onnx`` → ``OUT.sampler.onnx``."""
    p = Path(onnx_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".sampler.onnx")


def record_onnx_sampler(side_path: Path, entry: dict[str, Any]) -> None:
    """Add the sampler graph's entry to an ONNX sidecar already written (atomically; other entries stay)."""
    from rwkv_music.io_utils import atomic_write_text

    data = json.loads(side_path.read_text())
    data[SAMPLER_KEY] = entry
    atomic_write_text(side_path, json.dumps(data, indent=2) + "\n", force=True)


# -- ncnn files ------------------------------------------------------------------------------------
def ncnn_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The files of one ncnn export from its prefix or any of its files: param, bin, sidecar, state."""
    p = Path(path)
    name = p.name
    for suffix in _NCNN_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = p.with_name(name)
    return {
        "param": Path(f"{stem}.param"),
        "bin": Path(f"{stem}.bin"),
        "sidecar": Path(f"{stem}.json"),
        "state": Path(f"{stem}.state.npz"),
    }


def ncnn_state_blob(direction: str, name: str, layer: int) -> str:
    """The blob of state tensor ``name`` of one layer: ``in_<name>_<layer>`` or ``out_<name>_<layer>``."""
    return f"{direction}_{name}_{layer}"


def ncnn_state_inputs(name: str, n_layer: int) -> list[str]:
    return [ncnn_state_blob("in", name, i) for i in range(n_layer)]


def ncnn_state_outputs(name: str, n_layer: int) -> list[str]:
    return [ncnn_state_blob("out", name, i) for i in range(n_layer)]


def ncnn_segments(cfg: RWKVConfig) -> list[dict[str, Any]]:
    """The layout of the packed output: the logits, then every state blob, layer by layer per state."""
    segments: list[dict[str, Any]] = [{"name": LOGITS, "offset": 0, "size": cfg.vocab_size}]
    offset = cfg.vocab_size
    for name, (shape, _) in state_shapes(cfg, 1).items():
        size = int(np.prod(shape[2:]))
        for i, blob in enumerate(ncnn_state_outputs(name, cfg.n_layer)):
            segments.append({"name": blob, "state": name, "layer": i, "offset": offset, "size": size})
            offset += size
    return segments


def read_ncnn_sidecar(path: Path) -> tuple[dict[str, Any], RWKVConfig]:
    """Parse and check an ncnn sidecar; returns ``(data, config)``."""

    def check(data: dict[str, Any], cfg: RWKVConfig) -> None:
        if data.get("dtype") not in NCNN_STORAGES or set(data["state"]) != set(state_shapes(cfg, 1)):
            raise CheckpointError(f"{path}: sidecar dtype/state entries do not fit an RWKV v{cfg.version} model")
        for name, entry in data["state"].items():
            if entry.get("inputs") != ncnn_state_inputs(name, cfg.n_layer):
                raise CheckpointError(f"{path}: state {name!r} does not list one input blob per layer")
        segments = data["outputs"][PACKED]["segments"]
        if any(s.get("state") != s["name"][4:].rsplit("_", 1)[0] for s in segments[1:]):
            raise CheckpointError(f"{path}: packed output segments name no state tensors")
        want = [(s["name"], s["size"], s["offset"]) for s in ncnn_segments(cfg)]
        if [(s["name"], s["size"], s["offset"]) for s in segments] != want:
            raise CheckpointError(
                f"{path}: packed output layout does not match an RWKV v{cfg.version} L{cfg.n_layer} model"
            )

    return _read(path, "ncnn", NCNN_FORMAT, check)


def ncnn_sidecar(
    cfg: RWKVConfig,
    dtype: str,
    quantization: str | None,
    layers: dict[str, int],
    files: dict[str, Any],
    source: str | None,
) -> dict[str, Any]:
    """The JSON written next to an ncnn export (``layers``: how many layers of each type the graph has)."""
    state = {}
    for name, (shape, _) in state_shapes(cfg, 1).items():
        state[name] = {
            "inputs": ncnn_state_inputs(name, cfg.n_layer),
            "outputs": ncnn_state_outputs(name, cfg.n_layer),
            "shape": ["batch", *shape[2:]],
            "dtype": "float32",
            **state_entry(cfg, name),
        }
    segments = ncnn_segments(cfg)
    return {
        "format": NCNN_FORMAT,
        "version": str(cfg.version),
        "config": cfg.to_dict(),
        "vocab_size": cfg.vocab_size,
        "tokenizer": TOKENIZER_BY_VOCAB.get(cfg.vocab_size),
        "dtype": dtype,
        "quantization": quantization,
        "source": source,
        "files": files,
        "inputs": {TOKEN: {"dtype": "int32", "shape": ["batch"], "note": "one token per row"}},
        "outputs": {
            LOGITS: {"dtype": "float32", "shape": ["batch", cfg.vocab_size]},
            PACKED: {
                "dtype": "float32",
                "shape": ["batch", segments[-1]["offset"] + segments[-1]["size"]],
                "segments": segments,
            },
        },
        "state": state,
        "layers": layers,
    }


def verify_export(path: Path, written: list[Path], backend: str) -> None:
    """Load the written files in their runtime and run one token; on failure remove them and raise
    :class:`ExportError` (an export that exits 0 must load: an opset or a layer the runtime lacks,
    or weights that give non-finite logits, are found here and not by the user)."""
    import importlib

    import numpy as np

    module = importlib.import_module(f"rwkv_music.backends.{backend}")
    try:
        importlib.import_module({"onnx": "onnxruntime", "ncnn": "ncnn"}[backend])
    except ImportError:
        log.warning("%s: not checked (the %s runtime is not installed)", path, backend)
        return
    try:
        model = module.load(path, threads=1)
        logits, _ = model.forward([[0]])
        if not np.isfinite(model.as_numpy(logits)).all():
            raise ExportError("its logits for one token are not finite")
    except Exception as exc:  # whatever the runtime raises: the export is not usable
        for p in written:
            p.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: the exported graph does not run in {backend} ({first}); nothing was kept") from None
