"""Render throughput: continuous batching against the older fixed batches, on a random MIDI model.

Usage::

    python benchmarks/bench_render.py                     # 32 pieces, v7 L2 D128, batch 8
    python benchmarks/bench_render.py --pieces 64 --batch 16 --n-embd 256 --layers 4

Both runs render the same prompts file with the same seeds into two folders (one thread, CPU).
Piece lengths are mixed on purpose: a wrapper sets the logit of the stop id ``<pad>`` so that it
has probability about ``1 / --mean-tokens`` each step (top-k/top-p off) and a piece ends after a
geometric number of tokens, capped at ``--max-tokens``; with fixed batches each batch waits for
its longest piece.  The files of the two runs must be identical (the script checks).  Prints a
Markdown table; asserts nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rwkv_music import load_model  # noqa: E402
from rwkv_music.compose.composer import Composer  # noqa: E402
from rwkv_music.compose.render import RenderSettings, render  # noqa: E402
from rwkv_music.model.factory import save_random_checkpoint  # noqa: E402

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend
    from rwkv_music.model.config import RWKVConfig
    from rwkv_music.model.state import State


class StopBias:
    """Backend wrapper: gives the stop id probability ``p`` and counts forward calls and rows."""

    def __init__(self, inner: Backend, p: float) -> None:
        # + 4: the preset's EOS bias, (step - 2000) / 500, takes about 4 off early in a piece
        self.inner, self.odds = inner, float(np.log(p / (1 - p))) + 4.0
        self.config, self.name, self.device = inner.config, inner.name, inner.device
        self.calls, self.rows, self.decode_calls, self.decode_rows = 0, 0, 0, 0

    @property
    def info(self) -> RWKVConfig:
        return self.inner.config

    def new_state(self, batch_size: int = 1) -> State:
        return self.inner.new_state(batch_size)

    def forward(
        self, tokens: Any, state: State | None = None, *, all_logits: bool = False
    ) -> tuple[torch.Tensor, State]:
        shape = np.asarray(tokens).shape
        self.calls += 1
        self.rows += shape[0]
        if shape[1] == 1:
            self.decode_calls += 1
            self.decode_rows += shape[0]
        logits, new = self.inner.forward(tokens, state)
        logits = logits.clone()
        logits[:, 0] = torch.logsumexp(logits[:, 1:], dim=1) + self.odds
        return logits, new


def run(composer: Composer, prompts: Path, out: Path, settings: RenderSettings) -> dict:
    backend = composer.backend
    backend.calls = backend.rows = backend.decode_calls = backend.decode_rows = 0
    t0 = time.perf_counter()
    report = render(composer, prompts, out, settings)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "tokens": report.stats["tokens"],
        "calls": backend.calls,
        "rows_per_decode": backend.decode_rows / max(1, backend.decode_calls),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--version", default="7")
    parser.add_argument("--mean-tokens", type=float, default=60.0, help="about the mean piece length")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--constrained", action="store_true", help="with the MIDI constraint (slower sampling)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = save_random_checkpoint(root / "m.pth", args.version, n_layer=args.layers, n_embd=args.n_embd,
                                      head_size=32, vocab_size=20096, seed=0)
        composer = Composer(StopBias(load_model(ckpt), 1 / args.mean_tokens), model_name="random")
        prompts = root / "prompts.txt"
        prompts.write_text("".join(f"pi:{0x30 + i % 40:x}:7 t{5 + i % 50}\n" for i in range(args.pieces)))
        base = {"max_tokens": args.max_tokens, "constrained": args.constrained}
        sampling = {"top_k": 0, "top_p": 1.0}  # no filter may drop the stop id
        results = {}
        for name, continuous in (("fixed batches", False), ("continuous", True)):
            settings = RenderSettings(1, args.batch, 1, base, sampling, continuous=continuous)
            results[name] = run(composer, prompts, root / name.replace(" ", "_"), settings)
        rows_a = {r["id"]: r for r in map(json.loads, (root / "fixed_batches/manifest.jsonl").read_text().splitlines())}
        same = all(
            (root / "fixed_batches" / r["output"]).read_bytes() == (root / "continuous" / r["output"]).read_bytes()
            for r in rows_a.values()
        )
        lengths = sorted(r["tokens"] for r in rows_a.values())

    c = composer.config
    head = f"render of {args.pieces} MIDI pieces, random v{c.version} L{c.n_layer} D{c.n_embd} V{c.vocab_size}, "
    head += f"batch {args.batch}, {args.threads} thread(s); piece lengths min {lengths[0]} / median "
    head += f"{lengths[len(lengths) // 2]} / max {lengths[-1]} tokens; identical files: {same}\n"
    print(head)  # noqa: T201
    print("| batching | wall s | tokens | tokens/s | forward calls | rows per decode call |")  # noqa: T201
    print("|---|---|---|---|---|---|")  # noqa: T201
    for name, r in results.items():
        speed = r["tokens"] / r["wall"]
        cells = [name, f"{r['wall']:.2f}", r["tokens"], f"{speed:.0f}", r["calls"], f"{r['rows_per_decode']:.2f}"]
        print("| " + " | ".join(map(str, cells)) + " |")  # noqa: T201
    speedup = results["fixed batches"]["wall"] / results["continuous"]["wall"]
    print(f"\ncontinuous / fixed throughput: {speedup:.2f}x")  # noqa: T201


if __name__ == "__main__":
    main()
