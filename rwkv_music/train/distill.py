"""Self-distillation by rejection sampling: a model's own tunes that a musician would keep, as training data.

REINFORCE can only reinforce what the policy already writes: a policy that has settled on one long
part never samples the two-part tune it should learn.  Rejection sampling needs only that good tunes
occur at some rate.  Sample many tunes under caller headers (``S:2``, ``L:``, ``M:``, ``K:``, as
:class:`~rwkv_music.compose.Composer` sends them), keep those that pass every check of
:func:`tune_verdict` (the strict judge of :mod:`rwkv_music.formats.abc.judge`, plus form, cadence
and variety), and fine-tune on them mixed with the human tunes (:func:`distill_documents`).  This
is the "rejection sampling fine-tuning" of the LLM literature (e.g. Yuan et al. 2023, "Scaling
relationship on learning mathematical reasoning with large language models"), with the judge as the
verifier.

Tunes made under the constraint (``constrained=True``) pass the bar and form checks by
construction; they fill in headers where a free model rarely writes a good tune (``M:3/4``).  Their
rhythms are plainer than free tunes', so a recipe uses them sparingly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.header import header_fields, music_after_header
from rwkv_music.formats.abc.judge import TuneReport, judge_tune
from rwkv_music.train.augment import CALLER_METRES, CALLER_UNITS
from rwkv_music.train.data import ABC_BOS, ABC_EOS, Document

# Keys of the sampled headers: the common keys of the corpus (major, minor and the two folk modes).
DISTILL_KEYS = ("D", "G", "A", "C", "F", "Em", "Am", "Bm", "Dmix", "Ador", "Edor", "Bb")
MIN_DISTINCT_BARS = 0.6  # human tunes: 0.79 on average, 7 % below 0.6; below it a tune is mostly one bar repeated


@dataclass(frozen=True)
class Verdict:
    """Which checks a tune failed (empty: keep it)."""

    failed: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return not self.failed


def distinct_bar_share(text: str | TuneReport) -> float:
    """Distinct bars / bars of a tune (or of its :func:`judge_tune` report), compared as the judge reads them
    (``Bar.text``: spaces, barlines, repeat marks and ending numbers aside); 0 without bars."""
    report = judge_tune(text) if isinstance(text, str) else text
    bars = [bar.text for bar in report.bar_list]
    return len(set(bars)) / len(bars) if bars else 0.0


def requested_parts(text: str) -> int | None:
    """The ``S:n`` control code in a tune's header (TunesFormer's section count), or None."""
    value = header_fields(text).get("S", "")
    return int(value) if value.isdigit() else None


def tune_verdict(text: str, finish_reason: str = "stop", variety: bool = False) -> Verdict:
    """The checks a kept tune passes, named as :attr:`Verdict.failed` lists them.

    ``stop`` the model ended the tune itself (not the length cap); ``strict`` every bar keeps the metre
    (:attr:`~rwkv_music.formats.abc.judge.TuneReport.strictly_balanced`); ``parts`` as many sections as
    ``S:n`` asks (2 without a code); ``regular`` every section 4, 8 or 16 bars; ``tonic`` the last note
    is the tonic of ``K:``; ``spaces`` no run of two spaces; ``distinct`` at least
    :data:`MIN_DISTINCT_BARS` of the bars differ; ``tidy`` no empty bars, nothing after the tune's end.
    With ``variety`` also ``rhythm``: not every note of one written length
    (:func:`~rwkv_music.train.rewards.rhythm_is_monotone`), and ``repeats``: no bar three times running
    (``TuneReport.max_same_bars``); 99.7 % and 99.6 % of music21's non-Essen tunes pass them.
    """
    report = judge_tune(text)
    checks = {
        "stop": finish_reason == "stop",
        "strict": report.strictly_balanced,
        "parts": len(report.part_bars) == (requested_parts(text) or 2),
        "regular": report.regular_parts,
        "tonic": report.ends_on_tonic,
        "spaces": report.max_space_run <= 1,
        "distinct": distinct_bar_share(report) >= MIN_DISTINCT_BARS,
        "tidy": report.empty_bars == 0 and report.lines_after_end == 0,
    }
    if variety:
        from rwkv_music.train.rewards import rhythm_is_monotone

        checks["rhythm"] = not rhythm_is_monotone(music_after_header(text))
        checks["repeats"] = report.max_same_bars < 3
    return Verdict(tuple(name for name, ok in checks.items() if not ok))


def sample_accepted(composer: Any, rounds: int, seed: int, *, constrained: bool = False,
                    metres: Sequence[str] = CALLER_METRES, units: Sequence[str] = CALLER_UNITS,
                    keys: Sequence[str] = DISTILL_KEYS, per_header: int = 16,
                    counts: dict[str, int] | None = None, variety: bool = False) -> Iterator[dict]:
    """Tunes of ``composer`` that pass :func:`tune_verdict`, as dicts (``tokens``: the ids after bos,
    header included; ``meter``, ``unit``, ``key``).

    Each round draws ``per_header`` tunes under every metre x unit, with a key drawn per header from
    ``keys``; ``counts`` (if given) collects ``tunes``, ``kept`` and one count per failed check;
    ``variety``: :func:`tune_verdict`'s rhythm and repeat checks too.
    """
    rng = random.Random(seed)
    counts = {} if counts is None else counts
    for _ in range(rounds):
        for unit in units:
            for meter in metres:
                key = rng.choice(list(keys))
                pieces = composer.compose_abc(n=per_header, key=key, meter=meter, unit=unit,
                                              seed=rng.randrange(1 << 30), constrained=constrained)
                for piece in pieces:
                    verdict = tune_verdict(piece.text, piece.meta.get("finish_reason", "stop"), variety)
                    counts["tunes"] = counts.get("tunes", 0) + 1
                    for name in verdict.failed:
                        counts[name] = counts.get(name, 0) + 1
                    if verdict.keep:
                        counts["kept"] = counts.get("kept", 0) + 1
                        yield {"tokens": [int(t) for t in piece.tokens], "meter": meter, "unit": unit, "key": key}


def tune_document(tokens: Sequence[int], source: str) -> Document:
    """bos + ``tokens`` + eos, trained on the music only: the header up to ``K:`` is the caller's
    prompt, conditioned on but not learned (the sampled keys and metres are ours, not the corpus's)."""
    text = bytes(int(t) for t in tokens).decode("ascii")
    at = text.find("K:")
    end = text.find("\n", at) + 1 if at >= 0 else 0
    ids = np.array([ABC_BOS, *tokens, ABC_EOS], dtype=np.int64)
    mask = np.ones(len(ids), dtype=np.float32)
    mask[: 1 + end] = 0.0
    return Document(ids, mask, source)


def read_accepted(paths: Iterable[Path], metres: Sequence[str] | None = None) -> list[Document]:
    """Documents of :func:`sample_accepted`'s JSON lines (only ``metres`` where given)."""
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    tune = json.loads(line)
                    if metres is None or tune["meter"] in metres:
                        docs.append(tune_document(tune["tokens"], f"distill:{Path(path).stem}"))
                except (ValueError, KeyError, TypeError) as exc:
                    raise RwkvMusicError(f"{path}:{number}: not a kept tune ({type(exc).__name__})") from None
    return docs


def distill_documents(human: list[Document], accepted: list[Document], copies: int, human_share: float,
                      seed: int) -> list[Document]:
    """A shuffled training list: a seeded ``human_share`` of the human documents and ``copies`` of
    every accepted tune."""
    if copies < 1 or not 0.0 <= human_share <= 1.0:
        raise RwkvMusicError(f"copies must be >= 1 and human_share in [0, 1], got {copies}, {human_share}")
    rng = random.Random(seed)
    pool = list(human)
    rng.shuffle(pool)
    docs = pool[: int(len(pool) * human_share)] + list(accepted) * copies
    rng.shuffle(docs)
    return docs


__all__ = ["DISTILL_KEYS", "MIN_DISTINCT_BARS", "Verdict", "distill_documents", "distinct_bar_share",
           "read_accepted", "requested_parts", "sample_accepted", "tune_document", "tune_verdict"]

