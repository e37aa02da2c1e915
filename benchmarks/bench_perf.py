"""Decode speed against the memory-bandwidth roofline: ours fp32 and int8 next to the `rwkv` package.

Usage::

    python benchmarks/bench_perf.py                      # L12 D768 shapes, 1 and 2 threads
    python benchmarks/bench_perf.py --quick              # 2-layer D256, short (smoke run)
    python benchmarks/bench_perf.py --versions 7 --threads 1 --batches 1,32

One subprocess per (version, threads) loads the package's model and ours in fp32 and int8, then
measures them *interleaved* (step of each in turn, medians), so the load of a shared machine hits
all of them alike; ratios are only meaningful within one run.  The same process measures the
machine's read bandwidth (sum over a buffer far larger than the caches) and turns single-stream
decode into a fraction of the roofline ``bandwidth / bytes of weights read per token``.  Peak RSS
comes from separate short processes (one model each).  Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_runtime import SHAPES, _peak_rss_mb, make_checkpoint  # noqa: E402

TARGETS = {"4": 1.3, "5.2": 4.0, "7": 4.0}  # fp32 single stream over the package (issue 9)
BANDWIDTH_MB = 512  # buffer for the read-bandwidth probe


def read_bandwidth(torch, repeats: int = 7) -> float:
    """Median GB/s of summing a BANDWIDTH_MB fp32 buffer (the read roofline of this process)."""
    buf = torch.ones(BANDWIDTH_MB * 2**20 // 4)
    buf.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes(weights) -> tuple[int, int]:
    """(bytes read per decode step, embedding bytes): every tensor except the gathered rows."""
    import dataclasses

    import torch

    from rwkv_music.model.quant import Int8Matrix

    total, emb = 0, 0

    def visit(obj, name: str = "") -> None:
        nonlocal total, emb
        if isinstance(obj, torch.Tensor):
            if name in ("emb", "s_emb"):  # one row gathered per token
                emb += obj.numel() * obj.element_size()
            else:
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, Int8Matrix):
            total += obj.nbytes
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f.name)
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, name)

    visit(weights)
    return total, emb


# -- workers ---------------------------------------------------------------------------------

def _pip_model(args):
    os.environ.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0", RWKV_RESCALE_LAYER="999")
    if args.version.startswith("7"):
        os.environ["RWKV_V7_ON"] = "1"
    from rwkv.model import RWKV

    kw = {} if args.version.startswith("7") else {"verbose": False}
    return RWKV(model=args.model[: -len(".pth")], strategy="cpu fp32", **kw)


def worker_speed(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from rwkv_music.backends.torch import load
    from rwkv_music.model.quant import quantize_weights

    pip = None if args.skip_pip else _pip_model(args)
    ours = {"fp32": load(args.model)}
    ours["int8"] = load(args.model)
    quantize_weights(ours["int8"]._weights, args.int8_kernel)
    V = ours["fp32"].config.vocab_size
    out: dict = {"bandwidth_gbs": read_bandwidth(torch)}
    out["bytes_fp32"], out["emb_bytes"] = weight_bytes(ours["fp32"]._weights)
    out["bytes_int8"], _ = weight_bytes(ours["int8"]._weights)
    gen = torch.Generator().manual_seed(0)

    # single stream, interleaved: pip, ours fp32, ours int8
    steps: dict = {}
    if pip is not None:
        pstate = [pip.forward([1, 2, 3], None)[1]]
        steps["pip"] = lambda: pstate.__setitem__(0, pip.forward([int(torch.randint(0, V, ()))], pstate[0])[1])
    for name, m in ours.items():
        box = [m.new_state(1)]
        steps[name] = (lambda m=m, box=box: box.__setitem__(0, m.forward(torch.randint(0, V, (1, 1)), box[0])[1]))
    times = {k: [] for k in steps}
    for i in range(args.decode_steps + 2):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    for k, ts in times.items():
        out[f"{k}_b1"] = 1 / statistics.median(ts)

    # batched decode, fp32 and int8 interleaved
    for B in args.batches:
        if B == 1:
            continue
        boxes = {k: [m.new_state(B)] for k, m in ours.items()}
        tok = torch.randint(0, V, (B, 1), generator=gen)
        times = {k: [] for k in ours}
        for i in range(max(4, args.decode_steps // 2) + 1):
            for k, m in ours.items():
                t0 = time.perf_counter()
                boxes[k][0] = m.forward(tok, boxes[k][0])[1]
                if i:
                    times[k].append(time.perf_counter() - t0)
        for k in ours:
            out[f"{k}_b{B}"] = B / statistics.median(times[k])

    # prefill (best of repeats)
    prompt = torch.randint(0, V, (1, args.prompt), generator=gen)
    runs = {k: (lambda m=m: m.forward(prompt)) for k, m in ours.items()}
    if pip is not None:
        runs["pip"] = lambda: pip.forward(prompt[0].tolist(), None)
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    for k, t in best.items():
        out[f"{k}_prefill"] = args.prompt / t

    # int8 agreement with fp32 on random prompts (every position's top-1)
    prompts = torch.randint(0, V, (args.agree_rows, 16), generator=gen)
    ref = ours["fp32"].forward(prompts, all_logits=True)[0]
    q = ours["int8"].forward(prompts, all_logits=True)[0]
    out["int8_top1_agree"] = float((ref.argmax(-1) == q.argmax(-1)).float().mean())
    out["fp32_top1_prob"] = float(ref.softmax(-1).amax(-1).mean())
    return out


def worker_rss(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    if args.impl == "pip":
        m = _pip_model(args)
        m.forward(list(range(args.prompt)), None)
    else:
        from rwkv_music.backends.torch import load
        from rwkv_music.model.quant import quantize_weights

        m = load(args.model)
        if args.impl == "int8":
            quantize_weights(m._weights, args.int8_kernel)
        m.forward(torch.zeros((1, args.prompt), dtype=torch.long))
    return {"rss_mb": _peak_rss_mb()}


# -- driver ----------------------------------------------------------------------------------

def _run(args, *extra: str) -> dict | None:
    cmd = [sys.executable, __file__, *extra, "--model", args.model, "--version", args.version,
           "--threads", str(args.threads), "--prompt", str(args.prompt), "--decode-steps", str(args.decode_steps),
           "--repeats", str(args.repeats), "--batches", ",".join(map(str, args.batches)),
           "--int8-kernel", args.int8_kernel, "--agree-rows", str(args.agree_rows)]
    cmd += ["--skip-pip"] if args.skip_pip else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(f"[{' '.join(extra)} v{args.version}] failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(x, d: int = 1) -> str:
    return "—" if x is None else f"{x:,.{d}f}"


def report(rows: list[tuple[str, int, dict]], args) -> str:
    import platform

    lines = [f"device: cpu ({platform.machine()}), {os.cpu_count()} cores, int8 kernel {args.int8_kernel}, "
             f"prompt {args.prompt}, decode medians of {args.decode_steps} interleaved steps", ""]
    cols = ["version", "threads", "impl", "prefill tok/s"] + [f"B={b} tok/s" for b in args.batches]
    cols += ["weights MB read/token", "peak RSS MB", "roofline B=1"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    summary = []
    for version, threads, r in rows:
        bw = r["bandwidth_gbs"]
        for impl in ("pip", "fp32", "int8"):
            if f"{impl}_b1" not in r:
                continue
            nbytes = r.get(f"bytes_{impl}", r["bytes_fp32"])
            roof = r[f"{impl}_b1"] * nbytes / (bw * 1e9)
            cells = [version, str(threads), {"pip": "rwkv pip", "fp32": "ours fp32", "int8": "ours int8"}[impl],
                     _f(r.get(f"{impl}_prefill"))] + [_f(r.get(f"{impl}_b{b}")) for b in args.batches]
            cells += [_f(nbytes / 2**20, 0), _f(r.get(f"rss_{impl}"), 0), f"{roof:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
        pip1 = r.get("pip_b1")
        big = 32 if 32 in args.batches else max(args.batches)
        summary.append("| " + " | ".join([
            version, str(threads), f"{bw:.1f}",
            f"{r['fp32_b1'] / pip1:.2f}x (≥{TARGETS[version]:g}x)" if pip1 else "—",
            f"{r['int8_b1'] / r['fp32_b1']:.2f}x (≥1.7x)",
            f"{r['int8_top1_agree']:.1%} (≥99%; mean top-1 p {r['fp32_top1_prob']:.2f})",
            (f"{r.get(f'fp32_b{big}', 0) / pip1:.1f}x / {r.get(f'int8_b{big}', 0) / pip1:.1f}x (≥20x)"
             if pip1 else "—"),
        ]) + " |")
    lines += ["", f"| version | threads | read GB/s | fp32 B=1 ours/pip | int8/fp32 B=1 | int8 top-1 agreement "
              f"| B={32 if 32 in args.batches else max(args.batches)} aggregate fp32 / int8 over pip B=1 |",
              "|---|---|---|---|---|---|---|"] + summary
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--versions", default="5.2,7,4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--prompt", type=int, default=None)
    ap.add_argument("--decode-steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--int8-kernel", default="weight_only", choices=["weight_only", "dynamic", "dequant"])
    ap.add_argument("--agree-rows", type=int, default=16)
    ap.add_argument("--skip-pip", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", choices=["speed", "rss"], help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--version", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.prompt = args.prompt or (32 if args.quick else 128)
    args.decode_steps = args.decode_steps or (6 if args.quick else 24)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker_speed(args) if args.worker == "speed" else worker_rss(args)))  # noqa: T201
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for version in args.versions.split(","):
            if version not in SHAPES:
                raise SystemExit(f"unknown version {version}; choose from {', '.join(SHAPES)}")
            sub = argparse.Namespace(**vars(args))
            sub.version, sub.model = version, str(make_checkpoint(version, workdir, args.quick))
            for threads in str(args.threads).split(","):
                sub.threads = int(threads)
                res = _run(sub, "--worker", "speed")
                if res is None:
                    continue
                if not args.skip_rss and threads == str(args.threads).split(",")[0]:  # RSS: once per version
                    for impl in ("fp32", "int8") + (() if args.skip_pip else ("pip",)):
                        rss = _run(sub, "--worker", "rss", "--impl", impl)
                        res[f"rss_{impl}"] = rss and rss["rss_mb"]
                rows.append((version, sub.threads, res))
    print(report(rows, args))  # noqa: T201 - a benchmark prints its table
    return 0


if __name__ == "__main__":
    sys.exit(main())
