"""Music tokenizers: ABC characters (docs/formats.md B) and MIDI-LLM-tokenizer words (docs/formats.md C).

Public names:

* :class:`AbcTokenizer` -- id = character code, pad 0 / bos 2 / eos 3, vocab size 128.
* :class:`MidiTokenizer` -- the 20,096-word RWKV-4-MIDI vocabulary, text <-> ids and MIDI files
  <-> text (``timing="exact"`` by default, ``"reference"`` for MIDI-LLM-tokenizer's exact text).
* :func:`midi_to_text`, :func:`text_to_midi` -- the same conversions as functions.
* :class:`MidiVocab` with :class:`NoteToken`, :class:`WaitToken`, :class:`SpecialToken` and
  :class:`InstrumentBin` -- structured id lookups for constraints and composers.
* :class:`MidiVocabConfig` -- the ``vocab_config.json`` settings the vocabulary is built from.
* :class:`Tokenizer` protocol and :func:`tokenizer_from_dict`.
"""

from __future__ import annotations

from rwkv_music.formats.abc.tokenizer import AbcTokenizer
from rwkv_music.formats.midi.config import MidiVocabConfig
from rwkv_music.formats.midi.read import load_midi
from rwkv_music.formats.midi.timing import Timing
from rwkv_music.formats.midi.tokenizer import MidiTokenizer, midi_to_text, text_to_midi
from rwkv_music.formats.midi.vocab import InstrumentBin, MidiVocab, NoteToken, SpecialToken, WaitToken
from rwkv_music.formats.tokenizer import Tokenizer, tokenizer_from_dict

__all__ = [
    "AbcTokenizer",
    "InstrumentBin",
    "MidiTokenizer",
    "MidiVocab",
    "MidiVocabConfig",
    "NoteToken",
    "SpecialToken",
    "Timing",
    "Tokenizer",
    "WaitToken",
    "load_midi",
    "midi_to_text",
    "text_to_midi",
    "tokenizer_from_dict",
]
