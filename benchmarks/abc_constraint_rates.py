"""Strict metre and form of sampled ABC, with and without the ABC constraint (issues 4 and 15).

For each model -- a random-weights RWKV-7 (vocab 128, 2 layers) and, when it is installed, the
shipped default ABC model (``rwkv_music.assets.default_model_path("abc")``) -- ``--tunes`` tunes
per header are sampled after ``bos + "S:2\\nL:<unit>\\nM:<metre>\\nK:<key>\\n"`` for the common
metres (4/4 3/4 2/4 6/8 9/8 C C| with L:1/8, and 2/4 with L:1/16): without processors
(plain sampling, T 1), with :class:`AbcConstraint` as the composer builds it (the form on:
2 parts of 8 bars, cadence, one space, 4 bars a line) and with ``form=False`` ("on (no form)": strict bars only).

Every tune is read by the strict judge (:mod:`rwkv_music.formats.abc.judge`, independent of the
grammar): ``strict %`` = every bar keeps the metre (pickup pairs excepted); ``sect/8`` = section
bar lines per 8 bars (human tunes: 0.5-1.4); ``space`` = the longest run of spaces; ``tonic %``
= the last note is the tonic of ``K:``; ``form %`` = the parts are ``(8, 8)``; ``cap %`` = rows
that ran into ``--max-len`` instead of writing eos.  Prints one Markdown row per (model, mode,
header) and asserts nothing.

Run: ``python benchmarks/abc_constraint_rates.py [--tunes 4] [--max-len 1024] [--no-default]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rwkv_music import load_model
from rwkv_music.formats.abc.constraint import AbcConstraint, decode_abc
from rwkv_music.formats.abc.judge import TuneReport, judge_tune
from rwkv_music.model.factory import save_random_checkpoint
from rwkv_music.sampling.generate import generate

HEADERS = (  # (metre, unit, key)
    ("4/4", "1/8", "D"), ("3/4", "1/8", "G"), ("2/4", "1/8", "A"), ("2/4", "1/16", "Bb"),
    ("6/8", "1/8", "Em"), ("9/8", "1/8", "D"), ("C", "1/8", "G"), ("C|", "1/8", "Dmix"),
)  # fmt: skip
MODES = {  # name -> keyword arguments of the constraint (None: no constraint)
    "off": None,
    "on (form)": {},
    "on (no form)": {"form": False},
}


def emit(line: str = "") -> None:
    """One line of the Markdown report (benchmarks print tables, STYLE.md habit 12)."""
    print(line)  # noqa: T201


def judge(text: str) -> TuneReport | None:
    """The judge's report, or None where it fails on broken text (``A/0`` divides by zero)."""
    try:
        return judge_tune(text)
    except ZeroDivisionError:
        return None


def rates(model: object, n: int, max_len: int, mode: dict | None, seed: int) -> list[dict]:
    """One result row per header: the judge's rates over ``n`` tunes (all headers in one batch)."""
    heads = [f"S:2\nL:{u}\nM:{m}\nK:{k}\n" for m, u, k in HEADERS for _ in range(n)]
    prompts = [[2] + [ord(c) for c in h] for h in heads]
    processors = [AbcConstraint(max_new_tokens=max_len, **mode)] if mode is not None else []
    started = time.perf_counter()
    result = generate(model, prompts, processors=processors, max_new_tokens=max_len,
                      seeds=[seed + i for i in range(len(heads))], stop_tokens=[3], return_state=False)  # fmt: skip
    seconds = time.perf_counter() - started
    rows = []
    for j, (metre, unit, key) in enumerate(HEADERS):
        part = range(j * n, (j + 1) * n)
        texts = [heads[i] + decode_abc(result.tokens[i]) for i in part]
        judged = [judge(t) for t in texts]
        reports = [r for r in judged if r is not None]  # an unreadable tune counts as failing below
        bars = sum(r.bars for r in reports)
        rows.append({
            "header": f"M:{metre} L:{unit} K:{key}",
            "strict": sum(r.strictly_balanced for r in reports) / n,
            "sect8": 8.0 * sum(r.section_barlines for r in reports) / max(1, bars),
            "space": max((r.max_space_run for r in reports), default=0),
            "tonic": sum(r.ends_on_tonic for r in reports) / n,
            "form": sum(r.part_bars == (8, 8) for r in reports) / n,
            "cap": np.mean([result.finish_reasons[i] != "stop" for i in part]),
            "bytes": np.mean([len(result.tokens[i]) for i in part]),
            "seconds": seconds,
            "example": texts[0][len(heads[part[0]]) :][:60],
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunes", type=int, default=4, help="tunes per header")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-default", action="store_true", help="skip the shipped default ABC model")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_checkpoint(Path(tmp) / "v7.pth", "7", n_layer=2, n_embd=64, vocab_size=128, seed=args.seed)
        models.append(("random v7 (2x64)", load_model(str(path))))
    if not args.no_default:
        try:
            from rwkv_music.assets import default_model_path

            models.append(("default ABC model", load_model(str(default_model_path("abc")))))
        except Exception as exc:  # not installed: report and go on
            emit(f"(default ABC model skipped: {exc})")
    emit(f"# ABC constraint: {args.tunes} tunes per header, up to {args.max_len} bytes per row\n")
    emit("| model | constraint | header | strict % | sect/8 | space | tonic % | form % | cap % | bytes | s | start |")
    emit("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, model in models:
        for mode in args.modes.split(","):
            for r in rates(model, args.tunes, args.max_len, MODES[mode.strip()], args.seed):
                example = repr(r["example"]).replace("|", "\\|")
                emit(f"| {name} | {mode} | {r['header']} | {100 * r['strict']:.0f} | {r['sect8']:.1f} | {r['space']} "
                     f"| {100 * r['tonic']:.0f} | {100 * r['form']:.0f} | {100 * r['cap']:.0f} | {r['bytes']:.0f} "
                     f"| {r['seconds']:.0f} | {example} |")  # fmt: skip


if __name__ == "__main__":
    main()
