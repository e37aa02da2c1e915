"""``rwkv-music train``: the click command (registered by the CLI as a subcommand).

Examples::

    rwkv-music train --mode abc --layers 4 --width 128 --ctx 256 --steps 2000 --out runs/abc
    rwkv-music train --mode abc --data my_tunes/ --init runs/abc/model.pth --steps 200 --out runs/ft
    rwkv-music train --mode midi --data midi_folder/ --width 128 --steps 1000 --out runs/midi
    rwkv-music train --resume --out runs/abc --steps 4000
    rwkv-music train --objective reinforce --reward abc-bar-balance --init runs/abc/model.pth --out runs/rl
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from rwkv_music.cli.common import CONTEXT, DeviceType, boundary, collect
from rwkv_music.errors import RwkvMusicError

log = logging.getLogger(__name__)


def _bits(nats: float) -> float:
    """Cross-entropy in bits per token (the trainer's loss is in nats; validation is reported in bits)."""
    return nats / math.log(2)


def _progress_printer(every: int) -> Callable[[dict], None]:
    def show(info: dict) -> None:
        if info.get("final"):
            click.echo(f"final step {info['step']}: val {info['val_bits']:.4f} bits/token", err=True)
        elif "reward" in info:
            click.echo(f"step {info['step']}: reward {info['reward']:.4f} judged positive "
                       f"{info.get('positive', float('nan')):.3f} loss {info['loss']:.4f} "
                       f"{info.get('elapsed_s', 0):.0f}s", err=True)
        elif info["step"] % every == 0 or "val_bits" in info:
            extra = f" val {info['val_bits']:.4f} bits/token" if "val_bits" in info else ""
            click.echo(f"step {info['step']}: loss {_bits(info['loss']):.4f} bits/token "
                       f"(ema {_bits(info['loss_ema']):.4f}) lr {info['lr']:.2e} {info['elapsed_s']:.0f}s{extra}",
                       err=True)
    return show


TRAIN_OPTION_NAMES = ("out", "mode", "layers", "width", "head_size", "ctx", "steps", "lr", "lr_final", "batch_size",
                      "seed", "val_fraction", "device", "init", "time_budget_min", "eval_every", "save_dtype",
                      "threads", "tune_starts")


def _run_seed(seed: int | None, out: str, resume: bool) -> int:
    """``--seed``; when omitted, the run's own seed for ``--resume`` (it fixes the data split), else a new one
    (printed, and recorded in train_meta.json)."""
    import json

    from rwkv_music.compose.options import new_base_seed
    from rwkv_music.train.checkpoint import META_FILE

    if seed is not None:
        return seed
    if resume:
        try:
            recorded = json.loads((Path(out) / META_FILE).read_text(encoding="utf-8"))["options"]["seed"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if isinstance(recorded, int):
            return recorded
    seed = new_base_seed()
    click.echo(f"seed {seed}", err=True)
    return seed


def _train_options(**values: Any) -> Any:
    """The :class:`~rwkv_music.train.trainer.TrainOptions` of the command line (paths as strings)."""
    from rwkv_music.train.trainer import TrainOptions

    values["out"] = str(values["out"])
    values["init"] = str(values["init"]) if values["init"] else None
    return TrainOptions(**values)


@dataclass(frozen=True)
class ReinforceFlags:
    """The REINFORCE options of ``train --objective reinforce``."""

    reward: str
    gen_len: int
    prompt: tuple[str, ...]
    credit: str
    kl_coef: float
    temperature: float
    caller_prompts: bool

    def prompt_texts(self) -> tuple[str, ...]:
        """The ``--prompt`` texts, plus every caller header with ``--caller-prompts``."""
        if not self.caller_prompts:
            return tuple(self.prompt)
        from rwkv_music.train.reinforce import caller_prompt_texts

        return tuple(self.prompt) + tuple(caller_prompt_texts())


def _init_checkpoint(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """``--init``: a checkpoint file, or a shipped model's name (rwkv_music.assets.resolve_model)."""
    from rwkv_music.assets import resolve_model

    if value is None:
        return None
    path = resolve_model(value)
    if not path.is_file():
        raise click.BadParameter(f"{value}: no such checkpoint (shipped models: abc-default, midi-default)")
    return path


@click.command("train", context_settings=CONTEXT)
@boundary
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="ABC files/folders (abc) or .mid files/folders (midi); default: music21's non-Essen corpus.")
@click.option("--mode", type=click.Choice(["abc", "midi"]), default="abc", show_default=True,
              help="What the model reads and writes: ABC tunes (128 byte ids) or MIDI (20,096 ids).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder (model.pth, train_state.pt).")
@click.option("--layers", default=4, show_default=True, help="Number of layers (fresh models).")
@click.option("--width", default=128, show_default=True, help="Embedding width C (fresh models).")
@click.option("--head-size", default=32, show_default=True, help="Head size N (fresh models).")
@click.option("--ctx", default=256, show_default=True, help="Training context length in tokens.")
@click.option("--steps", default=1000, show_default=True, help="Optimizer steps (total, counting resumed ones).")
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--lr-final", default=1e-4, show_default=True, help="Learning rate at the end of the cosine.")
@click.option("--batch-size", default=8, show_default=True,
              help="Sequences per optimizer step (REINFORCE: rollouts per step).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seeds init, data split and batches (random if omitted, printed; --resume reuses the run's).")
@click.option("--val-fraction", default=0.05, show_default=True, help="Held-out fraction of documents.")
@click.option("--device", type=DeviceType(("cpu", "cuda")), default="cpu", show_default=True,
              help="cpu, cuda, cuda:1 ... (bf16 autocast on CUDA).")
@click.option("--init", "init", type=click.Path(path_type=Path), default=None, callback=_init_checkpoint,
              help="Fine-tune this RWKV-7 checkpoint (a file, or abc-default / midi-default) instead of starting "
                   "from scratch.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its train_state.pt.")
@click.option("--time-budget-min", type=float, default=None, help="Stop cleanly after this many minutes.")
@click.option("--eval-every", default=200, show_default=True, help="Validation every N steps (0: only at the end).")
@click.option("--save-dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Weight dtype of the written model.pth (training itself runs in fp32).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--tune-starts", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of training windows that begin at a tune's (document's) first token.")
@click.option("--no-control-codes", is_flag=True, help="ABC: do not prepend S:/B:/E: control codes.")
@click.option("--mask-control", is_flag=True, help="ABC: do not train on the control-code bytes.")
@click.option("--max-pieces", type=int, default=None, help="MIDI: use at most this many music21 pieces when rendering.")
@click.option("--objective", type=click.Choice(["sft", "reinforce"]), default="sft", show_default=True,
              help="sft: next-token training on --data; reinforce: improve --init with a --reward.")
@click.option("--augment", default=0, show_default=True,
              help="Rewritten copies per training document: ABC keeps strictly balanced tunes only and adds "
                   "caller-style headers, L:1/16 and re-keyed copies; MIDI adds pitch shifts within ±5 semitones.")
@click.option("--reward", default="abc-bar-balance", show_default=True,
              help="REINFORCE reward: abc-strict, abc-bar-balance, abc-bar-balance-local (use with --credit local), "
                   "midi-stuck-notes, token:<id>[:<value>] or abc-strict-rhythm[:<penalty>] (abc-strict, less "
                   "for a tune whose notes all have one length).")
@click.option("--caller-prompts", is_flag=True,
              help="REINFORCE (ABC): draw each step's prompt from every caller header "
                   "(S:2, L:1/8|1/16, common M: and K:).")
@click.option("--gen-len", default=128, show_default=True, help="REINFORCE: sampled tokens per rollout.")
@click.option("--prompt", "prompt", multiple=True,
              help="REINFORCE: rollout prompt; ABC text (after the bos byte, backslash escapes such as \\n "
                   "understood) or space-separated MIDI tokens. Repeat it to draw one per step. "
                   "Default: just bos (ABC) / <pad> (MIDI).")
@click.option("--credit", type=click.Choice(["returns", "local"]), default="returns", show_default=True,
              help="REINFORCE: returns-to-go, or each token's own reward (use with abc-bar-balance-local).")
@click.option("--kl-coef", default=0.0, show_default=True, help="REINFORCE: KL penalty to the --init model.")
@click.option("--temperature", default=1.0, show_default=True, help="REINFORCE: rollout temperature.")
@collect("opts", _train_options, TRAIN_OPTION_NAMES)
@collect("rl", ReinforceFlags, ("reward", "gen_len", "prompt", "credit", "kl_coef", "temperature", "caller_prompts"))
def train(data: tuple[Path, ...], opts: Any, rl: ReinforceFlags, resume: bool, no_control_codes: bool,
          mask_control: bool, max_pieces: int | None, objective: str, augment: int = 0) -> None:
    """Train (or fine-tune) an RWKV-7 music model on ABC tunes or MIDI files.

    Losses are printed in bits per token, training and validation alike.
    """
    if objective == "reinforce" and not opts.init:  # (before a seed is drawn and printed)
        raise RwkvMusicError("--objective reinforce needs --init CKPT (a trained model to improve)")
    opts = dataclasses.replace(opts, seed=_run_seed(opts.seed, opts.out, resume))
    mode, seed, steps = opts.mode, opts.seed, opts.steps
    if objective == "reinforce":
        _run_reinforce(opts, rl)
        return
    from rwkv_music.train.trainer import train as run

    val_docs, recipe = None, {}
    if data and all(Path(p).suffix == ".npz" for p in data):  # prepared train/val documents
        docs, val_docs, vocab = _prepared_documents(list(data))
        recipe = {"prepared_data": [Path(p).name for p in data]}
    else:
        docs, vocab = load_documents(mode, list(data), with_control=not no_control_codes,
                                     mask_control=mask_control, max_pieces=max_pieces)
    augment_fn = None
    if augment:
        augment_fn, how = _augmenter(mode, augment, seed, prepared=val_docs is not None)
        recipe.update(how)
    result = run(opts, docs, vocab, resume=resume, progress=_progress_printer(max(1, min(50, steps // 20))),
                 val_docs=val_docs, augment=augment_fn, extra_meta={"augment": recipe} if recipe else None)
    val = f"{result.val_bits_per_token:.4f}" if result.val_bits_per_token is not None else "n/a"
    click.echo(f"wrote {result.model_path} after {result.step} steps ({result.tokens_seen} tokens, "
               f"{result.elapsed_s:.0f}s); val {val} bits/token")


def load_documents(mode: str, data: list[Path], *, with_control: bool = True, mask_control: bool = False,
                   max_pieces: int | None = None) -> tuple[list[Any], int]:
    """(documents, vocab size) for a mode; music21's corpus when ``data`` is empty."""
    if mode == "abc":
        from rwkv_music.train.data import ABC_VOCAB, abc_documents

        return abc_documents(data or None, with_control=with_control, mask_control=mask_control), ABC_VOCAB
    from rwkv_music.train.midi_data import MIDI_VOCAB, midi_documents

    return midi_documents(data or None, max_pieces=max_pieces), MIDI_VOCAB


def _prepared_documents(paths: list[Path]) -> tuple[list[Any], list[Any], int]:
    """Train and held-out documents of prepared ``.npz`` files (rwkv_music.train.data.save_documents)."""
    from rwkv_music.train.data import load_documents as load_npz

    train_docs, val_docs, vocab = [], [], 0
    for path in paths:
        t, v, n = load_npz(path)
        train_docs += t
        val_docs += v
        vocab = max(vocab, n)
    return train_docs, val_docs, vocab


def _augmenter(mode: str, copies: int, seed: int, prepared: bool) -> tuple[Callable[[list], list], dict]:
    """(train-split rewrite, its description for train_meta.json) for ``--augment``."""
    import random

    from rwkv_music.train import augment as aug

    rng = random.Random(seed)
    if mode == "midi":
        return (lambda docs: aug.midi_augmented_documents(docs, rng, copies=copies),
                {"midi_pitch_shift_copies": copies, "max_shift": 5})
    if prepared:
        raise RwkvMusicError("--augment with prepared .npz ABC data: the file is augmented already")
    recipe = aug.AbcAugment(copies=copies)

    def rewrite(docs: list) -> list:
        texts = aug.document_texts(docs)
        return aug.abc_augmented_documents([(d.source, t) for d, t in zip(docs, texts)], rng, recipe)

    return rewrite, {"abc": dict(vars(recipe))}


def reinforce_prompt(mode: str, text: str | None) -> list[int]:
    """Rollout prompt ids: the format's prompt start (ABC bos, MIDI <pad>) + the text's ids (the tokenizer
    checks them)."""
    from rwkv_music.formats.base import format_for

    fmt = format_for(mode)
    if text and mode == "abc" and "\n" not in text and "\\n" in text:  # one shell line: "L:1/8\\nM:6/8\\n"
        text = text.encode("ascii", "backslashreplace").decode("unicode_escape")
    return [fmt.prompt_start] + ([int(t) for t in fmt.tokenizer.encode(text)] if text else [])


def _run_reinforce(opts: Any, rl: ReinforceFlags) -> None:
    from rwkv_music.train.reinforce import ReinforceOptions, reinforce_train, reward_by_name

    if not opts.init:
        raise RwkvMusicError("--objective reinforce needs --init CKPT (a trained model to improve)")
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    ropts = ReinforceOptions(steps=opts.steps, lr=opts.lr, batch_size=opts.batch_size, gen_len=rl.gen_len,
                             seed=opts.seed, device=opts.device, temperature=rl.temperature, kl_coef=rl.kl_coef,
                             credit=rl.credit, time_budget_min=opts.time_budget_min)
    texts = rl.prompt_texts()
    prompts = [reinforce_prompt(opts.mode, t) for t in texts] or [reinforce_prompt(opts.mode, None)]
    result = reinforce_train(Path(opts.init), Path(opts.out), reward_by_name(rl.reward), prompts, ropts,
                             progress=_progress_printer(1), save_dtype=opts.save_dtype, reward_name=rl.reward)
    click.echo(f"wrote {result} after REINFORCE (see {Path(opts.out) / 'train_meta.json'})")
