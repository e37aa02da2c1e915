"""Continue a MIDI file a few times with the MIDI model and draw each result as a piano roll.

python examples/continue_midi.py melody.mid                    # the shipped MIDI model
python examples/continue_midi.py melody.mid --model midi.pth --seconds 20 -n 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rwkv_music import Composer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("midi", type=Path, help="the .mid file to continue")
    parser.add_argument("--model", default=None, help="MIDI model (.pth); default: the shipped one")
    parser.add_argument("-n", type=int, default=2, help="number of continuations")
    parser.add_argument("--seconds", type=float, default=None, help="target length of each result")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--instruments", default=None, help="e.g. piano,violin")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("continued"))
    args = parser.parse_args(argv)

    composer = Composer.load(args.model, mode="midi")

    def progress(step: int, total: int) -> None:  # streaming progress, one call per token
        if step % 100 == 0 or step == total:
            print(f"  token {step}/{total}", flush=True)  # noqa: T201 - a script reports to its user

    pieces = composer.continue_midi(
        args.midi,
        n=args.n,
        seconds=args.seconds,
        max_tokens=args.max_tokens,
        instruments=args.instruments,
        seed=args.seed,
        callback=progress,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for piece in pieces:
        stem = args.out / f"{args.midi.stem}-{piece.index + 1}"
        mid = piece.save(stem.with_suffix(".mid"), force=True)
        png = piece.save(stem.with_suffix(".png"), force=True)
        v = piece.validity
        print(f"{mid} + {png.name}: {v['notes']} notes, {v['seconds']:.1f} s, {piece.meta['finish_reason']}")  # noqa: T201 - a script reports to its user


if __name__ == "__main__":
    main()
