"""The independent music21 oracle: validity, bar balance, corpus access; garbage never raises."""

from __future__ import annotations

import pytest

from rwkv_music.formats.abc.check import bar_balance, corpus_tunes, parse_ok, prepare_for_music21

TUNE = "L:1/8\nM:2/4\nK:G\nD|G2 A2|B3 c|B4|A4|d3|]"


def test_prepare_drops_control_codes_and_adds_a_reference_number():
    assert prepare_for_music21("S:2\nB:8\nE:4\nL:1/8\nK:D\nDFA|") == "X:1\nL:1/8\nK:D\nDFA|\n"
    assert prepare_for_music21("X:7\nT:a\nK:D\nD|").startswith("X:7\nT:a")  # already standard
    assert prepare_for_music21("B:O'Neill's\nK:D\nD|").startswith("X:1\nB:O'Neill's")  # a book, not a code


def test_parse_ok_needs_music21_to_read_notes():
    assert parse_ok(TUNE)
    assert not parse_ok("L:1/8\nM:2/4\nK:G\n")  # no notes
    assert not parse_ok("L:1/8\nM:2/4\nK:G\nz4|z4|")  # rests only
    assert not parse_ok("L:1/8\nM:2/4\nQ:zz\nK:G\nG4|")  # music21 raises on this tempo


@pytest.mark.parametrize("garbage", ["", "\x00\x01\x02", "%%%%", 12345, None, b"\xff\xfe", "X:1\nK:\n[[[[{{{((("])
def test_garbage_never_raises(garbage):
    assert parse_ok(garbage) is False
    report = bar_balance(garbage)
    assert report.all_balanced is False or report.checked == 0


def test_balanced_tune_skips_pickup_and_final_bar():
    report = bar_balance(TUNE)
    assert report.parsed and report.metered
    assert (report.measures, report.checked, report.balanced, report.unbalanced) == (6, 4, 4, ())
    assert report.all_balanced and report.strictly_balanced and report.rate == 1.0


def test_short_bar_in_the_middle_is_unbalanced():
    report = bar_balance("L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B2|A4|d4|]")
    assert report.unbalanced == (2,) and not report.all_balanced and report.balanced == report.checked - 1


def test_bars_next_to_repeats_and_double_bars_are_not_checked():
    report = bar_balance("L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B2 :|A2|B4|c4||d2|e4|g4|]")
    assert report.all_balanced and report.checked < report.measures


def test_overfull_bar_next_to_a_repeat_is_caught_by_the_token_sum():
    # music21 re-bars the 5-quarter bar into 4 + 1; the short part sits next to ":|" and is skipped
    text = "L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B4 c2:|A4|d4|e4|]"
    report = bar_balance(text)
    assert report.overfull == 1 and not report.strictly_balanced


def test_free_meter_is_not_checked():
    report = bar_balance("L:1/4\nM:none\nK:G\nGAB|cd|efga|]")
    assert report.parsed and not report.metered and report.checked == 0 and report.all_balanced


def test_corpus_tunes_are_read_at_run_time():
    tunes = list(corpus_tunes(("nottingham-dataset",)))
    assert len(tunes) == 2 and all(t.text.startswith("X:") for t in tunes)
    assert tunes[0].collection == "nottingham-dataset" and "music21" in tunes[0].path


def test_human_tunes_are_mostly_balanced_as_in_formats_e():
    tunes = [t for i, t in enumerate(corpus_tunes(("oneills1850",))) if i % 25 == 0]
    reports = [bar_balance(t.text) for t in tunes]
    assert all(r.parsed for r in reports)
    tune_rate = sum(r.all_balanced for r in reports) / len(reports)
    bar_rate = sum(r.balanced for r in reports) / sum(r.checked for r in reports)
    assert tune_rate > 0.8 and bar_rate > 0.97  # docs/formats.md E: O'Neill's 90.5 % of tunes, 99.2 % of bars overall
