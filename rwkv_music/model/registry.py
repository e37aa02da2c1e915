"""Version → torch implementation module (dispatch once, at load; STYLE.md 7).

Every RWKV generation lives in one module implementing this protocol::

    # rwkv_music/model/vX.py
    VERSIONS: tuple[str, ...]      # the version names it runs, e.g. ("5.0", "5.1", "5.2")

    def prepare(sd, config, dtype, device) -> weights
        # sd: dict name -> torch.Tensor, a raw trainer checkpoint already checked by
        #     rwkv_music.model.checkpoint.inspect_state_dict (keys and shapes are right).
        #     It is a private shallow copy: prepare may pop entries to keep peak memory low.
        # Does every load-time rewrite ONCE (docs/formats.md A6): LN0 fold into emb, squeeze,
        # transpose to [in, out] for x @ W, decay/bonus transforms, DeepEmbed merge, casts to
        # `dtype` except where the rwkv package keeps fp32 (A10); tensors end up on `device`.
        # Returns any object (typically a dataclass with per-layer lists).

    def forward(weights, config, tokens, state, all_logits, out_state=None) -> (logits, new_state)
        # tokens: LongTensor [B, T] on the device, already validated (0 <= id < V).
        # state:  torch State on the device in the layout of rwkv_music.model.state, already
        #         checked against config and B; it must NOT be mutated (unless it is `out_state`).
        # Returns float32 logits [B, V] for the last position ([B, T, V] if all_logits) and a
        # NEW State, or with `out_state` (a State of the same shapes, possibly `state` itself) writes
        # the new state into its tensors and returns it (ops.write_state).
        # T == 1 is the decode path, T > 1 prefill (parallel/chunked in time).

The torch backend (:mod:`rwkv_music.backends.torch`) does all input checking and conversion;
the v6 ``time_state`` tensors are removed from ``sd`` before ``prepare`` and become the
backend's initial state, so version modules never see them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from rwkv_music.errors import BackendUnavailable
from rwkv_music.model.config import KNOWN_VERSIONS, ModelVersion

_MODULES: dict[str, str] = {
    "4": "rwkv_music.model.v4",
    "5.0": "rwkv_music.model.v5",
    "5.1": "rwkv_music.model.v5",
    "5.2": "rwkv_music.model.v5",
    "6": "rwkv_music.model.v6",
    "7": "rwkv_music.model.v7",
    "7a": "rwkv_music.model.v7",
}
assert set(_MODULES) == set(KNOWN_VERSIONS)

PROTOCOL = ("VERSIONS", "prepare", "forward")


def module_name(version: Any) -> str:
    """Dotted name of the module implementing ``version``."""
    return _MODULES[str(ModelVersion(version))]


def get_module(version: Any) -> ModuleType:
    """Import and return the implementation of ``version``.

    Raises :class:`BackendUnavailable` when it is missing or does not implement the protocol.
    """
    ver = ModelVersion(version)
    name = _MODULES[str(ver)]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise BackendUnavailable(f"no torch implementation of RWKV v{ver} ({name} is missing)") from None
    lacking = [attr for attr in PROTOCOL if not hasattr(module, attr)]
    if lacking:
        raise BackendUnavailable(f"{name} does not implement the version protocol (lacks {', '.join(lacking)})")
    if str(ver) not in tuple(module.VERSIONS):
        raise BackendUnavailable(f"{name} does not list RWKV v{ver} in VERSIONS {tuple(module.VERSIONS)}")
    return module


def available_versions() -> tuple[str, ...]:
    """Versions whose module imports and implements the protocol (for tests and diagnostics)."""
    out = []
    for ver in KNOWN_VERSIONS:
        try:
            get_module(ver)
        except BackendUnavailable:
            continue
        out.append(ver)
    return tuple(out)
