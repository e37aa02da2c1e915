"""Project exceptions.

Everything raised to users derives from :class:`RwkvMusicError`; the message is one line naming
the file (or key, bar, byte offset) and what was expected.  The CLI catches ``RwkvMusicError``
once and prints its message.
"""

from __future__ import annotations


class RwkvMusicError(Exception):
    """Base class of every error rwkv_music raises on purpose."""


class CheckpointError(RwkvMusicError):
    """A model file is missing, unreadable, or not in a supported key layout."""


class StateError(RwkvMusicError):
    """A recurrent state does not fit the model (shape, version, file)."""


class TokenizerError(RwkvMusicError, ValueError):
    """Text or ids that the tokenizer cannot encode or decode."""


class MidiFormatError(TokenizerError):
    """A file that should be MIDI is not, or is damaged."""


class AbcFormatError(TokenizerError):
    """ABC text that cannot be read."""


class ConstraintError(RwkvMusicError):
    """A decoding constraint left no legal token, or was configured impossibly."""


class BackendUnavailable(RwkvMusicError):
    """The requested backend (onnxruntime, ncnn, CUDA, ...) is not installed or usable."""


class OptionError(RwkvMusicError, ValueError):
    """A value given to the library (device, thread count, a count of pieces or tokens) is invalid or out of range."""


class ExportError(RwkvMusicError):
    """An exported graph does not load or run in its runtime (it is removed, not left half-valid)."""


class OutputLockedError(RwkvMusicError):
    """Another process is writing into the same output folder."""


class OutputExistsError(RwkvMusicError):
    """Refusing to overwrite an existing output file without ``force``."""


__all__ = [
    "RwkvMusicError",
    "CheckpointError",
    "StateError",
    "TokenizerError",
    "MidiFormatError",
    "AbcFormatError",
    "ConstraintError",
    "BackendUnavailable",
    "ExportError",
    "OptionError",
    "OutputExistsError",
    "OutputLockedError",
]
