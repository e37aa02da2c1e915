"""One composed piece: its tokens, its text, how it was made, and how to save it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwkv_music.errors import RwkvMusicError
from rwkv_music.export import format_for as output_format
from rwkv_music.formats.base import FORMAT_NAMES, Format, format_for

MODES = FORMAT_NAMES
COMPOSER = "rwkv-music"  # credited in MusicXML (music21 would write "Music21")


@dataclass(frozen=True)
class Piece:
    """A generated (or continued) piece of music.

    Attributes:
        mode: ``"abc"`` or ``"midi"``.
        tokens: every token id of the piece, prompt included (without the leading separator).
        text: model text: for MIDI ``"<start> … <end>"`` (docs/formats.md C/D3); for ABC the control codes
            and the tune as the model wrote it, without ``X:`` (docs/formats.md B).
        meta: seed, params, model, timing, finish reason (JSON-serialisable); ``validity`` once
            :attr:`validity` has been read (``render`` always reads it for its manifest).
        index: position of the piece in its batch (ABC files get ``X:index+1``).
        tokenizer: the tokenizer that wrote ``text`` (needed by :meth:`to_midi` for MIDI pieces).

    Example:
        >>> p = Piece("abc", [76, 58], "S:1\\nL:1/8\\nM:2/4\\nK:C\\nCDEF|GABc|]", {})
        >>> print(p.to_abc())
        X:1
        T:Tune 1 in C
        L:1/8
        M:2/4
        K:C
        CDEF|GABc|]
        <BLANKLINE>
    """

    mode: str
    tokens: list[int]
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RwkvMusicError(f"Piece.mode must be one of {MODES}, got {self.mode!r}")

    def __repr__(self) -> str:  # the token list and text can be thousands of entries long
        seed = self.meta.get("seed")
        return (
            f"Piece(mode={self.mode!r}, index={self.index}, seed={seed}, tokens={len(self.tokens)}, "
            f"finish={self.meta.get('finish_reason')!r}, title={self.title!r})"
        )

    @property
    def title(self) -> str:
        """``meta["title"]`` if set, else "melody, continuation 3" for a continuation of melody.mid, else
        "Tune 3 in D" (ABC, from ``K:``) or "Piece 3" (MIDI)."""
        given = self.meta.get("title")
        if given:
            return str(given)
        if self.meta.get("input"):  # a continuation of a file
            return f"{Path(str(self.meta['input'])).stem}, continuation {self.index + 1}"
        if self.mode == "abc":
            key = re.search(r"^K:\s*([^%\s]+)", self.text, re.MULTILINE)
            return f"Tune {self.index + 1}" + (f" in {key.group(1)}" if key else "")
        return f"Piece {self.index + 1}"

    @property
    def validity(self) -> dict[str, Any]:
        """The format's validity metrics of :attr:`text` (ABC: music21 parse and strict bar balance;
        MIDI: decoding and note metrics), computed on first use and kept in ``meta["validity"]``.

        Lazy because an ABC check parses the tune with music21, which takes about as long as composing it."""
        if "validity" not in self.meta:
            decoded = self._midi() if self.mode == "midi" else None  # (the file :meth:`save` writes)
            self.meta["validity"] = self.format.validity(self.text, midi=decoded)
        return self.meta["validity"]

    @property
    def prompt_seconds(self) -> float | None:
        """Where a continuation's prompt ends, in seconds of its MIDI file (``None``: no prompt, or unknown).

        MIDI: the prompt's waits.  ABC: the length of the prompt's own music as music21 plays it (with
        its repeats), which is where the new music starts when the prompt closes its repeats."""
        n = int(self.meta.get("prompt_tokens") or 0) - 1  # the prompt's first id is the separator
        if n <= 0 or self.tokenizer is None:
            return None
        if self.mode == "abc":
            head = self.format.piece_text(self.tokens[:n])
            if not any(line and not re.match(r"^[A-Za-z]:", line) for line in head.splitlines()):
                return None  # a header alone: no music before the new notes
            try:
                return float(self.format.to_midi(head, source=self._name()).length)
            except Exception:  # an unreadable prompt only costs the marker
                return None
        seconds = getattr(self.format, "prompt_seconds", None)
        return float(seconds(self.tokens[:n])) if seconds is not None else None

    @property
    def format(self) -> Format:
        """The piece's :class:`~rwkv_music.formats.base.Format` (with its tokenizer)."""
        return format_for(self.mode, self.tokenizer)

    # -- conversions --------------------------------------------------------------------
    def to_abc(self, number: int | None = None) -> str:
        """Standard ABC text: control codes dropped, ``X:number`` first (default ``index + 1``), a ``T:`` title."""
        from rwkv_music.export.abc import with_reference, with_title

        self._require_abc("to_abc", "ABC output needs an ABC model")
        return with_reference(with_title(self.text, self.title), self.index + 1 if number is None else number)

    def to_midi(self) -> Any:
        """The piece as a :class:`mido.MidiFile` (MIDI: through the tokenizer; ABC: through music21); a new
        one at each call, the caller's to change."""
        return self.format.to_midi(self.text, source=self._name())

    def _midi(self) -> Any:
        """:meth:`to_midi`, made once and kept for this piece's own readers (:meth:`save`, :attr:`validity`),
        which never change it: a render saves and checks every MIDI piece, and decoding it was half of that."""
        midi = self.__dict__.get("_midi_file")
        if midi is None:
            midi = self.to_midi()
            object.__setattr__(self, "_midi_file", midi)  # (a cache, not a field: frozen dataclass)
        return midi

    def to_score(self) -> Any:
        """The piece as a music21 score, titled (:attr:`title`) and credited to rwkv-music."""
        from rwkv_music.export.abc import with_title

        text = with_title(self.text, self.title) if self.mode == "abc" else self.text
        score = self.format.to_score(text, source=self._name())
        from music21 import metadata

        if score.metadata is None:
            score.metadata = metadata.Metadata()
        if self.mode == "midi" or not score.metadata.title:
            score.metadata.title = self.title
        if not score.metadata.composer:
            score.metadata.composer = COMPOSER
        return score

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, force: bool = False, soundfont: str | os.PathLike | None = None) -> Path:
        """Write the piece to ``path``; the extension picks the format.

        ``.mid``/``.midi``, ``.abc`` (ABC pieces only), ``.musicxml``/``.xml``, ``.png`` (piano
        roll), ``.wav`` (needs FluidSynth, see :mod:`rwkv_music.export.audio`).  The write is
        atomic; an existing file raises :class:`~rwkv_music.errors.OutputExistsError` unless
        ``force``.  Returns the path written.
        """
        from rwkv_music.io_utils import check_writable

        fmt = output_format(path)
        path = check_writable(path, force)  # fail before any expensive conversion
        if fmt == "abc":
            from rwkv_music.export.abc import write_abc

            self._require_abc(str(path), "it cannot be saved as ABC; use .mid, .png or .wav")
            return write_abc(self.text, path, force, first=self.index + 1, titles=[self.title])
        if fmt == "musicxml":
            from rwkv_music.export.music21_io import write_musicxml

            return write_musicxml(self.to_score(), path, force)
        midi = self._midi()
        if fmt == "midi":
            from rwkv_music.export.midi import write_midi

            return write_midi(midi, path, force)
        if fmt == "png":
            from rwkv_music.export.pianoroll import write_piano_roll

            return write_piano_roll(midi, path, force, title=self.title, prompt_seconds=self.prompt_seconds)
        from rwkv_music.export.audio import write_wav

        return write_wav(midi, path, force, soundfont=soundfont)

    def _require_abc(self, where: str, why: str) -> None:
        if self.mode != "abc":  # ABC text only exists for pieces of an ABC model
            raise RwkvMusicError(f"{where}: this is a {self.mode.upper()} piece; {why}")

    def _name(self) -> str:
        return f"piece {self.index} (seed {self.meta.get('seed')})"
