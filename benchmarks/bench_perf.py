"""Measurement workers of ``benchmarks/bench_runtime.py`` (run that; this file as a script is an alias).

Each worker runs in its own subprocess, started by bench_runtime's driver, and prints one JSON line:

* ``speed``: one process loads the `rwkv` package's model and ours (fp32, int8 with each kernel,
  bf16 where the CPU runs it fast) and measures them *interleaved* — one step of each in turn,
  medians — so the load of a shared machine hits all of them alike.  The same process measures the
  read bandwidth (sum over a buffer far larger than the caches), which turns single-stream decode
  into a fraction of the roofline ``bandwidth / bytes of weights read per token``, and the fp32
  GFLOP/s of a batch-sized matrix product, the compute ceiling of batched decode.
* ``rss``: peak resident memory of one implementation (load, prefill, a few decode steps).
* ``agree``: int8 and int4 top-1 agreement with fp32 on the shipped trained models (random prompts).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import rwkv.model
    import torch

    from rwkv_music.backends.torch import TorchModel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPES = {  # version: (vocab, n_layer, n_embd, dim_ffn factor) of the released music models
    "4": (20096, 12, 768, 4.0),
    "5.2": (128, 12, 768, 3.5),
    "7": (128, 12, 768, 4.0),
}
QUICK_SHAPE = (2, 256)  # n_layer, n_embd of --quick
BANDWIDTH_MB = 512  # read-bandwidth probe buffer: far beyond any L3
DOC_START = {"abc": 2, "midi": 0}  # first token of a document (model cards: abc bos 2; midi "<pad>" 0)
INT8_KERNELS = {"int8": None, "int8-wo": "weight_only", "int8-dyn": "dynamic"}  # None: the default (native)
# int4: group-wise 4-bit, the default group, kernel and int8 matrices (INT4_INT8_FIELDS, INT4_INT8_LAYERS; issue 20);
# int4-all: every layer matrix int4 (rwkv_music.model.quant.INT4_ALL_BUT_HEAD), head int8
QUANTIZED = (*INT8_KERNELS, "int4", "int4-all")
LABELS = {"pip": "rwkv pip fp32", "fp32": "ours fp32", "fp32-inplace": "ours fp32, `inplace=True`",
          "bf16": "ours bf16", "int8": "ours int8 (default kernel)", "int8-wo": "ours int8 (weight_only)",
          "int8-dyn": "ours int8 (dynamic)", "int4": "ours int4 (default kernel)",
          "int4-all": "ours int4, every layer matrix"}
# fp32-inplace: fp32's model, decoded in place
LOADABLE = ("pip", "fp32", "int8", "int8-wo", "int8-dyn", "int4", "int4-all", "bf16")


# -- helpers ---------------------------------------------------------------------------------

def make_checkpoint(version: str, workdir: Path, quick: bool) -> Path:
    """A random checkpoint with the music models' shape of ``version`` (QUICK_SHAPE with ``quick``)."""
    sys.path.insert(0, str(REPO))
    from rwkv_music.model.factory import save_random_checkpoint

    V, L, C, f = SHAPES[version]
    if quick:
        L, C = QUICK_SHAPE
    F = int(f * C) // 32 * 32
    path = workdir / f"bench-v{version}-L{L}-D{C}-V{V}.pth"
    if not path.exists():
        head = 64 if C % 64 == 0 else 32
        save_random_checkpoint(path, version, n_layer=L, n_embd=C, head_size=head, vocab_size=V, dim_ffn=F)
    return path


def peak_rss_mb() -> float:
    """High-water resident set of this process (VmHWM; ru_maxrss can carry the parent's over exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_bandwidth(torch: ModuleType, repeats: int = 7) -> float:
    """Median GB/s of summing a BANDWIDTH_MB fp32 buffer (the read roofline of this process)."""
    buf = torch.ones(BANDWIDTH_MB * 2**20 // 4)
    buf.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def gemm_gflops(torch: ModuleType, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a [128, 768] x [768, 3072] product: the compute ceiling of batched decode."""
    x, w = torch.randn(128, 768), torch.randn(768, 3072)
    x @ w
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t0)
    return 2 * 128 * 768 * 3072 / best / 1e9


def bf16_slowdown(torch: ModuleType) -> float:
    """bf16 time / fp32 time of a decode-sized matrix-vector product (> 1: no fast bf16 on this CPU)."""
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        ws = [torch.randn(768, 3072).to(dt) for _ in range(8)]
        x = torch.randn(1, 768).to(dt)
        [x @ w for w in ws]
        t0 = time.perf_counter()
        for _ in range(3):
            [x @ w for w in ws]
        out[dt] = time.perf_counter() - t0
    return out[torch.bfloat16] / out[torch.float32]


def weight_bytes(weights: object) -> int:
    """Bytes a decode step reads: every weight tensor except the gathered embedding rows."""
    import torch

    from rwkv_music.model.quant import QUANT_TYPES

    total = 0

    def visit(obj: object, name: str = "") -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if name not in ("emb", "s_emb"):  # one row gathered per token
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, QUANT_TYPES):
            total += obj.nbytes
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f.name)
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, name)

    visit(weights)
    return total


def pip_model(version: str, model: str) -> rwkv.model.RWKV:
    """The `rwkv` package's model in fp32 on the CPU, configured as for the music models."""
    os.environ.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0", RWKV_RESCALE_LAYER="999")  # no fp16 rescale (A10)
    if version.startswith("7"):
        os.environ["RWKV_V7_ON"] = "1"
    from rwkv.model import RWKV

    kw = {} if version.startswith("7") else {"verbose": False}
    return RWKV(model=model[: -len(".pth")], strategy="cpu fp32", **kw)


def load_ours(impl: str, model: str) -> TorchModel:
    sys.path.insert(0, str(REPO))
    from rwkv_music.backends.torch import load

    if impl in ("fp32", "bf16"):
        return load(model, dtype=impl)
    m = load(model)
    if impl == "int4":
        m.quantize_int4()
    elif impl == "int4-all":
        from rwkv_music.model.quant import INT4_ALL_BUT_HEAD

        m.quantize_int4(int8_fields=INT4_ALL_BUT_HEAD)
    else:
        m.quantize_int8(INT8_KERNELS[impl])
    return m


def default_int8_kernel() -> str:
    sys.path.insert(0, str(REPO))
    from rwkv_music.model.quant import default_kernel

    return default_kernel()


def top1_agreement(ref: TorchModel, other: TorchModel, prompts: torch.Tensor) -> float:
    """Fraction of positions (every position of every prompt) where the argmax logits agree."""
    a = ref.forward(prompts, all_logits=True)[0]
    b = other.forward(prompts, all_logits=True)[0]
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


# -- workers ---------------------------------------------------------------------------------

def _interleaved(steps: dict, n: int, warmup: int = 1) -> dict:
    """Median seconds per call of each function, calling them in turn ``n`` (+ warmup) times."""
    times: dict = {k: [] for k in steps}
    for i in range(n + warmup):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(ts) for k, ts in times.items()}


def _decoder(m: TorchModel, B: int, V: int, gen: torch.Generator, inplace: bool = False):
    """A zero-argument decode step of model ``m`` at batch ``B`` (random tokens, carried state)."""
    import torch

    box = [m.new_state(B)]
    tok = torch.randint(0, V, (B, 1), generator=gen)
    if inplace:
        return lambda: m.forward(tok, box[0], inplace=True)
    return lambda: box.__setitem__(0, m.forward(tok, box[0])[1])


def worker_speed(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    out: dict = {"bandwidth_gbs": read_bandwidth(torch), "gemm_gflops": gemm_gflops(torch),
                 "bf16_slowdown": bf16_slowdown(torch)}
    out["int8_kernel"] = default_int8_kernel()
    impls = ["fp32", *QUANTIZED] + (["bf16"] if out["bf16_slowdown"] < 1.0 else [])
    ours = {k: load_ours(k, args.model) for k in impls}
    pip = None if args.skip_pip else pip_model(args.version, args.model)
    V = ours["fp32"].config.vocab_size
    for k, m in ours.items():
        out[f"{k}_bytes"] = weight_bytes(m._weights)
    out["pip_bytes"] = out["fp32-inplace_bytes"] = out["fp32_bytes"]  # the same matrices in fp32
    inplace = "inplace" in inspect.signature(ours["fp32"].forward).parameters
    gen = torch.Generator().manual_seed(0)

    def decoders(B: int) -> dict:
        steps = {k: _decoder(m, B, V, gen) for k, m in ours.items()}
        if inplace:
            steps["fp32-inplace"] = _decoder(ours["fp32"], B, V, gen, inplace=True)
        return steps

    steps = decoders(1)  # single stream, all interleaved
    if pip is not None:
        pstate = [pip.forward([1, 2, 3], None)[1]]
        ptoks = iter(torch.randint(0, V, (args.decode_steps + 2,), generator=gen).tolist())
        steps["pip"] = lambda: pstate.__setitem__(0, pip.forward([next(ptoks)], pstate[0])[1])
    for k, t in _interleaved(steps, args.decode_steps, warmup=2).items():
        out[f"{k}_b1"] = 1 / t
    for B in args.batches:  # batched decode: ours only (the package decodes one stream)
        if B == 1:
            continue
        n = max(3, args.decode_steps // (4 if B >= 64 else 2))
        steps = decoders(B)
        for k, t in _interleaved(steps, n).items():
            out[f"{k}_b{B}"] = B / t
        del steps
    prompt = torch.randint(0, V, (1, args.prompt), generator=gen)
    runs = {k: (lambda m=m: m.forward(prompt)) for k, m in ours.items()}
    if pip is not None:
        runs["pip"] = lambda: pip.forward(prompt[0].tolist(), None)
    for k, t in _interleaved(runs, args.repeats).items():
        out[f"{k}_prefill"] = args.prompt / t
    prompts = torch.randint(0, V, (args.agree_rows, 16), generator=gen)  # uniform random ids
    for k in QUANTIZED:
        out[f"{k}_agree"] = top1_agreement(ours["fp32"], ours[k], prompts)
    out["fp32_top1_prob"] = float(ours["fp32"].forward(prompts)[0].softmax(-1).amax(-1).mean())
    return out


def worker_rss(args: argparse.Namespace) -> dict:
    """Peak RSS of one implementation: load, prefill ``args.prompt`` tokens, 8 decode steps."""
    import torch

    torch.set_num_threads(args.threads)
    if args.impl == "pip":
        m = pip_model(args.version, args.model)
        _, state = m.forward(list(range(args.prompt)), None)
        for t in range(8):
            _, state = m.forward([t], state)
    else:
        m = load_ours(args.impl, args.model)
        _, state = m.forward(torch.zeros((1, args.prompt), dtype=torch.long))
        for t in range(8):
            _, state = m.forward([[t]], state)
    return {"rss_mb": peak_rss_mb()}


def _sampled_prompts(model: TorchModel, start: int, rows: int, length: int, seed: int):
    """``rows`` prompts of ``length`` tokens drawn from ``model`` itself (temperature 1) after ``start``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    toks = torch.full((rows, 1), start, dtype=torch.long)
    logits, state = model.forward(toks)
    out = [toks]
    for _ in range(length - 1):
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        out.append(nxt)
        logits, state = model.forward(nxt, state)
    return torch.cat(out, 1)


def worker_agree(args: argparse.Namespace) -> dict:
    """int8 top-1 agreement with fp32 on the shipped models: model-sampled and uniform random prompts."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from rwkv_music.assets import default_model_path

    out: dict = {}
    for mode, start in DOC_START.items():
        try:
            path = str(default_model_path(mode))
        except Exception as exc:  # noqa: BLE001 - a missing asset is reported, not fatal
            out[mode] = {"error": str(exc)}
            continue
        ref = load_ours("fp32", path)
        V = ref.config.vocab_size
        sets = {"sampled": _sampled_prompts(ref, start, args.agree_rows, args.agree_len, seed=1),
                "uniform": torch.randint(0, V, (args.agree_rows, args.agree_len),
                                         generator=torch.Generator().manual_seed(2))}
        res: dict = {"shape": f"L{ref.config.n_layer} D{ref.config.n_embd} V{V}"}
        quantized = {k: load_ours(k, path) for k in QUANTIZED}
        for name, prompts in sets.items():
            res[f"{name}_top1_prob"] = float(ref.forward(prompts, all_logits=True)[0].softmax(-1).amax(-1).mean())
            for k, m in quantized.items():
                res[f"{k}_{name}"] = top1_agreement(ref, m, prompts)
        out[mode] = res
    return out


WORKERS = {"speed": worker_speed, "rss": worker_rss, "agree": worker_agree}


def worker_main(args: argparse.Namespace) -> int:
    """Run ``args.worker`` and print its one JSON line (what the driver reads)."""
    print(json.dumps(WORKERS[args.worker](args)))  # noqa: T201 - the driver reads this line
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from bench_runtime import main

    sys.exit(main())
