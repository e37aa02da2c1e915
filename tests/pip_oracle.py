"""Run the reference `rwkv` pip package on checkpoints and dump logits and states to .npz.

Usage: ``python tests/pip_oracle.py JOBS.json``.  JOBS.json is a list of jobs::

    {"model": "/tmp/x/v5.2.pth", "version": "5.2", "strategy": "cpu fp32",
     "prompt": [1, 2, 3], "steps": [4, 5], "out": "/tmp/x/out.npz"}

All jobs of one file must belong to one environment family (v4–v6, v7, or v7a), because the
package picks its model class from environment variables at import time (docs/formats.md A4):
this script sets them itself before importing ``rwkv.model``.

Each .npz holds ``prompt_logits`` [T, V] (full output of one sequence-mode call),
``prompt_state_<name>`` (state after the prompt), ``step_logits`` [S, V] (one token per call
after the prompt) and ``state_<name>`` (final state).  States use rwkv_music's names with the
layer axis first and no batch axis: v4 att_x/att_a/att_b/att_p/ffn_x, v5+ att_x/att_kv/ffn_x.
This file is a test helper, not part of the library.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import rwkv.model
    import torch


def _family(version: str) -> str:
    return "7a" if version == "7a" else ("7" if version.startswith("7") else "4-6")


def _setup_env(family: str) -> None:
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    # Music models run without the fp16 rescale (A10).  For "cpu fp32" the package's default is
    # already 0 (off); 999 keeps fp16/bf16 strategies comparable too.
    os.environ["RWKV_RESCALE_LAYER"] = "999"
    if family in ("7", "7a"):
        os.environ["RWKV_V7_ON"] = "1"
    if family == "7a":
        os.environ["RWKV_DE_VERSION"] = "1"


def _named(state: list[torch.Tensor], version: str):
    import numpy as np

    names = ["att_x", "att_a", "att_b", "att_p", "ffn_x"] if version == "4" else ["att_x", "att_kv", "ffn_x"]
    n = len(names)
    L = len(state) // n
    return {name: np.stack([state[i * n + j].float().cpu().numpy() for i in range(L)]) for j, name in enumerate(names)}


def run_job(RWKV: type[rwkv.model.RWKV], job: dict) -> None:
    import numpy as np
    import torch

    model_name = job["model"][:-4] if job["model"].endswith(".pth") else job["model"]
    if job["version"].startswith("7"):
        model = RWKV(model=model_name, strategy=job.get("strategy", "cpu fp32"))
    else:
        model = RWKV(model=model_name, strategy=job.get("strategy", "cpu fp32"), verbose=False)
    out = {}
    with torch.no_grad():
        logits, state = model.forward(list(job["prompt"]), None, full_output=True)
        out["prompt_logits"] = logits.float().cpu().numpy().reshape(len(job["prompt"]), -1)
        for k, v in _named(state, job["version"]).items():
            out["prompt_state_" + k] = v
        state = copy.deepcopy(state)
        steps = []
        for tok in job["steps"]:
            logits, state = model.forward([int(tok)], state)
            steps.append(logits.float().cpu().numpy().reshape(-1))
        out["step_logits"] = np.stack(steps) if steps else np.zeros((0, out["prompt_logits"].shape[1]), np.float32)
        for k, v in _named(state, job["version"]).items():
            out["state_" + k] = v
    np.savez(job["out"], **out)


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        jobs = json.load(fh)
    families = {_family(j["version"]) for j in jobs}
    if len(families) != 1:
        raise SystemExit(f"jobs mix environment families {sorted(families)}")
    _setup_env(families.pop())
    import torch

    torch.set_num_threads(1)
    from rwkv.model import RWKV

    for job in jobs:
        run_job(RWKV, job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
