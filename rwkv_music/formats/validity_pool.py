"""Validity checks in worker processes, beside the decoder.

Checking an ABC tune for a render's manifest (music21 reads it, then the strict bar rule) takes
100-200 ms of CPU, several times what composing it takes, so a render that checked each piece in
its own process would run at the checker's speed, not the model's: on a 2-core CPU three quarters
of an ABC render was the check, and a GPU decodes hundreds of tunes a second.  :class:`ValidityPool`
hands the texts to long-lived worker processes (:mod:`rwkv_music.formats.validity_worker`, one
JSON line in and one out per text) and gives back futures, so the checks run on other cores while
the model decodes.

The workers are plain subprocesses, not :mod:`multiprocessing`: no ``fork`` of a process that holds
torch's threads, and no re-import of the caller's ``__main__`` (which a ``spawn`` start does, and
which would start the render again in every worker of a script without a main guard).

A check is never lost: if a worker cannot start, dies or answers something else than an answer,
the pool stops using workers (one warning in the log) and :meth:`ValidityPool.result` checks that
text, and every later one, in this process with the same function the workers run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Callable

log = logging.getLogger(__name__)

# The worker imports this very rwkv_music: its folder goes first on the worker's path when that
# Python would not find it by itself (a checkout the caller put on sys.path), and only then, so an
# installed package's site-packages never moves ahead of the standard library.
_BOOT = ("import sys; root = sys.argv[1]; sys.path[:0] = [] if root in sys.path else [root]; "
         "from rwkv_music.formats.validity_worker import main; sys.exit(main())")
_ROOT = str(Path(__file__).resolve().parents[2])


def worker_command() -> list[str]:
    """The command line of one worker process."""
    return [sys.executable, "-c", _BOOT, _ROOT]


class WorkerFailed(Exception):
    """A worker could not answer (it did not start, died, or wrote something else than an answer)."""


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
            raise WorkerFailed(f"the worker answered {str(answer)[:160]!r}")
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


class ValidityPool:
    """``workers`` processes that compute ``format_for(mode).validity(text)``.

    ``submit(text)`` returns a future; ``result(future, text)`` its validity dict, checked in this
    process when no worker could.  Use it as a context manager (or call :meth:`close`): the workers
    end with it.

    ``check`` is the in-process check (the same function the workers run); ``command`` the worker
    command line (tests give a broken one to drive the fallback).
    """

    def __init__(
        self,
        mode: str,
        workers: int,
        check: Callable[[str], dict[str, Any]],
        command: list[str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a validity pool needs at least one worker, got {workers}")
        self.mode = mode
        self.check = check
        self.command = command or worker_command()
        self.broken: str | None = None  # why the workers are no longer used
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="rwkv-music-check")
        self._local = threading.local()  # each pool thread's own worker
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, text: str) -> Future:
        if self.broken is not None or self._closed:
            done: Future = Future()
            done.set_exception(WorkerFailed(self.broken or "the pool is closed"))
            return done
        return self._executor.submit(self._ask, text)

    def result(self, future: Future, text: str) -> dict[str, Any]:
        """The validity of ``text`` (``future`` from :meth:`submit`), from a worker or from this process."""
        try:
            return future.result()
        except WorkerFailed as exc:
            if self.broken is None:
                self.broken = str(exc)
            return self.check(text)

    def _ask(self, text: str) -> dict[str, Any]:
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
            return worker.ask({"mode": self.mode, "text": text})
        except (WorkerFailed, OSError) as exc:
            why = str(exc)
            with self._lock:
                if self.broken is None and not self._closed:
                    self.broken = why
                    log.warning("validity workers stopped (%s); checking in this process instead", why)
            raise WorkerFailed(why) from None

    def close(self) -> None:
        """End the workers (pending checks that have not started are cancelled)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        for worker in list(self._workers):  # a thread still waiting on one gets a closed pipe
            worker.close()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "ValidityPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auto_workers(pieces: int, decoder_threads: int | None, cores: int | None = None, min_pieces: int = 16) -> int:
    """Check workers for a render of ``pieces`` pieces whose decoder keeps ``decoder_threads`` CPU
    threads busy (``None``: unknown, taken as every core): the cores it leaves, at most
    :data:`MAX_AUTO_WORKERS`.  None for a few pieces (starting a worker and importing music21 in it
    costs about what checking a dozen tunes does), and none where the decoder uses every core: a
    worker on a core the decoder's threads wait for at every step slowed a 2-core render down."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if pieces < min_pieces or decoder_threads is None:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, cores - decoder_threads))


MAX_AUTO_WORKERS = 8


__all__ = ["ValidityPool", "WorkerFailed", "auto_workers"]
