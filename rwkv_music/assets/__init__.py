"""Shipped default models: ``abc-default/`` and ``midi-default/`` (RWKV-7, fp16, BlinkDL layout).

Each folder holds ``model.pth`` and ``MODEL_CARD.md`` (data, licence notes, size, steps, held-out
loss and the exact training command; see ``scripts/train_defaults.sh``).
"""

from __future__ import annotations

from pathlib import Path

from rwkv_music.errors import RwkvMusicError

MODEL_FILE = "model.pth"
_FOLDERS = {"abc": "abc-default", "midi": "midi-default"}


def default_model_dir(mode: str) -> Path:
    """Folder of the shipped default model for ``mode`` ("abc" or "midi")."""
    if mode not in _FOLDERS:
        raise RwkvMusicError(f"no default model for mode {mode!r}; expected one of {sorted(_FOLDERS)}")
    return Path(__file__).resolve().parent / _FOLDERS[mode]


def default_model_path(mode: str) -> Path:
    """Path of the shipped default checkpoint for ``mode``; RwkvMusicError if it is missing."""
    path = default_model_dir(mode) / MODEL_FILE
    if not path.is_file():
        raise RwkvMusicError(
            f"{path}: default {mode} model is missing; reinstall rwkv-music or pass --model "
            f"(rebuild it with scripts/train_defaults.sh)"
        )
    return path


__all__ = ["default_model_dir", "default_model_path"]
