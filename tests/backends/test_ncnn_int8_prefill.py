"""ncnn int8 as torch int8 (per-row int8 weights, float activations) and the prefill graph (issue 20, 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from ncnn_support import ALL_VERSIONS, max_state_diff, tokens

from rwkv_music.errors import CheckpointError, OptionError

# Prefill graph vs one step-graph call per token: same math, the projections run on B·T rows at once,
# so only the summation order differs; measured ≤ 8e-6 on the random 2-layer models (logit scale ≈ 8).
PREFILL_TOL = 1e-4
CHUNK = 4


def _export(tmp_path: Path, ckpt: Path, name: str, dtype: str = "fp32", **kw: Any) -> Path:
    from rwkv_music.backends.ncnn_export import export

    return export(ckpt, tmp_path / name, dtype, **kw)


def test_int8_rows_is_the_torch_int8_grid() -> None:
    """The integers ncnn's loader rebuilds and the row scales are those of rwkv_music.model.quant."""
    import torch

    from rwkv_music.backends.ncnn_quant import INT_TABLE, int8_rows
    from rwkv_music.model.quant import quantize_rows

    w = np.random.default_rng(0).normal(size=(40, 24)).astype(np.float32) * np.logspace(-3, 1, 40)[:, None]
    w[7] = 0.0
    table, index, scale = int8_rows(w)
    q, want_scale = quantize_rows(torch.from_numpy(w.astype(np.float32)))
    assert table is INT_TABLE and index.dtype == np.uint8 and index.size == w.size
    assert np.array_equal(table[index].reshape(w.shape), q.numpy().astype(np.float32))
    assert np.allclose(scale, want_scale.numpy(), rtol=1e-6, atol=0)
    assert np.all(table[index].reshape(w.shape)[7] == 0.0) and scale[7] == 1.0


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ncnn_int8_errs_at_most_twice_torch_int8(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None], tmp_path: Path
) -> None:
    """Issue 20 target: max |Δlogit| vs fp32 within 2× of torch int8 on the same model and tokens (v6 too).

    Measured: ncnn/torch ratio 0.97–1.01 on every version (the old codebook reached 2.4× on v5.0)."""
    require_version(version)
    import rwkv_music
    from rwkv_music.backends.ncnn import load

    ckpt = checkpoint_path(version)
    toks = tokens(3, 24, seed=11)
    want, _ = rwkv_music.load_model(ckpt).forward(toks, all_logits=True)
    torch_q, _ = rwkv_music.load_model(ckpt, dtype="int8").forward(toks, all_logits=True)
    want, torch_q = want.numpy(), torch_q.numpy()
    model = load(_export(tmp_path, ckpt, "q", "int8"), num_threads=1)
    got, _ = model.forward(toks, all_logits=True)
    torch_err = float(np.abs(torch_q - want).max())
    ncnn_err = float(np.abs(got - want).max())
    assert 0.0 < ncnn_err <= 2.0 * torch_err, (ncnn_err, torch_err)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    assert model.storage == "int8" and model.quantization.startswith("int8-rows")


def test_codebook_scheme_stays_available_and_is_recorded(
    checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    from rwkv_music.backends.ncnn import load

    ckpt = checkpoint_path("5.2")
    rows = _export(tmp_path, ckpt, "rows", "int8", prefill_chunk=0)
    book = _export(tmp_path, ckpt, "book", "int8", int8_scheme="codebook", prefill_chunk=0)
    assert json.loads(book.with_suffix(".json").read_text())["quantization"].startswith("codebook8")
    toks = tokens(2, 8, seed=4)
    a, _ = load(rows, num_threads=1).forward(toks, all_logits=True)
    b, _ = load(book, num_threads=1).forward(toks, all_logits=True)
    assert 0.0 < np.abs(a - b).max() < 1.0  # different weights, both close to fp32
    assert rows.with_suffix(".bin").read_bytes() != book.with_suffix(".bin").read_bytes()


def test_bad_int8_scheme_and_prefill_chunk_are_refused(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = checkpoint_path("7")
    with pytest.raises(OptionError, match="int8_scheme"):
        _export(tmp_path, ckpt, "a", "int8", int8_scheme="nf8")
    for chunk in (1, -3, 100000, True):
        with pytest.raises(OptionError, match="prefill_chunk"):
            _export(tmp_path, ckpt, "b", prefill_chunk=chunk)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_prefill_graph_equals_token_by_token(
    version: str, checkpoint_path: Callable[..., Path], require_version: Callable[[str], None], tmp_path: Path
) -> None:
    """Two prefill-graph calls and three step calls give the logits and state of eleven step calls."""
    require_version(version)
    from rwkv_music.backends.ncnn import load

    model = load(_export(tmp_path, checkpoint_path(version), "m", prefill_chunk=CHUNK), num_threads=1)
    assert model.prefill and model.prefill_chunk == CHUNK
    calls: list[int] = []
    step = model._step

    def spy(ids: np.ndarray, cur: Any, B: int, n: int = 1) -> Any:
        calls.append(n)
        return step(ids, cur, B, n)

    model._step = spy  # type: ignore[method-assign]
    toks = tokens(3, 2 * CHUNK + 3, seed=6)
    start = model.new_state(3)
    _, start = model.forward(tokens(3, 2, seed=9), start)  # from a non-zero state
    calls.clear()
    fast, fast_state = model.forward(toks, start, all_logits=True)
    assert calls == [CHUNK, CHUNK, 1, 1, 1]
    model.prefill = False
    calls.clear()
    slow, slow_state = model.forward(toks, start, all_logits=True)
    assert calls == [1] * toks.shape[1]
    assert fast.shape == slow.shape == (3, toks.shape[1], 128)
    assert np.abs(fast - slow).max() <= PREFILL_TOL
    assert max_state_diff(fast_state, slow_state) <= PREFILL_TOL
    last, _ = model.forward(toks[:, :CHUNK], start)  # the last-logits form of a single chunk
    assert np.abs(last - slow[:, CHUNK - 1]).max() <= PREFILL_TOL


def test_int8_prefill_graph_equals_token_by_token(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from rwkv_music.backends.ncnn import load

    model = load(_export(tmp_path, checkpoint_path("6"), "q", "int8", prefill_chunk=CHUNK), num_threads=1)
    toks = tokens(2, CHUNK + 1, seed=2)
    fast, fast_state = model.forward(toks, all_logits=True)
    model.prefill = False
    slow, slow_state = model.forward(toks, all_logits=True)
    assert np.abs(fast - slow).max() <= PREFILL_TOL and max_state_diff(fast_state, slow_state) <= PREFILL_TOL


def test_prefill_graph_shares_the_bin_and_is_checked(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from rwkv_music.backends.ncnn import load

    param = _export(tmp_path, checkpoint_path("5.2"), "m", prefill_chunk=CHUNK)
    seq = tmp_path / "m.seq.param"
    side = json.loads(param.with_suffix(".json").read_text())
    assert side["prefill"]["param"] == seq.name and side["prefill"]["chunk"] == CHUNK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.json", "m.param", "m.seq.param"]
    seq.write_text(seq.read_text().replace("Slice", "Slice ", 1))  # edited after export
    with pytest.raises(CheckpointError, match="m.seq.param"):
        load(param)
    seq.unlink()  # copied without it: prompts fall back to one call per token
    model = load(param, num_threads=1)
    assert not model.prefill
    logits, _ = model.forward(tokens(1, CHUNK + 1, seed=1))
    assert logits.shape == (1, 128) and np.isfinite(logits).all()


def test_no_prefill_graph_when_chunk_is_zero(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from rwkv_music.backends.ncnn import load

    param = _export(tmp_path, checkpoint_path("7"), "m", prefill_chunk=0)
    assert not (tmp_path / "m.seq.param").exists()
    assert "prefill" not in json.loads(param.with_suffix(".json").read_text())
    assert not load(param, num_threads=1).prefill
