"""Batch rendering on a Ray cluster: the same files, manifest and resume as :func:`~rwkv_music.compose.render.render`.

Each worker is a Ray actor that loads the model once and renders blocks of consecutive samples
(a prompt's sample range, or the tail of one prompt and the head of the next) with the local
render's own generation path (:func:`~rwkv_music.compose.render.generate_pieces`: the row recipe,
the per-sample seeds, the continuous-batching loop).  The driver keeps ``blocks_per_worker`` blocks
queued at every worker, so a faster worker takes more, and writes what comes back with the local
render's writers (:class:`~rwkv_music.compose.render.RenderOutput`): the file atomically, then its
manifest row.  A block is a Ray streaming call: each piece comes back, and is written, as soon as it
is finished, so writing overlaps generation.  Everything else (reading the input, the plan, the
output lock, ``render.json``, ``--resume``, ``stats.json``) is
:func:`~rwkv_music.compose.render.render_with`, shared with the local render, so a sample's file
and row do not depend on where it was made.

Faults: a sample counts once its file and row reach the driver, so a worker that dies (a killed
process, a lost node) loses nothing: the unfinished samples of its blocks go back to the queue and
the others render them; each sample is written once, whichever worker finishes it.  A killed driver leaves what
a killed local render leaves, and ``resume=True`` finishes the job.

``write_on_workers=True`` (an output folder on a filesystem every worker shares): workers write
the files themselves and send only the rows; the driver checks each file is there before it
appends the row.  Inputs that are files (a folder of pieces to continue, ``"file"`` rows of a
.jsonl) and a model given as a path must be readable at the same path on every worker.

Ray is optional (``pip install 'rwkv-music[ray]'``) and imported only here, when a render starts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rwkv_music.compose.render import (
    SETTINGS,
    Failed,
    ProgressFn,
    RenderOutput,
    RenderReport,
    RenderSettings,
    Sample,
    generate_pieces,
    render_with,
    sample_bytes,
    sample_row,
    save_sample,
)
from rwkv_music.errors import BackendUnavailable, OptionError, RwkvMusicError
from rwkv_music.formats.base import Format, format_for

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster address before calling it unreachable
START_TIMEOUT = 600.0  # seconds for every worker to load its model
# Ray starts workers at nice 15 so its own daemons stay responsive; here the workers are the job, and at
# nice 15 they lose the CPU to everything else on the machine (measured: +17 % per piece on a busy box)
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


@dataclass(frozen=True)
class ModelSpec:
    """How each worker loads its model (the arguments of :meth:`Composer.load`).

    ``default_mode`` picks the shipped model when ``model`` is ``None`` (as the CLI does).
    """

    model: str | None = None
    mode: str | None = None
    default_mode: str | None = None
    backend: str = "torch"
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None
    cuda_graph: bool = True

    def load(self) -> Any:
        from rwkv_music.compose.composer import Composer

        mode = self.mode if self.mode is not None or self.model is not None else self.default_mode
        return Composer.load(self.model, mode=mode, backend=self.backend, device=self.device, dtype=self.dtype,
                             threads=self.threads, cuda_graph=self.cuda_graph)

    def label(self) -> str:
        return self.model if self.model is not None else f"the default {self.mode or self.default_mode or 'midi'} model"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to render.

    ``address``: ``None`` (an already initialised Ray, else a new local runtime), ``"auto"`` (the
    cluster this machine belongs to) or ``"ray://host:port"`` / ``"host:port"``.
    ``block_size``: samples per block (``None``: twice the render's ``batch_size``).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    write_on_workers: bool = False
    block_size: int | None = None
    blocks_per_worker: int = 2  # queued at each worker, so it never waits on the driver between blocks

    def __post_init__(self) -> None:
        for name in ("workers", "blocks_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise OptionError(f"{name} must be an integer 1-4096, got {value!r}")
        if self.block_size is not None and (
            isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise OptionError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1024:
                raise OptionError(f"{name} must be a number 0-1024, got {value!r}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendUnavailable("distributed rendering needs Ray: pip install 'rwkv-music[ray]'") from None
    return ray


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RenderWorker:
    """A Ray actor's body: one loaded model, blocks of samples in, finished files (or rows) out."""

    def __init__(self, spec: ModelSpec, index: int, cwd: str) -> None:
        self.index = index
        if os.path.isdir(cwd):  # relative input paths mean what they mean on the driver
            os.chdir(cwd)
        self.composer: Any = None
        self.error = ""
        try:
            self.composer = spec.load()
        except Exception as exc:  # reported by describe(): the driver names this worker and the model
            self.error = _one_line(exc)

    def describe(self) -> dict[str, Any]:
        import ray

        info: dict[str, Any] = {"error": self.error, "pid": os.getpid(), "node": ray.util.get_node_ip_address()}
        if self.composer is not None:
            info.update(format=self.composer.format.name, model=self.composer.model_info())
        return info

    def render_block(
        self, samples: list[Sample], settings: RenderSettings, out: str | None
    ) -> Iterator[dict[str, Any]]:
        """Render ``samples``, yielding each finished one (a Ray streaming call): ``{"id", "row", "data"}``,
        then ``{"failed": ...}``.  ``out`` set: write the files there (a shared folder), ``data`` is None."""
        if out is not None and not (Path(out) / SETTINGS).is_file():
            raise RwkvMusicError(f"ray worker {self.index}: {out} is not a render folder on this machine; "
                                 "--write-on-workers needs the output folder on a filesystem every worker shares")
        failed: Failed = {}
        for sample, piece in generate_pieces(self.composer, samples, settings, failed):
            data = None
            if out is None:
                data = sample_bytes(sample, piece)
            else:
                save_sample(Path(out), sample, piece)
            yield {"id": sample.id, "row": sample_row(sample, piece), "data": data}
        yield {"failed": failed}


class RayRenderer:
    """Render on Ray workers: ``with RayRenderer(ModelSpec("m.pth"), RayOptions(workers=4)) as r: r.render(...)``.

    :meth:`start` (or entering the ``with``) starts the workers, each loading the model once;
    :meth:`render` may then run several renders; :meth:`close` stops the workers (and a Ray runtime
    this renderer started).
    """

    def __init__(self, spec: ModelSpec, options: RayOptions | None = None) -> None:
        self.spec = spec
        self.options = options or RayOptions()
        self.workers: list[Any] = []  # actor handles, by worker index
        self.nodes: list[str] = []
        self._format: Format | None = None
        self._model: dict[str, Any] = {}
        self._started_ray = False
        self.requeued = 0  # blocks whose worker died, their unfinished samples handed out again

    def __enter__(self) -> "RayRenderer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the cluster ------------------------------------------------------------------------------
    def start(self) -> None:
        """Join (or start) Ray and start the workers; each loads the model, and any failure is one line."""
        if self.workers:
            return
        ray = _import_ray()
        try:
            self._connect(ray)
            self._check_resources(ray)
            self._start_workers(ray)
        except BaseException:
            self.close()
            raise

    def _connect(self, ray: Any) -> None:
        address = self.options.address
        if address not in (None, "", "local", "auto"):
            _check_reachable(address)
        if ray.is_initialized():  # a runtime this process already joined (a notebook, a test)
            return
        try:
            if address in (None, "", "local"):
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                         _system_config=LOCAL_SYSTEM_CONFIG)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = "a local Ray runtime" if address in (None, "", "local") else f"the Ray cluster at {address}"
            raise RwkvMusicError(f"cannot start or join {where}: {_one_line(exc)}") from None
        self._started_ray = True

    def _check_resources(self, ray: Any) -> None:
        o = self.options
        have = ray.cluster_resources()
        for name, per in (("CPU", o.cpus_per_worker), ("GPU", o.gpus_per_worker)):
            need = per * o.workers
            if need > have.get(name, 0) + 1e-9:
                raise RwkvMusicError(
                    f"{o.workers} workers x {per:g} {name} need {need:g} {name}s; the Ray cluster has "
                    f"{have.get(name, 0):g} (lower --workers or --{name.lower()}s-per-worker)"
                )

    def _start_workers(self, ray: Any) -> None:
        o = self.options
        threads = self.spec.threads if self.spec.threads is not None else max(1, int(o.cpus_per_worker))
        spec = ModelSpec(**{**self.spec.__dict__, "model": _absolute(self.spec.model), "threads": threads})
        actor = ray.remote(num_cpus=o.cpus_per_worker, num_gpus=o.gpus_per_worker, max_restarts=0)(RenderWorker)
        self.workers = [actor.remote(spec, i, os.getcwd()) for i in range(o.workers)]
        try:
            infos = ray.get([w.describe.remote() for w in self.workers], timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise RwkvMusicError(f"the Ray workers did not start within {START_TIMEOUT:g} s "
                                 "(not enough free CPUs/GPUs on the cluster?)") from None
        except ray.exceptions.RayError as exc:
            raise RwkvMusicError(f"a Ray worker failed to start: {_one_line(exc)}") from None
        self.nodes = [str(i["node"]) for i in infos]
        for i, info in enumerate(infos):
            if info["error"]:
                raise RwkvMusicError(f"ray worker {i} (node {info['node']}, pid {info['pid']}) cannot load "
                                     f"{self.spec.label()}: {info['error']}")
        first = infos[0]
        identity = {k: first["model"][k] for k in ("version", "n_layer", "n_embd", "vocab_size")}
        for i, info in enumerate(infos[1:], 1):
            theirs = {k: info["model"][k] for k in identity}
            if theirs != identity:
                raise RwkvMusicError(f"ray worker {i} (node {info['node']}) loaded another model than worker 0: "
                                     f"{theirs} vs {identity}")
        self._format = format_for(first["format"])
        self._model = first["model"]

    def close(self) -> None:
        """Stop the workers (and the Ray runtime, if this renderer started it)."""
        if not self.workers and not self._started_ray:
            return
        ray = _import_ray()
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:  # already gone
                pass
        self.workers = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # -- the engine (rwkv_music.compose.render.RenderEngine) ---------------------------------------
    @property
    def format(self) -> Format:
        self.start()
        assert self._format is not None
        return self._format

    def model_info(self) -> dict[str, Any]:
        self.start()
        return dict(self._model)

    def render(
        self, source: str | os.PathLike, out: str | os.PathLike, settings: RenderSettings, progress: ProgressFn = None
    ) -> RenderReport:
        """:func:`~rwkv_music.compose.render.render` on the workers (same arguments, same folder)."""
        self.start()
        return render_with(self, source, out, settings, progress)

    def run(
        self, todo: list[Sample], output: RenderOutput, settings: RenderSettings, progress: ProgressFn, failed: Failed
    ) -> int:
        """Hand out blocks, re-queue the unfinished samples of workers that die, write pieces as they come back."""
        try:
            return self._run(todo, output, settings, progress, failed)
        except BaseException:
            self.close()  # no worker goes on rendering (or, --write-on-workers, writing) for a stopped driver
            raise

    def _run(
        self, todo: list[Sample], output: RenderOutput, settings: RenderSettings, progress: ProgressFn, failed: Failed
    ) -> int:
        ray = _import_ray()
        o = self.options
        size = o.block_size or 2 * settings.batch_size
        queue = deque(todo[i:i + size] for i in range(0, len(todo), size))
        shared = None
        if o.write_on_workers and todo:
            output.begin()  # render.json first: workers check they see the folder
            shared = str(output.out.resolve())
        alive = set(range(len(self.workers)))
        load = dict.fromkeys(alive, 0)
        # a streaming call per block: each piece comes back (and is written) as soon as it is finished
        inflight: dict[Any, tuple[int, list[Sample], set[str]]] = {}
        written, lost = 0, ""
        while queue or inflight:
            for w in sorted(alive):  # fill every live worker up to blocks_per_worker
                while queue and load[w] < o.blocks_per_worker:
                    block = queue.popleft()
                    call = self.workers[w].render_block.options(num_returns="streaming")
                    inflight[call.remote(block, settings, shared)] = (w, block, set())
                    load[w] += 1
            if not inflight:
                raise RwkvMusicError(f"every Ray worker is gone (last: {lost}); {written} samples were written "
                                     "this run and the manifest is intact: rerun with --resume")
            ready, _ = ray.wait(list(inflight), num_returns=1)
            stream = ready[0]
            w, block, done = inflight[stream]
            try:
                item = ray.get(next(stream))
            except StopIteration:
                del inflight[stream]
                load[w] -= 1
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as exc:
                del inflight[stream]
                load[w] -= 1
                if w in alive:
                    lost = f"worker {w} on {self.nodes[w]}: {_one_line(exc)}"
                    log.warning("ray %s; its unfinished samples go back to the queue", lost)
                alive.discard(w)
                rest = [s for s in block if s.id not in done]  # what was written stays written, once
                if rest:
                    queue.appendleft(rest)
                    self.requeued += 1
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, RwkvMusicError):
                    raise cause from None
                raise RwkvMusicError(f"ray worker {w} on {self.nodes[w]}: {_one_line(cause or exc)}") from None
            if "failed" in item:
                failed.update(item["failed"])
                continue
            sample, row = next(s for s in block if s.id == item["id"]), item["row"]
            if item["data"] is not None:
                output.sample_bytes(sample, item["data"], row)
            else:
                if not (output.out / sample.output).is_file():
                    raise RwkvMusicError(f"ray worker {w} on {self.nodes[w]} wrote {sample.output}, but it is "
                                         f"not in {output.out} here; --write-on-workers needs a shared filesystem")
                output.record(row)
            done.add(sample.id)
            written += 1
            if progress is not None:
                progress(1, len(todo), int(row.get("tokens") or 0))
        return written


def _absolute(model: str | None) -> str | None:
    """A model path the workers can open whatever their working folder (a shipped model's name stays a name)."""
    if model is not None and Path(model).exists():
        return str(Path(model).resolve())
    return model


def _check_reachable(address: str) -> None:
    """A one-line error now instead of Ray's retries against an address where nothing listens."""
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RwkvMusicError(f"--ray {address}: expected 'auto', 'ray://HOST:PORT' or HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise RwkvMusicError(f"--ray {address}: cannot reach the Ray cluster ({exc.strerror or exc})") from None


__all__ = ["ModelSpec", "RayOptions", "RayRenderer", "RenderWorker"]
