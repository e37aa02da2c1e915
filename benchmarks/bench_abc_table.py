"""The first ABC compose of a process, with and without the grammar table earlier processes saved (issue 16).

Every process starts the ABC constraint's grammar table empty unless it reads the one an earlier process
saved (:mod:`rwkv_music.formats.abc.table_disk`).  This runs ``compose_abc(n=N)`` with the shipped ABC
model in fresh processes, new seeds each time: first ``--warm`` processes that fill a table in a
temporary cache folder, then, alternating, a process with the table switched off and one that reads it.
It prints the tok/s of each (model load excluded, table read included), their ratio, the table's size
and the tunes' agreement (the same seed must give the same tunes either way).

    python benchmarks/bench_abc_table.py [--n 32] [--rounds 3] [--warm 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time
from rwkv_music import Composer
from rwkv_music.formats.abc import constraint
composer = Composer.load("abc-default", mode="abc")
t = time.perf_counter()
pieces = composer.compose_abc(n=int(sys.argv[1]), seed=int(sys.argv[2]))
seconds = time.perf_counter() - t
table = next(iter(constraint._TABLES.values()))
print(json.dumps({"tokens": sum(p.meta["new_tokens"] for p in pieces), "seconds": seconds,
                  "read": table.saved, "states": len(table), "misses": table.misses,
                  "tunes": hashlib.sha256("\n".join(p.text for p in pieces).encode()).hexdigest()[:12]}))
"""


def say(text: str = "", err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def run(n: int, seed: int, cache: Path, tables: bool) -> dict:
    # the tables in a folder of their own (the native kernels stay where they were built)
    env = {**os.environ, "RWKV_MUSIC_ABC_TABLES": str(cache) if tables else "0"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(seed)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="tunes per compose (one batch)")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of processes measured")
    ap.add_argument("--warm", type=int, default=2, help="processes that fill the table first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="abc-table-bench-") as folder:
        cache = Path(folder)
        for i in range(args.warm):
            found = run(args.n, 1000 + i, cache, True)
            say(f"warm-up process {i + 1}: {found['states']} states in the table", err=True)
        say(f"# bench_abc_table: the first compose_abc(n={args.n}) of a process, shipped ABC model, "
              f"new seeds each round\n")
        say("| round | seed | off tok/s | read tok/s | read/off | states read | misses off -> read | same tunes |")
        say("|---|---|---|---|---|---|---|---|")
        ratios = []
        for r in range(args.rounds):
            seed = 2000 + r
            off = run(args.n, seed, cache, False)
            on = run(args.n, seed, cache, True)
            a, b = off["tokens"] / off["seconds"], on["tokens"] / on["seconds"]
            ratios.append(b / a)
            say(f"| {r + 1} | {seed} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x | {on['read']:,} | "
                  f"{off['misses']:,} -> {on['misses']:,} | {'yes' if off['tunes'] == on['tunes'] else 'NO'} |")
        say(f"\nread/off: median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
