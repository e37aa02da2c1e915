"""``rwkv-music distill``: self-distillation data (rwkv_music.train.distill) from the command line.

Examples::

    rwkv-music distill sample --model runs/abc/model.pth --out kept.jsonl --rounds 30
    rwkv-music distill build --human .traindata/abc_aug.npz --accepted kept.jsonl --out mix.npz
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rwkv_music.cli.common import CONTEXT, seed_or_new
from rwkv_music.train.augment import CALLER_METRES


@click.group(context_settings=CONTEXT)
def distill() -> None:
    """Self-distillation: keep a model's good tunes, mix them into training data."""


@distill.command(context_settings=CONTEXT)
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="ABC checkpoint.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON-lines file the kept tunes are appended to.")
@click.option("--rounds", required=True, type=click.IntRange(min=1),
              help="Rounds of 16 tunes under every metre x unit.")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Seeds the header draws and the tunes (random if omitted; printed).")
@click.option("--constrained", is_flag=True, help="Compose under the ABC constraint (bar and form rules).")
@click.option("--metres", default=",".join(CALLER_METRES), show_default=True, help="Comma-separated M: values.")
@click.option("--varied", is_flag=True,
              help="Also require two note lengths or more and no bar three times running.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch CPU threads.")
def sample(model: str, out: Path, rounds: int, seed: int | None, constrained: bool, metres: str, varied: bool,
           threads: int) -> None:
    """Compose tunes under caller headers and append those that pass every check to --out."""
    import torch

    from rwkv_music.compose import Composer
    from rwkv_music.train.distill import sample_accepted

    torch.set_num_threads(threads)
    seed = seed_or_new(seed)
    composer = Composer.load(model, mode="abc")
    counts: dict[str, int] = {}
    with open(out, "a", encoding="utf-8") as f:  # one whole line per kept tune: an interrupted run loses none
        for tune in sample_accepted(composer, rounds, seed, constrained=constrained,
                                    metres=tuple(m.strip() for m in metres.split(",")), counts=counts,
                                    variety=varied):
            f.write(json.dumps(tune) + "\n")
            f.flush()
    click.echo(json.dumps({"seed": seed, **counts}))


@distill.command(context_settings=CONTEXT)
@click.option("--human", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A prepared document file; its held-out split is kept as it is.")
@click.option("--accepted", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON-lines file of `distill sample` (repeat it).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The training .npz to write (`rwkv-music train --data`).")
@click.option("--copies", default=2, show_default=True, type=click.IntRange(min=1), help="Copies of every kept tune.")
@click.option("--human-share", default=0.25, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of the human training documents kept.")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Seeds which human documents are kept and their order (random if omitted; printed).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
def build(human: Path, accepted: tuple[Path, ...], out: Path, copies: int, human_share: float, seed: int | None,
          force: bool) -> None:
    """Mix kept tunes with human tunes into a training file for `rwkv-music train --data`."""
    from rwkv_music.io_utils import atomic_path
    from rwkv_music.train.data import load_documents, save_documents
    from rwkv_music.train.distill import distill_documents, read_accepted

    seed = seed_or_new(seed)
    train, val, vocab = load_documents(human)
    kept = read_accepted(accepted)
    docs = distill_documents(train, kept, copies, human_share, seed)
    with atomic_path(out, force=force) as tmp:  # (no partial file on an error)
        save_documents(tmp, docs, val, vocab)
    click.echo(json.dumps({"seed": seed, "accepted": len(kept), "copies": copies, "human_share": human_share,
                           "training_documents": len(docs), "held_out": len(val)}))
