"""The onnxruntime backend: runs graphs written by :mod:`rwkv_music.backends.onnx_export` behind the Backend protocol.

This module never imports torch (nor onnx, nor the exporter): a graph and its JSON sidecar
(``OUT.onnx.json``, or ``OUT.json``; see :mod:`rwkv_music.backends.sidecar`) carry everything
needed, so ``--backend onnx`` works on machines without torch.  Inputs and outputs are numpy
arrays; states are :class:`~rwkv_music.model.state.State` values with the same tensor names,
shapes and S orientation as the torch backend, so a state can move between backends
(``State.numpy()`` / ``State.torch()``).

Graph interface (see :mod:`rwkv_music.backends.onnx_export` for the design):

* inputs: ``tokens`` int64 [batch, time]; ``state_<name>`` per state tensor ([L, batch, ...]);
  ``return_all_logits`` bool [] (optional, default false);
* outputs: ``logits`` float32 [batch, V] (last position); ``all_logits`` float32 [batch, time, V]
  (empty unless requested); ``new_state_<name>``.

>>> import pathlib, tempfile
>>> from rwkv_music.backends.onnx_export import export
>>> from rwkv_music.model.factory import save_random_checkpoint
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> graph = export(save_random_checkpoint(tmp / "tiny.pth", "7"), tmp / "tiny.onnx")
>>> model = load(graph)  # or rwkv_music.load_model(graph, backend="onnx")
>>> logits, state = model.forward([[2, 83, 58]])
>>> logits.shape, state.tensors["att_kv"].shape
((1, 128), (2, 1, 2, 32, 32))
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.backends.base import NumpyRuntime, refuse_native, tokens_to_numpy
from rwkv_music.backends.limits import check_threads, device_index
from rwkv_music.backends.sidecar import (
    ALL_FLAG,
    ALL_LOGITS,
    LOGITS,
    META_KEY,
    STATE_IN,
    STATE_OUT,
    TOKENS,
    find_onnx_sidecar,
    read_onnx_sidecar,
)
from rwkv_music.errors import BackendUnavailable, CheckpointError, StateError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


# Session settings a sidecar may ask for (``ort_session_config``), and the values allowed: the
# weight-only int8 graph needs onnxruntime's DequantizeLinear -> MatMul fusion off (onnx_weights).
_SESSION_CONFIG_ALLOWED = {"session.disable_quant_qdq": ("0", "1")}


def _graph_dtype(sidecar: dict[str, Any]) -> str:
    """The dtype a graph reports: its weight storage ("int8", "int4", "bf16") over fp32 activations,
    else "fp32"/"fp16"; an int8 graph from before the sidecar had "weights" has only "quantization"."""
    return sidecar.get("weights") or ("int8" if sidecar.get("quantization") else sidecar["dtype"])


def _session_config(side: Path, sidecar: dict[str, Any]) -> dict[str, str]:
    config = sidecar.get("ort_session_config") or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{side}: ort_session_config must be an object, got {type(config).__name__}")
    for key, value in config.items():
        if value not in _SESSION_CONFIG_ALLOWED.get(key, ()):
            raise CheckpointError(f"{side}: ort_session_config {key!r}: {value!r} is not a setting this runtime takes")
    return config


def _providers(device: str) -> list[Any]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                f"device {device!r}: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
            )
        index = device_index(device, "onnx")
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise BackendUnavailable(f"device {device!r} is not supported by the onnx backend (use 'cpu' or 'cuda')")


class OnnxModel(NumpyRuntime):
    """An exported RWKV graph on onnxruntime (implements :class:`~rwkv_music.backends.base.Backend`)."""

    name = "onnx"

    def __init__(
        self,
        session: Any,
        config: RWKVConfig,
        sidecar: dict[str, Any],
        device: str,
        path: Path,
        initial: State | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.sidecar = sidecar
        self.device = device
        self.path = path
        self.quantization: str | None = sidecar.get("quantization")
        self.dtype: str = _graph_dtype(sidecar)  # fixed at export
        self.tokenizer_kind: str | None = sidecar.get("tokenizer")
        self._state_dtypes = {n: _NP_DTYPES[s["dtype"]] for n, s in sidecar["state"].items()}
        self._initial = initial  # v6 state tuning (time_state), batch 1

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name}, v{self.config.version}, {self.dtype}, {self.device})"

    def new_state(self, batch_size: int = 1) -> State:
        """A fresh state in the dtypes the graph expects: zeros (v4 ``att_p`` at -1e30), or the
        checkpoint's ``time_state`` for state-tuned v6 models."""
        if self._initial is None:
            act = np.float16 if self.sidecar["dtype"] == "fp16" else None
            return State.zeros(self.config, batch_size, backend="numpy", dtype=act)
        if batch_size < 1:
            raise StateError(f"new_state: batch_size must be >= 1, got {batch_size}")
        rows = {
            n: np.repeat(t, batch_size, axis=1).astype(self._state_dtypes[n]) for n, t in self._initial.tensors.items()
        }
        return State(self.config.version, rows)

    def forward(self, tokens: Any, state: State | None = None, *, all_logits: bool = False) -> tuple[np.ndarray, State]:
        """Run ``tokens`` [B,T] from ``state``; returns float32 logits ([B,V] or [B,T,V]) and a new state."""
        ids = tokens_to_numpy(tokens, self.config.vocab_size)
        batch = ids.shape[0]
        if state is None:
            state = self.new_state(batch)
        elif not isinstance(state, State):
            raise StateError(f"state must be a rwkv_music State, got {type(state).__name__}")
        state.check(self.config, batch_size=batch)
        feeds: dict[str, np.ndarray] = {TOKENS: ids}
        for name, dt in self._state_dtypes.items():
            t = state.tensors[name]
            if type(t).__module__.split(".")[0] == "torch":  # a torch backend's state; no torch import needed
                t = t.detach().float().cpu().numpy()
            feeds[STATE_IN + name] = np.ascontiguousarray(t, dtype=dt)
        if all_logits:
            feeds[ALL_FLAG] = np.array(True)
        names = [ALL_LOGITS if all_logits else LOGITS] + [STATE_OUT + n for n in self._state_dtypes]
        out = self.session.run(names, feeds)
        new = State(self.config.version, dict(zip(self._state_dtypes, out[1:])))
        return out[0], new


def _check_graph(session: Any, path: Path, side: Path, sidecar: dict[str, Any], cfg: RWKVConfig) -> None:
    """The graph must be an rwkv_music export whose metadata and inputs agree with the sidecar."""
    meta = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if meta is None:
        raise CheckpointError(f"{path}: not an rwkv_music RWKV graph (no {META_KEY!r} metadata)")
    ident = json.loads(meta)
    for key in ("config", "dtype"):
        if ident.get(key) != sidecar.get(key):
            got, want = ident.get(key), sidecar.get(key)
            if isinstance(got, dict) and isinstance(want, dict):
                diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                got, want = {k: got.get(k) for k in diff}, {k: want.get(k) for k in diff}
            raise CheckpointError(
                f"{side}: sidecar does not match {path.name}: {key} {want} in the sidecar, {got} in the graph"
            )
    inputs = {i.name: i.shape for i in session.get_inputs()}
    for name, (shape, _) in state_shapes(cfg, 1).items():
        dims = inputs.get(STATE_IN + name)
        fixed = [d for k, d in enumerate(dims or []) if k != 1]
        if dims is None or fixed != [d for k, d in enumerate(shape) if k != 1]:
            raise CheckpointError(
                f"{path}: graph input {STATE_IN + name!r} is {dims}, the sidecar's model needs {list(shape)}"
            )
    if TOKENS not in inputs:
        raise CheckpointError(f"{path}: graph has no {TOKENS!r} input")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    logits = outputs.get(LOGITS)
    if not logits or logits[-1] != cfg.vocab_size:  # a graph of another model with this sidecar copied beside it
        raise CheckpointError(f"{path}: graph output {LOGITS!r} is {logits}, the sidecar's model has a vocabulary "
                              f"of {cfg.vocab_size}")
    for name, (shape, _) in state_shapes(cfg, 1).items():
        dims = outputs.get(STATE_OUT + name)
        if dims is None or [d for k, d in enumerate(dims) if k != 1] != [d for k, d in enumerate(shape) if k != 1]:
            raise CheckpointError(
                f"{path}: graph output {STATE_OUT + name!r} is {dims}, the sidecar's model needs {list(shape)}"
            )


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: str | None = None,
    *,
    threads: int | None = None,
    native: bool | None = None,
) -> OnnxModel:
    """Open an exported graph on onnxruntime.

    Args:
        path: the ``.onnx`` file (its sidecar ``.onnx.json`` must sit next to it).
        device: "cpu", or "cuda"/"cuda:N" (needs onnxruntime-gpu).
        dtype: the graph's dtype, fixed when it was exported: "fp32", "fp16" (fp16 activations
            and weights, the WKV state in fp32), or a weight storage over fp32 activations
            ("int8", "int4", "bf16": ``export-onnx --dtype``).  ``None`` or "auto" takes the
            graph's own; another value is refused with :class:`BackendUnavailable`, since
            onnxruntime cannot change a graph's dtype.
        threads: onnxruntime intra-op threads of this session (default: onnxruntime's choice);
            nothing process-wide is changed.
        native: the torch backend's C kernels do not apply here; ``True`` is refused.
    """
    refuse_native("onnx", native)
    threads = check_threads(threads, "onnx")
    if not isinstance(device, str):
        raise BackendUnavailable(f"device {device!r} is not supported by the onnx backend (use 'cpu' or 'cuda')")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    side = find_onnx_sidecar(path)
    sidecar, cfg = read_onnx_sidecar(side)
    graph_dtype = _graph_dtype(sidecar)
    if dtype not in {None, "auto", graph_dtype}:
        raise BackendUnavailable(
            f"{path.name} computes in {graph_dtype} (fixed at export), not {dtype}; "
            f"re-export it with 'rwkv-music export-onnx --dtype {dtype}', or leave dtype unset"
        )
    session_config = _session_config(side, sidecar)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'onnx' needs onnxruntime ({exc}); pip install rwkv-music[onnx]") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in session_config.items():
        opts.add_session_config_entry(key, value)
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=_providers(device))
    except BackendUnavailable:
        raise
    except Exception as exc:  # onnxruntime raises its own classes for bad protobufs / graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({first})") from None
    _check_graph(session, path, side, sidecar, cfg)
    initial = None
    if sidecar.get("initial_state"):
        initial = State.load(path.with_name(sidecar["initial_state"]))
        initial.check(cfg, batch_size=1)
    return OnnxModel(session, cfg, sidecar, device, path, initial)
