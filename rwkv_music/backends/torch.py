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
from rwkv_music.backends.export_weights import Weights
from rwkv_music.backends.limits import check_threads
from rwkv_music.errors import BackendUnavailable, OptionError, StateError
from rwkv_music.model import native as native_kernels
from rwkv_music.model import registry
from rwkv_music.model.checkpoint import check_payload, inspect_state_dict, load_state_dict
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State

log = logging.getLogger(__name__)

CALIBRATION_POSITIONS = 4096  # int4 calibration: B·T positions per model call (see TorchModel.quantize_int4)
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
    raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def parse_device(device: str | torch.device) -> torch.device:
    """A torch device this backend can run on: "cpu", "cuda", "cuda:N" (or "mps" where torch has it).

    Anything else (``""``, "tpu", "meta", "vulkan", an int) is refused with one line: an
    :class:`~rwkv_music.errors.OptionError` for a name torch does not know, a
    :class:`~rwkv_music.errors.BackendUnavailable` for one this backend cannot run on.
    """
    if isinstance(device, str):
        text = device.strip()
        if not text:
            raise OptionError(f"device {device!r} is empty; use 'cpu', 'cuda' or 'cuda:N'")
        try:
            dev = torch.device(text)
        except (RuntimeError, TypeError, ValueError):
            raise OptionError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise OptionError(f"device must be a name like 'cpu' or 'cuda:0', got {device!r}")
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    if dev.type not in ("cpu", "cuda"):
        hint = " (Vulkan runs on the ncnn backend: --backend ncnn)" if dev.type == "vulkan" else ""
        raise BackendUnavailable(f"device {device!r} is not supported by the torch backend; use 'cpu', 'cuda' "
                                 f"or 'cuda:N'{hint}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r}: CUDA is not available in this torch installation")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise BackendUnavailable(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise OptionError(f"device {device!r}: the CPU has no index; use 'cpu'")
    return dev


class TorchModel:
    """An RWKV model of any supported version, run with torch (see the backend protocol).

    Build it with :func:`load` (a checkpoint file) or :meth:`from_state_dict` (in memory).
    """

    name = "torch"
    supports_inplace = True  # forward(..., inplace=True)
    array_kind = "torch"

    def __init__(self, config: RWKVConfig, weights: Any, module: Any, device: torch.device, dtype: torch.dtype,
                 source: str, initial_kv: torch.Tensor | None = None, native: bool | None = None,
                 cuda_graph: bool = True) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.native = native  # the C kernels of rwkv_music.model.native: True, False, or None (the process default)
        self.quantization: str | None = None
        self.source = source
        self._weights = weights
        self._module = module
        self._initial_kv = initial_kv  # [L, H, N, N] f32 from a state-tuned v6 file, else None
        # Decode steps (forward of one token with inplace=True) through captured CUDA graphs, one per
        # batch-size bucket (rwkv_music.backends.torch_cuda_graph); on CUDA only.
        self.cuda_graph = bool(cuda_graph)
        self._graph_steps: Any = None
        self._graph_eager = False  # tests: run the same static-buffer path eagerly (on a CPU)
        self.threads_pinned = False  # load(threads=...) chose torch's thread count (see set_host_threads)

    @property
    def host_threads(self) -> int:
        """CPU threads a decode step keeps busy: torch's (and the native kernels') on a CPU, the one
        launching thread on a GPU.  A render leaves the other cores to its piece workers."""
        return torch.get_num_threads() if self.device.type == "cpu" else 1

    def set_host_threads(self, threads: int) -> bool:
        """Decode on ``threads`` CPU threads from now on (``torch.set_num_threads``, process-wide); False,
        changing nothing, on a GPU or where :func:`load` was given ``threads`` (:attr:`threads_pinned`):
        a render lends cores to its piece workers only where nobody chose the count."""
        if self.device.type != "cpu" or self.threads_pinned or threads < 1:
            return False
        torch.set_num_threads(threads)
        return True

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any], device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", source: str = "<state dict>",
                        native: bool | None = None, cuda_graph: bool = True) -> "TorchModel":
        """A model from a raw trainer state dict (name → tensor), checked like a file would be.

        ``sd`` itself is not modified; ``source`` names it in error messages; ``native`` and
        ``cuda_graph`` as in :func:`load`.
        """
        dev, dt = parse_device(device), parse_dtype(dtype)
        sd = check_payload(sd, source)  # a shallow copy, so the caller's dict is left alone
        model = cls._build(sd, inspect_state_dict(sd, source), dev, dt, source, native)
        model.cuda_graph = bool(cuda_graph)
        return model

    @classmethod
    def _build(cls, sd: dict[str, Any], config: RWKVConfig, device: torch.device, dtype: torch.dtype,
               source: str, native: bool | None = None) -> "TorchModel":
        """Prepare a checked state dict that this call owns: entries are popped as they are converted,
        so peak memory stays near one copy of the model."""
        module = registry.get_module(config.version)
        initial_kv = _pop_time_state(sd, config, device)
        with torch.no_grad():
            weights = module.prepare(sd, config, dtype, device)
        log.info("%s: RWKV v%s, %d layers x %d, %s on %s", source, config.version, config.n_layer,
                 config.n_embd, str(dtype).removeprefix("torch."), device)
        return cls(config, weights, module, device, dtype, source, initial_kv, native)

    def quantize_int8(self, kernel: str | None = None, skip: tuple[str, ...] = ()) -> int:
        """Store the big matrices as per-channel int8 (CPU); returns how many were quantized.

        ``kernel``: one of :data:`rwkv_music.model.quant.KERNELS`; by default the C kernel where
        this model's ``native`` choice allows it and it builds.  ``skip``: matrix fields left in float
        (e.g. :data:`rwkv_music.model.quant.LORA_FIELDS`)."""
        from rwkv_music.model.quant import quantize_weights

        count = quantize_weights(self._weights, kernel, self.native, skip=tuple(skip))
        self.quantization = "int8"
        return count

    def quantize_int4(self, kernel: str | None = None, group: int | None = None, calibration: Any = "auto",
                      sequential: bool = True, int8_fields: tuple[str, ...] | None = None,
                      int8_layers: tuple[int, ...] | None = None) -> int:
        """Store the big matrices as group-wise int4 (CPU); returns how many were quantized.

        ``kernel``: one of :data:`rwkv_music.model.quant.INT4_KERNELS` (by default the C kernel where
        this model's ``native`` choice allows it and it builds); ``group``: inputs per scale.
        ``calibration``: the token ids [B, T] on which the codes are fitted to the layers' real inputs
        (error-compensating rounding, :func:`rwkv_music.model.quant.gptq_codes_int4`); ``"auto"``
        (the default): :meth:`calibration_tokens`, sequences sampled from this model with a fixed
        seed; ``None``: every weight rounded to its nearest code.  ``sequential``: as in
        :func:`~rwkv_music.model.quant.quantize_weights_int4`.  ``int8_fields``: the matrix fields kept
        in per-channel int8 (default :data:`~rwkv_music.model.quant.INT4_INT8_FIELDS`: the head and the
        time mix's output projection; :data:`~rwkv_music.model.quant.INT4_ALL_BUT_HEAD`: the head alone).
        ``int8_layers``: the layers whose every matrix stays int8 (indices; negative from the end);
        ``None``: :data:`~rwkv_music.model.quant.INT4_INT8_LAYERS` (the first) when ``int8_fields``
        is also left to its default, else none, so ``int8_fields=INT4_ALL_BUT_HEAD`` puts every
        layer matrix in int4."""
        from rwkv_music.model.quant import (
            INT4_GROUP,
            INT4_INT8_FIELDS,
            INT4_INT8_LAYERS,
            CalibrationStop,
            quantize_weights_int4,
        )

        if int8_layers is None:
            int8_layers = INT4_INT8_LAYERS if int8_fields is None else ()
        int8_fields = INT4_INT8_FIELDS if int8_fields is None else tuple(int8_fields)

        calibrate, early_stop = None, False
        if calibration is not None:
            if isinstance(calibration, str):
                if calibration != "auto":
                    raise OptionError(f"int4 calibration must be 'auto', None or token ids, got {calibration!r}")
                calibration = self.calibration_tokens()
            ids = self._tokens(calibration)
            # one model pass per call (no split over time: 4,096 positions is the least any version splits
            # at), so that a pass may stop at the first layer not yet needed (early_stop)
            rows = max(1, CALIBRATION_POSITIONS // ids.shape[1])
            early_stop = ids.shape[1] <= CALIBRATION_POSITIONS

            def calibrate() -> None:
                for chunk in ids.split(rows):
                    try:
                        self.forward(chunk)
                    except CalibrationStop:
                        pass

        count = quantize_weights_int4(self._weights, kernel, self.native, group or INT4_GROUP,
                                      int8_fields=int8_fields, calibrate=calibrate, sequential=sequential,
                                      early_stop=early_stop, int8_layers=tuple(int8_layers))
        self.quantization = "int4"
        return count

    def calibration_tokens(self, rows: int = 16, length: int = 64, seed: int = 0,
                           start: int | None = None) -> torch.Tensor:
        """``rows`` sequences of ``length`` token ids [rows, length] sampled from this model itself
        (temperature 1, a fixed ``seed``), each after ``start``: deterministic, in-distribution inputs
        for int4 calibration.  ``start`` ``None``: the prompt start of the format whose vocabulary size
        this model has (ABC bos, MIDI ``<pad>``: where every document begins), else a token drawn
        uniformly for each row."""
        gen = torch.Generator().manual_seed(seed)
        if start is None:
            start = _format_start(self.config.vocab_size)
        if start is None:
            tok = torch.randint(0, self.config.vocab_size, (rows, 1), generator=gen)
        else:
            tok = torch.full((rows, 1), int(start), dtype=torch.long)
        out = [tok]
        logits, state = self.forward(tok)
        for _ in range(length - 1):
            tok = torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=gen)
            out.append(tok)
            logits, state = self.forward(tok, state, inplace=True)
        return torch.cat(out, 1)

    @property
    def info(self) -> RWKVConfig:
        """The model's sizes and version (same object as :attr:`config`)."""
        return self.config

    @property
    def compute_dtype(self) -> str:
        """The arithmetic dtype by name, as every backend reports it: "fp32", "bf16", "fp16", "int8" or "int4"."""
        if self.quantization in ("int8", "int4"):
            return self.quantization
        return next(name for name, dt in DTYPES.items() if dt == self.dtype)

    def as_numpy(self, logits: Any) -> np.ndarray:
        """Logits (or any tensor this model returned) as a float32 numpy array on the host (numpy stays numpy)."""
        if isinstance(logits, np.ndarray):
            return logits.astype(np.float32, copy=False)
        return logits.detach().float().cpu().numpy()

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

        On CUDA (with ``cuda_graph``) a one-token ``inplace=True`` step replays a captured graph
        (:mod:`rwkv_music.backends.torch_cuda_graph`): ``state``'s tensors then become views of the
        graph's buffers, and the logits are a view that the next such step overwrites.
        """
        ids = self._tokens(tokens)
        B = ids.shape[0]
        if inplace and state is not None and ids.shape[1] == 1 and not all_logits and self._graphs() is not None:
            logits = self._graph_steps.step(ids, state)
            if logits is not None:  # (None: a batch above the largest bucket runs eagerly below)
                return logits, state
        if inplace and state is not None:
            checked = self._state(state, B)
            if any(checked.tensors[k] is not t for k, t in state.tensors.items()):
                raise StateError(f"{self.source}: inplace=True needs a torch state on {self.device} in this "
                                 f"model's dtypes (as new_state() makes); convert it first with state.torch()")
            with torch.no_grad(), native_kernels.choose(self.native):
                logits, _ = self._module.forward(self._weights, self.config, ids, checked, bool(all_logits), checked)
            return logits, state
        state = self.new_state(B) if state is None else self._state(state, B)
        with torch.no_grad(), native_kernels.choose(self.native):
            return self._module.forward(self._weights, self.config, ids, state, bool(all_logits))

    def _graphs(self) -> Any:
        """The per-bucket graph decoders when decode steps go through them (CUDA, ``cuda_graph``), else None."""
        graphs = self.cuda_graph and self.device.type == "cuda" and self.quantization is None
        if not (graphs or self._graph_eager):
            return None  # (checked every call: ``cuda_graph`` may be switched off at any time)
        if self._graph_steps is None:
            from rwkv_music.backends.torch_cuda_graph import GraphSteps

            self._graph_steps = GraphSteps(self, use_graph=not self._graph_eager)
        return self._graph_steps

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
    """Remove v6 ``time_state`` tensors from ``sd`` → the initial ``att_kv`` [L, H, key, value] f32, or None."""
    kv = Weights(sd, "").initial_kv(config)  # the exporters' reader: one place transposes S (A8)
    if kv is None:
        return None
    for i in range(config.n_layer):
        del sd[f"blocks.{i}.att.time_state"]
    return torch.from_numpy(kv[:, 0]).to(device)


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = "fp32",
         threads: int | None = None, native: bool | None = None, cuda_graph: bool = True,
         int4_calibration: Any = "auto", int4_int8_fields: tuple[str, ...] | None = None,
         int4_int8_layers: tuple[int, ...] | None = None) -> TorchModel:
    """Load a raw BlinkDL checkpoint (.pth, or .safetensors) for inference with torch.

    Args:
        path: the checkpoint; ``.pth`` is appended if the name has no such file without it.
        device: "cpu", "cuda", "cuda:1", ...
        dtype: the arithmetic dtype of the weights and activations (the WKV state stays fp32):
            "fp32" (also for ``None`` / "auto"), "bf16" or "fp16"; or "int8": per-channel int8
            weights for the big matrices with fp32 activations (CPU only, see
            :mod:`rwkv_music.model.quant`); or "int4": the same with group-wise 4-bit weights.
        threads: CPU threads for torch's kernels and the int8 kernel.  ``torch.set_num_threads``
            is process-wide, so it is called only when ``threads`` is given; ``None`` leaves
            torch's setting alone (by default one thread per physical core).  At most
            :data:`~rwkv_music.backends.limits.MAX_THREADS` (four per CPU): far more crashes torch.
        native: use the C kernels of :mod:`rwkv_music.model.native` (fused fp32 CPU decode, the
            int8 kernel) where they build: ``True``/``False``, or ``None`` for the process
            default (on, unless ``RWKV_MUSIC_NATIVE=0``).
        cuda_graph: on CUDA, run decode steps (one token per row, ``inplace=True``, as the decode
            loop calls them) through captured CUDA graphs, one per batch-size bucket; ``False``
            runs them eagerly.  Ignored on a CPU.
        int4_calibration: with ``dtype="int4"``, how the codes are chosen (``calibration`` of
            :meth:`TorchModel.quantize_int4`): "auto" (GPTQ on sequences the model samples itself;
            about a second on the shipped models; at L12 D768 on one thread 103 s where nearest
            codes take 67 s), token ids [B, T] to calibrate on, or ``None`` (nearest codes).
        int4_int8_fields: with ``dtype="int4"``, the matrices kept in int8 (``int8_fields`` of
            :meth:`TorchModel.quantize_int4`; default the head and the time mix's output projection).
        int4_int8_layers: with ``dtype="int4"``, the layers kept int8 whole (``int8_layers`` of
            :meth:`TorchModel.quantize_int4`; default the first, unless ``int4_int8_fields`` is given).
    """
    threads = check_threads(threads, "torch")
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = "fp32" if dtype in (None, "auto") else dtype
    quant = _quant_name(dtype)
    dev, dt = parse_device(device), parse_dtype("fp32" if quant else dtype)  # argument errors before the slow read
    if quant and dev.type != "cpu":
        raise OptionError(f"dtype {quant!r} runs on the CPU only, not on {device!r}")
    sd, config, source = load_state_dict(path)
    model = TorchModel._build(sd, config, dev, dt, source, native)
    model.cuda_graph = bool(cuda_graph)
    model.threads_pinned = threads is not None
    if quant == "int8":
        model.quantize_int8()
    elif quant == "int4":
        model.quantize_int4(calibration=int4_calibration, int8_fields=int4_int8_fields, int8_layers=int4_int8_layers)
    return model


def _format_start(vocab_size: int) -> int | None:
    """The prompt start id of the music format with this vocabulary size (ABC 2, MIDI 0), else ``None``."""
    from rwkv_music.formats.base import VOCAB_MODES, format_for

    mode = VOCAB_MODES.get(vocab_size)
    return None if mode is None else int(format_for(mode).prompt_start)


def _quant_name(dtype: Any) -> str | None:
    """"int8" / "int4" for a weight-quantized dtype name, else ``None``."""
    name = dtype.lower() if isinstance(dtype, str) else None
    return name if name in ("int8", "int4") else None
