"""Convert a folder of ABC tune books to MIDI files, one per tune (the data path for MIDI models).

``music21:NAME`` names a collection of the installed music21 corpus (e.g. ``music21:oneills1850``),
read at run time, never copied.  Outputs mirror the input folders: ``book.abc`` tune ``X:12``
becomes ``book_0012.mid``.  Existing outputs are kept (so a rerun finishes an interrupted
conversion) unless ``force``; tunes music21 cannot read are listed in ``failed.txt``, not fatal.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rwkv_music.errors import RwkvMusicError
from rwkv_music.export.abc import split_tunes
from rwkv_music.io_utils import atomic_write_text

log = logging.getLogger(__name__)

MUSIC21_PREFIX = "music21:"
FAILED_FILE = "failed.txt"


@dataclass
class ConversionReport:
    """What :func:`convert_folder` did."""

    written: int = 0
    skipped: int = 0  # outputs already there
    failed: list[tuple[str, str]] = field(default_factory=list)  # (tune, reason)

    @property
    def total(self) -> int:
        return self.written + self.skipped + len(self.failed)


def resolve_source(source: str | os.PathLike) -> Path:
    """A folder path, or ``music21:NAME`` → that folder of the installed music21 corpus."""
    text = str(source)
    if text.startswith(MUSIC21_PREFIX):
        from music21 import common

        path = Path(common.getCorpusFilePath()) / text[len(MUSIC21_PREFIX) :]
    else:
        path = Path(text)
    if not path.is_dir():
        raise RwkvMusicError(f"{source}: no such folder of ABC files")
    return path


def convert_folder(
    source: str | os.PathLike,
    out: str | os.PathLike,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Write one .mid per tune of every .abc file under ``source`` into ``out``.

    ``progress(files_done, files_total)`` is called after each file.  A tune that cannot be
    converted never stops the run: it is listed in ``out/failed.txt`` (tune, tab, reason).
    """
    src = resolve_source(source)
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".abc")
    if not files:
        raise RwkvMusicError(f"{src}: contains no .abc files")
    out = Path(out)
    report = ConversionReport()
    try:
        for n, path in enumerate(files, 1):
            _convert_file(src, path, out, force, report)
            if progress is not None:
                progress(n, len(files))
    finally:  # also when interrupted: the failures so far are listed
        _write_failures(out, report)
    return report


def _convert_file(src: Path, path: Path, out: Path, force: bool, report: ConversionReport) -> None:
    from rwkv_music.export.midi import write_midi
    from rwkv_music.export.music21_io import abc_to_midi

    rel = path.relative_to(src).with_suffix("")
    text = path.read_text(encoding="utf-8", errors="replace")
    used: set[str] = set()
    for i, (number, tune) in enumerate(split_tunes(text), 1):
        name = f"{rel.name}_{(number if number is not None else i):04d}"
        name = name if name not in used else f"{name}_{i}"  # repeated X: numbers in one book
        used.add(name)
        target = out / rel.parent / f"{name}.mid"
        label = f"{path}#X:{number if number is not None else i}"
        if target.exists() and not force:
            report.skipped += 1
            continue
        try:
            midi = abc_to_midi(tune, source=label)
        except RwkvMusicError as exc:
            report.failed.append((label, _one_line(exc)))
            log.info("skipped %s", exc)
            continue
        except Exception as exc:  # a music21 bug on one tune must not end the run
            report.failed.append((label, _one_line(exc, f"{label}: {type(exc).__name__}: ")))
            log.info("skipped %s (%s: %s)", label, type(exc).__name__, exc)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_midi(midi, target, force=force)
        report.written += 1


def _one_line(exc: Exception, prefix: str = "") -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (prefix + text).replace("\t", " ")


def _write_failures(out: Path, report: ConversionReport) -> None:
    """``out/failed.txt``: one ``tune<TAB>reason`` line per failed tune (removed when none failed)."""
    path = out / FAILED_FILE
    if report.failed:
        lines = "".join(f"{label}\t{reason}\n" for label, reason in report.failed)
        atomic_write_text(path, lines, force=True)
    elif path.exists():
        path.unlink()
