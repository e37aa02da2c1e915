"""The one set of ABC header rules: key, meter, unit, tempo and TunesFormer control codes.

A compose call's ``K:``/``M:``/``L:``/``Q:`` values and control codes are checked here, and the
ABC grammar reads the same tables, so a value accepted here is one the constraint can honour
(the finite value sets of :mod:`rwkv_music.formats.abc.grammar`):

* meter: ``C``, ``C|``, ``none`` or ``n/d`` with 1 <= n <= 16 and d one of 1, 2, 4, 8, 16;
* unit note length: ``1/d`` with d one of 1, 2, 4, ..., 64 (so ``L:4/64`` is refused);
* key: tonic ``A``-``G`` with ``#``/``b``, an optional mode (``m``, ``dor``, ``mixolydian``, ...;
  any case, optionally after one space), or ``HP``, ``Hp``, ``none``;
* tempo: 40-240 beats per minute, alone (a quarter-note beat) or as ``beat=bpm``;
* control codes (docs/formats.md B): ``S:1``-``S:8``, ``B:1``-``B:32``, ``E:0``-``E:10``.

Also here: the header of a tune start (:func:`header_fields`), the grouping key of ABC rows
(:class:`AbcHeader`) and the prompt text of a fresh tune (:func:`prompt_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rwkv_music.errors import AbcFormatError

METER_DENOMINATORS = (1, 2, 4, 8, 16)
MAX_METER_NUMERATOR = 16
UNIT_DENOMINATORS = (1, 2, 4, 8, 16, 32, 64)
TEMPO_BEATS = ("1/4", "1/8", "3/8", "1/2", "3/4", "1/16", "3/16")
BPM_RANGE = (40, 240)  # music21 reads these; free text in Q: crashes it
CONTROL_RANGES = {"S": (1, 8), "B": (1, 32), "E": (0, 10)}  # sections, bars per section, similarity
SPECIAL_KEYS = ("HP", "Hp", "none")  # bagpipe keys and "no key"
# Mode names (short and long) with their shift in sharps from the major key on the same tonic.
MODE_SHARPS = {
    "": 0, "maj": 0, "major": 0, "ion": 0, "ionian": 0, "mix": -1, "mixolydian": -1,
    "dor": -2, "dorian": -2, "m": -3, "min": -3, "minor": -3, "aeo": -3, "aeolian": -3,
    "phr": -4, "phrygian": -4, "loc": -5, "locrian": -5, "lyd": 1, "lydian": 1,
}  # fmt: skip
SHORT_MODES = ("", "m", "min", "maj", "mix", "dor", "phr", "lyd", "loc", "aeo", "ion")

_FIELD_LINE = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")
_CONTROL_LINE = re.compile(r"^([SBE]):\s*(\d+)\s*$")
_KEY = re.compile(r"([A-Ga-g])([#b]?)( ?)([A-Za-z]*)")
_METER = re.compile(r"(\d+)/(\d+)")
_TEMPO = re.compile(r"(?:(\d+/\d+)=)?(\d+)")


@dataclass(frozen=True)
class AbcHeader:
    """The header values a tune's constraint is built for; rows with equal headers share a batch."""

    meter: str | None = None
    unit: str | None = None
    key: str | None = None
    free: bool = False  # the prompt already holds music: its layout is the writer's, no form is imposed


def check_meter(meter: Any) -> str:
    """A valid ``M:`` value (stripped), or :class:`AbcFormatError`."""
    text = str(meter).strip()
    if text in ("C", "C|", "none"):
        return text
    m = _METER.fullmatch(text)
    if not m or not 1 <= int(m.group(1)) <= MAX_METER_NUMERATOR or int(m.group(2)) not in METER_DENOMINATORS:
        raise AbcFormatError(
            f"invalid meter {meter!r}; expected n/d with n 1-{MAX_METER_NUMERATOR} and d 1, 2, 4, 8 or 16 "
            "(e.g. 6/8, 3/4), C, C| or none"
        )
    return f"{int(m.group(1))}/{int(m.group(2))}"


def check_unit(unit: Any) -> str:
    """A valid ``L:`` value ``1/d`` (stripped), or :class:`AbcFormatError`."""
    text = str(unit).strip()
    m = re.fullmatch(r"1/(\d+)", text)
    if not m or int(m.group(1)) not in UNIT_DENOMINATORS:
        raise AbcFormatError(f"invalid unit note length {unit!r}; expected 1/d with d 1, 2, 4, ..., 64 (e.g. 1/8)")
    return f"1/{int(m.group(1))}"


def check_key(key: Any) -> str:
    """A valid ``K:`` value: tonic upper case, mode lower case (``"gDor"`` -> ``"Gdor"``)."""
    text = str(key).strip()
    if text in SPECIAL_KEYS:
        return text
    m = _KEY.fullmatch(text)
    if not m or m.group(4).lower() not in MODE_SHARPS or (m.group(3) and not m.group(4)):
        raise AbcFormatError(f"invalid key {key!r}; expected e.g. D, Gm, Ador, Bb, F#mix or E minor")
    return m.group(1).upper() + m.group(2) + m.group(3) + m.group(4).lower()


def check_tempo(tempo: Any) -> str:
    """``120`` or ``"1/4=120"`` -> ``"1/4=120"`` (a bare number is quarter notes per minute)."""
    text = str(tempo).strip()
    m = _TEMPO.fullmatch(text)
    low, high = BPM_RANGE
    if m and low <= int(m.group(2)) <= high and (m.group(1) is None or m.group(1) in TEMPO_BEATS):
        return f"{m.group(1) or '1/4'}={int(m.group(2))}"
    raise AbcFormatError(
        f"invalid tempo {tempo!r}; expected {low}-{high} beats per minute (e.g. 120 or 1/4=120; "
        f"beats {', '.join(TEMPO_BEATS)})"
    )


def check_controls(controls: str | None) -> list[str]:
    """Control-code lines (``S:2``, ``B:8``, ``E:0``) of ``controls``; ``;`` or newlines separate them."""
    if not controls:
        return []
    lines = [c.strip() for c in re.split(r"[;\n]", controls) if c.strip()]
    out = []
    for line in lines:
        m = _CONTROL_LINE.match(line)
        if not m:
            raise AbcFormatError(f"control code {line!r} is not S:n, B:n or E:n (docs/formats.md B)")
        low, high = CONTROL_RANGES[m.group(1)]
        if not low <= int(m.group(2)) <= high:
            raise AbcFormatError(f"control code {line!r}: {m.group(1)} takes {low}-{high}")
        out.append(f"{m.group(1)}:{int(m.group(2))}")
    return out


# A prompt is fed through the model token by token (one token per character): the models were trained on
# tunes of a few KB, and a 5 MB line would prefill for minutes.  Real ABC lines hold a few bars.
MAX_PROMPT_CHARS = 32 * 1024
MAX_LINE_CHARS = 4 * 1024


def check_prompt_size(text: str, source: str = "ABC prompt") -> str:
    """``text`` unchanged, or :class:`AbcFormatError` when it is longer than a tune prompt can be."""
    if len(text) > MAX_PROMPT_CHARS:
        raise AbcFormatError(f"{source}: {len(text)} characters, more than the {MAX_PROMPT_CHARS} a prompt may hold")
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            raise AbcFormatError(f"{source}: line {number} has {len(line)} characters, more than the "
                                 f"{MAX_LINE_CHARS} an ABC line may hold")
    return text


def header_fields(tune: str) -> dict[str, str]:
    """The last value of each header field before the music starts (``L``, ``M``, ``K``, ...).

    Refuses a prompt longer than :data:`MAX_PROMPT_CHARS` (or a line above :data:`MAX_LINE_CHARS`)."""
    check_prompt_size(tune)
    fields: dict[str, str] = {}
    for line in tune.split("\n"):
        m = _FIELD_LINE.match(line.strip())
        if not m:
            break
        fields[m.group(1)] = m.group(2)
    return fields


def music_after_header(tune: str) -> str:
    """The text after the header's field lines (empty for a bare header)."""
    lines = tune.strip("\n").split("\n")
    i = 0
    while i < len(lines) and _FIELD_LINE.match(lines[i].strip()):
        i += 1
    return "\n".join(lines[i:])


def has_control_codes(text: str) -> bool:
    """Whether ``text`` starts with a TunesFormer control-code line."""
    first = text.strip().split("\n", 1)[0].strip()
    return bool(_CONTROL_LINE.match(first))


def prompt_text(
    controls: str | None, key: str, meter: str, unit: str, tempo: Any = None, body: str | None = None
) -> str:
    """Control codes, then ``L:``, ``M:``, (``Q:``), ``K:`` lines, then optional first bars.

    ``Q:`` goes before ``K:`` because ABC ends the header at ``K:`` and the models always
    start the music right after it.

    >>> print(prompt_text("S:2", "G", "3/4", "1/8", tempo=100))
    S:2
    L:1/8
    M:3/4
    Q:1/4=100
    K:G
    <BLANKLINE>
    """
    lines = check_controls(controls)
    lines += [f"L:{check_unit(unit)}", f"M:{check_meter(meter)}"]
    if tempo is not None:
        lines.append(f"Q:{check_tempo(tempo)}")
    lines.append(f"K:{check_key(key)}")
    text = "\n".join(lines) + "\n"
    if body:
        text += check_prompt_size(body).strip("\n")
    return text


__all__ = [
    "AbcHeader",
    "music_after_header",
    "BPM_RANGE",
    "CONTROL_RANGES",
    "MAX_LINE_CHARS",
    "MAX_PROMPT_CHARS",
    "METER_DENOMINATORS",
    "MAX_METER_NUMERATOR",
    "MODE_SHARPS",
    "SHORT_MODES",
    "SPECIAL_KEYS",
    "TEMPO_BEATS",
    "UNIT_DENOMINATORS",
    "check_controls",
    "check_key",
    "check_meter",
    "check_prompt_size",
    "check_tempo",
    "check_unit",
    "has_control_codes",
    "header_fields",
    "prompt_text",
]
