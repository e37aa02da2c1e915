"""The command line: CliRunner for behaviour, real subprocesses for entry points and imports."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import mido
import pytest
from click.testing import CliRunner

from rwkv_music.cli.main import generate_midi, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnxruntime", "ncnn", "music21", "matplotlib")
COMMANDS = ["generate-midi", "generate-abc", "continue", "info", "render", "state", "state make", "state show"]


@pytest.fixture(scope="module")
def midi_model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=20096, n_layer=2)


@pytest.fixture(scope="module")
def abc_model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=128, n_layer=2)


def _run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_help_of_every_command_imports_no_runtime() -> None:
    code = (
        "import sys\nfrom rwkv_music.cli.main import main\n"
        f"for cmd in [[]] + [c.split() for c in {COMMANDS!r}]:\n"
        "    try:\n        main(cmd + ['--help'], prog_name='rwkv-music')\n    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
        f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    for name in (
        "generate-midi",
        "generate-abc",
        "continue",
        "render",
        "info",
        "state",
        "train",
        "export-onnx",
        "export-ncnn",
    ):
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples_or_subcommands(command: str) -> None:
    result = _run(command.split() + ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output or "Commands:" in result.output


def test_generate_midi_writes_n_files_that_mido_opens(midi_model: Path, tmp_path: Path) -> None:
    result = _run(
        [
            "generate-midi",
            "--model",
            midi_model,
            "-n",
            2,
            "--max-tokens",
            8,
            "--seed",
            4,
            "--instruments",
            "piano,violin",
            "--out",
            tmp_path,
            "--png",
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.name for p in paths] == ["midi-4-00.mid", "midi-4-00.png", "midi-4-01.mid", "midi-4-01.png"]
    for p in paths[::2]:
        assert len(mido.MidiFile(p).tracks) == 1
    again = _run(["generate-midi", "--model", midi_model, "-n", 2, "--seed", 4, "--out", tmp_path, "-q"])
    assert again.exit_code == 2 and "exists" in again.stderr and "--force" in again.stderr
    forced = _run(
        [
            "generate-midi",
            "--model",
            midi_model,
            "-n",
            1,
            "--max-tokens",
            3,
            "--seed",
            4,
            "--out",
            tmp_path,
            "-q",
            "--force",
        ]
    )
    assert forced.exit_code == 0


@pytest.fixture(scope="module")
def onnx_model(midi_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    onnx_export = pytest.importorskip("rwkv_music.backends.onnx_export")
    return onnx_export.export(midi_model, tmp_path_factory.mktemp("onnx") / "m.onnx")


def test_generate_midi_entry_point_runs_as_a_subprocess_without_torch(onnx_model: Path, tmp_path: Path) -> None:
    # the onnx backend keeps the subprocess light; `python -m rwkv_music render` with torch runs in test_render
    code = (
        "import sys\nfrom rwkv_music.cli.main import generate_midi_main\nsys.argv[0] = 'generate-midi'\n"
        "try:\n    generate_midi_main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    result = _python(
        code, "--model", str(onnx_model), "--backend", "onnx", "--max-tokens", "5", "--seed", "1", "-q", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(Path("out/midi-1-00.mid")), "TORCH", "False"]  # default --out is ./out/
    assert mido.MidiFile(tmp_path / "out" / "midi-1-00.mid").length >= 0


def test_generate_abc_writes_tunes_that_music21_reads(abc_model: Path, tmp_path: Path) -> None:
    from music21 import converter

    result = _run(
        [
            "generate-abc",
            "--model",
            abc_model,
            "-n",
            2,
            "--key",
            "G",
            "--meter",
            "6/8",
            "--max-tokens",
            60,
            "--parts",
            1,
            "--bars-per-part",
            4,
            "--seed",
            2,
            "--midi",
            "--out",
            tmp_path,
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    abc_files = sorted(tmp_path.glob("*.abc"))
    assert len(abc_files) == 2
    for path in abc_files:
        assert converter.parse(str(path), format="abc") is not None
    assert all(mido.MidiFile(p).length >= 0 for p in tmp_path.glob("*.mid"))


def test_generate_abc_book_numbers_tunes_and_drops_control_codes(abc_model: Path, tmp_path: Path) -> None:
    result = _run(
        [
            "generate-abc",
            "--model",
            abc_model,
            "-n",
            3,
            "--max-tokens",
            6,
            "--seed",
            3,
            "--no-constraints",
            "--controls",
            "S:2;B:8",
            "--book",
            "--out",
            tmp_path,
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "abc-3.abc").read_text()
    assert [line for line in text.splitlines() if line.startswith("X:")] == ["X:1", "X:2", "X:3"]
    assert "S:2" not in text and text.count("K:D") == 3


def test_continue_a_midi_file(midi_model: Path, tmp_path: Path) -> None:
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    src = tmp_path / "melody.mid"
    MidiTokenizer().text_to_midi("pi:3c:a t40 pi:3c:0 pi:40:9 t40 pi:40:0").save(src)
    result = _run(
        ["continue", src, "--model", midi_model, "-n", 2, "--max-tokens", 4, "--seed", 8, "--out", tmp_path / "o", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["melody-cont-8-00.mid", "melody-cont-8-01.mid"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["generate-midi", "--model", "missing.pth"], 2, "no such model file"),
        (["generate-midi", "--model", "{midi}", "--instruments", "piano,kazoo"], 2, "kazoo"),
        (["generate-abc", "--model", "{midi}"], 2, "mismatch"),
        (["generate-midi", "--model", "{abc}"], 2, "mismatch"),
        (["generate-abc", "--model", "{abc}", "--key", "H"], 2, "invalid key"),
        (["generate-abc", "--model", "{abc}", "--meter", "5/3"], 2, "invalid meter"),
        (["continue", "{bad_mid}", "--model", "{midi}"], 2, "bad.mid"),
        (["continue", "nowhere.mid", "--model", "{midi}"], 2, "no such file"),
        (["render", "nowhere.txt", "--model", "{midi}", "--out", "o"], 2, "no such prompts file"),
        (["state", "show", "{bad_mid}"], 2, "bad.mid"),
        (["generate-midi", "--seconds", "-3"], 2, "--seconds"),
        (["generate-midi", "--prompt", "pi:3c:a", "--continue-from", "x.mid"], 2, "--prompt"),
        (["generate-midi", "--piano-only", "--instruments", "violin"], 2, "--piano-only"),
        (["render", "--out", "o"], 2, "PROMPTS_OR_DIR"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(
    args: list[str],
    code: int,
    message: str,
    midi_model: Path,
    abc_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"this is not a MIDI file")
    args = [a.format(midi=midi_model, abc=abc_model, bad_mid=bad) for a in args]
    monkeypatch.chdir(tmp_path)
    result = _run(args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    usage_error = message.startswith("--") or message == "PROMPTS_OR_DIR"  # click prints the usage first
    if not usage_error:  # a project error: exit 2 like usage errors, but one line and no usage text
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def test_info_shows_version_sizes_and_mode(abc_model: Path) -> None:
    result = _run(["info", abc_model])
    assert result.exit_code == 0
    out = result.stdout
    assert "RWKV-7" in out and "128 ids (abc mode)" in out and "float32" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("layers", "width"))] == ["2", "64"]


def test_state_make_show_and_use(abc_model: Path, tmp_path: Path) -> None:
    made = _run(
        ["state", "make", "--model", abc_model, "--prompt", "S:3\nL:1/8\nM:6/8\nK:D\n", "--out", tmp_path / "s.npz"]
    )
    assert made.exit_code == 0, made.output
    shown = _run(["state", "show", tmp_path / "s.npz"])
    assert "RWKV-7" in shown.stdout and "att_kv    (2, 1, 2, 32, 32)" in shown.stdout
    used = _run(
        [
            "generate-abc",
            "--model",
            abc_model,
            "--state",
            tmp_path / "s.npz",
            "--no-constraints",
            "--max-tokens",
            4,
            "--seed",
            1,
            "--out",
            tmp_path,
            "-q",
        ]
    )
    assert used.exit_code == 0, used.output


def test_render_abc_to_midi_converts_a_folder(tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / "two.abc").write_text(
        "X:1\nT:a\nL:1/8\nM:2/4\nK:G\nGABc|d4|]\n\nX:2\nT:b\nL:1/8\nM:2/4\nK:D\nDEFG|A4|]\n"
    )
    result = _run(["render", "--abc-to-midi", tmp_path / "abc", "--out", tmp_path / "mid", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "mid").glob("*.mid")) == ["two_0001.mid", "two_0002.mid"]
    assert "2 written" in result.stdout


def test_python_m_rwkv_music_runs_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "rwkv_music", "--version"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "rwkv-music" in result.stdout


def test_a_missing_lazy_command_fails_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.cli.main as cli

    monkeypatch.setitem(cli.LAZY_COMMANDS, "export-ncnn", ("rwkv_music.no_such_module", "x", "Export to ncnn."))
    result = _run(["export-ncnn", "model.pth", "out", "--dtype", "fp16"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "not available" in result.stderr


def test_generate_midi_is_its_own_click_command() -> None:
    result = CliRunner().invoke(generate_midi, ["--help"], prog_name="generate-midi")
    assert result.exit_code == 0 and "Usage: generate-midi" in result.output


@pytest.mark.skipif(importlib.util.find_spec("fluidsynth") is not None, reason="FluidSynth is installed")
def test_wav_without_fluidsynth_fails_before_loading_the_model(tmp_path: Path) -> None:
    result = _run(["generate-midi", "--model", tmp_path / "never-read.pth", "--wav", "--out", tmp_path, "-q"])
    assert result.exit_code == 2 and "FluidSynth" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_threads_and_int8_reach_the_runtime(abc_model: Path, tmp_path: Path) -> None:
    """`--threads` sets the torch runtime's threads; `--dtype int8` composes with the int8 kernels."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 afterwards is the option's doing
    try:
        result = _run(["generate-abc", "--model", abc_model, "--dtype", "int8", "--threads", 1, "-n", 1,
                       "--max-tokens", 60, "--bars-per-part", 4, "--parts", 1, "--seed", 4, "--out", tmp_path, "-q"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        assert len(list(tmp_path.glob("*.abc"))) == 1
    finally:
        torch.set_num_threads(before)
    bad = CliRunner().invoke(main, ["generate-abc", "--model", str(abc_model), "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output


@pytest.mark.parametrize("device", ["tpu", "", "meta", "vulkan", "bogus", "cuda:x", "cpu:0"])
@pytest.mark.parametrize("command", ["generate-midi", "generate-abc", "render"])
def test_a_bad_device_is_a_one_line_usage_error(command: str, device: str, tmp_path: Path) -> None:
    result = _run([command, "--device", device, "--out", tmp_path, *(["p.txt"] if command == "render" else [])])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--device" in errors[0], result.stderr
    assert not (tmp_path / "manifest.jsonl").exists()


def test_the_device_kind_must_suit_the_backend(tmp_path: Path) -> None:
    vulkan = _run(["generate-midi", "--backend", "ncnn", "--device", "vulkan:1", "--model", "missing.param"])
    assert vulkan.exit_code == 2 and "no such model file" in vulkan.stderr  # vulkan passed for ncnn
    cuda = _run(["generate-midi", "--backend", "ncnn", "--device", "cuda"])
    assert cuda.exit_code == 2 and "the ncnn backend runs on cpu or vulkan" in cuda.stderr


def test_train_refuses_a_bad_device(tmp_path: Path) -> None:
    from rwkv_music.cli.train import train

    result = CliRunner().invoke(train, ["--out", str(tmp_path / "run"), "--device", "vulkan"])
    assert result.exit_code == 2 and "'vulkan' is not a device" in result.output


def test_options_are_parsed_once_into_the_api_objects(
    midi_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rwkv_music.compose.composer import Composer
    from rwkv_music.compose.options import MidiOptions, SamplingOptions

    seen = {}
    real = Composer.compose_rows

    def spy(self: Composer, inputs: list, options: object, **kwargs: object) -> list:
        seen.update(inputs=inputs, options=options, **kwargs)
        return real(self, inputs, options, **kwargs)

    monkeypatch.setattr(Composer, "compose_rows", spy)
    args = ["generate-midi", "--model", midi_model, "-n", 2, "--piano-only", "--max-tokens", 3, "--seed", 4]
    result = _run([*args, "--temperature", 0.5, "--top-k", 7, "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == MidiOptions(max_tokens=3, instruments=("piano",))
    assert seen["sampling"] == SamplingOptions(None, {"temperature": 0.5, "top_k": 7})
    assert seen["inputs"] == [None, None] and seen["seed"] == 4


def test_continue_an_abc_tune_and_midi_only_flags(abc_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "tune.abc"
    src.write_text("X:1\nT:t\nL:1/8\nM:2/4\nK:G\nGABc|d4|\n")
    result = _run(["continue", src, "--model", abc_model, "--max-tokens", 100, "--seed", 3, "--out", tmp_path / "o"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["tune-cont-3-00.abc"]
    text = (tmp_path / "o" / "tune-cont-3-00.abc").read_text()
    assert text.startswith("X:1\nT:t\nL:1/8\nM:2/4\nK:G\nGABc|d4|")  # the title is kept (issue 18)
    assert len(text) > len("X:1\nT:t\nL:1/8\nM:2/4\nK:G\nGABc|d4|\n")  # and music was added
    tight = _run(["continue", src, "--model", abc_model, "--max-tokens", 4, "--seed", 3, "--out", tmp_path / "t"])
    assert tight.exit_code != 0 and "raise --max-tokens" in tight.output  # no room for a bar: said, not silent
    stray = _run(["continue", src, "--model", abc_model, "--seconds", 3, "--out", tmp_path / "p"])
    assert stray.exit_code == 2 and "--seconds: not an option of ABC models" in stray.stderr


def test_generate_abc_form_options_and_a_budget_too_small(abc_model: Path, tmp_path: Path) -> None:
    """The tune form from the CLI: parts x bars, a clear error when --max-tokens cannot hold it."""
    from rwkv_music.formats.abc.judge import judge_tune

    result = _run(["generate-abc", "--model", abc_model, "-n", 2, "--meter", "3/4", "--parts", 2, "--bars-per-part", 4,
                   "--seed", 5, "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    for path in sorted(tmp_path.glob("*.abc")):
        report = judge_tune(path.read_text())
        assert report.strictly_balanced and report.part_bars == (4, 4) and report.ends_on_tonic, path.read_text()
    small = _run(["generate-abc", "--model", abc_model, "--max-tokens", 20, "--out", tmp_path / "s", "-q"])
    assert small.exit_code != 0 and "too small for the form" in small.stderr
    assert len(small.stderr.strip().splitlines()) == 1
    free = _run(["generate-abc", "--model", abc_model, "--free-form", "--parts", 2, "--out", tmp_path / "f", "-q"])
    assert free.exit_code != 0 and "form" in free.stderr


def test_out_may_name_the_file(midi_model: Path, abc_model: Path, tmp_path: Path) -> None:
    """`-o song.mid` writes song.mid (not a folder called song.mid); several pieces are named after it."""
    one = _run(["generate-midi", "--model", midi_model, "--max-tokens", 4, "--seed", 1, "-o", tmp_path / "song.mid",
                "--png", "-q"])
    assert one.exit_code == 0, one.output
    assert one.stdout.split() == [str(tmp_path / "song.mid"), str(tmp_path / "song.png")]
    assert (tmp_path / "song.mid").is_file() and len(mido.MidiFile(tmp_path / "song.mid").tracks) >= 1
    several = _run(["generate-midi", "--model", midi_model, "-n", 2, "--max-tokens", 4, "--seed", 1,
                    "-o", tmp_path / "new" / "take.midi", "-q"])
    assert several.exit_code == 0, several.output
    assert several.stdout.split() == [str(tmp_path / "new" / f"take-0{i}.midi") for i in range(2)]
    again = _run(["generate-midi", "--model", midi_model, "--max-tokens", 4, "-o", tmp_path / "song.mid", "-q"])
    assert again.exit_code == 2 and "exists" in again.stderr  # an existing file is not overwritten by default
    book = _run(["generate-abc", "--model", abc_model, "-n", 2, "--max-tokens", 60, "--bars-per-part", 4, "--parts", 1,
                 "--book", "--seed", 2, "-o", tmp_path / "tunes.abc", "-q"])
    assert book.exit_code == 0, book.output
    assert book.stdout.split() == [str(tmp_path / "tunes.abc")]
    assert (tmp_path / "tunes.abc").read_text().count("X:") == 2
    wrong = _run(["generate-midi", "--model", midi_model, "-o", tmp_path / "tunes.abc", "-q"])
    assert wrong.exit_code == 2 and "tunes.abc is a file; give a folder, or a file name ending in .mid" in wrong.stderr
