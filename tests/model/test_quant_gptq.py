"""int4 calibration (issue 20): GPTQ rounding against a numpy reference and plain rounding, and the load path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rwkv_music
from rwkv_music.backends.torch import TorchModel, load
from rwkv_music.model.factory import random_checkpoint, save_random_checkpoint
from rwkv_music.model.quant import (
    InputRecorder,
    Int4Matrix,
    Int8Matrix,
    _fit_groups,
    gptq_codes_int4,
    pack_int4,
    quantize_groups_int4,
    quantize_weights_int4,
    unpack_int4,
)


def _problem(out_f: int, n_in: int, seed: int, rows: int = 400) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights [out, in] and correlated inputs [rows, in] with unequal channel powers (as activations are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, n_in, generator=g) * torch.logspace(-1, 0, out_f)[:, None]
    mix = torch.eye(n_in) + 0.4 * torch.randn(n_in, n_in, generator=g) / n_in**0.5
    x = (torch.randn(rows, n_in, generator=g) * torch.logspace(-0.5, 0.5, n_in)) @ mix
    return w, x, (x.double().t() @ x.double())


def _error(w: torch.Tensor, x: torch.Tensor, what: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           group: int = 64) -> float:
    """Σ ‖(W − Ŵ) x‖² over the inputs, Ŵ rebuilt from packed codes with the float dequantizer."""
    q, scale, zmin = what
    m = Int4Matrix(q, scale, zmin, w.shape[1], "out_in", "dequant", group)
    return float(((x.double() @ (w - m.dequantize()).double().t()) ** 2).sum())


def _numpy_gptq(w: np.ndarray, h: np.ndarray, group: int, damp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ as the paper writes it (arXiv 2210.17323, eqs. 2-3), without its Cholesky or lazy-batch
    rewrites: columns in order, the explicit inverse Hessian of the columns left, updated by Gaussian
    elimination after each column; a group's scale and minimum fitted by ``_fit_groups`` (the one
    float step shared with the code under test) when the group is reached."""
    w = w.astype(np.float64).copy()
    out_f, n_in = w.shape
    h = h.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    hinv = np.linalg.inv(h + damp * np.mean(np.diag(h)) * np.eye(n_in))
    ng = -(-(-(-n_in // 32) * 32) // group)
    codes = np.zeros((out_f, n_in))
    scale, zmin = np.ones((out_f, ng)), np.zeros((out_f, ng))
    for g in range(ng):
        a, b = g * group, min((g + 1) * group, n_in)
        if a >= n_in:
            continue
        part = torch.from_numpy(w[:, a:b]).float().unsqueeze(1)
        _, s, m = _fit_groups(part, torch.ones(1, 1, b - a, dtype=torch.bool))
        scale[:, g], zmin[:, g] = s[:, 0].numpy(), m[:, 0].numpy()
        for j in range(a, b):
            q = np.clip(np.round((w[:, j] - zmin[:, g]) / scale[:, g]), 0, 15)
            codes[:, j] = q
            d = hinv[j, j]
            e = (w[:, j] - (zmin[:, g] + scale[:, g] * q)) / d
            w[:, j + 1:] -= np.outer(e, hinv[j, j + 1:])
            hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / d
    return codes, scale, zmin


@pytest.mark.parametrize("n_in,group", [(64, 64), (128, 64), (96, 32)])
def test_gptq_matches_a_numpy_reference(n_in: int, group: int) -> None:
    """In input order the Cholesky / lazy-batch code gives the paper's codes."""
    w, _, h = _problem(24, n_in, seed=n_in + group)
    codes, scale, zmin = gptq_codes_int4(w, h, group, damp=0.01, act_order=False)
    ref_codes, ref_scale, ref_zmin = _numpy_gptq(w.numpy(), h.numpy(), group, 0.01)
    np.testing.assert_allclose(scale.numpy(), ref_scale, rtol=1e-4)
    np.testing.assert_allclose(zmin.numpy(), ref_zmin, rtol=1e-4, atol=1e-6)
    assert (codes.numpy() == ref_codes).mean() >= 0.998  # (a code may flip on a rounding tie)


@pytest.mark.parametrize("n_in,group", [(128, 64), (200, 64), (70, 64), (256, 128)])
def test_gptq_output_error_is_below_plain_roundings(n_in: int, group: int) -> None:
    """On the calibration inputs GPTQ (with and without act order) has a clearly smaller output error
    than nearest codes."""
    w, x, h = _problem(40, n_in, seed=n_in)
    plain = _error(w, x, quantize_groups_int4(w, group), group)
    n_pad = -(-n_in // 32) * 32
    errors = {}
    for act_order in (False, True):
        codes, s, z = gptq_codes_int4(w, h, group, act_order=act_order)
        errors[act_order] = _error(w, x, (pack_int4(F.pad(codes, (0, n_pad - n_in))), s, z), group)
    assert errors[False] < 0.9 * plain, (plain, errors)
    assert errors[True] < 0.7 * plain, (plain, errors)  # inputs rising in power: input order is the worst order
    via_quantize = _error(w, x, quantize_groups_int4(w, group, hessian=h), group)  # the default options
    assert via_quantize < 0.7 * plain


def test_gptq_codes_in_range_padding_dead_inputs_and_determinism() -> None:
    """70 inputs (a padded block), two inputs that never fire (zero rows and columns of H): codes 0..15,
    padding codes 0, finite parameters, the plain function's shapes, and the same bytes twice."""
    w, x, _ = _problem(33, 70, seed=5)
    x[:, [3, 40]] = 0
    h = x.double().t() @ x.double()
    q, s, z = quantize_groups_int4(w, 64, hessian=h)
    q0, s0, z0 = quantize_groups_int4(w, 64)
    assert q.shape == q0.shape and s.shape == s0.shape and z.shape == z0.shape and q.dtype == torch.uint8
    codes = unpack_int4(q)
    assert int(codes.max()) <= 15 and bool((codes[:, 70:] == 0).all())
    assert bool(torch.isfinite(s).all() and torch.isfinite(z).all())
    again = quantize_groups_int4(w, 64, hessian=h)
    assert all(torch.equal(a, b) for a, b in zip((q, s, z), again))
    assert _error(w, x, (q, s, z)) < _error(w, x, (q0, s0, z0))


def test_gptq_with_white_inputs_is_plain_rounding() -> None:
    """H = c·I (uncorrelated inputs of equal power): no error to pass on, so exactly the nearest codes
    and the same group parameters as without a Hessian."""
    w, _, _ = _problem(16, 128, seed=9)
    got = quantize_groups_int4(w, 64, hessian=7.0 * torch.eye(128, dtype=torch.float64))
    want = quantize_groups_int4(w, 64)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def _logit_error(model: TorchModel, ref: TorchModel, tokens: torch.Tensor) -> float:
    a = ref.forward(tokens, all_logits=True)[0]
    b = model.forward(tokens, all_logits=True)[0]
    return float((a - b).square().mean())


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
@pytest.mark.parametrize("sequential", [True, False])
def test_calibrated_int4_model_is_closer_to_fp32(version: str, sequential: bool) -> None:
    """Every version: after calibration the slots hold Int4/Int8 matrices (no recorder left), and the
    logits on the calibration sequences are closer to fp32 than with nearest codes."""
    sd = random_checkpoint(version, n_layer=2, n_embd=64, seed=3)
    ref = TorchModel.from_state_dict(sd)
    tokens = ref.calibration_tokens(rows=6, length=24, seed=1)
    plain, calibrated = TorchModel.from_state_dict(sd), TorchModel.from_state_dict(sd)
    plain.quantize_int4(kernel="dequant", calibration=None)
    n = calibrated.quantize_int4(kernel="dequant", calibration=tokens, sequential=sequential)
    kinds = [type(v) for _, _, v, _ in _matrix_slots_any(calibrated._weights)]
    assert len(kinds) == n and set(kinds) <= {Int4Matrix, Int8Matrix} and Int4Matrix in kinds
    assert _logit_error(calibrated, ref, tokens) < _logit_error(plain, ref, tokens)


def _matrix_slots_any(weights: object) -> list:
    """(holder, name, value, layout) of every matrix slot, whatever the value's type."""
    import dataclasses

    from rwkv_music.model.quant import MATRIX_FIELDS

    holders = [weights]
    for layer in getattr(weights, "layers", ()):
        holders.append(layer)
        if dataclasses.is_dataclass(getattr(layer, "ffn", None)):
            holders.append(layer.ffn)
    return [(h, f.name, getattr(h, f.name), MATRIX_FIELDS[f.name]) for h in holders for f in dataclasses.fields(h)
            if f.name in MATRIX_FIELDS and getattr(h, f.name) is not None]


def test_a_failing_calibration_leaves_the_float_matrices() -> None:
    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=64))
    before = {(id(h), n): v for h, n, v, _ in _matrix_slots_any(model._weights)}

    def broken() -> None:
        model.forward([[1, 2, 3]])
        raise RuntimeError("calibration stopped")

    with pytest.raises(RuntimeError, match="calibration stopped"):
        quantize_weights_int4(model._weights, "dequant", calibrate=broken)
    after = {(id(h), n): v for h, n, v, _ in _matrix_slots_any(model._weights)}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not any(isinstance(v, InputRecorder) for v in after.values())


def test_calibration_tokens_are_deterministic_and_start_like_documents() -> None:
    """A 128-id vocabulary is ABC's: every row starts with its bos (2); other sizes start anywhere."""
    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=64))
    a = model.calibration_tokens(rows=4, length=12, seed=5)
    assert a.shape == (4, 12) and torch.equal(a, model.calibration_tokens(rows=4, length=12, seed=5))
    assert bool((a[:, 0] == 2).all())
    assert not torch.equal(a, model.calibration_tokens(rows=4, length=12, seed=6))
    other = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=64, vocab_size=96))
    b = other.calibration_tokens(rows=8, length=3, seed=0)
    assert b.shape == (8, 3) and int(b.max()) < 96 and len(set(b[:, 0].tolist())) > 1


def test_int4_load_calibrates_by_default(tmp_path: Path) -> None:
    """dtype="int4" is quantize_int4() with the default calibration: the same bytes as doing it by
    hand, and not the nearest codes, which ``int4_calibration=None`` gives."""
    path = save_random_checkpoint(tmp_path / "m.pth", "7", n_layer=2, n_embd=64)
    loaded = rwkv_music.load_model(path, dtype="int4")
    by_hand, plain = load(path), load(path)
    by_hand.quantize_int4()
    plain.quantize_int4(calibration=None)
    m1, m2, m3 = (x._weights.layers[1].ffn_key for x in (loaded, by_hand, plain))  # an int4 matrix
    assert torch.equal(m1.q, m2.q) and torch.equal(m1.scale, m2.scale) and torch.equal(m1.zmin, m2.zmin)
    assert not torch.equal(m1.q, m3.q)
    off = rwkv_music.load_model(path, dtype="int4", int4_calibration=None)._weights.layers[1].ffn_key
    assert torch.equal(off.q, m3.q) and torch.equal(off.zmin, m3.zmin)
    with pytest.raises(Exception, match="calibration"):
        load(path).quantize_int4(calibration="everything")


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_early_stopped_passes_give_the_same_matrices(version: str) -> None:
    """Ending each sequential pass at the first layer not yet needed changes no byte; calibration in
    several model calls (more positions than one call takes) gives the same bytes as one call would."""
    sd = random_checkpoint(version, n_layer=3, n_embd=64, seed=4)
    ref = TorchModel.from_state_dict(sd)
    tokens = ref.calibration_tokens(rows=5, length=16, seed=2)
    full, stopped = TorchModel.from_state_dict(sd), TorchModel.from_state_dict(sd)
    runs = {"full": 0, "stopped": 0}

    def run(model: TorchModel, key: str) -> None:
        runs[key] += 1
        model.forward(tokens)

    quantize_weights_int4(full._weights, "dequant", calibrate=lambda: run(full, "full"), early_stop=False)
    quantize_weights_int4(stopped._weights, "dequant", calibrate=lambda: run(stopped, "stopped"), early_stop=True)
    assert runs == {"full": 2, "stopped": 2}  # one pass per layer with int4 matrices (not layer 0, not the head)
    import rwkv_music.backends.torch as torch_backend

    chunked = TorchModel.from_state_dict(sd)
    old = torch_backend.CALIBRATION_POSITIONS
    torch_backend.CALIBRATION_POSITIONS = 32  # 2 rows of 16 a call: 3 calls a pass
    try:
        chunked.quantize_int4(kernel="dequant", calibration=tokens)
    finally:
        torch_backend.CALIBRATION_POSITIONS = old
    for other in (stopped, chunked):
        for (_, n, a, _), (_, _, b, _) in zip(_matrix_slots_any(full._weights), _matrix_slots_any(other._weights)):
            for x, y in zip(a.stack or [a], b.stack or [b]):
                assert torch.equal(x.q, y.q) and torch.equal(x.scale, y.scale), n
    logits = ref.forward(tokens)[0]  # and the model still runs whole
    assert torch.isfinite(stopped.forward(tokens)[0]).all() and logits.shape == (5, 128)


def test_the_inverse_hessian_factor_leaves_its_input_unless_told_and_inverts_the_damped_hessian() -> None:
    from rwkv_music.model.quant import _inverse_hessian_factor

    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 48, generator=g, dtype=torch.float64)
    x[:, 7] = 0  # an input that never fired
    h = x.t() @ x
    keep = h.clone()
    u = _inverse_hessian_factor(h, 0.01)
    assert torch.equal(h, keep)
    damped = keep.clone()
    damped[7, 7] = 1.0
    damped.diagonal().add_(0.01 * float(damped.diagonal().mean()))
    assert torch.allclose(u.t() @ u, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)  # Uᵀ U = (H + λI)⁻¹
    scratch = keep.clone()
    assert torch.equal(_inverse_hessian_factor(scratch, 0.01, overwrite=True), u)
