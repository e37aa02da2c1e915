"""The Format protocol: one object per music format answers what composing code used to branch on."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_music.errors import MidiFormatError, RwkvMusicError
from rwkv_music.formats.abc.format import AbcFormat
from rwkv_music.formats.abc.header import AbcHeader
from rwkv_music.formats.abc.options import AbcOptions
from rwkv_music.formats.abc.tokenizer import AbcTokenizer
from rwkv_music.formats.base import VOCAB_MODES, Format, format_for, format_for_vocab, mode_for_vocab
from rwkv_music.formats.midi import constraint as mc
from rwkv_music.formats.midi.format import MidiFormat, PromptTime
from rwkv_music.formats.midi.options import MidiOptions
from rwkv_music.formats.midi.tokenizer import MidiTokenizer
from rwkv_music.formats.midi.vocab import LAYOUT, MidiVocab, NoteToken, WaitToken


@pytest.mark.parametrize("name, cls", [("abc", AbcFormat), ("midi", MidiFormat)])
def test_both_formats_implement_the_protocol(name: str, cls: type) -> None:
    fmt = format_for(name)
    assert isinstance(fmt, cls) and isinstance(fmt, Format) and fmt.name == name
    assert fmt.options_class in (AbcOptions, MidiOptions) and fmt.suffix in fmt.input_suffixes


def test_the_format_is_found_from_the_vocabulary_size() -> None:
    assert format_for_vocab(128).name == "abc" and format_for_vocab(20096).name == "midi"
    assert format_for_vocab(256, mode="abc").name == "abc"  # a larger ABC vocabulary is fine
    with pytest.raises(RwkvMusicError, match="matches neither"):
        format_for_vocab(300)
    with pytest.raises(RwkvMusicError, match="vocab/model mismatch"):
        format_for_vocab(128, mode="midi")
    with pytest.raises(RwkvMusicError, match="MIDI model's vocabulary"):
        format_for_vocab(20096, mode="abc")  # continue tune.abc --model midi.pth
    with pytest.raises(RwkvMusicError, match="vocab/model mismatch"):
        format_for_vocab(257, mode="abc")  # not byte-level
    with pytest.raises(RwkvMusicError, match="unknown mode"):
        mode_for_vocab(128, "wav")


def test_runtimes_record_the_format_of_a_vocabulary_from_the_same_table() -> None:
    from rwkv_music.backends.sidecar import TOKENIZER_BY_VOCAB

    assert TOKENIZER_BY_VOCAB == VOCAB_MODES == {128: "abc", 20096: "midi"}


def test_special_ids_come_from_the_tokenizer() -> None:
    class Shifted(AbcTokenizer):
        bos_id, eos_id = 1, 2

    fmt = AbcFormat(Shifted())
    options = AbcOptions(constrained=False)
    assert fmt.row_prompt(None, options).ids[0] == 1 and fmt.stop_ids(options) == [2]
    midi = format_for("midi")
    assert midi.prompt_start == MidiTokenizer.pad_id and midi.stop_ids(MidiOptions()) == [MidiTokenizer.pad_id]


def test_rows_group_by_a_typed_key() -> None:
    abc = format_for("abc")
    tune = "L:1/16\nM:3/4\nK:Em\nEFG|"
    assert abc.row_prompt(tune, AbcOptions()).group == AbcHeader("3/4", "1/16", "Em", free=True)  # it has music
    assert abc.row_prompt("L:1/16\nM:3/4\nK:Em\n", AbcOptions()).group == AbcHeader("3/4", "1/16", "Em")
    assert abc.row_prompt(None, AbcOptions(meter="6/8")).group == AbcHeader("6/8", "1/8", "D")
    midi = format_for("midi")
    assert midi.row_prompt("pi:3c:a t125 t125 pi:3c:0", MidiOptions(seconds=1)).group == PromptTime(2.0)
    assert midi.row_prompt("pi:3c:a t125", MidiOptions()).group == PromptTime(None)  # no target: one group


def test_constraints_are_fresh_objects_with_the_prompt_time_added() -> None:
    midi = format_for("midi")
    options = MidiOptions(seconds=0.5)
    a, b = midi.constraint(options, PromptTime(2.0)), midi.constraint(options, PromptTime(2.0))
    assert a is not b and a.target_ticks == round(2.5 * 1000 / LAYOUT.step_ms)
    assert midi.constraint(MidiOptions(constrained=False), PromptTime(None)) is None


def test_midi_piece_text_and_file_prompts(tmp_path: Path) -> None:
    midi = format_for("midi")
    ids = midi.piece_ids([0, 13146, 127], [13136, 0])
    assert ids == [13146, 127, 13136] and midi.piece_text(ids) == "<start> pi:3c:a t125 pi:3c:0 <end>"
    assert midi.piece_text([]) == "<start> <end>"
    with pytest.raises(MidiFormatError, match="no such MIDI file"):
        midi.read_file(tmp_path / "missing.mid")


def test_the_layout_is_the_vocabulary_and_the_constraint_reads_it() -> None:
    vocab = MidiVocab()
    assert LAYOUT.size == vocab.size == mc.VOCAB_SIZE
    assert list(LAYOUT.wait_ids) == [i for i in range(vocab.size) if isinstance(vocab.parse(i), WaitToken)]
    for bin_, pitch, vel in ((0, 0, 0), (8, 0x4A, 7), (12, 127, 11)):
        assert vocab.parse(LAYOUT.note_id(bin_, pitch, vel)) == NoteToken(bin_, pitch, vel)
        assert mc.note_token(bin_, pitch, vel) == LAYOUT.note_id(bin_, pitch, vel)
    assert mc.BIN_NAMES == tuple(b.name for b in vocab.instrument_bins)
    assert LAYOUT.seconds([vocab.wait_id(125), vocab.wait_id(1), 13146]) == pytest.approx(1.008)
