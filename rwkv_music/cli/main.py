"""The ``rwkv-music`` command line (and ``generate-midi``, its most used command on its own).

Thin by design: parse, build options, call :class:`~rwkv_music.compose.composer.Composer` or
:mod:`rwkv_music.compose.render`, echo paths.  ``--help`` imports no torch, onnxruntime or ncnn: every
heavy import happens inside a command.  Project errors (:class:`RwkvMusicError`) are caught once,
in :func:`boundary`, and shown as one line with exit status 2, like usage mistakes; an unexpected
exception (a bug) is one line naming the command with exit status 1, its traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from rwkv_music import __version__
from rwkv_music.backends.limits import MAX_ROWS
from rwkv_music.cli.common import (
    CONTEXT,
    LoadSpec,
    MidiFlags,
    OutputSpec,
    boundary,
    check_audio,
    check_outputs,
    collect,
    compose,
    debug_option,
    echo_paths,
    format_options,
    midi_options,
    model_options,
    output_options,
    output_paths,
    output_target,
    sampling_options,
    save_all,
    seed_option,
    seed_or_new,
    state_or_none,
)
from rwkv_music.compose.options import AbcOptions, SamplingOptions
from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.base import format_for_suffix

# Commands that live in other modules, imported only when run: name → (module, attribute, help).
LAZY_COMMANDS = {
    "train": ("rwkv_music.cli.train", "train", "Train or fine-tune an RWKV-7 music model."),
    "distill": ("rwkv_music.cli.distill", "distill", "Self-distillation: keep a model's good tunes as training data."),
    "export-onnx": ("rwkv_music.cli.export", "export_onnx", "Export a checkpoint to ONNX (--backend onnx)."),
    "export-ncnn": ("rwkv_music.cli.export", "export_ncnn", "Export a checkpoint to ncnn (--backend ncnn)."),
}


# -- the group ----------------------------------------------------------------------------------
class _Group(click.Group):
    """Lists lazy commands with their static help, so ``--help`` imports nothing heavy.

    ``invoke`` applies the same error boundary as every command of this module, so commands
    from other modules (``train``, ``export-*``) also end in one line, not a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        return boundary(super().invoke)(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in LAZY_COMMANDS:
            return command
        module, attr, _help = LAZY_COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(name, f"{name} is not available in this installation ({exc})")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 20)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, message: str) -> click.Command:
    def fail(**_kwargs: Any) -> None:
        raise click.ClickException(message)

    return click.Command(
        name, callback=fail, help=message, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
    )


@click.group(
    cls=_Group,
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music generate-midi -n 4 --seconds 30 --instruments piano,violin
  rwkv-music generate-abc --key G --meter 6/8 -n 8 --midi
  rwkv-music continue tune.mid --model midi.pth -n 2
  rwkv-music render prompts.txt --model abc.pth --samples-per-prompt 4 --out data/ --resume
  rwkv-music info model.pth
""",
)
@click.version_option(__version__, message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@debug_option
def main(verbose: int) -> None:
    """Compose music with RWKV language models (ABC tunes and MIDI)."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# -- composing ------------------------------------------------------------------------------------
GENERATE_MIDI_EPILOG = """\b
Examples:
  generate-midi                                   # one piece from the shipped model into ./out/
  generate-midi -n 4 --seconds 30 --piano-only --png
  generate-midi --model midi.pth --instruments piano,violin --seed 7 --top-p 0.9
  generate-midi --continue-from melody.mid -n 2 --out continuations/
"""


@click.command("generate-midi", context_settings=CONTEXT, epilog=GENERATE_MIDI_EPILOG)
@debug_option  # also here: generate-midi is its own entry point
@boundary  # outermost: options parsed into objects fail as one line too
@model_options
@click.option(
    "-n", "--num", "--num-return-sequences", "n", type=click.IntRange(1, MAX_ROWS), default=1, show_default=True,
    help="Pieces (one batch).",
)
@midi_options
@click.option(
    "--max-tokens", "--max-new-tokens", "max_tokens", type=click.IntRange(min=1), default=2048, show_default=True,
    help="Most new tokens per piece (the hard cap, also with --seconds).",
)
@click.option("--prompt", default=None, help="MIDI-token text to start from, e.g. 'pi:4a:7 t30 pi:4a:0'.")
@click.option("--continue-from", type=click.Path(dir_okay=False), default=None, help="A .mid file to continue.")
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Initial state (.npz, see `state make`).",
)
@seed_option
@sampling_options
@output_options
@click.option("--png", is_flag=True, help="Also write a piano-roll .png per piece.")
@click.option("--wav", is_flag=True, help="Also write a .wav per piece (needs rwkv-music[audio] and a SoundFont).")
@click.option(
    "--soundfont",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="RWKV_MUSIC_SOUNDFONT",
    help="SoundFont for --wav (default: the system's General MIDI one, e.g. Debian's fluid-soundfont-gm).",
)
def generate_midi(
    load: LoadSpec,
    n: int,
    midi: MidiFlags,
    max_tokens: int,
    prompt: str | None,
    continue_from: str | None,
    state_file: str | None,
    seed: int | None,
    sampling: SamplingOptions,
    output: OutputSpec,
    png: bool,
    wav: bool,
    soundfont: str | None,
) -> None:
    """Compose MIDI pieces and write them as .mid files into --out (their paths are printed)."""
    if prompt and continue_from:
        raise click.BadParameter("use either --prompt or --continue-from", param_hint="--prompt")
    options = midi.options(max_tokens)  # bad instruments or limits: fail before loading
    if continue_from and not Path(continue_from).is_file():
        raise RwkvMusicError(f"{continue_from}: no such MIDI file")
    seed = seed_or_new(seed)
    stem = f"{Path(continue_from).stem}-cont-{seed}" if continue_from else f"midi-{seed}"
    extras = ("mid",) + ("png",) * png + ("wav",) * wav
    check_outputs(output_paths(output.out, stem, n, extras), output.force)
    if wav:
        check_audio(soundfont)
    composer = load.composer(default_mode="midi")
    row = Path(continue_from) if continue_from else prompt
    pieces = compose(composer, [row] * n, options, seed, sampling, output.quiet, state_or_none(state_file))
    echo_paths(save_all(pieces, output.out, stem, output.force, extras, soundfont))


def generate_midi_main() -> None:
    """Entry point of the ``generate-midi`` script."""
    generate_midi(prog_name="generate-midi")


main.add_command(generate_midi)


@main.command(
    "generate-abc",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music generate-abc --key G --meter 6/8 -n 4          # four jigs into ./out/
  rwkv-music generate-abc --controls 'S:2;B:8;E:0;B:8' --tempo 120 --midi
  rwkv-music generate-abc --model abc.pth --prompt '|:DFA dAF|' --book
""",
)
@boundary
@model_options
@click.option(
    "-n", "--num", "--num-return-sequences", "n", type=click.IntRange(1, MAX_ROWS), default=1, show_default=True,
    help="Tunes (one batch).",
)
@click.option("--key", "-k", default="D", show_default=True, help="K: key, e.g. D, Gm, Ador.")
@click.option("--meter", default="4/4", show_default=True, help="M: meter, e.g. 6/8, 3/4, C|.")
@click.option("--unit", default="1/8", show_default=True, help="L: unit note length.")
@click.option("--tempo", default=None, help="Q: tempo (bpm or 1/4=120).")
@click.option(
    "--controls",
    default="S:2",
    show_default=True,
    help="Control codes, ';'-separated (S: sections, B: bars, E: similarity).",
)
@click.option("--prompt", default=None, help="First bars of music after the header.")
@click.option("--no-constraints", is_flag=True, help="Plain sampling: no ABC grammar / bar-balance constraint.")
@click.option(
    "--max-tokens", "--max-new-tokens", "max_tokens", type=click.IntRange(min=1), default=1024, show_default=True,
    help="Most new characters per tune.",
)
@click.option(
    "--parts", type=click.IntRange(min=1), default=None, help="Parts per tune (default: the S: control code, else 2)."
)
@click.option(
    "--bars-per-part", type=click.IntRange(min=1), default=None, help="Bars per part (default: the B: code, else 8)."
)
@click.option("--no-cadence", is_flag=True, help="Do not require the tune to end on the tonic of K:.")
@click.option(
    "--free-form", is_flag=True, help="Only keep bars balanced: no parts, line layout or cadence imposed."
)
@click.option(
    "--max-bar-repeats", type=click.IntRange(min=0), default=2, show_default=True,
    help="Most times one bar may be written in a row, under the constraint (0: no limit).",
)
@click.option(
    "--plain-rhythm", is_flag=True,
    help="Allow a tune in one note length (by default, after three bars in one length the next note takes another).",
)
@collect("constrained", lambda no_constraints: not no_constraints, ("no_constraints",))  # runs first
@collect("cadence", lambda no_cadence: not no_cadence, ("no_cadence",))
@collect("vary_rhythm", lambda plain_rhythm: not plain_rhythm, ("plain_rhythm",))
@collect("form", lambda free_form: not free_form, ("free_form",))
@collect(
    "options",
    AbcOptions,
    ("key", "meter", "unit", "tempo", "controls", "constrained", "max_tokens", "form", "parts", "bars_per_part",
     "cadence", "max_bar_repeats", "vary_rhythm"),
)
@click.option("--state", "state_file", type=click.Path(dir_okay=False), default=None, help="Initial state (.npz).")
@seed_option
@sampling_options
@output_options
@click.option(
    "--book", is_flag=True, help="Write all tunes into one tune book (X:1, X:2, ...) instead of one file each."
)
@click.option("--midi", "also_midi", is_flag=True, help="Also write a .mid per tune (through music21).")
@click.option("--musicxml", is_flag=True, help="Also write a .musicxml per tune.")
def generate_abc(
    load: LoadSpec,
    n: int,
    options: AbcOptions,
    prompt: str | None,
    state_file: str | None,
    seed: int | None,
    sampling: SamplingOptions,
    output: OutputSpec,
    book: bool,
    also_midi: bool,
    musicxml: bool,
) -> None:
    """Compose ABC tunes and write them as .abc files into --out (their paths are printed)."""
    seed = seed_or_new(seed)  # (a bad header already failed, in AbcOptions, before any loading)
    stem = f"abc-{seed}"
    check_outputs(_abc_paths(output.out, stem, n, book, also_midi, musicxml), output.force)
    composer = load.composer(default_mode="abc")
    pieces = compose(composer, [prompt] * n, options, seed, sampling, output.quiet, state_or_none(state_file))
    echo_paths(_save_abc(pieces, output.out, stem, output.force, book, also_midi, musicxml))


def _abc_paths(out: str, stem: str, n: int, book: bool, also_midi: bool, musicxml: bool) -> list[Path]:
    extras = ("mid",) * also_midi + ("musicxml",) * musicxml
    if book:
        return [_book_path(out, stem)] + output_paths(out, stem, n, extras, main="abc")
    return output_paths(out, stem, n, ("abc",) + extras)


def _book_path(out: str, stem: str) -> Path:
    """--book's one .abc: ``out/stem.abc``, or ``--out`` itself when it names an .abc file."""
    folder, file = output_target(out, "abc")
    return file if file is not None else folder / f"{stem}.abc"


def _save_abc(
    pieces: list[Any], out: str, stem: str, force: bool, book: bool, also_midi: bool, musicxml: bool
) -> list[Path]:
    extras = ("mid",) * also_midi + ("musicxml",) * musicxml
    if not book:
        return save_all(pieces, out, stem, force, ("abc",) + extras)
    from rwkv_music.export.abc import write_abc

    book_path = _book_path(out, stem)
    book_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [write_abc([p.text for p in pieces], book_path, force, titles=[p.title for p in pieces])]
    return paths + (save_all(pieces, out, stem, force, extras, required=0, main="abc") if extras else [])


@main.command(
    "continue",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  rwkv-music continue melody.mid -n 3 --seconds 20      # MIDI: the shipped MIDI model
  rwkv-music continue tune.abc --model abc.pth --midi   # ABC: first tune of the file
""",
)
@boundary
@click.argument("file", type=click.Path(dir_okay=False))
@model_options
@click.option(
    "-n", "--num", "--num-return-sequences", "n", type=click.IntRange(1, MAX_ROWS), default=1, show_default=True,
    help="Continuations (one batch).",
)
@midi_options
@click.option("--controls", default="S:2", show_default=True, help="ABC control codes for the continuation.")
@click.option(
    "--max-tokens", "--max-new-tokens", "max_tokens", type=click.IntRange(min=1), default=None,
    help="Most new tokens (default 2048 MIDI, 1024 ABC).",
)
@seed_option
@sampling_options
@output_options
@click.option("--png", is_flag=True, help="Also write a piano-roll .png per piece.")
@click.option("--midi", "also_midi", is_flag=True, help="ABC: also write a .mid per tune.")
def continue_(
    file: str,
    load: LoadSpec,
    n: int,
    midi: MidiFlags,
    controls: str,
    max_tokens: int | None,
    seed: int | None,
    sampling: SamplingOptions,
    output: OutputSpec,
    png: bool,
    also_midi: bool,
) -> None:
    """Continue FILE (.mid or .abc) and write the continuations into --out."""
    fmt = format_for_suffix(Path(file).suffix)
    if fmt is None:
        raise click.BadParameter(f"{file}: expected a .mid, .midi or .abc file", param_hint="FILE")
    if not Path(file).is_file():
        raise RwkvMusicError(f"{file}: no such file")
    values = {"seconds": midi.seconds, "instruments": midi.instruments, "constrained": midi.constrained}
    values |= {"max_tokens": max_tokens, "controls": controls}
    if midi.key is not None:  # MIDI: the scale rule; an ABC tune keeps its own K: (a bad key fails here)
        values["key"] = midi.midi_key
    options = fmt.options_class(**format_options(fmt, values, ignore=("controls",)))
    seed = seed_or_new(seed)
    stem = f"{Path(file).stem}-cont-{seed}"
    own = fmt.suffix.lstrip(".")  # the piece's own file, then conversions (music21 may fail on some tunes)
    extras = (own,) + ("mid",) * (also_midi and own != "mid") + ("png",) * png
    check_outputs(output_paths(output.out, stem, n, extras), output.force)
    composer = load.composer(mode=fmt.name)
    pieces = compose(composer, [Path(file)] * n, options, seed, sampling, output.quiet)
    echo_paths(save_all(pieces, output.out, stem, output.force, extras))


def _register_tools() -> None:
    from rwkv_music.cli.tools import info, models, render, state

    for command in (info, models, state, render):
        main.add_command(command)


_register_tools()
