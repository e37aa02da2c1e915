"""The independent music21 oracle: validity, strict bar balance, corpus access; garbage never raises."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rwkv_music.formats.abc.check import CorpusTune, bar_balance, corpus_tunes, parse_ok, prepare_for_music21
from rwkv_music.formats.abc.format import AbcFormat
from rwkv_music.formats.abc.judge import judge_tune

TUNE = "L:1/8\nM:2/4\nK:G\nD|G2 A2|B3 c|B4|A4|d3|]"


def tune(body: str, meter: str = "4/4") -> str:
    return f"L:1/8\nM:{meter}\nK:D\n{body}"


def test_prepare_drops_control_codes_and_adds_a_reference_number() -> None:
    assert prepare_for_music21("S:2\nB:8\nE:4\nL:1/8\nK:D\nDFA|") == "X:1\nL:1/8\nK:D\nDFA|\n"
    assert prepare_for_music21("X:7\nT:a\nK:D\nD|").startswith("X:7\nT:a")  # already standard
    assert prepare_for_music21("B:O'Neill's\nK:D\nD|").startswith("X:1\nB:O'Neill's")  # a book, not a code


def test_parse_ok_needs_music21_to_read_notes() -> None:
    assert parse_ok(TUNE)
    assert not parse_ok("L:1/8\nM:2/4\nK:G\n")  # no notes
    assert not parse_ok("L:1/8\nM:2/4\nK:G\nz4|z4|")  # rests only
    assert not parse_ok("L:1/8\nM:2/4\nQ:zz\nK:G\nG4|")  # music21 raises on this tempo


@pytest.mark.parametrize(
    "garbage",
    ["", "\x00\x01\x02", "%%%%", 12345, None, b"\xff\xfe", "X:1\nK:\n[[[[{{{(((", "L:1/8\nM:4/4\nK:D\n(10abc|Z|x",
     "L:1/8\nM:4/4\nK:D\n[M:|[L:0/0]A>>>>>B|[1[2:|::|]]", "M:3/\nK:D\nA|", "L:1/8\nM:4/4\nK:D\n[V:]A8|H|E:"],
)
def test_garbage_never_raises(garbage: object) -> None:
    assert parse_ok(garbage) is False or isinstance(garbage, str)
    report = bar_balance(garbage)
    assert report.all_balanced is False or report.checked == 0 or report.balanced == report.checked
    assert isinstance(report.strictly_balanced, bool)


def test_pickup_completed_by_the_final_bar_is_balanced() -> None:
    # The lenient checker skipped the pickup and the final bar; the strict rule judges every bar,
    # and D (1/8) + d3 (3/8) make one 2/4 bar.
    report = bar_balance(TUNE)
    assert report.parsed and report.metered
    assert (report.measures, report.checked, report.balanced, report.unbalanced) == (6, 6, 6, ())
    assert report.all_balanced and report.strictly_balanced and report.rate == 1.0


def test_short_bar_in_the_middle_is_unbalanced() -> None:
    report = bar_balance("L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B2|A4|d4|]")
    assert report.unbalanced == (2,) and not report.all_balanced and report.balanced == report.checked - 1
    assert not report.strictly_balanced and report.problems and "bar 3" in report.problems[0]


def test_barlines_exempt_nothing_only_pairs_that_make_a_bar() -> None:
    # The lenient checker skipped every bar next to ":|" and "||" (and so passed this tune).  Under
    # the strict rule B2 before ":|" and the pickup A2 after it make one bar, but the pickup d2 after
    # "||" has no partner: c4 and g4 are full bars.
    report = bar_balance("L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B2 :|A2|B4|c4||d2|e4|g4|]")
    assert report.checked == report.measures == 9
    assert report.unbalanced == (6,) and not report.strictly_balanced
    assert bar_balance("L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B2 :|A2|B4|c4||e4|g4|]").strictly_balanced


@pytest.mark.parametrize(
    "text, bad",
    [
        (tune("D | d2 (fa) || gfed | BBBd || ABcd |"), (0, 1, 2, 3, 4)),  # the degenerate output
        (tune("AFAFAFAF|", "2/4"), (0,)),  # overfull: music21's measures would split it in two
        (tune("d2d2||fefe||"), (0, 1)),  # two half bars are not a pickup pair: no strain around them
        (tune("A|d2d fed|d2d fed|e2e gfe|d3 d3:|", "6/8"), (0,)),  # the last bar does not complete it
        (tune("d2d2 fefe|d2||fe fefe|d2d2 fefe|d2d2 fefe|]"), (1, 2)),  # a one-full-bar strain cannot pair
    ],
)
def test_the_loopholes_of_the_lenient_rule_fail(text: str, bad: tuple[int, ...]) -> None:
    report = bar_balance(text)
    assert report.parsed and report.metered
    assert not report.strictly_balanced and not report.all_balanced
    assert report.unbalanced == bad
    assert AbcFormat().validity(text)["strictly_balanced"] is False


def test_overfull_bar_next_to_a_repeat_is_caught_by_the_token_sum() -> None:
    text = "L:1/8\nM:2/4\nK:G\nG2 A2|B3 c|B4 c2:|A4|d4|e4|]"
    report = bar_balance(text)
    assert report.overfull == 1 and report.unbalanced == (2,) and not report.strictly_balanced


@pytest.mark.parametrize(
    "body, meter",
    [
        ("A|d2d fed|d2d fed|e2e gfe|d3 d2:|", "6/8"),  # a jig with a pickup and a repeat
        ("|:A|d2d fed|d2d fed|e2e gfe|d3 d2:|\n|:f|a2a fed|d2d fed|e2e gfe|d3 d2:|", "6/8"),
        ("A|d2d fed|e2e gfe|1 d2d fed|e3 e2:|2 d2d fed|d3 d2|]", "6/8"),  # both endings complete it
        ("d2d fed|e2e gfe|1 d2d fed|e3 e3:|2 d2d fed|d3 d3|]", "6/8"),  # full endings, no pickup
        ("d2d fed|d2d fed|e2e gfe|d3 d2||f|a2a fed|d2d fed|e2e gfe|d3 d3|]", "6/8"),  # short bar, || , pickup
        ("A2|d2 fe dcBA|d2 fe dcBA|d2 fe d2|]", "4/4"),  # the tune's pickup with its final bar
        ("Z2|d2d2 fefe|d2d2 fefe|]", "4/4"),  # a multi-bar rest is n full bars
        ("x8|d2d2 Hf4|d2d2 fefe|]", "4/4"),  # x rests and the H fermata (music21 drops both)
        ("(3{c}BAB e2 dB A2|(AB)>c d d4|G-<E F4 G2|]", "4/4"),  # grace in a tuplet, broken rhythms
        ("d2d2 fefe|[M:3/4]d2 fe dc|[L:1/16]d4f4a4|]", "4/4"),  # inline meter and unit changes
        ("A2|d2 fe dcBA|d2 fe dcBA|d2 fe dE::\nA2|d2 fe dcBA|d2 fe dcBA|d2 fe d2:|", "4/4"),  # "E::" is no field
    ],
)
def test_correct_tunes_pass(body: str, meter: str) -> None:
    report = bar_balance(tune(body, meter))
    assert report.strictly_balanced, report.problems
    assert report.rate == 1.0 and report.checked == report.measures > 0


def test_free_meter_is_not_checked() -> None:
    report = bar_balance("L:1/4\nM:none\nK:G\nGAB|cd|efga|]")
    assert report.parsed and not report.metered and report.checked == 0 and report.all_balanced
    assert not report.strictly_balanced  # nothing was judged


def test_voices_are_judged_one_by_one() -> None:
    two = "L:1/8\nM:2/4\nK:D\nV:1\nD|G2 A2|B4|d3|]\nV:2\nz|B,2 C2|D4|F3|]"
    assert bar_balance(two).strictly_balanced
    assert not bar_balance(two.replace("F3|]", "F2|]")).strictly_balanced


def test_validity_reports_the_strict_rule() -> None:
    v = AbcFormat().validity(TUNE)
    assert v["parse_ok"] and v["strictly_balanced"] and v["all_balanced"]
    assert v["bars_checked"] == 6 and v["bar_balance"] == 1.0 and v["overfull_bars"] == 0
    v = AbcFormat().validity(tune("d2d2 fefe|d2d2 fefe|d2 fefe|d2d2 fefe|d2d2 fefe|]"))
    assert not v["strictly_balanced"] and v["bars_checked"] == 5 and v["bar_balance"] == 0.8


def test_corpus_tunes_are_read_at_run_time() -> None:
    tunes = list(corpus_tunes(("nottingham-dataset",)))
    assert len(tunes) == 2 and all(t.text.startswith("X:") for t in tunes)
    assert tunes[0].collection == "nottingham-dataset" and "music21" in tunes[0].path


def test_human_tunes_are_mostly_balanced_under_the_strict_rule() -> None:
    # The strict rule judges every bar (the lenient rule of the old docs/formats.md E skipped bars
    # near barlines and reached 90.5 % of O'Neill's tunes); this sample gives 82.7 % and 98.7 %.
    tunes = [t for i, t in enumerate(corpus_tunes(("oneills1850",))) if i % 25 == 0]
    reports = [bar_balance(t.text) for t in tunes]
    assert all(r.parsed and r.metered for r in reports)
    tune_rate = sum(r.strictly_balanced for r in reports) / len(reports)
    bar_rate = sum(r.balanced for r in reports) / sum(r.checked for r in reports)
    assert 0.75 < tune_rate < 1.0 and bar_rate > 0.97


# -- agreement with the judge (rwkv_music.formats.abc.judge), a separate implementation ---------

# Every corpus tune (outside essenFolksong) on which check.py and judge.py disagree, and why.  In
# each, music21's tokens (and so check.py) give the reading a musician would: all are limits of
# judge.py, reported on issue 15 rather than fixed here.
KNOWN_DISAGREEMENTS = {
    ("airdsAirs", "book3.abc", 178): "a header line 'N' without a colon ends judge's header before M:",
    ("airdsAirs", "book6.abc", 2): "two voices: judge reads V:1 and V:2 as one sequence of bars",
    ("airdsAirs", "book6.abc", 172): "two voices (as above)",
    ("airdsAirs", "book6.abc", 173): "two voices (as above)",
    ("airdsAirs", "book6.abc", 176): "two voices (as above)",
    ("airdsAirs", "book6.abc", 177): "two voices (as above)",
    ("miscFolk", "americanfifeopus.abc", 15): "two voices (as above)",
    ("airdsAirs", "book6.abc", 109): "ABC 1.6 line-break '!' with no closing '!': judge skips the line's rest",
    ("airdsAirs", "book6.abc", 90): "ABC 1.6 line-break '!' (as above)",
    ("airdsAirs", "book6.abc", 119): "ABC 1.6 line-break '!' (as above)",
    ("airdsAirs", "book6.abc", 134): "ABC 1.6 line-break '!' (as above)",
    ("miscFolk", "americanfifeopus.abc", 43): "chords hard-wrapped across lines ('[A\\nf]'): judge drops them",
}
NON_ESSEN = ("airdsAirs", "josquin", "miscFolk", "nottingham-dataset", "oneills1850", "ryansMammoth")


def _key(t: CorpusTune) -> tuple[str, str, int]:
    return t.collection, Path(t.path).name, t.index


def test_checker_and_judge_agree_on_human_tunes() -> None:
    tunes = list(corpus_tunes(NON_ESSEN))
    assert len(tunes) > 3000 and not any(t.collection == "essenFolksong" for t in tunes)
    sample = tunes[:: len(tunes) // 150][:150]
    disagree = {_key(t) for t in sample
                if bar_balance(t.text).strictly_balanced != judge_tune(t.text).strictly_balanced}
    assert disagree <= set(KNOWN_DISAGREEMENTS), disagree - set(KNOWN_DISAGREEMENTS)
    assert 0.7 < sum(bar_balance(t.text).strictly_balanced for t in sample[:50]) / 50 < 1.0


def test_the_known_disagreements_are_read_correctly_here() -> None:
    tunes = [t for t in corpus_tunes(("airdsAirs", "miscFolk")) if _key(t) in KNOWN_DISAGREEMENTS]
    assert len(tunes) == len(KNOWN_DISAGREEMENTS)
    for t in tunes:
        assert bar_balance(t.text).strictly_balanced, (_key(t), bar_balance(t.text).problems)


def _notes(rng: random.Random, units: int, compound: bool) -> str:
    """Random music lasting ``units`` eighths: tuplets, broken rhythm, chords, graces, decorations."""
    n = lambda: rng.choice("DEFGABcdefg")  # noqa: E731
    pieces = [
        (lambda: n(), 1), (lambda: n() + "2", 2), (lambda: n() + "3", 3), (lambda: n() + "/" + n() + "/", 1),
        (lambda: n() + "3/2" + n() + "/", 2), (lambda: "z", 1), (lambda: "x2", 2), (lambda: "H" + n(), 1),
        (lambda: n() + ">" + n(), 2), (lambda: n() + "<" + n(), 2), (lambda: "(" + n() + n() + ")>" + n() + n(), 4),
        (lambda: "[" + n() + n() + "]2", 2), (lambda: "[" + n() + "2" + n() + "2]", 2), (lambda: "{g}" + n(), 1),
        (lambda: "~" + n() + "2", 2), (lambda: '"Am"' + n(), 1), (lambda: "!trill!" + n(), 1),
        (lambda: n() + "-" + n(), 2), (lambda: "." + n(), 1),
    ]
    if compound:
        pieces.append((lambda: "(2" + n() + n(), 3))
    else:
        pieces += [(lambda: "(3" + n() + n() + n(), 2), (lambda: "(3{a}" + n() + n() + n(), 2)]
    out: list[str] = []
    while units > 0:
        make, size = rng.choice(pieces)
        if size <= units:
            out.append(make())
            units -= size
    return (" " if rng.random() < 0.5 else "").join(out)


def _random_tune(rng: random.Random) -> str:
    """Strains with or without pickups, endings, repeats, double bars, and now and then a wrong bar."""
    meter, bar = rng.choice([("2/4", 4), ("3/4", 6), ("4/4", 8), ("6/8", 6), ("C|", 8), ("9/8", 9)])
    compound = meter in ("6/8", "9/8")
    strains = []
    count = rng.randint(1, 3)
    for s in range(count):
        lengths = [bar] * rng.choice([1, 2, 4, 8])
        pickup = rng.choice([0, 0, 1, 2, bar // 2])
        if pickup:
            lengths = [pickup] + lengths
            lengths[-1] = bar - pickup if rng.random() < 0.7 else bar
        if rng.random() < 0.25:
            k = rng.randrange(len(lengths))
            lengths[k] = max(1, lengths[k] + rng.choice([-2, -1, 1, 2]))
        bars = [_notes(rng, u, compound) for u in lengths]
        if rng.random() < 0.2 and len(bars) >= 2:
            text = "|".join(bars[:-1]) + "|1 " + bars[-1] + ":|2 " + _notes(rng, lengths[-1], compound) + "|]"
        else:
            text = "|".join(bars) + (rng.choice(["||", ":|", "|]", "|", "::"]) if s < count - 1 else rng.choice(
                ["|]", ":|", "|", ""]))
        strains.append(("|:" if rng.random() < 0.3 else "") + text)
    return tune(("\n" if rng.random() < 0.5 else "").join(strains), meter)


def test_checker_and_judge_agree_on_generated_tricky_tunes() -> None:
    rng = random.Random(15)
    texts = [_random_tune(rng) for _ in range(300)]
    checked = [bar_balance(t) for t in texts]
    judged = [judge_tune(t) for t in texts]
    disagree = [(t, c.unbalanced, j.unbalanced) for t, c, j in zip(texts, checked, judged)
                if (c.strictly_balanced, c.unbalanced) != (j.strictly_balanced, j.unbalanced)]
    assert not disagree, disagree[:3]
    passed = sum(c.strictly_balanced for c in checked)
    assert 0.15 * len(texts) < passed < 0.85 * len(texts)  # both outcomes are exercised


def _beams(score: object) -> int:
    return sum(1 for n in score.flatten().notes if n.beams and len(n.beams) > 0)  # type: ignore[attr-defined]


def test_the_checks_parse_skips_beams_in_its_own_thread_only() -> None:
    """parse_ok's music21 parse leaves out beaming (most of its cost); nobody else's does."""
    import threading

    from rwkv_music.formats.abc import check
    from rwkv_music.formats.score import abc_to_score

    jig = "L:1/8\nM:6/8\nK:G\nGAB cde|dcB AGF|GAB cde|dBG G3|]"
    assert _beams(check._parse(jig, beams=True)) > 0
    assert _beams(check._parse(jig)) == 0  # the switch works (a music21 rename would show here)
    assert parse_ok(jig) and _beams(abc_to_score(jig)) > 0  # and is off again after the check

    # While one thread parses without beams, another thread's parse still beams.
    inside, release, seen = threading.Event(), threading.Event(), []

    def hold_switch_on() -> None:
        check._beams_off.on = True
        inside.set()
        release.wait(30)
        check._beams_off.on = False

    holder = threading.Thread(target=hold_switch_on)
    holder.start()
    try:
        assert inside.wait(30)
        seen.append(_beams(abc_to_score(jig)))
    finally:
        release.set()
        holder.join()
    assert seen[0] > 0


def test_parse_ok_without_beams_agrees_with_music21s_full_import() -> None:
    """Skipping beams changes no verdict: human tunes, and the same tunes with random damage."""
    from rwkv_music.formats.abc import check

    rng = random.Random(5)
    human = [t.text for _, t in zip(range(12), corpus_tunes(collections=("oneills1850",)))]
    damaged = []
    for text in human:
        chars = list(text)
        for _ in range(15):
            chars[rng.randrange(len(chars))] = rng.choice("|:[]()/{}2345zZ^_=,'\"!<>-.~ \n")
        damaged.append("".join(chars))

    def full_import_ok(text: str) -> bool:
        score = check._parse(text, beams=True)
        return score is not None and len(score.flatten().notes) > 0

    verdicts = [(parse_ok(t), full_import_ok(t)) for t in human + damaged]
    assert [a for a, _ in verdicts] == [b for _, b in verdicts]
    assert all(a for a, _ in verdicts[: len(human)]) and not all(a for a, _ in verdicts)  # both kinds occur
