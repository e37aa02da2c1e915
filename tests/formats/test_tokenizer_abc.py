"""AbcTokenizer: id = character code, pad 0 / bos 2 / eos 3, decode drops ids <= 3 (docs/formats.md B)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from music21 import corpus

from rwkv_music.errors import TokenizerError
from rwkv_music.tokenizers import AbcTokenizer, Tokenizer, tokenizer_from_dict


def _corpus_tunes() -> list[tuple[str, str]]:
    """Every tune of music21's ABC corpus as (label, text); text before the first X: counts too."""
    tunes = []
    for path in corpus.getCorePaths(fileExtensions=("abc",)):
        text = Path(path).read_text(encoding="utf-8")
        chunks = [""]
        for line in text.splitlines(keepends=True):
            if line.startswith("X:"):
                chunks.append("")
            chunks[-1] += line
        tunes += [(f"{Path(path).name}#{i}", chunk) for i, chunk in enumerate(chunks) if chunk]
    return tunes


@pytest.fixture(scope="module")
def corpus_tunes() -> list[tuple[str, str]]:
    tunes = _corpus_tunes()
    assert len(tunes) > 1000
    return tunes


def test_special_ids_and_vocab_size() -> None:
    tok = AbcTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 128)
    assert isinstance(tok, Tokenizer)


def test_encode_matches_faster_rwkv_example() -> None:
    tok = AbcTokenizer()
    assert tok.encode("S:2") == [83, 58, 50]
    assert tok.encode("S:2", add_bos=True) == [2, 83, 58, 50]
    assert tok.encode("S:2", add_bos=True, add_eos=True) == [2, 83, 58, 50, 3]
    assert tok.encode(b"S:2") == [83, 58, 50]
    assert tok.decode([2, 83, 58, 50, 3]) == "S:2"


def test_decode_drops_every_id_up_to_3() -> None:
    tok = AbcTokenizer()
    assert tok.decode([0, 1, 2, 3, 65, 0, 66, 3]) == "AB"
    assert tok.decode([10, 32, 124]) == "\n |"


def test_every_corpus_tune_round_trips_or_is_rejected_cleanly(corpus_tunes: list[tuple[str, str]]) -> None:
    strict, fold = AbcTokenizer(), AbcTokenizer(errors="fold")
    ascii_tunes = 0
    for label, tune in corpus_tunes:
        if tune.isascii():
            ids = strict.encode(tune, add_bos=True, add_eos=True)
            assert ids == [2, *tune.encode("ascii"), 3], label  # oracle: the byte values
            assert strict.decode(ids) == tune, label
            ascii_tunes += 1
        else:
            with pytest.raises(TokenizerError, match="not ASCII"):
                strict.encode(tune)
            ids = fold.encode(tune)
            assert len(ids) == len(tune) and all(3 < i < 128 for i in ids), label
            assert fold.decode(ids) == fold.fold(tune), label
    assert ascii_tunes > 0.9 * len(corpus_tunes)


def test_strict_error_names_position_and_character() -> None:
    with pytest.raises(TokenizerError, match=r"position 3: 'é' \(U\+00E9\)"):
        AbcTokenizer().encode("Caf\u00e9")
    with pytest.raises(TokenizerError, match="position 1: control code 2"):
        AbcTokenizer().encode("A\x02B")
    with pytest.raises(TokenizerError, match="position 1"):
        AbcTokenizer().encode(b"A\xe9")


def test_fold_maps_accents_and_replaces_the_rest() -> None:
    tok = AbcTokenizer(errors="fold")
    assert tok.fold("Café Über ß\u2019\x81\x02") == "Cafe Uber ???" + "?"
    assert tok.decode(tok.encode("Cr\u00e8me")) == "Creme"
    assert tok.decode([65, 200, -5, 66]) == "A??B"


def test_strict_decode_rejects_ids_outside_vocab() -> None:
    with pytest.raises(TokenizerError, match="token 1: id 128"):
        AbcTokenizer().decode([65, 128])


def test_unknown_errors_mode_is_rejected() -> None:
    with pytest.raises(TokenizerError, match="errors='ignore'"):
        AbcTokenizer(errors="ignore")  # type: ignore[arg-type]


def test_settings_round_trip_through_dict() -> None:
    tok = tokenizer_from_dict(AbcTokenizer(errors="fold").to_dict())
    assert isinstance(tok, AbcTokenizer) and tok.errors == "fold"
    with pytest.raises(TokenizerError, match="'midi'"):
        AbcTokenizer.from_dict({"kind": "midi"})


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=4, max_codepoint=127)))
def test_ascii_text_round_trips(text: str) -> None:
    tok = AbcTokenizer()
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fold_never_fails_and_stays_in_vocab(text: str) -> None:
    tok = AbcTokenizer(errors="fold")
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(3 < i < 128 for i in ids)
    folded = tok.decode(ids)
    assert folded == tok.fold(text)
    assert all(c == f for c, f in zip(text, folded) if 4 <= ord(c) < 128)  # ASCII is kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-300, max_value=300)))
def test_decode_of_any_ids_gives_text_or_clear_error(ids: list[int]) -> None:
    try:
        text = AbcTokenizer().decode(ids)
    except TokenizerError:
        assert any(i < 0 or i >= 128 for i in ids)
    else:
        assert len(text) == sum(4 <= i < 128 for i in ids)
