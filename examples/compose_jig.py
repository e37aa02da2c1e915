"""Compose a few jigs (6/8, D major) in ABC and save them as a tune book plus MIDI files.

python examples/compose_jig.py                       # the shipped ABC model
python examples/compose_jig.py --model abc.pth -n 4 --out jigs/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rwkv_music import Composer
from rwkv_music.errors import TokenizerError
from rwkv_music.export.abc import write_abc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ABC model (.pth); default: the shipped one")
    parser.add_argument("-n", type=int, default=3, help="number of jigs")
    parser.add_argument("--max-tokens", type=int, default=400, help="most characters per jig")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("jigs"))
    parser.add_argument("--no-constraints", action="store_true", help="plain sampling (no ABC grammar constraint)")
    args = parser.parse_args(argv)

    composer = Composer.load(args.model, mode="abc")
    # Two sections of 8 bars, the second unlike the first (TunesFormer control codes, docs/formats.md B).
    jigs = composer.compose_abc(
        n=args.n,
        key="D",
        meter="6/8",
        unit="1/8",
        controls="S:2;B:8;E:0;B:8",
        max_tokens=args.max_tokens,
        seed=args.seed,
        constrained=not args.no_constraints,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    book = write_abc([jig.text for jig in jigs], args.out / "jigs.abc", force=True, titles=[j.title for j in jigs])
    print(f"{book}: {len(jigs)} tunes")  # noqa: T201 - a script reports to its user
    for jig in jigs:
        ok = jig.validity["parse_ok"]
        try:
            path = jig.save(args.out / f"jig-{jig.index + 1}.mid", force=True)
            print(f"{path}  (music21 parse ok: {ok}, bar balance {jig.validity['bar_balance']})")  # noqa: T201 - a script reports to its user
        except TokenizerError as exc:  # a tune music21 cannot read has no MIDI (one line, never a traceback)
            print(f"jig {jig.index + 1}: no MIDI ({exc})")  # noqa: T201 - a script reports to its user


if __name__ == "__main__":
    main()
