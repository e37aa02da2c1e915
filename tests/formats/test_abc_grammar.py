"""The ABC state machine: human tunes are legal, the subset's rules hold, no dead ends.

Oracles: the human tunes of the installed music21 corpus, and music21's own ABC reader for
meters, note lengths, tuplet ratios and chord symbols.
"""

from __future__ import annotations

import random
import warnings
from fractions import Fraction
from typing import Callable

import pytest

from rwkv_music.formats.abc.check import corpus_tunes
from rwkv_music.formats.abc.grammar.machine import AbcGrammar, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.grammar.values import (
    CHORD_QUALITIES,
    length_texts,
    meter_info,
    meter_values,
    tuplet_ratio,
    tuplet_texts,
)
from rwkv_music.formats.abc.tokenizer import AbcTokenizer
from rwkv_music.sampling.base import SamplingValueError

HEAD = "L:1/8\nM:4/4\nK:G\n"
STRICT = AbcGrammar()
LENIENT = AbcGrammar(AbcGrammarConfig.human())


def corpus_sample(n: int) -> list:
    """A deterministic sample spread over all collections (every k-th tune of each)."""
    by_collection: dict[str, list] = {}
    for tune in corpus_tunes():
        by_collection.setdefault(tune.collection, []).append(tune)
    total = sum(len(v) for v in by_collection.values())
    sample = []
    for tunes in by_collection.values():
        k = max(1, round(len(tunes) * n / total))
        step = max(1, len(tunes) // k)
        sample += tunes[::step][:k]
    return sample


# -- human tunes ---------------------------------------------------------------------------------
def test_human_corpus_sample_is_accepted_at_least_95_percent() -> None:
    fold = AbcTokenizer(errors="fold").fold
    sample = corpus_sample(300)
    assert len(sample) >= 290 and len({t.collection for t in sample}) >= 6
    rejected = [(t.collection, t.index, LENIENT.explain(fold(t.text))) for t in sample]
    rejected = [r for r in rejected if r[2] is not None]
    rate = 1 - len(rejected) / len(sample)
    assert rate >= 0.95, f"accepted {rate:.1%}; first rejections: {rejected[:5]}"


@pytest.mark.parametrize(
    "tune",
    [
        "X:1\nT:Air\nM:6/8\nL:1/8\nK:D\nA|d2A B2c|d2A B2c|d3 A2|]",  # pickup + closing bar = one bar
        'S:3\nB:9\nE:4\nB:9\nE:4\nE:4\nB:9\nL:1/8\nM:3/4\nK:D\n Bc |"G" d2 cB"A" A2 |"Bm" F2 B4|d4|]',
        'T:x\nM:C|\nL:1/8\nK:Ador\n|:"Am"A2 (3Bcd e2 ~a2|g>f e<d [CEG]4:|\n|1 A8 :|2 A8||',
        "M:2/4\nL:1/16\nK:Bb\n{g}a2>b2 c'4|(3:2:3A2B2c2 z4|!trill!d8-|d4 z4|]",
        "M:9/8\nL:1/8\nK:Em\n(5ABcde f2g a3|a3 b3 c'3|]",  # compound meter: (5 is 5 in the time of 3
        "M:none\nL:1/4\nK:G\nABc de fg|]",  # free meter: no bar checks
        "M:4/4\nL:1/8\nK:G\nG8|\nK:D\nM:3/4\nA6|]",  # field lines between bars
        "M:C\nL:1/8\nK:G\nGABc d2 d2|\\\n  e8|]",  # continuation line
    ],
)
def test_strict_grammar_accepts_well_formed_tunes(tune: str) -> None:
    assert STRICT.explain(tune) is None


@pytest.mark.parametrize(
    "text, why",
    [
        (HEAD + "A8 B|", "overfull bar"),
        (HEAD + "A8|B6|C8|", "short bar closed by a plain bar line"),
        (HEAD + "A8|B8", "no final bar line"),
        (HEAD + "A8|B4 ", "ends inside a bar"),
        ("K:G\nA8|]", "K: before M: or L:"),
        ("T:a\nX:1\nL:1/8\nK:G\nA8|]", "X: not first"),
        (HEAD + "A7 (3ABC|]", "tuplet reaching past the bar line"),
        (HEAD + "(3A>BC D4 z|]", "broken rhythm inside a tuplet"),
        (HEAD + "A7 A::", "A:: reads as a field line in music21"),
        (HEAD + "|:|A8|]", "empty bar after a repeat start"),
        (HEAD + "A4\nK:D\nA4|]", "field line inside a bar"),
        (HEAD + "~ A8|]", "~ not right before its note"),
        (HEAD + "A8|\n\nB8|]", "blank line"),
        (HEAD + "A8|B8|]\u00e9", "non-ASCII byte"),
        (HEAD + "(3A5B2C2 z2|]", "tuplet of a tied (5/8) note"),
        (HEAD + "x8|]", "invisible rest (dropped by music21)"),
        (HEAD + "A0|]", "zero length"),
        (HEAD + "A//2 z7|]", "n// length that music21 misreads"),
        ("L:1/8\nM:4/4\nQ:fast\nK:G\nA8|]", "free-text tempo (crashes music21)"),
        ("L:1/8\nM:2+3/8\nK:G\nA8|]", "additive meter (misread by music21)"),
        (HEAD + '"Xyz"A8|]', "not a chord symbol"),
        (HEAD + "A2-|]", "tie with nothing after"),
    ],
)
def test_strict_grammar_rejects(text: str, why: str) -> None:
    assert not STRICT.accepts(text), why


def test_strict_metre_allows_only_pickup_pairs_within_a_section() -> None:
    # the default ("paired"): a section's pickup and its closing bar make one bar; || exempts nothing
    assert STRICT.accepts(HEAD + "D2|G8|G8|A6 :|D2|G8|B8|A6|]")
    assert STRICT.accepts(HEAD + "D2|G8|G8|A6||G8|G8|]")  # a later section need not open with one
    for text, why in [
        (HEAD + "G8|A4||B4|G8|]", "short bar closed by || (the old loophole)"),
        (HEAD + "G8|A4|]", "short last bar without a pickup"),
        (HEAD + "D2|G8|G8|G8|]", "pickup never completed"),
        (HEAD + "D2|G8|G8|A4|]", "closing bar does not complete the pickup"),
        (HEAD + "D2|G8|A6|]", "pickup pair in a section of one full bar"),
        (HEAD + "D2||G8|G8|A6|]", "pickup closed by a section bar line"),
        (HEAD + "D2|G8|G8|A6||D4|G8|B8|A4|]", "later pickup of another length than the tune's"),
        (HEAD + "G8|A8||D2|G8|B8|A6|]", "the first bar was full: the tune has no pickup length"),
        (HEAD + "D2|G8|G8|G8| ||A6|]", "a section line on an empty bar after | (a reader starts a section there)"),
        (HEAD + "D2|G8|G8|[1 A6:|[2 A6||", "endings in a tune with a pickup"),
    ]:
        assert not STRICT.accepts(text), why
    assert not STRICT.is_final(STRICT.feed(STRICT.initial(), HEAD + "D2|G8|G8|"))  # the pair is owed


def test_short_bars_follow_the_configured_policy() -> None:
    sections = AbcGrammar(AbcGrammarConfig(short_bars="sections"))
    pickup_and_sections = HEAD + "D2|G8|A4 :|B4 C4|G8|]"
    assert sections.accepts(pickup_and_sections)  # A4 :| B4 completes the short bar
    assert not STRICT.accepts(pickup_and_sections)
    assert not sections.accepts(HEAD + "D2|G8|A4 :|B2 C4|G8|]")  # B2 C4 does not complete it
    loose = AbcGrammar(AbcGrammarConfig(short_bars="sections", pair_short_bars=False))
    assert loose.accepts(HEAD + "D2|G8|A4 :|B2 C4|G8|]")
    pickup_only = AbcGrammar(AbcGrammarConfig(short_bars="pickup"))
    assert pickup_only.accepts(HEAD + "D2|G8|A8|]") and not pickup_only.accepts(pickup_and_sections)
    none = AbcGrammar(AbcGrammarConfig(short_bars="none"))
    assert none.accepts(HEAD + "G8|A8|]") and not none.accepts(HEAD + "D2|G8|A8|]")


def test_eos_is_legal_only_after_a_closing_bar_line() -> None:
    g = STRICT
    assert not g.is_final(g.feed(g.initial(), HEAD + "A8"))
    assert g.is_final(g.feed(g.initial(), HEAD + "A8|"))
    assert g.is_final(g.feed(g.initial(), HEAD + "A8|]\n"))
    assert not g.is_final(g.feed(g.initial(), HEAD + "A8|:"))
    assert not g.is_final(g.feed(g.initial(), HEAD + "z8|"))  # no pitched note yet


# -- the subset agrees with music21 ------------------------------------------------------------
def test_meter_compound_flag_and_default_unit_match_music21() -> None:
    from music21 import abcFormat, meter

    for value in meter_values(12, False):
        bar, compound, unit = meter_info(value)
        ts = meter.TimeSignature({"C": "4/4", "C|": "2/2"}.get(value, value))
        assert compound == (ts.beatDivisionCount == 3), value
        assert bar * 4 == Fraction(ts.barDuration.quarterLength), value
        token = abcFormat.ABCMetadata(f"M:{value}")
        token.preParse()
        assert unit * 4 == Fraction(token.getDefaultQuarterLength()), value


def test_note_lengths_match_music21() -> None:
    from music21 import abcFormat

    for text, value in length_texts(16, (2, 4, 8, 16), lenient=False).items():
        note = abcFormat.ABCNote()
        note.activeDefaultQuarterLength = 0.5
        assert Fraction(note.getQuarterLength("A" + text)) == value / 2, text


def test_tuplet_ratios_match_music21() -> None:
    from music21 import abcFormat, meter

    for ts in ("6/8", "2/4"):
        for text in tuplet_texts():
            token = abcFormat.ABCTuplet(text)
            token.updateRatio(meter.TimeSignature(ts))
            token.updateNoteCount()
            expected = (token.numberNotesActual, token.numberNotesNormal, token.noteCount)
            assert tuplet_ratio(text, ts == "6/8") == expected, (ts, text)


def test_chord_symbols_are_read_by_music21() -> None:
    from music21 import common, harmony

    for root in ("C", "F#", "Bb"):
        for quality in CHORD_QUALITIES:
            for bass in ("", "/E", "/Ab"):
                text = root + quality + bass
                assert STRICT.accepts(f'{HEAD}"{text}"A8|]'), text
                # as music21's ABC reader does; ChordSymbol raises on a symbol it cannot read
                symbol = harmony.ChordSymbol(common.cleanedFlatNotation(text))
                assert symbol.root().name[0] == root[0], text


# -- no dead ends, completions -----------------------------------------------------------------------
@pytest.mark.parametrize("short_bars", ["paired", "sections", "pickup", "form"])
def test_random_walks_never_reach_a_dead_end_and_always_complete(short_bars: str) -> None:
    cfg = (
        AbcGrammarConfig(form=True, bars_per_part=3)
        if short_bars == "form"
        else AbcGrammarConfig(short_bars=short_bars)
    )
    g = AbcGrammar(cfg)
    rng = random.Random(7)
    prompts = ["", "S:2\n", "L:1/16\nM:9/8\nK:D\n", "L:1/8\nM:C|\nK:Ador\n", "L:1/8\nM:3/4\nK:F\n"]
    steps = 0
    for walk in range(25):
        state = g.feed(g.initial(), prompts[walk % len(prompts)])
        for i in range(220):
            legal = [chr(b) for b in range(4, 128) if g.step(state, chr(b)) is not None]
            assert legal or g.is_final(state), f"dead end in {state}"
            if not legal:
                break
            state = g.step(state, rng.choice(legal))
            steps += 1
            if i % 9 == 0:
                tail = g.completion(state)
                assert tail is not None and g.is_final(g.feed(state, tail)), state
    assert steps > 4000


def test_completion_is_short_and_legal() -> None:
    g = STRICT
    assert g.completion(g.feed(g.initial(), "L:1/8\nM:6/8\nK:D\n")) == "C6|"
    assert g.completion(g.feed(g.initial(), "L:1/8\nM:6/8\nK:D\nA2B ((3a")) == "zz)z|"
    assert g.completion(g.feed(g.initial(), "L:1/8\nM:6/8\nK:D\nA|B6|")) == "z6|z5|]"  # the pickup's pair
    start = g.completion(g.initial())
    assert g.is_final(g.feed(g.initial(), start)) and len(start) < 16


# -- options -----------------------------------------------------------------------------------------
def test_key_scale_only_forbids_accidentals_and_pitch_range_bounds_notes() -> None:
    g = AbcGrammar(AbcGrammarConfig(key_scale_only=True, pitch_range=(60, 72)))
    assert g.accepts(HEAD + "CDEF GABc|]")
    assert not g.accepts(HEAD + "^CDEF GABc|]")
    assert not g.accepts(HEAD + "CDEF GABd|]")  # d = 74
    assert not g.accepts(HEAD + "C,DEF GABc|]")


def test_forced_header_values_are_the_only_ones_allowed() -> None:
    g = AbcGrammar(AbcGrammarConfig(meter="6/8", key="Dmix"))
    assert g.accepts("M:6/8\nL:1/8\nK:Dmix\nA6|]")
    assert not g.accepts("M:3/4\nL:1/8\nK:Dmix\nA6|]")
    assert not g.accepts("L:1/8\nK:Dmix\nA8|]")  # the forced meter must be stated


def test_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(SamplingValueError, match="short_bars"):
        AbcGrammarConfig(short_bars="sometimes")
    with pytest.raises(SamplingValueError, match="pitch_range"):
        AbcGrammarConfig(pitch_range=(80, 60))
    assert AbcGrammarConfig.from_dict(AbcGrammarConfig.human().to_dict()) == AbcGrammarConfig.human()


def test_states_are_immutable_hashable_values() -> None:
    a = STRICT.feed(STRICT.initial(), HEAD + "A2")
    b = STRICT.feed(STRICT.initial(), HEAD + "A2")
    assert isinstance(a, AbcState) and a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a.pos == Fraction(0) and a.nfac == Fraction(1, 8) and a.buf == "2"
    with pytest.raises(AttributeError):
        a.pos = Fraction(1)  # type: ignore[misc]


def test_lenient_reads_essen_bars_that_drift_from_the_meter() -> None:
    # Essen bar lines follow phrases: "d4d4z2 / d2 |" holds 12 quarters in 4/2 (music21 re-bars it)
    tune = "M:4/2\nL:1/4\nK:G\nG2 | G2G2B2G2 | d4d4z2\nd2 | e2d2=f2d2 | e4d4z2\nd2 | B2B2c2e2 |]"
    with warnings.catch_warnings():
        assert LENIENT.accepts(tune) and not STRICT.accepts(tune)


# -- fixed masks from simple rules ---------------------------------------------------------------------
PITCH_LETTERS = "CDEFGABcdefgab"
ACCIDENTAL_SIGNS = "^_="
STRICT_DECORATIONS = AbcGrammarConfig().decorations


def _initial_mask() -> set[str]:
    cfg = AbcGrammarConfig()
    # control codes S/B/E, then X first, free-text fields, M/L/Q; K only after M or L
    return set("SBE" + "X" + cfg.text_fields + "MLQ")


def _bar_start_mask() -> set[str]:
    # a note, rest or chord; a decoration, symbol, grace group or slur before one; a body field
    # line (line start); a bar line; a space or continuation.  Not: a newline (blank line), ")"
    # (no slur open), "-" "<" ">" (no note before), eos (no note yet)
    return set(PITCH_LETTERS + ACCIDENTAL_SIGNS + "z" + STRICT_DECORATIONS + "KML" + '[("!{' + "|:" + " \\")


def _full_bar_mask() -> set[str]:
    # "A8" fills the 4/4 bar: its length may still be respelt ("8/" is shorter), the bar may end
    # ("|", ":|", "[|"), the note may be tied or shortened ("<"), spacing; no new note and no
    # prefix of one fits, ">" would overfill the bar
    return set("/" + "|:[" + "-<" + " \n\\")


def _tuplet_opener_mask() -> set[str]:
    # "(3" in the last quarter of the bar: it may grow ("(3:"), or its three notes follow at once,
    # possibly with a decoration, symbol or slur; no grace group, bar line, newline or tie inside
    return set(PITCH_LETTERS + ACCIDENTAL_SIGNS + "z" + STRICT_DECORATIONS + '[("!' + ": ")


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("", _initial_mask),
        (HEAD, _bar_start_mask),
        (HEAD + "A8", _full_bar_mask),
        (HEAD + "A6 (3", _tuplet_opener_mask),
    ],
    ids=["bos", "bar-start", "full-bar", "tuplet-opener"],
)
def test_masks_at_fixed_points_follow_simple_rules(prefix: str, expected: Callable[[], set[str]]) -> None:
    state = STRICT.feed(STRICT.initial(), prefix)
    assert state is not None
    assert set(STRICT.allowed(state)) == expected()
    assert not STRICT.is_final(state)


def test_note_length_bytes_are_allowed_exactly_when_some_length_still_fits() -> None:
    """In a plain note or rest, a length byte is legal iff some length it begins fits the room left."""
    lengths = length_texts(16, (2, 4, 8, 16), lenient=False)
    rng = random.Random(3)
    checked = 0
    for prompt in ("L:1/8\nM:4/4\nK:G\n", "L:1/16\nM:3/4\nK:D\n", "L:1/8\nM:6/8\nK:Em\n"):
        state = STRICT.feed(STRICT.initial(), prompt)
        for _ in range(400):
            if state.mode in ("note", "rest") and state.nkind == 0 and state.bar_len is not None:
                room = (state.bar_len - state.pos) / state.nfac
                for c in "0123456789/":
                    text = state.buf + c
                    fits = any(t.startswith(text) and v <= room for t, v in lengths.items())
                    assert (STRICT.step(state, c) is not None) == fits, (state, c)
                checked += 1
            legal = [chr(b) for b in range(4, 128) if STRICT.step(state, chr(b)) is not None]
            if not legal:
                break
            notes = [c for c in legal if c in PITCH_LETTERS + "z0123456789/|"]
            state = STRICT.step(state, rng.choice(notes or legal))
    assert checked > 200


def test_grammar_is_small_rule_objects_without_an_import_cycle() -> None:
    import ast
    from pathlib import Path

    import rwkv_music.formats.abc.grammar as package

    assert AbcGrammar.__mro__ == (AbcGrammar, object)  # composition, not mixins
    folder = Path(package.__file__).parent
    for path in folder.glob("*.py"):
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        if path.name != "__init__.py":
            assert "rwkv_music.formats.abc.grammar.machine" not in imported, path.name
    assert {"HeaderRules", "BodyRules", "NoteGroupRules", "BarTiming", "PitchRules"} <= {
        type(part).__name__ for part in vars(STRICT).values()
    } | {type(STRICT.body.groups).__name__}


# -- the form (issue 15) -------------------------------------------------------------------------------
FORM = AbcGrammar(AbcGrammarConfig(form=True, parts=2, bars_per_part=4, bars_per_line=2))
PLAIN_FORM = "G8|A8|\nB8|c8||\nd8|e8|\nf8|G8|]"
PICKUP_FORM = "D2|G8|A8|\nB8|c6||\nD2|G8|A8|\nB8|G6|]"  # every part: pickup D2 ... closing bar of 6


@pytest.mark.parametrize(
    "body",
    [
        PLAIN_FORM,
        PICKUP_FORM,
        "G2 A2 B2 c2|A8|\nB8|c8:|\nd8|e8|\nf8|g8:|",  # repeats, one space between groups, tonic g
        "G8|A8|\nB8|c8||\nd8|e8|\nf8|G4 z4|]",  # rests after the tonic keep it the last note
        "G8|A8|\nB8|c8||\nd8|e8|\nf8|{a}g8|]",  # grace notes take no time and are no last note
    ],
)
def test_form_accepts_tunes_of_the_form(body: str) -> None:
    assert FORM.explain(HEAD + body) is None


@pytest.mark.parametrize(
    "body, why",
    [
        ("G8|A8||\nB8|c8||\nd8|e8|\nf8|G8|]", "section bar line inside a part"),
        ("G8|A8|\nB8|c8|\nd8|e8|\nf8|G8|]", "plain bar line at a part end"),
        ("G8|A8|\nB8|c8|]", "tune ends after the first of two parts"),
        ("G8|A8|B8|c8||\nd8|e8|\nf8|G8|]", "no line break after two bars"),
        ("G8|\nA8|\nB8|c8||\nd8|e8|\nf8|G8|]", "line break after one bar"),
        ("G2  A2 B2 c2|A8|\nB8|c8||\nd8|e8|\nf8|G8|]", "two spaces in a row"),
        ("G8|A8|\n B8|c8||\nd8|e8|\nf8|G8|]", "space at the start of a line"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|A8|]", "last note is not the tonic"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|^G8|]", "accidental in the last bar"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|[GBd]8|]", "chord in the last bar"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|G8||", "last part closed by ||"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|G8|]\n", "anything after the last bar line"),
        ("G8|A8|\nB8|c8||\nd8|e8|\nf8|G8|]G", "anything after the last bar line"),
        ("D2|G8|A8|\nB8|c6||\nG8|A8|\nB8|c8|]", "a later part without the tune's pickup"),
        ("D2|G8|A8|\nB8|c8||\nD2|G8|A8|\nB8|G6|]", "closing bar that does not complete the pickup"),
        ("G8|A4|\nB8|c8||\nd8|e8|\nf8|G8|]", "short bar inside a part"),
        ("|G8|A8|\nB8|c8||\nd8|e8|\nf8|G8|]", "empty bar (a bar line at the start)"),
        ("G8|A8|\nB8|c8|1\nd8|e8|\nf8|G8|]", "endings"),
        ("G8|A8|\nB8|c8||\nK:D\nd8|e8|\nf8|d8|]", "field line in the body"),
        ("G8|A8\\\n|B8|c8||\nd8|e8|\nf8|G8|]", "continuation line"),
    ],
)
def test_form_rejects(body: str, why: str) -> None:
    assert not FORM.accepts(HEAD + body), why


def test_form_ends_only_after_the_last_part_and_follows_control_codes() -> None:
    assert not FORM.is_final(FORM.feed(FORM.initial(), HEAD + PLAIN_FORM[:-1]))  # "...G8|" could become |]
    assert FORM.is_final(FORM.feed(FORM.initial(), HEAD + PLAIN_FORM))
    assert FORM.allowed(FORM.feed(FORM.initial(), HEAD + PLAIN_FORM)) == ""  # only eos after the last bar line
    by_codes = AbcGrammar(AbcGrammarConfig(form=True))  # parts and bars from S: and B:
    assert by_codes.accepts("S:3\nB:2\n" + HEAD + "G8|A8||\nB8|c8||\nd8|G8|]")
    assert not by_codes.accepts("S:3\nB:2\n" + HEAD + "G8|A8||\nB8|G8|]")
    assert not by_codes.accepts(HEAD + "G8|A8||\nB8|c8||\nd8|G8|]")  # default: 2 parts of 8 bars
    explicit = AbcGrammar(AbcGrammarConfig(form=True, parts=1, bars_per_part=2))  # the config beats S:/B:
    assert explicit.accepts("S:3\nB:2\n" + HEAD + "G8|G8|]")


def test_form_completion_finishes_every_part_and_ends_on_the_tonic() -> None:
    state = FORM.feed(FORM.initial(), HEAD + "D2|G8|A8|\nB8|c")
    tail = FORM.completion(state)
    assert tail == "z4z||\nz2|z8|z8|\nz8|G6|]" and FORM.is_final(FORM.feed(state, tail))  # 5 is no notehead
    start = FORM.feed(FORM.initial(), HEAD)
    assert FORM.completion(start) == "C8|z8|\nz8|z8||\nz8|z8|\nz8|G8|]"


def test_form_config_values_are_checked() -> None:
    for name, value in (("parts", 0), ("bars_per_part", 33), ("max_spaces", -1), ("bars_per_line", 0)):
        with pytest.raises(SamplingValueError, match=name):
            AbcGrammarConfig(form=True, **{name: value})
    with pytest.raises(SamplingValueError, match="form"):
        AbcGrammarConfig.human(form=True)


def test_form_lengths_are_a_musicians_one_spelling_each() -> None:
    """Under the form a note takes one of MUSICAL_LENGTHS: no 2/8, 2/16, /16 or 5 to squeeze a bar full."""
    state = FORM.feed(FORM.initial(), HEAD + "G")
    for suffix in ("2/8", "2/2", "/16", "/8", "5", "7", "//"):
        assert FORM.feed(state, suffix + "A") is None, suffix
    for suffix in ("/4", "/", "3/4", "3/2", "2", "3", "4", "6"):
        assert FORM.feed(state, suffix) is not None, suffix
    free = AbcGrammar(AbcGrammarConfig())  # without the form every well-formed spelling stays legal
    assert free.feed(free.feed(free.initial(), HEAD + "G"), "2/8") is not None


def test_a_states_replace_gives_what_namedtuples_replace_gives() -> None:
    """AbcState.replace (a copy with fields changed, written for speed) against the named tuple's own
    _replace: the same fields, the same type and hash, the original untouched; an unknown field raises."""
    rng = random.Random(5)
    fields = AbcState._fields
    samples = [0, 1, -1, "", "x", "idle", True, False, None, Fraction(3, 8), Fraction(0), (3, 2, 3)]
    state = AbcState()
    for _ in range(300):
        changes = {name: rng.choice(samples) for name in rng.sample(fields, rng.randint(0, 6))}
        got, want = state.replace(**changes), state._replace(**changes)
        assert got == want and type(got) is AbcState and hash(got) == hash(want)
        assert all(getattr(got, f) is getattr(want, f) for f in fields)
        state = got if rng.random() < 0.5 else state
    before = AbcState()
    before.replace(mode="note")
    assert before == AbcState()
    with pytest.raises(ValueError, match="no field 'moed'"):
        AbcState().replace(moed="note")
