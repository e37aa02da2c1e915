"""Finishing a render's pieces in worker processes, beside the decoder: each piece's file written and
its validity checked for the manifest.

Checking an ABC tune (music21 reads it, then the strict bar rule) takes 15-75 ms of CPU, about what
composing it takes: a quarter of an ABC render on a 2-core CPU.  A MIDI piece costs less (writing and
checking a 64-token piece about 3 ms, a third of it the file's fsync; a 1,300-token piece 15 ms) but a
GPU decodes hundreds of pieces a second, and one process writing and checking them all would cap the
render at a few hundred pieces a second.
:class:`PiecePool` hands each finished piece (its text, and where its file goes) to long-lived worker
processes, one JSON line in and one out (the validity) per piece, and gives back futures, so that
work runs on other cores while the model decodes.  Workers and this process run the same function
(:func:`finish`), so a render's files and manifest do not depend on where a piece was finished.

The workers are plain subprocesses, not :mod:`multiprocessing`: no ``fork`` of a process that holds
torch's threads, and no re-import of the caller's ``__main__`` (which a ``spawn`` start does, and
which would start the render again in every worker of a script without a main guard).

Nothing is lost: if a worker cannot start, dies or answers something else than an answer, the pool
stops using workers (one warning in the log) and :meth:`PiecePool.result` finishes that piece, and
every later one, in this process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable

log = logging.getLogger(__name__)

# The worker imports this very rwkv_music: its folder goes first on the worker's path when that
# Python would not find it by itself (a checkout the caller put on sys.path), and only then, so an
# installed package's site-packages never moves ahead of the standard library.
_BOOT = ("import sys; root = sys.argv[1]; sys.path[:0] = [] if root in sys.path else [root]; "
         "from rwkv_music.compose.piece_workers import worker_main; sys.exit(worker_main())")
_ROOT = str(Path(__file__).resolve().parents[2])


def worker_command() -> list[str]:
    """The command line of one worker process."""
    return [sys.executable, "-c", _BOOT, _ROOT]


_formats: dict[str, Any] = {}  # the formats finish() has made, by mode (one tokenizer each per process)


def finish(request: dict[str, Any]) -> dict[str, Any]:
    """Finish one piece: write its file where ``request["save"]`` says (``{"path", "title"}``; none: no file),
    then return its validity.  ``request``: ``{"mode", "text", "save"}``, with the format's default
    tokenizer (a render sends only pieces whose format says :attr:`~Format.checks_in_workers`)."""
    from rwkv_music.compose.piece import Piece
    from rwkv_music.formats.base import format_for

    fmt = _formats.get(request["mode"])
    if fmt is None:
        fmt = _formats[request["mode"]] = format_for(request["mode"])
    save = request.get("save")
    # a piece as render's own writer sees it: one to a file (X:1), its title given
    piece = Piece(fmt.name, [], request["text"], {"title": save["title"]} if save else {}, 0, fmt.tokenizer)
    if save:
        piece.save(save["path"], force=True)  # force: as render's writer (a file without a row is a killed run's)
    return piece.validity  # (a MIDI piece's file decoded once for both)


def serve(requests: Iterable[bytes], answers: BinaryIO) -> int:
    """Answer every request line of ``requests`` on ``answers`` (``{"validity": ...}`` or ``{"error": ...}``);
    return how many were answered."""
    served = 0
    for line in requests:
        try:
            answer = {"validity": finish(json.loads(line))}
        except Exception as exc:  # the render finishes that piece itself instead (and sees the error there)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer).encode("utf-8") + b"\n")
        answers.flush()
        served += 1
    return served


def worker_main() -> int:
    """A worker's main loop: requests on standard input, answers on standard output, until the input ends
    (so a worker never outlives the render that started it)."""
    # the answers get a private copy of standard output; anything a library prints goes to standard
    # error instead, where it cannot break a line of the protocol
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
    return 0


class WorkerFailed(Exception):
    """A worker could not answer (it did not start, died, failed, or wrote something else than an answer)."""


class _Worker:
    """One worker process and its two pipes; used by one pool thread at a time."""

    def __init__(self, command: list[str]) -> None:
        self.errors: IO[bytes] = tempfile.TemporaryFile(prefix="rwkv-music-check-")  # its standard error
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            stdin.flush()
            line = stdout.readline()
        except (OSError, ValueError) as exc:  # a broken pipe, or pipes closed by close()
            raise WorkerFailed(f"{type(exc).__name__}: {exc}") from None
        if not line:
            raise WorkerFailed(f"the worker ended (exit code {self.process.wait()}){self._last_error()}")
        try:
            answer = json.loads(line)
        except ValueError:
            raise WorkerFailed(f"the worker wrote {line[:80]!r} instead of an answer") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("validity"), dict):
            raise WorkerFailed(f"the worker answered {str(answer)[:160]!r}")  # an "error" too: see it here
        return answer["validity"]

    def _last_error(self) -> str:
        try:
            self.errors.seek(0, os.SEEK_END)
            self.errors.seek(max(0, self.errors.tell() - 2000))
            lines = [x for x in self.errors.read().decode("utf-8", "replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def close(self) -> None:
        # input first: the worker ends after the check it is on (a reader waiting on it then gets its
        # answer or the end of the pipe); one that does not end in time is killed
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            if self.process.stdout is not None:
                self.process.stdout.close()
        except OSError:
            pass
        self.errors.close()


class PiecePool:
    """``workers`` processes that run :func:`finish` on requests.

    ``submit(request)`` returns a future; ``result(future, request)`` its validity dict, with the piece
    finished in this process where no worker could.  Use it as a context manager (or call
    :meth:`close`): the workers end with it.  ``command`` is the worker command line (tests give a
    broken one to drive the fallback).
    """

    def __init__(self, workers: int, command: list[str] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a piece pool needs at least one worker, got {workers}")
        self.command = command or worker_command()
        self.broken: str | None = None  # why the workers are no longer used
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="rwkv-music-piece")
        self._local = threading.local()  # each pool thread's own worker
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, request: dict[str, Any]) -> Future:
        if self.broken is not None or self._closed:
            done: Future = Future()
            done.set_exception(WorkerFailed(self.broken or "the pool is closed"))
            return done
        return self._executor.submit(self._ask, request)

    def result(self, future: Future, request: dict[str, Any]) -> dict[str, Any]:
        """The validity of ``request``'s piece (``future`` from :meth:`submit`), its file written: by a
        worker, or else here and now."""
        try:
            return future.result()
        except WorkerFailed:  # (_ask has recorded why in `broken`)
            return finish(request)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.broken is not None:
            raise WorkerFailed(self.broken)
        worker = getattr(self._local, "worker", None)
        try:
            if worker is None:
                with self._lock:
                    if self._closed:
                        raise WorkerFailed("the pool is closed")
                    worker = _Worker(self.command)
                    self._workers.append(worker)
                self._local.worker = worker
            return worker.ask(request)
        except (WorkerFailed, OSError) as exc:
            why = str(exc)
            with self._lock:
                if self.broken is None and not self._closed:
                    self.broken = why
                    log.warning("piece workers stopped (%s); finishing pieces in this process instead", why)
            raise WorkerFailed(why) from None

    def close(self) -> None:
        """End the workers (pieces not yet handed to one are cancelled)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        for worker in list(self._workers):  # a thread still waiting on one gets a closed pipe
            worker.close()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "PiecePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_AUTO_WORKERS = 8  # each holds about 75 MB once music21 and the MIDI tokenizer are loaded


def auto_workers(pieces: int, decoder_threads: int | None, cores: int | None = None, min_pieces: int = 16) -> int:
    """Piece workers for a render of ``pieces`` pieces whose decoder keeps ``decoder_threads`` CPU
    threads busy (``None``: unknown, taken as every core): the cores it leaves, at most
    :data:`MAX_AUTO_WORKERS`.  None for a few pieces (starting a worker and importing music21 in it
    costs about what checking a dozen tunes does), and none where the decoder uses every core: a
    worker on a core the decoder's threads wait for at every step slowed a 2-core render down."""
    if cores is None:
        cores = _cores()
    if pieces < min_pieces or decoder_threads is None:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, cores - decoder_threads))


def lend_decoder_threads(backend: Any, slow_checks: bool, pieces: int, cores: int | None = None,
                         min_pieces: int = 16) -> int | None:
    """Halve a CPU decoder's threads for a render whose checks cost about what composing does
    (:attr:`~rwkv_music.formats.base.Format.slow_checks`), so that :func:`auto_workers` gives the freed
    cores to piece workers; returns the thread count to put back when the render ends (None: nothing
    changed).  Nothing changes where no worker would get a core (fewer than ``min_pieces`` pieces, one
    thread, no core left after all) or where the backend keeps its count (no ``set_host_threads``, a
    GPU, or threads the caller chose when loading).

    A small model's batched step gains little from its second thread, while checking a tune waits for
    the decoder: on a 2-core CPU, 320 shipped-model ABC tunes at batch 32 rendered at 2,734-2,869 tok/s
    with one decoder thread and one worker against 2,033-2,060 with two threads checking in turn
    (the CLI's render), and through the Python API at 128 tunes 4,523 / 3,697 against 3,357 / 3,135
    (2026-12-08, the same files)."""
    lend = getattr(backend, "set_host_threads", None)
    threads = getattr(backend, "host_threads", None)
    if not slow_checks or lend is None or threads is None or threads < 2:
        return None
    if auto_workers(pieces, threads // 2, cores, min_pieces) == 0:
        return None
    return threads if lend(threads // 2) else None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DecoderWatch:
    """Times a render's piece iterator: the wall and CPU seconds spent in the decoder (inside ``next``) and
    outside it (writing and checking the pieces in this process), to see whether the decoder leaves a core idle.

    A runtime may keep fewer threads busy than it owns: torch runs a one-row decode step of a small
    model on one thread (measured with the shipped models on a 2-core CPU: 1.0 CPU-second per second
    at batch 1, 2.0 from batch 2 on, where the ABC render at batch 1 then spent about a tenth of its
    time checking tunes on the decoder's thread).  :meth:`workers` turns that into a number of piece
    workers.  Only which process finishes a piece depends on it, never what the piece is."""

    PROBE_PIECES = 8  # pieces finished here before deciding (the first include the decoder's warm-up)
    # below this share of the time spent finishing pieces, a worker saves less than it costs (a shipped-MIDI
    # render at batch 1 finished its 64-token pieces in 2 % of its time; an ABC one checked tunes in 8 %)
    MIN_FINISH_SHARE = 0.05

    def __init__(self, pieces: Iterable[Any]) -> None:
        self._it = iter(pieces)
        self.decode_wall = self.decode_cpu = self.finish_wall = 0.0
        self.count = 0
        self._left_at: float | None = None  # when the last piece was handed out (its finishing starts)

    def __iter__(self) -> "DecoderWatch":
        return self

    def __next__(self) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        if self._left_at is not None:
            self.finish_wall += wall - self._left_at
        try:
            item = next(self._it)
        finally:
            self._left_at = time.perf_counter()
            self.decode_wall += self._left_at - wall
            self.decode_cpu += time.process_time() - cpu
        self.count += 1
        return item

    def _finished_so_far(self) -> float:
        """:attr:`finish_wall` with the piece being finished now (the last one handed out)."""
        return self.finish_wall + (time.perf_counter() - self._left_at if self._left_at is not None else 0.0)

    @property
    def finish_share(self) -> float:
        """The share of the time spent finishing pieces here, so far (the last piece handed out included)."""
        finish = self._finished_so_far()
        total = self.decode_wall + finish
        return finish / total if total > 0 else 0.0

    def workers(self, pieces_left: int, cores: int | None = None, min_pieces: int = 16) -> int:
        """Piece workers for the ``pieces_left`` pieces still to come: one per core the decoder left idle
        (its CPU seconds per second short of the cores by at least 3/4), no more than finishing the
        pieces has kept busy so far (one at least); none before :data:`PROBE_PIECES` pieces, for fewer
        than ``min_pieces`` left (:func:`auto_workers`), or where finishing took less than
        :data:`MIN_FINISH_SHARE` of the time."""
        if self.count < self.PROBE_PIECES or pieces_left < min_pieces or self.decode_wall <= 0:
            return 0
        if self.finish_share < self.MIN_FINISH_SHARE:
            return 0
        cores = _cores() if cores is None else cores
        idle = int(cores - self.decode_cpu / self.decode_wall + 0.25)
        needed = max(1, math.ceil(self._finished_so_far() / self.decode_wall))  # finishing's time per decoding's
        return max(0, min(MAX_AUTO_WORKERS, idle, needed))


__all__ = ["DecoderWatch", "PiecePool", "WorkerFailed", "auto_workers", "finish", "lend_decoder_threads",
           "worker_command"]
