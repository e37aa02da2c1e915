"""Shipped models by name (``abc-default``, ``midi-default``), ``rwkv-music models``, ``info``'s files and
dtypes, ``state make --mode``, and checkpoints on the ONNX/ncnn backends through the export cache.

The shipped folders are pointed at tiny random checkpoints made here (``assets.default_model_dir``
monkeypatched), so the tests cover the name resolution, not the real weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rwkv_music.assets as assets
from rwkv_music import __version__
from rwkv_music.cli.main import main
from rwkv_music.errors import RwkvMusicError
from rwkv_music.model.factory import save_random_checkpoint


def _run(args: list[object], env: dict[str, str] | None = None):  # noqa: ANN202 - click's Result
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """abc-default (fp16, as the real one) and midi-default, as random checkpoints with model cards."""
    folders = {}
    for mode, vocab in (("abc", 128), ("midi", 20096)):
        folder = tmp_path / "assets" / f"{mode}-default"
        folder.mkdir(parents=True)
        save_random_checkpoint(folder / "model.pth", "7", torch.float16, vocab_size=vocab, n_embd=64, n_layer=1)
        (folder / "MODEL_CARD.md").write_text(f"# {mode}-default — test {mode} model\n\nTrained on nothing.\n")
        folders[mode] = folder
    monkeypatch.setattr(assets, "default_model_dir", lambda mode: folders[mode])
    monkeypatch.setenv("RWKV_MUSIC_CACHE", str(tmp_path / "cache"))
    return {mode: folder / "model.pth" for mode, folder in folders.items()}


def test_models_lists_names_paths_and_cards(shipped: dict[str, Path]) -> None:
    result = _run(["models"])
    assert result.exit_code == 0, result.output
    for mode, path in shipped.items():
        assert f"{mode}-default" in result.output
        assert str(path) in result.output
        assert str(path.parent / "MODEL_CARD.md") in result.output
    assert "test abc model" in result.output  # the card's title, without the repeated name
    card = _run(["models", "midi-default"])
    assert card.exit_code == 0 and "Trained on nothing." in card.output
    bad = _run(["models", "midi-defualt"])
    assert bad.exit_code != 0
    assert bad.output.strip().splitlines() == [
        "Error: 'midi-defualt' is not a shipped model; the shipped models are abc-default, midi-default"
    ]


def test_info_by_name_reports_the_stored_dtype(shipped: dict[str, Path], checkpoint_path: Callable[..., Path]) -> None:
    result = _run(["info", "abc-default"])
    assert result.exit_code == 0, result.output
    rows = {line[:18].strip(): line[19:] for line in result.output.splitlines()}  # "name<18> value"
    assert rows["stored dtype"] == "float16"
    assert rows["compute dtype"] == "fp32"
    assert str(shipped["abc"]) in rows["file"]
    assert "128 ids (abc mode)" in result.output
    fp32 = _run(["info", checkpoint_path("7", vocab_size=128, n_layer=1)])
    assert "stored dtype       float32" in fp32.output


def test_info_of_an_unknown_model_names_the_shipped_ones(shipped: dict[str, Path]) -> None:
    result = _run(["info", "abc-defualt"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: abc-defualt: no such model file (shipped models: abc-default, midi-default; see 'rwkv-music models')"
    ]


def test_a_real_file_wins_over_a_name(shipped: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      checkpoint_path: Callable[..., Path]) -> None:
    own = checkpoint_path("7", vocab_size=128, n_layer=1)
    monkeypatch.chdir(tmp_path)
    Path("abc-default").write_bytes(own.read_bytes())
    assert assets.resolve_model("abc-default") == Path("abc-default")
    assert assets.resolve_model("midi-default") == shipped["midi"]
    assert assets.resolve_model(Path("midi-default")) == shipped["midi"]
    assert assets.resolve_model("nothing-here.pth") == Path("nothing-here.pth")


def test_info_of_an_ncnn_export_counts_param_and_bin(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    pytest.importorskip("ncnn")
    ckpt = checkpoint_path("7", vocab_size=128, n_layer=1)
    assert _run(["export-ncnn", ckpt, tmp_path / "m"]).exit_code == 0
    param, binary = tmp_path / "m.param", tmp_path / "m.bin"
    result = _run(["info", param])  # the backend follows the suffix
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("file"))
    assert "m.bin" in line and str(param) in line
    total_kib = (param.stat().st_size + binary.stat().st_size) / 2**10
    assert line.endswith(f"= {total_kib:.1f} KiB")
    assert "backend            ncnn on cpu" in result.output
    assert "stored dtype       fp32" in result.output


def test_export_commands_take_names(shipped: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    result = _run(["export-onnx", "abc-default", tmp_path / "abc.onnx"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "abc.onnx").is_file() and (tmp_path / "abc.onnx.json").is_file()
    bad = _run(["export-ncnn", "abc-defualt", tmp_path / "x"])
    assert bad.exit_code != 0 and "no such model file (shipped models:" in bad.output
    assert not list(tmp_path.glob("x.*"))


def test_state_make_mode_picks_the_shipped_model(shipped: dict[str, Path], tmp_path: Path) -> None:
    from rwkv_music.model.state import State

    out = tmp_path / "abc.npz"
    result = _run(["state", "make", "--mode", "abc", "--prompt", "S:2", "--out", out])
    assert result.exit_code == 0, result.output
    assert State.load(out).batch_size == 1
    # without --mode (and --model) the MIDI model reads it: the error says how to get the ABC one
    midi = _run(["state", "make", "--prompt", "S:2", "--out", tmp_path / "m.npz"])
    assert midi.exit_code != 0
    assert len(midi.output.strip().splitlines()) == 1
    assert "pass --mode abc" in midi.output
    assert not (tmp_path / "m.npz").exists()
    # --mode is checked against --model's vocabulary
    clash = _run(["state", "make", "--mode", "midi", "--model", "abc-default", "--prompt", "S:2", "--out", out,
                  "--force"])
    assert clash.exit_code != 0 and "vocab/model mismatch" in clash.output


def test_state_make_from_an_abc_file_uses_the_abc_model(shipped: dict[str, Path], tmp_path: Path) -> None:
    tune = tmp_path / "t.abc"
    tune.write_text("X:1\nT:Air\nL:1/8\nM:4/4\nK:D\nDEFG ABcd|]\n")
    result = _run(["state", "make", "--from-file", tune, "--out", tmp_path / "t.npz"])
    assert result.exit_code == 0, result.output
    wrong = _run(["state", "make", "--mode", "midi", "--from-file", tune, "--out", tmp_path / "u.npz"])
    assert wrong.exit_code != 0
    assert "t.abc is an ABC file, but the model is a MIDI model" in wrong.output


@pytest.mark.parametrize("backend", ["onnx", "ncnn"])
def test_shipped_model_runs_on_export_backends_through_the_cache(
    shipped: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    pytest.importorskip("onnx" if backend == "onnx" else "ncnn")
    pytest.importorskip("onnxruntime" if backend == "onnx" else "ncnn")
    import rwkv_music

    cache = tmp_path / "cache" / "exports"
    args = ["generate-abc", "--model", "abc-default", "--backend", backend, "--seed", 1, "--max-tokens", 8,
            "--no-constraints", "-q"]
    first = _run(args + ["--out", tmp_path / "a"])
    assert first.exit_code == 0, first.output
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and backend in entries[0] and not entries[0].startswith(".tmp")
    model_file = next((cache / entries[0]).glob("model.onnx" if backend == "onnx" else "model.param"))
    stamp = model_file.stat().st_mtime_ns
    second = _run(args + ["--out", tmp_path / "b"])  # reuses the export
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert model_file.stat().st_mtime_ns == stamp
    assert (tmp_path / "a" / "abc-1-00.abc").read_text() == (tmp_path / "b" / "abc-1-00.abc").read_text()
    # the export computes what the checkpoint computes
    ids = [[2, 83, 58, 50]]
    ref, _ = rwkv_music.load_model("abc-default").forward(ids)
    got, _ = rwkv_music.load_model("abc-default", backend=backend).forward(ids)
    np.testing.assert_allclose(np.asarray(got), ref.float().numpy(), atol=2e-3)


def test_a_changed_checkpoint_gets_a_new_export_and_a_failed_export_leaves_nothing(
    shipped: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from rwkv_music.backends import export_cache, onnx_export

    cache = tmp_path / "c"
    first = export_cache.exported(shipped["abc"], "onnx", None, cache)
    save_random_checkpoint(shipped["abc"], "7", torch.float16, vocab_size=128, n_embd=64, n_layer=1, seed=5)
    second = export_cache.exported(shipped["abc"], "onnx", None, cache)
    assert first.parent != second.parent and first.is_file() and second.is_file()
    int8 = export_cache.exported(shipped["abc"], "onnx", "int8", cache).parent.name
    assert int8.endswith(f"-onnx-int8-v{__version__}")

    real = onnx_export.export

    def crash(src: Path, out: Path, *args: object, **kw: object) -> Path:
        real(src, out, *args, **kw)  # the files are written ...
        raise OSError(28, "No space left on device")  # ... and then the disk fills up

    monkeypatch.setattr(onnx_export, "export", crash)
    killed = cache / "exports" / ".tmp-killed"  # what a process killed mid-export leaves, a day ago
    killed.mkdir()
    os.utime(killed, (killed.stat().st_atime - 86400, killed.stat().st_mtime - 86400))
    before = sorted(p for p in os.listdir(cache / "exports") if p != killed.name)
    with pytest.raises(OSError):
        export_cache.exported(shipped["abc"], "onnx", "fp16", cache)
    assert sorted(os.listdir(cache / "exports")) == before  # no half export, no leftover temp folder


def test_composer_load_by_name_and_unknown_name(shipped: dict[str, Path]) -> None:
    from rwkv_music.compose.composer import Composer

    composer = Composer.load("abc-default")
    assert composer.mode == "abc" and composer.model_name == str(shipped["abc"])
    with pytest.raises(RwkvMusicError, match=r"^abc-dflt: no such model file \(shipped models: abc-default"):
        Composer.load("abc-dflt")


def test_a_dtype_the_onnx_backend_cannot_run_is_refused_before_exporting(
    shipped: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from rwkv_music.backends import load_backend
    from rwkv_music.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="cannot run int3"):
        load_backend("abc-default", backend="onnx", dtype="int3", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("dtype", ["int4", "bf16"])
def test_the_onnx_backend_exports_weight_storages_on_first_use(
    checkpoint_path: Callable[..., Path], tmp_path: Path, dtype: str
) -> None:
    pytest.importorskip("onnxruntime")
    from rwkv_music.backends import load_backend

    ckpt = checkpoint_path("7", vocab_size=128, n_layer=1)
    model = load_backend(ckpt, backend="onnx", dtype=dtype, cache_dir=tmp_path / "c")
    side = next((tmp_path / "c").rglob("*.onnx.json"))
    assert json.loads(side.read_text())["weights"] == dtype and model.dtype == dtype
    logits, _ = model.forward([[1, 2, 3]])
    assert model.as_numpy(logits).shape[-1] == 128


def test_export_ncnn_takes_the_int8_scheme_and_the_prefill_chunk(
    checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    pytest.importorskip("ncnn")
    ckpt = checkpoint_path("7", vocab_size=128, n_layer=1)
    assert _run(["export-ncnn", ckpt, tmp_path / "a", "--prefill-chunk", "0"]).exit_code == 0
    assert not (tmp_path / "a.seq.param").exists()  # no prefill graph asked for
    assert _run(["export-ncnn", ckpt, tmp_path / "b", "--prefill-chunk", "8"]).exit_code == 0
    assert (tmp_path / "b.seq.param").is_file()
    code = _run(["export-ncnn", ckpt, tmp_path / "c", "--dtype", "int8", "--int8-scheme", "codebook"])
    assert code.exit_code == 0, code.output
    assert json.loads((tmp_path / "c.json").read_text())["quantization"].startswith("codebook8")
    wrong = _run(["export-ncnn", ckpt, tmp_path / "d", "--int8-scheme", "codebook"])
    assert wrong.exit_code == 2 and "--dtype int8" in wrong.output
