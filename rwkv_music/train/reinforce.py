"""REINFORCE fine-tuning of an RWKV-7 with a token-level reward (see :mod:`rwkv_music.train.rewards`).

One step: sample ``batch_size`` continuations of a prompt from the current model (recurrent mode,
no gradient), score every generated token with the reward and minimise −Σ_t A_t·log π(x_t) over
generated tokens up to the first stop token.  Two ways to turn rewards into advantages A_t
(``credit``):

* ``"returns"`` (default): returns-to-go G_t = Σ_{s≥t} r_s minus a baseline (the batch mean of G
  at the same position).  Unbiased for any reward, but every later event adds noise to early tokens.
* ``"local"``: the reward *of the token itself* minus the batch mean over judged tokens; tokens
  with reward 0 are not pushed at all.  Use it with a reward that marks every token of the event it
  judges (``abc-bar-balance-local`` gives each token of a judged bar, barline included, that bar's
  ±1): a bar's length is decided by the notes in it, so this is much lower variance and leaves no
  gain in avoiding judged bars.

An optional KL penalty to the starting model (``kl_coef``) keeps the policy near the supervised one
(its loss, its diversity and its parse rate).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rwkv_music.io_utils import atomic_write_text
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.augment import CALLER_METRES, CALLER_UNITS
from rwkv_music.train.model_v7 import RWKV7
from rwkv_music.train.rewards import RewardFn, reward_by_name  # noqa: F401  (re-exported for the CLI)
from rwkv_music.train.trainer import _autocast

log = logging.getLogger(__name__)


CREDITS = ("returns", "local")  # how rewards become advantages (module docstring)
# What callers send (Composer / rwkv-music generate-abc): S:2 then L:, M:, K: (formats.abc.header).
CALLER_KEYS = ("D", "G", "A", "C", "F", "Bb", "Em", "Am", "Bm", "Dm", "Gm", "Ador", "Edor", "Dmix", "Amix")


def caller_prompt_texts(metres: tuple[str, ...] = CALLER_METRES, units: tuple[str, ...] = CALLER_UNITS,
                        keys: tuple[str, ...] = CALLER_KEYS, controls: str = "S:2") -> list[str]:
    """Every ``controls``/``L:``/``M:``/``K:`` header a caller may send, as prompt text after bos
    (one line each, newline-terminated, the order :func:`rwkv_music.formats.abc.header.prompt_text` uses)."""
    return [f"{controls}\nL:{u}\nM:{m}\nK:{k}\n" for m in metres for u in units for k in keys]


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
    credit: str = "returns"  # "returns" or "local" (see the module docstring)
    time_budget_min: float | None = None  # stop cleanly after this many minutes

    def __post_init__(self) -> None:
        if self.credit not in CREDITS:
            raise ValueError(f"credit must be one of {CREDITS}, not {self.credit!r}")



@torch.no_grad()
def sample_rollouts(model: RWKV7, prompt: list[int], batch_size: int, gen_len: int,
                    temperature: float, generator: torch.Generator,
                    stop_tokens: tuple[int, ...] = ()) -> torch.Tensor:
    """[B, ≤gen_len] sampled ids, one token at a time through the recurrent state.

    Stops early once every row has produced one of ``stop_tokens`` (what follows a stop token is
    masked out of the loss anyway), so the result may be shorter than ``gen_len``.
    """
    device = model.emb.weight.device
    x = torch.tensor([prompt] * batch_size, device=device)
    with _autocast(str(device)):
        logits, state = model(x)
    out = []
    stopped = torch.zeros(batch_size, dtype=torch.bool)
    for _ in range(gen_len):
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        tok = torch.multinomial(probs.cpu(), 1, generator=generator)
        out.append(tok.to(device))
        for s in stop_tokens:
            stopped |= tok[:, 0] == s
        if stop_tokens and bool(stopped.all()):
            break
        with _autocast(str(device)):  # one token: the plain recurrence is fewer kernels than a chunk
            logits, state = model(tok.to(device), state, chunked=False)
    return torch.cat(out, dim=1)


def _valid_mask(samples: torch.Tensor, stop_tokens: tuple[int, ...]) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.zeros_like(samples, dtype=torch.bool)
    for s in stop_tokens:
        is_stop |= samples == s
    after = torch.cumsum(is_stop.int(), dim=1) - is_stop.int()  # stops strictly before t
    return (after == 0).float()


def advantages(rewards: torch.Tensor, valid: torch.Tensor, credit: str = "returns") -> torch.Tensor:
    """[B, T] advantages from per-token rewards (``credit`` as in the module docstring)."""
    rewards = rewards * valid
    if credit == "local":
        judged = (rewards != 0).float()
        baseline = rewards.sum() / judged.sum().clamp_min(1.0)
        return (rewards - baseline) * judged
    returns = torch.flip(torch.cumsum(torch.flip(rewards, [1]), dim=1), [1])
    baseline = (returns * valid).sum(0, keepdim=True) / valid.sum(0, keepdim=True).clamp_min(1.0)
    return (returns - baseline) * valid


def reinforce_loss(model: RWKV7, prompt: list[int], samples: torch.Tensor, rewards: torch.Tensor,
                   valid: torch.Tensor, ref_model: RWKV7 | None = None, kl_coef: float = 0.0,
                   credit: str = "returns") -> torch.Tensor:
    """Policy-gradient loss −mean(A_t · log π(x_t)) (+ ``kl_coef`` · KL to ``ref_model``)."""
    B, T = samples.shape
    P = len(prompt)
    full = torch.cat([torch.tensor([prompt] * B, device=samples.device), samples], dim=1)
    with _autocast(str(samples.device)):
        logits, _ = model(full[:, :-1])
    logp_all = F.log_softmax(logits[:, P - 1:].float(), dim=-1)
    logp = logp_all.gather(-1, samples[..., None])[..., 0]
    adv = advantages(rewards, valid, credit)
    loss = -(adv.detach() * logp).sum() / valid.sum().clamp_min(1.0)
    if ref_model is not None and kl_coef > 0:
        with torch.no_grad():
            with _autocast(str(samples.device)):
                ref_logits, _ = ref_model(full[:, :-1])
            ref_logp = F.log_softmax(ref_logits[:, P - 1:].float(), dim=-1)
        kl = (logp_all.exp() * (logp_all - ref_logp)).sum(-1)
        loss = loss + kl_coef * (kl * valid).sum() / valid.sum().clamp_min(1.0)
    return loss


def reinforce_step(model: RWKV7, optimizer: torch.optim.Optimizer, prompt: list[int], reward_fn: RewardFn,
                   opts: ReinforceOptions, generator: torch.Generator, ref_model: RWKV7 | None = None) -> dict:
    """Sample, score and take one optimizer step; returns mean reward per rollout and the loss."""
    model.eval()  # no dropout anyway; keeps sampling and scoring identical
    samples = sample_rollouts(model, prompt, opts.batch_size, opts.gen_len, opts.temperature, generator,
                              opts.stop_tokens)
    valid = _valid_mask(samples, opts.stop_tokens)
    rows = []
    for row in samples.tolist():
        r = reward_fn(list(prompt) + row)[len(prompt):]
        rows.append(r)
    rewards = torch.tensor(rows, dtype=torch.float32, device=samples.device)
    loss = reinforce_loss(model, prompt, samples, rewards, valid, ref_model, opts.kl_coef, opts.credit)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
    optimizer.step()
    judged = (rewards * valid) != 0
    return {"reward": float((rewards * valid).sum(1).mean()), "loss": float(loss.detach()),
            "positive": float((rewards[judged] > 0).float().mean()) if bool(judged.any()) else float("nan"),
            "tokens": int(valid.sum())}


def reinforce_train(init: Path, out_dir: Path, reward_fn: RewardFn, prompt: list[int] | list[list[int]],
                    opts: ReinforceOptions, progress: Callable[[dict], None] | None = None, save_dtype: str = "fp32",
                    reward_name: str = "", save_every: int = 50) -> Path:
    """Load ``init``, run ``opts.steps`` REINFORCE steps, write ``out_dir/model.pth``.

    ``prompt`` is one prompt (a list of ids) or several (a list of lists): each step then draws
    one of them (seeded), and all rollouts of that step continue it — e.g. a set of ABC headers,
    so the policy learns balanced bars under the metres users ask for, not only its own choice.

    The model is also written every ``save_every`` steps (atomically), so an interrupted run keeps
    its progress.  ``out_dir/train_meta.json`` is the initial model's (when it sits beside
    ``init``: its data split and supervised options still describe the model) with a
    ``reinforce`` section added: the options, reward, steps done, mean reward of each step.
    """
    torch.manual_seed(opts.seed)
    out_dir = Path(out_dir)
    prompts = [list(prompt)] if prompt and isinstance(prompt[0], int) else [list(p) for p in prompt]
    if not prompts or not all(prompts):
        raise ValueError("REINFORCE needs at least one non-empty prompt")
    model = ckpt.model_from_checkpoint(init).to(opts.device)
    ref = copy.deepcopy(model).eval() if opts.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(opts.seed)
    init_meta = Path(init).parent / ckpt.META_FILE
    meta = json.loads(init_meta.read_text()) if init_meta.is_file() else {}
    if "reinforce" in meta:  # the init was itself a REINFORCE run: keep its record
        meta["reinforce_previous"] = meta.get("reinforce_previous", []) + [meta.pop("reinforce")]
    history: list[dict] = []
    t0 = time.monotonic()
    path = out_dir / ckpt.MODEL_FILE

    def save(step: int) -> None:
        ckpt.save_model(model, path, save_dtype)
        shown: object = prompts[0] if len(prompts) == 1 else prompts
        if len(prompts) > 16 and all(0 < t < 128 for p in prompts for t in p[1:]):  # many ABC headers: as text
            shown = {"count": len(prompts), "texts": ["".join(map(chr, p[1:])) for p in prompts]}
        meta["reinforce"] = {"init": str(init), "reward": reward_name, "prompt": shown,
                             "options": dataclasses.asdict(opts), "steps_done": step,
                             "elapsed_s": round(time.monotonic() - t0, 1), "history": history}
        atomic_write_text(out_dir / ckpt.META_FILE, json.dumps(meta, indent=2) + "\n", force=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    step = 0
    for step in range(1, opts.steps + 1):
        pick = int(torch.randint(len(prompts), (1,), generator=gen)) if len(prompts) > 1 else 0
        info = reinforce_step(model, optimizer, prompts[pick], reward_fn, opts, gen, ref)
        info["step"] = step
        info["elapsed_s"] = time.monotonic() - t0
        history.append({k: round(info[k], 4) for k in ("reward", "positive") if info[k] == info[k]})
        if progress:
            progress(info)
        if save_every and step % save_every == 0:
            save(step)
        if opts.time_budget_min is not None and info["elapsed_s"] > 60 * opts.time_budget_min:
            log.info("time budget reached after %d steps", step)
            break
    save(step)
    return path
