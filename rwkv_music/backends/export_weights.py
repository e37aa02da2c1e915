"""The one reader of checkpoint weights for the graph exporters (ONNX and ncnn).

Both exporters build a graph from numpy arrays, never from torch modules.  What they read from
a raw BlinkDL checkpoint is the same, and so are the rewrites the runtime math wants done once
at export instead of on every token (docs/formats.md A6):

* ``ln0`` folded into the embedding table (:meth:`Weights.embedding`);
* v4 decays as ``-exp(time_decay)`` (:meth:`Weights.v4_decay`);
* v5/v6 bonus ``u`` (``time_first`` is stored as ``log u``) and v5 decays as
  ``exp(-exp(time_decay))``, per head or per channel, as ``[H, N]`` (:meth:`Weights.v5_bonus_decay`);
* v7a's DeepEmbed table merged with the folded embedding (:meth:`Weights.deep_embed_table`);
* v6 state tuning: ``time_state`` as the initial ``att_kv`` in the S[key, value] layout
  (:meth:`Weights.initial_kv`).

The rewrites run in float64 and come back as float64 (the graph builders cast to their storage
dtype), except where noted.  :meth:`Weights.unused` lists the keys nothing read, so an exporter
can refuse a checkpoint with keys it does not understand instead of dropping them.

This module never imports torch: torch tensors in a state dict are converted by duck typing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rwkv_music.errors import CheckpointError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.constants import LN_EPS


def read_checkpoint(checkpoint: Any) -> tuple[dict[str, Any], RWKVConfig, str]:
    """``(state_dict, config, source)`` of a checkpoint path or a raw state dict, fully checked."""
    from rwkv_music.model.checkpoint import inspect_state_dict, load_state_dict

    if isinstance(checkpoint, (str, os.PathLike)):
        return load_state_dict(checkpoint)
    return checkpoint, inspect_state_dict(checkpoint, "<state dict>"), "<state dict>"


def to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy array of a numpy array or a torch tensor (without importing torch)."""
    if type(value).__module__.split(".")[0] == "torch":
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def layer_norm_np(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    """LayerNorm over the last axis, computed and returned in float64."""
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class Weights:
    """Read access to a raw checkpoint as float32 numpy arrays, recording which keys were read.

    ``[1,1,C]`` vectors come back squeezed (``squeeze=False`` keeps the stored shape); a missing
    key raises :class:`CheckpointError` naming it.
    """

    def __init__(self, state_dict: dict[str, Any], source: str) -> None:
        self._sd = state_dict
        self._used: set[str] = set()
        self._emb: np.ndarray | None = None
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._sd

    def get(self, key: str, squeeze: bool = True) -> np.ndarray:
        if key not in self._sd:
            raise CheckpointError(f"{self.source}: missing key {key!r}")
        self._used.add(key)
        arr = to_numpy(self._sd[key])
        return np.squeeze(arr) if squeeze and arr.ndim > 1 else arr

    def skip(self, key: str) -> None:
        """Mark ``key`` as known but deliberately not read (v7 layer 0's ``v0/v1/v2``)."""
        if key in self._sd:
            self._used.add(key)

    def unused(self) -> list[str]:
        return sorted(k for k in self._sd if k not in self._used)

    # -- the export-time rewrites ---------------------------------------------------------------
    def embedding(self) -> np.ndarray:
        """The embedding table with ``blocks.0.ln0`` applied to every row, float64 [V, C]."""
        if self._emb is None:
            self._emb = layer_norm_np(
                self.get("emb.weight"), self.get("blocks.0.ln0.weight"), self.get("blocks.0.ln0.bias")
            )
        return self._emb

    def v4_decay(self, prefix: str) -> np.ndarray:
        """v4's log-domain decay ``-exp(time_decay)`` [C], float64 (``prefix``: ``blocks.i.att.``)."""
        return -np.exp(self.get(prefix + "time_decay").astype(np.float64))

    def v5_bonus_decay(self, cfg: RWKVConfig, prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(u, w)`` as float64 [H, N] (key channels): the bonus, and v5's constant decay
        ``exp(-exp(time_decay))`` (``None`` for v6, whose decay depends on the token).

        5.0/5.1 store one value per head (broadcast over N); ``time_first`` is ``log u``.
        """
        H, N = cfg.n_head, cfg.head_size
        if prefix + "time_faaaa" in self:
            u = _per_channel(self.get(prefix + "time_faaaa"), H, N)
        elif prefix + "time_first" in self:
            u = np.exp(_per_channel(self.get(prefix + "time_first"), H, N))
        else:
            raise CheckpointError(
                f"{self.source}: missing key {prefix + 'time_faaaa'!r} (or {prefix + 'time_first'!r})"
            )
        if cfg.version.family == 6:
            return u, None
        return u, np.exp(-np.exp(_per_channel(self.get(prefix + "time_decay"), H, N)))

    def deep_embed_table(self, layer: int) -> np.ndarray:
        """v7a's per-layer DeepEmbed table ``s_emb + emb_folded · s_emb_xᵀ``, float32 [V, 1024]."""
        f = f"blocks.{layer}.ffn."
        table = self.get(f + "s_emb.weight") + self.embedding() @ self.get(f + "s_emb_x.weight").T.astype(np.float64)
        return table.astype(np.float32)

    def initial_kv(self, cfg: RWKVConfig) -> np.ndarray | None:
        """v6 state tuning: the ``time_state`` of every layer ([H, N, N] stored as S[value, key]) as
        the initial ``att_kv`` [L, 1, H, N, N] in the S[key, value] layout of v5/v6 states (A8), or
        ``None`` when the checkpoint has none.  The keys count as read."""
        keys = [f"blocks.{i}.att.time_state" for i in range(cfg.n_layer)]
        if cfg.version != "6" or keys[0] not in self:
            return None
        kv = np.stack([self.get(k, squeeze=False).reshape(cfg.n_head, cfg.head_size, cfg.head_size) for k in keys])
        return np.ascontiguousarray(kv.transpose(0, 1, 3, 2)[:, None])


def _per_channel(arr: np.ndarray, H: int, N: int) -> np.ndarray:
    """A per-head ([H] or [H, 1]) or per-channel ([H, N] or [H*N]) vector as float64 [H, N]."""
    return np.broadcast_to(np.asarray(arr, np.float64).reshape(H, -1), (H, N))

INT8_QMAX = 127  # symmetric int8, -127..127, as rwkv_music.model.quant (not imported: no torch here)


def int8_symmetric(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``weight`` with one scale per slice along ``axis`` (the reduced axis):
    ``(q int8, scale float32)``, rounded as :func:`rwkv_music.model.quant.quantize_rows` rounds
    (half to even); an all-zero slice keeps scale 1 and q = 0."""
    w = np.asarray(weight, dtype=np.float32)
    amax = np.abs(w).max(axis=axis) if w.size else np.zeros(np.delete(w.shape, axis), np.float32)
    scale = np.where(amax > 0, amax / INT8_QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / np.expand_dims(scale, axis)), -INT8_QMAX, INT8_QMAX).astype(np.int8)
    return q, scale
