"""The torch backend: runs every RWKV version on CPU or CUDA through the version registry.

>>> import tempfile, pathlib
>>> from rwkv_music.model.factory import save_random_checkpoint
>>> path = save_random_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "tiny.pth", "5.2")
>>> model = load(path)
>>> logits, state = model.forward([[1, 2, 3]])
>>> tuple(logits.shape), state.batch_size
((1, 128), 1)

This module does the input side of the backend protocol (:mod:`rwkv_music.backends.base`):
it parses device and dtype, checks token ids and states, converts them to tensors on the
device, and hands them to the version module chosen once at load time
(:mod:`rwkv_music.model.registry`).  The math lives in ``rwkv_music/model/v*.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch

from rwkv_music.backends.base import tokens_to_numpy
from rwkv_music.errors import BackendUnavailable, StateError
from rwkv_music.model import registry
from rwkv_music.model.checkpoint import check_payload, inspect_state_dict, load_state_dict
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or the torch dtype) → torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    else:
        name = str(dtype).lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name in DTYPES:
            return DTYPES[name]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def parse_device(device: str | torch.device) -> torch.device:
    """A torch device, refusing CUDA when it is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be like 'cpu' or 'cuda:0', got {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r}: CUDA is not available in this torch installation")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class TorchModel:
    """An RWKV model of any supported version, run with torch (see the backend protocol).

    Build it with :func:`load` (a checkpoint file) or :meth:`from_state_dict` (in memory).
    """

    name = "torch"

    def __init__(self, config: RWKVConfig, weights: Any, module: Any, device: torch.device, dtype: torch.dtype,
                 source: str, initial_kv: torch.Tensor | None = None) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.quantization: str | None = None
        self.source = source
        self._weights = weights
        self._module = module
        self._initial_kv = initial_kv  # [L, H, N, N] f32 from a state-tuned v6 file, else None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any], device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", source: str = "<state dict>") -> "TorchModel":
        """A model from a raw trainer state dict (name → tensor), checked like a file would be.

        ``sd`` itself is not modified; ``source`` names it in error messages.
        """
        dev, dt = parse_device(device), parse_dtype(dtype)
        sd = check_payload(sd, source)  # a shallow copy, so the caller's dict is left alone
        return cls._build(sd, inspect_state_dict(sd, source), dev, dt, source)

    @classmethod
    def _build(cls, sd: dict[str, Any], config: RWKVConfig, device: torch.device, dtype: torch.dtype,
               source: str) -> "TorchModel":
        """Prepare a checked state dict that this call owns: entries are popped as they are converted,
        so peak memory stays near one copy of the model."""
        module = registry.get_module(config.version)
        initial_kv = _pop_time_state(sd, config, device)
        with torch.no_grad():
            weights = module.prepare(sd, config, dtype, device)
        log.info("%s: RWKV v%s, %d layers x %d, %s on %s", source, config.version, config.n_layer,
                 config.n_embd, str(dtype).removeprefix("torch."), device)
        return cls(config, weights, module, device, dtype, source, initial_kv)

    def quantize_int8(self, kernel: str | None = None) -> int:
        """Store the big matrices as per-channel int8 (CPU); returns how many were quantized."""
        from rwkv_music.model.quant import quantize_weights

        count = quantize_weights(self._weights, kernel)
        self.quantization = "int8"
        return count

    @property
    def info(self) -> RWKVConfig:
        """The model's sizes and version (same object as :attr:`config`)."""
        return self.config

    def __repr__(self) -> str:
        c = self.config
        return (f"TorchModel({self.source!r}, v{c.version}, L{c.n_layer} D{c.n_embd} V{c.vocab_size}, "
                f"{str(self.dtype).removeprefix('torch.')}, {self.device})")

    # -- protocol --------------------------------------------------------------------------
    def new_state(self, batch_size: int = 1) -> State:
        """A fresh state of ``batch_size`` rows (zeros, or the state-tuned start of a v6 file)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise StateError(f"{self.source}: batch_size must be a positive int, got {batch_size!r}")
        state = State.zeros(self.config, int(batch_size), backend="torch", device=self.device, dtype=self.dtype)
        if self._initial_kv is not None:
            state.tensors["att_kv"][:] = self._initial_kv.unsqueeze(1)
        return state

    def forward(self, tokens: Any, state: State | None = None, *,
                all_logits: bool = False, inplace: bool = False) -> tuple[torch.Tensor, State]:
        """Run ``tokens`` [B, T] from ``state`` (None: a fresh one).

        Returns float32 logits [B, V] of the last position ([B, T, V] with ``all_logits``) and a
        new state; ``state`` is left unchanged.

        ``inplace=True`` (an opt-in beyond the backend protocol) instead writes the new state
        into ``state``'s own tensors and returns that same object, with the same logits and
        state values as the default.  A decode loop then reuses one state's memory instead of
        allocating (and page-faulting) a fresh one per token, which is a large part of a
        step's cost at batch 32 and above on a CPU.  ``state`` must then be a torch State on
        this model's device with its dtypes (as :meth:`new_state` and ``forward`` return); with
        ``state`` None a fresh one is made and returned, as by default.
        """
        ids = self._tokens(tokens)
        B = ids.shape[0]
        if inplace and state is not None:
            checked = self._state(state, B)
            if any(checked.tensors[k] is not t for k, t in state.tensors.items()):
                raise StateError(f"{self.source}: inplace=True needs a torch state on {self.device} in this "
                                 f"model's dtypes (as new_state() makes); convert it first with state.torch()")
            with torch.no_grad():
                logits, _ = self._module.forward(self._weights, self.config, ids, checked, bool(all_logits), checked)
            return logits, state
        state = self.new_state(B) if state is None else self._state(state, B)
        with torch.no_grad():
            return self._module.forward(self._weights, self.config, ids, state, bool(all_logits))

    # -- input checks ----------------------------------------------------------------------
    def _tokens(self, tokens: Any) -> torch.Tensor:
        arr = tokens_to_numpy(tokens, self.config.vocab_size, source=f"{self.source}: tokens")
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

    def _state(self, state: Any, batch_size: int) -> State:
        if not isinstance(state, State):
            raise StateError(f"{self.source}: state must be a rwkv_music State, got {type(state).__name__}")
        try:
            state.check(self.config, batch_size)
        except StateError as exc:
            raise StateError(f"{self.source}: {exc}") from None
        if not state.is_torch or any(
            t.device != self.device or (name in ("att_x", "ffn_x") and t.dtype != self.dtype)
            or (name not in ("att_x", "ffn_x") and t.dtype != torch.float32)
            for name, t in state.tensors.items()
        ):
            state = state.torch(self.device, self.dtype)
        if state.version != self.config.version:  # v7 and v7a states are interchangeable
            state = State(self.config.version, state.tensors)
        return state


def _pop_time_state(sd: dict[str, Any], config: RWKVConfig, device: torch.device) -> torch.Tensor | None:
    """Remove v6 ``time_state`` tensors ([H, N, N] as S[value, key]) → [L, H, key, value] f32."""
    keys = [f"blocks.{i}.att.time_state" for i in range(config.n_layer)]
    if keys[0] not in sd:
        return None
    stacked = torch.stack([sd.pop(k).float().reshape(config.n_head, config.head_size, config.head_size) for k in keys])
    return stacked.transpose(-1, -2).contiguous().to(device)  # to the S[key, value] layout of v5/v6 states (A8)


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
         threads: int | None = None, **kwargs: Any) -> TorchModel:
    """Load a raw BlinkDL checkpoint (.pth, or .safetensors) for inference with torch.

    Args:
        path: the checkpoint; ``.pth`` is appended if the name has no such file without it.
        device: "cpu", "cuda", "cuda:1", ...
        dtype: "fp32", "bf16" or "fp16" (activations and weights; the WKV state stays fp32), or
            "int8": fp32 activations with per-channel int8 weights for the big matrices (CPU only,
            see :mod:`rwkv_music.model.quant`).
        threads: CPU threads for torch's kernels and the int8 kernel (``torch.set_num_threads``,
            which is process-wide); ``None`` leaves torch's default (one per physical core).
    """
    if kwargs:
        raise TypeError(f"load() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    int8 = _is_int8(dtype)
    dev, dt = parse_device(device), parse_dtype("fp32" if int8 else dtype)  # argument errors before the slow read
    if int8 and dev.type != "cpu":
        raise ValueError(f"dtype 'int8' runs on the CPU only, not on {device!r}")
    sd, config, source = load_state_dict(path)
    model = TorchModel._build(sd, config, dev, dt, source)
    if int8:
        model.quantize_int8()
    return model


def _is_int8(dtype: Any) -> bool:
    return isinstance(dtype, str) and dtype.lower() == "int8"
