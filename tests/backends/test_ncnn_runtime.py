"""The ncnn runtime: graph blobs, torch-free use, generation, state tuning and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from ncnn_support import FP32_TOL, export_cached, max_state_diff, tokens

ROOT = Path(__file__).resolve().parents[2]


def _run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def test_packed_output_equals_every_named_blob(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``out_all`` holds the logits and each ``out_<name>_<i>``; named blobs can also be read one by one
    (several extracts from one extractor need light mode off)."""
    import ncnn

    from rwkv_music.backends.ncnn import load

    param = export_cached(tmp_path_factory, checkpoint_path("4"))
    model = load(param, num_threads=1)
    state = model.new_state(2)
    logits, new = model.forward([[5], [9]], state)
    ex = model.net.create_extractor()
    ex.set_light_mode(False)
    ex.input("token", ncnn.Mat(np.array([5, 9], np.int32)))
    arrays = {n: [np.ascontiguousarray(t[i]) for i in range(2)] for n, t in state.tensors.items()}
    for name, per_layer in arrays.items():
        for i, arr in enumerate(per_layer):
            ex.input(f"in_{name}_{i}", ncnn.Mat(arr))
    ret, mat = ex.extract("logits")
    assert ret == 0 and np.abs(np.array(mat) - logits).max() == 0.0
    for name in state.tensors:
        for i in range(2):
            ret, mat = ex.extract(f"out_{name}_{i}")
            assert ret == 0 and np.abs(np.array(mat) - new.tensors[name][i]).max() == 0.0, (name, i)


def test_sidecar_describes_blobs_tokenizer_and_layers(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    param = export_cached(tmp_path_factory, checkpoint_path("7"))
    side = json.loads(param.with_suffix(".json").read_text())
    assert side["version"] == "7" and side["tokenizer"] == "abc" and side["config"]["n_layer"] == 2
    assert side["state"]["att_kv"]["inputs"] == ["in_att_kv_0", "in_att_kv_1"]
    assert side["state"]["att_kv"]["orientation"] == "S[h, value i, key j]"
    text = param.read_text()
    for blob in ("in_att_x_1", "out_ffn_x_0", "out_att_kv_1", "logits", "out_all"):
        assert f" {blob}" in text
    assert {"Embed", "InnerProduct", "LayerNorm", "MatMul", "Split"} <= set(side["layers"])


def test_ncnn_backend_runs_without_importing_torch(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    param = export_cached(tmp_path_factory, checkpoint_path("6"))
    code = f"""
import sys, numpy as np, rwkv_music
model = rwkv_music.load_model({str(param)!r}, backend="ncnn", num_threads=1)
logits, state = model.forward(np.array([[1, 2, 3], [4, 5, 6]]))
logits, state = model.forward([[7], [8]], state)
assert logits.shape == (2, 128) and np.isfinite(logits).all()
state.save({str(param.with_name("s.npz"))!r})
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_generate_gives_the_same_tokens_as_torch(
    checkpoint_path: Callable[..., Path],
    require_version: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_version("7")
    import rwkv_music
    from rwkv_music.sampling import SamplingConfig, generate

    ckpt = checkpoint_path("7")
    backends = [rwkv_music.load_model(ckpt),
                rwkv_music.load_model(export_cached(tmp_path_factory, ckpt), backend="ncnn", num_threads=1)]
    config = SamplingConfig(temperature=1.0, top_p=0.9, top_k=20, presence_penalty=0.2, frequency_penalty=0.2)
    prompts = [[2, 83, 58, 51], [2, 75], [2, 77, 58]]
    results = [generate(b, prompts, processors=config.build_processors(), max_new_tokens=24, seeds=[1, 2, 3],
                        stop_tokens=[3]) for b in backends]
    assert results[0].tokens == results[1].tokens
    assert sum(len(t) for t in results[0].tokens) > 10
    assert max_state_diff(results[0].state, results[1].state) <= FP32_TOL


def test_state_tuned_v6_export_starts_from_time_state(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    import torch

    import rwkv_music
    from rwkv_music.backends.ncnn import load
    from rwkv_music.backends.ncnn_export import export

    sd = torch.load(checkpoint_path("6"), weights_only=True)
    g = torch.Generator().manual_seed(4)
    for i in range(2):
        sd[f"blocks.{i}.att.time_state"] = torch.randn(2, 32, 32, generator=g) * 0.3
    ncnn_model = load(export(sd, tmp_path / "tuned"), num_threads=1)
    torch_model = rwkv_music.backends.torch.TorchModel.from_state_dict(sd)
    assert (tmp_path / "tuned.state.npz").is_file()
    assert max_state_diff(ncnn_model.new_state(2), torch_model.new_state(2)) == 0.0
    toks = tokens(2, 5, seed=3)
    got, _ = ncnn_model.forward(toks)
    want, _ = torch_model.forward(toks)
    assert np.abs(got - want.numpy()).max() <= FP32_TOL


def test_cli_export_ncnn_writes_the_three_files(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.export import export_ncnn

    runner = CliRunner()
    result = runner.invoke(export_ncnn, [str(checkpoint_path("5.1")), str(tmp_path / "m"), "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / f"m{s}").is_file() for s in (".param", ".bin", ".json"))
    again = runner.invoke(export_ncnn, [str(checkpoint_path("5.1")), str(tmp_path / "m")])
    assert again.exit_code == 2 and "exists" in again.output


def test_cli_commands_run_on_ncnn_without_torch(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """``info`` and ``generate-midi --backend ncnn`` in a fresh interpreter; torch never imported."""
    ckpt = checkpoint_path("7", vocab_size=20096, n_embd=64)
    param = export_cached(tmp_path_factory, ckpt)
    out = tmp_path / "out"
    code = f"""
import sys
from click.testing import CliRunner
from rwkv_music.cli.main import main
runner = CliRunner()
r = runner.invoke(main, ["info", {str(param)!r}, "--backend", "ncnn"])
assert r.exit_code == 0, r.output
assert "20096" in r.output, r.output
r = runner.invoke(main, ["generate-midi", "--backend", "ncnn", "--model", {str(param)!r}, "--max-tokens", "12",
                         "--seed", "5", "--out", {str(out)!r}, "-q"])
assert r.exit_code == 0, (r.output, repr(r.exception))
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    proc = _run_python(code, timeout=300)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-2000:]
    assert list(out.glob("*.mid"))
