"""Rendering on Ray workers: the files and manifest of a local render, a dead worker's blocks rendered by the
others (each sample written once), a killed driver resumed, and one-line errors.

One real local Ray runtime for the module (2 CPUs, no dashboard, a small object store); workers hold half a
CPU each so a second driver fits beside the test's own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from rwkv_music.cli.main import main as cli  # noqa: E402
from rwkv_music.compose.composer import Composer  # noqa: E402
from rwkv_music.compose.ray_render import ModelSpec, RayOptions, RayRenderer  # noqa: E402
from rwkv_music.compose.render import RenderSettings, render  # noqa: E402
from rwkv_music.errors import RwkvMusicError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS, K = 5, 2
SETTINGS = RenderSettings(K, 2, 11, {"max_tokens": 24})
HALF = {"cpus_per_worker": 0.5}


@pytest.fixture(scope="module")
def runtime() -> Iterator[str]:
    """The module's Ray runtime; yields its address (for a second driver process)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=20096, n_layer=2)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "p.txt"
    path.write_text("\n".join(f"pi:{0x30 + i:x}:7 t{5 + i} pi:{0x30 + i:x}:0" for i in range(N_PROMPTS)) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(model: Path, prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local render every Ray render must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    report = render(Composer.load(str(model), threads=1), prompts, out, SETTINGS)
    assert report.complete and report.written == N_PROMPTS * K
    return out


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _assert_same_as(out: Path, reference: Path) -> None:
    """Same files byte for byte, each once in the manifest, same rows but for the wall-clock time."""
    rows, expected = _rows(out), _rows(reference)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_PROMPTS * K

    def key(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return row["id"], {k: v for k, v in row.items() if k != "seconds"}

    assert sorted(map(key, rows), key=lambda r: r[0]) == sorted(map(key, expected), key=lambda r: r[0])
    files = sorted(p.name for p in out.glob("*.mid"))
    assert files == sorted(p.name for p in reference.glob("*.mid")) == sorted(r["output"] for r in rows)
    for name in files:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(out.glob(".*tmp*"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == N_PROMPTS * K and stats["complete"]


def test_ray_render_writes_the_files_and_manifest_of_a_local_render(
    runtime: str, model: Path, prompts: Path, reference: Path, tmp_path: Path
) -> None:
    # blocks of 3 cut prompts' sample ranges apart; two workers interleave them
    with RayRenderer(ModelSpec(str(model)), RayOptions(workers=2, block_size=3, **HALF)) as renderer:
        report = renderer.render(prompts, tmp_path / "ray", SETTINGS)
        assert report.written == N_PROMPTS * K and report.complete
        _assert_same_as(tmp_path / "ray", reference)
        # a first run cut short, then resumed: by a local render (one manifest format, one resume)
        part = tmp_path / "part"
        first = renderer.render(prompts, part, RenderSettings(K, 2, 11, {"max_tokens": 24}, max_samples=3))
        assert first.written == 3 and not first.complete
    second = render(Composer.load(str(model), threads=1), prompts, part,
                    RenderSettings(K, 2, 11, {"max_tokens": 24}, resume=True))
    assert second.done_before == 3 and second.written == N_PROMPTS * K - 3
    _assert_same_as(part, reference)


def test_write_on_workers_and_the_cli_give_the_same_files(
    runtime: str, model: Path, prompts: Path, reference: Path, tmp_path: Path
) -> None:
    options = RayOptions(workers=1, write_on_workers=True, **HALF)
    with RayRenderer(ModelSpec(str(model)), options) as renderer:
        assert renderer.render(prompts, tmp_path / "shared", SETTINGS).complete
    _assert_same_as(tmp_path / "shared", reference)
    args = ["render", str(prompts), "--model", str(model), "-n", str(K), "-b", "2", "--max-tokens", "24",
            "--seed", "11", "-q", "--out", str(tmp_path / "cli"), "--ray", "--workers", "2", "--cpus-per-worker",
            "0.5", "--block-size", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{N_PROMPTS * K}/{N_PROMPTS * K} samples" in result.output
    _assert_same_as(tmp_path / "cli", reference)


def test_a_killed_worker_s_blocks_go_to_the_other_and_each_sample_is_written_once(
    runtime: str, model: Path, prompts: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    options = RayOptions(workers=2, block_size=1, blocks_per_worker=3, **HALF)
    with RayRenderer(ModelSpec(str(model)), options) as renderer:
        victim = renderer.workers[1]
        seen: list[int] = []

        def progress(n: int, todo: int, _tokens: int) -> None:
            if n and not seen:  # the first sample is on disk: worker 1 still holds up to 3 blocks
                seen.append(len(_rows(out)))
                ray.kill(victim, no_restart=True)

        report = renderer.render(prompts, out, SETTINGS, progress=progress)
        assert seen and seen[0] < N_PROMPTS * K  # the kill came mid-run
        assert renderer.requeued >= 1  # the dead worker's unfinished blocks were handed out again
    assert report.written == N_PROMPTS * K and report.complete
    _assert_same_as(out, reference)


DRIVER = """
import sys, time
from pathlib import Path
from rwkv_music.compose.ray_render import ModelSpec, RayOptions, RayRenderer
from rwkv_music.compose.render import RenderSettings
address, model, prompts, out, marker = sys.argv[1:]

def progress(n, todo, tokens):
    if n:
        Path(marker).write_text("written")
        time.sleep(60)  # killed here, with samples still to render

options = RayOptions(address=address, workers=1, block_size=1, cpus_per_worker=0.5)
with RayRenderer(ModelSpec(model), options) as renderer:
    renderer.render(prompts, out, RenderSettings(2, 2, 11, {"max_tokens": 24}), progress=progress)
"""


def test_a_killed_driver_resumes_to_the_local_render(
    runtime: str, model: Path, prompts: Path, reference: Path, tmp_path: Path
) -> None:
    out, marker, script = tmp_path / "out", tmp_path / "marker", tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), runtime, str(model), str(prompts), str(out), str(marker)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a bound on a hung driver, not a timing assumption
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the driver wrote nothing: {proc.stderr.read()[-800:] if proc.poll() else 'hung'}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done_before = len(_rows(out))
    assert 1 <= done_before < N_PROMPTS * K and not (out / "stats.json").exists()
    settings = RenderSettings(K, 2, 11, {"max_tokens": 24}, resume=True)
    with RayRenderer(ModelSpec(str(model)), RayOptions(workers=2, block_size=2, **HALF)) as renderer:
        report = renderer.render(prompts, out, settings)
    assert report.done_before == done_before and report.written == N_PROMPTS * K - done_before
    _assert_same_as(out, reference)


def test_bad_input_is_one_line_and_the_manifest_stays_intact(
    runtime: str, model: Path, prompts: Path, tmp_path: Path
) -> None:
    with pytest.raises(RwkvMusicError, match=r"--ray 127\.0\.0\.1:1: cannot reach the Ray cluster") as err:
        RayRenderer(ModelSpec(str(model)), RayOptions(address="127.0.0.1:1")).start()
    assert "\n" not in str(err.value)
    missing = tmp_path / "missing.pth"
    with pytest.raises(RwkvMusicError, match=r"ray worker 0 \(node .*\) cannot load .*missing\.pth") as err:
        RayRenderer(ModelSpec(str(missing)), RayOptions(**HALF)).start()
    assert "\n" not in str(err.value)
    with pytest.raises(RwkvMusicError, match="3 workers x 1 CPU need 3 CPUs; the Ray cluster has 2"):
        RayRenderer(ModelSpec(str(model)), RayOptions(workers=3)).start()
    # a row the workers refuse, after rows that were written: the driver stops, the manifest holds whole rows
    rows = tmp_path / "rows.jsonl"
    good = [json.dumps({"prompt": f"pi:{0x30 + i:x}:7 t5"}) for i in range(3)]
    rows.write_text("\n".join([*good, json.dumps({"prompt": "pi:30:7", "instruments": "kazoo-of-doom"})]) + "\n")
    out = tmp_path / "out"
    options = RayOptions(workers=1, block_size=1, blocks_per_worker=1, **HALF)
    with RayRenderer(ModelSpec(str(model)), options) as renderer:
        with pytest.raises(RwkvMusicError, match="kazoo-of-doom") as err:
            renderer.render(rows, out, RenderSettings(1, 2, 3, {"max_tokens": 8}))
    assert "\n" not in str(err.value)
    written = _rows(out)
    assert [r["id"] for r in written] == ["00000_0", "00001_0", "00002_0"]
    assert all((out / r["output"]).is_file() for r in written) and not list(out.glob(".*tmp*"))


def test_an_unreadable_input_file_is_listed_as_a_local_render_lists_it(
    runtime: str, model: Path, tmp_path: Path
) -> None:
    (tmp_path / "bad.mid").write_bytes(b"not a MIDI file at all")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "pi:3c:7 t5"}) + "\n" + json.dumps({"file": "bad.mid"}) + "\n")
    settings = RenderSettings(2, 2, 3, {"max_tokens": 8})
    local = render(Composer.load(str(model), threads=1), rows, tmp_path / "local", settings)
    with RayRenderer(ModelSpec(str(model)), RayOptions(workers=1, block_size=1, **HALF)) as renderer:
        report = renderer.render(rows, tmp_path / "ray", settings)
    assert report.failed == local.failed and len(report.failed) == 1 and report.failed[0][0].endswith("bad.mid")
    assert (tmp_path / "ray" / "failed.txt").read_text() == (tmp_path / "local" / "failed.txt").read_text()
    assert report.written == local.written == 2 and report.complete
    assert json.loads((tmp_path / "ray" / "stats.json").read_text())["failed_inputs"] == 1
