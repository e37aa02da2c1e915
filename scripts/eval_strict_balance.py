"""Strict bar balance of an ABC model, unconstrained, under every common caller header (issue 15).

Usage (from the repository root)::

    python scripts/eval_strict_balance.py [MODEL.pth] [--n 12] [--seed 11] [--device cpu] [--constrained]

Prints, per header (M: x L:), the share of tunes that :func:`rwkv_music.formats.abc.judge.judge_tune`
finds strictly balanced, the share ending on the tonic, the share with a run of more than 2 spaces,
the share cut by the length cap (no end token), the share both strictly balanced and ended by the
model (not cut by the cap) and the mean length, then the overall rates.
Default model: the shipped ``abc-default``.
"""

from __future__ import annotations

import argparse
import time

METRES = ("4/4", "3/4", "2/4", "6/8", "9/8", "C", "C|")
UNITS = ("1/8", "1/16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--n", type=int, default=12, help="tunes per header")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--key", default="D")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--constrained", action="store_true")
    parser.add_argument("--temperature", type=float, default=None, help="override the preset's temperature")
    parser.add_argument("--top-p", type=float, default=None, help="override the preset's top-p")
    args = parser.parse_args()

    from rwkv_music import Composer
    from rwkv_music.formats.abc.judge import judge_tune

    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}
    composer = Composer.load(args.model, mode="abc", device=args.device)
    print(f"{composer!r}  n={args.n} seed={args.seed} key={args.key} constrained={args.constrained} {sampling}")  # noqa: T201 - a report
    counts = dict.fromkeys(("tunes", "strict", "tonic", "spaces>2", "cap", "strict+ended"), 0)
    t0 = time.monotonic()
    for unit in UNITS:
        for meter in METRES:
            pieces = composer.compose_abc(n=args.n, key=args.key, meter=meter, unit=unit, seed=args.seed,
                                          constrained=args.constrained, max_tokens=args.max_tokens, **sampling)
            reports = [judge_tune(p.text) for p in pieces]
            found = {"tunes": len(pieces),
                     "strict": sum(r.strictly_balanced for r in reports),
                     "tonic": sum(r.ends_on_tonic for r in reports),
                     "spaces>2": sum(r.max_space_run > 2 for r in reports),
                     "cap": sum(p.meta.get("finish_reason") == "max_tokens" for p in pieces),
                     # a tune cut by the cap may still read as balanced: this counts finished ones only
                     "strict+ended": sum(r.strictly_balanced and p.meta.get("finish_reason") != "max_tokens"
                                         for r, p in zip(reports, pieces))}
            chars = sum(len(p.text) for p in pieces) / len(pieces)
            rates = "  ".join(f"{k} {v / found['tunes']:.2f}" for k, v in found.items() if k != "tunes")
            print(f"M:{meter:<4} L:{unit:<5} {rates}  chars {chars:.0f}", flush=True)  # noqa: T201 - a report
            counts = {k: counts[k] + found[k] for k in counts}
    n = counts["tunes"]
    rates = ", ".join(f"{k} {v / n:.3f}" for k, v in counts.items() if k not in ("tunes", "strict"))
    print(f"overall strict {counts['strict'] / n:.3f} ({counts['strict']}/{n}), {rates} "  # noqa: T201 - a report
          f"in {time.monotonic() - t0:.0f}s")

if __name__ == "__main__":
    main()
