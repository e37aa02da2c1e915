"""The sampler graph (export-onnx --with-sampler) picks the ids our numpy sampler picks from the same uniforms."""

from __future__ import annotations

import ast
import json
import math
import random
import runpy
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from rwkv_music.backends.onnx_sampler import (  # noqa: E402 - after the skips
    build_sampler,
    export_sampler,
    sampler_feeds,
)
from rwkv_music.errors import OptionError, OutputExistsError  # noqa: E402
from rwkv_music.sampling import SamplingConfig  # noqa: E402
from rwkv_music.sampling.penalties import OccurrencePenalty, weights_from_ranges  # noqa: E402
from rwkv_music.sampling.sampler import row_uniforms, sample_batch  # noqa: E402

WEIGHT_RANGES = ((0, 10, 0.3), (10, 13, 0.0))  # light ids and weight-0 ids (presence still applies to those)

# (temperature, top_k, top_p, presence, frequency, decay); V stands for the vocabulary size
ROWS = [
    (1.0, 0, 1.0, 0.0, 0.0, 1.0),  # plain softmax
    (1.0, 8, 0.8, 0.0, 0.5, 0.997),  # the ChatRWKV MIDI knobs
    (0.7, 0, 0.9, 0.3, 0.2, 0.9),  # top-p alone, presence and frequency
    (1.3, 5, 1.0, 0.0, 0.0, 1.0),  # top-k alone
    (0.0, 0, 1.0, 0.0, 0.0, 1.0),  # greedy
    (0.0, 3, 0.5, 1.0, 0.5, 0.5),  # greedy after filters and penalties
    (1.0, 1, 1.0, 0.0, 1.0, 1.0),  # top-k 1
    (1.0, "V", 0.8, 0.0, 0.3, 0.99),  # top-k >= V is off; top-p alone
    (0.9, "V+5", 1.0, 0.2, 0.0, 1.0),
    (0.5, 4, 0.0, 0.0, 0.0, 1.0),  # top-p 0 = the maximum (and its ties)
    (1e-3, 0, 1.0, 0.0, 0.4, 1.0),  # temperature near 0
    (1e-39, 0, 1.0, 0.0, 0.0, 1.0),  # a subnormal temperature: float32 overflow, as numpy
    (1.0, 16, 0.95, 0.5, 0.0, 0.0),  # decay 0
    (2.0, 0, 1.0, -0.5, -0.3, 1.0),  # negative penalties
]


@pytest.fixture(scope="module")
def session() -> Any:
    return ort.InferenceSession(build_sampler(18).SerializeToString(), providers=["CPUExecutionProvider"])


def _resolve(k: Any, vocab: int) -> int:
    return {"V": vocab, "V+5": vocab + 5}.get(k, k) if isinstance(k, str) else int(k)


def _dense_weights(vocab: int) -> np.ndarray:
    w = np.ones(vocab)
    for t, v in weights_from_ranges(WEIGHT_RANGES).items():
        w[t] = v
    return w


def _logits(rng: np.random.Generator, rows: int, vocab: int, step: int) -> np.ndarray:
    """Random logits with the awkward cases: ties (rounded rows), illegal ids, flat and peaked rows."""
    x = rng.standard_normal((rows, vocab)).astype(np.float32) * rng.choice([0.5, 2.0, 6.0], (rows, 1))
    x[::3] = np.round(x[::3])  # many exact ties
    x[1::4] = np.where(rng.random((len(x[1::4]), vocab)) < 0.9, -np.inf, x[1::4])  # mostly illegal rows
    x[2::5, : vocab // 2] = 0.0  # a flat half
    x[:, step % vocab] += 3.0  # a token that recurs: the penalties have something to do
    return x.astype(np.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")  # the 1e-39 row
@pytest.mark.parametrize("vocab", [97, 2000])  # 2000: the numpy sampler's compacted and top-64 paths
def test_graph_ids_equal_numpy_sampler_over_many_steps(session: Any, vocab: int) -> None:
    rows = [(t, _resolve(k, vocab), p, pr, fr, d) for (t, k, p, pr, fr, d) in ROWS] * 2
    B, steps = len(rows), 30
    procs = []
    for t, k, p, pr, fr, d in rows:
        cfg = SamplingConfig(temperature=t, top_k=k, top_p=p, presence_penalty=pr, frequency_penalty=fr,
                             penalty_decay=d, penalty_weights=WEIGHT_RANGES)
        lst = cfg.build_processors()
        lst.reset([[]])
        procs.append(lst)
    params = {
        "temperature": [r[0] for r in rows], "top_k": [r[1] for r in rows], "top_p": [r[2] for r in rows],
        "presence_penalty": [r[3] for r in rows], "frequency_penalty": [r[4] for r in rows],
        "penalty_decay": [r[5] for r in rows],
    }
    rng = np.random.default_rng(vocab)
    occ, seen = np.zeros((B, vocab)), np.zeros((B, vocab), bool)
    weights = _dense_weights(vocab)
    seeds = list(range(100, 100 + B))
    all_graph, all_numpy = [], []
    for step in range(steps):
        logits = _logits(rng, B, vocab, step)
        u = row_uniforms(seeds, [step] * B)  # the decode loop's counter uniforms
        feeds = sampler_feeds(logits, occ, seen, weights, {**params, "uniform": u.tolist()})
        ids, occ, seen = session.run(None, feeds)
        want = []
        for r in range(B):
            scores = procs[r].run(step, logits[r : r + 1])
            tok = int(sample_batch(scores, u[r : r + 1])[0])
            procs[r].update([tok])
            want.append(tok)
        all_graph.append(ids.tolist())
        all_numpy.append(want)
    assert all_graph == all_numpy
    assert len({tuple(col) for col in zip(*all_numpy)}) > B // 2  # rows really sample different things
    # the penalty state: exactly pip's occurrence map wherever the numpy side keeps one
    checked = 0
    for r, lst in enumerate(procs):
        pen = next((p for p in lst if isinstance(p, OccurrencePenalty)), None)
        if pen is None:
            continue
        ref = pen.occurrences(0)
        assert sorted(ref) == np.flatnonzero(seen[r]).tolist()
        assert [occ[r, t] for t in sorted(ref)] == [ref[t] for t in sorted(ref)]
        checked += 1
    assert checked >= 10


def test_uniform_edges_ties_and_illegal_entries(session: Any) -> None:
    inf = np.inf
    logits = np.array([
        [1.0, 1.0, -inf, 0.0],  # a tie for the maximum
        [np.nan, inf, 0.5, -inf],  # NaN and +inf are illegal: only id 2 remains
        [-inf, -inf, -inf, -inf],  # no legal id
        [0.0, 0.0, 0.0, 0.0],
    ], dtype=np.float32)
    for u in (0.0, 0.25, 0.5, 1.0 - 2.0**-53):
        for temp in (0.0, 1.0):
            params = {"uniform": [u] * 4, "temperature": [temp] * 4}
            ids = session.run(None, sampler_feeds(logits, params=params))[0].tolist()
            want = [int(t) for t in sample_batch(logits, np.full(4, u))] if temp else None
            if temp == 0.0:  # greedy keeps exact ties: the uniform picks among them
                want = [0 if u < 0.5 else 1, 2, -1, min(3, int(u * 4))]
            assert ids == want, (u, temp)


def test_rare_branches_of_the_numpy_sampler(session: Any) -> None:
    """A top-p whose float64 cumulative sum never reaches it (keep all), and x rounded up to the total."""
    row = np.array([[0.36, -0.65, -0.13, 0.78, 1.49, -1.26, 1.51, -np.inf]], dtype=np.float32)
    top_p = 1.0 - 2.0**-53  # the sorted probabilities of this row sum to 1 - 2**-52 in float64
    cfg = SamplingConfig(top_p=top_p).build_processors()
    for u in np.linspace(0.0, 0.999, 25):
        feeds = sampler_feeds(row, params={"uniform": [u], "top_p": [top_p]})
        want = int(sample_batch(cfg.run(0, row), np.array([u]))[0])
        assert session.run(None, feeds)[0].tolist() == [want]
    # u = 1 is outside the graph's contract, but it is the one way to reach sample_batch's last-id fallback
    feeds = sampler_feeds(row, params={"uniform": [0.5]})
    feeds["uniform"] = np.array([1.0])
    assert session.run(None, feeds)[0].tolist() == sample_batch(row, np.array([1.0])).tolist() == [6]


def test_a_row_without_a_legal_id_keeps_its_penalty_state(session: Any) -> None:
    logits = np.array([[0.0, -np.inf], [-np.inf, -np.inf]], dtype=np.float32)
    occ = np.array([[0.5, 0.0], [0.25, 1.0]])
    seen = np.array([[True, False], [True, True]])
    feeds = sampler_feeds(logits, occ, seen, [1.0, 2.0],
                          {"uniform": [0.3, 0.3], "penalty_decay": [0.5, 0.5], "frequency_penalty": [1.0, 1.0]})
    ids, new_occ, new_seen = session.run(None, feeds)
    assert ids.tolist() == [0, -1]
    assert new_occ.tolist() == [[0.25 + 1.0, 0.0], [0.25, 1.0]]
    assert new_seen.tolist() == seen.tolist()


def test_settings_are_inputs_not_constants(session: Any) -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    pick = [session.run(None, sampler_feeds(logits, params={"uniform": [0.9], **extra}))[0].tolist()
            for extra in ({}, {"top_k": [1]}, {"top_p": [0.6]}, {"temperature": [0.0]})]
    assert pick == [[2], [0], [1], [0]]


def test_sampler_feeds_refuses_bad_settings() -> None:
    with pytest.raises(OptionError, match="'top_p' has an out-of-range value -0.5"):
        sampler_feeds([[0.0]], params={"uniform": [0.1], "top_p": [-0.5]})
    with pytest.raises(OptionError, match="'uniform' has 2 values for 1 rows"):
        sampler_feeds([[0.0]], params={"uniform": [0.1, 0.2]})
    with pytest.raises(OptionError, match="need 'uniform'"):
        sampler_feeds([[0.0]])


def test_export_sampler_writes_once_and_runs_at_opset_17(tmp_path: Path) -> None:
    out = export_sampler(tmp_path / "s.onnx", 17)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, sampler_feeds([[-math.inf, 0.0, -math.inf]], params={"uniform": [0.99]}))[0].tolist() == [1]
    with pytest.raises(OutputExistsError, match="s.onnx: file exists"):
        export_sampler(out)
    with pytest.raises(OptionError, match="opset must be"):
        export_sampler(tmp_path / "t.onnx", 3)
    assert not (tmp_path / "t.onnx").exists()


def test_cli_with_sampler_writes_and_records_it(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.export import export_onnx

    ckpt = str(checkpoint_path("7"))
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_onnx, [ckpt, str(out), "--with-sampler"])
    assert result.exit_code == 0, result.output
    sampler = tmp_path / "m.sampler.onnx"
    assert f"wrote {sampler}" in result.output
    entry = json.loads((tmp_path / "m.onnx.json").read_text())["sampler"]
    assert entry["file"] == "m.sampler.onnx" and entry["opset"] == 18
    assert entry["inputs"]["top_k"] == {"dtype": "int64", "shape": ["batch"]}
    sess = ort.InferenceSession(str(sampler), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(entry["inputs"])
    # a second run refuses before writing anything; --force overwrites
    before = out.stat().st_mtime_ns
    again = CliRunner().invoke(export_onnx, [ckpt, str(out), "--with-sampler"])
    assert again.exit_code != 0 and "m.sampler.onnx: file exists" in again.output
    assert out.stat().st_mtime_ns == before
    assert CliRunner().invoke(export_onnx, [ckpt, str(out), "--with-sampler", "--force"]).exit_code == 0


def test_example_loop_runs_without_numpy_or_torch_and_matches_our_sampler(
    checkpoint_path: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from click.testing import CliRunner

    from rwkv_music.backends.onnx import load
    from rwkv_music.cli.export import export_onnx

    script = Path(__file__).resolve().parents[2] / "examples" / "onnx_sampler_loop.py"
    imported = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "argparse", "json", "random", "sys", "pathlib", "typing", "onnxruntime"}

    graph = tmp_path / "midi.onnx"
    ckpt = checkpoint_path("7", vocab_size=20096, n_layer=2)
    assert CliRunner().invoke(export_onnx, [str(ckpt), str(graph), "--with-sampler"]).exit_code == 0
    monkeypatch.setitem(sys.modules, "torch", None)  # any torch import in the script would fail
    monkeypatch.setattr(sys, "argv", ["onnx_sampler_loop.py", str(graph), "-n", "3", "--tokens", "6", "--seed", "5"])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    got = [[int(t) for t in line.split(": ")[1].split()] for line in lines]
    monkeypatch.delitem(sys.modules, "torch")

    # the same loop through our onnx backend and numpy sampler, with the script's uniforms
    model = load(graph, threads=1)
    cfg = SamplingConfig(top_k=8, top_p=0.8, frequency_penalty=0.5, penalty_decay=0.997,
                         penalty_weights=((0, 127, 0.3),))
    procs = cfg.build_processors()
    procs.reset([[0]] * 3)
    rngs = [random.Random(5 + i) for i in range(3)]
    logits, state = model.forward([[0]] * 3)
    want: list[list[int]] = [[], [], []]
    for step in range(6):
        scores = procs.run(step, model.as_numpy(logits))
        ids = sample_batch(scores, np.array([r.random() for r in rngs])).tolist()
        procs.update(ids)
        for row, t in zip(want, ids):
            row.append(t)
        logits, state = model.forward([[t] for t in ids], state)
    assert got == want
    assert len({t for row in got for t in row}) > 3
