"""CLI commands around the composer: ``info``, ``state make|show``, ``render``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rwkv_music.cli.common import (
    BACKENDS,
    CONTEXT,
    LoadSpec,
    MidiFlags,
    Progress,
    boundary,
    collect,
    format_options,
    model_options,
    sampling_options,
)
from rwkv_music.compose.options import SamplingOptions
from rwkv_music.errors import RwkvMusicError


@click.command(
    "info",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music info model.pth
  rwkv-music info model.onnx --backend onnx
""",
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="Runtime to load it with."
)
@boundary
def info(model: str, backend: str) -> None:
    """Show a model's version, sizes, vocabulary, mode and dtype."""
    from rwkv_music.backends import load_backend
    from rwkv_music.formats.base import VOCAB_MODES

    path = Path(model)
    if not path.is_file():
        raise RwkvMusicError(f"{path}: no such model file")
    m = load_backend(path, backend=backend)
    c = m.config
    rows = [
        ("file", f"{path} ({path.stat().st_size / 2**20:.1f} MiB)"),
        ("version", f"RWKV-{c.version}"),
        ("layers", c.n_layer),
        ("width (n_embd)", c.n_embd),
        ("heads x head size", f"{c.n_head} x {c.head_size}" if c.n_head else "-"),
        ("ffn size", c.dim_ffn),
        ("vocabulary", f"{c.vocab_size} ids ({VOCAB_MODES.get(c.vocab_size, 'unknown')} mode)"),
        ("parameters", f"{c.n_params:,}" if c.n_params else "?"),
        ("lora", ", ".join(f"{k}={v}" for k, v in c.lora.items()) or "-"),
        ("dtype", str(getattr(m, "dtype", "?")).replace("torch.", "")),
        ("backend", f"{m.name} on {m.device}"),
    ]
    for name, value in rows:
        click.echo(f"{name:<18} {value}")


@click.group(
    "state",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music state make --model abc.pth --prompt 'S:3' --out jig.npz
  rwkv-music state show jig.npz
""",
)
def state() -> None:
    """Make and inspect initial states (custom starting memory for composing)."""


@state.command(
    "make",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music state make --model abc.pth --prompt 'S:3' --out jig.npz
  rwkv-music state make --model midi.pth --from-file style.mid --out style.npz
  rwkv-music generate-abc --model abc.pth --state jig.npz
""",
)
@model_options
@click.option("--prompt", default=None, help="Text in the model's format to read.")
@click.option("--from-file", type=click.Path(dir_okay=False), default=None, help="A .mid or .abc file to read instead.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="Where to write the state (.npz).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@boundary
def state_make(load: LoadSpec, prompt: str | None, from_file: str | None, out: str, force: bool) -> None:
    """Read a prompt with a model and save the resulting state (.npz) for `--state`."""
    from rwkv_music.io_utils import check_writable

    if (prompt is None) == (from_file is None):
        raise click.UsageError("give exactly one of --prompt and --from-file")
    check_writable(out, force)
    composer = load.composer(default_mode="midi")
    if from_file is not None:  # ABC: the first tune's prompt text; MIDI: the file's note ids
        prompt = composer.format.read_file(Path(from_file))
    st = composer.make_state(prompt)
    if force:
        Path(out).unlink(missing_ok=True)
    st.save(out, composer.config)
    click.echo(str(out))


@state.command(
    "show",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music state show jig.npz
""",
)
@click.argument("file", type=click.Path(dir_okay=False))
@boundary
def state_show(file: str) -> None:
    """Print a saved state's version, batch size and tensor shapes."""
    import numpy as np

    from rwkv_music.model.state import State

    st = State.load(file)
    click.echo(f"version   RWKV-{st.version}")
    click.echo(f"batch     {st.batch_size}")
    click.echo(f"layers    {st.n_layer}")
    for name, t in st.tensors.items():
        arr = np.asarray(t, dtype=np.float32)
        click.echo(f"{name:<9} {tuple(arr.shape)}  rms {float(np.sqrt(np.mean(arr.astype(np.float64) ** 2))):.4g}")


@dataclass(frozen=True)
class RowFlags:
    """The per-row options ``render`` takes on its command line (rows of a .jsonl file may override them)."""

    given: tuple[tuple[str, Any], ...]  # (option field, value) of the flags given, in option-class names

    @classmethod
    def parse(
        cls,
        seconds: float | None,
        max_tokens: int | None,
        instruments: str | None,
        piano_only: bool,
        key: str | None,
        meter: str | None,
        unit: str | None,
        no_constraints: bool,
    ) -> "RowFlags":
        midi = MidiFlags.parse(seconds, instruments, piano_only, False)
        values = {"seconds": midi.seconds, "instruments": midi.instruments, "key": key, "meter": meter, "unit": unit}
        values |= {"max_tokens": max_tokens, "constrained": False if no_constraints else None}
        return cls(tuple((k, v) for k, v in values.items() if v is not None))

    def options_for(self, fmt: Any) -> dict[str, Any]:
        """The given flags as options of ``fmt``; a flag the format has no option for is a usage error."""
        return format_options(fmt, dict(self.given))


@click.command(
    "render",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music render prompts.txt --model midi.pth --samples-per-prompt 4 --seconds 20 --out data/
  rwkv-music render prompts.jsonl --model abc.pth --batch-size 16 --out data/ --resume
  rwkv-music render tunes/ --model abc.pth --max-tokens 512 --out continued/
  rwkv-music render --abc-to-midi music21:oneills1850 --out midi_data/

\b
PROMPTS_OR_DIR: a text file (one prompt per line, '#' comments, '\\n' for newlines), a .jsonl
file (objects with "prompt" or "file" plus per-row options such as "seconds", "key",
"temperature"), or a folder of .abc/.mid files to continue.
""",
)
@boundary
@click.argument("source", metavar="PROMPTS_OR_DIR", required=False, type=click.Path())
@model_options
@click.option("--samples-per-prompt", "-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Samples in flight (a finished sample's row takes the next one).",
)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None, help="MIDI target length.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Most new tokens per sample.")
@click.option("--instruments", default=None, help="MIDI: comma-separated instruments.")
@click.option("--piano-only", is_flag=True, help="MIDI: piano only.")
@click.option("--key", default=None, help="ABC: K: for prompts without a header.")
@click.option("--meter", default=None, help="ABC: M: for prompts without a header.")
@click.option("--unit", default=None, help="ABC: L: for prompts without a header.")
@click.option("--no-constraints", is_flag=True, help="Plain sampling, no music constraint.")
@collect("row", RowFlags.parse, ("seconds", "max_tokens", "instruments", "piano_only", "key", "meter", "unit",
                                 "no_constraints"))
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Base seed (sample j: derived from seed, j).",
)
@sampling_options
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), required=True, help="Output folder (manifest.jsonl, stats.json)."
)
@click.option("--resume", is_flag=True, help="Skip samples already in the manifest.")
@click.option("--force", is_flag=True, help="Start over in a folder that has a manifest.")
@click.option("--max-samples", type=click.IntRange(min=0), default=None, help="Stop after this many new samples.")
@click.option(
    "--abc-to-midi",
    "abc_dir",
    default=None,
    metavar="DIR",
    help="Instead: convert every tune of the .abc files under DIR (or music21:COLLECTION) to .mid.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def render(
    source: str | None,
    load: LoadSpec,
    samples_per_prompt: int,
    batch_size: int,
    row: RowFlags,
    seed: int,
    sampling: SamplingOptions,
    out: str,
    resume: bool,
    force: bool,
    max_samples: int | None,
    abc_dir: str | None,
    quiet: bool,
) -> None:
    """Batch-render a dataset: every prompt (or file) × K samples, one file each, plus a manifest."""
    if (source is None) == (abc_dir is None):
        raise click.UsageError("give PROMPTS_OR_DIR or --abc-to-midi DIR (one of them)")
    if abc_dir is not None:
        return _abc_to_midi(abc_dir, out, force, quiet)
    from rwkv_music.compose.render import RenderSettings
    from rwkv_music.compose.render import render as run

    if not Path(source).exists():
        raise RwkvMusicError(f"{source}: no such prompts file or folder")
    composer = load.composer(default_mode=_guess_mode(source))
    options = row.options_for(composer.format)
    settings = RenderSettings(
        samples_per_prompt, batch_size, seed, options, sampling.to_dict(), resume, force, max_samples
    )
    bar, done = Progress(quiet, "render", "sample", leave=True), [0]

    def progress(n: int, todo: int, _tokens: int) -> None:
        done[0] += n
        bar(done[0], todo)

    try:
        report = run(composer, source, out, settings, progress=progress)
    finally:
        bar.close()
    s = report.stats
    click.echo(
        f"{report.out}: {s['samples']}/{s['expected']} samples ({report.written} new), "
        f"{s['tokens']} tokens; manifest {report.out / 'manifest.jsonl'}"
    )
    if not report.complete:
        click.echo("not finished: rerun with --resume to render the rest", err=True)


def _guess_mode(source: str) -> str:
    """Which shipped model fits a source without --model: the format of a folder's first music file
    (MIDI before ABC), else ABC (prompt files are ABC unless a model says otherwise)."""
    from rwkv_music.formats.base import format_for_suffix

    path = Path(source)
    if path.is_dir():
        kinds = {fmt.name for p in path.rglob("*") if (fmt := format_for_suffix(p.suffix)) is not None}
        return "midi" if "midi" in kinds else "abc"
    return "abc"


def _abc_to_midi(abc_dir: str, out: str, force: bool, quiet: bool) -> None:
    from rwkv_music.export.abc_to_midi import convert_folder

    bar = Progress(quiet, "abc→midi", "file", leave=True)
    try:
        report = convert_folder(abc_dir, out, force=force, progress=bar)
    finally:
        bar.close()
    click.echo(
        f"{out}: {report.written} written, {report.skipped} already there, {len(report.failed)} failed"
        + (f" (see {Path(out) / 'failed.txt'})" if report.failed else "")
    )
