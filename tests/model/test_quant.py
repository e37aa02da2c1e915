"""int8 weight quantization (rwkv_music.model.quant): kernels against the float reference, whole models
against fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rwkv_music.backends.torch import TorchModel
from rwkv_music.errors import OptionError
from rwkv_music.model.factory import random_checkpoint
from rwkv_music.model.quant import (
    KERNELS,
    LORA_FIELDS,
    Int8Matrix,
    dynamic_available,
    native_available,
    quantize_rows,
    quantize_weights,
    weight_only_available,
)

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")


def _kernels() -> list[str]:
    out = ["dequant"]
    if native_available():
        out.append("native")
    if weight_only_available():
        out.append("weight_only")
    if dynamic_available():
        out.append("dynamic")
    return out


# Tolerances relative to the largest |output|: dequant is exact up to fp32 rounding of the int8
# matrix; native rounds each activation row to int16; weight_only rounds activations to bf16;
# dynamic also quantizes activations to 7 bits.
REL_TOL = {"dequant": 1e-5, "native": 2e-4, "weight_only": 2e-2, "dynamic": 6e-2}


def test_quantize_rows_error_is_at_most_half_a_step_per_row() -> None:
    w = torch.randn(48, 40) * torch.logspace(-3, 1, 48)[:, None]  # very different row ranges
    w[5] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7 * w.abs().amax(1, keepdim=True)).all())
    assert bool((q[5] == 0).all())  # an all-zero row stays exactly zero


@pytest.mark.parametrize("kernel", _kernels())
@pytest.mark.parametrize("batch", [1, 5])
def test_int8_matrix_ops_match_float_reference(kernel: str, batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    w_out_in = torch.randn(96, 64, generator=g)
    x = torch.randn(batch, 64, generator=g)
    lin = Int8Matrix.from_float(w_out_in, "out_in", kernel)
    ref = x @ lin.dequantize().t()
    scale = float(ref.abs().max())
    assert float((F.linear(x, lin) - ref).abs().max()) <= REL_TOL[kernel] * scale

    mat = Int8Matrix.from_float(w_out_in.t().contiguous(), "in_out", kernel)  # the same matrix stored [in, out]
    assert tuple(mat.shape) == (64, 96)
    assert torch.equal(mat.dequantize(), lin.dequantize().t())
    assert float((x @ mat - ref).abs().max()) <= REL_TOL[kernel] * scale

    stack = torch.randn(3, 64, 32, generator=g)
    bm = Int8Matrix.from_float(stack, "bmm", kernel)
    xs = torch.randn(3, batch, 64, generator=g)
    ref3 = torch.bmm(xs, bm.dequantize())
    got = torch.bmm(xs, bm)
    assert got.shape == (3, batch, 32)
    assert float((got - ref3).abs().max()) <= REL_TOL[kernel] * float(ref3.abs().max())


def test_int8_matrix_dequantize_is_close_to_the_original() -> None:
    w = torch.randn(32, 16)
    m = Int8Matrix.from_float(w, "in_out", "dequant")
    assert float((m.dequantize() - w).abs().max()) <= float(w.abs().max()) / 127
    assert m.nbytes == 32 * 16 + 4 * 16


def test_int8_matrix_refuses_unsupported_ops() -> None:
    m = Int8Matrix.from_float(torch.randn(8, 8), "in_out", "dequant")
    with pytest.raises(TypeError, match="does not support"):
        torch.add(torch.ones(8, 8), m)
    with pytest.raises(TypeError, match="F.linear"):
        F.linear(torch.ones(2, 8), m)  # an [in, out] matrix used as an [out, in] one


def test_quantize_weights_rejects_an_unknown_kernel() -> None:
    model = TorchModel.from_state_dict(random_checkpoint("7"))
    with pytest.raises(ValueError, match="kernel"):
        quantize_weights(model._weights, "int4")
    assert set(KERNELS) == {"native", "dynamic", "weight_only", "dequant"}


@pytest.mark.parametrize("version", ["7", "7a"])
def test_v7_loras_are_int8_unless_skipped_and_the_products_match_dequant(version: str) -> None:
    sd = random_checkpoint(version, n_layer=2, n_embd=64, head_size=32, vocab_size=128, seed=5)
    tokens = torch.randint(0, 128, (3, 5), generator=torch.Generator().manual_seed(2))
    full, kept = TorchModel.from_state_dict(sd), TorchModel.from_state_dict(sd)
    n_full = full.quantize_int8("dequant")
    n_kept = kept.quantize_int8("dequant", skip=LORA_FIELDS)
    assert n_full - n_kept == 2 * len(full._weights.layers)
    layer, kept_layer = full._weights.layers[0], kept._weights.layers[0]
    assert isinstance(layer.lora_in, Int8Matrix) and isinstance(layer.lora_out, Int8Matrix)
    assert isinstance(kept_layer.lora_in, torch.Tensor) and not isinstance(kept_layer.lora_in, Int8Matrix)
    # torch.baddbmm through the int8 stack is the float product of its dequantized weights
    want = TorchModel.from_state_dict(sd)
    for name in LORA_FIELDS:
        setattr(want._weights.layers[0], name, getattr(layer, name).dequantize())
        setattr(want._weights.layers[1], name, getattr(full._weights.layers[1], name).dequantize())
    want.quantize_int8("dequant", skip=LORA_FIELDS)
    got, _ = full.forward(tokens, all_logits=True)
    ref, _ = want.forward(tokens, all_logits=True)
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    with pytest.raises(OptionError, match="lora_x"):
        TorchModel.from_state_dict(sd).quantize_int8("dequant", skip=("lora_x",))


def _peaked_checkpoint(version: str) -> dict[str, torch.Tensor]:
    """A random model whose logits are spread widely, so the top-1 token is rarely a near tie."""
    sd = random_checkpoint(version, n_layer=2, n_embd=64, head_size=32, vocab_size=128, seed=3)
    sd["head.weight"] = sd["head.weight"] * 8.0
    return sd


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_model_logits_follow_fp32_for_every_version(version: str) -> None:
    sd = _peaked_checkpoint(version)
    ref = TorchModel.from_state_dict(sd)
    tokens = torch.randint(0, 128, (4, 6), generator=torch.Generator().manual_seed(1))
    want, _ = ref.forward(tokens, all_logits=True)
    for kernel in _kernels():
        model = TorchModel.from_state_dict(sd)
        assert quantize_weights(model._weights, kernel) >= 4 * 2 + 1  # >= 4 matrices a layer, and the head
        got, state = model.forward(tokens, all_logits=True)
        err = float((got - want).abs().max()) / float(want.abs().max())
        assert err < 3 * REL_TOL[kernel] + 0.08, (kernel, err)
        agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        assert agree >= 0.75, (kernel, agree)
        assert state.batch_size == 4


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_int8_decode_steps_match_int8_prefill(version: str) -> None:
    model = TorchModel.from_state_dict(_peaked_checkpoint(version))
    quantize_weights(model._weights, "weight_only" if weight_only_available() else "dequant")
    tokens = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(2))
    full, _ = model.forward(tokens)
    state = None
    for t in range(tokens.shape[1]):
        step, state = model.forward(tokens[:, t : t + 1], state)
    assert float((full - step).abs().max()) <= 1e-2 * float(full.abs().max())


def test_load_model_with_int8_dtype_quantizes_and_stays_close(tmp_path: Path) -> None:
    """`load_model(..., dtype="int8")` is the public switch for the quantized CPU path."""
    import rwkv_music
    from rwkv_music.model.factory import save_random_checkpoint

    path = save_random_checkpoint(tmp_path / "m.pth", "5.2", n_embd=64, head_size=32)
    ref = rwkv_music.load_model(path)
    q = rwkv_music.load_model(path, dtype="int8")
    assert q.quantization == "int8" and ref.quantization is None
    tokens = [[5, 9, 17, 33, 2]]
    a, _ = ref.forward(tokens)
    b, _ = q.forward(tokens)
    diff = float((a - b).abs().max())
    assert 0 < diff < 0.5  # changed (really quantized) but close
