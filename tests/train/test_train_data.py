"""Data pipelines, n-gram baseline, rewards and the `train` click command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rwkv_music.errors import RwkvMusicError
from rwkv_music.train.data import (
    TokenStream,
    abc_document,
    abc_sections,
    clean_abc_tune,
    control_codes,
    music21_abc_files,
    split_abc_tunes,
    split_documents,
)
from rwkv_music.train.ngram import WittenBellNGram
from rwkv_music.train.rewards import abc_bar_balance_reward, bar_length, midi_stuck_notes_reward

DATA = Path(__file__).resolve().parents[1] / "data"
TUNE = ("X:7\nT:The Test Reel\nC:trad\nB:Some Book\nM:2/4\nL:1/8\nK:D\n"
        "|:A|dA FA|dA FA|Bc dB|AF ED:|\n|:f|af df|af df|ge ce|d2 d:|\n")


def test_abc_document_is_bos_control_codes_tune_without_x_eos() -> None:
    doc = abc_document(TUNE)
    assert doc.ids[0] == 2 and doc.ids[-1] == 3
    text = bytes(doc.ids[1:-1].tolist()).decode("ascii")
    assert text.startswith("S:2\nB:5\nE:")  # the pickup counts as a bar
    assert "X:" not in text and "T:" not in text and "Some Book" not in text
    assert "L:1/8\nM:2/4\nK:D\n|:A|dA FA" in text
    assert doc.mask[0] == 0 and doc.mask[1:].all()


def test_mask_control_excludes_control_code_bytes_from_loss() -> None:
    doc = abc_document(TUNE, mask_control=True)
    prefix = control_codes(clean_abc_tune(TUNE))
    assert doc.mask[1:1 + len(prefix)].sum() == 0
    assert doc.mask[1 + len(prefix):].all()


def test_sections_and_bars_follow_section_barlines() -> None:
    secs = abc_sections("|:A|dA FA|dA FA|Bc dB|AF ED:|\n|:f|af df|ge ce|d2 d:|")
    assert [b for _, b in secs] == [5, 4]


def test_split_is_seeded_disjoint_and_reproducible() -> None:
    docs = [abc_document(f"X:{i}\nM:2/4\nL:1/8\nK:C\n{'CDEF|' * (i + 1)}\n") for i in range(40)]
    tr1, va1 = split_documents(docs, 0.25, seed=3)
    tr2, va2 = split_documents(docs, 0.25, seed=3)
    _, va3 = split_documents(docs, 0.25, seed=4)
    assert [id(d) for d in va1] == [id(d) for d in va2]
    assert len(va1) == 10 and len(tr1) == 30
    assert not {id(d) for d in va1} & {id(d) for d in tr1}
    assert [id(d) for d in va1] != [id(d) for d in va3]


def test_token_stream_windows_are_shifted_by_one() -> None:
    docs = [abc_document(TUNE)] * 3
    stream = TokenStream(docs)
    x, y, m = stream.random_batch(np.random.default_rng(0), 4, 32)
    assert x.shape == y.shape == m.shape == (4, 32)
    assert (x[:, 1:] == y[:, :-1]).all()
    covered = sum(b[1].size for b in stream.eval_batches(2, 32))
    assert len(stream) - 1 - 32 < covered <= len(stream) - 1


def test_tune_starts_aligns_that_share_of_windows_to_a_document_start() -> None:
    docs = [abc_document(TUNE), abc_document(TUNE, with_control=False), abc_document(TUNE)] * 4
    stream = TokenStream(docs)
    bos = docs[0].ids[0]
    plain = stream.random_batch(np.random.default_rng(5), 64, 24)
    assert (plain[0][:, 0] == bos).mean() < 0.5  # random offsets rarely land on a tune's first token
    assert all((a == b).all() for a, b in zip(plain, stream.random_batch(np.random.default_rng(5), 64, 24, 0.0)))
    x, y, _ = stream.random_batch(np.random.default_rng(5), 64, 24, 1.0)
    assert (x[:, 0] == bos).all() and (x[:, 1:] == y[:, :-1]).all()
    starts = {bytes(row[:24].astype(np.uint8)) for row in x}
    assert len(starts) == 2  # both kinds of document were drawn
    half = stream.random_batch(np.random.default_rng(6), 400, 24, 0.5)[0]
    assert 0.4 < (half[:, 0] == bos).mean() < 0.7


def test_music21_collections_exclude_essen() -> None:
    files = music21_abc_files()
    assert files and not any("essenFolksong" in p.parts for p in files)
    with pytest.raises(RwkvMusicError, match="essenFolksong"):
        music21_abc_files(("essenFolksong",))
    assert len(split_abc_tunes(files[0].read_text(encoding="latin-1"))) > 1


def test_midi_documents_are_pad_separated_pieces() -> None:
    tok_mod = pytest.importorskip("rwkv_music.formats.midi.tokenizer")
    from rwkv_music.train.midi_data import midi_documents

    docs = midi_documents([DATA / "sample2-RWKV-4-MIDI-120M.mid"], tokenizer=tok_mod.MidiTokenizer())
    assert len(docs) == 1
    ids = docs[0].ids
    assert ids[0] == 0 and ids[1] == 1 and ids[-1] == 2  # <pad> <start> ... <end>
    assert (ids[2:-1] >= 3).all() and ids.max() < 20096


def test_abc_tune_renders_to_midi_file(tmp_path: Path) -> None:
    from rwkv_music.train.midi_data import abc_folder_to_midi

    src = tmp_path / "t.abc"
    src.write_text(TUNE + "\n" + TUNE.replace("X:7", "X:8"))
    out = abc_folder_to_midi(src, tmp_path / "mid")
    assert [p.name for p in out] == ["t-0000.mid", "t-0001.mid"]
    assert out[0].read_bytes()[:4] == b"MThd"


def test_witten_bell_ngram_beats_uniform_and_normalises() -> None:
    rng = np.random.default_rng(0)
    ids = np.tile(np.array([5, 6, 7, 8, 9]), 200)
    model = WittenBellNGram(3, 16).fit(ids)
    assert model.bits(ids) < 0.5  # deterministic cycle: nearly free
    # probabilities over the vocabulary sum to one for a seen and an unseen context
    for ctx in ([5, 6], [1, 2]):
        total = sum(model.probs(np.array(ctx + [w]))[-1] for w in range(16))
        assert total == pytest.approx(1.0, abs=1e-9)
    noise = rng.integers(0, 16, 400)
    assert WittenBellNGram(3, 16).fit(noise).bits(noise) <= 4.0 + 1e-9


def test_bar_balance_reward_marks_short_bar_negative() -> None:
    text = "L:1/8\nM:2/4\nK:D\nA|dA FA|dA F|Bc dB|AF ED|\n"
    ids = [2] + [ord(c) for c in text] + [3]
    r = abc_bar_balance_reward(ids)
    judged = [x for x in r if x]
    assert judged == [1.0, -1.0, 1.0, 1.0]
    assert bar_length("(3ABc d2 [CEG]2 A>B") == 8


def test_stuck_note_reward_penalises_long_holds_and_orphan_offs() -> None:
    on, off = 128 + 8 * 1536 + 60 * 12 + 9, 128 + 8 * 1536 + 60 * 12
    other_off = 128 + 8 * 1536 + 62 * 12
    fine = midi_stuck_notes_reward([1, on, 127, off, 2])
    assert sum(fine) == 0
    stuck = midi_stuck_notes_reward([1, on] + [127] * 6 + [other_off, 2])
    assert stuck[2 + 5] == -1.0 and stuck[8] == -0.5


def test_train_command_runs_and_writes_checkpoint(tmp_path: Path) -> None:
    from rwkv_music.cli.train import train

    data = tmp_path / "tunes.abc"
    data.write_text("\n\n".join(TUNE.replace("X:7", f"X:{i}") for i in range(6)))
    res = CliRunner().invoke(train, ["--data", str(data), "--out", str(tmp_path / "run"), "--layers", "1",
                                     "--width", "32", "--head-size", "16", "--ctx", "32", "--steps", "3",
                                     "--batch-size", "2", "--val-fraction", "0.3", "--eval-every", "0",
                                     "--tune-starts", "0.5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model.pth").is_file() and "val" in res.output
    meta = json.loads((tmp_path / "run" / "train_meta.json").read_text())
    assert meta["options"]["tune_starts"] == 0.5
    bad = CliRunner().invoke(train, ["--objective", "reinforce", "--out", str(tmp_path / "rl")])
    assert bad.exit_code != 0 and "--init" in bad.output
