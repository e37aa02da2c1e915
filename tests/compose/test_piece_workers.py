"""Pieces finished in worker processes (file written, validity checked): the same files and answers as
in this process, and nothing lost when a worker cannot start, dies or writes something else than an
answer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_music.compose.piece_workers import PiecePool, auto_workers, finish, serve, worker_command
from rwkv_music.formats.base import format_for

TUNES = [
    "L:1/8\nM:2/4\nK:G\nG2 A2|B4|c2 B2|A4|]",
    "L:1/8\nM:4/4\nK:D\nd2d2||fefe||",  # short bars at ||: parses, not strictly balanced
    "X:1\nL:1/8\nM:3/4\nK:Am\nA2 B2 c2|e4 d2|c2 B2 A2|A6|]",
    "this is not ABC at all \x00\x01",
    "",
]
MIDI = ["<start> pi:3c:a t20 pi:3c:0 pi:40:8 t10 pi:40:0 <end>", "<start> <end>", "<start> t5 t5 <end>"]


def _requests(folder: Path | None) -> list[dict]:
    out = []
    for i, (mode, text) in enumerate([("abc", t) for t in TUNES] + [("midi", t) for t in MIDI]):
        save = {"path": str(folder / f"{i}.{'abc' if mode == 'abc' else 'mid'}"), "title": f"T{i}"} if folder else None
        out.append({"mode": mode, "text": text, "save": save})
    return out


def _in_process() -> list[dict]:
    return [format_for(r["mode"]).validity(r["text"]) for r in _requests(None)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_workers_write_the_files_and_give_the_answers_of_this_process(tmp_path: Path) -> None:
    expected = _in_process()
    assert {e["parse_ok"] for e in expected[:5]} == {True, False} and not expected[1]["strictly_balanced"]
    assert expected[5]["decodes"] and expected[5]["notes"] == 2
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    assert [finish(r) for r in _requests(here)] == expected
    requests = _requests(there)
    with PiecePool(2) as pool:
        futures = [pool.submit(r) for r in requests * 2]
        got = [pool.result(f, r) for f, r in zip(futures, requests * 2)]
        assert pool.broken is None  # the workers answered every one
        assert len(pool._workers) == 2
    assert got == expected * 2
    assert _files(there) == _files(here) and len(_files(here)) == len(requests)
    assert "T:T0" in (here / "0.abc").read_text()
    assert all(w.process.poll() is not None for w in pool._workers)  # closing the pool ended them


@pytest.mark.parametrize(
    "script, why",
    [
        ("import sys; sys.stderr.write('no music21 here\\n'); sys.exit(3)", "exit code 3"),  # cannot start
        ("import sys; sys.stdin.readline(); print('hello', flush=True)", "instead of an answer"),  # garbage
        ("import sys; sys.stdin.readline(); print('{\"validity\": 1}', flush=True)", "answered"),  # a wrong answer
    ],
)
def test_a_failing_worker_falls_back_to_this_process(script: str, why: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    for r in _requests(here):
        finish(r)
    requests = _requests(there)
    with PiecePool(1, command=[sys.executable, "-c", script]) as pool:
        futures = [pool.submit(r) for r in requests]
        got = [pool.result(f, r) for f, r in zip(futures, requests)]
    assert got == _in_process()
    assert _files(there) == _files(here)  # every piece written here instead
    assert pool.broken is not None and why in pool.broken
    assert sum("piece workers stopped" in r.message for r in caplog.records) == 1  # one warning, not one a piece
    if "exit code" in why:
        assert "no music21 here" in pool.broken  # the worker's own last words are in the reason


def test_a_piece_a_worker_cannot_write_fails_in_this_process_with_the_real_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    request = {"mode": "abc", "text": TUNES[0], "save": {"path": str(tmp_path / "file" / "a.abc"), "title": "A"}}
    with PiecePool(1) as pool:
        future = pool.submit(request)
        with pytest.raises(OSError):
            pool.result(future, request)  # the worker's error answer: tried here, where it raises
    assert "FileExistsError" in str(pool.broken)  # (mkdir of the parent, which is a file)


def test_the_worker_answers_line_by_line_and_reports_bad_requests() -> None:
    requests = [json.dumps(r) for r in _requests(None)[:2]]
    requests += ["{not json", '{"mode": "xyz", "text": ""}']
    answers = io.BytesIO()
    assert serve(io.BytesIO(("\n".join(requests) + "\n").encode()), answers) == 4
    lines = [json.loads(x) for x in answers.getvalue().splitlines()]
    assert [x["validity"] for x in lines[:2]] == _in_process()[:2]
    assert "JSONDecodeError" in lines[2]["error"] and "unknown mode" in lines[3]["error"]


def test_the_worker_command_finds_this_rwkv_music_from_anywhere(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    request = json.dumps(_requests(None)[0]) + "\n"
    done = subprocess.run(worker_command(), input=request.encode(), capture_output=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert json.loads(done.stdout) == {"validity": _in_process()[0]}


def test_auto_workers_leave_the_decoder_its_cores() -> None:
    assert auto_workers(100, decoder_threads=1, cores=2) == 1
    assert auto_workers(100, decoder_threads=2, cores=2) == 0  # a worker would stall the decoder's threads
    assert auto_workers(100, decoder_threads=4, cores=16) == 8  # capped
    assert auto_workers(100, decoder_threads=None, cores=16) == 0  # unknown: taken as every core
    assert auto_workers(15, decoder_threads=1, cores=16) == 0  # a few pieces: a worker costs more than it saves


def test_a_watched_decoder_gets_workers_for_the_cores_it_leaves_idle() -> None:
    from rwkv_music.compose.piece_workers import DecoderWatch

    def watched(count: int, decode_wall: float, decode_cpu: float, finish_wall: float) -> DecoderWatch:
        watch = DecoderWatch([])
        watch.count, watch.decode_wall, watch.decode_cpu = count, decode_wall, decode_cpu
        watch.finish_wall = finish_wall
        return watch

    one_thread = watched(8, 10.0, 10.0, 1.0)  # one CPU-second per second; finishing 1/11 of the time
    assert one_thread.workers(100, cores=2) == 1
    assert one_thread.workers(100, cores=16) == 1  # as many as finishing needs, not one per idle core
    assert watched(8, 1.0, 1.0, 3.0).workers(100, cores=16) == 3  # finishing took 3/4 of the time
    assert one_thread.workers(100, cores=1) == 0  # no idle core
    assert watched(8, 10.0, 19.9, 1.0).workers(100, cores=2) == 0  # both cores busy
    assert watched(8, 10.0, 12.6, 1.0).workers(100, cores=2) == 0  # less than 3/4 of a core idle
    assert one_thread.workers(15, cores=2) == 0  # a few pieces left
    assert watched(7, 10.0, 10.0, 1.0).workers(100, cores=2) == 0  # still probing
    assert watched(8, 10.0, 10.0, 0.4).workers(100, cores=2) == 0  # finishing is cheap: not worth a worker


def test_the_watch_times_the_decoder_and_the_finishing_apart() -> None:
    import time

    from rwkv_music.compose.piece_workers import DecoderWatch

    def slow_pieces():
        for i in range(3):
            end = time.process_time() + 0.05  # decoding: CPU busy
            while time.process_time() < end:
                pass
            yield i

    watch = DecoderWatch(slow_pieces())
    for _ in watch:
        time.sleep(0.05)  # finishing: idle
    assert watch.count == 3
    assert 0.14 <= watch.decode_wall and 0.14 <= watch.decode_cpu <= watch.decode_wall * 1.1 + 0.01
    assert 0.14 <= watch.finish_wall  # (the last piece's finishing ends at the call that ends the loop)
    assert 0.1 <= watch.finish_share <= 0.9  # (both sides seen; wide: a loaded machine stretches the busy loop)


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        PiecePool(0)


def test_only_midi_pieces_of_the_default_tokenizer_go_to_workers() -> None:
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    assert format_for("abc").checks_in_workers and format_for("midi").checks_in_workers
    assert not format_for("midi", MidiTokenizer(timing="reference")).checks_in_workers
    assert format_for("abc").slow_checks and not format_for("midi").slow_checks
