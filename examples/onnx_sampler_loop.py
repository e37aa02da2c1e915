"""Generate tokens with onnxruntime alone: the exported model, then the exported sampler graph, in a loop.

rwkv-music export-onnx midi-default midi.onnx --with-sampler   # once: midi.onnx + midi.sampler.onnx
python examples/onnx_sampler_loop.py midi.onnx                  # 2 rows of 32 MIDI tokens
python examples/onnx_sampler_loop.py midi.onnx -n 4 --tokens 64 --top-k 16 --top-p 0.9

What an app on a phone or in a browser does: this script imports neither rwkv_music, torch nor
numpy.  Inputs are plain Python lists (onnxruntime converts them to the input's type itself);
what the graphs return (logits, states, penalty state) goes back into the next call untouched,
and only the chosen ids are read, with ``.tolist()``.  (onnxruntime's Python API returns numpy
arrays -- numpy is a dependency of onnxruntime itself -- so "numpy-free" means this loop never
builds or reads an array.)  The random numbers come from Python's ``random``, one uniform per row
per step: with the same uniforms the graph picks the ids our numpy sampler picks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort


def _zeros(shape: list[int], value: float) -> Any:
    """A nested list of ``shape`` filled with ``value`` (an initial state, without numpy)."""
    if not shape:
        return value
    return [_zeros(shape[1:], value) for _ in range(shape[0])]


def main(argv: list[str] | None = None) -> list[list[int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported graph (export-onnx ... --with-sampler)")
    parser.add_argument("-n", type=int, default=2, help="rows (pieces) generated side by side")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per row")
    parser.add_argument("--prompt", default="0", help="comma-separated prompt ids (MIDI: 0 = <start>)")
    parser.add_argument("--seed", type=int, default=1, help="row i draws from random.Random(seed + i)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--presence", type=float, default=0.0)
    parser.add_argument("--frequency", type=float, default=0.5)
    parser.add_argument("--decay", type=float, default=0.997)
    args = parser.parse_args(argv)

    side_path = args.model.with_name(args.model.name + ".json")
    side = json.loads(side_path.read_text())
    if "sampler" not in side:
        sys.exit(f"{side_path}: no sampler graph recorded; export with 'rwkv-music export-onnx ... --with-sampler'")
    if side.get("initial_state"):
        sys.exit(f"{args.model}: has an initial state file, which this list-only example does not read")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # errors only (the model's optional input is an initializer: a warning)
    cpu = ["CPUExecutionProvider"]
    model = ort.InferenceSession(str(args.model), opts, providers=cpu)
    sampler = ort.InferenceSession(str(args.model.with_name(side["sampler"]["file"])), opts, providers=cpu)

    rows, vocab, n_layer = args.n, side["vocab_size"], side["config"]["n_layer"]
    state = {}  # input name -> value; zeros (or the sidecar's init) of [n_layer, rows, ...]
    for entry in side["state"].values():
        dims = [n_layer, rows] + [int(d) for d in entry["shape"][2:]]
        state[entry["input"]] = _zeros(dims, entry["init"])
    # ChatRWKV's MIDI recipe counts ids 0-126 (specials and short waits) at 0.3 (docs/formats.md D3)
    weights = [0.3 if vocab == 20096 and t < 127 else 1.0 for t in range(vocab)]
    settings = {
        "temperature": [args.temperature] * rows, "top_k": [args.top_k] * rows, "top_p": [args.top_p] * rows,
        "presence_penalty": [args.presence] * rows, "frequency_penalty": [args.frequency] * rows,
        "penalty_decay": [args.decay] * rows,
    }
    occurrence: Any = [[0.0] * vocab for _ in range(rows)]
    seen: Any = [[False] * vocab for _ in range(rows)]
    rngs = [random.Random(args.seed + i) for i in range(rows)]
    model_outputs = ["logits"] + [e["output"] for e in side["state"].values()]

    tokens = [[int(t) for t in args.prompt.split(",")]] * rows
    pieces: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(args.tokens):
        logits, *new_state = model.run(model_outputs, {"tokens": tokens, **state})
        state = {e["input"]: v for e, v in zip(side["state"].values(), new_state)}
        feeds = {"logits": logits, "occurrence": occurrence, "seen": seen, "penalty_weights": weights,
                 **settings, "uniform": [rng.random() for rng in rngs]}
        ids, occurrence, seen = sampler.run(None, feeds)
        ids = ids.tolist()
        if -1 in ids:
            sys.exit(f"row {ids.index(-1)}: no legal token")
        for piece, t in zip(pieces, ids):
            piece.append(t)
        tokens = [[t] for t in ids]
    for i, piece in enumerate(pieces):
        print(f"row {i}: {' '.join(map(str, piece))}")  # noqa: T201 - a script reports to its user
    return pieces


if __name__ == "__main__":
    main()
