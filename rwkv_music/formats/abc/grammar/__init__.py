"""The incremental ABC state machine behind :class:`~rwkv_music.formats.abc.constraint.AbcConstraint`."""

from rwkv_music.formats.abc.grammar.machine import AbcGrammar, AbcGrammarConfig, AbcState, Rejection

__all__ = ["AbcGrammar", "AbcGrammarConfig", "AbcState", "Rejection"]
