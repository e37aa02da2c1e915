"""Speed of the onnx backend against our torch backend and the `rwkv` package (82M music shapes).

Builds random-weight checkpoints with the shapes of the ABC 82M models (L12 D768 V128, head 64),
exports them to ONNX (fp32, and int8 with --int8), and measures prefill and decode tokens/s at
batch 1 on the CPU.  Prints a Markdown table; asserts nothing.  The rwkv package runs in a
subprocess because it picks its RWKV-7 class from environment variables at import time.

    python benchmarks/bench_onnx.py --quick --threads 2
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

PIP_SCRIPT = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from rwkv.model import RWKV
path, prefill, steps = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
kw = {} if sys.argv[5].startswith("7") else {"verbose": False}
model = RWKV(model=path[:-4], strategy="cpu fp32", **kw)
toks = [(i * 37) % 128 for i in range(prefill)]
with torch.no_grad():
    model.forward(toks[:8], None)
    t = time.perf_counter(); _, state = model.forward(toks, None); pre = prefill / (time.perf_counter() - t)
    for i in range(3):
        _, state = model.forward([i], state)
    t = time.perf_counter()
    for i in range(steps):
        _, state = model.forward([i % 128], state)
    dec = steps / (time.perf_counter() - t)
print(json.dumps({"prefill": pre, "decode": dec}))
"""


def measure(model: Any, prefill: int, steps: int, batch: int = 1) -> tuple[float, float, np.ndarray]:
    """(prefill tok/s, decode tok/s, logits after the prompt) through the backend protocol."""
    toks = (np.arange(batch * prefill).reshape(batch, prefill) * 37) % 128
    model.forward(toks[:, :8])  # warm up (session / kernel initialisation)
    t = time.perf_counter()
    logits, state = model.forward(toks)
    pre = batch * prefill / (time.perf_counter() - t)
    if type(logits).__module__.split(".")[0] == "torch":
        logits = logits.float().numpy()
    step = np.ones((batch, 1), dtype=np.int64)
    for _ in range(3):
        _, state = model.forward(step, state)
    t = time.perf_counter()
    for _ in range(steps):
        _, state = model.forward(step, state)
    return pre, batch * steps / (time.perf_counter() - t), np.asarray(logits)


def measure_pip(ckpt: Path, version: str, threads: int, prefill: int, steps: int) -> tuple[float, float] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    env.update({"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "OMP_NUM_THREADS": str(threads)})
    if version.startswith("7"):
        env["RWKV_V7_ON"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", PIP_SCRIPT, str(ckpt), str(threads), str(prefill), str(steps), version],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if proc.returncode != 0:
        print(f"<!-- rwkv package failed on v{version}: {proc.stderr.strip().splitlines()[-1:]} -->")  # noqa: T201
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["prefill"], res["decode"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="5.2,7", help="comma-separated RWKV versions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=256, help="prompt length for the prefill figure")
    ap.add_argument("--decode", type=int, default=128, help="single-token steps for the decode figure")
    ap.add_argument("--quick", action="store_true", help="prefill 64, decode 32")
    ap.add_argument("--int8", action="store_true", help="also time the int8 (MatMulNBits) graph")
    ap.add_argument("--no-pip", action="store_true", help="skip the rwkv package")
    args = ap.parse_args()
    if args.quick:
        args.prefill, args.decode = 64, 32

    import torch

    torch.set_num_threads(args.threads)
    import rwkv_music
    from rwkv_music.backends.onnx import export
    from rwkv_music.model.factory import random_checkpoint

    device = f"CPU {platform.processor() or platform.machine()}, {args.threads} threads"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions.split(","):
            ckpt = Path(tmp) / f"v{version}.pth"
            torch.save(random_checkpoint(version, **SHAPES), ckpt)
            graphs = {"fp32": export(ckpt, Path(tmp) / f"v{version}.onnx")}
            if args.int8:
                graphs["int8"] = export(ckpt, Path(tmp) / f"v{version}-int8.onnx", int8=True)
            results: dict[tuple[str, str], tuple[float, ...] | None] = {}
            results[("torch (ours)", "fp32")] = measure(rwkv_music.load_model(ckpt), args.prefill, args.decode)
            for dtype, path in graphs.items():
                model = rwkv_music.load_model(path, backend="onnx", threads=args.threads)
                results[("onnx", dtype)] = measure(model, args.prefill, args.decode)
                del model
            if not args.no_pip:
                results[("rwkv package", "fp32")] = measure_pip(ckpt, version, args.threads, args.prefill, args.decode)
            base = results[("torch (ours)", "fp32")]
            for (backend, dtype), res in results.items():
                if res is not None:
                    diff = f"{np.abs(res[2] - base[2]).max():.1e}" if len(res) > 2 else "-"
                    rows.append((device, backend, version, dtype, 1, res[0], res[1], res[1] / base[1], diff))

    print("| device | backend | version | dtype | batch | prefill tok/s | decode tok/s | decode vs torch | max abs Δlogits vs torch |")  # noqa: T201
    print("|---|---|---|---|---|---|---|---|---|")  # noqa: T201
    for dev, backend, version, dtype, batch, pre, dec, rel, diff in rows:
        print(f"| {dev} | {backend} | {version} | {dtype} | {batch} | {pre:.1f} | {dec:.1f} | {rel:.2f}x | {diff} |")  # noqa: T201


if __name__ == "__main__":
    main()
