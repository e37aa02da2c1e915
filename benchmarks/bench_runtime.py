"""Runtime speed, memory, int8/int4 accuracy: rwkv_music's torch backend beside the `rwkv` package (issues 9, 20).

Usage::

    python benchmarks/bench_runtime.py                 # the music models' shapes (L12 D768), 1 thread
    python benchmarks/bench_runtime.py --quick         # 2-layer D256, few steps: a smoke run
    python benchmarks/bench_runtime.py --versions 7 --threads 2 --batches 1,32

Prints, in one run, one Markdown table per version (rows: the package fp32, ours fp32, ours int8
with each kernel, ours group-wise int4, ours bf16 where this CPU runs bf16 fast; columns: decode tok/s at each batch
size, prefill tok/s, peak RSS, the fraction of the read-bandwidth roofline at B = 1 and the speed
over the package's single stream), then int8 and int4 top-1 agreement with fp32 (random checkpoints and
the shipped trained models), then the issue's targets with the measured value and whether it is
met.  Asserts nothing.

Models are random checkpoints in the BlinkDL layout with the shapes of the music models:
v4 "MIDI-120M" (L12 D768 V20096), v5.2 and v7 "ABC-82M" (L12 D768 V128).  The measurements run in
subprocesses (:mod:`bench_perf` has the workers): per version one process times every
implementation *interleaved* (a step of each in turn, medians) and measures the read bandwidth,
so ratios compare like with like on a shared machine; peak RSS comes from one short process per
implementation.  The roofline is ``bandwidth / bytes of weights read per token``: the fastest a
single stream can decode when it must stream every weight once per token.

"ours int4" is what ``dtype="int4"`` loads: 4-bit groups of 64, with the head, the time-mix output
projections (``rwkv_music.model.quant.INT4_INT8_FIELDS``) and layer 0 (``INT4_INT8_LAYERS``) kept
per-channel int8, so its agreement and speed are those of that mix; "int4-all" puts every layer
matrix in int4 (head int8); both have
its codes chosen by GPTQ on sequences the model samples itself at load (``quantize_int4``'s default
calibration; the random checkpoints are calibrated the same way, which makes their int4 loads slow).

Random checkpoints have flatter logits than trained ones, so their int8 top-1 agreement is a
pessimistic proxy; the shipped abc/midi models are measured on prompts sampled from the fp32
model itself (in-distribution) and on uniform random token ids.

Batched decode allocates a fresh state per call (states are values), whose pages are faulted in
each time: at B = 32 that is 75 MB a token for the v7 shape.  Where the torch backend has
``forward(..., inplace=True)`` (the state overwritten in its own memory) an extra row times it.
``--thp`` runs with torch's ``THP_MEM_ALLOC_ENABLE=1`` (huge pages for big CPU tensors), a
process setting for users to choose that makes fresh states cheaper on Linux.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_perf import LABELS, LOADABLE, SHAPES, make_checkpoint, worker_main  # noqa: E402

SPEEDUP_TARGETS = {"4": 1.3, "5.2": 4.0, "7": 4.0}  # fp32 B=1 over the package's B=1 (issue 9)
ROOFLINE_TARGET = 0.70  # ours fp32 B=1 / read-bandwidth roofline
INT8_SPEEDUP_TARGET = 1.7  # int8 B=1 over our fp32 B=1
AGREE_TARGET = 0.99  # int8 top-1 agreement with fp32
INT4_SPEEDUP_TARGET = 1.3  # int4 B=1 over our int8 B=1 (issue 20)
INT4_AGREE_TARGET = 0.98  # int4 top-1 agreement with fp32 on the shipped models (issue 20)
BATCH_TARGET = 20.0  # B=32 aggregate over the package's B=1
ROW_ORDER = ("pip", "fp32", "fp32-inplace", "int8", "int8-wo", "int8-dyn", "int4", "int4-all", "bf16")


# -- driver ----------------------------------------------------------------------------------

def run_worker(args: argparse.Namespace, worker: str, version: str = "", model: str = "",
               impl: str = "") -> dict | None:
    """Run one worker in a fresh process; its last stdout line is the JSON result (None on failure)."""
    cmd = [sys.executable, str(HERE / "bench_runtime.py"), "--worker", worker, "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--decode-steps", str(args.decode_steps), "--repeats", str(args.repeats),
           "--batches", ",".join(map(str, args.batches)), "--agree-rows", str(args.agree_rows),
           "--agree-len", str(args.agree_len)]
    cmd += ["--version", version, "--model", model] if model else []
    cmd += ["--impl", impl] if impl else []
    cmd += ["--skip-pip"] if args.skip_pip else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    if args.thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(f"[{worker} {impl} v{version}] failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """Per version the speed worker's result (plus ``rss_<impl>``), and the trained-model agreement."""
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for version in args.versions:
            model = make_checkpoint(version, workdir, args.quick)
            res = run_worker(args, "speed", version, str(model))
            if res is None:
                continue
            res["shape"] = model.stem.split("-", 2)[2]
            if not args.skip_rss:
                for impl in LOADABLE[:2] if args.quick else LOADABLE:  # quick: the package and ours fp32
                    if f"{impl}_b1" in res:
                        rss = run_worker(args, "rss", version, str(model), impl)
                        res[f"rss_{impl}"] = rss and rss["rss_mb"]
            results[version] = res
            if not args.workdir:
                model.unlink()
    trained = None if args.skip_trained else run_worker(args, "agree")
    return results, trained


# -- report ----------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _roofline(r: dict, impl: str) -> float:
    return r[f"{impl}_b1"] * r[f"{impl}_bytes"] / (r["bandwidth_gbs"] * 1e9)


def version_table(version: str, r: dict, args: argparse.Namespace) -> list[str]:
    mb = {k: r[f"{k}_bytes"] / 2**20 for k in LOADABLE if f"{k}_bytes" in r}
    lines = [f"### v{version} ({r['shape']}), read bandwidth {r['bandwidth_gbs']:.1f} GB/s, weights read per "
             "token " + ", ".join(f"{k} {v:,.0f} MB" for k, v in mb.items() if k != "pip"), ""]
    cols = ["impl"] + [f"decode B={b} tok/s" for b in args.batches]
    cols += ["prefill tok/s", "peak RSS MB", "roofline B=1", "B=1 / pip B=1"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    pip1 = r.get("pip_b1")
    for impl in ROW_ORDER:
        if f"{impl}_b1" not in r:
            continue
        cells = [LABELS[impl]] + [_f(r.get(f"{impl}_b{b}")) for b in args.batches]
        cells += [_f(r.get(f"{impl}_prefill")), _f(r.get(f"rss_{impl}"), 0), f"{_roofline(r, impl):.0%}",
                  f"{r[f'{impl}_b1'] / pip1:.2f}x" if pip1 else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def agreement_table(results: dict, trained: dict | None) -> list[str]:
    lines = ["### int8 and int4 top-1 agreement with fp32 (every position of every prompt)", "",
             "| model | prompts | fp32 mean top-1 prob | int8 default kernel | int8 weight_only | int8 dynamic "
             "| int4 | int4-all |", "|---|---|---|---|---|---|---|---|"]
    kinds = ("int8", "int8-wo", "int8-dyn", "int4", "int4-all")
    for version, r in results.items():
        lines.append(f"| random v{version} {r['shape']} | uniform random ids | {r['fp32_top1_prob']:.2f} | "
                     + " | ".join(f"{r[f'{k}_agree']:.1%}" for k in kinds) + " |")
    for mode, r in (trained or {}).items():
        if "error" in r:
            lines.append(f"| {mode}-default | — | {r['error']} | — | — | — | — | — |")
            continue
        for name, label in (("sampled", "sampled from the fp32 model"), ("uniform", "uniform random ids")):
            lines.append(f"| {mode}-default {r['shape']} | {label} | {r[f'{name}_top1_prob']:.2f} | "
                         + " | ".join(f"{r[f'{k}_{name}']:.1%}" for k in kinds) + " |")
    return lines + [""]


def _batch_extras(r: dict, big: int, pip1: float | None) -> str:
    others = [(LABELS[k].removeprefix("ours "), r.get(f"{k}_b{big}")) for k in ("fp32-inplace", "int8", "int8-dyn")]
    shown = [f"{name} {v / pip1:.1f}x" for name, v in others if v and pip1]
    return f" ({'; '.join(shown)})" if shown else ""


def target_table(results: dict, trained: dict | None, args: argparse.Namespace) -> list[str]:
    """Issue 9's targets; int8 ones count the default kernel (native where it builds); the others are shown beside."""
    rows: list[tuple[str, str, str, bool | None]] = []  # target, measured, ceiling, met

    def add(target: str, value: float | None, goal: float, fmt: str, ceiling: str = "—", extra: str = "") -> None:
        met = None if value is None else value >= goal
        rows.append((target, ("—" if value is None else fmt.format(value)) + extra, ceiling, met))

    for v, r in results.items():
        bw = r["bandwidth_gbs"] * 1e9
        pip1 = r.get("pip_b1")
        ceil = f"{bw / r['fp32_bytes'] / pip1:.2f}x" if pip1 else "—"
        add(f"v{v} fp32 B=1 ≥ {SPEEDUP_TARGETS[v]:g}x the package", pip1 and r["fp32_b1"] / pip1,
            SPEEDUP_TARGETS[v], "{:.2f}x", ceil)
        add(f"v{v} fp32 B=1 ≥ {ROOFLINE_TARGET:.0%} of the read roofline", _roofline(r, "fp32"), ROOFLINE_TARGET,
            "{:.1%}", "100%")
        ceil8 = f"{bw / r['int8_bytes'] / r['fp32_b1']:.2f}x"
        add(f"v{v} int8 B=1 ≥ {INT8_SPEEDUP_TARGET:g}x our fp32 B=1", r["int8_b1"] / r["fp32_b1"],
            INT8_SPEEDUP_TARGET, "{:.2f}x", ceil8, f" (weight_only {r['int8-wo_b1'] / r['fp32_b1']:.2f}x, "
            f"dynamic {r['int8-dyn_b1'] / r['fp32_b1']:.2f}x)")
        ceil4 = f"{bw / r['int4_bytes'] / r['int8_b1']:.2f}x"
        add(f"v{v} int4 B=1 ≥ {INT4_SPEEDUP_TARGET:g}x our int8 B=1", r["int4_b1"] / r["int8_b1"],
            INT4_SPEEDUP_TARGET, "{:.2f}x", ceil4, f" (int4 over fp32 {r['int4_b1'] / r['fp32_b1']:.2f}x; "
            f"int4-all {r['int4-all_b1'] / r['int8_b1']:.2f}x int8)")
        add(f"v{v} random model: int8 top-1 agreement ≥ {AGREE_TARGET:.0%}", r["int8_agree"], AGREE_TARGET,
            "{:.1%}", extra=f" (weight_only {r['int8-wo_agree']:.1%}, dynamic {r['int8-dyn_agree']:.1%})")
        big = 32 if 32 in args.batches else max(args.batches)
        agg = r.get(f"fp32_b{big}")
        # compute-bound batched decode: 2 flops per weight (fp32 bytes / 4) per token
        ceil_b = f"{r['gemm_gflops'] * 1e9 / (r['fp32_bytes'] / 2) / pip1:.1f}x (fp32 GEMM)" if pip1 else "—"
        add(f"v{v} fp32 B={big} aggregate ≥ {BATCH_TARGET:g}x the package's B=1",
            agg / pip1 if (agg and pip1) else None, BATCH_TARGET, "{:.1f}x", ceil_b,
            extra=_batch_extras(r, big, pip1))
    for mode, r in (trained or {}).items():
        if "error" not in r:
            add(f"{mode}-default: int4 top-1 agreement ≥ {INT4_AGREE_TARGET:.0%} (sampled prompts)",
                r["int4_sampled"], INT4_AGREE_TARGET, "{:.1%}", extra=f" (uniform {r['int4_uniform']:.1%}; "
                f"int4-all {r['int4-all_sampled']:.1%})")
            add(f"{mode}-default: int8 top-1 agreement ≥ {AGREE_TARGET:.0%} (sampled prompts)", r["int8_sampled"],
                AGREE_TARGET, "{:.1%}", extra=f" (uniform {r['int8_uniform']:.1%}; weight_only "
                f"{r['int8-wo_sampled']:.1%}, dynamic {r['int8-dyn_sampled']:.1%})")
    lines = ["### Targets (issues 9 and 20)" + (" — quick shapes, not the issue's" if args.quick else ""), "",
             "| target | measured | ceiling (100% of the read roofline, or of the GEMM rate) | met |",
             "|---|---|---|---|"]
    for target, measured, ceiling, met in rows:
        lines.append(f"| {target} | {measured} | {ceiling} | {'—' if met is None else 'yes' if met else 'no'} |")
    return lines


def report(results: dict, trained: dict | None, args: argparse.Namespace) -> str:
    any_r = next(iter(results.values()), {})
    slow = any_r.get("bf16_slowdown")
    bf16 = ("—" if slow is None else
            f"bf16 matvec {slow:.1f}x the fp32 time, so no bf16 row" if slow >= 1.0
            else f"bf16 matvec {slow:.2f}x fp32")
    gemm = f"fp32 GEMM {any_r['gemm_gflops']:.0f} GFLOP/s" if "gemm_gflops" in any_r else ""
    kernel = any_r.get("int8_kernel", "?")
    lines = [f"device: cpu ({platform.machine()}, {os.cpu_count()} cores), torch threads {args.threads}; "
             f"{gemm}; {bf16}; int8 default kernel: {kernel}; "
             f"decode: medians of {args.decode_steps} interleaved calls (B tokens per call); prefill: {args.prompt} "
             f"tokens, best of {args.repeats}{'; THP_MEM_ALLOC_ENABLE=1' if args.thp else ''}", ""]
    for version, r in results.items():
        lines += version_table(version, r, args)
    lines += agreement_table(results, trained)
    lines += target_table(results, trained, args)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2-layer D256 models, short runs, peak RSS of the package and ours fp32 only (smoke test)")
    ap.add_argument("--versions", default="5.2,7,4", help="comma-separated, from 4, 5.2, 7")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--batches", default="1,8,32,128", help="decode batch sizes (1 must be among them)")
    ap.add_argument("--prompt", type=int, default=None, help="prefill length (default 128, quick 32)")
    ap.add_argument("--decode-steps", type=int, default=None, help="timed B=1 decode calls (default 24, quick 6)")
    ap.add_argument("--repeats", type=int, default=None, help="prefill repetitions, best counts (default 2, quick 1)")
    ap.add_argument("--agree-rows", type=int, default=None, help="prompts for int8 agreement (default 32, quick 8)")
    ap.add_argument("--agree-len", type=int, default=None,
                    help="tokens per trained-model prompt (default 64, quick 24)")
    ap.add_argument("--workdir", default=None, help="where the random checkpoints go (default: a temp dir)")
    ap.add_argument("--skip-pip", action="store_true", help="do not load the rwkv package")
    ap.add_argument("--skip-rss", action="store_true", help="no peak-RSS processes")
    ap.add_argument("--skip-trained", action="store_true", help="no agreement on the shipped models")
    ap.add_argument("--thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=1 (huge pages for big tensors)")
    ap.add_argument("--worker", choices=["speed", "rss", "agree"], help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--version", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.prompt = args.prompt or (32 if args.quick else 128)
    args.decode_steps = args.decode_steps or (6 if args.quick else 24)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.agree_rows = args.agree_rows or (8 if args.quick else 32)
    args.agree_len = args.agree_len or (24 if args.quick else 64)
    args.batches = sorted({int(b) for b in str(args.batches).split(",")} | {1})
    args.versions = [v.strip() for v in str(args.versions).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    unknown = [v for v in args.versions if v not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown versions {unknown}; choose from {', '.join(SHAPES)}")
    results, trained = measure(args)
    print(report(results, trained, args))  # noqa: T201 - a benchmark prints its table
    return 0


if __name__ == "__main__":
    sys.exit(main())
