"""``MidiTokenizer``: the RWKV-4-MIDI vocabulary, text <-> ids, and MIDI files <-> text.

Text <-> ids follows the reference ``tokenizer-midi.json`` (docs/formats.md C2): the text is
lowercased and split on whitespace runs, each word is one token.  Unlike the HF tokenizer,
which maps an unknown word to ``<pad>`` silently, :meth:`MidiTokenizer.encode` raises
:class:`TokenizerError` naming the word and its position.  :meth:`MidiTokenizer.decode` keeps
``<start>``/``<end>`` by default because they mean something to the MIDI decoder (``<end>``
pauses 3 s and releases notes); ``skip_special=True`` drops them as HF does.

MIDI conversion: :meth:`MidiTokenizer.midi_to_text` (docs/formats.md C3) and
:meth:`MidiTokenizer.text_to_midi` (docs/formats.md C4), in the tokenizer's timing mode
(``"exact"`` by default, ``"reference"`` for MLT's token-for-token form; see
:mod:`rwkv_music.formats.midi.timing`).  ``text_to_midi`` is strict by default (an unknown
word raises with its position); ``strict=False`` skips unknown words, logging how many.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import mido

from rwkv_music.errors import TokenizerError
from rwkv_music.formats.midi.config import MidiVocabConfig
from rwkv_music.formats.midi.decode import ids_to_midi
from rwkv_music.formats.midi.encode import events_to_ids
from rwkv_music.formats.midi.read import MidiSource, load_midi, read_note_events
from rwkv_music.formats.midi.timing import Timing, check_timing
from rwkv_music.formats.midi.vocab import SPECIAL_TOKENS, MidiVocab

logger = logging.getLogger(__name__)


class MidiTokenizer:
    """Tokenizer of the RWKV-4-MIDI models (20,096 ids, ``tokenizer-midi.json``).

    ``MidiTokenizer()`` uses the reference vocabulary settings and exact timing;
    ``MidiTokenizer(timing="reference")`` reproduces MIDI-LLM-tokenizer's text exactly.
    """

    name = "midi"
    pad_id = MidiVocab.pad_id
    start_id = MidiVocab.start_id
    end_id = MidiVocab.end_id
    bos_id = start_id  # aliases so both tokenizers answer the same questions
    eos_id = end_id

    def __init__(self, config: MidiVocabConfig | None = None, *, timing: Timing = "exact") -> None:
        self.timing: Timing = check_timing(timing)
        self.vocab = MidiVocab(config)
        self.config = self.vocab.config

    # -- text <-> ids (docs/formats.md C2) ----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text`` (lowercased, whitespace split); unknown words raise."""
        return self._words_to_ids(text, strict=True)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Words of ``ids`` joined by single spaces; ``skip_special`` drops ``<pad>/<start>/<end>``."""
        words = (self.vocab.id_to_token(i) for i in ids)
        if skip_special:
            words = (w for w in words if w not in SPECIAL_TOKENS)
        return " ".join(words)

    def token_to_id(self, token: str) -> int:
        """Id of one word (lowercased first, as the reference normaliser does)."""
        return self.vocab.token_to_id(token.lower())

    def id_to_token(self, token_id: int) -> str:
        return self.vocab.id_to_token(token_id)

    def _words_to_ids(self, text: str, *, strict: bool) -> list[int]:
        ids: list[int] = []
        unknown = 0
        for position, word in enumerate(text.lower().split()):
            token_id = self.vocab.get_id(word)
            if token_id is not None:
                ids.append(token_id)
            elif strict:
                raise TokenizerError(f"MIDI text word {position} {word!r} is not in the vocabulary")
            else:
                unknown += 1
        if unknown:
            logger.warning("skipped %d word(s) not in the MIDI vocabulary", unknown)
        return ids

    # -- MIDI files <-> text (docs/formats.md C3, C4) ------------------------------------------------

    def midi_to_ids(self, source: MidiSource) -> list[int]:
        """Ids ``<start> ... <end>`` of a MIDI file (path, bytes or ``mido.MidiFile``)."""
        events = read_note_events(load_midi(source), self.vocab)
        return events_to_ids(events, self.vocab, self.timing)

    def midi_to_text(self, source: MidiSource) -> str:
        """Token text ``<start> ... <end>`` of a MIDI file; raises MidiFormatError if unreadable."""
        return self.decode(self.midi_to_ids(source))

    def ids_to_midi(self, ids: Sequence[int]) -> mido.MidiFile:
        """MIDI file from ids; every note is released by the end (no stuck notes)."""
        return ids_to_midi(ids, self.vocab, self.timing)

    def text_to_midi(self, text: str, *, strict: bool = True) -> mido.MidiFile:
        """MIDI file from token text; ``strict=False`` skips words not in the vocabulary."""
        return self.ids_to_midi(self._words_to_ids(text, strict=strict))

    # -- saving ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Settings to store beside a model or output; :meth:`from_dict` rebuilds the tokenizer."""
        return {"kind": self.name, "timing": self.timing, "vocab_config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MidiTokenizer:
        if data.get("kind", cls.name) != cls.name:
            raise TokenizerError(f"tokenizer settings are for {data.get('kind')!r}, not {cls.name!r}")
        config = MidiVocabConfig.from_dict(data["vocab_config"]) if "vocab_config" in data else None
        return cls(config, timing=data.get("timing", "exact"))

    def __repr__(self) -> str:
        return f"MidiTokenizer(vocab_size={self.vocab_size}, timing={self.timing!r})"


def midi_to_text(
    source: MidiSource, timing: Timing = "exact", config: MidiVocabConfig | None = None
) -> str:
    """Token text of a MIDI file (see :meth:`MidiTokenizer.midi_to_text`)."""
    return MidiTokenizer(config, timing=timing).midi_to_text(source)


def text_to_midi(
    text: str, timing: Timing = "exact", *, strict: bool = True, config: MidiVocabConfig | None = None
) -> mido.MidiFile:
    """MIDI file of token text (see :meth:`MidiTokenizer.text_to_midi`)."""
    return MidiTokenizer(config, timing=timing).text_to_midi(text, strict=strict)


__all__ = ["MidiTokenizer", "midi_to_text", "text_to_midi"]
