"""The C int8 kernel (rwkv_music/model/native/int8_gemm.c): exact integer semantics, independent batch
rows, threads, the portable (non-AVX2) build, and the fallback when it cannot be built."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import rwkv_music.native_build as native_build
from rwkv_music.model import native
from rwkv_music.model.quant import Int8Matrix, quantize_rows

needs_native = pytest.mark.skipif(native.int8_gemm() is None, reason=f"native kernel: {native.status()}")


def _call(fn: Callable[..., int], x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
          threads: int = 1) -> torch.Tensor:
    x = x.float().contiguous()
    y = torch.full((x.shape[0], q.shape[0]), float("nan"))
    assert fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], q.shape[0],
              threads) == 0
    return y


def _reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The kernel's definition: each row of x rounded to int16 with scale max|x| / 32767 (float32
    arithmetic, as in the C code), then exact integer sums (float64 holds them exactly here)."""
    amax = x.abs().amax(dim=1, keepdim=True)
    xs = torch.where(amax > 0, amax / 32767, torch.ones_like(amax))
    x16 = torch.round(x * (1 / xs))  # ties to even, like the kernel's rounding mode
    return (x16.double() @ q.double().t()) * xs.double() * scale.double()


@needs_native
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_kernel_matches_its_integer_definition(rows: int) -> None:
    # n_in = 4100: two int32 flushes (CHUNK 2048) and a tail that is not a multiple of 32;
    # n_out = 7 is odd; rows cover the 4-row tiles and their remainders.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 4100, generator=g) * torch.logspace(-2, 1, 7)[:, None]
    q, scale = quantize_rows(w)
    x = torch.randn(rows, 4100, generator=g) * torch.logspace(-3, 2, rows)[:, None]
    got = _call(native.int8_gemm(), x, q, scale).double()
    want = _reference(x, q, scale)
    assert float(((got - want).abs() / want.abs().amax(dim=1, keepdim=True)).max()) < 1e-6


@needs_native
def test_kernel_sums_do_not_overflow_at_full_scale() -> None:
    # every product is 32767 * 127: 4100 of them need 35 bits, beyond an int32 lane
    q = torch.full((5, 4100), 127, dtype=torch.int8)
    q[1] = -127
    scale = torch.ones(5)
    x = torch.full((2, 4100), 3.0)
    got = _call(native.int8_gemm(), x, q, scale)
    exact = 4100 * 127 * 3.0
    assert torch.allclose(got[:, 0], torch.full((2,), exact), rtol=1e-6)
    assert torch.allclose(got[:, 1], torch.full((2,), -exact), rtol=1e-6)


@needs_native
def test_batch_rows_are_independent_and_threads_do_not_change_results() -> None:
    g = torch.Generator().manual_seed(1)
    q, scale = quantize_rows(torch.randn(96, 768, generator=g))
    x = torch.randn(11, 768, generator=g)
    x[3] *= 1000.0  # a row with a far larger range must not change the others' rounding
    fn = native.int8_gemm()
    batch = _call(fn, x, q, scale)
    alone = torch.cat([_call(fn, x[i : i + 1], q, scale) for i in range(x.shape[0])])
    assert torch.equal(batch, alone)
    assert torch.equal(_call(fn, x, q, scale, threads=2), batch)


@needs_native
def test_a_zero_row_of_activations_gives_zeros() -> None:
    q, scale = quantize_rows(torch.randn(8, 64))
    x = torch.zeros(2, 64)
    x[1, 5] = 1.0
    y = _call(native.int8_gemm(), x, q, scale)
    assert torch.equal(y[0], torch.zeros(8))
    assert torch.allclose(y[1], q[:, 5].float() * scale, rtol=1e-4)


@needs_native
def test_portable_build_gives_the_same_numbers(tmp_path: Path) -> None:
    """Compiled without -march=native (no AVX2 on baseline x86-64): the plain C loops."""
    path = native._build(native_build.find_compiler(), native._sources_bytes(), flag_sets=(["-O2"],), folder=tmp_path)
    portable = native._open(path)
    if platform.machine() in ("x86_64", "AMD64"):
        assert portable.rwkv_int8_gemm_simd() == 0
    g = torch.Generator().manual_seed(2)
    q, scale = quantize_rows(torch.randn(13, 2100, generator=g))
    x = torch.randn(6, 2100, generator=g)
    assert torch.equal(_call(portable.rwkv_int8_gemm, x, q, scale), _call(native.int8_gemm(), x, q, scale))


@needs_native
def test_int8_matrix_native_stack_writes_each_slice() -> None:
    stack = torch.randn(3, 64, 40)
    m = Int8Matrix.from_float(stack, "bmm", "native")
    xs = torch.randn(3, 5, 64)
    got = torch.bmm(xs, m)
    want = torch.bmm(xs, m.dequantize())
    assert got.shape == (3, 5, 40)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


SCRIPT = textwrap.dedent("""
    import torch
    from rwkv_music.model import native
    from rwkv_music.model.quant import default_kernel
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint
    print(native.status())
    print(default_kernel())
    m = TorchModel.from_state_dict(random_checkpoint("7"))
    m.quantize_int8()
    logits, _ = m.forward([[1, 2, 3]])
    print(bool(torch.isfinite(logits).all()))
""")


@pytest.mark.parametrize("env, reason", [({"CC": "/bin/false"}, "failed"),
                                         ({"RWKV_MUSIC_NATIVE": "0"}, "turned off")])
def test_without_the_native_kernel_int8_falls_back_to_torch(tmp_path: Path, env: dict, reason: str) -> None:
    full = {**os.environ, "RWKV_MUSIC_CACHE_DIR": str(tmp_path), **env}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=full, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, kernel, finite = proc.stdout.strip().splitlines()[-3:]
    assert status.startswith("unavailable") and reason in status
    assert kernel in ("weight_only", "dequant")
    assert finite == "True"


FUSED = {"4": "rwkv4_wkv_decode", "5.0": "rwkv5_wkv_decode", "5.2": "rwkv5_wkv_decode",
         "7": "rwkv7_time_mix_decode", "7a": "rwkv7_time_mix_decode"}


@needs_native
@pytest.mark.parametrize("version", list(FUSED))
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_decode_matches_the_torch_ops(version: str, inplace: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each version's one-token C kernel against the same step in torch ops (and against prefill)."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    kernel_name = FUSED[version]
    calls = []
    real = native.kernel

    def counting(name: str) -> Callable[..., int]:
        fn = real(name)

        def wrapper(*args: object) -> int:
            calls.append(name)
            return fn(*args)

        return wrapper

    monkeypatch.setattr(native, "kernel", counting)
    monkeypatch.setattr(native, "FUSED_LAYERS", False)  # v7's per-layer kernel here; all layers in one call below
    model = TorchModel.from_state_dict(random_checkpoint(version, n_layer=3, n_embd=128, head_size=32,
                                                         vocab_size=100, seed=1))
    tokens = torch.randint(0, 100, (3, 5), generator=torch.Generator().manual_seed(4))
    runs = {}
    for fused in (False, True):
        monkeypatch.setattr(native, "FUSED_DECODE", fused)
        state, logits = model.new_state(3), []
        for t in range(tokens.shape[1]):
            step, state = model.forward(tokens[:, t : t + 1], state, inplace=inplace)
            logits.append(step)
        runs[fused] = (torch.stack(logits), {k: v.clone() for k, v in state.tensors.items()})
    assert calls == [kernel_name] * (3 * tokens.shape[1])  # every layer of every fused step, none unfused
    want, got = runs[False], runs[True]
    scale = float(want[0].abs().max())
    assert float((got[0] - want[0]).abs().max()) < 1e-5 * scale
    for name, tensor in want[1].items():
        assert float((got[1][name] - tensor).abs().max()) < 1e-5 * max(float(tensor.abs().max()), 1.0), name
    full, _ = model.forward(tokens)  # prefill (the chunked / scanned torch form) agrees with the fused steps
    assert float((full - got[0][-1]).abs().max()) < 1e-4 * scale


def _kernel_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names ``native.kernel`` is asked for from now on, in order (the kernels themselves unchanged)."""
    calls: list[str] = []
    real = native.kernel

    def counting(name: str, *choice: object) -> Callable[..., int]:
        calls.append(name)
        return real(name, *choice)

    monkeypatch.setattr(native, "kernel", counting)
    return calls


def _fused_against_per_layer(monkeypatch: pytest.MonkeyPatch, model: Any, tokens: torch.Tensor, inplace: bool,
                             rel: float, calls: list[str]) -> list[str]:
    """One-token steps over ``tokens`` with the all-layers call off, then on: asserts logits and every state
    tensor agree within ``rel`` of their largest value, and that row 1 alone (if there is one) gives the
    fused batch's numbers exactly; returns the kernel lookups (``calls``, from :func:`_kernel_lookups`)
    made by the two passes."""
    rows = tokens.shape[0]
    runs = {}
    for layers in (False, True):
        monkeypatch.setattr(native, "FUSED_LAYERS", layers)
        state, logits = model.new_state(rows), []
        for t in range(tokens.shape[1]):
            step, state = model.forward(tokens[:, t : t + 1], state, inplace=inplace)
            logits.append(step)
        runs[layers] = (torch.stack(logits), {k: v.clone() for k, v in state.tensors.items()})
    passes = list(calls)
    want, got = runs[False], runs[True]
    assert float((got[0] - want[0]).abs().max()) < rel * float(want[0].abs().max())
    for name, tensor in want[1].items():
        assert float((got[1][name] - tensor).abs().max()) < rel * max(float(tensor.abs().max()), 1.0), name
    if rows > 1:  # row 1 alone gives the same numbers as inside the batch (every row is computed alike)
        state = model.new_state(1)
        for t in range(tokens.shape[1]):
            alone, state = model.forward(tokens[1:2, t : t + 1], state)
        assert torch.equal(alone[0], got[0][-1, 1])
    return passes


@needs_native
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("inplace", [False, True])
def test_all_rwkv7_layers_in_one_call_match_the_torch_ops(monkeypatch: pytest.MonkeyPatch, rows: int,
                                                           inplace: bool) -> None:
    """v7_decode.c (every layer of a small fp32 RWKV-7's one-token step) against the torch ops: logits and
    every state tensor to float rounding, one call a step, and a row's numbers the same in any batch."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model import layer_plan
    from rwkv_music.model.factory import random_checkpoint

    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=3, n_embd=128, head_size=32,
                                                         vocab_size=100, seed=3))
    tokens = torch.randint(0, 100, (rows, 6), generator=torch.Generator().manual_seed(5))
    calls = _kernel_lookups(monkeypatch)
    passes = _fused_against_per_layer(monkeypatch, model, tokens, inplace, 1e-5, calls)
    assert passes.count("rwkv7_decode_layers") == tokens.shape[1] and "rwkv7_time_mix_decode" in passes
    monkeypatch.setattr(native, "FUSED_LAYERS", True)
    calls.clear()
    wide = torch.zeros((layer_plan.FUSED_LAYERS_MAX_ROWS + 1, 1), dtype=torch.long)
    model.forward(wide, model.new_state(wide.shape[0]))
    assert "rwkv7_decode_layers" not in calls  # more rows than it takes: the per-layer path
    model.forward(wide[:1], model.new_state(1))
    assert calls.count("rwkv7_decode_layers") == 1
    model.quantize_int8(kernel="dequant")  # the layers it planned for are replaced, by matrices it cannot call
    calls.clear()
    model.forward(wide[:1], model.new_state(1))
    assert "rwkv7_decode_layers" not in calls


@needs_native
def test_a_wide_fp32_rwkv7_step_takes_the_all_layers_call_for_few_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wider than FUSED_LAYERS_MAX_WIDTH, an fp32 RWKV-7 step still runs in one call while B·C is at most
    FUSED_FP32_MAX_FLOATS (the same numbers as the per-layer path, to rounding), and not above."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model import v7
    from rwkv_music.model.factory import random_checkpoint
    from rwkv_music.model.layer_plan import FUSED_FP32_MAX_FLOATS

    width = v7.FUSED_LAYERS_MAX_WIDTH + 64
    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=width, head_size=64,
                                                         vocab_size=100, seed=9))
    tokens = torch.randint(0, 100, (1, 4), generator=torch.Generator().manual_seed(9))
    calls = _kernel_lookups(monkeypatch)
    passes = _fused_against_per_layer(monkeypatch, model, tokens, True, 1e-5, calls)
    assert passes.count("rwkv7_decode_layers") == tokens.shape[1]
    calls.clear()
    rows = FUSED_FP32_MAX_FLOATS // width + 1
    model.forward(torch.zeros((rows, 1), dtype=torch.long), model.new_state(rows))
    model.forward(tokens, model.new_state(1))  # a prompt of a wide model: the chunked form
    assert "rwkv7_decode_layers" not in calls and "rwkv7_prefill_layers" not in calls


@needs_native
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ["int8", "int4", "int4-all", "int8-lora-fp32"])
def test_quantized_rwkv7_steps_in_one_call_match_the_per_layer_path(monkeypatch: pytest.MonkeyPatch, rows: int,
                                                                   dtype: str) -> None:
    """With int8/int4 matrices on the native kernels, one-token steps of any width run every layer in one
    call (the products are the same kernel calls): logits and state as the per-layer torch path's; a row's
    numbers the same in any batch; prompts keep the chunked form.  Not to float rounding: the kernels round
    each activation row to int16, so the C and torch element-wise steps' last-bit differences flip an
    int16 code now and then (3e-5 of the row's largest value), and that grows over layers and steps
    (measured up to 5e-4 of the largest logit with int8, 1.6e-3 with int4; their error against fp32 is
    100-1000x that, and a wrong matrix or slice gives errors of the logits' own size)."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model import v7
    from rwkv_music.model.factory import random_checkpoint
    from rwkv_music.model.quant import INT4_ALL_BUT_HEAD, LORA_FIELDS

    width = v7.FUSED_LAYERS_MAX_WIDTH + 64  # wider than narrow fp32 models
    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=3, n_embd=width, head_size=64,
                                                         vocab_size=100, seed=4))
    if dtype == "int8":
        model.quantize_int8()
    elif dtype == "int8-lora-fp32":  # fp32 LoRA stacks among int8 matrices (as the ONNX exports keep them)
        model.quantize_int8(skip=LORA_FIELDS)
    else:
        model.quantize_int4(calibration=None, int8_fields=INT4_ALL_BUT_HEAD if dtype == "int4-all" else None)
    tokens = torch.randint(0, 100, (rows, 5), generator=torch.Generator().manual_seed(6))
    calls = _kernel_lookups(monkeypatch)
    passes = _fused_against_per_layer(monkeypatch, model, tokens, True, 3e-3, calls)
    assert passes.count("rwkv7_decode_layers") == tokens.shape[1]
    calls.clear()
    model.forward(tokens, model.new_state(rows))
    assert "rwkv7_prefill_layers" not in calls and "rwkv7_decode_layers" not in calls


@needs_native
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("version", ["4", "5.0", "5.1", "5.2", "6"])
def test_rwkv4_5_6_steps_in_one_call_match_the_per_layer_path(monkeypatch: pytest.MonkeyPatch, version: str,
                                                              dtype: str, rows: int) -> None:
    """v45_decode.c / v6_decode.c: every layer of a v4 / v5.x / v6 one-token step in one call, for fp32 models
    (few rows) and int8/int4 ones (any width): logits and every state tensor as the per-layer path's, one
    call a step, a row's numbers the same in any batch.  fp32 to rounding (5.0, whose random bonus is
    large, amplifies it most: measured 1.5e-5 of the largest logit); quantized within 3e-3 for the int16
    activation codes the two paths' last-bit differences flip (as for RWKV-7 above; measured <= 1.6e-4)."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint
    from rwkv_music.model.layer_plan import FUSED_FP32_MAX_FLOATS, FUSED_LAYERS_MAX_ROWS

    width = 320  # (fp32: within FUSED_FP32_MAX_FLOATS at 3 rows)
    model = TorchModel.from_state_dict(random_checkpoint(version, n_layer=3, n_embd=width, head_size=32,
                                                         vocab_size=100, seed=7))
    if dtype == "int8":
        model.quantize_int8()
    elif dtype == "int4":
        model.quantize_int4(calibration=None)
    tokens = torch.randint(0, 100, (rows, 5), generator=torch.Generator().manual_seed(8))
    calls = _kernel_lookups(monkeypatch)
    passes = _fused_against_per_layer(monkeypatch, model, tokens, True, 5e-5 if dtype == "fp32" else 3e-3, calls)
    name = {"4": "rwkv4_decode_layers", "6": "rwkv6_decode_layers"}.get(version, "rwkv5_decode_layers")
    assert passes.count(name) == tokens.shape[1]
    monkeypatch.setattr(native, "FUSED_LAYERS", True)
    calls.clear()
    model.forward(tokens, model.new_state(rows))  # prompts keep the per-layer (chunked / scanned) form
    too_many = torch.zeros((FUSED_LAYERS_MAX_ROWS + 1, 1), dtype=torch.long)
    model.forward(too_many, model.new_state(too_many.shape[0]))
    assert name not in calls
    if dtype == "fp32":  # an fp32 step with more than FUSED_FP32_MAX_FLOATS: torch's products
        rows_over = FUSED_FP32_MAX_FLOATS // width + 1
        model.forward(too_many[:rows_over], model.new_state(rows_over))
        assert name not in calls
        model.quantize_int8(kernel="dequant")  # matrices the kernel cannot call: the per-layer path
        model.forward(too_many[:1], model.new_state(1))
        assert name not in calls


@needs_native
@pytest.mark.parametrize("version", ["4", "7"])
def test_the_all_layers_step_gives_the_same_numbers_on_any_number_of_threads(version: str) -> None:
    """A big fp32 matrix's product is split over the threads by blocks of outputs (decode_common.h), each
    output summed the same way: one thread and two give the same logits and state, bit for bit."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    model = TorchModel.from_state_dict(random_checkpoint(version, n_layer=2, n_embd=512, head_size=64,
                                                         vocab_size=100, seed=10))  # FFN 512 x 2048: split
    tokens = torch.randint(0, 100, (2, 3), generator=torch.Generator().manual_seed(10))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state, logits = model.new_state(2), []
            for t in range(tokens.shape[1]):
                step, state = model.forward(tokens[:, t : t + 1], state, inplace=True)
                logits.append(step)
            runs.append((torch.stack(logits), state))
    finally:
        torch.set_num_threads(before)
    (one, s1), (two, s2) = runs
    assert torch.equal(one, two)
    assert all(torch.equal(s1.tensors[k], s2.tensors[k]) for k in s1.tensors)


@needs_native
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="an x86 vector width choice")
@pytest.mark.parametrize("version", ["4", "7"])
def test_the_avx2_width_build_gives_this_build_s_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          version: str) -> None:
    """decode_common.h sums a block of outputs in 16-float vectors where the build has AVX-512 and in 8-float
    ones elsewhere (64-byte vectors on AVX2 spilled to the stack); each lane is one output summed in the
    same order, so a build without AVX-512 gives this machine's build's logits and state bit for bit."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model.factory import random_checkpoint

    if " avx2" not in native_build.cpu_identity():
        pytest.skip("this CPU has no AVX2")
    path = native._build(native_build.find_compiler(), native._sources_bytes(),
                         flag_sets=(["-O3", "-march=native", "-mno-avx512f", "-fopenmp"],), folder=tmp_path)
    narrow = native._open(path)
    model = TorchModel.from_state_dict(random_checkpoint(version, n_layer=2, n_embd=192, head_size=32,
                                                         vocab_size=100, seed=12))  # 192: three 64-output blocks
    tokens = torch.randint(0, 100, (3, 4), generator=torch.Generator().manual_seed(12))
    runs = []
    for lib in (native._load(), narrow):
        monkeypatch.setitem(native._loaded, "lib", lib)
        state, logits = model.new_state(3), []
        for t in range(tokens.shape[1]):
            step, state = model.forward(tokens[:, t : t + 1], state)
            logits.append(step)
        runs.append((torch.stack(logits), state))
    (wide, s1), (eight, s2) = runs
    assert torch.equal(wide, eight)
    assert all(torch.equal(s1.tensors[k], s2.tensors[k]) for k in s1.tensors)


@needs_native
@pytest.mark.parametrize("rows,length", [(1, 2), (1, 21), (3, 21), (1, 64), (1, 65)])
def test_a_short_prompt_through_the_all_layers_steps_matches_the_chunked_prefill(
    monkeypatch: pytest.MonkeyPatch, rows: int, length: int
) -> None:
    """A prompt of up to FUSED_PREFILL_MAX_TOKENS tokens is read as one-token steps in one C call
    (rwkv7_prefill_layers): the last logits and the state as the torch chunked prefill's, to rounding;
    longer prompts, and all_logits, keep the chunked form."""
    from rwkv_music.backends.torch import TorchModel
    from rwkv_music.model import v7
    from rwkv_music.model.factory import random_checkpoint

    model = TorchModel.from_state_dict(random_checkpoint("7", n_layer=2, n_embd=64, head_size=32,
                                                         vocab_size=90, seed=6))
    tokens = torch.randint(0, 90, (rows, length), generator=torch.Generator().manual_seed(length))
    start = model.new_state(rows)
    start.tensors["att_kv"].normal_(generator=torch.Generator().manual_seed(1))  # a state to carry on from
    calls = _kernel_lookups(monkeypatch)
    runs = {}
    for layers in (False, True):
        monkeypatch.setattr(native, "FUSED_LAYERS", layers)
        logits, state = model.forward(tokens, start)
        runs[layers] = (logits, state)
    used = "rwkv7_prefill_layers" in calls
    assert used == (rows * length <= v7.FUSED_PREFILL_MAX_POSITIONS)
    (want, ws), (got, gs) = runs[False], runs[True]
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    for name, tensor in ws.tensors.items():
        assert float((gs.tensors[name] - tensor).abs().max()) < 1e-4 * max(float(tensor.abs().max()), 1.0), name
    calls.clear()
    every, _ = model.forward(tokens, start, all_logits=True)
    assert "rwkv7_prefill_layers" not in calls and torch.allclose(every[:, -1], want, atol=1e-4)
