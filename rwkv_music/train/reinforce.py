"""REINFORCE fine-tuning of an RWKV-7 with a token-level reward (see :mod:`rwkv_music.train.rewards`).

One step: sample ``batch_size`` continuations of a prompt from the current model (recurrent mode,
no gradient), score every generated token with the reward, turn rewards into returns-to-go
G_t = Σ_{s≥t} r_s, subtract a baseline (the batch mean of G at the same position) and minimise
−Σ_t (G_t − b_t)·log π(x_t) over generated tokens up to the first stop token.  An optional KL
penalty to the starting model (``kl_coef``) keeps the policy near the supervised one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.model_v7 import RWKV7
from rwkv_music.train.rewards import RewardFn, reward_by_name  # noqa: F401  (re-exported for the CLI)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReinforceOptions:
    steps: int = 50
    lr: float = 1e-4
    batch_size: int = 8
    gen_len: int = 128
    temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    grad_clip: float = 1.0
    kl_coef: float = 0.0
    stop_tokens: tuple[int, ...] = (0, 3)  # MIDI <pad> separator, ABC eos


@torch.no_grad()
def sample_rollouts(model: RWKV7, prompt: list[int], batch_size: int, gen_len: int,
                    temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[B, gen_len] sampled ids, one token at a time through the recurrent state."""
    device = model.emb.weight.device
    x = torch.tensor([prompt] * batch_size, device=device)
    logits, state = model(x)
    out = []
    for _ in range(gen_len):
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        out.append(tok)
        logits, state = model(tok, state)
    return torch.cat(out, dim=1)


def _valid_mask(samples: torch.Tensor, stop_tokens: tuple[int, ...]) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.zeros_like(samples, dtype=torch.bool)
    for s in stop_tokens:
        is_stop |= samples == s
    after = torch.cumsum(is_stop.int(), dim=1) - is_stop.int()  # stops strictly before t
    return (after == 0).float()


def reinforce_loss(model: RWKV7, prompt: list[int], samples: torch.Tensor, rewards: torch.Tensor,
                   valid: torch.Tensor, ref_model: RWKV7 | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """Policy-gradient loss with returns-to-go and a per-position batch-mean baseline."""
    B, T = samples.shape
    P = len(prompt)
    full = torch.cat([torch.tensor([prompt] * B, device=samples.device), samples], dim=1)
    logits, _ = model(full[:, :-1])
    logp_all = F.log_softmax(logits[:, P - 1:].float(), dim=-1)
    logp = logp_all.gather(-1, samples[..., None])[..., 0]
    rewards = rewards * valid
    returns = torch.flip(torch.cumsum(torch.flip(rewards, [1]), dim=1), [1])
    baseline = (returns * valid).sum(0, keepdim=True) / valid.sum(0, keepdim=True).clamp_min(1.0)
    adv = (returns - baseline) * valid
    loss = -(adv.detach() * logp).sum() / valid.sum().clamp_min(1.0)
    if ref_model is not None and kl_coef > 0:
        with torch.no_grad():
            ref_logits, _ = ref_model(full[:, :-1])
            ref_logp = F.log_softmax(ref_logits[:, P - 1:].float(), dim=-1)
        kl = (logp_all.exp() * (logp_all - ref_logp)).sum(-1)
        loss = loss + kl_coef * (kl * valid).sum() / valid.sum().clamp_min(1.0)
    return loss


def reinforce_step(model: RWKV7, optimizer: torch.optim.Optimizer, prompt: list[int], reward_fn: RewardFn,
                   opts: ReinforceOptions, generator: torch.Generator, ref_model: RWKV7 | None = None) -> dict:
    """Sample, score and take one optimizer step; returns mean reward per rollout and the loss."""
    model.eval()  # no dropout anyway; keeps sampling and scoring identical
    samples = sample_rollouts(model, prompt, opts.batch_size, opts.gen_len, opts.temperature, generator)
    valid = _valid_mask(samples, opts.stop_tokens)
    rows = []
    for row in samples.tolist():
        r = reward_fn(list(prompt) + row)[len(prompt):]
        rows.append(r)
    rewards = torch.tensor(rows, dtype=torch.float32, device=samples.device)
    loss = reinforce_loss(model, prompt, samples, rewards, valid, ref_model, opts.kl_coef)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
    optimizer.step()
    return {"reward": float((rewards * valid).sum(1).mean()), "loss": float(loss.detach())}


def reinforce_train(init: Path, out_dir: Path, reward_fn: RewardFn, prompt: list[int], opts: ReinforceOptions,
                    progress: Callable[[dict], None] | None = None, save_dtype: str = "fp32") -> Path:
    """Load ``init``, run ``opts.steps`` REINFORCE steps, write ``out_dir/model.pth``."""
    torch.manual_seed(opts.seed)
    model = ckpt.model_from_checkpoint(init).to(opts.device)
    ref = copy.deepcopy(model).eval() if opts.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(opts.seed)
    for step in range(1, opts.steps + 1):
        info = reinforce_step(model, optimizer, prompt, reward_fn, opts, gen, ref)
        info["step"] = step
        if progress:
            progress(info)
    return ckpt.save_model(model, Path(out_dir) / ckpt.MODEL_FILE, save_dtype)
