"""The constraint's variety rules, each checked by a count that does not share its code.

No bar three times running (``max_bar_repeats``): the constraint reads bytes
(:mod:`rwkv_music.formats.abc.variety`), the judge counts equal consecutive bars from its own parse
(``TuneReport.max_same_bars``).  No tune in one note length (``vary_rhythm``): checked with
:func:`rwkv_music.train.rewards.rhythm_is_monotone`.  A scorer that always wants to copy one bar drives the
constraint: with the rules the counts come out clean, without them the copies run on.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from rwkv_music.errors import OptionError
from rwkv_music.formats.abc.constraint import AbcConstraint, PerRowAbcConstraint
from rwkv_music.formats.abc.format import AbcFormat
from rwkv_music.formats.abc.judge import judge_tune
from rwkv_music.formats.abc.options import AbcOptions
from rwkv_music.formats.abc.variety import RHYTHM_BARS, BarRun, RhythmRun
from rwkv_music.sampling.base import SamplingValueError
from rwkv_music.train.rewards import rhythm_is_monotone

HEAD = "S:2\nL:1/8\nM:4/4\nK:D\n"


def fed(run: Any, text: str) -> Any:
    """``run`` (a BarRun or RhythmRun) after reading ``text``."""
    for ch in text:
        run.feed(ch)
    return run


def run_of(text: str) -> BarRun:
    return fed(BarRun(), text)


def test_bar_run_counts_equal_bars_spaces_and_barline_marks_aside() -> None:
    run = run_of("L:1/8\nK:D\n|: d2dc d2ef | d2dcd2ef :|\n")
    assert (run.previous, run.run) == ("d2dcd2ef", 2)
    assert run.copy_byte(2) == ord("d") and run.copy_byte(3) == -1
    for ch in "d2d":
        run.feed(ch)
    assert run.copy_byte(2) == ord("c")
    run.feed("e")  # the bar left the copy
    assert run.copy_byte(2) == -1
    assert run_of("K:D\nA2B2 c4 :: A2B2 c4 |").run == 2  # the "::" repeat closes a bar too
    assert run_of("M:4/4\nA2B2 c4|\n").run == 0  # header lines are not bars (no K: line yet)


def test_judge_counts_the_longest_run_of_equal_bars() -> None:
    tune = "X:1\nL:1/8\nM:6/8\nK:G\nd>BB B2c | d>BB  B2c |\nd>BB B2c | A>BA G2B |\n\"G\"d>BB B2c | Z2 | Z2 |]\n"
    report = judge_tune(tune)
    assert report.max_same_bars == 3  # across the line break; the chord symbol makes the fifth bar differ
    assert [b.text for b in report.bar_list][:5] == ["d>BBB2c"] * 3 + ["A>BAG2B", '"G"d>BBB2c']
    assert judge_tune(tune.replace("d>BB  B2c", "d>Bc B2c")).max_same_bars == 2


def copycat(constraints: list[AbcConstraint], bar: str = "d2dc d2ef|", steps: int = 600, head: str = HEAD) -> str:
    """Greedy decoding of a scorer that always wants to write ``bar`` again (then a line break, then the
    end); every constraint given must allow the same bytes at every step."""
    prompt = [2] + [ord(c) for c in head]
    for c in constraints:
        c.reset([prompt])
    noise = np.random.default_rng(0).random((steps, 128)).astype(np.float32)
    text, pos = "", 0
    for step in range(steps):
        scores = noise[step] - 4.0
        scores[ord(bar[pos % len(bar)])] = 5.0
        scores[ord("\n")], scores[3] = 2.0, 1.0
        outs = [c.apply_inplace(step, scores[None, :].copy()) for c in constraints]
        for other in outs[1:]:
            np.testing.assert_array_equal(np.isfinite(other), np.isfinite(outs[0]), err_msg=f"step {step}")
        t = int(np.argmax(outs[0][0]))
        for c in constraints:
            c.update([t])
        if t == 3:
            return head + text
        pos = 0 if chr(t) == "|" else pos + (chr(t) == bar[pos % len(bar)])
        text += chr(t)
    raise AssertionError(f"no end in {steps} steps: {text!r}")


def test_the_constraint_stops_a_third_copy_and_keeps_the_tune_strict() -> None:
    tune = copycat([AbcConstraint(meter="4/4", unit="1/8", key="D", max_new_tokens=600),
                    PerRowAbcConstraint(meter="4/4", unit="1/8", key="D", max_new_tokens=600)])
    report = judge_tune(tune)
    assert report.max_same_bars == 2, tune
    assert report.strictly_balanced and report.ends_on_tonic and report.part_bars == (8, 8), tune
    assert sum(b.text == "d2dcd2ef" for b in report.bar_list) >= 6  # the scorer still got its bar, in pairs


def test_without_the_limit_the_copies_run_on() -> None:
    tune = copycat([AbcConstraint(meter="4/4", unit="1/8", key="D", max_new_tokens=600, max_bar_repeats=0)])
    assert judge_tune(tune).max_same_bars >= 4, tune
    free = AbcConstraint(meter="4/4", form=False)
    assert free.max_bar_repeats == 0  # (the limit is part of the form unless asked for)
    with pytest.raises(SamplingValueError, match="max_bar_repeats"):
        AbcConstraint(max_bar_repeats=-1)


def test_options_carry_the_rules_to_the_constraint() -> None:
    fmt = AbcFormat()
    for limit, vary in ((2, True), (3, False), (0, True)):
        options = AbcOptions(max_bar_repeats=limit, vary_rhythm=vary)
        row = fmt.row_prompt(None, options)
        constraint = fmt.constraint(options, row.group)
        assert (constraint.max_bar_repeats, constraint.vary_rhythm) == (limit, vary)
    free = AbcOptions(form=False)
    assert fmt.constraint(free, fmt.row_prompt(None, free).group).vary_rhythm is False  # a rule of the form
    with pytest.raises(OptionError, match="max_bar_repeats"):
        AbcOptions(max_bar_repeats=-2)


def rhythm_of(text: str) -> RhythmRun:
    return fed(RhythmRun(), text)


def test_rhythm_run_reads_note_lengths_and_says_what_to_ban() -> None:
    head = "L:1/8\nM:3/4\nK:D\n"
    run = rhythm_of(head + 'd2 "A"e2 !trill!f2 | {g}e2 [DFA]2 c2 | [K:D] d2 e2 f2 | d')
    assert (run.lengths, run.bars, run.varied) == ({"2"}, 3, False)
    assert run.banned() == ("ban", "2")  # the note just begun may not be a crotchet
    run.feed("'")
    assert run.banned() == ("ban", "2")  # (after its octave mark too)
    run.feed("4")
    assert run.banned() is None  # its length is being written
    run.feed(" ")
    assert run.varied and run.lengths == {"2", "4"}
    quavers = rhythm_of(head + "defg ab | agfe dc | BAGF ED | c")
    assert quavers.banned() == ("keep", "0123456789/,'")  # one unit is no suffix: a suffix must come
    assert rhythm_of(head + "d2 e2 f2 | d2 e2 f2 | d").banned() is None  # (two bars: not yet)
    for varied in ("d>e f2 | d2 e2 f2 | d2 e2 f2 | d", "(3def f2 e2 | d2 e2 f2 | d2 e2 f2 | d"):
        assert rhythm_of(head + varied).varied and rhythm_of(head + varied).banned() is None
    assert RHYTHM_BARS == 3


def test_the_constraint_gives_a_tune_a_second_note_length() -> None:
    head = "S:2\nL:1/8\nM:3/4\nK:D\n"
    kwargs = dict(meter="3/4", unit="1/8", key="D", max_new_tokens=600, max_bar_repeats=0)  # (this rule alone)
    def first_part(tune: str) -> str:
        return tune.split("K:D\n", 1)[1].split("||", 1)[0]

    plain = copycat([AbcConstraint(**kwargs, vary_rhythm=False)], bar="d2 e2 f2|", head=head)
    assert rhythm_is_monotone(first_part(plain)), plain  # the scorer alone: a part of crotchets
    tune = copycat([AbcConstraint(**kwargs), PerRowAbcConstraint(**kwargs)], bar="d2 e2 f2|", head=head)
    assert not rhythm_is_monotone(first_part(tune)), tune
    assert first_part(tune).startswith("d2 e2 f2|" * RHYTHM_BARS), tune  # free until the rule's bar
    report = judge_tune(tune)
    assert report.strictly_balanced and report.ends_on_tonic, tune


def _final_span_whole_notes(tune: str) -> Fraction:
    """How long before the end a tune's last note starts: its written length and the rests after it, in
    whole notes (a reading of its own, with a regex)."""
    unit = re.search(r"^L:\s*1/(\d+)", tune, re.M)
    body = re.sub(r'"[^"]*"|![^!]*!|\{[^}]*\}', "", tune.split("\nK:", 1)[1])
    events = list(re.finditer(r"[_^=]*([A-Ga-gz])[,']*(\d*)(/*)(\d*)", body))
    last = max(i for i, m in enumerate(events) if m.group(1) != "z")
    span = Fraction(0)
    for m in events[last:]:  # the last note, then the rests after it
        num = int(m.group(2) or 1)
        span += Fraction(num, (int(m.group(4)) if m.group(4) else 2 ** len(m.group(3))) if m.group(3) else 1)
    return span / int(unit.group(1) if unit else 8)


@pytest.mark.parametrize("meter", ["4/4", "3/4", "6/8"])
def test_tunes_in_common_metres_end_a_quarter_note_or_more_before_the_end(meter: str, checkpoint_path: Any) -> None:
    """LONG_ENDING_METERS: a random-weights model, whose lengths are anyone's guess, never squeezes its final tonic
    onto the last off-beat (the tonic, held or followed by a rest, spans a quarter note or more)."""
    from rwkv_music import Composer
    from rwkv_music.formats.abc.grammar.timing import LONG_ENDING_METERS

    assert meter in LONG_ENDING_METERS
    composer = Composer.load(checkpoint_path("7", vocab_size=128, n_embd=64, head_size=32, n_layer=2), mode="abc")
    for unit in ("1/8", "1/16"):
        for piece in composer.compose_abc(n=6, key="G", meter=meter, unit=unit, seed=3):
            report = judge_tune(piece.text)
            assert report.strictly_balanced and report.ends_on_tonic, piece.text
            assert _final_span_whole_notes(piece.text) >= Fraction(1, 4), piece.text
