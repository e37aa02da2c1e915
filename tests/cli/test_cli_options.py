"""One option vocabulary across the commands, honest progress bars, exit codes and --debug (issues 17, 18)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import pytest
from click.testing import CliRunner

from rwkv_music.cli import common
from rwkv_music.cli.main import generate_midi, main
from rwkv_music.errors import RwkvMusicError


@pytest.fixture(scope="module")
def midi_model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=20096, n_layer=2)


@pytest.fixture(scope="module")
def abc_model(checkpoint_path: Callable[..., Path]) -> Path:
    return checkpoint_path("7", vocab_size=128, n_layer=2)


def _run(args: list[Any], **kw: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _commands() -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield f"{name} {sub}", cmd.get_command(ctx, sub)
        else:
            yield name, cmd


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option)]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


# -- one vocabulary ------------------------------------------------------------------------------
def test_every_option_of_every_command_has_help() -> None:
    missing = [(name, p.opts) for name, cmd in [("rwkv-music", main), *_commands()] for p in _options(cmd)
               if not p.help and "--help" not in p.opts and "--version" not in p.opts]
    assert missing == []


def test_a_short_flag_means_the_same_option_in_every_command() -> None:
    uses: dict[str, list[set[str]]] = {}
    for _name, cmd in _commands():
        for p in _options(cmd):
            longs = {o for o in p.opts + p.secondary_opts if o.startswith("--")}
            for short in (o for o in p.opts if not o.startswith("--")):
                uses.setdefault(short, []).append(longs)
    shared = {short: set.intersection(*longs) for short, longs in uses.items()}
    assert all(shared.values()), {s: uses[s] for s, common_names in shared.items() if not common_names}
    assert shared["-k"] == {"--key"}  # render's -k (samples per prompt) is gone
    assert "--num-return-sequences" in shared["-n"]


def test_seed_is_random_when_omitted_in_every_command() -> None:
    seeds = {name: p for name, cmd in _commands() for p in _options(cmd) if p.name == "seed"}
    assert {"generate-midi", "generate-abc", "continue", "render", "train"} <= set(seeds)
    assert {name: p.default for name, p in seeds.items()} == {name: None for name in seeds}


@pytest.mark.parametrize(
    "command, args, param, value",
    [
        ("generate-midi", ["--max-new-tokens", "7"], "max_tokens", 7),
        ("generate-midi", ["--num-return-sequences", "3"], "n", 3),
        ("generate-abc", ["--max-new-tokens", "9"], "max_tokens", 9),
        ("continue", ["x.mid", "--num-return-sequences", "2", "--max-new-tokens", "5"], "n", 2),
        ("render", ["p.txt", "--out", "o", "--num-return-sequences", "4"], "samples_per_prompt", 4),
        ("render", ["p.txt", "--out", "o", "-n", "5", "--max-new-tokens", "11"], "samples_per_prompt", 5),
    ],
)
def test_hugging_face_aliases_set_the_same_option(command: str, args: list[str], param: str, value: int) -> None:
    cmd = main.get_command(click.Context(main), command)
    ctx = cmd.make_context(command, list(args))
    assert ctx.params[param] == value
    if "--max-new-tokens" in args:
        assert ctx.params["max_tokens"] == int(args[args.index("--max-new-tokens") + 1])


def test_render_refuses_the_old_k_flag_and_documents_the_change() -> None:
    result = _run(["render", "p.txt", "--out", "o", "-k", "2"])
    assert result.exit_code == 2 and "-k" in result.output
    help_text = " ".join(_run(["render", "--help"]).output.split())
    assert "--num-return-sequences" in help_text and "-k was this flag's short form" in help_text


def test_train_help_names_every_reward_and_every_option() -> None:
    text = " ".join(_run(["train", "--help"]).output.split())
    for reward in ("abc-strict", "abc-bar-balance,", "abc-bar-balance-local", "midi-stuck-notes", "token:<id>"):
        assert reward in text, reward


def test_train_prints_training_and_validation_loss_in_bits(capsys: pytest.CaptureFixture[str]) -> None:
    from rwkv_music.cli.train import _progress_printer

    show = _progress_printer(1)
    show({"step": 4, "loss": 2.0, "loss_ema": 1.0, "lr": 1e-3, "elapsed_s": 3.0, "val_bits": 2.5})
    err = capsys.readouterr().err
    assert f"loss {2.0 / math.log(2):.4f} bits/token" in err and f"ema {1.0 / math.log(2):.4f}" in err
    assert "val 2.5000 bits/token" in err


def test_sampling_flags_reach_the_compose_call(midi_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv_music.cli.main as cli

    seen: dict[str, Any] = {}

    def fake_compose(composer: Any, inputs: list[Any], options: Any, seed: int, sampling: Any, *a: Any) -> list:
        seen.update(options=options, sampling=sampling, n=len(inputs))
        return []

    monkeypatch.setattr(cli, "compose", fake_compose)
    result = _run(["generate-midi", "--model", midi_model, "--out", tmp_path, "--seed", 1,
                   "--min-p", "0.05", "--presence-penalty", "0.4", "--frequency-penalty", "0.3",
                   "--num-return-sequences", 2, "--max-new-tokens", 33,
                   "--instruments", "acoustic grand piano,Cello,40"])
    assert result.exit_code == 0, result.output
    config = seen["sampling"].config("default-midi")
    assert (config.min_p, config.presence_penalty, config.frequency_penalty) == (0.05, 0.4, 0.3)
    assert seen["n"] == 2 and seen["options"].max_tokens == 33
    assert seen["options"].instruments == ("piano", "bass", "violin")


def test_an_unknown_instrument_lists_the_valid_names(midi_model: Path, tmp_path: Path) -> None:
    result = _run(["generate-midi", "--model", midi_model, "--out", tmp_path, "--instruments", "piano,viollin"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "'viollin'" in line and "did you mean 'violin'" in line and "General MIDI" in line
    assert "bin index" not in line
    for name in ("percussion", "drum", "piano", "violin", "pad"):
        assert name in line


def test_a_preset_of_the_other_mode_is_refused_in_one_line(midi_model: Path, tmp_path: Path) -> None:
    result = _run(["generate-midi", "--model", midi_model, "--out", tmp_path, "--preset", "chatrwkv-abc", "-q"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "chatrwkv-abc" in line and "ABC" in line and "default-midi" in line
    assert list(tmp_path.iterdir()) == []


def test_a_dtype_the_export_cannot_run_is_refused_not_ignored(midi_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("ncnn")  # the [test] extra installs it
    from rwkv_music.cli.export import export_ncnn

    made = CliRunner().invoke(export_ncnn, [str(midi_model), str(tmp_path / "m")])
    assert made.exit_code == 0, made.output
    result = _run(["generate-midi", "--backend", "ncnn", "--model", tmp_path / "m.param", "--dtype", "int8",
                   "--out", tmp_path / "out", "-q"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "int8" in line and "fp32" in line
    assert not (tmp_path / "out").exists()


# -- progress ------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _FakeComposer:
    mode = "midi"

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def compose_rows(self, inputs: list[Any], options: Any, *, callback: Callable[[int, int], None],
                     **_kw: Any) -> list:
        for step in range(1, self.steps + 1):
            callback(step, options.max_tokens)
        return []


def test_no_progress_bar_when_stderr_is_not_a_terminal(abc_model: Path, tmp_path: Path) -> None:
    result = _run(["generate-abc", "--model", abc_model, "--out", tmp_path, "--max-tokens", 40, "--free-form",
                   "--seed", 3])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "tok/s" not in result.stderr and "it/s" not in result.stderr


def test_the_bar_total_follows_the_stop_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv_music.compose.options import MidiOptions, SamplingOptions

    for seconds, expected_total in ((None, 50), (4.0, None)):
        terminal = _Terminal()
        monkeypatch.setattr("sys.stderr", terminal)
        bars: list[Any] = []
        real_init = common.Progress.__call__

        def spy(self: common.Progress, done: int, total: int, _real: Any = real_init) -> None:
            _real(self, done, total)
            if self.bar is not None and self.bar not in bars:
                bars.append(self.bar)

        monkeypatch.setattr(common.Progress, "__call__", spy)
        options = MidiOptions(seconds=seconds, max_tokens=50)
        common.compose(_FakeComposer(7), [None], options, 1, SamplingOptions(), quiet=False)
        assert len(bars) == 1 and bars[0].total == expected_total and bars[0].n == 7
        drawn = terminal.getvalue()
        if seconds:  # a count without a total: no percentage, no ETA
            assert "~4 s of music" in drawn and "%" not in drawn and "/50" not in drawn
        else:
            assert "/50" in drawn


def test_quiet_or_piped_progress_never_imports_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a log file
    progress = common.Progress(False, "x")
    progress(3, 10)
    assert progress.bar is None
    monkeypatch.setattr("sys.stderr", _Terminal())
    quiet = common.Progress(True, "x")
    quiet(3, 10)
    assert quiet.bar is None


# -- the error boundary (issue 17) ---------------------------------------------------------------
def _explode(*_a: Any, **_kw: Any) -> None:
    raise ValueError("boom inside")


def test_an_unexpected_error_is_one_line_naming_the_command(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setattr(common.LoadSpec, "composer", _explode)
    result = _run(["generate-midi", "--out", tmp_path, "-q"])
    assert result.exit_code == 1
    line = _one_error_line(result.stderr)
    assert "generate-midi" in line and "ValueError: boom inside" in line and "--debug" in line
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(common.LoadSpec, "composer", _explode)
    grouped = _run(["--debug", "generate-midi", "--out", tmp_path, "-q"])
    assert isinstance(grouped.exception, ValueError) and grouped.exit_code == 1
    alone = CliRunner().invoke(generate_midi, ["--debug", "--out", str(tmp_path), "-q"], prog_name="generate-midi")
    assert isinstance(alone.exception, ValueError)


def test_project_errors_exit_2_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*_a: Any, **_kw: Any) -> None:
        raise RwkvMusicError("model.pth: something the user can fix\nsecond line")

    monkeypatch.setattr(common.LoadSpec, "composer", refuse)
    result = _run(["generate-abc", "--out", tmp_path, "-q"])
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == "Error: model.pth: something the user can fix"


def test_train_errors_go_through_the_same_boundary(tmp_path: Path) -> None:
    result = _run(["train", "--objective", "reinforce", "--out", tmp_path / "rl", "--steps", 1])
    assert result.exit_code == 2
    assert "--init" in _one_error_line(result.stderr)


def test_int8_is_spelt_dtype_int8_for_both_exporters(checkpoint_path: Callable[..., Path], tmp_path: Path) -> None:
    pytest.importorskip("onnx")  # the [test] extra installs it
    import json

    from rwkv_music.cli.export import export_onnx

    ckpt = str(checkpoint_path("7", vocab_size=128, n_layer=1))
    result = CliRunner().invoke(export_onnx, [ckpt, str(tmp_path / "a.onnx"), "--dtype", "int8"])
    assert result.exit_code == 0, result.output
    flag = CliRunner().invoke(export_onnx, [ckpt, str(tmp_path / "b.onnx"), "--int8"])
    assert flag.exit_code == 0, flag.output
    sidecars = [json.loads((tmp_path / f"{n}.onnx.json").read_text()) for n in "ab"]
    assert sidecars[0] == sidecars[1] and sidecars[0]["dtype"] == "fp32" and sidecars[0].get("quantization")


def test_render_without_seed_draws_one_and_resume_reuses_it(abc_model: Path, tmp_path: Path) -> None:
    import json

    prompts = tmp_path / "p.txt"
    prompts.write_text("|:DFA dAF|\n|:GAB cBA|\n")
    args = ["render", prompts, "--model", abc_model, "--out", tmp_path / "out", "--max-tokens", 24,
            "--no-constraints", "-q"]
    first = _run(args + ["--max-samples", 1])
    assert first.exit_code == 0, first.output
    seed = json.loads((tmp_path / "out" / "render.json").read_text())["seed"]
    assert f"seed {seed}" in first.stderr
    rest = _run(args + ["--resume"])
    assert rest.exit_code == 0, rest.output
    assert "seed" not in rest.stderr and "2/2 samples (1 new)" in rest.stdout


@pytest.mark.parametrize("command", [["generate-midi"], ["generate-abc"]])
def test_a_piece_count_no_run_can_hold_is_refused_before_any_work(command: list[str], tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    result = _run([*command, "-n", str(10**9), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "1<=x<=4096" in result.output
    assert time.perf_counter() - start < 5 and not (tmp_path / "o").exists()  # no list of 10**9 paths first


def test_render_without_a_model_picks_the_mode_its_prompts_are_written_in(tmp_path: Path) -> None:
    import json

    from rwkv_music.cli.tools import _MIDI_WORD, _guess_mode
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    tok = MidiTokenizer()
    words = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert all(_MIDI_WORD.match(w) for w in words)  # every word of the reference vocabulary reads as MIDI
    cases = {"m.txt": "pi:3c:a t10 pi:3c:0\n", "w.txt": "<start> pi:3c:a t125\n", "a.txt": "L:1/8\nM:6/8\nK:D\n",
             "s.txt": "S:2\n", "j.jsonl": json.dumps({"prompt": "t5 pi:40:7"}) + "\n",
             "f.jsonl": json.dumps({"file": "x.abc"}) + "\n", "g.jsonl": json.dumps({"file": "x.mid"}) + "\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    guessed = {name: _guess_mode(str(tmp_path / name)) for name in cases}
    assert guessed == {"m.txt": "midi", "w.txt": "midi", "a.txt": "abc", "s.txt": "abc", "j.jsonl": "midi",
                       "f.jsonl": "abc", "g.jsonl": "midi"}
