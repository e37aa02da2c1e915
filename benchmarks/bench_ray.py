"""Ray rendering throughput: pieces/s of ``render`` in this process beside 1 and 2 local Ray workers.

Usage::

    python benchmarks/bench_ray.py                        # 32 pieces, v7 L2 D128, batch 8, 64 tokens
    python benchmarks/bench_ray.py --pieces 64 --n-embd 256 --layers 4

One random MIDI checkpoint, one prompts file, one seed; every run renders the same pieces into its
own folder (CPU, one torch thread per process: the local render and each worker), and the script
checks that the files are identical.  The Ray runtime is local (``--cpus`` CPUs, no dashboard, a
small object store, workers at normal priority as ``render --ray`` starts them).  Worker start-up
(each loads the model once) is timed apart from the render, since a long render pays it once.  The
runs are interleaved ``--repeat`` times and the best of each is shown (a shared machine's other load
slows whichever run it meets).
The per-piece overhead is the 1-worker render's time per piece over the local one's.  Prints a
Markdown table; asserts nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rwkv_music.compose.composer import Composer  # noqa: E402
from rwkv_music.compose.ray_render import LOCAL_SYSTEM_CONFIG, ModelSpec, RayOptions, RayRenderer  # noqa: E402
from rwkv_music.compose.render import RenderSettings, render  # noqa: E402
from rwkv_music.model.factory import save_random_checkpoint  # noqa: E402


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.mid"))
    return names == sorted(p.name for p in b.glob("*.mid")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray runtime")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the best is reported")
    args = ap.parse_args()
    import ray

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_random_checkpoint(root / "m.pth", "7", vocab_size=20096, n_embd=args.n_embd, head_size=32,
                                       n_layer=args.layers)
        prompts = root / "p.txt"
        prompts.write_text("\n".join(f"pi:{0x30 + i % 40:x}:7 t{5 + i % 20}" for i in range(args.pieces)) + "\n")
        settings = RenderSettings(1, args.batch, 1, {"max_tokens": args.max_tokens})
        composer = Composer.load(str(model), threads=1)
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
                 logging_level=logging.ERROR, _system_config=LOCAL_SYSTEM_CONFIG)  # as `render --ray` starts it
        renderers, starts = {}, {}
        try:
            for workers in (1, 2):
                t0 = time.perf_counter()
                # half a CPU each: both renderers stay up between the interleaved runs, one renders at a time
                options = RayOptions(workers=workers, cpus_per_worker=0.5)
                renderers[workers] = RayRenderer(ModelSpec(str(model), threads=1), options)
                renderers[workers].start()
                starts[workers] = time.perf_counter() - t0
            best = {"local": float("inf"), 1: float("inf"), 2: float("inf")}
            for rep in range(args.repeat):  # interleaved, best of each: other load on the machine hits all alike
                for run in best:
                    t0 = time.perf_counter()
                    if run == "local":
                        render(composer, prompts, root / f"local{rep}", settings)
                    else:
                        renderers[run].render(prompts, root / f"ray{run}-{rep}", settings)
                    best[run] = min(best[run], time.perf_counter() - t0)
        finally:
            for renderer in renderers.values():
                renderer.close()
            ray.shutdown()
        rows = [("local (this process)", 0.0, best["local"], True)]
        for workers in (1, 2):
            same = all(_same_files(root / "local0", root / f"ray{workers}-{rep}") for rep in range(args.repeat))
            rows.append((f"ray, {workers} worker{'s' * (workers > 1)}", starts[workers], best[workers], same))
    lines = [
        f"{args.pieces} pieces, v7 L{args.layers} D{args.n_embd}, batch {args.batch}, {args.max_tokens} tokens max, "
        f"block {2 * args.batch} samples, best of {args.repeat}",
        "",
        "| run | start-up s | render s | pieces/s | same files |",
        "|---|---:|---:|---:|---|",
    ]
    for name, start, wall, same in rows:
        lines.append(f"| {name} | {start:.2f} | {wall:.2f} | {args.pieces / wall:.2f} | {'yes' if same else 'NO'} |")
    local, one = rows[0][2], rows[1][2]
    lines.append(f"\nper-piece overhead of 1 Ray worker over the local render: "
                 f"{(one - local) / args.pieces * 1000:+.1f} ms ({(one / local - 1) * 100:+.1f} %)")
    print("\n".join(lines))  # noqa: T201

if __name__ == "__main__":
    main()
