"""MIDI and ABC inputs: note counts, music time and text lengths are bounded before big structures
are built; valid tunes with inline field changes are accepted."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from hostile_support import expect_one_line_error, run_capped

from rwkv_music.errors import AbcFormatError
from rwkv_music.formats.abc.header import MAX_LINE_CHARS, MAX_PROMPT_CHARS, header_fields, prompt_text
from rwkv_music.formats.abc.tune import prompt_from_tune, read_tune
from rwkv_music.formats.midi.read import MAX_EVENTS, MAX_NOTES, count_events

ENCODE = """
from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.midi.tokenizer import MidiTokenizer
try:
    ids = MidiTokenizer().midi_to_ids({path!r})
    print("READ", len(ids))
except RwkvMusicError as exc:
    print("ERR", type(exc).__name__ + ":", str(exc).replace(chr(10), " | "))
"""


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _midi(body: bytes, division: int = 480) -> bytes:
    body += b"\x00\xff\x2f\x00"  # end of track
    return b"MThd" + struct.pack(">LHHH", 6, 0, 1, division) + b"MTrk" + struct.pack(">L", len(body)) + body


def _notes(n: int, delta: int = 0) -> bytes:
    """n short notes on channel 0 with running status: 8 bytes per note."""
    one = _varlen(delta) + b"\x3c\x40" + _varlen(1) + b"\x3c\x00"
    return b"\x00\x90\x3c\x40\x01\x3c\x00" + one * (n - 1)


def test_a_million_notes_are_refused_before_mido_builds_them(tmp_path: Path) -> None:
    path = tmp_path / "notes.mid"
    path.write_bytes(_midi(_notes(MAX_NOTES + 10)))
    start = time.monotonic()
    line = expect_one_line_error(run_capped(ENCODE.format(path=str(path))), "MidiFormatError", "notes.mid")
    assert "notes" in line and str(MAX_NOTES) in line
    assert time.monotonic() - start < 30


def test_huge_delta_times_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.mid"
    path.write_bytes(_midi(_notes(4, delta=1 << 27)))  # 2^27 ticks (the largest delta) between notes: ~39 hours
    line = expect_one_line_error(run_capped(ENCODE.format(path=str(path))), "MidiFormatError", "long.mid")
    assert "hours" in line


def test_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.mid"
    path.write_bytes(_midi(bytes(4)) + bytes(17 << 20))
    expect_one_line_error(run_capped(ENCODE.format(path=str(path))), "MidiFormatError", "big.mid", "too large")


def test_event_counter_agrees_with_mido(tmp_path: Path) -> None:
    import mido

    from rwkv_music.formats.midi.read import load_midi

    data = _midi(_notes(50) + b"\x00\xf0\x03\x01\x02\xf7" + b"\x00\xff\x01\x03abc" + b"\x00\xc0\x05"
                 + b"\x00\x90\x40\x40")
    mid = load_midi(data)
    track = data[14:]
    assert count_events(track) == (len(mid.tracks[0]), sum(
        1 for m in mid.tracks[0] if isinstance(m, mido.Message) and m.type == "note_on" and m.velocity))
    assert count_events(track, limit=10)[0] <= 11  # stops early
    assert MAX_EVENTS > MAX_NOTES


def test_normal_midi_still_reads(tmp_path: Path) -> None:
    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    ids = MidiTokenizer().midi_to_ids(_midi(_notes(20, delta=60)))
    assert len(ids) > 40


# -- ABC -------------------------------------------------------------------------------------


def test_five_megabyte_single_line_tune_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "line.abc"
    path.write_text("X:1\nL:1/8\nM:4/4\nK:D\n" + "DEFG " * (1 << 20) + "\n")
    start = time.monotonic()
    expected = rf"line.abc: first tune: \d+ characters, more than the {MAX_PROMPT_CHARS}"
    with pytest.raises(AbcFormatError, match=expected):
        read_tune(path)
    with pytest.raises(AbcFormatError, match="ABC text: first tune"):
        read_tune("X:1\nK:D\n" + "A" * (MAX_LINE_CHARS + 1))
    assert time.monotonic() - start < 5


def test_hundred_kilobyte_prompt_is_refused() -> None:
    with pytest.raises(AbcFormatError, match="ABC prompt: 102400 characters"):
        prompt_text("S:2", "D", "4/4", "1/8", body="A" * 102400)
    with pytest.raises(AbcFormatError, match="line 5 has"):
        header_fields("L:1/8\nM:4/4\nK:D\nAB|\n" + "B" * (MAX_LINE_CHARS + 1))


@pytest.mark.parametrize("tune, header, music", [
    ("X:1\nL:1/8\nM:4/4\nK:G\nGABc dedB|[K:Gm]GABc dedB|\n", "L:1/8\nM:4/4\nK:Gm", "GABc dedB|"),
    ("X:1\nL:1/8\nM:4/4\nK:G\nGABc dedB|[M:3/4]GAB cde|\n", "L:1/8\nM:3/4\nK:G", "GAB cde|"),
    ("X:1\nL:1/8\nM:4/4\nK:G\nGABc dedB|\nK:Em\nefga bage|\n", "L:1/8\nM:4/4\nK:Em", "efga bage|"),
    ("X:1\nM:4/4\nK:G\nGABc|[L:1/16][P:B]GABc|\n", "M:4/4\nL:1/16\nK:G", "GABc|"),
])
def test_inline_field_changes_start_the_prompt_at_the_last_change(tune: str, header: object, music: str) -> None:
    assert prompt_from_tune(tune) == header + "\n" + music


def test_invalid_inline_key_names_the_field() -> None:
    with pytest.raises(AbcFormatError, match="body field K:Q#"):
        prompt_from_tune("X:1\nL:1/8\nM:4/4\nK:G\nGABc|[K:Q#]GABc|\n")


@pytest.mark.parametrize("tune", ["X:1\nL:1/8\nM:4/4\nK:G\nGABc dedB|[K:Gm]GABc dedB|\n",
                                  "X:1\nL:1/8\nM:4/4\nK:G\nGABc dedB|[M:3/4]GAB cde|\n"])
def test_continue_prompt_with_inline_fields_passes_the_grammar(tune: str) -> None:
    """The constrained decoder reads the continuation prompt without refusing it (it did refuse the raw tune)."""
    from rwkv_music.errors import ConstraintError
    from rwkv_music.formats.abc.options import AbcOptions
    from rwkv_music.formats.base import format_for

    fmt, options = format_for("abc"), AbcOptions(max_tokens=64)

    def reset(text: str) -> None:
        row = fmt.row_prompt(text, options, 128)
        fmt.constraint(options, row.group).reset([row.ids])

    with pytest.raises(ConstraintError, match="not valid ABC here"):
        reset(tune.split("\n", 1)[1])  # the tune as written, inline field and all
    prompt, source = read_tune(tune)
    reset(prompt)
    assert "[" not in prompt and source == "ABC text"


def test_midi_text_prompts_are_bounded() -> None:
    from rwkv_music.errors import MidiFormatError
    from rwkv_music.formats.midi.format import MAX_PROMPT_CHARS as MIDI_PROMPT_CHARS
    from rwkv_music.formats.midi.format import MidiFormat
    from rwkv_music.formats.midi.options import MidiOptions

    fmt, options = MidiFormat(), MidiOptions(max_prompt_tokens=64)
    long_text = " ".join(["pi:3c:a", "t10", "pi:40:a", "t10"] * 200)  # 800 words: only the last 64 are kept
    prompt = fmt.row_prompt(long_text, options)
    assert len(prompt.ids) == 1 + 64 and prompt.ids[1:] == fmt.encode(long_text)[-64:]
    start = time.perf_counter()
    with pytest.raises(MidiFormatError, match="more than the") as exc:
        fmt.row_prompt("t10 " * (MIDI_PROMPT_CHARS // 4 + 1), options)
    assert "\n" not in str(exc.value) and time.perf_counter() - start < 1.0  # refused before encoding
