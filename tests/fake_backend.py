"""A tiny numpy stand-in for a backend, for tests of the composing logic (no torch, instant).

Logits are a fixed random function of the last token and a per-row running state, so rows are
independent, results are deterministic, and the recurrent state really matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State


class FakeBackend:
    name = "fake"
    device = "cpu"
    supports_inplace = True  # decode steps may hand it their own state to overwrite (as the torch backend)

    def __init__(self, vocab_size: int = 128, seed: int = 0) -> None:
        self.config = RWKVConfig(
            version="7", n_layer=1, n_embd=32, dim_att=32, dim_ffn=128, n_head=1, head_size=32, vocab_size=vocab_size
        )
        rng = np.random.default_rng(seed)
        self.mix = rng.normal(0, 1, size=(32, vocab_size)).astype(np.float32)
        self.emb = rng.normal(0, 1, size=(vocab_size, 32)).astype(np.float32)
        self.calls = 0

    @property
    def info(self) -> RWKVConfig:
        return self.config

    def new_state(self, batch_size: int = 1) -> State:
        return State.zeros(self.config, batch_size)

    def forward(
        self, tokens: Any, state: State | None = None, *, all_logits: bool = False, inplace: bool = False
    ) -> tuple[np.ndarray, State]:
        self.calls += 1
        toks = np.asarray(tokens, dtype=np.int64)
        state = state if state is not None else self.new_state(toks.shape[0])
        x = state.tensors["att_x"][0].copy()  # [B, C]
        for t in range(toks.shape[1]):
            x = 0.9 * x + 0.3 * self.emb[toks[:, t]]  # slow decay: old context still matters
        logits = (self.emb[toks[:, -1]] + 3.0 * x) @ self.mix
        new = state if inplace else state.copy()  # inplace: the caller's state object is the result
        new.tensors["att_x"][0] = x
        return logits.astype(np.float32), new
