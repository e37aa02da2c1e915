"""Render a dataset: continue every .abc/.mid file of a folder K times (resumable).

    python examples/render_folder.py tunes/ --model abc.pth --samples 4 --out rendered/
    python examples/render_folder.py tunes/ --model abc.pth --samples 4 --out rendered/   # resumes

Each sample is written atomically and logged in rendered/manifest.jsonl; stats.json sums it up.
The same thing from the shell: ``rwkv-music render tunes/ --model abc.pth -n 4 --out rendered/ --resume``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rwkv_music import Composer
from rwkv_music.compose.render import RenderSettings, render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of .abc or .mid files")
    parser.add_argument("--model", default=None, help="model (.pth); default: the shipped model for the folder's files")
    parser.add_argument("--samples", type=int, default=2, help="samples per file")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("rendered"))
    parser.add_argument("--no-constraints", action="store_true", help="plain sampling (no music constraint)")
    args = parser.parse_args(argv)

    mode = "midi" if any(args.folder.rglob("*.mid")) else "abc"
    composer = Composer.load(args.model, mode=None if args.model else mode)
    settings = RenderSettings(
        samples_per_prompt=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        options={"max_tokens": args.max_tokens, "constrained": not args.no_constraints},
        resume=True,
    )
    report = render(
        composer,
        args.folder,
        args.out,
        settings,
        progress=lambda n, todo, tokens: print(f"  +{n} samples ({tokens} tokens)", flush=True),  # noqa: T201 - a script reports to its user
    )
    print(f"{report.out}: {report.written} new, {report.done_before} already there")  # noqa: T201 - a script reports to its user
    print(json.dumps(report.stats, indent=2))  # noqa: T201 - a script reports to its user


if __name__ == "__main__":
    main()
