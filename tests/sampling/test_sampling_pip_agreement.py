"""Our processors against the reference ``rwkv`` pip package (docs/formats.md D1, D2) and ChatRWKV (D3).

* ``PIPELINE.sample_logits``: we capture the probability vector it hands to
  ``np.random.choice`` and compare the set of tokens with nonzero probability and the
  renormalised probabilities with ``softmax`` of our processed scores.  Equivalence holds for
  every temperature because we filter on the temperature-1 distribution and divide by T last,
  which is pip's ``p ** (1/T)`` (see rwkv_music/sampling/processors.py).
* ``PIPELINE.generate``: we capture the logits passed to the sampler on a scripted token
  sequence and compare them with our penalty + ban processors.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
rwkv_utils = pytest.importorskip("rwkv.utils")

from rwkv_music.sampling import (  # noqa: E402
    LogitsProcessorList,
    OccurrencePenalty,
    SamplingConfig,
    TokenBan,
    get_preset,
    pip_text_weights,
)


def pip_probs(monkeypatch: pytest.MonkeyPatch, logits: np.ndarray, **kw) -> np.ndarray:
    """The normalised probabilities pip's CPU sampler draws from."""
    seen = {}

    def fake_choice(a: int, p: np.ndarray):
        seen["p"] = np.array(p, dtype=np.float64)
        return 0

    monkeypatch.setattr(rwkv_utils.np.random, "choice", fake_choice)
    pipe = rwkv_utils.PIPELINE.__new__(rwkv_utils.PIPELINE)
    pipe.sample_logits(torch.from_numpy(logits.copy()), **kw)
    monkeypatch.undo()
    return seen["p"]


def our_probs(logits: np.ndarray, **kw) -> np.ndarray:
    procs = SamplingConfig(**kw).build_processors()
    procs.reset([[0]])
    out = procs(0, logits[None, :])[0].astype(np.float64)
    e = np.where(np.isfinite(out), np.exp(out - out[np.isfinite(out)].max()), 0.0)
    return e / e.sum()


CASES = [
    dict(temperature=1.0, top_p=0.8, top_k=8),  # ChatRWKV music
    dict(temperature=1.0, top_p=0.5, top_k=0),
    dict(temperature=0.7, top_p=0.9, top_k=0),
    dict(temperature=1.5, top_p=0.85, top_k=20),
    dict(temperature=1.0, top_p=0.3, top_k=100),
    dict(temperature=0.5, top_p=0.95, top_k=5),
    dict(temperature=2.0, top_p=0.0, top_k=0),  # top_p 0: greedy in both
    dict(temperature=0.0, top_p=0.9, top_k=0),  # T 0: greedy in both
]


@pytest.mark.parametrize("vocab, scale", [(256, 1.0), (256, 4.0), (20096, 3.0)])
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "T{temperature}-p{top_p}-k{top_k}".format(**kw))
def test_top_p_top_k_temperature_match_pip_sample_logits(
    monkeypatch: pytest.MonkeyPatch, vocab: int, scale: float, kw: dict[str, float]
) -> None:
    logits = (np.random.default_rng(vocab + int(scale)).standard_normal(vocab) * scale).astype(np.float32)
    ref = pip_probs(monkeypatch, logits, **kw)
    ours = our_probs(logits, **kw)
    np.testing.assert_array_equal(ours > 0, ref > 0)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-7)


def test_pip_top_p_one_is_not_off_but_ours_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/formats.md D1 quirk: pip's float32 cumulative sum often stays below 1.0, so top_p = 1 keeps
    # only the argmax; when it does reach 1.0 the tail is cut.  Either way it is not "off".
    logits = (np.random.default_rng(0).standard_normal(20096) * 3).astype(np.float32)
    ref = pip_probs(monkeypatch, logits, temperature=1.0, top_p=1.0, top_k=0)
    assert np.count_nonzero(ref) == 1
    tail = np.random.default_rng(2).standard_normal(20096).astype(np.float32)
    assert 1 < np.count_nonzero(pip_probs(monkeypatch, tail, temperature=1.0, top_p=1.0, top_k=0)) < 20096
    for x in (logits, tail):
        assert np.count_nonzero(our_probs(x, top_p=1.0)) == 20096


# -- PIPELINE.generate occurrence logic (D2) ------------------------------------------------
VOCAB = 24
TEXT = {0: "", 1: " ", 2: "1", 3: "23", 4: "a", 5: "b", 6: "\t", 7: "c", 8: "4"}  # others "w<id>"


class FakeTok:
    def encode(self, text: str) -> list[int]:
        return [4, 7]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(TEXT.get(i, f"w{i}") for i in ids)


class FakeModel:
    def __init__(self):
        self.table = np.random.default_rng(11).standard_normal((97, VOCAB)).astype(np.float32)

    def forward(self, tokens: list[int], state: int | None) -> tuple[torch.Tensor, int]:
        h = 0 if state is None else state
        for t in tokens:
            h = (h * 31 + t + 1) % 97
        return torch.from_numpy(self.table[h].copy()), h


def test_penalties_match_pip_generate_on_scripted_sequence() -> None:
    script = [4, 1, 4, 2, 3, 4, 9, 9, 1, 0, 6, 4, 12, 9, 3, 3, 4]
    args = rwkv_utils.PIPELINE_ARGS(temperature=1.0, top_p=0.85, alpha_frequency=0.3, alpha_presence=0.25,
                                    alpha_decay=0.99, token_ban=[5, 8], token_stop=[])
    pipe = rwkv_utils.PIPELINE.__new__(rwkv_utils.PIPELINE)
    pipe.model, pipe.tokenizer = FakeModel(), FakeTok()
    seen = []

    def scripted(logits: torch.Tensor, **kw):
        seen.append(logits.clone().numpy())
        return script[len(seen) - 1]

    pipe.sample_logits = scripted
    pipe.generate("ctx", token_count=len(script), args=args)
    assert len(seen) == len(script)

    weights = pip_text_weights(FakeTok().decode, VOCAB)
    assert set(weights) == {0, 1, 2, 3, 6, 8}  # "", " ", "1", "23", "\t", "4"
    procs = LogitsProcessorList([TokenBan([5, 8]), OccurrencePenalty(0.25, 0.3, 0.99, weights)])
    procs.reset([[4, 7]])
    model, state = FakeModel(), None
    raw, state = model.forward([4, 7], state)
    for step, tok in enumerate(script):
        ours = procs(step, raw.numpy()[None, :])[0]
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(seen[step]))
        fin = np.isfinite(ours)
        np.testing.assert_allclose(ours[fin], seen[step][fin], rtol=1e-6, atol=1e-6)
        procs.update([tok])
        raw, state = model.forward([tok], state)


def chatrwkv_reference_logits(raw_rows: Iterable[np.ndarray], script: Iterable[int]) -> list[np.ndarray]:
    """docs/formats.md D3 steps 1-3 written out directly (dict occurrence map, float64)."""
    occ, out = {}, []
    for i, (raw, tok) in enumerate(zip(raw_rows, script)):
        logit = raw.astype(np.float64).copy()
        for n in occ:
            logit[n] -= 0.5 * occ[n]
        logit[0] += (i - 2000) / 500
        logit[127] -= 1
        out.append(logit)
        for n in occ:
            occ[n] *= 0.997
        occ[tok] = occ.get(tok, 0.0) + (1.0 if tok >= 127 else 0.3)
    return out


def test_chatrwkv_midi_preset_matches_recipe_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    script = [int(x) for x in rng.choice([3, 10, 127, 13146, 13136, 571, 560, 1], size=40)]
    raw_rows = [(rng.standard_normal(20096) * 2).astype(np.float32) for _ in script]
    # make the repeated ids competitive so the penalties change the top-k set
    for r in raw_rows:
        r[[3, 10, 127, 13146, 13136, 571, 560]] += 6.0
    procs = get_preset("chatrwkv-midi").build_processors()
    procs.reset([[0]])
    for step, (raw, ref_logits, tok) in enumerate(zip(raw_rows, chatrwkv_reference_logits(raw_rows, script), script)):
        out = procs(step, raw[None, :])[0].astype(np.float64)
        ours = np.where(np.isfinite(out), np.exp(out - out[np.isfinite(out)].max()), 0.0)
        ours /= ours.sum()
        ref = pip_probs(monkeypatch, ref_logits.astype(np.float32), temperature=1.0, top_p=0.8, top_k=8)
        np.testing.assert_array_equal(ours > 0, ref > 0)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)
        procs.update([tok])
