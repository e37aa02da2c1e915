"""Self-distillation (rwkv_music.train.distill): the verdict names each failed check, documents train on
the music only, the mix has the asked shares, and kept tunes really pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from rwkv_music import Composer
from rwkv_music.cli.main import main
from rwkv_music.errors import RwkvMusicError
from rwkv_music.train.data import ABC_BOS, ABC_EOS, Document, load_documents, save_documents
from rwkv_music.train.distill import (
    distill_documents,
    distinct_bar_share,
    read_accepted,
    requested_parts,
    sample_accepted,
    tune_document,
    tune_verdict,
)

HEADER = "S:2\nL:1/8\nM:2/4\nK:D\n"
PART_A = "|: DF AF | GB AF | EF GA | Bc d2 |\nAF dF | GE cE | FA EC | D4 :|\n"
PART_B = "|: fd ed | cA BG | FA dA | Bc d2 |\nfa gf | ed cB | AF GE | D4 :|\n"
GOOD = HEADER + PART_A + PART_B


def test_a_good_two_part_tune_is_kept() -> None:
    verdict = tune_verdict(GOOD)
    assert verdict.keep, verdict.failed
    assert requested_parts(GOOD) == 2


@pytest.mark.parametrize(
    "text, reason, failed",
    [
        (HEADER + PART_A, "stop", "parts"),  # one part where S:2 asks two
        (HEADER + PART_A + PART_B.replace("D4 :|", "E4 :|"), "stop", "tonic"),  # ends on E in D major
        (HEADER + PART_A + PART_B.replace("| ed cB |", "| ed cBA |"), "stop", "strict"),  # an overfull bar
        (HEADER + PART_A + PART_B.replace("fd ed", "fd  ed"), "stop", "spaces"),
        (GOOD, "max_tokens", "stop"),  # cut by the length cap
        (HEADER + PART_A + "|: fd ed | cA BG | FA dA | Bc d2 | fd ed | Bc d2 :|\n", "stop", "regular"),  # 6 bars
        (HEADER + "|: DF AF | DF AF | DF AF | DF AF |\nDF AF | DF AF | DF AF | D4 :|\n" * 2, "stop", "distinct"),
        (GOOD + "\nX: an extra line\n", "stop", "tidy"),  # music after the tune's end
    ],
)
def test_each_failed_check_is_named(text: str, reason: str, failed: str) -> None:
    verdict = tune_verdict(text, reason)
    assert failed in verdict.failed and not verdict.keep


def test_the_variety_checks_run_only_when_asked() -> None:
    assert tune_verdict(GOOD, variety=True).keep
    quavers = HEADER + PART_A.replace("Bc d2", "Bc dd").replace("D4", "DDDD") + PART_B.replace(
        "Bc d2", "Bc dd").replace("D4", "DDDD")  # every note a quaver
    assert tune_verdict(quavers).keep and tune_verdict(quavers, variety=True).failed == ("rhythm",)
    thrice = GOOD.replace("| GB AF | EF GA |", "| DF AF | DF AF |")  # the first bar three times running
    assert tune_verdict(thrice).keep and tune_verdict(thrice, variety=True).failed == ("repeats",)


def test_distinct_bars_ignore_repeat_marks_and_ending_numbers() -> None:
    assert distinct_bar_share(HEADER + "|: AB cd :|1 AB cd :|2 AB cd |]\n") == pytest.approx(1 / 3)
    assert distinct_bar_share(HEADER + "AB cd | AB c2 |]\n") == 1.0  # a different duration is a different bar
    assert distinct_bar_share(HEADER) == 0.0


def test_a_document_trains_on_the_music_and_the_end_only() -> None:
    tokens = list(GOOD.encode("ascii"))
    doc = tune_document(tokens, "t")
    assert doc.ids[0] == ABC_BOS and doc.ids[-1] == ABC_EOS and list(doc.ids[1:-1]) == tokens
    first_music = 1 + len(HEADER)
    assert not doc.mask[:first_music].any() and doc.mask[first_music:].all()


def _docs(n: int, tag: str) -> list[Document]:
    return [Document(np.array([ABC_BOS, 65 + i % 20, ABC_EOS]), np.ones(3, np.float32), f"{tag}{i}") for i in range(n)]


def test_the_mix_has_the_asked_shares_and_follows_its_seed() -> None:
    human, kept = _docs(40, "h"), _docs(5, "k")
    docs = distill_documents(human, kept, copies=3, human_share=0.25, seed=7)
    assert sum(d.source.startswith("h") for d in docs) == 10
    assert sorted(d.source for d in docs if d.source.startswith("k")) == sorted([d.source for d in kept] * 3)
    again = distill_documents(human, kept, copies=3, human_share=0.25, seed=7)
    assert [d.source for d in again] == [d.source for d in docs]
    assert [d.source for d in distill_documents(human, kept, 3, 0.25, seed=8)] != [d.source for d in docs]
    with pytest.raises(RwkvMusicError):
        distill_documents(human, kept, copies=0, human_share=0.25, seed=0)


@pytest.fixture(scope="module")
def abc_composer(checkpoint_path: Callable[..., Path]) -> Composer:
    return Composer.load(checkpoint_path("7", vocab_size=128, n_layer=2))


def test_kept_tunes_pass_the_verdict_and_the_counts_add_up(abc_composer: Composer) -> None:
    counts: dict[str, int] = {}
    kept = list(sample_accepted(abc_composer, rounds=1, seed=3, constrained=True, metres=("2/4", "3/4"),
                                units=("1/8",), per_header=2, counts=counts))
    assert counts["tunes"] == 4 and counts.get("kept", 0) == len(kept)
    assert kept, counts  # under the constraint a random model's tunes keep the metre and the form
    for tune in kept:
        text = bytes(tune["tokens"]).decode("ascii")
        assert text.startswith(f"S:2\nL:1/8\nM:{tune['meter']}\nK:{tune['key']}\n")
        assert tune_verdict(text).keep


def test_the_command_samples_then_builds_a_training_file(tmp_path: Path, checkpoint_path: Callable[..., Path]) -> None:
    accepted = tmp_path / "kept.jsonl"
    model = checkpoint_path("7", vocab_size=128, n_layer=2)
    run = CliRunner().invoke(main, ["distill", "sample", "--model", str(model), "--out", str(accepted), "--rounds", "1",
                                    "--seed", "1", "--constrained", "--metres", "2/4"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output.strip().splitlines()[-1])["tunes"] == 32  # 16 a unit, two units
    lines = [json.loads(line) for line in accepted.read_text().splitlines()]
    human = tmp_path / "human.npz"
    save_documents(human, _docs(8, "h"), _docs(2, "v"), 128)
    out = tmp_path / "mix.npz"
    run = CliRunner().invoke(main, ["distill", "build", "--human", str(human), "--accepted", str(accepted),
                                    "--out", str(out), "--copies", "2", "--human-share", "0.5"])
    assert run.exit_code == 0, run.output
    train, val, vocab = load_documents(out)
    assert vocab == 128 and [d.source for d in val] == ["v0", "v1"]  # the held-out split is kept as it was
    assert len(train) == 4 + 2 * len(lines)
    assert len(read_accepted([accepted])) == len(lines)
    again = CliRunner().invoke(main, ["distill", "build", "--human", str(human), "--accepted", str(accepted),
                                      "--out", str(out)])
    assert again.exit_code != 0 and "exists" in again.output  # never overwritten without --force


def test_a_bad_kept_file_is_a_one_line_error_and_leaves_no_output(tmp_path: Path) -> None:
    human = tmp_path / "human.npz"
    save_documents(human, _docs(4, "h"), _docs(1, "v"), 128)
    bad = tmp_path / "kept.jsonl"
    bad.write_text(json.dumps({"tokens": list(GOOD.encode()), "meter": "2/4"}) + "\n{not json\n")
    out = tmp_path / "mix.npz"
    run = CliRunner().invoke(main, ["distill", "build", "--human", str(human), "--accepted", str(bad),
                                    "--out", str(out)])
    assert run.exit_code != 0
    message = run.output.strip()
    assert "kept.jsonl:2" in message and len(message.splitlines()) == 1 and "Traceback" not in message
    assert not out.exists() and not list(tmp_path.glob(".mix*"))
