"""Reading and writing training checkpoints.

* ``model.pth`` — the weights alone, BlinkDL v7 layout (docs/formats.md A3), loadable by the ``rwkv``
  pip package (``RWKV_V7_ON=1``) and by :func:`rwkv_music.load_model`.  Stored in fp32, fp16 or
  bf16 (loaders cast, docs/formats.md A1).
* ``train_state.pt`` — everything needed to resume: optimizer state, step, elapsed time, data
  RNG, the fp32 weights (the model file may be fp16) and the run's options.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rwkv_music.errors import CheckpointError
from rwkv_music.model.detect import config_from_state_dict
from rwkv_music.train.model_v7 import RWKV7

MODEL_FILE = "model.pth"
STATE_FILE = "train_state.pt"
META_FILE = "train_meta.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def state_dict_for_save(model: RWKV7, dtype: str = "fp32") -> dict[str, torch.Tensor]:
    """The model's BlinkDL-layout tensors, detached, contiguous, cast to ``dtype``."""
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown checkpoint dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}


def save_model(model: RWKV7, path: Path, dtype: str = "fp32") -> Path:
    """Write ``path`` (a .pth) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state_dict_for_save(model, dtype), tmp)
    tmp.replace(path)
    return path


def load_v7_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a raw BlinkDL v7 checkpoint as fp32 tensors; CheckpointError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists() and Path(str(path) + ".pth").exists():
        path = Path(str(path) + ".pth")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__})") from exc
    if "_strategy" in sd:
        raise CheckpointError(f"{path}: pre-converted pip file (key _strategy); training needs a raw checkpoint")
    if "blocks.0.att.r_k" not in sd:
        raise CheckpointError(f"{path}: not an RWKV-7 checkpoint (no blocks.0.att.r_k); only v7 can be fine-tuned")
    if any(".qkv." in k or "s_emb" in k for k in sd):
        raise CheckpointError(f"{path}: RWKV-7 variant (DeepEmbed / 7b) is not trainable here")
    return {k: v.float() for k, v in sd.items()}


def model_from_checkpoint(path: Path) -> RWKV7:
    """Build an :class:`RWKV7` with the shapes and weights of ``path``."""
    sd = load_v7_weights(path)
    model = RWKV7(config_from_state_dict(sd))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise CheckpointError(f"{path}: key {name} {'missing' if missing else 'unexpected'} for RWKV-7")
    return model


def export_checkpoint(src: Path, dst: Path, dtype: str = "fp16") -> Path:
    """Copy a model file to ``dst`` cast to ``dtype`` (used to ship fp16 defaults)."""
    sd = load_v7_weights(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(DTYPES[dtype]).contiguous() for k, v in sd.items()}, dst)
    return dst


def save_train_state(out_dir: Path, model: RWKV7, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Write ``train_state.pt`` (optimizer + fp32 weights + meta) and ``train_meta.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (STATE_FILE + ".tmp")
    torch.save({"model": state_dict_for_save(model, "fp32"), "optimizer": optimizer.state_dict(),
                "meta": json.dumps(meta)}, tmp)
    tmp.replace(out_dir / STATE_FILE)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_train_state(out_dir: Path) -> dict:
    """Read ``train_state.pt`` from a run directory (CheckpointError if absent)."""
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no training state to resume from")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["meta"] = json.loads(blob["meta"])
    return blob
