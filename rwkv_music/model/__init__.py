"""Checkpoint loading, version detection and the RWKV math per version (torch)."""

from rwkv_music.model.config import KNOWN_VERSIONS, ModelVersion, RWKVConfig
from rwkv_music.model.state import State

__all__ = ["KNOWN_VERSIONS", "ModelVersion", "RWKVConfig", "State"]
