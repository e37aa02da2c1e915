"""Training smoke tests: tiny RWKV-7, a few steps, checkpoint read back by the `rwkv` pip package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from rwkv_music.model.wkv7 import wkv7_chunked
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.data import abc_document
from rwkv_music.train.init_v7 import init_rwkv7
from rwkv_music.train.model_v7 import RWKV7, make_config, wkv7_token_loop
from rwkv_music.train.reinforce import ReinforceOptions, reinforce_step
from rwkv_music.train.rewards import token_reward
from rwkv_music.train.trainer import TrainOptions, train

TUNES = [
    "X:1\nT:A\nM:6/8\nL:1/8\nK:G\n|:GAB cBA|BGE EDE|GAB cBA|BGE E3:|\n|:gfe dBG|ABc d3|gfe dBG|AGF G3:|\n",
    "X:2\nT:B\nM:2/4\nL:1/8\nK:D\nA|dA FA|dA FA|Bc dB|AF ED|\ndA FA|dA FA|Bc dB|A2 D:|\n",
    "X:3\nT:C\nM:3/4\nL:1/8\nK:C\nE2 G2 c2|B2 A2 G2|F2 A2 c2|B4 z2|\ne2 d2 c2|B2 A2 G2|F2 E2 D2|C6|]\n",
] * 4


def _docs():
    return [abc_document(t) for t in TUNES]


def _perturbed_model(seed: int = 0) -> RWKV7:
    """A random v7 whose every parameter is non-trivial (the real init zeroes output projections)."""
    model = init_rwkv7(RWKV7(make_config(2, 64, 128, head_size=32)), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("w0"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_chunked_wkv_matches_sequential_recurrence() -> None:
    g = torch.Generator().manual_seed(1)
    B, T, H, N = 2, 37, 2, 8
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a = torch.rand(B, T, H, N, generator=g)
    log_w = -0.6065 * torch.rand(B, T, H, N, generator=g)
    s0 = torch.randn(B, H, N, N, generator=g)
    y1, s1 = wkv7_token_loop(s0, log_w, r, k, v, kk, a)
    y2, s2 = wkv7_chunked(s0, log_w, r, k, v, kk, kk * a, chunk=16)
    assert torch.allclose(y1, y2, atol=1e-4, rtol=1e-4)
    assert torch.allclose(s1, s2, atol=1e-4, rtol=1e-4)


def test_sequence_split_with_state_equals_one_call() -> None:
    model = _perturbed_model()
    idx = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(idx)
        a, st = model(idx[:, :23])
        b, _ = model(idx[:, 23:], st)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-4)


def test_saved_checkpoint_loads_in_rwkv_pip_with_same_logits(tmp_path: Path) -> None:
    model = _perturbed_model()
    ckpt.save_model(model, tmp_path / "m.pth")
    tokens = [2, 83, 58, 50, 10, 76, 58, 49, 47, 56, 10, 75, 58, 71]
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0].numpy()
    np.save(tmp_path / "ours.npy", ours)
    # pip picks its v7 class at import time from RWKV_V7_ON (docs/formats.md A4): run it in a fresh process.
    script = textwrap.dedent(f"""
        import os, json, numpy as np, torch
        os.environ["RWKV_V7_ON"] = "1"
        from rwkv.model import RWKV
        m = RWKV(model={str(tmp_path / "m")!r}, strategy="cpu fp32")
        out, _ = m.forward({tokens!r}, None, full_output=True)
        ref = np.load({str(tmp_path / "ours.npy")!r})
        print(json.dumps({{"diff": float(np.abs(out.float().numpy() - ref).max())}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    diff = json.loads(res.stdout.strip().splitlines()[-1])["diff"]
    assert diff <= 1e-4


def test_saved_checkpoint_has_blinkdl_v7_layout(tmp_path: Path) -> None:
    model = _perturbed_model()
    sd = torch.load(ckpt.save_model(model, tmp_path / "m.pth", "fp16"), map_location="cpu", weights_only=True)
    assert sd["blocks.0.ln0.weight"].shape == (64,)
    assert sd["blocks.1.att.x_r"].shape == (1, 1, 64)
    assert sd["blocks.1.att.r_k"].shape == (2, 32)
    assert sd["blocks.0.ffn.key.weight"].shape == (256, 64)  # [out, in]
    assert sd["head.weight"].shape == (128, 64)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert not any("receptance" in k for k in sd if ".ffn." in k)


def test_training_loss_decreases_and_resume_continues(tmp_path: Path) -> None:
    opts = TrainOptions(out=str(tmp_path / "run"), layers=2, width=64, head_size=32, ctx=64, steps=40,
                        lr=3e-3, warmup=5, batch_size=4, val_fraction=0.2, eval_every=0, save_every=0)
    losses = []
    result = train(opts, _docs(), 128, progress=lambda i: losses.append(i["loss"]) if "loss" in i else None)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert result.val_bits_per_token is not None and result.val_bits_per_token < 7.0
    more = TrainOptions(**{**opts.to_dict(), "steps": 43})
    again = train(more, _docs(), 128, resume=True)
    assert again.step == 43
    meta = json.loads((tmp_path / "run" / ckpt.META_FILE).read_text())
    assert meta["step"] == 43 and meta["n_val_docs"] >= 1


def test_fine_tune_from_checkpoint_keeps_its_shape(tmp_path: Path) -> None:
    base = _perturbed_model()
    src = ckpt.save_model(base, tmp_path / "base.pth")
    opts = TrainOptions(out=str(tmp_path / "ft"), init=str(src), layers=6, width=256, ctx=32, steps=2,
                        batch_size=2, val_fraction=0.0, eval_every=0, save_every=0)
    result = train(opts, _docs(), 128)
    tuned = ckpt.model_from_checkpoint(result.model_path)
    assert tuned.config.n_layer == 2 and tuned.config.n_embd == 64


def test_reinforce_raises_probability_of_rewarded_token() -> None:
    torch.manual_seed(0)
    model = init_rwkv7(RWKV7(make_config(2, 64, 128, head_size=32)), seed=3)
    target, prompt = 65, [2]

    def p_target() -> float:
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt]))
        return float(torch.softmax(logits[0, -1], -1)[target])

    before = p_target()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    ropts = ReinforceOptions(batch_size=16, gen_len=6, stop_tokens=())
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        reinforce_step(model, opt, prompt, token_reward(target), ropts, gen)
    assert p_target() > 2 * before



def test_saved_checkpoint_loads_in_project_loader_with_same_logits(tmp_path: Path) -> None:
    import rwkv_music

    model = _perturbed_model(seed=1)
    path = ckpt.save_model(model, tmp_path / "m.pth")
    tokens = [2, 83, 58, 50, 10, 76, 58]
    backend = rwkv_music.load_model(path)
    logits, _ = backend.forward([tokens], all_logits=True)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0]
    assert torch.as_tensor(logits).shape == ours.shape
    assert float((torch.as_tensor(logits) - ours).abs().max()) <= 1e-4
