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
DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")  # int8/int4: torch CPU weight-only quantization
PRESETS = ("default-midi", "default-abc", "chatrwkv-midi", "chatrwkv-abc")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UserError(click.ClickException):
    """A mistake in the user's input or files, shown as one line: exit status 2, like a usage error."""

    exit_code = 2


DEBUG_KEY = "rwkv_music.debug"  # ctx.meta flag set by --debug (meta is shared by every sub-context)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show the full traceback of an unexpected error (a bug) instead of one line.",
)


def _command_name(ctx: click.Context | None, func: Callable[..., Any]) -> str:
    if ctx is None:
        return func.__name__
    sub = ctx.invoked_subcommand if isinstance(ctx.command, click.Group) else None
    return f"{ctx.command_path} {sub}" if sub else ctx.command_path


def boundary(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors (and unreadable files) into one line and exit status 2; any other
    exception (a bug) into one line naming the command (exit status 1), its traceback only with ``--debug``.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors (exit 2), --help, Ctrl-C
        except RwkvMusicError as exc:
            raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except OSError as exc:  # permissions, full disk, ...: still one line, no traceback
            raise UserError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
        except Exception as exc:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and ctx.meta.get(DEBUG_KEY):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise click.ClickException(
                f"{_command_name(ctx, func)} failed unexpectedly: {type(exc).__name__}"
                + (f": {first}" if first else "")
                + " (a bug; rerun with --debug for the traceback)"
            ) from None

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
    """Which model to load, and how (``--model``, ``--backend``, ``--device``, ``--dtype``, ``--threads``,
    ``--no-cuda-graph``)."""

    model: str | None = None
    backend: str = "torch"
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None
    cuda_graph: bool = True  # torch on CUDA: decode steps through captured CUDA graphs

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
            self.model, mode=mode, backend=self.backend, device=self.device, dtype=self.dtype, threads=self.threads,
            cuda_graph=self.cuda_graph,
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


SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty")


def sampling_from(preset: str | None, **overrides: float | int | None) -> Any:
    """The :class:`~rwkv_music.compose.options.SamplingOptions` of ``--preset`` and the overrides
    (``--temperature``, ``--top-p``, ``--top-k``, ``--min-p``, ``--presence-penalty``, ``--frequency-penalty``)."""
    from rwkv_music.compose.options import SamplingOptions

    return SamplingOptions(preset, overrides)


# -- shared options (defined once, STYLE 6) -----------------------------------------------------
model_options = combine(
    click.option(
        "--model",
        "-m",
        type=click.Path(dir_okay=False),
        default=None,
        help="Model file (.pth; .onnx or ncnn .param for those backends) or a shipped model's name (abc-default, "
        "midi-default: see `rwkv-music models`); default: the shipped model. A .pth on --backend onnx/ncnn is "
        "exported once into the cache ($RWKV_MUSIC_CACHE, else ~/.cache/rwkv-music).",
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
        help="Arithmetic dtype (default: the model's own: fp32 for checkpoints, the export's for onnx/ncnn; "
        "a dtype the backend or export cannot run is refused; int8/int4: torch CPU weight quantization).",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads of the runtime (default: its own choice, one per core for torch).",
    ),
    click.option(
        "--cuda-graph/--no-cuda-graph",
        default=True,
        help="torch on CUDA: decode through captured CUDA graphs (default on; no effect on a CPU).",
    ),
    collect("load", LoadSpec, ("model", "backend", "device", "dtype", "threads", "cuda_graph")),
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Base seed (random if omitted; it is part of the file names).",
)
sampling_options = combine(
    click.option(
        "--preset",
        type=click.Choice(PRESETS),
        default=None,
        help="Sampling preset (default: default-<mode>); a preset of the other mode is refused.",
    ),
    click.option(
        "--temperature",
        type=click.FloatRange(min=0),
        default=None,
        help="Override the preset's temperature (0 = greedy).",
    ),
    click.option(
        "--top-p", type=click.FloatRange(min=0), default=None, help="Override the preset's top-p (>= 1 = off)."
    ),
    click.option("--top-k", type=click.IntRange(min=0), default=None, help="Override the preset's top-k (0 = off)."),
    click.option(
        "--min-p",
        type=click.FloatRange(min=0, max=1),
        default=None,
        help="Drop tokens below this fraction of the top token's probability (0 = off).",
    ),
    click.option(
        "--presence-penalty",
        type=float,
        default=None,
        help="Subtract this from the logit of every token already generated (0 = off).",
    ),
    click.option(
        "--frequency-penalty",
        type=float,
        default=None,
        help="Subtract this times a token's count so far from its logit (0 = off).",
    ),
    collect("sampling", sampling_from, ("preset",) + SAMPLING_FLAGS),
)
output_options = combine(
    click.option(
        "--out", "-o", type=click.Path(), default="out", show_default=True,
        help="Output folder, or a file name such as song.mid (several pieces: song-00.mid, song-01.mid, ...).",
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
        "--instruments",
        default=None,
        help="Comma-separated instruments (default any): the model's bins (piano, violin, bass, drum, ...) or "
        "General MIDI program names or numbers 0-127 ('acoustic grand piano', cello, 40), each played by its bin.",
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


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: progress bars are drawn only there (a log gets no ``\\r`` frames)."""
    stream = sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class Progress:
    """A tqdm bar on stderr, created on first use (``--quiet`` runs never import tqdm).

    Called as ``progress(done, total)`` with the absolute count done so far.  Drawn only when stderr
    is a terminal; ``open_ended=True`` draws a count without a total or ETA, for runs whose stop rule
    is not this count (``--seconds``: a piece ends near a length of music, not at a token count).
    """

    def __init__(
        self, quiet: bool, desc: str, unit: str = "tok", leave: bool = False, open_ended: bool = False
    ) -> None:
        self.bar: Any = None
        self.quiet = quiet or not stderr_is_terminal()
        self.desc, self.unit, self.leave, self.open_ended = desc, unit, leave, open_ended

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=None if self.open_ended else total,
                desc=self.desc,
                unit=self.unit,
                file=sys.stderr,
                leave=self.leave,
            )
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
    """``composer.compose_rows`` with a progress bar (one row per piece).

    With a target length (``--seconds``) pieces end near that much music, so the bar counts tokens
    without a total; otherwise its total is the token cap (``--max-tokens``).
    """
    verb = "continue" if any(isinstance(x, Path) for x in inputs) else "compose"
    seconds = getattr(options, "seconds", None)
    desc = f"{verb} {composer.mode} ×{len(inputs)}" + (f" (~{seconds:g} s of music)" if seconds else "")
    progress = Progress(quiet, desc, open_ended=bool(seconds))
    try:
        return composer.compose_rows(inputs, options, seed=seed, sampling=sampling, state=state, callback=progress)
    finally:
        progress.close()


# --out given as a file name of the command's main format: the pieces are named after it
MUSIC_SUFFIXES = {"mid": (".mid", ".midi"), "abc": (".abc",)}


def output_target(out: str, main: str) -> tuple[Path, Path | None]:
    """``(folder, file)``: ``--out`` as a folder (file None), or as a file name ending in the main
    format's suffix (``song.mid``), whose folder the files go to."""
    path = Path(out)
    if path.suffix.lower() in MUSIC_SUFFIXES.get(main, ()):
        if path.is_dir():
            return path, None  # an existing folder that happens to be called song.mid stays a folder
        return path.parent, path
    if path.is_file():
        raise click.BadParameter(f"{out} is a file; give a folder, or a file name ending in "
                                 f"{' or '.join(MUSIC_SUFFIXES.get(main, ('.' + main,)))}", param_hint="--out")
    return path, None


def output_paths(out: str, stem: str, n: int, extras: tuple[str, ...], main: str | None = None) -> list[Path]:
    """Every piece's file of every extension, in saving order: ``out/stem-ii.ext``; with ``--out song.mid``
    (a file name of the ``main`` format, by default ``extras[0]``'s) ``song.mid`` itself and
    ``song.png`` etc. for one piece, ``song-ii.mid`` beside it for several."""
    folder, file = output_target(out, main or (extras[0] if extras else ""))
    if file is None:
        return [folder / f"{stem}-{i:02d}.{ext}" for i in range(n) for ext in extras]

    def named(i: int, ext: str) -> Path:
        suffix = file.suffix if ext in MUSIC_SUFFIXES and file.suffix.lower() in MUSIC_SUFFIXES[ext] else f".{ext}"
        return folder / (f"{file.stem}{suffix}" if n == 1 else f"{file.stem}-{i:02d}{suffix}")

    return [named(i, ext) for i in range(n) for ext in extras]


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
    main: str | None = None,
) -> list[Path]:
    """Save every piece at its :func:`output_paths` (``out/stem-ii.<ext>``); returns the paths written.

    The first ``required`` extensions must work; a later one (e.g. ``.mid`` of an ABC tune that
    music21 cannot read) is skipped with a warning on stderr.
    """
    from rwkv_music.errors import TokenizerError

    n = max([len(pieces)] + [p.index + 1 for p in pieces])
    paths = output_paths(out, stem, n, extras, main)
    if paths:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
    written = []
    for piece in pieces:
        for k, path in enumerate(paths[piece.index * len(extras) : (piece.index + 1) * len(extras)]):
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
