"""The ABC logits processor: every sampled tune parses in music21, is bar-balanced and has the form.

The oracles are :mod:`rwkv_music.formats.abc.check` (music21 only) and the strict judge
:mod:`rwkv_music.formats.abc.judge`, both independent of the state machine.  Random logits
first, then a random-weights v7 model (vocab 128) through the generation loop.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

import numpy as np
import pytest

from rwkv_music.errors import ConstraintError
from rwkv_music.formats.abc.check import bar_balance, parse_ok
from rwkv_music.formats.abc.constraint import AbcConstraint, decode_abc
from rwkv_music.formats.abc.grammar.machine import AbcGrammar, AbcGrammarConfig
from rwkv_music.formats.abc.judge import judge_tune
from rwkv_music.sampling.base import SamplingValueError

METERS = ("2/4", "3/4", "4/4", "6/8", "9/8", "C|")
UNITS = ("1/8", "1/16")
EOS = 3


def header(i: int) -> str:
    return f"S:2\nL:{UNITS[i % 2]}\nM:{METERS[i % 6]}\nK:D\n"


def ids(text: str) -> list[int]:
    return [2] + [ord(c) for c in text]


def prior_logits() -> np.ndarray:
    """Mildly peaked scores: note letters and bar lines likelier than punctuation (tunes look like tunes)."""
    prior = np.full(128, -3.0, dtype=np.float32)
    prior[[ord(c) for c in "ABCDEFGabcdefgz"]] = 1.0
    prior[[ord(c) for c in "| 2/"]] = 0.3
    prior[[ord(c) for c in "34\n"]] = -1.0
    return prior


def sample(constraint: AbcConstraint, prompts: list[list[int]], steps: int, seed: int, peak: float = 1.0,
           prior: np.ndarray | None = None) -> list[list[int]]:  # fmt: skip
    """Random-logit sampling through the processor: per step scores, mask, draw, update."""
    rng = np.random.default_rng(seed)
    n = len(prompts)
    constraint.reset(prompts)
    bias = (prior if prior is not None else np.zeros(128, np.float32)) + rng.normal(size=(n, 128)) * 0.5
    out: list[list[int]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    for step in range(steps):
        scores = (bias + rng.normal(size=(n, 128)) * peak).astype(np.float32)
        scores[done] = -np.inf
        masked = constraint(step, scores)
        chosen = []
        for r in range(n):
            if done[r]:
                chosen.append(0)
                continue
            p = np.exp(masked[r] - masked[r].max())
            t = int(rng.choice(128, p=p / p.sum()))
            chosen.append(t)
            out[r].append(t)
            done[r] = t == EOS
        constraint.update(chosen)
        if done.all():
            break
    return out


def check_tunes(heads: list[str], outputs: list[list[int]], form: tuple[int, int] | None = (2, 8)) -> list[str]:
    """music21 parses and balances every tune; with ``form`` (parts, bars per part) the judge checks it."""
    texts = [h + decode_abc(o) for h, o in zip(heads, outputs)]
    assert all(o and o[-1] == EOS for o in outputs), "every row ends with eos"
    bad = [t for t in texts if not parse_ok(t)]
    assert not bad, f"{len(bad)} tunes do not parse, e.g. {bad[0]!r}"
    reports = [bar_balance(t) for t in texts]
    unbalanced = [(t, r) for t, r in zip(texts, reports) if not r.strictly_balanced]
    assert not unbalanced, f"{len(unbalanced)} unbalanced, e.g. {unbalanced[0]!r}"
    if form is not None:
        for text in texts:
            check_form(text, *form)
    return texts


def check_form(text: str, parts: int, bars: int, per_line: int = 4) -> None:
    """The judge's strict reading of one tune of the form (issue 15)."""
    r = judge_tune(text)
    assert r.strictly_balanced, (text, r.problems)
    assert r.part_bars == (bars,) * parts, (text, r.part_bars)
    assert r.section_barlines == parts - 1, text  # one per part end, the tune's last not counted
    assert r.max_space_run <= 1, text
    assert r.ends_on_tonic, text
    pickup = r.bar_list[0].duration < r.bar_length  # every part then opens with one
    body = text[text.index("K:") :].split("\n")[1:]
    counts = [line.count("|") - line.count("||") for line in body]  # bar lines per line
    expected = []
    for _ in range(parts):
        lines = [per_line] * (bars // per_line) + ([bars % per_line] if bars % per_line else [])
        lines[0] += pickup
        expected += lines
    assert counts == expected, (text, counts, expected)


# -- random logits -------------------------------------------------------------------------------
def test_random_logit_tunes_parse_and_are_bar_balanced() -> None:
    heads = [header(i) for i in range(48)]
    outputs = sample(AbcConstraint(max_new_tokens=300), [ids(h) for h in heads], 300, seed=1, prior=prior_logits())
    texts = check_tunes(heads, outputs)
    assert sum(len(t) for t in texts) > 48 * 150  # real bodies, not just "C6|"


def test_without_the_form_tunes_are_still_strictly_balanced() -> None:
    heads = [header(i) for i in range(24)]
    outputs = sample(AbcConstraint(max_new_tokens=300, form=False), [ids(h) for h in heads], 300, seed=11,
                     prior=prior_logits())  # fmt: skip
    texts = check_tunes(heads, outputs, form=None)
    assert all(judge_tune(t).strictly_balanced for t in texts), [
        t for t in texts if not judge_tune(t).strictly_balanced
    ]


def test_with_no_short_bars_every_bar_is_a_full_bar() -> None:
    heads = [header(i) for i in range(24)]
    constraint = AbcConstraint(AbcGrammarConfig(short_bars="none"), max_new_tokens=300)
    texts = check_tunes(heads, sample(constraint, [ids(h) for h in heads], 300, seed=2, prior=prior_logits()), None)
    for text in texts:
        report = judge_tune(text)
        assert all(b.duration == b.metre for b in report.bar_list), text  # no pickup, no closing short bar


def test_a_lone_pickup_is_what_the_strict_checkers_reject() -> None:
    """``short_bars="pickup"`` (a first bar that no last bar completes) is kept for reading, not writing:
    both independent checkers call such a tune unbalanced."""
    heads = [header(i) for i in range(24)]
    constraint = AbcConstraint(AbcGrammarConfig(short_bars="pickup"), max_new_tokens=300)
    outs = sample(constraint, [ids(h) for h in heads], 300, seed=2, prior=prior_logits())
    texts = [h + decode_abc(o) for h, o in zip(heads, outs)]
    bars = {t: judge_tune(t).bar_list for t in texts}
    unpaired = [
        t for t, b in bars.items() if b[0].duration < b[0].metre and b[0].duration + b[-1].duration != b[-1].metre
    ]
    assert unpaired, "some tunes open with a pickup that the last bar does not complete"
    for text in unpaired:
        assert not judge_tune(text).strictly_balanced and not bar_balance(text).strictly_balanced, text


def test_uniform_logits_exercise_every_construct_and_stay_valid() -> None:
    heads = [header(i) for i in range(12)]
    texts = check_tunes(heads, sample(AbcConstraint(max_new_tokens=250), [ids(h) for h in heads], 250, seed=3))
    body = "".join(texts)
    for construct in ("(", "[", "{", '"', "!", ">"):
        assert construct in body


def test_model_may_write_the_header_itself() -> None:
    outputs = sample(AbcConstraint(max_new_tokens=300), [[2]] * 8, 300, seed=4, prior=prior_logits())
    texts = check_tunes([""] * 8, outputs, form=None)
    assert all("K:" in t for t in texts)
    for text in texts:  # S: and B: written by the model shape its form, and the form fit in 300 bytes
        codes = {}
        for line in text.split("\n"):  # the control-code block comes first
            if not re.fullmatch(r"[SBE]:\d+", line):
                break
            codes.setdefault(line[0], line[2:])
        check_form(text, int(codes.get("S", 2)), int(codes.get("B", 8)))


# -- length steering -------------------------------------------------------------------------------
def test_max_new_tokens_ends_every_row_legally_in_time() -> None:
    heads = [header(i) for i in range(12)]
    for budget in (12, 40):
        outputs = sample(AbcConstraint(max_new_tokens=budget, form=False), [ids(h) for h in heads], budget, seed=5)
        assert all(len(o) <= budget and o[-1] == EOS for o in outputs)
        grammar = AbcGrammar()
        assert all(grammar.accepts(h + decode_abc(o)) for h, o in zip(heads, outputs))


def test_the_form_fits_max_new_tokens_and_never_ends_at_the_cap() -> None:
    heads = [header(i) for i in range(12)]
    for budget in (110, 200):  # 110: the rows are forced to finish the form from their first bars
        outputs = sample(AbcConstraint(max_new_tokens=budget), [ids(h) for h in heads], budget, seed=6,
                         prior=prior_logits())  # fmt: skip
        assert all(len(o) <= budget for o in outputs)
        check_tunes(heads, outputs)


def test_a_budget_too_small_for_the_form_is_refused_at_construction() -> None:
    with pytest.raises(SamplingValueError, match="too small for the form"):
        AbcConstraint(max_new_tokens=40, meter="4/4", unit="1/8")
    with pytest.raises(SamplingValueError, match="too small for the form"):
        AbcConstraint(max_new_tokens=30)  # meter unknown: at least 2 bytes a bar
    AbcConstraint(max_new_tokens=12, parts=1, bars_per_part=2, meter="4/4", unit="1/8")  # "C8|G8|]" fits
    assert AbcConstraint(meter="none").config.form is False  # a free metre has no bars to shape


def test_form_keywords_override_the_defaults_and_the_control_codes() -> None:
    c = AbcConstraint(parts=3, bars_per_part=4, cadence=False, max_spaces=2, bars_per_line=2)
    assert (c.config.form, c.config.parts, c.config.bars_per_part, c.config.cadence) == (True, 3, 4, False)
    assert (c.config.max_spaces, c.config.bars_per_line) == (2, 2)
    assert AbcConstraint(AbcGrammarConfig()).config.form is False  # a given config keeps its own form
    heads = ["S:2\nB:8\nL:1/8\nM:3/4\nK:G\n"] * 4
    c = AbcConstraint(max_new_tokens=300, parts=3, bars_per_part=4, bars_per_line=2)
    texts = check_tunes(heads, sample(c, [ids(h) for h in heads], 300, seed=7, prior=prior_logits()), form=None)
    for text in texts:
        check_form(text, 3, 4, per_line=2)


def test_min_bytes_to_end_counts_the_shortest_completion_and_eos() -> None:
    c = AbcConstraint(form=False)
    c.reset([ids("L:1/8\nM:6/8\nK:D\n"), ids("L:1/8\nM:6/8\nK:D\nA6|")])
    assert c.min_bytes_to_end(0) == len("C6|") + 1
    assert c.min_bytes_to_end(1) == 1  # only eos


def test_eos_is_masked_until_a_bar_line_closes_the_tune() -> None:
    c = AbcConstraint(form=False)
    c.reset([ids("L:1/8\nM:6/8\nK:D\nA6"), ids("L:1/8\nM:6/8\nK:D\nA6|")])
    out = c(0, np.zeros((2, 128), dtype=np.float32))
    assert not np.isfinite(out[0, EOS]) and np.isfinite(out[1, EOS])


# -- protocol -------------------------------------------------------------------------------------
def test_bad_prompts_and_tokens_raise_constraint_errors() -> None:
    bad = ids("L:1/8\nM:2/4\nK:D\nA#")
    with pytest.raises(ConstraintError, match=f"row 1, position {len(bad) - 1}: byte '#'"):
        AbcConstraint().reset([ids("L:1/8\nM:2/4\n"), bad])
    with pytest.raises(ConstraintError, match="eos"):
        AbcConstraint().reset([[2, 65, EOS]])
    with pytest.raises(ConstraintError, match="needs at least"):
        AbcConstraint(max_new_tokens=3, form=False).reset([ids("L:1/8\nM:6/8\nK:D\n")])
    c = AbcConstraint()
    c.reset([ids("L:1/8\nM:6/8\nK:D\n")])
    with pytest.raises(ConstraintError, match="row 0: token 35 is not allowed"):
        c.update([ord("#")])  # "#" is not ABC outside text


def test_torch_scores_and_inactive_rows() -> None:
    torch = pytest.importorskip("torch")
    c = AbcConstraint()
    c.reset([ids("L:1/8\nM:6/8\nK:D\n"), ids("L:1/8\nM:6/8\nK:D\n")])
    scores = torch.zeros((2, 128))
    scores[1] = float("-inf")  # a finished row
    out = c(0, scores)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.isfinite(out[0, ord("A")]) and not torch.isfinite(out[0, ord("#")])
    assert not torch.isfinite(out[1]).any()
    c.update([ord("A"), 0])  # the loop's pad id for the finished row is ignored
    assert c.state(1) == c.grammar.feed(c.grammar.initial(), "L:1/8\nM:6/8\nK:D\n")


def test_forced_header_values() -> None:
    c = AbcConstraint(meter="6/8", key="Dmix")
    c.reset([ids("L:1/8\nM:")])
    allowed = np.flatnonzero(np.isfinite(c(0, np.zeros((1, 128), np.float32))[0]))
    assert [chr(i) for i in allowed] == [" ", "6"]
    with pytest.raises(ValueError, match="meter"):
        AbcConstraint(meter="5/3")


def test_decode_stops_at_eos_and_drops_special_ids() -> None:
    assert decode_abc([2, ord("A"), 0, ord("|"), EOS, ord("B")]) == "A|"


# -- a random-weights RWKV-7 through the generation loop -----------------------------------------
FORM_HEADERS = [  # every common metre (L:1/8, and L:1/16 for 2/4), keys with sharps, flats and modes
    "S:2\nL:1/8\nM:4/4\nK:D\n", "S:2\nL:1/8\nM:3/4\nK:G\n", "S:2\nL:1/8\nM:2/4\nK:Bb\n",
    "S:2\nL:1/16\nM:2/4\nK:Em\n", "S:2\nL:1/8\nM:6/8\nK:F#m\n", "S:2\nL:1/8\nM:9/8\nK:Dmix\n",
    "S:2\nL:1/8\nM:C\nK:A\n", "S:2\nL:1/8\nM:C|\nK:Eb\n",
]  # fmt: skip


def generate_tunes(path: object, heads: list[str], max_len: int, constrained: bool) -> tuple[list[str], list[str]]:
    from rwkv_music import load_model
    from rwkv_music.sampling.generate import generate

    model = load_model(str(path))
    processors = [AbcConstraint(max_new_tokens=max_len)] if constrained else []
    result = generate(model, [ids(h) for h in heads], processors=processors, max_new_tokens=max_len,
                      seeds=list(range(len(heads))), stop_tokens=[EOS], return_state=False)  # fmt: skip
    return [h + decode_abc(t) for h, t in zip(heads, result.tokens)], result.finish_reasons


@pytest.mark.parametrize("per_metre", [3, pytest.param(25, marks=pytest.mark.slow)])
def test_random_v7_model_tunes_keep_the_metre_and_the_form(
    checkpoint_path: Callable[..., object], per_metre: int
) -> None:
    path = checkpoint_path("7", vocab_size=128, n_embd=64, head_size=32, n_layer=2)
    heads = FORM_HEADERS * per_metre
    texts, reasons = generate_tunes(path, heads, 600, constrained=True)
    assert set(reasons) == {"stop"}  # every row ended with eos, at a legal point, never at the cap
    assert sum(map(parse_ok, texts)) == len(texts)
    assert sum(bar_balance(t).strictly_balanced for t in texts) == len(texts)
    for text in texts:
        check_form(text, 2, 8)


@pytest.mark.parametrize(
    "name, value",
    [("meter", "6/8"), ("meter", "5/3"), ("meter", "17/8"), ("meter", "none"), ("unit", "1/8"), ("unit", "4/64"),
     ("unit", "1/128"), ("key", "Dmix"), ("key", "E Minor"), ("key", "H"), ("key", "Gxyz")],
)  # fmt: skip
def test_forced_values_are_checked_by_the_one_header_validator(name: str, value: str) -> None:
    from rwkv_music.errors import AbcFormatError
    from rwkv_music.formats.abc import header

    check = {"meter": header.check_meter, "unit": header.check_unit, "key": header.check_key}[name]
    try:
        check(value)
        valid = True
    except AbcFormatError:
        valid = False
    if valid:
        c = AbcConstraint(**{name: value})
        assert getattr(c.config, name) == value
    else:
        with pytest.raises(AbcFormatError, match=name if name != "unit" else "unit note length"):
            AbcConstraint(**{name: value})
    assert valid == (value in ("6/8", "none", "1/8", "Dmix", "E Minor"))


# -- what a musician writes: note values and upbeats (issue 15) ------------------------------------
_NOTE_OR_REST = re.compile(r"([_^=]*[A-Ga-gz][,']*)(\d*)(/*)(\d*)(<+|>+)?")


def _written_lengths(body: str, unit: Fraction) -> list[Fraction]:
    """Each note's written length in whole notes (suffix times L; broken rhythm applied, tuplets not)."""
    body = re.sub(r'"[^"]*"|![^!]*!|\{[^}]*\}', "", body)  # chord symbols, decorations, grace notes
    out: list[Fraction] = []
    carry = None
    for m in _NOTE_OR_REST.finditer(body):
        num = int(m.group(2) or 1)
        den = int(m.group(4)) if m.group(4) else 2 ** len(m.group(3))
        value = Fraction(num, den) * unit
        if carry is not None:
            value, carry = value * carry, None
        if m.group(5):  # A>B: A dotted, B halved (ABC 2.1 section 4.4)
            k = len(m.group(5))
            short = Fraction(1, 2**k)
            first, carry = (2 - short, short) if m.group(5)[0] == ">" else (short, 2 - short)
            value *= first
        out.append(value)
    return out


@pytest.mark.parametrize("unit", ["1/8", "1/16"])
def test_form_writes_no_32nd_notes_and_upbeats_of_at_most_half_a_bar(unit: str) -> None:
    heads = [f"S:2\nL:{unit}\nM:{m}\nK:D\n" for m in METERS for _ in range(3)]
    prompts, texts = [ids(h) for h in heads], []
    for meter in METERS:
        rows = [p for p, h in zip(prompts, heads) if f"M:{meter}\n" in h]
        c = AbcConstraint(max_new_tokens=400, meter=meter, unit=unit, key="D")
        outs = sample(c, rows, 400, seed=5, prior=prior_logits())
        texts += [f"S:2\nL:{unit}\nM:{meter}\nK:D\n" + decode_abc(o) for o in outs]
    for text in texts:
        body = text.split("K:D\n", 1)[1]
        lengths = _written_lengths(body, Fraction(1, int(unit.split("/")[1])))
        assert min(lengths) >= Fraction(1, 16), (text, min(lengths))
        dotted = [v for v in lengths if v.numerator % 3 == 0]
        assert not dotted or min(dotted) >= Fraction(3, 16), (text, min(dotted))
        report = judge_tune(text)
        assert report.strictly_balanced, (text, report.problems)
        first = report.bar_list[0].duration
        assert first == report.bar_length or first * 2 <= report.bar_length, text  # an upbeat, not a short bar


def test_a_human_prompt_outside_the_strict_rule_is_read_and_the_new_music_keeps_it() -> None:
    """A pickup that the last bar does not complete is common in human tunes (``continue`` takes them);
    the prompt is read with the section rule, the bars written after it follow the strict one."""
    head = "L:1/8\nM:6/8\nK:D\n"
    body = "A|dBA dBG|ede fee|fed cBA|dBG F3||\n"
    assert not judge_tune(head + body).strictly_balanced  # the prompt itself breaks the strict rule
    strict = AbcConstraint(max_new_tokens=300, form=False)
    with pytest.raises(ConstraintError):  # the strict grammar alone refuses the prompt's last bar line
        strict._read_prompt(strict.grammar, 0, ids(head + body))
    outs = sample(strict, [ids(head + body)] * 12, 300, seed=3, prior=prior_logits())
    for out in outs:
        new = decode_abc(out)
        assert out[-1] == EOS and len(new) > 10
        report = judge_tune(head + new)  # the new part alone, under the same header
        assert report.strictly_balanced, (new, report.problems)
    with pytest.raises(ConstraintError, match="not valid ABC here"):
        AbcConstraint(max_new_tokens=300, form=False).reset([ids(head + "A|dBA dB#|")])  # still not ABC
