"""ABC/MIDI training augmentation: exact unit rewrites, re-keying checked against music21, MIDI shifts."""

from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rwkv_music.formats.abc.judge import judge_tune
from rwkv_music.train.augment import (
    AbcAugment,
    AugmentError,
    abc_augmented_documents,
    augment_tune,
    caller_controls,
    document_texts,
    format_length,
    parse_key,
    related_keys,
    rescale_unit,
    respell_meter,
    shift_midi_ids,
    tidy_spaces,
    transpose,
    with_explicit_unit,
)

REEL = 'L:1/8\nM:C|\nK:G\n"G"D|G2 ^F/G/A B2 AG|=F2 FE D2 {c}BA|[Gd]3/2B/ (3ABc d2 B:|\n'


def _durations(text: str) -> list[Fraction]:
    return [b.duration for b in judge_tune(text).bar_list]


def test_format_length_writes_standard_suffixes() -> None:
    cases = {Fraction(1): "", Fraction(2): "2", Fraction(1, 2): "/", Fraction(1, 4): "/4",
             Fraction(3, 2): "3/2", Fraction(3, 4): "3/4"}
    assert {k: format_length(k) for k in cases} == cases
    with pytest.raises(AugmentError):
        format_length(Fraction(1, 3))


def test_unit_rewrite_keeps_every_bar_duration_and_round_trips() -> None:
    sixteenth = rescale_unit(REEL, "1/16")
    assert sixteenth.startswith("L:1/16\n")
    assert "G4 ^FGA2 B4 A2G2" in sixteenth  # every length doubled
    assert "[G2d2]3/2B" in sixteenth  # chord notes rescaled, the chord's own multiplier kept
    assert "(3A2B2c2" in sixteenth  # tuplet marker untouched
    assert _durations(sixteenth) == _durations(REEL)
    assert rescale_unit(sixteenth, "1/8") == REEL
    # the standard's default unit (1/16 under 3/4) made explicit before rescaling
    assert with_explicit_unit("M:2/4\nK:D\nA2B2|c4|]\n").startswith("L:1/16\nM:2/4\n")


def test_meter_respelling_only_between_equal_bar_lengths() -> None:
    assert "M:2/2\n" in respell_meter(REEL, "2/2")
    assert "M:4/4\n" in respell_meter(REEL.replace("M:C|", "M:C"), "4/4")
    with pytest.raises(AugmentError):
        respell_meter(REEL, "3/4")


def test_transpose_respells_accidentals_for_the_new_key() -> None:
    up = transpose(REEL, "D")
    # G major up a fifth: F# -> C# (the key's own), written =F -> =C, carried F natural -> C natural
    assert up.splitlines()[2:] == ["K:D", "A,|D2 ^C/D/E F2 ED|=C2 CB, A,2 {G}FE|[DA]3/2F/ (3EFG A2 F:|"]
    flat = transpose(REEL, "Bb")
    assert "=A/B/" in flat and "_A2 AG" in flat  # F#->A natural written, F natural->A flat carried
    assert '"' not in up  # chord symbols are dropped from re-keyed copies
    assert _durations(up) == _durations(REEL.replace('"G"', ""))
    assert parse_key("F#dor").text() == "F#dor"
    assert all(k.mode == "m" and abs(k.fifths) <= 4 for k in related_keys(parse_key("Em")))
    with pytest.raises(AugmentError):
        transpose(REEL, "Am")  # another mode
    with pytest.raises(AugmentError):
        transpose("L:1/8\nM:2/4\nK:G\nGABc|[K:D]defg|]\n", "A")  # a key change inside the tune


def _carried(text: str) -> bool:
    """Whether some bar relies on an accidental carrying to a later note (music21 does not carry)."""
    for bar in re.split(r"\|", re.sub(r'"[^"]*"|![^!]*!|\{[^}]*\}', "", text.split("K:", 1)[1])):
        seen = set()
        for acc, letter, marks in re.findall(r"(\^\^|\^|__|_|=)?([A-Ga-g])([',]*)", bar):
            if acc:
                seen.add(letter + marks)
            elif letter + marks in seen:
                return True
    return False


def _pitches(text: str) -> list[int]:
    import music21

    score = music21.converter.parseData("X:1\nT:t\n" + text, format="abc")
    out = []
    for n in score.recurse().notes:
        if isinstance(n, music21.harmony.ChordSymbol):
            continue
        out.extend(p.midi for p in n.pitches)
    return out


def test_transposition_agrees_with_music21_on_real_tunes() -> None:
    pytest.importorskip("music21")
    from rwkv_music.train.data import clean_abc_tune, music21_abc_files, read_abc_tunes

    tunes = read_abc_tunes(music21_abc_files())
    rng = random.Random(7)
    compared = 0
    for _source, raw in rng.sample(tunes, 80):
        clean = clean_abc_tune(raw)
        if clean is None or not clean.isascii():
            continue
        try:
            key = parse_key(re.search(r"^K:(.*)$", clean, re.M).group(1))
            target = rng.choice(related_keys(key))
            moved = transpose(with_explicit_unit(clean), target.text())
        except AugmentError:
            continue
        original = re.sub(r'"[^"]*"', "", clean)
        if _carried(original) or _carried(moved):
            continue
        before, after = _pitches(original), _pitches(moved)
        assert len(before) == len(after) > 0
        shifts = {b - a for a, b in zip(before, after)}
        assert len(shifts) == 1, (clean, moved)
        shift = shifts.pop()
        assert abs(shift) <= 6 and shift % 12 == (target.pitch_class - key.pitch_class) % 12
        compared += 1
        if compared == 20:
            break
    assert compared == 20


def test_augment_keeps_strict_tunes_only_and_every_copy_is_strict() -> None:
    rng = random.Random(0)
    unbalanced = "L:1/8\nM:4/4\nK:D\nd2d2||fefe|]\n"
    assert augment_tune(unbalanced, rng) == []
    tune = "L:1/8\nM:C\nK:D\nA|d2fd A2FA|d2fd e2ce|d2fd A2FA|GBAG FDD:|\n"
    copies = augment_tune(tune, rng, AbcAugment(copies=12))
    assert copies[0] == tune and len(copies) > 4
    assert all(judge_tune(c).strictly_balanced for c in copies)
    heads = {tuple(c.splitlines()[:2]) for c in copies}
    assert ("L:1/16", "M:4/4") in heads and ("L:1/8", "M:C") in heads
    assert len({c.splitlines()[2] for c in copies}) > 2  # several keys


def test_tidy_spaces_cuts_alignment_runs_and_keeps_every_bar() -> None:
    aligned = "L:1/8\nM:3/4\nK:G  Minor\nD B A|G G  A B c B|A4\\\n                     B c|d2  d> c\td f|d3 |]\n"
    tidy = tidy_spaces(aligned)
    assert tidy == "L:1/8\nM:3/4\nK:G  Minor\nD B A|G G A B c B|A4\\\nB c|d2 d> c d f|d3 |]\n"
    assert _durations(tidy) == _durations(aligned) and judge_tune(tidy).max_space_run == 1
    copies = augment_tune(aligned, random.Random(0), AbcAugment(copies=6))
    assert copies and all(judge_tune(c).max_space_run <= 1 for c in copies)
    kept = augment_tune(aligned, random.Random(0), AbcAugment(copies=0, tidy_spaces=False))
    assert judge_tune(kept[0]).max_space_run > 1  # the option is what removes them


def test_augmented_documents_and_caller_controls() -> None:
    assert caller_controls("S:2\nB:8\nE:5\nB:8\n") == "S:2\n"
    tune = "X:1\nT:t\nL:1/8\nM:6/8\nK:G\nD|G2G BAG|A2A BAG|G2G BAG|A2A G2:|\n"
    docs = abc_augmented_documents([("t#0", tune)], random.Random(1), AbcAugment(copies=3))
    texts = document_texts(docs)
    assert texts and all(t.startswith("S:") for t in texts)
    assert all(d.ids[0] == 2 and d.ids[-1] == 3 and d.mask[0] == 0 for d in docs)
    assert "T:" not in "".join(texts)


def test_midi_shift_moves_pitched_notes_within_instrument_ranges() -> None:
    from rwkv_music.formats.midi.vocab import LAYOUT

    names = list(LAYOUT.bin_names)
    violin = names.index("violin")
    drum = next(i for i, n in enumerate(names) if "percussion" in n or "drum" in n)
    ids = np.array([0, 1, 5, LAYOUT.note_id(violin, 70, 8), LAYOUT.note_id(drum, 38, 8), 9,
                    LAYOUT.note_id(violin, 70, 0)])
    up = shift_midi_ids(ids, 3)
    assert up is not None
    assert up[3] == LAYOUT.note_id(violin, 73, 8) and up[6] == LAYOUT.note_id(violin, 73, 0)
    assert up[4] == ids[4] and list(up[:3]) == [0, 1, 5] and up[5] == 9  # drums, specials, waits
    assert shift_midi_ids(np.array([LAYOUT.note_id(violin, 56, 8)]), -3) is None  # below G3


def test_prepared_documents_round_trip_and_train_with_midi_shifts(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rwkv_music.cli.train import train as train_command
    from rwkv_music.formats.midi.vocab import LAYOUT
    from rwkv_music.train.data import Document, load_documents, save_documents

    piano = list(LAYOUT.bin_names).index("piano")
    docs = []
    for k in range(4):
        ids = np.array([0, 1, LAYOUT.note_id(piano, 60 + k, 8), 20, LAYOUT.note_id(piano, 60 + k, 0), 2])
        docs.append(Document(ids, np.ones(len(ids), dtype=np.float32), f"p{k}"))
    path = save_documents(tmp_path / "midi.npz", docs[:3], docs[3:], LAYOUT.size)
    train, val, vocab = load_documents(path)
    assert vocab == LAYOUT.size and [d.source for d in val] == ["p3"]
    assert all(np.array_equal(a.ids, b.ids) and a.ids.dtype == np.int64 for a, b in zip(train, docs))
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [
        "--mode", "midi", "--data", str(path), "--out", str(out), "--augment", "2", "--layers", "1",
        "--width", "32", "--head-size", "32", "--ctx", "8", "--batch-size", "2", "--steps", "2", "--eval-every", "0"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["n_train_docs"] == 9 and meta["n_val_docs"] == 1  # 3 pieces + 2 shifted copies each
    assert meta["augment"]["midi_pitch_shift_copies"] == 2 and meta["augment"]["prepared_data"] == ["midi.npz"]


def test_cli_abc_augment_rewrites_the_training_split_only(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rwkv_music.cli.train import train as train_command

    tunes = "".join(f"X:{i}\nT:t\nL:1/8\nM:C\nK:G\nGABc dBGB|cAFA G4|GABc dBGB|cAFA G4|]\n\n" for i in range(1, 6))
    (tmp_path / "t.abc").write_text(tunes + "X:9\nL:1/8\nM:C\nK:G\nGA||B4|]\n")  # the last is unbalanced
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [
        "--mode", "abc", "--data", str(tmp_path / "t.abc"), "--out", str(out), "--augment", "3",
        "--val-fraction", "0.2", "--layers", "1", "--width", "32", "--head-size", "32", "--ctx", "16",
        "--batch-size", "2", "--steps", "1", "--eval-every", "0", "--seed", "0"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["n_val_docs"] == 1 and meta["augment"]["abc"]["copies"] == 3
    assert 5 <= meta["n_train_docs"] <= 4 * 4  # strict tunes only, each with up to 3 distinct copies
