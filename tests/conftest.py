"""Shared fixtures: random checkpoints in the BlinkDL layout and the `rwkv` pip package oracle.

* ``checkpoint_path(version, **kw)`` writes (once per session and argument set) a random
  checkpoint from :func:`rwkv_music.model.factory.save_random_checkpoint` and returns its path.
* ``pip_oracle.run(cases)`` runs the reference package on many checkpoints, one subprocess per
  environment family (v4–v6, v7, v7a: the package switches classes on environment variables at
  import, so each family needs a fresh interpreter), and caches the results per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

# The ABC grammar tables stay in memory: no test reads a table an earlier run left in the user's cache
# (each starts empty, as the table tests expect) or writes one there; tests/formats/test_abc_table_disk.py
# turns it on for its own folders.  (Set here, so CLI subprocesses inherit it.)
os.environ["RWKV_MUSIC_ABC_TABLES"] = "0"

ORACLE_SCRIPT = Path(__file__).with_name("pip_oracle.py")
ALL_VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")


def pytest_configure(config: Any) -> None:
    import torch

    torch.set_num_threads(1)  # the test machine is shared: threads only fight over its 2 cores


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``checkpoint_path("5.2", vocab_size=128, n_embd=64, head_size=32, ...)`` → Path.

    Extra keyword arguments go to ``save_random_checkpoint`` (``n_layer``, ``dim_ffn``, ``seed``,
    ``dtype``, ``time_first_key``).  The same arguments return the same file.
    """
    from rwkv_music.model.factory import save_random_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[tuple, Path] = {}

    def make(version: str, vocab_size: int = 128, n_embd: int = 64, head_size: int = 32, **kw: Any) -> Path:
        key = (str(version), vocab_size, n_embd, head_size, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key not in cache:
            name = f"v{version}-V{vocab_size}-C{n_embd}-N{head_size}-{len(cache)}.pth"
            cache[key] = save_random_checkpoint(
                root / name, version, vocab_size=vocab_size, n_embd=n_embd, head_size=head_size, **kw
            )
        return cache[key]

    return make


@dataclass(frozen=True)
class OracleCase:
    """One oracle run: a checkpoint, a prompt fed in one call, then single-token steps."""

    path: Path
    version: str
    prompt: tuple[int, ...]
    steps: tuple[int, ...] = ()
    strategy: str = "cpu fp32"


def oracle_family(version: str) -> str:
    return "7a" if version == "7a" else ("7" if version.startswith("7") else "4-6")


class PipOracle:
    """Runs tests/pip_oracle.py in subprocesses and caches the .npz results per case."""

    Case = OracleCase  # so tests can build cases without importing conftest

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._runs = 0
        self._cache: dict[OracleCase, dict[str, np.ndarray]] = {}

    def run(self, cases: list[OracleCase]) -> list[dict[str, np.ndarray]]:
        """Results for ``cases`` (one dict of arrays each); families run in parallel subprocesses."""
        todo = [c for c in dict.fromkeys(cases) if c not in self._cache]
        by_family: dict[str, list[OracleCase]] = {}
        for case in todo:
            by_family.setdefault(oracle_family(case.version), []).append(case)
        running = [self._start(family, group) for family, group in by_family.items()]
        for family, group, jobs, proc in running:
            _, stderr = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"pip oracle ({family}) failed:\n{stderr[-3000:]}")
            for case, job in zip(group, jobs):
                with np.load(job["out"]) as data:
                    self._cache[case] = {k: np.array(data[k]) for k in data.files}
        return [self._cache[c] for c in cases]

    def _start(self, family: str, cases: list[OracleCase]) -> tuple:
        self._runs += 1
        jobs = []
        for n, case in enumerate(cases):
            out = self.workdir / f"oracle-{self._runs}-{n}.npz"
            jobs.append({"model": str(case.path), "version": case.version, "strategy": case.strategy,
                         "prompt": list(case.prompt), "steps": list(case.steps), "out": str(out)})
        job_file = self.workdir / f"jobs-{self._runs}-{family}.json"
        job_file.write_text(json.dumps(jobs))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.Popen([sys.executable, str(ORACLE_SCRIPT), str(job_file)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        return family, cases, jobs, proc


@pytest.fixture(scope="session")
def pip_oracle(tmp_path_factory: pytest.TempPathFactory) -> PipOracle:
    """The reference `rwkv` package (skips when it is not installed)."""
    pytest.importorskip("rwkv")
    return PipOracle(tmp_path_factory.mktemp("pip-oracle"))


@pytest.fixture(scope="session")
def require_version() -> Callable[[str], None]:
    """``require_version("6")`` fails the calling test unless that version is registered.

    Every version in ``ALL_VERSIONS`` has a torch implementation, so a missing one is a regression
    (a registry entry dropped in a refactor), never a reason to skip.
    """
    from rwkv_music.model.registry import available_versions

    present = available_versions()

    def check(version: str) -> None:
        if str(version) not in present:
            pytest.fail(f"RWKV v{version} is not in the model registry (registered: {', '.join(present)})")

    return check

