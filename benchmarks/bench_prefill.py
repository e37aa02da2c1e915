"""Prefill speed of the torch backend: v4's sequential torch WKV scan (before) against the current path.

Columns for v4: the torch scan (the "before"), the chunked WKV (what CUDA runs; on a CPU forced with
the C kernels off), and the current default (fp32 CPU: the C loop over time where the C kernels
build; CUDA: the chunked WKV).

One random-weight checkpoint per version (default: the v4 MIDI-120M shape, L12 D768 V20096), one
prompt of ``--length`` tokens, one row; prints a markdown table with the ``rwkv`` pip package's
prefill of the same prompt beside it (fp32 CPU, fp16 CUDA; "n/a" where it is not installed).
Only v4 has a "before" (v5-v7 were already chunked); for the others it is "n/a".

    python benchmarks/bench_prefill.py [--versions 4 5.2 6 7] [--length 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from typing import Any  # noqa: E402

import torch  # noqa: E402
from bench_e2e import fmt, pip_prefill_tps, say, timed  # noqa: E402


def prefill(model: Any, ids: torch.Tensor, device: str, path: str) -> float:
    """Seconds of one forward over ``ids`` [1, T] by v4 WKV ``path``: "scan" (the torch scan, the
    "before"), "chunked" (the chunked torch WKV, also on a CPU) or "current" (the default choice)."""
    from rwkv_music.model import v4

    saved = v4.PREFILL_CHUNK, v4.CHUNKED_ON_CPU, model.native
    if path == "scan":
        v4.PREFILL_CHUNK = 0
    elif path == "chunked":
        v4.CHUNKED_ON_CPU, model.native = True, False
    try:
        return timed(lambda: model.forward(ids), device)
    finally:
        v4.PREFILL_CHUNK, v4.CHUNKED_ON_CPU, model.native = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="+", default=["4"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=20096)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each path (best counts), interleaved")
    ap.add_argument("--no-native", action="store_true", help="torch kernels only (the chunked WKV on a CPU)")
    ap.add_argument("--no-pip", action="store_true", help="skip the rwkv package")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from rwkv_music.backends.torch import load
    from rwkv_music.model.factory import save_random_checkpoint

    dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    say(f"# bench_prefill: device {args.device}, dtype {dtype}, L{args.layers} D{args.embd} V{args.vocab}, "
        f"T={args.length}, B=1, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    say("| version | torch scan (before) tok/s | chunked WKV tok/s | current tok/s | current / before "
        "| rwkv pkg tok/s |")
    say("|---|---|---|---|---|---|")
    ids = torch.randint(4, args.vocab, (1, args.length), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions:
            path = save_random_checkpoint(Path(tmp) / f"v{version}.pth", version, n_layer=args.layers,
                                          n_embd=args.embd, vocab_size=args.vocab, head_size=64)
            model = load(path, device=args.device, dtype=dtype, native=False if args.no_native else None)
            x = ids.to(args.device)
            model.forward(x[:, :16])  # warm-up (and the C kernels' first build)
            paths = ("scan", "chunked", "current") if version == "4" else ("current",)
            best = dict.fromkeys(paths, float("inf"))
            for _ in range(args.repeat):  # interleaved, so load changes on a shared machine hit every path
                for name in paths:
                    best[name] = min(best[name], prefill(model, x, args.device, name))
            tps = {name: args.length / seconds for name, seconds in best.items()}
            new, old, chunked = tps["current"], tps.get("scan"), tps.get("chunked")
            pip = None if args.no_pip else pip_prefill_tps(path, version, args.length, args.device, args.vocab)
            speedup = "n/a" if old is None else f"{new / old:.2f}x"
            say(f"| v{version} | {fmt(old)} | {fmt(chunked)} | {fmt(new)} | {speedup} | {fmt(pip)} |")
            del model
    if "4" in args.versions and args.device == "cpu":
        wkv_alone(args.length, args.embd, args.repeat)
    return 0


def wkv_alone(T: int, A: int, repeat: int) -> None:
    """The v4 prefill WKV of one layer by itself (B = 1): less exposed to a busy machine than a forward."""
    from types import SimpleNamespace

    from rwkv_music.model import native, v4
    from rwkv_music.model.wkv_chunked_v4 import wkv4_chunked

    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, T, A, generator=g), torch.randn(1, T, A, generator=g)
    w, u = -torch.rand(A, generator=g), torch.randn(A, generator=g)
    aa, bb, pp = torch.zeros(1, A), torch.zeros(1, A), torch.full((1, A), -1e30)
    paths = {"torch scan": lambda: v4._wkv_scan(k, v, aa, bb, pp, w, u),
             "chunked": lambda: wkv4_chunked(k, v, aa, bb, pp, w, u)}
    if native.kernel("rwkv4_wkv_prefill", native=True) is not None:
        paths["C loop"] = lambda: v4._native_prefill(k, v, aa, bb, pp, SimpleNamespace(decay=w, first=u))
    best = {name: timed(fn, "cpu", repeat=max(3, repeat)) for name, fn in paths.items()}
    say(f"\n| v4 WKV of one layer, B=1, T={T}, A={A} | " + " | ".join(best) + " |")
    say("|---|" + "---|" * len(best))
    say("| ms | " + " | ".join(f"{s * 1e3:.1f}" for s in best.values()) + " |")


if __name__ == "__main__":
    sys.exit(main())
