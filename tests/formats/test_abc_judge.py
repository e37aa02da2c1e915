"""The strict tune judge (rwkv_music.formats.abc.judge): metre, sections, cadence, layout."""

from __future__ import annotations

import random
import warnings
from fractions import Fraction

import pytest

from rwkv_music.formats.abc.judge import judge_tune, key_signature, parse_meter

HEAD = "L:1/8\nM:{m}\nK:{k}\n"


def tune(body: str, meter: str = "4/4", key: str = "D") -> str:
    return HEAD.format(m=meter, k=key) + body


def test_full_bars_balance_and_short_bars_do_not_whatever_the_barline() -> None:
    assert judge_tune(tune("d2d2 fefe|d2d2 fefe|]")).strictly_balanced
    for barline in ("||", "|]", "|:", ":|", "::", "[|"):
        body = f"ABcd efga|d2d2{barline}fefe|ABcd efga|]"  # a half bar in the middle of the tune
        report = judge_tune(tune(body))
        assert not report.strictly_balanced, barline
        assert 1 in report.unbalanced


def test_short_bars_on_both_sides_of_a_section_barline_are_not_a_pickup_pair() -> None:
    # the degenerate output of issue 15: every section one short bar long
    assert not judge_tune(tune("d2d2||fefe||ABcd||")).strictly_balanced
    assert not judge_tune(tune("d2 (fa) || gfed | BBBd || ABcd |")).strictly_balanced


def test_pickup_completed_by_the_last_bar_of_its_strain() -> None:
    jig = "A|d2d fed|d2d fed|e2e gfe|d3 d2:|"
    assert judge_tune(tune(jig, "6/8")).strictly_balanced
    # the last bar does not complete the pickup: both are wrong
    report = judge_tune(tune("A|d2d fed|d2d fed|e2e gfe|d3 d3:|", "6/8"))
    assert not report.strictly_balanced
    assert report.unbalanced == (0,)


def test_pickup_after_a_short_bar_before_the_section_barline() -> None:
    body = "d2d fed|d2d fed|e2e gfe|d3 d2||f|a2a fed|d2d fed|e2e gfe|d3 d3|]"
    assert judge_tune(tune(body, "6/8")).strictly_balanced


def test_overfull_bars_always_count() -> None:
    report = judge_tune(tune("AFAF AFAF|]", "2/4"))
    assert not report.strictly_balanced and report.overfull == 1
    assert not judge_tune(tune("A|d2d fed e|d2d fed|e2e gfe|d3 d2:|", "6/8")).strictly_balanced


def test_durations_broken_rhythm_tuplets_chords_grace_notes_and_rests() -> None:
    assert judge_tune(tune("d>c B<A (3ABc d2|]")).strictly_balanced
    assert not judge_tune(tune("d>c B<A (3ABc d2|]", "3/4")).strictly_balanced
    assert judge_tune(tune("[DFA]2 [DF]A {g}f2 z2|d/e/f/g/ a3/2b/ a2 z2|]")).strictly_balanced
    assert judge_tune(tune("(3:2:3ABc d2 d>>c d2|]")).strictly_balanced
    assert judge_tune(tune("!trill!d2 \"Am\"e2 ~f2 .g2|T a8|]")).strictly_balanced
    assert not judge_tune(tune("(3ABc d3|]", "3/4")).strictly_balanced  # 2 + 3 eighths in 3/4


def test_multi_bar_rest_counts_as_full_bars() -> None:
    report = judge_tune(tune("Z4|ABcd efga|]"))
    assert report.strictly_balanced and report.bars == 5


def test_endings_may_each_complete_the_pickup() -> None:
    body = "A|d2d fed|d2d fed|e2e gfe|1 d3 d2:|2 d3 d3||"
    report = judge_tune(tune(body, "6/8"))
    assert report.strictly_balanced
    assert report.part_bars == (4,)


def test_inline_metre_change() -> None:
    assert judge_tune(tune("ABcd efga|[M:3/4] ABc def|[M:4/4]ABcd efga|]")).strictly_balanced


def test_common_time_and_cut_time() -> None:
    assert parse_meter("C") == Fraction(1) == parse_meter("C|") == parse_meter("4/4")
    assert parse_meter("9/8") == Fraction(9, 8)
    assert parse_meter("none") is None
    assert not judge_tune(tune("ABcd|]", "none")).metered


def test_keys_and_the_final_note() -> None:
    assert key_signature("D")[1] == {"F": 1, "C": 1}
    assert key_signature("Bb")[0] == 10 and key_signature("Bb")[1] == {"B": -1, "E": -1}
    assert key_signature("Ador")[1] == {"F": 1}
    assert key_signature("Emin")[1] == {"F": 1}
    assert key_signature("Gmix")[1] == {}
    assert judge_tune(tune("ABcd efge|d8|]")).ends_on_tonic
    assert not judge_tune(tune("ABcd efge|A8|]")).ends_on_tonic
    assert judge_tune(tune("ABcd efge|B8|]", key="Bb")).ends_on_tonic  # B is flat in the key
    assert not judge_tune(tune("ABcd efge|=B8|]", key="Bb")).ends_on_tonic


def test_form_measures() -> None:
    body = "|:ABcd efga|ABcd efga|ABcd efga|ABcd efga:|\n|:ABcd efga|ABcd efga|ABcd efga|ABcd  efga:|"
    report = judge_tune(tune(body))
    assert report.part_bars == (4, 4) and report.regular_parts
    assert report.section_barlines == 3  # |: :| |: (the final :| ends the tune)
    assert report.max_space_run == 2
    assert report.bars_per_line == 4.0


def test_model_text_with_control_codes() -> None:
    text = "S:2\nB:8\nE:5\nB:8\nL:1/8\nM:2/4\nK:G\nGA Bc|d2 B2|]"
    assert judge_tune(text).strictly_balanced


def test_garbage_never_raises() -> None:
    for text in ("A/0 B0|", "(0abc|", "[M:0/0]A|", "L:0/8\nM:2/0\nK:Q\nA|"):
        judge_tune(tune(text))
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ABCabc|:[]()<>{}\"!+-/023zZ=^_\n ") for _ in range(rng.randint(0, 60)))
        judge_tune(tune(text))


def _random_simple_body(rng: random.Random, n_events: int) -> str:
    out: list[str] = []
    for _ in range(n_events):
        kind = rng.random()
        if kind < 0.1 and not (out and out[-1].startswith("(3")):  # music21 10.5 mis-times some tuplet runs
            out.append("(3" + "".join(rng.choice("ABcd") for _ in range(3)))
        elif kind < 0.2:
            out.append(rng.choice("ABcd") + ">" + rng.choice("ABcd"))
        elif kind < 0.3:
            out.append("[" + rng.choice(["CE", "DF", "EG"]) + "]" + rng.choice(["", "2"]))
        else:
            out.append(rng.choice("ABcdefgz") + rng.choice(["", "2", "3", "/", "3/2", "4"]))
        if rng.random() < 0.25:
            out.append("|")
    return " ".join(out) + "|]"


def test_total_duration_agrees_with_music21() -> None:
    from music21 import converter

    rng = random.Random(7)
    for _ in range(40):
        body = _random_simple_body(rng, rng.randint(4, 24))
        text = "X:1\n" + tune(body)
        mine = sum(b.duration for b in judge_tune(text).bar_list) * 4  # quarter notes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = converter.parse(text, format="abc", forceSource=True)
        theirs = sum(Fraction(n.quarterLength).limit_denominator(96) for n in score.flatten().notesAndRests)
        assert mine == theirs, body


@pytest.mark.slow
def test_human_tunes_are_mostly_strictly_balanced() -> None:
    """A sanity floor on the judge itself: O'Neill's tunes are well barred (about 82 % here)."""
    from rwkv_music.formats.abc.check import corpus_tunes

    reports = [judge_tune(t.text) for t, _ in zip(corpus_tunes(("oneills1850",)), range(300))]
    rate = sum(r.strictly_balanced for r in reports) / len(reports)
    assert rate > 0.7


# -- whitespace exempts nothing: empty bars, lines of bar lines, music after a blank line ---------
_HEAD = "L:1/8\nM:3/4\nK:D\n"


def test_empty_bars_and_bar_line_only_lines_are_not_balanced() -> None:
    ok = judge_tune(_HEAD + "d2 d2 e2 | f2 f2 e2 |\n| d2 B2 G2 | A2 A2 A2 |]")  # "|\n|" is one bar line
    assert ok.strictly_balanced and ok.empty_bars == 0
    same_line = judge_tune(_HEAD + "d2 d2 e2 | f2 f2 e2 | | d2 B2 G2 | A2 A2 A2 |]")
    assert not same_line.strictly_balanced and same_line.empty_bars == 1
    only_bars = judge_tune(_HEAD + "d2 d2 e2 | f2 f2 e2 | d2 B2 G2 | A2 A2 A2 |\n|\n|\n")
    assert not only_bars.strictly_balanced and only_bars.empty_bars == 2
    assert judge_tune(_HEAD + "d2 d2 e2 | f2 f2 e2 :| |: d2 B2 G2 | A2 A2 A2 |]").empty_bars == 0


def test_music_after_a_blank_line_is_not_part_of_the_tune() -> None:
    r = judge_tune(_HEAD + "d2 d2 e2 | f2 f2 e2 |]\n\nd2 B2 G2 |")
    assert r.lines_after_end == 1 and not r.strictly_balanced


def test_the_grammar_writes_no_empty_bar() -> None:
    from rwkv_music.formats.abc.grammar.machine import AbcGrammar

    grammar = AbcGrammar()

    def reads(text: str) -> bool:
        state = grammar.initial()
        for c in "S:2\n" + _HEAD + text:
            state = grammar.step(state, c)
            if state is None:
                return False
        return True

    assert reads("d2 d2 e2 | f2 f2 e2 |\n| d2")
    assert not reads("d2 d2 e2 | f2 f2 e2 | |")
    assert not reads("d2 d2 e2 | f2 f2 e2 |\n|\n")
    assert not reads("d2 d2 e2 | f2 f2 e2 |\n   \n")


def test_the_final_note_length_is_the_last_pitched_note_as_played() -> None:
    head = "X:1\nL:1/8\nM:4/4\nK:G\n"
    assert judge_tune(head + "GABc d2B2 | A2 z G |]\n").final_note_length == Fraction(1, 8)
    assert judge_tune(head + "GABc d2B2 | A2 G2 z2 |]\n").final_note_length == Fraction(1, 4)  # a rest after it
    assert judge_tune(head + "GABc d2B2 | (3ABc [GB]4 |]\n").final_note_length == Fraction(1, 2)  # a chord
    assert judge_tune(head + "GABc d2B2 | A2 (3GAG |]\n").final_note_length == Fraction(1, 12)  # a triplet's note
    assert judge_tune(head + "z8 |]\n").final_note_length is None
