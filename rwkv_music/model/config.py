"""Model sizes and version, read once from a checkpoint and shared by every backend.

Version names follow docs/formats.md A4: "4", "5.0", "5.1", "5.2", "6", "7" and "7a" (RWKV-7 with
DeepEmbed).  :class:`ModelVersion` is a ``str`` that also compares equal to the numbers people
write for them (``ModelVersion("5.2") == 5.2``, ``ModelVersion("4") == 4``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KNOWN_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")


class ModelVersion(str):
    """A checkpoint generation name; equal to its string and, where it has one, its number."""

    def __new__(cls, value: Any) -> "ModelVersion":
        text = _canonical_version(value)
        return super().__new__(cls, text)

    @property
    def family(self) -> int:
        """Major generation: 4, 5, 6 or 7."""
        return int(self[0])

    def __eq__(self, other: object) -> bool:
        if type(other) is ModelVersion:  # both canonical already (checked every decode step)
            return str.__eq__(self, other)
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            try:
                return float(self) == float(other)
            except ValueError:  # "7a" equals no number
                return False
        if isinstance(other, str):
            try:
                return str.__eq__(self, _canonical_version(other))
            except ValueError:
                return False
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return f"ModelVersion({str(self)!r})"


def _canonical_version(value: Any) -> str:
    text = str(value).strip().lower().lstrip("v")
    aliases = {"4.0": "4", "5": "5.0", "6.0": "6", "7.0": "7", "x070": "7", "x060": "6", "x052": "5.2"}
    text = aliases.get(text, text)
    if text not in KNOWN_VERSIONS:
        raise ValueError(f"unknown RWKV version {value!r}; expected one of {', '.join(KNOWN_VERSIONS)}")
    return text


@dataclass(frozen=True)
class RWKVConfig:
    """Every size of one RWKV model, derived from its checkpoint's tensor shapes (docs/formats.md A5).

    ``dim_att`` (A) equals ``n_embd`` (C) in every released model but is kept apart because the
    v4–v6 key/value/receptance matrices are stored as ``[A, C]``.  v4 has no heads: ``n_head`` is
    0 and ``head_size`` 0.  ``lora`` holds the low-rank widths of v6 (``maa``, ``decay``) and v7
    (``w``, ``a``, ``v``, ``g``; ``semb`` for DeepEmbed).
    """

    version: ModelVersion
    n_layer: int
    n_embd: int
    dim_att: int
    dim_ffn: int
    n_head: int
    head_size: int
    vocab_size: int
    lora: dict[str, int] = field(default_factory=dict)
    n_params: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", ModelVersion(self.version))
        for name in ("n_layer", "n_embd", "dim_att", "dim_ffn", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"RWKVConfig.{name} must be a positive int, got {value!r}")
        if self.version.family >= 5 and self.n_head * self.head_size != self.dim_att:
            raise ValueError(
                f"RWKVConfig: n_head ({self.n_head}) x head_size ({self.head_size}) must equal dim_att ({self.dim_att})"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["version"] = str(self.version)
        data["lora"] = dict(self.lora)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RWKVConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"RWKVConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**{k: (dict(v) if k == "lora" else v) for k, v in data.items()})

    @property
    def ffn_size(self) -> int:
        """Alias of ``dim_ffn`` (the issue's name for it)."""
        return self.dim_ffn

    @property
    def param_count(self) -> int:
        return self.n_params
