"""ONNX weight storages beyond fp32/fp16: int4 (MatMulNBits) and bf16, every version; the export options."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from onnx_support import ALL_VERSIONS, export_cached, tokens

# A graph with the rounded weights vs the fp32 graph holding the same rounded weights as floats:
# the same products summed in another order (measured ≤ 2e-5 at logit scale ≈ 8).
SAME_WEIGHTS_TOL = 2e-4
# bf16 storage vs fp32 on the 2-layer random models: measured max |Δlogit| 0.024–0.13 (8 mantissa
# bits, ~1/8 of fp16's precision; fp16 graphs measured ≤ 1.1e-2), top-1 agreement ≥ 97 %.
BF16_TOL = 0.3
BF16_TOP1 = 0.9
# int4 (16 levels per block of 32) vs fp32 on the 2-layer random models, whose Gaussian weights
# suffer more than trained ones: measured max |Δlogit| 1.0–2.8 (logit scale ≈ 7–9), top-1 0.72–0.85
# over 72 positions (the shipped trained models: 96–97 %, see benchmarks/bench_onnx.py).
INT4_TOL = 4.0
INT4_TOP1 = 0.6


def _session_logits(model: Any, cfg: Any, toks: np.ndarray) -> np.ndarray:
    """All-position logits of an in-memory ModelProto on onnxruntime (one thread)."""
    import onnxruntime as ort

    from rwkv_music.backends.sidecar import ALL_FLAG, ALL_LOGITS, STATE_IN, TOKENS
    from rwkv_music.model.state import State

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    state = State.zeros(cfg, toks.shape[0], backend="numpy").tensors
    feeds = {TOKENS: toks, ALL_FLAG: np.array(True), **{STATE_IN + k: v.astype(np.float32) for k, v in state.items()}}
    return session.run([ALL_LOGITS], feeds)[0]


def _fp32_graph(ckpt: Path) -> tuple[Any, Any]:
    from rwkv_music.backends.export_weights import read_checkpoint
    from rwkv_music.backends.onnx_export import build_model

    sd, cfg, source = read_checkpoint(ckpt)
    return build_model(sd, cfg, "fp32", 18, source)[0], cfg


def _with_rounded_weights(
    model: Any, chosen: Callable[[Any], bool], rounding: Callable[[np.ndarray], np.ndarray]
) -> Any:
    """A copy of the fp32 ``model`` whose ``chosen`` initializers hold ``rounding(w)`` as fp32."""
    from onnx import numpy_helper

    out = copy.deepcopy(model)
    for init in out.graph.initializer:
        if chosen(init):
            init.CopyFrom(numpy_helper.from_array(rounding(numpy_helper.to_array(init)).astype(np.float32), init.name))
    return out


# -- int4 ------------------------------------------------------------------------------------------
def test_int4_blocks_have_the_matmulnbits_layout_and_round_within_half_a_step() -> None:
    from rwkv_music.backends.onnx_weights import dequantize_int4_blocks, quantize_int4_blocks

    rng = np.random.default_rng(0)
    w = rng.normal(size=(100, 48)).astype(np.float32)  # K = 100: 4 blocks of 32, the last one padded
    w[:, 7] = np.abs(w[:, 7])  # a column without negatives: its zero point is 0
    w[:, 9] = 0.0
    packed, scales, zp = quantize_int4_blocks(w, 32)
    assert packed.dtype == np.uint8 and packed.shape == (48, 4, 16)  # [N, k_blocks, block_size * 4 / 8]
    assert scales.dtype == np.float32 and scales.shape == (48, 4)
    assert zp.dtype == np.uint8 and zp.shape == (48, 2)  # two 4-bit zero points per byte
    assert (zp[7] == 0).all()
    back = dequantize_int4_blocks(packed, scales, zp, 100)
    step = np.repeat(scales.T, 32, axis=0)[:100]
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-6)
    assert not back[:, 9].any()
    # odd block counts pad the packed zero points with a zero nibble
    _, _, zp3 = quantize_int4_blocks(w[:96], 32)
    assert zp3.shape == (48, 2) and not (zp3[:, 1] >> 4).any()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_int4_graph_computes_with_its_dequantized_weights(
    version: str, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnx

    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_int8 import BIG_MATRICES
    from rwkv_music.backends.onnx_weights import dequantize_int4_blocks, quantize_int4_blocks

    ckpt = checkpoint_path(version)
    f32_path = export_cached(tmp_path_factory, ckpt)
    q_path = export_cached(tmp_path_factory, ckpt, "int4")
    graph = onnx.load(str(q_path)).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
    assert nodes and all(a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 0 for a in attrs)
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1].startswith(BIG_MATRICES)]
    side = json.loads(Path(str(q_path) + ".json").read_text())
    assert side["weights"] == "int4" and side["dtype"] == "fp32" and side["quantization"].startswith("int4")

    toks = tokens(3, 24, seed=21)
    want, _ = load(f32_path, threads=1).forward(toks, all_logits=True)
    model = load(q_path, threads=1, dtype="int4")
    got, _ = model.forward(toks, all_logits=True)
    assert model.dtype == "int4"
    # The op's layout (nibble order, zero points, scales) is right iff the graph equals the fp32
    # graph holding the dequantized weights; a swapped nibble or a wrong zero point misses by ~1.
    fp32, cfg = _fp32_graph(ckpt)
    fake = _with_rounded_weights(fp32, lambda t: t.name.startswith(BIG_MATRICES) and len(t.dims) == 2,
                                 lambda w: dequantize_int4_blocks(*quantize_int4_blocks(w), len(w)))
    assert np.abs(got - _session_logits(fake, cfg, toks)).max() <= SAME_WEIGHTS_TOL
    assert np.abs(got - want).max() <= INT4_TOL
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= INT4_TOP1
    assert q_path.stat().st_size < f32_path.stat().st_size


def test_int4_block_size_is_an_export_option(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnx

    q_path = export_cached(tmp_path_factory, checkpoint_path("7"), "int4", int4_block=64)
    nodes = [n for n in onnx.load(str(q_path)).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and {next(a.i for a in n.attribute if a.name == "block_size") for n in nodes} == {64}
    assert "block 64" in json.loads(Path(str(q_path) + ".json").read_text())["quantization"]


# -- bf16 ------------------------------------------------------------------------------------------
def test_bf16_bits_round_to_nearest_even_as_torch() -> None:
    import torch

    from rwkv_music.backends.onnx_weights import from_bf16_bits, to_bf16_bits

    x = np.random.default_rng(3).normal(size=4096).astype(np.float32) * 10.0 ** np.arange(-4, 4).repeat(512)
    ties = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8)], dtype=np.float32)  # exact halfway cases
    x = np.concatenate([x, ties, [0.0, -0.0]]).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16_bits(x), want)
    np.testing.assert_array_equal(from_bf16_bits(want), torch.from_numpy(want.view(np.int16)).view(torch.bfloat16)
                                  .float().numpy())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_bf16_graph_stores_bf16_weights_and_stays_close_to_fp32(
    version: str, checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnx

    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_weights import from_bf16_bits, to_bf16_bits

    ckpt = checkpoint_path(version)
    f32_path = export_cached(tmp_path_factory, ckpt)
    b_path = export_cached(tmp_path_factory, ckpt, "bf16")
    graph = onnx.load(str(b_path)).graph
    bf16 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16]
    consumers = {n.input[0]: n for n in graph.node if n.op_type == "Cast"}
    assert bf16 and all(consumers[t.name].attribute[0].i == onnx.TensorProto.FLOAT for t in bf16)
    # Every matrix is in bf16 (decays, mixes and norms are vectors and stay fp32): about half the file.
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                and min(t.dims) > 1 and t.name.startswith(("Wr_", "Wk_", "Wv_", "Wo_", "ffn_", "head_", "emb_"))]
    assert b_path.stat().st_size < 0.6 * f32_path.stat().st_size
    side = json.loads(Path(str(b_path) + ".json").read_text())
    assert side["weights"] == "bf16" and side["dtype"] == "fp32"

    toks = tokens(3, 24, seed=21)
    want, want_state = load(f32_path, threads=1).forward(toks, all_logits=True)
    model = load(b_path, threads=1)
    got, state = model.forward(toks, all_logits=True)
    assert model.dtype == "bf16" and got.dtype == np.float32
    assert all(t.dtype == np.float32 for t in state.tensors.values())  # fp32 compute: fp32 state
    fp32, cfg = _fp32_graph(ckpt)
    names = {t.name.removesuffix("_bf16") for t in bf16}
    fake = _with_rounded_weights(
        fp32, lambda t: t.name in names, lambda w: from_bf16_bits(to_bf16_bits(w)).reshape(w.shape)
    )
    assert np.abs(got - _session_logits(fake, cfg, toks)).max() <= SAME_WEIGHTS_TOL
    assert np.abs(got - want).max() <= BF16_TOL
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= BF16_TOP1


# -- options and loading ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int3"}, "dtype must be one of fp32, fp16, int8, int4, bf16"),
        ({"dtype": "int4", "int4_block": 48}, "int4_block must be one of 16, 32, 64, 128"),
        ({"dtype": "int8", "int8_mode": "static"}, "int8_mode must be one of weight, dynamic"),
        ({"dtype": "fp16", "int8": True}, "int8 quantization needs dtype 'fp32'"),
    ],
)
def test_export_refuses_bad_dtype_options_before_writing(
    kwargs: dict[str, Any], message: str, checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.errors import OptionError

    with pytest.raises(OptionError, match=message):
        export(checkpoint_path("7"), tmp_path / "m.onnx", **kwargs)
    assert not list(tmp_path.iterdir())


def test_load_refuses_another_dtype_and_unknown_session_settings(
    checkpoint_path: Callable[..., Path], tmp_path: Path
) -> None:
    from rwkv_music.backends.onnx import load
    from rwkv_music.backends.onnx_export import export
    from rwkv_music.errors import BackendUnavailable, CheckpointError

    path = export(checkpoint_path("5.2"), tmp_path / "m.onnx", "int8")
    with pytest.raises(BackendUnavailable, match="computes in int8 .* not int4"):
        load(path, dtype="int4")
    side = tmp_path / "m.onnx.json"
    data = json.loads(side.read_text())
    data["ort_session_config"] = {"session.use_env_allocators": "1"}
    side.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="ort_session_config 'session.use_env_allocators'"):
        load(path)


def test_cli_export_onnx_takes_every_dtype(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rwkv_music.cli.export import export_onnx

    ckpt = str(checkpoint_path("7"))
    for dtype in ("bf16", "int4", "int8"):
        result = CliRunner().invoke(export_onnx, [ckpt, str(tmp_path / f"{dtype}.onnx"), "--dtype", dtype])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"{dtype}.onnx.json").read_text())["weights"] == dtype
    result = CliRunner().invoke(export_onnx, [ckpt, str(tmp_path / "d.onnx"), "--dtype", "int8", "--int8-activations"])
    assert result.exit_code == 0, result.output
    assert "accuracy_level 4" in json.loads((tmp_path / "d.onnx.json").read_text())["quantization"]
    result = CliRunner().invoke(export_onnx, [ckpt, str(tmp_path / "e.onnx"), "--int8-activations"])
    assert result.exit_code != 0 and "--int8-activations needs --dtype int8" in result.output
    assert not (tmp_path / "e.onnx").exists()
