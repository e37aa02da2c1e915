"""Parse and bar-balance rates of sampled ABC with and without the ABC constraint (issue 4).

For each model -- a random-weights RWKV-7 (vocab 128, 2 layers) and, when it is installed, the
shipped default ABC model -- N tunes are sampled after the prompts
``bos + "S:2\\nL:<1/8|1/16>\\nM:<meter>\\nK:D\\n"`` (meters 2/4 3/4 4/4 6/8 9/8 C|, L 1/8
and 1/16 in turn): without processors (plain sampling, T 1), with :class:`AbcConstraint`
(``max_new_tokens`` = the length limit), and with the constraint allowing a short bar only as
a pickup.  Every tune is judged by the independent music21 checker (:mod:`rwkv_music.formats.abc.check`):
``parse`` = music21 reads notes, ``balanced`` = no unbalanced measure (FORMATS E metric),
``strict`` = balanced and no overfull bar anywhere; ``bars checked`` = measures the checker
compares with the meter (it skips pickup, last bar and bars next to repeat/double bars).
Prints one Markdown table row per (model, mode) and asserts nothing.

Run: ``python benchmarks/abc_constraint_rates.py [--tunes 200] [--max-len 1000] [--no-default]``
(about 8 minutes on one core with the defaults).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rwkv_music import load_model
from rwkv_music.formats.abc.check import bar_balance, parse_ok
from rwkv_music.formats.abc.constraint import AbcConstraint, decode_abc
from rwkv_music.formats.abc.grammar.machine import AbcGrammarConfig
from rwkv_music.model.factory import save_random_checkpoint
from rwkv_music.sampling.generate import generate

METERS = ("2/4", "3/4", "4/4", "6/8", "9/8", "C|")
UNITS = ("1/8", "1/16")


def emit(line: str = "") -> None:
    """One line of the Markdown report (benchmarks print tables, STYLE.md habit 12)."""
    print(line)  # noqa: T201


def headers(n: int) -> list[str]:
    return [f"S:2\nL:{UNITS[i % 2]}\nM:{METERS[i % 6]}\nK:D\n" for i in range(n)]


MODES = {  # name -> grammar config of the constraint (None: no constraint)
    "off": None,
    "on": AbcGrammarConfig(),
    "on, short_bars=pickup": AbcGrammarConfig(short_bars="pickup"),
}


def rates(model: object, n: int, max_len: int, config: AbcGrammarConfig | None, seed: int) -> dict:
    heads = headers(n)
    prompts = [[2] + [ord(c) for c in h] for h in heads]
    processors = [AbcConstraint(config, max_new_tokens=max_len)] if config is not None else []
    started = time.perf_counter()
    result = generate(model, prompts, processors=processors, max_new_tokens=max_len,
                      seeds=[seed + i for i in range(n)], stop_tokens=[3], return_state=False)  # fmt: skip
    seconds = time.perf_counter() - started
    texts = [h + decode_abc(t) for h, t in zip(heads, result.tokens)]
    reports = [bar_balance(t) for t in texts]
    return {
        "parse": np.mean([parse_ok(t) for t in texts]),
        "balanced": np.mean([r.all_balanced for r in reports]),
        "strict": np.mean([r.strictly_balanced for r in reports]),
        "checked": sum(r.checked for r in reports) / max(1, sum(r.measures for r in reports)),
        "eos": result.finish_reasons.count("stop") / n,
        "length": np.mean([len(t) for t in result.tokens]),
        "seconds": seconds,
        "example": texts[0][len(heads[0]) : len(heads[0]) + 70],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunes", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-default", action="store_true", help="skip the shipped default ABC model")
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
    emit(f"# ABC constraint: {args.tunes} tunes of up to {args.max_len} bytes per row\n")
    emit("| model | constraint | parse % | balanced % | strict % | bars checked % | eos % | mean bytes | s | start |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, model in models:
        for mode, config in MODES.items():
            r = rates(model, args.tunes, args.max_len, config, args.seed)
            example = repr(r["example"]).replace("|", "\\|")
            emit(f"| {name} | {mode} | {100 * r['parse']:.1f} | {100 * r['balanced']:.1f} "
                  f"| {100 * r['strict']:.1f} | {100 * r['checked']:.1f} | {100 * r['eos']:.0f} | {r['length']:.0f} "
                  f"| {r['seconds']:.0f} | {example} |")  # fmt: skip


if __name__ == "__main__":
    main()
