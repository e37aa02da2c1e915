"""CLI commands around the composer: ``info``, ``state make|show``, ``render``."""

from __future__ import annotations

import json
import re
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
  rwkv-music info midi-default                # a shipped model, by name (see `rwkv-music models`)
  rwkv-music info model.pth
  rwkv-music info model.onnx                  # the backend follows the suffix (.onnx, .param)
  rwkv-music info abc-default --backend ncnn  # the export it runs on (made once, into the cache)
""",
)
@click.argument("model")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Runtime to load it with (default: by suffix: .onnx onnx, .param/.bin ncnn, else torch).",
)
@boundary
def info(model: str, backend: str | None) -> None:
    """Show a model's files, version, sizes, vocabulary, mode, and stored and compute dtypes.

    MODEL is a file or a shipped model's name (abc-default, midi-default).
    """
    from rwkv_music.assets import is_model_name, missing_model_message, resolve_model
    from rwkv_music.backends import load_backend
    from rwkv_music.backends.sidecar import ncnn_paths
    from rwkv_music.formats.base import VOCAB_MODES

    path = resolve_model(model)
    backend = backend or _backend_for(path)
    exists = ncnn_paths(path)["param"].is_file() if backend == "ncnn" else path.is_file()
    if not exists and not path.is_file():
        raise RwkvMusicError(missing_model_message(model))
    m = load_backend(path, backend=backend)
    c = m.config
    rows: list[tuple[str, Any]] = []
    if is_model_name(model):
        rows.append(("model", f"{model} (shipped; card: {resolve_model(model).parent / 'MODEL_CARD.md'})"))
    files = _model_files(m, path)
    if files[0] != path:
        rows.append(("exported from", f"{path} ({_size(path.stat().st_size)}; export cached)"))
    total = sum(f.stat().st_size for f in files)
    listed = " + ".join(f"{f if i == 0 else f.name} ({_size(f.stat().st_size)})" for i, f in enumerate(files))
    rows.append(("file", listed + (f" = {_size(total)}" if len(files) > 1 else "")))
    rows += [
        ("version", f"RWKV-{c.version}"),
        ("layers", c.n_layer),
        ("width (n_embd)", c.n_embd),
        ("heads x head size", f"{c.n_head} x {c.head_size}" if c.n_head else "-"),
        ("ffn size", c.dim_ffn),
        ("vocabulary", f"{c.vocab_size} ids ({VOCAB_MODES.get(c.vocab_size, 'unknown')} mode)"),
        ("parameters", f"{c.n_params:,}" if c.n_params else "?"),
        ("lora", ", ".join(f"{k}={v}" for k, v in c.lora.items()) or "-"),
        ("stored dtype", _stored_dtype(m, files[0])),
        ("compute dtype", getattr(m, "compute_dtype", None) or str(getattr(m, "dtype", "?")).replace("torch.", "")),
        ("backend", f"{m.name} on {m.device}"),
    ]
    for name, value in rows:
        click.echo(f"{name:<18} {value}")


def _backend_for(path: Path) -> str:
    """The runtime a model file is for, by its suffix."""
    from rwkv_music.backends.sidecar import ncnn_paths

    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".param", ".bin") or (not path.exists() and ncnn_paths(path)["param"].is_file()):
        return "ncnn"  # (an ncnn export may be named by its prefix)
    return "torch"


def _model_files(m: Any, path: Path) -> list[Path]:
    """The files a loaded model was read from, main file first (ncnn: .param and .bin; onnx: + .data)."""
    if getattr(m, "name", "") == "ncnn":
        return [m.paths["param"], m.paths["bin"]]
    if getattr(m, "name", "") == "onnx":
        data = m.path.with_name(m.path.name + ".data")
        return [m.path] + ([data] if data.is_file() else [])
    return [path]


def _size(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _stored_dtype(m: Any, path: Path) -> str:
    """The dtype the weights are stored in: a checkpoint's tensors (by count of values), an export's sidecar."""
    sidecar = getattr(m, "sidecar", None)
    if isinstance(sidecar, dict):
        quant = sidecar.get("quantization")
        return f"{sidecar.get('dtype')}" + (f" ({quant} weights)" if quant else "")
    from collections import Counter

    from rwkv_music.model.checkpoint import read_state_dict

    counts: Counter[str] = Counter()
    for t in read_state_dict(path).values():
        if getattr(t, "is_floating_point", lambda: False)():
            counts[str(t.dtype).removeprefix("torch.")] += int(t.numel())
    if not counts:
        return "?"
    (main, n), *rest = counts.most_common()
    total = sum(counts.values())
    return main if not rest else f"{main} ({n / total:.0%} of the values; also {', '.join(k for k, _ in rest)})"


@click.command(
    "models",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music models                  # names, modes, files and sizes
  rwkv-music models abc-default      # its model card (data, licences, training, limits)
  rwkv-music generate-abc --model abc-default
""",
)
@click.argument("name", required=False)
@boundary
def models(name: str | None) -> None:
    """List the shipped models, or show NAME's model card.

    A shipped model's name works wherever a model is taken: --model, info, export-onnx, ...
    """
    from rwkv_music.assets import shipped_model, shipped_models

    if name is not None:
        card = shipped_model(name).card
        if not card.is_file():
            raise RwkvMusicError(f"{card}: {name} has no model card in this installation")
        click.echo(card.read_text(encoding="utf-8").rstrip("\n"))
        return
    for m in shipped_models():
        size = _size(m.path.stat().st_size) if m.installed else "missing: reinstall rwkv-music"
        click.echo(f"{m.name:<14} {m.mode.upper():<5} {m.summary()}")
        click.echo(f"{'':<14} file  {m.path} ({size})")
        click.echo(f"{'':<14} card  {m.card}")
    click.echo("A name works wherever a model is taken (--model abc-default); `rwkv-music models NAME` shows its card.")


@click.group(
    "state",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music state make --mode abc --prompt 'S:3' --out jig.npz
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
  rwkv-music state make --mode abc --prompt 'S:3' --out jig.npz     # the shipped ABC model
  rwkv-music state make --model abc.pth --prompt 'S:3' --out jig.npz
  rwkv-music state make --from-file style.mid --out style.npz       # the mode follows the file
  rwkv-music generate-abc --state jig.npz
""",
)
@model_options
@click.option(
    "--mode",
    type=click.Choice(("abc", "midi")),
    default=None,
    help="abc or midi: picks the shipped model when --model is not given (default: the --from-file's "
    "format, else midi), and is checked against --model's vocabulary.",
)
@click.option("--prompt", default=None, help="Text in the model's format to read.")
@click.option("--from-file", type=click.Path(dir_okay=False), default=None, help="A .mid or .abc file to read instead.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="Where to write the state (.npz).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@boundary
def state_make(
    load: LoadSpec, mode: str | None, prompt: str | None, from_file: str | None, out: str, force: bool
) -> None:
    """Read a prompt with a model and save the resulting state (.npz) for `--state`."""
    from rwkv_music.errors import TokenizerError
    from rwkv_music.formats.base import format_for_suffix
    from rwkv_music.io_utils import check_writable

    if (prompt is None) == (from_file is None):
        raise click.UsageError("give exactly one of --prompt and --from-file")
    check_writable(out, force)
    file_format = format_for_suffix(Path(from_file).suffix) if from_file is not None else None
    if from_file is not None and file_format is None:
        raise click.BadParameter(f"{from_file}: expected a .mid, .midi or .abc file", param_hint="--from-file")
    default_mode = mode or (file_format.name if file_format is not None else "midi")
    composer = load.composer(mode=mode, default_mode=default_mode)
    if from_file is not None:  # ABC: the first tune's prompt text; MIDI: the file's note ids
        if file_format is not None and file_format.name != composer.mode:
            name, a = file_format.name, getattr(file_format, "article", "a")
            raise RwkvMusicError(
                f"{from_file} is {a} {name.upper()} file, but the model is "
                f"{getattr(composer.format, 'article', 'a')} {composer.mode.upper()} model; "
                f"pass --mode {name} or {a} {name.upper()} --model"
            )
        prompt = composer.format.read_file(Path(from_file))
    try:
        st = composer.make_state(prompt)
    except TokenizerError as exc:
        if load.model is not None or mode is not None:
            raise
        other = "abc" if composer.mode == "midi" else "midi"
        raise TokenizerError(
            f"{exc} (read by the shipped {composer.mode.upper()} model; pass --mode {other} for {other.upper()} text)"
        ) from None
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
  rwkv-music render prompts.txt --model midi.pth --out data/ --ray --workers 2   # a local Ray runtime
  rwkv-music render p.txt --model /shared/m.pth -o data/ --ray auto --workers 8 --gpus-per-worker 1 --device cuda

\b
PROMPTS_OR_DIR: a text file (one prompt per line, '#' comments, '\\n' for newlines), a .jsonl
file (objects with "prompt" or "file" plus per-row options such as "seconds", "key",
"temperature"; ABC rows also the form: "parts", "bars_per_part", "cadence", "form",
"max_bar_repeats", "vary_rhythm"), or a folder of .abc/.mid files to continue.
""",
)
@boundary
@click.argument("source", metavar="PROMPTS_OR_DIR", required=False, type=click.Path())
@model_options
@click.option(
    "-n",
    "--samples-per-prompt",
    "--num-return-sequences",
    "samples_per_prompt",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Samples of every prompt or file (-k was this flag's short form before; -k now only means --key).",
)
@click.option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Samples in flight (a finished sample's row takes the next one).",
)
@click.option(
    "--seconds", type=click.FloatRange(min=0, min_open=True), default=None, help="MIDI: target length in seconds."
)
@click.option(
    "--max-tokens",
    "--max-new-tokens",
    "max_tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Most new tokens per sample (default 2048 MIDI, 1024 ABC).",
)
@click.option(
    "--instruments",
    default=None,
    help="MIDI: comma-separated instruments: bins (piano, violin, ...) or General MIDI names or numbers 0-127.",
)
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
    default=None,
    help="Base seed, sample j's seed derived from (seed, j) (random if omitted, printed; --resume reuses the "
    "first run's).",
)
@sampling_options
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), required=True, help="Output folder (manifest.jsonl, stats.json)."
)
@click.option("--resume", is_flag=True, help="Skip samples already in the manifest.")
@click.option("--force", is_flag=True, help="Start over in a folder that has a manifest.")
@click.option("--max-samples", type=click.IntRange(min=0), default=None, help="Stop after this many new samples.")
@click.option(
    "--check-workers",
    type=click.IntRange(min=0),  # (the upper bound is RenderSettings' check)
    default=None,
    help="Processes that write and check finished pieces while the model decodes (0: this process does; "
    "default: one per core the decoder leaves; an ABC render on a CPU without --threads decodes on half).",
)
@click.option(
    "--abc-to-midi",
    "abc_dir",
    default=None,
    metavar="DIR",
    help="Instead: convert every tune of the .abc files under DIR (or music21:COLLECTION) to .mid.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Render on Ray workers: no value (or 'local') starts a local Ray runtime, 'auto' joins this machine's "
    "cluster, 'ray://HOST:PORT' or HOST:PORT joins that one (needs rwkv-music[ray]).",
)
@click.option("--workers", type=click.IntRange(1, 4096), default=None, help="--ray: workers (default 1).")
@click.option(
    "--gpus-per-worker", type=click.FloatRange(0, 1024), default=None, help="--ray: GPUs each worker holds (default 0)."
)
@click.option(
    "--cpus-per-worker", type=click.FloatRange(0, 1024), default=None, help="--ray: CPUs each worker holds (default 1)."
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=None,
    help="--ray: samples handed to a worker at a time (default twice --batch-size).",
)
@click.option(
    "--write-on-workers",
    is_flag=True,
    help="--ray: workers write the files into --out themselves (a filesystem they all share); only rows travel.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def render(
    source: str | None,
    load: LoadSpec,
    samples_per_prompt: int,
    batch_size: int,
    row: RowFlags,
    seed: int | None,
    sampling: SamplingOptions,
    out: str,
    resume: bool,
    force: bool,
    max_samples: int | None,
    check_workers: int | None,
    abc_dir: str | None,
    ray_address: str | None,
    workers: int | None,
    gpus_per_worker: float | None,
    cpus_per_worker: float | None,
    block_size: int | None,
    write_on_workers: bool,
    quiet: bool,
) -> None:
    """Batch-render a dataset: every prompt (or file) × K samples, one file each, plus a manifest."""
    if source is None and abc_dir is None and ray_address is not None and Path(ray_address).exists():
        raise click.UsageError(f"--ray took {ray_address!r} as its address; write PROMPTS_OR_DIR before --ray, "
                               "or --ray local")
    if (source is None) == (abc_dir is None):
        raise click.UsageError("give PROMPTS_OR_DIR or --abc-to-midi DIR (one of them)")
    ray_flags = {"--workers": workers, "--gpus-per-worker": gpus_per_worker, "--cpus-per-worker": cpus_per_worker,
                 "--block-size": block_size, "--write-on-workers": write_on_workers or None}
    given = [name for name, value in ray_flags.items() if value is not None]
    if given and ray_address is None:
        raise click.UsageError(f"{given[0]} needs --ray")
    if check_workers is not None and ray_address is not None:
        raise click.UsageError("--check-workers is for a render in this process; with --ray each worker checks "
                               "the pieces it makes")
    if abc_dir is not None:
        return _abc_to_midi(abc_dir, out, force, quiet)
    if not Path(source).exists():
        raise RwkvMusicError(f"{source}: no such prompts file or folder")
    if ray_address is None:
        from rwkv_music.compose.render import LocalEngine

        engine = LocalEngine(load.composer(default_mode=_guess_mode(source)))
        return _render(engine, source, samples_per_prompt, batch_size, row, seed, sampling, out, resume, force,
                       max_samples, quiet, check_workers)
    from rwkv_music.compose.ray_render import ModelSpec, RayOptions, RayRenderer

    spec = ModelSpec(load.model, None, _guess_mode(source), load.backend, load.device, load.dtype, load.threads,
                     load.cuda_graph)
    options = RayOptions(ray_address, workers or 1, gpus_per_worker or 0.0,
                         1.0 if cpus_per_worker is None else cpus_per_worker, write_on_workers, block_size)
    with RayRenderer(spec, options) as engine:
        _render(engine, source, samples_per_prompt, batch_size, row, seed, sampling, out, resume, force,
                max_samples, quiet)


def _render(
    engine: Any,
    source: str,
    samples_per_prompt: int,
    batch_size: int,
    row: RowFlags,
    seed: int | None,
    sampling: SamplingOptions,
    out: str,
    resume: bool,
    force: bool,
    max_samples: int | None,
    quiet: bool,
    check_workers: int | None = None,
) -> None:
    """The render itself, on ``engine`` (this process, or Ray workers)."""
    from rwkv_music.compose.render import RenderSettings, render_with

    options = row.options_for(engine.format)
    seed = _render_seed(seed, out, resume)
    settings = RenderSettings(
        samples_per_prompt, batch_size, seed, options, sampling.to_dict(), resume, force, max_samples,
        check_workers=check_workers,
    )
    bar, done = Progress(quiet, "render", "sample", leave=True), [0]

    def progress(n: int, todo: int, _tokens: int) -> None:
        done[0] += n
        bar(done[0], todo)

    try:
        report = render_with(engine, source, out, settings, progress=progress)
    finally:
        bar.close()
    s = report.stats
    click.echo(
        f"{report.out}: {s['samples']}/{s['expected']} samples ({report.written} new), "
        f"{s['tokens']} tokens; manifest {report.out / 'manifest.jsonl'}"
    )
    if not report.complete:
        click.echo("not finished: rerun with --resume to render the rest", err=True)


def _render_seed(seed: int | None, out: str, resume: bool) -> int:
    """The base seed: given, else (``--resume``) the first run's from its render.json, else a new one (printed)."""
    import json

    from rwkv_music.compose.options import new_base_seed
    from rwkv_music.compose.render import SETTINGS

    if seed is not None:
        return seed
    settings = Path(out) / SETTINGS
    if resume and settings.is_file():
        try:
            before = json.loads(settings.read_text(encoding="utf-8"))["seed"]
        except (ValueError, KeyError, TypeError):
            raise RwkvMusicError(f"{settings}: unreadable render settings; pass --seed or --force") from None
        if isinstance(before, int):
            return before
    seed = new_base_seed()
    click.echo(f"seed {seed}", err=True)
    return seed


_MIDI_WORD = re.compile(r"^(?:t\d{1,3}|[a-z]{1,3}:[0-9a-f]{1,2}(?::[0-9a-f]{1,2})?|<start>|<end>|<pad>)$")


def _guess_mode(source: str) -> str:
    """Which shipped model fits a source without --model: the format of a folder's music files (MIDI
    before ABC); for a prompts file, MIDI when its first prompts (or JSONL ``prompt``/``file`` fields)
    are MIDI text words or MIDI files, else ABC."""
    from rwkv_music.formats.base import format_for_suffix

    path = Path(source)
    if path.is_dir():
        kinds = {fmt.name for p in path.rglob("*") if (fmt := format_for_suffix(p.suffix)) is not None}
        return "midi" if "midi" in kinds else "abc"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [line.strip() for _, line in zip(range(20), f) if line.strip()]
    except OSError:
        return "abc"  # the render itself reports the unreadable file
    for line in head:
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("file"), str):
                fmt = format_for_suffix(Path(row["file"]).suffix)
                return fmt.name if fmt is not None else "abc"
            line = str(row.get("prompt", "")) if isinstance(row, dict) else ""
        words = line.split()
        if words:
            return "midi" if all(_MIDI_WORD.match(w) for w in words) else "abc"
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
