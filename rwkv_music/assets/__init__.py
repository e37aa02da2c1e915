"""Shipped default models: ``abc-default/`` and ``midi-default/`` (RWKV-7, fp16, BlinkDL layout).

Each folder holds ``model.pth`` and ``MODEL_CARD.md`` (data, licence notes, size, steps, held-out
loss and the exact training command; see ``scripts/train_defaults.sh``).

The folder name is also the model's name: everywhere a model is taken (``--model``, ``info``,
``export-onnx``, ``Composer.load``, ``load_model``) ``abc-default`` or ``midi-default`` means the
shipped file.  :func:`resolve_model` is the one place that mapping is made; a real file path
always wins over a name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rwkv_music.errors import RwkvMusicError

MODEL_FILE = "model.pth"
CARD_FILE = "MODEL_CARD.md"
_FOLDERS = {"abc": "abc-default", "midi": "midi-default"}
MODEL_NAMES = {folder: mode for mode, folder in _FOLDERS.items()}  # "abc-default" -> "abc"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its name (``abc-default``), mode, checkpoint and model card."""

    name: str
    mode: str
    path: Path
    card: Path

    @property
    def installed(self) -> bool:
        return self.path.is_file()

    def summary(self) -> str:
        """The card's title line without the ``#`` and the model's name (empty when there is no card)."""
        try:
            first = self.card.read_text(encoding="utf-8").lstrip().split("\n", 1)[0]
        except OSError:
            return ""
        title = first.lstrip("#").strip()
        if title.startswith(self.name):
            title = title[len(self.name) :].lstrip(" —-:")
        return title


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


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, installed or not, in name order."""
    out = []
    for name, mode in sorted(MODEL_NAMES.items()):
        folder = default_model_dir(mode)
        out.append(ShippedModel(name, mode, folder / MODEL_FILE, folder / CARD_FILE))
    return out


def shipped_model(name: str) -> ShippedModel:
    """The shipped model called ``name``; a one-line error listing the names otherwise."""
    for model in shipped_models():
        if model.name == name:
            return model
    raise RwkvMusicError(f"{name!r} is not a shipped model; the shipped models are {', '.join(sorted(MODEL_NAMES))}")


def is_model_name(spec: object) -> bool:
    """Whether ``spec`` is a shipped model's name (and not a path that exists)."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    text = os.fspath(spec)
    return isinstance(text, str) and text in MODEL_NAMES and not Path(text).exists()


def resolve_model(spec: str | os.PathLike) -> Path:
    """The file ``spec`` names: an existing path as given, else a shipped model's checkpoint.

    Anything else comes back as its path, so the loader reports it as missing, with the names
    in the message (see :func:`missing_model_message`).
    """
    path = Path(spec)
    if path.exists() or not is_model_name(spec):
        return path
    return default_model_path(MODEL_NAMES[os.fspath(spec)])


def missing_model_message(spec: str | os.PathLike) -> str:
    """One line for a model that is neither a file nor a shipped model's name."""
    return f"{spec}: no such model file (shipped models: {', '.join(sorted(MODEL_NAMES))}; see 'rwkv-music models')"


__all__ = [
    "MODEL_NAMES",
    "ShippedModel",
    "default_model_dir",
    "default_model_path",
    "is_model_name",
    "missing_model_message",
    "resolve_model",
    "shipped_model",
    "shipped_models",
]
