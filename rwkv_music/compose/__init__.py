"""The composing API: :class:`Composer`, its options, :class:`Piece` and batch rendering."""

from rwkv_music.compose.composer import Composer
from rwkv_music.compose.options import AbcOptions, MidiOptions, SamplingOptions, mode_for_vocab, piece_seed
from rwkv_music.compose.piece import Piece

__all__ = ["AbcOptions", "Composer", "MidiOptions", "Piece", "SamplingOptions", "mode_for_vocab", "piece_seed"]
