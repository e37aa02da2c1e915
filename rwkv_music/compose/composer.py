"""The composing API: load a model, compose or continue ABC tunes and MIDI pieces in batches.

>>> from rwkv_music import Composer                                      # doctest: +SKIP
>>> composer = Composer.load("model.pth")                               # doctest: +SKIP
>>> pieces = composer.compose_abc(n=4, key="D", meter="6/8", seed=1)    # doctest: +SKIP
>>> pieces[0].save("jig.abc")                                           # doctest: +SKIP

Prompting follows the reference recipes: MIDI (FORMATS D3) prompts start with ``<pad>`` (id 0)
and a piece ends when id 0 is sampled; ABC (FORMATS B, D4) prompts are ``[2]`` + control codes +
header lines and end on id 3.  All pieces of one call run as one batch, each row with its own
seed, so a piece depends only on its seed and parameters, never on its batch neighbours.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from rwkv_music.compose import helpers as _c
from rwkv_music.compose.options import (
    ABC_BOS,
    ABC_EOS,
    DEFAULT_PRESETS,
    MIDI_SEPARATOR,
    AbcOptions,
    MidiOptions,
    ProgressCallback,
    mode_for_vocab,
    new_base_seed,
    piece_seed,
)
from rwkv_music.compose.piece import Piece
from rwkv_music.errors import AbcFormatError, RwkvMusicError

log = logging.getLogger(__name__)

RowInput = str | os.PathLike | None  # None: a fresh piece; str: prompt text; a path: a file to continue

__all__ = ["AbcOptions", "Composer", "MidiOptions", "Piece", "mode_for_vocab", "piece_seed"]


class Composer:
    """A loaded model plus its tokenizer, ready to compose.

    Args:
        backend: a backend object (:mod:`rwkv_music.backends.base`).
        mode: ``"abc"`` or ``"midi"``; inferred from the vocabulary (128 / 20,096) when ``None``.
        tokenizer: defaults to ``AbcTokenizer()`` / ``MidiTokenizer()``.
        model_name: recorded in every piece's ``meta["model"]``.
    """

    def __init__(self, backend: Any, mode: str | None = None, tokenizer: Any = None, model_name: str = "") -> None:
        self.backend = backend
        self.config = backend.config
        self.mode = mode_for_vocab(self.config.vocab_size, mode, model_name or "model")
        self.tokenizer = tokenizer if tokenizer is not None else _c.default_tokenizer(self.mode)
        self.model_name = model_name

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        mode: str | None = None,
        backend: str = "torch",
        device: str = "cpu",
        dtype: str = "fp32",
        threads: int | None = None,
    ) -> "Composer":
        """Load ``model`` (or, when ``None``, the shipped default model for ``mode``, "midi" if unset).

        The mode is inferred from the vocabulary (128 ids → ``"abc"``, 20,096 → ``"midi"``);
        ``mode=`` overrides it and is checked against the vocabulary.  ``threads`` sets the CPU
        threads of the backend (``None``: the runtime's default).
        """
        from rwkv_music import load_model

        if model is None:
            mode = mode or "midi"  # the toolkit's main job; Composer.load(mode="abc") for tunes
            model = _c.default_model(mode)
        path = Path(model)
        if not path.exists():
            raise RwkvMusicError(f"{path}: no such model file")
        extra = {} if threads is None else {"threads": threads}
        backend_model = load_model(path, backend=backend, device=device, dtype=dtype, **extra)
        return cls(backend_model, mode, model_name=str(path))

    def __repr__(self) -> str:
        c = self.config
        return f"Composer(mode={self.mode!r}, model={self.model_name!r}, v{c.version} L{c.n_layer} C{c.n_embd})"

    # -- states ---------------------------------------------------------------------------
    def make_state(self, prompt: str | Sequence[int]) -> Any:
        """The model's state after reading ``prompt`` (text in this model's format, or ids).

        Pass it as ``state=`` to any compose call: generation then starts from this memory and
        reads the call's own prompt on top.  Save it with ``state.save(path)``; load it with
        :meth:`rwkv_music.model.state.State.load`.
        """
        ids = self._encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise RwkvMusicError("make_state: the prompt is empty")
        _, state = self.backend.forward([ids], self.backend.new_state(1))
        return state

    # -- MIDI -----------------------------------------------------------------------------
    def compose_midi(
        self,
        n: int = 1,
        seconds: float | None = None,
        max_tokens: int = 2048,
        instruments: Sequence[str] | str | None = None,
        prompt: str | None = None,
        seed: int | None = None,
        preset: str | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        constrained: bool = True,
        limits: dict[str, Any] | None = None,
        **sampling: Any,
    ) -> list[Piece]:
        """Compose ``n`` MIDI pieces.

        Args:
            n: pieces, generated together as one batch.
            seconds: target length of the new music (after any prompt); the MIDI constraint
                ends the piece near it.
            max_tokens: hard cap on new tokens per piece.
            instruments: allowed instruments (``"piano,violin"`` or a list); ``None`` = any.
            prompt: MIDI-token text the pieces start with (e.g. ``"pi:4a:7 t20"``).
            seed: base seed; piece ``i`` uses :func:`piece_seed` ``(seed, i)``; random if ``None``.
            preset: sampling preset (default ``"default-midi"``; ``"chatrwkv-midi"`` is FORMATS D3).
            state: initial :class:`~rwkv_music.model.state.State` (see :meth:`make_state`).
            callback: ``callback(step, max_tokens)`` after every generated token.
            constrained: use :class:`~rwkv_music.formats.midi.constraint.MidiConstraint`
                (well-formed notes, instruments, length); ``instruments``/``seconds`` need it.
            limits: more ``MidiConstraint`` arguments (``pitch_range``, ``max_polyphony``,
                ``max_note_seconds``, ``drums``).
            **sampling: preset overrides (``temperature``, ``top_p``, ``top_k``, ...).

        Returns:
            ``n`` :class:`~rwkv_music.compose.piece.Piece` objects (``.text``, ``.to_midi()``, ``.save()``).
        """
        options = MidiOptions(seconds, max_tokens, instruments, constrained, limits or {})
        return self.compose_rows(
            [prompt] * n, options, seed=seed, preset=preset, state=state, callback=callback, **sampling
        )

    def continue_midi(
        self,
        path: str | os.PathLike,
        n: int = 1,
        seconds: float | None = None,
        max_tokens: int = 2048,
        instruments: Sequence[str] | str | None = None,
        seed: int | None = None,
        preset: str | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        constrained: bool = True,
        limits: dict[str, Any] | None = None,
        **sampling: Any,
    ) -> list[Piece]:
        """Continue the MIDI file at ``path`` ``n`` times; each piece holds the file's notes too.

        Arguments as in :meth:`compose_midi`; long files are cut to their last
        ``MidiOptions.max_prompt_tokens`` tokens.
        """
        options = MidiOptions(seconds, max_tokens, instruments, constrained, limits or {})
        return self.compose_rows(
            [Path(path)] * n, options, seed=seed, preset=preset, state=state, callback=callback, **sampling
        )

    # -- ABC ------------------------------------------------------------------------------
    def compose_abc(
        self,
        n: int = 1,
        key: str = "D",
        meter: str = "4/4",
        unit: str = "1/8",
        tempo: str | int | None = None,
        controls: str = "S:2",
        prompt: str | None = None,
        constrained: bool = True,
        max_tokens: int = 1024,
        seed: int | None = None,
        preset: str | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        **sampling: Any,
    ) -> list[Piece]:
        """Compose ``n`` ABC tunes.

        Args:
            key, meter, unit: the tune header (``K:``, ``M:``, ``L:``); checked on the way in.
            tempo: ``Q:`` value (``120`` or ``"1/4=120"``); omitted when ``None``.
            controls: TunesFormer control codes, ``;`` or newline separated (``"S:2;B:8;E:0;B:8"``).
            prompt: first bars of music after the header, or a whole tune start with its own
                ``L:``/``M:``/``K:`` lines (then ``key``/``meter``/``unit`` are read from it).
            constrained: add the ABC grammar / bar-balance constraint.
            max_tokens, seed, preset, state, callback, **sampling: as in :meth:`compose_midi`
                (default preset ``"default-abc"``; ``"chatrwkv-abc"`` is FORMATS D4).
        """
        options = AbcOptions(key, meter, unit, tempo, controls, constrained, max_tokens)
        return self.compose_rows(
            [prompt] * n, options, seed=seed, preset=preset, state=state, callback=callback, **sampling
        )

    def continue_abc(
        self,
        path_or_text: str | os.PathLike,
        n: int = 1,
        controls: str = "S:2",
        constrained: bool = True,
        max_tokens: int = 1024,
        seed: int | None = None,
        preset: str | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        **sampling: Any,
    ) -> list[Piece]:
        """Continue an ABC tune: a file path (its first tune) or the tune's text."""
        tune, source = _c.read_abc_tune(path_or_text)  # fails early on a missing file or a tune without K:
        options = AbcOptions(controls=controls, constrained=constrained, max_tokens=max_tokens)
        row: RowInput = tune if source == _c.ABC_TEXT_SOURCE else Path(source)
        return self.compose_rows(
            [row] * n, options, seed=seed, preset=preset, state=state, callback=callback, **sampling
        )

    # -- rows: the batched core used by every compose call and by the batch renderer ---------
    def compose_rows(
        self,
        inputs: Sequence[RowInput],
        options: MidiOptions | AbcOptions,
        *,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        preset: str | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        **sampling: Any,
    ) -> list[Piece]:
        """One piece per input row, generated as one batch per group of rows sharing a constraint.

        ``inputs``: ``None`` (a fresh piece), prompt text, or a :class:`~pathlib.Path` of a
        .mid/.abc file to continue.  ``seeds`` gives each row's seed; otherwise row ``i`` gets
        :func:`piece_seed` ``(seed, i)``.
        """
        expected = MidiOptions if self.mode == "midi" else AbcOptions
        if not isinstance(options, expected):
            article = "an" if self.mode == "abc" else "a"
            raise RwkvMusicError(
                f"{self.model_name or 'model'} is {article} {self.mode.upper()} model; "
                f"it cannot compose {'ABC' if self.mode == 'midi' else 'MIDI'} (vocab/model mismatch)"
            )
        n = len(inputs)
        if n < 1:
            raise RwkvMusicError(f"n must be at least 1, got {n}")
        base_seed = None
        if seeds is None:
            base_seed = new_base_seed() if seed is None else int(seed)
            seeds = [piece_seed(base_seed, i) for i in range(n)]
        elif len(seeds) != n:
            raise RwkvMusicError(f"{len(seeds)} seeds for {n} rows")
        rows = [self.row_prompt(x, options) for x in inputs]  # (ids, header) per row
        pieces: list[Piece | None] = [None] * n
        groups: dict[Any, list[int]] = {}
        for i, (_ids, header) in enumerate(rows):
            groups.setdefault(header, []).append(i)
        for header, idx in groups.items():
            sub_state = state
            if state is not None and getattr(state, "batch_size", 1) > 1 and len(groups) > 1:
                sub_state = state.select(idx)
            made = self._run(
                [rows[i][0] for i in idx],
                options,
                header,
                [int(seeds[i]) for i in idx],
                preset,
                sub_state,
                callback,
                sampling,
            )
            for i, piece in zip(idx, made):
                piece.meta.update(base_seed=base_seed, input=_describe(inputs[i]))
                pieces[i] = Piece(piece.mode, piece.tokens, piece.text, piece.meta, i, piece.tokenizer)
        return [p for p in pieces if p is not None]

    def row_prompt(self, item: RowInput, options: MidiOptions | AbcOptions) -> tuple[list[int], Any]:
        """Prompt ids of one row and the key that groups rows sharing a constraint.

        The key is the ABC header (meter, unit, key), or for MIDI with ``seconds`` the prompt's
        own length (the target is that plus ``seconds``).
        """
        if isinstance(options, MidiOptions):
            if item is None:
                body: list[int] = []
            elif isinstance(item, os.PathLike):
                body = _c.midi_file_ids(self.tokenizer, item)[-options.max_prompt_tokens :]
            else:
                body = _c.midi_body_ids(self.tokenizer, item)
            # `seconds` is new music after the prompt; MidiConstraint counts the prompt's time too
            return [MIDI_SEPARATOR] + body, (round(_c.prompt_seconds(body), 3) if options.seconds else None)
        if isinstance(item, os.PathLike):
            item = _c.read_abc_tune(item)[0]
        fields = _c.abc_header_fields(item) if item is not None else {}
        if fields.get("K"):  # a whole tune start: its own header decides the constraint
            controls = [] if _c.has_control_codes(item) else _c.check_controls(options.controls)
            text = "\n".join(controls + [item.strip("\n")]) + "\n"
            header = (fields.get("M"), fields.get("L"), fields.get("K"))
        else:
            text = _c.abc_prompt_text(options.controls, options.key, options.meter, options.unit, options.tempo, item)
            header = (options.meter, options.unit, options.key)
        return [ABC_BOS] + self._encode(text), header

    def _run(
        self,
        prompts: list[list[int]],
        options: MidiOptions | AbcOptions,
        header: Any,
        seeds: list[int],
        preset: str | None,
        state: Any,
        callback: ProgressCallback | None,
        sampling: dict[str, Any],
    ) -> list[Piece]:
        preset = preset or DEFAULT_PRESETS[self.mode]
        if isinstance(options, MidiOptions):
            target = options.seconds + header if options.seconds else None  # header: the prompt's seconds
            constraint = (
                _c.midi_constraint(options.instruments, target, **dict(options.limits)) if options.constrained else None
            )
            stop = [MIDI_SEPARATOR]
        else:
            constraint = _c.abc_constraint(*header, options.max_tokens) if options.constrained else None
            stop = [ABC_EOS]
        config, processors = _c.build_processors(preset, sampling, [constraint] if constraint is not None else [])
        stop = sorted(set(stop) | set(config.stop_tokens))
        init = _c.fit_state(self.backend, state, len(prompts)) if state is not None else None
        started = time.perf_counter()
        result = _c.run_generate(self.backend, prompts, processors, options.max_tokens, seeds, stop, init, callback)
        elapsed = time.perf_counter() - started
        pieces = []
        for i, prompt in enumerate(prompts):
            new = [int(t) for t in result.tokens[i]]
            meta = {
                "mode": self.mode,
                "seed": seeds[i],
                "preset": preset,
                "sampling": config.to_dict(),
                "params": options.to_dict(),
                "model": self.model_info(),
                "prompt_tokens": len(prompt),
                "new_tokens": len(new),
                "finish_reason": _c.finish_reason(result, i),
                "timing": {"batch_seconds": round(elapsed, 4), "batch_size": len(prompts), **_c.timing_of(result)},
                "custom_state": state is not None,
            }
            pieces.append(self.make_piece(prompt, new, meta, i))
        return pieces

    def make_piece(self, prompt: list[int], new: list[int], meta: dict[str, Any], index: int) -> Piece:
        """The :class:`Piece` for prompt ids + generated ids (``index`` numbers ABC tunes, X:)."""
        if self.mode == "midi":
            ids = [t for t in prompt[1:] + new if t not in _c.MIDI_SPECIALS]
            text = _c.midi_text(self.tokenizer, ids)
        else:
            ids = [t for t in prompt[1:] + new if t > ABC_EOS]
            text = self.tokenizer.decode(ids)
        piece = Piece(self.mode, ids, text, meta, index, self.tokenizer)
        meta["validity"] = _c.validity(piece)
        return piece

    def model_info(self) -> dict[str, Any]:
        """Model facts recorded in ``Piece.meta["model"]``."""
        c = self.config
        return {
            "path": self.model_name,
            "version": str(c.version),
            "n_layer": c.n_layer,
            "n_embd": c.n_embd,
            "vocab_size": c.vocab_size,
            "backend": getattr(self.backend, "name", "?"),
        }

    def _encode(self, text: str) -> list[int]:
        if self.mode == "midi":
            return _c.midi_body_ids(self.tokenizer, text)
        ids = [int(t) for t in self.tokenizer.encode(text)]
        bad = next((i for i, t in enumerate(ids) if t >= self.config.vocab_size), None)
        if bad is not None:
            raise AbcFormatError(
                f"ABC prompt: character {text[bad]!r} at position {bad} is outside the model's vocabulary"
            )
        return ids


def _describe(item: RowInput) -> str | None:
    return None if item is None else str(item)
