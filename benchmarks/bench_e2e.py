"""End-to-end generation speed against the model's own speed, in one table (issue 16).

For each model and batch size it measures, on one device:

* ``forward``: raw decode steps, ``forward(tokens [B, 1], state, inplace=True)`` (CUDA graphs on CUDA,
  as the product path), logits left where they are;
* ``loop``: :func:`rwkv_music.sampling.generate` with the mode's default preset's processors (no stop
  tokens, so every row runs the full length), the decode loop users run without the music constraints;
* ``compose``: ``Composer.compose_midi`` (``--steps`` tokens a piece) / ``compose_abc`` (whole tunes, see
  ``--abc-tokens``), constraints included;
* ``render``: :func:`rwkv_music.compose.render.render` of ``RENDER_PIECES_PER_ROW`` x B default pieces
  (a ``.jsonl`` of empty rows, the same lengths as ``compose``) at ``batch_size`` B, continuous batching
  refilling rows as pieces end, files and manifest written: the dataset path of ``rwkv-music render``;
* their ratios to ``forward``; and prefill tok/s of a long prompt, beside the ``rwkv`` pip package where
  it is installed.

Models: the shipped MIDI and ABC models, and random-weight checkpoints of the v4 MIDI-120M shape
(L12 D768 V20096) and the v7 ABC-82M shape (L12 D768 V128).  ``--quick`` shrinks the random shapes,
the batch sizes and the step counts for a smoke run.  Prints one markdown table; asserts nothing.

    python benchmarks/bench_e2e.py [--device cuda] [--quick] [--batch 1 32 256] [--steps 64]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = {  # name: (version, n_layer, n_embd, vocab, mode)
    "v4-120M (random)": ("4", 12, 768, 20096, "midi"),
    "v7-82M (random)": ("7", 12, 768, 128, "abc"),
}
QUICK_SHAPES = {
    "v4-small (random)": ("4", 2, 128, 20096, "midi"),
    "v7-small (random)": ("7", 2, 128, 128, "abc"),
}
START = {"midi": 0, "abc": 2}  # first token of a document
REPEAT = 3  # --repeat: rounds, each measuring forward, loop, compose and render in turn; the best of each counts
# --abc-tokens: compose_abc's max_tokens (0: the decode steps, at least the 64 the form needs).  By default
# tunes end by themselves, at the form the constraint plans (about 150-350 tokens with the shipped model):
# under a 64-token cap the form plan writes a 7-bar stub whose fixed costs (the header's prefill, the
# piece's checks; ~3 ms a call on the 2-core CPU) are half of what it costs.
ABC_MAX_TOKENS = 1024
RENDER_PIECES_PER_ROW = 2  # render's pieces per batch row: each row is refilled once on average
CHECK_WORKERS: int | None = None  # --check-workers: render's ABC check processes (None: render's own choice)


def say(text: str, err: bool = False) -> None:
    """One line to stdout (the table) or stderr (progress and notes)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: process CPU time (a shared, loaded machine)


def timed(fn: Callable[[], Any], device: str, repeat: int = 1) -> float:
    """Best time of ``repeat`` runs (after the call returns and the device is idle), on :data:`CLOCK`."""
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = CLOCK()
        fn()
        _sync(device)
        best = min(best, CLOCK() - t0)
    return best


def forward_tps(model: Any, batch: int, steps: int, device: str, mode: str) -> Callable[[], float]:
    """A measurement (call it once per round): tok/s of ``steps`` raw decode steps."""
    state = model.new_state(batch)
    ids = torch.full((batch, 1), START[mode], dtype=torch.long)
    for _ in range(3):  # warm-up (and graph capture on CUDA)
        model.forward(ids, state, inplace=True)

    def run() -> None:
        for _ in range(steps):
            model.forward(ids, state, inplace=True)

    return lambda: batch * steps / timed(run, device)


def loop_tps(model: Any, batch: int, steps: int, device: str, mode: str) -> Callable[[], float]:
    """A measurement: tok/s of :func:`generate` with the default preset's processors."""
    from rwkv_music.sampling import generate, get_preset

    cfg = get_preset(f"default-{mode}")
    prompts = [[START[mode]]] * batch

    def run() -> None:
        generate(model, prompts, processors=cfg.build_processors(), max_new_tokens=steps, seeds=list(range(batch)),
                 stop_tokens=(), return_state=False)

    run()  # warm-up
    return lambda: batch * steps / timed(run, device)


def compose_tps(path: Path, mode: str, batch: int, steps: int, device: str, cuda_graph: bool) -> Callable[[], float]:
    """A measurement: sampled tok/s of ``compose_midi`` / ``compose_abc``."""
    from rwkv_music import Composer

    composer = Composer.load(path, mode=mode, device=device)
    if hasattr(composer.backend, "cuda_graph"):
        composer.backend.cuda_graph = cuda_graph
    tokens = [0]

    def run() -> None:
        if mode == "midi":
            pieces = composer.compose_midi(n=batch, max_tokens=steps, seed=1)
        else:
            pieces = composer.compose_abc(n=batch, max_tokens=ABC_MAX_TOKENS or max(steps, 64), seed=1)
        tokens[0] = sum(p.meta["new_tokens"] for p in pieces)  # sampled tokens (p.tokens also holds the prompt)

    run()
    return lambda: tokens[0] / timed(run, device)


def render_tps(path: Path, mode: str, batch: int, steps: int, device: str, cuda_graph: bool,
               tmp: Path) -> Callable[[], float]:
    """A measurement: sampled tok/s of ``render`` (files written), each run into a new folder."""
    from rwkv_music import Composer
    from rwkv_music.compose.render import RenderSettings, render

    composer = Composer.load(path, mode=mode, device=device)
    if hasattr(composer.backend, "cuda_graph"):
        composer.backend.cuda_graph = cuda_graph
    prompts = Path(tempfile.mkdtemp(dir=tmp, prefix="render-")) / "prompts.jsonl"
    prompts.write_text("{}\n" * (RENDER_PIECES_PER_ROW * batch))
    max_tokens = steps if mode == "midi" else ABC_MAX_TOKENS or max(steps, 64)
    settings = RenderSettings(1, batch, 1, {"max_tokens": max_tokens}, check_workers=CHECK_WORKERS)
    tokens = [0]

    def run() -> None:
        report = render(composer, prompts, tempfile.mkdtemp(dir=prompts.parent, prefix="out-"), settings)
        if report.written != RENDER_PIECES_PER_ROW * batch or report.failed:
            raise RuntimeError(f"render wrote {report.written} pieces, failed {report.failed[:2]}")
        tokens[0] = int(report.stats["tokens"])

    run()
    return lambda: tokens[0] / timed(run, device)


def best_of_rounds(measures: dict[str, Callable[[], float] | None], rounds: int) -> dict[str, float | None]:
    """The best tok/s of each measurement over ``rounds`` rounds, each round taking every one in turn:
    on a shared machine a slow spell then hits all of them, not one (the ratios compare like with like)."""
    best: dict[str, float | None] = {k: None for k in measures}
    for _ in range(rounds):
        for key, measure in measures.items():
            if measure is not None:
                value = measure()
                best[key] = value if best[key] is None else max(best[key], value)
    return best


def prefill_tps(model: Any, length: int, device: str, mode: str) -> float:
    ids = torch.randint(4, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    model.forward(ids[:, :16])
    return length / timed(lambda: model.forward(ids), device, repeat=2)


def pip_prefill_tps(path: Path, version: str, length: int, device: str, vocab: int,
                    kernel: bool = False) -> float | None:
    """The ``rwkv`` package's prefill of the same prompt (fp32 CPU, fp16 CUDA); None if absent.

    ``kernel``: let it build and use its CUDA kernel (needs nvcc; slow the first time)."""
    try:
        os.environ.update(RWKV_JIT_ON="1", RWKV_RESCALE_LAYER="999")
        os.environ["RWKV_CUDA_ON"] = "1" if device.startswith("cuda") and kernel else "0"
        if version.startswith("7"):
            os.environ["RWKV_V7_ON"] = "1"
        with contextlib.redirect_stdout(sys.stderr):
            from rwkv.model import RWKV
    except Exception:  # not installed (or no compiler for its kernel)
        return None
    strategy = "cuda fp16" if device.startswith("cuda") else "cpu fp32"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # it prints while loading
            model = RWKV(model=str(path)[: -len(".pth")], strategy=strategy)
        ids = np.random.default_rng(0).integers(4, vocab, length).tolist()
        model.forward(ids[:16], None)
        return length / timed(lambda: model.forward(ids, None), device, repeat=2)
    except Exception as exc:  # a version or vocabulary the package does not run
        say(f"  (rwkv package: {type(exc).__name__}: {str(exc)[:80]})", err=True)
        return None


def models(quick: bool, tmp: Path) -> list[tuple[str, Path, str, str]]:
    from rwkv_music.assets import default_model_path
    from rwkv_music.model.factory import save_random_checkpoint

    out = []
    for mode in ("midi", "abc"):
        try:
            out.append((f"shipped {mode}", default_model_path(mode), mode, "?"))
        except Exception as exc:
            say(f"  (no shipped {mode} model: {exc})", err=True)
    for name, (version, n_layer, n_embd, vocab, mode) in (QUICK_SHAPES if quick else SHAPES).items():
        path = save_random_checkpoint(tmp / f"{name.split()[0]}.pth", version, n_layer=n_layer, n_embd=n_embd,
                                      vocab_size=vocab, head_size=64 if n_embd % 64 == 0 else 32)
        out.append((name, path, mode, version))
    return out


def fmt(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="decode steps per measurement")
    ap.add_argument("--prefill", type=int, default=None, help="prompt length of the prefill measurement")
    ap.add_argument("--quick", action="store_true", help="small shapes and few steps (a smoke run)")
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--skip-compose", action="store_true", help="no compose and render measurements")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="measure only models whose name contains this text")
    ap.add_argument("--pip-cuda-kernel", action="store_true", help="the rwkv package with its CUDA kernel")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time by this process's CPU time (CPU only; steadier on a shared, loaded machine, "
                         "best with --threads 1)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds (each times forward, loop, compose and render once, in turn); the best of each counts")
    ap.add_argument("--abc-tokens", type=int, default=1024,
                    help="compose_abc's max_tokens (default: 1024, tunes end by themselves; 0: the steps)")
    ap.add_argument("--check-workers", type=int, default=None,
                    help="render's ABC check processes (default: render's choice, one per core the decoder leaves; "
                         "time them with the wall clock, the cpu clock does not see other processes)")
    args = ap.parse_args(argv)
    global CLOCK, REPEAT, ABC_MAX_TOKENS, CHECK_WORKERS
    CHECK_WORKERS = args.check_workers
    ABC_MAX_TOKENS = max(0, args.abc_tokens)
    if args.clock == "cpu":
        CLOCK = time.process_time
    REPEAT = max(1, args.repeat)
    from rwkv_music.backends.torch import load

    cuda = args.device.startswith("cuda")
    batches = args.batch or ([1, 4] if args.quick else ([1, 32, 256] if cuda else [1, 32]))
    steps = args.steps or (8 if args.quick else 64)
    prefill_len = args.prefill or (64 if args.quick else 512)
    dtype = args.dtype or ("fp16" if cuda else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    say(f"# bench_e2e: device {args.device}, dtype {dtype}, cuda graphs {not args.no_cuda_graph and cuda}, "
          f"{args.clock} clock, {steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    say("| model | ver | B | forward tok/s | loop tok/s | loop/fwd | compose tok/s | compose/fwd "
        "| render tok/s | render/fwd | prefill tok/s | rwkv pkg prefill |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")  # rows as they are measured (a time limit keeps them)
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, path, mode, version in models(args.quick, Path(tmpdir)):
            if args.only and args.only not in name:
                continue
            model = load(path, device=args.device, dtype=dtype, cuda_graph=not args.no_cuda_graph)
            version = model.config.version
            pre = prefill_tps(model, prefill_len, args.device, mode)
            pip = pip_prefill_tps(path, str(version), prefill_len, args.device, model.config.vocab_size,
                                  args.pip_cuda_kernel)
            for batch in batches:
                t0 = time.perf_counter()
                measures = {"forward": forward_tps(model, batch, steps, args.device, mode),
                            "loop": loop_tps(model, batch, steps, args.device, mode), "compose": None,
                            "render": None}
                if not args.skip_compose:
                    makers = {"compose": compose_tps, "render": functools.partial(render_tps, tmp=Path(tmpdir))}
                    for key, make in makers.items():
                        try:
                            measures[key] = make(path, mode, batch, steps, args.device, not args.no_cuda_graph)
                        except Exception as exc:
                            say(f"  ({name} {key} B={batch}: {type(exc).__name__}: {str(exc)[:100]})", err=True)
                best = best_of_rounds(measures, REPEAT)
                raw, loop, comp, rend = best["forward"], best["loop"], best["compose"], best["render"]
                assert raw is not None and loop is not None
                ratio = "n/a" if comp is None else f"{comp / raw:.0%}"
                rratio = "n/a" if rend is None else f"{rend / raw:.0%}"
                say(f"| {name} | v{version} | {batch} | {fmt(raw)} | {fmt(loop)} | {loop / raw:.0%} | {fmt(comp)} | "
                    f"{ratio} | {fmt(rend)} | {rratio} | {fmt(pre)} | {fmt(pip)} |")
                say(f"  {name} B={batch}: {time.perf_counter() - t0:.1f} s", err=True)
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
