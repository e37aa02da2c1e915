"""The composing API: load a model, compose or continue ABC tunes and MIDI pieces in batches.

>>> from rwkv_music import Composer                                      # doctest: +SKIP
>>> composer = Composer.load("model.pth")                               # doctest: +SKIP
>>> pieces = composer.compose_abc(n=4, key="D", meter="6/8", seed=1)    # doctest: +SKIP
>>> pieces[0].save("jig.abc")                                           # doctest: +SKIP

Prompting follows the reference recipes: MIDI (docs/formats.md D3) prompts start with ``<pad>`` (id 0)
and a piece ends when id 0 is sampled; ABC (docs/formats.md B, D4) prompts are ``[2]`` + control codes +
header lines and end on id 3.  All pieces of one call run as one batch, each row with its own
seed, so a piece depends only on its seed and parameters, never on its batch neighbours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from rwkv_music.backends.limits import check_rows
from rwkv_music.compose import helpers as _c
from rwkv_music.compose.options import (
    AbcOptions,
    MidiOptions,
    ProgressCallback,
    SamplingOptions,
    mode_for_vocab,
    new_base_seed,
    piece_seed,
)
from rwkv_music.compose.piece import Piece
from rwkv_music.compose.recipe import RowRecipe, make_piece, row_recipe
from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.base import Format, RowInput, format_for_vocab

log = logging.getLogger(__name__)

__all__ = ["AbcOptions", "Composer", "MidiOptions", "Piece", "SamplingOptions", "mode_for_vocab", "piece_seed"]


def _sampling_kwargs(call: Any, max_tokens: int, default_max: int, kwargs: dict[str, Any]) -> tuple[int, dict]:
    """(max_tokens, sampling overrides) of a ``compose_*``/``continue_*`` call's extra keywords.

    ``max_new_tokens`` (the Hugging Face name) is an alias of ``max_tokens``; every other keyword must
    be a sampling option.  An unknown one is a one-line :class:`RwkvMusicError` listing the valid
    names, instead of a ``TypeError`` from deep inside.
    """
    import dataclasses
    import difflib
    import inspect

    from rwkv_music.sampling.config import SamplingConfig

    extra = dict(kwargs)
    alias = extra.pop("max_new_tokens", None)
    if alias is not None:
        if max_tokens not in (default_max, alias):
            raise RwkvMusicError(f"{call.__name__}(): give max_tokens or its alias max_new_tokens, not both")
        max_tokens = alias
    sampling_names = [f.name for f in dataclasses.fields(SamplingConfig) if f.name != "max_new_tokens"]
    unknown = [k for k in extra if k not in sampling_names]
    if unknown:
        own = [n for n, p in inspect.signature(call).parameters.items() if p.kind is not p.VAR_KEYWORD]
        valid = own + ["max_new_tokens"] + sampling_names
        hint = difflib.get_close_matches(unknown[0], valid, n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint and len(unknown) == 1 else ""
        raise RwkvMusicError(
            f"{call.__name__}() got unknown keyword argument{'s' * (len(unknown) > 1)} "
            f"{', '.join(map(repr, unknown))}{guess}; valid: {', '.join(valid)}"
        )
    return max_tokens, extra


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
        self.format: Format = format_for_vocab(self.config.vocab_size, mode, model_name or "model", tokenizer)
        self.mode = self.format.name
        self.tokenizer = self.format.tokenizer
        self.model_name = model_name

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        mode: str | None = None,
        backend: str = "torch",
        device: str = "cpu",
        dtype: str | None = None,
        threads: int | None = None,
        cuda_graph: bool = True,
    ) -> "Composer":
        """Load ``model`` (or, when ``None``, the shipped default model for ``mode``, "midi" if unset).

        ``model`` is a file, or a shipped model's name (``"abc-default"``, ``"midi-default"``;
        see ``rwkv-music models``).  A checkpoint with ``backend="onnx"``/``"ncnn"`` is exported
        once into the cache (:mod:`rwkv_music.backends.export_cache`).  The mode is inferred from
        the vocabulary (128 ids → ``"abc"``, 20,096 → ``"midi"``); ``mode=`` overrides it and is
        checked against the vocabulary.  ``threads`` sets the CPU threads of the backend
        (``None``: the runtime's default).  ``cuda_graph=False``: the torch backend on CUDA decodes
        eagerly instead of through captured CUDA graphs.
        """
        from rwkv_music.assets import missing_model_message, resolve_model
        from rwkv_music.backends import load_backend

        if model is None:
            mode = mode or "midi"  # the toolkit's main job; Composer.load(mode="abc") for tunes
            model = _c.default_model(mode)
        path = resolve_model(model)
        if not path.exists():
            raise RwkvMusicError(missing_model_message(model))
        extra: dict[str, Any] = {} if threads is None else {"threads": threads}
        if backend == "torch" and not cuda_graph:  # (only torch has the option)
            extra["cuda_graph"] = False
        backend_model = load_backend(path, backend=backend, device=device, dtype=dtype, **extra)
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
        key: str | None = "auto",
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
            preset: sampling preset (default ``"default-midi"``; ``"chatrwkv-midi"`` is docs/formats.md D3).
            state: initial :class:`~rwkv_music.model.state.State` (see :meth:`make_state`).
            callback: ``callback(step, max_tokens)`` after every generated token.
            constrained: use :class:`~rwkv_music.formats.midi.constraint.MidiConstraint`
                (well-formed notes, instruments, length); ``instruments``/``seconds`` need it.
            limits: more ``MidiConstraint`` arguments (``pitch_range``, ``max_polyphony``,
                ``max_note_seconds``, ``drums``, ``ranges``, ...) over the musical defaults
                (:data:`~rwkv_music.formats.midi.options.MUSICAL_DEFAULTS`).
            key: keep pitched notes in a diatonic scale: a key (``"D"``, ``"Am"``), ``"auto"``
                (the scale the piece settles in over its first notes) or ``None`` (any pitch).
            **sampling: preset overrides (``temperature``, ``top_p``, ``top_k``, ``min_p``,
                ``presence_penalty``, ``frequency_penalty``, ...), and ``max_new_tokens`` as an alias of
                ``max_tokens``; any other name is a :class:`~rwkv_music.errors.RwkvMusicError` listing the valid ones.

        Returns:
            ``n`` :class:`~rwkv_music.compose.piece.Piece` objects (``.text``, ``.to_midi()``, ``.save()``).
        """
        max_tokens, sampling = _sampling_kwargs(self.compose_midi, max_tokens, 2048, sampling)
        options = MidiOptions(seconds, max_tokens, instruments, constrained, limits or {}, key=key)
        return self.compose_rows(
            [prompt] * check_rows(n), options, seed=seed, preset=preset, state=state, callback=callback, **sampling
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
        key: str | None = "auto",
        **sampling: Any,
    ) -> list[Piece]:
        """Continue the MIDI file at ``path`` ``n`` times; each piece holds the file's notes too.

        Arguments as in :meth:`compose_midi`; long files are cut to their last
        ``MidiOptions.max_prompt_tokens`` tokens.
        """
        max_tokens, sampling = _sampling_kwargs(self.continue_midi, max_tokens, 2048, sampling)
        options = MidiOptions(seconds, max_tokens, instruments, constrained, limits or {}, key=key)
        return self.compose_rows(
            [Path(path)] * check_rows(n), options, seed=seed, preset=preset, state=state, callback=callback, **sampling
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
        form: bool = True,
        parts: int | None = None,
        bars_per_part: int | None = None,
        cadence: bool = True,
        max_bar_repeats: int = 2,
        vary_rhythm: bool = True,
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
            form: under the constraint, a fresh tune has ``parts`` parts (default: the ``S:`` code,
                else 2) of ``bars_per_part`` bars (the ``B:`` code, else 8), section barlines only at
                part ends, four bars a line and, with ``cadence``, its last note on the tonic of ``K:``;
                ``form=False`` keeps only the bar rules.
            max_bar_repeats: under the constraint, the most times one bar may be written in a row
                (0: no limit).
            vary_rhythm: under the form, a tune does not keep one note length for more than three bars.
            max_tokens, seed, preset, state, callback, **sampling: as in :meth:`compose_midi`
                (default preset ``"default-abc"``; ``"chatrwkv-abc"`` is docs/formats.md D4).
        """
        max_tokens, sampling = _sampling_kwargs(self.compose_abc, max_tokens, 1024, sampling)
        options = AbcOptions(
            key, meter, unit, tempo, controls, constrained, max_tokens, form, parts, bars_per_part, cadence,
            max_bar_repeats, vary_rhythm,
        )
        return self.compose_rows(
            [prompt] * check_rows(n), options, seed=seed, preset=preset, state=state, callback=callback, **sampling
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
        """Continue an ABC tune: a file path (its first tune) or the tune's text.

        A tune that already ended gets a new part (its final ``|]`` is read as ``||``, and the end
        token is banned before the first new token); its ``T:`` lines are kept in the pieces.
        """
        from rwkv_music.formats.abc.continuation import TuneText, title_lines
        from rwkv_music.formats.abc.tune import TEXT_SOURCE, read_tune, split_tunes

        tune, source = read_tune(path_or_text)  # fails early on a missing file or a tune without K:
        max_tokens, sampling = _sampling_kwargs(self.continue_abc, max_tokens, 1024, sampling)
        options = AbcOptions(controls=controls, constrained=constrained, max_tokens=max_tokens)
        if source == TEXT_SOURCE:  # the prompt, marked as a continuation, with the titles it drops
            row: RowInput = TuneText(tune, title_lines(split_tunes(str(path_or_text))[0][1]))
        else:
            row = Path(source)
        return self.compose_rows(
            [row] * check_rows(n), options, seed=seed, preset=preset, state=state, callback=callback, **sampling
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
        sampling: SamplingOptions | None = None,
        state: Any = None,
        callback: ProgressCallback | None = None,
        **overrides: Any,
    ) -> list[Piece]:
        """One piece per input row, generated as one batch per group of rows sharing a constraint.

        ``inputs``: ``None`` (a fresh piece), prompt text, or a :class:`~pathlib.Path` of a
        .mid/.abc file to continue.  ``seeds`` gives each row's seed; otherwise row ``i`` gets
        :func:`piece_seed` ``(seed, i)``.  Sampling: ``sampling`` (a :class:`SamplingOptions`),
        with ``preset`` and keyword ``overrides`` (``temperature=0.8``, ...) on top.
        """
        self.check_options(options)
        sampling = (sampling or SamplingOptions()).merged(preset, overrides)
        n = len(inputs)
        if n < 1:
            raise RwkvMusicError(f"n must be at least 1, got {n}")
        base_seed = None
        if seeds is None:
            base_seed = new_base_seed() if seed is None else int(seed)
            seeds = [piece_seed(base_seed, i) for i in range(n)]
        elif len(seeds) != n:
            raise RwkvMusicError(f"{len(seeds)} seeds for {n} rows")
        recipes = self._recipes(inputs, options, sampling)
        pieces: list[Piece | None] = [None] * n
        groups: dict[Any, list[int]] = {}
        for i, recipe in enumerate(recipes):
            groups.setdefault(recipe.group, []).append(i)
        for idx in groups.values():
            sub_state = state
            if state is not None and getattr(state, "batch_size", 1) > 1 and len(groups) > 1:
                sub_state = state.select(idx)
            made = self._run([recipes[i] for i in idx], [int(seeds[i]) for i in idx], idx, sub_state, callback)
            for i, piece in zip(idx, made):
                piece.meta["base_seed"] = base_seed
                pieces[i] = piece
        return _c.check_continued(inputs, [p for p in pieces if p is not None])

    def check_options(self, options: Any) -> None:
        """Refuse options of the other format (an ABC call on a MIDI model, say)."""
        if not isinstance(options, self.format.options_class):
            other = type(options).__name__.removesuffix("Options").upper()  # AbcOptions -> ABC
            raise RwkvMusicError(
                f"{self.model_name or 'model'} is {getattr(self.format, 'article', 'a')} {self.mode.upper()} model; "
                f"it cannot compose {other} (vocab/model mismatch)"
            )

    def recipe(self, item: RowInput, options: MidiOptions | AbcOptions, sampling: SamplingOptions) -> RowRecipe:
        """The :class:`~rwkv_music.compose.recipe.RowRecipe` of one input row (a continued piece
        always gains at least one token: :func:`~rwkv_music.compose.helpers.continuation_recipe`)."""
        return _c.continuation_recipe(row_recipe(self.format, item, options, sampling, self.config.vocab_size))

    def _recipes(self, inputs: Sequence[RowInput], options: MidiOptions | AbcOptions,
                 sampling: SamplingOptions) -> list[RowRecipe]:
        """:meth:`recipe` of every row; equal inputs (``n`` fresh pieces, say) share one (a recipe is
        immutable, and reading a prompt and checking the sampling options is ~0.4 ms a row)."""
        made: dict[Any, RowRecipe] = {}
        out = []
        for x in inputs:
            try:
                recipe = made.get(x)
            except TypeError:  # an unhashable input: its own recipe
                recipe = None
            if recipe is None:
                recipe = self.recipe(x, options, sampling)
                with contextlib.suppress(TypeError):
                    made[x] = recipe
            out.append(recipe)
        return out

    def row_prompt(self, item: RowInput, options: MidiOptions | AbcOptions) -> tuple[list[int], Any]:
        """Prompt ids of one row and the key that groups rows sharing a constraint."""
        row = self.format.row_prompt(item, options, self.config.vocab_size)
        return row.ids, row.group

    def _run(
        self,
        recipes: list[RowRecipe],
        seeds: list[int],
        indices: list[int],
        state: Any,
        callback: ProgressCallback | None,
    ) -> list[Piece]:
        """One fixed batch of rows sharing a group: one processor list, one generate call."""
        first = recipes[0]
        prompts = [r.prompt for r in recipes]
        init = _c.fit_state(self.backend, state, len(prompts)) if state is not None else None
        started = time.perf_counter()
        result = _c.run_generate(
            self.backend, prompts, first.processors(), first.options.max_tokens, seeds, first.stop_ids, init, callback
        )
        elapsed = time.perf_counter() - started
        timing = {"batch_seconds": round(elapsed, 4), "batch_size": len(prompts), **_c.timing_of(result)}
        model = self.model_info()
        pieces = []
        for row, (recipe, index) in enumerate(zip(recipes, indices)):
            new = [int(t) for t in result.tokens[row]]
            meta = recipe.meta(seeds[row], new, result.finish_reasons[row], model, dict(timing), state is not None)
            pieces.append(recipe.piece(new, meta, index))
        return pieces

    def make_piece(self, prompt: list[int], new: list[int], meta: dict[str, Any], index: int) -> Piece:
        """The :class:`Piece` for prompt ids + generated ids (``index`` numbers ABC tunes, X:)."""
        return make_piece(self.format, prompt, new, meta, index)

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
        return self.format.encode(text, self.config.vocab_size)
