"""The MIDI vocabulary built from settings equals the reference tokenizer-midi.json (docs/formats.md C1, C2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rwkv_music.errors import TokenizerError
from rwkv_music.tokenizers import MidiTokenizer, MidiVocab, MidiVocabConfig, NoteToken, SpecialToken, WaitToken

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def reference_vocab() -> dict[str, int]:
    return json.loads((DATA / "tokenizer-midi.json").read_text())["model"]["vocab"]


@pytest.fixture(scope="module")
def vocab() -> MidiVocab:
    return MidiVocab()


def test_vocab_equals_reference_json_id_for_id(vocab: MidiVocab, reference_vocab: dict[str, int]) -> None:
    assert vocab.size == len(reference_vocab) == 20096
    assert {token: i for i, token in enumerate(vocab.tokens)} == reference_vocab
    for token, i in reference_vocab.items():
        assert vocab.id_to_token(i) == token
        assert vocab.token_to_id(token) == i


def test_reference_json_settings_match_shipped_defaults() -> None:
    reference = json.loads((DATA / "vocab_config.json").read_text())
    assert MidiVocabConfig.from_json(DATA / "vocab_config.json") == MidiVocabConfig()
    assert MidiVocabConfig().to_dict() == reference
    assert MidiVocabConfig.from_dict(MidiVocabConfig().to_dict()) == MidiVocabConfig()


def test_reference_json_declares_lowercase_whitespace_wordlevel() -> None:
    spec = json.loads((DATA / "tokenizer-midi.json").read_text())
    assert spec["normalizer"]["type"] == "Lowercase"
    assert spec["pre_tokenizer"]["type"] == "WhitespaceSplit"
    assert [t["content"] for t in spec["added_tokens"]] == ["<pad>", "<start>", "<end>"]


def test_special_and_wait_ids_match_layout(vocab: MidiVocab) -> None:
    tok = MidiTokenizer()
    assert (tok.pad_id, tok.start_id, tok.end_id) == (0, 1, 2)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert list(vocab.wait_ids) == list(range(3, 128))
    assert [vocab.id_to_token(i) for i in vocab.wait_ids[:2]] == ["t1", "t2"]
    assert vocab.wait_id(125) == 127 and vocab.id_to_token(127) == "t125"
    assert vocab.parse(127) == WaitToken(125)
    assert vocab.parse(1) == SpecialToken("<start>")
    assert vocab.note_ids == range(128, 20096)


@pytest.mark.parametrize(
    ("token", "token_id", "fields"),
    [
        ("pi:4a:7", 13311, ("piano", 0x4A, 7)),
        ("pi:3c:a", 13146, ("piano", 0x3C, 10)),
        ("p:24:b", 571, ("percussion", 0x24, 11)),
        ("v:43:7", 10155, ("violin", 0x43, 7)),
        ("p:0:0", 128, ("percussion", 0, 0)),
        ("pa:7f:b", 20095, ("pad", 127, 11)),
    ],
)
def test_note_id_examples_from_formats(vocab: MidiVocab, token: str, token_id: int, fields: tuple) -> None:
    bin_name, pitch, vel = fields
    assert vocab.note_id(bin_name, pitch, vel) == token_id
    assert vocab.note_token(bin_name, pitch, vel) == token
    assert vocab.parse(token_id) == NoteToken(vocab.bin_index(bin_name), pitch, vel)
    assert vocab.parse_token(token.upper()) == vocab.parse(token_id)


def test_parse_inverts_note_id_for_every_note(vocab: MidiVocab) -> None:
    for token_id in vocab.note_ids:
        note = vocab.parse(token_id)
        assert isinstance(note, NoteToken)
        assert vocab.note_id(note.bin, note.pitch, note.velocity_bin) == token_id
        prefix = vocab.instrument_bins[note.bin].prefix
        assert vocab.id_to_token(token_id) == f"{prefix}:{note.pitch:x}:{note.velocity_bin:x}"


def test_instrument_bins_match_formats_table(vocab: MidiVocab) -> None:
    # docs/formats.md C1 table: name, prefix, first id, decode channel, decode program.
    expected = [
        ("percussion", "p", 128, 9, 0), ("drum", "d", 1664, 0, 118), ("tuba", "t", 3200, 1, 58),
        ("marimba", "m", 4736, 2, 12), ("bass", "b", 6272, 3, 32), ("guitar", "g", 7808, 4, 25),
        ("violin", "v", 9344, 5, 40), ("trumpet", "tr", 10880, 6, 56), ("piano", "pi", 12416, 7, 0),
        ("sax", "s", 13952, 8, 66), ("flute", "f", 15488, 10, 73), ("lead", "l", 17024, 11, 80),
        ("pad", "pa", 18560, 12, 88),
    ]  # fmt: skip
    got = [(b.name, b.prefix, vocab.bin_note_ids(b.index).start, b.channel, b.program) for b in vocab.instrument_bins]
    assert got == expected
    assert vocab.percussion_bin == 0 and vocab.instrument_bins[0].is_percussion


def test_program_to_bin_matches_formats_table(vocab: MidiVocab) -> None:
    # docs/formats.md C3 "GM programs" table, transcribed independently of vocab_config.json.
    table = {
        "piano": [*range(0, 8), *range(17, 24)], "marimba": [*range(8, 17), *range(112, 116)],
        "guitar": [*range(24, 32), *range(104, 109)], "bass": [*range(32, 40), 42, 43],
        "violin": [40, 41, 44, 45, 46, *range(48, 55), 85, 91, 110], "drum": [47, 116, 117, 118],
        "tuba": [57, 58], "trumpet": [56, *range(59, 64), 69], "sax": [*range(64, 69), 70, 71, 109, 111],
        "flute": [*range(72, 80)], "lead": [80, 81, 82, 83, 84, 86, 87], "pad": [88, 89, 90, *range(92, 96)],
    }  # fmt: skip
    expected: dict[int, int | None] = {p: None for p in range(128)}
    for name, programs in table.items():
        for p in programs:
            expected[p] = vocab.bin_index(name)
    assert {p: vocab.bin_for_program(p) for p in range(128)} == expected
    assert sum(v is None for v in expected.values()) == 1 + 8 + 9  # 55, 96-103, 119-127
    assert all(vocab.bin_for_program(p, channel=9) == vocab.percussion_bin for p in range(128))


def test_velocity_bins_match_formats_table(vocab: MidiVocab) -> None:
    # docs/formats.md C1: integer velocities per bin and decoded velocity per bin.
    lows = [0, 1, 9, 18, 28, 38, 48, 59, 71, 84, 98, 112, 128]
    for b in range(12):
        for v in range(lows[b], lows[b + 1]):
            assert vocab.velocity_to_bin(v) == b, v
    assert [vocab.bin_to_velocity(b) for b in range(12)] == [0, 8, 17, 27, 37, 47, 58, 70, 83, 97, 111, 127]
    assert all(vocab.velocity_to_bin(vocab.bin_to_velocity(b)) == b for b in range(12))


def test_fractional_velocity_thresholds_match_formats(vocab: MidiVocab) -> None:
    thresholds = [8.59, 17.60, 27.07, 37.06, 47.61, 58.81, 70.73, 83.47, 97.15, 111.93]
    for b, t in enumerate(thresholds, start=2):
        assert vocab.velocity_to_bin(t - 0.01) == b - 1
        assert vocab.velocity_to_bin(t + 0.01) == b
    assert vocab.velocity_to_bin(0.001) == 1 and vocab.velocity_to_bin(500) == 11


def test_encode_lowercases_and_splits_on_whitespace_runs() -> None:
    tok = MidiTokenizer()
    assert tok.encode("PI:3C:A") == [13146]
    assert tok.encode("  <start>\tpi:3c:a \n\n t1   <end> ") == [1, 13146, 3, 2]
    assert tok.token_to_id("P:24:B") == 571
    assert tok.encode("") == []


def test_encode_unknown_word_names_word_and_position() -> None:
    tok = MidiTokenizer()
    for text, word, position in [("pi:3c:a xx:1:1", "xx:1:1", 1), ("pi:03c:a", "pi:03c:a", 0),
                                 ("t1 pi:3c:a,t1", "pi:3c:a,t1", 1), ("t1 t2 t126", "t126", 2)]:  # fmt: skip
        with pytest.raises(TokenizerError, match=f"word {position} '{word}'"):
            tok.encode(text)


def test_decode_joins_words_and_optionally_skips_specials() -> None:
    tok = MidiTokenizer()
    ids = [1, 571, 13146, 18, 2]
    assert tok.decode(ids) == "<start> p:24:b pi:3c:a t16 <end>"
    assert tok.decode(ids, skip_special=True) == "p:24:b pi:3c:a t16"
    assert tok.decode([0, 1, 2], skip_special=True) == ""
    assert tok.encode(tok.decode(ids)) == ids


def test_decode_out_of_range_id_raises() -> None:
    tok = MidiTokenizer()
    for bad in (20096, -1):
        with pytest.raises(TokenizerError, match=str(bad)):
            tok.decode([1, bad])


def test_structured_helpers_reject_out_of_range_fields(vocab: MidiVocab) -> None:
    with pytest.raises(TokenizerError, match="pitch 128"):
        vocab.note_id("piano", 128, 1)
    with pytest.raises(TokenizerError, match="velocity bin 12"):
        vocab.note_id(8, 60, 12)
    with pytest.raises(TokenizerError, match="'banjo'"):
        vocab.bin_index("banjo")
    with pytest.raises(TokenizerError, match="126"):
        vocab.wait_id(126)
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        vocab.token_to_id("PI:3C:A")  # the vocab itself is exact; the tokenizer lowercases


def test_config_rejects_inconsistent_settings() -> None:
    with pytest.raises(TokenizerError, match="max_wait_time"):
        MidiVocabConfig(max_wait_time=1001)
    with pytest.raises(TokenizerError, match="unrolled"):
        MidiVocabConfig(unrolled_tokens=True)
    with pytest.raises(TokenizerError, match="program_name_to_bin_name"):
        MidiVocabConfig(program_bins=("harp",) * 128)
    with pytest.raises(TokenizerError, match="unknown key 'colour'"):
        MidiVocabConfig.from_dict({**MidiVocabConfig().to_dict(), "colour": 1})


def test_other_settings_generate_padded_vocab() -> None:
    # A piano-only layout like MLT's vocab_config_piano.json: 1 bin, 16 velocity bins.
    config = MidiVocabConfig(
        velocity_bins=16, velocity_exp=0.33, bin_instrument_names=("piano",), ch10_instrument_bin_name="",
        program_bins=tuple("piano" if p < 8 else "" for p in range(128)),
        bin_program_names=("Acoustic Grand Piano",),
    )  # fmt: skip
    vocab = MidiVocab(config)
    assert vocab.size == 2176  # 3 + 125 + 128 * 16 = 2176, already a multiple of 128
    assert vocab.note_token("piano", 60, 15) == "p:3c:f"
    assert vocab.bin_for_program(0, channel=9) is None  # no percussion bin: channel 10 dropped
    small = MidiVocab(MidiVocabConfig(wait_events=100, max_wait_time=1000))
    assert small.size % 128 == 0 and small.tokens[-1].startswith("<extra")
