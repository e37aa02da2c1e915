"""Pieces shared by the CLI modules: the error boundary, shared options, progress, saving."""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
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


# -- option types ----------------------------------------------------------------------------------
DEVICE_KINDS = {"torch": ("cpu", "cuda"), "onnx": ("cpu", "cuda"), "ncnn": ("cpu", "vulkan")}


class DeviceType(click.ParamType):
    """``cpu``, ``cuda``, ``cuda:N``, ``vulkan`` or ``vulkan:N``; anything else is a usage error (exit 2)
    with a one-line message, before any model is loaded.

    Which kinds a backend runs on is checked when the model options are read (:class:`LoadSpec`).
    """

    name = "device"

    def __init__(self, kinds: tuple[str, ...] = ("cpu", "cuda", "vulkan")) -> None:
        self.kinds = kinds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        kind, colon, index = text.partition(":")
        if kind not in self.kinds or (colon and (kind == "cpu" or not index.isdigit())):
            examples = ", ".join(k if k == "cpu" else f"{k}, {k}:1" for k in self.kinds)
            self.fail(f"{value!r} is not a device; use one of {examples}", param, ctx)
        return text


# -- collecting parsed options into objects ----------------------------------------------------------
def combine(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(func: Any) -> Any:
        for deco in reversed(decorators):
            func = deco(func)
        return func

    return apply


def collect(target: str, build: Callable[..., Any], names: tuple[str, ...]) -> Callable[[Any], Any]:
    """Decorator: the command gets ``target=build(**those params)`` instead of the params ``names``.

    Options are parsed once into the objects the API takes (a :class:`LoadSpec`, the
    :class:`~rwkv_music.compose.options.SamplingOptions`, ...), so commands stay short.
    """

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[target] = build(**{name: kwargs.pop(name) for name in names})
            return func(*args, **kwargs)

        return wrapper

    return decorate


@dataclass(frozen=True)
class LoadSpec:
    """Which model to load, and how (``--model``, ``--backend``, ``--device``, ``--dtype``, ``--threads``)."""

    model: str | None = None
    backend: str = "torch"
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        kinds = DEVICE_KINDS.get(self.backend, ())
        if self.device.partition(":")[0] not in kinds:
            raise click.BadParameter(
                f"the {self.backend} backend runs on {' or '.join(kinds)}, not {self.device!r}", param_hint="--device"
            )

    def composer(self, mode: str | None = None, default_mode: str | None = None) -> Any:
        """The loaded :class:`~rwkv_music.compose.composer.Composer`.

        ``mode`` is checked against the model's vocabulary; ``default_mode`` picks the shipped
        model when ``--model`` is not given.
        """
        from rwkv_music.compose.composer import Composer

        if mode is None and self.model is None:
            mode = default_mode
        return Composer.load(
            self.model, mode=mode, backend=self.backend, device=self.device, dtype=self.dtype, threads=self.threads
        )


@dataclass(frozen=True)
class OutputSpec:
    """Where pieces go (``--out``, ``--force``, ``--quiet``)."""

    out: str = "out"
    force: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class MidiFlags:
    """The MIDI flags commands share: ``--seconds``, ``--instruments``/``--piano-only``, ``--no-constraints``."""

    seconds: float | None = None
    instruments: str | None = None
    constrained: bool = True
    key: str | None = None  # None: the options' default ("auto")

    @classmethod
    def parse(
        cls,
        seconds: float | None,
        instruments: str | None,
        piano_only: bool,
        no_constraints: bool,
        midi_key: str | None = None,
    ) -> "MidiFlags":
        if piano_only and instruments:
            raise click.BadParameter("use either --instruments or --piano-only", param_hint="--piano-only")
        instruments = "piano" if piano_only else instruments
        if no_constraints and (instruments or seconds):
            raise click.BadParameter(
                "--instruments/--piano-only/--seconds need the constraint", param_hint="--no-constraints"
            )
        if no_constraints and midi_key is not None:
            raise click.BadParameter("--key needs the constraint", param_hint="--no-constraints")
        return cls(seconds, instruments, not no_constraints, midi_key)

    @property
    def given(self) -> bool:
        """Whether a MIDI-only flag was given (an error for ABC)."""
        return bool(self.seconds or self.instruments)

    @property
    def midi_key(self) -> str | None:
        """The key for :class:`MidiOptions`: ``"auto"`` unless given; ``"none"`` turns the rule off."""
        if self.key is None:
            return "auto"
        return None if self.key.strip().lower() == "none" else self.key

    def options(self, max_tokens: int) -> Any:
        """The :class:`~rwkv_music.compose.options.MidiOptions` (instrument names checked now)."""
        from rwkv_music.compose.options import MidiOptions

        return MidiOptions(self.seconds, max_tokens, self.instruments, self.constrained, key=self.midi_key)


def format_options(fmt: Any, values: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Option values given on the command line (``None``: not given) as keywords of ``fmt.options_class``.

    A flag the format has no option for is a usage error naming it, unless listed in ``ignore``
    (flags with a default that only one format reads, such as ``--controls``).
    """
    fields = {f.name for f in dataclasses.fields(fmt.options_class)}
    given = {k: v for k, v in values.items() if v is not None and (k in fields or k not in ignore)}
    stray = [k for k in given if k not in fields]
    if stray:
        flags = "/".join(f"--{k.replace('_', '-')}" for k in stray)
        raise click.BadParameter(f"not an option of {fmt.name.upper()} models", param_hint=flags)
    return given


def sampling_from(preset: str | None, temperature: float | None, top_p: float | None, top_k: int | None) -> Any:
    """The :class:`~rwkv_music.compose.options.SamplingOptions` of ``--preset`` and the overrides."""
    from rwkv_music.compose.options import SamplingOptions

    return SamplingOptions(preset, {"temperature": temperature, "top_p": top_p, "top_k": top_k})


# -- shared options (defined once, STYLE 6) -----------------------------------------------------
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
    click.option(
        "--device", type=DeviceType(), default="cpu", show_default=True, help="cpu, cuda, cuda:1, ... (ncnn: vulkan)."
    ),
    click.option(
        "--dtype",
        type=click.Choice(DTYPES),
        default=None,
        help="Arithmetic dtype (default: the model's own: fp32 for checkpoints, the export's for onnx/ncnn).",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads of the runtime (default: its own choice, one per core for torch).",
    ),
    collect("load", LoadSpec, ("model", "backend", "device", "dtype", "threads")),
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Base seed (random if omitted; it is part of the file names).",
)
sampling_options = combine(
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
    collect("sampling", sampling_from, ("preset", "temperature", "top_p", "top_k")),
)
output_options = combine(
    click.option(
        "--out", "-o", type=click.Path(file_okay=False), default="out", show_default=True, help="Output folder."
    ),
    click.option("--force", is_flag=True, help="Overwrite existing output files."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    collect("output", OutputSpec, ("out", "force", "quiet")),
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
    click.option(
        "--key",
        "midi_key",
        default=None,
        metavar="KEY",
        help="MIDI: keep pitched notes in this key's scale (D, Am, F#dor); 'auto' (default) keeps the key the "
        "piece settles in over its first notes, 'none' allows every pitch.",
    ),
    collect("midi", MidiFlags.parse, ("seconds", "instruments", "piano_only", "no_constraints", "midi_key")),
)


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


def compose(
    composer: Any,
    inputs: list[Any],
    options: Any,
    seed: int,
    sampling: Any,
    quiet: bool,
    state: Any = None,
) -> list[Any]:
    """``composer.compose_rows`` with a progress bar (one row per piece)."""
    verb = "continue" if any(isinstance(x, Path) for x in inputs) else "compose"
    progress = Progress(quiet, f"{verb} {composer.mode} ×{len(inputs)}")
    try:
        return composer.compose_rows(inputs, options, seed=seed, sampling=sampling, state=state, callback=progress)
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
