"""Group-wise int4 weights (rwkv_music.model.quant.Int4Matrix, rwkv_music/model/native/int4_gemm.c):
packing, the group fit, the kernels against the dequantized matrix, whole models against fp32, the
public switches, and the ncnn refusal."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rwkv_music.native_build as native_build
from rwkv_music.backends.torch import TorchModel
from rwkv_music.errors import BackendUnavailable, OptionError
from rwkv_music.model import native
from rwkv_music.model.factory import random_checkpoint, save_random_checkpoint
from rwkv_music.model.quant import (
    INT4_INT8_FIELDS,
    INT4_KERNELS,
    Int4Matrix,
    Int8Matrix,
    int4_native_available,
    pack_int4,
    quantize_groups_int4,
    quantize_weights,
    quantize_weights_int4,
    unpack_int4,
)

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7", "7a")
needs_native = pytest.mark.skipif(not int4_native_available(), reason=f"native kernel: {native.status()}")


def _kernels() -> list[str]:
    return ["dequant", "native"] if int4_native_available() else ["dequant"]


# Relative to the largest |output|: dequant is the float matrix product (fp32 rounding); native also
# rounds each activation row to int16 (relative error 1.5e-5 per element, ~4e-5 measured on a row).
REL_TOL = {"dequant": 1e-5, "native": 2e-4}


def test_pack_unpack_round_trip_and_layout() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (5, 96), generator=g, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 48)
    assert torch.equal(unpack_int4(packed), codes)
    # int4_gemm.c's layout: in each 32-input block, byte j = input j (low nibble) | input j + 16 (high)
    assert int(packed[2, 3]) == int(codes[2, 3]) | (int(codes[2, 19]) << 4)
    assert int(packed[4, 16 + 7]) == int(codes[4, 32 + 7]) | (int(codes[4, 32 + 23]) << 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_int4(codes[:, :40])


def _minmax_error(w: torch.Tensor, group: int) -> torch.Tensor:
    """Squared error per group of the plain grid: 16 levels from the group's min to its max."""
    wg = w.view(w.shape[0], -1, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = ((hi - lo) / 15).clamp_min(1e-30)
    return (torch.round((wg - lo) / s).clamp(0, 15) * s + lo - wg).square().sum(-1)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_group_fit_is_at_least_as_good_as_the_min_max_grid(group: int) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 256, generator=g) * torch.logspace(-3, 1, 24)[:, None]  # very different row ranges
    w[3] = 0.0
    w[7, :group] = 0.25  # one constant group
    q, scale, zmin = quantize_groups_int4(w, group)
    assert q.shape == (24, 128) and scale.shape == zmin.shape == (24, 256 // group)
    m = Int4Matrix(q, scale, zmin, 256, "out_in", "dequant", group)
    deq = m.dequantize()
    err = (deq - w).view(24, -1, group).square().sum(-1)
    assert bool((err <= _minmax_error(w, group) * (1 + 1e-4) + 1e-12).all())
    assert float(err.sum()) < 0.9 * float(_minmax_error(w, group).sum())  # and better overall (0.69-0.81 seen)
    assert torch.equal(deq[3], w[3]) and torch.equal(deq[7, :group], w[7, :group])  # exact where constant
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_groups_int4(w, 48)


@pytest.mark.parametrize("kernel", _kernels())
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("n_in,group", [(64, 64), (96, 32), (70, 64), (200, 128)])
def test_int4_ops_match_the_dequantized_product(kernel: str, batch: int, n_in: int, group: int) -> None:
    """x @ W, F.linear and torch.bmm through an Int4Matrix equal the same products with its dequantized
    float matrix, up to fp32 rounding (and int16 activation rounding for the C kernel); n_in 70 and
    200 cover a padded block and a short last group."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(37, n_in, generator=g)  # 37 output rows: an odd row after the decode pairs
    x = torch.randn(batch, n_in, generator=g)
    lin = Int4Matrix.from_float(w, "out_in", kernel, group)
    assert tuple(lin.shape) == (37, n_in)
    ref = x @ lin.dequantize().t()
    tol = REL_TOL[kernel] * float(ref.abs().max())
    assert float((F.linear(x, lin) - ref).abs().max()) <= tol
    mat = Int4Matrix.from_float(w.t().contiguous(), "in_out", kernel, group)
    assert tuple(mat.shape) == (n_in, 37) and torch.allclose(mat.dequantize(), lin.dequantize().t(), atol=1e-6)
    assert float((x @ mat - ref).abs().max()) <= tol
    assert float((x[None] @ mat - ref[None]).abs().max()) <= tol  # a leading dimension
    stack = Int4Matrix.from_float(torch.randn(3, n_in, 40, generator=g), "bmm", kernel, group)
    xs = torch.randn(3, batch, n_in, generator=g)
    want = torch.bmm(xs, stack.dequantize())
    got = torch.bmm(xs, stack)
    assert got.shape == (3, batch, 40)
    assert float((got - want).abs().max()) <= REL_TOL[kernel] * float(want.abs().max())


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernel_and_torch_fallback_agree(threads: int) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(130, 320, generator=g)
    nat = Int4Matrix.from_float(w, "out_in", "native", 64)
    fb = Int4Matrix.from_float(w, "out_in", "dequant", 64)
    assert torch.equal(nat.q, fb.q) and torch.equal(nat.scale, fb.scale)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 3, 8):
            x = torch.randn(batch, 320, generator=g)
            a, b = F.linear(x, nat), F.linear(x, fb)
            assert float((a - b).abs().max()) <= 2e-4 * float(b.abs().max())
            # batch rows are independent: a row alone gives the same numbers as inside the batch
            assert torch.equal(F.linear(x[1:2], nat), a[1:2])
    finally:
        torch.set_num_threads(old)


@needs_native
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the SIMD path is x86 only")
@pytest.mark.parametrize("flags", [["-O2"], ["-O2", "-mavx2", "-mfma"]], ids=["portable", "avx2-no-vnni"])
def test_other_builds_agree_with_this_machines_build(tmp_path: Path, flags: list[str]) -> None:
    """The plain C loop and the AVX2 path without AVX512-VNNI (vpmaddwd instead of vpdpwssd) give the
    numbers of the -march=native build used everywhere else here."""
    if "-mavx2" in flags and " avx2" not in native_build.cpu_identity():
        pytest.skip("this CPU has no AVX2")
    path = native._build(native_build.find_compiler(), native._sources_bytes(), flag_sets=(flags,), folder=tmp_path)
    other = native._open(path)
    g = torch.Generator().manual_seed(4)
    m = Int4Matrix.from_float(torch.randn(33, 200, generator=g), "out_in", "native", 64)
    for batch in (1, 6):
        x = torch.randn(batch, 200, generator=g)
        y = torch.full((batch, 33), float("nan"))
        assert other.rwkv_int4_gemm(x.data_ptr(), m.q.data_ptr(), m.scale.data_ptr(), m.zmin.data_ptr(),
                                    y.data_ptr(), batch, 200, 33, 64, 1) == 0
        assert float((y - F.linear(x, m)).abs().max()) <= 1e-5 * float(y.abs().max())
    assert other.rwkv_int4_gemm(x.data_ptr(), m.q.data_ptr(), m.scale.data_ptr(), m.zmin.data_ptr(),
                                y.data_ptr(), batch, 200, 33, 48, 1) == -2  # a group not a multiple of 32


@needs_native
@pytest.mark.skipif(not {" avx512_vnni", " avx512bw", " avx512dq", " avx_vnni"} <= set(
    f" {w}" for w in native_build.cpu_identity().split()), reason="needs a CPU with both 512-bit and 256-bit VNNI")
def test_the_512_bit_group_pairs_give_the_256_bit_paths_numbers(tmp_path: Path) -> None:
    """Groups of 64 go two at a time through 512-bit registers where the build has AVX512 (VNNI, BW, DQ); a
    build without AVX512 runs the 256-bit VNNI path.  Same integer sums, same fp32 updates in the same
    order: the same bits, for odd and even group counts, a short last group, odd row counts, batches."""
    path = native._build(native_build.find_compiler(), native._sources_bytes(),
                         flag_sets=(["-O3", "-march=native", "-mno-avx512f", "-fopenmp"],), folder=tmp_path)
    narrow = native._open(path)
    g = torch.Generator().manual_seed(7)
    for n_in, n_out in ((768, 96), (130, 33), (448, 64), (3072, 20), (128, 50), (96, 12)):
        m = Int4Matrix.from_float(torch.randn(n_out, n_in, generator=g), "out_in", "native", 64)
        for batch in (1, 3):
            x = torch.randn(batch, n_in, generator=g)
            y = torch.full((batch, n_out), float("nan"))
            assert narrow.rwkv_int4_gemm(x.data_ptr(), m.q.data_ptr(), m.scale.data_ptr(), m.zmin.data_ptr(),
                                         y.data_ptr(), batch, n_in, n_out, 64, 1) == 0
            assert torch.equal(y, F.linear(x, m)), (n_in, n_out, batch)


def _peaked_checkpoint(version: str) -> dict[str, torch.Tensor]:
    """As in test_quant.py: widely spread logits, so the top-1 token is rarely a near tie."""
    sd = random_checkpoint(version, n_layer=2, n_embd=64, head_size=32, vocab_size=128, seed=3)
    sd["head.weight"] = sd["head.weight"] * 8.0
    return sd


@pytest.mark.parametrize("version", VERSIONS)
def test_int4_model_logits_follow_fp32_for_every_version(version: str) -> None:
    """Tolerance from the quantization step: int8 rounds each weight to 1/254 of its row's range, int4
    to 1/15 of its group's range (a group's range is at most its row's), so the int4 rounding error
    is at most ~17x int8's, and the logit error follows (measured 8-16x, 0.12-0.40 of the largest
    logit on these deliberately peaked random models).  Bound: 20x the int8 error of the same model,
    and below 0.5 (a wrong orientation or group layout gives errors of order 1).  Measured with int4 in
    the FFN alone (every version has one); int4 in the time mix too is held to its mean error below."""
    sd = _peaked_checkpoint(version)
    ref = TorchModel.from_state_dict(sd)
    tokens = torch.randint(0, 128, (4, 6), generator=torch.Generator().manual_seed(1))
    want, _ = ref.forward(tokens, all_logits=True)
    scale = float(want.abs().max())
    int8 = TorchModel.from_state_dict(sd)
    quantize_weights(int8._weights, "dequant")
    err8 = float((int8.forward(tokens, all_logits=True)[0] - want).abs().max()) / scale
    for kernel in _kernels():
        model = TorchModel.from_state_dict(sd)
        n = quantize_weights_int4(model._weights, kernel, int8_fields=_TIME_MIX_AND_HEAD, int8_layers=())
        assert n >= 4 * 2 + 1
        got, state = model.forward(tokens, all_logits=True)
        err = float((got - want).abs().max()) / scale
        assert 0 < err < min(0.5, 20 * err8 + 1e-3), (kernel, err, err8)
        agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        assert agree >= 0.6, (kernel, agree)  # 0.71-0.88 measured (random models: near ties are common)
        assert state.batch_size == 4


_TIME_MIX_AND_HEAD = ("head", "att_kvr", "att_rkvg", "att_out", "rkvg", "rkv", "output", "lora_in", "lora_out")


@pytest.mark.parametrize("version", VERSIONS)
def test_int4_default_mix_errs_less_than_int4_everywhere(version: str) -> None:
    """The default keeps layer 0 and the time-mix outputs int8: its mean logit error lies between the
    FFN-only mix's (at most 2x it: measured 0.8-1.6x) and int4 in every layer matrix (measured 1.3-2.5x
    the default's) on 128 positions of the peaked random models."""
    sd = _peaked_checkpoint(version)
    tokens = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(1))
    want = TorchModel.from_state_dict(sd).forward(tokens, all_logits=True)[0]
    errs = {}
    for name, options in (("ffn", {"int8_fields": _TIME_MIX_AND_HEAD, "int8_layers": ()}), ("default", {}),
                          ("all", {"int8_fields": ("head",), "int8_layers": ()})):
        model = TorchModel.from_state_dict(sd)
        quantize_weights_int4(model._weights, _kernels()[0], **options)
        errs[name] = float((model.forward(tokens, all_logits=True)[0] - want).abs().mean())
    assert errs["default"] < min(2 * errs["ffn"], errs["all"]), errs


def test_quantize_weights_int4_rejects_an_unknown_kernel() -> None:
    model = TorchModel.from_state_dict(random_checkpoint("7"))
    with pytest.raises(ValueError, match="int4 kernel"):
        quantize_weights_int4(model._weights, "weight_only")
    assert set(INT4_KERNELS) == {"native", "dequant"}


def test_load_model_and_composer_take_int4(tmp_path: Path) -> None:
    import rwkv_music
    from rwkv_music.compose import Composer

    path = save_random_checkpoint(tmp_path / "m.pth", "7", n_embd=64, head_size=32, vocab_size=128)
    ref = rwkv_music.load_model(path)
    q = rwkv_music.load_model(path, dtype="int4")
    assert q.quantization == "int4" and q.compute_dtype == "int4"
    assert isinstance(q._weights.head, Int8Matrix)  # INT4_INT8_FIELDS: the head and the time-mix outputs
    assert isinstance(q._weights.layers[1].output, Int8Matrix)
    assert isinstance(q._weights.layers[1].ffn_key, Int4Matrix)
    a, _ = ref.forward([[5, 9, 17, 33, 2]])
    b, _ = q.forward([[5, 9, 17, 33, 2]])
    # really quantized, and close (calibrated on sequences this random model samples after bos, not this prompt)
    assert 0 < float((a - b).abs().max()) < 0.15 * float(a.abs().max())
    composer = Composer.load(path, mode="abc", dtype="int4")
    assert composer.backend.compute_dtype == "int4"


def test_cli_offers_int4() -> None:
    from rwkv_music.cli.common import DTYPES

    assert "int4" in DTYPES


def test_ncnn_refuses_int4_in_one_line(tmp_path: Path) -> None:
    from rwkv_music.backends import ncnn, ncnn_export

    with pytest.raises(BackendUnavailable, match="stock ncnn has no int4") as exc:
        ncnn.load(tmp_path / "missing.param", dtype="int4")
    assert "\n" not in str(exc.value)
    sd = random_checkpoint("7", n_layer=1, n_embd=64, head_size=32, vocab_size=128)
    with pytest.raises(OptionError, match="stock ncnn has no int4") as exc2:
        ncnn_export.export(sd, tmp_path / "m", "int4")
    assert "\n" not in str(exc2.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_ncnn_int4_from_a_checkpoint_is_refused_before_any_export(tmp_path: Path) -> None:
    from rwkv_music.backends import load_backend

    path = tmp_path / "m.pth"
    torch.save(random_checkpoint("7", n_layer=1, n_embd=64, head_size=32, vocab_size=128), path)
    with pytest.raises(BackendUnavailable, match="stock ncnn has no int4") as exc:
        load_backend(path, backend="ncnn", dtype="int4", cache_dir=tmp_path / "cache")
    assert "\n" not in str(exc.value) and not (tmp_path / "cache").exists()


def _numpy_int4_product(x: np.ndarray, q: np.ndarray, scale: np.ndarray, zmin: np.ndarray, n_in: int,
                        group: int) -> np.ndarray:
    """The plain reference: unpack the bytes (byte j of a 32-input block = input j | input j + 16 << 4),
    rebuild w = zmin + scale * code per group in float64, and multiply."""
    out_f, half = q.shape
    blocks = q.reshape(out_f, half // 16, 16).astype(np.int64)
    codes = np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(out_f, half * 2)
    gidx = np.arange(half * 2) // group
    w = zmin[:, gidx].astype(np.float64) + scale[:, gidx].astype(np.float64) * codes
    return x.astype(np.float64) @ w[:, :n_in].T


@needs_native
@pytest.mark.parametrize("n_in,group", [(64, 64), (96, 32), (70, 64), (200, 128), (320, 96), (768, 64), (3072, 64)])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_native_kernel_matches_a_numpy_dequantize_and_matmul(n_in: int, group: int, batch: int) -> None:
    """The C kernel (on this machine the VNNI byte-plane path where the CPU has it, else AVX2 or plain C)
    against numpy: group sizes with odd block counts (32, 96), a padded block (70), a short last group
    (200, 320), and the decode shapes; 39 output rows leave an odd row after the decode pairs."""
    g = torch.Generator().manual_seed(n_in + group)
    w = torch.randn(39, n_in, generator=g) * torch.logspace(-2, 0, 39)[:, None]
    x = torch.randn(batch, n_in, generator=g) * 3
    m = Int4Matrix.from_float(w, "out_in", "native", group)
    assert m._native is not None  # really the C kernel, not the float fallback
    want = _numpy_int4_product(x.numpy(), m.q.numpy(), m.scale.numpy(), m.zmin.numpy(), n_in, group)
    got = F.linear(x, m).double().numpy()
    # int16 activation rounding: relative error ~1.5e-5 per element of each row
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    for b in range(batch):  # a row alone gives the same numbers as inside the batch
        assert torch.equal(F.linear(x[b : b + 1], m), F.linear(x, m)[b : b + 1])


def test_int4_keeps_the_head_int8_unless_asked() -> None:
    sd = _peaked_checkpoint("7")
    model = TorchModel.from_state_dict(sd)
    n = quantize_weights_int4(model._weights, "dequant")
    assert INT4_INT8_FIELDS[0] == "head" and {"output", "att_out"} <= set(INT4_INT8_FIELDS)
    assert isinstance(model._weights.head, Int8Matrix) and model._weights.head.kernel == "dequant"
    assert isinstance(model._weights.layers[1].output, Int8Matrix)
    assert isinstance(model._weights.layers[1].rkv, Int4Matrix)
    assert isinstance(model._weights.layers[1].ffn_key, Int4Matrix)
    assert all(isinstance(getattr(model._weights.layers[0], f), Int8Matrix)  # INT4_INT8_LAYERS: the first
               for f in ("rkv", "output", "ffn_key", "ffn_value", "lora_in", "lora_out"))
    every = TorchModel.from_state_dict(sd)
    assert quantize_weights_int4(every._weights, "dequant", int8_fields=(), int8_layers=()) == n
    assert isinstance(every._weights.head, Int4Matrix)
    assert isinstance(every._weights.layers[0].rkv, Int4Matrix)
    tokens = torch.randint(0, 128, (4, 6), generator=torch.Generator().manual_seed(1))
    want = TorchModel.from_state_dict(sd).forward(tokens, all_logits=True)[0]
    err_mixed = float((model.forward(tokens, all_logits=True)[0] - want).abs().max())
    err_all = float((every.forward(tokens, all_logits=True)[0] - want).abs().max())
    assert err_mixed < err_all  # the int8 head errs less than the int4 one
    with pytest.raises(ValueError, match="int8_fields names no matrix field: lm_head"):
        quantize_weights_int4(TorchModel.from_state_dict(sd)._weights, "dequant", int8_fields=("lm_head",))


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_int4_default_mix_of_int8_and_int4_matrices(tmp_path: Path, version: str) -> None:
    """Default: the head, layer 0 whole and each later layer's time-mix output projection int8, the
    rest int4; INT4_ALL_BUT_HEAD: every layer matrix int4; int4_int8_layers picks the whole-int8 layers."""
    import rwkv_music
    from rwkv_music.model.quant import INT4_ALL_BUT_HEAD, MATRIX_FIELDS

    path = save_random_checkpoint(tmp_path / "m.pth", version, n_layer=3, n_embd=64, head_size=32, vocab_size=128)

    def kinds(**options: object) -> list[dict[str, str]]:
        model = rwkv_music.load_model(path, dtype="int4", int4_calibration=None, **options)
        assert type(model._weights.head) is Int8Matrix
        out = []
        for layer in model._weights.layers:
            holders = (layer, getattr(layer, "ffn", None))
            out.append({f: type(getattr(obj, f)).__name__ for obj in holders if obj is not None
                        for f in MATRIX_FIELDS if isinstance(getattr(obj, f, None), (Int4Matrix, Int8Matrix))})
        return out

    default = kinds()
    assert all(k == "Int8Matrix" for k in default[0].values())
    for layer in default[1:]:
        outputs = {f for f in layer if f in INT4_INT8_FIELDS}
        assert outputs and all(layer[f] == "Int8Matrix" for f in outputs)
        rest = set(layer) - outputs
        assert rest and all(layer[f] == "Int4Matrix" for f in rest)  # FFN and time-mix inputs
    every = kinds(int4_int8_fields=INT4_ALL_BUT_HEAD)
    assert all(k == "Int4Matrix" for layer in every for k in layer.values())
    last = kinds(int4_int8_fields=INT4_ALL_BUT_HEAD, int4_int8_layers=(-1,))
    assert [set(layer.values()) for layer in last] == [{"Int4Matrix"}, {"Int4Matrix"}, {"Int8Matrix"}]


def test_load_refuses_unknown_int4_int8_fields(tmp_path: Path) -> None:
    import rwkv_music

    path = save_random_checkpoint(tmp_path / "m.pth", "7", n_embd=64, head_size=32, vocab_size=128)
    with pytest.raises(OptionError, match="int8_fields names no matrix field: attention"):
        rwkv_music.load_model(path, dtype="int4", int4_int8_fields=("attention",))
    with pytest.raises(OptionError, match="int8_layers takes layer indices"):
        rwkv_music.load_model(path, dtype="int4", int4_calibration=None, int4_int8_layers=("first",))


@needs_native
@pytest.mark.parametrize("cls", ["int8", "int4"])
def test_a_native_stack_runs_in_one_call_with_the_slices_own_numbers(cls: str) -> None:
    """torch.bmm through a native int8 / int4 stack is one C call (rwkv_int*_gemm_stack) that gives,
    bit for bit, what each slice's own kernel gives its slice; also for a non-contiguous input."""
    from rwkv_music.model.quant import Int8Matrix

    g = torch.Generator().manual_seed(7)
    w = torch.randn(4, 96, 48, generator=g)
    if cls == "int8":
        stack = Int8Matrix.from_float(w, "bmm", "native")
    else:
        stack = Int4Matrix.from_float(w, "bmm", "native", 32)
    assert stack._stack_call is not None
    for xs in (torch.randn(4, 3, 96, generator=g), torch.randn(3, 4, 96, generator=g).transpose(0, 1)):
        got = torch.bmm(xs, stack)
        want = torch.stack([m._kernel(xi.contiguous()) for m, xi in zip(stack.stack, xs.unbind(0))])
        assert got.shape == (4, 3, 48) and torch.equal(got, want)
    with pytest.raises(ValueError, match="bmm of 3 slices with a stack of 4"):
        torch.bmm(torch.randn(3, 1, 96), stack)
