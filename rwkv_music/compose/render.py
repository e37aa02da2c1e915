"""Batch dataset rendering: many prompts × K samples → files, ``manifest.jsonl`` and ``stats.json``.

Input is a prompts file (one prompt per line, or JSON lines with per-row parameters) or a folder
of .abc/.mid files to continue.  Sample ``j`` (= row × K + k) always gets the seed
``piece_seed(base_seed, j)``, so a rerun reproduces it whatever the batching.

Batching is continuous by default (:mod:`rwkv_music.sampling.continuous`): ``batch_size`` rows
stay in flight, a finished piece is written at once and its row takes the next sample, and
samples with different row parameters share the batch.  Files and manifest rows therefore appear
in completion order; the manifest is keyed by sample id, so resuming does not care.
``RenderSettings(continuous=False)`` keeps the older fixed batches of consecutive samples.
Where cores are free (``check_workers``), worker processes write the files and check the pieces
while the model decodes (:mod:`rwkv_music.compose.piece_workers`); the files and rows are the same.
By default a render that finds no free core watches its decoder over its first pieces and hands the
rest to workers if the decoder leaves a core idle after all (:class:`~rwkv_music.compose.piece_workers.DecoderWatch`).

Crash safety (``resume=True``): each sample file is written atomically (temporary file, fsync,
rename) and its manifest row is appended, in one ``write``, only after the file is in place.  A
killed run therefore leaves, at worst, a sample file without a row (regenerated, identically, on
resume), a truncated last manifest line (dropped on resume) and a stray temporary file (deleted on
resume); never a row pointing at a half-written file.  The manifest is fsynced at most every
``MANIFEST_SYNC_S`` seconds and when the render ends or stops, not after every row (0.4-0.7 ms a
row on our CPU machines: at 1,000-2,000 pieces a second, a GPU render's rate, the writer would
do little else); a power loss can then also cost the last second's rows, whose files are rendered
again, identically, on resume.

One writer per output folder: a render holds an exclusive ``flock`` on the output folder itself
(not on a lock file, which would be left behind and could be unlinked under a waiting writer), so a
second render into the same ``out`` fails at once with :class:`~rwkv_music.errors.OutputLockedError`;
the kernel drops the lock when the process ends, however it ends.  The render never writes through
a symbolic link (``manifest.jsonl``, ``render.json``, ``stats.json``, ``failed.txt``), never reads its
own output folder as input, writes ``render.json`` only when its first sample is about to be
written (a run that fails earlier leaves nothing, and removes an ``out`` it created), and lists
inputs it cannot read (a damaged file, a link out of the prompts folder) in ``failed.txt`` with
the reason, rendering the others.

Where the samples are generated is an engine (:class:`RenderEngine`): this process
(:class:`LocalEngine`, what :func:`render` uses) or Ray workers (:mod:`rwkv_music.compose.ray_render`).
Both run :func:`generate_pieces` and hand the pieces to the same writer and manifest code here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from rwkv_music.compose.options import AbcOptions, MidiOptions, SamplingOptions, piece_seed
from rwkv_music.errors import OptionError, OutputExistsError, OutputLockedError, RwkvMusicError
from rwkv_music.formats.base import Format, format_for
from rwkv_music.io_utils import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_path,
    read_jsonl,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
STATS = "stats.json"
SETTINGS = "render.json"
FAILED = "failed.txt"
MAX_SAMPLES = 1_000_000  # inputs x samples_per_prompt: a plan is a list of that many records (~0.3 KB each)
MAX_BATCH = 4096  # rows in flight: each holds a recurrent state and a logits row
MAX_CHECK_WORKERS = 64
PIECES_IN_FLIGHT = 256  # pieces handed to the workers whose manifest row waits, at most
MANIFEST_SYNC_S = 1.0  # seconds between the manifest's fsyncs, at most (see the module docstring)
MIDI_OPTION_KEYS = ("seconds", "max_tokens", "instruments", "constrained")  # per-row keys of a .jsonl file
ABC_OPTION_KEYS = ("key", "meter", "unit", "tempo", "controls", "constrained", "max_tokens",
                   "form", "parts", "bars_per_part", "cadence", "max_bar_repeats", "vary_rhythm")
ROW_OPTION_KEYS = {"midi": MIDI_OPTION_KEYS, "abc": ABC_OPTION_KEYS}
SAMPLING_KEYS = (
    "preset",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "penalty_decay",
)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
ProgressFn = Callable[[int, int, int], None] | None  # progress(done_now, todo, tokens)
Failed = dict[int, tuple[str, str]]  # job index -> (input, why it could not be read)


@dataclass(frozen=True)
class RenderJob:
    """One input row: a prompt (text or ``None``) or a file to continue, plus row parameters."""

    index: int
    prompt: str | None = None
    file: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    name: str = ""
    error: str = ""  # why this input cannot be read (listed in failed.txt, not rendered), or ""

    def input_label(self) -> str | None:
        return self.file if self.file is not None else self.prompt


@dataclass(frozen=True)
class RenderSettings:
    """How to render: samples per row, batching, seeds, defaults for every row."""

    samples_per_prompt: int = 1
    batch_size: int = 8
    seed: int = 0  # base seed; sample j uses piece_seed(seed, j)
    options: tuple[tuple[str, Any], ...] = ()  # compose options for every row (rows may override)
    sampling: tuple[tuple[str, Any], ...] = ()  # preset name and sampling overrides
    resume: bool = False
    force: bool = False
    max_samples: int | None = None  # stop after this many new samples (chunked runs)
    continuous: bool = True  # refill a row as soon as its piece ends (False: fixed batches)
    # processes that write and check the pieces beside the decoder (compose/piece_workers.py); 0: this
    # process does it, None: piece_workers.auto_workers picks
    check_workers: int | None = None

    def __post_init__(self) -> None:
        limits = {"samples_per_prompt": MAX_SAMPLES, "batch_size": MAX_BATCH}
        for name, limit in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise OptionError(f"{name} must be an integer 1-{limit}, got {value!r}")
        if self.max_samples is not None and (
            isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 0
        ):
            raise OptionError(f"max_samples must be an integer >= 0, got {self.max_samples!r}")
        if self.check_workers is not None and (
            isinstance(self.check_workers, bool)
            or not isinstance(self.check_workers, int)
            or not 0 <= self.check_workers <= MAX_CHECK_WORKERS
        ):
            raise OptionError(f"check_workers must be an integer 0-{MAX_CHECK_WORKERS}, got {self.check_workers!r}")
        for name in ("options", "sampling"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, tuple(sorted(value.items())))

    def identity(self) -> dict[str, Any]:
        """The settings that decide what each sample is (must match when resuming)."""
        return {
            "samples_per_prompt": self.samples_per_prompt,
            "seed": self.seed,
            "options": dict(self.options),
            "sampling": dict(self.sampling),
        }


@dataclass
class RenderReport:
    """What a render call did."""

    out: Path
    total: int  # samples the input asks for
    done_before: int  # already in the manifest when the run started
    written: int  # new samples this run
    stats: dict[str, Any] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, why) of inputs that could not be read

    @property
    def complete(self) -> bool:
        return self.done_before + self.written >= self.total


# -- input ---------------------------------------------------------------------------------------
MAX_PROMPTS_BYTES = 64 << 20  # a prompts file is read whole


def read_jobs(
    source: str | os.PathLike, mode: str | Format, exclude: str | os.PathLike | None = None
) -> list[RenderJob]:
    """Rows of a prompts file (text or .jsonl) or a folder of files of ``mode`` (a format or its name).

    ``exclude``: a folder whose files are never inputs (the render's own output folder, when it
    sits inside the input folder).  A file that cannot be an input (a link out of the folder, a
    missing file named by a .jsonl row) becomes a job with ``error`` set, listed and skipped.
    """
    fmt = format_for(mode) if isinstance(mode, str) else mode
    source = Path(source)
    if source.is_dir():
        return _folder_jobs(source, fmt, Path(exclude) if exclude is not None else None)
    if not source.is_file():
        raise RwkvMusicError(f"{source}: no such prompts file or folder")
    size = source.stat().st_size
    if size > MAX_PROMPTS_BYTES:
        raise RwkvMusicError(f"{source}: {size} bytes, more than the {MAX_PROMPTS_BYTES} a prompts file may hold")
    try:
        text = source.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RwkvMusicError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
                             ) from None
    if source.suffix.lower() == ".jsonl":
        return _jsonl_jobs(source, text, fmt.name)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    prompts = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise RwkvMusicError(f"{source}: no prompts (one per line; '#' starts a comment)")
    return [RenderJob(i, prompt=p.replace("\\n", "\n")) for i, p in enumerate(prompts)]


def _folder_jobs(source: Path, fmt: Format, exclude: Path | None) -> list[RenderJob]:
    root = source.resolve()
    skip = exclude.resolve() if exclude is not None else None
    files = []
    for p in sorted(source.rglob("*")):
        if p.suffix.lower() not in fmt.input_suffixes:
            continue
        if skip is not None and (skip == p.parent.resolve() or skip in p.parent.resolve().parents):
            continue  # the render's own outputs
        if p.is_symlink() or p.is_file() or not p.exists():
            files.append(p)
    if not files:
        raise RwkvMusicError(f"{source}: no {fmt.input_suffixes[0]} files to continue with a {fmt.name.upper()} model")
    jobs = []
    for i, p in enumerate(files):
        error = ""
        target = p.resolve()
        if root != target.parent and root not in target.parents:
            error = f"a link out of the input folder (to {target})"
        elif not target.is_file():
            error = "a link to nothing" if p.is_symlink() else "not a regular file"
        jobs.append(RenderJob(i, file=str(p), name=_SAFE.sub("-", p.stem)[:40], error=error))
    return jobs


def _jsonl_jobs(source: Path, text: str, mode: str) -> list[RenderJob]:
    allowed = set(ROW_OPTION_KEYS[mode]) | set(SAMPLING_KEYS)
    jobs = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RwkvMusicError(f"{source}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise RwkvMusicError(f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}")
        prompt, file = row.pop("prompt", None), row.pop("file", None)
        for key, value in (("prompt", prompt), ("file", file), ("name", row.get("name"))):
            if value is not None and not isinstance(value, str):
                raise RwkvMusicError(f"{source}:{lineno}: {key!r} must be a string, got {type(value).__name__} "
                                     f"{json.dumps(value)[:40]}")
        name = _SAFE.sub("-", str(row.pop("name", "") or ""))[:40]
        unknown = sorted(set(row) - allowed)
        if unknown:
            known = ", ".join(["prompt", "file", "name", *sorted(allowed)])
            raise RwkvMusicError(f"{source}:{lineno}: unknown key(s) {', '.join(unknown)}; allowed: {known}")
        error = ""
        if file is not None:
            path = Path(file) if Path(file).is_absolute() else source.parent / file
            if not path.is_file():
                error = f"no such file (line {lineno})"
            file = str(path)
        jobs.append(RenderJob(len(jobs), prompt=prompt, file=file, params=tuple(sorted(row.items())), name=name,
                              error=error))
    if not jobs:
        raise RwkvMusicError(f"{source}: no rows")
    return jobs


# -- planning ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    job: RenderJob
    k: int
    number: int  # global sample index: job.index * K + k
    seed: int
    output: str  # path relative to the output folder

    @property
    def id(self) -> str:
        return Path(self.output).stem


def plan(jobs: list[RenderJob], settings: RenderSettings, suffix: str) -> list[Sample]:
    """Every sample the input asks for, in order, with its seed and output name."""
    K = settings.samples_per_prompt
    out = []
    for job in jobs:
        for k in range(K):
            number = job.index * K + k
            stem = f"{job.index:05d}_{job.name}_{k}" if job.name else f"{job.index:05d}_{k}"
            out.append(Sample(job, k, number, piece_seed(settings.seed, number), stem + suffix))
    return out


# -- the run -------------------------------------------------------------------------------------
class RenderEngine(Protocol):
    """What produces the samples of a render: this process (:class:`LocalEngine`) or workers elsewhere
    (:mod:`rwkv_music.compose.ray_render`).  :func:`render_with` does the rest (input, plan, output
    folder, manifest, stats) the same way for every engine."""

    @property
    def format(self) -> Format: ...

    def model_info(self) -> dict[str, Any]: ...

    def run(
        self, todo: list[Sample], output: RenderOutput, settings: RenderSettings, progress: ProgressFn, failed: Failed
    ) -> int: ...


class LocalEngine:
    """Render in this process with ``composer``: each finished piece is written at once."""

    def __init__(self, composer: Any) -> None:
        self.composer = composer

    @property
    def format(self) -> Format:
        return self.composer.format

    def model_info(self) -> dict[str, Any]:
        return self.composer.model_info()

    def run(
        self, todo: list[Sample], output: RenderOutput, settings: RenderSettings, progress: ProgressFn, failed: Failed
    ) -> int:
        from rwkv_music.compose.piece_workers import lend_decoder_threads

        backend = self.composer.backend
        lent = None
        if settings.check_workers is None and self.format.checks_in_workers:
            lent = lend_decoder_threads(backend, self.format.slow_checks, len(todo))
            if lent is not None:
                log.info("decoding on %d of %d threads, the other cores check the pieces", backend.host_threads, lent)
        try:
            return self._run(todo, output, settings, progress, failed)
        finally:
            if lent is not None:
                backend.set_host_threads(lent)

    def _run(
        self, todo: list[Sample], output: RenderOutput, settings: RenderSettings, progress: ProgressFn, failed: Failed
    ) -> int:
        from rwkv_music.compose.piece_workers import DecoderWatch, PiecePool, auto_workers

        workers = settings.check_workers
        watch: DecoderWatch | None = None
        pieces: Iterator[tuple[Sample, Any]] = iter(generate_pieces(self.composer, todo, settings, failed))
        if not self.format.checks_in_workers:
            workers = 0
        elif workers is None:
            workers = auto_workers(len(todo), getattr(self.composer.backend, "host_threads", None))
            if workers == 0:  # the decoder may still leave a core idle (a small model at batch 1): watch it
                pieces = watch = DecoderWatch(pieces)
        written = 0
        if workers == 0:
            for sample, piece in pieces:
                output.sample(sample, piece)
                written += 1
                if progress is not None:
                    progress(1, len(todo), int(piece.meta.get("new_tokens", 0)))
                if watch is not None and watch.count >= watch.PROBE_PIECES:
                    workers = watch.workers(len(todo) - written)
                    if workers:
                        log.info("the decoder leaves a core idle (%.2f CPU-s/s; finishing took %.0f%% of the time): "
                                 "%d piece worker(s) finish the rest", watch.decode_cpu / watch.decode_wall,
                                 100 * watch.finish_share, workers)
                        break
                    watch = None  # decided: this process finishes every piece
        if workers == 0:
            return written
        with PiecePool(workers) as pool:
            return written + _run_in_workers(pieces, pool, output, todo, progress)


def _run_in_workers(
    pieces: Iterable[tuple[Sample, Any]], pool: Any, output: RenderOutput, todo: list[Sample], progress: ProgressFn
) -> int:
    """Hand each piece to ``pool``'s workers, which write its file and check it; append its manifest row
    when they are done (the file is then in place).

    Rows keep the order of the pieces.  At most ``PIECES_IN_FLIGHT`` pieces wait: a decoder faster
    than the workers then waits for them instead of holding every finished piece in memory.  A run
    that stops early records the rows of the pieces already finished; the others are rendered again,
    identically, on resume (a file without a row is a killed run's, as after a kill)."""
    pending: collections.deque[tuple[Sample, Any, dict[str, Any], Any]] = collections.deque()
    written = 0

    def record_head() -> None:
        sample, piece, request, future = pending.popleft()
        piece.meta["validity"] = pool.result(future, request)
        output.record(sample_row(sample, piece))

    try:
        for sample, piece in pieces:
            output.begin()  # render.json before the first sample file
            # the path and title save_sample would use (the atomic write replaces a link of that name)
            save = {"path": str(output.out / sample.output), "title": _one_piece(piece).title}
            request = {"mode": piece.mode, "text": piece.text, "save": save}
            pending.append((sample, piece, request, pool.submit(request)))
            written += 1
            while pending and (pending[0][3].done() or len(pending) > PIECES_IN_FLIGHT):
                record_head()
            if progress is not None:
                progress(1, len(todo), int(piece.meta.get("new_tokens", 0)))
        while pending:
            record_head()
    finally:
        while pending and _answered(pending[0][3]):  # stopped early: keep what is finished
            record_head()
    return written


def _answered(future: Any) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def render(
    composer: Any,
    source: str | os.PathLike,
    out: str | os.PathLike,
    settings: RenderSettings,
    progress: ProgressFn = None,
) -> RenderReport:
    """Render ``source`` with ``composer`` into ``out`` (see the module docstring).

    ``progress(done_now, todo, tokens)`` is called once with ``done_now=0`` before the first
    sample, then after each written sample.
    """
    return render_with(LocalEngine(composer), source, out, settings, progress)


def render_with(
    engine: RenderEngine,
    source: str | os.PathLike,
    out: str | os.PathLike,
    settings: RenderSettings,
    progress: ProgressFn = None,
) -> RenderReport:
    """:func:`render` with the samples produced by ``engine``."""
    out = Path(out)
    fmt = engine.format
    jobs = read_jobs(source, fmt, exclude=out)
    total = len(jobs) * settings.samples_per_prompt
    if total > MAX_SAMPLES:
        raise OptionError(f"{len(jobs)} inputs x {settings.samples_per_prompt} samples is {total} samples, more "
                          f"than the {MAX_SAMPLES} one render may plan; split the input or lower samples_per_prompt")
    samples = plan(jobs, settings, fmt.suffix)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    output = RenderOutput(out, settings)
    try:
        with _locked(out):
            info = engine.model_info()
            model = {k: info[k] for k in ("version", "n_layer", "n_embd", "vocab_size")}  # not the path: files move
            identity = {"input": str(Path(source).resolve()), "model": model, **settings.identity()}
            done = _prepare_output(out, settings, identity, output)
            failed = {j.index: (str(j.input_label()), j.error) for j in jobs if j.error}
            todo = [s for s in samples if s.id not in done and not s.job.error]
            if settings.max_samples is not None:
                todo = todo[: settings.max_samples]
            if progress is not None:
                progress(0, len(todo), 0)
            try:
                written = engine.run(todo, output, settings, progress, failed)
            except BaseException:  # the rows written so far go to disk too (its own error is the one to see)
                with contextlib.suppress(OSError, RwkvMusicError):
                    output.sync()
                raise
            output.sync()
            _write_failed(out, list(failed.values()))
            rows, _ = read_jsonl(out / MANIFEST)
            expected = len([s for s in samples if s.job.index not in failed])
            stats = compute_stats(rows, total=expected)
            stats["failed_inputs"] = len(failed)
            output.check(out / STATS)
            atomic_write_json(out / STATS, stats, force=True)
    except BaseException:
        if created and not output.started:  # nothing was written: leave nothing behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return RenderReport(out, expected, len(done), written, stats, list(failed.values()))


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive, non-blocking ``flock`` on the output folder for the duration of the render."""
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(f"{out}: another render is writing into this folder; wait for it to finish "
                                    "or use another --out") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class RenderOutput:
    """The output folder's writers: no write through a symbolic link, ``render.json`` before the first sample."""

    def __init__(self, out: Path, settings: RenderSettings) -> None:
        self.out = out
        self.settings = settings
        self.identity: dict[str, Any] | None = None  # render.json to write before the first sample, if any
        self.started = False
        self._synced_at = time.monotonic()
        self._unsynced = False  # manifest rows written since its last fsync

    def check(self, path: Path) -> Path:
        if path.is_symlink():
            raise RwkvMusicError(f"{path}: is a symbolic link; a render writes only plain files inside its folder")
        return path

    def begin(self) -> None:
        """Write ``render.json`` (once, before the first sample file)."""
        if not self.started:
            self.started = True
            if self.identity is not None:
                atomic_write_json(self.check(self.out / SETTINGS), self.identity, force=True)

    def sample(self, sample: "Sample", piece: Any) -> None:
        """Write a finished piece's file, then its manifest row."""
        self.begin()
        save_sample(self.out, sample, piece)
        self.record(sample_row(sample, piece))

    def sample_bytes(self, sample: "Sample", data: bytes, row: dict[str, Any]) -> None:
        """Write a file made elsewhere (:func:`sample_bytes`), then its manifest row."""
        self.begin()
        # force=True as in save_sample: a file without a row is a killed run's (same seed, same bytes)
        atomic_write_bytes(self.out / sample.output, data, force=True)
        self.record(row)

    def record(self, row: dict[str, Any]) -> None:
        """Append one manifest row (its file is already in place); fsync the manifest if the last fsync
        was ``MANIFEST_SYNC_S`` ago or more."""
        now = time.monotonic()
        sync = now - self._synced_at >= MANIFEST_SYNC_S
        append_jsonl(self.check(self.out / MANIFEST), row, sync=sync)
        if sync:
            self._synced_at = now
        self._unsynced = not sync

    def sync(self) -> None:
        """fsync the manifest if rows were appended since its last fsync (the render's end, or its stop)."""
        if self._unsynced:
            fsync_path(self.check(self.out / MANIFEST))
            self._unsynced = False
            self._synced_at = time.monotonic()


def _write_failed(out: Path, failed: list[tuple[str, str]]) -> None:
    path = out / FAILED
    if path.is_symlink():
        raise RwkvMusicError(f"{path}: is a symbolic link; a render writes only plain files inside its folder")
    if failed:
        text = "".join(f"{_one_line(label)}\t{_one_line(why)}\n" for label, why in failed)
        atomic_write_text(path, text, force=True)
        log.warning("%d input(s) could not be read; listed in %s", len(failed), path)
    else:
        path.unlink(missing_ok=True)


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _prepare_output(out: Path, settings: RenderSettings, identity: dict[str, Any], output: RenderOutput) -> set[str]:
    """Check or reset the output folder; return the ids already done (resume)."""
    manifest, settings_file = out / MANIFEST, out / SETTINGS
    for path in (manifest, settings_file, out / STATS, out / FAILED):
        output.check(path)
    identity = json.loads(json.dumps(identity, default=str))
    if manifest.exists() and not settings.resume:
        if not settings.force:
            raise OutputExistsError(f"{manifest}: exists; pass --resume to finish that render or --force to start over")
        manifest.unlink()
        (out / STATS).unlink(missing_ok=True)
    for stray in out.glob(".*.tmp*"):  # temporaries of a killed atomic write
        stray.unlink(missing_ok=True)
    if settings.resume and settings_file.exists():
        try:
            before = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RwkvMusicError(f"{settings_file}: unreadable render settings ({exc}); use --force") from None
        if not isinstance(before, dict):
            raise RwkvMusicError(f"{settings_file}: unreadable render settings (not an object); use --force")
        changed = sorted(
            k
            for k in ("input", "model", "samples_per_prompt", "seed", "options", "sampling")
            if before.get(k) != identity.get(k)
        )
        if changed:
            raise RwkvMusicError(
                f"{out}: cannot resume, the render settings differ from the first run ({', '.join(changed)})"
            )
    if not settings.resume or not settings_file.exists():
        output.identity = identity  # written when the first sample is
    rows, bad = read_jsonl(manifest)
    good, seen = [], set()
    root = out.resolve()
    for row in rows:  # keep rows whose file is really there (inside out), once each
        rid = row.get("id")
        target = (out / str(row.get("output", ""))).resolve()
        if rid and rid not in seen and root in target.parents and target.is_file():
            good.append(row)
            seen.add(rid)
    if bad or len(good) != len(rows):
        log.info("%s: dropping %d damaged or dangling manifest rows", manifest, bad + len(rows) - len(good))
        atomic_write_text(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in good), force=True)
    return seen


_INPUT_ERRORS = (RwkvMusicError, OSError, UnicodeDecodeError)  # what reading one input may raise


def generate_pieces(
    composer: Any, todo: list[Sample], settings: RenderSettings, failed: Failed
) -> Iterator[tuple[Sample, Any]]:
    """Each sample of ``todo`` with its finished piece, as pieces end: the one generation path of a
    render, wherever it runs (this process or a worker).  Inputs that cannot be read are recorded in
    ``failed`` and skipped."""
    if settings.continuous:
        return _pieces_continuous(composer, todo, settings, failed)
    return _pieces_batches(composer, todo, settings, failed)


def _pieces_continuous(
    composer: Any, todo: list[Sample], settings: RenderSettings, failed: Failed
) -> Iterator[tuple[Sample, Any]]:
    """Generate with ``batch_size`` rows in flight; yield each sample as soon as it is finished."""
    from rwkv_music.compose.recipe import piece_from_result
    from rwkv_music.sampling.continuous import generate_continuous

    def items() -> Iterator[Any]:  # lazy: a row's prompt is read when its first sample starts
        job, recipe = None, None
        for s in todo:
            if s.job is not job:
                job = s.job
                recipe = _recipe(composer, s, settings, failed)
            if recipe is not None:
                yield recipe.work_item(s.seed, tag=(s, recipe))

    model = composer.model_info()
    results = generate_continuous(composer.backend, items(), batch_size=settings.batch_size, on_constraint="finish")
    for result in results:
        sample, recipe = result.item.tag
        yield sample, piece_from_result(model, recipe, result, settings.batch_size)


def _recipe(composer: Any, sample: Sample, settings: RenderSettings, failed: Failed) -> Any:
    """The row recipe of ``sample``'s input, or None (recorded in ``failed``) when the input cannot be read."""
    try:
        recipe = composer.recipe(_input(sample), *_row_settings(composer, sample.job, settings))
        if sample.job.file:
            recipe.check_prompt()  # a file the constraint cannot read is listed, not the end of the run
        return recipe
    except _INPUT_ERRORS as exc:
        if not sample.job.file:  # a prompt or option error is the user's command, not one bad file
            raise
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        failed[sample.job.index] = (str(sample.job.input_label()), why)
        log.warning("%s: skipped (%s)", sample.job.input_label(), why)
        return None


def _pieces_batches(
    composer: Any, todo: list[Sample], settings: RenderSettings, failed: Failed
) -> Iterator[tuple[Sample, Any]]:
    """Fixed batches of consecutive samples (each batch waits for its slowest piece)."""
    for batch in _batches(todo, settings):
        for first in {s.job.index: s for s in batch}.values():  # unreadable files leave the batch first
            _recipe(composer, first, settings, failed)
        batch = [s for s in batch if s.job.index not in failed]
        if batch:
            yield from zip(batch, _generate(composer, batch, settings))


def _batches(todo: list[Sample], settings: RenderSettings) -> Iterable[list[Sample]]:
    """Consecutive samples sharing their row parameters, at most ``batch_size`` at a time."""
    batch: list[Sample] = []
    for s in todo:
        if batch and (len(batch) >= settings.batch_size or batch[0].job.params != s.job.params):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def _row_settings(
    composer: Any, job: RenderJob, settings: RenderSettings
) -> tuple[MidiOptions | AbcOptions, SamplingOptions]:
    """(compose options, sampling options) of a row: settings defaults, then row params.

    Rows with equal plain params share one pair (both are frozen): making them checks every value,
    building a constraint and a preset on the way, about 1 ms a row, and a dataset's prompts file
    has a row per piece."""
    params = {**dict(settings.options), **dict(settings.sampling), **dict(job.params)}
    cls = composer.format.options_class
    if not _plain(params):  # (objects of other kinds: no key that is safe to share)
        return _make_row_settings(cls, params)
    key = (cls, repr(sorted(params.items())))
    made = _ROW_SETTINGS.get(key)
    if made is None:
        made = _make_row_settings(cls, params)
        if len(_ROW_SETTINGS) >= 256:
            _ROW_SETTINGS.clear()
        _ROW_SETTINGS[key] = made
    return made


_ROW_SETTINGS: dict[tuple[type, str], tuple[Any, SamplingOptions]] = {}


def _plain(value: Any) -> bool:
    """Built of None, bools, ints, floats, strings, lists, tuples and dicts: equal reprs, equal values."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    return type(value) is dict and all(_plain(k) and _plain(v) for k, v in value.items())


def _make_row_settings(cls: type, params: dict[str, Any]) -> tuple[MidiOptions | AbcOptions, SamplingOptions]:
    params = dict(params)
    sampling = {k: params.pop(k) for k in list(params) if k in SAMPLING_KEYS}
    preset = sampling.pop("preset", None)
    return cls(**params), SamplingOptions(preset, sampling)


def _input(sample: Sample) -> Any:
    return Path(sample.job.file) if sample.job.file else sample.job.prompt


def _generate(composer: Any, batch: list[Sample], settings: RenderSettings) -> list[Any]:
    options, sampling = _row_settings(composer, batch[0].job, settings)
    inputs = [_input(s) for s in batch]
    return composer.compose_rows(inputs, options, seeds=[s.seed for s in batch], sampling=sampling)


def _one_piece(piece: Any) -> Any:
    """One piece per file: X:1, whatever its place in a batch.  (A MIDI file shows no index: the piece
    itself, which keeps the file it decoded for its check.)"""
    return dataclasses.replace(piece, index=0) if piece.index != 0 and piece.mode == "abc" else piece


def save_sample(out: Path, sample: Sample, piece: Any) -> None:
    """Write ``sample``'s file into ``out``."""
    # force=True: a file without a manifest row is a leftover of a killed run (same seed, same piece);
    # the atomic write replaces a link of that name instead of writing through it
    _one_piece(piece).save(out / sample.output, force=True)


def sample_bytes(sample: Sample, piece: Any) -> bytes:
    """The bytes :func:`save_sample` writes (the same writer, into a private temporary folder), for a
    render whose files are written by another process."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rwkv-music-piece-") as tmp:
        path = Path(tmp) / Path(sample.output).name
        save_sample(Path(tmp), dataclasses.replace(sample, output=path.name), piece)
        return path.read_bytes()


def sample_row(sample: Sample, piece: Any) -> dict[str, Any]:
    """The manifest row of a finished sample."""
    meta = piece.meta
    timing = meta.get("timing", {})
    return {
        "id": sample.id,
        "row": sample.job.index,
        "sample": sample.k,
        "input": sample.job.input_label(),
        "seed": sample.seed,
        "params": {**meta.get("params", {}), "preset": meta.get("preset")},
        "output": sample.output,
        "tokens": meta.get("new_tokens"),
        "prompt_tokens": meta.get("prompt_tokens"),
        "seconds": round(timing.get("batch_seconds", 0.0) / max(1, timing.get("batch_size", 1)), 4),
        "finish_reason": meta.get("finish_reason"),
        "validity": piece.validity,
    }


def compute_stats(rows: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """Totals and validity rates over manifest rows (what ``stats.json`` holds)."""
    n = len(rows)
    tokens = sum(int(r.get("tokens") or 0) for r in rows)
    seconds = sum(float(r.get("seconds") or 0.0) for r in rows)
    validity = [r.get("validity") or {} for r in rows]
    stats: dict[str, Any] = {
        "samples": n,
        "expected": total,
        "complete": n >= total,
        "tokens": tokens,
        "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        "finish_reasons": dict(Counter(str(r.get("finish_reason")) for r in rows)),
    }
    for key in ("decodes", "parse_ok", "all_balanced", "strictly_balanced"):  # validity flags → rates
        flags = [v[key] for v in validity if key in v]
        if flags:
            stats[f"{key}_rate"] = round(sum(bool(f) for f in flags) / len(flags), 4)
    for key, name in (("notes", "mean_notes"), ("seconds", "mean_music_seconds"), ("bar_balance", "mean_bar_balance")):
        values = [
            float(v[key]) for v in validity if isinstance(v.get(key), (int, float)) and not isinstance(v.get(key), bool)
        ]
        if values:
            stats[name] = round(sum(values) / len(values), 3)
    stats["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return stats
