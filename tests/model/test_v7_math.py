"""RWKV-7 / 7a math (rwkv_music.model.v7) against the `rwkv` pip package and against itself.

Random 2-layer checkpoints in the BlinkDL layout.  The pip package is the oracle for fp32
logits and states; batching and sequence/step equivalence are checked against our own runs;
the chunked WKV is checked against the reference model's float64 per-token step (A7 step 8).

Low-precision tolerance: max |logit difference| to the pip fp32 logits over a 40–64-token
prompt and 16 steps, logit scale 5–9.  Measured (v7, v7a; width 64, and width 128 / vocab
20096): bf16 0.04–0.10 (pip's own bf16 run: 0.05–0.15), fp16 0.006–0.012 (pip's fp16:
0.008–0.017).  The tests assert 0.2 and 0.04 on the width-64 models.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
import torch

from rwkv_music.model import v7, wkv7
from rwkv_music.model.detect import config_from_state_dict
from rwkv_music.model.reference import v7 as reference_v7
from rwkv_music.model.state import State

if TYPE_CHECKING:
    from conftest import OracleCase, PipOracle

    from rwkv_music.model.config import RWKVConfig

FP32_TOL = 1e-4
LOW_PRECISION_TOL = {torch.bfloat16: 0.2, torch.float16: 0.04}
SEQ_RTOL = 1e-5  # sequence mode vs split calls, relative to the logit scale
CASES = {"7-small": ("7", 128, 64, 32), "7-midi": ("7", 20096, 128, 64), "7a-small": ("7a", 128, 64, 32)}
ORACLE_ROWS = {"7-small": 4, "7-midi": 2, "7a-small": 4}  # prompts per case sent to the pip package
N_ROWS, PROMPT_LEN, N_STEPS = 4, 40, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add sync cost on the shared test machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tokens(V: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, V, size=(N_ROWS, PROMPT_LEN)).tolist()
    steps = rng.integers(0, V, size=(N_ROWS, N_STEPS)).tolist()
    return prompts, steps


@pytest.fixture(scope="module")
def models(checkpoint_path: Callable[..., Path]) -> Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]]:
    """Case name → (path, config, state dict, {dtype: weights}) built lazily."""
    cache: dict[str, tuple] = {}

    def get(name: str, dtype: torch.dtype = torch.float32):
        if name not in cache:
            version, V, C, N = CASES[name]
            path = checkpoint_path(version, vocab_size=V, n_embd=C, head_size=N)
            sd = torch.load(path, map_location="cpu", weights_only=True)
            cache[name] = (path, config_from_state_dict(sd), sd, {})
        path, config, sd, prepared = cache[name]
        if dtype not in prepared:
            prepared[dtype] = v7.prepare(sd, config, dtype, "cpu")
        return path, config, prepared[dtype]

    return get


@pytest.fixture(scope="module")
def oracle(
    models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]], pip_oracle: PipOracle
) -> dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]]:
    """Case name → list of pip results, one per prompt row (all cases in one pip run per family)."""
    cases = {}
    for name, (version, V, _, _) in CASES.items():
        path = models(name)[0]
        prompts, steps = _tokens(V, seed=len(cases))
        rows = ORACLE_ROWS[name]
        cases[name] = [pip_oracle.Case(path, version, tuple(p), tuple(s)) for p, s in zip(prompts[:rows], steps[:rows])]
    flat = pip_oracle.run([c for group in cases.values() for c in group])
    out, i = {}, 0
    for name, group in cases.items():
        out[name] = (group, flat[i : i + len(group)])
        i += len(group)
    return out


def _run(
    weights: v7.V7Weights,
    config: RWKVConfig,
    prompts: list[list[int]],
    steps: list[list[int]],
    dtype: torch.dtype = torch.float32,
):
    """Batched prompt (all logits) then single steps: (prompt logits [B,T,V], step logits [B,S,V], states)."""
    state = State.zeros(config, len(prompts), backend="torch", dtype=dtype)
    prompt_logits, state = v7.forward(weights, config, torch.tensor(prompts), state, True)
    after_prompt = state
    out = []
    for j in range(len(steps[0])):
        logits, state = v7.forward(weights, config, torch.tensor([[row[j]] for row in steps]), state, False)
        out.append(logits)
    return prompt_logits, torch.stack(out, dim=1), after_prompt, state


def _max_state_diff(state: State, ref: dict, prefix: str, row: int) -> float:
    return max(float(np.abs(t[:, row].float().numpy() - ref[prefix + name]).max()) for name, t in state.tensors.items())


@pytest.mark.parametrize("name", list(CASES))
def test_batched_logits_and_states_match_pip_package(
    name: str,
    models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]],
    oracle: dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]],
) -> None:
    _, config, weights = models(name)
    group, refs = oracle[name]
    prompts = [list(c.prompt) for c in group]
    steps = [list(c.steps) for c in group]
    prompt_logits, step_logits, after_prompt, final = _run(weights, config, prompts, steps)
    assert prompt_logits.dtype == step_logits.dtype == torch.float32
    for row, ref in enumerate(refs):
        assert np.abs(prompt_logits[row].numpy() - ref["prompt_logits"]).max() <= FP32_TOL
        assert np.abs(step_logits[row].numpy() - ref["step_logits"]).max() <= FP32_TOL
        assert _max_state_diff(after_prompt, ref, "prompt_state_", row) <= FP32_TOL
        assert _max_state_diff(final, ref, "state_", row) <= FP32_TOL


@pytest.mark.parametrize("name", ["7-small", "7a-small"])
def test_batch_rows_equal_single_runs(name: str, models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]]) -> None:
    _, config, weights = models(name)
    prompts, steps = _tokens(config.vocab_size, seed=11)
    batch = _run(weights, config, prompts, steps)
    for row in range(N_ROWS):
        single = _run(weights, config, prompts[row : row + 1], steps[row : row + 1])
        for b, s in zip(batch[:2], single[:2]):
            torch.testing.assert_close(b[row : row + 1], s, rtol=0, atol=1e-5)
        for name_, t in batch[3].tensors.items():
            torch.testing.assert_close(t[:, row : row + 1], single[3].tensors[name_], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["7-small", "7a-small"])
@pytest.mark.parametrize("split", [1, 7, 33])
def test_sequence_mode_equals_split_calls(
    name: str, split: int, models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]]
) -> None:
    """forward(all) == forward(head) then forward(tail); 75 tokens span three chunks plus padding."""
    _, config, weights = models(name)
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, config.vocab_size, size=(2, 75)))
    zero = State.zeros(config, 2, backend="torch")
    whole, s_whole = v7.forward(weights, config, tokens, zero, True)
    head, s_head = v7.forward(weights, config, tokens[:, :-split], zero, True)
    tail, s_tail = v7.forward(weights, config, tokens[:, -split:], s_head, True)
    scale = float(whole.abs().max())
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, rtol=0, atol=SEQ_RTOL * scale)
    for key, t in s_whole.tensors.items():
        torch.testing.assert_close(s_tail.tensors[key], t, rtol=0, atol=SEQ_RTOL * max(1.0, float(t.abs().max())))


def test_long_input_runs_in_segments_with_the_same_result(
    models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config, weights = models("7a-small")
    tokens = torch.from_numpy(np.random.default_rng(5).integers(0, config.vocab_size, size=(2, 50)))
    zero = State.zeros(config, 2, backend="torch")
    whole, s_whole = v7.forward(weights, config, tokens, zero, True)
    monkeypatch.setattr(v7, "MAX_POSITIONS", 2 * 16)  # segments of 16 tokens per row
    parts, s_parts = v7.forward(weights, config, tokens, zero, True)
    last, _ = v7.forward(weights, config, tokens, zero, False)
    atol = SEQ_RTOL * float(whole.abs().max())
    torch.testing.assert_close(parts, whole, rtol=0, atol=atol)
    torch.testing.assert_close(last, whole[:, -1], rtol=0, atol=atol)
    for key, t in s_whole.tensors.items():
        torch.testing.assert_close(s_parts.tensors[key], t, rtol=0, atol=SEQ_RTOL * max(1.0, float(t.abs().max())))


def test_forward_leaves_input_state_unchanged(models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]]) -> None:
    _, config, weights = models("7-small")
    state = State.zeros(config, 2, backend="torch")
    _, state = v7.forward(weights, config, torch.tensor([[1, 2, 3], [4, 5, 6]]), state, False)
    before = state.copy()
    for tokens in ([[7], [8]], [[7, 9, 10], [8, 11, 12]]):
        v7.forward(weights, config, torch.tensor(tokens), state, False)
        for key, t in state.tensors.items():
            assert torch.equal(t, before.tensors[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["7-small", "7a-small"])
def test_low_precision_stays_close_to_pip_fp32(
    name: str,
    dtype: torch.dtype,
    models: Callable[..., tuple[Path, RWKVConfig, v7.V7Weights]],
    oracle: dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]],
) -> None:
    _, config, weights = models(name, dtype)
    group, refs = oracle[name]
    prompt_logits, step_logits, _, final = _run(
        weights, config, [list(c.prompt) for c in group], [list(c.steps) for c in group], dtype
    )
    assert final.tensors["att_x"].dtype == dtype and final.tensors["att_kv"].dtype == torch.float32
    for row, ref in enumerate(refs):
        assert np.abs(prompt_logits[row, -1].numpy() - ref["prompt_logits"][-1]).max() <= LOW_PRECISION_TOL[dtype]
        assert np.abs(step_logits[row].numpy() - ref["step_logits"]).max() <= LOW_PRECISION_TOL[dtype]


def _reference_wkv(
    S: torch.Tensor,
    log_w: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kk: torch.Tensor,
    a: torch.Tensor,
):
    """The reference model's per-token step (A7 step 8) in float64, looped over time."""
    S = S.double()
    ys = []
    for t in range(r.shape[1]):
        y, S = reference_v7.wkv_step(S, *(x[:, t].double() for x in (log_w.exp(), k, v, kk, a, r)))
        ys.append(y)
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("decay", ["strongest", "mixed", "weakest"])
def test_chunked_wkv_matches_token_loop(decay: str) -> None:
    """The chunked solve equals the recurrence at the decay bounds, over several chunks with padding."""
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 2 * wkv7.CHUNK_LEN + 9, 2, 16
    gate = {"strongest": torch.ones(B, T, H, N), "weakest": torch.zeros(B, T, H, N),
            "mixed": torch.rand(B, T, H, N, generator=g)}[decay]
    log_w = -v7.DECAY_SCALE * gate
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a = torch.rand(B, T, H, N, generator=g)
    S0 = torch.randn(B, H, N, N, generator=g)
    y, S_out = wkv7.wkv7_chunked(S0, log_w, r, k, v, kk, kk * a)
    y_ref, S_ref = _reference_wkv(S0, log_w, r, k, v, kk, a)
    scale = float(y_ref.abs().max())
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(S_out.double(), S_ref, rtol=0, atol=2e-5 * float(S_ref.abs().max()))
