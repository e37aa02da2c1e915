"""Continuous batching: every piece equals generate() alone, rows are refilled, render writes the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pytest
from fake_backend import FakeBackend as MidiFakeBackend
from test_sampling_fakes import FakeBackend, history_hash

from rwkv_music.compose.composer import Composer
from rwkv_music.compose.render import RenderSettings, plan, read_jobs, render
from rwkv_music.sampling import LogitsProcessor, RowConstraintError, SamplingConfig, SamplingValueError, generate
from rwkv_music.sampling.continuous import WorkItem, generate_continuous

if TYPE_CHECKING:
    from rwkv_music.backends.base import Backend
    from rwkv_music.model.state import State

CFG = SamplingConfig(top_k=12, top_p=0.9, temperature=0.9, presence_penalty=0.3, frequency_penalty=0.2,
                     penalty_decay=0.99)  # stateful penalties: reset/update must follow each piece


def _item(
    prompt: list[int],
    seed: int,
    max_new: int,
    stop: tuple[int, ...] = (),
    config: SamplingConfig = CFG,
    tag: Any = None,
) -> WorkItem:
    return WorkItem(prompt, seed, max_new, config.build_processors(), stop, tag=tag)


def _alone(backend: FakeBackend | Backend, item: WorkItem, config: SamplingConfig = CFG, **kw):
    return generate(backend, [list(item.prompt)], processors=config.build_processors(), seeds=[item.seed],
                    max_new_tokens=item.max_new_tokens, stop_tokens=list(item.stop_tokens), **kw)


# -- the loop ----------------------------------------------------------------------------------
def test_every_piece_equals_generate_alone_with_stops_chunks_and_states() -> None:
    prompts = [[3], [1, 2, 3, 4, 5], [5, 6], [1] * 9, [7], [0] * 13, [8, 8, 8], [2], [4] * 6, [9, 1]]
    max_new = [40, 3, 25, 0, 60, 12, 1, 33, 18, 50]
    items = [_item(p, 100 + i, m, stop=(0, 1), tag=i) for i, (p, m) in enumerate(zip(prompts, max_new))]
    results = list(generate_continuous(FakeBackend(), items, batch_size=3, prefill_chunk=4, return_state=True))
    assert sorted(r.index for r in results) == list(range(10))
    assert [r.item.tag for r in results] == [r.index for r in results]
    for r in results:
        single = _alone(FakeBackend(), r.item, prefill_chunk=4)
        assert r.tokens == single.tokens[0], r.index
        assert (r.finish_reason, r.stop_token) == (single.finish_reasons[0], single.stop_tokens[0])
        assert r.n_sampled_tokens == single.n_sampled_tokens and r.n_prompt_tokens == single.n_prompt_tokens
        assert r.state.batch_size == 1 and np.array_equal(r.state.tensors["att_x"], single.state.tensors["att_x"])
        assert int(r.state.tensors["att_x"][0, 0, 0]) == history_hash(list(r.item.prompt) + r.tokens)
    reasons = {r.finish_reason for r in results}
    assert {"stop", "max_tokens"} <= reasons  # both endings happened next to running rows


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7", "7a"])
def test_random_model_pieces_equal_generate_alone(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None]
) -> None:
    import rwkv_music

    require_version(version)
    model = rwkv_music.load_model(checkpoint_path(version, vocab_size=128, n_layer=2, seed=3))
    cfg = SamplingConfig(top_k=20, top_p=0.95, presence_penalty=0.2)
    prompts = [[2, 5], [2, 10, 11, 12], [2], [2, 7, 7], [2, 40], [2]]
    items = [_item(p, 7 + i, 4 + 3 * i, stop=(3,), config=cfg) for i, p in enumerate(prompts)]
    results = list(generate_continuous(model, items, batch_size=3, prefill_chunk=2, return_state=True))
    for r in results:  # chunk 2: the 3-token prompt's last token rides with a decode step
        single = _alone(model, r.item, config=cfg, prefill_chunk=2)
        assert r.tokens == single.tokens[0] and r.finish_reason == single.finish_reasons[0], r.index
        for name, t in single.state.tensors.items():  # the spliced batch state carried each row intact
            np.testing.assert_allclose(r.state.tensors[name].numpy(), t.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    assert sum(len(r.tokens) for r in results) > 20


@pytest.mark.parametrize("backend", ["onnx", "ncnn"])
def test_numpy_state_backends_give_the_pieces_of_generate_alone(
    backend: str, checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    import rwkv_music

    pytest.importorskip("onnxruntime" if backend == "onnx" else "ncnn")
    ckpt = checkpoint_path("7", vocab_size=128, n_layer=2, seed=3)
    module = __import__(f"rwkv_music.backends.{backend}_export", fromlist=["export"])
    target = tmp_path / ("m.onnx" if backend == "onnx" else "m")
    module.export(ckpt, target, "fp32")
    model = rwkv_music.load_model(target if backend == "onnx" else target.with_suffix(".param"), backend=backend)
    cfg = SamplingConfig(top_k=20, top_p=0.95)
    items = [_item(p, 20 + i, 3 + 4 * i, stop=(3,), config=cfg) for i, p in enumerate([[2, 5], [2], [2, 9, 9], [2]])]
    for r in generate_continuous(model, items, batch_size=2, return_state=True):
        single = _alone(model, r.item, config=cfg)
        assert r.tokens == single.tokens[0] and r.finish_reason == single.finish_reasons[0], r.index
        np.testing.assert_allclose(r.state.tensors["att_kv"], single.state.tensors["att_kv"], rtol=1e-4, atol=1e-5)


class _Recorder:
    """Wraps a backend and records (batch, time, pieces not yet returned) of every forward call."""

    def __init__(self, inner: FakeBackend, pending: Callable[[], int]) -> None:
        self.inner, self.pending, self.calls = inner, pending, []

    def new_state(self, batch_size: int = 1):
        return self.inner.new_state(batch_size)

    def forward(self, tokens: Any, state: State | None = None, *, all_logits: bool = False):
        arr = np.asarray(tokens)
        self.calls.append((arr.shape[0], arr.shape[1], self.pending()))
        return self.inner.forward(tokens, state)


def test_finished_rows_are_refilled_so_the_batch_stays_full() -> None:
    lengths = [60, 2, 5, 40, 1, 3, 25, 8, 50, 4]  # very different pieces, no stop tokens
    prompts = [[1], [2, 3], [4, 5, 6], [7], [8, 9], [10], [11, 12, 13], [14], [15, 16], [17]]
    items = [_item(p, i, n, config=SamplingConfig()) for i, (p, n) in enumerate(zip(prompts, lengths))]
    done: list[Any] = []
    backend = _Recorder(FakeBackend(), lambda: len(items) - len(done))
    for result in generate_continuous(backend, items, batch_size=4):
        done.append(result)
        assert len(result.tokens) == lengths[result.index]
    decode = [(b, pending) for b, t, pending in backend.calls if t == 1]
    assert all(b == min(4, pending) for b, pending in decode), decode
    assert sum(1 for b, _ in decode if b == 4) >= 25  # full most of the time
    assert [r.index for r in done][:3] == [1, 4, 2]  # completion order (2 tokens, then 1 token admitted late, then 5)
    fixed = FakeBackend()  # the old way: fixed batches of 4 wait for their slowest piece
    for start in range(0, 10, 4):
        chunk = items[start : start + 4]
        generate(fixed, [list(i.prompt) for i in chunk], processors=[], max_new_tokens=max(lengths[start : start + 4]),
                 seeds=[0] * len(chunk), return_state=False)
    assert len(decode) < sum(1 for _, t in fixed.calls if t == 1)


class BanAllAt(LogitsProcessor):
    rule = "ban_all_at"

    def __init__(self, at: int):
        self.at = at

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        return np.full_like(scores, -np.inf) if step >= self.at else scores.copy()


def test_a_constraint_dead_end_finishes_or_raises_for_that_piece_only() -> None:
    items = [WorkItem([1], 1, 8, []), WorkItem([2], 2, 8, [BanAllAt(3)]), WorkItem([3], 3, 8, [])]
    res = {r.index: r for r in generate_continuous(FakeBackend(), items, batch_size=2, on_constraint="finish")}
    assert [res[i].finish_reason for i in range(3)] == ["max_tokens", "constraint", "max_tokens"]
    assert len(res[1].tokens) == 3
    free = generate(FakeBackend(), [[1], [3]], processors=[], max_new_tokens=8, seeds=[1, 3])
    assert [res[0].tokens, res[2].tokens] == free.tokens
    items[1] = WorkItem([2], 2, 8, [BanAllAt(3)])
    with pytest.raises(RowConstraintError, match="ban_all_at"):
        list(generate_continuous(FakeBackend(), items, batch_size=2))


def test_bad_items_and_shared_processors_are_refused_with_the_item_number() -> None:
    shared = CFG.build_processors()
    with pytest.raises(SamplingValueError, match="work item 1: its processors are also used"):
        pair = [WorkItem([1], 1, 5, shared), WorkItem([2], 2, 5, shared)]
        list(generate_continuous(FakeBackend(), pair, batch_size=2))
    with pytest.raises(SamplingValueError, match="work item 0: the prompt is empty"):
        list(generate_continuous(FakeBackend(), [WorkItem([], 1, 5)], batch_size=2))
    with pytest.raises(SamplingValueError, match="work item 0: max_new_tokens"):
        list(generate_continuous(FakeBackend(), [WorkItem([1], 1, -1)], batch_size=2))
    with pytest.raises(SamplingValueError, match="batch_size"):
        generate_continuous(FakeBackend(), [], batch_size=0)  # at the call, not at the first next()
    # one list reused *after* its piece ended is fine
    one = [r.tokens for r in generate_continuous(FakeBackend(), [WorkItem([1], 1, 5, shared)] * 2, batch_size=1)]
    assert one[0] == one[1]


# -- render ------------------------------------------------------------------------------------
def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _same_files(a: Path, b: Path) -> list[dict]:
    rows_a, rows_b = _manifest(a), {r["id"]: r for r in _manifest(b)}
    assert sorted(r["id"] for r in rows_a) == sorted(rows_b)
    for row in rows_a:
        other = rows_b[row["id"]]
        assert (a / row["output"]).read_bytes() == (b / row["output"]).read_bytes(), row["id"]
        for key in ("seed", "tokens", "prompt_tokens", "finish_reason", "params", "validity", "input"):
            assert row[key] == other[key], (row["id"], key)
    return rows_a


def _midi_rows(path: Path) -> Path:
    rows = [{"prompt": f"pi:{0x30 + i:x}:7 t{5 + i}", "max_tokens": m} for i, m in enumerate([12, 2, 9, 1, 6, 3])]
    rows.append({"prompt": "pi:40:7", "temperature": 0.5})  # the default max_tokens, other sampling
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_midi_render_with_continuous_batching_writes_the_files_of_a_one_by_one_render(tmp_path: Path) -> None:
    composer = Composer(MidiFakeBackend(20096), model_name="fake")
    rows = _midi_rows(tmp_path / "rows.jsonl")
    cont, single = tmp_path / "cont", tmp_path / "single"
    options = {"max_tokens": 7}
    report = render(composer, rows, cont, RenderSettings(2, 4, 11, options))
    render(composer, rows, single, RenderSettings(2, 1, 11, options, continuous=False))
    assert report.written == 14 and report.complete
    manifest = _same_files(cont, single)
    order = [r["id"] for r in manifest]
    assert order[:2] == ["00001_0", "00001_1"] and order != sorted(order)  # row 1 (2 tokens) ends first
    assert {r["tokens"] for r in manifest if r["row"] == 1} == {2} and all(r["seconds"] > 0 for r in manifest)
    stats = json.loads((cont / "stats.json").read_text())
    assert stats["samples"] == 14 and stats["complete"] and stats["tokens"] == sum(r["tokens"] for r in manifest)


def test_abc_render_continuous_equals_fixed_batches_and_one_by_one(
    checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    composer = Composer.load(checkpoint_path("7", vocab_size=128, n_layer=2, seed=5))
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(["ABc", "X:1\\nL:1/8\\nM:3/4\\nK:G\\nGAB", "", "d2"]) + "\n")
    settings = {"max_tokens": 24}
    outs = {name: tmp_path / name for name in ("cont", "fixed", "single")}
    render(composer, prompts, outs["cont"], RenderSettings(2, 3, 4, settings))
    render(composer, prompts, outs["fixed"], RenderSettings(2, 3, 4, settings, continuous=False))
    render(composer, prompts, outs["single"], RenderSettings(2, 1, 4, settings))
    rows = _same_files(outs["cont"], outs["single"])
    _same_files(outs["cont"], outs["fixed"])
    assert len(rows) == 6 and all((outs["cont"] / r["output"]).read_text().startswith("X:1\n") for r in rows)


def test_continuous_render_stopped_by_max_samples_resumes_to_the_same_files(tmp_path: Path) -> None:
    composer = Composer(MidiFakeBackend(20096), model_name="fake")
    rows = _midi_rows(tmp_path / "rows.jsonl")
    full, part = tmp_path / "full", tmp_path / "part"
    render(composer, rows, full, RenderSettings(2, 3, 2, {"max_tokens": 5}))
    first = render(composer, rows, part, RenderSettings(2, 4, 2, {"max_tokens": 5}, max_samples=5))
    done_first = {r["id"] for r in _manifest(part)}
    expected = [s.id for s in plan(read_jobs(rows, "midi"), RenderSettings(2), ".mid")][:5]
    assert first.written == 5 and not first.complete and done_first == set(expected)
    second = render(composer, rows, part, RenderSettings(2, 2, 2, {"max_tokens": 5}, resume=True))
    assert second.done_before == 5 and second.written == 9 and second.complete
    _same_files(part, full)
    assert not list(part.glob(".*tmp*"))
