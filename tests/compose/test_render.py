"""Batch rendering: files + manifest + stats, deterministic seeds, and crash-safe resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import mido
import pytest
from fake_backend import FakeBackend

from rwkv_music.compose.composer import Composer, piece_seed
from rwkv_music.compose.render import RenderSettings, read_jobs, render
from rwkv_music.errors import OutputExistsError, RwkvMusicError

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS, K = 30, 2


def _prompts(path: Path) -> Path:
    lines = [f"pi:{0x30 + i:x}:7 t{5 + i} pi:{0x30 + i:x}:0" for i in range(N_PROMPTS)]
    path.write_text("# thirty short MIDI prompts\n" + "\n".join(lines) + "\n")
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _check_complete(out: Path) -> list[dict]:
    rows = _manifest(out)
    ids = [r["id"] for r in rows]
    assert len(rows) == N_PROMPTS * K and len(set(ids)) == len(ids)
    files = sorted(p.name for p in out.glob("*.mid"))
    assert files == sorted(r["output"] for r in rows)
    for r in rows:  # every file is whole: mido reads it
        assert mido.MidiFile(out / r["output"]).length >= 0
    assert not list(out.glob(".*tmp*"))
    return rows


@pytest.fixture(scope="module")
def midi_model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=20096, n_layer=2)


def test_render_30_prompts_x2_writes_60_files_and_a_60_row_manifest(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")  # the real model runs in the kill test below
    out = tmp_path / "out"
    report = render(composer, _prompts(tmp_path / "p.txt"), out, RenderSettings(K, 30, 7, {"max_tokens": 6}))
    rows = _check_complete(out)
    assert report.written == 60 and report.complete
    first = next(r for r in rows if r["id"] == "00003_1")
    assert first["seed"] == piece_seed(7, 3 * K + 1) and first["row"] == 3 and first["sample"] == 1
    assert first["input"].startswith("pi:33:7") and first["tokens"] <= 6 and "validity" in first
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == 60 and stats["complete"] and stats["decodes_rate"] == 1.0


def test_the_manifest_is_fsynced_at_most_once_a_second_and_when_the_render_ends_or_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A render appends every row at once but fsyncs the manifest only when MANIFEST_SYNC_S has passed
    since the last fsync, and before it returns or raises: every row is on disk when render() is done."""
    import rwkv_music.compose.render as render_mod

    events: list[tuple[str, str]] = []
    append, fsync = render_mod.append_jsonl, render_mod.fsync_path
    monkeypatch.setattr(render_mod, "append_jsonl", lambda path, row, sync=True: (
        events.append(("row", "synced" if sync else "written")), append(path, row, sync=sync))[-1])
    monkeypatch.setattr(render_mod, "fsync_path", lambda path: (events.append(("sync", Path(path).name)),
                                                                fsync(path))[-1])
    composer = Composer(FakeBackend(20096), model_name="fake")
    prompts = _prompts(tmp_path / "p.txt")
    monkeypatch.setattr(render_mod, "MANIFEST_SYNC_S", 3600.0)  # a render shorter than the interval
    render(composer, prompts, tmp_path / "a", RenderSettings(K, 8, 7, {"max_tokens": 6}))
    _check_complete(tmp_path / "a")
    assert events == [("row", "written")] * (N_PROMPTS * K) + [("sync", "manifest.jsonl")]  # one, at the end

    events.clear()
    monkeypatch.setattr(render_mod, "MANIFEST_SYNC_S", 0.0)  # every row synced: nothing left for the end
    render(composer, prompts, tmp_path / "b", RenderSettings(K, 8, 7, {"max_tokens": 6}))
    assert set(events) == {("row", "synced")} and len(events) == N_PROMPTS * K

    events.clear()
    monkeypatch.setattr(render_mod, "MANIFEST_SYNC_S", 3600.0)

    def stop(done_now: int, todo: int, tokens: int) -> None:
        if sum(1 for e in events if e[0] == "row") >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render(composer, prompts, tmp_path / "c", RenderSettings(K, 8, 7, {"max_tokens": 6}), progress=stop)
    assert events[-1] == ("sync", "manifest.jsonl") and ("row", "synced") not in events  # synced on the way out
    assert len(_manifest(tmp_path / "c")) == sum(1 for e in events if e[0] == "row")


def test_resume_after_a_partial_run_gives_the_same_samples_as_one_run(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")
    prompts = _prompts(tmp_path / "p.txt")
    full, part = tmp_path / "full", tmp_path / "part"
    render(composer, prompts, full, RenderSettings(K, 16, 3, {"max_tokens": 4}))
    first = render(composer, prompts, part, RenderSettings(K, 7, 3, {"max_tokens": 4}, max_samples=11))
    assert first.written == 11 and not first.complete
    with pytest.raises(OutputExistsError, match="--resume"):
        render(composer, prompts, part, RenderSettings(K, 7, 3, {"max_tokens": 4}))
    second = render(composer, prompts, part, RenderSettings(K, 5, 3, {"max_tokens": 4}, resume=True))
    assert second.written == 49 and second.complete
    _check_complete(part)
    for row in _manifest(full):  # batching differs, pieces do not
        assert (part / row["output"]).read_bytes() == (full / row["output"]).read_bytes()


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")
    prompts = _prompts(tmp_path / "p.txt")
    render(composer, prompts, tmp_path / "o", RenderSettings(1, 8, 0, {"max_tokens": 2}, max_samples=2))
    with pytest.raises(RwkvMusicError, match="seed"):
        render(composer, prompts, tmp_path / "o", RenderSettings(1, 8, 1, {"max_tokens": 2}, resume=True))


def _complete_rows(manifest: Path) -> list[dict]:
    """Rows whose line is whole (a process stopped mid-write may leave a partial last line)."""
    if not manifest.exists():
        return []
    text = manifest.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def test_a_render_killed_mid_run_resumes_to_the_uninterrupted_samples(midi_model: Path, tmp_path: Path) -> None:
    """SIGKILL once the first row is on disk; ``--resume`` then writes each missing sample once.

    No timing window: one sample per batch and 64 tokens each make the run last seconds after its
    first row, the render is frozen (SIGSTOP) before its manifest is counted, so the count proves
    the kill came mid-run, and the resumed folder must equal an uninterrupted render byte for byte.
    """
    prompts = _prompts(tmp_path / "p.txt")
    settings = ["-n", str(K), "-b", "1", "--max-tokens", "64", "--seed", "5", "--threads", "1", "-q"]
    cmd = [sys.executable, "-m", "rwkv_music", "render", str(prompts), "--model", str(midi_model), *settings]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full, out = tmp_path / "full", tmp_path / "out"
    # the uninterrupted render runs alongside: it only slows the one being killed
    reference = subprocess.Popen(
        [*cmd, "--out", str(full)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300  # a generous bound on a hung render, not a timing assumption
    while not _complete_rows(out / "manifest.jsonl") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"render ended before its first row was seen: {proc.stderr.read()[-500:]}"
    proc.send_signal(signal.SIGSTOP)  # frozen: the manifest cannot grow between counting and the kill
    done_before = len(_complete_rows(out / "manifest.jsonl"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert 1 <= done_before < N_PROMPTS * K
    resumed = subprocess.run(
        [*cmd, "--out", str(out), "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert f"60/60 samples ({60 - done_before} new)" in resumed.stdout, resumed.stdout
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-500:]
    rows, expected = _check_complete(out), _check_complete(full)

    def without_timing(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "seconds"}  # wall-clock time per sample

    assert sorted(map(without_timing, rows), key=lambda r: r["id"]) == sorted(
        map(without_timing, expected), key=lambda r: r["id"]
    )
    for row in expected:
        assert (out / row["output"]).read_bytes() == (full / row["output"]).read_bytes()


def test_folder_input_continues_each_file_and_jsonl_rows_carry_params(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")
    folder = tmp_path / "mids"
    folder.mkdir()
    for i in range(2):
        composer.tokenizer.text_to_midi(f"pi:{0x3C + i:x}:a t40 pi:{0x3C + i:x}:0").save(folder / f"m{i}.mid")
    report = render(composer, folder, tmp_path / "o1", RenderSettings(2, 4, 0, {"max_tokens": 3}))
    rows = _manifest(tmp_path / "o1")
    assert report.written == 4 and {r["output"] for r in rows} == {
        "00000_m0_0.mid",
        "00000_m0_1.mid",
        "00001_m1_0.mid",
        "00001_m1_1.mid",
    }
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"prompt": "pi:3c:a t10", "max_tokens": 2}\n{"file": "mids/m1.mid", "temperature": 0.5}\n')
    render(composer, jsonl, tmp_path / "o2", RenderSettings(1, 4, 0, {"max_tokens": 5}))
    rows = {r["row"]: r for r in _manifest(tmp_path / "o2")}
    assert rows[0]["params"]["max_tokens"] == 2 and rows[0]["tokens"] <= 2
    assert rows[1]["params"]["max_tokens"] == 5 and rows[1]["input"].endswith("m1.mid")


def test_bad_jsonl_rows_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "pi:3c:a"}\n{"prompt": "x", "colour": "red"}\n')
    with pytest.raises(RwkvMusicError, match=r"rows.jsonl:2: unknown key\(s\) colour"):
        read_jobs(path, "midi")


def test_abc_rows_carry_the_form_and_variety_options(tmp_path: Path) -> None:
    rows = tmp_path / "tunes.jsonl"
    rows.write_text('{"prompt": "S:2", "meter": "3/4", "parts": 3, "bars_per_part": 4, "max_bar_repeats": 0}\n'
                    '{"prompt": "S:2", "vary_rhythm": false, "cadence": false}\n')
    jobs = read_jobs(rows, "abc")
    assert dict(jobs[0].params) == {"meter": "3/4", "parts": 3, "bars_per_part": 4, "max_bar_repeats": 0}
    assert dict(jobs[1].params) == {"vary_rhythm": False, "cadence": False}
    from rwkv_music.formats.abc.options import AbcOptions

    options = AbcOptions(**dict(jobs[0].params))
    assert (options.parts, options.bars_per_part, options.max_bar_repeats, options.vary_rhythm) == (3, 4, 0, True)
    rows.write_text('{"prompt": "S:2", "vary_rhythm": "no"}\n')
    with pytest.raises(RwkvMusicError, match="vary_rhythm must be true or false"):
        AbcOptions(**dict(read_jobs(rows, "abc")[0].params))


def _without_timing(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=lambda r: r["id"])


def _abc_render_in_process(tmp_path: Path) -> tuple[Composer, Path, dict, Path, Path]:
    """24 ABC pieces (12 prompts x 2) rendered by this process into ``here``; ``there`` is for the other render."""
    composer = Composer(FakeBackend(128), model_name="fake")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"meter": m}) + "\n" for m in ("2/4", "3/4", "6/8") * 4))
    settings = {"max_tokens": 160}
    here, there = tmp_path / "here", tmp_path / "there"
    render(composer, prompts, here, RenderSettings(2, 5, 9, settings, check_workers=0))
    return composer, prompts, settings, here, there


def test_abc_pieces_finished_in_worker_processes_give_the_render_of_this_process(tmp_path: Path) -> None:
    """check_workers=2 (files written and checked with music21 in two worker processes) against 0 (in the
    render's process): the same files and rows, in the same order; a run stopped mid-way keeps the rows of
    the pieces already finished, and its resume completes the same render."""
    composer, prompts, settings, here, there = _abc_render_in_process(tmp_path)
    report = render(composer, prompts, there, RenderSettings(2, 5, 9, settings, check_workers=2))
    assert report.written == 24 and report.complete
    rows = _manifest(there)
    assert [r["id"] for r in rows] == [r["id"] for r in _manifest(here)]  # rows keep the pieces' order
    assert _without_timing(rows) == _without_timing(_manifest(here))
    assert {r["validity"]["parse_ok"] for r in rows} == {True}
    for row in rows:
        assert (there / row["output"]).read_bytes() == (here / row["output"]).read_bytes()

    stopped = tmp_path / "stopped"

    def stop_after_ten(done_now: int, todo: int, tokens: int) -> None:
        stop_after_ten.n += done_now
        if stop_after_ten.n == 10:
            raise KeyboardInterrupt

    stop_after_ten.n = 0
    with pytest.raises(KeyboardInterrupt):
        render(composer, prompts, stopped, RenderSettings(2, 5, 9, settings, check_workers=2), progress=stop_after_ten)
    kept = _complete_rows(stopped / "manifest.jsonl")
    assert len(kept) <= len(list(stopped.glob("*.abc"))) <= 10  # (workers may not have written them all)
    assert all((stopped / r["output"]).is_file() for r in kept) and not list(stopped.glob(".*tmp*"))
    resumed = render(composer, prompts, stopped, RenderSettings(2, 3, 9, settings, check_workers=2, resume=True))
    assert resumed.complete and resumed.done_before + resumed.written == 24
    assert _without_timing(_manifest(stopped)) == _without_timing(rows)


def test_a_render_whose_decoder_leaves_a_core_idle_finishes_the_rest_in_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default check_workers, a render that starts finishing its pieces itself watches its decoder;
    a decoder that leaves a core idle (here: a one-thread fake backend on four cores) hands the pieces
    after the first eight to workers: the same files and rows as a render that finishes them all itself."""
    from rwkv_music.compose import piece_workers

    monkeypatch.setattr(piece_workers, "_cores", lambda: 4)
    monkeypatch.setattr(piece_workers, "auto_workers", lambda *a, **k: 0)  # (the backend's threads: unknown)
    composer, prompts, settings, here, there = _abc_render_in_process(tmp_path)
    submitted: list[str] = []
    submit = piece_workers.PiecePool.submit
    monkeypatch.setattr(piece_workers.PiecePool, "submit",
                        lambda pool, request: submitted.append(request["text"]) or submit(pool, request))
    with caplog.at_level("INFO", logger="rwkv_music.compose.render"):
        report = render(composer, prompts, there, RenderSettings(2, 5, 9, settings))
    assert report.written == 24 and report.complete
    assert "piece worker(s) finish the rest" in caplog.text
    assert len(submitted) == 24 - piece_workers.DecoderWatch.PROBE_PIECES
    rows = _manifest(there)
    assert [r["id"] for r in rows] == [r["id"] for r in _manifest(here)]
    assert _without_timing(rows) == _without_timing(_manifest(here))
    for row in rows:
        assert (there / row["output"]).read_bytes() == (here / row["output"]).read_bytes()


def test_midi_pieces_finished_in_worker_processes_give_the_render_of_this_process(tmp_path: Path) -> None:
    composer = Composer(FakeBackend(20096), model_name="fake")
    prompts = _prompts(tmp_path / "p.txt")
    here, there = tmp_path / "here", tmp_path / "there"
    render(composer, prompts, here, RenderSettings(K, 9, 4, {"max_tokens": 24}, check_workers=0))
    report = render(composer, prompts, there, RenderSettings(K, 9, 4, {"max_tokens": 24}, check_workers=2))
    assert report.written == 60 and report.complete
    rows = _check_complete(there)
    assert [r["id"] for r in rows] == [r["id"] for r in _manifest(here)]
    assert _without_timing(rows) == _without_timing(_manifest(here))
    assert {r["validity"]["decodes"] for r in rows} == {True}
    for row in rows:
        assert (there / row["output"]).read_bytes() == (here / row["output"]).read_bytes()


def test_check_workers_is_checked() -> None:
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(RwkvMusicError, match="check_workers"):
            RenderSettings(check_workers=bad)


def test_cli_check_workers_is_for_a_local_render(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.main import main as cli

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n")
    result = CliRunner().invoke(cli, ["render", str(prompts), "-o", str(tmp_path / "o"), "--check-workers", "2",
                                      "--ray"])
    assert result.exit_code == 2 and "--check-workers is for a render in this process" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_check_workers_reach_the_render(
    checkpoint_path: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.main import main as cli
    from rwkv_music.compose import piece_workers

    pools = []
    real_init = piece_workers.PiecePool.__init__

    def recording_init(self, workers, command=None):  # noqa: ANN001
        pools.append(workers)
        real_init(self, workers, command)

    monkeypatch.setattr(piece_workers.PiecePool, "__init__", recording_init)
    model = checkpoint_path("7", vocab_size=128, n_layer=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"meter": "3/4"}\n')
    args = ["render", str(prompts), "--model", str(model), "-n", "3", "--max-tokens", "120", "--seed", "1", "-q"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "o"), "--check-workers", "1"])
    assert result.exit_code == 0, result.output
    assert pools == [1]
    rows = _manifest(tmp_path / "o")
    assert len(rows) == 3 and all("parse_ok" in r["validity"] for r in rows)
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "o0"), "--check-workers", "0"])
    assert result.exit_code == 0 and pools == [1]  # 0: no pool
    assert _without_timing(_manifest(tmp_path / "o0")) == _without_timing(rows)


class _ThreadedFake(FakeBackend):
    """A fake decoder with a CPU thread count a render may lend from (as the torch backend's)."""

    def __init__(self, vocab_size: int, threads: int, pinned: bool = False) -> None:
        super().__init__(vocab_size)
        self.threads, self.pinned, self.seen = threads, pinned, set()

    @property
    def host_threads(self) -> int:
        return self.threads

    def set_host_threads(self, threads: int) -> bool:
        if self.pinned:
            return False
        self.threads = threads
        return True

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.seen.add(self.threads)
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("case", ["abc", "pinned", "few", "check_workers=0", "midi"])
def test_an_abc_render_decodes_on_half_the_threads_and_gives_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """ABC checks outweigh decoding: a render of 16 or more ABC pieces with the default check_workers
    decodes on half the backend's threads, a worker checks on the core that frees, and the count is back
    when it ends, with the files and rows of a render that checks in this process.  Threads chosen at
    load (pinned), fewer pieces, check_workers=0 and MIDI (cheap checks) leave the decoder's threads."""
    from rwkv_music.compose import piece_workers

    monkeypatch.setattr(piece_workers, "_cores", lambda: 2)
    pools: list[int] = []
    real_init = piece_workers.PiecePool.__init__

    def recording_init(self, workers, command=None):  # noqa: ANN001
        pools.append(workers)
        real_init(self, workers, command)

    monkeypatch.setattr(piece_workers.PiecePool, "__init__", recording_init)
    backend = _ThreadedFake(20096 if case == "midi" else 128, 2, pinned=case == "pinned")
    composer = Composer(backend, model_name="fake")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{}\n" * (3 if case == "few" else 8))
    settings = {"max_tokens": 24 if case == "midi" else 160}
    workers = 0 if case == "check_workers=0" else None
    report = render(composer, prompts, tmp_path / "o", RenderSettings(2, 4, 9, settings, check_workers=workers))
    assert report.complete and report.written == (6 if case == "few" else 16)
    assert backend.threads == 2  # back (or never changed)
    lent = case == "abc"
    assert backend.seen == ({1} if lent else {2})
    assert pools == ([1] if lent else [])
    backend.seen.clear()
    render(composer, prompts, tmp_path / "here", RenderSettings(2, 4, 9, settings, check_workers=0))
    assert backend.seen == {2}
    assert _without_timing(_manifest(tmp_path / "o")) == _without_timing(_manifest(tmp_path / "here"))


def test_rows_with_equal_params_share_their_options_and_others_get_their_own() -> None:
    """A render makes each row's options once per distinct set of plain params (a prompts file often has
    a row per piece); rows that differ in any value, its type included, or hold other kinds of values,
    get options of their own, equal to what making them afresh gives."""
    import numpy as np

    from rwkv_music.compose.render import RenderJob, _make_row_settings, _row_settings

    composer = Composer(FakeBackend(20096), model_name="fake")
    settings = RenderSettings(options=(("max_tokens", 9),), sampling=(("temperature", 0.8),))

    def pair(**params: object) -> tuple:
        return _row_settings(composer, RenderJob(0, "pi:3c:7", params=tuple(params.items())), settings)

    first = pair(seconds=4.0, instruments=["violin"], top_k=5)
    again = pair(top_k=5, instruments=["violin"], seconds=4.0)
    assert again[0] is first[0] and again[1] is first[1]
    want = _make_row_settings(type(first[0]), {"max_tokens": 9, "temperature": 0.8, "seconds": 4.0,
                                                "instruments": ["violin"], "top_k": 5})
    assert first == want
    for other in (pair(seconds=4.0, instruments=["viola"], top_k=5), pair(seconds=4.0, instruments=["violin"]),
                  pair(seconds=4.0, instruments=["violin"], top_k=6)):
        assert other[0] is not first[0] or other[1] is not first[1]
    assert pair(seconds=4, top_k=5)[0] is not pair(seconds=4.0, top_k=5)[0]  # 4 and 4.0: equal options, own keys
    odd = pair(top_k=np.int64(5))  # not a plain value: made for the row, not shared
    assert odd == pair(top_k=5) and odd[1] is not pair(top_k=np.int64(5))[1]


@pytest.mark.parametrize("mode", ["midi", "abc"])
def test_a_render_on_the_gpu_branches_writes_the_files_and_rows_of_a_host_render(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logits as tensors on an "accelerator" (CPU tensors with the GPU branches on: the decode loop keeps
    them as tensors and pools them; the MIDI constraint builds its mask there from the kernel's flags, the
    ABC constraint goes through numpy): the same files and rows as the numpy render, pooled pieces of
    several settings and both finish reasons included, and the same pieces from one compose call."""
    import importlib

    import numpy as np
    import torch

    import rwkv_music.sampling.arrays as arrays

    class TensorLogits(FakeBackend):
        def forward(self, *args: object, **kwargs: object) -> tuple:
            out, state = super().forward(*args, **kwargs)
            return torch.from_numpy(np.ascontiguousarray(out)), state

    rows = ('{}\n{"instruments": ["violin"]}\n{"seconds": 3}\n{}\n' if mode == "midi"
            else '{}\n{"meter": "6/8"}\n{}\n')
    (tmp_path / "p.jsonl").write_text(rows)
    settings = RenderSettings(2, 3, 5, {"max_tokens": 48 if mode == "midi" else 300}, check_workers=0)

    def run(backend: FakeBackend, out: str) -> list:
        composer = Composer(backend, model_name="fake", mode=mode)
        render(composer, tmp_path / "p.jsonl", tmp_path / out, settings)
        found = sorted((json.loads(line) for line in (tmp_path / out / "manifest.jsonl").read_text().splitlines()),
                       key=lambda r: r["id"])
        for row in found:
            row.pop("seconds", None)
            row.pop("timing", None)
        return [(row, (tmp_path / out / row["output"]).read_bytes()) for row in found]

    def compose(backend: FakeBackend) -> list:  # one batch list (no pool): the constraint on the whole batch
        composer = Composer(backend, model_name="fake", mode=mode)
        pieces = composer.compose_midi(n=3, seed=4, max_tokens=40) if mode == "midi" else \
            composer.compose_abc(n=3, seed=4, max_tokens=300)
        return [p.tokens for p in pieces]

    vocab = 20096 if mode == "midi" else 128
    host, host_composed = run(FakeBackend(vocab), "host"), compose(FakeBackend(vocab))
    monkeypatch.setattr(arrays, "HOST_DEVICE_TYPES", set())
    monkeypatch.setattr(importlib.import_module("rwkv_music.sampling.decode"), "HOST_DEVICE_TYPES", set())
    assert run(TensorLogits(vocab), "device") == host
    assert compose(TensorLogits(vocab)) == host_composed
    assert len(host) == (8 if mode == "midi" else 6)
