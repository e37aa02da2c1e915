"""The ncnn backend: runs graphs written by :mod:`rwkv_music.backends.ncnn_export` on the stock ``ncnn`` wheel.

This module never imports torch (nor the exporter): the ``.param`` / ``.bin`` pair and the JSON
sidecar (``PREFIX.json``, see :mod:`rwkv_music.backends.sidecar`) carry everything, so
``--backend ncnn`` works on machines without torch.
Inputs and outputs are numpy arrays; states are :class:`~rwkv_music.model.state.State` values
with the same names, shapes and S orientation as the torch backend, so states move freely
between backends.

The graph computes one token for B rows (see :mod:`rwkv_music.backends.ncnn_export` for its
design): :meth:`NcnnModel.forward` feeds ``token`` and the ``in_<name>_<i>`` state blobs and
extracts the single packed blob ``out_all`` (logits and every ``out_<name>_<i>`` state,
concatenated per row).  A prompt goes through the prefill graph ``PREFIX.seq.param`` when the
export has one (sidecar ``prefill``): one call per chunk of T tokens (T fixed at export; it runs
every projection on B·T rows at once and unrolls only the recurrence), the remainder token by
token.  That second ncnn net reads the same ``.bin`` and is loaded on first use (it holds its own
copy of the weights, so a prefill doubles the weights' memory).

Why inputs are cloned: a ``ncnn.Mat`` built from a numpy array borrows its memory and has no
reference count, and in light mode ncnn's in-place layers check that count before writing —
a null dereference that crashes the interpreter (seen as "the Extractor crashes extracting a
second output in light mode").  Cloning the input Mats gives them owned, counted memory, so
light mode (intermediate blobs freed as soon as they are used) is safe; one extractor per step
and one extract per extractor keep it that way.

>>> model = load("abc-82m.param", num_threads=4)  # doctest: +SKIP
>>> logits, state = model.forward([[2, 83, 58]])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.backends.base import NumpyRuntime, as_numpy, refuse_native, tokens_to_numpy
from rwkv_music.backends.limits import check_threads, device_index
from rwkv_music.backends.sidecar import NCNN_STORAGES, PACKED, TOKEN, ncnn_paths, read_ncnn_sidecar
from rwkv_music.errors import BackendUnavailable, CheckpointError, StateError
from rwkv_music.model.config import RWKVConfig
from rwkv_music.model.state import State, state_shapes

log = logging.getLogger(__name__)

Layers = dict[str, list[np.ndarray]]  # state name → one [B, ...] float32 array per layer


def _ncnn() -> Any:
    try:
        import ncnn
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend 'ncnn' needs the ncnn package ({exc}); pip install rwkv-music[ncnn]") from None
    return ncnn


class NcnnModel(NumpyRuntime):
    """An exported RWKV graph on ncnn (implements :class:`~rwkv_music.backends.base.Backend`)."""

    name = "ncnn"

    def __init__(self, net: Any, config: RWKVConfig, sidecar: dict[str, Any], paths: dict[str, Path], device: str,
                 fp16: bool, num_threads: int, initial: State | None = None) -> None:
        self.net = net
        self.config = config
        self.sidecar = sidecar
        self.paths = paths
        self.device = device
        self.fp16 = fp16
        self.num_threads = num_threads
        self.storage: str = sidecar["dtype"]  # weight storage chosen at export: fp32, fp16 or int8
        self.quantization: str | None = sidecar.get("quantization")
        # the arithmetic: fp16 where asked for, else fp32 (over 8-bit weights expanded at load for int8)
        self.dtype: str = "fp16" if fp16 else "int8" if self.storage == "int8" else "fp32"
        self.tokenizer_kind: str | None = sidecar.get("tokenizer")
        self._ncnn = _ncnn()
        self._names = list(state_shapes(config, 1))
        self._shapes = {n: shape[2:] for n, (shape, _) in state_shapes(config, 1).items()}
        # (state name, offset, size) of every new state blob in the packed output, layers in order
        self._segments = [(s["state"], s["offset"], s["size"]) for s in sidecar["outputs"][PACKED]["segments"][1:]]
        self._initial = initial  # v6 state tuning (time_state), batch 1
        self._inputs = {n: sidecar["state"][n]["inputs"] for n in self._names}  # in_<name>_<i> per layer
        prefill = sidecar.get("prefill") or {}
        self.prefill_chunk: int = int(prefill.get("chunk", 0))  # tokens per prefill-graph call (0: none)
        self.prefill: bool = self.prefill_chunk > 1  # set False to feed prompts token by token
        self._seq_net: Any = None
        self._open: Any = None  # param path → a loaded ncnn.Net with this model's options (set by load)

    @property
    def host_threads(self) -> int:
        """CPU threads a step keeps busy (a render's piece workers get the other cores)."""
        return self.num_threads

    def __repr__(self) -> str:
        storage = "fp16 storage" if self.fp16 else "fp32 storage"
        name = self.paths["param"].name
        return f"NcnnModel({name}, v{self.config.version}, {self.storage} weights, {storage}, {self.device})"

    # -- protocol ----------------------------------------------------------------------------
    def new_state(self, batch_size: int = 1) -> State:
        """A fresh float32 state: zeros (v4 ``att_p`` at -1e30), or the state-tuned start of a v6 export."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise StateError(f"{self.paths['param'].name}: batch_size must be a positive int, got {batch_size!r}")
        if self._initial is None:
            return State.zeros(self.config, int(batch_size), backend="numpy")
        rows = {n: np.repeat(t, int(batch_size), axis=1) for n, t in self._initial.tensors.items()}
        return State(self.config.version, rows)

    def forward(self, tokens: Any, state: State | None = None, *, all_logits: bool = False) -> tuple[np.ndarray, State]:
        """Run ``tokens`` [B, T] from ``state``; float32 logits [B, V] (or [B, T, V]) and a new state."""
        source = self.paths["param"].name
        ids = tokens_to_numpy(tokens, self.config.vocab_size, source=f"{source}: tokens").astype(np.int32)
        B, T = ids.shape
        cur = self._layers(self._state(state, B))
        steps = []  # [B, n, V] per call
        t, chunk = 0, self.prefill_chunk
        while self.prefill and T - t >= chunk:
            logits, cur = self._step(np.ascontiguousarray(ids[:, t : t + chunk]).ravel(), cur, B, chunk)
            steps.append(logits)
            t += chunk
        for t in range(t, T):
            logits, cur = self._step(np.ascontiguousarray(ids[:, t]), cur, B)
            steps.append(logits)
        new = State(self.config.version, {n: np.stack(cur[n]) for n in self._names})
        return (np.concatenate(steps, axis=1) if all_logits else steps[-1][:, -1]), new

    # -- internals ---------------------------------------------------------------------------
    def _state(self, state: Any, batch: int) -> State:
        if state is None:
            return self.new_state(batch)
        if not isinstance(state, State):
            name = self.paths["param"].name
            raise StateError(f"{name}: state must be a rwkv_music State, got {type(state).__name__}")
        try:
            state.check(self.config, batch_size=batch)
        except StateError as exc:
            raise StateError(f"{self.paths['param'].name}: {exc}") from None
        return state

    def _layers(self, state: State) -> Layers:
        """Per state name, one contiguous float32 [B, ...] array per layer (ncnn gets clones, so the
        caller's state is never written)."""
        return {n: [np.ascontiguousarray(a) for a in as_numpy(state.tensors[n])] for n in self._names}

    def _net(self, n: int) -> Any:
        """The step graph, or (``n`` > 1) the prefill graph, loaded on first use."""
        if n == 1:
            return self.net
        if self._seq_net is None:
            self._seq_net = self._open(prefill_param_path(self.paths["param"]))
        return self._seq_net

    def _step(self, ids: np.ndarray, cur: Layers, B: int, n: int = 1) -> tuple[np.ndarray, Layers]:
        """Run ``n`` tokens per row (``ids``: B·n ids, row-major); logits [B, n, V] and the new state."""
        ncnn = self._ncnn
        ex = self._net(n).create_extractor()
        ex.set_light_mode(True)
        ex.input(TOKEN, ncnn.Mat(ids).clone())  # clone: see the module docstring
        for name in self._names:
            for blob, arr in zip(self._inputs[name], cur[name]):
                ex.input(blob, ncnn.Mat(arr).clone())
        ret, mat = ex.extract(PACKED)
        if ret != 0:
            raise CheckpointError(f"{self.paths['param'].name}: ncnn failed to run the graph (error {ret})")
        out = np.array(mat, dtype=np.float32).reshape(B, -1)
        V = self.config.vocab_size
        logits = out[:, : n * V].reshape(B, n, V).copy()
        new: dict[str, list[np.ndarray]] = {name: [] for name in self._names}
        for name, offset, size in self._segments:  # offsets are the step graph's: n-1 more logit rows precede
            start = offset + (n - 1) * V
            new[name].append(np.ascontiguousarray(out[:, start : start + size]).reshape(B, *self._shapes[name]))
        return logits, new


def prefill_param_path(param: Path) -> Path:
    """``PREFIX.seq.param``, the prefill graph of the export whose step graph is ``PREFIX.param``."""
    return param.with_name(param.name[: -len(".param")] + ".seq.param")


def _check_files(paths: dict[str, Path], sidecar: dict[str, Any]) -> None:
    """The sidecar must describe exactly these .param/.bin files (hash and size recorded at export)."""
    import hashlib

    files = sidecar.get("files", {})
    digest = hashlib.sha256(paths["param"].read_bytes()).hexdigest()
    if files.get("param_sha256") != digest:
        raise CheckpointError(
            f"{paths['sidecar']}: sidecar does not match {paths['param'].name} (param hash differs); re-export")
    prefill = sidecar.get("prefill")
    seq = prefill_param_path(paths["param"])
    if prefill and seq.is_file() and prefill.get("param_sha256") != hashlib.sha256(seq.read_bytes()).hexdigest():
        raise CheckpointError(f"{paths['sidecar']}: sidecar does not match {seq.name} (param hash differs); re-export")
    size = paths["bin"].stat().st_size
    if files.get("bin_bytes") != size:
        raise CheckpointError(f"{paths['sidecar']}: sidecar does not match {paths['bin'].name} "
                              f"({files.get('bin_bytes')} bytes expected, {size} found); re-export")


def _use_vulkan(ncnn: Any, device: str, vulkan: bool) -> tuple[bool, str]:
    """(use Vulkan?, device label); falls back to the CPU with a warning when no GPU is usable."""
    wanted = vulkan or device.startswith(("vulkan", "gpu"))
    if not wanted:
        if device != "cpu":
            raise BackendUnavailable(f"device {device!r} is not supported by the ncnn backend (use 'cpu' or 'vulkan')")
        return False, "cpu"
    index = device_index(device, "ncnn")
    try:
        count = int(ncnn.get_gpu_count())
    except Exception:  # a wheel built without Vulkan
        count = 0
    if count <= index:
        log.warning("ncnn: no Vulkan GPU %d available (%d found); running on the CPU", index, count)
        return False, "cpu"
    return True, f"vulkan:{index}"


def load(path: str | os.PathLike, device: str = "cpu", dtype: str | None = None, num_threads: int | None = None,
         fp16: bool = False, vulkan: bool = False, *, threads: int | None = None,
         native: bool | None = None) -> NcnnModel:
    """Open an export (``PREFIX``, ``PREFIX.param`` or ``PREFIX.bin``; the sidecar ``PREFIX.json`` must sit beside it).

    Args:
        path: the export's prefix or one of its files.
        device: "cpu", or "vulkan" / "vulkan:N" (falls back to the CPU when no GPU is usable).
        dtype: the arithmetic dtype.  "fp32" (the default, also for ``None`` / "auto") or "fp16"
            (ncnn's fp16 storage and arithmetic where the CPU or GPU has them, as ``fp16=True``).
            The weights' storage was fixed at export (fp32, fp16, or 8-bit int8 rows / codebooks) and is
            expanded at load, so it only rounds the weights; "int8" names an int8 export run in
            fp32 and is refused for other exports, as is any other value ("bf16"), with
            :class:`BackendUnavailable`.
        num_threads: ncnn threads of this net (default: ncnn's choice, all big cores); nothing
            process-wide is changed.
        fp16: fp16 storage/arithmetic (the same as ``dtype="fp16"``).
        vulkan: run on the first Vulkan GPU if there is one.
        threads: an alias of ``num_threads`` (the name the other backends use).
        native: the torch backend's C kernels do not apply here; ``True`` is refused.
    """
    refuse_native("ncnn", native)
    num_threads = check_threads(num_threads if num_threads is not None else threads, "ncnn")
    if dtype == "int4":
        raise BackendUnavailable("dtype 'int4' is not available on the ncnn backend: stock ncnn has no int4 matrix "
                                 "product; use int8 (an int8 export) or the torch backend's int4")
    if dtype not in (None, "auto", *NCNN_STORAGES):
        raise BackendUnavailable(f"dtype {dtype!r} is not supported by the ncnn backend (use fp32, fp16, "
                                 "or int8 with an int8 export)")
    if fp16 and dtype in ("fp32", "int8"):
        raise BackendUnavailable(f"dtype {dtype!r} and fp16=True contradict each other; pass one of them")
    fp16 = bool(fp16 or dtype == "fp16")
    paths = ncnn_paths(path)
    for kind in ("param", "bin", "sidecar"):
        if not paths[kind].is_file():
            hint = "; re-export with 'rwkv-music export-ncnn'" if kind == "sidecar" else ""
            raise CheckpointError(f"{paths[kind]}: no such file (ncnn {kind} of {paths['param'].name}){hint}")
    sidecar, cfg = read_ncnn_sidecar(paths["sidecar"])
    if dtype == "int8" and sidecar["dtype"] != "int8":
        raise BackendUnavailable(f"{paths['param'].name} stores {sidecar['dtype']} weights, not int8; "
                                 "export it with 'rwkv-music export-ncnn --dtype int8', or leave dtype unset")
    _check_files(paths, sidecar)
    if sidecar.get("prefill") and not prefill_param_path(paths["param"]).is_file():  # copied without it
        log.warning("%s: no prefill graph %s beside it; prompts run token by token", paths["param"].name,
                    prefill_param_path(paths["param"]).name)
        sidecar = {k: v for k, v in sidecar.items() if k != "prefill"}
    ncnn = _ncnn()
    use_vulkan, label = _use_vulkan(ncnn, str(device), vulkan)

    def open_net(param: Path) -> Any:
        net = ncnn.Net()
        net.opt.use_vulkan_compute = use_vulkan
        # ncnn turns fp16 storage/arithmetic on by default wherever the CPU has it (x86 F16C too), which
        # moves logits by ~1e-2; the backend runs fp32 unless fp16 is asked for.
        net.opt.use_fp16_storage = fp16
        net.opt.use_fp16_packed = fp16
        net.opt.use_fp16_arithmetic = fp16
        net.opt.use_bf16_storage = False
        if num_threads is not None:
            net.opt.num_threads = num_threads
        if net.load_param(str(param)) != 0:
            raise CheckpointError(f"{param}: ncnn cannot parse this param file")
        if net.load_model(str(paths["bin"])) != 0:
            raise CheckpointError(f"{paths['bin']}: ncnn cannot read the weights (truncated or not from {param.name})")
        return net

    net = open_net(paths["param"])
    wanted = {TOKEN, *(blob for s in sidecar["state"].values() for blob in s["inputs"])}
    have = set(net.input_names())
    if wanted != have:
        odd = sorted(wanted ^ have)[0]
        raise CheckpointError(f"{paths['param']}: graph inputs and sidecar disagree (blob {odd!r} is in only one)")
    initial = None
    if sidecar.get("initial_state"):
        initial = State.load(paths["param"].with_name(sidecar["initial_state"]))
        initial.check(cfg, batch_size=1)
        initial = initial.numpy()
    log.info("%s: RWKV v%s on ncnn (%s weights, %s, %s)", paths["param"].name, cfg.version, sidecar["dtype"],
             "fp16" if fp16 else "fp32", label)
    model = NcnnModel(net, cfg, sidecar, paths, label, fp16, int(net.opt.num_threads), initial)
    model._open = open_net
    return model

