"""``SamplingConfig``: every sampling knob in one frozen, validated value.

:meth:`SamplingConfig.build_processors` turns it into a
:class:`~rwkv_music.sampling.base.LogitsProcessorList` in the fixed order documented in
:mod:`rwkv_music.sampling.processors`; knobs at their neutral value add no processor.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rwkv_music.sampling.base import LogitsProcessor, LogitsProcessorList, SamplingValueError
from rwkv_music.sampling.penalties import OccurrencePenalty, weights_from_ranges
from rwkv_music.sampling.processors import (
    EosBiasSchedule,
    ForceTokens,
    LogitBias,
    MinNewTokens,
    MinP,
    Temperature,
    TokenBan,
    TopK,
    TopP,
)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise SamplingValueError(f"{name} must be a sequence of token ids, got {value!r}") from None


_VALIDATED: dict[tuple, None] = {}  # configs whose processors were built once without error, by value and type


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token.  Names follow Hugging Face ``generate`` where one exists.

    >>> cfg = SamplingConfig(top_k=8, top_p=0.8)
    >>> [p.rule for p in cfg.build_processors()]
    ['top_p', 'top_k']
    >>> SamplingConfig(top_p=-1)
    Traceback (most recent call last):
    ...
    rwkv_music.sampling.base.SamplingValueError: top_p must be a number >= 0 (>= 1 = off), got -1
    """

    temperature: float = 1.0  # 0 = greedy; applied after the filters (pip order, see processors.py)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # >= 1 = off (pip's 1.0 collapses to greedy, docs/formats.md D1 quirk)
    min_p: float = 0.0  # 0 = off
    presence_penalty: float = 0.0  # pip alpha_presence
    frequency_penalty: float = 0.0  # pip alpha_frequency
    penalty_decay: float = 1.0  # pip alpha_decay (1 = no decay)
    # (start, stop, weight): ids in [start, stop) add `weight` to their occurrence count; others add 1
    penalty_weights: tuple[tuple[int, int, float], ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (id, bias) pairs; a dict is accepted too
    banned_tokens: tuple[int, ...] = ()
    eos_bias_tokens: tuple[int, ...] = ()  # ids getting (step - eos_bias_start) / eos_bias_scale; () = off
    eos_bias_start: float = 0.0
    eos_bias_scale: float = 1.0
    stop_tokens: tuple[int, ...] = ()  # end a row (not emitted); handled by generate()
    min_new_tokens: int = 0  # stop tokens are banned before this many new tokens
    max_new_tokens: int = 1024
    forced_tokens: tuple[tuple[int, int], ...] = ()  # (step, id): only id is legal at step

    def __post_init__(self) -> None:
        bias = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        forced = self.forced_tokens.items() if isinstance(self.forced_tokens, Mapping) else self.forced_tokens
        try:
            norm = {
                "logit_bias": tuple((int(t), float(b)) for t, b in bias),
                "forced_tokens": tuple((int(s), int(t)) for s, t in forced),
                "penalty_weights": tuple((int(a), int(b), float(w)) for a, b, w in self.penalty_weights),
            }
        except (TypeError, ValueError) as exc:
            raise SamplingValueError(f"logit_bias, forced_tokens or penalty_weights malformed: {exc}") from None
        norm["banned_tokens"] = _int_tuple("banned_tokens", self.banned_tokens)
        norm["eos_bias_tokens"] = _int_tuple("eos_bias_tokens", self.eos_bias_tokens)
        norm["stop_tokens"] = _int_tuple("stop_tokens", self.stop_tokens)
        for name, value in norm.items():
            object.__setattr__(self, name, value)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SamplingValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.min_new_tokens, int) and self.min_new_tokens > self.max_new_tokens:
            raise SamplingValueError(
                f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}"
            )
        key = tuple((type(v), v) for v in dataclasses.astuple(self))  # (types too: True == 1 == 1.0)
        if key not in _VALIDATED:
            self.build_processors()  # every processor constructor validates its own arguments
            if len(_VALIDATED) >= 256:
                _VALIDATED.clear()
            _VALIDATED[key] = None  # (a compose call makes the same few configs again: ~0.15 ms each to check)

    def build_processors(self, constraints: Sequence[LogitsProcessor] = ()) -> LogitsProcessorList:
        """The processors for this config, music ``constraints`` inserted after the bans.

        Order: penalty, EOS bias, logit bias, bans, min_new_tokens, constraints, forced tokens,
        top-p, top-k, min-p, temperature (why: :mod:`rwkv_music.sampling.processors`).
        Stateful processors are new objects on every call.
        """
        out = LogitsProcessorList()
        if self.presence_penalty or self.frequency_penalty:
            weights = weights_from_ranges(self.penalty_weights)
            out.append(OccurrencePenalty(self.presence_penalty, self.frequency_penalty, self.penalty_decay, weights))
        else:  # still validate the decay and weights
            OccurrencePenalty(0.0, 0.0, self.penalty_decay, weights_from_ranges(self.penalty_weights))
        if self.eos_bias_tokens:
            out.append(EosBiasSchedule(self.eos_bias_tokens, self.eos_bias_start, self.eos_bias_scale))
        if self.logit_bias:
            out.append(LogitBias(dict(self.logit_bias)))
        if self.banned_tokens:
            out.append(TokenBan(self.banned_tokens))
        min_new = MinNewTokens(self.min_new_tokens, self.stop_tokens)
        if self.min_new_tokens and self.stop_tokens:
            out.append(min_new)
        out.extend(constraints)
        if self.forced_tokens:
            out.append(ForceTokens(dict(self.forced_tokens)))
        top_k = TopK(self.top_k)  # (validated first: its message names top_k)
        top_k._after_top_p = self.top_p < 1.0  # the TopP below applies top-k too (TopK would find nothing to cut)
        for proc, neutral in (
            (TopP(self.top_p, top_k_after=self.top_k), self.top_p >= 1.0),  # TopK follows it directly
            (top_k, self.top_k == 0),
            (MinP(self.min_p), self.min_p == 0.0),
            (Temperature(self.temperature), self.temperature == 1.0),
        ):
            if not neutral:
                out.append(proc)
        return out

    def generate_kwargs(self) -> dict[str, Any]:
        """The loop settings for :func:`rwkv_music.sampling.generate.generate`."""
        return {"max_new_tokens": self.max_new_tokens, "stop_tokens": self.stop_tokens}

    def replace(self, **changes: Any) -> "SamplingConfig":
        """A copy with some fields changed (validated again); an unknown name is a :class:`SamplingValueError`."""
        _check_names(changes, "sampling option")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_options(cls, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> "SamplingConfig":
        """The named preset (the plain defaults for ``None``) with ``overrides``, checked once.

        This is the one place user-given sampling options become a config: an unknown preset or
        option name, or a bad value, is a :class:`SamplingValueError` with a one-line message (the
        valid names included).  An override of ``None`` means "not given": the preset's value stays.

        >>> SamplingConfig.from_options("chatrwkv-abc", {"temperature": 0.7, "top_p": None}).top_p
        0.8
        >>> SamplingConfig.from_options(None, {"topk": 3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rwkv_music.sampling.base.SamplingValueError: unknown sampling option 'topk' (did you mean 'top_k'?); valid: ...
        """
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if preset is None:
            return cls().replace(**given)
        from rwkv_music.sampling.presets import get_preset  # (presets build on this module)

        return get_preset(preset, **given)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamplingConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        _check_names(data, "field")
        return cls(**dict(data))


def _check_names(names: Mapping[str, Any], what: str) -> None:
    """One-line :class:`SamplingValueError` for names that are not ``SamplingConfig`` fields."""
    valid = [f.name for f in dataclasses.fields(SamplingConfig)]
    unknown = [str(n) for n in names if n not in valid]
    if not unknown:
        return
    hint = difflib.get_close_matches(unknown[0], valid, n=1)
    listed = ", ".join(repr(n) for n in unknown)
    plural = "s" if len(unknown) > 1 else ""
    guess = f" (did you mean {hint[0]!r}?)" if hint and len(unknown) == 1 else ""
    raise SamplingValueError(f"unknown {what}{plural} {listed}{guess}; valid: {', '.join(valid)}")


__all__ = ["SamplingConfig"]
