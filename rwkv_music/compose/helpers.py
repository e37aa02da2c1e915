"""Building blocks of :mod:`rwkv_music.compose.composer`: prompts, constraints, the generate call, validity.

Kept apart so the :class:`~rwkv_music.compose.composer.Composer` reads as the recipe and this module
holds the details (FORMATS B, C4, D3, D4).  Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from rwkv_music.errors import AbcFormatError, BackendUnavailable, MidiFormatError, RwkvMusicError, StateError

log = logging.getLogger(__name__)

MIDI_SPECIALS = (0, 1, 2)  # <pad>, <start>, <end> (FORMATS C1)
_HEADER_FIELD = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")
_CONTROL_CODES = re.compile(r"^[SBE]:\d+$")
ABC_TEXT_SOURCE = "ABC text"  # the source name of a tune given as text rather than a file


# -- models and tokenizers ------------------------------------------------------------------
def default_tokenizer(mode: str) -> Any:
    """The tokenizer of ``mode`` with its reference settings."""
    if mode == "abc":
        from rwkv_music.formats.abc.tokenizer import AbcTokenizer

        return AbcTokenizer()
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    return MidiTokenizer()


def default_model(mode: str) -> Path:
    """Path of the shipped model for ``mode``; a clear error when none is installed."""
    if mode not in ("abc", "midi"):
        raise RwkvMusicError(f"unknown mode {mode!r}; use 'abc' or 'midi'")
    try:
        from rwkv_music.assets import default_model_path
    except ImportError:
        raise RwkvMusicError(f"no default {mode.upper()} model is installed; pass --model PATH (model=...)") from None
    return Path(default_model_path(mode))


# -- MIDI prompts and text (FORMATS C4, D3) ------------------------------------------------------
def midi_body_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of MIDI-token text without its ``<pad>``/``<start>``/``<end>`` markers."""
    return [t for t in tokenizer.encode(text) if t not in MIDI_SPECIALS]


def midi_file_ids(tokenizer: Any, path: str | os.PathLike) -> list[int]:
    """Ids of the notes and waits of a MIDI file (markers dropped); MidiFormatError if unreadable."""
    if not Path(path).is_file():
        raise MidiFormatError(f"{path}: no such MIDI file")
    ids = [t for t in tokenizer.midi_to_ids(path) if t not in MIDI_SPECIALS]
    if not ids:
        raise MidiFormatError(f"{path}: the MIDI file has no notes to continue")
    return ids


def prompt_seconds(ids: Sequence[int]) -> float:
    """Music time of prompt ids: the sum of their wait tokens ``t1``..``t125`` (ids 3..127, 8 ms steps, C1)."""
    return sum(t - 2 for t in ids if 3 <= t <= 127) * 0.008


def midi_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Piece text ``<start> … <end>`` (D3: the output starts with ``<start>``, ends with ``<end>``)."""
    body = tokenizer.decode([t for t in ids if t not in MIDI_SPECIALS])
    return f"<start> {body} <end>" if body else "<start> <end>"


def midi_constraint(instruments: list[str] | None, seconds: float | None, **limits: Any) -> Any:
    """A :class:`~rwkv_music.formats.midi.constraint.MidiConstraint` (validates names and limits)."""
    from rwkv_music.formats.midi.constraint import MidiConstraint

    limits = {k: v for k, v in limits.items() if v is not None}
    if seconds is not None and seconds <= 0:
        raise RwkvMusicError(f"seconds must be positive, got {seconds}")
    return MidiConstraint(instruments, target_seconds=seconds, **limits)


# -- ABC prompts (FORMATS B, D4) -------------------------------------------------------------------
def abc_prompt_text(
    controls: str | None, key: str, meter: str, unit: str, tempo: Any = None, body: str | None = None
) -> str:
    """Control codes, then ``L:``, ``M:``, (``Q:``), ``K:`` lines, then optional first bars.

    ``Q:`` goes before ``K:`` because ABC ends the header at ``K:`` and the models always
    start the music right after it.

    >>> print(abc_prompt_text("S:2", "G", "3/4", "1/8", tempo=100))
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
        text += body.strip("\n")
    return text


def check_controls(controls: str | None) -> list[str]:
    """Control-code lines (``S:2``, ``B:8``, ``E:0``); ``;`` or newlines separate them."""
    if not controls:
        return []
    lines = [c.strip() for c in re.split(r"[;\n]", controls) if c.strip()]
    for line in lines:
        if not _CONTROL_CODES.match(line):
            raise AbcFormatError(f"control code {line!r} is not S:n, B:n or E:n (FORMATS B)")
    return lines


def check_meter(meter: str) -> str:
    meter = str(meter).strip()
    if meter in ("C", "C|", "none"):
        return meter
    m = re.fullmatch(r"(\d+(?:\+\d+)*)/(\d+)", meter)
    if not m or int(m.group(2)) not in (1, 2, 4, 8, 16, 32, 64) or sum(map(int, m.group(1).split("+"))) == 0:
        raise AbcFormatError(f"invalid meter {meter!r}; expected e.g. 6/8, 4/4, 3/4, C or C|")
    return meter


def check_unit(unit: str) -> str:
    unit = str(unit).strip()
    m = re.fullmatch(r"1/(\d+)", unit)
    if not m or int(m.group(1)) not in (1, 2, 4, 8, 16, 32, 64):
        raise AbcFormatError(f"invalid unit note length {unit!r}; expected e.g. 1/8 or 1/16")
    return unit


def check_key(key: str) -> str:
    key = str(key).strip()
    m = re.fullmatch(r"([A-Ga-g])([#b]?)\s*(maj|major|m|min|minor|mix|dor|phr|lyd|loc|ion|aeo)?", key, re.IGNORECASE)
    if not m and key not in ("none", "HP", "Hp"):
        raise AbcFormatError(f"invalid key {key!r}; expected e.g. D, Gm, Ador, Bb or F#mix")
    return key[0].upper() + key[1:] if m else key


def check_tempo(tempo: Any) -> str:
    """``120`` or ``"1/4=120"`` → ``"1/4=120"``; 40-240 bpm, the range the ABC constraint accepts."""
    text = str(tempo).strip()
    m = re.fullmatch(r"(?:1/4=)?(\d+)", text)
    if m and 40 <= int(m.group(1)) <= 240:
        return f"1/4={int(m.group(1))}"
    raise AbcFormatError(f"invalid tempo {tempo!r}; expected 40-240 beats per minute (e.g. 120 or 1/4=120)")


def read_abc_tune(path_or_text: str | os.PathLike) -> tuple[str, str]:
    """(prompt text of the first tune, source name) from a file path or from ABC text."""
    from rwkv_music.export.abc import prompt_from_tune, split_tunes

    text: str
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str)
        and "\n" not in path_or_text
        and len(path_or_text) < 4096
        and not path_or_text.lstrip().startswith("X:")
    ):
        path = Path(path_or_text)
        if not path.is_file():
            raise AbcFormatError(f"{path}: no such ABC file")
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
    else:
        text, source = str(path_or_text), ABC_TEXT_SOURCE
    tunes = split_tunes(text)
    if not tunes:
        raise AbcFormatError(f"{source}: contains no ABC tune")
    try:
        return prompt_from_tune(tunes[0][1]), source
    except AbcFormatError as exc:
        raise AbcFormatError(f"{source}: {exc}") from None


def abc_header_fields(tune: str) -> dict[str, str]:
    """The last value of each header field before the music starts (L, M, K, ...)."""
    fields: dict[str, str] = {}
    for line in tune.split("\n"):
        m = _HEADER_FIELD.match(line.strip())
        if not m:
            break
        fields[m.group(1)] = m.group(2)
    return fields


def has_control_codes(text: str) -> bool:
    """Whether ``text`` starts with TunesFormer control-code lines."""
    first = text.strip().split("\n", 1)[0].strip()
    return bool(_CONTROL_CODES.match(first))


def abc_constraint(meter: str | None, unit: str | None, key: str | None, max_new_tokens: int | None = None) -> Any:
    """The ABC grammar / bar-balance constraint for this header, steering rows to end in time."""
    try:
        from rwkv_music.formats.abc.constraint import AbcConstraint
    except ImportError as exc:
        raise BackendUnavailable(
            f"the ABC constraint is not available ({exc}); compose with constrained=False (--no-constraints)"
        ) from None
    kwargs = {k: v for k, v in {"meter": meter, "unit": unit, "key": key}.items() if v}
    return AbcConstraint(max_new_tokens=max_new_tokens, **kwargs)


# -- generation --------------------------------------------------------------------------------
def build_processors(preset: str, sampling: dict[str, Any], constraints: list[Any]) -> Any:
    """The preset (with ``sampling`` overrides) as a processor list, constraints included."""
    from rwkv_music.sampling.presets import get_preset

    try:
        config = get_preset(preset, **sampling)
    except TypeError as exc:  # an unknown keyword in **sampling
        raise RwkvMusicError(f"unknown sampling option: {exc}") from None
    return config, config.build_processors(constraints)


def fit_state(backend: Any, state: Any, n: int) -> Any:
    """``state`` checked against the model and broadcast to ``n`` rows, in the backend's array kind."""
    from rwkv_music.model.state import State

    if not isinstance(state, State):
        state = State.load(state)
    state.check(backend.config)
    if state.batch_size == 1 and n > 1:
        state = State.concat([state] * n)
    elif state.batch_size != n:
        raise StateError(f"state has {state.batch_size} rows, the call makes {n} pieces (use 1 or {n})")
    template = backend.new_state(1)
    if template.is_torch and not state.is_torch:
        shift = template.tensors["att_x"]
        state = state.torch(shift.device, shift.dtype)
    elif not template.is_torch and state.is_torch:
        state = state.numpy()
    return state


def run_generate(
    backend: Any,
    prompts: list[list[int]],
    processors: Any,
    max_new_tokens: int,
    seeds: list[int],
    stop_tokens: Sequence[int],
    state: Any,
    callback: Callable[[int, int], None] | None,
) -> Any:
    """Call :func:`rwkv_music.sampling.generate.generate`; ``callback(step, max_new_tokens)`` per step.

    A row that a constraint leaves without a legal token ends (reason ``"constraint"``) instead
    of failing the whole batch.
    """
    from rwkv_music.sampling.generate import generate

    progress = None
    if callback is not None:

        def progress(step: int, _finished: int) -> None:
            callback(step + 1, max_new_tokens)

    return generate(
        backend,
        prompts,
        processors=processors,
        max_new_tokens=max_new_tokens,
        seeds=seeds,
        stop_tokens=list(stop_tokens),
        state=state,
        callback=progress,
        on_constraint="finish",
        return_state=False,
    )


def finish_reason(result: Any, row: int) -> str:
    return str(result.finish_reasons[row])


def timing_of(result: Any) -> dict[str, Any]:
    """The generate result's timing as a JSON-friendly dict (batch totals)."""
    return {
        "prefill_seconds": round(float(result.prefill_seconds), 4),
        "decode_seconds": round(float(result.decode_seconds), 4),
        "prompt_tokens_total": int(result.n_prompt_tokens),
        "sampled_tokens_total": int(result.n_sampled_tokens),
    }


# -- validity ----------------------------------------------------------------------------------
def validity(piece: Any) -> dict[str, Any]:
    """Cheap validity metrics of a piece (never raises: failures are recorded)."""
    if piece.mode == "midi":
        from rwkv_music.export.midi import midi_metrics

        try:
            return {"decodes": True, **midi_metrics(piece.to_midi())}
        except RwkvMusicError as exc:
            return {"decodes": False, "error": str(exc)}
    return abc_validity(piece.text)


def abc_validity(text: str) -> dict[str, Any]:
    """music21 validity and bar balance of a tune (:mod:`rwkv_music.formats.abc.check`)."""
    from rwkv_music.export.music21_io import quiet_music21
    from rwkv_music.formats.abc.check import bar_balance, parse_ok

    with quiet_music21():
        report = bar_balance(text)
        ok = bool(report.parsed and parse_ok(text))
    return {
        "parse_ok": ok,
        "bars_checked": report.checked,
        "bar_balance": round(report.rate, 4),
        "overfull_bars": report.overfull,
        "all_balanced": report.all_balanced,
    }
