"""``AbcTokenizer``: the character tokenizer of BlinkDL's ABC models (docs/formats.md B).

One character is one token and its id is the character code, so ASCII text maps byte for byte
(ChatRWKV ``music/run.py``: id = ord(c); faster-rwkv: id = byte value).  Ids 0, 2 and 3 are
``pad``, ``bos`` and ``eos`` (1 is unused); decoding drops every id <= 3.  A training or prompt
sequence is ``[bos] + ids(text) + [eos]``.

The vocabulary has 128 ids, so only ASCII can be encoded.  What happens to anything else is
chosen with ``errors``:

* ``"strict"`` (default): a character whose code is >= 128, or one of the reserved control codes
  0-3, raises :class:`TokenizerError` naming its position;
* ``"fold"``: a character >= 128 that Unicode NFKD decomposes into one ASCII letter plus
  combining marks loses the marks ("é" -> "e", "Ü" -> "U"); every other character >= 128
  ("ß", "’", "\x81") and the reserved codes 0-3 become ``"?"``.  Folding keeps the length.

``bytes`` input is read as ASCII with the same rule per byte (a byte >= 128 is an error, or
``"?"`` when folding).  :meth:`AbcTokenizer.decode` raises for ids outside 0..127 in strict mode
and writes ``"?"`` for them when folding.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any, Literal

from rwkv_music.errors import TokenizerError

AbcErrors = Literal["strict", "fold"]
REPLACEMENT = "?"
_SPECIAL_BYTES = bytes(range(4))  # ids 0..3 never decode to text
_FIRST_CHAR = "\x04"


class AbcTokenizer:
    """Character-code tokenizer for the RWKV-4/5 ABC models (vocab size 128)."""

    name = "abc"
    pad_id = 0
    bos_id = 2
    eos_id = 3
    vocab_size = 128
    _first_char_id = 4  # ids 0..3 are specials (1 unused) and never decode to text

    def __init__(self, *, errors: AbcErrors = "strict") -> None:
        if errors not in ("strict", "fold"):
            raise TokenizerError(f"ABC tokenizer errors={errors!r}, expected 'strict' or 'fold'")
        self.errors: AbcErrors = errors

    def encode(self, text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` (one per character), optionally wrapped in bos/eos."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("latin-1")  # one char per byte; >= 128 handled below
        if self.errors == "fold":
            text = self.fold(text)
        else:
            self._check_encodable(text)
        ids = list(text.encode("ascii"))  # ASCII by now: one byte per character
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping pad/bos/eos (every id <= 3)."""
        values = ids if isinstance(ids, list) else list(ids)
        try:  # fast path: every id a character code or special
            data = bytes(values)
            if data.isascii():
                return data.translate(None, _SPECIAL_BYTES).decode("ascii")
        except ValueError:
            pass  # an id outside 0..255: handled below
        chars = []
        for position, i in enumerate(values):
            i = int(i)
            if 0 <= i < self._first_char_id:
                continue
            if i < 0 or i >= self.vocab_size:
                if self.errors == "strict":
                    raise TokenizerError(f"ABC token {position}: id {i} outside 0..{self.vocab_size - 1}")
                chars.append(REPLACEMENT)
                continue
            chars.append(chr(i))
        return "".join(chars)

    def fold(self, text: str) -> str:
        """The ``errors="fold"`` mapping of ``text`` to encodable ASCII (see module docstring)."""
        if text.isascii() and (not text or min(text) >= _FIRST_CHAR):
            return text
        out = []
        for c in text:
            if ord(c) >= self.vocab_size:
                c = "".join(d for d in unicodedata.normalize("NFKD", c) if not unicodedata.combining(d))
                c = c if c.isascii() and len(c) == 1 else REPLACEMENT
            out.append(REPLACEMENT if ord(c) < self._first_char_id else c)
        return "".join(out)

    def _check_encodable(self, text: str) -> None:
        if text.isascii() and (not text or min(text) >= _FIRST_CHAR):
            return
        for position, c in enumerate(text):
            code = ord(c)
            if code >= self.vocab_size:
                raise TokenizerError(
                    f"ABC text position {position}: {c!r} (U+{code:04X}) is not ASCII; "
                    f"use AbcTokenizer(errors='fold') to map it"
                )
            if code < self._first_char_id:
                raise TokenizerError(
                    f"ABC text position {position}: control code {code} is reserved for special tokens"
                )

    def to_dict(self) -> dict[str, Any]:
        """Settings to store beside a model or output; :meth:`from_dict` rebuilds the tokenizer."""
        return {"kind": self.name, "errors": self.errors}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AbcTokenizer:
        if data.get("kind", cls.name) != cls.name:
            raise TokenizerError(f"tokenizer settings are for {data.get('kind')!r}, not {cls.name!r}")
        return cls(errors=data.get("errors", "strict"))

    def __repr__(self) -> str:
        return f"AbcTokenizer(errors={self.errors!r})"


__all__ = ["AbcErrors", "AbcTokenizer"]
