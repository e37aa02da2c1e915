"""Speed of the onnx backend against our torch backend and the `rwkv` package (82M music shapes).

Builds random-weight checkpoints with the shapes of the ABC 82M models (L12 D768 V128, head 64),
exports them to ONNX in each of ``--dtypes`` (fp32, fp16, and the weight storages of
rwkv_music/backends/onnx_weights.py: int8 per channel, int8-dyn = the activation-quantising
MatMulNBits graph, int4 MatMulNBits, bf16), and measures prefill and decode tokens/s at batch 1 on
the CPU.  The in-process backends are timed in alternating rounds and every figure is a median over
rounds (prefill) or single steps (decode), so load from other processes on a shared machine hits
all of them alike.  The rwkv package runs in a subprocess (it picks its RWKV-7 class from
environment variables at import time).  ``--agree`` adds, for the shipped models (abc-default,
midi-default), each dtype's top-1 agreement with the fp32 graph and max |Δlogit| on prompts sampled
from the fp32 model (temperature 1, as benchmarks/bench_perf.py does for torch int8).  Prints
Markdown tables; asserts nothing.

    python benchmarks/bench_onnx.py --quick --threads 2 --dtypes fp32,int8,int4,bf16 --agree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 128}
# --dtypes name -> export() arguments
ONNX_KINDS: dict[str, dict[str, Any]] = {
    "fp32": {}, "fp16": {"dtype": "fp16"}, "bf16": {"dtype": "bf16"}, "int8": {"dtype": "int8"},
    "int8-dyn": {"dtype": "int8", "int8_mode": "dynamic"}, "int4": {"dtype": "int4"},
}
SHIPPED = {"abc-default": 2, "midi-default": 0}  # first token of a document (model cards: abc bos 2, midi <pad> 0)

PIP_SCRIPT = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from rwkv.model import RWKV
path, prefill, steps, rounds = sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
kw = {} if sys.argv[5].startswith("7") else {"verbose": False}
model = RWKV(model=path[:-4], strategy="cpu fp32", **kw)
toks = [(i * 37) % 128 for i in range(prefill)]
pre, dec = [], []
with torch.no_grad():
    model.forward(toks[:8], None)
    for _ in range(rounds):
        t = time.perf_counter(); _, state = model.forward(toks, None); pre.append(time.perf_counter() - t)
        for i in range(steps):
            t = time.perf_counter(); _, state = model.forward([1], state); dec.append(time.perf_counter() - t)
print(json.dumps({"prefill": prefill / statistics.median(pre), "decode": 1 / statistics.median(dec[1:])}))
"""


class Timer:
    """Prefill and per-step decode times of one backend, collected over several rounds."""

    def __init__(self, model: Any, prefill: int) -> None:
        self.model = model
        self.toks = (np.arange(prefill).reshape(1, prefill) * 37) % 128
        self.prefill: list[float] = []
        self.decode: list[float] = []
        self.logits: np.ndarray | None = None
        model.forward(self.toks[:, :8])  # warm up (session / kernel initialisation)

    def round(self, steps: int) -> None:
        t = time.perf_counter()
        logits, state = self.model.forward(self.toks)
        self.prefill.append(time.perf_counter() - t)
        if self.logits is None:
            self.logits = logits.float().numpy() if hasattr(logits, "float") else np.asarray(logits)
        step = np.ones((1, 1), dtype=np.int64)
        _, state = self.model.forward(step, state)
        for _ in range(steps):
            t = time.perf_counter()
            _, state = self.model.forward(step, state)
            self.decode.append(time.perf_counter() - t)

    def result(self) -> tuple[float, float]:
        return self.toks.shape[1] / float(np.median(self.prefill)), 1.0 / float(np.median(self.decode))


def measure_pip(
    ckpt: Path, version: str, threads: int, prefill: int, steps: int, rounds: int
) -> tuple[float, float] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    env.update({"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "OMP_NUM_THREADS": str(threads)})
    if version.startswith("7"):
        env["RWKV_V7_ON"] = "1"
    args = [str(ckpt), str(threads), str(prefill), str(steps), version, str(rounds)]
    proc = subprocess.run([sys.executable, "-c", PIP_SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        print(f"<!-- rwkv package failed on v{version}: {proc.stderr.strip().splitlines()[-1:]} -->")  # noqa: T201
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["prefill"], res["decode"]


def sampled_prompts(model: Any, start: int, rows: int, length: int, seed: int) -> np.ndarray:
    """``rows`` prompts of ``length`` tokens drawn from the torch ``model`` itself (temperature 1) after ``start``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    toks = torch.full((rows, 1), start, dtype=torch.long)
    logits, state = model.forward(toks)
    out = [toks]
    for _ in range(length - 1):
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        out.append(nxt)
        logits, state = model.forward(nxt, state)
    return torch.cat(out, 1).numpy()


def shipped_agreement(kinds: list[str], tmp: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """Rows (model, dtype, top-1 agreement, max |Δlogit|) of each ONNX dtype against the fp32 graph."""
    import rwkv_music
    from rwkv_music.assets import resolve_model
    from rwkv_music.backends.onnx_export import export

    rows = []
    for name, start in SHIPPED.items():
        ckpt = resolve_model(name)
        if not ckpt.is_file():
            rows.append((name, "-", f"missing ({ckpt})", "-"))
            continue
        prompts = sampled_prompts(rwkv_music.load_model(ckpt), start, args.agree_rows, args.agree_len, seed=1)
        logits = {}
        for kind in dict.fromkeys(["fp32", *kinds]):
            path = export(ckpt, tmp / f"{name}-{kind}.onnx", **ONNX_KINDS[kind])
            model = rwkv_music.load_model(path, backend="onnx", threads=args.threads)
            logits[kind] = model.forward(prompts, all_logits=True)[0]
        ref = logits["fp32"]
        for kind, got in logits.items():
            if kind != "fp32":
                agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
                rows.append((f"{name} ({prompts.shape[0]}x{prompts.shape[1]} sampled)", kind, f"{agree:.1%}",
                             f"{float(np.abs(got - ref).max()):.3f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="5.2,7", help="comma-separated RWKV versions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=256, help="prompt length for the prefill figure")
    ap.add_argument("--decode", type=int, default=64, help="single-token steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    ap.add_argument("--quick", action="store_true", help="prefill 64, 16 steps, 3 rounds")
    ap.add_argument("--dtypes", default="fp32", help=f"comma-separated ONNX dtypes of {', '.join(ONNX_KINDS)}")
    ap.add_argument("--int8", action="store_true", help="the same as adding int8 to --dtypes")
    ap.add_argument("--agree", action="store_true", help="top-1 agreement of each dtype on the shipped models")
    ap.add_argument("--agree-rows", type=int, default=16, help="sampled prompts per shipped model")
    ap.add_argument("--agree-len", type=int, default=128, help="tokens per sampled prompt")
    ap.add_argument("--no-pip", action="store_true", help="skip the rwkv package")
    args = ap.parse_args()
    if args.quick:
        args.prefill, args.decode, args.rounds = 64, 16, 3
    kinds = list(dict.fromkeys(args.dtypes.split(",") + (["int8"] if args.int8 else [])))
    unknown = [k for k in kinds if k not in ONNX_KINDS]
    if unknown:
        ap.error(f"--dtypes: unknown {unknown}; choose from {', '.join(ONNX_KINDS)}")

    import torch

    torch.set_num_threads(args.threads)
    import rwkv_music
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.model.factory import random_checkpoint

    device = f"CPU {platform.machine()}, {args.threads} thread(s)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions.split(","):
            ckpt = Path(tmp) / f"v{version}.pth"
            torch.save(random_checkpoint(version, **SHAPES), ckpt)
            timers = {("torch (ours)", "fp32"): Timer(rwkv_music.load_model(ckpt), args.prefill)}
            graphs = {kind: export(ckpt, Path(tmp) / f"v{version}-{kind}.onnx", **ONNX_KINDS[kind]) for kind in kinds}
            for dtype, path in graphs.items():
                timers[("onnx", dtype)] = Timer(
                    rwkv_music.load_model(path, backend="onnx", threads=args.threads), args.prefill
                )
            for _ in range(args.rounds):
                for timer in timers.values():
                    timer.round(args.decode)
            base = timers[("torch (ours)", "fp32")]
            for (backend, dtype), timer in timers.items():
                pre, dec = timer.result()
                diff = float(np.abs(timer.logits - base.logits).max())
                rows.append((backend, version, dtype, pre, dec, dec / base.result()[1], f"{diff:.1e}"))
            timers.clear()
            if not args.no_pip:
                res = measure_pip(ckpt, version, args.threads, args.prefill, args.decode, args.rounds)
                if res is not None:
                    rows.append(("rwkv package", version, "fp32", res[0], res[1], res[1] / base.result()[1], "-"))

        agree = shipped_agreement(kinds, Path(tmp), args) if args.agree else []

    print(  # noqa: T201
        "| device | backend | version | dtype | batch | prefill tok/s | decode tok/s | decode vs torch "
        "| max abs Δlogits vs torch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")  # noqa: T201
    for backend, version, dtype, pre, dec, rel, diff in rows:
        print(f"| {device} | {backend} | {version} | {dtype} | 1 | {pre:.1f} | {dec:.1f} | {rel:.2f}x | {diff} |")  # noqa: T201
    if agree:
        print("\n| shipped model | dtype | top-1 agreement with the fp32 graph | max abs Δlogits |")  # noqa: T201
        print("|---|---|---|---|")  # noqa: T201
        for row in agree:
            print("| " + " | ".join(row) + " |")  # noqa: T201


if __name__ == "__main__":
    main()
