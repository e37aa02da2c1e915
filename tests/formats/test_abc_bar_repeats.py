"""No bar three times running (the constraint's ``max_bar_repeats``), checked by the judge's own count.

The constraint reads bytes (:mod:`rwkv_music.formats.abc.repeats`); the judge counts equal consecutive
bars from its own parse (``TuneReport.max_same_bars``).  A scorer that always wants to copy one bar
drives the constraint: with the limit the judge finds no run over two, without it the copies run on.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_music.errors import OptionError
from rwkv_music.formats.abc.constraint import AbcConstraint, PerRowAbcConstraint
from rwkv_music.formats.abc.format import AbcFormat
from rwkv_music.formats.abc.judge import judge_tune
from rwkv_music.formats.abc.options import AbcOptions
from rwkv_music.formats.abc.repeats import BarRun
from rwkv_music.sampling.base import SamplingValueError

HEAD = "S:2\nL:1/8\nM:4/4\nK:D\n"


def run_of(text: str) -> BarRun:
    run = BarRun()
    for ch in text:
        run.feed(ch)
    return run


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


def copycat(constraints: list[AbcConstraint], bar: str = "d2dc d2ef|", steps: int = 600) -> str:
    """Greedy decoding of a scorer that always wants to write ``bar`` again (then a line break, then the
    end); every constraint given must allow the same bytes at every step."""
    prompt = [2] + [ord(c) for c in HEAD]
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
            return HEAD + text
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


def test_options_carry_the_limit_to_the_constraint() -> None:
    fmt = AbcFormat()
    for limit in (2, 3, 0):
        options = AbcOptions(max_bar_repeats=limit)
        row = fmt.row_prompt(None, options)
        assert fmt.constraint(options, row.group).max_bar_repeats == limit
    with pytest.raises(OptionError, match="max_bar_repeats"):
        AbcOptions(max_bar_repeats=-2)
