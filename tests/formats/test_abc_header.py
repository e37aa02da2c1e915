"""One set of ABC header rules: what compose options accept is what the grammar constraint honours."""

from __future__ import annotations

import pytest

from rwkv_music.errors import AbcFormatError
from rwkv_music.formats.abc import header as h
from rwkv_music.formats.abc.options import AbcOptions


@pytest.mark.parametrize(
    "check, bad",
    [
        (h.check_unit, "4/64"),
        (h.check_unit, "1/3"),
        (h.check_unit, "1/128"),
        (h.check_meter, "7/7"),
        (h.check_meter, "4/64"),
        (h.check_meter, "17/8"),
        (h.check_meter, "0/4"),
        (h.check_key, "H"),
        (h.check_key, "Gzz"),
        (h.check_key, "G  minor"),
        (h.check_tempo, 20),
        (h.check_tempo, "1/5=100"),
        (h.check_controls, "S:9"),
        (h.check_controls, "X:1"),
    ],
)
def test_values_outside_the_rules_are_refused(check: object, bad: object) -> None:
    with pytest.raises(AbcFormatError):
        check(bad)  # type: ignore[operator]


def test_values_are_normalised() -> None:
    assert h.check_key(" gdor") == "Gdor" and h.check_key("F# Minor") == "F# minor" and h.check_key("HP") == "HP"
    assert h.check_tempo(120) == "1/4=120" and h.check_tempo("3/8=80") == "3/8=80"
    assert h.check_meter(" 6/8 ") == "6/8" and h.check_unit("1/16") == "1/16"
    assert h.check_controls("S:2; B:8\nE:0") == ["S:2", "B:8", "E:0"]


@pytest.mark.parametrize(
    "meter, unit, key",
    [
        ("6/8", "1/8", "D"),
        ("C|", "1/16", "Gm"),
        ("16/16", "1/64", "F# minor"),
        ("none", "1/1", "Bbmix"),
        ("3/4", "1/4", "none"),
    ],
)
def test_every_accepted_header_is_one_the_constraint_takes(meter: str, unit: str, key: str) -> None:
    from rwkv_music.formats.abc.constraint import AbcConstraint

    options = AbcOptions(key=key, meter=meter, unit=unit)
    AbcConstraint(meter=options.meter, unit=options.unit, key=options.key, max_new_tokens=1024)  # room for the form


def test_options_are_checked_without_building_a_constraint(monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv_music.formats.abc import constraint

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("AbcOptions built an AbcConstraint")

    monkeypatch.setattr(constraint.AbcConstraint, "__init__", refuse)
    assert AbcOptions(key="Ador", meter="6/8", tempo=90).tempo == "1/4=90"
    with pytest.raises(AbcFormatError, match="unit"):
        AbcOptions(unit="4/64")


def test_prompt_text_puts_the_tempo_before_the_key() -> None:
    text = h.prompt_text("S:2;B:8", "G", "3/4", "1/8", tempo=100, body="|:GAB|")
    assert text == "S:2\nB:8\nL:1/8\nM:3/4\nQ:1/4=100\nK:G\n|:GAB|"
    assert h.header_fields(text) == {"S": "2", "B": "8", "L": "1/8", "M": "3/4", "Q": "1/4=100", "K": "G"}
