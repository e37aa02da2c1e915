"""The ncnn graph writer and the 8-bit codebook, checked against numpy and ncnn itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn")

from rwkv_music.backends import ncnn_quant  # noqa: E402
from rwkv_music.backends.ncnn_graph import ADD, EXP, MUL, R_SUM, NcnnGraph  # noqa: E402


def _run(g: NcnnGraph, tmp_path: Path, feeds: dict[str, np.ndarray], out: str) -> np.ndarray:
    (tmp_path / "g.param").write_text(g.param_text())
    (tmp_path / "g.bin").write_bytes(b"".join(g.weight_chunks()))
    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False  # on by default
    assert net.load_param(str(tmp_path / "g.param")) == 0
    assert net.load_model(str(tmp_path / "g.bin")) == 0
    ex = net.create_extractor()
    for name, arr in feeds.items():
        ex.input(name, ncnn.Mat(np.ascontiguousarray(arr)).clone())
    ret, mat = ex.extract(out)
    assert ret == 0
    return np.array(mat)


def test_shared_blobs_get_a_split_and_the_graph_computes_what_numpy_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    scale = rng.standard_normal((1, 5)).astype(np.float32)
    g = NcnnGraph("fp32")
    x = g.input("x")
    h = g.linear(x, W, b)  # [B, 5], used three times below
    y = g.add_(g.mul(h, g.const(scale)), g.unary(EXP, h))
    y = g.add_(y, g.scalar(MUL, h, 2.0))
    heads = g.reduce_last(R_SUM, g.reshape(y, [-1, 5, 1]))  # [B, 5, 1]
    g.binary(ADD, g.reshape(heads, [-1, 5]), y, out="y")
    text = g.param_text()
    assert text.splitlines()[0] == "7767517"
    assert sum(line.startswith("Split ") for line in text.splitlines()) == 2  # h and y are shared
    xs = rng.standard_normal((3, 8)).astype(np.float32)
    hh = xs @ W.T + b
    want = hh * scale + np.exp(hh) + 2 * hh
    got = _run(g, tmp_path, {"x": xs}, "y")
    assert np.allclose(got, 2 * want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage,tol", [("fp16", 2e-3), ("int8", 6e-2)])
def test_weight_storage_tags_load_as_the_stored_values(storage: str, tol: float, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    W = rng.standard_normal((64, 32)).astype(np.float32)
    g = NcnnGraph(storage)
    g.linear(g.input("x"), W, out="y")
    xs = rng.standard_normal((2, 32)).astype(np.float32)
    got = _run(g, tmp_path, {"x": xs}, "y")
    assert np.abs(got - xs @ W.T).max() <= tol * np.abs(xs @ W.T).max()


def test_codebook_assignment_is_the_nearest_level() -> None:
    rng = np.random.default_rng(2)
    for values in (rng.standard_normal(20000), rng.standard_t(2, 20000), rng.uniform(-1, 3, 5000)):
        values = values.astype(np.float32)
        table, index = ncnn_quant.codebook_quantize(values)
        brute = np.abs(values[:, None] - table[None, :]).min(axis=1)
        assert np.allclose(np.abs(values - table[index]), brute, atol=1e-7)


def test_row_scaled_codebook_is_as_accurate_as_per_row_int8() -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((256, 512)) * np.exp(rng.standard_normal((256, 1)))).astype(np.float32)
    scale = ncnn_quant.row_scales(w)
    table, index = ncnn_quant.codebook_quantize(w / scale[:, None])
    back = ncnn_quant.dequantize(table, index, w.shape) * scale[:, None]
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    linear = np.round(w / step) * step
    err = np.sqrt(np.mean((back - w) ** 2))
    assert err <= 1.1 * np.sqrt(np.mean((linear - w) ** 2))
    assert index.dtype == np.uint8 and table.shape == (256,)
