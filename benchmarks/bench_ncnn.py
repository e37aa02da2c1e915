"""Speed of the ncnn backend against torch, onnxruntime and the `rwkv` package (82M music shapes).

Builds random-weight checkpoints with the shapes of the ABC 82M models (L12 D768 V128, head 64)
for RWKV v5.2 and v7, exports them to ncnn (fp32, fp16 and int8 weights; fp32 weights are also
run with ncnn's fp16 storage) and, when ``rwkv_music.backends.onnx`` works, to ONNX, and measures
prefill and decode tokens/s on the CPU.  ncnn prefill goes through the export's prefill graph
(``PREFIX.seq.param``, ``--prefill-chunk`` tokens per call, the remainder token by token); each ncnn
row is repeated as "token loop" with that graph switched off (one step-graph call per token, the
path before the prefill graph).  The last column is the largest logit difference to the torch
backend after the prompt.  Prints a Markdown table; asserts nothing.  The rwkv package runs in a subprocess because
it picks its RWKV-7 class from environment variables at import time.

    python benchmarks/bench_ncnn.py --quick --threads 1
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
from typing import Any, Callable

import numpy as np

SHAPES = {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 128}
QUICK_SHAPES = {"n_layer": 2, "n_embd": 256, "head_size": 64, "vocab_size": 128}

PIP_SCRIPT = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from rwkv.model import RWKV
path, prefill, steps = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
kw = {} if sys.argv[5].startswith("7") else {"verbose": False}
model = RWKV(model=path[:-4], strategy="cpu fp32", **kw)
toks = [(i * 37) % 128 for i in range(prefill)]
with torch.no_grad():
    model.forward(toks[:4], None)
    pre = 0.0
    for _ in range(2):
        t = time.perf_counter()
        _, state = model.forward(toks, None)
        pre = max(pre, prefill / (time.perf_counter() - t))
    for i in range(2):
        _, state = model.forward([i], state)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        _, state = model.forward([i % 128], state)
        times.append(time.perf_counter() - t)
    dec = 1 / sorted(times)[len(times) // 2]
print(json.dumps({"prefill": pre, "decode": dec}))
"""


def _numpy(x: Any) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def measure(model: Any, prefill: int, steps: int, batch: int) -> tuple[float, float, np.ndarray]:
    """(prefill tok/s, decode tok/s, logits after the prompt) through the backend protocol.

    Prefill is the best of two runs and decode uses the median step time, so that other work on a
    shared machine disturbs the numbers less.
    """
    toks = (np.arange(batch * prefill).reshape(batch, prefill) * 37) % 128
    model.forward(toks[:, :4])  # warm-up
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        logits, state = model.forward(toks)
        best = min(best, time.perf_counter() - t)
    step = np.ones((batch, 1), dtype=np.int64)
    _, state = model.forward(step, state)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        _, state = model.forward(step, state)
        times.append(time.perf_counter() - t)
    return batch * prefill / best, batch / float(np.median(times)), _numpy(logits)


def measure_pip(ckpt: Path, version: str, threads: int, prefill: int, steps: int) -> tuple[float, float] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    env.update({"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_RESCALE_LAYER": "999", "OMP_NUM_THREADS": str(threads)})
    if version.startswith("7"):
        env["RWKV_V7_ON"] = "1"
    cmd = [sys.executable, "-c", PIP_SCRIPT, str(ckpt), str(threads), str(prefill), str(steps), version]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"<!-- rwkv package failed on v{version}: {proc.stderr.strip().splitlines()[-1:]} -->")  # noqa: T201
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["prefill"], res["decode"]


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    out = fn()
    print(f"<!-- {label}: {time.perf_counter() - t:.1f} s -->", file=sys.stderr)  # noqa: T201
    return out


def run_version(version: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    import rwkv_music
    from rwkv_music.backends import ncnn as ncnn_backend
    from rwkv_music.backends import ncnn_export
    from rwkv_music.model.factory import save_random_checkpoint

    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.tiny else SHAPES
    ckpt = _timed(f"checkpoint v{version}", lambda: save_random_checkpoint(work / f"v{version}.pth", version, **shapes))
    rows: list[dict[str, Any]] = []

    def add(backend: str, dtype: str, batch: int, model: Any, ref: np.ndarray | None) -> np.ndarray:
        pre, dec, logits = measure(model, args.prompt, args.steps, batch)
        diff = float(np.abs(logits - ref).max()) if ref is not None else 0.0
        rows.append({"backend": backend, "version": version, "dtype": dtype, "batch": batch,
                     "prefill": pre, "decode": dec, "diff": diff})
        return logits

    torch_model = rwkv_music.load_model(ckpt)
    refs = {b: add("torch", "fp32", b, torch_model, None) for b in args.batches}
    del torch_model
    for dtype, fp16 in (("fp32", False), ("fp32", True), ("fp16", True), ("int8", False)):
        if dtype not in args.ncnn_dtypes:
            continue
        param = work / f"v{version}-{dtype}.param"
        if not param.exists():
            _timed(f"ncnn export v{version} {dtype}",
                   lambda: ncnn_export.export(ckpt, param, dtype, prefill_chunk=args.prefill_chunk))
        model = ncnn_backend.load(param, num_threads=args.threads, fp16=fp16)
        label = f"{dtype} weights" + (", fp16 storage" if fp16 else "")
        for b in args.batches:
            add("ncnn", label, b, model, refs[b])
            if model.prefill:
                model.prefill = False
                add("ncnn", label + ", token loop", b, model, refs[b])
                model.prefill = True
    if not args.skip_onnx:
        try:
            from rwkv_music.backends import onnx as onnx_backend
            from rwkv_music.backends import onnx_export

            path = work / f"v{version}.onnx"
            if not path.exists():
                _timed(f"onnx export v{version}", lambda: onnx_export.export(ckpt, path))
            model = onnx_backend.load(path, threads=args.threads)
            add("onnx", "fp32", 1, model, refs[1])
        except Exception as exc:  # the onnx backend is optional here
            print(f"<!-- onnx skipped: {type(exc).__name__}: {exc} -->")  # noqa: T201
    if not args.skip_pip:
        res = measure_pip(ckpt, version, args.threads, args.prompt, args.steps)
        if res:
            rows.append({"backend": "rwkv pip 0.8", "version": version, "dtype": "fp32", "batch": 1,
                         "prefill": res[0], "decode": res[1], "diff": None})
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    device = f"CPU ({cpu}, {args.threads} thread{'s' * (args.threads > 1)})"
    shapes = QUICK_SHAPES if args.tiny else SHAPES
    lines = [f"Random weights, L{shapes['n_layer']} D{shapes['n_embd']} V{shapes['vocab_size']}, prompt {args.prompt}, "
             f"{args.steps} decode steps.", "",
             "| device | backend | version | dtype | batch | prefill tok/s | decode tok/s "
             "| max abs logit diff vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["diff"] is None or r["backend"] == "torch" else f"{r['diff']:.1e}"
        lines.append(f"| {device} | {r['backend']} | {r['version']} | {r['dtype']} | {r['batch']} | "
                     f"{r['prefill']:.1f} | {r['decode']:.1f} | {diff} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (16 prompt tokens, 16 decode steps, batch 1)")
    ap.add_argument("--tiny", action="store_true", help="2-layer D256 models instead of the 82M shapes (smoke test)")
    ap.add_argument("--versions", default="5.2,7", help="comma-separated RWKV versions")
    ap.add_argument("--threads", type=int, default=1, help="threads per backend (the machine is shared)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,4; quick: 1)")
    ap.add_argument("--ncnn-dtypes", default="fp32,fp16,int8", help="ncnn exports to time")
    ap.add_argument("--prefill-chunk", type=int, default=16, help="tokens per ncnn prefill-graph call (0: none)")
    ap.add_argument("--workdir", default=None, help="where checkpoints and exports go (default: a temp dir)")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--skip-pip", action="store_true")
    args = ap.parse_args(argv)
    args.prompt, args.steps = (16, 16) if args.quick else (64, 64)
    args.batches = [int(b) for b in (args.batches or ("1" if args.quick else "1,4")).split(",")]
    args.ncnn_dtypes = set(args.ncnn_dtypes.split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for version in args.versions.split(","):
            rows += run_version(version.strip(), work, args)
    print(report(rows, args))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
