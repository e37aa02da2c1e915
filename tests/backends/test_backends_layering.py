"""backends/ sits below compose and cli: no module of it imports click, the CLI or the composer, and
no runtime imports its exporter (nor an exporter its runtime)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rwkv_music.backends

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(f"rwkv_music.backends.{m.name}" for m in pkgutil.iter_modules(rwkv_music.backends.__path__))
UPWARD = ("click", "rwkv_music.cli", "rwkv_music.compose")
# runtime → its exporter: neither may pull in the other
PAIRS = {"rwkv_music.backends.onnx": "rwkv_music.backends.onnx_export",
         "rwkv_music.backends.ncnn": "rwkv_music.backends.ncnn_export"}


def _modules_after_import(module: str) -> set[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_every_backends_module_is_listed() -> None:
    assert {"rwkv_music.backends.base", "rwkv_music.backends.sidecar", "rwkv_music.backends.export_weights",
            *PAIRS, *PAIRS.values()} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_backends_module_imports_nothing_above_it(module: str) -> None:
    loaded = _modules_after_import(module)
    upward = sorted(m for m in loaded if any(m == u or m.startswith(u + ".") for u in UPWARD))
    assert upward == [], f"{module} imports {upward}"


@pytest.mark.parametrize("runtime, exporter", sorted(PAIRS.items()))
def test_runtime_and_exporter_do_not_import_each_other(runtime: str, exporter: str) -> None:
    assert exporter not in _modules_after_import(runtime)
    assert runtime not in _modules_after_import(exporter)


def test_the_export_commands_live_in_the_cli() -> None:
    from rwkv_music.cli import main as cli_main

    assert {cli_main.LAZY_COMMANDS[name][0] for name in ("export-onnx", "export-ncnn")} == {"rwkv_music.cli.export"}
    for name in ("export-onnx", "export-ncnn"):
        module, attr, _ = cli_main.LAZY_COMMANDS[name]
        command = getattr(__import__(module, fromlist=[attr]), attr)
        assert command.name == name
