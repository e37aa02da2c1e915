"""Validity checks in worker processes: the same answers as in this process, and a check is never
lost when a worker cannot start, dies or writes something else than an answer."""

from __future__ import annotations

import io
import json
import sys

import pytest

from rwkv_music.formats.base import format_for
from rwkv_music.formats.validity_pool import ValidityPool, auto_workers
from rwkv_music.formats.validity_worker import serve

TUNES = [
    "L:1/8\nM:2/4\nK:G\nG2 A2|B4|c2 B2|A4|]",
    "L:1/8\nM:4/4\nK:D\nd2d2||fefe||",  # short bars at ||: parses, not strictly balanced
    "X:1\nL:1/8\nM:3/4\nK:Am\nA2 B2 c2|e4 d2|c2 B2 A2|A6|]",
    "this is not ABC at all \x00\x01",
    "",
]


def _in_process() -> list[dict]:
    fmt = format_for("abc")
    return [fmt.validity(t) for t in TUNES]


def test_workers_give_the_answers_of_this_process() -> None:
    expected = _in_process()
    assert {e["parse_ok"] for e in expected} == {True, False} and not expected[1]["strictly_balanced"]
    with ValidityPool("abc", 2, format_for("abc").validity) as pool:
        futures = [pool.submit(t) for t in TUNES * 3]
        got = [pool.result(f, t) for f, t in zip(futures, TUNES * 3)]
        assert pool.broken is None  # the workers answered every one
        assert len(pool._workers) == 2
    assert got == expected * 3
    assert all(w.process.poll() is not None for w in pool._workers)  # closing the pool ended them


@pytest.mark.parametrize(
    "script, why",
    [
        ("import sys; sys.stderr.write('no music21 here\\n'); sys.exit(3)", "exit code 3"),  # cannot start
        ("import sys; sys.stdin.readline(); print('hello', flush=True)", "instead of an answer"),  # garbage
        ("import sys; sys.stdin.readline(); print('{\"validity\": 1}', flush=True)", "answered"),  # a wrong answer
    ],
)
def test_a_failing_worker_falls_back_to_this_process(script: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    checked = []

    def check(text: str) -> dict:
        checked.append(text)
        return format_for("abc").validity(text)

    with ValidityPool("abc", 1, check, command=[sys.executable, "-c", script]) as pool:
        futures = [pool.submit(t) for t in TUNES]
        got = [pool.result(f, t) for f, t in zip(futures, TUNES)]
    assert got == _in_process()
    assert checked == TUNES  # every text, checked here once
    assert pool.broken is not None and why in pool.broken
    assert sum("validity workers stopped" in r.message for r in caplog.records) == 1  # one warning, not one a text
    if "exit code" in why:
        assert "no music21 here" in pool.broken  # the worker's own last words are in the reason


def test_the_worker_answers_line_by_line_and_reports_bad_requests() -> None:
    requests = [json.dumps({"mode": "abc", "text": t}) for t in TUNES[:2]]
    requests += ["{not json", '{"mode": "xyz", "text": ""}']
    answers = io.BytesIO()
    assert serve(io.BytesIO(("\n".join(requests) + "\n").encode()), answers) == 4
    lines = [json.loads(x) for x in answers.getvalue().splitlines()]
    assert [x["validity"] for x in lines[:2]] == _in_process()[:2]
    assert "JSONDecodeError" in lines[2]["error"] and "unknown mode" in lines[3]["error"]


def test_auto_workers_leave_the_decoder_its_cores() -> None:
    assert auto_workers(100, decoder_threads=1, cores=2) == 1
    assert auto_workers(100, decoder_threads=2, cores=2) == 0  # a worker would stall the decoder's threads
    assert auto_workers(100, decoder_threads=4, cores=16) == 8  # capped
    assert auto_workers(100, decoder_threads=None, cores=16) == 0  # unknown: taken as every core
    assert auto_workers(15, decoder_threads=1, cores=16) == 0  # a few pieces: a worker costs more than it saves


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        ValidityPool("abc", 0, format_for("abc").validity)


def test_the_worker_command_finds_this_rwkv_music_from_anywhere(tmp_path) -> None:  # noqa: ANN001
    import os
    import subprocess

    from rwkv_music.formats.validity_pool import worker_command

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    request = json.dumps({"mode": "abc", "text": TUNES[0]}) + "\n"
    done = subprocess.run(worker_command(), input=request.encode(), capture_output=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert json.loads(done.stdout) == {"validity": _in_process()[0]}
