"""Training data: ABC tunes → byte ids with TunesFormer control codes, documents → batches.

ABC (docs/formats.md B): a training document is ``[2] + bytes(control codes + tune without X:) + [3]``.
Tunes are cleaned to the shape the BlinkDL ABC prompts use: control lines, then ``L:``, ``M:``,
``K:`` and the music (titles, sources, notes, lyrics and comments dropped — standard ``B:``/``S:``
header fields would otherwise collide with the control codes ``B:``/``S:``).

MIDI documents come from :mod:`rwkv_music.train.midi_data`; every document is a list of ids and
a same-length loss mask.  :class:`TokenStream` concatenates documents and cuts training windows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.tokenizer import AbcTokenizer

ABC_BOS, ABC_EOS = AbcTokenizer.bos_id, AbcTokenizer.eos_id  # docs/formats.md B: 2, 3
ABC_VOCAB = AbcTokenizer.vocab_size  # 128
# music21 corpus collections used for shipped models; never essenFolksong (docs/formats.md E licence).
DEFAULT_ABC_COLLECTIONS = ("oneills1850", "airdsAirs", "ryansMammoth", "miscFolk")
FORBIDDEN_COLLECTIONS = ("essenFolksong",)
_KEEP_HEADERS = ("L", "M", "K")
_DROP_BODY_FIELDS = re.compile(r"^(?:[A-Za-z]:|%)")
_INLINE_KEEP = re.compile(r"^[KLMP]:")
# Section delimiters of the TunesFormer control codes (docs/formats.md B), longest first.
_BAR_RE = re.compile(r":\|:|\|\]|\[\||\|\||::|\|:|:\||\|")
_SECTION_BARS = {":|:", "|]", "[|", "||", "::", "|:", ":|"}


@dataclass(frozen=True)
class Document:
    """One training sequence: token ids and a mask (1 = the model is trained to predict it)."""

    ids: np.ndarray
    mask: np.ndarray
    source: str = ""


# ----------------------------------------------------------------------------- ABC text


def split_abc_tunes(text: str) -> list[str]:
    """Split an ABC file into tunes, each starting at its ``X:`` line."""
    tunes, cur = [], None
    for line in text.splitlines():
        if line.startswith("X:"):
            if cur:
                tunes.append("\n".join(cur))
            cur = [line]
        elif cur is not None:
            cur.append(line)
    if cur:
        tunes.append("\n".join(cur))
    return tunes


def clean_abc_tune(tune: str) -> str | None:
    """Drop the X: line and every header but L/M/K; keep the music. None if no K: or no music."""
    headers: dict[str, str] = {}
    body: list[str] = []
    in_body = False
    for raw in tune.splitlines():
        line = raw.rstrip()
        if not in_body:
            m = re.match(r"^([A-Za-z]):\s*(.*)$", line)
            if m:
                if m.group(1) in _KEEP_HEADERS:
                    headers[m.group(1)] = m.group(2).split("%")[0].strip()
                in_body = m.group(1) == "K"
            continue
        if not line.strip():
            break  # a blank line ends the tune
        if _DROP_BODY_FIELDS.match(line) and not _INLINE_KEEP.match(line):
            continue
        body.append(line.split("%")[0].rstrip())
    body = [b for b in body if b.strip()]
    if "K" not in headers or not body:
        return None
    head = [f"{k}:{headers[k]}" for k in _KEEP_HEADERS if k in headers]
    return "\n".join(head + body) + "\n"


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def abc_sections(music: str) -> list[tuple[str, int]]:
    """(text, bar count) of each section; sections end at ``[| || |] |: :: :|`` (docs/formats.md B).

    Every stretch holding a note or rest counts as a bar, a pickup included.
    """
    sections: list[tuple[str, int]] = []
    text: list[str] = []
    bars, pos = 0, 0
    for m in _BAR_RE.finditer(music):
        seg = music[pos:m.start()]
        pos = m.end()
        text.append(seg)
        if any(c.isalpha() for c in seg):  # a bar with at least one note or rest
            bars += 1
        if m.group(0) in _SECTION_BARS and bars:
            sections.append(("".join(text).strip(), bars))
            text, bars = [], 0
    tail = music[pos:]
    if any(c.isalpha() for c in tail):
        text.append(tail)
        bars += 1
    if bars:
        sections.append(("".join(text).strip(), bars))
    return sections


def control_codes(clean_tune: str, compare_chars: int = 64) -> str:
    """TunesFormer-style ``S:``/``B:``/``E:`` lines for a cleaned tune (docs/formats.md B order).

    E is 0–10: round(10·(1 − edit distance / longer length)) between the first
    ``compare_chars`` characters of two sections (the cap keeps corpus building fast; an
    approximation of TunesFormer's level).
    """
    music = "\n".join(line for line in clean_tune.splitlines() if not re.match(r"^[A-Za-z]:", line))
    secs = abc_sections(music)[:8] or [(music, 1)]
    lines = [f"S:{len(secs)}"]
    for i, (text, bars) in enumerate(secs):
        for prev, _ in secs[:i]:
            a, b = prev[:compare_chars], text[:compare_chars]
            sim = 1.0 - _levenshtein(a, b) / max(len(a), len(b), 1)
            lines.append(f"E:{int(round(10 * sim))}")
        lines.append(f"B:{min(max(bars, 1), 32)}")
    return "\n".join(lines) + "\n"


def abc_document(tune: str, *, with_control: bool = True, mask_control: bool = False,
                 source: str = "") -> Document | None:
    """Turn one raw tune (with or without X:) into ``[2] + bytes + [3]`` ids (docs/formats.md B)."""
    clean = clean_abc_tune(tune)
    if clean is None or not clean.isascii():
        return None
    prefix = control_codes(clean) if with_control else ""
    data = (prefix + clean).encode("ascii")
    ids = np.array([ABC_BOS, *data, ABC_EOS], dtype=np.int64)
    mask = np.ones(len(ids), dtype=np.float32)
    mask[0] = 0.0  # bos is always given, never predicted
    if mask_control:
        mask[1: 1 + len(prefix)] = 0.0
    return Document(ids, mask, source)


def music21_abc_files(collections: tuple[str, ...] = DEFAULT_ABC_COLLECTIONS) -> list[Path]:
    """Paths of the installed music21 corpus ABC files of the named collections (sorted)."""
    bad = set(collections) & set(FORBIDDEN_COLLECTIONS)
    if bad:
        raise RwkvMusicError(f"collection {sorted(bad)[0]} may not be used for training (licence, docs/formats.md E)")
    import music21

    root = Path(music21.__file__).parent / "corpus"
    files: list[Path] = []
    for name in collections:
        folder = root / name
        if not folder.is_dir():
            raise RwkvMusicError(f"{folder}: music21 corpus collection not found")
        files.extend(sorted(folder.rglob("*.abc")))
    return files


def read_abc_tunes(paths: list[Path]) -> list[tuple[str, str]]:
    """(source label, raw tune text) for every tune in the given ABC files or folders."""
    out = []
    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("*.abc")) if path.is_dir() else [path]
        for f in files:
            text = f.read_text(encoding="latin-1")
            out.extend((f"{f.name}#{i}", t) for i, t in enumerate(split_abc_tunes(text)))
    return out


def abc_documents(paths: list[Path] | None = None, *, with_control: bool = True,
                  mask_control: bool = False) -> list[Document]:
    """ABC training documents from files/folders, or from music21's non-Essen corpus when None."""
    tunes = read_abc_tunes(paths if paths else music21_abc_files())
    docs = [abc_document(t, with_control=with_control, mask_control=mask_control, source=s) for s, t in tunes]
    docs = [d for d in docs if d is not None]
    if not docs:
        raise RwkvMusicError(f"no usable ABC tunes in {paths}")
    return docs


# ----------------------------------------------------------------------------- prepared data files


def save_documents(path: Path, train: list[Document], val: list[Document], vocab_size: int) -> Path:
    """Write a train/val document set to one ``.npz`` (prepared once, e.g. augmented or rendered
    on a CPU machine, then carried to the training machine)."""
    docs = list(train) + list(val)
    dtype = np.uint8 if vocab_size <= 256 else np.uint16
    np.savez_compressed(
        path, ids=np.concatenate([d.ids for d in docs]).astype(dtype),
        mask=np.concatenate([d.mask for d in docs]).astype(np.uint8),
        lengths=np.array([len(d.ids) for d in docs], dtype=np.int64),
        split=np.array([0] * len(train) + [1] * len(val), dtype=np.uint8),
        sources=np.array([d.source for d in docs]), vocab_size=np.array(vocab_size))
    return Path(path)


def load_documents(path: Path) -> tuple[list[Document], list[Document], int]:
    """(train documents, held-out documents, vocab size) from a :func:`save_documents` file."""
    try:
        blob = np.load(path, allow_pickle=False)
        ids, mask, lengths, split = blob["ids"], blob["mask"], blob["lengths"], blob["split"]
        sources, vocab = blob["sources"], int(blob["vocab_size"])
    except (OSError, KeyError, ValueError) as exc:
        raise RwkvMusicError(f"{path}: not a prepared document file ({type(exc).__name__})") from exc
    train: list[Document] = []
    val: list[Document] = []
    pos = 0
    for n, part, src in zip(lengths.tolist(), split.tolist(), sources.tolist()):
        doc = Document(ids[pos:pos + n].astype(np.int64), mask[pos:pos + n].astype(np.float32), str(src))
        (val if part else train).append(doc)
        pos += n
    return train, val, vocab


# ----------------------------------------------------------------------------- splits and batches


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Seeded shuffle, then the first ``val_fraction`` of documents (at least one) is held out."""
    if not 0.0 <= val_fraction < 1.0:
        raise RwkvMusicError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(docs) * val_fraction))
    if val_fraction > 0 and len(docs) > 1:
        n_val = max(1, min(n_val, len(docs) - 1))
    val = [docs[i] for i in order[:n_val]]
    train = [docs[i] for i in order[n_val:]]
    return train, val


class TokenStream:
    """Documents concatenated into one id stream; windows of ctx+1 tokens for next-token loss."""

    def __init__(self, docs: list[Document]):
        if not docs:
            raise RwkvMusicError("empty data split: add data or lower --val-fraction")
        self.ids = np.concatenate([d.ids for d in docs])
        self.mask = np.concatenate([d.mask for d in docs])
        self.doc_starts = np.cumsum([0] + [len(d.ids) for d in docs[:-1]])

    def __len__(self) -> int:
        return len(self.ids)

    def random_batch(
        self, rng: np.random.Generator, batch_size: int, ctx: int, tune_starts: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random windows: (inputs [B,ctx], targets [B,ctx], target mask [B,ctx]) numpy arrays.

        ``tune_starts`` is the share of windows that begin at a document's first token, so the
        model reads a whole header from a zero state as it does when generating (a window at a
        random offset mostly starts mid-tune, with the header that sets the metre out of reach).
        With 0 the random draws are exactly those of a plain run.
        """
        ctx = min(ctx, len(self.ids) - 1)
        starts = rng.integers(0, len(self.ids) - ctx, size=batch_size)
        if tune_starts > 0.0:
            fits = self.doc_starts[self.doc_starts < len(self.ids) - ctx]
            aligned = rng.random(batch_size) < tune_starts
            if len(fits) and aligned.any():
                starts[aligned] = rng.choice(fits, size=int(aligned.sum()))
        return self._gather(starts, ctx)

    def eval_batches(
        self, batch_size: int, ctx: int, max_tokens: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Contiguous windows covering the stream once (each target scored once)."""
        ctx = min(ctx, len(self.ids) - 1)
        limit = len(self.ids) - 1 if max_tokens is None else min(len(self.ids) - 1, max_tokens)
        starts = np.arange(0, max(limit - ctx, 0) + 1, ctx)
        for i in range(0, len(starts), batch_size):
            yield self._gather(starts[i:i + batch_size], ctx)

    def _gather(self, starts: np.ndarray, ctx: int):
        offs = starts[:, None] + np.arange(ctx + 1)[None, :]
        win, msk = self.ids[offs], self.mask[offs]
        return win[:, :-1], win[:, 1:], msk[:, 1:]
