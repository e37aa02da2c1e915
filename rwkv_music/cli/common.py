"""Pieces shared by the CLI modules: the error boundary, shared options, progress, saving."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from rwkv_music.errors import RwkvMusicError

BACKENDS = ("torch", "onnx", "ncnn")
DTYPES = ("fp32", "fp16", "bf16", "int8")  # int8: torch CPU weight-only quantization
PRESETS = ("default-midi", "default-abc", "chatrwkv-midi", "chatrwkv-abc")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def boundary(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors (and unreadable files) into one-line click errors (exit status 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RwkvMusicError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except OSError as exc:  # permissions, full disk, ...: still one line, no traceback
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None

    return wrapper


# -- shared options (defined once, STYLE 6) -----------------------------------------------------
def combine(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(func: Any) -> Any:
        for deco in reversed(decorators):
            func = deco(func)
        return func

    return apply


model_options = combine(
    click.option(
        "--model",
        "-m",
        type=click.Path(dir_okay=False),
        default=None,
        help="Model file (.pth for torch, .onnx, .param for ncnn); default: the shipped model.",
    ),
    click.option(
        "--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="Inference runtime."
    ),
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ..."),
    click.option("--dtype", type=click.Choice(DTYPES), default="fp32", show_default=True, help="Run dtype."),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads of the runtime (default: its own choice, one per core for torch).",
    ),
)
sampling_options = combine(
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=None,
        help="Base seed (random if omitted; it is part of the file names).",
    ),
    click.option(
        "--preset", type=click.Choice(PRESETS), default=None, help="Sampling preset (default: default-<mode>)."
    ),
    click.option(
        "--temperature", type=click.FloatRange(min=0), default=None, help="Override the preset's temperature."
    ),
    click.option(
        "--top-p", type=click.FloatRange(min=0), default=None, help="Override the preset's top-p (>= 1 = off)."
    ),
    click.option("--top-k", type=click.IntRange(min=0), default=None, help="Override the preset's top-k (0 = off)."),
)
output_options = combine(
    click.option(
        "--out", "-o", type=click.Path(file_okay=False), default="out", show_default=True, help="Output folder."
    ),
    click.option("--force", is_flag=True, help="Overwrite existing output files."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
)
midi_options = combine(
    click.option(
        "--seconds",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Target length in seconds of the new music (after any prompt).",
    ),
    click.option(
        "--instruments", default=None, help="Comma-separated instruments: piano,violin,bass,drum,... (default any)."
    ),
    click.option("--piano-only", is_flag=True, help="Only piano notes (the ChatRWKV piano-only mode)."),
    click.option("--no-constraints", is_flag=True, help="Plain sampling: no MIDI well-formedness constraint."),
)


def sampling_args(temperature: float | None, top_p: float | None, top_k: int | None) -> dict[str, Any]:
    return {k: v for k, v in {"temperature": temperature, "top_p": top_p, "top_k": top_k}.items() if v is not None}


def instruments_arg(instruments: str | None, piano_only: bool) -> str | None:
    if piano_only and instruments:
        raise click.BadParameter("use either --instruments or --piano-only", param_hint="--piano-only")
    return "piano" if piano_only else instruments


def load(model: str | None, mode: str | None, backend: str, device: str, dtype: str,
         threads: int | None = None) -> Any:
    from rwkv_music.compose.composer import Composer

    return Composer.load(model, mode=mode, backend=backend, device=device, dtype=dtype, threads=threads)


class Progress:
    """A tqdm bar on stderr, created on first use (``--quiet`` runs never import tqdm).

    Called as ``progress(done, total)`` with the absolute count done so far.
    """

    def __init__(self, quiet: bool, desc: str, unit: str = "tok", leave: bool = False) -> None:
        self.bar: Any = None
        self.quiet, self.desc, self.unit, self.leave = quiet, desc, unit, leave

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, leave=self.leave)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compose(composer: Any, method: str, quiet: bool, **kwargs: Any) -> list[Any]:
    progress = Progress(quiet, f"{method.replace('_', ' ')} ×{kwargs.get('n', 1)}")
    try:
        return getattr(composer, method)(callback=progress, **kwargs)
    finally:
        progress.close()


def output_paths(out: str, stem: str, n: int, extras: tuple[str, ...]) -> list[Path]:
    """``out/stem-ii.ext`` for every piece and extension, in saving order."""
    return [Path(out) / f"{stem}-{i:02d}.{ext}" for i in range(n) for ext in extras]


def check_outputs(paths: list[Path], force: bool) -> None:
    """Fail before any work if an output exists (and ``force`` is off)."""
    from rwkv_music.io_utils import check_writable

    for path in paths:
        check_writable(path, force)


def save_all(
    pieces: list[Any],
    out: str,
    stem: str,
    force: bool,
    extras: tuple[str, ...],
    soundfont: str | None = None,
    required: int = 1,
) -> list[Path]:
    """Save every piece as ``out/stem-ii.<ext>``; returns the paths written.

    The first ``required`` extensions must work; a later one (e.g. ``.mid`` of an ABC tune that
    music21 cannot read) is skipped with a warning on stderr.
    """
    from rwkv_music.errors import TokenizerError

    Path(out).mkdir(parents=True, exist_ok=True)
    written = []
    for piece in pieces:
        for k, path in enumerate(output_paths(out, stem, piece.index + 1, extras)[piece.index * len(extras) :]):
            try:
                written.append(piece.save(path, force=force, soundfont=soundfont))
            except TokenizerError as exc:  # AbcFormatError / MidiFormatError of generated music
                if k < required:
                    raise
                click.echo(f"warning: {path.name} skipped: {exc}", err=True)
    return written


def check_audio(soundfont: str | None) -> None:
    """Fail before any work when --wav cannot be honoured."""
    from rwkv_music.export.audio import check_available

    check_available(soundfont)


def echo_paths(paths: list[Path]) -> None:
    for p in paths:
        click.echo(str(p))


def seed_or_new(seed: int | None) -> int:
    from rwkv_music.compose.options import new_base_seed

    return new_base_seed() if seed is None else seed


def state_or_none(path: str | None) -> Any:
    if path is None:
        return None
    from rwkv_music.model.state import State

    return State.load(path)
