"""RWKV-6.0 math (rwkv_music.model.v6) against the `rwkv` pip package and against itself.

Random 2-layer checkpoints in the BlinkDL layout.  The pip package is the oracle for fp32
logits and states (including a state-tuned checkpoint with ``time_state``); batching and
sequence/step equivalence are checked against our own runs; the chunked WKV is checked against
a float64 per-token loop of docs/formats.md A7 (v6) at decays down to 1e-9.

Low-precision tolerance: max |logit difference| to the pip fp32 logits over a 40–64-token
prompt and 16 steps, logit scale 5–8.  Measured (width 64, and width 128 / vocab 20096):
bf16 0.05–0.12 (pip's own bf16 run: 0.05–0.13), fp16 0.007–0.014 (pip's fp16: 0.008–0.014).
The tests assert 0.2 and 0.04 on the width-64 model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
import torch

from rwkv_music.model import v6
from rwkv_music.model.detect import config_from_state_dict
from rwkv_music.model.factory import random_checkpoint
from rwkv_music.model.reference import v5 as reference_v5
from rwkv_music.model.state import State

if TYPE_CHECKING:
    from conftest import OracleCase, PipOracle

    from rwkv_music.model.config import RWKVConfig

FP32_TOL = 1e-4
LOW_PRECISION_TOL = {torch.bfloat16: 0.2, torch.float16: 0.04}
SEQ_RTOL = 1e-5  # sequence mode vs split calls, relative to the logit scale
CASES = {"small": (128, 64, 32), "midi": (20096, 128, 64), "time_state": (128, 64, 32)}
ORACLE_ROWS = {"small": 4, "midi": 2, "time_state": 2}  # prompts per case sent to the pip package
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
    return rng.integers(0, V, size=(N_ROWS, PROMPT_LEN)).tolist(), rng.integers(0, V, size=(N_ROWS, N_STEPS)).tolist()


@pytest.fixture(scope="module")
def models(
    checkpoint_path: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]]:
    """Case name → (path, config, weights) per dtype, built lazily."""
    cache: dict[str, tuple] = {}

    def get(name: str, dtype: torch.dtype = torch.float32):
        if name not in cache:
            V, C, N = CASES[name]
            if name == "time_state":  # state tuning: S[h, value, key] per layer (A3, A8)
                sd = random_checkpoint("6", vocab_size=V, n_embd=C, head_size=N, seed=4)
                g = torch.Generator().manual_seed(5)
                for i in range(2):
                    sd[f"blocks.{i}.att.time_state"] = torch.randn(C // N, N, N, generator=g)
                path = tmp_path_factory.mktemp("v6-time-state") / "tuned.pth"
                torch.save(sd, path)
            else:
                path = checkpoint_path("6", vocab_size=V, n_embd=C, head_size=N)
                sd = torch.load(path, map_location="cpu", weights_only=True)
            cache[name] = (path, config_from_state_dict(sd), sd, {})
        path, config, sd, prepared = cache[name]
        if dtype not in prepared:
            prepared[dtype] = v6.prepare(sd, config, dtype, "cpu")
        return path, config, prepared[dtype]

    return get


@pytest.fixture(scope="module")
def oracle(
    models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]], pip_oracle: PipOracle
) -> dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]]:
    """Case name → (oracle cases, pip results), one per prompt row, all in one pip run."""
    cases = {}
    for n, (name, (V, _, _)) in enumerate(CASES.items()):
        prompts, steps = _tokens(V, seed=n)
        rows = ORACLE_ROWS[name]
        path = models(name)[0]
        cases[name] = [pip_oracle.Case(path, "6", tuple(p), tuple(s)) for p, s in zip(prompts[:rows], steps[:rows])]
    flat = pip_oracle.run([c for group in cases.values() for c in group])
    out, i = {}, 0
    for name, group in cases.items():
        out[name] = (group, flat[i : i + len(group)])
        i += len(group)
    return out


def _start(weights: v6.V6Weights, config: RWKVConfig, rows: int, dtype: torch.dtype = torch.float32) -> State:
    state = v6.initial_state(weights, config, rows, "cpu", dtype)
    return state if state is not None else State.zeros(config, rows, backend="torch", dtype=dtype)


def _run(
    weights: v6.V6Weights,
    config: RWKVConfig,
    prompts: list[list[int]],
    steps: list[list[int]],
    dtype: torch.dtype = torch.float32,
):
    """Batched prompt (all logits) then single steps: (prompt logits [B,T,V], step logits [B,S,V], states)."""
    start = _start(weights, config, len(prompts), dtype)
    prompt_logits, state = v6.forward(weights, config, torch.tensor(prompts), start, True)
    after_prompt = state
    out = []
    for j in range(len(steps[0])):
        logits, state = v6.forward(weights, config, torch.tensor([[row[j]] for row in steps]), state, False)
        out.append(logits)
    return prompt_logits, torch.stack(out, dim=1), after_prompt, state


def _max_state_diff(state: State, ref: dict, prefix: str, row: int) -> float:
    return max(float(np.abs(t[:, row].float().numpy() - ref[prefix + name]).max()) for name, t in state.tensors.items())


@pytest.mark.parametrize("name", list(CASES))
def test_batched_logits_and_states_match_pip_package(
    name: str,
    models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]],
    oracle: dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]],
) -> None:
    _, config, weights = models(name)
    group, refs = oracle[name]
    prompt_logits, step_logits, after_prompt, final = _run(
        weights, config, [list(c.prompt) for c in group], [list(c.steps) for c in group]
    )
    assert prompt_logits.dtype == step_logits.dtype == torch.float32
    for row, ref in enumerate(refs):
        assert np.abs(prompt_logits[row].numpy() - ref["prompt_logits"]).max() <= FP32_TOL
        assert np.abs(step_logits[row].numpy() - ref["step_logits"]).max() <= FP32_TOL
        assert _max_state_diff(after_prompt, ref, "prompt_state_", row) <= FP32_TOL
        assert _max_state_diff(final, ref, "state_", row) <= FP32_TOL


def test_initial_state_is_transposed_time_state(models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]]) -> None:
    _, config, weights = models("time_state")
    state = v6.initial_state(weights, config, 3, "cpu", torch.float32)
    sd_state = torch.load(models("time_state")[0], weights_only=True)["blocks.1.att.time_state"]
    assert state.batch_size == 3 and state.tensors["att_kv"].dtype == torch.float32
    assert torch.equal(state.tensors["att_kv"][1, 2], sd_state.transpose(-1, -2))
    assert not state.tensors["att_x"].any() and not state.tensors["ffn_x"].any()
    assert v6.initial_state(models("small")[2], config, 1, "cpu", torch.float32) is None


def test_batch_rows_equal_single_runs(models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]]) -> None:
    _, config, weights = models("small")
    prompts, steps = _tokens(config.vocab_size, seed=11)
    batch = _run(weights, config, prompts, steps)
    for row in range(N_ROWS):
        single = _run(weights, config, prompts[row : row + 1], steps[row : row + 1])
        for b, s in zip(batch[:2], single[:2]):
            torch.testing.assert_close(b[row : row + 1], s, rtol=0, atol=1e-5)
        for key, t in batch[3].tensors.items():
            torch.testing.assert_close(t[:, row : row + 1], single[3].tensors[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("split", [1, 7, 20])
def test_sequence_mode_equals_split_calls(
    split: int, models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]]
) -> None:
    """forward(all) == forward(head) then forward(tail); 45 tokens span three chunks plus padding."""
    _, config, weights = models("small")
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, config.vocab_size, size=(2, 45)))
    zero = State.zeros(config, 2, backend="torch")
    whole, s_whole = v6.forward(weights, config, tokens, zero, True)
    head, s_head = v6.forward(weights, config, tokens[:, :-split], zero, True)
    tail, s_tail = v6.forward(weights, config, tokens[:, -split:], s_head, True)
    scale = float(whole.abs().max())
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, rtol=0, atol=SEQ_RTOL * scale)
    for key, t in s_whole.tensors.items():
        torch.testing.assert_close(s_tail.tensors[key], t, rtol=0, atol=SEQ_RTOL * max(1.0, float(t.abs().max())))


def test_long_input_runs_in_segments_with_the_same_result(
    models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config, weights = models("small")
    tokens = torch.from_numpy(np.random.default_rng(5).integers(0, config.vocab_size, size=(2, 50)))
    zero = State.zeros(config, 2, backend="torch")
    whole, s_whole = v6.forward(weights, config, tokens, zero, True)
    monkeypatch.setattr(v6, "MAX_POSITIONS", 2 * 16)  # segments of 16 tokens per row
    parts, s_parts = v6.forward(weights, config, tokens, zero, True)
    last, _ = v6.forward(weights, config, tokens, zero, False)
    atol = SEQ_RTOL * float(whole.abs().max())
    torch.testing.assert_close(parts, whole, rtol=0, atol=atol)
    torch.testing.assert_close(last, whole[:, -1], rtol=0, atol=atol)
    for key, t in s_whole.tensors.items():
        torch.testing.assert_close(s_parts.tensors[key], t, rtol=0, atol=SEQ_RTOL * max(1.0, float(t.abs().max())))


def test_forward_leaves_input_state_unchanged(models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]]) -> None:
    _, config, weights = models("time_state")
    state = _start(weights, config, 2)
    before = state.copy()
    for tokens in ([[7], [8]], [[7, 9, 10], [8, 11, 12]]):
        v6.forward(weights, config, torch.tensor(tokens), state, False)
        for key, t in state.tensors.items():
            assert torch.equal(t, before.tensors[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_stays_close_to_pip_fp32(
    dtype: torch.dtype,
    models: Callable[..., tuple[Path, RWKVConfig, v6.V6Weights]],
    oracle: dict[str, tuple[list[OracleCase], list[dict[str, np.ndarray]]]],
) -> None:
    _, config, weights = models("small", dtype)
    group, refs = oracle["small"]
    prompt_logits, step_logits, _, final = _run(
        weights, config, [list(c.prompt) for c in group], [list(c.steps) for c in group], dtype
    )
    assert final.tensors["att_x"].dtype == dtype and final.tensors["att_kv"].dtype == torch.float32
    for row, ref in enumerate(refs):
        assert np.abs(prompt_logits[row, -1].numpy() - ref["prompt_logits"][-1]).max() <= LOW_PRECISION_TOL[dtype]
        assert np.abs(step_logits[row].numpy() - ref["step_logits"]).max() <= LOW_PRECISION_TOL[dtype]


def _reference_wkv(
    S: torch.Tensor, u: torch.Tensor, log_w: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor
):
    """The reference model's v5.2/v6 per-token step in float64, looped over time (S[key, value])."""
    S = S.double()
    ys = []
    for t in range(r.shape[1]):
        w, rt, kt, vt = (x[:, t].double() for x in (log_w.exp(), r, k, v))
        y, S = reference_v5.wkv(S, w, u.double(), rt, kt, vt)
        ys.append(y)
    return torch.stack(ys, 1), S


def test_chunked_wkv_matches_token_loop_with_tiny_decays() -> None:
    """Decays from 1e-9 to 0.9999 (exp(-exp(x)), x in [-9, 3]) over several chunks with padding."""
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 2 * v6.CHUNK_LEN + 5, 2, 16
    log_w = -torch.exp(torch.rand(B, T, H, N, generator=g) * 12 - 9)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    u = torch.randn(H, N, generator=g)
    S0 = torch.randn(B, H, N, N, generator=g)
    S_out = torch.empty_like(S0)
    y = v6._wkv_chunked(S0, S_out, u, log_w, r, k, v)
    y_ref, S_ref = _reference_wkv(S0, u, log_w, r, k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=1e-5 * float(y_ref.abs().max()))
    torch.testing.assert_close(S_out.double(), S_ref, rtol=0, atol=1e-5 * float(S_ref.abs().max()))
