"""Supervised (SFT) training loop for RWKV-7: AdamW, clipping, cosine LR, masked loss, resume.

Progress is measured as max(step / steps, elapsed / time budget), so a run cut short by its
time budget still ends its learning-rate schedule cleanly and writes a final checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rwkv_music.errors import RwkvMusicError
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.data import Document, TokenStream, split_documents
from rwkv_music.train.init_v7 import init_rwkv7
from rwkv_music.train.model_v7 import RWKV7, make_config

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


@dataclass(frozen=True)
class TrainOptions:
    """Every knob of one training run (the CLI maps its options 1:1 onto these)."""

    out: str
    mode: str = "abc"
    layers: int = 4
    width: int = 128
    head_size: int = 32
    ctx: int = 256
    steps: int = 1000
    lr: float = 1e-3
    lr_final: float = 1e-4
    warmup: int = 50
    batch_size: int = 8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.05
    device: str = "cpu"
    init: str | None = None
    time_budget_min: float | None = None
    eval_every: int = 200
    eval_tokens: int = 65536
    save_every: int = 200
    save_dtype: str = "fp32"
    threads: int | None = None
    tune_starts: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainResult:
    step: int
    train_loss: float
    val_bits_per_token: float | None
    tokens_seen: int
    elapsed_s: float
    model_path: Path


def build_model(opts: TrainOptions, vocab_size: int) -> RWKV7:
    """Fresh initialised model, or the weights of ``opts.init`` (fine-tuning)."""
    if opts.init:
        model = ckpt.model_from_checkpoint(Path(opts.init))
        if model.config.vocab_size < vocab_size:
            raise RwkvMusicError(f"{opts.init}: vocab {model.config.vocab_size} < data vocab {vocab_size}")
        return model
    cfg = make_config(opts.layers, opts.width, vocab_size, head_size=opts.head_size)
    return init_rwkv7(RWKV7(cfg), seed=opts.seed)


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over target positions whose mask is 1."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    m = mask.reshape(-1)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


@torch.no_grad()
def evaluate_bits(model: RWKV7, stream: TokenStream, ctx: int, batch_size: int, device: str,
                  max_tokens: int | None = None) -> float:
    """Validation loss in bits per (masked) token over contiguous windows of the stream."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for x, y, m in stream.eval_batches(batch_size, ctx, max_tokens):
        xt, yt, mt = (torch.from_numpy(a).to(device) for a in (x, y, m))
        with _autocast(device):
            logits, _ = model(xt)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), yt.reshape(-1), reduction="none")
        total += float((ce * mt.reshape(-1)).sum())
        count += float(mt.sum())
    model.train(was_training)
    return total / max(count, 1.0) / LN2


def _autocast(device: str):
    # bf16 on GPU (issue 8); CPU stays fp32 because CPU bf16 matmuls are slow and imprecise.
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_optimizer(model: RWKV7, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay only on 2-D projection matrices (not embeddings, norms, mixes)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim == 2 and not name.startswith("emb.") and "." in name and name.endswith("weight")
         else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8)


def lr_at(opts: TrainOptions, step: int, progress: float) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``lr_final`` over ``progress`` in [0, 1]."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    p = min(max(progress, 0.0), 1.0)
    return opts.lr_final + 0.5 * (opts.lr - opts.lr_final) * (1.0 + math.cos(math.pi * p))


def train(opts: TrainOptions, docs: list[Document], vocab_size: int, *,
          resume: bool = False, progress: Callable[[dict], None] | None = None,
          val_docs: list[Document] | None = None,
          augment: Callable[[list[Document]], list[Document]] | None = None,
          extra_meta: dict | None = None) -> TrainResult:
    """Train on ``docs`` and write ``model.pth`` + ``train_state.pt`` under ``opts.out``.

    ``val_docs`` given: ``docs`` are all training documents and these the held-out set (a
    prepared split); otherwise ``docs`` is split by ``opts.val_fraction``.  ``augment`` rewrites
    the training split only (held-out documents stay as written); ``extra_meta`` is recorded
    in ``train_meta.json`` (e.g. the augmentation recipe).
    """
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    device = opts.device
    if val_docs is None:
        train_docs, val_docs = split_documents(docs, opts.val_fraction, opts.seed)
    else:
        train_docs = list(docs)
    if augment is not None:
        train_docs = augment(train_docs)
    train_stream = TokenStream(train_docs)
    val_stream = TokenStream(val_docs) if val_docs else None
    max_id = int(train_stream.ids.max())
    if max_id >= vocab_size:
        raise RwkvMusicError(f"data contains token id {max_id} >= vocab size {vocab_size}")

    step, elapsed0, tokens = 0, 0.0, 0
    rng = np.random.default_rng(opts.seed)
    if resume:
        blob = ckpt.load_train_state(out)
        model = RWKV7(ckpt.config_from_state_dict(blob["model"]))
        model.load_state_dict(blob["model"])
        meta = blob["meta"]
        step, elapsed0, tokens = meta["step"], meta["elapsed_s"], meta["tokens_seen"]
        rng = np.random.default_rng([opts.seed, step])  # fresh, reproducible stream per resume point
    else:
        model = build_model(opts, vocab_size)
    model.to(device).train()
    optimizer = make_optimizer(model, opts.lr, opts.weight_decay)
    if resume:
        optimizer.load_state_dict(blob["optimizer"])
    log.info("model: %d layers, width %d, %d params; %d train / %d val documents, %d train tokens",
             model.config.n_layer, model.config.n_embd, model.param_count(), len(train_docs),
             len(val_docs), len(train_stream))

    budget_s = opts.time_budget_min * 60.0 if opts.time_budget_min else None
    t0 = time.monotonic()
    loss_ema, val_bits = None, None

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - t0

    def save() -> None:
        ckpt.save_model(model, out / ckpt.MODEL_FILE, opts.save_dtype)
        meta = {"step": step, "elapsed_s": elapsed(), "tokens_seen": tokens, "train_loss": loss_ema,
                "val_bits_per_token": val_bits, "options": opts.to_dict(),
                "config": dataclasses.replace(model.config, n_params=model.param_count()).to_dict(),
                "n_train_docs": len(train_docs),
                "n_val_docs": len(val_docs), "n_train_tokens": len(train_stream),
                "n_val_tokens": len(val_stream) if val_stream else 0, **(extra_meta or {})}
        ckpt.save_train_state(out, model, optimizer, meta)

    while step < opts.steps:
        if budget_s is not None and elapsed() >= budget_s:
            log.info("time budget reached at step %d", step)
            break
        progress_frac = max(step / opts.steps, elapsed() / budget_s if budget_s else 0.0)
        lr = lr_at(opts, step, progress_frac)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y, m = (torch.from_numpy(a).to(device) for a in train_stream.random_batch(
            rng, opts.batch_size, opts.ctx, opts.tune_starts))
        with _autocast(device):
            logits, _ = model(x)
        loss = masked_loss(logits, y, m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        step += 1
        tokens += x.numel()
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        info = {"step": step, "loss": lv, "loss_ema": loss_ema, "lr": lr, "elapsed_s": elapsed()}
        if val_stream is not None and opts.eval_every and step % opts.eval_every == 0:
            val_bits = evaluate_bits(model, val_stream, opts.ctx, opts.batch_size, device, opts.eval_tokens)
            info["val_bits"] = val_bits
        if progress:
            progress(info)
        if opts.save_every and step % opts.save_every == 0:
            save()
    if val_stream is not None:
        val_bits = evaluate_bits(model, val_stream, opts.ctx, opts.batch_size, device, opts.eval_tokens)
        if progress:
            progress({"step": step, "val_bits": val_bits, "final": True, "elapsed_s": elapsed()})
    save()
    return TrainResult(step, loss_ema if loss_ema is not None else float("nan"), val_bits, tokens,
                       elapsed(), out / ckpt.MODEL_FILE)
