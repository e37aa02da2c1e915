"""MIDI training data: render music21 scores and ABC tunes to .mid, then tokenize (docs/formats.md C).

A MIDI training document is ``[0] + ids(piece)``: ``<pad>`` (id 0) separates pieces, exactly
what the RWKV-4-MIDI recipe prompts with and stops on (docs/formats.md D3); ``ids(piece)`` is the
tokenizer's ``<start> … <end>`` text.  Rendering with music21 is slow (≈1 s a score), so
rendered files are cached in a folder outside the repository and reused.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.midi.vocab import LAYOUT
from rwkv_music.train.data import FORBIDDEN_COLLECTIONS, Document, read_abc_tunes

log = logging.getLogger(__name__)

MIDI_VOCAB = LAYOUT.size  # docs/formats.md C1: 20,096
MIDI_PAD = LAYOUT.pad_id  # the piece separator (docs/formats.md D3)
# Non-Essen music21 composers rendered for the MIDI default (bach first: its chorales).
DEFAULT_COMPOSERS = ("bach", "handel", "haydn", "mozart", "corelli", "monteverdi", "palestrina",
                     "schubert", "schumann_robert", "joplin")  # beethoven's quartets: too slow to render
MAX_SCORE_BYTES = 400_000  # skip huge scores: parse time grows with size and one would dominate


def default_cache_dir() -> Path:
    """Where rendered MIDI goes when no folder is given (outside the repository)."""
    return Path(tempfile.gettempdir()) / "rwkv-music-midi-cache"


def _write_midi(stream_obj: Any, dest: Path) -> None:
    tmp = dest.with_suffix(".part")
    stream_obj.write("midi", fp=str(tmp))
    tmp.replace(dest)


def abc_text_to_midi(tune: str, dest: Path) -> Path:
    """Render one ABC tune (text with its X: line) to ``dest`` with music21."""
    import music21

    score = music21.converter.parseData(tune, format="abc")
    if isinstance(score, music21.stream.Opus):
        score = score.scores[0] if score.scores else score
    _write_midi(score, dest)
    return dest


def abc_folder_to_midi(src: Path, out_dir: Path, *, max_tunes: int | None = None, every: int = 1,
                       overwrite: bool = False) -> list[Path]:
    """Render every tune of an ABC file or folder to ``out_dir/<file>-<n>.mid``.

    ``every`` keeps one tune in ``every`` (an even sample); unreadable tunes are skipped and
    logged.  Existing outputs are reused unless ``overwrite``.  Returns the written paths.
    """
    src = Path(src)
    if not src.exists():
        raise RwkvMusicError(f"{src}: no such ABC file or folder")
    tunes = read_abc_tunes([src])[::max(1, every)]
    return abc_tunes_to_midi(tunes[:max_tunes] if max_tunes is not None else tunes, out_dir, overwrite=overwrite)


def abc_tunes_to_midi(tunes: list[tuple[str, str]], out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Render (``file#n`` label, tune text) pairs to ``out_dir/<file>-<n>.mid``; skip unreadable ones."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, text in tunes:
        name, _, num = label.rpartition("#")
        dest = out_dir / f"{Path(name).stem}-{int(num):04d}.mid"
        if dest.exists() and not overwrite:
            written.append(dest)
            continue
        try:
            written.append(abc_text_to_midi(text, dest))
        except Exception as exc:  # music21 raises many types on odd ABC
            log.warning("%s: skipped (%s: %s)", label, type(exc).__name__, str(exc)[:80])
    return written


def music21_score_paths(composers: tuple[str, ...] = DEFAULT_COMPOSERS, per_composer: int | None = None) -> list[Path]:
    """Non-ABC, non-Essen score files of music21's corpus for the given composers."""
    from music21 import corpus

    paths: list[Path] = []
    for name in composers:
        if name in FORBIDDEN_COLLECTIONS:
            raise RwkvMusicError(f"collection {name} may not be used for training (licence, docs/formats.md E)")
        found = [Path(p) for p in corpus.getComposer(name)]
        found = sorted(p for p in found if p.suffix.lower() != ".abc" and "essenFolksong" not in p.parts
                       and p.stat().st_size <= MAX_SCORE_BYTES)
        paths.extend(found[:per_composer] if per_composer else found)
    return paths


def render_music21_scores(out_dir: Path, composers: tuple[str, ...] = DEFAULT_COMPOSERS, *,
                          per_composer: int | None = None, overwrite: bool = False) -> list[Path]:
    """Parse music21 corpus scores and write each as ``out_dir/<composer>-<stem>.mid``."""
    from music21 import converter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in music21_score_paths(composers, per_composer):
        composer = next((c for c in composers if c in path.parts), "score")
        dest = out_dir / f"{composer}-{path.parent.name}-{path.stem}.mid"
        if dest.exists() and not overwrite:
            written.append(dest)
            continue
        try:
            _write_midi(converter.parse(str(path)), dest)
            written.append(dest)
        except Exception as exc:  # music21 raises many types on odd scores
            log.warning("%s: skipped (%s: %s)", path, type(exc).__name__, str(exc)[:80])
    return written


def build_default_midi_corpus(cache: Path | None = None, *, bach_pieces: int = 250, other_pieces: int = 6,
                              abc_every: int = 12) -> Path:
    """Render the MIDI default's training set (capped to keep rendering to minutes):
    ``bach_pieces`` Bach scores (mostly chorales), ``other_pieces`` per other non-Essen composer,
    and every ``abc_every``-th tune of the non-Essen ABC collections."""
    from rwkv_music.train.data import music21_abc_files

    cache = Path(cache) if cache else default_cache_dir()
    render_music21_scores(cache / "scores", ("bach",), per_composer=bach_pieces)
    render_music21_scores(cache / "scores", DEFAULT_COMPOSERS[1:], per_composer=other_pieces)
    tunes = read_abc_tunes(music21_abc_files())[::max(1, abc_every)]  # an even sample over all collections
    abc_tunes_to_midi(tunes, cache / "abc")
    return cache


def midi_file_ids(path: Path, tokenizer: Any) -> list[list[int]]:
    """Token ids of one MIDI file as pieces (``<start> … <end>``); no minimum-length filter
    (music21 renders of chorales and tunes are often shorter than MLT's 30 s)."""
    return [list(tokenizer.midi_to_ids(path))]


def midi_documents(paths: list[Path] | None = None, *, max_pieces: int | None = None,
                   tokenizer: Any = None) -> list[Document]:
    """MIDI training documents ``[0] + ids`` from .mid files/folders (default: the render cache)."""
    if tokenizer is None:
        from rwkv_music.formats.midi.tokenizer import MidiTokenizer

        tokenizer = MidiTokenizer()
    if not paths:
        cache = default_cache_dir()
        if not cache.exists():
            build_default_midi_corpus(cache)
        paths = [cache]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(list(p.rglob("*.mid")) + list(p.rglob("*.midi"))) if p.is_dir() else [p])
    if max_pieces is not None:
        files = files[:max_pieces]
    docs = []
    for f in files:
        try:
            pieces = midi_file_ids(f, tokenizer)
        except RwkvMusicError as exc:
            log.warning("%s: skipped (%s)", f, exc)
            continue
        for ids in pieces:
            if len(ids) > 2:
                arr = np.array([MIDI_PAD, *ids], dtype=np.int64)
                mask = np.ones(len(arr), dtype=np.float32)
                # mask stays 1 on the separator: in the concatenated stream it is the target
                # after the previous piece's <end>, and sampling stops on it (docs/formats.md D3).
                docs.append(Document(arr, mask, f.name))
    if not docs:
        raise RwkvMusicError(f"no usable MIDI pieces in {[str(p) for p in paths]}")
    return docs
